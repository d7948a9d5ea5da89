//! Operating weft: systemd's notification protocol, `weftctl network`, `weftctl status`,
//! the cluster-wide pod view and the Debian package. Real etcd, real namespaces, real weftd.

mod common;

use std::os::unix::net::UnixDatagram;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

const START: Duration = Duration::from_secs(30);

/// Datagrams weftd sends to a `NOTIFY_SOCKET` the test listens on, read by a thread as they
/// come (as systemd does: an unread socket would fill up).
struct NotifySocket {
    path: std::path::PathBuf,
    messages: mpsc::Receiver<String>,
}

impl NotifySocket {
    fn bind(dir: &std::path::Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket =
            UnixDatagram::bind(&path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap_or_else(|e| panic!("timeout on {}: {e}", path.display()));
        let (tx, messages) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            loop {
                if let Ok(len) = socket.recv(&mut buf) {
                    let msg = String::from_utf8_lossy(&buf[..len]).into_owned();
                    if tx.send(msg).is_err() {
                        return;
                    }
                } else if tx.send(String::new()).is_err() {
                    // Nobody listens any more (an empty message probes the channel).
                    return;
                }
            }
        });
        NotifySocket { path, messages }
    }

    /// The next datagram within `timeout`, or None.
    fn recv(&self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.messages.recv_timeout(left) {
                Ok(msg) if msg.is_empty() => continue,
                Ok(msg) => return Some(msg),
                Err(_) => return None,
            }
        }
    }

    /// Receives until a datagram has a line `line`; returns every datagram seen, that one last.
    fn until(&self, node: &Node, line: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Some(msg) = self.recv(Duration::from_millis(200)) {
                let done = msg.lines().any(|l| l == line);
                seen.push(msg);
                if done {
                    return seen;
                }
            }
        }
        seen.retain(|m| m != "WATCHDOG=1\n");
        panic!(
            "no {line} from weftd on {} within {timeout:?}; got (pings left out) {seen:?}\n----- weftd log -----\n{}",
            node.name(),
            node.log_tail(40)
        );
    }
}

/// weftd speaks systemd's notification protocol on the socket in `NOTIFY_SOCKET`: `STATUS=`
/// while it waits, `READY=1` only once subnet.env is written and the peer is programmed,
/// `WATCHDOG=1` at half of `WATCHDOG_USEC`, `STOPPING=1` on SIGTERM.
#[test]
fn systemd_notify_ready_status_watchdog_stopping() {
    // The node waits for a network config that is not there yet: not ready. A peer's lease is
    // in etcd already, so the node's first listing holds it: READY=1 must wait for its entries.
    let cluster = Cluster::new(1, "");
    let n2 = cluster.node(0);
    let peer_subnet = "10.244.200.0/24";
    cluster.etcd.put(
        &lease_key(peer_subnet),
        &vxlan_lease_value("192.0.2.100", "aa:bb:cc:00:00:01"),
    );
    let notify = NotifySocket::bind(n2.dir());
    let endpoint = cluster.etcd.endpoint();
    let subnet_file = n2.subnet_file().to_string_lossy().into_owned();
    let state_dir = n2.state_dir().to_string_lossy().into_owned();
    let notify_path = notify.path.to_string_lossy().into_owned();
    n2.start_weftd_env(&[
        ("WEFTD_ETCD_ENDPOINTS", &endpoint),
        ("WEFTD_IFACE", "eth0"),
        ("WEFTD_SUBNET_FILE", &subnet_file),
        ("WEFTD_STATE_DIR", &state_dir),
        ("NOTIFY_SOCKET", &notify_path),
        ("WATCHDOG_USEC", "600000"),
    ]);
    let waiting = notify.until(
        n2,
        "STATUS=waiting for a valid network config at /coreos.com/network/config",
        START,
    );
    assert!(
        !waiting.iter().any(|m| m.contains("READY=1")),
        "READY before the config: {waiting:?}"
    );
    // Watchdog pings every 300 ms while the node waits.
    let pings = (0..10)
        .filter_map(|_| notify.recv(Duration::from_millis(500)))
        .filter(|m| m == "WATCHDOG=1\n")
        .count();
    assert!(pings >= 3, "only {pings} WATCHDOG=1 in 10 datagrams");

    cluster.etcd.put(NETWORK_CONFIG_KEY, VXLAN_CONFIG);
    let seen = notify.until(n2, "READY=1", START);
    // At READY=1 the node's subnet.env exists and the peer is in the kernel.
    let env = n2
        .subnet_env()
        .unwrap_or_else(|| panic!("READY=1 before subnet.env: {seen:?}"));
    let subnet = subnet_of(&env).unwrap_or_default();
    assert!(
        n2.route_to(peer_subnet).is_some(),
        "READY=1 before the route to the peer {peer_subnet}: {:?}",
        n2.routes()
    );
    let ready = seen.last().cloned().unwrap_or_default();
    let status = ready
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap_or_else(|| panic!("no STATUS= with READY=1: {ready:?}"));
    assert!(
        status.starts_with(&format!(
            "{subnet} vxlan on flannel.1 mtu 1450; 1/1 peers programmed; lease until "
        )),
        "{status}"
    );
    assert!(status.contains("; last reconcile "), "{status}");

    n2.stop();
    let after = notify.until(n2, "STOPPING=1", Duration::from_secs(5));
    assert!(
        !after.iter().any(|m| m.contains("READY=1")),
        "READY=1 sent twice: {after:?}"
    );
}

/// Runs `weftctl args..` inside `ns` with stdin from `input`; (success, stdout, stderr).
fn weftctl(ns: &Netns, args: &[&str], input: Option<&str>) -> (bool, String, String) {
    use std::io::Write as _;
    let mut cmd = ns.command(env!("CARGO_BIN_EXE_weftctl"));
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn weftctl {args:?}: {e}"));
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("weftctl stdin: {e}"));
    }
    drop(child.stdin.take());
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait for weftctl {args:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `weftctl network get | set | validate` against a real etcd: validation is weftd's, a change
/// that would orphan a lease is refused (the diff and the lease shown, etcd untouched) unless
/// `--force`, a safe change is stored.
#[test]
fn weftctl_network_get_validate_set() {
    let cluster = Cluster::new(0, VXLAN_CONFIG);
    let ns = cluster.etcd.netns();
    let etcd = ["--etcd-endpoints", "http://127.0.0.1:2379"];
    cluster.etcd.put(
        &lease_key("10.244.7.0/24"),
        &vxlan_lease_value("192.0.2.11", "aa:bb:cc:dd:ee:07"),
    );
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {name}: {e}"));
        path.to_string_lossy().into_owned()
    };

    let (ok, out, _) = weftctl(ns, &[&["network", "get"][..], &etcd].concat(), None);
    assert!(ok);
    assert_eq!(out, format!("{VXLAN_CONFIG}\n"));
    let (ok, out, _) = weftctl(
        ns,
        &[&["network", "get", "--effective"][..], &etcd].concat(),
        None,
    );
    assert!(ok);
    assert!(
        out.starts_with("Network: 10.244.0.0/16\nSubnetLen: 24\nSubnetMin: 10.244.100.0\nSubnetMax: 10.244.199.0\n"),
        "{out}"
    );

    // validate: weftd's rules, the error names the file, the field and the value.
    let bad = file("bad.json", r#"{"Network":"10.244.0.0/16","SubnetLen":31}"#);
    let (ok, _, err) = weftctl(ns, &["network", "validate", &bad], None);
    assert!(!ok, "SubnetLen 31 accepted");
    assert!(
        err.contains(&format!("{bad}: network config: field SubnetLen = 31")),
        "{err}"
    );
    let (ok, out, err) = weftctl(
        ns,
        &["network", "validate", "-"],
        Some(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#),
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("stdin: valid\n") && out.contains("Backend.Type: host-gw\n"),
        "{out}"
    );

    // A bad config never reaches etcd.
    let (ok, _, err) = weftctl(ns, &[&["network", "set", &bad][..], &etcd].concat(), None);
    assert!(!ok && err.contains("SubnetLen = 31"), "{err}");
    assert_eq!(
        cluster.etcd.get(NETWORK_CONFIG_KEY).as_deref(),
        Some(VXLAN_CONFIG)
    );

    // SubnetLen 25 leaves the /24 lease outside: refused, with the diff and the lease.
    let orphaning = file(
        "orphaning.json",
        r#"{"Network":"10.244.0.0/16","SubnetLen":25}"#,
    );
    let (ok, out, err) = weftctl(
        ns,
        &[&["network", "set", &orphaning][..], &etcd].concat(),
        None,
    );
    assert!(!ok, "orphaning change accepted: {out}");
    assert!(out.contains("-SubnetLen: 24\n+SubnetLen: 25\n"), "{out}");
    assert!(
        out.contains("  10.244.7.0/24  192.0.2.11  reservation\n"),
        "{out}"
    );
    assert!(
        err.contains("would orphan 1 lease(s)") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        cluster.etcd.get(NETWORK_CONFIG_KEY).as_deref(),
        Some(VXLAN_CONFIG)
    );

    // A wider network keeps every lease: stored as written.
    let wider = r#"{"Network":"10.244.0.0/15","SubnetLen":24}"#;
    let (ok, out, err) = weftctl(
        ns,
        &[&["network", "set", &file("wider.json", wider)][..], &etcd].concat(),
        None,
    );
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("-Network: 10.244.0.0/16\n+Network: 10.244.0.0/15\n"),
        "{out}"
    );
    assert!(out.contains(" SubnetLen: 24\n"), "{out}");
    assert_eq!(cluster.etcd.get(NETWORK_CONFIG_KEY).as_deref(), Some(wider));

    // --force stores the orphaning change.
    let (ok, out, err) = weftctl(
        ns,
        &[&["network", "set", "--force", &orphaning][..], &etcd].concat(),
        None,
    );
    assert!(ok, "{out}{err}");
    assert_eq!(
        cluster.etcd.get(NETWORK_CONFIG_KEY).as_deref(),
        Some(r#"{"Network":"10.244.0.0/16","SubnetLen":25}"#)
    );
}

/// `scripts/package.sh` builds a package with every binary, the unit, the examples, man pages
/// and completions; unpacked into a throwaway root (never the machine's /usr), weftd and the CNI
/// plugin (through /opt/cni/bin) run from there. The suite's debug binaries are packaged here
/// to keep it fast; `scripts/package.sh` without `--bin-dir` builds and packages release ones.
#[test]
fn debian_package_file_list_and_throwaway_install() {
    let bin_dir = bin_path("weftd")
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| panic!("no target dir"));
    bin_path("weft"); // the CNI plugin must be built too
    let out = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/package.sh");
    let run = std::process::Command::new("bash")
        .arg(script)
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--out")
        .arg(out.path())
        .env("DEB_COMPRESSION", "none")
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "package.sh failed: {stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let deb = stdout.lines().last().unwrap_or_default().to_string();
    assert!(deb.ends_with(".deb"), "{stdout}");

    let contents = exec_ok("dpkg-deb", &["-c", &deb]);
    let entries: Vec<(String, String)> = contents
        .lines()
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            let mode = cols.next()?.to_string();
            let path = cols.nth(4)?.trim_start_matches('.').to_string();
            Some((mode, path))
        })
        .collect();
    let mode_of = |path: &str| {
        entries
            .iter()
            .find(|(_, p)| p == path)
            .map(|(m, _)| m.clone())
            .unwrap_or_else(|| panic!("{path} not in the package:\n{contents}"))
    };
    for bin in ["weftd", "weftctl", "weft-pause", "weft-shim"] {
        assert_eq!(mode_of(&format!("/usr/bin/{bin}")), "-rwxr-xr-x");
    }
    assert_eq!(mode_of("/usr/lib/cni/weft"), "-rwxr-xr-x");
    assert_eq!(mode_of("/opt/cni/bin/weft"), "lrwxrwxrwx");
    assert_eq!(mode_of("/etc/default/weftd"), "-rw-------");
    for path in [
        "/usr/lib/systemd/system/weftd.service",
        "/usr/share/doc/weft/examples/10-weft.conflist",
        "/usr/share/doc/weft/examples/network-config.json",
        "/usr/share/doc/weft/examples/grafana-dashboard.json",
        "/usr/share/doc/weft/copyright",
        "/usr/share/man/man8/weftd.8.gz",
        "/usr/share/man/man8/weftctl.8.gz",
        "/usr/share/man/man8/weftctl-network-set.8.gz",
        "/usr/share/bash-completion/completions/weftd",
        "/usr/share/bash-completion/completions/weftctl",
        "/usr/share/zsh/vendor-completions/_weftctl",
        "/usr/share/fish/vendor_completions.d/weftctl.fish",
    ] {
        assert_eq!(mode_of(path), "-rw-r--r--", "{path}");
    }
    let control = exec_ok("dpkg-deb", &["-f", &deb, "Package", "Version", "Depends"]);
    assert!(
        control.starts_with(&format!(
            "Package: weft\nVersion: {}\nDepends: libc6 (>= 2.",
            env!("CARGO_PKG_VERSION")
        )),
        "{control}"
    );
    assert_eq!(
        exec_ok("dpkg-deb", &["-f", &deb, "Conffiles"]).trim(),
        "",
        "conffiles are in DEBIAN/conffiles, not a control field"
    );
    let control_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    exec_ok(
        "dpkg-deb",
        &["-e", &deb, &control_dir.path().to_string_lossy()],
    );
    for script in ["preinst", "postinst", "prerm", "postrm", "config"] {
        assert!(
            !control_dir.path().join(script).exists(),
            "the package runs a maintainer script: {script}"
        );
    }

    let root = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let root_path = root.path().to_string_lossy().into_owned();
    exec_ok("dpkg", &["-x", &deb, &root_path]);
    let weftd = root.path().join("usr/bin/weftd");
    let version = exec_ok(&weftd.to_string_lossy(), &["--version"]);
    assert_eq!(version, format!("weftd {}\n", env!("CARGO_PKG_VERSION")));
    let unit = std::fs::read_to_string(root.path().join("usr/lib/systemd/system/weftd.service"))
        .unwrap_or_else(|e| panic!("read the unit: {e}"));
    for line in [
        "Type=notify",
        "KillMode=process",
        "Restart=always",
        "ExecStart=/usr/bin/weftd",
    ] {
        assert!(unit.lines().any(|l| l == line), "no {line} in the unit");
    }
    let man = exec_ok(
        "zcat",
        &[&root
            .path()
            .join("usr/share/man/man8/weftd.8.gz")
            .to_string_lossy()],
    );
    assert!(
        man.contains(".TH weftd 8") && man.contains("resync\\-interval"),
        "{man}"
    );

    // The CNI plugin through the conventional path: the relative link stays inside the root.
    let plugin = root.path().join("opt/cni/bin/weft");
    let out = std::process::Command::new(&plugin)
        .env_clear()
        .env("CNI_COMMAND", "VERSION")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(br#"{"cniVersion":"1.0.0"}"#)?;
            }
            child.wait_with_output()
        })
        .unwrap_or_else(|e| panic!("run {}: {e}", plugin.display()));
    assert!(out.status.success(), "VERSION failed: {out:?}");
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("VERSION answer is not JSON ({e}): {out:?}"));
    assert!(answer["cniVersion"].is_string(), "{answer}");
    let supported = answer["supportedVersions"].to_string();
    assert!(
        supported.contains("\"0.3.1\"") && supported.contains("\"1.1.0\""),
        "{supported}"
    );
}

/// Runs `program args..` in the test's own namespace (file work only); stdout, or a panic
/// naming the command.
fn exec_ok(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `weftctl status` asks the node's weftd over its unix socket (0600: root only): lease and
/// expiry, backend, readiness, every peer with its state, the last reconcile; `-o json` too.
#[test]
fn weftctl_status_over_the_node_socket() {
    use std::os::unix::fs::PermissionsExt as _;
    use std::os::unix::process::CommandExt as _;
    let cluster = Cluster::new(2, VXLAN_CONFIG);
    cluster.start();
    cluster.wait_mesh(START);
    let (n1, n2) = (cluster.node(0), cluster.node(1));
    let socket = n2.dir().join("weftd.sock");
    let socket_arg = socket.to_string_lossy().into_owned();
    let mode = std::fs::metadata(&socket)
        .unwrap_or_else(|e| panic!("{}: {e}", socket.display()))
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let (s1, s2) = (
        n1.subnet().unwrap_or_default(),
        n2.subnet().unwrap_or_default(),
    );

    let (ok, table, err) = weftctl(n2.netns(), &["status", "--socket", &socket_arg], None);
    assert!(ok, "{err}");
    assert!(
        table.contains("Node:           192.0.2.12 on eth0\n"),
        "{table}"
    );
    assert!(table.contains("Ready:          yes\n"), "{table}");
    assert!(
        table.contains(&format!("Lease:          {s2}, expires ")),
        "{table}"
    );
    assert!(
        table.contains("Backend:        vxlan, device flannel.1, pod MTU 1450\n"),
        "{table}"
    );
    let peer_row = table
        .lines()
        .find(|l| l.starts_with(&s1))
        .unwrap_or_else(|| panic!("no row for peer {s1}:\n{table}"));
    let cells: Vec<&str> = peer_row.split_whitespace().collect();
    assert_eq!(
        cells[1..5],
        [
            "192.0.2.11",
            "vxlan",
            &n1.mac_of("flannel.1").unwrap_or_default(),
            "programmed"
        ]
    );

    let (ok, json, err) = weftctl(
        n2.netns(),
        &["status", "--socket", &socket_arg, "-o", "json"],
        None,
    );
    assert!(ok, "{err}");
    let v: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("not JSON ({e}): {json}"));
    assert_eq!(v["ready"], true);
    assert_eq!(v["lease"]["subnet"], s2.as_str());
    assert_eq!(v["lease"]["reservation"], false);
    let lease_id = cluster
        .etcd
        .get_kv(&lease_key(&s2))
        .map(|kv| kv.lease)
        .unwrap_or_default();
    let ttl = cluster.etcd.lease_ttl(lease_id).unwrap_or_default();
    let expires = v["lease"]["expiresUnix"].as_i64().unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    assert!(
        (expires - (now + ttl)).abs() <= 5,
        "expiry {expires}, etcd TTL {ttl} from {now}"
    );
    assert_eq!(v["peers"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["peers"][0]["subnet"], s1.as_str());
    assert_eq!(v["lastReconcile"]["error"], serde_json::Value::Null);
    assert_eq!(v["backend"]["offloads"], "not applicable", "{v}");
    assert!(
        table.contains("Offloads:       not applicable\n"),
        "{table}"
    );

    // Leases weftd does not program are listed with why: one validation rejects (PublicIP
    // 127.0.0.1), one valid lease whose route the guard refuses (it covers an address of
    // node 2). Subnets neither node holds.
    let mut free = (50..70)
        .map(|i| format!("10.244.{i}.0/24"))
        .filter(|s| *s != s1 && *s != s2);
    let (bad, covering, stray) = (
        free.next().unwrap_or_default(),
        free.next().unwrap_or_default(),
        free.next().unwrap_or_default(),
    );
    let local = covering.replace(".0/24", ".1/32");
    n2.netns().ip(&["link", "set", "lo", "up"]);
    n2.netns().ip(&["addr", "add", &local, "dev", "lo"]);
    // And a weft route (protocol 87) on flannel.1 no lease justifies: the next reconcile
    // removes it and says so.
    let stray_gw = stray.trim_end_matches("/24");
    n2.netns().ip(&[
        "route",
        "add",
        &stray,
        "via",
        stray_gw,
        "dev",
        "flannel.1",
        "onlink",
        "proto",
        "87",
    ]);
    cluster.etcd.put_with_ttl(
        &lease_key(&bad),
        &vxlan_lease_value("127.0.0.1", "aa:bb:cc:00:00:50"),
        600,
    );
    cluster.etcd.put_with_ttl(
        &lease_key(&covering),
        &vxlan_lease_value("192.0.2.61", "aa:bb:cc:00:00:61"),
        600,
    );
    let mut v = serde_json::Value::Null;
    n2.wait_until(START, "both leases listed as not programmed", || {
        let (_, json, _) = weftctl(
            n2.netns(),
            &["status", "--socket", &socket_arg, "-o", "json"],
            None,
        );
        v = serde_json::from_str(&json).unwrap_or_default();
        v["rejected"].as_array().map(Vec::len) == Some(2)
    });
    let rejected = |subnet: &str| {
        v["rejected"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["subnet"] == subnet).cloned())
            .unwrap_or_else(|| panic!("{subnet} not among the rejected: {v}"))
    };
    let r = rejected(&bad);
    assert_eq!(r["key"], lease_key(&bad).as_str(), "{r}");
    assert_eq!(r["by"], "validation", "{r}");
    assert_eq!(r["reason"], "public_ip", "{r}");
    assert_eq!(r["why"], "PublicIP 127.0.0.1 is a loopback address", "{r}");
    let r = rejected(&covering);
    assert_eq!(r["by"], "route-guard", "{r}");
    assert_eq!(r["reason"], "route_overlap", "{r}");
    let address = local.trim_end_matches("/32");
    assert_eq!(
        r["why"],
        format!("route to {covering} overlaps address {address} of this node").as_str(),
        "{r}"
    );
    assert_eq!(v["peers"].as_array().map(Vec::len), Some(1), "{v}");
    let stray_route = format!("{stray} via {stray_gw} dev flannel.1");
    assert!(
        v["lastStale"]["entries"].as_array().is_some_and(
            |e| e.contains(&serde_json::json!({"kind": "route", "destination": stray_route}))
        ),
        "{v}"
    );
    let (ok, table, err) = weftctl(n2.netns(), &["status", "--socket", &socket_arg], None);
    assert!(ok, "{err}");
    assert!(table.contains("Not programmed (2):\n"), "{table}");
    assert!(
        table.contains(&format!("                route {stray_route}\n")),
        "{table}"
    );
    let row = |subnet: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{subnet} ")))
            .unwrap_or_else(|| panic!("no row for {subnet}:\n{table}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(
        row(&bad),
        format!("{bad} rejected public_ip PublicIP 127.0.0.1 is a loopback address"),
        "{table}"
    );
    assert_eq!(
        row(&covering),
        format!("{covering} refused route_overlap route to {covering} overlaps address {address} of this node"),
        "{table}"
    );
    cluster.etcd.del(&lease_key(&bad));
    cluster.etcd.del(&lease_key(&covering));

    // Not for other users.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weftctl"))
        .args(["status", "--socket", &socket_arg])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap_or_else(|e| panic!("weftctl as nobody: {e}"));
    assert!(!out.status.success(), "nobody read the status");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Permission denied"), "{err}");

    // A peer that leaves disappears from the status.
    n1.kill9();
    cluster.etcd.del(&lease_key(&s1));
    n2.wait_until(START, "the peer gone from weftctl status", || {
        let (_, json, _) = weftctl(
            n2.netns(),
            &["status", "--socket", &socket_arg, "-o", "json"],
            None,
        );
        json.contains("\"peers\": []")
    });
}

/// weftd with static pods, started with `nsenter --net` (runc and the sandbox need the host's
/// mount namespace, which `ip netns exec` replaces); killed on drop.
struct PodWeftd {
    child: Option<std::process::Child>,
    args: Vec<String>,
    log: std::path::PathBuf,
}

impl PodWeftd {
    fn start(node: &Node, manifests: &std::path::Path, node_name: &str) -> PodWeftd {
        let dir = node.dir();
        let mut args = node.base_args();
        for (flag, path) in [
            ("--pod-manifest-path", manifests.to_path_buf()),
            ("--cni-conf-dir", dir.join("net.d")),
            ("--cni-cache-dir", dir.join("cni-cache")),
            ("--pod-root", dir.join("pods")),
            ("--image-root", dir.join("images")),
            ("--pod-log-dir", dir.join("pod-logs")),
        ] {
            args.push(flag.to_string());
            args.push(path.to_string_lossy().into_owned());
        }
        args.extend(["--node-name".to_string(), node_name.to_string()]);
        args.extend(["--pod-backoff-base-ms".to_string(), "500".to_string()]);
        let mut w = PodWeftd {
            child: None,
            args,
            log: dir.join("weftd-pods.log"),
        };
        w.spawn(node);
        w
    }

    fn spawn(&mut self, node: &Node) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("{}: {e}", self.log.display()));
        let err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("{}: {e}", self.log.display()));
        let child = std::process::Command::new("nsenter")
            .arg(format!("--net={}", node.netns().path().display()))
            .arg(env!("CARGO_BIN_EXE_weftd"))
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn weftd: {e}"));
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PodWeftd {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("----- weftd (pods) log -----\n{}", self.log());
        }
    }
}

/// Each node publishes a record per static pod under `<prefix>/pods/<node>/`, attached to its
/// subnet lease; `weftctl pods -A` lists them like `kubectl get pods -A -o wide`. A record goes
/// when its pod goes, and with the node's lease.
#[test]
fn weftctl_pods_all_namespaces_lists_published_pods() {
    let cluster = Cluster::new(1, VXLAN_CONFIG);
    let node = cluster.node(0);
    let manifests = node.dir().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap_or_else(|e| panic!("{e}"));
    // Named like the harness's namespaces, so a sandbox left by a killed test run is swept.
    let ns = unique_name("p").trim_start_matches("weft-").to_string();
    let manifest = manifests.join("web.yaml");
    let pod_yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: web, namespace: {ns}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n    - name: c\n      image: busybox\n"
    );
    std::fs::write(&manifest, &pod_yaml).unwrap_or_else(|e| panic!("{e}"));
    let mut weftd = PodWeftd::start(node, &manifests, "node1");
    let env = node.wait_subnet_env(START);
    let subnet = subnet_of(&env).unwrap_or_default();
    let key = format!("{ETCD_PREFIX}/pods/node1/{ns}/web");
    let etcd_ns = cluster.etcd.netns();
    let etcd = ["--etcd-endpoints", "http://127.0.0.1:2379"];
    let pods_all = || {
        let (ok, out, err) = weftctl(etcd_ns, &[&["pods", "-A"][..], &etcd].concat(), None);
        assert!(ok, "weftctl pods -A: {err}");
        out
    };

    // No CNI network is configured: the pod stays in ContainerCreating, as the view must show.
    let kv = wait_for(START, "the pod's record in etcd", || {
        cluster.etcd.get_kv(&key)
    });
    let lease = cluster
        .etcd
        .get_kv(&lease_key(&subnet))
        .map(|l| l.lease)
        .unwrap_or_default();
    assert!(
        lease != 0 && kv.lease == lease,
        "record lease {} vs node lease {lease}",
        kv.lease
    );
    let record: serde_json::Value =
        serde_json::from_str(&kv.value).unwrap_or_else(|e| panic!("record ({e}): {}", kv.value));
    assert_eq!(record["node"], "node1");
    assert_eq!(record["hostIP"], node.public_ip());
    assert_eq!(record["ready"], "0/1");
    let table = pods_all();
    let mut lines = table.lines();
    assert_eq!(
        lines
            .next()
            .map(|h| h.split_whitespace().collect::<Vec<_>>()),
        Some(vec![
            "NAMESPACE",
            "NAME",
            "READY",
            "STATUS",
            "RESTARTS",
            "AGE",
            "IP",
            "NODE"
        ]),
        "{table}"
    );
    let row: Vec<&str> = lines
        .find(|l| l.starts_with(&ns))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_else(|| panic!("no row for {ns}/web:\n{table}"));
    assert_eq!(row[1..4], ["web", "0/1", "ContainerCreating"], "{table}");
    assert_eq!(row[6..], ["<none>", "node1"], "{table}");

    // A hostile record under the prefix is reported, not printed raw.
    cluster.etcd.put(
        &format!("{ETCD_PREFIX}/pods/evil/x/y"),
        "{\"name\":\"\\u001b[2J\"}",
    );
    let (ok, _, err) = weftctl(etcd_ns, &[&["pods", "-A"][..], &etcd].concat(), None);
    assert!(
        ok && err.contains("skipping pod record /coreos.com/network/pods/evil/x/y"),
        "{err}"
    );
    assert!(!err.contains('\u{1b}'), "{err:?}");
    cluster.etcd.del(&format!("{ETCD_PREFIX}/pods/evil/x/y"));

    // The pod goes: so does its record.
    std::fs::remove_file(&manifest).unwrap_or_else(|e| panic!("{e}"));
    wait_until(START, "the record removed with the pod", || {
        cluster.etcd.get(&key).is_none()
    });
    assert!(!pods_all().contains("web"));

    // The node goes (weftd dead, its lease expired): its records go with the lease.
    std::fs::write(&manifest, &pod_yaml).unwrap_or_else(|e| panic!("{e}"));
    wait_for(START, "the record back", || cluster.etcd.get_kv(&key));
    weftd.kill();
    cluster.etcd.revoke(lease);
    assert_eq!(
        cluster.etcd.get(&key),
        None,
        "record outlived the node's lease"
    );

    // Clean up: the pod's manifest goes, and a new weftd removes the orphaned pod.
    std::fs::remove_file(&manifest).unwrap_or_else(|e| panic!("{e}"));
    weftd.spawn(node);
    let pods_dir = node.dir().join("pods");
    wait_until(START, "the orphaned pod removed", || {
        std::fs::read_dir(&pods_dir).map_or(true, |d| {
            d.flatten().all(|e| !e.path().join("status.json").exists())
        })
    });
}

/// The Grafana dashboard is valid JSON, every panel says what it shows and queries something,
/// and every metric weftd exports today has a panel.
#[test]
fn grafana_dashboard_covers_weftds_metrics() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/grafana-dashboard.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let dash: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"));
    let panels = dash["panels"].as_array().cloned().unwrap_or_default();
    let mut exprs = String::new();
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(
            p["description"].as_str().is_some_and(|d| d.len() > 40),
            "panel {title} has no description"
        );
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        assert!(!targets.is_empty(), "panel {title} queries nothing");
        for t in targets {
            exprs.push_str(t["expr"].as_str().unwrap_or_default());
            exprs.push('\n');
        }
    }
    let exported = weft::health::Metrics::default().render();
    // OpenMetrics names a counter's family without `_total`; its samples (what panels query) keep it.
    let mut names: Vec<String> = exported
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [family, "counter"] => Some(format!("{family}_total")),
            [family, _] => Some(family.to_string()),
            _ => None,
        })
        .collect();
    names.extend(
        [
            "weft_udp_tx_packets_total",
            "weft_udp_rx_bytes_total",
            "weft_udp_rx_unknown_source_total",
            "weft_wireguard_tx_packets_total",
            "weft_wireguard_rx_packets_total",
            "weft_wireguard_rx_not_allowed_total",
            "weft_wireguard_rx_rejected_total",
        ]
        .map(String::from),
    );
    for name in names {
        assert!(exprs.contains(&name), "no panel shows {name}");
    }
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/dashboard.md"))
        .unwrap_or_else(|e| panic!("docs/dashboard.md: {e}"));
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(
            doc.contains(&format!("**{title}**")),
            "docs/dashboard.md does not describe {title}"
        );
    }
}

/// weftd probes every peer over the overlay (small and full-MTU with DF, plus the underlay)
/// and names Flannel's classic failures: an MTU black hole (a lower MTU on a veth of the
/// underlay path; the MTU that works is measured), encapsulation dropped (nft drops UDP 8472 on
/// the peer), a stale lease (a node that is gone); metrics follow within two probe intervals
/// (plus a round's wait for answers).
#[test]
fn peer_health_names_black_hole_dropped_encapsulation_and_stale_lease() {
    let cluster = Cluster::new(3, VXLAN_CONFIG);
    for node in &cluster.nodes {
        node.start_weftd(&["--peer-probe-interval", "1"]);
    }
    for node in &cluster.nodes {
        node.wait_subnet_env(START);
    }
    cluster.wait_mesh(START);
    let (n1, n2, n3) = (cluster.node(0), cluster.node(1), cluster.node(2));
    let (s2, s3) = (
        n2.subnet().unwrap_or_default(),
        n3.subnet().unwrap_or_default(),
    );
    let soon = Duration::from_secs(5);
    n1.wait_until(START, "healthy peers in /metrics", || {
        [&s2, &s3].iter().all(|s| {
            n1.peer_metric("reachable", s).as_deref() == Some("1")
                && n1.peer_metric("path_mtu_bytes", s).as_deref() == Some("1450")
        })
    });
    assert!(n1.peer_metric("rtt_seconds", &s2).is_some());

    // Node 2's end of the underlay takes 1400-byte frames: full-size VXLAN packets to it vanish.
    n2.netns().ip(&["link", "set", "eth0", "mtu", "1400"]);
    n1.wait_until(soon, "the MTU black hole diagnosed", || {
        n1.log().contains(&format!(
            "MTU black hole to peer {s2} (192.0.2.12): 1450-byte packets"
        ))
    });
    n1.wait_until(soon, "the MTU that works named", || {
        n1.log().contains(&format!("MTU black hole to peer {s2} (192.0.2.12): 1450-byte packets with DF are lost on the way, 1350 bytes pass"))
            && n1.peer_metric("path_mtu_bytes", &s2).as_deref() == Some("1350")
    });
    assert_eq!(n1.peer_metric("reachable", &s2).as_deref(), Some("1"));

    // The path shrinks under the named size, below anything the ladder tries (560-byte
    // frames: 510-byte VXLAN payloads): 1350 stops passing, the peer is measured again and
    // named as below the ladder's smallest size, with no advice to lower the MTU to a size
    // that no longer works.
    n2.netns().ip(&["link", "set", "eth0", "mtu", "560"]);
    n1.wait_until(Duration::from_secs(15), "the path MTU named as below the ladder", || {
        n1.log().contains(&format!("MTU black hole to peer {s2} (192.0.2.12): small packets pass, but none of 580 to 1450 bytes with DF; the path MTU is below 580"))
            && n1.peer_metric("path_mtu_bytes", &s2).is_none()
    });
    assert_eq!(n1.peer_metric("reachable", &s2).as_deref(), Some("1"));

    // Node 3 drops VXLAN: the underlay still answers.
    n3.netns().exec_ok(&[
        "nft",
        "add table inet drop8472; add chain inet drop8472 in { type filter hook input priority 0; }; add rule inet drop8472 in udp dport 8472 drop",
    ]);
    n1.wait_until(soon, "dropped encapsulation diagnosed", || {
        n1.log().contains(&format!("encapsulation dropped to peer {s3}: the underlay reaches 192.0.2.13 but vxlan packets (UDP 8472) do not pass"))
            && n1.peer_metric("reachable", &s3).as_deref() == Some("0")
    });

    // A lease whose node is gone.
    cluster.etcd.put(
        &lease_key("10.244.250.0/24"),
        &vxlan_lease_value("192.0.2.99", "aa:bb:cc:00:00:99"),
    );
    n1.wait_until(START, "the stale lease diagnosed", || {
        n1.log().contains("peer 10.244.250.0/24 (192.0.2.99) answers neither over the overlay nor on the underlay: the node is down and its lease is stale")
    });
    let (ok, json, err) = weftctl(
        n1.netns(),
        &[
            "status",
            "--socket",
            &n1.dir().join("weftd.sock").to_string_lossy(),
            "-o",
            "json",
        ],
        None,
    );
    assert!(ok, "{err}");
    let v: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let health = |subnet: &str| {
        v["peers"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["subnet"] == subnet))
            .map(|p| p["health"].clone())
    };
    let diagnosis = |subnet: &str| health(subnet).map(|h| h["diagnosis"].clone());
    assert_eq!(diagnosis(&s2), Some("mtu-black-hole".into()), "{json}");
    let s2_health = health(&s2).unwrap_or_default();
    assert_eq!(s2_health["pathMtuBelow"], 580, "{json}");
    assert!(s2_health["pathMtu"].is_null(), "{json}");
    assert_eq!(
        diagnosis(&s3),
        Some("encapsulation-dropped".into()),
        "{json}"
    );
    assert_eq!(
        diagnosis("10.244.250.0/24"),
        Some("peer-down".into()),
        "{json}"
    );
}
