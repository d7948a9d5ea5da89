//! The kernel VXLAN backend, on the wire like Flannel's: device `flannel.<VNI>`, UDP 8472,
//! learning off; per peer a route via `X.0` onlink, a permanent neighbour and an FDB entry
//! ([`peers`] states them; [`super::pipeline`] programs them).

pub mod peers;

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnetwork::{Ipv4Network, Ipv6Network};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::{Handle, LinkVxlan};
use tracing::{debug, info, warn};

use super::entries::{self, EntriesByPeer, EntriesByPeer6, KernelEntries, SkippedPeer};
use super::pipeline::{self, Device, Devices, EntryPipeline};
use super::{BackendError, PeerChange, ReconcileReport};
use crate::lease::{Lease, LeaseAttrs};
use crate::netlink::{self, ExternalInterface, MacAddr};
use peers::{VxlanTopology, VxlanTopology6};

/// VXLAN overhead on an IPv4 underlay: outer IP 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
pub const VXLAN_OVERHEAD: u32 = 50;

/// The VXLAN part of the network config, defaulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanSettings {
    /// The cluster network (`Network`).
    pub network: Ipv4Network,
    /// `VNI`.
    pub vni: u32,
    /// `Port` (UDP destination port).
    pub port: u16,
    /// `DirectRouting`.
    pub direct_routing: bool,
    /// `MTU`; `None` means external MTU - 50.
    pub mtu: Option<u32>,
    /// `EnableIPv4`: whether `flannel.<VNI>` carries IPv4 pods.
    pub enable_ipv4: bool,
    /// `EnableIPv6`: whether `flannel-v6.<VNI>` carries IPv6 pods over the IPv6 underlay.
    pub enable_ipv6: bool,
}

/// VXLAN overhead on an IPv6 underlay: outer IPv6 40 + UDP 8 + VXLAN 8 + inner Ethernet 14.
pub const VXLAN6_OVERHEAD: u32 = 70;

/// The VXLAN data path of this node.
#[derive(Debug)]
pub struct VxlanBackend {
    handle: Handle,
    settings: VxlanSettings,
    ext: ExternalInterface,
    name: String,
    mac: MacAddr,
    mtu: u32,
    warned_skipped: BTreeSet<SkippedPeer>,
    /// The overlay device's index as the last full reconcile found it.
    dev_index: Option<u32>,
    /// Whether the untagged routes of a previous version were adopted (once per start).
    adopted_untagged: bool,
    pipeline: EntryPipeline,
    /// The IPv6 side (`flannel-v6.<VNI>`), when IPv6 is enabled.
    v6: Option<Vxlan6>,
}

/// The IPv6 device of the VXLAN backend, as Flannel's: `flannel-v6.<VNI>` with the IPv6
/// underlay address as local address and its own persisted VTEP MAC.
#[derive(Debug)]
struct Vxlan6 {
    name: String,
    mac: MacAddr,
    /// The external interface's IPv6 address: the tunnel's local address.
    local: std::net::Ipv6Addr,
    /// The address published as `PublicIPv6` (`--public-ipv6`, default `local`).
    public: std::net::Ipv6Addr,
    /// The node's own IPv6 subnet, whose network address the device carries as a /128.
    own: Option<Ipv6Network>,
    /// The device's index as the last full reconcile found it.
    index: Option<u32>,
}

/// The file under `state_dir` holding the VTEP MAC of device `flannel.<vni>`.
pub fn vtep_mac_path(state_dir: &Path, vni: u32) -> PathBuf {
    state_dir.join(format!("flannel.{vni}.vtep-mac"))
}

/// The file under `state_dir` holding the VTEP MAC of device `flannel-v6.<vni>`.
pub fn vtep_mac6_path(state_dir: &Path, vni: u32) -> PathBuf {
    state_dir.join(format!("flannel-v6.{vni}.vtep-mac"))
}

fn state_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BackendError {
    let path = path.to_path_buf();
    move |source| BackendError::State { op, path, source }
}

/// Reads the persisted VTEP MAC; `Ok(None)` when the file does not exist.
pub fn load_vtep_mac(path: &Path) -> Result<Option<MacAddr>, BackendError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(state_err("read VTEP MAC file", path)(e)),
    };
    let mac: MacAddr = text.trim().parse().map_err(|e| BackendError::BadState {
        path: path.to_path_buf(),
        reason: format!("{e}"),
    })?;
    if !mac.is_unicast() {
        return Err(BackendError::BadState {
            path: path.to_path_buf(),
            reason: format!("{mac} is not a unicast address"),
        });
    }
    Ok(Some(mac))
}

/// Writes the VTEP MAC atomically (temporary file with mode 0600, fsync, rename, fsync of the
/// directory), creating the state directory if needed.
pub fn store_vtep_mac(path: &Path, mac: MacAddr) -> Result<(), BackendError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // 0700, as the WireGuard key's creator makes it: whichever comes first makes it for both.
    {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(state_err("create state directory", dir))?;
    }
    crate::atomic_file::write_atomic(path, format!("{mac}\n").as_bytes(), 0o600)
        .map_err(state_err("write VTEP MAC file", path))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(state_err("sync state directory", dir))?;
    Ok(())
}

/// What a VXLAN device must look like; anything but MTU and up-state can only be fixed by
/// recreating the device.
#[derive(Debug, Clone, PartialEq, Eq)]
struct WantedDevice {
    vni: u32,
    port: u16,
    local: IpAddr,
    ext_index: u32,
    mac: MacAddr,
}

/// The attributes of `link` that differ from `want`, described for a log line; empty when
/// the device can be kept.
fn device_mismatches(link: &LinkMessage, want: &WantedDevice) -> Vec<String> {
    let infos: Vec<&LinkInfo> = link
        .attributes
        .iter()
        .filter_map(|a| match a {
            LinkAttribute::LinkInfo(i) => Some(i),
            _ => None,
        })
        .flatten()
        .collect();
    let is_vxlan = infos
        .iter()
        .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Vxlan)));
    if !is_vxlan {
        return vec!["kind is not vxlan".to_string()];
    }
    let data: Vec<&InfoVxlan> = infos
        .iter()
        .filter_map(|i| match i {
            LinkInfo::Data(InfoData::Vxlan(d)) => Some(d),
            _ => None,
        })
        .flatten()
        .collect();
    let mut wrong = Vec::new();
    let mut check = |what: &str, have: Option<String>, want: String| {
        if have.as_deref() != Some(want.as_str()) {
            wrong.push(format!(
                "{what} is {} (want {want})",
                have.unwrap_or_else(|| "unset".to_string())
            ));
        }
    };
    let find = |f: fn(&InfoVxlan) -> Option<String>| data.iter().find_map(|d| f(d));
    check(
        "vni",
        find(|d| match d {
            InfoVxlan::Id(v) => Some(v.to_string()),
            _ => None,
        }),
        want.vni.to_string(),
    );
    check(
        "dstport",
        find(|d| match d {
            InfoVxlan::Port(v) => Some(v.to_string()),
            _ => None,
        }),
        want.port.to_string(),
    );
    check(
        "local",
        find(|d| match d {
            InfoVxlan::Local(v) => Some(v.to_string()),
            InfoVxlan::Local6(v) => Some(v.to_string()),
            _ => None,
        }),
        want.local.to_string(),
    );
    check(
        "dev",
        find(|d| match d {
            InfoVxlan::Link(v) => Some(v.to_string()),
            _ => None,
        }),
        want.ext_index.to_string(),
    );
    check(
        "learning",
        find(|d| match d {
            InfoVxlan::Learning(v) => Some(v.to_string()),
            _ => None,
        }),
        false.to_string(),
    );
    check(
        "address",
        netlink::link_mac(link).map(|m| m.to_string()),
        want.mac.to_string(),
    );
    wrong
}

impl VxlanBackend {
    /// Opens a netlink connection and settles the VTEP MAC: the one persisted in `state_dir`,
    /// else the MAC of an existing `flannel.<VNI>` device (an upgrade from flanneld keeps its
    /// peers' entries valid), else a new random one; a new MAC is persisted before any device
    /// is created with it.
    pub async fn new(
        settings: VxlanSettings,
        ext: ExternalInterface,
        state_dir: &Path,
    ) -> Result<Self, BackendError> {
        let handle = netlink::connect()?;
        let name = format!("flannel.{}", settings.vni);
        let mac = settle_vtep_mac(&handle, &name, &vtep_mac_path(state_dir, settings.vni)).await?;
        let mut mtu = settings
            .mtu
            .unwrap_or(ext.mtu.saturating_sub(VXLAN_OVERHEAD));
        let v6 = if settings.enable_ipv6 {
            // As for IPv4: the tunnel's local address is the interface's, the published one
            // (`--public-ipv6`) may be a NAT's.
            let (local, public) = ext
                .network_v6
                .map(|n| n.ip())
                .zip(ext.public_ipv6)
                .ok_or_else(|| {
                    netlink::NetlinkError::NoInterface(format!(
                        "{} has no IPv6 address for flannel-v6.{} (IPv6 is enabled)",
                        ext.name, settings.vni
                    ))
                })?;
            let name6 = format!("flannel-v6.{}", settings.vni);
            let path6 = vtep_mac6_path(state_dir, settings.vni);
            let mac6 = settle_vtep_mac(&handle, &name6, &path6).await?;
            // Pods share one MTU: the smaller of the two overlays' (Flannel takes the IPv4
            // one; a full-size IPv6 packet would not fit the IPv6 tunnel).
            if settings.mtu.is_none() {
                let mtu6 = ext.mtu.saturating_sub(VXLAN6_OVERHEAD);
                mtu = if settings.enable_ipv4 {
                    mtu.min(mtu6)
                } else {
                    mtu6
                };
            }
            Some(Vxlan6 {
                name: name6,
                mac: mac6,
                local,
                public,
                own: None,
                index: None,
            })
        } else {
            None
        };
        Ok(VxlanBackend {
            handle,
            settings,
            ext,
            name,
            mac,
            mtu,
            warned_skipped: BTreeSet::new(),
            dev_index: None,
            adopted_untagged: false,
            pipeline: EntryPipeline::default(),
            v6,
        })
    }

    /// Routes each IPv4 peer through a nexthop object of its own (`--route-nexthops`).
    pub fn with_route_nexthops(mut self, on: bool) -> Self {
        self.pipeline = EntryPipeline::new(on);
        self
    }

    /// Sets this node's own IPv6 subnet (from the lease), whose network address
    /// `flannel-v6.<VNI>` carries.
    pub fn set_own_ipv6(&mut self, own6: Option<Ipv6Network>) {
        if let Some(v6) = &mut self.v6 {
            v6.own = own6;
        }
    }

    /// `{"PublicIP":..,"BackendType":"vxlan","BackendData":{"VNI":..,"VtepMAC":".."}}`, with
    /// IPv6 also `PublicIPv6` and `BackendV6Data` (the `flannel-v6.<VNI>` VTEP); IPv6-only:
    /// `PublicIP` `0.0.0.0` and no `BackendData`, as flanneld's `newSubnetAttrs`.
    pub fn lease_attrs(&self) -> LeaseAttrs {
        let data = |mac: MacAddr| {
            serde_json::json!({
                "VNI": self.settings.vni,
                "VtepMAC": mac.to_string(),
            })
        };
        let ipv4 = self.settings.enable_ipv4;
        LeaseAttrs {
            public_ipv6: self.v6.as_ref().map(|v6| v6.public),
            backend_v6_data: self.v6.as_ref().map(|v6| data(v6.mac)),
            public_ip: if ipv4 {
                self.ext.public_ip
            } else {
                std::net::Ipv4Addr::UNSPECIFIED
            },
            backend_type: "vxlan".to_string(),
            backend_data: ipv4.then(|| data(self.mac)),
        }
    }

    /// The MTU of the overlay device, which pods must use.
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// The VTEP MAC of this node.
    pub fn vtep_mac(&self) -> MacAddr {
        self.mac
    }

    /// `flannel.<VNI>`.
    pub fn device_name(&self) -> &str {
        &self.name
    }

    /// Whether `name` is one of the backend's devices (`flannel.<VNI>`, `flannel-v6.<VNI>`).
    pub fn owns_device(&self, name: &str) -> bool {
        name == self.name || self.v6.as_ref().is_some_and(|v6| v6.name == name)
    }

    /// The tunnel's local address is the interface address, as Flannel's: behind NAT the
    /// published PublicIP is not a local address and could not source packets.
    fn wanted(&self) -> WantedDevice {
        WantedDevice {
            vni: self.settings.vni,
            port: self.settings.port,
            local: IpAddr::V4(self.ext.iface_addr),
            ext_index: self.ext.index,
            mac: self.mac,
        }
    }

    /// Makes sure the device `name` exists as `want`, with the MTU and up; returns its index.
    async fn ensure_device(&self, name: &str, want: &WantedDevice) -> Result<u32, BackendError> {
        let h = &self.handle;
        if let Some(link) = netlink::link_by_name(h, name).await? {
            let index = link.header.index;
            let wrong = device_mismatches(&link, want);
            if wrong.is_empty() {
                if netlink::link_mtu(&link) != Some(self.mtu) {
                    info!(device = %name, mtu = self.mtu, "fixing MTU");
                    netlink::set_link_mtu(h, index, name, self.mtu).await?;
                }
                if !netlink::link_is_up(&link) {
                    info!(device = %name, "setting device up");
                    netlink::set_link_up(h, index, name).await?;
                }
                return Ok(index);
            }
            warn!(device = %name, wrong = %wrong.join(", "), "recreating VXLAN device with wrong attributes");
            netlink::del_link(h, index, name).await?;
        }
        let builder = LinkVxlan::new(name, want.vni).dev(want.ext_index);
        let builder = match want.local {
            IpAddr::V4(ip) => builder.local(ip),
            IpAddr::V6(ip) => builder.local6(ip),
        };
        let msg = builder
            .port(want.port)
            .learning(false)
            .mtu(self.mtu)
            .address(want.mac.0.to_vec())
            .up()
            .build();
        let what = format!(
            "vxlan device {name} (vni {}, local {}, dstport {}, dev {})",
            want.vni, want.local, want.port, self.ext.name
        );
        netlink::add_link(h, msg, &what).await?;
        let link = netlink::link_by_name(h, name).await?.ok_or_else(|| {
            netlink::NetlinkError::NoInterface(format!("{name} vanished right after creation"))
        })?;
        info!(device = %name, vtep_mac = %want.mac, mtu = self.mtu, "created VXLAN device");
        Ok(link.header.index)
    }

    /// Makes sure `flannel-v6.<VNI>` exists and carries exactly `<own IPv6 subnet>::/128`
    /// (besides the kernel's link-local address); returns its index.
    async fn ensure_device6(&self, v6: &Vxlan6) -> Result<u32, BackendError> {
        let want = WantedDevice {
            vni: self.settings.vni,
            port: self.settings.port,
            local: IpAddr::V6(v6.local),
            ext_index: self.ext.index,
            mac: v6.mac,
        };
        let index = self.ensure_device(&v6.name, &want).await?;
        let Some(own) = v6.own else {
            return Ok(index);
        };
        let addr = Ipv6Network::new(own.network(), 128).map_err(|e| {
            netlink::NetlinkError::NoInterface(format!("address for IPv6 subnet {own}: {e}"))
        })?;
        let have = netlink::ipv6_addresses(&self.handle, Some(index)).await?;
        for (_, a) in &have {
            if *a != addr && netlink::is_routable_v6(&a.ip()) {
                netlink::del_address6(&self.handle, index, &v6.name, *a).await?;
            }
        }
        if !have.iter().any(|(_, a)| *a == addr) {
            netlink::add_address6(&self.handle, index, &v6.name, addr).await?;
        }
        Ok(index)
    }

    /// Leaves exactly `<subnet>.0/32` as the device's IPv4 address.
    async fn ensure_address(&self, index: u32, own: Ipv4Network) -> Result<(), BackendError> {
        let want = Ipv4Network::new(own.network(), 32).map_err(|e| {
            netlink::NetlinkError::NoInterface(format!("address for subnet {own}: {e}"))
        })?;
        let have = netlink::ipv4_addresses(&self.handle, Some(index)).await?;
        for (_, addr) in &have {
            if *addr != want {
                netlink::del_address(&self.handle, index, &self.name, *addr).await?;
            }
        }
        if !have.iter().any(|(_, a)| *a == want) {
            netlink::add_address(&self.handle, index, &self.name, want).await?;
        }
        Ok(())
    }

    fn devices(&self, index: Option<u32>, index6: Option<u32>) -> Devices {
        Devices {
            overlay: index.map(|index| Device {
                index,
                name: self.name.clone(),
            }),
            routes: Device {
                index: self.ext.index,
                name: self.ext.name.clone(),
            },
            overlay6: self.v6.as_ref().zip(index6).map(|(v6, index)| Device {
                index,
                name: v6.name.clone(),
            }),
        }
    }

    fn topology(&self, index: u32) -> VxlanTopology {
        VxlanTopology {
            dev_index: index,
            ext_index: self.ext.index,
            direct_routing: self.settings.direct_routing.then_some(self.ext.network),
        }
    }

    fn topology6(&self, index: u32) -> VxlanTopology6 {
        VxlanTopology6 {
            dev_index: index,
            ext_index: self.ext.index,
            direct_routing: self
                .settings
                .direct_routing
                .then_some(self.ext.network_v6)
                .flatten(),
        }
    }

    /// The entries the peers justify, by peer: the IPv4 ones on `flannel.<VNI>`, the IPv6
    /// ones on `flannel-v6.<VNI>`; each unusable lease is warned about once, not on every
    /// pass.
    fn desired(
        &mut self,
        index: Option<u32>,
        index6: Option<u32>,
        own: Ipv4Network,
        peer_leases: &[Lease],
    ) -> (EntriesByPeer, EntriesByPeer6) {
        let (desired, mut skipped) = match index {
            Some(dev_index) => {
                peers::vxlan_desired_by_peer(own, peer_leases, &self.topology(dev_index))
            }
            None => (EntriesByPeer::default(), Vec::new()),
        };
        let mut desired6 = EntriesByPeer6::default();
        if let (Some(v6), Some(dev_index)) = (&self.v6, index6) {
            let (by_peer, skipped6) =
                peers::vxlan_desired6(v6.own, peer_leases, &self.topology6(dev_index));
            desired6 = by_peer;
            skipped.extend(skipped6);
        }
        let now_skipped: BTreeSet<SkippedPeer> = skipped.into_iter().collect();
        for s in now_skipped.difference(&self.warned_skipped) {
            warn!(peer = %s.subnet, reason = %s.reason, "skipping peer lease");
        }
        self.warned_skipped = now_skipped;
        (desired, desired6)
    }

    /// See [`super::Backend::reconcile`]. The first pass after start also adopts the
    /// untagged routes a previous weft version wrote (see [`entries::adopt_untagged`]).
    pub async fn reconcile(
        &mut self,
        own: Ipv4Network,
        peer_leases: &[Lease],
    ) -> Result<ReconcileReport, BackendError> {
        self.dev_index = None;
        let index = if self.settings.enable_ipv4 {
            let index = self.ensure_device(&self.name, &self.wanted()).await?;
            self.ensure_address(index, own).await?;
            Some(index)
        } else {
            None
        };
        let index6 = match &self.v6 {
            Some(v6) => Some(self.ensure_device6(v6).await?),
            None => None,
        };
        let (mut desired, desired6) = self.desired(index, index6, own, peer_leases);
        let devices = self.devices(index, index6);
        let ext = self.ext.index;
        let view = pipeline::read_kernel(
            &self.handle,
            &devices,
            self.pipeline.routes_through_nexthops(),
            |r| Some(r.oif) == index || r.oif == ext,
        )
        .await?;
        self.pipeline.shape(&mut desired, &view);
        let mut merged = KernelEntries::merged(&desired);
        entries::merge6(&mut merged, &desired6);
        let mut d = entries::diff(&merged, &view.actual);
        let adopting = !self.adopted_untagged;
        if let (true, Some(index)) = (adopting, index) {
            let untagged =
                peers::untagged_routes(&view.untagged, index, ext, self.settings.network);
            if !untagged.is_empty() {
                info!(device = %self.name, routes = untagged.len(), "adopting the untagged routes of a previous version");
            }
            entries::adopt_untagged(&mut d, &merged, &untagged);
        }
        drop(merged);
        let report = self.pipeline.full(&devices, desired, desired6, d).await?;
        if report.failed == 0 {
            self.adopted_untagged = true;
        }
        // A sentinel index marks the pass done on an IPv6-only node without flannel.<VNI>.
        self.dev_index = Some(index.unwrap_or(0));
        if let Some(v6) = &mut self.v6 {
            v6.index = index6;
        }
        debug!(device = %self.name, ?report, "reconciled VXLAN peers");
        Ok(report)
    }

    /// Applies the entries of the peers that changed since the last pass, and nothing else;
    /// `None` when a full reconcile is due.
    pub async fn apply_changes(
        &mut self,
        own: Ipv4Network,
        changes: &[PeerChange],
    ) -> Result<Option<ReconcileReport>, BackendError> {
        let Some(index) = self.dev_index else {
            return Ok(None);
        };
        // An IPv6-only network has no `flannel.<VNI>` (the index is the pass's sentinel) and
        // keys every lease's IPv4 part 0.0.0.0/0: its changes are IPv6 entries alone.
        let index = Some(index).filter(|_| self.settings.enable_ipv4);
        let index6 = match &self.v6 {
            Some(v6) => match v6.index {
                Some(i) => Some(i),
                None => return Ok(None),
            },
            None => None,
        };
        let mut entries = Vec::with_capacity(changes.len());
        let mut entries6 = Vec::new();
        for change in changes {
            if let Some(index) = index {
                self.warned_skipped.retain(|s| s.subnet != change.subnet);
                let wanted = match &change.lease {
                    Some(lease) => match peers::vxlan_peer(own, lease, &self.topology(index)) {
                        Ok(e) => e,
                        Err(s) => {
                            warn!(peer = %s.subnet, reason = %s.reason, "skipping peer lease");
                            self.warned_skipped.insert(s);
                            None
                        }
                    },
                    None => None,
                };
                entries.push((change.subnet, wanted));
            }
            if let (Some(v6), Some(dev_index), Some(subnet6)) = (&self.v6, index6, change.subnet6) {
                let wanted6 = match &change.lease {
                    Some(lease) => {
                        match peers::vxlan_peer6(v6.own, lease, &self.topology6(dev_index)) {
                            Ok(e) => e.map(|(_, e)| e),
                            Err(s) => {
                                warn!(peer = %s.subnet, reason = %s.reason, "skipping peer lease");
                                self.warned_skipped.insert(s);
                                None
                            }
                        }
                    }
                    None => None,
                };
                entries6.push((subnet6, wanted6));
            }
        }
        Ok(self
            .pipeline
            .incremental(&self.devices(index, index6), &entries, &entries6)
            .await?)
    }
}

/// The VTEP MAC of device `name`: the one persisted at `path`, else the MAC of an existing
/// device of that name (an upgrade from flanneld keeps its peers' entries valid), else a new
/// random one; a new MAC is persisted before any device is created with it.
async fn settle_vtep_mac(
    handle: &Handle,
    name: &str,
    path: &Path,
) -> Result<MacAddr, BackendError> {
    if let Some(mac) = load_vtep_mac(path)? {
        return Ok(mac);
    }
    let existing = netlink::link_by_name(handle, name)
        .await?
        .and_then(|l| netlink::link_mac(&l))
        .filter(MacAddr::is_unicast);
    let mac = existing.unwrap_or_else(MacAddr::random_local);
    store_vtep_mac(path, mac)?;
    info!(device = %name, vtep_mac = %mac, path = %path.display(), "persisted VTEP MAC");
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted() -> WantedDevice {
        WantedDevice {
            vni: 1,
            port: 8472,
            local: "192.0.2.1".parse::<std::net::Ipv4Addr>().unwrap().into(),
            ext_index: 2,
            mac: "0a:00:00:00:00:01".parse().unwrap(),
        }
    }

    fn link(data: Vec<InfoVxlan>, mac: &str) -> LinkMessage {
        let mut link = LinkMessage::default();
        link.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(data)),
        ]));
        let mac: MacAddr = mac.parse().unwrap();
        link.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
        link
    }

    fn good_data() -> Vec<InfoVxlan> {
        vec![
            InfoVxlan::Id(1),
            InfoVxlan::Port(8472),
            InfoVxlan::Local("192.0.2.1".parse().unwrap()),
            InfoVxlan::Link(2),
            InfoVxlan::Learning(false),
        ]
    }

    #[test]
    fn matching_device_is_kept() {
        assert!(device_mismatches(&link(good_data(), "0a:00:00:00:00:01"), &wanted()).is_empty());
    }

    #[test]
    fn each_wrong_attribute_is_named() {
        let mut data = good_data();
        data[0] = InfoVxlan::Id(2);
        data[1] = InfoVxlan::Port(4789);
        data[4] = InfoVxlan::Learning(true);
        let wrong = device_mismatches(&link(data, "0a:00:00:00:00:02"), &wanted());
        assert_eq!(
            wrong,
            vec![
                "vni is 2 (want 1)",
                "dstport is 4789 (want 8472)",
                "learning is true (want false)",
                "address is 0a:00:00:00:00:02 (want 0a:00:00:00:00:01)",
            ]
        );
    }

    #[test]
    fn non_vxlan_device_is_replaced() {
        let mut l = LinkMessage::default();
        l.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Dummy,
            )]));
        assert_eq!(device_mismatches(&l, &wanted()), vec!["kind is not vxlan"]);
    }

    #[test]
    fn vtep_mac_file_round_trips_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("weft-vtep-{}", std::process::id()));
        let path = vtep_mac_path(&dir.join("state"), 7);
        assert_eq!(load_vtep_mac(&path).unwrap(), None);
        let mac = MacAddr::random_local();
        store_vtep_mac(&path, mac).unwrap();
        assert_eq!(load_vtep_mac(&path).unwrap(), Some(mac));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = fs::metadata(dir.join("state"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700, "the state directory it created");
        fs::write(&path, "garbage\n").unwrap();
        let err = load_vtep_mac(&path).unwrap_err().to_string();
        assert!(
            err.contains("garbage") && err.contains("flannel.7.vtep-mac"),
            "{err}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
