//! Kernel entries as typed values: what a backend wants (routes, neighbours, FDB entries),
//! what the kernel holds of weft's, and the difference between the two. Pure functions, no
//! I/O; [`super::pipeline`] reads the kernel and applies the difference.
//!
//! weft owns a route when it carries [`crate::netlink::WEFT_ROUTE_PROTOCOL`]; neighbour and FDB entries live
//! on weft's own overlay device, so all of them are weft's.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use crate::netlink::{FdbEntry, Ipv4Route, MacAddr, Neighbour};

/// The kernel entries a backend wants for its peer leases (its desired state).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelEntries {
    /// Routes to peer subnets, all carrying [`crate::netlink::WEFT_ROUTE_PROTOCOL`].
    pub routes: BTreeSet<Ipv4Route>,
    /// Permanent neighbour entries on the overlay device, by IP.
    pub neighbours: BTreeMap<Ipv4Addr, MacAddr>,
    /// FDB entries on the overlay device.
    pub fdb: BTreeSet<FdbEntry>,
}

impl KernelEntries {
    /// How many kernel entries these are.
    pub fn len(&self) -> usize {
        self.routes.len() + self.neighbours.len() + self.fdb.len()
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
    d
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
        };
        let d = diff(&desired, &ActualEntries::programmed(&desired));
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(d.present, 3);
    }
}
