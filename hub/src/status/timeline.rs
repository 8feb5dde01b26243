//! The recent-task ring behind `/api/timeline`, and its Chrome trace-event export.
//!
//! The ring is filled on the hub's thread for every finished task, so it is built to cost
//! next to nothing there: a fixed number of slots allocated as they are first used, then
//! reused in place (the msg_id and label `String`s keep their capacity), times as integer
//! nanoseconds since the hub started.
//!
//! The export follows the Trace Event Format (the JSON object form, `traceEvents`): one
//! `"ph":"X"` complete event per task with `ts`/`dur` in microseconds, on a track (`tid`)
//! per engine of one process (`pid` 1), and `"ph":"M"` metadata events naming the process
//! and each track. Perfetto and chrome://tracing open it.

use super::{Outcome, Queue};
use ippx_protocol::EngineId;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;

/// Tasks kept by default.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// One finished task.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Entry {
    pub msg_id: String,
    pub engine: Option<EngineId>,
    pub queue: Option<Queue>,
    pub outcome: Option<Outcome>,
    /// Nanoseconds since the hub started: request copy seen (or the reply, when the request
    /// was never seen), engine start (estimated, see [`Ring::push`]), reply seen.
    pub submitted_ns: u64,
    pub started_ns: u64,
    pub completed_ns: u64,
    /// Whether `started_ns` comes from the engine's `started` stamp.
    pub started_known: bool,
    /// Empty for no label.
    pub label: String,
}

/// A fixed-size ring of the last finished tasks.
#[derive(Debug)]
pub struct Ring {
    slots: Vec<Entry>,
    capacity: usize,
    /// Slot the next push overwrites once full.
    next: usize,
    /// Tasks pushed since start (so a reader can tell how many fell out).
    pub total: u64,
}

fn ns_since(start: Instant, t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(start).as_nanos()).unwrap_or(u64::MAX)
}

impl Ring {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Ring { slots: Vec::with_capacity(capacity), capacity, next: 0, total: 0 }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Records one finished task. The engine's `started` stamp is on the engine's clock,
    /// so only its run time (`run`: `started` to the reply's date, both engine clock) is
    /// used: the task is taken to have started `run` before the hub saw the reply, and
    /// never before the hub saw the request.
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        start: Instant,
        msg_id: &str,
        engine: Option<EngineId>,
        queue: Queue,
        outcome: Outcome,
        seen: Option<Instant>,
        run: Option<f64>,
        now: Instant,
        label: Option<&str>,
    ) {
        let completed_ns = ns_since(start, now);
        let submitted_ns = seen.map_or(completed_ns, |s| ns_since(start, s)).min(completed_ns);
        let (started_ns, started_known) = match run {
            Some(r) if r.is_finite() && r >= 0.0 => (completed_ns.saturating_sub((r * 1e9) as u64).max(submitted_ns), true),
            _ => (submitted_ns, false),
        };
        let slot = if self.slots.len() < self.capacity {
            self.slots.push(Entry::default());
            let i = self.slots.len() - 1;
            &mut self.slots[i]
        } else {
            let i = self.next;
            self.next = (self.next + 1) % self.capacity;
            &mut self.slots[i]
        };
        slot.msg_id.clear();
        slot.msg_id.push_str(msg_id);
        slot.label.clear();
        if let Some(l) = label {
            slot.label.push_str(l);
        }
        slot.engine = engine;
        slot.queue = Some(queue);
        slot.outcome = Some(outcome);
        slot.submitted_ns = submitted_ns;
        slot.started_ns = started_ns;
        slot.completed_ns = completed_ns;
        slot.started_known = started_known;
        self.total += 1;
    }

    /// The entries, oldest first (a copy, taken on the hub's thread for the HTTP side).
    pub fn entries(&self) -> Vec<Entry> {
        if self.slots.len() < self.capacity {
            return self.slots.clone();
        }
        let mut v = Vec::with_capacity(self.slots.len());
        v.extend_from_slice(&self.slots[self.next..]);
        v.extend_from_slice(&self.slots[..self.next]);
        v
    }
}

/// What `/api/timeline` is made from: the ring's entries plus track names.
#[derive(Clone, Debug, Default)]
pub struct Export {
    pub entries: Vec<Entry>,
    /// Engine id → a readable track name ("engine 3 (10.0.0.5)").
    pub engine_names: BTreeMap<u64, String>,
    pub total: u64,
    pub capacity: usize,
}

#[derive(Serialize)]
struct Trace<'a> {
    #[serde(rename = "traceEvents")]
    trace_events: Vec<Event<'a>>,
    #[serde(rename = "displayTimeUnit")]
    display_time_unit: &'static str,
    #[serde(rename = "otherData")]
    other_data: OtherData,
}

#[derive(Serialize)]
struct OtherData {
    producer: &'static str,
    tasks_in_trace: usize,
    tasks_finished_since_start: u64,
    ring_capacity: usize,
    time_base: &'static str,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Event<'a> {
    Complete {
        name: String,
        cat: &'static str,
        ph: &'static str,
        ts: f64,
        dur: f64,
        pid: u32,
        tid: u64,
        args: TaskArgs<'a>,
    },
    Meta {
        name: &'static str,
        ph: &'static str,
        pid: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        tid: Option<u64>,
        args: MetaArgs,
    },
}

#[derive(Serialize)]
struct TaskArgs<'a> {
    msg_id: &'a str,
    status: &'static str,
    queue: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    engine: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<&'a str>,
    submitted_us: f64,
    queued_us: f64,
    started_known: bool,
}

#[derive(Serialize)]
#[serde(untagged)]
enum MetaArgs {
    Name { name: String },
    Sort { sort_index: u64 },
}

/// The track of tasks that finished without reaching an engine (e.g. impossible
/// dependencies failed by the scheduler). Engine `n` is track `n + 1`.
pub const NO_ENGINE_TID: u64 = 0;
const PID: u32 = 1;

fn us(ns: u64) -> f64 {
    // Whole nanoseconds, as fractional microseconds.
    ns as f64 / 1000.0
}

/// The trace-event JSON for `export`. Events on one track never overlap: if the
/// estimated start of a task falls before the end of the previous task on the same
/// engine (clock skew between the engine's run time and the hub's view), it is moved to
/// that end, so viewers that require well-nested slices show every task.
pub fn to_trace_json(export: &Export) -> String {
    let mut events: Vec<Event<'_>> = Vec::with_capacity(export.entries.len() + 2 * export.engine_names.len() + 4);
    events.push(Event::Meta { name: "process_name", ph: "M", pid: PID, tid: None, args: MetaArgs::Name { name: "ippx engines".into() } });
    let mut tracks: BTreeMap<u64, Vec<&Entry>> = BTreeMap::new();
    for e in &export.entries {
        let tid = e.engine.map_or(NO_ENGINE_TID, |id| id.0.saturating_add(1));
        tracks.entry(tid).or_default().push(e);
    }
    for (tid, list) in tracks.iter_mut() {
        let name = match tid.checked_sub(1) {
            None => "no engine (failed in the scheduler)".to_owned(),
            Some(id) => export.engine_names.get(&id).cloned().unwrap_or_else(|| format!("engine {id}")),
        };
        events.push(Event::Meta { name: "thread_name", ph: "M", pid: PID, tid: Some(*tid), args: MetaArgs::Name { name } });
        events.push(Event::Meta { name: "thread_sort_index", ph: "M", pid: PID, tid: Some(*tid), args: MetaArgs::Sort { sort_index: *tid } });
        list.sort_by_key(|e| (e.started_ns, e.completed_ns));
        let mut prev_end = 0u64;
        for e in list.iter() {
            let start = e.started_ns.max(prev_end).min(e.completed_ns.max(prev_end));
            let end = e.completed_ns.max(start);
            prev_end = end;
            let status = e.outcome.map_or("ok", Outcome::name);
            let queue = e.queue.map_or("task", Queue::name);
            let base = if e.label.is_empty() { queue } else { e.label.as_str() };
            let name = if status == "ok" { base.to_owned() } else { format!("{base} ({status})") };
            events.push(Event::Complete {
                name,
                cat: status,
                ph: "X",
                ts: us(start),
                dur: us(end - start),
                pid: PID,
                tid: *tid,
                args: TaskArgs {
                    msg_id: &e.msg_id,
                    status,
                    queue,
                    engine: e.engine.map(|id| id.0),
                    label: (!e.label.is_empty()).then_some(e.label.as_str()),
                    submitted_us: us(e.submitted_ns),
                    queued_us: us(e.started_ns.saturating_sub(e.submitted_ns)),
                    started_known: e.started_known,
                },
            });
        }
    }
    let trace = Trace {
        trace_events: events,
        display_time_unit: "ms",
        other_data: OtherData {
            producer: concat!("ippx-hub ", env!("CARGO_PKG_VERSION")),
            tasks_in_trace: export.entries.len(),
            tasks_finished_since_start: export.total,
            ring_capacity: export.capacity,
            time_base: "microseconds since the hub started",
        },
    };
    serde_json::to_string(&trace).unwrap_or_else(|e| format!("{{\"traceEvents\":[],\"error\":\"{e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn ring_keeps_the_last_n_in_order_and_reuses_slots() {
        let t0 = Instant::now();
        let mut r = Ring::new(3);
        for i in 0..5u64 {
            r.push(t0, &format!("id{i}"), Some(EngineId(0)), Queue::Task, Outcome::Ok, Some(t0 + ms(i)), None, t0 + ms(i + 1), None);
        }
        let ids: Vec<String> = r.entries().into_iter().map(|e| e.msg_id).collect();
        assert_eq!(ids, ["id2", "id3", "id4"]);
        assert_eq!((r.len(), r.total), (3, 5));
        // Slots are reused in place: a shorter id fits the old capacity.
        let cap_before: Vec<usize> = r.slots.iter().map(|e| e.msg_id.capacity()).collect();
        r.push(t0, "x", None, Queue::Mux, Outcome::Error, None, None, t0 + ms(9), Some("lbl"));
        assert_eq!(r.slots.iter().map(|e| e.msg_id.capacity()).collect::<Vec<_>>(), cap_before);
        let last = r.entries().pop().expect("last");
        assert_eq!((last.msg_id.as_str(), last.label.as_str(), last.submitted_ns), ("x", "lbl", 9_000_000));
    }

    #[test]
    fn start_comes_from_the_engine_run_time_within_the_hub_window() {
        let t0 = Instant::now();
        let mut r = Ring::new(4);
        // Ran 3 ms of a 10 ms round trip.
        r.push(t0, "a", Some(EngineId(1)), Queue::Task, Outcome::Ok, Some(t0), Some(0.003), t0 + ms(10), None);
        // Engine says it ran longer than the hub waited (skew): start at submission.
        r.push(t0, "b", Some(EngineId(1)), Queue::Task, Outcome::Ok, Some(t0 + ms(10)), Some(5.0), t0 + ms(12), None);
        let e = r.entries();
        assert_eq!((e[0].started_ns, e[0].started_known), (7_000_000, true));
        assert_eq!(e[1].started_ns, 10_000_000);
    }

    #[test]
    fn trace_json_is_trace_event_format_with_one_event_per_task() {
        let t0 = Instant::now();
        let mut r = Ring::new(100);
        for i in 0..10u64 {
            let outcome = if i == 7 { Outcome::Error } else { Outcome::Ok };
            r.push(t0, &format!("t{i}"), Some(EngineId(i % 2)), Queue::Task, outcome, Some(t0 + ms(i)), Some(0.0005), t0 + ms(i + 1), Some("fit"));
        }
        // Overlapping estimates on engine 5 get serialised.
        r.push(t0, "o1", Some(EngineId(5)), Queue::Mux, Outcome::Ok, Some(t0), Some(0.010), t0 + ms(10), None);
        r.push(t0, "o2", Some(EngineId(5)), Queue::Mux, Outcome::Ok, Some(t0), Some(0.010), t0 + ms(12), None);
        r.push(t0, "lost", None, Queue::Task, Outcome::Error, Some(t0), None, t0 + ms(1), None);
        let mut names = BTreeMap::new();
        names.insert(0, "engine 0 (127.0.0.1)".to_owned());
        let export = Export { entries: r.entries(), engine_names: names, total: r.total, capacity: r.capacity() };
        let v: serde_json::Value = serde_json::from_str(&to_trace_json(&export)).expect("valid JSON");
        let events = v["traceEvents"].as_array().expect("traceEvents");
        let x: Vec<&serde_json::Value> = events.iter().filter(|e| e["ph"] == "X").collect();
        assert_eq!(x.len(), 13);
        let mut ids: Vec<&str> = x.iter().map(|e| e["args"]["msg_id"].as_str().expect("msg_id")).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 13, "one event per task");
        for e in &x {
            assert!(e["ts"].is_f64() && e["dur"].as_f64().is_some_and(|d| d >= 0.0), "{e}");
            assert_eq!(e["pid"], 1);
            assert!(e["tid"].is_u64());
            assert!(e["name"].is_string() && e["cat"].is_string());
        }
        let failed = x.iter().find(|e| e["args"]["msg_id"] == "t7").expect("t7");
        assert_eq!((failed["cat"].as_str(), failed["name"].as_str()), (Some("error"), Some("fit (error)")));
        // Track names: every tid used has a thread_name.
        let meta: Vec<&serde_json::Value> = events.iter().filter(|e| e["ph"] == "M" && e["name"] == "thread_name").collect();
        let mut tids: Vec<u64> = x.iter().filter_map(|e| e["tid"].as_u64()).collect();
        tids.sort();
        tids.dedup();
        assert_eq!(tids, [0, 1, 2, 6]);
        assert_eq!(meta.len(), tids.len());
        assert!(meta.iter().any(|m| m["tid"] == 1 && m["args"]["name"] == "engine 0 (127.0.0.1)"));
        assert!(meta.iter().any(|m| m["tid"] == 2 && m["args"]["name"] == "engine 1"));
        assert!(events.iter().any(|e| e["ph"] == "M" && e["name"] == "process_name"));
        // No two slices on one track overlap.
        for tid in tids {
            let mut spans: Vec<(f64, f64)> =
                x.iter().filter(|e| e["tid"] == tid).map(|e| (e["ts"].as_f64().unwrap_or(0.0), e["dur"].as_f64().unwrap_or(0.0))).collect();
            spans.sort_by(|a, b| a.0.total_cmp(&b.0));
            for w in spans.windows(2) {
                assert!(w[0].0 + w[0].1 <= w[1].0 + 1e-9, "overlap on {tid}: {w:?}");
            }
        }
        assert_eq!(v["otherData"]["tasks_in_trace"], 13);
    }
}
