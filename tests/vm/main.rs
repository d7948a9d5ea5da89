//! The VM tier: Debian's kernel in QEMU for what one shared kernel cannot show — real reboots,
//! power loss, a NIC with its own offloads. Each test is one scenario group: it boots its VMs
//! once, runs its scenarios in order, and fails loudly if a VM does not boot. Needs root,
//! `qemu-system-x86` and the kernel `scripts/setup.sh` caches; run alone with `scripts/test-vm.sh`.

#[path = "../common/mod.rs"]
mod common;
mod fixture;

use std::time::{Duration, Instant};

use common::*;
use fixture::*;

const CONVERGE: Duration = Duration::from_secs(60);

fn subnet_of_env(env: &str) -> String {
    subnet_of(env).unwrap_or_else(|| panic!("no FLANNEL_SUBNET in {env}"))
}

#[test]
fn vxlan_pods_across_vms() {
    let _lock = vm_lock();
    let seg = Segment::new(VXLAN_CONFIG);
    let vms = [seg.vm(1), seg.vm(2)];
    let start = Instant::now();
    for vm in &vms {
        eprintln!("boot {}: {:?}", vm.name(), vm.boot());
    }
    eprintln!("both booted in {:?}", start.elapsed());
    let subnets: Vec<String> = vms
        .iter()
        .map(|vm| subnet_of_env(&vm.wait_subnet_env(CONVERGE)))
        .collect();
    eprintln!("subnets {subnets:?}");
    let a = vms[0].add_pod("pa");
    let b = vms[1].add_pod("pb");
    assert!(vms[0].pod_tcp("pa", &vms[1], "pb", &b, 7001), "pod TCP vm1 -> vm2");
    assert!(vms[1].pod_tcp("pb", &vms[0], "pa", &a, 7002), "pod TCP vm2 -> vm1");
}
