//! A pod's life at its ends: the state a restarted weftd needs ([`WorkerState`] in
//! `<pod_dir>/pod.json`), taking over a pod a previous weftd left (adoption), releasing its
//! network, and removing it completely (teardown).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::actions::RunView;
use super::backoff::Backoff;
use super::cni::{load_network, Attachment, CniResult, CniRuntime, PodNetwork, POD_IFNAME};
use super::config::PodConfig;
use super::layout::{LayoutError, PodId};
use super::pod_worker::PodRun;
use super::probe::ProbeTracker;
use super::runtime::{ContainerHandle, OciRuntime};
use super::sandbox::{Sandbox, SandboxState};
use super::status::{self, parse_rfc3339, ContainerStatus};
use super::worker_error::WorkerError;

/// The file in a pod's directory holding its [`WorkerState`].
pub const STATE_FILE: &str = "pod.json";

/// Grace period for a sandbox's pause process, which exits on SIGTERM at once.
pub const SANDBOX_GRACE: Duration = Duration::from_secs(2);

/// What a restarted weftd needs to take a pod over or remove it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerState {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`.
    pub uid: String,
    /// The manifest file.
    pub manifest: PathBuf,
    /// The manifest's content hash.
    pub content_hash: String,
    /// `terminationGracePeriodSeconds`.
    pub grace_seconds: u64,
    /// The CNI network the pod was attached to (set once ADD succeeded).
    #[serde(default)]
    pub network: Option<String>,
    /// Back-off state per container name.
    #[serde(default)]
    pub backoff: BTreeMap<String, Backoff>,
}

impl WorkerState {
    /// The grace period, bounded as a manifest's is: a `pod.json` written before the bound
    /// (or by hand) must not overflow a deadline in the teardown that runs after a restart.
    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.grace_seconds.min(super::manifest::MAX_SECONDS))
    }

    /// Reads `<dir>/pod.json`; `None` when absent, unreadable, or naming a pod whose names
    /// cannot name paths (such a directory is left alone: removing it could reach anywhere).
    pub fn load(dir: &Path) -> Option<WorkerState> {
        let bytes = std::fs::read(dir.join(STATE_FILE)).ok()?;
        let state: WorkerState = serde_json::from_slice(&bytes).ok()?;
        match state.id() {
            Ok(_) => Some(state),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "pod state names an invalid pod; left alone");
                None
            }
        }
    }

    /// `namespace/name`.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The pod's checked identity, which names its directories and its CNI container id.
    pub fn id(&self) -> Result<PodId, LayoutError> {
        PodId::new(&self.namespace, &self.name, &self.uid)
    }

    pub(super) fn save(&self, dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        crate::atomic_file::write_atomic(&dir.join(STATE_FILE), &bytes, 0o644)
    }
}

/// Whether `pod_ip` lies inside the `FLANNEL_SUBNET` (or `FLANNEL_IPV6_SUBNET`) of the
/// `subnet.env` text; `None` when the file names no subnet of the address's family.
pub fn in_node_subnet(subnet_env: &str, pod_ip: IpAddr) -> Option<bool> {
    let key = if pod_ip.is_ipv4() {
        "FLANNEL_SUBNET="
    } else {
        "FLANNEL_IPV6_SUBNET="
    };
    let subnet = subnet_env
        .lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .and_then(|v| v.trim().parse::<ipnetwork::IpNetwork>().ok());
    subnet.map(|net| net.contains(pod_ip))
}

/// What a container's status, as a previous weftd left it, says of its last run: a run that
/// ended (and the back-off that followed it) keeps its times, so a restart waits out the rest
/// of its back-off, no more and no less.
fn adopted_run(s: &ContainerStatus) -> RunView {
    let ended = s
        .state
        .terminated
        .as_ref()
        .or(s.last_state.terminated.as_ref());
    let Some(t) = ended else {
        return RunView::Pending;
    };
    let finished_at = parse_rfc3339(&t.finished_at).unwrap_or_else(SystemTime::now);
    let ran = parse_rfc3339(&t.started_at)
        .and_then(|s| finished_at.duration_since(s).ok())
        .unwrap_or_default();
    RunView::Exited {
        code: t.exit_code,
        ran,
        finished_at,
    }
}

impl PodRun {
    /// Makes the pod's directory (removing a leftover of the same UID first), its state file and
    /// its volumes.
    pub(super) fn create_dir(&mut self) -> Result<(), WorkerError> {
        if self.dir.exists() {
            // A leftover of a pod with the same UID that was not removed completely.
            if let Some(old) = WorkerState::load(&self.dir) {
                teardown(&self.cfg, &self.dir, &old, None);
            }
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|source| WorkerError::Io {
                op: "create pod directory".into(),
                path: self.dir.clone(),
                source,
            })?;
        self.save_state();
        self.context().create_volumes()
    }

    /// Takes over the pod a previous weftd left in `dir`.
    pub(super) fn adopt(&mut self) -> Result<(), WorkerError> {
        if let (Some(old), Ok(rec)) = (WorkerState::load(&self.dir), status::read_record(&self.dir))
        {
            if matches!(
                rec.pod.status.phase,
                status::PodPhase::Succeeded | status::PodPhase::Failed
            ) {
                self.state.network = old.network;
                self.state.backoff = old.backoff;
                self.pod_ip = rec.pod.status.pod_ip.parse().ok();
                self.record = rec;
                self.record.pod.metadata.deletion_timestamp = None;
                self.sandbox = SandboxState::load(&self.dir)
                    .ok()
                    .flatten()
                    .map(Sandbox::adopt);
                // Finishes a release a killed weftd left half done (idempotent).
                self.finish();
                self.written = None;
                tracing::info!("finished pod adopted");
                return Ok(());
            }
        }
        let sandbox = SandboxState::load(&self.dir)
            .ok()
            .flatten()
            .map(Sandbox::adopt);
        // A sandbox whose pause died while weftd was away (or one of an older weftd, held
        // through /proc) is adopted all the same: the first step re-creates it as a changed
        // sandbox, so the containers keep their restart counts.
        let (Some(old), Some(sandbox), Ok(rec)) = (
            WorkerState::load(&self.dir),
            sandbox,
            status::read_record(&self.dir),
        ) else {
            tracing::warn!("pod sandbox or state lost: recreating the pod");
            if let Some(old) = WorkerState::load(&self.dir) {
                teardown(&self.cfg, &self.dir, &old, None);
            }
            return self.create_dir();
        };
        self.state.network = old.network.clone();
        self.state.backoff = old.backoff.clone();
        self.record = rec;
        self.record.pod.metadata.deletion_timestamp = None;
        self.sandbox = Some(sandbox);
        let att = self.attachment();
        let cached = self
            .state
            .network
            .as_ref()
            .and_then(|n| self.cni.cached(n, &att));
        if let Some((_, result)) = cached {
            self.pod_ip = CniResult { raw: result }.pod_ip();
            self.attached = true;
        }
        let statuses: Vec<ContainerStatus> = self
            .record
            .pod
            .status
            .init_container_statuses
            .iter()
            .chain(&self.record.pod.status.container_statuses)
            .cloned()
            .collect();
        for s in statuses {
            let container = self
                .pod
                .all_containers()
                .find(|c| c.name == s.name)
                .cloned();
            let Some(slot) = self.slots.get_mut(&s.name) else {
                continue;
            };
            if s.state.running.is_none() {
                slot.run = adopted_run(&s);
                continue;
            }
            // A run that cannot be taken over is started again at once.
            slot.run = RunView::Pending;
            let Some(id) = s.container_id.strip_prefix("weft://") else {
                continue;
            };
            match self.runtime.adopt(id) {
                Ok(h) => {
                    if let Some(c) = &container {
                        slot.probes = ProbeTracker::new(c);
                    }
                    slot.handle = Some(h);
                    slot.run = RunView::Running { probe_failed: None };
                }
                Err(e) => {
                    tracing::warn!(container = %s.name, error = %e, "adopt container: will start it again")
                }
            }
        }
        self.written = None;
        tracing::info!(attached = self.attached, ip = ?self.pod_ip, "pod adopted");
        Ok(())
    }
}

/// CNI DEL of the pod's attachment through `cni`, with the network config cached at ADD (or
/// the current one of the same name). Nothing to do when the pod was never attached.
pub(super) fn release_network(
    cni: &dyn PodNetwork,
    cfg: &PodConfig,
    id: &PodId,
    state: &WorkerState,
    netns: PathBuf,
) {
    let Some(network) = &state.network else {
        return;
    };
    let pod = state.full_name();
    let att = Attachment {
        container_id: id.dir_name(),
        netns,
        ifname: POD_IFNAME.to_string(),
        pod_namespace: state.namespace.clone(),
        pod_name: state.name.clone(),
        pod_uid: state.uid.clone(),
    };
    let list = cni.cached(network, &att).map(|(l, _)| l).or_else(|| {
        load_network(&cfg.cni_conf_dir)
            .ok()
            .filter(|l| &l.name == network)
    });
    match list {
        Some(list) => {
            if let Err(e) = cni.del(&list, &att) {
                tracing::warn!(pod = %pod, error = %e, "CNI DEL");
            }
        }
        None => tracing::warn!(pod = %pod, network = %network, "CNI DEL: network config gone"),
    }
}

/// Removes a pod completely: containers (SIGTERM, grace, SIGKILL), CNI DEL, the sandbox, then
/// its directory (state, volumes) and its logs. Errors are logged; every step is attempted.
pub(super) fn teardown(
    cfg: &PodConfig,
    dir: &Path,
    state: &WorkerState,
    handles: Option<Vec<ContainerHandle>>,
) {
    let pod = state.full_name();
    let id = match state.id() {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(pod = %pod, dir = %dir.display(), error = %e, "not removing a pod with invalid names");
            return;
        }
    };
    let runtime = OciRuntime::new(&cfg.oci_runtime.to_string_lossy(), dir);
    let grace = state.grace();
    let ids: Vec<String> = match handles {
        Some(h) => h.iter().map(|h| h.id().to_string()).collect(),
        None => runtime.list().unwrap_or_default(),
    };
    // SIGTERM to all first, so the grace periods run concurrently as kubelet's do.
    for id in &ids {
        if let Err(e) = runtime.kill(id, Signal::SIGTERM) {
            tracing::debug!(pod = %pod, container = %id, error = %e, "SIGTERM");
        }
    }
    let deadline = Instant::now() + grace;
    for id in &ids {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Err(e) = runtime.stop(id, left) {
            tracing::warn!(pod = %pod, container = %id, error = %e, "stop container");
        }
    }
    for id in runtime.list().unwrap_or_default() {
        if let Err(e) = runtime.delete(&id) {
            tracing::warn!(pod = %pod, container = %id, error = %e, "delete container");
        }
    }
    let sandbox = SandboxState::load(dir).ok().flatten().map(Sandbox::adopt);
    let cni = CniRuntime {
        bin_dirs: cfg.cni_bin_dirs.clone(),
        cache_dir: cfg.cni_cache_dir.clone(),
    };
    release_network(
        &cni,
        cfg,
        &id,
        state,
        sandbox
            .as_ref()
            .map(Sandbox::netns_path)
            .unwrap_or_default(),
    );
    if let Some(sb) = sandbox {
        if let Err(e) = sb.stop(SANDBOX_GRACE) {
            tracing::warn!(pod = %pod, error = %e, "stop sandbox");
        }
    }
    let logs = cfg.layout().log_dir(&id);
    if let Err(e) = std::fs::remove_dir_all(&logs) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(pod = %pod, dir = %logs.display(), error = %e, "remove pod logs");
        }
    }
    // The pod directory goes last: its absence is what says the pod is gone entirely.
    if let Err(e) = std::fs::remove_dir_all(dir) {
        tracing::warn!(pod = %pod, dir = %dir.display(), error = %e, "remove pod directory");
    }
    tracing::info!(pod = %pod, "pod removed");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::status::ContainerState;

    #[test]
    fn a_pod_outside_the_node_subnet_is_noticed() {
        let env = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\n";
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(in_node_subnet(env, ip("10.244.3.7")), Some(true));
        assert_eq!(in_node_subnet(env, ip("10.244.1.7")), Some(false));
        assert_eq!(in_node_subnet("", ip("10.244.1.7")), None);
        assert_eq!(in_node_subnet(env, ip("fd00::7")), None);
        let v6 = "FLANNEL_IPV6_SUBNET=fd00:0:0:3::1/64\n";
        assert_eq!(in_node_subnet(v6, ip("fd00:0:0:4::7")), Some(false));
    }

    #[test]
    fn worker_state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let s = WorkerState {
            namespace: "default".into(),
            name: "web".into(),
            uid: "u".into(),
            manifest: "/m/web.yaml".into(),
            content_hash: "h".into(),
            grace_seconds: 30,
            network: Some("podnet".into()),
            backoff: BTreeMap::from([("app".to_string(), Backoff { streak: 2 })]),
        };
        s.save(dir.path()).unwrap();
        assert_eq!(WorkerState::load(dir.path()), Some(s.clone()));
        assert_eq!(s.id().unwrap().dir_name(), "default_web_u");
        assert_eq!(s.full_name(), "default/web");
    }

    #[test]
    fn an_adopted_container_in_back_off_keeps_its_last_run_times() {
        let mut s = ContainerStatus::new("app", "busybox", "PodInitializing");
        assert_eq!(adopted_run(&s), RunView::Pending);
        s.last_state =
            ContainerState::terminated(1, "2026-01-01T00:00:00Z", "2026-01-01T00:00:05Z");
        s.state = ContainerState::waiting("CrashLoopBackOff", "back-off 10s");
        let finished = parse_rfc3339("2026-01-01T00:00:05Z").unwrap();
        assert_eq!(
            adopted_run(&s),
            RunView::Exited {
                code: 1,
                ran: Duration::from_secs(5),
                finished_at: finished
            }
        );
    }
}
