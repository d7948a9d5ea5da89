//! `--healthz-addr`: `/healthz`, `/readyz` and Prometheus `/metrics`, served by axum on hyper.
//!
//! The exposition text is written here rather than by a Prometheus client crate: its names are
//! a published interface (alerts, docs/grafana-dashboard.json), and the client crates rename
//! counters (`_total` moved out of `# TYPE`) and switch to OpenMetrics framing.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
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
        metric(
            "weft_image_gc_removed_total",
            "counter",
            "Unused images removed by automatic image garbage collection.",
            crate::pod::image_gc::GC_REMOVED
                .load(Ordering::Relaxed)
                .to_string(),
        );
        metric(
            "weft_image_gc_freed_bytes_total",
            "counter",
            "Bytes of image root filesystems freed by automatic image garbage collection.",
            crate::pod::image_gc::GC_FREED_BYTES
                .load(Ordering::Relaxed)
                .to_string(),
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

/// How long one connection may take in all: a slow or silent client gets no longer.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(5);

/// Serves health and metrics on `addr` until the task is dropped.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    let app = router(metrics);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                warn!(error = %e, "accept on health endpoint");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            // One request per connection, as before: nothing idles on the agent's sockets.
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_DEADLINE, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(%peer, error = %e, "health request"),
                Err(_) => debug!(%peer, "health request: no complete request in time"),
            }
        });
    }
}

/// `/healthz` (alive), `/readyz` (serving), `/metrics` (Prometheus text); 404 elsewhere, 405
/// for methods other than GET and HEAD.
fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(metrics)
}

async fn readyz(State(metrics): State<Arc<Metrics>>) -> (StatusCode, &'static str) {
    if metrics.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn render_metrics(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One request through the router, as hyper would hand it over: (status, body).
    async fn call(app: &Router, method: &str, path: &str) -> (u16, String) {
        use tower::ServiceExt as _;
        let request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .body(axum::body::Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn routes_health_and_readiness() {
        let m = Arc::new(Metrics::default());
        let app = router(m.clone());
        assert_eq!(call(&app, "GET", "/healthz").await, (200, "ok\n".into()));
        assert_eq!(call(&app, "GET", "/readyz").await.0, 503);
        m.ready.store(true, Ordering::Relaxed);
        assert_eq!(call(&app, "GET", "/readyz").await, (200, "ready\n".into()));
        assert_eq!(call(&app, "GET", "/readyz?verbose").await.0, 200);
        assert_eq!(call(&app, "HEAD", "/healthz").await.0, 200);
        assert_eq!(call(&app, "GET", "/nope").await.0, 404);
        assert_eq!(call(&app, "POST", "/healthz").await.0, 405);
        let (code, text) = call(&app, "GET", "/metrics").await;
        assert_eq!(code, 200);
        assert!(
            text.contains("# TYPE weft_etcd_errors_total counter\n"),
            "{text}"
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
