//! The `weft` CNI plugin end to end: the real binary, real network namespaces, real kernel
//! devices, and (for the cluster tests) real weftd and etcd.
//!
//! Most tests run the plugin in a node namespace with a hand-written subnet.env (a "site");
//! the cluster tests use weftd's own subnet.env. The plugin binary is built by
//! `cargo build --workspace` (package `weft-cni`); a missing binary fails the test loudly.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Where the reference plugins (Debian `containernetworking-plugins`) live.
const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// What one plugin invocation printed.
#[derive(Debug)]
struct CniOutput {
    success: bool,
    stdout: String,
    stderr: String,
}

impl CniOutput {
    /// The result JSON of a successful ADD; panics with the output otherwise.
    fn result(&self) -> Value {
        assert!(self.success, "plugin failed: {self:?}");
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("result is not JSON ({e}): {self:?}"))
    }

    /// Asserts success with empty stdout (DEL, CHECK, GC, STATUS).
    fn assert_silent_success(&self) {
        assert!(self.success, "plugin failed: {self:?}");
        assert!(
            self.stdout.trim().is_empty(),
            "stdout must be empty: {self:?}"
        );
    }

    /// The error object of a failed call; panics if it succeeded or printed no error JSON.
    fn error(&self) -> Value {
        assert!(!self.success, "plugin unexpectedly succeeded: {self:?}");
        let err: Value = serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("error is not JSON ({e}): {self:?}"));
        for field in ["cniVersion", "code", "msg", "details"] {
            assert!(err.get(field).is_some(), "error lacks {field}: {err}");
        }
        err
    }

    /// The error code of a failed call.
    fn code(&self) -> u64 {
        self.error()["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("code is not a number: {self:?}"))
    }
}

/// One invocation of a CNI plugin binary inside a node namespace.
struct Call<'a> {
    plugin: PathBuf,
    node: &'a Netns,
    command: &'a str,
    container: Option<&'a str>,
    ifname: Option<&'a str>,
    netns: Option<PathBuf>,
    extra_env: Vec<(&'a str, &'a str)>,
}

impl<'a> Call<'a> {
    fn new(node: &'a Netns, command: &'a str) -> Call<'a> {
        Call {
            plugin: bin_path("weft"),
            node,
            command,
            container: None,
            ifname: None,
            netns: None,
            extra_env: Vec::new(),
        }
    }

    fn attachment(mut self, container: &'a str, ifname: &'a str, netns: Option<&Netns>) -> Self {
        self.container = Some(container);
        self.ifname = Some(ifname);
        self.netns = netns.map(Netns::path);
        self
    }

    fn run(&self, stdin: &[u8]) -> CniOutput {
        let mut cmd: Command = self.node.command(&self.plugin);
        for var in [
            "CNI_COMMAND",
            "CNI_CONTAINERID",
            "CNI_IFNAME",
            "CNI_NETNS",
            "CNI_ARGS",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("CNI_COMMAND", self.command)
            .env("CNI_PATH", REFERENCE_PLUGINS);
        if let Some(c) = self.container {
            cmd.env("CNI_CONTAINERID", c);
        }
        if let Some(i) = self.ifname {
            cmd.env("CNI_IFNAME", i);
        }
        if let Some(n) = &self.netns {
            cmd.env("CNI_NETNS", n);
        }
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        if let Some(mut stdin_pipe) = child.stdin.take() {
            stdin_pipe
                .write_all(stdin)
                .unwrap_or_else(|e| panic!("write stdin of {cmd:?}: {e}"));
        }
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("wait for {cmd:?}: {e}"));
        CniOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn conf(&self, conf: &Value) -> CniOutput {
        self.run(conf.to_string().as_bytes())
    }
}

/// A node namespace with a hand-written subnet.env and its own IPAM directory.
struct Site {
    node: Netns,
    dir: tempfile::TempDir,
}

impl Site {
    /// `subnet` as FLANNEL_SUBNET (`10.244.7.1/24`), MTU 1450.
    fn new(subnet: &str) -> Site {
        let node = Netns::new("cninode");
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", unique_name("cni")))
            .tempdir()
            .unwrap_or_else(|e| panic!("temp dir: {e}"));
        let site = Site { node, dir };
        site.write_subnet_env(subnet);
        site
    }

    fn write_subnet_env(&self, subnet: &str) {
        let text = format!(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={subnet}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        std::fs::write(self.subnet_file(), text)
            .unwrap_or_else(|e| panic!("write {}: {e}", self.subnet_file().display()));
    }

    fn subnet_file(&self) -> PathBuf {
        self.dir.path().join("subnet.env")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("networks")
    }

    fn ipam_dir(&self) -> PathBuf {
        self.data_dir().join("weft-test")
    }

    fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "weft-test",
            "type": "weft",
            "subnetFile": self.subnet_file(),
            "dataDir": self.data_dir(),
        })
    }

    /// Addresses allocated on disk, with their file content.
    fn allocations(&self) -> Vec<(String, String)> {
        allocations_in(&self.ipam_dir())
    }

    fn add(&self, pod: &Netns, container: &str, version: &str) -> Value {
        Call::new(&self.node, "ADD")
            .attachment(container, "eth0", Some(pod))
            .conf(&self.conf(version))
            .result()
    }
}

/// Address files (`<ip>` → content) of a host-local style directory.
fn allocations_in(dir: &Path) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(String, String)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.parse::<Ipv4Addr>().ok()?;
            let content = std::fs::read_to_string(e.path()).ok()?;
            Some((name, content))
        })
        .collect();
    found.sort();
    found
}

/// The pod's address from a result (without prefix).
fn result_ip(result: &Value) -> String {
    let address = result["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no ips[0].address in {result}"));
    address.split('/').next().unwrap_or(address).to_string()
}

/// `ip -j addr show dev NAME` addresses (`a.b.c.d/len`) in `ns`.
fn addresses(ns: &Netns, dev: &str) -> Vec<String> {
    ns.ip_json(&["-4", "addr", "show", "dev", dev])
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| {
            Some(format!(
                "{}/{}",
                a["local"].as_str()?,
                a["prefixlen"].as_u64()?
            ))
        })
        .collect()
}

fn link_json(ns: &Netns, dev: &str) -> Option<Value> {
    let out = ns.exec(&["ip", "-j", "-d", "link", "show", "dev", dev]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice::<Vec<Value>>(&out.stdout)
        .ok()
        .and_then(|v| v.into_iter().next())
}

/// A TCP round trip from `from` to `to_ip` (a listener opened inside `to`), 3 s budget.
fn tcp_ok(from: &Netns, to: &Netns, to_ip: &str) -> bool {
    tcp_echo(from, to, 0, to_ip, None)
}

/// Like [`tcp_ok`] with a listener on `listen_port` in `to` (0: any) and the client dialling
/// `dial_ip:dial_port` (default: the listener's port), e.g. a host port mapped to it.
fn tcp_echo(
    from: &Netns,
    to: &Netns,
    listen_port: u16,
    dial_ip: &str,
    dial_port: Option<u16>,
) -> bool {
    let to_ip = dial_ip;
    let listener = to
        .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, listen_port)))
        .unwrap_or_else(|e| panic!("bind in {}: {e}", to.name()));
    let port = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("listener address: {e}"))
        .port();
    let port = dial_port.unwrap_or(port);
    let server = std::thread::spawn(move || -> bool {
        if listener.set_nonblocking(true).is_err() {
            return false;
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
                    let mut buf = [0u8; 16];
                    let Ok(n) = stream.read(&mut buf) else {
                        return false;
                    };
                    return stream.write_all(&buf[..n]).is_ok();
                }
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => return false,
            }
        }
    });
    let ip: Ipv4Addr = to_ip
        .parse()
        .unwrap_or_else(|e| panic!("bad address {to_ip}: {e}"));
    let target = SocketAddr::from((ip, port));
    let client = from.run(|| -> bool {
        let Ok(mut stream) = TcpStream::connect_timeout(&target, Duration::from_secs(3)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
        if stream.write_all(b"weft-cni").is_err() {
            return false;
        }
        let mut buf = [0u8; 8];
        stream.read_exact(&mut buf).is_ok() && &buf == b"weft-cni"
    });
    let served = server.join().unwrap_or(false);
    client && served
}

#[test]
fn add_result_shape_and_kernel_state_v1_0_0() {
    let site = Site::new("10.244.7.1/24");
    let pod = Netns::new("pod");
    let result = site.add(&pod, "shape-v1", "1.0.0");
    let host = result["interfaces"][1]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let host_mac = result["interfaces"][1]["mac"].clone();
    let pod_mac = link_json(&pod, "eth0").map(|l| l["address"].clone());
    assert_eq!(
        result,
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "0a:58:0a:f4:07:01"},
                {"name": host, "mac": host_mac},
                {"name": "eth0", "mac": pod_mac.unwrap_or_default(), "sandbox": pod.path()},
            ],
            "ips": [{"address": "10.244.7.2/24", "gateway": "10.244.7.1", "interface": 2}],
            "routes": [
                {"dst": "10.244.0.0/16", "gw": "10.244.7.1"},
                {"dst": "0.0.0.0/0", "gw": "10.244.7.1"}
            ],
            "dns": {}
        })
    );
    assert!(host.starts_with("veth") && host.len() == 15, "{host}");
    // Kernel state: pod side.
    assert_eq!(addresses(&pod, "eth0"), vec!["10.244.7.2/24"]);
    let eth0 = link_json(&pod, "eth0").unwrap_or_default();
    assert_eq!(eth0["mtu"], 1450, "pod MTU is subnet.env's: {eth0}");
    assert!(
        eth0["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "UP")),
        "{eth0}"
    );
    let routes = pod.ip_json(&["-4", "route", "show"]);
    let has_route = |dst: &str| {
        routes
            .iter()
            .any(|r| r["dst"] == dst && r["gateway"] == "10.244.7.1" && r["dev"] == "eth0")
    };
    assert!(
        has_route("default") && has_route("10.244.0.0/16"),
        "{routes:?}"
    );
    // Node side: bridge, port with hairpin, forwarding.
    assert_eq!(addresses(&site.node, "cni0"), vec!["10.244.7.1/24"]);
    let bridge = link_json(&site.node, "cni0").unwrap_or_default();
    assert_eq!(bridge["mtu"], 1450, "{bridge}");
    let port = link_json(&site.node, &host).unwrap_or_default();
    assert_eq!(port["master"], "cni0", "{port}");
    assert_eq!(port["mtu"], 1450, "{port}");
    assert_eq!(
        port["linkinfo"]["info_slave_data"]["hairpin"], true,
        "{port}"
    );
    for key in [
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sys/net/ipv4/conf/cni0/forwarding",
    ] {
        assert_eq!(site.node.exec_ok(&["cat", key]).trim(), "1", "{key}");
    }
    // On disk: host-local's layout.
    assert_eq!(
        site.allocations(),
        vec![("10.244.7.2".to_string(), "shape-v1\r\neth0".to_string())]
    );
    assert_eq!(
        std::fs::read_to_string(site.ipam_dir().join("last_reserved_ip.0")).unwrap_or_default(),
        "10.244.7.2"
    );
    assert!(site.ipam_dir().join("lock").is_file());
    // The pod reaches the node over the bridge and back.
    assert!(tcp_ok(&pod, &site.node, "10.244.7.1"), "pod -> gateway");
    assert!(tcp_ok(&site.node, &pod, "10.244.7.2"), "gateway -> pod");
}

#[test]
fn add_result_shape_v0_3_1_and_v1_1_0() {
    let site = Site::new("10.244.8.1/24");
    let pod = Netns::new("pod");
    let result = site.add(&pod, "shape-v031", "0.3.1");
    assert_eq!(result["cniVersion"], "0.3.1");
    assert_eq!(
        result["ips"],
        json!([{"version": "4", "address": "10.244.8.2/24", "gateway": "10.244.8.1", "interface": 2}])
    );
    assert!(result["interfaces"][2].get("mtu").is_none(), "{result}");
    let pod2 = Netns::new("pod");
    let result = site.add(&pod2, "shape-v110", "1.1.0");
    assert_eq!(result["cniVersion"], "1.1.0");
    assert!(result["ips"][0].get("version").is_none(), "{result}");
    assert_eq!(result["interfaces"][2]["mtu"], 1450, "{result}");
    assert_eq!(result["ips"][0]["address"], "10.244.8.3/24");
}

#[test]
fn no_default_gateway_extra_routes_dns_and_mtu_override() {
    let site = Site::new("10.244.22.1/24");
    let pod = Netns::new("pod");
    let mut conf = site.conf("1.0.0");
    conf["isDefaultGateway"] = json!(false);
    conf["hairpinMode"] = json!(false);
    conf["mtu"] = json!(1400);
    conf["routes"] =
        json!([{"dst": "198.51.100.0/24"}, {"dst": "192.0.2.0/24", "gw": "10.244.22.9"}]);
    conf["dns"] = json!({"nameservers": ["10.96.0.10"], "search": ["cluster.local"]});
    let result = Call::new(&site.node, "ADD")
        .attachment("custom", "eth0", Some(&pod))
        .conf(&conf)
        .result();
    assert_eq!(
        result["routes"],
        json!([
            {"dst": "10.244.0.0/16", "gw": "10.244.22.1"},
            {"dst": "198.51.100.0/24", "gw": "10.244.22.1"},
            {"dst": "192.0.2.0/24", "gw": "10.244.22.9"}
        ])
    );
    assert_eq!(result["dns"], conf["dns"]);
    let routes = pod.ip_json(&["-4", "route", "show"]);
    assert!(
        !routes.iter().any(|r| r["dst"] == "default"),
        "no default route: {routes:?}"
    );
    assert!(
        routes
            .iter()
            .any(|r| r["dst"] == "192.0.2.0/24" && r["gateway"] == "10.244.22.9"),
        "{routes:?}"
    );
    assert_eq!(link_json(&pod, "eth0").unwrap_or_default()["mtu"], 1400);
    let host = result["interfaces"][1]["name"].as_str().unwrap_or_default();
    let port = link_json(&site.node, host).unwrap_or_default();
    assert_eq!(
        port["linkinfo"]["info_slave_data"]["hairpin"], false,
        "{port}"
    );
    assert_eq!(
        link_json(&site.node, "cni0").unwrap_or_default()["mtu"],
        1400
    );
}

#[test]
fn check_passes_when_healthy_and_fails_after_address_removed() {
    let site = Site::new("10.244.9.1/24");
    let pod = Netns::new("pod");
    let result = site.add(&pod, "check-me", "1.0.0");
    let mut conf = site.conf("1.0.0");
    conf["prevResult"] = result;
    Call::new(&site.node, "CHECK")
        .attachment("check-me", "eth0", Some(&pod))
        .conf(&conf)
        .assert_silent_success();
    pod.ip(&["addr", "del", "10.244.9.2/24", "dev", "eth0"]);
    let out = Call::new(&site.node, "CHECK")
        .attachment("check-me", "eth0", Some(&pod))
        .conf(&conf);
    assert_eq!(out.code(), 104, "{out:?}");
    assert!(out.stdout.contains("10.244.9.2/24"), "{out:?}");
}

#[test]
fn check_fails_when_host_veth_leaves_bridge_or_allocation_goes() {
    let site = Site::new("10.244.10.1/24");
    let pod = Netns::new("pod");
    let result = site.add(&pod, "check-host", "1.1.0");
    let host = result["interfaces"][1]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut conf = site.conf("1.1.0");
    conf["prevResult"] = result;
    let check = || {
        Call::new(&site.node, "CHECK")
            .attachment("check-host", "eth0", Some(&pod))
            .conf(&conf)
    };
    check().assert_silent_success();
    site.node.ip(&["link", "set", &host, "nomaster"]);
    let out = check();
    assert_eq!(out.code(), 104, "{out:?}");
    assert!(out.stdout.contains("not a port of bridge"), "{out:?}");
    site.node.ip(&["link", "set", &host, "master", "cni0"]);
    check().assert_silent_success();
    // MTU changed inside the pod.
    pod.ip(&["link", "set", "eth0", "mtu", "1400"]);
    let out = check();
    assert_eq!(out.code(), 104, "{out:?}");
    assert!(out.stdout.contains("MTU is 1400"), "{out:?}");
    pod.ip(&["link", "set", "eth0", "mtu", "1450"]);
    check().assert_silent_success();
    // The pod interface's MAC changed (e.g. the interface was replaced).
    let mac = pod.ip_json(&["link", "show", "dev", "eth0"])[0]["address"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    pod.ip(&["link", "set", "eth0", "address", "02:00:5e:10:00:01"]);
    let out = check();
    assert_eq!(out.code(), 104, "{out:?}");
    assert!(out.stdout.contains("MAC is 02:00:5e:10:00:01"), "{out:?}");
    pod.ip(&["link", "set", "eth0", "address", &mac]);
    check().assert_silent_success();
    // A route of the result removed.
    pod.ip(&["route", "del", "10.244.0.0/16"]);
    let out = check();
    assert_eq!(out.code(), 104, "{out:?}");
    assert!(out.stdout.contains("route 10.244.0.0/16"), "{out:?}");
    pod.ip(&[
        "route",
        "add",
        "10.244.0.0/16",
        "via",
        "10.244.10.1",
        "dev",
        "eth0",
    ]);
    check().assert_silent_success();
    // The allocation released behind the pod's back.
    std::fs::remove_file(site.ipam_dir().join("10.244.10.2")).unwrap_or_else(|e| panic!("{e}"));
    let out = check();
    assert_eq!(out.code(), 3, "{out:?}");
    // The interface gone.
    std::fs::write(site.ipam_dir().join("10.244.10.2"), "check-host\r\neth0")
        .unwrap_or_else(|e| panic!("{e}"));
    check().assert_silent_success();
    pod.ip(&["link", "del", "eth0"]);
    let out = check();
    assert_eq!(out.code(), 104, "{out:?}");
    assert!(out.stdout.contains("interface missing"), "{out:?}");
}

#[test]
fn adds_killed_at_random_points_leave_nothing_gc_cannot_recover() {
    let site = Site::new("10.244.21.1/24");
    let plugin = bin_path("weft");
    let conf = site.conf("1.1.0").to_string();
    let mut rng_state: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
    let mut killed_early = 0;
    // Pods stay alive until after GC, so host veths of killed ADDs are not removed by their
    // namespace going away.
    let mut pods = Vec::new();
    for round in 0..40 {
        let pod = Netns::new("pod");
        let mut cmd = site.node.command(&plugin);
        cmd.env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", format!("killed-{round}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_NETNS", pod.path())
            .env("CNI_PATH", REFERENCE_PLUGINS)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(conf.as_bytes());
        }
        // xorshift: a delay of 0-8 ms, so the kill lands anywhere from exec to exit.
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        std::thread::sleep(Duration::from_micros(rng_state % 8000));
        // `ip netns exec` execs the plugin, so the child's pid is the plugin's.
        let _ = child.kill();
        let status = child.wait().unwrap_or_else(|e| panic!("wait: {e}"));
        if !status.success() {
            killed_early += 1;
        }
        pods.push(pod);
    }
    assert!(
        killed_early > 0,
        "no ADD was interrupted: the test proved nothing"
    );
    // Every address file is complete or empty (killed between create and write).
    let before_gc = site.allocations();
    eprintln!(
        "{killed_early}/40 ADDs killed before finishing; {} allocations left for GC",
        before_gc.len()
    );
    for (ip, content) in before_gc {
        assert!(
            content.is_empty() || (content.starts_with("killed-") && content.ends_with("\r\neth0")),
            "{ip}: {content:?}"
        );
    }
    let mut gc = site.conf("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([]);
    Call::new(&site.node, "GC")
        .conf(&gc)
        .assert_silent_success();
    assert!(site.allocations().is_empty(), "{:?}", site.allocations());
    let leftovers: Vec<String> = std::fs::read_dir(site.ipam_dir())
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "temporaries left: {leftovers:?}");
    // GC removed the host veths of everything it released, completed ADDs included.
    let veths: Vec<Value> = site.node.ip_json(&["link", "show", "type", "veth"]);
    assert!(veths.is_empty(), "host veths left after GC: {veths:?}");
    drop(pods);
    // The node still works.
    let pod = Netns::new("pod");
    let result = site.add(&pod, "after-crashes", "1.1.0");
    assert!(tcp_ok(&site.node, &pod, &result_ip(&result)));
}

#[test]
fn del_twice_and_del_with_vanished_netns_succeed_and_release() {
    let site = Site::new("10.244.11.1/24");
    let pod = Netns::new("pod");
    let result = site.add(&pod, "del-me", "1.0.0");
    let host = result["interfaces"][1]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut conf = site.conf("1.0.0");
    conf["prevResult"] = result;
    for _ in 0..2 {
        Call::new(&site.node, "DEL")
            .attachment("del-me", "eth0", Some(&pod))
            .conf(&conf)
            .assert_silent_success();
        assert!(site.allocations().is_empty(), "{:?}", site.allocations());
        assert!(link_json(&pod, "eth0").is_none(), "pod eth0 still there");
        assert!(
            link_json(&site.node, &host).is_none(),
            "host veth still there"
        );
    }

    // A pod whose namespace vanished before DEL.
    let gone = Netns::new("pod");
    let gone_path = gone.path();
    let result = site.add(&gone, "vanished", "1.0.0");
    let host = result["interfaces"][1]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    drop(gone);
    let mut call = Call::new(&site.node, "DEL").attachment("vanished", "eth0", None);
    call.netns = Some(gone_path);
    call.conf(&site.conf("1.0.0")).assert_silent_success();
    assert!(site.allocations().is_empty(), "{:?}", site.allocations());
    assert!(link_json(&site.node, &host).is_none(), "host veth left");
    // And without CNI_NETNS at all.
    Call::new(&site.node, "DEL")
        .attachment("vanished", "eth0", None)
        .conf(&site.conf("1.0.0"))
        .assert_silent_success();
}

#[test]
fn fifty_parallel_adds_give_distinct_working_addresses() {
    let site = Site::new("10.244.12.1/24");
    let pods: Vec<Netns> = (0..50).map(|_| Netns::new("pod")).collect();
    let results: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let site = &site;
                scope.spawn(move || site.add(pod, &format!("par-{i}"), "1.0.0"))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let ips: Vec<String> = results.iter().map(result_ip).collect();
    let distinct: HashSet<&String> = ips.iter().collect();
    assert_eq!(distinct.len(), 50, "{ips:?}");
    assert_eq!(site.allocations().len(), 50);
    for (pod, ip) in pods.iter().zip(&ips) {
        assert_eq!(addresses(pod, "eth0"), vec![format!("{ip}/24")]);
        assert!(tcp_ok(&site.node, pod, ip), "node -> {ip}");
    }
    // Pod to pod within the node, across the bridge.
    assert!(tcp_ok(&pods[0], &pods[49], &ips[49]), "pod0 -> pod49");
    assert!(tcp_ok(&pods[17], &pods[3], &ips[3]), "pod17 -> pod3");
}

#[test]
fn gc_keeps_exactly_the_valid_attachments() {
    let site = Site::new("10.244.13.1/24");
    let pods: Vec<Netns> = (0..4).map(|_| Netns::new("pod")).collect();
    let results: Vec<Value> = pods
        .iter()
        .enumerate()
        .map(|(i, pod)| site.add(pod, &format!("gc-{i}"), "1.1.0"))
        .collect();
    let mut conf = site.conf("1.1.0");
    conf["cni.dev/valid-attachments"] = json!([
        {"containerID": "gc-0", "ifname": "eth0"},
        {"containerID": "gc-2", "ifname": "eth0"},
        {"containerID": "gc-3", "ifname": "net9"}
    ]);
    Call::new(&site.node, "GC")
        .conf(&conf)
        .assert_silent_success();
    let kept: Vec<String> = site.allocations().into_iter().map(|(_, c)| c).collect();
    assert_eq!(kept, vec!["gc-0\r\neth0", "gc-2\r\neth0"]);
    for (i, result) in results.iter().enumerate() {
        let host = result["interfaces"][1]["name"].as_str().unwrap_or_default();
        let present = link_json(&site.node, host).is_some();
        assert_eq!(present, i == 0 || i == 2, "host veth of gc-{i}");
    }
    assert!(tcp_ok(&site.node, &pods[2], &result_ip(&results[2])));
    // GC needs 1.1.0.
    let mut old = conf.clone();
    old["cniVersion"] = json!("1.0.0");
    assert_eq!(Call::new(&site.node, "GC").conf(&old).code(), 1);
}

#[test]
fn status_is_50_without_subnet_env_and_ok_with_it() {
    let site = Site::new("10.244.14.1/24");
    Call::new(&site.node, "STATUS")
        .conf(&site.conf("1.1.0"))
        .assert_silent_success();
    std::fs::remove_file(site.subnet_file()).unwrap_or_else(|e| panic!("{e}"));
    let out = Call::new(&site.node, "STATUS").conf(&site.conf("1.1.0"));
    assert_eq!(out.code(), 50, "{out:?}");
    assert_eq!(out.error()["cniVersion"], "1.1.0");
}

#[test]
fn version_lists_supported_versions() {
    let node = Netns::new("cninode");
    let out = Call::new(&node, "VERSION").run(br#"{"cniVersion":"1.0.0"}"#);
    let v = out.result();
    assert_eq!(
        v["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    assert_eq!(v["cniVersion"], "1.1.0");
}

#[test]
fn every_error_code_from_bad_input() {
    let site = Site::new("10.244.15.1/24");
    let pod = Netns::new("pod");
    let conf = site.conf("1.0.0");
    let add = |container: &'static str| {
        Call::new(&site.node, "ADD").attachment(container, "eth0", Some(&pod))
    };

    // 1: incompatible version.
    let mut bad = conf.clone();
    bad["cniVersion"] = json!("0.2.0");
    assert_eq!(add("e1").conf(&bad).code(), 1);
    // 2: unsupported field value.
    let mut bad = conf.clone();
    bad["ipMasq"] = json!(true);
    assert_eq!(add("e2").conf(&bad).code(), 2);
    // 3: the container's namespace does not exist.
    let mut call = add("e3");
    call.netns = Some(PathBuf::from("/run/netns/weft-no-such-namespace"));
    assert_eq!(call.conf(&conf).code(), 3);
    // 4: missing or invalid environment variables, named in the message.
    let out = Call::new(&site.node, "ADD")
        .attachment("e4", "eth0", None)
        .conf(&conf);
    assert_eq!(out.code(), 4);
    assert!(out.stdout.contains("CNI_NETNS"), "{out:?}");
    let out = Call::new(&site.node, "ADD")
        .attachment("-bad-id", "eth0", Some(&pod))
        .conf(&conf);
    assert_eq!(out.code(), 4);
    assert!(out.stdout.contains("CNI_CONTAINERID"), "{out:?}");
    for ifname in ["a/b", "eth0:1", "has space", "..", "sixteen-chars-xx"] {
        let out = Call::new(&site.node, "ADD")
            .attachment("e4", ifname, Some(&pod))
            .conf(&conf);
        assert_eq!(out.code(), 4, "{ifname}: {out:?}");
        assert!(out.stdout.contains("CNI_IFNAME"), "{out:?}");
    }
    let mut call = add("e4");
    call.netns = Some(site.subnet_file());
    let out = call.conf(&conf);
    assert_eq!(out.code(), 4, "regular file as CNI_NETNS: {out:?}");
    let mut call = add("e4");
    call.netns = Some(PathBuf::from("/proc/self/ns/uts"));
    let out = call.conf(&conf);
    assert_eq!(out.code(), 4, "a UTS namespace as CNI_NETNS: {out:?}");
    assert!(out.stdout.contains("not a network namespace"), "{out:?}");
    let out = Call::new(&site.node, "BOGUS").conf(&conf);
    assert_eq!(out.code(), 4);
    assert!(out.stdout.contains("CNI_COMMAND"), "{out:?}");
    // 5: I/O failure (dataDir below a regular file).
    let mut bad = conf.clone();
    bad["dataDir"] = json!(site.subnet_file().join("data"));
    assert_eq!(add("e5").conf(&bad).code(), 5);
    // 6: not JSON.
    assert_eq!(add("e6").run(b"{not json").code(), 6);
    // 7: invalid config (no name; wrong type; bad route).
    let mut bad = conf.clone();
    bad.as_object_mut().map(|o| o.remove("name"));
    assert_eq!(add("e7").conf(&bad).code(), 7);
    let mut bad = conf.clone();
    bad["mtu"] = json!("big");
    assert_eq!(add("e7").conf(&bad).code(), 7);
    let mut bad = conf.clone();
    bad["routes"] = json!([{"dst": "nonsense"}]);
    assert_eq!(add("e7").conf(&bad).code(), 7);
    // 11: weftd has not written subnet.env yet.
    let mut bad = conf.clone();
    bad["subnetFile"] = json!(site.dir.path().join("missing.env"));
    assert_eq!(add("e11").conf(&bad).code(), 11);
    // 105: subnet.env unusable.
    let broken = site.dir.path().join("broken.env");
    std::fs::write(&broken, "FLANNEL_NETWORK=10.244.0.0/16\n").unwrap_or_else(|e| panic!("{e}"));
    let mut bad = conf.clone();
    bad["subnetFile"] = json!(broken);
    assert_eq!(add("e105").conf(&bad).code(), 105);
    // Nothing above may have left an allocation or a device behind.
    assert!(site.allocations().is_empty(), "{:?}", site.allocations());
    // 102: ADD onto an existing CNI_IFNAME.
    site.add(&pod, "e102", "1.0.0");
    assert_eq!(add("e102b").conf(&conf).code(), 102);
    // 103: the kernel refuses a route (gateway not on any link) -> everything undone.
    let pod2 = Netns::new("pod");
    let mut bad = conf.clone();
    bad["routes"] = json!([{"dst": "192.0.2.0/24", "gw": "198.51.100.1"}]);
    let out = Call::new(&site.node, "ADD")
        .attachment("e103", "eth0", Some(&pod2))
        .conf(&bad);
    assert_eq!(out.code(), 103, "{out:?}");
    assert!(link_json(&pod2, "eth0").is_none(), "pod veth left behind");
    assert_eq!(
        site.allocations().len(),
        1,
        "only e102 stays: {:?}",
        site.allocations()
    );
    // 1 for CHECK below 0.4.0; 7 for CHECK without prevResult.
    let mut old = conf.clone();
    old["cniVersion"] = json!("0.3.1");
    let out = Call::new(&site.node, "CHECK")
        .attachment("e102", "eth0", Some(&pod))
        .conf(&old);
    assert_eq!(out.code(), 1);
    let out = Call::new(&site.node, "CHECK")
        .attachment("e102", "eth0", Some(&pod))
        .conf(&conf);
    assert_eq!(out.code(), 7);
    // Errors carry the caller's version; logs never reach stdout.
    let mut v031 = conf.clone();
    v031["cniVersion"] = json!("0.3.1");
    v031["ipMasq"] = json!(true);
    let out = add("ev").conf(&v031);
    assert_eq!(out.error()["cniVersion"], "0.3.1");
    assert_eq!(
        out.stdout.lines().count(),
        1,
        "stdout is the error JSON only: {out:?}"
    );
    assert!(
        out.stderr.contains("ipMasq"),
        "the error is logged on stderr: {out:?}"
    );
}

#[test]
fn bridge_with_another_address_is_a_clear_error() {
    let site = Site::new("10.244.16.1/24");
    site.node.ip(&["link", "add", "cni0", "type", "bridge"]);
    site.node
        .ip(&["addr", "add", "10.244.99.1/24", "dev", "cni0"]);
    let pod = Netns::new("pod");
    let out = Call::new(&site.node, "ADD")
        .attachment("conflict", "eth0", Some(&pod))
        .conf(&site.conf("1.0.0"));
    assert_eq!(out.code(), 100, "{out:?}");
    let details = out.error()["details"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        details.contains("cni0")
            && details.contains("10.244.99.1/24")
            && details.contains("10.244.16.1/24"),
        "{details}"
    );
    assert!(site.allocations().is_empty());
}

#[test]
fn bridge_moves_to_the_new_gateway_when_subnet_env_names_a_new_subnet() {
    let site = Site::new("10.244.23.1/24");
    let old_pod = Netns::new("pod");
    site.add(&old_pod, "before-move", "1.0.0");
    assert_eq!(addresses(&site.node, "cni0"), vec!["10.244.23.1/24"]);
    // weftd lost its lease and took another subnet: subnet.env now names it.
    site.write_subnet_env("10.244.24.1/24");
    let pod = Netns::new("pod");
    let result = site.add(&pod, "after-move", "1.0.0");
    assert_eq!(result["ips"][0]["address"], "10.244.24.2/24", "{result}");
    assert_eq!(result["ips"][0]["gateway"], "10.244.24.1", "{result}");
    assert_eq!(
        result["interfaces"][0]["mac"], "0a:58:0a:f4:18:01",
        "the bridge MAC names the new gateway: {result}"
    );
    assert_eq!(
        addresses(&site.node, "cni0"),
        vec!["10.244.24.1/24"],
        "old gateway removed, new one added"
    );
    let node_routes = site.node.ip_json(&["-4", "route", "show", "dev", "cni0"]);
    let dsts: Vec<&str> = node_routes
        .iter()
        .filter_map(|r| r["dst"].as_str())
        .collect();
    assert_eq!(dsts, vec!["10.244.24.0/24"], "{node_routes:?}");
    let pod_routes = pod.ip_json(&["-4", "route", "show"]);
    for dst in ["default", "10.244.0.0/16"] {
        assert!(
            pod_routes
                .iter()
                .any(|r| r["dst"] == dst && r["gateway"] == "10.244.24.1" && r["dev"] == "eth0"),
            "{dst} via the new gateway: {pod_routes:?}"
        );
    }
    assert!(
        tcp_ok(&pod, &site.node, "10.244.24.1"),
        "pod -> new gateway"
    );
    assert!(tcp_ok(&site.node, &pod, "10.244.24.2"), "node -> pod");
    // The next ADD finds the bridge as it should be and changes nothing.
    let pod2 = Netns::new("pod");
    assert_eq!(
        result_ip(&site.add(&pod2, "after-move-2", "1.0.0")),
        "10.244.24.3"
    );
    assert_eq!(addresses(&site.node, "cni0"), vec!["10.244.24.1/24"]);
    // An address weft did not put there is still left alone, with code 100.
    site.node
        .ip(&["addr", "add", "198.51.100.1/24", "dev", "cni0"]);
    site.write_subnet_env("10.244.25.1/24");
    let pod3 = Netns::new("pod");
    let out = Call::new(&site.node, "ADD")
        .attachment("after-move-3", "eth0", Some(&pod3))
        .conf(&site.conf("1.0.0"));
    assert_eq!(out.code(), 100, "{out:?}");
    assert!(out.stdout.contains("198.51.100.1/24"), "{out:?}");
    let mut left = addresses(&site.node, "cni0");
    left.sort();
    assert_eq!(left, vec!["10.244.24.1/24", "198.51.100.1/24"]);
    assert!(link_json(&pod3, "eth0").is_none());
}

#[test]
fn exhausted_subnet_names_the_subnet() {
    let site = Site::new("10.244.17.1/30");
    let pod = Netns::new("pod");
    assert_eq!(result_ip(&site.add(&pod, "only", "1.0.0")), "10.244.17.2");
    let pod2 = Netns::new("pod");
    let out = Call::new(&site.node, "ADD")
        .attachment("second", "eth0", Some(&pod2))
        .conf(&site.conf("1.0.0"));
    assert_eq!(out.code(), 101, "{out:?}");
    assert!(out.stdout.contains("10.244.17.0/30"), "{out:?}");
    assert!(link_json(&pod2, "eth0").is_none());
}

#[test]
fn leftovers_of_a_killed_add_are_recovered() {
    let site = Site::new("10.244.18.1/24");
    // A weft ADD killed after allocating (.9) and a plugin killed between creating and writing
    // an address file (empty .2).
    std::fs::create_dir_all(site.ipam_dir()).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(site.ipam_dir().join("10.244.18.9"), "crashed\r\neth0")
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(site.ipam_dir().join("10.244.18.2"), "").unwrap_or_else(|e| panic!("{e}"));
    let pod = Netns::new("pod");
    let first = site.add(&pod, "next", "1.0.0");
    assert_eq!(
        result_ip(&first),
        "10.244.18.2",
        "an empty (half-written) address file does not block its address"
    );
    // The killed container is retried, then deleted by the runtime: DEL releases both addresses.
    let pod2 = Netns::new("pod");
    let retried = site.add(&pod2, "crashed", "1.0.0");
    assert!(tcp_ok(&site.node, &pod2, &result_ip(&retried)));
    Call::new(&site.node, "DEL")
        .attachment("crashed", "eth0", Some(&pod2))
        .conf(&site.conf("1.0.0"))
        .assert_silent_success();
    let left: Vec<String> = site.allocations().into_iter().map(|(ip, _)| ip).collect();
    assert_eq!(
        left,
        vec!["10.244.18.2"],
        "DEL released the crashed ADD's address too"
    );
    // A leftover host veth with the attachment's name is replaced.
    let pod3 = Netns::new("pod");
    let result3 = site.add(&pod3, "third", "1.0.0");
    let host3 = result3["interfaces"][1]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut del = site.conf("1.0.0");
    del["prevResult"] = result3;
    Call::new(&site.node, "DEL")
        .attachment("third", "eth0", Some(&pod3))
        .conf(&del)
        .assert_silent_success();
    site.node.ip(&[
        "link", "add", &host3, "type", "veth", "peer", "name", "stale0",
    ]);
    let result3 = site.add(&pod3, "third", "1.0.0");
    assert!(tcp_ok(&site.node, &pod3, &result_ip(&result3)));
    // GC recovers an allocation nobody names.
    std::fs::write(site.ipam_dir().join("10.244.18.200"), "ghost\r\neth0")
        .unwrap_or_else(|e| panic!("{e}"));
    let mut conf = site.conf("1.1.0");
    conf["cni.dev/valid-attachments"] = json!([
        {"containerID": "next", "ifname": "eth0"},
        {"containerID": "third", "ifname": "eth0"}
    ]);
    Call::new(&site.node, "GC")
        .conf(&conf)
        .assert_silent_success();
    let ips: Vec<String> = site.allocations().into_iter().map(|(ip, _)| ip).collect();
    assert_eq!(ips.len(), 2, "{ips:?}");
    assert!(!ips.contains(&"10.244.18.200".to_string()));
}

#[test]
fn host_local_and_weft_share_a_directory() {
    // The reference host-local and weft allocate from the same directory without collisions.
    let site = Site::new("10.244.19.1/24");
    let pod = Netns::new("pod");
    let weft_ip = result_ip(&site.add(&pod, "weft-one", "1.0.0"));
    let host_local = json!({
        "cniVersion": "1.0.0",
        "name": "weft-test",
        "ipam": {
            "type": "host-local",
            "dataDir": site.data_dir(),
            "ranges": [[{"subnet": "10.244.19.0/24"}]]
        }
    });
    let mut call = Call::new(&site.node, "ADD").attachment("hl-one", "eth0", Some(&pod));
    call.plugin = PathBuf::from(REFERENCE_PLUGINS).join("host-local");
    let hl = call.conf(&host_local).result();
    let hl_ip = result_ip(&hl);
    assert_ne!(hl_ip, weft_ip);
    assert_eq!(
        hl_ip, "10.244.19.3",
        "host-local continues after weft's last_reserved_ip.0"
    );
    let allocations = site.allocations();
    assert!(
        allocations.contains(&(hl_ip.clone(), "hl-one\r\neth0".to_string())),
        "{allocations:?}"
    );
    let pod2 = Netns::new("pod");
    assert_eq!(
        result_ip(&site.add(&pod2, "weft-two", "1.0.0")),
        "10.244.19.4"
    );
}

// ------------------------------------------------------------------------------------------
// On the cluster harness: real weftd and etcd.

/// Wires a pod on `node` with weft, configured from weftd's subnet.env.
fn weft_pod(node: &Node, container: &str) -> (Netns, String) {
    let pod = Netns::new("pod");
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "weft",
        "type": "weft",
        "subnetFile": node.subnet_file(),
        "dataDir": node.dir().join("cni-networks"),
    });
    let result = Call::new(node.netns(), "ADD")
        .attachment(container, "eth0", Some(&pod))
        .conf(&conf)
        .result();
    let ip = result_ip(&result);
    (pod, ip)
}

#[test]
fn pods_on_three_nodes_reach_each_other_over_tcp() {
    let cluster = Cluster::new(3, VXLAN_CONFIG);
    cluster.start();
    cluster.wait_mesh(Duration::from_secs(30));
    let mut pods = Vec::new();
    for (n, node) in cluster.nodes.iter().enumerate() {
        for p in 0..2 {
            let (pod, ip) = weft_pod(node, &format!("mesh-{n}-{p}"));
            let mtu = node
                .subnet_env()
                .and_then(|env| {
                    env.lines()
                        .find_map(|l| l.strip_prefix("FLANNEL_MTU=").map(str::to_string))
                })
                .unwrap_or_default();
            let eth0 = link_json(&pod, "eth0").unwrap_or_default();
            assert_eq!(eth0["mtu"].to_string(), mtu, "pod MTU equals subnet.env's");
            pods.push((pod, ip));
        }
    }
    let mut failures = Vec::new();
    for (i, (from, from_ip)) in pods.iter().enumerate() {
        for (j, (to, to_ip)) in pods.iter().enumerate() {
            if i != j && !tcp_ok(from, to, to_ip) {
                failures.push(format!("{from_ip} -> {to_ip}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "failed: {failures:?}\n{}",
        cluster.dump()
    );
}

#[test]
fn reference_bridge_pod_and_weft_pod_on_two_nodes_talk() {
    let cluster = Cluster::new(2, VXLAN_CONFIG);
    cluster.start();
    cluster.wait_mesh(Duration::from_secs(30));
    // Node 1: the reference bridge + host-local, configured from subnet.env as Flannel's CNI
    // plugin would delegate.
    let node1 = cluster.node(0);
    let env = node1.wait_subnet_env(Duration::from_secs(10));
    let value = |key: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_string))
            .unwrap_or_else(|| panic!("{key} missing from {env}"))
    };
    let subnet = subnet_of(&env).unwrap_or_else(|| panic!("no subnet in {env}"));
    let mtu: u64 = value("FLANNEL_MTU").parse().unwrap_or(0);
    let reference = json!({
        "cniVersion": "1.0.0",
        "name": "cbr0",
        "type": "bridge",
        "bridge": "cni0",
        "mtu": mtu,
        "isGateway": true,
        "isDefaultGateway": true,
        "ipMasq": false,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "dataDir": node1.dir().join("host-local"),
            "ranges": [[{"subnet": subnet}]],
            "routes": [{"dst": value("FLANNEL_NETWORK")}]
        }
    });
    let ref_pod = Netns::new("pod");
    let mut call = Call::new(node1.netns(), "ADD").attachment("ref-pod", "eth0", Some(&ref_pod));
    call.plugin = PathBuf::from(REFERENCE_PLUGINS).join("bridge");
    let ref_ip = result_ip(&call.conf(&reference).result());
    // Node 2: weft.
    let (weft, weft_ip) = weft_pod(cluster.node(1), "weft-pod");
    assert!(
        tcp_ok(&ref_pod, &weft, &weft_ip),
        "reference pod {ref_ip} -> weft pod {weft_ip}\n{}",
        cluster.dump()
    );
    assert!(
        tcp_ok(&weft, &ref_pod, &ref_ip),
        "weft pod {weft_ip} -> reference pod {ref_ip}\n{}",
        cluster.dump()
    );
}

#[test]
fn example_conflist_chain_weft_then_portmap_works() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("cni/10-weft.conflist");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let list: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let site = Site::new("10.244.20.1/24");
    let pod = Netns::new("pod");
    // libcni's per-plugin config: the list's cniVersion and name, this test's paths.
    let mut weft = list["plugins"][0].clone();
    weft["cniVersion"] = list["cniVersion"].clone();
    weft["name"] = list["name"].clone();
    weft["subnetFile"] = json!(site.subnet_file());
    weft["dataDir"] = json!(site.data_dir());
    let result = Call::new(&site.node, "ADD")
        .attachment("chain", "eth0", Some(&pod))
        .conf(&weft)
        .result();
    // A pod's hostPort, as a runtime passes it to the plugins with the portMappings capability.
    let mut portmap = list["plugins"][1].clone();
    portmap["cniVersion"] = list["cniVersion"].clone();
    portmap["name"] = list["name"].clone();
    portmap["prevResult"] = result.clone();
    portmap["runtimeConfig"] =
        json!({"portMappings": [{"hostPort": 30080, "containerPort": 8080, "protocol": "tcp"}]});
    let portmap_call = || {
        let mut call = Call::new(&site.node, "ADD").attachment("chain", "eth0", Some(&pod));
        call.plugin = PathBuf::from(REFERENCE_PLUGINS).join("portmap");
        call
    };
    let chained = portmap_call().conf(&portmap).result();
    assert_eq!(
        chained["ips"], result["ips"],
        "portmap passes weft's result on"
    );
    assert!(tcp_ok(&site.node, &pod, &result_ip(&result)));
    // The node's own address, port 30080, reaches the pod's port 8080.
    assert!(
        tcp_echo(&site.node, &pod, 8080, "10.244.20.1", Some(30080)),
        "hostPort 30080 does not reach the pod's 8080:\n{}",
        site.node.exec_ok(&["nft", "list", "ruleset"])
    );
    let mut del = weft.clone();
    del["prevResult"] = chained.clone();
    let mut portmap_del = portmap.clone();
    portmap_del["prevResult"] = chained;
    // libcni deletes in reverse order: portmap, then weft.
    let mut call = Call::new(&site.node, "DEL").attachment("chain", "eth0", Some(&pod));
    call.plugin = PathBuf::from(REFERENCE_PLUGINS).join("portmap");
    call.conf(&portmap_del).assert_silent_success();
    Call::new(&site.node, "DEL")
        .attachment("chain", "eth0", Some(&pod))
        .conf(&del)
        .assert_silent_success();
    assert!(site.allocations().is_empty());
}

/// `ip -j neigh` lladdr of `ip` on `dev` in `ns`, if any.
fn neighbour_mac(ns: &Netns, dev: &str, ip: &str) -> Option<String> {
    ns.ip_json(&["-4", "neigh", "show", "dev", dev])
        .into_iter()
        .find(|n| n["dst"] == ip)
        .and_then(|n| n["lladdr"].as_str().map(str::to_string))
}

#[test]
fn static_ip_and_mac_from_cni_args_and_runtime_config() {
    let site = Site::new("10.244.26.1/24");
    let pod = Netns::new("pod");
    let mut call = Call::new(&site.node, "ADD").attachment("static-args", "eth0", Some(&pod));
    call.extra_env = vec![(
        "CNI_ARGS",
        "IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.244.26.50;MAC=0a:00:00:26:00:50;PODMAN_EXTRA=y",
    )];
    let result = call.conf(&site.conf("1.0.0")).result();
    assert_eq!(result["ips"][0]["address"], "10.244.26.50/24", "{result}");
    assert_eq!(
        result["interfaces"][2]["mac"], "0a:00:00:26:00:50",
        "{result}"
    );
    assert_eq!(addresses(&pod, "eth0"), vec!["10.244.26.50/24"]);
    assert_eq!(
        link_json(&pod, "eth0").map(|l| l["address"].clone()),
        Some(json!("0a:00:00:26:00:50"))
    );
    assert!(site
        .allocations()
        .contains(&("10.244.26.50".into(), "static-args\r\neth0".into())));
    // The runtimeConfig capabilities (what podman and CRI runtimes send).
    let pod2 = Netns::new("pod");
    let mut conf = site.conf("1.0.0");
    conf["runtimeConfig"] = json!({"ips": ["10.244.26.60/24"], "mac": "0a:00:00:26:00:60"});
    let result = Call::new(&site.node, "ADD")
        .attachment("static-rc", "eth0", Some(&pod2))
        .conf(&conf)
        .result();
    assert_eq!(result["ips"][0]["address"], "10.244.26.60/24", "{result}");
    assert_eq!(result["interfaces"][2]["mac"], "0a:00:00:26:00:60");
    assert!(tcp_ok(&site.node, &pod2, "10.244.26.60"));
    // DEL then ADD again with the same IP= (podman network reload) keeps the address.
    Call::new(&site.node, "DEL")
        .attachment("static-rc", "eth0", Some(&pod2))
        .conf(&conf)
        .assert_silent_success();
    let again = Call::new(&site.node, "ADD")
        .attachment("static-rc", "eth0", Some(&pod2))
        .conf(&conf)
        .result();
    assert_eq!(again["ips"][0]["address"], "10.244.26.60/24");
    // Refusals: taken by another container, outside the subnet, the gateway, unknown keys
    // without IgnoreUnknown. Nothing is left behind.
    let before = site.allocations();
    let refusals: [(&str, u64, &str); 5] = [
        ("IP=10.244.26.50", 106, "static-args"),
        ("IP=10.244.99.5", 4, "not an assignable address"),
        ("IgnoreUnknown=1;IP=10.244.26.1", 4, "gateway"),
        ("IP=10.244.26.70;MAC=01:00:5e:00:00:01", 4, "multicast"),
        ("FOO=bar", 4, "FOO"),
    ];
    for (args, code, text) in refusals {
        let pod3 = Netns::new("pod");
        let mut call = Call::new(&site.node, "ADD").attachment("refused", "eth0", Some(&pod3));
        call.extra_env = vec![("CNI_ARGS", args)];
        let out = call.conf(&site.conf("1.0.0"));
        assert_eq!(out.code(), code, "{args}: {out:?}");
        assert!(out.stdout.contains(text), "{args}: {out:?}");
        assert!(link_json(&pod3, "eth0").is_none(), "{args}");
        assert_eq!(site.allocations(), before, "{args}");
    }
    let mut conf = site.conf("1.0.0");
    conf["runtimeConfig"] = json!({"ips": ["192.0.2.9/24"]});
    let pod4 = Netns::new("pod");
    let out = Call::new(&site.node, "ADD")
        .attachment("refused", "eth0", Some(&pod4))
        .conf(&conf);
    assert_eq!(out.code(), 7, "{out:?}");
    assert_eq!(site.allocations(), before);
}

#[test]
fn existing_default_route_is_left_alone_and_del_removes_only_weft_s_part() {
    let site = Site::new("10.244.27.1/24");
    let pod = Netns::new("pod");
    // The container's first network: a dummy device with the default route.
    pod.ip(&[
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "first-net",
    ]);
    pod.ip(&["link", "set", "first-net", "up"]);
    pod.ip(&["addr", "add", "198.51.100.2/24", "dev", "eth0"]);
    pod.ip(&["link", "set", "eth0", "up"]);
    pod.ip(&["route", "add", "default", "via", "198.51.100.1"]);
    let result = Call::new(&site.node, "ADD")
        .attachment("second-net", "eth1", Some(&pod))
        .conf(&site.conf("1.0.0"))
        .result();
    assert_eq!(
        result["routes"],
        json!([{"dst": "10.244.0.0/16", "gw": "10.244.27.1"}]),
        "the default route is not weft's: {result}"
    );
    let routes = pod.ip_json(&["-4", "route", "show"]);
    let default: Vec<&Value> = routes.iter().filter(|r| r["dst"] == "default").collect();
    assert_eq!(default.len(), 1, "{routes:?}");
    assert_eq!(default[0]["gateway"], "198.51.100.1", "{routes:?}");
    assert!(tcp_ok(&site.node, &pod, &result_ip(&result)));
    // isDefaultGateway false: only the cluster route, whatever the container has.
    let pod2 = Netns::new("pod");
    let mut conf = site.conf("1.0.0");
    conf["isDefaultGateway"] = json!(false);
    let result2 = Call::new(&site.node, "ADD")
        .attachment("secondary", "eth0", Some(&pod2))
        .conf(&conf)
        .result();
    assert_eq!(
        result2["routes"],
        json!([{"dst": "10.244.0.0/16", "gw": "10.244.27.1"}])
    );
    assert!(pod2
        .ip_json(&["-4", "route", "show"])
        .iter()
        .all(|r| r["dst"] != "default"));
    // DEL removes weft's interface and its routes; the first network stays.
    let mut del = site.conf("1.0.0");
    del["prevResult"] = result;
    Call::new(&site.node, "DEL")
        .attachment("second-net", "eth1", Some(&pod))
        .conf(&del)
        .assert_silent_success();
    assert!(link_json(&pod, "eth1").is_none());
    assert_eq!(addresses(&pod, "eth0"), vec!["198.51.100.2/24"]);
    let routes = pod.ip_json(&["-4", "route", "show"]);
    assert!(
        routes
            .iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == "198.51.100.1"),
        "{routes:?}"
    );
    assert!(
        routes.iter().all(|r| r["dst"] != "10.244.0.0/16"),
        "{routes:?}"
    );
}

#[test]
fn reused_address_is_announced_to_the_node_at_once() {
    let site = Site::new("10.244.28.1/24");
    // Another pod keeps the bridge up (with no port left, its neighbour table is flushed).
    let bystander = Netns::new("pod");
    site.add(&bystander, "arp-bystander", "1.0.0");
    let first = Netns::new("pod");
    let mut call = Call::new(&site.node, "ADD").attachment("arp-first", "eth0", Some(&first));
    call.extra_env = vec![("CNI_ARGS", "IP=10.244.28.9")];
    let result = call.conf(&site.conf("1.0.0")).result();
    let first_mac = result["interfaces"][2]["mac"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(tcp_ok(&site.node, &first, "10.244.28.9"));
    assert_eq!(
        neighbour_mac(&site.node, "cni0", "10.244.28.9"),
        Some(first_mac.clone())
    );
    // The kernel lets an ARP override a neighbour entry only after its locktime (1 s) from
    // the entry's last update; half a second of margin for a loaded machine (one full-suite
    // run saw the announcement ignored with 100 ms).
    std::thread::sleep(Duration::from_millis(1500));
    Call::new(&site.node, "DEL")
        .attachment("arp-first", "eth0", Some(&first))
        .conf(&site.conf("1.0.0"))
        .assert_silent_success();
    let second = Netns::new("pod");
    let mut call = Call::new(&site.node, "ADD").attachment("arp-second", "eth0", Some(&second));
    call.extra_env = vec![("CNI_ARGS", "IP=10.244.28.9")];
    let result = call.conf(&site.conf("1.0.0")).result();
    let second_mac = result["interfaces"][2]["mac"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_ne!(first_mac, second_mac);
    // Right after ADD, before any traffic: the node already knows the new owner.
    let deadline = Instant::now() + Duration::from_millis(200);
    let mut seen = neighbour_mac(&site.node, "cni0", "10.244.28.9");
    while seen.as_deref() != Some(second_mac.as_str()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        seen = neighbour_mac(&site.node, "cni0", "10.244.28.9");
    }
    assert_eq!(seen, Some(second_mac), "node neighbour entry after ADD");
    assert!(tcp_ok(&site.node, &second, "10.244.28.9"));
}

#[test]
fn hostile_input_is_refused_and_leaves_nothing_behind() {
    let site = Site::new("10.244.29.1/24");
    let pod = Netns::new("pod");
    let first = site.add(&pod, "dup", "1.0.0");
    // The same (container ID, ifname) into another namespace: refused, the first pod untouched.
    let other = Netns::new("pod");
    let out = Call::new(&site.node, "ADD")
        .attachment("dup", "eth0", Some(&other))
        .conf(&site.conf("1.0.0"));
    assert_eq!(out.code(), 107, "{out:?}");
    assert!(link_json(&other, "eth0").is_none());
    assert_eq!(
        site.allocations(),
        vec![("10.244.29.2".to_string(), "dup\r\neth0".to_string())]
    );
    assert!(
        tcp_ok(&site.node, &pod, &result_ip(&first)),
        "first pod still wired"
    );
    // The same with a static address the attachment holds: the refused ADD must not take
    // the address from the pod in place (it was not this ADD's to undo).
    let static_pod = Netns::new("pod");
    let mut call = Call::new(&site.node, "ADD").attachment("dup-static", "eth0", Some(&static_pod));
    call.extra_env = vec![("CNI_ARGS", "IP=10.244.29.50")];
    call.conf(&site.conf("1.0.0")).result();
    let mut call = Call::new(&site.node, "ADD").attachment("dup-static", "eth0", Some(&other));
    call.extra_env = vec![("CNI_ARGS", "IP=10.244.29.50")];
    let out = call.conf(&site.conf("1.0.0"));
    assert_eq!(out.code(), 107, "{out:?}");
    assert_eq!(
        site.allocations(),
        vec![
            ("10.244.29.2".to_string(), "dup\r\neth0".to_string()),
            ("10.244.29.50".to_string(), "dup-static\r\neth0".to_string()),
        ],
        "the static address stays with the pod holding it"
    );
    assert!(
        tcp_ok(&site.node, &static_pod, "10.244.29.50"),
        "static pod still wired"
    );
    let links_before: HashSet<String> = site
        .node
        .ip_json(&["link", "show"])
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect();
    // Names the kernel would expand or that break paths; network names off the spec's pattern.
    let fifo = site.dir.path().join("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo {}", fifo.display());
    let big = site.dir.path().join("big.env");
    std::fs::write(&big, "#".repeat(100_000)).unwrap_or_else(|e| panic!("{e}"));
    let cases: Vec<(&str, Value, &str, u64)> = vec![
        ("bridge %", json!({"bridge": "br%d"}), "eth0", 7),
        ("bridge space", json!({"bridge": "br 0"}), "eth0", 7),
        (
            "bridge long",
            json!({"bridge": "bridge012345678x"}),
            "eth0",
            7,
        ),
        ("name newline", json!({"name": "weft\ntest"}), "eth0", 7),
        ("name slash", json!({"name": "a/b"}), "eth0", 7),
        ("subnetFile fifo", json!({"subnetFile": fifo}), "eth0", 105),
        ("subnetFile big", json!({"subnetFile": big}), "eth0", 105),
        ("logFile fifo", json!({"logFile": fifo}), "eth0", 7),
        ("ifname %", json!({}), "eth%d", 4),
        ("ifname slash", json!({}), "a/b", 4),
        ("ifname long", json!({}), "eth0123456789abc", 4),
    ];
    for (what, patch, ifname, code) in cases {
        let target = Netns::new("pod");
        let mut conf = site.conf("1.0.0");
        if let (Some(conf), Some(patch)) = (conf.as_object_mut(), patch.as_object()) {
            conf.extend(patch.clone());
        }
        // A plugin opening the FIFO blocking would never return from this call.
        let out = Call::new(&site.node, "ADD")
            .attachment("hostile", ifname, Some(&target))
            .conf(&conf);
        assert_eq!(out.code(), code, "{what}: {out:?}");
        let links: HashSet<String> = site
            .node
            .ip_json(&["link", "show"])
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect();
        assert_eq!(links, links_before, "{what}: no device left behind");
        assert!(
            target.ip_json(&["link", "show"]).len() == 1,
            "{what}: only lo in the pod namespace"
        );
        assert_eq!(site.allocations().len(), 2, "{what}");
    }
    // CNI_NETNS naming a FIFO (or a device) is refused without being opened: an open would
    // block forever (or wake the device's driver).
    for (what, path) in [("fifo", fifo.as_path()), ("device", Path::new("/dev/null"))] {
        let mut call = Call::new(&site.node, "ADD").attachment("hostile", "eth0", None);
        call.netns = Some(path.to_path_buf());
        let out = call.conf(&site.conf("1.0.0"));
        assert_eq!(out.code(), 4, "CNI_NETNS {what}: {out:?}");
        assert!(
            out.error()["details"]
                .as_str()
                .is_some_and(|d| d.contains("not a namespace file")),
            "CNI_NETNS {what}: {out:?}"
        );
        assert_eq!(site.allocations().len(), 2, "CNI_NETNS {what}");
    }
}

#[test]
fn subnet_env_problems_are_all_listed_and_details_do_not_repeat_msg() {
    let site = Site::new("10.244.30.1/24");
    std::fs::write(
        site.subnet_file(),
        "FLANNEL_NETWORK=10.244.0.0/33\nFLANNEL_SUBNET=10.244.30.0/24\nFLANNEL_MTU=huge\nnonsense\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let pod = Netns::new("pod");
    let out = Call::new(&site.node, "ADD")
        .attachment("bad-env", "eth0", Some(&pod))
        .conf(&site.conf("1.0.0"));
    assert_eq!(out.code(), 105, "{out:?}");
    let details = out.error()["details"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    for part in [
        "FLANNEL_NETWORK",
        "FLANNEL_SUBNET=10.244.30.0/24",
        "FLANNEL_MTU",
        "line 4",
    ] {
        assert!(details.contains(part), "{part} missing from {details}");
    }
    std::fs::remove_file(site.subnet_file()).unwrap_or_else(|e| panic!("{e}"));
    let out = Call::new(&site.node, "ADD")
        .attachment("bad-env", "eth0", Some(&pod))
        .conf(&site.conf("1.0.0"));
    let err = out.error();
    assert_eq!(err["code"], 11);
    let msg = err["msg"].as_str().unwrap_or_default().to_lowercase();
    let details = err["details"].as_str().unwrap_or_default().to_lowercase();
    assert!(
        !details.starts_with(&msg) && details.contains("subnet"),
        "{err}"
    );
}

/// `logFile`: created 0600, with a line per operation (ADD and DEL).
#[test]
fn log_file_is_created_0600_with_a_line_per_operation() {
    use std::os::unix::fs::PermissionsExt;
    let site = Site::new("10.244.31.1/24");
    let pod = Netns::new("pod");
    let log = site.dir.path().join("weft-cni.log");
    let mut conf = site.conf("1.0.0");
    conf["logFile"] = json!(log);
    for command in ["ADD", "DEL"] {
        let out = Call::new(&site.node, command)
            .attachment("logged", "eth0", Some(&pod))
            .conf(&conf);
        assert!(out.success, "{command}: {out:?}");
    }
    let mode = std::fs::metadata(&log)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    assert_eq!(mode, 0o600, "mode of {}", log.display());
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    for command in ["ADD", "DEL"] {
        assert!(
            text.lines()
                .any(|l| l.contains(command) && l.contains("logged")),
            "no {command} line for the container in:\n{text}"
        );
    }
}
