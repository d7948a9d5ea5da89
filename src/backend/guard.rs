//! The last check before the kernel, independent of lease validation: whatever the store says,
//! no peer route may equal, cover or overlap this node's own addresses, the external
//! interface's connected prefixes, the etcd endpoints' addresses or the default route. A route
//! like that would cut the node off from etcd and its peers, and it could never hear the fix.

use std::fmt;
use std::net::Ipv4Addr;

use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::lease::Lease;
use crate::netlink::{self, ExternalInterface, NetlinkError};

/// One prefix no peer route may touch, and what it is (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protected {
    /// The prefix (a /32 for a single address).
    pub prefix: Ipv4Network,
    /// What it is: `address 192.0.2.11 of this node`, `etcd endpoint 192.0.2.254`, ...
    pub what: String,
}

/// One IPv6 prefix no peer route may touch, and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protected6 {
    /// The prefix (a /128 for a single address).
    pub prefix: Ipv6Network,
    /// What it is: `address 2001:db8::11 of this node`, ...
    pub what: String,
}

/// A peer route the guard refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedRoute {
    /// The route's destination (the peer's subnet).
    pub dst: Ipv4Network,
    /// The refused IPv6 destination, when the IPv6 route was the one refused.
    pub dst6: Option<Ipv6Network>,
    /// What it would have overlapped.
    pub protected: String,
}

impl fmt::Display for RefusedRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.dst6 {
            Some(dst6) => write!(f, "route to {dst6} overlaps {}", self.protected),
            None => write!(f, "route to {} overlaps {}", self.dst, self.protected),
        }
    }
}

/// The prefixes peer routes must stay clear of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteGuard {
    protected: Vec<Protected>,
    protected6: Vec<Protected6>,
}

/// Whether two prefixes share an address (one contains the other's network address).
fn overlaps(a: &Ipv4Network, b: &Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

impl RouteGuard {
    /// A guard for these prefixes; the default route (any /0) is always refused.
    pub fn new(protected: Vec<Protected>) -> RouteGuard {
        RouteGuard {
            protected,
            protected6: Vec::new(),
        }
    }

    /// Also guards these IPv6 prefixes (and the IPv6 default route).
    pub fn with_ipv6(mut self, protected6: Vec<Protected6>) -> RouteGuard {
        self.protected6 = protected6;
        self
    }

    /// Refuses an IPv6 route to `dst` that is a default route or overlaps a protected prefix;
    /// `dst4` names the lease in the refusal.
    pub fn check6(&self, dst4: Ipv4Network, dst: Ipv6Network) -> Result<(), RefusedRoute> {
        let refuse = |protected: String| RefusedRoute {
            dst: dst4,
            dst6: Some(dst),
            protected,
        };
        if dst.prefix() == 0 {
            return Err(refuse("the IPv6 default route".to_string()));
        }
        match self
            .protected6
            .iter()
            .find(|p| p.prefix.contains(dst.network()) || dst.contains(p.prefix.network()))
        {
            Some(p) => Err(refuse(p.what.clone())),
            None => Ok(()),
        }
    }

    /// Refuses a route to `dst` that is a default route or overlaps a protected prefix.
    pub fn check(&self, dst: Ipv4Network) -> Result<(), RefusedRoute> {
        if dst.prefix() == 0 {
            return Err(RefusedRoute {
                dst,
                dst6: None,
                protected: "the default route".to_string(),
            });
        }
        match self.protected.iter().find(|p| overlaps(&p.prefix, &dst)) {
            Some(p) => Err(RefusedRoute {
                dst,
                dst6: None,
                protected: p.what.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Checks the routes of one lease: its IPv4 subnet (an IPv6-only lease, IPv4 part
    /// 0.0.0.0-0, has no IPv4 route to check) and its IPv6 subnet.
    pub fn check_lease(&self, lease: &Lease) -> Result<(), RefusedRoute> {
        if lease.has_ipv4() || lease.ipv6_subnet.is_none() {
            self.check(lease.subnet)?;
        }
        match lease.ipv6_subnet {
            Some(v6) => self.check6(lease.subnet, v6),
            None => Ok(()),
        }
    }

    /// Splits `peers` into those whose route may be installed and the refused ones. Every
    /// backend routes a peer's subnet (`X via X.0 dev flannel.1 onlink`, `X via PublicIP`, `X
    /// dev flannel0`), so the subnet is what is checked.
    pub fn filter(&self, peers: Vec<Lease>) -> (Vec<Lease>, Vec<RefusedRoute>) {
        let mut allowed = Vec::with_capacity(peers.len());
        let mut refused = Vec::new();
        for lease in peers {
            match self.check_lease(&lease) {
                Ok(()) => allowed.push(lease),
                Err(r) => refused.push(r),
            }
        }
        (allowed, refused)
    }
}

/// Reads what the guard protects from the kernel now: every IPv4 address of this node, the
/// connected prefixes of the external interface and the default routes' gateways, plus the
/// etcd endpoints' addresses (resolved by the caller).
pub async fn protected_now(
    ext: &ExternalInterface,
    etcd_addresses: &[Ipv4Addr],
) -> Result<Vec<Protected>, NetlinkError> {
    let handle = netlink::connect()?;
    let addrs = netlink::ipv4_addresses(&handle, None).await?;
    let routes = netlink::main_table_routes(
        &netlink::dump_ipv4_routes(&handle).await?,
        netlink::RouteOrigin::Any,
    );
    let mut protected = Vec::new();
    for (index, addr) in &addrs {
        protected.push(Protected {
            prefix: Ipv4Network::from(addr.ip()),
            what: format!("address {} of this node", addr.ip()),
        });
        if *index == ext.index {
            protected.push(Protected {
                prefix: Ipv4Network::new(addr.network(), addr.prefix())
                    .unwrap_or_else(|_| Ipv4Network::from(addr.ip())),
                what: format!("connected prefix {addr} of {}", ext.name),
            });
        }
    }
    for gw in routes
        .iter()
        .filter(|r| r.dst.prefix() == 0)
        .filter_map(|r| r.gateway)
    {
        protected.push(Protected {
            prefix: Ipv4Network::from(gw),
            what: format!("default gateway {gw}"),
        });
    }
    for ip in etcd_addresses {
        protected.push(Protected {
            prefix: Ipv4Network::from(*ip),
            what: format!("etcd endpoint {ip}"),
        });
    }
    Ok(protected)
}

/// Reads the IPv6 prefixes the guard protects: every IPv6 address of this node, the external
/// interface's connected IPv6 prefixes and the IPv6 default routes' gateways.
pub async fn protected6_now(ext: &ExternalInterface) -> Result<Vec<Protected6>, NetlinkError> {
    let handle = netlink::connect()?;
    let addrs = netlink::ipv6_addresses(&handle, None).await?;
    let routes = netlink::main_table_routes6(
        &netlink::dump_ipv6_routes(&handle).await?,
        netlink::RouteOrigin::Any,
    );
    let mut protected = Vec::new();
    for (index, addr) in &addrs {
        protected.push(Protected6 {
            prefix: Ipv6Network::from(addr.ip()),
            what: format!("address {} of this node", addr.ip()),
        });
        if *index == ext.index && netlink::is_routable_v6(&addr.ip()) {
            protected.push(Protected6 {
                prefix: Ipv6Network::new(addr.network(), addr.prefix())
                    .unwrap_or_else(|_| Ipv6Network::from(addr.ip())),
                what: format!("connected prefix {addr} of {}", ext.name),
            });
        }
    }
    for gw in routes
        .iter()
        .filter(|r| r.dst.prefix() == 0)
        .filter_map(|r| r.gateway)
    {
        protected.push(Protected6 {
            prefix: Ipv6Network::from(gw),
            what: format!("IPv6 default gateway {gw}"),
        });
    }
    Ok(protected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn guard() -> RouteGuard {
        RouteGuard::new(vec![
            Protected {
                prefix: net("192.0.2.11/32"),
                what: "address 192.0.2.11 of this node".into(),
            },
            Protected {
                prefix: net("192.0.2.0/24"),
                what: "connected prefix 192.0.2.11/24 of eth0".into(),
            },
            Protected {
                prefix: net("198.51.100.7/32"),
                what: "etcd endpoint 198.51.100.7".into(),
            },
            Protected {
                prefix: net("127.0.0.1/32"),
                what: "address 127.0.0.1 of this node".into(),
            },
        ])
    }

    /// A peer lease as it would reach the backend if validation let anything through.
    fn lease(subnet: &str) -> Lease {
        Lease {
            ipv6_subnet: None,
            subnet: net(subnet),
            attrs: LeaseAttrs {
                public_ipv6: None,
                backend_v6_data: None,
                public_ip: "192.0.2.31".parse().unwrap(),
                backend_type: "vxlan".into(),
                backend_data: Some(serde_json::json!({"VNI": 1, "VtepMAC": "aa:bb:cc:00:00:31"})),
            },
            etcd_lease: Some(1),
            mod_revision: 1,
        }
    }

    #[test]
    fn routes_onto_the_underlay_etcd_own_addresses_or_default_are_refused() {
        let g = guard();
        for (dst, what) in [
            ("192.0.2.0/24", "address 192.0.2.11 of this node"),
            ("192.0.2.11/32", "address 192.0.2.11 of this node"),
            ("192.0.2.128/25", "connected prefix 192.0.2.11/24 of eth0"),
            ("192.0.2.64/26", "connected prefix 192.0.2.11/24 of eth0"),
            ("198.51.100.0/24", "etcd endpoint 198.51.100.7"),
            ("127.0.0.0/8", "address 127.0.0.1 of this node"),
            ("0.0.0.0/0", "the default route"),
        ] {
            let r = g.check(net(dst)).unwrap_err();
            assert_eq!(r.protected, what, "{dst}");
            assert_eq!(r.to_string(), format!("route to {dst} overlaps {what}"));
        }
        assert!(g.check(net("10.244.3.0/24")).is_ok());
        assert!(g.check(net("198.51.101.0/24")).is_ok());
    }

    #[test]
    fn filter_stops_what_validation_would_have_caught_without_it() {
        // No validation here: the guard alone keeps the node reachable.
        let (allowed, refused) = guard().filter(vec![
            lease("10.244.3.0/24"),
            lease("192.0.2.0/24"),
            lease("10.244.4.0/24"),
            lease("0.0.0.0/0"),
        ]);
        let allowed: Vec<String> = allowed.iter().map(|l| l.subnet.to_string()).collect();
        assert_eq!(allowed, ["10.244.3.0/24", "10.244.4.0/24"]);
        let refused: Vec<String> = refused.iter().map(|r| r.dst.to_string()).collect();
        assert_eq!(refused, ["192.0.2.0/24", "0.0.0.0/0"]);
    }

    #[test]
    fn ipv6_routes_over_own_addresses_or_underlay_are_refused() {
        let g = guard().with_ipv6(vec![
            Protected6 {
                prefix: "2001:db8::11/128".parse().unwrap(),
                what: "address 2001:db8::11 of this node".into(),
            },
            Protected6 {
                prefix: "2001:db8::/64".parse().unwrap(),
                what: "connected prefix 2001:db8::11/64 of eth0".into(),
            },
        ]);
        let mut ok = lease("10.244.2.0/24");
        ok.ipv6_subnet = Some("fd00:10:244:2::/64".parse().unwrap());
        let mut covers_underlay = lease("10.244.3.0/24");
        covers_underlay.ipv6_subnet = Some("2001:db8::/48".parse().unwrap());
        let mut inside_underlay = lease("10.244.4.0/24");
        inside_underlay.ipv6_subnet = Some("2001:db8::0:0:0:0/96".parse().unwrap());
        let mut default6 = lease("10.244.5.0/24");
        default6.ipv6_subnet = Some("::/0".parse().unwrap());
        // IPv6-only: the IPv4 part 0.0.0.0/0 is no route and not refused as a default route.
        let mut v6_only = lease("0.0.0.0/0");
        v6_only.ipv6_subnet = Some("fd00:10:244:6::/64".parse().unwrap());
        let (allowed, refused) = g.filter(vec![
            ok,
            covers_underlay,
            inside_underlay,
            default6,
            v6_only,
        ]);
        assert_eq!(allowed.len(), 2);
        let why: Vec<String> = refused.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            why,
            [
                "route to 2001:db8::/48 overlaps address 2001:db8::11 of this node",
                "route to 2001:db8::/96 overlaps address 2001:db8::11 of this node",
                "route to ::/0 overlaps the IPv6 default route",
            ]
        );
        // Without an IPv6 part, 0.0.0.0/0 stays the refused IPv4 default route.
        let (_, refused) = g.filter(vec![lease("0.0.0.0/0")]);
        assert_eq!(refused.len(), 1);
    }
}
