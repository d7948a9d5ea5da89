//! Flannel's network configuration (`<prefix>/config`): parsing, defaulting and validation.

use ipnetwork::Ipv4Network;

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
