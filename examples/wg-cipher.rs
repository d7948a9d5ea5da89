//! What WireGuard's cipher work costs one core on this machine, measured with the code weft's
//! userspace data path runs per packet: boringtun's `Tunn::encapsulate` (copy and
//! ChaCha20-Poly1305 seal) on one side and `Tunn::decapsulate` (copy, open, replay check) on
//! the other, after a real Noise handshake between the two. Run by
//! `scripts/bench-throughput.sh` to put a ceiling beside its WireGuard figures: every bit a
//! pod sends is sealed once and opened once, and on a machine whose cores are shared by both
//! nodes this work adds to what the unencrypted UDP path already spends.
//!
//! Prints, per packet size, the median over ROUNDS of the bytes of plaintext one core seals
//! and opens per second (both halves on the one thread, as the two nodes share the cores), and
//! the core-seconds one Gbit of pod traffic costs in cipher work alone.
//!
//!   cargo run --release --example wg-cipher [ROUNDS]

use std::time::Instant;

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};

/// Packets sealed and opened per round.
const PACKETS: usize = 100_000;

/// Two peers that have shaken hands: `a` sends, `b` receives.
fn pair() -> (Tunn, Tunn) {
    let a_secret = StaticSecret::from([1u8; 32]);
    let b_secret = StaticSecret::from([2u8; 32]);
    let a_public = PublicKey::from(&a_secret);
    let b_public = PublicKey::from(&b_secret);
    let mut a = Tunn::new(a_secret, b_public, None, None, 1, None);
    let mut b = Tunn::new(b_secret, a_public, None, None, 2, None);
    let mut init = vec![0u8; 256];
    let mut resp = vec![0u8; 256];
    let mut spare = vec![0u8; 256];
    let TunnResult::WriteToNetwork(msg) = a.format_handshake_initiation(&mut init, false) else {
        panic!("no handshake initiation");
    };
    let msg = msg.to_vec();
    let TunnResult::WriteToNetwork(answer) = b.decapsulate(None, &msg, &mut resp) else {
        panic!("no handshake response");
    };
    let answer = answer.to_vec();
    // The initiator's session starts with the response; it answers with a keepalive that
    // confirms the session to the responder.
    let TunnResult::WriteToNetwork(keepalive) = a.decapsulate(None, &answer, &mut spare) else {
        panic!("no keepalive after the response");
    };
    let keepalive = keepalive.to_vec();
    match b.decapsulate(None, &keepalive, &mut spare) {
        TunnResult::Done => {}
        other => panic!("keepalive not taken: {}", describe(&other)),
    }
    (a, b)
}

fn describe(r: &TunnResult<'_>) -> &'static str {
    match r {
        TunnResult::Done => "done",
        TunnResult::Err(_) => "error",
        TunnResult::WriteToNetwork(_) => "write to network",
        TunnResult::WriteToTunnelV4(..) => "IPv4 packet",
        TunnResult::WriteToTunnelV6(..) => "IPv6 packet",
    }
}

/// An IPv4 packet of `len` bytes (boringtun reads the version and length of what it opens).
fn packet(len: usize) -> Vec<u8> {
    let mut p = vec![0x5au8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[9] = 6;
    p[12..16].copy_from_slice(&[10, 244, 1, 10]);
    p[16..20].copy_from_slice(&[10, 244, 2, 10]);
    p
}

/// Plaintext bytes per second one core seals and opens, for packets of `len` bytes taken in
/// turn from a 64 KiB super-packet's worth, as the data path seals the segments of one TUN
/// read and opens the datagrams of one GRO batch.
fn round(a: &mut Tunn, b: &mut Tunn, len: usize) -> f64 {
    let count = (64 * 1024 / len).max(1);
    let plain: Vec<Vec<u8>> = (0..count).map(|_| packet(len)).collect();
    let mut sealed = vec![vec![0u8; len + 64]; count];
    let mut opened = vec![vec![0u8; len + 64]; count];
    let mut sizes = vec![0usize; count];
    let batches = PACKETS / count;
    let started = Instant::now();
    for _ in 0..batches {
        for ((p, out), size) in plain.iter().zip(sealed.iter_mut()).zip(sizes.iter_mut()) {
            *size = match a.encapsulate(p, out) {
                TunnResult::WriteToNetwork(out) => out.len(),
                other => panic!("seal: {}", describe(&other)),
            };
        }
        for ((s, out), size) in sealed.iter().zip(opened.iter_mut()).zip(&sizes) {
            match b.decapsulate(None, &s[..*size], out) {
                TunnResult::WriteToTunnelV4(p, _) => assert_eq!(p.len(), len),
                other => panic!("open: {}", describe(&other)),
            }
        }
    }
    (batches * count * len) as f64 / started.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("ROUNDS must be a number"))
        .unwrap_or(5);
    let (mut a, mut b) = pair();
    // 1420: a full segment at WireGuard's pod MTU, what the data path seals per segment of a
    // bulk TCP stream; 100: an ACK, for context.
    for len in [1420usize, 100] {
        let rate = median((0..rounds).map(|_| round(&mut a, &mut b, len)).collect());
        // One Gbit/s of pod traffic is 125 MB/s sealed and the same opened.
        let core_per_gbit = 125e6 / rate;
        println!(
            "packet {len} bytes: seal+open {:.2} GB/s of plaintext per core, {:.3} core-seconds per Gbit",
            rate / 1e9,
            core_per_gbit
        );
    }
}
