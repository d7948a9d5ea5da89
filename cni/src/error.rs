//! The plugin's error type and its mapping onto the CNI spec's error codes.

use std::io;
use std::path::PathBuf;

use serde::Serialize;

/// Every way a weft CNI operation can fail; each variant maps to one CNI error code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The requested `cniVersion` is not one the plugin speaks, or it does not allow the command.
    #[error("incompatible CNI version {version:?}: {reason}")]
    IncompatibleVersion {
        /// The version the caller asked for.
        version: String,
        /// Why it cannot be served.
        reason: String,
    },
    /// A configuration field carries a value weft does not support.
    #[error("unsupported field {field}: {reason}")]
    UnsupportedField {
        /// The field name as it appears in the config.
        field: &'static str,
        /// Why the value is unsupported.
        reason: String,
    },
    /// The container (its network namespace or its attachment) does not exist.
    #[error("unknown container {container}: {reason}")]
    UnknownContainer {
        /// The container ID from `CNI_CONTAINERID`.
        container: String,
        /// What is missing.
        reason: String,
    },
    /// A required `CNI_*` environment variable is missing or invalid.
    #[error("invalid environment variable {name}={value:?}: {reason}")]
    InvalidEnv {
        /// The variable name.
        name: &'static str,
        /// Its value (empty when missing).
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation, e.g. "create IPAM directory".
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The input on stdin (or `prevResult`) is not valid JSON.
    #[error("decode {what}: {source}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// The network configuration is well-formed JSON but not a valid weft config.
    #[error("invalid network config: {0}")]
    InvalidConfig(String),
    /// A transient condition: the caller should retry (e.g. weftd has not written subnet.env yet).
    #[error("try again later: {0}")]
    TryAgainLater(String),
    /// STATUS: the plugin cannot serve ADDs right now.
    #[error("weft not ready: {0}")]
    NotReady(String),
    /// The bridge carries an IPv4 address that is neither the node gateway nor weft's earlier one.
    #[error("bridge {bridge} carries address {found}, which weft did not put there (bridge MAC {mac} does not name it); expected only {expected}: remove the address or the bridge, or name another bridge")]
    BridgeAddressConflict {
        /// The bridge name.
        bridge: String,
        /// The conflicting address found on it.
        found: String,
        /// The gateway address weft wants.
        expected: String,
        /// The bridge's MAC (weft's bridges carry `0a:58:<gateway>`).
        mac: String,
    },
    /// Every address of the node subnet is allocated.
    #[error("no free address in {subnet} for network {network}: all {capacity} addresses are allocated in {dir}")]
    AddressPoolExhausted {
        /// The node subnet.
        subnet: String,
        /// The CNI network name.
        network: String,
        /// Number of allocatable addresses.
        capacity: u32,
        /// The IPAM directory.
        dir: PathBuf,
    },
    /// ADD found `CNI_IFNAME` already present in the container namespace.
    #[error("interface {ifname} already exists in network namespace {netns}")]
    InterfaceExists {
        /// The interface name.
        ifname: String,
        /// The namespace path.
        netns: String,
    },
    /// The kernel refused a netlink request.
    #[error("netlink {op}: {source}")]
    Netlink {
        /// The operation with its object, e.g. "create veth vethab12 (peer eth0)".
        op: String,
        /// The kernel's error.
        source: io::Error,
    },
    /// CHECK found the attachment differs from `prevResult` or from the allocation.
    #[error("check failed for container {container} interface {ifname}: {reason}")]
    CheckFailed {
        /// The container ID.
        container: String,
        /// The container interface.
        ifname: String,
        /// What does not match.
        reason: String,
    },
    /// subnet.env exists but does not say what weft needs.
    #[error("invalid subnet file {path}: {reason}")]
    InvalidSubnetFile {
        /// The subnet.env path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// CNI error codes used by weft (spec "Well-known error codes" plus weft's own, 100+).
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: plugin not available.
    pub const NOT_READY: u32 = 50;
    /// weft: the bridge carries a different address.
    pub const BRIDGE_ADDRESS_CONFLICT: u32 = 100;
    /// weft: the node subnet has no free address.
    pub const ADDRESS_POOL_EXHAUSTED: u32 = 101;
    /// weft: `CNI_IFNAME` already exists in the container.
    pub const INTERFACE_EXISTS: u32 = 102;
    /// weft: a netlink request failed.
    pub const NETLINK: u32 = 103;
    /// weft: CHECK found a mismatch.
    pub const CHECK_FAILED: u32 = 104;
    /// weft: subnet.env is malformed.
    pub const INVALID_SUBNET_FILE: u32 = 105;
}

impl Error {
    /// The CNI error code for this error.
    pub fn code(&self) -> u32 {
        match self {
            Error::IncompatibleVersion { .. } => code::INCOMPATIBLE_VERSION,
            Error::UnsupportedField { .. } => code::UNSUPPORTED_FIELD,
            Error::UnknownContainer { .. } => code::UNKNOWN_CONTAINER,
            Error::InvalidEnv { .. } => code::INVALID_ENV,
            Error::Io { .. } => code::IO,
            Error::Decode { .. } => code::DECODE,
            Error::InvalidConfig(_) => code::INVALID_CONFIG,
            Error::TryAgainLater(_) => code::TRY_AGAIN_LATER,
            Error::NotReady(_) => code::NOT_READY,
            Error::BridgeAddressConflict { .. } => code::BRIDGE_ADDRESS_CONFLICT,
            Error::AddressPoolExhausted { .. } => code::ADDRESS_POOL_EXHAUSTED,
            Error::InterfaceExists { .. } => code::INTERFACE_EXISTS,
            Error::Netlink { .. } => code::NETLINK,
            Error::CheckFailed { .. } => code::CHECK_FAILED,
            Error::InvalidSubnetFile { .. } => code::INVALID_SUBNET_FILE,
        }
    }

    /// The spec's short message for the error's code.
    pub fn summary(&self) -> &'static str {
        match self {
            Error::IncompatibleVersion { .. } => "Incompatible CNI version",
            Error::UnsupportedField { .. } => "Unsupported field in network configuration",
            Error::UnknownContainer { .. } => "Container unknown or does not exist",
            Error::InvalidEnv { .. } => "Invalid necessary environment variables",
            Error::Io { .. } => "I/O failure",
            Error::Decode { .. } => "Failed to decode content",
            Error::InvalidConfig(_) => "Invalid network config",
            Error::TryAgainLater(_) => "Try again later",
            Error::NotReady(_) => "Plugin not available",
            Error::BridgeAddressConflict { .. } => "Bridge carries a different address",
            Error::AddressPoolExhausted { .. } => "Address pool exhausted",
            Error::InterfaceExists { .. } => "Interface already exists",
            Error::Netlink { .. } => "Kernel refused a netlink request",
            Error::CheckFailed { .. } => "Attachment does not match",
            Error::InvalidSubnetFile { .. } => "Invalid subnet file",
        }
    }

    /// Builds the spec's error object for stdout.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            details: String,
        }
        let wire = Wire {
            cni_version,
            code: self.code(),
            msg: self.summary(),
            details: self.to_string(),
        };
        serde_json::to_value(wire).unwrap_or(serde_json::Value::Null)
    }
}

/// Shorthand for results in this crate.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_spec_fields_and_code() {
        let err = Error::InvalidEnv {
            name: "CNI_IFNAME",
            value: String::new(),
            reason: "missing".into(),
        };
        let json = err.to_json("1.0.0");
        assert_eq!(json["cniVersion"], "1.0.0");
        assert_eq!(json["code"], 4);
        assert_eq!(json["msg"], "Invalid necessary environment variables");
        assert_eq!(
            json["details"],
            "invalid environment variable CNI_IFNAME=\"\": missing"
        );
    }

    #[test]
    fn codes_follow_the_spec_table() {
        let io = Error::Io {
            op: "read",
            path: "/x".into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        assert_eq!(io.code(), 5);
        assert_eq!(Error::InvalidConfig("x".into()).code(), 7);
        assert_eq!(Error::TryAgainLater("x".into()).code(), 11);
        assert_eq!(Error::NotReady("x".into()).code(), 50);
        let decode = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        assert_eq!(
            Error::Decode {
                what: "x",
                source: decode
            }
            .code(),
            6
        );
    }
}
