//! [`Underlay`]: the namespace with bridge `br0` every node and etcd attach to.

use super::*;

/// The underlay: a namespace with bridge `br0` (192.0.2.0/24 lives on the attached ends).
/// It has no uplink, so no packet leaves the test's namespaces.
#[derive(Debug)]
pub struct Underlay {
    ns: Netns,
    ports: AtomicU32,
}

impl Underlay {
    /// Creates the underlay namespace and its bridge.
    pub fn new() -> Underlay {
        let ns = Netns::new("ul");
        ns.ip(&["link", "add", "br0", "type", "bridge"]);
        ns.ip(&["link", "set", "br0", "up"]);
        Underlay {
            ns,
            ports: AtomicU32::new(0),
        }
    }

    /// The underlay's namespace.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// Gives `node` an `eth0` with `ip`/24 on the underlay bridge (veth created in place).
    pub fn attach(&self, node: &Netns, ip: &str) {
        self.attach_with_mtu(node, ip, 1500);
    }

    /// Like [`attach`](Self::attach), with `mtu` on both ends of the veth pair.
    pub fn attach_with_mtu(&self, node: &Netns, ip: &str, mtu: u32) {
        let port = format!("x{}", self.ports.fetch_add(1, Ordering::Relaxed));
        let mtu = mtu.to_string();
        self.ns.ip(&[
            "link",
            "add",
            &port,
            "mtu",
            &mtu,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "mtu",
            &mtu,
            "netns",
            node.name(),
        ]);
        self.ns.ip(&["link", "set", &port, "master", "br0", "up"]);
        node.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        node.ip(&["link", "set", "eth0", "up"]);
    }
}
