//! The settle step shared by the two backends that own a layer-3 point-to-point device
//! (`flannel0` of udp, `flannel-wg` and `flannel-wg-v6` of wireguard): MTU, the one
//! `<subnet>.0/32` address (and `<subnet6>::/128` on a device carrying IPv6) and the link
//! state, brought in line on every full reconcile.

use std::io;

use ipnetwork::{Ipv4Network, Ipv6Network};
use rtnetlink::Handle;

use tun_rs::SyncDevice;

use crate::backend::udp::{open_tun_device, TunFailure};
use crate::backend::{ReconcileReport, StaleEntry};
use crate::netlink::{self, NetlinkError};

/// Sets the MTU of device `index` (named `name` in errors and stale entries) to `mtu`,
/// leaves `own.network()/32` its only IPv4 address (none without `own`) and, with `own6`,
/// `own6.network()/128` its only routable IPv6 address, and brings it up, counting every
/// change in `outcome`. The device carries no broadcast domain: the addresses only give
/// locally originated packets a source inside the own subnets. Each backend names the
/// failure in its own error type `E`.
pub(crate) async fn settle<E: From<NetlinkError> + From<TunFailure>>(
    handle: &Handle,
    index: u32,
    name: &str,
    mtu: u32,
    own: Option<Ipv4Network>,
    own6: Option<Ipv6Network>,
    outcome: &mut ReconcileReport,
) -> Result<(), E> {
    let link = netlink::link_by_index(handle, index)
        .await?
        .ok_or_else(missing)?;
    if netlink::link_mtu(&link) != Some(mtu) {
        netlink::set_link_mtu(handle, index, name, mtu).await?;
        outcome.added += 1;
    }
    let bad = || TunFailure {
        op: "address",
        source: io::Error::from_raw_os_error(libc::EINVAL),
    };
    let addr = own
        .map(|own| Ipv4Network::new(own.network(), 32))
        .transpose()
        .map_err(|_| bad())?;
    let mut have_addr = addr.is_none();
    for (_, a) in netlink::ipv4_addresses(handle, Some(index)).await? {
        if Some(a) == addr {
            have_addr = true;
        } else {
            netlink::del_address(handle, index, name, a).await?;
            outcome.removed += 1;
            outcome
                .stale
                .push(StaleEntry::new("address", format!("{a} dev {name}")));
        }
    }
    if let (false, Some(addr)) = (have_addr, addr) {
        netlink::add_address(handle, index, name, addr).await?;
        outcome.added += 1;
    }
    if let Some(own6) = own6 {
        let addr6 = Ipv6Network::new(own6.network(), 128).map_err(|_| bad())?;
        let mut have6 = false;
        for (_, a) in netlink::ipv6_addresses(handle, Some(index)).await? {
            if a == addr6 {
                have6 = true;
            } else if netlink::is_routable_v6(&a.ip()) {
                netlink::del_address6(handle, index, name, a).await?;
                outcome.removed += 1;
                outcome
                    .stale
                    .push(StaleEntry::new("address", format!("{a} dev {name}")));
            }
        }
        if !have6 {
            netlink::add_address6(handle, index, name, addr6).await?;
            outcome.added += 1;
        }
    }
    if !netlink::link_is_up(&link) {
        netlink::set_link_up(handle, index, name).await?;
        outcome.added += 1;
    }
    Ok(())
}

/// Whether the device called `name` is no longer the one at `index`: deleted, or deleted and
/// created again by someone else. The caller then recreates it before [`settle`].
pub(crate) async fn replaced(
    handle: &Handle,
    name: &str,
    index: u32,
) -> Result<bool, NetlinkError> {
    let link = netlink::link_by_name(handle, name).await?;
    Ok(link.as_ref().map(|l| l.header.index) != Some(index))
}

/// Most TUN queues (and pump thread pairs) a userspace data path uses.
const MAX_QUEUES: usize = 4;

/// Opens the queues of the multi-queue TUN device `name` (one per core, at most
/// [`MAX_QUEUES`]). A device of that name that cannot be attached to (left by Flannel as
/// another kind, or created with other flags) is deleted and created again.
pub(crate) async fn open_queues<E: From<NetlinkError> + From<TunFailure>>(
    handle: &Handle,
    name: &str,
    offloads: bool,
) -> Result<Vec<SyncDevice>, E> {
    let queues = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, MAX_QUEUES);
    match open_tun_device(name, queues, offloads) {
        Ok(t) => Ok(t),
        Err(e) => {
            let Some(link) = netlink::link_by_name(handle, name).await? else {
                return Err(e.into());
            };
            tracing::warn!(error = %e.source, device = name, op = e.op, "existing device is unusable; recreating it");
            netlink::del_link(handle, link.header.index, name).await?;
            Ok(open_tun_device(name, queues, offloads)?)
        }
    }
}

/// The index of the device `name`, which has just been opened.
pub(crate) async fn index_of<E: From<NetlinkError> + From<TunFailure>>(
    handle: &Handle,
    name: &str,
) -> Result<u32, E> {
    let link = netlink::link_by_name(handle, name)
        .await?
        .ok_or_else(missing)?;
    Ok(link.header.index)
}

/// The failure of finding no device where one was just opened or settled.
fn missing() -> TunFailure {
    TunFailure {
        op: "find",
        source: io::Error::from_raw_os_error(libc::ENODEV),
    }
}
