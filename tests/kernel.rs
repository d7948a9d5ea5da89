//! The kernel side of the node agent against a real kernel: the VXLAN device, the VTEP MAC's
//! persistence, batched peer programming and its reconciliation, link events, and the nftables
//! masquerade table. Every test runs in network namespaces it creates (unique names, removed
//! on drop, also on panic); nothing touches the root namespace. Needs root.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ipnetwork::Ipv4Network;
use nix::sched::CloneFlags;
use serde_json::Value;
use weft::backend::{Backend, BackendOptions, PeerChange, ReconcileReport};
use weft::config::{BackendConfig, NetworkConfig};
use weft::lease::{Lease, LeaseAttrs};
use weft::netlink::{self, MacAddr};

/// Runs a command with an argument vector; panics with its output when it fails.
fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("spawn {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A cheap, sendable reference to a test namespace, for commands run inside it.
#[derive(Clone)]
struct Ns {
    name: String,
}

impl Ns {
    /// `ip -n <ns> <args>`.
    fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        run(&full)
    }

    /// `ip -n <ns> -j <args>` parsed.
    fn ip_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["-j"];
        full.extend_from_slice(args);
        parse_json(&self.ip(&full))
    }

    /// `bridge -n <ns> -j fdb show dev <dev>` parsed.
    fn fdb_json(&self, dev: &str) -> Value {
        parse_json(&run(&[
            "bridge", "-n", &self.name, "-j", "fdb", "show", "dev", dev,
        ]))
    }

    /// The `ip -d -j link show <dev>` object.
    fn link(&self, dev: &str) -> Value {
        self.ip_json(&["-d", "link", "show", dev])[0].clone()
    }

    fn nft(&self, args: &[&str]) -> std::process::Output {
        let mut full = vec!["netns", "exec", &self.name, "nft"];
        full.extend_from_slice(args);
        Command::new("ip")
            .args(&full)
            .output()
            .unwrap_or_else(|e| panic!("spawn nft {args:?}: {e}"))
    }
}

fn parse_json(text: &str) -> Value {
    if text.trim().is_empty() {
        return Value::Array(Vec::new());
    }
    serde_json::from_str(text).unwrap_or_else(|e| panic!("parse {text:?}: {e}"))
}

/// A network namespace with an underlay `eth0` (192.0.2.1/24, one end of a veth pair whose
/// other end stays in the namespace), plus a state directory; both removed on drop.
struct TestNode {
    ns: Ns,
    state: tempfile::TempDir,
}

impl TestNode {
    fn new(tag: &str) -> Self {
        let name = format!("weftk-{}-{tag}", std::process::id());
        run(&["ip", "netns", "add", &name]);
        let node = TestNode {
            ns: Ns { name },
            state: tempfile::Builder::new()
                .prefix("weftk-state-")
                .tempdir()
                .expect("create state dir"),
        };
        let ns = &node.ns;
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
        ]);
        ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["link", "set", "eth0p", "up"]);
        node
    }

    fn state_dir(&self) -> PathBuf {
        self.state.path().to_path_buf()
    }

    /// Runs async code on a thread that joined the namespace, on a current-thread runtime.
    fn block_on<T, Fut>(&self, f: impl FnOnce(Ns) -> Fut + Send + 'static) -> T
    where
        T: Send + 'static,
        Fut: Future<Output = T>,
    {
        let ns = self.ns.clone();
        let thread = std::thread::spawn(move || {
            let file = std::fs::File::open(format!("/run/netns/{}", ns.name))
                .expect("open namespace file");
            nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).expect("setns into test namespace");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build runtime");
            rt.block_on(f(ns))
        });
        match thread.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.ns.name])
            .status();
    }
}

fn vxlan_config(subnet_len: u8, direct_routing: bool, port: u16) -> NetworkConfig {
    NetworkConfig {
        enable_ipv4: true,
        network: "10.244.0.0/16".parse().unwrap(),
        subnet_len,
        subnet_min: "10.244.1.0".parse().unwrap(),
        subnet_max: "10.244.255.0".parse().unwrap(),
        backend: BackendConfig::Vxlan {
            vni: 1,
            port,
            direct_routing,
            mtu: None,
        },
        ipv6: None,
    }
}

fn peer(subnet: Ipv4Network, public_ip: Ipv4Addr, mac: MacAddr) -> Lease {
    Lease {
        ipv6_subnet: None,
        subnet,
        attrs: LeaseAttrs {
            public_ipv6: None,
            backend_v6_data: None,
            public_ip,
            backend_type: "vxlan".to_string(),
            backend_data: Some(serde_json::json!({"VNI": 1, "VtepMAC": mac.to_string()})),
        },
        etcd_lease: Some(1),
        mod_revision: 1,
    }
}

/// Peer `i` (1-based) of a /26 cluster: subnet 10.244.0.0 + 64 i, PublicIP in 198.51.100.0/24,
/// MAC 0a:00:00:00:hi:lo.
fn peer_n(i: u32) -> Lease {
    let subnet = Ipv4Network::new(
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + 64 * i),
        26,
    )
    .unwrap();
    let public_ip = Ipv4Addr::new(198, 51, 100, (1 + i % 250) as u8);
    let mac = MacAddr([0x0a, 0, 0, 0, (i >> 8) as u8, (i & 0xff) as u8]);
    peer(subnet, public_ip, mac)
}

/// The kernel's view of `flannel.1`: routes, neighbours, FDB entries as comparable strings.
#[derive(Debug, PartialEq, Eq)]
struct KernelView {
    routes: BTreeSet<String>,
    neighbours: BTreeSet<String>,
    fdb: BTreeSet<String>,
}

fn kernel_view(ns: &Ns) -> KernelView {
    let routes = ns.ip_json(&["route", "show", "dev", "flannel.1"]);
    let neigh = ns.ip_json(&["neigh", "show", "dev", "flannel.1"]);
    let fdb = ns.fdb_json("flannel.1");
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    KernelView {
        routes: routes
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let onlink = r["flags"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|x| x == "onlink"));
                format!("{} via {} onlink={onlink}", s(&r["dst"]), s(&r["gateway"]))
            })
            .collect(),
        neighbours: neigh
            .as_array()
            .unwrap()
            .iter()
            .map(|n| format!("{} {} {}", s(&n["dst"]), s(&n["lladdr"]), n["state"]))
            .collect(),
        fdb: fdb
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                format!(
                    "{} dst {} {} {}",
                    s(&f["mac"]),
                    s(&f["dst"]),
                    f["flags"],
                    s(&f["state"])
                )
            })
            .collect(),
    }
}

/// What [`kernel_view`] must show for these peers on the overlay.
fn expected_view(peers: &[Lease]) -> KernelView {
    let mut v = KernelView {
        routes: BTreeSet::new(),
        neighbours: BTreeSet::new(),
        fdb: BTreeSet::new(),
    };
    for p in peers {
        let mac = p.attrs.backend_data.as_ref().unwrap()["VtepMAC"]
            .as_str()
            .unwrap()
            .to_string();
        let gw = p.subnet.network();
        v.routes
            .insert(format!("{} via {gw} onlink=true", p.subnet));
        v.neighbours.insert(format!("{gw} {mac} [\"PERMANENT\"]"));
        v.fdb.insert(format!(
            "{mac} dst {} [\"self\"] permanent",
            p.attrs.public_ip
        ));
    }
    v
}

async fn new_backend(cfg: &NetworkConfig, state_dir: &Path) -> Backend {
    let mut ext = netlink::find_external_interface(Some("eth0"), None)
        .await
        .expect("find eth0");
    if cfg.ipv6.is_some() {
        netlink::add_ipv6_underlay(&mut ext, None)
            .await
            .expect("IPv6 address of eth0");
    }
    Backend::new(cfg, &ext, state_dir, BackendOptions::default())
        .await
        .expect("prepare backend")
}

fn own() -> Ipv4Network {
    "10.244.0.0/26".parse().unwrap()
}

#[test]
fn external_interface_found_by_name_ip_and_default_route() {
    let node = TestNode::new("ext");
    node.ns.ip(&[
        "route",
        "add",
        "default",
        "via",
        "192.0.2.254",
        "dev",
        "eth0",
    ]);
    node.block_on(|_| async {
        let by_name = netlink::find_external_interface(Some("eth0"), None)
            .await
            .unwrap();
        assert_eq!(by_name.name, "eth0");
        assert_eq!(by_name.iface_addr, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(by_name.public_ip, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(
            by_name.network,
            "192.0.2.1/24".parse::<Ipv4Network>().unwrap()
        );
        assert_eq!(by_name.mtu, 1500);
        let by_ip = netlink::find_external_interface(Some("192.0.2.1"), None)
            .await
            .unwrap();
        assert_eq!(by_ip, by_name);
        let by_route = netlink::find_external_interface(None, Some(Ipv4Addr::new(203, 0, 113, 9)))
            .await
            .unwrap();
        assert_eq!(by_route.index, by_name.index);
        assert_eq!(by_route.public_ip, Ipv4Addr::new(203, 0, 113, 9));
        let err = netlink::find_external_interface(Some("nosuch0"), None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("nosuch0"), "{err}");
    });
}

#[test]
fn vxlan_device_has_flannel_attributes_and_mac_survives_restart_and_reboot() {
    let node = TestNode::new("dev");
    let state = node.state_dir();
    let cfg = vxlan_config(26, false, 8472);
    let mac_file = state.join("flannel.1.vtep-mac");

    let (attrs, mtu) = node.block_on({
        let (cfg, state) = (cfg.clone(), state.clone());
        move |_| async move {
            let mut backend = new_backend(&cfg, &state).await;
            // The MAC is chosen and persisted before any device exists.
            assert!(Path::new(&state.join("flannel.1.vtep-mac")).exists());
            let report = backend.reconcile(own(), &[]).await.unwrap();
            assert_eq!(report, ReconcileReport::default());
            (backend.lease_attrs(), backend.mtu())
        }
    });
    assert_eq!(mtu, 1450);
    let mac = attrs.backend_data.as_ref().unwrap()["VtepMAC"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(attrs.backend_type, "vxlan");
    assert_eq!(attrs.backend_data.as_ref().unwrap()["VNI"], 1);
    assert_eq!(attrs.public_ip, Ipv4Addr::new(192, 0, 2, 1));
    let backend_data = serde_json::to_string(attrs.backend_data.as_ref().unwrap()).unwrap();
    assert_eq!(backend_data, format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#));

    let link = node.ns.link("flannel.1");
    let info = &link["linkinfo"]["info_data"];
    assert_eq!(link["linkinfo"]["info_kind"], "vxlan");
    assert_eq!(info["id"], 1);
    assert_eq!(info["port"], 8472);
    assert_eq!(info["local"], "192.0.2.1");
    assert_eq!(info["link"], "eth0");
    assert_eq!(info["learning"], false);
    assert_eq!(link["mtu"], 1450);
    assert_eq!(link["address"], mac.as_str());
    assert!(link["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    let addrs = node.ns.ip_json(&["-4", "addr", "show", "dev", "flannel.1"]);
    let addr_info = addrs[0]["addr_info"].as_array().unwrap();
    assert_eq!(addr_info.len(), 1);
    assert_eq!(addr_info[0]["local"], "10.244.0.0");
    assert_eq!(addr_info[0]["prefixlen"], 32);

    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&mac_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(std::fs::read_to_string(&mac_file).unwrap().trim(), mac);

    // Restart: same state dir, device still there.
    let ifindex = link["ifindex"].clone();
    let again = node.block_on({
        let (cfg, state) = (cfg.clone(), state.clone());
        move |_| async move {
            let mut backend = new_backend(&cfg, &state).await;
            backend.reconcile(own(), &[]).await.unwrap();
            backend.lease_attrs()
        }
    });
    assert_eq!(again, attrs);
    assert_eq!(
        node.ns.link("flannel.1")["ifindex"],
        ifindex,
        "device recreated needlessly"
    );

    // Reboot: the device is gone, the state dir stays.
    node.ns.ip(&["link", "del", "flannel.1"]);
    let after_reboot = node.block_on({
        let (cfg, state) = (cfg.clone(), state.clone());
        move |_| async move {
            let mut backend = new_backend(&cfg, &state).await;
            backend.reconcile(own(), &[]).await.unwrap();
            backend.lease_attrs()
        }
    });
    assert_eq!(after_reboot, attrs);
    assert_eq!(node.ns.link("flannel.1")["address"], mac.as_str());
}

#[test]
fn public_ip_behind_nat_is_published_while_tunnel_uses_iface_address() {
    let node = TestNode::new("nat");
    node.ns.ip(&["addr", "add", "192.0.2.50/24", "dev", "eth0"]);
    let state = node.state_dir();
    let cfg = vxlan_config(26, false, 8472);
    let (nat, second) = node.block_on(move |_| async move {
        let public = Ipv4Addr::new(203, 0, 113, 9);
        let ext = netlink::find_external_interface(Some("eth0"), Some(public))
            .await
            .unwrap();
        assert_eq!(ext.iface_addr, Ipv4Addr::new(192, 0, 2, 1));
        let mut backend = Backend::new(&cfg, &ext, &state, BackendOptions::default())
            .await
            .unwrap();
        backend.reconcile(own(), &[]).await.unwrap();
        // A --public-ip that is one of the interface's addresses selects that address.
        let second =
            netlink::find_external_interface(Some("eth0"), Some(Ipv4Addr::new(192, 0, 2, 50)))
                .await
                .unwrap();
        (backend.lease_attrs(), second)
    });
    assert_eq!(nat.public_ip, Ipv4Addr::new(203, 0, 113, 9));
    assert_eq!(
        node.ns.link("flannel.1")["linkinfo"]["info_data"]["local"],
        "192.0.2.1"
    );
    assert_eq!(second.iface_addr, Ipv4Addr::new(192, 0, 2, 50));
    assert_eq!(second.public_ip, Ipv4Addr::new(192, 0, 2, 50));
}

#[test]
fn thousand_peers_programmed_then_changes_reconciled() {
    let node = TestNode::new("1k");
    let state = node.state_dir();
    let cfg = vxlan_config(26, false, 8472);
    let peers: Vec<Lease> = (1..=1000).map(peer_n).collect();

    let (first, second, elapsed) = node.block_on({
        let (cfg, state, peers) = (cfg.clone(), state.clone(), peers.clone());
        move |_| async move {
            let mut backend = new_backend(&cfg, &state).await;
            // Create the device first so the timing covers the 3000 peer entries only.
            backend.reconcile(own(), &[]).await.unwrap();
            let start = Instant::now();
            let first = backend.reconcile(own(), &peers).await.unwrap();
            let elapsed = start.elapsed();
            let second = backend.reconcile(own(), &peers).await.unwrap();
            (first, second, elapsed)
        }
    });
    println!(
        "programmed 1000 VXLAN peers (3000 kernel entries) in {:.1} ms",
        elapsed.as_secs_f64() * 1000.0
    );
    assert_eq!(first.failed, 0, "{first:?}");
    // What /metrics shows an operator: a second reconcile of an unchanged table changes nothing.
    assert_eq!(
        (second.added, second.removed, second.failed),
        (0, 0, 0),
        "{second:?}"
    );
    let view = kernel_view(&node.ns);
    assert_eq!(view.routes.len(), 1000);
    assert_eq!(view, expected_view(&peers));

    // 100 leases gone, one peer with a new VTEP MAC, one with a new PublicIP.
    let mut changed: Vec<Lease> = peers[100..].to_vec();
    let new_mac = MacAddr([0x0a, 0xee, 0, 0, 0, 1]);
    changed[0] = peer(changed[0].subnet, changed[0].attrs.public_ip, new_mac);
    changed[1].attrs.public_ip = Ipv4Addr::new(198, 51, 100, 254);
    let old_mac_of_0 = peers[100].attrs.backend_data.as_ref().unwrap()["VtepMAC"]
        .as_str()
        .unwrap()
        .to_string();
    let old_fdb_of_1 = format!(
        "{} dst {}",
        peers[101].attrs.backend_data.as_ref().unwrap()["VtepMAC"]
            .as_str()
            .unwrap(),
        peers[101].attrs.public_ip
    );
    let third = node.block_on({
        let (cfg, state, changed) = (cfg.clone(), state.clone(), changed.clone());
        move |_| async move {
            let mut backend = new_backend(&cfg, &state).await;
            backend.reconcile(own(), &changed).await.unwrap()
        }
    });
    assert_eq!(third.failed, 0, "{third:?}");
    let view = kernel_view(&node.ns);
    assert_eq!(view, expected_view(&changed));
    assert!(
        !view.fdb.iter().any(|f| f.starts_with(&old_mac_of_0)),
        "FDB entry of the old MAC {old_mac_of_0} is still there"
    );
    assert!(!view.fdb.iter().any(|f| f.starts_with(&old_fdb_of_1)));
}

#[test]
fn stale_entries_nobody_justifies_are_removed() {
    let node = TestNode::new("stale");
    let state = node.state_dir();
    let cfg = vxlan_config(26, false, 8472);
    let peers: Vec<Lease> = (1..=3).map(peer_n).collect();
    node.block_on({
        let (cfg, state) = (cfg.clone(), state.clone());
        move |_| async move {
            let mut backend = new_backend(&cfg, &state).await;
            backend.reconcile(own(), &[]).await.unwrap();
        }
    });
    // Leftovers of a peer that left while weft was down, and a stray neighbour.
    let ns = &node.ns;
    ns.ip(&[
        "route",
        "add",
        "10.244.200.0/26",
        "via",
        "10.244.200.0",
        "dev",
        "flannel.1",
        "onlink",
    ]);
    ns.ip(&[
        "neigh",
        "add",
        "10.244.200.0",
        "lladdr",
        "0a:bb:00:00:00:01",
        "dev",
        "flannel.1",
        "nud",
        "permanent",
    ]);
    ns.ip(&[
        "neigh",
        "add",
        "10.244.201.0",
        "lladdr",
        "0a:bb:00:00:00:02",
        "dev",
        "flannel.1",
        "nud",
        "reachable",
    ]);
    run(&[
        "bridge",
        "-n",
        &ns.name,
        "fdb",
        "append",
        "0a:bb:00:00:00:01",
        "dev",
        "flannel.1",
        "dst",
        "198.51.100.200",
        "self",
        "permanent",
    ]);
    // A device route on the overlay (e.g. left by a hand-made setup).
    ns.ip(&["route", "add", "10.244.210.0/26", "dev", "flannel.1"]);
    // A direct route weft would own, and routes it must leave alone.
    ns.ip(&["route", "add", "10.244.211.0/26", "dev", "eth0"]);
    ns.ip(&[
        "route",
        "add",
        "10.244.202.0/26",
        "via",
        "192.0.2.202",
        "dev",
        "eth0",
    ]);
    ns.ip(&[
        "route",
        "add",
        "203.0.113.0/24",
        "via",
        "192.0.2.203",
        "dev",
        "eth0",
    ]);
    // A wrong neighbour for a real peer: replaced, not duplicated.
    let gw1 = peers[0].subnet.network().to_string();
    ns.ip(&[
        "neigh",
        "add",
        &gw1,
        "lladdr",
        "0a:cc:00:00:00:01",
        "dev",
        "flannel.1",
        "nud",
        "permanent",
    ]);

    let report = node.block_on({
        let (cfg, state, peers) = (cfg.clone(), state.clone(), peers.clone());
        move |_| async move {
            let mut backend = new_backend(&cfg, &state).await;
            backend.reconcile(own(), &peers).await.unwrap()
        }
    });
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(kernel_view(ns), expected_view(&peers));
    let eth0_routes = ns.ip(&["route", "show", "dev", "eth0"]);
    assert!(!eth0_routes.contains("10.244.202.0"), "{eth0_routes}");
    assert!(eth0_routes.contains("203.0.113.0/24"), "{eth0_routes}");
    assert!(eth0_routes.contains("10.244.211.0/26"), "{eth0_routes}");
}

/// A lease change is applied incrementally: only the changed peers' entries are sent, the
/// kernel is not re-read (an entry deleted behind weft's back stays missing until the next full
/// pass, which restores it).
#[test]
fn lease_changes_touch_only_the_changed_peers_entries() {
    let node = TestNode::new("inc");
    let state = node.state_dir();
    let cfg = vxlan_config(26, false, 8472);
    let peers: Vec<Lease> = (1..=20).map(peer_n).collect();
    let mut changed: Vec<Lease> = peers[1..].to_vec();
    changed.push(peer_n(21));
    // Peer 1 leaves, peer 21 joins.
    let changes = vec![
        PeerChange {
            subnet: peers[0].subnet,
            subnet6: None,
            lease: None,
        },
        PeerChange {
            subnet: peer_n(21).subnet,
            subnet6: None,
            lease: Some(peer_n(21)),
        },
    ];
    let untouched = peers[5].subnet.to_string();
    let ns_name = node.ns.name.clone();
    let (incremental, full) = node.block_on({
        let (cfg, state, peers, changed) = (cfg.clone(), state.clone(), peers, changed.clone());
        move |_| async move {
            let mut backend = new_backend(&cfg, &state).await;
            assert!(
                backend
                    .apply_changes(own(), &changes)
                    .await
                    .unwrap()
                    .is_none(),
                "an incremental pass before any full one"
            );
            backend.reconcile(own(), &peers).await.unwrap();
            run(&["ip", "-n", &ns_name, "route", "del", &untouched]);
            let incremental = backend.apply_changes(own(), &changes).await.unwrap();
            let view = kernel_view(&Ns {
                name: ns_name.clone(),
            });
            assert!(
                !view.routes.iter().any(|r| r.starts_with(&untouched)),
                "an incremental pass re-read the kernel and restored {untouched}"
            );
            let full = backend.reconcile(own(), &changed).await.unwrap();
            (incremental, full)
        }
    });
    let incremental = incremental.expect("an incremental pass after a full one");
    // Peer 1 left (3 entries removed), peer 21 joined (3 added); nothing else was sent.
    assert_eq!(
        (incremental.added, incremental.removed, incremental.failed),
        (3, 3, 0),
        "{incremental:?}"
    );
    assert_eq!(incremental.present, 57, "{incremental:?}");
    // The full pass finds the route deleted behind weft's back and restores only it.
    assert_eq!(
        (full.added, full.removed, full.failed),
        (1, 0, 0),
        "{full:?}"
    );
    assert_eq!(kernel_view(&node.ns), expected_view(&changed));
}

/// Peer `i` of a dual-stack /26 cluster: [`peer_n`] plus the IPv6 subnet fd00:10:244:i::/64,
/// PublicIPv6 2001:db8::1:i and IPv6 VTEP MAC 0a:00:00:00:06:i.
fn dual_peer_n(i: u32) -> Lease {
    let mut p = peer_n(i);
    p.ipv6_subnet = Some(format!("fd00:10:244:{i:x}::/64").parse().unwrap());
    p.attrs.public_ipv6 = Some(format!("2001:db8::1:{i:x}").parse().unwrap());
    p.attrs.backend_v6_data =
        Some(serde_json::json!({"VNI": 1, "VtepMAC": format!("0a:00:00:00:06:{i:02x}")}));
    p
}

/// `flannel-v6.1` as the kernel shows it: routes, neighbours, FDB entries as strings.
fn kernel_view6(ns: &Ns) -> BTreeSet<String> {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let mut view = BTreeSet::new();
    for r in ns
        .ip_json(&["-6", "route", "show", "dev", "flannel-v6.1", "proto", "87"])
        .as_array()
        .unwrap()
    {
        view.insert(format!("route {} via {}", s(&r["dst"]), s(&r["gateway"])));
    }
    for n in ns
        .ip_json(&["-6", "neigh", "show", "dev", "flannel-v6.1"])
        .as_array()
        .unwrap()
    {
        view.insert(format!("neigh {} {}", s(&n["dst"]), s(&n["lladdr"])));
    }
    for f in ns.fdb_json("flannel-v6.1").as_array().unwrap() {
        if s(&f["mac"]).starts_with("0a:") {
            view.insert(format!("fdb {} dst {}", s(&f["mac"]), s(&f["dst"])));
        }
    }
    view
}

/// What [`kernel_view6`] must show for these dual-stack peers.
fn expected_view6(peers: &[Lease]) -> BTreeSet<String> {
    let mut view = BTreeSet::new();
    for p in peers {
        let v6 = p.ipv6_subnet.unwrap();
        let mac = p.attrs.backend_v6_data.as_ref().unwrap()["VtepMAC"]
            .as_str()
            .unwrap()
            .to_string();
        view.insert(format!("route {v6} via {}", v6.network()));
        view.insert(format!("neigh {} {mac}", v6.network()));
        view.insert(format!("fdb {mac} dst {}", p.attrs.public_ipv6.unwrap()));
    }
    view
}

/// A dual-stack node (2001:db8::1 on eth0) of `backend` with peers 1 to 10 of `peer_n`, and
/// a change of them: peer 1 leaves, peer 11 joins, peer 2's node moves to another IPv6 address.
struct DualScenario {
    node: TestNode,
    state: PathBuf,
    cfg: NetworkConfig,
    peers: Vec<Lease>,
    /// The peers after the change.
    changed: Vec<Lease>,
    changes: Vec<PeerChange>,
    /// The IPv6 subnet of a peer the change leaves alone.
    untouched: String,
}

fn dual_scenario(tag: &str, backend: &str, peer_n: fn(u32) -> Lease) -> DualScenario {
    let node = TestNode::new(tag);
    node.ns
        .ip(&["addr", "add", "2001:db8::1/64", "dev", "eth0", "nodad"]);
    let state = node.state_dir();
    let cfg = NetworkConfig::parse(&format!(
        r#"{{"Network":"10.244.0.0/16","SubnetLen":26,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","Backend":{{"Type":"{backend}"}}}}"#
    ))
    .unwrap();
    let peers: Vec<Lease> = (1..=10).map(peer_n).collect();
    let mut moved = peer_n(2);
    moved.attrs.public_ipv6 = Some("2001:db8::2:2".parse().unwrap());
    let mut changed: Vec<Lease> = peers[2..].to_vec();
    changed.push(moved.clone());
    changed.push(peer_n(11));
    let change = |p: &Lease, lease: Option<Lease>| PeerChange {
        subnet: p.subnet,
        subnet6: p.ipv6_subnet,
        lease,
    };
    let changes = vec![
        change(&peers[0], None),
        change(&peer_n(11), Some(peer_n(11))),
        change(&moved, Some(moved.clone())),
    ];
    let untouched = peers[5].ipv6_subnet.unwrap().to_string();
    DualScenario {
        node,
        state,
        cfg,
        peers,
        changed,
        changes,
        untouched,
    }
}

/// A dual-stack lease change is applied incrementally too: only the changed peers' IPv4 and
/// IPv6 entries are sent (an IPv6 route deleted behind weft's back stays missing until the
/// next full pass), and what the kernel holds on `flannel-v6.1` follows the leases.
#[test]
fn dual_stack_lease_changes_touch_only_the_changed_peers_entries_of_both_families() {
    let DualScenario {
        node,
        state,
        cfg,
        peers,
        changed,
        changes,
        untouched,
    } = dual_scenario("inc6", "vxlan", dual_peer_n);
    let ns_name = node.ns.name.clone();
    let (full0, incremental, full) = node.block_on({
        let (cfg, state, peers, changed) =
            (cfg.clone(), state.clone(), peers.clone(), changed.clone());
        move |_| async move {
            let mut backend = new_backend(&cfg, &state).await;
            backend.set_own_ipv6(Some("fd00:10:244:ff::/64".parse().unwrap()));
            let full0 = backend.reconcile(own(), &peers).await.unwrap();
            run(&[
                "ip",
                "-n",
                &ns_name,
                "-6",
                "route",
                "del",
                &untouched,
                "dev",
                "flannel-v6.1",
            ]);
            let incremental = backend.apply_changes(own(), &changes).await.unwrap();
            let view = kernel_view6(&Ns {
                name: ns_name.clone(),
            });
            assert!(
                !view
                    .iter()
                    .any(|e| e.starts_with(&format!("route {untouched}"))),
                "an incremental pass re-read the kernel and restored {untouched}"
            );
            let full = backend.reconcile(own(), &changed).await.unwrap();
            (full0, incremental, full)
        }
    });
    assert_eq!((full0.added, full0.failed), (60, 0), "{full0:?}");
    let incremental = incremental.expect("an incremental pass after a full one");
    // Peer 1: 3 + 3 entries removed; peer 11: 3 + 3 added; peer 2: its IPv6 FDB entry
    // replaced (one removed, one added). Nothing else was sent.
    assert_eq!(
        (incremental.added, incremental.removed, incremental.failed),
        (7, 7, 0),
        "{incremental:?}"
    );
    assert_eq!(incremental.present, 53, "{incremental:?}");
    // The full pass finds the IPv6 route deleted behind weft's back and restores only it.
    assert_eq!(
        (full.added, full.removed, full.failed),
        (1, 0, 0),
        "{full:?}"
    );
    assert_eq!(kernel_view(&node.ns), expected_view(&changed));
    assert_eq!(kernel_view6(&node.ns), expected_view6(&changed));
}

/// The IPv6-only twin of a dual-stack lease, as Flannel keys and writes it: IPv4 part
/// `0.0.0.0/0`, PublicIP `0.0.0.0`, no `BackendData`.
fn v6_only(mut p: Lease) -> Lease {
    p.subnet = "0.0.0.0/0".parse().unwrap();
    p.attrs.public_ip = Ipv4Addr::UNSPECIFIED;
    p.attrs.backend_data = None;
    p
}

/// In an IPv6-only network (every lease keyed `0.0.0.0-0&...`) VXLAN applies a lease change
/// incrementally by the peers' IPv6 subnets: only the changed peers' entries on
/// `flannel-v6.1` are sent, nothing of IPv4 is touched.
#[test]
fn ipv6_only_lease_changes_touch_only_the_changed_peers_entries() {
    let DualScenario {
        node,
        state,
        peers,
        changed,
        changes,
        untouched,
        ..
    } = dual_scenario("inc6o", "vxlan", dual_peer_n);
    let cfg = NetworkConfig::parse(
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    let peers: Vec<Lease> = peers.into_iter().map(v6_only).collect();
    let changed: Vec<Lease> = changed.into_iter().map(v6_only).collect();
    let changes: Vec<PeerChange> = changes
        .into_iter()
        .map(|c| PeerChange {
            subnet: "0.0.0.0/0".parse().unwrap(),
            lease: c.lease.map(v6_only),
            ..c
        })
        .collect();
    let own = || -> Ipv4Network { "0.0.0.0/0".parse().unwrap() };
    let ns_name = node.ns.name.clone();
    let (full0, incremental, full) = node.block_on({
        let (state, peers, changed) = (state.clone(), peers.clone(), changed.clone());
        move |_| async move {
            let mut backend = new_backend(&cfg, &state).await;
            backend.set_own_ipv6(Some("fd00:10:244:ff::/64".parse().unwrap()));
            let full0 = backend.reconcile(own(), &peers).await.unwrap();
            run(&[
                "ip",
                "-n",
                &ns_name,
                "-6",
                "route",
                "del",
                &untouched,
                "dev",
                "flannel-v6.1",
            ]);
            let incremental = backend.apply_changes(own(), &changes).await.unwrap();
            let view = kernel_view6(&Ns {
                name: ns_name.clone(),
            });
            assert!(
                !view
                    .iter()
                    .any(|e| e.starts_with(&format!("route {untouched}"))),
                "an incremental pass re-read the kernel and restored {untouched}"
            );
            let mut want = expected_view6(&changed);
            want.retain(|e| !e.starts_with(&format!("route {untouched}")));
            assert_eq!(view, want);
            let full = backend.reconcile(own(), &changed).await.unwrap();
            (full0, incremental, full)
        }
    });
    assert_eq!((full0.added, full0.failed), (30, 0), "{full0:?}");
    let incremental =
        incremental.expect("an incremental pass after a full one in an IPv6-only network");
    // Peer 1: 3 entries removed; peer 11: 3 added; peer 2: its FDB entry replaced.
    assert_eq!(
        (incremental.added, incremental.removed, incremental.failed),
        (4, 4, 0),
        "{incremental:?}"
    );
    assert_eq!(incremental.present, 26, "{incremental:?}");
    assert_eq!(
        (full.added, full.removed, full.failed),
        (1, 0, 0),
        "{full:?}"
    );
    assert_eq!(kernel_view6(&node.ns), expected_view6(&changed));
    assert!(
        node.ns
            .ip(&["link", "show"])
            .lines()
            .all(|l| !l.contains("flannel.1:")),
        "an IPv6-only network has no flannel.1"
    );
}

/// Peer `i` of a dual-stack udp cluster: [`dual_peer_n`] with the udp backend's lease.
fn udp_dual_peer_n(i: u32) -> Lease {
    let mut p = dual_peer_n(i);
    p.attrs.backend_type = "udp".to_string();
    p.attrs.backend_data = None;
    p.attrs.backend_v6_data = None;
    p
}

/// The udp backend of a dual-stack node applies a lease change to its forwarding table
/// incrementally in both families (the IPv6 subnets of peers go to their PublicIP over the
/// IPv4 underlay), and a full pass over the same leases afterwards finds the table as it
/// would build it.
#[test]
fn udp_dual_stack_lease_changes_are_applied_to_the_forwarding_table_incrementally() {
    let DualScenario {
        node,
        state,
        cfg,
        peers,
        mut changed,
        mut changes,
        ..
    } = dual_scenario("udp6", "udp", udp_dual_peer_n);
    // Peer 3's node moves to another PublicIP: both its entries go there.
    let mut moved = udp_dual_peer_n(3);
    moved.attrs.public_ip = Ipv4Addr::new(198, 51, 100, 203);
    changed.retain(|p| p.subnet != moved.subnet);
    changed.push(moved.clone());
    changes.push(PeerChange {
        subnet: moved.subnet,
        subnet6: moved.ipv6_subnet,
        lease: Some(moved),
    });
    let (full0, incremental, full) = node.block_on({
        let (cfg, state, peers, changed) = (cfg.clone(), state.clone(), peers, changed.clone());
        move |_| async move {
            let mut backend = new_backend(&cfg, &state).await;
            backend.set_own_ipv6(Some("fd00:10:244:ff::/64".parse().unwrap()));
            let full0 = backend.reconcile(own(), &peers).await.unwrap();
            let incremental = backend.apply_changes(own(), &changes).await.unwrap();
            let full = backend.reconcile(own(), &changed).await.unwrap();
            (full0, incremental, full)
        }
    });
    // 10 peers, an IPv4 and an IPv6 subnet each (the device's route is not a peer entry).
    assert_eq!((full0.desired, full0.failed), (20, 0), "{full0:?}");
    let incremental = incremental.expect("an incremental pass after a full one, with IPv6");
    // Peer 1: 2 entries removed; peer 11: 2 added; peer 3: 2 replaced (one removed and one
    // added each); peer 2 moved only its PublicIPv6, which the udp backend does not use.
    assert_eq!(
        (incremental.added, incremental.removed, incremental.failed),
        (4, 4, 0),
        "{incremental:?}"
    );
    assert_eq!(incremental.desired, 20, "{incremental:?}");
    assert_eq!(
        (full.added, full.removed, full.present, full.failed),
        (0, 0, 20, 0),
        "the full pass found the table as the incremental pass left it: {full:?}"
    );
}

/// Peer `i` of a dual-stack host-gw cluster: [`peer_n`]'s subnet, PublicIP 192.0.2.(10 + i) and
/// PublicIPv6 2001:db8::1:i on eth0's segments, IPv6 subnet fd00:10:244:i::/64.
fn hostgw_dual_peer_n(i: u32) -> Lease {
    let mut p = peer_n(i);
    p.attrs.backend_type = "host-gw".to_string();
    p.attrs.backend_data = None;
    p.attrs.public_ip = Ipv4Addr::new(192, 0, 2, (10 + i) as u8);
    p.ipv6_subnet = Some(format!("fd00:10:244:{i:x}::/64").parse().unwrap());
    p.attrs.public_ipv6 = Some(format!("2001:db8::1:{i:x}").parse().unwrap());
    p
}

/// host-gw's routes of both families as `ip` shows them: `dst via gateway`.
fn hostgw_routes(ns: &Ns) -> BTreeSet<String> {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let mut routes = BTreeSet::new();
    for family in ["-4", "-6"] {
        for r in ns
            .ip_json(&[family, "route", "show", "dev", "eth0", "proto", "87"])
            .as_array()
            .unwrap()
        {
            routes.insert(format!("{} via {}", s(&r["dst"]), s(&r["gateway"])));
        }
    }
    routes
}

fn hostgw_expected(peers: &[Lease]) -> BTreeSet<String> {
    let mut routes = BTreeSet::new();
    for p in peers {
        routes.insert(format!("{} via {}", p.subnet, p.attrs.public_ip));
        routes.insert(format!(
            "{} via {}",
            p.ipv6_subnet.unwrap(),
            p.attrs.public_ipv6.unwrap()
        ));
    }
    routes
}

/// host-gw in a dual-stack network applies a lease change incrementally in both families: a
/// peer's IPv4 and IPv6 routes come and go with it, a moved node's IPv6 route follows its new
/// PublicIPv6, and nothing else is sent (an IPv6 route deleted behind weft's back stays
/// missing until the next full pass).
#[test]
fn hostgw_dual_stack_lease_changes_touch_only_the_changed_peers_routes() {
    let DualScenario {
        node,
        state,
        cfg,
        peers,
        changed,
        changes,
        untouched,
    } = dual_scenario("hgw6", "host-gw", hostgw_dual_peer_n);
    let ns_name = node.ns.name.clone();
    let (incremental, full) = node.block_on({
        let (cfg, state, peers, changed) = (cfg.clone(), state.clone(), peers, changed.clone());
        move |_| async move {
            let mut backend = new_backend(&cfg, &state).await;
            let full0 = backend.reconcile(own(), &peers).await.unwrap();
            assert_eq!((full0.added, full0.failed), (20, 0), "{full0:?}");
            assert_eq!(
                hostgw_routes(&Ns {
                    name: ns_name.clone()
                }),
                hostgw_expected(&peers)
            );
            run(&[
                "ip", "-n", &ns_name, "-6", "route", "del", &untouched, "dev", "eth0",
            ]);
            let incremental = backend.apply_changes(own(), &changes).await.unwrap();
            let view = hostgw_routes(&Ns {
                name: ns_name.clone(),
            });
            assert!(
                !view.iter().any(|r| r.starts_with(&untouched)),
                "an incremental pass re-read the kernel and restored {untouched}"
            );
            let mut want = hostgw_expected(&changed);
            want.retain(|r| !r.starts_with(&untouched));
            assert_eq!(view, want);
            let full = backend.reconcile(own(), &changed).await.unwrap();
            (incremental, full)
        }
    });
    let incremental = incremental.expect("an incremental pass after a full one");
    // Peer 1: two routes removed; peer 11: two added; peer 2: its IPv6 route replaced.
    assert_eq!(
        (incremental.added, incremental.removed, incremental.failed),
        (3, 3, 0),
        "{incremental:?}"
    );
    assert_eq!(
        (full.added, full.removed, full.failed),
        (1, 0, 0),
        "{full:?}"
    );
    assert_eq!(hostgw_routes(&node.ns), hostgw_expected(&changed));
}

/// host-gw in an IPv6-only network applies a lease change incrementally by the peers' IPv6
/// subnets (every lease's IPv4 part is `0.0.0.0/0`): routes come, go and follow a moved
/// node's PublicIPv6, and no IPv4 route is written.
#[test]
fn hostgw_ipv6_only_lease_changes_touch_only_the_changed_peers_routes() {
    let DualScenario {
        node,
        state,
        peers,
        changed,
        changes,
        untouched,
        ..
    } = dual_scenario("hgw6o", "host-gw", hostgw_dual_peer_n);
    let cfg = NetworkConfig::parse(
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","Backend":{"Type":"host-gw"}}"#,
    )
    .unwrap();
    let peers: Vec<Lease> = peers.into_iter().map(v6_only).collect();
    let changed: Vec<Lease> = changed.into_iter().map(v6_only).collect();
    let changes: Vec<PeerChange> = changes
        .into_iter()
        .map(|c| PeerChange {
            subnet: "0.0.0.0/0".parse().unwrap(),
            lease: c.lease.map(v6_only),
            ..c
        })
        .collect();
    let routes6 = |peers: &[Lease]| -> BTreeSet<String> {
        peers
            .iter()
            .map(|p| {
                format!(
                    "{} via {}",
                    p.ipv6_subnet.unwrap(),
                    p.attrs.public_ipv6.unwrap()
                )
            })
            .collect()
    };
    let own = || -> Ipv4Network { "0.0.0.0/0".parse().unwrap() };
    let ns_name = node.ns.name.clone();
    let (incremental, full) = node.block_on({
        let (state, peers, changed) = (state.clone(), peers.clone(), changed.clone());
        move |_| async move {
            let mut backend = new_backend(&cfg, &state).await;
            let full0 = backend.reconcile(own(), &peers).await.unwrap();
            assert_eq!((full0.added, full0.failed), (10, 0), "{full0:?}");
            run(&[
                "ip", "-n", &ns_name, "-6", "route", "del", &untouched, "dev", "eth0",
            ]);
            let incremental = backend.apply_changes(own(), &changes).await.unwrap();
            let full = backend.reconcile(own(), &changed).await.unwrap();
            (incremental, full)
        }
    });
    let incremental =
        incremental.expect("an incremental pass after a full one in an IPv6-only network");
    // Peer 1: its route removed; peer 11: added; peer 2: its route replaced.
    assert_eq!(
        (incremental.added, incremental.removed, incremental.failed),
        (2, 2, 0),
        "{incremental:?}"
    );
    // Only the full pass restores the route deleted behind weft's back.
    assert_eq!(
        (full.added, full.removed, full.failed),
        (1, 0, 0),
        "{full:?}"
    );
    assert_eq!(hostgw_routes(&node.ns), routes6(&changed));
}

#[test]
fn deleted_device_is_reported_recreated_and_reprogrammed() {
    let node = TestNode::new("del");
    let state = node.state_dir();
    let cfg = vxlan_config(26, false, 8472);
    let peers: Vec<Lease> = (1..=50).map(peer_n).collect();
    let ns_name = node.ns.name.clone();
    let report = node.block_on({
        let (cfg, state, peers) = (cfg.clone(), state.clone(), peers.clone());
        move |_| async move {
            let mut backend = new_backend(&cfg, &state).await;
            backend.reconcile(own(), &peers).await.unwrap();
            let mut events = netlink::link_events().unwrap();
            run(&["ip", "-n", &ns_name, "link", "del", backend.device_name()]);
            let removed = tokio::time::timeout(Duration::from_secs(5), async {
                while let Some(ev) = events.recv().await {
                    if ev.removed && ev.name.as_deref() == Some("flannel.1") {
                        return ev;
                    }
                }
                panic!("link event stream ended");
            })
            .await
            .expect("no RTM_DELLINK for flannel.1 within 5 s");
            assert!(removed.index > 0);
            backend.reconcile(own(), &peers).await.unwrap()
        }
    });
    assert_eq!(report.failed, 0);
    assert_eq!(kernel_view(&node.ns), expected_view(&peers));
    let addrs = node.ns.ip(&["-4", "addr", "show", "dev", "flannel.1"]);
    assert!(addrs.contains("10.244.0.0/32"), "{addrs}");
}

#[test]
fn device_with_wrong_attributes_is_fixed() {
    let node = TestNode::new("fix");
    let state = node.state_dir();
    let ns = &node.ns;
    // A device left by someone else: wrong port, learning on, wrong MTU, stray address.
    ns.ip(&[
        "link",
        "add",
        "flannel.1",
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        "192.0.2.1",
        "dev",
        "eth0",
        "dstport",
        "4789",
        "learning",
    ]);
    ns.ip(&["link", "set", "flannel.1", "mtu", "1300", "up"]);
    ns.ip(&["addr", "add", "10.244.99.0/32", "dev", "flannel.1"]);
    let peers: Vec<Lease> = (1..=2).map(peer_n).collect();
    let cfg = vxlan_config(26, false, 8472);
    node.block_on({
        let (cfg, state, peers) = (cfg.clone(), state.clone(), peers.clone());
        move |_| async move {
            let mut backend = new_backend(&cfg, &state).await;
            backend.reconcile(own(), &peers).await.unwrap();
        }
    });
    let link = ns.link("flannel.1");
    let info = &link["linkinfo"]["info_data"];
    assert_eq!(info["port"], 8472);
    assert_eq!(info["learning"], false);
    assert_eq!(link["mtu"], 1450);
    let addrs = ns.ip(&["-4", "addr", "show", "dev", "flannel.1"]);
    assert!(
        addrs.contains("10.244.0.0/32") && !addrs.contains("10.244.99.0"),
        "{addrs}"
    );
    assert_eq!(kernel_view(ns), expected_view(&peers));

    // Only the MTU wrong: fixed in place, the device (and its entries) kept.
    let ifindex = link["ifindex"].clone();
    ns.ip(&["link", "set", "flannel.1", "mtu", "1400"]);
    let report = node.block_on({
        let (cfg, state, peers) = (cfg.clone(), state.clone(), peers.clone());
        move |_| async move {
            let mut backend = new_backend(&cfg, &state).await;
            backend.reconcile(own(), &peers).await.unwrap()
        }
    });
    assert_eq!(report.present, 6, "{report:?}");
    let link = ns.link("flannel.1");
    assert_eq!(link["mtu"], 1450);
    assert_eq!(link["ifindex"], ifindex);
}

#[test]
fn direct_routing_routes_same_l2_peers_via_public_ip() {
    let node = TestNode::new("direct");
    let state = node.state_dir();
    let cfg = vxlan_config(26, true, 8472);
    let near = peer(
        "10.244.0.64/26".parse().unwrap(),
        Ipv4Addr::new(192, 0, 2, 2),
        MacAddr([0x0a, 0, 0, 0, 0, 2]),
    );
    let far = peer_n(2);
    node.block_on({
        let (state, near, far) = (state.clone(), near.clone(), far.clone());
        move |_| async move {
            let mut backend = new_backend(&cfg, &state).await;
            let report = backend.reconcile(own(), &[near, far]).await.unwrap();
            assert_eq!(report.failed, 0, "{report:?}");
        }
    });
    let eth0 = node.ns.ip_json(&["route", "show", "10.244.0.64/26"]);
    assert_eq!(eth0[0]["gateway"], "192.0.2.2");
    assert_eq!(eth0[0]["dev"], "eth0");
    assert_eq!(kernel_view(&node.ns), expected_view(&[far]));
}

#[test]
fn nft_masquerade_table_applied_replaced_and_removed() {
    let node = TestNode::new("nft");
    let network: Ipv4Network = "10.244.0.0/16".parse().unwrap();
    node.block_on(move |_| async move {
        weft::masq::apply(network, "10.244.1.0/24".parse().unwrap())
            .await
            .unwrap();
        // Applying again (e.g. a new subnet) replaces the table in one transaction.
        weft::masq::apply(network, "10.244.3.0/24".parse().unwrap())
            .await
            .unwrap();
    });
    let out = node.ns.nft(&["list", "table", "ip", "weft"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What the masquerade does is tested with traffic (weftd.rs, --ip-masq); here what an
    // operator reads in `nft list table ip weft`: the current subnet only, after a replace.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("10.244.3.0/24"), "new subnet missing: {text}");
    assert!(
        !text.contains("10.244.1.0/24"),
        "old subnet still present: {text}"
    );
    assert!(text.contains("masquerade"), "{text}");

    node.block_on(|_| async {
        weft::masq::remove().await.unwrap();
        weft::masq::remove().await.unwrap();
    });
    let out = node.ns.nft(&["list", "tables"]);
    assert!(out.status.success());
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("weft"),
        "table still present"
    );
}

#[test]
fn batch_errors_name_the_operation_and_absent_deletes_succeed() {
    let node = TestNode::new("err");
    let (ok, errors) = node.block_on(|_| async {
        let route = netlink::Ipv4Route {
            dst: "10.244.3.0/24".parse().unwrap(),
            gateway: Some(Ipv4Addr::new(10, 244, 3, 0)),
            oif: 9999,
            onlink: true,
            nexthop: None,
        };
        let fdb = netlink::FdbEntry {
            mac: MacAddr([0x0a, 0, 0, 0, 0, 3]),
            dst: Ipv4Addr::new(198, 51, 100, 3),
        };
        let requests = [
            netlink::BatchRequest::replace_route(&route, "flannel.9"),
            netlink::BatchRequest::del_route(&route, "flannel.9"),
            netlink::BatchRequest::del_neighbour(1, "lo", Ipv4Addr::new(10, 244, 3, 0)),
            netlink::BatchRequest::replace_fdb(9999, "flannel.9", &fdb),
        ];
        netlink::run_batch(requests.to_vec()).await.unwrap()
    });
    assert_eq!(ok, 2, "{errors:?}");
    let messages: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    println!("{messages:#?}");
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(
        messages[0].starts_with("add route 10.244.3.0/24 via 10.244.3.0 dev flannel.9 onlink: "),
        "{messages:?}"
    );
    assert!(
        messages[1].starts_with("add fdb 0a:00:00:00:00:03 dst 198.51.100.3 dev flannel.9: "),
        "{messages:?}"
    );
}

/// A bare network namespace, removed on drop.
struct PlainNs {
    name: String,
}

impl PlainNs {
    fn new(tag: &str) -> Self {
        let name = format!("weftk-{}-{tag}", std::process::id());
        run(&["ip", "netns", "add", &name]);
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        PlainNs { name }
    }

    fn ip(&self, args: &[&str]) {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        run(&full);
    }
}

impl Drop for PlainNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs `f` on a thread inside namespace `ns`.
fn on_thread_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open namespace file");
        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// Connects over TCP from namespace `from` to `to_ip:port` served in namespace `server`;
/// returns the source address the server saw.
fn seen_source(server: &str, from: &str, to_ip: Ipv4Addr, port: u16) -> Ipv4Addr {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let listener = on_thread_in(server, move || {
        let l = std::net::TcpListener::bind(("0.0.0.0", port)).expect("bind listener");
        ready_tx.send(()).expect("signal ready");
        let (_, peer) = l.accept().expect("accept");
        match peer.ip() {
            std::net::IpAddr::V4(ip) => ip,
            other => panic!("IPv6 peer {other}"),
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("listener ready");
    on_thread_in(from, move || {
        std::net::TcpStream::connect_timeout(&(to_ip, port).into(), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to {to_ip}:{port}: {e}"));
    })
    .join()
    .expect("connector");
    listener.join().expect("listener")
}

#[test]
fn masquerade_rules_nat_exactly_what_flannel_nats() {
    // node: pod0 -> pod (10.244.1.2, this node's subnet), peer0 -> remote pod (10.244.5.2,
    // another node's subnet), out0 -> outside (192.0.2.2).
    let node = PlainNs::new("mq-node");
    let pod = PlainNs::new("mq-pod");
    let remote = PlainNs::new("mq-rpod");
    let outside = PlainNs::new("mq-out");
    for (peer, node_if, node_addr, peer_addr, gw) in [
        (&pod, "pod0", "10.244.1.1/24", "10.244.1.2/24", "10.244.1.1"),
        (
            &remote,
            "peer0",
            "10.244.5.1/24",
            "10.244.5.2/24",
            "10.244.5.1",
        ),
        (
            &outside,
            "out0",
            "192.0.2.1/24",
            "192.0.2.2/24",
            "192.0.2.1",
        ),
    ] {
        node.ip(&[
            "link", "add", node_if, "type", "veth", "peer", "name", "eth0", "netns", &peer.name,
        ]);
        node.ip(&["addr", "add", node_addr, "dev", node_if]);
        node.ip(&["link", "set", node_if, "up"]);
        peer.ip(&["addr", "add", peer_addr, "dev", "eth0"]);
        peer.ip(&["link", "set", "eth0", "up"]);
        peer.ip(&["route", "add", "default", "via", gw]);
    }
    run(&[
        "ip",
        "netns",
        "exec",
        &node.name,
        "sysctl",
        "-q",
        "-w",
        "net.ipv4.ip_forward=1",
    ]);
    let network: Ipv4Network = "10.244.0.0/16".parse().unwrap();
    let apply = |ns: &str| {
        on_thread_in(ns, move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(weft::masq::apply(network, "10.244.1.0/24".parse().unwrap()))
        })
        .join()
        .expect("apply thread")
        .expect("apply masquerade rules")
    };
    let pod_ip = Ipv4Addr::new(10, 244, 1, 2);
    let remote_ip = Ipv4Addr::new(10, 244, 5, 2);
    let outside_ip = Ipv4Addr::new(192, 0, 2, 2);

    // Without the rules nothing is translated: the checks below can fail.
    assert_eq!(
        seen_source(&outside.name, &pod.name, outside_ip, 18001),
        pod_ip
    );

    apply(&node.name);
    // Pod to the outside world: masqueraded to the node's address.
    assert_eq!(
        seen_source(&outside.name, &pod.name, outside_ip, 18002),
        Ipv4Addr::new(192, 0, 2, 1)
    );
    // Pod to pod inside the cluster network: not masqueraded.
    assert_eq!(
        seen_source(&remote.name, &pod.name, remote_ip, 18003),
        pod_ip
    );
    // Outside to this node's pods: not masqueraded.
    assert_eq!(
        seen_source(&pod.name, &outside.name, pod_ip, 18004),
        outside_ip
    );
    // Outside to another node's pods: masqueraded (replies must come back through us).
    assert_eq!(
        seen_source(&remote.name, &outside.name, remote_ip, 18005),
        Ipv4Addr::new(10, 244, 5, 1)
    );
}
