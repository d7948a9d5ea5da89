//! The WireGuard backend: Flannel's `wireguard` type. `Mode: separate` (the default) has
//! device `flannel-wg` for IPv4 (listen port 51820, lease `BackendData`
//! `{"PublicKey":"...","Port":51820}`) and `flannel-wg-v6` for IPv6 (51821, `BackendV6Data`);
//! `auto`, `ipv4` and `ipv6` have one `flannel-wg` for both families ([`peers`] says which
//! peer endpoint each mode uses). Each device is set up as flanneld sets it up: address
//! `<subnet>.0/32` (and `<subnet6>::/128`), one route for the whole `Network` (and
//! `IPv6Network`) on the device, and per peer lease a WireGuard peer (public key, endpoint,
//! allowed IPs = its pod subnets). One private key serves every device, as Flannel's one key
//! file does.
//!
//! Two data paths behind the backend ([`WireGuardDataPath`]): the kernel's WireGuard where the
//! kernel has the module, and a userspace one ([`userspace`]) built on the UDP backend's fast
//! TUN machinery otherwise. The private key lives in `--state-dir` ([`key`]); the device's
//! address and route go through the entry pipeline like every backend's.

pub mod kernel;
pub mod key;
pub mod peers;
mod userspace;

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, RwLock};

use ipnetwork::{Ipv4Network, Ipv6Network};
use rtnetlink::Handle;

pub use peers::{wireguard_peers, DeviceRole, OwnLease, PeerContext, PeerSpec, BACKEND_TYPE};
pub use userspace::WireGuardCounters;

use crate::backend::entries::{self, EntriesByPeer, KernelEntries, PeerEntries};
use crate::backend::pipeline::{self, Device, Devices, EntryPipeline};
use crate::backend::tun_device;
use crate::backend::udp::granted_offloads;
use crate::backend::udp::socket::UnderlaySocket;
use crate::backend::{BackendError, PeerChange, ReconcileReport};
use crate::config::{NetworkConfig, WireGuardConfig, WireGuardMode};
use crate::lease::{Lease, LeaseAttrs};
use crate::netlink::{self, ExternalInterface, Ipv4Route, Ipv6Route, NetlinkError};
use crate::wireguard_key::WireGuardKey;
use userspace::{next_table, PeerTable, Queue, SharedPeers, TunnSettings, UserspaceDataPath};

/// The IPv4 device, as Flannel names it.
pub const DEVICE_NAME: &str = "flannel-wg";
/// The IPv6 device of `Mode: separate`, as Flannel names it.
pub const DEVICE_NAME_V6: &str = "flannel-wg-v6";
/// Bytes Flannel reserves for the encapsulation (outer IPv6 header 40, UDP 8, WireGuard 32):
/// the device and pod MTU is the underlay's minus this.
pub const OVERHEAD: u32 = 80;

/// Which WireGuard data path runs (weftd's `--wireguard-datapath`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WireGuardDataPath {
    /// The kernel's where it has the module, else userspace.
    #[default]
    Auto,
    /// The kernel's; fails when the kernel lacks WireGuard.
    Kernel,
    /// Userspace, even where the kernel has WireGuard.
    Userspace,
}

impl std::str::FromStr for WireGuardDataPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(WireGuardDataPath::Auto),
            "kernel" => Ok(WireGuardDataPath::Kernel),
            "userspace" => Ok(WireGuardDataPath::Userspace),
            other => Err(format!(
                "{other:?} is not a WireGuard data path (auto, kernel, userspace)"
            )),
        }
    }
}

/// A failure of the WireGuard backend, naming the object and the operation.
#[derive(Debug, thiserror::Error)]
pub enum WireGuardError {
    /// The TUN device could not be created, attached to or configured.
    #[error("{op} WireGuard TUN device: {source}")]
    Tun {
        /// What was attempted.
        op: &'static str,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// The listen socket could not be opened.
    #[error("bind WireGuard UDP socket {addr}: {source}")]
    Socket {
        /// The address bound to.
        addr: SocketAddr,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// The pump threads could not be started.
    #[error("start WireGuard data path threads: {0}")]
    Threads(#[source] io::Error),
    /// `--wireguard-datapath kernel` on a kernel without WireGuard.
    #[error("kernel WireGuard requested, but the kernel cannot create a wireguard device: {0}")]
    NoKernelWireGuard(String),
    /// Configuring the kernel's WireGuard device over generic netlink failed.
    #[error("{op} kernel WireGuard device {device}: {source}")]
    Kernel {
        /// What was attempted.
        op: &'static str,
        /// The device.
        device: &'static str,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// The MTU cannot carry the encapsulation.
    #[error("MTU {mtu} of {iface} is too small for WireGuard (needs at least {min})")]
    Mtu {
        /// The interface (or `Backend.MTU`).
        iface: String,
        /// The MTU.
        mtu: u32,
        /// The smallest that works.
        min: u32,
    },
    /// The network config asks for a layout the node cannot give.
    #[error("wireguard: {0}")]
    Config(String),
    /// A netlink operation on the device, its address or its route failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

impl From<crate::backend::udp::TunFailure> for WireGuardError {
    fn from(f: crate::backend::udp::TunFailure) -> WireGuardError {
        WireGuardError::Tun {
            op: f.op,
            source: f.source,
        }
    }
}

/// One WireGuard device of the backend (`flannel-wg` or `flannel-wg-v6`) and its data path.
struct WgDevice {
    name: &'static str,
    role: DeviceRole,
    listen_port: u16,
    /// Where the userspace data path's sockets bind.
    bind: SocketAddr,
    /// Whether the device carries IPv4 and IPv6 pods.
    carries_v4: bool,
    carries_v6: bool,
    peers: SharedPeers,
    datapath: Option<UserspaceDataPath>,
    /// The kernel's WireGuard, when it carries the data path.
    kernel: Option<kernel::WireGuardNetlink>,
    /// Whether every kernel peer has been written since the device was (re)attached: a PSK or
    /// keepalive the kernel cannot show must be set once on peers a previous weftd left.
    kernel_peers_written: bool,
    tun_index: u32,
    granted: String,
    pipeline: EntryPipeline,
}

/// The devices of `mode` in a network with IPv4 (`ipv4`) and/or IPv6 (`ipv6`), as flanneld's
/// `RegisterNetwork` creates them: (name, role, listen port).
pub fn device_layout(
    mode: WireGuardMode,
    ipv4: bool,
    ipv6: bool,
    cfg: &WireGuardConfig,
) -> Vec<(&'static str, DeviceRole, u16)> {
    match mode {
        WireGuardMode::Separate => {
            let mut devs = Vec::new();
            if ipv4 {
                devs.push((DEVICE_NAME, DeviceRole::Ipv4, cfg.listen_port));
            }
            if ipv6 {
                devs.push((DEVICE_NAME_V6, DeviceRole::Ipv6, cfg.listen_port_v6));
            }
            devs
        }
        mode => vec![(DEVICE_NAME, DeviceRole::Single(mode), cfg.listen_port)],
    }
}

/// The WireGuard backend of one node.
pub struct WireGuardBackend {
    /// `Network`; `None` in an IPv6-only network.
    network: Option<Ipv4Network>,
    /// `IPv6Network`; `None` without IPv6.
    network6: Option<Ipv6Network>,
    /// This node's IPv6 subnet, from the lease.
    own6: Option<Ipv6Network>,
    mode: WireGuardMode,
    ext: ExternalInterface,
    mtu: u32,
    lease: OwnLease,
    settings: TunnSettings,
    next_index: Arc<AtomicU32>,
    counters: Arc<WireGuardCounters>,
    offloads: bool,
    devices: Vec<WgDevice>,
    /// The believed `wireguard` leases of the last pass, by subnet, which incremental passes
    /// (IPv4-only networks) update.
    leases: BTreeMap<Ipv4Network, Lease>,
}

impl std::fmt::Debug for WireGuardBackend {
    // Never the private key or the PSK.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireGuardBackend")
            .field("network", &self.network)
            .field("network6", &self.network6)
            .field("mode", &self.mode)
            .field("ext", &self.ext.name)
            .field("mtu", &self.mtu)
            .field("public_key", &self.lease.public_key)
            .field(
                "devices",
                &self
                    .devices
                    .iter()
                    .map(|d| (d.name, d.listen_port, d.tun_index))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Whether this kernel can make WireGuard devices: creates a device of kind `wireguard` and
/// removes it again, as `ip link add ... type wireguard` would.
async fn kernel_has_wireguard(handle: &Handle) -> Result<(), String> {
    let probe = "weft-wg-probe";
    // One left by a weftd that died mid-probe would make the probe fail with EEXIST.
    if let Ok(Some(link)) = netlink::link_by_name(handle, probe).await {
        let _ = netlink::del_link(handle, link.header.index, probe).await;
    }
    let msg = rtnetlink::LinkWireguard::new(probe).build();
    match netlink::add_link(handle, msg, "wireguard probe device").await {
        Ok(()) => {
            if let Ok(Some(link)) = netlink::link_by_name(handle, probe).await {
                let _ = netlink::del_link(handle, link.header.index, probe).await;
            }
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

impl WireGuardBackend {
    /// Loads or creates the private key (`WIREGUARD_KEY_FILE` or `<state_dir>/wireguard.key`),
    /// picks the data path (`choice`) and starts it on the devices `Mode` asks for. Must run
    /// inside a tokio runtime, in the network namespace the backend serves.
    pub async fn new(
        net: &NetworkConfig,
        cfg: &WireGuardConfig,
        ext: &ExternalInterface,
        state_dir: &Path,
        choice: WireGuardDataPath,
        offloads: bool,
    ) -> Result<Self, BackendError> {
        let underlay_mtu = cfg.mtu.unwrap_or(ext.mtu);
        let min = OVERHEAD + 68;
        if underlay_mtu < min {
            return Err(WireGuardError::Mtu {
                iface: ext.name.clone(),
                mtu: underlay_mtu,
                min,
            }
            .into());
        }
        let ipv4 = net.enable_ipv4;
        let network6 = net.ipv6.as_ref().map(|v6| v6.network);
        let ipv6 = network6.is_some();
        if ipv6 && ext.public_ipv6.is_none() {
            return Err(WireGuardError::Config(format!(
                "IPv6 is enabled but {} has no IPv6 underlay address",
                ext.name
            ))
            .into());
        }
        let path = key::key_path(state_dir, std::env::var_os(key::KEY_FILE_ENV).as_deref());
        let (private, created) = key::load_or_create(&path)?;
        let public_key = key::public_key(&private);
        if created {
            tracing::info!(path = %path.display(), public_key = %public_key, "generated WireGuard private key");
        } else {
            tracing::info!(path = %path.display(), public_key = %public_key, "loaded WireGuard private key");
        }
        let iface_v6 = ext
            .network_v6
            .map(|n| n.ip())
            .unwrap_or(Ipv6Addr::UNSPECIFIED);
        let devices = device_layout(cfg.mode, ipv4, ipv6, cfg)
            .into_iter()
            .map(|(name, role, listen_port)| {
                let (carries_v4, carries_v6) = match role {
                    DeviceRole::Ipv4 => (true, false),
                    DeviceRole::Ipv6 => (false, true),
                    DeviceRole::Single(_) => (ipv4, ipv6),
                };
                // The underlay families the device's endpoints can be of.
                let (under4, under6) = match role {
                    DeviceRole::Ipv4 => (true, false),
                    DeviceRole::Ipv6 => (false, true),
                    DeviceRole::Single(WireGuardMode::Ipv4) if ipv4 => (true, false),
                    DeviceRole::Single(WireGuardMode::Ipv6) if ipv6 => (false, true),
                    DeviceRole::Single(_) => (ipv4, ipv6),
                };
                let bind = match (under4, under6) {
                    // Peers of either family: one socket for both (IPv4 as v4-mapped).
                    (true, true) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), listen_port),
                    (false, true) => SocketAddr::new(IpAddr::V6(iface_v6), listen_port),
                    _ => SocketAddr::new(IpAddr::V4(ext.iface_addr), listen_port),
                };
                WgDevice {
                    name,
                    role,
                    listen_port,
                    bind,
                    carries_v4,
                    carries_v6,
                    peers: Arc::new(RwLock::new(Arc::new(PeerTable::default()))),
                    datapath: None,
                    kernel: None,
                    kernel_peers_written: false,
                    tun_index: 0,
                    granted: String::new(),
                    pipeline: EntryPipeline::default(),
                }
            })
            .collect();
        let handle = netlink::connect().map_err(WireGuardError::from)?;
        let mut backend = WireGuardBackend {
            network: ipv4.then_some(net.network),
            network6,
            own6: None,
            mode: cfg.mode,
            ext: ext.clone(),
            mtu: underlay_mtu - OVERHEAD,
            lease: OwnLease {
                public_key,
                public_ip: ext.public_ip,
                public_ipv6: ext.public_ipv6,
                ipv4,
                ipv6,
                mode: cfg.mode,
                listen_port: cfg.listen_port,
                listen_port_v6: cfg.listen_port_v6,
            },
            settings: TunnSettings {
                private,
                psk: cfg.psk.clone(),
                keepalive: cfg.persistent_keepalive,
            },
            next_index: Arc::new(AtomicU32::new(rand::random::<u32>() >> 8)),
            counters: Arc::new(WireGuardCounters::default()),
            offloads,
            devices,
            leases: BTreeMap::new(),
        };
        let kernel = match choice {
            WireGuardDataPath::Userspace => Err("--wireguard-datapath userspace".to_string()),
            WireGuardDataPath::Auto | WireGuardDataPath::Kernel => {
                match kernel_has_wireguard(&handle).await {
                    Ok(()) => {
                        let mut result = Ok(());
                        for i in 0..backend.devices.len() {
                            result = backend.start_kernel(&handle, i).await;
                            if result.is_err() {
                                break;
                            }
                        }
                        result
                    }
                    Err(why) => Err(why),
                }
            }
        };
        match kernel {
            Ok(()) => {}
            Err(why) if choice == WireGuardDataPath::Kernel => {
                return Err(WireGuardError::NoKernelWireGuard(why).into())
            }
            Err(why) => {
                tracing::info!(reason = %why, "kernel WireGuard unavailable; using the userspace data path");
                for i in 0..backend.devices.len() {
                    backend.start_userspace(&handle, i).await?;
                }
            }
        }
        Ok(backend)
    }

    /// Makes device `i` a kernel WireGuard device (replacing a TUN device of that name the
    /// userspace path left) with the private key and listen port. The error says why not.
    async fn start_kernel(&mut self, handle: &Handle, i: usize) -> Result<(), String> {
        let mtu = self.mtu;
        let dev = &mut self.devices[i];
        let name = dev.name;
        let existing = netlink::link_by_name(handle, name)
            .await
            .map_err(|e| e.to_string())?;
        let reuse = match &existing {
            Some(link) => {
                let is_wg = matches!(
                    crate::backend::leftovers::link_kind(link),
                    Some(rtnetlink::packet_route::link::InfoKind::Wireguard)
                );
                if !is_wg {
                    netlink::del_link(handle, link.header.index, name)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                is_wg
            }
            None => false,
        };
        if !reuse {
            let msg = rtnetlink::LinkWireguard::new(name).mtu(mtu).build();
            netlink::add_link(handle, msg, &format!("wireguard device {name}"))
                .await
                .map_err(|e| e.to_string())?;
        }
        let link = netlink::link_by_name(handle, name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{name} vanished right after creation"))?;
        let mut nl = kernel::WireGuardNetlink::open()
            .map_err(|e| format!("open generic netlink family wireguard: {e}"))?;
        nl.set_device(name, &self.settings.private, dev.listen_port)
            .map_err(|e| format!("set private key and listen port of {name}: {e}"))?;
        dev.tun_index = link.header.index;
        dev.kernel = Some(nl);
        dev.kernel_peers_written = false;
        dev.datapath = None;
        dev.granted = "kernel".to_string();
        tracing::info!(
            device = name,
            datapath = "kernel",
            listen_port = dev.listen_port,
            "WireGuard data path"
        );
        Ok(())
    }

    /// What peers of device `role` are computed against.
    fn context(&self, own: Ipv4Network, dev: &WgDevice) -> PeerContext {
        PeerContext {
            own: self.network.map(|_| own),
            own6: self.own6,
            ipv4: self.network.is_some(),
            ipv6: self.network6.is_some(),
            listen_port: dev.listen_port,
            local_v4: !self.ext.iface_addr.is_unspecified(),
            local_v6: self.network6.and(self.ext.public_ipv6),
        }
    }

    /// Reconciles device `i`'s kernel peers with `leases`: (present, added or updated,
    /// removed).
    fn sync_kernel_peers(
        &mut self,
        own: Ipv4Network,
        i: usize,
        leases: &[Lease],
    ) -> Result<(usize, usize, usize), WireGuardError> {
        let ctx = self.context(own, &self.devices[i]);
        let specs = wireguard_peers(&ctx, self.devices[i].role, leases);
        let psk = self.settings.psk.clone();
        let keepalive = self.settings.keepalive;
        let dev = &mut self.devices[i];
        let name = dev.name;
        let Some(nl) = dev.kernel.as_mut() else {
            return Ok((0, 0, 0));
        };
        let kernel_err = |op| {
            move |source| WireGuardError::Kernel {
                op,
                device: name,
                source,
            }
        };
        let actual = nl.peers(name).map_err(kernel_err("read peers of"))?;
        let mut changes = kernel::peer_changes(&specs, &actual);
        if !dev.kernel_peers_written {
            changes.upsert = specs.values().cloned().collect();
            changes.present = 0;
        }
        nl.apply(name, &changes, psk.as_ref(), keepalive)
            .map_err(kernel_err("set peers of"))?;
        dev.kernel_peers_written = true;
        Ok((changes.present, changes.upsert.len(), changes.remove.len()))
    }

    /// The lease value, as flanneld's `newSubnetAttrs` writes it (see [`OwnLease::attrs`]).
    pub fn lease_attrs(&self) -> LeaseAttrs {
        self.lease.attrs()
    }

    /// The pod MTU: the underlay's (`Backend.MTU` or the interface's) minus 80, as Flannel.
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// The backend's first device (`flannel-wg`, or `flannel-wg-v6` in an IPv6-only network
    /// of `Mode: separate`).
    pub fn device_name(&self) -> &str {
        self.devices.first().map_or(DEVICE_NAME, |d| d.name)
    }

    /// Whether `name` is one of the backend's devices.
    pub fn owns_device(&self, name: &str) -> bool {
        self.devices.iter().any(|d| d.name == name)
    }

    /// The node's public key.
    pub fn public_key(&self) -> WireGuardKey {
        self.lease.public_key
    }

    /// The data path's counters (all devices together).
    pub fn counters(&self) -> Arc<WireGuardCounters> {
        self.counters.clone()
    }

    /// The offloads the userspace data path was granted (`kernel` for the kernel's data path).
    pub fn granted_offloads(&self) -> &str {
        self.devices.first().map_or("", |d| d.granted.as_str())
    }

    /// Tells the backend this node's IPv6 subnet (from the lease).
    pub fn set_own_ipv6(&mut self, own6: Option<Ipv6Network>) {
        self.own6 = own6;
    }

    /// Brings every device (device, MTU, addresses, up, the cluster routes) in line with
    /// `own` (and the IPv6 subnet of [`WireGuardBackend::set_own_ipv6`]) and swaps in the
    /// peers of the `wireguard` leases among `peers`.
    pub async fn reconcile(
        &mut self,
        own: Ipv4Network,
        peers: &[Lease],
    ) -> Result<ReconcileReport, WireGuardError> {
        let handle = netlink::connect()?;
        let mut outcome = ReconcileReport::default();
        for i in 0..self.devices.len() {
            self.reconcile_device(&handle, own, i, peers, &mut outcome)
                .await?;
        }
        self.leases = peers
            .iter()
            .filter(|l| l.attrs.backend_type == BACKEND_TYPE)
            .map(|l| (l.subnet, l.clone()))
            .collect();
        Ok(outcome)
    }

    async fn reconcile_device(
        &mut self,
        handle: &Handle,
        own: Ipv4Network,
        i: usize,
        peers: &[Lease],
        outcome: &mut ReconcileReport,
    ) -> Result<(), WireGuardError> {
        let name = self.devices[i].name;
        if tun_device::replaced(handle, name, self.devices[i].tun_index).await? {
            tracing::warn!(
                device = name,
                "WireGuard device vanished or was replaced; recreating it"
            );
            if self.devices[i].kernel.is_some() {
                self.start_kernel(handle, i)
                    .await
                    .map_err(|why| WireGuardError::Kernel {
                        op: "recreate",
                        device: name,
                        source: io::Error::other(why),
                    })?;
            } else {
                self.devices[i].datapath = None;
                self.start_userspace(handle, i).await?;
            }
            outcome.added += 1;
        }
        let dev = &self.devices[i];
        let own4 = self.network.filter(|_| dev.carries_v4).map(|_| own);
        let own6 = self.own6.filter(|_| dev.carries_v6);
        tun_device::settle::<WireGuardError>(
            handle,
            dev.tun_index,
            name,
            self.mtu,
            own4,
            own6,
            outcome,
        )
        .await?;
        let entries = self.desired_entries(dev);
        let routes6 = self.desired_routes6(dev);
        let devices = device_of(dev);
        let tun = dev.tun_index;
        let view = pipeline::read_kernel(handle, &devices, |r| r.oif == tun).await?;
        let mut all = KernelEntries::merged(&entries);
        all.routes6 = routes6;
        let d = entries::diff(&all, &view.actual);
        let route = self.devices[i].pipeline.full(&devices, entries, d).await?;
        outcome.added += route.added;
        outcome.removed += route.removed;
        outcome.failed += route.failed;
        outcome.stale.extend(route.stale);
        let (kept, added, removed) = self.sync_peers(own, i, peers)?;
        outcome.desired += kept + added;
        outcome.present += kept;
        outcome.added += added;
        outcome.removed += removed;
        Ok(())
    }

    /// Applies a changed peer table: only the peers change (the routes do not depend on
    /// them). `None` when a full reconcile is due (always with IPv6: incremental passes know
    /// peers by their IPv4 subnet alone).
    pub async fn apply_changes(
        &mut self,
        own: Ipv4Network,
        changes: &[PeerChange],
    ) -> Result<Option<ReconcileReport>, WireGuardError> {
        if self.network6.is_some() || self.network.is_none() {
            return Ok(None);
        }
        let mut failed = 0;
        for dev in &mut self.devices {
            let devices = device_of(dev);
            let Some(route) = dev.pipeline.incremental(&devices, &[]).await? else {
                return Ok(None);
            };
            failed += route.failed;
        }
        for change in changes {
            match &change.lease {
                Some(l) if l.attrs.backend_type == BACKEND_TYPE => {
                    self.leases.insert(change.subnet, l.clone())
                }
                _ => self.leases.remove(&change.subnet),
            };
        }
        let peers: Vec<Lease> = self.leases.values().cloned().collect();
        let mut report = ReconcileReport {
            failed,
            ..Default::default()
        };
        for i in 0..self.devices.len() {
            let (kept, added, removed) = self.sync_peers(own, i, &peers)?;
            report.desired += kept + added;
            report.present += kept;
            report.added += added;
            report.removed += removed;
        }
        Ok(Some(report))
    }

    /// The IPv4 route on a device carrying IPv4: the cluster network (Flannel's `addRoute`),
    /// the device's rather than a peer's.
    fn desired_entries(&self, dev: &WgDevice) -> EntriesByPeer {
        let Some(network) = self.network.filter(|_| dev.carries_v4) else {
            return EntriesByPeer::new();
        };
        let route = Ipv4Route {
            dst: network,
            gateway: None,
            oif: dev.tun_index,
            onlink: false,
        };
        [(
            network,
            PeerEntries {
                route: Some(route),
                ..Default::default()
            },
        )]
        .into()
    }

    /// The IPv6 route on a device carrying IPv6: `IPv6Network` (Flannel's `addRoute`).
    fn desired_routes6(&self, dev: &WgDevice) -> std::collections::BTreeSet<Ipv6Route> {
        self.network6
            .filter(|_| dev.carries_v6)
            .map(|dst| Ipv6Route {
                dst,
                gateway: None,
                oif: dev.tun_index,
                onlink: false,
            })
            .into_iter()
            .collect()
    }

    /// Brings device `i`'s peers in line with `leases`: (present, added, removed).
    fn sync_peers(
        &mut self,
        own: Ipv4Network,
        i: usize,
        leases: &[Lease],
    ) -> Result<(usize, usize, usize), WireGuardError> {
        if self.devices[i].kernel.is_some() {
            self.sync_kernel_peers(own, i, leases)
        } else {
            Ok(self.swap_peers(own, i, leases))
        }
    }

    fn swap_peers(&self, own: Ipv4Network, i: usize, leases: &[Lease]) -> (usize, usize, usize) {
        let dev = &self.devices[i];
        let ctx = self.context(own, dev);
        let specs: BTreeMap<WireGuardKey, PeerSpec> = wireguard_peers(&ctx, dev.role, leases);
        let mut guard = match dev.peers.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let own4 = self.network.filter(|_| dev.carries_v4).map(|_| own);
        let own6 = self.own6.filter(|_| dev.carries_v6);
        let (table, counts) =
            next_table(own4, own6, &specs, &guard, &self.settings, &self.next_index);
        *guard = Arc::new(table);
        counts
    }

    async fn start_userspace(&mut self, handle: &Handle, i: usize) -> Result<(), WireGuardError> {
        let offloads = self.offloads;
        let counters = self.counters.clone();
        let dev = &mut self.devices[i];
        let tuns = tun_device::open_queues::<WireGuardError>(handle, dev.name, offloads).await?;
        let bind = dev.bind;
        let mut qs = Vec::with_capacity(tuns.len());
        for tun in tuns {
            let socket = UnderlaySocket::bind(bind, offloads)
                .map_err(|source| WireGuardError::Socket { addr: bind, source })?;
            qs.push(Queue { tun, socket });
        }
        let granted = qs.first().map_or_else(String::new, |q| {
            granted_offloads(q.tun.tcp_gso(), q.socket.gso(), q.socket.gro())
        });
        tracing::info!(
            device = dev.name,
            datapath = "userspace",
            queues = qs.len(),
            listen = %bind,
            offloads = %granted,
            "WireGuard data path"
        );
        dev.granted = granted;
        dev.tun_index = tun_device::index_of::<WireGuardError>(handle, dev.name).await?;
        dev.kernel = None;
        dev.datapath = Some(
            UserspaceDataPath::start(qs, dev.peers.clone(), counters)
                .map_err(WireGuardError::Threads)?,
        );
        Ok(())
    }
}

/// The device of `dev`, for the entry pipeline: its routes live on it.
fn device_of(dev: &WgDevice) -> Devices {
    Devices {
        overlay: None,
        overlay6: None,
        routes: Device {
            index: dev.tun_index,
            name: dev.name.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wg(mode: WireGuardMode) -> WireGuardConfig {
        WireGuardConfig {
            listen_port: 51820,
            listen_port_v6: 51821,
            psk: None,
            mtu: None,
            persistent_keepalive: 0,
            mode,
        }
    }

    #[test]
    fn devices_are_laid_out_as_flanneld_registers_them() {
        use WireGuardMode::*;
        let names = |mode, v4, v6| {
            device_layout(mode, v4, v6, &wg(mode))
                .into_iter()
                .map(|(n, _, port)| (n, port))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(Separate, true, false), [("flannel-wg", 51820)]);
        assert_eq!(
            names(Separate, true, true),
            [("flannel-wg", 51820), ("flannel-wg-v6", 51821)]
        );
        assert_eq!(names(Separate, false, true), [("flannel-wg-v6", 51821)]);
        for mode in [Auto, Ipv4, Ipv6] {
            assert_eq!(names(mode, true, true), [("flannel-wg", 51820)]);
            assert_eq!(names(mode, false, true), [("flannel-wg", 51820)]);
        }
    }
}
