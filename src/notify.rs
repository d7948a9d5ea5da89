//! systemd's readiness protocol (`sd_notify`): `READY=1`, `STATUS=`, `WATCHDOG=1`, `STOPPING=1`.
//!
//! The messages are `sd-notify`'s [`NotifyState`]s and the watchdog period is its
//! [`sd_notify::watchdog_enabled`]. Only the send is ours: the crate's `notify` reads
//! `NOTIFY_SOCKET` at every call, but weftd must take the variable out of its environment before
//! its first thread starts, because the pod runtime's `runc` would otherwise see it, hand the
//! socket to the container and wait for the container's own `READY=1`.

use std::fmt::Write as _;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

pub use sd_notify::NotifyState;
use tracing::{debug, warn};

/// Where systemd listens for this service's notifications, taken from the environment once.
#[derive(Debug, Clone, Default)]
pub struct ServiceNotifier {
    socket: Option<Arc<SocketAddr>>,
    watchdog: Option<Duration>,
}

impl ServiceNotifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`, then removes them from the
    /// environment so that no child process inherits them.
    ///
    /// Changing the environment races with other threads reading it: call this before any
    /// thread (the async runtime's included) is started.
    pub fn take_from_env() -> ServiceNotifier {
        let watchdog = sd_notify::watchdog_enabled().filter(|d| !d.is_zero());
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let bytes = path.as_bytes();
            // A leading '@' names a socket in the abstract namespace (sd_notify(3)).
            let addr = match bytes.strip_prefix(b"@") {
                Some(name) => SocketAddr::from_abstract_name(name),
                None => SocketAddr::from_pathname(&path),
            };
            match addr {
                Ok(addr) => Some(Arc::new(addr)),
                Err(e) => {
                    warn!(socket = ?path, error = %e, "NOTIFY_SOCKET is not a usable address; not notifying systemd");
                    None
                }
            }
        });
        for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            std::env::remove_var(var);
        }
        ServiceNotifier { socket, watchdog }
    }

    /// Whether a service manager listens.
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// How often to send `WATCHDOG=1`: half of `WatchdogSec`, as sd_watchdog_enabled(3)
    /// recommends; `None` when the watchdog is off or nobody listens.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.socket.as_ref()?;
        self.watchdog.map(|d| d / 2)
    }

    /// Sends `states` as one datagram. Failures are logged, never fatal: the node serves its
    /// pods whether or not systemd hears about it.
    pub fn notify(&self, states: &[NotifyState<'_>]) {
        let Some(addr) = &self.socket else {
            return;
        };
        let message = format_states(states);
        // Non-blocking: a manager that does not read must not stall the agent's thread.
        let sent = UnixDatagram::unbound().and_then(|sock| {
            sock.set_nonblocking(true)?;
            sock.send_to_addr(message.as_bytes(), addr)
        });
        match sent {
            Ok(_) => debug!(message = %message.trim_end(), "notified systemd"),
            Err(e) => warn!(error = %e, "notify systemd"),
        }
    }
}

/// Sends `WATCHDOG=1` every `every` for as long as the async runtime runs: a wedged runtime
/// (every task of the agent runs on it) stops the pings and systemd restarts weftd.
pub async fn watchdog(notifier: ServiceNotifier, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        notifier.notify(&[NotifyState::Watchdog]);
    }
}

/// One `KEY=value` line per state, as sd_notify(3) expects. Newlines inside a `STATUS=` text
/// would start a new assignment, so they become spaces.
fn format_states(states: &[NotifyState<'_>]) -> String {
    let mut message = String::new();
    for state in states {
        let line = state.to_string().replace('\n', " ");
        let _ = writeln!(message, "{line}");
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_state_and_no_embedded_newlines() {
        assert_eq!(
            format_states(&[NotifyState::Ready, NotifyState::Status("a\nb")]),
            "READY=1\nSTATUS=a b\n"
        );
        assert_eq!(format_states(&[NotifyState::Watchdog]), "WATCHDOG=1\n");
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_no_watchdog_runs() {
        let n = ServiceNotifier {
            socket: None,
            watchdog: Some(Duration::from_secs(10)),
        };
        assert!(!n.enabled());
        assert_eq!(n.watchdog_interval(), None);
        n.notify(&[NotifyState::Ready]);
    }

    #[test]
    fn datagrams_reach_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = ServiceNotifier {
            socket: Some(Arc::new(SocketAddr::from_pathname(&path).unwrap())),
            watchdog: Some(Duration::from_secs(10)),
        };
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(5)));
        n.notify(&[NotifyState::Stopping]);
        let mut buf = [0u8; 64];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1\n");
    }
}
