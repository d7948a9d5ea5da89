//! What the other backends leave behind when a node's `Backend.Type` changes.
//!
//! Every backend leaves its data path in place when weftd stops (pods keep talking through a
//! restart), so after a switch, say from `udp` to `vxlan`, the old `flannel0` and its
//! cluster route would stay and catch traffic for any pod subnet the new backend has no
//! route for yet. At start the chosen backend removes the others' devices and routes:
//! VXLAN devices `flannel.<VNI>` (also of another VNI), the TUN device `flannel0`, the
//! WireGuard devices `flannel-wg`/`flannel-wg-v6` (TUN or kernel WireGuard), and
//! host-gw's routes (weft's route protocol, a gateway, inside the cluster network). WireGuard
//! itself removes the one of its two devices its `Mode` no longer uses (`flannel-wg-v6` after
//! a switch to a one-device mode or to IPv4 alone). Nothing else is touched: not other
//! devices, not routes of other protocols.

use ipnetwork::Ipv4Network;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::Handle;

use super::routes::{del_owned_routes, owned_routes};
use crate::netlink::{self, Ipv4Route, NetlinkError};

/// The backend that is starting, with what it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Starting<'a> {
    /// VXLAN with its device name (`flannel.<VNI>`).
    Vxlan(&'a str),
    /// UDP (`flannel0`).
    Udp,
    /// host-gw.
    HostGw,
    /// WireGuard with the devices its layout uses (`flannel-wg`, `flannel-wg-v6` or both).
    WireGuard(&'a [&'a str]),
}

/// A device another backend left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    /// Link index.
    pub index: u32,
    /// Link name.
    pub name: String,
}

pub(crate) fn link_kind(link: &LinkMessage) -> Option<&InfoKind> {
    link.attributes
        .iter()
        .filter_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => Some(infos),
            _ => None,
        })
        .flatten()
        .find_map(|i| match i {
            LinkInfo::Kind(kind) => Some(kind),
            _ => None,
        })
}

/// Whether a link named `name` of kind `kind` belongs to a backend other than `starting`.
pub fn is_other_backends_device(starting: Starting<'_>, name: &str, kind: &InfoKind) -> bool {
    let vxlan_device = name
        .strip_prefix("flannel.")
        .is_some_and(|vni| !vni.is_empty() && vni.bytes().all(|b| b.is_ascii_digit()));
    match kind {
        InfoKind::Vxlan if vxlan_device => starting != Starting::Vxlan(name),
        InfoKind::Tun if name == super::udp::TUN_NAME => starting != Starting::Udp,
        // The userspace data path's TUN device, or the kernel's (or Flannel's) WireGuard one.
        InfoKind::Tun | InfoKind::Wireguard if is_wireguard_device(name) => {
            !matches!(starting, Starting::WireGuard(keeps) if keeps.contains(&name))
        }
        _ => false,
    }
}

fn is_wireguard_device(name: &str) -> bool {
    name == super::wireguard::DEVICE_NAME || name == super::wireguard::DEVICE_NAME_V6
}

/// Whether one of weft's routes is a host-gw peer route that a starting `starting` backend
/// must remove: any backend but host-gw owns no gateway route into the cluster network on
/// the underlay interface `ext_index`.
pub fn is_other_backends_route(
    starting: Starting<'_>,
    route: &Ipv4Route,
    ext_index: u32,
    network: Ipv4Network,
) -> bool {
    starting != Starting::HostGw
        && route.gateway.is_some()
        && route.oif == ext_index
        && network.contains(route.dst.network())
        && route.dst.prefix() >= network.prefix()
}

/// Removes the devices and routes the other backends left (see the module docs); returns
/// what was removed, for the log.
pub async fn remove(
    handle: &Handle,
    starting: Starting<'_>,
    ext_index: u32,
    network: Ipv4Network,
) -> Result<Vec<String>, NetlinkError> {
    let mut removed = Vec::new();
    let mut doomed = Vec::new();
    for link in netlink::all_links(handle).await? {
        let (Some(name), Some(kind)) = (netlink::link_name(&link), link_kind(&link)) else {
            continue;
        };
        if is_other_backends_device(starting, &name, kind) {
            doomed.push(Leftover {
                index: link.header.index,
                name,
            });
        }
    }
    for dev in doomed {
        netlink::del_link(handle, dev.index, &dev.name).await?;
        removed.push(format!("device {}", dev.name));
    }
    let doomed: Vec<Ipv4Route> = owned_routes(handle)
        .await?
        .into_iter()
        .filter(|r| is_other_backends_route(starting, r, ext_index, network))
        .collect();
    if !doomed.is_empty() {
        del_owned_routes(&doomed, "the underlay interface").await?;
    }
    for route in doomed {
        removed.push(format!(
            "host-gw route {} via {}",
            route.dst,
            route.gateway.map(|g| g.to_string()).unwrap_or_default()
        ));
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    /// `Mode: separate` in a dual-stack network.
    const BOTH: &[&str] = &["flannel-wg", "flannel-wg-v6"];

    #[test]
    fn only_the_other_backends_devices_are_leftovers() {
        use Starting::*;
        let vx = InfoKind::Vxlan;
        let tun = InfoKind::Tun;
        assert!(is_other_backends_device(Udp, "flannel.1", &vx));
        assert!(is_other_backends_device(HostGw, "flannel.1", &vx));
        assert!(is_other_backends_device(
            Vxlan("flannel.2"),
            "flannel.1",
            &vx
        ));
        assert!(!is_other_backends_device(
            Vxlan("flannel.1"),
            "flannel.1",
            &vx
        ));
        assert!(is_other_backends_device(
            Vxlan("flannel.1"),
            "flannel0",
            &tun
        ));
        assert!(is_other_backends_device(HostGw, "flannel0", &tun));
        assert!(!is_other_backends_device(Udp, "flannel0", &tun));
        // WireGuard's devices, userspace (TUN) or kernel (Flannel's), v4 and v6.
        let wg = InfoKind::Wireguard;
        assert!(is_other_backends_device(Udp, "flannel-wg", &tun));
        assert!(is_other_backends_device(
            Vxlan("flannel.1"),
            "flannel-wg",
            &wg
        ));
        assert!(is_other_backends_device(HostGw, "flannel-wg-v6", &wg));
        assert!(!is_other_backends_device(
            WireGuard(BOTH),
            "flannel-wg",
            &tun
        ));
        assert!(!is_other_backends_device(
            WireGuard(BOTH),
            "flannel-wg-v6",
            &wg
        ));
        assert!(is_other_backends_device(WireGuard(BOTH), "flannel0", &tun));
        assert!(is_other_backends_device(WireGuard(BOTH), "flannel.1", &vx));
        assert!(!is_other_backends_device(HostGw, "wg0", &wg));
        // A one-device mode (or IPv4 alone) leaves flannel-wg-v6 unused: a leftover.
        assert!(is_other_backends_device(
            WireGuard(&["flannel-wg"]),
            "flannel-wg-v6",
            &tun
        ));
        assert!(is_other_backends_device(
            WireGuard(&["flannel-wg-v6"]),
            "flannel-wg",
            &wg
        ));
        // Not a backend's name or not its kind: someone else's device.
        assert!(!is_other_backends_device(Udp, "flannel.x", &vx));
        assert!(!is_other_backends_device(Udp, "flannel.", &vx));
        assert!(!is_other_backends_device(Udp, "vxlan0", &vx));
        assert!(!is_other_backends_device(
            Udp,
            "flannel.1",
            &InfoKind::Bridge
        ));
        assert!(!is_other_backends_device(
            Vxlan("flannel.1"),
            "flannel0",
            &vx
        ));
        assert!(!is_other_backends_device(HostGw, "tun0", &tun));
    }

    #[test]
    fn only_host_gw_peer_routes_are_leftover_routes() {
        let network: Ipv4Network = "10.244.0.0/16".parse().unwrap();
        let peer = Ipv4Route {
            dst: "10.244.3.0/24".parse().unwrap(),
            gateway: Some("192.0.2.3".parse().unwrap()),
            oif: 2,
            onlink: false,
            nexthop: None,
        };
        assert!(is_other_backends_route(
            Starting::Vxlan("flannel.1"),
            &peer,
            2,
            network
        ));
        assert!(is_other_backends_route(Starting::Udp, &peer, 2, network));
        assert!(!is_other_backends_route(
            Starting::HostGw,
            &peer,
            2,
            network
        ));
        // Another interface, no gateway (UDP's device route), outside the network, or wider
        // than it: not host-gw's.
        assert!(!is_other_backends_route(Starting::Udp, &peer, 5, network));
        let device = Ipv4Route {
            gateway: None,
            ..peer
        };
        assert!(!is_other_backends_route(Starting::Udp, &device, 2, network));
        let outside = Ipv4Route {
            dst: "10.245.3.0/24".parse().unwrap(),
            ..peer
        };
        assert!(!is_other_backends_route(
            Starting::Udp,
            &outside,
            2,
            network
        ));
        let wider = Ipv4Route {
            dst: "10.0.0.0/8".parse().unwrap(),
            ..peer
        };
        assert!(!is_other_backends_route(Starting::Udp, &wider, 2, network));
    }
}
