//! The UDP backend's forwarding table: longest-prefix match from a pod address to the
//! public IP of the node whose subnet holds it, plus the set of addresses allowed to send.
//!
//! The pumps read an immutable snapshot (`Arc`) per packet batch, so a lookup never waits. A
//! full reconcile builds a new table; a lease change is applied by [`TableWriter`] to a second
//! copy (the previous snapshot, once no pump holds it) and swapped in, so its cost follows the
//! number of changes, not the number of peers.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, RwLock};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

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
    /// Public IPs of all peers, with the number of subnets each holds: the only sources
    /// datagrams are accepted from.
    senders: HashMap<Ipv4Addr, u32>,
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
        let mut senders: HashMap<Ipv4Addr, u32> = HashMap::new();
        for (subnet, public_ip) in peers {
            if subnet == own_subnet {
                continue;
            }
            if let Some(old) = lens
                .entry(subnet.prefix())
                .or_default()
                .insert(u32::from(subnet.network()), public_ip)
            {
                forget_sender(&mut senders, old);
            }
            *senders.entry(public_ip).or_default() += 1;
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
            if let Some(old) = lens
                .entry(subnet.prefix())
                .or_default()
                .insert(u128::from(subnet.network()), public_ip)
            {
                forget_sender(&mut self.senders, old);
            }
            *self.senders.entry(public_ip).or_default() += 1;
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
        self.senders.contains_key(&src)
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

    /// This node's subnet, once it has one.
    pub fn own_subnet(&self) -> Option<Ipv4Network> {
        self.own_subnet
    }

    /// Routes `subnet` (an IPv4 or a dual-stack node's IPv6 one) to `public_ip`, or (`None`)
    /// to nobody; the own subnets are never a peer's.
    pub fn edit(&mut self, subnet: impl Into<IpNetwork>, public_ip: Option<Ipv4Addr>) -> Edited {
        match subnet.into() {
            IpNetwork::V4(subnet) if Some(subnet) != self.own_subnet => edit_by_len(
                &mut self.by_len,
                &mut self.senders,
                subnet.prefix(),
                u32::from(subnet.network()),
                public_ip,
            ),
            // IPv6 subnets only on a dual-stack node (one that knows its own IPv6 subnet).
            IpNetwork::V6(subnet)
                if self.own_subnet6.is_some() && Some(subnet) != self.own_subnet6 =>
            {
                edit_by_len(
                    &mut self.by_len6,
                    &mut self.senders,
                    subnet.prefix(),
                    u128::from(subnet.network()),
                    public_ip,
                )
            }
            _ => Edited::Unchanged,
        }
    }
}

/// What one [`ForwardingTable::edit`] did to the table's peer entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edited {
    /// The entry was already so (or absent and asked to be absent).
    Unchanged,
    /// A new peer subnet.
    Added,
    /// A peer subnet now goes to another public IP.
    Replaced,
    /// A peer subnet is gone.
    Removed,
}

/// Sets or removes one network of one prefix length, keeping `by_len` longest first without
/// empty lengths and `senders` counting the subnets of each public IP.
fn edit_by_len<K: std::hash::Hash + Eq>(
    by_len: &mut Vec<(u8, HashMap<K, Ipv4Addr>)>,
    senders: &mut HashMap<Ipv4Addr, u32>,
    len: u8,
    net: K,
    public_ip: Option<Ipv4Addr>,
) -> Edited {
    let pos = by_len.iter().position(|(l, _)| *l <= len);
    let at = match (pos, public_ip) {
        (Some(i), _) if by_len[i].0 == len => i,
        (_, None) => return Edited::Unchanged,
        (Some(i), Some(_)) => {
            by_len.insert(i, (len, HashMap::new()));
            i
        }
        (None, Some(_)) => {
            by_len.push((len, HashMap::new()));
            by_len.len() - 1
        }
    };
    let nets = &mut by_len[at].1;
    let (old, edited) = match public_ip {
        Some(ip) => match nets.insert(net, ip) {
            Some(old) if old == ip => return Edited::Unchanged,
            Some(old) => (Some(old), Edited::Replaced),
            None => (None, Edited::Added),
        },
        None => match nets.remove(&net) {
            Some(old) => (Some(old), Edited::Removed),
            None => return Edited::Unchanged,
        },
    };
    if nets.is_empty() {
        by_len.remove(at);
    }
    if let Some(old) = old {
        forget_sender(senders, old);
    }
    if let Some(ip) = public_ip {
        *senders.entry(ip).or_default() += 1;
    }
    edited
}

/// Drops one subnet of `ip` from the sender counts.
fn forget_sender(senders: &mut HashMap<Ipv4Addr, u32>, ip: Ipv4Addr) {
    if let Some(n) = senders.get_mut(&ip) {
        *n -= 1;
        if *n == 0 {
            senders.remove(&ip);
        }
    }
}

/// The forwarding table as the pumps see it: swapped whole, read as a snapshot per batch.
pub type SharedTable = Arc<RwLock<Arc<ForwardingTable>>>;

/// The table the pumps use now.
pub fn snapshot(table: &SharedTable) -> Arc<ForwardingTable> {
    match table.read() {
        Ok(guard) => guard.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// Publishes `table` to the pumps; returns the one it replaces.
fn publish(shared: &SharedTable, table: ForwardingTable) -> Arc<ForwardingTable> {
    let mut guard = match shared.write() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    std::mem::replace(&mut *guard, Arc::new(table))
}

/// Peer entries a batch of edits added, replaced and removed, and the table's size after.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EditCounts {
    /// New peer subnets.
    pub added: usize,
    /// Peer subnets that moved to another public IP.
    pub replaced: usize,
    /// Peer subnets that are gone.
    pub removed: usize,
    /// Peer subnets in the table after the edits.
    pub len: usize,
}

/// The only writer of a [`SharedTable`]. Keeps the previously published table as a spare and
/// the edits it lacks: the next batch is applied to the spare (once the pumps no longer hold
/// it, which they do only for one packet batch) and published, so a batch of k edits costs
/// O(k), not a rebuild of every peer. Should a pump still hold the spare, the published table
/// is copied instead (counted in [`TableWriter::copies`]).
#[derive(Debug)]
pub struct TableWriter {
    shared: SharedTable,
    /// The table published before the current one.
    spare: Option<Arc<ForwardingTable>>,
    /// Edits published since `spare` was current.
    lag: Vec<(IpNetwork, Option<Ipv4Addr>)>,
    copies: usize,
}

impl TableWriter {
    /// The writer of `shared`.
    pub fn new(shared: SharedTable) -> Self {
        TableWriter {
            shared,
            spare: None,
            lag: Vec::new(),
            copies: 0,
        }
    }

    /// The table the pumps read.
    pub fn shared(&self) -> &SharedTable {
        &self.shared
    }

    /// The own subnet of the published table (`None` before the first full pass).
    pub fn shared_own_subnet(&self) -> Option<Ipv4Network> {
        snapshot(&self.shared).own_subnet()
    }

    /// Publishes a table built by a full pass; returns (kept, added, removed) peers against
    /// the one it replaces.
    pub fn replace(&mut self, table: ForwardingTable) -> (usize, usize, usize) {
        let counts = snapshot(&self.shared).diff(&table);
        // A full pass costs O(peers) anyway; the spare starts as a copy of what is published.
        self.spare = Some(Arc::new(table.clone()));
        self.lag.clear();
        publish(&self.shared, table);
        counts
    }

    /// Applies `edits` (subnet to public IP, or `None` to remove) and publishes the result.
    pub fn apply<S: Into<IpNetwork> + Copy>(
        &mut self,
        edits: &[(S, Option<Ipv4Addr>)],
    ) -> EditCounts {
        let mut next = match self.spare.take().map(Arc::try_unwrap) {
            Some(Ok(mut spare)) => {
                for (subnet, ip) in self.lag.drain(..) {
                    spare.edit(subnet, ip);
                }
                spare
            }
            _ => {
                self.lag.clear();
                self.copies += 1;
                ForwardingTable::clone(&snapshot(&self.shared))
            }
        };
        let mut counts = EditCounts::default();
        for (subnet, ip) in edits {
            match next.edit(*subnet, *ip) {
                Edited::Unchanged => {}
                Edited::Added => counts.added += 1,
                Edited::Replaced => counts.replaced += 1,
                Edited::Removed => counts.removed += 1,
            }
        }
        counts.len = next.len();
        self.spare = Some(publish(&self.shared, next));
        self.lag
            .extend(edits.iter().map(|(subnet, ip)| ((*subnet).into(), *ip)));
        counts
    }

    /// How many times a batch had to copy the whole table because a pump held the spare (or
    /// no full pass had published a table yet).
    pub fn copies(&self) -> usize {
        self.copies
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

    fn shared(table: ForwardingTable) -> SharedTable {
        Arc::new(RwLock::new(Arc::new(table)))
    }

    /// The table a full pass would build from `model`.
    fn rebuilt(
        own: Ipv4Network,
        model: &std::collections::BTreeMap<Ipv4Network, Ipv4Addr>,
    ) -> ForwardingTable {
        ForwardingTable::new(own, model.iter().map(|(s, ip)| (*s, *ip)))
    }

    #[test]
    fn edits_reach_the_pumps_without_copying_the_table() {
        let own = net("10.244.0.0/24");
        let mut model: std::collections::BTreeMap<_, _> = (1..=200u32)
            .map(|i| {
                let n = Ipv4Network::new(Ipv4Addr::from(0x0af4_0000 + (i << 8)), 24).unwrap();
                (n, Ipv4Addr::from(0xc000_0200 + i))
            })
            .collect();
        let mut w = TableWriter::new(shared(ForwardingTable::default()));
        assert_eq!(w.replace(rebuilt(own, &model)), (0, 200, 0));
        let batches: [&[(Ipv4Network, Option<Ipv4Addr>)]; 3] = [
            &[
                (net("10.244.1.0/24"), None),
                (net("10.245.7.0/24"), Some(ip("192.0.2.99"))),
            ],
            &[(net("10.244.2.0/24"), Some(ip("192.0.2.77")))],
            &[(net("10.245.7.0/24"), None), (net("10.244.3.0/24"), None)],
        ];
        let want = [
            EditCounts {
                added: 1,
                replaced: 0,
                removed: 1,
                len: 200,
            },
            EditCounts {
                added: 0,
                replaced: 1,
                removed: 0,
                len: 200,
            },
            EditCounts {
                added: 0,
                replaced: 0,
                removed: 2,
                len: 198,
            },
        ];
        for (edits, want) in batches.iter().zip(want) {
            assert_eq!(w.apply(edits), want);
            for (subnet, ip) in *edits {
                match ip {
                    Some(ip) => model.insert(*subnet, *ip),
                    None => model.remove(subnet),
                };
            }
            assert_eq!(*snapshot(w.shared()), rebuilt(own, &model));
        }
        assert_eq!(w.copies(), 0, "every batch reused the spare table");
    }

    #[test]
    fn a_snapshot_held_by_a_pump_stays_as_it_was() {
        let own = net("10.244.0.0/24");
        let mut w = TableWriter::new(shared(ForwardingTable::default()));
        w.replace(ForwardingTable::new(
            own,
            [(net("10.244.1.0/24"), ip("192.0.2.1"))],
        ));
        w.apply(&[(net("10.244.2.0/24"), Some(ip("192.0.2.2")))]);
        // A pump holds the current table (and through the next swap, the spare).
        let held = snapshot(w.shared());
        w.apply(&[(net("10.244.3.0/24"), Some(ip("192.0.2.3")))]);
        w.apply(&[(net("10.244.1.0/24"), None)]);
        assert_eq!(w.copies(), 1, "the held spare was copied, not changed");
        assert_eq!(held.len(), 2);
        assert_eq!(held.next_hop(ip("10.244.1.5")), Some(ip("192.0.2.1")));
        assert_eq!(held.next_hop(ip("10.244.3.5")), None);
        drop(held);
        let now = snapshot(w.shared());
        assert_eq!(
            *now,
            ForwardingTable::new(
                own,
                [
                    (net("10.244.2.0/24"), ip("192.0.2.2")),
                    (net("10.244.3.0/24"), ip("192.0.2.3")),
                ]
            )
        );
    }

    #[test]
    fn senders_stay_accepted_while_any_of_their_subnets_is_routed() {
        let own = net("10.244.0.0/24");
        let mut t = ForwardingTable::new(own, []);
        assert_eq!(
            t.edit(net("10.244.1.0/24"), Some(ip("192.0.2.1"))),
            Edited::Added
        );
        assert_eq!(
            t.edit(net("10.244.8.0/21"), Some(ip("192.0.2.1"))),
            Edited::Added
        );
        assert_eq!(
            t.edit(net("10.244.1.0/24"), Some(ip("192.0.2.1"))),
            Edited::Unchanged
        );
        assert_eq!(
            t.edit(own, Some(ip("192.0.2.1"))),
            Edited::Unchanged,
            "own subnet"
        );
        assert_eq!(t.next_hop(ip("10.244.9.1")), Some(ip("192.0.2.1")));
        assert_eq!(t.edit(net("10.244.1.0/24"), None), Edited::Removed);
        assert!(t.is_peer(ip("192.0.2.1")), "the /21 is still routed to it");
        assert_eq!(
            t.edit(net("10.244.8.0/21"), Some(ip("192.0.2.2"))),
            Edited::Replaced
        );
        assert!(!t.is_peer(ip("192.0.2.1")));
        assert!(t.is_peer(ip("192.0.2.2")));
        assert_eq!(t.edit(net("10.244.8.0/21"), None), Edited::Removed);
        assert_eq!(t.edit(net("10.244.8.0/21"), None), Edited::Unchanged);
        assert_eq!(t, ForwardingTable::new(own, []));
    }

    #[test]
    fn random_edit_batches_match_a_full_rebuild() {
        use rand::{Rng, SeedableRng};
        let own = net("10.244.0.0/24");
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        let mut model = std::collections::BTreeMap::new();
        let mut w = TableWriter::new(shared(ForwardingTable::default()));
        w.replace(rebuilt(own, &model));
        let mut held = Vec::new();
        for round in 0..300 {
            let edits: Vec<(Ipv4Network, Option<Ipv4Addr>)> = (0..rng.random_range(1..8))
                .map(|_| {
                    let len = [16u8, 20, 24, 24, 24, 26][rng.random_range(0..6)];
                    let addr = Ipv4Addr::from(0x0af4_0000 | rng.random_range(0..0x1000u32) << 4);
                    let subnet = Ipv4Network::new(addr, len).unwrap();
                    let subnet = Ipv4Network::new(subnet.network(), len).unwrap();
                    let ip = rng
                        .random_bool(0.7)
                        .then(|| Ipv4Addr::from(0xc000_0200 + rng.random_range(1..20u32)));
                    (subnet, ip)
                })
                .collect();
            w.apply(&edits);
            for (subnet, ip) in &edits {
                if *subnet == own {
                    continue;
                }
                match ip {
                    Some(ip) => model.insert(*subnet, *ip),
                    None => model.remove(subnet),
                };
            }
            assert_eq!(*snapshot(w.shared()), rebuilt(own, &model), "round {round}");
            // Now and then a pump keeps a snapshot across batches.
            if round % 37 == 0 {
                held.push(snapshot(w.shared()));
            } else if round % 37 == 5 {
                held.clear();
            }
        }
        assert!(w.copies() > 0 && w.copies() < 30, "copies {}", w.copies());
    }

    #[test]
    fn ipv6_edits_of_a_dual_stack_table_match_a_full_rebuild() {
        use rand::{Rng, SeedableRng};
        let own = net("10.244.0.0/24");
        let own6: Ipv6Network = "fd00:10:244::/64".parse().unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        let (mut model, mut model6) = (
            std::collections::BTreeMap::new(),
            std::collections::BTreeMap::new(),
        );
        let build = |m: &std::collections::BTreeMap<Ipv4Network, Ipv4Addr>,
                     m6: &std::collections::BTreeMap<Ipv6Network, Ipv4Addr>| {
            ForwardingTable::new(own, m.iter().map(|(s, ip)| (*s, *ip)))
                .with_ipv6(own6, m6.iter().map(|(s, ip)| (*s, *ip)))
        };
        let mut w = TableWriter::new(shared(ForwardingTable::default()));
        w.replace(build(&model, &model6));
        for round in 0..300 {
            // A peer's change edits both its subnets, as a dual-stack lease change does.
            let edits: Vec<(IpNetwork, Option<Ipv4Addr>)> = (0..rng.random_range(1..6))
                .flat_map(|_| {
                    let n = rng.random_range(0..64u32);
                    let v4 = Ipv4Network::new(Ipv4Addr::from(0x0af4_0000 + (n << 8)), 24).unwrap();
                    let v6 = Ipv6Network::new(
                        Ipv6Addr::from(0xfd00_0010_0244_0000_u128 << 64 | u128::from(n) << 64),
                        64,
                    )
                    .unwrap();
                    let ip = rng
                        .random_bool(0.7)
                        .then(|| Ipv4Addr::from(0xc000_0200 + rng.random_range(1..20u32)));
                    [(IpNetwork::V4(v4), ip), (IpNetwork::V6(v6), ip)]
                })
                .collect();
            w.apply(&edits);
            for (subnet, ip) in &edits {
                match (subnet, ip) {
                    (IpNetwork::V4(s), _) if *s == own => {}
                    (IpNetwork::V6(s), _) if *s == own6 => {}
                    (IpNetwork::V4(s), Some(ip)) => drop(model.insert(*s, *ip)),
                    (IpNetwork::V4(s), None) => drop(model.remove(s)),
                    (IpNetwork::V6(s), Some(ip)) => drop(model6.insert(*s, *ip)),
                    (IpNetwork::V6(s), None) => drop(model6.remove(s)),
                }
            }
            let now = snapshot(w.shared());
            assert_eq!(*now, build(&model, &model6), "round {round}");
            for (s, ip) in &model6 {
                assert_eq!(now.next_hop6(s.network()), Some(*ip), "round {round}");
                assert!(now.is_peer(*ip));
            }
        }
        assert!(
            snapshot(w.shared()).next_hop6(own6.network()).is_none(),
            "the own IPv6 subnet is never a peer's"
        );
        // A table without IPv6 takes no IPv6 edits.
        let mut v4_only = ForwardingTable::new(own, []);
        assert_eq!(
            v4_only.edit(
                "fd00:10:244:1::/64".parse::<Ipv6Network>().unwrap(),
                Some(ip("192.0.2.1"))
            ),
            Edited::Unchanged
        );
        assert!(v4_only.is_empty());
    }
}
