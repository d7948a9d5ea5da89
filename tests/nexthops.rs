//! `--route-nexthops` (issue 17) on the cluster harness: real etcd, real weftd, real network
//! namespaces and kernel devices. With the flag, each IPv4 peer route goes through a nexthop
//! object of weft's (`X/24 nhid N`, N the subnet address as a number, protocol 87); without
//! it, Flannel's `X/24 via X.0 dev flannel.1 onlink`, and a restart converts either way.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::*;
use serde_json::Value;

const HOSTGW_CONFIG: &str = r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.100.0","SubnetMax":"10.244.199.0","Backend":{"Type":"host-gw"}}"#;
const UDP_CONFIG: &str = r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.100.0","SubnetMax":"10.244.199.0","Backend":{"Type":"udp"}}"#;
const DUAL_CONFIG: &str = r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.100.0","SubnetMax":"10.244.199.0","EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","IPv6SubnetMin":"fd00:10:244:100::","IPv6SubnetMax":"fd00:10:244:199::","Backend":{"Type":"vxlan"}}"#;
const CONVERGE: Duration = Duration::from_secs(30);
const FLAG: &str = "--route-nexthops";
/// A peer that is a lease alone (no weftd behind it), outside the nodes' lease range.
const FAKE_SUBNET: &str = "10.244.250.0/24";

/// The nexthop id weft gives the peer with `subnet`: its address as a number.
fn nhid_of(subnet: &str) -> u64 {
    let ip: Ipv4Addr = subnet_address(subnet).parse().expect("subnet address");
    u64::from(u32::from(ip))
}

fn vxlan_lease(public_ip: &str, mac: &str) -> String {
    format!(
        r#"{{"PublicIP":"{public_ip}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
    )
}

/// `ip -j nexthop show`.
fn nexthops(node: &Node) -> Vec<Value> {
    node.netns().ip_json(&["nexthop", "show"])
}

fn nexthop(node: &Node, id: u64) -> Option<Value> {
    nexthops(node)
        .into_iter()
        .find(|n| n["id"].as_u64() == Some(id))
}

fn has_flag(v: &Value, flag: &str) -> bool {
    v["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == flag))
}

/// Whether `node` routes `subnet` through weft's nexthop object of that subnet, which goes
/// via `gateway` on `dev` (on-link when `onlink`).
fn through_nexthop(node: &Node, subnet: &str, gateway: &str, dev: &str, onlink: bool) -> bool {
    let id = nhid_of(subnet);
    let route_ok = node
        .route_to(subnet)
        .is_some_and(|r| r["nhid"].as_u64() == Some(id) && r["protocol"].as_str() == Some("87"));
    let nexthop_ok = nexthop(node, id).is_some_and(|n| {
        n["gateway"].as_str() == Some(gateway)
            && n["dev"].as_str() == Some(dev)
            && n["protocol"].as_str() == Some("87")
            && has_flag(&n, "onlink") == onlink
    });
    route_ok && nexthop_ok
}

/// Whether `node` routes `subnet` in Flannel's VXLAN shape (`via X.0 dev flannel.1 onlink`,
/// no nexthop object).
fn flannel_shape(node: &Node, subnet: &str) -> bool {
    node.route_to(subnet).is_some_and(|r| {
        r.get("nhid").is_none()
            && r["gateway"].as_str() == Some(subnet_address(subnet).as_str())
            && r["dev"].as_str() == Some("flannel.1")
            && r["protocol"].as_str() == Some("87")
            && has_flag(&r, "onlink")
    })
}

/// weft's nexthop objects (protocol 87) on `node`.
fn weft_nexthops(node: &Node) -> Vec<Value> {
    nexthops(node)
        .into_iter()
        .filter(|n| n["protocol"].as_str() == Some("87"))
        .collect()
}

fn describe(node: &Node) -> String {
    format!(
        "routes:\n{}\nnexthops:\n{}\nlog:\n{}",
        node.netns().ip(&["route", "show"]),
        node.netns().ip(&["nexthop", "show"]),
        node.log_tail(30)
    )
}

/// Starts weftd on every node with `args` and waits for every subnet.env.
fn start_with(cluster: &Cluster, args: &[&str]) {
    for node in &cluster.nodes {
        node.start_weftd(args);
    }
    for node in &cluster.nodes {
        node.wait_subnet_env(CONVERGE);
    }
}

#[test]
fn vxlan_with_route_nexthops_routes_every_peer_through_a_nexthop_object_and_pods_talk() {
    let cluster = Cluster::new(3, VXLAN_CONFIG);
    start_with(&cluster, &[FLAG]);
    cluster.wait_mesh(CONVERGE);
    let pods: Vec<Pod> = cluster.nodes.iter().map(|n| n.add_pod()).collect();
    for (i, a) in pods.iter().enumerate() {
        for (j, b) in pods.iter().enumerate() {
            if i != j {
                wait_until(CONVERGE, &format!("pod {i} reaches pod {j}"), || {
                    a.tcp_check(b)
                });
            }
        }
    }
    for (i, node) in cluster.nodes.iter().enumerate() {
        for (j, peer) in cluster.nodes.iter().enumerate() {
            if i == j {
                continue;
            }
            let subnet = peer.subnet().expect("peer subnet");
            let gw = subnet_address(&subnet);
            assert!(
                through_nexthop(node, &subnet, &gw, "flannel.1", true),
                "node {i} to {subnet}:\n{}",
                describe(node)
            );
        }
        // One object per peer, none of its own subnet.
        assert_eq!(weft_nexthops(node).len(), 2, "{}", describe(node));
    }
}

#[test]
fn vxlan_with_weftd_route_nexthops_variable_follows_a_lease_that_changes_and_goes() {
    let cluster = Cluster::new(1, VXLAN_CONFIG);
    let n0 = cluster.node(0);
    let key = lease_key(FAKE_SUBNET);
    cluster
        .etcd
        .put(&key, &vxlan_lease("192.0.2.77", "0a:00:00:00:00:77"));
    // Switched on by its variable alone.
    let endpoint = cluster.etcd.endpoint();
    n0.start_weftd_env(&[
        ("WEFTD_ETCD_ENDPOINTS", &endpoint),
        ("WEFTD_IFACE", "eth0"),
        ("WEFTD_SUBNET_FILE", &n0.subnet_file().to_string_lossy()),
        ("WEFTD_STATE_DIR", &n0.state_dir().to_string_lossy()),
        ("WEFTD_ROUTE_NEXTHOPS", "true"),
    ]);
    n0.wait_subnet_env(CONVERGE);
    let gw = subnet_address(FAKE_SUBNET);
    n0.wait_until(CONVERGE, "peer through its nexthop", || {
        through_nexthop(n0, FAKE_SUBNET, &gw, "flannel.1", true)
            && n0.vxlan_peer_programmed("flannel.1", FAKE_SUBNET, "192.0.2.77", "0a:00:00:00:00:77")
    });

    // New VTEP and address: neighbour and FDB follow, the route keeps its object.
    cluster
        .etcd
        .put(&key, &vxlan_lease("192.0.2.78", "0a:00:00:00:00:78"));
    n0.wait_until(CONVERGE, "peer's new VTEP programmed", || {
        n0.vxlan_peer_programmed("flannel.1", FAKE_SUBNET, "192.0.2.78", "0a:00:00:00:00:78")
    });
    assert!(
        through_nexthop(n0, FAKE_SUBNET, &gw, "flannel.1", true),
        "{}",
        describe(n0)
    );

    assert!(cluster.etcd.del(&key), "delete {key}");
    wait_route_and_nexthop_gone(n0, FAKE_SUBNET);
    assert!(
        n0.vxlan_peer_absent(FAKE_SUBNET, "0a:00:00:00:00:78"),
        "{}",
        describe(n0)
    );
}

#[test]
fn restarts_convert_between_flannels_shape_and_nexthops() {
    let cluster = Cluster::new(2, VXLAN_CONFIG);
    let n0 = cluster.node(0);
    cluster.etcd.put(
        &lease_key(FAKE_SUBNET),
        &vxlan_lease("192.0.2.77", "0a:00:00:00:00:77"),
    );
    start_with(&cluster, &[]);
    cluster.wait_mesh(CONVERGE);
    let peer = cluster.node(1).subnet().expect("peer subnet");
    let a = n0.add_pod();
    let b = cluster.node(1).add_pod();
    wait_until(CONVERGE, "pod a reaches pod b", || a.tcp_check(&b));
    assert!(flannel_shape(n0, &peer) && flannel_shape(n0, FAKE_SUBNET));
    assert!(weft_nexthops(n0).is_empty(), "{}", describe(n0));

    // Off -> on: every peer's route goes through its nexthop object.
    n0.stop();
    n0.start_weftd(&[FLAG]);
    n0.wait_until(CONVERGE, "routes converted to nexthops", || {
        through_nexthop(n0, &peer, &subnet_address(&peer), "flannel.1", true)
            && through_nexthop(
                n0,
                FAKE_SUBNET,
                &subnet_address(FAKE_SUBNET),
                "flannel.1",
                true,
            )
    });
    assert!(a.tcp_check(&b), "pods talk through nexthops");

    // On -> off: Flannel's shape again and no nexthop of weft's left.
    n0.stop();
    n0.start_weftd(&[]);
    n0.wait_until(CONVERGE, "routes converted back, nexthops gone", || {
        flannel_shape(n0, &peer) && flannel_shape(n0, FAKE_SUBNET) && weft_nexthops(n0).is_empty()
    });
    assert!(a.tcp_check(&b), "pods talk in Flannel's shape");
}

#[test]
fn hostgw_with_route_nexthops_routes_peers_via_their_public_ip_and_udp_removes_them() {
    let cluster = Cluster::new(2, HOSTGW_CONFIG);
    let n0 = cluster.node(0);
    let key = lease_key(FAKE_SUBNET);
    let hostgw_lease = |ip: &str| format!(r#"{{"PublicIP":"{ip}","BackendType":"host-gw"}}"#);
    cluster.etcd.put(&key, &hostgw_lease("192.0.2.77"));
    start_with(&cluster, &[FLAG]);
    cluster.wait_mesh(CONVERGE);
    let a = n0.add_pod();
    let b = cluster.node(1).add_pod();
    wait_until(CONVERGE, "pod a reaches pod b", || {
        a.tcp_check(&b) && b.tcp_check(&a)
    });
    let peer = cluster.node(1).subnet().expect("peer subnet");
    let peer_ip = cluster.node(1).public_ip().to_string();
    assert!(
        through_nexthop(n0, &peer, &peer_ip, "eth0", false)
            && through_nexthop(n0, FAKE_SUBNET, "192.0.2.77", "eth0", false),
        "{}",
        describe(n0)
    );

    // A new PublicIP moves the nexthop object's gateway.
    cluster.etcd.put(&key, &hostgw_lease("192.0.2.78"));
    n0.wait_until(CONVERGE, "nexthop via the new PublicIP", || {
        through_nexthop(n0, FAKE_SUBNET, "192.0.2.78", "eth0", false)
    });

    assert!(cluster.etcd.del(&key), "delete {key}");
    wait_route_and_nexthop_gone(n0, FAKE_SUBNET);
    assert!(
        through_nexthop(n0, &peer, &peer_ip, "eth0", false),
        "{}",
        describe(n0)
    );

    // The UDP backend uses no nexthop objects and removes weft's (these, on eth0, would
    // outlive the switch: no device of theirs goes).
    n0.stop();
    cluster.etcd.put(NETWORK_CONFIG_KEY, UDP_CONFIG);
    n0.start_weftd(&[]);
    n0.wait_until(CONVERGE, "UDP removed weft's nexthops", || {
        n0.link("flannel0").is_some() && weft_nexthops(n0).is_empty()
    });
}

#[test]
fn a_foreign_nexthop_holding_a_peers_id_is_left_alone_and_that_peer_keeps_flannels_shape() {
    let cluster = Cluster::new(2, VXLAN_CONFIG);
    let n0 = cluster.node(0);
    let id = nhid_of(FAKE_SUBNET).to_string();
    n0.netns().ip(&[
        "nexthop",
        "add",
        "id",
        &id,
        "via",
        "192.0.2.99",
        "dev",
        "eth0",
    ]);
    cluster.etcd.put(
        &lease_key(FAKE_SUBNET),
        &vxlan_lease("192.0.2.77", "0a:00:00:00:00:77"),
    );
    start_with(&cluster, &[FLAG]);
    cluster.wait_mesh(CONVERGE);
    let peer = cluster.node(1).subnet().expect("peer subnet");
    n0.wait_until(CONVERGE, "the other peer through its nexthop", || {
        through_nexthop(n0, &peer, &subnet_address(&peer), "flannel.1", true)
    });
    n0.wait_until(CONVERGE, "the blocked peer in Flannel's shape", || {
        flannel_shape(n0, FAKE_SUBNET)
    });
    let foreign = nexthop(n0, nhid_of(FAKE_SUBNET)).expect("foreign nexthop kept");
    assert_eq!(foreign["gateway"].as_str(), Some("192.0.2.99"), "{foreign}");
    assert_eq!(foreign["dev"].as_str(), Some("eth0"), "{foreign}");
    assert_ne!(foreign["protocol"].as_str(), Some("87"), "{foreign}");
    let log = n0.log();
    assert_eq!(
        log.matches("a nexthop of another protocol holds the peer's id")
            .count(),
        1,
        "one warning naming the blocked peer:\n{}",
        n0.log_tail(30)
    );
    assert!(log.contains(FAKE_SUBNET), "{}", n0.log_tail(30));
}

#[test]
fn dual_stack_with_route_nexthops_uses_them_for_ipv4_and_flannels_shape_for_ipv6() {
    let cluster = Cluster::new(2, DUAL_CONFIG);
    cluster.underlay.netns().no_dad();
    for node in &cluster.nodes {
        node.netns().no_dad();
        let v6 = format!("2001:db8::{}/64", 10 + node.index());
        node.netns()
            .ip(&["addr", "add", &v6, "dev", "eth0", "nodad"]);
    }
    start_with(&cluster, &[FLAG]);
    cluster.wait_mesh(CONVERGE);
    let n0 = cluster.node(0);
    let peer = cluster.node(1).subnet().expect("peer subnet");
    n0.wait_until(CONVERGE, "IPv4 peer through its nexthop", || {
        through_nexthop(n0, &peer, &subnet_address(&peer), "flannel.1", true)
    });
    let env = cluster.node(1).wait_subnet_env(CONVERGE);
    let sn6 = env
        .lines()
        .find_map(|l| l.strip_prefix("FLANNEL_IPV6_SUBNET="))
        .expect("FLANNEL_IPV6_SUBNET");
    let net6 = sn6.trim_end_matches("1/64").to_string();
    let routes6 = || {
        n0.netns()
            .ip_json(&["-6", "route", "show", "dev", "flannel-v6.1"])
    };
    n0.wait_until(CONVERGE, "IPv6 peer route", || {
        routes6()
            .iter()
            .any(|r| r["dst"].as_str() == Some(&format!("{net6}/64")))
    });
    let r6 = routes6()
        .into_iter()
        .find(|r| r["dst"].as_str() == Some(&format!("{net6}/64")))
        .expect("IPv6 peer route");
    assert!(
        r6.get("nhid").is_none()
            && r6["gateway"].as_str() == Some(net6.as_str())
            && r6["protocol"].as_str() == Some("87")
            && has_flag(&r6, "onlink"),
        "IPv6 route not in Flannel's shape: {r6}"
    );
    assert!(
        weft_nexthops(n0).iter().all(|n| n["gateway"]
            .as_str()
            .is_some_and(|g| g.parse::<Ipv4Addr>().is_ok())),
        "{}",
        describe(n0)
    );
    let a = n0.add_pod();
    let b = cluster.node(1).add_pod();
    wait_until(CONVERGE, "pod a reaches pod b over IPv4", || {
        a.tcp_check(&b)
    });
}

/// Waits until `node` holds neither a route to `subnet` nor its nexthop object.
fn wait_route_and_nexthop_gone(node: &Node, subnet: &str) {
    node.wait_until(
        CONVERGE,
        "withdrawn peer's route and nexthop removed",
        || node.route_to(subnet).is_none() && nexthop(node, nhid_of(subnet)).is_none(),
    );
}
