//! Integration-test harness: real etcd, real network namespaces, real kernel devices.
//!
//! Every topology lives in network namespaces this harness creates; nothing touches the root
//! namespace and no packet can leave (the underlay bridge has no uplink). Names are unique per
//! test (`weft-<pid>-<counter>-<role>`), so tests run in parallel, and everything is removed on
//! drop, also when the test panics. Namespaces left behind by a test process that was killed
//! (so its destructors never ran) are removed the next time any test creates a namespace.
//!
//! Use it from a test file with `mod common;` and `use common::*;`.
//!
//! # API (kept stable; other test files depend on it)
//!
//! * [`Netns`]: `Netns::new(role)`, `name()`, `path()`, `command(program)`, `exec(&[..]) -> Output`,
//!   `exec_ok(&[..]) -> String`, `spawn(&[..]) -> Child`, `ip(&[..]) -> String` (`ip -n NAME ..`),
//!   `ip_json(&[..]) -> Vec<Value>`, `run(|| ..)` (closure on a thread inside the namespace, e.g. to
//!   open sockets there), `sysctl(key, value)`, `pids()`.
//! * [`Underlay`]: a namespace with bridge `br0` for 192.0.2.0/24; `attach(&Netns, "192.0.2.N")`
//!   gives the namespace an `eth0` on the bridge.
//! * [`Etcd`]: a real etcd at [`Etcd::IP`] on the underlay (`Etcd::new_tls` for TLS with client
//!   certificates towards the nodes); `endpoint()`, `put`, `put_with_ttl`,
//!   `get`, `get_kv`, `get_prefix`, `del`, `revision`, `compact`, `stop`, `start`, `etcdctl`, `log`.
//! * [`Node`]: a namespace on the underlay at 192.0.2.(10+index) with `net.ipv4.ip_forward=1`;
//!   `start_weftd(&[extra args])`, `start_weftd_env`, `kill9`, `stop`, `restart`, `is_running`, `weftd_pid`, `log`, `subnet_env`,
//!   `wait_subnet_env`, `subnet`, `lease_key`, `wait_until`, `wait_for`, `routes`, `neighbours`,
//!   `fdb`, `link`, `http_get` (healthz server at 127.0.0.1:[`Node::HEALTHZ_PORT`]), `add_pod`,
//!   `add_pod_in`.
//! * [`Pod`]: a namespace wired by hand to the node's `cni0` bridge; `ip()`, `netns()`, `exec`,
//!   `tcp_check(&other) -> bool`, `traffic_probe(&other) -> TrafficProbe` (numbered UDP
//!   datagrams echoed back, counting the lost ones, for "pod traffic never stops" tests).
//! * [`Cluster`]: `Cluster::new(n_nodes, config_json)` (underlay + etcd + config at
//!   [`NETWORK_CONFIG_KEY`] + n nodes, weftd not yet running), `start()` (weftd everywhere, waits
//!   for every subnet.env), `add_node()`, `wait_mesh(timeout)`, `node(i)`, `dump()`.
//! * [`EtcdCluster`]: `EtcdCluster::new(&underlay, 3)`, a real etcd cluster, member `i` in its own
//!   namespace at 192.0.2.(251+i); `endpoints()` (comma-separated, for `--etcd-endpoints`),
//!   `member(i)` ([`EtcdMember`]: `ip`, `netns`, `is_running`, `metric(name)` from `/metrics`),
//!   `leader`, `wait_leader`, `move_leader(i)`, `kill(i)`, `kill_all`, `start(i)`, `start_all`,
//!   `partition(i)`/`heal(i)` (nftables drop in the member's namespace), `put`, `get`, `etcdctl`.
//! * Free functions: [`unique_name`], [`wait_for`], [`wait_until`], [`bin_path`], [`lease_key`],
//!   [`subnet_of`], [`vxlan_lease_value`], [`flannel_vxlan_lease_value`], [`expected_subnet_env`], [`tcp_source_seen`],
//!   [`wire_pod`], [`cleanup_stale`], [`nft_apply`].
//!
//! Panics are the error reporting of this module: every failure names the command, the
//! namespace and the output, and node/etcd logs are printed when a test fails.

#![allow(dead_code)] // each tests/*.rs uses a different part of this shared harness

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine;
use ipnetwork::Ipv4Network;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::Value;

/// etcd key prefix weftd uses by default (Flannel's).
pub const ETCD_PREFIX: &str = "/coreos.com/network";
/// etcd key of the network config.
pub const NETWORK_CONFIG_KEY: &str = "/coreos.com/network/config";
/// A plain VXLAN network config for 10.244.0.0/16. Nodes lease only from 10.244.100.0/24 to
/// 10.244.199.0/24 (`SubnetMin`/`SubnetMax`), so a fake lease a test puts outside that range
/// (a bad key, a sentinel peer) can never land on a real node's own subnet by chance.
pub const VXLAN_CONFIG: &str = r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.100.0","SubnetMax":"10.244.199.0","Backend":{"Type":"vxlan"}}"#;

static COUNTER: AtomicU32 = AtomicU32::new(0);
static STALE_CLEANUP: Once = Once::new();

/// A name unique to this test process and call: `weft-<pid>-<counter>-<role>`.
pub fn unique_name(role: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("weft-{}-{}-{}", std::process::id(), n, role)
}

/// Runs a command to completion, panicking (naming the command) only if it cannot be spawned.
fn output_of(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null());
    match cmd.output() {
        Ok(out) => out,
        Err(e) => panic!("cannot run {cmd:?}: {e}"),
    }
}

/// Runs a command and returns its stdout; panics with stdout and stderr if it fails.
fn output_ok(cmd: &mut Command) -> String {
    let out = output_of(cmd);
    if !out.status.success() {
        panic!(
            "{cmd:?} failed with {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `program args..` in the root namespace (harness tools only) and returns stdout.
fn host_ok(program: &str, args: &[&str]) -> String {
    output_ok(Command::new(program).args(args))
}

/// Polls `probe` every 50 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `predicate` every 50 ms until it holds, or panics after `timeout` naming `what`.
pub fn wait_until(timeout: Duration, what: &str, mut predicate: impl FnMut() -> bool) {
    wait_for(timeout, what, || predicate().then_some(()))
}

/// Path of another binary of this workspace (e.g. `weft`, the CNI plugin in package `weft-cni`),
/// in the target directory next to the running test executable.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => panic!("cannot locate the test executable: {e}"),
    };
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| panic!("test executable {} has no target dir", exe.display()));
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "binary {name} not found at {}: run `cargo build --workspace --all-targets` first",
        path.display()
    );
    path
}

/// The etcd key of the lease for `subnet` (`10.244.3.0/24` -> `/coreos.com/network/subnets/10.244.3.0-24`).
pub fn lease_key(subnet: &str) -> String {
    format!("{ETCD_PREFIX}/subnets/{}", subnet.replace('/', "-"))
}

/// The subnet (`10.244.3.0/24`) of a subnet.env text's `FLANNEL_SUBNET` (`10.244.3.1/24`).
pub fn subnet_of(subnet_env: &str) -> Option<String> {
    let value = subnet_env
        .lines()
        .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))?;
    let net: Ipv4Network = value.trim().parse().ok()?;
    Some(format!("{}/{}", net.network(), net.prefix()))
}

/// A VXLAN lease value (VNI 1) in the form of design.md and of flanneld before its IPv6 support:
/// `{"PublicIP":"..","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":".."}}`.
pub fn vxlan_lease_value(public_ip: &str, vtep_mac: &str) -> String {
    format!(
        r#"{{"PublicIP":"{public_ip}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{vtep_mac}"}}}}"#
    )
}

/// A VXLAN lease value (VNI 1) byte for byte as current flanneld (v0.2x) writes it: its Go
/// `LeaseAttrs` has `PublicIPv6 *ip.IP6` without `omitempty`, so an IPv4 node writes
/// `"PublicIPv6":null` (flannel-io/flannel pkg/lease/lease.go).
pub fn flannel_vxlan_lease_value(public_ip: &str, vtep_mac: &str) -> String {
    format!(
        r#"{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{vtep_mac}"}}}}"#
    )
}

/// subnet.env exactly as flanneld writes it for `subnet` (`10.244.3.0/24`) of 10.244.0.0/16,
/// MTU 1450 (1500 - VXLAN overhead), no masquerade.
pub fn expected_subnet_env(subnet: &str) -> String {
    let net: Ipv4Network = subnet
        .parse()
        .unwrap_or_else(|e| panic!("expected_subnet_env: bad subnet {subnet:?}: {e}"));
    let first = Ipv4Addr::from(u32::from(net.network()) + 1);
    format!(
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={first}/{}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
        net.prefix()
    )
}

/// The gateway (first address, `X.0`) of a peer subnet `X.0/len`.
fn subnet_address(subnet: &str) -> String {
    subnet.split('/').next().unwrap_or(subnet).to_string()
}

/// A temporary directory removed on drop; named `weft-<pid>-...` so stale ones can be found.
fn temp_dir(role: &str) -> tempfile::TempDir {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    match tempfile::Builder::new()
        .prefix(&format!("{}-", unique_name(role)))
        .tempdir_in(&base)
    {
        Ok(d) => d,
        Err(e) => panic!("cannot create temp dir in {}: {e}", base.display()),
    }
}

/// The pid a test-made name was created by. Every test file names what it creates after its
/// process: `weft-<pid>-<n>-..` (this harness, pods.rs), `weftk-<pid>-..` (kernel.rs),
/// `weft-st-<pid>-..` (store.rs), `weft-t<pid>-..` (pod_runtime.rs sandboxes).
pub fn owner_pid(name: &str) -> Option<i32> {
    let rest = ["weftk-", "weft-st-", "weft-t", "weft-"]
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))?;
    let (pid, _) = rest.split_once('-')?;
    pid.parse().ok()
}

/// Removes namespaces (killing what runs in them) and temp dirs of test processes that died
/// without running destructors (e.g. SIGKILLed). Runs once per process before the first
/// namespace is created; callable directly.
pub fn cleanup_stale() {
    let alive = |pid: i32| Path::new(&format!("/proc/{pid}")).exists();
    let list = host_ok("ip", &["netns", "list"]);
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        if owner_pid(name).is_some_and(|pid| !alive(pid)) {
            kill_netns_processes(name);
            let _ = output_of(Command::new("ip").args(["netns", "del", name]));
        }
    }
    for base in [PathBuf::from("/dev/shm"), std::env::temp_dir()] {
        let Ok(entries) = std::fs::read_dir(&base) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if owner_pid(&name).is_some_and(|pid| !alive(pid)) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Kills every process inside namespace `name` (never this test process itself).
fn kill_netns_processes(name: &str) {
    let me = std::process::id() as i32;
    for _ in 0..100 {
        let out = output_of(Command::new("ip").args(["netns", "pids", name]));
        let pids: Vec<i32> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|p| *p != me)
            .collect();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("harness: processes in netns {name} survived SIGKILL for 2 s");
}

/// Last `n` lines of a text.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn read_to_string_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Opens a log file for appending, as stdout and stderr of a child process.
fn log_stdio(path: &Path) -> (Stdio, Stdio) {
    let open = || match OpenOptions::new().create(true).append(true).open(path) {
        Ok(f) => f,
        Err(e) => panic!("cannot open log file {}: {e}", path.display()),
    };
    (Stdio::from(open()), Stdio::from(open()))
}

/// Appends a marker line to a log file, so restarts are visible in it.
fn log_marker(path: &Path, text: &str) {
    if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "===== harness: {text} =====");
    }
}

/// Sends SIGTERM and waits up to `timeout`; SIGKILLs and panics if the process does not exit.
fn terminate(child: &mut Child, what: &str, timeout: Duration) -> ExitStatus {
    if let Ok(Some(status)) = child.try_wait() {
        return status;
    }
    let _ = nix::sys::signal::kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status,
            Ok(None) if start.elapsed() < timeout => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not exit within {timeout:?} of SIGTERM");
            }
        }
    }
}

/// SIGKILLs a child and reaps it.
fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

// ---------------------------------------------------------------------------------------------

/// A network namespace with a per-test unique name, removed (with every process in it) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `weft-<pid>-<n>-<role>` with `lo` up.
    pub fn new(role: &str) -> Netns {
        STALE_CLEANUP.call_once(cleanup_stale);
        let name = unique_name(role);
        host_ok("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name (as in `ip netns list`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A `Command` running `program` inside the namespace (`ip netns exec NAME program`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    fn command_of(&self, args: &[&str]) -> Command {
        let (program, rest) = match args.split_first() {
            Some(split) => split,
            None => panic!("exec in netns {}: empty argument vector", self.name),
        };
        let mut cmd = self.command(program);
        cmd.args(rest);
        cmd
    }

    /// Runs `args[0] args[1..]` inside the namespace and returns its output (any exit status).
    pub fn exec(&self, args: &[&str]) -> Output {
        output_of(&mut self.command_of(args))
    }

    /// Runs a command inside the namespace; panics unless it succeeds; returns stdout.
    pub fn exec_ok(&self, args: &[&str]) -> String {
        output_ok(&mut self.command_of(args))
    }

    /// Starts a command inside the namespace with stdin/stdout/stderr discarded.
    pub fn spawn(&self, args: &[&str]) -> Child {
        let mut cmd = self.command_of(args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match cmd.spawn() {
            Ok(c) => c,
            Err(e) => panic!("cannot spawn {cmd:?}: {e}"),
        }
    }

    /// `ip -n NAME args..`; panics unless it succeeds; returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        output_ok(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// `ip -j -n NAME args..` parsed (an empty output is an empty list).
    pub fn ip_json(&self, args: &[&str]) -> Vec<Value> {
        let out = output_ok(Command::new("ip").args(["-j", "-n", &self.name]).args(args));
        parse_json_list(&out, &format!("ip -j -n {} {}", self.name, args.join(" ")))
    }

    /// `bridge -j -n NAME args..` parsed.
    pub fn bridge_json(&self, args: &[&str]) -> Vec<Value> {
        let out = output_ok(
            Command::new("bridge")
                .args(["-j", "-n", &self.name])
                .args(args),
        );
        parse_json_list(
            &out,
            &format!("bridge -j -n {} {}", self.name, args.join(" ")),
        )
    }

    /// Sets a sysctl inside this namespace only (e.g. `net.ipv4.ip_forward`).
    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec_ok(&["sysctl", "-q", "-w", &format!("{key}={value}")]);
    }

    /// Moves the calling thread into this namespace (for threads that live in it).
    pub fn enter(&self) {
        let file = match File::open(self.path()) {
            Ok(f) => f,
            Err(e) => panic!("open {}: {e}", self.path().display()),
        };
        if let Err(e) = nix::sched::setns(file, CloneFlags::CLONE_NEWNET) {
            panic!("setns into netns {}: {e}", self.name);
        }
    }

    /// Runs `f` on a fresh thread inside this namespace; sockets it creates stay in the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            let handle = s.spawn(|| {
                self.enter();
                f()
            });
            match handle.join() {
                Ok(v) => v,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }

    /// Pids of the processes inside the namespace.
    pub fn pids(&self) -> Vec<i32> {
        host_ok("ip", &["netns", "pids", &self.name])
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_netns_processes(&self.name);
        let out = output_of(Command::new("ip").args(["netns", "del", &self.name]));
        if !out.status.success() {
            eprintln!(
                "harness: ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

fn parse_json_list(out: &str, what: &str) -> Vec<Value> {
    if out.trim().is_empty() {
        return Vec::new();
    }
    match serde_json::from_str::<Value>(out) {
        Ok(Value::Array(items)) => items,
        Ok(other) => panic!("{what}: expected a JSON list, got {other}"),
        Err(e) => panic!("{what}: invalid JSON ({e}): {out}"),
    }
}

// ---------------------------------------------------------------------------------------------

/// The underlay: a namespace with bridge `br0` (192.0.2.0/24 lives on the attached ends).
/// It has no uplink, so no packet leaves the test's namespaces.
#[derive(Debug)]
pub struct Underlay {
    ns: Netns,
    ports: AtomicU32,
}

impl Underlay {
    /// Creates the underlay namespace and its bridge.
    pub fn new() -> Underlay {
        let ns = Netns::new("ul");
        ns.ip(&["link", "add", "br0", "type", "bridge"]);
        ns.ip(&["link", "set", "br0", "up"]);
        Underlay {
            ns,
            ports: AtomicU32::new(0),
        }
    }

    /// The underlay's namespace.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// Gives `node` an `eth0` with `ip`/24 on the underlay bridge (veth created in place).
    pub fn attach(&self, node: &Netns, ip: &str) {
        self.attach_with_mtu(node, ip, 1500);
    }

    /// Like [`attach`](Self::attach), with `mtu` on both ends of the veth pair.
    pub fn attach_with_mtu(&self, node: &Netns, ip: &str, mtu: u32) {
        let port = format!("x{}", self.ports.fetch_add(1, Ordering::Relaxed));
        let mtu = mtu.to_string();
        self.ns.ip(&[
            "link",
            "add",
            &port,
            "mtu",
            &mtu,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "mtu",
            &mtu,
            "netns",
            node.name(),
        ]);
        self.ns.ip(&["link", "set", &port, "master", "br0", "up"]);
        node.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        node.ip(&["link", "set", "eth0", "up"]);
    }
}

// ---------------------------------------------------------------------------------------------

/// One key as etcd stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    /// The key.
    pub key: String,
    /// The value, exactly as stored.
    pub value: String,
    /// The etcd lease id attached to the key, 0 for none.
    pub lease: i64,
    /// Revision that created the key.
    pub create_revision: i64,
    /// Revision of the last modification.
    pub mod_revision: i64,
}

/// A real etcd (3.4, `/usr/bin/etcd`) in its own namespace on the underlay at [`Etcd::IP`].
#[derive(Debug)]
pub struct Etcd {
    child: Mutex<Option<Child>>,
    ns: Netns,
    dir: tempfile::TempDir,
    /// Server certificate, key and CA for clients on the underlay ([`Etcd::new_tls`]).
    tls: Option<EtcdTls>,
}

/// PEM files of an etcd that serves TLS with client certificates on the underlay.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// The server certificate (its subjectAltName must hold [`Etcd::IP`]).
    pub cert: PathBuf,
    /// The server key.
    pub key: PathBuf,
    /// The CA client certificates must be signed by.
    pub ca: PathBuf,
}

impl Etcd {
    /// etcd's address on the underlay.
    pub const IP: &'static str = "192.0.2.254";

    /// Starts etcd attached to `underlay` and waits until it answers.
    pub fn new(underlay: &Underlay) -> Etcd {
        let ns = Netns::new("etcd");
        underlay.attach(&ns, Self::IP);
        let etcd = Etcd {
            child: Mutex::new(None),
            ns,
            dir: temp_dir("etcd"),
            tls: None,
        };
        etcd.start();
        etcd
    }

    /// Like [`Etcd::new`], but nodes must speak TLS with a client certificate signed by
    /// `tls.ca`; [`Etcd::etcdctl`] keeps plain HTTP on 127.0.0.1 inside etcd's namespace.
    pub fn new_tls(underlay: &Underlay, tls: EtcdTls) -> Etcd {
        let ns = Netns::new("etcd");
        underlay.attach(&ns, Self::IP);
        let etcd = Etcd {
            child: Mutex::new(None),
            ns,
            dir: temp_dir("etcd"),
            tls: Some(tls),
        };
        etcd.start();
        etcd
    }

    /// `http://192.0.2.254:2379` (`https://` for [`Etcd::new_tls`]), the client URL for nodes.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:2379", Self::IP)
    }

    /// The etcd namespace.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// etcd's log so far.
    pub fn log(&self) -> String {
        read_to_string_lossy(&self.log_path())
    }

    /// Starts etcd (same data dir as before) and waits until it serves requests.
    pub fn start(&self) {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        assert!(
            guard.is_none(),
            "etcd in {} is already running",
            self.ns.name()
        );
        let data = self.dir.path().join("data");
        let data = data.to_string_lossy();
        let client_urls = format!("{},http://127.0.0.1:2379", self.endpoint());
        log_marker(&self.log_path(), "start etcd");
        let (out, err) = log_stdio(&self.log_path());
        let mut cmd = self.ns.command("etcd");
        cmd.args([
            "--name",
            "weft-test",
            "--data-dir",
            &data,
            "--listen-client-urls",
            &client_urls,
            "--advertise-client-urls",
            &self.endpoint(),
            "--listen-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2380",
            "--initial-cluster",
            "weft-test=http://127.0.0.1:2380",
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
        ]);
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => panic!("cannot spawn etcd {cmd:?}: {e}"),
        };
        *guard = Some(child);
        drop(guard);
        let start = Instant::now();
        loop {
            let out = self.etcdctl(&["get", "--", "/weft-harness-ping"]);
            if out.status.success() {
                return;
            }
            if start.elapsed() > Duration::from_secs(30) {
                panic!(
                    "etcd in {} not serving after 30 s: {}\netcd log:\n{}",
                    self.ns.name(),
                    String::from_utf8_lossy(&out.stderr),
                    tail(&self.log(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops etcd (SIGTERM, wait); the data dir is kept for [`Etcd::start`].
    pub fn stop(&self) {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut child) = guard.take() {
            terminate(&mut child, "etcd", Duration::from_secs(10));
        }
    }

    /// Runs `etcdctl args..` (API v3) against this etcd, from inside its namespace.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        let mut cmd = self.ns.command("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                "http://127.0.0.1:2379",
                "--dial-timeout",
                "2s",
                "--command-timeout",
                "5s",
            ])
            .args(args);
        output_of(&mut cmd)
    }

    fn etcdctl_ok(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        if !out.status.success() {
            panic!(
                "etcdctl {} failed: {}\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn etcdctl_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["-w", "json"];
        all.extend_from_slice(args);
        let out = self.etcdctl_ok(&all);
        match serde_json::from_str(&out) {
            Ok(v) => v,
            Err(e) => panic!("etcdctl {}: invalid JSON ({e}): {out}", args.join(" ")),
        }
    }

    /// Puts `key` = `value` with no etcd lease (for subnets: a reservation).
    pub fn put(&self, key: &str, value: &str) {
        self.etcdctl_ok(&["put", "--", key, value]);
    }

    /// Grants an etcd lease of `ttl_secs`, puts `key` = `value` under it, returns the lease id.
    pub fn put_with_ttl(&self, key: &str, value: &str, ttl_secs: u64) -> i64 {
        let grant = self.etcdctl_json(&["lease", "grant", &ttl_secs.to_string()]);
        let id = grant["ID"]
            .as_i64()
            .unwrap_or_else(|| panic!("etcdctl lease grant {ttl_secs}: no ID in {grant}"));
        self.etcdctl_ok(&["put", &format!("--lease={id:x}"), "--", key, value]);
        id
    }

    /// The value of `key`, exactly as stored.
    pub fn get(&self, key: &str) -> Option<String> {
        self.get_kv(key).map(|kv| kv.value)
    }

    /// `key` with its lease and revisions.
    pub fn get_kv(&self, key: &str) -> Option<Kv> {
        self.kvs(&["get", "--", key]).into_iter().next()
    }

    /// Every key under `prefix`, sorted by key, with its value.
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        self.get_prefix_kv(prefix)
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect()
    }

    /// Every key under `prefix`, sorted by key, with lease and revisions.
    pub fn get_prefix_kv(&self, prefix: &str) -> Vec<Kv> {
        self.kvs(&["get", "--prefix", "--", prefix])
    }

    fn kvs(&self, args: &[&str]) -> Vec<Kv> {
        let v = self.etcdctl_json(args);
        let Some(kvs) = v["kvs"].as_array() else {
            return Vec::new();
        };
        let b64 = |field: &Value| -> String {
            let s = field.as_str().unwrap_or_default();
            match base64::engine::general_purpose::STANDARD.decode(s) {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(e) => panic!("etcdctl {}: bad base64 {s:?}: {e}", args.join(" ")),
            }
        };
        kvs.iter()
            .map(|kv| Kv {
                key: b64(&kv["key"]),
                value: b64(&kv["value"]),
                lease: kv["lease"].as_i64().unwrap_or(0),
                create_revision: kv["create_revision"].as_i64().unwrap_or(0),
                mod_revision: kv["mod_revision"].as_i64().unwrap_or(0),
            })
            .collect()
    }

    /// Deletes `key`; true if it existed.
    pub fn del(&self, key: &str) -> bool {
        self.etcdctl_json(&["del", "--", key])["deleted"]
            .as_i64()
            .unwrap_or(0)
            > 0
    }

    /// Revokes an etcd lease (its keys disappear at once).
    pub fn revoke(&self, lease: i64) {
        self.etcdctl_ok(&["lease", "revoke", &format!("{lease:x}")]);
    }

    /// Remaining TTL in seconds of etcd lease `lease`, None if it has expired or never existed.
    pub fn lease_ttl(&self, lease: i64) -> Option<i64> {
        let v = self.etcdctl_json(&["lease", "timetolive", &format!("{lease:x}")]);
        v["ttl"].as_i64().filter(|ttl| *ttl >= 0)
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        let v = self.etcdctl_json(&["get", "--", "/weft-harness-ping"]);
        v["header"]["revision"]
            .as_i64()
            .unwrap_or_else(|| panic!("etcdctl get: no header.revision in {v}"))
    }

    /// Compacts history up to the current revision (watchers on older revisions get `compacted`).
    pub fn compact(&self) {
        let rev = self.revision();
        self.etcdctl_ok(&["compact", "--physical", &rev.to_string()]);
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut child) = guard.take() {
            kill_and_reap(&mut child);
        }
        if std::thread::panicking() {
            eprintln!(
                "----- etcd log ({}), last 30 lines -----\n{}",
                self.ns.name(),
                tail(&self.log(), 30)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// How weftd was started on a node, for restarts.
#[derive(Debug, Clone)]
struct Launch {
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

/// A node: a namespace on the underlay at `192.0.2.(10+index)` running (when started) the real
/// `weftd` with `--iface eth0`, its subnet file, state dir and log in a per-node temp dir.
#[derive(Debug)]
pub struct Node {
    weftd: Mutex<Option<Child>>,
    launch: Mutex<Option<Launch>>,
    pods: AtomicU32,
    index: u32,
    ip: String,
    etcd_endpoint: String,
    ns: Netns,
    dir: tempfile::TempDir,
}

impl Node {
    /// Port of weftd's `--healthz-addr` (on 127.0.0.1 inside each node namespace).
    pub const HEALTHZ_PORT: u16 = 9102;

    /// Creates node `index` (1-based) at 192.0.2.(10+index) on `underlay`, with IP forwarding on.
    pub fn new(underlay: &Underlay, index: u32, etcd_endpoint: &str) -> Node {
        assert!(
            (1..=200).contains(&index),
            "node index {index} out of 1..=200"
        );
        let ns = Netns::new(&format!("node{index}"));
        let ip = format!("192.0.2.{}", 10 + index);
        underlay.attach(&ns, &ip);
        ns.sysctl("net.ipv4.ip_forward", "1");
        let dir = temp_dir(&format!("node{index}"));
        Node {
            weftd: Mutex::new(None),
            launch: Mutex::new(None),
            pods: AtomicU32::new(0),
            index,
            ip,
            etcd_endpoint: etcd_endpoint.to_string(),
            ns,
            dir,
        }
    }

    /// The node's index (1-based).
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        self.ns.name()
    }

    /// The node namespace.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// The node's underlay address (its Flannel `PublicIP`).
    pub fn public_ip(&self) -> &str {
        &self.ip
    }

    /// The per-node temp dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `--subnet-file`.
    pub fn subnet_file(&self) -> PathBuf {
        self.dir.path().join("subnet.env")
    }

    /// `--state-dir`.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// weftd's stdout+stderr, appended across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("weftd.log")
    }

    /// weftd's log so far.
    pub fn log(&self) -> String {
        read_to_string_lossy(&self.log_path())
    }

    /// The last `n` lines of weftd's log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log(), n)
    }

    /// The argument vector weftd is started with (before `extra_args`).
    pub fn base_args(&self) -> Vec<String> {
        vec![
            "--etcd-endpoints".into(),
            self.etcd_endpoint.clone(),
            "--iface".into(),
            "eth0".into(),
            "--subnet-file".into(),
            self.subnet_file().to_string_lossy().into_owned(),
            "--state-dir".into(),
            self.state_dir().to_string_lossy().into_owned(),
            "--healthz-addr".into(),
            format!("127.0.0.1:{}", Self::HEALTHZ_PORT),
        ]
    }

    /// Starts the real weftd in the node namespace with [`Node::base_args`] + `extra_args`.
    /// `RUST_LOG` is taken from `WEFT_TEST_LOG` (default `info,weft=debug`).
    pub fn start_weftd(&self, extra_args: &[&str]) {
        let mut args = self.base_args();
        args.extend(extra_args.iter().map(|a| a.to_string()));
        self.launch_weftd(Launch {
            args,
            envs: Vec::new(),
        });
    }

    /// Starts weftd with no command-line arguments at all, configured only by `envs`
    /// (`WEFTD_<FLAG>` variables); log and restart as with [`Node::start_weftd`].
    pub fn start_weftd_env(&self, envs: &[(&str, &str)]) {
        self.launch_weftd(Launch {
            args: Vec::new(),
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        });
    }

    fn launch_weftd(&self, launch: Launch) {
        self.spawn_weftd(&launch);
        *self.launch.lock().unwrap_or_else(|p| p.into_inner()) = Some(launch);
    }

    fn spawn_weftd(&self, launch: &Launch) {
        let Launch { args, envs } = launch;
        let mut guard = self.weftd.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(child) = guard.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                panic!("weftd on {} is already running", self.name());
            }
        }
        let env_text: Vec<String> = envs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        log_marker(
            &self.log_path(),
            &format!("start weftd {} {}", env_text.join(" "), args.join(" ")),
        );
        let (out, err) = log_stdio(&self.log_path());
        let level = std::env::var("WEFT_TEST_LOG").unwrap_or_else(|_| "info,weft=debug".into());
        let mut cmd = self.ns.command(env!("CARGO_BIN_EXE_weftd"));
        cmd.args(args)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", level)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        match cmd.spawn() {
            Ok(child) => *guard = Some(child),
            Err(e) => panic!("cannot spawn weftd {cmd:?}: {e}"),
        }
    }

    /// True while weftd runs.
    pub fn is_running(&self) -> bool {
        let mut guard = self.weftd.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The pid of the weftd process last started (running or not yet reaped).
    pub fn weftd_pid(&self) -> Option<u32> {
        let guard = self.weftd.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().map(Child::id)
    }

    /// weftd's exit status if it has exited (None while running or never started).
    pub fn exit_status(&self) -> Option<ExitStatus> {
        let mut guard = self.weftd.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILLs weftd (no cleanup runs), and reaps it.
    pub fn kill9(&self) {
        let mut guard = self.weftd.lock().unwrap_or_else(|p| p.into_inner());
        match guard.take() {
            Some(mut child) => {
                kill_and_reap(&mut child);
                log_marker(&self.log_path(), "weftd killed with SIGKILL");
            }
            None => panic!("kill9: weftd on {} was never started", self.name()),
        }
    }

    /// SIGTERMs weftd and waits (10 s) for it to exit; returns its exit status.
    pub fn stop(&self) -> ExitStatus {
        let mut guard = self.weftd.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mut child) = guard.take() else {
            panic!("stop: weftd on {} was never started", self.name());
        };
        let status = terminate(
            &mut child,
            &format!("weftd on {}", self.name()),
            Duration::from_secs(10),
        );
        log_marker(&self.log_path(), &format!("weftd exited: {status}"));
        status
    }

    /// Starts weftd again with the arguments of the last [`Node::start_weftd`] (stopping it first
    /// with SIGTERM if it still runs).
    pub fn restart(&self) {
        if self.is_running() {
            self.stop();
        }
        let launch = self
            .launch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match launch {
            Some(launch) => self.spawn_weftd(&launch),
            None => panic!("restart: weftd on {} was never started", self.name()),
        }
    }

    /// The subnet file's content, if it exists.
    pub fn subnet_env(&self) -> Option<String> {
        std::fs::read_to_string(self.subnet_file()).ok()
    }

    /// Waits for the subnet file and returns its content.
    /// Fails at once, with the log tail, if weftd exits before writing it.
    pub fn wait_subnet_env(&self, timeout: Duration) -> String {
        self.wait_for(timeout, "subnet.env to be written", || {
            let env = self.subnet_env();
            if env.is_none() {
                if let Some(status) = self.exit_status() {
                    panic!(
                        "weftd on {} exited with {status} before writing subnet.env\n----- weftd log, last 40 lines -----\n{}",
                        self.name(),
                        self.log_tail(40)
                    );
                }
            }
            env
        })
    }

    /// The node's subnet (`10.244.3.0/24`) from its subnet file.
    pub fn subnet(&self) -> Option<String> {
        self.subnet_env().as_deref().and_then(subnet_of)
    }

    /// The etcd key of this node's lease, from its subnet file.
    pub fn lease_key(&self) -> Option<String> {
        self.subnet().map(|s| lease_key(&s))
    }

    /// Like [`wait_until`], but prints weftd's log tail when it times out.
    pub fn wait_until(&self, timeout: Duration, what: &str, predicate: impl FnMut() -> bool) {
        let mut predicate = predicate;
        self.wait_for(timeout, what, || predicate().then_some(()))
    }

    /// Like [`wait_for`], but prints weftd's log tail when it times out.
    pub fn wait_for<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut probe: impl FnMut() -> Option<T>,
    ) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = probe() {
                return v;
            }
            if start.elapsed() > timeout {
                let state = match self.exit_status() {
                    Some(s) => format!("weftd exited with {s} (signal {:?})", s.signal()),
                    None if self.is_running() => "weftd running".to_string(),
                    None => "weftd not running".to_string(),
                };
                panic!(
                    "timed out after {timeout:?} on {} waiting for {what} ({state})\n----- weftd log, last 40 lines -----\n{}",
                    self.name(),
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `ip -j route show` (main table).
    pub fn routes(&self) -> Vec<Value> {
        self.ns.ip_json(&["route", "show"])
    }

    /// The route whose `dst` is `subnet` (`10.244.3.0/24`), if any.
    pub fn route_to(&self, subnet: &str) -> Option<Value> {
        self.routes()
            .into_iter()
            .find(|r| r["dst"].as_str() == Some(subnet))
    }

    /// `ip -j neigh show` (all devices).
    pub fn neighbours(&self) -> Vec<Value> {
        self.ns.ip_json(&["neigh", "show"])
    }

    /// `bridge -j fdb show` (all devices).
    pub fn fdb(&self) -> Vec<Value> {
        self.ns.bridge_json(&["fdb", "show"])
    }

    /// `ip -j -d link show dev NAME`, if the device exists.
    pub fn link(&self, name: &str) -> Option<Value> {
        let out = self
            .ns
            .exec(&["ip", "-j", "-d", "link", "show", "dev", name]);
        if !out.status.success() {
            return None;
        }
        parse_json_list(&String::from_utf8_lossy(&out.stdout), "ip -j -d link show")
            .into_iter()
            .next()
    }

    /// The MAC address of device `dev` (e.g. `flannel.1`), if it exists.
    pub fn mac_of(&self, dev: &str) -> Option<String> {
        self.link(dev)
            .and_then(|l| l["address"].as_str().map(str::to_string))
    }

    /// True if the three Flannel VXLAN entries for a peer exist on `dev`, exactly: route
    /// `subnet via X.0 dev DEV onlink`, permanent neighbour `X.0 lladdr MAC`, FDB `MAC dst PUBLIC_IP`.
    pub fn vxlan_peer_programmed(
        &self,
        dev: &str,
        subnet: &str,
        public_ip: &str,
        mac: &str,
    ) -> bool {
        let gw = subnet_address(subnet);
        let route_ok = self.route_to(subnet).is_some_and(|r| {
            r["gateway"].as_str() == Some(gw.as_str())
                && r["dev"].as_str() == Some(dev)
                && r["flags"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|x| x == "onlink"))
        });
        let neigh_ok = self.neighbours().iter().any(|n| {
            n["dst"].as_str() == Some(gw.as_str())
                && n["dev"].as_str() == Some(dev)
                && n["lladdr"].as_str() == Some(mac)
                && n["state"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|x| x == "PERMANENT"))
        });
        let fdb_ok = self.fdb().iter().any(|f| {
            f["mac"].as_str() == Some(mac)
                && f["ifname"].as_str() == Some(dev)
                && f["dst"].as_str() == Some(public_ip)
        });
        route_ok && neigh_ok && fdb_ok
    }

    /// True if none of a peer's entries is left: no route to `subnet`, no neighbour for its
    /// `X.0`, no FDB entry for `mac` (on any device).
    pub fn vxlan_peer_absent(&self, subnet: &str, mac: &str) -> bool {
        let gw = subnet_address(subnet);
        self.route_to(subnet).is_none()
            && !self
                .neighbours()
                .iter()
                .any(|n| n["dst"].as_str() == Some(gw.as_str()))
            && !self.fdb().iter().any(|f| f["mac"].as_str() == Some(mac))
    }

    /// `nft list ruleset` inside the node.
    pub fn nft_ruleset(&self) -> String {
        self.ns.exec_ok(&["nft", "list", "ruleset"])
    }

    /// Waits until weftd's `/readyz` answers 200.
    pub fn wait_ready(&self, timeout: Duration) {
        self.wait_until(timeout, "/readyz to answer 200", || {
            self.http_get("/readyz")
                .is_some_and(|(code, _)| code == 200)
        })
    }

    /// GET `path` from weftd's healthz server; `(status code, body)`, None if not reachable.
    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, Self::HEALTHZ_PORT));
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        let stream = self
            .ns
            .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)));
        let mut stream = stream.ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream.write_all(request.as_bytes()).ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).ok()?;
        let response = String::from_utf8_lossy(&response).into_owned();
        let status = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((status, body))
    }

    /// A pod wired into this node's subnet as written in subnet.env (gateway + MTU from it).
    pub fn add_pod(&self) -> Pod {
        let env = self.subnet_env().unwrap_or_else(|| {
            panic!(
                "add_pod on {}: no subnet.env yet (weftd not ready)",
                self.name()
            )
        });
        let vars: BTreeMap<&str, &str> = env.lines().filter_map(|l| l.split_once('=')).collect();
        let gateway = vars
            .get("FLANNEL_SUBNET")
            .copied()
            .unwrap_or_else(|| panic!("add_pod on {}: no FLANNEL_SUBNET in {env:?}", self.name()));
        let mtu = vars
            .get("FLANNEL_MTU")
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("add_pod on {}: no FLANNEL_MTU in {env:?}", self.name()));
        self.add_pod_in(gateway, mtu)
    }

    /// A pod wired by hand: bridge `cni0` in the node with `gateway` (`10.244.3.1/24`, created
    /// if missing), a veth into a new pod namespace, the pod's address `.(10+k)` of that subnet,
    /// MTU `mtu`, default route via the gateway.
    pub fn add_pod_in(&self, gateway: &str, mtu: u32) -> Pod {
        let gw: Ipv4Network = gateway
            .parse()
            .unwrap_or_else(|e| panic!("add_pod_in {}: bad gateway {gateway:?}: {e}", self.name()));
        let k = self.pods.fetch_add(1, Ordering::Relaxed);
        let ip = Ipv4Addr::from(u32::from(gw.network()) + 10 + k);
        assert!(
            gw.contains(ip),
            "add_pod_in {}: subnet {gateway} is full",
            self.name()
        );
        let pod = Pod {
            ns: Netns::new(&format!("n{}p{k}", self.index)),
            ip: ip.to_string(),
        };
        wire_pod(
            &self.ns,
            &pod.ns,
            &format!("vp{k}"),
            gateway,
            &format!("{ip}/{}", gw.prefix()),
            mtu,
        );
        pod
    }
}

/// Wires `pod` to `node`: bridge `cni0` with `gateway` (created if missing) in the node, veth
/// `host_veth` on it whose other end is `eth0` in the pod with `pod_cidr`, MTU, default route.
pub fn wire_pod(
    node: &Netns,
    pod: &Netns,
    host_veth: &str,
    gateway: &str,
    pod_cidr: &str,
    mtu: u32,
) {
    let mtu = mtu.to_string();
    let has_bridge = node
        .exec(&["ip", "link", "show", "dev", "cni0"])
        .status
        .success();
    if !has_bridge {
        node.ip(&["link", "add", "cni0", "mtu", &mtu, "type", "bridge"]);
        node.ip(&["addr", "add", gateway, "dev", "cni0"]);
        node.ip(&["link", "set", "cni0", "up"]);
    }
    node.ip(&[
        "link",
        "add",
        host_veth,
        "mtu",
        &mtu,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        pod.name(),
    ]);
    node.ip(&["link", "set", host_veth, "master", "cni0", "up"]);
    pod.ip(&["addr", "add", pod_cidr, "dev", "eth0"]);
    pod.ip(&["link", "set", "eth0", "up"]);
    let gw_ip = gateway.split('/').next().unwrap_or(gateway);
    pod.ip(&["route", "add", "default", "via", gw_ip]);
}

impl Drop for Node {
    fn drop(&mut self) {
        let mut guard = self.weftd.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut child) = guard.take() {
            kill_and_reap(&mut child);
        }
        if std::thread::panicking() {
            eprintln!(
                "----- weftd log of {} ({}), last 40 lines -----\n{}",
                self.name(),
                self.ip,
                self.log_tail(40)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// A pod: a namespace with `eth0` on its node's `cni0` bridge.
#[derive(Debug)]
pub struct Pod {
    ns: Netns,
    ip: String,
}

impl Pod {
    /// The pod's address.
    pub fn ip(&self) -> &str {
        &self.ip
    }

    /// The pod namespace.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// Runs a command inside the pod.
    pub fn exec(&self, args: &[&str]) -> Output {
        self.ns.exec(args)
    }

    /// True if a TCP connection from this pod to `other` carries a message both ways (3 s budget).
    pub fn tcp_check(&self, other: &Pod) -> bool {
        let listener = other
            .ns
            .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)));
        let listener = match listener {
            Ok(l) => l,
            Err(e) => panic!("bind in pod {}: {e}", other.ns.name()),
        };
        let port = match listener.local_addr() {
            Ok(a) => a.port(),
            Err(e) => panic!("listener address in pod {}: {e}", other.ns.name()),
        };
        let server = std::thread::spawn(move || serve_echo_once(&listener, Duration::from_secs(3)));
        let ip: Ipv4Addr = other
            .ip
            .parse()
            .unwrap_or_else(|e| panic!("pod {} address {:?}: {e}", other.ns.name(), other.ip));
        let target = SocketAddr::from((ip, port));
        let ok = self
            .ns
            .run(|| TcpStream::connect_timeout(&target, Duration::from_secs(3)))
            .ok()
            .is_some_and(|s| round_trip(s, b"weft-tcp-check", Duration::from_secs(3)));
        let served = server.join().unwrap_or(false);
        ok && served
    }

    /// Starts a numbered UDP datagram every 50 ms from this pod to `other`, echoed back; counts loss.
    pub fn traffic_probe(&self, other: &Pod) -> TrafficProbe {
        TrafficProbe::start(&self.ns, &other.ns, &other.ip)
    }
}

/// The source address the listener in `to` sees for a TCP connection from `from` to `to_ip`
/// (e.g. to check masquerading); None if the connection fails within 3 s.
pub fn tcp_source_seen(from: &Netns, to: &Netns, to_ip: &str) -> Option<Ipv4Addr> {
    let listener = match to.run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))) {
        Ok(l) => l,
        Err(e) => panic!("bind in {}: {e}", to.name()),
    };
    let port = match listener.local_addr() {
        Ok(a) => a.port(),
        Err(e) => panic!("listener address in {}: {e}", to.name()),
    };
    let ip: Ipv4Addr = to_ip
        .parse()
        .unwrap_or_else(|e| panic!("tcp_source_seen: bad address {to_ip:?}: {e}"));
    let server = std::thread::spawn(move || -> Option<SocketAddr> {
        listener.set_nonblocking(true).ok()?;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            match listener.accept() {
                Ok((_, peer)) => return Some(peer),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        None
    });
    let connected = from
        .run(|| TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_secs(3)))
        .is_ok();
    let peer = server.join().ok().flatten();
    match (connected, peer) {
        (true, Some(SocketAddr::V4(a))) => Some(*a.ip()),
        _ => None,
    }
}

/// Accepts one connection and echoes what it reads; false on timeout.
fn serve_echo_once(listener: &TcpListener, timeout: Duration) -> bool {
    if listener.set_nonblocking(true).is_err() {
        return false;
    }
    let start = Instant::now();
    loop {
        match listener.accept() {
            Ok((stream, _)) => return echo(stream, timeout),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if start.elapsed() > timeout {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => return false,
        }
    }
}

/// Reads up to 64 bytes and writes them back.
fn echo(mut stream: TcpStream, timeout: Duration) -> bool {
    let _ = stream.set_nonblocking(false);
    if stream.set_read_timeout(Some(timeout)).is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(n) if n > 0 => stream.write_all(&buf[..n]).is_ok(),
        _ => false,
    }
}

/// Sends `msg` and expects it echoed back.
fn round_trip(mut stream: TcpStream, msg: &[u8], timeout: Duration) -> bool {
    if stream.set_read_timeout(Some(timeout)).is_err() || stream.write_all(msg).is_err() {
        return false;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while got.len() < msg.len() {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got == msg
}

/// Counters of a [`TrafficProbe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProbeStats {
    /// Datagrams sent.
    pub attempts: u64,
    /// Datagrams lost: sent but never echoed back (a late echo is not a loss; after
    /// [`TrafficProbe::stop`] every echo still in flight has had 2 s to arrive).
    pub failures: u64,
    /// Longest time between two echoes received (how long traffic stood still).
    pub longest_gap: Duration,
}

/// Pod-to-pod traffic in the background that measures loss: a numbered UDP datagram every
/// 50 ms, echoed by the other pod; each sequence number is counted once when it comes back,
/// however late. A packet dropped anywhere is a failure; a slow path is only a gap.
#[derive(Debug)]
pub struct TrafficProbe {
    sender_stop: Arc<AtomicBool>,
    receiver_stop: Arc<AtomicBool>,
    server_stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    echoed: Arc<AtomicU64>,
    longest_gap_ms: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl TrafficProbe {
    fn start(from: &Netns, to: &Netns, to_ip: &str) -> TrafficProbe {
        use std::net::UdpSocket;
        let bind = |ns: &Netns| match ns.run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))) {
            Ok(s) => s,
            Err(e) => panic!("UDP bind in {}: {e}", ns.name()),
        };
        let server = bind(to);
        let client = bind(from);
        let port = match server.local_addr() {
            Ok(a) => a.port(),
            Err(e) => panic!("probe socket address in {}: {e}", to.name()),
        };
        let target: SocketAddr = match format!("{to_ip}:{port}").parse() {
            Ok(a) => a,
            Err(e) => panic!("probe target {to_ip}:{port}: {e}"),
        };
        let tick = Some(Duration::from_millis(50));
        for socket in [&server, &client] {
            if let Err(e) = socket.set_read_timeout(tick) {
                panic!("probe socket timeout: {e}");
            }
        }
        let receiver = match client.try_clone() {
            Ok(s) => s,
            Err(e) => panic!("clone probe socket: {e}"),
        };
        let (sender_stop, receiver_stop, server_stop) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (sent, echoed, longest_gap_ms) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let stop = server_stop.clone();
        let echo_server = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = server.recv_from(&mut buf) {
                    let _ = server.send_to(&buf[..n], peer);
                }
            }
        });
        let (stop, count) = (sender_stop.clone(), sent.clone());
        let send = std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let seq = count.load(Ordering::Relaxed);
                // A send error (no route yet) is a datagram lost like any other.
                let _ = client.send_to(&seq.to_be_bytes(), target);
                count.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let (stop, count, gap) = (
            receiver_stop.clone(),
            echoed.clone(),
            longest_gap_ms.clone(),
        );
        let receive = std::thread::spawn(move || {
            let mut seen = std::collections::HashSet::new();
            let mut last = Instant::now();
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                let Ok(n) = receiver.recv(&mut buf) else {
                    continue;
                };
                let Ok(bytes) = <[u8; 8]>::try_from(&buf[..n]) else {
                    continue;
                };
                if seen.insert(u64::from_be_bytes(bytes)) {
                    count.fetch_add(1, Ordering::Relaxed);
                    gap.fetch_max(last.elapsed().as_millis() as u64, Ordering::Relaxed);
                    last = Instant::now();
                }
            }
        });
        TrafficProbe {
            sender_stop,
            receiver_stop,
            server_stop,
            sent,
            echoed,
            longest_gap_ms,
            threads: vec![send, receive, echo_server],
        }
    }

    /// The counters so far (datagrams still in flight count as lost until they are echoed).
    pub fn stats(&self) -> ProbeStats {
        let attempts = self.sent.load(Ordering::Relaxed);
        ProbeStats {
            attempts,
            failures: attempts.saturating_sub(self.echoed.load(Ordering::Relaxed)),
            longest_gap: Duration::from_millis(self.longest_gap_ms.load(Ordering::Relaxed)),
        }
    }

    /// Waits until at least `n` more datagrams have been sent.
    pub fn wait_attempts(&self, n: u64) {
        let target = self.stats().attempts + n;
        wait_until(
            Duration::from_secs(n + 10),
            "traffic probe attempts",
            || self.stats().attempts >= target,
        );
    }

    /// Stops sending, gives the echoes in flight 2 s to arrive, and returns the final counters.
    pub fn stop(mut self) -> ProbeStats {
        self.sender_stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.stats().failures > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.halt();
        self.stats()
    }

    fn halt(&mut self) {
        for flag in [&self.sender_stop, &self.receiver_stop, &self.server_stop] {
            flag.store(true, Ordering::Relaxed);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for TrafficProbe {
    fn drop(&mut self) {
        self.halt();
    }
}

// ---------------------------------------------------------------------------------------------

/// A test cluster: underlay, etcd with the network config, and nodes (weftd not yet started).
/// Fields drop in order: nodes (weftd killed) first, then etcd, then the underlay.
#[derive(Debug)]
pub struct Cluster {
    /// The nodes, index i is node i+1 at 192.0.2.(11+i).
    pub nodes: Vec<Node>,
    /// The cluster's etcd.
    pub etcd: Etcd,
    /// The underlay every node and etcd hangs on.
    pub underlay: Underlay,
}

impl Cluster {
    /// Creates the underlay, etcd with `config_json` at [`NETWORK_CONFIG_KEY`] (unless empty),
    /// and `n_nodes` nodes.
    pub fn new(n_nodes: u32, config_json: &str) -> Cluster {
        let underlay = Underlay::new();
        let etcd = Etcd::new(&underlay);
        if !config_json.is_empty() {
            etcd.put(NETWORK_CONFIG_KEY, config_json);
        }
        let mut cluster = Cluster {
            nodes: Vec::new(),
            etcd,
            underlay,
        };
        for _ in 0..n_nodes {
            cluster.add_node();
        }
        cluster
    }

    /// Adds one more node (not started).
    pub fn add_node(&mut self) -> &Node {
        let index = self.nodes.len() as u32 + 1;
        let node = Node::new(&self.underlay, index, &self.etcd.endpoint());
        self.nodes.push(node);
        &self.nodes[self.nodes.len() - 1]
    }

    /// Node `i` (0-based).
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// Starts weftd on every node and waits (30 s) until each has written subnet.env.
    pub fn start(&self) {
        for node in &self.nodes {
            node.start_weftd(&[]);
        }
        for node in &self.nodes {
            node.wait_subnet_env(Duration::from_secs(30));
        }
    }

    /// Replaces node `i`'s underlay interface as when a bond or a NIC driver is re-created:
    /// deletes `eth0` and attaches a new one with the same name and address (a new index).
    /// Pods on node `i` and the next node must talk before and, without a weftd restart,
    /// again after; weftd must log that it followed the interface.
    pub fn replace_external_interface_under_traffic(&self, i: usize) {
        let (n1, n2) = (self.node(i), self.node((i + 1) % self.nodes.len()));
        let a = n1.add_pod();
        let b = n2.add_pod();
        wait_until(Duration::from_secs(20), "pods talk", || a.tcp_check(&b));
        let old_index = n1.link("eth0").map(|l| l["ifindex"].clone());
        n1.netns().ip(&["link", "del", "eth0"]);
        // Back with another MTU: the pods' MTU in subnet.env must follow.
        self.underlay
            .attach_with_mtu(n1.netns(), n1.public_ip(), 1400);
        let new_index = n1.link("eth0").map(|l| l["ifindex"].clone());
        assert_ne!(old_index, new_index, "eth0 kept its index");
        n1.wait_until(
            Duration::from_secs(20),
            "weftd following the new eth0",
            || n1.log().contains("external interface is back"),
        );
        wait_until(
            Duration::from_secs(20),
            "pods talk again over the new eth0",
            || a.tcp_check(&b) && b.tcp_check(&a),
        );
        assert!(n1.is_running(), "weftd exited");
        let mtu = |env: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix("FLANNEL_MTU="))
                .and_then(|v| v.parse::<u32>().ok())
        };
        n1.wait_until(
            Duration::from_secs(10),
            "subnet.env with the new interface's MTU",
            || {
                let env = n1.subnet_env().unwrap_or_default();
                // VXLAN 1400 - 50, UDP 1400 - 28, host-gw 1400.
                matches!(mtu(&env), Some(1350 | 1372 | 1400))
            },
        );
    }

    /// Waits until every node has a route to every other node's subnet.
    pub fn wait_mesh(&self, timeout: Duration) {
        let subnets: Vec<String> = self
            .nodes
            .iter()
            .map(|n| {
                n.subnet()
                    .unwrap_or_else(|| panic!("wait_mesh: {} has no subnet.env", n.name()))
            })
            .collect();
        for (i, node) in self.nodes.iter().enumerate() {
            for (j, subnet) in subnets.iter().enumerate() {
                if i != j {
                    node.wait_until(timeout, &format!("route to {subnet}"), || {
                        node.route_to(subnet).is_some()
                    });
                }
            }
        }
    }

    /// A text dump of leases and every node's routes, neighbours and FDB (for failure messages).
    pub fn dump(&self) -> String {
        let mut s = String::new();
        for (k, v) in self.etcd.get_prefix(&format!("{ETCD_PREFIX}/subnets/")) {
            s.push_str(&format!("lease {k} = {v}\n"));
        }
        for node in &self.nodes {
            s.push_str(&format!(
                "{} {} routes {:?}\n  neigh {:?}\n  fdb {:?}\n",
                node.name(),
                node.public_ip(),
                node.routes(),
                node.neighbours(),
                node.fdb()
            ));
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------

/// One member of an [`EtcdCluster`]: a real etcd in its own namespace on the underlay.
#[derive(Debug)]
pub struct EtcdMember {
    child: Mutex<Option<Child>>,
    partitioned: AtomicBool,
    name: String,
    ip: String,
    initial_cluster: String,
    /// Shared by the members of one cluster, unique per test.
    cluster_token: String,
    ns: Netns,
    dir: tempfile::TempDir,
}

impl EtcdMember {
    /// The member's name (`m0`, `m1`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The member's underlay address.
    pub fn ip(&self) -> &str {
        &self.ip
    }

    /// `http://IP:2379`.
    pub fn endpoint(&self) -> String {
        format!("http://{}:2379", self.ip)
    }

    /// The member's namespace.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// The member's log so far.
    pub fn log(&self) -> String {
        read_to_string_lossy(&self.log_path())
    }

    /// True while the etcd process runs.
    pub fn is_running(&self) -> bool {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// True while [`EtcdCluster::partition`] cuts the member off.
    pub fn is_partitioned(&self) -> bool {
        self.partitioned.load(Ordering::Relaxed)
    }

    /// Spawns etcd (same data dir every time) without waiting for it to serve: a member of a
    /// cluster serves only once a quorum is up.
    fn spawn(&self) {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(child) = guard.as_mut() {
            assert!(
                !matches!(child.try_wait(), Ok(None)),
                "etcd member {} is already running",
                self.name
            );
        }
        let data = self.dir.path().join("data");
        let data = data.to_string_lossy();
        let client_urls = format!("{},http://127.0.0.1:2379", self.endpoint());
        let peer_url = format!("http://{}:2380", self.ip);
        log_marker(&self.log_path(), "start etcd member");
        let (out, err) = log_stdio(&self.log_path());
        let mut cmd = self.ns.command("etcd");
        cmd.args([
            "--name",
            &self.name,
            "--data-dir",
            &data,
            "--listen-client-urls",
            &client_urls,
            "--advertise-client-urls",
            &self.endpoint(),
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &self.initial_cluster,
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            &self.cluster_token,
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
        ])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
        match cmd.spawn() {
            Ok(child) => *guard = Some(child),
            Err(e) => panic!("cannot spawn etcd member {} {cmd:?}: {e}", self.name),
        }
    }

    /// SIGKILLs the member (no clean shutdown) and reaps it.
    fn kill(&self) {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        match guard.take() {
            Some(mut child) => {
                kill_and_reap(&mut child);
                log_marker(&self.log_path(), "etcd member killed with SIGKILL");
            }
            None => panic!("etcd member {} is not running", self.name),
        }
    }

    /// `etcdctl args..` from inside this member's namespace against `endpoints`.
    fn etcdctl(&self, endpoints: &str, args: &[&str]) -> Output {
        let mut cmd = self.ns.command("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                endpoints,
                "--dial-timeout",
                "2s",
                "--command-timeout",
                "5s",
            ])
            .args(args);
        output_of(&mut cmd)
    }

    /// This member's `endpoint status` (member id, leader id, raft term), asked on 127.0.0.1.
    fn status(&self) -> Option<Value> {
        let out = self.etcdctl(
            "http://127.0.0.1:2379",
            &["endpoint", "status", "-w", "json"],
        );
        if !out.status.success() {
            return None;
        }
        let list = serde_json::from_slice::<Value>(&out.stdout).ok()?;
        list.as_array()?.first().map(|s| s["Status"].clone())
    }

    /// A value of etcd's Prometheus metrics (`/metrics` on the member's client port), summed
    /// over its label sets; None if the member does not answer.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 2379));
        let text = self.ns.run(|| -> Option<String> {
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
            stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            let request = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
            stream.write_all(request.as_bytes()).ok()?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response).ok()?;
            Some(String::from_utf8_lossy(&response).into_owned())
        })?;
        let values: Vec<f64> = text
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }
}

/// A real etcd cluster of several members, member `i` in its own namespace on the underlay at
/// 192.0.2.(251+i), for fault tests: kill the leader, partition a member with nftables inside
/// its namespace, stop every member and bring them back.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<EtcdMember>,
}

impl EtcdCluster {
    /// The address of member 0; member `i` is at this + `i`.
    pub const FIRST_IP: u8 = 251;

    /// Starts `n` members (at most 3) on `underlay` and waits until the cluster serves writes.
    pub fn new(underlay: &Underlay, n: u8) -> EtcdCluster {
        assert!((1..=3).contains(&n), "an etcd cluster of {n} members");
        let ips: Vec<String> = (0..n)
            .map(|i| format!("192.0.2.{}", Self::FIRST_IP + i))
            .collect();
        let initial_cluster = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| format!("m{i}=http://{ip}:2380"))
            .collect::<Vec<_>>()
            .join(",");
        let cluster_token = unique_name("etcd-cluster");
        let members = ips
            .into_iter()
            .enumerate()
            .map(|(i, ip)| {
                let ns = Netns::new(&format!("etcd{i}"));
                underlay.attach(&ns, &ip);
                EtcdMember {
                    child: Mutex::new(None),
                    partitioned: AtomicBool::new(false),
                    name: format!("m{i}"),
                    ip,
                    initial_cluster: initial_cluster.clone(),
                    cluster_token: cluster_token.clone(),
                    ns,
                    dir: temp_dir(&format!("etcd{i}")),
                }
            })
            .collect();
        let cluster = EtcdCluster { members };
        cluster.start_all();
        cluster
    }

    /// Every client URL, comma-separated, as `--etcd-endpoints` takes them.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(EtcdMember::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Member `i`.
    pub fn member(&self, i: usize) -> &EtcdMember {
        &self.members[i]
    }

    /// The members.
    pub fn members(&self) -> &[EtcdMember] {
        &self.members
    }

    /// Starts every member that is not running at once (a lone member cannot serve) and waits
    /// (30 s) until a write goes through.
    pub fn start_all(&self) {
        for m in &self.members {
            if !m.is_running() {
                m.spawn();
            }
        }
        self.wait_serving(Duration::from_secs(30));
    }

    /// Waits until a quorum answers: a write through the cluster succeeds.
    pub fn wait_serving(&self, timeout: Duration) {
        let start = Instant::now();
        loop {
            let out = self.etcdctl(&["put", "--", "/weft-harness-ping", "x"]);
            if out.status.success() {
                return;
            }
            if start.elapsed() > timeout {
                panic!(
                    "etcd cluster not serving after {timeout:?}: {}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    self.logs_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts member `i` again (same data dir) without waiting.
    pub fn start(&self, i: usize) {
        self.members[i].spawn();
    }

    /// SIGKILLs member `i`.
    pub fn kill(&self, i: usize) {
        self.members[i].kill();
    }

    /// SIGKILLs every running member.
    pub fn kill_all(&self) {
        for m in &self.members {
            if m.is_running() {
                m.kill();
            }
        }
    }

    /// The index of the current leader, as the running, reachable members see it (they must
    /// agree).
    pub fn leader(&self) -> Option<usize> {
        let statuses: Vec<(usize, Value)> = self
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.is_running() && !m.is_partitioned())
            .filter_map(|(i, m)| Some((i, m.status()?)))
            .collect();
        let leader_id = statuses.first()?.1["leader"].as_u64()?;
        if statuses
            .iter()
            .any(|(_, s)| s["leader"].as_u64() != Some(leader_id))
        {
            return None;
        }
        statuses
            .iter()
            .find(|(_, s)| s["header"]["member_id"].as_u64() == Some(leader_id))
            .map(|(i, _)| *i)
    }

    /// Waits (10 s) for an agreed leader and returns its index.
    pub fn wait_leader(&self) -> usize {
        wait_for(Duration::from_secs(10), "an etcd leader", || self.leader())
    }

    /// Hands leadership to member `i` and waits until every member agrees.
    pub fn move_leader(&self, i: usize) {
        let current = self.wait_leader();
        if current == i {
            return;
        }
        let target = self.members[i]
            .status()
            .and_then(|s| s["header"]["member_id"].as_u64())
            .unwrap_or_else(|| panic!("etcd member {} has no status", self.members[i].name));
        let leader = &self.members[current];
        let out = leader.etcdctl(
            "http://127.0.0.1:2379",
            &["move-leader", &format!("{target:x}")],
        );
        assert!(
            out.status.success(),
            "etcdctl move-leader to {}: {}",
            self.members[i].name,
            String::from_utf8_lossy(&out.stderr)
        );
        wait_until(Duration::from_secs(10), "leadership moved", || {
            self.leader() == Some(i)
        });
    }

    /// Cuts member `i` off the underlay: an nftables table in its namespace drops everything in
    /// and out of `eth0` (peers and clients alike, no RST: connections just go silent).
    pub fn partition(&self, i: usize) {
        let m = &self.members[i];
        let rules = "table inet weft_fault {\n\
             chain input { type filter hook input priority -10; policy accept; iifname \"eth0\" drop; }\n\
             chain output { type filter hook output priority -10; policy accept; oifname \"eth0\" drop; }\n\
             }\n";
        nft_apply(&m.ns, rules);
        m.partitioned.store(true, Ordering::Relaxed);
    }

    /// Removes the partition of member `i`.
    pub fn heal(&self, i: usize) {
        let m = &self.members[i];
        m.ns.exec_ok(&["nft", "delete", "table", "inet", "weft_fault"]);
        m.partitioned.store(false, Ordering::Relaxed);
    }

    /// `etcdctl args..` against every member, run from a member that is up and reachable
    /// (etcdctl picks a working endpoint).
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        let from = self
            .members
            .iter()
            .find(|m| !m.is_partitioned())
            .unwrap_or_else(|| panic!("every etcd member is partitioned"));
        from.etcdctl(&self.endpoints(), args)
    }

    fn etcdctl_ok(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        if !out.status.success() {
            panic!(
                "etcdctl {} failed: {}\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Puts `key` = `value` with no etcd lease.
    pub fn put(&self, key: &str, value: &str) {
        self.etcdctl_ok(&["put", "--", key, value]);
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<String> {
        let out = self.etcdctl_ok(&["get", "--print-value-only", "--", key]);
        let value = out.strip_suffix('\n').unwrap_or(&out);
        (!out.is_empty()).then(|| value.to_string())
    }

    /// The last lines of every member's log (for failure messages).
    pub fn logs_tail(&self, n: usize) -> String {
        self.members
            .iter()
            .map(|m| {
                format!(
                    "----- etcd {} ({}) -----\n{}",
                    m.name,
                    m.ip,
                    tail(&m.log(), n)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &self.members {
            let mut guard = m.child.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(mut child) = guard.take() {
                kill_and_reap(&mut child);
            }
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs_tail(20));
        }
    }
}

/// Loads an nftables ruleset (`nft -f -`) inside `ns`.
pub fn nft_apply(ns: &Netns, rules: &str) {
    let mut cmd = ns.command("nft");
    cmd.args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => panic!("cannot run nft in {}: {e}", ns.name()),
    };
    if let Some(mut stdin) = child.stdin.take() {
        if let Err(e) = stdin.write_all(rules.as_bytes()) {
            panic!("nft -f - in {}: {e}", ns.name());
        }
    }
    let out = match child.wait_with_output() {
        Ok(o) => o,
        Err(e) => panic!("nft -f - in {}: {e}", ns.name()),
    };
    assert!(
        out.status.success(),
        "nft -f - in {} failed: {}\n{rules}",
        ns.name(),
        String::from_utf8_lossy(&out.stderr)
    );
}
