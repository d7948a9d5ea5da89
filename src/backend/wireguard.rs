//! The WireGuard backend: Flannel's `wireguard` type. Device `flannel-wg` (IPv4; `flannel-wg-v6`
//! is the IPv6 device of `Mode: separate`), listen port 51820, lease `BackendData`
//! `{"PublicKey":"...","Port":51820}`, and the device set up as flanneld sets it up: address
//! `<subnet>.0/32`, one route for the whole `Network` on the device, and per peer lease a
//! WireGuard peer (public key, endpoint `PublicIP:Port`, allowed IPs = its pod subnet).
//!
//! Two data paths behind the backend ([`WireGuardDataPath`]): the kernel's WireGuard where the
//! kernel has the module, and a userspace one ([`userspace`]) built on the UDP backend's fast
//! TUN machinery otherwise. The userspace one runs in its own process ([`datapath`]), as
//! wireguard-go does, which weftd starts once and configures over a unix socket in
//! `--state-dir` ([`control`], [`uapi`]): a weftd restart finds it there and only brings its
//! peers up to date. The private key lives in `--state-dir` ([`key`]); the device's address
//! and route go through the entry pipeline like every backend's.

pub mod control;
pub mod datapath;
pub mod kernel;
pub mod key;
pub mod peers;
pub mod uapi;
mod userspace;

use std::collections::BTreeMap;
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;

use ipnetwork::{IpNetwork, Ipv4Network};
use rtnetlink::Handle;

pub use control::DataPathCounters;
pub use peers::{wireguard_peers, PeerSpec, BACKEND_TYPE};
pub use userspace::WireGuardCounters;

use crate::backend::entries::{self, EntriesByPeer, KernelEntries, PeerEntries};
use crate::backend::pipeline::{self, Device, Devices, EntryPipeline};
use crate::backend::tun_device;
use crate::backend::{BackendError, PeerChange, ReconcileReport};
use crate::config::WireGuardConfig;
use crate::lease::{Lease, LeaseAttrs};
use crate::netlink::{self, ExternalInterface, Ipv4Route, NetlinkError};
use crate::wireguard_key::{SecretKey, WireGuardKey};
use control::ControlSocket;
use datapath::DataPathArgs;
use uapi::{PeerSet, SetRequest};

/// The IPv4 device, as Flannel names it.
pub const DEVICE_NAME: &str = "flannel-wg";
/// The IPv6 device of `Mode: separate`, as Flannel names it (dual stack plugs in here).
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
    #[error("{op} TUN device {DEVICE_NAME}: {source}")]
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
        addr: SocketAddrV4,
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
    #[error("{op} kernel WireGuard device {DEVICE_NAME}: {source}")]
    Kernel {
        /// What was attempted.
        op: &'static str,
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
    network: Ipv4Network,
    listen_port: u16,
    ext: ExternalInterface,
    mtu: u32,
    public_key: WireGuardKey,
    settings: TunnSettings,
    state_dir: PathBuf,
    counters: Arc<DataPathCounters>,
    /// The userspace data path process's socket, when it carries the data path.
    datapath: Option<ControlSocket>,
    /// That process, when this weftd started it (reaped when it is stopped).
    child: Option<Child>,
    /// The peers the data path process holds as this weftd last set them; `None` until the
    /// first pass since it was found or started has set them all.
    datapath_peers: Option<BTreeMap<WireGuardKey, PeerSpec>>,
    /// The kernel's WireGuard, when it carries the data path.
    kernel: Option<kernel::WireGuardNetlink>,
    /// Whether every kernel peer has been written since the device was (re)attached: a PSK or
    /// keepalive the kernel cannot show must be set once on peers a previous weftd left.
    kernel_peers_written: bool,
    tun_index: u32,
    offloads: bool,
    granted: String,
    pipeline: EntryPipeline,
    /// The believed `wireguard` leases of the last pass, by subnet, which incremental passes
    /// update.
    leases: BTreeMap<Ipv4Network, Lease>,
}

impl std::fmt::Debug for WireGuardBackend {
    // Never the private key or the PSK.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireGuardBackend")
            .field("network", &self.network)
            .field("listen_port", &self.listen_port)
            .field("ext", &self.ext.name)
            .field("mtu", &self.mtu)
            .field("public_key", &self.public_key)
            .field("tun_index", &self.tun_index)
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
    /// picks the data path (`choice`) and starts it on `flannel-wg`. Must run inside a tokio
    /// runtime, in the network namespace the backend serves.
    pub async fn new(
        network: Ipv4Network,
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
        let path = key::key_path(state_dir, std::env::var_os(key::KEY_FILE_ENV).as_deref());
        let (private, created) = key::load_or_create(&path)?;
        let public_key = key::public_key(&private);
        if created {
            tracing::info!(path = %path.display(), public_key = %public_key, "generated WireGuard private key");
        } else {
            tracing::info!(path = %path.display(), public_key = %public_key, "loaded WireGuard private key");
        }
        let handle = netlink::connect().map_err(WireGuardError::from)?;
        let mut backend = WireGuardBackend {
            network,
            listen_port: cfg.listen_port,
            ext: ext.clone(),
            mtu: underlay_mtu - OVERHEAD,
            public_key,
            settings: TunnSettings {
                private,
                psk: cfg.psk.clone(),
                keepalive: cfg.persistent_keepalive,
            },
            state_dir: state_dir.to_path_buf(),
            counters: Arc::new(DataPathCounters::default()),
            datapath: None,
            child: None,
            datapath_peers: None,
            kernel: None,
            kernel_peers_written: false,
            tun_index: 0,
            offloads,
            granted: String::new(),
            pipeline: EntryPipeline::default(),
            leases: BTreeMap::new(),
        };
        let kernel = match choice {
            WireGuardDataPath::Userspace => Err("--wireguard-datapath userspace".to_string()),
            WireGuardDataPath::Auto | WireGuardDataPath::Kernel => {
                match kernel_has_wireguard(&handle).await {
                    Ok(()) => backend.start_kernel(&handle).await,
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
                tracing::info!(device = DEVICE_NAME, reason = %why, "kernel WireGuard unavailable; using the userspace data path");
                backend.start_userspace(&handle).await?;
            }
        }
        Ok(backend)
    }

    /// Makes `flannel-wg` a kernel WireGuard device (replacing a TUN device of that name the
    /// userspace path left) with the private key and listen port. The error says why not.
    async fn start_kernel(&mut self, handle: &Handle) -> Result<(), String> {
        self.stop_datapath().map_err(|e| e.to_string())?;
        let existing = netlink::link_by_name(handle, DEVICE_NAME)
            .await
            .map_err(|e| e.to_string())?;
        let reuse = match &existing {
            Some(link) => {
                let is_wg = matches!(
                    crate::backend::leftovers::link_kind(link),
                    Some(rtnetlink::packet_route::link::InfoKind::Wireguard)
                );
                if !is_wg {
                    netlink::del_link(handle, link.header.index, DEVICE_NAME)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                is_wg
            }
            None => false,
        };
        if !reuse {
            let msg = rtnetlink::LinkWireguard::new(DEVICE_NAME)
                .mtu(self.mtu)
                .build();
            netlink::add_link(handle, msg, "wireguard device flannel-wg")
                .await
                .map_err(|e| e.to_string())?;
        }
        let link = netlink::link_by_name(handle, DEVICE_NAME)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{DEVICE_NAME} vanished right after creation"))?;
        let mut nl = kernel::WireGuardNetlink::open()
            .map_err(|e| format!("open generic netlink family wireguard: {e}"))?;
        nl.set_device(DEVICE_NAME, &self.settings.private, self.listen_port)
            .map_err(|e| format!("set private key and listen port: {e}"))?;
        self.tun_index = link.header.index;
        self.kernel = Some(nl);
        self.kernel_peers_written = false;
        self.counters.attach(DEVICE_NAME, None);
        self.granted = "kernel".to_string();
        tracing::info!(
            device = DEVICE_NAME,
            datapath = "kernel",
            listen_port = self.listen_port,
            "WireGuard data path"
        );
        Ok(())
    }

    /// Reconciles the kernel device's peers with `leases`: (present, added or updated, removed).
    fn sync_kernel_peers(
        &mut self,
        own: Ipv4Network,
        leases: &[Lease],
    ) -> Result<(usize, usize, usize), WireGuardError> {
        let specs = wireguard_peers(own, self.listen_port, leases);
        let Some(nl) = self.kernel.as_mut() else {
            return Ok((0, 0, 0));
        };
        let kernel_err = |op| move |source| WireGuardError::Kernel { op, source };
        let actual = nl.peers(DEVICE_NAME).map_err(kernel_err("read peers of"))?;
        let mut changes = kernel::peer_changes(&specs, &actual);
        if !self.kernel_peers_written {
            changes.upsert = specs.values().cloned().collect();
            changes.present = 0;
        }
        nl.apply(
            DEVICE_NAME,
            &changes,
            self.settings.psk.as_ref(),
            self.settings.keepalive,
        )
        .map_err(kernel_err("set peers of"))?;
        self.kernel_peers_written = true;
        Ok((changes.present, changes.upsert.len(), changes.remove.len()))
    }

    /// The lease value: `{"PublicIP":..,"BackendType":"wireguard","BackendData":{"PublicKey":..,
    /// "Port":51820}}`, as flanneld's `newSubnetAttrs` writes it for IPv4.
    pub fn lease_attrs(&self) -> LeaseAttrs {
        let mut data = serde_json::Map::new();
        data.insert(
            "PublicKey".to_string(),
            serde_json::Value::String(self.public_key.to_string()),
        );
        data.insert(
            "Port".to_string(),
            serde_json::Value::from(self.listen_port),
        );
        LeaseAttrs {
            public_ip: self.ext.public_ip,
            backend_type: BACKEND_TYPE.to_string(),
            backend_data: Some(serde_json::Value::Object(data)),
            public_ipv6: None,
            backend_v6_data: None,
        }
    }

    /// The pod MTU: the underlay's (`Backend.MTU` or the interface's) minus 80, as Flannel.
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// The device this backend owns.
    pub fn device_name(&self) -> &str {
        DEVICE_NAME
    }

    /// The node's public key.
    pub fn public_key(&self) -> WireGuardKey {
        self.public_key
    }

    /// The data path's counters (fetched from the data path process at every scrape).
    pub fn counters(&self) -> Arc<DataPathCounters> {
        self.counters.clone()
    }

    /// The offloads the userspace data path was granted (`kernel` for the kernel's data path).
    pub fn granted_offloads(&self) -> &str {
        &self.granted
    }

    /// Brings `flannel-wg` (device, MTU, address `<subnet>.0/32`, up, the cluster route) in
    /// line with `own` and swaps in the peers of the `wireguard` leases among `peers`.
    pub async fn reconcile(
        &mut self,
        own: Ipv4Network,
        peers: &[Lease],
    ) -> Result<ReconcileReport, WireGuardError> {
        let handle = netlink::connect()?;
        let mut outcome = ReconcileReport::default();
        let lost = self.datapath.is_some() && self.datapath_lost();
        if lost || tun_device::replaced(&handle, DEVICE_NAME, self.tun_index).await? {
            tracing::warn!(
                device = DEVICE_NAME,
                "WireGuard device vanished or was replaced; recreating it"
            );
            if self.kernel.is_some() {
                self.start_kernel(&handle)
                    .await
                    .map_err(|why| WireGuardError::Kernel {
                        op: "recreate",
                        source: io::Error::other(why),
                    })?;
            } else {
                self.start_userspace(&handle).await?;
            }
            outcome.added += 1;
        }
        tun_device::settle::<WireGuardError>(
            &handle,
            self.tun_index,
            DEVICE_NAME,
            self.mtu,
            own,
            &mut outcome,
        )
        .await?;
        let entries = self.desired_entries();
        let devices = self.devices();
        let tun = self.tun_index;
        let view = pipeline::read_kernel(&handle, &devices, |r| r.oif == tun).await?;
        let d = entries::diff(&KernelEntries::merged(&entries), &view.actual);
        let route = self.pipeline.full(&devices, entries, d).await?;
        self.leases = peers
            .iter()
            .filter(|l| l.attrs.backend_type == BACKEND_TYPE)
            .map(|l| (l.subnet, l.clone()))
            .collect();
        outcome.added += route.added;
        outcome.removed += route.removed;
        outcome.failed += route.failed;
        outcome.stale.extend(route.stale);
        let (kept, added, removed) = self.sync_peers(own, peers, true)?;
        outcome.desired += kept + added;
        outcome.present += kept;
        outcome.added += added;
        outcome.removed += removed;
        Ok(outcome)
    }

    /// Applies a changed peer table: only the peers change (the route does not depend on
    /// them). `None` when a full reconcile is due.
    pub async fn apply_changes(
        &mut self,
        own: Ipv4Network,
        changes: &[PeerChange],
    ) -> Result<Option<ReconcileReport>, WireGuardError> {
        let Some(route) = self.pipeline.incremental(&self.devices(), &[]).await? else {
            return Ok(None);
        };
        for change in changes {
            match &change.lease {
                Some(l) if l.attrs.backend_type == BACKEND_TYPE => {
                    self.leases.insert(change.subnet, l.clone())
                }
                _ => self.leases.remove(&change.subnet),
            };
        }
        let peers: Vec<Lease> = self.leases.values().cloned().collect();
        let (kept, added, removed) = self.sync_peers(own, &peers, false)?;
        Ok(Some(ReconcileReport {
            desired: kept + added,
            present: kept,
            added,
            removed,
            failed: route.failed,
            stale: Vec::new(),
        }))
    }

    /// One weft route on `flannel-wg`: the cluster network (Flannel's `addRoute`), the
    /// device's rather than a peer's.
    fn desired_entries(&self) -> EntriesByPeer {
        let route = Ipv4Route {
            dst: self.network,
            gateway: None,
            oif: self.tun_index,
            onlink: false,
        };
        [(
            self.network,
            PeerEntries {
                route: Some(route),
                ..Default::default()
            },
        )]
        .into()
    }

    fn devices(&self) -> Devices {
        Devices {
            overlay: None,
            overlay6: None,
            routes: Device {
                index: self.tun_index,
                name: DEVICE_NAME.to_string(),
            },
        }
    }

    /// Brings the data path's peers in line with `leases`: (present, added, removed). A
    /// `full` pass reads the userspace data path's peers back first.
    fn sync_peers(
        &mut self,
        own: Ipv4Network,
        leases: &[Lease],
        full: bool,
    ) -> Result<(usize, usize, usize), WireGuardError> {
        if self.kernel.is_some() {
            self.sync_kernel_peers(own, leases)
        } else {
            self.sync_datapath_peers(own, leases, full)
        }
    }

    /// Sends the userspace data path the peers that changed since the last `set` (a full
    /// pass compares with what it answers to `get`): one `set=1` with the upserts and
    /// removals; peers that stay keep their sessions.
    fn sync_datapath_peers(
        &mut self,
        own: Ipv4Network,
        leases: &[Lease],
        full: bool,
    ) -> Result<(usize, usize, usize), WireGuardError> {
        let Some(control) = self.datapath.clone() else {
            return Ok((0, 0, 0));
        };
        let specs = wireguard_peers(own, self.listen_port, leases);
        let actual: BTreeMap<WireGuardKey, kernel::KernelPeer> = match &self.datapath_peers {
            Some(known) if !full => known
                .iter()
                .map(|(k, p)| {
                    let peer = kernel::KernelPeer {
                        endpoint: Some(p.endpoint),
                        allowed: p.allowed.clone(),
                    };
                    (*k, peer)
                })
                .collect(),
            _ => control
                .get()?
                .peers
                .into_iter()
                .map(|(k, p)| {
                    let peer = kernel::KernelPeer {
                        endpoint: match p.endpoint {
                            Some(SocketAddr::V4(e)) => Some(e),
                            _ => None,
                        },
                        allowed: p
                            .allowed
                            .into_iter()
                            .filter_map(|n| match n {
                                IpNetwork::V4(n) => Some(n),
                                IpNetwork::V6(_) => None,
                            })
                            .collect(),
                    };
                    (k, peer)
                })
                .collect(),
        };
        let mut changes = kernel::peer_changes(&specs, &actual);
        let first = self.datapath_peers.is_none();
        if first {
            // The PSK and keepalive cannot be read back: set every peer once.
            changes.upsert = specs.values().cloned().collect();
            changes.present = 0;
        }
        let mut req = SetRequest {
            own_subnets: vec![IpNetwork::V4(own)],
            ..Default::default()
        };
        for spec in &changes.upsert {
            let mut peer = PeerSet::new(spec.key);
            peer.endpoint = Some(SocketAddr::V4(spec.endpoint));
            peer.replace_allowed_ips = true;
            peer.allowed = spec.allowed.iter().copied().map(IpNetwork::V4).collect();
            peer.keepalive = Some(self.settings.keepalive);
            peer.psk = Some(self.settings.psk.clone());
            req.peers.push(peer);
        }
        for key in &changes.remove {
            let mut peer = PeerSet::new(*key);
            peer.remove = true;
            req.peers.push(peer);
        }
        if !req.peers.is_empty() || full {
            // Until the set succeeds, what the process holds is unknown.
            self.datapath_peers = None;
            control.set(&req)?;
        }
        self.datapath_peers = Some(specs);
        Ok((changes.present, changes.upsert.len(), changes.remove.len()))
    }

    /// Whether the data path process this weftd started has exited (the device went with it).
    fn datapath_lost(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => {
                tracing::warn!(%status, "the WireGuard data path process exited");
                self.child = None;
                true
            }
            _ => self.datapath.as_ref().is_some_and(|c| c.pid().is_none()),
        }
    }

    /// Stops the userspace data path process, if one runs, and removes its socket.
    fn stop_datapath(&mut self) -> Result<(), WireGuardError> {
        let socket = control::socket_path(&self.state_dir, DEVICE_NAME);
        control::stop(&socket, self.child.as_mut())?;
        self.child = None;
        self.datapath = None;
        self.datapath_peers = None;
        Ok(())
    }

    /// Why the data path process answering `view` is not this backend's (another device,
    /// address, port or key, or offloads where none are asked for), if it is not.
    fn incompatible(&self, view: &uapi::DeviceView, bind: SocketAddr) -> Option<String> {
        if view.device != DEVICE_NAME {
            return Some(format!("it owns device {:?}", view.device));
        }
        if view.bind != Some(bind) || view.listen_port != self.listen_port {
            return Some(format!("it is bound to {:?}, not {bind}", view.bind));
        }
        if !self.offloads && view.offloads != "none" {
            return Some(format!(
                "it uses offloads ({}); --no-udp-offloads asks for none",
                view.offloads
            ));
        }
        match view.public_key {
            Some(k) if k != self.public_key => Some(format!("it holds another key ({k})")),
            _ => None,
        }
    }

    /// Finds the data path process a previous weftd started and keeps it when it is this
    /// backend's and its device is there; otherwise stops it and starts a new one. Then sets
    /// the private key.
    async fn start_userspace(&mut self, handle: &Handle) -> Result<(), WireGuardError> {
        let args = DataPathArgs {
            socket: control::socket_path(&self.state_dir, DEVICE_NAME),
            device: DEVICE_NAME.to_string(),
            bind: SocketAddr::V4(SocketAddrV4::new(self.ext.iface_addr, self.listen_port)),
            offloads: self.offloads,
        };
        let control = ControlSocket::new(args.socket.clone());
        let device = netlink::link_by_name(handle, DEVICE_NAME).await?;
        let reused = match control.get() {
            Ok(view) => match (self.incompatible(&view, args.bind), device) {
                (None, Some(_)) => {
                    self.granted = view.offloads;
                    true
                }
                (why, _) => {
                    let why = why.unwrap_or_else(|| format!("{DEVICE_NAME} is gone"));
                    tracing::info!(reason = %why, "replacing the WireGuard data path process");
                    false
                }
            },
            Err(_) => false,
        };
        if !reused {
            self.stop_datapath()?;
            ensure_private_dir(&self.state_dir)?;
            self.child = Some(control::spawn(&args)?);
            self.granted = control.get()?.offloads;
        }
        control.set(&SetRequest {
            private_key: Some(self.settings.private.clone()),
            listen_port: Some(self.listen_port),
            ..Default::default()
        })?;
        self.tun_index = tun_device::index_of::<WireGuardError>(handle, DEVICE_NAME).await?;
        self.kernel = None;
        self.datapath_peers = None;
        self.counters.attach(DEVICE_NAME, Some(control.clone()));
        tracing::info!(
            device = DEVICE_NAME,
            datapath = "userspace",
            pid = control.pid(),
            reused,
            listen_port = self.listen_port,
            offloads = %self.granted,
            "WireGuard data path"
        );
        self.datapath = Some(control);
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
