//! The proxy's HTTP side: `/metrics` (Prometheus text format), `/healthz`
//! (the process is up), `/readyz` (the primary answers the monitor), and
//! the live dashboard at `/` ([`dashboard`]), which draws `/metrics`.

mod dashboard;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::server::ProxyHandle;

/// Installs the Prometheus recorder for this process. Call once, before
/// anything records; a second call (tests) gets `None`.
pub fn install_recorder() -> Option<PrometheusHandle> {
    PrometheusBuilder::new()
        .set_buckets(&crate::metrics::latency::BUCKETS_SECONDS)
        .ok()?
        .install_recorder()
        .ok()
}

#[derive(Clone)]
struct Endpoint {
    proxy: Arc<ProxyHandle>,
    handle: PrometheusHandle,
}

/// Serves the endpoints on `listener` until the process ends.
pub async fn serve(
    proxy: Arc<ProxyHandle>,
    handle: PrometheusHandle,
    listener: tokio::net::TcpListener,
) -> std::io::Result<()> {
    // Keep the server-connection gauges and recorder housekeeping current.
    let refresher = proxy.clone();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let current = refresher.get();
            publish(&current);
            upkeep.run_upkeep();
        }
    });
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .merge(dashboard::routes())
        .with_state(Endpoint { proxy, handle });
    axum::serve(listener, app).await
}

async fn metrics(State(endpoint): State<Endpoint>) -> String {
    let current = endpoint.proxy.get();
    publish(&current);
    let mut text = endpoint.handle.render();
    current.stats.render_latency(&mut text);
    text
}

/// Sets the gauges read from the proxy's state rather than recorded as
/// things happen: pools, the monitor's positions, the causal map's size.
fn publish(current: &crate::server::Proxy) {
    current.publish_pool_metrics();
    crate::metrics::positions(&current.monitor.positions(), &current.primary.name);
    crate::metrics::causal_map(current.causal.len());
}

/// 200 `ready` with a primary; 200 `degraded: no primary` while only
/// replicas answer (clients can log in and read; writes get an error);
/// 503 when no server answers at all.
async fn ready(State(endpoint): State<Endpoint>) -> (StatusCode, &'static str) {
    let (primary, replica) = endpoint
        .proxy
        .get()
        .monitor
        .with_positions(|p| (p.has_primary(), p.replicas.iter().any(|r| r.healthy)));
    match (primary, replica) {
        (true, _) => (StatusCode::OK, "ready\n"),
        (false, true) => (StatusCode::OK, "degraded: no primary (reads only)\n"),
        (false, false) => (StatusCode::SERVICE_UNAVAILABLE, "no server reachable\n"),
    }
}
