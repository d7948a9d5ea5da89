//! A small synchronous rtnetlink client: one socket, one request at a time, no async runtime.
//!
//! A socket stays bound to the network namespace it was created in, so the plugin opens one in
//! the node namespace and one in the container namespace and never moves its own threads.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd as _, AsRawFd};
use std::time::{Duration, Instant};

use crate::netns::{Netns, NetnsError};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    AfSpecInet, AfSpecUnspec, InetDevConf, InfoBridgePort, InfoData, InfoKind, InfoPortData,
    InfoPortKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::unistd::ForkResult;

use crate::ip::{Ipv4Net, Ipv6Net};

/// What the plugin needs to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// MAC address formatted `aa:bb:cc:dd:ee:ff` (empty if none).
    pub mac: String,
    /// MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// Index of the bridge (or other controller) it is enslaved to.
    pub master: Option<u32>,
    /// Link kind (`bridge`, `veth`, ...), if reported.
    pub kind: Option<String>,
    /// For a veth: the namespace ID of its peer's namespace, when that is another namespace.
    pub peer_netnsid: Option<i32>,
}

/// An IPv4 route as read back from the kernel (main table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    /// Destination prefix (`0.0.0.0/0` for the default route).
    pub dst: Ipv4Net,
    /// Gateway, if any.
    pub gw: Option<Ipv4Addr>,
    /// Output interface index.
    pub oif: Option<u32>,
}

/// An IPv6 route as read back from the kernel (main table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry6 {
    /// Destination prefix (`::/0` for the default route).
    pub dst: Ipv6Net,
    /// Gateway, if any.
    pub gw: Option<Ipv6Addr>,
}

/// A netlink route socket bound to one network namespace.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// `RTNLGRP_LINK`: the multicast group of link notifications.
const RTNLGRP_LINK: u32 = 1;

/// Receive buffer size: large enough for one dump datagram from the kernel.
const RECV_BUF: usize = 64 * 1024;

impl Netlink {
    /// Opens a route socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Netlink {
            socket,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// Serializes a request with the next sequence number.
    fn encode(&mut self, message: RouteNetlinkMessage, flags: u16) -> Vec<u8> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out);
        out
    }

    /// Sends one request and collects the replies until the ACK, DONE or an error.
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        let out = self.encode(message, flags);
        let seq = self.seq;
        self.socket.send(&out, 0)?;
        let mut replies = Vec::new();
        loop {
            self.buf.clear();
            let received = self.socket.recv(&mut self.buf, 0)?;
            if received > self.buf.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("netlink reply of {received} bytes truncated"),
                ));
            }
            let mut offset = 0;
            while offset < self.buf.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[offset..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let length = reply.header.length as usize;
                if length == 0 {
                    break;
                }
                offset += (length + 3) & !3;
                if reply.header.sequence_number != seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::Error(err) => {
                        return match err.code {
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                            None => Ok(replies),
                        }
                    }
                    NetlinkPayload::InnerMessage(inner) => replies.push(inner),
                    _ => {}
                }
            }
        }
    }

    /// Sends a change request and waits for its ACK.
    fn change(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.request(message, NLM_F_ACK | flags).map(|_| ())
    }

    /// The link called `name`, or `None` if there is none.
    pub fn link_by_name(&mut self, name: &str) -> io::Result<Option<Link>> {
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::GetLink(message), NLM_F_ACK) {
            Ok(replies) => Ok(replies.into_iter().find_map(|reply| match reply {
                RouteNetlinkMessage::NewLink(link) => Some(to_link(&link)),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates an up bridge `name` with a fixed MAC (so it never changes as ports come and go).
    pub fn create_bridge(&mut self, name: &str, mtu: u32, mac: [u8; 6]) -> io::Result<()> {
        let mut message = LinkMessage::default();
        message.header.flags = LinkFlags::Up;
        message.header.change_mask = LinkFlags::Up;
        message.attributes = vec![
            LinkAttribute::IfName(name.to_string()),
            LinkAttribute::Mtu(mtu),
            LinkAttribute::Address(mac.to_vec()),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]),
        ];
        self.change(
            RouteNetlinkMessage::NewLink(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Creates a veth pair in ONE request: `host` here (MAC `host_mac`), up, enslaved to `master`; its peer
    /// `peer` created directly inside the namespace `peer_netns` (down), with the same MTU and
    /// `peer_mac` if given (else the kernel picks one).
    #[allow(clippy::too_many_arguments)] // one kernel request's parameters, named at the call
    pub fn create_veth(
        &mut self,
        host: &str,
        host_mac: [u8; 6],
        master: u32,
        mtu: u32,
        peer: &str,
        peer_mac: Option<[u8; 6]>,
        peer_netns: &File,
    ) -> io::Result<()> {
        // The peer cannot be set up here: veth refuses to open a peer not yet paired (ENOTCONN).
        let mut peer_message = LinkMessage::default();
        peer_message.attributes = vec![
            LinkAttribute::IfName(peer.to_string()),
            LinkAttribute::Mtu(mtu),
            LinkAttribute::NetNsFd(peer_netns.as_raw_fd()),
        ];
        if let Some(mac) = peer_mac {
            peer_message
                .attributes
                .push(LinkAttribute::Address(mac.to_vec()));
        }
        let mut message = LinkMessage::default();
        message.header.flags = LinkFlags::Up;
        message.header.change_mask = LinkFlags::Up;
        message.attributes = vec![
            LinkAttribute::IfName(host.to_string()),
            LinkAttribute::Address(host_mac.to_vec()),
            LinkAttribute::Mtu(mtu),
            LinkAttribute::Controller(master),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_message))),
            ]),
        ];
        self.change(
            RouteNetlinkMessage::NewLink(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Turns on hairpin mode of bridge port `name` (addressed by name: no lookup needed).
    pub fn set_hairpin(&mut self, name: &str) -> io::Result<()> {
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        message.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                true,
            )])),
        ]));
        self.change(RouteNetlinkMessage::NewLink(message), 0)
    }

    /// Sets link `index` administratively up.
    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.header.flags = LinkFlags::Up;
        message.header.change_mask = LinkFlags::Up;
        self.change(RouteNetlinkMessage::SetLink(message), 0)
    }

    /// Sets the MTU of link `index` (through the device, so a bridge keeps it as user-set).
    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> io::Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.attributes.push(LinkAttribute::Mtu(mtu));
        self.change(RouteNetlinkMessage::SetLink(message), 0)
    }

    /// Turns on `arp_notify` for link `index`: when it next comes up (and whenever its MAC
    /// changes) the kernel broadcasts a gratuitous ARP for each of its IPv4 addresses. Done this
    /// way rather than from a packet socket, whose close waits for an RCU grace period (~10 ms).
    pub fn set_arp_notify(&mut self, index: u32) -> io::Result<()> {
        let mut conf = InetDevConf::default();
        conf.arp_notify = 1;
        let mut message = LinkMessage::default();
        message.header.index = index;
        message
            .attributes
            .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
                AfSpecInet::DevConfRequest(conf),
            ])]));
        self.change(RouteNetlinkMessage::SetLink(message), 0)
    }

    /// Sets the hardware address of link `index`.
    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> io::Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message
            .attributes
            .push(LinkAttribute::Address(mac.to_vec()));
        self.change(RouteNetlinkMessage::SetLink(message), 0)
    }

    /// Deletes link `index` (for a veth, both ends go).
    pub fn delete_link(&mut self, index: u32) -> io::Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        self.change(RouteNetlinkMessage::DelLink(message), 0)
    }

    /// Deletes link `index` from a detached child process, consuming this socket (which must be
    /// bound to the link's namespace and used for nothing else).
    ///
    /// The kernel unlists a device within a fraction of a millisecond but then keeps the
    /// requesting task in an RCU barrier for ~20 ms before answering. The child sits that out,
    /// so the caller only waits until the device is gone (see `wait_link_deleted`).
    pub fn delete_link_detached(mut self, index: u32) -> io::Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        let request = self.encode(RouteNetlinkMessage::DelLink(message), 0);
        let devnull = File::options().read(true).write(true).open("/dev/null")?;
        let socket_fd = self.socket.as_raw_fd();
        let null_fd = devnull.as_raw_fd();
        // SAFETY: the plugin never starts a thread, so the child is a complete copy, and it
        // calls only async-signal-safe functions before `_exit`.
        match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
            ForkResult::Child => unsafe {
                // Detach from the runtime: own session, no inherited stdio pipes kept open.
                libc::setsid();
                libc::dup2(null_fd, 0);
                libc::dup2(null_fd, 1);
                libc::dup2(null_fd, 2);
                libc::send(socket_fd, request.as_ptr().cast(), request.len(), 0);
                libc::_exit(0)
            },
            ForkResult::Parent { .. } => Ok(()),
        }
    }

    /// Subscribes this socket to link notifications (`RTNLGRP_LINK`), so that
    /// [`Netlink::wait_link_deleted`] can block until the kernel announces a deletion. Replies to
    /// later requests are still told apart by their sequence number.
    pub fn subscribe_links(&mut self) -> io::Result<()> {
        self.socket.add_membership(RTNLGRP_LINK)
    }

    /// Blocks until an `RTM_DELLINK` for link `index` arrives (true) or `timeout` passes, or the
    /// notifications overflowed (false: the caller must look for the link itself). Needs
    /// [`Netlink::subscribe_links`] before the deletion was requested.
    pub fn wait_link_deleted(&mut self, index: u32, timeout: Duration) -> io::Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let millis = i32::try_from(remaining.as_millis()).unwrap_or(i32::MAX);
            if millis == 0 {
                return Ok(false);
            }
            let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
            match nix::poll::poll(
                &mut fds,
                PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX),
            ) {
                Ok(0) => return Ok(false),
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            self.buf.clear();
            match self.socket.recv(&mut self.buf, 0) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(false),
                Err(e) => return Err(e),
            }
            let mut offset = 0;
            while offset < self.buf.len() {
                let Ok(message) =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[offset..])
                else {
                    break;
                };
                let length = message.header.length as usize;
                if length == 0 {
                    break;
                }
                offset += (length + 3) & !3;
                if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) =
                    message.payload
                {
                    if link.header.index == index {
                        return Ok(true);
                    }
                }
            }
        }
    }

    /// The IPv4 addresses on link `index`.
    pub fn addresses(&mut self, index: u32) -> io::Result<Vec<Ipv4Net>> {
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.index = index;
        let replies = self.request(RouteNetlinkMessage::GetAddress(message), NLM_F_DUMP)?;
        Ok(replies
            .into_iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewAddress(addr) if addr.header.index == index => addr
                    .attributes
                    .iter()
                    .find_map(|attr| match attr {
                        AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                        _ => None,
                    })
                    .and_then(|ip| Ipv4Net::new(ip, addr.header.prefix_len)),
                _ => None,
            })
            .collect())
    }

    /// Adds `net` (address/prefix) to link `index`.
    pub fn add_address(&mut self, index: u32, net: Ipv4Net) -> io::Result<()> {
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.prefix_len = net.prefix();
        message.header.index = index;
        message.attributes = vec![
            AddressAttribute::Local(IpAddr::V4(net.addr())),
            AddressAttribute::Address(IpAddr::V4(net.addr())),
            AddressAttribute::Broadcast(net.broadcast()),
        ];
        self.change(
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Removes `net` (address/prefix) from link `index`.
    pub fn delete_address(&mut self, index: u32, net: Ipv4Net) -> io::Result<()> {
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.prefix_len = net.prefix();
        message.header.index = index;
        message.attributes = vec![AddressAttribute::Local(IpAddr::V4(net.addr()))];
        self.change(RouteNetlinkMessage::DelAddress(message), 0)
    }

    /// Adds a main-table route to `dst` via `gw` out of link `oif`.
    pub fn add_route(&mut self, dst: Ipv4Net, gw: Option<Ipv4Addr>, oif: u32) -> io::Result<()> {
        let mut message = RouteMessage::default();
        message.header.address_family = AddressFamily::Inet;
        message.header.destination_prefix_length = dst.prefix();
        message.header.table = RouteHeader::RT_TABLE_MAIN;
        message.header.protocol = RouteProtocol::Boot;
        message.header.kind = RouteType::Unicast;
        message.header.scope = if gw.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        if dst.prefix() > 0 {
            message
                .attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(
                    dst.network(),
                )));
        }
        if let Some(gw) = gw {
            message
                .attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        }
        message.attributes.push(RouteAttribute::Oif(oif));
        self.change(
            RouteNetlinkMessage::NewRoute(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// The IPv6 addresses of link `index` (link-local ones included).
    pub fn addresses6(&mut self, index: u32) -> io::Result<Vec<Ipv6Net>> {
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet6;
        message.header.index = index;
        let replies = self.request(RouteNetlinkMessage::GetAddress(message), NLM_F_DUMP)?;
        Ok(replies
            .into_iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewAddress(addr) if addr.header.index == index => addr
                    .attributes
                    .iter()
                    .find_map(|attr| match attr {
                        AddressAttribute::Address(IpAddr::V6(ip)) => Some(*ip),
                        _ => None,
                    })
                    .and_then(|ip| Ipv6Net::new(ip, addr.header.prefix_len)),
                _ => None,
            })
            .collect())
    }

    /// Adds the IPv6 `net` to link `index` without duplicate address detection: the address is
    /// allocated to this one pod (the gateway: to this one bridge), and a tentative address
    /// would hold the pod's traffic back for a second or more.
    pub fn add_address6(&mut self, index: u32, net: Ipv6Net) -> io::Result<()> {
        use netlink_packet_route::address::AddressFlags;
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet6;
        message.header.prefix_len = net.prefix();
        message.header.index = index;
        message.attributes = vec![
            AddressAttribute::Address(IpAddr::V6(net.addr())),
            AddressAttribute::Flags(AddressFlags::Nodad),
        ];
        self.change(
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Adds a main-table IPv6 route to `dst` via `gw` out of link `oif`.
    pub fn add_route6(&mut self, dst: Ipv6Net, gw: Option<Ipv6Addr>, oif: u32) -> io::Result<()> {
        let mut message = RouteMessage::default();
        message.header.address_family = AddressFamily::Inet6;
        message.header.destination_prefix_length = dst.prefix();
        message.header.table = RouteHeader::RT_TABLE_MAIN;
        message.header.protocol = RouteProtocol::Boot;
        message.header.kind = RouteType::Unicast;
        message.header.scope = RouteScope::Universe;
        if dst.prefix() > 0 {
            message
                .attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet6(
                    dst.network(),
                )));
        }
        if let Some(gw) = gw {
            message
                .attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet6(gw)));
        }
        message.attributes.push(RouteAttribute::Oif(oif));
        self.change(
            RouteNetlinkMessage::NewRoute(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Every IPv6 route of the main table.
    pub fn routes6(&mut self) -> io::Result<Vec<RouteEntry6>> {
        let mut message = RouteMessage::default();
        message.header.address_family = AddressFamily::Inet6;
        let replies = self.request(RouteNetlinkMessage::GetRoute(message), NLM_F_DUMP)?;
        Ok(replies
            .into_iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewRoute(route)
                    if route.header.table == RouteHeader::RT_TABLE_MAIN =>
                {
                    let mut dst = Ipv6Addr::UNSPECIFIED;
                    let mut gw = None;
                    for attr in &route.attributes {
                        match attr {
                            RouteAttribute::Destination(RouteAddress::Inet6(ip)) => dst = *ip,
                            RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => gw = Some(*ip),
                            _ => {}
                        }
                    }
                    Some(RouteEntry6 {
                        dst: Ipv6Net::new(dst, route.header.destination_prefix_length)?,
                        gw,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// Every IPv4 route of the main table.
    pub fn routes(&mut self) -> io::Result<Vec<RouteEntry>> {
        let mut message = RouteMessage::default();
        message.header.address_family = AddressFamily::Inet;
        let replies = self.request(RouteNetlinkMessage::GetRoute(message), NLM_F_DUMP)?;
        Ok(replies
            .into_iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewRoute(route)
                    if route.header.table == RouteHeader::RT_TABLE_MAIN =>
                {
                    to_route(&route)
                }
                _ => None,
            })
            .collect())
    }
}

fn to_link(message: &LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        mac: String::new(),
        mtu: 0,
        up: message.header.flags.contains(LinkFlags::Up),
        master: None,
        kind: None,
        peer_netnsid: None,
    };
    for attr in &message.attributes {
        match attr {
            LinkAttribute::IfName(name) => link.name = name.clone(),
            LinkAttribute::Address(mac) => link.mac = format_mac(mac),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::Controller(master) => link.master = Some(*master),
            LinkAttribute::LinkNetNsId(id) => link.peer_netnsid = Some(*id),
            LinkAttribute::LinkInfo(infos) => {
                link.kind = infos.iter().find_map(|info| match info {
                    LinkInfo::Kind(kind) => Some(kind.to_string()),
                    _ => None,
                })
            }
            _ => {}
        }
    }
    link
}

fn to_route(route: &RouteMessage) -> Option<RouteEntry> {
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut gw = None;
    let mut oif = None;
    for attr in &route.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = *ip,
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gw = Some(*ip),
            RouteAttribute::Oif(index) => oif = Some(*index),
            _ => {}
        }
    }
    Some(RouteEntry {
        dst: Ipv4Net::new(dst, route.header.destination_prefix_length)?,
        gw,
        oif,
    })
}

/// Formats a hardware address as lower-case colon-separated hex.
pub fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A netlink socket inside a network namespace (see [`Netns::within`]).
pub trait NetnsNetlink {
    /// Opens a netlink socket inside this namespace.
    fn netlink(&self) -> Result<Netlink, NetnsError>;
}

impl NetnsNetlink for Netns {
    fn netlink(&self) -> Result<Netlink, NetnsError> {
        self.within(Netlink::open)?
            .map_err(|source| NetnsError::Io {
                op: "open netlink socket in",
                path: self.path().to_path_buf(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_format() {
        assert_eq!(
            format_mac(&[0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x01]),
            "0a:58:0a:f4:01:01"
        );
    }
}
