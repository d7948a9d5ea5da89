//! Nexthop objects (`ip nexthop`): the messages that add, delete and list them, built and read
//! by hand because netlink-packet-route 0.34 knows the route attribute `RTA_NH_ID` but not the
//! `RTM_*NEXTHOP` messages (linux/nexthop.h: `struct nhmsg` and the `NHA_*` attributes).
//!
//! A route through a nexthop object (`ip route add X/24 nhid N`) shares the object's
//! `fib_info`; a route with a gateway of its own needs its own, and the kernel's fib_info hash
//! ignores the gateway, so ten thousand such routes land in one hash chain (see docs/scale.md).

use std::collections::BTreeSet;
use std::io;
use std::net::Ipv4Addr;

use rtnetlink::packet_core::{NLM_F_DUMP, NLM_F_REQUEST};

use super::{BatchRequest, NetlinkError, CREATE_REPLACE, DELETE, WEFT_ROUTE_PROTOCOL};

const RTM_NEWNEXTHOP: u16 = 104;
const RTM_DELNEXTHOP: u16 = 105;
const RTM_GETNEXTHOP: u16 = 106;
const NHA_ID: u16 = 1;
const NHA_OIF: u16 = 5;
const NHA_GATEWAY: u16 = 6;
/// `RTNH_F_ONLINK` (linux/rtnetlink.h), in `nhmsg.nh_flags`.
const RTNH_F_ONLINK: u32 = 4;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
/// `struct nhmsg`: family, scope, protocol, reserved (one byte each), flags (u32).
const NHMSG_LEN: usize = 8;

/// An IPv4 nexthop object with one gateway on one device, as weft adds them (protocol
/// [`WEFT_ROUTE_PROTOCOL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nexthop {
    /// The object's id (`nhid`), never 0.
    pub id: u32,
    /// The gateway.
    pub gateway: Ipv4Addr,
    /// Output device index.
    pub oif: u32,
    /// Whether the gateway is declared on-link (VXLAN peers: `X.0` on `flannel.<VNI>`).
    pub onlink: bool,
}

impl Nexthop {
    /// `ip nexthop` style text for logs and errors, without the device.
    pub fn describe(&self) -> String {
        let onlink = if self.onlink { " onlink" } else { "" };
        format!("id {} via {}{onlink}", self.id, self.gateway)
    }
}

/// The nexthop objects the kernel holds: weft's (protocol [`WEFT_ROUTE_PROTOCOL`]) and the ids
/// of everyone else's, which weft leaves alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NexthopTable {
    /// weft's nexthops; one of a shape weft never adds (a group, a blackhole, IPv6) has
    /// gateway `0.0.0.0` and device 0, so that no desired nexthop equals it.
    pub weft: Vec<Nexthop>,
    /// The ids of the nexthops of other protocols.
    pub foreign: BTreeSet<u32>,
}

/// Appends one netlink attribute, padded to four bytes.
fn push_attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    buf.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// A whole netlink message: header (sequence number 0, set when sent), `nhmsg`, attributes.
fn message(kind: u16, flags: u16, nhmsg: [u8; NHMSG_LEN], attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut buf = vec![0; NLMSG_HDRLEN];
    buf[4..6].copy_from_slice(&kind.to_ne_bytes());
    buf[6..8].copy_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&nhmsg);
    for (kind, payload) in attrs {
        push_attr(&mut buf, *kind, payload);
    }
    let len = buf.len() as u32;
    buf[0..4].copy_from_slice(&len.to_ne_bytes());
    buf
}

/// `struct nhmsg` of the given family and protocol and flags, scope 0 (the kernel refuses any
/// other).
fn nhmsg(family: u8, protocol: u8, flags: u32) -> [u8; NHMSG_LEN] {
    let f = flags.to_ne_bytes();
    [family, 0, protocol, 0, f[0], f[1], f[2], f[3]]
}

fn new_nexthop_bytes(nh: &Nexthop) -> Vec<u8> {
    let flags = if nh.onlink { RTNH_F_ONLINK } else { 0 };
    message(
        RTM_NEWNEXTHOP,
        CREATE_REPLACE,
        nhmsg(libc::AF_INET as u8, WEFT_ROUTE_PROTOCOL, flags),
        &[
            (NHA_ID, &nh.id.to_ne_bytes()),
            (NHA_OIF, &nh.oif.to_ne_bytes()),
            (NHA_GATEWAY, &nh.gateway.octets()),
        ],
    )
}

fn del_nexthop_bytes(id: u32) -> Vec<u8> {
    // The kernel wants a bare header beside NHA_ID in a delete.
    message(
        RTM_DELNEXTHOP,
        DELETE,
        nhmsg(libc::AF_UNSPEC as u8, 0, 0),
        &[(NHA_ID, &id.to_ne_bytes())],
    )
}

impl BatchRequest {
    /// Adds or replaces nexthop object `nh` (routes through it follow a replace); `dev` names
    /// the device in errors.
    pub fn replace_nexthop(nh: &Nexthop, dev: &str) -> Self {
        BatchRequest::from_bytes(
            new_nexthop_bytes(nh),
            format!("add nexthop {} dev {dev}", nh.describe()),
            false,
        )
    }

    /// Deletes nexthop object `id`, and with it every route through it; one already gone
    /// counts as deleted.
    pub fn del_nexthop(id: u32) -> Self {
        BatchRequest::from_bytes(
            del_nexthop_bytes(id),
            format!("delete nexthop id {id}"),
            true,
        )
    }
}

/// One nexthop of a dump, as the kernel describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DumpedNexthop {
    family: u8,
    protocol: u8,
    flags: u32,
    id: Option<u32>,
    oif: Option<u32>,
    gateway: Option<Ipv4Addr>,
}

fn u32_at(b: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(..4)?.try_into().ok()?))
}

fn u16_at(b: &[u8]) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(..2)?.try_into().ok()?))
}

/// Reads the body (after the netlink header) of an `RTM_NEWNEXTHOP` message.
fn parse_nexthop(body: &[u8]) -> Option<DumpedNexthop> {
    let head = body.get(..NHMSG_LEN)?;
    let mut nh = DumpedNexthop {
        family: head[0],
        protocol: head[2],
        flags: u32_at(&head[4..])?,
        id: None,
        oif: None,
        gateway: None,
    };
    let mut rest = &body[NHMSG_LEN..];
    while rest.len() >= 4 {
        let len = usize::from(u16_at(rest)?);
        let kind = u16_at(&rest[2..])? & 0x3fff;
        let payload = rest.get(4..len)?;
        match kind {
            NHA_ID => nh.id = u32_at(payload),
            NHA_OIF => nh.oif = u32_at(payload),
            NHA_GATEWAY if payload.len() == 4 => {
                nh.gateway = Some(Ipv4Addr::new(
                    payload[0], payload[1], payload[2], payload[3],
                ))
            }
            _ => {}
        }
        rest = rest.get(len.next_multiple_of(4).min(rest.len())..)?;
    }
    Some(nh)
}

/// Sorts dumped nexthops into weft's and the foreign ids.
fn table_of(dumped: &[DumpedNexthop]) -> NexthopTable {
    let mut t = NexthopTable::default();
    for nh in dumped {
        let Some(id) = nh.id else { continue };
        if nh.protocol != WEFT_ROUTE_PROTOCOL {
            t.foreign.insert(id);
            continue;
        }
        let (gateway, oif) = match (nh.family == libc::AF_INET as u8, nh.gateway, nh.oif) {
            (true, Some(gw), Some(oif)) => (gw, oif),
            _ => (Ipv4Addr::UNSPECIFIED, 0),
        };
        t.weft.push(Nexthop {
            id,
            gateway,
            oif,
            onlink: nh.flags & RTNH_F_ONLINK != 0,
        });
    }
    t
}

fn dump_err(source: io::Error) -> NetlinkError {
    NetlinkError::Request {
        op: "list nexthops".to_string(),
        source,
    }
}

/// How long the nexthop dump waits for each answer from the kernel before it gives up (it
/// runs on the caller's thread; the kernel answers in microseconds).
const DUMP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Every nexthop object of the calling thread's network namespace. A kernel without nexthop
/// objects (before 5.3) holds none.
pub fn dump_nexthops() -> Result<NexthopTable, NetlinkError> {
    use nix::sys::socket::{setsockopt, sockopt::ReceiveTimeout};
    use nix::sys::time::TimeVal;
    use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

    let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Connect)?;
    let timeout = TimeVal::new(DUMP_TIMEOUT.as_secs() as i64, 0);
    setsockopt(&socket, ReceiveTimeout, &timeout).map_err(|e| dump_err(e.into()))?;
    socket.bind_auto().map_err(dump_err)?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(dump_err)?;
    let request = message(
        RTM_GETNEXTHOP,
        NLM_F_REQUEST | NLM_F_DUMP,
        nhmsg(libc::AF_UNSPEC as u8, 0, 0),
        &[],
    );
    socket.send(&request, 0).map_err(dump_err)?;
    let mut dumped = Vec::new();
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
    loop {
        buf.clear();
        let n = socket.recv(&mut buf, 0).map_err(dump_err)?;
        let mut at = 0;
        while at + NLMSG_HDRLEN <= n {
            let len = u32_at(&buf[at..]).unwrap_or(0) as usize;
            let kind = u16_at(&buf[at + 4..]).unwrap_or(0);
            if len < NLMSG_HDRLEN || at + len > n {
                return Err(dump_err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "truncated netlink message",
                )));
            }
            let body = &buf[at + NLMSG_HDRLEN..at + len];
            match kind {
                NLMSG_DONE => return Ok(table_of(&dumped)),
                NLMSG_ERROR => {
                    let errno = -(u32_at(body).unwrap_or(0) as i32);
                    return match errno {
                        0 => Ok(table_of(&dumped)),
                        libc::EOPNOTSUPP | libc::EAFNOSUPPORT => Ok(NexthopTable::default()),
                        e => Err(dump_err(io::Error::from_raw_os_error(e))),
                    };
                }
                RTM_NEWNEXTHOP => dumped.extend(parse_nexthop(body)),
                _ => {}
            }
            at += len.next_multiple_of(4);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nh() -> Nexthop {
        Nexthop {
            id: u32::from(Ipv4Addr::new(10, 244, 3, 0)),
            gateway: Ipv4Addr::new(10, 244, 3, 0),
            oif: 7,
            onlink: true,
        }
    }

    #[test]
    fn new_nexthop_is_nlmsghdr_nhmsg_and_three_attributes() {
        let b = new_nexthop_bytes(&nh());
        let mut want = Vec::new();
        want.extend_from_slice(&48u32.to_ne_bytes()); // nlmsg_len: 16 + 8 + 3 * 8
        want.extend_from_slice(&104u16.to_ne_bytes()); // RTM_NEWNEXTHOP
        want.extend_from_slice(&(0x1 | 0x4 | 0x400 | 0x100u16).to_ne_bytes()); // REQUEST|ACK|CREATE|REPLACE
        want.extend_from_slice(&[0; 8]); // sequence number, port id
        want.extend_from_slice(&[2, 0, 87, 0]); // AF_INET, scope 0, protocol 87, resvd
        want.extend_from_slice(&4u32.to_ne_bytes()); // RTNH_F_ONLINK
        want.extend_from_slice(&8u16.to_ne_bytes());
        want.extend_from_slice(&1u16.to_ne_bytes()); // NHA_ID
        want.extend_from_slice(&u32::from(Ipv4Addr::new(10, 244, 3, 0)).to_ne_bytes());
        want.extend_from_slice(&8u16.to_ne_bytes());
        want.extend_from_slice(&5u16.to_ne_bytes()); // NHA_OIF
        want.extend_from_slice(&7u32.to_ne_bytes());
        want.extend_from_slice(&8u16.to_ne_bytes());
        want.extend_from_slice(&6u16.to_ne_bytes()); // NHA_GATEWAY
        want.extend_from_slice(&[10, 244, 3, 0]);
        assert_eq!(b, want);
    }

    #[test]
    fn del_nexthop_carries_only_the_id() {
        let b = del_nexthop_bytes(42);
        assert_eq!(b.len(), 32);
        assert_eq!(u32_at(&b), Some(32));
        assert_eq!(u16_at(&b[4..]), Some(105)); // RTM_DELNEXTHOP
        assert_eq!(u16_at(&b[6..]), Some(0x1 | 0x4)); // REQUEST|ACK
        assert_eq!(&b[16..24], &[0; 8]);
        assert_eq!(u16_at(&b[24..]), Some(8));
        assert_eq!(u16_at(&b[26..]), Some(1));
        assert_eq!(u32_at(&b[28..]), Some(42));
    }

    #[test]
    fn dumped_nexthops_read_back_and_sort_by_protocol() {
        let ours = new_nexthop_bytes(&nh());
        let parsed = parse_nexthop(&ours[NLMSG_HDRLEN..]).unwrap();
        let mut foreign = parsed;
        foreign.protocol = 4; // static, `ip nexthop add` by hand
        foreign.id = Some(9);
        let mut group = parsed;
        group.id = Some(10);
        group.gateway = None;
        let t = table_of(&[parsed, foreign, group]);
        assert_eq!(
            t.weft,
            vec![
                nh(),
                Nexthop {
                    id: 10,
                    gateway: Ipv4Addr::UNSPECIFIED,
                    oif: 0,
                    onlink: true
                }
            ]
        );
        assert_eq!(t.foreign, [9].into());
    }
}
