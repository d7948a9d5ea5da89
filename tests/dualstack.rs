//! IPv6 and dual stack in Flannel's formats, on real etcd, real network namespaces and real
//! kernel devices: dual-stack pods on three nodes, an IPv6-only cluster on an IPv6 underlay,
//! and a Flannel-format dual-stack node built by hand that weft nodes interoperate with.
//!
//! IPv6 addresses go through duplicate address detection; inside the test namespaces only,
//! `accept_dad` is off so an address is usable at once (never in the root namespace).

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::*;

/// 10.244.0.0/16 and fd00:10:244::/48; nodes lease from the 100..199 ranges of both, so the
/// hand-built Flannel node's subnets (…99…) can never be a weft node's.
const DUAL_CONFIG: &str = r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.100.0","SubnetMax":"10.244.199.0","EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","IPv6SubnetMin":"fd00:10:244:100::","IPv6SubnetMax":"fd00:10:244:199::","Backend":{"Type":"vxlan"}}"#;

/// IPv6 only: no `Network` at all, as Flannel accepts it with `EnableIPv4: false`.
const V6_ONLY_CONFIG: &str = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:20::/48","Backend":{"Type":"vxlan"}}"#;

const CONVERGE: Duration = Duration::from_secs(30);

/// Flannel's `subnetRegex` (pkg/subnet/subnet.go), which flanneld parses lease keys with.
const FLANNEL_SUBNET_REGEX: &str = r"(\d+\.\d+.\d+.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$";

/// Node `i`'s IPv6 underlay address on the same `eth0` as its IPv4 one.
fn v6_of(node: &Node) -> String {
    format!("2001:db8::{}", 10 + node.index())
}

/// Gives every node (and the underlay bridge) IPv6 on the underlay, 2001:db8::/64.
fn ipv6_underlay(cluster: &Cluster) {
    cluster.underlay.netns().no_dad();
    for node in &cluster.nodes {
        node.netns().no_dad();
        node.netns().ip(&[
            "addr",
            "add",
            &format!("{}/64", v6_of(node)),
            "dev",
            "eth0",
            "nodad",
        ]);
    }
}

/// The value of `key` in a subnet.env text.
fn env_var(env: &str, key: &str) -> Option<String> {
    env.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
}

/// A pod wired by hand into a node's `cni0`, with an IPv4 and/or an IPv6 address.
struct TestPod {
    ns: Netns,
    ip4: Option<String>,
    ip6: Option<String>,
}

/// Adds a pod to the node whose subnet.env (or hand-made gateways) are `gw4`
/// (`10.244.3.1/24`) and `gw6` (`fd00:…::1/64`): addresses `.(10+k)` / `::(10+k)`, default
/// routes via the gateways.
fn add_pod(node: &Netns, k: u32, gw4: Option<&str>, gw6: Option<&str>, mtu: u32) -> TestPod {
    let ns = Netns::new(&format!("p{k}"));
    ns.no_dad();
    let host_veth = format!("vp{k}");
    let mut ip4 = None;
    let mut ip6 = None;
    let first = match (gw4, gw6) {
        (Some(gw), _) => {
            let net: ipnetwork::Ipv4Network = gw.parse().expect("IPv4 gateway");
            let ip = std::net::Ipv4Addr::from(u32::from(net.network()) + 10 + k);
            ip4 = Some(ip.to_string());
            (gw, format!("{ip}/{}", net.prefix()))
        }
        (None, Some(gw)) => {
            let net: ipnetwork::Ipv6Network = gw.parse().expect("IPv6 gateway");
            let ip = std::net::Ipv6Addr::from(u128::from(net.network()) + 10 + u128::from(k));
            ip6 = Some(ip.to_string());
            (gw, format!("{ip}/{}", net.prefix()))
        }
        (None, None) => panic!("add_pod: no gateway"),
    };
    // The node's bridge gets no DAD either (it may be created right here).
    node.no_dad();
    wire_pod(node, &ns, &host_veth, first.0, &first.1, mtu);
    if let (Some(_), Some(gw)) = (gw4, gw6) {
        let net: ipnetwork::Ipv6Network = gw.parse().expect("IPv6 gateway");
        let ip = std::net::Ipv6Addr::from(u128::from(net.network()) + 10 + u128::from(k));
        let has_gw = node
            .ip(&["-6", "addr", "show", "dev", "cni0"])
            .contains(&net.ip().to_string());
        if !has_gw {
            node.ip(&["addr", "add", gw, "dev", "cni0", "nodad"]);
        }
        ns.ip(&[
            "addr",
            "add",
            &format!("{ip}/{}", net.prefix()),
            "dev",
            "eth0",
            "nodad",
        ]);
        ns.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &net.ip().to_string(),
        ]);
        ip6 = Some(ip.to_string());
    }
    TestPod { ns, ip4, ip6 }
}

/// A dual-stack (or IPv6-only) pod on a weft node, from its subnet.env.
fn add_weft_pod(node: &Node, k: u32) -> TestPod {
    let env = node.wait_subnet_env(CONVERGE);
    let mtu = env_var(&env, "FLANNEL_MTU")
        .and_then(|m| m.parse().ok())
        .expect("FLANNEL_MTU");
    add_pod(
        node.netns(),
        k,
        env_var(&env, "FLANNEL_SUBNET").as_deref(),
        env_var(&env, "FLANNEL_IPV6_SUBNET").as_deref(),
        mtu,
    )
}

/// True if a TCP connection from `from` to `ip` (a listener in `to`) carries a message both
/// ways within 3 s.
fn tcp_ok(from: &Netns, to: &Netns, ip: &str) -> bool {
    let ip: IpAddr = ip.parse().expect("pod address");
    let listener = to
        .run(|| TcpListener::bind((ip, 0)))
        .unwrap_or_else(|e| panic!("bind {ip} in {}: {e}", to.name()));
    let port = listener.local_addr().expect("listener address").port();
    let server = std::thread::spawn(move || {
        listener.set_nonblocking(true).ok()?;
        let start = Instant::now();
        let mut stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(_) if start.elapsed() < Duration::from_secs(3) => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(_) => return None,
            }
        };
        stream.set_nonblocking(false).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).ok()?;
        stream.write_all(&buf[..n]).ok()
    });
    let target = SocketAddr::from((ip, port));
    let msg = b"weft-dual-stack";
    let client = from.run(|| -> Option<Vec<u8>> {
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        s.write_all(msg).ok()?;
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).ok()?;
        Some(got)
    });
    let served = server.join().ok().flatten().is_some();
    served && client.as_deref() == Some(&msg[..])
}

/// Asserts TCP both ways between every two pods, over each family both have.
fn assert_mesh(pods: &[TestPod], what: &dyn Fn() -> String) {
    for a in pods {
        for b in pods {
            if a.ns.name() == b.ns.name() {
                continue;
            }
            for ip in [&b.ip4, &b.ip6].into_iter().flatten() {
                let ok = tcp_ok(&a.ns, &b.ns, ip);
                assert!(
                    ok,
                    "TCP {} -> {ip} ({})\n{}",
                    a.ns.name(),
                    b.ns.name(),
                    what()
                );
            }
        }
    }
}

/// Waits until a TCP connection from `a` to `ip` in `b` works (the mesh converging).
fn wait_tcp(a: &TestPod, b: &TestPod, ip: &str, what: &dyn Fn() -> String) {
    let start = Instant::now();
    while !tcp_ok(&a.ns, &b.ns, ip) {
        assert!(
            start.elapsed() < CONVERGE,
            "TCP {} -> {ip} never worked\n{}",
            a.ns.name(),
            what()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A pod on every node of `cluster`, in node order.
fn pod_per_node(cluster: &Cluster) -> Vec<TestPod> {
    cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(k, n)| add_weft_pod(n, k as u32))
        .collect()
}

/// A pod on every node of `cluster` (in node order), once pod 1 reaches each address of
/// pod 2 and then every pod reaches every other pod's addresses (the mesh converged).
fn pods_in_mesh(cluster: &Cluster) -> Vec<TestPod> {
    let pods = pod_per_node(cluster);
    let dump = || cluster.dump();
    for ip in [&pods[1].ip4, &pods[1].ip6].into_iter().flatten() {
        wait_tcp(&pods[0], &pods[1], ip, &dump);
    }
    assert_mesh(&pods, &dump);
    pods
}

/// The keys and values under `<prefix>/subnets/`.
fn leases(etcd: &Etcd) -> Vec<(String, serde_json::Value)> {
    etcd.get_prefix(&format!("{ETCD_PREFIX}/subnets/"))
        .into_iter()
        .map(|(k, v)| {
            let v = serde_json::from_str(&v).unwrap_or_else(|e| panic!("lease {k} = {v}: {e}"));
            (k, v)
        })
        .collect()
}

#[test]
fn dual_stack_pods_on_three_nodes_talk_tcp_over_ipv4_and_ipv6_both_ways() {
    let cluster = Cluster::new(3, DUAL_CONFIG);
    ipv6_underlay(&cluster);
    cluster.start();
    let re = regex::Regex::new(FLANNEL_SUBNET_REGEX).expect("Flannel's regex");
    for node in &cluster.nodes {
        let env = node.wait_subnet_env(CONVERGE);
        let names: Vec<&str> = env
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .collect();
        assert_eq!(
            names,
            [
                "FLANNEL_NETWORK",
                "FLANNEL_SUBNET",
                "FLANNEL_IPV6_NETWORK",
                "FLANNEL_IPV6_SUBNET",
                "FLANNEL_MTU",
                "FLANNEL_IPMASQ"
            ],
            "{env}"
        );
        assert_eq!(
            env_var(&env, "FLANNEL_IPV6_NETWORK").as_deref(),
            Some("fd00:10:244::/48")
        );
        let sn6 = env_var(&env, "FLANNEL_IPV6_SUBNET").unwrap_or_default();
        assert!(
            sn6.starts_with("fd00:10:244:1") && sn6.ends_with("::1/64"),
            "{env}"
        );
        // The pods' MTU fits the IPv6 tunnel (1500 - 70).
        assert_eq!(env_var(&env, "FLANNEL_MTU").as_deref(), Some("1430"));
        assert!(node.link("flannel-v6.1").is_some(), "no flannel-v6.1");
    }
    // Every lease is Flannel's dual-stack key with PublicIPv6 and BackendV6Data.
    let all = leases(&cluster.etcd);
    assert_eq!(all.len(), 3, "{all:?}");
    for (key, value) in &all {
        let caps = re.captures(key).unwrap_or_else(|| panic!("{key}"));
        assert_eq!(&caps[4], "64", "{key}");
        let public6 = value["PublicIPv6"].as_str().unwrap_or_default();
        assert!(public6.starts_with("2001:db8::1"), "{key} = {value}");
        assert_eq!(value["BackendV6Data"]["VNI"], 1, "{key} = {value}");
        assert!(value["BackendV6Data"]["VtepMAC"].is_string(), "{value}");
    }
    let pods = pods_in_mesh(&cluster);
    // Flannel's IPv6 entries: route X:: /64 via X:: dev flannel-v6.1 onlink, weft's protocol.
    let n0 = cluster.node(0);
    let routes6 = n0
        .netns()
        .ip(&["-6", "route", "show", "dev", "flannel-v6.1"]);
    let peer6 = pods[1].ip6.as_deref().unwrap_or_default();
    let peer_net = format!("{}::/64", &peer6[..peer6.rfind("::").unwrap_or(0)]);
    assert!(
        routes6.contains(&format!(
            "{peer_net} via {} proto 87 metric 1024 onlink",
            peer_net.trim_end_matches("/64")
        )),
        "{routes6}"
    );
}

#[test]
fn ipv6_only_cluster_on_an_ipv6_underlay() {
    let cluster = Cluster::new(2, V6_ONLY_CONFIG);
    ipv6_underlay(&cluster);
    cluster.start();
    let re = regex::Regex::new(FLANNEL_SUBNET_REGEX).expect("Flannel's regex");
    for node in &cluster.nodes {
        let env = node.wait_subnet_env(CONVERGE);
        assert!(
            env.starts_with("FLANNEL_IPV6_NETWORK=fd00:20::/48\nFLANNEL_IPV6_SUBNET=fd00:20:0:"),
            "{env}"
        );
        assert!(
            env.ends_with("::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n"),
            "{env}"
        );
        assert!(
            node.link("flannel.1").is_none(),
            "an IPv6-only node has no flannel.1"
        );
        assert!(node.link("flannel-v6.1").is_some(), "no flannel-v6.1");
    }
    for (key, value) in leases(&cluster.etcd) {
        assert!(key.contains("/subnets/0.0.0.0-0&fd00:20:0:"), "{key}");
        assert!(re.is_match(&key), "{key}");
        assert_eq!(value["PublicIP"], "0.0.0.0", "{value}");
        assert!(value.get("BackendData").is_none(), "{value}");
        assert!(value["PublicIPv6"]
            .as_str()
            .unwrap_or_default()
            .starts_with("2001:db8::1"));
    }
    let pods = pods_in_mesh(&cluster);
    assert!(pods.iter().all(|p| p.ip4.is_none()));
    let dump = || cluster.dump();
    // The overlay's remote VTEPs are IPv6 underlay addresses.
    let fdb = cluster.node(0).fdb();
    let dsts: Vec<&str> = fdb
        .iter()
        .filter(|f| f["ifname"] == "flannel-v6.1")
        .filter_map(|f| f["dst"].as_str())
        .collect();
    assert_eq!(dsts, [v6_of(cluster.node(1))], "{fdb:?}");

    // The CNI plugin wires an IPv6-only pod from the IPv6-only subnet.env.
    let node = cluster.node(0);
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "weft",
        "type": "weft",
        "subnetFile": node.subnet_file(),
        "dataDir": node.dir().join("cni-networks"),
    });
    let cni_pod = Netns::new("cni6pod");
    let (ok, out) = cni(node.netns(), "ADD", "v6only", Some(&cni_pod), &conf);
    assert!(ok, "ADD on an IPv6-only node: {out}");
    let result: serde_json::Value = serde_json::from_str(&out).expect("ADD result");
    let ips = result["ips"].as_array().cloned().unwrap_or_default();
    assert_eq!(ips.len(), 1, "{result}");
    let addr = ips[0]["address"].as_str().unwrap_or_default();
    assert!(
        addr.starts_with("fd00:20:0:") && addr.ends_with("/64"),
        "{result}"
    );
    let cni_pod = TestPod {
        ns: cni_pod,
        ip4: None,
        ip6: Some(addr.trim_end_matches("/64").to_string()),
    };
    let far = &pods[1];
    assert!(
        tcp_ok(&cni_pod.ns, &far.ns, far.ip6.as_deref().unwrap_or_default()),
        "CNI pod -> remote pod\n{}",
        dump()
    );
    assert!(
        tcp_ok(
            &far.ns,
            &cni_pod.ns,
            cni_pod.ip6.as_deref().unwrap_or_default()
        ),
        "remote pod -> CNI pod\n{}",
        dump()
    );
}

#[test]
fn flannel_format_dual_stack_node_built_by_hand_interoperates() {
    let cluster = Cluster::new(1, DUAL_CONFIG);
    ipv6_underlay(&cluster);
    cluster.start();
    let weft = cluster.node(0);

    // The Flannel node, set up as flanneld sets itself up (device names, attributes,
    // addresses), at 192.0.2.99 / 2001:db8::99 with 10.244.99.0/24 and fd00:10:244:99::/64.
    let fl = Netns::new("flannel");
    fl.no_dad();
    cluster.underlay.attach(&fl, "192.0.2.99");
    fl.no_dad();
    fl.ip(&["addr", "add", "2001:db8::99/64", "dev", "eth0", "nodad"]);
    fl.sysctl("net.ipv4.ip_forward", "1");
    fl.sysctl("net.ipv6.conf.all.forwarding", "1");
    let (mac4, mac6) = ("aa:bb:cc:dd:ee:99", "aa:bb:cc:dd:e6:99");
    for (dev, local, mac) in [
        ("flannel.1", "192.0.2.99", mac4),
        ("flannel-v6.1", "2001:db8::99", mac6),
    ] {
        fl.ip(&[
            "link",
            "add",
            dev,
            "address",
            mac,
            "mtu",
            "1450",
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            local,
            "dev",
            "eth0",
            "dstport",
            "8472",
            "nolearning",
        ]);
        fl.ip(&["link", "set", dev, "up"]);
    }
    fl.ip(&["addr", "add", "10.244.99.0/32", "dev", "flannel.1"]);
    fl.ip(&[
        "addr",
        "add",
        "fd00:10:244:99::/128",
        "dev",
        "flannel-v6.1",
        "nodad",
    ]);
    // flanneld's lease, byte for byte as its json.Marshal of LeaseAttrs writes it.
    cluster.etcd.put_with_ttl(
        &format!("{ETCD_PREFIX}/subnets/10.244.99.0-24&fd00:10:244:99::-64"),
        &format!(
            r#"{{"PublicIP":"192.0.2.99","PublicIPv6":"2001:db8::99","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac4}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"{mac6}"}}}}"#
        ),
        3600,
    );

    // What flanneld programs for weft's lease, read as flanneld reads it: the key through
    // Flannel's regex, the value through its LeaseAttrs field names.
    let re = regex::Regex::new(FLANNEL_SUBNET_REGEX).expect("Flannel's regex");
    let (key, value) = leases(&cluster.etcd)
        .into_iter()
        .find(|(k, _)| !k.contains("10.244.99.0"))
        .expect("weft's lease");
    let caps = re.captures(&key).unwrap_or_else(|| panic!("{key}"));
    let (sn4, len4, sn6, len6) = (&caps[1], &caps[2], &caps[3], &caps[4]);
    let field = |path: &[&str]| -> String {
        let mut v = &value;
        for p in path {
            v = &v[*p];
        }
        v.as_str()
            .unwrap_or_else(|| panic!("{path:?} in {value}"))
            .to_string()
    };
    let (ip4, ip6) = (field(&["PublicIP"]), field(&["PublicIPv6"]));
    let (vtep4, vtep6) = (
        field(&["BackendData", "VtepMAC"]),
        field(&["BackendV6Data", "VtepMAC"]),
    );
    fl.ip(&[
        "neigh",
        "replace",
        sn4,
        "lladdr",
        &vtep4,
        "dev",
        "flannel.1",
        "nud",
        "permanent",
    ]);
    fl.exec_ok(&[
        "bridge",
        "fdb",
        "append",
        &vtep4,
        "dev",
        "flannel.1",
        "dst",
        &ip4,
    ]);
    fl.ip(&[
        "route",
        "replace",
        &format!("{sn4}/{len4}"),
        "via",
        sn4,
        "dev",
        "flannel.1",
        "onlink",
    ]);
    fl.ip(&[
        "-6",
        "neigh",
        "replace",
        sn6,
        "lladdr",
        &vtep6,
        "dev",
        "flannel-v6.1",
        "nud",
        "permanent",
    ]);
    fl.exec_ok(&[
        "bridge",
        "fdb",
        "append",
        &vtep6,
        "dev",
        "flannel-v6.1",
        "dst",
        &ip6,
    ]);
    fl.ip(&[
        "-6",
        "route",
        "replace",
        &format!("{sn6}/{len6}"),
        "via",
        sn6,
        "dev",
        "flannel-v6.1",
        "onlink",
    ]);

    let theirs = add_pod(
        &fl,
        50,
        Some("10.244.99.1/24"),
        Some("fd00:10:244:99::1/64"),
        1450,
    );
    let ours = add_weft_pod(weft, 0);
    let dump = || {
        format!(
            "{}\nflannel node:\n{}",
            cluster.dump(),
            fl.ip(&["-d", "link"])
        )
    };
    for ip in [&theirs.ip4, &theirs.ip6].into_iter().flatten() {
        wait_tcp(&ours, &theirs, ip, &dump);
    }
    assert_mesh(&[ours, theirs], &dump);
}

/// Runs the weft CNI plugin in `node` with `conf` on stdin; (success, stdout).
fn cni(
    node: &Netns,
    command: &str,
    container: &str,
    pod: Option<&Netns>,
    conf: &serde_json::Value,
) -> (bool, String) {
    let mut cmd = node.command(bin_path("weft"));
    cmd.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .env_remove("CNI_ARGS")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    match pod {
        Some(pod) => cmd.env("CNI_NETNS", pod.path()),
        None => cmd.env_remove("CNI_NETNS"),
    };
    let mut child = cmd.spawn().expect("spawn the weft plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes())
        .expect("write the plugin's stdin");
    let out = child.wait_with_output().expect("wait for the plugin");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The address files (`<ip>`) of an IPAM directory.
fn address_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn cni_plugin_wires_dual_stack_pods_and_del_check_gc_cover_both_families() {
    let cluster = Cluster::new(2, DUAL_CONFIG);
    ipv6_underlay(&cluster);
    cluster.start();
    let conf = |node: &Node| {
        serde_json::json!({
            "cniVersion": "1.1.0",
            "name": "weft",
            "type": "weft",
            "subnetFile": node.subnet_file(),
            "dataDir": node.dir().join("cni-networks"),
        })
    };
    let mut pods = Vec::new();
    for (k, node) in cluster.nodes.iter().enumerate() {
        let pod = Netns::new(&format!("cnipod{k}"));
        let (ok, out) = cni(
            node.netns(),
            "ADD",
            &format!("dual-{k}"),
            Some(&pod),
            &conf(node),
        );
        assert!(ok, "ADD on {}: {out}", node.name());
        let result: serde_json::Value = serde_json::from_str(&out).expect("ADD result");
        let ips: Vec<String> = result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["address"].as_str().map(str::to_string))
            .collect();
        assert_eq!(ips.len(), 2, "one address per family: {result}");
        let env = node.wait_subnet_env(CONVERGE);
        let gw6 = env_var(&env, "FLANNEL_IPV6_SUBNET").unwrap_or_default();
        let gw6 = gw6.trim_end_matches("/64");
        assert!(ips[1].ends_with("/64") && ips[1].contains(':'), "{result}");
        assert_eq!(result["ips"][1]["gateway"], gw6, "{result}");
        let routes = result["routes"].to_string();
        assert!(
            routes.contains(&format!(r#"{{"dst":"fd00:10:244::/48","gw":"{gw6}"}}"#)),
            "{routes}"
        );
        // Unsolicited neighbour advertisements when the interface comes up.
        assert_eq!(
            pod.exec_ok(&["sysctl", "-n", "net.ipv6.conf.eth0.ndisc_notify"])
                .trim(),
            "1"
        );
        let strip = |a: &str| a.split('/').next().unwrap_or_default().to_string();
        pods.push((
            TestPod {
                ns: pod,
                ip4: Some(strip(&ips[0])),
                ip6: Some(strip(&ips[1])),
            },
            result,
        ));
    }
    let dump = || cluster.dump();
    let (a, b) = (&pods[0].0, &pods[1].0);
    wait_tcp(a, b, b.ip6.as_deref().unwrap_or_default(), &dump);
    for (from, to) in [(a, b), (b, a)] {
        for ip in [&to.ip4, &to.ip6].into_iter().flatten() {
            assert!(tcp_ok(&from.ns, &to.ns, ip), "TCP -> {ip}\n{}", dump());
        }
    }

    // CHECK passes, and fails once the IPv6 address is gone from the pod.
    let node = cluster.node(0);
    let (pod, result) = &pods[0];
    let ipam_dir = node.dir().join("cni-networks").join("weft");
    let files = address_files(&ipam_dir);
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files.contains(pod.ip6.as_ref().expect("ip6")), "{files:?}");
    assert!(ipam_dir.join("last_reserved_ip.1").exists());
    let mut with_prev = conf(node);
    with_prev["prevResult"] = result.clone();
    let (ok, out) = cni(node.netns(), "CHECK", "dual-0", Some(&pod.ns), &with_prev);
    assert!(ok, "CHECK: {out}");
    let addr6 = result["ips"][1]["address"].as_str().unwrap_or_default();
    pod.ns.ip(&["addr", "del", addr6, "dev", "eth0"]);
    let (ok, out) = cni(node.netns(), "CHECK", "dual-0", Some(&pod.ns), &with_prev);
    assert!(
        !ok && out.contains(addr6),
        "CHECK must name the missing {addr6}: {out}"
    );
    // DEL releases both families.
    let (ok, out) = cni(node.netns(), "DEL", "dual-0", Some(&pod.ns), &with_prev);
    assert!(ok, "DEL: {out}");
    assert!(
        address_files(&ipam_dir).is_empty(),
        "{:?}",
        address_files(&ipam_dir)
    );
    // GC releases both families of an attachment no runtime names.
    let orphan = Netns::new("orphan");
    let (ok, out) = cni(node.netns(), "ADD", "orphan", Some(&orphan), &conf(node));
    assert!(ok, "ADD: {out}");
    assert_eq!(address_files(&ipam_dir).len(), 2);
    let mut gc = conf(node);
    gc["cni.dev/valid-attachments"] = serde_json::json!([]);
    let (ok, out) = cni(node.netns(), "GC", "", None, &gc);
    assert!(ok, "GC: {out}");
    assert!(
        address_files(&ipam_dir).is_empty(),
        "{:?}",
        address_files(&ipam_dir)
    );
}

/// The route guard of the trust issue for IPv6: a lease whose IPv6 subnet would cover this
/// node's IPv6 underlay (valid for validation: inside an `IPv6Network` that contains the
/// underlay) is refused whole, while a harmless peer next to it is programmed.
#[test]
fn ipv6_route_over_the_underlay_is_refused_by_the_guard() {
    let config = r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.100.0","SubnetMax":"10.244.199.0","EnableIPv6":true,"IPv6Network":"2001:db8::/48","IPv6SubnetMin":"2001:db8:0:100::","Backend":{"Type":"vxlan"}}"#;
    let cluster = Cluster::new(1, config);
    ipv6_underlay(&cluster);
    cluster.start();
    let node = cluster.node(0);
    let value = |ip: &str, ip6: &str, n: u32| {
        format!(
            r#"{{"PublicIP":"{ip}","PublicIPv6":"{ip6}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:{n}"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"aa:bb:cc:dd:e6:{n}"}}}}"#
        )
    };
    cluster.etcd.put_with_ttl(
        &format!("{ETCD_PREFIX}/subnets/10.244.98.0-24&2001:db8::-64"),
        &value("192.0.2.98", "2001:db8:1::98", 98),
        3600,
    );
    cluster.etcd.put_with_ttl(
        &format!("{ETCD_PREFIX}/subnets/10.244.97.0-24&2001:db8:0:97::-64"),
        &value("192.0.2.97", "2001:db8:1::97", 97),
        3600,
    );
    let routes6 = || node.netns().ip(&["-6", "route", "show", "proto", "87"]);
    node.wait_until(CONVERGE, "the harmless peer's IPv6 route", || {
        routes6().contains("2001:db8:0:97::/64 via 2001:db8:0:97:: dev flannel-v6.1")
    });
    node.wait_until(CONVERGE, "the guard's refusal in the log", || {
        node.log().contains("route refused by the guard")
    });
    let routes = routes6();
    assert!(!routes.contains("2001:db8::/64 via"), "{routes}");
    assert!(
        node.route_to("10.244.98.0/24").is_none(),
        "the refused lease gets no IPv4 route either"
    );
    assert!(
        node.log().contains("route to 2001:db8::/64 overlaps"),
        "{}",
        node.log_tail(20)
    );
    // The node still reaches its IPv6 underlay neighbour.
    let ping = node
        .netns()
        .exec(&["ping", "-6", "-c", "1", "-W", "2", "2001:db8::11"]);
    assert!(ping.status.success(), "own underlay address unreachable");
}

/// `--ip-masq` with IPv6: a pod's connection to an address outside the cluster leaves with the
/// node's IPv6 address (Flannel's `ip6` masquerade rules in `table ip6 weft`), and the rules go
/// with weftd.
#[test]
fn ipv6_pod_egress_is_masqueraded_with_ip_masq() {
    let cluster = Cluster::new(1, DUAL_CONFIG);
    ipv6_underlay(&cluster);
    let node = cluster.node(0);
    node.start_weftd(&["--ip-masq"]);
    node.wait_subnet_env(CONVERGE);
    let ruleset = node.nft_ruleset();
    assert!(ruleset.contains("table ip6 weft"), "{ruleset}");
    // A host outside the cluster, on the underlay only.
    let outside = Netns::new("outside");
    outside.no_dad();
    cluster.underlay.attach(&outside, "192.0.2.200");
    outside.no_dad();
    outside.ip(&["addr", "add", "2001:db8::c8/64", "dev", "eth0", "nodad"]);
    let pod = add_weft_pod(node, 0);
    let listener = outside
        .run(|| TcpListener::bind(("2001:db8::c8", 0)))
        .expect("bind outside");
    let port = listener.local_addr().expect("listener address").port();
    let seen = std::thread::spawn(move || {
        listener.set_nonblocking(true).ok()?;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok((_, peer)) = listener.accept() {
                return Some(peer.ip());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    });
    let target: SocketAddr = format!("[2001:db8::c8]:{port}").parse().expect("target");
    let connected = pod
        .ns
        .run(|| TcpStream::connect_timeout(&target, Duration::from_secs(5)))
        .is_ok();
    let source = seen.join().ok().flatten();
    assert!(connected, "pod could not reach the outside host\n{ruleset}");
    assert_eq!(
        source,
        Some(v6_of(node).parse::<IpAddr>().expect("node address")),
        "the outside host must see the node's IPv6 address"
    );
    node.stop();
    assert!(
        !node.nft_ruleset().contains("table ip6 weft"),
        "table ip6 weft left after shutdown"
    );
}

/// `--public-ipv6` picks the `PublicIPv6` a node publishes among its interface's IPv6
/// addresses, as flanneld's does; the IPv6 tunnel runs from that address.
#[test]
fn public_ipv6_flag_picks_the_published_ipv6_address() {
    let cluster = Cluster::new(1, DUAL_CONFIG);
    ipv6_underlay(&cluster);
    let node = cluster.node(0);
    node.netns()
        .ip(&["addr", "add", "2001:db8::111/64", "dev", "eth0", "nodad"]);
    node.start_weftd(&["--public-ipv6", "2001:db8::111"]);
    node.wait_subnet_env(CONVERGE);
    let all = leases(&cluster.etcd);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].1["PublicIPv6"], "2001:db8::111", "{:?}", all[0]);
    let link = node.netns().ip(&["-d", "link", "show", "flannel-v6.1"]);
    assert!(link.contains("local 2001:db8::111 "), "{link}");
    // Without the flag, the interface's (first routable) IPv6 address is published.
    node.stop();
    cluster.etcd.del(&all[0].0);
    node.netns()
        .ip(&["addr", "del", "2001:db8::111/64", "dev", "eth0"]);
    node.start_weftd(&[]);
    node.wait_until(CONVERGE, "a lease published again", || {
        leases(&cluster.etcd).len() == 1
    });
    let again = leases(&cluster.etcd);
    assert_eq!(again[0].1["PublicIPv6"], v6_of(node), "{again:?}");
}

/// Sends `bytes` bytes over TCP from `from` to `ip` (a listener in `to`); true when every byte
/// arrives in order (10 s budget). Large writes make the kernel hand super-packets (GSO) to
/// the data path.
fn bulk_ok(from: &Netns, to: &Netns, ip: &str, bytes: usize) -> bool {
    let ip: IpAddr = ip.parse().expect("pod address");
    let listener = to
        .run(|| TcpListener::bind((ip, 0)))
        .unwrap_or_else(|e| panic!("bind {ip} in {}: {e}", to.name()));
    let port = listener.local_addr().expect("listener address").port();
    let pattern = |i: usize| (i % 251) as u8;
    let server = std::thread::spawn(move || -> Option<usize> {
        let (mut stream, _) = listener.accept().ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok()?;
        let mut got = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return Some(got),
                Ok(n) => {
                    if buf[..n]
                        .iter()
                        .enumerate()
                        .any(|(k, b)| *b != pattern(got + k))
                    {
                        return None;
                    }
                    got += n;
                }
                Err(_) => return None,
            }
        }
    });
    let target = SocketAddr::from((ip, port));
    let data: Vec<u8> = (0..bytes).map(pattern).collect();
    let sent = from.run(|| -> Option<()> {
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3)).ok()?;
        s.set_write_timeout(Some(Duration::from_secs(10))).ok()?;
        s.write_all(&data).ok()
    });
    sent.is_some() && server.join().ok().flatten() == Some(bytes)
}

/// The udp backend carries IPv6 pods over its IPv4 underlay (`flannel0`): short and bulk TCP
/// both ways, with and without the TUN/UDP offloads.
#[test]
fn udp_backend_carries_ipv6_pods() {
    let config = DUAL_CONFIG.replace(r#""Type":"vxlan""#, r#""Type":"udp""#);
    for offloads in [true, false] {
        let cluster = Cluster::new(2, &config);
        ipv6_underlay(&cluster);
        for node in &cluster.nodes {
            let args: &[&str] = if offloads {
                &[]
            } else {
                &["--no-udp-offloads"]
            };
            node.start_weftd(args);
        }
        let pods = pods_in_mesh(&cluster);
        let dump = || cluster.dump();
        for (a, b) in [(&pods[0], &pods[1]), (&pods[1], &pods[0])] {
            let ip6 = b.ip6.as_deref().unwrap_or_default();
            assert!(
                bulk_ok(&a.ns, &b.ns, ip6, 4 << 20),
                "bulk TCP over IPv6 -> {ip6} (offloads {offloads})\n{}",
                dump()
            );
        }
        // Super-packets of hundreds of IPv6 segments (a tiny MSS) go out whole. (Without
        // offloads there are no super-packets: each tiny segment is a read of its own, and
        // flannel0's queue overflowing at that rate is congestion TCP recovers from.)
        if offloads {
            let ip6 = pods[1].ip6.as_deref().unwrap_or_default();
            tiny_mss_transfer(&pods[0].ns, &pods[1].ns, ip6, 4 << 20, 88)
                .assert_whole("udp over IPv6");
        }
    }
}

/// host-gw routes each peer's IPv6 subnet via its PublicIPv6 on the shared segment, as
/// Flannel's host-gw does; pods talk over both families.
#[test]
fn host_gw_routes_ipv6_pods_via_public_ipv6() {
    let config = DUAL_CONFIG.replace(r#""Type":"vxlan""#, r#""Type":"host-gw""#);
    let cluster = Cluster::new(2, &config);
    ipv6_underlay(&cluster);
    cluster.start();
    let pods = pods_in_mesh(&cluster);
    let peer6 = pods[1].ip6.as_deref().unwrap_or_default();
    let peer_net = format!("{}::/64", &peer6[..peer6.rfind("::").unwrap_or(0)]);
    let routes6 = cluster
        .node(0)
        .netns()
        .ip(&["-6", "route", "show", "proto", "87"]);
    assert!(
        routes6.contains(&format!(
            "{peer_net} via {} dev eth0",
            v6_of(cluster.node(1))
        )),
        "{routes6}"
    );
}

/// A node whose lease is gone (expired while weftd was down) asks for the subnets of its
/// subnet.env again, IPv6 included, so its pods keep both addresses.
#[test]
fn restarted_node_without_its_lease_gets_both_previous_subnets() {
    let cluster = Cluster::new(1, DUAL_CONFIG);
    ipv6_underlay(&cluster);
    cluster.start();
    let node = cluster.node(0);
    let before = leases(&cluster.etcd);
    assert_eq!(before.len(), 1);
    node.stop();
    assert!(cluster.etcd.del(&before[0].0));
    node.start_weftd(&[]);
    node.wait_until(CONVERGE, "a lease again", || {
        leases(&cluster.etcd).len() == 1
    });
    let after = leases(&cluster.etcd);
    assert_eq!(after[0].0, before[0].0, "the same dual-stack key");
}

/// `DUAL_CONFIG` with the wireguard backend and `extra` backend keys (e.g. `,"Mode":"ipv6"`).
fn wireguard_config(base: &str, extra: &str) -> String {
    base.replace(
        r#""Type":"vxlan""#,
        &format!(r#""Type":"wireguard"{extra}"#),
    )
}

/// Sent in the clear between two pods; must never show on the underlay.
const MARKER: &[u8] = b"weft-plaintext-marker-v6-5d2e81c0";

/// Sends 200 markers over TCP from `from` to `ip` (a listener in `to`); true when they all
/// arrive.
fn markers_ok(from: &Netns, to: &Netns, ip: &str) -> bool {
    let ip: IpAddr = ip.parse().expect("pod address");
    let listener = to
        .run(|| TcpListener::bind((ip, 0)))
        .unwrap_or_else(|e| panic!("bind {ip} in {}: {e}", to.name()));
    let port = listener.local_addr().expect("listener address").port();
    let payload: Vec<u8> = MARKER.repeat(200);
    let server = std::thread::spawn(move || -> Option<Vec<u8>> {
        let (mut s, _) = listener.accept().ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut got = Vec::new();
        s.read_to_end(&mut got).ok()?;
        Some(got)
    });
    let target = SocketAddr::from((ip, port));
    let sent = from.run(|| -> Option<()> {
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3)).ok()?;
        s.write_all(&payload).ok()
    });
    sent.is_some() && server.join().ok().flatten().as_deref() == Some(&payload[..])
}

/// Asserts that every captured packet is WireGuard: UDP of `family` (`IP` or `IP6`) from
/// `port` to `port`, and that the plaintext marker never crossed the underlay.
fn assert_only_wireguard(raw: &[u8], lines: &[String], family: &str, port: u16) {
    assert!(lines.len() >= 4, "the capture saw the traffic: {lines:?}");
    assert!(
        !raw.windows(MARKER.len()).any(|w| w == MARKER),
        "the plaintext marker crossed the underlay"
    );
    for line in lines {
        let ok = line.contains(&format!(" {family} "))
            && line.contains(" UDP, ")
            && line.matches(&format!(".{port} ")).count()
                + line.matches(&format!(".{port}:")).count()
                == 2;
        assert!(ok, "not WireGuard {family} UDP {port} <-> {port}: {line}");
    }
}

/// The lease key and value of `node` (found by its PublicIPv6) as etcd holds them, and its
/// WireGuard public key.
fn wireguard_lease(cluster: &Cluster, node: &Node) -> (String, String, String) {
    let want = v6_of(node);
    let (key, value) = cluster
        .etcd
        .get_prefix(&format!("{ETCD_PREFIX}/subnets/"))
        .into_iter()
        .find(|(_, v)| v.contains(&format!(r#""PublicIPv6":"{want}""#)))
        .unwrap_or_else(|| panic!("no lease with PublicIPv6 {want}"));
    let v: serde_json::Value = serde_json::from_str(&value).expect("lease is JSON");
    let public_key = v["BackendV6Data"]["PublicKey"]
        .as_str()
        .unwrap_or_else(|| panic!("no BackendV6Data.PublicKey: {value}"))
        .to_string();
    (key, value, public_key)
}

/// The routes of `node` on `dev` for `family` (`-4` or `-6`), as `ip route` prints them.
fn routes_on(node: &Node, family: &str, dev: &str) -> String {
    node.netns().ip(&[family, "route", "show", "dev", dev])
}

/// WireGuard in a dual-stack network, `Mode: separate` (Flannel's default): `flannel-wg`
/// carries IPv4 over the IPv4 underlay on 51820, `flannel-wg-v6` IPv6 over the IPv6 underlay
/// on 51821; the lease has Flannel's `BackendData` and `BackendV6Data`; pods on three nodes
/// talk TCP over both families both ways, and the underlay carries only WireGuard UDP.
#[test]
fn wireguard_dual_stack_pods_talk_over_ipv4_and_ipv6_and_the_underlay_carries_only_ciphertext() {
    let cluster = Cluster::new(3, &wireguard_config(DUAL_CONFIG, ""));
    ipv6_underlay(&cluster);
    cluster.start();
    let re = regex::Regex::new(FLANNEL_SUBNET_REGEX).expect("Flannel's regex");
    for node in &cluster.nodes {
        let env = node.wait_subnet_env(CONVERGE);
        assert_eq!(
            env_var(&env, "FLANNEL_MTU").as_deref(),
            Some("1420"),
            "{env}"
        );
        let (lease_key, value, key) = wireguard_lease(&cluster, node);
        assert!(
            re.is_match(&lease_key) && lease_key.contains("-24&fd00:10:244:1"),
            "Flannel's dual-stack key: {lease_key}"
        );
        assert_eq!(
            value,
            format!(
                r#"{{"PublicIP":"{}","PublicIPv6":"{}","BackendType":"wireguard","BackendData":{{"PublicKey":"{key}","Port":51820}},"BackendV6Data":{{"PublicKey":"{key}","Port":51821}}}}"#,
                node.public_ip(),
                v6_of(node)
            ),
            "Flannel's lease, one key for both devices"
        );
        for dev in ["flannel-wg", "flannel-wg-v6"] {
            let link = node
                .link(dev)
                .unwrap_or_else(|| panic!("{dev} missing\n{}", node.log_tail(30)));
            assert_eq!(link["mtu"], 1420, "{dev}: {link}");
        }
        assert!(
            routes_on(node, "-4", "flannel-wg").contains("10.244.0.0/16"),
            "{}",
            routes_on(node, "-4", "flannel-wg")
        );
        let r6 = routes_on(node, "-6", "flannel-wg-v6");
        assert!(r6.contains("fd00:10:244::/48"), "{r6}");
        let sn6 = env_var(&env, "FLANNEL_IPV6_SUBNET").unwrap_or_default();
        let own6 = format!("{}/128", sn6.trim_end_matches("1/64"));
        let addrs = node
            .netns()
            .ip(&["-6", "addr", "show", "dev", "flannel-wg-v6"]);
        assert!(addrs.contains(&own6), "{own6} on flannel-wg-v6: {addrs}");
    }
    let pods = pods_in_mesh(&cluster);
    let dump = || cluster.dump();

    // Each family rides its own device and port, encrypted.
    for (filter, family, port, pick) in [
        ("ip and not igmp", "IP", 51820u16, 4),
        ("ip6 and not ip6 multicast and not icmp6", "IP6", 51821, 6),
    ] {
        let capture = Capture::start(
            &cluster.underlay,
            &format!("{filter} and not host {}", etcd_ip(&cluster)),
        );
        for (a, b) in [(&pods[0], &pods[1]), (&pods[2], &pods[0])] {
            let ip = if pick == 4 { &b.ip4 } else { &b.ip6 };
            let ip = ip.as_deref().unwrap_or_default();
            assert!(markers_ok(&a.ns, &b.ns, ip), "markers -> {ip}\n{}", dump());
            assert!(
                bulk_ok(&a.ns, &b.ns, ip, 4 << 20),
                "bulk TCP -> {ip}\n{}",
                dump()
            );
        }
        let (raw, lines) = capture.finish();
        assert_only_wireguard(&raw, &lines, family, port);
        // Super-packets of hundreds of tiny segments go out whole, on either device.
        let ip = if pick == 4 {
            &pods[1].ip4
        } else {
            &pods[1].ip6
        };
        let ip = ip.as_deref().unwrap_or_default();
        tiny_mss_transfer(&pods[0].ns, &pods[1].ns, ip, 4 << 20, 88)
            .assert_whole(&format!("wireguard over {family}"));
    }
}

/// The value of an unlabelled counter or gauge on the node's `/metrics`.
fn metric(node: &Node, name: &str) -> Option<f64> {
    let (_, text) = node.http_get("/metrics")?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// With IPv6 (dual stack and IPv6-only), a WireGuard node that joins is taken in by the
/// others incrementally, as in an IPv4 network: no full pass on the nodes already serving
/// (the periodic resync is 10 minutes away), and pods reach the new node's pod over every
/// family both ways.
#[test]
fn wireguard_with_ipv6_takes_a_joining_node_in_without_a_full_pass() {
    for (base, network) in [(DUAL_CONFIG, "dual stack"), (V6_ONLY_CONFIG, "IPv6-only")] {
        let cluster = Cluster::new(3, &wireguard_config(base, ""));
        ipv6_underlay(&cluster);
        let args = ["--resync-interval", "600"];
        for node in &cluster.nodes[..2] {
            node.start_weftd(&args);
        }
        for node in &cluster.nodes[..2] {
            node.wait_subnet_env(CONVERGE);
        }
        let full_runs = |n: &Node| metric(n, "weft_reconcile_full_runs_total");
        let n0 = cluster.node(0);
        // Node 1's lease may reach node 0 after node 0's first pass: wait for it to settle.
        n0.wait_until(CONVERGE, "node 0 sees node 1", || {
            metric(n0, "weft_peers_desired") == Some(1.0)
        });
        let before = full_runs(n0).expect("weft_reconcile_full_runs_total on /metrics");
        let added = |n: &Node| metric(n, "weft_kernel_entries_added_total");
        let added_before = added(n0);
        cluster.node(2).start_weftd(&args);
        cluster.node(2).wait_subnet_env(CONVERGE);
        let pods = pods_in_mesh(&cluster);
        let dump = || cluster.dump();
        for (a, b) in [(&pods[0], &pods[2]), (&pods[2], &pods[0])] {
            for ip in [&b.ip4, &b.ip6].into_iter().flatten() {
                assert!(tcp_ok(&a.ns, &b.ns, ip), "TCP -> {ip}\n{}", dump());
            }
        }
        assert_eq!(metric(n0, "weft_peers_desired"), Some(2.0), "{}", dump());
        assert_eq!(
            full_runs(n0),
            Some(before),
            "node 2's lease took a full pass on node 0 ({network})\n{}",
            n0.log_tail(40)
        );
        // Only node 2's peer was written: one per device (`flannel-wg`, `flannel-wg-v6`).
        let devices = if base == DUAL_CONFIG { 2.0 } else { 1.0 };
        assert_eq!(
            added(n0).zip(added_before).map(|(a, b)| a - b),
            Some(devices),
            "peers written on node 0 when node 2 joined ({network})\n{}",
            n0.log_tail(40)
        );
    }
}

/// WireGuard in an IPv6-only network on the IPv6 underlay: only `flannel-wg-v6` (51821), the
/// lease `PublicIP` 0.0.0.0 with `BackendV6Data` alone, pods talk over IPv6 both ways, and
/// nodes reach each other only over IPv6 WireGuard.
/// The subnet (network address and prefix) a node's subnet.env names in `key`
/// (`FLANNEL_SUBNET`, `FLANNEL_IPV6_SUBNET`), once it is written.
fn env_subnet(node: &Node, key: &str) -> String {
    let env = node.wait_subnet_env(CONVERGE);
    let s: ipnetwork::IpNetwork = env_var(&env, key)
        .unwrap_or_else(|| panic!("no {key} in {env}"))
        .parse()
        .unwrap_or_else(|e| panic!("{key}: {e}"));
    ipnetwork::IpNetwork::new(s.network(), s.prefix())
        .expect("its network")
        .to_string()
}

/// `n` nodes on the IPv6 underlay, each weftd probing its peers every second.
fn probed_cluster(n: u32, config: &str) -> Cluster {
    let cluster = Cluster::new(n, config);
    ipv6_underlay(&cluster);
    for node in &cluster.nodes {
        node.start_weftd(&["--peer-probe-interval", "1"]);
    }
    cluster
}

/// A dual-stack peer is probed over both families: with VXLAN over IPv6 dropped on node 2
/// (nft, `ip6` only) its IPv6 overlay is diagnosed `encapsulation-dropped` while its IPv4 one
/// stays healthy, and `weftctl status` shows both (JSON `health`, `healthIPv6`). An IPv4 probe
/// alone calls this peer healthy while its IPv6 pods are cut off.
#[test]
fn dual_stack_peers_are_probed_over_both_families() {
    let cluster = probed_cluster(2, DUAL_CONFIG);
    let (n1, n2) = (cluster.node(0), cluster.node(1));
    env_subnet(n1, "FLANNEL_SUBNET");
    let (s2, s2v6) = (
        env_subnet(n2, "FLANNEL_SUBNET"),
        env_subnet(n2, "FLANNEL_IPV6_SUBNET"),
    );
    n1.wait_until(CONVERGE, "both families of the peer healthy", || {
        [&s2, &s2v6]
            .iter()
            .all(|s| n1.peer_metric("reachable", s).as_deref() == Some("1"))
    });
    n2.netns().exec_ok(&[
        "nft",
        "add table ip6 drop8472; add chain ip6 drop8472 in { type filter hook input priority 0; }; add rule ip6 drop8472 in udp dport 8472 drop",
    ]);
    n1.wait_until(
        Duration::from_secs(5),
        "dropped IPv6 encapsulation diagnosed",
        || {
            n1.log().contains(&format!(
                "encapsulation dropped to peer {s2v6}: the underlay reaches {} but vxlan packets (UDP 8472) do not pass",
                v6_of(n2)
            )) && n1.peer_metric("reachable", &s2v6).as_deref() == Some("0")
        },
    );
    assert_eq!(n1.peer_metric("reachable", &s2).as_deref(), Some("1"));
    let json = weftctl_status_json(n1);
    let v: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let peer = v["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["subnet"] == s2.as_str()))
        .unwrap_or_else(|| panic!("no peer {s2}: {json}"));
    assert_eq!(peer["health"]["diagnosis"], "healthy", "{json}");
    assert_eq!(
        peer["healthIPv6"]["diagnosis"], "encapsulation-dropped",
        "{json}"
    );
}

/// `weftctl status -o json` over a node's socket.
fn weftctl_status_json(node: &Node) -> String {
    let socket = node.dir().join("weftd.sock");
    let out = node
        .netns()
        .command(env!("CARGO_BIN_EXE_weftctl"))
        .args(["status", "--socket"])
        .arg(&socket)
        .args(["-o", "json"])
        .output()
        .expect("run weftctl status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// weftd probes the peers of an IPv6-only network over IPv6 (ICMPv6 to `<IPv6 subnet>::` over
/// the overlay and to `PublicIPv6` on the underlay) and names the classic failures as it does
/// for IPv4: healthy at the full MTU 1430, an MTU black hole with the size that passes (node
/// 2's end of the underlay takes 1400-byte frames: 1330 bytes of pod packet plus VXLAN's 70 over
/// IPv6), encapsulation dropped (nft drops UDP 8472 on node 3); `weftctl status` shows the
/// health on each IPv6-only peer. Without IPv6 probes these peers had no health at all.
#[test]
fn ipv6_only_peers_are_probed_over_ipv6_and_their_failures_named() {
    let cluster = probed_cluster(3, V6_ONLY_CONFIG);
    let subnet6 = |node: &Node| env_subnet(node, "FLANNEL_IPV6_SUBNET");
    let (n1, n2, n3) = (cluster.node(0), cluster.node(1), cluster.node(2));
    subnet6(n1);
    let (s2, s3) = (subnet6(n2), subnet6(n3));
    n1.wait_until(CONVERGE, "healthy IPv6-only peers in /metrics", || {
        [&s2, &s3].iter().all(|s| {
            n1.peer_metric("reachable", s).as_deref() == Some("1")
                && n1.peer_metric("path_mtu_bytes", s).as_deref() == Some("1430")
        })
    });
    assert!(n1.log().contains(&format!(
        "peer {s2} ({}) reachable over the overlay at full MTU 1430",
        v6_of(n2)
    )));

    let soon = Duration::from_secs(5);
    n2.netns().ip(&["link", "set", "eth0", "mtu", "1400"]);
    n1.wait_until(soon, "the IPv6 MTU black hole measured", || {
        n1.log().contains(&format!(
            "MTU black hole to peer {s2} ({}): 1430-byte packets with DF are lost on the way, 1330 bytes pass",
            v6_of(n2)
        )) && n1.peer_metric("path_mtu_bytes", &s2).as_deref() == Some("1330")
    });

    n3.netns().exec_ok(&[
        "nft",
        "add table inet drop8472; add chain inet drop8472 in { type filter hook input priority 0; }; add rule inet drop8472 in udp dport 8472 drop",
    ]);
    n1.wait_until(soon, "dropped IPv6 encapsulation diagnosed", || {
        n1.log().contains(&format!(
            "encapsulation dropped to peer {s3}: the underlay reaches {} but vxlan packets (UDP 8472) do not pass",
            v6_of(n3)
        )) && n1.peer_metric("reachable", &s3).as_deref() == Some("0")
    });

    let json = weftctl_status_json(n1);
    let v: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let peer = |subnet6: &str| {
        v["peers"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["subnetIPv6"] == subnet6))
            .cloned()
            .unwrap_or_else(|| panic!("no peer {subnet6}: {json}"))
    };
    assert_eq!(peer(&s2)["health"]["diagnosis"], "mtu-black-hole", "{json}");
    assert_eq!(peer(&s2)["publicIPv6"], v6_of(n2), "{json}");
    assert_eq!(
        peer(&s3)["health"]["diagnosis"],
        "encapsulation-dropped",
        "{json}"
    );
}

#[test]
fn wireguard_ipv6_only_cluster_on_an_ipv6_underlay() {
    let cluster = Cluster::new(3, &wireguard_config(V6_ONLY_CONFIG, ""));
    ipv6_underlay(&cluster);
    cluster.start();
    for node in &cluster.nodes {
        let env = node.wait_subnet_env(CONVERGE);
        assert!(
            env.starts_with("FLANNEL_IPV6_NETWORK=fd00:20::/48\nFLANNEL_IPV6_SUBNET=fd00:20:0:")
                && env.ends_with("::1/64\nFLANNEL_MTU=1420\nFLANNEL_IPMASQ=false\n"),
            "{env}"
        );
        assert!(node.link("flannel-wg").is_none(), "no IPv4 device");
        assert!(node.link("flannel-wg-v6").is_some(), "no flannel-wg-v6");
        let (lease_key, value, key) = wireguard_lease(&cluster, node);
        assert_eq!(
            value,
            format!(
                r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"{}","BackendType":"wireguard","BackendV6Data":{{"PublicKey":"{key}","Port":51821}}}}"#,
                v6_of(node)
            )
        );
        assert!(
            lease_key.contains("/subnets/0.0.0.0-0&fd00:20:0:"),
            "{lease_key}"
        );
    }
    let pods = pods_in_mesh(&cluster);
    assert!(pods.iter().all(|p| p.ip4.is_none()));
    let dump = || cluster.dump();
    let capture = Capture::start(
        &cluster.underlay,
        &format!(
            "(ip or ip6) and not igmp and not ip6 multicast and not icmp6 and not host {}",
            etcd_ip(&cluster)
        ),
    );
    for (a, b) in [
        (&pods[0], &pods[1]),
        (&pods[1], &pods[2]),
        (&pods[2], &pods[0]),
    ] {
        let ip = b.ip6.as_deref().unwrap_or_default();
        assert!(markers_ok(&a.ns, &b.ns, ip), "markers -> {ip}\n{}", dump());
        assert!(
            bulk_ok(&a.ns, &b.ns, ip, 4 << 20),
            "bulk -> {ip}\n{}",
            dump()
        );
    }
    let (raw, lines) = capture.finish();
    assert_only_wireguard(&raw, &lines, "IP6", 51821);

    // Hostile BackendV6Data is refused by name, as BackendData is; the data path keeps going.
    let (_, _, stolen) = wireguard_lease(&cluster, cluster.node(1));
    let hostile = [
        (
            "fd00:20:0:f1::",
            "AAAA".to_string(),
            "BackendV6Data.PublicKey \"AAAA\" is not a WireGuard public key",
        ),
        (
            "fd00:20:0:f2::",
            stolen,
            "is already the public key of another node's older lease",
        ),
    ];
    for (net, key, _) in &hostile {
        cluster.etcd.put_with_ttl(
            &format!("{ETCD_PREFIX}/subnets/0.0.0.0-0&{net}-64"),
            &format!(
                r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::60","BackendType":"wireguard","BackendV6Data":{{"PublicKey":"{key}","Port":51821}}}}"#
            ),
            3600,
        );
    }
    let n0 = cluster.node(0);
    for (net, _, why) in &hostile {
        n0.wait_until(CONVERGE, &format!("{net} rejected"), || {
            n0.log()
                .lines()
                .any(|l| l.contains("lease rejected") && l.contains(net) && l.contains(why))
        });
    }
    let ip = pods[1].ip6.as_deref().unwrap_or_default();
    assert!(
        tcp_ok(&pods[0].ns, &pods[1].ns, ip),
        "pods talk with hostile leases in etcd\n{}",
        dump()
    );
}

/// Flannel's single-device modes: `ipv6` puts both families on one `flannel-wg` whose peers'
/// endpoints are their IPv6 addresses; `auto` picks IPv4 for these peers (192.0.2.0/24 is no
/// RFC 1918 range, so Flannel's `selectMode` prefers it). Pods talk over both families; the
/// underlay carries only WireGuard on `ListenPort` of the chosen family.
#[test]
fn wireguard_single_device_modes_carry_both_families_over_the_mode_s_underlay() {
    for (mode, family) in [("ipv6", "IP6"), ("auto", "IP")] {
        let cluster = Cluster::new(
            2,
            &wireguard_config(DUAL_CONFIG, &format!(r#","Mode":"{mode}""#)),
        );
        ipv6_underlay(&cluster);
        cluster.start();
        for node in &cluster.nodes {
            node.wait_subnet_env(CONVERGE);
            assert!(node.link("flannel-wg").is_some(), "{mode}: no flannel-wg");
            assert!(
                node.link("flannel-wg-v6").is_none(),
                "{mode}: one device for both families"
            );
            let r4 = routes_on(node, "-4", "flannel-wg");
            let r6 = routes_on(node, "-6", "flannel-wg");
            assert!(r4.contains("10.244.0.0/16"), "{mode}: {r4}");
            assert!(r6.contains("fd00:10:244::/48"), "{mode}: {r6}");
            let (_, value, key) = wireguard_lease(&cluster, node);
            // BackendV6Data names the port the one device listens on (see the backend docs).
            assert!(
                value.ends_with(&format!(
                    r#""BackendData":{{"PublicKey":"{key}","Port":51820}},"BackendV6Data":{{"PublicKey":"{key}","Port":51820}}}}"#
                )),
                "{mode}: {value}"
            );
        }
        let pods = pods_in_mesh(&cluster);
        let dump = || cluster.dump();
        let capture = Capture::start(
            &cluster.underlay,
            &format!(
                "(ip or ip6) and not igmp and not ip6 multicast and not icmp6 and not host {}",
                etcd_ip(&cluster)
            ),
        );
        for (a, b) in [(&pods[0], &pods[1]), (&pods[1], &pods[0])] {
            for ip in [&b.ip4, &b.ip6].into_iter().flatten() {
                assert!(
                    markers_ok(&a.ns, &b.ns, ip),
                    "{mode}: markers -> {ip}\n{}",
                    dump()
                );
            }
        }
        let (raw, lines) = capture.finish();
        assert_only_wireguard(&raw, &lines, family, 51820);
    }
}

/// Switching `Mode` from `separate` to `ipv6` (weftd restarted with the new config, as for any
/// backend change) removes `flannel-wg-v6` (a persistent TUN device) and its route: the one
/// `flannel-wg` carries IPv6, the lease names the port it listens on, and pods talk over it.
#[test]
fn wireguard_mode_switch_removes_the_device_the_new_mode_does_not_use() {
    let cluster = Cluster::new(2, &wireguard_config(DUAL_CONFIG, ""));
    ipv6_underlay(&cluster);
    cluster.start();
    for node in &cluster.nodes {
        assert!(
            node.link("flannel-wg-v6").is_some(),
            "separate: flannel-wg-v6"
        );
        node.stop();
    }
    cluster.etcd.put(
        NETWORK_CONFIG_KEY,
        &wireguard_config(DUAL_CONFIG, r#","Mode":"ipv6""#),
    );
    for node in &cluster.nodes {
        node.restart();
    }
    for node in &cluster.nodes {
        node.wait_until(CONVERGE, "Mode ipv6 lease published", || {
            wireguard_lease(&cluster, node)
                .1
                .contains(r#""BackendV6Data":{"PublicKey":"#)
                && wireguard_lease(&cluster, node)
                    .1
                    .ends_with(r#""Port":51820}}"#)
        });
        assert!(
            node.link("flannel-wg-v6").is_none(),
            "flannel-wg-v6 left behind\n{}",
            node.log_tail(30)
        );
        let r6 = routes_on(node, "-6", "flannel-wg");
        assert!(r6.contains("fd00:10:244::/48"), "{r6}");
    }
    let _pods = pods_in_mesh(&cluster);
}

/// A Flannel IPv6 wireguard node nobody here wrote: Debian's `wireguard-go` in a namespace on
/// the IPv6 underlay, configured with `wg` and `ip` as flanneld configures `flannel-wg-v6`
/// (listen port 51821, `<subnet6>::/128`, the `IPv6Network` route), its lease written as
/// flanneld writes an IPv6-only one. Weft nodes and it must reach each other's pods.
#[test]
fn wireguard_ipv6_only_interoperates_with_wireguard_go_configured_as_flanneld() {
    let cluster = Cluster::new(2, &wireguard_config(V6_ONLY_CONFIG, ""));
    ipv6_underlay(&cluster);
    cluster.start();
    let fl = Netns::new("fwg6");
    fl.no_dad();
    cluster.underlay.attach(&fl, "192.0.2.51");
    fl.no_dad();
    fl.ip(&["addr", "add", "2001:db8::51/64", "dev", "eth0", "nodad"]);
    fl.sysctl("net.ipv6.conf.all.forwarding", "1");
    // wireguard-go's control socket lives in /var/run/wireguard, shared by every namespace.
    let ifname = format!("fwg6{}", std::process::id() % 100_000);
    let mut daemon = fl
        .command("wireguard-go")
        .args(["-f", &ifname])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("wireguard-go (scripts/setup.sh installs it): {e}"));
    struct Stop<'a>(&'a mut std::process::Child);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            // SIGTERM lets wireguard-go remove its control socket.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.0.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = self.0.wait();
        }
    }
    let _stop = Stop(&mut daemon);
    let dir = tempfile::tempdir().expect("key dir");
    let key_file = dir.path().join("wgkey");
    let private = fl.exec_ok(&["wg", "genkey"]);
    std::fs::write(&key_file, private.trim()).expect("write key");
    let public = {
        let mut child = std::process::Command::new("wg")
            .arg("pubkey")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("wg pubkey");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(private.trim().as_bytes())
            .expect("write key");
        let out = child.wait_with_output().expect("wg pubkey");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    wait_until(Duration::from_secs(10), "wireguard-go device up", || {
        fl.exec(&["ip", "link", "show", "dev", &ifname])
            .status
            .success()
    });
    // newWGDevice and ConfigureV6, as flanneld does them for flannel-wg-v6.
    fl.exec_ok(&[
        "wg",
        "set",
        &ifname,
        "private-key",
        &key_file.to_string_lossy(),
        "listen-port",
        "51821",
    ]);
    fl.ip(&["link", "set", &ifname, "mtu", "1420"]);
    fl.ip(&["addr", "add", "fd00:20:0:f0::/128", "dev", &ifname, "nodad"]);
    fl.ip(&["link", "set", &ifname, "up"]);
    fl.ip(&[
        "-6",
        "route",
        "replace",
        "fd00:20::/48",
        "dev",
        &ifname,
        "scope",
        "link",
    ]);
    cluster.etcd.put_with_ttl(
        &format!("{ETCD_PREFIX}/subnets/0.0.0.0-0&fd00:20:0:f0::-64"),
        &format!(
            r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::51","BackendType":"wireguard","BackendV6Data":{{"PublicKey":"{public}","Port":51821}}}}"#
        ),
        3600,
    );
    // addPeer for each weft node's lease: [PublicIPv6]:BackendV6Data.Port, its IPv6 subnet.
    for node in &cluster.nodes {
        let (key, value, peer_key) = wireguard_lease(&cluster, node);
        let v: serde_json::Value = serde_json::from_str(&value).expect("lease JSON");
        let endpoint = format!("[{}]:{}", v6_of(node), v["BackendV6Data"]["Port"]);
        let subnet6 = key
            .rsplit_once('&')
            .map(|(_, s)| s.replace('-', "/"))
            .expect("IPv6 part of the key");
        fl.exec_ok(&[
            "wg",
            "set",
            &ifname,
            "peer",
            &peer_key,
            "endpoint",
            &endpoint,
            "allowed-ips",
            &subnet6,
        ]);
    }
    let fl_pod = add_pod(&fl, 90, None, Some("fd00:20:0:f0::1/64"), 1420);
    let pods = pod_per_node(&cluster);
    let dump = || cluster.dump();
    // The Flannel side speaks first: it reaches weft at the endpoint weft's lease names (a
    // handshake from weft would let wireguard-go learn weft's address whatever the lease says).
    let fl_ip = fl_pod.ip6.as_deref().unwrap_or_default();
    for pod in &pods {
        let ip = pod.ip6.as_deref().unwrap_or_default();
        wait_tcp(&fl_pod, pod, ip, &dump);
        wait_tcp(pod, &fl_pod, fl_ip, &dump);
    }
    let shown = fl.exec_ok(&["wg", "show", &ifname, "latest-handshakes"]);
    assert_eq!(
        shown.lines().filter(|l| !l.ends_with("\t0")).count(),
        2,
        "wireguard-go shook hands with both weft nodes: {shown}"
    );
}

/// A deleted `flannel-wg-v6` is noticed at once (not at the next resync, 30 s away) and made
/// again with its address and route; IPv6 pods talk again.
#[test]
fn wireguard_deleted_ipv6_device_is_recreated_at_once() {
    let cluster = Cluster::new(2, &wireguard_config(DUAL_CONFIG, ""));
    ipv6_underlay(&cluster);
    cluster.start();
    let pods = pod_per_node(&cluster);
    let dump = || cluster.dump();
    let ip6 = pods[1].ip6.as_deref().unwrap_or_default();
    wait_tcp(&pods[0], &pods[1], ip6, &dump);
    let node = cluster.node(0);
    let before = node.link("flannel-wg-v6").expect("flannel-wg-v6")["ifindex"].clone();
    node.netns().ip(&["link", "del", "flannel-wg-v6"]);
    node.wait_until(
        Duration::from_secs(10),
        "flannel-wg-v6 recreated with its route",
        || {
            node.link("flannel-wg-v6")
                .is_some_and(|l| l["ifindex"] != before)
                && routes_on(node, "-6", "flannel-wg-v6").contains("fd00:10:244::/48")
        },
    );
    assert!(
        node.log().contains("overlay device removed; recreating it"),
        "{}",
        node.log_tail(30)
    );
    wait_tcp(&pods[0], &pods[1], ip6, &dump);
    wait_tcp(
        &pods[1],
        &pods[0],
        pods[0].ip6.as_deref().unwrap_or_default(),
        &dump,
    );
}
