//! Kernel entries as typed values: what a backend wants (routes, neighbours, FDB entries),
//! what the kernel holds of weft's, and the difference between the two. Pure functions, no
//! I/O; [`super::pipeline`] reads the kernel and applies the difference.
//!
//! weft owns a route when it carries [`crate::netlink::WEFT_ROUTE_PROTOCOL`]; neighbour and FDB entries live
//! on weft's own overlay device, so all of them are weft's.

use std::collections::{BTreeMap, BTreeSet, HashMap};
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

/// The kernel entries one peer lease yields (at most one of each kind; a backend's own entry,
/// such as UDP's cluster route, is stated the same way under its own prefix).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerEntries {
    /// The route to the peer's subnet.
    pub route: Option<Ipv4Route>,
    /// The permanent neighbour entry of the peer's VTEP address.
    pub neighbour: Option<(Ipv4Addr, MacAddr)>,
    /// The FDB entry of the peer's VTEP.
    pub fdb: Option<FdbEntry>,
}

/// The desired entries by the subnet (peer) that wants them.
pub type EntriesByPeer = HashMap<Ipv4Network, PeerEntries>;

impl KernelEntries {
    /// All entries of `by_peer`, merged (an FDB entry two peers share is one entry).
    pub fn merged(by_peer: &EntriesByPeer) -> KernelEntries {
        let mut all = KernelEntries::default();
        for p in by_peer.values() {
            all.routes.extend(p.route);
            if let Some((ip, mac)) = p.neighbour {
                all.neighbours.insert(ip, mac);
            }
            all.fdb.extend(p.fdb);
        }
        all
    }
}

/// What the last pass left in the kernel, by peer, so that a change of some peers is diffed
/// against those peers' entries alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppliedEntries {
    by_peer: EntriesByPeer,
    /// How many peers want each FDB entry: peers of one node (one VTEP) share it, and it goes
    /// only with the last of them.
    fdb_users: HashMap<FdbEntry, u32>,
}

impl AppliedEntries {
    /// The state once `by_peer` is programmed exactly.
    pub fn new(by_peer: EntriesByPeer) -> AppliedEntries {
        let mut fdb_users = HashMap::with_capacity(by_peer.len());
        for e in by_peer.values().filter_map(|p| p.fdb) {
            *fdb_users.entry(e).or_default() += 1;
        }
        AppliedEntries { by_peer, fdb_users }
    }

    /// How many distinct kernel entries this is.
    pub fn len(&self) -> usize {
        self.fdb_users.len()
            + self
                .by_peer
                .values()
                .map(|p| usize::from(p.route.is_some()) + usize::from(p.neighbour.is_some()))
                .sum::<usize>()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.by_peer.is_empty()
    }

    /// Takes in the new entries of the peers in `changes` (`None`: the peer is gone) and
    /// returns what to change in the kernel: only those peers' entries are looked at.
    pub fn change(&mut self, changes: &[(Ipv4Network, Option<PeerEntries>)]) -> EntryDiff {
        let mut d = EntryDiff::default();
        for (subnet, new) in changes {
            let new = new.unwrap_or_default();
            let old = match new == PeerEntries::default() {
                true => self.by_peer.remove(subnet),
                false => self.by_peer.insert(*subnet, new),
            }
            .unwrap_or_default();
            if old.route != new.route {
                d.del_routes.extend(old.route);
                d.add_routes.extend(new.route);
            }
            if old.neighbour != new.neighbour {
                match (old.neighbour, new.neighbour) {
                    // Replaced in place.
                    (Some((was, _)), Some((ip, _))) if was == ip => {}
                    (Some((was, _)), _) => d.del_neighbours.push(was),
                    (None, _) => {}
                }
                d.add_neighbours.extend(new.neighbour);
            }
            if old.fdb != new.fdb {
                if let Some(e) = old.fdb {
                    if let Some(n) = self.fdb_users.get_mut(&e) {
                        *n -= 1;
                        if *n == 0 {
                            self.fdb_users.remove(&e);
                            d.del_fdb.push(e);
                        }
                    }
                }
                if let Some(e) = new.fdb {
                    let n = self.fdb_users.entry(e).or_default();
                    *n += 1;
                    if *n == 1 {
                        d.add_fdb.push(e);
                    }
                }
            }
        }
        // A peer's entry that another changed peer takes over in the same pass stays.
        d.del_routes.retain(|r| !d.add_routes.contains(r));
        d.del_fdb.retain(|e| !d.add_fdb.contains(e));
        d.add_fdb.retain(|e| self.fdb_users.contains_key(e));
        d
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
    /// The kernel as it is once `desired` has been programmed exactly.
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
    let mut good_neighbours = BTreeSet::new();
    for n in &actual.neighbours {
        if !desired.neighbours.contains_key(&n.ip) && seen_neighbours.insert(n.ip) {
            d.del_neighbours.push(n.ip);
        }
        if let (Some(mac), true) = (n.mac, n.permanent) {
            good_neighbours.insert((n.ip, mac));
        }
    }
    for (ip, mac) in &desired.neighbours {
        if good_neighbours.contains(&(*ip, *mac)) {
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

    fn peer(n: u8, mac: u8, vtep: u8) -> (Ipv4Network, PeerEntries) {
        let subnet: Ipv4Network = format!("10.244.{n}.0/24").parse().unwrap();
        let mac = MacAddr([0x0a, 0, 0, 0, 0, mac]);
        (
            subnet,
            PeerEntries {
                route: Some(route(
                    &subnet.to_string(),
                    &subnet.network().to_string(),
                    10,
                )),
                neighbour: Some((subnet.network(), mac)),
                fdb: Some(FdbEntry {
                    mac,
                    dst: Ipv4Addr::new(192, 0, 2, vtep),
                }),
            },
        )
    }

    #[test]
    fn a_change_touches_only_the_changed_peers_entries() {
        // Peers 2 and 3 are one node (one VTEP, one FDB entry); peer 4 another.
        let (s2, p2) = peer(2, 2, 2);
        let (s3, p3) = peer(3, 2, 2);
        let (s4, p4) = peer(4, 4, 4);
        let mut applied = AppliedEntries::new([(s2, p2), (s3, p3), (s4, p4)].into());
        assert_eq!(applied.len(), 3 + 3 + 2);

        // Peer 2 goes: its route and neighbour, not the FDB entry peer 3 still uses.
        let d = applied.change(&[(s2, None)]);
        assert_eq!(d.del_routes, vec![p2.route.unwrap()]);
        assert_eq!(d.del_neighbours, vec![s2.network()]);
        assert!(d.del_fdb.is_empty() && d.add_routes.is_empty() && d.add_fdb.is_empty());

        // Peer 4 changes its MAC: neighbour replaced in place, FDB entry moved.
        let (_, p4b) = peer(4, 5, 4);
        let d = applied.change(&[(s4, Some(p4b))]);
        assert!(d.del_routes.is_empty() && d.add_routes.is_empty());
        assert!(d.del_neighbours.is_empty());
        assert_eq!(d.add_neighbours, vec![p4b.neighbour.unwrap()]);
        assert_eq!(d.del_fdb, vec![p4.fdb.unwrap()]);
        assert_eq!(d.add_fdb, vec![p4b.fdb.unwrap()]);

        // Peer 3 goes and peer 5 joins on the same VTEP in one pass: the FDB entry stays.
        let (s5, p5) = peer(5, 2, 2);
        let d = applied.change(&[(s3, None), (s5, Some(p5))]);
        assert!(d.del_fdb.is_empty(), "{d:?}");
        assert_eq!(d.add_routes, vec![p5.route.unwrap()]);

        // Unchanged peers need nothing; the state equals one built from scratch.
        assert!(applied.change(&[(s5, Some(p5)), (s2, None)]).is_empty());
        assert_eq!(applied, AppliedEntries::new([(s4, p4b), (s5, p5)].into()));
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
