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
//! The prober is a thread of its own with one raw ICMP socket: a round costs three small
//! packets per peer (the ladder only while a black hole is being measured).

use std::collections::BTreeMap;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd as _;
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
/// The smallest size the black-hole ladder tries (IPv4's minimum reassembly size).
const LADDER_FROM: u32 = 576;
/// Step between the ladder's sizes.
const LADDER_STEP: u32 = 10;

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
    /// What the pattern means.
    pub diagnosis: Diagnosis,
    /// When this was measured, Unix seconds.
    pub at_unix: u64,
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
pub fn explain(peer: &str, public_ip: Ipv4Addr, backend: &str, mtu: u32, h: &PeerHealth) -> String {
    let port = match backend {
        "udp" => crate::config::DEFAULT_UDP_PORT,
        "wireguard" => crate::config::DEFAULT_WIREGUARD_PORT,
        _ => crate::config::DEFAULT_VXLAN_PORT,
    };
    match h.diagnosis {
        Diagnosis::Healthy => format!("peer {peer} ({public_ip}) reachable over the overlay at full MTU {mtu}"),
        Diagnosis::MtuBlackHole => match h.path_mtu {
            Some(works) => format!(
                "MTU black hole to peer {peer} ({public_ip}): {mtu}-byte packets with DF are lost on the way, {works} bytes pass; lower the backend MTU to {works} or fix the underlay path's MTU"
            ),
            None => format!(
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

/// One echo request: ICMP type 8 with `id`, `seq` and a payload filling `size` bytes of IP.
fn echo_request(id: u16, seq: u16, size: u32) -> Vec<u8> {
    let len = size.saturating_sub(20).max(8) as usize;
    let mut icmp = vec![0u8; len];
    icmp[0] = 8;
    icmp[4..6].copy_from_slice(&id.to_be_bytes());
    icmp[6..8].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in icmp[8..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let sum = internet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    icmp
}

/// `(source, id, seq)` of an echo reply in a raw IPv4 packet.
fn parse_reply(pkt: &[u8]) -> Option<(Ipv4Addr, u16, u16)> {
    let ihl = usize::from(pkt.first()? & 0x0f) * 4;
    if pkt.len() < ihl + 8 || pkt.get(9) != Some(&1) {
        return None;
    }
    let icmp = &pkt[ihl..];
    if icmp[0] != 0 {
        return None;
    }
    let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
    Some((
        src,
        u16::from_be_bytes([icmp[4], icmp[5]]),
        u16::from_be_bytes([icmp[6], icmp[7]]),
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Small,
    Large,
    Underlay,
    Ladder,
}

struct Sent {
    peer: usize,
    kind: Kind,
    size: u32,
    to: Ipv4Addr,
    at: Instant,
}

#[derive(Default)]
struct Answers {
    small_rtt: Option<Duration>,
    large: bool,
    underlay: bool,
    ladder_best: Option<u32>,
}

/// Starts the prober thread: a round every `interval` once the node is ready.
pub fn spawn(board: Arc<StatusBoard>, interval: Duration) -> std::io::Result<()> {
    let socket = Socket::new(
        Domain::IPV4,
        Type::from(libc::SOCK_RAW),
        Some(Protocol::ICMPV4),
    )?;
    // DF on every probe and no fragmentation by the sender, whatever the kernel learnt.
    // Neither socket2 nor nix offers IP_MTU_DISCOVER: one raw setsockopt.
    let probe = libc::IP_PMTUDISC_PROBE;
    // SAFETY: a valid socket, an int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            std::ptr::from_ref(&probe).cast(),
            std::mem::size_of_val(&probe) as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // A round queues a few probes per peer, and those to a dead peer wait in its ARP queue,
    // charged to this socket: room for a round at a thousand peers, beyond wmem_max (root may).
    if let Err(e) =
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::SndBufForce, &(4 << 20))
    {
        warn!(error = %e, "enlarge the probe socket's send buffer");
    }
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let id = rand::random::<u16>();
    std::thread::Builder::new()
        .name("weft-probe".into())
        .spawn(move || {
            let mut seq: u16 = 0;
            loop {
                std::thread::sleep(interval);
                let status = board.snapshot();
                if status.ready {
                    round(&socket, id, &mut seq, &status, &board, interval);
                }
            }
        })?;
    Ok(())
}

/// The peers a round probes: (name, overlay address `<subnet>.0`, public IP). The probes are
/// IPv4: an IPv6-only peer (IPv4 part `0.0.0.0/0`) has no `<subnet>.0` to ask.
fn probe_targets(status: &NodeStatus) -> Vec<(String, Ipv4Addr, Ipv4Addr)> {
    status
        .peers
        .iter()
        .filter(|p| p.subnet.prefix() != 0)
        .map(|p| (p.subnet.to_string(), p.subnet.network(), p.public_ip))
        .collect()
}

/// One round: send, collect answers until every probe is answered or the round's time is up,
/// record and log.
fn round(
    socket: &Socket,
    id: u16,
    seq: &mut u16,
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
    let mut sent: BTreeMap<u16, Sent> = BTreeMap::new();
    let mut send = |peer: usize, kind: Kind, size: u32, to: Ipv4Addr, seq: &mut u16| {
        *seq = seq.wrapping_add(1);
        let pkt = echo_request(id, *seq, size);
        let addr = SockAddr::from(SocketAddrV4::new(to, 0));
        // Never wait for buffer space: probes queued behind a dead peer's ARP must not hold
        // up the round; a probe that cannot be queued counts as unanswered.
        if socket
            .send_to_with_flags(&pkt, &addr, libc::MSG_DONTWAIT)
            .is_ok()
        {
            sent.insert(
                *seq,
                Sent {
                    peer,
                    kind,
                    size,
                    to,
                    at: Instant::now(),
                },
            );
        }
    };
    for (i, (subnet, overlay, underlay)) in peers.iter().enumerate() {
        send(i, Kind::Small, SMALL, *overlay, seq);
        send(i, Kind::Large, mtu, *overlay, seq);
        send(i, Kind::Underlay, SMALL, *underlay, seq);
        let measuring = previous
            .get(subnet)
            .is_some_and(|h| h.diagnosis == Diagnosis::MtuBlackHole && h.path_mtu.is_none());
        if measuring {
            // Down from the device MTU, so a path MTU a multiple of the step below it is
            // named exactly.
            let mut size = mtu.saturating_sub(LADDER_STEP);
            while size >= LADDER_FROM {
                send(i, Kind::Ladder, size, *overlay, seq);
                size -= LADDER_STEP;
            }
        }
    }
    let mut answers: Vec<Answers> = peers.iter().map(|_| Answers::default()).collect();
    let deadline =
        Instant::now() + (interval / 2).clamp(Duration::from_millis(200), Duration::from_secs(2));
    let mut buf = vec![MaybeUninit::<u8>::uninit(); 65_536];
    while !sent.is_empty() && Instant::now() < deadline {
        let Ok((len, _)) = socket.recv_from(&mut buf) else {
            continue;
        };
        // SAFETY: recv_from initialised the first `len` bytes.
        let pkt: Vec<u8> = buf[..len]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        let Some((src, reply_id, reply_seq)) = parse_reply(&pkt) else {
            continue;
        };
        if reply_id != id {
            continue;
        }
        let Some(probe) = sent.remove(&reply_seq) else {
            continue;
        };
        if probe.to != src {
            continue;
        }
        let a = &mut answers[probe.peer];
        match probe.kind {
            Kind::Small => a.small_rtt = Some(probe.at.elapsed()),
            Kind::Large => a.large = true,
            Kind::Underlay => a.underlay = true,
            Kind::Ladder => a.ladder_best = a.ladder_best.max(Some(probe.size)),
        }
    }
    let now = unix_seconds(SystemTime::now());
    let mut health = BTreeMap::new();
    for ((subnet, _, public_ip), a) in peers.iter().zip(answers) {
        let diagnosis = diagnose(a.small_rtt.is_some(), a.large, a.underlay);
        let was = previous.get(subnet);
        let path_mtu = match diagnosis {
            Diagnosis::Healthy => Some(mtu),
            Diagnosis::MtuBlackHole => a.ladder_best.or_else(|| {
                was.and_then(|h| h.path_mtu)
                    .filter(|_| was.is_some_and(|h| h.diagnosis == diagnosis))
            }),
            _ => None,
        };
        let h = PeerHealth {
            reachable: a.small_rtt.is_some(),
            rtt_seconds: a.small_rtt.map(|d| d.as_secs_f64()),
            path_mtu,
            diagnosis,
            at_unix: now,
        };
        let changed = was.is_none_or(|w| w.diagnosis != h.diagnosis || w.path_mtu != h.path_mtu);
        if changed {
            let line = explain(subnet, *public_ip, &backend.kind, mtu, &h);
            if h.diagnosis == Diagnosis::Healthy {
                info!(peer = %subnet, "{line}");
            } else {
                warn!(peer = %subnet, "{line}");
            }
        }
        health.insert(subnet.clone(), h);
    }
    board.set_peer_health(health);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_only_peers_are_not_probed_over_ipv4() {
        let peer = |subnet: &str, subnet6: Option<&str>, ip: &str| crate::status::PeerStatus {
            subnet: subnet.parse().unwrap(),
            subnet6: subnet6.map(|s| s.parse().unwrap()),
            public_ip: ip.parse().unwrap(),
            backend_type: "vxlan".into(),
            vtep_mac: None,
            state: crate::status::PeerState::Programmed,
            health: None,
        };
        let status = NodeStatus {
            peers: vec![
                peer("0.0.0.0/0", Some("fd00:10:244:2::/64"), "0.0.0.0"),
                peer("10.244.4.0/24", Some("fd00:10:244:4::/64"), "192.0.2.4"),
                peer("0.0.0.0/0", Some("fd00:10:244:5::/64"), "0.0.0.0"),
            ],
            ..NodeStatus::default()
        };
        assert_eq!(
            probe_targets(&status),
            [(
                "10.244.4.0/24".to_string(),
                Ipv4Addr::new(10, 244, 4, 0),
                Ipv4Addr::new(192, 0, 2, 4)
            )]
        );
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
        let icmp = echo_request(0x1234, 7, 1450);
        assert_eq!(icmp.len(), 1430);
        assert_eq!(internet_checksum(&icmp), 0, "checksum does not verify");
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 10, 244, 2, 0, 10, 244, 1, 0,
        ];
        let mut reply = icmp.clone();
        reply[0] = 0;
        ip.extend_from_slice(&reply);
        assert_eq!(
            parse_reply(&ip),
            Some((Ipv4Addr::new(10, 244, 2, 0), 0x1234, 7))
        );
        ip[20] = 8;
        assert_eq!(parse_reply(&ip), None, "a request is no reply");
        assert_eq!(parse_reply(&ip[..24]), None);
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
                diagnosis: Diagnosis::MtuBlackHole,
                at_unix: 0,
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
            Ipv4Addr::new(192, 0, 2, 12),
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
            Ipv4Addr::new(192, 0, 2, 12),
            "vxlan",
            1450,
            &dropped,
        );
        assert!(
            line.contains("UDP 8472") && line.contains("tx-checksum-ip-generic"),
            "{line}"
        );
    }
}
