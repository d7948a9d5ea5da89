//! The userspace WireGuard data path as its own long-lived process, as wireguard-go runs:
//! weftd starts it once (`weftd wireguard-datapath`, see [`super::control`]), it owns the TUN
//! queues of `flannel-wg`, the UDP sockets and every peer's sessions, and weftd configures it
//! over a unix socket in `--state-dir` with WireGuard's UAPI text ([`super::uapi`]). A weftd
//! restart (SIGTERM or SIGKILL) leaves it running, so pods keep talking and sessions stay.
//!
//! It ends when its TUN device is deleted (a backend switch removes `flannel-wg`), when its
//! socket is removed or replaced, or on a signal. Bad control input is answered with an
//! errno and changes nothing; it never ends the process.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use super::key::public_key;
use super::peers::PeerSpec;
use super::uapi::{self, DeviceView, PeerView, Request, SetRequest, UapiError};
use super::userspace::{
    next_table, PeerConfig, PeerTable, Queue, SharedPeers, UserspaceDataPath, WireGuardCounters,
};
use super::WireGuardError;
use crate::backend::tun_device;
use crate::backend::udp::granted_offloads;
use crate::backend::udp::socket::{poll_readable, UnderlaySocket};
use crate::netlink;
use crate::wireguard_key::{SecretKey, WireGuardKey};

/// How long one control connection may take to send its request or read the answer.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the process looks at its device and socket between requests.
const WATCH_MS: u16 = 200;
/// Control connections served at once.
const MAX_CONNECTIONS: usize = 8;

/// What the process is started with (its argument vector; the private key comes over the
/// socket).
#[derive(Debug, Clone)]
pub struct DataPathArgs {
    /// The control socket to create.
    pub socket: PathBuf,
    /// The TUN device to own.
    pub device: String,
    /// The underlay address and listen port the sockets bind to.
    pub bind: SocketAddr,
    /// Whether to ask the kernel for TUN and UDP offloads.
    pub offloads: bool,
}

/// The device's configuration as the socket set it (`Debug` prints no key: [`SecretKey`]).
#[derive(Debug, Default)]
struct DeviceConfig {
    private: Option<SecretKey>,
    own: Vec<IpNetwork>,
    peers: BTreeMap<WireGuardKey, PeerConfig>,
}

impl DeviceConfig {
    /// The IPv4 pod subnet decrypted packets must be for.
    fn own_v4(&self) -> Option<Ipv4Network> {
        self.own.iter().find_map(|n| match n {
            IpNetwork::V4(n) => Some(*n),
            IpNetwork::V6(_) => None,
        })
    }

    /// The IPv6 pod subnet decrypted packets must be for.
    fn own_v6(&self) -> Option<Ipv6Network> {
        self.own.iter().find_map(|n| match n {
            IpNetwork::V6(n) => Some(*n),
            IpNetwork::V4(_) => None,
        })
    }
}

/// The configuration `req` leads to from `current`, or why not (then nothing changes).
fn apply_set(
    current: &DeviceConfig,
    req: &SetRequest,
    listen_port: u16,
) -> Result<DeviceConfig, UapiError> {
    let refuse = |key: &str, reason: String| UapiError::Refused {
        key: key.to_string(),
        reason,
    };
    if let Some(port) = req.listen_port {
        if port != listen_port {
            return Err(refuse(
                "listen_port",
                format!("{port}: this data path is bound to {listen_port}; start another"),
            ));
        }
    }
    let mut next = DeviceConfig {
        private: req.private_key.clone().or_else(|| current.private.clone()),
        own: if req.own_subnets.is_empty() {
            current.own.clone()
        } else {
            req.own_subnets.clone()
        },
        peers: if req.replace_peers {
            BTreeMap::new()
        } else {
            current.peers.clone()
        },
    };
    for p in &req.peers {
        if p.remove {
            next.peers.remove(&p.key);
            continue;
        }
        let existing = next.peers.get(&p.key).cloned();
        if p.update_only && existing.is_none() {
            continue;
        }
        let mut allowed = match (&existing, p.replace_allowed_ips) {
            (Some(e), false) => e.spec.allowed.clone(),
            _ => Vec::new(),
        };
        for a in &p.allowed {
            if !allowed.contains(a) {
                allowed.push(*a);
            }
        }
        let Some(endpoint) = p.endpoint.or(existing.as_ref().map(|e| e.spec.endpoint)) else {
            return Err(refuse(
                "endpoint",
                format!("peer {} has none; this data path needs one", p.key),
            ));
        };
        let config = PeerConfig {
            spec: PeerSpec {
                key: p.key,
                endpoint,
                allowed,
            },
            psk: match &p.psk {
                Some(psk) => psk.clone(),
                None => existing.as_ref().and_then(|e| e.psk.clone()),
            },
            keepalive: p
                .keepalive
                .or(existing.as_ref().map(|e| e.keepalive))
                .unwrap_or(0),
        };
        next.peers.insert(p.key, config);
    }
    if next.private.is_none() && !next.peers.is_empty() {
        return Err(refuse(
            "private_key",
            "peers need the device's private key first".to_string(),
        ));
    }
    Ok(next)
}

/// The running data path: its pumps, its peers and its identity.
struct DataPath {
    args: DataPathArgs,
    config: DeviceConfig,
    peers: SharedPeers,
    next_index: AtomicU32,
    counters: Arc<WireGuardCounters>,
    offloads: String,
    pumps: UserspaceDataPath,
}

impl DataPath {
    /// Answers one request (the text up to its empty line) with the text of the answer.
    fn answer(&mut self, text: &str) -> String {
        let request = match uapi::parse_request(text) {
            Ok(r) => r,
            Err(e) => return refused(&e),
        };
        match request {
            Request::Get => format!("{}errno=0\n\n", uapi::format_device(&self.view())),
            Request::Set(req) => match self.set(&req) {
                Ok(()) => "errno=0\n\n".to_string(),
                Err(e) => refused(&e),
            },
        }
    }

    fn set(&mut self, req: &SetRequest) -> Result<(), UapiError> {
        let next = apply_set(&self.config, req, self.args.bind.port())?;
        let rekeyed = next.private != self.config.private;
        let Some(private) = next.private.as_ref() else {
            self.config = next;
            return Ok(());
        };
        let mut guard = match self.peers.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        // A new private key invalidates every session.
        let empty = PeerTable::default();
        let previous: &PeerTable = if rekeyed { &empty } else { &guard };
        let (table, (kept, added, removed)) = next_table(
            next.own_v4(),
            next.own_v6(),
            &next.peers,
            previous,
            private,
            &self.next_index,
        );
        *guard = Arc::new(table);
        drop(guard);
        if added + removed > 0 || rekeyed {
            tracing::info!(
                device = %self.args.device,
                peers = kept + added,
                added,
                removed,
                "WireGuard data path peers set"
            );
        }
        self.config = next;
        Ok(())
    }

    fn view(&self) -> DeviceView {
        let table = match self.peers.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        DeviceView {
            listen_port: self.args.bind.port(),
            device: self.args.device.clone(),
            bind: Some(self.args.bind),
            public_key: self.config.private.as_ref().map(public_key),
            own_subnets: self.config.own.clone(),
            offloads: self.offloads.clone(),
            offloads_asked: Some(self.args.offloads),
            counters: self
                .counters
                .rows()
                .iter()
                .map(|(name, v, _)| (name.to_string(), v.load(Ordering::Relaxed)))
                .collect(),
            peers: table
                .configs()
                .into_iter()
                .map(|(k, c)| {
                    let view = PeerView {
                        endpoint: Some(c.spec.endpoint),
                        allowed: c.spec.allowed,
                        keepalive: c.keepalive,
                    };
                    (k, view)
                })
                .collect(),
        }
    }
}

fn refused(e: &UapiError) -> String {
    tracing::warn!(error = %e, "control request refused");
    format!("errno={}\n\n", e.errno())
}

/// Something that answers one control request: the data path, or a stand-in in tests.
trait Answer: Send + 'static {
    /// The text of the answer to the request `text` (its lines, without the empty one).
    fn answer(&mut self, text: &str) -> String;
}

impl Answer for DataPath {
    fn answer(&mut self, text: &str) -> String {
        DataPath::answer(self, text)
    }
}

/// A control socket stream whose reads share one deadline: a request must arrive whole
/// within [`CONTROL_TIMEOUT`] of the previous answer (or of the connection), however the
/// client paces its bytes.
struct DeadlineStream {
    stream: UnixStream,
    deadline: Instant,
}

impl io::Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

/// Serves the control socket: every connection on its own thread (at most
/// [`MAX_CONNECTIONS`] at once, more are closed at once), the answerer locked only while it
/// answers, so a client that stalls delays nobody else.
struct ControlServer<A> {
    answerer: Arc<Mutex<A>>,
    open: Arc<AtomicUsize>,
}

impl<A: Answer> ControlServer<A> {
    fn new(answerer: Arc<Mutex<A>>) -> Self {
        ControlServer {
            answerer,
            open: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Accepts what the listener has queued (it is non-blocking) and hands each connection to a thread.
    fn accept(&self, listener: &UnixListener) {
        loop {
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(error = %e, "accept on control socket");
                    return;
                }
            };
            if self.open.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                self.open.fetch_sub(1, Ordering::AcqRel);
                tracing::warn!(
                    limit = MAX_CONNECTIONS,
                    "too many control connections at once; closing a new one"
                );
                continue;
            }
            let answerer = self.answerer.clone();
            let open = self.open.clone();
            let spawned = std::thread::Builder::new()
                .name("weft-wg-control".into())
                .spawn(move || {
                    if let Err(e) = serve_connection(&answerer, stream) {
                        tracing::debug!(error = %e, "control connection ended");
                    }
                    open.fetch_sub(1, Ordering::AcqRel);
                });
            if let Err(e) = spawned {
                self.open.fetch_sub(1, Ordering::AcqRel);
                tracing::warn!(error = %e, "no thread for a control connection; closing it");
            }
        }
    }
}

/// Locks `m`, taking over the value a panicked holder left.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads requests from one connection and answers each, until the peer closes it, sends
/// more than [`uapi::MAX_REQUEST`] or takes longer than [`CONTROL_TIMEOUT`] for a request.
fn serve_connection<A: Answer>(answerer: &Mutex<A>, stream: UnixStream) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(CONTROL_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(DeadlineStream {
        stream,
        deadline: Instant::now() + CONTROL_TIMEOUT,
    })
    .take(uapi::MAX_REQUEST as u64);
    let mut request = String::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            // Closed, or the size limit reached, before the request's empty line: what came
            // is refused whole and never applied, for its last line may be cut short
            // (`allowed_ip=10.244.2.0/2` of `/24`) and a `replace_peers` request without its
            // tail would drop every peer it did not get to.
            if !request.is_empty() || !line.is_empty() {
                let cut = UapiError::Protocol {
                    line: request.lines().count() + 1,
                    reason: "the request ended before its empty line".to_string(),
                };
                writer.write_all(refused(&cut).as_bytes())?;
            }
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches('\n');
        if text.is_empty() {
            let answer = lock(answerer).answer(&request);
            writer.write_all(answer.as_bytes())?;
            request.clear();
            reader.get_mut().get_mut().deadline = Instant::now() + CONTROL_TIMEOUT;
            continue;
        }
        request.push_str(text);
        request.push('\n');
    }
}

/// Whether the socket file is still the one this process bound (same inode).
fn socket_is_ours(path: &Path, inode: u64) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.ino() == inode)
}

/// Creates the control socket (0600) at `path`, refusing when a live process answers there.
fn bind_control(path: &Path) -> Result<UnixListener, WireGuardError> {
    let err = |op: &'static str| {
        let path = path.to_path_buf();
        move |source| WireGuardError::Control { op, path, source }
    };
    if UnixStream::connect(path).is_ok() {
        return Err(err("bind")(io::Error::from_raw_os_error(libc::EADDRINUSE)));
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err("remove stale")(e)),
    }
    let listener = UnixListener::bind(path).map_err(err("bind"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(err("restrict"))?;
    listener.set_nonblocking(true).map_err(err("configure"))?;
    Ok(listener)
}

/// Runs the data path process: opens the device and sockets, creates the control socket and
/// serves it until the device or the socket is gone. Blocks; must run in the node's network
/// namespace.
pub fn run(args: DataPathArgs) -> Result<(), WireGuardError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(WireGuardError::Threads)?;
    let tuns = runtime.block_on(async {
        let handle = netlink::connect()?;
        tun_device::open_queues::<WireGuardError>(&handle, &args.device, args.offloads).await
    })?;
    drop(runtime);
    let bind = args.bind;
    let mut qs = Vec::with_capacity(tuns.len());
    for tun in tuns {
        let socket = UnderlaySocket::bind(bind, args.offloads)
            .map_err(|source| WireGuardError::Socket { addr: bind, source })?;
        qs.push(Queue { tun, socket });
    }
    let offloads = qs.first().map_or_else(String::new, |q| {
        granted_offloads(q.tun.tcp_gso(), q.socket.gso(), q.socket.gro())
    });
    let queues = qs.len();
    let listener = bind_control(&args.socket)?;
    let inode = std::fs::symlink_metadata(&args.socket)
        .map(|m| m.ino())
        .map_err(|source| WireGuardError::Control {
            op: "stat",
            path: args.socket.clone(),
            source,
        })?;
    let peers: SharedPeers = Arc::new(RwLock::new(Arc::new(PeerTable::default())));
    let counters = Arc::new(WireGuardCounters::default());
    let pumps = UserspaceDataPath::start(qs, peers.clone(), counters.clone())
        .map_err(WireGuardError::Threads)?;
    tracing::info!(
        device = %args.device,
        pid = std::process::id(),
        queues,
        bind = %args.bind,
        offloads = %offloads,
        "WireGuard data path process running"
    );
    let device = args.device.clone();
    let socket = args.socket.clone();
    let path = Arc::new(Mutex::new(DataPath {
        args,
        config: DeviceConfig::default(),
        peers,
        next_index: AtomicU32::new(rand::random::<u32>() >> 8),
        counters,
        offloads,
        pumps,
    }));
    let server = ControlServer::new(path.clone());
    loop {
        if lock(&path).pumps.device_gone() {
            tracing::info!(device = %device, "TUN device gone; WireGuard data path exits");
            break;
        }
        if !socket_is_ours(&socket, inode) {
            tracing::info!(socket = %socket.display(), "control socket removed; WireGuard data path exits");
            return Ok(());
        }
        if let Err(e) = poll_readable(listener.as_fd(), WATCH_MS) {
            tracing::warn!(error = %e, "poll control socket");
            std::thread::sleep(Duration::from_millis(u64::from(WATCH_MS)));
        }
        server.accept(&listener);
    }
    if socket_is_ours(&socket, inode) {
        let _ = std::fs::remove_file(&socket);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::wireguard::uapi::PeerSet;

    const KEY_A: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
    const KEY_B: &str = "Y2FD6uTgrq+/bbBAXCNOtE+PGk8Papoh7qaWBpQUXn0=";

    fn peer(key: &str, endpoint: &str, allowed: &str) -> PeerSet {
        let mut p = PeerSet::new(WireGuardKey::parse(key).unwrap());
        p.endpoint = Some(endpoint.parse().unwrap());
        p.replace_allowed_ips = true;
        p.allowed = vec![allowed.parse().unwrap()];
        p
    }

    #[test]
    fn sets_add_update_and_remove_peers_as_a_device_does() {
        let private = SecretKey::parse(KEY_B).unwrap();
        let first = SetRequest {
            private_key: Some(private),
            listen_port: Some(51820),
            own_subnets: vec!["10.244.1.0/24".parse().unwrap()],
            peers: vec![peer(KEY_A, "192.0.2.12:51820", "10.244.2.0/24")],
            ..Default::default()
        };
        let c = apply_set(&DeviceConfig::default(), &first, 51820).unwrap();
        let a = WireGuardKey::parse(KEY_A).unwrap();
        assert_eq!(
            c.peers[&a].spec.allowed,
            vec!["10.244.2.0/24".parse().unwrap()]
        );
        // Allowed IPs add up without replace_allowed_ips; the endpoint stays.
        let mut more = PeerSet::new(a);
        more.allowed = vec!["10.244.3.0/24".parse().unwrap()];
        more.keepalive = Some(25);
        let c = apply_set(
            &c,
            &SetRequest {
                peers: vec![more],
                ..Default::default()
            },
            51820,
        )
        .unwrap();
        assert_eq!(c.peers[&a].spec.allowed.len(), 2);
        assert_eq!(
            c.peers[&a].spec.endpoint,
            "192.0.2.12:51820".parse().unwrap()
        );
        assert_eq!(c.peers[&a].keepalive, 25);
        let mut gone = PeerSet::new(a);
        gone.remove = true;
        let c = apply_set(
            &c,
            &SetRequest {
                peers: vec![gone],
                ..Default::default()
            },
            51820,
        )
        .unwrap();
        assert!(c.peers.is_empty());
        assert!(c.private.is_some(), "the key stays");
    }

    /// Answers every request with its own text, as a stand-in for the data path.
    struct Echo;

    impl Answer for Echo {
        fn answer(&mut self, text: &str) -> String {
            format!("{text}errno=0\n\n")
        }
    }

    #[test]
    fn a_stalled_client_delays_no_other_and_is_cut_off_at_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let serving = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let server = ControlServer::new(Arc::new(Mutex::new(Echo)));
                while !stop.load(Ordering::Relaxed) {
                    let _ = poll_readable(listener.as_fd(), 50);
                    server.accept(&listener);
                }
            })
        };
        // A client that starts a request and then sends a byte a second, never finishing it.
        let mut stalled = UnixStream::connect(&path).unwrap();
        stalled.write_all(b"get=1\n").unwrap();
        let trickle = {
            let mut s = stalled.try_clone().unwrap();
            std::thread::spawn(move || {
                for _ in 0..12 {
                    std::thread::sleep(Duration::from_secs(1));
                    if s.write_all(b"x").is_err() {
                        return;
                    }
                }
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        // Another client is answered while the first one stalls.
        let mut other = UnixStream::connect(&path).unwrap();
        other.set_read_timeout(Some(CONTROL_TIMEOUT / 2)).unwrap();
        other.write_all(b"get=1\n\n").unwrap();
        let mut answer = [0u8; 64];
        let n = other
            .read(&mut answer)
            .expect("answered while another client stalls");
        assert_eq!(&answer[..n], b"get=1\nerrno=0\n\n");
        // The stalled client is cut off once its request took CONTROL_TIMEOUT, however it
        // paces its bytes: its connection ends (EOF) well before its trickle would.
        stalled.set_read_timeout(Some(CONTROL_TIMEOUT * 2)).unwrap();
        let started = Instant::now();
        let end = stalled.read(&mut answer);
        // (A reset when bytes it sent were still unread.)
        assert!(
            matches!(&end, Ok(0))
                || end
                    .as_ref()
                    .is_err_and(|e| e.kind() == io::ErrorKind::ConnectionReset),
            "the stalled connection is closed: {end:?}"
        );
        assert!(
            started.elapsed() < CONTROL_TIMEOUT + Duration::from_secs(2),
            "closed at its deadline, not after {:?}",
            started.elapsed()
        );
        stop.store(true, Ordering::Relaxed);
        serving.join().unwrap();
        trickle.join().unwrap();
    }

    /// Counts the requests it is asked to carry out.
    struct Counting(usize);

    impl Answer for Counting {
        fn answer(&mut self, _text: &str) -> String {
            self.0 += 1;
            "errno=0\n\n".to_string()
        }
    }

    #[test]
    fn a_request_cut_short_is_refused_and_never_applied() {
        for partial in [
            &b"set=1\nreplace_peers=true\npublic_key=aa\n"[..],
            b"set=1\nallowed_ip=10.244.2.0/2",
            b"get=1",
        ] {
            let answerer = Arc::new(Mutex::new(Counting(0)));
            let (mut client, server) = UnixStream::pair().unwrap();
            let serving = {
                let answerer = answerer.clone();
                std::thread::spawn(move || serve_connection(&*answerer, server))
            };
            client.write_all(partial).unwrap();
            client.shutdown(std::net::Shutdown::Write).unwrap();
            let mut answer = String::new();
            client.read_to_string(&mut answer).unwrap();
            serving.join().unwrap().unwrap();
            let shown = String::from_utf8_lossy(partial);
            assert_eq!(answer, format!("errno={}\n\n", libc::EPROTO), "{shown:?}");
            assert_eq!(lock(&answerer).0, 0, "{shown:?} was carried out");
        }
        // A whole request on the same path is carried out.
        let answerer = Arc::new(Mutex::new(Counting(0)));
        let (mut client, server) = UnixStream::pair().unwrap();
        let serving = {
            let answerer = answerer.clone();
            std::thread::spawn(move || serve_connection(&*answerer, server))
        };
        client.write_all(b"get=1\n\n").unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).unwrap();
        serving.join().unwrap().unwrap();
        assert_eq!(answer, "errno=0\n\n");
        assert_eq!(lock(&answerer).0, 1);
    }

    #[test]
    fn a_refused_set_changes_nothing() {
        let c = DeviceConfig::default();
        // Peers before any private key.
        let req = SetRequest {
            peers: vec![peer(KEY_A, "192.0.2.12:51820", "10.244.2.0/24")],
            ..Default::default()
        };
        assert!(apply_set(&c, &req, 51820).is_err());
        // Another port than the one bound.
        let req = SetRequest {
            listen_port: Some(1),
            ..Default::default()
        };
        let err = apply_set(&c, &req, 51820).unwrap_err();
        assert_eq!(err.errno(), libc::EINVAL);
        // A new peer without an endpoint.
        let req = SetRequest {
            private_key: Some(SecretKey::parse(KEY_B).unwrap()),
            peers: vec![PeerSet::new(WireGuardKey::parse(KEY_A).unwrap())],
            ..Default::default()
        };
        assert!(apply_set(&c, &req, 51820).is_err());
        // update_only on a peer that is not there adds nothing.
        let mut p = peer(KEY_A, "192.0.2.12:51820", "10.244.2.0/24");
        p.update_only = true;
        let req = SetRequest {
            private_key: Some(SecretKey::parse(KEY_B).unwrap()),
            peers: vec![p],
            ..Default::default()
        };
        assert!(apply_set(&c, &req, 51820).unwrap().peers.is_empty());
    }
}
