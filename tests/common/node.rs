//! [`Node`]: a node namespace on the underlay running weftd.

use super::*;
use std::os::unix::ffi::OsStrExt as _;

/// How weftd was started on a node, for restarts.
#[derive(Debug, Clone)]
struct Launch {
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

/// A node: a namespace on the underlay at `192.0.2.(10+index)` running (when started) the real
/// `weftd` with `--iface eth0`, its subnet file, state dir and log in a per-node temp dir.
#[derive(Debug)]
pub struct Node {
    weftd: Mutex<Option<Child>>,
    launch: Mutex<Option<Launch>>,
    pods: AtomicU32,
    index: u32,
    ip: String,
    etcd_endpoint: String,
    ns: Netns,
    dir: tempfile::TempDir,
}

impl Node {
    /// Port of weftd's `--healthz-addr` (on 127.0.0.1 inside each node namespace).
    pub const HEALTHZ_PORT: u16 = 9102;

    /// Creates node `index` (1-based) at 192.0.2.(10+index) on `underlay`, with IP forwarding on.
    pub fn new(underlay: &Underlay, index: u32, etcd_endpoint: &str) -> Node {
        assert!(
            (1..=200).contains(&index),
            "node index {index} out of 1..=200"
        );
        let ns = Netns::new(&format!("node{index}"));
        let ip = format!("192.0.2.{}", 10 + index);
        underlay.attach(&ns, &ip);
        ns.sysctl("net.ipv4.ip_forward", "1");
        let dir = temp_dir(&format!("node{index}"));
        Node {
            weftd: Mutex::new(None),
            launch: Mutex::new(None),
            pods: AtomicU32::new(0),
            index,
            ip,
            etcd_endpoint: etcd_endpoint.to_string(),
            ns,
            dir,
        }
    }

    /// The node's index (1-based).
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        self.ns.name()
    }

    /// The node namespace.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// The node's underlay address (its Flannel `PublicIP`).
    pub fn public_ip(&self) -> &str {
        &self.ip
    }

    /// The per-node temp dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `--subnet-file`.
    pub fn subnet_file(&self) -> PathBuf {
        self.dir.path().join("subnet.env")
    }

    /// `--state-dir`.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// weftd's stdout+stderr, appended across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("weftd.log")
    }

    /// weftd's log so far.
    pub fn log(&self) -> String {
        read_to_string_lossy(&self.log_path())
    }

    /// The last `n` lines of weftd's log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log(), n)
    }

    /// The argument vector weftd is started with (before `extra_args`).
    pub fn base_args(&self) -> Vec<String> {
        vec![
            "--etcd-endpoints".into(),
            self.etcd_endpoint.clone(),
            "--iface".into(),
            "eth0".into(),
            "--subnet-file".into(),
            self.subnet_file().to_string_lossy().into_owned(),
            "--state-dir".into(),
            self.state_dir().to_string_lossy().into_owned(),
            "--healthz-addr".into(),
            format!("127.0.0.1:{}", Self::HEALTHZ_PORT),
        ]
    }

    /// Starts the real weftd in the node namespace with [`Node::base_args`] + `extra_args`.
    /// `RUST_LOG` is taken from `WEFT_TEST_LOG` (default `info,weft=debug`).
    pub fn start_weftd(&self, extra_args: &[&str]) {
        let mut args = self.base_args();
        args.extend(extra_args.iter().map(|a| a.to_string()));
        self.launch_weftd(Launch {
            args,
            envs: Vec::new(),
        });
    }

    /// Starts weftd with no command-line arguments at all, configured only by `envs`
    /// (`WEFTD_<FLAG>` variables); log and restart as with [`Node::start_weftd`].
    pub fn start_weftd_env(&self, envs: &[(&str, &str)]) {
        self.launch_weftd(Launch {
            args: Vec::new(),
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        });
    }

    fn launch_weftd(&self, launch: Launch) {
        self.spawn_weftd(&launch);
        *self.launch.lock().unwrap_or_else(|p| p.into_inner()) = Some(launch);
    }

    fn spawn_weftd(&self, launch: &Launch) {
        let Launch { args, envs } = launch;
        let mut guard = self.weftd.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(child) = guard.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                panic!("weftd on {} is already running", self.name());
            }
        }
        let env_text: Vec<String> = envs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        log_marker(
            &self.log_path(),
            &format!("start weftd {} {}", env_text.join(" "), args.join(" ")),
        );
        let (out, err) = log_stdio(&self.log_path());
        let level = std::env::var("WEFT_TEST_LOG").unwrap_or_else(|_| "info,weft=debug".into());
        let mut cmd = self.ns.command(env!("CARGO_BIN_EXE_weftd"));
        cmd.args(args)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", level)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        match cmd.spawn() {
            Ok(child) => *guard = Some(child),
            Err(e) => panic!("cannot spawn weftd {cmd:?}: {e}"),
        }
    }

    /// True while weftd runs.
    pub fn is_running(&self) -> bool {
        let mut guard = self.weftd.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The pid of the weftd process last started (running or not yet reaped).
    pub fn weftd_pid(&self) -> Option<u32> {
        let guard = self.weftd.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().map(Child::id)
    }

    /// weftd's exit status if it has exited (None while running or never started).
    pub fn exit_status(&self) -> Option<ExitStatus> {
        let mut guard = self.weftd.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILLs weftd (no cleanup runs), and reaps it.
    pub fn kill9(&self) {
        let mut guard = self.weftd.lock().unwrap_or_else(|p| p.into_inner());
        match guard.take() {
            Some(mut child) => {
                kill_and_reap(&mut child);
                log_marker(&self.log_path(), "weftd killed with SIGKILL");
            }
            None => panic!("kill9: weftd on {} was never started", self.name()),
        }
    }

    /// SIGTERMs weftd and waits (10 s) for it to exit; returns its exit status.
    pub fn stop(&self) -> ExitStatus {
        let mut guard = self.weftd.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mut child) = guard.take() else {
            panic!("stop: weftd on {} was never started", self.name());
        };
        let status = terminate(
            &mut child,
            &format!("weftd on {}", self.name()),
            Duration::from_secs(10),
        );
        log_marker(&self.log_path(), &format!("weftd exited: {status}"));
        status
    }

    /// Starts weftd again with the arguments of the last [`Node::start_weftd`] (stopping it first
    /// with SIGTERM if it still runs).
    pub fn restart(&self) {
        if self.is_running() {
            self.stop();
        }
        let launch = self
            .launch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match launch {
            Some(launch) => self.spawn_weftd(&launch),
            None => panic!("restart: weftd on {} was never started", self.name()),
        }
    }

    /// The control socket in `--state-dir` of the userspace WireGuard data path of
    /// `flannel-wg`.
    pub fn wireguard_socket(&self) -> PathBuf {
        self.state_dir().join("flannel-wg.sock")
    }

    /// The pids of the WireGuard data path processes weftd started for this node (their
    /// command line names a socket in this node's state dir).
    pub fn wireguard_datapath_pids(&self) -> Vec<i32> {
        let state = self.state_dir();
        let state = state.as_os_str().as_bytes();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let words: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
                words.contains(&&b"wireguard-datapath"[..])
                    && words.iter().any(|w| w.starts_with(state))
            })
            .collect()
    }

    /// The subnet file's content, if it exists.
    pub fn subnet_env(&self) -> Option<String> {
        std::fs::read_to_string(self.subnet_file()).ok()
    }

    /// Waits for the subnet file and returns its content.
    /// Fails at once, with the log tail, if weftd exits before writing it.
    pub fn wait_subnet_env(&self, timeout: Duration) -> String {
        self.wait_for(timeout, "subnet.env to be written", || {
            let env = self.subnet_env();
            if env.is_none() {
                if let Some(status) = self.exit_status() {
                    panic!(
                        "weftd on {} exited with {status} before writing subnet.env\n----- weftd log, last 40 lines -----\n{}",
                        self.name(),
                        self.log_tail(40)
                    );
                }
            }
            env
        })
    }

    /// The node's subnet (`10.244.3.0/24`) from its subnet file.
    pub fn subnet(&self) -> Option<String> {
        self.subnet_env().as_deref().and_then(subnet_of)
    }

    /// The etcd key of this node's lease, from its subnet file.
    pub fn lease_key(&self) -> Option<String> {
        self.subnet().map(|s| lease_key(&s))
    }

    /// Like [`wait_until`], but prints weftd's log tail when it times out.
    pub fn wait_until(&self, timeout: Duration, what: &str, predicate: impl FnMut() -> bool) {
        let mut predicate = predicate;
        self.wait_for(timeout, what, || predicate().then_some(()))
    }

    /// Like [`wait_for`], but prints weftd's log tail when it times out.
    pub fn wait_for<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut probe: impl FnMut() -> Option<T>,
    ) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = probe() {
                return v;
            }
            if start.elapsed() > timeout {
                let state = match self.exit_status() {
                    Some(s) => format!("weftd exited with {s} (signal {:?})", s.signal()),
                    None if self.is_running() => "weftd running".to_string(),
                    None => "weftd not running".to_string(),
                };
                panic!(
                    "timed out after {timeout:?} on {} waiting for {what} ({state})\n----- weftd log, last 40 lines -----\n{}",
                    self.name(),
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `ip -j route show` (main table).
    pub fn routes(&self) -> Vec<Value> {
        self.ns.ip_json(&["route", "show"])
    }

    /// The route whose `dst` is `subnet` (`10.244.3.0/24`), if any.
    pub fn route_to(&self, subnet: &str) -> Option<Value> {
        self.routes()
            .into_iter()
            .find(|r| r["dst"].as_str() == Some(subnet))
    }

    /// `ip -j neigh show` (all devices).
    pub fn neighbours(&self) -> Vec<Value> {
        self.ns.ip_json(&["neigh", "show"])
    }

    /// `bridge -j fdb show` (all devices).
    pub fn fdb(&self) -> Vec<Value> {
        self.ns.bridge_json(&["fdb", "show"])
    }

    /// `ip -j -d link show dev NAME`, if the device exists.
    pub fn link(&self, name: &str) -> Option<Value> {
        let out = self
            .ns
            .exec(&["ip", "-j", "-d", "link", "show", "dev", name]);
        if !out.status.success() {
            return None;
        }
        parse_json_list(&String::from_utf8_lossy(&out.stdout), "ip -j -d link show")
            .into_iter()
            .next()
    }

    /// The MAC address of device `dev` (e.g. `flannel.1`), if it exists.
    pub fn mac_of(&self, dev: &str) -> Option<String> {
        self.link(dev)
            .and_then(|l| l["address"].as_str().map(str::to_string))
    }

    /// True if the three Flannel VXLAN entries for a peer exist on `dev`, exactly: route
    /// `subnet via X.0 dev DEV onlink`, permanent neighbour `X.0 lladdr MAC`, FDB `MAC dst PUBLIC_IP`.
    pub fn vxlan_peer_programmed(
        &self,
        dev: &str,
        subnet: &str,
        public_ip: &str,
        mac: &str,
    ) -> bool {
        let gw = subnet_address(subnet);
        let route_ok = self.route_to(subnet).is_some_and(|r| {
            r["gateway"].as_str() == Some(gw.as_str())
                && r["dev"].as_str() == Some(dev)
                && r["flags"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|x| x == "onlink"))
        });
        let neigh_ok = self.neighbours().iter().any(|n| {
            n["dst"].as_str() == Some(gw.as_str())
                && n["dev"].as_str() == Some(dev)
                && n["lladdr"].as_str() == Some(mac)
                && n["state"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|x| x == "PERMANENT"))
        });
        let fdb_ok = self.fdb().iter().any(|f| {
            f["mac"].as_str() == Some(mac)
                && f["ifname"].as_str() == Some(dev)
                && f["dst"].as_str() == Some(public_ip)
        });
        route_ok && neigh_ok && fdb_ok
    }

    /// True if none of a peer's entries is left: no route to `subnet`, no neighbour for its
    /// `X.0`, no FDB entry for `mac` (on any device).
    pub fn vxlan_peer_absent(&self, subnet: &str, mac: &str) -> bool {
        let gw = subnet_address(subnet);
        self.route_to(subnet).is_none()
            && !self
                .neighbours()
                .iter()
                .any(|n| n["dst"].as_str() == Some(gw.as_str()))
            && !self.fdb().iter().any(|f| f["mac"].as_str() == Some(mac))
    }

    /// `nft list ruleset` inside the node.
    pub fn nft_ruleset(&self) -> String {
        self.ns.exec_ok(&["nft", "list", "ruleset"])
    }

    /// Waits until weftd's `/readyz` answers 200.
    pub fn wait_ready(&self, timeout: Duration) {
        self.wait_until(timeout, "/readyz to answer 200", || {
            self.http_get("/readyz")
                .is_some_and(|(code, _)| code == 200)
        })
    }

    /// The value of `weft_peer_<name>{peer="<peer>"}` on weftd's /metrics (the prober's health
    /// of a peer, named by its subnet).
    pub fn peer_metric(&self, name: &str, peer: &str) -> Option<String> {
        let (_, body) = self.http_get("/metrics")?;
        let prefix = format!("weft_peer_{name}{{peer=\"{peer}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(str::to_string)
    }

    /// GET `path` from weftd's healthz server; `(status code, body)`, None if not reachable.
    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, Self::HEALTHZ_PORT));
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        let stream = self
            .ns
            .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)));
        let mut stream = stream.ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream.write_all(request.as_bytes()).ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).ok()?;
        let response = String::from_utf8_lossy(&response).into_owned();
        let status = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((status, body))
    }

    /// A pod wired into this node's subnet as written in subnet.env (gateway + MTU from it).
    pub fn add_pod(&self) -> Pod {
        let env = self.subnet_env().unwrap_or_else(|| {
            panic!(
                "add_pod on {}: no subnet.env yet (weftd not ready)",
                self.name()
            )
        });
        let vars: BTreeMap<&str, &str> = env.lines().filter_map(|l| l.split_once('=')).collect();
        let gateway = vars
            .get("FLANNEL_SUBNET")
            .copied()
            .unwrap_or_else(|| panic!("add_pod on {}: no FLANNEL_SUBNET in {env:?}", self.name()));
        let mtu = vars
            .get("FLANNEL_MTU")
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("add_pod on {}: no FLANNEL_MTU in {env:?}", self.name()));
        self.add_pod_in(gateway, mtu)
    }

    /// A pod wired by hand: bridge `cni0` in the node with `gateway` (`10.244.3.1/24`, created
    /// if missing), a veth into a new pod namespace, the pod's address `.(10+k)` of that subnet,
    /// MTU `mtu`, default route via the gateway.
    pub fn add_pod_in(&self, gateway: &str, mtu: u32) -> Pod {
        let gw: Ipv4Network = gateway
            .parse()
            .unwrap_or_else(|e| panic!("add_pod_in {}: bad gateway {gateway:?}: {e}", self.name()));
        let k = self.pods.fetch_add(1, Ordering::Relaxed);
        let ip = Ipv4Addr::from(u32::from(gw.network()) + 10 + k);
        assert!(
            gw.contains(ip),
            "add_pod_in {}: subnet {gateway} is full",
            self.name()
        );
        let pod = Pod {
            ns: Netns::new(&format!("n{}p{k}", self.index)),
            ip: ip.to_string(),
        };
        wire_pod(
            &self.ns,
            &pod.ns,
            &format!("vp{k}"),
            gateway,
            &format!("{ip}/{}", gw.prefix()),
            mtu,
        );
        pod
    }
}

/// Wires `pod` to `node`: bridge `cni0` with `gateway` (created if missing) in the node, veth
/// `host_veth` on it whose other end is `eth0` in the pod with `pod_cidr`, MTU, default route.
pub fn wire_pod(
    node: &Netns,
    pod: &Netns,
    host_veth: &str,
    gateway: &str,
    pod_cidr: &str,
    mtu: u32,
) {
    let mtu = mtu.to_string();
    let has_bridge = node
        .exec(&["ip", "link", "show", "dev", "cni0"])
        .status
        .success();
    if !has_bridge {
        node.ip(&["link", "add", "cni0", "mtu", &mtu, "type", "bridge"]);
        node.ip(&["addr", "add", gateway, "dev", "cni0"]);
        node.ip(&["link", "set", "cni0", "up"]);
    }
    node.ip(&[
        "link",
        "add",
        host_veth,
        "mtu",
        &mtu,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        pod.name(),
    ]);
    node.ip(&["link", "set", host_veth, "master", "cni0", "up"]);
    pod.ip(&["addr", "add", pod_cidr, "dev", "eth0"]);
    pod.ip(&["link", "set", "eth0", "up"]);
    let gw_ip = gateway.split('/').next().unwrap_or(gateway);
    pod.ip(&["route", "add", "default", "via", gw_ip]);
}

impl Drop for Node {
    fn drop(&mut self) {
        let mut guard = self.weftd.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut child) = guard.take() {
            kill_and_reap(&mut child);
        }
        // weftd's userspace WireGuard data path runs in a session of its own and outlives it.
        for pid in self.wireguard_datapath_pids() {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if std::thread::panicking() {
            eprintln!(
                "----- weftd log of {} ({}), last 40 lines -----\n{}",
                self.name(),
                self.ip,
                self.log_tail(40)
            );
        }
    }
}
