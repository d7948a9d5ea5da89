//! The static pod controller: watches the manifest directory (inotify, plus a rescan every
//! second as the fallback), starts a [`PodWorker`] per valid manifest, restarts it when
//! the manifest's content changes, stops it when the file goes away, and on start-up re-adopts
//! the pods a previous weftd left running and removes the orphans whose manifest is gone.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use super::cli::InvalidManifest;
pub use super::config::PodConfig;
use super::image_gc;
use super::layout::PodId;
use super::lifecycle::WorkerState;
use super::manifest::{is_manifest_file, parse_manifest, ParsedManifest, MAX_MANIFEST_BYTES};
use super::pod_worker::{PodWorker, WorkerMode};
use crate::http_client::{self, HttpError};

/// Errors that stop the controller (a bad manifest or pod never does).
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The pod root cannot be created.
    #[error("pod controller: create pod root {path}: {source}")]
    PodRoot {
        /// The pod root.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The controller thread panicked or could not be joined.
    #[error("pod controller: thread failed: {0}")]
    Thread(String),
}

/// inotify on the manifest directory, so a new or changed file is seen within milliseconds;
/// the periodic rescan stays as the fallback (and covers a directory created later).
struct DirWatch {
    inotify: Inotify,
}

impl DirWatch {
    fn new(dir: &Path) -> Option<DirWatch> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| tracing::warn!(error = %e, "inotify unavailable; rescanning only"))
            .ok()?;
        let mask = AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_ATTRIB;
        match inotify.add_watch(dir, mask) {
            Ok(_) => Some(DirWatch { inotify }),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "watch manifest directory; rescanning only");
                None
            }
        }
    }

    /// Whether anything happened in the directory since the last call.
    fn changed(&self) -> bool {
        self.inotify
            .read_events()
            .is_ok_and(|events| !events.is_empty())
    }
}

/// The pod served at the manifest URL, fetched on a thread of its own so a slow or silent
/// server never holds up the controller. A failed fetch, or an answer that is not a valid
/// manifest, keeps the last good content (its pod keeps running), as kubelet does.
struct UrlSource {
    url: String,
    ca_file: Option<PathBuf>,
    next: Option<Instant>,
    /// The fetch in flight; its answer arrives here.
    pending: Option<mpsc::Receiver<Result<Vec<u8>, HttpError>>>,
    body: Option<Vec<u8>>,
    /// The last content that was a valid manifest.
    good: Option<ParsedManifest>,
    /// Why the last answer was refused, until a valid one comes.
    error: Option<String>,
}

impl UrlSource {
    fn new(url: String, ca_file: Option<PathBuf>) -> UrlSource {
        if url.starts_with("http://") {
            tracing::warn!(
                url = %url,
                "manifest URL is plain http: anyone on the path can change the pod it runs; use https"
            );
        }
        UrlSource {
            url,
            ca_file,
            next: None,
            pending: None,
            body: None,
            good: None,
            error: None,
        }
    }

    /// Takes the answer of the fetch in flight, if it came, and starts the next one when due.
    fn refresh(&mut self, interval: Duration, deadline: Duration) {
        if let Some(rx) = &self.pending {
            match rx.try_recv() {
                Ok(answer) => {
                    self.pending = None;
                    self.take(answer);
                }
                Err(mpsc::TryRecvError::Empty) => return,
                Err(mpsc::TryRecvError::Disconnected) => self.pending = None,
            }
        }
        let now = Instant::now();
        if self.next.is_some_and(|t| now < t) {
            return;
        }
        self.next = Some(now + interval);
        let (tx, rx) = mpsc::channel();
        let max_body = u64::try_from(MAX_MANIFEST_BYTES).unwrap_or(u64::MAX);
        let url = self.url.clone();
        let ca_file = self.ca_file.clone();
        // The thread ends by itself within `deadline`; nobody waits for it, so neither does
        // weftd's shutdown.
        let spawned = std::thread::Builder::new()
            .name("manifest-url".into())
            .spawn(move || {
                let answer = http_client::get(&url, deadline, max_body, ca_file.as_deref());
                let _ = tx.send(answer);
            });
        match spawned {
            Ok(_) => self.pending = Some(rx),
            Err(e) => tracing::warn!(url = %self.url, error = %e, "start manifest fetch"),
        }
    }

    fn take(&mut self, answer: Result<Vec<u8>, HttpError>) {
        match answer {
            Ok(body) if self.body.as_ref() != Some(&body) => {
                match parse_manifest(Path::new(&self.url), &body) {
                    Ok(m) => {
                        for w in &m.warnings {
                            tracing::warn!(url = %self.url, "manifest: {w}");
                        }
                        self.good = Some(m);
                        self.error = None;
                    }
                    Err(e) => {
                        tracing::error!(url = %self.url, "invalid pod manifest; keeping the last good one: {e}");
                        self.error = Some(e.to_string());
                    }
                }
                self.body = Some(body);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(url = %self.url, error = %e, "fetch pod manifest; keeping the last one")
            }
        }
    }
}

/// A valid manifest found in the directory.
#[derive(Debug, Clone)]
pub struct DesiredPod {
    /// The file.
    pub file: PathBuf,
    /// Its parsed content.
    pub manifest: ParsedManifest,
}

/// What the manifest directory holds: valid pods by `namespace/name`, and the rejected files.
#[derive(Debug, Clone, Default)]
pub struct ManifestScan {
    /// Valid pods.
    pub pods: BTreeMap<String, DesiredPod>,
    /// Rejected files with the error.
    pub invalid: Vec<InvalidManifest>,
}

impl ManifestScan {
    /// Adds the pod of `desired` unless an earlier manifest has its name or its UID (two pods
    /// with one UID would share a directory, a sandbox and cgroups).
    pub fn add(&mut self, desired: DesiredPod) {
        let pod = &desired.manifest.pod;
        let name = pod.full_name();
        let uid = &pod.metadata.uid;
        let taken = match self.pods.get(&name) {
            Some(first) => Some(format!(
                "field metadata.name: pod {name} is already defined by {}",
                first.file.display()
            )),
            None => self
                .pods
                .values()
                .find(|d| &d.manifest.pod.metadata.uid == uid)
                .map(|first| {
                    format!(
                        "field metadata.uid: {uid:?} is already the UID of pod {} defined by {}",
                        first.manifest.pod.full_name(),
                        first.file.display()
                    )
                }),
        };
        match taken {
            Some(reason) => self.invalid.push(InvalidManifest {
                file: desired.file.display().to_string(),
                error: format!("manifest {}: {reason}", desired.file.display()),
            }),
            None => {
                self.pods.insert(name, desired);
            }
        }
    }
}

/// A manifest changed less than this long ago may still be being written.
const MANIFEST_SETTLE: Duration = Duration::from_secs(1);

fn recently_modified(file: &Path) -> bool {
    std::fs::metadata(file)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < MANIFEST_SETTLE)
}

/// Why a manifest file is refused unread.
#[derive(Debug, thiserror::Error)]
enum ManifestFileError {
    /// Opening, inspecting or reading it failed.
    #[error("{op}: {source}")]
    Io {
        /// `open`, `stat` or `read`.
        op: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// A directory, FIFO, device or socket.
    #[error("not a regular file")]
    NotRegular,
    /// Over [`MAX_MANIFEST_BYTES`].
    #[error("{0} bytes is over the {MAX_MANIFEST_BYTES}-byte limit")]
    TooLarge(u64),
}

/// The content of a manifest file, `Ok(None)` when it is gone, `Err(reason)` when it is
/// refused unread: over [`MAX_MANIFEST_BYTES`] (judged by its size, then capped while reading)
/// or not a regular file.
fn read_manifest_file(file: &Path) -> Result<Option<Vec<u8>>, ManifestFileError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking: a FIFO renamed into place must not stop the controller in open().
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(file)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ManifestFileError::Io { op: "open", source }),
    };
    let meta = f
        .metadata()
        .map_err(|source| ManifestFileError::Io { op: "stat", source })?;
    if !meta.is_file() {
        return Err(ManifestFileError::NotRegular);
    }
    if meta.len() > MAX_MANIFEST_BYTES as u64 {
        return Err(ManifestFileError::TooLarge(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    f.take(MAX_MANIFEST_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ManifestFileError::Io { op: "read", source })?;
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestFileError::TooLarge(bytes.len() as u64));
    }
    Ok(Some(bytes))
}

/// Parse results by file: the content they were made from (`None` when the file was refused
/// unread) and the outcome.
pub type ManifestCache = HashMap<PathBuf, (Option<Vec<u8>>, Result<ParsedManifest, String>)>;

/// Reads every manifest of `dir` (in file-name order). A pod name or UID defined by two files
/// is rejected in the second. `cache` keeps parse results by file and content, so unchanged
/// files are not parsed again and warnings are logged once.
pub fn scan_manifests(dir: &Path, cache: &mut ManifestCache) -> ManifestScan {
    let mut scan = ManifestScan::default();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_manifest_file(p) && p.is_file())
            .collect(),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "read pod manifest directory");
            Vec::new()
        }
    };
    files.sort();
    cache.retain(|f, _| files.contains(f));
    for file in files {
        let content = match read_manifest_file(&file) {
            Ok(Some(bytes)) => Ok(bytes),
            // Deleted between listing and reading: it is gone.
            Ok(None) => continue,
            Err(reason) => Err(format!("manifest {}: {reason}", file.display())),
        };
        let fresh = match (cache.get(&file), &content) {
            (Some((Some(old), _)), Ok(new)) => old != new,
            (Some((None, Err(old))), Err(new)) => old != new,
            _ => true,
        };
        if fresh {
            let parsed = match &content {
                Ok(bytes) => parse_manifest(&file, bytes).map_err(|e| e.to_string()),
                Err(reason) => Err(reason.clone()),
            };
            if parsed.is_err() && recently_modified(&file) {
                // Probably still being written (not renamed into place): judge it at the next
                // scan, keeping the pod of its previous content meanwhile.
                if let Some((_, Ok(m))) = cache.get(&file) {
                    if !scan.pods.contains_key(&m.pod.full_name()) {
                        scan.add(DesiredPod {
                            file: file.clone(),
                            manifest: m.clone(),
                        });
                    }
                }
                continue;
            }
            match &parsed {
                Ok(m) => {
                    for w in &m.warnings {
                        tracing::warn!(file = %file.display(), pod = %m.pod.full_name(), "manifest: {w}");
                    }
                }
                Err(e) => tracing::error!(file = %file.display(), "invalid pod manifest: {e}"),
            }
            cache.insert(file.clone(), (content.ok(), parsed));
        }
        let Some((_, parsed)) = cache.get(&file) else {
            continue;
        };
        match parsed {
            Ok(m) => scan.add(DesiredPod {
                file: file.clone(),
                manifest: m.clone(),
            }),
            Err(e) => scan.invalid.push(InvalidManifest {
                file: file.display().to_string(),
                error: e.clone(),
            }),
        }
    }
    scan
}

/// What the controller does to reach the desired pods from the running ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new pod.
    Start(String),
    /// Same name, different UID (the manifest changed): stop the old pod, then start the new.
    Replace(String),
    /// The manifest is gone.
    Stop(String),
}

/// The changes from `running` (name → UID) to `desired` (name → UID), in name order.
pub fn plan(desired: &BTreeMap<String, String>, running: &BTreeMap<String, String>) -> Vec<Change> {
    let mut out = Vec::new();
    for (name, uid) in desired {
        match running.get(name) {
            None => out.push(Change::Start(name.clone())),
            Some(old) if old != uid => out.push(Change::Replace(name.clone())),
            Some(_) => {}
        }
    }
    for name in running.keys() {
        if !desired.contains_key(name) {
            out.push(Change::Stop(name.clone()));
        }
    }
    out
}

/// The static pod runtime of one node.
pub struct PodManager {
    cfg: Arc<PodConfig>,
    workers: BTreeMap<String, PodWorker>,
    stopping: Vec<PodWorker>,
    cache: ManifestCache,
    /// What `invalid-manifests.json` holds; `None` until written once by this controller, so
    /// a list left by a previous weftd is replaced at start.
    last_invalid: Option<Vec<InvalidManifest>>,
    url_source: Option<UrlSource>,
    /// Pod directories of the manifest URL found at start, kept until the URL serves a valid
    /// manifest (then adopted when it is the same pod, removed otherwise).
    url_kept: Vec<PathBuf>,
}

impl PodManager {
    /// Runs the pod runtime until `shutdown` is set. Pods keep running when it returns (so a
    /// restarted weftd adopts them); only pods whose manifest disappears are stopped.
    pub fn run_blocking(cfg: PodConfig, shutdown: &AtomicBool) -> Result<(), ControllerError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&cfg.pod_root)
            .map_err(|source| ControllerError::PodRoot {
                path: cfg.pod_root.clone(),
                source,
            })?;
        let mut mgr = PodManager {
            cfg: Arc::new(cfg),
            workers: BTreeMap::new(),
            stopping: Vec::new(),
            cache: HashMap::new(),
            last_invalid: None,
            url_source: None,
            url_kept: Vec::new(),
        };
        let ca_file = mgr.cfg.manifest_url_ca_file.clone();
        mgr.url_source = mgr
            .cfg
            .manifest_url
            .clone()
            .map(|url| UrlSource::new(url, ca_file));
        tracing::info!(dir = %mgr.cfg.manifest_dir.display(), node = %mgr.cfg.node_name, "pod controller started");
        let gc_stop = Arc::new(AtomicBool::new(false));
        image_gc::spawn(
            &mgr.cfg.image_root,
            &mgr.cfg.pod_root,
            mgr.cfg.image_gc,
            mgr.cfg.image_gc_interval,
            gc_stop.clone(),
        );
        let watch = DirWatch::new(&mgr.cfg.manifest_dir);
        let scan = mgr.scan();
        mgr.adopt_existing(&scan);
        while !shutdown.load(Ordering::Relaxed) {
            let scan = mgr.scan();
            mgr.reconcile(scan);
            let mut slept = Duration::ZERO;
            while slept < mgr.cfg.rescan_interval && !shutdown.load(Ordering::Relaxed) {
                if watch.as_ref().is_some_and(DirWatch::changed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
                slept += Duration::from_millis(20);
            }
        }
        gc_stop.store(true, Ordering::Relaxed);
        tracing::info!("pod controller stopping; pods are left running for the next weftd");
        for (_, w) in std::mem::take(&mut mgr.workers) {
            w.detach();
        }
        // Pods being removed finish their teardown: leaving one half-removed would leak it.
        for w in mgr.stopping.drain(..) {
            w.join();
        }
        Ok(())
    }

    /// [`PodManager::run_blocking`] on a dedicated thread, for the async daemon: returns when
    /// `shutdown` turns true (or its sender is dropped).
    pub async fn run(
        cfg: PodConfig,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), ControllerError> {
        let flag = Arc::new(AtomicBool::new(false));
        let thread_flag = flag.clone();
        let handle = std::thread::Builder::new()
            .name("pod-controller".into())
            .spawn(move || PodManager::run_blocking(cfg, &thread_flag))
            .map_err(|e| ControllerError::Thread(e.to_string()))?;
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        flag.store(true, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || handle.join())
            .await
            .map_err(|e| ControllerError::Thread(e.to_string()))?
            .map_err(|_| ControllerError::Thread("pod controller panicked".into()))?
    }

    /// Takes over the pods found under the pod root: re-adopted when their manifest is still
    /// there unchanged, torn down otherwise.
    fn adopt_existing(&mut self, scan: &ManifestScan) {
        let entries = match std::fs::read_dir(&self.cfg.pod_root) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(dir = %self.cfg.pod_root.display(), error = %e, "list pod root");
                return;
            }
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            let Some(state) = WorkerState::load(&dir) else {
                continue;
            };
            let name = state.full_name();
            let wanted = scan
                .pods
                .get(&name)
                .filter(|d| d.manifest.pod.metadata.uid == state.uid);
            // The manifest URL has not served a valid manifest yet: keep its pod until it does.
            let url_unknown = self
                .url_source
                .as_ref()
                .is_some_and(|u| u.good.is_none() && state.manifest == Path::new(&u.url));
            match wanted {
                Some(d) if !self.workers.contains_key(&name) => {
                    tracing::info!(pod = %name, "re-adopting running pod");
                    let w = PodWorker::spawn(
                        self.cfg.clone(),
                        d.manifest.clone(),
                        d.file.clone(),
                        WorkerMode::Adopt,
                    );
                    self.workers.insert(name, w);
                }
                _ if url_unknown => {
                    tracing::info!(pod = %name, "pod of the manifest URL kept until the URL answers");
                    self.url_kept.push(dir);
                }
                _ => {
                    tracing::info!(pod = %name, dir = %dir.display(), "removing orphaned pod");
                    self.stopping
                        .push(PodWorker::teardown_orphan(self.cfg.clone(), dir));
                }
            }
        }
    }

    /// The manifest directory plus the manifest URL's pod (fetched when due).
    fn scan(&mut self) -> ManifestScan {
        let mut scan = scan_manifests(&self.cfg.manifest_dir, &mut self.cache);
        let Some(src) = self.url_source.as_mut() else {
            return scan;
        };
        src.refresh(
            self.cfg.manifest_url_interval,
            self.cfg.manifest_url_deadline,
        );
        if let Some(e) = &src.error {
            scan.invalid.push(InvalidManifest {
                file: src.url.clone(),
                error: e.clone(),
            });
        }
        let Some(m) = src.good.clone() else {
            return scan;
        };
        // The pods kept since start are judged now that the URL serves a valid manifest.
        for dir in std::mem::take(&mut self.url_kept) {
            if WorkerState::load(&dir).is_some_and(|s| s.uid != m.pod.metadata.uid) {
                tracing::info!(dir = %dir.display(), "manifest URL serves another pod: removing the old one");
                self.stopping
                    .push(PodWorker::teardown_orphan(self.cfg.clone(), dir));
            }
        }
        scan.add(DesiredPod {
            file: PathBuf::from(&src.url),
            manifest: m,
        });
        scan
    }

    fn reconcile(&mut self, scan: ManifestScan) {
        self.stopping.retain(|w| !w.is_finished());
        if self.last_invalid.as_ref() != Some(&scan.invalid) {
            self.write_invalid(&scan.invalid);
            self.last_invalid = Some(scan.invalid.clone());
        }
        let desired: BTreeMap<String, String> = scan
            .pods
            .iter()
            .map(|(n, d)| (n.clone(), d.manifest.pod.metadata.uid.clone()))
            .collect();
        let running: BTreeMap<String, String> = self
            .workers
            .iter()
            .map(|(n, w)| (n.clone(), w.uid().to_string()))
            .collect();
        for change in plan(&desired, &running) {
            match change {
                Change::Stop(name) | Change::Replace(name) => {
                    if let Some(w) = self.workers.remove(&name) {
                        tracing::info!(pod = %name, "manifest removed or changed: stopping pod");
                        w.stop();
                        self.stopping.push(w);
                    }
                }
                Change::Start(_) => {}
            }
        }
        for (name, d) in scan.pods {
            // A replaced pod starts once its predecessor is gone (same name, same log paths),
            // and a pod taking over a removed pod's UID once that pod's directory is gone.
            let uid = &d.manifest.pod.metadata.uid;
            let busy = self
                .stopping
                .iter()
                .any(|w| w.full_name() == name || w.uid() == uid);
            if self.workers.contains_key(&name) || busy {
                continue;
            }
            // A pod kept while its manifest URL was unreachable is taken over, not recreated.
            let m = &d.manifest.pod.metadata;
            let id = match PodId::new(&m.namespace, &m.name, &m.uid) {
                Ok(id) => id,
                Err(e) => {
                    tracing::error!(pod = %name, error = %e, "pod not started");
                    continue;
                }
            };
            let dir = self.cfg.layout().pod_dir(&id);
            let mode = match WorkerState::load(&dir) {
                Some(s) if s.uid == m.uid => WorkerMode::Adopt,
                _ => WorkerMode::Create,
            };
            tracing::info!(pod = %name, file = %d.file.display(), mode = ?mode, "starting pod");
            let w = PodWorker::spawn(self.cfg.clone(), d.manifest, d.file, mode);
            self.workers.insert(name, w);
        }
    }

    fn write_invalid(&self, invalid: &[InvalidManifest]) {
        let path = self.cfg.layout().invalid_manifests();
        let text = serde_json::to_vec_pretty(invalid).unwrap_or_default();
        if let Err(e) = crate::atomic_file::write_atomic(&path, &text, 0o644) {
            tracing::warn!(path = %path.display(), error = %e, "write invalid manifest list");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn a_bad_url_answer_keeps_the_last_good_pod() {
        let mut src = UrlSource::new("http://192.0.2.1/pod.yaml".into(), None);
        src.take(Ok(POD.replace("NAME", "web").into_bytes()));
        let uid = src.good.as_ref().map(|m| m.pod.metadata.uid.clone());
        assert!(uid.is_some());
        assert_eq!(src.error, None);
        src.take(Ok(b"[[[[".to_vec()));
        assert_eq!(src.good.as_ref().map(|m| m.pod.metadata.uid.clone()), uid);
        assert!(src.error.as_ref().is_some_and(|e| e.contains("192.0.2.1")));
        src.take(Err(HttpError::Timeout {
            url: src.url.clone(),
            deadline: Duration::from_secs(1),
        }));
        assert_eq!(src.good.as_ref().map(|m| m.pod.metadata.uid.clone()), uid);
        src.take(Ok(POD.replace("NAME", "db").into_bytes()));
        assert_eq!(src.error, None);
        assert_eq!(
            src.good.map(|m| m.pod.full_name()).as_deref(),
            Some("default/db")
        );
    }

    #[test]
    fn a_second_manifest_with_a_taken_uid_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let with_uid = |name: &str| {
            POD.replace("NAME", name)
                .replace("metadata: {name: ", "metadata: {uid: shared-1, name: ")
        };
        std::fs::write(d.join("a.yaml"), with_uid("first")).unwrap();
        std::fs::write(d.join("b.yaml"), with_uid("second")).unwrap();
        let scan = scan_manifests(d, &mut HashMap::new());
        assert_eq!(scan.pods.keys().collect::<Vec<_>>(), ["default/first"]);
        assert_eq!(
            scan.invalid,
            vec![InvalidManifest {
                file: d.join("b.yaml").display().to_string(),
                error: format!(
                    "manifest {}: field metadata.uid: \"shared-1\" is already the UID of pod default/first defined by {}",
                    d.join("b.yaml").display(),
                    d.join("a.yaml").display()
                ),
            }]
        );
    }

    /// Bytes this thread has read through system calls so far.
    fn thread_read_bytes() -> u64 {
        let io = std::fs::read_to_string("/proc/thread-self/io").unwrap();
        io.lines()
            .find_map(|l| l.strip_prefix("rchar: "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap()
    }

    #[test]
    fn oversize_and_special_files_are_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // 300 MB without the disk space: a sparse file.
        let big = std::fs::File::create(d.join("big.yaml")).unwrap();
        big.set_len(300_000_000).unwrap();
        age(&d.join("big.yaml"));
        nix::unistd::mkfifo(&d.join("fifo.yaml"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::fs::write(d.join("ok.yaml"), POD.replace("NAME", "web")).unwrap();
        let mut cache = HashMap::new();
        let before = thread_read_bytes();
        let scan = scan_manifests(d, &mut cache);
        let read = thread_read_bytes() - before;
        assert!(read < 1 << 20, "{read} bytes read");
        assert_eq!(scan.pods.keys().collect::<Vec<_>>(), ["default/web"]);
        assert_eq!(
            scan.invalid,
            vec![InvalidManifest {
                file: d.join("big.yaml").display().to_string(),
                error: format!(
                    "manifest {}: 300000000 bytes is over the 1048576-byte limit",
                    d.join("big.yaml").display()
                ),
            }]
        );
        // Judged again from its size alone, every scan.
        let before = thread_read_bytes();
        let again = scan_manifests(d, &mut cache);
        assert!(thread_read_bytes() - before < 1 << 20);
        assert_eq!(again.invalid, scan.invalid);
    }

    #[test]
    fn plan_starts_replaces_and_stops() {
        let desired = map(&[("default/a", "1"), ("default/b", "2"), ("default/c", "3")]);
        let running = map(&[("default/b", "2"), ("default/c", "old"), ("default/d", "4")]);
        assert_eq!(
            plan(&desired, &running),
            vec![
                Change::Start("default/a".into()),
                Change::Replace("default/c".into()),
                Change::Stop("default/d".into()),
            ]
        );
        assert!(plan(&desired, &desired).is_empty());
    }

    const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: NAME}\nspec:\n  containers: [{name: c, image: busybox}]\n";

    #[test]
    fn scan_reports_invalid_files_and_duplicate_names() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a.yaml"), POD.replace("NAME", "web")).unwrap();
        std::fs::write(d.join("b.json"), "{\"apiVersion\": \"v1\"").unwrap();
        std::fs::write(d.join("c.yml"), POD.replace("NAME", "web")).unwrap();
        std::fs::write(d.join("d.yaml"), POD.replace("NAME", "db")).unwrap();
        std::fs::write(d.join("notes.txt"), "ignored").unwrap();
        age(&d.join("b.json"));
        let mut cache = ManifestCache::new();
        let scan = scan_manifests(d, &mut cache);
        assert_eq!(
            scan.pods.keys().collect::<Vec<_>>(),
            ["default/db", "default/web"]
        );
        assert_eq!(scan.pods["default/web"].file, d.join("a.yaml"));
        assert_eq!(scan.invalid.len(), 2);
        assert!(scan.invalid[0]
            .error
            .starts_with(&format!("manifest {}", d.join("b.json").display())));
        assert!(
            scan.invalid[1].error.contains("already defined by"),
            "{:?}",
            scan.invalid[1]
        );
        std::fs::remove_file(d.join("a.yaml")).unwrap();
        let scan = scan_manifests(d, &mut cache);
        assert_eq!(scan.pods["default/web"].file, d.join("c.yml"));
        assert_eq!(cache.len(), 3);
    }

    /// Makes a file look written long ago, past the settle time of half-written manifests.
    fn age(file: &Path) {
        let past = std::time::SystemTime::now() - Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(file)
            .and_then(|f| f.set_modified(past))
            .unwrap();
    }

    #[test]
    fn a_manifest_being_written_keeps_the_old_pod_until_it_settles() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("web.yaml");
        std::fs::write(&file, POD.replace("NAME", "web")).unwrap();
        let mut cache = HashMap::new();
        let scan = scan_manifests(dir.path(), &mut cache);
        assert_eq!(scan.pods.keys().collect::<Vec<_>>(), ["default/web"]);
        // Half of a new version, as `cat > web.yaml` leaves it for a moment.
        std::fs::write(&file, "apiVersion: v1\nkind: Pod\nmeta").unwrap();
        let scan = scan_manifests(dir.path(), &mut cache);
        assert_eq!(scan.pods.keys().collect::<Vec<_>>(), ["default/web"]);
        assert!(scan.invalid.is_empty(), "{:?}", scan.invalid);
        // Still broken once settled: reported, and the pod is no longer wanted.
        age(&file);
        let scan = scan_manifests(dir.path(), &mut cache);
        assert!(scan.pods.is_empty());
        assert_eq!(scan.invalid.len(), 1, "{:?}", scan.invalid);
    }
}
