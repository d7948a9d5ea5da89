//! The node agent: wires the etcd lease stream into a backend.
//!
//! One task owns all state ([`Agent`]); it reacts to watch events, the renew deadline, a
//! periodic resync, overlay-device removal and shutdown. What each of them means is decided by
//! the pure functions of [`decisions`]. Watch events are applied incrementally (only the
//! changed peers' entries): at once after a quiet spell, and a burst at most one pass per
//! [`COALESCE_CHANGES`]; start,
//! the periodic resync and every repair run a full reconcile of the kernel (read actual, diff
//! against desired, apply the difference), so a lost event, a restart or a hand-deleted route
//! is repaired the same way.

#[cfg(test)]
mod agent_tests;
pub mod decisions;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnetwork::{Ipv4Network, Ipv6Network};
use tracing::{error, info, warn};

use crate::backend::guard::{self, RouteGuard};
use crate::backend::{Backend, DataPath, PeerChange};
use crate::config::NetworkConfig;
use crate::health::Metrics;
use crate::lease::{config_key, Lease, RawLease, RawLeaseTable};
use crate::masq;
use crate::netlink::{self, ExternalInterface};
use crate::notify::{NotifyState, ServiceNotifier};
use crate::pod::config::PodConfig;
use crate::pod::controller::PodManager;
use crate::status::{
    BackendStatus, LeaseStatus, PeerState, PeerStatus, ReconcileStatus, RejectedBy, RejectedPeer,
    StaleRemoval, StatusBoard,
};
use crate::store::{
    endpoint_host, EtcdOptions, EtcdStore, LeaseLostReason, LeaseStore, NetworkEvent,
    NetworkSnapshot, NetworkWatch, OwnLease, StoreError,
};
use crate::subnet_env::SubnetEnv;
use crate::validate::{
    parse_mac, validate_leases_indexed, ChangedKey, LeaseClaims, LeasePolicy, NodeIdentity,
    RejectReason,
};
use decisions::{AfterRenew, AfterWatchError, ConfigDecision, Pass};

/// Everything weftd needs to run, already parsed from flags.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// How to reach etcd.
    pub etcd: EtcdOptions,
    /// `--iface`: interface name or address; `None` = the default route's interface.
    pub iface: Option<String>,
    /// `--public-ip`: the address published in the lease (default: the interface's).
    pub public_ip: Option<Ipv4Addr>,
    /// `--public-ipv6`: the IPv6 address published with IPv6 (default: the interface's first
    /// routable IPv6 address).
    pub public_ipv6: Option<std::net::Ipv6Addr>,
    /// `--subnet-file`.
    pub subnet_file: PathBuf,
    /// `--state-dir`.
    pub state_dir: PathBuf,
    /// `--subnet-lease-renew-margin`, as a duration.
    pub renew_margin: Duration,
    /// TTL of the etcd lease attached to the subnet key (24 h like Flannel).
    pub lease_ttl: Duration,
    /// `--ip-masq`.
    pub ip_masq: bool,
    /// Not `--no-udp-offloads`: the UDP backend uses TUN and UDP offloads where the kernel
    /// has them.
    pub udp_offloads: bool,
    /// `--wireguard-datapath`: the WireGuard backend's data path.
    pub wireguard_datapath: crate::backend::wireguard::WireGuardDataPath,
    /// `--route-nexthops`: VXLAN and host-gw route IPv4 peers through nexthop objects.
    pub route_nexthops: bool,
    /// `--healthz-addr`.
    pub healthz_addr: Option<SocketAddr>,
    /// `--resync-interval`: period of the full reconcile against the cached lease table.
    pub resync_interval: Duration,
    /// `--relist-interval`: mean period of the safety re-list from etcd while the watch runs.
    pub relist_interval: Duration,
    /// `--pod-manifest-path` and friends: run static pods when set.
    pub pods: Option<PodConfig>,
    /// systemd's notification socket, when weftd runs as a `Type=notify` service.
    pub notifier: ServiceNotifier,
    /// `--status-socket`: where `weftctl status` asks; `None` = off.
    pub status_socket: Option<PathBuf>,
    /// `--peer-probe-interval`: how often every peer is probed; `None` = off.
    pub probe_interval: Option<Duration>,
}

impl DaemonOptions {
    /// What the backend takes from the flags.
    pub fn backend_options(&self) -> crate::backend::BackendOptions {
        crate::backend::BackendOptions {
            udp_offloads: self.udp_offloads,
            wireguard: self.wireguard_datapath,
            route_nexthops: self.route_nexthops,
        }
    }
}

/// Errors that stop the agent. Everything else is logged and retried.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The external interface could not be determined.
    #[error("find the external interface: {0}")]
    Interface(#[from] netlink::NetlinkError),
    /// The backend could not be prepared (e.g. the state directory is unusable).
    #[error("prepare the backend: {0}")]
    Backend(#[from] crate::backend::BackendError),
    /// The health endpoint could not be bound.
    #[error("serve health on {addr}: {source}")]
    Health {
        /// The address from `--healthz-addr`.
        addr: SocketAddr,
        /// The bind error.
        source: std::io::Error,
    },
}

/// Retry delays for etcd: 200 ms doubling to 2 s. The cap bounds how long a node takes to
/// notice that etcd is back (a retry against a member that is down costs nothing).
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(200);
    const CAP: Duration = Duration::from_secs(2);

    fn new() -> Self {
        Backoff { next: Self::FIRST }
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::CAP);
        delay
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// Runs the agent until `shutdown` resolves. The data path (device, routes, lease) is left in
/// place on return so pods keep talking across restarts; only the masquerade table is removed.
pub async fn run(
    opts: DaemonOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DaemonError> {
    let board = Arc::new(StatusBoard::new(opts.notifier.clone()));
    if let Some(every) = opts.notifier.watchdog_interval() {
        tokio::spawn(crate::notify::watchdog(opts.notifier.clone(), every));
    }
    if let Some(path) = opts.status_socket.clone() {
        let board = board.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::status::serve(path, board).await {
                error!(error = %e, "weftctl status will not answer");
            }
        });
    }
    let notifier = opts.notifier.clone();
    let shutdown = async move {
        shutdown.await;
        notifier.notify(&[NotifyState::Stopping]);
    };
    tokio::pin!(shutdown);
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = opts.healthz_addr {
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|source| DaemonError::Health { addr, source })?;
        drop(listener);
        tokio::spawn(crate::health::serve(addr, metrics.clone()));
    }
    if let Some(every) = opts.probe_interval {
        match crate::probe::spawn(board.clone(), every) {
            Ok(()) => {
                metrics.set_probes(Arc::new(crate::probe::PeerHealthMetrics(board.clone())));
            }
            Err(e) => error!(error = %e, "open the raw ICMP socket; peers are not probed"),
        }
    }
    let ext = netlink::find_external_interface(opts.iface.as_deref(), opts.public_ip).await?;
    info!(iface = %ext.name, public_ip = %ext.public_ip, mtu = ext.mtu, "using external interface");
    enable_ip_forwarding();
    // Static pods run beside the network agent: pods already running keep running while etcd
    // is away, and new ones are wired by CNI as soon as subnet.env exists.
    let (pods_stop, pods_stopped) = tokio::sync::watch::channel(false);
    if let Some(cfg) = &opts.pods {
        tokio::spawn(publish_pods(
            opts.etcd.clone(),
            cfg.node_name.clone(),
            cfg.pod_root.clone(),
            board.clone(),
        ));
    }
    let pods = opts.pods.clone().map(|mut cfg| {
        cfg.host_ip = Some(ext.public_ip.into());
        tokio::spawn(PodManager::run(cfg, pods_stopped))
    });
    let result = serve_network(&opts, ext, metrics, board, shutdown).await;
    let _ = pods_stop.send(true);
    if let Some(pods) = pods {
        match pods.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!(error = %e, "pod runtime stopped"),
            Err(e) => error!(error = %e, "pod runtime task failed"),
        }
    }
    result
}

/// The overlay part of [`run`]: lease, backend, reconcile loop.
async fn serve_network(
    opts: &DaemonOptions,
    ext: ExternalInterface,
    metrics: Arc<Metrics>,
    board: Arc<StatusBoard>,
    shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<(), DaemonError> {
    let mut shutdown = shutdown;
    let mut agent = tokio::select! {
        agent = Agent::start(opts.clone(), ext, metrics, board) => agent?,
        () = &mut shutdown => {
            info!("shutdown before the node was up");
            return Ok(());
        }
    };
    agent.serve(shutdown).await;
    if opts.ip_masq {
        if let Err(e) = masq::remove().await {
            warn!(error = %e, "remove the masquerade table");
        }
    }
    info!(subnet = %agent.own.subnet, "stopped; device, routes and lease left in place");
    Ok(())
}

/// The agent's state once it holds a lease: generic over the lease store and the data path,
/// the two seams where it meets etcd and the kernel.
struct Agent<S: LeaseStore = EtcdStore, D: DataPath = Backend> {
    opts: DaemonOptions,
    ext: ExternalInterface,
    store: S,
    config: NetworkConfig,
    backend: D,
    own: OwnLease,
    /// The raw JSON of `<prefix>/config` the running `config` was last compared with.
    config_text: Option<String>,
    /// Every key under `<prefix>/subnets/`, ours included, unparsed, by key: nothing in it is
    /// believed before [`validate_leases`] (each reconcile).
    leases: RawLeaseTable,
    /// etcd revision the table reflects.
    revision: i64,
    /// The mod revision of each rejected or refused key already logged, so a bad key is
    /// logged and counted once per revision, not on every reconcile.
    reported: HashMap<String, i64>,
    /// The peer leases the last reconcile did not program, and why (for `weftctl status`).
    rejected: Vec<RejectedPeer>,
    /// The etcd endpoints' addresses, which no peer route may cover.
    etcd_addresses: Vec<Ipv4Addr>,
    metrics: Arc<Metrics>,
    /// Whether subnet.env reflects the current lease.
    published: bool,
    /// When to run a reconcile again after one that failed (entries, subnet.env or masquerade).
    retry_reconcile: Option<Instant>,
    /// The external interface was deleted; reconciles look for it until it is back.
    ext_gone: bool,
    /// What `weftctl status` and systemd are told.
    board: Arc<StatusBoard>,
    /// The address the external interface last came back with, when it was not our public IP
    /// (so that is logged once, not every second).
    ext_wrong_ip: Option<Ipv4Addr>,
    /// When the coalesced watch events are applied; `None` when none wait.
    apply_changes_at: Option<Instant>,
    /// When the last incremental pass ran, which spaces the next one.
    changes_applied: Option<Instant>,
    /// What the route guard protected at the last full reconcile, reused by incremental
    /// passes (the node's own addresses and routes change rarely; a resync re-reads them).
    protected: Option<Vec<guard::Protected>>,
    /// The same for IPv6, when the network has IPv6.
    protected6: Option<Vec<guard::Protected6>>,
    /// The subnets and VTEP MACs the table claimed at the last full validation, kept up to
    /// date by incremental passes; `None` sends the next change to a full reconcile.
    claims: Option<LeaseClaims>,
    /// The keys watch events changed since the last pass, with their value as that pass
    /// saw it (`None`: absent): an incremental pass judges and applies only these.
    dirty: HashMap<String, Option<RawLease>>,
}

/// Makes every local IPv6 address (the `/128`s the route guard protects) this node's for
/// validation too.
fn with_ipv6_addresses(policy: &mut LeasePolicy, protected6: &[guard::Protected6]) {
    policy.node.addresses_v6.extend(
        protected6
            .iter()
            .filter(|p| p.prefix.prefix() == 128)
            .map(|p| p.prefix.ip()),
    );
}

/// The peers a pass saw: all of them (a full pass) or the ones that changed (incremental).
#[derive(Clone, Copy)]
enum Peers<'a> {
    All(&'a [Lease]),
    Changed(&'a [PeerChange]),
}

/// Delay before a failed reconcile is tried again, instead of waiting for the next resync.
const RECONCILE_RETRY: Duration = Duration::from_secs(1);

/// The least time between two incremental passes: a lone change is applied at once, a burst
/// of lease changes is collected into one pass per period, and no change waits longer.
pub const COALESCE_CHANGES: Duration = Duration::from_millis(20);

impl Agent {
    /// Connects, waits for a valid network config, acquires the lease, programs the kernel and
    /// writes subnet.env. Retries etcd failures forever; fails only on local problems.
    async fn start(
        opts: DaemonOptions,
        ext: ExternalInterface,
        metrics: Arc<Metrics>,
        board: Arc<StatusBoard>,
    ) -> Result<Agent, DaemonError> {
        board.update(|s| {
            s.interface = Some(ext.name.clone());
            s.public_ip = Some(ext.public_ip);
            s.phase = format!("connecting to etcd at {}", opts.etcd.endpoints.join(","));
        });
        let store = connect(&opts.etcd, &metrics).await;
        let etcd_addresses = resolve_endpoints(&opts.etcd.endpoints).await;
        board.set_phase(&format!(
            "waiting for a valid network config at {}/config",
            opts.etcd.prefix.trim_end_matches('/')
        ));
        let (config, config_text) = wait_for_config(&store, &opts.etcd.prefix, &metrics).await;
        info!(network = %config.network, subnet_len = config.subnet_len, backend = ?config.backend, "network config");
        let mut ext = ext;
        if config.enable_ipv4 && ext.iface_addr.is_unspecified() {
            return Err(DaemonError::Interface(netlink::NetlinkError::NoInterface(
                format!(
                    "{} has no IPv4 address and the network has IPv4 (EnableIPv4)",
                    ext.name
                ),
            )));
        }
        if let Some(v6) = &config.ipv6 {
            enable_ipv6_forwarding();
            netlink::add_ipv6_underlay(&mut ext, opts.public_ipv6).await?;
            info!(ipv6_network = %v6.network, ipv6_subnet_len = v6.subnet_len,
                public_ipv6 = ?ext.public_ipv6, ipv4 = config.enable_ipv4, "IPv6 enabled");
        }
        let backend = Backend::new(&config, &ext, &opts.state_dir, opts.backend_options()).await?;
        if let Some(render) = backend.metrics() {
            metrics.set_backend(render);
        }
        let previous = previous_subnets(&opts.subnet_file, &config);
        board.set_phase("acquiring a subnet lease");
        // One listing serves both the claim and the lease table (at 10 000 leases a listing
        // is tens of milliseconds of the start); the watch from its revision brings the claim.
        let mut backoff = Backoff::new();
        let listed = loop {
            match store.list_network().await {
                Ok(listed) => break listed,
                Err(e) => {
                    metrics.etcd_errors.fetch_add(1, Ordering::Relaxed);
                    let delay = backoff.next_delay();
                    warn!(error = %e, retry_in = ?delay, "list leases; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        };
        let own = acquire(
            &store,
            &config,
            &backend,
            previous,
            opts.lease_ttl,
            &metrics,
            Some(&listed),
        )
        .await;
        let mut agent = Agent {
            opts,
            ext,
            store,
            config,
            backend,
            own,
            config_text: Some(config_text),
            leases: RawLeaseTable::default(),
            revision: 0,
            reported: HashMap::new(),
            rejected: Vec::new(),
            etcd_addresses,
            metrics,
            published: false,
            retry_reconcile: None,
            board,
            ext_gone: false,
            ext_wrong_ip: None,
            apply_changes_at: None,
            changes_applied: None,
            protected: None,
            protected6: None,
            claims: None,
            dirty: HashMap::new(),
        };
        agent.note_lease();
        // The table as listed, before our claim: the watch from the listing's revision brings
        // the claim (or the renewed value) as a change. Until it does, the table holds our
        // lease as we wrote it (as after a re-acquire), so a peer's change that comes first
        // does not read as our lease gone.
        agent.leases = listed.leases.into_iter().collect();
        agent.revision = listed.revision;
        let create_revision = agent
            .leases
            .get(&agent.own_key())
            .map_or(agent.revision, |r| r.create_revision);
        let own = agent.own_as_written(create_revision);
        agent.leases.insert(own);
        agent.config_seen(listed.config);
        agent.reconcile().await;
        Ok(agent)
    }
}

impl<S: LeaseStore, D: DataPath> Agent<S, D> {
    /// The event loop. Returns when `shutdown` resolves.
    async fn serve(&mut self, shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>) {
        let mut shutdown = shutdown;
        let mut link_events = match netlink::link_events() {
            Ok(rx) => rx,
            Err(e) => {
                warn!(error = %e, "subscribe to link events; a deleted device is noticed at the next resync");
                tokio::sync::mpsc::unbounded_channel().1
            }
        };
        let mut resync = tokio::time::interval(self.opts.resync_interval);
        resync.tick().await;
        // The start listed and reconciled: watch from that listing (its changes since, our
        // claim among them, arrive as events). Only a watch that cannot open lists again.
        let mut watch: Option<S::Watch> = match self.store.watch_network(self.revision + 1).await {
            Ok(w) => Some(w),
            Err(e) => {
                self.metrics.etcd_errors.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "open the lease watch; re-listing");
                None
            }
        };
        let mut backoff = Backoff::new();
        let mut retry_at = Instant::now();
        let mut relist_at =
            Instant::now() + decisions::jittered(self.opts.relist_interval, rand::random());
        loop {
            if watch.is_none() && Instant::now() >= retry_at {
                match self.rewatch().await {
                    Ok(w) => {
                        watch = Some(w);
                        backoff.reset();
                    }
                    Err(e) => {
                        self.metrics.etcd_errors.fetch_add(1, Ordering::Relaxed);
                        let delay = backoff.next_delay();
                        warn!(error = %e, retry_in = ?delay, "etcd unavailable; keeping the data path as it is");
                        retry_at = Instant::now() + delay;
                    }
                }
            }
            let renew_in = self.renew_delay();
            tokio::select! {
                () = &mut shutdown => return,
                events = next_events(&mut watch), if watch.is_some() => match events {
                    Ok(events) => self.note_changes(events).await,
                    Err(e) => {
                        watch = None;
                        match decisions::after_watch_error(&e) {
                            AfterWatchError::RelistNow => info!(error = %e, "watch compacted; re-listing"),
                            AfterWatchError::BackOff => {
                                self.metrics.etcd_errors.fetch_add(1, Ordering::Relaxed);
                                warn!(error = %e, "lease watch failed; keeping the data path and reconnecting");
                                retry_at = Instant::now() + backoff.next_delay();
                            }
                        }
                    }
                },
                () = sleep_until_some(self.apply_changes_at), if self.apply_changes_at.is_some() => {
                    self.apply_changes().await;
                }
                () = tokio::time::sleep_until(retry_at.into()), if watch.is_none() => {}
                () = sleep_until_some(self.retry_reconcile), if self.retry_reconcile.is_some() => {
                    self.reconcile().await;
                }
                () = tokio::time::sleep(renew_in) => self.renew().await,
                // The kernel against the table the watch keeps: no etcd request.
                _ = resync.tick() => self.reconcile().await,
                () = tokio::time::sleep_until(relist_at.into()), if watch.is_some() => {
                    relist_at = Instant::now() + decisions::jittered(self.opts.relist_interval, rand::random());
                    if let Err(e) = self.relist().await {
                        self.metrics.etcd_errors.fetch_add(1, Ordering::Relaxed);
                        warn!(error = %e, "safety re-list failed; reconciling against the last known table");
                    }
                    self.reconcile().await;
                }
                Some(event) = link_events.recv() => {
                    if event.removed && event.index == self.ext.index {
                        warn!(iface = %self.ext.name, "external interface removed; the data path follows it when it is back");
                        self.ext_gone = true;
                        self.reconcile().await;
                    } else if self.ext_gone && !event.removed {
                        self.reconcile().await;
                    } else if let Some(name) = event.name.as_deref().filter(|n| event.removed && self.backend.owns_device(n)) {
                        warn!(device = name, "overlay device removed; recreating it");
                        self.reconcile().await;
                    }
                }
            }
        }
    }

    /// Re-lists the leases, reconciles, and opens a new watch after the listed revision.
    async fn rewatch(&mut self) -> Result<S::Watch, StoreError> {
        self.relist().await?;
        self.reconcile().await;
        self.store.watch_network(self.revision + 1).await
    }

    /// Replaces the lease table with etcd's, re-acquiring our own lease if it is gone, and
    /// compares the network config with the running one.
    async fn relist(&mut self) -> Result<(), StoreError> {
        let snapshot = self.store.list_network().await?;
        self.leases = snapshot.leases.into_iter().collect();
        self.revision = snapshot.revision;
        self.config_seen(snapshot.config);
        self.check_own_lease().await
    }

    /// The key of our own lease.
    fn own_key(&self) -> String {
        self.own.key(&self.opts.etcd.prefix)
    }

    /// Re-acquires when the table no longer shows our lease under our public IP: deleted,
    /// expired, overwritten with something that is not a lease, or taken by another writer.
    async fn check_own_lease(&mut self) -> Result<(), StoreError> {
        let key = self.own_key();
        let Some(reason) = decisions::own_lease_lost(&self.leases, &key, &self.own.attrs) else {
            return Ok(());
        };
        self.own_lease_lost(&reason);
        self.reacquire().await
    }

    /// Reports a lost own lease; a takeover by another writer also marks the node not ready
    /// until it serves a new subnet.
    fn own_lease_lost(&self, reason: &LeaseLostReason) {
        let key = self.own_key();
        match reason {
            LeaseLostReason::TakenBy(other) => {
                if self.metrics.own_lease_taken_over.load(Ordering::Relaxed) {
                    // Still recovering from this takeover (the last acquire failed): said already.
                    return;
                }
                error!(key, own_public_ip = %self.own.attrs.public_ip, other_public_ip = %other,
                    "own lease was taken over by another writer (PublicIP {} replaced by {other}); \
                     leaving the subnet to it and acquiring a new one", self.own.attrs.public_ip);
                self.metrics.ready.store(false, Ordering::Relaxed);
                self.metrics
                    .own_lease_taken_over
                    .store(true, Ordering::Relaxed);
                self.metrics
                    .own_lease_takeovers
                    .fetch_add(1, Ordering::Relaxed);
            }
            LeaseLostReason::Invalid(e) => {
                error!(key, error = %e, "own lease was overwritten with a value that is not a lease; acquiring again");
            }
            LeaseLostReason::Deleted => {
                warn!(key, "own lease is gone from etcd; acquiring again");
            }
        }
    }

    /// Takes watch events into the lease table and schedules their application (coalesced);
    /// a lost own lease is re-acquired at once.
    async fn note_changes(&mut self, events: Vec<NetworkEvent>) {
        for event in events {
            match event {
                NetworkEvent::LeasePut(raw) => {
                    if raw.key != self.own_key() {
                        let known = self.leases.get(&raw.key).map(|l| &l.value);
                        if known != Some(&raw.value) {
                            info!(peer = %raw.key, revision = raw.mod_revision, "peer joined or changed");
                        }
                    }
                    self.revision = self.revision.max(raw.mod_revision);
                    self.set_lease(raw.key.clone(), Some(raw));
                }
                NetworkEvent::LeaseDeleted { key } => {
                    if key != self.own_key() {
                        info!(peer = %key, "peer left");
                    }
                    self.set_lease(key, None);
                }
                NetworkEvent::Config(text) => self.config_seen(text),
            }
        }
        if let Err(e) = self.check_own_lease().await {
            self.metrics.etcd_errors.fetch_add(1, Ordering::Relaxed);
            warn!(error = %e, "re-acquire own lease; will retry at the next resync");
        }
        let at =
            decisions::apply_changes_at(Instant::now(), self.changes_applied, COALESCE_CHANGES);
        self.apply_changes_at.get_or_insert(at);
    }

    /// Puts a key's new value (`None`: deleted) into the lease table, remembering the value
    /// the last pass saw for the next incremental one.
    fn set_lease(&mut self, key: String, raw: Option<RawLease>) {
        let old = match raw {
            Some(raw) => self.leases.insert(raw),
            None => self.leases.remove(&key),
        };
        self.dirty.entry(key).or_insert(old);
    }

    /// Applies the coalesced watch events: incrementally when the node is healthy (only the
    /// changed keys are judged, only their peers' entries applied), else as a full reconcile.
    async fn apply_changes(&mut self) {
        self.apply_changes_at = None;
        self.changes_applied = Some(Instant::now());
        let pass = decisions::pass_for_changes(
            self.published,
            self.ext_gone,
            self.retry_reconcile.is_some(),
        );
        // IPv6 changes are judged against what the last full pass protected of IPv6 too.
        if pass == Pass::Full
            || self.protected.is_none()
            || self.claims.is_none()
            || (self.config.ipv6.is_some() && self.protected6.is_none())
        {
            return self.reconcile().await;
        }
        let started = Instant::now();
        let Some(changes) = self.changed_peers() else {
            return self.reconcile().await;
        };
        let result = self.backend.apply_changes(self.own.subnet, &changes).await;
        let report = match result {
            Ok(Some(report)) => report,
            Ok(None) => return self.reconcile().await,
            Err(e) => {
                warn!(error = %e, "apply lease changes; running a full reconcile");
                return self.reconcile().await;
            }
        };
        self.record(started.elapsed(), Peers::Changed(&changes), report)
            .await;
    }

    /// Judges the keys changed since the last pass, each alone, through validation and the
    /// route guard, and says which peers came, changed or went. `None` when a key collides
    /// with another (see [`LeaseClaims`]): the whole table must be judged again.
    fn changed_peers(&mut self) -> Option<Vec<PeerChange>> {
        let protected = self.protected.clone()?;
        let protected6 = match self.config.ipv6 {
            Some(_) => Some(self.protected6.clone()?),
            None => None,
        };
        let mut claims = self.claims.take()?;
        let mut policy = self.policy_with(&protected);
        let mut route_guard = RouteGuard::new(protected);
        if let Some(protected6) = protected6 {
            with_ipv6_addresses(&mut policy, &protected6);
            route_guard = route_guard.with_ipv6(protected6);
        }
        let subnets_prefix = crate::lease::subnets_prefix(&self.opts.etcd.prefix);
        let own_key = self.own_key();
        let mut changes = Vec::new();
        let mut named: Option<NamedSubnets> = None;
        for (key, old) in std::mem::take(&mut self.dirty) {
            let new = self.leases.get(&key);
            let verdict = claims.update(&policy, old.as_ref(), new);
            let revision = new.map_or(0, |raw| raw.mod_revision);
            if verdict == ChangedKey::Collides {
                return None;
            }
            self.rejected.retain(|r| r.key != key);
            let Ok(subnet) = crate::lease::parse_lease_key(&self.opts.etcd.prefix, &key) else {
                if let ChangedKey::Judged(Err(reason)) = &verdict {
                    self.note_rejected(&key, revision, reason);
                }
                continue;
            };
            let lease = match verdict {
                ChangedKey::Collides => return None,
                ChangedKey::Gone => {
                    self.reported.remove(&key);
                    None
                }
                // By key: in an IPv6-only network every lease's IPv4 subnet is 0.0.0.0/0.
                ChangedKey::Judged(Ok(_)) if key == own_key => {
                    self.reported.remove(&key);
                    continue;
                }
                ChangedKey::Judged(Ok(lease)) => match route_guard.check_lease(&lease) {
                    Ok(()) => {
                        self.reported.remove(&key);
                        Some(lease)
                    }
                    Err(refused) => {
                        let revision = lease.mod_revision;
                        if self.reported.get(&key) != Some(&revision) {
                            error!(key, peer = %refused.dst, peer_ipv6 = ?refused.dst6, "route refused by the guard, not programmed: {refused}");
                            self.metrics.routes_refused.fetch_add(1, Ordering::Relaxed);
                        }
                        self.reported.insert(key.clone(), revision);
                        self.rejected.push(RejectedPeer {
                            key: key.clone(),
                            subnet: Some(
                                refused
                                    .dst6
                                    .map_or_else(|| refused.dst.to_string(), |v6| v6.to_string()),
                            ),
                            by: RejectedBy::RouteGuard,
                            reason: "route_overlap".to_string(),
                            why: refused.to_string(),
                        });
                        None
                    }
                },
                ChangedKey::Judged(Err(reason)) => {
                    self.note_rejected(&key, revision, &reason);
                    None
                }
            };
            // The IPv6 part of the key (in a network with IPv6): what a gone lease's IPv6
            // entries are found by.
            let subnet6 = key_subnets(&subnets_prefix, &key)
                .filter(|_| self.config.ipv6.is_some())
                .and_then(|dual| dual.v6);
            // A key that programs nothing now has its entries withdrawn by subnet; when
            // another key names the same subnet (a claim that came and went within this
            // batch next to the node holding it, or a bad value under a live node's IPv4
            // subnet with another IPv6 part), that would take the other key's entries: only
            // the whole table tells what stays.
            if lease.is_none() {
                let named = named.get_or_insert_with(|| self.named_subnets());
                if named.elsewhere(self.leases.get(&key).is_some(), subnet, subnet6) {
                    return None;
                }
            }
            changes.push(PeerChange {
                subnet,
                subnet6,
                lease,
            });
        }
        self.claims = Some(claims);
        let rejected_now = self
            .rejected
            .iter()
            .filter(|r| r.by == RejectedBy::Validation)
            .count();
        self.metrics
            .leases_rejected_now
            .store(rejected_now as u64, Ordering::Relaxed);
        Some(changes)
    }

    /// How many keys of the table name each subnet (IPv4 other than `0.0.0.0/0`, IPv6).
    fn named_subnets(&self) -> NamedSubnets {
        let subnets_prefix = crate::lease::subnets_prefix(&self.opts.etcd.prefix);
        let mut named = NamedSubnets::default();
        for raw in self.leases.values() {
            let Some(dual) = key_subnets(&subnets_prefix, &raw.key) else {
                continue;
            };
            if dual.v4.prefix() != 0 {
                *named.v4.entry(dual.v4).or_default() += 1;
            }
            if let Some(v6) = dual.v6 {
                *named.v6.entry(v6).or_default() += 1;
            }
        }
        named
    }

    /// Records a key validation rejected in an incremental pass: logged and counted once
    /// per revision, listed for `weftctl status`.
    fn note_rejected(&mut self, key: &str, revision: i64, reason: &RejectReason) {
        if self.reported.get(key) != Some(&revision) {
            error!(
                key = %key,
                revision,
                reason = reason.label(),
                "lease rejected, not programmed: {reason}"
            );
            self.metrics.count_rejected_lease(reason.label());
        }
        self.reported.insert(key.to_string(), revision);
        self.rejected.push(RejectedPeer {
            key: key.to_string(),
            subnet: crate::lease::parse_lease_key(&self.opts.etcd.prefix, key)
                .ok()
                .map(|s| s.to_string()),
            by: RejectedBy::Validation,
            reason: reason.label().to_string(),
            why: reason.to_string(),
        });
    }

    /// Compares the config in etcd with the running one. Changes weftd can apply live
    /// (`SubnetMin`, `SubnetMax`: they only steer which subnet is handed out next) are applied;
    /// a new `Network`, `SubnetLen` or `Backend` would orphan leases or rebuild the data path
    /// under running pods, so it is refused with one error until the nodes are restarted.
    fn config_seen(&mut self, text: Option<String>) {
        let decision =
            decisions::config_decision(&self.config, self.config_text.as_deref(), text.as_deref());
        let key = config_key(&self.opts.etcd.prefix);
        self.config_text = text;
        let running = &self.config;
        let refuse = |metrics: &Metrics| {
            metrics.config_change_refused.store(true, Ordering::Relaxed);
            metrics
                .config_changes_refused
                .fetch_add(1, Ordering::Relaxed);
        };
        match decision {
            ConfigDecision::Unchanged => {}
            ConfigDecision::Deleted => {
                error!(key, old = %running, "network config was deleted; keeping the running config");
                refuse(&self.metrics);
            }
            ConfigDecision::Invalid(e) => {
                error!(key, old = %running, error = %e, "network config changed to an invalid one; keeping the running config");
                refuse(&self.metrics);
            }
            ConfigDecision::Same => {
                info!(key, config = %running, "network config rewritten without a change");
                self.metrics
                    .config_change_refused
                    .store(false, Ordering::Relaxed);
            }
            ConfigDecision::ApplyLive(new) => {
                info!(key, old = %running, new = %new, "network config changed: {running} -> {new}; applied");
                self.config = new;
                self.metrics
                    .config_change_refused
                    .store(false, Ordering::Relaxed);
                self.metrics
                    .config_changes_applied
                    .fetch_add(1, Ordering::Relaxed);
            }
            ConfigDecision::NeedsRestart(new) => {
                error!(key, old = %running, new = %new,
                    "network config changed: {running} -> {new}; a new Network, SubnetLen or Backend is \
                     not applied while running (it would orphan leases or rebuild the data path under \
                     running pods): keeping the running config; restart weftd on every node to apply it");
                refuse(&self.metrics);
            }
        }
    }

    /// Acquires a lease again, preferring the subnet we had.
    async fn reacquire(&mut self) -> Result<(), StoreError> {
        let attrs = self.backend.lease_attrs();
        let own = self
            .store
            .acquire_dual(
                &self.config,
                &attrs,
                Some(self.own.subnet),
                self.own.ipv6_subnet,
                self.opts.lease_ttl,
            )
            .await?;
        if own.subnet != self.own.subnet {
            warn!(old = %self.own.subnet, subnet = %own.subnet, "own subnet changed");
            self.published = false;
            self.metrics.ready.store(false, Ordering::Relaxed);
        }
        info!(subnet = %own.subnet, "lease re-acquired");
        self.own = own;
        self.note_lease();
        // Until the watch delivers the key, the table holds our lease as we wrote it.
        let raw = self.own_as_written(self.revision);
        self.set_lease(raw.key.clone(), Some(raw));
        Ok(())
    }

    /// Our lease as we wrote it, for the table until the watch delivers the key; it counts
    /// from `create_revision` in overlaps.
    fn own_as_written(&self, create_revision: i64) -> RawLease {
        RawLease {
            key: self.own_key(),
            value: self.own.attrs.to_json().into_bytes(),
            etcd_lease: self.own.etcd_lease.unwrap_or(0),
            create_revision,
            mod_revision: self.revision,
        }
    }

    fn note_lease(&self) {
        let expiry = self
            .own
            .expires
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as i64);
        self.metrics
            .lease_expiry_unix
            .store(expiry, Ordering::Relaxed);
    }

    /// Time until the lease must be renewed (a day for a reservation, which needs no renewal).
    fn renew_delay(&self) -> Duration {
        match self.own.expires {
            Some(expires) => expires
                .checked_sub(self.opts.renew_margin)
                .and_then(|at| at.duration_since(SystemTime::now()).ok())
                .unwrap_or(Duration::ZERO),
            None => Duration::from_secs(86_400),
        }
    }

    async fn renew(&mut self) {
        if self.own.etcd_lease.is_none() {
            return;
        }
        let answer = self.store.renew(&self.own, self.opts.lease_ttl).await;
        match decisions::after_renew(answer) {
            AfterRenew::Renewed(own) => {
                info!(subnet = %own.subnet, expires = ?own.expires, "lease renewed");
                self.own = own;
                self.note_lease();
            }
            AfterRenew::Reacquire(reason) => {
                self.own_lease_lost(&reason);
                match self.reacquire().await {
                    Ok(()) => self.reconcile().await,
                    Err(e) => {
                        self.metrics.etcd_errors.fetch_add(1, Ordering::Relaxed);
                        warn!(error = %e, "re-acquire own lease; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            AfterRenew::RetrySoon(e) => {
                self.metrics.etcd_errors.fetch_add(1, Ordering::Relaxed);
                warn!(subnet = %self.own.subnet, error = %e, "renew lease; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    /// Looks for the external interface again after it was deleted (same `--iface` and
    /// `--public-ip` rules as at start). Once it is back with the node's public IP, the backend
    /// is rebuilt on it: a VXLAN device is bound to the interface's index, which a re-created
    /// interface does not keep. Returns whether the interface is back.
    async fn follow_external_interface(&mut self) -> bool {
        let mut ext =
            match netlink::find_external_interface(self.opts.iface.as_deref(), self.opts.public_ip)
                .await
            {
                Ok(ext) => ext,
                Err(e) => {
                    tracing::debug!(error = %e, "external interface not back yet");
                    return false;
                }
            };
        if self.config.ipv6.is_some() {
            if let Err(e) = netlink::add_ipv6_underlay(&mut ext, self.opts.public_ipv6).await {
                tracing::debug!(error = %e, "external interface's IPv6 address not back yet");
                return false;
            }
        }
        if ext.public_ip != self.ext.public_ip {
            if self.ext_wrong_ip != Some(ext.public_ip) {
                error!(iface = %ext.name, address = %ext.public_ip, public_ip = %self.ext.public_ip,
                    "external interface is back with another address; the lease publishes the old one: restart weftd to move the node");
                self.ext_wrong_ip = Some(ext.public_ip);
            }
            return false;
        }
        match self
            .backend
            .rebuild(
                &self.config,
                &ext,
                &self.opts.state_dir,
                self.opts.backend_options(),
            )
            .await
        {
            Ok(backend) => {
                info!(iface = %ext.name, index = ext.index, public_ip = %ext.public_ip, "external interface is back; data path rebuilt on it");
                if let Some(render) = backend.metrics() {
                    self.metrics.set_backend(render);
                }
                // The old backend (for UDP: its pumps and sockets) goes away here.
                self.backend = backend;
                self.ext = ext;
                self.ext_gone = false;
                self.ext_wrong_ip = None;
                // The interface may have come back with another MTU: subnet.env follows.
                self.published = false;
                true
            }
            Err(e) => {
                warn!(iface = %ext.name, error = %e, "rebuild the data path on the external interface");
                false
            }
        }
    }

    /// Makes the kernel match the lease table, then publishes subnet.env and the masquerade
    /// rules once the data path is in place.
    async fn reconcile(&mut self) {
        if self.ext_gone && !self.follow_external_interface().await {
            self.retry_reconcile = Some(Instant::now() + RECONCILE_RETRY);
            return;
        }
        let started = Instant::now();
        // subnet.env is not written yet: this pass sets up a new own subnet.
        let moving = !self.published;
        self.apply_changes_at = None;
        self.protected = None;
        self.protected6 = None;
        self.dirty.clear();
        let peers = self.believed_peers().await;
        self.backend.set_own_ipv6(self.own.ipv6_subnet);
        let result = self.backend.reconcile(self.own.subnet, &peers).await;
        self.metrics
            .reconcile_full_runs
            .fetch_add(1, Ordering::Relaxed);
        let took = started.elapsed();
        let report = match result {
            Ok(report) => report,
            Err(e) => {
                self.metrics
                    .record_reconcile(took, peers.len(), 0, 0, 0, true);
                error!(subnet = %self.own.subnet, error = %e, "reconcile failed; retrying in {RECONCILE_RETRY:?}");
                self.retry_reconcile = Some(Instant::now() + RECONCILE_RETRY);
                let status = ReconcileStatus::failed(took, &e);
                self.board_peers(Peers::All(&peers), status.peer_state());
                self.report_status(status);
                return;
            }
        };
        // A refusal may come from an address this very pass changed (the overlay address
        // follows a new own subnet): the next pass reads the node's addresses again, and on a
        // new subnet it comes at once.
        let guard_refused = self.rejected.iter().any(|r| r.by == RejectedBy::RouteGuard);
        if guard_refused {
            self.protected = None;
            self.protected6 = None;
        }
        self.record(took, Peers::All(&peers), report).await;
        drop(peers);
        release_freed_memory();
        if guard_refused && moving {
            self.retry_reconcile = Some(Instant::now());
        }
    }

    /// Counts, logs and reports one pass, and publishes subnet.env once the data path is in
    /// place.
    async fn record(
        &mut self,
        took: Duration,
        peers: Peers<'_>,
        report: crate::backend::ReconcileReport,
    ) {
        let status = ReconcileStatus::of(took, &report);
        let count = self.board_peers(peers, status.peer_state());
        self.metrics.record_reconcile(
            took,
            count,
            count.saturating_sub(report.failed),
            report.added,
            report.removed,
            report.failed > 0,
        );
        // Only what the kernel refused is worth another try soon; a peer off this node's
        // segment stays unroutable until a lease or an address changes.
        self.retry_reconcile =
            (report.failed > report.unroutable).then(|| Instant::now() + RECONCILE_RETRY);
        if report.added + report.removed + report.failed > 0 {
            info!(
                subnet = %self.own.subnet,
                peers = count,
                added = report.added,
                removed = report.removed,
                failed = report.failed,
                took_ms = took.as_secs_f64() * 1e3,
                "reconciled"
            );
        }
        if !self.published {
            self.publish().await;
        }
        self.report_status(status);
    }

    /// Puts the peers a pass saw on the status board (a full pass: all of them; an
    /// incremental one: only the changed ones are touched); returns how many there are.
    fn board_peers(&self, peers: Peers<'_>, state: PeerState) -> usize {
        let mut count = 0;
        self.board.update(|s| {
            match peers {
                Peers::All(all) => s.peers = all.iter().map(|l| PeerStatus::of(l, state)).collect(),
                Peers::Changed(changes) => {
                    for c in changes {
                        // By both subnets, the order of a full pass's peers: an
                        // IPv6-only network keys every IPv4 part 0.0.0.0/0.
                        let at = s.peers.binary_search_by(|p| {
                            (p.subnet, p.subnet6).cmp(&(c.subnet, c.subnet6))
                        });
                        match (at, &c.lease) {
                            (Ok(i), Some(l)) => s.peers[i] = PeerStatus::of(l, state),
                            (Ok(i), None) => {
                                s.peers.remove(i);
                            }
                            (Err(i), Some(l)) => s.peers.insert(i, PeerStatus::of(l, state)),
                            (Err(_), None) => {}
                        }
                    }
                }
            }
            count = s.peers.len();
        });
        count
    }

    /// Puts the node's state on the status board: `weftctl status`, and systemd's `STATUS=`
    /// and `READY=1` (sent once subnet.env is written after peers were programmed).
    fn report_status(&self, reconcile: ReconcileStatus) {
        self.board.update(|s| {
            s.ready = self.published;
            s.phase = if self.published {
                "ready"
            } else {
                "publishing subnet.env"
            }
            .to_string();
            s.interface = Some(self.ext.name.clone());
            s.public_ip = Some(self.ext.public_ip);
            s.lease = Some(LeaseStatus::of(&self.own));
            s.backend = Some(BackendStatus {
                kind: self.config.backend.type_name().to_string(),
                device: self.backend.device_name().to_string(),
                mtu: self.backend.mtu(),
                offloads: self
                    .backend
                    .granted_offloads()
                    .unwrap_or("not applicable")
                    .to_string(),
            });
            s.rejected = self.rejected.clone();
            if let Some(stale) = StaleRemoval::of(&reconcile) {
                s.last_stale = Some(stale);
            }
            s.last_reconcile = Some(reconcile);
        });
    }

    /// What validation says about this node, with every local address the route guard
    /// protects counted as the node's (other interfaces, loopback).
    fn policy_with(&self, protected: &[guard::Protected]) -> LeasePolicy {
        let mut policy = self.policy();
        policy.node.addresses.extend(
            protected
                .iter()
                .filter(|p| p.prefix.prefix() == 32)
                .map(|p| p.prefix.ip()),
        );
        policy
    }

    /// What validation says about this node.
    fn policy(&self) -> LeasePolicy {
        let attrs = self.backend.lease_attrs();
        let addresses = vec![self.ext.public_ip, self.ext.iface_addr];
        LeasePolicy {
            prefix: self.opts.etcd.prefix.clone(),
            config: self.config.clone(),
            node: NodeIdentity {
                public_ip: Some(self.own.attrs.public_ip),
                addresses,
                vtep_mac: attrs.vtep_mac().and_then(parse_mac),
                subnet: Some(self.own.subnet),
                ipv6_subnet: self.own.ipv6_subnet,
                public_ipv6: self.own.attrs.public_ipv6,
                addresses_v6: self.ext.public_ipv6.into_iter().collect(),
                vtep_mac_v6: attrs.v6_vtep_mac().and_then(parse_mac),
            },
        }
    }

    /// The peer leases that pass validation and then the kernel guard. Each rejected lease
    /// and refused route is logged and counted once per revision of its key.
    async fn believed_peers(&mut self) -> Vec<Lease> {
        let policy = self.policy();
        let read = match self.protected.clone() {
            Some(p) => Ok(p),
            None => {
                self.backend
                    .protected(&self.ext, &self.etcd_addresses)
                    .await
            }
        };
        let protected = match read {
            Ok(p) => {
                self.protected = Some(p.clone());
                p
            }
            Err(e) => {
                // Without the kernel's view the guard still has the addresses weftd knows.
                warn!(error = %e, "read this node's addresses and routes for the route guard");
                policy
                    .node
                    .addresses
                    .iter()
                    .map(|ip| guard::Protected {
                        prefix: Ipv4Network::from(*ip),
                        what: format!("address {ip} of this node"),
                    })
                    .collect()
            }
        };
        let mut policy = self.policy_with(&protected);
        let protected6 = if self.config.ipv6.is_some() {
            let protected6 = match self.protected6.clone() {
                Some(p) => p,
                None => match self.backend.protected6(&self.ext).await {
                    Ok(p) => {
                        self.protected6 = Some(p.clone());
                        p
                    }
                    Err(e) => {
                        warn!(error = %e, "read this node's IPv6 addresses and routes for the route guard");
                        self.ext
                            .public_ipv6
                            .map(|ip| guard::Protected6 {
                                prefix: ip.into(),
                                what: format!("address {ip} of this node"),
                            })
                            .into_iter()
                            .collect()
                    }
                },
            };
            with_ipv6_addresses(&mut policy, &protected6);
            Some(protected6)
        } else {
            None
        };
        let (verdicts, claims) = validate_leases_indexed(&policy, self.leases.values());
        self.claims = Some(claims);
        let mut current: HashMap<String, i64> = HashMap::new();
        let prefix = self.opts.etcd.prefix.clone();
        // An IPv6-only key is named by its IPv6 subnet (its IPv4 part is 0.0.0.0/0).
        let subnet_of = |key: &str| {
            let rest = key.strip_prefix(&crate::lease::subnets_prefix(&prefix))?;
            let dual = crate::subnet::parse_dual_subnet_key(rest).ok()?;
            Some(match dual.v6 {
                Some(v6) if dual.v4.prefix() == 0 => v6.to_string(),
                _ => dual.v4.to_string(),
            })
        };
        let mut rejected: Vec<RejectedPeer> = verdicts
            .rejected
            .iter()
            .map(|r| RejectedPeer {
                key: r.key.clone(),
                subnet: subnet_of(&r.key),
                by: RejectedBy::Validation,
                reason: r.reason.label().to_string(),
                why: r.reason.to_string(),
            })
            .collect();
        self.metrics
            .leases_rejected_now
            .store(verdicts.rejected.len() as u64, Ordering::Relaxed);
        for r in &verdicts.rejected {
            current.insert(r.key.clone(), r.mod_revision);
            if self.reported.get(&r.key) != Some(&r.mod_revision) {
                error!(key = %r.key, revision = r.mod_revision, reason = r.reason.label(),
                    "lease rejected, not programmed: {}", r.reason);
                self.metrics.count_rejected_lease(r.reason.label());
            }
        }
        let mut route_guard = RouteGuard::new(protected);
        if let Some(protected6) = protected6 {
            route_guard = route_guard.with_ipv6(protected6);
        }
        let peers: Vec<Lease> = verdicts
            .accepted
            .into_iter()
            .filter(|l| (l.subnet, l.ipv6_subnet) != (self.own.subnet, self.own.ipv6_subnet))
            .collect();
        // Both parts of each key: IPv6-only keys all share the IPv4 part 0.0.0.0/0.
        let subnets_prefix = crate::lease::subnets_prefix(&self.opts.etcd.prefix);
        let by_subnet: Vec<(crate::subnet::DualSubnet, (String, i64))> = self
            .leases
            .values()
            .filter_map(|raw| {
                let rest = raw.key.strip_prefix(&subnets_prefix)?;
                let dual = crate::subnet::parse_dual_subnet_key(rest).ok()?;
                Some((dual, (raw.key.clone(), raw.mod_revision)))
            })
            .collect();
        let (allowed, refused) = route_guard.filter(peers);
        for r in &refused {
            let (key, revision) = by_subnet
                .iter()
                .find(|(d, _)| match r.dst6 {
                    Some(v6) => d.v6 == Some(v6) && d.v4 == r.dst,
                    None => d.v4 == r.dst,
                })
                .map(|(_, k)| k.clone())
                .unwrap_or_default();
            current.insert(key.clone(), revision);
            if self.reported.get(&key) != Some(&revision) {
                error!(key, peer = %r.dst, peer_ipv6 = ?r.dst6, "route refused by the guard, not programmed: {r}");
                self.metrics.routes_refused.fetch_add(1, Ordering::Relaxed);
            }
            rejected.push(RejectedPeer {
                key,
                subnet: Some(
                    r.dst6
                        .map_or_else(|| r.dst.to_string(), |v6| v6.to_string()),
                ),
                by: RejectedBy::RouteGuard,
                reason: "route_overlap".to_string(),
                why: r.to_string(),
            });
        }
        self.reported = current;
        self.rejected = rejected;
        allowed
    }

    /// Writes subnet.env and applies the masquerade rules.
    async fn publish(&mut self) {
        if self.opts.ip_masq {
            let v4 = self
                .config
                .enable_ipv4
                .then_some((self.config.network, self.own.subnet));
            let v6 = self
                .config
                .ipv6
                .as_ref()
                .zip(self.own.ipv6_subnet)
                .map(|(cfg6, sn6)| (cfg6.network, sn6));
            if let Err(e) = masq::apply_families(v4, v6).await {
                error!(error = %e, "apply masquerade rules; retrying in {RECONCILE_RETRY:?}");
                self.retry_reconcile = Some(Instant::now() + RECONCILE_RETRY);
                return;
            }
        }
        let mut env = SubnetEnv::new(
            self.config.network,
            self.own.subnet,
            self.backend.mtu(),
            self.opts.ip_masq,
        );
        if let (Some(cfg6), Some(sn6)) = (&self.config.ipv6, self.own.ipv6_subnet) {
            env = env.with_ipv6(cfg6.network, sn6);
        }
        match env.write_atomic(&self.opts.subnet_file) {
            Ok(()) => {
                info!(subnet = %self.own.subnet, file = %self.opts.subnet_file.display(), public_ip = %self.ext.public_ip, "node ready");
                self.published = true;
                self.metrics.ready.store(true, Ordering::Relaxed);
                self.metrics
                    .own_lease_taken_over
                    .store(false, Ordering::Relaxed);
            }
            Err(e) => {
                error!(file = %self.opts.subnet_file.display(), error = %e, "write subnet.env; retrying in {RECONCILE_RETRY:?}");
                self.retry_reconcile = Some(Instant::now() + RECONCILE_RETRY);
            }
        }
    }
}

/// Publishes the static pods' records for `weftctl pods -A` (see [`crate::podview`]).
async fn publish_pods(etcd: EtcdOptions, node: String, pod_root: PathBuf, board: Arc<StatusBoard>) {
    let mut backoff = Backoff::new();
    loop {
        match EtcdStore::connect(&etcd).await {
            Ok(store) => return crate::podview::publish(store, node, pod_root, board).await,
            Err(e) => {
                let delay = backoff.next_delay();
                warn!(error = %e, retry_in = ?delay, "connect to etcd to publish the pods");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Hands the heap pages a full pass freed back to the system. The pass's dumps, validated
/// leases and netlink batches peak at tens of MiB at 10 000 peers, and glibc keeps freed pages
/// mapped (per arena) unless asked: the node's memory would stay at that peak.
pub(crate) fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes no pointers; it only returns free pages of the allocator's own
    // arenas to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Sleeps until `at`; never resolves for `None` (the select! guard keeps it from being polled).
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

async fn next_events(
    watch: &mut Option<impl NetworkWatch>,
) -> Result<Vec<NetworkEvent>, StoreError> {
    match watch {
        Some(w) => w.next_changes().await,
        None => std::future::pending().await,
    }
}

/// Connects to etcd, retrying with back-off until it answers.
async fn connect(opts: &EtcdOptions, metrics: &Metrics) -> EtcdStore {
    let mut backoff = Backoff::new();
    loop {
        match EtcdStore::connect(opts).await {
            Ok(store) => return store,
            Err(e) => {
                metrics.etcd_errors.fetch_add(1, Ordering::Relaxed);
                let delay = backoff.next_delay();
                warn!(endpoints = ?opts.endpoints, error = %e, retry_in = ?delay, "connect to etcd");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Waits until `<prefix>/config` holds a valid network config. Each distinct problem is logged
/// once, so a missing or broken config does not flood the log.
async fn wait_for_config(
    store: &EtcdStore,
    prefix: &str,
    metrics: &Metrics,
) -> (NetworkConfig, String) {
    let key = format!("{}/config", prefix.trim_end_matches('/'));
    let mut last_problem = String::new();
    loop {
        let problem = match store.network_config().await {
            Ok(Some(raw)) => match NetworkConfig::parse(&raw) {
                Ok(config) => return (config, raw),
                Err(e) => format!("invalid network config at {key}: {e}"),
            },
            Ok(None) => format!("waiting for the network config at {key}"),
            Err(e) => {
                metrics.etcd_errors.fetch_add(1, Ordering::Relaxed);
                format!("read the network config at {key}: {e}")
            }
        };
        if problem != last_problem {
            if problem.starts_with("waiting") {
                info!("{problem}");
            } else {
                error!("{problem}");
            }
            last_problem = problem;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The addresses of the etcd endpoints (host names resolved once, at start); the route guard
/// keeps every peer route off them.
async fn resolve_endpoints(endpoints: &[String]) -> Vec<Ipv4Addr> {
    let mut addresses = Vec::new();
    for url in endpoints {
        let Some(host) = endpoint_host(url) else {
            warn!(endpoint = %url, "etcd endpoint has no host; the route guard cannot protect it");
            continue;
        };
        match host.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(ip)) => addresses.push(ip),
            Ok(std::net::IpAddr::V6(_)) => {}
            // A resolver that does not answer must not hold up the start.
            Err(_) => match tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::lookup_host((host, 0)),
            )
            .await
            {
                Ok(Ok(found)) => addresses.extend(found.filter_map(|a| match a.ip() {
                    std::net::IpAddr::V4(ip) => Some(ip),
                    std::net::IpAddr::V6(_) => None,
                })),
                Ok(Err(e)) => {
                    warn!(endpoint = %url, error = %e, "resolve etcd endpoint; the route guard cannot protect it")
                }
                Err(_) => {
                    warn!(endpoint = %url, "resolve etcd endpoint: no answer within 5 s; the route guard cannot protect it")
                }
            },
        }
    }
    addresses.sort_unstable();
    addresses.dedup();
    addresses
}

/// Acquires our lease, retrying etcd failures with back-off; the first attempt decides on
/// `listed` when given (a listing just made), every retry lists again.
async fn acquire(
    store: &impl LeaseStore,
    config: &NetworkConfig,
    backend: &impl DataPath,
    (previous, previous6): (Option<Ipv4Network>, Option<Ipv6Network>),
    ttl: Duration,
    metrics: &Metrics,
    mut listed: Option<&NetworkSnapshot>,
) -> OwnLease {
    let attrs = backend.lease_attrs();
    let mut backoff = Backoff::new();
    loop {
        let attempt = match listed.take() {
            Some(listed) => {
                store
                    .acquire_listed(config, &attrs, (previous, previous6), ttl, listed)
                    .await
            }
            None => {
                store
                    .acquire_dual(config, &attrs, previous, previous6, ttl)
                    .await
            }
        };
        match attempt {
            Ok(own) => {
                let kind = if own.etcd_lease.is_some() {
                    "lease"
                } else {
                    "reservation"
                };
                info!(subnet = %own.subnet, ipv6_subnet = ?own.ipv6_subnet, public_ip = %own.attrs.public_ip, kind, "acquired subnet");
                return own;
            }
            Err(e) => {
                metrics.etcd_errors.fetch_add(1, Ordering::Relaxed);
                let delay = backoff.next_delay();
                warn!(error = %e, retry_in = ?delay, "acquire a subnet lease");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The subnets from a previous run's subnet.env, when they belong to the current network.
fn previous_subnets(
    path: &std::path::Path,
    config: &NetworkConfig,
) -> (Option<Ipv4Network>, Option<Ipv6Network>) {
    let Ok(env) = SubnetEnv::read(path) else {
        return (None, None);
    };
    let subnet = env.lease_subnet();
    let v4 =
        (env.network == config.network && subnet.prefix() == config.subnet_len).then_some(subnet);
    let v6 = env
        .ipv6_subnet
        .zip(env.ipv6_network)
        .filter(|(_, net6)| config.ipv6.as_ref().is_some_and(|c| c.network == *net6))
        .and_then(|(sn6, _)| Ipv6Network::new(sn6.network(), sn6.prefix()).ok());
    (v4, v6)
}

/// Pods on other nodes are reached by forwarding; like a CNI bridge, the agent turns it on in
/// its own network namespace.
fn enable_ip_forwarding() {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    match std::fs::read_to_string(PATH) {
        Ok(v) if v.trim() == "1" => {}
        _ => match std::fs::write(PATH, "1") {
            Ok(()) => info!("enabled net.ipv4.ip_forward"),
            Err(e) => {
                warn!(error = %e, "enable net.ipv4.ip_forward; pod traffic between nodes needs it")
            }
        },
    }
}

/// The IPv6 twin of [`enable_ip_forwarding`], for networks with IPv6.
fn enable_ipv6_forwarding() {
    const PATH: &str = "/proc/sys/net/ipv6/conf/all/forwarding";
    match std::fs::read_to_string(PATH) {
        Ok(v) if v.trim() == "1" => {}
        _ => match std::fs::write(PATH, "1") {
            Ok(()) => info!("enabled net.ipv6.conf.all.forwarding"),
            Err(e) => {
                warn!(error = %e, "enable net.ipv6.conf.all.forwarding; IPv6 pod traffic between nodes needs it")
            }
        },
    }
}

/// The subnets the lease key `key` names (`None` when it is not one under `subnets_prefix`).
fn key_subnets(subnets_prefix: &str, key: &str) -> Option<crate::subnet::DualSubnet> {
    key.strip_prefix(subnets_prefix)
        .and_then(|rest| crate::subnet::parse_dual_subnet_key(rest).ok())
}

/// How many lease keys name each node subnet, for [`Agent::changed_peers`].
#[derive(Debug, Default)]
struct NamedSubnets {
    v4: HashMap<Ipv4Network, usize>,
    v6: HashMap<ipnetwork::Ipv6Network, usize>,
}

impl NamedSubnets {
    /// Whether a key other than the one at hand names `subnet` (unless `0.0.0.0/0`) or
    /// `subnet6`; `present`: the key at hand is still in the table (counted here itself).
    fn elsewhere(
        &self,
        present: bool,
        subnet: Ipv4Network,
        subnet6: Option<ipnetwork::Ipv6Network>,
    ) -> bool {
        let own = usize::from(present);
        let v4 = subnet.prefix() != 0 && self.v4.get(&subnet).copied().unwrap_or(0) > own;
        let v6 = subnet6.is_some_and(|s| self.v6.get(&s).copied().unwrap_or(0) > own);
        v4 || v6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_retries_double_up_to_two_seconds() {
        let mut backoff = Backoff::new();
        let delays: Vec<u128> = (0..8).map(|_| backoff.next_delay().as_millis()).collect();
        // However long etcd was away, the next look comes within 2 s of its return.
        assert_eq!(delays, [200, 400, 800, 1600, 2000, 2000, 2000, 2000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(200));
    }
}
