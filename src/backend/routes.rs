//! Routes weft owns, marked with its own route protocol number so a reconcile can tell them
//! from every other route on a shared device (host-gw programs its peers on the underlay
//! interface) and never removes a route it did not add.

use std::io;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, RouteMessageBuilder};

use crate::netlink::{dump_ipv4_routes, NetlinkError};

/// The route protocol (`proto` in `ip route`) of every route weft's UDP and host-gw backends
/// add: 87 is unassigned in iproute2's `rt_protos` (shows as `proto 87`).
pub const WEFT_ROUTE_PROTOCOL: u8 = 87;

/// A main-table IPv4 route weft owns: `dst [via gateway] dev oif proto 87`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnedRoute {
    /// Destination prefix.
    pub dst: Ipv4Network,
    /// Next hop; `None` for a device route (scope link).
    pub gateway: Option<Ipv4Addr>,
    /// Output device index.
    pub oif: u32,
}

impl OwnedRoute {
    fn describe(&self, dev: &str) -> String {
        match self.gateway {
            Some(gw) => format!("route {} via {gw} dev {dev}", self.dst),
            None => format!("route {} dev {dev}", self.dst),
        }
    }

    fn message(&self) -> RouteMessage {
        let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(self.dst.network(), self.dst.prefix())
            .output_interface(self.oif)
            .protocol(RouteProtocol::Other(WEFT_ROUTE_PROTOCOL));
        builder = match self.gateway {
            Some(gw) => builder.gateway(gw).scope(RouteScope::Universe),
            None => builder.scope(RouteScope::Link),
        };
        builder.build()
    }
}

fn request_error(op: String, err: rtnetlink::Error) -> NetlinkError {
    let source = match err {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io(),
        other => io::Error::other(other.to_string()),
    };
    NetlinkError::Request { op, source }
}

/// Reads weft's routes out of a route dump: main table, IPv4, protocol [`WEFT_ROUTE_PROTOCOL`].
pub fn owned_routes_of(msgs: &[RouteMessage]) -> Vec<OwnedRoute> {
    msgs.iter()
        .filter(|r| {
            r.header.address_family == AddressFamily::Inet
                && r.header.table == RouteHeader::RT_TABLE_MAIN
                && r.header.protocol == RouteProtocol::Other(WEFT_ROUTE_PROTOCOL)
        })
        .filter_map(|r| {
            let mut dst_ip = Ipv4Addr::UNSPECIFIED;
            let mut gateway = None;
            let mut oif = None;
            for attr in &r.attributes {
                match attr {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst_ip = *ip,
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(*ip),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            Some(OwnedRoute {
                dst: Ipv4Network::new(dst_ip, r.header.destination_prefix_length).ok()?,
                gateway,
                oif: oif?,
            })
        })
        .collect()
}

/// All routes weft owns in the main table.
pub async fn owned_routes(handle: &Handle) -> Result<Vec<OwnedRoute>, NetlinkError> {
    Ok(owned_routes_of(&dump_ipv4_routes(handle).await?))
}

/// Adds or replaces one of weft's routes; `dev` names the device in errors.
pub async fn replace_owned_route(
    handle: &Handle,
    route: &OwnedRoute,
    dev: &str,
) -> Result<(), NetlinkError> {
    handle
        .route()
        .add(route.message())
        .replace()
        .execute()
        .await
        .map_err(|e| request_error(format!("add {}", route.describe(dev)), e))
}

/// Deletes one of weft's routes; a route already gone is not an error.
pub async fn del_owned_route(
    handle: &Handle,
    route: &OwnedRoute,
    dev: &str,
) -> Result<(), NetlinkError> {
    match handle.route().del(route.message()).execute().await {
        Ok(()) => Ok(()),
        Err(e) => {
            let err = request_error(format!("delete {}", route.describe(dev)), e);
            if err.is_not_found() {
                Ok(())
            } else {
                Err(err)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_only_weft_routes_of_the_main_table() {
        let ours = OwnedRoute {
            dst: "10.244.2.0/24".parse().unwrap(),
            gateway: Some("192.0.2.2".parse().unwrap()),
            oif: 3,
        };
        let device_route = OwnedRoute {
            dst: "10.244.0.0/16".parse().unwrap(),
            gateway: None,
            oif: 7,
        };
        let mut foreign = ours.message();
        foreign.header.protocol = RouteProtocol::Boot;
        let mut other_table = ours.message();
        other_table.header.table = 100;
        let msgs = [ours.message(), device_route.message(), foreign, other_table];
        assert_eq!(owned_routes_of(&msgs), vec![ours, device_route]);
    }
}
