//! `--healthz-addr`: `/healthz`, `/readyz` and Prometheus `/metrics`, served by axum on hyper.
//!
//! `/metrics` is encoded by `prometheus-client` in the OpenMetrics text format: a counter's
//! samples end in `_total` (`weft_etcd_errors_total`), its `# TYPE` line names the family
//! without it (`weft_etcd_errors`), and the text ends with `# EOF`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeMetric, MetricEncoder,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
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
    /// Of those, full passes (every lease judged, the kernel read back); the rest were
    /// incremental (only changed leases).
    pub reconcile_full_runs: AtomicU64,
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

/// A backend's or the prober's own metrics, encoded into `/metrics` on every scrape.
pub type BackendMetrics = Arc<dyn Collector>;

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

    /// Renders `/metrics` in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut registry = Registry::default();
        self.register_snapshot(&mut registry);
        for extra in [self.backend.get(), self.probes.get()]
            .into_iter()
            .flatten()
        {
            registry.register_collector(Box::new(SharedCollector(extra.clone())));
        }
        let mut out = String::new();
        // Encoding into a String cannot fail: fmt::Write for String never errors.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    /// Registers the current value of every agent metric. Counters are registered without
    /// `_total`: the encoder appends it to the sample (`weft_etcd_errors_total 3`) and names
    /// the family without it (`# TYPE weft_etcd_errors counter`), as OpenMetrics asks.
    fn register_snapshot(&self, r: &mut Registry) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let secs = |a: &AtomicU64| load(a) as f64 / 1e6;
        let flag = |b: &AtomicBool| u64::from(b.load(Ordering::Relaxed));
        let gauge = ConstGauge::new;
        let counter = ConstCounter::new;
        r.register(
            "weft_peers_desired",
            "Peers the etcd lease table asks for.",
            gauge(load(&self.peers_desired)),
        );
        r.register(
            "weft_peers_programmed",
            "Peers programmed in the kernel by the last reconcile.",
            gauge(load(&self.peers_programmed)),
        );
        r.register(
            "weft_reconcile_runs",
            "Reconcile runs.",
            counter(load(&self.reconcile_runs)),
        );
        r.register(
            "weft_reconcile_full_runs",
            "Reconcile runs that were full passes (the rest applied only changed leases).",
            counter(load(&self.reconcile_full_runs)),
        );
        r.register(
            "weft_reconcile_failures",
            "Reconcile runs with errors.",
            counter(load(&self.reconcile_failures)),
        );
        r.register(
            "weft_reconcile_last_duration_seconds",
            "Duration of the last reconcile.",
            ConstGauge::new(secs(&self.reconcile_last_micros)),
        );
        r.register(
            "weft_reconcile_duration_seconds",
            "Time spent reconciling.",
            ConstCounter::new(secs(&self.reconcile_total_micros)),
        );
        r.register(
            "weft_kernel_entries_added",
            "Routes, neighbours and FDB entries added.",
            counter(load(&self.entries_added)),
        );
        r.register(
            "weft_kernel_entries_removed",
            "Stale routes, neighbours and FDB entries removed.",
            counter(load(&self.entries_removed)),
        );
        r.register(
            "weft_etcd_errors",
            "Failed etcd operations.",
            counter(load(&self.etcd_errors)),
        );
        r.register(
            "weft_lease_expiry_timestamp_seconds",
            "Own subnet lease expiry (Unix time); 0 for a reservation.",
            ConstGauge::new(self.lease_expiry_unix.load(Ordering::Relaxed)),
        );
        r.register(
            "weft_ready",
            "1 when the node serves its subnet.",
            gauge(flag(&self.ready)),
        );
        // Not `weft_leases_rejected`: that is the family name of the counter below.
        r.register(
            "weft_leases_rejected_now",
            "Leases in etcd currently refused by validation.",
            gauge(load(&self.leases_rejected_now)),
        );
        r.register(
            "weft_routes_refused",
            "Peer routes refused by the kernel guard (own addresses, underlay, etcd, default route).",
            counter(load(&self.routes_refused)),
        );
        r.register(
            "weft_own_lease_taken_over",
            "1 while the node recovers from another writer taking its lease.",
            gauge(flag(&self.own_lease_taken_over)),
        );
        r.register(
            "weft_own_lease_takeovers",
            "Times another writer took this node's lease.",
            counter(load(&self.own_lease_takeovers)),
        );
        r.register(
            "weft_config_change_refused",
            "1 while the network config in etcd differs from the running one in a way not applied live.",
            gauge(flag(&self.config_change_refused)),
        );
        r.register(
            "weft_image_gc_removed",
            "Unused images removed by automatic image garbage collection.",
            counter(crate::pod::image_gc::GC_REMOVED.load(Ordering::Relaxed)),
        );
        r.register(
            "weft_image_gc_freed_bytes",
            "Bytes of image root filesystems freed by automatic image garbage collection.",
            counter(crate::pod::image_gc::GC_FREED_BYTES.load(Ordering::Relaxed)),
        );
        r.register(
            "weft_config_changes",
            "Network config changes seen while running, by result.",
            ByLabel {
                key: "result",
                rows: vec![
                    ("applied", counter(load(&self.config_changes_applied))),
                    ("refused", counter(load(&self.config_changes_refused))),
                ],
            },
        );
        let by_reason = self
            .leases_rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(reason, n)| (*reason, counter(*n)))
            .collect();
        r.register(
            "weft_leases_rejected",
            "Lease revisions refused by validation, by reason.",
            ByLabel {
                key: "reason",
                rows: by_reason,
            },
        );
    }
}

/// One metric family with one label, its samples in the given order (the crate's `Family`
/// keeps a hash map, so its samples come out in no stable order).
#[derive(Debug)]
struct ByLabel<M> {
    key: &'static str,
    rows: Vec<(&'static str, M)>,
}

impl<M: EncodeMetric + TypedMetric> EncodeMetric for ByLabel<M> {
    fn encode(&self, mut encoder: MetricEncoder) -> std::fmt::Result {
        for (value, metric) in &self.rows {
            let labels = [(self.key, *value)];
            metric.encode(encoder.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }
}

/// Encodes one gauge family with one label, a sample per `(label value, value)` row; for the
/// collectors that read their rows at scrape time (the UDP data path, the peer prober).
pub fn encode_gauges<'a, N: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    key: &str,
    rows: impl Iterator<Item = (&'a str, N)>,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (value, n) in rows {
        let labels = [(key, value)];
        ConstGauge::new(n).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A backend's or the prober's collector, shared between scrapes.
#[derive(Debug)]
struct SharedCollector(Arc<dyn Collector>);

impl Collector for SharedCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
        self.0.encode(encoder)
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
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
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
        assert!(text.contains("# TYPE weft_etcd_errors counter\n"), "{text}");
    }

    #[test]
    fn metrics_render_prometheus_text() {
        let m = Metrics::default();
        m.record_reconcile(Duration::from_millis(12), 1000, 1000, 3000, 2, false);
        let text = m.render();
        assert!(text.contains("weft_peers_desired 1000\n"), "{text}");
        assert!(text.contains("weft_reconcile_runs_total 1\n"), "{text}");
        assert!(
            text.contains("weft_reconcile_last_duration_seconds 0.012\n"),
            "{text}"
        );
        assert!(
            text.contains("weft_kernel_entries_removed_total 2\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE weft_etcd_errors counter\nweft_etcd_errors_total 0\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
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
        assert!(text.contains("weft_leases_rejected_now 0\n"), "{text}");
    }
}
