//! The etcd edge of the node agent: network config, subnet leases and their watch, in Flannel's
//! etcd v3 layout (`<prefix>/config`, `<prefix>/subnets/<subnet key>`).
//!
//! Every request is bounded by a timeout; callers retry. Requests go to one endpoint at a time;
//! when that member stops answering (connection refused or lost, no answer in time, no leader),
//! the store fails over to the next endpoint, so a dead or cut-off member costs one failed request
//! instead of a share of every later one. Under etcd v3 a lease is renewed with a
//! keep-alive of its etcd lease (no write, no watch event); the key is re-put under a fresh etcd
//! lease only when its value or its TTL must change. A key without an etcd lease is a reservation:
//! it is honoured for its `PublicIP` and never handed to anybody else.

use std::fmt;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KeyValue, LeaseTimeToLiveOptions, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
    WatchStream,
};
use ipnetwork::{Ipv4Network, Ipv6Network};
use tracing::{debug, info, warn};

use crate::config::NetworkConfig;
use crate::lease::{config_key, dual_lease_key, parse_lease_key, subnets_prefix};
use crate::lease::{Lease, LeaseAttrs, LeaseError, RawLease};
use crate::subnet::{
    choose_free_ipv6_subnet, choose_free_subnet, parse_dual_subnet_key, TakenSubnets,
};

/// flanneld's default etcd endpoint.
pub const DEFAULT_ETCD_ENDPOINTS: &str = "http://127.0.0.1:2379";
/// flanneld's default etcd prefix.
pub const DEFAULT_ETCD_PREFIX: &str = "/coreos.com/network";
/// Bound on establishing a connection to one endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on every unary request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings detect a dead connection under a long-lived watch.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How many lost claim races `acquire` tolerates before giving up to its caller.
const MAX_CLAIM_ATTEMPTS: usize = 10;

/// How to reach etcd; the same settings as flanneld's `--etcd-*` flags.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    /// Client URLs, `http://` or `https://`.
    pub endpoints: Vec<String>,
    /// Key prefix of the network, `/coreos.com/network` by default.
    pub prefix: String,
    /// CA certificate (PEM) to verify the servers with.
    pub cafile: Option<PathBuf>,
    /// Client certificate (PEM).
    pub certfile: Option<PathBuf>,
    /// Client key (PEM).
    pub keyfile: Option<PathBuf>,
    /// User for etcd authentication.
    pub username: Option<String>,
    /// Password for etcd authentication; never printed.
    pub password: Option<String>,
    /// File holding the password (read at connect; one trailing newline ignored); never printed.
    pub password_file: Option<PathBuf>,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            endpoints: vec![DEFAULT_ETCD_ENDPOINTS.to_string()],
            prefix: DEFAULT_ETCD_PREFIX.to_string(),
            cafile: None,
            certfile: None,
            keyfile: None,
            username: None,
            password: None,
            password_file: None,
        }
    }
}

impl fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("cafile", &self.cafile)
            .field("certfile", &self.certfile)
            .field("keyfile", &self.keyfile)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_file", &self.password_file)
            .finish()
    }
}

/// Why our own lease is no longer ours; the daemon acquires again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseLostReason {
    /// The key is gone (deleted, or its etcd lease expired and etcd removed it).
    Deleted,
    /// The key now names another node.
    TakenBy(Ipv4Addr),
    /// The key's value is no longer a lease.
    Invalid(String),
}

impl fmt::Display for LeaseLostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseLostReason::Deleted => write!(f, "the key was deleted"),
            LeaseLostReason::TakenBy(ip) => write!(f, "the key now belongs to PublicIP {ip}"),
            LeaseLostReason::Invalid(e) => write!(f, "the key's value is not a lease: {e}"),
        }
    }
}

/// A failed etcd operation. Every variant names the operation and the key or object.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The options cannot work (no endpoint, certificate without key, ...).
    #[error("etcd options: {0}")]
    Options(String),
    /// A TLS file could not be read.
    #[error("etcd: read {what} {path}: {source}")]
    ReadFile {
        /// `CA file`, `certificate file` or `key file`.
        what: &'static str,
        /// The path given.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The client could not be set up.
    #[error("etcd connect to {endpoints}: {source}")]
    Connect {
        /// The endpoints, comma-separated.
        endpoints: String,
        /// The client's error.
        source: etcd_client::Error,
    },
    /// No answer in time (etcd down or unreachable).
    #[error("etcd {op} {key}: no answer within {after:?}")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The key or key prefix.
        key: String,
        /// The bound that passed.
        after: Duration,
    },
    /// etcd answered with an error.
    #[error("etcd {op} {key}: {source}")]
    Request {
        /// The operation.
        op: &'static str,
        /// The key or key prefix.
        key: String,
        /// The client's error.
        source: etcd_client::Error,
    },
    /// Our lease is gone or taken; acquire again.
    #[error("subnet lease {subnet}: {reason}")]
    LeaseLost {
        /// Our subnet.
        subnet: Ipv4Network,
        /// What happened to it.
        reason: LeaseLostReason,
    },
    /// The key changed between our read and our write; retry.
    #[error("etcd {op} {key}: the key changed concurrently, retry")]
    Conflict {
        /// The operation.
        op: &'static str,
        /// The key.
        key: String,
    },
    /// Every IPv6 subnet of the config is taken.
    #[error("no free IPv6 subnet in {network}: {taken} subnets taken")]
    NoFreeIpv6Subnet {
        /// `IPv6Network`.
        network: Ipv6Network,
        /// How many leases and reservations exist.
        taken: usize,
    },
    /// Every subnet of the config is taken.
    #[error("no free subnet in {network} between {min} and {max}: {taken} subnets taken")]
    NoFreeSubnet {
        /// `Network`.
        network: Ipv4Network,
        /// `SubnetMin`.
        min: Ipv4Addr,
        /// `SubnetMax`.
        max: Ipv4Addr,
        /// How many leases and reservations exist.
        taken: usize,
    },
    /// Other nodes won every subnet we tried to claim.
    #[error("claim subnet: lost the race for a free subnet {attempts} times in a row")]
    ClaimRaces {
        /// How many claims were tried.
        attempts: usize,
    },
    /// The watch start revision is older than etcd's compacted history: re-list and diff, then
    /// watch from the listed revision + 1.
    #[error("etcd watch: history before revision {revision} is compacted, re-list the leases")]
    Compacted {
        /// The oldest revision etcd still has.
        revision: i64,
    },
    /// The watch stream broke (connection lost, canceled by etcd); watch again from
    /// [`LeaseWatch::revision`] + 1.
    #[error("etcd watch {key}: {reason}")]
    WatchBroken {
        /// The watched prefix.
        key: String,
        /// What happened.
        reason: String,
    },
}

/// Our own subnet lease, as held by this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnLease {
    /// The node subnet (`0.0.0.0/0` in an IPv6-only network).
    pub subnet: Ipv4Network,
    /// The node's IPv6 subnet, when the network has IPv6.
    pub ipv6_subnet: Option<Ipv6Network>,
    /// The value stored under the key.
    pub attrs: LeaseAttrs,
    /// The etcd lease keeping the key; `None` = a reservation, which never expires.
    pub etcd_lease: Option<i64>,
    /// When the etcd lease expires unless renewed; `None` for a reservation.
    pub expires: Option<SystemTime>,
}

impl OwnLease {
    /// The lease's full etcd key (`<prefix>/subnets/10.244.1.0-24[&fd00:...-64]`).
    pub fn key(&self, prefix: &str) -> String {
        dual_lease_key(prefix, self.subnet, self.ipv6_subnet)
    }
}

/// All leases under `<prefix>/subnets/` at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSnapshot {
    /// The leases that parse (others are skipped with a warning).
    pub leases: Vec<Lease>,
    /// The store revision of the listing; watch from `revision + 1`.
    pub revision: i64,
}

/// The network config and every key under `<prefix>/subnets/`, unparsed, at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSnapshot {
    /// The raw JSON at `<prefix>/config`, `None` when the key does not exist.
    pub config: Option<String>,
    /// Every lease key with its value, as etcd holds it.
    pub leases: Vec<RawLease>,
    /// The store revision of the listing; watch from `revision + 1`.
    pub revision: i64,
}

/// A change under `<prefix>/`, unparsed (see [`LeaseWatch::next_changes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkEvent {
    /// A key under `<prefix>/subnets/` was created or changed.
    LeasePut(RawLease),
    /// A key under `<prefix>/subnets/` was deleted or expired.
    LeaseDeleted {
        /// The full key.
        key: String,
    },
    /// `<prefix>/config` was written (`Some(json)`) or deleted (`None`).
    Config(Option<String>),
}

/// A change under `<prefix>/subnets/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// A lease was created or its value or etcd lease changed.
    Put(Lease),
    /// A lease was deleted or expired.
    Delete {
        /// The subnet whose key went away.
        subnet: Ipv4Network,
        /// The lease before deletion, when etcd still had it and it parsed.
        prev: Option<Lease>,
    },
}

/// A connected etcd client bound to one network prefix. Cheap to clone.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    prefix: String,
    endpoints: Arc<Endpoints>,
}

/// Every configured endpoint and the one the client talks to. etcd-client balances over all
/// endpoints it is given and keeps sending a share of the requests to a member that is down
/// (its connection errors count as ready), so the client is given one endpoint and is moved to
/// the next when that one fails.
#[derive(Debug)]
struct Endpoints {
    all: Vec<String>,
    pinned: Mutex<usize>,
}

impl Endpoints {
    fn pinned(&self) -> usize {
        *self.pinned.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves the pin from `from` to the next endpoint; `None` if it was moved already (by a
    /// concurrent failure) or there is no other endpoint.
    fn advance(&self, from: usize) -> Option<usize> {
        let mut pinned = self.pinned.lock().unwrap_or_else(|p| p.into_inner());
        if *pinned != from || self.all.len() < 2 {
            return None;
        }
        *pinned = (from + 1) % self.all.len();
        Some(*pinned)
    }
}

/// Whether an error says the member itself is unusable (down, unreachable, without a leader),
/// as opposed to an answer about the request.
fn member_failed(error: &StoreError) -> bool {
    match error {
        StoreError::Timeout { .. } | StoreError::WatchBroken { .. } => true,
        StoreError::Request { source, .. } => match source {
            etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
            etcd_client::Error::GRpcStatus(status) => matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::Unknown
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
            ),
            _ => false,
        },
        _ => false,
    }
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Runs one etcd request under [`REQUEST_TIMEOUT`], naming the operation and key in errors.
pub(crate) async fn timed<T>(
    op: &'static str,
    key: &str,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Err(_) => Err(StoreError::Timeout {
            op,
            key: key.to_string(),
            after: REQUEST_TIMEOUT,
        }),
        Ok(Err(source)) => Err(StoreError::Request {
            op,
            key: key.to_string(),
            source,
        }),
        Ok(Ok(v)) => Ok(v),
    }
}

impl EtcdStore {
    /// [`timed`], failing over to the next endpoint when the member did not answer.
    async fn timed<T>(
        &self,
        op: &'static str,
        key: &str,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        let endpoint = self.endpoints.pinned();
        let result = timed(op, key, fut).await;
        if let Err(e) = &result {
            if member_failed(e) {
                self.fail_over(endpoint, e).await;
            }
        }
        result
    }

    /// Points the client at the endpoint after `from` (unless that happened already).
    async fn fail_over(&self, from: usize, error: &StoreError) {
        let Some(to) = self.endpoints.advance(from) else {
            return;
        };
        let (old, new) = (&self.endpoints.all[from], &self.endpoints.all[to]);
        warn!(from = %old, to = %new, error = %error, "etcd endpoint failed; switching to the next one");
        if let Err(e) = self.client.add_endpoint(new).await {
            warn!(endpoint = %new, error = %e, "add etcd endpoint");
        }
        if let Err(e) = self.client.remove_endpoint(old).await {
            warn!(endpoint = %old, error = %e, "remove etcd endpoint");
        }
    }
}

/// A client of the single endpoint `endpoint`, under the connect timeout.
async fn connect_one(endpoint: &str, options: ConnectOptions) -> Result<Client, StoreError> {
    let connecting = Client::connect([endpoint], Some(options));
    match tokio::time::timeout(CONNECT_TIMEOUT * 2, connecting).await {
        Err(_) => Err(StoreError::Timeout {
            op: "connect",
            key: endpoint.to_string(),
            after: CONNECT_TIMEOUT * 2,
        }),
        Ok(Err(source)) => Err(StoreError::Connect {
            endpoints: endpoint.to_string(),
            source,
        }),
        Ok(Ok(client)) => Ok(client),
    }
}

fn read_pem(what: &'static str, path: &PathBuf) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|source| StoreError::ReadFile {
        what,
        path: path.clone(),
        source,
    })
}

/// The password in `path`, without the newline an editor or `echo` leaves at its end.
fn read_password_file(path: &PathBuf) -> Result<String, StoreError> {
    let text = std::fs::read_to_string(path).map_err(|source| StoreError::ReadFile {
        what: "password file",
        path: path.clone(),
        source,
    })?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    Ok(text.strip_suffix('\r').unwrap_or(text).to_string())
}

/// The host of an etcd client URL: `https://etcd-1:2379` -> `etcd-1`,
/// `http://[fd00::1]:2379` -> `fd00::1`; `None` when there is none.
pub fn endpoint_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split_once(']')?.0,
        None => authority.split(':').next()?,
    };
    (!host.is_empty()).then_some(host)
}

fn ttl_seconds(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(1)
}

fn expiry_after(seconds: i64) -> SystemTime {
    SystemTime::now() + Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

/// One key-value of `<prefix>/subnets/` as it is, for [`crate::validate`].
/// Keys per Range request when listing a prefix.
pub const LIST_PAGE: i64 = 500;

/// The end of the key range holding every key that starts with `prefix` (etcd's prefix rule:
/// the last byte below 0xff incremented, the rest cut).
fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): every key from `prefix` on.
    vec![0]
}

fn raw_from_kv(kv: &KeyValue) -> RawLease {
    RawLease {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        etcd_lease: kv.lease(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    }
}

/// [`raw_from_kv`] for a key-value the caller owns: the raw lease keeps etcd's decoded
/// buffers instead of copies, so a listing of 10 000 leases leaves no freed originals
/// interleaved with the table weftd keeps.
fn raw_from_owned_kv(kv: KeyValue) -> RawLease {
    let (etcd_lease, create_revision, mod_revision) =
        (kv.lease(), kv.create_revision(), kv.mod_revision());
    let (key, value) = kv.into_key_value();
    RawLease {
        key: String::from_utf8(key)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        value,
        etcd_lease,
        create_revision,
        mod_revision,
    }
}

impl LeaseSnapshot {
    /// The leases of a network listing that parse (others skipped with a warning naming the
    /// key, as [`EtcdStore::list_leases`] does), at the listing's revision.
    pub fn of_network(prefix: &str, listed: &NetworkSnapshot) -> Self {
        let leases = listed
            .leases
            .iter()
            .filter_map(|raw| match lease_from_raw(prefix, raw) {
                Ok(lease) => Some(lease),
                Err(e) => {
                    warn!(key = %raw.key, error = %e, "skipping a lease that does not parse");
                    None
                }
            })
            .collect();
        LeaseSnapshot {
            leases,
            revision: listed.revision,
        }
    }
}

/// Parses one listed lease of `<prefix>/subnets/` (see [`lease_from_kv`]).
fn lease_from_raw(prefix: &str, raw: &RawLease) -> Result<Lease, LeaseError> {
    let dual = parse_dual_subnet_key(crate::lease::subnet_key_part(prefix, &raw.key)?)?;
    let attrs = LeaseAttrs::from_json(&raw.key, &raw.value)?;
    Ok(Lease {
        ipv6_subnet: dual.v6,
        subnet: dual.v4,
        attrs,
        etcd_lease: (raw.etcd_lease != 0).then_some(raw.etcd_lease),
        mod_revision: raw.mod_revision,
    })
}

/// Parses one key-value of `<prefix>/subnets/` into a lease.
fn lease_from_kv(prefix: &str, kv: &KeyValue) -> Result<Lease, LeaseError> {
    let key = String::from_utf8_lossy(kv.key());
    let dual = parse_dual_subnet_key(crate::lease::subnet_key_part(prefix, &key)?)?;
    let attrs = LeaseAttrs::from_json(&key, kv.value())?;
    Ok(Lease {
        ipv6_subnet: dual.v6,
        subnet: dual.v4,
        attrs,
        etcd_lease: (kv.lease() != 0).then_some(kv.lease()),
        mod_revision: kv.mod_revision(),
    })
}

impl EtcdStore {
    /// Sets up the client (TLS and authentication as configured). The connection itself is
    /// made lazily, so an etcd that is down shows up as a [`StoreError::Timeout`] of the first
    /// request; with a user name, authentication happens here, under the connect timeout.
    pub async fn connect(opts: &EtcdOptions) -> Result<EtcdStore, StoreError> {
        if opts.endpoints.is_empty() {
            return Err(StoreError::Options("no endpoint given".into()));
        }
        let mut co = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
            // etcd answers pings on a connection without streams with GOAWAY (too_many_pings).
            .with_keep_alive_while_idle(false);
        if opts.cafile.is_some() || opts.certfile.is_some() || opts.keyfile.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &opts.cafile {
                tls = tls.ca_certificate(Certificate::from_pem(read_pem("CA file", ca)?));
            }
            match (&opts.certfile, &opts.keyfile) {
                (Some(cert), Some(key)) => {
                    tls = tls.identity(Identity::from_pem(
                        read_pem("certificate file", cert)?,
                        read_pem("key file", key)?,
                    ));
                }
                (None, None) => {}
                _ => {
                    return Err(StoreError::Options(
                        "--etcd-certfile and --etcd-keyfile must be given together".into(),
                    ))
                }
            }
            co = co.with_tls(tls);
        }
        let password = match &opts.password_file {
            Some(path) => Some(read_password_file(path)?),
            None => opts.password.clone(),
        };
        match (&opts.username, &password) {
            (Some(user), password) => {
                co = co
                    .with_user(user.clone(), password.clone().unwrap_or_default())
                    .with_auto_token_refresh(true);
            }
            (None, Some(_)) => {
                return Err(StoreError::Options(
                    "a password was given without --etcd-username".into(),
                ))
            }
            (None, None) => {}
        }
        co = co.with_require_leader(true);
        // One endpoint at a time (see [`Endpoints`]); with authentication connecting asks the
        // member for a token, so a member that is down at start is skipped.
        let mut last = None;
        for (i, endpoint) in opts.endpoints.iter().enumerate() {
            match connect_one(endpoint, co.clone()).await {
                Ok(client) => {
                    return Ok(EtcdStore {
                        client,
                        prefix: opts.prefix.trim_end_matches('/').to_string(),
                        endpoints: Arc::new(Endpoints {
                            all: opts.endpoints.clone(),
                            pinned: Mutex::new(i),
                        }),
                    })
                }
                Err(e) => {
                    warn!(endpoint = %endpoint, error = %e, "connect to etcd endpoint");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| StoreError::Options("no endpoint given".into())))
    }

    /// The network prefix, without a trailing `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The raw JSON at `<prefix>/config`, `None` when the key does not exist.
    pub async fn network_config(&self) -> Result<Option<String>, StoreError> {
        let key = config_key(&self.prefix);
        let resp = self
            .timed(
                "get network config",
                &key,
                self.client.kv_client().get(key.clone(), None),
            )
            .await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// Every lease under `<prefix>/subnets/`. Keys or values that do not parse are skipped with a
    /// warning naming the key: a bad lease must not stop the node.
    pub async fn list_leases(&self) -> Result<LeaseSnapshot, StoreError> {
        let prefix = subnets_prefix(&self.prefix);
        let mut leases = Vec::new();
        let revision = self
            .list_pages("list leases", &prefix, |kv| {
                match lease_from_kv(&self.prefix, &kv) {
                    Ok(lease) => leases.push(lease),
                    Err(e) => {
                        warn!(key = %String::from_utf8_lossy(kv.key()), error = %e, "skipping a lease that does not parse");
                    }
                }
            })
            .await?;
        Ok(LeaseSnapshot { leases, revision })
    }

    /// The network config and every lease key, unparsed, as of one revision.
    pub async fn list_network(&self) -> Result<NetworkSnapshot, StoreError> {
        let prefix = format!("{}/", self.prefix);
        let config_key = config_key(&self.prefix);
        let subnets = subnets_prefix(&self.prefix);
        let mut config = None;
        let mut leases = Vec::new();
        let revision = self
            .list_pages("list network", &prefix, |kv| {
                if kv.key() == config_key.as_bytes() {
                    config = Some(String::from_utf8_lossy(kv.value()).into_owned());
                } else if kv.key().starts_with(subnets.as_bytes()) {
                    leases.push(raw_from_owned_kv(kv));
                }
            })
            .await?;
        Ok(NetworkSnapshot {
            config,
            leases,
            revision,
        })
    }

    /// Reads every key under `prefix` in pages of [`LIST_PAGE`] keys, all at the revision of
    /// the first page, handing each to `each`; returns that revision. Pages keep both etcd's
    /// responses and weftd's receive buffers small at 10 000 leases (one Range of them all is
    /// several megabytes, decoded whole).
    async fn list_pages(
        &self,
        op: &'static str,
        prefix: &str,
        mut each: impl FnMut(KeyValue),
    ) -> Result<i64, StoreError> {
        let end = prefix_range_end(prefix.as_bytes());
        let mut from = prefix.as_bytes().to_vec();
        let mut revision = 0;
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let mut resp = self
                .timed(
                    op,
                    prefix,
                    self.client.kv_client().get(from.clone(), Some(options)),
                )
                .await?;
            if revision == 0 {
                revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            let more = resp.more();
            let kvs = resp.take_kvs();
            let next = kvs.last().filter(|_| more).map(|last| {
                let mut next = last.key().to_vec();
                // The next key after `last`.
                next.push(0);
                next
            });
            kvs.into_iter().for_each(&mut each);
            match next {
                Some(next) => from = next,
                None => return Ok(revision),
            }
        }
    }

    /// When the etcd lease `id` expires (for display); `None` when it has already expired.
    pub async fn lease_expiry(&self, id: i64) -> Result<Option<SystemTime>, StoreError> {
        let resp = self
            .timed(
                "read lease TTL",
                &format!("lease {id:x}"),
                self.client.lease_client().time_to_live(id, None),
            )
            .await?;
        Ok((resp.ttl() >= 0).then(|| expiry_after(resp.ttl())))
    }

    /// Acquires this node's subnet lease: the lease whose `PublicIP` is ours (its value updated
    /// if `attrs` changed, a reservation kept a reservation); else `previous` if it is inside the
    /// config's range and free; else a random free subnet. A claim is a transaction on the key
    /// not existing; a lost race picks again, at most [`MAX_CLAIM_ATTEMPTS`] times.
    pub async fn acquire(
        &self,
        cfg: &NetworkConfig,
        attrs: &LeaseAttrs,
        previous: Option<Ipv4Network>,
        ttl: Duration,
    ) -> Result<OwnLease, StoreError> {
        self.acquire_dual(cfg, attrs, previous, None, ttl).await
    }

    /// [`EtcdStore::acquire`] with the previous IPv6 subnet too (from subnet.env's
    /// `FLANNEL_IPV6_SUBNET`): asked for when it fits the config and is free, so a node whose
    /// lease expired keeps its pods' IPv6 addresses as it keeps their IPv4 ones.
    pub async fn acquire_dual(
        &self,
        cfg: &NetworkConfig,
        attrs: &LeaseAttrs,
        previous: Option<Ipv4Network>,
        previous6: Option<Ipv6Network>,
        ttl: Duration,
    ) -> Result<OwnLease, StoreError> {
        self.acquire_from(cfg, attrs, (previous, previous6), ttl, None)
            .await
    }

    /// [`EtcdStore::acquire_dual`] deciding its first attempt on `listed`, a listing of the
    /// network the caller has just made (weftd's start lists once, not once to claim and once
    /// for its table); a lost race lists again.
    pub async fn acquire_listed(
        &self,
        cfg: &NetworkConfig,
        attrs: &LeaseAttrs,
        previous: (Option<Ipv4Network>, Option<Ipv6Network>),
        ttl: Duration,
        listed: &NetworkSnapshot,
    ) -> Result<OwnLease, StoreError> {
        let snap = LeaseSnapshot::of_network(&self.prefix, listed);
        self.acquire_from(cfg, attrs, previous, ttl, Some(snap))
            .await
    }

    async fn acquire_from(
        &self,
        cfg: &NetworkConfig,
        attrs: &LeaseAttrs,
        (previous, previous6): (Option<Ipv4Network>, Option<Ipv6Network>),
        ttl: Duration,
        mut listed: Option<LeaseSnapshot>,
    ) -> Result<OwnLease, StoreError> {
        // Subnets whose claim failed although the listing showed them free (another node was
        // faster, or the key holds a value that does not parse): never tried twice.
        let mut lost: Vec<Ipv4Network> = Vec::new();
        let mut lost6: Vec<Ipv6Network> = Vec::new();
        for attempt in 1..=MAX_CLAIM_ATTEMPTS {
            let snap = match listed.take() {
                Some(snap) => snap,
                None => self.list_leases().await?,
            };
            let mut mine: Vec<&Lease> = snap
                .leases
                .iter()
                .filter(|l| l.attrs.same_node(attrs))
                .collect();
            // A reservation wins over a leased key; then the lowest subnet, to be deterministic.
            mine.sort_by_key(|l| (!l.is_reservation(), l.subnet, l.ipv6_subnet));
            let fits = |l: &Lease| cfg.fits_lease(&l.subnet, l.ipv6_subnet.as_ref());
            if let Some(own) = mine.iter().find(|l| fits(l)) {
                match self.reuse(own, attrs, ttl).await {
                    Ok(lease) => return Ok(lease),
                    Err(e @ (StoreError::Conflict { .. } | StoreError::LeaseLost { .. })) => {
                        debug!(subnet = %own.subnet, error = %e, attempt, "own lease changed while reusing it, listing again");
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let mut dropped = Vec::new();
            let mut dropped6 = Vec::new();
            for stale in mine.iter().filter(|l| !fits(l)) {
                if stale.is_reservation() {
                    warn!(subnet = %stale.subnet, public_ip = %attrs.public_ip, "reservation of this node is outside the network config, ignoring it");
                    continue;
                }
                info!(subnet = %stale.subnet, public_ip = %attrs.public_ip, "lease of this node is outside the network config, deleting it");
                self.delete_if_unchanged(stale).await?;
                dropped.push(stale.subnet);
                dropped6.extend(stale.ipv6_subnet);
            }
            // A key for a subnet larger than SubnetLen (a whole-Network lease, say) is never
            // believed by validation, so it must not block the subnets inside it either.
            let taken = TakenSubnets::new(
                snap.leases
                    .iter()
                    .map(|l| &l.subnet)
                    .filter(|s| s.prefix() >= cfg.subnet_len && !dropped.contains(s))
                    .chain(&lost),
            );
            let wanted = previous.filter(|p| cfg.contains_subnet(p) && !taken.overlaps(p));
            let candidate = match wanted {
                // An IPv6-only network keys every lease `0.0.0.0-0&...`, as Flannel does.
                _ if !cfg.enable_ipv4 => cfg.network,
                Some(p) => p,
                None => {
                    let mut rng = rand::rng();
                    choose_free_subnet(cfg, &taken, &mut rng).ok_or(StoreError::NoFreeSubnet {
                        network: cfg.network,
                        min: cfg.subnet_min,
                        max: cfg.subnet_max,
                        taken: snap.leases.len(),
                    })?
                }
            };
            let candidate6 = match &cfg.ipv6 {
                None => None,
                Some(cfg6) => {
                    let taken6: Vec<Ipv6Network> = snap
                        .leases
                        .iter()
                        .filter_map(|l| l.ipv6_subnet)
                        .filter(|s| s.prefix() >= cfg6.subnet_len && !dropped6.contains(s))
                        .chain(lost6.iter().copied())
                        .collect();
                    let free = |p: &Ipv6Network| {
                        cfg6.contains_subnet(p)
                            && !taken6
                                .iter()
                                .any(|t| t.contains(p.network()) || p.contains(t.network()))
                    };
                    match previous6.filter(free) {
                        Some(p) => Some(p),
                        None => {
                            let mut rng = rand::rng();
                            Some(choose_free_ipv6_subnet(cfg6, &taken6, &mut rng).ok_or(
                                StoreError::NoFreeIpv6Subnet {
                                    network: cfg6.network,
                                    taken: taken6.len(),
                                },
                            )?)
                        }
                    }
                }
            };
            if let Some(lease) = self.claim(candidate, candidate6, attrs, ttl).await? {
                // A dual-stack key names two subnets, and the claim only checked that this
                // exact key was free: a node racing us may hold either subnet under another
                // key. The older claim keeps it; the newer gives its key back and picks again.
                if cfg.enable_ipv4 && candidate6.is_some() {
                    if let Some(older) = self.older_overlapping_claim(&lease).await? {
                        info!(subnet = %candidate, ipv6_subnet = ?candidate6, older = %older, attempt, "a racing node claimed one of the subnets first, picking again");
                        if let Some(id) = lease.etcd_lease {
                            self.revoke_quietly(id, &lease.key(&self.prefix)).await;
                        }
                        lost.push(candidate);
                        lost6.extend(candidate6);
                        continue;
                    }
                }
                info!(subnet = %candidate, ipv6_subnet = ?candidate6, public_ip = %attrs.public_ip, "claimed a new subnet lease");
                return Ok(lease);
            }
            debug!(subnet = %candidate, ipv6_subnet = ?candidate6, attempt, "the subnet's key exists already, picking again");
            lost.push(candidate);
            lost6.extend(candidate6);
        }
        Err(StoreError::ClaimRaces {
            attempts: MAX_CLAIM_ATTEMPTS,
        })
    }

    /// The key of a lease created before `own`'s key whose IPv4 or IPv6 subnet overlaps one
    /// of `own`'s, if any (what validation would judge `own` to lose to).
    async fn older_overlapping_claim(&self, own: &OwnLease) -> Result<Option<String>, StoreError> {
        let own_key = own.key(&self.prefix);
        let mut own_revision = None;
        let mut others: Vec<(String, i64, Lease)> = Vec::new();
        self.list_pages("check claim", &subnets_prefix(&self.prefix), |kv| {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            if key == own_key {
                own_revision = Some(kv.create_revision());
            } else if let Ok(lease) = lease_from_kv(&self.prefix, &kv) {
                others.push((key, kv.create_revision(), lease));
            }
        })
        .await?;
        // Our key already gone (revoked, expired): nothing of ours to defend.
        let Some(mine) = own_revision else {
            return Ok(None);
        };
        let overlaps = |l: &Lease| {
            (l.has_ipv4()
                && (l.subnet.contains(own.subnet.ip()) || own.subnet.contains(l.subnet.ip())))
                || matches!((l.ipv6_subnet, own.ipv6_subnet), (Some(a), Some(b))
                    if a.contains(b.network()) || b.contains(a.network()))
        };
        Ok(others
            .into_iter()
            .filter(|(_, created, lease)| *created < mine && overlaps(lease))
            .map(|(key, _, _)| key)
            .next())
    }

    /// Extends our lease. A reservation needs nothing. Under etcd v3 the etcd lease is kept
    /// alive; it is replaced (and the key re-put) only if the key's value differs from ours,
    /// `ttl` differs from the lease's granted TTL, or it has just expired. A key that is gone or
    /// names another node gives [`StoreError::LeaseLost`]; [`StoreError::Conflict`] means the key
    /// changed during the call (retry).
    pub async fn renew(&self, own: &OwnLease, ttl: Duration) -> Result<OwnLease, StoreError> {
        if own.etcd_lease.is_none() {
            return Ok(own.clone());
        }
        let key = own.key(&self.prefix);
        let lost = |reason| StoreError::LeaseLost {
            subnet: own.subnet,
            reason,
        };
        let resp = self
            .timed(
                "get own lease",
                &key,
                self.client.kv_client().get(key.clone(), None),
            )
            .await?;
        let Some(kv) = resp.kvs().first() else {
            return Err(lost(LeaseLostReason::Deleted));
        };
        let stored = LeaseAttrs::from_json(&key, kv.value())
            .map_err(|e| lost(LeaseLostReason::Invalid(e.to_string())))?;
        if !stored.same_node(&own.attrs) {
            return Err(lost(LeaseLostReason::TakenBy(stored.public_ip)));
        }
        if kv.lease() == 0 {
            info!(subnet = %own.subnet, "own lease became a reservation");
            return Ok(OwnLease {
                etcd_lease: None,
                expires: None,
                ..own.clone()
            });
        }
        let current = Lease {
            ipv6_subnet: own.ipv6_subnet,
            subnet: own.subnet,
            attrs: stored,
            etcd_lease: Some(kv.lease()),
            mod_revision: kv.mod_revision(),
        };
        self.refresh(&current, kv.lease(), &own.attrs, ttl).await
    }

    /// Watches `<prefix>/subnets/` from `from_revision` (inclusive), with previous values.
    pub async fn watch(&self, from_revision: i64) -> Result<LeaseWatch, StoreError> {
        let opts = WatchOptions::new().with_prev_key();
        self.watch_prefix(subnets_prefix(&self.prefix), opts, from_revision)
            .await
    }

    /// Watches all of `<prefix>/` (the config and the leases) from `from_revision` (inclusive);
    /// read with [`LeaseWatch::next_changes`].
    pub async fn watch_network(&self, from_revision: i64) -> Result<LeaseWatch, StoreError> {
        let key = format!("{}/", self.prefix);
        self.watch_prefix(key, WatchOptions::new(), from_revision)
            .await
    }

    /// Watches every key under `key` from `from_revision` (inclusive), with progress notifies,
    /// on the endpoint in use now.
    async fn watch_prefix(
        &self,
        key: String,
        opts: WatchOptions,
        from_revision: i64,
    ) -> Result<LeaseWatch, StoreError> {
        let opts = opts
            .with_prefix()
            .with_start_revision(from_revision)
            .with_progress_notify();
        let endpoint = self.endpoints.pinned();
        let stream = self
            .timed(
                "watch",
                &key,
                self.client.watch_client().watch(key.clone(), Some(opts)),
            )
            .await?;
        Ok(LeaseWatch {
            stream,
            prefix: self.prefix.clone(),
            key,
            revision: from_revision.saturating_sub(1),
            store: self.clone(),
            endpoint,
        })
    }

    /// Keeps or replaces the etcd lease of a key that is ours.
    async fn reuse(
        &self,
        own: &Lease,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<OwnLease, StoreError> {
        match own.etcd_lease {
            None => {
                if own.attrs != *attrs {
                    let key = dual_lease_key(&self.prefix, own.subnet, own.ipv6_subnet);
                    self.put_if_unchanged("update reservation", &key, own.mod_revision, attrs, 0)
                        .await?;
                }
                info!(subnet = %own.subnet, "reusing this node's reservation");
                Ok(OwnLease {
                    subnet: own.subnet,
                    ipv6_subnet: own.ipv6_subnet,
                    attrs: attrs.clone(),
                    etcd_lease: None,
                    expires: None,
                })
            }
            Some(id) => {
                info!(subnet = %own.subnet, "reusing this node's lease");
                self.refresh(own, id, attrs, ttl).await
            }
        }
    }

    /// Renews the etcd lease `id` of `current` with a keep-alive, or, if the value or TTL must
    /// change or the etcd lease has expired, re-puts the key under a new etcd lease (guarded by
    /// the key's mod revision; a key changed or removed meanwhile gives [`StoreError::Conflict`]).
    async fn refresh(
        &self,
        current: &Lease,
        id: i64,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<OwnLease, StoreError> {
        let key = dual_lease_key(&self.prefix, current.subnet, current.ipv6_subnet);
        let info = self
            .timed(
                "read lease TTL",
                &key,
                self.client
                    .lease_client()
                    .time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys())),
            )
            .await?;
        // An expired etcd lease whose key etcd has not removed yet is replaced below: the
        // re-put wins the key back before other nodes ever see it go.
        let alive = info.ttl() > 0;
        let ttl_s = ttl_seconds(ttl);
        if alive && current.attrs == *attrs && info.granted_ttl() == ttl_s {
            match self
                .timed(
                    "keep lease alive",
                    &key,
                    self.client.lease_client().keep_alive(id),
                )
                .await
            {
                Ok(_) => {
                    return Ok(OwnLease {
                        subnet: current.subnet,
                        ipv6_subnet: current.ipv6_subnet,
                        attrs: attrs.clone(),
                        etcd_lease: Some(id),
                        expires: Some(expiry_after(info.granted_ttl())),
                    })
                }
                Err(StoreError::Request {
                    source: etcd_client::Error::LeaseKeepAliveError(_),
                    ..
                }) => debug!(key, "etcd lease expired just now, replacing it"),
                Err(e) => return Err(e),
            }
        }
        let grant = self
            .timed(
                "grant lease",
                &key,
                self.client.lease_client().grant(ttl_s, None),
            )
            .await?;
        if let Err(e) = self
            .put_if_unchanged(
                "re-put lease",
                &key,
                current.mod_revision,
                attrs,
                grant.id(),
            )
            .await
        {
            self.revoke_quietly(grant.id(), &key).await;
            return Err(e);
        }
        // The old etcd lease now holds nothing if it only held this key: drop it.
        if alive && info.keys() == [key.as_bytes()] {
            self.revoke_quietly(id, &key).await;
        }
        Ok(OwnLease {
            subnet: current.subnet,
            ipv6_subnet: current.ipv6_subnet,
            attrs: attrs.clone(),
            etcd_lease: Some(grant.id()),
            expires: Some(expiry_after(grant.ttl())),
        })
    }

    /// Claims a free subnet: put under a fresh etcd lease if the key does not exist.
    /// `Ok(None)` when another node got there first.
    async fn claim(
        &self,
        subnet: Ipv4Network,
        ipv6_subnet: Option<Ipv6Network>,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<Option<OwnLease>, StoreError> {
        let key = dual_lease_key(&self.prefix, subnet, ipv6_subnet);
        let grant = self
            .timed(
                "grant lease",
                &key,
                self.client.lease_client().grant(ttl_seconds(ttl), None),
            )
            .await?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                attrs.to_json(),
                Some(PutOptions::new().with_lease(grant.id())),
            )]);
        match self
            .timed("claim subnet", &key, self.client.kv_client().txn(txn))
            .await
        {
            Ok(resp) if resp.succeeded() => Ok(Some(OwnLease {
                subnet,
                ipv6_subnet,
                attrs: attrs.clone(),
                etcd_lease: Some(grant.id()),
                expires: Some(expiry_after(grant.ttl())),
            })),
            Ok(_) => {
                self.revoke_quietly(grant.id(), &key).await;
                Ok(None)
            }
            Err(e) => {
                // The claim may have landed before the error; revoking undoes it either way.
                self.revoke_quietly(grant.id(), &key).await;
                Err(e)
            }
        }
    }

    /// Puts `attrs` at `key` with etcd lease `lease_id` (0 = none) if the key's mod revision is
    /// still `mod_revision`.
    async fn put_if_unchanged(
        &self,
        op: &'static str,
        key: &str,
        mod_revision: i64,
        attrs: &LeaseAttrs,
        lease_id: i64,
    ) -> Result<(), StoreError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.to_string(),
                CompareOp::Equal,
                mod_revision,
            )])
            .and_then([TxnOp::put(
                key.to_string(),
                attrs.to_json(),
                Some(PutOptions::new().with_lease(lease_id)),
            )]);
        let resp = self
            .timed(op, key, self.client.kv_client().txn(txn))
            .await?;
        if resp.succeeded() {
            Ok(())
        } else {
            Err(StoreError::Conflict {
                op,
                key: key.to_string(),
            })
        }
    }

    /// Deletes a lease unless it changed since it was listed.
    async fn delete_if_unchanged(&self, lease: &Lease) -> Result<(), StoreError> {
        let key = dual_lease_key(&self.prefix, lease.subnet, lease.ipv6_subnet);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                lease.mod_revision,
            )])
            .and_then([TxnOp::delete(key.clone(), None)]);
        self.timed("delete stale lease", &key, self.client.kv_client().txn(txn))
            .await?;
        Ok(())
    }

    /// Revokes an etcd lease we no longer need; failure only costs a lease that expires anyway.
    async fn revoke_quietly(&self, id: i64, key: &str) {
        if let Err(e) = self
            .timed("revoke lease", key, self.client.lease_client().revoke(id))
            .await
        {
            warn!(key, lease = %format!("{id:x}"), error = %e, "could not revoke an unused etcd lease, it will expire");
        }
    }
}

/// A watch of `<prefix>/subnets/`.
pub struct LeaseWatch {
    stream: WatchStream,
    prefix: String,
    key: String,
    revision: i64,
    /// To fail over when the member serving the watch breaks it.
    store: EtcdStore,
    endpoint: usize,
}

impl fmt::Debug for LeaseWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseWatch")
            .field("key", &self.key)
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

impl LeaseWatch {
    /// The revision up to which every event has been delivered: after a
    /// [`StoreError::WatchBroken`], watch again from `revision() + 1`.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The next batch of events (never empty). Waits as long as nothing changes; a lost
    /// connection is detected by HTTP/2 keep-alive and reported as [`StoreError::WatchBroken`];
    /// a start revision older than etcd's history gives [`StoreError::Compacted`].
    pub async fn next(&mut self) -> Result<Vec<LeaseEvent>, StoreError> {
        let subnets = subnets_prefix(&self.prefix);
        loop {
            let raw = self.next_raw().await?;
            let mut batch = Vec::with_capacity(raw.len());
            for (kind, kv, prev) in &raw {
                if !kv.key().starts_with(subnets.as_bytes()) {
                    continue;
                }
                match self.event(*kind, kv, prev.as_ref()) {
                    Ok(e) => batch.push(e),
                    Err(e) => {
                        warn!(key = %String::from_utf8_lossy(kv.key()), error = %e, "skipping a lease event that does not parse")
                    }
                }
            }
            if !batch.is_empty() {
                return Ok(batch);
            }
        }
    }

    /// The next batch of changes of the config and the lease keys, unparsed (never empty);
    /// errors as [`LeaseWatch::next`]. Keys under `<prefix>/` that are neither are skipped.
    pub async fn next_changes(&mut self) -> Result<Vec<NetworkEvent>, StoreError> {
        let subnets = subnets_prefix(&self.prefix);
        let config = config_key(&self.prefix);
        loop {
            let raw = self.next_raw().await?;
            let mut batch = Vec::with_capacity(raw.len());
            for (kind, kv, _) in &raw {
                let key = kv.key();
                if key == config.as_bytes() {
                    batch.push(NetworkEvent::Config(match kind {
                        EventType::Put => Some(String::from_utf8_lossy(kv.value()).into_owned()),
                        EventType::Delete => None,
                    }));
                } else if key.starts_with(subnets.as_bytes()) {
                    batch.push(match kind {
                        EventType::Put => NetworkEvent::LeasePut(raw_from_kv(kv)),
                        EventType::Delete => NetworkEvent::LeaseDeleted {
                            key: String::from_utf8_lossy(key).into_owned(),
                        },
                    });
                }
            }
            if !batch.is_empty() {
                return Ok(batch);
            }
        }
    }

    /// The next non-empty batch of watch events as etcd sent them.
    async fn next_raw(
        &mut self,
    ) -> Result<Vec<(EventType, KeyValue, Option<KeyValue>)>, StoreError> {
        loop {
            let resp = match self.stream.message().await {
                Ok(Some(resp)) => resp,
                Ok(None) => return Err(self.broken("the stream was closed".into()).await),
                Err(e) => return Err(self.broken(e.to_string()).await),
            };
            if resp.compact_revision() > 0 {
                return Err(StoreError::Compacted {
                    revision: resp.compact_revision(),
                });
            }
            if resp.canceled() {
                let reason = format!("canceled by etcd: {}", resp.cancel_reason());
                return Err(self.broken(reason).await);
            }
            if resp.events().is_empty() {
                // Creation and progress notifications: with no event pending, the header
                // revision is fully delivered.
                if !resp.created() {
                    if let Some(h) = resp.header() {
                        self.revision = self.revision.max(h.revision());
                    }
                }
                continue;
            }
            let mut batch = Vec::with_capacity(resp.events().len());
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                self.revision = self.revision.max(kv.mod_revision());
                batch.push((ev.event_type(), kv.clone(), ev.prev_kv().cloned()));
            }
            if !batch.is_empty() {
                return Ok(batch);
            }
        }
    }

    fn event(
        &self,
        kind: EventType,
        kv: &KeyValue,
        prev: Option<&KeyValue>,
    ) -> Result<LeaseEvent, LeaseError> {
        match kind {
            EventType::Put => Ok(LeaseEvent::Put(lease_from_kv(&self.prefix, kv)?)),
            EventType::Delete => {
                let subnet = parse_lease_key(&self.prefix, &String::from_utf8_lossy(kv.key()))?;
                let prev = prev.and_then(|p| lease_from_kv(&self.prefix, p).ok());
                Ok(LeaseEvent::Delete { subnet, prev })
            }
        }
    }

    /// The error for a broken stream; the next request goes to another member.
    async fn broken(&self, reason: String) -> StoreError {
        let error = StoreError::WatchBroken {
            key: self.key.clone(),
            reason,
        };
        self.store.fail_over(self.endpoint, &error).await;
        error
    }
}

/// For modules that keep their own keys under the prefix (the network config's editor, the
/// nodes' pod records); their requests go through [`timed`] like this module's.
impl EtcdStore {
    /// The etcd client.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }
}

/// The lease store as the node agent uses it: the seam between the agent's decisions and
/// etcd, implemented by [`EtcdStore`].
pub trait LeaseStore {
    /// A stream of changes under the prefix.
    type Watch: NetworkWatch;

    /// Claims a subnet for this node (see [`EtcdStore::acquire`]).
    fn acquire(
        &self,
        cfg: &NetworkConfig,
        attrs: &LeaseAttrs,
        previous: Option<Ipv4Network>,
        ttl: Duration,
    ) -> impl Future<Output = Result<OwnLease, StoreError>> + Send;

    /// Claims a subnet asking for the previous IPv6 subnet too (see
    /// [`EtcdStore::acquire_dual`]); a store without IPv6 preferences ignores `previous6`.
    fn acquire_dual(
        &self,
        cfg: &NetworkConfig,
        attrs: &LeaseAttrs,
        previous: Option<Ipv4Network>,
        _previous6: Option<Ipv6Network>,
        ttl: Duration,
    ) -> impl Future<Output = Result<OwnLease, StoreError>> + Send {
        self.acquire(cfg, attrs, previous, ttl)
    }

    /// Claims a subnet deciding the first attempt on `listed`, a listing the caller has just
    /// made (see [`EtcdStore::acquire_listed`]); a store that cannot use it lists again.
    fn acquire_listed(
        &self,
        cfg: &NetworkConfig,
        attrs: &LeaseAttrs,
        (previous, previous6): (Option<Ipv4Network>, Option<Ipv6Network>),
        ttl: Duration,
        _listed: &NetworkSnapshot,
    ) -> impl Future<Output = Result<OwnLease, StoreError>> + Send {
        self.acquire_dual(cfg, attrs, previous, previous6, ttl)
    }

    /// Extends the node's lease (see [`EtcdStore::renew`]).
    fn renew(
        &self,
        own: &OwnLease,
        ttl: Duration,
    ) -> impl Future<Output = Result<OwnLease, StoreError>> + Send;

    /// Every lease and the network config, at one revision.
    fn list_network(&self) -> impl Future<Output = Result<NetworkSnapshot, StoreError>> + Send;

    /// Watches the leases and the config from `from_revision` on.
    fn watch_network(
        &self,
        from_revision: i64,
    ) -> impl Future<Output = Result<Self::Watch, StoreError>> + Send;
}

/// Changes of the leases and the network config, in etcd's order.
pub trait NetworkWatch {
    /// The next batch of changes; [`StoreError::Compacted`] when the watch fell behind.
    fn next_changes(
        &mut self,
    ) -> impl Future<Output = Result<Vec<NetworkEvent>, StoreError>> + Send;
}

impl LeaseStore for EtcdStore {
    type Watch = LeaseWatch;

    fn acquire(
        &self,
        cfg: &NetworkConfig,
        attrs: &LeaseAttrs,
        previous: Option<Ipv4Network>,
        ttl: Duration,
    ) -> impl Future<Output = Result<OwnLease, StoreError>> + Send {
        EtcdStore::acquire(self, cfg, attrs, previous, ttl)
    }

    fn acquire_dual(
        &self,
        cfg: &NetworkConfig,
        attrs: &LeaseAttrs,
        previous: Option<Ipv4Network>,
        previous6: Option<Ipv6Network>,
        ttl: Duration,
    ) -> impl Future<Output = Result<OwnLease, StoreError>> + Send {
        EtcdStore::acquire_dual(self, cfg, attrs, previous, previous6, ttl)
    }

    fn acquire_listed(
        &self,
        cfg: &NetworkConfig,
        attrs: &LeaseAttrs,
        previous: (Option<Ipv4Network>, Option<Ipv6Network>),
        ttl: Duration,
        listed: &NetworkSnapshot,
    ) -> impl Future<Output = Result<OwnLease, StoreError>> + Send {
        EtcdStore::acquire_listed(self, cfg, attrs, previous, ttl, listed)
    }

    fn renew(
        &self,
        own: &OwnLease,
        ttl: Duration,
    ) -> impl Future<Output = Result<OwnLease, StoreError>> + Send {
        EtcdStore::renew(self, own, ttl)
    }

    fn list_network(&self) -> impl Future<Output = Result<NetworkSnapshot, StoreError>> + Send {
        EtcdStore::list_network(self)
    }

    fn watch_network(
        &self,
        from_revision: i64,
    ) -> impl Future<Output = Result<LeaseWatch, StoreError>> + Send {
        EtcdStore::watch_network(self, from_revision)
    }
}

impl NetworkWatch for LeaseWatch {
    fn next_changes(
        &mut self,
    ) -> impl Future<Output = Result<Vec<NetworkEvent>, StoreError>> + Send {
        LeaseWatch::next_changes(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_range_end_is_etcds() {
        assert_eq!(
            prefix_range_end(b"/coreos.com/network/"),
            b"/coreos.com/network0"
        );
        assert_eq!(prefix_range_end(b"a\xff"), b"b");
        assert_eq!(prefix_range_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn failover_moves_to_the_next_endpoint_once_per_failure() {
        let eps = Endpoints {
            all: vec![
                "http://a:2379".into(),
                "http://b:2379".into(),
                "http://c:2379".into(),
            ],
            pinned: Mutex::new(0),
        };
        assert_eq!(eps.advance(0), Some(1));
        // A second request that failed on the same member does not skip a healthy one.
        assert_eq!(eps.advance(0), None);
        assert_eq!(eps.advance(1), Some(2));
        assert_eq!(eps.advance(2), Some(0), "wraps around");
        assert_eq!(eps.pinned(), 0);
        let one = Endpoints {
            all: vec!["http://a:2379".into()],
            pinned: Mutex::new(0),
        };
        assert_eq!(one.advance(0), None);
    }

    #[test]
    fn only_failures_of_the_member_fail_over() {
        let request = |status: tonic::Status| StoreError::Request {
            op: "get",
            key: "k".into(),
            source: etcd_client::Error::GRpcStatus(status),
        };
        assert!(member_failed(&StoreError::Timeout {
            op: "get",
            key: "k".into(),
            after: REQUEST_TIMEOUT,
        }));
        assert!(member_failed(&request(tonic::Status::unavailable(
            "etcdserver: no leader"
        ))));
        assert!(!member_failed(&request(tonic::Status::invalid_argument(
            "etcdserver: key is not provided"
        ))));
        assert!(!member_failed(&request(tonic::Status::permission_denied(
            "etcdserver: permission denied"
        ))));
        assert!(!member_failed(&StoreError::Conflict {
            op: "claim subnet",
            key: "k".into(),
        }));
        assert!(!member_failed(&StoreError::Compacted { revision: 5 }));
    }

    #[test]
    fn password_never_in_debug() {
        let opts = EtcdOptions {
            username: Some("root".into()),
            password: Some("s3cret".into()),
            ..EtcdOptions::default()
        };
        let text = format!("{opts:?}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
        assert_eq!(opts.endpoints, vec!["http://127.0.0.1:2379".to_string()]);
        assert_eq!(opts.prefix, "/coreos.com/network");
    }

    #[test]
    fn password_file_loses_only_its_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        for (content, want) in [
            ("s3cret\n", "s3cret"),
            ("s3cret\r\n", "s3cret"),
            ("s3cret", "s3cret"),
            (" s3 cret \n\n", " s3 cret \n"),
        ] {
            std::fs::write(&path, content).unwrap();
            assert_eq!(read_password_file(&path).unwrap(), want, "{content:?}");
        }
        let e = read_password_file(&dir.path().join("missing")).unwrap_err();
        assert!(
            e.to_string().starts_with("etcd: read password file "),
            "{e}"
        );
        let opts = EtcdOptions {
            password_file: Some(path),
            ..EtcdOptions::default()
        };
        assert!(!format!("{opts:?}").contains("s3 cret"));
    }

    #[test]
    fn endpoint_hosts() {
        for (url, host) in [
            ("http://192.0.2.254:2379", Some("192.0.2.254")),
            ("https://etcd-1.example:2379/", Some("etcd-1.example")),
            ("http://[2001:db8::1]:2379", Some("2001:db8::1")),
            ("192.0.2.7:2379", Some("192.0.2.7")),
            ("http://user@192.0.2.8", Some("192.0.2.8")),
            ("http://:2379", None),
        ] {
            assert_eq!(endpoint_host(url), host, "{url}");
        }
    }

    #[test]
    fn ttl_and_expiry_conversions() {
        assert_eq!(ttl_seconds(Duration::from_secs(86400)), 86400);
        assert_eq!(ttl_seconds(Duration::from_millis(10)), 1);
        let t = expiry_after(60);
        let d = t.duration_since(SystemTime::now()).unwrap();
        assert!(
            d <= Duration::from_secs(60) && d > Duration::from_secs(58),
            "{d:?}"
        );
    }

    #[test]
    fn lost_reasons_read_well() {
        let e = StoreError::LeaseLost {
            subnet: "10.244.1.0/24".parse().unwrap(),
            reason: LeaseLostReason::TakenBy("192.0.2.9".parse().unwrap()),
        };
        assert_eq!(
            e.to_string(),
            "subnet lease 10.244.1.0/24: the key now belongs to PublicIP 192.0.2.9"
        );
    }
}
