//! The network configuration weft reads from stdin, with its defaults and validation.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use crate::env::{parse_mac, validate_ifname, validate_name};
use crate::error::{Error, Result};
use crate::ip::Ipv4Net;
use crate::version::{self, Version};

/// Default location of the node lease written by weftd.
pub const DEFAULT_SUBNET_FILE: &str = "/run/weft/subnet.env";
/// Default host-local data directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";
/// Default bridge name.
pub const DEFAULT_BRIDGE: &str = "cni0";

/// One extra route for the pod (`routes` entry); `gw` defaults to the bridge gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConf {
    /// Destination prefix.
    pub dst: Ipv4Net,
    /// Next hop; `None` means the node's gateway.
    pub gw: Option<Ipv4Addr>,
}

/// An attachment named by GC's `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
pub struct Attachment {
    /// The container ID.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The interface name inside the container.
    pub ifname: String,
}

/// The parsed and defaulted network configuration.
#[derive(Debug, Clone)]
pub struct NetConf {
    /// The requested spec version.
    pub cni_version: Version,
    /// The version string as given, echoed in results.
    pub cni_version_text: String,
    /// Network name: the IPAM directory under `data_dir`.
    pub name: String,
    /// Path of subnet.env.
    pub subnet_file: PathBuf,
    /// host-local-compatible IPAM root.
    pub data_dir: PathBuf,
    /// Bridge device name.
    pub bridge: String,
    /// MTU override; `None` means subnet.env's `FLANNEL_MTU`.
    pub mtu: Option<u32>,
    /// Whether the pod gets a default route via the gateway.
    pub is_default_gateway: bool,
    /// Whether the host veth port reflects traffic back (pod reaching itself via a service).
    pub hairpin_mode: bool,
    /// Extra pod routes.
    pub routes: Vec<RouteConf>,
    /// `dns` passed through to the result.
    pub dns: Option<Value>,
    /// `prevResult` (CHECK, DEL, chained ADD).
    pub prev_result: Option<Value>,
    /// GC: attachments that must be kept; `None` when the field is absent.
    pub valid_attachments: Option<HashSet<Attachment>>,
    /// Optional log file (besides stderr).
    pub log_file: Option<PathBuf>,
    /// Static addresses asked for through `runtimeConfig.ips` or `args.cni.ips`.
    pub static_ips: Vec<Ipv4Addr>,
    /// Pod MAC asked for through `runtimeConfig.mac`.
    pub static_mac: Option<[u8; 6]>,
}

/// The `runtimeConfig` capabilities weft honours (`ips`, `mac`); others are for other plugins.
#[derive(Deserialize, Default)]
struct RawRuntimeConfig {
    ips: Option<Vec<String>>,
    mac: Option<String>,
}

/// `args.cni`: the conflist's per-plugin static arguments.
#[derive(Deserialize, Default)]
struct RawArgs {
    cni: Option<RawRuntimeConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRoute {
    dst: String,
    gw: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    name: Option<String>,
    subnet_file: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    bridge: Option<String>,
    mtu: Option<u32>,
    is_default_gateway: Option<bool>,
    hairpin_mode: Option<bool>,
    ip_masq: Option<bool>,
    routes: Option<Vec<RawRoute>>,
    dns: Option<Value>,
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
    #[serde(rename = "cni.dev/attachments")]
    attachments: Option<Vec<Attachment>>,
    log_file: Option<PathBuf>,
    runtime_config: Option<RawRuntimeConfig>,
    args: Option<RawArgs>,
}

/// The `cniVersion` of a stdin document, for error output even when the rest is invalid.
pub fn peek_version(doc: &Value) -> Option<&str> {
    doc.get("cniVersion").and_then(Value::as_str)
}

impl NetConf {
    /// Parses stdin bytes: code 6 when not JSON, 1 for an unsupported version, 7 for a bad field.
    pub fn parse(stdin: &[u8]) -> Result<NetConf> {
        let doc: Value = serde_json::from_slice(stdin).map_err(|source| Error::Decode {
            what: "network configuration on stdin",
            source,
        })?;
        NetConf::from_value(doc)
    }

    /// Builds the config from an already decoded JSON document.
    pub fn from_value(doc: Value) -> Result<NetConf> {
        if !doc.is_object() {
            return Err(Error::InvalidConfig(
                "network configuration must be a JSON object".into(),
            ));
        }
        let version_text = peek_version(&doc).unwrap_or("").to_string();
        if version_text.is_empty() {
            return Err(Error::IncompatibleVersion {
                version: String::new(),
                reason: format!(
                    "cniVersion is missing; weft supports {}",
                    version::SUPPORTED.join(", ")
                ),
            });
        }
        let cni_version = Version::supported(&version_text)?;
        let raw: RawConf = serde_json::from_value(doc)
            .map_err(|e| Error::InvalidConfig(format!("field has the wrong type: {e}")))?;
        let name = raw.name.unwrap_or_default();
        if name.is_empty() {
            return Err(Error::InvalidConfig("name is missing or empty".into()));
        }
        validate_name(&name).map_err(|reason| {
            Error::InvalidConfig(format!(
                "name {name:?} does not match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$: {reason}"
            ))
        })?;
        if raw.ip_masq == Some(true) {
            return Err(Error::UnsupportedField {
                field: "ipMasq",
                reason: "true is not supported: weftd masquerades pod egress with nftables".into(),
            });
        }
        let bridge = raw.bridge.unwrap_or_else(|| DEFAULT_BRIDGE.into());
        validate_ifname(&bridge)
            .map_err(|reason| Error::InvalidConfig(format!("bridge {bridge:?}: {reason}")))?;
        if let Some(mtu) = raw.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(Error::InvalidConfig(format!(
                    "mtu {mtu} is outside 68-65535"
                )));
            }
        }
        let routes = raw
            .routes
            .unwrap_or_default()
            .into_iter()
            .map(parse_route)
            .collect::<Result<Vec<_>>>()?;
        let runtime = raw.runtime_config.unwrap_or_default();
        let from_args = raw.args.and_then(|a| a.cni).unwrap_or_default();
        let mut static_ips = Vec::new();
        for (field, list) in [
            ("runtimeConfig.ips", runtime.ips),
            ("args.cni.ips", from_args.ips),
        ] {
            for text in list.unwrap_or_default() {
                static_ips.push(crate::ip::parse_static_ipv4(&text).ok_or_else(|| {
                    Error::InvalidConfig(format!("{field}: {text:?} is not an IPv4 address"))
                })?);
            }
        }
        let static_mac = runtime
            .mac
            .or(from_args.mac)
            .map(|text| {
                parse_mac(&text)
                    .map_err(|e| Error::InvalidConfig(format!("runtimeConfig.mac {text:?}: {e}")))
            })
            .transpose()?;
        let valid_attachments = raw
            .valid_attachments
            .or(raw.attachments)
            .map(|list| list.into_iter().collect());
        Ok(NetConf {
            cni_version,
            cni_version_text: version_text,
            name,
            subnet_file: raw
                .subnet_file
                .unwrap_or_else(|| DEFAULT_SUBNET_FILE.into()),
            data_dir: raw.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            bridge,
            mtu: raw.mtu,
            is_default_gateway: raw.is_default_gateway.unwrap_or(true),
            hairpin_mode: raw.hairpin_mode.unwrap_or(true),
            routes,
            dns: raw.dns,
            prev_result: raw.prev_result,
            valid_attachments,
            log_file: raw.log_file,
            static_ips,
            static_mac,
        })
    }
}

fn parse_route(raw: RawRoute) -> Result<RouteConf> {
    let dst = raw
        .dst
        .parse::<Ipv4Net>()
        .map_err(|e| Error::InvalidConfig(format!("routes[].dst: {e}")))?;
    let gw = raw
        .gw
        .map(|gw| {
            gw.parse::<Ipv4Addr>().map_err(|_| {
                Error::InvalidConfig(format!("routes[].gw {gw:?} is not an IPv4 address"))
            })
        })
        .transpose()?;
    Ok(RouteConf {
        dst: dst.trunc(),
        gw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NetConf> {
        NetConf::parse(text.as_bytes())
    }

    #[test]
    fn defaults_apply() {
        let conf = parse(r#"{"cniVersion":"1.0.0","name":"weft","type":"weft"}"#).unwrap();
        assert_eq!(conf.cni_version, Version::V1_0_0);
        assert_eq!(conf.subnet_file, PathBuf::from("/run/weft/subnet.env"));
        assert_eq!(conf.data_dir, PathBuf::from("/var/lib/cni/networks"));
        assert_eq!(conf.bridge, "cni0");
        assert_eq!(conf.mtu, None);
        assert!(conf.is_default_gateway);
        assert!(conf.hairpin_mode);
        assert!(conf.routes.is_empty());
        assert!(conf.valid_attachments.is_none());
    }

    #[test]
    fn explicit_fields_and_unknown_ones() {
        let conf = parse(
            r#"{"cniVersion":"0.3.1","name":"n","type":"weft","subnetFile":"/tmp/s.env",
                "dataDir":"/tmp/d","bridge":"br9","mtu":1400,"isDefaultGateway":false,
                "hairpinMode":false,"ipMasq":false,"routes":[{"dst":"192.0.2.7/24"},{"dst":"198.51.100.0/24","gw":"10.244.1.9"}],
                "someFutureField":{"x":1},"runtimeConfig":{"portMappings":[]},"args":{"cni":{}},
                "dns":{"nameservers":["10.96.0.10"]},"logFile":"/tmp/weft.log"}"#,
        )
        .unwrap();
        assert_eq!(conf.subnet_file, PathBuf::from("/tmp/s.env"));
        assert_eq!(conf.bridge, "br9");
        assert_eq!(conf.mtu, Some(1400));
        assert!(!conf.is_default_gateway);
        assert!(!conf.hairpin_mode);
        assert_eq!(conf.routes[0].dst.to_string(), "192.0.2.0/24");
        assert_eq!(conf.routes[0].gw, None);
        assert_eq!(conf.routes[1].gw, Some(Ipv4Addr::new(10, 244, 1, 9)));
        assert_eq!(conf.dns.unwrap()["nameservers"][0], "10.96.0.10");
        assert_eq!(conf.log_file, Some(PathBuf::from("/tmp/weft.log")));
    }

    #[test]
    fn runtime_config_ips_and_mac() {
        let conf = parse(
            r#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"ips":["10.244.7.50/24"],"mac":"0a:00:00:00:00:09","portMappings":[]}}"#,
        )
        .unwrap();
        assert_eq!(conf.static_ips, vec![Ipv4Addr::new(10, 244, 7, 50)]);
        assert_eq!(conf.static_mac, Some([0x0a, 0, 0, 0, 0, 9]));
        let conf =
            parse(r#"{"cniVersion":"1.0.0","name":"n","args":{"cni":{"ips":["10.244.7.51"]}}}"#)
                .unwrap();
        assert_eq!(conf.static_ips, vec![Ipv4Addr::new(10, 244, 7, 51)]);
        for bad in [
            r#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"ips":["fd00::1/64"]}}"#,
            r#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"mac":"ff:ff:ff:ff:ff:ff"}}"#,
            r#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"ips":["10.244.7.5/99"]}}"#,
            r#"{"cniVersion":"1.0.0","name":"n","args":{"cni":{"ips":["10.244.7.5/x"]}}}"#,
        ] {
            assert_eq!(parse(bad).unwrap_err().code(), 7, "{bad}");
        }
    }

    #[test]
    fn gc_attachments_new_and_old_names() {
        let conf = parse(
            r#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
        )
        .unwrap();
        let valid = conf.valid_attachments.unwrap();
        assert!(valid.contains(&Attachment {
            container_id: "a".into(),
            ifname: "eth0".into()
        }));
        let conf = parse(
            r#"{"cniVersion":"1.1.0","name":"n","cni.dev/attachments":[{"containerID":"b","ifname":"net1"}]}"#,
        )
        .unwrap();
        assert_eq!(conf.valid_attachments.unwrap().len(), 1);
    }

    #[test]
    fn error_codes_for_bad_input() {
        assert_eq!(parse("not json").unwrap_err().code(), 6);
        assert_eq!(parse(r#"{"name":"n"}"#).unwrap_err().code(), 1);
        assert_eq!(
            parse(r#"{"cniVersion":"0.2.0","name":"n"}"#)
                .unwrap_err()
                .code(),
            1
        );
        assert_eq!(parse(r#"{"cniVersion":"1.0.0"}"#).unwrap_err().code(), 7);
        assert_eq!(
            parse(r#"{"cniVersion":"1.0.0","name":"n","mtu":"big"}"#)
                .unwrap_err()
                .code(),
            7
        );
        assert_eq!(
            parse(r#"{"cniVersion":"1.0.0","name":"n","mtu":20}"#)
                .unwrap_err()
                .code(),
            7
        );
        assert_eq!(
            parse(r#"{"cniVersion":"1.0.0","name":"n","bridge":"a/b"}"#)
                .unwrap_err()
                .code(),
            7
        );
        assert_eq!(
            parse(r#"{"cniVersion":"1.0.0","name":"n","routes":[{"dst":"10.0.0.0"}]}"#)
                .unwrap_err()
                .code(),
            7
        );
        assert_eq!(
            parse(r#"{"cniVersion":"1.0.0","name":"n","ipMasq":true}"#)
                .unwrap_err()
                .code(),
            2
        );
        assert_eq!(parse("[1]").unwrap_err().code(), 7);
        for name in ["a/b", ".", "..", "-a", "a\\nb", "a b", "a%d"] {
            let text = format!(r#"{{"cniVersion":"1.0.0","name":"{name}"}}"#);
            assert_eq!(parse(&text).unwrap_err().code(), 7, "{name}");
        }
        for bridge in ["br%d", "a b", "0123456789abcdef"] {
            let text = format!(r#"{{"cniVersion":"1.0.0","name":"n","bridge":"{bridge}"}}"#);
            assert_eq!(parse(&text).unwrap_err().code(), 7, "{bridge}");
        }
    }
}
