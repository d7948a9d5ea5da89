//! The UDP backend's packet pumps: per TUN queue one thread reads pod packets from
//! `flannel0` and sends each as one UDP datagram to the peer owning its destination, and one
//! thread receives datagrams and writes their packets back into `flannel0`.
//!
//! Offloads: the TUN device runs with virtio-net headers, so the kernel hands over whole
//! TCP segments of up to 64 KiB; they are split into MTU-sized packets and leave in one
//! `sendmsg` with UDP GSO. On receive, UDP GRO hands over up to 64 KiB of datagrams at once,
//! and TCP packets of one flow are coalesced back into one large segment for the TUN write.

use std::io;
use std::net::SocketAddrV4;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use tun_rs::{GROTable, SyncDevice, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use super::forwarding::ForwardingTable;
use super::packet::{ipv4_destination, net_unreachable, parse_ipv4};
use super::socket::{poll_readable, RecvBatch, UnderlaySocket};

/// How long a pump blocks before it looks at the stop flag again.
const POLL_MS: libc::c_int = 200;
/// Messages per `recvmmsg`; each can hold a 64 KiB GRO batch.
const RECV_MESSAGES: usize = 16;
/// Largest single packet a TUN read can yield after GSO splitting (jumbo frames included).
const MAX_PACKET: usize = 9216;
/// Room for a TUN write that GRO grows to 64 KiB plus its virtio-net header.
const WRITE_BUFFER: usize = 65_536 + 2 * VIRTIO_NET_HDR_LEN;

/// Packet and drop counters of the UDP data path, for the daemon's `/metrics`.
#[derive(Debug, Default)]
pub struct UdpCounters {
    /// Packets read from `flannel0` and sent to a peer.
    pub tx_packets: AtomicU64,
    /// Bytes of those packets.
    pub tx_bytes: AtomicU64,
    /// Packets for a cluster address no lease holds, answered with ICMP net-unreachable.
    pub tx_no_route: AtomicU64,
    /// Packets read from `flannel0` that are not IPv4 (dropped).
    pub tx_not_ipv4: AtomicU64,
    /// Failed TUN reads and UDP sends.
    pub tx_errors: AtomicU64,
    /// Packets received from peers and written to `flannel0`.
    pub rx_packets: AtomicU64,
    /// Bytes of those packets.
    pub rx_bytes: AtomicU64,
    /// Datagrams that are not exactly one IPv4 packet, or were truncated (dropped).
    pub rx_malformed: AtomicU64,
    /// Datagrams from an address that holds no lease (dropped).
    pub rx_unknown_source: AtomicU64,
    /// Datagrams whose packet is not for this node's subnet (dropped).
    pub rx_not_local: AtomicU64,
    /// Failed UDP receives and TUN writes.
    pub rx_errors: AtomicU64,
}

impl UdpCounters {
    fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The counters in Prometheus text format (`weft_udp_*_total`, all counters), for the
    /// daemon's `/metrics`.
    pub fn render_prometheus(&self) -> String {
        let rows: [(&str, &AtomicU64, &str); 11] = [
            ("tx_packets", &self.tx_packets, "Packets sent to peers."),
            (
                "tx_bytes",
                &self.tx_bytes,
                "Bytes of packets sent to peers.",
            ),
            (
                "tx_no_route",
                &self.tx_no_route,
                "Packets for cluster addresses no lease holds.",
            ),
            (
                "tx_not_ipv4",
                &self.tx_not_ipv4,
                "Non-IPv4 packets read from flannel0 (dropped).",
            ),
            (
                "tx_errors",
                &self.tx_errors,
                "Failed TUN reads and UDP sends.",
            ),
            (
                "rx_packets",
                &self.rx_packets,
                "Packets received from peers.",
            ),
            (
                "rx_bytes",
                &self.rx_bytes,
                "Bytes of packets received from peers.",
            ),
            (
                "rx_malformed",
                &self.rx_malformed,
                "Malformed or truncated datagrams (dropped).",
            ),
            (
                "rx_unknown_source",
                &self.rx_unknown_source,
                "Datagrams from addresses without a lease (dropped).",
            ),
            (
                "rx_not_local",
                &self.rx_not_local,
                "Datagrams for another node's subnet (dropped).",
            ),
            (
                "rx_errors",
                &self.rx_errors,
                "Failed UDP receives and TUN writes.",
            ),
        ];
        let mut out = String::new();
        for (name, value, help) in rows {
            let value = value.load(Ordering::Relaxed);
            out.push_str(&format!(
                "# HELP weft_udp_{name}_total {help}\n# TYPE weft_udp_{name}_total counter\nweft_udp_{name}_total {value}\n"
            ));
        }
        out
    }
}

/// The forwarding table as the pumps see it: swapped whole by a reconcile.
pub type SharedTable = Arc<RwLock<Arc<ForwardingTable>>>;

fn snapshot(table: &SharedTable) -> Arc<ForwardingTable> {
    match table.read() {
        Ok(guard) => guard.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// One TUN queue with its UDP socket.
pub struct Queue {
    /// The TUN queue (non-blocking).
    pub tun: SyncDevice,
    /// The underlay socket of this queue (SO_REUSEPORT on the shared port).
    pub socket: UnderlaySocket,
}

/// The running pumps; dropping it stops and joins them.
pub struct DataPath {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl DataPath {
    /// Starts two pump threads per queue. Packets go to peers on UDP port `port`.
    pub fn start(
        queues: Vec<Queue>,
        port: u16,
        table: SharedTable,
        counters: Arc<UdpCounters>,
    ) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut path = DataPath {
            stop: stop.clone(),
            threads: Vec::new(),
        };
        for (i, queue) in queues.into_iter().enumerate() {
            let queue = Arc::new(queue);
            let tx = TxPump {
                queue: queue.clone(),
                port,
                table: table.clone(),
                counters: counters.clone(),
                stop: stop.clone(),
            };
            let rx = RxPump {
                queue,
                table: table.clone(),
                counters: counters.clone(),
                stop: stop.clone(),
            };
            path.threads.push(
                std::thread::Builder::new()
                    .name(format!("weft-udp-tx{i}"))
                    .spawn(move || tx.run())?,
            );
            path.threads.push(
                std::thread::Builder::new()
                    .name(format!("weft-udp-rx{i}"))
                    .spawn(move || rx.run())?,
            );
        }
        Ok(path)
    }
}

impl Drop for DataPath {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a UDP data path thread panicked");
            }
        }
    }
}

/// Whether an I/O error means the TUN queue or socket is gone for good.
fn is_fatal(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EBADFD) | Some(libc::EBADF))
}

struct TxPump {
    queue: Arc<Queue>,
    port: u16,
    table: SharedTable,
    counters: Arc<UdpCounters>,
    stop: Arc<AtomicBool>,
}

impl TxPump {
    fn run(self) {
        let tun = &self.queue.tun;
        let mut original = vec![0u8; VIRTIO_NET_HDR_LEN + 65_535];
        let mut bufs = vec![vec![0u8; MAX_PACKET]; IDEAL_BATCH_SIZE];
        let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
        // An ICMP error written back into the TUN needs a (zero) virtio-net header first.
        let icmp_offset = if tun.tcp_gso() { VIRTIO_NET_HDR_LEN } else { 0 };
        let mut icmp = vec![0u8; icmp_offset + 128];
        while !self.stop.load(Ordering::Relaxed) {
            let n = match tun.recv_multiple(&mut original, &mut bufs, &mut sizes, 0) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = poll_readable(tun.as_raw_fd(), POLL_MS) {
                        tracing::warn!(error = %e, "poll flannel0");
                    }
                    continue;
                }
                Err(e) => {
                    UdpCounters::add(&self.counters.tx_errors, 1);
                    tracing::debug!(error = %e, "read flannel0");
                    if is_fatal(&e) {
                        tracing::error!(error = %e, "flannel0 queue is gone; tx pump stops");
                        return;
                    }
                    continue;
                }
            };
            let table = snapshot(&self.table);
            let mut start = 0;
            while start < n {
                let Some(dst) = ipv4_destination(&bufs[start][..sizes[start]]) else {
                    UdpCounters::add(&self.counters.tx_not_ipv4, 1);
                    start += 1;
                    continue;
                };
                let Some(hop) = table.next_hop(dst) else {
                    self.answer_unreachable(
                        &table,
                        &bufs[start][..sizes[start]],
                        &mut icmp,
                        icmp_offset,
                    );
                    start += 1;
                    continue;
                };
                // Segments of one GSO read share their destination: send the run at once.
                let mut end = start + 1;
                while end < n
                    && ipv4_destination(&bufs[end][..sizes[end]]).and_then(|d| table.next_hop(d))
                        == Some(hop)
                {
                    end += 1;
                }
                let datagrams: Vec<&[u8]> = (start..end).map(|i| &bufs[i][..sizes[i]]).collect();
                let bytes: usize = datagrams.iter().map(|d| d.len()).sum();
                match self
                    .queue
                    .socket
                    .send_datagrams(SocketAddrV4::new(hop, self.port), &datagrams)
                {
                    Ok(()) => {
                        UdpCounters::add(&self.counters.tx_packets, datagrams.len() as u64);
                        UdpCounters::add(&self.counters.tx_bytes, bytes as u64);
                    }
                    Err(e) => {
                        UdpCounters::add(&self.counters.tx_errors, datagrams.len() as u64);
                        tracing::debug!(error = %e, peer = %hop, "send to peer");
                    }
                }
                start = end;
            }
        }
    }

    fn answer_unreachable(
        &self,
        table: &ForwardingTable,
        offender: &[u8],
        icmp: &mut [u8],
        offset: usize,
    ) {
        UdpCounters::add(&self.counters.tx_no_route, 1);
        let Some(from) = table.tun_addr() else {
            return;
        };
        let Some(len) = net_unreachable(offender, from, &mut icmp[offset..]) else {
            return;
        };
        icmp[..offset].fill(0);
        if let Err(e) = self.queue.tun.send(&icmp[..offset + len]) {
            tracing::debug!(error = %e, "write ICMP net-unreachable to flannel0");
        }
    }
}

struct RxPump {
    queue: Arc<Queue>,
    table: SharedTable,
    counters: Arc<UdpCounters>,
    stop: Arc<AtomicBool>,
}

impl RxPump {
    fn run(self) {
        let tun = &self.queue.tun;
        let socket = &self.queue.socket;
        let offset = if tun.tcp_gso() { VIRTIO_NET_HDR_LEN } else { 0 };
        let mut batch = RecvBatch::new(RECV_MESSAGES);
        let mut out: Vec<Vec<u8>> = (0..IDEAL_BATCH_SIZE)
            .map(|_| Vec::with_capacity(WRITE_BUFFER))
            .collect();
        let mut gro = GROTable::default();
        while !self.stop.load(Ordering::Relaxed) {
            let n = match socket.recv_batch(&mut batch) {
                Ok(0) => {
                    if let Err(e) = socket.wait_readable(POLL_MS) {
                        tracing::warn!(error = %e, "poll UDP socket");
                    }
                    continue;
                }
                Ok(n) => n,
                Err(e) => {
                    UdpCounters::add(&self.counters.rx_errors, 1);
                    tracing::debug!(error = %e, "receive from UDP socket");
                    continue;
                }
            };
            let table = snapshot(&self.table);
            let mut filled = 0;
            for i in 0..n {
                let (src, datagrams, truncated) = batch.message(i);
                if truncated || datagrams.len() == 0 {
                    UdpCounters::add(&self.counters.rx_malformed, 1);
                    continue;
                }
                if !table.is_peer(src) {
                    UdpCounters::add(&self.counters.rx_unknown_source, datagrams.count() as u64);
                    continue;
                }
                for datagram in datagrams {
                    match parse_ipv4(datagram) {
                        Err(_) => UdpCounters::add(&self.counters.rx_malformed, 1),
                        Ok(addrs) if !table.is_local(addrs.dst) => {
                            UdpCounters::add(&self.counters.rx_not_local, 1)
                        }
                        Ok(_) => {
                            let buf = &mut out[filled];
                            buf.clear();
                            buf.resize(offset, 0);
                            buf.extend_from_slice(datagram);
                            filled += 1;
                            if filled == out.len() {
                                self.write(&mut gro, &mut out[..filled], offset);
                                filled = 0;
                            }
                        }
                    }
                }
            }
            if filled > 0 {
                self.write(&mut gro, &mut out[..filled], offset);
            }
        }
    }

    fn write(&self, gro: &mut GROTable, bufs: &mut [Vec<u8>], offset: usize) {
        let packets = bufs.len() as u64;
        let bytes: usize = bufs.iter().map(|b| b.len() - offset).sum();
        match self.queue.tun.send_multiple(gro, bufs, offset) {
            Ok(_) => {
                UdpCounters::add(&self.counters.rx_packets, packets);
                UdpCounters::add(&self.counters.rx_bytes, bytes as u64);
            }
            Err(e) => {
                UdpCounters::add(&self.counters.rx_errors, packets);
                tracing::debug!(error = %e, "write to flannel0");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_as_prometheus_counters() {
        let c = UdpCounters::default();
        UdpCounters::add(&c.rx_malformed, 3);
        let text = c.render_prometheus();
        assert!(
            text.contains("# TYPE weft_udp_rx_malformed_total counter\n"),
            "{text}"
        );
        assert!(text.contains("\nweft_udp_rx_malformed_total 3\n"), "{text}");
        assert!(
            text.contains("\nweft_udp_rx_unknown_source_total 0\n"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 33);
    }
}
