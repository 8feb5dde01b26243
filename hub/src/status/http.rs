//! The status page's routes, merged into the metrics server (`ippx_telemetry::http`):
//! `/` (the page, built into the binary), `/api/status` and `/api/timeline`.
//!
//! Read-only: no route changes anything in the hub. Query parameters that do not parse
//! are answered with 400 and counted (`http.bad_requests` in `/api/status`), with the
//! peer in the log.

use super::api;
use super::collect::{Sort, StatusError, StatusLink, StatusQuery, MAX_PAGE};
use super::timeline;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::{Registry, Unit};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tracing::warn;

/// The page: HTML, CSS and JavaScript in one file, no external resources.
pub const PAGE: &str = include_str!("page.html");

/// The latency family's name as encoded.
const LATENCY: &str = "ippx_task_latency_seconds";

struct StatusHttp {
    link: StatusLink,
    /// A registry holding only the hub's latency histogram family (shared with the
    /// metrics registry: same counters), encoded per request and read back.
    latency: Registry,
    bad_requests: AtomicU64,
}

/// The routes, with their state. `latency` is the hub metrics' task latency family
/// ([`crate::metrics::HubMetrics::latency_family`]).
pub fn router(link: StatusLink, latency: crate::metrics::Histograms) -> Router {
    let mut reg = Registry::default();
    reg.sub_registry_with_prefix("ippx").register_with_unit(
        "task_latency",
        "Time from the hub seeing a request to it seeing the reply, by queue",
        Unit::Seconds,
        latency,
    );
    let state = Arc::new(StatusHttp { link, latency: reg, bad_requests: AtomicU64::new(0) });
    Router::new().route("/", get(page)).route("/api/status", get(status)).route("/api/timeline", get(timeline_json)).with_state(state)
}

async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], PAGE).into_response()
}

/// `offset`, `limit` and `sort` from `?engines_offset=N&engines_limit=N&engines_sort=S`.
pub fn parse_query(q: Option<&str>) -> Result<StatusQuery, String> {
    let mut out = StatusQuery::default();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "engines_offset" => out.offset = v.parse().map_err(|_| format!("engines_offset must be a non-negative integer, not {v:?}"))?,
            "engines_limit" => {
                out.limit = v.parse().map_err(|_| format!("engines_limit must be a non-negative integer, not {v:?}"))?;
                if out.limit > MAX_PAGE {
                    return Err(format!("engines_limit is at most {MAX_PAGE}"));
                }
            }
            "engines_sort" => {
                out.sort = Sort::parse(v).ok_or_else(|| format!("engines_sort is one of id, busy, done, heartbeat, host, not {v:?}"))?
            }
            // Cache busters and the like.
            _ => {}
        }
    }
    Ok(out)
}

fn json(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], body).into_response()
}

fn unavailable(e: &StatusError) -> Response {
    let code = match e {
        StatusError::Busy => StatusCode::SERVICE_UNAVAILABLE,
        StatusError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        StatusError::Gone => StatusCode::SERVICE_UNAVAILABLE,
    };
    (code, format!("{e}\n")).into_response()
}

impl StatusHttp {
    fn bad(&self, peer: SocketAddr, path: &str, why: String) -> Response {
        self.bad_requests.fetch_add(1, Ordering::Relaxed);
        warn!(peer = %peer, path, "bad status request: {why}");
        (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response()
    }

    fn latency(&self) -> std::collections::BTreeMap<String, api::Latency> {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.latency).is_err() {
            return Default::default();
        }
        api::latency_from_text(&text, LATENCY)
    }
}

async fn status(State(s): State<Arc<StatusHttp>>, ConnectInfo(peer): ConnectInfo<SocketAddr>, uri: Uri) -> Response {
    let q = match parse_query(uri.query()) {
        Ok(q) => q,
        Err(why) => return s.bad(peer, "/api/status", why),
    };
    match s.link.status(q).await {
        Ok(mut st) => {
            st.latency = s.latency();
            st.http.bad_requests = s.bad_requests.load(Ordering::Relaxed);
            match serde_json::to_string(&st) {
                Ok(body) => json(body),
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the status: {e}\n")).into_response(),
            }
        }
        Err(e) => unavailable(&e),
    }
}

async fn timeline_json(State(s): State<Arc<StatusHttp>>, uri: Uri) -> Response {
    match s.link.timeline().await {
        Ok(export) => {
            let body = timeline::to_trace_json(&export);
            let download = uri.query().unwrap_or("").split('&').any(|p| p == "download=1");
            let mut r = json(body);
            if download {
                if let Ok(v) = "attachment; filename=\"ippx-timeline.json\"".parse() {
                    r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
                }
            }
            r
        }
        Err(e) => unavailable(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_or_say_why_not() {
        assert_eq!(parse_query(None), Ok(StatusQuery::default()));
        assert_eq!(
            parse_query(Some("engines_offset=50&engines_limit=25&engines_sort=heartbeat&_=123")),
            Ok(StatusQuery { offset: 50, limit: 25, sort: Sort::Heartbeat })
        );
        assert!(parse_query(Some("engines_offset=-1")).is_err());
        assert!(parse_query(Some("engines_limit=99999999")).is_err());
        assert!(parse_query(Some("engines_sort=%00")).is_err());
        assert!(parse_query(Some("engines_limit")).is_err());
    }

    #[test]
    fn the_page_is_self_contained() {
        assert!(PAGE.contains("/api/status"));
        // No external resources: nothing is loaded from another origin.
        for needle in ["http://", "https://", "<link ", "src=\"//", "@import"] {
            assert!(!PAGE.contains(needle), "page refers to {needle}");
        }
    }
}
