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
use weft::pod::config::PodConfig;
use weft::pod::controller::{ControllerError, PodManager};
use weft::pod::image::ImageStore;
use weft::pod::layout::PodId;
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
            .args(
                self.cfg
                    .manifest_url
                    .iter()
                    .flat_map(|u| ["--manifest-url", u.as_str()]),
            )
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null());
        // Appended, so a restarted weftd's log follows its predecessor's.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.weftd_log_path())
            .unwrap_or_else(|e| panic!("open weftd log: {e}"));
        cmd.stderr(log);
        self.weftd = Some(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("spawn weftd {cmd:?}: {e}")),
        );
    }

    fn weftd_log_path(&self) -> PathBuf {
        self.dir.path().join("weftd.log")
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
        let pod = PodId::new(&m.namespace, &m.name, &m.uid).unwrap_or_else(|e| panic!("{e}"));
        let path = self
            .cfg
            .layout()
            .container_log(&pod, container, restart)
            .unwrap_or_else(|e| panic!("{e}"));
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
    // The documented example is what runs here (MYAPP is the same pod for the other tests).
    node.put_manifest("myapp.yaml", &example("myapp-pod.yaml"));
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
          - {path: mem, resourceFieldRef: {containerName: server, resource: limits.memory, divisor: 1Mi}}
  containers:
    - name: server
      image: busybox
      resources: {limits: {memory: 64Mi}}
      command: ['sh', '-c']
      args:
        - mkdir -p /www && echo pong > /www/index.html && i=0;
          while true; do i=$((i+1)); echo "entry $i" >> /var/log/app/app.log; sleep 0.2; done &
          exec httpd -f -p 8080 -h /www
      volumeMounts: [{name: logs, mountPath: /var/log/app}]
    - name: client
      image: busybox
      command: ['sh', '-c', 'cat /podinfo/labels /podinfo/meta/name; echo; cat /podinfo/mem; echo; touch /podinfo/x 2>/dev/null || echo read-only; until wget -q -O - http://127.0.0.1:8080/index.html; do sleep 0.2; done; sleep 3600']
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
        client.starts_with("app=\"web\"\nweb\n64\nread-only\n"),
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
/// timestamp of the first line it logged (CRI logs carry nanoseconds; the container logs at once,
/// though the line may land in the file a moment after the status shows the run).
fn run_started(node: &PodNode, rec: &PodRecord, restart: u32) -> f64 {
    let m = &rec.pod.metadata;
    let pod = PodId::new(&m.namespace, &m.name, &m.uid).unwrap_or_else(|e| panic!("{e}"));
    let path = node
        .cfg
        .layout()
        .container_log(&pod, "c", restart)
        .unwrap_or_else(|e| panic!("{e}"));
    // The status may show run `restart` before its first line reaches the log: wait for it.
    let stamp = wait_for(WAIT, &format!("a log record in {}", path.display()), || {
        let text = std::fs::read_to_string(&path).ok()?;
        text.lines()
            .next()
            .and_then(weft::pod::crilog::parse_record)
            .map(|r| r.timestamp.to_string())
    });
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
    // Back-off: the first restart at once, then base 1 s doubling to the 4 s cap, measured
    // between the runs' own start times (each run exits at once, so a gap is its back-off plus
    // the start of a container).
    let rec = wait_for(WAIT, "always-1 restarted 4 times", || {
        node.record("always-1")
            .filter(|r| r.pod.status.container_statuses[0].restart_count >= 4)
    });
    let starts: Vec<f64> = (0..5).map(|run| run_started(&node, &rec, run)).collect();
    let gaps: Vec<f64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, want) in gaps.iter().zip([0.0, 1.0, 2.0, 4.0]) {
        assert!(
            *gap >= want && *gap < want + 2.5,
            "gaps between runs {gaps:?}: expected back-offs of 0, 1, 2, 4 s"
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
fn kubelet_restart_timing_with_the_default_policy() {
    let mut node = PodNode::new();
    node.stop_controller();
    node.cfg.backoff = BackoffPolicy::default();
    node.start();
    node.put_manifest("crash.yaml", &exit_pod("crash", "Always", 1));
    let rec = wait_for(WAIT, "crash restarted twice", || {
        node.record("crash")
            .filter(|r| r.pod.status.container_statuses[0].restart_count >= 2)
    });
    // Gaps between the runs' recorded start times: each run exits at once, so a gap is the
    // back-off plus a container start (well under the 10 s base).
    let starts: Vec<f64> = (0..3).map(|run| run_started(&node, &rec, run)).collect();
    let gaps: Vec<f64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps[0] < 5.0, "first restart not at once: gaps {gaps:?}");
    assert!(
        gaps[1] >= 10.0 && gaps[1] < 15.0,
        "second restart not after the 10 s base: gaps {gaps:?}"
    );
    let s = &rec.pod.status.container_statuses[0];
    let last = s.last_state.terminated.as_ref().map(|t| t.exit_code);
    assert_eq!(last, Some(1), "{s:?}");
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
    let replaced = node.wait_status("from-url", "Running");
    // An answer that does not parse is reported and the last good pod keeps running.
    let mut last_error = String::new();
    for bad in [
        "apiVersion: v1\nkind: Pod\nspec: {}\n",
        "[[[[[[[[",
        "{\"kind\": ",
    ] {
        server.serve(Some(bad.to_string()));
        let invalid = wait_for(WAIT, "invalid URL answer reported", || {
            let list = read_invalid(&node.cfg.pod_root);
            (list.len() == 1 && list[0].error != last_error).then_some(list)
        });
        last_error = invalid[0].error.clone();
        assert_eq!(invalid[0].file, server.url());
        assert!(
            invalid[0]
                .error
                .starts_with(&format!("manifest {}: ", server.url())),
            "{invalid:?}"
        );
        std::thread::sleep(Duration::from_secs(2));
        let kept = node
            .record("from-url")
            .unwrap_or_else(|| panic!("URL pod removed after a bad answer"));
        assert_eq!(kept.pod.metadata.uid, replaced.pod.metadata.uid);
        assert_eq!(status::columns(&kept.pod).status, "Running");
        assert_eq!(node.pod_dirs().len(), 1);
    }
    // Without the manifest URL, its pod is an orphan: removed at start.
    node.stop_controller();
    node.cfg.manifest_url = None;
    node.start();
    wait_for(WAIT, "URL pod removed", || {
        node.pod_dirs().is_empty().then_some(())
    });
    node.assert_clean();
}

/// Every entry under `dir`, relative, with a file's content or a directory's/link's kind.
fn tree(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(dir).unwrap_or(&path).to_path_buf();
            let kind = entry.file_type().unwrap_or_else(|e| panic!("{e}"));
            if kind.is_dir() {
                out.push((rel, "<dir>".to_string()));
                todo.push(path);
            } else if kind.is_file() {
                out.push((rel, std::fs::read_to_string(&path).unwrap_or_default()));
            } else {
                out.push((rel, format!("{kind:?}")));
            }
        }
    }
    out.sort();
    out
}

/// The exploit of a UID with `..` in it, from a file and from the manifest URL: refused with
/// the field named, and nothing outside the pod and log roots is written or removed, also when
/// the manifests go away. Two manifests with one UID: the second is refused (they would share
/// a pod directory and cgroups). A 300 MB manifest and 100 KB of nested `[` are refused while
/// the other pods run. The invalid list is rebuilt when the controller restarts.
#[test]
fn traversal_and_shared_uids_are_refused_and_nothing_outside_the_roots_changes() {
    let mut node = PodNode::new();
    let d = node.dir.path().to_path_buf();
    // Roots three levels down, so the exploit's five `..` end in this test's directory.
    node.stop_controller();
    node.cfg.pod_root = d.join("state/a/b/pods");
    node.cfg.pod_log_dir = d.join("log/a/b/pods");
    let victim = d.join("victim");
    std::fs::create_dir_all(victim.join("data")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(victim.join("data/keep"), "precious").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(victim.join("pod.json"), "not weft's").unwrap_or_else(|e| panic!("{e}"));
    let before = tree(&victim);

    let server = ManifestServer::start(&node.netns);
    let with_uid = |name: &str, uid: &str| {
        MYAPP
            .replace("myapp-pod", name)
            .replace("  labels:", &format!("  uid: {uid:?}\n  labels:"))
    };
    let exploit = "../../../../../victim";
    server.serve(Some(with_uid("evil-url", exploit).replace("NS", &node.ns)));
    node.cfg.manifest_url = Some(server.url());
    node.cfg.manifest_url_interval = Duration::from_secs(1);
    node.start();
    node.put_manifest("evil.yaml", &with_uid("evil", exploit));
    node.put_manifest("shared-a.yaml", &with_uid("shared-a", "shared-uid"));
    node.put_manifest("shared-b.yaml", &with_uid("shared-b", "shared-uid"));
    // 300 MB (sparse) and 100 KB of nested `[`: each once stalled the controller.
    std::fs::File::create(node.manifest_path("big.yaml"))
        .and_then(|f| f.set_len(300_000_000))
        .unwrap_or_else(|e| panic!("{e}"));
    node.put_manifest("nested.yaml", &"[".repeat(100 * 1024));
    let mut invalid = wait_for(WAIT, "the exploits and the second UID listed", || {
        let list = read_invalid(&node.cfg.pod_root);
        (list.len() == 5).then_some(list)
    });
    let big = node.manifest_path("big.yaml").display().to_string();
    let nested = node.manifest_path("nested.yaml").display().to_string();
    let first = invalid.remove(0);
    assert_eq!(
        (first.file, first.error),
        (
            big.clone(),
            format!("manifest {big}: 300000000 bytes is over the 1048576-byte limit")
        )
    );
    let deep = invalid.remove(1);
    assert_eq!(deep.file, nested);
    assert!(
        deep.error.starts_with(&format!("manifest {nested}: ")) && deep.error.contains("line 1"),
        "{deep:?}"
    );
    let rule = "is not a valid UID (lowercase alphanumerics and '-', at most 63 characters)";
    let evil = node.manifest_path("evil.yaml").display().to_string();
    let b = node.manifest_path("shared-b.yaml").display().to_string();
    let a = node.manifest_path("shared-a.yaml").display().to_string();
    let errors: Vec<(String, String)> = invalid.into_iter().map(|i| (i.file, i.error)).collect();
    assert_eq!(
        errors,
        vec![
            (
                evil.clone(),
                format!("manifest {evil}: field metadata.uid: {exploit:?} {rule}")
            ),
            (
                b.clone(),
                format!(
                    "manifest {b}: field metadata.uid: \"shared-uid\" is already the UID of pod {}/shared-a defined by {a}",
                    node.ns
                )
            ),
            (
                server.url(),
                format!("manifest {}: field metadata.uid: {exploit:?} {rule}", server.url())
            ),
        ]
    );
    let shared = node.wait_status("shared-a", "Running");
    assert_eq!(shared.pod.metadata.uid, "shared-uid");
    assert!(node.record("shared-b").is_none());
    assert_eq!(node.pod_dirs().len(), 1, "{:?}", node.pod_dirs());

    // The manifests go away; the controller restarts without them: still nothing touched.
    node.remove_manifest("evil.yaml");
    server.serve(None);
    std::thread::sleep(Duration::from_secs(3));
    node.stop_controller();
    node.remove_manifest("shared-b.yaml");
    node.remove_manifest("big.yaml");
    node.remove_manifest("nested.yaml");
    node.cfg.manifest_url = None;
    node.start();
    wait_for(WAIT, "stale invalid entries gone after the restart", || {
        read_invalid(&node.cfg.pod_root).is_empty().then_some(())
    });
    node.remove_manifest("shared-a.yaml");
    wait_for(WAIT, "shared-a removed", || {
        node.pod_dirs().is_empty().then_some(())
    });
    assert_eq!(tree(&victim), before, "the victim directory changed");
    node.assert_clean();
}

/// Answers every request inside `netns` with a 200 whose body comes one byte every 3 s,
/// without end: the manifest URL that used to stop all pod work and SIGTERM.
struct DripServer {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU32>,
    port: u16,
    thread: Option<JoinHandle<()>>,
}

impl DripServer {
    fn start(netns: &str) -> DripServer {
        use std::io::{Read, Write};
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU32::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let path = PathBuf::from("/run/netns").join(netns);
        let (st, acc) = (stop.clone(), accepted.clone());
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
            let mut drips = Vec::new();
            while !st.load(Ordering::Relaxed) {
                let Ok((mut s, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                acc.fetch_add(1, Ordering::Relaxed);
                let st = st.clone();
                drips.push(std::thread::spawn(move || {
                    let _ = s.set_nonblocking(false);
                    let mut buf = [0u8; 2048];
                    let _ = s.read(&mut buf);
                    let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\n");
                    let mut last = Instant::now() - Duration::from_secs(3);
                    while !st.load(Ordering::Relaxed) {
                        if last.elapsed() >= Duration::from_secs(3) {
                            if s.write_all(b"#").is_err() {
                                return;
                            }
                            last = Instant::now();
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }));
            }
            for d in drips {
                let _ = d.join();
            }
        });
        let port = rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|e| panic!("drip server: {e}"));
        DripServer {
            stop,
            accepted,
            port,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/pod.yaml", self.port)
    }
}

impl Drop for DripServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A real weftd whose manifest URL drips one byte every 3 s: pods still start and stop, a
/// manifest that links to a secret is refused without the secret appearing in the log, the
/// invalid list or `weftctl pods`, container logs are 0640 in 0750 directories, and SIGTERM
/// during a fetch stops weftd at once.
#[test]
fn a_dripping_manifest_url_wedges_nothing_and_sigterm_stops_weftd() {
    use std::os::unix::fs::PermissionsExt;
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
    let drip = DripServer::start(&node.netns);
    node.cfg.manifest_url = Some(drip.url());
    node.start_weftd(&n.base_args());
    n.wait_subnet_env(WAIT);
    wait_for(WAIT, "weftd fetching the manifest URL", || {
        (drip.accepted.load(Ordering::Relaxed) > 0).then_some(())
    });

    node.put_manifest("myapp.yaml", MYAPP);
    let rec = node.wait_status("myapp-pod", "Running");
    let m = &rec.pod.metadata;
    let pod = PodId::new(&m.namespace, &m.name, &m.uid).unwrap_or_else(|e| panic!("{e}"));
    let log = node
        .cfg
        .layout()
        .container_log(&pod, "myapp-container", 0)
        .unwrap_or_else(|e| panic!("{e}"));
    node.wait_log(&rec, "myapp-container", "Hello Kubernetes!");
    let mode = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    let container_dir = log.parent().unwrap_or_else(|| panic!("no parent"));
    let pod_dir = container_dir
        .parent()
        .unwrap_or_else(|| panic!("no parent"));
    assert_eq!(
        [mode(&log), mode(container_dir), mode(pod_dir)],
        [0o640, 0o750, 0o750]
    );

    let marker = format!("weft-secret-marker-{}", std::process::id());
    let secret = node.dir.path().join("secret");
    std::fs::write(
        &secret,
        format!("{marker}\nroot:x:0:0:{marker}:/root:/bin/sh\n"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let leak = node.manifest_path("leak.yaml");
    std::os::unix::fs::symlink(&secret, &leak).unwrap_or_else(|e| panic!("{e}"));
    let listed = wait_for(WAIT, "the link listed as invalid", || {
        read_invalid(&node.cfg.pod_root)
            .into_iter()
            .find(|i| Path::new(&i.file) == leak)
    });
    assert_eq!(
        listed.error,
        format!(
            "manifest {}: the document is a string, not a Pod object",
            leak.display()
        )
    );
    let raw = std::fs::read_to_string(node.cfg.layout().invalid_manifests())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!raw.contains(&marker), "{raw}");
    let path = |p: &Path| p.display().to_string();
    let weftctl = std::process::Command::new(common::bin_path("weftctl"))
        .arg("pods")
        .args(["--pod-root", &path(&node.cfg.pod_root)])
        .args(["--image-root", &path(&node.cfg.image_root)])
        .args(["--pod-log-dir", &path(&node.cfg.pod_log_dir)])
        .output()
        .unwrap_or_else(|e| panic!("weftctl pods: {e}"));
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&weftctl.stdout),
        String::from_utf8_lossy(&weftctl.stderr)
    );
    assert!(shown.contains("leak.yaml"), "{shown}");
    assert!(!shown.contains(&marker), "{shown}");

    node.remove_manifest("myapp.yaml");
    wait_for(WAIT, "pod removed while the URL drips", || {
        node.pod_dirs().is_empty().then_some(())
    });

    // SIGTERM just after weftd opened a new fetch, so one is surely in flight.
    let seen = drip.accepted.load(Ordering::Relaxed);
    wait_for(WAIT, "a new fetch", || {
        (drip.accepted.load(Ordering::Relaxed) > seen).then_some(())
    });
    let mut weftd = node
        .weftd
        .take()
        .unwrap_or_else(|| panic!("weftd not running"));
    let pid = nix::unistd::Pid::from_raw(weftd.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
        .unwrap_or_else(|e| panic!("SIGTERM weftd: {e}"));
    let sent = Instant::now();
    // Well inside systemd's default 90 s stop timeout; a wedged weftd never exits.
    let status = wait_for(
        Duration::from_secs(15),
        "weftd to stop after SIGTERM",
        || weftd.try_wait().ok().flatten(),
    );
    eprintln!("weftd stopped {:?} after SIGTERM: {status}", sent.elapsed());
    assert!(status.success(), "{status}");
    let weftd_log =
        std::fs::read_to_string(node.weftd_log_path()).unwrap_or_else(|e| panic!("{e}"));
    assert!(weftd_log.contains("leak.yaml"), "{weftd_log}");
    assert!(!weftd_log.contains(&marker), "the secret was logged");
}

// securityContext, resources and the sandbox's life.

/// The script both containers of the securityContext pod run: what they are allowed to do.
const INSPECT: &str = r#"grep -E '^(Uid|Gid|Groups|CapEff|CapBnd|Seccomp|NoNewPrivs):' /proc/self/status | tr -s '\t ' ' ';
touch /tmp/rootfs-write 2>/dev/null && echo root-writable || echo root-read-only;
unshare -U true 2>/dev/null && echo unshare-allowed || echo unshare-blocked;
touch /data/$(id -u) && stat -c 'data-group %g' /data;
echo "sysctl $(cat /proc/sys/net/ipv4/ip_unprivileged_port_start)";
echo "oom-score-adj $(cat /proc/self/oom_score_adj)";
echo "cgroup-lines-naming-weft $(grep -c weft /proc/self/cgroup)";
echo done; exec sleep 3600"#;

/// The pod directory and the runtime directory of the current run of `container`.
fn container_dir(node: &PodNode, rec: &PodRecord, container: &str) -> (PathBuf, PathBuf) {
    let m = &rec.pod.metadata;
    let pod_dir = node.cfg.pod_root.join(
        PodId::new(&m.namespace, &m.name, &m.uid).map_or_else(|e| panic!("{e}"), |p| p.dir_name()),
    );
    let id = rec
        .pod
        .status
        .init_container_statuses
        .iter()
        .chain(&rec.pod.status.container_statuses)
        .find(|s| s.name == container)
        .map(|s| s.container_id.trim_start_matches("weft://").to_string())
        .unwrap_or_else(|| panic!("no status of {container}"));
    let dir = pod_dir.join("containers").join(id);
    (pod_dir, dir)
}

/// The OCI config weft generated for the current run of `container`.
fn oci_config(node: &PodNode, rec: &PodRecord, container: &str) -> serde_json::Value {
    let (_, dir) = container_dir(node, rec, container);
    let path = dir.join("config.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `(device, inode)` of a namespace file, to tell namespaces apart.
fn ns_identity(path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    (m.dev(), m.ino())
}

#[test]
fn security_context_is_enforced_with_runtime_default_seccomp() {
    let mut node = PodNode::new();
    // A Localhost profile: everything allowed but mkdir/mkdirat, which fail with EPERM.
    let profiles = node.dir.path().join("seccomp");
    std::fs::create_dir_all(profiles.join("team")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        profiles.join("team/no-mkdir.json"),
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    node.stop_controller();
    node.cfg.seccomp_root = profiles;
    node.start();
    node.put_manifest(
        "secure.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: secure, namespace: NS}}
spec:
  terminationGracePeriodSeconds: 1
  securityContext:
    runAsNonRoot: true
    runAsUser: 1000
    fsGroup: 2000
    supplementalGroups: [3000]
    sysctls: [{{name: net.ipv4.ip_unprivileged_port_start, value: "80"}}]
  volumes: [{{name: data, emptyDir: {{}}}}]
  containers:
    - name: locked
      image: busybox
      volumeMounts: [{{name: data, mountPath: /data}}]
      securityContext:
        capabilities: {{drop: [ALL]}}
        readOnlyRootFilesystem: true
        allowPrivilegeEscalation: false
        seccompProfile: {{type: RuntimeDefault}}
      command: [sh, -c, {script}]
    - name: open
      image: busybox
      volumeMounts: [{{name: data, mountPath: /data}}]
      securityContext:
        runAsUser: 1001
        allowPrivilegeEscalation: true
        seccompProfile: {{type: Unconfined}}
      command: [sh, -c, {script}]
    - name: custom
      image: busybox
      securityContext:
        seccompProfile: {{type: Localhost, localhostProfile: team/no-mkdir.json}}
      command: [sh, -c, 'grep Seccomp: /proc/self/status; mkdir /tmp/d 2>/dev/null && echo mkdir-allowed || echo mkdir-blocked; touch /tmp/f && echo touch-allowed; exec sleep 3600']
"#,
            script = serde_json::to_string(INSPECT).unwrap_or_default()
        ),
    );
    let rec = node.wait_status("secure", "Running");
    assert_eq!(rec.pod.status.qos_class, "BestEffort");
    let locked = node.wait_log(&rec, "locked", "done");
    for want in [
        "Uid: 1000 1000 1000 1000",
        "Gid: 0 0 0 0",
        "Groups: 2000 3000",
        "CapEff: 0000000000000000",
        "CapBnd: 0000000000000000",
        "Seccomp: 2",
        "NoNewPrivs: 1",
        "root-read-only",
        "unshare-blocked",
        "data-group 2000",
        "sysctl 80",
        "oom-score-adj 1000",
        "cgroup-lines-naming-weft 0",
    ] {
        assert!(
            locked.contains(want),
            "{want:?} not in the log of locked:\n{locked}"
        );
    }
    // The same image and script without those settings: every check comes out the other way.
    let open = node.wait_log(&rec, "open", "done");
    for want in [
        "Uid: 1001 1001 1001 1001",
        "CapBnd: 00000000a80425fb",
        "Seccomp: 0",
        "NoNewPrivs: 0",
        "root-writable",
        "unshare-allowed",
        "data-group 2000",
    ] {
        assert!(
            open.contains(want),
            "{want:?} not in the log of open:\n{open}"
        );
    }
    let custom = node.wait_log(&rec, "custom", "touch-allowed");
    assert!(
        custom.contains("mkdir-blocked") && custom.contains("Seccomp:\t2"),
        "Localhost profile not applied:\n{custom}"
    );
    let config = oci_config(&node, &rec, "locked");
    let masked = config["linux"]["maskedPaths"].to_string();
    assert!(masked.contains("/sys/devices/virtual/powercap"), "{masked}");
    let namespaces = config["linux"]["namespaces"].to_string();
    assert!(
        !namespaces.contains("/proc/"),
        "joins through a pid: {namespaces}"
    );
    assert!(namespaces.contains(r#""type":"cgroup""#), "{namespaces}");

    // runAsNonRoot with an image that runs as root: the container is never created.
    node.put_manifest(
        "root.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: rootpod, namespace: NS}
spec:
  securityContext: {runAsNonRoot: true}
  containers: [{name: c, image: busybox, command: [sleep, "3600"]}]
"#,
    );
    let root = node.wait_status("rootpod", "CreateContainerConfigError");
    let waiting = root.pod.status.container_statuses[0].state.waiting.clone();
    assert!(
        waiting.is_some_and(|w| w.message.contains("image will run as root")),
        "{:?}",
        root.pod.status
    );
    assert!(node.log(&root, "c", 0).is_empty(), "the root container ran");

    // A sysctl outside the safe set is refused with the field named.
    node.put_manifest(
        "sysctl.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: unsafe-sysctl, namespace: NS}
spec:
  securityContext: {sysctls: [{name: kernel.msgmax, value: "65536"}]}
  containers: [{name: c, image: busybox}]
"#,
    );
    let invalid = wait_for(WAIT, "unsafe sysctl refused", || {
        read_invalid(&node.cfg.pod_root)
            .into_iter()
            .find(|i| i.file.ends_with("sysctl.yaml"))
    });
    assert!(
        invalid.error.contains(
            "field spec.securityContext.sysctls[0].name: \"kernel.msgmax\" is not a safe sysctl"
        ),
        "{}",
        invalid.error
    );
    assert!(node.record("unsafe-sysctl").is_none());
}

#[test]
fn host_network_pod_uses_the_nodes_namespace_without_cni() {
    let node = PodNode::new();
    // A device only the node's namespace has: the pod sees it through hostNetwork alone.
    assert!(
        node.node_exec(&[
            "ip",
            "link",
            "add",
            "weft-hostdev",
            "type",
            "veth",
            "peer",
            "name",
            "weft-hostpeer"
        ]),
        "add a veth pair to the node namespace"
    );
    node.put_manifest(
        "host.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: hostnet, namespace: NS}
spec:
  terminationGracePeriodSeconds: 1
  hostNetwork: true
  hostPID: true
  hostIPC: true
  containers:
    - name: c
      image: busybox
      command: [sh, -c, 'cat /proc/net/dev; echo "pid1 $(cat /proc/1/comm)"; echo "ipc $(readlink /proc/self/ns/ipc)"; echo done; exec sleep 3600']
"#,
    );
    let rec = node.wait_status("hostnet", "Running");
    let log = node.wait_log(&rec, "c", "done");
    assert!(
        log.contains("weft-hostdev"),
        "node's devices not seen:\n{log}"
    );
    assert!(
        !log.contains("pid1 sh"),
        "hostPID: the container is PID 1 of its own namespace:\n{log}"
    );
    let host_ipc = std::fs::read_link("/proc/self/ns/ipc").unwrap_or_else(|e| panic!("{e}"));
    assert!(
        log.contains(&format!("ipc {}", host_ipc.display())),
        "hostIPC: not the node's IPC namespace ({}):\n{log}",
        host_ipc.display()
    );
    assert_eq!(
        rec.pod.status.pod_ip, "192.0.2.10",
        "a hostNetwork pod has the node's IP"
    );
    assert_eq!(
        node.ipam_allocations(),
        Vec::<String>::new(),
        "CNI was called"
    );
    assert!(node.pod_netns().is_empty(), "a network namespace was made");
    let config = oci_config(&node, &rec, "c");
    let namespaces = config["linux"]["namespaces"].to_string();
    assert!(
        !namespaces.contains("network") && !namespaces.contains("uts"),
        "{namespaces}"
    );
    node.remove_manifest("host.yaml");
    wait_for(WAIT, "pod removed", || {
        node.pod_dirs().is_empty().then_some(())
    });
    node.assert_clean();
}

/// CPU time the cgroup of `container`'s current run has used, in nanoseconds (cgroup v1
/// `cpuacct.usage`, or v2 `cpu.stat` usage_usec).
fn cgroup_cpu_ns(node: &PodNode, rec: &PodRecord, container: &str) -> u64 {
    let (_, dir) = container_dir(node, rec, container);
    let id = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let v1 = PathBuf::from("/sys/fs/cgroup/cpuacct/weft")
        .join(&id)
        .join("cpuacct.usage");
    if let Ok(text) = std::fs::read_to_string(&v1) {
        return text
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}", v1.display()));
    }
    let v2 = PathBuf::from("/sys/fs/cgroup/weft")
        .join(&id)
        .join("cpu.stat");
    let text = std::fs::read_to_string(&v2)
        .unwrap_or_else(|e| panic!("neither {} nor {}: {e}", v1.display(), v2.display()));
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|us| us * 1000)
        .unwrap_or_else(|| panic!("no usage_usec in {}", v2.display()))
}

#[test]
fn cpu_limit_caps_a_busy_loop_and_a_memory_hog_is_oom_killed() {
    let mut node = PodNode::new();
    node.stop_controller();
    node.cfg.pids_limit = Some(64);
    node.start();
    node.put_manifest(
        "cpu.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: cpu, namespace: NS}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: limited
      image: busybox
      command: [sh, -c, 'while :; do :; done']
      resources: {limits: {cpu: 100m, memory: 64Mi}}
    - name: free
      image: busybox
      command: [sh, -c, 'while :; do :; done']
      # A request and no limit: shares as large as a core's, so the 2 shares of no request do
      # not leave the loop starved by the machine's other work.
      resources: {requests: {cpu: "1"}}
"#,
    );
    let rec = node.wait_status("cpu", "Running");
    assert_eq!(rec.pod.status.qos_class, "Burstable");
    let (_, limited_dir) = container_dir(&node, &rec, "limited");
    let id = limited_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let pids_max = ["/sys/fs/cgroup/pids/weft", "/sys/fs/cgroup/weft"]
        .iter()
        .find_map(|d| std::fs::read_to_string(Path::new(d).join(&id).join("pids.max")).ok());
    assert_eq!(
        pids_max.as_deref().map(str::trim),
        Some("64"),
        "--pids-limit not applied"
    );
    let config = oci_config(&node, &rec, "limited");
    assert_eq!(
        config["linux"]["resources"]["cpu"],
        serde_json::json!({"shares": 102, "quota": 10000, "period": 100000})
    );
    assert_eq!(config["linux"]["resources"]["memory"]["limit"], 64 << 20);
    // Both loops run side by side in the same measurement window.
    std::thread::sleep(Duration::from_secs(1));
    let start = (
        Instant::now(),
        cgroup_cpu_ns(&node, &rec, "limited"),
        cgroup_cpu_ns(&node, &rec, "free"),
    );
    std::thread::sleep(Duration::from_secs(4));
    let wall = start.0.elapsed().as_nanos() as f64;
    let limited = (cgroup_cpu_ns(&node, &rec, "limited") - start.1) as f64 / wall;
    let free = (cgroup_cpu_ns(&node, &rec, "free") - start.2) as f64 / wall;
    eprintln!(
        "cpu over {:.1} s: limited {:.1} %, free {:.1} %",
        wall / 1e9,
        limited * 100.0,
        free * 100.0
    );
    assert!(
        limited < 0.25,
        "100m limit let the loop use {:.1} % of a core",
        limited * 100.0
    );
    // Relative, measured in the same window: the machine's other load moves both numbers.
    assert!(
        free > 2.0 * limited,
        "the unlimited loop got only {:.1} % (limited {:.1} %)",
        free * 100.0,
        limited * 100.0
    );
    node.remove_manifest("cpu.yaml");

    node.put_manifest(
        "hog.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: hog, namespace: NS}
spec:
  terminationGracePeriodSeconds: 1
  restartPolicy: OnFailure
  containers:
    - name: hog
      image: busybox
      command: [sh, -c, 'echo "oom-score-adj $(cat /proc/self/oom_score_adj)"; x=0123456789abcdef; while :; do x=$x$x; done; echo survived']
      resources: {limits: {memory: 32Mi}, requests: {cpu: 50m}}
"#,
    );

    // The hog is killed in its 32 Mi cgroup, shown as OOMKilled 137, and restarted (OnFailure).
    let hog = wait_for(WAIT, "hog OOM-killed and restarted", || {
        node.record("hog")
            .filter(|r| r.pod.status.container_statuses[0].restart_count >= 1)
    });
    let s = &hog.pod.status.container_statuses[0];
    let last = s.last_state.terminated.clone();
    assert!(
        last.as_ref()
            .is_some_and(|t| t.reason == "OOMKilled" && t.exit_code == 137),
        "{s:?}"
    );
    assert_eq!(hog.pod.status.qos_class, "Burstable");
    let log = node.log(&hog, "hog", 0);
    assert!(!log.contains("survived"), "{log}");
    let adj: i32 = log
        .lines()
        .find_map(|l| l.strip_prefix("oom-score-adj "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no oom_score_adj in {log:?}"));
    // Burstable with no memory request... but the limit defaults the request: 1000 - 1000*32Mi/MemTotal.
    assert!((900..=999).contains(&adj), "oom_score_adj {adj}");
}

/// The pod's pause process as its sandbox state records it.
fn pause_pid(pod_dir: &Path) -> i32 {
    weft::pod::sandbox::SandboxState::load(pod_dir)
        .ok()
        .flatten()
        .map(|s| s.pause.pid)
        .unwrap_or_else(|| panic!("no sandbox state in {}", pod_dir.display()))
}

/// The body of `GET http://ip:8080/`, fetched from a thread in the node's namespace.
fn fetch_from_node(node: &PodNode, ip: &str) -> Option<String> {
    use std::io::{Read, Write};
    let netns = PathBuf::from("/run/netns").join(&node.netns);
    let addr: std::net::SocketAddr = format!("{ip}:8080").parse().ok()?;
    std::thread::spawn(move || {
        let file = std::fs::File::open(&netns).ok()?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
        let mut conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        conn.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
        let mut reply = String::new();
        conn.read_to_string(&mut reply).ok()?;
        reply
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
    })
    .join()
    .ok()
    .flatten()
}

const SERVER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: NS}
spec:
  terminationGracePeriodSeconds: 1
  initContainers:
    - name: prepare
      image: busybox
      command: [sh, -c, 'echo prepared']
  containers:
    - name: httpd
      image: busybox
      command: [sh, -c, 'mkdir -p /tmp/www && echo "hello from $(hostname)" > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www']
"#;

#[test]
fn killed_pause_is_noticed_and_the_pod_comes_back_in_a_new_sandbox() {
    let node = PodNode::new();
    node.put_manifest("server.yaml", SERVER);
    let before = node.wait_status("server", "Running");
    let (pod_dir, _) = container_dir(&node, &before, "httpd");
    let netns_file = PathBuf::from("/run/netns").join(
        node.pod_netns()
            .first()
            .cloned()
            .unwrap_or_else(|| panic!("no pod netns")),
    );
    let old_netns = ns_identity(&netns_file);
    // Held open so the old namespace's inode number cannot be handed to the new one.
    let _old_netns_held = std::fs::File::open(&netns_file)
        .unwrap_or_else(|e| panic!("open {}: {e}", netns_file.display()));
    wait_for(WAIT, "server answers", || {
        fetch_from_node(&node, &before.pod.status.pod_ip)
    });
    let old_pause = pause_pid(&pod_dir);
    // weft-pause keeps no capability once its namespaces are set up.
    let pause_status = std::fs::read_to_string(format!("/proc/{old_pause}/status"))
        .unwrap_or_else(|e| panic!("status of pause {old_pause}: {e}"));
    for want in [
        "CapEff:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "CapPrm:\t0000000000000000",
        "NoNewPrivs:\t1",
    ] {
        assert!(
            pause_status.contains(want),
            "{want:?} not in pause's status:\n{pause_status}"
        );
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old_pause),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap_or_else(|e| panic!("kill pause {old_pause}: {e}"));
    let killed = Instant::now();
    tracing::info!(pid = old_pause, "test: pause killed");
    let after = wait_for(WAIT, "pod back in a new sandbox", || {
        node.record("server").filter(|r| {
            status::columns(&r.pod).status == "Running"
                && r.pod.status.container_statuses[0].restart_count == 1
        })
    });
    eprintln!(
        "pause killed -> pod Running again in {:?}",
        killed.elapsed()
    );
    // kubelet's handling: the app container restarted (count kept, plus this restart), the
    // init container ran again in the new sandbox.
    let init = &after.pod.status.init_container_statuses[0];
    assert_eq!(init.restart_count, 1, "{init:?}");
    assert_eq!(after.pod.status.container_statuses[0].restart_count, 1);
    let new_pause = pause_pid(&pod_dir);
    assert_ne!(new_pause, old_pause);
    let new_netns = ns_identity(&netns_file);
    assert_ne!(
        new_netns, old_netns,
        "the pod kept the dead sandbox's network"
    );
    // The restarted container lives in the new sandbox's namespace, not the node's.
    let (_, dir) = container_dir(&node, &after, "httpd");
    let pid = std::fs::read_to_string(dir.join("container.pid"))
        .unwrap_or_else(|e| panic!("container.pid: {e}"));
    let container_netns = ns_identity(&PathBuf::from(format!("/proc/{}/ns/net", pid.trim())));
    assert_eq!(container_netns, new_netns);
    assert_ne!(
        container_netns,
        ns_identity(&PathBuf::from("/run/netns").join(&node.netns))
    );
    let namespaces = oci_config(&node, &after, "httpd")["linux"]["namespaces"].to_string();
    assert!(
        !namespaces.contains("/proc/"),
        "joins through a pid: {namespaces}"
    );
    let page = wait_for(WAIT, "server answers again", || {
        fetch_from_node(&node, &after.pod.status.pod_ip)
    });
    assert_eq!(page, "hello from server\n");
}

/// Flannel's subnet.env for a node subnet given by its gateway (`10.244.41.1/24`).
fn subnet_env(gateway: &str) -> String {
    format!(
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={gateway}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
    )
}

#[test]
fn a_new_node_subnet_recreates_the_pod_sandbox_in_it() {
    require_root();
    let env_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let subnet_file = env_dir.path().join("subnet.env");
    std::fs::write(&subnet_file, subnet_env("10.244.41.1/24")).unwrap_or_else(|e| panic!("{e}"));
    let netns = Netns::new("podnode");
    let name = netns.name().to_string();
    let mut node = PodNode::in_netns(
        &name,
        Some(netns),
        Network::Weft {
            subnet_file: subnet_file.clone(),
            subnet: "10.244.41.0/24".into(),
        },
    );
    node.stop_controller();
    node.cfg.subnet_file = Some(subnet_file.clone());
    node.start();
    node.put_manifest("server.yaml", SERVER);
    let before = node.wait_status("server", "Running");
    assert!(
        before.pod.status.pod_ip.starts_with("10.244.41."),
        "{}",
        before.pod.status.pod_ip
    );
    // The node's lease was taken over: weftd writes its new subnet. The bridge still carries the
    // old gateway, which the plugin does not move: start from a fresh bridge.
    assert!(
        node.node_exec(&["ip", "link", "del", "cni0"]),
        "delete cni0"
    );
    let tmp = subnet_file.with_extension("tmp");
    std::fs::write(&tmp, subnet_env("10.244.42.1/24")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::rename(&tmp, &subnet_file).unwrap_or_else(|e| panic!("{e}"));
    let after = wait_for(WAIT, "pod re-created in the new subnet", || {
        node.record("server").filter(|r| {
            r.pod.status.pod_ip.starts_with("10.244.42.")
                && status::columns(&r.pod).status == "Running"
        })
    });
    assert_eq!(after.pod.status.container_statuses[0].restart_count, 1);
    let page = wait_for(WAIT, "server answers at its new address", || {
        fetch_from_node(&node, &after.pod.status.pod_ip)
    });
    assert_eq!(page, "hello from server\n");
    assert_eq!(
        node.ipam_allocations(),
        vec![after.pod.status.pod_ip.clone()],
        "the old address was not released"
    );
}

#[test]
fn pause_killed_while_the_controller_is_away_is_replaced_on_adoption() {
    let mut node = PodNode::new();
    node.put_manifest("server.yaml", SERVER);
    let before = node.wait_status("server", "Running");
    let (pod_dir, _) = container_dir(&node, &before, "httpd");
    node.stop_controller();
    let pause = pause_pid(&pod_dir);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pause),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap_or_else(|e| panic!("kill pause {pause}: {e}"));
    wait_for(WAIT, "pause gone", || {
        weft::pod::process::ProcessId::of(pause)
            .is_none()
            .then_some(())
    });
    node.start();
    let after = wait_for(WAIT, "pod back in a new sandbox", || {
        node.record("server").filter(|r| {
            status::columns(&r.pod).status == "Running"
                && r.pod.status.container_statuses[0].restart_count == 1
        })
    });
    assert_eq!(after.pod.metadata.uid, before.pod.metadata.uid);
    // The same pod carried on (not torn down and created afresh): the init container ran again
    // as a restart, and the app's previous run is its last state.
    let init = &after.pod.status.init_container_statuses[0];
    assert_eq!(init.restart_count, 1, "{init:?}");
    let app = &after.pod.status.container_statuses[0];
    assert!(app.last_state.terminated.is_some(), "{app:?}");
    assert_ne!(pause_pid(&pod_dir), pause);
    let page = wait_for(WAIT, "server answers again", || {
        fetch_from_node(&node, &after.pod.status.pod_ip)
    });
    assert_eq!(page, "hello from server\n");
}

/// A client pod that prints its address, fetches `server_ip`'s page once, then idles.
fn client_manifest(name: &str, server_ip: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: NS}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: wget
      image: busybox
      env:
        - {{name: MY_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}
      command: ['sh', '-c', 'echo "client $MY_IP"; until wget -q -O - http://{server_ip}:8080/; do sleep 0.5; done; sleep 3600']
"#
    )
}

/// Another writer takes node 1's lease: weftd acquires a new subnet and rewrites subnet.env, the
/// CNI plugin moves cni0 to the new gateway, weftd re-creates its static pod in the new subnet,
/// and both that pod and a pod started after the takeover reach a pod on node 2 over the overlay.
#[test]
fn pods_follow_their_node_to_a_new_subnet_after_a_lease_takeover() {
    require_root();
    let cluster = Cluster::new(2, VXLAN_CONFIG);
    let (n1, n2) = (cluster.node(0), cluster.node(1));
    n2.start_weftd(&[]);
    n2.wait_subnet_env(WAIT);
    let mut node1 = PodNode::in_netns(
        n1.netns().name(),
        None,
        Network::Weft {
            subnet_file: n1.subnet_file(),
            subnet: String::new(),
        },
    );
    node1.start_weftd(&n1.base_args());
    n1.wait_subnet_env(WAIT);
    cluster.wait_mesh(WAIT);
    let old = n1.subnet().unwrap_or_default();
    let node2 = PodNode::in_netns(
        n2.netns().name(),
        None,
        Network::Weft {
            subnet_file: n2.subnet_file(),
            subnet: n2.subnet().unwrap_or_default(),
        },
    );
    node2.put_manifest("server.yaml", SERVER);
    let server_ip = node2.wait_status("server", "Running").pod.status.pod_ip;
    node1.put_manifest("client.yaml", &client_manifest("client", &server_ip));
    let before = node1.wait_status("client", "Running");
    node1.wait_log(&before, "wget", "hello from server");
    // The takeover follows at once: the worker knows the pod was inside the old subnet from
    // its CNI ADD, not only from its first periodic look.
    cluster.etcd.put(
        &common::lease_key(&old),
        &common::vxlan_lease_value("192.0.2.90", "aa:bb:cc:00:00:90"),
    );
    let new = wait_for(WAIT, "subnet.env naming a new subnet", || {
        n1.subnet().filter(|s| *s != old)
    });
    let new_net: ipnetwork::Ipv4Network = new.parse().unwrap_or_else(|e| panic!("{new}: {e}"));
    let inside = |ip: &str| ip.parse().is_ok_and(|ip| new_net.contains(ip));
    let after = wait_for(WAIT, "the static pod re-created in the new subnet", || {
        node1
            .record("client")
            .filter(|r| inside(&r.pod.status.pod_ip) && status::columns(&r.pod).status == "Running")
    });
    let restart = after.pod.status.container_statuses[0].restart_count;
    let log = wait_for(WAIT, "the re-created pod reaches node 2's server", || {
        let log = node1.log(&after, "wget", restart);
        log.contains("hello from server").then_some(log)
    });
    assert!(
        log.starts_with(&format!("client {}\n", after.pod.status.pod_ip)),
        "{log}"
    );

    node1.put_manifest("late.yaml", &client_manifest("late", &server_ip));
    let late = node1.wait_status("late", "Running");
    assert!(
        inside(&late.pod.status.pod_ip),
        "pod started after the takeover at {} outside {new}",
        late.pod.status.pod_ip
    );
    node1.wait_log(&late, "wget", "hello from server");
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
    // A plain-http URL is warned about: anyone on the path could change the pod.
    let weftd_log =
        std::fs::read_to_string(node.weftd_log_path()).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        weftd_log.lines().any(|l| l.contains("WARN")
            && l.contains("manifest URL is plain http")
            && l.contains(&server.url())),
        "no plain-http warning in the weftd log:\n{weftd_log}"
    );
    node.kill_weftd();
}

/// Runs weftctl with the node's roots after `args`' subcommand words (`pre`), feeding `stdin`.
fn weftctl_run(node: &PodNode, pre: &[&str], post: &[&str], stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let root = |p: &Path| p.display().to_string();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_weftctl"))
        .args(pre)
        .args(["--pod-root", &root(&node.cfg.pod_root)])
        .args(["--image-root", &root(&node.cfg.image_root)])
        .args(["--pod-log-dir", &root(&node.cfg.pod_log_dir)])
        .args(post)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("weftctl {pre:?}: {e}"));
    if let Some(mut input) = child.stdin.take() {
        // A command that does not read its input closes the pipe early; that is its business.
        let _ = input.write_all(stdin);
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("weftctl {pre:?}: {e}"))
}

#[test]
fn weftctl_exec_debug_and_label_selectors_on_a_running_pod() {
    let node = PodNode::new();
    node.put_manifest(
        "shell.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: shell, namespace: NS, labels: {app: shell, tier: debug}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: app
      image: busybox
      command: ['sh', '-c', 'echo app-only > /tmp/mark; exec sleep 3600']
      resources: {limits: {cpu: 500m, memory: 64Mi}}
      env:
        - {name: CPU_M, valueFrom: {resourceFieldRef: {resource: limits.cpu, divisor: 1m}}}
        - {name: CPU, valueFrom: {resourceFieldRef: {resource: requests.cpu}}}
        - {name: MEM_MI, valueFrom: {resourceFieldRef: {containerName: app, resource: limits.memory, divisor: 1Mi}}}
    - name: side
      image: busybox
      command: ['sleep', '3600']
"#,
    );
    node.wait_status("shell", "Running");
    let pod = format!("{}/shell", node.ns);
    let exec = |post: &[&str], stdin: &[u8]| weftctl_run(&node, &["exec", &pod], post, stdin);
    let text = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();

    // The default container is the first app container (its own root filesystem).
    let out = wait_for(WAIT, "mark written", || {
        let o = exec(&["--", "cat", "/tmp/mark"], b"");
        o.status.success().then_some(o)
    });
    assert_eq!(text(&out), "app-only\n");
    // resourceFieldRef env: divided by the divisor, rounded up (the request defaults to the limit).
    let out = exec(&["--", "sh", "-c", "echo $CPU_M $CPU $MEM_MI"], b"");
    assert_eq!(text(&out), "500 1 64\n", "{out:?}");
    // The exit code is passed through.
    let out = exec(&["--", "sh", "-c", "echo out; exit 7"], b"");
    assert_eq!((out.status.code(), text(&out)), (Some(7), "out\n".into()));
    // -c picks the container; it shares the pod's UTS namespace.
    let out = exec(
        &["-c", "side", "--", "sh", "-c", "hostname; cat /tmp/mark"],
        b"",
    );
    assert_eq!(text(&out), "shell\n", "{out:?}");
    assert_eq!(out.status.code(), Some(1));
    // -i passes stdin; without it the command reads nothing.
    let out = exec(&["-i", "--", "cat"], b"hello from stdin\n");
    assert_eq!(text(&out), "hello from stdin\n");
    let out = exec(&["--", "cat"], b"not passed\n");
    assert_eq!((out.status.code(), text(&out)), (Some(0), String::new()));
    // -t gives the command a terminal when weftctl has one (script(1) provides it).
    let root = |p: &Path| p.display().to_string();
    let line = [
        env!("CARGO_BIN_EXE_weftctl"),
        "exec",
        "-it",
        &pod,
        "--pod-root",
        &root(&node.cfg.pod_root),
        "--",
        "test",
        "-t",
        "0",
    ]
    .join(" ");
    let out = std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("script: {e}"));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // Without a terminal -t is dropped with kubectl's warning.
    let out = exec(&["-t", "--", "test", "-t", "0"], b"");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unable to use a TTY"),
        "{out:?}"
    );
    // Bad names and unknown containers are refused with a clear error, nothing run.
    for (args, want) in [
        (&["-c", "../app", "--", "true"][..], "container name"),
        (
            &["-c", "nope", "--", "true"][..],
            "container nope is not valid",
        ),
    ] {
        let out = exec(args, b"");
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(want),
            "{args:?}: {out:?}"
        );
    }
    let out = weftctl_run(&node, &["exec", "Bad_Pod"], &["--", "true"], b"");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pod name"),
        "{out:?}"
    );

    // A debug container joins the pod's network, IPC and UTS namespaces, with --target also the
    // target's PID namespace; it is removed when it exits and its exit code is weftctl's.
    let lines = |o: &std::process::Output| text(o).lines().map(str::to_string).collect::<Vec<_>>();
    let probe = "hostname; for n in net ipc uts; do readlink /proc/self/ns/$n; done";
    let in_app = exec(&["--", "sh", "-c", probe], b"");
    let debug = |pre: &[&str], cmd: &str| {
        weftctl_run(
            &node,
            &[&["debug", &pod, "--image", "busybox"], pre].concat(),
            &["--", "sh", "-c", cmd],
            b"",
        )
    };
    let out = debug(
        &[],
        &format!("{probe}; ps -o args | grep -c '^sleep 3600'; exit 3"),
    );
    let seen = lines(&out);
    assert_eq!(seen.len(), 5, "{out:?}");
    assert_eq!(seen[..4], lines(&in_app)[..], "{out:?} vs {in_app:?}");
    assert_eq!(
        (seen[4].as_str(), out.status.code()),
        ("0", Some(3)),
        "{out:?}"
    );
    let out = debug(&["--target", "app"], "ps -o args | grep '^sleep 3600'");
    assert_eq!(
        (text(&out), out.status.code()),
        ("sleep 3600\n".into(), Some(0)),
        "{out:?}"
    );
    let rec = node
        .record("shell")
        .unwrap_or_else(|| panic!("shell record"));
    let m = &rec.pod.metadata;
    let id = PodId::new(&m.namespace, &m.name, &m.uid).unwrap_or_else(|e| panic!("{e}"));
    let names = |dir: PathBuf| {
        let mut n: Vec<String> = std::fs::read_dir(dir)
            .map(|e| {
                e.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        n.sort();
        n
    };
    let layout = node.cfg.layout();
    assert_eq!(
        names(layout.pod_dir(&id).join("containers")),
        [format!("{}_app_0", m.uid), format!("{}_side_0", m.uid)]
    );
    assert_eq!(names(layout.log_dir(&id)), ["app", "side"]);
    // Ended debug containers stay in the status, as Kubernetes keeps ephemeral containers'.
    let list: serde_json::Value = serde_json::from_str(&text(&weftctl_run(
        &node,
        &["pods", "-o", "json"],
        &[],
        b"",
    )))
    .unwrap_or_else(|e| panic!("weftctl pods -o json: {e}"));
    let eph = &list["items"][0]["status"]["ephemeralContainerStatuses"];
    let ended: Vec<(bool, serde_json::Value)> = eph
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    let named = s["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("debugger-"));
                    (named, s["state"]["terminated"]["exitCode"].clone())
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(ended, [(true, 3.into()), (true, 0.into())], "{eph}");
    let out = debug(&["--target", "nope"], "true");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("container nope is not valid"),
        "{out:?}"
    );
    let out = weftctl_run(
        &node,
        &["debug", &pod, "--image", "no-such-image"],
        &["--", "true"],
        b"",
    );
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no-such-image"),
        "{out:?}"
    );

    // Label selectors and --show-labels on the live pod.
    let pods = |sel: &str| {
        text(&weftctl_run(
            &node,
            &["pods", "-l", sel, "--show-labels"],
            &[],
            b"",
        ))
    };
    let listed = pods("app=shell,tier in (debug, web)");
    assert!(
        listed
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains(" shell ") && l.ends_with(" app=shell,tier=debug")),
        "{listed}"
    );
    assert_eq!(pods("tier notin (debug)").lines().count(), 0);
    assert_eq!(pods("!app").lines().count(), 0);
    let out = weftctl_run(&node, &["pods", "-l", "app in ("], &[], b"");
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("invalid label selector"),
        "{out:?}"
    );

    node.remove_manifest("shell.yaml");
    wait_for(WAIT, "pod removed", || {
        node.pod_dirs().is_empty().then_some(())
    });
    node.assert_clean();
}

#[test]
fn describe_pod_shows_the_pods_events_kept_in_its_directory() {
    let mut node = PodNode::new();
    node.put_manifest(
        "ev.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: ev, namespace: NS, labels: {app: ev}, annotations: {owner: ops}}
spec:
  terminationGracePeriodSeconds: 1
  volumes: [{name: scratch, emptyDir: {}}]
  containers:
    - name: app
      image: busybox
      command: ['sleep', '3600']
      livenessProbe: {exec: {command: [cat, /no/such/file]}, periodSeconds: 1, failureThreshold: 1}
      volumeMounts: [{name: scratch, mountPath: /scratch}]
"#,
    );
    let pod = format!("{}/ev", node.ns);
    wait_for(WAIT, "pod ev recorded", || node.record("ev"));
    let describe = |node: &PodNode| {
        let out = weftctl_run(node, &["describe", "pod", &pod], &[], b"");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = wait_for(WAIT, "Unhealthy, Killing and BackOff events", || {
        let d = describe(&node);
        ["Unhealthy", "Killing", "BackOff"]
            .iter()
            .all(|r| d.contains(r))
            .then_some(d)
    });
    for want in [
        "Labels:           app=ev\n",
        "Annotations:      owner=ops\n",
        "QoS Class:        BestEffort\n",
        "    Liveness:       exec [cat /no/such/file] delay=0s timeout=1s period=1s #success=1 #failure=1\n",
        "      /scratch from scratch (rw)\n",
        "Normal   Pulled",
        "Container image \"busybox\" already present on machine",
        "Normal   Created",
        "Started container app",
        "Warning  Unhealthy",
        "Liveness probe failed",
        "Container app failed Liveness probe, will be restarted",
        "Back-off restarting failed container app in pod ev",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    assert!(text.contains("Last State:     Terminated"), "{text}");
    let rec = node.record("ev").unwrap_or_else(|| panic!("ev record"));
    let m = &rec.pod.metadata;
    let id = PodId::new(&m.namespace, &m.name, &m.uid).unwrap_or_else(|e| panic!("{e}"));
    let file = node.cfg.layout().events(&id);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // The events survive a restart of the controller: the new one counts on from them, keeping
    // each event's first occurrence, and `describe` still shows them.
    node.stop_controller();
    let before = weft::pod::events::read(&file);
    let killings = |events: &[weft::pod::events::PodEvent]| {
        events
            .iter()
            .filter(|e| e.reason == "Killing")
            .map(|e| e.count)
            .sum::<u32>()
    };
    node.start();
    let after = wait_for(
        WAIT,
        "an event recorded by the restarted controller",
        || {
            let events = weft::pod::events::read(&file);
            (killings(&events) > killings(&before)).then_some(events)
        },
    );
    for old in &before {
        assert!(
            after.iter().any(|e| e.kind == old.kind
                && e.reason == old.reason
                && e.message == old.message
                && e.first_timestamp == old.first_timestamp
                && e.count >= old.count),
            "{old:?} lost over the restart: {after:?}"
        );
    }
    let text = describe(&node);
    for want in ["Normal   Pulled", "Warning  Unhealthy", "Normal   Killing"] {
        assert!(
            text.contains(want),
            "missing {want:?} after the restart in\n{text}"
        );
    }
    let out = weftctl_run(&node, &["describe", "pod", "Bad_Name"], &[], b"");
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("pod name"),
        "{out:?}"
    );

    node.remove_manifest("ev.yaml");
    wait_for(WAIT, "pod removed", || {
        node.pod_dirs().is_empty().then_some(())
    });
    assert!(!file.exists(), "events outlived the pod");
    node.assert_clean();
}

/// A manifest of docs/examples, put in this test's namespace.
fn example(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs/examples")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.replacen("metadata:\n", "metadata:\n  namespace: NS\n", 1)
}

#[test]
fn docs_examples_init_copies_the_app_a_sidecar_collects_the_log_an_adapter_translates_a_proxy_forwards(
) {
    let node = PodNode::new();
    node.put_manifest("javaweb.yaml", &example("init-copies-app.yaml"));
    node.put_manifest("sidecar.yaml", &example("sidecar-log-collector.yaml"));
    // The copied application is what the server serves.
    let rec = node.wait_status("javaweb", "Running");
    let ip = rec.pod.status.pod_ip.clone();
    let body = wait_for(WAIT, "the copied app served", || {
        fetch_from_node(&node, &ip)
    });
    assert_eq!(body, "sample app, copied by the init container\n");
    // The application's log lines come out of the collector's stdout.
    let rec = node.wait_status("sidecar-logs", "Running");
    let log = node.wait_log(&rec, "collector", "request 3 served");
    assert!(
        log.starts_with("request 1 served\nrequest 2 served\n"),
        "{log:?}"
    );
    // The adapter serves the application's statistics in the other format.
    node.put_manifest("adapter.yaml", &example("adapter.yaml"));
    let rec = node.wait_status("adapter", "Running");
    let ip = rec.pod.status.pod_ip.clone();
    let body = wait_for(WAIT, "adapted statistics", || {
        fetch_from_node(&node, &ip).filter(|b| !b.is_empty() && !b.contains("404"))
    });
    assert_eq!(body, "requests_total 42\nerrors_total 1\n");
    // The app listens on localhost only: what answers on the pod IP is the proxy container,
    // forwarding to it inside the pod.
    node.put_manifest("proxy.yaml", &example("localhost-proxy.yaml"));
    let rec = node.wait_status("localhost-proxy", "Running");
    let ip = rec.pod.status.pod_ip.clone();
    let body = wait_for(WAIT, "the app's answer through the proxy", || {
        fetch_from_node(&node, &ip).filter(|b| !b.is_empty())
    });
    assert_eq!(body, "answered by the app on localhost\n");
    node.remove_manifest("javaweb.yaml");
    node.remove_manifest("sidecar.yaml");
    node.remove_manifest("adapter.yaml");
    node.remove_manifest("proxy.yaml");
    wait_for(WAIT, "pods removed", || {
        node.pod_dirs().is_empty().then_some(())
    });
    node.assert_clean();
}

/// A pod whose sandbox lost its namespace files while the controller was away (as a pod of an
/// older weftd, which held its namespaces through `/proc`, has none) gets a new sandbox once on
/// adoption, keeping its UID and restart counts, and serves again; the old pause is gone.
#[test]
fn pod_without_namespace_files_gets_a_new_sandbox_on_adoption() {
    let mut node = PodNode::new();
    node.put_manifest("server.yaml", SERVER);
    let before = node.wait_status("server", "Running");
    let (pod_dir, _) = container_dir(&node, &before, "httpd");
    node.stop_controller();
    let pause = pause_pid(&pod_dir);
    for kind in ["uts", "ipc"] {
        let file = pod_dir.join("ns").join(kind);
        nix::mount::umount2(&file, nix::mount::MntFlags::MNT_DETACH)
            .unwrap_or_else(|e| panic!("unmount {}: {e}", file.display()));
        std::fs::remove_file(&file).unwrap_or_else(|e| panic!("remove {}: {e}", file.display()));
    }
    node.start();
    let after = wait_for(WAIT, "pod back in a new sandbox", || {
        node.record("server").filter(|r| {
            status::columns(&r.pod).status == "Running"
                && r.pod.status.container_statuses[0].restart_count == 1
        })
    });
    assert_eq!(after.pod.metadata.uid, before.pod.metadata.uid);
    assert_ne!(pause_pid(&pod_dir), pause, "the old sandbox was kept");
    wait_for(WAIT, "the old pause gone", || {
        weft::pod::process::ProcessId::of(pause)
            .is_none()
            .then_some(())
    });
    for kind in ["uts", "ipc"] {
        assert!(
            pod_dir.join("ns").join(kind).exists(),
            "no ns/{kind} in the new sandbox"
        );
    }
    let page = wait_for(WAIT, "server answers again", || {
        fetch_from_node(&node, &after.pod.status.pod_ip)
    });
    assert_eq!(page, "hello from server\n");
}

/// Pod flags and volumes through a real weftd: `--oci-runtime` names the runtime every
/// container is run with, `--pids-limit` becomes each container's `pids.max`, `--cni-bin-dir`
/// is a comma list (the fixture's lists a missing directory first), a `hostPath` volume is
/// the node's directory read and written by the pod, an `ephemeral-storage` limit is accepted,
/// the pod's state directory is 0700, and a
/// FIFO behind a `.yaml` name (put before weftd starts, never opened by a writer) does not
/// block the pod next to it.
#[test]
fn pod_flags_host_path_and_a_fifo_manifest_through_weftd() {
    use std::os::unix::fs::PermissionsExt;
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
    let dir = node.dir.path().to_path_buf();
    // A runtime with runc's command line that records each call, then is runc.
    let calls = dir.join("runtime-calls");
    let runtime = dir.join("recording-runc");
    std::fs::write(
        &runtime,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\nexec runc \"$@\"\n",
            calls.display()
        ),
    )
    .unwrap_or_else(|e| panic!("write {}: {e}", runtime.display()));
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", runtime.display()));
    let host_dir = dir.join("host-dir");
    std::fs::create_dir(&host_dir).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(host_dir.join("in"), "from-host\n").unwrap_or_else(|e| panic!("{e}"));
    let fifo = node.manifest_path("fifo.yaml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .unwrap_or_else(|e| panic!("mkfifo {}: {e}", fifo.display()));
    node.put_manifest(
        "hostpath.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: hostpath, namespace: NS}}
spec:
  terminationGracePeriodSeconds: 1
  volumes:
    - name: host
      hostPath: {{path: {}, type: Directory}}
  containers:
    - name: writer
      image: busybox
      command: [sh, -c, 'cat /host/in; echo from-pod > /host/out; exec sleep 3600']
      volumeMounts: [{{name: host, mountPath: /host}}]
      # Accepted (and not enforced): the pod must run.
      resources: {{limits: {{ephemeral-storage: 1Gi}}}}
"#,
            host_dir.display()
        ),
    );
    let mut args = n.base_args();
    args.extend([
        "--oci-runtime".to_string(),
        runtime.display().to_string(),
        "--pids-limit".to_string(),
        "48".to_string(),
    ]);
    node.start_weftd(&args);
    let rec = node.wait_status("hostpath", "Running");
    node.wait_log(&rec, "writer", "from-host");
    let written = wait_for(WAIT, "the pod's file in the node's directory", || {
        std::fs::read_to_string(host_dir.join("out")).ok()
    });
    assert_eq!(written, "from-pod\n");
    let (pod_dir, container) = container_dir(&node, &rec, "writer");
    let pod_dir_mode = std::fs::metadata(&pod_dir)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or_else(|e| panic!("{}: {e}", pod_dir.display()));
    assert_eq!(pod_dir_mode, 0o700, "mode of {}", pod_dir.display());
    let id = container
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let pids_max = ["/sys/fs/cgroup/pids/weft", "/sys/fs/cgroup/weft"]
        .iter()
        .find_map(|d| std::fs::read_to_string(Path::new(d).join(&id).join("pids.max")).ok());
    assert_eq!(
        pids_max.as_deref().map(str::trim),
        Some("48"),
        "--pids-limit not applied"
    );
    let recorded = std::fs::read_to_string(&calls).unwrap_or_default();
    assert!(
        recorded.lines().any(|l| l.contains(&id)),
        "--oci-runtime was not called for container {id}: {recorded:?}"
    );
    node.kill_weftd();
}

/// At start, a pod from the manifest URL is kept while the URL does not answer, adopted (not
/// restarted) when it serves the same pod again, and replaced when it serves another.
#[test]
fn a_manifest_url_pod_is_kept_at_start_until_the_url_answers() {
    let mut node = PodNode::new();
    let server = ManifestServer::start(&node.netns);
    let text = |cmd: &str| {
        MYAPP
            .replace("myapp-pod", "url-start")
            .replace("sleep 3600", cmd)
    };
    server.serve(Some(text("sleep 3600").replace("NS", &node.ns)));
    node.stop_controller();
    node.cfg.manifest_url = Some(server.url());
    node.cfg.manifest_url_interval = Duration::from_secs(1);
    node.start();
    let first = node.wait_status("url-start", "Running");
    let id = first.pod.status.container_statuses[0].container_id.clone();

    // Restarted while the URL answers 404: the pod is kept.
    node.stop_controller();
    server.serve(None);
    node.start();
    std::thread::sleep(Duration::from_secs(3));
    let kept = node
        .record("url-start")
        .unwrap_or_else(|| panic!("the URL pod was removed while the URL did not answer"));
    assert_eq!(kept.pod.metadata.uid, first.pod.metadata.uid);
    assert_eq!(status::columns(&kept.pod).status, "Running");

    // The same pod served again: adopted, the container untouched.
    server.serve(Some(text("sleep 3600").replace("NS", &node.ns)));
    std::thread::sleep(Duration::from_secs(3));
    let adopted = node.wait_status("url-start", "Running");
    assert_eq!(adopted.pod.metadata.uid, first.pod.metadata.uid);
    assert_eq!(adopted.pod.status.container_statuses[0].container_id, id);
    assert_eq!(adopted.pod.status.container_statuses[0].restart_count, 0);

    // Restarted while the URL is down, then another pod served: the old one is replaced.
    node.stop_controller();
    server.serve(None);
    node.start();
    server.serve(Some(text("sleep 3601").replace("NS", &node.ns)));
    let replaced = wait_for(WAIT, "the URL pod replaced", || {
        node.record("url-start")
            .filter(|r| r.pod.metadata.uid != first.pod.metadata.uid)
            .filter(|r| status::columns(&r.pod).status == "Running")
    });
    assert_ne!(replaced.pod.status.container_statuses[0].container_id, id);
    wait_for(WAIT, "the old pod's directory gone", || {
        (node.pod_dirs().len() == 1).then_some(())
    });
}

/// docs/examples/myapp-pod-init.yaml, the essay's init-container pod: Init:0/2 while the first
/// init container waits for its service, Init:1/2 while the second waits, Running with the app's
/// log once both have run to completion in order.
#[test]
fn docs_example_init_container_myapp_pod_waits_for_its_services_in_order() {
    let node = PodNode::new();
    let services = node.dir.path().join("services");
    std::fs::create_dir_all(&services).unwrap_or_else(|e| panic!("{e}"));
    let manifest = example("myapp-pod-init.yaml").replace(
        "/run/weft-example/services",
        &services.display().to_string(),
    );
    node.put_manifest("myapp-init.yaml", &manifest);
    node.wait_status("myapp-pod-init", "Init:0/2");
    // Announcing mydb first changes nothing: the init containers run in order.
    std::fs::write(services.join("mydb"), "").unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        node.status("myapp-pod-init").as_deref(),
        Some("Init:0/2"),
        "the second init container ran before the first finished"
    );
    std::fs::write(services.join("myservice"), "").unwrap_or_else(|e| panic!("{e}"));
    let rec = node.wait_status("myapp-pod-init", "Running");
    node.wait_log(&rec, "myapp-container", "The app is running!");
    node.remove_manifest("myapp-init.yaml");
    wait_for(WAIT, "pod removed", || {
        node.pod_dirs().is_empty().then_some(())
    });
    node.assert_clean();
}
