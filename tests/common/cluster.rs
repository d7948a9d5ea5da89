//! [`Cluster`]: underlay, etcd and nodes together.

use super::*;

/// A test cluster: underlay, etcd with the network config, and nodes (weftd not yet started).
/// Fields drop in order: nodes (weftd killed) first, then etcd, then the underlay.
#[derive(Debug)]
pub struct Cluster {
    /// The nodes, index i is node i+1 at 192.0.2.(11+i).
    pub nodes: Vec<Node>,
    /// The cluster's etcd.
    pub etcd: Etcd,
    /// The underlay every node and etcd hangs on.
    pub underlay: Underlay,
}

impl Cluster {
    /// Creates the underlay, etcd with `config_json` at [`NETWORK_CONFIG_KEY`] (unless empty),
    /// and `n_nodes` nodes.
    pub fn new(n_nodes: u32, config_json: &str) -> Cluster {
        let underlay = Underlay::new();
        let etcd = Etcd::new(&underlay);
        if !config_json.is_empty() {
            etcd.put(NETWORK_CONFIG_KEY, config_json);
        }
        let mut cluster = Cluster {
            nodes: Vec::new(),
            etcd,
            underlay,
        };
        for _ in 0..n_nodes {
            cluster.add_node();
        }
        cluster
    }

    /// Adds one more node (not started).
    pub fn add_node(&mut self) -> &Node {
        let index = self.nodes.len() as u32 + 1;
        let node = Node::new(&self.underlay, index, &self.etcd.endpoint());
        self.nodes.push(node);
        &self.nodes[self.nodes.len() - 1]
    }

    /// Node `i` (0-based).
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// Starts weftd on every node and waits (30 s) until each has written subnet.env.
    pub fn start(&self) {
        for node in &self.nodes {
            node.start_weftd(&[]);
        }
        for node in &self.nodes {
            node.wait_subnet_env(Duration::from_secs(30));
        }
    }

    /// Replaces node `i`'s underlay interface as when a bond or a NIC driver is re-created:
    /// deletes `eth0` and attaches a new one with the same name and address (a new index).
    /// Pods on node `i` and the next node must talk before and, without a weftd restart,
    /// again after; weftd must log that it followed the interface.
    pub fn replace_external_interface_under_traffic(&self, i: usize) {
        let (n1, n2) = (self.node(i), self.node((i + 1) % self.nodes.len()));
        let a = n1.add_pod();
        let b = n2.add_pod();
        wait_until(Duration::from_secs(20), "pods talk", || a.tcp_check(&b));
        let old_index = n1.link("eth0").map(|l| l["ifindex"].clone());
        n1.netns().ip(&["link", "del", "eth0"]);
        // Back with another MTU: the pods' MTU in subnet.env must follow.
        self.underlay
            .attach_with_mtu(n1.netns(), n1.public_ip(), 1400);
        let new_index = n1.link("eth0").map(|l| l["ifindex"].clone());
        assert_ne!(old_index, new_index, "eth0 kept its index");
        n1.wait_until(
            Duration::from_secs(20),
            "weftd following the new eth0",
            || n1.log().contains("external interface is back"),
        );
        wait_until(
            Duration::from_secs(20),
            "pods talk again over the new eth0",
            || a.tcp_check(&b) && b.tcp_check(&a),
        );
        assert!(n1.is_running(), "weftd exited");
        let mtu = |env: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix("FLANNEL_MTU="))
                .and_then(|v| v.parse::<u32>().ok())
        };
        n1.wait_until(
            Duration::from_secs(10),
            "subnet.env with the new interface's MTU",
            || {
                let env = n1.subnet_env().unwrap_or_default();
                // VXLAN 1400 - 50, UDP 1400 - 28, host-gw 1400.
                matches!(mtu(&env), Some(1350 | 1372 | 1400))
            },
        );
    }

    /// Waits until every node has a route to every other node's subnet.
    pub fn wait_mesh(&self, timeout: Duration) {
        let subnets: Vec<String> = self
            .nodes
            .iter()
            .map(|n| {
                n.subnet()
                    .unwrap_or_else(|| panic!("wait_mesh: {} has no subnet.env", n.name()))
            })
            .collect();
        for (i, node) in self.nodes.iter().enumerate() {
            for (j, subnet) in subnets.iter().enumerate() {
                if i != j {
                    node.wait_until(timeout, &format!("route to {subnet}"), || {
                        node.route_to(subnet).is_some()
                    });
                }
            }
        }
    }

    /// Stops weftd on the first two nodes (the data paths stay), switches the network config
    /// to `config` and starts weftd again; returns when both publish `backend_type`, node 1
    /// has the peer's entries the new backend programs (`programmed`), and pods `a` and `b`
    /// talk both ways.
    pub fn switch_backend(
        &self,
        config: &str,
        backend_type: &str,
        programmed: impl Fn() -> bool,
        a: &Pod,
        b: &Pod,
    ) {
        for i in 0..2 {
            self.node(i).stop();
        }
        self.etcd.put(NETWORK_CONFIG_KEY, config);
        for i in 0..2 {
            self.node(i).start_weftd(&[]);
        }
        let published = format!(r#""BackendType":"{backend_type}""#);
        for i in 0..2 {
            let node = self.node(i);
            node.wait_until(
                Duration::from_secs(30),
                &format!("lease published with {published}"),
                || {
                    node.lease_key()
                        .and_then(|key| self.etcd.get(&key))
                        .is_some_and(|value| value.contains(&published))
                },
            );
        }
        self.node(0).wait_until(
            Duration::from_secs(30),
            &format!("the peer programmed by {backend_type}"),
            programmed,
        );
        wait_until(
            Duration::from_secs(30),
            &format!("pods talk over {backend_type} after the switch"),
            || a.tcp_check(b) && b.tcp_check(a),
        );
    }

    /// A text dump of leases and every node's routes, neighbours and FDB (for failure messages).
    pub fn dump(&self) -> String {
        let mut s = String::new();
        for (k, v) in self.etcd.get_prefix(&format!("{ETCD_PREFIX}/subnets/")) {
            s.push_str(&format!("lease {k} = {v}\n"));
        }
        for node in &self.nodes {
            s.push_str(&format!(
                "{} {} routes {:?}\n  neigh {:?}\n  fdb {:?}\n",
                node.name(),
                node.public_ip(),
                node.routes(),
                node.neighbours(),
                node.fdb()
            ));
        }
        s
    }
}
