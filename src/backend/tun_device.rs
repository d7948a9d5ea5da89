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

/// The transmit queue length of a TUN device whose data path reads no super-packets (no
/// vnet headers: `--no-udp-offloads`, or a kernel that refused them). The kernel then cuts
/// each pod's super-packet into segments in front of the device, all queued at once, and at
/// the smallest MSS Linux sends (48 bytes) one 64 KiB super-packet is ~1 370 segments: in
/// the default 500 slots its tail is dropped every time, and the sender's TCP retransmits a
/// sixth of what it sends. 2048 holds one whole.
pub(crate) const SEGMENTED_QUEUE_LEN: u32 = 2048;

/// The queue length [`settle`] keeps on a device whose data path was granted `offloads` (as
/// [`granted_offloads`](crate::backend::udp::granted_offloads) words them, `kernel` for the
/// kernel's WireGuard, empty while unknown): [`SEGMENTED_QUEUE_LEN`] on a TUN device without
/// vnet headers; with them every slot holds a whole super-packet, and otherwise the length is
/// left as it is.
pub(crate) fn queue_len_for(offloads: &str) -> Option<u32> {
    let segmented = !offloads.is_empty()
        && offloads != "kernel"
        && !offloads.split(", ").any(|o| o == "tun vnet_hdr");
    segmented.then_some(SEGMENTED_QUEUE_LEN)
}

/// Sets the MTU of device `index` (named `name` in errors and stale entries) to `mtu`, its
/// transmit queue length to `queue_len` when given, leaves `own.network()/32` its only IPv4
/// address (none without `own`) and, with `own6`, `own6.network()/128` its only routable
/// IPv6 address, and brings it up, counting every change in `outcome`. The device carries no
/// broadcast domain: the addresses only give locally originated packets a source inside the
/// own subnets. Each backend names the failure in its own error type `E`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn settle<E: From<NetlinkError> + From<TunFailure>>(
    handle: &Handle,
    index: u32,
    name: &str,
    mtu: u32,
    queue_len: Option<u32>,
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
    if let Some(q) = queue_len.filter(|&q| netlink::link_txqueuelen(&link) != Some(q)) {
        netlink::set_link_txqueuelen(handle, index, name, q).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::udp::granted_offloads;

    #[test]
    fn a_tun_device_without_vnet_headers_gets_a_queue_for_a_whole_super_packet() {
        for (vnet, gso, gro) in [(false, false, false), (false, true, true)] {
            assert_eq!(
                queue_len_for(&granted_offloads(vnet, gso, gro)),
                Some(SEGMENTED_QUEUE_LEN)
            );
        }
        // With vnet headers a slot holds a whole super-packet; the kernel's WireGuard has
        // no TUN ring; an unknown grant changes nothing.
        assert_eq!(queue_len_for(&granted_offloads(true, true, true)), None);
        assert_eq!(queue_len_for(&granted_offloads(true, false, false)), None);
        assert_eq!(queue_len_for("kernel"), None);
        assert_eq!(queue_len_for(""), None);
        // One 64 KiB super-packet at Linux's smallest MSS (48) fits.
        assert!(SEGMENTED_QUEUE_LEN as usize >= 65_536 / 48);
    }
}
