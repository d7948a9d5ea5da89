//! Peer health: every peer is probed over the overlay, and the pattern of answers is turned
//! into a diagnosis of Flannel's classic failures.
//!
//! Each round sends three ICMP echoes per peer, all with DF set: a small one and a full-MTU
//! one to the peer's overlay address (`<subnet>.0`, its VXLAN or UDP device), and a small one
//! to its public IP on the underlay. Small passes and large fails: an MTU black hole (the next
//! round sends a ladder of sizes to name the MTU that works). The underlay answers but the
//! overlay does not: encapsulated packets are dropped (a firewall on the backend's UDP port,
//! or bad checksums from an offload). Neither answers: the node is gone and its lease stale.
//!
//! A peer's IPv6 overlay is probed the same way with ICMPv6, at `<IPv6 subnet>::` (a dual-stack
//! peer over both families, an IPv6-only one over IPv6 alone), its underlay at its `PublicIPv6`.
//!
//! The prober is a thread of its own with one raw ICMP socket per family: a round costs three
//! small packets per peer (the ladder only while a black hole is being measured). A reply
//! counts only if it carries the prober's id, an outstanding sequence number, the random
//! token that probe's payload carried and the probe's full length, and comes from the
//! address the probe went to: a forged reply must have seen the request.

use std::collections::{BTreeMap, HashMap};
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tracing::{info, warn};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use crate::backend::udp::packet::internet_checksum;
use crate::health::encode_gauges;
use crate::status::{unix_seconds, NodeStatus, StatusBoard};

/// The small probe's IP packet size (ping's default).
const SMALL: u32 = 84;
/// The small IPv6 probe's packet size (ping's default over IPv6).
const SMALL_V6: u32 = 104;
/// The smallest size the black-hole ladder tries (IPv4's minimum reassembly size).
const LADDER_FROM: u32 = 576;
/// The smallest size the ladder tries over IPv6 (IPv6's minimum link MTU).
const LADDER_FROM_V6: u32 = 1280;
/// Step between the ladder's sizes.
const LADDER_STEP: u32 = 10;
/// The most peers whose black hole one round measures with a ladder (up to 88 probes of up
/// to the device MTU each): a cluster-wide MTU mistake at thousands of peers must not turn
/// a round into hundreds of megabytes of ICMP. The others wait for later rounds, in turn.
const LADDERS_PER_ROUND: usize = 16;

/// What the probes say about a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Diagnosis {
    /// Small and full-MTU probes pass.
    Healthy,
    /// Small probes pass over the overlay, full-MTU ones do not.
    MtuBlackHole,
    /// The underlay reaches the peer, the overlay does not.
    EncapsulationDropped,
    /// Neither overlay nor underlay answers: the node is down and its lease stale.
    PeerDown,
}

impl Diagnosis {
    /// The word `weftctl status` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Diagnosis::Healthy => "healthy",
            Diagnosis::MtuBlackHole => "mtu-black-hole",
            Diagnosis::EncapsulationDropped => "encapsulation-dropped",
            Diagnosis::PeerDown => "peer-down",
        }
    }
}

/// The latest probe results for one peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerHealth {
    /// The small overlay probe was answered.
    pub reachable: bool,
    /// Round trip of the small overlay probe.
    pub rtt_seconds: Option<f64>,
    /// The largest packet that crossed the overlay (the device MTU when the full probe passes).
    pub path_mtu: Option<u32>,
    /// Set when a black hole's ladder got no answer at any size: the path MTU is below this
    /// (the ladder's smallest size), so nothing the ladder can name; not laddered again
    /// until a probe of this size passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_mtu_below: Option<u32>,
    /// What the pattern means.
    pub diagnosis: Diagnosis,
    /// When this was measured, Unix seconds.
    pub at_unix: u64,
    /// Rounds in a row whose confirming probe of `path_mtu` went unanswered: one lost probe
    /// is no proof that the path shrank (see [`judge`]). The prober's own bookkeeping.
    #[serde(skip)]
    pub confirm_misses: u8,
    /// The smallest size of a ladder that went wholly unanswered in the last round: the path
    /// MTU is named below it only when a probe of that size fails again the round after, for
    /// a ladder lost to congestion is no proof either. The prober's own bookkeeping.
    #[serde(skip)]
    pub pending_below: Option<u32>,
}

/// The diagnosis for one round's answers.
pub fn diagnose(small: bool, large: bool, underlay: bool) -> Diagnosis {
    match (small, large, underlay) {
        (true, true, _) => Diagnosis::Healthy,
        (true, false, _) => Diagnosis::MtuBlackHole,
        (false, _, true) => Diagnosis::EncapsulationDropped,
        (false, _, false) => Diagnosis::PeerDown,
    }
}

/// The log line for a diagnosis; names what to check.
pub fn explain(peer: &str, public_ip: IpAddr, backend: &str, mtu: u32, h: &PeerHealth) -> String {
    let port = match backend {
        "udp" => crate::config::DEFAULT_UDP_PORT,
        "wireguard" if public_ip.is_ipv6() => crate::config::DEFAULT_WIREGUARD_PORT_V6,
        "wireguard" => crate::config::DEFAULT_WIREGUARD_PORT,
        _ => crate::config::DEFAULT_VXLAN_PORT,
    };
    match h.diagnosis {
        Diagnosis::Healthy => format!("peer {peer} ({public_ip}) reachable over the overlay at full MTU {mtu}"),
        Diagnosis::MtuBlackHole => match (h.path_mtu, h.path_mtu_below) {
            (Some(works), _) => format!(
                "MTU black hole to peer {peer} ({public_ip}): {mtu}-byte packets with DF are lost on the way, {works} bytes pass; lower the backend MTU to {works} or fix the underlay path's MTU"
            ),
            (None, Some(floor)) => format!(
                "MTU black hole to peer {peer} ({public_ip}): small packets pass, but none of {floor} to {mtu} bytes with DF; the path MTU is below {floor}, too small for any backend MTU: fix the underlay path's MTU"
            ),
            (None, None) => format!(
                "MTU black hole to peer {peer} ({public_ip}): small packets pass, {mtu}-byte packets with DF are lost; measuring the MTU that works"
            ),
        },
        Diagnosis::EncapsulationDropped => format!(
            "encapsulation dropped to peer {peer}: the underlay reaches {public_ip} but {backend} packets (UDP {port}) do not pass; check firewalls for UDP {port} on both nodes and the path, and checksum offload (ethtool -K flannel.1 tx-checksum-ip-generic off)"
        ),
        Diagnosis::PeerDown => format!(
            "peer {peer} ({public_ip}) answers neither over the overlay nor on the underlay: the node is down and its lease is stale"
        ),
    }
}

/// Every peer's health on `/metrics`: `weft_peer_*{peer="<subnet>"}` gauges, read from the
/// board at each scrape.
#[derive(Debug)]
pub struct PeerHealthMetrics(pub Arc<StatusBoard>);

impl Collector for PeerHealthMetrics {
    fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
        encode_peer_health(&self.0.peer_health(), encoder)
    }
}

fn encode_peer_health(
    health: &BTreeMap<String, PeerHealth>,
    mut encoder: DescriptorEncoder,
) -> std::fmt::Result {
    encode_gauges(
        &mut encoder,
        "weft_peer_reachable",
        "1 when the peer answers a small probe over the overlay.",
        "peer",
        health
            .iter()
            .map(|(p, h)| (p.as_str(), u64::from(h.reachable))),
    )?;
    encode_gauges(
        &mut encoder,
        "weft_peer_rtt_seconds",
        "Round trip of the small overlay probe.",
        "peer",
        health
            .iter()
            .filter_map(|(p, h)| Some((p.as_str(), h.rtt_seconds?))),
    )?;
    encode_gauges(
        &mut encoder,
        "weft_peer_path_mtu_bytes",
        "Largest packet that crossed the overlay with DF set.",
        "peer",
        health
            .iter()
            .filter_map(|(p, h)| Some((p.as_str(), h.path_mtu?))),
    )
}

/// What identifies one probe: its ICMP `id` and `seq` and a random `token` the request
/// carries in its payload and a true reply echoes, so a reply forged by someone who did not
/// see the request (guessing id and sequence) is not taken for an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Echo {
    id: u16,
    seq: u16,
    token: u64,
}

/// The ICMP echo header and token length: type, code, checksum, id, seq, then the token.
const ECHO_HEAD: usize = 16;

/// An echo message of ICMP `kind` for `echo`, `len` bytes long (at least [`ECHO_HEAD`]):
/// the token first in the payload, then a counting pattern.
fn echo_message(kind: u8, echo: Echo, len: usize) -> Vec<u8> {
    let mut icmp = vec![0u8; len.max(ECHO_HEAD)];
    icmp[0] = kind;
    icmp[4..6].copy_from_slice(&echo.id.to_be_bytes());
    icmp[6..8].copy_from_slice(&echo.seq.to_be_bytes());
    icmp[8..16].copy_from_slice(&echo.token.to_be_bytes());
    for (i, b) in icmp[ECHO_HEAD..].iter_mut().enumerate() {
        *b = i as u8;
    }
    icmp
}

/// One echo request: ICMP type 8 for `echo`, filling `size` bytes of IP.
fn echo_request(echo: Echo, size: u32) -> Vec<u8> {
    let mut icmp = echo_message(8, echo, size.saturating_sub(20) as usize);
    let sum = internet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    icmp
}

/// One ICMPv6 echo request (type 128) for `echo`, filling `size` bytes of IPv6; the kernel
/// fills in the checksum of a raw ICMPv6 socket.
fn echo_request6(echo: Echo, size: u32) -> Vec<u8> {
    echo_message(128, echo, size.saturating_sub(40) as usize)
}

/// The echo and length (in bytes of ICMP) of an echo reply message of ICMP type `kind`.
fn parse_echo(kind: u8, icmp: &[u8]) -> Option<(Echo, usize)> {
    if icmp.len() < ECHO_HEAD || icmp[0] != kind {
        return None;
    }
    let echo = Echo {
        id: u16::from_be_bytes([icmp[4], icmp[5]]),
        seq: u16::from_be_bytes([icmp[6], icmp[7]]),
        token: u64::from_be_bytes(icmp[8..16].try_into().ok()?),
    };
    Some((echo, icmp.len()))
}

/// An ICMPv6 echo reply (type 129), as a raw ICMPv6 socket receives it (without the IPv6
/// header).
fn parse_reply6(icmp: &[u8]) -> Option<(Echo, usize)> {
    parse_echo(129, icmp)
}

/// The source, echo and ICMP length of an echo reply in a raw IPv4 packet.
fn parse_reply(pkt: &[u8]) -> Option<(Ipv4Addr, Echo, usize)> {
    let ihl = usize::from(pkt.first()? & 0x0f) * 4;
    if ihl < 20 || pkt.len() < ihl || pkt.get(9) != Some(&1) {
        return None;
    }
    let (echo, len) = parse_echo(0, &pkt[ihl..])?;
    let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
    Some((src, echo, len))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Small,
    Large,
    Underlay,
    Ladder,
    /// One probe at the size a black hole's last verdict rests on (its named path MTU, or the
    /// ladder's smallest size when nothing passed), to notice when the path changed.
    Confirm,
}

/// One probe a round sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Planned {
    /// The index of its peer among the round's targets.
    peer: usize,
    kind: Kind,
    /// Its size in bytes of IP.
    size: u32,
    to: IpAddr,
}

/// One probe sent and not yet answered.
struct Sent {
    probe: Planned,
    at: Instant,
    /// What its request carried.
    echo: Echo,
    /// Its length in bytes of ICMP, which a true reply has too.
    len: usize,
}

/// The prober's numbering of its probes: a 32-bit count spread over ICMP id (the high half,
/// from a random base) and sequence number (the low half), so a round of more than 65 536
/// probes (a thousand black holes being measured, ten thousand dual-stack peers) never
/// gives two outstanding probes one number.
#[derive(Debug, Clone, Copy)]
struct Numbering {
    base: u16,
    next: u32,
}

impl Numbering {
    /// The next probe's number and the id and sequence number that carry it.
    fn take(&mut self) -> (u32, u16, u16) {
        let n = self.next;
        self.next = self.next.wrapping_add(1);
        (n, self.base.wrapping_add((n >> 16) as u16), n as u16)
    }

    /// The number a reply's id and sequence number carry.
    fn number(&self, id: u16, seq: u16) -> u32 {
        u32::from(id.wrapping_sub(self.base)) << 16 | u32::from(seq)
    }
}

/// A peer a round probes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// The name its health is kept and shown under: its subnet (its IPv6 subnet when it has
    /// no IPv4 one).
    name: String,
    /// Its overlay address, `<subnet>.0` or `<IPv6 subnet>::`.
    overlay: IpAddr,
    /// Its public address on the underlay, of the same family.
    underlay: IpAddr,
}

/// The raw ICMP sockets of the prober; IPv6's is `None` where the kernel has no IPv6.
struct Sockets {
    v4: Socket,
    v6: Option<Socket>,
}

impl Sockets {
    fn open() -> std::io::Result<Sockets> {
        let v4 = Socket::new(
            Domain::IPV4,
            Type::from(libc::SOCK_RAW),
            Some(Protocol::ICMPV4),
        )?;
        // DF on every probe and no fragmentation by the sender, whatever the kernel learnt.
        // Neither socket2 nor nix offers IP_MTU_DISCOVER: one raw setsockopt.
        set_int(
            &v4,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_PROBE,
        )?;
        // Only echo replies reach the socket: not the node's other ICMP (errors, pings of
        // its pods), which would queue between rounds and be read only to be dropped.
        set_option(&v4, libc::SOL_RAW, ICMP_FILTER, &!(1u32 << ECHO_REPLY))?;
        let v6 = match Self::open_v6() {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "no ICMPv6 probe socket; the peers' IPv6 overlays are not probed");
                None
            }
        };
        for s in std::iter::once(&v4).chain(v6.as_ref()) {
            // A round queues a few probes per peer, and those to a dead peer wait in its
            // neighbour queue, charged to this socket: room for a round at a thousand peers,
            // beyond wmem_max (root may).
            if let Err(e) =
                nix::sys::socket::setsockopt(s, nix::sys::socket::sockopt::SndBufForce, &(4 << 20))
            {
                warn!(error = %e, "enlarge the probe socket's send buffer");
            }
            s.set_nonblocking(true)?;
        }
        Ok(Sockets { v4, v6 })
    }

    fn open_v6() -> std::io::Result<Socket> {
        let v6 = Socket::new(
            Domain::IPV6,
            Type::from(libc::SOCK_RAW),
            Some(Protocol::ICMPV6),
        )?;
        set_int(
            &v6,
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_PROBE,
        )?;
        set_int(&v6, libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 1)?;
        // Only echo replies, not neighbour discovery and the rest of the node's ICMPv6.
        let mut blocked = [u32::MAX; 8];
        blocked[usize::from(ECHO_REPLY_V6 >> 5)] &= !(1u32 << (ECHO_REPLY_V6 & 31));
        set_option(&v6, libc::IPPROTO_ICMPV6, ICMP6_FILTER, &blocked)?;
        Ok(v6)
    }

    /// Sends one echo request of `size` bytes to `to`, without waiting for buffer space;
    /// the length of its ICMP message if it was queued.
    fn send(&self, echo: Echo, size: u32, to: IpAddr) -> Option<usize> {
        let (socket, pkt) = match to {
            IpAddr::V4(_) => (&self.v4, echo_request(echo, size)),
            IpAddr::V6(_) => (self.v6.as_ref()?, echo_request6(echo, size)),
        };
        let addr = SockAddr::from(SocketAddr::new(to, 0));
        socket
            .send_to_with_flags(&pkt, &addr, libc::MSG_DONTWAIT)
            .ok()
            .map(|_| pkt.len())
    }

    /// Waits up to `timeout` for an answer on either socket and returns every echo reply
    /// then queued: `(source, echo, ICMP length)`.
    fn replies(
        &self,
        timeout: Duration,
        buf: &mut [MaybeUninit<u8>],
    ) -> Vec<(IpAddr, Echo, usize)> {
        use nix::poll::{poll, PollFd, PollFlags};
        let mut fds = vec![PollFd::new(self.v4.as_fd(), PollFlags::POLLIN)];
        if let Some(v6) = &self.v6 {
            fds.push(PollFd::new(v6.as_fd(), PollFlags::POLLIN));
        }
        let ms = u16::try_from(timeout.as_millis())
            .unwrap_or(u16::MAX)
            .max(1);
        if !matches!(poll(&mut fds, ms), Ok(n) if n > 0) {
            return Vec::new();
        }
        let mut out = Vec::new();
        while let Ok((len, _)) = self.v4.recv_from(buf) {
            if let Some((src, echo, len)) = parse_reply(initialised(buf, len)) {
                out.push((IpAddr::V4(src), echo, len));
            }
        }
        if let Some(v6) = &self.v6 {
            while let Ok((len, from)) = v6.recv_from(buf) {
                let src = from.as_socket().map(|a| a.ip());
                if let (Some(src), Some((echo, len))) = (src, parse_reply6(initialised(buf, len))) {
                    out.push((src, echo, len));
                }
            }
        }
        out
    }
}

/// The first `len` bytes of `buf`, which a receive call has just written.
fn initialised(buf: &[MaybeUninit<u8>], len: usize) -> &[u8] {
    let len = len.min(buf.len());
    // SAFETY: recv_from initialised the first `len` bytes; MaybeUninit<u8> has u8's layout.
    unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), len) }
}

/// `ICMP_FILTER` (linux/icmp.h, level `SOL_RAW`): a mask of the ICMP types a raw socket drops.
const ICMP_FILTER: libc::c_int = 1;
/// `ICMP6_FILTER` (linux/icmpv6.h): 256 bits, a set bit drops that ICMPv6 type.
const ICMP6_FILTER: libc::c_int = 1;
/// ICMP's echo reply type.
const ECHO_REPLY: u8 = 0;
/// ICMPv6's echo reply type.
const ECHO_REPLY_V6: u8 = 129;

/// One integer socket option, which neither socket2 nor nix offers.
fn set_int(
    socket: &Socket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    set_option(socket, level, name, &value)
}

/// One socket option whose value is the plain bytes of `value`.
fn set_option<T: Copy>(
    socket: &Socket,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> std::io::Result<()> {
    // SAFETY: a valid socket; the kernel reads size_of::<T>() bytes of a live value.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(value).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Rounds in a row a named path MTU's confirming probe must go unanswered before the size is
/// forgotten and the peer laddered again.
const CONFIRM_MISSES: u8 = 2;

#[derive(Debug, Default)]
struct Answers {
    small_rtt: Option<Duration>,
    large: bool,
    underlay: bool,
    ladder_best: Option<u32>,
    /// Ladder probes planned for the peer this round, those the socket took, and the
    /// smallest size among them.
    ladder_planned: u32,
    ladder_sent: u32,
    ladder_smallest: Option<u32>,
    /// The confirming probe went out, and it was answered.
    confirm_sent: bool,
    confirm_answered: bool,
}

/// Whether a round should ladder the peer whose last health is `h`: a black hole whose MTU
/// is neither named nor known (or suspected) to be below the ladder.
fn still_to_measure(h: &PeerHealth) -> bool {
    h.diagnosis == Diagnosis::MtuBlackHole
        && h.path_mtu.is_none()
        && h.path_mtu_below.is_none()
        && h.pending_below.is_none()
}

/// The size a round probes once more for the peer whose last health is `h`: a measured
/// black hole's path MTU (which should still pass) or the ladder's smallest size (which
/// should still fail, whether the path MTU is named below it or only suspected to be).
fn to_confirm(h: &PeerHealth) -> Option<u32> {
    if h.diagnosis != Diagnosis::MtuBlackHole {
        return None;
    }
    h.path_mtu.or(h.path_mtu_below).or(h.pending_below)
}

/// A peer's health from one round's answers `a`, its previous health `was` and the device
/// MTU. A named path MTU (or "below the ladder") is kept while the diagnosis stays a black
/// hole and the confirming probe agrees; when it does not, the path changed and is measured
/// again. An answer is proof (a probe's reply is checked against its token, length and
/// source), so "below the ladder" goes as soon as its size passes; silence is not (probes
/// lost to congestion), so a named size goes only after [`CONFIRM_MISSES`] rounds in a row
/// left its confirming probe unanswered, and a ladder nothing answered names the path MTU
/// below it only once a probe of its smallest size goes unanswered the round after too.
fn judge(a: &Answers, was: Option<&PeerHealth>, mtu: u32, now: u64) -> PeerHealth {
    let diagnosis = diagnose(a.small_rtt.is_some(), a.large, a.underlay);
    let kept = was.filter(|h| h.diagnosis == diagnosis);
    let mut pending_below = None;
    let (path_mtu, path_mtu_below, confirm_misses) = match diagnosis {
        Diagnosis::Healthy => (Some(mtu), None, 0),
        Diagnosis::MtuBlackHole => match a.ladder_best {
            Some(best) => (Some(best), None, 0),
            // Every size was sent and none came back: suspected, confirmed next round.
            None if a.ladder_planned > 0 && a.ladder_sent == a.ladder_planned => {
                pending_below = a.ladder_smallest;
                (None, None, 0)
            }
            None => {
                let (named, below) = (
                    kept.and_then(|h| h.path_mtu),
                    kept.and_then(|h| h.path_mtu_below),
                );
                let suspected = kept.and_then(|h| h.pending_below);
                let misses = kept.map_or(0, |h| h.confirm_misses);
                if !a.confirm_sent {
                    // Nothing learnt this round.
                    pending_below = suspected;
                    (named, below, misses)
                } else if suspected.is_some() {
                    // Unanswered twice (the ladder, then its smallest size): below it.
                    // Answered: the path carries that size after all, measure again.
                    (None, suspected.filter(|_| !a.confirm_answered), 0)
                } else if below.is_some() && a.confirm_answered {
                    (None, None, 0)
                } else if named.is_some() && !a.confirm_answered {
                    if misses + 1 >= CONFIRM_MISSES {
                        (None, None, 0)
                    } else {
                        (named, below, misses + 1)
                    }
                } else {
                    (named, below, 0)
                }
            }
        },
        _ => (None, None, 0),
    };
    PeerHealth {
        reachable: a.small_rtt.is_some(),
        rtt_seconds: a.small_rtt.map(|d| d.as_secs_f64()),
        path_mtu,
        path_mtu_below,
        diagnosis,
        at_unix: now,
        confirm_misses,
        pending_below,
    }
}

/// Starts the prober thread: a round every `interval` once the node is ready.
pub fn spawn(board: Arc<StatusBoard>, interval: Duration) -> std::io::Result<()> {
    let sockets = Sockets::open()?;
    let mut numbering = Numbering {
        base: rand::random(),
        next: 0,
    };
    std::thread::Builder::new()
        .name("weft-probe".into())
        .spawn(move || {
            let mut round_no: u64 = 0;
            loop {
                std::thread::sleep(interval);
                let status = board.snapshot();
                if status.ready {
                    round(
                        &sockets,
                        &mut numbering,
                        round_no,
                        &status,
                        &board,
                        interval,
                    );
                    round_no += 1;
                }
            }
        })?;
    Ok(())
}

/// The peers a round probes. A peer with an IPv4 subnet is probed over IPv4 and, with an IPv6
/// subnet too, over IPv6 as well; an IPv6-only peer (IPv4 part `0.0.0.0/0`) over IPv6 when its
/// lease names a `PublicIPv6`. A dual-stack peer's IPv6 underlay check goes to its
/// `PublicIPv6`, or to its `PublicIP` when its IPv6 pods ride the IPv4 underlay.
fn probe_targets(status: &NodeStatus) -> Vec<Target> {
    let mut targets = Vec::with_capacity(status.peers.len());
    for p in &status.peers {
        // Named as the board looks their health up.
        let v6 = |name: String, underlay: IpAddr| {
            p.subnet6.map(|subnet6| Target {
                name,
                overlay: IpAddr::V6(subnet6.network()),
                underlay,
            })
        };
        if p.subnet.prefix() == 0 {
            targets.extend(
                p.public_ipv6
                    .and_then(|ip| v6(p.health_key(), IpAddr::V6(ip))),
            );
            continue;
        }
        targets.push(Target {
            name: p.health_key(),
            overlay: IpAddr::V4(p.subnet.network()),
            underlay: IpAddr::V4(p.public_ip),
        });
        let underlay6 = p.public_ipv6.map_or(IpAddr::V4(p.public_ip), IpAddr::V6);
        targets.extend(p.health6_key().and_then(|name| v6(name, underlay6)));
    }
    targets
}

/// Whether a reply from `src` with `echo`, `len` bytes of ICMP, answers `sent` (the probe
/// outstanding under the number the reply carries, if any): the id, sequence number and
/// token that probe carried, from the address it went to, at its full length (a reply cut
/// short is no proof that the full size got through).
fn answers_probe(sent: Option<&Sent>, src: IpAddr, echo: Echo, len: usize) -> bool {
    sent.is_some_and(|s| s.echo == echo && s.probe.to == src && s.len == len)
}

/// The probes of one round, in sending order: three per target, one more at the size
/// `confirming(name)` gives for a black hole already measured, and a ladder of sizes for
/// the peers whose black hole is still to be measured (`measuring(name)`), at most
/// [`LADDERS_PER_ROUND`] of them, taken in turn from `round_no` on so that every one gets
/// its ladder within a few rounds.
fn plan(
    targets: &[Target],
    mtu: u32,
    round_no: u64,
    measuring: impl Fn(&str) -> bool,
    confirming: impl Fn(&str) -> Option<u32>,
) -> Vec<Planned> {
    let mut probes = Vec::with_capacity(targets.len() * 3);
    for (peer, t) in targets.iter().enumerate() {
        let small = match t.overlay {
            IpAddr::V4(_) => SMALL,
            IpAddr::V6(_) => SMALL_V6,
        };
        let mut probe = |kind, size, to| {
            probes.push(Planned {
                peer,
                kind,
                size,
                to,
            })
        };
        probe(Kind::Small, small, t.overlay);
        probe(Kind::Large, mtu, t.overlay);
        probe(Kind::Underlay, small, t.underlay);
        if let Some(size) = confirming(&t.name) {
            probe(Kind::Confirm, size, t.overlay);
        }
    }
    let waiting: Vec<usize> = (0..targets.len())
        .filter(|&i| measuring(&targets[i].name))
        .collect();
    if waiting.is_empty() {
        return probes;
    }
    let first = (round_no as usize).wrapping_mul(LADDERS_PER_ROUND) % waiting.len();
    for &peer in waiting
        .iter()
        .cycle()
        .skip(first)
        .take(LADDERS_PER_ROUND.min(waiting.len()))
    {
        let t = &targets[peer];
        let ladder_from = match t.overlay {
            IpAddr::V4(_) => LADDER_FROM,
            IpAddr::V6(_) => LADDER_FROM_V6,
        };
        // Down from the device MTU, so a path MTU a multiple of the step below it is named
        // exactly.
        let mut size = mtu.saturating_sub(LADDER_STEP);
        while size >= ladder_from {
            probes.push(Planned {
                peer,
                kind: Kind::Ladder,
                size,
                to: t.overlay,
            });
            size -= LADDER_STEP;
        }
    }
    probes
}

/// One round: send, collect answers until every probe is answered or the round's time is up,
/// record and log.
fn round(
    sockets: &Sockets,
    numbering: &mut Numbering,
    round_no: u64,
    status: &NodeStatus,
    board: &StatusBoard,
    interval: Duration,
) {
    let Some(backend) = &status.backend else {
        return;
    };
    // host-gw has no overlay device to answer at <subnet>.0.
    if backend.kind == "host-gw" {
        return;
    }
    let mtu = backend.mtu;
    let previous = board.peer_health();
    let peers = probe_targets(status);
    let measuring = |name: &str| previous.get(name).is_some_and(still_to_measure);
    let confirming = |name: &str| previous.get(name).and_then(to_confirm);
    let mut answers: Vec<Answers> = peers.iter().map(|_| Answers::default()).collect();
    let mut sent: HashMap<u32, Sent> = HashMap::new();
    for probe in plan(&peers, mtu, round_no, measuring, confirming) {
        if probe.kind == Kind::Ladder {
            let a = &mut answers[probe.peer];
            a.ladder_planned += 1;
            a.ladder_smallest = Some(a.ladder_smallest.map_or(probe.size, |m| m.min(probe.size)));
        }
        let (n, id, seq) = numbering.take();
        let echo = Echo {
            id,
            seq,
            token: rand::random(),
        };
        // Never wait for buffer space: probes queued behind a dead peer's neighbour entry
        // must not hold up the round; a probe that cannot be queued counts as unanswered.
        if let Some(len) = sockets.send(echo, probe.size, probe.to) {
            match probe.kind {
                Kind::Ladder => answers[probe.peer].ladder_sent += 1,
                Kind::Confirm => answers[probe.peer].confirm_sent = true,
                _ => {}
            }
            let at = Instant::now();
            sent.insert(
                n,
                Sent {
                    probe,
                    at,
                    echo,
                    len,
                },
            );
        }
    }
    let deadline =
        Instant::now() + (interval / 2).clamp(Duration::from_millis(200), Duration::from_secs(2));
    let mut buf = vec![MaybeUninit::<u8>::uninit(); 65_536];
    while !sent.is_empty() {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        for (src, echo, len) in sockets.replies(left, &mut buf) {
            let n = numbering.number(echo.id, echo.seq);
            if !answers_probe(sent.get(&n), src, echo, len) {
                continue;
            }
            let Some(Sent { probe, at, .. }) = sent.remove(&n) else {
                continue;
            };
            let a = &mut answers[probe.peer];
            match probe.kind {
                Kind::Small => a.small_rtt = Some(at.elapsed()),
                Kind::Large => a.large = true,
                Kind::Underlay => a.underlay = true,
                Kind::Ladder => a.ladder_best = a.ladder_best.max(Some(probe.size)),
                Kind::Confirm => a.confirm_answered = true,
            }
        }
    }
    let now = unix_seconds(SystemTime::now());
    let mut health = BTreeMap::new();
    for (t, a) in peers.iter().zip(answers) {
        let was = previous.get(&t.name);
        let h = judge(&a, was, mtu, now);
        let changed = was.is_none_or(|w| {
            w.diagnosis != h.diagnosis
                || w.path_mtu != h.path_mtu
                || w.path_mtu_below != h.path_mtu_below
        });
        if changed {
            let line = explain(&t.name, t.underlay, &backend.kind, mtu, &h);
            if h.diagnosis == Diagnosis::Healthy {
                info!(peer = %t.name, "{line}");
            } else {
                warn!(peer = %t.name, "{line}");
            }
        }
        health.insert(t.name.clone(), h);
    }
    board.set_peer_health(health);
    drop((peers, previous, sent, buf));
    // A round at ten thousand dual-stack peers allocates megabytes (the status copy, the
    // probes and their bookkeeping) that glibc would otherwise keep mapped between rounds.
    crate::daemon::release_freed_memory();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_probed_over_each_family_they_have() {
        let peer = |subnet: &str, subnet6: Option<&str>, ip: &str, ip6: Option<&str>| {
            crate::status::PeerStatus {
                subnet: subnet.parse().unwrap(),
                subnet6: subnet6.map(|s| s.parse().unwrap()),
                public_ip: ip.parse().unwrap(),
                public_ipv6: ip6.map(|s| s.parse().unwrap()),
                backend_type: "vxlan".into(),
                vtep_mac: None,
                state: crate::status::PeerState::Programmed,
                health: None,
                health6: None,
            }
        };
        let status = NodeStatus {
            peers: vec![
                peer(
                    "0.0.0.0/0",
                    Some("fd00:10:244:2::/64"),
                    "0.0.0.0",
                    Some("2001:db8::2"),
                ),
                peer(
                    "10.244.4.0/24",
                    Some("fd00:10:244:4::/64"),
                    "192.0.2.4",
                    Some("2001:db8::4"),
                ),
                // No PublicIPv6 to check the underlay with: not probed.
                peer("0.0.0.0/0", Some("fd00:10:244:5::/64"), "0.0.0.0", None),
                peer(
                    "10.244.6.0/24",
                    Some("fd00:10:244:6::/64"),
                    "192.0.2.6",
                    None,
                ),
            ],
            ..NodeStatus::default()
        };
        let target = |name: &str, overlay: &str, underlay: &str| Target {
            name: name.to_string(),
            overlay: overlay.parse().unwrap(),
            underlay: underlay.parse().unwrap(),
        };
        assert_eq!(
            probe_targets(&status),
            [
                target("fd00:10:244:2::/64", "fd00:10:244:2::", "2001:db8::2"),
                target("10.244.4.0/24", "10.244.4.0", "192.0.2.4"),
                target("fd00:10:244:4::/64", "fd00:10:244:4::", "2001:db8::4"),
                target("10.244.6.0/24", "10.244.6.0", "192.0.2.6"),
                // IPv6 pods over the IPv4 underlay: the underlay is checked over IPv4.
                target("fd00:10:244:6::/64", "fd00:10:244:6::", "192.0.2.6"),
            ]
        );
        // Their health is shown under the same names.
        let keys: Vec<(String, Option<String>)> = status
            .peers
            .iter()
            .map(|p| (p.health_key(), p.health6_key()))
            .collect();
        let key = |k: &str, k6: Option<&str>| (k.to_string(), k6.map(str::to_string));
        assert_eq!(
            keys,
            [
                key("fd00:10:244:2::/64", None),
                key("10.244.4.0/24", Some("fd00:10:244:4::/64")),
                key("fd00:10:244:5::/64", None),
                key("10.244.6.0/24", Some("fd00:10:244:6::/64")),
            ]
        );
    }

    const ECHO: Echo = Echo {
        id: 0x1234,
        seq: 7,
        token: 0x0102_0304_0506_0708,
    };

    #[test]
    fn icmpv6_echo_requests_fill_the_size_asked_and_replies_parse_back() {
        let icmp = echo_request6(ECHO, 1430);
        assert_eq!(
            icmp.len(),
            1390,
            "1430 bytes of IPv6 less its 40-byte header"
        );
        assert_eq!(icmp[0], 128);
        let mut reply = icmp.clone();
        reply[0] = 129;
        assert_eq!(parse_reply6(&reply), Some((ECHO, 1390)));
        assert_eq!(parse_reply6(&icmp), None, "a request is no reply");
        assert_eq!(parse_reply6(&reply[..15]), None, "no room for the token");
    }

    #[test]
    fn patterns_map_to_classic_failures() {
        assert_eq!(diagnose(true, true, true), Diagnosis::Healthy);
        assert_eq!(diagnose(true, true, false), Diagnosis::Healthy);
        assert_eq!(diagnose(true, false, true), Diagnosis::MtuBlackHole);
        assert_eq!(
            diagnose(false, false, true),
            Diagnosis::EncapsulationDropped
        );
        assert_eq!(diagnose(false, false, false), Diagnosis::PeerDown);
    }

    #[test]
    fn echo_requests_carry_a_valid_checksum_and_parse_back() {
        let icmp = echo_request(ECHO, 1450);
        assert_eq!(icmp.len(), 1430);
        assert_eq!(internet_checksum(&icmp), 0, "checksum does not verify");
        assert_eq!(
            icmp[8..16],
            ECHO.token.to_be_bytes(),
            "the token leads the payload"
        );
        assert_eq!(echo_request(ECHO, 84).len(), 64, "ping's default size");
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 10, 244, 2, 0, 10, 244, 1, 0,
        ];
        let mut reply = icmp.clone();
        reply[0] = 0;
        ip.extend_from_slice(&reply);
        assert_eq!(
            parse_reply(&ip),
            Some((Ipv4Addr::new(10, 244, 2, 0), ECHO, 1430))
        );
        ip[20] = 8;
        assert_eq!(parse_reply(&ip), None, "a request is no reply");
        assert_eq!(parse_reply(&ip[..35]), None, "no room for the token");
        ip[0] = 0x41;
        assert_eq!(parse_reply(&ip), None, "a header length under 20 bytes");
    }

    #[test]
    fn a_reply_answers_only_the_probe_whose_token_and_length_it_echoes() {
        let peer: IpAddr = "10.244.2.0".parse().unwrap();
        let sent = Sent {
            probe: Planned {
                peer: 0,
                kind: Kind::Large,
                size: 1450,
                to: peer,
            },
            at: Instant::now(),
            echo: ECHO,
            len: 1430,
        };
        let answers =
            |src: IpAddr, echo: Echo, len: usize| answers_probe(Some(&sent), src, echo, len);
        assert!(answers(peer, ECHO, 1430), "the true reply");
        // Forged by someone who guessed id and sequence but never saw the request.
        let forged = Echo {
            token: 0x0807_0605_0403_0201,
            ..ECHO
        };
        assert!(!answers(peer, forged, 1430), "a guessed token");
        assert!(
            !answers(peer, ECHO, 64),
            "a small reply is no answer to a full-MTU probe"
        );
        assert!(
            !answers("10.244.3.0".parse().unwrap(), ECHO, 1430),
            "another source"
        );
        assert!(!answers(peer, Echo { id: 1, ..ECHO }, 1430), "another id");
        assert!(
            !answers(peer, Echo { seq: 8, ..ECHO }, 1430),
            "another sequence number"
        );
        assert!(
            !answers_probe(None, peer, ECHO, 1430),
            "no probe outstanding"
        );
    }

    #[test]
    fn probe_numbers_stay_distinct_beyond_65536_probes_in_a_round() {
        let mut numbering = Numbering {
            base: 0xfff0,
            next: 0,
        };
        let mut seen = std::collections::HashSet::new();
        for expected in 0..200_000u32 {
            let (n, id, seq) = numbering.take();
            assert_eq!(n, expected);
            assert!(seen.insert((id, seq)), "probe {n} reuses id {id} seq {seq}");
            assert_eq!(numbering.number(id, seq), n, "a reply names its probe");
        }
    }

    fn targets(n: usize) -> Vec<Target> {
        (0..n)
            .map(|i| Target {
                name: format!("10.244.{}.{}/32", i / 256, i % 256),
                overlay: IpAddr::V4(Ipv4Addr::new(10, 244, (i / 256) as u8, (i % 256) as u8)),
                underlay: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            })
            .collect()
    }

    #[test]
    fn a_round_ladders_a_bounded_number_of_black_holes_and_every_one_in_turn() {
        // Three black holes: all measured at once, one ladder each, 1440 down to 580.
        let few = targets(5);
        let probes = plan(&few, 1450, 0, |name| name < "10.244.0.3", |_| None);
        let ladders: Vec<&Planned> = probes.iter().filter(|p| p.kind == Kind::Ladder).collect();
        assert_eq!(probes.len() - ladders.len(), 15, "three probes per peer");
        assert_eq!(ladders.len(), 3 * 87);
        assert_eq!(ladders.first().map(|p| (p.peer, p.size)), Some((0, 1440)));
        assert_eq!(ladders.last().map(|p| (p.peer, p.size)), Some((2, 580)));
        assert!(plan(&few, 1450, 0, |_| false, |_| None)
            .iter()
            .all(|p| p.kind != Kind::Ladder));

        // A cluster-wide MTU mistake: every one of a thousand peers a black hole. A round
        // sends at most LADDERS_PER_ROUND ladders, and every peer gets its own in turn.
        let many = targets(1000);
        let mut laddered = std::collections::BTreeSet::new();
        let rounds = 1000usize.div_ceil(LADDERS_PER_ROUND) as u64;
        for round_no in 0..rounds {
            let probes = plan(&many, 1450, round_no, |_| true, |_| None);
            let peers: std::collections::BTreeSet<usize> = probes
                .iter()
                .filter(|p| p.kind == Kind::Ladder)
                .map(|p| p.peer)
                .collect();
            assert_eq!(peers.len(), LADDERS_PER_ROUND, "round {round_no}");
            assert_eq!(probes.len(), 3000 + LADDERS_PER_ROUND * 87);
            laddered.extend(peers);
        }
        assert_eq!(
            laddered.len(),
            1000,
            "every black hole measured within {rounds} rounds"
        );
    }

    #[test]
    fn a_ladder_nothing_answers_puts_the_path_mtu_below_it_and_is_not_run_again() {
        let black_hole = |ladder: Option<(u32, u32, u32)>, best: Option<u32>| Answers {
            small_rtt: Some(Duration::from_micros(300)),
            large: false,
            underlay: true,
            ladder_best: best,
            ladder_planned: ladder.map_or(0, |l| l.0),
            ladder_sent: ladder.map_or(0, |l| l.1),
            ladder_smallest: ladder.map(|l| l.2),
            ..Answers::default()
        };
        // First round: a black hole, not yet measured, so the next round ladders it.
        let first = judge(&black_hole(None, None), None, 1450, 1);
        assert_eq!((first.path_mtu, first.path_mtu_below), (None, None));
        assert!(still_to_measure(&first));
        // Its ladder (1440 down to 580) was sent whole and nothing came back: suspected, not
        // yet said (every probe of one round may have been lost to congestion).
        let silent = judge(
            &black_hole(Some((87, 87, 580)), None),
            Some(&first),
            1450,
            2,
        );
        assert_eq!(
            (silent.path_mtu, silent.path_mtu_below),
            (None, None),
            "one silent ladder is not proof"
        );
        assert!(!still_to_measure(&silent), "not laddered again at once");
        assert_eq!(to_confirm(&silent), Some(580), "580 probed once more");
        // 580 answers the round after: the ladder was lost, not too large; measure again.
        let answered = Answers {
            confirm_sent: true,
            confirm_answered: true,
            ..black_hole(None, None)
        };
        let lost = judge(&answered, Some(&silent), 1450, 3);
        assert_eq!((lost.path_mtu, lost.path_mtu_below), (None, None));
        assert!(still_to_measure(&lost));
        // A round whose probe of 580 the socket did not take keeps the suspicion.
        let unsent = judge(&black_hole(None, None), Some(&silent), 1450, 3);
        assert_eq!(to_confirm(&unsent), Some(580));
        assert_eq!(unsent.path_mtu_below, None);
        // 580 unanswered again: the path MTU is below the ladder.
        let still = Answers {
            confirm_sent: true,
            ..black_hole(None, None)
        };
        let laddered = judge(&still, Some(&unsent), 1450, 4);
        assert_eq!(
            (laddered.path_mtu, laddered.path_mtu_below),
            (None, Some(580))
        );
        assert!(!still_to_measure(&laddered), "not laddered again");
        let targets = targets(3);
        let healths = BTreeMap::from([(targets[1].name.clone(), laddered.clone())]);
        let probes = plan(
            &targets,
            1450,
            0,
            |name| healths.get(name).is_some_and(still_to_measure),
            |name| healths.get(name).and_then(to_confirm),
        );
        assert!(
            probes.iter().all(|p| p.kind != Kind::Ladder),
            "no ladder planned"
        );
        let confirms: Vec<(usize, u32)> = probes
            .iter()
            .filter(|p| p.kind == Kind::Confirm)
            .map(|p| (p.peer, p.size))
            .collect();
        assert_eq!(
            confirms,
            [(1, 580)],
            "one probe at the ladder's smallest size"
        );
        let line = explain(
            "10.244.2.0/24",
            "192.0.2.12".parse().unwrap(),
            "vxlan",
            1450,
            &laddered,
        );
        assert!(
            line.contains("none of 580 to 1450 bytes") && line.contains("below 580"),
            "{line}"
        );
        // Kept while the peer stays a black hole and 580 still fails (or was not sent).
        let later = judge(&still, Some(&laddered), 1450, 3);
        assert_eq!(later.path_mtu_below, Some(580));
        assert_eq!(
            judge(&black_hole(None, None), Some(&later), 1450, 4).path_mtu_below,
            Some(580)
        );
        // 580 passes now: the path changed, measure again.
        let grew = judge(
            &Answers {
                confirm_answered: true,
                ..still
            },
            Some(&later),
            1450,
            4,
        );
        assert_eq!((grew.path_mtu, grew.path_mtu_below), (None, None));
        assert!(still_to_measure(&grew));
        // Gone once it heals.
        let healed = judge(
            &Answers {
                large: true,
                ..black_hole(None, None)
            },
            Some(&later),
            1450,
            4,
        );
        assert_eq!(
            (healed.diagnosis, healed.path_mtu, healed.path_mtu_below),
            (Diagnosis::Healthy, Some(1450), None)
        );
        assert_eq!(to_confirm(&healed), None);
        // A ladder the socket did not take whole proves nothing: measured again.
        let partial = judge(
            &black_hole(Some((87, 40, 580)), None),
            Some(&first),
            1450,
            2,
        );
        assert_eq!((partial.path_mtu, partial.path_mtu_below), (None, None));
        assert!(still_to_measure(&partial));
    }

    #[test]
    fn a_named_path_mtu_is_kept_while_it_passes_and_measured_again_when_it_stops() {
        let black_hole = Answers {
            small_rtt: Some(Duration::from_micros(300)),
            underlay: true,
            ..Answers::default()
        };
        let first = judge(&black_hole, None, 1450, 1);
        let named = judge(
            &Answers {
                ladder_best: Some(1350),
                ladder_planned: 87,
                ladder_sent: 87,
                ladder_smallest: Some(580),
                ..black_hole
            },
            Some(&first),
            1450,
            2,
        );
        assert_eq!((named.path_mtu, named.path_mtu_below), (Some(1350), None));
        assert!(!still_to_measure(&named));
        assert_eq!(to_confirm(&named), Some(1350));
        // 1350 still passes: kept, no ladder.
        let passes = Answers {
            confirm_sent: true,
            confirm_answered: true,
            ..black_hole
        };
        let kept = judge(&passes, Some(&named), 1450, 3);
        assert_eq!(kept.path_mtu, Some(1350));
        // One confirming probe lost (congestion, say): no proof, the size is kept.
        let lost = Answers {
            confirm_sent: true,
            ..black_hole
        };
        let doubted = judge(&lost, Some(&kept), 1450, 4);
        assert_eq!(doubted.path_mtu, Some(1350), "one lost probe is not proof");
        assert!(!still_to_measure(&doubted));
        // ... and an answer the round after clears the doubt.
        let cleared = judge(&passes, Some(&doubted), 1450, 5);
        assert_eq!(
            judge(&lost, Some(&cleared), 1450, 6).path_mtu,
            Some(1350),
            "the misses are counted in a row"
        );
        // The path shrank under it (1350 lost twice in a row): the advice "lower to 1350"
        // would be wrong, so the size is forgotten and the next round ladders the peer again.
        let stale = judge(&lost, Some(&doubted), 1450, 5);
        assert_eq!((stale.path_mtu, stale.path_mtu_below), (None, None));
        assert!(still_to_measure(&stale));
        // A confirming probe the socket did not take proves nothing, and counts for nothing.
        let unsent = judge(&black_hole, Some(&doubted), 1450, 5);
        assert_eq!(unsent.path_mtu, Some(1350));
        assert_eq!(
            judge(&lost, Some(&unsent), 1450, 6).path_mtu,
            None,
            "the miss before the unsent round still counts"
        );
    }

    #[test]
    fn metrics_and_explanations() {
        let mut health = BTreeMap::new();
        health.insert(
            "10.244.2.0/24".to_string(),
            PeerHealth {
                reachable: true,
                rtt_seconds: Some(0.0004),
                path_mtu: Some(1350),
                path_mtu_below: None,
                diagnosis: Diagnosis::MtuBlackHole,
                at_unix: 0,
                confirm_misses: 0,
                pending_below: None,
            },
        );
        #[derive(Debug)]
        struct Fixed(BTreeMap<String, PeerHealth>);
        impl Collector for Fixed {
            fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
                encode_peer_health(&self.0, encoder)
            }
        }
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(Fixed(health.clone())));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("weft_peer_reachable{peer=\"10.244.2.0/24\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("weft_peer_rtt_seconds{peer=\"10.244.2.0/24\"} 0.0004\n"),
            "{text}"
        );
        assert!(
            text.contains("weft_peer_path_mtu_bytes{peer=\"10.244.2.0/24\"} 1350\n"),
            "{text}"
        );
        let h = &health["10.244.2.0/24"];
        let line = explain(
            "10.244.2.0/24",
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 12)),
            "vxlan",
            1450,
            h,
        );
        assert!(
            line.starts_with("MTU black hole to peer 10.244.2.0/24 (192.0.2.12)"),
            "{line}"
        );
        assert!(line.contains("1350 bytes pass"), "{line}");
        let dropped = PeerHealth {
            diagnosis: Diagnosis::EncapsulationDropped,
            ..h.clone()
        };
        let line = explain(
            "10.244.2.0/24",
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 12)),
            "vxlan",
            1450,
            &dropped,
        );
        assert!(
            line.contains("UDP 8472") && line.contains("tx-checksum-ip-generic"),
            "{line}"
        );
        // WireGuard listens for IPv6 peers on ListenPortV6.
        let line = explain(
            "fd00:10:244:2::/64",
            "2001:db8::12".parse().unwrap(),
            "wireguard",
            1420,
            &dropped,
        );
        assert!(
            line.starts_with("encapsulation dropped to peer fd00:10:244:2::/64: the underlay reaches 2001:db8::12 but wireguard packets (UDP 51821)"),
            "{line}"
        );
    }
}
