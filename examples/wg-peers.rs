//! What one lease change costs weftd's WireGuard backend at 10 000 dual-stack peers (Flannel's
//! `separate` mode: `flannel-wg` and `flannel-wg-v6`), printed as medians and their ratio (run
//! by `scripts/bench-scale.sh`, section `wgpeers`).
//!
//! "recompute" is what an incremental pass did until the desired peers were kept by lease:
//! take the change into the table of believed leases, copy them out, compute every peer of each
//! device ([`wireguard_peers`]) and diff them against the peers last set
//! ([`kernel::peer_changes`]). "by lease" is what it does now: [`DesiredPeers::set`] per device,
//! which recomputes only the peers the changed lease makes. Both run the real code; the changes
//! cycle through a new peer, a peer leaving and a peer's new public key, as the scale bench's
//! churn does.
//!
//!   cargo run --release --example wg-peers [ROUNDS] [PEERS]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use ipnetwork::{Ipv4Network, Ipv6Network};
use weft::backend::wireguard::kernel::{peer_changes, KernelPeer};
use weft::backend::wireguard::peers::{lease_key, LeaseKey};
use weft::backend::wireguard::{wireguard_peers, DesiredPeers, DeviceRole, PeerContext};
use weft::lease::{Lease, LeaseAttrs};
use weft::wireguard_key::WireGuardKey;

/// Changes timed per round.
const CHANGES: usize = 300;

/// Peer `i`'s dual-stack wireguard lease (public key generation `gen`): 10.x.y.0/24 from
/// 10.0.1.0 up, fd00:20:0:n::/64, PublicIP in 198.18.0.0/15, PublicIPv6 in 2001:db8::/32.
fn lease(i: u32, gen: u8) -> Lease {
    let s = i + 1;
    let mut key = [gen; 32];
    key[..4].copy_from_slice(&s.to_be_bytes());
    let key = WireGuardKey::from_bytes(key).to_string();
    Lease {
        subnet: Ipv4Network::new(Ipv4Addr::from(0x0a00_0000 | (s << 8)), 24).expect("/24"),
        ipv6_subnet: Some(
            Ipv6Network::new(
                Ipv6Addr::from(0xfd00_0020_0000_u128 << 80 | u128::from(s) << 64),
                64,
            )
            .expect("/64"),
        ),
        attrs: LeaseAttrs {
            public_ip: Ipv4Addr::from(0xc612_0000 | (i & 0x1_ffff)),
            public_ipv6: Some(Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(s))),
            backend_type: "wireguard".to_string(),
            backend_data: Some(serde_json::json!({"PublicKey": key, "Port": 51820})),
            backend_v6_data: Some(serde_json::json!({"PublicKey": key, "Port": 51821})),
        },
        etcd_lease: Some(1),
        mod_revision: 1,
    }
}

fn context(listen_port: u16) -> PeerContext {
    PeerContext {
        own: Some(Ipv4Network::new(Ipv4Addr::new(10, 200, 0, 0), 24).expect("/24")),
        own6: Some("fd00:20:0:f000::/64".parse().expect("/64")),
        ipv4: true,
        ipv6: true,
        listen_port,
        local_v4: true,
        local_v6: Some("2001:db8::10".parse().expect("address")),
    }
}

/// The k-th change: (lease key, new version or `None`), against `next` new peers so far.
fn change(k: usize, peers: u32, next: &mut u32) -> (LeaseKey, Option<Lease>) {
    match k % 3 {
        0 => {
            *next += 1;
            let l = lease(peers + *next, 1);
            (lease_key(&l), Some(l))
        }
        1 => (lease_key(&lease((k as u32 * 7919) % peers, 1)), None),
        _ => {
            let l = lease((k as u32 * 104_729) % peers, 2 + (k % 200) as u8);
            (lease_key(&l), Some(l))
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let peers: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let devices = [
        (context(51820), DeviceRole::Ipv4),
        (context(51821), DeviceRole::Ipv6),
    ];
    let all: Vec<Lease> = (0..peers).map(|i| lease(i, 1)).collect();
    let (mut recompute, mut by_lease) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Recompute: the believed leases by key, every peer of each device per change, diffed
        // against the peers last set.
        let mut table: BTreeMap<LeaseKey, Lease> =
            all.iter().map(|l| (lease_key(l), l.clone())).collect();
        let mut known: Vec<_> = devices
            .iter()
            .map(|(ctx, role)| wireguard_peers(ctx, *role, &all))
            .collect();
        let mut next = 0;
        let t0 = Instant::now();
        for k in 0..CHANGES {
            let (key, l) = change(k, peers, &mut next);
            match l {
                Some(l) => table.insert(key, l),
                None => table.remove(&key),
            };
            let leases: Vec<Lease> = table.values().cloned().collect();
            for ((ctx, role), known) in devices.iter().zip(known.iter_mut()) {
                let specs = wireguard_peers(ctx, *role, &leases);
                let actual: BTreeMap<_, _> = known
                    .iter()
                    .map(|(k, p)| {
                        let peer = KernelPeer {
                            endpoint: Some(p.endpoint),
                            allowed: p.allowed.clone(),
                        };
                        (*k, peer)
                    })
                    .collect();
                black_box(peer_changes(&specs, &actual));
                *known = specs;
            }
        }
        let per_recompute = t0.elapsed().as_secs_f64() * 1e6 / CHANGES as f64;
        // By lease: each device's desired peers take the change alone.
        let mut desired: Vec<DesiredPeers> = devices
            .iter()
            .map(|(ctx, role)| DesiredPeers::new(ctx, *role, &all))
            .collect();
        let mut next = 0;
        let t0 = Instant::now();
        for k in 0..CHANGES {
            let (key, l) = change(k, peers, &mut next);
            for ((ctx, role), d) in devices.iter().zip(desired.iter_mut()) {
                black_box(d.set(ctx, *role, key, l.as_ref()));
            }
        }
        let per_lease = t0.elapsed().as_secs_f64() * 1e6 / CHANGES as f64;
        // Both ways end with the same peers.
        for (d, k) in desired.iter().zip(&known) {
            assert_eq!(d.peers(), k, "round {round}: the two ways disagree");
        }
        println!(
            "   round {round}: one lease change at {peers} dual-stack peers, two devices: \
             recompute {per_recompute:.1} µs, by lease {per_lease:.2} µs"
        );
        recompute.push(per_recompute);
        by_lease.push(per_lease);
    }
    let (r, l) = (median(recompute), median(by_lease));
    println!(
        "   wireguard peers, one lease change at {peers} dual-stack peers (median of {rounds} \
         rounds of {CHANGES}): recompute {r:.1} µs, by lease {l:.2} µs, ratio {:.0}x",
        r / l
    );
}
