//! The HTTP side: a server that takes an already-bound listener and a shutdown future.

use crate::process::ProcessMetrics;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Liveness and readiness flags, set by the process that owns the sockets.
#[derive(Debug, Default)]
pub struct Health {
    /// Sockets bound and connection files written.
    pub ready: AtomicBool,
    /// False once a required child (the scheduler) has died.
    pub children_ok: AtomicBool,
}

impl Health {
    pub fn new() -> Arc<Self> {
        Arc::new(Health { ready: AtomicBool::new(false), children_ok: AtomicBool::new(true) })
    }
}

struct AppState {
    registry: Registry,
    process: ProcessMetrics,
    health: Arc<Health>,
}

/// The OpenMetrics text content type `prometheus-client` encodes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn metrics(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    s.process.refresh();
    let mut body = String::new();
    match encode(&mut body, &s.registry) {
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode metrics: {e}")).into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    let ready = s.health.ready.load(Ordering::Relaxed);
    let children = s.health.children_ok.load(Ordering::Relaxed);
    match (ready, children) {
        (true, true) => (StatusCode::OK, "ready\n"),
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
        (true, false) => (StatusCode::SERVICE_UNAVAILABLE, "scheduler down\n"),
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown` resolves.
/// `registry` gets the standard `process_*` metrics added to it.
pub async fn serve(
    listener: tokio::net::TcpListener,
    mut registry: Registry,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let process = ProcessMetrics::register(&mut registry);
    let state = Arc::new(AppState { registry, process, health });
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let mut reg = Registry::default();
        let c: Counter = Counter::default();
        reg.sub_registry_with_prefix("ippx").register("things", "Things seen", c.clone());
        c.inc_by(3);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let health = Health::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let h = health.clone();
        let server = tokio::spawn(serve(listener, reg, h, async move {
            let _ = rx.await;
        }));
        let m = get(addr, "/metrics").await;
        assert!(m.contains("ippx_things_total 3"), "{m}");
        assert!(m.contains("process_resident_memory_bytes"), "{m}");
        assert!(m.trim_end().ends_with("# EOF"));
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        health.ready.store(true, Ordering::Relaxed);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        health.children_ok.store(false, Ordering::Relaxed);
        assert!(get(addr, "/readyz").await.contains("scheduler down"));
        let _ = tx.send(());
        server.await.expect("join").expect("serve");
    }
}
