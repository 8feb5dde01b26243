//! The `/api/status` document: its types (every field is documented in
//! docs/operations.md, "Status page and API"), and the latency summary read from the
//! hub's `ippx_task_latency_seconds` histogram.
//!
//! `version` changes only when a field is removed or changes meaning; fields may be added.

use serde::Serialize;
use std::collections::BTreeMap;

/// The schema version of [`Status`].
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Status {
    pub version: u32,
    pub ippx_version: &'static str,
    /// UTC, ISO 8601, when the snapshot was taken.
    pub generated_at: String,
    pub started_at: String,
    pub uptime_s: f64,
    pub heartbeat_period_s: f64,
    pub engines: Engines,
    pub tasks: Tasks,
    pub rates: Rates,
    /// By queue (`task`: load-balanced, `mux`: direct), from the metrics' histogram.
    pub latency: BTreeMap<String, Latency>,
    pub failures: Vec<FailureOut>,
    pub labels: Vec<LabelOut>,
    pub store: StoreOut,
    pub timeline: TimelineOut,
    pub http: HttpOut,
    pub cost: Cost,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Engines {
    pub registered: usize,
    /// Registered engines whose last heartbeat is older than two periods.
    pub late: usize,
    pub registered_total: u64,
    pub lost_total: u64,
    pub readded_total: u64,
    pub hosts: Vec<HostOut>,
    pub page: Page,
    pub list: Vec<EngineOut>,
    /// The most recently lost engines, newest first (at most 20).
    pub lost: Vec<LostOut>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Page {
    pub offset: usize,
    pub limit: usize,
    pub total: usize,
    pub sort: &'static str,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EngineOut {
    pub id: u64,
    pub uuid: String,
    pub host: Option<String>,
    /// `ok`, or `late` (no heartbeat answered for more than two periods).
    pub state: &'static str,
    pub running: usize,
    pub queued: usize,
    pub done: u64,
    pub last_heartbeat_age_s: Option<f64>,
    pub registered_age_s: f64,
    /// This id or uuid had been lost before and registered again.
    pub readded: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct HostOut {
    pub host: String,
    pub engines: usize,
    pub late: usize,
    pub running: usize,
    pub queued: usize,
    pub done: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LostOut {
    pub id: u64,
    pub uuid: String,
    pub host: Option<String>,
    pub lost_age_s: f64,
    pub registered_for_s: f64,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Tasks {
    pub submitted_total: u64,
    pub submitted_mux: u64,
    pub submitted_task: u64,
    pub completed_total: u64,
    pub failed_total: u64,
    pub aborted_total: u64,
    pub pending: usize,
    pub unassigned: usize,
    pub running: usize,
    pub queued: usize,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Rates {
    pub interval_s: u32,
    pub completed_per_s: Vec<u32>,
    pub failed_per_s: Vec<u32>,
    pub completed_per_s_10s: f64,
    pub failed_per_s_10s: f64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub sum_s: f64,
    pub mean_s: Option<f64>,
    pub p50_s: Option<f64>,
    pub p90_s: Option<f64>,
    pub p99_s: Option<f64>,
    /// Non-cumulative counts per bucket; `le` is the upper bound in seconds, null for +Inf.
    pub buckets: Vec<Bucket>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Bucket {
    pub le: Option<f64>,
    pub count: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FailureOut {
    pub msg_id: String,
    pub engine: Option<u64>,
    pub queue: &'static str,
    pub ename: String,
    pub evalue: String,
    pub label: Option<String>,
    pub age_s: f64,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct LabelOut {
    pub label: String,
    pub total: u64,
    pub done: u64,
    pub ok: u64,
    pub failed: u64,
    pub aborted: u64,
    pub pending: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct StoreOut {
    pub backend: &'static str,
    pub records: Option<u64>,
    pub bytes: Option<u64>,
    pub writes: u64,
    pub durable: u64,
    pub culled: u64,
    pub errors: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TimelineOut {
    pub tasks: usize,
    pub capacity: usize,
    pub finished_since_start: u64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct HttpOut {
    pub bad_requests: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Cost {
    /// Time the hub's thread spent building this snapshot.
    pub snapshot_build_us: f64,
}

/// Reads the `<name>_bucket`, `_sum` and `_count` samples of one histogram family from
/// OpenMetrics or Prometheus text, per value of its `queue` label.
pub fn latency_from_text(text: &str, name: &str) -> BTreeMap<String, Latency> {
    let mut cumulative: BTreeMap<String, Vec<(f64, u64)>> = BTreeMap::new();
    let mut out: BTreeMap<String, Latency> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (kind, rest) = if let Some(r) = rest.strip_prefix("_bucket") {
            ("bucket", r)
        } else if let Some(r) = rest.strip_prefix("_sum") {
            ("sum", r)
        } else if let Some(r) = rest.strip_prefix("_count") {
            ("count", r)
        } else {
            continue;
        };
        // A series without labels has no braces.
        let (labels, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once('}') {
                Some(lv) => lv,
                None => continue,
            },
            None if rest.starts_with(' ') => ("", rest),
            None => continue,
        };
        let value = value.split_whitespace().next().unwrap_or("");
        let mut queue = String::new();
        let mut le = None;
        for kv in labels.split(',') {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let v = v.trim_matches('"');
            match k.trim() {
                "queue" => queue = v.to_owned(),
                "le" => le = Some(if v == "+Inf" { f64::INFINITY } else { v.parse().unwrap_or(f64::NAN) }),
                _ => {}
            }
        }
        let entry = out.entry(queue.clone()).or_default();
        match kind {
            "sum" => entry.sum_s = value.parse().unwrap_or(0.0),
            "count" => entry.count = value.parse().unwrap_or(0),
            _ => {
                if let (Some(le), Ok(n)) = (le, value.parse::<u64>()) {
                    if !le.is_nan() {
                        cumulative.entry(queue).or_default().push((le, n));
                    }
                }
            }
        }
    }
    for (queue, mut cum) in cumulative {
        cum.sort_by(|a, b| a.0.total_cmp(&b.0));
        let entry = out.entry(queue).or_default();
        let mut prev = 0;
        entry.buckets = cum
            .iter()
            .map(|(le, n)| {
                let b = Bucket { le: le.is_finite().then_some(*le), count: n.saturating_sub(prev) };
                prev = *n;
                b
            })
            .collect();
        let total = cum.last().map_or(0, |c| c.1);
        entry.p50_s = quantile(&cum, total, 0.50);
        entry.p90_s = quantile(&cum, total, 0.90);
        entry.p99_s = quantile(&cum, total, 0.99);
    }
    for l in out.values_mut() {
        l.mean_s = (l.count > 0).then(|| l.sum_s / l.count as f64);
    }
    out
}

/// `histogram_quantile` as Prometheus computes it: linear inside the bucket that holds
/// the rank, the first bucket starting at 0; a rank in the +Inf bucket reports the
/// highest finite bound.
fn quantile(cum: &[(f64, u64)], total: u64, q: f64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower = (0.0, 0u64);
    for &(le, n) in cum {
        if n as f64 >= rank {
            if !le.is_finite() {
                return Some(lower.0);
            }
            let in_bucket = (n - lower.1) as f64;
            let frac = if in_bucket > 0.0 { (rank - lower.1 as f64) / in_bucket } else { 1.0 };
            return Some(lower.0 + (le - lower.0) * frac);
        }
        lower = (le, n);
    }
    Some(lower.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_is_read_from_the_histogram_text() {
        let text = "# TYPE ippx_task_latency_seconds histogram\n\
            ippx_task_latency_seconds_sum{queue=\"task\"} 0.5\n\
            ippx_task_latency_seconds_count{queue=\"task\"} 100\n\
            ippx_task_latency_seconds_bucket{le=\"0.001\",queue=\"task\"} 50\n\
            ippx_task_latency_seconds_bucket{le=\"0.002\",queue=\"task\"} 90\n\
            ippx_task_latency_seconds_bucket{le=\"0.004\",queue=\"task\"} 100\n\
            ippx_task_latency_seconds_bucket{le=\"+Inf\",queue=\"task\"} 100\n\
            ippx_task_latency_seconds_count{queue=\"mux\"} 0\n\
            ippx_task_latency_seconds_bucket{le=\"+Inf\",queue=\"mux\"} 0\n\
            ippx_task_run_seconds_count{queue=\"task\"} 7\n";
        let l = latency_from_text(text, "ippx_task_latency_seconds");
        let t = &l["task"];
        assert_eq!(t.count, 100);
        assert_eq!(t.mean_s, Some(0.005));
        assert_eq!(t.buckets.iter().map(|b| b.count).collect::<Vec<_>>(), [50, 40, 10, 0]);
        assert_eq!(t.buckets.last().map(|b| b.le), Some(None));
        assert!((t.p50_s.unwrap_or(0.0) - 0.001).abs() < 1e-12);
        assert!((t.p90_s.unwrap_or(0.0) - 0.002).abs() < 1e-12);
        assert!((t.p99_s.unwrap_or(0.0) - 0.0038).abs() < 1e-9);
        assert_eq!((l["mux"].count, l["mux"].p50_s), (0, None));
        assert_eq!(l.len(), 2, "the run histogram is another family");
    }

    #[test]
    fn real_encoded_histogram_round_trips() {
        use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
        let mut reg = prometheus_client::registry::Registry::default();
        let h = Histogram::new(exponential_buckets(50e-6, 2.0, 22));
        reg.sub_registry_with_prefix("ippx").register_with_unit("task_latency", "x", prometheus_client::registry::Unit::Seconds, h.clone());
        for _ in 0..10 {
            h.observe(0.0003);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).expect("encode");
        let l = latency_from_text(&text, "ippx_task_latency_seconds");
        let only = l.values().next().expect("one series");
        assert_eq!(only.count, 10);
        assert_eq!(only.buckets.len(), 23);
        let p50 = only.p50_s.expect("p50");
        assert!(p50 > 0.0002 && p50 <= 0.0004, "{p50}");
    }

    #[test]
    fn garbage_text_gives_nothing() {
        assert!(latency_from_text("ippx_task_latency_seconds_bucket{le=\"x\"} y\nippx_task_latency_seconds_bucket no", "ippx_task_latency_seconds")
            .values()
            .all(|l| l.buckets.is_empty() && l.count == 0));
    }
}
