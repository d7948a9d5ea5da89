//! The UDP backend's packet pumps: per TUN queue one thread reads pod packets from
//! `flannel0` and sends each as one UDP datagram to the peer owning its destination, and one
//! thread receives datagrams and writes their packets back into `flannel0`.
//!
//! Offloads: the TUN device runs with virtio-net headers, so the kernel hands over whole
//! TCP segments of up to 64 KiB; only their headers are rebuilt per MTU-sized packet, the
//! payloads are moved apart in the read buffer to make room for them, and the datagrams leave
//! back to back in one `sendmsg` with UDP GSO. On receive, UDP GRO hands over up to 64 KiB of
//! datagrams at once; TCP packets of one flow have their payloads moved together in the
//! receive buffer and are written back as one large segment with `writev` of one rebuilt
//! header and the payloads. Those two moves within cached buffers are the only userspace
//! touches of payload bytes besides the checksum: they let the kernel copy each 64 KiB from
//! one or two iovecs rather than ninety, which costs less (measured: see `spread`).

use std::io;
use std::net::{IpAddr, SocketAddrV4};
use std::ops::Range;
use std::os::fd::{AsFd as _, AsRawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use tun_rs::{SyncDevice, VirtioNetHdr, VIRTIO_NET_HDR_LEN};

use super::forwarding::{snapshot, ForwardingTable, SharedTable};
use super::offload::{complete_checksum, is_gso, segment, spread, Segment, SegmentError, TcpRun};
use super::packet::{ipv4_destination, ipv6_destination, net_unreachable, parse_ipv4, parse_ipv6};
use super::pumps::{
    encode_counters, is_fatal, PumpThreads, PLAIN, POLL_MS, READ_BUFFER, RECV_MESSAGES, SPREAD_ROOM,
};
use super::socket::{poll_readable, Datagram, RecvBatch, UnderlaySocket};

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
}

/// The counters as `weft_udp_<name>_total` on the daemon's `/metrics`.
impl Collector for UdpCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
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
                "Packets read from flannel0 that are neither IPv4 nor IPv6 (dropped).",
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
        encode_counters(&mut encoder, "weft_udp", &rows)
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
    /// Held for its drop, which stops and joins the pumps.
    _threads: PumpThreads,
}

impl DataPath {
    /// Starts two pump threads per queue. Packets go to peers on UDP port `port`.
    pub fn start(
        queues: Vec<Queue>,
        port: u16,
        table: SharedTable,
        counters: Arc<UdpCounters>,
    ) -> io::Result<Self> {
        let mut threads = PumpThreads::new("UDP");
        let stop = threads.stop_flag();
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
            threads.spawn(format!("weft-udp-tx{i}"), move || tx.run())?;
            threads.spawn(format!("weft-udp-rx{i}"), move || rx.run())?;
        }
        Ok(DataPath { _threads: threads })
    }
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
        // With vnet headers every read and write starts with one.
        let offset = if tun.tcp_gso() { VIRTIO_NET_HDR_LEN } else { 0 };
        let mut buf = vec![0u8; READ_BUFFER + SPREAD_ROOM];
        let mut scratch = Scratch::default();
        let mut icmp = vec![0u8; offset + 128];
        while !self.stop.load(Ordering::Relaxed) {
            let len = match tun.recv(&mut buf) {
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = poll_readable(tun.as_fd(), POLL_MS) {
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
            if len <= offset {
                UdpCounters::add(&self.counters.tx_errors, 1);
                continue;
            }
            let (vnet, room) = buf.split_at_mut(offset);
            let hdr = if offset > 0 {
                match VirtioNetHdr::decode(vnet) {
                    Ok(hdr) => hdr,
                    Err(_) => PLAIN,
                }
            } else {
                PLAIN
            };
            self.forward(&hdr, room, len - offset, &mut scratch, &mut icmp, offset);
        }
    }

    /// Sends the packet (or super-packet) in the first `len` bytes of `room`, read with
    /// virtio-net header `hdr`, to the peer owning its destination, or answers it with ICMP
    /// net-unreachable. The rest of `room` may be used to lay segments out.
    fn forward(
        &self,
        hdr: &VirtioNetHdr,
        room: &mut [u8],
        len: usize,
        scratch: &mut Scratch,
        icmp: &mut [u8],
        icmp_offset: usize,
    ) {
        let Scratch {
            headers,
            segments,
            laid_out,
        } = scratch;
        // IPv4, or IPv6 on a dual-stack node (over the same IPv4 underlay).
        let dst = match ipv4_destination(&room[..len]) {
            Some(ip) => IpAddr::V4(ip),
            None => match ipv6_destination(&room[..len]) {
                Some(ip) => IpAddr::V6(ip),
                None => {
                    UdpCounters::add(&self.counters.tx_not_ipv4, 1);
                    return;
                }
            },
        };
        let gso = is_gso(hdr);
        let mut spread_done = false;
        if gso {
            if let Err(e) = segment(hdr, &room[..len], headers, segments) {
                let counter = match e {
                    SegmentError::Unsupported(_) => &self.counters.tx_not_ipv4,
                    SegmentError::BadHeader { .. } => &self.counters.tx_errors,
                };
                UdpCounters::add(counter, 1);
                tracing::debug!(error = %e, "cut a flannel0 super-packet into segments");
                return;
            }
            spread_done = spread(room, headers, segments, laid_out);
        } else if !complete_checksum(hdr, &mut room[..len]) {
            UdpCounters::add(&self.counters.tx_errors, 1);
            return;
        }
        let room: &[u8] = room;
        let datagrams: Vec<Datagram<'_>> = if spread_done {
            laid_out
                .iter()
                .map(|r| [&room[r.clone()], &[][..]])
                .collect()
        } else if gso {
            segments
                .iter()
                .map(|s| [&headers[s.header.clone()], &room[s.payload.clone()]])
                .collect()
        } else {
            vec![[&room[..len], &[][..]]]
        };
        let table = snapshot(&self.table);
        let hop = match dst {
            IpAddr::V4(dst) => table.next_hop(dst),
            IpAddr::V6(dst) => table.next_hop6(dst),
        };
        let Some(hop) = hop else {
            if dst.is_ipv6() {
                // No ICMPv6 errors (yet): the packet is dropped and counted.
                UdpCounters::add(&self.counters.tx_errors, 1);
                return;
            }
            // Quote the first packet: a super-packet's first segment, put together.
            let first: Vec<u8> = datagrams
                .first()
                .map(|d| [d[0], d[1]].concat())
                .unwrap_or_default();
            self.answer_unreachable(&table, &first, icmp, icmp_offset);
            return;
        };
        let bytes: usize = datagrams.iter().map(|d| d[0].len() + d[1].len()).sum();
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

/// The send side's reusable buffers: segment headers, where the segments lie, and where the
/// datagrams lie once [`spread`] laid them out.
#[derive(Default)]
struct Scratch {
    headers: Vec<u8>,
    segments: Vec<Segment>,
    laid_out: Vec<Range<usize>>,
}

/// The receive side's reusable buffers: the iovecs of a TUN write and the gathered payloads.
#[derive(Default)]
struct RxScratch {
    iov: Vec<libc::iovec>,
    spans: Vec<super::offload::PacketAt>,
}

struct RxPump {
    queue: Arc<Queue>,
    table: SharedTable,
    counters: Arc<UdpCounters>,
    stop: Arc<AtomicBool>,
}

impl RxPump {
    fn run(self) {
        let socket = &self.queue.socket;
        let vnet = self.queue.tun.tcp_gso();
        let mut batch = RecvBatch::new(RECV_MESSAGES);
        let mut run = TcpRun::default();
        let mut scratch = RxScratch::default();
        while !self.stop.load(Ordering::Relaxed) {
            let n = match socket.recv_batch(&mut batch) {
                Ok(0) => continue,
                Ok(n) => n,
                Err(e) => {
                    UdpCounters::add(&self.counters.rx_errors, 1);
                    tracing::debug!(error = %e, "receive from UDP socket");
                    continue;
                }
            };
            let table = snapshot(&self.table);
            // A run may span messages: a TCP super-packet often arrives as one full GSO batch
            // and a short one.
            run.clear();
            for i in 0..n {
                let (src, data, seg, truncated) = batch.message(i);
                let len = data.len();
                if truncated || len == 0 {
                    UdpCounters::add(&self.counters.rx_malformed, 1);
                    continue;
                }
                // The UDP backend's socket is IPv4: every sender is.
                let known = matches!(src, IpAddr::V4(ip) if table.is_peer(ip));
                if !known {
                    let count = len.div_ceil(seg);
                    UdpCounters::add(&self.counters.rx_unknown_source, count as u64);
                    continue;
                }
                let mut start = 0;
                while start < len {
                    let end = (start + seg).min(len);
                    // Borrowed anew per packet: a flush rearranges the bytes before `start`.
                    let pkt = &batch.message(i).1[start..end];
                    let local = match pkt.first().map(|b| b >> 4) {
                        Some(6) => parse_ipv6(pkt).map(|dst| table.is_local6(dst)),
                        _ => parse_ipv4(pkt).map(|addrs| table.is_local(addrs.dst)),
                    };
                    match local {
                        Err(_) => UdpCounters::add(&self.counters.rx_malformed, 1),
                        Ok(false) => UdpCounters::add(&self.counters.rx_not_local, 1),
                        Ok(_) if !vnet => self.write_plain(pkt),
                        Ok(_) => {
                            if !run.push(pkt, (i, start..end)) {
                                self.flush(&mut run, &mut batch, &mut scratch);
                                // An empty run takes any packet.
                                run.push(&batch.message(i).1[start..end], (i, start..end));
                            }
                        }
                    }
                    start = end;
                }
            }
            self.flush(&mut run, &mut batch, &mut scratch);
        }
    }

    /// Writes one packet to a TUN device without virtio-net headers.
    fn write_plain(&self, pkt: &[u8]) {
        match self.queue.tun.send(pkt) {
            Ok(_) => {
                UdpCounters::add(&self.counters.rx_packets, 1);
                UdpCounters::add(&self.counters.rx_bytes, pkt.len() as u64);
            }
            Err(e) => {
                UdpCounters::add(&self.counters.rx_errors, 1);
                tracing::debug!(error = %e, "write to flannel0");
            }
        }
    }

    /// Writes the packets of `run` (in the messages of `batch`) to `flannel0` with one
    /// `writev`: a lone packet behind an empty virtio-net header (the kernel checks its
    /// checksum), several as one GSO packet of their rebuilt header and their payloads,
    /// gathered per message first ([`TcpRun::gather`]).
    fn flush(&self, run: &mut TcpRun, batch: &mut RecvBatch, scratch: &mut RxScratch) {
        const NO_OFFLOAD: [u8; VIRTIO_NET_HDR_LEN] = [0; VIRTIO_NET_HDR_LEN];
        let RxScratch { iov, spans } = scratch;
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
            iov.push(slice(&batch.message(*i).1[r.clone()]));
        } else {
            run.gather(batch.buffers_mut(), spans);
            iov.push(slice(run.header()));
            for (i, span) in spans.iter() {
                iov.push(slice(&batch.message(*i).1[span.clone()]));
            }
        }
        let fd = self.queue.tun.as_raw_fd();
        // SAFETY: every iovec points into `batch`, `NO_OFFLOAD` or the run's header buffer,
        // all alive and unchanged until writev returns.
        let rc = unsafe { libc::writev(fd, iov.as_ptr(), iov.len() as libc::c_int) };
        run.clear();
        if rc < 0 {
            let e = io::Error::last_os_error();
            UdpCounters::add(&self.counters.rx_errors, count);
            tracing::debug!(error = %e, "write to flannel0");
        } else {
            UdpCounters::add(&self.counters.rx_packets, count);
            UdpCounters::add(&self.counters.rx_bytes, bytes as u64);
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
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(c));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("# TYPE weft_udp_rx_malformed counter\n"),
            "{text}"
        );
        assert!(text.contains("\nweft_udp_rx_malformed_total 3\n"), "{text}");
        assert!(
            text.contains("\nweft_udp_rx_unknown_source_total 0\n"),
            "{text}"
        );
        assert_eq!(
            text.lines().count(),
            34,
            "11 counters of three lines, then # EOF"
        );
    }
}
