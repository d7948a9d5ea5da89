//! Where the pod runtime keeps things on disk, and the only place that builds those paths.
//!
//! Every manifest field that becomes a path component is checked here with Kubernetes' rules
//! (namespace: DNS-1123 label; name: DNS-1123 subdomain; uid: lowercase alphanumerics and
//! `-`; container and volume names: DNS-1123 labels), and every path is joined from checked
//! components only, so none can leave its root:
//!
//! ```text
//! <pod-root>/<ns>_<name>_<uid>/                     pod.json, sandbox.json, status.json, runc/, …
//! <pod-root>/<ns>_<name>_<uid>/ephemeral-containers.json   debug containers' statuses
//! <pod-root>/<ns>_<name>_<uid>/events.json                 the pod's events (0600)
//! <pod-root>/<ns>_<name>_<uid>/volumes/<volume>/    emptyDir and downwardAPI volumes
//! <pod-root>/invalid-manifests.json                 manifests that failed to load
//! <log-root>/<ns>_<name>_<uid>/<container>/<restart>.log
//! ```
//!
//! `_` separates the parts of a pod's directory name because none of the three may contain it.

use std::path::{Component, Path, PathBuf};

/// Default `--pod-root`: one directory per pod.
pub const DEFAULT_POD_ROOT: &str = "/var/lib/weft/pods";

/// Default `--image-root`: the image store.
pub const DEFAULT_IMAGE_ROOT: &str = "/var/lib/weft/images";

/// Default `--pod-log-dir`: container logs, `<dir>/<ns>_<name>_<uid>/<container>/<restart>.log`.
pub const DEFAULT_POD_LOG_DIR: &str = "/var/log/pods";

/// Default `--seccomp-root`: where `Localhost` seccomp profiles live.
pub const DEFAULT_SECCOMP_ROOT: &str = "/var/lib/weft/seccomp";

/// Default `--cni-conf-dir`.
pub const DEFAULT_CNI_CONF_DIR: &str = "/etc/cni/net.d";

/// Default `--cni-bin-dir`.
pub const DEFAULT_CNI_BIN_DIR: &str = "/opt/cni/bin";

/// Default CNI result cache root (libcni's).
pub const DEFAULT_CNI_CACHE_DIR: &str = "/var/lib/cni";

/// Default `--oci-runtime`.
pub const DEFAULT_OCI_RUNTIME: &str = "runc";

/// Where the OCI runtime keeps its own state (`runc --root`), under a runtime's state root (the
/// pod directory for pods): the runtime and the exec probes must name the same directory.
pub const RUNTIME_STATE_DIR: &str = "runc";

/// The file under the pod root listing the manifests that failed to load.
pub const INVALID_FILE: &str = "invalid-manifests.json";

/// The file in a pod's directory holding its ephemeral (debug) containers' statuses.
pub const EPHEMERAL_FILE: &str = "ephemeral-containers.json";

/// The file in a pod's directory holding its events.
pub const EVENTS_FILE: &str = "events.json";

/// Mode of the per-pod and per-container log directories: weftd's group may list them, other
/// users may not (container output can hold anything).
pub const LOG_DIR_MODE: u32 = 0o750;

/// Mode of container log files (containerd's CRI logs are 0640 as well).
pub const LOG_FILE_MODE: u32 = 0o640;

/// A name refused as a path component, or a path that would leave its root.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// A field's value is not a valid name of its kind.
    #[error("field {field}: {value:?} is not {rule}")]
    InvalidName {
        /// The field path (`metadata.uid`, `spec.containers[0].name`).
        field: String,
        /// The value, shortened to 100 characters.
        value: String,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// A relative path that is empty, absolute or climbs with `..`.
    #[error("path {path:?} would leave {root}")]
    Escapes {
        /// The relative path asked for.
        path: String,
        /// The root it must stay in.
        root: PathBuf,
    },
}

const DNS_LABEL: &str = "a DNS-1123 label (lowercase alphanumerics and '-', at most 63 characters, starting and ending alphanumeric)";
const DNS_SUBDOMAIN: &str =
    "a DNS-1123 subdomain (DNS-1123 labels separated by '.', at most 253 characters)";
const UID: &str = "a valid UID (lowercase alphanumerics and '-', at most 63 characters)";
const DIR_NAME: &str =
    "short enough: namespace, name and UID together must stay within 250 characters";

/// The longest `<ns>_<name>_<uid>`: a file name is at most 255 bytes, and the sandbox's
/// network namespace file adds `weft-`.
const MAX_DIR_NAME: usize = 250;

fn invalid(field: &str, value: &str, rule: &'static str) -> LayoutError {
    LayoutError::InvalidName {
        field: field.to_string(),
        value: value.chars().take(100).collect(),
        rule,
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Checks that `value` of `field` is an RFC 1123 label.
pub fn check_dns_label(field: &str, value: &str) -> Result<(), LayoutError> {
    if is_dns_label(value) {
        Ok(())
    } else {
        Err(invalid(field, value, DNS_LABEL))
    }
}

/// Checks that `value` of `field` is an RFC 1123 subdomain.
pub fn check_dns_subdomain(field: &str, value: &str) -> Result<(), LayoutError> {
    if !value.is_empty() && value.len() <= 253 && value.split('.').all(is_dns_label) {
        Ok(())
    } else {
        Err(invalid(field, value, DNS_SUBDOMAIN))
    }
}

/// Checks that `value` of `field` is a pod UID: lowercase alphanumerics and `-`, 1 to 63.
pub fn check_uid(field: &str, value: &str) -> Result<(), LayoutError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(invalid(field, value, UID))
    }
}

/// A pod's identity with every part checked, so it can name directories.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodId {
    namespace: String,
    name: String,
    uid: String,
}

impl PodId {
    /// Checks `metadata.namespace`, `metadata.name` and `metadata.uid`.
    pub fn new(namespace: &str, name: &str, uid: &str) -> Result<PodId, LayoutError> {
        check_dns_label("metadata.namespace", namespace)?;
        check_dns_subdomain("metadata.name", name)?;
        check_uid("metadata.uid", uid)?;
        let id = PodId {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: uid.to_string(),
        };
        if id.dir_name().len() > MAX_DIR_NAME {
            return Err(invalid("metadata.name", name, DIR_NAME));
        }
        Ok(id)
    }

    /// `<ns>_<name>_<uid>`: the pod's directory name, sandbox name and CNI container id.
    pub fn dir_name(&self) -> String {
        format!("{}_{}_{}", self.namespace, self.name, self.uid)
    }

    /// `metadata.uid`.
    pub fn uid(&self) -> &str {
        &self.uid
    }
}

/// The runtime id of run `restart` of `container` in `pod`: `<uid>_<container>_<restart>`,
/// which also names the container's state directory and cgroup. `_` is in neither a UID nor a
/// container name, so two pods can never produce the same id (with `-`, UID `a` with container
/// `b-c` and UID `a-b` with container `c` would share a cgroup).
pub fn container_id(pod: &PodId, container: &str, restart: u32) -> Result<String, LayoutError> {
    check_dns_label("container name", container)?;
    Ok(format!("{}_{container}_{restart}", pod.uid))
}

/// `root` joined with the components of `rel`, refused when `rel` is empty, absolute or has
/// `..`: the result is always strictly inside `root`.
pub fn contained(root: &Path, rel: &str) -> Result<PathBuf, LayoutError> {
    let escapes = || LayoutError::Escapes {
        path: rel.chars().take(100).collect(),
        root: root.to_path_buf(),
    };
    let mut out = root.to_path_buf();
    let mut parts = 0;
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(part) => {
                out.push(part);
                parts += 1;
            }
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(escapes())
            }
        }
    }
    if parts == 0 {
        return Err(escapes());
    }
    Ok(out)
}

/// The pod root and the log root of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLayout {
    pod_root: PathBuf,
    log_root: PathBuf,
}

impl PodLayout {
    /// The layout under `pod_root` (`--pod-root`) and `log_root` (`--pod-log-dir`).
    pub fn new(pod_root: &Path, log_root: &Path) -> PodLayout {
        PodLayout {
            pod_root: pod_root.to_path_buf(),
            log_root: log_root.to_path_buf(),
        }
    }

    /// `--pod-root`.
    pub fn pod_root(&self) -> &Path {
        &self.pod_root
    }

    /// The list of manifests that failed to load.
    pub fn invalid_manifests(&self) -> PathBuf {
        self.pod_root.join(INVALID_FILE)
    }

    /// The pod's state directory.
    pub fn pod_dir(&self, pod: &PodId) -> PathBuf {
        self.pod_root.join(pod.dir_name())
    }

    /// The directory of the pod's `emptyDir` or `downwardAPI` volume `volume`.
    pub fn volume_dir(&self, pod: &PodId, volume: &str) -> Result<PathBuf, LayoutError> {
        check_dns_label("volume name", volume)?;
        Ok(self.pod_dir(pod).join("volumes").join(volume))
    }

    /// The file `item` (a `downwardAPI` item path) of the pod's volume `volume`.
    pub fn volume_file(
        &self,
        pod: &PodId,
        volume: &str,
        item: &str,
    ) -> Result<PathBuf, LayoutError> {
        contained(&self.volume_dir(pod, volume)?, item)
    }

    /// The pod's ephemeral containers' statuses ([`EPHEMERAL_FILE`]).
    pub fn ephemeral_containers(&self, pod: &PodId) -> PathBuf {
        self.pod_dir(pod).join(EPHEMERAL_FILE)
    }

    /// The pod's events ([`EVENTS_FILE`]).
    pub fn events(&self, pod: &PodId) -> PathBuf {
        self.pod_dir(pod).join(EVENTS_FILE)
    }

    /// The pod's log directory.
    pub fn log_dir(&self, pod: &PodId) -> PathBuf {
        self.log_root.join(pod.dir_name())
    }

    /// The log file of run `restart` of `container`.
    pub fn container_log(
        &self,
        pod: &PodId,
        container: &str,
        restart: u32,
    ) -> Result<PathBuf, LayoutError> {
        check_dns_label("container name", container)?;
        Ok(self
            .log_dir(pod)
            .join(container)
            .join(format!("{restart}.log")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> PodLayout {
        PodLayout::new(Path::new("/var/lib/weft/pods"), Path::new("/var/log/pods"))
    }

    #[test]
    fn paths_follow_the_documented_layout() {
        let l = layout();
        let pod = PodId::new("default", "web.v1", "0f3c-77aa").unwrap();
        assert_eq!(
            l.pod_dir(&pod),
            Path::new("/var/lib/weft/pods/default_web.v1_0f3c-77aa")
        );
        assert_eq!(
            l.container_log(&pod, "app", 2).unwrap(),
            Path::new("/var/log/pods/default_web.v1_0f3c-77aa/app/2.log")
        );
        assert_eq!(
            l.volume_file(&pod, "info", "meta/labels").unwrap(),
            Path::new("/var/lib/weft/pods/default_web.v1_0f3c-77aa/volumes/info/meta/labels")
        );
        assert_eq!(
            l.invalid_manifests(),
            Path::new("/var/lib/weft/pods/invalid-manifests.json")
        );
    }

    #[test]
    fn traversal_in_any_part_is_refused_with_field_and_value() {
        let e = PodId::new("default", "web", "../../../../../victim").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("field metadata.uid: \"../../../../../victim\" is not {UID}")
        );
        for (ns, name, uid) in [
            ("..", "web", "u"),
            ("default", "../web", "u"),
            ("default", "a/b", "u"),
            ("default", "web", "a/b"),
            ("default", "web", "a_b"),
            ("default", "web", "UPPER"),
            ("default", "web", ""),
            ("default", "web", &"a".repeat(64)),
            ("default", ".", "u"),
            ("kube_system", "web", "u"),
            ("default", &"n".repeat(200), &"u".repeat(50)),
        ] {
            assert!(PodId::new(ns, name, uid).is_err(), "{ns} {name} {uid}");
        }
        let pod = PodId::new("default", "web", "u").unwrap();
        let l = layout();
        for bad in ["..", "../x", "a/b", "", "A"] {
            assert!(l.container_log(&pod, bad, 0).is_err(), "{bad}");
            assert!(l.volume_dir(&pod, bad).is_err(), "{bad}");
        }
        for bad in ["../x", "a/../../x", "/etc/passwd", "", "."] {
            assert!(
                matches!(
                    l.volume_file(&pod, "v", bad),
                    Err(LayoutError::Escapes { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn every_built_path_stays_under_its_root() {
        let l = layout();
        let pod = PodId::new("a-b", "c.d", "e-f").unwrap();
        let under_pods = [
            l.pod_dir(&pod),
            l.volume_dir(&pod, "v").unwrap(),
            l.volume_file(&pod, "v", "x/./y").unwrap(),
            l.invalid_manifests(),
        ];
        for p in under_pods {
            assert!(p.starts_with(l.pod_root()), "{}", p.display());
            assert!(p.components().all(|c| c != Component::ParentDir));
        }
        let log = l.container_log(&pod, "c", 0).unwrap();
        assert!(log.starts_with("/var/log/pods/a-b_c.d_e-f/"));
    }

    #[test]
    fn container_ids_of_different_pods_never_collide() {
        let a = PodId::new("default", "x", "a").unwrap();
        let ab = PodId::new("default", "y", "a-b").unwrap();
        assert_eq!(container_id(&a, "b-c", 0).unwrap(), "a_b-c_0");
        assert_ne!(
            container_id(&a, "b-c", 0).unwrap(),
            container_id(&ab, "c", 0).unwrap()
        );
        assert!(container_id(&a, "../c", 0).is_err());
    }
}
