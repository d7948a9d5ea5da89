//! The WireGuard peers a node's leases justify (as flanneld's `addPeer`): per accepted
//! `wireguard` lease its public key, its endpoint `PublicIP:Port` (a lease without a port
//! means our own listen port, as Flannel reads it) and its allowed IPs, the peer's pod subnet.
//! Pure: the same list feeds the userspace data path and the kernel device.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use ipnetwork::Ipv4Network;

use crate::lease::Lease;
use crate::wireguard_key::WireGuardKey;

/// The lease `BackendType` of this backend.
pub const BACKEND_TYPE: &str = "wireguard";

/// One WireGuard peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    /// The peer's public key.
    pub key: WireGuardKey,
    /// Where its handshakes and packets go.
    pub endpoint: SocketAddrV4,
    /// The pod subnet(s) it may send from and that are routed to it (IPv4 now; the IPv6
    /// subnet of a dual-stack lease joins here).
    pub allowed: Vec<Ipv4Network>,
}

/// The peers of `leases`, keyed by public key, leaving out our own subnet and any lease whose
/// data does not make a peer (validation refuses those before they get here). Two leases
/// with one key (a node that moved subnets) merge their allowed IPs and keep the endpoint of
/// the first by subnet order, as a WireGuard device holds one entry per key.
pub fn wireguard_peers(
    own: Ipv4Network,
    own_port: u16,
    leases: &[Lease],
) -> BTreeMap<WireGuardKey, PeerSpec> {
    let mut peers: BTreeMap<WireGuardKey, PeerSpec> = BTreeMap::new();
    for lease in leases {
        if lease.subnet == own || lease.attrs.backend_type != BACKEND_TYPE {
            continue;
        }
        let Some((_, Ok(key))) = lease.attrs.wireguard_public_key() else {
            continue;
        };
        let Ok(port) = lease.attrs.wireguard_port() else {
            continue;
        };
        let endpoint = SocketAddrV4::new(lease.attrs.public_ip, port.unwrap_or(own_port));
        peers
            .entry(key)
            .and_modify(|p| p.allowed.push(lease.subnet))
            .or_insert_with(|| PeerSpec {
                key,
                endpoint,
                allowed: vec![lease.subnet],
            });
    }
    peers
}

/// The peer whose endpoint address is `ip`, among `peers` (a datagram's sender).
pub fn by_endpoint_ip(
    peers: &BTreeMap<WireGuardKey, PeerSpec>,
) -> BTreeMap<Ipv4Addr, WireGuardKey> {
    peers.values().map(|p| (*p.endpoint.ip(), p.key)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;

    fn lease(subnet: &str, ip: &str, data: serde_json::Value) -> Lease {
        Lease {
            subnet: subnet.parse().unwrap(),
            ipv6_subnet: None,
            attrs: LeaseAttrs {
                public_ip: ip.parse().unwrap(),
                public_ipv6: None,
                backend_type: BACKEND_TYPE.to_string(),
                backend_data: Some(data),
                backend_v6_data: None,
            },
            etcd_lease: Some(1),
            mod_revision: 1,
        }
    }

    const KEY_A: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
    const KEY_B: &str = "Y2FD6uTgrq+/bbBAXCNOtE+PGk8Papoh7qaWBpQUXn0=";

    #[test]
    fn peers_are_flannels_add_peer() {
        let own: Ipv4Network = "10.244.1.0/24".parse().unwrap();
        let leases = [
            lease(
                "10.244.1.0/24",
                "192.0.2.1",
                serde_json::json!({"PublicKey": KEY_B, "Port": 51820}),
            ),
            lease(
                "10.244.2.0/24",
                "192.0.2.2",
                serde_json::json!({"PublicKey": KEY_A, "Port": 7000}),
            ),
            // No port: our own listen port.
            lease(
                "10.244.3.0/24",
                "192.0.2.3",
                serde_json::json!({"PublicKey": KEY_B}),
            ),
        ];
        let peers = wireguard_peers(own, 51820, &leases);
        assert_eq!(peers.len(), 2, "own lease left out: {peers:?}");
        let a = &peers[&WireGuardKey::parse(KEY_A).unwrap()];
        assert_eq!(a.endpoint, "192.0.2.2:7000".parse().unwrap());
        assert_eq!(a.allowed, vec!["10.244.2.0/24".parse().unwrap()]);
        let b = &peers[&WireGuardKey::parse(KEY_B).unwrap()];
        assert_eq!(b.endpoint, "192.0.2.3:51820".parse().unwrap());
        let by_ip = by_endpoint_ip(&peers);
        assert_eq!(by_ip[&"192.0.2.2".parse().unwrap()], a.key);
    }
}
