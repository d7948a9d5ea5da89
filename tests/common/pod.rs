//! [`Pod`]: a namespace wired to a node's bridge; TCP checks and the traffic probe.

use super::*;

/// A pod: a namespace with `eth0` on its node's `cni0` bridge.
#[derive(Debug)]
pub struct Pod {
    pub(super) ns: Netns,
    pub(super) ip: String,
}

impl Pod {
    /// The pod's address.
    pub fn ip(&self) -> &str {
        &self.ip
    }

    /// The pod namespace.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// Runs a command inside the pod.
    pub fn exec(&self, args: &[&str]) -> Output {
        self.ns.exec(args)
    }

    /// True if a TCP connection from this pod to `other` carries a message both ways (3 s budget).
    pub fn tcp_check(&self, other: &Pod) -> bool {
        let listener = other
            .ns
            .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)));
        let listener = match listener {
            Ok(l) => l,
            Err(e) => panic!("bind in pod {}: {e}", other.ns.name()),
        };
        let port = match listener.local_addr() {
            Ok(a) => a.port(),
            Err(e) => panic!("listener address in pod {}: {e}", other.ns.name()),
        };
        let server = std::thread::spawn(move || serve_echo_once(&listener, Duration::from_secs(3)));
        let ip: Ipv4Addr = other
            .ip
            .parse()
            .unwrap_or_else(|e| panic!("pod {} address {:?}: {e}", other.ns.name(), other.ip));
        let target = SocketAddr::from((ip, port));
        let ok = self
            .ns
            .run(|| TcpStream::connect_timeout(&target, Duration::from_secs(3)))
            .ok()
            .is_some_and(|s| round_trip(s, b"weft-tcp-check", Duration::from_secs(3)));
        let served = server.join().unwrap_or(false);
        ok && served
    }

    /// [`tiny_mss_transfer`] from this pod to `to`'s address.
    pub fn tiny_mss_transfer(&self, to: &Pod, bytes: usize, mss: u32) -> TinyMssTransfer {
        tiny_mss_transfer(&self.ns, &to.ns, &to.ip, bytes, mss)
    }

    /// Starts a numbered UDP datagram every 50 ms from this pod to `other`, echoed back; counts loss.
    pub fn traffic_probe(&self, other: &Pod) -> TrafficProbe {
        TrafficProbe::start(&self.ns, &other.ns, &other.ip)
    }
}

/// The source address the listener in `to` sees for a TCP connection from `from` to `to_ip`
/// (e.g. to check masquerading); None if the connection fails within 3 s.
pub fn tcp_source_seen(from: &Netns, to: &Netns, to_ip: &str) -> Option<Ipv4Addr> {
    let listener = match to.run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))) {
        Ok(l) => l,
        Err(e) => panic!("bind in {}: {e}", to.name()),
    };
    let port = match listener.local_addr() {
        Ok(a) => a.port(),
        Err(e) => panic!("listener address in {}: {e}", to.name()),
    };
    let ip: Ipv4Addr = to_ip
        .parse()
        .unwrap_or_else(|e| panic!("tcp_source_seen: bad address {to_ip:?}: {e}"));
    let server = std::thread::spawn(move || -> Option<SocketAddr> {
        listener.set_nonblocking(true).ok()?;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            match listener.accept() {
                Ok((_, peer)) => return Some(peer),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        None
    });
    let connected = from
        .run(|| TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_secs(3)))
        .is_ok();
    let peer = server.join().ok().flatten();
    match (connected, peer) {
        (true, Some(SocketAddr::V4(a))) => Some(*a.ip()),
        _ => None,
    }
}

/// Accepts one connection and echoes what it reads; false on timeout.
fn serve_echo_once(listener: &TcpListener, timeout: Duration) -> bool {
    if listener.set_nonblocking(true).is_err() {
        return false;
    }
    let start = Instant::now();
    loop {
        match listener.accept() {
            Ok((stream, _)) => return echo(stream, timeout),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if start.elapsed() > timeout {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => return false,
        }
    }
}

/// Reads up to 64 bytes and writes them back.
fn echo(mut stream: TcpStream, timeout: Duration) -> bool {
    let _ = stream.set_nonblocking(false);
    if stream.set_read_timeout(Some(timeout)).is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(n) if n > 0 => stream.write_all(&buf[..n]).is_ok(),
        _ => false,
    }
}

/// Sends `msg` and expects it echoed back.
fn round_trip(mut stream: TcpStream, msg: &[u8], timeout: Duration) -> bool {
    if stream.set_read_timeout(Some(timeout)).is_err() || stream.write_all(msg).is_err() {
        return false;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while got.len() < msg.len() {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got == msg
}

/// Counters of a [`TrafficProbe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProbeStats {
    /// Datagrams sent.
    pub attempts: u64,
    /// Datagrams lost: sent but never echoed back (a late echo is not a loss; after
    /// [`TrafficProbe::stop`] every echo still in flight has had 2 s to arrive).
    pub failures: u64,
    /// Longest time between two echoes received (how long traffic stood still).
    pub longest_gap: Duration,
}

/// Pod-to-pod traffic in the background that measures loss: a numbered UDP datagram every
/// 50 ms, echoed by the other pod; each sequence number is counted once when it comes back,
/// however late. A packet dropped anywhere is a failure; a slow path is only a gap.
#[derive(Debug)]
pub struct TrafficProbe {
    sender_stop: Arc<AtomicBool>,
    receiver_stop: Arc<AtomicBool>,
    server_stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    echoed: Arc<AtomicU64>,
    longest_gap_ms: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl TrafficProbe {
    fn start(from: &Netns, to: &Netns, to_ip: &str) -> TrafficProbe {
        use std::net::UdpSocket;
        let bind = |ns: &Netns| match ns.run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))) {
            Ok(s) => s,
            Err(e) => panic!("UDP bind in {}: {e}", ns.name()),
        };
        let server = bind(to);
        let client = bind(from);
        let port = match server.local_addr() {
            Ok(a) => a.port(),
            Err(e) => panic!("probe socket address in {}: {e}", to.name()),
        };
        let target: SocketAddr = match format!("{to_ip}:{port}").parse() {
            Ok(a) => a,
            Err(e) => panic!("probe target {to_ip}:{port}: {e}"),
        };
        let tick = Some(Duration::from_millis(50));
        for socket in [&server, &client] {
            if let Err(e) = socket.set_read_timeout(tick) {
                panic!("probe socket timeout: {e}");
            }
        }
        let receiver = match client.try_clone() {
            Ok(s) => s,
            Err(e) => panic!("clone probe socket: {e}"),
        };
        let (sender_stop, receiver_stop, server_stop) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (sent, echoed, longest_gap_ms) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let stop = server_stop.clone();
        let echo_server = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = server.recv_from(&mut buf) {
                    let _ = server.send_to(&buf[..n], peer);
                }
            }
        });
        let (stop, count) = (sender_stop.clone(), sent.clone());
        let send = std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let seq = count.load(Ordering::Relaxed);
                // A send error (no route yet) is a datagram lost like any other.
                let _ = client.send_to(&seq.to_be_bytes(), target);
                count.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let (stop, count, gap) = (
            receiver_stop.clone(),
            echoed.clone(),
            longest_gap_ms.clone(),
        );
        let receive = std::thread::spawn(move || {
            let mut seen = std::collections::HashSet::new();
            let mut last = Instant::now();
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                let Ok(n) = receiver.recv(&mut buf) else {
                    continue;
                };
                let Ok(bytes) = <[u8; 8]>::try_from(&buf[..n]) else {
                    continue;
                };
                if seen.insert(u64::from_be_bytes(bytes)) {
                    count.fetch_add(1, Ordering::Relaxed);
                    gap.fetch_max(last.elapsed().as_millis() as u64, Ordering::Relaxed);
                    last = Instant::now();
                }
            }
        });
        TrafficProbe {
            sender_stop,
            receiver_stop,
            server_stop,
            sent,
            echoed,
            longest_gap_ms,
            threads: vec![send, receive, echo_server],
        }
    }

    /// The counters so far (datagrams still in flight count as lost until they are echoed).
    pub fn stats(&self) -> ProbeStats {
        let attempts = self.sent.load(Ordering::Relaxed);
        ProbeStats {
            attempts,
            failures: attempts.saturating_sub(self.echoed.load(Ordering::Relaxed)),
            longest_gap: Duration::from_millis(self.longest_gap_ms.load(Ordering::Relaxed)),
        }
    }

    /// Waits until at least `n` more datagrams have been sent.
    pub fn wait_attempts(&self, n: u64) {
        let target = self.stats().attempts + n;
        wait_until(
            Duration::from_secs(n + 10),
            "traffic probe attempts",
            || self.stats().attempts >= target,
        );
    }

    /// Stops sending, gives the echoes in flight 2 s to arrive, and returns the final counters.
    pub fn stop(mut self) -> ProbeStats {
        self.sender_stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.stats().failures > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.halt();
        self.stats()
    }

    fn halt(&mut self) {
        for flag in [&self.sender_stop, &self.receiver_stop, &self.server_stop] {
            flag.store(true, Ordering::Relaxed);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for TrafficProbe {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Sends `bytes` over TCP from namespace `from` to a listener at `to_ip` (IPv4 or IPv6) in `to`
/// that advertises an MSS of `mss`, so `from`'s TSO hands the node's overlay device
/// super-packets of hundreds of tiny segments; reports what arrived and how many segments
/// `from`'s TCP retransmitted.
pub fn tiny_mss_transfer(
    from: &Netns,
    to: &Netns,
    to_ip: &str,
    bytes: usize,
    mss: u32,
) -> TinyMssTransfer {
    let ip: IpAddr = to_ip
        .parse()
        .unwrap_or_else(|e| panic!("pod address {to_ip:?}: {e}"));
    let listener = to
        .run(|| {
            let s = socket2::Socket::new(
                socket2::Domain::for_address(SocketAddr::new(ip, 0)),
                socket2::Type::STREAM,
                None,
            )?;
            s.set_tcp_mss(mss)?;
            let any: IpAddr = match ip {
                IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
                IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
            };
            s.bind(&SocketAddr::new(any, 0).into())?;
            s.listen(1)?;
            Ok::<TcpListener, std::io::Error>(s.into())
        })
        .unwrap_or_else(|e| panic!("listener with MSS {mss} in {}: {e}", to.name()));
    let port = listener.local_addr().expect("listener address").port();
    let payload: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(20))).ok();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        got
    });
    let before = tcp_retransmits(from);
    let mut stream = from
        .run(|| TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_secs(5)))
        .unwrap_or_else(|e| panic!("connect {} -> {to_ip}: {e}", from.name()));
    stream.write_all(&payload).expect("send");
    drop(stream);
    let got = server.join().expect("receiver thread");
    TinyMssTransfer {
        bytes,
        segments: bytes.div_ceil(mss as usize),
        intact: got == payload,
        received: got.len(),
        retransmits: tcp_retransmits(from) - before,
    }
}

/// What [`tiny_mss_transfer`] saw.
#[derive(Debug)]
pub struct TinyMssTransfer {
    pub bytes: usize,
    /// Segments the payload takes at the advertised MSS.
    pub segments: usize,
    pub intact: bool,
    pub received: usize,
    /// Segments the sender's TCP retransmitted during the transfer.
    pub retransmits: u64,
}

impl TinyMssTransfer {
    /// The payload arrived intact and (almost) nothing had to be sent twice. An overlay that
    /// drops part of each super-packet shows as thousands of retransmits (about a fifth of
    /// the segments); a clean path as none. The bound (1 % of the segments) leaves room for
    /// the odd drop on a loaded machine.
    pub fn assert_whole(&self, what: &str) {
        eprintln!("{what}: tiny-MSS transfer {self:?}");
        assert!(
            self.intact,
            "{what}: {} of {} bytes arrived, not intact",
            self.received, self.bytes
        );
        assert!(
            self.retransmits * 100 < self.segments as u64,
            "{what}: {} of {} segments retransmitted: the overlay loses part of each super-packet",
            self.retransmits,
            self.segments
        );
    }
}

/// `RetransSegs` of the `Tcp:` line of `ns`'s `/proc/net/snmp` (IPv4 and IPv6 alike).
fn tcp_retransmits(ns: &Netns) -> u64 {
    let out = ns.exec(&["cat", "/proc/net/snmp"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
        panic!("no Tcp: lines in /proc/net/snmp of {}: {text}", ns.name());
    };
    let at = names
        .split_whitespace()
        .position(|n| n == "RetransSegs")
        .expect("RetransSegs column");
    values
        .split_whitespace()
        .nth(at)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("RetransSegs in {values:?}"))
}
