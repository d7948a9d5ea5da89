//! The pod worker's executor driven through its seams with stand-ins that log each call: the
//! sandboxes, the pod network and the container runtime. No root, no runc, no CNI plugin; the
//! pod's files go to a temporary directory. The image store is real and empty, so a container
//! start ends at `ErrImageNeverPull` before it would reach the runtime.

use std::io;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

use serde_json::{json, Value};

use super::*;
use crate::pod::bundle::ContainerSpec;
use crate::pod::cni::{CniError, CniResult, NetworkList};
use crate::pod::manifest::parse_manifest;
use crate::pod::process::ProcessId;
use crate::pod::runtime::RuntimeError;
use crate::pod::sandbox::{SandboxError, SandboxState};
use crate::pod::security::HostNamespaces;

const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, uid: u-1}\nspec:\n  containers: [{name: app, image: busybox}]\n";

/// Every call the executor made through a seam, in order.
#[derive(Debug, Clone, Default)]
struct Calls(Arc<Mutex<Vec<String>>>);

impl Calls {
    fn push(&self, call: impl Into<String>) {
        self.0.lock().unwrap().push(call.into());
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// Sandboxes that exist only in memory; `alive` says whether the current one still runs,
/// `fail_next` makes the next creation fail.
#[derive(Debug, Clone, Default)]
struct FakeSandboxes {
    calls: Calls,
    alive: Arc<AtomicBool>,
    fail_next: Arc<AtomicBool>,
}

impl SandboxRuntime for FakeSandboxes {
    fn create(
        &self,
        pod_id: &str,
        hostname: &str,
        pod_dir: &Path,
        host: HostNamespaces,
    ) -> Result<Sandbox, SandboxError> {
        self.calls.push("sandbox create");
        if self.fail_next.swap(false, Ordering::Relaxed) {
            return Err(SandboxError::Io {
                pod: pod_id.to_string(),
                op: "create",
                path: pod_dir.to_path_buf(),
                source: io::Error::other("no space left"),
            });
        }
        self.alive.store(true, Ordering::Relaxed);
        let pause = ProcessId::of(std::process::id() as i32).ok_or(SandboxError::Io {
            pod: pod_id.to_string(),
            op: "read own /proc entry",
            path: pod_dir.to_path_buf(),
            source: io::Error::other("gone"),
        })?;
        Ok(Sandbox::adopt(SandboxState {
            pod_id: pod_id.to_string(),
            hostname: hostname.to_string(),
            netns_name: "weft-fake".to_string(),
            pause,
            pod_dir: pod_dir.to_path_buf(),
            host,
        }))
    }

    fn is_running(&self, _sandbox: &Sandbox) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    fn stop(&self, _sandbox: &Sandbox, _grace: Duration) -> Result<(), SandboxError> {
        self.calls.push("sandbox stop");
        self.alive.store(false, Ordering::Relaxed);
        Ok(())
    }
}

/// A pod network that hands out 10.244.1.5 and caches nothing.
#[derive(Debug, Clone, Default)]
struct FakeNetwork {
    calls: Calls,
}

impl PodNetwork for FakeNetwork {
    fn add(&self, list: &NetworkList, att: &Attachment) -> Result<CniResult, CniError> {
        self.calls
            .push(format!("cni ADD {} {}", list.name, att.container_id));
        Ok(CniResult {
            raw: json!({"cniVersion": "1.0.0", "ips": [{"address": "10.244.1.5/24"}]}),
        })
    }

    fn cached(&self, _network: &str, _att: &Attachment) -> Option<(NetworkList, Value)> {
        None
    }

    fn del(&self, list: &NetworkList, att: &Attachment) -> Result<(), CniError> {
        self.calls
            .push(format!("cni DEL {} {}", list.name, att.container_id));
        Ok(())
    }
}

/// A runtime that refuses to start anything (no test here gets that far).
#[derive(Debug, Clone, Default)]
struct FakeRuntime {
    calls: Calls,
}

impl FakeRuntime {
    fn refuse(id: &str) -> RuntimeError {
        RuntimeError::Io {
            id: id.to_string(),
            op: "start",
            path: PathBuf::new(),
            source: io::Error::other("not in this test"),
        }
    }
}

impl ContainerRuntime for FakeRuntime {
    fn start(
        &self,
        spec: &ContainerSpec,
        _sandbox: &Sandbox,
    ) -> Result<ContainerHandle, RuntimeError> {
        self.calls.push(format!("runtime start {}", spec.id));
        Err(Self::refuse(&spec.id))
    }

    fn adopt(&self, id: &str) -> Result<ContainerHandle, RuntimeError> {
        Err(Self::refuse(id))
    }

    fn stop(&self, id: &str, _grace: Duration) -> Result<ExitStatus, RuntimeError> {
        self.calls.push(format!("runtime stop {id}"));
        Err(Self::refuse(id))
    }

    fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        self.calls.push(format!("runtime delete {id}"));
        Ok(())
    }
}

/// A worker for the pod `web` on stand-ins that share one call log, its files under `dir`.
fn worker(dir: &Path) -> (PodRun, Calls, FakeSandboxes) {
    let mut cfg = PodConfig::new(dir.join("manifests"), "node-1".into());
    cfg.pod_root = dir.join("pods");
    cfg.pod_log_dir = dir.join("logs");
    cfg.image_root = dir.join("images");
    cfg.cni_cache_dir = dir.join("cni-cache");
    cfg.cni_conf_dir = dir.join("net.d");
    std::fs::create_dir_all(&cfg.cni_conf_dir).unwrap();
    std::fs::write(
        cfg.cni_conf_dir.join("10-weft.conflist"),
        r#"{"cniVersion":"1.0.0","name":"weft","plugins":[{"type":"weft"}]}"#,
    )
    .unwrap();
    let manifest = parse_manifest(Path::new("web.yaml"), POD.as_bytes()).unwrap();
    let signal = Arc::new(AtomicU8::new(0));
    let mut run = PodRun::new(Arc::new(cfg), manifest, "web.yaml".into(), signal).unwrap();
    let calls = Calls::default();
    let sandboxes = FakeSandboxes {
        calls: calls.clone(),
        ..FakeSandboxes::default()
    };
    run.sandboxes = Box::new(sandboxes.clone());
    run.cni = Box::new(FakeNetwork {
        calls: calls.clone(),
    });
    run.runtime = Box::new(FakeRuntime {
        calls: calls.clone(),
    });
    run.create_dir().unwrap();
    (run, calls, sandboxes)
}

fn app_waiting_reason(run: &PodRun) -> String {
    run.record.pod.status.container_statuses[0]
        .state
        .waiting
        .as_ref()
        .map(|w| w.reason.clone())
        .unwrap_or_default()
}

#[test]
fn a_new_pod_gets_its_sandbox_then_its_network_then_its_containers() {
    let dir = tempfile::tempdir().unwrap();
    let (mut run, calls, _) = worker(dir.path());
    run.step();
    let att = run.id.dir_name();
    assert_eq!(
        calls.take(),
        ["sandbox create".to_string(), format!("cni ADD weft {att}")]
    );
    assert_eq!(run.pod_ip, Some("10.244.1.5".parse().unwrap()));
    assert_eq!(run.state.network.as_deref(), Some("weft"));
    // The image store holds no busybox: the start stops there, with kubelet's reason.
    assert_eq!(app_waiting_reason(&run), "ErrImageNeverPull");
}

#[test]
fn a_lost_sandbox_releases_the_network_and_is_made_again() {
    let dir = tempfile::tempdir().unwrap();
    let (mut run, calls, sandboxes) = worker(dir.path());
    run.step();
    calls.take();
    // The pause process died: its namespaces went with it.
    sandboxes.alive.store(false, Ordering::Relaxed);
    run.step();
    run.step();
    let att = run.id.dir_name();
    assert_eq!(
        calls.take(),
        [
            format!("cni DEL weft {att}"),
            "sandbox stop".to_string(),
            "sandbox create".to_string(),
            format!("cni ADD weft {att}"),
        ]
    );
    assert!(run.attached);
    assert!(run.record.pod.status.message.is_empty());
}

#[test]
fn a_failed_sandbox_is_retried_after_the_pod_back_off_not_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut run, calls, sandboxes) = worker(dir.path());
    sandboxes.fail_next.store(true, Ordering::Relaxed);
    run.step();
    run.step();
    assert_eq!(calls.take(), ["sandbox create"]);
    assert!(
        run.record.pod.status.message.contains("no space left"),
        "{}",
        run.record.pod.status.message
    );
    assert!(run.retry_at.is_some_and(|t| t > SystemTime::now()));
    // Once the back-off has passed, the next tick tries again and goes on.
    run.retry_at = Some(SystemTime::now());
    run.step();
    let att = run.id.dir_name();
    assert_eq!(
        calls.take(),
        ["sandbox create".to_string(), format!("cni ADD weft {att}")]
    );
}
