//! Kernel entries as typed values: what a backend wants (routes, neighbours, FDB entries),
//! what the kernel holds of weft's, and the difference between the two. Pure functions, no
//! I/O; [`super::pipeline`] reads the kernel and applies the difference.
//!
//! weft owns a route when it carries [`crate::netlink::WEFT_ROUTE_PROTOCOL`]; neighbour and FDB entries live
//! on weft's own overlay device, so all of them are weft's.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::netlink::{
    FdbEntry, FdbEntry6, Ipv4Route, Ipv6Route, MacAddr, Neighbour, Neighbour6, Nexthop,
};

/// The kernel entries a backend wants for its peer leases (its desired state).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelEntries {
    /// Routes to peer subnets, all carrying [`crate::netlink::WEFT_ROUTE_PROTOCOL`].
    pub routes: BTreeSet<Ipv4Route>,
    /// The nexthop objects those routes go through (`--route-nexthops`).
    pub nexthops: BTreeSet<Nexthop>,
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
            + self.nexthops.len()
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

/// The kernel entries one peer lease yields (at most one of each kind; a backend's own entry,
/// such as UDP's cluster route, is stated the same way under its own prefix).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerEntries {
    /// The route to the peer's subnet.
    pub route: Option<Ipv4Route>,
    /// The nexthop object the route goes through (`--route-nexthops`).
    pub nexthop: Option<Nexthop>,
    /// The permanent neighbour entry of the peer's VTEP address.
    pub neighbour: Option<(Ipv4Addr, MacAddr)>,
    /// The FDB entry of the peer's VTEP.
    pub fdb: Option<FdbEntry>,
}

/// The desired entries by the subnet (peer) that wants them.
pub type EntriesByPeer = HashMap<Ipv4Network, PeerEntries>;

/// The IPv6 kernel entries one peer lease yields (the IPv6 side of a dual-stack lease).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerEntries6 {
    /// The route to the peer's IPv6 subnet.
    pub route: Option<Ipv6Route>,
    /// The permanent neighbour entry of the peer's IPv6 VTEP address.
    pub neighbour: Option<(Ipv6Addr, MacAddr)>,
    /// The FDB entry of the peer's IPv6 VTEP.
    pub fdb: Option<FdbEntry6>,
}

/// The desired IPv6 entries by the IPv6 subnet (peer) that wants them.
pub type EntriesByPeer6 = HashMap<Ipv6Network, PeerEntries6>;

/// Adds the IPv6 entries of `by_peer` to `all` (an FDB entry two peers share is one entry).
pub fn merge6(all: &mut KernelEntries, by_peer: &EntriesByPeer6) {
    for p in by_peer.values() {
        all.routes6.extend(p.route);
        if let Some((ip, mac)) = p.neighbour {
            all.neighbours6.insert(ip, mac);
        }
        all.fdb6.extend(p.fdb);
    }
}

impl KernelEntries {
    /// All entries of `by_peer`, merged (an FDB entry two peers share is one entry).
    pub fn merged(by_peer: &EntriesByPeer) -> KernelEntries {
        let mut all = KernelEntries::default();
        for p in by_peer.values() {
            all.routes.extend(p.route);
            all.nexthops.extend(p.nexthop);
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
    /// The IPv6 entries by IPv6 subnet, and the users of each IPv6 FDB entry.
    by_peer6: EntriesByPeer6,
    fdb6_users: HashMap<FdbEntry6, u32>,
}

impl AppliedEntries {
    /// The state once `by_peer` and `by_peer6` are programmed exactly.
    pub fn new(by_peer: EntriesByPeer, by_peer6: EntriesByPeer6) -> AppliedEntries {
        let mut fdb_users = HashMap::with_capacity(by_peer.len());
        for e in by_peer.values().filter_map(|p| p.fdb) {
            *fdb_users.entry(e).or_default() += 1;
        }
        let mut fdb6_users = HashMap::with_capacity(by_peer6.len());
        for e in by_peer6.values().filter_map(|p| p.fdb) {
            *fdb6_users.entry(e).or_default() += 1;
        }
        AppliedEntries {
            by_peer,
            fdb_users,
            by_peer6,
            fdb6_users,
        }
    }

    /// How many distinct kernel entries this is.
    pub fn len(&self) -> usize {
        self.fdb_users.len()
            + self
                .by_peer
                .values()
                .map(|p| {
                    usize::from(p.route.is_some())
                        + usize::from(p.nexthop.is_some())
                        + usize::from(p.neighbour.is_some())
                })
                .sum::<usize>()
            + self.fdb6_users.len()
            + self
                .by_peer6
                .values()
                .map(|p| usize::from(p.route.is_some()) + usize::from(p.neighbour.is_some()))
                .sum::<usize>()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.by_peer.is_empty() && self.by_peer6.is_empty()
    }

    /// Takes in the new IPv6 entries of the peers in `changes` (by IPv6 subnet; `None`: gone)
    /// and adds what to change in the kernel to `d`, as [`Self::change`] does for IPv4.
    pub fn change6(&mut self, changes: &[(Ipv6Network, Option<PeerEntries6>)], d: &mut EntryDiff) {
        for (subnet, new) in changes {
            let new = new.unwrap_or_default();
            let old = match new == PeerEntries6::default() {
                true => self.by_peer6.remove(subnet),
                false => self.by_peer6.insert(*subnet, new),
            }
            .unwrap_or_default();
            if old.route != new.route {
                d.del_routes6.extend(old.route);
                d.add_routes6.extend(new.route);
            }
            change_neighbour(
                old.neighbour,
                new.neighbour,
                &mut d.del_neighbours6,
                &mut d.add_neighbours6,
            );
            change_fdb_user(
                &mut self.fdb6_users,
                old.fdb,
                new.fdb,
                &mut d.del_fdb6,
                &mut d.add_fdb6,
            );
        }
        // A peer's entry that another changed peer takes over in the same pass stays.
        d.del_routes6.retain(|r| !d.add_routes6.contains(r));
        d.del_fdb6.retain(|e| !d.add_fdb6.contains(e));
        d.add_fdb6.retain(|e| self.fdb6_users.contains_key(e));
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
            if old.nexthop != new.nexthop {
                // One id per peer subnet: a changed nexthop is replaced in place.
                if let Some(was) = old
                    .nexthop
                    .filter(|o| new.nexthop.map(|n| n.id) != Some(o.id))
                {
                    d.del_nexthops.push(was.id);
                }
                d.add_nexthops.extend(new.nexthop);
            }
            change_neighbour(
                old.neighbour,
                new.neighbour,
                &mut d.del_neighbours,
                &mut d.add_neighbours,
            );
            change_fdb_user(
                &mut self.fdb_users,
                old.fdb,
                new.fdb,
                &mut d.del_fdb,
                &mut d.add_fdb,
            );
        }
        // A peer's entry that another changed peer takes over in the same pass stays.
        d.del_routes.retain(|r| !d.add_routes.contains(r));
        keep_routes_replaced_in_place(&mut d);
        d.del_fdb.retain(|e| !d.add_fdb.contains(e));
        d.add_fdb.retain(|e| self.fdb_users.contains_key(e));
        d
    }
}

/// A peer's neighbour entry going from `old` to `new`: one of the same IP is replaced in place
/// (added only); otherwise the old IP is deleted and the new entry added.
fn change_neighbour<A: PartialEq + Copy>(
    old: Option<(A, MacAddr)>,
    new: Option<(A, MacAddr)>,
    del: &mut Vec<A>,
    add: &mut Vec<(A, MacAddr)>,
) {
    if old == new {
        return;
    }
    match (old, new) {
        (Some((was, _)), Some((ip, _))) if was == ip => {}
        (Some((was, _)), _) => del.push(was),
        (None, _) => {}
    }
    add.extend(new);
}

/// A peer's FDB entry going from `old` to `new`, with `users` counting the peers that want
/// each entry (the peers of one node share it): an entry is deleted with its last user and
/// added with its first.
fn change_fdb_user<E: Hash + Eq + Copy>(
    users: &mut HashMap<E, u32>,
    old: Option<E>,
    new: Option<E>,
    del: &mut Vec<E>,
    add: &mut Vec<E>,
) {
    if old == new {
        return;
    }
    if let Some(e) = old {
        if let Some(n) = users.get_mut(&e) {
            *n -= 1;
            if *n == 0 {
                users.remove(&e);
                del.push(e);
            }
        }
    }
    if let Some(e) = new {
        let n = users.entry(e).or_default();
        *n += 1;
        if *n == 1 {
            add.push(e);
        }
    }
}

/// What the kernel holds now, restricted to the entries weft owns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActualEntries {
    /// weft's routes (protocol [`crate::netlink::WEFT_ROUTE_PROTOCOL`]) on the backend's devices.
    pub routes: Vec<Ipv4Route>,
    /// weft's nexthop objects (the same protocol), on any device.
    pub nexthops: Vec<Nexthop>,
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
    /// The kernel as it is once `desired` has been programmed exactly.
    pub fn programmed(desired: &KernelEntries) -> ActualEntries {
        ActualEntries {
            routes: desired.routes.iter().copied().collect(),
            nexthops: desired.nexthops.iter().copied().collect(),
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
/// a neighbour whose MAC changed is replaced in place. Nexthop objects are added before the
/// routes through them and deleted last, once no route wanted goes through them.
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
    /// Nexthop objects to add or replace (before the routes).
    pub add_nexthops: Vec<Nexthop>,
    /// weft's nexthop objects to delete, by id (after the routes).
    pub del_nexthops: Vec<u32>,
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
            && self.add_nexthops.is_empty()
            && self.del_nexthops.is_empty()
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
    keep_routes_replaced_in_place(&mut d);

    let wanted_ids: BTreeSet<u32> = desired.nexthops.iter().map(|n| n.id).collect();
    let actual_nexthops: BTreeSet<Nexthop> = actual.nexthops.iter().copied().collect();
    d.del_nexthops = actual_nexthops
        .iter()
        .map(|n| n.id)
        .filter(|id| !wanted_ids.contains(id))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    d.add_nexthops = desired
        .nexthops
        .difference(&actual_nexthops)
        .copied()
        .collect();
    d.present += desired.nexthops.len() - d.add_nexthops.len();

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

/// Drops the deletion of a route that an added route of the same destination replaces while
/// one of the two goes through a nexthop object (a switch between Flannel's shape and
/// `--route-nexthops`): a replace matches on destination and metric, so the peer keeps a
/// route throughout.
fn keep_routes_replaced_in_place(d: &mut EntryDiff) {
    // By destination: whether a deleted route to it goes through a nexthop object (a lookup,
    // not a scan of the deletions per addition: a restart that switches shape at 10 000 peers
    // has 10 000 of each).
    let mut deleted: BTreeMap<Ipv4Network, bool> = BTreeMap::new();
    for del in &d.del_routes {
        *deleted.entry(del.dst).or_default() |= del.nexthop.is_some();
    }
    let switched: BTreeSet<Ipv4Network> = d
        .add_routes
        .iter()
        .filter(|add| {
            deleted
                .get(&add.dst)
                .is_some_and(|&through| through || add.nexthop.is_some())
        })
        .map(|r| r.dst)
        .collect();
    d.del_routes.retain(|r| !switched.contains(&r.dst));
}

/// The id of the nexthop object of the peer with subnet `subnet`: its network address as a
/// number, unique per peer and stable across restarts (never 0: no peer has 0.0.0.0).
pub fn nexthop_id(subnet: Ipv4Network) -> u32 {
    u32::from(subnet.network())
}

/// A peer's entries with its route through a nexthop object of its own (`--route-nexthops`):
/// same gateway, device and on-link flag, held by the object. A route without a gateway, or
/// one whose id a nexthop of someone else holds (in `foreign`), keeps Flannel's shape.
pub fn through_nexthop(
    subnet: Ipv4Network,
    mut entries: PeerEntries,
    foreign: &BTreeSet<u32>,
) -> PeerEntries {
    let id = nexthop_id(subnet);
    let Some(route) = entries.route.as_mut() else {
        return entries;
    };
    let Some(gateway) = route.gateway else {
        return entries;
    };
    if id == 0 || foreign.contains(&id) {
        return entries;
    }
    route.nexthop = Some(id);
    entries.nexthop = Some(Nexthop {
        id,
        gateway,
        oif: route.oif,
        onlink: route.onlink,
    });
    entries
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
    // The permanent entries as they are, looked up per desired one (a scan of all of them
    // per desired neighbour was 10^8 comparisons at 10 000 peers: 0.6 s of every full pass).
    let good: BTreeSet<(A, MacAddr)> = actual
        .iter()
        .filter_map(|(a, m, permanent)| m.filter(|_| *permanent).map(|m| (*a, m)))
        .collect();
    let mut add = Vec::new();
    let mut present = 0;
    for (ip, mac) in desired {
        if good.contains(&(*ip, *mac)) {
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
            nexthop: None,
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
                nexthop: None,
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
        let mut applied =
            AppliedEntries::new([(s2, p2), (s3, p3), (s4, p4)].into(), EntriesByPeer6::new());
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
        assert_eq!(
            applied,
            AppliedEntries::new([(s4, p4b), (s5, p5)].into(), EntriesByPeer6::new())
        );
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

    fn through(subnet: &str, gw: &str, oif: u32, onlink: bool) -> (Ipv4Network, PeerEntries) {
        let subnet: Ipv4Network = subnet.parse().unwrap();
        let mut r = route(&subnet.to_string(), gw, oif);
        r.onlink = onlink;
        let plain = PeerEntries {
            route: Some(r),
            ..Default::default()
        };
        (subnet, through_nexthop(subnet, plain, &BTreeSet::new()))
    }

    #[test]
    fn nexthops_take_the_routes_gateway_and_skip_foreign_ids() {
        let (subnet, e) = through("10.244.3.0/24", "10.244.3.0", 10, true);
        let id = u32::from(Ipv4Addr::new(10, 244, 3, 0));
        assert_eq!(
            e.nexthop,
            Some(Nexthop {
                id,
                gateway: Ipv4Addr::new(10, 244, 3, 0),
                oif: 10,
                onlink: true
            })
        );
        let r = e.route.unwrap();
        assert_eq!(
            (r.nexthop, r.gateway, r.oif, r.onlink),
            (Some(id), Some(Ipv4Addr::new(10, 244, 3, 0)), 10, true)
        );
        // Someone else's nexthop holds the id: Flannel's shape.
        let plain = PeerEntries {
            route: Some(route("10.244.3.0/24", "10.244.3.0", 10)),
            ..Default::default()
        };
        assert_eq!(through_nexthop(subnet, plain, &[id].into()), plain);
        // A device route (no gateway) has nothing for an object to hold.
        let mut device = plain;
        device.route.as_mut().unwrap().gateway = None;
        assert_eq!(through_nexthop(subnet, device, &BTreeSet::new()), device);
    }

    #[test]
    fn nexthops_switch_routes_in_place_both_ways() {
        let (subnet, nh) = through("10.244.3.0/24", "10.244.3.0", 10, true);
        let plain = route("10.244.3.0/24", "10.244.3.0", 10);
        let on = KernelEntries::merged(&[(subnet, nh)].into());
        let off = KernelEntries {
            routes: [plain].into(),
            ..Default::default()
        };
        // Off -> on: the object first, the route replaced (never deleted: no gap).
        let d = diff(&on, &ActualEntries::programmed(&off));
        assert_eq!(d.add_nexthops, vec![nh.nexthop.unwrap()]);
        assert_eq!(d.add_routes, vec![nh.route.unwrap()]);
        assert!(
            d.del_routes.is_empty() && d.del_nexthops.is_empty(),
            "{d:?}"
        );
        // On -> off: the route replaced, weft's object deleted (after it).
        let d = diff(&off, &ActualEntries::programmed(&on));
        assert_eq!(d.add_routes, vec![plain]);
        assert_eq!(d.del_nexthops, vec![nh.nexthop.unwrap().id]);
        assert!(
            d.del_routes.is_empty() && d.add_nexthops.is_empty(),
            "{d:?}"
        );
        assert!(diff(&on, &ActualEntries::programmed(&on)).is_empty());
        assert_eq!(diff(&on, &ActualEntries::programmed(&on)).present, 2);
    }

    #[test]
    fn ipv6_neighbours_present_wrong_stale_and_not_permanent() {
        let ip = |s: &str| -> Ipv6Addr { s.parse().unwrap() };
        let mac = |s: &str| -> MacAddr { s.parse().unwrap() };
        let desired = KernelEntries {
            neighbours6: [
                (ip("fd00::a"), mac("0a:00:00:00:00:0a")),
                (ip("fd00::b"), mac("0a:00:00:00:00:0b")),
                (ip("fd00::c"), mac("0a:00:00:00:00:0c")),
            ]
            .into(),
            ..Default::default()
        };
        let n = |i: &str, m: &str, permanent| Neighbour6 {
            ip: ip(i),
            mac: Some(mac(m)),
            permanent,
        };
        let actual = ActualEntries {
            neighbours6: vec![
                n("fd00::a", "0a:00:00:00:00:0a", true),
                n("fd00::b", "0a:00:00:00:00:99", true),
                n("fd00::c", "0a:00:00:00:00:0c", false),
                n("fd00::d", "0a:00:00:00:00:0d", true),
                n("fd00::d", "0a:00:00:00:00:0e", false),
            ],
            ..Default::default()
        };
        let d = diff(&desired, &actual);
        assert_eq!(d.del_neighbours6, vec![ip("fd00::d")], "a stale IP once");
        assert_eq!(
            d.add_neighbours6,
            vec![
                (ip("fd00::b"), mac("0a:00:00:00:00:0b")),
                (ip("fd00::c"), mac("0a:00:00:00:00:0c")),
            ],
            "a wrong MAC and a neighbour that is not permanent are replaced"
        );
        assert_eq!(d.present, 1);
    }

    /// The IPv6 entries of a VXLAN peer `n` of node `node` (its IPv6 VTEP `mac`).
    fn peer6(n: u16, node: u16, mac: &str) -> (Ipv6Network, PeerEntries6) {
        let subnet: Ipv6Network = format!("fd00:10:244:{n:x}::/64").parse().unwrap();
        let mac: MacAddr = mac.parse().unwrap();
        let entries = PeerEntries6 {
            route: Some(Ipv6Route {
                dst: subnet,
                gateway: Some(subnet.network()),
                oif: 9,
                onlink: true,
            }),
            neighbour: Some((subnet.network(), mac)),
            fdb: Some(FdbEntry6 {
                mac,
                dst: format!("2001:db8::{node:x}").parse().unwrap(),
            }),
        };
        (subnet, entries)
    }

    #[test]
    fn ipv6_entries_change_by_peer_and_a_shared_fdb_entry_goes_with_its_last_user() {
        // Two subnets of one node (a leftover key of its own) share its IPv6 VTEP.
        let (a, pa) = peer6(2, 2, "0a:00:00:00:06:02");
        let (b, pb) = peer6(3, 2, "0a:00:00:00:06:02");
        let mut applied = AppliedEntries::new(EntriesByPeer::new(), [(a, pa), (b, pb)].into());
        assert_eq!(
            applied.len(),
            5,
            "two routes, two neighbours, one FDB entry"
        );
        // A goes: its route and neighbour go, the FDB entry stays for B.
        let mut d = EntryDiff::default();
        applied.change6(&[(a, None)], &mut d);
        assert_eq!(d.del_routes6, vec![pa.route.unwrap()]);
        assert_eq!(d.del_neighbours6, vec![a.network()]);
        assert!(d.del_fdb6.is_empty() && d.add_fdb6.is_empty(), "{d:?}");
        assert!(d.add_routes6.is_empty() && d.add_neighbours6.is_empty());
        // B's node gets a new VTEP MAC: the neighbour is replaced in place, the old FDB entry
        // (no user left) goes, the new one comes.
        let (_, pb2) = peer6(3, 2, "0a:00:00:00:06:22");
        let mut d = EntryDiff::default();
        applied.change6(&[(b, Some(pb2))], &mut d);
        assert!(d.del_neighbours6.is_empty(), "{d:?}");
        assert_eq!(d.add_neighbours6, vec![pb2.neighbour.unwrap()]);
        assert_eq!(d.del_fdb6, vec![pb.fdb.unwrap()]);
        assert_eq!(d.add_fdb6, vec![pb2.fdb.unwrap()]);
        assert!(
            d.del_routes6.is_empty() && d.add_routes6.is_empty(),
            "same route"
        );
        // A comes back: its entries, and the FDB entry it shares again is not sent twice.
        let (_, pa2) = peer6(2, 2, "0a:00:00:00:06:22");
        let mut d = EntryDiff::default();
        applied.change6(&[(a, Some(pa2))], &mut d);
        assert_eq!(d.add_routes6, vec![pa2.route.unwrap()]);
        assert_eq!(d.add_neighbours6, vec![pa2.neighbour.unwrap()]);
        assert!(d.add_fdb6.is_empty(), "{d:?}");
        assert_eq!(
            applied,
            AppliedEntries::new(EntriesByPeer::new(), [(a, pa2), (b, pb2)].into())
        );
    }

    #[test]
    fn nexthops_follow_a_changed_and_a_gone_peer() {
        let (subnet, was) = through("10.244.3.0/24", "192.0.2.3", 2, false);
        let mut applied = AppliedEntries::new([(subnet, was)].into(), EntriesByPeer6::new());
        assert_eq!(applied.len(), 2);
        // host-gw: a new PublicIP replaces the object in place.
        let (_, now) = through("10.244.3.0/24", "192.0.2.4", 2, false);
        let d = applied.change(&[(subnet, Some(now))]);
        assert_eq!(d.add_nexthops, vec![now.nexthop.unwrap()]);
        assert_eq!(d.add_routes, vec![now.route.unwrap()]);
        assert!(
            d.del_nexthops.is_empty() && d.del_routes.is_empty(),
            "{d:?}"
        );
        // Gone: route and object.
        let d = applied.change(&[(subnet, None)]);
        assert_eq!(d.del_routes, vec![now.route.unwrap()]);
        assert_eq!(d.del_nexthops, vec![now.nexthop.unwrap().id]);
        assert!(applied.is_empty());
    }
}
