//! One pod's life on a thread, kubelet's way: each tick observes the pod (is the sandbox
//! alive, which containers exited, what the probes say), asks
//! [`compute_pod_actions`](super::actions::compute_pod_actions) what to do, and does it
//! (sandbox → CNI ADD → init containers one at a time → app containers together, restarts with
//! back-off, probe kills); status goes to `<pod_dir>/status.json` on every change. On removal:
//! SIGTERM → grace → SIGKILL → CNI DEL → sandbox stop → volumes, state and logs removed
//! ([`lifecycle`](super::lifecycle)).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::actions::{
    compute_pod_actions, ContainerView, PodAction, PodView, RunView, SandboxView,
};
use super::backoff::Backoff;
use super::cni::{load_network, Attachment, CniRuntime, PodNetwork, POD_IFNAME};
use super::config::PodConfig;
use super::container_spec::PodContext;
use super::events::{self, EventType};
use super::image::ImageStore;
use super::image_source::ImageSource;
use super::layout::{LayoutError, PodId, PodLayout};
use super::lifecycle::{in_node_subnet, release_network, teardown, SANDBOX_GRACE};
use super::manifest::{Container, ParsedManifest, Pod};
use super::probe::{ProbeKind, ProbeTarget, ProbeTracker};
use super::resources::{self, ContainerResources, QosClass};
use super::runtime::{ContainerHandle, ContainerRuntime, ExitStatus, OciRuntime};
use super::sandbox::{PauseSandboxes, Sandbox, SandboxRuntime};
use super::status::{
    self, rfc3339, unix_ms, ContainerState, ContainerStatus, PodObject, PodRecord, StartTimings,
};
use super::worker_error::WorkerError;

use super::lifecycle::WorkerState;

#[cfg(test)]
mod executor_tests;

/// How often a worker looks at its containers.
const TICK: Duration = Duration::from_millis(100);

/// How often a worker compares its pod address with the node's subnet.
const SUBNET_CHECK: Duration = Duration::from_secs(1);

/// Observe-decide-act passes within one tick: a new pod goes sandbox → network → first
/// containers without waiting a tick between them.
const PASSES: usize = 4;

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

/// One container's runtime side.
#[derive(Default)]
pub(super) struct Slot {
    pub(super) handle: Option<ContainerHandle>,
    /// Its current (or last) run as the action computation sees it.
    pub(super) run: RunView,
    pub(super) probes: ProbeTracker,
}

/// A pod worker's whole state; its lifecycle half (creation, adoption) is in
/// [`lifecycle`](super::lifecycle).
pub(super) struct PodRun {
    pub(super) cfg: Arc<PodConfig>,
    pub(super) pod: Pod,
    pub(super) id: PodId,
    pub(super) layout: PodLayout,
    pub(super) dir: PathBuf,
    pub(super) state: WorkerState,
    pub(super) runtime: Box<dyn ContainerRuntime>,
    pub(super) cni: Box<dyn PodNetwork>,
    pub(super) sandboxes: Box<dyn SandboxRuntime>,
    pub(super) sandbox: Option<Sandbox>,
    /// The pod network is attached to the current sandbox.
    pub(super) attached: bool,
    /// The pod reached Succeeded or Failed: nothing more runs, and its sandbox and pod IP are
    /// released (the status and logs stay until the manifest goes).
    pub(super) finished: bool,
    pub(super) pod_ip: Option<IpAddr>,
    pub(super) retry_at: Option<SystemTime>,
    pub(super) pod_backoff: Backoff,
    pub(super) slots: BTreeMap<String, Slot>,
    pub(super) record: PodRecord,
    pub(super) written: Option<PodRecord>,
    signal: Arc<AtomicU8>,
    qos: QosClass,
    memory_capacity: u64,
    subnet_checked: Option<Instant>,
    /// The pod's address was inside the node's subnet when last looked at: only then does
    /// leaving it mean the node's subnet changed (a pod on another CNI network never was).
    in_node_subnet: bool,
}

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
            runtime: Box::new(OciRuntime::new(&cfg.oci_runtime.to_string_lossy(), &dir)),
            cni: Box::new(CniRuntime {
                bin_dirs: cfg.cni_bin_dirs.clone(),
                cache_dir: cfg.cni_cache_dir.clone(),
            }),
            sandboxes: Box::new(PauseSandboxes),
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
            attached: false,
            finished: false,
            pod_ip: None,
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
            self.record.pod.status.message = e.to_string();
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

    /// What every container of this pod is assembled from.
    pub(super) fn context(&self) -> PodContext<'_> {
        PodContext {
            cfg: &self.cfg,
            pod: &self.pod,
            id: &self.id,
            layout: &self.layout,
            pod_ip: self.pod_ip,
            qos: self.qos,
            memory_capacity: self.memory_capacity,
        }
    }

    pub(super) fn save_state(&self) {
        if let Err(e) = self.state.save(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "save pod state");
        }
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

    pub(super) fn attachment(&self) -> Attachment {
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

    /// One tick: observe, compute the actions, carry them out; again at once while a pass
    /// made progress that the next pass can build on (sandbox up, network attached, an exit).
    fn step(&mut self) {
        for _ in 0..PASSES {
            if self.finished {
                return;
            }
            let exits = self.observe();
            let views = self.views();
            let sandbox = self.sandbox_view();
            let view = PodView {
                spec: &self.pod.spec,
                sandbox,
                setup_retry_at: self.retry_at,
                containers: &views,
                policy: &self.cfg.backoff,
            };
            let actions = compute_pod_actions(&view, SystemTime::now());
            let mut again = exits > 0;
            for action in actions {
                again |= self.execute(action);
            }
            self.note_started();
            if !again {
                return;
            }
        }
    }

    /// Polls every running container: records exits (the number returned) and probe verdicts.
    fn observe(&mut self) -> usize {
        let names: Vec<String> = self
            .slots
            .iter()
            .filter(|(_, s)| s.handle.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        let mut exits = 0;
        for name in names {
            if let Some(exit) = self.poll_exit(&name) {
                self.record_exit(&name, &exit);
                self.retire(&name);
                exits += 1;
                continue;
            }
            let app = self.pod.spec.containers.iter().find(|c| c.name == name);
            if let Some(c) = app.cloned() {
                let probe_failed = self.check_probes(&c);
                if let Some(slot) = self.slots.get_mut(&name) {
                    slot.run = RunView::Running { probe_failed };
                }
            }
        }
        exits
    }

    /// The containers as the action computation sees them.
    fn views(&self) -> BTreeMap<String, ContainerView> {
        let st = &self.record.pod.status;
        st.init_container_statuses
            .iter()
            .chain(&st.container_statuses)
            .filter_map(|s| {
                let slot = self.slots.get(&s.name)?;
                let view = ContainerView {
                    run: slot.run,
                    restart_count: s.restart_count,
                    has_run: !s.last_state.is_empty() || !s.container_id.is_empty(),
                    backoff: self.state.backoff.get(&s.name).copied().unwrap_or_default(),
                };
                Some((s.name.clone(), view))
            })
            .collect()
    }

    fn sandbox_view(&mut self) -> SandboxView {
        if self.sandbox.is_none() {
            return SandboxView::Missing;
        }
        if let Some(reason) = self.sandbox_changed() {
            return SandboxView::Changed(reason);
        }
        if self.attached {
            SandboxView::Ready
        } else {
            SandboxView::Unattached
        }
    }

    /// Carries one action out; whether the next pass may build on it at once.
    fn execute(&mut self, action: PodAction) -> bool {
        match action {
            PodAction::RecreateSandbox { reason } => {
                self.recreate_sandbox(&reason);
                false
            }
            PodAction::CreateSandbox => self.setup(Self::make_sandbox),
            PodAction::AttachNetwork => self.setup(Self::attach_network),
            PodAction::Start {
                container,
                restart,
                backoff,
            } => {
                self.start(&container, restart, backoff);
                false
            }
            PodAction::BackOff {
                container, delay, ..
            } => {
                self.back_off(&container, delay);
                false
            }
            PodAction::Kill { container, probe } => {
                self.kill(&container, probe);
                false
            }
            PodAction::Finish(outcome) => {
                tracing::info!(outcome = ?outcome, "pod ended");
                self.finish();
                false
            }
        }
    }

    /// A pod setup step; a failure is retried after the pod's back-off.
    fn setup(&mut self, step: fn(&mut Self) -> Result<(), WorkerError>) -> bool {
        match step(self) {
            Ok(()) => {
                self.retry_at = None;
                true
            }
            Err(e) => {
                let delay = self.pod_backoff.on_failure(&self.cfg.backoff);
                tracing::warn!(error = %e, reason = e.reason(), retry_in = ?delay, "pod setup");
                self.record.pod.status.message = e.to_string();
                self.retry_at = Some(SystemTime::now() + delay);
                false
            }
        }
    }

    /// Why the pod's sandbox must be re-created, if it must: its pause process is gone (its
    /// namespaces with it), or the node's subnet no longer holds the pod's address.
    fn sandbox_changed(&mut self) -> Option<String> {
        let sandbox = self.sandbox.as_ref()?;
        if !self.sandboxes.is_running(sandbox) {
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
        let grace = self.state.grace();
        let running: Vec<(String, String)> = self
            .slots
            .iter()
            .filter_map(|(n, s)| s.handle.as_ref().map(|h| (n.clone(), h.id().to_string())))
            .collect();
        for (name, id) in &running {
            if let Err(e) = self.runtime.stop(id, grace) {
                tracing::warn!(container = %name, error = %e, "stop container of changed sandbox");
            }
            if let Some(exit) = self.poll_exit(name) {
                self.record_exit(name, &exit);
            }
            self.retire(name);
        }
        let policy = self.pod.spec.restart_policy;
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
            let is_init = inits.contains(&s.name);
            let Some(slot) = self.slots.get_mut(&s.name) else {
                continue;
            };
            // An app container that ended for good stays ended; everything else runs again.
            let done = !is_init
                && matches!(slot.run, RunView::Exited { code, .. } if !policy.restarts(code));
            if !done {
                slot.run = RunView::Pending;
                if s.state.terminated.is_some() {
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
        self.release_sandbox("changed");
        self.pod_ip = None;
        self.retry_at = None;
    }

    /// Releases the pod's address (CNI DEL) and stops its sandbox; `why` (`changed`,
    /// `finished`) goes into the log.
    fn release_sandbox(&mut self, why: &str) {
        let netns = self.sandbox.as_ref().map(Sandbox::netns_path);
        release_network(
            self.cni.as_ref(),
            &self.cfg,
            &self.id,
            &self.state,
            netns.unwrap_or_default(),
        );
        self.state.network = None;
        if let Some(sb) = self.sandbox.take() {
            if let Err(e) = self.sandboxes.stop(&sb, SANDBOX_GRACE) {
                tracing::warn!(error = %e, sandbox = why, "stop sandbox");
            }
        }
        self.save_state();
        self.attached = false;
    }

    fn make_sandbox(&mut self) -> Result<(), WorkerError> {
        let host = self.pod.spec.host_namespaces();
        let sandbox =
            self.sandboxes
                .create(&self.id.dir_name(), self.pod.hostname(), &self.dir, host)?;
        self.sandbox = Some(sandbox);
        self.attached = false;
        self.record.timings.sandbox_ms = Some(unix_ms(SystemTime::now()));
        Ok(())
    }

    fn attach_network(&mut self) -> Result<(), WorkerError> {
        let network = if self.pod.spec.host_network {
            // The node's namespace: no CNI call; the pod's IP is the node's, as in Kubernetes.
            self.pod_ip = self.cfg.host_ip;
            "host".to_string()
        } else {
            let list = load_network(&self.cfg.cni_conf_dir)?;
            let att = self.attachment();
            // The node subnet as the plugin saw it: a change right after the ADD, before the
            // first periodic check, must still count as a change.
            let subnet_before = self.read_subnet_file();
            let result = self.cni.add(&list, &att)?;
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
        self.attached = true;
        self.record.timings.network_ms = Some(unix_ms(SystemTime::now()));
        self.record.pod.status.message.clear();
        self.pod_backoff = Backoff::default();
        tracing::info!(ip = ?self.pod_ip, network = %network, "pod network attached");
        Ok(())
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

    /// Sets `containers_ms` once every app container runs.
    fn note_started(&mut self) {
        if self.record.timings.containers_ms.is_some() {
            return;
        }
        let all = self
            .pod
            .spec
            .containers
            .iter()
            .all(|c| self.slots.get(&c.name).is_some_and(|s| s.handle.is_some()));
        if all {
            self.record.timings.containers_ms = Some(unix_ms(SystemTime::now()));
        }
    }

    /// The exit of the container's current run; `None` while it runs.
    fn poll_exit(&mut self, name: &str) -> Option<ExitStatus> {
        let handle = self.slots.get(name)?.handle.as_ref()?;
        match handle.poll() {
            Ok(exit) => exit,
            Err(e) => {
                tracing::warn!(container = %name, error = %e, "poll container");
                None
            }
        }
    }

    /// Records an ended run in the container's status and its slot.
    fn record_exit(&mut self, name: &str, exit: &ExitStatus) {
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
        let ran = exit
            .started_at
            .and_then(|s| exit.finished_at.duration_since(s).ok())
            .unwrap_or_default();
        if let Some(slot) = self.slots.get_mut(name) {
            slot.run = RunView::Exited {
                code: exit.code,
                ran,
                finished_at: exit.finished_at,
            };
        }
        let last_init = self.pod.spec.init_containers.last();
        if exit.code == 0 && last_init.is_some_and(|c| c.name == name) {
            for s in &mut self.record.pod.status.container_statuses {
                if s.state.waiting.is_some() {
                    s.state = ContainerState::waiting("ContainerCreating", "");
                }
            }
        }
    }

    /// Removes the ended container's runtime state (its log stays).
    fn retire(&mut self, name: &str) {
        if let Some(h) = self.slots.get_mut(name).and_then(|s| s.handle.take()) {
            if let Err(e) = self.runtime.delete(h.id()) {
                tracing::warn!(container = %name, error = %e, "delete container");
            }
        }
    }

    /// Shows a crashed container as waiting in `CrashLoopBackOff` (once per exit).
    fn back_off(&mut self, name: &str, delay: Duration) {
        let pod_name = self.state.name.clone();
        let Some(s) = self.status_mut(name) else {
            return;
        };
        if s.state.terminated.is_none() {
            return;
        }
        s.last_state = std::mem::take(&mut s.state);
        s.state = ContainerState::waiting(
            "CrashLoopBackOff",
            &format!(
                "back-off {}s restarting failed container={name} pod={pod_name}",
                delay.as_secs()
            ),
        );
        tracing::info!(container = %name, delay = ?delay, "container restart scheduled");
        self.event(
            EventType::Warning,
            "BackOff",
            &format!("Back-off restarting failed container {name} in pod {pod_name}"),
        );
    }

    /// Starts run `restart` of the container; on failure it waits with the Kubernetes reason.
    fn start(&mut self, name: &str, restart: u32, backoff: Backoff) {
        let Some(c) = self.container(name) else {
            return;
        };
        self.state.backoff.insert(c.name.clone(), backoff);
        self.save_state();
        let result = self.start_container(&c, restart);
        match &result {
            Ok(_) => {
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
            Err(e) => self.event(
                EventType::Warning,
                "Failed",
                &format!("Error: {}: {e}", e.reason()),
            ),
        }
        let Some(s) = self.status_mut(&c.name) else {
            return;
        };
        if s.state.terminated.is_some() {
            s.last_state = std::mem::take(&mut s.state);
        }
        match result {
            Ok(handle) => {
                let started = handle.started_at().map_or_else(now_str, rfc3339);
                let id = handle.id().to_string();
                s.restart_count = restart;
                s.container_id = format!("weft://{id}");
                s.state = ContainerState::running(&started);
                s.started = c.startup_probe.is_none();
                s.ready = c.readiness_probe.is_none() && c.startup_probe.is_none();
                if let Some(slot) = self.slots.get_mut(&c.name) {
                    slot.handle = Some(handle);
                    slot.run = RunView::Running { probe_failed: None };
                    slot.probes = ProbeTracker::new(&c);
                }
                tracing::info!(container = %c.name, id = %id, restart, "container started");
            }
            Err(e) => {
                tracing::warn!(container = %c.name, reason = e.reason(), error = %e, "start container");
                s.state = ContainerState::waiting(e.reason(), &e.to_string());
                if let Some(slot) = self.slots.get_mut(&c.name) {
                    slot.run = RunView::StartFailed {
                        at: SystemTime::now(),
                    };
                }
            }
        }
    }

    /// Starts run `restart` of `c`.
    fn start_container(
        &mut self,
        c: &Container,
        restart: u32,
    ) -> Result<ContainerHandle, WorkerError> {
        let sandbox = self.sandbox.clone().ok_or(WorkerError::NoSandbox)?;
        let store = ImageStore::open(&self.cfg.image_root).map_err(WorkerError::ImageStore)?;
        let image = store.image(&c.image).map_err(WorkerError::ImageMissing)?;
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
        let spec = self.context().container_spec(c, restart, image)?;
        // A run with this id may be left from before a weftd restart.
        if let Err(e) = self.runtime.delete(&spec.id) {
            tracing::debug!(container = %c.name, error = %e, "delete stale container");
        }
        Ok(self.runtime.start(&spec, &sandbox)?)
    }

    /// Runs the container's probes; the probe that failed past its threshold, if one did.
    fn check_probes(&mut self, c: &Container) -> Option<ProbeKind> {
        let netns = self.sandbox.as_ref()?.netns_path();
        // The runtime's state root is the pod directory.
        let runtime_root = self.dir.join(super::layout::RUNTIME_STATE_DIR);
        let slot = self.slots.get_mut(&c.name)?;
        let id = slot.handle.as_ref()?.id().to_string();
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
        outcome.kill.then_some(if outcome.started {
            ProbeKind::Liveness
        } else {
            ProbeKind::Startup
        })
    }

    /// Stops a container whose probe failed; the next pass sees its exit.
    fn kill(&mut self, name: &str, probe: ProbeKind) {
        let Some(id) = self
            .slots
            .get(name)
            .and_then(|s| s.handle.as_ref())
            .map(|h| h.id().to_string())
        else {
            return;
        };
        tracing::info!(container = %name, probe = ?probe, "probe failed: killing container");
        self.event(
            EventType::Warning,
            "Unhealthy",
            &format!("{probe:?} probe failed"),
        );
        self.event(
            EventType::Normal,
            "Killing",
            &format!("Container {name} failed {probe:?} probe, will be restarted"),
        );
        let grace = self.state.grace();
        if let Err(e) = self.runtime.stop(&id, grace) {
            tracing::warn!(container = %name, error = %e, "stop container after failed probe");
        }
    }

    /// Records a pod event (`weftctl describe pod`'s Events) in the pod's events file.
    fn event(&self, kind: EventType, reason: &str, message: &str) {
        events::record(&self.layout.events(&self.id), kind, reason, message);
    }

    /// The pod is done: release its pod IP (CNI DEL) and its sandbox, keep status and logs.
    pub(super) fn finish(&mut self) {
        let names: Vec<String> = self.slots.keys().cloned().collect();
        for name in names {
            self.retire(&name);
        }
        self.release_sandbox("finished");
        self.finished = true;
        tracing::info!("pod finished: sandbox and pod IP released");
    }
}
