//! Kernel entries as typed values: what a backend wants (routes, neighbours, FDB entries),
//! what the kernel holds of weft's, and the difference between the two. Pure functions, no
//! I/O; [`super::pipeline`] reads the kernel and applies the difference.
//!
//! weft owns a route when it carries [`crate::netlink::WEFT_ROUTE_PROTOCOL`]; neighbour and FDB entries live
//! on weft's own overlay device, so all of them are weft's.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::Ipv4Network;

use crate::netlink::{FdbEntry, FdbEntry6, Ipv4Route, Ipv6Route, MacAddr, Neighbour, Neighbour6};

/// The kernel entries a backend wants for its peer leases (its desired state).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelEntries {
    /// Routes to peer subnets, all carrying [`crate::netlink::WEFT_ROUTE_PROTOCOL`].
    pub routes: BTreeSet<Ipv4Route>,
    /// Permanent neighbour entries on the overlay device, by IP.
    pub neighbours: BTreeMap<Ipv4Addr, MacAddr>,
    /// FDB entries on the overlay device.
    pub fdb: BTreeSet<FdbEntry>,
    /// IPv6 routes to peer subnets, also with weft's protocol.
    pub routes6: BTreeSet<Ipv6Route>,
    /// Permanent IPv6 neighbour entries on the IPv6 overlay device, by IP.
    pub neighbours6: BTreeMap<Ipv6Addr, MacAddr>,
    /// FDB entries with IPv6 remotes on the IPv6 overlay device.
    pub fdb6: BTreeSet<FdbEntry6>,
}

impl KernelEntries {
    /// How many kernel entries these are.
    pub fn len(&self) -> usize {
        self.routes.len()
            + self.neighbours.len()
            + self.fdb.len()
            + self.routes6.len()
            + self.neighbours6.len()
            + self.fdb6.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the kernel holds now, restricted to the entries weft owns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActualEntries {
    /// weft's routes (protocol [`crate::netlink::WEFT_ROUTE_PROTOCOL`]) on the backend's devices.
    pub routes: Vec<Ipv4Route>,
    /// All IPv4 neighbour entries of the overlay device.
    pub neighbours: Vec<Neighbour>,
    /// All FDB entries of the overlay device.
    pub fdb: Vec<FdbEntry>,
    /// weft's IPv6 routes on the backend's devices.
    pub routes6: Vec<Ipv6Route>,
    /// The IPv6 neighbour entries of the IPv6 overlay device.
    pub neighbours6: Vec<Neighbour6>,
    /// All FDB entries of the IPv6 overlay device.
    pub fdb6: Vec<FdbEntry6>,
}

impl ActualEntries {
    /// The kernel as it is once `desired` has been programmed exactly: what an incremental
    /// pass diffs against instead of dumping the kernel.
    pub fn programmed(desired: &KernelEntries) -> ActualEntries {
        ActualEntries {
            routes: desired.routes.iter().copied().collect(),
            neighbours: desired
                .neighbours
                .iter()
                .map(|(ip, mac)| Neighbour {
                    ip: *ip,
                    mac: Some(*mac),
                    permanent: true,
                })
                .collect(),
            fdb: desired.fdb.iter().copied().collect(),
            routes6: desired.routes6.iter().copied().collect(),
            neighbours6: desired
                .neighbours6
                .iter()
                .map(|(ip, mac)| Neighbour6 {
                    ip: *ip,
                    mac: Some(*mac),
                    permanent: true,
                })
                .collect(),
            fdb6: desired.fdb6.iter().copied().collect(),
        }
    }
}

/// A lease that yields no kernel entries, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SkippedPeer {
    /// The peer's subnet.
    pub subnet: Ipv4Network,
    /// Why it is skipped, for a warning.
    pub reason: String,
}

/// What to change so that the kernel holds exactly the desired entries. Removals must be
/// applied before additions (a changed route or FDB entry is one removal plus one addition);
/// a neighbour whose MAC changed is replaced in place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryDiff {
    /// weft's routes to delete.
    pub del_routes: Vec<Ipv4Route>,
    /// Untagged routes a previous weft version wrote that no lease justifies (see
    /// [`adopt_untagged`]); deleted whatever their protocol.
    pub del_untagged_routes: Vec<Ipv4Route>,
    /// Neighbour entries to delete, by IP.
    pub del_neighbours: Vec<Ipv4Addr>,
    /// FDB entries to delete.
    pub del_fdb: Vec<FdbEntry>,
    /// Routes to add.
    pub add_routes: Vec<Ipv4Route>,
    /// Permanent neighbour entries to add or replace.
    pub add_neighbours: Vec<(Ipv4Addr, MacAddr)>,
    /// FDB entries to add.
    pub add_fdb: Vec<FdbEntry>,
    /// weft's IPv6 routes to delete.
    pub del_routes6: Vec<Ipv6Route>,
    /// IPv6 neighbour entries to delete, by IP.
    pub del_neighbours6: Vec<Ipv6Addr>,
    /// IPv6 FDB entries to delete.
    pub del_fdb6: Vec<FdbEntry6>,
    /// IPv6 routes to add.
    pub add_routes6: Vec<Ipv6Route>,
    /// Permanent IPv6 neighbour entries to add or replace.
    pub add_neighbours6: Vec<(Ipv6Addr, MacAddr)>,
    /// IPv6 FDB entries to add.
    pub add_fdb6: Vec<FdbEntry6>,
    /// Desired entries that are already present.
    pub present: usize,
}

impl EntryDiff {
    /// Whether nothing needs to change.
    pub fn is_empty(&self) -> bool {
        self.del_routes.is_empty()
            && self.del_untagged_routes.is_empty()
            && self.del_neighbours.is_empty()
            && self.del_fdb.is_empty()
            && self.add_routes.is_empty()
            && self.add_neighbours.is_empty()
            && self.add_fdb.is_empty()
            && self.del_routes6.is_empty()
            && self.del_neighbours6.is_empty()
            && self.del_fdb6.is_empty()
            && self.add_routes6.is_empty()
            && self.add_neighbours6.is_empty()
            && self.add_fdb6.is_empty()
    }
}

/// Compares desired and actual entries.
pub fn diff(desired: &KernelEntries, actual: &ActualEntries) -> EntryDiff {
    let mut d = EntryDiff::default();

    let actual_routes: BTreeSet<Ipv4Route> = actual.routes.iter().copied().collect();
    d.del_routes = actual_routes.difference(&desired.routes).copied().collect();
    d.add_routes = desired.routes.difference(&actual_routes).copied().collect();
    d.present += desired.routes.len() - d.add_routes.len();

    let mut seen_neighbours = BTreeSet::new();
    for n in &actual.neighbours {
        if !desired.neighbours.contains_key(&n.ip) && seen_neighbours.insert(n.ip) {
            d.del_neighbours.push(n.ip);
        }
    }
    for (ip, mac) in &desired.neighbours {
        let ok = actual
            .neighbours
            .iter()
            .any(|n| n.ip == *ip && n.mac == Some(*mac) && n.permanent);
        if ok {
            d.present += 1;
        } else {
            d.add_neighbours.push((*ip, *mac));
        }
    }

    let actual_fdb: BTreeSet<FdbEntry> = actual.fdb.iter().copied().collect();
    d.del_fdb = actual_fdb.difference(&desired.fdb).copied().collect();
    d.add_fdb = desired.fdb.difference(&actual_fdb).copied().collect();
    d.present += desired.fdb.len() - d.add_fdb.len();

    // IPv6: the same rules.
    (d.del_routes6, d.add_routes6) = set_diff(&desired.routes6, &actual.routes6);
    d.present += desired.routes6.len() - d.add_routes6.len();
    let actual6: Vec<(Ipv6Addr, Option<MacAddr>, bool)> = actual
        .neighbours6
        .iter()
        .map(|n| (n.ip, n.mac, n.permanent))
        .collect();
    let present;
    (d.del_neighbours6, d.add_neighbours6, present) =
        neighbour_diff(&desired.neighbours6, &actual6);
    d.present += present;
    (d.del_fdb6, d.add_fdb6) = set_diff(&desired.fdb6, &actual.fdb6);
    d.present += desired.fdb6.len() - d.add_fdb6.len();
    d
}

/// What to delete from `actual` and add to it to make it `desired`.
fn set_diff<T: Ord + Copy>(desired: &BTreeSet<T>, actual: &[T]) -> (Vec<T>, Vec<T>) {
    let actual: BTreeSet<T> = actual.iter().copied().collect();
    (
        actual.difference(desired).copied().collect(),
        desired.difference(&actual).copied().collect(),
    )
}

/// Neighbours to delete (by IP), to add or replace, and how many are present already.
fn neighbour_diff<A: Ord + Copy>(
    desired: &BTreeMap<A, MacAddr>,
    actual: &[(A, Option<MacAddr>, bool)],
) -> (Vec<A>, Vec<(A, MacAddr)>, usize) {
    let mut del = Vec::new();
    let mut seen = BTreeSet::new();
    for (ip, _, _) in actual {
        if !desired.contains_key(ip) && seen.insert(*ip) {
            del.push(*ip);
        }
    }
    let mut add = Vec::new();
    let mut present = 0;
    for (ip, mac) in desired {
        if actual
            .iter()
            .any(|(a, m, permanent)| a == ip && *m == Some(*mac) && *permanent)
        {
            present += 1;
        } else {
            add.push((*ip, *mac));
        }
    }
    (del, add, present)
}

/// Folds the untagged routes a previous weft version left (it did not tag VXLAN routes) into
/// `d`: one whose destination a desired route covers is replaced in place by the tagged route
/// (a replace matches on destination and metric, not on protocol), so it is added even when an
/// equal tagged route looks present; every other one is deleted. Run once per start, before the
/// first full diff is applied.
pub fn adopt_untagged(d: &mut EntryDiff, desired: &KernelEntries, untagged: &[Ipv4Route]) {
    let desired_by_dst: BTreeMap<Ipv4Network, &Ipv4Route> =
        desired.routes.iter().map(|r| (r.dst, r)).collect();
    for old in untagged {
        match desired_by_dst.get(&old.dst) {
            Some(want) => {
                if !d.add_routes.contains(want) {
                    d.add_routes.push(**want);
                    d.present = d.present.saturating_sub(1);
                }
            }
            None => d.del_untagged_routes.push(*old),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: &str, gw: &str, oif: u32) -> Ipv4Route {
        Ipv4Route {
            dst: dst.parse().unwrap(),
            gateway: Some(gw.parse().unwrap()),
            oif,
            onlink: true,
        }
    }

    #[test]
    fn untagged_routes_are_replaced_when_wanted_and_deleted_otherwise() {
        let wanted = route("10.244.2.0/24", "10.244.2.0", 10);
        let desired = KernelEntries {
            routes: [wanted].into(),
            ..Default::default()
        };
        // The kernel already shows the tagged route (as a dump would, were the untagged one
        // a different metric) plus two untagged ones: one for a live peer, one for a gone one.
        let actual = ActualEntries {
            routes: vec![wanted],
            ..Default::default()
        };
        let mut d = diff(&desired, &actual);
        assert!(d.is_empty());
        let gone = route("10.244.9.0/24", "10.244.9.0", 10);
        adopt_untagged(&mut d, &desired, &[wanted, gone]);
        assert_eq!(d.add_routes, vec![wanted]);
        assert_eq!(d.del_untagged_routes, vec![gone]);
        assert!(
            d.del_routes.is_empty(),
            "a tagged route is never deleted for an untagged one"
        );
        assert_eq!(d.present, 0);
    }

    #[test]
    fn untagged_route_missing_from_weft_routes_is_added_once() {
        let wanted = route("10.244.2.0/24", "10.244.2.0", 10);
        let desired = KernelEntries {
            routes: [wanted].into(),
            ..Default::default()
        };
        let mut d = diff(&desired, &ActualEntries::default());
        adopt_untagged(&mut d, &desired, &[wanted]);
        assert_eq!(d.add_routes, vec![wanted]);
        assert!(d.del_untagged_routes.is_empty());
    }

    #[test]
    fn programmed_entries_diff_to_nothing() {
        let desired = KernelEntries {
            routes: [route("10.244.2.0/24", "10.244.2.0", 10)].into(),
            neighbours: [(
                "10.244.2.0".parse().unwrap(),
                "0a:00:00:00:00:02".parse().unwrap(),
            )]
            .into(),
            fdb: [FdbEntry {
                mac: "0a:00:00:00:00:02".parse().unwrap(),
                dst: "192.0.2.2".parse().unwrap(),
            }]
            .into(),
            ..Default::default()
        };
        let d = diff(&desired, &ActualEntries::programmed(&desired));
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(d.present, 3);
    }

    #[test]
    fn ipv6_entries_diff_like_ipv4() {
        let mac: MacAddr = "0a:00:00:00:06:02".parse().unwrap();
        let route6 = |dst: &str| Ipv6Route {
            dst: dst.parse().unwrap(),
            gateway: Some(dst.split('/').next().unwrap().parse().unwrap()),
            oif: 11,
            onlink: true,
        };
        let desired = KernelEntries {
            routes6: [route6("fd00:10:244:2::/64")].into(),
            neighbours6: [("fd00:10:244:2::".parse().unwrap(), mac)].into(),
            fdb6: [FdbEntry6 {
                mac,
                dst: "2001:db8::2".parse().unwrap(),
            }]
            .into(),
            ..Default::default()
        };
        assert_eq!(desired.len(), 3);
        let d = diff(&desired, &ActualEntries::programmed(&desired));
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(d.present, 3);
        // A stale peer and a neighbour with a wrong MAC.
        let mut actual = ActualEntries::programmed(&desired);
        actual.routes6.push(route6("fd00:10:244:9::/64"));
        actual.neighbours6[0].mac = Some("0a:00:00:00:06:09".parse().unwrap());
        actual.neighbours6.push(Neighbour6 {
            ip: "fd00:10:244:9::".parse().unwrap(),
            mac: Some(mac),
            permanent: true,
        });
        let d = diff(&desired, &actual);
        assert_eq!(d.del_routes6, vec![route6("fd00:10:244:9::/64")]);
        assert_eq!(
            d.del_neighbours6,
            vec!["fd00:10:244:9::".parse::<Ipv6Addr>().unwrap()]
        );
        assert_eq!(
            d.add_neighbours6,
            vec![("fd00:10:244:2::".parse().unwrap(), mac)]
        );
        assert!(d.add_routes6.is_empty() && d.add_fdb6.is_empty());
        assert_eq!(d.present, 2);
    }
}
