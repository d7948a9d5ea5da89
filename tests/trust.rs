//! Trust nothing in etcd: bad leases are rejected before any backend sees them, a guard keeps
//! every peer route off the node's own addresses, underlay and etcd, a lease taken over by
//! another writer is replaced, config changes while running are logged and applied or refused,
//! and the etcd password can come from a file.
//!
//! Real etcd, real namespaces, real weftd (see tests/common).

mod common;

use std::time::Duration;

use common::*;

/// Time allowed for a change in etcd to reach the kernel of every node (it takes milliseconds;
/// the margin is for a loaded 2-core machine: it only bounds how long a failure takes to show).
const CONVERGE: Duration = Duration::from_secs(20);
/// Round trips each probe must make (50 ms apart) with the bad key in place.
const PROBE_ROUNDS: u64 = 40;

/// A subnet for a valid fake peer, put after the bad key to show the node still hears etcd.
const SENTINEL: &str = "10.244.77.0/24";
const SENTINEL_MAC: &str = "aa:bb:cc:00:00:77";

/// True if `node` holds any kernel entry for the lease of `subnet` with VTEP `mac`: a route to
/// the subnet other than the kernel's connected one, a neighbour or FDB entry for the MAC.
fn has_entries_for(node: &Node, subnet: &str, mac: &str) -> bool {
    let route = node
        .routes()
        .into_iter()
        .any(|r| r["dst"].as_str() == Some(subnet) && r["protocol"].as_str() != Some("kernel"));
    let neigh = node
        .neighbours()
        .iter()
        .any(|n| n["lladdr"].as_str() == Some(mac));
    let fdb = node.fdb().iter().any(|f| f["mac"].as_str() == Some(mac));
    route || neigh || fdb
}

/// A two-node cluster with pods talking both ways; `bad_key` = `value(cluster)` is put; the
/// attacked nodes (`attacked`, indexes) must log the rejection naming the key and `reason`
/// and count it, program nothing for it, keep hearing etcd (a valid peer put afterwards is
/// programmed on every node) and lose no probe in either direction.
fn attack_is_contained(
    bad_subnet: &str,
    bad_mac: &str,
    value: impl Fn(&Cluster) -> String,
    reason: &str,
    attacked: &[usize],
) {
    let cluster = Cluster::new(2, VXLAN_CONFIG);
    cluster.start();
    cluster.wait_mesh(CONVERGE);
    let (n1, n2) = (cluster.node(0), cluster.node(1));
    let (a, b) = (n1.add_pod(), n2.add_pod());
    wait_until(CONVERGE, "pods talk before the attack", || {
        a.tcp_check(&b) && b.tcp_check(&a)
    });
    let there = a.traffic_probe(&b);
    let back = b.traffic_probe(&a);
    let key = lease_key(bad_subnet);
    cluster.etcd.put(&key, &value(&cluster));
    for &i in attacked {
        let node = cluster.node(i);
        node.wait_until(CONVERGE, "the rejection logged with key and reason", || {
            node.log()
                .lines()
                .any(|l| l.contains("lease rejected") && l.contains(&key) && l.contains(reason))
        });
        let metrics = node
            .http_get("/metrics")
            .map(|(_, m)| m)
            .unwrap_or_default();
        assert!(
            metrics.contains(&format!(
                "weft_leases_rejected_total{{reason=\"{reason}\"}} 1"
            )),
            "{reason} not counted on {}:\n{metrics}",
            node.name()
        );
    }
    cluster.etcd.put_with_ttl(
        &lease_key(SENTINEL),
        &vxlan_lease_value("192.0.2.77", SENTINEL_MAC),
        600,
    );
    for node in &cluster.nodes {
        node.wait_until(CONVERGE, "a valid peer put after the bad key", || {
            node.vxlan_peer_programmed("flannel.1", SENTINEL, "192.0.2.77", SENTINEL_MAC)
        });
    }
    there.wait_attempts(PROBE_ROUNDS);
    back.wait_attempts(PROBE_ROUNDS);
    for &i in attacked {
        let node = cluster.node(i);
        assert!(
            !has_entries_for(node, bad_subnet, bad_mac),
            "kernel entry for the bad lease {key} on {}:\n{}",
            node.name(),
            cluster.dump()
        );
        let underlay = node.route_to("192.0.2.0/24").unwrap_or_default();
        assert_eq!(
            underlay["dev"], "eth0",
            "underlay route changed: {underlay}"
        );
        assert!(node.is_running(), "weftd on {} exited", node.name());
    }
    let (there, back) = (there.stop(), back.stop());
    assert_eq!(there.failures, 0, "pod probe n1 -> n2: {there:?}");
    assert_eq!(back.failures, 0, "pod probe n2 -> n1: {back:?}");
}

/// The issue's first attack: a lease for the underlay's own range (outside `Network`) would
/// replace the connected route and cut every node off from etcd and its peers for good.
#[test]
fn underlay_range_lease_is_rejected() {
    attack_is_contained(
        "192.0.2.0/24",
        "aa:bb:cc:00:00:31",
        |_| vxlan_lease_value("192.0.2.31", "aa:bb:cc:00:00:31"),
        "outside_network",
        &[0, 1],
    );
}

/// A lease for the whole `Network` would cover every peer (and block new nodes).
#[test]
fn whole_network_lease_is_rejected() {
    attack_is_contained(
        "10.244.0.0/16",
        "aa:bb:cc:00:00:32",
        |_| vxlan_lease_value("192.0.2.32", "aa:bb:cc:00:00:32"),
        "subnet_len",
        &[0, 1],
    );
}

/// A /25 inside a real peer's /24 would steal half of its pods' traffic.
#[test]
fn slash_25_overlapping_a_peer_is_rejected() {
    let cluster = Cluster::new(2, VXLAN_CONFIG);
    cluster.start();
    cluster.wait_mesh(CONVERGE);
    let (n1, n2) = (cluster.node(0), cluster.node(1));
    let (a, b) = (n1.add_pod(), n2.add_pod());
    wait_until(CONVERGE, "pods talk before the attack", || {
        a.tcp_check(&b) && b.tcp_check(&a)
    });
    let there = a.traffic_probe(&b);
    let peer = n2.subnet().unwrap_or_default();
    // The lower half of node 2's /24, where its pods live (.10 and up).
    let half = peer.replace(".0/24", ".0/25");
    let key = lease_key(&half);
    cluster
        .etcd
        .put(&key, &vxlan_lease_value("192.0.2.33", "aa:bb:cc:00:00:33"));
    n1.wait_until(CONVERGE, "the rejection logged", || {
        n1.log()
            .lines()
            .any(|l| l.contains("lease rejected") && l.contains(&key) && l.contains("subnet_len"))
    });
    cluster.etcd.put_with_ttl(
        &lease_key(SENTINEL),
        &vxlan_lease_value("192.0.2.77", SENTINEL_MAC),
        600,
    );
    n1.wait_until(CONVERGE, "a valid peer put after the bad key", || {
        n1.vxlan_peer_programmed("flannel.1", SENTINEL, "192.0.2.77", SENTINEL_MAC)
    });
    there.wait_attempts(PROBE_ROUNDS);
    assert!(
        !has_entries_for(n1, &half, "aa:bb:cc:00:00:33"),
        "kernel entry for {half}:\n{}",
        cluster.dump()
    );
    assert!(
        n1.vxlan_peer_programmed(
            "flannel.1",
            &peer,
            n2.public_ip(),
            &n2.mac_of("flannel.1").unwrap_or_default()
        ),
        "node 2's own entries changed:\n{}",
        cluster.dump()
    );
    let there = there.stop();
    assert_eq!(there.failures, 0, "pod probe n1 -> n2: {there:?}");
}

/// PublicIP 127.0.0.1 would send the peer's VXLAN traffic to the node itself.
#[test]
fn loopback_public_ip_is_rejected() {
    attack_is_contained(
        "10.244.50.0/24",
        "aa:bb:cc:00:00:34",
        |_| vxlan_lease_value("127.0.0.1", "aa:bb:cc:00:00:34"),
        "public_ip",
        &[0, 1],
    );
}

/// PublicIP 0.0.0.0.
#[test]
fn unspecified_public_ip_is_rejected() {
    attack_is_contained(
        "10.244.51.0/24",
        "aa:bb:cc:00:00:35",
        |_| vxlan_lease_value("0.0.0.0", "aa:bb:cc:00:00:35"),
        "public_ip",
        &[0, 1],
    );
}

/// PublicIP 224.0.0.1 (multicast).
#[test]
fn multicast_public_ip_is_rejected() {
    attack_is_contained(
        "10.244.52.0/24",
        "aa:bb:cc:00:00:36",
        |_| vxlan_lease_value("224.0.0.1", "aa:bb:cc:00:00:36"),
        "public_ip",
        &[0, 1],
    );
}

/// A lease claiming node 1's own address: node 1 refuses it (node 2 may route it to node 1,
/// which is harmless).
#[test]
fn own_address_as_public_ip_is_rejected() {
    attack_is_contained(
        "10.244.53.0/24",
        "aa:bb:cc:00:00:37",
        |c| vxlan_lease_value(c.node(0).public_ip(), "aa:bb:cc:00:00:37"),
        "public_ip",
        &[0],
    );
}

/// A lease claiming node 1's VTEP MAC: node 1 refuses its own MAC, node 2 keeps the MAC with
/// node 1's older lease (else its FDB entry for node 1 would move to the attacker).
#[test]
fn own_vtep_mac_is_rejected() {
    let mac = std::cell::OnceCell::new();
    attack_is_contained(
        "10.244.54.0/24",
        "aa:bb:cc:00:00:38",
        |c| {
            let m = mac.get_or_init(|| c.node(0).mac_of("flannel.1").unwrap_or_default());
            vxlan_lease_value("192.0.2.38", m)
        },
        "vtep_mac",
        &[0, 1],
    );
}

/// VNI 99 is not this network's.
#[test]
fn foreign_vni_is_rejected() {
    attack_is_contained(
        "10.244.55.0/24",
        "aa:bb:cc:00:00:39",
        |_| {
            r#"{"PublicIP":"192.0.2.39","BackendType":"vxlan","BackendData":{"VNI":99,"VtepMAC":"aa:bb:cc:00:00:39"}}"#
                .to_string()
        },
        "vni",
        &[0, 1],
    );
}

/// `weftctl leases` shows a rejected lease with its reason next to the accepted ones.
#[test]
fn weftctl_leases_shows_rejections() {
    let cluster = Cluster::new(1, VXLAN_CONFIG);
    cluster.start();
    cluster.etcd.put(
        &lease_key("192.0.2.0/24"),
        &vxlan_lease_value("192.0.2.31", "aa:bb:cc:00:00:31"),
    );
    cluster
        .etcd
        .put(&format!("{ETCD_PREFIX}/subnets/junk"), "{not json");
    let node = cluster.node(0);
    let weftctl = env!("CARGO_BIN_EXE_weftctl");
    let table = node.netns().exec_ok(&[
        weftctl,
        "leases",
        "--etcd-endpoints",
        &cluster.etcd.endpoint(),
    ]);
    let row = |start: &str| {
        table
            .lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no row for {start}:\n{table}"))
            .to_string()
    };
    assert!(
        row("192.0.2.0/24 ")
            .ends_with("rejected: subnet 192.0.2.0/24 is not inside Network 10.244.0.0/16"),
        "{table}"
    );
    assert!(
        row("junk ").contains("rejected: subnet key \"junk\""),
        "{table}"
    );
    let own = node.subnet().unwrap_or_default();
    assert!(row(&format!("{own} ")).ends_with("ok"), "{table}");
}

/// The guard stops what validation lets through: node 1 has an address inside the pod network
/// (a node-local service address on its loopback); a valid peer lease covering it is
/// programmed by node 2 but refused by node 1's guard, logged and counted, while pods keep
/// talking.
#[test]
fn guard_refuses_a_valid_lease_covering_a_local_address() {
    let cluster = Cluster::new(2, VXLAN_CONFIG);
    let n1 = cluster.node(0);
    n1.netns().ip(&["link", "set", "lo", "up"]);
    n1.netns()
        .ip(&["addr", "add", "10.244.60.1/32", "dev", "lo"]);
    cluster.start();
    cluster.wait_mesh(CONVERGE);
    let n2 = cluster.node(1);
    let (a, b) = (n1.add_pod(), n2.add_pod());
    wait_until(CONVERGE, "pods talk", || a.tcp_check(&b));
    let probe = a.traffic_probe(&b);
    let subnet = "10.244.60.0/24";
    let mac = "aa:bb:cc:00:00:60";
    cluster.etcd.put_with_ttl(
        &lease_key(subnet),
        &vxlan_lease_value("192.0.2.60", mac),
        600,
    );
    n2.wait_until(CONVERGE, "node 2 programs the valid lease", || {
        n2.vxlan_peer_programmed("flannel.1", subnet, "192.0.2.60", mac)
    });
    n1.wait_until(CONVERGE, "node 1's guard refuses it", || {
        n1.log().lines().any(|l| {
            l.contains("route refused by the guard")
                && l.contains(&lease_key(subnet))
                && l.contains("address 10.244.60.1 of this node")
        })
    });
    let metrics = n1.http_get("/metrics").map(|(_, m)| m).unwrap_or_default();
    assert!(
        metrics.contains("weft_routes_refused_total 1\n"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("weft_leases_rejected_total{"),
        "validation must have let it through: {metrics}"
    );
    probe.wait_attempts(PROBE_ROUNDS);
    assert!(
        !has_entries_for(n1, subnet, mac),
        "node 1 programmed a route over its own address:\n{}",
        cluster.dump()
    );
    let stats = probe.stop();
    assert_eq!(stats.failures, 0, "{stats:?}");
}

/// The `value` of a `name` sample in a Prometheus text exposition (`name{labels} value`).
fn metric(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Another writer overwrites node 1's lease with its own PublicIP while no subnet is free:
/// weftd names the key and both PublicIPs, /readyz fails and the takeover gauge is 1 while it
/// recovers; once a subnet is free it takes it, writes subnet.env, is ready again, and a pod
/// started in the new subnet reaches a pod on node 2.
#[test]
fn own_lease_taken_over_is_replaced_by_a_new_subnet() {
    // A /22 holds three /24s to hand out (10.244.1.0 .. 10.244.3.0).
    let cluster = Cluster::new(
        2,
        r#"{"Network":"10.244.0.0/22","Backend":{"Type":"vxlan"}}"#,
    );
    cluster.start();
    cluster.wait_mesh(CONVERGE);
    let (n1, n2) = (cluster.node(0), cluster.node(1));
    n1.wait_ready(CONVERGE);
    let old = n1.subnet().unwrap_or_default();
    let taken = [old.as_str(), &n2.subnet().unwrap_or_default()];
    let free = ["10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"]
        .into_iter()
        .find(|s| !taken.contains(s))
        .unwrap_or_else(|| panic!("no third subnet besides {taken:?}"));
    // Keep the last free subnet occupied, so recovery has to wait.
    let blocker = lease_key(free);
    cluster.etcd.put(
        &blocker,
        &vxlan_lease_value("192.0.2.91", "aa:bb:cc:00:00:91"),
    );
    let key = lease_key(&old);
    cluster
        .etcd
        .put(&key, &vxlan_lease_value("192.0.2.90", "aa:bb:cc:00:00:90"));
    n1.wait_until(
        CONVERGE,
        "the takeover logged with key and both PublicIPs",
        || {
            n1.log().lines().any(|l| {
                l.contains("ERROR")
                    && l.contains("taken over by another writer")
                    && l.contains(&key)
                    && l.contains("192.0.2.11")
                    && l.contains("192.0.2.90")
            })
        },
    );
    n1.wait_until(CONVERGE, "/readyz failing while recovering", || {
        n1.http_get("/readyz").is_some_and(|(code, _)| code == 503)
    });
    let metrics = n1.http_get("/metrics").map(|(_, m)| m).unwrap_or_default();
    assert_eq!(
        metric(&metrics, "weft_own_lease_taken_over"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "weft_own_lease_takeovers_total"),
        Some(1.0),
        "{metrics}"
    );
    assert!(n1.is_running(), "weftd exited while recovering");

    assert!(cluster.etcd.del(&blocker));
    n1.wait_until(CONVERGE, "subnet.env naming the freed subnet", || {
        n1.subnet().as_deref() == Some(free)
    });
    assert_eq!(
        n1.subnet_env().unwrap_or_default(),
        expected_subnet_env_in(free, "10.244.0.0/22")
    );
    n1.wait_ready(CONVERGE);
    let metrics = n1.http_get("/metrics").map(|(_, m)| m).unwrap_or_default();
    assert_eq!(
        metric(&metrics, "weft_own_lease_taken_over"),
        Some(0.0),
        "{metrics}"
    );
    let value = cluster.etcd.get(&lease_key(free)).unwrap_or_default();
    assert!(value.contains(r#""PublicIP":"192.0.2.11""#), "{value}");
    assert!(
        cluster
            .etcd
            .get(&key)
            .is_some_and(|v| v.contains("192.0.2.90")),
        "the other writer's key must be left alone"
    );
    let mac1 = n1.mac_of("flannel.1").unwrap_or_default();
    n2.wait_until(CONVERGE, "node 2 routes the new subnet to node 1", || {
        n2.vxlan_peer_programmed("flannel.1", free, n1.public_ip(), &mac1)
    });
    // The old subnet is the other writer's now: node 1 routes it there too, once its overlay
    // device has let go of the old address (not only at the next resync).
    n1.wait_until(
        CONVERGE,
        "node 1 routes its old subnet to the other writer",
        || n1.vxlan_peer_programmed("flannel.1", &old, "192.0.2.90", "aa:bb:cc:00:00:90"),
    );
    let (a, b) = (n1.add_pod(), n2.add_pod());
    assert!(
        subnet_contains(free, a.ip()),
        "pod {} not in {free}",
        a.ip()
    );
    wait_until(
        CONVERGE,
        "a pod in the new subnet reaches node 2's pod",
        || a.tcp_check(&b) && b.tcp_check(&a),
    );
}

/// Whether the IPv4 `subnet` (`10.244.3.0/24`) contains `ip`.
fn subnet_contains(subnet: &str, ip: &str) -> bool {
    let net: ipnetwork::Ipv4Network = subnet.parse().unwrap_or_else(|e| panic!("{subnet}: {e}"));
    ip.parse().is_ok_and(|ip| net.contains(ip))
}

/// subnet.env as flanneld writes it for `subnet` of `network`, VXLAN MTU 1450, no masquerade.
fn expected_subnet_env_in(subnet: &str, network: &str) -> String {
    expected_subnet_env(subnet).replace(
        "FLANNEL_NETWORK=10.244.0.0/16",
        &format!("FLANNEL_NETWORK={network}"),
    )
}

/// Config changes while running: each is logged old -> new; SubnetMax is applied live; a new
/// Network, a new backend, an invalid config and a deleted config are refused with one error
/// each and the refusal gauge, the node keeping its subnet and its data path; the original
/// config written back clears the gauge.
#[test]
fn config_changes_while_running_are_applied_or_refused() {
    let cluster = Cluster::new(1, VXLAN_CONFIG);
    cluster.start();
    let node = cluster.node(0);
    node.wait_ready(CONVERGE);
    let subnet = node.subnet().unwrap_or_default();
    let env = node.subnet_env().unwrap_or_default();
    let refused = || {
        node.http_get("/metrics")
            .and_then(|(_, m)| metric(&m, "weft_config_change_refused"))
    };
    let count = |needle: &str| node.log().lines().filter(|l| l.contains(needle)).count();

    cluster.etcd.put(
        NETWORK_CONFIG_KEY,
        r#"{"Network":"10.244.0.0/16","SubnetMax":"10.244.200.0","Backend":{"Type":"vxlan"}}"#,
    );
    node.wait_until(CONFIG_WAIT, "the live change logged old -> new", || {
        node.log().lines().any(|l| {
            l.contains("network config changed")
                && l.contains("SubnetMax 10.244.199.0")
                && l.contains("-> Network 10.244.0.0/16, SubnetLen 24, SubnetMin 10.244.1.0, SubnetMax 10.244.200.0")
                && l.contains("applied")
        })
    });
    assert_eq!(refused(), Some(0.0));

    for (config, needle) in [
        (
            r#"{"Network":"10.245.0.0/16","Backend":{"Type":"vxlan"}}"#,
            "-> Network 10.245.0.0/16",
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#,
            "Backend host-gw; a new Network",
        ),
    ] {
        let before = count("not applied while running");
        cluster.etcd.put(NETWORK_CONFIG_KEY, config);
        node.wait_until(CONFIG_WAIT, "the refusal logged old -> new", || {
            node.log().lines().any(|l| {
                l.contains("ERROR") && l.contains("not applied while running") && l.contains(needle)
            })
        });
        assert_eq!(
            count("not applied while running"),
            before + 1,
            "one error per change"
        );
        assert_eq!(refused(), Some(1.0));
    }
    cluster
        .etcd
        .put(NETWORK_CONFIG_KEY, r#"{"Network":"10.244.0.0/33"}"#);
    node.wait_until(CONFIG_WAIT, "the invalid config refused", || {
        node.log()
            .lines()
            .any(|l| l.contains("changed to an invalid one") && l.contains("field Network"))
    });
    assert!(cluster.etcd.del(NETWORK_CONFIG_KEY));
    node.wait_until(CONFIG_WAIT, "the deleted config refused", || {
        node.log().contains("network config was deleted")
    });
    assert_eq!(refused(), Some(1.0));
    let metrics = node
        .http_get("/metrics")
        .map(|(_, m)| m)
        .unwrap_or_default();
    assert_eq!(
        metric(&metrics, "weft_config_changes_total{result=\"refused\"}"),
        Some(4.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "weft_config_changes_total{result=\"applied\"}"),
        Some(1.0),
        "{metrics}"
    );
    // Still serving the running config.
    assert_eq!(node.subnet().unwrap_or_default(), subnet);
    assert_eq!(node.subnet_env().unwrap_or_default(), env);
    assert!(node.link("flannel.1").is_some(), "VXLAN device gone");
    assert!(node.is_running());

    cluster.etcd.put(
        NETWORK_CONFIG_KEY,
        r#"{"Network":"10.244.0.0/16","SubnetMax":"10.244.200.0","Backend":{"Type":"vxlan"}}"#,
    );
    node.wait_until(CONFIG_WAIT, "the refusal cleared", || {
        refused() == Some(0.0)
    });
}

/// How long a config change takes to be noticed (the watch delivers it at once).
const CONFIG_WAIT: Duration = Duration::from_secs(5);

/// With etcd authentication on, weftd logs in with `--etcd-password-file`; a password on the
/// command line still works but is warned about; neither password is ever logged.
#[test]
fn etcd_password_from_a_file() {
    let mut cluster = Cluster::new(1, VXLAN_CONFIG);
    cluster.add_node();
    let secret = "s3cret-weft-file-pw-0815";
    for args in [
        vec!["user", "add", &format!("root:{secret}")],
        vec!["user", "grant-role", "root", "root"],
        vec!["auth", "enable"],
    ] {
        let out = cluster.etcd.etcdctl(&args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (n1, n2) = (cluster.node(0), cluster.node(1));
    let file = n1.dir().join("etcd-password");
    std::fs::write(&file, format!("{secret}\n")).unwrap_or_else(|e| panic!("write password: {e}"));
    n1.start_weftd(&[
        "--etcd-username",
        "root",
        "--etcd-password-file",
        &file.to_string_lossy(),
    ]);
    n2.start_weftd(&["--etcd-username", "root", "--etcd-password", secret]);
    for node in &cluster.nodes {
        node.wait_subnet_env(CONVERGE);
    }
    let warning = "visible to every local user in ps";
    assert!(!n1.log().contains(warning), "{}", n1.log_tail(20));
    assert!(n2.log().contains(warning), "{}", n2.log_tail(20));
    for node in &cluster.nodes {
        let leaked: Vec<String> = node
            .log()
            .lines()
            .filter(|l| !l.starts_with("===== harness:") && l.contains(secret))
            .map(str::to_string)
            .collect();
        assert!(leaked.is_empty(), "password in the log: {leaked:?}");
    }
}

/// Flannel's dual-stack key form is understood, and of two keys for the same subnet the older
/// one wins on every node; when it goes, the other one is believed.
#[test]
fn dual_stack_key_is_read_and_the_older_of_two_overlapping_leases_wins() {
    let cluster = Cluster::new(2, VXLAN_CONFIG);
    cluster.start();
    let older = format!("{ETCD_PREFIX}/subnets/10.244.70.0-24&fd00:10:244:70::-64");
    let newer = lease_key("10.244.70.0/24");
    let (old_mac, new_mac) = ("aa:bb:cc:00:00:71", "aa:bb:cc:00:00:72");
    cluster
        .etcd
        .put_with_ttl(&older, &vxlan_lease_value("192.0.2.71", old_mac), 600);
    cluster
        .etcd
        .put_with_ttl(&newer, &vxlan_lease_value("192.0.2.72", new_mac), 600);
    for node in &cluster.nodes {
        node.wait_until(CONVERGE, "the older (dual-stack) lease programmed", || {
            node.vxlan_peer_programmed("flannel.1", "10.244.70.0/24", "192.0.2.71", old_mac)
        });
        node.wait_until(CONVERGE, "the newer one rejected as an overlap", || {
            node.log().lines().any(|l| {
                l.contains("lease rejected")
                    && l.contains(&newer)
                    && l.contains(&format!("overlaps the older lease {older}"))
            })
        });
        assert!(
            !node
                .fdb()
                .iter()
                .any(|f| f["mac"].as_str() == Some(new_mac)),
            "the newer lease reached the kernel on {}",
            node.name()
        );
    }
    assert!(cluster.etcd.del(&older));
    for node in &cluster.nodes {
        node.wait_until(CONVERGE, "the remaining lease programmed", || {
            node.vxlan_peer_programmed("flannel.1", "10.244.70.0/24", "192.0.2.72", new_mac)
                && !node
                    .fdb()
                    .iter()
                    .any(|f| f["mac"].as_str() == Some(old_mac))
        });
    }
}
