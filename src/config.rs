//! Flannel's network configuration (`<prefix>/config`): parsing, defaulting and validation.
//!
//! The rules follow Flannel's `pkg/subnet/config.go` (`ParseConfig` + `CheckNetworkConfig`):
//! JSON keys match case-insensitively, `SubnetLen` defaults to 24 for a /22 or larger network
//! and to prefix + 2 otherwise, `SubnetMin` skips the first subnet, `SubnetMax` is the last one,
//! and networks smaller than a /28 are rejected. Unlike Flannel, a missing `Backend` means vxlan.
//!
//! IPv6 follows the same rules with Flannel's IPv6 keys (`EnableIPv6`, `IPv6Network`,
//! `IPv6SubnetLen` defaulting to 64 for a /62 or larger network, `IPv6SubnetMin`,
//! `IPv6SubnetMax`); `EnableIPv4: false` makes an IPv6-only network.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde_json::{Map, Value};

use crate::wireguard_key::SecretKey;

/// Default VXLAN network identifier (Flannel's).
pub const DEFAULT_VXLAN_VNI: u32 = 1;
/// Default VXLAN UDP port (Linux's and Flannel's).
pub const DEFAULT_VXLAN_PORT: u16 = 8472;
/// Default UDP backend port (Flannel's).
pub const DEFAULT_UDP_PORT: u16 = 8285;
/// Default WireGuard listen port of `flannel-wg` (Flannel's `ListenPort`).
pub const DEFAULT_WIREGUARD_PORT: u16 = 51820;
/// Default WireGuard listen port of `flannel-wg-v6` (Flannel's `ListenPortV6`).
pub const DEFAULT_WIREGUARD_PORT_V6: u16 = 51821;
/// Largest VNI a 24-bit VXLAN header carries.
const MAX_VXLAN_VNI: u64 = (1 << 24) - 1;
/// Smallest MTU an IPv4 interface may have.
const MIN_MTU: u64 = 68;

/// An invalid network configuration; every variant names the field and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The text is not JSON, or not a JSON object.
    #[error("network config: not a JSON object: {0}")]
    Json(String),
    /// A required field is absent.
    #[error("network config: field {field} is missing")]
    Missing {
        /// The field's name as Flannel spells it.
        field: &'static str,
    },
    /// A field holds a value that is malformed or out of range.
    #[error("network config: field {field} = {value}: {reason}")]
    Invalid {
        /// The field's name as Flannel spells it (`Backend.VNI` for nested fields).
        field: &'static str,
        /// The offending value, as written in the JSON.
        value: String,
        /// Why the value is rejected.
        reason: String,
    },
}

/// The backend section of the network config (`Backend`), already defaulted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendConfig {
    /// `{"Type": "vxlan"}` (also the default when `Backend` is absent).
    Vxlan {
        /// `VNI`, default 1.
        vni: u32,
        /// `Port`, default 8472.
        port: u16,
        /// `DirectRouting`, default false.
        direct_routing: bool,
        /// `MTU`, default: interface MTU - 50.
        mtu: Option<u32>,
    },
    /// `{"Type": "udp"}`.
    Udp {
        /// `Port`, default 8285.
        port: u16,
    },
    /// `{"Type": "host-gw"}`.
    HostGw,
    /// `{"Type": "wireguard"}`.
    WireGuard(WireGuardConfig),
}

/// Flannel's `wireguard` backend settings, defaulted as flanneld defaults them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireGuardConfig {
    /// `ListenPort` of `flannel-wg`, default 51820 (0 also means the default).
    pub listen_port: u16,
    /// `ListenPortV6` of `flannel-wg-v6`, default 51821; used once IPv6 is enabled.
    pub listen_port_v6: u16,
    /// `PSK`: a pre-shared key mixed into every handshake, if set. Never logged.
    pub psk: Option<SecretKey>,
    /// `MTU` of the underlay the tunnel rides on, default the external interface's; the
    /// device and the pods get this minus 80 (Flannel's overhead).
    pub mtu: Option<u32>,
    /// `PersistentKeepaliveInterval` in seconds, 0 (default) for none.
    pub persistent_keepalive: u16,
    /// `Mode`, default `separate`.
    pub mode: WireGuardMode,
}

/// Flannel's WireGuard `Mode`: how IPv4 and IPv6 share devices. With IPv4 alone every mode
/// means one device, `flannel-wg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireGuardMode {
    /// `separate`: `flannel-wg` for IPv4, `flannel-wg-v6` for IPv6.
    Separate,
    /// `auto`: one device; the underlay family per peer as Flannel picks it.
    Auto,
    /// `ipv4`: one device over the IPv4 underlay.
    Ipv4,
    /// `ipv6`: one device over the IPv6 underlay.
    Ipv6,
}

impl WireGuardMode {
    /// The value as Flannel spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            WireGuardMode::Separate => "separate",
            WireGuardMode::Auto => "auto",
            WireGuardMode::Ipv4 => "ipv4",
            WireGuardMode::Ipv6 => "ipv6",
        }
    }
}

impl BackendConfig {
    /// The backend's `Type` as Flannel writes it in `BackendType` of a lease.
    pub fn type_name(&self) -> &'static str {
        match self {
            BackendConfig::Vxlan { .. } => "vxlan",
            BackendConfig::Udp { .. } => "udp",
            BackendConfig::HostGw => "host-gw",
            BackendConfig::WireGuard(_) => "wireguard",
        }
    }
}

/// The IPv6 half of a dual-stack or IPv6-only network config, already defaulted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Config {
    /// `IPv6Network`: the cluster's IPv6 pod network.
    pub network: Ipv6Network,
    /// `IPv6SubnetLen`: the prefix length of each node's IPv6 subnet.
    pub subnet_len: u8,
    /// `IPv6SubnetMin`: the lowest IPv6 subnet handed out.
    pub subnet_min: Ipv6Addr,
    /// `IPv6SubnetMax`: the highest IPv6 subnet handed out.
    pub subnet_max: Ipv6Addr,
}

impl Ipv6Config {
    /// Whether `subnet` is a node subnet this config could hand out: the right prefix length,
    /// aligned, and between `IPv6SubnetMin` and `IPv6SubnetMax`.
    pub fn contains_subnet(&self, subnet: &Ipv6Network) -> bool {
        subnet.prefix() == self.subnet_len
            && subnet.ip() == subnet.network()
            && subnet.ip() >= self.subnet_min
            && subnet.ip() <= self.subnet_max
    }
}

/// A parsed and defaulted network configuration.
///
/// With `EnableIPv4: false` (`enable_ipv4` false) the IPv4 fields hold Flannel's zero values
/// (`0.0.0.0/0`, length 0) and nothing of IPv4 is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// `EnableIPv4` (default true): whether nodes get IPv4 subnets.
    pub enable_ipv4: bool,
    /// `Network`: the cluster's pod network.
    pub network: Ipv4Network,
    /// `SubnetLen`: the prefix length of each node's subnet.
    pub subnet_len: u8,
    /// `SubnetMin`: the lowest subnet handed out.
    pub subnet_min: std::net::Ipv4Addr,
    /// `SubnetMax`: the highest subnet handed out.
    pub subnet_max: std::net::Ipv4Addr,
    /// `Backend`, defaulted.
    pub backend: BackendConfig,
    /// `EnableIPv6` with `IPv6Network` and friends; `None` when IPv6 is off.
    pub ipv6: Option<Ipv6Config>,
}

impl NetworkConfig {
    /// Parses, defaults and validates Flannel's JSON network config.
    pub fn parse(json: &str) -> Result<NetworkConfig, ConfigError> {
        let value: Value =
            serde_json::from_str(json).map_err(|e| ConfigError::Json(e.to_string()))?;
        let Value::Object(top) = value else {
            return Err(ConfigError::Json(format!("top level is {}", kind(&value))));
        };
        let fields = Fields::new(&top);

        let enable_ipv4 = match fields.get("EnableIPv4") {
            None => true,
            Some(v) => as_bool("EnableIPv4", v)?,
        };
        let enable_ipv6 = match fields.get("EnableIPv6") {
            None => false,
            Some(v) => as_bool("EnableIPv6", v)?,
        };
        if !enable_ipv4 && !enable_ipv6 {
            return Err(invalid(
                "EnableIPv4",
                fields.get("EnableIPv4").unwrap_or(&Value::Null),
                "with EnableIPv6 unset no address family is left; set EnableIPv6 for an IPv6-only network",
            ));
        }
        let backend = match fields.get("Backend") {
            None | Some(Value::Null) => default_vxlan(),
            Some(Value::Object(b)) => parse_backend(b)?,
            Some(v) => return Err(invalid("Backend", v, "not a JSON object")),
        };
        // Flannel ignores the IPv6 keys when IPv6 is off, and the IPv4 keys when IPv4 is off.
        let ipv6 = if enable_ipv6 {
            Some(parse_ipv6(&fields)?)
        } else {
            None
        };
        if !enable_ipv4 {
            return Ok(NetworkConfig {
                enable_ipv4,
                network: Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0)
                    .map_err(|e| invalid("Network", &Value::Null, &e.to_string()))?,
                subnet_len: 0,
                subnet_min: Ipv4Addr::UNSPECIFIED,
                subnet_max: Ipv4Addr::UNSPECIFIED,
                backend,
                ipv6,
            });
        }

        let network = match fields.get("Network") {
            None => return Err(ConfigError::Missing { field: "Network" }),
            Some(v) => parse_network(v)?,
        };
        let prefix = network.prefix();
        if prefix > 28 {
            return Err(invalid(
                "Network",
                fields.get("Network").unwrap_or(&Value::Null),
                "network is too small, the minimum useful prefix is /28",
            ));
        }

        let subnet_len = match fields.get("SubnetLen").map(|v| (v, v.as_u64())) {
            None | Some((_, Some(0))) if prefix <= 22 => 24,
            None | Some((_, Some(0))) => prefix + 2,
            Some((v, Some(len))) => {
                if len > 30 {
                    return Err(invalid("SubnetLen", v, "must be at most 30"));
                }
                if len < u64::from(prefix) + 2 {
                    return Err(invalid(
                        "SubnetLen",
                        v,
                        &format!(
                            "network {network} must hold at least four subnets, so SubnetLen must be at least {}",
                            prefix + 2
                        ),
                    ));
                }
                len as u8
            }
            Some((v, None)) => return Err(invalid("SubnetLen", v, "not an unsigned integer")),
        };

        let size = subnet_size(subnet_len);
        let net_start = u32::from(network.network());
        let net_end = u64::from(net_start) + (1u64 << (32 - prefix));
        let subnet_min = match address_field(&fields, "SubnetMin")? {
            None => Ipv4Addr::from(net_start + size),
            Some((v, ip)) => check_bound("SubnetMin", v, ip, &network, subnet_len)?,
        };
        let subnet_max = match address_field(&fields, "SubnetMax")? {
            // The network ends below 2^32, so the last subnet's start fits in u32.
            None => Ipv4Addr::from((net_end - u64::from(size)) as u32),
            Some((v, ip)) => check_bound("SubnetMax", v, ip, &network, subnet_len)?,
        };
        if subnet_min > subnet_max {
            return Err(ConfigError::Invalid {
                field: "SubnetMin",
                value: subnet_min.to_string(),
                reason: format!("is above SubnetMax {subnet_max}, no subnet can be handed out"),
            });
        }

        Ok(NetworkConfig {
            enable_ipv4,
            network,
            subnet_len,
            subnet_min,
            subnet_max,
            backend,
            ipv6,
        })
    }

    /// The number of addresses in one node subnet.
    pub fn subnet_size(&self) -> u32 {
        subnet_size(self.subnet_len)
    }

    /// Whether `subnet` is a node subnet this config could hand out: the right prefix length,
    /// aligned, and between `SubnetMin` and `SubnetMax`. Always false for an IPv6-only network.
    pub fn contains_subnet(&self, subnet: &Ipv4Network) -> bool {
        self.enable_ipv4
            && subnet.prefix() == self.subnet_len
            && subnet.ip() == subnet.network()
            && subnet.ip() >= self.subnet_min
            && subnet.ip() <= self.subnet_max
    }
}

impl NetworkConfig {
    /// Whether a lease's subnets fit this config in every enabled family, and carry nothing of a
    /// disabled one (Flannel's `isSubnetConfigCompat` and `isIPv6SubnetConfigCompat`). An
    /// IPv6-only lease has the IPv4 part `0.0.0.0/0`, as Flannel keys it.
    pub fn fits_lease(&self, v4: &Ipv4Network, v6: Option<&Ipv6Network>) -> bool {
        let v4_fits = if self.enable_ipv4 {
            self.contains_subnet(v4)
        } else {
            v4.prefix() == 0 && v4.ip().is_unspecified()
        };
        let v6_fits = match (&self.ipv6, v6) {
            (Some(cfg), Some(n)) => cfg.contains_subnet(n),
            (None, None) => true,
            _ => false,
        };
        v4_fits && v6_fits
    }
}

/// How a network config written while weftd runs relates to the running one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigChange {
    /// Nothing that matters changed (e.g. only the JSON's spelling).
    Same,
    /// Only `SubnetMin`/`SubnetMax` (or their IPv6 twins): they steer which subnet is handed out next, so they apply
    /// at once.
    Live,
    /// `Network` or `SubnetLen`, an address family or the IPv6 network (existing leases would be
    /// orphaned) or `Backend` (the data path
    /// would be rebuilt under running pods): applied only by restarting weftd.
    NeedsRestart,
}

impl NetworkConfig {
    /// Classifies `new` against `self`, the running config.
    pub fn change_to(&self, new: &NetworkConfig) -> ConfigChange {
        if self == new {
            ConfigChange::Same
        } else if self.enable_ipv4 == new.enable_ipv4
            && self.network == new.network
            && self.subnet_len == new.subnet_len
            && self.backend == new.backend
            && self.ipv6.as_ref().map(|v6| (v6.network, v6.subnet_len))
                == new.ipv6.as_ref().map(|v6| (v6.network, v6.subnet_len))
        {
            ConfigChange::Live
        } else {
            ConfigChange::NeedsRestart
        }
    }
}

/// One line for logs, e.g. `Network 10.244.0.0/16, SubnetLen 24, SubnetMin 10.244.1.0,
/// SubnetMax 10.244.255.0, Backend vxlan (VNI 1, Port 8472, DirectRouting false, MTU auto)`.
impl std::fmt::Display for NetworkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.enable_ipv4 {
            write!(
                f,
                "Network {}, SubnetLen {}, SubnetMin {}, SubnetMax {}, ",
                self.network, self.subnet_len, self.subnet_min, self.subnet_max
            )?;
        }
        if let Some(v6) = &self.ipv6 {
            write!(
                f,
                "IPv6Network {}, IPv6SubnetLen {}, IPv6SubnetMin {}, IPv6SubnetMax {}, ",
                v6.network, v6.subnet_len, v6.subnet_min, v6.subnet_max
            )?;
        }
        write!(f, "Backend ")?;
        match &self.backend {
            BackendConfig::Vxlan {
                vni,
                port,
                direct_routing,
                mtu,
            } => {
                let mtu = mtu.map_or_else(|| "auto".to_string(), |m| m.to_string());
                write!(
                    f,
                    "vxlan (VNI {vni}, Port {port}, DirectRouting {direct_routing}, MTU {mtu})"
                )
            }
            BackendConfig::Udp { port } => write!(f, "udp (Port {port})"),
            BackendConfig::HostGw => write!(f, "host-gw"),
            BackendConfig::WireGuard(wg) => {
                let mtu = wg.mtu.map_or_else(|| "auto".to_string(), |m| m.to_string());
                // The PSK is a secret: only whether one is set.
                let psk = if wg.psk.is_some() { "set" } else { "none" };
                write!(
                    f,
                    "wireguard (ListenPort {}, ListenPortV6 {}, PSK {psk}, MTU {mtu}, PersistentKeepaliveInterval {}, Mode {})",
                    wg.listen_port,
                    wg.listen_port_v6,
                    wg.persistent_keepalive,
                    wg.mode.as_str()
                )
            }
        }
    }
}

/// The JSON object's fields, looked up case-insensitively like Go's `encoding/json`.
struct Fields<'a>(&'a Map<String, Value>);

impl<'a> Fields<'a> {
    fn new(map: &'a Map<String, Value>) -> Self {
        Fields(map)
    }

    /// An exact match wins; otherwise a case-insensitive one, as Go does.
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.0.get(name).or_else(|| {
            self.0
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
                .next_back()
        })
    }
}

fn subnet_size(subnet_len: u8) -> u32 {
    1u32 << (32 - u32::from(subnet_len))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn invalid(field: &'static str, value: &Value, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        field,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

fn as_bool(field: &'static str, v: &Value) -> Result<bool, ConfigError> {
    v.as_bool()
        .ok_or_else(|| invalid(field, v, "not a boolean"))
}

fn parse_network(v: &Value) -> Result<Ipv4Network, ConfigError> {
    let s = v
        .as_str()
        .ok_or_else(|| invalid("Network", v, "not a string in CIDR notation"))?;
    let net: Ipv4Network = s
        .parse()
        .map_err(|e| invalid("Network", v, &format!("not an IPv4 CIDR: {e}")))?;
    // Masked first, as flanneld does (Go's net.ParseCIDR): `10.0.0.0/0` is 0.0.0.0/0 too.
    if net.prefix() == 0 {
        return Err(invalid("Network", v, "the network is empty"));
    }
    let network = Ipv4Network::new(net.network(), net.prefix())
        .map_err(|e| invalid("Network", v, &e.to_string()))?;
    not_special("Network", v, network.into())?;
    Ok(network)
}

/// Refuses a pod network that overlaps one of [`SPECIAL_V4`] or [`SPECIAL_V6`].
fn not_special(field: &'static str, v: &Value, network: IpNetwork) -> Result<(), ConfigError> {
    let hit = match network {
        IpNetwork::V4(n) => SPECIAL_V4
            .iter()
            .find(|(r, _)| r.overlaps(n))
            .map(|(r, what)| (IpNetwork::V4(*r), *what)),
        IpNetwork::V6(n) => SPECIAL_V6
            .iter()
            .find(|(r, _)| r.overlaps(n))
            .map(|(r, what)| (IpNetwork::V6(*r), *what)),
    };
    match hit {
        Some((range, what)) => Err(invalid(
            field,
            v,
            &format!("overlaps {range} ({what}): leases there would route it into the overlay"),
        )),
        None => Ok(()),
    }
}

/// IPv4 ranges a pod network must not touch (RFC 6890): the routes of its leases would take
/// the node's own loopback, link-local (169.254.169.254 metadata) or multicast traffic.
const SPECIAL_V4: [(Ipv4Network, &str); 5] = [
    (v4net([0, 0, 0, 0], 8), "this network"),
    (v4net([127, 0, 0, 0], 8), "loopback"),
    (v4net([169, 254, 0, 0], 16), "link-local"),
    (v4net([224, 0, 0, 0], 4), "multicast"),
    (v4net([240, 0, 0, 0], 4), "reserved"),
];

/// IPv6 ranges a pod network must not touch, as [`SPECIAL_V4`].
const SPECIAL_V6: [(Ipv6Network, &str); 3] = [
    (
        v6net([0, 0, 0, 0, 0, 0, 0, 0], 127),
        "unspecified and loopback",
    ),
    (v6net([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), "link-local"),
    (v6net([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), "multicast"),
];

const fn v4net(a: [u8; 4], prefix: u8) -> Ipv4Network {
    match Ipv4Network::new_checked(Ipv4Addr::new(a[0], a[1], a[2], a[3]), prefix) {
        Some(n) => n,
        None => panic!("bad constant prefix"),
    }
}

const fn v6net(s: [u16; 8], prefix: u8) -> Ipv6Network {
    let ip = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]);
    match Ipv6Network::new_checked(ip, prefix) {
        Some(n) => n,
        None => panic!("bad constant prefix"),
    }
}

fn address_field<'a>(
    fields: &Fields<'a>,
    field: &'static str,
) -> Result<Option<(&'a Value, Ipv4Addr)>, ConfigError> {
    let Some(v) = fields.get(field) else {
        return Ok(None);
    };
    let s = v
        .as_str()
        .ok_or_else(|| invalid(field, v, "not an IPv4 address string"))?;
    let ip: Ipv4Addr = s
        .parse()
        .map_err(|e| invalid(field, v, &format!("not an IPv4 address: {e}")))?;
    // Go leaves an unset address at 0.0.0.0 and then defaults it.
    Ok((!ip.is_unspecified()).then_some((v, ip)))
}

fn check_bound(
    field: &'static str,
    v: &Value,
    ip: Ipv4Addr,
    network: &Ipv4Network,
    subnet_len: u8,
) -> Result<Ipv4Addr, ConfigError> {
    if !network.contains(ip) {
        return Err(invalid(field, v, &format!("not inside Network {network}")));
    }
    let mask = u32::MAX << (32 - u32::from(subnet_len));
    if u32::from(ip) & mask != u32::from(ip) {
        return Err(invalid(
            field,
            v,
            &format!("not on a /{subnet_len} (SubnetLen) boundary"),
        ));
    }
    Ok(ip)
}

/// The IPv6 keys, defaulted and checked as Flannel's `CheckNetworkConfig` does.
fn parse_ipv6(fields: &Fields<'_>) -> Result<Ipv6Config, ConfigError> {
    let Some(v) = fields.get("IPv6Network") else {
        return Err(ConfigError::Missing {
            field: "IPv6Network",
        });
    };
    let text = v
        .as_str()
        .ok_or_else(|| invalid("IPv6Network", v, "not a string in CIDR notation"))?;
    let parsed: Ipv6Network = text
        .parse()
        .map_err(|e| invalid("IPv6Network", v, &format!("not an IPv6 CIDR: {e}")))?;
    if parsed.prefix() == 0 {
        return Err(invalid("IPv6Network", v, "the network is empty"));
    }
    // Masked to its network, as Go's net.ParseCIDR does.
    let network = Ipv6Network::new(parsed.network(), parsed.prefix())
        .map_err(|e| invalid("IPv6Network", v, &e.to_string()))?;
    not_special("IPv6Network", v, network.into())?;
    let prefix = network.prefix();
    let subnet_len = match fields.get("IPv6SubnetLen").map(|v| (v, v.as_u64())) {
        None | Some((_, Some(0))) if prefix > 124 => {
            return Err(invalid(
                "IPv6Network",
                v,
                "network is too small, the minimum useful prefix is /124",
            ))
        }
        None | Some((_, Some(0))) if prefix <= 62 => 64,
        None | Some((_, Some(0))) => prefix + 2,
        Some((l, Some(len))) => {
            if len > 126 {
                return Err(invalid("IPv6SubnetLen", l, "must be at most 126"));
            }
            if len < u64::from(prefix) + 2 {
                return Err(invalid(
                    "IPv6SubnetLen",
                    l,
                    &format!(
                        "network {network} must hold at least four subnets, so IPv6SubnetLen must be at least {}",
                        prefix + 2
                    ),
                ));
            }
            len as u8
        }
        Some((l, None)) => return Err(invalid("IPv6SubnetLen", l, "not an unsigned integer")),
    };
    let size = 1u128 << (128 - u32::from(subnet_len));
    let start = u128::from(network.network());
    // The network's last address; its last subnet starts `size - 1` below it.
    let end = start | (u128::MAX >> prefix);
    let subnet_min = match address6_field(fields, "IPv6SubnetMin")? {
        None => Ipv6Addr::from(start + size),
        Some((v, ip)) => check_bound6("IPv6SubnetMin", v, ip, &network, subnet_len)?,
    };
    let subnet_max = match address6_field(fields, "IPv6SubnetMax")? {
        None => Ipv6Addr::from(end - (size - 1)),
        Some((v, ip)) => check_bound6("IPv6SubnetMax", v, ip, &network, subnet_len)?,
    };
    if subnet_min > subnet_max {
        return Err(ConfigError::Invalid {
            field: "IPv6SubnetMin",
            value: subnet_min.to_string(),
            reason: format!("is above IPv6SubnetMax {subnet_max}, no subnet can be handed out"),
        });
    }
    Ok(Ipv6Config {
        network,
        subnet_len,
        subnet_min,
        subnet_max,
    })
}

fn address6_field<'a>(
    fields: &Fields<'a>,
    field: &'static str,
) -> Result<Option<(&'a Value, Ipv6Addr)>, ConfigError> {
    let Some(v) = fields.get(field) else {
        return Ok(None);
    };
    let s = v
        .as_str()
        .ok_or_else(|| invalid(field, v, "not an IPv6 address string"))?;
    let ip: Ipv6Addr = s
        .parse()
        .map_err(|e| invalid(field, v, &format!("not an IPv6 address: {e}")))?;
    // Go leaves an unset address at :: and then defaults it.
    Ok((!ip.is_unspecified()).then_some((v, ip)))
}

fn check_bound6(
    field: &'static str,
    v: &Value,
    ip: Ipv6Addr,
    network: &Ipv6Network,
    subnet_len: u8,
) -> Result<Ipv6Addr, ConfigError> {
    if !network.contains(ip) {
        return Err(invalid(
            field,
            v,
            &format!("not inside IPv6Network {network}"),
        ));
    }
    let mask = u128::MAX << (128 - u32::from(subnet_len));
    if u128::from(ip) & mask != u128::from(ip) {
        return Err(invalid(
            field,
            v,
            &format!("not on a /{subnet_len} (IPv6SubnetLen) boundary"),
        ));
    }
    Ok(ip)
}

fn default_vxlan() -> BackendConfig {
    BackendConfig::Vxlan {
        vni: DEFAULT_VXLAN_VNI,
        port: DEFAULT_VXLAN_PORT,
        direct_routing: false,
        mtu: None,
    }
}

fn parse_backend(backend: &Map<String, Value>) -> Result<BackendConfig, ConfigError> {
    let fields = Fields::new(backend);
    let kind = match fields.get("Type") {
        None | Some(Value::Null) => "vxlan",
        Some(v) => v
            .as_str()
            .ok_or_else(|| invalid("Backend.Type", v, "not a string"))?,
    };
    match kind {
        "" | "vxlan" => {
            let vni = match fields.get("VNI") {
                None => DEFAULT_VXLAN_VNI,
                Some(v) => match v.as_u64() {
                    Some(n) if n <= MAX_VXLAN_VNI => n as u32,
                    _ => {
                        return Err(invalid(
                            "Backend.VNI",
                            v,
                            "must be an integer from 0 to 16777215",
                        ))
                    }
                },
            };
            let port = port_field(&fields, DEFAULT_VXLAN_PORT)?;
            let direct_routing = match fields.get("DirectRouting") {
                None => false,
                Some(v) => as_bool("Backend.DirectRouting", v)?,
            };
            let mtu = match fields.get("MTU") {
                None => None,
                Some(v) => match v.as_u64() {
                    Some(0) => None,
                    Some(n) if (MIN_MTU..=u64::from(u16::MAX)).contains(&n) => Some(n as u32),
                    _ => {
                        return Err(invalid(
                            "Backend.MTU",
                            v,
                            "must be 0 (automatic) or an integer from 68 to 65535",
                        ))
                    }
                },
            };
            Ok(BackendConfig::Vxlan {
                vni,
                port,
                direct_routing,
                mtu,
            })
        }
        "udp" => Ok(BackendConfig::Udp {
            port: port_field(&fields, DEFAULT_UDP_PORT)?,
        }),
        "host-gw" => Ok(BackendConfig::HostGw),
        "wireguard" => parse_wireguard(&fields).map(BackendConfig::WireGuard),
        other => Err(ConfigError::Invalid {
            field: "Backend.Type",
            value: format!("{other:?}"),
            reason:
                "unknown backend type, expected \"vxlan\", \"udp\", \"host-gw\" or \"wireguard\""
                    .into(),
        }),
    }
}

/// The `wireguard` backend's keys, as flanneld reads them (`RegisterNetwork`).
fn parse_wireguard(fields: &Fields<'_>) -> Result<WireGuardConfig, ConfigError> {
    let port = |field: &'static str, key: &str, default: u16| match fields.get(key) {
        None => Ok(default),
        Some(v) => match v.as_u64() {
            Some(0) => Ok(default),
            Some(n) if n <= u64::from(u16::MAX) => Ok(n as u16),
            _ => Err(invalid(
                field,
                v,
                "must be an integer from 0 (default) to 65535",
            )),
        },
    };
    let listen_port = port("Backend.ListenPort", "ListenPort", DEFAULT_WIREGUARD_PORT)?;
    let listen_port_v6 = port(
        "Backend.ListenPortV6",
        "ListenPortV6",
        DEFAULT_WIREGUARD_PORT_V6,
    )?;
    let psk = match fields.get("PSK") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(v) => {
            let text = v.as_str().ok_or_else(|| {
                invalid("Backend.PSK", v, "not a string (a base64 WireGuard key)")
            })?;
            // The value is a secret: the error names the field and the problem, not the key.
            Some(SecretKey::parse(text).map_err(|e| ConfigError::Invalid {
                field: "Backend.PSK",
                value: "(secret)".to_string(),
                reason: format!("not a WireGuard pre-shared key: {e}"),
            })?)
        }
    };
    let mtu = match fields.get("MTU") {
        None => None,
        Some(v) => match v.as_u64() {
            Some(0) => None,
            // The device gets MTU - 80, which must still carry an IPv4 packet.
            Some(n) if (MIN_MTU + 80..=u64::from(u16::MAX)).contains(&n) => Some(n as u32),
            _ => {
                return Err(invalid(
                    "Backend.MTU",
                    v,
                    "must be 0 (automatic) or an integer from 148 to 65535",
                ))
            }
        },
    };
    let persistent_keepalive = match fields.get("PersistentKeepaliveInterval") {
        None => 0,
        Some(v) => match v.as_u64() {
            Some(n) if n <= u64::from(u16::MAX) => n as u16,
            _ => {
                return Err(invalid(
                    "Backend.PersistentKeepaliveInterval",
                    v,
                    "must be an integer number of seconds from 0 (off) to 65535",
                ))
            }
        },
    };
    let mode = match fields.get("Mode") {
        None | Some(Value::Null) => WireGuardMode::Separate,
        Some(v) => match v.as_str() {
            Some("") | Some("separate") => WireGuardMode::Separate,
            Some("auto") => WireGuardMode::Auto,
            Some("ipv4") => WireGuardMode::Ipv4,
            Some("ipv6") => WireGuardMode::Ipv6,
            _ => {
                return Err(invalid(
                    "Backend.Mode",
                    v,
                    "must be \"separate\", \"auto\", \"ipv4\" or \"ipv6\"",
                ))
            }
        },
    };
    Ok(WireGuardConfig {
        listen_port,
        listen_port_v6,
        psk,
        mtu,
        persistent_keepalive,
        mode,
    })
}

fn port_field(fields: &Fields<'_>, default: u16) -> Result<u16, ConfigError> {
    match fields.get("Port") {
        None => Ok(default),
        Some(v) => match v.as_u64() {
            // Flannel treats Port 0 as "use the default".
            Some(0) => Ok(default),
            Some(n) if n <= u64::from(u16::MAX) => Ok(n as u16),
            _ => Err(invalid(
                "Backend.Port",
                v,
                "must be an integer from 0 (default) to 65535",
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> NetworkConfig {
        match NetworkConfig::parse(json) {
            Ok(c) => c,
            Err(e) => panic!("{json} must parse: {e}"),
        }
    }

    fn err(json: &str) -> ConfigError {
        match NetworkConfig::parse(json) {
            Ok(c) => panic!("{json} must be rejected, got {c:?}"),
            Err(e) => e,
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn flannel_defaults_for_a_slash_16() {
        let c = parse(r#"{"Network": "10.244.0.0/16"}"#);
        assert_eq!(c.network, "10.244.0.0/16".parse().unwrap());
        assert_eq!(c.subnet_len, 24);
        assert_eq!(c.subnet_min, ip("10.244.1.0"));
        assert_eq!(c.subnet_max, ip("10.244.255.0"));
        assert_eq!(
            c.backend,
            BackendConfig::Vxlan {
                vni: 1,
                port: 8472,
                direct_routing: false,
                mtu: None
            }
        );
        assert_eq!(c.subnet_size(), 256);
    }

    #[test]
    fn flannel_config_test_defaults() {
        // Flannel's TestConfigDefaults: 10.3.0.0/16 gives /24s from 10.3.1.0 to 10.3.255.0.
        let c = parse(r#"{ "network": "10.3.0.0/16" }"#);
        assert_eq!(c.subnet_min, ip("10.3.1.0"));
        assert_eq!(c.subnet_max, ip("10.3.255.0"));
        assert_eq!(c.subnet_len, 24);
    }

    #[test]
    fn small_networks_are_split_in_four() {
        let c = parse(r#"{"Network": "10.1.2.0/23"}"#);
        assert_eq!(c.subnet_len, 25);
        assert_eq!(c.subnet_min, ip("10.1.2.128"));
        assert_eq!(c.subnet_max, ip("10.1.3.128"));
        let c = parse(r#"{"Network": "10.1.2.0/28"}"#);
        assert_eq!(c.subnet_len, 30);
        assert_eq!(c.subnet_min, ip("10.1.2.4"));
        assert_eq!(c.subnet_max, ip("10.1.2.12"));
        let c = parse(r#"{"Network": "10.0.0.0/22"}"#);
        assert_eq!(c.subnet_len, 24);
        assert_eq!(c.subnet_max, ip("10.0.3.0"));
    }

    #[test]
    fn network_is_masked_like_go() {
        let c = parse(r#"{"Network": "10.244.7.9/16"}"#);
        assert_eq!(c.network, "10.244.0.0/16".parse().unwrap());
    }

    #[test]
    fn keys_are_case_insensitive() {
        let c = parse(
            r#"{"nEtWoRk": "10.5.0.0/16", "subnetlen": 26, "SUBNETMIN": "10.5.1.0",
                "subnetMax": "10.5.9.192", "backend": {"type": "vxlan", "vni": 7,
                "port": 4789, "directrouting": true, "mtu": 1400}}"#,
        );
        assert_eq!(c.subnet_len, 26);
        assert_eq!(c.subnet_min, ip("10.5.1.0"));
        assert_eq!(c.subnet_max, ip("10.5.9.192"));
        assert_eq!(
            c.backend,
            BackendConfig::Vxlan {
                vni: 7,
                port: 4789,
                direct_routing: true,
                mtu: Some(1400)
            }
        );
    }

    #[test]
    fn backends() {
        let c = parse(r#"{"Network": "10.5.0.0/16", "Backend": {"Type": "udp"}}"#);
        assert_eq!(c.backend, BackendConfig::Udp { port: 8285 });
        assert_eq!(c.backend.type_name(), "udp");
        let c = parse(r#"{"Network": "10.5.0.0/16", "Backend": {"Type": "udp", "Port": 9000}}"#);
        assert_eq!(c.backend, BackendConfig::Udp { port: 9000 });
        let c = parse(r#"{"Network": "10.5.0.0/16", "Backend": {"Type": "host-gw"}}"#);
        assert_eq!(c.backend, BackendConfig::HostGw);
        assert_eq!(c.backend.type_name(), "host-gw");
        let c = parse(r#"{"Network": "10.5.0.0/16", "Backend": {}}"#);
        assert_eq!(c.backend.type_name(), "vxlan");
        let c = parse(r#"{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan", "Port": 0}}"#);
        assert_eq!(
            c.backend,
            BackendConfig::Vxlan {
                vni: 1,
                port: 8472,
                direct_routing: false,
                mtu: None
            }
        );
    }

    fn ip6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn wireguard_keys_and_defaults_are_flannels() {
        let c = parse(r#"{"Network": "10.5.0.0/16", "Backend": {"Type": "wireguard"}}"#);
        assert_eq!(c.backend.type_name(), "wireguard");
        assert_eq!(
            c.backend,
            BackendConfig::WireGuard(WireGuardConfig {
                listen_port: 51820,
                listen_port_v6: 51821,
                psk: None,
                mtu: None,
                persistent_keepalive: 0,
                mode: WireGuardMode::Separate,
            })
        );
        let psk = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
        let c = parse(&format!(
            r#"{{"Network": "10.5.0.0/16", "Backend": {{"type": "wireguard", "listenport": 7000,
            "ListenPortV6": 7001, "PSK": "{psk}", "MTU": 1400, "PersistentKeepaliveInterval": 25,
            "Mode": "auto"}}}}"#
        ));
        let BackendConfig::WireGuard(wg) = &c.backend else {
            panic!("{c:?}")
        };
        assert_eq!((wg.listen_port, wg.listen_port_v6), (7000, 7001));
        assert_eq!(
            wg.psk.as_ref().map(|k| k.to_base64()),
            Some(psk.to_string())
        );
        assert_eq!(wg.mtu, Some(1400));
        assert_eq!(wg.persistent_keepalive, 25);
        assert_eq!(wg.mode, WireGuardMode::Auto);
        // The log line says whether a PSK is set, never the key.
        let line = c.to_string();
        assert!(line.contains("PSK set"), "{line}");
        assert!(!line.contains(psk), "{line}");
    }

    #[test]
    fn hostile_wireguard_settings_are_refused_by_name() {
        let psk = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp";
        let cases: &[(&str, &str)] = &[
            (
                r#"{"ListenPort": 70000}"#,
                "field Backend.ListenPort = 70000: must be an integer from 0 (default) to 65535",
            ),
            (
                r#"{"ListenPortV6": "51821"}"#,
                "field Backend.ListenPortV6 = \"51821\": must be an integer",
            ),
            (
                r#"{"PSK": 5}"#,
                "field Backend.PSK = 5: not a string (a base64 WireGuard key)",
            ),
            (
                r#"{"MTU": 100}"#,
                "field Backend.MTU = 100: must be 0 (automatic) or an integer from 148 to 65535",
            ),
            (
                r#"{"PersistentKeepaliveInterval": -1}"#,
                "field Backend.PersistentKeepaliveInterval = -1: must be an integer number of seconds",
            ),
            (
                r#"{"Mode": "both"}"#,
                "field Backend.Mode = \"both\": must be \"separate\", \"auto\", \"ipv4\" or \"ipv6\"",
            ),
        ];
        for (backend, want) in cases {
            let json = format!(
                r#"{{"Network": "10.5.0.0/16", "Backend": {{"Type": "wireguard", {}}}}}"#,
                &backend[1..backend.len() - 1]
            );
            let e = err(&json).to_string();
            assert!(e.contains(want), "{json}: {e}");
        }
        // A malformed PSK is named, but its text is not repeated into the log.
        let e = err(&format!(
            r#"{{"Network": "10.5.0.0/16", "Backend": {{"Type": "wireguard", "PSK": "{psk}"}}}}"#
        ))
        .to_string();
        assert_eq!(
            e,
            "network config: field Backend.PSK = (secret): not a WireGuard pre-shared key: decodes to 30 bytes, a WireGuard key has 32"
        );
    }

    #[test]
    fn dual_stack_defaults_as_flannel() {
        let c = parse(
            r#"{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:10:244::/56"}"#,
        );
        assert!(c.enable_ipv4);
        assert_eq!(c.subnet_len, 24);
        let v6 = c.ipv6.clone().unwrap();
        assert_eq!(v6.network, "fd00:10:244::/56".parse().unwrap());
        assert_eq!(v6.subnet_len, 64);
        // Flannel's GetIPv6SubnetMin/Max: the first subnet is skipped, the last one is used.
        assert_eq!(v6.subnet_min, ip6("fd00:10:244:1::"));
        assert_eq!(v6.subnet_max, ip6("fd00:10:244:ff::"));
        assert!(v6.contains_subnet(&"fd00:10:244:1::/64".parse().unwrap()));
        assert!(!v6.contains_subnet(&"fd00:10:244::/64".parse().unwrap()));
        assert!(!v6.contains_subnet(&"fd00:10:244:1::/72".parse().unwrap()));
        // Small networks are split in four, as for IPv4; keys match in any case.
        let c = parse(
            r#"{"Network": "10.244.0.0/16", "enableipv6": true, "ipv6network": "fd00::/120"}"#,
        );
        let v6 = c.ipv6.unwrap();
        assert_eq!(v6.subnet_len, 122);
        assert_eq!(v6.subnet_min, ip6("fd00::40"));
        assert_eq!(v6.subnet_max, ip6("fd00::c0"));
        let c = parse(
            r#"{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/48",
                "IPv6SubnetLen": 80, "IPv6SubnetMin": "fd00:0:0:5::", "IPv6SubnetMax": "fd00:0:0:9::"}"#,
        );
        let v6 = c.ipv6.unwrap();
        assert_eq!(
            (v6.subnet_len, v6.subnet_min, v6.subnet_max),
            (80, ip6("fd00:0:0:5::"), ip6("fd00:0:0:9::"))
        );
    }

    #[test]
    fn ipv6_only_and_disabled_ipv6() {
        let c = parse(r#"{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00::/48"}"#);
        assert!(!c.enable_ipv4);
        assert_eq!(c.subnet_len, 0);
        assert!(!c.contains_subnet(&"0.0.0.0/0".parse().unwrap()));
        assert_eq!(c.ipv6.as_ref().unwrap().subnet_len, 64);
        assert_eq!(
            c.to_string(),
            "IPv6Network fd00::/48, IPv6SubnetLen 64, IPv6SubnetMin fd00:0:0:1::, \
             IPv6SubnetMax fd00:0:0:ffff::, Backend vxlan (VNI 1, Port 8472, DirectRouting false, MTU auto)"
        );
        // A disabled IPv6 section is ignored, as Flannel does.
        let c = parse(r#"{"Network": "10.5.0.0/16", "EnableIPv6": false, "IPv6Network": "junk"}"#);
        assert_eq!(c.ipv6, None);
    }

    #[test]
    fn a_pod_network_over_special_ranges_or_everything_is_refused() {
        let cases = [
            (
                r#"{"Network": "10.0.0.0/0"}"#,
                "field Network = \"10.0.0.0/0\": the network is empty",
            ),
            (
                r#"{"Network": "169.254.0.0/16"}"#,
                "overlaps 169.254.0.0/16 (link-local)",
            ),
            (
                r#"{"Network": "169.0.0.0/8"}"#,
                "overlaps 169.254.0.0/16 (link-local)",
            ),
            (
                r#"{"Network": "127.1.0.0/16"}"#,
                "overlaps 127.0.0.0/8 (loopback)",
            ),
            (
                r#"{"Network": "224.0.0.0/8"}"#,
                "overlaps 224.0.0.0/4 (multicast)",
            ),
            (
                r#"{"Network": "240.0.0.0/8"}"#,
                "overlaps 240.0.0.0/4 (reserved)",
            ),
            (
                r#"{"Network": "0.1.0.0/16"}"#,
                "overlaps 0.0.0.0/8 (this network)",
            ),
            (
                r#"{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fe80::/10"}"#,
                "overlaps fe80::/10 (link-local)",
            ),
            (
                r#"{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "ff00::/16"}"#,
                "overlaps ff00::/8 (multicast)",
            ),
            (
                r#"{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "::/96"}"#,
                "overlaps ::/127 (unspecified and loopback)",
            ),
        ];
        for (json, want) in cases {
            let got = err(json).to_string();
            assert!(got.contains(want), "{json}: got {got:?}, want {want:?}");
        }
        // Next to them is fine.
        parse(r#"{"Network": "10.244.0.0/16"}"#);
        parse(r#"{"Network": "100.64.0.0/10"}"#);
        parse(r#"{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00::/48"}"#);
    }

    #[test]
    fn ipv6_errors_name_field_and_value() {
        let base = r#""Network": "10.0.0.0/16", "EnableIPv6": true"#;
        let cases: Vec<(String, &str)> = vec![
            (
                r#"{"EnableIPv4": false}"#.to_string(),
                "network config: field EnableIPv4 = false: with EnableIPv6 unset no address family is left",
            ),
            (
                r#"{"Network": "10.0.0.0/16", "EnableIPv6": "yes"}"#.to_string(),
                "network config: field EnableIPv6 = \"yes\": not a boolean",
            ),
            (
                format!("{{{base}}}"),
                "network config: field IPv6Network is missing",
            ),
            (
                format!(r#"{{{base}, "IPv6Network": "10.0.0.0/8"}}"#),
                "network config: field IPv6Network = \"10.0.0.0/8\": not an IPv6 CIDR",
            ),
            (
                format!(r#"{{{base}, "IPv6Network": "fd00::/125"}}"#),
                "network config: field IPv6Network = \"fd00::/125\": network is too small, the minimum useful prefix is /124",
            ),
            (
                format!(r#"{{{base}, "IPv6Network": "::/0"}}"#),
                "network config: field IPv6Network = \"::/0\": the network is empty",
            ),
            (
                format!(r#"{{{base}, "IPv6Network": "fd00::/64", "IPv6SubnetLen": 127}}"#),
                "network config: field IPv6SubnetLen = 127: must be at most 126",
            ),
            (
                format!(r#"{{{base}, "IPv6Network": "fd00::/64", "IPv6SubnetLen": 65}}"#),
                "network config: field IPv6SubnetLen = 65: network fd00::/64 must hold at least four subnets, so IPv6SubnetLen must be at least 66",
            ),
            (
                format!(r#"{{{base}, "IPv6Network": "fd00::/48", "IPv6SubnetLen": "64"}}"#),
                "network config: field IPv6SubnetLen = \"64\": not an unsigned integer",
            ),
            (
                format!(r#"{{{base}, "IPv6Network": "fd00::/48", "IPv6SubnetMin": "fd01::"}}"#),
                "network config: field IPv6SubnetMin = \"fd01::\": not inside IPv6Network fd00::/48",
            ),
            (
                format!(r#"{{{base}, "IPv6Network": "fd00::/48", "IPv6SubnetMax": "fd00::1:0:0:0"}}"#),
                "network config: field IPv6SubnetMax = \"fd00::1:0:0:0\": not on a /64 (IPv6SubnetLen) boundary",
            ),
            (
                format!(r#"{{{base}, "IPv6Network": "fd00::/48", "IPv6SubnetMin": "fd00:0:0:9::", "IPv6SubnetMax": "fd00:0:0:3::"}}"#),
                "network config: field IPv6SubnetMin = fd00:0:0:9::: is above IPv6SubnetMax fd00:0:0:3::",
            ),
            (
                format!(r#"{{{base}, "IPv6Network": "fd00::/48", "IPv6SubnetMin": 7}}"#),
                "network config: field IPv6SubnetMin = 7: not an IPv6 address string",
            ),
        ];
        for (json, want) in &cases {
            let got = err(json).to_string();
            assert!(
                got.starts_with(want),
                "{json}: got {got:?}, want prefix {want:?}"
            );
        }
    }

    #[test]
    fn ipv6_changes_need_a_restart_except_the_range() {
        let running = parse(
            r#"{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/48"}"#,
        );
        let v4_only = parse(r#"{"Network": "10.244.0.0/16"}"#);
        assert_eq!(running.change_to(&v4_only), ConfigChange::NeedsRestart);
        assert_eq!(v4_only.change_to(&running), ConfigChange::NeedsRestart);
        let moved = parse(
            r#"{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd01::/48"}"#,
        );
        assert_eq!(running.change_to(&moved), ConfigChange::NeedsRestart);
        let narrowed = parse(
            r#"{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/48",
                "IPv6SubnetMax": "fd00:0:0:9::"}"#,
        );
        assert_eq!(running.change_to(&narrowed), ConfigChange::Live);
    }

    #[test]
    fn errors_name_field_and_value() {
        let cases: &[(&str, &str)] = &[
            ("[1]", "network config: not a JSON object: top level is an array"),
            ("{}", "network config: field Network is missing"),
            (
                r#"{"Network": "10.0.0.0/29"}"#,
                "network config: field Network = \"10.0.0.0/29\": network is too small, the minimum useful prefix is /28",
            ),
            (
                r#"{"Network": "10.0.0/8"}"#,
                "network config: field Network = \"10.0.0/8\": not an IPv4 CIDR",
            ),
            (
                r#"{"Network": 10}"#,
                "network config: field Network = 10: not a string in CIDR notation",
            ),
            (
                r#"{"Network": "10.0.0.0/16", "SubnetLen": 31}"#,
                "network config: field SubnetLen = 31: must be at most 30",
            ),
            (
                r#"{"Network": "10.0.0.0/16", "SubnetLen": 17}"#,
                "network config: field SubnetLen = 17: network 10.0.0.0/16 must hold at least four subnets, so SubnetLen must be at least 18",
            ),
            (
                r#"{"Network": "10.0.0.0/16", "SubnetLen": -1}"#,
                "network config: field SubnetLen = -1: not an unsigned integer",
            ),
            (
                r#"{"Network": "10.0.0.0/16", "SubnetMin": "10.1.0.0"}"#,
                "network config: field SubnetMin = \"10.1.0.0\": not inside Network 10.0.0.0/16",
            ),
            (
                r#"{"Network": "10.0.0.0/16", "SubnetMax": "10.0.3.128"}"#,
                "network config: field SubnetMax = \"10.0.3.128\": not on a /24 (SubnetLen) boundary",
            ),
            (
                r#"{"Network": "10.0.0.0/16", "SubnetMin": "10.0.9.0", "SubnetMax": "10.0.3.0"}"#,
                "network config: field SubnetMin = 10.0.9.0: is above SubnetMax 10.0.3.0, no subnet can be handed out",
            ),
            (
                r#"{"Network": "10.0.0.0/16", "Backend": {"Type": "ipip"}}"#,
                "network config: field Backend.Type = \"ipip\": unknown backend type, expected \"vxlan\", \"udp\", \"host-gw\" or \"wireguard\"",
            ),
            (
                r#"{"Network": "10.0.0.0/16", "Backend": {"Type": "vxlan", "VNI": 16777216}}"#,
                "network config: field Backend.VNI = 16777216: must be an integer from 0 to 16777215",
            ),
            (
                r#"{"Network": "10.0.0.0/16", "Backend": {"Type": "udp", "Port": 70000}}"#,
                "network config: field Backend.Port = 70000: must be an integer from 0 (default) to 65535",
            ),
            (
                r#"{"Network": "10.0.0.0/16", "Backend": {"MTU": 20}}"#,
                "network config: field Backend.MTU = 20: must be 0 (automatic) or an integer from 68 to 65535",
            ),
            (
                r#"{"Network": "10.0.0.0/16", "Backend": "vxlan"}"#,
                "network config: field Backend = \"vxlan\": not a JSON object",
            ),
        ];
        for (json, want) in cases {
            let got = err(json).to_string();
            assert!(
                got.starts_with(want),
                "{json}: got {got:?}, want prefix {want:?}"
            );
        }
    }

    #[test]
    fn changes_are_live_only_for_the_handing_out_range() {
        let running = parse(r#"{"Network": "10.244.0.0/16"}"#);
        for (json, want) in [
            (
                r#"{"network": "10.244.0.0/16", "Backend": {}}"#,
                ConfigChange::Same,
            ),
            (
                r#"{"Network": "10.244.0.0/16", "SubnetMax": "10.244.9.0"}"#,
                ConfigChange::Live,
            ),
            (
                r#"{"Network": "10.244.0.0/16", "SubnetMin": "10.244.5.0"}"#,
                ConfigChange::Live,
            ),
            (
                r#"{"Network": "10.245.0.0/16"}"#,
                ConfigChange::NeedsRestart,
            ),
            (
                r#"{"Network": "10.244.0.0/16", "SubnetLen": 25}"#,
                ConfigChange::NeedsRestart,
            ),
            (
                r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}"#,
                ConfigChange::NeedsRestart,
            ),
            (
                r#"{"Network": "10.244.0.0/16", "Backend": {"VNI": 2}}"#,
                ConfigChange::NeedsRestart,
            ),
            (
                r#"{"Network": "10.244.0.0/16", "Backend": {"MTU": 1400}}"#,
                ConfigChange::NeedsRestart,
            ),
        ] {
            assert_eq!(running.change_to(&parse(json)), want, "{json}");
        }
    }

    #[test]
    fn one_line_for_logs() {
        let c = parse(r#"{"Network": "10.244.0.0/16"}"#);
        assert_eq!(
            c.to_string(),
            "Network 10.244.0.0/16, SubnetLen 24, SubnetMin 10.244.1.0, SubnetMax 10.244.255.0, \
             Backend vxlan (VNI 1, Port 8472, DirectRouting false, MTU auto)"
        );
        let c = parse(r#"{"Network": "10.5.0.0/16", "Backend": {"Type": "host-gw"}}"#);
        assert!(c.to_string().ends_with("Backend host-gw"), "{c}");
    }

    #[test]
    fn contains_subnet_checks_length_alignment_and_range() {
        let c = parse(
            r#"{"Network": "10.244.0.0/16", "SubnetMin": "10.244.10.0", "SubnetMax": "10.244.20.0"}"#,
        );
        assert!(c.contains_subnet(&"10.244.10.0/24".parse().unwrap()));
        assert!(c.contains_subnet(&"10.244.20.0/24".parse().unwrap()));
        assert!(!c.contains_subnet(&"10.244.9.0/24".parse().unwrap()));
        assert!(!c.contains_subnet(&"10.244.21.0/24".parse().unwrap()));
        assert!(!c.contains_subnet(&"10.244.12.0/25".parse().unwrap()));
        assert!(!c.contains_subnet(&"10.244.12.5/24".parse().unwrap()));
        assert!(!c.contains_subnet(&"10.245.12.0/24".parse().unwrap()));
    }
}
