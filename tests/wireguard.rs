//! Integration tests of the WireGuard backend (Flannel's `wireguard` type) on the cluster
//! harness: real etcd, real weftd, real network namespaces and kernel devices. This kernel has
//! no WireGuard module, so weftd runs its userspace data path; the interop test runs Debian's
//! `wireguard-go`, configured with `wg` as flanneld configures its device.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use base64::Engine as _;
use common::*;

const WG_CONFIG: &str = r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.100.0","SubnetMax":"10.244.199.0","Backend":{"Type":"wireguard"}}"#;
/// Flannel's default listen port.
const WG_PORT: u16 = 51820;
/// Sent in the clear between two pods; must never show on the underlay.
const MARKER: &[u8] = b"weft-plaintext-marker-4f1c9a7e";

/// The lease value's `BackendData` of `node`.
fn backend_data(cluster: &Cluster, node: &Node) -> serde_json::Value {
    let key = node.lease_key().expect("node has a lease");
    let value = cluster.etcd.get(&key).expect("lease value");
    let v: serde_json::Value = serde_json::from_str(&value).expect("lease is JSON");
    v["BackendData"].clone()
}

/// A pod on node 1 and one on node 2 of `cluster`, once they talk TCP both ways.
fn pods_talking(cluster: &Cluster, what: &str) -> (Pod, Pod) {
    let a = cluster.node(0).add_pod();
    let b = cluster.node(1).add_pod();
    wait_until(Duration::from_secs(20), what, || {
        a.tcp_check(&b) && b.tcp_check(&a)
    });
    (a, b)
}

/// Waits until pods `a` (node 0) and `b` (node 1) talk TCP both ways again; on a timeout the
/// panic shows what each node's data path process says of its peer (`get=1`: handshake, bytes)
/// and each weftd's log tail, so a failure tells whether a handshake or the data stalled.
fn pods_talk_again(cluster: &Cluster, a: &Pod, b: &Pod, timeout: Duration, what: &str) {
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        if a.tcp_check(b) && b.tcp_check(a) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut report = String::new();
    for i in 0..2 {
        let node = cluster.node(i);
        let socket = node.wireguard_socket();
        let device = if socket.exists() {
            control_exchange(&socket, b"get=1\n\n")
                .lines()
                .filter(|l| !l.starts_with("private_key="))
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            "no control socket".to_string()
        };
        report.push_str(&format!(
            "----- {}: data path {:?}: {device}\n{}\n",
            node.name(),
            node.wireguard_datapath_pids(),
            node.log_tail(15)
        ));
    }
    panic!("timed out after {timeout:?} waiting for {what}\n{report}");
}

/// Sends `payload` over TCP from `from` to a listener in `to`; returns what arrived.
fn send_over_tcp(from: &Pod, to: &Pod, payload: &[u8]) -> Vec<u8> {
    let listener = to
        .netns()
        .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)))
        .expect("bind in pod");
    let port = listener.local_addr().expect("listener address").port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        got
    });
    let target: SocketAddr = format!("{}:{port}", to.ip()).parse().expect("target");
    let mut stream = from
        .netns()
        .run(|| TcpStream::connect_timeout(&target, Duration::from_secs(5)))
        .expect("connect pod to pod");
    stream.write_all(payload).expect("send payload");
    drop(stream);
    server.join().expect("receiver thread")
}

#[test]
fn wireguard_pods_on_three_nodes_talk_and_the_underlay_carries_only_ciphertext() {
    let cluster = Cluster::new(3, WG_CONFIG);
    cluster.start();
    let pods: Vec<Pod> = (0..3).map(|i| cluster.node(i).add_pod()).collect();

    // Flannel's formats: lease BackendData, device, MTU.
    for i in 0..3 {
        let node = cluster.node(i);
        let data = backend_data(&cluster, node);
        assert_eq!(data["Port"], WG_PORT, "{data}");
        let key = data["PublicKey"].as_str().expect("PublicKey string");
        assert_eq!(key.len(), 44, "base64 of 32 bytes: {key}");
        let value = cluster.etcd.get(&node.lease_key().unwrap()).unwrap();
        assert!(
            value.starts_with(&format!(
                r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"wireguard","BackendData":{{"PublicKey":"#,
                node.public_ip()
            )),
            "{value}"
        );
        let link = node.link("flannel-wg").expect("flannel-wg exists");
        assert_eq!(
            link["mtu"], 1420,
            "flannel-wg MTU is eth0 1500 - 80: {link}"
        );
        let env = node.subnet_env().unwrap_or_default();
        assert!(env.contains("FLANNEL_MTU=1420"), "{env}");
        let route = node.route_to("10.244.0.0/16").expect("cluster route");
        assert_eq!(route["dev"], "flannel-wg", "{route}");
        assert!(
            node.log().contains("using the userspace data path"),
            "the data path choice is logged:\n{}",
            node.log_tail(30)
        );
    }

    for (i, a) in pods.iter().enumerate() {
        for (j, b) in pods.iter().enumerate() {
            if i != j {
                wait_until(
                    Duration::from_secs(20),
                    &format!("pod {i} reaches pod {j}"),
                    || a.tcp_check(b),
                );
            }
        }
    }

    let capture = Capture::start(
        &cluster.underlay,
        &format!("ip and not igmp and not host {}", etcd_ip(&cluster)),
    );
    let mut payload = Vec::new();
    for _ in 0..200 {
        payload.extend_from_slice(MARKER);
    }
    assert_eq!(send_over_tcp(&pods[0], &pods[1], &payload), payload);
    assert_eq!(send_over_tcp(&pods[2], &pods[0], &payload), payload);
    let (raw, lines) = capture.finish();
    assert!(lines.len() >= 4, "the capture saw the traffic: {lines:?}");
    assert!(
        !raw.windows(MARKER.len()).any(|w| w == MARKER),
        "the plaintext marker crossed the underlay"
    );
    for line in &lines {
        let port = format!(".{WG_PORT} ");
        let ok = line.contains(" UDP, ")
            && line.matches(&port).count() + line.matches(&format!(".{WG_PORT}:")).count() == 2;
        assert!(ok, "not WireGuard UDP {WG_PORT} <-> {WG_PORT}: {line}");
    }
}

#[test]
fn wireguard_private_key_is_0600_kept_across_restarts_and_never_leaves_the_node() {
    let cluster = Cluster::new(2, WG_CONFIG);
    cluster.start();
    let a = cluster.node(0).add_pod();
    let b = cluster.node(1).add_pod();
    wait_until(Duration::from_secs(20), "pods talk", || a.tcp_check(&b));
    let node = cluster.node(0);
    let key_file = node.state_dir().join("wireguard.key");
    let meta = std::fs::metadata(&key_file).expect("key file in --state-dir");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let private = std::fs::read_to_string(&key_file).expect("read key");
    assert_eq!(private.len(), 44, "base64 key as Flannel's wgkey");
    let public = backend_data(&cluster, node)["PublicKey"].clone();

    let probe = a.traffic_probe(&b);
    probe.wait_attempts(10);
    // SIGTERM on one node, SIGKILL on the other; each new weftd finds the data path process
    // and brings its peers up to date before the probe goes on.
    node.restart();
    node.wait_ready(Duration::from_secs(30));
    let seen = probe.stats().attempts;
    probe.wait_attempts(seen + 20);
    cluster.node(1).kill9();
    cluster.node(1).start_weftd(&[]);
    cluster.node(1).wait_ready(Duration::from_secs(30));
    let seen = probe.stats().attempts;
    probe.wait_attempts(seen + 20);
    let stats = probe.stop();
    eprintln!("wireguard restarts: {stats:?}");
    // The data path runs in its own process, not in weftd: a restart loses no packet.
    assert_eq!(
        stats.failures, 0,
        "probe datagrams lost across a SIGTERM and a SIGKILL restart: {stats:?}"
    );
    assert!(
        stats.longest_gap < Duration::from_secs(2),
        "traffic stopped for {:?} across restarts: {stats:?}",
        stats.longest_gap
    );
    assert!(
        a.tcp_check(&b) && b.tcp_check(&a),
        "pods talk after restarts"
    );
    assert_eq!(
        std::fs::read_to_string(&key_file).unwrap(),
        private,
        "re-keyed"
    );
    assert_eq!(backend_data(&cluster, node)["PublicKey"], public);

    for (k, v) in cluster.etcd.get_prefix(ETCD_PREFIX) {
        assert!(!v.contains(private.trim()), "private key in etcd at {k}");
    }
    for i in 0..2 {
        assert!(
            !cluster.node(i).log().contains(private.trim()),
            "private key in the log"
        );
    }
}

#[test]
fn wireguard_key_file_env_is_honoured_as_for_flanneld() {
    let cluster = Cluster::new(1, WG_CONFIG);
    let node = cluster.node(0);
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("flannel/wgkey");
    // A key generated by wg, in Flannel's file.
    let private = host_ok("wg", &["genkey"]);
    let public = wg_pubkey(private.trim());
    std::fs::create_dir_all(key_file.parent().unwrap()).unwrap();
    std::fs::write(&key_file, &private).unwrap();
    let mut args: Vec<(String, String)> = Vec::new();
    let base = node.base_args();
    for pair in base.chunks(2) {
        let flag = pair[0]
            .trim_start_matches("--")
            .replace('-', "_")
            .to_uppercase();
        args.push((format!("WEFTD_{flag}"), pair[1].clone()));
    }
    args.push((
        "WIREGUARD_KEY_FILE".to_string(),
        key_file.to_string_lossy().into_owned(),
    ));
    let envs: Vec<(&str, &str)> = args.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    node.start_weftd_env(&envs);
    node.wait_subnet_env(Duration::from_secs(30));
    assert_eq!(backend_data(&cluster, node)["PublicKey"], public.as_str());
    assert!(
        !node.state_dir().join("wireguard.key").exists(),
        "a second key was made in --state-dir"
    );
}

/// `wg pubkey` of `private`.
fn wg_pubkey(private: &str) -> String {
    let mut child = std::process::Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("wg pubkey (scripts/setup.sh installs wireguard-tools)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(private.as_bytes())
        .expect("write key");
    let out = child.wait_with_output().expect("wg pubkey");
    assert!(out.status.success(), "wg pubkey failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A Flannel wireguard node nobody here wrote: Debian's `wireguard-go` in a namespace on the
/// underlay, its device configured with `wg` and `ip` as flanneld's `wgDevice` configures
/// `flannel-wg`, its lease written as flanneld writes it.
struct FlannelWgNode {
    ns: Netns,
    /// wireguard-go's control socket lives in /var/run/wireguard, shared by every namespace,
    /// so the device gets a per-test name (a lease does not carry it).
    ifname: String,
    daemon: Child,
    public_key: String,
    _dir: tempfile::TempDir,
}

impl FlannelWgNode {
    const IP: &'static str = "192.0.2.50";

    fn start(cluster: &Cluster) -> FlannelWgNode {
        let ns = Netns::new("fwg");
        cluster.underlay.attach(&ns, Self::IP);
        ns.sysctl("net.ipv4.ip_forward", "1");
        let ifname = format!("fwg{}", std::process::id() % 100_000);
        let daemon = ns
            .command("wireguard-go")
            .args(["-f", &ifname])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("wireguard-go (scripts/setup.sh installs it): {e}"));
        let dir = tempfile::tempdir().expect("key dir");
        let key_file = dir.path().join("wgkey");
        let private = host_ok("wg", &["genkey"]);
        std::fs::write(&key_file, private.trim()).expect("write key");
        wait_until(Duration::from_secs(10), "wireguard-go device up", || {
            ns.exec(&["ip", "link", "show", "dev", &ifname])
                .status
                .success()
        });
        // newWGDevice: private key and listen port; MTU = 1500 - 80.
        ns.exec_ok(&[
            "wg",
            "set",
            &ifname,
            "private-key",
            &key_file.to_string_lossy(),
            "listen-port",
            "51820",
        ]);
        ns.ip(&["link", "set", &ifname, "mtu", "1420"]);
        // Configure: <subnet>.0/32 on the device, up, route for the whole Network, scope link.
        ns.ip(&["addr", "add", "10.244.200.0/32", "dev", &ifname]);
        ns.ip(&["link", "set", &ifname, "up"]);
        ns.ip(&[
            "route",
            "replace",
            "10.244.0.0/16",
            "dev",
            &ifname,
            "scope",
            "link",
        ]);
        let node = FlannelWgNode {
            ns,
            ifname,
            daemon,
            public_key: wg_pubkey(private.trim()),
            _dir: dir,
        };
        let value = format!(
            r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"wireguard","BackendData":{{"PublicKey":"{}","Port":51820}}}}"#,
            Self::IP,
            node.public_key
        );
        cluster
            .etcd
            .put_with_ttl(&lease_key("10.244.200.0-24"), &value, 3600);
        node
    }

    /// addPeer for a weft node's lease: endpoint PublicIP:Port, allowed-ips its subnet.
    fn add_peer(&self, cluster: &Cluster, node: &Node) {
        let data = backend_data(cluster, node);
        let key = data["PublicKey"].as_str().expect("PublicKey");
        let endpoint = format!("{}:{}", node.public_ip(), data["Port"]);
        let subnet = node.subnet().expect("weft node subnet");
        self.ns.exec_ok(&[
            "wg",
            "set",
            &self.ifname,
            "peer",
            key,
            "endpoint",
            &endpoint,
            "allowed-ips",
            &subnet,
        ]);
    }
}

impl Drop for FlannelWgNode {
    fn drop(&mut self) {
        // SIGTERM lets wireguard-go remove its control socket.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.daemon.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.daemon.wait();
    }
}

#[test]
fn wireguard_interoperates_with_wireguard_go_configured_as_flanneld() {
    let cluster = Cluster::new(2, WG_CONFIG);
    cluster.start();
    let flannel = FlannelWgNode::start(&cluster);
    for i in 0..2 {
        flannel.add_peer(&cluster, cluster.node(i));
    }
    let pod_ns = Netns::new("fwgp");
    wire_pod(
        &flannel.ns,
        &pod_ns,
        "vp0",
        "10.244.200.1/24",
        "10.244.200.10/24",
        1420,
    );
    for i in 0..2 {
        let pod = cluster.node(i).add_pod();
        wait_until(
            Duration::from_secs(20),
            &format!("weft pod on node {i} reaches the pod behind wireguard-go"),
            || tcp_source_seen(pod.netns(), &pod_ns, "10.244.200.10").is_some(),
        );
        let seen = tcp_source_seen(&pod_ns, pod.netns(), pod.ip());
        assert_eq!(
            seen,
            Some(Ipv4Addr::new(10, 244, 200, 10)),
            "the pod behind wireguard-go reaches the weft pod on node {i}, unmasqueraded"
        );
    }
    let shown = flannel
        .ns
        .exec_ok(&["wg", "show", &flannel.ifname, "latest-handshakes"]);
    assert_eq!(
        shown.lines().filter(|l| !l.ends_with("\t0")).count(),
        2,
        "wireguard-go shook hands with both weft nodes: {shown}"
    );
}

#[test]
fn switching_between_vxlan_and_wireguard_leaves_nothing_of_the_old_backend() {
    let cluster = Cluster::new(2, VXLAN_CONFIG);
    cluster.start();
    let a = cluster.node(0).add_pod();
    let b = cluster.node(1).add_pod();
    wait_until(Duration::from_secs(20), "pods talk over vxlan", || {
        a.tcp_check(&b)
    });
    let n0 = cluster.node(0);
    let peer = cluster.node(1).subnet().expect("node 2 subnet");

    cluster.switch_backend(WG_CONFIG, "wireguard", || true, &a, &b);
    assert!(
        n0.link("flannel.1").is_none(),
        "flannel.1 left behind after vxlan -> wireguard:\n{}",
        cluster.dump()
    );
    assert!(
        n0.route_to(&peer).is_none(),
        "vxlan peer route left behind:\n{}",
        cluster.dump()
    );
    let route = n0
        .route_to("10.244.0.0/16")
        .expect("wireguard cluster route");
    assert_eq!(route["dev"], "flannel-wg", "{route}");

    cluster.switch_backend(VXLAN_CONFIG, "vxlan", || true, &a, &b);
    assert!(
        n0.link("flannel-wg").is_none(),
        "flannel-wg left behind after wireguard -> vxlan:\n{}",
        cluster.dump()
    );
    assert!(
        n0.route_to("10.244.0.0/16").is_none(),
        "wireguard's cluster route left behind:\n{}",
        cluster.dump()
    );
    let route = n0.route_to(&peer).expect("vxlan peer route");
    assert_eq!(route["dev"], "flannel.1", "{route}");
}

/// Sends `request` on a data path's control socket and returns the answer (until the
/// empty line that ends it, or until the process closes the connection).
fn control_exchange(socket: &Path, request: &[u8]) -> String {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("connect to {}: {e}", socket.display()));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // The process may close on a request it will not read whole; the answer is what counts.
    let _ = stream.write_all(request);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// `weft_wireguard_<name>_total` from a node's `/metrics`.
fn wireguard_counter(node: &Node, name: &str) -> Option<u64> {
    let (_, body) = node.http_get("/metrics")?;
    let prefix = format!("weft_wireguard_{name}_total ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_weftd_restart_keeps_the_wireguard_data_path_process_and_a_switch_to_vxlan_stops_it() {
    let cluster = Cluster::new(2, WG_CONFIG);
    cluster.start();
    let (a, b) = pods_talking(&cluster, "pods talk");
    let n0 = cluster.node(0);
    let pids = n0.wireguard_datapath_pids();
    assert_eq!(pids.len(), 1, "one data path process: {pids:?}");
    let pid = pids[0];
    assert_ne!(
        Some(pid as u32),
        n0.weftd_pid(),
        "the data path is not weftd"
    );
    // Its control socket is weftd's only: 0600 in a 0700 directory.
    let socket = n0.wireguard_socket();
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&socket), 0o600, "{}", socket.display());
    assert_eq!(mode(&n0.state_dir()), 0o700);
    // The private key is never on its command line or in its environment.
    let private = std::fs::read_to_string(n0.state_dir().join("wireguard.key")).expect("key");
    for file in ["cmdline", "environ"] {
        let text = std::fs::read(format!("/proc/{pid}/{file}")).expect("read /proc");
        let text = String::from_utf8_lossy(&text);
        assert!(
            !text.contains(private.trim()),
            "private key in /proc/{pid}/{file}"
        );
    }
    // weftd's /metrics shows the data path's counters, fetched over the socket.
    n0.wait_until(
        Duration::from_secs(10),
        "tx and rx counters on /metrics",
        || {
            wireguard_counter(n0, "tx_packets").is_some_and(|n| n > 0)
                && wireguard_counter(n0, "rx_packets").is_some_and(|n| n > 0)
        },
    );

    // Hostile control input is answered with an errno; the process neither dies nor changes.
    let key_hex = key_hex(&private);
    let peer_line = format!("public_key={}\n", "ab".repeat(32));
    let hostile: Vec<(Vec<u8>, &str)> = vec![
        (b"garbage\n\n".to_vec(), "errno=71"),
        (b"set=1\nprivate_key=zz\n\n".to_vec(), "errno=22"),
        (b"set=1\nlisten_port=1\n\n".to_vec(), "errno=22"),
        (
            b"set=1\nreplace_peers=true\nbogus=1\n\n".to_vec(),
            "errno=22",
        ),
        (
            format!("set=1\n{peer_line}endpoint=[2001:db8::1]:0\n\n").into_bytes(),
            "errno=22",
        ),
        (
            format!("set=1\n{peer_line}allowed_ip=10.244.0.0/99\n\n").into_bytes(),
            "errno=22",
        ),
        (b"\xff\xfe\x00set=1\n\n".to_vec(), "errno=71"),
        (vec![b'x'; 1 << 20], ""),
    ];
    for (request, answer) in hostile {
        let got = control_exchange(&socket, &request);
        assert!(
            got.starts_with(answer),
            "{:?} answered {got:?}",
            String::from_utf8_lossy(&request[..request.len().min(80)])
        );
    }
    let got = control_exchange(&socket, b"get=1\n\n");
    assert!(
        got.contains("listen_port=51820\n") && got.ends_with("errno=0\n\n"),
        "{got}"
    );
    assert!(!got.contains(&key_hex), "get=1 answered the private key");
    assert_eq!(
        n0.wireguard_datapath_pids(),
        vec![pid],
        "bad control input ended the data path"
    );
    pods_talk_again(
        &cluster,
        &a,
        &b,
        Duration::from_secs(10),
        "pods talk after hostile control input",
    );

    n0.restart();
    n0.wait_ready(Duration::from_secs(30));
    n0.kill9();
    n0.start_weftd(&[]);
    n0.wait_ready(Duration::from_secs(30));
    assert_eq!(
        n0.wireguard_datapath_pids(),
        vec![pid],
        "a SIGTERM and a SIGKILL restart of weftd kept the data path process"
    );
    assert!(
        n0.log().contains("reused=true"),
        "the new weftd says it found the data path: {}",
        n0.log_tail(30)
    );
    pods_talk_again(
        &cluster,
        &a,
        &b,
        Duration::from_secs(10),
        "pods talk after restarts",
    );

    // A deleted device ends its data path process; weftd starts a new one on a new device.
    n0.netns().ip(&["link", "del", "flannel-wg"]);
    pods_talk_again(
        &cluster,
        &a,
        &b,
        Duration::from_secs(30),
        "pods talk again after flannel-wg was deleted",
    );
    // The old process notices the deletion at its next check (WATCH_MS) and then joins its
    // pumps: it may still be ending when the new one already carries the pods.
    let mut after = n0.wireguard_datapath_pids();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !(after.len() == 1 && after[0] != pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        after = n0.wireguard_datapath_pids();
    }
    assert!(
        after.len() == 1 && after[0] != pid,
        "one new data path process after the device was deleted: {after:?} (was {pid})"
    );
    // Offloads switched off: the process that has them is replaced by one without.
    n0.stop();
    n0.start_weftd(&["--no-udp-offloads"]);
    n0.wait_ready(Duration::from_secs(30));
    let plain = n0.wireguard_datapath_pids();
    assert!(
        plain.len() == 1 && plain != after,
        "--no-udp-offloads replaced the data path process: {plain:?} (was {after:?})"
    );
    assert!(
        n0.log().contains("reused=false") && n0.log_tail(20).contains("offloads=none"),
        "{}",
        n0.log_tail(20)
    );
    pods_talk_again(
        &cluster,
        &a,
        &b,
        Duration::from_secs(10),
        "pods talk without offloads",
    );
    // And back: offloads asked for again replace the process that runs without them.
    n0.stop();
    n0.start_weftd(&[]);
    n0.wait_ready(Duration::from_secs(30));
    let offloaded = n0.wireguard_datapath_pids();
    assert!(
        offloaded.len() == 1 && offloaded != plain,
        "offloads asked for again replaced the data path process: {offloaded:?} (was {plain:?})"
    );
    assert!(
        n0.log().contains("it was started without offloads")
            && !n0.log_tail(20).contains("offloads=none"),
        "{}",
        n0.log_tail(20)
    );
    pods_talk_again(
        &cluster,
        &a,
        &b,
        Duration::from_secs(10),
        "pods talk with offloads again",
    );

    cluster.switch_backend(VXLAN_CONFIG, "vxlan", || true, &a, &b);
    for i in 0..2 {
        let node = cluster.node(i);
        assert!(
            node.wireguard_datapath_pids().is_empty(),
            "a WireGuard data path process outlived the switch to vxlan on {}",
            node.name()
        );
        assert!(
            !node.wireguard_socket().exists(),
            "the data path socket outlived the switch on {}",
            node.name()
        );
        assert!(node.link("flannel-wg").is_none(), "flannel-wg left behind");
    }
}

/// A data path process asks for TUN framing with or without virtio-net headers, but the kernel
/// keeps a multi-queue device's flags while another queue is attached. An old data path process
/// still ending (its main thread a zombie, a pump thread not yet gone) held `flannel-wg` when
/// the new one attached, and every packet the new one read was dropped as unparsable: the pods
/// never talked again. The new process must get the framing it asked for: here a stale queue
/// with headers holds node 0's device while its data path starts without offloads, and one
/// without headers holds node 1's while its data path asks for them.
#[test]
fn a_data_path_gets_the_tun_framing_it_asked_for_while_a_stale_queue_holds_its_device() {
    let cluster = Cluster::new(2, WG_CONFIG);
    let n0 = cluster.node(0);
    let n1 = cluster.node(1);
    let stale0 = n0.netns().run(|| hold_tun_queue("flannel-wg", true));
    let stale1 = n1.netns().run(|| hold_tun_queue("flannel-wg", false));
    n0.start_weftd(&["--no-udp-offloads"]);
    n1.start_weftd(&[]);
    for node in [n0, n1] {
        node.wait_subnet_env(Duration::from_secs(30));
    }
    let (_a, _b) = pods_talking(
        &cluster,
        "pods talk although stale queues held both devices",
    );
    for node in [n0, n1] {
        assert!(
            node.log()
                .contains("existing device is unusable; recreating it"),
            "{}",
            node.log_tail(30)
        );
    }
    assert!(
        n0.log_tail(40).contains("offloads=none"),
        "{}",
        n0.log_tail(40)
    );
    drop((stale0, stale1));
}

/// The hex form WireGuard's UAPI (`get=1`) gives a base64 key in.
fn key_hex(base64_key: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .decode(base64_key.trim())
        .expect("base64 key")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Leases that change while weftd is down reach the data path process it kept: a node that
/// left (its lease deleted) is no peer of the process after the restart, a node that joined
/// is one, and pods on the joined node reach pods on the restarted one. weftd diffs what the
/// process answers to `get=1` against the leases when it finds the process again.
#[test]
fn lease_changes_while_weftd_is_down_reach_the_data_path_it_kept() {
    let mut cluster = Cluster::new(2, WG_CONFIG);
    cluster.start();
    let (a, _b) = pods_talking(&cluster, "pods talk");
    let n0 = cluster.node(0);
    let pids = n0.wireguard_datapath_pids();
    assert_eq!(pids.len(), 1, "one data path process: {pids:?}");
    let socket = n0.wireguard_socket();
    let left = key_hex(
        backend_data(&cluster, cluster.node(1))["PublicKey"]
            .as_str()
            .expect("node 2's public key"),
    );
    let peers = control_exchange(&socket, b"get=1\n\n");
    assert!(peers.contains(&format!("public_key={left}\n")), "{peers}");

    n0.stop();
    assert_eq!(
        n0.wireguard_datapath_pids(),
        pids,
        "the data path outlives weftd"
    );
    // While weftd is down, node 2 leaves and node 3 joins.
    let n1 = cluster.node(1);
    n1.stop();
    let key = n1.lease_key().expect("node 2's lease");
    assert!(cluster.etcd.del(&key), "delete {key}");
    cluster.add_node().start_weftd(&[]);
    let n2 = cluster.node(2);
    n2.wait_subnet_env(Duration::from_secs(30));
    let joined = key_hex(
        backend_data(&cluster, n2)["PublicKey"]
            .as_str()
            .expect("node 3's public key"),
    );
    let c = n2.add_pod();
    let n0 = cluster.node(0);
    assert!(
        !control_exchange(&socket, b"get=1\n\n").contains(&joined),
        "the data path knew the new node before weftd came back"
    );

    n0.start_weftd(&[]);
    n0.wait_ready(Duration::from_secs(30));
    assert_eq!(
        n0.wireguard_datapath_pids(),
        pids,
        "weftd found its data path process again"
    );
    assert!(n0.log().contains("reused=true"), "{}", n0.log_tail(30));
    wait_until(
        Duration::from_secs(20),
        "pods on the restarted node and on the node that joined talk",
        || a.tcp_check(&c) && c.tcp_check(&a),
    );
    let peers = control_exchange(&socket, b"get=1\n\n");
    assert!(
        peers.contains(&format!("public_key={joined}\n")),
        "the node that joined is a peer: {peers}"
    );
    assert!(
        !peers.contains(&left),
        "the node that left is still a peer: {peers}"
    );
}

/// Whether this kernel can create a WireGuard device (in a throwaway namespace).
fn kernel_has_wireguard() -> bool {
    let ns = Netns::new("wgprobe");
    ns.exec(&["ip", "link", "add", "wgprobe0", "type", "wireguard"])
        .status
        .success()
}

#[test]
fn wireguard_datapath_kernel_runs_on_the_kernel_or_refuses_loudly() {
    let cluster = Cluster::new(2, WG_CONFIG);
    if kernel_has_wireguard() {
        for i in 0..2 {
            cluster
                .node(i)
                .start_weftd(&["--wireguard-datapath", "kernel"]);
        }
        for i in 0..2 {
            cluster.node(i).wait_subnet_env(Duration::from_secs(30));
        }
        let _pods = pods_talking(&cluster, "pods talk over kernel WireGuard");
        let link = cluster.node(0).link("flannel-wg").expect("flannel-wg");
        assert_eq!(link["linkinfo"]["info_kind"], "wireguard", "{link}");
        assert!(cluster.node(0).log().contains(r#"datapath="kernel""#));
    } else {
        let node = cluster.node(0);
        node.start_weftd(&["--wireguard-datapath", "kernel"]);
        node.wait_until(Duration::from_secs(20), "weftd exits", || {
            node.exit_status().is_some()
        });
        assert!(
            !node.exit_status().is_some_and(|s| s.success()),
            "weftd exited 0 without a kernel WireGuard"
        );
        let log = node.log();
        assert!(
            log.contains(
                "kernel WireGuard requested, but the kernel cannot create a wireguard device"
            ),
            "{}",
            node.log_tail(20)
        );
        assert!(
            node.link("flannel-wg").is_none(),
            "a device was left behind"
        );
    }
}

#[test]
fn hostile_wireguard_leases_are_rejected_and_the_data_path_keeps_working() {
    let cluster = Cluster::new(2, WG_CONFIG);
    cluster.start();
    let a = cluster.node(0).add_pod();
    let b = cluster.node(1).add_pod();
    wait_until(Duration::from_secs(20), "pods talk", || a.tcp_check(&b));
    let n0 = cluster.node(0);
    let stolen = backend_data(&cluster, cluster.node(1))["PublicKey"]
        .as_str()
        .expect("PublicKey")
        .to_string();
    let hostile = [
        (
            "10.244.201.0-24",
            "AAAA".to_string(),
            "is not a WireGuard public key",
        ),
        (
            "10.244.202.0-24",
            stolen,
            "is already the public key of another node's older lease",
        ),
    ];
    for (subnet, key, _) in &hostile {
        cluster.etcd.put_with_ttl(
            &lease_key(subnet),
            &format!(
                r#"{{"PublicIP":"192.0.2.60","PublicIPv6":null,"BackendType":"wireguard","BackendData":{{"PublicKey":"{key}","Port":51820}}}}"#
            ),
            3600,
        );
    }
    for (subnet, _, why) in &hostile {
        let key = lease_key(subnet);
        n0.wait_until(Duration::from_secs(20), &format!("{key} rejected"), || {
            n0.log()
                .lines()
                .any(|l| l.contains("lease rejected") && l.contains(&key) && l.contains(why))
        });
    }
    assert!(
        a.tcp_check(&b) && b.tcp_check(&a),
        "pods talk with hostile leases in etcd"
    );
}

/// Sends `count` WireGuard data datagrams (type 4, a random receiver index, garbage for the
/// ciphertext) from the underlay namespace with the forged source `from` (a peer's
/// `IP:port`) to `to`, over a raw socket: what anyone on the underlay path can send without a
/// key.
fn spoof_wireguard_data(cluster: &Cluster, from: &str, to: &str, count: u32) {
    let ul = cluster.underlay.netns();
    ul.ip(&["addr", "add", "192.0.2.250/24", "dev", "br0"]);
    const SPOOF: &str = r#"
import os, socket, struct, sys, time
(src, sport), (dst, dport) = [(a, int(p)) for a, p in (x.rsplit(":", 1) for x in sys.argv[1:3])]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for i in range(int(sys.argv[3])):
    wg = struct.pack("<II", 4, int.from_bytes(os.urandom(4), "little")) + struct.pack("<Q", i) + os.urandom(48)
    udp = struct.pack("!HHHH", sport, dport, 8 + len(wg), 0) + wg
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xffff, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    s.sendto(ip + udp, (dst, 0))
    time.sleep(0.001)
"#;
    ul.exec_ok(&["python3", "-c", SPOOF, from, to, &count.to_string()]);
}

#[test]
fn forged_data_datagrams_do_not_make_the_nodes_shake_hands() {
    // A data datagram for a receiver index nobody holds needs no key to forge, only the
    // peer's source address; each one used to start a handshake, so a forger made the two
    // nodes shake hands once per round trip.
    let cluster = Cluster::new(2, WG_CONFIG);
    cluster.start();
    let (a, b) = pods_talking(&cluster, "pods talk over WireGuard");
    let n0 = cluster.node(0);
    let counter = |name| wireguard_counter(n0, name).unwrap_or_else(|| panic!("no {name}"));
    let (rejected, handshakes) = (counter("rx_rejected"), counter("handshakes_sent"));
    spoof_wireguard_data(&cluster, "192.0.2.12:51820", "192.0.2.11:51820", 1000);
    n0.wait_until(
        Duration::from_secs(5),
        "the forged datagrams rejected",
        || counter("rx_rejected") >= rejected + 500,
    );
    let started = counter("handshakes_sent") - handshakes;
    assert!(
        started <= 2,
        "{started} handshake messages sent for {} forged datagrams",
        counter("rx_rejected") - rejected
    );
    assert!(a.tcp_check(&b) && b.tcp_check(&a), "pods still talk");
}

#[test]
fn wireguard_without_offloads_carries_super_packets_of_tiny_segments_whole() {
    // Without vnet headers the kernel cuts each pod super-packet into segments in front of
    // flannel-wg's ring (500 slots by default): at MSS 88 its tail was dropped every time.
    let cluster = Cluster::new(2, WG_CONFIG);
    for node in [cluster.node(0), cluster.node(1)] {
        node.start_weftd(&["--no-udp-offloads"]);
    }
    for node in [cluster.node(0), cluster.node(1)] {
        node.wait_subnet_env(Duration::from_secs(30));
    }
    let (a, b) = pods_talking(&cluster, "pods talk over WireGuard without offloads");
    for node in [cluster.node(0), cluster.node(1)] {
        let link = node.link("flannel-wg").expect("flannel-wg exists");
        assert_eq!(link["txqlen"], 2048, "flannel-wg without offloads: {link}");
    }
    a.tiny_mss_transfer(&b, 8 << 20, 88)
        .assert_whole("wireguard without offloads");
}

#[test]
fn wireguard_carries_super_packets_of_tiny_segments_whole() {
    let cluster = Cluster::new(2, WG_CONFIG);
    cluster.start();
    let (a, b) = pods_talking(&cluster, "pods talk over WireGuard");
    let t = a.tiny_mss_transfer(&b, 8 << 20, 88);
    t.assert_whole("wireguard");
    assert_eq!(
        wireguard_counter(cluster.node(0), "tx_dropped"),
        Some(0),
        "the sender's data path dropped nothing"
    );
}
