//! `--healthz-addr`: `/healthz`, `/readyz` and Prometheus `/metrics` over a minimal HTTP/1.1 server.
//!
//! The agent's state is a handful of numbers; a hand-written responder keeps hyper and its
//! dependency tree out of the node agent.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

/// Counters and gauges the agent updates and `/metrics` exposes.
#[derive(Default)]
pub struct Metrics {
    /// Peers the etcd lease table asks for.
    pub peers_desired: AtomicU64,
    /// Peers whose kernel entries were programmed by the last reconcile.
    pub peers_programmed: AtomicU64,
    /// Completed reconcile runs.
    pub reconcile_runs: AtomicU64,
    /// Reconcile runs that hit at least one error.
    pub reconcile_failures: AtomicU64,
    /// Duration of the last reconcile, in microseconds.
    pub reconcile_last_micros: AtomicU64,
    /// Sum of all reconcile durations, in microseconds.
    pub reconcile_total_micros: AtomicU64,
    /// Kernel entries added by reconciles so far.
    pub entries_added: AtomicU64,
    /// Kernel entries removed by reconciles so far.
    pub entries_removed: AtomicU64,
    /// Failed etcd operations (connect, list, watch, acquire, renew).
    pub etcd_errors: AtomicU64,
    /// Own lease expiry as Unix seconds; 0 for a reservation or before the first lease.
    pub lease_expiry_unix: AtomicI64,
    /// Whether the node is serving: lease held, device and peers programmed, subnet.env written.
    pub ready: AtomicBool,
    /// Leases currently refused by validation.
    pub leases_rejected_now: AtomicU64,
    /// Peer routes the kernel guard refused (each refused lease revision once).
    pub routes_refused: AtomicU64,
    /// Whether another writer took our lease and the node has not served a new subnet yet.
    pub own_lease_taken_over: AtomicBool,
    /// How often another writer took our lease.
    pub own_lease_takeovers: AtomicU64,
    /// Whether `<prefix>/config` holds a change weftd refused to apply while running.
    pub config_change_refused: AtomicBool,
    /// Config changes applied while running.
    pub config_changes_applied: AtomicU64,
    /// Config changes refused while running.
    pub config_changes_refused: AtomicU64,
    /// Rejected lease revisions, by reason label.
    leases_rejected: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// The backend's own metrics (e.g. the UDP data path's packet and drop counters).
    backend: std::sync::OnceLock<BackendMetrics>,
    /// The peer prober's metrics (`weft_peer_*`).
    probes: std::sync::OnceLock<BackendMetrics>,
}

/// Renders a backend's metrics in Prometheus text format.
pub type BackendMetrics = Box<dyn Fn() -> String + Send + Sync>;

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.render())
    }
}

impl Metrics {
    /// Adds the backend's metrics to `/metrics`; only the first call counts.
    pub fn set_backend(&self, render: BackendMetrics) {
        let _ = self.backend.set(render);
    }

    /// Adds the peer prober's metrics to `/metrics`; only the first call counts.
    pub fn set_probes(&self, render: BackendMetrics) {
        let _ = self.probes.set(render);
    }

    /// Counts one rejected lease revision under its reason label.
    pub fn count_rejected_lease(&self, reason: &'static str) {
        let mut by_reason = self
            .leases_rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *by_reason.entry(reason).or_default() += 1;
    }

    /// Records one reconcile run.
    pub fn record_reconcile(
        &self,
        took: Duration,
        desired: usize,
        programmed: usize,
        added: usize,
        removed: usize,
        failed: bool,
    ) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.reconcile_runs.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.reconcile_failures.fetch_add(1, Ordering::Relaxed);
        }
        self.reconcile_last_micros.store(micros, Ordering::Relaxed);
        self.reconcile_total_micros
            .fetch_add(micros, Ordering::Relaxed);
        self.peers_desired.store(desired as u64, Ordering::Relaxed);
        self.peers_programmed
            .store(programmed as u64, Ordering::Relaxed);
        self.entries_added
            .fetch_add(added as u64, Ordering::Relaxed);
        self.entries_removed
            .fetch_add(removed as u64, Ordering::Relaxed);
    }

    /// Renders the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        let secs = |micros: u64| format!("{:.6}", micros as f64 / 1e6);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        metric(
            "weft_peers_desired",
            "gauge",
            "Peers the etcd lease table asks for.",
            load(&self.peers_desired).to_string(),
        );
        metric(
            "weft_peers_programmed",
            "gauge",
            "Peers programmed in the kernel by the last reconcile.",
            load(&self.peers_programmed).to_string(),
        );
        metric(
            "weft_reconcile_runs_total",
            "counter",
            "Reconcile runs.",
            load(&self.reconcile_runs).to_string(),
        );
        metric(
            "weft_reconcile_failures_total",
            "counter",
            "Reconcile runs with errors.",
            load(&self.reconcile_failures).to_string(),
        );
        metric(
            "weft_reconcile_last_duration_seconds",
            "gauge",
            "Duration of the last reconcile.",
            secs(load(&self.reconcile_last_micros)),
        );
        metric(
            "weft_reconcile_duration_seconds_total",
            "counter",
            "Time spent reconciling.",
            secs(load(&self.reconcile_total_micros)),
        );
        metric(
            "weft_kernel_entries_added_total",
            "counter",
            "Routes, neighbours and FDB entries added.",
            load(&self.entries_added).to_string(),
        );
        metric(
            "weft_kernel_entries_removed_total",
            "counter",
            "Stale routes, neighbours and FDB entries removed.",
            load(&self.entries_removed).to_string(),
        );
        metric(
            "weft_etcd_errors_total",
            "counter",
            "Failed etcd operations.",
            load(&self.etcd_errors).to_string(),
        );
        metric(
            "weft_lease_expiry_timestamp_seconds",
            "gauge",
            "Own subnet lease expiry (Unix time); 0 for a reservation.",
            self.lease_expiry_unix.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "weft_ready",
            "gauge",
            "1 when the node serves its subnet.",
            u8::from(self.ready.load(Ordering::Relaxed)).to_string(),
        );
        let flag = |b: &AtomicBool| u8::from(b.load(Ordering::Relaxed)).to_string();
        metric(
            "weft_leases_rejected",
            "gauge",
            "Leases in etcd currently refused by validation.",
            load(&self.leases_rejected_now).to_string(),
        );
        metric(
            "weft_routes_refused_total",
            "counter",
            "Peer routes refused by the kernel guard (own addresses, underlay, etcd, default route).",
            load(&self.routes_refused).to_string(),
        );
        metric(
            "weft_own_lease_taken_over",
            "gauge",
            "1 while the node recovers from another writer taking its lease.",
            flag(&self.own_lease_taken_over),
        );
        metric(
            "weft_own_lease_takeovers_total",
            "counter",
            "Times another writer took this node's lease.",
            load(&self.own_lease_takeovers).to_string(),
        );
        metric(
            "weft_config_change_refused",
            "gauge",
            "1 while the network config in etcd differs from the running one in a way not applied live.",
            flag(&self.config_change_refused),
        );
        let _ = writeln!(
            out,
            "# HELP weft_config_changes_total Network config changes seen while running, by result.\n\
             # TYPE weft_config_changes_total counter\n\
             weft_config_changes_total{{result=\"applied\"}} {}\n\
             weft_config_changes_total{{result=\"refused\"}} {}",
            load(&self.config_changes_applied),
            load(&self.config_changes_refused)
        );
        let _ = writeln!(
            out,
            "# HELP weft_leases_rejected_total Lease revisions refused by validation, by reason.\n\
             # TYPE weft_leases_rejected_total counter"
        );
        let by_reason = self
            .leases_rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (reason, n) in by_reason {
            let _ = writeln!(out, "weft_leases_rejected_total{{reason=\"{reason}\"}} {n}");
        }
        if let Some(render) = self.backend.get() {
            out.push_str(&render());
        }
        if let Some(render) = self.probes.get() {
            out.push_str(&render());
        }
        out
    }
}

/// Serves health and metrics on `addr` until the task is dropped.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                warn!(error = %e, "accept on health endpoint");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = tokio::time::timeout(Duration::from_secs(5), answer(stream, &metrics))
                .await
                .unwrap_or(Ok(()))
            {
                debug!(%peer, error = %e, "health request");
            }
        });
    }
}

async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut buf = [0u8; 2048];
    let mut len = 0;
    while len < buf.len() {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") || buf[..len].contains(&b'\n') {
            break;
        }
    }
    let request = String::from_utf8_lossy(&buf[..len]);
    let (status, content_type, body) = route(&request, metrics);
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Maps a request's first line to status, content type and body.
fn route(request: &str, metrics: &Metrics) -> (&'static str, &'static str, String) {
    let mut words = request.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        return (
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n".into(),
        );
    }
    match path {
        "/healthz" => ("200 OK", "text/plain", "ok\n".into()),
        "/readyz" if metrics.ready.load(Ordering::Relaxed) => {
            ("200 OK", "text/plain", "ready\n".into())
        }
        "/readyz" => (
            "503 Service Unavailable",
            "text/plain",
            "not ready\n".into(),
        ),
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
        _ => ("404 Not Found", "text/plain", "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_health_and_readiness() {
        let m = Metrics::default();
        assert_eq!(route("GET /healthz HTTP/1.1\r\n", &m).0, "200 OK");
        assert_eq!(
            route("GET /readyz HTTP/1.1\r\n", &m).0,
            "503 Service Unavailable"
        );
        m.ready.store(true, Ordering::Relaxed);
        assert_eq!(route("GET /readyz HTTP/1.1\r\n", &m).0, "200 OK");
        assert_eq!(route("GET /nope HTTP/1.1\r\n", &m).0, "404 Not Found");
        assert_eq!(
            route("POST /healthz HTTP/1.1\r\n", &m).0,
            "405 Method Not Allowed"
        );
    }

    #[test]
    fn metrics_render_prometheus_text() {
        let m = Metrics::default();
        m.record_reconcile(Duration::from_millis(12), 1000, 1000, 3000, 2, false);
        let text = m.render();
        assert!(text.contains("weft_peers_desired 1000\n"), "{text}");
        assert!(text.contains("weft_reconcile_runs_total 1\n"), "{text}");
        assert!(
            text.contains("weft_reconcile_last_duration_seconds 0.012000\n"),
            "{text}"
        );
        assert!(
            text.contains("weft_kernel_entries_removed_total 2\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE weft_etcd_errors_total counter\n"),
            "{text}"
        );
        m.count_rejected_lease("public_ip");
        m.count_rejected_lease("public_ip");
        m.count_rejected_lease("vni");
        m.config_changes_refused.fetch_add(1, Ordering::Relaxed);
        let text = m.render();
        assert!(
            text.contains("weft_leases_rejected_total{reason=\"public_ip\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("weft_leases_rejected_total{reason=\"vni\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("weft_config_changes_total{result=\"refused\"} 1\n"),
            "{text}"
        );
    }
}
