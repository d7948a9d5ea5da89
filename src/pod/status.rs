//! Pod status the Kubernetes way: phase, conditions and container states (pure functions),
//! the `kubectl get pods` columns, and the `status.json` file each pod directory holds.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::manifest::{ObjectMeta, Pod, PodSpec, RestartPolicy};
pub use crate::timestamp::{parse_rfc3339, rfc3339};

/// The file in a pod's directory holding its [`PodRecord`].
pub const STATUS_FILE: &str = "status.json";

/// `status.phase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PodPhase {
    /// Accepted, but not all containers have been started.
    #[default]
    Pending,
    /// All containers created, at least one running (or restarting).
    Running,
    /// All containers terminated successfully and will not be restarted.
    Succeeded,
    /// All containers terminated, at least one in failure, none will be restarted.
    Failed,
    /// The state could not be obtained.
    Unknown,
}

/// `state.waiting`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateWaiting {
    /// Why it waits: `ContainerCreating`, `PodInitializing`, `CrashLoopBackOff`, `ErrImageNeverPull`...
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Details.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// `state.running`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateRunning {
    /// RFC 3339 start time.
    pub started_at: String,
}

/// `state.terminated`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateTerminated {
    /// The exit code (128 + signal for a signalled process).
    pub exit_code: i32,
    /// `Completed` (exit 0) or `Error`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Details.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// RFC 3339 start time.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub started_at: String,
    /// RFC 3339 end time.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub finished_at: String,
}

/// `state` / `lastState` of a container: at most one member set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerState {
    /// Set while the container is not running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<StateWaiting>,
    /// Set while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<StateRunning>,
    /// Set once it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminated: Option<StateTerminated>,
}

impl ContainerState {
    /// A waiting state with `reason` and `message`.
    pub fn waiting(reason: &str, message: &str) -> Self {
        ContainerState {
            waiting: Some(StateWaiting {
                reason: reason.to_string(),
                message: message.to_string(),
            }),
            ..Default::default()
        }
    }

    /// A running state since `started_at`.
    pub fn running(started_at: &str) -> Self {
        ContainerState {
            running: Some(StateRunning {
                started_at: started_at.to_string(),
            }),
            ..Default::default()
        }
    }

    /// A terminated state with the reason Kubernetes gives the exit code.
    pub fn terminated(exit_code: i32, started_at: &str, finished_at: &str) -> Self {
        ContainerState {
            terminated: Some(StateTerminated {
                exit_code,
                reason: if exit_code == 0 { "Completed" } else { "Error" }.to_string(),
                message: String::new(),
                started_at: started_at.to_string(),
                finished_at: finished_at.to_string(),
            }),
            ..Default::default()
        }
    }

    /// Whether no member is set.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_none() && self.running.is_none() && self.terminated.is_none()
    }
}

/// An entry of `initContainerStatuses` / `containerStatuses`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    /// The container's name.
    pub name: String,
    /// The current state.
    pub state: ContainerState,
    /// The previous run's terminated state, once restarted.
    #[serde(default, skip_serializing_if = "ContainerState::is_empty")]
    pub last_state: ContainerState,
    /// Running and (if it has a readiness probe) passing it.
    pub ready: bool,
    /// How often it was restarted.
    pub restart_count: u32,
    /// The image reference of the manifest.
    pub image: String,
    /// The image's digest in the store.
    #[serde(default, rename = "imageID")]
    pub image_id: String,
    /// `weft://<runtime id>` of the current or last run.
    #[serde(
        default,
        rename = "containerID",
        skip_serializing_if = "String::is_empty"
    )]
    pub container_id: String,
    /// Whether the startup probe (if any) passed and the container runs.
    #[serde(default)]
    pub started: bool,
}

impl ContainerStatus {
    /// A fresh status for a container not started yet.
    pub fn new(name: &str, image: &str, reason: &str) -> Self {
        ContainerStatus {
            name: name.to_string(),
            state: ContainerState::waiting(reason, ""),
            image: image.to_string(),
            ..Default::default()
        }
    }
}

/// An entry of `status.conditions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodCondition {
    /// `PodScheduled`, `Initialized`, `ContainersReady`, `Ready`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `"True"` or `"False"`.
    pub status: String,
    /// RFC 3339 time of the last change.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_transition_time: String,
    /// Why it is false (`ContainersNotReady`, `ContainersNotInitialized`, `PodCompleted`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// An entry of `status.podIPs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodIp {
    /// The address.
    pub ip: String,
}

/// `status` of a pod.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    /// The phase.
    pub phase: PodPhase,
    /// The conditions.
    #[serde(default)]
    pub conditions: Vec<PodCondition>,
    /// A one-word reason for the pod's state (set on failures of the pod itself).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// A human-readable message (the sandbox or CNI error, say).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The node's address.
    #[serde(default, rename = "hostIP", skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
    /// The pod's address, from the CNI result.
    #[serde(default, rename = "podIP", skip_serializing_if = "String::is_empty")]
    pub pod_ip: String,
    /// All pod addresses.
    #[serde(default, rename = "podIPs", skip_serializing_if = "Vec::is_empty")]
    pub pod_ips: Vec<PodIp>,
    /// RFC 3339 time the runtime accepted the pod.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub start_time: String,
    /// One per init container, in spec order.
    #[serde(default)]
    pub init_container_statuses: Vec<ContainerStatus>,
    /// One per app container, in spec order.
    #[serde(default)]
    pub container_statuses: Vec<ContainerStatus>,
    /// Ephemeral (debug) containers, as `weftctl debug` records them beside the status file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ephemeral_container_statuses: Vec<ContainerStatus>,
    /// `Guaranteed`, `Burstable` or `BestEffort`, from the containers' resources.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub qos_class: String,
}

/// A `v1` `Pod` with its status, as `kubectl get pod -o json` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodObject {
    /// `v1`.
    pub api_version: String,
    /// `Pod`.
    pub kind: String,
    /// The manifest's metadata plus timestamps.
    pub metadata: ObjectMeta,
    /// The manifest's spec, `nodeName` filled in.
    pub spec: PodSpec,
    /// The status.
    pub status: PodStatus,
}

impl PodObject {
    /// A pod object for `pod` with an empty status.
    pub fn new(pod: &Pod) -> Self {
        PodObject {
            api_version: "v1".to_string(),
            kind: "Pod".to_string(),
            metadata: pod.metadata.clone(),
            spec: pod.spec.clone(),
            status: PodStatus::default(),
        }
    }
}

/// Unix-epoch milliseconds of the steps of starting a pod, for `scripts/bench-pods.sh`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartTimings {
    /// The manifest was read.
    pub seen_ms: Option<u64>,
    /// The sandbox (pause process, namespaces) was up.
    pub sandbox_ms: Option<u64>,
    /// CNI ADD returned.
    pub network_ms: Option<u64>,
    /// All app containers were started.
    pub containers_ms: Option<u64>,
}

/// What `status.json` in a pod's directory holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    /// The pod as the API would show it.
    pub pod: PodObject,
    /// The manifest file it came from.
    pub manifest: String,
    /// Start-up timestamps.
    pub timings: StartTimings,
}

/// Errors reading or writing a status file.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Reading or writing the file failed.
    #[error("{op} pod status {path}: {source}")]
    Io {
        /// `read` / `write`.
        op: &'static str,
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a [`PodRecord`].
    #[error("parse pod status {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The cause.
        source: serde_json::Error,
    },
}

/// Writes `record` to `dir/status.json` atomically (temp file + rename).
pub fn write_record(dir: &Path, record: &PodRecord) -> Result<(), StatusError> {
    let path = dir.join(STATUS_FILE);
    let io = |source| StatusError::Io {
        op: "write",
        path: path.display().to_string(),
        source,
    };
    let json = serde_json::to_vec_pretty(record).map_err(|source| StatusError::Parse {
        path: path.display().to_string(),
        source,
    })?;
    crate::atomic_file::write_atomic(&path, &json, 0o644).map_err(io)
}

/// Reads `dir/status.json`.
pub fn read_record(dir: &Path) -> Result<PodRecord, StatusError> {
    let path = dir.join(STATUS_FILE);
    let bytes = std::fs::read(&path).map_err(|source| StatusError::Io {
        op: "read",
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| StatusError::Parse {
        path: path.display().to_string(),
        source,
    })
}

/// The phase Kubernetes derives from the container statuses (kubelet's `getPhase`).
pub fn pod_phase(spec: &PodSpec, init: &[ContainerStatus], app: &[ContainerStatus]) -> PodPhase {
    let find = |list: &[ContainerStatus], name: &str| -> Option<ContainerStatus> {
        list.iter().find(|s| s.name == name).cloned()
    };
    let mut pending_init = 0;
    let mut failed_init = 0;
    for c in &spec.init_containers {
        let Some(s) = find(init, &c.name) else {
            pending_init += 1;
            continue;
        };
        if let Some(t) = &s.state.terminated {
            if t.exit_code != 0 {
                failed_init += 1;
            }
        } else if let (Some(_), Some(t)) = (&s.state.waiting, &s.last_state.terminated) {
            if t.exit_code != 0 {
                failed_init += 1;
            }
        } else {
            pending_init += 1;
        }
    }
    let (mut unknown, mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0, 0);
    for c in &spec.containers {
        let Some(s) = find(app, &c.name) else {
            unknown += 1;
            continue;
        };
        if s.state.running.is_some() {
            running += 1;
        } else if let Some(t) = &s.state.terminated {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if s.state.waiting.is_some() {
            if s.last_state.terminated.is_some() {
                stopped += 1;
            } else {
                waiting += 1;
            }
        } else {
            unknown += 1;
        }
    }
    if failed_init > 0 && spec.restart_policy == RestartPolicy::Never {
        return PodPhase::Failed;
    }
    if pending_init > 0 || failed_init > 0 || waiting > 0 {
        return PodPhase::Pending;
    }
    if running > 0 && unknown == 0 {
        return PodPhase::Running;
    }
    if running == 0 && stopped > 0 && unknown == 0 {
        return match spec.restart_policy {
            RestartPolicy::Always => PodPhase::Running,
            _ if stopped == succeeded => PodPhase::Succeeded,
            RestartPolicy::Never => PodPhase::Failed,
            RestartPolicy::OnFailure => PodPhase::Running,
        };
    }
    PodPhase::Pending
}

fn condition(kind: &str, ok: bool, reason: &str, prev: &[PodCondition], now: &str) -> PodCondition {
    let status = if ok { "True" } else { "False" }.to_string();
    let last_transition_time = prev
        .iter()
        .find(|c| c.kind == kind && c.status == status)
        .map_or_else(|| now.to_string(), |c| c.last_transition_time.clone());
    PodCondition {
        kind: kind.to_string(),
        status,
        last_transition_time,
        reason: if ok {
            String::new()
        } else {
            reason.to_string()
        },
    }
}

/// Recomputes `status.phase` and `status.conditions` from the container statuses.
///
/// Transition times of unchanged conditions are kept; changed ones get `now`.
pub fn refresh(spec: &PodSpec, status: &mut PodStatus, now: &str) {
    status.phase = pod_phase(
        spec,
        &status.init_container_statuses,
        &status.container_statuses,
    );
    let app_started = status.container_statuses.iter().any(|s| {
        s.state.running.is_some() || s.state.terminated.is_some() || !s.last_state.is_empty()
    });
    let initialized = app_started
        || spec.init_containers.iter().all(|c| {
            status.init_container_statuses.iter().any(|s| {
                s.name == c.name
                    && s.state
                        .terminated
                        .as_ref()
                        .is_some_and(|t| t.exit_code == 0)
            })
        });
    let completed = matches!(status.phase, PodPhase::Succeeded | PodPhase::Failed);
    let ready =
        !status.container_statuses.is_empty() && status.container_statuses.iter().all(|s| s.ready);
    let not_ready = if completed {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let init_reason = if completed {
        "PodCompleted"
    } else {
        "ContainersNotInitialized"
    };
    let prev = std::mem::take(&mut status.conditions);
    status.conditions = vec![
        condition("PodScheduled", true, "", &prev, now),
        condition("Initialized", initialized, init_reason, &prev, now),
        condition("ContainersReady", ready, not_ready, &prev, now),
        condition("Ready", ready, not_ready, &prev, now),
    ];
}

fn exit_reason(prefix: &str, t: &StateTerminated) -> String {
    if !t.reason.is_empty() {
        format!("{prefix}{}", t.reason)
    } else if t.exit_code > 128 {
        format!("{prefix}Signal:{}", t.exit_code - 128)
    } else {
        format!("{prefix}ExitCode:{}", t.exit_code)
    }
}

/// The `kubectl get pods` columns of one pod, without AGE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodColumns {
    /// READY: `ready/total` app containers.
    pub ready: String,
    /// STATUS: `Running`, `Init:0/2`, `PodInitializing`, `CrashLoopBackOff`, `Completed`...
    pub status: String,
    /// RESTARTS: restarts of the containers shown.
    pub restarts: u32,
}

/// kubectl's printer logic for READY, STATUS and RESTARTS.
pub fn columns(pod: &PodObject) -> PodColumns {
    let st = &pod.status;
    let total = pod.spec.containers.len();
    let mut ready = 0;
    let mut restarts = 0;
    let mut reason = if st.reason.is_empty() {
        format!("{:?}", st.phase)
    } else {
        st.reason.clone()
    };
    let mut initializing = false;
    let n_init = pod.spec.init_containers.len();
    for (i, c) in st.init_container_statuses.iter().enumerate() {
        restarts += c.restart_count;
        match (&c.state.terminated, &c.state.waiting) {
            (Some(t), _) if t.exit_code == 0 => continue,
            (Some(t), _) => reason = exit_reason("Init:", t),
            (None, Some(w)) if !w.reason.is_empty() && w.reason != "PodInitializing" => {
                reason = format!("Init:{}", w.reason)
            }
            _ => reason = format!("Init:{i}/{n_init}"),
        }
        initializing = true;
        break;
    }
    if !initializing {
        restarts = 0;
        let mut has_running = false;
        for c in st.container_statuses.iter().rev() {
            restarts += c.restart_count;
            if let Some(w) = c.state.waiting.as_ref().filter(|w| !w.reason.is_empty()) {
                reason = w.reason.clone();
            } else if let Some(t) = &c.state.terminated {
                reason = exit_reason("", t);
            } else if c.state.running.is_some() {
                has_running = true;
                if c.ready {
                    ready += 1;
                }
            }
        }
        if reason == "Completed" && has_running {
            reason = "Running".to_string();
        }
    }
    if pod.metadata.deletion_timestamp.is_some() {
        reason = "Terminating".to_string();
    }
    PodColumns {
        ready: format!("{ready}/{total}"),
        status: reason,
        restarts,
    }
}

/// kubectl's AGE format (`HumanDuration`): `45s`, `5m30s`, `2h`, `3d4h`, `2y`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s < 120 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        return match s % 60 {
            0 => format!("{m}m"),
            r => format!("{m}m{r}s"),
        };
    }
    if m < 180 {
        return format!("{m}m");
    }
    let h = m / 60;
    if h < 8 {
        return match m % 60 {
            0 => format!("{h}h"),
            r => format!("{h}h{r}m"),
        };
    }
    if h < 48 {
        return format!("{h}h");
    }
    if h < 24 * 8 {
        return match h % 24 {
            0 => format!("{}d", h / 24),
            r => format!("{}d{r}h", h / 24),
        };
    }
    let days = h / 24;
    if days < 365 * 2 {
        return format!("{days}d");
    }
    if days < 365 * 8 {
        return match days % 365 {
            0 => format!("{}y", days / 365),
            r => format!("{}y{r}d", days / 365),
        };
    }
    format!("{}y", days / 365)
}

/// Unix-epoch milliseconds of `t` (0 before the epoch).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::manifest::parse_manifest;

    const T0: &str = "2026-11-28T06:00:00Z";

    fn pod(init: usize, apps: usize, policy: &str) -> Pod {
        let mut text = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  restartPolicy: {policy}\n"
        );
        if init > 0 {
            text.push_str("  initContainers:\n");
            for i in 0..init {
                text.push_str(&format!("    - {{name: init{i}, image: busybox}}\n"));
            }
        }
        text.push_str("  containers:\n");
        for i in 0..apps {
            text.push_str(&format!("    - {{name: app{i}, image: busybox}}\n"));
        }
        parse_manifest(Path::new("/m/p.yaml"), text.as_bytes())
            .unwrap()
            .pod
    }

    fn st(name: &str, state: ContainerState) -> ContainerStatus {
        ContainerStatus {
            state,
            ..ContainerStatus::new(name, "busybox", "")
        }
    }

    fn running(name: &str) -> ContainerStatus {
        ContainerStatus {
            ready: true,
            started: true,
            ..st(name, ContainerState::running(T0))
        }
    }

    fn exited(name: &str, code: i32) -> ContainerStatus {
        st(name, ContainerState::terminated(code, T0, T0))
    }

    fn crashloop(name: &str, code: i32, restarts: u32) -> ContainerStatus {
        ContainerStatus {
            last_state: ContainerState::terminated(code, T0, T0),
            restart_count: restarts,
            ..st(
                name,
                ContainerState::waiting("CrashLoopBackOff", "back-off 20s"),
            )
        }
    }

    fn object(p: &Pod, init: Vec<ContainerStatus>, app: Vec<ContainerStatus>) -> PodObject {
        let mut o = PodObject::new(p);
        o.status.init_container_statuses = init;
        o.status.container_statuses = app;
        refresh(&p.spec, &mut o.status, T0);
        o
    }

    fn status_of(o: &PodObject) -> (PodPhase, String, String, u32) {
        let c = columns(o);
        (o.status.phase, c.ready, c.status, c.restarts)
    }

    #[test]
    fn init_containers_show_init_progress_while_pending() {
        let p = pod(2, 1, "Always");
        let waiting_app = || vec![st("app0", ContainerState::waiting("PodInitializing", ""))];
        let o = object(
            &p,
            vec![
                running("init0"),
                st("init1", ContainerState::waiting("PodInitializing", "")),
            ],
            waiting_app(),
        );
        assert_eq!(
            status_of(&o),
            (PodPhase::Pending, "0/1".into(), "Init:0/2".into(), 0)
        );
        let o = object(
            &p,
            vec![exited("init0", 0), running("init1")],
            waiting_app(),
        );
        assert_eq!(status_of(&o).2, "Init:1/2");
        assert_eq!(o.status.conditions[1].status, "False");
        assert_eq!(o.status.conditions[1].reason, "ContainersNotInitialized");
        let o = object(
            &p,
            vec![exited("init0", 0), exited("init1", 0)],
            waiting_app(),
        );
        assert_eq!(
            status_of(&o),
            (PodPhase::Pending, "0/1".into(), "PodInitializing".into(), 0)
        );
        assert_eq!(o.status.conditions[1].status, "True");
        let o = object(
            &p,
            vec![exited("init0", 0), exited("init1", 0)],
            vec![running("app0")],
        );
        assert_eq!(
            status_of(&o),
            (PodPhase::Running, "1/1".into(), "Running".into(), 0)
        );
        assert!(o.status.conditions.iter().all(|c| c.status == "True"));
    }

    #[test]
    fn a_failing_init_container_crashloops_or_fails_the_pod_under_never() {
        let p = pod(1, 1, "Always");
        let app = vec![st("app0", ContainerState::waiting("PodInitializing", ""))];
        let o = object(&p, vec![crashloop("init0", 1, 2)], app.clone());
        assert_eq!(
            status_of(&o),
            (
                PodPhase::Pending,
                "0/1".into(),
                "Init:CrashLoopBackOff".into(),
                2
            )
        );
        let p = pod(1, 1, "Never");
        let o = object(&p, vec![exited("init0", 3)], app);
        assert_eq!(
            status_of(&o),
            (PodPhase::Failed, "0/1".into(), "Init:Error".into(), 0)
        );
    }

    #[test]
    fn restart_policies_decide_the_phase_after_exits() {
        let p = pod(0, 1, "Always");
        let o = object(&p, vec![], vec![crashloop("app0", 0, 3)]);
        assert_eq!(
            status_of(&o),
            (
                PodPhase::Running,
                "0/1".into(),
                "CrashLoopBackOff".into(),
                3
            )
        );
        let p = pod(0, 1, "OnFailure");
        assert_eq!(
            status_of(&object(&p, vec![], vec![exited("app0", 0)])).0,
            PodPhase::Succeeded
        );
        assert_eq!(
            status_of(&object(&p, vec![], vec![crashloop("app0", 1, 1)])).0,
            PodPhase::Running
        );
        let p = pod(0, 1, "Never");
        let o = object(&p, vec![], vec![exited("app0", 0)]);
        assert_eq!(
            status_of(&o),
            (PodPhase::Succeeded, "0/1".into(), "Completed".into(), 0)
        );
        assert_eq!(o.status.conditions[3].reason, "PodCompleted");
        let o = object(&p, vec![], vec![exited("app0", 1)]);
        assert_eq!(
            status_of(&o),
            (PodPhase::Failed, "0/1".into(), "Error".into(), 0)
        );
        let killed = object(
            &p,
            vec![],
            vec![st(
                "app0",
                ContainerState {
                    terminated: Some(StateTerminated {
                        exit_code: 137,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )],
        );
        assert_eq!(status_of(&killed).2, "Signal:9");
    }

    #[test]
    fn two_containers_one_done_one_running() {
        let p = pod(0, 2, "OnFailure");
        let o = object(&p, vec![], vec![running("app0"), exited("app1", 0)]);
        assert_eq!(
            status_of(&o),
            (PodPhase::Running, "1/2".into(), "Running".into(), 0)
        );
        assert_eq!(o.status.conditions[3].status, "False");
        let o = object(
            &p,
            vec![],
            vec![
                running("app0"),
                ContainerStatus::new("app1", "busybox", "ContainerCreating"),
            ],
        );
        assert_eq!(
            status_of(&o),
            (
                PodPhase::Pending,
                "1/2".into(),
                "ContainerCreating".into(),
                0
            )
        );
        let mut o = object(&p, vec![], vec![running("app0"), running("app1")]);
        o.metadata.deletion_timestamp = Some(T0.into());
        assert_eq!(columns(&o).status, "Terminating");
    }

    #[test]
    fn unchanged_conditions_keep_their_transition_time() {
        let p = pod(0, 1, "Always");
        let mut o = object(
            &p,
            vec![],
            vec![ContainerStatus::new("app0", "busybox", "ContainerCreating")],
        );
        o.status.container_statuses = vec![running("app0")];
        refresh(&p.spec, &mut o.status, "2026-11-28T06:00:05Z");
        assert_eq!(o.status.conditions[0].last_transition_time, T0);
        assert_eq!(
            o.status.conditions[3].last_transition_time,
            "2026-11-28T06:00:05Z"
        );
    }

    #[test]
    fn status_json_has_kubernetes_field_names() {
        let p = pod(1, 1, "Always");
        let mut o = object(&p, vec![exited("init0", 0)], vec![running("app0")]);
        o.status.pod_ip = "10.244.1.5".into();
        o.status.host_ip = "192.0.2.1".into();
        let v = serde_json::to_value(&o).unwrap();
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["status"]["phase"], "Running");
        assert_eq!(v["status"]["podIP"], "10.244.1.5");
        assert_eq!(v["status"]["hostIP"], "192.0.2.1");
        assert_eq!(
            v["status"]["initContainerStatuses"][0]["state"]["terminated"]["reason"],
            "Completed"
        );
        assert_eq!(v["status"]["containerStatuses"][0]["restartCount"], 0);
        assert!(v["status"]["containerStatuses"][0]["state"]["running"]["startedAt"].is_string());
        assert_eq!(v["status"]["conditions"][3]["type"], "Ready");
        let back: PodObject = serde_json::from_value(v).unwrap();
        assert_eq!(back, o);
    }

    #[test]
    fn ages_print_like_kubectl() {
        let d = Duration::from_secs;
        assert_eq!(human_duration(d(5)), "5s");
        assert_eq!(human_duration(d(119)), "119s");
        assert_eq!(human_duration(d(330)), "5m30s");
        assert_eq!(human_duration(d(45 * 60)), "45m");
        assert_eq!(human_duration(d(5 * 3600 + 120)), "5h2m");
        assert_eq!(human_duration(d(30 * 3600)), "30h");
        assert_eq!(human_duration(d(3 * 86400 + 4 * 3600)), "3d4h");
        assert_eq!(human_duration(d(100 * 86400)), "100d");
        assert_eq!(human_duration(d(3 * 365 * 86400)), "3y");
    }

    #[test]
    fn rfc3339_round_trips() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_847_662);
        let s = rfc3339(t);
        assert_eq!(s, "2026-11-28T06:34:22Z");
        assert_eq!(parse_rfc3339(&s), Some(t));
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            parse_rfc3339("2024-02-29T23:59:59Z"),
            Some(UNIX_EPOCH + Duration::from_secs(1_709_251_199))
        );
        assert_eq!(parse_rfc3339("2024-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
