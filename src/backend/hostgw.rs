//! The host-gw backend: no encapsulation; every peer subnet is routed to the peer's public
//! IP on the external interface (`X/len via PublicIP dev eth0`). Works only when all nodes
//! share one L2 segment; a peer outside it is reported by name and skipped.
//!
//! The routes carry weft's route protocol number ([`WEFT_ROUTE_PROTOCOL`]), so a reconcile
//! removes stale weft routes from the shared interface and never touches anyone else's.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::backend::entries::{
    self, EntriesByPeer, EntriesByPeer6, KernelEntries, PeerEntries, PeerEntries6,
};
use crate::backend::pipeline::{self, Device, Devices, EntryPipeline};
#[cfg(doc)]
use crate::backend::routes::WEFT_ROUTE_PROTOCOL;
use crate::backend::{PeerChange, ReconcileReport};
use crate::lease::{Lease, LeaseAttrs};
use crate::netlink::{self, ExternalInterface, Ipv4Route, Ipv6Route, NetlinkError};

/// The lease `BackendType` of this backend.
pub const BACKEND_TYPE: &str = "host-gw";

/// A failure of the host-gw backend.
#[derive(Debug, thiserror::Error)]
pub enum HostGwError {
    /// A peer's public IP is not on the external interface's subnet, so no direct route
    /// can reach it.
    #[error(
        "host-gw peer {subnet} at {public_ip} is not on the L2 segment {network} of {iface}; \
         host-gw needs every node on one segment (use vxlan or udp)"
    )]
    NotOnLink {
        /// The peer's subnet.
        subnet: Ipv4Network,
        /// The peer's public IP.
        public_ip: Ipv4Addr,
        /// The external interface.
        iface: String,
        /// The interface's network.
        network: Ipv4Network,
    },
    /// A peer's PublicIPv6 is not on the external interface's IPv6 prefix.
    #[error(
        "host-gw peer {subnet} at {public_ipv6} is not on the IPv6 segment {network} of {iface}; \
         host-gw needs every node on one segment (use vxlan)"
    )]
    NotOnLink6 {
        /// The peer's IPv6 subnet.
        subnet: Ipv6Network,
        /// The peer's PublicIPv6 (`-` when missing).
        public_ipv6: String,
        /// The external interface.
        iface: String,
        /// The interface's IPv6 network (`-` when it has none).
        network: String,
    },
    /// A netlink request failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

/// The host-gw backend of one node.
#[derive(Debug)]
pub struct HostGwBackend {
    ext: ExternalInterface,
    pipeline: EntryPipeline,
}

/// The routes the peers justify, and an error for each peer that cannot be routed directly.
/// Leases of other backend types and the own subnet are ignored (as Flannel does).
pub fn desired_routes(
    ext: &ExternalInterface,
    own: Ipv4Network,
    peers: &[Lease],
) -> (BTreeSet<Ipv4Route>, Vec<HostGwError>) {
    let mut routes = BTreeSet::new();
    let mut errors = Vec::new();
    for peer in peers {
        match peer_route(ext, own, peer) {
            Ok(route) => routes.extend(route),
            Err(e) => errors.push(e),
        }
    }
    (routes, errors)
}

/// The IPv6 routes the peers justify (`X6 via PublicIPv6 dev <ext>`, as Flannel's host-gw
/// programs them), by IPv6 subnet, and an error for each peer whose PublicIPv6 is not on the
/// segment.
pub fn desired_routes6(
    ext: &ExternalInterface,
    peers: &[Lease],
) -> (EntriesByPeer6, Vec<HostGwError>) {
    let mut routes = EntriesByPeer6::new();
    let mut errors = Vec::new();
    for peer in peers {
        match peer_route6(ext, peer) {
            Ok(Some(route)) => {
                routes.insert(route.dst, route_entries6(route));
            }
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    (routes, errors)
}

/// The IPv6 route of one peer (see [`desired_routes6`]); `Ok(None)` when it has none.
pub fn peer_route6(
    ext: &ExternalInterface,
    peer: &Lease,
) -> Result<Option<Ipv6Route>, HostGwError> {
    let Some(segment) = ext.network_v6 else {
        return Ok(None);
    };
    let Some(v6) = peer.ipv6_subnet else {
        return Ok(None);
    };
    if peer.attrs.backend_type != BACKEND_TYPE {
        return Ok(None);
    }
    match peer.attrs.public_ipv6 {
        Some(ip) if segment.contains(ip) && Some(ip) != ext.public_ipv6 => Ok(Some(Ipv6Route {
            dst: v6,
            gateway: Some(ip),
            oif: ext.index,
            onlink: false,
        })),
        other => Err(HostGwError::NotOnLink6 {
            subnet: v6,
            public_ipv6: other.map_or_else(|| "-".to_string(), |ip| ip.to_string()),
            iface: ext.name.clone(),
            network: segment.to_string(),
        }),
    }
}

/// The route of a peer, or none when it cannot be routed (logged and counted in `unroutable`).
fn routed<R>(route: Result<Option<R>, HostGwError>, unroutable: &mut usize) -> Option<R> {
    route.unwrap_or_else(|err| {
        tracing::error!(error = %err, "cannot route peer");
        *unroutable += 1;
        None
    })
}

/// The entries of one IPv6 route.
fn route_entries6(route: Ipv6Route) -> PeerEntries6 {
    PeerEntries6 {
        route: Some(route),
        ..Default::default()
    }
}

/// The route of one peer (see [`desired_routes`]); `Ok(None)` when it is ignored.
pub fn peer_route(
    ext: &ExternalInterface,
    own: Ipv4Network,
    peer: &Lease,
) -> Result<Option<Ipv4Route>, HostGwError> {
    if peer.subnet == own || peer.attrs.backend_type != BACKEND_TYPE || !peer.has_ipv4() {
        return Ok(None);
    }
    let ip = peer.attrs.public_ip;
    if !ext.network.contains(ip) || ip == ext.iface_addr || ip == ext.network.network() {
        return Err(HostGwError::NotOnLink {
            subnet: peer.subnet,
            public_ip: ip,
            iface: ext.name.clone(),
            network: ext.network,
        });
    }
    Ok(Some(Ipv4Route {
        dst: peer.subnet,
        gateway: Some(ip),
        oif: ext.index,
        onlink: false,
        nexthop: None,
    }))
}

/// The entries of one route.
fn route_entries(route: Ipv4Route) -> PeerEntries {
    PeerEntries {
        route: Some(route),
        ..Default::default()
    }
}

impl HostGwBackend {
    /// The backend for the external interface `ext`.
    pub fn new(ext: &ExternalInterface) -> Self {
        HostGwBackend {
            ext: ext.clone(),
            pipeline: EntryPipeline::default(),
        }
    }

    /// Routes each IPv4 peer through a nexthop object of its own (`--route-nexthops`).
    pub fn with_route_nexthops(mut self, on: bool) -> Self {
        self.pipeline = EntryPipeline::new(on);
        self
    }

    /// The lease value this node publishes: `{"PublicIP":..,"BackendType":"host-gw"}`.
    pub fn lease_attrs(&self) -> LeaseAttrs {
        // With IPv6 the external interface has a PublicIPv6, published beside PublicIP.
        LeaseAttrs {
            public_ipv6: self.ext.public_ipv6,
            ..LeaseAttrs::without_backend_data(self.ext.public_ip, BACKEND_TYPE)
        }
    }

    /// The pod MTU: the external interface's, as nothing is added.
    pub fn mtu(&self) -> u32 {
        self.ext.mtu
    }

    /// The device the routes go out of.
    pub fn device_name(&self) -> &str {
        &self.ext.name
    }

    fn devices(&self) -> Devices {
        Devices {
            overlay6: None,
            overlay: None,
            routes: Device {
                index: self.ext.index,
                name: self.ext.name.clone(),
            },
        }
    }

    /// The desired routes; each peer that cannot be routed is logged as an error naming it.
    fn desired(&self, own: Ipv4Network, peers: &[Lease]) -> (EntriesByPeer, usize) {
        let mut entries = EntriesByPeer::with_capacity(peers.len());
        let mut unroutable = 0;
        for peer in peers {
            if let Some(route) = routed(peer_route(&self.ext, own, peer), &mut unroutable) {
                entries.insert(peer.subnet, route_entries(route));
            }
        }
        (entries, unroutable)
    }

    /// The IPv6 routes of the peers (see [`desired_routes6`]); each peer that cannot be routed
    /// is logged as an error naming it.
    fn desired6(&self, peers: &[Lease]) -> (EntriesByPeer6, usize) {
        let (routes6, unroutable) = desired_routes6(&self.ext, peers);
        for err in &unroutable {
            tracing::error!(error = %err, "cannot route peer");
        }
        (routes6, unroutable.len())
    }

    /// Programs one route per peer on the external interface and removes weft routes there
    /// that no lease justifies. A peer not on the interface's segment is logged as an error
    /// naming it and counted in `failed`; every other peer is still programmed.
    pub async fn reconcile(
        &mut self,
        own: Ipv4Network,
        peers: &[Lease],
    ) -> Result<ReconcileReport, HostGwError> {
        let (mut desired, unroutable) = self.desired(own, peers);
        let (routes6, unroutable6) = self.desired6(peers);
        let handle = netlink::connect()?;
        let devices = self.devices();
        let ext = self.ext.index;
        let nexthops = self.pipeline.routes_through_nexthops();
        let view = pipeline::read_kernel(&handle, &devices, nexthops, |r| {
            r.oif == ext && r.gateway.is_some()
        })
        .await?;
        self.pipeline.shape(&mut desired, &view);
        let mut all = KernelEntries::merged(&desired);
        entries::merge6(&mut all, &routes6);
        let d = entries::diff(&all, &view.actual);
        let mut report = self.pipeline.full(&devices, desired, routes6, d).await?;
        report.failed += unroutable + unroutable6;
        report.unroutable += unroutable + unroutable6;
        Ok(report)
    }

    /// Applies the routes of the peers that changed since the last pass; `None` when a full
    /// reconcile is due.
    pub async fn apply_changes(
        &mut self,
        own: Ipv4Network,
        changes: &[PeerChange],
    ) -> Result<Option<ReconcileReport>, HostGwError> {
        let mut unroutable = 0;
        let mut entries = Vec::with_capacity(changes.len());
        let mut entries6 = Vec::new();
        for change in changes {
            let lease = change.lease.as_ref();
            let route = lease.and_then(|l| routed(peer_route(&self.ext, own, l), &mut unroutable));
            entries.push((change.subnet, route.map(route_entries)));
            if let Some(subnet6) = change.subnet6 {
                let route6 = lease.and_then(|l| routed(peer_route6(&self.ext, l), &mut unroutable));
                entries6.push((subnet6, route6.map(route_entries6)));
            }
        }
        let devices = self.devices();
        let report = self
            .pipeline
            .incremental(&devices, &entries, &entries6)
            .await?;
        Ok(report.map(|mut r| {
            r.failed += unroutable;
            r.unroutable += unroutable;
            r
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext() -> ExternalInterface {
        ExternalInterface {
            name: "eth0".into(),
            index: 2,
            iface_addr: "192.0.2.1".parse().unwrap(),
            public_ip: "192.0.2.1".parse().unwrap(),
            mtu: 1500,
            network: "192.0.2.1/24".parse().unwrap(),
            public_ipv6: None,
            network_v6: None,
        }
    }

    fn lease(subnet: &str, ip: &str, kind: &str) -> Lease {
        Lease {
            ipv6_subnet: None,
            subnet: subnet.parse().unwrap(),
            attrs: LeaseAttrs {
                public_ipv6: None,
                backend_v6_data: None,
                public_ip: ip.parse().unwrap(),
                backend_type: kind.into(),
                backend_data: None,
            },
            etcd_lease: Some(1),
            mod_revision: 1,
        }
    }

    #[test]
    fn routes_each_on_link_peer_via_its_public_ip() {
        let own: Ipv4Network = "10.244.1.0/24".parse().unwrap();
        let peers = [
            lease("10.244.1.0/24", "192.0.2.1", "host-gw"),
            lease("10.244.2.0/24", "192.0.2.2", "host-gw"),
            lease("10.244.3.0/24", "198.51.100.3", "host-gw"),
            lease("10.244.4.0/24", "192.0.2.4", "vxlan"),
            lease("10.244.5.0/24", "192.0.2.5", "host-gw"),
        ];
        let (routes, errors) = desired_routes(&ext(), own, &peers);
        let routes: Vec<_> = routes.into_iter().collect();
        assert_eq!(
            routes,
            vec![
                Ipv4Route {
                    dst: "10.244.2.0/24".parse().unwrap(),
                    gateway: Some("192.0.2.2".parse().unwrap()),
                    oif: 2,
                    onlink: false,
                    nexthop: None,
                },
                Ipv4Route {
                    dst: "10.244.5.0/24".parse().unwrap(),
                    gateway: Some("192.0.2.5".parse().unwrap()),
                    oif: 2,
                    onlink: false,
                    nexthop: None,
                },
            ]
        );
        assert_eq!(errors.len(), 1);
        let msg = errors[0].to_string();
        assert!(msg.contains("10.244.3.0/24"), "{msg}");
        assert!(msg.contains("198.51.100.3"), "{msg}");
        assert!(msg.contains("eth0"), "{msg}");
    }

    #[test]
    fn lease_is_flannels_host_gw_value() {
        let b = HostGwBackend::new(&ext());
        let json = serde_json::to_string(&b.lease_attrs()).unwrap();
        assert_eq!(
            json,
            r#"{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"host-gw"}"#
        );
        assert_eq!(b.mtu(), 1500);
    }

    #[test]
    fn ipv6_peers_on_the_segment_get_a_route_via_public_ipv6() {
        let mut e = ext();
        e.public_ipv6 = Some("2001:db8::1".parse().unwrap());
        e.network_v6 = Some("2001:db8::1/64".parse().unwrap());
        let mut near = lease("10.244.2.0/24", "192.0.2.2", "host-gw");
        near.ipv6_subnet = Some("fd00:10:244:2::/64".parse().unwrap());
        near.attrs.public_ipv6 = Some("2001:db8::2".parse().unwrap());
        let mut far = near.clone();
        far.ipv6_subnet = Some("fd00:10:244:3::/64".parse().unwrap());
        far.attrs.public_ipv6 = Some("2001:db8:1::3".parse().unwrap());
        let (routes, errors) = desired_routes6(&e, &[near, far]);
        assert_eq!(
            routes
                .into_values()
                .filter_map(|p| p.route)
                .collect::<Vec<_>>(),
            vec![Ipv6Route {
                dst: "fd00:10:244:2::/64".parse().unwrap(),
                gateway: Some("2001:db8::2".parse().unwrap()),
                oif: e.index,
                onlink: false,
            }]
        );
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].to_string().contains("2001:db8:1::3"),
            "{}",
            errors[0]
        );
    }
}
