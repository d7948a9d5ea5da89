//! Reading the node lease that weftd (or flanneld) writes to subnet.env.

use std::io;
use std::net::Ipv4Addr;
use std::path::Path;

use crate::error::{Error, Result};
use crate::ip::Ipv4Net;

/// What the plugin needs from subnet.env.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSubnet {
    /// `FLANNEL_NETWORK`: the whole cluster pod network.
    pub network: Ipv4Net,
    /// `FLANNEL_SUBNET`: the node subnet, written as its first usable address (the gateway) / length.
    pub subnet: Ipv4Net,
    /// `FLANNEL_MTU`, if present.
    pub mtu: Option<u32>,
}

impl NodeSubnet {
    /// The bridge's address: FLANNEL_SUBNET's address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.addr()
    }

    /// Reads and parses subnet.env. A missing file is "try again later" (weftd not ready yet).
    pub fn load(path: &Path) -> Result<NodeSubnet> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                Error::TryAgainLater(format!(
                    "subnet file {} does not exist yet: weftd has not leased a subnet for this node",
                    path.display()
                ))
            } else {
                Error::Io {
                    op: "read subnet file",
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        NodeSubnet::parse(&text).map_err(|reason| Error::InvalidSubnetFile {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Parses subnet.env text (`KEY=VALUE` lines, Flannel's format).
    pub fn parse(text: &str) -> std::result::Result<NodeSubnet, String> {
        let mut network = None;
        let mut subnet = None;
        let mut mtu = None;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(format!("line {line:?} is not KEY=VALUE"));
            };
            let value = value.trim().trim_matches('"');
            match key.trim() {
                "FLANNEL_NETWORK" => {
                    network = Some(value.parse::<Ipv4Net>().map_err(|e| e.to_string())?)
                }
                "FLANNEL_SUBNET" => {
                    subnet = Some(value.parse::<Ipv4Net>().map_err(|e| e.to_string())?)
                }
                "FLANNEL_MTU" => {
                    mtu = Some(
                        value
                            .parse::<u32>()
                            .map_err(|_| format!("FLANNEL_MTU={value:?} is not a number"))?,
                    )
                }
                _ => {}
            }
        }
        let network = network.ok_or("FLANNEL_NETWORK is missing")?;
        let subnet = subnet.ok_or("FLANNEL_SUBNET is missing")?;
        if subnet.prefix() > 30 {
            return Err(format!("FLANNEL_SUBNET={subnet} leaves no room for pods"));
        }
        if subnet.addr() == subnet.network() || subnet.addr() == subnet.broadcast() {
            return Err(format!(
                "FLANNEL_SUBNET={subnet} must name a usable gateway address, not the network or broadcast address"
            ));
        }
        Ok(NodeSubnet {
            network,
            subnet,
            mtu,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flannel_format() {
        let text = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
        let node = NodeSubnet::parse(text).unwrap();
        assert_eq!(node.network.to_string(), "10.244.0.0/16");
        assert_eq!(node.subnet.to_string(), "10.244.1.1/24");
        assert_eq!(node.gateway(), Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(node.mtu, Some(1450));
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
    fn missing_file_is_try_again_later() {
        let err = NodeSubnet::load(Path::new("/nonexistent/weft/subnet.env")).unwrap_err();
        assert_eq!(err.code(), 11);
    }
}
