//! Reading weft's routes back from the kernel: main-table IPv4 routes marked with weft's route
//! protocol number ([`WEFT_ROUTE_PROTOCOL`]), so a reconcile can tell them from every other
//! route on a shared device and never removes a route it did not add.

use rtnetlink::Handle;

pub use crate::netlink::WEFT_ROUTE_PROTOCOL;
use crate::netlink::{dump_ipv4_routes, main_table_routes, Ipv4Route, NetlinkError, RouteOrigin};

/// All routes weft owns in the main table.
pub async fn owned_routes(handle: &Handle) -> Result<Vec<Ipv4Route>, NetlinkError> {
    Ok(main_table_routes(
        &dump_ipv4_routes(handle).await?,
        RouteOrigin::Weft,
    ))
}

/// Deletes some of weft's routes in one batch; a route already gone is not an error. Returns
/// the first refusal.
pub async fn del_owned_routes(routes: &[Ipv4Route], dev: &str) -> Result<(), NetlinkError> {
    let requests = routes
        .iter()
        .map(|r| crate::netlink::BatchRequest::del_route(r, dev))
        .collect();
    let (_, errors) = crate::netlink::run_batch(requests).await?;
    match errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::route::{RouteMessage, RouteProtocol};
    use rtnetlink::RouteMessageBuilder;
    use std::net::Ipv4Addr;

    fn message(dst: &str, gw: Option<&str>, oif: u32, protocol: RouteProtocol) -> RouteMessage {
        let dst: ipnetwork::Ipv4Network = dst.parse().unwrap();
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix())
            .output_interface(oif)
            .protocol(protocol);
        if let Some(gw) = gw {
            b = b.gateway(gw.parse().unwrap());
        }
        b.build()
    }

    #[test]
    fn reads_back_only_weft_routes_of_the_main_table() {
        let weft = RouteProtocol::Other(WEFT_ROUTE_PROTOCOL);
        let ours = message("10.244.2.0/24", Some("192.0.2.2"), 3, weft);
        let device_route = message("10.244.0.0/16", None, 7, weft);
        let foreign = message("10.244.3.0/24", Some("192.0.2.3"), 3, RouteProtocol::Boot);
        let mut other_table = ours.clone();
        other_table.header.table = 100;
        let msgs = [ours, device_route, foreign, other_table];
        let dsts = |origin| -> Vec<String> {
            main_table_routes(&msgs, origin)
                .iter()
                .map(|r| r.dst.to_string())
                .collect()
        };
        assert_eq!(dsts(RouteOrigin::Weft), ["10.244.2.0/24", "10.244.0.0/16"]);
        assert_eq!(dsts(RouteOrigin::Untagged), ["10.244.3.0/24"]);
        assert_eq!(dsts(RouteOrigin::Any).len(), 3);
    }
}
