//! The `CNI_*` environment variables: reading and validating them as the reference plugins do.

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
}

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
        if let Some(args) = var(get, "CNI_ARGS") {
            validate_cni_args(&args).map_err(|reason| Error::InvalidEnv {
                name: "CNI_ARGS",
                value: args.clone(),
                reason,
            })?;
        }
        Ok(AttachmentEnv {
            container_id,
            ifname,
            netns,
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
    if let Some(bad) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace())
    {
        return Err(format!("interface name must not contain {bad:?}"));
    }
    Ok(())
}

/// `CNI_ARGS` must be `KEY=VALUE` pairs separated by `;`.
pub fn validate_cni_args(args: &str) -> std::result::Result<(), String> {
    for pair in args.split(';').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((key, _)) if !key.is_empty() => {}
            _ => return Err(format!("{pair:?} is not KEY=VALUE")),
        }
    }
    Ok(())
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
    fn commands() {
        assert_eq!(Command::parse("GC").unwrap(), Command::Gc);
        assert_eq!(Command::parse("add").unwrap_err().code(), 4);
    }
}
