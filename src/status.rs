//! What weftd says about itself: the node's lease, backend, readiness, peers and last reconcile.
//!
//! The agent records a [`NodeStatus`] on a [`StatusBoard`] after every reconcile; the board
//! turns it into systemd's `STATUS=` line (and `READY=1` the first time the node is ready).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt as _;
use tracing::{debug, info, warn};

use crate::backend::{ReconcileReport, StaleEntry};
use crate::lease::Lease;
use crate::notify::{NotifyState, ServiceNotifier};
use crate::probe::PeerHealth;
use crate::store::OwnLease;
pub use crate::timestamp::rfc3339 as rfc3339_utc;

/// A snapshot of the node agent, also the JSON of `weftctl status -o json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// weftd's version.
    pub version: String,
    /// The external interface carrying the overlay.
    pub interface: Option<String>,
    /// The address published in the lease.
    #[serde(rename = "publicIP")]
    pub public_ip: Option<Ipv4Addr>,
    /// Lease held, peers programmed, subnet.env written.
    pub ready: bool,
    /// What the agent is doing when it is not ready (waiting for etcd, for the config, ...).
    pub phase: String,
    /// The node's own subnet lease.
    pub lease: Option<LeaseStatus>,
    /// The data path.
    pub backend: Option<BackendStatus>,
    /// Every other node's lease and whether the kernel carries it.
    pub peers: Vec<PeerStatus>,
    /// The peer leases weftd does not program: rejected by validation or refused by the
    /// route guard, each with why.
    #[serde(default)]
    pub rejected: Vec<RejectedPeer>,
    /// The most recent reconcile of the kernel against etcd.
    pub last_reconcile: Option<ReconcileStatus>,
    /// What the most recent reconcile that found kernel entries weft did not expect removed
    /// (kept after later, clean reconciles).
    #[serde(default)]
    pub last_stale: Option<StaleRemoval>,
}

/// Kernel entries weft owns but did not expect, removed by one reconcile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StaleRemoval {
    /// When, Unix seconds.
    pub at_unix: u64,
    /// How many were found (removals the kernel refused are retried and counted as failed).
    pub found: usize,
    /// Which, by kind and destination (at most [`STALE_LISTED`]).
    pub entries: Vec<StaleEntry>,
}

impl StaleRemoval {
    /// What `run` removed, if it found anything stale.
    pub fn of(run: &ReconcileStatus) -> Option<StaleRemoval> {
        (!run.stale.is_empty()).then(|| StaleRemoval {
            at_unix: run.at_unix,
            found: run.stale_found.max(run.stale.len()),
            entries: run.stale.clone(),
        })
    }
}

/// The node's own lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseStatus {
    /// `10.244.3.0/24`.
    pub subnet: String,
    /// A key without an etcd lease: never expires, never renewed.
    pub reservation: bool,
    /// Expiry as Unix seconds; `None` for a reservation.
    pub expires_unix: Option<u64>,
    /// The etcd lease keeping the key (and the node's pod records); `None` for a reservation.
    #[serde(default)]
    pub etcd_lease: Option<i64>,
}

impl LeaseStatus {
    /// The status of the lease the agent holds.
    pub fn of(own: &OwnLease) -> LeaseStatus {
        LeaseStatus {
            subnet: own.subnet.to_string(),
            reservation: own.etcd_lease.is_none(),
            expires_unix: own.expires.map(unix_seconds),
            etcd_lease: own.etcd_lease,
        }
    }
}

/// The backend and its device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendStatus {
    /// `vxlan`, `udp` or `host-gw`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `flannel.1`, `flannel0`, or the external interface for host-gw.
    pub device: String,
    /// The MTU pods get (subnet.env's `FLANNEL_MTU`).
    pub mtu: u32,
    /// What the kernel granted the data path: UDP's offloads (`tun vnet_hdr, udp gso, udp
    /// gro` or `none`); `not applicable` for the kernel's own VXLAN and routes.
    #[serde(default)]
    pub offloads: String,
}

/// Whether a peer's entries are in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerState {
    /// The last reconcile put every entry in place.
    Programmed,
    /// The kernel refused some entries in the last reconcile (weftd's log names them); retried.
    Incomplete,
    /// The last reconcile failed as a whole; retried.
    NotProgrammed,
}

impl PeerState {
    /// The word `weftctl status` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Programmed => "programmed",
            PeerState::Incomplete => "incomplete",
            PeerState::NotProgrammed => "not-programmed",
        }
    }
}

/// One peer node. At 10 000 peers the board holds one of these per peer for as long as weftd
/// runs, so it holds no heap allocation of its own (the JSON is the same as with strings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    /// The peer's subnet.
    #[serde(with = "subnet_text")]
    pub subnet: Ipv4Network,
    /// The peer's IPv6 subnet (dual stack and IPv6-only; there `subnet` is `0.0.0.0/0`).
    #[serde(
        rename = "subnetIPv6",
        default,
        skip_serializing_if = "Option::is_none",
        with = "subnet6_text"
    )]
    pub subnet6: Option<Ipv6Network>,
    /// The peer's `PublicIP`.
    #[serde(rename = "publicIP")]
    pub public_ip: Ipv4Addr,
    /// The peer's `PublicIPv6`, when its lease has one.
    #[serde(
        rename = "publicIPv6",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub public_ipv6: Option<Ipv6Addr>,
    /// The peer's `BackendType` (weft's backend names are held without an allocation).
    pub backend_type: Cow<'static, str>,
    /// The peer's VTEP MAC (VXLAN only), as the lease spells it.
    #[serde(rename = "vtepMAC")]
    pub vtep_mac: Option<MacText>,
    /// Whether its entries are in the kernel.
    pub state: PeerState,
    /// The latest probe over the overlay; `None` before the first round or with probing off.
    /// An IPv6-only peer's probes are over IPv6.
    #[serde(default)]
    pub health: Option<PeerHealth>,
    /// A dual-stack peer's latest probe over its IPv6 overlay (boxed: the board keeps
    /// thousands of peer statuses, this is attached only to a snapshot).
    #[serde(
        rename = "healthIPv6",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub health6: Option<Box<PeerHealth>>,
}

impl PeerStatus {
    /// A peer lease in `state`.
    pub fn of(lease: &Lease, state: PeerState) -> PeerStatus {
        let backend_type = match BACKEND_NAMES
            .iter()
            .find(|n| **n == lease.attrs.backend_type)
        {
            Some(name) => Cow::Borrowed(*name),
            None => Cow::Owned(lease.attrs.backend_type.clone()),
        };
        PeerStatus {
            subnet: lease.subnet,
            subnet6: lease.ipv6_subnet,
            public_ip: lease.attrs.public_ip,
            public_ipv6: lease.attrs.public_ipv6,
            backend_type,
            vtep_mac: lease.attrs.vtep_mac().map(MacText::from),
            state,
            health: None,
            health6: None,
        }
    }

    /// The name the prober keeps this peer's health under (the `peer` label of its metrics):
    /// its subnet, or its IPv6 subnet when it has no IPv4 one.
    pub fn health_key(&self) -> String {
        match self.subnet6 {
            Some(subnet6) if self.subnet.prefix() == 0 => subnet6.to_string(),
            _ => self.subnet.to_string(),
        }
    }

    /// The name a dual-stack peer's IPv6 health is kept under: its IPv6 subnet.
    pub fn health6_key(&self) -> Option<String> {
        self.subnet6
            .filter(|_| self.subnet.prefix() != 0)
            .map(|s| s.to_string())
    }
}

/// The `BackendType`s weft writes, which peer statuses borrow instead of copying.
const BACKEND_NAMES: [&str; 4] = ["vxlan", "udp", "host-gw", "wireguard"];

/// A lease's `VtepMAC` text exactly as written: inline when it has a MAC's 17 ASCII
/// characters (every valid one), on the heap otherwise.
#[derive(Clone, PartialEq, Eq)]
pub enum MacText {
    /// `aa:bb:cc:dd:ee:ff`, in any case.
    Inline([u8; 17]),
    /// Any other text.
    Other(Box<str>),
}

impl MacText {
    /// The text.
    pub fn as_str(&self) -> &str {
        match self {
            // Built only from 17 ASCII bytes.
            MacText::Inline(bytes) => std::str::from_utf8(bytes).unwrap_or_default(),
            MacText::Other(text) => text,
        }
    }
}

impl From<&str> for MacText {
    fn from(text: &str) -> MacText {
        match <[u8; 17]>::try_from(text.as_bytes()) {
            Ok(bytes) if text.is_ascii() => MacText::Inline(bytes),
            _ => MacText::Other(text.into()),
        }
    }
}

impl std::fmt::Display for MacText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for MacText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Serialize for MacText {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for MacText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<MacText, D::Error> {
        let text = <Cow<'de, str>>::deserialize(deserializer)?;
        Ok(MacText::from(&*text))
    }
}

/// A subnet in the status JSON: its text, `10.244.4.0/24`.
mod subnet_text {
    use ipnetwork::Ipv4Network;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(subnet: &Ipv4Network, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(subnet)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Ipv4Network, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse()
            .map_err(|e| serde::de::Error::custom(format!("subnet {text:?}: {e}")))
    }
}

mod subnet6_text {
    use ipnetwork::Ipv6Network;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(subnet: &Option<Ipv6Network>, s: S) -> Result<S::Ok, S::Error> {
        match subnet {
            Some(subnet) => s.collect_str(subnet),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ipv6Network>, D::Error> {
        let Some(text) = <Option<std::borrow::Cow<'de, str>>>::deserialize(d)? else {
            return Ok(None);
        };
        text.parse()
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("IPv6 subnet {text:?}: {e}")))
    }
}

/// What refused a peer lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RejectedBy {
    /// Lease validation: the lease is not believed at all.
    Validation,
    /// The route guard: the lease is valid, but its route would touch this node's own
    /// addresses, connected prefixes, etcd endpoints or default route.
    RouteGuard,
}

impl RejectedBy {
    /// The word `weftctl status` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectedBy::Validation => "rejected",
            RejectedBy::RouteGuard => "refused",
        }
    }
}

/// A peer lease that is not programmed, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RejectedPeer {
    /// The lease's etcd key.
    pub key: String,
    /// The subnet the key names, when it names one.
    pub subnet: Option<String>,
    /// Who refused it.
    pub by: RejectedBy,
    /// The kind, a fixed word: `weft_leases_rejected_total`'s `reason` label for validation
    /// (`public_ip`, `overlap`, ...), `route_overlap` for the guard.
    pub reason: String,
    /// Why, in words (`PublicIP 127.0.0.1 is a loopback address`).
    pub why: String,
}

/// One reconcile run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileStatus {
    /// When it finished, Unix seconds.
    pub at_unix: u64,
    /// How long it took.
    pub took_seconds: f64,
    /// Kernel entries added or replaced.
    pub added: usize,
    /// Stale kernel entries removed.
    pub removed: usize,
    /// Entries the kernel refused.
    pub failed: usize,
    /// The kernel entries weft did not expect, removed in this run (at most
    /// [`STALE_LISTED`]).
    #[serde(default)]
    pub stale: Vec<StaleEntry>,
    /// How many kernel entries weft did not expect this run found, listed or not.
    #[serde(default)]
    pub stale_found: usize,
    /// Why the reconcile failed as a whole, if it did.
    pub error: Option<String>,
}

/// How many stale entries one reconcile lists: enough to name what went wrong, bounded when
/// a whole table was stale.
pub const STALE_LISTED: usize = 64;

impl ReconcileStatus {
    /// A run that finished now, after `took`, with `report`.
    pub fn of(took: Duration, report: &ReconcileReport) -> ReconcileStatus {
        ReconcileStatus {
            at_unix: unix_seconds(SystemTime::now()),
            took_seconds: took.as_secs_f64(),
            added: report.added,
            removed: report.removed,
            failed: report.failed,
            stale: report.stale.iter().take(STALE_LISTED).cloned().collect(),
            stale_found: report.stale.len(),
            error: None,
        }
    }

    /// A run that failed as a whole with `error`.
    pub fn failed(took: Duration, error: &impl std::fmt::Display) -> ReconcileStatus {
        ReconcileStatus {
            at_unix: unix_seconds(SystemTime::now()),
            took_seconds: took.as_secs_f64(),
            added: 0,
            removed: 0,
            failed: 0,
            stale: Vec::new(),
            stale_found: 0,
            error: Some(error.to_string()),
        }
    }

    /// The state every peer is in after this run.
    pub fn peer_state(&self) -> PeerState {
        match (&self.error, self.failed) {
            (Some(_), _) => PeerState::NotProgrammed,
            (None, 0) => PeerState::Programmed,
            (None, _) => PeerState::Incomplete,
        }
    }
}

/// The agent's current [`NodeStatus`], shared with the status socket and systemd.
#[derive(Debug)]
pub struct StatusBoard {
    status: RwLock<NodeStatus>,
    /// The prober's latest results, by peer subnet.
    health: RwLock<BTreeMap<String, PeerHealth>>,
    notifier: ServiceNotifier,
}

impl StatusBoard {
    /// An empty board that reports to `notifier`.
    pub fn new(notifier: ServiceNotifier) -> StatusBoard {
        StatusBoard {
            status: RwLock::new(NodeStatus {
                version: env!("CARGO_PKG_VERSION").to_string(),
                phase: "starting".to_string(),
                ..NodeStatus::default()
            }),
            health: RwLock::new(BTreeMap::new()),
            notifier,
        }
    }

    /// The systemd notifier the board reports to.
    pub fn notifier(&self) -> &ServiceNotifier {
        &self.notifier
    }

    /// A copy of the current status, each peer with its latest probe results.
    pub fn snapshot(&self) -> NodeStatus {
        let mut status = self
            .status
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let health = self.peer_health();
        for peer in &mut status.peers {
            peer.health = health.get(&peer.health_key()).cloned();
            peer.health6 = peer
                .health6_key()
                .and_then(|k| health.get(&k).cloned())
                .map(Box::new);
        }
        status
    }

    /// The prober's latest results, by peer subnet.
    pub fn peer_health(&self) -> BTreeMap<String, PeerHealth> {
        self.health
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Replaces the prober's results.
    pub fn set_peer_health(&self, health: BTreeMap<String, PeerHealth>) {
        *self
            .health
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = health;
    }

    /// Records what the agent waits for before it is up (`STATUS=` only).
    pub fn set_phase(&self, phase: &str) {
        self.update(|s| s.phase = phase.to_string());
    }

    /// Changes the status and tells systemd: `STATUS=` always, `READY=1` when the node
    /// becomes ready.
    pub fn update(&self, change: impl FnOnce(&mut NodeStatus)) {
        let (line, became_ready) = {
            let mut status = self
                .status
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let was_ready = status.ready;
            change(&mut status);
            (status_line(&status), status.ready && !was_ready)
        };
        if became_ready {
            self.notifier
                .notify(&[NotifyState::Ready, NotifyState::Status(&line)]);
        } else {
            self.notifier.notify(&[NotifyState::Status(&line)]);
        }
    }
}

/// The status socket's name, beside subnet.env (`/run/weft/weftd.sock` by default).
pub const SOCKET_NAME: &str = "weftd.sock";

/// How long a client may take to read its answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// A failure of the status socket, on either side.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The socket could not be set up.
    #[error("status socket {path}: {op}: {source}")]
    Serve {
        /// The socket's path.
        path: PathBuf,
        /// What failed.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// weftd could not be asked.
    #[error("ask weftd at {path} (is weftd running, and are you root?): {source}")]
    Ask {
        /// The socket's path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// weftd answered something that is not a status.
    #[error("weftd at {path} answered with something that is not a status: {source}")]
    Answer {
        /// The socket's path.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
}

/// Binds the status socket at `path` (owner-only, 0600) and answers every connection with
/// the board's [`NodeStatus`] as JSON. A stale socket from an earlier run is replaced; any
/// other file at `path` is left alone and reported.
pub async fn serve(path: PathBuf, board: Arc<StatusBoard>) -> Result<(), StatusError> {
    let fail = |op, source| StatusError::Serve {
        path: path.clone(),
        op,
        source,
    };
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(&path).map_err(|e| fail("remove the stale socket", e))?
        }
        Ok(_) => {
            return Err(fail(
                "refusing to replace a file that is not a socket",
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            ))
        }
        Err(_) => {}
    }
    let listener = tokio::net::UnixListener::bind(&path).map_err(|e| fail("bind", e))?;
    // Peers, leases and the node's layout are for root: connecting needs write permission.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| fail("chmod 0600", e))?;
    info!(socket = %path.display(), "serving the node's status");
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(socket = %path.display(), error = %e, "accept on the status socket");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let board = board.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            let mut body = serde_json::to_vec(&board.snapshot()).unwrap_or_default();
            body.push(b'\n');
            let sent = tokio::time::timeout(ANSWER_TIMEOUT, async {
                stream.write_all(&body).await?;
                stream.shutdown().await
            })
            .await;
            if !matches!(sent, Ok(Ok(()))) {
                debug!("a status client went away before its answer");
            }
        });
    }
}

/// Asks the weftd serving `socket` for its status.
pub fn fetch(socket: &Path) -> Result<NodeStatus, StatusError> {
    let ask = |source| StatusError::Ask {
        path: socket.to_path_buf(),
        source,
    };
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(ask)?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(ask)?;
    let mut body = Vec::new();
    stream.read_to_end(&mut body).map_err(ask)?;
    serde_json::from_slice(&body).map_err(|source| StatusError::Answer {
        path: socket.to_path_buf(),
        source,
    })
}

/// The one-line summary systemd shows in `systemctl status weftd`.
pub fn status_line(s: &NodeStatus) -> String {
    let (Some(lease), true) = (&s.lease, s.ready) else {
        return s.phase.clone();
    };
    let mut line = lease.subnet.clone();
    if let Some(b) = &s.backend {
        line.push_str(&format!(" {} on {} mtu {}", b.kind, b.device, b.mtu));
    }
    let programmed = s
        .peers
        .iter()
        .filter(|p| p.state == PeerState::Programmed)
        .count();
    line.push_str(&format!(
        "; {programmed}/{} peers programmed",
        s.peers.len()
    ));
    match lease.expires_unix {
        Some(t) => line.push_str(&format!(
            "; lease until {}",
            rfc3339_utc(UNIX_EPOCH + Duration::from_secs(t))
        )),
        None => line.push_str("; reservation"),
    }
    if let Some(r) = &s.last_reconcile {
        line.push_str(&format!(
            "; last reconcile {} ({:.1} ms{})",
            rfc3339_utc(UNIX_EPOCH + Duration::from_secs(r.at_unix)),
            r.took_seconds * 1e3,
            if r.error.is_some() || r.failed > 0 {
                ", with errors"
            } else {
                ""
            }
        ));
    }
    line
}

/// Seconds since the Unix epoch (0 before it).
pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready_status() -> NodeStatus {
        NodeStatus {
            version: "0.1.0".into(),
            interface: Some("eth0".into()),
            public_ip: Some(Ipv4Addr::new(192, 0, 2, 11)),
            ready: true,
            phase: "ready".into(),
            lease: Some(LeaseStatus {
                subnet: "10.244.3.0/24".into(),
                reservation: false,
                expires_unix: Some(1_795_848_186),
                etcd_lease: Some(0x694d854330fc5110),
            }),
            backend: Some(BackendStatus {
                kind: "vxlan".into(),
                device: "flannel.1".into(),
                mtu: 1450,
                offloads: "not applicable".into(),
            }),
            rejected: vec![RejectedPeer {
                key: "/coreos.com/network/subnets/10.244.9.0-24".into(),
                subnet: Some("10.244.9.0/24".into()),
                by: RejectedBy::Validation,
                reason: "public_ip".into(),
                why: "PublicIP 127.0.0.1 is a loopback address".into(),
            }],
            peers: vec![
                PeerStatus {
                    subnet: "10.244.4.0/24".parse().unwrap(),
                    subnet6: Some("fd00:10:244:4::/64".parse().unwrap()),
                    public_ip: Ipv4Addr::new(192, 0, 2, 12),
                    public_ipv6: Some("2001:db8::12".parse().unwrap()),
                    backend_type: "vxlan".into(),
                    vtep_mac: Some("aa:bb:cc:dd:ee:01".into()),
                    state: PeerState::Programmed,
                    health: None,
                    health6: None,
                },
                PeerStatus {
                    subnet: "10.244.5.0/24".parse().unwrap(),
                    subnet6: None,
                    public_ip: Ipv4Addr::new(192, 0, 2, 13),
                    public_ipv6: None,
                    backend_type: "vxlan".into(),
                    vtep_mac: None,
                    state: PeerState::Incomplete,
                    health: None,
                    health6: None,
                },
            ],
            last_reconcile: Some(ReconcileStatus {
                at_unix: 1_795_848_000,
                took_seconds: 0.00125,
                added: 3,
                removed: 1,
                failed: 1,
                stale: vec![StaleEntry::new(
                    "fdb",
                    "aa:bb:cc:00:00:09 dst 192.0.2.19 dev flannel.1",
                )],
                stale_found: 1,
                error: None,
            }),
            last_stale: None,
        }
    }

    #[test]
    fn status_line_summarises_a_ready_node() {
        assert_eq!(
            status_line(&ready_status()),
            "10.244.3.0/24 vxlan on flannel.1 mtu 1450; 1/2 peers programmed; \
             lease until 2026-11-28T06:43:06Z; last reconcile 2026-11-28T06:40:00Z (1.2 ms, with errors)"
        );
        let waiting = NodeStatus {
            phase: "waiting for the network config at /coreos.com/network/config".into(),
            ..NodeStatus::default()
        };
        assert_eq!(
            status_line(&waiting),
            "waiting for the network config at /coreos.com/network/config"
        );
    }

    #[test]
    fn json_round_trips_with_flannel_spellings() {
        let s = ready_status();
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["publicIP"], "192.0.2.11");
        assert_eq!(json["backend"]["type"], "vxlan");
        assert_eq!(json["peers"][1]["state"], "incomplete");
        assert_eq!(json["lastReconcile"]["failed"], 1);
        assert_eq!(json["backend"]["offloads"], "not applicable");
        assert_eq!(json["rejected"][0]["by"], "validation");
        assert_eq!(json["rejected"][0]["reason"], "public_ip");
        assert_eq!(json["lastReconcile"]["stale"][0]["kind"], "fdb");
        assert_eq!(json["peers"][0]["subnet"], "10.244.4.0/24");
        assert_eq!(json["peers"][0]["backendType"], "vxlan");
        assert_eq!(json["peers"][0]["vtepMAC"], "aa:bb:cc:dd:ee:01");
        assert_eq!(json["peers"][1]["vtepMAC"], serde_json::Value::Null);
        assert_eq!(json["peers"][0]["subnetIPv6"], "fd00:10:244:4::/64");
        assert!(json["peers"][1].get("subnetIPv6").is_none(), "{json}");
        let back: NodeStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn peer_status_keeps_the_leases_text_without_allocating_for_weft_names() {
        let lease = |backend: &str, mac: &str| Lease {
            subnet: "10.244.4.0/24".parse().unwrap(),
            ipv6_subnet: None,
            attrs: crate::lease::LeaseAttrs {
                public_ip: Ipv4Addr::new(192, 0, 2, 12),
                backend_type: backend.to_string(),
                backend_data: Some(serde_json::json!({"VNI": 1, "VtepMAC": mac})),
                public_ipv6: None,
                backend_v6_data: None,
            },
            etcd_lease: Some(1),
            mod_revision: 1,
        };
        let p = PeerStatus::of(&lease("vxlan", "AA:bb:CC:dd:ee:01"), PeerState::Programmed);
        assert!(matches!(p.backend_type, Cow::Borrowed("vxlan")));
        assert!(matches!(p.vtep_mac, Some(MacText::Inline(_))));
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["vtepMAC"], "AA:bb:CC:dd:ee:01");
        assert_eq!(json["subnet"], "10.244.4.0/24");
        // Anything else another writer put there is shown as written.
        let p = PeerStatus::of(&lease("flannel-ng", "not a mac"), PeerState::Programmed);
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["backendType"], "flannel-ng");
        assert_eq!(json["vtepMAC"], "not a mac");
        let back: PeerStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back, p);
        assert!(serde_json::from_value::<PeerStatus>(serde_json::json!({
            "subnet": "10.244.4.0/33", "publicIP": "192.0.2.12", "backendType": "vxlan",
            "vtepMAC": null, "state": "programmed"
        }))
        .is_err());
    }

    #[test]
    fn stale_removals_are_kept_from_the_run_that_found_them() {
        let mut run = ready_status().last_reconcile.unwrap();
        let found = StaleRemoval::of(&run).unwrap();
        assert_eq!(found.at_unix, run.at_unix);
        assert_eq!(found.found, 1);
        assert_eq!(found.entries, run.stale);
        run.stale.clear();
        assert_eq!(StaleRemoval::of(&run), None);
    }

    #[test]
    fn peer_state_follows_the_reconcile() {
        let mut r = ready_status().last_reconcile.unwrap();
        assert_eq!(r.peer_state(), PeerState::Incomplete);
        r.failed = 0;
        assert_eq!(r.peer_state(), PeerState::Programmed);
        r.error = Some("netlink: EPERM".into());
        assert_eq!(r.peer_state(), PeerState::NotProgrammed);
    }

    #[test]
    fn rfc3339() {
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(rfc3339_utc(at(0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(at(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(at(4_102_444_799)), "2099-12-31T23:59:59Z");
    }
}
