//! The UDP backend's forwarding table: longest-prefix match from a pod address to the
//! public IP of the node whose subnet holds it, plus the set of addresses allowed to send.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};

/// What the data path needs to know about the cluster, rebuilt by every reconcile and read
/// by the workers without locking per packet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardingTable {
    /// This node's subnet; datagrams for other destinations are not delivered.
    own_subnet: Option<Ipv4Network>,
    /// The address of `flannel0`, source of the ICMP errors weft sends.
    tun_addr: Option<Ipv4Addr>,
    /// Per prefix length (longest first): network address -> peer public IP.
    by_len: Vec<(u8, HashMap<u32, Ipv4Addr>)>,
    /// Public IPs of all peers: the only sources datagrams are accepted from.
    senders: HashSet<Ipv4Addr>,
    /// This node's IPv6 subnet on a dual-stack node.
    own_subnet6: Option<Ipv6Network>,
    /// The IPv6 twin of `by_len`: peers' IPv6 subnets, reached over the IPv4 underlay.
    by_len6: Vec<(u8, HashMap<u128, Ipv4Addr>)>,
}

impl ForwardingTable {
    /// Builds the table for a node owning `own_subnet` from `(peer subnet, peer public IP)`
    /// pairs; the own subnet's entry, if listed, is ignored.
    pub fn new(
        own_subnet: Ipv4Network,
        peers: impl IntoIterator<Item = (Ipv4Network, Ipv4Addr)>,
    ) -> Self {
        let mut lens: HashMap<u8, HashMap<u32, Ipv4Addr>> = HashMap::new();
        let mut senders = HashSet::new();
        for (subnet, public_ip) in peers {
            if subnet == own_subnet {
                continue;
            }
            lens.entry(subnet.prefix())
                .or_default()
                .insert(u32::from(subnet.network()), public_ip);
            senders.insert(public_ip);
        }
        let mut by_len: Vec<_> = lens.into_iter().collect();
        by_len.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
        ForwardingTable {
            own_subnet: Some(own_subnet),
            tun_addr: Some(own_subnet.network()),
            by_len,
            senders,
            own_subnet6: None,
            by_len6: Vec::new(),
        }
    }

    /// Adds the IPv6 side of a dual-stack node: its own IPv6 subnet and `(peer IPv6 subnet,
    /// peer public IP)` pairs (IPv6 pod packets travel over the IPv4 underlay, as IPv4 ones).
    pub fn with_ipv6(
        mut self,
        own_subnet6: Ipv6Network,
        peers: impl IntoIterator<Item = (Ipv6Network, Ipv4Addr)>,
    ) -> Self {
        let mut lens: HashMap<u8, HashMap<u128, Ipv4Addr>> = HashMap::new();
        for (subnet, public_ip) in peers {
            if subnet == own_subnet6 {
                continue;
            }
            lens.entry(subnet.prefix())
                .or_default()
                .insert(u128::from(subnet.network()), public_ip);
            self.senders.insert(public_ip);
        }
        let mut by_len6: Vec<_> = lens.into_iter().collect();
        by_len6.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
        self.own_subnet6 = Some(own_subnet6);
        self.by_len6 = by_len6;
        self
    }

    /// The public IP of the peer whose IPv6 subnet holds `dst` (longest prefix wins).
    pub fn next_hop6(&self, dst: Ipv6Addr) -> Option<Ipv4Addr> {
        let dst = u128::from(dst);
        self.by_len6.iter().find_map(|(len, nets)| {
            let mask = u128::MAX.checked_shl(128 - u32::from(*len)).unwrap_or(0);
            nets.get(&(dst & mask)).copied()
        })
    }

    /// Whether `dst` is inside this node's IPv6 subnet.
    pub fn is_local6(&self, dst: Ipv6Addr) -> bool {
        self.own_subnet6.is_some_and(|s| s.contains(dst))
    }

    /// The public IP of the peer whose subnet holds `dst` (longest prefix wins).
    pub fn next_hop(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        let dst = u32::from(dst);
        self.by_len.iter().find_map(|(len, nets)| {
            let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
            nets.get(&(dst & mask)).copied()
        })
    }

    /// Whether `src` is the public IP of a node holding a lease.
    pub fn is_peer(&self, src: Ipv4Addr) -> bool {
        self.senders.contains(&src)
    }

    /// Whether `dst` is inside this node's subnet.
    pub fn is_local(&self, dst: Ipv4Addr) -> bool {
        self.own_subnet.is_some_and(|s| s.contains(dst))
    }

    /// The source address for ICMP errors (`<subnet>.0`), once the node has a subnet.
    pub fn tun_addr(&self) -> Option<Ipv4Addr> {
        self.tun_addr
    }

    /// Compares the peer entries with those of `next`: (kept, added, removed).
    pub fn diff(&self, next: &ForwardingTable) -> (usize, usize, usize) {
        let entries = |t: &ForwardingTable| -> HashSet<(bool, u8, u128, Ipv4Addr)> {
            let v4 = t.by_len.iter().flat_map(|(len, nets)| {
                nets.iter()
                    .map(move |(n, ip)| (false, *len, u128::from(*n), *ip))
            });
            let v6 = t
                .by_len6
                .iter()
                .flat_map(|(len, nets)| nets.iter().map(move |(n, ip)| (true, *len, *n, *ip)));
            v4.chain(v6).collect()
        };
        let (old, new) = (entries(self), entries(next));
        let kept = old.intersection(&new).count();
        (kept, new.len() - kept, old.len() - kept)
    }

    /// Number of peer subnets (IPv4 and IPv6).
    pub fn len(&self) -> usize {
        self.by_len
            .iter()
            .map(|(_, nets)| nets.len())
            .chain(self.by_len6.iter().map(|(_, nets)| nets.len()))
            .sum()
    }

    /// Whether the table has no peers.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let t = ForwardingTable::new(
            net("10.244.1.0/24"),
            [
                (net("10.244.2.0/24"), ip("192.0.2.2")),
                (net("10.244.2.128/25"), ip("192.0.2.3")),
                (net("10.244.0.0/16"), ip("192.0.2.9")),
            ],
        );
        assert_eq!(t.next_hop(ip("10.244.2.5")), Some(ip("192.0.2.2")));
        assert_eq!(t.next_hop(ip("10.244.2.200")), Some(ip("192.0.2.3")));
        assert_eq!(t.next_hop(ip("10.244.77.1")), Some(ip("192.0.2.9")));
        assert_eq!(t.next_hop(ip("10.245.0.1")), None);
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn unknown_destination_has_no_next_hop() {
        let t = ForwardingTable::new(
            net("10.244.1.0/24"),
            [(net("10.244.2.0/24"), ip("192.0.2.2"))],
        );
        assert_eq!(t.next_hop(ip("10.244.3.1")), None);
        assert_eq!(
            t.next_hop(ip("10.244.1.7")),
            None,
            "own subnet is not a peer"
        );
    }

    #[test]
    fn own_subnet_is_local_and_not_a_peer() {
        let own = net("10.244.1.0/24");
        let t = ForwardingTable::new(
            own,
            [
                (own, ip("192.0.2.1")),
                (net("10.244.2.0/24"), ip("192.0.2.2")),
            ],
        );
        assert!(t.is_local(ip("10.244.1.9")));
        assert!(!t.is_local(ip("10.244.2.9")));
        assert!(t.is_peer(ip("192.0.2.2")));
        assert!(!t.is_peer(ip("192.0.2.1")));
        assert!(!t.is_peer(ip("198.51.100.7")));
        assert_eq!(t.tun_addr(), Some(ip("10.244.1.0")));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn diff_counts_kept_added_and_removed_peers() {
        let own = net("10.244.1.0/24");
        let old = ForwardingTable::new(
            own,
            [
                (net("10.244.2.0/24"), ip("192.0.2.2")),
                (net("10.244.3.0/24"), ip("192.0.2.3")),
            ],
        );
        let new = ForwardingTable::new(
            own,
            [
                (net("10.244.2.0/24"), ip("192.0.2.2")),
                (net("10.244.3.0/24"), ip("192.0.2.33")),
                (net("10.244.4.0/24"), ip("192.0.2.4")),
            ],
        );
        assert_eq!(old.diff(&new), (1, 2, 1));
        assert_eq!(ForwardingTable::default().diff(&old), (0, 2, 0));
    }

    #[test]
    fn default_route_entry_matches_everything() {
        let t = ForwardingTable::new(net("10.244.1.0/24"), [(net("0.0.0.0/0"), ip("192.0.2.5"))]);
        assert_eq!(t.next_hop(ip("8.8.8.8")), Some(ip("192.0.2.5")));
    }

    #[test]
    fn empty_table_knows_nothing() {
        let t = ForwardingTable::default();
        assert!(t.is_empty());
        assert!(!t.is_local(ip("10.244.1.1")));
        assert_eq!(t.next_hop(ip("10.244.1.1")), None);
        assert_eq!(t.tun_addr(), None);
    }

    #[test]
    fn ipv6_subnets_go_to_the_peers_public_ip() {
        let net6 = |s: &str| -> Ipv6Network { s.parse().unwrap() };
        let t = ForwardingTable::new(
            net("10.244.1.0/24"),
            [(net("10.244.2.0/24"), ip("192.0.2.2"))],
        )
        .with_ipv6(
            net6("fd00:0:0:1::/64"),
            [
                (net6("fd00:0:0:2::/64"), ip("192.0.2.2")),
                (net6("fd00:0:0:1::/64"), ip("192.0.2.1")),
            ],
        );
        assert_eq!(
            t.next_hop6("fd00:0:0:2::9".parse().unwrap()),
            Some(ip("192.0.2.2"))
        );
        assert_eq!(
            t.next_hop6("fd00:0:0:1::9".parse().unwrap()),
            None,
            "own subnet"
        );
        assert_eq!(t.next_hop6("fd00:0:0:3::9".parse().unwrap()), None);
        assert!(t.is_local6("fd00:0:0:1::9".parse().unwrap()));
        assert!(!t.is_local6("fd00:0:0:2::9".parse().unwrap()));
        assert_eq!(t.len(), 2);
        let v4_only = ForwardingTable::new(
            net("10.244.1.0/24"),
            [(net("10.244.2.0/24"), ip("192.0.2.2"))],
        );
        assert_eq!(v4_only.diff(&t), (1, 1, 0));
    }
}
