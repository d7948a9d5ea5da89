//! Subnet leases as Flannel stores them: key `<prefix>/subnets/10.244.1.0-24`, JSON value.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

/// The JSON value of a lease key, exactly Flannel's field names:
/// `{"PublicIP":"192.0.2.1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeaseAttrs {
    /// The node's identity and underlay address.
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    /// `vxlan`, `udp` or `host-gw`.
    #[serde(rename = "BackendType", default, skip_serializing_if = "String::is_empty")]
    pub backend_type: String,
    /// Backend-specific data (VXLAN: `VNI`, `VtepMAC`); absent for udp and host-gw.
    #[serde(rename = "BackendData", default, skip_serializing_if = "Option::is_none")]
    pub backend_data: Option<serde_json::Value>,
}

/// One subnet lease as read from etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The node subnet this key names.
    pub subnet: Ipv4Network,
    /// The lease's value.
    pub attrs: LeaseAttrs,
    /// The etcd lease attached to the key; `None` marks a reservation.
    pub etcd_lease: Option<i64>,
    /// The key's modification revision.
    pub mod_revision: i64,
}
