//! `weftctl debug`: an ephemeral debug container in a running pod, as `kubectl debug
//! --image --target` adds one: it runs an image of the operator's choice in the pod's network,
//! IPC and UTS namespaces (and in the target container's PID namespace when asked), so tools
//! the application image lacks can look at the application from inside its pod. It is
//! started through the pod's own OCI runtime root (so removing the pod removes it too), its
//! output is printed, and it is deleted once it exits.

use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::bundle::ContainerSpec;
use super::cli::{read_pods, CliError};
use super::crilog::log_text;
use super::exec::{find_pod, find_target, pod_ref, ExecError};
use super::image::{ImageError, ImageStore};
use super::layout::{container_id, LayoutError, PodId, PodLayout, LOG_DIR_MODE};
use super::resources::ContainerResources;
use super::runtime::{OciRuntime, RuntimeError};
use super::sandbox::{Sandbox, SandboxError, SandboxState};
use super::seccomp;
use super::security::ContainerSecurity;
use super::status::{self, ContainerState, ContainerStatus};
use crate::atomic_file::write_atomic;

/// Errors of running a debug container.
#[derive(Debug, thiserror::Error)]
pub enum DebugError {
    /// The pod or the target container cannot be found or named.
    #[error(transparent)]
    Target(#[from] ExecError),
    /// Reading the status files failed.
    #[error(transparent)]
    Read(#[from] CliError),
    /// A name cannot name a path.
    #[error(transparent)]
    Name(#[from] LayoutError),
    /// The pod has no sandbox (yet or any more).
    #[error("pod {0} has no running sandbox to join")]
    NoSandbox(String),
    /// The sandbox state is unreadable.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The image is not in the store.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The OCI runtime failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The target container has no process whose PID namespace could be joined.
    #[error("target container {0} has no running process")]
    TargetGone(String),
    /// Creating the log directory or writing the output failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// How many ephemeral containers' statuses a pod keeps.
const MAX_EPHEMERAL: usize = 16;

/// What to run: `kubectl debug POD --image IMAGE [--target CONTAINER] -- COMMAND`.
#[derive(Debug, Clone)]
pub struct DebugRequest {
    /// `NAME` or `NAMESPACE/NAME`.
    pub pod: String,
    /// The namespace when `pod` has none.
    pub namespace: String,
    /// The image, as imported into the node's store.
    pub image: String,
    /// The container whose PID namespace to join.
    pub target: Option<String>,
    /// The command; the image's entrypoint and cmd when empty.
    pub command: Vec<String>,
}

/// `debugger-` and five characters, as kubectl names a debug container.
pub fn debugger_name(seed: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut n = seed;
    let mut name = String::from("debugger-");
    for _ in 0..5 {
        name.push(char::from(ALPHABET[(n % ALPHABET.len() as u64) as usize]));
        n /= ALPHABET.len() as u64;
    }
    name
}

/// The ephemeral containers' statuses recorded in `file` (none when it is missing or unreadable:
/// they are informational and must not hide the pod).
pub fn read_ephemeral(file: &Path) -> Vec<ContainerStatus> {
    std::fs::read(file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Adds or replaces `st` in `file` (written atomically, in the 0700 pod directory), as the kubelet keeps an ephemeral
/// container's status after it ended. A failure only costs the status line, so it is logged.
fn record_ephemeral(file: &Path, st: &ContainerStatus) {
    let mut all = read_ephemeral(file);
    all.retain(|s| s.name != st.name);
    all.push(st.clone());
    // Bounded: the oldest debug sessions' statuses go first.
    let excess = all.len().saturating_sub(MAX_EPHEMERAL);
    all.drain(..excess);
    let written = serde_json::to_vec_pretty(&all)
        .map_err(std::io::Error::other)
        .and_then(|json| write_atomic(file, &json, 0o644));
    if let Err(e) = written {
        tracing::warn!(file = %file.display(), error = %e, "record ephemeral container status");
    }
}

/// Runs the debug container to its end, printing its output to `out`; returns its exit code.
pub fn run(
    layout: &PodLayout,
    images: &ImageStore,
    oci_runtime: &str,
    req: &DebugRequest,
    out: &mut dyn Write,
) -> Result<i32, DebugError> {
    let (ns, name) = pod_ref(&req.pod, &req.namespace)?;
    let pods = read_pods(layout.pod_root())?;
    let rec = find_pod(&pods, layout, ns, name)?;
    let pod = PodId::new(ns, name, &rec.pod.metadata.uid)?;
    let dir = layout.pod_dir(&pod);
    let runtime = OciRuntime::new(oci_runtime, &dir);
    let state =
        SandboxState::load(&dir)?.ok_or_else(|| DebugError::NoSandbox(format!("{ns}/{name}")))?;
    let mut paths = Sandbox::adopt(state).paths();
    if let Some(target) = &req.target {
        let t = find_target(&pods, layout, ns, name, Some(target))?;
        let pid = runtime
            .adopt(&t.container_id)?
            .pid()
            .ok_or_else(|| DebugError::TargetGone(target.clone()))?;
        paths.pid_ns = Some(PathBuf::from(format!("/proc/{pid}/ns/pid")));
    }
    let image = images.get(&req.image)?;
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id());
    let debugger = debugger_name(seed);
    let log_path = layout.container_log(&pod, &debugger, 0)?;
    let log_dir = log_path
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| layout.log_dir(&pod));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(LOG_DIR_MODE)
        .create(&log_dir)
        .map_err(|source| DebugError::Io {
            op: "create",
            path: log_dir.clone(),
            source,
        })?;
    let security = ContainerSecurity::default();
    let spec = ContainerSpec {
        id: container_id(&pod, &debugger, 0)?,
        pod_id: pod.dir_name(),
        name: debugger.clone(),
        image,
        command: req.command.clone(),
        args: Vec::new(),
        env: Vec::new(),
        working_dir: None,
        mounts: Vec::new(),
        hostname: rec
            .pod
            .spec
            .hostname
            .clone()
            .unwrap_or_else(|| name.to_string()),
        log_path: log_path.clone(),
        seccomp: Some(seccomp::runtime_default(
            &security.capabilities,
            std::env::consts::ARCH,
        )),
        security,
        resources: ContainerResources::default(),
        // A debug container is the first to go when the node runs out of memory.
        oom_score_adj: 1000,
        pids_limit: None,
    };
    let status_file = layout.ephemeral_containers(&pod);
    let mut st = ContainerStatus::new(&debugger, &req.image, "ContainerCreating");
    st.container_id = format!("weft://{}", spec.id);
    let handle = runtime.start_joining(&spec, &paths)?;
    let started = status::rfc3339(handle.started_at().unwrap_or_else(SystemTime::now));
    st.state = ContainerState::running(&started);
    st.started = true;
    record_ephemeral(&status_file, &st);
    let exit = loop {
        if let Some(exit) = handle.wait(Duration::from_secs(1))? {
            break exit;
        }
    };
    st.state = ContainerState::terminated(exit.code, &started, &status::rfc3339(exit.finished_at));
    st.started = false;
    record_ephemeral(&status_file, &st);
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let written = out.write_all(log_text(&text).as_bytes());
    // Removed when it exits, as the kubelet leaves nothing of an ended ephemeral container
    // but its status; the log directory goes with it.
    runtime.delete(&spec.id)?;
    if let Err(e) = std::fs::remove_dir_all(&log_dir) {
        tracing::warn!(container = %debugger, error = %e, "remove debug container log");
    }
    written.map_err(|source| DebugError::Io {
        op: "write",
        path: PathBuf::from("<stdout>"),
        source,
    })?;
    Ok(exit.code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debugger_names_are_kubectl_shaped_container_names() {
        for seed in [0, 1, 12345, u64::MAX] {
            let n = debugger_name(seed);
            assert_eq!(n.len(), "debugger-".len() + 5, "{n}");
            assert!(
                crate::pod::layout::check_dns_label("name", &n).is_ok(),
                "{n}"
            );
        }
        assert_ne!(debugger_name(1), debugger_name(2));
    }
}
