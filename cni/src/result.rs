//! The ADD result, rendered in the format of each spec version, and read back from `prevResult`.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::ip::{Ipv4Net, Ipv6Net};
use crate::version::Version;

/// One interface in the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Device name.
    pub name: String,
    /// MAC address, `aa:bb:..`.
    pub mac: String,
    /// MTU (reported from 1.1.0 on).
    pub mtu: Option<u32>,
    /// Network namespace path for container interfaces; `None` for host ones.
    pub sandbox: Option<String>,
}

/// One assigned address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// Address with prefix length.
    pub address: Ipv4Net,
    /// Gateway for this address.
    pub gateway: Option<Ipv4Addr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

/// One route installed in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination prefix.
    pub dst: Ipv4Net,
    /// Next hop, if any.
    pub gw: Option<Ipv4Addr>,
}

/// One assigned IPv6 address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig6 {
    /// Address with prefix length.
    pub address: Ipv6Net,
    /// Gateway for this address.
    pub gateway: Option<Ipv6Addr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

/// One IPv6 route installed in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route6 {
    /// Destination prefix.
    pub dst: Ipv6Net,
    /// Next hop, if any.
    pub gw: Option<Ipv6Addr>,
}

/// A CNI ADD result, version-neutral.
#[derive(Debug, Clone, PartialEq)]
pub struct AddResult {
    /// Interfaces created (bridge, host veth, container veth).
    pub interfaces: Vec<Interface>,
    /// Addresses assigned.
    pub ips: Vec<IpConfig>,
    /// Routes installed in the container.
    pub routes: Vec<Route>,
    /// DNS settings passed through from the config.
    pub dns: Option<Value>,
    /// IPv6 addresses assigned (dual stack), listed after the IPv4 ones.
    pub ips6: Vec<IpConfig6>,
    /// IPv6 routes installed in the container, listed after the IPv4 ones.
    pub routes6: Vec<Route6>,
}

impl AddResult {
    /// Renders the result for `cni_version`: 0.3.x/0.4.0 carry `ips[].version`, 1.x do not;
    /// 1.1.0 adds `interfaces[].mtu`.
    pub fn to_json(&self, version: Version, version_text: &str) -> Value {
        let legacy = version < Version::V1_0_0;
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|iface| {
                let mut obj = Map::new();
                obj.insert("name".into(), json!(iface.name));
                obj.insert("mac".into(), json!(iface.mac));
                if version >= Version::V1_1_0 {
                    if let Some(mtu) = iface.mtu {
                        obj.insert("mtu".into(), json!(mtu));
                    }
                }
                if let Some(sandbox) = &iface.sandbox {
                    obj.insert("sandbox".into(), json!(sandbox));
                }
                Value::Object(obj)
            })
            .collect();
        let ip_entry =
            |version: &str, address: String, gateway: Option<String>, interface: Option<usize>| {
                let mut obj = Map::new();
                if legacy {
                    obj.insert("version".into(), json!(version));
                }
                obj.insert("address".into(), json!(address));
                if let Some(gw) = gateway {
                    obj.insert("gateway".into(), json!(gw));
                }
                if let Some(index) = interface {
                    obj.insert("interface".into(), json!(index));
                }
                Value::Object(obj)
            };
        let route_entry = |dst: String, gw: Option<String>| match gw {
            Some(gw) => json!({"dst": dst, "gw": gw}),
            None => json!({"dst": dst}),
        };
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                ip_entry(
                    "4",
                    ip.address.to_string(),
                    ip.gateway.map(|g| g.to_string()),
                    ip.interface,
                )
            })
            .chain(self.ips6.iter().map(|ip| {
                ip_entry(
                    "6",
                    ip.address.to_string(),
                    ip.gateway.map(|g| g.to_string()),
                    ip.interface,
                )
            }))
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| route_entry(r.dst.to_string(), r.gw.map(|g| g.to_string())))
            .chain(
                self.routes6
                    .iter()
                    .map(|r| route_entry(r.dst.to_string(), r.gw.map(|g| g.to_string()))),
            )
            .collect();
        json!({
            "cniVersion": version_text,
            "interfaces": interfaces,
            "ips": ips,
            "routes": routes,
            "dns": self.dns.clone().unwrap_or_else(|| json!({})),
        })
    }

    /// Reads a result of any supported version (e.g. `prevResult`), both families. A field
    /// may be absent, but one present with the wrong type is refused: read as absent, it
    /// would let CHECK pass without checking what it names.
    pub fn from_json(value: &Value) -> Result<AddResult> {
        Self::read(value).map_err(|what| Error::InvalidConfig(format!("prevResult: {what}")))
    }

    fn read(value: &Value) -> std::result::Result<AddResult, String> {
        let obj = value
            .as_object()
            .ok_or_else(|| "not a JSON object".to_string())?;
        let mut interfaces = Vec::new();
        for iface in array(obj, "interfaces")? {
            let name = opt_str(iface, "interfaces[]", "name")?
                .ok_or_else(|| "interfaces[].name missing".to_string())?;
            interfaces.push(Interface {
                name,
                mac: opt_str(iface, "interfaces[]", "mac")?.unwrap_or_default(),
                mtu: opt_u32(iface, "interfaces[]", "mtu")?,
                sandbox: opt_str(iface, "interfaces[]", "sandbox")?.filter(|s| !s.is_empty()),
            });
        }
        let mut ips = Vec::new();
        let mut ips6 = Vec::new();
        for ip in array(obj, "ips")? {
            let address = opt_str(ip, "ips[]", "address")?
                .ok_or_else(|| "ips[].address missing".to_string())?;
            let interface = opt_u32(ip, "ips[]", "interface")?.map(|i| i as usize);
            let gateway = opt_str(ip, "ips[]", "gateway")?;
            if address.contains(':') {
                let address = address
                    .parse::<Ipv6Net>()
                    .map_err(|e| format!("ips[].address: {e}"))?;
                let gateway = gateway
                    .map(|g| {
                        g.parse::<Ipv6Addr>()
                            .map_err(|_| format!("ips[].gateway {g:?}"))
                    })
                    .transpose()?;
                ips6.push(IpConfig6 {
                    address,
                    gateway,
                    interface,
                });
                continue;
            }
            let address = address
                .parse::<Ipv4Net>()
                .map_err(|e| format!("ips[].address: {e}"))?;
            let gateway = gateway
                .map(|g| {
                    g.parse::<Ipv4Addr>()
                        .map_err(|_| format!("ips[].gateway {g:?}"))
                })
                .transpose()?;
            ips.push(IpConfig {
                address,
                gateway,
                interface,
            });
        }
        let mut routes = Vec::new();
        let mut routes6 = Vec::new();
        for route in array(obj, "routes")? {
            let dst = opt_str(route, "routes[]", "dst")?
                .ok_or_else(|| "routes[].dst missing".to_string())?;
            let gw = opt_str(route, "routes[]", "gw")?;
            if dst.contains(':') {
                let dst = dst
                    .parse::<Ipv6Net>()
                    .map_err(|e| format!("routes[].dst: {e}"))?;
                let gw = gw
                    .map(|g| {
                        g.parse::<Ipv6Addr>()
                            .map_err(|_| format!("routes[].gw {g:?}"))
                    })
                    .transpose()?;
                routes6.push(Route6 { dst, gw });
                continue;
            }
            let dst = dst
                .parse::<Ipv4Net>()
                .map_err(|e| format!("routes[].dst: {e}"))?;
            let gw = gw
                .map(|g| {
                    g.parse::<Ipv4Addr>()
                        .map_err(|_| format!("routes[].gw {g:?}"))
                })
                .transpose()?;
            routes.push(Route { dst, gw });
        }
        Ok(AddResult {
            interfaces,
            ips,
            routes,
            dns: obj.get("dns").cloned(),
            ips6,
            routes6,
        })
    }
}

/// The elements of the array at `key` (none when absent); another type is refused.
fn array<'a>(obj: &'a Map<String, Value>, key: &str) -> std::result::Result<&'a [Value], String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(other) => Err(format!("{key} is not an array: {}", shown(other))),
    }
}

/// The string at `key` of the object `value` (an element of `list`), if present; an element
/// that is no object, or a value of another type, is refused.
fn opt_str(value: &Value, list: &str, key: &str) -> std::result::Result<Option<String>, String> {
    match field(value, list, key)? {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("{list}.{key} is not a string: {}", shown(other))),
    }
}

/// The unsigned 32-bit number at `key`, as [`opt_str`] reads a string.
fn opt_u32(value: &Value, list: &str, key: &str) -> std::result::Result<Option<u32>, String> {
    match field(value, list, key)? {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| format!("{list}.{key} is not a number of 0 to 2^32-1: {}", shown(v))),
    }
}

fn field<'a>(
    value: &'a Value,
    list: &str,
    key: &str,
) -> std::result::Result<Option<&'a Value>, String> {
    let obj = value
        .as_object()
        .ok_or_else(|| format!("{list} holds a non-object: {}", shown(value)))?;
    Ok(obj.get(key).filter(|v| !v.is_null()))
}

/// A value for an error message, cut short.
fn shown(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(64) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AddResult {
        AddResult {
            interfaces: vec![
                Interface {
                    name: "cni0".into(),
                    mac: "0a:58:0a:f4:01:01".into(),
                    mtu: Some(1450),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: "02:00:00:00:00:01".into(),
                    mtu: Some(1450),
                    sandbox: Some("/run/netns/p".into()),
                },
            ],
            ips: vec![IpConfig {
                address: "10.244.1.2/24".parse().unwrap(),
                gateway: Some(Ipv4Addr::new(10, 244, 1, 1)),
                interface: Some(1),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some(Ipv4Addr::new(10, 244, 1, 1)),
            }],
            dns: None,
            ips6: Vec::new(),
            routes6: Vec::new(),
        }
    }

    fn dual_sample() -> AddResult {
        AddResult {
            ips6: vec![IpConfig6 {
                address: "fd00:10:244:1::2/64".parse().unwrap(),
                gateway: Some("fd00:10:244:1::1".parse().unwrap()),
                interface: Some(1),
            }],
            routes6: vec![Route6 {
                dst: "fd00:10:244::/48".parse().unwrap(),
                gw: Some("fd00:10:244:1::1".parse().unwrap()),
            }],
            ..sample()
        }
    }

    #[test]
    fn a_prev_result_field_of_the_wrong_type_is_refused_not_read_as_absent() {
        let good = sample().to_json(Version::V1_0_0, "1.0.0");
        let read = AddResult::from_json(&good).unwrap();
        assert_eq!((read.ips, read.routes), (sample().ips, sample().routes));
        let mut absent = good.clone();
        absent["routes"] = Value::Null;
        absent.as_object_mut().unwrap().remove("ips");
        let read = AddResult::from_json(&absent).unwrap();
        assert!(read.ips.is_empty() && read.routes.is_empty());
        for (field, value, named) in [
            ("ips", json!({}), "ips is not an array"),
            ("routes", json!("x"), "routes is not an array"),
            ("interfaces", json!(7), "interfaces is not an array"),
            ("ips", json!(["10.244.1.2/24"]), "ips[] holds a non-object"),
            (
                "ips",
                json!([{"address": 7}]),
                "ips[].address is not a string",
            ),
            (
                "ips",
                json!([{"address": "10.244.1.2/24", "interface": "1"}]),
                "ips[].interface is not a number",
            ),
            (
                "ips",
                json!([{"address": "10.244.1.2/24", "gateway": false}]),
                "ips[].gateway is not a string",
            ),
            (
                "interfaces",
                json!([{"name": "eth0", "mtu": "1450"}]),
                "interfaces[].mtu is not a number",
            ),
            (
                "interfaces",
                json!([{"name": "eth0", "mac": 2}]),
                "interfaces[].mac is not a string",
            ),
            (
                "routes",
                json!([{"dst": "0.0.0.0/0", "gw": []}]),
                "routes[].gw is not a string",
            ),
        ] {
            let mut bad = good.clone();
            bad[field] = value;
            let err = AddResult::from_json(&bad).unwrap_err();
            assert_eq!(err.code(), 7, "{err}");
            assert!(err.to_string().contains(named), "{named}: {err}");
        }
    }

    #[test]
    fn dual_stack_result_lists_both_families() {
        let json = dual_sample().to_json(Version::V1_0_0, "1.0.0");
        assert_eq!(
            json["ips"],
            json!([
                {"address": "10.244.1.2/24", "gateway": "10.244.1.1", "interface": 1},
                {"address": "fd00:10:244:1::2/64", "gateway": "fd00:10:244:1::1", "interface": 1}
            ])
        );
        assert_eq!(
            json["routes"],
            json!([
                {"dst": "0.0.0.0/0", "gw": "10.244.1.1"},
                {"dst": "fd00:10:244::/48", "gw": "fd00:10:244:1::1"}
            ])
        );
        let legacy = dual_sample().to_json(Version::parse("0.4.0").unwrap(), "0.4.0");
        assert_eq!(legacy["ips"][1]["version"], "6");
        for v in crate::version::SUPPORTED {
            let version = Version::parse(v).unwrap();
            let back = AddResult::from_json(&dual_sample().to_json(version, v)).unwrap();
            assert_eq!(back.ips6, dual_sample().ips6, "{v}");
            assert_eq!(back.routes6, dual_sample().routes6, "{v}");
        }
        let bad = json!({"ips": [{"address": "fd00::zz/64"}]});
        assert!(AddResult::from_json(&bad).is_err());
    }

    #[test]
    fn v1_result_shape() {
        let json = sample().to_json(Version::V1_0_0, "1.0.0");
        assert_eq!(
            json,
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": "cni0", "mac": "0a:58:0a:f4:01:01"},
                    {"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/run/netns/p"}
                ],
                "ips": [{"address": "10.244.1.2/24", "gateway": "10.244.1.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
                "dns": {}
            })
        );
    }

    #[test]
    fn legacy_result_has_ip_version_and_v11_has_mtu() {
        let v031 = Version::parse("0.3.1").unwrap();
        let json = sample().to_json(v031, "0.3.1");
        assert_eq!(json["cniVersion"], "0.3.1");
        assert_eq!(json["ips"][0]["version"], "4");
        assert!(json["interfaces"][1].get("mtu").is_none());
        let json = sample().to_json(Version::V1_1_0, "1.1.0");
        assert!(json["ips"][0].get("version").is_none());
        assert_eq!(json["interfaces"][1]["mtu"], 1450);
    }

    #[test]
    fn round_trips_through_every_version() {
        for v in crate::version::SUPPORTED {
            let version = Version::parse(v).unwrap();
            let json = sample().to_json(version, v);
            let back = AddResult::from_json(&json).unwrap();
            assert_eq!(back.ips, sample().ips, "{v}");
            assert_eq!(back.routes, sample().routes, "{v}");
            assert_eq!(back.interfaces[1].sandbox.as_deref(), Some("/run/netns/p"));
        }
    }

    #[test]
    fn prev_result_errors() {
        assert!(AddResult::from_json(&json!([])).is_err());
        assert!(AddResult::from_json(&json!({"ips": [{"address": "x"}]})).is_err());
        let v6 = json!({"ips": [{"address": "fd00::2/64"}]});
        assert!(AddResult::from_json(&v6).unwrap().ips.is_empty());
    }
}
