//! The userspace WireGuard data path, for kernels without the WireGuard module: the UDP
//! backend's TUN and socket machinery (multi-queue TUN with virtio-net headers, TCP
//! super-packets cut once into MTU segments, UDP GSO sends and GRO receives, coalesced TUN
//! writes) with boringtun's `Tunn` per peer for the Noise handshake, timers and ChaCha20-Poly1305.
//!
//! Per TUN queue a tx thread reads a (super-)packet, finds the peer whose allowed IPs hold its
//! destination, encrypts all its segments under one lock of that peer and sends them as one
//! GSO batch; an rx thread receives GRO batches (one sender each), decrypts them under one
//! lock of the sending peer, drops what the peer may not send (WireGuard's cryptokey
//! routing: the inner source must be in the peer's allowed IPs) and writes runs of one TCP
//! flow back as one segment. A timer thread drives handshakes, rekeys and keepalives.
//!
//! It runs in the data path process ([`super::datapath`]), not in weftd, so a weftd restart
//! does not pause it.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::IpAddr;
use std::ops::Range;
use std::os::fd::{AsFd as _, AsRawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::{Tunn, TunnResult};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use tun_rs::{SyncDevice, VirtioNetHdr, VIRTIO_NET_HDR_LEN};

use super::peers::PeerSpec;
use crate::backend::udp::offload::{
    complete_checksum, is_gso, segment, spread, PacketAt, Segment, TcpRun,
};
use crate::backend::udp::packet::{ipv4_destination, ipv6_destination, parse_ipv4, parse_ipv6};
use crate::backend::udp::pumps::{
    encode_counters, is_fatal, PumpThreads, PLAIN, POLL_MS, READ_BUFFER, RECV_MESSAGES, SPREAD_ROOM,
};
use crate::backend::udp::socket::{
    poll_readable, Datagram, RecvBatch, UnderlaySocket, RECV_BUFFER,
};
use crate::wireguard_key::{SecretKey, WireGuardKey};

/// Bytes WireGuard adds to a packet: type, receiver index, counter (16) and the tag (16).
const DATA_OVERHEAD: usize = 32;
/// Room `encapsulate` wants beyond a packet's own ciphertext: a handshake initiation (148
/// bytes) goes out in place of the packet when the session needs one.
const HANDSHAKE_ROOM: usize = 148;
/// Room for the ciphertexts of a super-packet of up to 64 segments (their headers take
/// [`SPREAD_ROOM`], each grows by [`DATA_OVERHEAD`]) and a handshake; super-packets cut finer
/// are sealed and sent in several batches.
const SEAL_BUFFER: usize = READ_BUFFER + SPREAD_ROOM + 128 * DATA_OVERHEAD + 256;
/// How often the timers of every peer run (boringtun wants 100 ms to 250 ms).
const TIMER_TICK: Duration = Duration::from_millis(100);
/// WireGuard's REKEY_TIMEOUT: a session younger than this is not replaced because a datagram
/// came for a session this process does not hold (see [`may_reinitiate`]).
const REKEY_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a data datagram for a session this process does not hold should start a
/// handshake, given how long ago the current session was made (`None`: there is none). With
/// no session (this process was restarted and the peer still uses the old one) it should, at
/// once rather than after the peer's 15 s rekey timeout. With a young one it should not:
/// such a datagram needs no key to forge, only the peer's source address, and answering each
/// with a handshake would let anyone who can spoof that address make the two nodes shake
/// hands once per round trip.
fn may_reinitiate(since_last_handshake: Option<Duration>) -> bool {
    since_last_handshake.is_none_or(|d| d >= REKEY_TIMEOUT)
}
/// Receiver indices are 24 bits; boringtun puts the session in the low 8.
const MAX_PEER_INDEX: u32 = (1 << 24) - 1;

/// Packet and drop counters of the userspace WireGuard data path, for `/metrics`.
#[derive(Debug, Default)]
pub struct WireGuardCounters {
    /// Packets encrypted and sent to peers.
    pub tx_packets: AtomicU64,
    /// Bytes of those packets (before encryption).
    pub tx_bytes: AtomicU64,
    /// Packets for an address no peer's allowed IPs hold (dropped).
    pub tx_no_peer: AtomicU64,
    /// Packets read from the device that are neither IPv4 nor IPv6 or cannot be cut into
    /// segments.
    pub tx_dropped: AtomicU64,
    /// Failed TUN reads and UDP sends.
    pub tx_errors: AtomicU64,
    /// Packets decrypted and written to the device.
    pub rx_packets: AtomicU64,
    /// Bytes of those packets.
    pub rx_bytes: AtomicU64,
    /// Datagrams from an address that is no peer's endpoint (dropped).
    pub rx_unknown_source: AtomicU64,
    /// Datagrams that failed authentication, replays, and handshakes refused.
    pub rx_rejected: AtomicU64,
    /// Decrypted packets whose source the peer's allowed IPs do not hold, or whose
    /// destination is not this node's subnet (dropped).
    pub rx_not_allowed: AtomicU64,
    /// Failed UDP receives and TUN writes.
    pub rx_errors: AtomicU64,
    /// Handshake and keepalive messages sent.
    pub handshakes_sent: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    if n > 0 {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

impl WireGuardCounters {
    /// Every counter: its name (`weft_wireguard_<name>_total` on `/metrics`, `weft_<name>=` on
    /// the control socket), value and help text.
    pub fn rows(&self) -> [(&'static str, &AtomicU64, &'static str); 12] {
        [
            (
                "tx_packets",
                &self.tx_packets,
                "Packets encrypted and sent to peers.",
            ),
            (
                "tx_bytes",
                &self.tx_bytes,
                "Bytes of packets sent to peers.",
            ),
            (
                "tx_no_peer",
                &self.tx_no_peer,
                "Packets no peer's allowed IPs hold.",
            ),
            (
                "tx_dropped",
                &self.tx_dropped,
                "Packets that are neither IPv4 nor IPv6 or cannot be segmented.",
            ),
            (
                "tx_errors",
                &self.tx_errors,
                "Failed TUN reads and UDP sends.",
            ),
            (
                "rx_packets",
                &self.rx_packets,
                "Packets decrypted from peers.",
            ),
            (
                "rx_bytes",
                &self.rx_bytes,
                "Bytes of packets decrypted from peers.",
            ),
            (
                "rx_unknown_source",
                &self.rx_unknown_source,
                "Datagrams from addresses that are no peer's endpoint.",
            ),
            (
                "rx_rejected",
                &self.rx_rejected,
                "Datagrams failing authentication or replay checks.",
            ),
            (
                "rx_not_allowed",
                &self.rx_not_allowed,
                "Decrypted packets outside the peer's allowed IPs or not for this node.",
            ),
            (
                "rx_errors",
                &self.rx_errors,
                "Failed UDP receives and TUN writes.",
            ),
            (
                "handshakes_sent",
                &self.handshakes_sent,
                "Handshake, cookie and keepalive messages sent.",
            ),
        ]
    }
}

/// The counters as `weft_wireguard_<name>_total` on the daemon's `/metrics`.
impl Collector for WireGuardCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        encode_counters(&mut encoder, "weft_wireguard", &self.rows())
    }
}

/// One peer as the pumps see it: its settings and its WireGuard state machine.
pub struct Peer {
    spec: PeerSpec,
    /// The PSK and keepalive its `Tunn` was made with.
    psk: Option<SecretKey>,
    keepalive: u16,
    tunn: Arc<Mutex<Tunn>>,
}

impl Peer {
    fn lock(&self) -> MutexGuard<'_, Tunn> {
        match self.tunn.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn allows(&self, src: IpAddr) -> bool {
        self.spec.allowed.iter().any(|n| n.contains(src))
    }
}

/// The peers by allowed IPs (longest prefix first) and by endpoint address, swapped whole by
/// a `set`; a peer whose key and settings stay keeps its sessions.
#[derive(Default)]
pub struct PeerTable {
    own_subnet: Option<Ipv4Network>,
    own_subnet6: Option<Ipv6Network>,
    by_len: Vec<(u8, HashMap<u32, Arc<Peer>>)>,
    by_len6: Vec<(u8, HashMap<u128, Arc<Peer>>)>,
    by_endpoint: HashMap<IpAddr, Arc<Peer>>,
    by_key: BTreeMap<WireGuardKey, Arc<Peer>>,
}

impl PeerTable {
    fn route(&self, dst: IpAddr) -> Option<&Arc<Peer>> {
        match dst {
            IpAddr::V4(dst) => {
                let dst = u32::from(dst);
                self.by_len.iter().find_map(|(len, nets)| {
                    let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
                    nets.get(&(dst & mask))
                })
            }
            IpAddr::V6(dst) => {
                let dst = u128::from(dst);
                self.by_len6.iter().find_map(|(len, nets)| {
                    let mask = u128::MAX.checked_shl(128 - u32::from(*len)).unwrap_or(0);
                    nets.get(&(dst & mask))
                })
            }
        }
    }

    fn is_local(&self, dst: IpAddr) -> bool {
        match dst {
            IpAddr::V4(dst) => self.own_subnet.is_some_and(|s| s.contains(dst)),
            IpAddr::V6(dst) => self.own_subnet6.is_some_and(|s| s.contains(dst)),
        }
    }
}

/// The peer table as the pumps see it: swapped whole by a `set`.
pub type SharedPeers = Arc<RwLock<Arc<PeerTable>>>;

fn snapshot(table: &SharedPeers) -> Arc<PeerTable> {
    match table.read() {
        Ok(guard) => guard.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// One peer as the control socket configured it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// Key, endpoint, allowed IPs.
    pub spec: PeerSpec,
    /// Its pre-shared key, if any.
    pub psk: Option<SecretKey>,
    /// Its persistent keepalive in seconds, 0 for none.
    pub keepalive: u16,
}

impl PeerTable {
    /// The peers, by key, as configured.
    pub fn configs(&self) -> BTreeMap<WireGuardKey, PeerConfig> {
        self.by_key
            .iter()
            .map(|(k, p)| {
                let config = PeerConfig {
                    spec: p.spec.clone(),
                    psk: p.psk.clone(),
                    keepalive: p.keepalive,
                };
                (*k, config)
            })
            .collect()
    }
}

/// Builds the next table from `peers`, keeping the sessions of peers whose key, PSK and
/// keepalive did not change (a new endpoint or allowed IPs keep them, as in a device);
/// packets to `own` and `own6` are this device's to deliver. Returns the table and (kept,
/// added, removed) peers.
pub fn next_table(
    own: Option<Ipv4Network>,
    own6: Option<Ipv6Network>,
    peers: &BTreeMap<WireGuardKey, PeerConfig>,
    previous: &PeerTable,
    private: &SecretKey,
    next_index: &AtomicU32,
) -> (PeerTable, (usize, usize, usize)) {
    let mut table = PeerTable {
        own_subnet: own,
        own_subnet6: own6,
        ..Default::default()
    };
    let (mut kept, mut added) = (0, 0);
    let mut lens: HashMap<u8, HashMap<u32, Arc<Peer>>> = HashMap::new();
    let mut lens6: HashMap<u8, HashMap<u128, Arc<Peer>>> = HashMap::new();
    for (key, config) in peers {
        let old = previous
            .by_key
            .get(key)
            .filter(|old| old.psk == config.psk && old.keepalive == config.keepalive);
        let peer = match old {
            Some(old) if old.spec == config.spec => {
                kept += 1;
                old.clone()
            }
            Some(old) => {
                kept += 1;
                Arc::new(Peer {
                    spec: config.spec.clone(),
                    psk: config.psk.clone(),
                    keepalive: config.keepalive,
                    tunn: old.tunn.clone(),
                })
            }
            None => {
                added += 1;
                let index = next_index.fetch_add(1, Ordering::Relaxed) & MAX_PEER_INDEX;
                let tunn = Tunn::new(
                    boringtun::x25519::StaticSecret::from(*private.as_bytes()),
                    boringtun::x25519::PublicKey::from(*key.as_bytes()),
                    config.psk.as_ref().map(|k| *k.as_bytes()),
                    (config.keepalive > 0).then_some(config.keepalive),
                    index,
                    None,
                );
                Arc::new(Peer {
                    spec: config.spec.clone(),
                    psk: config.psk.clone(),
                    keepalive: config.keepalive,
                    tunn: Arc::new(Mutex::new(tunn)),
                })
            }
        };
        for net in &peer.spec.allowed {
            match net {
                IpNetwork::V4(net) => lens
                    .entry(net.prefix())
                    .or_default()
                    .insert(u32::from(net.network()), peer.clone()),
                IpNetwork::V6(net) => lens6
                    .entry(net.prefix())
                    .or_default()
                    .insert(u128::from(net.network()), peer.clone()),
            };
        }
        table
            .by_endpoint
            .insert(peer.spec.endpoint.ip(), peer.clone());
        table.by_key.insert(*key, peer);
    }
    let removed = previous
        .by_key
        .keys()
        .filter(|k| !peers.contains_key(k))
        .count();
    table.by_len = lens.into_iter().collect();
    table.by_len.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
    table.by_len6 = lens6.into_iter().collect();
    table
        .by_len6
        .sort_by_key(|(len, _)| std::cmp::Reverse(*len));
    (table, (kept, added, removed))
}

/// One TUN queue with its UDP socket.
pub struct Queue {
    /// The TUN queue (non-blocking).
    pub tun: SyncDevice,
    /// The underlay socket of this queue (SO_REUSEPORT on the listen port).
    pub socket: UnderlaySocket,
}

/// The running pumps and timer; dropping it stops and joins them.
pub struct UserspaceDataPath {
    /// Raised by a pump whose TUN queue is gone (the device was deleted).
    stop: Arc<AtomicBool>,
    /// Held for its drop, which stops and joins the pumps.
    _threads: PumpThreads,
}

impl UserspaceDataPath {
    /// Starts two pump threads per queue and the timer thread.
    pub fn start(
        queues: Vec<Queue>,
        peers: SharedPeers,
        counters: Arc<WireGuardCounters>,
    ) -> io::Result<Self> {
        let mut threads = PumpThreads::new("WireGuard");
        let stop = threads.stop_flag();
        let queues: Vec<Arc<Queue>> = queues.into_iter().map(Arc::new).collect();
        for (i, queue) in queues.iter().enumerate() {
            let pump = Pump {
                queue: queue.clone(),
                peers: peers.clone(),
                counters: counters.clone(),
                stop: stop.clone(),
            };
            let rx = Pump {
                queue: queue.clone(),
                peers: peers.clone(),
                counters: counters.clone(),
                stop: stop.clone(),
            };
            threads.spawn(format!("weft-wg-tx{i}"), move || pump.run_tx())?;
            threads.spawn(format!("weft-wg-rx{i}"), move || rx.run_rx())?;
        }
        if let Some(queue) = queues.first() {
            let timer = Pump {
                queue: queue.clone(),
                peers,
                counters,
                stop,
            };
            threads.spawn("weft-wg-timers".to_string(), move || timer.run_timers())?;
        }
        Ok(UserspaceDataPath {
            stop: threads.stop_flag(),
            _threads: threads,
        })
    }

    /// Whether the pumps stopped because the TUN device is gone.
    pub fn device_gone(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

struct Pump {
    queue: Arc<Queue>,
    peers: SharedPeers,
    counters: Arc<WireGuardCounters>,
    stop: Arc<AtomicBool>,
}

/// The tx side's reusable buffers.
#[derive(Default)]
struct TxScratch {
    headers: Vec<u8>,
    segments: Vec<Segment>,
    laid_out: Vec<Range<usize>>,
    /// Plaintext packets put together when [`spread`] found no room.
    joined: Vec<u8>,
    sealed: Vec<u8>,
    sealed_at: Vec<Range<usize>>,
}

impl Pump {
    /// Sends `msg` (a handshake, cookie or keepalive) to `peer`.
    fn send_control(&self, peer: &Peer, msg: &[u8]) {
        add(&self.counters.handshakes_sent, 1);
        if let Err(e) = self
            .queue
            .socket
            .send_datagrams(peer.spec.endpoint, &[[msg, &[][..]]])
        {
            add(&self.counters.tx_errors, 1);
            tracing::debug!(error = %e, peer = %peer.spec.endpoint, "send WireGuard handshake");
        }
    }

    fn run_timers(self) {
        let mut buf = vec![0u8; 256];
        while !self.stop.load(Ordering::Relaxed) {
            std::thread::sleep(TIMER_TICK);
            let table = snapshot(&self.peers);
            for peer in table.by_key.values() {
                let mut tunn = peer.lock();
                if let TunnResult::WriteToNetwork(msg) = tunn.update_timers(&mut buf) {
                    let msg: &[u8] = msg;
                    self.send_control(peer, msg);
                }
            }
        }
    }

    fn run_tx(self) {
        let tun = &self.queue.tun;
        // With vnet headers every read and write starts with one.
        let offset = if tun.tcp_gso() { VIRTIO_NET_HDR_LEN } else { 0 };
        let mut buf = vec![0u8; READ_BUFFER + SPREAD_ROOM];
        let mut scratch = TxScratch {
            sealed: vec![0u8; SEAL_BUFFER],
            ..Default::default()
        };
        while !self.stop.load(Ordering::Relaxed) {
            let len = match tun.recv(&mut buf) {
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = poll_readable(tun.as_fd(), POLL_MS) {
                        tracing::warn!(error = %e, "poll WireGuard TUN device");
                    }
                    continue;
                }
                Err(e) => {
                    add(&self.counters.tx_errors, 1);
                    if is_fatal(&e) {
                        // The device was deleted: every queue is gone, the data path ends.
                        tracing::error!(error = %e, "WireGuard TUN queue is gone; the data path stops");
                        self.stop.store(true, Ordering::Relaxed);
                        return;
                    }
                    continue;
                }
            };
            if len <= offset {
                add(&self.counters.tx_errors, 1);
                continue;
            }
            let (vnet, room) = buf.split_at_mut(offset);
            let hdr = if offset > 0 {
                VirtioNetHdr::decode(vnet).unwrap_or(PLAIN)
            } else {
                PLAIN
            };
            self.seal_and_send(&hdr, room, len - offset, &mut scratch);
        }
    }

    /// Encrypts the packet (or the segments of the super-packet) in `room[..len]` for the peer
    /// owning its destination and sends the ciphertexts, one batch per [`SEAL_BUFFER`] they fill.
    fn seal_and_send(&self, hdr: &VirtioNetHdr, room: &mut [u8], len: usize, s: &mut TxScratch) {
        let dst = match ipv4_destination(&room[..len]) {
            Some(ip) => IpAddr::V4(ip),
            None => match ipv6_destination(&room[..len]) {
                Some(ip) => IpAddr::V6(ip),
                None => {
                    add(&self.counters.tx_dropped, 1);
                    return;
                }
            },
        };
        let table = snapshot(&self.peers);
        let Some(peer) = table.route(dst) else {
            add(&self.counters.tx_no_peer, 1);
            return;
        };
        // The plaintext packets, each contiguous: in `room`, or put together in `joined`.
        let mut in_joined = false;
        s.laid_out.clear();
        if is_gso(hdr) {
            if segment(hdr, &room[..len], &mut s.headers, &mut s.segments).is_err() {
                add(&self.counters.tx_dropped, 1);
                return;
            }
            if !spread(room, &s.headers, &s.segments, &mut s.laid_out) {
                s.joined.clear();
                for seg in &s.segments {
                    let start = s.joined.len();
                    s.joined.extend_from_slice(&s.headers[seg.header.clone()]);
                    s.joined.extend_from_slice(&room[seg.payload.clone()]);
                    s.laid_out.push(start..s.joined.len());
                }
                in_joined = true;
            }
        } else {
            if !complete_checksum(hdr, &mut room[..len]) {
                add(&self.counters.tx_errors, 1);
                return;
            }
            s.laid_out.push(0..len);
        }
        let plain: &[u8] = if in_joined { &s.joined } else { room };
        // Sealed in batches that fit `sealed`: a super-packet of many small segments (a peer
        // that advertised a tiny MSS) grows past it, and its tail goes out in further batches.
        let mut next = 0;
        while next < s.laid_out.len() {
            s.sealed_at.clear();
            let mut at = 0;
            let mut bytes = 0;
            {
                let mut tunn = peer.lock();
                while let Some(r) = s.laid_out.get(next) {
                    let pkt = &plain[r.clone()];
                    let room_needed = pkt.len() + DATA_OVERHEAD + HANDSHAKE_ROOM;
                    if s.sealed.len() - at < room_needed {
                        if at > 0 {
                            break;
                        }
                        // Larger than an empty buffer: never from a TUN read, but never a
                        // stall either.
                        next += 1;
                        add(&self.counters.tx_dropped, 1);
                        continue;
                    }
                    next += 1;
                    match tunn.encapsulate(pkt, &mut s.sealed[at..]) {
                        TunnResult::WriteToNetwork(out) => {
                            let n = out.len();
                            s.sealed_at.push(at..at + n);
                            at += n;
                            bytes += pkt.len();
                        }
                        // Queued until the handshake completes.
                        TunnResult::Done => {}
                        _ => add(&self.counters.tx_errors, 1),
                    }
                }
            }
            self.send_sealed(peer, &s.sealed, &s.sealed_at, bytes);
        }
    }

    /// Sends the ciphertexts at `sealed_at` in `sealed` (of `bytes` plaintext bytes) to `peer`
    /// as one batch.
    fn send_sealed(&self, peer: &Peer, sealed: &[u8], sealed_at: &[Range<usize>], bytes: usize) {
        if sealed_at.is_empty() {
            return;
        }
        let datagrams: Vec<Datagram<'_>> = sealed_at
            .iter()
            .map(|r| [&sealed[r.clone()], &[][..]])
            .collect();
        match self
            .queue
            .socket
            .send_datagrams(peer.spec.endpoint, &datagrams)
        {
            Ok(()) => {
                add(&self.counters.tx_packets, datagrams.len() as u64);
                add(&self.counters.tx_bytes, bytes as u64);
            }
            Err(e) => {
                add(&self.counters.tx_errors, datagrams.len() as u64);
                tracing::debug!(error = %e, peer = %peer.spec.endpoint, "send to WireGuard peer");
            }
        }
    }

    fn run_rx(self) {
        let vnet = self.queue.tun.tcp_gso();
        let mut batch = RecvBatch::new(RECV_MESSAGES);
        let mut opened: Vec<Vec<u8>> = vec![vec![0u8; RECV_BUFFER]; RECV_MESSAGES];
        let mut found: Vec<PacketAt> = Vec::new();
        let mut run = TcpRun::default();
        let mut iov: Vec<libc::iovec> = Vec::new();
        let mut spans: Vec<PacketAt> = Vec::new();
        let mut spare = vec![0u8; RECV_BUFFER];
        while !self.stop.load(Ordering::Relaxed) {
            let n = match self.queue.socket.recv_batch(&mut batch) {
                Ok(0) => continue,
                Ok(n) => n,
                Err(e) => {
                    add(&self.counters.rx_errors, 1);
                    tracing::debug!(error = %e, "receive from WireGuard socket");
                    continue;
                }
            };
            let table = snapshot(&self.peers);
            found.clear();
            for (i, out) in opened.iter_mut().enumerate().take(n) {
                self.open_message(&table, &batch, i, out, &mut spare, &mut found);
            }
            run.clear();
            for (i, r) in &found {
                let pkt = &opened[*i][r.clone()];
                if !vnet {
                    self.write_plain(pkt);
                } else if !run.push(pkt, (*i, r.clone())) {
                    self.flush(&mut run, &mut opened, &mut iov, &mut spans);
                    run.push(&opened[*i][r.clone()], (*i, r.clone()));
                }
            }
            self.flush(&mut run, &mut opened, &mut iov, &mut spans);
        }
    }

    /// Decrypts message `i` of `batch` (one sender's datagrams) into `out`, back to back;
    /// `found` receives where each packet that may be delivered lies. Handshake answers and
    /// packets queued behind a handshake go out at once.
    fn open_message(
        &self,
        table: &PeerTable,
        batch: &RecvBatch,
        i: usize,
        out: &mut [u8],
        spare: &mut [u8],
        found: &mut Vec<PacketAt>,
    ) {
        let (src, data, seg, truncated) = batch.message(i);
        if truncated || data.is_empty() {
            add(&self.counters.rx_errors, 1);
            return;
        }
        let Some(peer) = table.by_endpoint.get(&src) else {
            add(
                &self.counters.rx_unknown_source,
                data.len().div_ceil(seg) as u64,
            );
            return;
        };
        let mut tunn = peer.lock();
        let mut at = 0;
        for datagram in data.chunks(seg) {
            match tunn.decapsulate(Some(src), datagram, &mut out[at..]) {
                TunnResult::WriteToTunnelV4(pkt, inner_src) => {
                    let n = pkt.len();
                    let deliver = peer.allows(IpAddr::V4(inner_src))
                        && parse_ipv4(pkt).is_ok_and(|a| table.is_local(IpAddr::V4(a.dst)));
                    if deliver {
                        found.push((i, at..at + n));
                        at += n;
                    } else {
                        add(&self.counters.rx_not_allowed, 1);
                    }
                }
                TunnResult::WriteToTunnelV6(pkt, inner_src) => {
                    let n = pkt.len();
                    let deliver = peer.allows(IpAddr::V6(inner_src))
                        && parse_ipv6(pkt).is_ok_and(|dst| table.is_local(IpAddr::V6(dst)));
                    if deliver {
                        found.push((i, at..at + n));
                        at += n;
                    } else {
                        add(&self.counters.rx_not_allowed, 1);
                    }
                }
                TunnResult::WriteToNetwork(msg) => {
                    let msg: &[u8] = msg;
                    self.send_control(peer, msg);
                    // A completed handshake releases the packets queued behind it.
                    while let TunnResult::WriteToNetwork(queued) =
                        tunn.decapsulate(None, &[], spare)
                    {
                        let queued: &[u8] = queued;
                        if let Err(e) = self
                            .queue
                            .socket
                            .send_datagrams(peer.spec.endpoint, &[[queued, &[][..]]])
                        {
                            add(&self.counters.tx_errors, 1);
                            tracing::debug!(error = %e, "send queued packet");
                        } else {
                            add(&self.counters.tx_packets, 1);
                        }
                    }
                }
                // A keepalive, or a handshake answer consumed.
                TunnResult::Done => {}
                TunnResult::Err(WireGuardError::NoCurrentSession) => {
                    // The peer still uses a session this process never had (this data path
                    // process was restarted): shake hands now rather than after its 15 s
                    // rekey timeout — unless a session is young (a forged datagram).
                    add(&self.counters.rx_rejected, 1);
                    if may_reinitiate(tunn.stats().0) {
                        if let TunnResult::WriteToNetwork(msg) =
                            tunn.format_handshake_initiation(spare, false)
                        {
                            let msg: &[u8] = msg;
                            self.send_control(peer, msg);
                        }
                    }
                }
                TunnResult::Err(e) => {
                    add(&self.counters.rx_rejected, 1);
                    tracing::trace!(error = ?e, peer = %src, "WireGuard datagram refused");
                }
            }
        }
    }

    fn write_plain(&self, pkt: &[u8]) {
        match self.queue.tun.send(pkt) {
            Ok(_) => {
                add(&self.counters.rx_packets, 1);
                add(&self.counters.rx_bytes, pkt.len() as u64);
            }
            Err(e) => {
                add(&self.counters.rx_errors, 1);
                tracing::debug!(error = %e, "write to WireGuard TUN device");
            }
        }
    }

    /// Writes the packets of `run` (in `bufs`) to the device with one `writev`, as the UDP
    /// backend does: a lone packet behind an empty virtio-net header, several as one GSO
    /// packet of their rebuilt header and their gathered payloads.
    fn flush(
        &self,
        run: &mut TcpRun,
        bufs: &mut [Vec<u8>],
        iov: &mut Vec<libc::iovec>,
        spans: &mut Vec<PacketAt>,
    ) {
        const NO_OFFLOAD: [u8; VIRTIO_NET_HDR_LEN] = [0; VIRTIO_NET_HDR_LEN];
        let packets = run.packets();
        if packets.is_empty() {
            return;
        }
        let count = packets.len() as u64;
        let bytes: usize = packets.iter().map(|(_, r)| r.len()).sum();
        let slice = |s: &[u8]| libc::iovec {
            iov_base: s.as_ptr() as *mut libc::c_void,
            iov_len: s.len(),
        };
        iov.clear();
        if packets.len() == 1 {
            iov.push(slice(&NO_OFFLOAD));
            let (i, r) = &packets[0];
            iov.push(slice(&bufs[*i][r.clone()]));
        } else {
            run.gather(bufs, spans);
            iov.push(slice(run.header()));
            for (i, span) in spans.iter() {
                iov.push(slice(&bufs[*i][span.clone()]));
            }
        }
        let fd = self.queue.tun.as_raw_fd();
        // SAFETY: every iovec points into `bufs`, `NO_OFFLOAD` or the run's header buffer,
        // all alive and unchanged until writev returns.
        let rc = unsafe { libc::writev(fd, iov.as_ptr(), iov.len() as libc::c_int) };
        run.clear();
        if rc < 0 {
            let e = io::Error::last_os_error();
            add(&self.counters.rx_errors, count);
            tracing::debug!(error = %e, "write to WireGuard TUN device");
        } else {
            add(&self.counters.rx_packets, count);
            add(&self.counters.rx_bytes, bytes as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_for_an_unknown_session_replaces_only_a_missing_or_old_one() {
        assert!(may_reinitiate(None), "no session: shake hands at once");
        assert!(!may_reinitiate(Some(Duration::ZERO)));
        assert!(!may_reinitiate(Some(Duration::from_secs(4))));
        assert!(may_reinitiate(Some(REKEY_TIMEOUT)));
    }
}
