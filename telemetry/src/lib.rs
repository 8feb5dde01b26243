//! Observability shared by `ippx-hub` and `ippx-scheduler`: the `/metrics`, `/healthz`
//! and `/readyz` endpoint, standard process metrics, and logging setup.
//!
//! Metrics are `prometheus-client` types: atomics that the socket thread updates and the
//! HTTP task reads at scrape time. The registry itself is built once at start-up and is
//! read-only afterwards, so it is shared without a lock.

pub mod http;
pub mod logging;
pub mod process;

pub use http::{serve, Health};
pub use prometheus_client;
