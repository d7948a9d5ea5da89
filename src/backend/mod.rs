//! Data paths. One folder-local module per backend; nothing outside `backend/` needs to know
//! which one runs: the daemon only sees [`Backend`].

pub mod entries;
pub mod guard;
pub mod hostgw;
pub mod leftovers;
pub mod pipeline;
pub mod routes;
mod tun_device;
pub mod udp;
pub mod vxlan;
pub mod wireguard;

use std::io;
use std::path::{Path, PathBuf};

use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::config::{BackendConfig, NetworkConfig};
use crate::lease::{Lease, LeaseAttrs};
use crate::netlink::{ExternalInterface, NetlinkError};

/// An error of a backend, naming the device or file and the operation.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A netlink request failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// Reading or writing backend state under `--state-dir` failed.
    #[error("{op} {}: {source}", path.display())]
    State {
        /// The operation, e.g. `write VTEP MAC file`.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A state file holds something weft did not write.
    #[error("VTEP MAC file {}: {reason}", path.display())]
    BadState {
        /// The file.
        path: PathBuf,
        /// What is wrong with its content.
        reason: String,
    },
    /// The UDP backend failed.
    #[error(transparent)]
    Udp(#[from] udp::UdpError),
    /// The host-gw backend failed.
    #[error(transparent)]
    HostGw(#[from] hostgw::HostGwError),
    /// The network config asks for something this backend cannot do.
    #[error("backend: {0}")]
    Unsupported(String),
    /// The WireGuard backend failed.
    #[error(transparent)]
    WireGuard(#[from] wireguard::WireGuardError),
}

/// How the userspace data paths run, from weftd's flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendOptions {
    /// Not `--no-udp-offloads`: TUN and UDP offloads where the kernel has them (UDP and
    /// userspace WireGuard).
    pub udp_offloads: bool,
    /// `--wireguard-datapath`.
    pub wireguard: wireguard::WireGuardDataPath,
    /// `--route-nexthops`: VXLAN and host-gw route each IPv4 peer through a nexthop object.
    pub route_nexthops: bool,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            udp_offloads: true,
            wireguard: wireguard::WireGuardDataPath::Auto,
            route_nexthops: false,
        }
    }
}

/// A kernel entry weft owns but no lease justifies, found (and removed) by a reconcile.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StaleEntry {
    /// `route`, `nexthop`, `neighbour`, `fdb` or `address`.
    pub kind: String,
    /// What it pointed at: `10.244.9.0/24 via 192.0.2.19 dev eth0`, `aa:bb:cc:00:00:09 dst
    /// 192.0.2.19 dev flannel.1`, ...
    pub destination: String,
}

impl StaleEntry {
    /// A stale entry of `kind` to `destination`.
    pub fn new(kind: &str, destination: impl std::fmt::Display) -> StaleEntry {
        StaleEntry {
            kind: kind.to_string(),
            destination: destination.to_string(),
        }
    }
}

/// A peer lease that came or changed (`lease` is its believed value) or went (`None`) since
/// the last pass: what an incremental pass works from.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerChange {
    /// The peer's subnet.
    pub subnet: Ipv4Network,
    /// The peer's IPv6 subnet, the IPv6 part of its key (dual stack).
    pub subnet6: Option<Ipv6Network>,
    /// The lease now believed for it; `None` when it is gone or no longer believed.
    pub lease: Option<Lease>,
}

/// The outcome of one reconcile pass, counted in kernel entries (routes, neighbours, FDB).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Entries the peer leases justify.
    pub desired: usize,
    /// Desired entries that were already in the kernel.
    pub present: usize,
    /// Entries added or replaced in this pass.
    pub added: usize,
    /// Stale entries removed in this pass.
    pub removed: usize,
    /// Additions and removals the kernel refused (each logged with its error).
    pub failed: usize,
    /// Of `failed`, the peers this node cannot route at all (host-gw: a PublicIP off its
    /// segment): retrying cannot help, only a lease or an address change can, and those
    /// bring a reconcile of their own.
    pub unroutable: usize,
    /// The kernel entries this pass found stale and removed (a removal the kernel refused is
    /// also counted in `failed`).
    pub stale: Vec<StaleEntry>,
}

/// Removes what other backends left on this node (a changed `Backend.Type` or VNI), before
/// the configured backend sets up its own data path: also the userspace WireGuard data path
/// process and its socket in `state_dir`. Failures are logged, not fatal: the new data path
/// works next to leftovers, only less cleanly.
async fn remove_leftovers(cfg: &NetworkConfig, ext: &ExternalInterface, state_dir: &Path) {
    let vxlan_name;
    let wireguard_devices: Vec<&str>;
    let starting = match &cfg.backend {
        BackendConfig::Vxlan { vni, .. } => {
            vxlan_name = format!("flannel.{vni}");
            leftovers::Starting::Vxlan(&vxlan_name)
        }
        BackendConfig::Udp { .. } => leftovers::Starting::Udp,
        BackendConfig::HostGw => leftovers::Starting::HostGw,
        BackendConfig::WireGuard(wg) => {
            wireguard_devices =
                wireguard::device_layout(wg.mode, cfg.enable_ipv4, cfg.ipv6.is_some(), wg)
                    .into_iter()
                    .map(|(name, _, _)| name)
                    .collect();
            leftovers::Starting::WireGuard(&wireguard_devices)
        }
    };
    // The data path processes of WireGuard devices the starting layout does not keep.
    let kept: &[&str] = match starting {
        leftovers::Starting::WireGuard(keeps) => keeps,
        _ => &[],
    };
    for device in [wireguard::DEVICE_NAME, wireguard::DEVICE_NAME_V6] {
        if !kept.contains(&device) {
            let socket = wireguard::control::socket_path(state_dir, device);
            match wireguard::control::stop(&socket, None) {
                Ok(Some(pid)) => {
                    tracing::info!(removed = %format!("WireGuard data path process {pid} of {device}"), "removed what another backend left behind");
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, device, "could not stop the WireGuard data path process")
                }
            }
        }
    }
    let result = match crate::netlink::connect() {
        Ok(handle) => leftovers::remove(&handle, starting, ext.index, cfg.network).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(removed) => {
            for what in removed {
                tracing::info!(removed = %what, "removed what another backend left behind");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not remove what other backends left behind");
        }
    }
}

/// The node's data path, chosen by `Backend.Type` in the network config.
#[derive(Debug)]
pub enum Backend {
    /// The kernel VXLAN overlay (`flannel.<VNI>`).
    Vxlan(vxlan::VxlanBackend),
    /// Flannel's userspace UDP encapsulation (`flannel0`).
    Udp(udp::UdpBackend),
    /// Direct routes to peers on one L2 segment.
    HostGw(hostgw::HostGwBackend),
    /// Encrypted tunnels to every peer (`flannel-wg`).
    WireGuard(wireguard::WireGuardBackend),
}

impl Backend {
    /// Prepares the backend for the configured type (VXLAN: loads or creates the VTEP MAC
    /// persisted in `state_dir`, before any device exists; UDP: with TUN and UDP offloads
    /// where the kernel has them, unless `opts.udp_offloads` is false; WireGuard: with the
    /// private key kept in `state_dir` and the data path `opts.wireguard`).
    pub async fn new(
        cfg: &NetworkConfig,
        ext: &ExternalInterface,
        state_dir: &Path,
        opts: BackendOptions,
    ) -> Result<Backend, BackendError> {
        // Refused before anything of another backend is removed: UDP tunnels over IPv4.
        if matches!(cfg.backend, BackendConfig::Udp { .. }) && !cfg.enable_ipv4 {
            return Err(BackendError::Unsupported(
                "the udp backend tunnels over IPv4 and needs EnableIPv4; use vxlan or host-gw for an IPv6-only network"
                    .to_string(),
            ));
        }
        let udp_offloads = opts.udp_offloads;
        remove_leftovers(cfg, ext, state_dir).await;
        match &cfg.backend {
            BackendConfig::Vxlan {
                vni,
                port,
                direct_routing,
                mtu,
            } => {
                let settings = vxlan::VxlanSettings {
                    network: cfg.network,
                    vni: *vni,
                    port: *port,
                    direct_routing: *direct_routing,
                    mtu: *mtu,
                    enable_ipv4: cfg.enable_ipv4,
                    enable_ipv6: cfg.ipv6.is_some(),
                };
                Ok(Backend::Vxlan(
                    vxlan::VxlanBackend::new(settings, ext.clone(), state_dir)
                        .await?
                        .with_route_nexthops(opts.route_nexthops),
                ))
            }
            BackendConfig::Udp { port } => Ok(Backend::Udp(
                udp::UdpBackend::new(cfg.network, *port, ext, udp_offloads)
                    .await?
                    .with_ipv6(cfg.ipv6.as_ref().map(|c| c.network)),
            )),
            BackendConfig::HostGw => {
                // An IPv6-only node publishes PublicIP 0.0.0.0, as flanneld does.
                let mut ext = ext.clone();
                if !cfg.enable_ipv4 {
                    ext.public_ip = std::net::Ipv4Addr::UNSPECIFIED;
                }
                Ok(Backend::HostGw(
                    hostgw::HostGwBackend::new(&ext).with_route_nexthops(opts.route_nexthops),
                ))
            }
            BackendConfig::WireGuard(wg) => Ok(Backend::WireGuard(
                wireguard::WireGuardBackend::new(
                    cfg,
                    wg,
                    ext,
                    state_dir,
                    opts.wireguard,
                    udp_offloads,
                )
                .await?,
            )),
        }
    }

    /// What this node publishes in its lease (`PublicIP`, `BackendType`, `BackendData`).
    pub fn lease_attrs(&self) -> LeaseAttrs {
        match self {
            Backend::Vxlan(b) => b.lease_attrs(),
            Backend::Udp(b) => b.lease_attrs(),
            Backend::HostGw(b) => b.lease_attrs(),
            Backend::WireGuard(b) => b.lease_attrs(),
        }
    }

    /// The MTU pods must use (subnet.env `FLANNEL_MTU`).
    pub fn mtu(&self) -> u32 {
        match self {
            Backend::Vxlan(b) => b.mtu(),
            Backend::Udp(b) => b.mtu(),
            Backend::HostGw(b) => b.mtu(),
            Backend::WireGuard(b) => b.mtu(),
        }
    }

    /// The backend's own Prometheus metrics, for backends that keep counters (UDP, WireGuard).
    pub fn metrics(&self) -> Option<crate::health::BackendMetrics> {
        match self {
            Backend::Udp(b) => Some(b.counters()),
            Backend::WireGuard(b) => Some(b.counters()),
            Backend::Vxlan(_) | Backend::HostGw(_) => None,
        }
    }

    /// The offloads the kernel granted the data path (UDP: `tun vnet_hdr, udp gso, udp gro`
    /// or `none`); `None` where weft has no data path of its own (VXLAN, host-gw: the kernel
    /// forwards).
    pub fn granted_offloads(&self) -> Option<&str> {
        match self {
            Backend::Udp(b) => Some(b.granted_offloads()),
            Backend::WireGuard(b) => Some(b.granted_offloads()),
            Backend::Vxlan(_) | Backend::HostGw(_) => None,
        }
    }

    /// The name of the device the backend owns (e.g. `flannel.1`), so the daemon can react to
    /// its removal at once (see [`crate::netlink::link_events`]).
    pub fn device_name(&self) -> &str {
        match self {
            Backend::Vxlan(b) => b.device_name(),
            Backend::Udp(b) => b.device_name(),
            Backend::HostGw(b) => b.device_name(),
            Backend::WireGuard(b) => b.device_name(),
        }
    }

    /// Whether `name` is one of the backend's devices: besides [`Backend::device_name`], the
    /// IPv6 devices `flannel-v6.<VNI>` and `flannel-wg-v6`.
    pub fn owns_device(&self, name: &str) -> bool {
        match self {
            Backend::Vxlan(b) => b.owns_device(name),
            Backend::WireGuard(b) => b.owns_device(name),
            Backend::Udp(_) | Backend::HostGw(_) => name == self.device_name(),
        }
    }

    /// Makes the kernel match `own` and `peers`: device, address, and per-peer entries; adds
    /// what is missing and removes what no peer justifies. Idempotent.
    pub async fn reconcile(
        &mut self,
        own: Ipv4Network,
        peers: &[Lease],
    ) -> Result<ReconcileReport, BackendError> {
        match self {
            Backend::Vxlan(b) => b.reconcile(own, peers).await,
            Backend::Udp(b) => Ok(b.reconcile(own, peers).await?),
            Backend::HostGw(b) => Ok(b.reconcile(own, peers).await?),
            Backend::WireGuard(b) => Ok(b.reconcile(own, peers).await?),
        }
    }

    /// Applies peer changes incrementally: only the entries of the peers that came, went or
    /// changed since the last pass, without reading the kernel (no device checks, no dumps).
    /// `Ok(None)` when no pass has left a known state; run [`Backend::reconcile`].
    pub async fn apply_changes(
        &mut self,
        own: Ipv4Network,
        changes: &[PeerChange],
    ) -> Result<Option<ReconcileReport>, BackendError> {
        match self {
            Backend::Vxlan(b) => b.apply_changes(own, changes).await,
            Backend::Udp(b) => Ok(b.apply_changes(own, changes).await?),
            Backend::HostGw(b) => Ok(b.apply_changes(own, changes).await?),
            Backend::WireGuard(b) => Ok(b.apply_changes(own, changes).await?),
        }
    }

    /// Tells the data path this node's own IPv6 subnet from the lease (the VXLAN IPv6 device
    /// carries its network address; WireGuard's IPv6 device its `/128`).
    pub fn set_own_ipv6(&mut self, own6: Option<Ipv6Network>) {
        match self {
            Backend::Vxlan(b) => b.set_own_ipv6(own6),
            Backend::Udp(b) => b.set_own_ipv6(own6),
            Backend::WireGuard(b) => b.set_own_ipv6(own6),
            Backend::HostGw(_) => {}
        }
    }
}

/// The data path as the node agent uses it: the seam between the agent's decisions and the
/// kernel, implemented by [`Backend`].
pub trait DataPath {
    /// What this node publishes in its lease.
    fn lease_attrs(&self) -> LeaseAttrs;

    /// The MTU pods must use.
    fn mtu(&self) -> u32;

    /// The device the data path owns.
    fn device_name(&self) -> &str;

    /// Whether `name` is one of the data path's devices (its IPv6 device too).
    fn owns_device(&self, name: &str) -> bool {
        name == self.device_name()
    }

    /// The offloads the kernel granted a userspace data path; `None` where the kernel
    /// forwards.
    fn granted_offloads(&self) -> Option<&str>;

    /// The data path's own Prometheus metrics, if it keeps any.
    fn metrics(&self) -> Option<crate::health::BackendMetrics>;

    /// A new data path of the same kind on `ext` (the external interface came back with a
    /// new index).
    fn rebuild(
        &self,
        cfg: &NetworkConfig,
        ext: &ExternalInterface,
        state_dir: &Path,
        opts: BackendOptions,
    ) -> impl std::future::Future<Output = Result<Self, BackendError>>
    where
        Self: Sized;

    /// A full pass: device, address and every peer entry, diffed against the kernel.
    fn reconcile(
        &mut self,
        own: Ipv4Network,
        peers: &[Lease],
    ) -> impl std::future::Future<Output = Result<ReconcileReport, BackendError>>;

    /// An incremental pass over the peers that changed; `Ok(None)` when a full one is due.
    fn apply_changes(
        &mut self,
        own: Ipv4Network,
        changes: &[PeerChange],
    ) -> impl std::future::Future<Output = Result<Option<ReconcileReport>, BackendError>>;

    /// Tells the data path this node's own IPv6 subnet (see [`Backend::set_own_ipv6`]).
    fn set_own_ipv6(&mut self, _own6: Option<Ipv6Network>) {}

    /// What no peer route may cover, as the kernel shows it now (see
    /// [`guard::protected_now`]).
    fn protected(
        &self,
        ext: &ExternalInterface,
        etcd_addresses: &[std::net::Ipv4Addr],
    ) -> impl std::future::Future<Output = Result<Vec<guard::Protected>, NetlinkError>> {
        guard::protected_now(ext, etcd_addresses)
    }

    /// The IPv6 prefixes no peer route may cover, as the kernel shows them now (see
    /// [`guard::protected6_now`]).
    fn protected6(
        &self,
        ext: &ExternalInterface,
    ) -> impl std::future::Future<Output = Result<Vec<guard::Protected6>, NetlinkError>> {
        guard::protected6_now(ext)
    }
}

impl DataPath for Backend {
    fn lease_attrs(&self) -> LeaseAttrs {
        Backend::lease_attrs(self)
    }

    fn mtu(&self) -> u32 {
        Backend::mtu(self)
    }

    fn device_name(&self) -> &str {
        Backend::device_name(self)
    }

    fn owns_device(&self, name: &str) -> bool {
        Backend::owns_device(self, name)
    }

    fn granted_offloads(&self) -> Option<&str> {
        Backend::granted_offloads(self)
    }

    fn metrics(&self) -> Option<crate::health::BackendMetrics> {
        Backend::metrics(self)
    }

    fn rebuild(
        &self,
        cfg: &NetworkConfig,
        ext: &ExternalInterface,
        state_dir: &Path,
        opts: BackendOptions,
    ) -> impl std::future::Future<Output = Result<Self, BackendError>> {
        Backend::new(cfg, ext, state_dir, opts)
    }

    fn reconcile(
        &mut self,
        own: Ipv4Network,
        peers: &[Lease],
    ) -> impl std::future::Future<Output = Result<ReconcileReport, BackendError>> {
        Backend::reconcile(self, own, peers)
    }

    fn apply_changes(
        &mut self,
        own: Ipv4Network,
        changes: &[PeerChange],
    ) -> impl std::future::Future<Output = Result<Option<ReconcileReport>, BackendError>> {
        Backend::apply_changes(self, own, changes)
    }

    fn set_own_ipv6(&mut self, own6: Option<Ipv6Network>) {
        Backend::set_own_ipv6(self, own6)
    }
}
