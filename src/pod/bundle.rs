//! OCI runtime bundle generation: turns a [`ContainerSpec`] and its pod sandbox into the
//! `config.json` runc/crun run, following `runc spec`'s defaults and Kubernetes semantics for
//! command/args, env and working directory.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxNamespace,
    LinuxNamespaceType, LinuxSeccomp, Mount, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder,
    Root, Spec, SpecBuilder, User,
};
use serde::de::IntoDeserializer as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::image::Image;
use super::resources::{linux_resources, ContainerResources};
use super::security::{non_root_violation, ContainerSecurity};

/// `PATH` for containers whose image sets none (the value containerd and Docker use).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Paths masked in every unprivileged container (containerd's `populateDefaultUnixSpec`).
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
];

/// Paths read-only in every unprivileged container (containerd's defaults).
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Capabilities every container gets (containerd's and Docker's default set).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Errors building a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Neither the spec nor the image gives a command to run.
    #[error("container {container}: no command: the spec has no command/args and image {image} no Entrypoint/Cmd")]
    NoCommand {
        /// Container name.
        container: String,
        /// Image name.
        image: String,
    },
    /// `runAsNonRoot` and the container would run as root (kubelet's CreateContainerConfigError).
    #[error("container {container}: {reason}")]
    NonRoot {
        /// Container name.
        container: String,
        /// kubelet's message.
        reason: String,
    },
    /// The image's `User` cannot be resolved in its root filesystem.
    #[error("container {container}: user {user:?}: {reason}")]
    User {
        /// Container name.
        container: String,
        /// The `User` value.
        user: String,
        /// Why it does not resolve.
        reason: String,
    },
    /// A volume mount is not usable.
    #[error("container {container}: mount {destination:?}: {reason}")]
    Mount {
        /// Container name.
        container: String,
        /// Destination in the container.
        destination: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A field of the runtime config does not fit the OCI runtime spec.
    #[error("container {container}: {what}: {reason}")]
    Spec {
        /// Container name.
        container: String,
        /// The part of the config (capabilities, seccomp profile, ...).
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Writing the bundle failed.
    #[error("write bundle {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// A bind mount into the container (a volume: emptyDir, hostPath, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    /// Host path (file or directory) to bind.
    pub source: PathBuf,
    /// Absolute path in the container.
    pub destination: String,
    /// Mount read-only.
    pub read_only: bool,
}

/// Everything needed to run one container of a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Runtime container id, unique on the node (`[A-Za-z0-9_.-]`, e.g. `<pod uid>-<name>-<restart>`).
    pub id: String,
    /// The pod this container belongs to (for logs and cgroup naming).
    pub pod_id: String,
    /// Container name from the manifest.
    pub name: String,
    /// The image, as returned by [`super::image::ImageStore::get`].
    pub image: Image,
    /// Kubernetes `command`: replaces the image Entrypoint when non-empty.
    pub command: Vec<String>,
    /// Kubernetes `args`: replaces the image Cmd when non-empty.
    pub args: Vec<String>,
    /// Environment, applied over the image's `Env` (later entries win).
    pub env: Vec<(String, String)>,
    /// Working directory; the image's `WorkingDir`, else `/`, when `None`.
    pub working_dir: Option<String>,
    /// Volume mounts.
    pub mounts: Vec<MountSpec>,
    /// Hostname (the pod's).
    pub hostname: String,
    /// File stdout/stderr go to, in CRI log format.
    pub log_path: PathBuf,
    /// Effective security settings.
    pub security: ContainerSecurity,
    /// The resolved OCI `linux.seccomp` profile; `None` runs unconfined.
    pub seccomp: Option<Value>,
    /// cpu and memory requests and limits.
    pub resources: ContainerResources,
    /// `oom_score_adj` of the container's processes (per QoS class).
    pub oom_score_adj: i32,
    /// Most processes the container may have.
    pub pids_limit: Option<i64>,
}

/// What a container takes from its pod's sandbox: namespaces to join (bind-mounted namespace
/// files, never `/proc/<pid>/ns`, so a dead pause process's reused pid cannot lead a container
/// elsewhere; `None`: the node's own) and generated `/etc` files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxPaths {
    /// Network namespace to join.
    pub net_ns: Option<PathBuf>,
    /// IPC namespace to join.
    pub ipc_ns: Option<PathBuf>,
    /// UTS namespace to join.
    pub uts_ns: Option<PathBuf>,
    /// The pod's `/etc/hosts`.
    pub hosts: PathBuf,
    /// The pod's `/etc/resolv.conf`.
    pub resolv_conf: PathBuf,
    /// The pod's `/etc/hostname`.
    pub hostname: PathBuf,
    /// A PID namespace to join instead of a new one (an ephemeral container targeting another).
    #[serde(default)]
    pub pid_ns: Option<PathBuf>,
}

/// The process argv by Kubernetes rules: `command` replaces Entrypoint, `args` replaces Cmd, and
/// a `command` without `args` drops the image Cmd.
pub fn process_args(spec: &ContainerSpec) -> Result<Vec<String>, BundleError> {
    let image = &spec.image.config;
    let argv: Vec<String> = match (spec.command.is_empty(), spec.args.is_empty()) {
        (false, _) => spec.command.iter().chain(&spec.args).cloned().collect(),
        (true, false) => image.entrypoint.iter().chain(&spec.args).cloned().collect(),
        (true, true) => image.entrypoint.iter().chain(&image.cmd).cloned().collect(),
    };
    if argv.is_empty() {
        return Err(BundleError::NoCommand {
            container: spec.name.clone(),
            image: spec.image.name.clone(),
        });
    }
    Ok(argv)
}

/// The process environment: image `Env`, then the spec's env over it, `PATH` and `HOSTNAME`
/// defaulted when neither sets them.
pub fn process_env(spec: &ContainerSpec) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |key: &str, value: &str| match env.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 = value.to_string(),
        None => env.push((key.to_string(), value.to_string())),
    };
    for kv in &spec.image.config.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        set(k, v);
    }
    for (k, v) in &spec.env {
        set(k, v);
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.insert(0, ("PATH".to_string(), DEFAULT_PATH.to_string()));
    }
    if !env.iter().any(|(k, _)| k == "HOSTNAME") {
        env.push(("HOSTNAME".to_string(), spec.hostname.clone()));
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Looks a user or group name up in a passwd/group-format file's contents (`name:x:id:...`).
fn lookup_id(contents: &str, name: &str) -> Option<(u32, Option<u32>)> {
    contents.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 3 && fields[0] == name {
            let id = fields[2].parse().ok()?;
            let gid = fields.get(3).and_then(|g| g.parse().ok());
            Some((id, gid))
        } else {
            None
        }
    })
}

/// Resolves an image `User` (`uid`, `uid:gid`, `name`, `name:group`) against the files of
/// `rootfs` to `(uid, gid)`; an absent user is root.
pub fn resolve_user(user: Option<&str>, rootfs: &Path) -> Result<(u32, u32), String> {
    let Some(user) = user else {
        return Ok((0, 0));
    };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let read = |file: &str| super::image::read_image_file(rootfs, file).unwrap_or_default();
    let (uid, primary_gid) = match u.parse::<u32>() {
        Ok(uid) => (uid, lookup_id(&read("etc/passwd"), u).and_then(|(_, g)| g)),
        Err(_) => lookup_id(&read("etc/passwd"), u)
            .ok_or_else(|| format!("no user {u:?} in /etc/passwd of the image"))?,
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => lookup_id(&read("etc/group"), g)
                .map(|(gid, _)| gid)
                .ok_or_else(|| format!("no group {g:?} in /etc/group of the image"))?,
        },
        None => primary_gid.unwrap_or(0),
    };
    Ok((uid, gid))
}

/// The `(uid, gid)` the container runs as: `runAsUser`/`runAsGroup` over the image's `User`,
/// the primary group of a `runAsUser` from the image's `/etc/passwd` (else 0); refused with
/// kubelet's message when `runAsNonRoot` and the result is root.
pub fn container_user(spec: &ContainerSpec) -> Result<(u32, u32), BundleError> {
    let image_user = spec.image.config.user.as_deref();
    let sec = &spec.security;
    let (uid, gid) = match sec.run_as_user {
        Some(uid) => {
            let passwd =
                super::image::read_image_file(&spec.image.rootfs, "etc/passwd").unwrap_or_default();
            let primary = passwd.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 4 && f[2].parse() == Ok(uid))
                    .then(|| f[3].parse().ok())
                    .flatten()
            });
            (uid, primary.unwrap_or(0))
        }
        None => {
            resolve_user(image_user, &spec.image.rootfs).map_err(|reason| BundleError::User {
                container: spec.name.clone(),
                user: image_user.unwrap_or_default().to_string(),
                reason,
            })?
        }
    };
    let gid = sec.run_as_group.unwrap_or(gid);
    if let Some(reason) = non_root_violation(sec, image_user, uid) {
        return Err(BundleError::NonRoot {
            container: spec.name.clone(),
            reason,
        });
    }
    Ok((uid, gid))
}

fn mount(destination: &str, kind: &str, source: &str, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(destination.into());
    m.set_typ(Some(kind.to_string()));
    m.set_source(Some(source.into()));
    m.set_options(Some(options.iter().map(|o| o.to_string()).collect()));
    m
}

fn bind(source: &Path, destination: &str, read_only: bool) -> Mount {
    let mut options = vec!["rbind", "rprivate", "nosuid", "nodev"];
    if read_only {
        options.push("ro");
    }
    let mut m = mount(destination, "bind", "", &options);
    m.set_source(Some(source.to_path_buf()));
    m
}

fn namespace(kind: LinuxNamespaceType, path: Option<&Path>) -> LinuxNamespace {
    let mut ns = LinuxNamespace::default();
    ns.set_typ(kind);
    ns.set_path(path.map(Path::to_path_buf));
    ns
}

/// The OCI runtime `config.json` for `spec`, with `rootfs` as its root and the sandbox's
/// namespaces and `/etc` files.
pub fn oci_config(
    spec: &ContainerSpec,
    rootfs: &Path,
    sandbox: &SandboxPaths,
) -> Result<Spec, BundleError> {
    let args = process_args(spec)?;
    let (uid, gid) = container_user(spec)?;
    let sec = &spec.security;
    let invalid = |what: &'static str| {
        let container = spec.name.clone();
        move |e: String| BundleError::Spec {
            container,
            what,
            reason: e,
        }
    };
    let sys_opt = if sec.privileged { "rw" } else { "ro" };
    let cwd = spec
        .working_dir
        .clone()
        .or_else(|| spec.image.config.working_dir.clone())
        .unwrap_or_else(|| "/".to_string());
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", sys_opt],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", sys_opt],
        ),
        bind(&sandbox.hosts, "/etc/hosts", false),
        bind(&sandbox.resolv_conf, "/etc/resolv.conf", false),
        bind(&sandbox.hostname, "/etc/hostname", false),
    ];
    for m in &spec.mounts {
        if !m.destination.starts_with('/') {
            return Err(BundleError::Mount {
                container: spec.name.clone(),
                destination: m.destination.clone(),
                reason: "destination must be an absolute path",
            });
        }
        if m.destination.split('/').any(|c| c == "..") {
            return Err(BundleError::Mount {
                container: spec.name.clone(),
                destination: m.destination.clone(),
                reason: "destination must not contain '..'",
            });
        }
        mounts.push(bind(&m.source, &m.destination, m.read_only));
    }
    let mut namespaces = Vec::new();
    if let Some(path) = &sandbox.pid_ns {
        namespaces.push(namespace(LinuxNamespaceType::Pid, Some(path)));
    } else if !sec.host.pid {
        namespaces.push(namespace(LinuxNamespaceType::Pid, None));
    }
    namespaces.push(namespace(LinuxNamespaceType::Mount, None));
    for (kind, path) in [
        (LinuxNamespaceType::Network, &sandbox.net_ns),
        (LinuxNamespaceType::Ipc, &sandbox.ipc_ns),
        (LinuxNamespaceType::Uts, &sandbox.uts_ns),
    ] {
        if let Some(path) = path {
            namespaces.push(namespace(kind, Some(path)));
        }
    }
    // Its own cgroup namespace: the container sees its cgroup as the root, not the node's tree.
    namespaces.push(namespace(LinuxNamespaceType::Cgroup, None));
    let caps = sec
        .capabilities
        .iter()
        .map(|name| {
            Capability::deserialize(name.as_str().into_deserializer())
                .map_err(|e: serde::de::value::Error| e.to_string())
        })
        .collect::<Result<Capabilities, String>>()
        .map_err(invalid("capabilities"))?;
    let mut capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .build()
        .map_err(|e| invalid("capabilities")(e.to_string()))?;
    // The builder fills unset sets from the crate's defaults; a container gets none of these.
    capabilities.set_inheritable(None);
    capabilities.set_ambient(None);
    let mut user = User::default();
    user.set_uid(uid);
    user.set_gid(gid);
    if !sec.supplemental_groups.is_empty() {
        user.set_additional_gids(Some(sec.supplemental_groups.clone()));
    }
    let nofile = PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .hard(1024u64)
        .soft(1024u64)
        .build()
        .map_err(|e| invalid("rlimits")(e.to_string()))?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(user)
        .args(args)
        .env(process_env(spec))
        .cwd(cwd)
        .capabilities(capabilities)
        .rlimits(vec![nofile])
        .no_new_privileges(sec.no_new_privileges)
        .oom_score_adj(spec.oom_score_adj)
        .build()
        .map_err(|e| invalid("process")(e.to_string()))?;
    let (masked, readonly): (&[&str], &[&str]) = if sec.privileged {
        (&[], &[])
    } else {
        (MASKED_PATHS, READONLY_PATHS)
    };
    let strings = |paths: &[&str]| paths.iter().map(|p| p.to_string()).collect::<Vec<_>>();
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(format!("/weft/{}", spec.id)))
        .resources(
            linux_resources(&spec.resources, spec.pids_limit, sec.privileged)
                .map_err(|e| invalid("resources")(e.to_string()))?,
        )
        .masked_paths(strings(masked))
        .readonly_paths(strings(readonly))
        .build()
        .map_err(|e| invalid("linux")(e.to_string()))?;
    let sysctl: HashMap<String, String> = sec
        .sysctls
        .iter()
        .map(|(k, v)| (k.replace('/', "."), v.clone()))
        .collect();
    linux.set_sysctl((!sysctl.is_empty()).then_some(sysctl));
    if let Some(profile) = &spec.seccomp {
        let seccomp: LinuxSeccomp = serde_json::from_value(profile.clone())
            .map_err(|e| invalid("seccomp profile")(e.to_string()))?;
        linux.set_seccomp(Some(seccomp));
    }
    let mut root = Root::default();
    root.set_path(rootfs.to_path_buf());
    root.set_readonly(Some(sec.read_only_root));
    let mut config = SpecBuilder::default()
        .version("1.0.2")
        .process(process)
        .root(root)
        .mounts(mounts)
        .linux(linux)
        .build()
        .map_err(|e| invalid("config")(e.to_string()))?;
    // Only a private UTS namespace can take a hostname (hostNetwork pods keep the node's).
    config.set_hostname(sandbox.uts_ns.is_some().then(|| spec.hostname.clone()));
    config.set_annotations(None);
    Ok(config)
}

/// Writes `config` as `<bundle>/config.json`.
pub fn write_config(bundle: &Path, config: &Spec) -> Result<(), BundleError> {
    let path = bundle.join("config.json");
    let bytes = serde_json::to_vec_pretty(config).map_err(|e| BundleError::Io {
        path: path.clone(),
        source: io::Error::other(e),
    })?;
    fs::write(&path, bytes).map_err(|source| BundleError::Io { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::image::ImageConfig;
    use serde_json::json;

    /// The config as runc reads it from `config.json`.
    fn config_json(
        spec: &ContainerSpec,
        rootfs: &Path,
        sandbox: &SandboxPaths,
    ) -> Result<Value, BundleError> {
        let config = oci_config(spec, rootfs, sandbox)?;
        Ok(serde_json::to_value(config).unwrap_or_default())
    }

    fn spec(command: &[&str], args: &[&str]) -> ContainerSpec {
        ContainerSpec {
            id: "uid1-app-0".into(),
            pod_id: "default-web-uid1".into(),
            name: "app".into(),
            image: Image {
                name: "docker.io/library/busybox:latest".into(),
                id: "sha256:00".into(),
                rootfs: PathBuf::from("/nonexistent"),
                config: ImageConfig {
                    entrypoint: vec!["/entry".into()],
                    cmd: vec!["serve".into(), "--port=80".into()],
                    env: vec!["PATH=/bin".into(), "A=image".into(), "B=image".into()],
                    working_dir: Some("/srv".into()),
                    user: None,
                },
                size: 0,
            },
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![("B".into(), "spec".into()), ("C".into(), "spec".into())],
            working_dir: None,
            mounts: vec![MountSpec {
                source: "/var/lib/weft/pods/x/volumes/data".into(),
                destination: "/data".into(),
                read_only: true,
            }],
            hostname: "web".into(),
            log_path: "/var/log/pods/default_web_uid1/app/0.log".into(),
            security: ContainerSecurity::default(),
            seccomp: None,
            resources: ContainerResources::default(),
            oom_score_adj: 1000,
            pids_limit: None,
        }
    }

    fn sandbox() -> SandboxPaths {
        SandboxPaths {
            net_ns: Some("/run/netns/weft-x".into()),
            ipc_ns: Some("/pods/x/ns/ipc".into()),
            uts_ns: Some("/pods/x/ns/uts".into()),
            hosts: "/pods/x/etc/hosts".into(),
            resolv_conf: "/pods/x/etc/resolv.conf".into(),
            hostname: "/pods/x/etc/hostname".into(),
            pid_ns: None,
        }
    }

    #[test]
    fn args_follow_kubernetes_rules() -> Result<(), BundleError> {
        assert_eq!(
            process_args(&spec(&[], &[]))?,
            ["/entry", "serve", "--port=80"]
        );
        assert_eq!(process_args(&spec(&[], &["x"]))?, ["/entry", "x"]);
        assert_eq!(process_args(&spec(&["sh", "-c"], &[]))?, ["sh", "-c"]);
        assert_eq!(
            process_args(&spec(&["sh", "-c"], &["echo"]))?,
            ["sh", "-c", "echo"]
        );
        let mut empty = spec(&[], &[]);
        empty.image.config.entrypoint.clear();
        empty.image.config.cmd.clear();
        assert!(matches!(
            process_args(&empty),
            Err(BundleError::NoCommand { .. })
        ));
        Ok(())
    }

    #[test]
    fn env_layers_spec_over_image_with_defaults() {
        assert_eq!(
            process_env(&spec(&[], &[])),
            ["PATH=/bin", "A=image", "B=spec", "C=spec", "HOSTNAME=web"]
        );
        let mut no_path = spec(&[], &[]);
        no_path.image.config.env.clear();
        assert_eq!(process_env(&no_path)[0], format!("PATH={DEFAULT_PATH}"));
    }

    #[test]
    fn config_joins_sandbox_namespaces() -> Result<(), BundleError> {
        let config = config_json(&spec(&["sh"], &[]), Path::new("/c/rootfs"), &sandbox())?;
        let ns = &config["linux"]["namespaces"];
        assert_eq!(ns[0], json!({"type": "pid"}));
        assert_eq!(ns[1], json!({"type": "mount"}));
        assert_eq!(
            ns[2],
            json!({"type": "network", "path": "/run/netns/weft-x"})
        );
        assert_eq!(ns[3], json!({"type": "ipc", "path": "/pods/x/ns/ipc"}));
        assert_eq!(ns[4], json!({"type": "uts", "path": "/pods/x/ns/uts"}));
        assert_eq!(ns[5], json!({"type": "cgroup"}));
        assert!(
            !config.to_string().contains("/proc/42"),
            "joins a pid's namespaces"
        );
        let masked = &config["linux"]["maskedPaths"];
        assert!(masked
            .as_array()
            .is_some_and(|m| m.contains(&json!("/sys/devices/virtual/powercap"))));
        assert_eq!(config["process"]["noNewPrivileges"], true);
        assert_eq!(config["process"]["oomScoreAdj"], 1000);
        assert!(config["linux"].get("seccomp").is_none());
        assert_eq!(config["process"]["cwd"], "/srv");
        assert_eq!(config["process"]["terminal"], false);
        assert_eq!(config["root"]["path"], "/c/rootfs");
        assert_eq!(config["hostname"], "web");
        let mounts = config["mounts"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let find = |d: &str| mounts.iter().find(|m| m["destination"] == d).cloned();
        assert_eq!(
            find("/sys").map(|m| m["options"][3].clone()),
            Some(json!("ro"))
        );
        assert_eq!(
            find("/etc/hosts").map(|m| m["source"].clone()),
            Some(json!("/pods/x/etc/hosts"))
        );
        let data = find("/data").unwrap_or_default();
        assert_eq!(data["source"], "/var/lib/weft/pods/x/volumes/data");
        assert!(data["options"]
            .as_array()
            .is_some_and(|o| o.contains(&json!("ro"))));
        Ok(())
    }

    #[test]
    fn security_context_shapes_the_config() -> Result<(), BundleError> {
        use crate::pod::security::{HostNamespaces, Seccomp};
        let mut s = spec(&["sh"], &[]);
        s.security = ContainerSecurity {
            run_as_user: Some(1000),
            run_as_group: Some(3000),
            supplemental_groups: vec![2000],
            capabilities: vec![],
            read_only_root: true,
            seccomp: Seccomp::RuntimeDefault,
            sysctls: vec![("net.ipv4.tcp_syncookies".into(), "1".into())],
            host: HostNamespaces {
                network: true,
                pid: true,
                ipc: false,
            },
            ..ContainerSecurity::default()
        };
        s.seccomp = Some(json!({"defaultAction": "SCMP_ACT_ERRNO"}));
        let mut sb = sandbox();
        sb.net_ns = None;
        sb.uts_ns = None;
        let config = config_json(&s, Path::new("/r"), &sb)?;
        assert_eq!(
            config["process"]["user"],
            json!({"uid": 1000, "gid": 3000, "additionalGids": [2000]})
        );
        assert_eq!(config["process"]["capabilities"]["bounding"], json!([]));
        assert_eq!(config["root"]["readonly"], true);
        assert_eq!(
            config["linux"]["seccomp"]["defaultAction"],
            "SCMP_ACT_ERRNO"
        );
        assert_eq!(config["linux"]["sysctl"]["net.ipv4.tcp_syncookies"], "1");
        let kinds: Vec<&str> = config["linux"]["namespaces"]
            .as_array()
            .map(|a| a.iter().filter_map(|n| n["type"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(kinds, ["mount", "ipc", "cgroup"]);
        assert!(config.get("hostname").is_none());
        s.security = ContainerSecurity {
            run_as_non_root: true,
            ..ContainerSecurity::default()
        };
        assert!(matches!(
            oci_config(&s, Path::new("/r"), &sb),
            Err(BundleError::NonRoot { .. })
        ));
        s.security.privileged = true;
        s.security.run_as_non_root = false;
        let config = config_json(&s, Path::new("/r"), &sb)?;
        assert_eq!(config["linux"]["maskedPaths"], json!([]));
        assert_eq!(config["linux"]["resources"]["devices"][0]["allow"], true);
        Ok(())
    }

    /// The typed spec carries what runc enforces: capabilities, rlimits, cgroup and
    /// resources, the RuntimeDefault seccomp profile, user, and no stray defaults of the crate
    /// (hostname, annotations) where weft sets none.
    #[test]
    fn spec_carries_security_resources_and_no_stray_defaults() -> Result<(), BundleError> {
        let mut s = spec(&["sh"], &[]);
        s.security.capabilities = DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect();
        s.security.supplemental_groups = vec![5, 6];
        s.resources.memory_limit = Some(64 << 20);
        s.pids_limit = Some(100);
        s.seccomp = Some(crate::pod::seccomp::runtime_default(
            &s.security.capabilities,
            std::env::consts::ARCH,
        ));
        let mut sb = sandbox();
        sb.uts_ns = None;
        let config = oci_config(&s, Path::new("/r"), &sb)?;
        assert_eq!(config.version(), "1.0.2");
        assert_eq!(config.hostname(), &None);
        assert_eq!(config.annotations(), &None);
        let process = config.process().clone().unwrap_or_default();
        let caps = process.capabilities().clone().unwrap_or_default();
        let bounding = caps.bounding().clone().unwrap_or_default();
        assert_eq!(bounding.len(), DEFAULT_CAPABILITIES.len());
        assert!(bounding.contains(&Capability::NetBindService));
        assert!(!bounding.contains(&Capability::SysAdmin));
        assert_eq!(caps.effective(), caps.bounding());
        assert_eq!(caps.permitted(), caps.bounding());
        assert_eq!(caps.inheritable(), &None);
        assert_eq!(caps.ambient(), &None);
        assert_eq!(process.user().additional_gids(), &Some(vec![5, 6]));
        assert_eq!(process.args(), &Some(vec!["sh".to_string()]));
        assert_eq!(process.oom_score_adj(), Some(1000));
        let rlimits = process.rlimits().clone().unwrap_or_default();
        assert_eq!(rlimits.len(), 1);
        assert_eq!(rlimits[0].typ(), PosixRlimitType::RlimitNofile);
        assert_eq!((rlimits[0].soft(), rlimits[0].hard()), (1024, 1024));
        let linux = config.linux().clone().unwrap_or_default();
        assert_eq!(
            linux.cgroups_path(),
            &Some(PathBuf::from("/weft/uid1-app-0"))
        );
        let resources = linux.resources().clone().unwrap_or_default();
        assert_eq!(resources.memory().and_then(|m| m.limit()), Some(64 << 20));
        assert_eq!(resources.pids().map(|p| p.limit()), Some(100));
        assert_eq!(linux.sysctl(), &None);
        let seccomp = linux.seccomp().clone();
        assert!(
            seccomp.is_some_and(|p| p.syscalls().as_ref().is_some_and(|s| !s.is_empty())),
            "RuntimeDefault profile lost"
        );
        let json = serde_json::to_value(&config).unwrap_or_default();
        assert_eq!(
            json["linux"]["seccomp"],
            s.seccomp.clone().unwrap_or_default()
        );
        assert_eq!(
            json["process"]["capabilities"]["bounding"]
                .as_array()
                .map(Vec::len),
            Some(14)
        );
        s.seccomp = Some(json!({"defaultAction": "SCMP_ACT_NOPE"}));
        assert!(matches!(
            oci_config(&s, Path::new("/r"), &sb),
            Err(BundleError::Spec {
                what: "seccomp profile",
                ..
            })
        ));
        Ok(())
    }

    #[test]
    fn relative_mount_destination_rejected() {
        let mut s = spec(&["sh"], &[]);
        s.mounts[0].destination = "data".into();
        assert!(matches!(
            oci_config(&s, Path::new("/r"), &sandbox()),
            Err(BundleError::Mount { .. })
        ));
    }

    #[test]
    fn users_resolve_from_image_files() -> Result<(), Box<dyn std::error::Error>> {
        let root = tempfile::tempdir()?;
        fs::create_dir_all(root.path().join("etc"))?;
        fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nwww:x:33:34::/var/www:/bin/sh\n",
        )?;
        fs::write(root.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n")?;
        assert_eq!(resolve_user(None, root.path())?, (0, 0));
        assert_eq!(resolve_user(Some("1000"), root.path())?, (1000, 0));
        assert_eq!(resolve_user(Some("1000:7"), root.path())?, (1000, 7));
        assert_eq!(resolve_user(Some("www"), root.path())?, (33, 34));
        assert_eq!(resolve_user(Some("www:staff"), root.path())?, (33, 50));
        assert!(resolve_user(Some("nobody"), root.path()).is_err());
        Ok(())
    }

    #[test]
    fn an_images_user_files_are_read_inside_its_root_and_never_block() {
        use std::os::unix::fs::symlink;
        let node = tempfile::tempdir().unwrap();
        // The node's own passwd, which an image's `etc -> /etc`-style link must not reach.
        let node_etc = node.path().join("etc");
        fs::create_dir_all(&node_etc).unwrap();
        fs::write(node_etc.join("passwd"), "nodeuser:x:4242:4242::/:/bin/sh\n").unwrap();
        type MakeRoot = Box<dyn Fn(&Path)>;
        let cases: [(&str, MakeRoot); 4] = [
            (
                "etc/passwd -> /dev/zero (an endless read on the node)",
                Box::new(|root: &Path| {
                    fs::create_dir_all(root.join("etc")).unwrap();
                    symlink("/dev/zero", root.join("etc/passwd")).unwrap();
                }),
            ),
            (
                "etc/passwd a FIFO (a blocking open)",
                Box::new(|root: &Path| {
                    fs::create_dir_all(root.join("etc")).unwrap();
                    nix::unistd::mkfifo(&root.join("etc/passwd"), nix::sys::stat::Mode::S_IRWXU)
                        .unwrap();
                }),
            ),
            (
                "etc -> the node's /etc",
                Box::new(move |root: &Path| symlink(&node_etc, root.join("etc")).unwrap()),
            ),
            (
                "etc/passwd larger than 1 MiB",
                Box::new(|root: &Path| {
                    fs::create_dir_all(root.join("etc")).unwrap();
                    let big = "x".repeat(2 << 20) + "\nnodeuser:x:4242:4242::/:/bin/sh\n";
                    fs::write(root.join("etc/passwd"), big).unwrap();
                }),
            ),
        ];
        for (what, make) in cases {
            let root = tempfile::tempdir().unwrap();
            make(root.path());
            // Returns (and at once: a test thread blocked on a FIFO would hang the test).
            assert!(
                resolve_user(Some("nodeuser"), root.path()).is_err(),
                "{what}: resolved"
            );
            assert_eq!(
                resolve_user(Some("4242"), root.path()),
                Ok((4242, 0)),
                "{what}: no primary group from outside"
            );
        }
    }
}
