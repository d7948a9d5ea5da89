//! Operating weft: systemd's notification protocol, `weftctl network`, `weftctl status`,
//! the cluster-wide pod view and the Debian package. Real etcd, real namespaces, real weftd.

mod common;

use std::os::unix::net::UnixDatagram;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

const START: Duration = Duration::from_secs(30);

/// Datagrams weftd sends to a `NOTIFY_SOCKET` the test listens on, read by a thread as they
/// come (as systemd does: an unread socket would fill up).
struct NotifySocket {
    path: std::path::PathBuf,
    messages: mpsc::Receiver<String>,
}

impl NotifySocket {
    fn bind(dir: &std::path::Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket =
            UnixDatagram::bind(&path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap_or_else(|e| panic!("timeout on {}: {e}", path.display()));
        let (tx, messages) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            loop {
                if let Ok(len) = socket.recv(&mut buf) {
                    let msg = String::from_utf8_lossy(&buf[..len]).into_owned();
                    if tx.send(msg).is_err() {
                        return;
                    }
                } else if tx.send(String::new()).is_err() {
                    // Nobody listens any more (an empty message probes the channel).
                    return;
                }
            }
        });
        NotifySocket { path, messages }
    }

    /// The next datagram within `timeout`, or None.
    fn recv(&self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.messages.recv_timeout(left) {
                Ok(msg) if msg.is_empty() => continue,
                Ok(msg) => return Some(msg),
                Err(_) => return None,
            }
        }
    }

    /// Receives until a datagram has a line `line`; returns every datagram seen, that one last.
    fn until(&self, node: &Node, line: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Some(msg) = self.recv(Duration::from_millis(200)) {
                let done = msg.lines().any(|l| l == line);
                seen.push(msg);
                if done {
                    return seen;
                }
            }
        }
        seen.retain(|m| m != "WATCHDOG=1\n");
        panic!(
            "no {line} from weftd on {} within {timeout:?}; got (pings left out) {seen:?}\n----- weftd log -----\n{}",
            node.name(),
            node.log_tail(40)
        );
    }
}

/// weftd speaks systemd's notification protocol on the socket in `NOTIFY_SOCKET`: `STATUS=`
/// while it waits, `READY=1` only once subnet.env is written and the peer is programmed,
/// `WATCHDOG=1` at half of `WATCHDOG_USEC`, `STOPPING=1` on SIGTERM.
#[test]
fn systemd_notify_ready_status_watchdog_stopping() {
    // Node 2 waits for a network config that is not there yet: not ready.
    let cluster = Cluster::new(2, "");
    let (n1, n2) = (cluster.node(0), cluster.node(1));
    let notify = NotifySocket::bind(n2.dir());
    let endpoint = cluster.etcd.endpoint();
    let subnet_file = n2.subnet_file().to_string_lossy().into_owned();
    let state_dir = n2.state_dir().to_string_lossy().into_owned();
    let notify_path = notify.path.to_string_lossy().into_owned();
    n2.start_weftd_env(&[
        ("WEFTD_ETCD_ENDPOINTS", &endpoint),
        ("WEFTD_IFACE", "eth0"),
        ("WEFTD_SUBNET_FILE", &subnet_file),
        ("WEFTD_STATE_DIR", &state_dir),
        ("NOTIFY_SOCKET", &notify_path),
        ("WATCHDOG_USEC", "600000"),
    ]);
    let waiting = notify.until(
        n2,
        "STATUS=waiting for a valid network config at /coreos.com/network/config",
        START,
    );
    assert!(
        !waiting.iter().any(|m| m.contains("READY=1")),
        "READY before the config: {waiting:?}"
    );
    // Watchdog pings every 300 ms while the node waits.
    let pings = (0..10)
        .filter_map(|_| notify.recv(Duration::from_millis(500)))
        .filter(|m| m == "WATCHDOG=1\n")
        .count();
    assert!(pings >= 3, "only {pings} WATCHDOG=1 in 10 datagrams");

    cluster.etcd.put(NETWORK_CONFIG_KEY, VXLAN_CONFIG);
    n1.start_weftd(&[]);
    let peer_subnet = subnet_of(&n1.wait_subnet_env(START)).unwrap_or_default();
    let seen = notify.until(n2, "READY=1", START);
    // At READY=1 the node's subnet.env exists and the peer is in the kernel.
    let env = n2
        .subnet_env()
        .unwrap_or_else(|| panic!("READY=1 before subnet.env: {seen:?}"));
    let subnet = subnet_of(&env).unwrap_or_default();
    assert!(
        n2.route_to(&peer_subnet).is_some(),
        "READY=1 before the route to the peer {peer_subnet}: {:?}",
        n2.routes()
    );
    let ready = seen.last().cloned().unwrap_or_default();
    let status = ready
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap_or_else(|| panic!("no STATUS= with READY=1: {ready:?}"));
    assert!(
        status.starts_with(&format!(
            "{subnet} vxlan on flannel.1 mtu 1450; 1/1 peers programmed; lease until "
        )),
        "{status}"
    );
    assert!(status.contains("; last reconcile "), "{status}");

    n2.stop();
    let after = notify.until(n2, "STOPPING=1", Duration::from_secs(5));
    assert!(
        !after.iter().any(|m| m.contains("READY=1")),
        "READY=1 sent twice: {after:?}"
    );
}
