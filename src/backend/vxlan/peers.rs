//! The VXLAN backend's desired state: per peer lease one route, one permanent neighbour and
//! one FDB entry (or, with DirectRouting, one route via the peer's PublicIP). Pure functions,
//! no I/O.

use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::backend::entries::{
    EntriesByPeer, EntriesByPeer6, KernelEntries, PeerEntries, PeerEntries6, SkippedPeer,
};
use crate::lease::Lease;
use crate::netlink::{FdbEntry, FdbEntry6, Ipv4Route, Ipv6Route, MacAddr};

/// Where VXLAN peers are programmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanTopology {
    /// Index of the `flannel.<VNI>` device.
    pub dev_index: u32,
    /// Index of the external (underlay) interface.
    pub ext_index: u32,
    /// With DirectRouting: the external interface's network; peers whose PublicIP lies in it
    /// get a plain route via their PublicIP instead of the overlay.
    pub direct_routing: Option<Ipv4Network>,
}

/// Reads the VTEP MAC from a VXLAN lease's `BackendData` (`{"VNI":1,"VtepMAC":"..."}`; key
/// matched case-insensitively, as Flannel's JSON decoding does).
pub fn vxlan_vtep_mac(data: Option<&serde_json::Value>) -> Result<MacAddr, String> {
    if !data.is_some_and(|d| d.is_object()) {
        return Err("BackendData is missing or not an object".to_string());
    }
    let value = crate::lease::backend_data_field(data, "VtepMAC")
        .ok_or_else(|| "BackendData has no VtepMAC".to_string())?;
    let text = value
        .as_str()
        .ok_or_else(|| format!("BackendData.VtepMAC {value} is not a string"))?;
    let mac: MacAddr = text
        .parse()
        .map_err(|e| format!("BackendData.VtepMAC: {e}"))?;
    if !mac.is_unicast() {
        return Err(format!(
            "BackendData.VtepMAC {mac} is not a unicast address"
        ));
    }
    Ok(mac)
}

/// The entries the VXLAN backend wants for `peers`: per peer one route `X via X.0 dev
/// flannel.<VNI> onlink`, one neighbour `X.0 -> VtepMAC`, one FDB entry `VtepMAC -> PublicIP`;
/// with DirectRouting, peers on the same L2 network get only `X via PublicIP dev <ext>`.
/// Our own subnet, leases of other backends and leases with unusable BackendData are skipped.
pub fn vxlan_desired(
    own: Ipv4Network,
    peers: &[Lease],
    topo: &VxlanTopology,
) -> (KernelEntries, Vec<SkippedPeer>) {
    let (by_peer, skipped) = vxlan_desired_by_peer(own, peers, topo);
    (KernelEntries::merged(&by_peer), skipped)
}

/// [`vxlan_desired`], by peer subnet.
pub fn vxlan_desired_by_peer(
    own: Ipv4Network,
    peers: &[Lease],
    topo: &VxlanTopology,
) -> (EntriesByPeer, Vec<SkippedPeer>) {
    let mut entries = EntriesByPeer::with_capacity(peers.len());
    let mut skipped = Vec::new();
    for lease in peers {
        match vxlan_peer(own, lease, topo) {
            Ok(Some(e)) => {
                entries.insert(lease.subnet, e);
            }
            Ok(None) => {}
            Err(s) => skipped.push(s),
        }
    }
    (entries, skipped)
}

/// The entries of one peer lease (see [`vxlan_desired`]); `Ok(None)` for our own subnet.
pub fn vxlan_peer(
    own: Ipv4Network,
    lease: &Lease,
    topo: &VxlanTopology,
) -> Result<Option<PeerEntries>, SkippedPeer> {
    // An IPv6-only lease (IPv4 part 0.0.0.0/0) has no IPv4 entries.
    if lease.subnet == own || !lease.has_ipv4() {
        return Ok(None);
    }
    if lease.attrs.backend_type != "vxlan" {
        return Err(SkippedPeer {
            subnet: lease.subnet,
            reason: format!("backend type {:?} is not vxlan", lease.attrs.backend_type),
        });
    }
    let public_ip = lease.attrs.public_ip;
    if let Some(l2) = topo.direct_routing {
        if l2.contains(public_ip) {
            return Ok(Some(PeerEntries {
                route: Some(Ipv4Route {
                    dst: lease.subnet,
                    gateway: Some(public_ip),
                    oif: topo.ext_index,
                    onlink: false,
                    nexthop: None,
                }),
                ..Default::default()
            }));
        }
    }
    let mac = vxlan_vtep_mac(lease.attrs.backend_data.as_ref()).map_err(|reason| SkippedPeer {
        subnet: lease.subnet,
        reason,
    })?;
    let gateway = lease.subnet.network();
    Ok(Some(PeerEntries {
        route: Some(Ipv4Route {
            dst: lease.subnet,
            gateway: Some(gateway),
            oif: topo.dev_index,
            onlink: true,
            nexthop: None,
        }),
        nexthop: None,
        neighbour: Some((gateway, mac)),
        fdb: Some(FdbEntry {
            mac,
            dst: public_ip,
        }),
    }))
}

/// Where IPv6 VXLAN peers are programmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanTopology6 {
    /// Index of the `flannel-v6.<VNI>` device.
    pub dev_index: u32,
    /// Index of the external (underlay) interface.
    pub ext_index: u32,
    /// With DirectRouting: the external interface's IPv6 network; peers whose PublicIPv6 lies
    /// in it get a plain route via their PublicIPv6 instead of the overlay.
    pub direct_routing: Option<Ipv6Network>,
}

/// The IPv6 entries the VXLAN backend wants for `peers`, by IPv6 subnet, as Flannel programs
/// them on `flannel-v6.<VNI>` (see [`vxlan_peer6`]), and the leases it skips.
pub fn vxlan_desired6(
    own6: Option<Ipv6Network>,
    peers: &[Lease],
    topo: &VxlanTopology6,
) -> (EntriesByPeer6, Vec<SkippedPeer>) {
    let mut by_peer = EntriesByPeer6::new();
    let mut skipped = Vec::new();
    for lease in peers {
        match vxlan_peer6(own6, lease, topo) {
            Ok(Some((subnet, e))) => {
                by_peer.insert(subnet, e);
            }
            Ok(None) => {}
            Err(s) => skipped.push(s),
        }
    }
    (by_peer, skipped)
}

/// The IPv6 entries the VXLAN backend wants for one peer lease: for an IPv6 subnet `X` one
/// route `X via X:: dev flannel-v6.<VNI> onlink`, one neighbour `X:: -> BackendV6Data.VtepMAC`,
/// one FDB entry `VtepMAC -> PublicIPv6` (DirectRouting on one L2 segment: only `X via
/// PublicIPv6 dev <ext>`). `None` for `own6`, another backend's lease or one without an IPv6
/// part; an error names a lease that cannot be a VXLAN peer over IPv6.
pub fn vxlan_peer6(
    own6: Option<Ipv6Network>,
    lease: &Lease,
    topo: &VxlanTopology6,
) -> Result<Option<(Ipv6Network, PeerEntries6)>, SkippedPeer> {
    let Some(v6) = lease.ipv6_subnet else {
        return Ok(None);
    };
    if Some(v6) == own6 || lease.attrs.backend_type != "vxlan" {
        return Ok(None);
    }
    let Some(public_ipv6) = lease.attrs.public_ipv6 else {
        return Err(SkippedPeer {
            subnet: lease.subnet,
            reason: format!("IPv6 subnet {v6} without PublicIPv6"),
        });
    };
    if let Some(l2) = topo.direct_routing {
        if l2.contains(public_ipv6) {
            let route = Ipv6Route {
                dst: v6,
                gateway: Some(public_ipv6),
                oif: topo.ext_index,
                onlink: false,
            };
            return Ok(Some((
                v6,
                PeerEntries6 {
                    route: Some(route),
                    ..Default::default()
                },
            )));
        }
    }
    let mac =
        vxlan_vtep_mac(lease.attrs.backend_v6_data.as_ref()).map_err(|reason| SkippedPeer {
            subnet: lease.subnet,
            reason: format!("IPv6 side (BackendV6Data): {reason}"),
        })?;
    let gateway = v6.network();
    Ok(Some((
        v6,
        PeerEntries6 {
            route: Some(Ipv6Route {
                dst: v6,
                gateway: Some(gateway),
                oif: topo.dev_index,
                onlink: true,
            }),
            neighbour: Some((gateway, mac)),
            fdb: Some(FdbEntry6 {
                mac,
                dst: public_ipv6,
            }),
        },
    )))
}

/// The untagged routes among `all` (routes without weft's protocol) that a previous weft
/// version wrote for VXLAN and a start must adopt: every route on the overlay device
/// (`dev_index`), and the gateway routes via the external interface (`ext_index`) to a subnet
/// strictly inside the cluster `network` (DirectRouting's routes). Only the one-time
/// migration uses this rule; afterwards weft's routes are recognised by their protocol.
pub fn untagged_routes(
    all: &[Ipv4Route],
    dev_index: u32,
    ext_index: u32,
    network: Ipv4Network,
) -> Vec<Ipv4Route> {
    all.iter()
        .filter(|r| {
            r.oif == dev_index
                || (r.oif == ext_index
                    && r.gateway.is_some()
                    && r.dst.prefix() > network.prefix()
                    && network.contains(r.dst.network()))
        })
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::entries::{diff, merge6, ActualEntries, EntryDiff};
    use crate::lease::LeaseAttrs;
    use crate::netlink::Neighbour;
    use std::net::Ipv4Addr;

    const DEV: u32 = 10;
    const EXT: u32 = 2;

    fn topo() -> VxlanTopology {
        VxlanTopology {
            dev_index: DEV,
            ext_index: EXT,
            direct_routing: None,
        }
    }

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    fn vxlan_lease(subnet: &str, public_ip: &str, vtep: &str) -> Lease {
        Lease {
            ipv6_subnet: None,
            subnet: net(subnet),
            attrs: LeaseAttrs {
                public_ipv6: None,
                backend_v6_data: None,
                public_ip: public_ip.parse().unwrap(),
                backend_type: "vxlan".to_string(),
                backend_data: Some(serde_json::json!({"VNI": 1, "VtepMAC": vtep})),
            },
            etcd_lease: Some(1),
            mod_revision: 1,
        }
    }

    /// The kernel state after programming `desired` exactly.
    fn programmed(desired: &KernelEntries) -> ActualEntries {
        ActualEntries::programmed(desired)
    }

    /// What changes in the kernel when the peer leases go from `old` to `new` (default topology).
    fn change(own: Ipv4Network, old: &[Lease], new: &[Lease]) -> EntryDiff {
        let (before, _) = vxlan_desired(own, old, &topo());
        let (after, _) = vxlan_desired(own, new, &topo());
        diff(&after, &programmed(&before))
    }

    #[test]
    fn one_peer_gives_route_neighbour_and_fdb() {
        let own = net("10.244.1.0/24");
        let peers = [vxlan_lease(
            "10.244.3.0/24",
            "192.0.2.3",
            "0a:00:00:00:00:03",
        )];
        let (want, skipped) = vxlan_desired(own, &peers, &topo());
        assert!(skipped.is_empty());
        assert_eq!(
            want.routes.into_iter().collect::<Vec<_>>(),
            vec![Ipv4Route {
                dst: net("10.244.3.0/24"),
                gateway: Some("10.244.3.0".parse().unwrap()),
                oif: DEV,
                onlink: true,
                nexthop: None,
            }]
        );
        assert_eq!(
            want.neighbours.into_iter().collect::<Vec<_>>(),
            vec![("10.244.3.0".parse().unwrap(), mac("0a:00:00:00:00:03"))]
        );
        assert_eq!(
            want.fdb.into_iter().collect::<Vec<_>>(),
            vec![FdbEntry {
                mac: mac("0a:00:00:00:00:03"),
                dst: "192.0.2.3".parse().unwrap()
            }]
        );
    }

    #[test]
    fn own_subnet_is_ignored() {
        let own = net("10.244.1.0/24");
        let peers = [vxlan_lease(
            "10.244.1.0/24",
            "192.0.2.1",
            "0a:00:00:00:00:01",
        )];
        let (want, skipped) = vxlan_desired(own, &peers, &topo());
        assert!(want.is_empty());
        assert!(skipped.is_empty());
    }

    #[test]
    fn other_backend_and_bad_data_are_skipped_with_reason() {
        let own = net("10.244.1.0/24");
        let mut udp = vxlan_lease("10.244.4.0/24", "192.0.2.4", "0a:00:00:00:00:04");
        udp.attrs.backend_type = "udp".to_string();
        udp.attrs.backend_data = None;
        let bad_mac = vxlan_lease("10.244.5.0/24", "192.0.2.5", "not-a-mac");
        let multicast = vxlan_lease("10.244.6.0/24", "192.0.2.6", "01:00:5e:00:00:01");
        let mut no_data = vxlan_lease("10.244.7.0/24", "192.0.2.7", "");
        no_data.attrs.backend_data = None;
        let good = vxlan_lease("10.244.8.0/24", "192.0.2.8", "0a:00:00:00:00:08");
        let (want, skipped) =
            vxlan_desired(own, &[udp, bad_mac, multicast, no_data, good], &topo());
        assert_eq!(want.len(), 3);
        let subnets: Vec<String> = skipped.iter().map(|s| s.subnet.to_string()).collect();
        assert_eq!(
            subnets,
            [
                "10.244.4.0/24",
                "10.244.5.0/24",
                "10.244.6.0/24",
                "10.244.7.0/24"
            ]
        );
        assert!(skipped[0].reason.contains("udp"), "{}", skipped[0].reason);
        assert!(
            skipped[1].reason.contains("not-a-mac"),
            "{}",
            skipped[1].reason
        );
        assert!(
            skipped[2].reason.contains("unicast"),
            "{}",
            skipped[2].reason
        );
        assert!(
            skipped[3].reason.contains("missing"),
            "{}",
            skipped[3].reason
        );
    }

    #[test]
    fn vtep_mac_key_is_case_insensitive() {
        let data = serde_json::json!({"vni": 1, "vtepmac": "0a:00:00:00:00:09"});
        assert_eq!(vxlan_vtep_mac(Some(&data)), Ok(mac("0a:00:00:00:00:09")));
    }

    #[test]
    fn direct_routing_uses_public_ip_on_same_l2_only() {
        let own = net("10.244.1.0/24");
        let peers = [
            vxlan_lease("10.244.2.0/24", "192.0.2.2", "0a:00:00:00:00:02"),
            vxlan_lease("10.244.3.0/24", "198.51.100.3", "0a:00:00:00:00:03"),
        ];
        let topo = VxlanTopology {
            direct_routing: Some(net("192.0.2.1/24")),
            ..topo()
        };
        let (want, _) = vxlan_desired(own, &peers, &topo);
        assert!(want.routes.contains(&Ipv4Route {
            dst: net("10.244.2.0/24"),
            gateway: Some("192.0.2.2".parse().unwrap()),
            oif: EXT,
            onlink: false,
            nexthop: None,
        }));
        assert!(want.routes.contains(&Ipv4Route {
            dst: net("10.244.3.0/24"),
            gateway: Some("10.244.3.0".parse().unwrap()),
            oif: DEV,
            onlink: true,
            nexthop: None,
        }));
        assert_eq!(want.neighbours.len(), 1);
        assert_eq!(want.fdb.len(), 1);
    }

    #[test]
    fn empty_kernel_gets_everything_added() {
        let own = net("10.244.1.0/24");
        let peers = [
            vxlan_lease("10.244.2.0/24", "192.0.2.2", "0a:00:00:00:00:02"),
            vxlan_lease("10.244.3.0/24", "192.0.2.3", "0a:00:00:00:00:03"),
        ];
        let (want, _) = vxlan_desired(own, &peers, &topo());
        let d = diff(&want, &ActualEntries::default());
        assert_eq!(
            (d.add_routes.len(), d.add_neighbours.len(), d.add_fdb.len()),
            (2, 2, 2)
        );
        assert_eq!(d.present, 0);
        assert!(d.del_routes.is_empty() && d.del_neighbours.is_empty() && d.del_fdb.is_empty());
    }

    #[test]
    fn programmed_kernel_needs_nothing() {
        let own = net("10.244.1.0/24");
        let peers = [vxlan_lease(
            "10.244.2.0/24",
            "192.0.2.2",
            "0a:00:00:00:00:02",
        )];
        let (want, _) = vxlan_desired(own, &peers, &topo());
        let d = diff(&want, &programmed(&want));
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(d.present, 3);
    }

    #[test]
    fn removed_peer_loses_all_three_entries() {
        let own = net("10.244.1.0/24");
        let both = [
            vxlan_lease("10.244.2.0/24", "192.0.2.2", "0a:00:00:00:00:02"),
            vxlan_lease("10.244.3.0/24", "192.0.2.3", "0a:00:00:00:00:03"),
        ];
        let d = change(own, &both, &both[..1]);
        assert_eq!(d.del_routes.len(), 1);
        assert_eq!(d.del_routes[0].dst, net("10.244.3.0/24"));
        assert_eq!(
            d.del_neighbours,
            vec!["10.244.3.0".parse::<Ipv4Addr>().unwrap()]
        );
        assert_eq!(
            d.del_fdb,
            vec![FdbEntry {
                mac: mac("0a:00:00:00:00:03"),
                dst: "192.0.2.3".parse().unwrap()
            }]
        );
        assert!(d.add_routes.is_empty() && d.add_neighbours.is_empty() && d.add_fdb.is_empty());
    }

    #[test]
    fn changed_mac_replaces_neighbour_and_drops_old_fdb() {
        let own = net("10.244.1.0/24");
        let old = [vxlan_lease(
            "10.244.2.0/24",
            "192.0.2.2",
            "0a:00:00:00:00:02",
        )];
        let new = [vxlan_lease(
            "10.244.2.0/24",
            "192.0.2.2",
            "0a:00:00:00:00:22",
        )];
        let d = change(own, &old, &new);
        assert!(d.del_routes.is_empty() && d.add_routes.is_empty());
        assert!(d.del_neighbours.is_empty());
        assert_eq!(
            d.add_neighbours,
            vec![("10.244.2.0".parse().unwrap(), mac("0a:00:00:00:00:22"))]
        );
        assert_eq!(d.del_fdb.len(), 1);
        assert_eq!(d.del_fdb[0].mac, mac("0a:00:00:00:00:02"));
        assert_eq!(d.add_fdb.len(), 1);
        assert_eq!(d.add_fdb[0].mac, mac("0a:00:00:00:00:22"));
    }

    #[test]
    fn changed_public_ip_moves_fdb_entry() {
        let own = net("10.244.1.0/24");
        let old = [vxlan_lease(
            "10.244.2.0/24",
            "192.0.2.2",
            "0a:00:00:00:00:02",
        )];
        let new = [vxlan_lease(
            "10.244.2.0/24",
            "192.0.2.20",
            "0a:00:00:00:00:02",
        )];
        let d = change(own, &old, &new);
        assert_eq!(d.del_fdb[0].dst, "192.0.2.2".parse::<Ipv4Addr>().unwrap());
        assert_eq!(d.add_fdb[0].dst, "192.0.2.20".parse::<Ipv4Addr>().unwrap());
        assert!(d.add_routes.is_empty() && d.add_neighbours.is_empty());
        assert_eq!(d.present, 2);
    }

    #[test]
    fn unresolved_or_dynamic_neighbour_is_made_permanent() {
        let want = KernelEntries {
            neighbours: [("10.244.2.0".parse().unwrap(), mac("0a:00:00:00:00:02"))].into(),
            ..Default::default()
        };
        let actual = ActualEntries {
            neighbours: vec![
                Neighbour {
                    ip: "10.244.2.0".parse().unwrap(),
                    mac: Some(mac("0a:00:00:00:00:02")),
                    permanent: false,
                },
                Neighbour {
                    ip: "10.244.9.0".parse().unwrap(),
                    mac: None,
                    permanent: false,
                },
            ],
            ..Default::default()
        };
        let d = diff(&want, &actual);
        assert_eq!(d.add_neighbours.len(), 1);
        assert_eq!(
            d.del_neighbours,
            vec!["10.244.9.0".parse::<Ipv4Addr>().unwrap()]
        );
    }

    #[test]
    fn switching_to_direct_routing_replaces_overlay_route() {
        let own = net("10.244.1.0/24");
        let peers = [vxlan_lease(
            "10.244.2.0/24",
            "192.0.2.2",
            "0a:00:00:00:00:02",
        )];
        let (before, _) = vxlan_desired(own, &peers, &topo());
        let direct = VxlanTopology {
            direct_routing: Some(net("192.0.2.1/24")),
            ..topo()
        };
        let (after, _) = vxlan_desired(own, &peers, &direct);
        let d = diff(&after, &programmed(&before));
        assert_eq!(d.del_routes.len(), 1);
        assert_eq!(d.del_routes[0].oif, DEV);
        assert_eq!(d.add_routes.len(), 1);
        assert_eq!(d.add_routes[0].oif, EXT);
        assert_eq!(d.del_neighbours.len(), 1);
        assert_eq!(d.del_fdb.len(), 1);
    }

    #[test]
    fn untagged_routes_to_adopt_are_overlay_and_direct_cluster_routes() {
        let cluster = net("10.244.0.0/16");
        let r = |dst: &str, oif: u32| Ipv4Route {
            dst: net(dst),
            gateway: Some("192.0.2.254".parse().unwrap()),
            oif,
            onlink: false,
            nexthop: None,
        };
        let device_route = |dst: &str, oif: u32| Ipv4Route {
            gateway: None,
            ..r(dst, oif)
        };
        let all = [
            r("10.244.2.0/24", DEV),
            r("10.244.3.0/24", EXT),
            device_route("10.244.0.0/16", DEV),
            r("0.0.0.0/0", EXT),
            r("10.244.0.0/16", EXT),
            r("10.99.0.0/24", EXT),
            r("10.244.4.0/24", 7),
            device_route("10.244.5.0/24", EXT),
        ];
        let untagged = untagged_routes(&all, DEV, EXT, cluster);
        assert_eq!(untagged, vec![all[0], all[1], all[2]]);
    }

    #[test]
    fn ipv6_peers_get_flannels_v6_entries() {
        let mut dual = vxlan_lease("10.244.2.0/24", "192.0.2.2", "0a:00:00:00:00:02");
        dual.ipv6_subnet = Some("fd00:10:244:2::/64".parse().unwrap());
        dual.attrs.public_ipv6 = Some("2001:db8::2".parse().unwrap());
        dual.attrs.backend_v6_data =
            Some(serde_json::json!({"VNI": 1, "VtepMAC": "0a:00:00:00:06:02"}));
        let v4_only = vxlan_lease("10.244.3.0/24", "192.0.2.3", "0a:00:00:00:00:03");
        let mut no_mac = dual.clone();
        no_mac.subnet = net("10.244.4.0/24");
        no_mac.ipv6_subnet = Some("fd00:10:244:4::/64".parse().unwrap());
        no_mac.attrs.backend_v6_data = None;
        let topo6 = VxlanTopology6 {
            dev_index: 11,
            ext_index: EXT,
            direct_routing: None,
        };
        let own6 = Some("fd00:10:244:1::/64".parse().unwrap());
        let (by_peer, skipped) = vxlan_desired6(own6, &[dual.clone(), v4_only, no_mac], &topo6);
        assert_eq!(
            by_peer.keys().copied().collect::<Vec<_>>(),
            vec!["fd00:10:244:2::/64".parse::<Ipv6Network>().unwrap()]
        );
        let mut entries = KernelEntries::default();
        merge6(&mut entries, &by_peer);
        let mac: MacAddr = "0a:00:00:00:06:02".parse().unwrap();
        assert_eq!(
            entries.routes6.iter().copied().collect::<Vec<_>>(),
            vec![Ipv6Route {
                dst: "fd00:10:244:2::/64".parse().unwrap(),
                gateway: Some("fd00:10:244:2::".parse().unwrap()),
                oif: 11,
                onlink: true,
            }]
        );
        assert_eq!(
            entries.neighbours6.get(&"fd00:10:244:2::".parse().unwrap()),
            Some(&mac)
        );
        assert_eq!(
            entries.fdb6.iter().copied().collect::<Vec<_>>(),
            vec![FdbEntry6 {
                mac,
                dst: "2001:db8::2".parse().unwrap()
            }]
        );
        assert_eq!(skipped.len(), 1);
        assert!(
            skipped[0].reason.starts_with("IPv6 side (BackendV6Data): "),
            "{skipped:?}"
        );
        // DirectRouting on one IPv6 segment: a plain route via PublicIPv6.
        let mut entries = KernelEntries::default();
        let direct = VxlanTopology6 {
            direct_routing: Some("2001:db8::/64".parse().unwrap()),
            ..topo6
        };
        merge6(&mut entries, &vxlan_desired6(own6, &[dual], &direct).0);
        assert_eq!(entries.len(), 1);
        let r = entries.routes6.first().unwrap();
        assert_eq!(
            (r.gateway, r.oif),
            (Some("2001:db8::2".parse().unwrap()), EXT)
        );
        // An IPv6-only lease (0.0.0.0-0) yields no IPv4 entries.
        let mut v6_only = vxlan_lease("0.0.0.0/0", "0.0.0.0", "0a:00:00:00:00:05");
        v6_only.ipv6_subnet = Some("fd00:10:244:5::/64".parse().unwrap());
        let (entries, skipped) = vxlan_desired(net("0.0.0.0/0"), &[v6_only], &topo());
        assert!(entries.is_empty() && skipped.is_empty());
    }
}
