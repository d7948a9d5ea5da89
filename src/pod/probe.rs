//! Liveness, readiness and startup probes: `exec` (through `runc exec` in the container),
//! `httpGet` and `tcpSocket` (from inside the pod's network namespace, to the pod IP).
//!
//! The counting — initial delay, period, success and failure thresholds — is pure
//! ([`ProbeCounter`]); the checks themselves are at the bottom.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::manifest::{Container, Probe};

/// The three kinds of probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// Restarts the container when it fails.
    Liveness,
    /// Takes the container out of `ready` while it fails.
    Readiness,
    /// Holds the other probes back until it succeeds; kills the container when it fails.
    Startup,
}

/// Thresholds and timing of one probe, defaulted as Kubernetes does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTiming {
    /// Before the first check.
    pub initial_delay: Duration,
    /// Between checks (10 s).
    pub period: Duration,
    /// For one check (1 s).
    pub timeout: Duration,
    /// Consecutive successes to pass (1).
    pub success_threshold: u32,
    /// Consecutive failures to fail (3).
    pub failure_threshold: u32,
}

impl ProbeTiming {
    /// The timing of `p` with Kubernetes' defaults for zero values.
    pub fn of(p: &Probe) -> Self {
        let or = |v: u64, d: u64| Duration::from_secs(if v == 0 { d } else { v });
        ProbeTiming {
            initial_delay: Duration::from_secs(p.initial_delay_seconds),
            period: or(p.period_seconds, 10),
            timeout: or(p.timeout_seconds, 1),
            success_threshold: p.success_threshold.max(1),
            failure_threshold: if p.failure_threshold == 0 {
                3
            } else {
                p.failure_threshold
            },
        }
    }
}

/// The verdict of a probe so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not enough results yet.
    Unknown,
    /// Passed its success threshold.
    Success,
    /// Reached its failure threshold.
    Failure,
}

/// Counts consecutive results of one probe and says when the next check is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeCounter {
    timing: ProbeTiming,
    next: Instant,
    successes: u32,
    failures: u32,
    verdict: Verdict,
}

impl ProbeCounter {
    /// A counter for a container that started at `started`.
    pub fn new(timing: ProbeTiming, started: Instant) -> Self {
        ProbeCounter {
            timing,
            next: started + timing.initial_delay,
            successes: 0,
            failures: 0,
            verdict: Verdict::Unknown,
        }
    }

    /// Whether a check is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        now >= self.next
    }

    /// Records a check's result at `now` and returns the verdict.
    pub fn record(&mut self, ok: bool, now: Instant) -> Verdict {
        self.next = now + self.timing.period;
        if ok {
            self.successes += 1;
            self.failures = 0;
            if self.successes >= self.timing.success_threshold {
                self.verdict = Verdict::Success;
            }
        } else {
            self.failures += 1;
            self.successes = 0;
            if self.failures >= self.timing.failure_threshold {
                self.verdict = Verdict::Failure;
            }
        }
        self.verdict
    }

    /// The verdict so far.
    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// The probe's timing.
    pub fn timing(&self) -> ProbeTiming {
        self.timing
    }
}

/// What the probes of a container say after a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeOutcome {
    /// The startup probe passed (or there is none).
    pub started: bool,
    /// Started, and the readiness probe passes (or there is none).
    pub ready: bool,
    /// The liveness or startup probe failed: the container is to be killed.
    pub kill: bool,
}

/// Where probes run: the container's runtime and the pod's network.
#[derive(Debug, Clone)]
pub struct ProbeTarget<'a> {
    /// The OCI runtime binary (`runc`).
    pub runtime: &'a Path,
    /// Its `--root`.
    pub runtime_root: &'a Path,
    /// The container id.
    pub container_id: &'a str,
    /// The pod's network namespace (`/run/netns/...`).
    pub netns: &'a Path,
    /// The pod IP (loopback when unknown).
    pub pod_ip: Option<IpAddr>,
}

/// The probe counters of one container run.
#[derive(Debug, Clone, Default)]
pub struct ProbeTracker {
    startup: Option<ProbeCounter>,
    liveness: Option<ProbeCounter>,
    readiness: Option<ProbeCounter>,
}

impl ProbeTracker {
    /// Counters for the probes of `c`, starting now.
    pub fn new(c: &Container) -> Self {
        let now = Instant::now();
        let counter = |p: &Option<Probe>| {
            p.as_ref()
                .map(|p| ProbeCounter::new(ProbeTiming::of(p), now))
        };
        ProbeTracker {
            startup: counter(&c.startup_probe),
            liveness: counter(&c.liveness_probe),
            readiness: counter(&c.readiness_probe),
        }
    }

    /// Runs the probes that are due and returns the container's state.
    pub fn tick(&mut self, c: &Container, target: &ProbeTarget<'_>) -> ProbeOutcome {
        let now = Instant::now();
        let started = match (&mut self.startup, &c.startup_probe) {
            (Some(counter), Some(p)) if counter.verdict() != Verdict::Success => {
                if counter.due(now) {
                    let ok = check(c, p, target, counter.timing().timeout);
                    if counter.record(ok, now) == Verdict::Failure {
                        return ProbeOutcome {
                            started: false,
                            ready: false,
                            kill: true,
                        };
                    }
                }
                counter.verdict() == Verdict::Success
            }
            _ => true,
        };
        if !started {
            return ProbeOutcome {
                started,
                ready: false,
                kill: false,
            };
        }
        if let (Some(counter), Some(p)) = (&mut self.liveness, &c.liveness_probe) {
            if counter.due(now) {
                let ok = check(c, p, target, counter.timing().timeout);
                if counter.record(ok, now) == Verdict::Failure {
                    return ProbeOutcome {
                        started,
                        ready: false,
                        kill: true,
                    };
                }
            }
        }
        let ready = match (&mut self.readiness, &c.readiness_probe) {
            (Some(counter), Some(p)) => {
                if counter.due(now) {
                    let ok = check(c, p, target, counter.timing().timeout);
                    counter.record(ok, now);
                }
                counter.verdict() == Verdict::Success
            }
            _ => true,
        };
        ProbeOutcome {
            started,
            ready,
            kill: false,
        }
    }
}

/// Why one probe check failed (logged at debug level; the verdict counts failures only).
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    /// The probe's named port is not among the container's ports.
    #[error("unresolvable port")]
    UnresolvablePort,
    /// The probe has no exec, httpGet or tcpSocket handler.
    #[error("no handler")]
    NoHandler,
    /// The OCI runtime could not be started for an exec probe.
    #[error("spawn {}: {source}", runtime.display())]
    Spawn {
        /// The runtime binary.
        runtime: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The exec probe's command exited non-zero.
    #[error("exec exited with {0}")]
    Exited(std::process::ExitStatus),
    /// The exec probe ran past its timeout.
    #[error("exec timed out after {0:?}")]
    TimedOut(Duration),
    /// Waiting for the exec probe failed.
    #[error("wait exec: {0}")]
    Wait(#[source] std::io::Error),
    /// The HTTP request failed.
    #[error(transparent)]
    Http(#[from] crate::http_client::HttpError),
    /// The HTTP answer's status is not 2xx or 3xx.
    #[error("HTTP status {0}")]
    HttpStatus(u16),
    /// The TCP connection failed.
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The pod's network namespace could not be opened or entered.
    #[error(transparent)]
    Netns(#[from] weft_netns::NetnsError),
    /// The probe thread panicked.
    #[error("probe thread panicked")]
    Panicked,
}

/// Runs one check of `p`; `true` on success.
fn check(c: &Container, p: &Probe, target: &ProbeTarget<'_>, timeout: Duration) -> bool {
    let result = if let Some(e) = &p.exec {
        exec_check(target, &e.command, timeout)
    } else if let Some(h) = &p.http_get {
        match c.resolve_port(&h.port) {
            Some(port) => in_netns(target.netns, {
                let addr = SocketAddr::new(
                    target.pod_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                    port,
                );
                let path = h.path.clone().unwrap_or_else(|| "/".to_string());
                move || http_check(addr, &path, timeout)
            }),
            None => Err(ProbeError::UnresolvablePort),
        }
    } else if let Some(t) = &p.tcp_socket {
        match c.resolve_port(&t.port) {
            Some(port) => in_netns(target.netns, {
                let addr = SocketAddr::new(
                    target.pod_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                    port,
                );
                move || {
                    TcpStream::connect_timeout(&addr, timeout)
                        .map(drop)
                        .map_err(ProbeError::Connect)
                }
            }),
            None => Err(ProbeError::UnresolvablePort),
        }
    } else {
        Err(ProbeError::NoHandler)
    };
    match result {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(container = %c.name, error = %e, "probe failed");
            false
        }
    }
}

/// `runc exec` of `command` in the container; success is exit 0 within `timeout`.
fn exec_check(
    target: &ProbeTarget<'_>,
    command: &[String],
    timeout: Duration,
) -> Result<(), ProbeError> {
    let mut child = Command::new(target.runtime)
        .arg("--root")
        .arg(target.runtime_root)
        .arg("exec")
        .arg(target.container_id)
        .args(command)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| ProbeError::Spawn {
            runtime: target.runtime.to_path_buf(),
            source,
        })?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(ProbeError::Exited(status)),
            Ok(None) if Instant::now() >= deadline => {
                // Kill the runc exec client; the process inside ends with it.
                let _ = child.kill();
                let _ = child.wait();
                return Err(ProbeError::TimedOut(timeout));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(ProbeError::Wait(e)),
        }
    }
}

/// An HTTP GET through the node's one HTTP client; success is a 2xx or 3xx status.
fn http_check(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(), ProbeError> {
    let code = crate::http_client::status_of(addr, path, timeout)?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(ProbeError::HttpStatus(code))
    }
}

/// Runs `f` on a thread inside the network namespace `netns`.
fn in_netns<F>(netns: &Path, f: F) -> Result<(), ProbeError>
where
    F: FnOnce() -> Result<(), ProbeError> + Send + 'static,
{
    let path: PathBuf = netns.to_path_buf();
    // The CNI plugin's helper: the namespace file is checked to be one (nsfs), the thread
    // enters it for `f` alone and returns.
    let handle = std::thread::spawn(move || weft_netns::Netns::open(&path)?.within(f)?);
    handle.join().map_err(|_| ProbeError::Panicked)?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(success: u32, failure: u32) -> ProbeTiming {
        ProbeTiming {
            initial_delay: Duration::from_secs(5),
            period: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    #[test]
    fn defaults_are_kubernetes() {
        let t = ProbeTiming::of(&Probe::default());
        assert_eq!(t.period, Duration::from_secs(10));
        assert_eq!(t.timeout, Duration::from_secs(1));
        assert_eq!((t.success_threshold, t.failure_threshold), (1, 3));
        assert_eq!(t.initial_delay, Duration::ZERO);
    }

    #[test]
    fn initial_delay_and_period_gate_checks() {
        let t0 = Instant::now();
        let mut c = ProbeCounter::new(timing(1, 3), t0);
        assert!(!c.due(t0 + Duration::from_secs(4)));
        assert!(c.due(t0 + Duration::from_secs(5)));
        c.record(true, t0 + Duration::from_secs(5));
        assert!(!c.due(t0 + Duration::from_secs(14)));
        assert!(c.due(t0 + Duration::from_secs(15)));
    }

    #[test]
    fn thresholds_need_consecutive_results() {
        let t0 = Instant::now();
        let mut c = ProbeCounter::new(timing(2, 3), t0);
        assert_eq!(c.record(true, t0), Verdict::Unknown);
        assert_eq!(c.record(false, t0), Verdict::Unknown);
        assert_eq!(c.record(true, t0), Verdict::Unknown);
        assert_eq!(c.record(true, t0), Verdict::Success);
        assert_eq!(c.record(false, t0), Verdict::Success);
        assert_eq!(c.record(false, t0), Verdict::Success);
        assert_eq!(c.record(false, t0), Verdict::Failure);
        assert_eq!(c.record(true, t0), Verdict::Failure);
        assert_eq!(c.record(true, t0), Verdict::Success);
    }

    #[test]
    fn http_and_tcp_checks_against_a_local_server() {
        let (addr, server) = crate::http_client::canned_http_server(&[
            "HTTP/1.0 204 No Content\r\n\r\n",
            "HTTP/1.0 500 Oops\r\n\r\n",
        ]);
        let t = Duration::from_secs(2);
        assert!(http_check(addr, "/healthz", t).is_ok());
        assert_eq!(
            http_check(addr, "/healthz", t).map_err(|e| e.to_string()),
            Err("HTTP status 500".into())
        );
        server.join().unwrap();
        let closed = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port());
        assert!(http_check(closed, "/", t).is_err());
    }
}
