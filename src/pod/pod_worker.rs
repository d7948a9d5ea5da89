//! One pod's life on a thread: sandbox → CNI ADD → init containers one at a time → app
//! containers together, restarts per restart policy with back-off, status written to
//! `<pod_dir>/status.json` on every change, and on removal SIGTERM → grace → SIGKILL → CNI DEL →
//! sandbox stop → volumes, state and logs removed.
//!
//! `<pod_dir>/pod.json` ([`WorkerState`]) holds what a restarted weftd needs to adopt the pod
//! (or tear it down when its manifest is gone); the container runtime and the sandbox keep their
//! own state in the same directory.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::backoff::Backoff;
use super::bundle::{container_user, ContainerSpec, MountSpec};
use super::cni::{load_network, Attachment, CniRuntime, POD_IFNAME};
use super::controller::PodConfig;
use super::downward;
use super::events::{self, EventType};
use super::image::ImageStore;
use super::layout::{container_id, LayoutError, PodId, PodLayout};
use super::manifest::{Container, ParsedManifest, Pod, ResourceFieldRef, RestartPolicy};
use super::probe::{ProbeKind, ProbeTarget, ProbeTracker};
use super::resources::{self, ContainerResources, QosClass};
use super::runtime::{ContainerHandle, ExitStatus, OciRuntime};
use super::sandbox::{Sandbox, SandboxState};
use super::seccomp;
use super::security::{self, Seccomp};
use super::status::{
    self, rfc3339, unix_ms, ContainerState, ContainerStatus, PodObject, PodRecord, StartTimings,
};

/// The file in a pod's directory holding its [`WorkerState`].
pub const STATE_FILE: &str = "pod.json";

/// How often a worker looks at its containers.
const TICK: Duration = Duration::from_millis(100);

/// Grace period for a sandbox's pause process, which exits on SIGTERM at once.
const SANDBOX_GRACE: Duration = Duration::from_secs(2);

/// How often a worker compares its pod address with the node's subnet.
const SUBNET_CHECK: Duration = Duration::from_secs(1);

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

    fn save(&self, dir: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        crate::atomic_file::write_atomic(&dir.join(STATE_FILE), &bytes, 0o644)
    }
}

/// How a worker begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerMode {
    /// A new pod: create everything.
    Create,
    /// A pod a previous weftd started: take its sandbox and containers over.
    Adopt,
}

const RUN: u8 = 0;
const STOP: u8 = 1;
const DETACH: u8 = 2;

/// The handle the controller keeps of a pod's worker thread.
pub struct PodWorker {
    full_name: String,
    uid: String,
    signal: Arc<AtomicU8>,
    thread: JoinHandle<()>,
}

impl PodWorker {
    /// Starts the worker thread of the pod `manifest` read from `file`.
    pub fn spawn(
        cfg: Arc<PodConfig>,
        manifest: ParsedManifest,
        file: PathBuf,
        mode: WorkerMode,
    ) -> PodWorker {
        let signal = Arc::new(AtomicU8::new(RUN));
        let full_name = manifest.pod.full_name();
        let uid = manifest.pod.metadata.uid.clone();
        let sig = signal.clone();
        let name = full_name.clone();
        let thread = std::thread::spawn(move || match PodRun::new(cfg, manifest, file, sig) {
            Ok(mut run) => run.main(mode),
            Err(e) => tracing::error!(pod = %name, error = %e, "pod not started"),
        });
        PodWorker {
            full_name,
            uid,
            signal,
            thread,
        }
    }

    /// Starts a thread that removes the pod left in `dir` (its manifest is gone).
    pub fn teardown_orphan(cfg: Arc<PodConfig>, dir: PathBuf) -> PodWorker {
        let state = WorkerState::load(&dir);
        let (full_name, uid) = state.as_ref().map_or((String::new(), String::new()), |s| {
            (s.full_name(), s.uid.clone())
        });
        let signal = Arc::new(AtomicU8::new(STOP));
        let thread = std::thread::spawn(move || match state {
            Some(state) => teardown(&cfg, &dir, &state, None),
            None => {
                tracing::warn!(dir = %dir.display(), "pod directory without pod.json left alone")
            }
        });
        PodWorker {
            full_name,
            uid,
            signal,
            thread,
        }
    }

    /// `namespace/name`.
    pub fn full_name(&self) -> &str {
        &self.full_name
    }

    /// The pod UID.
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// Asks the worker to stop and remove the pod (it finishes on its own thread).
    pub fn stop(&self) {
        self.signal.store(STOP, Ordering::Relaxed);
    }

    /// Leaves the pod running and ends the worker (weftd shutting down).
    pub fn detach(self) {
        self.signal.store(DETACH, Ordering::Relaxed);
        self.join();
    }

    /// Whether the worker thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the worker thread to end.
    pub fn join(self) {
        if self.thread.join().is_err() {
            tracing::error!(pod = %self.full_name, "pod worker panicked");
        }
    }
}

/// Where the worker is in the pod's start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Sandbox,
    Network,
    Init(usize),
    Apps,
    /// The pod reached Succeeded or Failed: nothing more runs, and its sandbox and pod IP are
    /// released (the status and logs stay until the manifest goes).
    Finished,
}

/// One container's runtime side.
#[derive(Default)]
struct Slot {
    handle: Option<ContainerHandle>,
    /// When the next start may happen (after a back-off).
    not_before: Option<Instant>,
    /// The last run ended and the policy says it stays ended.
    done: bool,
    probes: ProbeTracker,
}

struct PodRun {
    cfg: Arc<PodConfig>,
    pod: Pod,
    id: PodId,
    layout: PodLayout,
    dir: PathBuf,
    state: WorkerState,
    runtime: OciRuntime,
    cni: CniRuntime,
    sandbox: Option<Sandbox>,
    pod_ip: Option<IpAddr>,
    stage: Stage,
    retry_at: Option<Instant>,
    pod_backoff: Backoff,
    slots: BTreeMap<String, Slot>,
    record: PodRecord,
    written: Option<PodRecord>,
    signal: Arc<AtomicU8>,
    qos: QosClass,
    memory_capacity: u64,
    subnet_checked: Option<Instant>,
    /// The pod's address was inside the node's subnet when last looked at: only then does
    /// leaving it mean the node's subnet changed (a pod on another CNI network never was).
    in_node_subnet: bool,
}

/// The error text of a pod-level step, for `status.message`.
type StepResult = Result<(), String>;

fn now_str() -> String {
    rfc3339(SystemTime::now())
}

impl PodRun {
    fn new(
        cfg: Arc<PodConfig>,
        m: ParsedManifest,
        file: PathBuf,
        signal: Arc<AtomicU8>,
    ) -> Result<PodRun, LayoutError> {
        let mut pod = m.pod;
        pod.spec.node_name = Some(cfg.node_name.clone());
        let state = WorkerState {
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            manifest: file.clone(),
            content_hash: m.content_hash,
            grace_seconds: pod.grace_seconds(),
            network: None,
            backoff: BTreeMap::new(),
        };
        let id = state.id()?;
        let layout = cfg.layout();
        let dir = layout.pod_dir(&id);
        let mut obj = PodObject::new(&pod);
        obj.metadata.creation_timestamp = Some(now_str());
        obj.status.start_time = now_str();
        obj.status.host_ip = cfg.host_ip.map(|ip| ip.to_string()).unwrap_or_default();
        obj.status.init_container_statuses = pod
            .spec
            .init_containers
            .iter()
            .map(|c| ContainerStatus::new(&c.name, &c.image, "PodInitializing"))
            .collect();
        let app_reason = if pod.spec.init_containers.is_empty() {
            "ContainerCreating"
        } else {
            "PodInitializing"
        };
        obj.status.container_statuses = pod
            .spec
            .containers
            .iter()
            .map(|c| ContainerStatus::new(&c.name, &c.image, app_reason))
            .collect();
        status::refresh(&pod.spec, &mut obj.status, &now_str());
        let slots = pod
            .all_containers()
            .map(|c| (c.name.clone(), Slot::default()))
            .collect();
        let all: Vec<ContainerResources> = pod
            .all_containers()
            .map(|c| ContainerResources::of(c.resources.as_ref()))
            .collect();
        let qos = resources::qos_class(&all);
        obj.status.qos_class = qos.as_str().to_string();
        let memory_capacity = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| resources::mem_total(&m))
            .unwrap_or(u64::MAX);
        Ok(PodRun {
            runtime: OciRuntime::new(&cfg.oci_runtime.to_string_lossy(), &dir),
            cni: CniRuntime {
                bin_dirs: cfg.cni_bin_dirs.clone(),
                cache_dir: cfg.cni_cache_dir.clone(),
            },
            record: PodRecord {
                pod: obj,
                manifest: file.display().to_string(),
                timings: StartTimings {
                    seen_ms: Some(unix_ms(SystemTime::now())),
                    ..Default::default()
                },
            },
            cfg,
            pod,
            id,
            layout,
            dir,
            state,
            sandbox: None,
            pod_ip: None,
            stage: Stage::Sandbox,
            retry_at: None,
            pod_backoff: Backoff::default(),
            slots,
            written: None,
            signal,
            qos,
            memory_capacity,
            subnet_checked: None,
            in_node_subnet: false,
        })
    }

    fn main(&mut self, mode: WorkerMode) {
        let span = tracing::info_span!("pod", pod = %self.state.full_name());
        let _enter = span.enter();
        let ready = match mode {
            WorkerMode::Create => self.create_dir(),
            WorkerMode::Adopt => self.adopt(),
        };
        if let Err(e) = ready {
            tracing::error!(error = %e, "pod directory");
            self.record.pod.status.message = e;
        }
        loop {
            match self.signal.load(Ordering::Relaxed) {
                STOP => {
                    self.record.pod.metadata.deletion_timestamp = Some(now_str());
                    self.write_status();
                    let handles: Vec<ContainerHandle> = self
                        .slots
                        .values_mut()
                        .filter_map(|s| s.handle.take())
                        .collect();
                    teardown(&self.cfg, &self.dir, &self.state, Some(handles));
                    return;
                }
                DETACH => {
                    self.save_state();
                    self.write_status();
                    return;
                }
                _ => {}
            }
            self.step();
            self.write_status();
            std::thread::sleep(TICK);
        }
    }

    fn create_dir(&mut self) -> StepResult {
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
            .map_err(|e| format!("create pod directory {}: {e}", self.dir.display()))?;
        self.save_state();
        self.create_volumes()
    }

    fn save_state(&self) {
        if let Err(e) = self.state.save(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "save pod state");
        }
    }

    fn create_volumes(&self) -> StepResult {
        let fs_group = self
            .pod
            .spec
            .security_context
            .as_ref()
            .and_then(|s| s.fs_group)
            .and_then(|g| u32::try_from(g).ok());
        for v in &self.pod.spec.volumes {
            if let (Some(gid), true) = (fs_group, v.empty_dir.is_some() || v.downward_api.is_some())
            {
                let root = self
                    .layout
                    .volume_dir(&self.id, &v.name)
                    .map_err(|e| format!("fsGroup {gid} on volume {}: {e}", v.name))?;
                std::fs::create_dir_all(&root)
                    .and_then(|()| set_volume_group(&root, gid))
                    .map_err(|e| format!("fsGroup {gid} on volume {}: {e}", v.name))?;
            }
            if let Some(d) = &v.downward_api {
                let root = self
                    .layout
                    .volume_dir(&self.id, &v.name)
                    .map_err(|e| format!("downwardAPI volume {}: {e}", v.name))?;
                for item in &d.items {
                    let path = self
                        .layout
                        .volume_file(&self.id, &v.name, &item.path)
                        .map_err(|e| format!("downwardAPI volume {}: {e}", v.name))?;
                    let text = downward_file(&self.pod, &item.field_ref.field_path);
                    path.parent()
                        .map_or(Ok(()), std::fs::create_dir_all)
                        .and_then(|()| std::fs::write(&path, text))
                        .and_then(|()| fs_group.map_or(Ok(()), |gid| set_volume_group(&root, gid)))
                        .map_err(|e| {
                            format!(
                                "write downwardAPI volume {} file {}: {e}",
                                v.name,
                                path.display()
                            )
                        })?;
                }
                continue;
            }
            if v.empty_dir.is_some() {
                let path = self
                    .layout
                    .volume_dir(&self.id, &v.name)
                    .map_err(|e| format!("emptyDir {}: {e}", v.name))?;
                std::fs::create_dir_all(&path)
                    .and_then(|()| {
                        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))
                    })
                    .and_then(|()| fs_group.map_or(Ok(()), |gid| set_volume_group(&path, gid)))
                    .map_err(|e| {
                        format!("create emptyDir {} at {}: {e}", v.name, path.display())
                    })?;
            }
        }
        Ok(())
    }

    fn write_status(&mut self) {
        let now = now_str();
        let st = &mut self.record.pod.status;
        st.pod_ip = self.pod_ip.map(|ip| ip.to_string()).unwrap_or_default();
        st.pod_ips = self
            .pod_ip
            .map(|ip| vec![status::PodIp { ip: ip.to_string() }])
            .unwrap_or_default();
        status::refresh(&self.pod.spec, st, &now);
        if self.written.as_ref() == Some(&self.record) || !self.dir.is_dir() {
            return;
        }
        if let Err(e) = status::write_record(&self.dir, &self.record) {
            tracing::warn!(error = %e, "write pod status");
            return;
        }
        let cols = status::columns(&self.record.pod);
        if self.written.as_ref().map(|w| status::columns(&w.pod)) != Some(cols.clone()) {
            tracing::info!(status = %cols.status, ready = %cols.ready, restarts = cols.restarts, "pod status");
        }
        self.written = Some(self.record.clone());
    }

    fn attachment(&self) -> Attachment {
        Attachment {
            container_id: self.id.dir_name(),
            netns: self
                .sandbox
                .as_ref()
                .map(Sandbox::netns_path)
                .unwrap_or_default(),
            ifname: POD_IFNAME.to_string(),
            pod_namespace: self.state.namespace.clone(),
            pod_name: self.state.name.clone(),
            pod_uid: self.state.uid.clone(),
        }
    }

    /// One pass of the state machine.
    fn step(&mut self) {
        if matches!(self.stage, Stage::Network | Stage::Init(_) | Stage::Apps) {
            if let Some(reason) = self.sandbox_changed() {
                self.recreate_sandbox(&reason);
                return;
            }
        }
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let result = match self.stage {
            Stage::Sandbox => self.make_sandbox(),
            Stage::Network => self.attach_network(),
            Stage::Init(i) => {
                self.run_init(i);
                Ok(())
            }
            Stage::Apps => {
                self.run_apps();
                Ok(())
            }
            Stage::Finished => Ok(()),
        };
        if matches!(self.stage, Stage::Init(_) | Stage::Apps) {
            let st = &self.record.pod.status;
            let phase = status::pod_phase(
                &self.pod.spec,
                &st.init_container_statuses,
                &st.container_statuses,
            );
            if matches!(
                phase,
                status::PodPhase::Succeeded | status::PodPhase::Failed
            ) {
                self.finish();
            }
        }
        match result {
            Ok(()) => self.retry_at = None,
            Err(message) => {
                let delay = self.pod_backoff.on_exit(&self.cfg.backoff, Duration::ZERO);
                tracing::warn!(error = %message, retry_in = ?delay, "pod setup");
                self.record.pod.status.message = message;
                self.retry_at = Some(Instant::now() + delay);
            }
        }
    }

    /// Why the pod's sandbox must be re-created, if it must: its pause process is gone (its
    /// namespaces with it), or the node's subnet no longer holds the pod's address.
    fn sandbox_changed(&mut self) -> Option<String> {
        let sandbox = self.sandbox.as_ref()?;
        if !sandbox.is_running() {
            return Some(format!(
                "pause process {} exited or its namespace files are gone",
                sandbox.pid()
            ));
        }
        if self.pod.spec.host_network
            || self
                .subnet_checked
                .is_some_and(|t| t.elapsed() < SUBNET_CHECK)
        {
            return None;
        }
        self.subnet_checked = Some(Instant::now());
        let (Some(file), Some(ip)) = (&self.cfg.subnet_file, self.pod_ip) else {
            return None;
        };
        let text = self.read_subnet_file()?;
        let inside = in_node_subnet(&text, ip);
        let was_inside = std::mem::replace(&mut self.in_node_subnet, inside == Some(true));
        (was_inside && inside == Some(false)).then(|| {
            format!(
                "pod IP {ip} is outside the node's new subnet in {}",
                file.display()
            )
        })
    }

    /// The node's subnet.env as it is now, if weftd names one and it can be read.
    fn read_subnet_file(&self) -> Option<String> {
        std::fs::read_to_string(self.cfg.subnet_file.as_ref()?).ok()
    }

    /// kubelet's answer to a changed sandbox: stop every container, release the pod network
    /// (CNI DEL) and the old sandbox, then start over from the sandbox; containers keep their
    /// restart counts (their next run counts as a restart) and init containers run again.
    fn recreate_sandbox(&mut self, reason: &str) {
        tracing::warn!(event = "SandboxChanged", reason = %reason, "pod sandbox changed, it will be killed and re-created");
        self.event(
            EventType::Normal,
            "SandboxChanged",
            "Pod sandbox changed, it will be killed and re-created.",
        );
        self.record.pod.status.message = format!("SandboxChanged: {reason}");
        let grace = Duration::from_secs(self.state.grace_seconds);
        let running: Vec<(String, String)> = self
            .slots
            .iter()
            .filter_map(|(n, s)| s.handle.as_ref().map(|h| (n.clone(), h.id().to_string())))
            .collect();
        for (name, id) in &running {
            if let Err(e) = self.runtime.stop(id, grace) {
                tracing::warn!(container = %name, error = %e, "stop container of changed sandbox");
            }
            self.poll_exit(name);
            self.retire(name);
        }
        let inits: Vec<String> = self
            .pod
            .spec
            .init_containers
            .iter()
            .map(|c| c.name.clone())
            .collect();
        let st = &mut self.record.pod.status;
        for s in st
            .init_container_statuses
            .iter_mut()
            .chain(st.container_statuses.iter_mut())
        {
            if s.state.terminated.is_some() {
                let is_init = inits.contains(&s.name);
                let done = self.slots.get(&s.name).is_some_and(|slot| slot.done);
                if is_init || !done {
                    s.last_state = std::mem::take(&mut s.state);
                    let waiting = if is_init {
                        "PodInitializing"
                    } else {
                        "ContainerCreating"
                    };
                    s.state = ContainerState::waiting(waiting, "");
                }
            }
            s.ready = false;
            s.started = false;
        }
        for slot in self.slots.values_mut() {
            slot.not_before = None;
        }
        let netns = self.sandbox.as_ref().map(Sandbox::netns_path);
        release_network(&self.cfg, &self.id, &self.state, netns.unwrap_or_default());
        self.state.network = None;
        if let Some(sb) = self.sandbox.take() {
            if let Err(e) = sb.stop(SANDBOX_GRACE) {
                tracing::warn!(error = %e, "stop changed sandbox");
            }
        }
        self.save_state();
        self.pod_ip = None;
        self.retry_at = None;
        self.stage = Stage::Sandbox;
    }

    fn make_sandbox(&mut self) -> StepResult {
        let host = self.pod.spec.host_namespaces();
        let sandbox = Sandbox::create(&self.id.dir_name(), self.pod.hostname(), &self.dir, host)
            .map_err(|e| e.to_string())?;
        self.sandbox = Some(sandbox);
        self.record.timings.sandbox_ms = Some(unix_ms(SystemTime::now()));
        self.stage = Stage::Network;
        self.attach_network()
    }

    fn attach_network(&mut self) -> StepResult {
        let network = if self.pod.spec.host_network {
            // The node's namespace: no CNI call; the pod's IP is the node's, as in Kubernetes.
            self.pod_ip = self.cfg.host_ip;
            "host".to_string()
        } else {
            let list = load_network(&self.cfg.cni_conf_dir).map_err(|e| e.to_string())?;
            let att = self.attachment();
            // The node subnet as the plugin saw it: a change right after the ADD, before the
            // first periodic check, must still count as a change.
            let subnet_before = self.read_subnet_file();
            let result = self.cni.add(&list, &att).map_err(|e| e.to_string())?;
            self.state.network = Some(list.name.clone());
            self.save_state();
            self.pod_ip = result.pod_ip();
            self.in_node_subnet = self.pod_ip.is_some_and(|ip| {
                [subnet_before, self.read_subnet_file()]
                    .iter()
                    .flatten()
                    .any(|text| in_node_subnet(text, ip) == Some(true))
            });
            self.subnet_checked = Some(Instant::now());
            list.name
        };
        if let Some(sb) = &self.sandbox {
            if let Err(e) = sb.set_pod_ip(self.pod_ip) {
                tracing::warn!(error = %e, "write /etc/hosts");
            }
        }
        self.record.timings.network_ms = Some(unix_ms(SystemTime::now()));
        self.record.pod.status.message.clear();
        self.pod_backoff = Backoff::default();
        tracing::info!(ip = ?self.pod_ip, network = %network, "pod network attached");
        self.stage = self.first_unfinished_init();
        if self.stage == Stage::Apps {
            self.run_apps();
        } else if let Stage::Init(i) = self.stage {
            self.run_init(i);
        }
        Ok(())
    }

    fn first_unfinished_init(&self) -> Stage {
        let statuses = &self.record.pod.status.init_container_statuses;
        match statuses
            .iter()
            .position(|s| s.state.terminated.as_ref().is_none_or(|t| t.exit_code != 0))
        {
            Some(i) => Stage::Init(i),
            None => Stage::Apps,
        }
    }

    fn container(&self, name: &str) -> Option<Container> {
        self.pod.all_containers().find(|c| c.name == name).cloned()
    }

    fn status_mut(&mut self, name: &str) -> Option<&mut ContainerStatus> {
        let st = &mut self.record.pod.status;
        st.init_container_statuses
            .iter_mut()
            .chain(st.container_statuses.iter_mut())
            .find(|s| s.name == name)
    }

    fn run_init(&mut self, i: usize) {
        let Some(c) = self.pod.spec.init_containers.get(i).cloned() else {
            self.stage = Stage::Apps;
            return;
        };
        if !self.slot_running(&c.name) {
            self.start_if_due(&c);
            return;
        }
        let Some(exit) = self.poll_exit(&c.name) else {
            return;
        };
        if exit.code == 0 {
            self.retire(&c.name);
            self.stage = self.first_unfinished_init();
            if self.stage == Stage::Apps {
                for s in &mut self.record.pod.status.container_statuses {
                    s.state = ContainerState::waiting("ContainerCreating", "");
                }
                self.run_apps();
            }
        } else if self.pod.spec.restart_policy == RestartPolicy::Never {
            self.retire(&c.name);
            tracing::warn!(container = %c.name, code = exit.code, "init container failed; restartPolicy Never: pod failed");
        } else {
            self.schedule_restart(&c.name, &exit);
        }
    }

    fn run_apps(&mut self) {
        let apps = self.pod.spec.containers.clone();
        let mut all_started = true;
        for c in &apps {
            if self.slots.get(&c.name).is_some_and(|s| s.done) {
                continue;
            }
            if !self.slot_running(&c.name) {
                self.start_if_due(c);
                all_started &= self.slot_running(&c.name);
                continue;
            }
            if let Some(exit) = self.poll_exit(&c.name) {
                if self.pod.spec.restart_policy.restarts(exit.code) {
                    self.schedule_restart(&c.name, &exit);
                } else {
                    self.retire(&c.name);
                    if let Some(s) = self.slots.get_mut(&c.name) {
                        s.done = true;
                    }
                }
                continue;
            }
            self.check_probes(c);
        }
        if all_started && self.record.timings.containers_ms.is_none() {
            self.record.timings.containers_ms = Some(unix_ms(SystemTime::now()));
        }
    }

    fn slot_running(&self, name: &str) -> bool {
        self.slots.get(name).is_some_and(|s| s.handle.is_some())
    }

    /// The exit of the container's current run, recorded in its status; `None` while it runs.
    fn poll_exit(&mut self, name: &str) -> Option<ExitStatus> {
        let handle = self.slots.get(name)?.handle.as_ref()?;
        let exit = match handle.poll() {
            Ok(Some(exit)) => exit,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(container = %name, error = %e, "poll container");
                return None;
            }
        };
        tracing::info!(container = %name, code = exit.code, reason = exit.reason.as_str(), "container exited");
        if exit.reason.as_str() == "OOMKilled" {
            self.event(
                EventType::Warning,
                "OOMKilled",
                &format!("Container {name} was OOM-killed (exit code {})", exit.code),
            );
        }
        let started = exit.started_at.map(rfc3339).unwrap_or_default();
        let mut term = ContainerState::terminated(exit.code, &started, &rfc3339(exit.finished_at));
        if let Some(t) = term.terminated.as_mut() {
            t.reason = exit.reason.as_str().to_string();
        }
        if let Some(s) = self.status_mut(name) {
            s.state = term;
            s.ready = false;
            s.started = false;
        }
        Some(exit)
    }

    /// Removes the ended container's runtime state (its log stays).
    fn retire(&mut self, name: &str) {
        if let Some(h) = self.slots.get_mut(name).and_then(|s| s.handle.take()) {
            if let Err(e) = self.runtime.delete(h.id()) {
                tracing::warn!(container = %name, error = %e, "delete container");
            }
        }
    }

    fn schedule_restart(&mut self, name: &str, exit: &ExitStatus) {
        let ran = exit
            .started_at
            .and_then(|s| exit.finished_at.duration_since(s).ok())
            .unwrap_or_default();
        let delay = self
            .state
            .backoff
            .entry(name.to_string())
            .or_default()
            .on_exit(&self.cfg.backoff, ran);
        self.save_state();
        self.retire(name);
        if let Some(slot) = self.slots.get_mut(name) {
            slot.not_before = Some(Instant::now() + delay);
        }
        let pod_name = self.state.name.clone();
        if let Some(s) = self.status_mut(name) {
            s.last_state = std::mem::take(&mut s.state);
            s.state = ContainerState::waiting(
                "CrashLoopBackOff",
                &format!(
                    "back-off {}s restarting failed container={name} pod={pod_name}",
                    delay.as_secs()
                ),
            );
        }
        tracing::info!(container = %name, delay = ?delay, "container restart scheduled");
        self.event(
            EventType::Warning,
            "BackOff",
            &format!("Back-off restarting failed container {name} in pod {pod_name}"),
        );
    }

    fn start_if_due(&mut self, c: &Container) {
        let due = self
            .slots
            .get(&c.name)
            .and_then(|s| s.not_before)
            .is_none_or(|t| Instant::now() >= t);
        if !due {
            return;
        }
        let restart = {
            let s = self.status_mut(&c.name);
            let prior_run = s
                .as_ref()
                .is_some_and(|s| !s.last_state.is_empty() || !s.container_id.is_empty());
            match s {
                Some(s) if prior_run => s.restart_count + 1,
                Some(s) => s.restart_count,
                None => 0,
            }
        };
        match self.start_container(c, restart) {
            Ok(handle) => {
                let started = handle.started_at().map_or_else(now_str, rfc3339);
                let id = handle.id().to_string();
                if let Some(slot) = self.slots.get_mut(&c.name) {
                    slot.handle = Some(handle);
                    slot.not_before = None;
                    slot.probes = ProbeTracker::new(c);
                }
                let has_readiness = c.readiness_probe.is_some();
                let has_startup = c.startup_probe.is_some();
                if let Some(s) = self.status_mut(&c.name) {
                    s.restart_count = restart;
                    s.container_id = format!("weft://{id}");
                    s.state = ContainerState::running(&started);
                    s.started = !has_startup;
                    s.ready = !has_readiness && !has_startup;
                }
                tracing::info!(container = %c.name, id = %id, restart, "container started");
                self.event(
                    EventType::Normal,
                    "Created",
                    &format!("Created container {}", c.name),
                );
                self.event(
                    EventType::Normal,
                    "Started",
                    &format!("Started container {}", c.name),
                );
            }
            Err((reason, message)) => {
                tracing::warn!(container = %c.name, reason = %reason, error = %message, "start container");
                self.event(
                    EventType::Warning,
                    "Failed",
                    &format!("Error: {reason}: {message}"),
                );
                let delay = self
                    .state
                    .backoff
                    .entry(c.name.clone())
                    .or_default()
                    .on_exit(&self.cfg.backoff, Duration::ZERO);
                if let Some(slot) = self.slots.get_mut(&c.name) {
                    slot.not_before = Some(Instant::now() + delay);
                }
                if let Some(s) = self.status_mut(&c.name) {
                    s.state = ContainerState::waiting(reason, &message);
                }
            }
        }
    }

    /// Starts run `restart` of `c`; on failure the Kubernetes waiting reason and the message.
    fn start_container(
        &mut self,
        c: &Container,
        restart: u32,
    ) -> Result<ContainerHandle, (&'static str, String)> {
        let sandbox = self
            .sandbox
            .clone()
            .ok_or(("CreateContainerError", "the pod has no sandbox".to_string()))?;
        let store = ImageStore::open(&self.cfg.image_root)
            .map_err(|e| ("CreateContainerError", e.to_string()))?;
        let image = store.get(&c.image).map_err(|e| {
            (
                "ErrImageNeverPull",
                format!("{e} (images are not pulled: import it with `weftctl image import`)"),
            )
        })?;
        self.event(
            EventType::Normal,
            "Pulled",
            &format!("Container image {:?} already present on machine", c.image),
        );
        if let Some(s) = self.status_mut(&c.name) {
            s.image_id = image.id.clone();
        }
        // The LRU clock of image GC; a failure only makes the image look older.
        if let Err(e) = store.mark_used(&image.id) {
            tracing::warn!(image = %image.id, error = %e, "mark image used");
        }
        let mounts = self
            .mounts(c)
            .map_err(|e| ("CreateContainerConfigError", e))?;
        let security = security::effective(
            self.pod.spec.security_context.as_ref(),
            c.security_context.as_ref(),
            self.pod.spec.host_namespaces(),
            self.cfg.seccomp_default,
        );
        let seccomp = match &security.seccomp {
            Seccomp::RuntimeDefault => Some(seccomp::runtime_default(
                &security.capabilities,
                std::env::consts::ARCH,
            )),
            Seccomp::Unconfined => None,
            Seccomp::Localhost(name) => Some(
                seccomp::localhost(&self.cfg.seccomp_root, name)
                    .map_err(|e| ("CreateContainerConfigError", e.to_string()))?,
            ),
        };
        let resources = ContainerResources::of(c.resources.as_ref());
        let id = container_id(&self.id, &c.name, restart)
            .map_err(|e| ("CreateContainerConfigError", e.to_string()))?;
        // A run with this id may be left from before a weftd restart.
        if let Err(e) = self.runtime.delete(&id) {
            tracing::debug!(container = %c.name, error = %e, "delete stale container");
        }
        let log = self
            .layout
            .container_log(&self.id, &c.name, restart)
            .map_err(|e| ("CreateContainerConfigError", e.to_string()))?;
        let spec = ContainerSpec {
            id,
            pod_id: self.id.dir_name(),
            name: c.name.clone(),
            image,
            command: c.command.clone().unwrap_or_default(),
            args: c.args.clone().unwrap_or_default(),
            env: self.env(c),
            working_dir: c.working_dir.clone(),
            mounts,
            hostname: self.pod.hostname().to_string(),
            log_path: log,
            oom_score_adj: resources::oom_score_adj(self.qos, &resources, self.memory_capacity),
            security,
            seccomp,
            resources,
            pids_limit: self.cfg.pids_limit,
        };
        container_user(&spec).map_err(|e| ("CreateContainerConfigError", e.to_string()))?;
        self.runtime
            .start(&spec, &sandbox)
            .map_err(|e| ("RunContainerError", e.to_string()))
    }

    fn mounts(&self, c: &Container) -> Result<Vec<MountSpec>, String> {
        let mut out = Vec::new();
        for m in &c.volume_mounts {
            let v = self
                .pod
                .spec
                .volumes
                .iter()
                .find(|v| v.name == m.name)
                .ok_or_else(|| format!("volume {} not found", m.name))?;
            let source = if v.empty_dir.is_some() || v.downward_api.is_some() {
                self.layout
                    .volume_dir(&self.id, &v.name)
                    .map_err(|e| e.to_string())?
            } else if let Some(hp) = &v.host_path {
                prepare_host_path(&hp.path, hp.kind.as_deref().unwrap_or(""))
                    .map_err(|e| format!("volume {}: hostPath {}: {e}", v.name, hp.path))?;
                PathBuf::from(&hp.path)
            } else {
                return Err(format!("volume {} has no source", v.name));
            };
            out.push(MountSpec {
                source,
                destination: m.mount_path.clone(),
                // Downward API files are the runtime's to write, as in Kubernetes.
                read_only: m.read_only || v.downward_api.is_some(),
            });
        }
        Ok(out)
    }

    /// The container's env with Downward API references resolved.
    fn env(&self, c: &Container) -> Vec<(String, String)> {
        c.env
            .iter()
            .map(|e| {
                let field = e
                    .value_from
                    .as_ref()
                    .and_then(|v| v.field_ref.as_ref())
                    .map(|f| f.field_path.as_str());
                let value = match field {
                    Some("metadata.name") => self.state.name.clone(),
                    Some("metadata.namespace") => self.state.namespace.clone(),
                    Some("metadata.uid") => self.state.uid.clone(),
                    Some("spec.nodeName") => self.cfg.node_name.clone(),
                    Some("status.podIP") => {
                        self.pod_ip.map(|ip| ip.to_string()).unwrap_or_default()
                    }
                    Some("status.hostIP") => self
                        .cfg
                        .host_ip
                        .map(|ip| ip.to_string())
                        .unwrap_or_default(),
                    _ => match e
                        .value_from
                        .as_ref()
                        .and_then(|v| v.resource_field_ref.as_ref())
                    {
                        Some(r) => self.resource_field(c, r),
                        None => e.value.clone().unwrap_or_default(),
                    },
                };
                (e.name.clone(), value)
            })
            .collect()
    }

    /// A validated `resourceFieldRef` of `c`; unset limits are the node's cpus and memory.
    fn resource_field(&self, c: &Container, r: &ResourceFieldRef) -> String {
        let node = downward::NodeAllocatable {
            cpu_milli: std::thread::available_parallelism().map_or(1000, |n| n.get() as u64 * 1000),
            memory_bytes: self.memory_capacity,
        };
        let res = ContainerResources::of(c.resources.as_ref());
        downward::resource_field_value(&r.resource, r.divisor.as_ref(), &res, node)
            .unwrap_or_default()
    }

    fn check_probes(&mut self, c: &Container) {
        let Some(sandbox) = self.sandbox.as_ref() else {
            return;
        };
        let netns = sandbox.netns_path();
        // The runtime keeps runc's state in `<state_root>/runc`, the state root being the pod dir.
        let runtime_root = self.dir.join("runc");
        let Some(slot) = self.slots.get_mut(&c.name) else {
            return;
        };
        let Some(handle) = slot.handle.as_ref() else {
            return;
        };
        let id = handle.id().to_string();
        let target = ProbeTarget {
            runtime: &self.cfg.oci_runtime,
            runtime_root: &runtime_root,
            container_id: &id,
            netns: &netns,
            pod_ip: self.pod_ip,
        };
        let outcome = slot.probes.tick(c, &target);
        if let Some(s) = self.status_mut(&c.name) {
            s.started = outcome.started;
            s.ready = outcome.ready;
        }
        if outcome.kill {
            let kind = if outcome.started {
                ProbeKind::Liveness
            } else {
                ProbeKind::Startup
            };
            tracing::info!(container = %c.name, probe = ?kind, "probe failed: killing container");
            self.event(
                EventType::Warning,
                "Unhealthy",
                &format!("{kind:?} probe failed"),
            );
            self.event(
                EventType::Normal,
                "Killing",
                &format!(
                    "Container {} failed {kind:?} probe, will be restarted",
                    c.name
                ),
            );
            let grace = Duration::from_secs(self.state.grace_seconds);
            if let Err(e) = self.runtime.stop(&id, grace) {
                tracing::warn!(container = %c.name, error = %e, "stop container after failed probe");
            }
        }
    }

    /// Records a pod event (`weftctl describe pod`'s Events) in the pod's events file.
    fn event(&self, kind: EventType, reason: &str, message: &str) {
        events::record(&self.layout.events(&self.id), kind, reason, message);
    }

    /// The pod is done: release its pod IP (CNI DEL) and its sandbox, keep status and logs.
    fn finish(&mut self) {
        let names: Vec<String> = self.slots.keys().cloned().collect();
        for name in names {
            self.retire(&name);
        }
        let netns = self.sandbox.as_ref().map(Sandbox::netns_path);
        release_network(&self.cfg, &self.id, &self.state, netns.unwrap_or_default());
        self.state.network = None;
        if let Some(sb) = self.sandbox.take() {
            if let Err(e) = sb.stop(SANDBOX_GRACE) {
                tracing::warn!(error = %e, "stop sandbox of finished pod");
            }
        }
        self.save_state();
        self.stage = Stage::Finished;
        tracing::info!("pod finished: sandbox and pod IP released");
    }

    /// Takes over the pod a previous weftd left in `dir`.
    fn adopt(&mut self) -> StepResult {
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
        match cached {
            Some((_, result)) => {
                self.pod_ip = super::cni::CniResult { raw: result }.pod_ip();
                self.stage = self.first_unfinished_init();
            }
            None => self.stage = Stage::Network,
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
            let Some(id) = s.container_id.strip_prefix("weft://") else {
                continue;
            };
            let container = self.container(&s.name);
            let is_app = self.pod.spec.containers.iter().any(|c| c.name == s.name);
            let Some(slot) = self.slots.get_mut(&s.name) else {
                continue;
            };
            if s.state.running.is_some() {
                match self.runtime.adopt(id) {
                    Ok(h) => {
                        if let Some(c) = &container {
                            slot.probes = ProbeTracker::new(c);
                        }
                        slot.handle = Some(h);
                    }
                    Err(e) => {
                        tracing::warn!(container = %s.name, error = %e, "adopt container: will start it again")
                    }
                }
            } else if s.state.terminated.is_some() && is_app {
                slot.done = true;
            } else if s.state.waiting.is_some() && !s.last_state.is_empty() {
                // It was waiting in back-off: restart after one more base delay at most.
                slot.not_before = Some(Instant::now() + self.cfg.backoff.base);
            }
        }
        self.written = None;
        tracing::info!(stage = ?self.stage, ip = ?self.pod_ip, "pod adopted");
        Ok(())
    }
}

/// The content of a `downwardAPI` volume file for `field` (labels and annotations: one
/// `key="value"` a line, sorted, as the kubelet writes them).
pub fn downward_file(pod: &Pod, field: &str) -> String {
    let pairs = |map: &BTreeMap<String, String>| -> String {
        map.iter()
            .map(|(k, v)| format!("{k}={}\n", serde_json::Value::String(v.clone())))
            .collect()
    };
    match field {
        "metadata.name" => pod.metadata.name.clone(),
        "metadata.namespace" => pod.metadata.namespace.clone(),
        "metadata.uid" => pod.metadata.uid.clone(),
        "metadata.labels" => pairs(&pod.metadata.labels),
        "metadata.annotations" => pairs(&pod.metadata.annotations),
        _ => String::new(),
    }
}

/// kubelet's volume ownership for `fsGroup`: every file and directory under `root` gets group
/// `gid` and group read/write (directories also setgid, so new files inherit the group).
fn set_volume_group(root: &Path, gid: u32) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(root)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    std::os::unix::fs::lchown(root, None, Some(gid))?;
    let mode = meta.permissions().mode() & 0o7777;
    if meta.is_dir() {
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(mode | 0o2070))?;
        for entry in std::fs::read_dir(root)? {
            set_volume_group(&entry?.path(), gid)?;
        }
    } else {
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(mode | 0o060))?;
    }
    Ok(())
}

/// Makes a hostPath volume's source exist as its `type` asks.
fn prepare_host_path(path: &str, kind: &str) -> Result<(), String> {
    let p = Path::new(path);
    match kind {
        "DirectoryOrCreate" if !p.exists() => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(p)
            .map_err(|e| format!("create: {e}")),
        "FileOrCreate" if !p.exists() => {
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("create parent: {e}"))?;
            }
            std::fs::File::create(p)
                .map(drop)
                .map_err(|e| format!("create: {e}"))
        }
        "Directory" | "DirectoryOrCreate" if !p.is_dir() => Err("not a directory".into()),
        "File" | "FileOrCreate" if !p.is_file() => Err("not a file".into()),
        "" if !p.exists() => Err("does not exist".into()),
        _ => Ok(()),
    }
}

/// CNI DEL of the pod's attachment, with the network config cached at ADD (or the current one
/// of the same name). Nothing to do when the pod was never attached.
fn release_network(cfg: &PodConfig, id: &PodId, state: &WorkerState, netns: PathBuf) {
    let Some(network) = &state.network else {
        return;
    };
    let pod = state.full_name();
    let cni = CniRuntime {
        bin_dirs: cfg.cni_bin_dirs.clone(),
        cache_dir: cfg.cni_cache_dir.clone(),
    };
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
fn teardown(
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
    let grace = Duration::from_secs(state.grace_seconds);
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
    release_network(
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
    if let Err(e) = std::fs::remove_dir_all(dir) {
        tracing::warn!(pod = %pod, dir = %dir.display(), error = %e, "remove pod directory");
    }
    let logs = cfg.layout().log_dir(&id);
    if let Err(e) = std::fs::remove_dir_all(&logs) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(pod = %pod, dir = %logs.display(), error = %e, "remove pod logs");
        }
    }
    tracing::info!(pod = %pod, "pod removed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_are_prepared_per_type() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("made/here");
        let ds = d.to_str().unwrap();
        assert_eq!(prepare_host_path(ds, ""), Err("does not exist".into()));
        assert_eq!(
            prepare_host_path(ds, "Directory"),
            Err("not a directory".into())
        );
        prepare_host_path(ds, "DirectoryOrCreate").unwrap();
        assert!(d.is_dir());
        assert_eq!(prepare_host_path(ds, "File"), Err("not a file".into()));
        let f = dir.path().join("f/file");
        prepare_host_path(f.to_str().unwrap(), "FileOrCreate").unwrap();
        assert!(f.is_file());
        prepare_host_path(f.to_str().unwrap(), "File").unwrap();
    }

    #[test]
    fn downward_files_hold_the_pods_metadata() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels: {app: web, tier: \"front end\"}\n  annotations: {note: 'say \"hi\"'}\nspec:\n  containers: [{name: c, image: busybox}]\n";
        let pod = crate::pod::manifest::parse_manifest(Path::new("/m/web.yaml"), text.as_bytes())
            .unwrap()
            .pod;
        assert_eq!(downward_file(&pod, "metadata.name"), "web");
        assert_eq!(downward_file(&pod, "metadata.namespace"), "default");
        assert_eq!(
            downward_file(&pod, "metadata.labels"),
            "app=\"web\"\ntier=\"front end\"\n"
        );
        assert_eq!(
            downward_file(&pod, "metadata.annotations"),
            "note=\"say \\\"hi\\\"\"\n"
        );
        assert_eq!(downward_file(&pod, "metadata.uid"), pod.metadata.uid);
    }

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
}
