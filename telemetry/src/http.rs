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
    /// Registries of other components of this process served on the same endpoint, each
    /// with the label that marks its samples (see `merge`).
    extra: Vec<(Registry, (String, String))>,
    process: ProcessMetrics,
    health: Arc<Health>,
}

/// The OpenMetrics text content type `prometheus-client` encodes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format, for scrapers that do not ask for OpenMetrics.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Rewrites OpenMetrics text as Prometheus text format 0.0.4: counter families are named
/// with their `_total` samples' name, and `# UNIT` / `# EOF` lines go. Prometheus asks for
/// OpenMetrics and gets it unchanged; `promtool check metrics`, curl and older scrapers
/// get this form.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        openmetrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = line.strip_prefix("# HELP ").map(|r| ("# HELP ", r)).or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        match meta {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{kind}{name}_total {tail}\n"));
                } else {
                    out.push_str(line);
                    out.push('\n');
                }
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

async fn metrics(State(s): State<Arc<AppState>>, headers: axum::http::HeaderMap) -> impl IntoResponse {
    s.process.refresh();
    let mut body = String::new();
    if let Err(e) = encode(&mut body, &s.registry) {
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode metrics: {e}")).into_response();
    }
    if !s.extra.is_empty() {
        let mut texts = Vec::with_capacity(s.extra.len());
        for (registry, _) in &s.extra {
            let mut t = String::new();
            if let Err(e) = encode(&mut t, registry) {
                return (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode metrics: {e}")).into_response();
            }
            texts.push(t);
        }
        let mut parts: Vec<(&str, Option<(&str, &str)>)> = vec![(&body, None)];
        parts.extend(texts.iter().zip(&s.extra).map(|(t, (_, (n, v)))| (t.as_str(), Some((n.as_str(), v.as_str())))));
        body = crate::merge::merge_openmetrics(&parts);
    }
    let wants_openmetrics = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("application/openmetrics-text"));
    if wants_openmetrics {
        (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
    } else {
        (StatusCode::OK, [(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)], to_prometheus_text(&body)).into_response()
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
    registry: Registry,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_full(listener, registry, Vec::new(), health, Router::new(), shutdown).await
}

/// [`serve`], plus the routes of `routes` (the hub's status page). Handlers may extract
/// `ConnectInfo<SocketAddr>` (the peer), e.g. to log bad requests.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    registry: Registry,
    health: Arc<Health>,
    routes: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_full(listener, registry, Vec::new(), health, routes, shutdown).await
}

/// [`serve`], with the metrics of `extra` registries (other components of this process,
/// e.g. a scheduler on a thread of the hub) in the same `/metrics`; each adds its label,
/// such as `component="scheduler"`, to its samples.
pub async fn serve_merged(
    listener: tokio::net::TcpListener,
    registry: Registry,
    extra: Vec<(Registry, (String, String))>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_full(listener, registry, extra, health, Router::new(), shutdown).await
}

/// Everything: `/metrics` (with `extra` registries merged in), `/healthz`, `/readyz`, and
/// the routes of `routes`.
pub async fn serve_full(
    listener: tokio::net::TcpListener,
    mut registry: Registry,
    extra: Vec<(Registry, (String, String))>,
    health: Arc<Health>,
    routes: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let process = ProcessMetrics::register(&mut registry);
    let state = Arc::new(AppState { registry, extra, process, health });
    let app =
        Router::new().route("/metrics", get(metrics)).route("/healthz", get(healthz)).route("/readyz", get(readyz)).with_state(state).merge(routes);
    axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        get_with(addr, path, "").await
    }

    async fn get_with(addr: std::net::SocketAddr, path: &str, extra: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n").as_bytes()).await.expect("write");
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
        assert!(m.contains("# TYPE ippx_things_total counter"), "{m}");
        assert!(m.contains("process_resident_memory_bytes"), "{m}");
        assert!(!m.contains("# EOF"));
        let om = get_with(addr, "/metrics", "Accept: application/openmetrics-text; version=1.0.0\r\n").await;
        assert!(om.contains("# TYPE ippx_things counter"), "{om}");
        assert!(om.trim_end().ends_with("# EOF"));
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        health.ready.store(true, Ordering::Relaxed);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        health.children_ok.store(false, Ordering::Relaxed);
        assert!(get(addr, "/readyz").await.contains("scheduler down"));
        let _ = tx.send(());
        server.await.expect("join").expect("serve");
    }

    #[tokio::test]
    async fn merged_registries_share_families_and_the_endpoint() {
        let (mut hub, mut sched) = (Registry::default(), Registry::default());
        let (a, b): (Counter, Counter) = (Counter::default(), Counter::default());
        hub.sub_registry_with_prefix("ippx").register("things", "Things seen", a.clone());
        sched.sub_registry_with_prefix("ippx").register("things", "Things seen by the scheduler", b.clone());
        a.inc_by(3);
        b.inc_by(5);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let extra = vec![(sched, ("component".to_owned(), "scheduler".to_owned()))];
        let server = tokio::spawn(serve_merged(listener, hub, extra, Health::new(), async move {
            let _ = rx.await;
        }));
        let m = get(addr, "/metrics").await;
        assert_eq!(m.matches("# TYPE ippx_things_total counter").count(), 1, "{m}");
        assert!(m.contains("ippx_things_total 3\n"), "{m}");
        assert!(m.contains("ippx_things_total{component=\"scheduler\"} 5\n"), "{m}");
        assert!(m.contains("process_resident_memory_bytes"), "{m}");
        let om = get_with(addr, "/metrics", "Accept: application/openmetrics-text; version=1.0.0\r\n").await;
        assert_eq!(om.matches("# EOF").count(), 1, "{om}");
        let _ = tx.send(());
        server.await.expect("join").expect("serve");
    }
}
