//! Integration tests for weftd (issue 2) and for the test harness itself, on real etcd, real
//! network namespaces and real kernel devices. Run as root: `cargo nextest run --test weftd`.

mod common;

use std::time::Duration;

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
    // The probe counts what is lost while a pod is cut off, and traffic comes back after.
    let probe = a.traffic_probe(&b);
    probe.wait_attempts(5);
    b.netns().ip(&["link", "set", "eth0", "down"]);
    probe.wait_attempts(6);
    b.netns().ip(&["link", "set", "eth0", "up"]);
    probe.wait_attempts(10);
    let lossy = probe.stop();
    assert!(
        lossy.failures >= 4 && lossy.failures < lossy.attempts - 10,
        "a cut of 6 datagrams: {lossy:?}"
    );
    assert!(lossy.longest_gap >= Duration::from_millis(200), "{lossy:?}");
    b.netns().ip(&["link", "set", "eth0", "down"]);
    assert!(
        !a.tcp_check(&b),
        "TCP to a pod whose eth0 is down must fail"
    );
}

/// True if process `pid` is alive (a zombie, dead but not yet reaped, is not).
fn process_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

/// Names in `ip netns list`.
fn netns_list() -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap_or_else(|e| panic!("ip netns list: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A panicking test leaves no namespace, process or temp dir behind.
#[test]
fn harness_cleans_up_after_panic() {
    let created = std::sync::Mutex::new((Vec::new(), Vec::new(), None));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let cluster = Cluster::new(2, VXLAN_CONFIG);
        cluster.node(1).start_weftd(&[]);
        let pod = cluster.node(0).add_pod_in("10.244.7.1/24", 1450);
        let sleeper = pod.netns().spawn(&["sleep", "60"]);
        let mut guard = created.lock().unwrap_or_else(|p| p.into_inner());
        let (names, pids, child) = &mut *guard;
        names.push(cluster.underlay.netns().name().to_string());
        names.push(cluster.etcd.netns().name().to_string());
        names.extend(cluster.nodes.iter().map(|n| n.name().to_string()));
        names.push(pod.netns().name().to_string());
        names.push(cluster.node(1).dir().to_string_lossy().into_owned());
        pids.extend(cluster.etcd.netns().pids());
        pids.extend(cluster.node(1).weftd_pid().map(|p| p as i32));
        *child = Some(sleeper);
        drop(guard);
        panic!("deliberate panic inside a cluster");
    }));
    assert!(result.is_err());
    let (names, pids, child) = created.into_inner().unwrap_or_else(|p| p.into_inner());
    assert_eq!(names.len(), 6);
    assert_eq!(pids.len(), 2, "etcd and weftd expected: {pids:?}");
    let list = netns_list();
    for name in &names[..5] {
        assert!(!list.contains(name.as_str()), "{name} still exists: {list}");
        assert!(!std::path::Path::new("/run/netns").join(name).exists());
    }
    assert!(
        !std::path::Path::new(&names[5]).exists(),
        "{} still exists",
        names[5]
    );
    for pid in pids {
        assert!(!process_alive(pid), "process {pid} survived the cleanup");
    }
    let mut sleeper: std::process::Child =
        child.unwrap_or_else(|| panic!("the sleeper was not started"));
    let status = sleeper
        .wait()
        .unwrap_or_else(|e| panic!("wait for the sleeper: {e}"));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "the pod's process must be SIGKILLed by the cleanup: {status}"
    );
}

/// Leftovers of a test process that died without destructors are removed: its namespaces (with
/// the processes inside) and temp dirs.
#[test]
fn harness_removes_leftovers_of_dead_test_processes() {
    // Above the kernel's maximum pid (4194304): never a live process.
    let name = format!("weft-4194999-{}-stale", std::process::id());
    let dir = std::path::Path::new("/dev/shm").join(format!("{name}-dir"));
    let ip = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
        assert!(out.status.success(), "ip {args:?}: {:?}", out);
    };
    ip(&["netns", "add", &name]);
    // The names the other test files give their namespaces, owned by the same dead pid.
    let others = [
        "weftk-4194999-stale".to_string(),
        format!("weft-st-4194999-{}", std::process::id()),
        format!("weft-t4194999-{}-x_pod_uid", std::process::id()),
    ];
    for other in &others {
        ip(&["netns", "add", other]);
    }
    let mut sleeper = std::process::Command::new("ip")
        .args(["netns", "exec", &name, "sleep", "60"])
        .spawn()
        .unwrap_or_else(|e| panic!("spawn sleep in {name}: {e}"));
    std::fs::create_dir_all(dir.join("sub")).unwrap_or_else(|e| panic!("mkdir {dir:?}: {e}"));
    wait_until(
        Duration::from_secs(5),
        "sleep inside the stale namespace",
        || {
            std::fs::read_link(format!("/proc/{}/ns/net", sleeper.id()))
                .ok()
                .zip(std::fs::metadata(format!("/run/netns/{name}")).ok())
                .is_some_and(|(link, meta)| {
                    link.to_string_lossy()
                        .contains(&std::os::unix::fs::MetadataExt::ino(&meta).to_string())
                })
        },
    );

    cleanup_stale();

    let status = sleeper
        .wait()
        .unwrap_or_else(|e| panic!("wait for sleep: {e}"));
    assert!(!status.success(), "sleep should have been killed: {status}");
    let list = netns_list();
    for n in others.iter().chain([&name]) {
        assert!(!list.contains(n.as_str()), "{n} not removed: {list}");
    }
    assert!(!dir.exists(), "{dir:?} not removed");
}

// ----------------------------------------------------------------------------------------------
// weftd (issue 2)

/// Time for weftd to start and write subnet.env.
const START: Duration = Duration::from_secs(30);
/// Time for a change in etcd to reach the kernel of every node.
const CONVERGE: Duration = Duration::from_secs(10);
/// A Flannel-written VTEP MAC for fake peers.
const FLANNEL_MAC: &str = "aa:bb:cc:dd:ee:ff";

/// Every node's subnet, panicking if one has none.
fn subnets(cluster: &Cluster) -> Vec<String> {
    cluster
        .nodes
        .iter()
        .map(|n| {
            n.subnet()
                .unwrap_or_else(|| panic!("{} has no subnet.env", n.name()))
        })
        .collect()
}

/// Three nodes lease three distinct subnets of the network and write Flannel's subnet.env.
#[test]
fn three_nodes_get_distinct_subnets_and_write_subnet_env() {
    let cluster = Cluster::new(3, VXLAN_CONFIG);
    cluster.start();
    let subnets = subnets(&cluster);
    let mut unique = subnets.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 3, "subnets not distinct: {subnets:?}");
    for (node, subnet) in cluster.nodes.iter().zip(&subnets) {
        assert!(
            subnet.starts_with("10.244.") && subnet.ends_with(".0/24"),
            "{subnet}"
        );
        assert_ne!(
            subnet, "10.244.0.0/24",
            "SubnetMin must skip the first subnet"
        );
        assert_eq!(
            node.subnet_env().as_deref(),
            Some(expected_subnet_env(subnet).as_str()),
            "subnet.env of {}",
            node.name()
        );
    }
    let keys: Vec<String> = cluster
        .etcd
        .get_prefix(&format!("{ETCD_PREFIX}/subnets/"))
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let mut expected: Vec<String> = subnets.iter().map(|s| lease_key(s)).collect();
    expected.sort();
    assert_eq!(keys, expected);
}

/// The lease key and value are byte for byte what flanneld writes, under a 24 h etcd lease,
/// and the VXLAN device is Flannel's.
#[test]
fn lease_and_vxlan_device_are_flannels_format() {
    let cluster = Cluster::new(1, VXLAN_CONFIG);
    cluster.start();
    let node = cluster.node(0);
    let subnet = node.subnet().unwrap_or_default();
    let mac = node
        .mac_of("flannel.1")
        .unwrap_or_else(|| panic!("no flannel.1 on {}", node.name()));
    let kv = cluster
        .etcd
        .get_kv(&lease_key(&subnet))
        .unwrap_or_else(|| panic!("no lease key for {subnet}"));
    // What flanneld v0.2x writes for this node, byte for byte:
    // {"PublicIP":"192.0.2.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"..."}}
    assert_eq!(kv.value, flannel_vxlan_lease_value("192.0.2.11", &mac));
    assert_ne!(kv.lease, 0, "own lease must carry an etcd lease");
    let ttl = cluster.etcd.lease_ttl(kv.lease).unwrap_or(-1);
    assert!(
        (23 * 3600..=24 * 3600).contains(&ttl),
        "etcd lease TTL {ttl} s, expected 24 h"
    );

    let link = node.link("flannel.1").unwrap_or_default();
    let info = &link["linkinfo"]["info_data"];
    assert_eq!(link["linkinfo"]["info_kind"], "vxlan", "{link}");
    assert_eq!(info["id"], 1, "{link}");
    assert_eq!(info["port"], 8472, "{link}");
    assert_eq!(info["local"], "192.0.2.11", "{link}");
    assert_eq!(info["learning"], false, "{link}");
    assert_eq!(link["mtu"], 1450, "{link}");
    let addrs = node.netns().ip_json(&["addr", "show", "dev", "flannel.1"]);
    let inet: Vec<String> = addrs
        .iter()
        .flat_map(|a| a["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["family"] == "inet")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))
        .collect();
    assert_eq!(inet, vec![subnet.replace("/24", "/32")]);
}

/// Leases written by flanneld, current (`"PublicIPv6":null`) and older form, exact bytes, are
/// programmed as flanneld programs them.
#[test]
fn flannel_written_leases_are_programmed_as_flannel_does() {
    let cluster = Cluster::new(1, VXLAN_CONFIG);
    cluster.start();
    let node = cluster.node(0);
    let (current, older) = ("10.244.99.0/24", "10.244.98.0/24");
    let older_mac = "aa:bb:cc:dd:ee:98";
    cluster.etcd.put_with_ttl(
        &lease_key(current),
        &flannel_vxlan_lease_value("192.0.2.99", FLANNEL_MAC),
        3600,
    );
    cluster.etcd.put_with_ttl(
        &lease_key(older),
        &vxlan_lease_value("192.0.2.98", older_mac),
        3600,
    );
    node.wait_until(
        CONVERGE,
        "route, neighbour and FDB entry for both peers",
        || {
            node.vxlan_peer_programmed("flannel.1", current, "192.0.2.99", FLANNEL_MAC)
                && node.vxlan_peer_programmed("flannel.1", older, "192.0.2.98", older_mac)
        },
    );
}

/// Pods on three nodes reach each other over TCP across the VXLAN overlay.
#[test]
fn pods_on_different_nodes_talk_tcp() {
    let cluster = Cluster::new(3, VXLAN_CONFIG);
    cluster.start();
    cluster.wait_mesh(CONVERGE);
    let pods: Vec<Pod> = cluster.nodes.iter().map(Node::add_pod).collect();
    for a in &pods {
        for b in &pods {
            if a.ip() != b.ip() {
                assert!(
                    a.tcp_check(b),
                    "TCP {} -> {}\n{}",
                    a.ip(),
                    b.ip(),
                    cluster.dump()
                );
            }
        }
    }
}

/// A node whose weftd is killed with SIGKILL and restarted keeps its subnet and VTEP MAC, and
/// pod traffic through it never stops.
#[test]
fn kill9_restart_keeps_subnet_mac_and_pod_traffic() {
    let cluster = Cluster::new(2, VXLAN_CONFIG);
    cluster.start();
    cluster.wait_mesh(CONVERGE);
    let (n1, n2) = (cluster.node(0), cluster.node(1));
    let (p1, p2) = (n1.add_pod(), n2.add_pod());
    assert!(p1.tcp_check(&p2), "TCP before restart\n{}", cluster.dump());
    let subnet = n1.subnet();
    let mac = n1.mac_of("flannel.1");
    let value = cluster.etcd.get(&n1.lease_key().unwrap_or_default());
    let probe = p1.traffic_probe(&p2);
    probe.wait_attempts(10);

    for _ in 0..2 {
        n1.kill9();
        probe.wait_attempts(5);
        n1.restart();
        n1.wait_ready(START);
        probe.wait_attempts(10);
    }
    let stats = probe.stop();
    assert_eq!(n1.subnet(), subnet);
    assert_eq!(n1.mac_of("flannel.1"), mac);
    assert_eq!(cluster.etcd.get(&n1.lease_key().unwrap_or_default()), value);
    assert_eq!(stats.failures, 0, "pod traffic interrupted: {stats:?}");
    assert!(p1.tcp_check(&p2), "TCP after restart\n{}", cluster.dump());
}

/// A lease deleted while a node is down is gone from that node's kernel after it restarts;
/// a live peer's entries stay.
#[test]
fn lease_deleted_while_node_down_is_gone_after_restart() {
    let cluster = Cluster::new(2, VXLAN_CONFIG);
    cluster.start();
    cluster.wait_mesh(CONVERGE);
    let (n1, n2) = (cluster.node(0), cluster.node(1));
    let ghost = "10.244.98.0/24";
    cluster.etcd.put_with_ttl(
        &lease_key(ghost),
        &vxlan_lease_value("192.0.2.98", FLANNEL_MAC),
        3600,
    );
    n1.wait_until(CONVERGE, "ghost peer programmed", || {
        n1.vxlan_peer_programmed("flannel.1", ghost, "192.0.2.98", FLANNEL_MAC)
    });
    n1.kill9();
    assert!(cluster.etcd.del(&lease_key(ghost)));
    n1.restart();
    n1.wait_ready(START);
    n1.wait_until(CONVERGE, "ghost peer's entries removed", || {
        n1.vxlan_peer_absent(ghost, FLANNEL_MAC)
    });
    let s2 = n2.subnet().unwrap_or_default();
    let mac2 = n2.mac_of("flannel.1").unwrap_or_default();
    assert!(
        n1.vxlan_peer_programmed("flannel.1", &s2, n2.public_ip(), &mac2),
        "live peer lost\n{}",
        cluster.dump()
    );
}

/// A lease deleted from etcd is withdrawn (route, neighbour, FDB) from every running peer.
#[test]
fn deleted_lease_is_withdrawn_from_peers() {
    let cluster = Cluster::new(2, VXLAN_CONFIG);
    cluster.start();
    let gone = "10.244.97.0/24";
    cluster.etcd.put_with_ttl(
        &lease_key(gone),
        &vxlan_lease_value("192.0.2.97", FLANNEL_MAC),
        3600,
    );
    for node in &cluster.nodes {
        node.wait_until(CONVERGE, "peer 10.244.97.0/24 programmed", || {
            node.vxlan_peer_programmed("flannel.1", gone, "192.0.2.97", FLANNEL_MAC)
        });
    }
    assert!(cluster.etcd.del(&lease_key(gone)));
    for node in &cluster.nodes {
        node.wait_until(CONVERGE, "peer 10.244.97.0/24 withdrawn", || {
            node.vxlan_peer_absent(gone, FLANNEL_MAC)
        });
    }
}

/// A node's own key deleted while it runs is acquired again (same subnet, it is still free).
#[test]
fn own_deleted_lease_is_reacquired() {
    let cluster = Cluster::new(1, VXLAN_CONFIG);
    cluster.start();
    let node = cluster.node(0);
    let key = node.lease_key().unwrap_or_default();
    let value = cluster.etcd.get(&key);
    assert!(cluster.etcd.del(&key));
    node.wait_until(CONVERGE, "own lease re-acquired", || {
        cluster.etcd.get_kv(&key).is_some_and(|kv| kv.lease != 0)
    });
    assert_eq!(cluster.etcd.get(&key), value);
    assert!(
        node.is_running(),
        "weftd must not exit when its lease is deleted"
    );
}

/// Reservations (keys without an etcd lease) are honoured: the node whose PublicIP is reserved
/// gets that subnet, the reservation stays a reservation, and no node takes another node's.
#[test]
fn reservation_is_honoured() {
    let config = r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.50.0","SubnetMax":"10.244.53.0","Backend":{"Type":"vxlan"}}"#;
    let cluster = Cluster::new(3, config);
    let mine = lease_key("10.244.50.0/24");
    let foreign = lease_key("10.244.51.0/24");
    cluster.etcd.put(&mine, r#"{"PublicIP":"192.0.2.11"}"#);
    cluster.etcd.put(&foreign, r#"{"PublicIP":"192.0.2.77"}"#);
    cluster.start();
    assert_eq!(cluster.node(0).subnet().as_deref(), Some("10.244.50.0/24"));
    let mut others: Vec<String> = subnets(&cluster)[1..].to_vec();
    others.sort();
    assert_eq!(others, vec!["10.244.52.0/24", "10.244.53.0/24"]);
    let kv = cluster
        .etcd
        .get_kv(&mine)
        .unwrap_or_else(|| panic!("{mine} gone"));
    assert_eq!(kv.lease, 0, "a reservation must stay without an etcd lease");
    assert!(
        kv.value.contains(r#""PublicIP":"192.0.2.11""#),
        "{}",
        kv.value
    );
    assert_eq!(
        cluster.etcd.get_kv(&foreign).map(|kv| (kv.value, kv.lease)),
        Some((r#"{"PublicIP":"192.0.2.77"}"#.to_string(), 0))
    );
}

/// Nodes started together racing for few subnets all end with distinct ones.
#[test]
fn nodes_racing_for_few_subnets_get_distinct_ones() {
    let config = r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.4.0","Backend":{"Type":"vxlan"}}"#;
    let cluster = Cluster::new(4, config);
    cluster.start();
    let mut got = subnets(&cluster);
    got.sort();
    assert_eq!(
        got,
        vec![
            "10.244.1.0/24",
            "10.244.2.0/24",
            "10.244.3.0/24",
            "10.244.4.0/24"
        ]
    );
    assert_eq!(
        cluster
            .etcd
            .get_prefix(&format!("{ETCD_PREFIX}/subnets/"))
            .len(),
        4
    );
    for node in &cluster.nodes {
        assert!(node.is_running(), "{} exited", node.name());
    }
}

/// An invalid network config gets one clear error naming the field and the value, and no
/// subnet.env; a corrected config is then picked up.
#[test]
fn invalid_config_gets_clear_error_and_no_subnet_env() {
    let cluster = Cluster::new(1, r#"{"Network":"10.244.0.0/16","SubnetLen":33}"#);
    let node = cluster.node(0);
    node.start_weftd(&[]);
    node.wait_until(CONVERGE, "an error naming SubnetLen and 33", || {
        let log = node.log();
        log.lines()
            .any(|l| l.contains("SubnetLen") && l.contains("33"))
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        node.subnet_env(),
        None,
        "subnet.env written for an invalid config"
    );
    assert!(
        cluster
            .etcd
            .get_prefix(&format!("{ETCD_PREFIX}/subnets/"))
            .is_empty(),
        "a lease was taken with an invalid config"
    );
}

/// Without a network config weftd waits (and says so), then starts when the config appears.
#[test]
fn missing_config_is_awaited() {
    let cluster = Cluster::new(1, "");
    let node = cluster.node(0);
    node.start_weftd(&[]);
    node.wait_until(CONVERGE, "a log line about waiting for the config", || {
        node.log()
            .lines()
            .any(|l| l.contains("waiting") && l.contains(NETWORK_CONFIG_KEY))
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(node.is_running(), "weftd exited without a config");
    assert_eq!(node.subnet_env(), None);
    cluster.etcd.put(NETWORK_CONFIG_KEY, VXLAN_CONFIG);
    let env = node.wait_subnet_env(START);
    let subnet = subnet_of(&env).unwrap_or_default();
    assert_eq!(env, expected_subnet_env(&subnet));
}

/// Puts every `(key, value)` into etcd with the v3 JSON API, 100 per transaction (etcd's
/// default limit is 128 operations), from inside the etcd namespace.
fn put_many(etcd: &Etcd, kvs: &[(String, String)]) {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    for chunk in kvs.chunks(100) {
        let ops: Vec<serde_json::Value> = chunk
            .iter()
            .map(|(k, v)| serde_json::json!({"requestPut": {"key": b64(k), "value": b64(v)}}))
            .collect();
        let body = serde_json::json!({ "success": ops }).to_string();
        let out = etcd.netns().exec_ok(&[
            "curl",
            "-fsS",
            "-X",
            "POST",
            "http://127.0.0.1:2379/v3/kv/txn",
            "-d",
            &body,
        ]);
        assert!(out.contains(r#""succeeded":true"#), "etcd txn: {out}");
    }
}

/// `n` VXLAN leases of /26 subnets of 10.244.0.0/16 (never the first /26) for fake peers whose
/// public IPs are in 198.18.0.0/15 (benchmarking range, only written into FDB entries).
fn fake_peer_leases(n: u32) -> Vec<(String, String)> {
    (1..=n)
        .map(|s| {
            let subnet = format!("10.244.{}.{}/26", s / 4, (s % 4) * 64);
            let public_ip = format!("198.18.{}.{}", s / 250, s % 250 + 1);
            let mac = format!("02:42:c6:12:{:02x}:{:02x}", s / 256, s % 256);
            (lease_key(&subnet), vxlan_lease_value(&public_ip, &mac))
        })
        .collect()
}

/// Counts of `(routes, permanent neighbours, FDB entries)` on `flannel.1` of `node`.
fn vxlan_entry_counts(node: &Node) -> (usize, usize, usize) {
    if node.link("flannel.1").is_none() {
        return (0, 0, 0);
    }
    let routes = node
        .netns()
        .ip_json(&["route", "show", "dev", "flannel.1"])
        .len();
    let neighbours = node
        .netns()
        .ip_json(&["neigh", "show", "dev", "flannel.1", "nud", "permanent"])
        .len();
    let fdb = node
        .netns()
        .bridge_json(&["fdb", "show", "dev", "flannel.1"])
        .iter()
        .filter(|f| f["dst"].is_string())
        .count();
    (routes, neighbours, fdb)
}

/// subnet.env appears only after the device and every existing peer are programmed, and
/// `/readyz` answers 200 only from then on. With 1000 peers (3000 kernel entries) to program,
/// weftd is frozen (SIGSTOP) the moment the file is created and the kernel is counted then.
#[test]
fn subnet_env_and_readyz_come_after_all_peers_are_programmed() {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    use nix::sys::signal::{kill, Signal};
    use std::sync::atomic::{AtomicBool, Ordering};

    const PEERS: u32 = 1000;
    let cluster = Cluster::new(
        1,
        r#"{"Network":"10.244.0.0/16","SubnetLen":26,"Backend":{"Type":"vxlan"}}"#,
    );
    put_many(&cluster.etcd, &fake_peer_leases(PEERS));
    let node = cluster.node(0);
    let inotify =
        Inotify::init(InitFlags::IN_NONBLOCK).unwrap_or_else(|e| panic!("inotify_init: {e}"));
    inotify
        .add_watch(
            node.dir(),
            AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO,
        )
        .unwrap_or_else(|e| panic!("inotify watch {}: {e}", node.dir().display()));
    let file_name = node.subnet_file();
    let file_name = file_name.file_name().unwrap_or_default();

    // Polls /readyz until the file is seen, remembering whether it ever said 200 while the
    // file was not on disk (the disk, not the inotify reader below, which may lag behind).
    let file_seen = AtomicBool::new(false);
    let ready_early = AtomicBool::new(false);
    let mut frozen_counts = None;
    let subnet_path = node.subnet_file();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !file_seen.load(Ordering::SeqCst) {
                if node
                    .http_get("/readyz")
                    .is_some_and(|(code, _)| code == 200)
                    && !subnet_path.exists()
                {
                    ready_early.store(true, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        node.start_weftd(&[]);
        let pid = node
            .weftd_pid()
            .unwrap_or_else(|| panic!("weftd has no pid"));
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        let deadline = std::time::Instant::now() + START;
        'wait: loop {
            if let Ok(events) = inotify.read_events() {
                if events.iter().any(|e| e.name.as_deref() == Some(file_name)) {
                    // Freeze weftd before it can add anything more, then look at the kernel.
                    let _ = kill(pid, Signal::SIGSTOP);
                    file_seen.store(true, Ordering::SeqCst);
                    frozen_counts = Some(vxlan_entry_counts(node));
                    let _ = kill(pid, Signal::SIGCONT);
                    break 'wait;
                }
            }
            if std::time::Instant::now() > deadline || !node.is_running() {
                file_seen.store(true, Ordering::SeqCst);
                panic!("no subnet.env within {START:?}\n{}", node.log_tail(40));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let n = PEERS as usize;
    assert_eq!(
        frozen_counts,
        Some((n, n, n)),
        "(routes, neighbours, FDB entries) on flannel.1 when subnet.env appeared"
    );
    assert!(
        !ready_early.load(Ordering::SeqCst),
        "/readyz answered 200 before subnet.env was written"
    );
    node.wait_ready(CONVERGE);
}

/// The `retry_in=` delays (in seconds) of weftd's "etcd unavailable" lines in `log`.
fn etcd_retry_delays(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("etcd unavailable"))
        .filter_map(|l| l.split("retry_in=").nth(1)?.split_whitespace().next())
        .filter_map(|d| match d.strip_suffix("ms") {
            Some(ms) => ms.parse::<f64>().ok().map(|ms| ms / 1000.0),
            None => d.strip_suffix('s')?.parse().ok(),
        })
        .collect()
}

/// etcd stopped and restarted under a running cluster: pod traffic never stops, weftd keeps
/// running and retries with back-off (200 ms doubling to a 2 s cap; the outage outlasts the
/// cap), and a node that joined during the outage is converged on by everyone afterwards.
#[test]
fn etcd_outage_loses_no_pod_traffic_and_cluster_converges() {
    let mut cluster = Cluster::new(2, VXLAN_CONFIG);
    cluster.start();
    cluster.wait_mesh(CONVERGE);
    let (p1, p2) = (cluster.node(0).add_pod(), cluster.node(1).add_pod());
    let probe = p1.traffic_probe(&p2);
    probe.wait_attempts(10);

    cluster.etcd.stop();
    cluster.add_node();
    let late = cluster.node(2);
    late.start_weftd(&[]);
    // 0.2 + 0.4 + 0.8 + 1.6 s of retries: the 2 s cap is reached about 3 s into the outage.
    let n1 = cluster.node(0);
    n1.wait_until(
        Duration::from_secs(40),
        "weftd retrying etcd at the back-off cap",
        || etcd_retry_delays(&n1.log()).contains(&2.0),
    );
    let delays = etcd_retry_delays(&n1.log());
    assert!(
        delays.first().is_some_and(|d| *d <= 0.4)
            && delays.windows(2).all(|w| w[1] == (w[0] * 2.0).min(2.0))
            && delays.iter().all(|d| *d <= 2.0),
        "retry delays while etcd was down: {delays:?} (want 200 ms doubling to 2 s)"
    );
    for node in &cluster.nodes {
        assert!(
            node.is_running(),
            "{} exited while etcd was down",
            node.name()
        );
    }
    assert_eq!(late.subnet_env(), None);
    cluster.etcd.start();

    late.wait_subnet_env(Duration::from_secs(60));
    cluster.wait_mesh(Duration::from_secs(60));
    let stats = probe.stop();
    assert_eq!(stats.failures, 0, "pod traffic interrupted: {stats:?}");
    let p3 = cluster.node(2).add_pod();
    assert!(
        p1.tcp_check(&p3),
        "TCP to the late node\n{}",
        cluster.dump()
    );
    assert!(
        p3.tcp_check(&p2),
        "TCP from the late node\n{}",
        cluster.dump()
    );
}

/// A peer whose VTEP MAC changed gets a new neighbour and FDB entry; the old FDB entry goes.
#[test]
fn peer_mac_change_replaces_its_fdb_entry() {
    let cluster = Cluster::new(1, VXLAN_CONFIG);
    cluster.start();
    let node = cluster.node(0);
    let peer = "10.244.96.0/24";
    let key = lease_key(peer);
    cluster
        .etcd
        .put_with_ttl(&key, &vxlan_lease_value("192.0.2.96", FLANNEL_MAC), 3600);
    node.wait_until(CONVERGE, "peer with the first MAC", || {
        node.vxlan_peer_programmed("flannel.1", peer, "192.0.2.96", FLANNEL_MAC)
    });
    let new_mac = "02:00:00:00:00:96";
    cluster
        .etcd
        .put_with_ttl(&key, &vxlan_lease_value("192.0.2.96", new_mac), 3600);
    node.wait_until(
        CONVERGE,
        "peer with the new MAC, old FDB entry gone",
        || {
            node.vxlan_peer_programmed("flannel.1", peer, "192.0.2.96", new_mac)
                && !node
                    .fdb()
                    .iter()
                    .any(|f| f["mac"].as_str() == Some(FLANNEL_MAC))
        },
    );
}

/// A deleted VXLAN device is recreated with the same MAC and every peer re-programmed; pods talk.
#[test]
fn deleted_vxlan_device_is_recreated_and_reprogrammed() {
    let cluster = Cluster::new(2, VXLAN_CONFIG);
    cluster.start();
    cluster.wait_mesh(CONVERGE);
    let (n1, n2) = (cluster.node(0), cluster.node(1));
    let (p1, p2) = (n1.add_pod(), n2.add_pod());
    let mac = n1.mac_of("flannel.1").unwrap_or_default();
    let s2 = n2.subnet().unwrap_or_default();
    let mac2 = n2.mac_of("flannel.1").unwrap_or_default();
    n1.netns().ip(&["link", "del", "flannel.1"]);
    n1.wait_until(
        CONVERGE,
        "flannel.1 recreated and peer re-programmed",
        || n1.vxlan_peer_programmed("flannel.1", &s2, n2.public_ip(), &mac2),
    );
    assert_eq!(n1.mac_of("flannel.1"), Some(mac));
    assert!(
        p1.tcp_check(&p2),
        "TCP after recreation\n{}",
        cluster.dump()
    );
}

/// Periodic reconciliation removes entries on the overlay device that no lease justifies.
#[test]
fn stale_kernel_entries_are_removed_by_reconcile() {
    let cluster = Cluster::new(2, VXLAN_CONFIG);
    for node in &cluster.nodes {
        node.start_weftd(&["--resync-interval", "2"]);
        node.wait_subnet_env(START);
    }
    cluster.wait_mesh(CONVERGE);
    let (n1, n2) = (cluster.node(0), cluster.node(1));
    let stale = "10.244.200.0/24";
    let stale_mac = "02:00:00:00:02:00";
    let ns = n1.netns();
    // As weft writes its routes: with its protocol number, which is how it knows them.
    ns.ip(&[
        "route",
        "add",
        stale,
        "via",
        "10.244.200.0",
        "dev",
        "flannel.1",
        "onlink",
        "proto",
        "87",
    ]);
    ns.ip(&[
        "neigh",
        "add",
        "10.244.200.0",
        "lladdr",
        stale_mac,
        "dev",
        "flannel.1",
        "nud",
        "permanent",
    ]);
    ns.exec_ok(&[
        "bridge",
        "fdb",
        "add",
        stale_mac,
        "dev",
        "flannel.1",
        "dst",
        "192.0.2.200",
        "self",
        "permanent",
    ]);
    assert!(n1.vxlan_peer_programmed("flannel.1", stale, "192.0.2.200", stale_mac));
    n1.wait_until(
        CONVERGE,
        "stale route, neighbour and FDB entry removed",
        || n1.vxlan_peer_absent(stale, stale_mac),
    );
    let s2 = n2.subnet().unwrap_or_default();
    let mac2 = n2.mac_of("flannel.1").unwrap_or_default();
    assert!(n1.vxlan_peer_programmed("flannel.1", &s2, n2.public_ip(), &mac2));
}

/// An upgrade from a version that wrote VXLAN routes without weft's protocol number: the
/// restarted agent adopts its routes (protocol 87, no duplicates), removes the untagged route
/// of a peer that left while it was down, and pods keep talking.
#[test]
fn untagged_routes_of_the_previous_version_are_adopted_on_start() {
    let cluster = Cluster::new(2, VXLAN_CONFIG);
    for node in &cluster.nodes {
        node.start_weftd(&[]);
        node.wait_subnet_env(START);
    }
    cluster.wait_mesh(CONVERGE);
    let (n1, n2) = (cluster.node(0), cluster.node(1));
    let (p1, p2) = (n1.add_pod(), n2.add_pod());
    assert!(p1.tcp_check(&p2), "TCP before\n{}", cluster.dump());
    n1.stop();
    let s2 = n2.subnet().unwrap_or_default();
    let gw2 = s2.trim_end_matches("/24").to_string();
    let ns = n1.netns();
    // The routes as the previous version left them: no protocol given (the kernel says boot).
    ns.ip(&[
        "route",
        "replace",
        &s2,
        "via",
        &gw2,
        "dev",
        "flannel.1",
        "onlink",
        "proto",
        "boot",
    ]);
    let gone = "10.244.200.0/24";
    ns.ip(&[
        "route",
        "add",
        gone,
        "via",
        "10.244.200.0",
        "dev",
        "flannel.1",
        "onlink",
    ]);
    let before = ns.ip(&["route", "show", "dev", "flannel.1"]);
    assert!(!before.contains("proto 87"), "{before}");
    assert!(
        p1.tcp_check(&p2),
        "TCP over the untagged route\n{}",
        cluster.dump()
    );
    n1.restart();
    let mut routes = String::new();
    n1.wait_until(CONVERGE, "untagged routes adopted or removed", || {
        routes = ns.ip(&["route", "show", "dev", "flannel.1"]);
        let lines: Vec<&str> = routes.lines().collect();
        lines.len() == 1 && lines[0].starts_with(&format!("{s2} via {gw2} proto 87"))
    });
    assert!(!routes.contains(gone), "{routes}");
    assert!(
        p1.tcp_check(&p2),
        "TCP after the adoption\n{}",
        cluster.dump()
    );
}

/// A pre-existing flannel.1 with wrong VNI, port, MTU and learning is fixed or recreated.
#[test]
fn existing_device_with_wrong_attributes_is_fixed() {
    let cluster = Cluster::new(1, VXLAN_CONFIG);
    let node = cluster.node(0);
    node.netns().ip(&[
        "link",
        "add",
        "flannel.1",
        "mtu",
        "1300",
        "type",
        "vxlan",
        "id",
        "7",
        "local",
        "192.0.2.11",
        "dev",
        "eth0",
        "dstport",
        "4789",
        "learning",
    ]);
    node.start_weftd(&[]);
    node.wait_subnet_env(START);
    let link = node.link("flannel.1").unwrap_or_default();
    let info = &link["linkinfo"]["info_data"];
    assert_eq!(info["id"], 1, "{link}");
    assert_eq!(info["port"], 8472, "{link}");
    assert_eq!(info["local"], "192.0.2.11", "{link}");
    assert_eq!(info["learning"], false, "{link}");
    assert_eq!(link["mtu"], 1450, "{link}");
}

/// The VTEP MAC is persisted in --state-dir: after a "reboot" (device gone, weftd restarted) the
/// node comes back with the same MAC and the same lease value.
#[test]
fn vtep_mac_survives_reboot() {
    let cluster = Cluster::new(1, VXLAN_CONFIG);
    cluster.start();
    let node = cluster.node(0);
    let mac = node.mac_of("flannel.1");
    let key = node.lease_key().unwrap_or_default();
    let value = cluster.etcd.get(&key);
    node.kill9();
    node.netns().ip(&["link", "del", "flannel.1"]);
    node.restart();
    node.wait_until(START, "flannel.1 back", || node.link("flannel.1").is_some());
    node.wait_ready(START);
    assert_eq!(node.mac_of("flannel.1"), mac);
    assert_eq!(cluster.etcd.get(&key), value);
}

/// A restarted node whose lease vanished meanwhile gets its previous subnet back from subnet.env.
#[test]
fn previous_subnet_from_subnet_env_is_reused() {
    let cluster = Cluster::new(1, VXLAN_CONFIG);
    cluster.start();
    let node = cluster.node(0);
    let subnet = node.subnet();
    node.kill9();
    assert!(cluster.etcd.del(&node.lease_key().unwrap_or_default()));
    node.restart();
    node.wait_ready(START);
    assert_eq!(node.subnet(), subnet);
    let key = node.lease_key().unwrap_or_default();
    assert!(
        cluster.etcd.get_kv(&key).is_some_and(|kv| kv.lease != 0),
        "lease for {subnet:?} not re-created"
    );
}

/// VNI, Port and MTU from the config are used (device name, lease, subnet.env), and pods talk.
#[test]
fn backend_vni_port_and_mtu_from_config_are_used() {
    let config =
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":42,"Port":4789,"MTU":1400}}"#;
    let cluster = Cluster::new(2, config);
    cluster.start();
    cluster.wait_mesh(CONVERGE);
    let node = cluster.node(0);
    let link = node
        .link("flannel.42")
        .unwrap_or_else(|| panic!("no flannel.42 on {}", node.name()));
    assert_eq!(link["linkinfo"]["info_data"]["id"], 42, "{link}");
    assert_eq!(link["linkinfo"]["info_data"]["port"], 4789, "{link}");
    assert_eq!(link["mtu"], 1400, "{link}");
    let env = node.subnet_env().unwrap_or_default();
    assert!(env.contains("\nFLANNEL_MTU=1400\n"), "{env}");
    let value = cluster
        .etcd
        .get(&node.lease_key().unwrap_or_default())
        .unwrap_or_default();
    assert!(value.contains(r#""BackendData":{"VNI":42,"#), "{value}");
    let (p1, p2) = (node.add_pod(), cluster.node(1).add_pod());
    assert!(p1.tcp_check(&p2), "TCP over VNI 42\n{}", cluster.dump());
}

/// A config without `Backend` means VXLAN (unlike Flannel, which defaults to udp).
#[test]
fn missing_backend_means_vxlan() {
    let cluster = Cluster::new(1, r#"{"Network":"10.244.0.0/16"}"#);
    cluster.start();
    let node = cluster.node(0);
    assert!(node.link("flannel.1").is_some(), "no flannel.1");
    let value = cluster
        .etcd
        .get(&node.lease_key().unwrap_or_default())
        .unwrap_or_default();
    assert!(value.contains(r#""BackendType":"vxlan""#), "{value}");
}

/// DirectRouting: a peer on the same L2 subnet gets a plain route via its PublicIP; a peer
/// elsewhere still goes over VXLAN; pods talk.
#[test]
fn direct_routing_uses_plain_routes_on_the_same_l2() {
    let config = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#;
    let cluster = Cluster::new(2, config);
    cluster.start();
    let (n1, n2) = (cluster.node(0), cluster.node(1));
    let s2 = n2.subnet().unwrap_or_default();
    n1.wait_until(CONVERGE, "direct route to node 2's subnet", || {
        n1.route_to(&s2).is_some_and(|r| {
            r["gateway"].as_str() == Some(n2.public_ip()) && r["dev"].as_str() == Some("eth0")
        })
    });
    let far = "10.244.95.0/24";
    cluster.etcd.put_with_ttl(
        &lease_key(far),
        &vxlan_lease_value("198.51.100.95", FLANNEL_MAC),
        3600,
    );
    n1.wait_until(CONVERGE, "VXLAN entries for the peer off the L2", || {
        n1.vxlan_peer_programmed("flannel.1", far, "198.51.100.95", FLANNEL_MAC)
    });
    let (p1, p2) = (n1.add_pod(), n2.add_pod());
    assert!(
        p1.tcp_check(&p2),
        "TCP over direct routes\n{}",
        cluster.dump()
    );
}

/// --ip-masq: traffic leaving the cluster network is masqueraded, pod-to-pod is not; the nftables
/// table is removed on SIGTERM.
#[test]
fn ip_masq_masquerades_egress_only_and_is_removed_on_shutdown() {
    let cluster = Cluster::new(2, VXLAN_CONFIG);
    for node in &cluster.nodes {
        node.start_weftd(&["--ip-masq"]);
        node.wait_subnet_env(START);
    }
    cluster.wait_mesh(CONVERGE);
    let (n1, n2) = (cluster.node(0), cluster.node(1));
    let env = n1.subnet_env().unwrap_or_default();
    assert!(env.ends_with("FLANNEL_IPMASQ=true\n"), "{env}");
    assert!(
        n1.nft_ruleset().contains("table ip weft"),
        "{}",
        n1.nft_ruleset()
    );
    let outside = Netns::new("outside");
    cluster.underlay.attach(&outside, "192.0.2.100");
    let (p1, p2) = (n1.add_pod(), n2.add_pod());
    assert_eq!(
        tcp_source_seen(p1.netns(), &outside, "192.0.2.100"),
        Some(
            "192.0.2.11"
                .parse()
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED)
        ),
        "egress to a non-cluster address must be masqueraded to the node's IP"
    );
    assert_eq!(
        tcp_source_seen(p1.netns(), p2.netns(), p2.ip()).map(|a| a.to_string()),
        Some(p1.ip().to_string()),
        "pod-to-pod traffic must keep the pod's address"
    );
    let status = n1.stop();
    assert!(status.success(), "weftd exit status {status}");
    assert!(
        !n1.nft_ruleset().contains("table ip weft"),
        "table left after SIGTERM: {}",
        n1.nft_ruleset()
    );
}

/// SIGTERM stops weftd cleanly but leaves device, routes and lease in place: pods keep talking.
#[test]
fn sigterm_leaves_data_path_and_lease_in_place() {
    let cluster = Cluster::new(2, VXLAN_CONFIG);
    cluster.start();
    cluster.wait_mesh(CONVERGE);
    let (n1, n2) = (cluster.node(0), cluster.node(1));
    let (p1, p2) = (n1.add_pod(), n2.add_pod());
    let key = n1.lease_key().unwrap_or_default();
    let kv = cluster.etcd.get_kv(&key);
    let probe = p1.traffic_probe(&p2);
    probe.wait_attempts(10);
    let status = n1.stop();
    assert!(status.success(), "weftd exit status {status}");
    probe.wait_attempts(20);
    let stats = probe.stop();
    assert_eq!(stats.failures, 0, "pod traffic interrupted: {stats:?}");
    assert!(
        n1.link("flannel.1").is_some(),
        "flannel.1 removed on SIGTERM"
    );
    let s2 = n2.subnet().unwrap_or_default();
    let mac2 = n2.mac_of("flannel.1").unwrap_or_default();
    assert!(n1.vxlan_peer_programmed("flannel.1", &s2, n2.public_ip(), &mac2));
    assert_eq!(cluster.etcd.get_kv(&key), kv, "lease changed on SIGTERM");
}

/// A node cut off from etcd while leases change and history is compacted catches up (its watch
/// resumes from a compacted revision: it must re-list and diff) without waiting for a resync.
#[test]
fn watch_recovers_after_compaction() {
    let cluster = Cluster::new(1, VXLAN_CONFIG);
    let node = cluster.node(0);
    node.start_weftd(&["--resync-interval", "3600"]);
    node.wait_subnet_env(START);
    let (old, new) = ("10.244.94.0/24", "10.244.93.0/24");
    let new_mac = "02:00:00:00:00:93";
    cluster.etcd.put_with_ttl(
        &lease_key(old),
        &vxlan_lease_value("192.0.2.94", FLANNEL_MAC),
        3600,
    );
    node.wait_until(CONVERGE, "old peer programmed", || {
        node.vxlan_peer_programmed("flannel.1", old, "192.0.2.94", FLANNEL_MAC)
    });

    node.netns().ip(&["link", "set", "eth0", "down"]);
    // Restarting etcd breaks the node's connection; the node only notices once it can send.
    cluster.etcd.stop();
    cluster.etcd.start();
    assert!(cluster.etcd.del(&lease_key(old)));
    cluster.etcd.put_with_ttl(
        &lease_key(new),
        &vxlan_lease_value("192.0.2.93", new_mac),
        3600,
    );
    for i in 0..5 {
        cluster.etcd.put("/weft-test/filler", &i.to_string());
    }
    cluster.etcd.compact();
    node.netns().ip(&["link", "set", "eth0", "up"]);

    node.wait_until(
        Duration::from_secs(60),
        "old peer withdrawn, new one programmed",
        || {
            node.vxlan_peer_absent(old, FLANNEL_MAC)
                && node.vxlan_peer_programmed("flannel.1", new, "192.0.2.93", new_mac)
        },
    );
}

/// `weftctl leases` prints the leases as a table (reservations as "reserved") and as JSON.
#[test]
fn weftctl_leases_prints_table_and_json() {
    let cluster = Cluster::new(2, VXLAN_CONFIG);
    cluster
        .etcd
        .put(&lease_key("10.244.92.0/24"), r#"{"PublicIP":"192.0.2.92"}"#);
    cluster.start();
    let weftctl = env!("CARGO_BIN_EXE_weftctl");
    let endpoint = cluster.etcd.endpoint();
    let node = cluster.node(0);
    let table = node
        .netns()
        .exec_ok(&[weftctl, "leases", "--etcd-endpoints", &endpoint]);
    for n in &cluster.nodes {
        let subnet = n.subnet().unwrap_or_default();
        let mac = n.mac_of("flannel.1").unwrap_or_default();
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("{subnet} ")))
            .unwrap_or_else(|| panic!("no row for {subnet}:\n{table}"));
        assert!(
            row.contains(n.public_ip()) && row.contains(&mac) && row.contains("vxlan"),
            "{row}"
        );
    }
    let reserved = table
        .lines()
        .find(|l| l.starts_with("10.244.92.0/24 "))
        .unwrap_or_else(|| panic!("no row for the reservation:\n{table}"));
    assert!(reserved.contains("reserved"), "{reserved}");

    let json = node.netns().exec_ok(&[
        weftctl,
        "leases",
        "--etcd-endpoints",
        &endpoint,
        "-o",
        "json",
    ]);
    let rows: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("weftctl -o json: {e}: {json}"));
    let rows = rows.as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 3, "{json}");
    let n1 = cluster.node(0);
    let row = rows
        .iter()
        .find(|r| r["publicIP"] == n1.public_ip())
        .unwrap_or_else(|| panic!("no JSON row for {}: {json}", n1.public_ip()));
    assert_eq!(row["subnet"], n1.subnet().unwrap_or_default().as_str());
    assert_eq!(
        row["vtepMAC"],
        n1.mac_of("flannel.1").unwrap_or_default().as_str()
    );
    assert_eq!(row["reserved"], false);
}

/// /healthz, /readyz and /metrics answer; metrics show the programmed peers.
#[test]
fn healthz_readyz_and_metrics() {
    let cluster = Cluster::new(2, VXLAN_CONFIG);
    cluster.start();
    cluster.wait_mesh(CONVERGE);
    let node = cluster.node(0);
    assert_eq!(node.http_get("/healthz").map(|(c, _)| c), Some(200));
    assert_eq!(node.http_get("/readyz").map(|(c, _)| c), Some(200));
    let (code, metrics) = node.http_get("/metrics").unwrap_or_default();
    assert_eq!(code, 200);
    for name in [
        "weft_peers_desired",
        "weft_peers_programmed",
        "weft_reconcile_runs_total",
        "weft_etcd_errors_total",
        "weft_lease_expiry_timestamp_seconds",
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(name)),
            "{name} missing:\n{metrics}"
        );
    }
}

/// Every flag can come from its `WEFTD_<NAME>` variable; `--iface` also takes an address.
#[test]
fn flags_from_environment_variables() {
    let cluster = Cluster::new(1, VXLAN_CONFIG);
    let node = cluster.node(0);
    let endpoint = cluster.etcd.endpoint();
    let subnet_file = node.dir().join("env-subnet.env");
    let state_dir = node.dir().join("env-state");
    let healthz = format!("127.0.0.1:{}", Node::HEALTHZ_PORT);
    node.start_weftd_env(&[
        ("WEFTD_ETCD_ENDPOINTS", &endpoint),
        ("WEFTD_IFACE", node.public_ip()),
        ("WEFTD_SUBNET_FILE", &subnet_file.to_string_lossy()),
        ("WEFTD_STATE_DIR", &state_dir.to_string_lossy()),
        ("WEFTD_HEALTHZ_ADDR", &healthz),
    ]);
    let env = node.wait_for(START, "subnet.env at WEFTD_SUBNET_FILE", || {
        std::fs::read_to_string(&subnet_file).ok()
    });
    let subnet = subnet_of(&env).unwrap_or_default();
    assert_eq!(env, expected_subnet_env(&subnet));
    assert!(state_dir.is_dir(), "WEFTD_STATE_DIR not used");
    node.wait_ready(START);
    let value = cluster.etcd.get(&lease_key(&subnet)).unwrap_or_default();
    assert!(value.contains(r#""PublicIP":"192.0.2.11""#), "{value}");
}

/// `--public-ip` is what the lease publishes.
#[test]
fn public_ip_flag_is_published() {
    let cluster = Cluster::new(1, VXLAN_CONFIG);
    let node = cluster.node(0);
    node.start_weftd(&["--public-ip", "192.0.2.111"]);
    let env = node.wait_subnet_env(START);
    let subnet = subnet_of(&env).unwrap_or_default();
    let value = cluster.etcd.get(&lease_key(&subnet)).unwrap_or_default();
    assert!(
        value.starts_with(r#"{"PublicIP":"192.0.2.111","#),
        "{value}"
    );
}

/// Runs openssl (or any harness tool) in the root namespace; panics with its stderr on failure.
fn run_tool(args: &[&str]) {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("spawn {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, an etcd server certificate for [`Etcd::IP`] and a client certificate (CN
/// `weft-client`, not an etcd user) in `dir`, made with openssl.
fn make_pki(dir: &std::path::Path) -> EtcdTls {
    let p = |name: &str| dir.join(name).display().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let (ca_key, ca) = (p("ca.key"), p("ca.pem"));
    let mut args = vec!["openssl", "req", "-x509"];
    args.extend(ec);
    args.extend([
        "-keyout",
        &ca_key,
        "-out",
        &ca,
        "-days",
        "2",
        "-subj",
        "/CN=weft-ca",
    ]);
    run_tool(&args);
    let server_san = format!(
        "subjectAltName=IP:{}\nextendedKeyUsage=serverAuth\n",
        Etcd::IP
    );
    for (name, cn, ext) in [
        ("server", "etcd", server_san.as_str()),
        ("client", "weft-client", "extendedKeyUsage=clientAuth\n"),
    ] {
        let (key, csr, pem, ext_file) = (
            p(&format!("{name}.key")),
            p(&format!("{name}.csr")),
            p(&format!("{name}.pem")),
            p(&format!("{name}.ext")),
        );
        std::fs::write(&ext_file, ext).unwrap_or_else(|e| panic!("write {ext_file}: {e}"));
        let subject = format!("/CN={cn}");
        let mut args = vec!["openssl", "req"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &csr, "-subj", &subject]);
        run_tool(&args);
        run_tool(&[
            "openssl",
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext_file,
            "-out",
            &pem,
        ]);
    }
    EtcdTls {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        ca: dir.join("ca.pem"),
    }
}

/// weftd reaches an etcd that demands TLS with a client certificate and, with authentication
/// enabled, a user and password — through its `--etcd-*` flags; a wrong password gets an error
/// and no lease; no password ever appears in a log.
#[test]
fn etcd_tls_and_password_through_weftd_flags() {
    let underlay = Underlay::new();
    let pki = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let etcd = Etcd::new_tls(&underlay, make_pki(pki.path()));
    etcd.put(NETWORK_CONFIG_KEY, VXLAN_CONFIG);
    let (root_pw, weft_pw, wrong_pw) = ("r00t-pw-8812", "s3cret-weft-pw-4711", "wr0ng-pw-5150");
    for args in [
        vec!["user", "add", &format!("root:{root_pw}")],
        vec!["role", "add", "weft"],
        vec![
            "role",
            "grant-permission",
            "weft",
            "--prefix=true",
            "readwrite",
            &format!("{ETCD_PREFIX}/"),
        ],
        vec!["user", "add", &format!("weft:{weft_pw}")],
        vec!["user", "grant-role", "weft", "weft"],
        vec!["auth", "enable"],
    ] {
        let out = etcd.etcdctl(&args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pem = |name: &str| pki.path().join(name).display().to_string();
    let tls_args = [
        "--etcd-cafile".to_string(),
        pem("ca.pem"),
        "--etcd-certfile".to_string(),
        pem("client.pem"),
        "--etcd-keyfile".to_string(),
        pem("client.key"),
        "--etcd-username".to_string(),
        "weft".to_string(),
    ];
    let args = |pw: &str| -> Vec<String> {
        let mut a = tls_args.to_vec();
        a.extend(["--etcd-password".to_string(), pw.to_string()]);
        a
    };
    let good = Node::new(&underlay, 1, &etcd.endpoint());
    let bad = Node::new(&underlay, 2, &etcd.endpoint());
    good.start_weftd(&args(weft_pw).iter().map(String::as_str).collect::<Vec<_>>());
    bad.start_weftd(
        &args(wrong_pw)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );

    let env = good.wait_subnet_env(START);
    let subnet = subnet_of(&env).unwrap_or_default();
    assert_eq!(env, expected_subnet_env(&subnet));
    let root = format!("root:{root_pw}");
    let out = etcd.etcdctl(&[
        "--user",
        &root,
        "get",
        "--print-value-only",
        &lease_key(&subnet),
    ]);
    let value = String::from_utf8_lossy(&out.stdout);
    assert!(
        value.contains(r#""PublicIP":"192.0.2.11""#),
        "lease value: {value}"
    );

    bad.wait_until(CONVERGE, "an authentication error in the log", || {
        bad.log().contains("authentication failed")
    });
    assert_eq!(bad.subnet_env(), None, "a wrong password got a lease");
    assert!(bad.is_running(), "weftd exited on a wrong password");
    for (node, secret) in [(&good, weft_pw), (&bad, wrong_pw)] {
        let leaked: Vec<String> = node
            .log()
            .lines()
            .filter(|l| !l.starts_with("===== harness:") && l.contains(secret))
            .map(str::to_string)
            .collect();
        assert!(
            leaked.is_empty(),
            "password in the log of {}: {leaked:?}",
            node.name()
        );
    }
}

/// A node whose etcd lease is revoked (as on expiry) acquires its subnet again under a new
/// etcd lease, and its peers keep (or regain) the route to it.
#[test]
fn lease_is_renewed_at_the_renew_margin_and_keeps_its_value() {
    let cluster = Cluster::new(1, VXLAN_CONFIG);
    let node = cluster.node(0);
    // A 70 s lease renewed 1 min before expiry: renewed about 10 s after it was taken.
    node.start_weftd(&[
        "--subnet-lease-ttl",
        "70",
        "--subnet-lease-renew-margin",
        "1",
    ]);
    let key = node.wait_for(CONVERGE, "own lease", || node.lease_key());
    let seen = std::time::Instant::now();
    let first = cluster
        .etcd
        .get_kv(&key)
        .unwrap_or_else(|| panic!("no {key}"));
    let ttl = cluster.etcd.lease_ttl(first.lease).unwrap_or(-1);
    assert!((55..=70).contains(&ttl), "fresh lease has {ttl} s left");
    node.wait_until(Duration::from_secs(30), "lease renewed", || {
        node.log().contains("lease renewed")
    });
    assert!(
        seen.elapsed() >= Duration::from_secs(3),
        "renewed {:?} after the lease was seen, long before the margin",
        seen.elapsed()
    );
    let kv = cluster
        .etcd
        .get_kv(&key)
        .unwrap_or_else(|| panic!("{key} gone after renewal"));
    assert_eq!(kv.value, first.value, "renewal changed the lease value");
    let ttl = cluster.etcd.lease_ttl(kv.lease).unwrap_or(-1);
    assert!(
        ttl >= 62,
        "after renewal the lease has {ttl} s left; unrenewed it would have at most 60"
    );
}

#[test]
fn replaced_external_interface_is_followed_without_restart() {
    let cluster = Cluster::new(2, VXLAN_CONFIG);
    cluster.start();
    cluster.wait_mesh(CONVERGE);
    let mac = cluster.node(0).mac_of("flannel.1");
    // The kernel takes flannel.1 down with the old eth0; weftd builds it again on the new one.
    cluster.replace_external_interface_under_traffic(0);
    assert_eq!(cluster.node(0).mac_of("flannel.1"), mac, "VTEP MAC changed");
}

#[test]
fn own_revoked_lease_is_reacquired() {
    let cluster = Cluster::new(2, VXLAN_CONFIG);
    cluster.start();
    cluster.wait_mesh(CONVERGE);
    let (n1, n2) = (cluster.node(0), cluster.node(1));
    let key = n1.lease_key().unwrap_or_default();
    let before = cluster
        .etcd
        .get_kv(&key)
        .unwrap_or_else(|| panic!("no {key}"));
    cluster.etcd.revoke(before.lease);
    let after = n1.wait_for(
        CONVERGE,
        "own lease re-acquired under a new etcd lease",
        || {
            cluster
                .etcd
                .get_kv(&key)
                .filter(|kv| kv.lease != 0 && kv.lease != before.lease)
        },
    );
    assert_eq!(after.value, before.value);
    assert!(
        n1.is_running(),
        "weftd must not exit when its lease expires"
    );
    let s1 = n1.subnet().unwrap_or_default();
    let mac1 = n1.mac_of("flannel.1").unwrap_or_default();
    n2.wait_until(CONVERGE, "peer entries for the re-acquired subnet", || {
        n2.vxlan_peer_programmed("flannel.1", &s1, n1.public_ip(), &mac1)
    });
}

/// Two nodes starting together whose subnet.env both name the same previous subnet race for it
/// in etcd: one gets it, the other loses the claim, retries with another subnet (and says so);
/// neither exits. etcd is frozen while both start, so their requests reach it together; when
/// the loser still saw the subnet taken in its listing (no race), the round is run again.
#[test]
fn two_nodes_racing_for_one_subnet_end_distinct() {
    use nix::sys::signal::{kill, Signal};
    let cluster = Cluster::new(2, VXLAN_CONFIG);
    let contested = "10.244.107.0/24";
    let subnets_prefix = format!("{ETCD_PREFIX}/subnets/");
    let etcd_pids: Vec<nix::unistd::Pid> = cluster
        .etcd
        .netns()
        .pids()
        .into_iter()
        .map(nix::unistd::Pid::from_raw)
        .collect();
    assert!(!etcd_pids.is_empty(), "no etcd process");
    let signal_etcd = |signal: Signal| {
        for pid in &etcd_pids {
            kill(*pid, signal).unwrap_or_else(|e| panic!("{signal} to etcd {pid}: {e}"));
        }
    };
    let mut races_lost = 0;
    for round in 1..=5 {
        let log_len: Vec<usize> = cluster.nodes.iter().map(|n| n.log().len()).collect();
        for node in &cluster.nodes {
            std::fs::write(node.subnet_file(), expected_subnet_env(contested))
                .unwrap_or_else(|e| panic!("write {}: {e}", node.subnet_file().display()));
        }
        signal_etcd(Signal::SIGSTOP);
        for node in &cluster.nodes {
            if round == 1 {
                node.start_weftd(&[]);
            } else {
                node.restart();
            }
        }
        // Both connect (the kernel accepts for the stopped etcd) and wait for its answers.
        std::thread::sleep(Duration::from_millis(1500));
        signal_etcd(Signal::SIGCONT);
        let subnets: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| {
                n.wait_until(START, "subnet.env naming the node's lease", || {
                    n.subnet().is_some_and(|s| {
                        cluster.etcd.get(&lease_key(&s)).is_some_and(|v| {
                            v.contains(&format!(r#""PublicIP":"{}""#, n.public_ip()))
                        })
                    })
                });
                n.subnet().unwrap_or_default()
            })
            .collect();
        assert_ne!(subnets[0], subnets[1], "both nodes hold {}", subnets[0]);
        assert!(
            subnets.iter().any(|s| s == contested),
            "nobody got the contested subnet: {subnets:?}"
        );
        assert_eq!(cluster.etcd.get_prefix(&subnets_prefix).len(), 2);
        for node in &cluster.nodes {
            assert!(node.is_running(), "{} exited", node.name());
        }
        let loser = usize::from(subnets[0] == contested);
        let log = cluster.nodes[loser].log();
        if log[log_len[loser]..]
            .lines()
            .any(|l| l.contains("picking again") && l.contains(contested))
        {
            races_lost += 1;
            break;
        }
        // No race this round: start over from the same two subnet.env files.
        for node in &cluster.nodes {
            node.stop();
        }
        for (key, _) in cluster.etcd.get_prefix(&subnets_prefix) {
            cluster.etcd.del(&key);
        }
    }
    assert_eq!(
        races_lost, 1,
        "in 5 rounds the loser never lost a claim for {contested}: the race was not run"
    );
}
