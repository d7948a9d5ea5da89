//! Pod runtime core, upper half: static pod manifests run by the pod controller with real runc,
//! real pause sandboxes and real CNI plugins (the reference `bridge` + `host-local`), inside a
//! node network namespace per test.
//!
//! The controller runs in-process on a thread that entered the node's namespace, so the CNI
//! plugins it spawns build the `cni0` bridge there. Pods are put in a Kubernetes namespace named
//! like the harness's netns (`<pid>-<n>-p`), so their sandbox namespaces
//! (`weft-<pid>-<n>-p_<pod>_<uid>`) are swept by the harness if a test process dies.

mod common;
#[path = "common/image.rs"]
mod image;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{wait_for, Cluster, Netns, VXLAN_CONFIG};
use image::ImageBuilder;
use weft::pod::backoff::BackoffPolicy;
use weft::pod::cli::{self, read_invalid, read_pods};
use weft::pod::controller::{ControllerError, PodConfig, PodManager};
use weft::pod::image::ImageStore;
use weft::pod::status::{self, PodPhase, PodRecord};

const WAIT: Duration = Duration::from_secs(60);

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "pod tests need root (namespaces, mounts, runc)"
    );
}

/// A node namespace with a bridge CNI network, an image store with busybox, and the pod
/// controller on a thread inside the namespace. On drop every manifest is removed and the
/// controller is given time to remove every pod before it stops, so nothing is left behind.
struct PodNode {
    shutdown: Arc<AtomicBool>,
    manager: Option<JoinHandle<Result<(), ControllerError>>>,
    cfg: PodConfig,
    /// The Kubernetes namespace of this test's pods.
    ns: String,
    subnet: String,
    /// The node's network namespace (`ip netns` name).
    netns: String,
    /// Set when this fixture created the namespace (dropped after the pods).
    _own_netns: Option<Netns>,
    /// A real weftd running the pods instead of the in-process controller.
    weftd: Option<std::process::Child>,
    dir: tempfile::TempDir,
}

/// The CNI network of a node.
enum Network {
    /// The reference `bridge` + `host-local` plugins from /usr/lib/cni.
    Bridge,
    /// weft's own plugin, with the node's `subnet.env` written by weftd.
    Weft {
        subnet_file: PathBuf,
        subnet: String,
    },
}

static NODES: AtomicU32 = AtomicU32::new(0);

impl PodNode {
    /// A fresh node namespace with the bridge network.
    fn new() -> PodNode {
        let node = Netns::new("podnode");
        let name = node.name().to_string();
        PodNode::in_netns(&name, Some(node), Network::Bridge)
    }

    /// A fixture in the existing namespace `netns` (kept in `own` when the fixture owns it).
    fn in_netns(netns: &str, own: Option<Netns>, network: Network) -> PodNode {
        require_root();
        // The controller's log, shown by the test runner when a test fails.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("WEFT_TEST_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .try_init();
        let n = NODES.fetch_add(1, Ordering::Relaxed);
        let ns = format!("{}-{n}-p", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix(&format!("weft-{ns}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("create temp dir: {e}"));
        let d = dir.path();
        let images = d.join("images");
        let store = ImageStore::open(&images).unwrap_or_else(|e| panic!("{e}"));
        let archive = d.join("busybox.tar");
        ImageBuilder::busybox()
            .and_then(|b| b.write_oci(&archive))
            .unwrap_or_else(|e| panic!("build busybox image: {e}"));
        store
            .import(&archive, None)
            .unwrap_or_else(|e| panic!("import busybox: {e}"));
        let conf_dir = d.join("net.d");
        std::fs::create_dir_all(&conf_dir).unwrap_or_else(|e| panic!("{e}"));
        let mut bin_dirs = vec![d.join("no-such-bin"), PathBuf::from("/usr/lib/cni")];
        let (subnet, plugin) = match network {
            // Each bridge node of this process gets its own /24 (the namespaces keep them apart anyway).
            Network::Bridge => {
                let subnet = format!("10.244.{}.0/24", 100 + n % 100);
                let plugin = serde_json::json!({
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": true,
                    "ipMasq": false,
                    "ipam": {"type": "host-local", "subnet": subnet, "dataDir": d.join("ipam")},
                });
                (subnet, plugin)
            }
            Network::Weft {
                subnet_file,
                subnet,
            } => {
                let weft = common::bin_path("weft");
                bin_dirs.insert(0, weft.parent().map(Path::to_path_buf).unwrap_or_default());
                let plugin = serde_json::json!({
                    "type": "weft",
                    "subnetFile": subnet_file,
                    "dataDir": d.join("ipam"),
                    "bridge": "cni0",
                    "isDefaultGateway": true,
                });
                (subnet, plugin)
            }
        };
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "podnet",
            "plugins": [plugin],
        });
        std::fs::write(conf_dir.join("10-podnet.conflist"), conflist.to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        let manifests = d.join("manifests");
        std::fs::create_dir_all(&manifests).unwrap_or_else(|e| panic!("{e}"));
        let mut cfg = PodConfig::new(manifests, format!("node-{n}"));
        cfg.cni_conf_dir = conf_dir;
        cfg.cni_bin_dirs = bin_dirs;
        cfg.cni_cache_dir = d.join("cni-cache");
        cfg.pod_root = d.join("pods");
        cfg.image_root = images;
        cfg.pod_log_dir = d.join("logs");
        cfg.host_ip = Some("192.0.2.10".parse().unwrap_or_else(|e| panic!("{e}")));
        cfg.backoff = BackoffPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(4),
            reset_after: Duration::from_secs(60),
        };
        let mut pn = PodNode {
            shutdown: Arc::new(AtomicBool::new(false)),
            manager: None,
            cfg,
            ns,
            subnet,
            netns: netns.to_string(),
            _own_netns: own,
            weftd: None,
            dir,
        };
        pn.start();
        pn
    }

    /// Stops the in-process controller and runs the pods with a real weftd instead, started
    /// with `net_args` (etcd, interface, subnet file) plus the pod flags of this fixture.
    ///
    /// weftd enters only the node's network namespace (nsenter --net): `ip netns exec` would
    /// also give it a mount namespace without cgroup mounts, where runc cannot start containers.
    fn start_weftd(&mut self, net_args: &[String]) {
        self.stop_controller();
        let bin_dirs: Vec<String> = self
            .cfg
            .cni_bin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        let path = |p: &Path| p.display().to_string();
        let mut cmd = std::process::Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.netns))
            .arg(env!("CARGO_BIN_EXE_weftd"))
            .args(net_args)
            .args(["--pod-manifest-path", &path(&self.cfg.manifest_dir)])
            .args(["--cni-conf-dir", &path(&self.cfg.cni_conf_dir)])
            .args(["--cni-bin-dir", &bin_dirs.join(",")])
            .args(["--cni-cache-dir", &path(&self.cfg.cni_cache_dir)])
            .args(["--pod-root", &path(&self.cfg.pod_root)])
            .args(["--image-root", &path(&self.cfg.image_root)])
            .args(["--pod-log-dir", &path(&self.cfg.pod_log_dir)])
            .args(["--node-name", &self.cfg.node_name])
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null());
        self.weftd = Some(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("spawn weftd {cmd:?}: {e}")),
        );
    }

    /// SIGKILL to weftd: no clean-up of any kind runs.
    fn kill_weftd(&mut self) {
        if let Some(mut child) = self.weftd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the controller (as a weftd start would).
    fn start(&mut self) {
        assert!(self.manager.is_none(), "controller already running");
        self.shutdown = Arc::new(AtomicBool::new(false));
        let flag = self.shutdown.clone();
        let cfg = self.cfg.clone();
        let netns = PathBuf::from("/run/netns").join(&self.netns);
        self.manager = Some(std::thread::spawn(move || {
            let file = std::fs::File::open(&netns)
                .unwrap_or_else(|e| panic!("open {}: {e}", netns.display()));
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {}: {e}", netns.display()));
            PodManager::run_blocking(cfg, &flag)
        }));
    }

    /// Stops the controller, leaving the pods running (as when weftd goes away).
    fn stop_controller(&mut self) {
        self.shutdown.store(true, Ordering::Relaxed);
        if let Some(h) = self.manager.take() {
            match h.join() {
                Ok(r) => r.unwrap_or_else(|e| panic!("pod controller: {e}")),
                Err(_) => panic!("pod controller thread panicked"),
            }
        }
    }

    fn manifest_path(&self, file: &str) -> PathBuf {
        self.cfg.manifest_dir.join(file)
    }

    /// Writes a manifest atomically; `NS` in the text is replaced by this test's namespace.
    fn put_manifest(&self, file: &str, text: &str) {
        let tmp = self.cfg.manifest_dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text.replace("NS", &self.ns)).unwrap_or_else(|e| panic!("{e}"));
        std::fs::rename(&tmp, self.manifest_path(file)).unwrap_or_else(|e| panic!("{e}"));
    }

    fn remove_manifest(&self, file: &str) {
        std::fs::remove_file(self.manifest_path(file)).unwrap_or_else(|e| panic!("{e}"));
    }

    fn record(&self, name: &str) -> Option<PodRecord> {
        read_pods(&self.cfg.pod_root)
            .ok()?
            .into_iter()
            .find(|r| r.pod.metadata.name == name && r.pod.metadata.namespace == self.ns)
    }

    fn status(&self, name: &str) -> Option<String> {
        self.record(name).map(|r| status::columns(&r.pod).status)
    }

    /// Waits until the pod's STATUS column reads `want`; returns its record.
    fn wait_status(&self, name: &str, want: &str) -> PodRecord {
        wait_for(WAIT, &format!("pod {name} to show {want}"), || {
            self.record(name)
                .filter(|r| status::columns(&r.pod).status == want)
        })
    }

    /// Runs `args` in the node namespace; returns whether it succeeded.
    fn node_exec(&self, args: &[&str]) -> bool {
        std::process::Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .args(args)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    fn log(&self, rec: &PodRecord, container: &str, restart: u32) -> String {
        let m = &rec.pod.metadata;
        let path = cli::log_path(
            &self.cfg.pod_log_dir,
            &m.namespace,
            &m.name,
            &m.uid,
            container,
            restart,
        );
        weft::pod::crilog::log_text(&std::fs::read_to_string(path).unwrap_or_default())
    }

    fn wait_log(&self, rec: &PodRecord, container: &str, needle: &str) -> String {
        wait_for(
            WAIT,
            &format!("{needle:?} in the log of {container}"),
            || {
                let log = self.log(rec, container, 0);
                log.contains(needle).then_some(log)
            },
        )
    }

    fn table(&self) -> String {
        let pods = read_pods(&self.cfg.pod_root).unwrap_or_else(|e| panic!("{e}"));
        cli::pods_table(&pods, std::time::SystemTime::now())
    }

    /// Sandbox network namespaces of this test's pods.
    fn pod_netns(&self) -> Vec<String> {
        let prefix = format!("weft-{}_", self.ns);
        std::fs::read_dir("/run/netns")
            .map(|e| {
                e.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&prefix))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Mount points under this test's directory.
    fn mounts(&self) -> Vec<String> {
        let root = self.dir.path().display().to_string();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&root))
            .map(str::to_string)
            .collect()
    }

    /// Addresses host-local has handed out.
    fn ipam_allocations(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path().join("ipam/podnet"))
            .map(|e| {
                e.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("10."))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Pod veths: the links enslaved to the node's `cni0` bridge.
    fn veths(&self) -> Vec<String> {
        let out = std::process::Command::new("ip")
            .args(["-j", "-n", &self.netns, "link", "show", "master", "cni0"])
            .output()
            .unwrap_or_else(|e| panic!("ip link in {}: {e}", self.netns));
        let links: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        links
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect()
    }

    fn pod_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.cfg.pod_root)
            .map(|e| {
                e.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Asserts that no trace of any pod remains.
    fn assert_clean(&self) {
        assert_eq!(
            self.pod_dirs(),
            Vec::<PathBuf>::new(),
            "pod directories left"
        );
        assert_eq!(
            self.pod_netns(),
            Vec::<String>::new(),
            "sandbox namespaces left"
        );
        assert_eq!(self.mounts(), Vec::<String>::new(), "mounts left");
        assert_eq!(
            self.ipam_allocations(),
            Vec::<String>::new(),
            "IP allocations left"
        );
        assert_eq!(self.veths(), Vec::<String>::new(), "veths left in the node");
        let cache: Vec<_> = std::fs::read_dir(self.cfg.cni_cache_dir.join("results"))
            .map(|e| e.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert_eq!(cache, Vec::<PathBuf>::new(), "CNI result cache left");
        let logs: Vec<_> = std::fs::read_dir(&self.cfg.pod_log_dir)
            .map(|e| e.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert_eq!(logs, Vec::<PathBuf>::new(), "pod logs left");
        let procs = runc_processes(self.dir.path());
        assert!(procs.is_empty(), "processes of the pods left: {procs:?}");
    }
}

/// Processes (weft-shim, weft-pause, runc, containers) whose command line names `root`.
fn runc_processes(root: &Path) -> Vec<String> {
    let root = root.display().to_string();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        // weftd itself names the directories in its flags; it is not a pod process.
        if cmd.contains(&root) && !cmd.contains("/weftd ") {
            out.push(format!("{}: {cmd}", entry.file_name().to_string_lossy()));
        }
    }
    out
}

impl Drop for PodNode {
    fn drop(&mut self) {
        self.kill_weftd();
        for entry in std::fs::read_dir(&self.cfg.manifest_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_file(entry.path());
        }
        // A controller without the manifest URL removes that source's pod as an orphan too.
        if self.manager.is_some() && self.cfg.manifest_url.is_some() {
            self.shutdown.store(true, Ordering::Relaxed);
            if let Some(h) = self.manager.take() {
                let _ = h.join();
            }
        }
        self.cfg.manifest_url = None;
        if self.manager.is_none() {
            self.start();
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.pod_dirs().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        self.shutdown.store(true, Ordering::Relaxed);
        if let Some(h) = self.manager.take() {
            let _ = h.join();
        }
        // A leak fails the test that caused it; a test already failing keeps its own message.
        if !std::thread::panicking() {
            self.assert_clean();
        }
    }
}

const MYAPP: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: myapp-pod
  namespace: NS
  labels:
    app: myapp
spec:
  terminationGracePeriodSeconds: 2
  containers:
    - name: myapp-container
      image: busybox
      command: ['sh', '-c', 'echo Hello Kubernetes! && sleep 3600']
"#;

#[test]
fn myapp_pod_runs_logs_and_removal_leaves_nothing_behind() {
    let node = PodNode::new();
    node.put_manifest("myapp.yaml", MYAPP);
    let rec = node.wait_status("myapp-pod", "Running");
    assert_eq!(rec.pod.status.phase, PodPhase::Running);
    let ip = rec.pod.status.pod_ip.clone();
    let net: ipnetwork::Ipv4Network = node.subnet.parse().unwrap_or_else(|e| panic!("{e}"));
    let addr: std::net::Ipv4Addr = ip.parse().unwrap_or_else(|e| panic!("pod IP {ip:?}: {e}"));
    assert!(net.contains(addr), "pod IP {ip} outside {net}");
    assert_eq!(rec.pod.status.host_ip, "192.0.2.10");
    assert!(
        rec.pod.status.conditions.iter().all(|c| c.status == "True"),
        "{:?}",
        rec.pod.status.conditions
    );
    let log = node.wait_log(&rec, "myapp-container", "Hello Kubernetes!");
    assert_eq!(log, "Hello Kubernetes!\n");
    // The pod IP answers from the node (the bridge network works).
    assert!(
        node.node_exec(&["ping", "-c", "1", "-W", "2", &ip]),
        "ping {ip}"
    );
    let table = node.table();
    let row = table.lines().nth(1).unwrap_or_default().to_string();
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[0], node.ns, "{table}");
    assert_eq!(&cols[1..5], ["myapp-pod", "1/1", "Running", "0"], "{table}");
    assert_eq!(
        cols[6..],
        [ip.as_str(), node.cfg.node_name.as_str()],
        "{table}"
    );
    let timings = rec.timings;
    let (seen, sb, net_ms, ctr) = (
        timings.seen_ms.unwrap_or(0),
        timings.sandbox_ms.unwrap_or(0),
        timings.network_ms.unwrap_or(0),
        timings.containers_ms.unwrap_or(0),
    );
    assert!(
        seen > 0 && seen <= sb && sb <= net_ms && net_ms <= ctr,
        "{timings:?}"
    );
    assert_eq!(node.pod_netns().len(), 1);
    assert_eq!(node.ipam_allocations(), vec![ip.clone()]);
    assert_eq!(node.veths().len(), 1, "one pod veth on cni0");

    // weftctl reads the same files.
    let weftctl = |args: &[&str]| {
        let root = |p: &Path| p.display().to_string();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_weftctl"))
            .args(args)
            .args(["--pod-root", &root(&node.cfg.pod_root)])
            .args(["--image-root", &root(&node.cfg.image_root)])
            .args(["--pod-log-dir", &root(&node.cfg.pod_log_dir)])
            .output()
            .unwrap_or_else(|e| panic!("weftctl {args:?}: {e}"));
        assert!(out.status.success(), "weftctl {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let pod_ref = format!("{}/myapp-pod", node.ns);
    assert_eq!(weftctl(&["logs", &pod_ref]), "Hello Kubernetes!\n");
    let list: serde_json::Value = serde_json::from_str(&weftctl(&["pods", "-o", "json"]))
        .unwrap_or_else(|e| panic!("weftctl pods -o json: {e}"));
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["items"][0]["metadata"]["name"], "myapp-pod");
    assert_eq!(list["items"][0]["status"]["phase"], "Running");
    assert_eq!(list["items"][0]["status"]["podIP"], ip.as_str());
    assert_eq!(
        list["items"][0]["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
            .as_str()
            .map(|s| s.ends_with('Z')),
        Some(true)
    );
    assert!(weftctl(&["pods"]).contains("myapp-pod"));

    node.remove_manifest("myapp.yaml");
    wait_for(WAIT, "pod directory removed", || {
        node.pod_dirs().is_empty().then_some(())
    });
    node.assert_clean();
    assert!(
        !node.node_exec(&["ping", "-c", "1", "-W", "1", &ip]),
        "removed pod's IP {ip} still answers"
    );
}

#[test]
fn containers_of_a_pod_share_localhost_and_an_empty_dir() {
    let node = PodNode::new();
    node.put_manifest(
        "web.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: NS, labels: {app: web}}
spec:
  terminationGracePeriodSeconds: 2
  volumes:
    - name: logs
      emptyDir: {}
    - name: podinfo
      downwardAPI:
        items:
          - {path: labels, fieldRef: {fieldPath: metadata.labels}}
          - {path: meta/name, fieldRef: {fieldPath: metadata.name}}
  containers:
    - name: server
      image: busybox
      command: ['sh', '-c']
      args:
        - mkdir -p /www && echo pong > /www/index.html && i=0;
          while true; do i=$((i+1)); echo "entry $i" >> /var/log/app/app.log; sleep 0.2; done &
          exec httpd -f -p 8080 -h /www
      volumeMounts: [{name: logs, mountPath: /var/log/app}]
    - name: client
      image: busybox
      command: ['sh', '-c', 'cat /podinfo/labels /podinfo/meta/name; echo; touch /podinfo/x 2>/dev/null || echo read-only; until wget -q -O - http://127.0.0.1:8080/index.html; do sleep 0.2; done; sleep 3600']
      volumeMounts: [{name: podinfo, mountPath: /podinfo}]
    - name: sidecar
      image: busybox
      command: ['sh', '-c', 'until [ -f /logs/app.log ]; do sleep 0.1; done; tail -f /logs/app.log']
      volumeMounts: [{name: logs, mountPath: /logs, readOnly: true}]
"#,
    );
    let rec = node.wait_status("web", "Running");
    let client = node.wait_log(&rec, "client", "pong");
    assert!(
        client.starts_with("app=\"web\"\nweb\nread-only\n"),
        "downwardAPI volume: {client:?}"
    );
    node.wait_log(&rec, "sidecar", "entry 3");
    let rec = wait_for(WAIT, "3/3 ready", || {
        node.record("web")
            .filter(|r| status::columns(&r.pod).ready == "3/3")
    });
    assert!(rec
        .pod
        .status
        .container_statuses
        .iter()
        .all(|s| s.restart_count == 0));
    // The emptyDir is a directory of the pod, removed with it.
    let dir = node.pod_dirs().pop().unwrap_or_default();
    assert!(dir.join("volumes/logs/app.log").is_file());
    node.remove_manifest("web.yaml");
    wait_for(WAIT, "pod removed", || {
        node.pod_dirs().is_empty().then_some(())
    });
    assert!(!dir.exists());
    node.assert_clean();
}

#[test]
fn init_containers_run_in_order_and_show_progress() {
    let node = PodNode::new();
    node.put_manifest(
        "init.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: init-demo, namespace: NS}
spec:
  terminationGracePeriodSeconds: 2
  volumes: [{name: work, emptyDir: {}}]
  initContainers:
    - name: first
      image: busybox
      command: ['sh', '-c', 'sleep 2; echo first > /work/first']
      volumeMounts: [{name: work, mountPath: /work}]
    - name: second
      image: busybox
      command: ['sh', '-c', 'test -f /work/first || exit 7; sleep 2; echo second > /work/second']
      volumeMounts: [{name: work, mountPath: /work}]
  containers:
    - name: app
      image: busybox
      command: ['sh', '-c', 'cat /work/first /work/second; sleep 3600']
      volumeMounts: [{name: work, mountPath: /work}]
"#,
    );
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Some(s) = node.status("init-demo") {
            if seen.last() != Some(&s) {
                seen.push(s.clone());
            }
            if s == "Running" {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let wanted = ["Init:0/2", "Init:1/2", "Running"];
    let order: Vec<&str> = seen
        .iter()
        .map(String::as_str)
        .filter(|s| wanted.contains(s))
        .collect();
    assert_eq!(order, wanted, "statuses seen: {seen:?}");
    let rec = node.wait_status("init-demo", "Running");
    // Running is shown once the container started; its output follows a moment later.
    let log = wait_for(WAIT, "the app's log", || {
        let log = node.log(&rec, "app", 0);
        log.contains("second").then_some(log)
    });
    assert_eq!(log.trim_end(), "first\nsecond");
    let init = &rec.pod.status.init_container_statuses;
    assert_eq!(init.len(), 2);
    for s in init {
        let t = s
            .state
            .terminated
            .as_ref()
            .unwrap_or_else(|| panic!("{s:?}"));
        assert_eq!((t.exit_code, t.reason.as_str()), (0, "Completed"));
        assert_eq!(s.restart_count, 0);
    }
    let init_cond = rec
        .pod
        .status
        .conditions
        .iter()
        .find(|c| c.kind == "Initialized");
    assert_eq!(init_cond.map(|c| c.status.as_str()), Some("True"));
}

/// When run `restart` of a pod's container `c` started, in seconds since the epoch: the
/// timestamp of the first line it logged (CRI logs carry nanoseconds; the container logs at once).
fn run_started(node: &PodNode, rec: &PodRecord, restart: u32) -> f64 {
    let m = &rec.pod.metadata;
    let path = cli::log_path(
        &node.cfg.pod_log_dir,
        &m.namespace,
        &m.name,
        &m.uid,
        "c",
        restart,
    );
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("log of run {restart}: {}: {e}", path.display()));
    let stamp = text
        .lines()
        .next()
        .and_then(weft::pod::crilog::parse_record)
        .map(|r| r.timestamp.to_string())
        .unwrap_or_else(|| panic!("no log record in {}: {text:?}", path.display()));
    let whole = status::parse_rfc3339(&stamp)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .unwrap_or_else(|| panic!("bad timestamp {stamp:?} in {}", path.display()));
    let fraction: f64 = stamp
        .split_once('.')
        .and_then(|(_, f)| format!("0.{}", f.trim_end_matches('Z')).parse().ok())
        .unwrap_or(0.0);
    whole.as_secs() as f64 + fraction
}

fn exit_pod(name: &str, policy: &str, code: i32) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: NS}}\nspec:\n  restartPolicy: {policy}\n  terminationGracePeriodSeconds: 1\n  containers:\n    - name: c\n      image: busybox\n      command: ['sh', '-c', 'echo run; exit {code}']\n"
    )
}

#[test]
fn restart_policies_with_exit_codes_and_back_off() {
    let node = PodNode::new();
    let cases = [
        ("always-0", "Always", 0),
        ("always-1", "Always", 1),
        ("onfailure-0", "OnFailure", 0),
        ("onfailure-1", "OnFailure", 1),
        ("never-0", "Never", 0),
        ("never-1", "Never", 1),
    ];
    for (name, policy, code) in cases {
        node.put_manifest(&format!("{name}.yaml"), &exit_pod(name, policy, code));
    }
    // Pods that never restart settle in their final phase.
    let done = |name: &str, phase: PodPhase, shown: &str| {
        let rec = wait_for(WAIT, &format!("{name} {phase:?}"), || {
            node.record(name).filter(|r| r.pod.status.phase == phase)
        });
        assert_eq!(status::columns(&rec.pod).status, shown, "{name}");
        rec
    };
    done("onfailure-0", PodPhase::Succeeded, "Completed");
    done("never-0", PodPhase::Succeeded, "Completed");
    let failed = done("never-1", PodPhase::Failed, "Error");
    let term = failed.pod.status.container_statuses[0]
        .state
        .terminated
        .clone();
    assert_eq!(
        term.map(|t| (t.exit_code, t.reason)),
        Some((1, "Error".to_string()))
    );

    // Finished pods keep their status but give back their sandbox and pod IP.
    wait_for(WAIT, "finished pods' sandboxes released", || {
        (node.pod_netns().len() == 3 && node.ipam_allocations().len() == 3).then_some(())
    });
    assert_eq!(node.pod_dirs().len(), 6);
    // Back-off: base 1 s doubling to the 4 s cap, measured between the runs' own start times
    // (each run exits at once, so a gap is its back-off plus the start of a container).
    let rec = wait_for(WAIT, "always-1 restarted 4 times", || {
        node.record("always-1")
            .filter(|r| r.pod.status.container_statuses[0].restart_count >= 4)
    });
    let starts: Vec<f64> = (0..5).map(|run| run_started(&node, &rec, run)).collect();
    let gaps: Vec<f64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, want) in gaps.iter().zip([1.0, 2.0, 4.0, 4.0]) {
        assert!(
            *gap >= want && *gap < want + 2.5,
            "gaps between runs {gaps:?}: expected back-offs of 1, 2, 4, 4 s"
        );
    }
    for name in ["always-0", "always-1", "onfailure-1"] {
        let rec = node
            .record(name)
            .unwrap_or_else(|| panic!("{name} has no status"));
        let s = &rec.pod.status.container_statuses[0];
        assert!(s.restart_count >= 3, "{name}: {s:?}");
        assert_eq!(rec.pod.status.phase, PodPhase::Running, "{name}");
        let last = s.last_state.terminated.as_ref().map(|t| t.exit_code);
        assert_eq!(
            last,
            Some(if name == "always-0" { 0 } else { 1 }),
            "{name}: {s:?}"
        );
        // Every run logged its own file.
        assert_eq!(node.log(&rec, "c", s.restart_count - 1), "run\n", "{name}");
    }
    for name in ["onfailure-0", "never-0", "never-1"] {
        let rec = node
            .record(name)
            .unwrap_or_else(|| panic!("{name} has no status"));
        assert_eq!(
            rec.pod.status.container_statuses[0].restart_count, 0,
            "{name}"
        );
    }
    let shown: BTreeSet<String> = ["always-0", "always-1"]
        .iter()
        .filter_map(|n| node.status(n))
        .collect();
    assert!(
        shown
            .iter()
            .all(|s| ["CrashLoopBackOff", "Running", "Completed", "Error"].contains(&s.as_str())),
        "{shown:?}"
    );
}

#[test]
fn invalid_manifest_is_reported_and_other_pods_keep_running() {
    let node = PodNode::new();
    node.put_manifest("good.yaml", MYAPP);
    let before = node.wait_status("myapp-pod", "Running");
    let id = before.pod.status.container_statuses[0].container_id.clone();
    node.put_manifest(
        "bad.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: bad, namespace: NS}\nspec:\n  containers:\n    - name: c\n      image: \"\"\n",
    );
    node.put_manifest("broken.json", "{\"apiVersion\": \"v1\", \"kind\": ");
    let invalid = wait_for(WAIT, "invalid manifests listed", || {
        let list = read_invalid(&node.cfg.pod_root);
        (list.len() == 2).then_some(list)
    });
    let bad = node.manifest_path("bad.yaml").display().to_string();
    assert_eq!(invalid[0].file, bad);
    assert_eq!(
        invalid[0].error,
        format!("manifest {bad}: field spec.containers[0].image: required")
    );
    assert!(invalid[1].error.starts_with(&format!(
        "manifest {}",
        node.manifest_path("broken.json").display()
    )));
    std::thread::sleep(Duration::from_secs(2));
    let after = node
        .record("myapp-pod")
        .unwrap_or_else(|| panic!("myapp-pod gone"));
    assert_eq!(status::columns(&after.pod).status, "Running");
    assert_eq!(after.pod.status.container_statuses[0].container_id, id);
    assert_eq!(after.pod.status.container_statuses[0].restart_count, 0);
    assert!(node.record("bad").is_none());
    // An image that was never imported: the pod waits, as kubelet's ErrImageNeverPull.
    node.put_manifest(
        "noimage.yaml",
        &MYAPP
            .replace("myapp-pod", "noimage")
            .replace("image: busybox", "image: not-imported:1.0"),
    );
    let waiting = node.wait_status("noimage", "ErrImageNeverPull");
    let w = waiting.pod.status.container_statuses[0]
        .state
        .waiting
        .clone();
    assert!(
        w.is_some_and(|w| w.message.contains("not-imported")),
        "{:?}",
        waiting.pod.status
    );
    assert_eq!(waiting.pod.status.phase, PodPhase::Pending);
    node.remove_manifest("noimage.yaml");

    // Fixing the file starts the pod; changing the good one restarts it under a new UID.
    node.put_manifest("bad.yaml", &MYAPP.replace("myapp-pod", "bad"));
    node.wait_status("bad", "Running");
    wait_for(WAIT, "fixed manifest dropped from the invalid list", || {
        (read_invalid(&node.cfg.pod_root).len() == 1).then_some(())
    });
    node.put_manifest("good.yaml", &MYAPP.replace("sleep 3600", "sleep 3601"));
    let changed = wait_for(WAIT, "myapp-pod replaced", || {
        node.record("myapp-pod")
            .filter(|r| r.pod.metadata.uid != before.pod.metadata.uid)
            .filter(|r| status::columns(&r.pod).status == "Running")
    });
    assert_ne!(changed.pod.status.container_statuses[0].container_id, id);
    wait_for(WAIT, "the old pod's and noimage's directories gone", || {
        (node.pod_dirs().len() == 2).then_some(())
    });
}

#[test]
fn restarted_controller_adopts_running_pods_and_removes_orphans() {
    let mut node = PodNode::new();
    node.put_manifest("myapp.yaml", MYAPP);
    node.put_manifest("other.yaml", &MYAPP.replace("myapp-pod", "other"));
    let before = node.wait_status("myapp-pod", "Running");
    node.wait_status("other", "Running");
    node.put_manifest("done.yaml", &exit_pod("done", "Never", 0));
    let done = node.wait_status("done", "Completed");
    wait_for(WAIT, "done's sandbox released", || {
        (node.pod_netns().len() == 2).then_some(())
    });
    node.stop_controller();
    let pause_pids = |n: &PodNode| -> BTreeSet<String> {
        n.pod_netns().iter().map(|ns| common_pids(ns)).collect()
    };
    let pids_before = pause_pids(&node);
    assert_eq!(pids_before.len(), 2);
    // While weftd is down, one manifest goes away.
    node.remove_manifest("other.yaml");
    node.start();
    wait_for(WAIT, "orphan removed", || {
        (node.pod_dirs().len() == 2).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let after = node.wait_status("myapp-pod", "Running");
    let (b, a) = (
        &before.pod.status.container_statuses[0],
        &after.pod.status.container_statuses[0],
    );
    assert_eq!(a.container_id, b.container_id, "container was restarted");
    assert_eq!(a.restart_count, 0);
    assert_eq!(a.state.running, b.state.running);
    assert_eq!(after.pod.status.pod_ip, before.pod.status.pod_ip);
    assert_eq!(after.pod.metadata.uid, before.pod.metadata.uid);
    assert_eq!(node.pod_netns().len(), 1, "one sandbox, no duplicate");
    let done_after = node.wait_status("done", "Completed");
    assert_eq!(
        done_after.pod.status.container_statuses[0].container_id,
        done.pod.status.container_statuses[0].container_id,
        "a finished pod was run again"
    );
    assert_eq!(done_after.pod.status.phase, PodPhase::Succeeded);
    assert!(
        pids_before.contains(&common_pids(&node.pod_netns()[0])),
        "sandbox was recreated"
    );
    assert_eq!(
        node.ipam_allocations(),
        vec![after.pod.status.pod_ip.clone()]
    );
    node.remove_manifest("myapp.yaml");
    node.remove_manifest("done.yaml");
    wait_for(WAIT, "pod removed", || {
        node.pod_dirs().is_empty().then_some(())
    });
    node.assert_clean();
}

/// `ip netns pids NAME` as one string (the pause process and the containers).
fn common_pids(netns: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", netns])
        .output()
        .unwrap_or_else(|e| panic!("ip netns pids {netns}: {e}"));
    let mut pids: Vec<&str> = std::str::from_utf8(&out.stdout)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    pids.sort();
    pids.join(",")
}

#[test]
fn pods_on_two_nodes_reach_each_other_over_the_overlay() {
    require_root();
    let cluster = Cluster::new(2, VXLAN_CONFIG);
    cluster.start();
    cluster.wait_mesh(WAIT);
    let nodes: Vec<PodNode> = (0..2)
        .map(|i| {
            let n = cluster.node(i);
            let subnet = n
                .subnet()
                .unwrap_or_else(|| panic!("node {i} has no subnet"));
            PodNode::in_netns(
                n.netns().name(),
                None,
                Network::Weft {
                    subnet_file: n.subnet_file(),
                    subnet,
                },
            )
        })
        .collect();
    nodes[1].put_manifest(
        "server.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: NS}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: httpd
      image: busybox
      command: ['sh', '-c', 'mkdir -p /www && echo "hello from $(hostname)" > /www/index.html && exec httpd -f -p 8080 -h /www']
"#,
    );
    let server = nodes[1].wait_status("server", "Running");
    let server_ip = server.pod.status.pod_ip.clone();
    let net: ipnetwork::Ipv4Network = nodes[1].subnet.parse().unwrap_or_else(|e| panic!("{e}"));
    let addr: std::net::Ipv4Addr = server_ip
        .parse()
        .unwrap_or_else(|e| panic!("{server_ip:?}: {e}"));
    assert!(
        net.contains(addr),
        "server IP {server_ip} outside node 1's subnet {net}"
    );
    nodes[0].put_manifest(
        "client.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: NS}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: wget
      image: busybox
      env:
        - {{name: MY_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
      command: ['sh', '-c', 'echo "client $MY_IP"; until wget -q -O - http://{server_ip}:8080/; do sleep 0.5; done; sleep 3600']
"#
        ),
    );
    let client = nodes[0].wait_status("client", "Running");
    let client_ip = client.pod.status.pod_ip.clone();
    let log = nodes[0].wait_log(&client, "wget", "hello from server");
    assert!(log.starts_with(&format!("client {client_ip}\n")), "{log}");
    let client_net: ipnetwork::Ipv4Network =
        nodes[0].subnet.parse().unwrap_or_else(|e| panic!("{e}"));
    let caddr: std::net::Ipv4Addr = client_ip
        .parse()
        .unwrap_or_else(|e| panic!("{client_ip:?}: {e}"));
    assert!(
        client_net.contains(caddr),
        "client IP {client_ip} outside {client_net}"
    );
    drop(nodes);
}

#[test]
fn probes_gate_readiness_and_restart_a_dead_container() {
    let node = PodNode::new();
    node.put_manifest(
        "probed.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: probed, namespace: NS}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: web
      image: busybox
      command: ['sh', '-c']
      args:
        - sleep 3; touch /tmp/alive; mkdir -p /www;
          (sleep 3; echo ok > /www/ready.html; sleep 4; rm /tmp/alive) &
          exec httpd -f -p 8080 -h /www
      ports: [{name: http, containerPort: 8080}]
      startupProbe: {tcpSocket: {port: http}, periodSeconds: 1, failureThreshold: 30}
      readinessProbe: {httpGet: {path: /ready.html, port: 8080}, periodSeconds: 1}
      livenessProbe: {exec: {command: [cat, /tmp/alive]}, periodSeconds: 1, failureThreshold: 2}
"#,
    );
    let running = node.wait_status("probed", "Running");
    let first = &running.pod.status.container_statuses[0];
    assert_eq!(first.restart_count, 0);
    assert!(
        !first.started && !first.ready,
        "started or ready before the startup probe passed: {first:?}"
    );
    // For its first 3 s the container has neither its port nor /tmp/alive: the liveness probe
    // would kill it, were it not held off until the startup probe passes.
    let started = wait_for(WAIT, "startup probe to pass", || {
        node.record("probed")
            .filter(|r| r.pod.status.container_statuses[0].started)
    });
    let s = &started.pod.status.container_statuses[0];
    assert_eq!(s.restart_count, 0, "liveness ran before startup: {s:?}");
    let ready = wait_for(WAIT, "readiness probe to pass (or a restart)", || {
        node.record("probed").filter(|r| {
            status::columns(&r.pod).ready == "1/1"
                || r.pod.status.container_statuses[0].restart_count > 0
        })
    });
    let s = &ready.pod.status.container_statuses[0];
    assert!(
        s.started && s.ready && s.restart_count == 0,
        "restarted before it was ready (liveness not held off by the startup probe?): {s:?}"
    );
    let ready_cond = ready
        .pod
        .status
        .conditions
        .iter()
        .find(|c| c.kind == "Ready");
    assert_eq!(ready_cond.map(|c| c.status.as_str()), Some("True"));
    // /tmp/alive goes away: the liveness probe fails twice and the container is restarted.
    let restarted = wait_for(WAIT, "liveness restart", || {
        node.record("probed")
            .filter(|r| r.pod.status.container_statuses[0].restart_count >= 1)
    });
    let s = &restarted.pod.status.container_statuses[0];
    let last = s.last_state.terminated.as_ref().map(|t| t.exit_code);
    assert!(
        matches!(last, Some(c) if c != 0),
        "killed run's exit: {s:?}"
    );
}

#[test]
fn weftd_killed_and_restarted_readopts_a_running_pod() {
    require_root();
    let cluster = Cluster::new(1, VXLAN_CONFIG);
    let n = cluster.node(0);
    let mut node = PodNode::in_netns(
        n.netns().name(),
        None,
        Network::Weft {
            subnet_file: n.subnet_file(),
            subnet: String::new(),
        },
    );
    node.start_weftd(&n.base_args());
    n.wait_subnet_env(WAIT);
    node.put_manifest("myapp.yaml", MYAPP);
    let before = node.wait_status("myapp-pod", "Running");
    let pids = common_pids(&node.pod_netns()[0]);
    assert!(pids.contains(','), "pause and container in the pod: {pids}");

    node.kill_weftd();
    // The pod runs on without weftd.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(common_pids(&node.pod_netns()[0]), pids);

    // What follows must be the new weftd's view: the status the killed one wrote does not count.
    let status_file = node.pod_dirs()[0].join(status::STATUS_FILE);
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let killed_wrote = modified(&status_file);
    let restarted_at = std::time::SystemTime::now();
    node.start_weftd(&n.base_args());
    wait_for(WAIT, "a status.json written by the new weftd", || {
        modified(&status_file).filter(|m| *m > restarted_at && Some(*m) != killed_wrote)
    });
    // Were the adoption wrong, the pod would now be restarted or duplicated: give it time to show.
    std::thread::sleep(Duration::from_secs(2));
    let after = node.wait_status("myapp-pod", "Running");
    let (b, a) = (
        &before.pod.status.container_statuses[0],
        &after.pod.status.container_statuses[0],
    );
    assert_eq!(a.container_id, b.container_id, "container was restarted");
    assert_eq!(a.restart_count, 0);
    assert_eq!(after.pod.status.pod_ip, before.pod.status.pod_ip);
    assert_eq!(node.pod_netns().len(), 1, "one sandbox, no duplicate");
    assert_eq!(
        common_pids(&node.pod_netns()[0]),
        pids,
        "pod processes changed"
    );
    assert_eq!(
        node.ipam_allocations(),
        vec![after.pod.status.pod_ip.clone()]
    );
    node.remove_manifest("myapp.yaml");
    wait_for(WAIT, "pod removed by weftd", || {
        node.pod_dirs().is_empty().then_some(())
    });
    node.assert_clean();
    node.kill_weftd();
}

/// Serves `body` (404 while `None`) at `http://127.0.0.1:<port>/pod.yaml` inside `netns`.
struct ManifestServer {
    body: Arc<std::sync::Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
    port: u16,
    thread: Option<JoinHandle<()>>,
}

impl ManifestServer {
    fn start(netns: &str) -> ManifestServer {
        use std::io::{Read, Write};
        let body: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let path = PathBuf::from("/run/netns").join(netns);
        let (b, st) = (body.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{e}"));
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns: {e}"));
            let listener =
                std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
            listener
                .set_nonblocking(true)
                .unwrap_or_else(|e| panic!("{e}"));
            let _ = tx.send(listener.local_addr().map(|a| a.port()).unwrap_or(0));
            while !st.load(Ordering::Relaxed) {
                let Ok((mut s, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = s.set_nonblocking(false);
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf);
                let answer = match b.lock().map(|g| g.clone()).unwrap_or(None) {
                    Some(text) => format!("HTTP/1.0 200 OK\r\n\r\n{text}"),
                    None => "HTTP/1.0 404 Not Found\r\n\r\n".to_string(),
                };
                let _ = s.write_all(answer.as_bytes());
            }
        });
        let port = rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|e| panic!("manifest server: {e}"));
        ManifestServer {
            body,
            stop,
            port,
            thread: Some(thread),
        }
    }

    fn serve(&self, text: Option<String>) {
        if let Ok(mut g) = self.body.lock() {
            *g = text;
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/pod.yaml", self.port)
    }
}

impl Drop for ManifestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_manifest_url_runs_its_pod_and_keeps_it_while_unreachable() {
    let mut node = PodNode::new();
    let server = ManifestServer::start(&node.netns);
    let ns = node.ns.clone();
    let text = |cmd: &str| {
        Some(
            MYAPP
                .replace("myapp-pod", "from-url")
                .replace("sleep 3600", cmd)
                .replace("NS", &ns),
        )
    };
    server.serve(text("sleep 3600"));
    node.stop_controller();
    node.cfg.manifest_url = Some(server.url());
    node.cfg.manifest_url_interval = Duration::from_secs(1);
    node.start();
    let first = node.wait_status("from-url", "Running");
    assert_eq!(first.manifest, server.url());
    node.wait_log(&first, "myapp-container", "Hello Kubernetes!");

    // The server answers 404: the pod stays.
    server.serve(None);
    std::thread::sleep(Duration::from_secs(3));
    let kept = node
        .record("from-url")
        .unwrap_or_else(|| panic!("URL pod removed"));
    assert_eq!(kept.pod.metadata.uid, first.pod.metadata.uid);
    assert_eq!(status::columns(&kept.pod).status, "Running");

    // New content replaces the pod.
    server.serve(text("sleep 3601"));
    wait_for(WAIT, "URL pod replaced", || {
        node.record("from-url")
            .filter(|r| r.pod.metadata.uid != first.pod.metadata.uid)
            .filter(|r| status::columns(&r.pod).status == "Running")
    });
    // An invalid answer is reported and its pod stopped.
    server.serve(Some("apiVersion: v1\nkind: Pod\nspec: {}\n".to_string()));
    wait_for(WAIT, "URL pod removed", || {
        node.pod_dirs().is_empty().then_some(())
    });
    let invalid = read_invalid(&node.cfg.pod_root);
    assert_eq!(invalid.len(), 1, "{invalid:?}");
    assert_eq!(invalid[0].file, server.url());
    assert!(
        invalid[0].error.contains("missing field `metadata`"),
        "{invalid:?}"
    );
    node.assert_clean();
}

/// `--manifest-url` given to a real weftd: the pod it serves runs, recorded as coming from the URL.
#[test]
fn manifest_url_flag_runs_its_pod_through_weftd() {
    require_root();
    let cluster = Cluster::new(1, VXLAN_CONFIG);
    let n = cluster.node(0);
    let mut node = PodNode::in_netns(
        n.netns().name(),
        None,
        Network::Weft {
            subnet_file: n.subnet_file(),
            subnet: String::new(),
        },
    );
    let server = ManifestServer::start(&node.netns);
    server.serve(Some(
        MYAPP
            .replace("myapp-pod", "from-url-flag")
            .replace("NS", &node.ns),
    ));
    let mut args = n.base_args();
    args.extend(["--manifest-url".to_string(), server.url()]);
    node.start_weftd(&args);
    let rec = node.wait_status("from-url-flag", "Running");
    assert_eq!(rec.manifest, server.url());
    node.wait_log(&rec, "myapp-container", "Hello Kubernetes!");
    node.kill_weftd();
}
