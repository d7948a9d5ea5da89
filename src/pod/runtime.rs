//! The OCI runtime wrapper: prepares a container's copy-on-write root filesystem (overlayfs over
//! the image) and bundle, and runs it through a per-container `weft-shim` that owns
//! `runc run` in the foreground, writes its output to the CRI log and its exit status to a file.
//! Because the shim is daemonized, containers and their exit codes survive a weftd restart;
//! [`OciRuntime::adopt`] re-attaches to them.
//!
//! Per container, under `<state_root>/containers/<id>/`: `config.json` (the bundle),
//! `rootfs/` (overlay mount), `upper/` and `work/` (overlay layers), `container.json`,
//! `shim.json` (shim identity), `container.pid` (written by runc once the container exists) and
//! `exit.json` (written by the shim when it is gone). runc's own state lives in
//! `<state_root>/runc`.
//!
//! All calls block (they spawn processes and poll files): call them from `spawn_blocking`.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::bundle::SandboxPaths;
use super::bundle::{oci_config, write_config, BundleError, ContainerSpec};
use super::crilog::log_text;
use super::process::{helper_binary, run_helper, ProcessId};
use super::sandbox::Sandbox;
use crate::atomic_file::write_atomic;

/// How long [`OciRuntime::start`] waits for the runtime to create the container.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors of the runtime layer, naming the container, the operation and the value.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A filesystem operation failed.
    #[error("container {id}: {op} {path}: {source}")]
    Io {
        /// Container id.
        id: String,
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A mount operation failed.
    #[error("container {id}: {op} {path}: {source}")]
    Mount {
        /// Container id.
        id: String,
        /// What was being done.
        op: &'static str,
        /// The mount point.
        path: PathBuf,
        /// The errno.
        source: nix::errno::Errno,
    },
    /// The bundle could not be generated.
    #[error("container {id}: {source}")]
    Bundle {
        /// Container id.
        id: String,
        /// The bundle error.
        source: BundleError,
    },
    /// The container id is not usable.
    #[error("container id {id:?}: {reason}")]
    InvalidId {
        /// The id.
        id: String,
        /// Why.
        reason: &'static str,
    },
    /// A container with this id already exists.
    #[error("container {id}: already exists in {dir}")]
    Exists {
        /// Container id.
        id: String,
        /// Its directory.
        dir: PathBuf,
    },
    /// No container with this id is known.
    #[error("container {id}: not found in {dir}")]
    NotFound {
        /// Container id.
        id: String,
        /// The directory looked for.
        dir: PathBuf,
    },
    /// The runtime or the shim failed to start the container.
    #[error("container {id}: start failed: {reason}")]
    Start {
        /// Container id.
        id: String,
        /// What happened, with the runtime's own message when there is one.
        reason: String,
    },
    /// Running the OCI runtime binary failed.
    #[error("container {id}: {runtime} {op}: {reason}")]
    Runtime {
        /// Container id.
        id: String,
        /// The runtime binary.
        runtime: String,
        /// The subcommand.
        op: &'static str,
        /// Exit status and stderr, or the spawn error.
        reason: String,
    },
    /// A state file could not be parsed.
    #[error("container {id}: parse {path}: {source}")]
    State {
        /// Container id.
        id: String,
        /// The file.
        path: PathBuf,
        /// The error.
        source: serde_json::Error,
    },
    /// The container did not stop.
    #[error("container {id}: still running {waited:?} after SIGKILL")]
    Stuck {
        /// Container id.
        id: String,
        /// How long we waited.
        waited: Duration,
    },
}

/// Why a container ended, in the Kubernetes vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitReason {
    /// Exit code 0.
    Completed,
    /// Non-zero exit code (including 128+N for death by signal N).
    Error,
    /// Killed by the OOM killer in its memory cgroup (exit code 137).
    OomKilled,
    /// The runtime could not create or start the container (bad command, missing mount, ...).
    StartError,
    /// The shim vanished without recording an exit status; the code is 255.
    Unknown,
}

impl ExitReason {
    /// The reason string Kubernetes shows in `state.terminated.reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::Completed => "Completed",
            ExitReason::Error => "Error",
            ExitReason::OomKilled => "OOMKilled",
            ExitReason::StartError => "StartError",
            ExitReason::Unknown => "Unknown",
        }
    }
}

/// How a container ended: the content of its `exit.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code (`128 + N` when killed by signal N, as runc reports it).
    pub code: i32,
    /// Why it ended.
    pub reason: ExitReason,
    /// When the container process started, if it did.
    pub started_at: Option<SystemTime>,
    /// When the shim saw it end.
    pub finished_at: SystemTime,
}

/// What is known of a container right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    /// The shim is up and the runtime is still creating the container.
    Creating,
    /// The container process runs.
    Running {
        /// Its pid (host pid namespace).
        pid: i32,
        /// When it started.
        started_at: SystemTime,
    },
    /// It has ended.
    Exited(ExitStatus),
}

/// What weftd records of a container beside its bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// Runtime container id.
    pub id: String,
    /// The pod it belongs to.
    pub pod_id: String,
    /// Container name.
    pub name: String,
    /// Image id it runs.
    pub image_id: String,
    /// Its CRI log file.
    pub log_path: PathBuf,
}

/// A started (or adopted) container.
#[derive(Debug, Clone)]
pub struct ContainerHandle {
    record: ContainerRecord,
    shim: ProcessId,
    dir: PathBuf,
}

/// An OCI runtime (`runc` or `crun`) with weft's container state directory.
#[derive(Debug, Clone)]
pub struct OciRuntime {
    binary: String,
    state_root: PathBuf,
}

fn check_id(id: &str) -> Result<(), RuntimeError> {
    let invalid = |reason| RuntimeError::InvalidId {
        id: id.to_string(),
        reason,
    };
    if id.is_empty() || id.len() > 200 {
        return Err(invalid("must be 1-200 characters"));
    }
    if id.starts_with('.') {
        return Err(invalid("must not start with '.'"));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(invalid("must be [A-Za-z0-9_.-]"));
    }
    Ok(())
}

/// The mount options of an overlay with one lower layer; rejects paths overlayfs cannot take.
pub fn overlay_options(lower: &Path, upper: &Path, work: &Path) -> Result<String, &'static str> {
    let parts = [lower, upper, work].map(|p| p.to_string_lossy().into_owned());
    if parts.iter().any(|p| p.contains([',', ':'])) {
        return Err("overlay paths must not contain ',' or ':'");
    }
    Ok(format!(
        "lowerdir={},upperdir={},workdir={}",
        parts[0], parts[1], parts[2]
    ))
}

/// The shim identity the shim wrote to `<dir>/shim.json`.
fn read_shim(id: &str, dir: &Path) -> Result<ProcessId, RuntimeError> {
    let path = dir.join("shim.json");
    let bytes = fs::read(&path).map_err(|source| RuntimeError::Io {
        id: id.to_string(),
        op: "read",
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| RuntimeError::State {
        id: id.to_string(),
        path,
        source,
    })
}

/// The last `n` lines of a CRI log file as plain text (for start errors).
fn log_tail(path: &Path, n: usize) -> String {
    let text = log_text(&fs::read_to_string(path).unwrap_or_default());
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

impl ContainerHandle {
    /// Runtime container id.
    pub fn id(&self) -> &str {
        &self.record.id
    }

    /// What was recorded at start.
    pub fn record(&self) -> &ContainerRecord {
        &self.record
    }

    /// The shim supervising the container (not a child of weftd: it has its own session).
    pub fn shim(&self) -> ProcessId {
        self.shim
    }

    /// The container's state directory (also its OCI bundle).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The exit status, once the container has ended; `None` while it runs. Works on adopted
    /// handles: it reads `exit.json`, and reports [`ExitReason::Unknown`] (code 255) when the shim
    /// has died without writing it.
    pub fn poll(&self) -> Result<Option<ExitStatus>, RuntimeError> {
        if let Some(status) = self.read_exit()? {
            return Ok(Some(status));
        }
        if self.shim.is_alive() {
            return Ok(None);
        }
        // The shim may have written the file just before exiting.
        if let Some(status) = self.read_exit()? {
            return Ok(Some(status));
        }
        Ok(Some(ExitStatus {
            code: 255,
            reason: ExitReason::Unknown,
            started_at: self.started_at(),
            finished_at: SystemTime::now(),
        }))
    }

    /// Polls until the container ends or `timeout` passes.
    pub fn wait(&self, timeout: Duration) -> Result<Option<ExitStatus>, RuntimeError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.poll()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Current state: creating, running (pid, start time) or exited.
    pub fn state(&self) -> Result<ContainerState, RuntimeError> {
        if let Some(status) = self.poll()? {
            return Ok(ContainerState::Exited(status));
        }
        match (self.pid(), self.started_at()) {
            (Some(pid), Some(started_at)) => Ok(ContainerState::Running { pid, started_at }),
            _ => Ok(ContainerState::Creating),
        }
    }

    /// The container's init pid, once runc has created it.
    pub fn pid(&self) -> Option<i32> {
        fs::read_to_string(self.dir.join("container.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// When the container was created (the time runc wrote its pid file).
    pub fn started_at(&self) -> Option<SystemTime> {
        fs::metadata(self.dir.join("container.pid"))
            .ok()?
            .modified()
            .ok()
    }

    fn read_exit(&self) -> Result<Option<ExitStatus>, RuntimeError> {
        let path = self.dir.join("exit.json");
        match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| RuntimeError::State {
                        id: self.record.id.clone(),
                        path,
                        source,
                    })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(RuntimeError::Io {
                id: self.record.id.clone(),
                op: "read",
                path,
                source,
            }),
        }
    }
}

impl OciRuntime {
    /// A runtime driving `binary` (`runc`, `crun`, or a path), keeping container state under
    /// `state_root`.
    pub fn new(binary: &str, state_root: &Path) -> OciRuntime {
        // The shim runs from `/`, so every path it gets must be absolute.
        OciRuntime {
            binary: binary.to_string(),
            state_root: std::path::absolute(state_root)
                .unwrap_or_else(|_| state_root.to_path_buf()),
        }
    }

    /// The directory of container `id`.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.state_root.join("containers").join(id)
    }

    fn runtime_root(&self) -> PathBuf {
        self.state_root.join(super::layout::RUNTIME_STATE_DIR)
    }

    fn io(
        &self,
        id: &str,
        op: &'static str,
        path: &Path,
    ) -> impl FnOnce(io::Error) -> RuntimeError {
        let (id, path) = (id.to_string(), path.to_path_buf());
        move |source| RuntimeError::Io {
            id,
            op,
            path,
            source,
        }
    }

    /// Creates the container's overlay root filesystem and bundle, and starts it through a shim
    /// in `sandbox`'s namespaces. Returns once the container process exists; a container the
    /// runtime cannot start is an error carrying the runtime's message (and leaves nothing behind).
    pub fn start(
        &self,
        spec: &ContainerSpec,
        sandbox: &Sandbox,
    ) -> Result<ContainerHandle, RuntimeError> {
        self.start_joining(spec, &sandbox.paths())
    }

    /// [`OciRuntime::start`] with the namespaces and files to join given directly (an
    /// ephemeral debug container also joins a target container's PID namespace).
    pub fn start_joining(
        &self,
        spec: &ContainerSpec,
        sandbox: &SandboxPaths,
    ) -> Result<ContainerHandle, RuntimeError> {
        check_id(&spec.id)?;
        let id = spec.id.as_str();
        let dir = self.container_dir(id);
        if dir.exists() {
            return Err(RuntimeError::Exists {
                id: id.to_string(),
                dir,
            });
        }
        let result = self.start_in(spec, sandbox, &dir);
        if result.is_err() {
            // A runtime that timed out may still have created the container.
            if let Err(e) = self.run_runtime(id, "delete", &["delete", "--force", id]) {
                tracing::debug!(container = %id, error = %e, "runtime delete after failed start");
            }
            if let Err(e) = self.remove_dir(id, &dir) {
                tracing::warn!(container = %id, error = %e, "clean up failed start");
            }
        }
        result
    }

    fn start_in(
        &self,
        spec: &ContainerSpec,
        sandbox: &SandboxPaths,
        dir: &Path,
    ) -> Result<ContainerHandle, RuntimeError> {
        let id = spec.id.as_str();
        let (rootfs, upper, work) = (dir.join("rootfs"), dir.join("upper"), dir.join("work"));
        for d in [&rootfs, &upper, &work, &self.runtime_root()] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)
                .map_err(self.io(id, "create", d))?;
        }
        // The overlay's root takes the upper directory's mode: give it the image root's (0755
        // as a rule), or only root could enter `/` (the container directory stays 0700).
        let root_mode = fs::metadata(&spec.image.rootfs)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o755);
        fs::set_permissions(&upper, fs::Permissions::from_mode(root_mode))
            .map_err(self.io(id, "chmod", &upper))?;
        let options = overlay_options(&spec.image.rootfs, &upper, &work).map_err(|reason| {
            RuntimeError::Start {
                id: id.to_string(),
                reason: reason.to_string(),
            }
        })?;
        mount(
            Some("overlay"),
            &rootfs,
            Some("overlay"),
            MsFlags::empty(),
            Some(options.as_str()),
        )
        .map_err(|source| RuntimeError::Mount {
            id: id.to_string(),
            op: "mount overlay on",
            path: rootfs.clone(),
            source,
        })?;
        let config = oci_config(spec, &rootfs, sandbox).map_err(|source| RuntimeError::Bundle {
            id: id.to_string(),
            source,
        })?;
        write_config(dir, &config).map_err(|source| RuntimeError::Bundle {
            id: id.to_string(),
            source,
        })?;
        if let Some(log_dir) = spec.log_path.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(super::layout::LOG_DIR_MODE)
                .create(log_dir)
                .map_err(self.io(id, "create log directory", log_dir))?;
        }
        let record = ContainerRecord {
            id: id.to_string(),
            pod_id: spec.pod_id.clone(),
            name: spec.name.clone(),
            image_id: spec.image.id.clone(),
            log_path: spec.log_path.clone(),
        };
        let record_path = dir.join("container.json");
        let bytes = serde_json::to_vec_pretty(&record).map_err(|source| RuntimeError::State {
            id: id.to_string(),
            path: record_path.clone(),
            source,
        })?;
        write_atomic(&record_path, &bytes, 0o644).map_err(self.io(id, "write", &record_path))?;
        let shim = self.spawn_shim(id, dir, &spec.log_path)?;
        let handle = ContainerHandle {
            record,
            shim,
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if handle.pid().is_some() {
                tracing::info!(container = %id, pod = %spec.pod_id, name = %spec.name, "container started");
                return Ok(handle);
            }
            if let Some(status) = handle.poll()? {
                if status.reason != ExitReason::StartError && status.started_at.is_some() {
                    return Ok(handle);
                }
                return Err(RuntimeError::Start {
                    id: id.to_string(),
                    reason: format!(
                        "{} exited {} before the container existed: {}",
                        self.binary,
                        status.code,
                        log_tail(&spec.log_path, 5)
                    ),
                });
            }
            if Instant::now() >= deadline {
                shim.signal(Signal::SIGKILL);
                return Err(RuntimeError::Start {
                    id: id.to_string(),
                    reason: format!(
                        "{} did not create the container within {START_TIMEOUT:?}",
                        self.binary
                    ),
                });
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn spawn_shim(&self, id: &str, dir: &Path, log: &Path) -> Result<ProcessId, RuntimeError> {
        let binary = helper_binary("weft-shim");
        let fail = |reason: String| RuntimeError::Start {
            id: id.to_string(),
            reason: format!("{}: {reason}", binary.display()),
        };
        run_helper(
            Command::new(&binary)
                .arg("--runtime")
                .arg(&self.binary)
                .arg("--runtime-root")
                .arg(self.runtime_root())
                .arg("--bundle")
                .arg(dir)
                .arg("--id")
                .arg(id)
                .arg("--log")
                .arg(std::path::absolute(log).map_err(self.io(id, "resolve log path", log))?),
        )
        .map_err(|e| fail(e.to_string()))?;
        read_shim(id, dir)
    }

    /// Re-attaches to container `id` after a weftd restart, from its state directory.
    pub fn adopt(&self, id: &str) -> Result<ContainerHandle, RuntimeError> {
        check_id(id)?;
        let dir = self.container_dir(id);
        let path = dir.join("container.json");
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(RuntimeError::NotFound {
                    id: id.to_string(),
                    dir,
                })
            }
            Err(e) => return Err(self.io(id, "read", &path)(e)),
        };
        let record = serde_json::from_slice(&bytes).map_err(|source| RuntimeError::State {
            id: id.to_string(),
            path,
            source,
        })?;
        let shim = read_shim(id, &dir)?;
        Ok(ContainerHandle { record, shim, dir })
    }

    /// Ids of every container with a state directory (running, exited or half-created): what a
    /// restarted weftd compares against its pods to adopt or remove.
    pub fn list(&self) -> Result<Vec<String>, RuntimeError> {
        let dir = self.state_root.join("containers");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io("*", "list", &dir)(e)),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(self.io("*", "list", &dir))?;
            ids.push(entry.file_name().to_string_lossy().into_owned());
        }
        ids.sort();
        Ok(ids)
    }

    fn run_runtime(&self, id: &str, op: &'static str, args: &[&str]) -> Result<(), RuntimeError> {
        let output = Command::new(&self.binary)
            .arg("--root")
            .arg(self.runtime_root())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| RuntimeError::Runtime {
                id: id.to_string(),
                runtime: self.binary.clone(),
                op,
                reason: format!("spawn: {e}"),
            })?;
        if output.status.success() {
            return Ok(());
        }
        Err(RuntimeError::Runtime {
            id: id.to_string(),
            runtime: self.binary.clone(),
            op,
            reason: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        })
    }

    /// Sends `signal` to the container's init process. A container that has already ended is
    /// not an error.
    pub fn kill(&self, id: &str, signal: Signal) -> Result<(), RuntimeError> {
        let handle = self.adopt(id)?;
        if handle.poll()?.is_some() {
            return Ok(());
        }
        match self.run_runtime(id, "kill", &["kill", id, signal.as_str()]) {
            Ok(()) => Ok(()),
            // It may have ended between the poll and the kill.
            Err(_) if handle.wait(Duration::from_millis(200))?.is_some() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL; returns the exit status.
    pub fn stop(&self, id: &str, grace: Duration) -> Result<ExitStatus, RuntimeError> {
        let handle = self.adopt(id)?;
        if let Some(status) = handle.poll()? {
            return Ok(status);
        }
        self.kill(id, Signal::SIGTERM)?;
        if let Some(status) = handle.wait(grace)? {
            return Ok(status);
        }
        self.kill(id, Signal::SIGKILL)?;
        let waited = Duration::from_secs(10);
        handle.wait(waited)?.ok_or(RuntimeError::Stuck {
            id: id.to_string(),
            waited,
        })
    }

    /// The container's current state.
    pub fn state(&self, id: &str) -> Result<ContainerState, RuntimeError> {
        self.adopt(id)?.state()
    }

    /// Removes a container: kills it if it still runs, waits for its shim, unmounts its root
    /// filesystem and removes its directory (the log file stays). Idempotent.
    pub fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        check_id(id)?;
        let dir = self.container_dir(id);
        if !dir.exists() {
            return Ok(());
        }
        if let Ok(handle) = self.adopt(id) {
            if handle.poll()?.is_none() {
                self.stop(id, Duration::ZERO)?;
            }
            if !handle.shim.wait_gone(Duration::from_secs(10)) {
                handle.shim.signal(Signal::SIGKILL);
            }
        }
        // runc run removes its state when the container ends; this covers a killed shim.
        if let Err(e) = self.run_runtime(id, "delete", &["delete", "--force", id]) {
            tracing::debug!(container = %id, error = %e, "runtime delete (usually already gone)");
        }
        self.remove_dir(id, &dir)?;
        tracing::info!(container = %id, "container deleted");
        Ok(())
    }

    fn remove_dir(&self, id: &str, dir: &Path) -> Result<(), RuntimeError> {
        let rootfs = dir.join("rootfs");
        match umount2(&rootfs, MntFlags::empty()) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(nix::errno::Errno::EBUSY) => {
                umount2(&rootfs, MntFlags::MNT_DETACH).map_err(|source| RuntimeError::Mount {
                    id: id.to_string(),
                    op: "lazily unmount",
                    path: rootfs.clone(),
                    source,
                })?
            }
            Err(source) => {
                return Err(RuntimeError::Mount {
                    id: id.to_string(),
                    op: "unmount",
                    path: rootfs,
                    source,
                })
            }
        }
        match fs::remove_dir_all(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(id, "remove", dir)(e)),
        }
    }
}

/// The pod worker's seam to an OCI runtime: what it asks of containers, so its logic can run
/// against another runtime (or a fake) and [`OciRuntime`] stays one implementation.
pub trait ContainerRuntime {
    /// Starts `spec` in `sandbox`'s namespaces; returns once the process exists.
    fn start(
        &self,
        spec: &ContainerSpec,
        sandbox: &Sandbox,
    ) -> Result<ContainerHandle, RuntimeError>;
    /// Takes over container `id` started by an earlier weftd.
    fn adopt(&self, id: &str) -> Result<ContainerHandle, RuntimeError>;
    /// SIGTERM, `grace`, SIGKILL; the exit.
    fn stop(&self, id: &str, grace: Duration) -> Result<ExitStatus, RuntimeError>;
    /// Removes an ended container's runtime state (its log stays).
    fn delete(&self, id: &str) -> Result<(), RuntimeError>;
}

impl ContainerRuntime for OciRuntime {
    fn start(
        &self,
        spec: &ContainerSpec,
        sandbox: &Sandbox,
    ) -> Result<ContainerHandle, RuntimeError> {
        OciRuntime::start(self, spec, sandbox)
    }

    fn adopt(&self, id: &str) -> Result<ContainerHandle, RuntimeError> {
        OciRuntime::adopt(self, id)
    }

    fn stop(&self, id: &str, grace: Duration) -> Result<ExitStatus, RuntimeError> {
        OciRuntime::stop(self, id, grace)
    }

    fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        OciRuntime::delete(self, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(check_id("0d1f-app-0").is_ok());
        assert!(check_id("").is_err());
        assert!(check_id("../x").is_err());
        assert!(check_id(".hidden").is_err());
        assert!(check_id("a/b").is_err());
    }

    #[test]
    fn overlay_options_reject_separators() {
        assert_eq!(
            overlay_options(
                Path::new("/i/rootfs"),
                Path::new("/c/upper"),
                Path::new("/c/work")
            ),
            Ok("lowerdir=/i/rootfs,upperdir=/c/upper,workdir=/c/work".to_string())
        );
        assert!(overlay_options(Path::new("/i:x"), Path::new("/u"), Path::new("/w")).is_err());
        assert!(overlay_options(Path::new("/i"), Path::new("/u,x"), Path::new("/w")).is_err());
    }

    #[test]
    fn exit_status_round_trips_as_json() -> Result<(), serde_json::Error> {
        let status = ExitStatus {
            code: 3,
            reason: ExitReason::Error,
            started_at: Some(SystemTime::UNIX_EPOCH),
            finished_at: SystemTime::UNIX_EPOCH + Duration::from_secs(5),
        };
        let back: ExitStatus = serde_json::from_slice(&serde_json::to_vec(&status)?)?;
        assert_eq!(back, status);
        assert_eq!(ExitReason::StartError.as_str(), "StartError");
        Ok(())
    }
}
