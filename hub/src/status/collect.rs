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
        StatusQuery {
            offset: 0,
            limit: 100,
            sort: Sort::Id,
        }
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
        StatusLink {
            shared: Arc::new(Shared {
                wanted: AtomicBool::new(false),
                requests: Mutex::new(Vec::new()),
            }),
        }
    }

    fn ask(&self, r: Request) -> Result<(), StatusError> {
        let mut q = self
            .shared
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner());
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
        std::mem::take(
            &mut *self
                .shared
                .requests
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
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
            names
                .entry(l.id.0)
                .or_insert_with(|| format!("{} (lost)", engine_name(l.id.0, l.host.as_deref())));
        }
        timeline::Export {
            entries: t.timeline.entries(),
            engine_names: names,
            total: t.timeline.total,
            capacity: t.timeline.capacity(),
        }
    }

    /// Everything `/api/status` reports except the latency histogram, which the HTTP side
    /// reads from the metrics.
    pub fn status_snapshot(&mut self, q: &StatusQuery, now: Instant) -> Status {
        let t0 = Instant::now();
        let period = self.heartbeat_period();
        let late_after = 2.0 * period.as_secs_f64();
        let loads: BTreeMap<u64, (usize, u64)> = self
            .engine_loads()
            .map(|(id, outstanding, done)| (id.0, (outstanding, done)))
            .collect();
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
            let h = hosts.entry(name.clone()).or_insert_with(|| api::HostOut {
                host: name,
                engines: 0,
                late: 0,
                running: 0,
                queued: 0,
                done: 0,
            });
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
            Sort::Busy => rows.sort_by(|a, b| {
                (b.running + b.queued)
                    .cmp(&(a.running + a.queued))
                    .then(a.id.cmp(&b.id))
            }),
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
                registered_for_s: l
                    .lost_at
                    .saturating_duration_since(l.registered_at)
                    .as_secs_f64(),
            })
            .collect();

        let s = &self.stats;
        let sub = |queue: &str| s.submitted.get(queue).copied().unwrap_or(0);
        let done = |outcome: &str| {
            s.completed
                .iter()
                .filter(|((_, o), _)| *o == outcome)
                .map(|(_, n)| *n)
                .sum::<u64>()
        };
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
                page: api::Page {
                    offset: q.offset,
                    limit,
                    total: total_rows,
                    sort: q.sort.name(),
                },
                list,
                lost,
            },
            tasks,
            rates,
            latency: BTreeMap::new(),
            failures,
            labels,
            store,
            timeline: api::TimelineOut {
                tasks: tr.timeline.len(),
                capacity: tr.timeline.capacity(),
                finished_since_start: tr.timeline.total,
            },
            http: api::HttpOut::default(),
            cost: api::Cost {
                snapshot_build_us: t0.elapsed().as_secs_f64() * 1e6,
            },
        }
    }
}

fn engine_name(id: u64, host: Option<&str>) -> String {
    match host {
        Some(h) => format!("engine {id} ({h})"),
        None => format!("engine {id}"),
    }
}

impl crate::server::Controller {
    /// The status page's link to the hub, before the hub's thread starts (`None` after).
    pub fn status_link(&mut self) -> Option<StatusLink> {
        self.hub.as_mut().map(Hub::status_link)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{HubOut, HubSettings, MonitorMsg};
    use crate::records::Limits;
    use ippx_protocol::content::EnginePorts;
    use ippx_protocol::datetime::{format_iso, now as utc_now};
    use ippx_protocol::{vmap, Header, Packer, Value};

    fn settings() -> HubSettings {
        HubSettings {
            hb_period: Duration::from_secs(3),
            max_misses: 10,
            registration_timeout: Duration::from_secs(5),
            engine_ports: EnginePorts {
                interface: "tcp://127.0.0.1".into(),
                registration: 1,
                control: 2,
                mux: 3,
                task: 4,
                iopub: 5,
                hb_ping: 6,
                hb_pong: 7,
                broadcast: vec![8, 9],
            },
            packer: Packer::Msgpack,
            limits: Limits {
                record_limit: 1024,
                size_limit: 1 << 30,
                cull_fraction: 0.1,
            },
            nodb: false,
        }
    }

    fn pack(v: &Value) -> Vec<u8> {
        Packer::Msgpack.pack(v).expect("pack")
    }

    fn header(msg_id: &str, msg_type: &str) -> Header {
        Header {
            msg_id: msg_id.into(),
            msg_type: msg_type.into(),
            username: "u".into(),
            session: "s".into(),
            date: format_iso(&utc_now()),
            version: "5.3".into(),
        }
    }

    /// Registers engine `uuid` as a real one does: registration_request, then its heart.
    fn register(hub: &mut Hub, uuid: &str, now: Instant) {
        let mut out: Vec<HubOut> = Vec::new();
        let h = header(&format!("reg-{uuid}"), "registration_request");
        hub.query(
            vec![b"peer".to_vec()],
            &h,
            &pack(&Value::map()),
            &pack(&vmap! {"uuid" => uuid}),
            now,
            &mut out,
        );
        hub.pong(uuid.as_bytes(), b"x", &mut out);
        // The probe ping makes a payload the pong can echo; tick then completes.
        hub.tick(now, &mut out);
        let ping = out
            .iter()
            .rev()
            .find_map(|o| {
                if let HubOut::Ping(p) = o {
                    Some(p.clone())
                } else {
                    None
                }
            })
            .expect("a ping");
        hub.pong(uuid.as_bytes(), &ping, &mut out);
    }

    fn task(
        hub: &mut Hub,
        msg_id: &str,
        label: Option<&str>,
        engine_uuid: &str,
        status: &str,
        now: Instant,
    ) {
        let mut out: Vec<HubOut> = Vec::new();
        let h = header(msg_id, "apply_request");
        let hb = pack(&Value::map());
        let md = match label {
            Some(l) => pack(&vmap! {"label" => l}),
            None => pack(&Value::map()),
        };
        let c = pack(&Value::map());
        hub.monitor(
            b"intask",
            &[],
            MonitorMsg {
                h: &h,
                parent_id: String::new(),
                header: &hb,
                metadata: &md,
                content: &c,
                buffers: &[],
            },
            now,
            &mut out,
        );
        let dest = pack(&vmap! {"msg_id" => msg_id, "engine_id" => engine_uuid});
        let dh = header(&format!("d-{msg_id}"), "task_destination");
        hub.monitor(
            b"tracktask",
            &[],
            MonitorMsg {
                h: &dh,
                parent_id: String::new(),
                header: &hb,
                metadata: &hb,
                content: &dest,
                buffers: &[],
            },
            now,
            &mut out,
        );
        if status.is_empty() {
            return;
        }
        let rh = header(&format!("r-{msg_id}"), "apply_reply");
        let rmd = pack(
            &vmap! {"status" => status, "engine" => engine_uuid, "started" => format_iso(&utc_now())},
        );
        let rc = if status == "error" {
            pack(
                &vmap! {"status" => "error", "ename" => "ZeroDivisionError", "evalue" => "division by zero"},
            )
        } else {
            pack(&vmap! {"status" => "ok"})
        };
        hub.monitor(
            b"outtask",
            &[],
            MonitorMsg {
                h: &rh,
                parent_id: msg_id.into(),
                header: &hb,
                metadata: &rmd,
                content: &rc,
                buffers: &[],
            },
            now + Duration::from_millis(2),
            &mut out,
        );
    }

    #[test]
    fn snapshot_reports_engines_tasks_failures_labels_and_store() {
        let t0 = Instant::now();
        let mut hub = Hub::new(settings(), t0);
        register(&mut hub, "e0", t0);
        register(&mut hub, "e1", t0);
        assert_eq!(hub.registry().len(), 2);
        hub.status.set_host(b"e0", "10.1.2.3");
        for i in 0..5 {
            task(&mut hub, &format!("ok{i}"), Some("fit"), "e0", "ok", t0);
        }
        task(&mut hub, "bad", Some("fit"), "e1", "error", t0);
        task(&mut hub, "waiting1", Some("fit"), "e1", "", t0);
        task(&mut hub, "waiting2", None, "e1", "", t0);
        let s = hub.status_snapshot(&StatusQuery::default(), t0 + Duration::from_millis(10));
        assert_eq!(s.version, api::SCHEMA_VERSION);
        assert_eq!(
            (
                s.engines.registered,
                s.engines.registered_total,
                s.engines.late
            ),
            (2, 2, 0)
        );
        assert_eq!(s.tasks.completed_total, 5);
        assert_eq!(s.tasks.failed_total, 1);
        assert_eq!(
            (
                s.tasks.pending,
                s.tasks.running,
                s.tasks.queued,
                s.tasks.unassigned
            ),
            (2, 1, 1, 0)
        );
        let e0 = s.engines.list.iter().find(|e| e.id == 0).expect("e0");
        assert_eq!(
            (e0.done, e0.running, e0.host.as_deref()),
            (5, 0, Some("10.1.2.3"))
        );
        let e1 = s.engines.list.iter().find(|e| e.id == 1).expect("e1");
        assert_eq!((e1.done, e1.running, e1.queued), (1, 1, 1));
        assert!(e1.last_heartbeat_age_s.is_some());
        assert_eq!(s.engines.hosts.len(), 2);
        assert_eq!(s.failures.len(), 1);
        let f = &s.failures[0];
        assert_eq!(
            (
                f.msg_id.as_str(),
                f.engine,
                f.ename.as_str(),
                f.evalue.as_str()
            ),
            ("bad", Some(1), "ZeroDivisionError", "division by zero")
        );
        assert_eq!(f.label.as_deref(), Some("fit"));
        assert_eq!(
            s.labels,
            vec![api::LabelOut {
                label: "fit".into(),
                total: 7,
                done: 6,
                ok: 5,
                failed: 1,
                aborted: 0,
                pending: 1
            }]
        );
        assert_eq!(s.store.backend, "DictDB");
        assert_eq!(s.store.records, Some(8));
        assert_eq!((s.timeline.tasks, s.timeline.finished_since_start), (6, 6));
        // JSON shape: the top-level keys a script relies on.
        let v = serde_json::to_value(&s).expect("json");
        for k in [
            "version", "engines", "tasks", "rates", "latency", "failures", "labels", "store",
            "timeline", "cost",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["engines"]["list"][1]["state"], "ok");

        // A lost engine is listed; its queued work is counted as lost with it later.
        let mut out: Vec<HubOut> = Vec::new();
        hub.unregister(ippx_protocol::EngineId(0), t0, &mut out);
        let s = hub.status_snapshot(&StatusQuery::default(), t0 + Duration::from_secs(1));
        assert_eq!(
            (
                s.engines.registered,
                s.engines.lost_total,
                s.engines.lost.len()
            ),
            (1, 1, 1)
        );
        assert_eq!(s.engines.lost[0].host.as_deref(), Some("10.1.2.3"));
        // Late: no heartbeat for more than two periods.
        let s = hub.status_snapshot(&StatusQuery::default(), t0 + Duration::from_secs(60));
        assert_eq!(s.engines.late, 1);
        assert_eq!(s.engines.list[0].state, "late");
    }

    #[test]
    fn a_thousand_engines_are_paged_and_aggregated() {
        let t0 = Instant::now();
        let mut hub = Hub::new(settings(), t0);
        for i in 0..1000 {
            let uuid = format!("eng{i}");
            register(&mut hub, &uuid, t0);
            hub.status
                .set_host(uuid.as_bytes(), &format!("node{}", i % 10));
        }
        assert_eq!(hub.registry().len(), 1000);
        task(&mut hub, "one", None, "eng500", "ok", t0);
        let q = StatusQuery {
            offset: 0,
            limit: 50,
            sort: Sort::Done,
        };
        let s = hub.status_snapshot(&q, t0);
        assert_eq!(s.engines.list.len(), 50);
        assert_eq!(s.engines.page.total, 1000);
        assert_eq!(s.engines.list[0].id, 500, "most done first");
        assert_eq!(s.engines.hosts.len(), 10);
        assert!(s.engines.hosts.iter().all(|h| h.engines == 100));
        let last = hub.status_snapshot(
            &StatusQuery {
                offset: 980,
                limit: 50,
                sort: Sort::Id,
            },
            t0,
        );
        assert_eq!(last.engines.list.len(), 20);
        assert_eq!(last.engines.list.last().map(|e| e.id), Some(999));
        let huge = hub.status_snapshot(
            &StatusQuery {
                offset: 0,
                limit: usize::MAX,
                sort: Sort::Id,
            },
            t0,
        );
        assert_eq!(huge.engines.list.len(), MAX_PAGE);
        // The whole snapshot stays small enough to poll: well under a megabyte.
        let json = serde_json::to_string(&s).expect("json");
        assert!(json.len() < 100_000, "{}", json.len());
    }

    #[tokio::test]
    async fn link_round_trip_and_back_pressure() {
        let t0 = Instant::now();
        let mut hub = Hub::new(settings(), t0);
        let link = hub.status_link();
        let l2 = link.clone();
        let asker = tokio::spawn(async move { l2.status(StatusQuery::default()).await });
        // The hub's loop turn.
        let mut answered = false;
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if link.is_wanted() {
                hub.answer_status_requests(Instant::now());
                answered = true;
                break;
            }
        }
        assert!(answered);
        let s = asker.await.expect("join").expect("status");
        assert_eq!(s.engines.registered, 0);
        // Nothing wanted: nothing done.
        assert!(!link.is_wanted());
        hub.answer_status_requests(Instant::now());
        // Queue full: refused at once rather than piling up.
        let mut waiting = Vec::new();
        for _ in 0..MAX_QUEUED {
            let l = link.clone();
            waiting.push(tokio::spawn(async move {
                l.timeline().await.map(|e| e.entries.len())
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            link.status(StatusQuery::default()).await.err(),
            Some(StatusError::Busy)
        );
        hub.answer_status_requests(Instant::now());
        for w in waiting {
            assert_eq!(w.await.expect("join"), Ok(0));
        }
        // The hub gone: the request fails instead of hanging.
        drop(hub);
        let l = link.clone();
        let r = tokio::spawn(async move { l.status(StatusQuery::default()).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        link.take();
        assert_eq!(r.await.expect("join").err(), Some(StatusError::Gone));
    }
}
