//! Integration tests of the UDP and host-gw backends (issue 5) on the cluster harness: real
//! etcd, real weftd, real network namespaces and kernel devices.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::*;
use ipnetwork::Ipv4Network;
use sha2::{Digest, Sha256};
use weft::backend::udp::UdpBackend;
use weft::lease::{Lease, LeaseAttrs};

/// Nodes lease from 10.244.100.0–10.244.199.0 only (as `VXLAN_CONFIG`): fixed fake leases stay
/// outside that range.
const UDP_CONFIG: &str = r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.100.0","SubnetMax":"10.244.199.0","Backend":{"Type":"udp"}}"#;
const HOSTGW_CONFIG: &str = r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.100.0","SubnetMax":"10.244.199.0","Backend":{"Type":"host-gw"}}"#;
/// A namespace on the underlay that plays a Flannel UDP node.
const FLANNEL_IP: &str = "192.0.2.50";
/// The subnet the fake Flannel node holds.
const FLANNEL_SUBNET: &str = "10.244.200.0/24";
/// A host on the underlay that holds no lease.
const STRANGER_IP: &str = "192.0.2.51";
/// Flannel's UDP port.
const UDP_PORT: u16 = 8285;
/// Bytes of the bulk transfer: enough to push many 64 KiB GSO batches through the data path.
const BULK_BYTES: usize = 100 << 20;
/// Bytes of a bulk transfer over a data path without offloads (one packet per syscall).
const SMALL_BULK_BYTES: usize = 16 << 20;

/// A two-node cluster running `config`, with one pod per node that can reach the other.
fn two_node_cluster(config: &str) -> (Cluster, Pod, Pod) {
    let cluster = Cluster::new(2, config);
    cluster.start();
    let a = cluster.node(0).add_pod();
    let b = cluster.node(1).add_pod();
    wait_until(Duration::from_secs(20), "pod a reaches pod b", || {
        a.tcp_check(&b)
    });
    (cluster, a, b)
}

/// Deterministic pseudo-random bytes (xorshift64), so a corrupted segment cannot hide in
/// repeated content.
fn fill_pseudo_random(buf: &mut [u8], state: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let bytes = state.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// Sends `bytes` bytes over one TCP connection from `from` to `to`; returns the SHA-256 of
/// what was sent, of what arrived, and the throughput in Gbit/s.
fn bulk_transfer(from: &Pod, to: &Pod, bytes: usize) -> (Vec<u8>, Vec<u8>, f64) {
    let listener = to
        .netns()
        .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)))
        .unwrap_or_else(|e| panic!("bind in {}: {e}", to.netns().name()));
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept bulk connection");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0usize;
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    hash.update(&buf[..n]);
                    got += n;
                }
                Err(e) => panic!("bulk receive after {got} bytes: {e}"),
            }
        }
        (hash.finalize().to_vec(), got)
    });
    let target: SocketAddr = format!("{}:{port}", to.ip()).parse().expect("target");
    let mut stream = from
        .netns()
        .run(|| TcpStream::connect_timeout(&target, Duration::from_secs(5)))
        .unwrap_or_else(|e| panic!("connect {target} from {}: {e}", from.netns().name()));
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .expect("write timeout");
    let mut hash = Sha256::new();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut buf = vec![0u8; 1 << 20];
    let start = Instant::now();
    let mut sent = 0;
    while sent < bytes {
        let n = buf.len().min(bytes - sent);
        fill_pseudo_random(&mut buf[..n], &mut state);
        hash.update(&buf[..n]);
        stream
            .write_all(&buf[..n])
            .unwrap_or_else(|e| panic!("bulk send after {sent} bytes: {e}"));
        sent += n;
    }
    drop(stream);
    let (received, got) = server.join().expect("bulk receiver thread");
    let gbps = (bytes * 8) as f64 / start.elapsed().as_secs_f64() / 1e9;
    assert_eq!(got, bytes, "bytes received");
    (hash.finalize().to_vec(), received, gbps)
}

/// Both directions carry TCP, and a bulk transfer of `bytes` arrives intact in both
/// directions.
fn assert_pods_talk_and_bulk_arrives_intact(a: &Pod, b: &Pod, what: &str, bytes: usize) {
    assert!(a.tcp_check(b), "{what}: TCP a -> b");
    assert!(b.tcp_check(a), "{what}: TCP b -> a");
    for (from, to, dir) in [(a, b, "a -> b"), (b, a, "b -> a")] {
        let (sent, received, gbps) = bulk_transfer(from, to, bytes);
        assert_eq!(sent, received, "{what}: SHA-256 of {bytes} bytes {dir}");
        eprintln!("{what}: {bytes} bytes {dir} intact at {gbps:.2} Gbit/s");
    }
}

#[test]
fn udp_pods_on_two_nodes_talk_both_ways_and_bulk_arrives_intact() {
    let (cluster, a, b) = two_node_cluster(UDP_CONFIG);
    let env = cluster.node(0).subnet_env().unwrap_or_default();
    assert!(
        env.contains("FLANNEL_MTU=1472"),
        "UDP MTU is eth0 1500 - 28: {env}"
    );
    let link = cluster.node(0).link("flannel0").expect("flannel0 exists");
    assert_eq!(link["mtu"], 1472, "flannel0 MTU: {link}");
    assert_pods_talk_and_bulk_arrives_intact(&a, &b, "udp", BULK_BYTES);
}

#[test]
fn udp_carries_super_packets_of_tiny_segments_whole() {
    let (_cluster, a, b) = two_node_cluster(UDP_CONFIG);
    a.tiny_mss_transfer(&b, 8 << 20, 88).assert_whole("udp");
}

#[test]
fn udp_without_offloads_carries_super_packets_of_tiny_segments_whole() {
    // Without vnet headers the kernel cuts each pod super-packet into segments in front of
    // flannel0, all at once: at MSS 88 one is ~740 segments, more than a TUN's default 500
    // ring slots, so its tail was dropped every time (~15 % of the segments retransmitted).
    let cluster = Cluster::new(2, UDP_CONFIG);
    for node in [cluster.node(0), cluster.node(1)] {
        node.start_weftd(&["--no-udp-offloads", "--resync-interval", "1"]);
    }
    for node in [cluster.node(0), cluster.node(1)] {
        node.wait_subnet_env(Duration::from_secs(30));
        let link = node.link("flannel0").expect("flannel0 exists");
        assert_eq!(link["txqlen"], 2048, "flannel0 without offloads: {link}");
    }
    let a = cluster.node(0).add_pod();
    let b = cluster.node(1).add_pod();
    wait_until(Duration::from_secs(20), "pod a reaches pod b", || {
        a.tcp_check(&b)
    });
    a.tiny_mss_transfer(&b, 8 << 20, 88)
        .assert_whole("udp without offloads");
    // Set back by the next full reconcile when someone shortens it.
    let n0 = cluster.node(0);
    n0.netns()
        .ip(&["link", "set", "flannel0", "txqueuelen", "500"]);
    n0.wait_until(Duration::from_secs(10), "flannel0's queue set back", || {
        n0.link("flannel0").is_some_and(|l| l["txqlen"] == 2048)
    });
}

/// The offloads `weftctl status -o json` reports for `node`'s backend.
fn status_offloads(node: &Node) -> String {
    let socket = node.dir().join("weftd.sock");
    let out = node
        .netns()
        .command(env!("CARGO_BIN_EXE_weftctl"))
        .args(["status", "-o", "json", "--socket"])
        .arg(&socket)
        .output()
        .unwrap_or_else(|e| panic!("weftctl status: {e}"));
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "weftctl status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("not JSON ({e}): {json}"));
    v["backend"]["offloads"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn udp_without_offloads_and_after_switching_them_off_bulk_arrives_intact() {
    // Node 0 starts with offloads (vnet headers on flannel0, UDP GSO/GRO), node 1 without:
    // super-packets cut by one node, single packets from the other.
    let cluster = Cluster::new(2, UDP_CONFIG);
    cluster.node(0).start_weftd(&[]);
    cluster.node(1).start_weftd(&["--no-udp-offloads"]);
    for node in [cluster.node(0), cluster.node(1)] {
        node.wait_subnet_env(Duration::from_secs(30));
    }
    let a = cluster.node(0).add_pod();
    let b = cluster.node(1).add_pod();
    wait_until(Duration::from_secs(20), "pod a reaches pod b", || {
        a.tcp_check(&b)
    });
    let offloads = |node: &Node| {
        node.log()
            .lines()
            .rfind(|l| l.contains("UDP data path"))
            .map(|l| l.to_string())
            .unwrap_or_default()
    };
    assert!(
        offloads(cluster.node(0)).contains("offloads=tun vnet_hdr, udp gso, udp gro"),
        "node 0 runs with offloads: {}",
        offloads(cluster.node(0))
    );
    assert!(
        offloads(cluster.node(1)).contains("offloads=none"),
        "node 1 runs without: {}",
        offloads(cluster.node(1))
    );
    // `weftctl status` reports what the kernel granted, as the log does.
    assert_eq!(
        status_offloads(cluster.node(0)),
        "tun vnet_hdr, udp gso, udp gro"
    );
    assert_eq!(status_offloads(cluster.node(1)), "none");
    // Packet by packet (and a debug build in tests): a smaller transfer, still thousands of
    // full-size segments.
    assert_pods_talk_and_bulk_arrives_intact(
        &a,
        &b,
        "udp, one node without offloads",
        SMALL_BULK_BYTES,
    );
    // The persistent flannel0 keeps the device-wide offload settings of the weftd before;
    // a weftd without offloads must not be handed 64 KiB super-packets it cannot cut.
    cluster.node(0).kill9();
    cluster.node(0).start_weftd(&["--no-udp-offloads"]);
    wait_until(
        Duration::from_secs(30),
        "node 0 runs without offloads",
        || offloads(cluster.node(0)).contains("offloads=none"),
    );
    wait_until(Duration::from_secs(20), "pod a reaches pod b again", || {
        a.tcp_check(&b)
    });
    assert_pods_talk_and_bulk_arrives_intact(&a, &b, "udp without offloads", SMALL_BULK_BYTES);
}

#[test]
fn hostgw_pods_on_two_nodes_talk_both_ways_and_bulk_arrives_intact() {
    let (cluster, a, b) = two_node_cluster(HOSTGW_CONFIG);
    let env = cluster.node(0).subnet_env().unwrap_or_default();
    assert!(
        env.contains("FLANNEL_MTU=1500"),
        "host-gw MTU is eth0's: {env}"
    );
    let peer_subnet = cluster.node(1).subnet().expect("node 2 subnet");
    let route = cluster
        .node(0)
        .route_to(&peer_subnet)
        .expect("route to node 2");
    assert_eq!(route["gateway"], cluster.node(1).public_ip(), "{route}");
    assert_eq!(route["dev"], "eth0", "{route}");
    assert_pods_talk_and_bulk_arrives_intact(&a, &b, "host-gw", BULK_BYTES);
}

/// The Internet checksum, written out here so the test does not trust weft's.
fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 ICMP echo request `src -> dst` carrying `payload`, as a Flannel node puts it into
/// a UDP datagram: the bare IP packet, no extra header.
fn icmp_echo_request(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 1;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&p[..20]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p[20] = 8;
    p[24..26].copy_from_slice(&id.to_be_bytes());
    p[26..28].copy_from_slice(&seq.to_be_bytes());
    p[28..].copy_from_slice(payload);
    let sum = checksum(&p[20..]);
    p[22..24].copy_from_slice(&sum.to_be_bytes());
    p
}

/// Checks that `datagram` is exactly one IPv4 ICMP echo reply `src -> dst` answering
/// (`id`, `seq`, `payload`), with valid checksums; returns a description of what is wrong.
fn check_echo_reply(
    datagram: &[u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    id: u16,
    seq: u16,
    payload: &[u8],
) -> Result<(), String> {
    if datagram.len() != 28 + payload.len() {
        return Err(format!(
            "length {} != {}",
            datagram.len(),
            28 + payload.len()
        ));
    }
    let total = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    let got_src = Ipv4Addr::new(datagram[12], datagram[13], datagram[14], datagram[15]);
    let got_dst = Ipv4Addr::new(datagram[16], datagram[17], datagram[18], datagram[19]);
    let fields = (
        datagram[0],
        total,
        datagram[9],
        got_src,
        got_dst,
        datagram[20],
    );
    if fields != (0x45, datagram.len(), 1, src, dst, 0) {
        return Err(format!(
            "header (ver/ihl, total, proto, src, dst, icmp type) = {fields:?}"
        ));
    }
    if checksum(&datagram[..20]) != 0 || checksum(&datagram[20..]) != 0 {
        return Err("bad checksum".into());
    }
    if datagram[24..26] != id.to_be_bytes() || datagram[26..28] != seq.to_be_bytes() {
        return Err("id/seq differ".into());
    }
    if &datagram[28..] != payload {
        return Err("payload differs".into());
    }
    Ok(())
}

/// A UDP socket at `ip:8285` in `ns`, like a Flannel node's.
fn udp_8285_socket(ns: &Netns, ip: &str) -> UdpSocket {
    let bind: SocketAddr = format!("{ip}:{UDP_PORT}").parse().expect("flannel address");
    let socket = ns
        .run(|| UdpSocket::bind(bind))
        .unwrap_or_else(|e| panic!("bind {bind} in {}: {e}", ns.name()));
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("read timeout");
    socket
}

/// Sends Flannel-framed echo requests from the fake Flannel node to `pod` via `node_ip`
/// until a framed echo reply comes back from `node_ip:8285` (or `timeout` passes).
fn flannel_ping(
    socket: &UdpSocket,
    node_ip: &str,
    pod: &str,
    seq: u16,
    timeout: Duration,
) -> Result<(), String> {
    let src: Ipv4Addr = "10.244.200.5".parse().expect("flannel pod ip");
    let pod: Ipv4Addr = pod.parse().expect("pod ip");
    let node: SocketAddr = format!("{node_ip}:{UDP_PORT}")
        .parse()
        .expect("node address");
    let payload = format!("weft-flannel-framing-{seq}").into_bytes();
    let request = icmp_echo_request(src, pod, 0x5746, seq, &payload);
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no reply");
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        socket
            .send_to(&request, node)
            .map_err(|e| format!("send to {node}: {e}"))?;
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            if from != node {
                last = format!("datagram from {from}, expected {node}");
                continue;
            }
            match check_echo_reply(&buf[..n], pod, src, 0x5746, seq, &payload) {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
    }
    Err(last)
}

#[test]
fn udp_flannel_framed_datagram_reaches_pod_and_reply_comes_back_framed() {
    let cluster = Cluster::new(1, UDP_CONFIG);
    let flannel = Netns::new("flannel");
    cluster.underlay.attach(&flannel, FLANNEL_IP);
    // Exactly what flanneld's UDP backend writes: no BackendData.
    cluster.etcd.put(
        &lease_key(FLANNEL_SUBNET),
        &format!(r#"{{"PublicIP":"{FLANNEL_IP}","PublicIPv6":null,"BackendType":"udp"}}"#),
    );
    cluster.start();
    let node = cluster.node(0);
    let pod = node.add_pod();
    let socket = udp_8285_socket(&flannel, FLANNEL_IP);
    flannel_ping(
        &socket,
        node.public_ip(),
        pod.ip(),
        1,
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| {
        panic!(
            "Flannel-framed echo to pod {}: {e}\n{}",
            pod.ip(),
            cluster.dump()
        )
    });

    // Garbage from a leased address and a valid packet from an unleased one are dropped;
    // the data path keeps working.
    let node_addr: SocketAddr = format!("{}:{UDP_PORT}", node.public_ip())
        .parse()
        .expect("addr");
    let mut v6 = icmp_echo_request(
        "10.244.200.5".parse().unwrap(),
        pod.ip().parse().unwrap(),
        1,
        1,
        b"x",
    );
    v6[0] = 0x60;
    let mut short = icmp_echo_request(
        "10.244.200.5".parse().unwrap(),
        pod.ip().parse().unwrap(),
        1,
        1,
        b"xxxx",
    );
    short.truncate(30);
    for garbage in [&b""[..], &b"garbage"[..], &v6, &short, &[0x45u8; 19][..]] {
        socket.send_to(garbage, node_addr).expect("send garbage");
    }
    let stranger = Netns::new("stranger");
    cluster.underlay.attach(&stranger, STRANGER_IP);
    let stranger_socket = udp_8285_socket(&stranger, STRANGER_IP);
    let valid = icmp_echo_request(
        "10.244.200.5".parse().unwrap(),
        pod.ip().parse().unwrap(),
        7,
        7,
        b"spoof",
    );
    stranger_socket
        .send_to(&valid, node_addr)
        .expect("send from stranger");
    // Had the stranger's packet been delivered, the pod's reply would reach the Flannel node.
    let pod_ip: Ipv4Addr = pod.ip().parse().expect("pod ip");
    let flannel_pod: Ipv4Addr = "10.244.200.5".parse().expect("flannel pod ip");
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            let spoof_answered =
                check_echo_reply(&buf[..n], pod_ip, flannel_pod, 7, 7, b"spoof").is_ok();
            assert!(
                !spoof_answered,
                "a packet from an address without a lease was delivered"
            );
        }
    }
    assert!(
        stranger_socket.recv_from(&mut buf).is_err(),
        "the stranger got an answer"
    );
    assert!(
        node.is_running(),
        "weftd survived garbage:\n{}",
        node.log_tail(20)
    );
    // The drops are visible to operators in weftd's /metrics.
    let counted = |metrics: &str| {
        metrics.contains("\nweft_udp_rx_malformed_total 5\n")
            && metrics.contains("\nweft_udp_rx_unknown_source_total 1\n")
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut metrics = String::new();
    while Instant::now() < deadline {
        metrics = node
            .http_get("/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default();
        if counted(&metrics) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        counted(&metrics),
        "drops not counted in /metrics:\n{metrics}"
    );
    flannel_ping(
        &socket,
        node.public_ip(),
        pod.ip(),
        2,
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("echo after garbage: {e}"));
}

#[test]
fn udp_backend_counts_and_drops_garbage_and_strangers() {
    let underlay = Underlay::new();
    let node = Netns::new("udpnode");
    underlay.attach(&node, "192.0.2.11");
    node.sysctl("net.ipv4.ip_forward", "1");
    let flannel = Netns::new("flannel");
    underlay.attach(&flannel, FLANNEL_IP);
    let stranger = Netns::new("stranger");
    underlay.attach(&stranger, STRANGER_IP);
    let own: Ipv4Network = "10.244.1.0/24".parse().unwrap();
    // A local "pod" address behind the node: answered by the node itself.
    node.ip(&["addr", "add", "10.244.1.1/24", "dev", "lo"]);
    let peer = Lease {
        ipv6_subnet: None,
        subnet: FLANNEL_SUBNET.parse().unwrap(),
        attrs: LeaseAttrs {
            public_ipv6: None,
            backend_v6_data: None,
            public_ip: FLANNEL_IP.parse().unwrap(),
            backend_type: "udp".into(),
            backend_data: None,
        },
        etcd_lease: None,
        mod_revision: 1,
    };
    let flannel_socket = udp_8285_socket(&flannel, FLANNEL_IP);
    let stranger_socket = udp_8285_socket(&stranger, STRANGER_IP);
    node.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(async {
            let ext = weft::netlink::find_external_interface(Some("eth0"), None)
                .await
                .expect("find eth0");
            let mut backend =
                UdpBackend::new("10.244.0.0/16".parse().unwrap(), UDP_PORT, &ext, true)
                    .await
                    .expect("start UDP backend");
            assert_eq!(backend.mtu(), 1472);
            let report = backend.reconcile(own, &[peer]).await.expect("reconcile");
            assert_eq!(report.desired, 1);
            let counters = backend.counters();
            flannel_ping(
                &flannel_socket,
                "192.0.2.11",
                "10.244.1.1",
                1,
                Duration::from_secs(10),
            )
            .expect("framed echo to the node");

            let node_addr: SocketAddr = "192.0.2.11:8285".parse().unwrap();
            let src: Ipv4Addr = "10.244.200.5".parse().unwrap();
            let dst: Ipv4Addr = "10.244.1.1".parse().unwrap();
            let mut v6 = icmp_echo_request(src, dst, 1, 1, b"x");
            v6[0] = 0x60;
            let mut truncated = icmp_echo_request(src, dst, 1, 1, b"xxxx");
            truncated.truncate(30);
            let not_local = icmp_echo_request(src, "10.244.9.9".parse().unwrap(), 1, 1, b"x");
            for garbage in [
                &b""[..],
                &b"garbage"[..],
                &v6,
                &truncated,
                &[0x45u8; 19][..],
            ] {
                flannel_socket
                    .send_to(garbage, node_addr)
                    .expect("send garbage");
            }
            flannel_socket
                .send_to(&not_local, node_addr)
                .expect("send misdirected");
            let valid = icmp_echo_request(src, dst, 7, 7, b"stranger");
            stranger_socket
                .send_to(&valid, node_addr)
                .expect("send from stranger");
            let load =
                |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
            let drops = || {
                (
                    load(&counters.rx_malformed),
                    load(&counters.rx_unknown_source),
                    load(&counters.rx_not_local),
                )
            };
            let deadline = Instant::now() + Duration::from_secs(5);
            while drops() != (5, 1, 1) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert_eq!(drops(), (5, 1, 1), "(malformed, unknown source, not local)");
            let mut buf = [0u8; 2048];
            assert!(
                stranger_socket.recv_from(&mut buf).is_err(),
                "stranger got an answer"
            );
            flannel_ping(
                &flannel_socket,
                "192.0.2.11",
                "10.244.1.1",
                2,
                Duration::from_secs(5),
            )
            .expect("framed echo after garbage");
            // The pumps count after their syscall returns, so the reply can arrive first.
            let forwarded = || (load(&counters.rx_packets), load(&counters.tx_packets));
            let deadline = Instant::now() + Duration::from_secs(2);
            while (forwarded().0 < 2 || forwarded().1 < 2) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let (rx, tx) = forwarded();
            assert!(rx >= 2 && tx >= 2, "forwarded rx {rx} tx {tx}");
        });
    });
}

/// The `.0` address of a node's subnet: its `flannel0` address under the UDP backend.
fn subnet_zero(node: &Node) -> String {
    let subnet = node.subnet().expect("node subnet");
    subnet.split('/').next().unwrap_or_default().to_string()
}

#[test]
fn udp_lease_removal_withdraws_peer_and_unknown_destination_gets_net_unreachable() {
    let (cluster, a, b) = two_node_cluster(UDP_CONFIG);
    let key = cluster.node(1).lease_key().expect("node 2 lease key");
    cluster.node(1).stop();
    assert!(cluster.etcd.del(&key), "delete {key}");
    let from = format!("From {}", subnet_zero(cluster.node(0)));
    let mut last = String::new();
    wait_until(
        Duration::from_secs(20),
        "net-unreachable for the withdrawn peer",
        || {
            let out = a.exec(&["ping", "-n", "-c", "1", "-W", "1", b.ip()]);
            last = String::from_utf8_lossy(&out.stdout).into_owned();
            last.contains(&from) && last.contains("Destination Net Unreachable")
        },
    );
    assert!(!a.tcp_check(&b), "TCP to a withdrawn peer still works");
    // A cluster address no lease ever held gets the same answer.
    let out = a.exec(&["ping", "-n", "-c", "1", "-W", "1", "10.244.254.1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Destination Net Unreachable"), "{text}");
}

#[test]
fn hostgw_reconcile_removes_stale_and_withdrawn_routes_never_foreign_ones() {
    let cluster = Cluster::new(2, HOSTGW_CONFIG);
    let n0 = cluster.node(0);
    // Before weftd runs: a stale weft route (proto 87) and an operator's route on eth0.
    n0.netns().ip(&[
        "route",
        "add",
        "10.244.250.0/24",
        "via",
        "192.0.2.77",
        "dev",
        "eth0",
        "proto",
        "87",
    ]);
    n0.netns().ip(&[
        "route",
        "add",
        "10.250.0.0/24",
        "via",
        "192.0.2.78",
        "dev",
        "eth0",
    ]);
    // A peer that is not on the underlay's L2 segment.
    cluster.etcd.put(
        &lease_key("10.244.251.0/24"),
        r#"{"PublicIP":"198.51.100.9","PublicIPv6":null,"BackendType":"host-gw"}"#,
    );
    cluster.start();
    cluster.wait_mesh(Duration::from_secs(20));
    n0.wait_until(Duration::from_secs(10), "stale weft route removed", || {
        n0.route_to("10.244.250.0/24").is_none()
    });
    assert!(
        n0.route_to("10.250.0.0/24").is_some(),
        "foreign route removed:\n{}",
        cluster.dump()
    );
    assert!(
        n0.route_to("10.244.251.0/24").is_none(),
        "off-segment peer routed"
    );
    let log = n0.log();
    assert!(
        log.contains("10.244.251.0/24")
            && log.contains("198.51.100.9")
            && log.contains("not on the L2 segment"),
        "no clear error naming the off-segment peer:\n{}",
        n0.log_tail(30)
    );
    let a = n0.add_pod();
    let b = cluster.node(1).add_pod();
    assert!(
        a.tcp_check(&b) && b.tcp_check(&a),
        "the on-segment peer is programmed"
    );
    // The off-segment peer is not retried every second (it cannot become routable until a
    // lease or an address changes): its error is not logged again in the next seconds.
    let logged = || n0.log().matches("not on the L2 segment").count();
    let before = logged();
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        logged() <= before + 1,
        "the off-segment peer was retried {} times in 5 s",
        logged() - before
    );

    let peer_subnet = cluster.node(1).subnet().expect("node 2 subnet");
    let key = cluster.node(1).lease_key().expect("node 2 lease key");
    cluster.node(1).stop();
    assert!(cluster.etcd.del(&key), "delete {key}");
    n0.wait_until(
        Duration::from_secs(20),
        "withdrawn peer's route removed",
        || n0.route_to(&peer_subnet).is_none(),
    );
    assert!(
        n0.route_to("10.250.0.0/24").is_some(),
        "foreign route removed on withdrawal"
    );
    assert!(!a.tcp_check(&b), "TCP to a withdrawn peer still works");
}

/// Restarts both weftds under continuous pod traffic (node 1 with SIGKILL, node 2 with
/// SIGTERM); returns the probe's counters.
fn restart_under_traffic(config: &str) -> ProbeStats {
    let (cluster, a, b) = two_node_cluster(config);
    let probe = a.traffic_probe(&b);
    probe.wait_attempts(10);
    cluster.node(0).kill9();
    cluster.node(0).start_weftd(&[]);
    probe.wait_attempts(10);
    cluster.node(1).restart();
    probe.wait_attempts(40);
    let stats = probe.stop();
    assert!(
        a.tcp_check(&b) && b.tcp_check(&a),
        "pods talk after restarts"
    );
    eprintln!("{config}: {stats:?}");
    stats
}

#[test]
fn hostgw_restart_keeps_traffic_flowing() {
    let stats = restart_under_traffic(HOSTGW_CONFIG);
    assert_eq!(
        stats.failures, 0,
        "round trips failed across restarts: {stats:?}"
    );
}

#[test]
fn udp_restart_keeps_traffic_flowing() {
    // The pumps live in weftd, so a restart pauses forwarding; the persistent flannel0 keeps
    // its address and route, and traffic resumes as soon as the new weftd attaches.
    let stats = restart_under_traffic(UDP_CONFIG);
    assert!(
        stats.longest_gap < Duration::from_secs(5),
        "traffic stopped for {:?} across restarts: {stats:?}",
        stats.longest_gap
    );
}

#[test]
fn udp_deleted_tun_device_is_recreated_and_traffic_resumes() {
    let (cluster, a, b) = two_node_cluster(UDP_CONFIG);
    let node = cluster.node(0);
    node.netns().ip(&["link", "del", "flannel0"]);
    wait_until(
        Duration::from_secs(30),
        "pods talk again after flannel0 was deleted",
        || a.tcp_check(&b),
    );
    let link = node.link("flannel0").expect("flannel0 recreated");
    assert_eq!(link["mtu"], 1472, "{link}");
    assert!(b.tcp_check(&a), "TCP b -> a after recreation");
}

/// weftd's UDP data path gets the TUN framing it asks for although a stale queue (of a weftd
/// still ending) holds `flannel0` with the other one; see the WireGuard test of the same name.
#[test]
fn udp_data_path_gets_the_tun_framing_it_asked_for_while_a_stale_queue_holds_its_device() {
    let cluster = Cluster::new(2, UDP_CONFIG);
    let n0 = cluster.node(0);
    let stale = n0.netns().run(|| hold_tun_queue("flannel0", true));
    n0.start_weftd(&["--no-udp-offloads"]);
    cluster.node(1).start_weftd(&[]);
    for i in 0..2 {
        cluster.node(i).wait_subnet_env(Duration::from_secs(30));
    }
    let a = n0.add_pod();
    let b = cluster.node(1).add_pod();
    wait_until(
        Duration::from_secs(20),
        "pods talk although a stale queue held flannel0",
        || a.tcp_check(&b) && b.tcp_check(&a),
    );
    assert!(
        n0.log()
            .contains("existing device is unusable; recreating it"),
        "{}",
        n0.log_tail(30)
    );
    drop(stale);
}

const VXLAN_CONFIG: &str = r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.100.0","SubnetMax":"10.244.199.0","Backend":{"Type":"vxlan"}}"#;

#[test]
fn switching_backend_type_removes_what_the_old_backend_left() {
    let (cluster, a, b) = two_node_cluster(UDP_CONFIG);
    let n0 = cluster.node(0);
    let peer = cluster.node(1).subnet().expect("node 2 subnet");
    let peer_ip = cluster.node(1).public_ip().to_string();
    assert!(n0.link("flannel0").is_some(), "udp runs on flannel0");

    let routed_via = |dev: &str| {
        n0.route_to(&peer)
            .is_some_and(|r| r["dev"].as_str() == Some(dev))
    };
    cluster.switch_backend(HOSTGW_CONFIG, "host-gw", || routed_via("eth0"), &a, &b);
    assert!(
        n0.link("flannel0").is_none(),
        "flannel0 left behind after udp -> host-gw:\n{}",
        cluster.dump()
    );
    let route = n0.route_to(&peer).expect("host-gw peer route");
    assert_eq!(route["gateway"], peer_ip.as_str(), "{route}");
    assert_eq!(route["dev"], "eth0", "{route}");
    assert!(
        n0.route_to("10.244.0.0/16").is_none(),
        "udp's cluster route left behind"
    );
    assert!(
        n0.log()
            .contains("removed what another backend left behind"),
        "the removal is not logged:\n{}",
        n0.log_tail(30)
    );

    cluster.switch_backend(VXLAN_CONFIG, "vxlan", || routed_via("flannel.1"), &a, &b);
    let route = n0.route_to(&peer).expect("vxlan peer route");
    assert_eq!(
        route["dev"],
        "flannel.1",
        "host-gw route left behind after host-gw -> vxlan: {route}\n{}",
        cluster.dump()
    );
    let routes_to_peer = n0
        .routes()
        .into_iter()
        .filter(|r| r["dst"].as_str() == Some(peer.as_str()))
        .count();
    assert_eq!(routes_to_peer, 1, "{}", cluster.dump());

    cluster.switch_backend(
        UDP_CONFIG,
        "udp",
        || n0.route_to("10.244.0.0/16").is_some(),
        &a,
        &b,
    );
    assert!(
        n0.link("flannel.1").is_none(),
        "flannel.1 left behind after vxlan -> udp:\n{}",
        cluster.dump()
    );
    assert!(n0.route_to(&peer).is_none(), "vxlan peer route left behind");
    assert!(n0.link("flannel0").is_some(), "udp runs on flannel0 again");
}

#[test]
fn udp_lease_device_route_and_subnet_env_are_flannels() {
    let cluster = Cluster::new(
        1,
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp","Port":8300}}"#,
    );
    cluster.start();
    let node = cluster.node(0);
    let subnet = node.subnet().expect("node subnet");
    let kv = cluster
        .etcd
        .get_kv(&lease_key(&subnet))
        .unwrap_or_else(|| panic!("no lease for {subnet}"));
    // What flanneld's UDP backend writes: no BackendData.
    assert_eq!(
        kv.value,
        format!(
            r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"udp"}}"#,
            node.public_ip()
        )
    );

    let link = node.link("flannel0").expect("flannel0");
    assert_eq!(link["mtu"], 1472, "underlay MTU 1500 - 28: {link}");
    let addrs = node
        .netns()
        .ip_json(&["-4", "addr", "show", "dev", "flannel0"]);
    let local: Vec<String> = addrs
        .iter()
        .flat_map(|a| a["addr_info"].as_array().cloned().unwrap_or_default())
        .map(|i| format!("{}/{}", i["local"].as_str().unwrap_or(""), i["prefixlen"]))
        .collect();
    assert_eq!(
        local,
        vec![format!("{}/32", subnet_zero(node))],
        "{addrs:?}"
    );
    let route = node
        .route_to("10.244.0.0/16")
        .expect("cluster route on flannel0");
    assert_eq!(route["dev"], "flannel0", "{route}");

    let env = node.subnet_env().expect("subnet.env");
    for line in [
        "FLANNEL_NETWORK=10.244.0.0/16",
        "FLANNEL_MTU=1472",
        "FLANNEL_IPMASQ=false",
    ] {
        assert!(env.lines().any(|l| l == line), "no {line} in\n{env}");
    }

    // Backend.Port replaces Flannel's 8285.
    let sockets = node.netns().exec_ok(&["ss", "-Hnuln"]);
    assert!(
        sockets.contains(&format!("{}:8300", node.public_ip()))
            || sockets.contains("0.0.0.0:8300")
            || sockets.contains("*:8300"),
        "nothing listens on UDP 8300:\n{sockets}"
    );
    assert!(
        !sockets.contains(":8285 "),
        "UDP 8285 still bound:\n{sockets}"
    );
}

#[test]
fn udp_and_hostgw_follow_a_replaced_external_interface() {
    for config in [UDP_CONFIG, HOSTGW_CONFIG] {
        let cluster = Cluster::new(2, config);
        cluster.start();
        cluster.replace_external_interface_under_traffic(0);
    }
}
