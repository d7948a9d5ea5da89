//! Flannel's network configuration (`<prefix>/config`): parsing, defaulting and validation.
//!
//! The rules follow Flannel's `pkg/subnet/config.go` (`ParseConfig` + `CheckNetworkConfig`):
//! JSON keys match case-insensitively, `SubnetLen` defaults to 24 for a /22 or larger network
//! and to prefix + 2 otherwise, `SubnetMin` skips the first subnet, `SubnetMax` is the last one,
//! and networks smaller than a /28 are rejected. Unlike Flannel, a missing `Backend` means vxlan.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
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

/// A parsed and defaulted network configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
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

        if let Some(v) = fields.get("EnableIPv4") {
            if !as_bool("EnableIPv4", v)? {
                return Err(invalid(
                    "EnableIPv4",
                    v,
                    "IPv6-only networks are not supported yet",
                ));
            }
        }
        if let Some(v) = fields.get("EnableIPv6") {
            if as_bool("EnableIPv6", v)? {
                return Err(invalid("EnableIPv6", v, "IPv6 is not supported yet"));
            }
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

        let backend = match fields.get("Backend") {
            None | Some(Value::Null) => default_vxlan(),
            Some(Value::Object(b)) => parse_backend(b)?,
            Some(v) => return Err(invalid("Backend", v, "not a JSON object")),
        };

        Ok(NetworkConfig {
            network,
            subnet_len,
            subnet_min,
            subnet_max,
            backend,
        })
    }

    /// The number of addresses in one node subnet.
    pub fn subnet_size(&self) -> u32 {
        subnet_size(self.subnet_len)
    }

    /// Whether `subnet` is a node subnet this config could hand out: the right prefix length,
    /// aligned, and between `SubnetMin` and `SubnetMax`.
    pub fn contains_subnet(&self, subnet: &Ipv4Network) -> bool {
        subnet.prefix() == self.subnet_len
            && subnet.ip() == subnet.network()
            && subnet.ip() >= self.subnet_min
            && subnet.ip() <= self.subnet_max
    }
}

/// How a network config written while weftd runs relates to the running one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigChange {
    /// Nothing that matters changed (e.g. only the JSON's spelling).
    Same,
    /// Only `SubnetMin`/`SubnetMax`: they steer which subnet is handed out next, so they apply
    /// at once.
    Live,
    /// `Network` or `SubnetLen` (existing leases would be orphaned) or `Backend` (the data path
    /// would be rebuilt under running pods): applied only by restarting weftd.
    NeedsRestart,
}

impl NetworkConfig {
    /// Classifies `new` against `self`, the running config.
    pub fn change_to(&self, new: &NetworkConfig) -> ConfigChange {
        if self == new {
            ConfigChange::Same
        } else if self.network == new.network
            && self.subnet_len == new.subnet_len
            && self.backend == new.backend
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
        write!(
            f,
            "Network {}, SubnetLen {}, SubnetMin {}, SubnetMax {}, Backend ",
            self.network, self.subnet_len, self.subnet_min, self.subnet_max
        )?;
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
    if net.prefix() == 0 && u32::from(net.ip()) == 0 {
        return Err(invalid("Network", v, "the network is empty"));
    }
    // Flannel masks the address to its network, as Go's net.ParseCIDR does.
    Ipv4Network::new(net.network(), net.prefix()).map_err(|e| invalid("Network", v, &e.to_string()))
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
    fn ipv6_fields_rejected_or_ignored() {
        let e =
            err(r#"{"Network": "10.5.0.0/16", "EnableIPv6": true, "IPv6Network": "fc00::/48"}"#);
        assert_eq!(
            e.to_string(),
            "network config: field EnableIPv6 = true: IPv6 is not supported yet"
        );
        // A disabled IPv6 section is ignored, as Flannel does.
        let c =
            parse(r#"{"Network": "10.5.0.0/16", "EnableIPv6": false, "IPv6Network": "fc00::/48"}"#);
        assert_eq!(c.subnet_len, 24);
        let e = err(r#"{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fc00::/48"}"#);
        assert!(e.to_string().contains("EnableIPv4 = false"), "{e}");
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
