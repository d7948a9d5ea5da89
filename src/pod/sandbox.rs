//! The pod sandbox: a `weft-pause` process creating the pod's network, IPC and UTS namespaces
//! (those the pod does not share with the node), each held by a bind-mounted namespace file —
//! the network's at `/run/netns/<name>` for CNI and operators, IPC and UTS in `<pod_dir>/ns/` —
//! and the pod's generated `/etc/hosts`, `/etc/resolv.conf` and `/etc/hostname`.
//!
//! Containers join the namespace files, never `/proc/<pause pid>/ns/*`: once pause is dead its
//! pid may name any process. weft watches the pause process through a pidfd; its death means the
//! sandbox is gone and the pod worker re-creates it.
//!
//! The pause process is daemonized (not a child of weftd), so it outlives a weftd crash; the
//! [`SandboxState`] written to `<pod_dir>/sandbox.json` lets a restarted weftd [`Sandbox::adopt`] it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::fd::{AsFd as _, FromRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::bundle::SandboxPaths;
use super::process::{helper_binary, run_helper, ProcessId};
use super::security::HostNamespaces;
use crate::atomic_file::write_atomic;

/// Where named network namespaces are bind-mounted (iproute2's convention).
pub const NETNS_DIR: &str = "/run/netns";

/// Longest network namespace name weft generates.
pub const MAX_NETNS_NAME: usize = 64;

/// Errors of sandbox handling, naming the pod, the operation and the value.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A filesystem operation failed.
    #[error("sandbox {pod}: {op} {path}: {source}")]
    Io {
        /// Pod id.
        pod: String,
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A mount operation failed.
    #[error("sandbox {pod}: {op} {path}: {source}")]
    Mount {
        /// Pod id.
        pod: String,
        /// What was being done.
        op: &'static str,
        /// The mount point.
        path: PathBuf,
        /// The errno.
        source: nix::errno::Errno,
    },
    /// `weft-pause` did not start.
    #[error("sandbox {pod}: start pause process {binary}: {reason}")]
    Pause {
        /// Pod id.
        pod: String,
        /// The pause binary.
        binary: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The network namespace name is taken by something else.
    #[error("sandbox {pod}: network namespace {path} already exists")]
    NetnsExists {
        /// Pod id.
        pod: String,
        /// The netns path.
        path: PathBuf,
    },
    /// The pause process did not go away.
    #[error("sandbox {pod}: pause process {pid} did not exit after SIGKILL")]
    Stuck {
        /// Pod id.
        pod: String,
        /// Its pid.
        pid: i32,
    },
    /// `sandbox.json` could not be read or written.
    #[error("sandbox {pod}: {op} state {path}: {source}")]
    State {
        /// Pod id.
        pod: String,
        /// What was being done.
        op: &'static str,
        /// The state file.
        path: PathBuf,
        /// The error.
        source: serde_json::Error,
    },
}

/// What a restarted weftd needs to take a sandbox over: kept in `<pod_dir>/sandbox.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxState {
    /// The pod id the sandbox was created for.
    pub pod_id: String,
    /// Hostname inside the sandbox (the pod's).
    pub hostname: String,
    /// Name of the bind-mounted network namespace under [`NETNS_DIR`].
    pub netns_name: String,
    /// The pause process.
    pub pause: ProcessId,
    /// The pod directory holding `etc/`, `ns/` and `sandbox.json`.
    pub pod_dir: PathBuf,
    /// The node namespaces the pod shares instead of its own.
    #[serde(default)]
    pub host: HostNamespaces,
}

impl SandboxState {
    /// Reads `<pod_dir>/sandbox.json`; `None` when there is none.
    pub fn load(pod_dir: &Path) -> Result<Option<SandboxState>, SandboxError> {
        let path = pod_dir.join("sandbox.json");
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(SandboxError::Io {
                    pod: pod_dir.display().to_string(),
                    op: "read",
                    path,
                    source,
                })
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| SandboxError::State {
                pod: pod_dir.display().to_string(),
                op: "parse",
                path,
                source,
            })
    }
}

/// A running (or adopted) pod sandbox.
#[derive(Debug, Clone)]
pub struct Sandbox {
    state: SandboxState,
    /// A pidfd of the pause process: readable once it has exited, whatever reuses its pid.
    pidfd: Option<Arc<OwnedFd>>,
}

/// A pidfd for `pause`, checked to be that very process (not a later one with its pid).
fn open_pidfd(pause: &ProcessId) -> Option<Arc<OwnedFd>> {
    // nix (0.29) has no pidfd_open: one raw syscall.
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pause.pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is a freshly opened descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // The pid could have been reused between reading its identity and opening the pidfd.
    pause.is_alive().then(|| Arc::new(fd))
}

/// Whether the process behind `pidfd` has exited (a pidfd polls readable then).
fn pidfd_exited(pidfd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    nix::poll::poll(&mut fds, PollTimeout::ZERO).is_ok_and(|ready| ready > 0)
}

/// The network namespace name for a pod id: `weft-<id>` with characters outside
/// `[A-Za-z0-9_.-]` replaced by `-`, shortened with a hash suffix to at most 64 characters.
pub fn netns_name(pod_id: &str) -> String {
    let clean: String = pod_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = format!("weft-{clean}");
    if name.len() <= MAX_NETNS_NAME {
        return name;
    }
    let digest = Sha256::digest(pod_id.as_bytes());
    let suffix: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("{}-{suffix}", &name[..MAX_NETNS_NAME - suffix.len() - 1])
}

/// `/etc/hosts` for a pod, like the kubelet writes it.
pub fn hosts_file(hostname: &str, pod_ip: Option<IpAddr>) -> String {
    let mut hosts = String::from(
        "# Kubernetes-managed hosts file (weft).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    if let Some(ip) = pod_ip {
        hosts.push_str(&format!("{ip}\t{hostname}\n"));
    }
    hosts
}

/// The node's resolver configuration for pods: `/etc/resolv.conf`, or systemd-resolved's upstream
/// file when the former only points at a loopback stub pods cannot reach.
fn host_resolv_conf() -> String {
    let main = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let servers: Vec<&str> = main
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .map(str::trim)
        .collect();
    let only_loopback = !servers.is_empty()
        && servers
            .iter()
            .all(|s| s.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()));
    if only_loopback {
        if let Ok(upstream) = fs::read_to_string("/run/systemd/resolve/resolv.conf") {
            return upstream;
        }
    }
    main
}

impl Sandbox {
    /// Starts a pause process in new network, IPC and UTS namespaces (those not shared with the
    /// node per `host`) with `hostname`; pause bind-mounts its network namespace at
    /// `/run/netns/<netns_name(pod_id)>` and its IPC and UTS namespaces at `<pod_dir>/ns/`.
    /// Writes the pod's `/etc` files under `<pod_dir>/etc/` and the state to
    /// `<pod_dir>/sandbox.json`.
    pub fn create(
        pod_id: &str,
        hostname: &str,
        pod_dir: &Path,
        host: HostNamespaces,
    ) -> Result<Sandbox, SandboxError> {
        let pod = pod_id.to_string();
        let io = |op: &'static str, path: &Path| {
            let pod = pod.clone();
            let path = path.to_path_buf();
            move |source| SandboxError::Io {
                pod,
                op,
                path,
                source,
            }
        };
        let etc = pod_dir.join("etc");
        create_dir(&pod, &etc, 0o755)?;
        for (file, contents) in [
            ("hosts", hosts_file(hostname, None)),
            ("hostname", format!("{hostname}\n")),
            ("resolv.conf", host_resolv_conf()),
        ] {
            let path = etc.join(file);
            write_atomic(&path, contents.as_bytes(), 0o644).map_err(io("write", &path))?;
        }
        let netns = netns_name(pod_id);
        let netns_path = Path::new(NETNS_DIR).join(&netns);
        let ns_dir = pod_dir.join("ns");
        create_dir(&pod, &ns_dir, 0o700)?;
        let mut files = Vec::new();
        if !host.network {
            prepare_netns_dir(pod_id)?;
            if netns_path.exists() {
                return Err(SandboxError::NetnsExists {
                    pod: pod.clone(),
                    path: netns_path,
                });
            }
            files.push(("--netns-file", netns_path.clone()));
            files.push(("--uts-file", ns_dir.join("uts")));
        }
        if !host.ipc {
            files.push(("--ipc-file", ns_dir.join("ipc")));
        }
        let sandbox = Sandbox {
            state: SandboxState {
                pod_id: pod.clone(),
                hostname: hostname.to_string(),
                netns_name: netns,
                pause: ProcessId {
                    pid: 0,
                    start_time: 0,
                },
                pod_dir: pod_dir.to_path_buf(),
                host,
            },
            pidfd: None,
        };
        let started = create_ns_files(pod_id, &files)
            .and_then(|()| start_pause(pod_id, hostname, pod_dir, &files));
        let pause = match started {
            Ok(p) => p,
            Err(e) => {
                if let Err(cleanup) = sandbox.release_ns_files() {
                    tracing::warn!(pod = %pod, error = %cleanup, "clean up half-created sandbox");
                }
                return Err(e);
            }
        };
        let sandbox = Sandbox {
            pidfd: open_pidfd(&pause),
            state: SandboxState {
                pause,
                ..sandbox.state
            },
        };
        if let Err(e) = sandbox.save() {
            if let Err(cleanup) = sandbox.stop(Duration::from_secs(1)) {
                tracing::warn!(pod = %pod, error = %cleanup, "clean up half-created sandbox");
            }
            return Err(e);
        }
        tracing::info!(pod = %pod, pid = pause.pid, netns = %sandbox.state.netns_name, "sandbox created");
        Ok(sandbox)
    }

    /// Takes over a sandbox from its saved state (after a weftd restart). The pause process may
    /// have died meanwhile: check [`Sandbox::is_running`]; [`Sandbox::stop`] cleans up either way.
    pub fn adopt(state: SandboxState) -> Sandbox {
        let pidfd = open_pidfd(&state.pause);
        Sandbox { state, pidfd }
    }

    /// The state to persist for [`Sandbox::adopt`] (also saved in `<pod_dir>/sandbox.json`).
    pub fn state(&self) -> &SandboxState {
        &self.state
    }

    /// The pause process's pid.
    pub fn pid(&self) -> i32 {
        self.state.pause.pid
    }

    /// Whether the pause process (the very one started) is alive and its namespace files are
    /// in place.
    pub fn is_running(&self) -> bool {
        let alive = match &self.pidfd {
            Some(fd) => !pidfd_exited(fd),
            None => self.state.pause.is_alive(),
        };
        alive && self.ns_files().iter().all(|(_, f)| is_nsfs(f))
    }

    /// The node namespaces the pod shares.
    pub fn host(&self) -> HostNamespaces {
        self.state.host
    }

    /// The namespace files this sandbox holds, by kind.
    fn ns_files(&self) -> Vec<(&'static str, PathBuf)> {
        let dir = self.state.pod_dir.join("ns");
        let mut files = Vec::new();
        if !self.state.host.network {
            files.push(("net", Path::new(NETNS_DIR).join(&self.state.netns_name)));
            files.push(("uts", dir.join("uts")));
        }
        if !self.state.host.ipc {
            files.push(("ipc", dir.join("ipc")));
        }
        files
    }

    /// Unmounts and removes the namespace files (idempotent).
    fn release_ns_files(&self) -> Result<(), SandboxError> {
        let pod = &self.state.pod_id;
        for (_, path) in self.ns_files() {
            match umount2(&path, MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::ENOENT) | Err(nix::errno::Errno::EINVAL) => {}
                Err(source) => {
                    return Err(SandboxError::Mount {
                        pod: pod.clone(),
                        op: "unmount namespace file",
                        path,
                        source,
                    })
                }
            }
            remove_if_present(pod, &path, |p| fs::remove_file(p))?;
        }
        Ok(())
    }

    /// Name of the network namespace under `/run/netns`.
    pub fn netns_name(&self) -> &str {
        &self.state.netns_name
    }

    /// `/run/netns/<name>`: the path CNI plugins get as `CNI_NETNS`. For a `hostNetwork` pod
    /// the calling thread's own network namespace (the node's).
    pub fn netns_path(&self) -> PathBuf {
        if self.state.host.network {
            return PathBuf::from("/proc/thread-self/ns/net");
        }
        Path::new(NETNS_DIR).join(&self.state.netns_name)
    }

    /// The namespaces and files a container of this pod joins and mounts.
    pub fn paths(&self) -> SandboxPaths {
        let files = self.ns_files();
        let ns = |kind: &str| {
            files
                .iter()
                .find(|(k, _)| *k == kind)
                .map(|(_, p)| p.clone())
        };
        let etc = self.state.pod_dir.join("etc");
        SandboxPaths {
            net_ns: ns("net"),
            ipc_ns: ns("ipc"),
            uts_ns: ns("uts"),
            hosts: etc.join("hosts"),
            resolv_conf: etc.join("resolv.conf"),
            hostname: etc.join("hostname"),
            pid_ns: None,
        }
    }

    /// Rewrites the pod's `/etc/hosts` with its IP (after CNI ADD). Written in place, so
    /// containers that already bind-mount it see the change.
    pub fn set_pod_ip(&self, pod_ip: Option<IpAddr>) -> Result<(), SandboxError> {
        let path = self.paths().hosts;
        let contents = hosts_file(&self.state.hostname, pod_ip);
        OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .and_then(|mut f| f.write_all(contents.as_bytes()))
            .map_err(|source| SandboxError::Io {
                pod: self.state.pod_id.clone(),
                op: "write",
                path,
                source,
            })
    }

    fn save(&self) -> Result<(), SandboxError> {
        let path = self.state.pod_dir.join("sandbox.json");
        let bytes =
            serde_json::to_vec_pretty(&self.state).map_err(|source| SandboxError::State {
                pod: self.state.pod_id.clone(),
                op: "encode",
                path: path.clone(),
                source,
            })?;
        write_atomic(&path, &bytes, 0o644).map_err(|source| SandboxError::Io {
            pod: self.state.pod_id.clone(),
            op: "write",
            path,
            source,
        })
    }

    /// Stops the pause process (SIGTERM, `grace`, SIGKILL), unmounts and removes the network
    /// namespace file, and removes the sandbox's files from the pod directory. Idempotent.
    pub fn stop(&self, grace: Duration) -> Result<(), SandboxError> {
        let pod = &self.state.pod_id;
        if !self.state.pause.terminate(grace) {
            return Err(SandboxError::Stuck {
                pod: pod.clone(),
                pid: self.state.pause.pid,
            });
        }
        self.release_ns_files()?;
        let dir = &self.state.pod_dir;
        for path in [dir.join("sandbox.json"), dir.join("pause.pid")] {
            remove_if_present(pod, &path, |p| fs::remove_file(p))?;
        }
        for sub in ["etc", "ns"] {
            remove_if_present(pod, &dir.join(sub), |p| fs::remove_dir_all(p))?;
        }
        tracing::info!(pod = %pod, "sandbox stopped");
        Ok(())
    }
}

/// Removes `path` with `remove` (a file or a tree); already gone is fine.
fn remove_if_present(
    pod: &str,
    path: &Path,
    remove: impl FnOnce(&Path) -> io::Result<()>,
) -> Result<(), SandboxError> {
    match remove(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(SandboxError::Io {
            pod: pod.to_string(),
            op: "remove",
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Creates `dir` and its missing parents with permissions `mode`.
fn create_dir(pod: &str, dir: &Path, mode: u32) -> Result<(), SandboxError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|source| SandboxError::Io {
            pod: pod.to_string(),
            op: "create",
            path: dir.to_path_buf(),
            source,
        })
}

/// Makes `/run/netns` exist and be a shared mount point, as `ip netns add` does, so namespace
/// mounts made here propagate into other mount namespaces.
fn prepare_netns_dir(pod: &str) -> Result<(), SandboxError> {
    let dir = Path::new(NETNS_DIR);
    create_dir(pod, dir, 0o755)?;
    let mount_err = |op, source| SandboxError::Mount {
        pod: pod.to_string(),
        op,
        path: dir.to_path_buf(),
        source,
    };
    let flags = MsFlags::MS_SHARED | MsFlags::MS_REC;
    match mount(None::<&str>, dir, None::<&str>, flags, None::<&str>) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) => {
            // Not a mount point yet: bind it onto itself first.
            mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| mount_err("bind-mount onto itself", e))?;
            mount(None::<&str>, dir, None::<&str>, flags, None::<&str>)
                .map_err(|e| mount_err("make shared", e))
        }
        Err(e) => Err(mount_err("make shared", e)),
    }
}

/// Whether `path` is a mounted namespace file (nsfs), not the empty file under it.
fn is_nsfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// Creates the empty files pause bind-mounts its namespaces onto; an existing file is an error.
fn create_ns_files(pod: &str, files: &[(&str, PathBuf)]) -> Result<(), SandboxError> {
    for (_, path) in files {
        File::options()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|source| SandboxError::Io {
                pod: pod.to_string(),
                op: "create namespace file",
                path: path.clone(),
                source,
            })?;
    }
    Ok(())
}

/// Runs `weft-pause --sandbox`, which unshares, sets the hostname, bind-mounts its namespaces
/// onto `files`, daemonizes and reports the daemon's pid through `<pod_dir>/pause.pid` before
/// its first process exits.
fn start_pause(
    pod: &str,
    hostname: &str,
    pod_dir: &Path,
    files: &[(&str, PathBuf)],
) -> Result<ProcessId, SandboxError> {
    let binary = helper_binary("weft-pause");
    let pid_file = pod_dir.join("pause.pid");
    let fail = |reason: String| SandboxError::Pause {
        pod: pod.to_string(),
        binary: binary.clone(),
        reason,
    };
    run_helper(
        Command::new(&binary)
            .arg("--sandbox")
            .arg("--hostname")
            .arg(hostname)
            .arg("--pid-file")
            .arg(&pid_file)
            .args(
                files
                    .iter()
                    .flat_map(|(flag, path)| [flag.as_ref(), path.as_os_str()]),
            ),
    )
    .map_err(|e| fail(e.to_string()))?;
    let text = fs::read_to_string(&pid_file)
        .map_err(|e| fail(format!("read {}: {e}", pid_file.display())))?;
    let pid: i32 = text.trim().parse().map_err(|e| {
        fail(format!(
            "pid file {} holds {text:?}: {e}",
            pid_file.display()
        ))
    })?;
    ProcessId::of(pid).ok_or_else(|| fail(format!("pause process {pid} exited right after start")))
}

/// The pod worker's seam to sandboxes: make one, ask whether it still holds the pod's
/// namespaces, remove it; [`PauseSandboxes`] (a pause process per pod) is one implementation.
pub trait SandboxRuntime {
    /// Makes the sandbox of pod `pod_id` (see [`Sandbox::create`]).
    fn create(
        &self,
        pod_id: &str,
        hostname: &str,
        pod_dir: &Path,
        host: HostNamespaces,
    ) -> Result<Sandbox, SandboxError>;
    /// Whether `sandbox` still holds the pod's namespaces.
    fn is_running(&self, sandbox: &Sandbox) -> bool;
    /// Stops `sandbox` and removes its namespaces and files.
    fn stop(&self, sandbox: &Sandbox, grace: Duration) -> Result<(), SandboxError>;
}

/// Sandboxes held by a `weft-pause` process each.
#[derive(Debug, Clone, Copy, Default)]
pub struct PauseSandboxes;

impl SandboxRuntime for PauseSandboxes {
    fn create(
        &self,
        pod_id: &str,
        hostname: &str,
        pod_dir: &Path,
        host: HostNamespaces,
    ) -> Result<Sandbox, SandboxError> {
        Sandbox::create(pod_id, hostname, pod_dir, host)
    }

    fn is_running(&self, sandbox: &Sandbox) -> bool {
        sandbox.is_running()
    }

    fn stop(&self, sandbox: &Sandbox, grace: Duration) -> Result<(), SandboxError> {
        sandbox.stop(grace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_names_are_clean_and_bounded() {
        assert_eq!(netns_name("default-web-1a2b3c"), "weft-default-web-1a2b3c");
        assert_eq!(netns_name("ns/web x"), "weft-ns-web-x");
        let long = "a".repeat(200);
        let name = netns_name(&long);
        assert_eq!(name.len(), MAX_NETNS_NAME);
        assert_ne!(name, netns_name(&format!("{long}b")));
    }

    #[test]
    fn hosts_file_names_the_pod() {
        let ip: IpAddr = [10, 244, 1, 5].into();
        let hosts = hosts_file("myapp-pod", Some(ip));
        assert!(hosts.contains("127.0.0.1\tlocalhost\n"));
        assert!(hosts.ends_with("10.244.1.5\tmyapp-pod\n"));
        assert!(!hosts_file("myapp-pod", None).contains("myapp-pod"));
    }
}
