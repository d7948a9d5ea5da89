//! `subnet.env`, the file CNI plugins read, in Flannel's exact format:
//!
//! ```text
//! FLANNEL_NETWORK=10.244.0.0/16
//! FLANNEL_SUBNET=10.244.1.1/24
//! FLANNEL_MTU=1450
//! FLANNEL_IPMASQ=false
//! ```
//!
//! With IPv6, Flannel adds `FLANNEL_IPV6_NETWORK` and `FLANNEL_IPV6_SUBNET` after the IPv4 pair;
//! an IPv6-only node (`EnableIPv4: false`) writes no IPv4 pair.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ipnetwork::{Ipv4Network, Ipv6Network};

/// A `subnet.env` file that could not be read, parsed or written.
#[derive(Debug, thiserror::Error)]
pub enum SubnetEnvError {
    /// A file system operation failed.
    #[error("subnet.env {path}: {op}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A required variable is absent.
    #[error("subnet.env: {key} is missing")]
    Missing {
        /// The variable's name.
        key: &'static str,
    },
    /// A variable holds a value that does not parse.
    #[error("subnet.env: {key}={value}: {reason}")]
    Invalid {
        /// The variable's name.
        key: String,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The contents of `subnet.env`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// `FLANNEL_NETWORK`: the cluster's pod network; `0.0.0.0/0` on an IPv6-only node, which
    /// writes no IPv4 pair.
    pub network: Ipv4Network,
    /// `FLANNEL_SUBNET`: the node subnet's first usable address with the subnet's prefix length
    /// (`10.244.1.1/24` for the lease `10.244.1.0/24`).
    pub subnet: Ipv4Network,
    /// `FLANNEL_IPV6_NETWORK`, written only with `ipv6_subnet`.
    pub ipv6_network: Option<Ipv6Network>,
    /// `FLANNEL_IPV6_SUBNET`, first usable address like `subnet`.
    pub ipv6_subnet: Option<Ipv6Network>,
    /// `FLANNEL_MTU`: the MTU pods should use.
    pub mtu: u32,
    /// `FLANNEL_IPMASQ`: whether the node masquerades pod egress.
    pub ipmasq: bool,
}

impl SubnetEnv {
    /// The file for an IPv4 node lease `lease` (e.g. `10.244.1.0/24`) of `network`.
    pub fn new(network: Ipv4Network, lease: Ipv4Network, mtu: u32, ipmasq: bool) -> SubnetEnv {
        let first = u32::from(lease.network()).saturating_add(1);
        // A prefix length taken from a valid network is always valid.
        let subnet = Ipv4Network::new(first.into(), lease.prefix()).unwrap_or(lease);
        SubnetEnv {
            network,
            subnet,
            ipv6_network: None,
            ipv6_subnet: None,
            mtu,
            ipmasq,
        }
    }

    /// Adds the IPv6 pair for the IPv6 node lease `lease` (e.g. `fd00:10:244:1::/64`) of
    /// `network`: `FLANNEL_IPV6_SUBNET` is the first usable address, as Flannel writes it.
    pub fn with_ipv6(mut self, network: Ipv6Network, lease: Ipv6Network) -> SubnetEnv {
        let first = u128::from(lease.network()).saturating_add(1);
        self.ipv6_network = Some(network);
        self.ipv6_subnet = Some(Ipv6Network::new(first.into(), lease.prefix()).unwrap_or(lease));
        self
    }

    /// Whether the file has the IPv4 pair (every node but an IPv6-only one).
    pub fn has_ipv4(&self) -> bool {
        self.network.prefix() != 0
    }

    /// The node subnet itself (`10.244.1.0/24` for `FLANNEL_SUBNET=10.244.1.1/24`), as the
    /// previous subnet to ask for after a restart.
    pub fn lease_subnet(&self) -> Ipv4Network {
        Ipv4Network::new(self.subnet.network(), self.subnet.prefix()).unwrap_or(self.subnet)
    }

    /// The file's text, in Flannel's order and spelling.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        if self.has_ipv4() {
            let _ = write!(
                out,
                "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}\n",
                self.network, self.subnet
            );
        }
        if let (Some(net6), Some(sn6)) = (self.ipv6_network, self.ipv6_subnet) {
            let _ = write!(
                out,
                "FLANNEL_IPV6_NETWORK={net6}\nFLANNEL_IPV6_SUBNET={sn6}\n"
            );
        }
        let _ = write!(
            out,
            "FLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.mtu, self.ipmasq
        );
        out
    }

    /// Parses the text of a `subnet.env`. Unknown variables, blank lines and `#` comments are
    /// ignored; the IPv4 pair (unless the IPv6 pair is there), `FLANNEL_MTU` and
    /// `FLANNEL_IPMASQ` are required.
    pub fn parse(text: &str) -> Result<SubnetEnv, SubnetEnvError> {
        let mut network = None;
        let mut subnet = None;
        let mut ipv6_network = None;
        let mut ipv6_subnet = None;
        let mut mtu = None;
        let mut ipmasq = None;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(SubnetEnvError::Invalid {
                    key: line.to_string(),
                    value: String::new(),
                    reason: "line is not KEY=VALUE".into(),
                });
            };
            let bad = |reason: String| SubnetEnvError::Invalid {
                key: key.to_string(),
                value: value.to_string(),
                reason,
            };
            match key {
                "FLANNEL_NETWORK" => {
                    network = Some(value.parse().map_err(|e| bad(format!("{e}")))?)
                }
                "FLANNEL_SUBNET" => subnet = Some(value.parse().map_err(|e| bad(format!("{e}")))?),
                "FLANNEL_IPV6_NETWORK" => {
                    ipv6_network = Some(value.parse().map_err(|e| bad(format!("{e}")))?)
                }
                "FLANNEL_IPV6_SUBNET" => {
                    ipv6_subnet = Some(value.parse().map_err(|e| bad(format!("{e}")))?)
                }
                "FLANNEL_MTU" => mtu = Some(value.parse().map_err(|e| bad(format!("{e}")))?),
                "FLANNEL_IPMASQ" => {
                    ipmasq = Some(match value {
                        "true" => true,
                        "false" => false,
                        _ => return Err(bad("expected true or false".into())),
                    })
                }
                _ => {}
            }
        }
        // An IPv6-only file has no IPv4 pair; its absence reads as Flannel's zero value.
        let none = Ipv4Network::new(std::net::Ipv4Addr::UNSPECIFIED, 0).ok();
        let v6_only = network.is_none() && subnet.is_none() && ipv6_subnet.is_some();
        if v6_only {
            network = none;
            subnet = none;
        }
        Ok(SubnetEnv {
            network: network.ok_or(SubnetEnvError::Missing {
                key: "FLANNEL_NETWORK",
            })?,
            subnet: subnet.ok_or(SubnetEnvError::Missing {
                key: "FLANNEL_SUBNET",
            })?,
            ipv6_network,
            ipv6_subnet,
            mtu: mtu.ok_or(SubnetEnvError::Missing { key: "FLANNEL_MTU" })?,
            ipmasq: ipmasq.ok_or(SubnetEnvError::Missing {
                key: "FLANNEL_IPMASQ",
            })?,
        })
    }

    /// Reads and parses the file at `path`.
    pub fn read(path: &Path) -> Result<SubnetEnv, SubnetEnvError> {
        let text = std::fs::read_to_string(path).map_err(|source| SubnetEnvError::Io {
            path: path.to_path_buf(),
            op: "read",
            source,
        })?;
        SubnetEnv::parse(&text)
    }

    /// Writes the file atomically: a temporary file in the same directory, fsync, rename over
    /// `path`, fsync of the directory. Missing parent directories are created; the mode is 0644.
    pub fn write_atomic(&self, path: &Path) -> Result<(), SubnetEnvError> {
        let io = |path: &Path, op: &'static str| {
            let path = path.to_path_buf();
            move |source| SubnetEnvError::Io { path, op, source }
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir).map_err(io(dir, "create directory"))?;
        crate::atomic_file::write_atomic(path, self.render().as_bytes(), 0o644)
            .map_err(io(path, "write atomically"))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir, "fsync directory"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const FLANNEL_FILE: &str =
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";

    fn env() -> SubnetEnv {
        SubnetEnv::new(
            "10.244.0.0/16".parse().unwrap(),
            "10.244.1.0/24".parse().unwrap(),
            1450,
            false,
        )
    }

    #[test]
    fn renders_flannels_format() {
        assert_eq!(env().render(), FLANNEL_FILE);
        assert_eq!(env().lease_subnet(), "10.244.1.0/24".parse().unwrap());
        let e = SubnetEnv::new(
            "10.5.0.0/16".parse().unwrap(),
            "10.5.3.64/26".parse().unwrap(),
            1400,
            true,
        );
        assert_eq!(
            e.render(),
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.3.65/26\nFLANNEL_MTU=1400\nFLANNEL_IPMASQ=true\n"
        );
    }

    #[test]
    fn dual_stack_order_is_flannels() {
        let mut e = env();
        e.ipv6_network = Some("fc00::/48".parse().unwrap());
        e.ipv6_subnet = Some("fc00:0:0:1::1/64".parse().unwrap());
        let text = e.render();
        assert_eq!(
            text,
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00:0:0:1::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
        assert_eq!(SubnetEnv::parse(&text).unwrap(), e);
    }

    #[test]
    fn ipv6_pair_as_write_subnet_file_writes_it() {
        let e = env().with_ipv6(
            "fd00:10:244::/48".parse().unwrap(),
            "fd00:10:244:1::/64".parse().unwrap(),
        );
        assert_eq!(
            e.render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n\
             FLANNEL_IPV6_NETWORK=fd00:10:244::/48\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n\
             FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
        // IPv6-only: flanneld writes no IPv4 pair (config.EnableIPv4 is false).
        let v6 = SubnetEnv::new(
            "0.0.0.0/0".parse().unwrap(),
            "0.0.0.0/0".parse().unwrap(),
            1430,
            true,
        )
        .with_ipv6(
            "fd00:10:244::/48".parse().unwrap(),
            "fd00:10:244:7::/64".parse().unwrap(),
        );
        let text = v6.render();
        assert_eq!(
            text,
            "FLANNEL_IPV6_NETWORK=fd00:10:244::/48\nFLANNEL_IPV6_SUBNET=fd00:10:244:7::1/64\n\
             FLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n"
        );
        let back = SubnetEnv::parse(&text).unwrap();
        assert!(!back.has_ipv4());
        assert_eq!(back.ipv6_subnet, v6.ipv6_subnet);
        assert_eq!(SubnetEnv::parse(&e.render()).unwrap(), e);
    }

    #[test]
    fn parses_flannels_file() {
        assert_eq!(SubnetEnv::parse(FLANNEL_FILE).unwrap(), env());
        let with_extra = format!("# written by flanneld\n\nFOO=bar\n{FLANNEL_FILE}");
        assert_eq!(SubnetEnv::parse(&with_extra).unwrap(), env());
    }

    #[test]
    fn parse_errors_name_key_and_value() {
        let e = SubnetEnv::parse(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "subnet.env: FLANNEL_SUBNET is missing");
        let e = SubnetEnv::parse(&FLANNEL_FILE.replace("=false", "=no")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "subnet.env: FLANNEL_IPMASQ=no: expected true or false"
        );
        let e = SubnetEnv::parse(&FLANNEL_FILE.replace("1450", "big")).unwrap_err();
        assert!(
            e.to_string().starts_with("subnet.env: FLANNEL_MTU=big: "),
            "{e}"
        );
        let e = SubnetEnv::parse("garbage\n").unwrap_err();
        assert!(e.to_string().contains("line is not KEY=VALUE"), "{e}");
    }

    #[test]
    fn write_atomic_creates_dirs_mode_and_replaces() {
        let base =
            std::env::temp_dir().join(format!("weft-subnet-env-test-{}", std::process::id()));
        let path = base.join("run/weft/subnet.env");
        env().write_atomic(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), FLANNEL_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let mut other = env();
        other.mtu = 1400;
        other.write_atomic(&path).unwrap();
        assert_eq!(SubnetEnv::read(&path).unwrap(), other);
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("subnet.env")]);
        std::fs::remove_dir_all(&base).unwrap();
        let e = SubnetEnv::read(&path).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("subnet.env {}: read: ", path.display())),
            "{e}"
        );
    }
}
