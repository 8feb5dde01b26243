//! The scheduler's Prometheus metrics. Handles are cloned out of the families once, so
//! the hot path only bumps atomics.

use ippx_telemetry::labels::{OutcomeLabel, QueueLabel, ReasonLabel, SocketLabel};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Every socket the scheduler reads, as a metric label.
pub const SOCKETS: &[&str] =
    &["mux_in", "mux_out", "control_in", "control_out", "iopub", "task_in", "task_out", "broadcast_in", "broadcast_out", "notification", "query"];

/// Reasons a message is dropped; a fixed set keeps label cardinality bounded.
/// `refused`: a signed request the task queue does not schedule (answered with an error);
/// `too_large`: a header or metadata frame over the task queue's limits (answered too).
pub const REASONS: &[&str] = &["bad_signature", "malformed", "replay", "unknown", "unroutable", "duplicate", "refused", "too_large"];

#[derive(Clone, Default)]
pub struct Counters {
    dropped: Family<ReasonLabel, Counter>,
    received: Family<SocketLabel, Counter>,
    submitted: Family<QueueLabel, Counter>,
    completed: Family<OutcomeLabel, Counter>,
    queued: Gauge,
    pending: Gauge,
    engines: Gauge,
    bcast_pending: Gauge,
    seen_ok: u64,
    seen_failed: u64,
    seen_submitted: u64,
}

impl Counters {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("ippx");
        r.register("messages_dropped", "Messages dropped by the scheduler, by reason", self.dropped.clone());
        r.register("messages_received", "Messages received by the scheduler, by socket", self.received.clone());
        r.register("scheduler_tasks_submitted", "Requests the scheduler accepted, by queue (task, broadcast)", self.submitted.clone());
        r.register("scheduler_tasks_completed", "Final replies the scheduler delivered, by queue and outcome", self.completed.clone());
        r.register("scheduler_tasks_unassigned", "Load-balanced tasks waiting in the scheduler for an engine or a dependency", self.queued.clone());
        r.register("scheduler_tasks_pending", "Load-balanced tasks sent to engines and not answered yet", self.pending.clone());
        r.register("scheduler_engines", "Engines the task scheduler routes to", self.engines.clone());
        r.register("scheduler_broadcasts_pending", "Coalescing broadcasts waiting for engine replies", self.bcast_pending.clone());
        // Create every label value up front so dashboards see zeros, not gaps.
        for reason in REASONS {
            let _ = self.dropped.get_or_create(&ReasonLabel { reason: (*reason).into() });
        }
        for s in SOCKETS {
            let _ = self.received.get_or_create(&SocketLabel { socket: (*s).into() });
        }
    }

    pub fn drop(&mut self, reason: &'static str) {
        self.dropped.get_or_create(&ReasonLabel { reason: reason.into() }).inc();
    }

    pub fn dropped(&self, reason: &str) -> u64 {
        self.dropped.get_or_create(&ReasonLabel { reason: reason.into() }).get()
    }

    /// A handle for counting messages on one socket, taken once at start-up.
    pub fn received(&self, socket: &str) -> Counter {
        self.received.get_or_create(&SocketLabel { socket: socket.into() }).clone()
    }

    pub fn broadcast_submitted(&self) {
        self.submitted.get_or_create(&QueueLabel { queue: "broadcast".into() }).inc();
    }

    pub fn broadcast_completed(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.completed.get_or_create(&OutcomeLabel { queue: "broadcast".into(), outcome: outcome.into() }).inc();
    }

    pub fn set_broadcasts_pending(&self, n: usize) {
        self.bcast_pending.set(n as i64);
    }

    /// Brings the task gauges and counters up to date with the scheduler's own stats.
    pub fn sync_task(&mut self, s: &crate::task::TaskStats) {
        self.queued.set(s.queued as i64);
        self.pending.set(s.pending as i64);
        self.engines.set(s.engines as i64);
        let task = || QueueLabel { queue: "task".into() };
        if s.submitted > self.seen_submitted {
            self.submitted.get_or_create(&task()).inc_by(s.submitted - self.seen_submitted);
            self.seen_submitted = s.submitted;
        }
        if s.completed > self.seen_ok {
            self.completed.get_or_create(&OutcomeLabel { queue: "task".into(), outcome: "ok".into() }).inc_by(s.completed - self.seen_ok);
            self.seen_ok = s.completed;
        }
        if s.failed > self.seen_failed {
            self.completed.get_or_create(&OutcomeLabel { queue: "task".into(), outcome: "error".into() }).inc_by(s.failed - self.seen_failed);
            self.seen_failed = s.failed;
        }
    }

    /// Drop counts by reason, for the exit log.
    pub fn dropped_summary(&self) -> Vec<(&'static str, u64)> {
        REASONS.iter().map(|r| (*r, self.dropped(r))).filter(|(_, n)| *n > 0).collect()
    }
}
