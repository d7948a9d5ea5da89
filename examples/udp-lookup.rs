//! Per-packet cost of the UDP backend's forwarding table at 100 and at 10 000 peers, and the
//! cost of a table change, printed as medians and ratios (run by `scripts/bench-scale.sh`,
//! section `udp`).
//!
//! A lookup is what the tx pump does per packet (or GSO super-packet): take the snapshot of
//! the shared table and find the next hop. "one flow" sends every packet to one pod; "spread"
//! sends each packet to a pod of another peer (every peer in turn, the cache-unfriendly case).
//!
//!   cargo run --release --example udp-lookup [ROUNDS]

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use ipnetwork::Ipv4Network;
use weft::backend::udp::{ForwardingTable, SharedTable, TableWriter};

const LOOKUPS: usize = 1 << 20;

/// The i-th peer: subnet 10.x.y.0/24 (from 10.0.1.0 up), public IP in 198.18.0.0/15.
fn peer(i: u32) -> (Ipv4Network, Ipv4Addr) {
    let s = i + 1;
    let subnet = Ipv4Network::new(Ipv4Addr::from(0x0a00_0000 | (s << 8)), 24).expect("/24");
    (subnet, Ipv4Addr::from(0xc612_0000 | (i & 0x1_ffff)))
}

fn table(peers: u32) -> ForwardingTable {
    let own = Ipv4Network::new(Ipv4Addr::new(10, 200, 0, 0), 24).expect("/24");
    ForwardingTable::new(own, (0..peers).map(peer))
}

/// Nanoseconds per lookup of `dsts` (cycled) through the shared table, as the pump does.
fn lookups(shared: &SharedTable, dsts: &[Ipv4Addr]) -> f64 {
    let t0 = Instant::now();
    let mut found = 0usize;
    for k in 0..LOOKUPS {
        let table = match shared.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        found += usize::from(table.next_hop(black_box(dsts[k % dsts.len()])).is_some());
    }
    assert_eq!(found, LOOKUPS, "every destination has a peer");
    t0.elapsed().as_nanos() as f64 / LOOKUPS as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(9);
    let sizes = [100u32, 10_000];
    let shared: Vec<SharedTable> = sizes
        .iter()
        .map(|&n| Arc::new(RwLock::new(Arc::new(table(n)))))
        .collect();
    let one_flow: Vec<Vec<Ipv4Addr>> = sizes
        .iter()
        .map(|&n| vec![Ipv4Addr::from(u32::from(peer(n / 2).0.network()) + 10)])
        .collect();
    // Peers in a scrambled order (a stride coprime to the size), a pod address in each.
    let spread: Vec<Vec<Ipv4Addr>> = sizes
        .iter()
        .map(|&n| {
            (0..n)
                .map(|k| Ipv4Addr::from(u32::from(peer((k * 7919) % n).0.network()) + 10))
                .collect()
        })
        .collect();
    let mut flow_ns = vec![Vec::new(); sizes.len()];
    let mut spread_ns = vec![Vec::new(); sizes.len()];
    for round in 0..rounds {
        // Alternate which size goes first.
        let order: Vec<usize> = if round % 2 == 0 {
            vec![0, 1]
        } else {
            vec![1, 0]
        };
        for &i in &order {
            flow_ns[i].push(lookups(&shared[i], &one_flow[i]));
            spread_ns[i].push(lookups(&shared[i], &spread[i]));
        }
    }
    let (f100, f10k) = (median(flow_ns[0].clone()), median(flow_ns[1].clone()));
    let (s100, s10k) = (median(spread_ns[0].clone()), median(spread_ns[1].clone()));
    println!("   lookup per packet, median of {rounds} rounds of {LOOKUPS} lookups:");
    println!(
        "     one flow:  100 peers {f100:.1} ns, 10 000 peers {f10k:.1} ns (ratio {:.2})",
        f10k / f100
    );
    println!(
        "     spread:    100 peers {s100:.1} ns, 10 000 peers {s10k:.1} ns (ratio {:.2})",
        s10k / s100
    );

    // A table change at 10 000 peers: one lease change applied by the writer, against
    // rebuilding the whole table (what a full pass does).
    let mut writer = TableWriter::new(Arc::new(RwLock::new(Arc::new(ForwardingTable::default()))));
    writer.replace(table(10_000));
    let mut apply_us = Vec::new();
    let mut rebuild_us = Vec::new();
    for k in 0..200u32 {
        let (subnet, _) = peer(k);
        let ip = Ipv4Addr::from(0xc613_0000 + k);
        let t0 = Instant::now();
        writer.apply(&[(subnet, Some(ip))]);
        apply_us.push(t0.elapsed().as_secs_f64() * 1e6);
        if k % 10 == 0 {
            let t0 = Instant::now();
            black_box(table(10_000));
            rebuild_us.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    let (a, r) = (median(apply_us), median(rebuild_us));
    println!(
        "   table change at 10 000 peers: one lease applied {a:.1} us, full rebuild {r:.0} us (ratio {:.4}); whole-table copies {}",
        a / r,
        writer.copies()
    );
}
