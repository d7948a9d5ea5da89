//! The one way kernel entries reach the kernel. A backend states the entries each peer wants
//! ([`PeerEntries`]); a full pass reads what the kernel holds of weft's ([`read_kernel`]),
//! diffs and applies the difference; an incremental pass (a watch event) diffs only the
//! changed peers' entries against what the last pass left for them, so its cost follows the
//! change, not the table. Either way
//! the changes go out as netlink batches ([`netlink::run_batch`]), off the runtime's workers.

use std::collections::BTreeSet;

use rtnetlink::Handle;

use ipnetwork::Ipv4Network;

use super::entries::{ActualEntries, AppliedEntries, EntriesByPeer, EntryDiff, PeerEntries};
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
}

impl Devices {
    fn name_of(&self, oif: u32) -> &str {
        match &self.overlay {
            Some(dev) if dev.index == oif => &dev.name,
            _ => &self.routes.name,
        }
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
}

/// Reads weft's entries: its routes (protocol 87) that `owns` accepts, and every neighbour and
/// FDB entry of the overlay device.
pub async fn read_kernel(
    handle: &Handle,
    devices: &Devices,
    owns: impl Fn(&Ipv4Route) -> bool,
) -> Result<KernelView, NetlinkError> {
    // One dump at a time: a netlink socket refuses a second dump while one runs (EBUSY).
    let dump = netlink::dump_ipv4_routes(handle).await?;
    let routes = netlink::main_table_routes(&dump, RouteOrigin::Weft)
        .into_iter()
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
    Ok(KernelView {
        actual: ActualEntries {
            routes,
            neighbours,
            fdb,
        },
        untagged,
    })
}

/// The applier of one backend: sends diffs as batches and remembers, by peer, what it left
/// in the kernel, which the next incremental pass diffs the changed peers against.
#[derive(Debug, Default)]
pub struct EntryPipeline {
    /// The entries the last pass left in the kernel; `None` before the first full pass, after
    /// a pass the kernel refused part of, or when the devices changed.
    applied: Option<(Devices, AppliedEntries)>,
}

impl EntryPipeline {
    /// Applies `d` (computed against the kernel by the caller) and remembers `desired`.
    pub async fn full(
        &mut self,
        devices: &Devices,
        desired: EntriesByPeer,
        d: EntryDiff,
    ) -> Result<ReconcileReport, NetlinkError> {
        self.applied = None;
        let applied = AppliedEntries::new(desired);
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
    ) -> Result<Option<ReconcileReport>, NetlinkError> {
        let Some((last_devices, mut applied)) = self.applied.take() else {
            return Ok(None);
        };
        if &last_devices != devices {
            return Ok(None);
        }
        let mut d = applied.change(changes);
        let desired = applied.len();
        d.present =
            desired.saturating_sub(d.add_routes.len() + d.add_neighbours.len() + d.add_fdb.len());
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

/// Sends the removals, then the additions (a changed route or FDB entry is one of each).
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
    let (removed, del_errors) = if removals.is_empty() {
        (0, Vec::new())
    } else {
        netlink::run_batch(removals).await?
    };
    let (added, add_errors) = if additions.is_empty() {
        (0, Vec::new())
    } else {
        netlink::run_batch(additions).await?
    };
    for e in del_errors.iter().chain(add_errors.iter()) {
        tracing::warn!(device = %devices.routes.name, error = %e, "peer entry not programmed");
    }
    let overlay_name = overlay.map_or("", |d| d.name.as_str());
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
            .collect();
    Ok(ReconcileReport {
        desired,
        present: d.present,
        added,
        removed,
        failed: del_errors.len() + add_errors.len(),
        stale,
    })
}
