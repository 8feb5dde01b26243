//! The hub's Prometheus metrics. The hub state machine only counts (in `HubStats`); the
//! socket loop calls [`HubMetrics::sync`] after each batch of work, which turns those
//! counts into metric updates. Label values come from fixed sets so that cardinality
//! stays bounded whatever peers send.

use crate::hub::{Hub, Request};
use ippx_telemetry::labels::{OutcomeLabel, QueueLabel, ReasonLabel};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageLabel {
    pub socket: String,
    pub msg_type: String,
}

/// Message types we label by name besides the hub's own requests ([`Request::TYPES`]):
/// what engines and relays send. Anything else is `other`.
const OTHER_KNOWN_TYPES: &[&str] = &[
    "apply_request",
    "apply_reply",
    "execute_request",
    "execute_reply",
    "task_destination",
    "stream",
    "status",
    "error",
    "execute_input",
    "execute_result",
    "display_data",
    "data_message",
    "shutdown_reply",
    "iopub_welcome",
    "pong",
];

/// Drop reasons, fixed up front so dashboards show zeros rather than gaps.
/// `late`: a reply from a re-admitted engine to a request already failed with EngineError.
pub const REASONS: &[&str] = &["bad_signature", "malformed", "replay", "unknown", "late"];

pub fn type_label(msg_type: &str) -> &'static str {
    Request::TYPES.iter().map(|(t, _)| *t).chain(OTHER_KNOWN_TYPES.iter().copied()).find(|t| *t == msg_type).unwrap_or("other")
}

pub type Histograms = Family<QueueLabel, Histogram, fn() -> Histogram>;

pub struct HubMetrics {
    engines_registered: Counter,
    engines_readmitted: Counter,
    engines_lost: Counter,
    engines_connected: Gauge,
    submitted: Family<QueueLabel, Counter>,
    completed: Family<OutcomeLabel, Counter>,
    pending: Gauge,
    unassigned: Gauge,
    latency: Histograms,
    run: Histograms,
    received: Family<MessageLabel, Counter>,
    dropped: Family<ReasonLabel, Counter>,
    missed_beats: Counter,
    queries: Counter,
    store_culled: Counter,
    store_writes: Counter,
    store_durable: Counter,
    store_errors: Counter,
    store_records: Gauge,
    store_bytes: Gauge,
    /// Commit time of each SQLite write batch, observed by the store's writer thread
    /// (handed to it through `SqliteConfig::batch_seconds`).
    sqlite_batch: Histogram,
    /// Counts already exported, so that each sync adds only the difference.
    seen: BTreeMap<String, u64>,
}

fn latency_buckets() -> Histogram {
    // 50 µs … ~100 s
    Histogram::new(exponential_buckets(50e-6, 2.0, 22))
}

impl Default for HubMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl HubMetrics {
    pub fn new() -> Self {
        HubMetrics {
            engines_registered: Counter::default(),
            engines_readmitted: Counter::default(),
            engines_lost: Counter::default(),
            engines_connected: Gauge::default(),
            submitted: Family::default(),
            completed: Family::default(),
            pending: Gauge::default(),
            unassigned: Gauge::default(),
            latency: Family::new_with_constructor(latency_buckets),
            run: Family::new_with_constructor(latency_buckets),
            received: Family::default(),
            dropped: Family::default(),
            missed_beats: Counter::default(),
            queries: Counter::default(),
            store_culled: Counter::default(),
            store_writes: Counter::default(),
            store_durable: Counter::default(),
            store_errors: Counter::default(),
            store_records: Gauge::default(),
            store_bytes: Gauge::default(),
            sqlite_batch: Histogram::new(exponential_buckets(20e-6, 2.0, 20)),
            seen: BTreeMap::new(),
        }
    }

    /// The SQLite write-batch histogram, for the store's configuration.
    pub fn sqlite_batch_seconds(&self) -> Histogram {
        self.sqlite_batch.clone()
    }

    pub fn register(&self, registry: &mut Registry) {
        ippx_telemetry::register_build_info(registry, "hub");
        let r = registry.sub_registry_with_prefix("ippx");
        r.register("engines_registered", "Engines whose registration completed", self.engines_registered.clone());
        r.register(
            "engines_readmitted",
            "Engines declared dead whose heart answered again, registered again under their id",
            self.engines_readmitted.clone(),
        );
        r.register("engines_lost", "Engines unregistered (exit, crash or stopped heart)", self.engines_lost.clone());
        r.register("engines_connected", "Engines currently registered", self.engines_connected.clone());
        r.register("tasks_submitted", "Requests seen by the hub, by queue (mux, task)", self.submitted.clone());
        r.register("tasks_completed", "Final replies seen by the hub, by queue and outcome (ok, error, aborted)", self.completed.clone());
        r.register("tasks_pending", "Requests submitted and not answered yet", self.pending.clone());
        r.register("tasks_unassigned", "Load-balanced tasks not yet sent to an engine", self.unassigned.clone());
        r.register_with_unit(
            "task_latency",
            "Time from the hub seeing a request to it seeing the reply, by queue",
            Unit::Seconds,
            self.latency.clone(),
        );
        r.register_with_unit(
            "task_run",
            "Time from an engine starting a task to its reply (engine clock), by queue",
            Unit::Seconds,
            self.run.clone(),
        );
        r.register("messages_received", "Messages received by the hub, by socket and msg_type", self.received.clone());
        r.register("messages_dropped", "Messages the hub dropped, by reason", self.dropped.clone());
        r.register("heartbeats_missed", "Heartbeats engines failed to answer in time", self.missed_beats.clone());
        r.register("queries", "Requests handled on the query socket", self.queries.clone());
        r.register("store_culled_records", "Records removed by the store's limits", self.store_culled.clone());
        r.register("store_writes", "Record writes handed to the store", self.store_writes.clone());
        r.register("store_durable_writes", "Record writes the store has made durable", self.store_durable.clone());
        r.register("store_errors", "Store failures", self.store_errors.clone());
        r.register("store_records", "Task records held by the in-memory store", self.store_records.clone());
        r.register_with_unit("store", "Bytes of buffers held by the in-memory store", Unit::Bytes, self.store_bytes.clone());
        r.register_with_unit("sqlite_write_batch", "Commit time of SQLite write batches", Unit::Seconds, self.sqlite_batch.clone());
        for reason in REASONS {
            let _ = self.dropped.get_or_create(&ReasonLabel { reason: (*reason).into() });
        }
        for q in ["mux", "task"] {
            let _ = self.submitted.get_or_create(&QueueLabel { queue: q.into() });
            let _ = self.latency.get_or_create(&QueueLabel { queue: q.into() });
            let _ = self.run.get_or_create(&QueueLabel { queue: q.into() });
            for o in ["ok", "error", "aborted"] {
                let _ = self.completed.get_or_create(&OutcomeLabel { queue: q.into(), outcome: o.into() });
            }
        }
    }

    /// The task latency histograms (shared, not copied), for the status page.
    pub fn latency_family(&self) -> Histograms {
        self.latency.clone()
    }

    /// Counts one received message.
    pub fn received(&self, socket: &'static str, msg_type: &str) {
        self.received.get_or_create(&MessageLabel { socket: socket.into(), msg_type: type_label(msg_type).into() }).inc();
    }

    fn add(&mut self, key: String, now: u64, c: &Counter) {
        let seen = self.seen.entry(key).or_default();
        if now > *seen {
            c.inc_by(now - *seen);
            *seen = now;
        }
    }

    /// Exports what the hub counted since the last call.
    pub fn sync(&mut self, hub: &mut Hub) {
        let s = &mut hub.stats;
        let latencies = std::mem::take(&mut s.latencies);
        let (registered, unregistered, missed, queries) = (s.registered, s.unregistered, s.missed_beats, s.queries);
        let readmitted = s.readmitted;
        let dropped: Vec<(&'static str, u64)> = s.dropped.iter().map(|(k, v)| (*k, *v)).collect();
        let submitted: Vec<(&'static str, u64)> = s.submitted.iter().map(|(k, v)| (*k, *v)).collect();
        let completed: Vec<((&'static str, &'static str), u64)> = s.completed.iter().map(|(k, v)| (*k, *v)).collect();
        for l in latencies {
            let q = QueueLabel { queue: l.queue.into() };
            self.latency.get_or_create(&q).observe(l.turnaround);
            if let Some(r) = l.run {
                self.run.get_or_create(&q).observe(r);
            }
        }
        let c = self.engines_registered.clone();
        self.add("registered".into(), registered, &c);
        let c = self.engines_readmitted.clone();
        self.add("readmitted".into(), readmitted, &c);
        let c = self.engines_lost.clone();
        self.add("unregistered".into(), unregistered, &c);
        let c = self.missed_beats.clone();
        self.add("missed".into(), missed, &c);
        let c = self.queries.clone();
        self.add("queries".into(), queries, &c);
        for (reason, n) in dropped {
            let c = self.dropped.get_or_create(&ReasonLabel { reason: reason.into() }).clone();
            self.add(format!("drop/{reason}"), n, &c);
        }
        for (queue, n) in submitted {
            let c = self.submitted.get_or_create(&QueueLabel { queue: queue.into() }).clone();
            self.add(format!("sub/{queue}"), n, &c);
        }
        for ((queue, outcome), n) in completed {
            let c = self.completed.get_or_create(&OutcomeLabel { queue: queue.into(), outcome: outcome.into() }).clone();
            self.add(format!("done/{queue}/{outcome}"), n, &c);
        }
        let st = hub.store().stats();
        for (key, n, c) in [
            ("culled", st.culled, self.store_culled.clone()),
            ("writes", st.writes, self.store_writes.clone()),
            ("durable", st.durable, self.store_durable.clone()),
            ("errors", st.errors, self.store_errors.clone()),
        ] {
            self.add(format!("store/{key}"), n, &c);
        }
        if let Some(n) = st.records {
            self.store_records.set(n as i64);
        }
        if let Some(b) = st.bytes {
            self.store_bytes.set(b as i64);
        }
        self.engines_connected.set(hub.registry().len() as i64);
        self.pending.set(hub.pending_count() as i64);
        self.unassigned.set(hub.unassigned_count() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_types_collapse_to_other() {
        assert_eq!(type_label("apply_request"), "apply_request");
        assert_eq!(type_label("x".repeat(1000).as_str()), "other");
    }
}
