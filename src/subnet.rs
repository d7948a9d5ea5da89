//! Node subnets: Flannel's key spelling (`10.244.1.0-24`) and free-subnet selection.

use std::net::Ipv4Addr;

use ipnetwork::{Ipv4Network, Ipv6Network};
use rand::Rng;

use crate::config::{Ipv6Config, NetworkConfig};

/// How many free subnets, from the lowest up, the random choice picks among (Flannel's number).
pub const FREE_SUBNET_CHOICES: usize = 100;

/// A subnet key that is not Flannel's `A.B.C.D-LEN` spelling of a network address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("subnet key {key:?}: {reason}")]
pub struct SubnetKeyError {
    /// The key as found.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
    /// The key is well formed but an address is not its prefix's network address.
    pub misaligned: bool,
}

/// Both parts of a subnet key: `10.244.1.0-24`, or dual-stack `10.244.1.0-24&fd00:10:244:1::-64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DualSubnet {
    /// The IPv4 node subnet.
    pub v4: Ipv4Network,
    /// The IPv6 node subnet of a dual-stack key.
    pub v6: Option<Ipv6Network>,
}

/// Flannel's key for a subnet: `10.244.1.0-24`.
pub fn subnet_key(subnet: Ipv4Network) -> String {
    format!("{}-{}", subnet.ip(), subnet.prefix())
}

/// Flannel's key for a node's subnets (`MakeSubnetKey`): `10.244.1.0-24`, or with IPv6
/// `10.244.1.0-24&fd00:10:244:1::-64` (IPv6-only: `0.0.0.0-0&fd00:10:244:1::-64`).
pub fn dual_subnet_key(subnet: Ipv4Network, ipv6: Option<Ipv6Network>) -> String {
    match ipv6 {
        None => subnet_key(subnet),
        // Rust prints IPv6 addresses as Go's net.IP.String does (RFC 5952, lower case).
        Some(v6) => format!("{}&{}-{}", subnet_key(subnet), v6.ip(), v6.prefix()),
    }
}

/// Parses Flannel's subnet key (`10.244.1.0-24`). A dual-stack key (`10.244.1.0-24&fc00::-64`)
/// yields its IPv4 part. The address must be the subnet's network address.
pub fn parse_subnet_key(key: &str) -> Result<Ipv4Network, SubnetKeyError> {
    parse_dual_subnet_key(key).map(|d| d.v4)
}

/// Parses Flannel's subnet key with its optional IPv6 part (`10.244.1.0-24&fd00::-64`, as
/// Flannel's dual-stack mode writes it). Each address must be its prefix's network address.
pub fn parse_dual_subnet_key(key: &str) -> Result<DualSubnet, SubnetKeyError> {
    let fail = |reason: &str| SubnetKeyError {
        key: key.to_string(),
        reason: reason.to_string(),
        misaligned: false,
    };
    let (v4, v6) = match key.split_once('&') {
        Some((v4, v6)) => (v4, Some(v6)),
        None => (key, None),
    };
    let v6 = match v6 {
        None => None,
        Some(v6) => {
            let (ip6, len6) = v6
                .rsplit_once('-')
                .ok_or_else(|| fail("IPv6 part has no '-<prefix length>'"))?;
            let ip6 = ip6
                .parse::<std::net::Ipv6Addr>()
                .map_err(|_| fail("IPv6 part is not an IPv6 address"))?;
            let len6 = match len6.parse::<u8>() {
                Ok(n) if n <= 128 && len6.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(fail("IPv6 prefix length is not a number from 0 to 128")),
            };
            let net6 = Ipv6Network::new(ip6, len6).map_err(|e| fail(&e.to_string()))?;
            if net6.network() != ip6 {
                return Err(SubnetKeyError {
                    misaligned: true,
                    ..fail(&format!(
                        "{ip6} is not the network address of a /{len6} (that is {})",
                        net6.network()
                    ))
                });
            }
            Some(net6)
        }
    };
    let (ip, len) = v4
        .rsplit_once('-')
        .ok_or_else(|| fail("no '-<prefix length>'"))?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| fail("not an IPv4 address"))?;
    let len: u8 = match len.parse() {
        Ok(n) if n <= 32 && len.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => return Err(fail("prefix length is not a number from 0 to 32")),
    };
    let net = Ipv4Network::new(ip, len).map_err(|e| fail(&e.to_string()))?;
    if net.network() != ip {
        return Err(SubnetKeyError {
            misaligned: true,
            ..fail(&format!(
                "{ip} is not the network address of a /{len} (that is {})",
                net.network()
            ))
        });
    }
    Ok(DualSubnet { v4: net, v6 })
}

/// Every subnet the config may hand out, from `SubnetMin` to `SubnetMax`, lowest first.
pub fn candidate_subnets(cfg: &NetworkConfig) -> impl Iterator<Item = Ipv4Network> {
    let size = u64::from(cfg.subnet_size());
    let first = u64::from(u32::from(cfg.subnet_min));
    let last = u64::from(u32::from(cfg.subnet_max));
    let len = cfg.subnet_len;
    (first..=last)
        .step_by(size as usize)
        // first..=last stays within u32, so the conversion never fails.
        .filter_map(move |start| u32::try_from(start).ok())
        .filter_map(move |start| Ipv4Network::new(Ipv4Addr::from(start), len).ok())
}

/// The subnets already claimed, as disjoint address ranges, to test candidates against quickly.
#[derive(Debug, Clone, Default)]
pub struct TakenSubnets {
    /// Inclusive `[first, last]` address ranges, sorted, disjoint and not adjacent-merged.
    ranges: Vec<(u32, u32)>,
}

impl TakenSubnets {
    /// Builds the set from the subnets of every existing lease and reservation, whatever their
    /// prefix length (a /16 reservation blocks all the /24s inside it, as in Flannel).
    pub fn new<'a>(taken: impl IntoIterator<Item = &'a Ipv4Network>) -> Self {
        let mut ranges: Vec<(u32, u32)> = taken
            .into_iter()
            .map(|n| (u32::from(n.network()), u32::from(n.broadcast())))
            .collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for (first, last) in ranges {
            match merged.last_mut() {
                Some(prev) if first <= prev.1 => prev.1 = prev.1.max(last),
                _ => merged.push((first, last)),
            }
        }
        TakenSubnets { ranges: merged }
    }

    /// Whether `subnet` overlaps any taken subnet.
    pub fn overlaps(&self, subnet: &Ipv4Network) -> bool {
        let first = u32::from(subnet.network());
        let last = u32::from(subnet.broadcast());
        // Ranges are disjoint and sorted, so the last one starting at or below `last` has the
        // highest end of all that could overlap.
        let idx = self.ranges.partition_point(|&(start, _)| start <= last);
        idx > 0 && self.ranges[idx - 1].1 >= first
    }
}

/// The first `limit` subnets of the config that overlap no taken subnet, lowest first.
pub fn free_subnets(cfg: &NetworkConfig, taken: &TakenSubnets, limit: usize) -> Vec<Ipv4Network> {
    candidate_subnets(cfg)
        .filter(|s| !taken.overlaps(s))
        .take(limit)
        .collect()
}

/// Flannel's choice: a random one among the first [`FREE_SUBNET_CHOICES`] free subnets, so that
/// nodes starting together rarely race for the same one. `None` when the range is full.
pub fn choose_free_subnet<R: Rng + ?Sized>(
    cfg: &NetworkConfig,
    taken: &TakenSubnets,
    rng: &mut R,
) -> Option<Ipv4Network> {
    let free = free_subnets(cfg, taken, FREE_SUBNET_CHOICES);
    if free.is_empty() {
        return None;
    }
    let i = rng.random_range(0..free.len());
    free.get(i).copied()
}

/// Flannel's choice of an IPv6 node subnet: a random one among the first
/// [`FREE_SUBNET_CHOICES`] from `IPv6SubnetMin` up that overlap none of `taken`. `None` when
/// the range is full.
pub fn choose_free_ipv6_subnet<R: Rng + ?Sized>(
    cfg: &Ipv6Config,
    taken: &[Ipv6Network],
    rng: &mut R,
) -> Option<Ipv6Network> {
    let size = 1u128 << (128 - u32::from(cfg.subnet_len));
    let last = u128::from(cfg.subnet_max);
    let overlaps = |n: &Ipv6Network| {
        taken
            .iter()
            .any(|t| t.contains(n.network()) || n.contains(t.network()))
    };
    let mut free = Vec::new();
    let mut start = u128::from(cfg.subnet_min);
    while start <= last && free.len() < FREE_SUBNET_CHOICES {
        if let Ok(n) = Ipv6Network::new(start.into(), cfg.subnet_len) {
            if !overlaps(&n) {
                free.push(n);
            }
        }
        let Some(next) = start.checked_add(size) else {
            break;
        };
        start = next;
    }
    if free.is_empty() {
        return None;
    }
    free.get(rng.random_range(0..free.len())).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn cfg(json: &str) -> NetworkConfig {
        NetworkConfig::parse(json).unwrap()
    }

    #[test]
    fn key_round_trip() {
        assert_eq!(subnet_key(net("10.244.1.0/24")), "10.244.1.0-24");
        assert_eq!(
            parse_subnet_key("10.244.1.0-24").unwrap(),
            net("10.244.1.0/24")
        );
        assert_eq!(
            parse_subnet_key("10.5.0.192-26").unwrap(),
            net("10.5.0.192/26")
        );
        assert_eq!(
            parse_subnet_key("10.244.1.0-24&fc00:0:0:1::-64").unwrap(),
            net("10.244.1.0/24")
        );
    }

    #[test]
    fn bad_keys_are_rejected_with_the_key() {
        for (key, reason) in [
            ("10.244.1.0", "no '-<prefix length>'"),
            ("10.244.1-24", "not an IPv4 address"),
            (
                "10.244.1.0-33",
                "prefix length is not a number from 0 to 32",
            ),
            (
                "10.244.1.0-+4",
                "prefix length is not a number from 0 to 32",
            ),
            ("10.244.1.0-", "prefix length is not a number from 0 to 32"),
            (
                "10.244.1.5-24",
                "10.244.1.5 is not the network address of a /24 (that is 10.244.1.0)",
            ),
            ("10.244.1.0-24&zz-64", "IPv6 part is not an IPv6 address"),
            ("config", "no '-<prefix length>'"),
        ] {
            let e = parse_subnet_key(key).unwrap_err();
            assert_eq!(e.to_string(), format!("subnet key {key:?}: {reason}"));
        }
    }

    #[test]
    fn candidates_span_min_to_max() {
        let c = cfg(r#"{"Network": "10.244.0.0/16"}"#);
        let all: Vec<_> = candidate_subnets(&c).collect();
        assert_eq!(all.len(), 255);
        assert_eq!(all[0], net("10.244.1.0/24"));
        assert_eq!(all[254], net("10.244.255.0/24"));
        let c = cfg(r#"{"Network": "10.1.2.0/28"}"#);
        let all: Vec<_> = candidate_subnets(&c).collect();
        assert_eq!(
            all,
            vec![net("10.1.2.4/30"), net("10.1.2.8/30"), net("10.1.2.12/30")]
        );
        // The top of the address space must not overflow (a config refuses 240.0.0.0/4 now,
        // but the arithmetic must hold for any network it is given).
        let mut c = cfg(r#"{"Network": "10.255.255.0/24"}"#);
        c.network = net("255.255.255.0/24");
        c.subnet_min = "255.255.255.64".parse().unwrap();
        c.subnet_max = "255.255.255.192".parse().unwrap();
        assert_eq!(
            candidate_subnets(&c).last(),
            Some(net("255.255.255.192/26"))
        );
    }

    #[test]
    fn taken_overlap_is_by_range_not_equality() {
        let taken = TakenSubnets::new(&[
            net("10.244.0.0/20"),
            net("10.244.32.0/24"),
            net("10.244.16.0/24"),
        ]);
        assert!(taken.overlaps(&net("10.244.15.0/24")));
        assert!(taken.overlaps(&net("10.244.16.0/24")));
        assert!(!taken.overlaps(&net("10.244.17.0/24")));
        assert!(!taken.overlaps(&net("10.244.31.0/24")));
        assert!(taken.overlaps(&net("10.244.32.128/25")));
        assert!(taken.overlaps(&net("10.244.0.0/16")));
        assert!(!TakenSubnets::new(&[]).overlaps(&net("10.244.1.0/24")));
    }

    #[test]
    fn free_subnets_skip_taken_and_stop_at_limit() {
        let c = cfg(r#"{"Network": "10.244.0.0/16"}"#);
        let taken = TakenSubnets::new(&[net("10.244.1.0/24"), net("10.244.3.0/24")]);
        assert_eq!(
            free_subnets(&c, &taken, 3),
            vec![
                net("10.244.2.0/24"),
                net("10.244.4.0/24"),
                net("10.244.5.0/24")
            ]
        );
        assert_eq!(free_subnets(&c, &taken, 1000).len(), 253);
    }

    #[test]
    fn choice_is_random_among_the_first_hundred_free() {
        let c = cfg(r#"{"Network": "10.244.0.0/16"}"#);
        let taken = TakenSubnets::new(&[net("10.244.1.0/24")]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            let s = choose_free_subnet(&c, &taken, &mut rng).unwrap();
            assert!(s.ip() >= "10.244.2.0".parse::<Ipv4Addr>().unwrap());
            assert!(s.ip() <= "10.244.101.0".parse::<Ipv4Addr>().unwrap());
            seen.insert(s);
        }
        assert!(seen.len() > 90, "only {} distinct choices", seen.len());
    }

    #[test]
    fn ipv6_choice_skips_taken_and_stays_in_range() {
        let c =
            cfg(r#"{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/120"}"#);
        let v6 = c.ipv6.unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let taken: Vec<Ipv6Network> = vec!["fd00::40/122".parse().unwrap()];
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            seen.insert(
                choose_free_ipv6_subnet(&v6, &taken, &mut rng)
                    .unwrap()
                    .to_string(),
            );
        }
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            ["fd00::80/122", "fd00::c0/122"]
        );
        // A reservation of a larger prefix blocks the subnets inside it.
        let all: Vec<Ipv6Network> = vec!["fd00::/120".parse().unwrap()];
        assert_eq!(choose_free_ipv6_subnet(&v6, &all, &mut rng), None);
    }

    #[test]
    fn full_range_gives_none() {
        let c = cfg(r#"{"Network": "10.1.2.0/28"}"#);
        let taken = TakenSubnets::new(&[net("10.1.2.0/28")]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert_eq!(choose_free_subnet(&c, &taken, &mut rng), None);
        let taken = TakenSubnets::new(&[net("10.1.2.4/30"), net("10.1.2.12/30")]);
        assert_eq!(
            choose_free_subnet(&c, &taken, &mut rng),
            Some(net("10.1.2.8/30"))
        );
    }
}
