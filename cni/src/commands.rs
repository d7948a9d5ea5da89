//! The CNI operations: ADD, DEL, CHECK, GC, STATUS (VERSION lives in `main`).

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::config::{Attachment, NetConf};
use crate::env::AttachmentEnv;
use crate::error::{Error, Result};
use crate::ip::{Ipv4Net, Ipv6Net};
use crate::ipam::{IpamStore, Pool, Pool6, LAST_RESERVED_FILE_6};
use crate::log::Log;
use crate::netlink::{format_mac, Link, Netlink, NetnsNetlink};
use crate::netns::{Netns, NetnsError};
use crate::result::{AddResult, Interface, IpConfig, IpConfig6, Route, Route6};
use crate::subnet_env::{NodeSubnet, NodeSubnet6};
use crate::version::Version;

/// MTU used when neither the config nor subnet.env names one.
const FALLBACK_MTU: u32 = 1500;

/// The host end's name: `veth` + 11 hex digits of a hash of (container ID, ifname), so DEL and GC
/// can find it without the container namespace.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in container_id
        .bytes()
        .chain(std::iter::once(0))
        .chain(ifname.bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("veth{:011x}", hash & 0x0fff_ffff_ffff)
}

/// The host veth's MAC, fixed from its name (so ADD need not read it back): locally
/// administered unicast.
pub fn host_veth_mac(host_name: &str) -> [u8; 6] {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in host_name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let b = hash.to_be_bytes();
    [(b[0] & 0xfe) | 0x02, b[1], b[2], b[3], b[4], b[5]]
}

/// The bridge's fixed MAC: locally administered `0a:58` + the gateway address.
pub fn bridge_mac(gateway: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = gateway.octets();
    [0x0a, 0x58, a, b, c, d]
}

fn netlink_err(op: String) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Netlink { op, source }
}

fn open_node_netlink() -> Result<Netlink> {
    Netlink::open().map_err(netlink_err(
        "open netlink socket in the node namespace".into(),
    ))
}

/// Maps a namespace failure on ADD/CHECK: gone → unknown container (3); not a netns → bad CNI_NETNS (4).
fn netns_error(err: NetnsError, container: &str) -> Error {
    match err {
        NetnsError::Missing { .. } => Error::UnknownContainer {
            container: container.to_string(),
            reason: err.to_string(),
        },
        NetnsError::NotNetns { ref path, .. } => Error::InvalidEnv {
            name: "CNI_NETNS",
            value: path.display().to_string(),
            reason: err.to_string(),
        },
        NetnsError::Restore { path, source } => Error::Io {
            op: "return to the node namespace from",
            path,
            source,
        },
        NetnsError::Io { op, path, source } => Error::Io {
            op: match op {
                "open" => "open network namespace",
                "stat" => "stat network namespace",
                "statfs" => "statfs network namespace",
                _ => "enter network namespace",
            },
            path,
            source,
        },
    }
}

fn netns_path(env: &AttachmentEnv) -> Result<PathBuf> {
    env.netns.clone().ok_or_else(|| Error::InvalidEnv {
        name: "CNI_NETNS",
        value: String::new(),
        reason: "required but not set".into(),
    })
}

/// ADD: bridge, address, veth pair into the container, routes. Undoes its work on failure.
pub fn add(conf: &NetConf, env: &AttachmentEnv, log: &Log) -> Result<Value> {
    let node = NodeSubnet::load(&conf.subnet_file)?;
    let mtu = conf.mtu.or(node.mtu).unwrap_or(FALLBACK_MTU);
    let pool = node.ipv4.map(|v4| Pool::new(v4.subnet));
    let requested = requested_address(conf, env, pool.as_ref())?;
    let netns = Netns::open(&netns_path(env)?).map_err(|e| netns_error(e, &env.container_id))?;
    let mut container_nl = netns
        .netlink()
        .map_err(|e| netns_error(e, &env.container_id))?;
    let exists = container_nl
        .link_by_name(&env.ifname)
        .map_err(netlink_err(format!(
            "look up {} in {}",
            env.ifname,
            netns.path().display()
        )))?;
    if exists.is_some() {
        return Err(Error::InterfaceExists {
            ifname: env.ifname.clone(),
            netns: netns.path().display().to_string(),
        });
    }
    let mut node_nl = open_node_netlink()?;
    let bridge = ensure_bridge(&mut node_nl, &conf.bridge, &node, mtu)?;
    enable_forwarding(&conf.bridge, node.ipv6.is_some())?;
    if let Some(v6) = &node.ipv6 {
        ensure_bridge6(&mut node_nl, &bridge, v6)?;
    }

    let store = IpamStore::new(&conf.data_dir, &conf.name);
    // `made`: the IPv4 address was allocated by this ADD (a static one the attachment
    // already held is not, and a failure must leave it to its holder).
    let (ip, ip6, made) = {
        let locked = store.lock()?;
        let (ip, made) = match (requested, &pool) {
            (Some(ip), _) => (
                Some(ip),
                locked.allocate_static(ip, &env.container_id, &env.ifname)?,
            ),
            (None, Some(pool)) => (
                Some(locked.allocate(pool, &env.container_id, &env.ifname)?),
                true,
            ),
            // An IPv6-only node.
            (None, None) => (None, false),
        };
        // One address per family, in host-local's layout: the IPv6 range is range set 1.
        let ip6 = match &node.ipv6 {
            None => None,
            Some(v6) => {
                match locked.allocate6(&Pool6::new(v6.subnet), &env.container_id, &env.ifname) {
                    Ok(ip6) => Some(ip6),
                    Err(e) => {
                        let ips: Vec<IpAddr> =
                            ip.filter(|_| made).into_iter().map(IpAddr::V4).collect();
                        // The exhaustion is the answer; a failed undo is logged, not
                        // answered in its place.
                        if let Err(undo) =
                            locked.release_hinted(&ips, &env.container_id, &env.ifname)
                        {
                            log.error(format_args!("undo: release {ips:?}: {undo}"));
                        }
                        return Err(e);
                    }
                }
            }
        };
        (ip, ip6, made)
    };
    let address = match (ip, node.ipv4) {
        (Some(ip), Some(v4)) => Some(Ipv4Net::new(ip, v4.subnet.prefix()).ok_or_else(|| {
            Error::InvalidConfig(format!("prefix of {} out of range", v4.subnet))
        })?),
        _ => None,
    };
    let address6 = node
        .ipv6
        .zip(ip6)
        .and_then(|(v6, ip6)| Ipv6Net::new(ip6, v6.subnet.prefix()));
    let host_name = host_veth_name(&env.container_id, &env.ifname);
    let wiring = Wiring {
        conf,
        env,
        node: &node,
        mtu,
        bridge: &bridge,
        host_name: &host_name,
        address,
        address6,
        netns: &netns,
        pod_mac: env.args.mac.or(conf.static_mac),
        log,
    };
    match wiring.attach(&mut node_nl, &mut container_nl) {
        Ok(result) => {
            log.info(format_args!(
                "ADD container={} ifname={} ip={} host={} netns={}",
                env.container_id,
                env.ifname,
                address
                    .map(|a| a.to_string())
                    .into_iter()
                    .chain(address6.map(|a| a.to_string()))
                    .collect::<Vec<_>>()
                    .join(","),
                host_name,
                netns.path().display()
            ));
            Ok(result.to_json(conf.cni_version, &conf.cni_version_text))
        }
        Err(err) => {
            log.error(format_args!(
                "ADD container={} ifname={} failed, undoing: {err}",
                env.container_id, env.ifname
            ));
            // A duplicate's host veth belongs to the attachment already in place.
            if !matches!(err, Error::DuplicateAttachment { .. }) {
                if let Err(e) = delete_link_named(&mut node_nl, &host_name) {
                    log.error(format_args!("undo: remove {host_name}: {e}"));
                }
            }
            let ips: Vec<IpAddr> = ip
                .filter(|_| made)
                .map(IpAddr::V4)
                .into_iter()
                .chain(ip6.map(IpAddr::V6))
                .collect();
            match store.lock() {
                Ok(locked) => {
                    if let Err(e) = locked.release_hinted(&ips, &env.container_id, &env.ifname) {
                        log.error(format_args!("undo: release {ips:?}: {e}"));
                    }
                }
                Err(e) => log.error(format_args!("undo: release {ips:?}: {e}")),
            }
            Err(err)
        }
    }
}

/// The static address asked for by `CNI_ARGS` (`IP=`) or the config (`runtimeConfig.ips`,
/// `args.cni.ips`), checked against the node subnet before anything is changed.
fn requested_address(
    conf: &NetConf,
    env: &AttachmentEnv,
    pool: Option<&Pool>,
) -> Result<Option<Ipv4Addr>> {
    let mut wanted: Vec<(Ipv4Addr, bool)> = Vec::new();
    for (ip, from_env) in env
        .args
        .ips
        .iter()
        .map(|ip| (*ip, true))
        .chain(conf.static_ips.iter().map(|ip| (*ip, false)))
    {
        if !wanted.iter().any(|(w, _)| *w == ip) {
            wanted.push((ip, from_env));
        }
    }
    let refuse = |from_env: bool, reason: String| {
        if from_env {
            Error::InvalidEnv {
                name: "CNI_ARGS",
                value: format!("IP={}", join_ips(&env.args.ips)),
                reason,
            }
        } else {
            Error::InvalidConfig(reason)
        }
    };
    match wanted.as_slice() {
        [] => Ok(None),
        [(ip, from_env)] => match pool.map(|p| p.static_refusal(*ip)) {
            Some(None) => Ok(Some(*ip)),
            Some(Some(reason)) => Err(refuse(*from_env, reason)),
            None => Err(refuse(
                *from_env,
                format!("requested static ip {ip}: the node has no IPv4 subnet (IPv6-only)"),
            )),
        },
        [.., (_, from_env)] => Err(refuse(
            *from_env,
            format!(
                "{} addresses requested ({}); weft assigns one IPv4 address per interface",
                wanted.len(),
                wanted
                    .iter()
                    .map(|(ip, _)| ip.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

fn join_ips(ips: &[Ipv4Addr]) -> String {
    ips.iter()
        .map(|ip| ip.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Everything ADD needs to wire one container.
struct Wiring<'a> {
    conf: &'a NetConf,
    env: &'a AttachmentEnv,
    node: &'a NodeSubnet,
    mtu: u32,
    bridge: &'a Link,
    host_name: &'a str,
    /// The pod's IPv4 address; `None` on an IPv6-only node.
    address: Option<Ipv4Net>,
    /// The pod's IPv6 address on a dual-stack node.
    address6: Option<Ipv6Net>,
    netns: &'a Netns,
    pod_mac: Option<[u8; 6]>,
    log: &'a Log,
}

impl Wiring<'_> {
    fn desired_routes(&self) -> Vec<Route> {
        let Some(v4) = self.node.ipv4 else {
            return Vec::new();
        };
        let gateway = v4.gateway();
        let mut routes = vec![Route {
            dst: v4.network.trunc(),
            gw: Some(gateway),
        }];
        if self.conf.is_default_gateway {
            routes.push(Route {
                dst: Ipv4Net::DEFAULT_ROUTE,
                gw: Some(gateway),
            });
        }
        for extra in &self.conf.routes {
            routes.push(Route {
                dst: extra.dst,
                gw: Some(extra.gw.unwrap_or(gateway)),
            });
        }
        let mut seen = HashSet::new();
        routes.retain(|r| seen.insert(r.dst));
        routes
    }

    /// The IPv6 twins of [`Wiring::desired_routes`]: the cluster's IPv6 network via the IPv6
    /// gateway, and the IPv6 default route with `isDefaultGateway`.
    fn desired_routes6(&self, v6: &NodeSubnet6) -> Vec<Route6> {
        let gateway = v6.subnet.addr();
        let mut routes = vec![Route6 {
            dst: v6.network.trunc(),
            gw: Some(gateway),
        }];
        if self.conf.is_default_gateway {
            routes.push(Route6 {
                dst: Ipv6Net::DEFAULT_ROUTE,
                gw: Some(gateway),
            });
        }
        routes
    }

    /// Gives the pod its IPv6 address (before the interface comes up); the kernel sends
    /// unsolicited neighbour advertisements for it when the interface comes up
    /// (`ndisc_notify`), the IPv6 twin of `arp_notify`, so neighbours holding an earlier
    /// owner's MAC switch at once.
    fn address6(&self, container_nl: &mut Netlink, index: u32, address: Ipv6Net) -> Result<()> {
        let ifname = &self.env.ifname;
        let netns_path = self.netns.path().display().to_string();
        // CNI_IFNAME is validated (no '/', at most 15 bytes), so the path stays in conf/.
        let sysctl = PathBuf::from(format!("/proc/sys/net/ipv6/conf/{ifname}/ndisc_notify"));
        self.netns
            .within(|| std::fs::write(&sysctl, "1"))
            .map_err(|e| netns_error(e, &self.env.container_id))?
            .map_err(|source| Error::Io {
                op: "turn on ndisc_notify (unsolicited neighbour advertisements) in the container",
                path: sysctl.clone(),
                source,
            })?;
        container_nl
            .add_address6(index, address)
            .map_err(netlink_err(format!(
                "add address {address} to {ifname} in {netns_path}"
            )))
    }

    /// Adds the pod's IPv6 routes (after the interface is up: the kernel refuses an IPv6
    /// gateway on a link that is down) and returns the result's IPv6 part.
    fn routes6(
        &self,
        container_nl: &mut Netlink,
        index: u32,
        address: Ipv6Net,
        v6: &NodeSubnet6,
    ) -> Result<(Vec<IpConfig6>, Vec<Route6>)> {
        let ifname = &self.env.ifname;
        let netns_path = self.netns.path().display().to_string();
        let mut kept = Vec::new();
        for route in self.desired_routes6(v6) {
            match container_nl.add_route6(route.dst, route.gw, index) {
                Ok(()) => kept.push(route),
                Err(e)
                    if e.raw_os_error() == Some(libc::EEXIST)
                        && route.dst == Ipv6Net::DEFAULT_ROUTE => {}
                Err(source) => {
                    return Err(Error::Netlink {
                        op: format!(
                            "add route {} via {} dev {ifname} in {netns_path}",
                            route.dst,
                            route.gw.map(|g| g.to_string()).unwrap_or_default()
                        ),
                        source,
                    })
                }
            }
        }
        let ips = vec![IpConfig6 {
            address,
            gateway: Some(v6.subnet.addr()),
            interface: Some(2),
        }];
        Ok((ips, kept))
    }

    fn attach(&self, node_nl: &mut Netlink, container_nl: &mut Netlink) -> Result<AddResult> {
        let ifname = &self.env.ifname;
        let netns_path = self.netns.path().display().to_string();
        let host_mac = host_veth_mac(self.host_name);
        let create = |nl: &mut Netlink| {
            nl.create_veth(
                self.host_name,
                host_mac,
                self.bridge.index,
                self.mtu,
                ifname,
                self.pod_mac,
                self.netns.file(),
            )
        };
        let created = match create(node_nl) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                let existing = node_nl
                    .link_by_name(self.host_name)
                    .map_err(netlink_err(format!("look up {}", self.host_name)))?;
                // Its peer lives in another namespace: the same (container, ifname) is wired
                // there already (CNI_IFNAME is absent from this one), and stays untouched.
                if existing.is_some_and(|l| l.peer_netnsid.is_some()) {
                    return Err(Error::DuplicateAttachment {
                        container: self.env.container_id.clone(),
                        ifname: ifname.clone(),
                        host: self.host_name.to_string(),
                    });
                }
                // A host end whose peer is gone or local is a leftover: replace it.
                delete_link_named(node_nl, self.host_name)?;
                create(node_nl)
            }
            other => other,
        };
        created.map_err(netlink_err(format!(
            "create veth {} (peer {ifname} in {netns_path}) on {}",
            self.host_name, self.bridge.name
        )))?;
        if self.conf.hairpin_mode {
            node_nl
                .set_hairpin(self.host_name)
                .map_err(netlink_err(format!(
                    "set hairpin on {} (port of {})",
                    self.host_name, self.bridge.name
                )))?;
        }
        let pod = container_nl
            .link_by_name(ifname)
            .map_err(netlink_err(format!("look up {ifname} in {netns_path}")))?
            .ok_or_else(|| Error::Netlink {
                op: format!("look up {ifname} in {netns_path} after creating it"),
                source: io::Error::from_raw_os_error(libc::ENODEV),
            })?;
        // The kernel announces the address (gratuitous ARP) when the interface comes up, so
        // neighbours holding an earlier owner's MAC for a re-used address switch at once.
        container_nl
            .set_arp_notify(pod.index)
            .map_err(netlink_err(format!(
                "turn on arp_notify of {ifname} in {netns_path}"
            )))?;
        if let Some(address) = self.address {
            container_nl
                .add_address(pod.index, address)
                .map_err(netlink_err(format!(
                    "add address {address} to {ifname} in {netns_path}"
                )))?;
        }
        // IPv6 before the interface comes up, so the advertisement goes out with it.
        let dual = self.address6.zip(self.node.ipv6);
        if let Some((address6, _)) = dual {
            self.address6(container_nl, pod.index, address6)?;
        }
        if !pod.up {
            container_nl
                .set_up(pod.index)
                .map_err(netlink_err(format!("set {ifname} up in {netns_path}")))?;
        }
        let (ips6, routes6) = match dual {
            Some((address6, v6)) => self.routes6(container_nl, pod.index, address6, &v6)?,
            None => (Vec::new(), Vec::new()),
        };
        let mut routes = self.desired_routes();
        let mut kept = Vec::with_capacity(routes.len());
        for route in routes.drain(..) {
            match container_nl.add_route(route.dst, route.gw, pod.index) {
                Ok(()) => kept.push(route),
                // Another network of the container owns the default route: leave it be (weft is
                // a secondary network there) and do not claim it in the result.
                Err(e)
                    if e.raw_os_error() == Some(libc::EEXIST)
                        && route.dst == Ipv4Net::DEFAULT_ROUTE =>
                {
                    self.log.info(format_args!(
                        "ADD container={} ifname={ifname}: default route exists already, left alone",
                        self.env.container_id
                    ));
                }
                Err(source) => {
                    return Err(Error::Netlink {
                        op: format!(
                            "add route {} via {} dev {ifname} in {netns_path}",
                            route.dst,
                            route.gw.map(|g| g.to_string()).unwrap_or_default()
                        ),
                        source,
                    })
                }
            }
        }
        let routes = kept;
        Ok(AddResult {
            interfaces: vec![
                Interface {
                    name: self.bridge.name.clone(),
                    mac: self.bridge.mac.clone(),
                    mtu: Some(self.bridge.mtu),
                    sandbox: None,
                },
                Interface {
                    name: self.host_name.to_string(),
                    mac: format_mac(&host_mac),
                    mtu: Some(self.mtu),
                    sandbox: None,
                },
                Interface {
                    name: ifname.clone(),
                    mac: pod.mac.clone(),
                    mtu: Some(pod.mtu),
                    sandbox: Some(netns_path),
                },
            ],
            ips: self
                .address
                .zip(self.node.ipv4)
                .map(|(address, v4)| IpConfig {
                    address,
                    gateway: Some(v4.gateway()),
                    interface: Some(2),
                })
                .into_iter()
                .collect(),
            routes,
            dns: self.conf.dns.clone(),
            ips6,
            routes6,
        })
    }
}

/// Makes sure the bridge also carries the node's IPv6 gateway (`FLANNEL_IPV6_SUBNET`'s address).
fn ensure_bridge6(nl: &mut Netlink, bridge: &Link, v6: &NodeSubnet6) -> Result<()> {
    let present = nl.addresses6(bridge.index).map_err(netlink_err(format!(
        "list IPv6 addresses of bridge {}",
        bridge.name
    )))?;
    if present.contains(&v6.subnet) {
        return Ok(());
    }
    match nl.add_address6(bridge.index, v6.subnet) {
        Ok(()) => Ok(()),
        // Another ADD running in parallel added it first.
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(Error::Netlink {
            op: format!("add IPv6 gateway {} to bridge {}", v6.subnet, bridge.name),
            source: e,
        }),
    }
}

/// Makes sure the bridge exists, is up and carries exactly the gateway address. A gateway
/// address of an earlier node subnet (weftd leased a new one) is replaced; any other address is
/// a conflict and nothing is changed.
fn ensure_bridge(nl: &mut Netlink, name: &str, node: &NodeSubnet, mtu: u32) -> Result<Link> {
    let lookup = |nl: &mut Netlink| {
        nl.link_by_name(name)
            .map_err(netlink_err(format!("look up bridge {name}")))
    };
    let mut bridge = match lookup(nl)? {
        Some(link) => link,
        None => {
            match nl.create_bridge(name, mtu, bridge_mac(node.mac_seed())) {
                Ok(()) => {}
                // Another ADD running in parallel created it first.
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => {
                    return Err(Error::Netlink {
                        op: format!("create bridge {name} (mtu {mtu})"),
                        source: e,
                    })
                }
            }
            lookup(nl)?.ok_or_else(|| Error::Netlink {
                op: format!("look up bridge {name} after creating it"),
                source: io::Error::from_raw_os_error(libc::ENODEV),
            })?
        }
    };
    if bridge.kind.as_deref() != Some("bridge") {
        return Err(Error::InvalidConfig(format!(
            "device {name} exists but is a {} device, not a bridge",
            bridge.kind.as_deref().unwrap_or("unknown")
        )));
    }
    // Set explicitly: an MTU given at creation is lost when the bridge's last port goes.
    if bridge.mtu != mtu {
        nl.set_mtu(bridge.index, mtu)
            .map_err(netlink_err(format!("set MTU {mtu} on bridge {name}")))?;
        bridge.mtu = mtu;
    }
    let Some(v4) = node.ipv4 else {
        // An IPv6-only node: the IPv6 gateway is added by ensure_bridge6.
        if !bridge.up {
            nl.set_up(bridge.index)
                .map_err(netlink_err(format!("set bridge {name} up")))?;
        }
        return Ok(bridge);
    };
    let expected = v4.subnet;
    let present = nl
        .addresses(bridge.index)
        .map_err(netlink_err(format!("list addresses of bridge {name}")))?;
    let plan = plan_bridge_addresses(&present, expected, &bridge.mac).map_err(|found| {
        Error::BridgeAddressConflict {
            bridge: name.to_string(),
            found: found.to_string(),
            expected: expected.to_string(),
            mac: bridge.mac.clone(),
        }
    })?;
    // Old gateway first, then the MAC, then the new gateway: a plugin killed between any two
    // steps leaves a state the next ADD finishes (no address, or the MAC naming the new one).
    for old in &plan.remove {
        match nl.delete_address(bridge.index, *old) {
            Ok(()) => {}
            // A parallel ADD moved it first.
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {}
            Err(e) => {
                return Err(Error::Netlink {
                    op: format!("remove old gateway {old} from bridge {name}"),
                    source: e,
                })
            }
        }
    }
    if plan.add {
        let mac = bridge_mac(node.mac_seed());
        if bridge.mac != format_mac(&mac) {
            nl.set_mac(bridge.index, mac).map_err(netlink_err(format!(
                "set MAC {} on bridge {name}",
                format_mac(&mac)
            )))?;
            bridge.mac = format_mac(&mac);
        }
        match nl.add_address(bridge.index, expected) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => {
                return Err(Error::Netlink {
                    op: format!("add gateway {expected} to bridge {name}"),
                    source: e,
                })
            }
        }
    }
    if !bridge.up {
        nl.set_up(bridge.index)
            .map_err(netlink_err(format!("set bridge {name} up")))?;
    }
    Ok(bridge)
}

/// What to change on the bridge's IPv4 addresses.
#[derive(Debug, PartialEq, Eq)]
struct BridgeAddressPlan {
    /// Gateway addresses of an earlier node subnet, to remove.
    remove: Vec<Ipv4Net>,
    /// Whether the gateway address must be added.
    add: bool,
}

/// Decides how the bridge reaches carrying exactly `expected`. An address other than `expected`
/// is weft's old gateway only when the bridge's MAC is the one weft derives from it
/// (`0a:58:<address>`, set whenever weft adds a gateway); anything else is returned as a conflict.
fn plan_bridge_addresses(
    present: &[Ipv4Net],
    expected: Ipv4Net,
    bridge_mac_text: &str,
) -> std::result::Result<BridgeAddressPlan, Ipv4Net> {
    let mut remove = Vec::new();
    for address in present.iter().filter(|a| **a != expected) {
        if format_mac(&bridge_mac(address.addr())) != bridge_mac_text {
            return Err(*address);
        }
        remove.push(*address);
    }
    Ok(BridgeAddressPlan {
        remove,
        add: !present.contains(&expected),
    })
}

/// Turns on IPv4 forwarding in the node namespace and on the bridge (written only when off),
/// and IPv6 forwarding on a dual-stack node.
fn enable_forwarding(bridge: &str, ipv6: bool) -> Result<()> {
    let mut paths = vec![
        PathBuf::from("/proc/sys/net/ipv4/ip_forward"),
        PathBuf::from(format!("/proc/sys/net/ipv4/conf/{bridge}/forwarding")),
    ];
    if ipv6 {
        paths.push(PathBuf::from("/proc/sys/net/ipv6/conf/all/forwarding"));
    }
    for path in paths {
        let current = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            op: "read sysctl",
            path: path.clone(),
            source,
        })?;
        if current.trim() != "1" {
            std::fs::write(&path, "1").map_err(|source| Error::Io {
                op: "enable forwarding via sysctl",
                path: path.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

/// Deletes the link called `name` if it exists.
fn delete_link_named(nl: &mut Netlink, name: &str) -> Result<bool> {
    let Some(link) = nl
        .link_by_name(name)
        .map_err(netlink_err(format!("look up {name}")))?
    else {
        return Ok(false);
    };
    match nl.delete_link(link.index) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
        Err(source) => Err(Error::Netlink {
            op: format!("delete {name}"),
            source,
        }),
    }
}

/// Removes link `name` seen through `nl`. The kernel's slow post-unlink teardown is left to a
/// detached helper (`helper` opens a second socket in the same namespace); this returns once the
/// kernel announces the deletion, falling back to a plain synchronous delete otherwise.
fn remove_link(
    nl: &mut Netlink,
    name: &str,
    helper: impl FnOnce() -> Result<Netlink>,
) -> Result<()> {
    let Some(link) = nl
        .link_by_name(name)
        .map_err(netlink_err(format!("look up {name}")))?
    else {
        return Ok(());
    };
    let detached = nl
        .subscribe_links()
        .map_err(netlink_err(format!(
            "subscribe to link events to delete {name}"
        )))
        .and_then(|()| helper())
        .and_then(|h| {
            h.delete_link_detached(link.index)
                .map_err(netlink_err(format!("delete {name} from a helper process")))
        });
    if detached.is_ok()
        && nl
            .wait_link_deleted(link.index, LINK_GONE_TIMEOUT)
            .map_err(netlink_err(format!("wait for the deletion of {name}")))?
    {
        return Ok(());
    }
    delete_link_named(nl, name).map(|_| ())
}

/// How long DEL waits for a link deleted by the helper to disappear before deleting it itself.
const LINK_GONE_TIMEOUT: Duration = Duration::from_secs(5);

/// DEL: removes the veth pair (from whichever side still exists) and always releases the address.
pub fn del(conf: &NetConf, env: &AttachmentEnv, log: &Log) -> Result<()> {
    let mut first_error = None;
    if let Some(path) = &env.netns {
        let opened = Netns::open(path).and_then(|ns| ns.netlink().map(|nl| (ns, nl)));
        match opened {
            Ok((ns, mut container_nl)) => {
                let helper = || ns.netlink().map_err(|e| netns_error(e, &env.container_id));
                if let Err(e) = remove_link(&mut container_nl, &env.ifname, helper) {
                    first_error.get_or_insert(e);
                }
            }
            Err(e @ NetnsError::Restore { .. }) => return Err(netns_error(e, &env.container_id)),
            Err(e) => log.info(format_args!(
                "DEL container={}: skipping container side: {e}",
                env.container_id
            )),
        }
    }
    let host_name = host_veth_name(&env.container_id, &env.ifname);
    match open_node_netlink() {
        Ok(mut node_nl) => {
            if let Err(e) = remove_link(&mut node_nl, &host_name, open_node_netlink) {
                first_error.get_or_insert(e);
            }
        }
        Err(e) => {
            first_error.get_or_insert(e);
        }
    }
    let store = IpamStore::new(&conf.data_dir, &conf.name);
    // prevResult names the address: check just that file; scan everything only without it.
    let hints: Vec<IpAddr> = conf
        .prev_result
        .as_ref()
        .and_then(|prev| AddResult::from_json(prev).ok())
        .map(|prev| {
            let v4 = prev.ips.iter().map(|ip| IpAddr::V4(ip.address.addr()));
            let v6 = prev.ips6.iter().map(|ip| IpAddr::V6(ip.address.addr()));
            v4.chain(v6).collect()
        })
        .unwrap_or_default();
    let locked = store.lock()?;
    let mut released = locked.release_hinted(&hints, &env.container_id, &env.ifname)?;
    // Without hints, or with hints naming no IPv6 address where IPv6 is allocated (a
    // prevResult of an older plugin), every file is looked at.
    let v6_unhinted =
        !hints.iter().any(IpAddr::is_ipv6) && store.dir().join(LAST_RESERVED_FILE_6).exists();
    if released.is_empty() || v6_unhinted {
        released.extend(locked.release(&env.container_id, &env.ifname)?);
    }
    drop(locked);
    log.info(format_args!(
        "DEL container={} ifname={} released={released:?}",
        env.container_id, env.ifname
    ));
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// CHECK: compares the live attachment with `prevResult` and the allocation.
pub fn check(conf: &NetConf, env: &AttachmentEnv) -> Result<()> {
    conf.cni_version.require(Version::V0_4_0, "CHECK")?;
    let fail = |reason: String| Error::CheckFailed {
        container: env.container_id.clone(),
        ifname: env.ifname.clone(),
        reason,
    };
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| Error::InvalidConfig("CHECK requires prevResult".into()))?;
    let prev = AddResult::from_json(prev)?;
    let node = NodeSubnet::load(&conf.subnet_file)?;
    let mtu = conf.mtu.or(node.mtu).unwrap_or(FALLBACK_MTU);

    let container_index = prev
        .interfaces
        .iter()
        .position(|i| i.name == env.ifname && i.sandbox.is_some())
        .ok_or_else(|| fail("prevResult lists no container interface with this name".into()))?;
    let expected_ips: Vec<Ipv4Net> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none_or(|i| i == container_index))
        .map(|ip| ip.address)
        .collect();

    let store = IpamStore::new(&conf.data_dir, &conf.name);
    let allocated: Vec<IpAddr> = store
        .lock()?
        .allocations()?
        .into_iter()
        .filter(|a| a.container_id == env.container_id && a.ifname.as_deref() == Some(&env.ifname))
        .map(|a| a.ip)
        .collect();
    if allocated.is_empty() {
        return Err(Error::UnknownContainer {
            container: env.container_id.clone(),
            reason: format!(
                "no address is allocated to it (interface {}) in {}",
                env.ifname,
                store.dir().display()
            ),
        });
    }
    let expected_ips6: Vec<Ipv6Net> = prev
        .ips6
        .iter()
        .filter(|ip| ip.interface.is_none_or(|i| i == container_index))
        .map(|ip| ip.address)
        .collect();
    let expected_addrs = expected_ips
        .iter()
        .map(|ip| (ip.to_string(), IpAddr::V4(ip.addr())))
        .chain(
            expected_ips6
                .iter()
                .map(|ip| (ip.to_string(), IpAddr::V6(ip.addr()))),
        );
    for (text, ip) in expected_addrs {
        if !allocated.contains(&ip) {
            return Err(fail(format!(
                "address {text} is not allocated to it in {} (allocated: {allocated:?})",
                store.dir().display()
            )));
        }
    }

    let netns = Netns::open(&netns_path(env)?).map_err(|e| netns_error(e, &env.container_id))?;
    let netns_text = netns.path().display().to_string();
    let mut container_nl = netns
        .netlink()
        .map_err(|e| netns_error(e, &env.container_id))?;
    let pod = container_nl
        .link_by_name(&env.ifname)
        .map_err(netlink_err(format!(
            "look up {} in {netns_text}",
            env.ifname
        )))?
        .ok_or_else(|| fail(format!("interface missing from {netns_text}")))?;
    let prev_mac = &prev.interfaces[container_index].mac;
    if !prev_mac.is_empty() && !prev_mac.eq_ignore_ascii_case(&pod.mac) {
        return Err(fail(format!(
            "MAC is {}, prevResult says {prev_mac}",
            pod.mac
        )));
    }
    if pod.mtu != mtu {
        return Err(fail(format!("MTU is {}, expected {mtu}", pod.mtu)));
    }
    let addresses = container_nl
        .addresses(pod.index)
        .map_err(netlink_err(format!(
            "list addresses of {} in {netns_text}",
            env.ifname
        )))?;
    for ip in &expected_ips {
        if !addresses.contains(ip) {
            return Err(fail(format!(
                "address {ip} missing (present: {})",
                join(&addresses)
            )));
        }
    }
    if !expected_ips6.is_empty() {
        let addresses6 = container_nl
            .addresses6(pod.index)
            .map_err(netlink_err(format!(
                "list IPv6 addresses of {} in {netns_text}",
                env.ifname
            )))?;
        for ip in &expected_ips6 {
            if !addresses6.contains(ip) {
                return Err(fail(format!("address {ip} missing")));
            }
        }
    }
    if !prev.routes6.is_empty() {
        let routes6 = container_nl
            .routes6()
            .map_err(netlink_err(format!("list IPv6 routes in {netns_text}")))?;
        for want in &prev.routes6 {
            let found = routes6
                .iter()
                .any(|r| r.dst == want.dst.trunc() && (want.gw.is_none() || r.gw == want.gw));
            if !found {
                return Err(fail(format!(
                    "route {} via {} missing",
                    want.dst,
                    want.gw.map(|g| g.to_string()).unwrap_or_default()
                )));
            }
        }
    }
    let routes = container_nl
        .routes()
        .map_err(netlink_err(format!("list routes in {netns_text}")))?;
    for want in &prev.routes {
        let found = routes
            .iter()
            .any(|r| r.dst == want.dst.trunc() && (want.gw.is_none() || r.gw == want.gw));
        if !found {
            return Err(fail(format!(
                "route {} via {} missing",
                want.dst,
                want.gw.map(|g| g.to_string()).unwrap_or_default()
            )));
        }
    }

    let mut node_nl = open_node_netlink()?;
    let bridge = node_nl
        .link_by_name(&conf.bridge)
        .map_err(netlink_err(format!("look up bridge {}", conf.bridge)))?
        .ok_or_else(|| fail(format!("bridge {} missing", conf.bridge)))?;
    let host_name = host_veth_name(&env.container_id, &env.ifname);
    let host = node_nl
        .link_by_name(&host_name)
        .map_err(netlink_err(format!("look up {host_name}")))?
        .ok_or_else(|| fail(format!("host veth {host_name} missing")))?;
    if host.master != Some(bridge.index) {
        return Err(fail(format!(
            "host veth {host_name} is not a port of bridge {}",
            conf.bridge
        )));
    }
    Ok(())
}

fn join(nets: &[Ipv4Net]) -> String {
    nets.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// GC: releases allocations no valid attachment names and removes their host veths.
pub fn gc(conf: &NetConf, log: &Log) -> Result<()> {
    conf.cni_version.require(Version::V1_1_0, "GC")?;
    let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
        Error::InvalidConfig("GC requires cni.dev/valid-attachments (may be empty)".into())
    })?;
    let valid_containers: HashSet<&str> = valid.iter().map(|a| a.container_id.as_str()).collect();
    let store = IpamStore::new(&conf.data_dir, &conf.name);
    let released = store.lock()?.release_where(|a| match &a.ifname {
        Some(ifname) => !valid.contains(&Attachment {
            container_id: a.container_id.clone(),
            ifname: ifname.clone(),
        }),
        None => !valid_containers.contains(a.container_id.as_str()),
    })?;
    let mut node_nl = open_node_netlink()?;
    for allocation in &released {
        let Some(ifname) = &allocation.ifname else {
            continue;
        };
        let host_name = host_veth_name(&allocation.container_id, ifname);
        match delete_link_named(&mut node_nl, &host_name) {
            Ok(removed) => log.info(format_args!(
                "GC released {} of container={} ifname={ifname}; host veth {host_name} removed={removed}",
                allocation.ip, allocation.container_id
            )),
            Err(e) => log.error(format_args!("GC: {e}")),
        }
    }
    Ok(())
}

/// STATUS: ready when subnet.env can be read and parsed.
pub fn status(conf: &NetConf) -> Result<()> {
    conf.cni_version.require(Version::V1_1_0, "STATUS")?;
    NodeSubnet::load(&conf.subnet_file)
        .map(|_| ())
        .map_err(|e| Error::NotReady(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_stable_and_short() {
        let a = host_veth_name("3f6940ab5ab43bc5", "eth0");
        assert_eq!(a, host_veth_name("3f6940ab5ab43bc5", "eth0"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("veth"));
        assert_ne!(a, host_veth_name("3f6940ab5ab43bc5", "net1"));
        assert_ne!(a, host_veth_name("3f6940ab5ab43bc6", "eth0"));
        assert_ne!(host_veth_name("ab", "c"), host_veth_name("a", "bc"));
    }

    #[test]
    fn host_veth_mac_is_stable_unicast_and_local() {
        let mac = host_veth_mac("veth0123456789a");
        assert_eq!(mac, host_veth_mac("veth0123456789a"));
        assert_eq!(mac[0] & 0x01, 0, "unicast");
        assert_eq!(mac[0] & 0x02, 0x02, "locally administered");
        assert_ne!(mac, host_veth_mac("veth0123456789b"));
    }

    #[test]
    fn bridge_address_plan_replaces_only_weft_gateways() {
        let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
        let new = net("10.244.9.1/24");
        let old = net("10.244.7.1/24");
        let old_mac = "0a:58:0a:f4:07:01";
        let new_mac = "0a:58:0a:f4:09:01";
        let plan = |present: &[Ipv4Net], mac: &str| plan_bridge_addresses(present, new, mac);
        assert_eq!(
            plan(&[], old_mac),
            Ok(BridgeAddressPlan {
                remove: vec![],
                add: true
            })
        );
        assert_eq!(
            plan(&[new], new_mac),
            Ok(BridgeAddressPlan {
                remove: vec![],
                add: false
            })
        );
        assert_eq!(
            plan(&[old], old_mac),
            Ok(BridgeAddressPlan {
                remove: vec![old],
                add: true
            })
        );
        // Same address, new prefix length (SubnetLen changed).
        assert_eq!(
            plan(&[net("10.244.9.1/25")], new_mac),
            Ok(BridgeAddressPlan {
                remove: vec![net("10.244.9.1/25")],
                add: true
            })
        );
        // Not weft's: an address the MAC does not name, or any address next to weft's.
        assert_eq!(plan(&[old], "0a:58:0a:f4:63:01"), Err(old));
        assert_eq!(plan(&[old], "52:54:00:12:34:56"), Err(old));
        assert_eq!(
            plan(&[old, net("192.0.2.1/24")], old_mac),
            Err(net("192.0.2.1/24"))
        );
        assert_eq!(plan(&[new, old], new_mac), Err(old));
    }

    #[test]
    fn bridge_mac_is_locally_administered_and_from_gateway() {
        assert_eq!(
            format_mac(&bridge_mac(Ipv4Addr::new(10, 244, 1, 1))),
            "0a:58:0a:f4:01:01"
        );
    }
}
