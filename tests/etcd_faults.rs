//! weftd against a real 3-member etcd cluster under faults: the leader killed, a member cut off
//! by nftables, every member down for 30 s, and a node cut off from etcd alone. Pod traffic
//! between two nodes runs throughout and must never fail; the watch, renewals and new leases
//! must go on through the members that are left, and after a heal the node must catch up.
//!
//! Each scenario is its own test (own namespaces, own etcd cluster), so they run in parallel.
//! The resync interval is set far beyond a test's length: what a node learns during a test
//! comes from its watch (or a re-watch after a broken one), not from a periodic re-list.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Seconds of the nodes' etcd leases: with the 1 min renew margin, a renewal every ~5 s.
const LEASE_TTL: &str = "65";
/// etcd's watcher gauge: which member serves the nodes' watches.
const WATCHERS: &str = "etcd_debugging_mvcc_watcher_total";
/// Range requests (gets and lists) a member served.
const RANGES: &str = "etcd_debugging_mvcc_range_total";

/// Underlay, a 3-member etcd cluster with the VXLAN config, nodes running weftd with every
/// member as an endpoint. Fields drop in order: nodes, etcd, underlay.
struct Topology {
    nodes: Vec<Node>,
    etcd: EtcdCluster,
    underlay: Underlay,
}

impl Topology {
    fn new(n_nodes: u32) -> Topology {
        let underlay = Underlay::new();
        let etcd = EtcdCluster::new(&underlay, 3);
        etcd.put(NETWORK_CONFIG_KEY, VXLAN_CONFIG);
        let mut topo = Topology {
            nodes: Vec::new(),
            etcd,
            underlay,
        };
        for _ in 0..n_nodes {
            topo.start_node();
        }
        for node in &topo.nodes {
            node.wait_subnet_env(Duration::from_secs(30));
        }
        topo
    }

    /// Adds a node and starts weftd on it with all three endpoints.
    fn start_node(&mut self) -> &Node {
        let index = self.nodes.len() as u32 + 1;
        let node = Node::new(&self.underlay, index, &self.etcd.endpoints());
        node.start_weftd(&[
            "--subnet-lease-ttl",
            LEASE_TTL,
            "--subnet-lease-renew-margin",
            "1",
            "--resync-interval",
            "3600",
        ]);
        let args = node.base_args();
        let endpoints = args
            .iter()
            .skip_while(|a| *a != "--etcd-endpoints")
            .nth(1)
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            endpoints.split(',').count(),
            3,
            "weftd must know every member: {endpoints}"
        );
        self.nodes.push(node);
        self.nodes.last().unwrap_or_else(|| unreachable!())
    }

    fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// Waits until every node routes to every other node's subnet and weftd on each watches
    /// (one watcher per node across the members); returns two pods, on nodes 1 and 2, that talk.
    fn pods(&self) -> (Pod, Pod) {
        for (i, node) in self.nodes.iter().enumerate() {
            for (j, other) in self.nodes.iter().enumerate() {
                if i != j {
                    let subnet = other.subnet().unwrap_or_default();
                    node.wait_until(
                        Duration::from_secs(20),
                        &format!("route to {subnet}"),
                        || node.route_to(&subnet).is_some(),
                    );
                }
            }
        }
        wait_until(Duration::from_secs(20), "a watch per node", || {
            self.watchers().iter().sum::<u64>() >= self.nodes.len() as u64
        });
        let a = self.node(0).add_pod();
        let b = self.node(1).add_pod();
        wait_until(Duration::from_secs(20), "pods talk", || a.tcp_check(&b));
        (a, b)
    }

    /// Watchers per member (0 for a member that does not answer).
    fn watchers(&self) -> Vec<u64> {
        self.etcd
            .members()
            .iter()
            .map(|m| m.metric(WATCHERS).unwrap_or(0.0) as u64)
            .collect()
    }

    /// The member serving the most of the nodes' watches.
    fn busiest_member(&self) -> usize {
        let watchers = self.watchers();
        let (i, n) = watchers
            .iter()
            .enumerate()
            .max_by_key(|(_, n)| **n)
            .map(|(i, n)| (i, *n))
            .unwrap_or((0, 0));
        assert!(n > 0, "no member serves a watch: {watchers:?}");
        println!("watchers per member {watchers:?}: faulting member {i}");
        i
    }

    /// Puts a new peer's lease (another node's, as etcd would hold it) and waits until every
    /// node in `nodes` has programmed it; returns how long that took.
    fn new_peer_programmed(&self, nodes: &[usize], n: u8, timeout: Duration) -> Duration {
        let start = Instant::now();
        let (subnet, ip, mac) = fake_peer(n);
        self.etcd
            .put(&lease_key(&subnet), &vxlan_lease_value(&ip, &mac));
        self.programmed(nodes, n, timeout);
        start.elapsed()
    }

    /// Waits until every node in `nodes` has programmed fake peer `n`.
    fn programmed(&self, nodes: &[usize], n: u8, timeout: Duration) {
        let (subnet, ip, mac) = fake_peer(n);
        for &i in nodes {
            let node = self.node(i);
            node.wait_until(timeout, &format!("peer {subnet} programmed"), || {
                node.vxlan_peer_programmed("flannel.1", &subnet, &ip, &mac)
            });
        }
    }

    /// Waits until every node logged at least `n` renewals after its log had `since[i]` bytes,
    /// and checks that once the first of them went through, no renewal failed: weftd has moved
    /// to a member that answers instead of sending part of its requests to the lost one.
    fn renewals_after(&self, since: &[usize], n: usize) {
        for (node, &from) in self.nodes.iter().zip(since) {
            node.wait_until(Duration::from_secs(40), "renewals after the fault", || {
                node.log()
                    .get(from..)
                    .is_some_and(|tail| tail.matches("lease renewed").count() >= n)
            });
            let log = node.log();
            let after = log.get(from..).unwrap_or_default();
            let first = after.find("lease renewed").unwrap_or(0);
            let failed = after[first..].matches("renew lease; retrying").count();
            assert_eq!(
                failed,
                0,
                "{}: renewals failed after one went through:\n{}",
                node.name(),
                &after[first..]
            );
        }
    }

    fn log_lengths(&self) -> Vec<usize> {
        self.nodes.iter().map(|n| n.log().len()).collect()
    }

    fn all_running(&self) {
        for node in &self.nodes {
            assert!(node.is_running(), "weftd on {} exited", node.name());
        }
    }
}

/// Fake peer `n`: subnet 10.244.(200+n).0/24 at PublicIP 192.0.2.(100+n), VTEP aa:bb:cc:00:00:n.
fn fake_peer(n: u8) -> (String, String, String) {
    (
        format!("10.244.{}.0/24", 200 + u32::from(n)),
        format!("192.0.2.{}", 100 + u32::from(n)),
        format!("aa:bb:cc:00:00:{n:02x}"),
    )
}

fn assert_no_failed_probe(stats: ProbeStats, what: &str) {
    println!(
        "{what}: {} pod round trips, {} failed, longest gap {:?}",
        stats.attempts, stats.failures, stats.longest_gap
    );
    assert!(stats.attempts > 20, "{what}: too few probes: {stats:?}");
    assert_eq!(stats.failures, 0, "{what}: pod traffic failed: {stats:?}");
}

#[test]
fn leader_killed_under_pod_traffic() {
    let mut topo = Topology::new(2);
    let (a, b) = topo.pods();
    let probe = a.traffic_probe(&b);
    probe.wait_attempts(10);

    // The leader is the member that serves (at least one of) the watches: killing it takes both.
    let victim = topo.busiest_member();
    topo.etcd.move_leader(victim);
    let since = topo.log_lengths();
    topo.etcd.kill(victim);
    let leader = topo.etcd.wait_leader();
    assert_ne!(leader, victim);

    let took = topo.new_peer_programmed(&[0, 1], 1, Duration::from_secs(30));
    println!("new lease programmed on both nodes {took:?} after the leader was killed");
    topo.renewals_after(&since, 3);

    // A new node acquires a subnet through the two members left, and the others program it.
    let subnet = {
        let node = topo.start_node();
        node.wait_subnet_env(Duration::from_secs(30));
        node.subnet().unwrap_or_default()
    };
    for i in 0..2 {
        let node = topo.node(i);
        node.wait_until(Duration::from_secs(20), "route to the new node", || {
            node.route_to(&subnet).is_some()
        });
    }
    probe.wait_attempts(10);
    assert_no_failed_probe(probe.stop(), "leader killed");
    topo.all_running();
}

#[test]
fn member_partitioned_under_pod_traffic() {
    let topo = Topology::new(2);
    let (a, b) = topo.pods();
    let probe = a.traffic_probe(&b);
    probe.wait_attempts(10);

    // Cut off the member that serves the watches, and make it the leader so writes move too.
    let victim = topo.busiest_member();
    topo.etcd.move_leader(victim);
    let since = topo.log_lengths();
    topo.etcd.partition(victim);
    wait_until(Duration::from_secs(20), "a leader among the others", || {
        topo.etcd.leader().is_some_and(|l| l != victim)
    });

    let took = topo.new_peer_programmed(&[0, 1], 1, Duration::from_secs(40));
    println!("new lease programmed on both nodes {took:?} after the partition");
    topo.renewals_after(&since, 3);
    probe.wait_attempts(10);
    assert_no_failed_probe(probe.stop(), "member partitioned");

    topo.etcd.heal(victim);
    topo.new_peer_programmed(&[0, 1], 2, Duration::from_secs(30));
    topo.all_running();
}

#[test]
fn all_members_down_30s_then_back() {
    let topo = Topology::new(2);
    let (a, b) = topo.pods();
    let probe = a.traffic_probe(&b);
    probe.wait_attempts(10);

    topo.etcd.kill_all();
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_secs(1));
        topo.all_running();
    }
    assert_eq!(
        probe.stats().failures,
        0,
        "pod traffic failed while etcd was down"
    );
    topo.etcd.start_all();
    let back = Instant::now();
    let since = topo.log_lengths();

    // Converged: a lease written right after etcd's return is programmed on every node.
    let (subnet, ip, mac) = fake_peer(1);
    topo.etcd
        .put(&lease_key(&subnet), &vxlan_lease_value(&ip, &mac));
    topo.programmed(&[0, 1], 1, Duration::from_secs(30));
    let took = back.elapsed();
    println!("etcd back after 30 s: new lease programmed on every node {took:?} after its return");
    assert!(
        took <= Duration::from_secs(5),
        "converged {took:?} after etcd's return, more than 5 s"
    );
    topo.renewals_after(&since, 1);
    probe.wait_attempts(10);
    assert_no_failed_probe(probe.stop(), "all members down 30 s");
    topo.all_running();
}

#[test]
fn node_cut_off_from_etcd_keeps_its_data_path() {
    let topo = Topology::new(2);
    let (a, b) = topo.pods();
    let probe = a.traffic_probe(&b);
    probe.wait_attempts(10);

    // Node 1 loses etcd (every member) but keeps its peers.
    let cut = topo.node(0);
    let members: Vec<&str> = topo.etcd.members().iter().map(EtcdMember::ip).collect();
    let set = members.join(", ");
    nft_apply(
        cut.netns(),
        &format!(
            "table inet weft_fault {{\n\
             chain output {{ type filter hook output priority -10; policy accept; ip daddr {{ {set} }} drop; }}\n\
             chain input {{ type filter hook input priority -10; policy accept; ip saddr {{ {set} }} drop; }}\n\
             }}\n"
        ),
    );
    let cut_log = cut.log().len();
    cut.wait_until(
        Duration::from_secs(40),
        "weftd noticing etcd is gone",
        || {
            cut.log().get(cut_log..).is_some_and(|t| {
                t.contains("lease watch failed") || t.contains("renew lease; retrying")
            })
        },
    );
    // etcd moves on without it: node 2 learns a new peer, node 1 cannot.
    topo.new_peer_programmed(&[1], 1, Duration::from_secs(20));
    let (subnet, ..) = fake_peer(1);
    assert!(
        cut.route_to(&subnet).is_none(),
        "node cut off from etcd learnt a lease"
    );
    assert_eq!(
        probe.stats().failures,
        0,
        "pod traffic failed while cut off"
    );

    let since = topo.log_lengths();
    cut.netns()
        .exec_ok(&["nft", "delete", "table", "inet", "weft_fault"]);
    let healed = Instant::now();
    topo.programmed(&[0], 1, Duration::from_secs(30));
    println!(
        "node cut off from etcd: caught up {:?} after the heal",
        healed.elapsed()
    );
    topo.renewals_after(&since[..1], 1);
    probe.wait_attempts(10);
    assert_no_failed_probe(probe.stop(), "node cut off from etcd");
    topo.all_running();
}

/// The periodic resync re-diffs the kernel against the lease table the watch keeps: it sends
/// etcd no request (only the rare, jittered safety re-list does), yet still repairs the kernel.
#[test]
fn resync_repairs_the_kernel_without_asking_etcd() {
    let underlay = Underlay::new();
    let etcd = EtcdCluster::new(&underlay, 1);
    etcd.put(NETWORK_CONFIG_KEY, VXLAN_CONFIG);
    let (subnet, ip, mac) = fake_peer(1);
    etcd.put(&lease_key(&subnet), &vxlan_lease_value(&ip, &mac));
    let node = Node::new(&underlay, 1, &etcd.endpoints());
    node.start_weftd(&["--resync-interval", "1", "--relist-interval", "3600"]);
    node.wait_subnet_env(Duration::from_secs(30));
    let programmed = || node.vxlan_peer_programmed("flannel.1", &subnet, &ip, &mac);
    node.wait_until(Duration::from_secs(10), "the peer programmed", programmed);
    let ranges = || range_operations(&etcd);
    let before = ranges();
    // A peer route deleted by hand (weftd does not watch routes): a resync puts it back.
    node.netns().ip(&["route", "del", &subnet]);
    assert!(!programmed(), "route still there after deleting it");
    node.wait_until(
        Duration::from_secs(5),
        "the route restored by a resync",
        programmed,
    );
    std::thread::sleep(Duration::from_secs(4));
    let after = ranges();
    assert_eq!(
        after - before,
        0.0,
        "etcd Range requests during at least five resyncs (1 s apart)"
    );
}

/// weftd's start lists the network once: the listing that picks its subnet is the one its lease
/// table starts from (the watch from its revision brings the claim). At 10 000 leases a listing
/// is tens of milliseconds of the start and twenty Range requests of 500 keys.
#[test]
fn start_lists_the_network_once() {
    let underlay = Underlay::new();
    let etcd = EtcdCluster::new(&underlay, 1);
    etcd.put(NETWORK_CONFIG_KEY, VXLAN_CONFIG);
    let (subnet, ip, mac) = fake_peer(1);
    etcd.put(&lease_key(&subnet), &vxlan_lease_value(&ip, &mac));
    let ranges = || range_operations(&etcd);
    let node = Node::new(&underlay, 1, &etcd.endpoints());
    let before = ranges();
    node.start_weftd(&["--relist-interval", "3600"]);
    node.wait_subnet_env(Duration::from_secs(30));
    node.wait_until(Duration::from_secs(10), "the peer programmed", || {
        node.vxlan_peer_programmed("flannel.1", &subnet, &ip, &mac)
    });
    // The claim arrives through the watch: the node's own lease is in its table.
    node.wait_until(Duration::from_secs(10), "weftd ready", || {
        node.log().contains("node ready")
    });
    let after = ranges();
    println!(
        "etcd Range requests from weftd's start to ready: {}",
        after - before
    );
    // The config read, one listing (one page: fewer than 500 keys) and the claim's
    // transaction: 4 range operations in etcd's count; 5 when the start listed twice.
    assert!(
        after - before <= 4.0,
        "{} range operations at start: the network listed more than once",
        after - before
    );
    // A peer written after the start still arrives (the watch runs from the listing's revision).
    let (subnet2, ip2, mac2) = fake_peer(2);
    etcd.put(&lease_key(&subnet2), &vxlan_lease_value(&ip2, &mac2));
    node.wait_until(
        Duration::from_secs(10),
        "the second peer programmed",
        || node.vxlan_peer_programmed("flannel.1", &subnet2, &ip2, &mac2),
    );
    assert!(
        !node.log().contains("acquiring again") && !node.log().contains("re-acquired"),
        "the own lease was taken for lost:\n{}",
        node.log()
    );
    // Nor is it listed again, nor the kernel read whole again, once the node serves: the
    // start's pass is the only full one, and the event loop watches from the start's listing.
    let full_runs = node
        .http_get("/metrics")
        .and_then(|(_, text)| {
            text.lines().find_map(|l| {
                l.strip_prefix("weft_reconcile_full_runs_total ")?
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
        })
        .expect("weft_reconcile_full_runs_total on /metrics");
    assert_eq!(full_runs, 1.0, "full passes from start to the second peer");
    assert!(
        ranges() - before <= 4.0,
        "{} range operations from the start to the second peer",
        ranges() - before
    );
}

/// etcd's count of range operations (reads) on its first member.
fn range_operations(etcd: &EtcdCluster) -> f64 {
    etcd.member(0)
        .metric(RANGES)
        .unwrap_or_else(|| panic!("etcd does not report {RANGES}"))
}
