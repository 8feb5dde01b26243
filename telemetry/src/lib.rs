//! Observability shared by `ippx-hub` and `ippx-scheduler`: the `/metrics`, `/healthz`
//! and `/readyz` endpoint, standard process metrics, and logging setup.
//!
//! Metrics are `prometheus-client` types: atomics that the socket thread updates and the
//! HTTP task reads at scrape time. The registry itself is built once at start-up and is
//! read-only afterwards, so it is shared without a lock.

pub mod budget;
pub mod http;
pub mod labels;
pub mod logging;
pub mod merge;
pub mod process;

pub use http::{serve, serve_merged, Health};
pub use prometheus_client;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    component: String,
}

/// Registers `ippx_build_info{version, component} 1`. A gauge rather than an OpenMetrics
/// `info` metric, because the Prometheus text parser (and `promtool check metrics`)
/// does not know the `info` type.
pub fn register_build_info(registry: &mut Registry, component: &str) {
    let f = Family::<BuildLabels, Gauge>::default();
    f.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION").into(), component: component.into() }).set(1);
    registry.sub_registry_with_prefix("ippx").register("build_info", "ippx build information", f);
}
