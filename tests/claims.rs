//! README claims about weftd that no other test file shows: the flag tables, what
//! `--resync-interval` does for an operator, that rejected leases and refused routes are logged
//! once per revision, which fields name a lease or a peer in the log, `--etcd-prefix`, that
//! `WEFTD_ETCD_PASSWORD` is not warned about, a whole-Network key, when peers are not probed,
//! and the settings of the systemd unit. docs/evidence.md maps every README claim to its test.
//!
//! Real etcd, real namespaces, real weftd (see tests/common).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// Time for weftd to start and write subnet.env.
const START: Duration = Duration::from_secs(30);
/// Time for a change in etcd to reach the kernel.
const CONVERGE: Duration = Duration::from_secs(10);
/// `--resync-interval` of the resync test, in seconds.
const RESYNC_SECS: u64 = 2;

/// A fake peer, programmed from etcd and then deleted from the kernel by hand.
const PEER: &str = "10.244.60.0/24";
const PEER_IP: &str = "192.0.2.60";
const PEER_MAC: &str = "aa:bb:cc:00:00:60";

/// The value of an unlabelled counter or gauge on the node's `/metrics`.
fn metric(node: &Node, name: &str) -> Option<f64> {
    let (_, text) = node.http_get("/metrics")?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Waits until weftd has finished `n` more reconciles than `since` (resyncs, when nothing else
/// happens), and returns the new count.
fn wait_reconciles(node: &Node, since: f64, n: f64) -> f64 {
    node.wait_for(
        Duration::from_secs(RESYNC_SECS * (n as u64 + 3)),
        "periodic reconciles",
        || metric(node, "weft_reconcile_runs_total").filter(|&runs| runs >= since + n),
    )
}

/// Lines of the node's log that report the rejection of `key`.
fn rejections_logged(node: &Node, key: &str) -> usize {
    node.log()
        .lines()
        .filter(|l| l.contains("lease rejected") && l.contains(&format!("key={key}")))
        .count()
}

/// `--resync-interval`: a route and neighbour deleted by hand come back within the interval with
/// no etcd event in between. A rejected lease is logged once per revision of its key, however
/// many resyncs judge it again; a new revision is logged again. Lease and peer events name the
/// lease in `subnet`, `public_ip`, `peer` or `key` fields.
#[test]
fn resync_restores_hand_deleted_entries_and_logs_a_rejection_once_per_revision() {
    let cluster = Cluster::new(1, VXLAN_CONFIG);
    let node = cluster.node(0);
    let bad_key = lease_key("192.0.2.0/24");
    let bad_value = vxlan_lease_value("192.0.2.61", "aa:bb:cc:00:00:61");
    cluster.etcd.put(&bad_key, &bad_value);
    node.start_weftd(&["--resync-interval", &RESYNC_SECS.to_string()]);
    node.wait_subnet_env(START);
    // Put after the start, so it arrives as a watch event ("peer joined").
    cluster
        .etcd
        .put_with_ttl(&lease_key(PEER), &vxlan_lease_value(PEER_IP, PEER_MAC), 600);
    node.wait_until(CONVERGE, "the fake peer programmed", || {
        node.vxlan_peer_programmed("flannel.1", PEER, PEER_IP, PEER_MAC)
    });

    // Resync: entries deleted by hand come back with no etcd event.
    let revision = cluster.etcd.revision();
    let ns = node.netns();
    ns.ip(&["route", "del", PEER, "dev", "flannel.1"]);
    ns.ip(&["neigh", "del", "10.244.60.0", "dev", "flannel.1"]);
    assert!(
        node.route_to(PEER).is_none(),
        "the route is still there after `ip route del`"
    );
    let deleted = Instant::now();
    // The interval, plus a reconcile's and a listing's time on a loaded machine.
    let within = Duration::from_secs(RESYNC_SECS + 3);
    node.wait_until(within, "route and neighbour restored by the resync", || {
        node.vxlan_peer_programmed("flannel.1", PEER, PEER_IP, PEER_MAC)
    });
    eprintln!("restored {:?} after the deletion", deleted.elapsed());
    assert_eq!(
        cluster.etcd.revision(),
        revision,
        "etcd changed while the entries were away: the restore was not the resync's"
    );

    // Once per revision: three more resyncs, still one line.
    let runs = metric(node, "weft_reconcile_runs_total").unwrap_or_default();
    let runs = wait_reconciles(node, runs, 3.0);
    assert_eq!(
        rejections_logged(node, &bad_key),
        1,
        "a rejected lease logged other than once across resyncs:\n{}",
        node.log_tail(40)
    );
    cluster.etcd.put(&bad_key, &bad_value);
    node.wait_until(CONVERGE, "the new revision logged", || {
        rejections_logged(node, &bad_key) == 2
    });
    wait_reconciles(node, runs, 3.0);
    assert_eq!(
        rejections_logged(node, &bad_key),
        2,
        "the second revision logged other than once:\n{}",
        node.log_tail(40)
    );

    // The fields that name a lease or a peer.
    assert!(cluster.etcd.del(&lease_key(PEER)), "delete the fake peer");
    node.wait_until(CONVERGE, "the fake peer withdrawn", || {
        node.vxlan_peer_absent(PEER, PEER_MAC)
    });
    let log = node.log();
    let own = node.subnet().unwrap_or_default();
    let line = |what: &str| -> String {
        log.lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what:?} line in:\n{}", node.log_tail(40)))
            .to_string()
    };
    let acquired = line("acquired subnet");
    assert!(
        acquired.contains(&format!("subnet={own}"))
            && acquired.contains(&format!("public_ip={}", node.public_ip())),
        "{acquired}"
    );
    let peer_key = lease_key(PEER);
    for what in ["peer joined or changed", "peer left"] {
        let l = line(what);
        assert!(l.contains(&format!("peer={peer_key}")), "{l}");
    }
    let ready = line("node ready");
    assert!(ready.contains(&format!("subnet={own}")), "{ready}");
}

/// `WEFTD_ETCD_PASSWORD` (the variable, not the flag) logs in without the `ps` warning, and the
/// password never appears in the log.
#[test]
fn etcd_password_from_the_environment_is_not_warned_about() {
    let cluster = Cluster::new(1, VXLAN_CONFIG);
    let secret = "s3cret-weft-env-pw-4711";
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
    let node = cluster.node(0);
    let subnet_file = node.subnet_file().to_string_lossy().into_owned();
    let state_dir = node.state_dir().to_string_lossy().into_owned();
    let endpoint = cluster.etcd.endpoint();
    node.start_weftd_env(&[
        ("WEFTD_ETCD_ENDPOINTS", &endpoint),
        ("WEFTD_IFACE", "eth0"),
        ("WEFTD_SUBNET_FILE", &subnet_file),
        ("WEFTD_STATE_DIR", &state_dir),
        ("WEFTD_ETCD_USERNAME", "root"),
        ("WEFTD_ETCD_PASSWORD", secret),
    ]);
    node.wait_subnet_env(START);
    let log = node.log();
    assert!(
        !log.contains("visible to every local user in ps"),
        "the variable was warned about:\n{}",
        node.log_tail(20)
    );
    let leaked: Vec<&str> = log
        .lines()
        .filter(|l| !l.starts_with("===== harness:") && l.contains(secret))
        .collect();
    assert!(leaked.is_empty(), "password in the log: {leaked:?}");
}

/// docs/systemd/weftd.service passes `systemd-analyze verify` and holds the settings the README
/// describes: notify with a 2 min watchdog, only weftd killed, /run/weft kept, and no option
/// that gives weftd a private mount namespace.
#[test]
fn systemd_unit_verifies_and_has_the_documented_settings() {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/systemd/weftd.service");
    let unit = std::fs::read_to_string(&source)
        .unwrap_or_else(|e| panic!("read {}: {e}", source.display()));
    let settings: Vec<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .collect();
    for expected in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=2min",
        "KillMode=process",
        "RuntimeDirectory=weft",
        "RuntimeDirectoryPreserve=yes",
        "Restart=always",
        "ExecStart=/usr/bin/weftd",
    ] {
        assert!(settings.contains(&expected), "no {expected} in the unit");
    }
    // Each of these puts the service in a mount namespace of its own.
    for private in [
        "ProtectSystem=",
        "ProtectHome=",
        "PrivateTmp=",
        "PrivateDevices=",
        "PrivateMounts=",
        "ReadOnlyPaths=",
        "ReadWritePaths=",
        "InaccessiblePaths=",
        "TemporaryFileSystem=",
        "BindPaths=",
        "MountFlags=",
        "ProtectKernelTunables=",
        "ProtectControlGroups=",
    ] {
        assert!(
            !settings.iter().any(|l| l.starts_with(private)),
            "{private} gives weftd a private mount namespace"
        );
    }
    // systemd-analyze checks the unit's syntax and that ExecStart= exists: point it at the
    // weftd this test was built with, in a copy of the unit. Documentation= names man pages
    // that only the package installs (tests/operate.rs checks them there).
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let copy = dir.path().join("weftd.service");
    let copied: String = unit
        .lines()
        .filter(|l| !l.starts_with("Documentation="))
        .map(|l| match l {
            "ExecStart=/usr/bin/weftd" => format!("ExecStart={}\n", env!("CARGO_BIN_EXE_weftd")),
            _ => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&copy, copied).unwrap_or_else(|e| panic!("write {}: {e}", copy.display()));
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap_or_else(|e| panic!("run systemd-analyze (systemd in scripts/setup.sh): {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Complaints about other units of this machine are not the unit's.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("weftd.service"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}

/// The flag tables of README.md (weftd reference and static pods) against `weftd --help`: every
/// flag exists, takes its `WEFTD_<NAME>` variable, and has exactly the default the README gives
/// (a row whose default is a single literal such as `30`), or none (a row saying off, —, or
/// describing what is used instead).
#[test]
fn readme_flag_tables_match_weftd_help() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .unwrap_or_else(|e| panic!("read README.md: {e}"));
    let help = help_of(env!("CARGO_BIN_EXE_weftd"), &[]);
    let entry = |flag: &str| help_entry(&help, flag);
    let mut checked = 0;
    for row in readme.lines().filter(|l| l.starts_with("| `--")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (flags, default) = (cells[1], cells[2]);
        // A single literal, e.g. "`30`" or "`runc`; any runtime ..." or "`/opt/cni/bin` (...)".
        let literal = default.strip_prefix('`').and_then(|rest| {
            let (value, after) = rest.split_once('`')?;
            (after.is_empty() || after.starts_with(';') || after.starts_with(" (")).then_some(value)
        });
        for flag in flags.split(", ") {
            let flag = flag.trim_matches('`');
            let text = entry(flag);
            let env = format!(
                "[env: WEFTD_{}",
                flag.trim_start_matches("--")
                    .replace('-', "_")
                    .to_uppercase()
            );
            assert!(text.contains(&env), "{flag}: no {env} in {text:?}");
            match literal {
                Some(value) => assert!(
                    text.contains(&format!("[default: {value}]")),
                    "{flag}: README says the default is {value}, weftd --help: {text:?}"
                ),
                None => assert!(
                    !text.contains("[default:"),
                    "{flag}: README gives no default ({default}), weftd --help: {text:?}"
                ),
            }
            checked += 1;
        }
    }
    // The two tables hold over 30 flags; a table the filter stopped matching checks nothing.
    assert!(checked >= 30, "only {checked} README flags found");
}

/// `--etcd-prefix`: weftd reads the config and writes its lease under the given prefix, and
/// ignores Flannel's default one.
#[test]
fn etcd_prefix_flag_moves_config_and_leases() {
    // Nothing under the default prefix: a weftd reading it would wait for a config for ever.
    let cluster = Cluster::new(1, "");
    let prefix = "/weft-test/network";
    cluster.etcd.put(
        &format!("{prefix}/config"),
        r#"{"Network":"10.244.0.0/16"}"#,
    );
    let node = cluster.node(0);
    node.start_weftd(&["--etcd-prefix", prefix]);
    let env = node.wait_subnet_env(START);
    let subnet = node.subnet().unwrap_or_default();
    assert!(env.contains("FLANNEL_NETWORK=10.244.0.0/16"), "{env}");
    let leases = cluster.etcd.get_prefix(&format!("{prefix}/subnets/"));
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(
        leases[0].0,
        format!("{prefix}/subnets/{}", subnet.replace('/', "-")),
        "{leases:?}"
    );
    assert!(
        cluster.etcd.get_prefix("/coreos.com/network/").is_empty(),
        "written under the default prefix"
    );
}

/// A key for the whole `Network` (larger than `SubnetLen`, so never believed) does not keep a
/// new node from leasing a subnet inside it.
#[test]
fn whole_network_key_does_not_block_a_new_node() {
    let cluster = Cluster::new(1, VXLAN_CONFIG);
    let whole = lease_key("10.244.0.0/16");
    cluster.etcd.put(
        &whole,
        &vxlan_lease_value("192.0.2.90", "aa:bb:cc:00:00:90"),
    );
    let node = cluster.node(0);
    node.start_weftd(&[]);
    node.wait_subnet_env(START);
    let subnet = node.subnet().unwrap_or_default();
    assert!(
        subnet.starts_with("10.244.") && subnet.ends_with("/24"),
        "{subnet}"
    );
    assert!(
        cluster.etcd.get(&whole).is_some(),
        "the whole-Network key was removed"
    );
}

/// A route the guard refuses is logged once per revision of its key, however many resyncs
/// refuse it again.
#[test]
fn refused_route_is_logged_once_per_revision() {
    let cluster = Cluster::new(1, VXLAN_CONFIG);
    let node = cluster.node(0);
    // A node-local address inside the pod network: a lease covering it must not be routed.
    node.netns().ip(&["link", "set", "lo", "up"]);
    node.netns()
        .ip(&["addr", "add", "10.244.60.1/32", "dev", "lo"]);
    node.start_weftd(&["--resync-interval", &RESYNC_SECS.to_string()]);
    node.wait_subnet_env(START);
    let key = lease_key(PEER);
    let value = vxlan_lease_value(PEER_IP, PEER_MAC);
    cluster.etcd.put_with_ttl(&key, &value, 600);
    let refusals = || {
        node.log()
            .lines()
            .filter(|l| l.contains("route refused by the guard") && l.contains(&key))
            .count()
    };
    node.wait_until(CONVERGE, "the refusal logged", || refusals() == 1);
    let runs = metric(node, "weft_reconcile_runs_total").unwrap_or_default();
    let runs = wait_reconciles(node, runs, 3.0);
    assert_eq!(refusals(), 1, "{}", node.log_tail(30));
    cluster.etcd.put_with_ttl(&key, &value, 600);
    node.wait_until(CONVERGE, "the new revision logged", || refusals() == 2);
    wait_reconciles(node, runs, 3.0);
    assert_eq!(refusals(), 2, "{}", node.log_tail(30));
    assert!(
        node.route_to(PEER).is_none(),
        "the refused route is in the kernel"
    );
}

/// Lines of `weft_peer_reachable` on the node's `/metrics`.
fn probe_results(node: &Node) -> usize {
    node.http_get("/metrics")
        .map(|(_, m)| {
            m.lines()
                .filter(|l| l.starts_with("weft_peer_reachable{"))
                .count()
        })
        .unwrap_or_default()
}

/// `--peer-probe-interval 0` turns probing off: next to a node probing every second (which
/// reports its peer), the node with 0 reports none.
#[test]
fn peer_probe_interval_zero_turns_probing_off() {
    let cluster = Cluster::new(2, VXLAN_CONFIG);
    let (off, on) = (cluster.node(0), cluster.node(1));
    off.start_weftd(&["--peer-probe-interval", "0"]);
    on.start_weftd(&["--peer-probe-interval", "1"]);
    for node in [off, on] {
        node.wait_subnet_env(START);
    }
    cluster.wait_mesh(CONVERGE);
    on.wait_until(CONVERGE, "the probing node reports its peer", || {
        probe_results(on) > 0
    });
    // Three more of the probing node's rounds.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(probe_results(off), 0, "{}", off.log_tail(20));
}

/// host-gw peers are not probed: two host-gw nodes probing every second report no peer.
#[test]
fn host_gw_peers_are_not_probed() {
    let config = r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.100.0","SubnetMax":"10.244.199.0","Backend":{"Type":"host-gw"}}"#;
    let cluster = Cluster::new(2, config);
    for node in &cluster.nodes {
        node.start_weftd(&["--peer-probe-interval", "1"]);
        node.wait_subnet_env(START);
    }
    let (n1, n2) = (cluster.node(0), cluster.node(1));
    let s2 = n2.subnet().unwrap_or_default();
    n1.wait_until(CONVERGE, "the host-gw route to node 2", || {
        n1.route_to(&s2).is_some()
    });
    // Several probe intervals (peer_probe_interval_zero_turns_probing_off shows a VXLAN node
    // reports its peer within this time).
    std::thread::sleep(Duration::from_secs(4));
    for node in [n1, n2] {
        assert_eq!(probe_results(node), 0, "{}", node.log_tail(20));
    }
}

/// The help text of `flag` in clap's `--help` output: the flag's line and its description, where
/// clap prints `[env: ..] [default: ..]`. Panics when the flag is not there.
fn help_entry(help: &str, flag: &str) -> String {
    let mut lines = help.lines().skip_while(|l| {
        !l.trim_start()
            .strip_prefix(flag)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '))
    });
    let head = lines
        .next()
        .unwrap_or_else(|| panic!("{flag} is not in the help:\n{help}"));
    let body: Vec<&str> = lines
        .take_while(|l| !l.trim_start().starts_with('-'))
        .collect();
    format!("{head} {}", body.join(" "))
}

/// `--help` of one of this package's binaries, with `args` before it.
fn help_of(binary: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(binary)
        .args(args)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("{binary} {args:?} --help: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `weftctl` takes weftd's `--pod-root`, `--image-root` and `--pod-log-dir`, with the same
/// `WEFTD_*` variables and defaults, in every command that reads them.
#[test]
fn weftctl_takes_weftds_pod_flags_and_variables() {
    let weftd = help_of(env!("CARGO_BIN_EXE_weftd"), &[]);
    let commands: [&[&str]; 4] = [&["pods"], &["logs"], &["image", "import"], &["image", "ls"]];
    let mut checked = 0;
    for command in commands {
        let help = help_of(env!("CARGO_BIN_EXE_weftctl"), command);
        for flag in ["--pod-root", "--image-root", "--pod-log-dir"] {
            if !help.contains(flag) {
                continue;
            }
            // The flag's description differs; its variable and default must not.
            let tail = |text: String| text.split_once("[env:").map(|(_, t)| t.trim().to_string());
            assert_eq!(
                tail(help_entry(&help, flag)),
                tail(help_entry(&weftd, flag)),
                "weftctl {command:?} {flag}"
            );
            checked += 1;
        }
    }
    // pods and logs read all three; image commands the image root.
    assert!(checked >= 6, "only {checked} flags found in weftctl's help");
}
