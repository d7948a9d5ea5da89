//! A thin layer of small named rtnetlink operations (find a link, set its MTU, list its FDB,
//! ...), each returning an error that names the object and the operation; [`run_batch`] sends
//! many route/neighbour/FDB changes per `sendmsg` (the peer table) off the runtime's workers;
//! [`link_events`] reports links coming and going.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use futures::stream::{StreamExt, TryStreamExt};
use ipnetwork::{Ipv4Network, Ipv6Network};
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST,
};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{Handle, LinkUnspec, MulticastGroup, RouteMessageBuilder};
use tokio::sync::mpsc;

mod nexthop;
pub use nexthop::{dump_nexthops, Nexthop, NexthopTable};

/// The route protocol (`proto` in `ip route`) of every route weft adds: 87 is unassigned in
/// iproute2's `rt_protos` (shows as `proto 87`). A reconcile recognises weft's routes by it, so
/// it never removes a route it did not add, also on a shared device (host-gw's underlay).
pub const WEFT_ROUTE_PROTOCOL: u8 = 87;

/// An error from the kernel's routing netlink interface, naming what was attempted.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The rtnetlink socket could not be opened.
    #[error("open rtnetlink socket: {0}")]
    Connect(#[source] io::Error),
    /// A request was refused or failed; `op` names the object and the operation.
    #[error("{op}: {source}")]
    Request {
        /// The operation, e.g. `add route 10.244.3.0/24 via 10.244.3.0 dev flannel.1`.
        op: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// No interface matches what the operator asked for.
    #[error("find external interface: {0}")]
    NoInterface(String),
}

impl NetlinkError {
    fn request(op: impl Into<String>, err: rtnetlink::Error) -> Self {
        let source = match err {
            rtnetlink::Error::NetlinkError(msg) => msg.to_io(),
            other => io::Error::other(other.to_string()),
        };
        NetlinkError::Request {
            op: op.into(),
            source,
        }
    }

    /// The kernel's errno, when the error carries one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Request { source, .. } | NetlinkError::Connect(source) => {
                source.raw_os_error()
            }
            NetlinkError::NoInterface(_) => None,
        }
    }

    /// Whether the kernel said the object does not exist (ENOENT, ESRCH, ENODEV).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENOENT) | Some(libc::ESRCH) | Some(libc::ENODEV)
        )
    }
}

/// A 48-bit Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A random locally administered unicast address (bit 1 of the first octet set, bit 0 clear).
    pub fn random_local() -> Self {
        let mut octets: [u8; 6] = rand::random();
        octets[0] = (octets[0] | 0x02) & 0xfe;
        MacAddr(octets)
    }

    /// Whether this address can name a single VTEP: unicast and not all zeros.
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 0x01 == 0 && self.0 != [0; 6]
    }

    /// Reads an address from the bytes of a netlink attribute.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            o[0], o[1], o[2], o[3], o[4], o[5]
        )
    }
}

/// A string that is not `xx:xx:xx:xx:xx:xx`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?}: want six hex octets separated by ':'")]
pub struct InvalidMac(pub String);

impl FromStr for MacAddr {
    type Err = InvalidMac;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut octets = [0u8; 6];
        let mut parts = s.split(':');
        for octet in octets.iter_mut() {
            let part = parts.next().ok_or_else(|| InvalidMac(s.to_string()))?;
            if part.len() != 2 {
                return Err(InvalidMac(s.to_string()));
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| InvalidMac(s.to_string()))?;
        }
        if parts.next().is_some() {
            return Err(InvalidMac(s.to_string()));
        }
        Ok(MacAddr(octets))
    }
}

/// The underlay interface the overlay runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalInterface {
    /// Interface name, e.g. `eth0`.
    pub name: String,
    /// Interface index.
    pub index: u32,
    /// The interface's IPv4 address used for the overlay.
    pub iface_addr: Ipv4Addr,
    /// The address peers reach this node at (`--public-ip`, default `iface_addr`).
    pub public_ip: Ipv4Addr,
    /// The interface's MTU.
    pub mtu: u32,
    /// The interface address with its prefix, for same-L2 checks (DirectRouting, host-gw).
    pub network: Ipv4Network,
    /// The IPv6 address peers reach this node at (`--public-ipv6`, default the interface's
    /// first global IPv6 address), when the network has IPv6.
    pub public_ipv6: Option<Ipv6Addr>,
    /// The interface's IPv6 address with its prefix, for same-L2 checks over IPv6.
    pub network_v6: Option<Ipv6Network>,
}

/// Opens an rtnetlink connection whose driver runs as a task on the current tokio runtime.
pub fn connect() -> Result<Handle, NetlinkError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Finds the underlay interface: by name or IPv4 address when `iface` is given, else the
/// interface of the default route (or of the address `public_ip` when that is local).
pub async fn find_external_interface(
    iface: Option<&str>,
    public_ip: Option<Ipv4Addr>,
) -> Result<ExternalInterface, NetlinkError> {
    let handle = connect()?;
    let addrs = ipv4_addresses(&handle, None).await?;
    let (index, addr) = match iface {
        Some(spec) => match spec.parse::<Ipv4Addr>() {
            Ok(ip) => {
                let found = addrs.iter().find(|(_, a)| a.ip() == ip);
                let (index, addr) = found.ok_or_else(|| {
                    NetlinkError::NoInterface(format!("no interface has address {ip}"))
                })?;
                (*index, *addr)
            }
            Err(_) => {
                let index = match spec.parse::<Ipv6Addr>() {
                    // An IPv6 address names the interface holding it (IPv6 underlays).
                    Ok(ip6) => ipv6_addresses(&handle, None)
                        .await?
                        .into_iter()
                        .find(|(_, a)| a.ip() == ip6)
                        .map(|(index, _)| index)
                        .ok_or_else(|| {
                            NetlinkError::NoInterface(format!("no interface has address {ip6}"))
                        })?,
                    Err(_) => {
                        link_by_name(&handle, spec)
                            .await?
                            .ok_or_else(|| {
                                NetlinkError::NoInterface(format!("no interface named {spec}"))
                            })?
                            .header
                            .index
                    }
                };
                match iface_address(&addrs, index, public_ip, spec) {
                    Ok(addr) => (index, addr),
                    // An interface named explicitly may have IPv6 only (an IPv6-only network
                    // checks that it has IPv6; an IPv4 one refuses 0.0.0.0).
                    Err(_) if public_ip.is_none() => {
                        (index, Ipv4Network::from(Ipv4Addr::UNSPECIFIED))
                    }
                    Err(e) => return Err(e),
                }
            }
        },
        None => {
            let local = public_ip.and_then(|ip| addrs.iter().find(|(_, a)| a.ip() == ip));
            match local {
                Some((index, addr)) => (*index, *addr),
                None => {
                    let index = default_route_oif(&handle).await?.ok_or_else(|| {
                        NetlinkError::NoInterface(
                            "no default route and no --iface given".to_string(),
                        )
                    })?;
                    (
                        index,
                        iface_address(&addrs, index, public_ip, &format!("index {index}"))?,
                    )
                }
            }
        }
    };
    let link = link_by_index(&handle, index)
        .await?
        .ok_or_else(|| NetlinkError::NoInterface(format!("interface index {index} vanished")))?;
    Ok(ExternalInterface {
        name: link_name(&link).unwrap_or_default(),
        index,
        iface_addr: addr.ip(),
        public_ip: public_ip.unwrap_or(addr.ip()),
        mtu: link_mtu(&link).unwrap_or(1500),
        network: addr,
        public_ipv6: None,
        network_v6: None,
    })
}

/// The interface's address: `prefer` when the interface has it, else its first IPv4 address.
fn iface_address(
    addrs: &[(u32, Ipv4Network)],
    index: u32,
    prefer: Option<Ipv4Addr>,
    what: &str,
) -> Result<Ipv4Network, NetlinkError> {
    let on_iface: Vec<Ipv4Network> = addrs
        .iter()
        .filter(|(i, _)| *i == index)
        .map(|(_, a)| *a)
        .collect();
    on_iface
        .iter()
        .find(|a| Some(a.ip()) == prefer)
        .or(on_iface.first())
        .copied()
        .ok_or_else(|| NetlinkError::NoInterface(format!("interface {what} has no IPv4 address")))
}

async fn default_route_oif(handle: &Handle) -> Result<Option<u32>, NetlinkError> {
    let routes = dump_ipv4_routes(handle).await?;
    Ok(routes
        .iter()
        .filter(|r| {
            r.header.table == RouteHeader::RT_TABLE_MAIN && r.header.destination_prefix_length == 0
        })
        .find_map(route_oif))
}

/// The name (`IFLA_IFNAME`) of a link message.
pub fn link_name(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

/// The MTU of a link message.
pub fn link_mtu(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

/// The transmit queue length of a link message.
pub fn link_txqueuelen(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::TxQueueLen(q) => Some(*q),
        _ => None,
    })
}

/// The hardware address of a link message.
pub fn link_mac(link: &LinkMessage) -> Option<MacAddr> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(b) => MacAddr::from_bytes(b),
        _ => None,
    })
}

/// Whether the link is administratively up.
pub fn link_is_up(link: &LinkMessage) -> bool {
    link.header.flags.contains(LinkFlags::Up)
}

async fn get_one_link(
    req: rtnetlink::LinkGetRequest,
    what: String,
) -> Result<Option<LinkMessage>, NetlinkError> {
    match req.execute().try_next().await {
        Ok(link) => Ok(link),
        Err(e) => {
            let err = NetlinkError::request(format!("get link {what}"), e);
            if err.is_not_found() {
                Ok(None)
            } else {
                Err(err)
            }
        }
    }
}

/// Every link of the namespace.
pub async fn all_links(handle: &Handle) -> Result<Vec<LinkMessage>, NetlinkError> {
    handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| NetlinkError::request("list links", e))
}

/// The link named `name`, or `None` when there is none.
pub async fn link_by_name(
    handle: &Handle,
    name: &str,
) -> Result<Option<LinkMessage>, NetlinkError> {
    get_one_link(handle.link().get().match_name(name), name.to_string()).await
}

/// The link with index `index`, or `None` when there is none.
pub async fn link_by_index(
    handle: &Handle,
    index: u32,
) -> Result<Option<LinkMessage>, NetlinkError> {
    get_one_link(
        handle.link().get().match_index(index),
        format!("index {index}"),
    )
    .await
}

/// Creates a link from a fully built message; `what` names it in errors.
pub async fn add_link(handle: &Handle, msg: LinkMessage, what: &str) -> Result<(), NetlinkError> {
    handle
        .link()
        .add(msg)
        .execute()
        .await
        .map_err(|e| NetlinkError::request(format!("create {what}"), e))
}

/// Deletes the link with index `index`; a link already gone is not an error.
pub async fn del_link(handle: &Handle, index: u32, name: &str) -> Result<(), NetlinkError> {
    match handle.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(e) => {
            let err = NetlinkError::request(format!("delete link {name}"), e);
            if err.is_not_found() {
                Ok(())
            } else {
                Err(err)
            }
        }
    }
}

/// Sets the link's MTU.
pub async fn set_link_mtu(
    handle: &Handle,
    index: u32,
    name: &str,
    mtu: u32,
) -> Result<(), NetlinkError> {
    let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
    set_link(handle, msg, || format!("set mtu {mtu} on {name}")).await
}

/// Sets the link's transmit queue length (for a TUN device, the slots of each queue's ring).
pub async fn set_link_txqueuelen(
    handle: &Handle,
    index: u32,
    name: &str,
    len: u32,
) -> Result<(), NetlinkError> {
    let msg = LinkUnspec::new_with_index(index).txqueuelen(len).build();
    set_link(handle, msg, || format!("set txqueuelen {len} on {name}")).await
}

/// Brings the link up.
pub async fn set_link_up(handle: &Handle, index: u32, name: &str) -> Result<(), NetlinkError> {
    let msg = LinkUnspec::new_with_index(index).up().build();
    set_link(handle, msg, || format!("set {name} up")).await
}

/// Sends one link change; `what` names it in the error.
async fn set_link(
    handle: &Handle,
    msg: LinkMessage,
    what: impl FnOnce() -> String,
) -> Result<(), NetlinkError> {
    handle
        .link()
        .set(msg)
        .execute()
        .await
        .map_err(|e| NetlinkError::request(what(), e))
}

/// The IPv4 addresses of one link (`Some(index)`) or of all links, with their link index.
pub async fn ipv4_addresses(
    handle: &Handle,
    index: Option<u32>,
) -> Result<Vec<(u32, Ipv4Network)>, NetlinkError> {
    let mut req = handle.address().get();
    if let Some(index) = index {
        req = req.set_link_index_filter(index);
    }
    let msgs: Vec<AddressMessage> = req
        .execute()
        .try_collect()
        .await
        .map_err(|e| NetlinkError::request("list addresses", e))?;
    Ok(msgs
        .iter()
        .filter(|m| m.header.family == AddressFamily::Inet)
        .filter(|m| index.is_none_or(|i| m.header.index == i))
        .filter_map(|m| {
            let ip = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            })?;
            let net = Ipv4Network::new(ip, m.header.prefix_len).ok()?;
            Some((m.header.index, net))
        })
        .collect())
}

/// Adds an IPv4 address to a link.
pub async fn add_address(
    handle: &Handle,
    index: u32,
    name: &str,
    addr: Ipv4Network,
) -> Result<(), NetlinkError> {
    handle
        .address()
        .add(index, IpAddr::V4(addr.ip()), addr.prefix())
        .replace()
        .execute()
        .await
        .map_err(|e| NetlinkError::request(format!("add address {addr} dev {name}"), e))
}

/// Removes an IPv4 address from a link; an address already gone is not an error.
pub async fn del_address(
    handle: &Handle,
    index: u32,
    name: &str,
    addr: Ipv4Network,
) -> Result<(), NetlinkError> {
    let msg = rtnetlink::AddressMessageBuilder::<Ipv4Addr>::new()
        .index(index)
        .address(addr.ip(), addr.prefix())
        .build();
    match handle.address().del(msg).execute().await {
        Ok(()) => Ok(()),
        Err(e) => {
            let err = NetlinkError::request(format!("delete address {addr} dev {name}"), e);
            if err.is_not_found() || err.errno() == Some(libc::EADDRNOTAVAIL) {
                Ok(())
            } else {
                Err(err)
            }
        }
    }
}

/// An IPv4 unicast route of the main table: one destination, at most one gateway, one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Route {
    /// Destination prefix.
    pub dst: Ipv4Network,
    /// Next hop; `None` for a device route (scope link).
    pub gateway: Option<Ipv4Addr>,
    /// Output device index.
    pub oif: u32,
    /// Whether the next hop is declared on-link (VXLAN peers: `X.0` on `flannel.<VNI>`).
    pub onlink: bool,
    /// The nexthop object the route goes through (`nhid`, `--route-nexthops`), which holds
    /// the gateway, device and on-link flag above; `None` for a route of Flannel's shape.
    pub nexthop: Option<u32>,
}

/// All IPv4 routes of all tables (the kernel ignores dump filters without strict checking).
pub async fn dump_ipv4_routes(handle: &Handle) -> Result<Vec<RouteMessage>, NetlinkError> {
    let msg = RouteMessageBuilder::<Ipv4Addr>::new().build();
    handle
        .route()
        .get(msg)
        .execute()
        .try_collect()
        .await
        .map_err(|e| NetlinkError::request("list routes", e))
}

fn route_oif(r: &RouteMessage) -> Option<u32> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

impl Ipv4Route {
    /// `ip route` style text for logs and errors, without the device.
    fn describe(&self) -> String {
        match (self.nexthop, self.gateway) {
            (Some(id), _) => format!("{} nhid {id}", self.dst),
            (None, Some(gw)) => format!("{} via {gw}", self.dst),
            (None, None) => self.dst.to_string(),
        }
    }
}

/// Which main-table routes [`main_table_routes`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteOrigin {
    /// Every route but those the kernel made itself (connected subnets).
    Any,
    /// weft's routes: protocol [`WEFT_ROUTE_PROTOCOL`].
    Weft,
    /// Routes of any other origin but the kernel's.
    Untagged,
}

/// The unicast routes of the main table with one output device, as [`Ipv4Route`]s, of the
/// given origin; routes the kernel made itself (connected subnets) are always left out.
pub fn main_table_routes(msgs: &[RouteMessage], origin: RouteOrigin) -> Vec<Ipv4Route> {
    let weft = RouteProtocol::Other(WEFT_ROUTE_PROTOCOL);
    msgs.iter()
        .filter(|r| {
            r.header.address_family == AddressFamily::Inet
                && r.header.table == RouteHeader::RT_TABLE_MAIN
                && r.header.protocol != RouteProtocol::Kernel
                && r.header.kind == RouteType::Unicast
                && match origin {
                    RouteOrigin::Any => true,
                    RouteOrigin::Weft => r.header.protocol == weft,
                    RouteOrigin::Untagged => r.header.protocol != weft,
                }
        })
        .filter_map(|r| {
            let dst_ip = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                    _ => None,
                })
                .unwrap_or(Ipv4Addr::UNSPECIFIED);
            let gateway = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            let nexthop = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::NhId(id) => Some(*id),
                _ => None,
            });
            // Without `nexthop_compat_mode` a route through a nexthop object names no device;
            // the object does (see `pipeline::read_kernel`).
            let oif = match (route_oif(r), nexthop) {
                (Some(oif), _) => oif,
                (None, Some(_)) => 0,
                (None, None) => return None,
            };
            Some(Ipv4Route {
                dst: Ipv4Network::new(dst_ip, r.header.destination_prefix_length).ok()?,
                gateway,
                oif,
                onlink: r.header.flags.contains(RouteFlags::Onlink),
                nexthop,
            })
        })
        .collect()
}

/// The message for one of weft's routes (protocol [`WEFT_ROUTE_PROTOCOL`]).
fn route_message(route: &Ipv4Route) -> RouteMessage {
    if let Some(id) = route.nexthop {
        // The kernel refuses a gateway or device beside a nexthop id: the object holds them.
        let mut msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(route.dst.network(), route.dst.prefix())
            .protocol(RouteProtocol::Other(WEFT_ROUTE_PROTOCOL))
            .scope(RouteScope::Universe)
            .build();
        msg.attributes.push(RouteAttribute::NhId(id));
        return msg;
    }
    let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(route.dst.network(), route.dst.prefix())
        .output_interface(route.oif)
        .protocol(RouteProtocol::Other(WEFT_ROUTE_PROTOCOL));
    builder = match route.gateway {
        Some(gw) => builder.gateway(gw).scope(RouteScope::Universe),
        None => builder.scope(RouteScope::Link),
    };
    if route.onlink {
        builder = builder.onlink();
    }
    builder.build()
}

/// An IPv4 neighbour (ARP) entry on one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Neighbour {
    /// The neighbour's IPv4 address.
    pub ip: Ipv4Addr,
    /// Its link-layer address; `None` for unresolved entries.
    pub mac: Option<MacAddr>,
    /// Whether the entry is permanent (never expires, never re-probed).
    pub permanent: bool,
}

/// The IPv4 neighbour entries of the device with index `index`.
pub async fn neighbours(handle: &Handle, index: u32) -> Result<Vec<Neighbour>, NetlinkError> {
    let msgs = neighbour_table(handle, AddressFamily::Inet, index, "neighbours").await?;
    Ok(msgs
        .iter()
        .filter_map(|m| {
            let ip = m.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                _ => None,
            })?;
            let mac = m.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(b) => MacAddr::from_bytes(b),
                _ => None,
            });
            Some(Neighbour {
                ip,
                mac,
                permanent: m.header.state == NeighbourState::Permanent,
            })
        })
        .collect())
}

/// The neighbour-table messages of `family` (`Inet`: ARP, `Bridge`: FDB) on the device with
/// index `index`; `what` names the table in the error.
async fn neighbour_table(
    handle: &Handle,
    family: AddressFamily,
    index: u32,
    what: &str,
) -> Result<Vec<NeighbourMessage>, NetlinkError> {
    let msgs: Vec<NeighbourMessage> = handle
        .neighbours()
        .get()
        .set_address_family(family)
        .execute()
        .try_collect()
        .await
        .map_err(|e| NetlinkError::request(format!("list {what} of index {index}"), e))?;
    Ok(msgs
        .into_iter()
        .filter(|m| m.header.ifindex == index && m.header.family == family)
        .collect())
}

/// A forwarding-database entry of a VXLAN device: frames for `mac` go to the VTEP at `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FdbEntry {
    /// The remote VTEP's MAC.
    pub mac: MacAddr,
    /// The remote VTEP's underlay address.
    pub dst: Ipv4Addr,
}

/// The FDB entries with a remote IPv4 destination on the device with index `index`.
pub async fn fdb_entries(handle: &Handle, index: u32) -> Result<Vec<FdbEntry>, NetlinkError> {
    let msgs = neighbour_table(handle, AddressFamily::Bridge, index, "fdb").await?;
    Ok(msgs
        .iter()
        .filter_map(|m| {
            let mac = m.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(b) => MacAddr::from_bytes(b),
                _ => None,
            })?;
            // AF_BRIDGE messages carry NDA_DST as raw bytes (an IPv4 remote is 4 of them).
            let dst = m.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                    <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
                }
                _ => None,
            })?;
            Some(FdbEntry { mac, dst })
        })
        .collect())
}

fn fdb_message(index: u32, entry: &FdbEntry) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(entry.mac.0.to_vec()));
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
            entry.dst,
        )));
    msg
}

/// One request of a [`run_batch`]: a route, neighbour or FDB change, and its description.
/// Held serialised (the sequence number is set when sent): a first pass at 10 000 peers builds
/// 30 000 of them, and the bytes take a third of the memory of the message structs.
#[derive(Debug, Clone)]
pub struct BatchRequest {
    bytes: Box<[u8]>,
    op: Box<str>,
    absent_ok: bool,
}

const CREATE_REPLACE: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
const DELETE: u16 = NLM_F_REQUEST | NLM_F_ACK;

impl BatchRequest {
    /// A request from its serialised message (sequence number 0; set when sent).
    fn from_bytes(bytes: Vec<u8>, op: String, absent_ok: bool) -> Self {
        BatchRequest {
            bytes: bytes.into_boxed_slice(),
            op: op.into_boxed_str(),
            absent_ok,
        }
    }

    fn new(message: RouteNetlinkMessage, flags: u16, op: String, absent_ok: bool) -> Self {
        let mut msg = NetlinkMessage::from(message);
        msg.header.flags = flags;
        msg.finalize();
        let mut bytes = vec![0; msg.buffer_len()];
        msg.serialize(&mut bytes);
        BatchRequest::from_bytes(bytes, op, absent_ok)
    }

    /// Adds or replaces a route; `dev` names the device in errors.
    pub fn replace_route(route: &Ipv4Route, dev: &str) -> Self {
        let onlink = if route.onlink { " onlink" } else { "" };
        BatchRequest::new(
            RouteNetlinkMessage::NewRoute(route_message(route)),
            CREATE_REPLACE,
            format!("add route {} dev {dev}{onlink}", route.describe()),
            false,
        )
    }

    /// Deletes one of weft's routes (the kernel matches the protocol, so a route someone else
    /// added to the same destination stays); a route already gone counts as deleted.
    pub fn del_route(route: &Ipv4Route, dev: &str) -> Self {
        let mut msg = route_message(route);
        msg.header.scope = RouteScope::NoWhere;
        BatchRequest::new(
            RouteNetlinkMessage::DelRoute(msg),
            DELETE,
            format!("delete route {} dev {dev}", route.describe()),
            true,
        )
    }

    /// Deletes a route whoever added it (protocol and scope left unset, so the kernel does
    /// not match on them): only for the untagged routes a previous weft version wrote.
    pub fn del_untagged_route(route: &Ipv4Route, dev: &str) -> Self {
        let mut msg = route_message(route);
        msg.header.scope = RouteScope::NoWhere;
        msg.header.protocol = RouteProtocol::Unspec;
        BatchRequest::new(
            RouteNetlinkMessage::DelRoute(msg),
            DELETE,
            format!("delete route {} dev {dev}", route.describe()),
            true,
        )
    }

    /// Adds or replaces the permanent neighbour entry `ip -> mac` on device `index`.
    pub fn replace_neighbour(index: u32, dev: &str, ip: Ipv4Addr, mac: MacAddr) -> Self {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        BatchRequest::new(
            RouteNetlinkMessage::NewNeighbour(msg),
            CREATE_REPLACE,
            format!("add neighbour {ip} lladdr {mac} dev {dev}"),
            false,
        )
    }

    /// Deletes the neighbour entry for `ip` on device `index`; one already gone counts as
    /// deleted.
    pub fn del_neighbour(index: u32, dev: &str, ip: Ipv4Addr) -> Self {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        BatchRequest::new(
            RouteNetlinkMessage::DelNeighbour(msg),
            DELETE,
            format!("delete neighbour {ip} dev {dev}"),
            true,
        )
    }

    /// Adds or replaces the permanent FDB entry `<mac> dst <ip> self` on VXLAN device `index`.
    pub fn replace_fdb(index: u32, dev: &str, entry: &FdbEntry) -> Self {
        BatchRequest::new(
            RouteNetlinkMessage::NewNeighbour(fdb_message(index, entry)),
            CREATE_REPLACE,
            format!("add fdb {} dst {} dev {dev}", entry.mac, entry.dst),
            false,
        )
    }

    /// Deletes one FDB entry (that MAC towards that destination); one already gone counts as
    /// deleted.
    pub fn del_fdb(index: u32, dev: &str, entry: &FdbEntry) -> Self {
        BatchRequest::new(
            RouteNetlinkMessage::DelNeighbour(fdb_message(index, entry)),
            DELETE,
            format!("delete fdb {} dst {} dev {dev}", entry.mac, entry.dst),
            true,
        )
    }
}

/// Requests per `sendmsg` in [`run_batch`]: their ACKs must fit the receive buffer at once.
const BATCH_CHUNK: usize = 256;

/// Socket receive buffer asked for by [`run_batch`] (the kernel caps it at `rmem_max`).
const BATCH_RCVBUF: usize = 4 << 20;

/// Batches up to this many requests are sent on the calling thread: the kernel handles them in
/// microseconds, less than the hop to the blocking pool and back costs on a busy machine.
pub const INLINE_BATCH: usize = 64;

fn socket_err(op: &str, source: io::Error) -> NetlinkError {
    NetlinkError::Request {
        op: format!("batch netlink socket: {op}"),
        source,
    }
}

/// Sends the requests to the kernel in chunks of many messages per `sendmsg` (the kernel
/// handles each message in turn and acknowledges each), in order; returns how many succeeded
/// and the errors of the others, each naming its operation.
///
/// The socket is opened on the calling thread, so it lives in that thread's network
/// namespace; a large batch is sent from tokio's blocking pool, never on a runtime worker, a
/// small one (up to [`INLINE_BATCH`] requests, an incremental pass) on the calling thread. The
/// kernel does the work and queues every ACK inside `sendmsg`, so a batch only takes as long as
/// the kernel needs and never waits for an answer.
pub async fn run_batch(
    requests: Vec<BatchRequest>,
) -> Result<(usize, Vec<NetlinkError>), NetlinkError> {
    use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket};

    let socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Connect)?;
    if requests.len() <= INLINE_BATCH {
        return send_batch(socket, &requests);
    }
    tokio::task::spawn_blocking(move || send_batch(socket, &requests))
        .await
        .map_err(|e| socket_err("batch task", io::Error::other(e.to_string())))?
}

fn send_batch(
    mut socket: rtnetlink::sys::Socket,
    requests: &[BatchRequest],
) -> Result<(usize, Vec<NetlinkError>), NetlinkError> {
    use rtnetlink::sys::SocketAddr;

    socket.bind_auto().map_err(|e| socket_err("bind", e))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(|e| socket_err("connect", e))?;
    socket
        .set_rx_buf_sz(BATCH_RCVBUF)
        .map_err(|e| socket_err("set receive buffer", e))?;
    socket
        .set_cap_ack(true)
        .map_err(|e| socket_err("set NETLINK_CAP_ACK", e))?;

    let mut ok = 0;
    let mut errors = Vec::new();
    let mut send_buf = Vec::new();
    let mut recv_buf: Vec<u8> = Vec::with_capacity(1 << 16);
    for (chunk_no, chunk) in requests.chunks(BATCH_CHUNK).enumerate() {
        let base = (chunk_no * BATCH_CHUNK) as u32 + 1;
        send_buf.clear();
        for (i, req) in chunk.iter().enumerate() {
            let start = send_buf.len();
            send_buf.extend_from_slice(&req.bytes);
            // nlmsghdr: length (4), type (2), flags (2), then the sequence number (4).
            send_buf[start + 8..start + 12].copy_from_slice(&(base + i as u32).to_ne_bytes());
        }
        socket
            .send(&send_buf, 0)
            .map_err(|e| socket_err("send", e))?;
        let mut answered = vec![false; chunk.len()];
        let mut pending = chunk.len();
        while pending > 0 {
            recv_buf.clear();
            let n = match socket.recv(&mut recv_buf, libc::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(e) => {
                    // ACKs lost to a full receive buffer: count the unanswered requests as failed.
                    for (req, _) in chunk.iter().zip(&answered).filter(|(_, a)| !**a) {
                        errors.push(NetlinkError::Request {
                            op: req.op.to_string(),
                            source: io::Error::new(e.kind(), format!("no answer from kernel: {e}")),
                        });
                    }
                    break;
                }
            };
            let mut offset = 0;
            while offset < n {
                let msg = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(
                    &recv_buf[offset..n],
                ) {
                    Ok(m) => m,
                    Err(e) => {
                        return Err(socket_err(
                            "parse answer",
                            io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
                        ))
                    }
                };
                let len = msg.header.length as usize;
                let seq = msg.header.sequence_number;
                offset += len.max(1);
                let NetlinkPayload::Error(err) = msg.payload else {
                    continue;
                };
                let Some(i) = seq.checked_sub(base).map(|i| i as usize) else {
                    continue;
                };
                if i >= chunk.len() || answered[i] {
                    continue;
                }
                answered[i] = true;
                pending -= 1;
                let req = &chunk[i];
                match err.code {
                    None => ok += 1,
                    Some(code) => {
                        let errno = -code.get();
                        let absent = matches!(errno, libc::ENOENT | libc::ESRCH | libc::ENODEV);
                        if req.absent_ok && absent {
                            ok += 1;
                        } else {
                            errors.push(NetlinkError::Request {
                                op: req.op.to_string(),
                                source: io::Error::from_raw_os_error(errno),
                            });
                        }
                    }
                }
            }
        }
    }
    Ok((ok, errors))
}

/// A link appeared, changed or disappeared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkEvent {
    /// The link's index.
    pub index: u32,
    /// The link's name, when the kernel sent it.
    pub name: Option<String>,
    /// True for RTM_DELLINK.
    pub removed: bool,
}

/// Subscribes to the kernel's link notifications (RTNLGRP_LINK). The receiver yields one
/// [`LinkEvent`] per message until it is dropped; must be called inside a tokio runtime.
pub fn link_events() -> Result<mpsc::UnboundedReceiver<LinkEvent>, NetlinkError> {
    let (conn, _handle, mut messages) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Link])
            .map_err(NetlinkError::Connect)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let driver = tokio::spawn(conn);
    tokio::spawn(async move {
        while let Some((msg, _)) = messages.next().await {
            let (link, removed) = match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => (l, false),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => (l, true),
                _ => continue,
            };
            let event = LinkEvent {
                index: link.header.index,
                name: link_name(&link),
                removed,
            };
            if tx.send(event).is_err() {
                break;
            }
        }
        driver.abort();
    });
    Ok(rx)
}

// IPv6: the same entries over IPv6 (routes, neighbours, FDB entries with an IPv6 remote), for
// dual-stack and IPv6-only networks.

/// An IPv6 unicast route of the main table, the IPv6 twin of [`Ipv4Route`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv6Route {
    /// Destination prefix.
    pub dst: Ipv6Network,
    /// Next hop; `None` for a device route.
    pub gateway: Option<Ipv6Addr>,
    /// Output device index.
    pub oif: u32,
    /// Whether the next hop is declared on-link (VXLAN peers: `X::` on `flannel-v6.<VNI>`).
    pub onlink: bool,
}

impl Ipv6Route {
    /// `ip -6 route` style text for logs and errors, without the device.
    pub fn describe(&self) -> String {
        match self.gateway {
            Some(gw) => format!("{} via {gw}", self.dst),
            None => self.dst.to_string(),
        }
    }
}

/// An IPv6 neighbour entry on one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour6 {
    /// The neighbour's IPv6 address.
    pub ip: Ipv6Addr,
    /// Its link-layer address; `None` for unresolved entries.
    pub mac: Option<MacAddr>,
    /// Whether the entry is permanent.
    pub permanent: bool,
}

/// An FDB entry of a VXLAN device whose remote VTEP has an IPv6 underlay address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FdbEntry6 {
    /// The remote VTEP's MAC.
    pub mac: MacAddr,
    /// The remote VTEP's IPv6 underlay address.
    pub dst: Ipv6Addr,
}

/// The IPv6 addresses of one link (`Some(index)`) or of all links, with their link index.
pub async fn ipv6_addresses(
    handle: &Handle,
    index: Option<u32>,
) -> Result<Vec<(u32, Ipv6Network)>, NetlinkError> {
    let mut req = handle.address().get();
    if let Some(index) = index {
        req = req.set_link_index_filter(index);
    }
    let msgs: Vec<AddressMessage> = req
        .execute()
        .try_collect()
        .await
        .map_err(|e| NetlinkError::request("list addresses", e))?;
    Ok(msgs
        .iter()
        .filter(|m| m.header.family == AddressFamily::Inet6)
        .filter(|m| index.is_none_or(|i| m.header.index == i))
        .filter_map(|m| {
            let ip = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V6(ip)) => Some(*ip),
                _ => None,
            })?;
            let net = Ipv6Network::new(ip, m.header.prefix_len).ok()?;
            Some((m.header.index, net))
        })
        .collect())
}

/// Whether an IPv6 address can carry traffic between nodes (not link-local, loopback,
/// multicast or unspecified).
pub fn is_routable_v6(ip: &Ipv6Addr) -> bool {
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || ip.segments()[0] & 0xffc0 == 0xfe80)
}

/// Fills in the IPv6 side of `ext` as flanneld picks it: `--public-ipv6` if given, else the
/// external interface's first routable IPv6 address. Fails when the interface has none.
pub async fn add_ipv6_underlay(
    ext: &mut ExternalInterface,
    public_ipv6: Option<Ipv6Addr>,
) -> Result<(), NetlinkError> {
    let handle = connect()?;
    let on_iface: Vec<Ipv6Network> = ipv6_addresses(&handle, Some(ext.index))
        .await?
        .into_iter()
        .map(|(_, a)| a)
        .filter(|a| is_routable_v6(&a.ip()))
        .collect();
    let addr = on_iface
        .iter()
        .find(|a| Some(a.ip()) == public_ipv6)
        .or(on_iface.first())
        .copied()
        .ok_or_else(|| {
            NetlinkError::NoInterface(format!(
                "interface {} has no routable IPv6 address (IPv6 is enabled)",
                ext.name
            ))
        })?;
    ext.public_ipv6 = Some(public_ipv6.unwrap_or(addr.ip()));
    ext.network_v6 = Some(addr);
    Ok(())
}

/// Adds an IPv6 address to a link, without duplicate address detection: it is a /128 only this
/// node uses, and a tentative address could not source the node's traffic to pods for a while.
pub async fn add_address6(
    handle: &Handle,
    index: u32,
    name: &str,
    addr: Ipv6Network,
) -> Result<(), NetlinkError> {
    use rtnetlink::packet_route::address::AddressFlags;
    let mut req = handle
        .address()
        .add(index, IpAddr::V6(addr.ip()), addr.prefix())
        .replace();
    req.message_mut()
        .attributes
        .push(AddressAttribute::Flags(AddressFlags::Nodad));
    req.execute()
        .await
        .map_err(|e| NetlinkError::request(format!("add address {addr} dev {name}"), e))
}

/// Removes an IPv6 address from a link; an address already gone is not an error.
pub async fn del_address6(
    handle: &Handle,
    index: u32,
    name: &str,
    addr: Ipv6Network,
) -> Result<(), NetlinkError> {
    let msg = rtnetlink::AddressMessageBuilder::<Ipv6Addr>::new()
        .index(index)
        .address(addr.ip(), addr.prefix())
        .build();
    match handle.address().del(msg).execute().await {
        Ok(()) => Ok(()),
        Err(e) => {
            let err = NetlinkError::request(format!("delete address {addr} dev {name}"), e);
            if err.is_not_found() || err.errno() == Some(libc::EADDRNOTAVAIL) {
                Ok(())
            } else {
                Err(err)
            }
        }
    }
}

/// All IPv6 routes of all tables.
pub async fn dump_ipv6_routes(handle: &Handle) -> Result<Vec<RouteMessage>, NetlinkError> {
    let msg = RouteMessageBuilder::<Ipv6Addr>::new().build();
    handle
        .route()
        .get(msg)
        .execute()
        .try_collect()
        .await
        .map_err(|e| NetlinkError::request("list IPv6 routes", e))
}

/// The IPv6 twin of [`main_table_routes`].
pub fn main_table_routes6(msgs: &[RouteMessage], origin: RouteOrigin) -> Vec<Ipv6Route> {
    let weft = RouteProtocol::Other(WEFT_ROUTE_PROTOCOL);
    msgs.iter()
        .filter(|r| {
            r.header.address_family == AddressFamily::Inet6
                && r.header.table == RouteHeader::RT_TABLE_MAIN
                && r.header.protocol != RouteProtocol::Kernel
                && r.header.kind == RouteType::Unicast
                && match origin {
                    RouteOrigin::Any => true,
                    RouteOrigin::Weft => r.header.protocol == weft,
                    RouteOrigin::Untagged => r.header.protocol != weft,
                }
        })
        .filter_map(|r| {
            let dst_ip = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet6(ip)) => Some(*ip),
                    _ => None,
                })
                .unwrap_or(Ipv6Addr::UNSPECIFIED);
            let gateway = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => Some(*ip),
                _ => None,
            });
            Some(Ipv6Route {
                dst: Ipv6Network::new(dst_ip, r.header.destination_prefix_length).ok()?,
                gateway,
                oif: route_oif(r)?,
                onlink: r.header.flags.contains(RouteFlags::Onlink),
            })
        })
        .collect()
}

fn route_message6(route: &Ipv6Route) -> RouteMessage {
    let mut builder = RouteMessageBuilder::<Ipv6Addr>::new()
        .destination_prefix(route.dst.network(), route.dst.prefix())
        .output_interface(route.oif)
        .protocol(RouteProtocol::Other(WEFT_ROUTE_PROTOCOL));
    builder = match route.gateway {
        Some(gw) => builder.gateway(gw).scope(RouteScope::Universe),
        None => builder.scope(RouteScope::Link),
    };
    if route.onlink {
        builder = builder.onlink();
    }
    builder.build()
}

/// The IPv6 neighbour entries of the device with index `index`.
pub async fn neighbours6(handle: &Handle, index: u32) -> Result<Vec<Neighbour6>, NetlinkError> {
    let msgs: Vec<NeighbourMessage> = handle
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Inet6)
        .execute()
        .try_collect()
        .await
        .map_err(|e| NetlinkError::request(format!("list IPv6 neighbours of index {index}"), e))?;
    Ok(msgs
        .iter()
        .filter(|m| m.header.ifindex == index && m.header.family == AddressFamily::Inet6)
        .filter_map(|m| {
            let ip = m.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => Some(*ip),
                _ => None,
            })?;
            let mac = m.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(b) => MacAddr::from_bytes(b),
                _ => None,
            });
            Some(Neighbour6 {
                ip,
                mac,
                permanent: m.header.state == NeighbourState::Permanent,
            })
        })
        // The kernel's own entries (routers, link-local peers) are not weft's.
        .filter(|n| n.permanent || is_routable_v6(&n.ip))
        .collect())
}

/// The FDB entries with a remote IPv6 destination on the device with index `index`.
pub async fn fdb_entries6(handle: &Handle, index: u32) -> Result<Vec<FdbEntry6>, NetlinkError> {
    let msgs: Vec<NeighbourMessage> = handle
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Bridge)
        .execute()
        .try_collect()
        .await
        .map_err(|e| NetlinkError::request(format!("list fdb of index {index}"), e))?;
    Ok(msgs
        .iter()
        .filter(|m| m.header.ifindex == index && m.header.family == AddressFamily::Bridge)
        .filter_map(|m| {
            let mac = m.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(b) => MacAddr::from_bytes(b),
                _ => None,
            })?;
            // AF_BRIDGE messages carry NDA_DST as raw bytes (an IPv6 remote is 16 of them).
            let dst = m.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => Some(*ip),
                NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                    <[u8; 16]>::try_from(b.as_slice()).ok().map(Ipv6Addr::from)
                }
                _ => None,
            })?;
            Some(FdbEntry6 { mac, dst })
        })
        .collect())
}

fn fdb_message6(index: u32, entry: &FdbEntry6) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(entry.mac.0.to_vec()));
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet6(
            entry.dst,
        )));
    msg
}

impl BatchRequest {
    /// Adds or replaces an IPv6 route; `dev` names the device in errors.
    pub fn replace_route6(route: &Ipv6Route, dev: &str) -> Self {
        let onlink = if route.onlink { " onlink" } else { "" };
        BatchRequest::new(
            RouteNetlinkMessage::NewRoute(route_message6(route)),
            CREATE_REPLACE,
            format!("add route {} dev {dev}{onlink}", route.describe()),
            false,
        )
    }

    /// Deletes one of weft's IPv6 routes; a route already gone counts as deleted.
    pub fn del_route6(route: &Ipv6Route, dev: &str) -> Self {
        let mut msg = route_message6(route);
        msg.header.scope = RouteScope::NoWhere;
        BatchRequest::new(
            RouteNetlinkMessage::DelRoute(msg),
            DELETE,
            format!("delete route {} dev {dev}", route.describe()),
            true,
        )
    }

    /// Adds or replaces the permanent IPv6 neighbour entry `ip -> mac` on device `index`.
    pub fn replace_neighbour6(index: u32, dev: &str, ip: Ipv6Addr, mac: MacAddr) -> Self {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet6;
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)));
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        BatchRequest::new(
            RouteNetlinkMessage::NewNeighbour(msg),
            CREATE_REPLACE,
            format!("add neighbour {ip} lladdr {mac} dev {dev}"),
            false,
        )
    }

    /// Deletes the IPv6 neighbour entry for `ip` on device `index`.
    pub fn del_neighbour6(index: u32, dev: &str, ip: Ipv6Addr) -> Self {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet6;
        msg.header.ifindex = index;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)));
        BatchRequest::new(
            RouteNetlinkMessage::DelNeighbour(msg),
            DELETE,
            format!("delete neighbour {ip} dev {dev}"),
            true,
        )
    }

    /// Adds or replaces the permanent FDB entry `<mac> dst <ipv6> self` on device `index`.
    pub fn replace_fdb6(index: u32, dev: &str, entry: &FdbEntry6) -> Self {
        BatchRequest::new(
            RouteNetlinkMessage::NewNeighbour(fdb_message6(index, entry)),
            CREATE_REPLACE,
            format!("add fdb {} dst {} dev {dev}", entry.mac, entry.dst),
            false,
        )
    }

    /// Deletes one IPv6 FDB entry.
    pub fn del_fdb6(index: u32, dev: &str, entry: &FdbEntry6) -> Self {
        BatchRequest::new(
            RouteNetlinkMessage::DelNeighbour(fdb_message6(index, entry)),
            DELETE,
            format!("delete fdb {} dst {} dev {dev}", entry.mac, entry.dst),
            true,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trips_through_text() {
        let mac: MacAddr = "0a:1b:2c:3d:4e:5f".parse().unwrap();
        assert_eq!(mac, MacAddr([0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]));
        assert_eq!(mac.to_string(), "0a:1b:2c:3d:4e:5f");
    }

    #[test]
    fn mac_rejects_malformed_text() {
        for bad in [
            "",
            "0a:1b:2c:3d:4e",
            "0a:1b:2c:3d:4e:5f:60",
            "0a:1b:2c:3d:4e:zz",
            "a:b:c:d:e:f",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn random_mac_is_local_unicast() {
        for _ in 0..100 {
            let mac = MacAddr::random_local();
            assert_eq!(mac.0[0] & 0x03, 0x02, "{mac}");
            assert!(mac.is_unicast());
        }
    }
}
