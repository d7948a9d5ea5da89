//! Reading the node lease that weftd (or flanneld) writes to subnet.env.

use std::fs::File;
use std::io::{self, Read};
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::ip::{Ipv4Net, Ipv6Net};

/// What the plugin needs from subnet.env.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSubnet {
    /// `FLANNEL_NETWORK` and `FLANNEL_SUBNET`; `None` on an IPv6-only node.
    pub ipv4: Option<NodeSubnet4>,
    /// `FLANNEL_MTU`, if present.
    pub mtu: Option<u32>,
    /// `FLANNEL_IPV6_NETWORK` and `FLANNEL_IPV6_SUBNET`, on a dual-stack node.
    pub ipv6: Option<NodeSubnet6>,
}

/// The IPv4 part of a node's subnet.env.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeSubnet4 {
    /// `FLANNEL_NETWORK`: the whole cluster pod network.
    pub network: Ipv4Net,
    /// `FLANNEL_SUBNET`: the node subnet, written as its first usable address (the gateway) / length.
    pub subnet: Ipv4Net,
}

impl NodeSubnet4 {
    /// The bridge's address: FLANNEL_SUBNET's address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.addr()
    }
}

/// The IPv6 half of a dual-stack node's subnet.env.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeSubnet6 {
    /// `FLANNEL_IPV6_NETWORK`: the cluster's IPv6 pod network.
    pub network: Ipv6Net,
    /// `FLANNEL_IPV6_SUBNET`: the node's IPv6 subnet, as its first address (the gateway) / length.
    pub subnet: Ipv6Net,
}

impl NodeSubnet {
    /// The address the bridge's MAC is derived from (`0a:58:<address>`): the IPv4 gateway, or
    /// on an IPv6-only node the last 32 bits of the IPv6 one.
    pub fn mac_seed(&self) -> Ipv4Addr {
        match (&self.ipv4, &self.ipv6) {
            (Some(v4), _) => v4.gateway(),
            (None, Some(v6)) => Ipv4Addr::from(u128::from(v6.subnet.addr()) as u32),
            (None, None) => Ipv4Addr::UNSPECIFIED,
        }
    }

    /// Reads and parses subnet.env. A missing file is "try again later" (weftd not ready yet).
    /// The file must be a regular file of at most [`MAX_SUBNET_FILE`] bytes; it is opened without
    /// blocking, so a FIFO or device put in its place cannot hang the plugin.
    pub fn load(path: &Path) -> Result<NodeSubnet> {
        let io_err = |op: &'static str| {
            move |source: io::Error| Error::Io {
                op,
                path: path.to_path_buf(),
                source,
            }
        };
        let file = File::options()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(|source| {
                if source.kind() == io::ErrorKind::NotFound {
                    Error::TryAgainLater(format!(
                        "subnet file {} does not exist yet: weftd has not leased a subnet for this node",
                        path.display()
                    ))
                } else {
                    io_err("open subnet file")(source)
                }
            })?;
        let invalid = |reason: String| Error::InvalidSubnetFile {
            path: path.to_path_buf(),
            reason,
        };
        let meta = file.metadata().map_err(io_err("stat subnet file"))?;
        if !meta.is_file() {
            return Err(invalid("not a regular file".into()));
        }
        let mut bytes = Vec::new();
        file.take(MAX_SUBNET_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err("read subnet file"))?;
        if bytes.len() as u64 > MAX_SUBNET_FILE {
            return Err(invalid(format!(
                "larger than {MAX_SUBNET_FILE} bytes; Flannel's subnet.env is a few lines"
            )));
        }
        let text = String::from_utf8(bytes).map_err(|_| invalid("not UTF-8 text".into()))?;
        NodeSubnet::parse(&text).map_err(invalid)
    }

    /// Parses subnet.env text (`KEY=VALUE` lines, Flannel's format). Every problem found is
    /// reported, separated by `; `, so one fix-up round is enough.
    pub fn parse(text: &str) -> std::result::Result<NodeSubnet, String> {
        let mut problems = Vec::new();
        let mut network = None;
        let mut subnet = None;
        let mut mtu = None;
        let mut network6 = None;
        let mut subnet6 = None;
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                problems.push(format!("line {}: {line:?} is not KEY=VALUE", number + 1));
                continue;
            };
            let value = value.trim().trim_matches('"');
            let key = key.trim();
            let net = |value: &str| {
                value
                    .parse::<Ipv4Net>()
                    .map_err(|e| format!("line {}: {key}={value:?}: {e}", number + 1))
            };
            match key {
                "FLANNEL_NETWORK" => match net(value) {
                    Ok(n) => network = Some(n),
                    Err(e) => problems.push(e),
                },
                "FLANNEL_SUBNET" => match net(value) {
                    Ok(n) => subnet = Some(n),
                    Err(e) => problems.push(e),
                },
                "FLANNEL_IPV6_NETWORK" | "FLANNEL_IPV6_SUBNET" => match value.parse::<Ipv6Net>() {
                    Ok(n) if key == "FLANNEL_IPV6_NETWORK" => network6 = Some(n),
                    Ok(n) => subnet6 = Some(n),
                    Err(e) => problems.push(format!("line {}: {key}={value:?}: {e}", number + 1)),
                },
                "FLANNEL_MTU" => match value.parse::<u32>() {
                    Ok(m) if (68..=65535).contains(&m) => mtu = Some(m),
                    _ => problems.push(format!(
                        "line {}: FLANNEL_MTU={value:?} is not a number in 68-65535",
                        number + 1
                    )),
                },
                _ => {}
            }
        }
        // An IPv6-only node (flanneld with EnableIPv4 false) writes no IPv4 pair.
        let v6_only =
            network.is_none() && subnet.is_none() && (network6.is_some() || subnet6.is_some());
        if !v6_only && network.is_none() && !problems.iter().any(|p| p.contains("FLANNEL_NETWORK="))
        {
            problems.push("FLANNEL_NETWORK is missing".into());
        }
        match subnet {
            None if !v6_only && !problems.iter().any(|p| p.contains("FLANNEL_SUBNET=")) => {
                problems.push("FLANNEL_SUBNET is missing".into())
            }
            Some(subnet) if subnet.prefix() > 30 => {
                problems.push(format!("FLANNEL_SUBNET={subnet} leaves no room for pods"))
            }
            Some(subnet)
                if subnet.addr() == subnet.network() || subnet.addr() == subnet.broadcast() =>
            {
                problems.push(format!(
                    "FLANNEL_SUBNET={subnet} must name a usable gateway address, not the network or broadcast address"
                ))
            }
            _ => {}
        }
        let ipv6 = match (network6, subnet6) {
            (Some(network), Some(subnet)) => {
                if subnet.prefix() > 126 || subnet.addr() == subnet.network() {
                    problems.push(format!(
                        "FLANNEL_IPV6_SUBNET={subnet} must name a usable gateway address in a prefix with room for pods"
                    ));
                }
                Some(NodeSubnet6 { network, subnet })
            }
            (None, None) => None,
            (Some(_), None) if !problems.iter().any(|p| p.contains("FLANNEL_IPV6_SUBNET=")) => {
                problems.push("FLANNEL_IPV6_NETWORK without FLANNEL_IPV6_SUBNET".into());
                None
            }
            (None, Some(_)) if !problems.iter().any(|p| p.contains("FLANNEL_IPV6_NETWORK=")) => {
                problems.push("FLANNEL_IPV6_SUBNET without FLANNEL_IPV6_NETWORK".into());
                None
            }
            _ => None,
        };
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let ipv4 = match (network, subnet) {
            (Some(network), Some(subnet)) => Some(NodeSubnet4 { network, subnet }),
            _ => None,
        };
        Ok(NodeSubnet { ipv4, mtu, ipv6 })
    }
}

/// The largest subnet.env weft reads (Flannel's is about 100 bytes).
pub const MAX_SUBNET_FILE: u64 = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flannel_format() {
        let text = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
        let node = NodeSubnet::parse(text).unwrap();
        let v4 = node.ipv4.unwrap();
        assert_eq!(v4.network.to_string(), "10.244.0.0/16");
        assert_eq!(v4.subnet.to_string(), "10.244.1.1/24");
        assert_eq!(v4.gateway(), Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(node.mtu, Some(1450));
    }

    #[test]
    fn parses_flannels_dual_stack_file() {
        let text = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_IPV6_NETWORK=fd00:10:244::/48\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n";
        let node = NodeSubnet::parse(text).unwrap();
        let v6 = node.ipv6.unwrap();
        assert_eq!(v6.network.to_string(), "fd00:10:244::/48");
        assert_eq!(v6.subnet.to_string(), "fd00:10:244:1::1/64");
        let half = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_IPV6_NETWORK=fd00:10:244::/48\n";
        assert_eq!(
            NodeSubnet::parse(half).unwrap_err(),
            "FLANNEL_IPV6_NETWORK without FLANNEL_IPV6_SUBNET"
        );
        let bad = format!("{half}FLANNEL_IPV6_SUBNET=fd00:10:244:1::/64\n");
        assert!(NodeSubnet::parse(&bad)
            .unwrap_err()
            .contains("usable gateway"));
        // IPv6-only, as flanneld writes it: no IPv4 pair.
        let v6_only = NodeSubnet::parse(
            "FLANNEL_IPV6_NETWORK=fd00:20::/48\nFLANNEL_IPV6_SUBNET=fd00:20:0:7::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n",
        )
        .unwrap();
        assert_eq!(v6_only.ipv4, None);
        assert_eq!(v6_only.mac_seed(), Ipv4Addr::new(0, 0, 0, 1));
        let junk = format!("{half}FLANNEL_IPV6_SUBNET=10.0.0.1/24\n");
        assert!(NodeSubnet::parse(&junk)
            .unwrap_err()
            .contains("FLANNEL_IPV6_SUBNET=\"10.0.0.1/24\""));
    }

    #[test]
    fn rejects_incomplete_or_bad_files() {
        assert!(NodeSubnet::parse("FLANNEL_NETWORK=10.244.0.0/16\n").is_err());
        assert!(NodeSubnet::parse("FLANNEL_SUBNET=10.244.1.1/24\n").is_err());
        assert!(
            NodeSubnet::parse("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.0/24\n")
                .is_err()
        );
        assert!(NodeSubnet::parse(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=x\n"
        )
        .is_err());
        assert!(NodeSubnet::parse("garbage").is_err());
    }

    #[test]
    fn every_problem_is_listed() {
        let err =
            NodeSubnet::parse("FLANNEL_NETWORK=10.244.0.0/99\njunk\nFLANNEL_MTU=0\n").unwrap_err();
        for part in [
            "FLANNEL_NETWORK=\"10.244.0.0/99\"",
            "line 2",
            "FLANNEL_MTU",
            "FLANNEL_SUBNET is missing",
        ] {
            assert!(err.contains(part), "{part} in {err}");
        }
        assert_eq!(err.matches("; ").count(), 3, "{err}");
    }

    #[test]
    fn oversized_fifo_and_directory_are_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("weft-subnet-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big.env");
        let mut text = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n".to_string();
        text.push_str(&"#".repeat(MAX_SUBNET_FILE as usize));
        std::fs::write(&big, text).unwrap();
        let fifo = dir.join("fifo.env");
        let _ = std::fs::remove_file(&fifo);
        nix::unistd::mkfifo(
            &fifo,
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )
        .unwrap();
        for path in [&big, &fifo, &dir] {
            let err = NodeSubnet::load(path).unwrap_err();
            assert_eq!(err.code(), 105, "{}: {err}", path.display());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_file_is_try_again_later() {
        let err = NodeSubnet::load(Path::new("/nonexistent/weft/subnet.env")).unwrap_err();
        assert_eq!(err.code(), 11);
    }
}
