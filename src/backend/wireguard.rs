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
//! TUN machinery otherwise. The userspace one runs in its own process per device
//! ([`datapath`]), as wireguard-go does, which weftd starts once and configures over a unix
//! socket in `--state-dir` ([`control`], [`uapi`]): a weftd restart finds it there and only
//! brings its peers up to date. The private key lives in `--state-dir` ([`key`]); the
//! device's address and route go through the entry pipeline like every backend's.

pub mod control;
pub mod datapath;
pub mod kernel;
pub mod key;
pub mod peers;
pub mod uapi;
mod userspace;

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use rtnetlink::Handle;

pub use control::DataPathCounters;
pub use peers::{
    wireguard_peers, DesiredPeers, DeviceRole, OwnLease, PeerContext, PeerSpec, BACKEND_TYPE,
};
pub use userspace::WireGuardCounters;

use crate::backend::entries::{self, EntriesByPeer, KernelEntries, PeerEntries};
use crate::backend::pipeline::{self, Device, Devices, EntryPipeline};
use crate::backend::tun_device;
use crate::backend::{BackendError, PeerChange, ReconcileReport};
use crate::config::{NetworkConfig, WireGuardConfig, WireGuardMode};
use crate::lease::{Lease, LeaseAttrs};
use crate::netlink::{self, ExternalInterface, Ipv4Route, Ipv6Route, NetlinkError};
use crate::wireguard_key::{SecretKey, WireGuardKey};
use control::ControlSocket;
use datapath::DataPathArgs;
use uapi::{PeerSet, SetRequest};

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
    /// The userspace data path's control socket failed.
    #[error("{op} WireGuard data path socket {}: {source}", path.display())]
    Control {
        /// What was attempted.
        op: &'static str,
        /// The socket.
        path: PathBuf,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// The userspace data path refused a request, answered nonsense or did not start.
    #[error("WireGuard data path at {}: {reason}", path.display())]
    Refused {
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
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
    /// The userspace data path process's socket, when it carries the data path.
    datapath: Option<ControlSocket>,
    /// That process, when this weftd started it (reaped when it is stopped).
    child: Option<Child>,
    /// The peers the data path (process or kernel) holds as this weftd last set them, kept by
    /// lease so a lease change touches only its peers; `None` until a full pass since the
    /// device or process was found or started has set them all, or after a failed write.
    peers: Option<DesiredPeers>,
    /// The kernel's WireGuard, when it carries the data path.
    kernel: Option<kernel::WireGuardNetlink>,
    /// Whether every kernel peer has been written since the device was (re)attached: a PSK or
    /// keepalive the kernel cannot show must be set once on peers a previous weftd left.
    kernel_peers_written: bool,
    tun_index: u32,
    granted: String,
    pipeline: EntryPipeline,
}

/// The error of kernel operation `op` on WireGuard device `device`.
fn kernel_error(device: &'static str, op: &'static str) -> impl Fn(io::Error) -> WireGuardError {
    move |source| WireGuardError::Kernel { op, device, source }
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

/// What every peer is configured with, besides its lease.
pub struct TunnSettings {
    /// This node's private key.
    pub private: SecretKey,
    /// `Backend.PSK`.
    pub psk: Option<SecretKey>,
    /// `Backend.PersistentKeepaliveInterval` in seconds, 0 for none.
    pub keepalive: u16,
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
    state_dir: PathBuf,
    counters: Arc<DataPathCounters>,
    offloads: bool,
    devices: Vec<WgDevice>,
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
                    datapath: None,
                    child: None,
                    peers: None,
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
            state_dir: state_dir.to_path_buf(),
            counters: Arc::new(DataPathCounters::default()),
            offloads,
            devices,
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
        self.stop_datapath(i).map_err(|e| e.to_string())?;
        self.counters.attach(self.devices[i].name, None);
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

    /// Reconciles device `i`'s kernel peers with `desired`, read back from the kernel:
    /// (present, added or updated, removed).
    fn sync_kernel_peers(
        &mut self,
        i: usize,
        desired: DesiredPeers,
    ) -> Result<(usize, usize, usize), WireGuardError> {
        let psk = self.settings.psk.clone();
        let keepalive = self.settings.keepalive;
        let dev = &mut self.devices[i];
        dev.peers = None;
        let name = dev.name;
        let Some(nl) = dev.kernel.as_mut() else {
            return Ok((0, 0, 0));
        };
        let actual = nl
            .peers(name)
            .map_err(kernel_error(name, "read peers of"))?;
        let mut changes = kernel::peer_changes(desired.peers(), &actual);
        if !dev.kernel_peers_written {
            changes.upsert = desired.peers().values().cloned().collect();
            changes.present = 0;
        }
        nl.apply(name, &changes, psk.as_ref(), keepalive)
            .map_err(kernel_error(name, "set peers of"))?;
        dev.kernel_peers_written = true;
        dev.peers = Some(desired);
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

    /// The data path's counters, all devices together (fetched from the data path processes
    /// at every scrape).
    pub fn counters(&self) -> Arc<DataPathCounters> {
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
        let lost = self.devices[i].datapath.is_some() && self.datapath_lost(i);
        if lost || tun_device::replaced(handle, name, self.devices[i].tun_index).await? {
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
            tun_device::queue_len_for(&dev.granted),
            own4,
            own6,
            outcome,
        )
        .await?;
        let entries = self.desired_entries(dev);
        let routes6 = self.desired_routes6(dev);
        let devices = device_of(dev);
        let tun = dev.tun_index;
        let view = pipeline::read_kernel(handle, &devices, false, |r| r.oif == tun).await?;
        let mut all = KernelEntries::merged(&entries);
        all.routes6 = routes6;
        let d = entries::diff(&all, &view.actual);
        let route = self.devices[i]
            .pipeline
            .full(&devices, entries, Default::default(), d)
            .await?;
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
    /// them), in either family. `None` when a full reconcile is due.
    pub async fn apply_changes(
        &mut self,
        own: Ipv4Network,
        changes: &[PeerChange],
    ) -> Result<Option<ReconcileReport>, WireGuardError> {
        // With IPv6 the peers' allowed IPs need the node's own IPv6 subnet, which a full
        // pass brings.
        if self.network6.is_some() && self.own6.is_none() {
            return Ok(None);
        }
        // Incremental only on what a full pass set on every device.
        if self.devices.iter().any(|d| d.peers.is_none()) {
            return Ok(None);
        }
        let mut failed = 0;
        for dev in &mut self.devices {
            let devices = device_of(dev);
            let Some(route) = dev.pipeline.incremental(&devices, &[], &[]).await? else {
                return Ok(None);
            };
            failed += route.failed;
        }
        let mut report = ReconcileReport {
            failed,
            ..Default::default()
        };
        for i in 0..self.devices.len() {
            let (kept, added, removed) = self.apply_peer_changes(own, i, changes)?;
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
            nexthop: None,
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

    /// Brings device `i`'s peers in line with `leases`, read back from the data path:
    /// (present, added, removed).
    fn sync_peers(
        &mut self,
        own: Ipv4Network,
        i: usize,
        leases: &[Lease],
    ) -> Result<(usize, usize, usize), WireGuardError> {
        let ctx = self.context(own, &self.devices[i]);
        let desired = DesiredPeers::new(&ctx, self.devices[i].role, leases);
        if self.devices[i].kernel.is_some() {
            self.sync_kernel_peers(i, desired)
        } else {
            self.sync_datapath_peers(own, i, desired)
        }
    }

    /// Sends device `i`'s userspace data path the peers that differ from what it answers to
    /// `get`: one `set=1` with the upserts and removals; peers that stay keep their sessions.
    fn sync_datapath_peers(
        &mut self,
        own: Ipv4Network,
        i: usize,
        desired: DesiredPeers,
    ) -> Result<(usize, usize, usize), WireGuardError> {
        let dev = &self.devices[i];
        let Some(control) = dev.datapath.clone() else {
            return Ok((0, 0, 0));
        };
        let mut own_subnets = Vec::new();
        if let Some(own4) = self.network.filter(|_| dev.carries_v4).map(|_| own) {
            own_subnets.push(IpNetwork::V4(own4));
        }
        if let Some(own6) = self.own6.filter(|_| dev.carries_v6) {
            own_subnets.push(IpNetwork::V6(own6));
        }
        let actual: BTreeMap<WireGuardKey, kernel::KernelPeer> = control
            .get()?
            .peers
            .into_iter()
            .map(|(k, p)| {
                let peer = kernel::KernelPeer {
                    endpoint: p.endpoint,
                    allowed: p.allowed,
                };
                (k, peer)
            })
            .collect();
        let mut changes = kernel::peer_changes(desired.peers(), &actual);
        if dev.peers.is_none() {
            // The PSK and keepalive cannot be read back: set every peer once.
            changes.upsert = desired.peers().values().cloned().collect();
            changes.present = 0;
        }
        let req = self.peer_request(&changes, own_subnets);
        let dev = &mut self.devices[i];
        // Until the set succeeds, what the process holds is unknown.
        dev.peers = None;
        control.set(&req)?;
        dev.peers = Some(desired);
        Ok((changes.present, changes.upsert.len(), changes.remove.len()))
    }

    /// Applies lease `changes` to device `i`'s peers without reading them back: only the
    /// peers the changed leases make are computed and written (one `set=1` to the userspace
    /// data path, or one netlink exchange with the kernel). (present, added or updated,
    /// removed).
    fn apply_peer_changes(
        &mut self,
        own: Ipv4Network,
        i: usize,
        changes: &[PeerChange],
    ) -> Result<(usize, usize, usize), WireGuardError> {
        let ctx = self.context(own, &self.devices[i]);
        let role = self.devices[i].role;
        // Taken: until the write succeeds, what the data path holds is unknown.
        let Some(mut peers) = self.devices[i].peers.take() else {
            return Ok((0, 0, 0));
        };
        let mut edits: BTreeMap<WireGuardKey, Option<PeerSpec>> = BTreeMap::new();
        for c in changes {
            edits.extend(peers.set(&ctx, role, (c.subnet, c.subnet6), c.lease.as_ref()));
        }
        let mut out = kernel::PeerChanges::default();
        for (key, spec) in edits {
            match spec {
                Some(spec) => out.upsert.push(spec),
                None => out.remove.push(key),
            }
        }
        out.present = peers.peers().len().saturating_sub(out.upsert.len());
        if !out.upsert.is_empty() || !out.remove.is_empty() {
            let req = self.peer_request(&out, Vec::new());
            let (psk, keepalive) = (self.settings.psk.clone(), self.settings.keepalive);
            let dev = &mut self.devices[i];
            let name = dev.name;
            if let Some(nl) = dev.kernel.as_mut() {
                nl.apply(name, &out, psk.as_ref(), keepalive)
                    .map_err(kernel_error(name, "set peers of"))?;
            } else if let Some(control) = &dev.datapath {
                control.set(&req)?;
            }
        }
        self.devices[i].peers = Some(peers);
        Ok((out.present, out.upsert.len(), out.remove.len()))
    }

    /// The `set=1` request of `changes` (an empty `own_subnets` keeps the data path's).
    fn peer_request(
        &self,
        changes: &kernel::PeerChanges,
        own_subnets: Vec<IpNetwork>,
    ) -> SetRequest {
        let mut req = SetRequest {
            own_subnets,
            ..Default::default()
        };
        for spec in &changes.upsert {
            let mut peer = PeerSet::new(spec.key);
            peer.endpoint = Some(spec.endpoint);
            peer.replace_allowed_ips = true;
            peer.allowed = spec.allowed.clone();
            peer.keepalive = Some(self.settings.keepalive);
            peer.psk = Some(self.settings.psk.clone());
            req.peers.push(peer);
        }
        for key in &changes.remove {
            let mut peer = PeerSet::new(*key);
            peer.remove = true;
            req.peers.push(peer);
        }
        req
    }

    /// Whether device `i`'s data path process has exited (the device went with it).
    fn datapath_lost(&mut self, i: usize) -> bool {
        let dev = &mut self.devices[i];
        match dev.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => {
                tracing::warn!(device = dev.name, %status, "the WireGuard data path process exited");
                dev.child = None;
                true
            }
            _ => dev.datapath.as_ref().is_some_and(|c| c.pid().is_none()),
        }
    }

    /// Stops device `i`'s userspace data path process, if one runs, and removes its socket.
    fn stop_datapath(&mut self, i: usize) -> Result<(), WireGuardError> {
        let dev = &mut self.devices[i];
        let socket = control::socket_path(&self.state_dir, dev.name);
        control::stop(&socket, dev.child.as_mut())?;
        dev.child = None;
        dev.datapath = None;
        dev.peers = None;
        Ok(())
    }

    /// Why the data path process answering `view` is not device `i`'s (another device,
    /// address, port or key, or offloads where none are asked for), if it is not.
    fn incompatible(&self, view: &uapi::DeviceView, i: usize) -> Option<String> {
        let dev = &self.devices[i];
        if view.device != dev.name {
            return Some(format!("it owns device {:?}", view.device));
        }
        if view.bind != Some(dev.bind) || view.listen_port != dev.listen_port {
            return Some(format!("it is bound to {:?}, not {}", view.bind, dev.bind));
        }
        match view.offloads_asked {
            Some(asked) if asked != self.offloads => {
                let (was, now) = if asked {
                    ("with offloads", "--no-udp-offloads asks for none")
                } else {
                    ("without offloads", "weftd now asks for them")
                };
                return Some(format!("it was started {was}; {now}"));
            }
            None if !self.offloads && view.offloads != "none" => {
                return Some(format!(
                    "it uses offloads ({}); --no-udp-offloads asks for none",
                    view.offloads
                ));
            }
            _ => {}
        }
        match view.public_key {
            Some(k) if k != self.lease.public_key => Some(format!("it holds another key ({k})")),
            _ => None,
        }
    }

    /// Finds the data path process of device `i` a previous weftd started and keeps it when
    /// it is this device's and the device is there; otherwise stops it and starts a new one.
    /// Then sets the private key.
    async fn start_userspace(&mut self, handle: &Handle, i: usize) -> Result<(), WireGuardError> {
        let name = self.devices[i].name;
        let args = DataPathArgs {
            socket: control::socket_path(&self.state_dir, name),
            device: name.to_string(),
            bind: self.devices[i].bind,
            offloads: self.offloads,
        };
        let control = ControlSocket::new(args.socket.clone());
        let device = netlink::link_by_name(handle, name).await?;
        let mut granted = None;
        if let Ok(view) = control.get() {
            match (self.incompatible(&view, i), device) {
                (None, Some(_)) => granted = Some(view.offloads),
                (why, _) => {
                    let why = why.unwrap_or_else(|| format!("{name} is gone"));
                    tracing::info!(device = name, reason = %why, "replacing the WireGuard data path process");
                }
            }
        }
        let reused = granted.is_some();
        if !reused {
            self.stop_datapath(i)?;
            ensure_private_dir(&self.state_dir)?;
            self.devices[i].child = Some(control::spawn(&args)?);
            granted = Some(control.get()?.offloads);
        }
        let listen_port = self.devices[i].listen_port;
        control.set(&SetRequest {
            private_key: Some(self.settings.private.clone()),
            listen_port: Some(listen_port),
            ..Default::default()
        })?;
        let tun_index = tun_device::index_of::<WireGuardError>(handle, name).await?;
        self.counters.attach(name, Some(control.clone()));
        let dev = &mut self.devices[i];
        dev.granted = granted.unwrap_or_default();
        dev.tun_index = tun_index;
        dev.kernel = None;
        dev.peers = None;
        tracing::info!(
            device = name,
            datapath = "userspace",
            pid = control.pid(),
            reused,
            listen = %dev.bind,
            offloads = %dev.granted,
            "WireGuard data path"
        );
        dev.datapath = Some(control);
        Ok(())
    }
}

/// Creates `dir` (0700) if it is missing: the data path's socket goes there.
fn ensure_private_dir(dir: &Path) -> Result<(), WireGuardError> {
    use std::os::unix::fs::PermissionsExt;
    if dir.exists() {
        return Ok(());
    }
    let err = |op| {
        move |source| WireGuardError::Control {
            op,
            path: dir.to_path_buf(),
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(err("create directory of"))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(err("restrict directory of"))
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
