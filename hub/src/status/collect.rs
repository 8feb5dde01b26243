//! Snapshots of the hub's state for the status page, built on the hub's own thread only
//! when an HTTP request asks for one.
//!
//! The HTTP task and the hub's socket thread share a [`StatusLink`]: a request is put in a
//! short queue and a flag is raised; the socket loop checks the flag (one relaxed atomic
//! load per loop turn) and answers every queued request through its oneshot channel.
//! The loop turns at least every 200 ms even when idle (the metrics export), so a request
//! waits at most that long for the hub.

use super::api::{self, Status};
use super::{timeline, Tracker};
use crate::hub::Hub;
use ippx_protocol::datetime::format_iso;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::oneshot;

/// Requests waiting for the hub at most; past this the HTTP side answers 503 at once.
const MAX_QUEUED: usize = 64;
/// How long an HTTP request waits for the hub's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Lost engines listed in a snapshot.
const LOST_LISTED: usize = 20;
/// Engines listed per page at most.
pub const MAX_PAGE: usize = 1000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StatusError {
    #[error("too many status requests waiting for the hub")]
    Busy,
    #[error("the hub did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the hub's loop is not running")]
    Gone,
}

/// Engine list order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sort {
    #[default]
    Id,
    /// Most tasks outstanding first.
    Busy,
    /// Most tasks done first.
    Done,
    /// Oldest heartbeat first (engines in trouble first).
    Heartbeat,
    Host,
}

impl Sort {
    pub fn parse(s: &str) -> Option<Sort> {
        Some(match s {
            "id" => Sort::Id,
            "busy" => Sort::Busy,
            "done" => Sort::Done,
            "heartbeat" => Sort::Heartbeat,
            "host" => Sort::Host,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Sort::Id => "id",
            Sort::Busy => "busy",
            Sort::Done => "done",
            Sort::Heartbeat => "heartbeat",
            Sort::Host => "host",
        }
    }
}

/// Which page of the engine list a snapshot carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusQuery {
    pub offset: usize,
    pub limit: usize,
    pub sort: Sort,
}

impl Default for StatusQuery {
    fn default() -> Self {
        StatusQuery { offset: 0, limit: 100, sort: Sort::Id }
    }
}

enum Request {
    Status(StatusQuery, oneshot::Sender<Status>),
    Timeline(oneshot::Sender<timeline::Export>),
}

struct Shared {
    wanted: AtomicBool,
    requests: Mutex<Vec<Request>>,
}

/// The HTTP side's handle on the hub's snapshots.
#[derive(Clone)]
pub struct StatusLink {
    shared: Arc<Shared>,
}

impl Default for StatusLink {
    fn default() -> Self {
        Self::new()
    }
}

impl StatusLink {
    pub fn new() -> Self {
        StatusLink { shared: Arc::new(Shared { wanted: AtomicBool::new(false), requests: Mutex::new(Vec::new()) }) }
    }

    fn ask(&self, r: Request) -> Result<(), StatusError> {
        let mut q = self.shared.requests.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= MAX_QUEUED {
            return Err(StatusError::Busy);
        }
        q.push(r);
        drop(q);
        // After the push: the hub's swap that sees this also sees the request.
        self.shared.wanted.store(true, Ordering::Release);
        Ok(())
    }

    async fn wait<T>(rx: oneshot::Receiver<T>) -> Result<T, StatusError> {
        match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(StatusError::Gone),
            Err(_) => Err(StatusError::Timeout(ANSWER_TIMEOUT)),
        }
    }

    pub async fn status(&self, q: StatusQuery) -> Result<Status, StatusError> {
        let (tx, rx) = oneshot::channel();
        self.ask(Request::Status(q, tx))?;
        Self::wait(rx).await
    }

    pub async fn timeline(&self) -> Result<timeline::Export, StatusError> {
        let (tx, rx) = oneshot::channel();
        self.ask(Request::Timeline(tx))?;
        Self::wait(rx).await
    }

    fn is_wanted(&self) -> bool {
        self.shared.wanted.load(Ordering::Relaxed)
    }

    fn take(&self) -> Vec<Request> {
        if !self.shared.wanted.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        std::mem::take(&mut *self.shared.requests.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

fn age(now: Instant, t: Instant) -> f64 {
    now.saturating_duration_since(t).as_secs_f64()
}

fn iso(t: SystemTime) -> String {
    format_iso(&chrono_from(t))
}

fn chrono_from(t: SystemTime) -> ippx_protocol::datetime::Timestamp {
    ippx_protocol::datetime::Timestamp::from(t)
}

impl Hub {
    /// The handle the HTTP side uses; made once, kept by the hub's tracker.
    pub fn status_link(&mut self) -> StatusLink {
        self.status.link.get_or_insert_with(StatusLink::new).clone()
    }

    /// Called by the socket loop on every turn: answers queued status requests. Costs one
    /// atomic load when there are none.
    pub fn answer_status_requests(&mut self, now: Instant) {
        let Some(link) = self.status.link.as_ref().filter(|l| l.is_wanted()).cloned() else {
            return;
        };
        for r in link.take() {
            match r {
                Request::Status(q, tx) => {
                    let _ = tx.send(self.status_snapshot(&q, now));
                }
                Request::Timeline(tx) => {
                    let _ = tx.send(self.timeline_export());
                }
            }
        }
    }

    /// The ring's entries and the engines' track names.
    pub fn timeline_export(&self) -> timeline::Export {
        let t = &self.status;
        let mut names = BTreeMap::new();
        for e in t.engines.values() {
            names.insert(e.id.0, engine_name(e.id.0, e.host.as_deref()));
        }
        for l in &t.lost {
            names.entry(l.id.0).or_insert_with(|| format!("{} (lost)", engine_name(l.id.0, l.host.as_deref())));
        }
        timeline::Export { entries: t.timeline.entries(), engine_names: names, total: t.timeline.total, capacity: t.timeline.capacity() }
    }

    /// Everything `/api/status` reports except the latency histogram, which the HTTP side
    /// reads from the metrics.
    pub fn status_snapshot(&mut self, q: &StatusQuery, now: Instant) -> Status {
        let t0 = Instant::now();
        let period = self.heartbeat_period();
        let late_after = 2.0 * period.as_secs_f64();
        let loads: BTreeMap<u64, (usize, u64)> = self.engine_loads().map(|(id, outstanding, done)| (id.0, (outstanding, done))).collect();
        let tr: &mut Tracker = &mut self.status;
        let sec = tr.sec(now);
        let hist = tr.rates.history(sec, 60);
        let tr: &Tracker = &self.status;

        let mut rows: Vec<api::EngineOut> = Vec::with_capacity(self.registry().len());
        for e in self.registry().engines() {
            let rec = tr.engines.get(e.uuid.as_bytes());
            let (outstanding, done) = loads.get(&e.id.0).copied().unwrap_or((0, 0));
            // Engines run one request at a time: one of the tasks sent to an engine runs,
            // the rest wait in its queue.
            let running = outstanding.min(1);
            let beat = rec.and_then(|r| r.last_beat).map(|b| age(now, b));
            let registered_age = rec.map_or(0.0, |r| age(now, r.registered_at));
            // Before its first pong is seen, an engine's age counts from registration.
            let silent = beat.unwrap_or(registered_age);
            rows.push(api::EngineOut {
                id: e.id.0,
                uuid: e.uuid.clone(),
                host: rec.and_then(|r| r.host.clone()),
                state: if silent > late_after { "late" } else { "ok" },
                running,
                queued: outstanding - running,
                done,
                last_heartbeat_age_s: beat,
                registered_age_s: registered_age,
                readded: rec.is_some_and(|r| r.registrations > 1),
            });
        }
        let mut hosts: BTreeMap<String, api::HostOut> = BTreeMap::new();
        for r in &rows {
            let name = r.host.clone().unwrap_or_else(|| "(unknown)".into());
            let h = hosts.entry(name.clone()).or_insert_with(|| api::HostOut { host: name, engines: 0, late: 0, running: 0, queued: 0, done: 0 });
            h.engines += 1;
            h.late += usize::from(r.state == "late");
            h.running += r.running;
            h.queued += r.queued;
            h.done += r.done;
        }
        let running: usize = rows.iter().map(|r| r.running).sum();
        let queued: usize = rows.iter().map(|r| r.queued).sum();
        let late = rows.iter().filter(|r| r.state == "late").count();
        let total_rows = rows.len();
        match q.sort {
            Sort::Id => {}
            Sort::Busy => rows.sort_by(|a, b| (b.running + b.queued).cmp(&(a.running + a.queued)).then(a.id.cmp(&b.id))),
            Sort::Done => rows.sort_by(|a, b| b.done.cmp(&a.done).then(a.id.cmp(&b.id))),
            Sort::Heartbeat => rows.sort_by(|a, b| {
                let key = |r: &api::EngineOut| r.last_heartbeat_age_s.unwrap_or(r.registered_age_s);
                key(b).total_cmp(&key(a)).then(a.id.cmp(&b.id))
            }),
            Sort::Host => rows.sort_by(|a, b| a.host.cmp(&b.host).then(a.id.cmp(&b.id))),
        }
        let limit = q.limit.min(MAX_PAGE);
        let list: Vec<api::EngineOut> = rows.into_iter().skip(q.offset).take(limit).collect();
        let lost = tr
            .lost
            .iter()
            .rev()
            .take(LOST_LISTED)
            .map(|l| api::LostOut {
                id: l.id.0,
                uuid: l.uuid.clone(),
                host: l.host.clone(),
                lost_age_s: age(now, l.lost_at),
                registered_for_s: l.lost_at.saturating_duration_since(l.registered_at).as_secs_f64(),
            })
            .collect();

        let s = &self.stats;
        let sub = |queue: &str| s.submitted.get(queue).copied().unwrap_or(0);
        let done = |outcome: &str| s.completed.iter().filter(|((_, o), _)| *o == outcome).map(|(_, n)| *n).sum::<u64>();
        let tasks = api::Tasks {
            submitted_total: sub("mux") + sub("task"),
            submitted_mux: sub("mux"),
            submitted_task: sub("task"),
            completed_total: done("ok"),
            failed_total: done("error"),
            aborted_total: done("aborted"),
            pending: self.pending_count(),
            unassigned: self.unassigned_count(),
            running,
            queued,
        };
        let avg = |f: &dyn Fn(&(u32, u32)) -> u32| {
            let last: Vec<u32> = hist.iter().rev().take(10).map(f).collect();
            if last.is_empty() {
                0.0
            } else {
                last.iter().map(|n| f64::from(*n)).sum::<f64>() / last.len() as f64
            }
        };
        let rates = api::Rates {
            interval_s: 1,
            completed_per_s: hist.iter().map(|h| h.0).collect(),
            failed_per_s: hist.iter().map(|h| h.1).collect(),
            completed_per_s_10s: avg(&|h| h.0),
            failed_per_s_10s: avg(&|h| h.1),
        };
        let failures = tr
            .failures
            .iter()
            .rev()
            .map(|f| api::FailureOut {
                msg_id: f.msg_id.clone(),
                engine: f.engine.map(|e| e.0),
                queue: f.queue.name(),
                ename: f.ename.clone(),
                evalue: f.evalue.clone(),
                label: f.label.clone(),
                age_s: age(now, f.at),
            })
            .collect();
        let labels = tr
            .labels
            .counts
            .iter()
            .map(|(label, c)| api::LabelOut {
                label: label.clone(),
                total: c.total,
                done: c.done(),
                ok: c.ok,
                failed: c.failed,
                aborted: c.aborted,
                pending: c.total.saturating_sub(c.done()),
            })
            .collect();
        let st = self.store().stats();
        let store = api::StoreOut {
            backend: self.store().name(),
            records: st.records,
            bytes: st.bytes,
            writes: st.writes,
            durable: st.durable,
            culled: st.culled,
            errors: st.errors,
        };
        let wall_now = SystemTime::now();
        Status {
            version: api::SCHEMA_VERSION,
            ippx_version: env!("CARGO_PKG_VERSION"),
            generated_at: iso(wall_now),
            started_at: iso(tr.start_wall),
            uptime_s: age(now, tr.start),
            heartbeat_period_s: period.as_secs_f64(),
            engines: api::Engines {
                registered: total_rows,
                late,
                registered_total: tr.registered_total,
                lost_total: tr.lost_total,
                readded_total: tr.readded_total,
                hosts: hosts.into_values().collect(),
                page: api::Page { offset: q.offset, limit, total: total_rows, sort: q.sort.name() },
                list,
                lost,
            },
            tasks,
            rates,
            latency: BTreeMap::new(),
            failures,
            labels,
            store,
            timeline: api::TimelineOut { tasks: tr.timeline.len(), capacity: tr.timeline.capacity(), finished_since_start: tr.timeline.total },
            http: api::HttpOut::default(),
            cost: api::Cost { snapshot_build_us: t0.elapsed().as_secs_f64() * 1e6 },
        }
    }
}

fn engine_name(id: u64, host: Option<&str>) -> String {
    match host {
        Some(h) => format!("engine {id} ({h})"),
        None => format!("engine {id}"),
    }
}

#[cfg(test)]
#[path = "collect_tests.rs"]
mod tests;
