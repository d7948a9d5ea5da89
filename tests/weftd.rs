//! Integration tests for weftd (issue 2) and for the test harness itself, on real etcd, real
//! network namespaces and real kernel devices. Run as root: `cargo nextest run --test weftd`.

mod common;

use common::*;

/// etcd in its namespace answers a client in a node namespace over the underlay bridge.
#[test]
fn harness_etcd_reachable_from_node_over_underlay() {
    let cluster = Cluster::new(1, VXLAN_CONFIG);
    let node = cluster.node(0);
    let out = node.netns().exec(&[
        "etcdctl",
        "--endpoints",
        &cluster.etcd.endpoint(),
        "--dial-timeout",
        "3s",
        "get",
        "--print-value-only",
        NETWORK_CONFIG_KEY,
    ]);
    assert!(
        out.status.success(),
        "etcdctl from {}: {}",
        node.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        VXLAN_CONFIG
    );
    assert_eq!(
        cluster.etcd.get(NETWORK_CONFIG_KEY).as_deref(),
        Some(VXLAN_CONFIG)
    );
}

/// Two hand-wired pods on one node talk TCP; a pod on an unwired address does not answer.
#[test]
fn harness_pods_on_one_node_talk() {
    let cluster = Cluster::new(1, VXLAN_CONFIG);
    let node = cluster.node(0);
    let a = node.add_pod_in("10.244.5.1/24", 1450);
    let b = node.add_pod_in("10.244.5.1/24", 1450);
    assert_eq!(a.ip(), "10.244.5.10");
    assert_eq!(b.ip(), "10.244.5.11");
    assert!(a.tcp_check(&b), "TCP from {} to {}", a.ip(), b.ip());
    assert!(b.tcp_check(&a), "TCP from {} to {}", b.ip(), a.ip());
    let probe = a.traffic_probe(&b);
    probe.wait_attempts(10);
    let stats = probe.stop();
    assert_eq!(stats.failures, 0, "{stats:?}");
    b.netns().ip(&["link", "set", "eth0", "down"]);
    assert!(
        !a.tcp_check(&b),
        "TCP to a pod whose eth0 is down must fail"
    );
}

/// A panicking test leaves no namespace, process or temp dir behind.
#[test]
fn harness_cleans_up_after_panic() {
    let created = std::sync::Mutex::new(Vec::new());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let cluster = Cluster::new(2, VXLAN_CONFIG);
        let pod = cluster.node(0).add_pod_in("10.244.7.1/24", 1450);
        let mut names = created.lock().unwrap_or_else(|p| p.into_inner());
        names.push(cluster.underlay.netns().name().to_string());
        names.push(cluster.etcd.netns().name().to_string());
        names.extend(cluster.nodes.iter().map(|n| n.name().to_string()));
        names.push(pod.netns().name().to_string());
        names.push(cluster.node(1).dir().to_string_lossy().into_owned());
        drop(names);
        panic!("deliberate panic inside a cluster");
    }));
    assert!(result.is_err());
    let names = created.into_inner().unwrap_or_else(|p| p.into_inner());
    assert_eq!(names.len(), 6);
    let list = String::from_utf8_lossy(
        &std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default(),
    )
    .into_owned();
    for name in &names[..5] {
        assert!(!list.contains(name.as_str()), "{name} still exists: {list}");
        assert!(!std::path::Path::new("/run/netns").join(name).exists());
    }
    assert!(
        !std::path::Path::new(&names[5]).exists(),
        "{} still exists",
        names[5]
    );
}
