//! Shared helpers: unique names, commands, waiting, lease values, stale cleanup, child processes.

use super::*;

static COUNTER: AtomicU32 = AtomicU32::new(0);
pub static STALE_CLEANUP: Once = Once::new();

/// A name unique to this test process and call: `weft-<pid>-<counter>-<role>`.
pub fn unique_name(role: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("weft-{}-{}-{}", std::process::id(), n, role)
}

/// Runs a command to completion, panicking (naming the command) only if it cannot be spawned.
pub fn output_of(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null());
    match cmd.output() {
        Ok(out) => out,
        Err(e) => panic!("cannot run {cmd:?}: {e}"),
    }
}

/// Runs a command and returns its stdout; panics with stdout and stderr if it fails.
pub fn output_ok(cmd: &mut Command) -> String {
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
pub fn host_ok(program: &str, args: &[&str]) -> String {
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
pub fn subnet_address(subnet: &str) -> String {
    subnet.split('/').next().unwrap_or(subnet).to_string()
}

/// A temporary directory removed on drop; named `weft-<pid>-...` so stale ones can be found.
pub fn temp_dir(role: &str) -> tempfile::TempDir {
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
pub fn kill_netns_processes(name: &str) {
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
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn read_to_string_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Opens a log file for appending, as stdout and stderr of a child process.
pub fn log_stdio(path: &Path) -> (Stdio, Stdio) {
    let open = || match OpenOptions::new().create(true).append(true).open(path) {
        Ok(f) => f,
        Err(e) => panic!("cannot open log file {}: {e}", path.display()),
    };
    (Stdio::from(open()), Stdio::from(open()))
}

/// Appends a marker line to a log file, so restarts are visible in it.
pub fn log_marker(path: &Path, text: &str) {
    if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "===== harness: {text} =====");
    }
}

/// Sends SIGTERM and waits up to `timeout`; SIGKILLs and panics if the process does not exit.
pub fn terminate(child: &mut Child, what: &str, timeout: Duration) -> ExitStatus {
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
pub fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A queue of the multi-queue TUN device `name` in the current network namespace, held open
/// (the device lives while it is), with virtio-net headers when `vnet`.
pub fn hold_tun_queue(name: &str, vnet: bool) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .expect("open /dev/net/tun");
    // SAFETY: ifreq is plain old data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (to, from) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *to = from as libc::c_char;
    }
    let vnet = if vnet { libc::IFF_VNET_HDR } else { 0 };
    req.ifr_ifru.ifru_flags =
        (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE | vnet) as libc::c_short;
    // SAFETY: a live /dev/net/tun descriptor and a request that outlives the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    assert_eq!(
        rc,
        0,
        "TUNSETIFF {name}: {}",
        std::io::Error::last_os_error()
    );
    file
}
