//! The kernel's WireGuard, configured over generic netlink (family `wireguard`, the interface
//! `wg(8)` and flanneld's wgctrl use): the device's private key and listen port, and its peers
//! reconciled against what the kernel holds — stale peers removed, changed ones updated in
//! place (a peer is never removed to be re-added, so its sessions survive a resync).

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};

use ipnetwork::IpNetwork;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlMessage};
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardMessage, WireguardPeer, WireguardPeerAttribute, WireguardPeerFlags,
};
use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr as NlAddr};

use super::peers::PeerSpec;
use crate::wireguard_key::{SecretKey, WireGuardKey};

/// Peers per SET_DEVICE message: a message must fit the kernel's netlink buffer, as `wg`
/// splits its own.
const PEERS_PER_MESSAGE: usize = 32;

/// A peer as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPeer {
    /// Its endpoint, if set.
    pub endpoint: Option<SocketAddr>,
    /// Its allowed IPs, both families.
    pub allowed: Vec<IpNetwork>,
}

/// What to change on the device: peers to add or update, peers to remove.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerChanges {
    /// Peers missing or different in the kernel.
    pub upsert: Vec<PeerSpec>,
    /// Peers the kernel holds that no lease justifies.
    pub remove: Vec<WireGuardKey>,
    /// Desired peers already as wanted.
    pub present: usize,
}

/// Compares the desired peers with the kernel's (pure).
pub fn peer_changes(
    desired: &BTreeMap<WireGuardKey, PeerSpec>,
    actual: &BTreeMap<WireGuardKey, KernelPeer>,
) -> PeerChanges {
    let mut changes = PeerChanges::default();
    for (key, spec) in desired {
        let same = actual.get(key).is_some_and(|k| {
            let mut have = k.allowed.clone();
            have.sort();
            let mut want = spec.allowed.clone();
            want.sort();
            k.endpoint == Some(spec.endpoint) && have == want
        });
        if same {
            changes.present += 1;
        } else {
            changes.upsert.push(spec.clone());
        }
    }
    changes.remove = actual
        .keys()
        .filter(|k| !desired.contains_key(k))
        .copied()
        .collect();
    changes
}

/// The peer attributes of one SET_DEVICE entry: key, endpoint, allowed IPs replaced, PSK and
/// keepalive as flanneld's `addPeer` sets them.
fn peer_attributes(spec: &PeerSpec, psk: Option<&SecretKey>, keepalive: u16) -> WireguardPeer {
    let mut attrs = vec![
        WireguardPeerAttribute::PublicKey(*spec.key.as_bytes()),
        WireguardPeerAttribute::Flags(WireguardPeerFlags::ReplaceAllowedIps),
        WireguardPeerAttribute::Endpoint(spec.endpoint),
        WireguardPeerAttribute::PersistentKeepalive(keepalive),
        WireguardPeerAttribute::AllowedIps(
            spec.allowed
                .iter()
                .map(|net| {
                    let family = match net {
                        IpNetwork::V4(_) => WireguardAddressFamily::Ipv4,
                        IpNetwork::V6(_) => WireguardAddressFamily::Ipv6,
                    };
                    WireguardAllowedIp(vec![
                        WireguardAllowedIpAttr::Family(family),
                        WireguardAllowedIpAttr::IpAddr(net.network()),
                        WireguardAllowedIpAttr::Cidr(net.prefix()),
                    ])
                })
                .collect(),
        ),
    ];
    if let Some(psk) = psk {
        attrs.push(WireguardPeerAttribute::PresharedKey(*psk.as_bytes()));
    }
    WireguardPeer(attrs)
}

/// A generic netlink socket to the kernel's WireGuard family, opened in the calling thread's
/// network namespace.
pub struct WireGuardNetlink {
    socket: Socket,
    family: u16,
    seq: u32,
}

fn other(what: impl std::fmt::Display) -> io::Error {
    io::Error::other(what.to_string())
}

impl WireGuardNetlink {
    /// Opens the socket and resolves the `wireguard` family; fails where the kernel has no
    /// WireGuard.
    pub fn open() -> io::Result<WireGuardNetlink> {
        let mut socket = Socket::new(NETLINK_GENERIC)?;
        socket.bind_auto()?;
        socket.connect(&NlAddr::new(0, 0))?;
        let mut nl = WireGuardNetlink {
            socket,
            family: 0,
            seq: 0,
        };
        let mut msg = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(
                WireguardMessage::family_name().to_string(),
            )],
        });
        msg.finalize();
        let replies = nl.exchange(msg, NLM_F_REQUEST | NLM_F_ACK)?;
        nl.family = replies
            .iter()
            .flat_map(|r: &GenlCtrl| r.nlas.iter())
            .find_map(|a| match a {
                GenlCtrlAttrs::FamilyId(id) => Some(*id),
                _ => None,
            })
            .ok_or_else(|| other("generic netlink family wireguard not found"))?;
        Ok(nl)
    }

    /// Sends one request and collects the replies' payloads until the ack or the dump's end.
    fn exchange<F>(&mut self, msg: GenlMessage<F>, flags: u16) -> io::Result<Vec<F>>
    where
        F: GenlFamily + Clone + std::fmt::Debug + PartialEq + Eq,
        GenlMessage<F>:
            netlink_packet_core::NetlinkSerializable + netlink_packet_core::NetlinkDeserializable,
    {
        self.seq = self.seq.wrapping_add(1);
        let mut nlmsg = NetlinkMessage::from(msg);
        nlmsg.header.flags = flags;
        nlmsg.header.sequence_number = self.seq;
        nlmsg.finalize();
        let mut buf = vec![0u8; nlmsg.buffer_len()];
        nlmsg.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < data.len() {
                let reply = <NetlinkMessage<GenlMessage<F>>>::deserialize(&data[offset..])
                    .map_err(other)?;
                let len = reply.header.length as usize;
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(_) => Err(e.to_io()),
                        }
                    }
                    NetlinkPayload::InnerMessage(m) => out.push(m.payload),
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
            if flags & NLM_F_DUMP == 0 && flags & NLM_F_ACK == 0 {
                return Ok(out);
            }
        }
    }

    fn message(
        &self,
        cmd: WireguardCmd,
        attributes: Vec<WireguardAttribute>,
    ) -> GenlMessage<WireguardMessage> {
        let mut msg = GenlMessage::from_payload(WireguardMessage { cmd, attributes });
        msg.set_resolved_family_id(self.family);
        msg.finalize();
        msg
    }

    /// The peers device `ifname` holds.
    pub fn peers(&mut self, ifname: &str) -> io::Result<BTreeMap<WireGuardKey, KernelPeer>> {
        let msg = self.message(
            WireguardCmd::GetDevice,
            vec![WireguardAttribute::IfName(ifname.to_string())],
        );
        let replies = self.exchange(msg, NLM_F_REQUEST | NLM_F_DUMP)?;
        let mut peers = BTreeMap::new();
        for reply in replies {
            for attr in reply.attributes {
                let WireguardAttribute::Peers(list) = attr else {
                    continue;
                };
                for WireguardPeer(attrs) in list {
                    let mut key = None;
                    let mut peer = KernelPeer {
                        endpoint: None,
                        allowed: Vec::new(),
                    };
                    for a in attrs {
                        match a {
                            WireguardPeerAttribute::PublicKey(k) => {
                                key = Some(WireGuardKey::from_bytes(k))
                            }
                            WireguardPeerAttribute::Endpoint(e) => {
                                // The kernel shows a v4 endpoint of a dual-stack socket as it
                                // was set.
                                peer.endpoint = Some(e)
                            }
                            WireguardPeerAttribute::AllowedIps(ips) => {
                                peer.allowed.extend(ips.iter().filter_map(allowed_ip))
                            }
                            _ => {}
                        }
                    }
                    if let Some(key) = key {
                        peers.insert(key, peer);
                    }
                }
            }
        }
        Ok(peers)
    }

    /// Sets the private key and listen port of `ifname` (flanneld's `newWGDevice`).
    pub fn set_device(&mut self, ifname: &str, private: &SecretKey, port: u16) -> io::Result<()> {
        let msg = self.message(
            WireguardCmd::SetDevice,
            vec![
                WireguardAttribute::IfName(ifname.to_string()),
                WireguardAttribute::PrivateKey(*private.as_bytes()),
                WireguardAttribute::ListenPort(port),
            ],
        );
        self.exchange(msg, NLM_F_REQUEST | NLM_F_ACK).map(drop)
    }

    /// Applies `changes` to `ifname`: removals, then additions and updates, in messages of
    /// [`PEERS_PER_MESSAGE`] peers.
    pub fn apply(
        &mut self,
        ifname: &str,
        changes: &PeerChanges,
        psk: Option<&SecretKey>,
        keepalive: u16,
    ) -> io::Result<()> {
        let removals: Vec<WireguardPeer> = changes
            .remove
            .iter()
            .map(|k| {
                WireguardPeer(vec![
                    WireguardPeerAttribute::PublicKey(*k.as_bytes()),
                    WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe),
                ])
            })
            .collect();
        let upserts: Vec<WireguardPeer> = changes
            .upsert
            .iter()
            .map(|s| peer_attributes(s, psk, keepalive))
            .collect();
        for chunk in removals
            .chunks(PEERS_PER_MESSAGE)
            .chain(upserts.chunks(PEERS_PER_MESSAGE))
        {
            let msg = self.message(
                WireguardCmd::SetDevice,
                vec![
                    WireguardAttribute::IfName(ifname.to_string()),
                    WireguardAttribute::Peers(chunk.to_vec()),
                ],
            );
            self.exchange(msg, NLM_F_REQUEST | NLM_F_ACK)?;
        }
        Ok(())
    }
}

fn allowed_ip(ip: &WireguardAllowedIp) -> Option<IpNetwork> {
    let mut addr: Option<IpAddr> = None;
    let mut cidr = None;
    for a in &ip.0 {
        match a {
            WireguardAllowedIpAttr::IpAddr(ip) => addr = Some(*ip),
            WireguardAllowedIpAttr::Cidr(c) => cidr = Some(*c),
            _ => {}
        }
    }
    IpNetwork::new(addr?, cidr?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(key: u8, endpoint: &str, allowed: &str) -> PeerSpec {
        PeerSpec {
            key: WireGuardKey::from_bytes([key; 32]),
            endpoint: endpoint.parse().unwrap(),
            allowed: vec![allowed.parse().unwrap()],
        }
    }

    #[test]
    fn kernel_peers_are_reconciled_not_replaced() {
        let keep = spec(1, "192.0.2.1:51820", "10.244.1.0/24");
        let moved = spec(2, "192.0.2.2:51820", "10.244.2.0/24");
        let new = spec(3, "192.0.2.3:51820", "10.244.3.0/24");
        let desired: BTreeMap<_, _> = [keep.clone(), moved.clone(), new.clone()]
            .into_iter()
            .map(|s| (s.key, s))
            .collect();
        let kernel = |s: &PeerSpec, endpoint: &str| KernelPeer {
            endpoint: Some(endpoint.parse().unwrap()),
            allowed: s.allowed.clone(),
        };
        let gone = WireGuardKey::from_bytes([9; 32]);
        let actual: BTreeMap<_, _> = [
            (keep.key, kernel(&keep, "192.0.2.1:51820")),
            (moved.key, kernel(&moved, "192.0.2.99:51820")),
            (gone, kernel(&keep, "192.0.2.9:51820")),
        ]
        .into_iter()
        .collect();
        let c = peer_changes(&desired, &actual);
        assert_eq!(c.present, 1);
        assert_eq!(c.upsert, vec![moved, new]);
        assert_eq!(c.remove, vec![gone]);
    }

    #[test]
    fn a_peer_entry_is_flanneld_add_peer() {
        let s = spec(1, "192.0.2.1:51820", "10.244.1.0/24");
        let psk = SecretKey::from_bytes([5; 32]);
        let WireguardPeer(attrs) = peer_attributes(&s, Some(&psk), 25);
        assert!(attrs.contains(&WireguardPeerAttribute::Flags(
            WireguardPeerFlags::ReplaceAllowedIps
        )));
        assert!(attrs.contains(&WireguardPeerAttribute::PersistentKeepalive(25)));
        assert!(attrs.contains(&WireguardPeerAttribute::PresharedKey([5; 32])));
        let allowed = attrs.iter().find_map(|a| match a {
            WireguardPeerAttribute::AllowedIps(ips) => Some(ips.clone()),
            _ => None,
        });
        let allowed = allowed.unwrap();
        assert_eq!(allowed.len(), 1);
        assert_eq!(
            allowed_ip(&allowed[0]),
            Some("10.244.1.0/24".parse().unwrap())
        );
    }

    #[test]
    fn an_ipv6_peer_entry_has_an_ipv6_endpoint_and_allowed_ips() {
        let s = PeerSpec {
            key: WireGuardKey::from_bytes([1; 32]),
            endpoint: "[2001:db8::2]:51821".parse().unwrap(),
            allowed: vec![
                "10.244.2.0/24".parse().unwrap(),
                "fd00:10:244:2::/64".parse().unwrap(),
            ],
        };
        let WireguardPeer(attrs) = peer_attributes(&s, None, 0);
        assert!(attrs.contains(&WireguardPeerAttribute::Endpoint(s.endpoint)));
        let allowed = attrs
            .iter()
            .find_map(|a| match a {
                WireguardPeerAttribute::AllowedIps(ips) => Some(ips.clone()),
                _ => None,
            })
            .unwrap();
        let got: Vec<IpNetwork> = allowed.iter().filter_map(allowed_ip).collect();
        assert_eq!(got, s.allowed);
        assert!(allowed[1].0.contains(&WireguardAllowedIpAttr::Family(
            WireguardAddressFamily::Ipv6
        )));
    }
}
