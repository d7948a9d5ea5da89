//! Integration tests of the UDP and host-gw backends (issue 5) on the cluster harness: real
//! etcd, real weftd, real network namespaces and kernel devices.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};

const UDP_CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}"#;
const HOSTGW_CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#;
/// Bytes of the bulk transfer: enough to push many 64 KiB GSO batches through the data path.
const BULK_BYTES: usize = 100 << 20;

/// A two-node cluster running `config`, with one pod per node that can reach the other.
fn two_node_cluster(config: &str) -> (Cluster, Pod, Pod) {
    let cluster = Cluster::new(2, config);
    cluster.start();
    let a = cluster.node(0).add_pod();
    let b = cluster.node(1).add_pod();
    wait_until(Duration::from_secs(20), "pod a reaches pod b", || a.tcp_check(&b));
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

/// Both directions carry TCP, and a bulk transfer arrives intact in both directions.
fn assert_pods_talk_and_bulk_arrives_intact(a: &Pod, b: &Pod, what: &str) {
    assert!(a.tcp_check(b), "{what}: TCP a -> b");
    assert!(b.tcp_check(a), "{what}: TCP b -> a");
    for (from, to, dir) in [(a, b, "a -> b"), (b, a, "b -> a")] {
        let (sent, received, gbps) = bulk_transfer(from, to, BULK_BYTES);
        assert_eq!(sent, received, "{what}: SHA-256 of {BULK_BYTES} bytes {dir}");
        eprintln!("{what}: {BULK_BYTES} bytes {dir} intact at {gbps:.2} Gbit/s");
    }
}

#[test]
fn udp_pods_on_two_nodes_talk_both_ways_and_bulk_arrives_intact() {
    let (cluster, a, b) = two_node_cluster(UDP_CONFIG);
    let env = cluster.node(0).subnet_env().unwrap_or_default();
    assert!(env.contains("FLANNEL_MTU=1472"), "UDP MTU is eth0 1500 - 28: {env}");
    let link = cluster.node(0).link("flannel0").expect("flannel0 exists");
    assert_eq!(link["mtu"], 1472, "flannel0 MTU: {link}");
    assert_pods_talk_and_bulk_arrives_intact(&a, &b, "udp");
}

#[test]
fn hostgw_pods_on_two_nodes_talk_both_ways_and_bulk_arrives_intact() {
    let (cluster, a, b) = two_node_cluster(HOSTGW_CONFIG);
    let env = cluster.node(0).subnet_env().unwrap_or_default();
    assert!(env.contains("FLANNEL_MTU=1500"), "host-gw MTU is eth0's: {env}");
    let peer_subnet = cluster.node(1).subnet().expect("node 2 subnet");
    let route = cluster.node(0).route_to(&peer_subnet).expect("route to node 2");
    assert_eq!(route["gateway"], cluster.node(1).public_ip(), "{route}");
    assert_eq!(route["dev"], "eth0", "{route}");
    assert_pods_talk_and_bulk_arrives_intact(&a, &b, "host-gw");
}
