//! The WireGuard peers a node's leases justify, per device, as flanneld's
//! `handleSubnetEvents` and `addPeer` make them; and the lease this node publishes
//! (`newSubnetAttrs`). Pure: the same lists feed the userspace data path and the kernel device.
//!
//! Flannel's `Mode` lays the devices out ([`DeviceRole`]): `separate` has `flannel-wg` for
//! IPv4 (peer `PublicIP:BackendData.Port`, allowed IPs the IPv4 pod subnet) and
//! `flannel-wg-v6` for IPv6 (peer `[PublicIPv6]:BackendV6Data.Port`, the IPv6 pod subnet);
//! `auto`, `ipv4` and `ipv6` have one `flannel-wg` whose peers carry both pod subnets and
//! whose endpoint is the peer's IPv4 or IPv6 address as the mode says. A lease without a port
//! means the device's own listen port, as Flannel reads it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use crate::config::WireGuardMode;
use crate::lease::{Lease, LeaseAttrs};
use crate::wireguard_key::WireGuardKey;

/// The lease `BackendType` of this backend.
pub const BACKEND_TYPE: &str = "wireguard";

/// One WireGuard peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    /// The peer's public key.
    pub key: WireGuardKey,
    /// Where its handshakes and packets go.
    pub endpoint: SocketAddr,
    /// The pod subnets it may send from and that are routed to it.
    pub allowed: Vec<IpNetwork>,
}

/// What one WireGuard device carries, as Flannel's `Mode` lays devices out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRole {
    /// `flannel-wg` of `Mode: separate`: IPv4 pods to IPv4 endpoints (`BackendData`).
    Ipv4,
    /// `flannel-wg-v6` of `Mode: separate`: IPv6 pods to IPv6 endpoints (`BackendV6Data`).
    Ipv6,
    /// The one `flannel-wg` of `auto`, `ipv4` or `ipv6`: both families' pods, to the
    /// endpoint the mode picks.
    Single(WireGuardMode),
}

/// The endpoint family of a peer of a single-device mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointFamily {
    /// The peer's `PublicIP`.
    V4,
    /// The peer's `PublicIPv6`.
    V6,
}

/// What peers are computed against: this node and its network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerContext {
    /// This node's IPv4 subnet; `None` in an IPv6-only network.
    pub own: Option<Ipv4Network>,
    /// This node's IPv6 subnet; `None` without IPv6.
    pub own6: Option<Ipv6Network>,
    /// The network has IPv4 (`EnableIPv4`).
    pub ipv4: bool,
    /// The network has IPv6 (`EnableIPv6`).
    pub ipv6: bool,
    /// The device's listen port: a peer's port when its lease names none.
    pub listen_port: u16,
    /// This node has an IPv4 underlay address (Flannel's `ExtAddr != nil`), for `auto`.
    pub local_v4: bool,
    /// This node's IPv6 underlay address, for `auto`.
    pub local_v6: Option<Ipv6Addr>,
}

/// RFC 1918, as Flannel's `IP4.IsPrivate`.
fn is_private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    a == 10 || (a == 172 && b & 0xf0 == 16) || (a == 192 && b == 168)
}

/// RFC 4193 (`fc00::/7`), as Flannel's `IP6.IsPrivate`.
fn is_private_v6(ip: Ipv6Addr) -> bool {
    ip.octets()[0] & 0xfe == 0xfc
}

/// Flannel's `selectMode` of `Mode: auto`: IPv4 unless the peer has an IPv6 address and
/// either its IPv4 one is private (or this node has no IPv4 underlay) while both IPv6 ones
/// are public. Unlike Flannel, an IPv6-only peer (`PublicIP` `0.0.0.0`) is reached over IPv6:
/// `0.0.0.0` is no endpoint.
pub fn select_family(
    public_ip: Ipv4Addr,
    public_ipv6: Option<Ipv6Addr>,
    local_v4: bool,
    local_v6: Option<Ipv6Addr>,
) -> EndpointFamily {
    let Some(ip6) = public_ipv6 else {
        return EndpointFamily::V4;
    };
    if public_ip.is_unspecified() {
        return EndpointFamily::V6;
    }
    if !is_private_v4(public_ip) && local_v4 {
        return EndpointFamily::V4;
    }
    if !is_private_v6(ip6) && local_v6.is_some_and(|l| !is_private_v6(l)) {
        return EndpointFamily::V6;
    }
    EndpointFamily::V4
}

/// A lease's WireGuard section, as a peer of it: key and port (`None`: no usable key or a
/// bad port, which validation refuses before this).
fn section(attrs: &LeaseAttrs, v6: bool) -> Option<(WireGuardKey, Option<u16>)> {
    let (key, port) = if v6 {
        (attrs.wireguard_v6_public_key(), attrs.wireguard_v6_port())
    } else {
        (attrs.wireguard_public_key(), attrs.wireguard_port())
    };
    let Some((_, Ok(key))) = key else {
        return None;
    };
    Some((key, port.ok()?))
}

/// Whether `lease` is this node's own.
fn is_own(ctx: &PeerContext, lease: &Lease) -> bool {
    (lease.has_ipv4() && Some(lease.subnet) == ctx.own)
        || (lease.ipv6_subnet.is_some() && lease.ipv6_subnet == ctx.own6)
}

/// The peer device `role` gets for `lease`, if any.
fn peer_of(ctx: &PeerContext, role: DeviceRole, lease: &Lease) -> Option<PeerSpec> {
    let a = &lease.attrs;
    let v4 = (ctx.ipv4 && lease.has_ipv4()).then_some(lease.subnet);
    let v6 = if ctx.ipv6 { lease.ipv6_subnet } else { None };
    let port = |p: Option<u16>| p.unwrap_or(ctx.listen_port);
    match role {
        DeviceRole::Ipv4 => {
            let subnet = v4?;
            let (key, p) = section(a, false)?;
            Some(PeerSpec {
                key,
                endpoint: SocketAddr::new(IpAddr::V4(a.public_ip), port(p)),
                allowed: vec![IpNetwork::V4(subnet)],
            })
        }
        DeviceRole::Ipv6 => {
            let subnet = v6?;
            let (key, p) = section(a, true)?;
            Some(PeerSpec {
                key,
                endpoint: SocketAddr::new(IpAddr::V6(a.public_ipv6?), port(p)),
                allowed: vec![IpNetwork::V6(subnet)],
            })
        }
        DeviceRole::Single(mode) => {
            let s4 = match v4 {
                Some(_) => Some(section(a, false)?),
                None => None,
            };
            let s6 = match v6 {
                Some(_) => Some(section(a, true)?),
                None => None,
            };
            // Flannel's peer key is the last section read: BackendV6Data when IPv6 is on.
            let (key, _) = s6.or(s4)?;
            // A mode naming a family the network lacks uses the other one (with IPv4 alone
            // every mode is one device over IPv4, as Flannel's works out in practice).
            let family = match mode {
                WireGuardMode::Ipv6 if ctx.ipv6 => EndpointFamily::V6,
                WireGuardMode::Ipv4 | WireGuardMode::Separate if ctx.ipv4 => EndpointFamily::V4,
                WireGuardMode::Ipv4 | WireGuardMode::Separate => EndpointFamily::V6,
                WireGuardMode::Ipv6 => EndpointFamily::V4,
                WireGuardMode::Auto => {
                    select_family(a.public_ip, a.public_ipv6, ctx.local_v4, ctx.local_v6)
                }
            };
            let endpoint = match family {
                EndpointFamily::V4 if !a.public_ip.is_unspecified() => {
                    SocketAddr::new(IpAddr::V4(a.public_ip), port(s4.and_then(|(_, p)| p)))
                }
                EndpointFamily::V6 => {
                    SocketAddr::new(IpAddr::V6(a.public_ipv6?), port(s6.and_then(|(_, p)| p)))
                }
                EndpointFamily::V4 => return None,
            };
            let allowed = v4
                .map(IpNetwork::V4)
                .into_iter()
                .chain(v6.map(IpNetwork::V6))
                .collect();
            Some(PeerSpec {
                key,
                endpoint,
                allowed,
            })
        }
    }
}

/// The peers of device `role` among `leases`, keyed by public key, leaving out this node's
/// own lease, other backends' leases and any lease whose data does not make a peer
/// (validation refuses those before they get here). Two leases with one key (a node that
/// moved subnets) merge their allowed IPs and keep the endpoint of the first by subnet order,
/// as a WireGuard device holds one entry per key.
pub fn wireguard_peers(
    ctx: &PeerContext,
    role: DeviceRole,
    leases: &[Lease],
) -> BTreeMap<WireGuardKey, PeerSpec> {
    let mut peers: BTreeMap<WireGuardKey, PeerSpec> = BTreeMap::new();
    for spec in leases.iter().filter_map(|l| spec_of(ctx, role, l)) {
        peers
            .entry(spec.key)
            .and_modify(|p| p.allowed.extend(spec.allowed.iter().copied()))
            .or_insert(spec);
    }
    peers
}

/// The peer one lease makes on device `role`: none for this node's own lease and other
/// backends' leases.
fn spec_of(ctx: &PeerContext, role: DeviceRole, lease: &Lease) -> Option<PeerSpec> {
    if lease.attrs.backend_type != BACKEND_TYPE || is_own(ctx, lease) {
        return None;
    }
    peer_of(ctx, role, lease)
}
/// A lease's place in the table: the subnets of its key (IPv4 part, IPv6 part; an IPv6-only
/// network keys every IPv4 part `0.0.0.0/0`).
pub type LeaseKey = (Ipv4Network, Option<Ipv6Network>);

/// The lease key of `lease`.
pub fn lease_key(lease: &Lease) -> LeaseKey {
    (lease.subnet, lease.ipv6_subnet)
}

/// One device's desired peers, kept by lease so that a lease change recomputes only the peers
/// it touches: [`wireguard_peers`] of every lease, changed one lease at a time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredPeers {
    /// The peer each lease makes, by lease key.
    by_lease: BTreeMap<LeaseKey, PeerSpec>,
    /// The leases making each public key's peer (one, unless a node moved subnets).
    users: HashMap<WireGuardKey, BTreeSet<LeaseKey>>,
    /// The peers, merged per public key as [`wireguard_peers`] merges them.
    peers: BTreeMap<WireGuardKey, PeerSpec>,
}

impl DesiredPeers {
    /// The peers of device `role` among `leases` (in lease-key order, as the table holds them).
    pub fn new<'a>(
        ctx: &PeerContext,
        role: DeviceRole,
        leases: impl IntoIterator<Item = &'a Lease>,
    ) -> DesiredPeers {
        let mut desired = DesiredPeers::default();
        for lease in leases {
            desired.set(ctx, role, lease_key(lease), Some(lease));
        }
        desired
    }

    /// The peers, by public key.
    pub fn peers(&self) -> &BTreeMap<WireGuardKey, PeerSpec> {
        &self.peers
    }

    /// Takes lease `key`'s new version (`None`: gone or no longer believed) and returns the
    /// peers that changed: each with its new spec, or `None` when it is gone.
    pub fn set(
        &mut self,
        ctx: &PeerContext,
        role: DeviceRole,
        key: LeaseKey,
        lease: Option<&Lease>,
    ) -> Vec<(WireGuardKey, Option<PeerSpec>)> {
        let new = lease.and_then(|l| spec_of(ctx, role, l));
        let old = match &new {
            Some(spec) => self.by_lease.insert(key, spec.clone()),
            None => self.by_lease.remove(&key),
        };
        if let Some(old) = &old {
            if let Some(users) = self.users.get_mut(&old.key) {
                users.remove(&key);
                if users.is_empty() {
                    self.users.remove(&old.key);
                }
            }
        }
        if let Some(new) = &new {
            self.users.entry(new.key).or_default().insert(key);
        }
        let mut touched: Vec<WireGuardKey> = old.iter().chain(&new).map(|s| s.key).collect();
        touched.dedup();
        let mut changed = Vec::new();
        for public_key in touched {
            let merged = self.merged(public_key);
            if self.peers.get(&public_key) == merged.as_ref() {
                continue;
            }
            match &merged {
                Some(spec) => self.peers.insert(public_key, spec.clone()),
                None => self.peers.remove(&public_key),
            };
            changed.push((public_key, merged));
        }
        changed
    }

    /// The peer of `public_key` from the leases making it, merged in lease-key order.
    fn merged(&self, public_key: WireGuardKey) -> Option<PeerSpec> {
        let mut specs = self
            .users
            .get(&public_key)?
            .iter()
            .map(|k| &self.by_lease[k]);
        let mut merged = specs.next()?.clone();
        for spec in specs {
            merged.allowed.extend(spec.allowed.iter().copied());
        }
        Some(merged)
    }
}

/// The peer whose endpoint address is `ip`, among `peers` (a datagram's sender).
pub fn by_endpoint_ip(peers: &BTreeMap<WireGuardKey, PeerSpec>) -> BTreeMap<IpAddr, WireGuardKey> {
    peers.values().map(|p| (p.endpoint.ip(), p.key)).collect()
}

/// What this node publishes, as flanneld's `newSubnetAttrs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnLease {
    /// The node's public key (one key for every device, as Flannel's one key file).
    pub public_key: WireGuardKey,
    /// `PublicIP`; written `0.0.0.0` in an IPv6-only network.
    pub public_ip: Ipv4Addr,
    /// `PublicIPv6`, when the network has IPv6.
    pub public_ipv6: Option<Ipv6Addr>,
    /// The network has IPv4: `BackendData`.
    pub ipv4: bool,
    /// The network has IPv6: `BackendV6Data`.
    pub ipv6: bool,
    /// The mode.
    pub mode: WireGuardMode,
    /// `ListenPort`.
    pub listen_port: u16,
    /// `ListenPortV6`.
    pub listen_port_v6: u16,
}

impl OwnLease {
    /// The port peers reach the IPv6 side at: `flannel-wg-v6`'s in `separate`, else the one
    /// device's. (Flannel writes `ListenPortV6` in every mode, although in the single-device
    /// modes nothing listens there unless it equals `ListenPort`; weft writes the port it
    /// listens on, which is the same value wherever Flannel's modes work.)
    pub fn v6_port(&self) -> u16 {
        match self.mode {
            WireGuardMode::Separate => self.listen_port_v6,
            _ => self.listen_port,
        }
    }

    /// `{"PublicIP":..,"PublicIPv6":..,"BackendType":"wireguard","BackendData":{"PublicKey":..,
    /// "Port":51820},"BackendV6Data":{"PublicKey":..,"Port":51821}}`.
    pub fn attrs(&self) -> LeaseAttrs {
        let data = |port: u16| {
            let mut m = serde_json::Map::new();
            m.insert(
                "PublicKey".to_string(),
                serde_json::Value::String(self.public_key.to_string()),
            );
            m.insert("Port".to_string(), serde_json::Value::from(port));
            serde_json::Value::Object(m)
        };
        LeaseAttrs {
            public_ip: if self.ipv4 {
                self.public_ip
            } else {
                Ipv4Addr::UNSPECIFIED
            },
            backend_type: BACKEND_TYPE.to_string(),
            backend_data: self.ipv4.then(|| data(self.listen_port)),
            public_ipv6: if self.ipv6 { self.public_ipv6 } else { None },
            backend_v6_data: self.ipv6.then(|| data(self.v6_port())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn dual(n: u8, v4: bool, key4: &str, key6: &str) -> Lease {
        let mut l = lease(
            &if v4 {
                format!("10.244.{n}.0/24")
            } else {
                "0.0.0.0/0".to_string()
            },
            &if v4 {
                format!("192.0.2.{n}")
            } else {
                "0.0.0.0".to_string()
            },
            serde_json::json!({"PublicKey": key4, "Port": 51820}),
        );
        if !v4 {
            l.attrs.backend_data = None;
        }
        l.ipv6_subnet = Some(format!("fd00:10:244:{n}::/64").parse().unwrap());
        l.attrs.public_ipv6 = Some(format!("2001:db8::{n}").parse().unwrap());
        l.attrs.backend_v6_data = Some(serde_json::json!({"PublicKey": key6, "Port": 51821}));
        l
    }

    const KEY_A: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
    const KEY_B: &str = "Y2FD6uTgrq+/bbBAXCNOtE+PGk8Papoh7qaWBpQUXn0=";

    fn ctx4(own: &str, port: u16) -> PeerContext {
        PeerContext {
            own: Some(own.parse().unwrap()),
            own6: None,
            ipv4: true,
            ipv6: false,
            listen_port: port,
            local_v4: true,
            local_v6: None,
        }
    }

    fn ctx_dual(port: u16) -> PeerContext {
        PeerContext {
            own: Some("10.244.1.0/24".parse().unwrap()),
            own6: Some("fd00:10:244:1::/64".parse().unwrap()),
            ipv4: true,
            ipv6: true,
            listen_port: port,
            local_v4: true,
            local_v6: Some("2001:db8::1".parse().unwrap()),
        }
    }

    #[test]
    fn peers_are_flannels_add_peer() {
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
        let peers = wireguard_peers(&ctx4("10.244.1.0/24", 51820), DeviceRole::Ipv4, &leases);
        assert_eq!(peers.len(), 2, "own lease left out: {peers:?}");
        let a = &peers[&WireGuardKey::parse(KEY_A).unwrap()];
        assert_eq!(a.endpoint, "192.0.2.2:7000".parse().unwrap());
        assert_eq!(a.allowed, vec!["10.244.2.0/24".parse().unwrap()]);
        let b = &peers[&WireGuardKey::parse(KEY_B).unwrap()];
        assert_eq!(b.endpoint, "192.0.2.3:51820".parse().unwrap());
        let by_ip = by_endpoint_ip(&peers);
        assert_eq!(by_ip[&"192.0.2.2".parse::<IpAddr>().unwrap()], a.key);
    }

    #[test]
    fn separate_mode_has_a_v4_and_a_v6_device_with_their_own_sections() {
        let leases = [dual(1, true, KEY_B, KEY_B), dual(2, true, KEY_A, KEY_A)];
        let ctx = ctx_dual(51820);
        let v4 = wireguard_peers(&ctx, DeviceRole::Ipv4, &leases);
        let a = &v4[&WireGuardKey::parse(KEY_A).unwrap()];
        assert_eq!(a.endpoint, "192.0.2.2:51820".parse().unwrap());
        assert_eq!(a.allowed, vec!["10.244.2.0/24".parse().unwrap()]);
        assert_eq!(v4.len(), 1);
        let ctx6 = PeerContext {
            listen_port: 51821,
            ..ctx
        };
        let v6 = wireguard_peers(&ctx6, DeviceRole::Ipv6, &leases);
        let a6 = &v6[&WireGuardKey::parse(KEY_A).unwrap()];
        assert_eq!(a6.endpoint, "[2001:db8::2]:51821".parse().unwrap());
        assert_eq!(a6.allowed, vec!["fd00:10:244:2::/64".parse().unwrap()]);
        assert_eq!(v6.len(), 1);
    }

    #[test]
    fn single_device_modes_carry_both_subnets_to_the_mode_s_endpoint() {
        let leases = [dual(1, true, KEY_B, KEY_B), dual(2, true, KEY_A, KEY_A)];
        let both: Vec<IpNetwork> = vec![
            "10.244.2.0/24".parse().unwrap(),
            "fd00:10:244:2::/64".parse().unwrap(),
        ];
        let ctx = ctx_dual(51820);
        let key = WireGuardKey::parse(KEY_A).unwrap();
        for (mode, endpoint) in [
            (WireGuardMode::Ipv4, "192.0.2.2:51820"),
            (WireGuardMode::Ipv6, "[2001:db8::2]:51821"),
            // 192.0.2.2 is no RFC 1918 address and this node has IPv4: Flannel picks IPv4.
            (WireGuardMode::Auto, "192.0.2.2:51820"),
        ] {
            let peers = wireguard_peers(&ctx, DeviceRole::Single(mode), &leases);
            assert_eq!(peers.len(), 1, "{mode:?}");
            assert_eq!(peers[&key].endpoint, endpoint.parse().unwrap(), "{mode:?}");
            assert_eq!(peers[&key].allowed, both, "{mode:?}");
        }
        // The key is BackendV6Data's, as Flannel reads the sections in that order.
        let odd = [dual(2, true, KEY_B, KEY_A)];
        let peers = wireguard_peers(&ctx, DeviceRole::Single(WireGuardMode::Ipv4), &odd);
        assert!(peers.contains_key(&key), "{peers:?}");
        // An IPv6-only lease over ipv4 mode has no endpoint.
        let v6only = [dual(3, false, KEY_A, KEY_A)];
        let peers = wireguard_peers(&ctx, DeviceRole::Single(WireGuardMode::Ipv4), &v6only);
        assert!(peers.is_empty(), "{peers:?}");
        // In an IPv4-only network the ipv6 mode has IPv4 to use.
        let v4net = ctx4("10.244.1.0/24", 51820);
        let v4leases = [lease(
            "10.244.2.0/24",
            "192.0.2.2",
            serde_json::json!({"PublicKey": KEY_A, "Port": 51820}),
        )];
        let peers = wireguard_peers(&v4net, DeviceRole::Single(WireGuardMode::Ipv6), &v4leases);
        assert_eq!(peers[&key].endpoint, "192.0.2.2:51820".parse().unwrap());
    }

    #[test]
    fn auto_mode_selects_as_flannel() {
        use EndpointFamily::*;
        let public6: Option<Ipv6Addr> = Some("2001:db8::1".parse().unwrap());
        let ula6: Option<Ipv6Addr> = Some("fd00::1".parse().unwrap());
        let cases = [
            // (peer v4, peer v6, local v4, local v6, chosen)
            ("192.0.2.2", None, true, public6, V4),
            ("192.0.2.2", public6, true, public6, V4),
            ("10.0.0.2", public6, true, public6, V6),
            ("192.168.1.2", public6, true, ula6, V4),
            ("10.0.0.2", ula6, true, public6, V4),
            ("192.0.2.2", public6, false, public6, V6),
            ("172.16.0.2", public6, true, public6, V6),
            ("172.32.0.2", public6, true, public6, V4),
            ("0.0.0.0", public6, true, ula6, V6),
        ];
        for (ip4, ip6, local4, local6, want) in cases {
            let got = select_family(ip4.parse().unwrap(), ip6, local4, local6);
            assert_eq!(got, want, "{ip4} {ip6:?} {local4} {local6:?}");
        }
    }

    #[test]
    fn ipv6_only_leases_are_peers_of_the_v6_device() {
        let leases = [dual(1, false, KEY_B, KEY_B), dual(2, false, KEY_A, KEY_A)];
        let ctx = PeerContext {
            own: None,
            own6: Some("fd00:10:244:1::/64".parse().unwrap()),
            ipv4: false,
            ipv6: true,
            listen_port: 51821,
            local_v4: false,
            local_v6: Some("2001:db8::1".parse().unwrap()),
        };
        let peers = wireguard_peers(&ctx, DeviceRole::Ipv6, &leases);
        assert_eq!(
            peers.len(),
            1,
            "own lease (0.0.0.0/0 like every other) left out"
        );
        let a = &peers[&WireGuardKey::parse(KEY_A).unwrap()];
        assert_eq!(a.endpoint, "[2001:db8::2]:51821".parse().unwrap());
        for mode in [WireGuardMode::Auto, WireGuardMode::Ipv6] {
            let single = PeerContext {
                listen_port: 51820,
                ..ctx
            };
            let peers = wireguard_peers(&single, DeviceRole::Single(mode), &leases);
            assert_eq!(peers.len(), 1);
            assert_eq!(
                peers[&a.key].allowed,
                vec!["fd00:10:244:2::/64".parse::<IpNetwork>().unwrap()]
            );
        }
    }

    #[test]
    fn the_lease_is_flannels_new_subnet_attrs() {
        let own = OwnLease {
            public_key: WireGuardKey::parse(KEY_A).unwrap(),
            public_ip: "192.0.2.7".parse().unwrap(),
            public_ipv6: Some("2001:db8::7".parse().unwrap()),
            ipv4: true,
            ipv6: true,
            mode: WireGuardMode::Separate,
            listen_port: 51820,
            listen_port_v6: 51821,
        };
        assert_eq!(
            own.attrs().to_json(),
            format!(
                r#"{{"PublicIP":"192.0.2.7","PublicIPv6":"2001:db8::7","BackendType":"wireguard","BackendData":{{"PublicKey":"{KEY_A}","Port":51820}},"BackendV6Data":{{"PublicKey":"{KEY_A}","Port":51821}}}}"#
            )
        );
        let v6only = OwnLease { ipv4: false, ..own };
        assert_eq!(
            v6only.attrs().to_json(),
            format!(
                r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::7","BackendType":"wireguard","BackendV6Data":{{"PublicKey":"{KEY_A}","Port":51821}}}}"#
            )
        );
        let v4only = OwnLease { ipv6: false, ..own };
        assert_eq!(
            v4only.attrs().to_json(),
            format!(
                r#"{{"PublicIP":"192.0.2.7","PublicIPv6":null,"BackendType":"wireguard","BackendData":{{"PublicKey":"{KEY_A}","Port":51820}}}}"#
            )
        );
        // One device: the v6 side is reached at the port it listens on.
        let single = OwnLease {
            mode: WireGuardMode::Ipv6,
            ..own
        };
        assert_eq!(single.attrs().backend_v6_data.unwrap()["Port"], 51820);
    }

    #[test]
    fn desired_peers_changed_lease_by_lease_match_the_whole_table() {
        use rand::{Rng, SeedableRng};
        // Keys 0..5 of 32 bytes each, base64; node n's lease may carry any of them, so some
        // public keys are shared by two leases (a node that moved subnets) and merge.
        let keys: Vec<String> = (0..6u8)
            .map(|k| WireGuardKey::from_bytes([k + 1; 32]).to_string())
            .collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(14);
        for (ctx, role) in [
            (ctx_dual(51820), DeviceRole::Ipv4),
            (ctx_dual(51821), DeviceRole::Ipv6),
            (ctx_dual(51820), DeviceRole::Single(WireGuardMode::Auto)),
        ] {
            let mut table: BTreeMap<LeaseKey, Lease> = BTreeMap::new();
            let mut desired = DesiredPeers::default();
            for step in 0..400 {
                let n: u8 = rng.random_range(1..12);
                let key = (
                    format!("10.244.{n}.0/24").parse().unwrap(),
                    Some(format!("fd00:10:244:{n}::/64").parse().unwrap()),
                );
                let lease = rng.random_bool(0.75).then(|| {
                    let mut l = dual(
                        n,
                        true,
                        &keys[rng.random_range(0..keys.len())],
                        &keys[rng.random_range(0..keys.len())],
                    );
                    if rng.random_bool(0.1) {
                        l.attrs.backend_type = "vxlan".to_string();
                    }
                    l.attrs.public_ip = Ipv4Addr::new(192, 0, 2, rng.random_range(2..250));
                    l
                });
                let before = desired.peers().clone();
                let changed = desired.set(&ctx, role, key, lease.as_ref());
                match lease {
                    Some(l) => table.insert(key, l),
                    None => table.remove(&key),
                };
                let leases: Vec<Lease> = table.values().cloned().collect();
                let whole = wireguard_peers(&ctx, role, &leases);
                assert_eq!(desired.peers(), &whole, "{role:?} step {step}");
                // The changes returned are exactly what turns the old peers into the new.
                let mut replayed = before;
                for (k, spec) in changed {
                    assert_ne!(
                        replayed.get(&k),
                        spec.as_ref(),
                        "an unchanged peer reported"
                    );
                    match spec {
                        Some(spec) => replayed.insert(k, spec),
                        None => replayed.remove(&k),
                    };
                }
                assert_eq!(replayed, whole, "{role:?} step {step}");
                assert_eq!(DesiredPeers::new(&ctx, role, &leases).peers(), &whole);
            }
        }
    }
}
