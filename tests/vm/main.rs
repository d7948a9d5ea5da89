//! The VM tier: Debian's kernel in QEMU for what one shared kernel cannot show — real reboots,
//! power loss, a NIC with its own offloads. Each test is one scenario group: it boots its VMs
//! once, runs its scenarios in order, and fails loudly if a VM does not boot. Needs root,
//! `qemu-system-x86` and the kernel `scripts/setup.sh` caches; run alone with `scripts/test-vm.sh`.

#[path = "../common/mod.rs"]
mod common;
mod fixture;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::Duration;

use serde_json::Value;

use common::*;
use fixture::*;

const CONVERGE: Duration = Duration::from_secs(90);

fn subnet_of_env(env: &str) -> String {
    subnet_of(env).unwrap_or_else(|| panic!("no FLANNEL_SUBNET in {env}"))
}

/// The guest's own subnet, once weftd wrote subnet.env.
fn own_subnet(vm: &Vm) -> String {
    subnet_of_env(&vm.wait_subnet_env(CONVERGE))
}

/// The VTEP MAC of `flannel.1` in the guest, once it exists.
fn vtep_mac(vm: &Vm) -> String {
    wait_for(CONVERGE, &format!("flannel.1 on {}", vm.name()), || {
        let r = vm.run(&["/usr/bin/ip", "-j", "link", "show", "flannel.1"]);
        let links: Vec<Value> = serde_json::from_str(&r.stdout).ok()?;
        Some(links.first()?["address"].as_str()?.to_string())
    })
}

/// The guest's FDB entries on `flannel.1` that name a remote VTEP: (MAC, destination).
fn vxlan_fdb(vm: &Vm) -> Vec<(String, String)> {
    let r = vm.run(&["/usr/sbin/bridge", "-j", "fdb", "show", "dev", "flannel.1"]);
    let entries: Vec<Value> = serde_json::from_str(&r.stdout).unwrap_or_default();
    let mut out: Vec<(String, String)> = entries
        .iter()
        .filter_map(|e| {
            Some((
                e["mac"].as_str()?.to_string(),
                e["dst"].as_str()?.to_string(),
            ))
        })
        .collect();
    out.sort();
    out
}

/// True if the guest routes `subnet` (a peer's pod subnet).
fn has_route(vm: &Vm, subnet: &str) -> bool {
    vm.ip_json(&["route", "show", subnet])
        .iter()
        .any(|r| r["dst"].as_str() == Some(subnet))
}

/// The lease of `subnet` in etcd, parsed.
fn lease(seg: &Segment, prefix: &str, subnet: &str) -> Option<(Kv, Value)> {
    let key = format!("{prefix}/subnets/{}", subnet.replace('/', "-"));
    let kv = seg.etcd.get_kv(&key)?;
    let value = serde_json::from_str(&kv.value).ok()?;
    Some((kv, value))
}

/// Pod TCP in both directions between pod `pa` on `a` and pod `pb` on `b`.
fn pods_talk(a: &Vm, pa: &str, ip_a: &str, b: &Vm, pb: &str, ip_b: &str, what: &str) {
    assert!(
        a.pod_tcp(pa, b, pb, ip_b),
        "{what}: pod TCP {} -> {}",
        a.name(),
        b.name()
    );
    assert!(
        b.pod_tcp(pb, a, pa, ip_a),
        "{what}: pod TCP {} -> {}",
        b.name(),
        a.name()
    );
}

/// FDB entries of `node` (a namespace on the host's kernel) that name a remote VTEP.
fn node_vxlan_fdb(node: &Node) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = node
        .fdb()
        .iter()
        .filter(|e| e["ifname"].as_str() == Some("flannel.1"))
        .filter_map(|e| {
            Some((
                e["mac"].as_str()?.to_string(),
                e["dst"].as_str()?.to_string(),
            ))
        })
        .collect();
    out.sort();
    out
}

/// Pod TCP both ways between pod `pod` on `vm` and `node_pod` in the node namespace.
fn vm_and_node_pods_talk(vm: &Vm, pod: &str, pod_ip: &str, node_pod: &Pod, what: &str) {
    static PORT: AtomicU16 = AtomicU16::new(7500);
    let nc = |port: &str, listen: bool, ip: &str| -> Command {
        let mut cmd = node_pod.netns().command("busybox");
        if listen {
            cmd.args(["nc", "-l", "-p", port]);
        } else {
            cmd.args(["nc", "-w", "3", ip, port]);
        }
        cmd
    };
    // node pod -> VM pod: listener in the guest, client in the node's pod.
    let port = PORT.fetch_add(1, Ordering::Relaxed).to_string();
    let token = format!("node-to-{}-{port}", vm.name());
    let out = format!("/tmp/tcp-{port}.out");
    vm.spawn(&[
        "/bin/sh",
        "-c",
        "exec /usr/bin/ip netns exec \"$0\" /bin/busybox nc -l -p \"$1\" > \"$2\"",
        pod,
        &port,
        &out,
    ]);
    let sent = wait_for_bool(Duration::from_secs(20), || {
        let mut cmd = nc(&port, false, pod_ip);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let Ok(mut child) = cmd.spawn() else {
            return false;
        };
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(format!("{token}\n").as_bytes());
        }
        child.wait().is_ok_and(|s| s.success())
    });
    assert!(
        sent && wait_for_bool(Duration::from_secs(5), || vm
            .run(&["cat", &out])
            .stdout
            .contains(&token)),
        "{what}: pod TCP node -> {}",
        vm.name()
    );
    // VM pod -> node pod: listener in the node's pod, client in the guest.
    let port = PORT.fetch_add(1, Ordering::Relaxed).to_string();
    let token = format!("{}-to-node-{port}", vm.name());
    let mut listener = nc(&port, true, "")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("busybox nc -l in the node's pod: {e}"));
    let node_ip = node_pod.ip().to_string();
    let sent = wait_for_bool(Duration::from_secs(20), || {
        let argv = [
            "/usr/bin/ip",
            "netns",
            "exec",
            pod,
            "/bin/busybox",
            "nc",
            "-w",
            "3",
            &node_ip,
            &port,
        ];
        vm.run_full(&argv, &[], &format!("{token}\n")).rc == 0
    });
    let _ = listener.kill();
    let got = listener
        .wait_with_output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert!(
        sent && got.contains(&token),
        "{what}: pod TCP {} -> node (got {got:?})",
        vm.name()
    );
}

/// Sets the NIC's transmit offloads (checksum, scatter-gather, TSO, GSO) in the guest.
fn nic_offloads(vm: &Vm, on: bool) {
    let v = if on { "on" } else { "off" };
    vm.run_ok(&[
        "/usr/sbin/ethtool",
        "-K",
        "eth0",
        "tx",
        v,
        "sg",
        v,
        "tso",
        v,
        "gso",
        v,
    ]);
    let shown = vm.run_ok(&["/usr/sbin/ethtool", "-k", "eth0"]);
    assert!(
        shown.contains(&format!("tx-checksumming: {v}")),
        "{}: tx-checksumming not {v}:\n{shown}",
        vm.name()
    );
}

/// Scenarios 1–3 (and VXLAN with the NIC's offloads on and off) on two VMs and a node namespace
/// on the host's kernel (three VMs do not fit two shared cores).
#[test]
fn vxlan_pods_reboot_and_power_loss() {
    let _lock = vm_lock();
    let seg = Segment::new(VXLAN_CONFIG);
    let (vm1, vm2) = (seg.vm(1), seg.vm(2));
    eprintln!("boot of two VMs: {:?}", boot_all(&[&vm1, &vm2]));
    let node = Node::new(&seg.underlay, 3, &seg.etcd.endpoint());
    node.start_weftd(&[]);

    // 1. weftd in each guest, pods wired by the CNI plugin, TCP across VMs over VXLAN, and
    //    between a guest's pod and the node namespace's.
    let (s1, s2) = (own_subnet(&vm1), own_subnet(&vm2));
    let s3 = subnet_of_env(&node.wait_subnet_env(CONVERGE));
    assert!(s1 != s2 && s1 != s3 && s2 != s3, "{s1} {s2} {s3}");
    let (a, b, np) = (vm1.add_pod("pa"), vm2.add_pod("pb"), node.add_pod());
    wait_until(CONVERGE, "routes to each other's subnet", || {
        has_route(&vm1, &s2)
            && has_route(&vm2, &s1)
            && has_route(&vm1, &s3)
            && node.route_to(&s1).is_some()
    });
    pods_talk(&vm1, "pa", &a, &vm2, "pb", &b, "vxlan");
    vm_and_node_pods_talk(&vm1, "pa", &a, &np, "vxlan");

    // 4b. The same path with the virtio NIC's transmit offloads off, then on again.
    for vm in [&vm1, &vm2] {
        nic_offloads(vm, false);
    }
    pods_talk(&vm1, "pa", &a, &vm2, "pb", &b, "vxlan, NIC offloads off");
    for vm in [&vm1, &vm2] {
        nic_offloads(vm, true);
    }
    pods_talk(&vm1, "pa", &a, &vm2, "pb", &b, "vxlan, NIC offloads on");

    // 2. Real reboot of vm1: same subnet, same VTEP MAC; vm2's and the node's FDB never change.
    let mac1 = vtep_mac(&vm1);
    let (_, before) = lease(&seg, ETCD_PREFIX, &s1).unwrap_or_else(|| panic!("no lease for {s1}"));
    assert_eq!(
        before["BackendData"]["VtepMAC"].as_str(),
        Some(mac1.as_str())
    );
    let fdb_before = vxlan_fdb(&vm2);
    assert!(
        fdb_before.contains(&(mac1.clone(), vm1.ip().to_string())),
        "vm2's FDB has no entry for vm1's VTEP {mac1}: {fdb_before:?}"
    );
    let node_fdb_before = node_vxlan_fdb(&node);
    assert!(
        node_fdb_before.contains(&(mac1.clone(), vm1.ip().to_string())),
        "the node's FDB has no entry for vm1's VTEP {mac1}: {node_fdb_before:?}"
    );
    let rebooting = AtomicBool::new(true);
    let mut fdb_seen = Vec::new();
    let mut node_fdb_seen = Vec::new();
    let reboot_time = std::thread::scope(|scope| {
        let reboot = scope.spawn(|| {
            let t = vm1.reboot();
            rebooting.store(false, Ordering::Relaxed);
            t
        });
        while rebooting.load(Ordering::Relaxed) {
            fdb_seen.push(vxlan_fdb(&vm2));
            node_fdb_seen.push(node_vxlan_fdb(&node));
            std::thread::sleep(Duration::from_millis(300));
        }
        match reboot.join() {
            Ok(t) => t,
            Err(e) => std::panic::resume_unwind(e),
        }
    });
    eprintln!("reboot of vm1 back to its agent: {reboot_time:?}");
    assert_eq!(vtep_mac(&vm1), mac1, "VTEP MAC after reboot");
    assert_eq!(own_subnet(&vm1), s1, "subnet after reboot");
    wait_until(
        CONVERGE,
        "vm1's weftd back (second start in its log)",
        || vm1.weftd_log().matches("weft-vm: start weftd").count() >= 2 && has_route(&vm1, &s2),
    );
    let (_, after) = lease(&seg, ETCD_PREFIX, &s1).unwrap_or_else(|| panic!("no lease for {s1}"));
    assert_eq!(
        after["BackendData"]["VtepMAC"].as_str(),
        Some(mac1.as_str())
    );
    fdb_seen.push(vxlan_fdb(&vm2));
    node_fdb_seen.push(node_vxlan_fdb(&node));
    eprintln!("FDB samples during the reboot: {}", fdb_seen.len());
    for (i, seen) in node_fdb_seen.iter().enumerate() {
        assert_eq!(
            seen, &node_fdb_before,
            "the node's FDB changed during vm1's reboot (sample {i})"
        );
    }
    for (i, seen) in fdb_seen.iter().enumerate() {
        assert_eq!(
            seen, &fdb_before,
            "vm2's FDB changed during vm1's reboot (sample {i})"
        );
    }
    let a = vm1.add_pod("pa");
    pods_talk(&vm1, "pa", &a, &vm2, "pb", &b, "vxlan after reboot");
    vm_and_node_pods_talk(&vm1, "pa", &a, &np, "vxlan after reboot");

    // 3. Power loss: vm2 keeps vm1's route while its lease lives; vm1 takes its subnet back.
    vm1.power_off();
    std::thread::sleep(Duration::from_secs(10));
    assert!(
        has_route(&vm2, &s1),
        "vm2 dropped the route of a powered-off peer with a live lease"
    );
    assert!(vxlan_fdb(&vm2).contains(&(mac1.clone(), vm1.ip().to_string())));
    assert!(
        node.route_to(&s1).is_some(),
        "the node dropped the route of a powered-off peer"
    );
    let (kv, _) = lease(&seg, ETCD_PREFIX, &s1).unwrap_or_else(|| panic!("no lease for {s1}"));
    assert_ne!(kv.lease, 0, "vm1's subnet is held by an etcd lease");
    seg.etcd.revoke(kv.lease); // what expiry does after the TTL
    wait_until(CONVERGE, "vm2 drops the route of vm1's gone lease", || {
        !has_route(&vm2, &s1) && node.route_to(&s1).is_none()
    });
    eprintln!("boot of vm1 after power loss: {:?}", vm1.boot());
    wait_until(CONVERGE, "vm1 leases its old subnet again", || {
        lease(&seg, ETCD_PREFIX, &s1).is_some_and(|(_, v)| v["PublicIP"].as_str() == Some(vm1.ip()))
    });
    assert_eq!(own_subnet(&vm1), s1);
    wait_until(CONVERGE, "vm2 routes vm1's subnet again", || {
        has_route(&vm2, &s1)
    });
    let a = vm1.add_pod("pa");
    pods_talk(&vm1, "pa", &a, &vm2, "pb", &b, "vxlan after power loss");
    vm_and_node_pods_talk(&vm1, "pa", &a, &np, "vxlan after power loss");
}

/// Sets up a static pod on `vm` (manifest, image archive and CNI config in its persistent
/// directory) and returns weftd's pod flags. The pod's container writes the boot id to a hostPath
/// volume, read by [`static_pod_boot`].
fn static_pod_args(vm: &Vm) -> Vec<String> {
    let state = vm.state_dir();
    let lib = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lib/busybox-image.sh");
    let out = Command::new("bash")
        .args(["-c", "source \"$0\" && build_busybox_image \"$1\" \"$2\""])
        .arg(&lib)
        .arg(state.join("images.tar"))
        .arg(state.join("image-scratch"))
        .output()
        .unwrap_or_else(|e| panic!("bash {}: {e}", lib.display()));
    assert!(
        out.status.success(),
        "busybox image: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for dir in ["manifests", "cni", "out"] {
        std::fs::create_dir_all(state.join(dir)).unwrap_or_else(|e| panic!("mkdir {dir}: {e}"));
    }
    // The network and data dir of `Vm::add_pod`: one IPAM store for both kinds of pods.
    let conf = r#"{"cniVersion":"1.0.0","name":"weft-vm","type":"weft","subnetFile":"/var/lib/weft/subnet.env","dataDir":"/run/cni-networks"}"#;
    std::fs::write(state.join("cni/10-weft.conf"), conf)
        .unwrap_or_else(|e| panic!("cni conf: {e}"));
    let manifest = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"bootstamp"},
"spec":{"containers":[{"name":"c","image":"busybox:latest",
"command":["sh","-c","cat /proc/sys/kernel/random/boot_id > /out/boot; exec sleep 3600"],
"volumeMounts":[{"name":"out","mountPath":"/out"}]}],
"volumes":[{"name":"out","hostPath":{"path":"/var/lib/weft/out"}}]}}"#;
    std::fs::write(state.join("manifests/bootstamp.json"), manifest)
        .unwrap_or_else(|e| panic!("manifest: {e}"));
    [
        ("--pod-manifest-path", "/var/lib/weft/manifests"),
        ("--cni-conf-dir", "/var/lib/weft/cni"),
        ("--cni-bin-dir", "/opt/weft"),
        ("--cni-cache-dir", "/run/cni-cache"),
        ("--image-root", "/run/weft-images"),
        ("--pod-root", "/run/weft-pods"),
        ("--pod-log-dir", "/run/pod-logs"),
    ]
    .iter()
    .flat_map(|(flag, value)| [flag.to_string(), value.to_string()])
    .collect()
}

/// Waits until the static pod of [`static_pod_args`] has run in `vm`'s current boot.
fn static_pod_ran_this_boot(vm: &Vm, what: &str) {
    let boot = vm.boot_id();
    wait_until(Duration::from_secs(180), what, || {
        std::fs::read_to_string(vm.state_dir().join("out/boot"))
            .is_ok_and(|stamp| stamp.trim() == boot)
    });
}

/// Scenario 4: the UDP backend, then (after a real reboot of both VMs into another network)
/// host-gw, each with pod TCP both ways across the VMs. Scenario 2's static pods: vm1 runs a
/// static pod, and runs it again after the reboot.
#[test]
fn udp_then_host_gw_and_a_static_pod_across_reboot() {
    const UDP: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}"#;
    const HOST_GW_PREFIX: &str = "/weft-vm/host-gw";
    const HOST_GW: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#;
    let _lock = vm_lock();
    let seg = Segment::new(UDP);
    let (vm1, vm2) = (seg.vm(1), seg.vm(2));
    let pod_args = static_pod_args(&vm1);
    let mut args = vm1.default_weftd_args(&seg.etcd.endpoint());
    args.extend(pod_args.iter().cloned());
    vm1.set_weftd_args(&args);
    eprintln!("boot of two VMs: {:?}", boot_all(&[&vm1, &vm2]));

    let (s1, s2) = (own_subnet(&vm1), own_subnet(&vm2));
    assert_ne!(s1, s2);
    // Flannel's UDP backend routes the whole network to flannel0; pods_talk retries until the
    // peers know each other.
    let (a, b) = (vm1.add_pod("pa"), vm2.add_pod("pb"));
    assert_eq!(
        lease(&seg, ETCD_PREFIX, &s1).map(|(_, v)| v["BackendType"].clone()),
        Some(Value::from("udp"))
    );
    pods_talk(&vm1, "pa", &a, &vm2, "pb", &b, "udp");
    static_pod_ran_this_boot(&vm1, "the static pod's container runs");
    let first_boot = vm1.boot_id();

    seg.etcd.put(&format!("{HOST_GW_PREFIX}/config"), HOST_GW);
    for vm in [&vm1, &vm2] {
        let mut args = vm.default_weftd_args(&seg.etcd.endpoint());
        args.extend(["--etcd-prefix".to_string(), HOST_GW_PREFIX.to_string()]);
        if vm.name() == vm1.name() {
            args.extend(pod_args.iter().cloned());
        }
        vm.set_weftd_args(&args);
    }
    eprintln!("reboot of two VMs: {:?}", reboot_all(&[&vm1, &vm2]));
    let (s1, s2) = (own_subnet(&vm1), own_subnet(&vm2));
    wait_until(CONVERGE, "host-gw: leases in the new network", || {
        lease(&seg, HOST_GW_PREFIX, &s1).is_some() && lease(&seg, HOST_GW_PREFIX, &s2).is_some()
    });
    wait_until(CONVERGE, "host-gw: routes via the peer's address", || {
        let via = |vm: &Vm, subnet: &str, gw: &str| {
            vm.ip_json(&["route", "show", subnet])
                .iter()
                .any(|r| r["gateway"].as_str() == Some(gw))
        };
        via(&vm1, &s2, vm2.ip()) && via(&vm2, &s1, vm1.ip())
    });
    let (a, b) = (vm1.add_pod("pa"), vm2.add_pod("pb"));
    pods_talk(&vm1, "pa", &a, &vm2, "pb", &b, "host-gw");
    assert_ne!(vm1.boot_id(), first_boot);
    static_pod_ran_this_boot(&vm1, "the static pod runs again after the reboot");
}

#[test]
fn wireguard_kernel_data_path_in_vms_and_userspace_on_the_host() {
    const WG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}"#;
    let _lock = vm_lock();
    let seg = Segment::new(WG);
    let (vm1, vm2) = (seg.vm(1), seg.vm(2));
    eprintln!("boot of two VMs: {:?}", boot_all(&[&vm1, &vm2]));
    // The host's kernel has no WireGuard: this node runs the userspace data path.
    let node = Node::new(&seg.underlay, 3, &seg.etcd.endpoint());
    node.start_weftd(&[]);

    for vm in [&vm1, &vm2] {
        own_subnet(vm);
    }
    node.wait_subnet_env(CONVERGE);
    for vm in [&vm1, &vm2] {
        let links = vm.ip_json(&["-d", "link", "show", "flannel-wg"]);
        assert_eq!(
            links.first().map(|l| l["linkinfo"]["info_kind"].clone()),
            Some(Value::from("wireguard")),
            "{}: flannel-wg is the kernel's WireGuard device: {links:?}",
            vm.name()
        );
        assert!(
            vm.weftd_log().contains(r#"datapath="kernel""#),
            "{}: the kernel data path is logged:\n{}",
            vm.name(),
            vm.weftd_log()
        );
    }
    assert!(node.log().contains("using the userspace data path"));
    let (a, b, np) = (vm1.add_pod("pa"), vm2.add_pod("pb"), node.add_pod());
    pods_talk(&vm1, "pa", &a, &vm2, "pb", &b, "kernel wireguard");
    vm_and_node_pods_talk(&vm1, "pa", &a, &np, "kernel and userspace wireguard");

    // A real reboot of vm1 keeps its private key (in the persistent state directory): the
    // lease's public key is the same, so no peer is re-keyed, and pods talk again.
    let s1 = own_subnet(&vm1);
    let key_of = |subnet: &str| {
        lease(&seg, ETCD_PREFIX, subnet).map(|(_, v)| v["BackendData"]["PublicKey"].clone())
    };
    let before = key_of(&s1).unwrap_or_else(|| panic!("no lease for {s1}"));
    eprintln!("reboot of vm1: {:?}", vm1.reboot());
    assert_eq!(own_subnet(&vm1), s1, "subnet after reboot");
    wait_until(
        CONVERGE,
        "vm1's weftd back (second start in its log)",
        || vm1.weftd_log().matches("weft-vm: start weftd").count() >= 2,
    );
    assert_eq!(key_of(&s1), Some(before), "public key after reboot");
    let a = vm1.add_pod("pa");
    pods_talk(
        &vm1,
        "pa",
        &a,
        &vm2,
        "pb",
        &b,
        "kernel wireguard after reboot",
    );
}

/// The kernel's WireGuard over IPv6 in Flannel's default `separate` mode: in a dual-stack
/// network each VM runs the kernel's `flannel-wg` (IPv4 underlay, port 51820) and
/// `flannel-wg-v6` (IPv6 underlay, port 51821), and pods talk over both families.
#[test]
fn wireguard_kernel_data_path_over_ipv6_in_vms() {
    const WG6: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","Backend":{"Type":"wireguard"}}"#;
    let _lock = vm_lock();
    let seg = Segment::new(WG6);
    let (vm1, vm2) = (seg.vm(1), seg.vm(2));
    eprintln!("boot of two VMs: {:?}", boot_all(&[&vm1, &vm2]));
    for vm in [&vm1, &vm2] {
        own_subnet(vm);
        let env = vm.wait_subnet_env(CONVERGE);
        assert!(
            env.contains("FLANNEL_IPV6_SUBNET=fd00:10:244:"),
            "{}: subnet.env has no IPv6 subnet:\n{env}",
            vm.name()
        );
        for dev in ["flannel-wg", "flannel-wg-v6"] {
            let links = vm.ip_json(&["-d", "link", "show", dev]);
            assert_eq!(
                links.first().map(|l| l["linkinfo"]["info_kind"].clone()),
                Some(Value::from("wireguard")),
                "{}: {dev} is the kernel's WireGuard device: {links:?}\n{}",
                vm.name(),
                vm.weftd_log()
            );
        }
        let port = vm.run_ok(&["/usr/bin/wg", "show", "flannel-wg-v6", "listen-port"]);
        assert_eq!(port.trim(), "51821", "{}: flannel-wg-v6's port", vm.name());
    }
    let a = vm1.add_pod_addresses("pa");
    let b = vm2.add_pod_addresses("pb");
    assert!(
        a.len() == 2 && b.len() == 2,
        "one address per family: {a:?} {b:?}"
    );
    pods_talk(
        &vm1,
        "pa",
        &a[0],
        &vm2,
        "pb",
        &b[0],
        "kernel wireguard, IPv4 pods",
    );
    pods_talk(
        &vm1,
        "pa",
        &a[1],
        &vm2,
        "pb",
        &b[1],
        "kernel wireguard, IPv6 pods",
    );
    // The IPv6 device's peer is the other VM at its IPv6 underlay address.
    let endpoints = vm1.run_ok(&["/usr/bin/wg", "show", "flannel-wg-v6", "endpoints"]);
    assert!(
        endpoints.contains(&format!("[{}]:51821", vm2.ip6())),
        "vm1's flannel-wg-v6 endpoints: {endpoints}"
    );
}
