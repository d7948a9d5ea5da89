//! The UDP backend: Flannel's userspace encapsulation (the pod's IP packet is the payload of
//! one UDP datagram, port 8285), with a data path built for speed: a multi-queue TUN device
//! `flannel0` with virtio-net headers, one pair of pump threads per queue, batched syscalls
//! and UDP GSO/GRO (see [`datapath`]).
//!
//! The TUN device is persistent: a restarted weftd re-attaches to it, so its address and the
//! cluster route stay in place and traffic resumes as soon as the new pumps run.

mod datapath;
mod forwarding;
pub(crate) mod offload;
pub(crate) mod packet;
pub(crate) mod pumps;
pub(crate) mod socket;

use std::collections::BTreeSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::{Arc, RwLock};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use rtnetlink::Handle;
use tun_rs::{DeviceBuilder, SyncDevice};

pub use datapath::UdpCounters;
pub use forwarding::{EditCounts, Edited, ForwardingTable, SharedTable, TableWriter};
pub use packet::{net_unreachable, parse_ipv4, Malformed};

use crate::backend::entries::{self, EntriesByPeer, KernelEntries, PeerEntries};
use crate::backend::pipeline::{self, Device, Devices, EntryPipeline};
use crate::backend::tun_device;
use crate::backend::{PeerChange, ReconcileReport};
use crate::lease::{Lease, LeaseAttrs};
use crate::netlink::{self, ExternalInterface, Ipv4Route, Ipv6Route, NetlinkError};
use datapath::{DataPath, Queue};
use socket::UnderlaySocket;

/// Name of the TUN device, as Flannel's.
pub const TUN_NAME: &str = "flannel0";
/// Bytes the encapsulation adds: outer IPv4 header (20) and UDP header (8).
pub const UDP_OVERHEAD: u32 = 28;
/// The lease `BackendType` of this backend.
pub const BACKEND_TYPE: &str = "udp";

/// A failure of the UDP backend, naming the object and the operation.
#[derive(Debug, thiserror::Error)]
pub enum UdpError {
    /// The TUN device could not be created, attached to or configured.
    #[error("{op} TUN device {TUN_NAME}: {source}")]
    Tun {
        /// What was attempted (`create`, `add queue to`, ...).
        op: &'static str,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// The underlay UDP socket could not be opened.
    #[error("bind UDP socket {addr}: {source}")]
    Socket {
        /// The address bound to.
        addr: SocketAddrV4,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// The pump threads could not be started.
    #[error("start UDP data path threads: {0}")]
    Threads(#[source] io::Error),
    /// The external interface's MTU cannot carry the encapsulation.
    #[error("interface {iface} MTU {mtu} is too small for UDP encapsulation (needs > {min})")]
    Mtu {
        /// The external interface.
        iface: String,
        /// Its MTU.
        mtu: u32,
        /// The smallest MTU that works.
        min: u32,
    },
    /// A netlink operation on `flannel0`, its address or its route failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

/// The UDP backend of one node.
pub struct UdpBackend {
    network: Ipv4Network,
    port: u16,
    ext: ExternalInterface,
    mtu: u32,
    /// Publishes the forwarding table to the pumps.
    table: TableWriter,
    counters: Arc<UdpCounters>,
    datapath: Option<DataPath>,
    tun_index: u32,
    /// Whether TUN and UDP offloads are used where the kernel has them.
    offloads: bool,
    /// The offloads the kernel granted when the data path started, as logged.
    granted: String,
    /// Applies the cluster route on `flannel0`.
    pipeline: EntryPipeline,
    /// `IPv6Network` and this node's IPv6 subnet on a dual-stack node: IPv6 pod packets take
    /// `flannel0` and the IPv4 underlay like IPv4 ones.
    ipv6: Option<(Ipv6Network, Option<Ipv6Network>)>,
}

impl std::fmt::Debug for UdpBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpBackend")
            .field("network", &self.network)
            .field("port", &self.port)
            .field("ext", &self.ext.name)
            .field("mtu", &self.mtu)
            .field("tun_index", &self.tun_index)
            .field("running", &self.datapath.is_some())
            .finish()
    }
}

impl UdpBackend {
    /// Creates (or re-attaches to) `flannel0` and starts the data path for the cluster
    /// network `network`, exchanging datagrams on UDP `port` of `ext`. Must run inside a
    /// tokio runtime, in the network namespace the backend serves. Without `offloads` the data
    /// path moves one packet per read and write, as Flannel's does.
    pub async fn new(
        network: Ipv4Network,
        port: u16,
        ext: &ExternalInterface,
        offloads: bool,
    ) -> Result<Self, UdpError> {
        let min = UDP_OVERHEAD + 68;
        if ext.mtu < min {
            return Err(UdpError::Mtu {
                iface: ext.name.clone(),
                mtu: ext.mtu,
                min,
            });
        }
        let mut backend = UdpBackend {
            network,
            port,
            ext: ext.clone(),
            mtu: ext.mtu - UDP_OVERHEAD,
            table: TableWriter::new(Arc::new(RwLock::new(Arc::new(ForwardingTable::default())))),
            counters: Arc::new(UdpCounters::default()),
            datapath: None,
            tun_index: 0,
            offloads,
            granted: String::new(),
            pipeline: EntryPipeline::default(),
            ipv6: None,
        };
        let handle = netlink::connect()?;
        backend.start_data_path(&handle).await?;
        Ok(backend)
    }

    /// Carries IPv6 pods of `network` too (a dual-stack network).
    pub fn with_ipv6(mut self, network: Option<Ipv6Network>) -> Self {
        self.ipv6 = network.map(|n| (n, None));
        self
    }

    /// Sets this node's own IPv6 subnet (from the lease).
    pub fn set_own_ipv6(&mut self, own6: Option<Ipv6Network>) {
        if let Some((_, own)) = &mut self.ipv6 {
            *own = own6;
        }
    }

    /// The lease value this node publishes: `{"PublicIP":..,"BackendType":"udp"}`, no
    /// BackendData (as Flannel's); a dual-stack node adds its `PublicIPv6`.
    pub fn lease_attrs(&self) -> LeaseAttrs {
        LeaseAttrs {
            public_ipv6: self.ipv6.and(self.ext.public_ipv6),
            ..LeaseAttrs::without_backend_data(self.ext.public_ip, BACKEND_TYPE)
        }
    }

    /// The pod MTU: the external interface's MTU minus the 28 bytes of IPv4 + UDP header.
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// The device this backend owns.
    pub fn device_name(&self) -> &str {
        TUN_NAME
    }

    /// The data path's packet and drop counters.
    pub fn counters(&self) -> Arc<UdpCounters> {
        self.counters.clone()
    }

    /// Brings `flannel0` (device, MTU, address `<subnet>.0/32`, the cluster route) in line
    /// with the own subnet `own` and swaps in a forwarding table built from the `udp` leases
    /// among `peers` (other types are ignored, as Flannel does). The report counts the peer
    /// entries of the table plus the kernel objects added or removed.
    pub async fn reconcile(
        &mut self,
        own: Ipv4Network,
        peers: &[Lease],
    ) -> Result<ReconcileReport, UdpError> {
        let handle = netlink::connect()?;
        let mut outcome = ReconcileReport::default();
        if tun_device::replaced(&handle, TUN_NAME, self.tun_index).await? {
            tracing::warn!(
                device = TUN_NAME,
                "TUN device vanished or was replaced; recreating it"
            );
            self.datapath = None;
            self.start_data_path(&handle).await?;
            outcome.added += 1;
        }
        tun_device::settle::<UdpError>(
            &handle,
            self.tun_index,
            TUN_NAME,
            self.mtu,
            tun_device::queue_len_for(&self.granted),
            Some(own),
            None,
            &mut outcome,
        )
        .await?;
        accept_local_source();
        let (entries, table) = self.desired(peers);
        let devices = self.devices();
        let tun = self.tun_index;
        let view = pipeline::read_kernel(&handle, &devices, false, |r| r.oif == tun).await?;
        let mut all = KernelEntries::merged(&entries);
        all.routes6 = self.desired_routes6();
        let d = entries::diff(&all, &view.actual);
        let route = self
            .pipeline
            .full(&devices, entries, Default::default(), d)
            .await?;
        let mut table = ForwardingTable::new(own, table);
        if let Some((_, Some(own6))) = self.ipv6 {
            table = table.with_ipv6(
                own6,
                peers
                    .iter()
                    .filter(|l| l.attrs.backend_type == BACKEND_TYPE)
                    .filter_map(|l| Some((l.ipv6_subnet?, l.attrs.public_ip))),
            );
        }
        // The route is the device's, not a peer's: counted only when it had to change.
        outcome.added += route.added;
        outcome.removed += route.removed;
        outcome.failed += route.failed;
        outcome.stale.extend(route.stale);
        let (present, added, removed) = self.table.replace(table);
        outcome.desired += present + added;
        outcome.present += present;
        outcome.added += added;
        outcome.removed += removed;
        Ok(outcome)
    }

    /// The desired state: one weft route on `flannel0` (the cluster network), and the peers
    /// that run this backend (the forwarding table's entries).
    fn desired(&self, peers: &[Lease]) -> (EntriesByPeer, Vec<(Ipv4Network, Ipv4Addr)>) {
        let route = Ipv4Route {
            dst: self.network,
            gateway: None,
            oif: self.tun_index,
            onlink: false,
            nexthop: None,
        };
        let entries = [(
            self.network,
            PeerEntries {
                route: Some(route),
                ..Default::default()
            },
        )]
        .into();
        let table = peers
            .iter()
            .filter(|l| l.attrs.backend_type == BACKEND_TYPE)
            .map(|l| (l.subnet, l.attrs.public_ip))
            .collect();
        (entries, table)
    }

    /// With IPv6: the route of `IPv6Network` on `flannel0`, so IPv6 pod packets take the
    /// IPv4 underlay like IPv4 ones.
    fn desired_routes6(&self) -> BTreeSet<Ipv6Route> {
        self.ipv6
            .map(|(network6, _)| Ipv6Route {
                dst: network6,
                gateway: None,
                oif: self.tun_index,
                onlink: false,
            })
            .into_iter()
            .collect()
    }

    fn devices(&self) -> Devices {
        Devices {
            overlay6: None,
            overlay: None,
            routes: Device {
                index: self.tun_index,
                name: TUN_NAME.to_string(),
            },
        }
    }

    /// Applies peer changes: only the forwarding table changes (the cluster route does not
    /// depend on peers). `None` when a full reconcile is due.
    pub async fn apply_changes(
        &mut self,
        own: Ipv4Network,
        changes: &[PeerChange],
    ) -> Result<Option<ReconcileReport>, UdpError> {
        // With IPv6 the table needs the node's own IPv6 subnet, which a full pass brings.
        if matches!(self.ipv6, Some((_, None))) {
            return Ok(None);
        }
        let Some(route) = self.pipeline.incremental(&self.devices(), &[], &[]).await? else {
            return Ok(None);
        };
        if self.table.shared_own_subnet() != Some(own) {
            return Ok(None);
        }
        let mut edits: Vec<(IpNetwork, Option<Ipv4Addr>)> = Vec::with_capacity(changes.len());
        for change in changes {
            let ip = change
                .lease
                .as_ref()
                .filter(|l| l.attrs.backend_type == BACKEND_TYPE)
                .map(|l| l.attrs.public_ip);
            edits.push((change.subnet.into(), ip));
            if let (Some(_), Some(subnet6)) = (self.ipv6, change.subnet6) {
                edits.push((subnet6.into(), ip));
            }
        }
        let counts = self.table.apply(&edits);
        // A peer whose public IP changed counts as one entry removed and one added, as in a
        // full pass.
        let added = counts.added + counts.replaced;
        Ok(Some(ReconcileReport {
            failed: route.failed,
            desired: counts.len,
            present: counts.len.saturating_sub(added),
            added,
            removed: counts.removed + counts.replaced,
            ..Default::default()
        }))
    }

    /// The offloads the kernel granted the running data path (`tun vnet_hdr, udp gso, udp
    /// gro`, or `none`).
    pub fn granted_offloads(&self) -> &str {
        &self.granted
    }

    async fn start_data_path(&mut self, handle: &Handle) -> Result<(), UdpError> {
        let tuns = tun_device::open_queues::<UdpError>(handle, TUN_NAME, self.offloads).await?;
        let mut qs = Vec::with_capacity(tuns.len());
        let bind = SocketAddrV4::new(self.ext.iface_addr, self.port);
        for tun in tuns {
            let socket = UnderlaySocket::bind(bind, self.offloads)
                .map_err(|source| UdpError::Socket { addr: bind, source })?;
            qs.push(Queue { tun, socket });
        }
        let offloads = qs.first().map_or_else(String::new, |q| {
            granted_offloads(q.tun.tcp_gso(), q.socket.gso(), q.socket.gro())
        });
        tracing::info!(
            device = TUN_NAME,
            queues = qs.len(),
            offloads = %offloads,
            "UDP data path"
        );
        self.granted = offloads;
        self.tun_index = tun_device::index_of::<UdpError>(handle, TUN_NAME).await?;
        self.datapath = Some(
            DataPath::start(
                qs,
                self.port,
                self.table.shared().clone(),
                self.counters.clone(),
            )
            .map_err(UdpError::Threads)?,
        );
        Ok(())
    }
}

/// Lets the kernel accept packets from `flannel0` whose source is a local address: the ICMP
/// errors the data path writes come from `<subnet>.0`, which is `flannel0`'s own address, and
/// are otherwise dropped as martians. Failure only costs those ICMP errors, so it is logged.
fn accept_local_source() {
    let path = format!("/proc/sys/net/ipv4/conf/{TUN_NAME}/accept_local");
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "1") {
        return;
    }
    if let Err(e) = std::fs::write(&path, "1") {
        tracing::warn!(error = %e, path, "cannot enable accept_local; ICMP net-unreachable will not reach pods");
    }
}

/// The offloads the kernel granted, as an operator reads them in the log
/// (`tun vnet_hdr, udp gso, udp gro`, or `none`).
pub(crate) fn granted_offloads(vnet_hdr: bool, gso: bool, gro: bool) -> String {
    let granted: Vec<&str> = [
        (vnet_hdr, "tun vnet_hdr"),
        (gso, "udp gso"),
        (gro, "udp gro"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    if granted.is_empty() {
        "none".to_string()
    } else {
        granted.join(", ")
    }
}

/// A TUN operation that failed: what was attempted, and the kernel's answer.
#[derive(Debug)]
pub(crate) struct TunFailure {
    /// `create`, `add queue to`, ...
    pub op: &'static str,
    /// The kernel's answer.
    pub source: io::Error,
}

impl From<TunFailure> for UdpError {
    fn from(f: TunFailure) -> UdpError {
        UdpError::Tun {
            op: f.op,
            source: f.source,
        }
    }
}

/// Opens `queues` queues of the persistent multi-queue TUN device `name`, with virtio-net
/// headers when `offloads` and the kernel takes them, all non-blocking. Shared by every
/// userspace data path (UDP, WireGuard).
pub(crate) fn open_tun_device(
    name: &str,
    queues: usize,
    offloads: bool,
) -> Result<Vec<SyncDevice>, TunFailure> {
    let build = |offload: bool| {
        DeviceBuilder::new()
            .name(name)
            .multi_queue(true)
            .offload(offload)
            .build_sync()
    };
    let first = match build(offloads) {
        Ok(dev) => dev,
        Err(e) if offloads && e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::warn!(error = %e, device = name, "TUN offloads unavailable; running without vnet headers");
            build(false).map_err(|source| TunFailure {
                op: "create",
                source,
            })?
        }
        Err(source) => {
            return Err(TunFailure {
                op: "create",
                source,
            })
        }
    };
    // The kernel keeps a multi-queue device's flags while another queue is attached (a data
    // path process still ending, started with or without offloads): this queue then reads
    // and writes in the old framing. Refused here, so the caller recreates the device.
    if vnet_header(&first).map_err(|source| TunFailure {
        op: "read the flags of",
        source,
    })? != first.tcp_gso()
    {
        return Err(TunFailure {
            op: "attach with its own virtio-net header setting to",
            source: io::Error::from_raw_os_error(libc::EBUSY),
        });
    }
    first.persist().map_err(|source| TunFailure {
        op: "make persistent",
        source,
    })?;
    let mut all = Vec::with_capacity(queues);
    for _ in 1..queues {
        all.push(first.try_clone().map_err(|source| TunFailure {
            op: "add queue to",
            source,
        })?);
    }
    all.insert(0, first);
    for dev in &all {
        dev.set_nonblocking(true).map_err(|source| TunFailure {
            op: "set non-blocking",
            source,
        })?;
    }
    Ok(all)
}

/// Whether the TUN device behind `dev` frames packets with a virtio-net header, as the kernel
/// says (`TUNGETIFF`), not as asked.
fn vnet_header(dev: &SyncDevice) -> io::Result<bool> {
    // SAFETY: ifreq is plain old data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: `dev` owns a live TUN descriptor; TUNGETIFF fills `req`, which outlives the call.
    let rc = unsafe { libc::ioctl(dev.as_raw_fd(), libc::TUNGETIFF, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TUNGETIFF wrote the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    Ok(libc::c_int::from(flags) & libc::IFF_VNET_HDR != 0)
}

#[cfg(test)]
mod tests {
    use super::granted_offloads;

    #[test]
    fn granted_offloads_read_as_the_log_shows_them() {
        assert_eq!(
            granted_offloads(true, true, true),
            "tun vnet_hdr, udp gso, udp gro"
        );
        assert_eq!(granted_offloads(true, false, true), "tun vnet_hdr, udp gro");
        assert_eq!(granted_offloads(false, false, false), "none");
    }
}
