//! The fuzz entry points, shared by the libFuzzer binaries (tests/fuzz/fuzz_targets) and the
//! corpus regression test (tests/fuzz_corpus.rs), so the suite replays every corpus file through
//! exactly the code the fuzzer ran.
//!
//! Each entry point takes arbitrary bytes, feeds them to a parser of hostile input and panics
//! only when an invariant breaks: a parser must never panic, and what it accepts must survive a
//! round trip through weft's own writer.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use weft::config::NetworkConfig;
use weft::lease::{lease_key, parse_lease_key, LeaseAttrs, RawLease};
use weft::subnet::{parse_dual_subnet_key, subnet_key};
use weft::subnet_env::SubnetEnv;
use weft::validate::{
    parse_mac, validate_lease, validate_leases, AcceptedSubnets, LeasePolicy, NodeIdentity,
};

/// The names of the targets, as directories under tests/fuzz/corpus and binaries of the fuzz crate.
pub const TARGETS: [&str; 4] = ["network_config", "lease", "subnet_env", "validation"];

/// Runs the entry point called `name` on `data`; `false` for an unknown name.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "network_config" => network_config(data),
        "lease" => lease(data),
        "subnet_env" => subnet_env(data),
        "validation" => validation(data),
        _ => return false,
    }
    true
}

const PREFIX: &str = "/coreos.com/network";

/// `<prefix>/config`: a config that parses is consistent (SubnetLen, bounds inside Network,
/// aligned, min <= max) and its bounds are subnets it hands out.
pub fn network_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = NetworkConfig::parse(text) else {
        return;
    };
    if let Some(v6) = &cfg.ipv6 {
        let prefix = v6.network.prefix();
        assert!(
            v6.subnet_len >= prefix + 2 && v6.subnet_len <= 126,
            "IPv6SubnetLen {} for {}",
            v6.subnet_len,
            v6.network
        );
        assert!(v6.subnet_min <= v6.subnet_max, "{cfg:?}");
        for bound in [v6.subnet_min, v6.subnet_max] {
            assert!(v6.network.contains(bound), "{bound} outside {cfg:?}");
            let subnet = ipnetwork::Ipv6Network::new(bound, v6.subnet_len)
                .unwrap_or_else(|e| panic!("{bound}/{}: {e}", v6.subnet_len));
            assert!(
                v6.contains_subnet(&subnet),
                "{subnet} not handed out by {cfg:?}"
            );
        }
    }
    if !cfg.enable_ipv4 {
        assert!(cfg.ipv6.is_some(), "no family enabled: {cfg:?}");
        return;
    }
    let prefix = cfg.network.prefix();
    assert!(prefix <= 28, "accepted Network {}", cfg.network);
    assert!(
        cfg.subnet_len >= prefix + 2 && cfg.subnet_len <= 30,
        "SubnetLen {} for {}",
        cfg.subnet_len,
        cfg.network
    );
    assert!(cfg.subnet_min <= cfg.subnet_max, "{cfg:?}");
    for bound in [cfg.subnet_min, cfg.subnet_max] {
        let subnet = ipnet(bound, cfg.subnet_len);
        assert!(cfg.network.contains(bound), "{bound} outside {cfg:?}");
        assert!(
            cfg.contains_subnet(&subnet),
            "{subnet} not handed out by {cfg:?}"
        );
    }
}

/// A lease key and value, split at the first newline: a key that parses prints back to itself,
/// and a value that parses survives weft's writer unchanged.
pub fn lease(data: &[u8]) {
    let (key, value) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let key = String::from_utf8_lossy(key);
    if let Ok(dual) = parse_dual_subnet_key(&key) {
        let mut again = subnet_key(dual.v4);
        if let Some(v6) = dual.v6 {
            again = format!("{again}&{}-{}", v6.ip(), v6.prefix());
        }
        assert_eq!(parse_dual_subnet_key(&again).ok(), Some(dual), "{key:?}");
        let full = lease_key(PREFIX, dual.v4);
        assert_eq!(
            parse_lease_key(PREFIX, &full).ok(),
            Some(dual.v4),
            "{full:?}"
        );
    }
    let _ = parse_lease_key(PREFIX, &key);
    if let Ok(attrs) = LeaseAttrs::from_json(&key, value) {
        let json = attrs.to_json();
        let again = LeaseAttrs::from_json(&key, json.as_bytes());
        assert_eq!(again.ok().as_ref(), Some(&attrs), "{json}");
        let _ = (attrs.vni(), attrs.vtep_mac());
    }
}

/// `subnet.env`: what parses renders to a text that parses to the same file again.
pub fn subnet_env(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(env) = SubnetEnv::parse(text) else {
        return;
    };
    let rendered = env.render();
    let again = match SubnetEnv::parse(&rendered) {
        Ok(again) => again,
        Err(e) => panic!("rendered {rendered:?} does not parse: {e}"),
    };
    assert_eq!(again.render(), rendered);
    assert_eq!((again.network, again.subnet), (env.network, env.subnet));
    assert_eq!((again.mtu, again.ipmasq), (env.mtu, env.ipmasq));
    let _ = env.lease_subnet();
}

/// A lease table judged by validation. The first line is the network config (the default one
/// when it does not parse); every further line is `CREATE_REVISION ETCD_LEASE KEY VALUE`.
/// What is believed is disjoint, inside `Network`, of `SubnetLen`, never with an impossible
/// `PublicIP`, and the same whatever order etcd listed the keys in.
pub fn validation(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.lines();
    let config = lines
        .next()
        .and_then(|l| NetworkConfig::parse(l).ok())
        .or_else(|| NetworkConfig::parse(r#"{"Network":"10.244.0.0/16"}"#).ok());
    let Some(config) = config else {
        panic!("the default network config does not parse");
    };
    let own_ip = Ipv4Addr::new(192, 0, 2, 11);
    let policy = LeasePolicy {
        prefix: PREFIX.to_string(),
        config,
        node: NodeIdentity {
            public_ip: Some(own_ip),
            addresses: vec![own_ip, Ipv4Addr::new(198, 51, 100, 11)],
            vtep_mac: Some([0x0a, 0, 0, 0, 0, 0x11]),
            subnet: "10.244.1.0/24".parse().ok(),
            ..Default::default()
        },
    };
    let mut seen = BTreeSet::new();
    let raw: Vec<RawLease> = lines
        .filter_map(|line| {
            let mut parts = line.splitn(4, ' ');
            let create_revision = parts.next()?.parse().ok()?;
            let etcd_lease = parts.next()?.parse().ok()?;
            let key = parts.next()?.to_string();
            let value = parts.next().unwrap_or("").as_bytes().to_vec();
            // etcd holds one value per key.
            seen.insert(key.clone()).then_some(RawLease {
                key,
                value,
                etcd_lease,
                create_revision,
                mod_revision: create_revision,
            })
        })
        .collect();

    let verdicts = validate_leases(&policy, &raw);
    assert_eq!(verdicts.accepted.len() + verdicts.rejected.len(), raw.len());
    let cfg = &policy.config;
    let mut last_end: Option<u32> = None;
    let mut macs: BTreeMap<[u8; 6], Ipv4Addr> = BTreeMap::new();
    // IPv6 parts: inside IPv6Network, of IPv6SubnetLen, disjoint, with a usable PublicIPv6.
    let mut v6_seen: Vec<ipnetwork::Ipv6Network> = Vec::new();
    for lease in &verdicts.accepted {
        if let Some(v6) = lease.ipv6_subnet {
            let cfg6 = cfg
                .ipv6
                .as_ref()
                .unwrap_or_else(|| panic!("{v6} believed without IPv6"));
            assert!(cfg6.network.contains(v6.network()), "{v6} outside");
            assert_eq!(v6.prefix(), cfg6.subnet_len, "{v6}");
            assert!(
                !v6_seen
                    .iter()
                    .any(|o| o.contains(v6.network()) || v6.contains(o.network())),
                "{v6} overlaps"
            );
            v6_seen.push(v6);
            let ip6 = lease
                .attrs
                .public_ipv6
                .unwrap_or_else(|| panic!("{v6} without PublicIPv6"));
            assert!(
                !(ip6.is_loopback() || ip6.is_unspecified() || ip6.is_multicast()),
                "accepted PublicIPv6 {ip6}"
            );
        }
    }
    if !cfg.enable_ipv4 {
        assert!(verdicts.accepted.iter().all(|l| l.ipv6_subnet.is_some()));
    }
    // The IPv4 checks; an IPv6-only network's leases all have the IPv4 part 0.0.0.0/0.
    for lease in verdicts.accepted.iter().filter(|_| cfg.enable_ipv4) {
        let subnet = lease.subnet;
        assert!(cfg.network.contains(subnet.network()), "{subnet} outside");
        assert_eq!(subnet.prefix(), cfg.subnet_len, "{subnet}");
        assert_eq!(subnet.ip(), subnet.network(), "{subnet} misaligned");
        // Accepted leases come sorted by subnet, so disjoint means each starts past the last.
        if let Some(end) = last_end {
            assert!(u32::from(subnet.network()) > end, "{subnet} overlaps");
        }
        last_end = Some(u32::from(subnet.broadcast()));
        let ip = lease.attrs.public_ip;
        assert!(
            !(ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast()),
            "accepted PublicIP {ip}"
        );
        let ours = policy.node.subnet == Some(subnet);
        assert!(ours || ip != own_ip, "peer {subnet} claims our PublicIP");
        // One VTEP MAC leads to one node.
        if let Some(mac) = lease.attrs.vtep_mac().and_then(parse_mac) {
            let owner = *macs.entry(mac).or_insert(ip);
            assert_eq!(owner, ip, "{subnet}: VTEP MAC {mac:02x?} of two nodes");
        }
    }
    for rejected in &verdicts.rejected {
        let _ = (rejected.to_string(), rejected.reason.label());
    }

    let mut reversed: Vec<RawLease> = raw.clone();
    reversed.reverse();
    assert_eq!(
        validate_leases(&policy, &reversed),
        verdicts,
        "order matters"
    );

    // Each lease on its own: believed alone whenever it is believed in the table.
    for one in &raw {
        let alone = validate_lease(&policy, one, &AcceptedSubnets::default());
        let in_table = !verdicts.rejected.iter().any(|r| r.key == one.key);
        assert!(
            alone.is_ok() || !in_table,
            "{} believed only in a table",
            one.key
        );
    }
}

fn ipnet(ip: Ipv4Addr, len: u8) -> ipnetwork::Ipv4Network {
    match ipnetwork::Ipv4Network::new(ip, len) {
        Ok(net) => net,
        Err(e) => panic!("{ip}/{len}: {e}"),
    }
}
