//! The one way kernel entries reach the kernel. A backend states the entries each peer wants
//! ([`PeerEntries`]); a full pass reads what the kernel holds of weft's ([`read_kernel`]),
//! diffs and applies the difference; an incremental pass (a watch event) diffs only the
//! changed peers' entries against what the last pass left for them, so its cost follows the
//! change, not the table. Either way
//! the changes go out as netlink batches ([`netlink::run_batch`]), off the runtime's workers.

use std::collections::{BTreeMap, BTreeSet};

use rtnetlink::Handle;

use ipnetwork::{Ipv4Network, Ipv6Network};

use super::entries::{
    self, ActualEntries, AppliedEntries, EntriesByPeer, EntriesByPeer6, EntryDiff, PeerEntries,
    PeerEntries6,
};
use super::{ReconcileReport, StaleEntry};
use crate::netlink::{self, BatchRequest, Ipv4Route, NetlinkError, RouteOrigin};

/// A device weft programs entries on, named for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
}

/// The devices a backend's entries live on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Devices {
    /// The backend's own device, which holds its neighbour and FDB entries (VXLAN); `None`
    /// when the backend has no such entries (host-gw, UDP).
    pub overlay: Option<Device>,
    /// Where routes go that are not on the overlay device (the underlay interface, or UDP's
    /// TUN device).
    pub routes: Device,
    /// The IPv6 overlay device (`flannel-v6.<VNI>`), which holds the IPv6 neighbour and FDB
    /// entries; `None` without IPv6 or for backends without such entries.
    pub overlay6: Option<Device>,
}

impl Devices {
    fn name_of(&self, oif: u32) -> &str {
        match (&self.overlay, &self.overlay6) {
            (Some(dev), _) if dev.index == oif => &dev.name,
            (_, Some(dev)) if dev.index == oif => &dev.name,
            _ => &self.routes.name,
        }
    }

    /// Whether a route on `oif` is on one of these devices (IPv6 routes are weft's there).
    fn holds(&self, oif: u32) -> bool {
        oif == self.routes.index
            || self.overlay.as_ref().is_some_and(|d| d.index == oif)
            || self.overlay6.as_ref().is_some_and(|d| d.index == oif)
    }
}

/// What the kernel holds: weft's entries, and the untagged main-table routes (for the
/// one-time adoption of routes a previous version wrote without weft's protocol).
#[derive(Debug, Clone, Default)]
pub struct KernelView {
    /// weft's entries on the backend's devices.
    pub actual: ActualEntries,
    /// Every main-table unicast route without weft's protocol that the kernel did not make.
    pub untagged: Vec<Ipv4Route>,
    /// The ids of the nexthop objects of other protocols, which weft leaves alone.
    pub foreign_nexthops: BTreeSet<u32>,
}

/// Reads weft's entries: its routes (protocol 87) that `owns` accepts, its nexthop objects
/// (the same protocol), and every neighbour and FDB entry of the overlay device; with an IPv6
/// overlay device or IPv6 routes, the same of IPv6 (weft's IPv6 routes on the backend's devices).
///
/// `needs_nexthops`: whether routes go through nexthop objects (`--route-nexthops`); only
/// then does a failed nexthop dump fail the read (see [`nexthops_for_pass`]).
pub async fn read_kernel(
    handle: &Handle,
    devices: &Devices,
    needs_nexthops: bool,
    owns: impl Fn(&Ipv4Route) -> bool,
) -> Result<KernelView, NetlinkError> {
    // One dump at a time: a netlink socket refuses a second dump while one runs (EBUSY).
    let dump = netlink::dump_ipv4_routes(handle).await?;
    let nexthops = nexthops_for_pass(netlink::dump_nexthops(), needs_nexthops)?;
    let by_id: BTreeMap<u32, &netlink::Nexthop> = nexthops.weft.iter().map(|n| (n.id, n)).collect();
    let routes = netlink::main_table_routes(&dump, RouteOrigin::Weft)
        .into_iter()
        .map(|mut r| {
            // A route dumped without `nexthop_compat_mode` names its object alone.
            if let Some(nh) = r
                .nexthop
                .filter(|_| r.oif == 0)
                .and_then(|id| by_id.get(&id))
            {
                r.gateway = Some(nh.gateway);
                r.oif = nh.oif;
                r.onlink = nh.onlink;
            }
            r
        })
        .filter(|r| owns(r))
        .collect();
    let untagged = netlink::main_table_routes(&dump, RouteOrigin::Untagged);
    let (neighbours, fdb) = match &devices.overlay {
        Some(dev) => (
            netlink::neighbours(handle, dev.index).await?,
            netlink::fdb_entries(handle, dev.index).await?,
        ),
        None => (Vec::new(), Vec::new()),
    };
    // A kernel booted with IPv6 off has no IPv6 routes to read (and an IPv4 network needs none).
    let dump6 = match netlink::dump_ipv6_routes(handle).await {
        Err(e) if e.errno() == Some(libc::EAFNOSUPPORT) => Vec::new(),
        other => other?,
    };
    let routes6 = netlink::main_table_routes6(&dump6, RouteOrigin::Weft)
        .into_iter()
        .filter(|r| devices.holds(r.oif))
        .collect();
    let (neighbours6, fdb6) = match &devices.overlay6 {
        Some(dev) => (
            netlink::neighbours6(handle, dev.index).await?,
            netlink::fdb_entries6(handle, dev.index).await?,
        ),
        None => (Vec::new(), Vec::new()),
    };
    Ok(KernelView {
        actual: ActualEntries {
            routes,
            nexthops: nexthops.weft,
            neighbours,
            fdb,
            routes6,
            neighbours6,
            fdb6,
        },
        untagged,
        foreign_nexthops: nexthops.foreign,
    })
}

/// The nexthop objects a pass works with. A pass whose routes go through nexthops cannot go
/// on without knowing them; any other pass only looks for weft's leftover objects to delete
/// (and a route naming its object alone), so a failed dump there is warned about and the pass
/// goes on without them: the peers' routes are still programmed in Flannel's shape (a route
/// misread for want of its object is replaced by the plain one), and the leftovers wait for a
/// later pass.
fn nexthops_for_pass(
    dumped: Result<netlink::NexthopTable, NetlinkError>,
    needed: bool,
) -> Result<netlink::NexthopTable, NetlinkError> {
    match dumped {
        Err(e) if !needed => {
            tracing::warn!(error = %e, "cannot list nexthop objects; going on without removing weft's leftover ones");
            Ok(netlink::NexthopTable::default())
        }
        other => other,
    }
}

/// The applier of one backend: sends diffs as batches and remembers, by peer, what it left
/// in the kernel, which the next incremental pass diffs the changed peers against.
#[derive(Debug, Default)]
pub struct EntryPipeline {
    /// The entries the last pass left in the kernel; `None` before the first full pass, after
    /// a pass the kernel refused part of, or when the devices changed.
    applied: Option<(Devices, AppliedEntries)>,
    /// `--route-nexthops`: IPv4 peer routes go through nexthop objects (see [`Self::shape`]).
    route_nexthops: bool,
    /// The nexthop ids someone else holds, as the last full pass read them.
    foreign_nexthops: BTreeSet<u32>,
    /// The peers (by nexthop id) that a foreign nexthop keeps in Flannel's shape, each warned
    /// about once.
    blocked: BTreeSet<u32>,
}

impl EntryPipeline {
    /// A pipeline that routes each IPv4 peer through a nexthop object of its own when
    /// `route_nexthops` (`--route-nexthops`), else in Flannel's shape.
    pub fn new(route_nexthops: bool) -> Self {
        EntryPipeline {
            route_nexthops,
            ..Default::default()
        }
    }

    /// Whether this pipeline routes peers through nexthop objects (`--route-nexthops`).
    pub fn routes_through_nexthops(&self) -> bool {
        self.route_nexthops
    }

    /// Puts the peers' routes into the shape this pipeline programs: with `--route-nexthops`
    /// each through a nexthop object whose id is the peer's subnet address, unless a nexthop of
    /// someone else holds that id (warned about once; the peer keeps Flannel's shape). Without
    /// it the routes stay as stated, and a full pass removes weft's nexthop objects.
    pub fn shape(&mut self, desired: &mut EntriesByPeer, view: &KernelView) {
        if !self.route_nexthops {
            return;
        }
        let mut blocked = BTreeSet::new();
        for (subnet, e) in desired.iter_mut() {
            let id = entries::nexthop_id(*subnet);
            if view.foreign_nexthops.contains(&id) {
                if !self.blocked.contains(&id) {
                    tracing::warn!(peer = %subnet, nexthop = id, "a nexthop of another protocol holds the peer's id; routing it without one");
                }
                blocked.insert(id);
            }
            *e = entries::through_nexthop(*subnet, *e, &view.foreign_nexthops);
        }
        self.blocked = blocked;
        self.foreign_nexthops = view.foreign_nexthops.clone();
    }

    /// Applies `d` (computed against the kernel by the caller) and remembers `desired` and
    /// `desired6` (the IPv6 entries by peer, which incremental passes build on; empty for a
    /// backend whose IPv6 changes always take a full pass).
    pub async fn full(
        &mut self,
        devices: &Devices,
        desired: EntriesByPeer,
        desired6: EntriesByPeer6,
        d: EntryDiff,
    ) -> Result<ReconcileReport, NetlinkError> {
        self.applied = None;
        let applied = AppliedEntries::new(desired, desired6);
        let report = apply(devices, &d, applied.len()).await?;
        if report.failed == 0 {
            self.applied = Some((devices.clone(), applied));
        }
        Ok(report)
    }

    /// Applies the new entries of the peers in `changes` (`None`: gone): only their entries
    /// are diffed and sent, whatever the size of the table. `Ok(None)` when there is no
    /// trustworthy last pass; the caller then runs a full one.
    pub async fn incremental(
        &mut self,
        devices: &Devices,
        changes: &[(Ipv4Network, Option<PeerEntries>)],
        changes6: &[(Ipv6Network, Option<PeerEntries6>)],
    ) -> Result<Option<ReconcileReport>, NetlinkError> {
        let Some((last_devices, mut applied)) = self.applied.take() else {
            return Ok(None);
        };
        if &last_devices != devices {
            return Ok(None);
        }
        let mut d = match self.route_nexthops {
            true => {
                let shaped: Vec<_> = changes
                    .iter()
                    .map(|(subnet, e)| {
                        let e =
                            e.map(|e| entries::through_nexthop(*subnet, e, &self.foreign_nexthops));
                        (*subnet, e)
                    })
                    .collect();
                applied.change(&shaped)
            }
            false => applied.change(changes),
        };
        applied.change6(changes6, &mut d);
        let desired = applied.len();
        d.present = desired.saturating_sub(
            d.add_routes.len()
                + d.add_nexthops.len()
                + d.add_neighbours.len()
                + d.add_fdb.len()
                + d.add_routes6.len()
                + d.add_neighbours6.len()
                + d.add_fdb6.len(),
        );
        let report = apply(devices, &d, desired).await?;
        if report.failed == 0 {
            self.applied = Some((last_devices, applied));
        }
        Ok(Some(report))
    }

    /// Whether a full pass left a known state that incremental passes can build on.
    pub fn is_known(&self) -> bool {
        self.applied.is_some()
    }
}

/// Sends the removals, then the additions (a changed route or FDB entry is one of each), then
/// the nexthop objects no route wanted goes through any more.
async fn apply(
    devices: &Devices,
    d: &EntryDiff,
    desired: usize,
) -> Result<ReconcileReport, NetlinkError> {
    let overlay = devices.overlay.as_ref();
    let mut removals = Vec::new();
    for r in &d.del_routes {
        removals.push(BatchRequest::del_route(r, devices.name_of(r.oif)));
    }
    for r in &d.del_untagged_routes {
        removals.push(BatchRequest::del_untagged_route(r, devices.name_of(r.oif)));
    }
    let mut additions = Vec::new();
    for nh in &d.add_nexthops {
        additions.push(BatchRequest::replace_nexthop(nh, devices.name_of(nh.oif)));
    }
    for r in &d.add_routes {
        additions.push(BatchRequest::replace_route(r, devices.name_of(r.oif)));
    }
    if let Some(dev) = overlay {
        for ip in &d.del_neighbours {
            removals.push(BatchRequest::del_neighbour(dev.index, &dev.name, *ip));
        }
        for e in &d.del_fdb {
            removals.push(BatchRequest::del_fdb(dev.index, &dev.name, e));
        }
        for (ip, mac) in &d.add_neighbours {
            additions.push(BatchRequest::replace_neighbour(
                dev.index, &dev.name, *ip, *mac,
            ));
        }
        for e in &d.add_fdb {
            additions.push(BatchRequest::replace_fdb(dev.index, &dev.name, e));
        }
    }
    for r in &d.del_routes6 {
        removals.push(BatchRequest::del_route6(r, devices.name_of(r.oif)));
    }
    for r in &d.add_routes6 {
        additions.push(BatchRequest::replace_route6(r, devices.name_of(r.oif)));
    }
    if let Some(dev) = &devices.overlay6 {
        for ip in &d.del_neighbours6 {
            removals.push(BatchRequest::del_neighbour6(dev.index, &dev.name, *ip));
        }
        for e in &d.del_fdb6 {
            removals.push(BatchRequest::del_fdb6(dev.index, &dev.name, e));
        }
        for (ip, mac) in &d.add_neighbours6 {
            additions.push(BatchRequest::replace_neighbour6(
                dev.index, &dev.name, *ip, *mac,
            ));
        }
        for e in &d.add_fdb6 {
            additions.push(BatchRequest::replace_fdb6(dev.index, &dev.name, e));
        }
    }
    let (mut removed, mut errors) = if removals.is_empty() {
        (0, Vec::new())
    } else {
        netlink::run_batch(removals).await?
    };
    let (added, add_errors) = if additions.is_empty() {
        (0, Vec::new())
    } else {
        netlink::run_batch(additions).await?
    };
    errors.extend(add_errors);
    if !d.del_nexthops.is_empty() {
        let last = d
            .del_nexthops
            .iter()
            .map(|id| BatchRequest::del_nexthop(*id));
        let (n, nexthop_errors) = netlink::run_batch(last.collect()).await?;
        removed += n;
        errors.extend(nexthop_errors);
    }
    for e in &errors {
        tracing::warn!(device = %devices.routes.name, error = %e, "peer entry not programmed");
    }
    let overlay_name = overlay.map_or("", |d| d.name.as_str());
    let overlay6_name = devices.overlay6.as_ref().map_or("", |d| d.name.as_str());
    let stale =
        d.del_routes
            .iter()
            .chain(&d.del_untagged_routes)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|r| {
                let dst = match r.gateway {
                    Some(gw) => format!("{} via {gw}", r.dst),
                    None => r.dst.to_string(),
                };
                StaleEntry::new("route", format!("{dst} dev {}", devices.name_of(r.oif)))
            })
            .chain(
                d.del_neighbours
                    .iter()
                    .map(|ip| StaleEntry::new("neighbour", format!("{ip} dev {overlay_name}"))),
            )
            .chain(d.del_fdb.iter().map(|e| {
                StaleEntry::new("fdb", format!("{} dst {} dev {overlay_name}", e.mac, e.dst))
            }))
            .chain(
                d.del_nexthops
                    .iter()
                    .map(|id| StaleEntry::new("nexthop", format!("id {id}"))),
            )
            .chain(d.del_routes6.iter().map(|r| {
                StaleEntry::new(
                    "route",
                    format!("{} dev {}", r.describe(), devices.name_of(r.oif)),
                )
            }))
            .chain(
                d.del_neighbours6
                    .iter()
                    .map(|ip| StaleEntry::new("neighbour", format!("{ip} dev {overlay6_name}"))),
            )
            .chain(d.del_fdb6.iter().map(|e| {
                StaleEntry::new(
                    "fdb",
                    format!("{} dst {} dev {overlay6_name}", e.mac, e.dst),
                )
            }))
            .collect();
    Ok(ReconcileReport {
        desired,
        present: d.present,
        added,
        removed,
        failed: errors.len(),
        unroutable: 0,
        stale,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed() -> Result<netlink::NexthopTable, NetlinkError> {
        Err(NetlinkError::Request {
            op: "list nexthops".to_string(),
            source: std::io::Error::from_raw_os_error(libc::ENOBUFS),
        })
    }

    fn one_foreign() -> netlink::NexthopTable {
        netlink::NexthopTable {
            weft: Vec::new(),
            foreign: [7].into(),
        }
    }

    #[test]
    fn a_failed_nexthop_dump_fails_only_a_pass_whose_routes_go_through_nexthops() {
        let err = nexthops_for_pass(failed(), true).expect_err("routes need their objects");
        assert!(err.to_string().contains("list nexthops"), "{err}");
        let table = nexthops_for_pass(failed(), false).expect("Flannel's shape goes on");
        assert_eq!(table, netlink::NexthopTable::default());
        for needed in [true, false] {
            assert_eq!(
                nexthops_for_pass(Ok(one_foreign()), needed).expect("listed"),
                one_foreign()
            );
        }
    }
}
