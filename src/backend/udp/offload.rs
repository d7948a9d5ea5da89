//! Copy-free handling of the TUN device's offloads, pure byte work without I/O.
//!
//! Send side: a TCP or UDP super-packet the kernel hands over with a virtio-net header is cut
//! into MTU-sized IPv4 packets by writing only their headers ([`segment`]); the payload stays
//! where the TUN read put it and goes to `sendmsg` as an iovec next to its header.
//!
//! Receive side: consecutive TCP segments of one flow are gathered into a [`TcpRun`] whose
//! single rebuilt header ([`TcpRun::header`]) and the untouched payloads are written to the
//! TUN device as one GSO packet with `writev`.

use std::ops::Range;

use tun_rs::{VirtioNetHdr, VIRTIO_NET_HDR_LEN};

use super::packet::{fold, ones_sum};

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset` is partial.
const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_NONE`.
const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_UDP_L4`.
const GSO_UDP_L4: u8 = 5;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
const GSO_TCPV6: u8 = 4;
/// The IPv6 fixed header's length (weft's pods send no extension headers in GSO packets; a
/// packet with one is refused).
const IPV6_LEN: usize = 40;
/// `VIRTIO_NET_HDR_GSO_ECN`, a flag on top of the type.
const GSO_ECN: u8 = 0x80;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_CWR: u8 = 0x80;
/// Offset of the TCP checksum inside the TCP header.
const TCP_CSUM_OFFSET: usize = 16;
/// Largest IPv4 packet.
const MAX_IPV4_LEN: usize = 65_535;

/// Why a packet read from the TUN device cannot be cut into segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    /// The GSO type is not IPv4 TCP or UDP (IPv6 has no place in the cluster network).
    #[error("GSO type {0} is not IPv4 TCP or UDP")]
    Unsupported(u8),
    /// The virtio-net header does not describe the packet (lengths, offsets, sizes).
    #[error("virtio-net header (hdr_len {hdr_len}, gso_size {gso_size}, csum_start {csum_start}) does not fit a {len}-byte packet")]
    BadHeader {
        /// Header length the virtio-net header claims.
        hdr_len: u16,
        /// Segment payload size it claims.
        gso_size: u16,
        /// Where it says the transport header starts.
        csum_start: u16,
        /// The packet's length.
        len: usize,
    },
}

/// One segment of a super-packet: its header in the header buffer, its payload in the packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Range of the segment's IPv4 + transport header in the header buffer.
    pub header: Range<usize>,
    /// Range of the segment's payload in the super-packet.
    pub payload: Range<usize>,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// The unfolded sum of the IPv4 pseudo-header of `ip` for protocol `proto` and a transport
/// length of `len`.
fn pseudo_header(ip: &[u8], proto: u8, len: usize) -> u64 {
    ones_sum(&ip[12..20], u64::from(proto) + len as u64)
}

/// The unfolded sum of the IPv6 pseudo-header of `ip` (RFC 8200 8.1).
fn pseudo_header6(ip: &[u8], proto: u8, len: usize) -> u64 {
    ones_sum(&ip[8..40], u64::from(proto) + len as u64)
}

/// Writes a valid IPv4 header checksum into `ip[..ihl]`.
fn fix_ipv4_checksum(ip: &mut [u8], ihl: usize) {
    put16(ip, 10, 0);
    let sum = !fold(ones_sum(&ip[..ihl], 0));
    put16(ip, 10, sum);
}

/// Completes the partial checksum of a packet the kernel handed over with
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM` and no GSO. Returns `false` when the offsets do not fit.
pub fn complete_checksum(hdr: &VirtioNetHdr, pkt: &mut [u8]) -> bool {
    if hdr.flags & F_NEEDS_CSUM == 0 {
        return true;
    }
    let start = usize::from(hdr.csum_start);
    let at = start + usize::from(hdr.csum_offset);
    if at + 2 > pkt.len() {
        return false;
    }
    let mut sum = !fold(ones_sum(&pkt[start..], 0));
    if sum == 0 && hdr.csum_offset == 6 {
        // UDP sends a computed zero as all ones; zero means "no checksum".
        sum = 0xffff;
    }
    put16(pkt, at, sum);
    true
}

/// Whether the TUN read with virtio-net header `hdr` is a GSO super-packet.
pub fn is_gso(hdr: &VirtioNetHdr) -> bool {
    hdr.gso_type != GSO_NONE
}

/// Cuts the IPv4 TCP or UDP super-packet `pkt` described by `hdr` into segments of
/// `hdr.gso_size` payload bytes: each segment's header (IPv4 total length, identification and
/// checksum, TCP sequence number, flags and checksum or UDP length and checksum) is appended
/// to `headers`, and `segments` receives where each header and payload lie. Payloads are not
/// copied; their checksums are computed in place.
///
/// Where the headers end is read from the packet (the TCP data offset, or UDP's fixed 8
/// bytes), not from `hdr.hdr_len`: the kernel fills that with the length of the buffer's
/// linear part, which on the forwarding path (a GRO-merged packet from another device) can
/// hold the first segment's payload too, and cutting there would repeat that payload in
/// every segment under valid checksums.
pub fn segment(
    hdr: &VirtioNetHdr,
    pkt: &[u8],
    headers: &mut Vec<u8>,
    segments: &mut Vec<Segment>,
) -> Result<(), SegmentError> {
    headers.clear();
    segments.clear();
    let kind = hdr.gso_type & !GSO_ECN;
    let proto = match kind {
        GSO_TCPV4 | GSO_TCPV6 => PROTO_TCP,
        GSO_UDP_L4 => PROTO_UDP,
        other => return Err(SegmentError::Unsupported(other)),
    };
    let v6 = pkt.first().is_some_and(|b| b >> 4 == 6);
    let ihl = usize::from(hdr.csum_start);
    let hdr_len = ihl
        + if proto == PROTO_TCP {
            pkt.get(ihl + 12).map_or(0, |b| usize::from(b >> 4) * 4)
        } else {
            8
        };
    let gso_size = usize::from(hdr.gso_size);
    let bad = SegmentError::BadHeader {
        hdr_len: hdr.hdr_len,
        gso_size: hdr.gso_size,
        csum_start: hdr.csum_start,
        len: pkt.len(),
    };
    let min_l4 = if proto == PROTO_TCP { 20 } else { 8 };
    let ip_ok = if v6 {
        kind != GSO_TCPV4 && pkt.len() >= IPV6_LEN && ihl == IPV6_LEN && pkt[6] == proto
    } else {
        kind != GSO_TCPV6
            && pkt.len() >= 20
            && pkt[0] >> 4 == 4
            && ihl == usize::from(pkt[0] & 0x0f) * 4
            && ihl >= 20
            && pkt[9] == proto
    };
    if !ip_ok
        || hdr_len < ihl + min_l4
        || hdr_len > pkt.len()
        || gso_size == 0
        || hdr_len + gso_size > MAX_IPV4_LEN
    {
        return Err(bad);
    }
    let l4_csum_at = ihl
        + if proto == PROTO_TCP {
            TCP_CSUM_OFFSET
        } else {
            6
        };
    if l4_csum_at + 2 > hdr_len {
        return Err(bad);
    }
    let first_seq = if proto == PROTO_TCP {
        be32(pkt, ihl + 4)
    } else {
        0
    };
    let first_id = if v6 { 0 } else { be16(pkt, 4) };
    let mut start = hdr_len;
    let mut i = 0usize;
    while start < pkt.len() {
        let end = (start + gso_size).min(pkt.len());
        let payload_len = end - start;
        let total = hdr_len + payload_len;
        let l4_len = total - ihl;
        let at = headers.len();
        headers.extend_from_slice(&pkt[..hdr_len]);
        let h = &mut headers[at..];
        if v6 {
            // IPv6: the payload length; no identification, no header checksum.
            put16(h, 4, l4_len as u16);
        } else {
            put16(h, 2, total as u16);
            put16(h, 4, first_id.wrapping_add(i as u16));
            fix_ipv4_checksum(h, ihl);
        }
        if proto == PROTO_TCP {
            let seq = first_seq.wrapping_add((gso_size * i) as u32);
            h[ihl + 4..ihl + 8].copy_from_slice(&seq.to_be_bytes());
            let flags = &mut h[ihl + 13];
            if i > 0 {
                *flags &= !TCP_CWR;
            }
            if end != pkt.len() {
                *flags &= !(TCP_FIN | TCP_PSH);
            }
        } else {
            put16(h, ihl + 4, l4_len as u16);
        }
        put16(h, l4_csum_at, 0);
        let sum = if v6 {
            pseudo_header6(h, proto, l4_len)
        } else {
            pseudo_header(h, proto, l4_len)
        };
        let sum = ones_sum(&h[ihl..hdr_len], sum);
        let mut sum = !fold(ones_sum(&pkt[start..end], sum));
        if proto == PROTO_UDP && sum == 0 {
            sum = 0xffff;
        }
        put16(h, l4_csum_at, sum);
        segments.push(Segment {
            header: at..at + hdr_len,
            payload: start..end,
        });
        start = end;
        i += 1;
    }
    Ok(())
}

/// Lays the segments [`segment`] made of the super-packet at the start of `buf` out one after
/// the other inside `buf`, each header in front of its payload, so that the datagrams form
/// one contiguous run of bytes: the kernel then copies a whole GSO send from one iovec
/// instead of two small ones per datagram (each user copy pays a fixed price, which on a
/// 64 KiB send of 45 segments costs about as much as copying the bytes). Moving the payloads
/// apart costs one `memmove` of the super-packet in a buffer that is still in cache.
///
/// `buf` holds the super-packet in its first bytes and needs room for the extra headers
/// behind it (`headers.len()` minus one header). On success `datagrams` receives the range of
/// each datagram in `buf`; returns `false` and leaves `buf` untouched when the room is missing.
pub fn spread(
    buf: &mut [u8],
    headers: &[u8],
    segments: &[Segment],
    datagrams: &mut Vec<Range<usize>>,
) -> bool {
    datagrams.clear();
    let Some(last) = segments.last() else {
        return true;
    };
    let hdr_len = last.header.len();
    let end = last.payload.end + hdr_len * (segments.len() - 1);
    if end > buf.len() {
        return false;
    }
    // From the last segment back: a payload only ever moves towards the end, onto bytes whose
    // own payload has already moved, and a header lands behind the previous payload's
    // original place.
    for (i, s) in segments.iter().enumerate().rev() {
        let at = s.payload.start + hdr_len * i - hdr_len;
        buf.copy_within(s.payload.clone(), at + hdr_len);
        buf[at..at + hdr_len].copy_from_slice(&headers[s.header.clone()]);
    }
    let mut at = segments[0].payload.start - hdr_len;
    for s in segments {
        let len = hdr_len + s.payload.len();
        datagrams.push(at..at + len);
        at += len;
    }
    true
}

/// The parts of an IPv4 TCP segment that decide whether it continues a run.
#[derive(Debug, Clone, Copy)]
struct TcpView {
    /// IPv4 + TCP header length.
    hdr_len: usize,
    seq: u32,
    flags: u8,
}

/// Looks at `pkt` (a checked IPv4 packet whose total length is its length) as a TCP segment
/// that may be coalesced: no IP options, not a fragment, ACK with at most PSH besides, and a
/// payload.
fn tcp_view(pkt: &[u8]) -> Option<TcpView> {
    if pkt.len() < 40 || pkt[0] != 0x45 || pkt[9] != PROTO_TCP {
        return None;
    }
    // Only the DF bit may be set: no MF, no fragment offset.
    if be16(pkt, 6) & !0x4000 != 0 {
        return None;
    }
    let hdr_len = 20 + usize::from(pkt[32] >> 4) * 4;
    if hdr_len < 40 || hdr_len >= pkt.len() {
        return None;
    }
    let flags = pkt[33];
    if flags & !TCP_PSH != TCP_ACK {
        return None;
    }
    Some(TcpView {
        hdr_len,
        seq: be32(pkt, 24),
        flags,
    })
}

/// Where a packet of a run lies: which receive buffer, and which bytes of it.
pub type PacketAt = (usize, Range<usize>);

/// Consecutive TCP segments of one flow that the kernel can accept as one GSO packet: equal
/// headers except for length, identification, checksums and sequence numbers (which follow
/// on), equal payload sizes except a shorter last one, PSH only on the last. The packets stay
/// where they were received; the run keeps their places and a copy of the first header.
#[derive(Debug, Default)]
pub struct TcpRun {
    /// Places of the packets, in order.
    packets: Vec<PacketAt>,
    /// IPv4 + TCP header of the first packet.
    head: Vec<u8>,
    /// Payload size of the first packet: the GSO size.
    seg: usize,
    /// Sequence number the next segment must carry.
    next_seq: u32,
    /// Total IPv4 length so far.
    total: usize,
    /// Whether the last packet carries PSH.
    psh: bool,
    /// No further segment may join (PSH seen, a short segment, the size limit, or not a
    /// plain TCP segment).
    closed: bool,
    /// Room for the rebuilt virtio-net + IPv4 + TCP header.
    header: Vec<u8>,
}

impl TcpRun {
    /// Forgets all packets.
    pub fn clear(&mut self) {
        self.packets.clear();
        self.closed = false;
    }

    /// The places of the run's packets.
    pub fn packets(&self) -> &[PacketAt] {
        &self.packets
    }

    /// Adds the checked IPv4 packet `pkt`, found at `at`, to the run if it continues it (or
    /// starts it when the run is empty). Returns `false`, leaving the run as it was, when it
    /// does not fit; the caller then flushes the run and starts a new one with the packet.
    pub fn push(&mut self, pkt: &[u8], at: PacketAt) -> bool {
        let Some(view) = tcp_view(pkt) else {
            if self.packets.is_empty() {
                self.packets.push(at);
                self.closed = true;
                return true;
            }
            return false;
        };
        let payload = pkt.len() - view.hdr_len;
        if self.packets.is_empty() {
            self.packets.push(at);
            self.head.clear();
            self.head.extend_from_slice(&pkt[..view.hdr_len]);
            self.seg = payload;
            self.next_seq = view.seq.wrapping_add(payload as u32);
            self.total = pkt.len();
            self.psh = view.flags & TCP_PSH != 0;
            self.closed = self.psh;
            return true;
        }
        let head = &self.head;
        let hdr_len = head.len();
        if self.closed
            || view.hdr_len != hdr_len
            || view.seq != self.next_seq
            || payload > self.seg
            || self.total + payload > MAX_IPV4_LEN
        {
            return false;
        }
        // Equal: version/IHL/TOS; DF; TTL/protocol; addresses; ports; ack; offset/flags
        // (ACK only in the run so far); window; urgent pointer; options.
        let same = head[..2] == pkt[..2]
            && head[6..10] == pkt[6..10]
            && head[12..24] == pkt[12..24]
            && head[28..32] == pkt[28..32]
            && head[32] == pkt[32]
            && head[34..36] == pkt[34..36]
            && head[38..hdr_len] == pkt[38..hdr_len];
        if !same || head[33] != TCP_ACK {
            return false;
        }
        self.packets.push(at);
        self.next_seq = view.seq.wrapping_add(payload as u32);
        self.total += payload;
        self.psh = view.flags & TCP_PSH != 0;
        self.closed = self.psh || payload < self.seg;
        true
    }

    /// The virtio-net header plus IPv4 + TCP header to write before the payloads of a run of
    /// two or more packets: the first packet's header with the total length, PSH of the last
    /// packet, a fresh IPv4 checksum and the TCP pseudo-header sum, marked for GSO with a
    /// partial checksum (the kernel finishes it). Each packet's payload follows its first
    /// [`TcpRun::payload_offset`] bytes.
    pub fn header(&mut self) -> &[u8] {
        let hdr_len = self.head.len();
        let vnet = VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: hdr_len as u16,
            gso_size: self.seg as u16,
            csum_start: 20,
            csum_offset: TCP_CSUM_OFFSET as u16,
        };
        self.header.clear();
        self.header.resize(VIRTIO_NET_HDR_LEN, 0);
        // The buffer has exactly VIRTIO_NET_HDR_LEN bytes, so encoding cannot fail.
        let _ = vnet.encode(&mut self.header);
        self.header.extend_from_slice(&self.head);
        let h = &mut self.header[VIRTIO_NET_HDR_LEN..];
        put16(h, 2, self.total as u16);
        fix_ipv4_checksum(h, 20);
        if self.psh {
            h[33] |= TCP_PSH;
        }
        let sum = fold(pseudo_header(h, PROTO_TCP, self.total - 20));
        put16(h, 20 + TCP_CSUM_OFFSET, sum);
        &self.header
    }

    /// Header length of the run's packets: a packet's payload starts this far into it.
    pub fn payload_offset(&self) -> usize {
        self.head.len()
    }

    /// Moves the payloads of the run's packets together inside their receive buffers
    /// (`bufs[i]` is buffer `i` of the packets' places): per buffer, each payload goes right
    /// behind the previous one, starting at the first one's place. `spans` receives, in order,
    /// where the gathered payloads lie, one per buffer, so the kernel can copy the run from one
    /// iovec per buffer instead of one per packet (each user copy pays a fixed price; one
    /// `memmove` of bytes still in cache costs less than 44 of them). The packets' places are
    /// stale afterwards; call [`TcpRun::clear`] next.
    pub fn gather<B: AsMut<[u8]>>(&self, bufs: &mut [B], spans: &mut Vec<PacketAt>) {
        spans.clear();
        let off = self.payload_offset();
        for (i, r) in &self.packets {
            let payload = r.start + off..r.end;
            match spans.last_mut() {
                // A buffer's packets come in order: the gathered payloads end at or before
                // this one's start, so the move only ever goes towards the front.
                Some((m, span)) if m == i => {
                    bufs[*i].as_mut().copy_within(payload.clone(), span.end);
                    span.end += payload.len();
                }
                _ => spans.push((*i, payload)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The RFC 1071 checksum of `data` (complemented).
    fn csum(data: &[u8]) -> u16 {
        !fold(ones_sum(data, 0))
    }

    /// An IPv4 TCP packet 10.244.1.5:40000 -> 10.244.2.7:5201 with timestamps, `payload`
    /// bytes of payload (a counting pattern from `seq`), flags `flags`, valid checksums.
    fn tcp_packet(seq: u32, payload: usize, flags: u8) -> Vec<u8> {
        let hdr = 20 + 32;
        let total = hdr + payload;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        put16(&mut p, 2, total as u16);
        put16(&mut p, 4, 7);
        put16(&mut p, 6, 0x4000);
        p[8] = 64;
        p[9] = PROTO_TCP;
        p[12..16].copy_from_slice(&[10, 244, 1, 5]);
        p[16..20].copy_from_slice(&[10, 244, 2, 7]);
        fix_ipv4_checksum(&mut p, 20);
        put16(&mut p, 20, 40000);
        put16(&mut p, 22, 5201);
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p[28..32].copy_from_slice(&99u32.to_be_bytes());
        p[32] = 8 << 4;
        p[33] = flags;
        put16(&mut p, 34, 512);
        p[40..52].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 5, 0, 0, 0, 6]);
        for (i, b) in p[hdr..].iter_mut().enumerate() {
            *b = (seq as usize + i) as u8;
        }
        let sum = csum_tcp(&p);
        put16(&mut p, 36, sum);
        p
    }

    fn csum_tcp(p: &[u8]) -> u16 {
        let mut copy = p.to_vec();
        put16(&mut copy, 36, 0);
        !fold(ones_sum(
            &copy[20..],
            pseudo_header(&copy, PROTO_TCP, copy.len() - 20),
        ))
    }

    /// A super-packet as the TUN device hands it over: the headers of a segment with the
    /// total payload behind them and a partial checksum.
    fn super_packet(payload: usize, gso: u16, flags: u8) -> (VirtioNetHdr, Vec<u8>) {
        let mut p = tcp_packet(1000, payload, flags);
        put16(&mut p, 36, 0);
        let hdr = VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 52,
            gso_size: gso,
            csum_start: 20,
            csum_offset: 16,
        };
        (hdr, p)
    }

    #[test]
    fn segments_carry_valid_headers_and_the_payload_in_place() {
        let (hdr, pkt) = super_packet(3000, 1400, TCP_ACK | TCP_PSH);
        let mut headers = Vec::new();
        let mut segs = Vec::new();
        segment(&hdr, &pkt, &mut headers, &mut segs).unwrap();
        assert_eq!(segs.len(), 3);
        let mut payload = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let mut whole = headers[s.header.clone()].to_vec();
            whole.extend_from_slice(&pkt[s.payload.clone()]);
            assert_eq!(usize::from(be16(&whole, 2)), whole.len());
            assert_eq!(be16(&whole, 4), 7 + i as u16, "IP id");
            assert_eq!(csum(&whole[..20]), 0, "IP checksum of segment {i}");
            assert_eq!(csum_tcp(&whole), be16(&whole, 36), "TCP checksum of {i}");
            assert_eq!(be32(&whole, 24), 1000 + 1400 * i as u32);
            let psh = whole[33] & TCP_PSH != 0;
            assert_eq!(psh, i == 2, "PSH only on the last segment");
            payload.extend_from_slice(&whole[52..]);
        }
        assert_eq!(segs[2].payload.len(), 200);
        assert_eq!(payload, pkt[52..]);
    }

    #[test]
    fn spread_lays_the_datagrams_out_back_to_back() {
        for (payload, gso) in [(3000, 1400), (64_000, 1420), (1420 * 7, 1420), (10, 1420)] {
            let (hdr, pkt) = super_packet(payload, gso, TCP_ACK | TCP_PSH);
            let mut headers = Vec::new();
            let mut segs = Vec::new();
            segment(&hdr, &pkt, &mut headers, &mut segs).unwrap();
            let expected: Vec<Vec<u8>> = segs
                .iter()
                .map(|s| [&headers[s.header.clone()], &pkt[s.payload.clone()]].concat())
                .collect();
            let extra = 52 * (segs.len() - 1);
            let mut buf = pkt.clone();
            buf.resize(pkt.len() + extra, 0xee);
            let mut short = pkt.clone();
            short.resize(pkt.len() + extra - 1, 0xee);
            let mut ranges = Vec::new();
            if extra > 0 {
                assert!(!spread(&mut short, &headers, &segs, &mut ranges), "no room");
                assert_eq!(short[..pkt.len()], pkt[..], "untouched without room");
            }
            assert!(spread(&mut buf, &headers, &segs, &mut ranges));
            let got: Vec<Vec<u8>> = ranges.iter().map(|r| buf[r.clone()].to_vec()).collect();
            assert_eq!(got, expected, "payload {payload}, gso {gso}");
            assert_eq!(ranges.first().map(|r| r.start), Some(0));
            assert!(
                ranges.windows(2).all(|w| w[0].end == w[1].start),
                "back to back"
            );
            assert_eq!(ranges.last().map(|r| r.end), Some(buf.len()));
        }
    }

    #[test]
    fn udp_segments_get_their_length_and_checksum() {
        let mut p = vec![0u8; 28 + 250];
        p[0] = 0x45;
        p[9] = PROTO_UDP;
        p[12..16].copy_from_slice(&[10, 244, 1, 5]);
        p[16..20].copy_from_slice(&[10, 244, 2, 7]);
        for (i, b) in p[28..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let hdr = VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_UDP_L4,
            hdr_len: 28,
            gso_size: 100,
            csum_start: 20,
            csum_offset: 6,
        };
        let (mut headers, mut segs) = (Vec::new(), Vec::new());
        segment(&hdr, &p, &mut headers, &mut segs).unwrap();
        assert_eq!(segs.len(), 3);
        for s in &segs {
            let mut whole = headers[s.header.clone()].to_vec();
            whole.extend_from_slice(&p[s.payload.clone()]);
            assert_eq!(usize::from(be16(&whole, 24)), whole.len() - 20);
            let sum = ones_sum(
                &whole[20..],
                pseudo_header(&whole, PROTO_UDP, whole.len() - 20),
            );
            assert_eq!(fold(sum), 0xffff, "UDP checksum verifies");
        }
    }

    #[test]
    fn the_headers_end_where_the_packet_says_not_where_the_kernel_hint_does() {
        // On the forwarding path the kernel's hdr_len can span the whole first segment.
        let (hdr, pkt) = super_packet(3000, 1400, TCP_ACK | TCP_PSH);
        let (mut want_headers, mut want) = (Vec::new(), Vec::new());
        segment(&hdr, &pkt, &mut want_headers, &mut want).unwrap();
        for hint in [52 + 1400, 52 + 8, 0, 4000] {
            let hinted = VirtioNetHdr {
                hdr_len: hint,
                ..hdr
            };
            let (mut headers, mut segs) = (Vec::new(), Vec::new());
            segment(&hinted, &pkt, &mut headers, &mut segs).unwrap();
            assert_eq!(segs, want, "hdr_len {hint}");
            assert_eq!(headers, want_headers, "hdr_len {hint}");
        }
        assert_eq!(want[0].header.len(), 52);
        assert_eq!(want[0].payload, 52..52 + 1400);
    }

    #[test]
    fn refuses_headers_that_do_not_fit() {
        let (mut hdr, mut pkt) = super_packet(3000, 1400, TCP_ACK);
        let (mut headers, mut segs) = (Vec::new(), Vec::new());
        // A TCP data offset under 20 bytes, or past the packet's end.
        for (doff, len) in [(4u8, pkt.len()), (15, 50)] {
            let mut bad = pkt.clone();
            bad[32] = doff << 4;
            bad.truncate(len);
            assert!(
                matches!(
                    segment(&hdr, &bad, &mut headers, &mut segs),
                    Err(SegmentError::BadHeader { .. })
                ),
                "data offset {doff}, {len} bytes"
            );
        }
        pkt.truncate(20 + 12);
        assert!(
            segment(&hdr, &pkt, &mut headers, &mut segs).is_err(),
            "no data offset"
        );
        let (_, pkt) = super_packet(3000, 1400, TCP_ACK);
        // GSO_UDP (UFO, fragmentation) is not cut; TCPV6 on an IPv4 packet is a bad header.
        hdr.gso_type = 3;
        assert_eq!(
            segment(&hdr, &pkt, &mut headers, &mut segs),
            Err(SegmentError::Unsupported(3))
        );
        hdr.gso_type = GSO_TCPV6;
        assert!(matches!(
            segment(&hdr, &pkt, &mut headers, &mut segs),
            Err(SegmentError::BadHeader { .. })
        ));
        hdr.gso_type = GSO_TCPV4;
        hdr.gso_size = 0;
        assert!(segment(&hdr, &pkt, &mut headers, &mut segs).is_err());
    }

    #[test]
    fn completes_a_partial_checksum() {
        let (mut hdr, mut pkt) = super_packet(100, 1400, TCP_ACK);
        let partial = fold(pseudo_header(&pkt, PROTO_TCP, pkt.len() - 20));
        put16(&mut pkt, 36, partial);
        hdr.gso_type = GSO_NONE;
        assert!(complete_checksum(&hdr, &mut pkt));
        assert_eq!(be16(&pkt, 36), csum_tcp(&pkt));
        hdr.csum_offset = 4000;
        assert!(!complete_checksum(&hdr, &mut pkt));
    }

    /// Concatenates packets as one GRO receive buffer and returns it with their ranges.
    fn gro_buffer(packets: &[Vec<u8>]) -> (Vec<u8>, Vec<Range<usize>>) {
        let mut buf = Vec::new();
        let mut ranges = Vec::new();
        for p in packets {
            ranges.push(buf.len()..buf.len() + p.len());
            buf.extend_from_slice(p);
        }
        (buf, ranges)
    }

    #[test]
    fn gather_moves_each_buffers_payloads_together() {
        let first: Vec<Vec<u8>> = (0..44)
            .map(|i| tcp_packet(1000 + 1420 * i, 1420, TCP_ACK))
            .collect();
        let second = vec![tcp_packet(1000 + 1420 * 44, 700, TCP_ACK | TCP_PSH)];
        let (buf0, ranges0) = gro_buffer(&first);
        let (buf1, ranges1) = gro_buffer(&second);
        let mut run = TcpRun::default();
        for r in &ranges0 {
            assert!(run.push(&buf0[r.clone()], (0, r.clone())));
        }
        assert!(run.push(&buf1[ranges1[0].clone()], (1, ranges1[0].clone())));
        let expected: Vec<u8> = first
            .iter()
            .chain(&second)
            .flat_map(|p| p[52..].to_vec())
            .collect();
        let mut bufs = vec![buf0.clone(), buf1.clone()];
        let mut spans = Vec::new();
        run.gather(&mut bufs, &mut spans);
        assert_eq!(spans, vec![(0, 52..52 + 44 * 1420), (1, 52..52 + 700)]);
        let got: Vec<u8> = spans
            .iter()
            .flat_map(|(i, r)| bufs[*i][r.clone()].to_vec())
            .collect();
        assert_eq!(got, expected);
        assert_eq!(bufs[0][..52], buf0[..52], "the first header stays");
    }

    #[test]
    fn coalesces_a_flow_into_one_gso_packet() {
        let packets = vec![
            tcp_packet(1000, 1400, TCP_ACK),
            tcp_packet(2400, 1400, TCP_ACK),
            tcp_packet(3800, 600, TCP_ACK | TCP_PSH),
        ];
        let (buf, ranges) = gro_buffer(&packets);
        let mut run = TcpRun::default();
        for r in &ranges {
            assert!(run.push(&buf[r.clone()], (0, r.clone())));
        }
        assert_eq!(run.packets().len(), 3);
        assert!(
            !run.push(&buf[ranges[0].clone()], (0, ranges[0].clone())),
            "closed after PSH"
        );
        let off = run.payload_offset();
        let header = run.header().to_vec();
        let vnet = VirtioNetHdr::decode(&header).unwrap();
        assert_eq!(
            (vnet.gso_type, vnet.gso_size, vnet.hdr_len),
            (GSO_TCPV4, 1400, 52)
        );
        assert_eq!(vnet.flags, F_NEEDS_CSUM);
        let mut whole = header[VIRTIO_NET_HDR_LEN..].to_vec();
        for r in &ranges {
            whole.extend_from_slice(&buf[r.start + off..r.end]);
        }
        assert_eq!(usize::from(be16(&whole, 2)), whole.len());
        assert_eq!(csum(&whole[..20]), 0);
        assert_eq!(whole[33], TCP_ACK | TCP_PSH);
        // Completing the partial checksum gives the checksum of the whole segment.
        let partial = be16(&whole, 36);
        assert_eq!(
            partial,
            fold(pseudo_header(&whole, PROTO_TCP, whole.len() - 20))
        );
        let mut done = whole.clone();
        let hdr = VirtioNetHdr {
            gso_type: GSO_NONE,
            ..vnet
        };
        assert!(complete_checksum(&hdr, &mut done));
        assert_eq!(be16(&done, 36), csum_tcp(&done));
    }

    #[test]
    fn does_not_coalesce_gaps_other_flows_or_control_segments() {
        let first = tcp_packet(1000, 1400, TCP_ACK);
        let gap = tcp_packet(9999, 1400, TCP_ACK);
        let mut other_port = tcp_packet(2400, 1400, TCP_ACK);
        put16(&mut other_port, 22, 80);
        let fin = tcp_packet(2400, 1400, TCP_ACK | TCP_FIN);
        let larger = tcp_packet(2400, 1401, TCP_ACK);
        let (buf, r) = gro_buffer(&[first, gap, other_port, fin, larger]);
        let mut run = TcpRun::default();
        let push = |run: &mut TcpRun, i: usize| run.push(&buf[r[i].clone()], (0, r[i].clone()));
        assert!(push(&mut run, 0));
        for i in 1..r.len() {
            assert!(!push(&mut run, i), "packet {i} joined");
        }
        assert_eq!(run.packets().len(), 1);
        run.clear();
        assert!(run.packets().is_empty());
        assert!(push(&mut run, 3), "a FIN segment stands alone");
        assert!(!push(&mut run, 0));
    }

    /// An IPv6 TCP super-packet fd00::5 -> fd00::7 as TUN hands it over with TSO6.
    fn super_packet6(payload: usize, gso: u16) -> (VirtioNetHdr, Vec<u8>) {
        let hdr_len = IPV6_LEN + 20;
        let mut p = vec![0u8; hdr_len + payload];
        p[0] = 0x60;
        put16(&mut p, 4, (20 + payload) as u16);
        p[6] = PROTO_TCP;
        p[7] = 64;
        p[8] = 0xfd;
        p[23] = 5;
        p[24] = 0xfd;
        p[39] = 7;
        put16(&mut p, 40, 40000);
        put16(&mut p, 42, 5201);
        p[44..48].copy_from_slice(&1000u32.to_be_bytes());
        p[52] = 5 << 4;
        p[53] = TCP_ACK | TCP_PSH;
        for (i, b) in p[hdr_len..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let hdr = VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV6,
            hdr_len: hdr_len as u16,
            gso_size: gso,
            csum_start: IPV6_LEN as u16,
            csum_offset: 16,
        };
        (hdr, p)
    }

    #[test]
    fn ipv6_tcp_super_packets_are_cut_with_valid_headers() {
        let (hdr, p) = super_packet6(3000, 1200);
        let (mut headers, mut segments) = (Vec::new(), Vec::new());
        segment(&hdr, &p, &mut headers, &mut segments).unwrap();
        assert_eq!(segments.len(), 3);
        for (i, s) in segments.iter().enumerate() {
            let mut seg = headers[s.header.clone()].to_vec();
            seg.extend_from_slice(&p[s.payload.clone()]);
            let l4_len = seg.len() - IPV6_LEN;
            assert_eq!(usize::from(be16(&seg, 4)), l4_len, "payload length");
            assert_eq!(be32(&seg, 44), 1000 + 1200 * i as u32, "sequence number");
            let psh = seg[53] & TCP_PSH != 0;
            assert_eq!(psh, i == 2, "PSH only on the last segment");
            let sum = fold(ones_sum(
                &seg[IPV6_LEN..],
                pseudo_header6(&seg, PROTO_TCP, l4_len),
            ));
            assert_eq!(sum, 0xffff, "TCP checksum of segment {i}");
        }
        // An IPv4 GSO type on an IPv6 packet is refused.
        let bad = VirtioNetHdr {
            gso_type: GSO_TCPV4,
            ..hdr
        };
        assert!(segment(&bad, &p, &mut headers, &mut segments).is_err());
    }
}
