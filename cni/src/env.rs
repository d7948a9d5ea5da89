//! The `CNI_*` environment variables: reading and validating them as the reference plugins do.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// The operation requested by `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach a container.
    Del,
    /// Verify an attachment.
    Check,
    /// Report supported versions.
    Version,
    /// Release allocations not named by valid attachments.
    Gc,
    /// Report readiness.
    Status,
}

impl Command {
    /// Parses `CNI_COMMAND`.
    pub fn parse(text: &str) -> Result<Command> {
        Ok(match text {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            _ => {
                return Err(Error::InvalidEnv {
                    name: "CNI_COMMAND",
                    value: text.to_string(),
                    reason: "expected ADD, DEL, CHECK, VERSION, GC or STATUS".into(),
                })
            }
        })
    }
}

/// The per-attachment parameters of ADD, DEL and CHECK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentEnv {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_NETNS`; may be empty on DEL.
    pub netns: Option<PathBuf>,
    /// What `CNI_ARGS` asks for.
    pub args: CniArgs,
}

/// The `CNI_ARGS` keys weft acts on (podman passes `IP=`/`MAC=` for `--ip`/`--mac-address`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// `IP=a.b.c.d[,...]`: requested static addresses.
    pub ips: Vec<Ipv4Addr>,
    /// `MAC=aa:bb:cc:dd:ee:ff`: requested MAC of the pod interface.
    pub mac: Option<[u8; 6]>,
}

/// Keys that runtimes pass for their own bookkeeping; accepted without `IgnoreUnknown`.
const KNOWN_ARGS: &[&str] = &[
    "IgnoreUnknown",
    "IP",
    "MAC",
    "K8S_POD_NAME",
    "K8S_POD_NAMESPACE",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
];

/// Reads one variable through `get`, treating unset and empty alike.
fn var(get: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    get(name).filter(|v| !v.is_empty())
}

impl AttachmentEnv {
    /// Reads and validates the variables; `netns_required` is false only for DEL.
    pub fn from_env(
        get: &dyn Fn(&str) -> Option<String>,
        netns_required: bool,
    ) -> Result<AttachmentEnv> {
        let container_id = var(get, "CNI_CONTAINERID").ok_or_else(|| missing("CNI_CONTAINERID"))?;
        validate_container_id(&container_id).map_err(|reason| Error::InvalidEnv {
            name: "CNI_CONTAINERID",
            value: container_id.clone(),
            reason,
        })?;
        let ifname = var(get, "CNI_IFNAME").ok_or_else(|| missing("CNI_IFNAME"))?;
        validate_ifname(&ifname).map_err(|reason| Error::InvalidEnv {
            name: "CNI_IFNAME",
            value: ifname.clone(),
            reason,
        })?;
        let netns = var(get, "CNI_NETNS").map(PathBuf::from);
        if netns_required && netns.is_none() {
            return Err(missing("CNI_NETNS"));
        }
        let args = match var(get, "CNI_ARGS") {
            Some(text) => parse_cni_args(&text).map_err(|reason| Error::InvalidEnv {
                name: "CNI_ARGS",
                value: text.clone(),
                reason,
            })?,
            None => CniArgs::default(),
        };
        Ok(AttachmentEnv {
            container_id,
            ifname,
            netns,
            args,
        })
    }
}

fn missing(name: &'static str) -> Error {
    Error::InvalidEnv {
        name,
        value: String::new(),
        reason: "required but not set".into(),
    }
}

/// The spec's container ID rule: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
pub fn validate_container_id(id: &str) -> std::result::Result<(), String> {
    validate_name(id)
}

/// The spec's rule for container IDs and network names: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
pub fn validate_name(id: &str) -> std::result::Result<(), String> {
    let mut chars = id.chars();
    match chars.next() {
        None => return Err("must not be empty".into()),
        Some(c) if !c.is_ascii_alphanumeric() => {
            return Err("must start with a letter or digit".into())
        }
        Some(_) => {}
    }
    if let Some(bad) = chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "character {bad:?} is not allowed (letters, digits, _ . - only)"
        ));
    }
    Ok(())
}

/// The kernel's and the spec's interface name rules.
pub fn validate_ifname(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("interface name must not be empty".into());
    }
    if name.len() > 15 {
        return Err(format!(
            "interface name is {} bytes, at most 15 allowed",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err("interface name must not be . or ..".into());
    }
    // `%` would make the kernel pick a name itself (`%d`), leaving a device weft did not ask for.
    if let Some(bad) = name
        .chars()
        .find(|c| matches!(c, '/' | ':' | '%') || c.is_whitespace() || c.is_control())
    {
        return Err(format!("interface name must not contain {bad:?}"));
    }
    Ok(())
}

/// Parses `CNI_ARGS` (`KEY=VALUE` pairs separated by `;`). Keys weft does not know are an
/// error unless `IgnoreUnknown` is `1` or `true`, as in the reference plugins.
pub fn parse_cni_args(text: &str) -> std::result::Result<CniArgs, String> {
    let mut pairs = Vec::new();
    for pair in text.split(';').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((key, value)) if !key.is_empty() => pairs.push((key, value)),
            _ => return Err(format!("{pair:?} is not KEY=VALUE")),
        }
    }
    let ignore_unknown = pairs
        .iter()
        .any(|(k, v)| *k == "IgnoreUnknown" && (*v == "1" || v.eq_ignore_ascii_case("true")));
    let mut args = CniArgs::default();
    for (key, value) in pairs {
        match key {
            "IP" => {
                for ip in value.split(',').filter(|v| !v.is_empty()) {
                    args.ips.push(
                        crate::ip::parse_static_ipv4(ip).ok_or_else(|| {
                            format!("IP={value:?}: {ip:?} is not an IPv4 address")
                        })?,
                    );
                }
            }
            "MAC" => args.mac = Some(parse_mac(value).map_err(|e| format!("MAC={value:?}: {e}"))?),
            _ if KNOWN_ARGS.contains(&key) || ignore_unknown => {}
            _ => {
                return Err(format!(
                    "unknown key {key:?} (set IgnoreUnknown=1 to ignore keys weft does not use)"
                ))
            }
        }
    }
    Ok(args)
}

/// Parses a unicast MAC `aa:bb:cc:dd:ee:ff` (also `-`-separated).
pub fn parse_mac(text: &str) -> std::result::Result<[u8; 6], String> {
    let mut mac = [0u8; 6];
    let mut parts = text.split([':', '-']);
    for byte in &mut mac {
        let part = parts.next().ok_or("not six bytes")?;
        if part.len() != 2 {
            return Err(format!("{part:?} is not a two-digit hex byte"));
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| format!("{part:?} is not hex"))?;
    }
    if parts.next().is_some() {
        return Err("more than six bytes".into());
    }
    if mac[0] & 0x01 != 0 {
        return Err("is a multicast address, not a unicast one".into());
    }
    if mac == [0; 6] {
        return Err("is all zeros".into());
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)], netns_required: bool) -> Result<AttachmentEnv> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        AttachmentEnv::from_env(&|k| map.get(k).cloned(), netns_required)
    }

    #[test]
    fn container_ids() {
        for ok in ["a", "0abc", "abc_d.e-f", "3f6940ab5ab43bc522569d15b23f8c1b"] {
            assert!(validate_container_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "_a", ".a", "a/b", "a b", "a:b", "é"] {
            assert!(validate_container_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ifnames() {
        for ok in ["eth0", "net1", "a", "123456789012345"] {
            assert!(validate_ifname(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "1234567890123456",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
            "br%d",
            "a\nb",
        ] {
            assert!(validate_ifname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_errors_name_the_variable() {
        let err = env(&[("CNI_IFNAME", "eth0"), ("CNI_NETNS", "/x")], true).unwrap_err();
        assert_eq!(err.code(), 4);
        assert!(err.to_string().contains("CNI_CONTAINERID"), "{err}");
        let err = env(
            &[
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "eth0:1"),
                ("CNI_NETNS", "/x"),
            ],
            true,
        )
        .unwrap_err();
        assert!(err.to_string().contains("CNI_IFNAME"), "{err}");
        let err = env(&[("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")], true).unwrap_err();
        assert!(err.to_string().contains("CNI_NETNS"), "{err}");
        let del = env(&[("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")], false).unwrap();
        assert_eq!(del.netns, None);
        let err = env(
            &[
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", "K8S_POD_NAME=a;junk"),
            ],
            false,
        )
        .unwrap_err();
        assert!(err.to_string().contains("CNI_ARGS"), "{err}");
    }

    #[test]
    fn cni_args_static_ip_mac_and_ignore_unknown() {
        let args =
            parse_cni_args("IgnoreUnknown=1;IP=10.244.7.50;MAC=0a:00:00:00:00:07;K8S_POD_NAME=a")
                .unwrap();
        assert_eq!(args.ips, vec![Ipv4Addr::new(10, 244, 7, 50)]);
        assert_eq!(args.mac, Some([0x0a, 0, 0, 0, 0, 7]));
        assert_eq!(
            parse_cni_args("IP=10.244.7.5/24,10.244.7.6")
                .unwrap()
                .ips
                .len(),
            2
        );
        assert!(parse_cni_args("FOO=1").unwrap_err().contains("FOO"));
        assert!(parse_cni_args("FOO=1;IgnoreUnknown=true").is_ok());
        assert!(parse_cni_args("FOO=1;IgnoreUnknown=0").is_err());
        assert!(parse_cni_args("IP=fd00::1").is_err());
        assert!(parse_cni_args("IP=10.1.2").is_err());
        // What follows the address is a prefix or nothing.
        for bad in [
            "10.244.7.5/garbage",
            "10.244.7.5/33",
            "10.244.7.5/",
            "10.244.7.5/24/1",
        ] {
            let err = parse_cni_args(&format!("IP={bad}")).unwrap_err();
            assert!(err.contains(bad), "{bad}: {err}");
        }
        for bad in [
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
            "0a:00:00:00:00",
            "0a:00:00:00:00:00:01",
            "zz:00:00:00:00:01",
        ] {
            assert!(parse_cni_args(&format!("MAC={bad}")).is_err(), "{bad}");
        }
        assert_eq!(parse_cni_args("").unwrap(), CniArgs::default());
    }

    #[test]
    fn commands() {
        assert_eq!(Command::parse("GC").unwrap(), Command::Gc);
        assert_eq!(Command::parse("add").unwrap_err().code(), 4);
    }
}
