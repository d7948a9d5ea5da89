//! Lease validation: which keys under `<prefix>/subnets/` are believed before anything reaches a
//! backend. Any etcd client can write there, so every key and value is hostile until it passes
//! [`validate_lease`]; [`validate_leases`] judges a whole table, deterministically on every node.
//!
//! Pure functions of the network config, this node's identity and the raw key-values: no I/O,
//! nothing of the kernel.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::config::{BackendConfig, NetworkConfig};
use crate::lease::{subnets_prefix, Lease, LeaseAttrs, RawLease};
use crate::subnet::{parse_dual_subnet_key, DualSubnet};
use crate::wireguard_key::{KeyError, WireGuardKey};

/// What this node is, for the checks that depend on it. Every field may be empty (e.g. for
/// `weftctl`, which judges leases without being a node).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The `PublicIP` this node publishes.
    pub public_ip: Option<Ipv4Addr>,
    /// Every IPv4 address of this node: no peer may claim one as its `PublicIP`.
    pub addresses: Vec<Ipv4Addr>,
    /// This node's VTEP MAC: no peer may claim it.
    pub vtep_mac: Option<[u8; 6]>,
    /// This node's own subnet: the lease there under our `PublicIP` is ours.
    pub subnet: Option<Ipv4Network>,
    /// This node's own IPv6 subnet, part of the own lease's key with IPv6.
    pub ipv6_subnet: Option<Ipv6Network>,
    /// The `PublicIPv6` this node publishes.
    pub public_ipv6: Option<Ipv6Addr>,
    /// Every IPv6 address of this node: no peer may claim one as its `PublicIPv6`.
    pub addresses_v6: Vec<Ipv6Addr>,
    /// This node's IPv6 VTEP MAC (`flannel-v6.<VNI>`): no peer may claim it.
    pub vtep_mac_v6: Option<[u8; 6]>,
}

/// Everything a lease is judged against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeasePolicy {
    /// The etcd prefix (`/coreos.com/network`) the keys must be under.
    pub prefix: String,
    /// The network config in force.
    pub config: NetworkConfig,
    /// This node.
    pub node: NodeIdentity,
}

/// Why a lease is not believed. [`RejectReason::label`] names the kind for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejectReason {
    /// The key is not `<prefix>/subnets/A.B.C.D-LEN[&IPV6-LEN]`.
    BadKey(String),
    /// An address in the key is not the network address of its prefix.
    Misaligned(String),
    /// The value is not Flannel's lease JSON.
    BadValue(String),
    /// The subnet is not inside `Network`.
    OutsideNetwork {
        /// The lease's subnet.
        subnet: Ipv4Network,
        /// `Network`.
        network: Ipv4Network,
    },
    /// The IPv6 subnet is not inside `IPv6Network`.
    OutsideIpv6Network {
        /// The lease's IPv6 subnet.
        subnet: Ipv6Network,
        /// `IPv6Network`.
        network: Ipv6Network,
    },
    /// The IPv6 subnet's prefix length is not `IPv6SubnetLen`.
    WrongIpv6Length {
        /// The lease's IPv6 subnet.
        subnet: Ipv6Network,
        /// `IPv6SubnetLen`.
        subnet_len: u8,
    },
    /// The key lacks a family the network needs, or carries one the network has not.
    Family(String),
    /// `PublicIPv6` cannot be a peer's IPv6 underlay address.
    PublicIpv6 {
        /// The lease's `PublicIPv6` (`-` when missing).
        ip: String,
        /// Why.
        why: &'static str,
    },
    /// The subnet's prefix length is not `SubnetLen`.
    WrongLength {
        /// The lease's subnet.
        subnet: Ipv4Network,
        /// `SubnetLen`.
        subnet_len: u8,
    },
    /// The subnet overlaps a lease that was created earlier (and is believed).
    Overlaps {
        /// The lease's subnet (IPv4, or the IPv6 part of a dual-stack key).
        subnet: String,
        /// The key of the older lease.
        older_key: String,
    },
    /// `BackendType` is not the configured backend's.
    BackendType {
        /// The lease's `BackendType`.
        found: String,
        /// The config's backend type.
        expected: &'static str,
    },
    /// `PublicIP` cannot be a peer's address.
    PublicIp {
        /// The lease's `PublicIP`.
        ip: Ipv4Addr,
        /// Why (loopback, multicast, this node's address, ...).
        why: &'static str,
    },
    /// `BackendData.VtepMAC` (or `BackendV6Data.VtepMAC`) is missing or cannot be a peer's VTEP.
    VtepMac {
        /// `BackendData` or `BackendV6Data`.
        section: &'static str,
        /// The value found (`-` when missing).
        found: String,
        /// Why.
        why: String,
    },
    /// `BackendData` or `BackendV6Data` of a WireGuard lease: `PublicKey` missing or
    /// malformed, `Port` no port.
    WireGuardData {
        /// `BackendData.PublicKey`, `BackendV6Data.Port`, ...
        field: &'static str,
        /// The value found (`-` when missing).
        found: String,
        /// Why.
        why: String,
    },
    /// `BackendData.VNI` (or `BackendV6Data.VNI`) is not the config's.
    Vni {
        /// `BackendData` or `BackendV6Data`.
        section: &'static str,
        /// The value found (`-` when missing).
        found: String,
        /// `Backend.VNI`.
        expected: u32,
    },
}

impl RejectReason {
    /// A short, fixed name of the kind of rejection, the `reason` label of
    /// `weft_leases_rejected_total`.
    pub fn label(&self) -> &'static str {
        match self {
            RejectReason::BadKey(_) => "bad_key",
            RejectReason::Misaligned(_) => "misaligned",
            RejectReason::BadValue(_) => "bad_value",
            RejectReason::OutsideNetwork { .. } | RejectReason::OutsideIpv6Network { .. } => {
                "outside_network"
            }
            RejectReason::WrongLength { .. } | RejectReason::WrongIpv6Length { .. } => "subnet_len",
            RejectReason::Family(_) => "family",
            RejectReason::PublicIpv6 { .. } => "public_ip",
            RejectReason::Overlaps { .. } => "overlap",
            RejectReason::BackendType { .. } => "backend_type",
            RejectReason::PublicIp { .. } => "public_ip",
            RejectReason::VtepMac { .. } => "vtep_mac",
            RejectReason::Vni { .. } => "vni",
            RejectReason::WireGuardData { .. } => "wireguard_data",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RejectReason::BadKey(e) | RejectReason::Misaligned(e) => write!(f, "{e}"),
            RejectReason::BadValue(e) => write!(f, "value is not a lease: {e}"),
            RejectReason::OutsideNetwork { subnet, network } => {
                write!(f, "subnet {subnet} is not inside Network {network}")
            }
            RejectReason::WrongLength { subnet, subnet_len } => {
                write!(f, "subnet {subnet} is not a /{subnet_len} (SubnetLen)")
            }
            RejectReason::OutsideIpv6Network { subnet, network } => {
                write!(
                    f,
                    "IPv6 subnet {subnet} is not inside IPv6Network {network}"
                )
            }
            RejectReason::WrongIpv6Length { subnet, subnet_len } => {
                write!(
                    f,
                    "IPv6 subnet {subnet} is not a /{subnet_len} (IPv6SubnetLen)"
                )
            }
            RejectReason::Family(e) => write!(f, "{e}"),
            RejectReason::PublicIpv6 { ip, why } => write!(f, "PublicIPv6 {ip} is {why}"),
            RejectReason::Overlaps { subnet, older_key } => {
                write!(f, "subnet {subnet} overlaps the older lease {older_key}")
            }
            RejectReason::BackendType { found, expected } => {
                write!(
                    f,
                    "BackendType {found:?} is not the configured {expected:?}"
                )
            }
            RejectReason::PublicIp { ip, why } => write!(f, "PublicIP {ip} is {why}"),
            RejectReason::VtepMac {
                section,
                found,
                why,
            } => write!(f, "{section}.VtepMAC {found} {why}"),
            RejectReason::WireGuardData { field, found, why } => write!(f, "{field} {found} {why}"),
            RejectReason::Vni {
                section,
                found,
                expected,
            } => {
                write!(f, "{section}.VNI {found} is not the configured {expected}")
            }
        }
    }
}

/// A lease that failed validation: its key, revisions and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedLease {
    /// The full etcd key.
    pub key: String,
    /// The key's last change, to log each rejection once per revision.
    pub mod_revision: i64,
    /// Why it is not believed.
    pub reason: RejectReason,
}

impl fmt::Display for RejectedLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lease {}: {}", self.key, self.reason)
    }
}

/// A node's `PublicIP` and `PublicIPv6`, which tell nodes apart.
type NodeAddresses = (Ipv4Addr, Option<Ipv6Addr>);

/// The subnets of the leases believed so far, to find overlaps and name the older lease.
#[derive(Debug, Clone, Default)]
pub struct AcceptedSubnets {
    /// Disjoint IPv4 ranges: first address -> (last address, key).
    v4: BTreeMap<u32, (u32, String)>,
    /// Disjoint IPv6 ranges of dual-stack keys: first address -> (last address, key).
    v6: BTreeMap<u128, (u128, String)>,
    /// VTEP MACs of believed VXLAN leases: MAC -> (the node's PublicIP and PublicIPv6, key).
    macs: BTreeMap<[u8; 6], (NodeAddresses, String)>,
    /// Public keys of believed WireGuard leases: key -> (the node's PublicIP and PublicIPv6,
    /// key of the lease).
    wireguard_keys: BTreeMap<[u8; 32], (NodeAddresses, String)>,
}

impl AcceptedSubnets {
    /// The key of a believed lease overlapping `subnet`, if any.
    pub fn overlapping_v4(&self, subnet: &Ipv4Network) -> Option<&str> {
        let first = u32::from(subnet.network());
        let last = u32::from(subnet.broadcast());
        // Ranges are disjoint: only the last one starting at or below `last` can reach `first`.
        let (_, (end, key)) = self.v4.range(..=last).next_back()?;
        (*end >= first).then_some(key.as_str())
    }

    /// The key of a believed lease whose IPv6 part overlaps `subnet`, if any (a lookup, as
    /// for IPv4: a scan per lease made a dual-stack table of 10 000 leases 10^8 comparisons).
    pub fn overlapping_v6(&self, subnet: &Ipv6Network) -> Option<&str> {
        let (first, last) = range6(subnet);
        let (_, (end, key)) = self.v6.range(..=last).next_back()?;
        (*end >= first).then_some(key.as_str())
    }

    /// The key of a believed lease of another node (another `PublicIP`, or for IPv6-only
    /// leases another `PublicIPv6`) with VTEP MAC `mac`: one MAC leads to one VTEP, so a second
    /// node claiming it would steal the first's traffic.
    pub fn mac_owner(&self, mac: &[u8; 6], attrs: &LeaseAttrs) -> Option<&str> {
        self.macs
            .get(mac)
            .filter(|(node, _)| !is_same_node(*node, attrs))
            .map(|(_, k)| k.as_str())
    }

    /// The key of a believed lease of another node (another `PublicIP`, or for IPv6-only
    /// leases another `PublicIPv6`) with WireGuard public key `public_key`: a second node
    /// claiming it would get the first's allowed IPs and endpoint mixed with its own.
    pub fn wireguard_key_owner(&self, public_key: &[u8; 32], attrs: &LeaseAttrs) -> Option<&str> {
        self.wireguard_keys
            .get(public_key)
            .filter(|(node, _)| !is_same_node(*node, attrs))
            .map(|(_, k)| k.as_str())
    }

    /// Records a believed lease's subnets and, for VXLAN, its VTEP MAC (WireGuard: its public
    /// key).
    pub fn insert_lease(&mut self, subnet: DualSubnet, lease: &Lease, key: &str) {
        let keys = [
            lease.attrs.wireguard_public_key(),
            lease.attrs.wireguard_v6_public_key(),
        ];
        for (_, public_key) in keys.into_iter().flatten() {
            if let Ok(public_key) = public_key {
                self.wireguard_keys
                    .entry(*public_key.as_bytes())
                    .or_insert_with(|| {
                        (
                            (lease.attrs.public_ip, lease.attrs.public_ipv6),
                            key.to_string(),
                        )
                    });
            }
        }
        let macs = [lease.attrs.vtep_mac(), lease.attrs.v6_vtep_mac()];
        for mac in macs.into_iter().flatten().filter_map(parse_mac) {
            self.macs.entry(mac).or_insert_with(|| {
                (
                    (lease.attrs.public_ip, lease.attrs.public_ipv6),
                    key.to_string(),
                )
            });
        }
        self.insert(subnet, key);
    }

    /// Records a believed lease's subnets (the `0.0.0.0/0` IPv4 part of an IPv6-only key is no
    /// subnet).
    pub fn insert(&mut self, subnet: DualSubnet, key: &str) {
        if subnet.v4.prefix() != 0 {
            let first = u32::from(subnet.v4.network());
            let last = u32::from(subnet.v4.broadcast());
            self.v4.insert(first, (last, key.to_string()));
        }
        if let Some(v6) = subnet.v6 {
            let (first, last) = range6(&v6);
            self.v6.insert(first, (last, key.to_string()));
        }
    }
}

/// The first and the last address of `net`, as numbers.
fn range6(net: &Ipv6Network) -> (u128, u128) {
    let first = u128::from(net.network());
    let host_bits = u128::MAX.checked_shr(u32::from(net.prefix())).unwrap_or(0);
    (first, first | host_bits)
}

/// Whether the node of `node` (its PublicIP and PublicIPv6) is the node of `attrs`.
fn is_same_node(node: NodeAddresses, attrs: &LeaseAttrs) -> bool {
    let (public_ip, public_ipv6) = node;
    let owner = LeaseAttrs {
        public_ip,
        public_ipv6,
        backend_type: String::new(),
        backend_data: None,
        backend_v6_data: None,
    };
    owner.same_node(attrs)
}

/// Judges one lease against `policy` and the leases already believed (`accepted`; for a
/// deterministic outcome feed leases oldest `create_revision` first, as [`validate_leases`]
/// does). On success the lease's subnets are *not* added to `accepted`; the caller does that.
pub fn validate_lease(
    policy: &LeasePolicy,
    raw: &RawLease,
    accepted: &AcceptedSubnets,
) -> Result<(DualSubnet, Lease), RejectReason> {
    let (dual, attrs) = parse_lease(policy, raw)?;
    judge_parsed(policy, raw, dual, attrs, accepted)
}

/// The checks of one lease that come before any comparison with other leases: key, value,
/// families, networks and prefix lengths. A lease that passes them claims its subnets (and
/// VTEP MAC). The returned subnets keep the IPv6 part only where the network has IPv6 (a
/// v4-only peer in a dual-stack network is believed for IPv4, as Flannel does).
fn parse_lease(
    policy: &LeasePolicy,
    raw: &RawLease,
) -> Result<(DualSubnet, LeaseAttrs), RejectReason> {
    let subnets = subnets_prefix(&policy.prefix);
    let rest = raw.key.strip_prefix(&subnets).ok_or_else(|| {
        RejectReason::BadKey(format!("key {:?} is not under {subnets:?}", raw.key))
    })?;
    let dual = parse_dual_subnet_key(rest).map_err(|e| {
        if e.misaligned {
            RejectReason::Misaligned(e.to_string())
        } else {
            RejectReason::BadKey(e.to_string())
        }
    })?;
    let attrs = LeaseAttrs::from_json(&raw.key, &raw.value).map_err(|e| match e {
        crate::lease::LeaseError::BadValue { source, .. } => {
            RejectReason::BadValue(source.to_string())
        }
        other => RejectReason::BadValue(other.to_string()),
    })?;
    let cfg = &policy.config;
    let subnet = dual.v4;
    if cfg.enable_ipv4 {
        check_ipv4_subnet(cfg, subnet)?;
    } else if subnet.prefix() != 0 || !subnet.ip().is_unspecified() {
        return Err(RejectReason::Family(format!(
            "IPv4 subnet {subnet} in an IPv6-only network (Flannel keys it 0.0.0.0-0&...)"
        )));
    }
    let v6 = match (&cfg.ipv6, dual.v6) {
        (Some(cfg6), Some(v6)) => {
            if v6.prefix() < cfg6.network.prefix() || !cfg6.network.contains(v6.network()) {
                return Err(RejectReason::OutsideIpv6Network {
                    subnet: v6,
                    network: cfg6.network,
                });
            }
            if v6.prefix() != cfg6.subnet_len {
                return Err(RejectReason::WrongIpv6Length {
                    subnet: v6,
                    subnet_len: cfg6.subnet_len,
                });
            }
            Some(v6)
        }
        (Some(_), None) if !cfg.enable_ipv4 => {
            return Err(RejectReason::Family(
                "no IPv6 subnet in the key of an IPv6-only network".to_string(),
            ))
        }
        _ => None,
    };
    Ok((DualSubnet { v4: dual.v4, v6 }, attrs))
}

/// The IPv4 checks that need no other lease: inside `Network`, a `/SubnetLen`.
fn check_ipv4_subnet(cfg: &NetworkConfig, subnet: Ipv4Network) -> Result<(), RejectReason> {
    if subnet.prefix() < cfg.network.prefix() || !cfg.network.contains(subnet.network()) {
        return Err(RejectReason::OutsideNetwork {
            subnet,
            network: cfg.network,
        });
    }
    if subnet.prefix() != cfg.subnet_len {
        return Err(RejectReason::WrongLength {
            subnet,
            subnet_len: cfg.subnet_len,
        });
    }
    Ok(())
}

fn check_public_ipv6(
    ip: Option<Ipv6Addr>,
    node: &NodeIdentity,
    ours: bool,
) -> Result<(), RejectReason> {
    let Some(ip) = ip else {
        return Err(RejectReason::PublicIpv6 {
            ip: "-".to_string(),
            why: "missing from a lease with an IPv6 subnet",
        });
    };
    let segments = ip.segments();
    let why = if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if segments[0] & 0xffc0 == 0xfe80 {
        Some("link-local (not routable between nodes)")
    } else if ip.to_ipv4_mapped().is_some() {
        Some("an IPv4-mapped address")
    } else if !ours && (node.public_ipv6 == Some(ip) || node.addresses_v6.contains(&ip)) {
        Some("an address of this node")
    } else {
        None
    };
    match why {
        Some(why) => Err(RejectReason::PublicIpv6 {
            ip: ip.to_string(),
            why,
        }),
        None => Ok(()),
    }
}

/// The rest of [`validate_lease`], on a lease [`parse_lease`] passed.
fn judge_parsed(
    policy: &LeasePolicy,
    raw: &RawLease,
    dual: DualSubnet,
    attrs: LeaseAttrs,
    accepted: &AcceptedSubnets,
) -> Result<(DualSubnet, Lease), RejectReason> {
    let cfg = &policy.config;
    let subnet = dual.v4;
    let ipv6_subnet = dual.v6;
    if cfg.enable_ipv4 {
        if let Some(older) = accepted.overlapping_v4(&subnet) {
            return Err(RejectReason::Overlaps {
                subnet: subnet.to_string(),
                older_key: older.to_string(),
            });
        }
    }
    if let Some(v6) = ipv6_subnet {
        if let Some(older) = accepted.overlapping_v6(&v6) {
            return Err(RejectReason::Overlaps {
                subnet: v6.to_string(),
                older_key: older.to_string(),
            });
        }
    }
    let expected = cfg.backend.type_name();
    if attrs.backend_type != expected {
        return Err(RejectReason::BackendType {
            found: attrs.backend_type.clone(),
            expected,
        });
    }
    let node = &policy.node;
    let ours = node.subnet == Some(subnet)
        && node.ipv6_subnet == ipv6_subnet
        && node.public_ip == Some(attrs.public_ip)
        && (cfg.enable_ipv4 || node.public_ipv6 == attrs.public_ipv6);
    if cfg.enable_ipv4 {
        check_public_ip(attrs.public_ip, node, ours)?;
    }
    if ipv6_subnet.is_some() {
        check_public_ipv6(attrs.public_ipv6, node, ours)?;
    }
    if let BackendConfig::Vxlan { vni, .. } = cfg.backend {
        let mut sections = Vec::new();
        if cfg.enable_ipv4 {
            sections.push(("BackendData", attrs.backend_data.as_ref(), node.vtep_mac));
        }
        if ipv6_subnet.is_some() {
            sections.push((
                "BackendV6Data",
                attrs.backend_v6_data.as_ref(),
                node.vtep_mac_v6,
            ));
        }
        for (section, data, own_mac) in sections {
            let mac = check_vxlan_data(section, data, vni, own_mac, ours)?;
            if let Some(older) = accepted.mac_owner(&mac, &attrs) {
                let found = crate::lease::backend_data_field(data, "VtepMAC");
                return Err(RejectReason::VtepMac {
                    section,
                    found: found.map_or_else(|| "-".to_string(), |v| v.to_string()),
                    why: format!("is already the VTEP MAC of another node's older lease {older}"),
                });
            }
        }
    }
    if let BackendConfig::WireGuard(_) = cfg.backend {
        let mut sections = Vec::new();
        if cfg.enable_ipv4 {
            sections.push(WireGuardSection::V4);
        }
        if ipv6_subnet.is_some() {
            sections.push(WireGuardSection::V6);
        }
        for section in sections {
            let public_key = check_wireguard_data(&attrs, section)?;
            if let Some(older) = accepted.wireguard_key_owner(&public_key, &attrs) {
                return Err(RejectReason::WireGuardData {
                    field: section.field("PublicKey"),
                    found: format!("{:?}", WireGuardKey::from_bytes(public_key).to_string()),
                    why: format!("is already the public key of another node's older lease {older}"),
                });
            }
        }
    }
    let lease = Lease {
        ipv6_subnet,
        subnet,
        attrs,
        etcd_lease: (raw.etcd_lease != 0).then_some(raw.etcd_lease),
        mod_revision: raw.mod_revision,
    };
    Ok((dual, lease))
}

/// The outcome of [`validate_leases`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseVerdicts {
    /// The leases believed, by subnet.
    pub accepted: Vec<Lease>,
    /// The leases refused, with their reasons, in key order.
    pub rejected: Vec<RejectedLease>,
}

/// Judges a whole table. Leases are taken oldest `create_revision` first (ties by key), so on
/// every node the older of two overlapping leases wins, whatever order etcd listed them in.
pub fn validate_leases<'a>(
    policy: &LeasePolicy,
    raw: impl IntoIterator<Item = &'a RawLease>,
) -> LeaseVerdicts {
    validate_leases_indexed(policy, raw).0
}

/// [`validate_leases`], and the [`LeaseClaims`] of the table, with which a change of some
/// keys can later be judged key by key ([`LeaseClaims::update`]).
pub fn validate_leases_indexed<'a>(
    policy: &LeasePolicy,
    raw: impl IntoIterator<Item = &'a RawLease>,
) -> (LeaseVerdicts, LeaseClaims) {
    let mut ordered: Vec<&RawLease> = raw.into_iter().collect();
    ordered.sort_by(|a, b| (a.create_revision, &a.key).cmp(&(b.create_revision, &b.key)));
    let mut taken = AcceptedSubnets::default();
    let mut verdicts = LeaseVerdicts::default();
    let mut claims = LeaseClaims::default();
    for raw in ordered {
        let judged = parse_lease(policy, raw).and_then(|(dual, attrs)| {
            claims.add(&Claim::of(policy, &dual, &attrs));
            judge_parsed(policy, raw, dual, attrs, &taken)
        });
        match judged {
            Ok((dual, lease)) => {
                taken.insert_lease(dual, &lease, &raw.key);
                verdicts.accepted.push(lease);
            }
            Err(reason) => verdicts.rejected.push(RejectedLease {
                key: raw.key.clone(),
                mod_revision: raw.mod_revision,
                reason,
            }),
        }
    }
    verdicts.accepted.sort_by_key(|l| (l.subnet, l.ipv6_subnet));
    verdicts.rejected.sort_by(|a, b| a.key.cmp(&b.key));
    (verdicts, claims)
}

/// What one lease that reaches the comparison with other leases could collide on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Claim {
    /// `None` in an IPv6-only network, where every key's IPv4 part is `0.0.0.0/0`.
    v4: Option<Ipv4Network>,
    v6: Option<Ipv6Network>,
    macs: [Option<[u8; 6]>; 2],
    wireguard_keys: [Option<[u8; 32]>; 2],
}

impl Claim {
    fn of(policy: &LeasePolicy, dual: &DualSubnet, attrs: &LeaseAttrs) -> Claim {
        let key = |k: Option<(&str, Result<WireGuardKey, KeyError>)>| match k {
            Some((_, Ok(key))) => Some(*key.as_bytes()),
            _ => None,
        };
        Claim {
            v4: policy.config.enable_ipv4.then_some(dual.v4),
            v6: dual.v6,
            macs: [
                attrs.vtep_mac().and_then(parse_mac),
                attrs.v6_vtep_mac().and_then(parse_mac),
            ],
            wireguard_keys: [
                key(attrs.wireguard_public_key()),
                key(attrs.wireguard_v6_public_key()),
            ],
        }
    }
}

/// The subnets (IPv4 and IPv6), VTEP MACs and WireGuard public keys every lease of a table
/// claims, counted, to tell whether a changed key collides with any other. A key that
/// collides with none (the normal case: one subnet per family, one VTEP per node) is judged
/// alone, and its change alters no other key's verdict; only a collision needs the whole
/// table judged again in age order.
///
/// All subnets [`parse_lease`] passes have the prefix length `SubnetLen` (`IPv6SubnetLen`)
/// and are aligned, so two of them overlap exactly when they are equal. The IPv4 part of
/// IPv6-only keys (`0.0.0.0/0`) is counted like any other, so their changes always collide
/// and go to the whole table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseClaims {
    v4: HashMap<Ipv4Network, u32>,
    v6: HashMap<Ipv6Network, u32>,
    macs: HashMap<[u8; 6], u32>,
    wireguard_keys: HashMap<[u8; 32], u32>,
}

fn count_up<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, k: K) {
    *map.entry(k).or_default() += 1;
}

fn count_down<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, k: K) {
    if let Some(n) = map.get_mut(&k) {
        *n -= 1;
        if *n == 0 {
            map.remove(&k);
        }
    }
}

impl LeaseClaims {
    fn add(&mut self, c: &Claim) {
        if let Some(v4) = c.v4 {
            count_up(&mut self.v4, v4);
        }
        if let Some(v6) = c.v6 {
            count_up(&mut self.v6, v6);
        }
        for mac in c.macs.into_iter().flatten() {
            count_up(&mut self.macs, mac);
        }
        for key in c.wireguard_keys.into_iter().flatten() {
            count_up(&mut self.wireguard_keys, key);
        }
    }

    fn remove(&mut self, c: &Claim) {
        if let Some(v4) = c.v4 {
            count_down(&mut self.v4, v4);
        }
        if let Some(v6) = c.v6 {
            count_down(&mut self.v6, v6);
        }
        for mac in c.macs.into_iter().flatten() {
            count_down(&mut self.macs, mac);
        }
        for key in c.wireguard_keys.into_iter().flatten() {
            count_down(&mut self.wireguard_keys, key);
        }
    }

    /// Whether `c` claims something another key claims too (`c` itself not counted).
    fn collides(&self, c: &Claim) -> bool {
        c.v4.is_some_and(|v4| self.v4.contains_key(&v4))
            || c.v6.is_some_and(|v6| self.v6.contains_key(&v6))
            || c.macs.iter().flatten().any(|m| self.macs.contains_key(m))
            || c.wireguard_keys
                .iter()
                .flatten()
                .any(|k| self.wireguard_keys.contains_key(k))
    }

    /// Takes the change of one key (`old` as the table last held it, `new` as it holds it
    /// now; `None` when absent) into the claims, and judges the new version alone when
    /// neither version collides with another key's claim (then no other key's verdict
    /// changes).
    pub fn update(
        &mut self,
        policy: &LeasePolicy,
        old: Option<&RawLease>,
        new: Option<&RawLease>,
    ) -> ChangedKey {
        let old_claim = old
            .and_then(|raw| parse_lease(policy, raw).ok())
            .map(|(d, a)| Claim::of(policy, &d, &a));
        if let Some(c) = &old_claim {
            self.remove(c);
        }
        let parsed = new.map(|raw| (raw, parse_lease(policy, raw)));
        let new_claim = match &parsed {
            Some((_, Ok((d, a)))) => Some(Claim::of(policy, d, a)),
            _ => None,
        };
        let collides = old_claim.is_some_and(|c| self.collides(&c))
            || new_claim.is_some_and(|c| self.collides(&c));
        if let Some(c) = &new_claim {
            self.add(c);
        }
        match parsed {
            _ if collides => ChangedKey::Collides,
            None => ChangedKey::Gone,
            Some((raw, parsed)) => ChangedKey::Judged(parsed.and_then(|(dual, attrs)| {
                judge_parsed(policy, raw, dual, attrs, &AcceptedSubnets::default())
                    .map(|(_, lease)| lease)
            })),
        }
    }
}

/// What [`LeaseClaims::update`] says of a changed key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangedKey {
    /// The key is gone and took nothing from another key.
    Gone,
    /// The key's verdict, which no other key's depends on.
    Judged(Result<Lease, RejectReason>),
    /// The key shares a subnet or VTEP MAC with another (now or before the change): the table
    /// must be judged again as a whole, in age order.
    Collides,
}

fn check_public_ip(ip: Ipv4Addr, node: &NodeIdentity, ours: bool) -> Result<(), RejectReason> {
    let why = if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if ip.is_broadcast() {
        Some("the broadcast address")
    } else if ip.octets()[0] >= 240 {
        Some("in the reserved range 240.0.0.0/4")
    } else if !ours && (node.public_ip == Some(ip) || node.addresses.contains(&ip)) {
        Some("an address of this node")
    } else {
        None
    };
    match why {
        Some(why) => Err(RejectReason::PublicIp { ip, why }),
        None => Ok(()),
    }
}

fn check_vxlan_data(
    section: &'static str,
    data: Option<&serde_json::Value>,
    vni: u32,
    own_mac: Option<[u8; 6]>,
    ours: bool,
) -> Result<[u8; 6], RejectReason> {
    let field = |name: &str| crate::lease::backend_data_field(data, name);
    let found_vni = field("VNI");
    if found_vni.and_then(|v| v.as_u64()) != Some(u64::from(vni)) {
        return Err(RejectReason::Vni {
            section,
            found: found_vni.map_or_else(|| "-".to_string(), |v| v.to_string()),
            expected: vni,
        });
    }
    let mac_value = field("VtepMAC");
    let text = mac_value.and_then(|v| v.as_str());
    let fail = |why: &str| RejectReason::VtepMac {
        section,
        found: mac_value.map_or_else(|| "-".to_string(), |v| v.to_string()),
        why: why.to_string(),
    };
    let Some(text) = text else {
        return Err(fail("is missing or not a string"));
    };
    let mac = parse_mac(text).ok_or_else(|| fail("is not six hex octets separated by ':'"))?;
    if mac == [0; 6] {
        return Err(fail("is all zeros"));
    }
    if mac[0] & 0x01 != 0 {
        return Err(fail("is a multicast or broadcast address"));
    }
    if !ours && own_mac == Some(mac) {
        return Err(fail("is this node's own VTEP MAC"));
    }
    Ok(mac)
}

/// The WireGuard section of a lease: `BackendData` (IPv4) or `BackendV6Data` (IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WireGuardSection {
    V4,
    V6,
}

impl WireGuardSection {
    /// `BackendData.<name>` or `BackendV6Data.<name>` (the fields WireGuard leases have).
    fn field(self, name: &str) -> &'static str {
        match (self, name) {
            (WireGuardSection::V4, "PublicKey") => "BackendData.PublicKey",
            (WireGuardSection::V4, _) => "BackendData.Port",
            (WireGuardSection::V6, "PublicKey") => "BackendV6Data.PublicKey",
            (WireGuardSection::V6, _) => "BackendV6Data.Port",
        }
    }
}

/// A WireGuard peer needs in each section its network uses (`BackendData` with IPv4,
/// `BackendV6Data` with IPv6) a well-formed `PublicKey` (32 bytes of base64) and, if given, a
/// `Port` that is a UDP port; a lease without them could never be a peer.
fn check_wireguard_data(
    attrs: &LeaseAttrs,
    section: WireGuardSection,
) -> Result<[u8; 32], RejectReason> {
    let (data, key, port) = match section {
        WireGuardSection::V4 => (
            attrs.backend_data.as_ref(),
            attrs.wireguard_public_key(),
            attrs.wireguard_port(),
        ),
        WireGuardSection::V6 => (
            attrs.backend_v6_data.as_ref(),
            attrs.wireguard_v6_public_key(),
            attrs.wireguard_v6_port(),
        ),
    };
    let key_value = crate::lease::backend_data_field(data, "PublicKey");
    let fail = |why: String| RejectReason::WireGuardData {
        field: section.field("PublicKey"),
        found: key_value.map_or_else(|| "-".to_string(), |v| v.to_string()),
        why,
    };
    let public_key = match key {
        None => return Err(fail("is missing or not a string".to_string())),
        Some((_, Err(e))) => return Err(fail(format!("is not a WireGuard public key: {e}"))),
        Some((_, Ok(key))) if key.as_bytes() == &[0; 32] => {
            return Err(fail("is all zeros".to_string()))
        }
        Some((_, Ok(key))) => *key.as_bytes(),
    };
    port.map_err(|found| RejectReason::WireGuardData {
        field: section.field("Port"),
        found,
        why: "is not a UDP port (0 to 65535)".to_string(),
    })?;
    Ok(public_key)
}

/// `aa:bb:cc:dd:ee:ff` (hex digits of either case), as Go's `net.ParseMAC` reads Flannel's.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut octets = [0u8; 6];
    let mut parts = text.split(':');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *octet = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(octets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::dual_lease_key;

    const PREFIX: &str = "/coreos.com/network";
    const OWN_MAC: [u8; 6] = [0x0a, 0, 0, 0, 0, 0x11];

    fn policy() -> LeasePolicy {
        LeasePolicy {
            prefix: PREFIX.to_string(),
            config: NetworkConfig::parse(r#"{"Network":"10.244.0.0/16"}"#).unwrap(),
            node: NodeIdentity {
                public_ip: Some("192.0.2.11".parse().unwrap()),
                addresses: vec!["192.0.2.11".parse().unwrap(), "127.0.0.1".parse().unwrap()],
                vtep_mac: Some(OWN_MAC),
                subnet: Some("10.244.1.0/24".parse().unwrap()),
                ..Default::default()
            },
        }
    }

    fn raw(subnet_key: &str, value: &str, create_revision: i64) -> RawLease {
        RawLease {
            key: format!("{PREFIX}/subnets/{subnet_key}"),
            value: value.as_bytes().to_vec(),
            etcd_lease: 7,
            create_revision,
            mod_revision: create_revision,
        }
    }

    fn vxlan(public_ip: &str, mac: &str) -> String {
        format!(
            r#"{{"PublicIP":"{public_ip}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
        )
    }

    fn check(subnet_key: &str, value: &str) -> Result<Lease, RejectReason> {
        validate_lease(
            &policy(),
            &raw(subnet_key, value, 5),
            &AcceptedSubnets::default(),
        )
        .map(|(_, l)| l)
    }

    fn reason(subnet_key: &str, value: &str) -> RejectReason {
        match check(subnet_key, value) {
            Ok(l) => panic!("{subnet_key} = {value} must be rejected, got {l:?}"),
            Err(r) => r,
        }
    }

    #[test]
    fn wireguard_leases_need_a_public_key_and_a_port() {
        let mut policy = policy();
        policy.config =
            NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}"#)
                .unwrap();
        let judge = |data: &str| {
            let value = format!(
                r#"{{"PublicIP":"192.0.2.13","BackendType":"wireguard","BackendData":{data}}}"#
            );
            validate_lease(
                &policy,
                &raw("10.244.3.0-24", &value, 5),
                &AcceptedSubnets::default(),
            )
            .map(|(_, l)| l)
        };
        // As flanneld writes it.
        let lease =
            judge(r#"{"PublicKey":"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=","Port":51820}"#)
                .unwrap();
        assert_eq!(lease.attrs.wireguard_port(), Ok(Some(51820)));
        let cases: &[(&str, &str)] = &[
            ("null", "BackendData.PublicKey - is missing or not a string"),
            (
                r#"{"PublicKey":7}"#,
                "BackendData.PublicKey 7 is missing or not a string",
            ),
            (
                r#"{"PublicKey":"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8D=","Port":51820}"#,
                "BackendData.PublicKey \"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8D=\" is not a WireGuard public key: is not base64",
            ),
            (
                r#"{"PublicKey":"AAAA","Port":51820}"#,
                "BackendData.PublicKey \"AAAA\" is not a WireGuard public key: decodes to 3 bytes, a WireGuard key has 32",
            ),
            (
                r#"{"PublicKey":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","Port":51820}"#,
                "BackendData.PublicKey \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\" is all zeros",
            ),
            (
                r#"{"PublicKey":"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=","Port":65536}"#,
                "BackendData.Port 65536 is not a UDP port (0 to 65535)",
            ),
            (
                r#"{"PublicKey":"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=","Port":"51820"}"#,
                "BackendData.Port \"51820\" is not a UDP port (0 to 65535)",
            ),
        ];
        for (data, want) in cases {
            match judge(data) {
                Ok(l) => panic!("{data} must be rejected, got {l:?}"),
                Err(r) => {
                    assert_eq!(r.to_string(), *want, "{data}");
                    assert_eq!(r.label(), "wireguard_data");
                }
            }
        }
    }

    #[test]
    fn a_wireguard_public_key_belongs_to_the_older_node() {
        let mut policy = policy();
        policy.config =
            NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}"#)
                .unwrap();
        let wg = |ip: &str| {
            format!(
                r#"{{"PublicIP":"{ip}","BackendType":"wireguard","BackendData":{{"PublicKey":"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=","Port":51820}}}}"#
            )
        };
        let older = raw("10.244.3.0-24", &wg("192.0.2.13"), 1);
        let thief = raw("10.244.4.0-24", &wg("192.0.2.14"), 2);
        // The same node under a second subnet (it moved) keeps its key.
        let moved = raw("10.244.5.0-24", &wg("192.0.2.13"), 3);
        for order in [[&older, &thief, &moved], [&thief, &moved, &older]] {
            let v = validate_leases(&policy, order);
            let accepted: Vec<String> = v.accepted.iter().map(|l| l.subnet.to_string()).collect();
            assert_eq!(accepted, ["10.244.3.0/24", "10.244.5.0/24"]);
            assert_eq!(v.rejected.len(), 1);
            assert_eq!(v.rejected[0].key, thief.key);
            assert_eq!(
                v.rejected[0].reason.to_string(),
                format!(
                    "BackendData.PublicKey \"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\" is already the public key of another node's older lease {}",
                    older.key
                )
            );
        }
    }

    #[test]
    fn wireguard_v6_sections_are_judged_like_backend_data() {
        let mut policy = policy();
        const KEY: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
        let good = format!(r#"{{"PublicKey":"{KEY}","Port":51821}}"#);
        for (config, key, v4_data) in [
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","Backend":{"Type":"wireguard"}}"#,
                "10.244.3.0-24&fd00:10:244:3::-64",
                format!(r#","BackendData":{{"PublicKey":"{KEY}","Port":51820}}"#),
            ),
            (
                r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","Backend":{"Type":"wireguard"}}"#,
                "0.0.0.0-0&fd00:10:244:3::-64",
                String::new(),
            ),
        ] {
            policy.config = NetworkConfig::parse(config).unwrap();
            let public_ip = if v4_data.is_empty() {
                "0.0.0.0"
            } else {
                "192.0.2.13"
            };
            let judge = |v6_data: &str| {
                let value = format!(
                    r#"{{"PublicIP":"{public_ip}","PublicIPv6":"2001:db8::13","BackendType":"wireguard"{v4_data},"BackendV6Data":{v6_data}}}"#
                );
                validate_lease(&policy, &raw(key, &value, 5), &AcceptedSubnets::default())
                    .map(|(_, l)| l)
            };
            let lease = judge(&good).unwrap();
            assert_eq!(lease.attrs.wireguard_v6_port(), Ok(Some(51821)));
            let cases: &[(&str, &str)] = &[
                ("null", "BackendV6Data.PublicKey - is missing or not a string"),
                (
                    r#"{"PublicKey":"AAAA","Port":51821}"#,
                    "BackendV6Data.PublicKey \"AAAA\" is not a WireGuard public key: decodes to 3 bytes, a WireGuard key has 32",
                ),
                (
                    r#"{"PublicKey":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}"#,
                    "BackendV6Data.PublicKey \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\" is all zeros",
                ),
                (
                    r#"{"PublicKey":"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=","Port":-1}"#,
                    "BackendV6Data.Port -1 is not a UDP port (0 to 65535)",
                ),
            ];
            for (data, want) in cases {
                match judge(data) {
                    Ok(l) => panic!("{config}: {data} must be rejected, got {l:?}"),
                    Err(r) => assert_eq!(r.to_string(), *want, "{config}: {data}"),
                }
            }
        }
        // IPv6-only nodes (all PublicIP 0.0.0.0) are told apart by PublicIPv6: a second one
        // with the first's key is refused, the first under another subnet is not.
        let wg6 = |ip6: &str| {
            format!(
                r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"{ip6}","BackendType":"wireguard","BackendV6Data":{good}}}"#
            )
        };
        let older = raw("0.0.0.0-0&fd00:10:244:3::-64", &wg6("2001:db8::13"), 1);
        let thief = raw("0.0.0.0-0&fd00:10:244:4::-64", &wg6("2001:db8::14"), 2);
        let moved = raw("0.0.0.0-0&fd00:10:244:5::-64", &wg6("2001:db8::13"), 3);
        let v = validate_leases(&policy, [&older, &thief, &moved]);
        assert_eq!(v.accepted.len(), 2, "{v:?}");
        assert_eq!(v.rejected.len(), 1);
        assert_eq!(v.rejected[0].key, thief.key);
        assert!(
            v.rejected[0]
                .reason
                .to_string()
                .starts_with("BackendV6Data.PublicKey \"xTIBA5"),
            "{}",
            v.rejected[0].reason
        );
    }

    #[test]
    fn a_good_peer_is_accepted_as_is() {
        let lease = check("10.244.3.0-24", &vxlan("192.0.2.13", "0a:00:00:00:00:13")).unwrap();
        assert_eq!(lease.subnet, "10.244.3.0/24".parse().unwrap());
        assert_eq!(
            lease.attrs.public_ip,
            "192.0.2.13".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(lease.etcd_lease, Some(7));
        // Flannel's dual-stack key names the same IPv4 subnet.
        let dual = validate_lease(
            &policy(),
            &raw(
                "10.244.4.0-24&fd00:10:244:4::-64",
                &vxlan("192.0.2.14", "0a:00:00:00:00:14"),
                5,
            ),
            &AcceptedSubnets::default(),
        )
        .unwrap();
        // Without IPv6 in the config the IPv6 part is not believed.
        assert_eq!(dual.0.v6, None);
        assert_eq!(dual.1.ipv6_subnet, None);
        assert_eq!(dual.1.subnet, "10.244.4.0/24".parse().unwrap());
    }

    #[test]
    fn the_attacks_of_the_issue_are_rejected_with_their_reason() {
        let ok_value = vxlan("192.0.2.31", "aa:bb:cc:00:00:31");
        let cases: Vec<(&str, String, &str, &str)> = vec![
            (
                "192.0.2.0-24",
                ok_value.clone(),
                "outside_network",
                "subnet 192.0.2.0/24 is not inside Network 10.244.0.0/16",
            ),
            (
                "10.244.0.0-16",
                ok_value.clone(),
                "subnet_len",
                "subnet 10.244.0.0/16 is not a /24 (SubnetLen)",
            ),
            (
                "10.244.3.128-25",
                ok_value.clone(),
                "subnet_len",
                "subnet 10.244.3.128/25 is not a /24 (SubnetLen)",
            ),
            (
                "10.244.3.0-24",
                vxlan("127.0.0.1", "aa:bb:cc:00:00:31"),
                "public_ip",
                "PublicIP 127.0.0.1 is a loopback address",
            ),
            (
                "10.244.3.0-24",
                vxlan("0.0.0.0", "aa:bb:cc:00:00:31"),
                "public_ip",
                "PublicIP 0.0.0.0 is unspecified",
            ),
            (
                "10.244.3.0-24",
                vxlan("224.0.0.1", "aa:bb:cc:00:00:31"),
                "public_ip",
                "PublicIP 224.0.0.1 is a multicast address",
            ),
            (
                "10.244.3.0-24",
                vxlan("255.255.255.255", "aa:bb:cc:00:00:31"),
                "public_ip",
                "PublicIP 255.255.255.255 is the broadcast address",
            ),
            (
                "10.244.3.0-24",
                vxlan("192.0.2.11", "aa:bb:cc:00:00:31"),
                "public_ip",
                "PublicIP 192.0.2.11 is an address of this node",
            ),
            (
                "10.244.3.0-24",
                vxlan("192.0.2.31", "0a:00:00:00:00:11"),
                "vtep_mac",
                "BackendData.VtepMAC \"0a:00:00:00:00:11\" is this node's own VTEP MAC",
            ),
            (
                "10.244.3.0-24",
                vxlan("192.0.2.31", "00:00:00:00:00:00"),
                "vtep_mac",
                "BackendData.VtepMAC \"00:00:00:00:00:00\" is all zeros",
            ),
            (
                "10.244.3.0-24",
                vxlan("192.0.2.31", "ff:ff:ff:ff:ff:ff"),
                "vtep_mac",
                "BackendData.VtepMAC \"ff:ff:ff:ff:ff:ff\" is a multicast or broadcast address",
            ),
            (
                "10.244.3.0-24",
                vxlan("192.0.2.31", "aa:bb:cc:00:00"),
                "vtep_mac",
                "BackendData.VtepMAC \"aa:bb:cc:00:00\" is not six hex octets separated by ':'",
            ),
            (
                "10.244.3.0-24",
                r#"{"PublicIP":"192.0.2.31","BackendType":"vxlan","BackendData":{"VNI":99,"VtepMAC":"aa:bb:cc:00:00:31"}}"#.into(),
                "vni",
                "BackendData.VNI 99 is not the configured 1",
            ),
            (
                "10.244.3.0-24",
                r#"{"PublicIP":"192.0.2.31","BackendType":"vxlan"}"#.into(),
                "vni",
                "BackendData.VNI - is not the configured 1",
            ),
            (
                "10.244.3.0-24",
                r#"{"PublicIP":"192.0.2.31","BackendType":"host-gw"}"#.into(),
                "backend_type",
                "BackendType \"host-gw\" is not the configured \"vxlan\"",
            ),
            (
                "10.244.3.5-24",
                ok_value.clone(),
                "misaligned",
                "subnet key \"10.244.3.5-24\": 10.244.3.5 is not the network address of a /24 (that is 10.244.3.0)",
            ),
            (
                "10.244.3.0-24&fd00::1-64",
                ok_value.clone(),
                "misaligned",
                "subnet key \"10.244.3.0-24&fd00::1-64\": fd00::1 is not the network address of a /64 (that is fd00::)",
            ),
            (
                "junk",
                ok_value.clone(),
                "bad_key",
                "subnet key \"junk\": no '-<prefix length>'",
            ),
            ("10.244.3.0-24", "{".into(), "bad_value", "value is not a lease: "),
        ];
        for (key, value, label, text) in cases {
            let r = reason(key, &value);
            assert_eq!(r.label(), label, "{key} = {value}: {r}");
            assert!(
                r.to_string().starts_with(text),
                "{key} = {value}: got {r:?} / {r}, want {text:?}"
            );
        }
    }

    #[test]
    fn own_lease_may_carry_own_address_and_mac() {
        let own = vxlan("192.0.2.11", "0a:00:00:00:00:11");
        assert!(check("10.244.1.0-24", &own).is_ok());
        // The same value in another subnet is somebody pretending to be us.
        assert_eq!(reason("10.244.2.0-24", &own).label(), "public_ip");
    }

    #[test]
    fn keys_outside_the_prefix_are_rejected() {
        let r = validate_lease(
            &policy(),
            &RawLease {
                key: "/other/subnets/10.244.3.0-24".into(),
                ..raw("x", &vxlan("192.0.2.13", "0a:00:00:00:00:13"), 1)
            },
            &AcceptedSubnets::default(),
        )
        .unwrap_err();
        assert_eq!(r.label(), "bad_key");
        assert!(
            r.to_string().contains("/other/subnets/10.244.3.0-24"),
            "{r}"
        );
    }

    fn dual_policy() -> LeasePolicy {
        LeasePolicy {
            config: NetworkConfig::parse(
                r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/48"}"#,
            )
            .unwrap(),
            node: NodeIdentity {
                public_ipv6: Some("2001:db8::11".parse().unwrap()),
                addresses_v6: vec!["2001:db8::11".parse().unwrap()],
                ipv6_subnet: Some("fd00:10:244:1::/64".parse().unwrap()),
                vtep_mac_v6: Some([0x0a, 0, 0, 0, 0x06, 0x11]),
                ..policy().node
            },
            ..policy()
        }
    }

    fn v6_only_policy() -> LeasePolicy {
        LeasePolicy {
            config: NetworkConfig::parse(
                r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/48"}"#,
            )
            .unwrap(),
            node: NodeIdentity {
                public_ip: Some(Ipv4Addr::UNSPECIFIED),
                addresses: Vec::new(),
                vtep_mac: None,
                subnet: Some("0.0.0.0/0".parse().unwrap()),
                ..dual_policy().node
            },
            ..policy()
        }
    }

    /// A dual-stack VXLAN value as flanneld writes it; `public_ip` `0.0.0.0` gives the
    /// IPv6-only form (no `BackendData`).
    fn vxlan6(public_ip: &str, mac: &str, public_ipv6: &str, mac6: &str) -> String {
        let v4 = if public_ip == "0.0.0.0" {
            String::new()
        } else {
            format!(r#","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}"#)
        };
        format!(
            r#"{{"PublicIP":"{public_ip}","PublicIPv6":"{public_ipv6}","BackendType":"vxlan"{v4},"BackendV6Data":{{"VNI":1,"VtepMAC":"{mac6}"}}}}"#
        )
    }

    fn judge(policy: &LeasePolicy, key: &str, value: &str) -> Result<Lease, RejectReason> {
        validate_lease(policy, &raw(key, value, 5), &AcceptedSubnets::default()).map(|(_, l)| l)
    }

    #[test]
    fn dual_stack_and_ipv6_only_leases_are_believed() {
        let value = vxlan6(
            "192.0.2.14",
            "0a:00:00:00:00:14",
            "2001:db8::14",
            "0a:00:00:00:06:14",
        );
        let l = judge(&dual_policy(), "10.244.4.0-24&fd00:10:244:4::-64", &value).unwrap();
        assert_eq!(l.ipv6_subnet, Some("fd00:10:244:4::/64".parse().unwrap()));
        assert_eq!(l.attrs.public_ipv6, Some("2001:db8::14".parse().unwrap()));
        // A v4-only peer (an older Flannel) is believed for IPv4 in a dual-stack network.
        let l = judge(
            &dual_policy(),
            "10.244.5.0-24",
            &vxlan("192.0.2.15", "0a:00:00:00:00:15"),
        )
        .unwrap();
        assert_eq!(l.ipv6_subnet, None);
        let v6_only = vxlan6("0.0.0.0", "", "2001:db8::14", "0a:00:00:00:06:14");
        let l = judge(&v6_only_policy(), "0.0.0.0-0&fd00:10:244:4::-64", &v6_only).unwrap();
        assert_eq!(l.ipv6_subnet, Some("fd00:10:244:4::/64".parse().unwrap()));
        // Every IPv6-only key has the IPv4 part 0.0.0.0-0: that is no overlap.
        let a = raw("0.0.0.0-0&fd00:10:244:4::-64", &v6_only, 5);
        let b_value = vxlan6("0.0.0.0", "", "2001:db8::15", "0a:00:00:00:06:15");
        let b = raw("0.0.0.0-0&fd00:10:244:5::-64", &b_value, 6);
        let v = validate_leases(&v6_only_policy(), [&a, &b]);
        assert_eq!(v.accepted.len(), 2, "{:?}", v.rejected);
        // Another IPv6-only node claiming the first one's VTEP MAC is refused (PublicIP is
        // 0.0.0.0 for both: PublicIPv6 tells them apart).
        let thief_value = vxlan6("0.0.0.0", "", "2001:db8::16", "0a:00:00:00:06:14");
        let thief = raw("0.0.0.0-0&fd00:10:244:6::-64", &thief_value, 7);
        let v = validate_leases(&v6_only_policy(), [&a, &thief]);
        assert_eq!(v.accepted.len(), 1);
        assert_eq!(v.rejected[0].reason.label(), "vtep_mac", "{:?}", v.rejected);
    }

    #[test]
    fn ipv6_attacks_are_rejected_with_their_reason() {
        let good = |ip6: &str, mac6: &str| vxlan6("192.0.2.31", "aa:bb:cc:00:00:31", ip6, mac6);
        let ok = good("2001:db8::31", "aa:bb:cc:00:06:31");
        let cases: Vec<(&str, String, &str, &str)> =
            vec![
            (
                "10.244.31.0-24&fd00:10:245:31::-64",
                ok.clone(),
                "outside_network",
                "IPv6 subnet fd00:10:245:31::/64 is not inside IPv6Network fd00:10:244::/48",
            ),
            (
                "10.244.31.0-24&fd00:10:244:31::-80",
                ok.clone(),
                "subnet_len",
                "IPv6 subnet fd00:10:244:31::/80 is not a /64 (IPv6SubnetLen)",
            ),
            (
                "10.244.31.0-24&fd00:10:244::-48",
                ok.clone(),
                "subnet_len",
                "IPv6 subnet fd00:10:244::/48 is not a /64 (IPv6SubnetLen)",
            ),
            (
                "10.244.31.0-24&fd00:10:244:31::-64",
                vxlan("192.0.2.31", "aa:bb:cc:00:00:31"),
                "public_ip",
                "PublicIPv6 - is missing from a lease with an IPv6 subnet",
            ),
            (
                "10.244.31.0-24&fd00:10:244:31::-64",
                good("::1", "aa:bb:cc:00:06:31"),
                "public_ip",
                "PublicIPv6 ::1 is a loopback address",
            ),
            (
                "10.244.31.0-24&fd00:10:244:31::-64",
                good("ff02::1", "aa:bb:cc:00:06:31"),
                "public_ip",
                "PublicIPv6 ff02::1 is a multicast address",
            ),
            (
                "10.244.31.0-24&fd00:10:244:31::-64",
                good("fe80::1", "aa:bb:cc:00:06:31"),
                "public_ip",
                "PublicIPv6 fe80::1 is link-local (not routable between nodes)",
            ),
            (
                "10.244.31.0-24&fd00:10:244:31::-64",
                good("2001:db8::11", "aa:bb:cc:00:06:31"),
                "public_ip",
                "PublicIPv6 2001:db8::11 is an address of this node",
            ),
            (
                "10.244.31.0-24&fd00:10:244:31::-64",
                good("2001:db8::31", "0a:00:00:00:06:11"),
                "vtep_mac",
                "BackendV6Data.VtepMAC \"0a:00:00:00:06:11\" is this node's own VTEP MAC",
            ),
            (
                "10.244.31.0-24&fd00:10:244:31::-64",
                good("2001:db8::31", "ff:ff:ff:ff:ff:ff"),
                "vtep_mac",
                "BackendV6Data.VtepMAC \"ff:ff:ff:ff:ff:ff\" is a multicast or broadcast address",
            ),
            (
                "10.244.31.0-24&fd00:10:244:31::-64",
                ok.replace(r#""BackendV6Data":{"VNI":1"#, r#""BackendV6Data":{"VNI":9"#),
                "vni",
                "BackendV6Data.VNI 9 is not the configured 1",
            ),
            (
                "10.244.31.0-24&fd00:10:244:31::-64",
                ok.replace(r#","PublicIPv6":"2001:db8::31""#, r#","PublicIPv6":"fd00::zz""#),
                "bad_value",
                "value is not a lease",
            ),
        ];
        for (key, value, label, want) in &cases {
            let r = judge(&dual_policy(), key, value).unwrap_err();
            assert_eq!(r.label(), *label, "{key} {value}: {r}");
            assert!(r.to_string().starts_with(want), "{key} {value}: {r}");
        }
        // In an IPv6-only network an IPv4 subnet or a key without IPv6 is refused.
        let v6_only = vxlan6("0.0.0.0", "", "2001:db8::31", "aa:bb:cc:00:06:31");
        let r = judge(
            &v6_only_policy(),
            "10.244.31.0-24&fd00:10:244:31::-64",
            &v6_only,
        )
        .unwrap_err();
        assert_eq!(r.label(), "family");
        let r = judge(&v6_only_policy(), "0.0.0.0-0", &v6_only).unwrap_err();
        assert_eq!(
            r.to_string(),
            "no IPv6 subnet in the key of an IPv6-only network"
        );
    }

    #[test]
    fn the_older_of_two_overlapping_leases_wins_in_any_order() {
        let older = raw(
            "10.244.5.0-24&fd00:10:244:5::-64",
            &vxlan6(
                "192.0.2.15",
                "0a:00:00:00:00:15",
                "2001:db8::15",
                "0a:00:00:00:06:15",
            ),
            10,
        );
        let newer = raw(
            "10.244.5.0-24",
            &vxlan("192.0.2.16", "0a:00:00:00:00:16"),
            20,
        );
        let v6_clash = raw(
            "10.244.6.0-24&fd00:10:244:5::-64",
            &vxlan6(
                "192.0.2.17",
                "0a:00:00:00:00:17",
                "2001:db8::17",
                "0a:00:00:00:06:17",
            ),
            30,
        );
        let good = raw(
            "10.244.7.0-24",
            &vxlan("192.0.2.18", "0a:00:00:00:00:18"),
            5,
        );
        let a = validate_leases(&dual_policy(), [&newer, &v6_clash, &older, &good]);
        let b = validate_leases(&dual_policy(), [&good, &older, &v6_clash, &newer]);
        assert_eq!(a, b);
        let ips: Vec<String> = a
            .accepted
            .iter()
            .map(|l| l.attrs.public_ip.to_string())
            .collect();
        assert_eq!(ips, ["192.0.2.15", "192.0.2.18"]);
        assert_eq!(a.rejected.len(), 2);
        assert_eq!(a.rejected[0].key, newer.key);
        assert_eq!(
            a.rejected[0].to_string(),
            format!(
                "lease {}: subnet 10.244.5.0/24 overlaps the older lease {}",
                newer.key, older.key
            )
        );
        assert_eq!(a.rejected[1].key, v6_clash.key);
        assert_eq!(a.rejected[1].reason.label(), "overlap");
    }

    #[test]
    fn a_change_judged_alone_agrees_with_the_whole_table() {
        let p = policy();
        let table: BTreeMap<String, RawLease> = [
            raw(
                "10.244.2.0-24",
                &vxlan("192.0.2.12", "0a:00:00:00:00:12"),
                2,
            ),
            raw(
                "10.244.3.0-24",
                &vxlan("192.0.2.13", "0a:00:00:00:00:13"),
                3,
            ),
        ]
        .into_iter()
        .map(|r| (r.key.clone(), r))
        .collect();
        let (_, claims) = validate_leases_indexed(&p, table.values());
        // (key, new value or None, whether it may be judged alone)
        let steps: Vec<(&str, Option<RawLease>, bool)> = vec![
            (
                "10.244.4.0-24",
                Some(raw(
                    "10.244.4.0-24",
                    &vxlan("192.0.2.14", "0a:00:00:00:00:14"),
                    4,
                )),
                true,
            ),
            (
                "10.244.4.0-24",
                Some(raw(
                    "10.244.4.0-24",
                    &vxlan("192.0.2.14", "0a:00:00:00:00:24"),
                    4,
                )),
                true,
            ),
            (
                "10.244.5.0-24",
                Some(raw("10.244.5.0-24", "not json", 5)),
                true,
            ),
            (
                "10.244.6.0-24",
                Some(raw(
                    "10.244.6.0-24",
                    &vxlan("192.0.2.11", "0a:00:00:00:00:16"),
                    6,
                )),
                true,
            ),
            // Another node's MAC: the older owner keeps it.
            (
                "10.244.7.0-24",
                Some(raw(
                    "10.244.7.0-24",
                    &vxlan("192.0.2.17", "0a:00:00:00:00:12"),
                    7,
                )),
                false,
            ),
            // The owner goes: the younger one now wins, which only the whole table shows.
            ("10.244.2.0-24", None, false),
            ("10.244.3.0-24", None, true),
            // A dual-stack key in an IPv4-only network is believed for IPv4 alone (its IPv6
            // part plays no role), so it is judged alone like any other key.
            (
                "10.244.8.0-24&fd00:10:244:8::-64",
                Some(raw(
                    "10.244.8.0-24&fd00:10:244:8::-64",
                    &vxlan("192.0.2.18", "0a:00:00:00:00:18"),
                    8,
                )),
                true,
            ),
        ];
        judged_alone_agrees_with_the_whole_table(&p, table, claims, steps);
    }

    #[test]
    fn a_dual_stack_change_judged_alone_agrees_with_the_whole_table() {
        let p = dual_policy();
        let value = |n: u8| {
            vxlan6(
                &format!("192.0.2.{n}"),
                &format!("0a:00:00:00:00:{n:02x}"),
                &format!("2001:db8::{n:x}"),
                &format!("0a:00:00:00:06:{n:02x}"),
            )
        };
        let table: BTreeMap<String, RawLease> = [
            raw("10.244.2.0-24&fd00:10:244:2::-64", &value(2), 2),
            raw("10.244.3.0-24&fd00:10:244:3::-64", &value(3), 3),
        ]
        .into_iter()
        .map(|r| (r.key.clone(), r))
        .collect();
        let (_, claims) = validate_leases_indexed(&p, table.values());
        let steps: Vec<(&str, Option<RawLease>, bool)> = vec![
            // A new node: both subnets, both VTEPs free.
            (
                "10.244.4.0-24&fd00:10:244:4::-64",
                Some(raw("10.244.4.0-24&fd00:10:244:4::-64", &value(4), 4)),
                true,
            ),
            // Its PublicIPv6 changes: judged alone.
            (
                "10.244.4.0-24&fd00:10:244:4::-64",
                Some(raw(
                    "10.244.4.0-24&fd00:10:244:4::-64",
                    &vxlan6(
                        "192.0.2.4",
                        "0a:00:00:00:00:04",
                        "2001:db8::44",
                        "0a:00:00:00:06:04",
                    ),
                    4,
                )),
                true,
            ),
            // A free IPv4 subnet with node 2's IPv6 subnet: the older key keeps it, which
            // only the whole table shows.
            (
                "10.244.5.0-24&fd00:10:244:2::-64",
                Some(raw("10.244.5.0-24&fd00:10:244:2::-64", &value(5), 5)),
                false,
            ),
            // Free subnets with node 3's IPv6 VTEP MAC from another node.
            (
                "10.244.6.0-24&fd00:10:244:6::-64",
                Some(raw(
                    "10.244.6.0-24&fd00:10:244:6::-64",
                    &vxlan6(
                        "192.0.2.6",
                        "0a:00:00:00:00:06",
                        "2001:db8::6",
                        "0a:00:00:00:06:03",
                    ),
                    6,
                )),
                false,
            ),
            // Node 4 goes: nobody else claimed its subnets.
            ("10.244.4.0-24&fd00:10:244:4::-64", None, true),
            // The owner of fd00:10:244:2::/64 goes: the younger claimant now wins.
            ("10.244.2.0-24&fd00:10:244:2::-64", None, false),
            // A key that does not parse as a lease is judged alone (rejected).
            (
                "10.244.7.0-24&fd00:10:244:7::-64",
                Some(raw("10.244.7.0-24&fd00:10:244:7::-64", "{garbage", 7)),
                true,
            ),
        ];
        judged_alone_agrees_with_the_whole_table(&p, table, claims, steps);
    }

    #[test]
    fn an_ipv6_only_change_is_judged_alone_unless_it_collides_on_its_ipv6_claims() {
        let p = v6_only_policy();
        let value = |n: u8, mac: u8| {
            vxlan6(
                "0.0.0.0",
                "",
                &format!("2001:db8::{n:x}"),
                &format!("0a:00:00:00:06:{mac:02x}"),
            )
        };
        let table: BTreeMap<String, RawLease> =
            [raw("0.0.0.0-0&fd00:10:244:2::-64", &value(2, 2), 2)]
                .into_iter()
                .map(|r| (r.key.clone(), r))
                .collect();
        let (_, claims) = validate_leases_indexed(&p, table.values());
        // Every IPv6-only key's IPv4 part is 0.0.0.0/0: that claims nothing, the IPv6 subnet
        // and the VTEP MACs do.
        let steps: Vec<(&str, Option<RawLease>, bool)> = vec![
            (
                "0.0.0.0-0&fd00:10:244:3::-64",
                Some(raw("0.0.0.0-0&fd00:10:244:3::-64", &value(3, 3), 3)),
                true,
            ),
            // Another node's VTEP MAC: the older key keeps it.
            (
                "0.0.0.0-0&fd00:10:244:4::-64",
                Some(raw("0.0.0.0-0&fd00:10:244:4::-64", &value(4, 3), 4)),
                false,
            ),
            (
                "0.0.0.0-0&fd00:10:244:4::-64",
                Some(raw("0.0.0.0-0&fd00:10:244:4::-64", &value(4, 4), 5)),
                false,
            ),
            // An IPv4 part in an IPv6-only network: rejected alone, claims nothing.
            (
                "10.244.5.0-24&fd00:10:244:5::-64",
                Some(raw("10.244.5.0-24&fd00:10:244:5::-64", &value(5, 5), 6)),
                true,
            ),
            ("0.0.0.0-0&fd00:10:244:2::-64", None, true),
            (
                "0.0.0.0-0&fd00:10:244:4::-64",
                Some(raw("0.0.0.0-0&fd00:10:244:4::-64", &value(14, 4), 7)),
                true,
            ),
        ];
        judged_alone_agrees_with_the_whole_table(&p, table, claims, steps);
    }

    /// Applies `steps` (key, new value or None, whether the change may be judged alone) to
    /// `table` one by one, and checks each verdict of [`LeaseClaims::update`] against the
    /// whole table's validation, and the claims against the whole table's index.
    fn judged_alone_agrees_with_the_whole_table(
        p: &LeasePolicy,
        mut table: BTreeMap<String, RawLease>,
        mut claims: LeaseClaims,
        steps: Vec<(&str, Option<RawLease>, bool)>,
    ) {
        let key = |k: &str| format!("{PREFIX}/subnets/{k}");
        for (k, new, alone) in steps {
            let k = key(k);
            let old = match &new {
                Some(r) => table.insert(k.clone(), r.clone()),
                None => table.remove(&k),
            };
            let verdict = claims.update(p, old.as_ref(), new.as_ref());
            let whole = validate_leases(p, table.values());
            match verdict {
                ChangedKey::Collides => {
                    assert!(!alone, "{k} was sent to the whole table");
                    claims = validate_leases_indexed(p, table.values()).1;
                }
                ChangedKey::Gone => {
                    assert!(alone && new.is_none(), "{k}");
                    assert!(!whole.accepted.iter().any(|l| dual_lease_key(
                        PREFIX,
                        l.subnet,
                        l.ipv6_subnet
                    ) == k));
                }
                ChangedKey::Judged(judged) => {
                    assert!(alone, "{k} was judged alone");
                    match judged {
                        Ok(lease) => assert!(whole.accepted.contains(&lease), "{k}"),
                        Err(reason) => assert!(
                            whole
                                .rejected
                                .iter()
                                .any(|r| r.key == k && r.reason == reason),
                            "{k}: {reason}"
                        ),
                    }
                }
            }
            assert_eq!(claims, validate_leases_indexed(p, table.values()).1, "{k}");
        }
    }

    #[test]
    fn ipv6_overlaps_are_found_by_range_whatever_the_prefix_lengths() {
        let mut accepted = AcceptedSubnets::default();
        let net = |s: &str| -> Ipv6Network { s.parse().unwrap() };
        let dual = |v6: &str| DualSubnet {
            v4: "0.0.0.0/0".parse().unwrap(),
            v6: Some(net(v6)),
        };
        accepted.insert(dual("fd00:10:244:2::/64"), "two");
        accepted.insert(dual("fd00:10:244:4::/64"), "four");
        assert_eq!(
            accepted.overlapping_v6(&net("fd00:10:244:2::/64")),
            Some("two")
        );
        assert_eq!(accepted.overlapping_v6(&net("fd00:10:244:3::/64")), None);
        assert_eq!(accepted.overlapping_v6(&net("fd00:10:244:5::/64")), None);
        // Inside one, and covering both.
        assert_eq!(
            accepted.overlapping_v6(&net("fd00:10:244:2:8000::/65")),
            Some("two")
        );
        assert!(accepted.overlapping_v6(&net("fd00:10:244::/48")).is_some());
        assert_eq!(
            accepted.overlapping_v6(&net("fd00:10:244:4::1/128")),
            Some("four")
        );
        assert_eq!(
            accepted.overlapping_v6(&net("fd00:10:244:1:ffff::/80")),
            None
        );
        assert!(accepted.overlapping_v6(&net("::/0")).is_some());
    }

    #[test]
    fn a_vtep_mac_belongs_to_the_older_node() {
        let older = raw(
            "10.244.5.0-24",
            &vxlan("192.0.2.15", "0a:00:00:00:00:15"),
            10,
        );
        let thief = raw(
            "10.244.6.0-24",
            &vxlan("192.0.2.31", "0a:00:00:00:00:15"),
            20,
        );
        // The same node under two keys (a leftover of its own) is not a thief.
        let same_node = raw(
            "10.244.7.0-24",
            &vxlan("192.0.2.15", "0a:00:00:00:00:15"),
            30,
        );
        let v = validate_leases(&policy(), [&thief, &same_node, &older]);
        let subnets: Vec<String> = v.accepted.iter().map(|l| l.subnet.to_string()).collect();
        assert_eq!(subnets, ["10.244.5.0/24", "10.244.7.0/24"]);
        assert_eq!(v.rejected.len(), 1);
        assert_eq!(
            v.rejected[0].to_string(),
            format!(
                "lease {}: BackendData.VtepMAC \"0a:00:00:00:00:15\" is already the VTEP MAC of \
                 another node's older lease {}",
                thief.key, older.key
            )
        );
    }

    #[test]
    fn a_rejected_lease_does_not_shadow_a_valid_one() {
        // The older key is invalid, so the newer one on the same subnet is the one believed.
        let bad_older = raw(
            "10.244.5.0-24&fd00:10:244:5::-64",
            &vxlan("127.0.0.1", "0a:00:00:00:00:15"),
            10,
        );
        let newer = raw(
            "10.244.5.0-24",
            &vxlan("192.0.2.16", "0a:00:00:00:00:16"),
            20,
        );
        let v = validate_leases(&policy(), [&bad_older, &newer]);
        assert_eq!(v.accepted.len(), 1);
        assert_eq!(v.rejected[0].reason.label(), "public_ip");
    }

    #[test]
    fn other_backends_need_no_backend_data() {
        let mut p = policy();
        p.config =
            NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#)
                .unwrap();
        let r = raw(
            "10.244.3.0-24",
            r#"{"PublicIP":"192.0.2.13","BackendType":"host-gw"}"#,
            1,
        );
        assert!(validate_lease(&p, &r, &AcceptedSubnets::default()).is_ok());
        let r = raw(
            "10.244.3.0-24",
            &vxlan("192.0.2.13", "0a:00:00:00:00:13"),
            1,
        );
        let e = validate_lease(&p, &r, &AcceptedSubnets::default()).unwrap_err();
        assert_eq!(e.label(), "backend_type");
    }

    #[test]
    fn macs_parse_like_go() {
        assert_eq!(
            parse_mac("0A:1b:2c:3d:4e:5f"),
            Some([0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f])
        );
        for bad in [
            "",
            "0a:1b:2c:3d:4e",
            "0a:1b:2c:3d:4e:5f:00",
            "0a-1b-2c-3d-4e-5f",
            "+a:1b:2c:3d:4e:5f",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
    }
}
