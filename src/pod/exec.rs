//! `weftctl exec`: finds a running container of a node's pod in the status files the pod runtime
//! writes and builds the OCI runtime's `exec` invocation for it, as `kubectl exec` reaches a
//! container through the kubelet.
//!
//! Every name from the command line is checked with the layout module's rules before it is
//! compared or used, and the runtime id is rebuilt from checked parts (never read back from a
//! status file), so the invocation can only name a container of the pod's own runtime root.

use std::ffi::OsString;
use std::path::PathBuf;

use super::cli::{read_pods, CliError};
use super::layout::{
    check_dns_label, check_dns_subdomain, container_id, LayoutError, PodId, PodLayout,
};
use super::status::PodRecord;

/// Errors of finding the container to run a command in.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// Reading the status files failed.
    #[error(transparent)]
    Read(#[from] CliError),
    /// A pod, namespace or container name is not a valid name.
    #[error(transparent)]
    Name(#[from] LayoutError),
    /// The pod is not on this node.
    #[error("pod {pod} not found in {root}")]
    NoPod {
        /// `namespace/name`.
        pod: String,
        /// The pod root searched.
        root: PathBuf,
    },
    /// The container is not in the pod.
    #[error("container {container} is not valid for pod {pod}, choose one of: {names:?}")]
    NoContainer {
        /// The container asked for.
        container: String,
        /// The pod.
        pod: String,
        /// The pod's containers.
        names: Vec<String>,
    },
    /// The container exists but has no running process to join.
    #[error("container {container} in pod {pod} is not running")]
    NotRunning {
        /// The container.
        container: String,
        /// The pod.
        pod: String,
    },
    /// No command was given.
    #[error("you must specify at least one command for the container")]
    NoCommand,
}

/// A running container to run a command in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecTarget {
    /// The OCI runtime's state root of the pod (`--root`).
    pub runtime_root: PathBuf,
    /// The container's runtime id.
    pub container_id: String,
    /// The container's name (for messages).
    pub container: String,
}

/// Splits `NAMESPACE/NAME` (or `NAME`, in `namespace`) and checks both parts.
pub fn pod_ref<'a>(pod: &'a str, namespace: &'a str) -> Result<(&'a str, &'a str), ExecError> {
    let (ns, name) = pod.split_once('/').unwrap_or((namespace, pod));
    check_dns_label("namespace", ns)?;
    check_dns_subdomain("pod name", name)?;
    Ok((ns, name))
}

/// The record of pod `ns/name` among `pods`, whose directories `layout` names.
pub fn find_pod<'p>(
    pods: &'p [PodRecord],
    layout: &PodLayout,
    ns: &str,
    name: &str,
) -> Result<&'p PodRecord, ExecError> {
    pods.iter()
        .find(|r| r.pod.metadata.namespace == ns && r.pod.metadata.name == name)
        .ok_or_else(|| ExecError::NoPod {
            pod: format!("{ns}/{name}"),
            root: layout.pod_root().to_path_buf(),
        })
}

/// The running container `container` (default: the first app container) of pod `ns/name` among
/// `pods`, whose directories `layout` names.
pub fn find_target(
    pods: &[PodRecord],
    layout: &PodLayout,
    ns: &str,
    name: &str,
    container: Option<&str>,
) -> Result<ExecTarget, ExecError> {
    let full = format!("{ns}/{name}");
    let p = &find_pod(pods, layout, ns, name)?.pod;
    let container = match container {
        Some(c) => {
            check_dns_label("container name", c)?;
            c.to_string()
        }
        None => p
            .spec
            .containers
            .first()
            .map(|c| c.name.clone())
            .ok_or_else(|| ExecError::NoContainer {
                container: String::new(),
                pod: full.clone(),
                names: Vec::new(),
            })?,
    };
    let statuses = p
        .status
        .init_container_statuses
        .iter()
        .chain(&p.status.container_statuses);
    let st = statuses
        .clone()
        .find(|s| s.name == container)
        .ok_or_else(|| ExecError::NoContainer {
            container: container.clone(),
            pod: full.clone(),
            names: statuses.map(|s| s.name.clone()).collect(),
        })?;
    if st.state.running.is_none() {
        return Err(ExecError::NotRunning {
            container,
            pod: full,
        });
    }
    let id = PodId::new(ns, name, &p.metadata.uid)?;
    Ok(ExecTarget {
        runtime_root: layout.pod_dir(&id).join("runc"),
        container_id: container_id(&id, &container, st.restart_count)?,
        container,
    })
}

/// Finds the target in the status files under `layout`'s pod root.
pub fn resolve(
    layout: &PodLayout,
    pod: &str,
    namespace: &str,
    container: Option<&str>,
) -> Result<ExecTarget, ExecError> {
    let (ns, name) = pod_ref(pod, namespace)?;
    let pods = read_pods(layout.pod_root())?;
    find_target(&pods, layout, ns, name, container)
}

/// The OCI runtime's arguments (after the binary) that run `command` in `target`, with a
/// terminal when `tty`. The command follows the container id, where runc stops parsing flags,
/// so a command starting with `-` is the command's own.
pub fn runtime_args(
    target: &ExecTarget,
    tty: bool,
    command: &[String],
) -> Result<Vec<OsString>, ExecError> {
    if command.is_empty() {
        return Err(ExecError::NoCommand);
    }
    let mut args: Vec<OsString> = vec![
        "--root".into(),
        target.runtime_root.clone().into(),
        "exec".into(),
    ];
    if tty {
        args.push("--tty".into());
    }
    args.push(target.container_id.clone().into());
    args.extend(command.iter().map(OsString::from));
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::manifest::parse_manifest;
    use crate::pod::status::{ContainerState, ContainerStatus, PodObject, StartTimings};
    use std::path::Path;

    fn record() -> PodRecord {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop, uid: u-1}\nspec:\n  containers:\n    - {name: app, image: busybox}\n    - {name: side, image: busybox}\n";
        let m = parse_manifest(Path::new("/m/p.yaml"), text.as_bytes()).unwrap();
        let mut o = PodObject::new(&m.pod);
        o.status.container_statuses = vec![
            ContainerStatus {
                restart_count: 3,
                state: ContainerState::running("2026-11-28T06:00:01Z"),
                ..ContainerStatus::new("app", "busybox", "")
            },
            ContainerStatus::new("side", "busybox", "ContainerCreating"),
        ];
        PodRecord {
            pod: o,
            manifest: "/m/p.yaml".into(),
            timings: StartTimings::default(),
        }
    }

    #[test]
    fn default_container_is_the_first_app_container() {
        let pods = [record()];
        let layout = PodLayout::new(Path::new("/p"), Path::new("/l"));
        let t = find_target(&pods, &layout, "shop", "web", None).unwrap();
        assert_eq!(t.container_id, "u-1_app_3");
        assert_eq!(t.runtime_root, Path::new("/p/shop_web_u-1/runc"));
        let args = runtime_args(&t, true, &["ls".into(), "-l".into()]).unwrap();
        assert_eq!(
            args,
            [
                "--root",
                "/p/shop_web_u-1/runc",
                "exec",
                "--tty",
                "u-1_app_3",
                "ls",
                "-l"
            ]
            .map(OsString::from)
        );
        assert!(matches!(
            runtime_args(&t, false, &[]),
            Err(ExecError::NoCommand)
        ));
    }

    #[test]
    fn bad_names_and_stopped_containers_are_refused() {
        let pods = [record()];
        let root = &PodLayout::new(Path::new("/p"), Path::new("/l"));
        let e = find_target(&pods, root, "shop", "web", Some("nope")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "container nope is not valid for pod shop/web, choose one of: [\"app\", \"side\"]"
        );
        assert!(matches!(
            find_target(&pods, root, "shop", "web", Some("side")),
            Err(ExecError::NotRunning { .. })
        ));
        assert!(matches!(
            find_target(&pods, root, "shop", "web", Some("../app")),
            Err(ExecError::Name(_))
        ));
        assert!(matches!(
            find_target(&pods, root, "shop", "other", None),
            Err(ExecError::NoPod { .. })
        ));
        assert!(pod_ref("../x", "default").is_err());
        assert!(pod_ref("a/b/c", "default").is_err());
        assert!(pod_ref("Shop/web", "default").is_err());
        assert_eq!(pod_ref("shop/web", "default").unwrap(), ("shop", "web"));
        assert_eq!(pod_ref("web", "default").unwrap(), ("default", "web"));
    }
}
