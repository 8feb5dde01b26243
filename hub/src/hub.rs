//! The hub as a sans-IO state machine: registration, heartbeats, the query socket and the
//! task bookkeeping fed by monitor copies. Inputs are decoded messages and the time;
//! outputs go to an [`Outbox`]. The socket loop in `server` is the only I/O.

use crate::heart::HeartMonitor;
use crate::query::{Op, Query, Q};
use crate::records::{Field, Fields, Limits, MemStore, TaskRecord};
use crate::store::{Missing, NoDb, Store, StoreError};
use crate::registry::{Engine, EngineState, Registry, Unregistered};
use indexmap::IndexSet;
use ippx_protocol::content::{
    ConnectionReply, EngineNotification, EnginePorts, ErrorContent, QueueRequest, RegistrationReply,
    RegistrationRequest, ResultRequest, TaskDestination, UnregistrationRequest,
};
use ippx_protocol::datetime::{format_iso, now as utc_now, parse_iso};
use ippx_protocol::idset::IdSet;
use ippx_protocol::{vmap, EngineId, Header, Packer, Value, PROTOCOL_VERSION};
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// What the hub asks the socket loop to do.
#[derive(Debug, Clone, PartialEq)]
pub enum HubOut {
    /// A reply on the query ROUTER. `parent` is the request's header frame as received
    /// (echoed byte for byte), or empty for `{}`.
    Reply { idents: Vec<Vec<u8>>, msg_type: String, parent: Vec<u8>, content: Value, buffers: Vec<Vec<u8>> },
    /// A message on the notification PUB (no topic frame).
    Notify { msg_type: &'static str, content: Value, parent: Vec<u8> },
    /// One heartbeat ping frame.
    Ping(Vec<u8>),
    /// Rewrite the engine state file.
    SaveState(EngineState),
    /// A client asked the hub to shut down; exit after a short grace period.
    Shutdown,
    /// Send a request into the task scheduler as if from a client (resubmit, spec 4.3.6).
    /// The loop signs it with `header` as given and `parent_header` equal to it; replies
    /// to the hub's own submissions are discarded.
    Submit { header: Header, content: Value, buffers: Vec<Vec<u8>> },
}

/// The hub's only way to act. The socket loop implements it; tests record into a Vec.
pub trait Outbox {
    fn push(&mut self, out: HubOut);
}

impl Outbox for Vec<HubOut> {
    fn push(&mut self, out: HubOut) {
        Vec::push(self, out);
    }
}

#[derive(Clone, Debug)]
pub struct HubSettings {
    pub hb_period: Duration,
    pub max_misses: u32,
    pub registration_timeout: Duration,
    pub engine_ports: EnginePorts,
    pub packer: Packer,
    /// `DictDB` culling limits for the default in-memory store ([`Hub::new`]).
    pub limits: Limits,
    /// `--nodb`: [`Hub::new`] keeps no records; reads fail as stock NoDB does.
    pub nodb: bool,
}

/// Per-engine msg_id lists reported by `queue_request`.
#[derive(Debug, Default)]
struct EngineQueues {
    /// The engine's uuid, to find its completed records in the store (verbose
    /// `queue_status`) after it is gone from the registry.
    uuid: Option<String>,
    queue: IndexSet<String>,
    tasks: IndexSet<String>,
    /// How many tasks completed on the engine. Stock keeps the list of their msg_ids,
    /// which grows forever; a verbose `queue_status` lists the ones the store still
    /// holds instead (docs/store.md).
    completed: u64,
}

/// Counters for logs and metrics.
#[derive(Debug, Default, Clone)]
pub struct HubStats {
    pub registered: u64,
    pub unregistered: u64,
    pub dropped: BTreeMap<&'static str, u64>,
    pub queries: u64,
    pub missed_beats: u64,
    /// Requests seen, by queue.
    pub submitted: BTreeMap<&'static str, u64>,
    /// Final replies seen, by (queue, outcome): outcome is ok, error or aborted.
    pub completed: BTreeMap<(&'static str, &'static str), u64>,
    /// Latencies not yet exported; the socket loop drains them into histograms.
    pub latencies: Vec<Latency>,
}

/// One finished task's timings.
#[derive(Debug, Clone, PartialEq)]
pub struct Latency {
    pub queue: &'static str,
    /// Hub clock: request copy seen to reply copy seen.
    pub turnaround: f64,
    /// Engine clock: `started` to the reply's date, when both are known.
    pub run: Option<f64>,
}

/// Latencies kept for export at most; beyond this, observations are skipped rather
/// than let memory grow when nobody drains them.
const MAX_PENDING_LATENCIES: usize = 100_000;

impl HubStats {
    fn finished(&mut self, queue: &'static str, outcome: &'static str, seen: Option<Instant>, now: Instant, run: Option<f64>) {
        *self.completed.entry((queue, outcome)).or_default() += 1;
        if let Some(t) = seen {
            if self.latencies.len() < MAX_PENDING_LATENCIES {
                self.latencies.push(Latency { queue, turnaround: now.saturating_duration_since(t).as_secs_f64(), run });
            }
        }
    }
}

fn outcome(status: &str) -> &'static str {
    match status {
        "ok" => "ok",
        "aborted" => "aborted",
        _ => "error",
    }
}

/// Seconds between the reply metadata's `started` and the reply header's `date`.
fn run_seconds(md: &Value, reply_date: &str) -> Option<f64> {
    let started = parse_iso(md.get("started").as_str()?)?;
    let done = parse_iso(reply_date)?;
    let us = (done - started).num_microseconds()?;
    (us >= 0).then(|| us as f64 / 1e6)
}

/// What [`Hub::bookkeeping`] reports. Every count but `completed` is bounded by the
/// tasks pending; `completed_bytes` (the compact set of every completed msg_id) grows
/// only with gaps in the clients' msg_id counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bookkeeping {
    pub pending: usize,
    pub seen: usize,
    pub owners: usize,
    pub unassigned: usize,
    pub queued: usize,
    pub assigned: usize,
    pub completed: usize,
    pub completed_bytes: usize,
}

pub struct Hub {
    s: HubSettings,
    reg: Registry,
    heart: HeartMonitor,
    store: Box<dyn Store>,
    /// Prefix and counter of msg_ids the hub makes for resubmissions.
    id_prefix: String,
    id_counter: u64,
    pending: HashSet<String>,
    /// Every msg_id that completed (stock's `all_completed`), exactly, in a compact form
    /// (`ippx_protocol::idset`): Session-shaped ids that all completed cost a few bytes
    /// per 65,536. Stock keeps one string per task forever; so did we, at ~100 bytes a
    /// task. Everything else the hub keeps per task lives only while the task is pending.
    completed: IdSet,
    unassigned: IndexSet<String>,
    queues: BTreeMap<EngineId, EngineQueues>,
    /// Which engine a load-balanced task went to, so its reply clears the right list even
    /// when the engine is gone by then.
    task_owner: HashMap<String, EngineId>,
    /// When the request copy of each pending task arrived, for latency metrics.
    seen: HashMap<String, Instant>,
    stranded: Vec<(Instant, Engine)>,
    next_probe: Option<Instant>,
    pub stats: HubStats,
    /// The status page's always-on bookkeeping (`crate::status`).
    pub(crate) status: crate::status::Tracker,
}

const PROBE_INTERVAL: Duration = Duration::from_millis(50);

fn error_value(ename: &str, evalue: impl Into<String>) -> Value {
    ErrorContent::new(ename, evalue).to_value()
}

/// A typed value as the generic `Value` tree, through the packer both sides share.
pub fn to_value<T: serde::Serialize>(t: &T) -> Value {
    Packer::Msgpack.pack(t).ok().and_then(|b| Packer::Msgpack.unpack(&b).ok()).unwrap_or_default()
}

impl Hub {
    /// A hub with the store `s` asks for: in memory with `s.limits`, or none (`s.nodb`).
    pub fn new(s: HubSettings, now: Instant) -> Self {
        let store: Box<dyn Store> = if s.nodb { Box::new(NoDb) } else { Box::new(MemStore::new(s.limits)) };
        Hub::with_store(s, store, now)
    }

    /// A hub keeping its task records in `store` (`--sqlitedb`, or any backend).
    pub fn with_store(s: HubSettings, store: Box<dyn Store>, now: Instant) -> Self {
        let heart = HeartMonitor::new(s.hb_period, s.max_misses, now);
        info!(backend = store.name(), "task record store");
        let status = crate::status::Tracker::new(s.packer, now);
        Hub {
            s,
            reg: Registry::default(),
            heart,
            store,
            id_prefix: format!("{}_{}", ippx_protocol::session::new_id(), std::process::id()),
            id_counter: 0,
            pending: HashSet::new(),
            completed: IdSet::new(),
            unassigned: IndexSet::new(),
            queues: BTreeMap::new(),
            task_owner: HashMap::new(),
            seen: HashMap::new(),
            stranded: Vec::new(),
            next_probe: None,
            stats: HubStats::default(),
            status,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.reg
    }

    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    pub fn store_mut(&mut self) -> &mut dyn Store {
        self.store.as_mut()
    }

    /// One whole record, if the store has it (tests, diagnostics).
    pub fn record(&mut self, msg_id: &str) -> Option<TaskRecord> {
        self.store.get(msg_id, Fields::ALL).ok().flatten()
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    pub fn unassigned_count(&self) -> usize {
        self.unassigned.len()
    }

    /// Sizes of the per-task bookkeeping (tests, diagnostics).
    pub fn bookkeeping(&self) -> Bookkeeping {
        Bookkeeping {
            pending: self.pending.len(),
            seen: self.seen.len(),
            owners: self.task_owner.len(),
            unassigned: self.unassigned.len(),
            queued: self.queues.values().map(|q| q.queue.len()).sum(),
            assigned: self.queues.values().map(|q| q.tasks.len()).sum(),
            completed: self.completed.len(),
            completed_bytes: self.completed.heap_bytes(),
        }
    }

    /// `--restore`: engines come back registered, without notifications.
    pub fn restore(&mut self, state: &EngineState) {
        self.reg.restore(state);
        for e in self.reg.engines() {
            self.queues.entry(e.id).or_default().uuid = Some(e.uuid.clone());
        }
    }

    pub fn drop_msg(&mut self, reason: &'static str) {
        *self.stats.dropped.entry(reason).or_default() += 1;
    }

    fn unpack<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, String> {
        self.s.packer.unpack(bytes).map_err(|e| e.to_string())
    }

    // ---------------------------------------------------------------- time

    pub fn next_deadline(&self) -> Instant {
        let mut d = self.heart.next_tick();
        if let Some(p) = self.next_probe {
            d = d.min(p);
        }
        if let Some(r) = self.reg.next_deadline() {
            d = d.min(r);
        }
        if let Some(s) = self.stranded.iter().map(|(t, _)| *t).min() {
            d = d.min(s);
        }
        d
    }

    pub fn tick(&mut self, now: Instant, out: &mut impl Outbox) {
        if now >= self.heart.next_tick() {
            let beat = self.heart.tick(now);
            out.push(HubOut::Ping(beat.ping));
            self.stats.missed_beats += beat.missed as u64;
            for h in beat.new_hearts {
                let uuid = String::from_utf8_lossy(&h).into_owned();
                // A restored engine's heart is new to this monitor but its engine is known.
                if !self.complete_registration(&uuid, out) && self.reg.by_uuid(&uuid).is_none() {
                    debug!(heart = %uuid, "new heart without a pending registration");
                }
            }
            for h in beat.stopped_hearts {
                let uuid = String::from_utf8_lossy(&h).into_owned();
                if let Some(id) = self.reg.by_uuid(&uuid).map(|e| e.id) {
                    warn!(engine = %id, %uuid, "heart stopped: unregistering engine");
                    self.unregister(id, now, out);
                }
            }
        }
        if self.reg.has_pending() {
            match self.next_probe {
                Some(t) if t > now => {}
                _ => {
                    out.push(HubOut::Ping(self.heart.probe(now)));
                    self.next_probe = Some(now + PROBE_INTERVAL.min(self.s.hb_period));
                }
            }
        } else {
            self.next_probe = None;
        }
        for p in self.reg.expire(now) {
            warn!(engine = %p.id, uuid = %p.uuid, "registration timed out before the engine's heart answered");
        }
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.stranded).into_iter().partition(|(t, _)| *t <= now);
        self.stranded = keep;
        for (_, e) in due {
            self.fail_stranded_direct(&e);
        }
        self.store.maintain(now);
    }

    // ---------------------------------------------------------------- hearts

    pub fn pong(&mut self, heart: &[u8], payload: &[u8], out: &mut impl Outbox) {
        if !self.heart.pong(heart, payload) {
            return;
        }
        self.status.beat(heart, Instant::now());
        // Complete at once rather than at the next beat: registration then takes one
        // round trip after the engine's heart starts.
        if let Ok(uuid) = std::str::from_utf8(heart) {
            if self.reg.is_pending(uuid) {
                let uuid = uuid.to_owned();
                self.complete_registration(&uuid, out);
            }
        }
    }

    fn complete_registration(&mut self, uuid: &str, out: &mut impl Outbox) -> bool {
        let Some(e) = self.reg.complete(uuid) else { return false };
        info!(engine = %e.id, uuid = %e.uuid, "engine registered");
        self.stats.registered += 1;
        self.status.engine_registered(e.id, &e.uuid, Instant::now());
        self.queues.entry(e.id).or_default().uuid = Some(e.uuid.clone());
        out.push(HubOut::Notify {
            msg_type: "registration_notification",
            content: to_value(&EngineNotification { id: e.id.0, uuid: e.uuid.clone() }),
            parent: Vec::new(),
        });
        out.push(HubOut::SaveState(self.reg.state()));
        true
    }

    pub fn unregister(&mut self, id: EngineId, now: Instant, out: &mut impl Outbox) {
        match self.reg.unregister(id) {
            Unregistered::Engine(e) => {
                info!(engine = %e.id, uuid = %e.uuid, "engine unregistered");
                self.stats.unregistered += 1;
                self.status.engine_lost(&e.uuid, now);
                self.heart.forget(e.uuid.as_bytes());
                out.push(HubOut::SaveState(self.reg.state()));
                out.push(HubOut::Notify {
                    msg_type: "unregistration_notification",
                    content: to_value(&EngineNotification { id: e.id.0, uuid: e.uuid.clone() }),
                    parent: Vec::new(),
                });
                self.stranded.push((now + self.s.registration_timeout, e));
            }
            Unregistered::Pending(p) => info!(engine = %p.id, "pending registration cancelled"),
            Unregistered::Unknown => debug!(engine = %id, "unregistration of an unknown engine ignored"),
        }
    }

    /// Direct requests still queued on a dead engine get a synthetic EngineError record
    /// (spec 3.6). Clients synthesise their own; this is for the hub's bookkeeping.
    fn fail_stranded_direct(&mut self, e: &Engine) {
        let Some(q) = self.queues.get_mut(&e.id) else { return };
        let ids: Vec<String> = q.queue.drain(..).collect();
        for msg_id in ids {
            self.pending.remove(&msg_id);
            self.completed.insert(&msg_id);
            if let Some(q) = self.queues.get_mut(&e.id) {
                q.completed += 1;
            }
            // No latency: the task never finished.
            let seen = self.seen.remove(&msg_id);
            *self.stats.completed.entry(("mux", "error")).or_default() += 1;
            let now = utc_now();
            let evalue = format!("Engine {} died while running task '{msg_id}'", e.id);
            self.status.stranded(&msg_id, e.id, seen, evalue.clone(), Instant::now());
            let content = error_value("EngineError", evalue);
            let uuid = e.uuid.clone();
            let mut content = Some(content);
            let r = self.store.update(&msg_id, Missing::Skip, &mut |r| {
                r.result_content = content.take().unwrap_or_default();
                r.result_header = vmap! {"engine" => uuid.clone(), "date" => format_iso(&now)};
                r.result_buffers = Vec::new();
                r.completed = Some(now);
                r.engine_uuid = Some(uuid.clone());
            });
            self.store_failed("stranded request", &msg_id, r);
        }
    }

    // ---------------------------------------------------------------- queries

    /// A verified message on the query ROUTER.
    pub fn query(&mut self, idents: Vec<Vec<u8>>, header: &Header, raw_header: &[u8], content: &[u8], now: Instant, out: &mut impl Outbox) {
        self.stats.queries += 1;
        let reply = |out: &mut dyn FnMut(HubOut), msg_type: &str, content: Value, buffers: Vec<Vec<u8>>| {
            out(HubOut::Reply {
                idents: idents.clone(),
                msg_type: msg_type.to_owned(),
                parent: raw_header.to_vec(),
                content,
                buffers,
            })
        };
        let peer = peer_name(&idents);
        let mut push = |o: HubOut| out.push(o);
        let t = header.msg_type.as_str();
        debug!(msg_type = t, msg_id = %header.msg_id, "query");
        // Content that unpacks but has the wrong shape for its msg_type.
        let malformed = |stats: &mut HubStats, e: &dyn std::fmt::Display| {
            *stats.dropped.entry("malformed").or_default() += 1;
            warn!(socket = "registration", reason = "malformed", peer = %peer, msg_type = t, "dropped message: bad content: {e}");
        };
        match t {
            "connection_request" => {
                let engines = self.reg.engines().map(|e| (e.id.to_string(), e.uuid.clone())).collect();
                reply(&mut push, "connection_reply", to_value(&ConnectionReply { status: "ok".into(), engines }), vec![]);
            }
            "registration_request" => match self.unpack::<RegistrationRequest>(content) {
                Ok(req) => match self.reg.request(&req.uuid, req.id, now + self.s.registration_timeout) {
                    Ok(id) => {
                        info!(engine = %id, uuid = %req.uuid, "registration requested; waiting for its heart");
                        let r = RegistrationReply {
                            id: id.0,
                            status: "ok".into(),
                            hb_period: self.s.hb_period.as_millis() as u64,
                            connection_info: self.s.engine_ports.clone(),
                        };
                        reply(&mut push, "registration_reply", to_value(&r), vec![]);
                        self.next_probe = None;
                    }
                    Err(evalue) => {
                        warn!(uuid = %req.uuid, "registration refused: {evalue}");
                        reply(&mut push, "registration_reply", error_value("KeyError", evalue), vec![]);
                    }
                },
                Err(e) => {
                    malformed(&mut self.stats, &e);
                    reply(&mut push, "registration_reply", error_value("ValueError", format!("bad registration_request: {e}")), vec![]);
                }
            },
            "unregistration_request" => match self.unpack::<UnregistrationRequest>(content) {
                Ok(UnregistrationRequest { id: Some(id) }) if id >= 0 => self.unregister(EngineId(id as u64), now, &mut VecOut(&mut push)),
                Ok(_) => debug!("unregistration_request without an id ignored"),
                Err(e) => malformed(&mut self.stats, &e),
            },
            "queue_request" => match self.unpack::<QueueRequest>(content) {
                Ok(q) => match self.queue_status(&q) {
                    Ok(c) => reply(&mut push, "queue_reply", c, vec![]),
                    Err(c) => reply(&mut push, "hub_error", c, vec![]),
                },
                Err(e) => {
                    malformed(&mut self.stats, &e);
                    reply(&mut push, "hub_error", error_value("ValueError", e), vec![]);
                }
            },
            "result_request" => match self.unpack::<ResultRequest>(content) {
                Ok(r) => {
                    let (c, bufs) = self.results(&r);
                    reply(&mut push, "result_reply", c, bufs);
                }
                Err(e) => {
                    malformed(&mut self.stats, &e);
                    reply(&mut push, "result_reply", error_value("ValueError", e), vec![]);
                }
            },
            "history_request" => {
                let c = match self.store.history() {
                    Ok(h) => vmap! {"status" => "ok", "history" => Value::Array(h.into_iter().map(Value::from).collect())},
                    Err(e) => store_error(&e),
                };
                reply(&mut push, "history_reply", c, vec![]);
            }
            "db_request" => {
                let (c, bufs) = match self.unpack::<Value>(content) {
                    Ok(req) => self.db_query(&req),
                    Err(e) => (error_value("ValueError", e), vec![]),
                };
                reply(&mut push, "db_reply", c, bufs);
            }
            "purge_request" => {
                let c = match self.unpack::<Value>(content) {
                    Ok(req) => self.purge(&req),
                    Err(e) => error_value("ValueError", e),
                };
                reply(&mut push, "purge_reply", c, vec![]);
            }
            "resubmit_request" => {
                let c = match self.unpack::<Value>(content) {
                    Ok(req) => match self.resubmit(&req) {
                        Ok((submits, mapping)) => {
                            for o in submits {
                                push(o);
                            }
                            let c = vmap! {"status" => "ok", "resubmitted" => Value::Map(mapping.iter().map(|(o, n)| (o.clone(), Value::from(n.as_str()))).collect())};
                            reply(&mut push, "resubmit_reply", c, vec![]);
                            // As Python: the old records learn their new ids after the reply.
                            for (old, new) in mapping {
                                let r = self.store.update(&old, Missing::Skip, &mut |r| r.resubmitted = Some(new.clone()));
                                self.store_failed("resubmitted marker", &old, r);
                            }
                            return;
                        }
                        Err(c) => c,
                    },
                    Err(e) => error_value("ValueError", e),
                };
                reply(&mut push, "resubmit_reply", c, vec![]);
            }
            "load_request" => {
                let mut c = vmap! {"status" => "ok"};
                for e in self.reg.engines() {
                    let q = self.queues.get(&e.id);
                    let load = q.map_or(0, |q| q.queue.len() + q.tasks.len());
                    c.insert(e.id.to_string(), Value::from(load as i64));
                }
                reply(&mut push, "load_reply", c, vec![]);
            }
            "shutdown_request" => {
                info!("shutdown requested by a client");
                reply(&mut push, "shutdown_reply", vmap! {"status" => "ok"}, vec![]);
                push(HubOut::Notify { msg_type: "shutdown_notification", content: vmap! {"status" => "ok"}, parent: raw_header.to_vec() });
                push(HubOut::Shutdown);
            }
            "become_dask_request" => reply(
                &mut push,
                "become_dask_reply",
                error_value("NotImplementedError", "ippx does not embed a dask scheduler"),
                vec![],
            ),
            "stop_distributed_request" => reply(&mut push, "stop_distributed_reply", vmap! {"status" => "ok"}, vec![]),
            other => {
                self.drop_msg("unknown");
                warn!(socket = "registration", reason = "unknown", peer = %peer, msg_type = other, "dropped message: unknown query type");
                reply(&mut push, "hub_error", error_value("KeyError", format!("Bad Message Type: '{other}'")), vec![]);
            }
        }
    }

    fn queue_status(&mut self, q: &QueueRequest) -> Result<Value, Value> {
        let targets: Vec<EngineId> = match &q.targets {
            Value::Nil => self.reg.ever().collect(),
            one @ (Value::Int(_) | Value::UInt(_) | Value::Str(_)) => self.resolve_targets(std::slice::from_ref(one))?,
            Value::Array(list) => self.resolve_targets(list)?,
            other => return Err(error_value("TypeError", format!("bad targets: {other:?}"))),
        };
        let mut c = vmap! {"status" => "ok"};
        let empty = EngineQueues::default();
        let list = |s: &mut dyn Iterator<Item = &String>| Value::Array(s.map(|m| Value::from(m.as_str())).collect());
        for t in targets {
            let completed = match (q.verbose, self.queues.get(&t).and_then(|e| e.uuid.clone())) {
                (true, Some(uuid)) => self.completed_in_store(&uuid),
                _ => Vec::new(),
            };
            let eq = self.queues.get(&t).unwrap_or(&empty);
            let entry = if q.verbose {
                vmap! {"queue" => list(&mut eq.queue.iter()), "completed" => list(&mut completed.iter()), "tasks" => list(&mut eq.tasks.iter())}
            } else {
                vmap! {"queue" => eq.queue.len() as i64, "completed" => eq.completed as i64, "tasks" => eq.tasks.len() as i64}
            };
            c.insert(t.to_string(), entry);
        }
        let unassigned = if q.verbose { list(&mut self.unassigned.iter()) } else { Value::from(self.unassigned.len() as i64) };
        c.insert("unassigned", unassigned);
        Ok(c)
    }

    /// The msg_ids of completed tasks that ran on engine `uuid` and that the store still
    /// holds, in completion order: what a verbose `queue_status` lists as `completed`.
    /// Stock lists every one since the controller started, from a list that grows by a
    /// string per task forever; the count (non-verbose) stays exact here. As stock, load-
    /// balanced tasks that were aborted are not counted.
    fn completed_in_store(&mut self, uuid: &str) -> Vec<String> {
        let q = Query::default().with(Field::EngineUuid, Op::Eq, Q::Str(uuid.to_owned())).with(Field::Completed, Op::Ne, Q::Nil);
        let Ok(mut recs) = self.store.find(&q, Fields::of(&[Field::Completed, Field::Queue, Field::ResultMetadata])) else {
            return Vec::new(); // --nodb: nothing to list
        };
        recs.retain(|r| !(r.queue.as_deref() == Some("task") && r.result_metadata.get("status").as_str() == Some("aborted")));
        recs.sort_by_key(|r| r.completed);
        recs.into_iter().map(|r| r.msg_id).collect()
    }

    fn resolve_targets(&self, items: &[Value]) -> Result<Vec<EngineId>, Value> {
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        for t in items {
            let id = match t {
                Value::Str(s) => self.reg.by_uuid(s).map(|e| e.id),
                other => other.as_i64().and_then(|i| u64::try_from(i).ok()).map(EngineId),
            };
            match id {
                Some(id) if self.reg.was_registered(id) => ok.push(id),
                _ => bad.push(match t {
                    Value::Str(s) => format!("'{s}'"),
                    other => other.as_i64().map_or_else(|| format!("{other:?}"), |i| i.to_string()),
                }),
            }
        }
        if !bad.is_empty() {
            return Err(error_value("IndexError", format!("No Such Engine: [{}]", bad.join(", "))));
        }
        if ok.is_empty() {
            return Err(error_value("IndexError", "No Engines Registered"));
        }
        Ok(ok)
    }

    /// `result_request` (spec 4.3.2): ids sorted, buffers in that order.
    fn results(&mut self, r: &ResultRequest) -> (Value, Vec<Vec<u8>>) {
        let mut ids: Vec<&String> = r.msg_ids.iter().collect();
        ids.sort();
        ids.dedup();
        let fields = if r.status_only { Fields::of(&[Field::Completed]) } else { Fields::result_entry() };
        let mut pending = Vec::new();
        let mut completed = Vec::new();
        let mut entries = Vec::new();
        let mut buffers = Vec::new();
        for id in ids {
            if self.pending.contains(id) {
                pending.push(Value::from(id.as_str()));
                continue;
            }
            let known_done = self.completed.contains(id);
            if known_done && r.status_only {
                completed.push(Value::from(id.as_str()));
                continue;
            }
            let rec = match self.store.get(id, fields) {
                Ok(rec) => rec,
                // NoDB: status from the hub's own sets only, as stock.
                Err(StoreError::NoData) if r.status_only => None,
                Err(e) => return (store_error(&e), vec![]),
            };
            let done = known_done || rec.as_ref().is_some_and(|r| r.completed.is_some());
            if done {
                completed.push(Value::from(id.as_str()));
                if !r.status_only {
                    match rec {
                        Some(mut rec) => {
                            entries.push((id.clone(), rec.result_entry()));
                            buffers.append(&mut rec.result_buffers);
                        }
                        None => {
                            let why = if self.store.was_culled(id) { "culled by the store's limits" } else { "purged" };
                            return (error_value("KeyError", format!("'No such message: {id}' ({why})")), vec![]);
                        }
                    }
                }
            } else if rec.is_some() {
                pending.push(Value::from(id.as_str()));
            } else {
                return (error_value("KeyError", format!("'No such message: {id}'")), vec![]);
            }
        }
        let mut c = vmap! {"status" => "ok", "pending" => Value::Array(pending), "completed" => Value::Array(completed)};
        for (id, e) in entries {
            c.insert(id, e);
        }
        (c, buffers)
    }

    /// `db_request` (spec 4.3.4): records matching the query, with `keys` (null: all but
    /// the buffers); buffers follow per record, request buffers then result buffers.
    fn db_query(&mut self, req: &Value) -> (Value, Vec<Vec<u8>>) {
        let q = match Query::parse(req.get("query")) {
            Ok(q) => q,
            Err(e) => return (error_value(e.ename, e.evalue), vec![]),
        };
        let keys: Option<Vec<String>> = match req.get("keys") {
            Value::Nil => None,
            Value::Str(k) => Some(vec![k.clone()]),
            Value::Array(items) => {
                let mut keys = Vec::with_capacity(items.len());
                for k in items {
                    match k.as_str() {
                        Some(k) => keys.push(k.to_owned()),
                        None => return (error_value("TypeError", format!("keys must be strings, not {k:?}")), vec![]),
                    }
                }
                Some(keys)
            }
            other => return (error_value("TypeError", format!("keys must be a list of strings, not {other:?}")), vec![]),
        };
        // The record keys in reply order; `msg_id` always first.
        let mut out_fields = vec![Field::MsgId];
        let (want_bufs, want_rbufs) = match keys.as_deref() {
            None | Some([]) => {
                out_fields = Fields::all_but_buffers().iter().collect();
                (false, false)
            }
            Some(keys) => {
                let bad: Vec<String> = keys.iter().filter(|k| Field::from_name(k).is_none()).map(|k| format!("'{k}'")).collect();
                if !bad.is_empty() {
                    return (error_value("KeyError", format!("Bad record key(s): [{}]", bad.join(", "))), vec![]);
                }
                for f in keys.iter().filter_map(|k| Field::from_name(k)) {
                    if !out_fields.contains(&f) {
                        out_fields.push(f);
                    }
                }
                (out_fields.contains(&Field::Buffers), out_fields.contains(&Field::ResultBuffers))
            }
        };
        let records = match self.store.find(&q, Fields::of(&out_fields)) {
            Ok(r) => r,
            Err(e) => return (store_error(&e), vec![]),
        };
        let mut buffers = Vec::new();
        let mut buffer_lens = Vec::new();
        let mut result_buffer_lens = Vec::new();
        let mut out = Vec::with_capacity(records.len());
        for mut rec in records {
            let m: Vec<(String, Value)> =
                out_fields.iter().filter(|f| !matches!(f, Field::Buffers | Field::ResultBuffers)).map(|f| (f.name().to_owned(), rec.value(*f))).collect();
            out.push(Value::Map(m));
            if want_bufs {
                buffer_lens.push(Value::from(rec.buffers.len() as i64));
                buffers.append(&mut rec.buffers);
            }
            if want_rbufs {
                result_buffer_lens.push(Value::from(rec.result_buffers.len() as i64));
                buffers.append(&mut rec.result_buffers);
            }
        }
        let lens = |want: bool, v: Vec<Value>| if want { Value::Array(v) } else { Value::Nil };
        let c = vmap! {
            "status" => "ok",
            "records" => Value::Array(out),
            "buffer_lens" => lens(want_bufs, buffer_lens),
            "result_buffer_lens" => lens(want_rbufs, result_buffer_lens),
        };
        (c, buffers)
    }

    /// `purge_request` (spec 4.3.5). The hub's own counters are not purged.
    fn purge(&mut self, req: &Value) -> Value {
        let completed = || Query::default().with(Field::Completed, Op::Ne, Q::Nil);
        let ids: Vec<String> = match req.get("msg_ids") {
            Value::Str(s) if s == "all" => {
                return match self.store.remove(&completed()) {
                    Ok(n) => {
                        info!(records = n, "purged all completed records");
                        vmap! {"status" => "ok"}
                    }
                    Err(e) => store_error(&e),
                };
            }
            Value::Str(s) => vec![s.clone()],
            Value::Array(items) => items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
            _ => Vec::new(),
        };
        if let Some(p) = ids.iter().find(|id| self.pending.contains(*id)) {
            return error_value("IndexError", format!("msg pending: '{p}'"));
        }
        if !ids.is_empty() {
            match self.store.remove(&Query::ids(&ids)) {
                Ok(n) => info!(records = n, "purged records by id"),
                Err(e) => return store_error(&e),
            }
        }
        let engine_ids: Vec<Value> = match req.get("engine_ids") {
            Value::Array(a) => a.clone(),
            Value::Nil => Vec::new(),
            one => vec![one.clone()],
        };
        for eid in engine_ids {
            let uuid = eid.as_i64().and_then(|i| u64::try_from(i).ok()).and_then(|i| self.reg.get(EngineId(i))).map(|e| e.uuid.clone());
            let Some(uuid) = uuid else {
                let shown = eid.as_i64().map_or_else(|| format!("{eid:?}"), |i| i.to_string());
                return error_value("IndexError", format!("No such engine: {shown}"));
            };
            match self.store.remove(&completed().with(Field::EngineUuid, Op::Eq, Q::Str(uuid))) {
                Ok(n) => info!(records = n, engine = ?eid, "purged an engine's records"),
                Err(e) => return store_error(&e),
            }
        }
        vmap! {"status" => "ok"}
    }

    /// A msg_id for a message the hub sends itself (Python's `{session}_{pid}_{n}` shape).
    fn new_msg_id(&mut self) -> String {
        let id = format!("{}_{}", self.id_prefix, self.id_counter);
        self.id_counter += 1;
        id
    }

    /// `resubmit_request` (spec 4.3.6): validates, then builds the new messages (returned
    /// as `HubOut::Submit`s for the task scheduler) and their records. Returns the
    /// submissions and the `old → new` mapping, or the error content.
    fn resubmit(&mut self, req: &Value) -> Result<Resubmission, Value> {
        let mut ids: Vec<String> = match req.get("msg_ids") {
            Value::Str(s) => vec![s.clone()],
            Value::Array(items) => items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
            other => return Err(error_value("TypeError", format!("msg_ids must be a list of strings, not {other:?}"))),
        };
        let mut seen = std::collections::HashSet::new();
        ids.retain(|id| seen.insert(id.clone()));
        let records = self.store.find(&Query::ids(&ids), Fields::of(&[Field::Header, Field::Content, Field::Buffers])).map_err(|e| store_error(&e))?;
        if records.len() > ids.len() {
            return Err(error_value("RuntimeError", "DB appears to be in an inconsistent state. More matching records were found than should exist"));
        }
        let found: std::collections::HashSet<&str> = records.iter().map(|r| r.msg_id.as_str()).collect();
        let missing: Vec<String> = ids.iter().filter(|id| !found.contains(id.as_str())).map(|id| format!("'{id}'")).collect();
        if !missing.is_empty() {
            return Err(error_value("KeyError", format!("No such msg(s): [{}]", missing.join(", "))));
        }
        if let Some(r) = records.iter().find(|r| r.header.get("msg_type").as_str().is_none()) {
            return Err(error_value("ValueError", format!("cannot resubmit {}: its request was never recorded", r.msg_id)));
        }
        let mut submits = Vec::with_capacity(records.len());
        let mut mapping = Vec::with_capacity(records.len());
        for rec in records {
            let new_id = self.new_msg_id();
            let now = utc_now();
            let date = format_iso(&now);
            // The old header with only msg_id and date replaced.
            let mut hv = rec.header.clone();
            hv.insert("msg_id", Value::from(new_id.as_str()));
            hv.insert("date", Value::from(date.as_str()));
            let text = |k: &str| hv.get(k).as_str().unwrap_or_default().to_owned();
            let header = Header {
                msg_id: new_id.clone(),
                msg_type: text("msg_type"),
                username: text("username"),
                session: text("session"),
                date,
                version: hv.get("version").as_str().unwrap_or(PROTOCOL_VERSION).to_owned(),
            };
            debug!(old = %rec.msg_id, new = %new_id, "resubmitting through the task scheduler");
            submits.push(HubOut::Submit { header, content: rec.content.clone(), buffers: rec.buffers.clone() });
            self.pending.insert(new_id.clone());
            let mut fresh = Some(TaskRecord {
                msg_id: new_id.clone(),
                header: hv,
                metadata: Value::map(),
                content: rec.content,
                buffers: rec.buffers,
                submitted: Some(now),
                ..Default::default()
            });
            let r = self.store.update(&new_id, Missing::Create, &mut |r| {
                if let Some(f) = fresh.take() {
                    if r.header.is_nil() && r.submitted.is_none() {
                        let io = std::mem::take(r);
                        *r = f;
                        keep_io(r, io);
                    } else {
                        r.merge_request(f);
                    }
                }
            });
            self.store_failed("resubmission", &new_id, r);
            mapping.push((rec.msg_id, new_id));
        }
        Ok((submits, mapping))
    }

    /// Logs a store failure on a write path (the hub carries on).
    fn store_failed(&mut self, what: &str, msg_id: &str, r: Result<bool, StoreError>) {
        if let Err(e) = r {
            self.drop_msg("store");
            warn!(msg_id, "could not store {what}: {e}");
        }
    }

    // ---------------------------------------------------------------- monitor copies

    /// A monitor copy from a relay: `topic`, the routing frames before the delimiter, and
    /// the (already verified) message parts.
    pub fn monitor(&mut self, topic: &[u8], routing: &[Vec<u8>], msg: MonitorMsg<'_>, now: Instant, out: &mut impl Outbox) {
        match topic {
            b"in" => self.mux_request(routing, msg, now),
            b"out" => self.mux_reply(routing, msg, now),
            b"intask" => self.task_request(msg, now),
            b"tracktask" => self.task_destination(msg),
            b"outtask" => self.task_reply(msg, now),
            b"iopub" => self.iopub(msg, now, out),
            b"incontrol" | b"outcontrol" | b"heartmonitor" => {}
            other => {
                self.drop_msg("unknown");
                warn!(topic = %String::from_utf8_lossy(other), "unknown monitor topic");
            }
        }
    }

    fn request_record(&self, msg: &MonitorMsg<'_>, queue: &str) -> Result<TaskRecord, String> {
        let header: Value = self.unpack(msg.header)?;
        let metadata: Value = self.unpack(msg.metadata)?;
        let content: Value = self.unpack(msg.content)?;
        let mut r = TaskRecord::new(&msg.h.msg_id);
        r.submitted = parse_iso(&msg.h.date);
        r.client_uuid = Some(msg.h.session.clone());
        r.queue = Some(queue.to_owned());
        r.label = metadata.get("label").clone();
        r.header = header;
        r.metadata = metadata;
        r.content = content;
        r.buffers = msg.buffers.to_vec();
        Ok(r)
    }

    fn save_request(&mut self, rec: TaskRecord) {
        if !self.store.keeps_records() {
            return;
        }
        let id = rec.msg_id.clone();
        let mut rec = Some(rec);
        let r = self.store.update(&id, Missing::Create, &mut |r| {
            let Some(rec) = rec.take() else { return };
            if r.header.is_nil() && r.submitted.is_none() {
                // Only IOPub output so far: the request record, plus that output.
                let io = std::mem::take(r);
                *r = rec;
                keep_io(r, io);
            } else {
                r.merge_request(rec);
            }
        });
        self.store_failed("request", &id, r);
    }

    fn mux_request(&mut self, routing: &[Vec<u8>], msg: MonitorMsg<'_>, now: Instant) {
        let Some(target) = routing.first() else {
            self.drop_msg("malformed");
            return;
        };
        let uuid = String::from_utf8_lossy(target).into_owned();
        let Some(eid) = self.reg.by_uuid(&uuid).map(|e| e.id) else {
            warn!(target = %uuid, msg_id = %msg.h.msg_id, "direct request for an engine that is not registered");
            return;
        };
        let mut rec = match self.request_record(&msg, "mux") {
            Ok(r) => r,
            Err(e) => {
                self.drop_msg("malformed");
                warn!("unpackable mux request: {e}");
                return;
            }
        };
        rec.engine_uuid = Some(uuid);
        let id = rec.msg_id.clone();
        debug!(msg_id = %id, engine = %eid, "mux request");
        *self.stats.submitted.entry("mux").or_default() += 1;
        self.status.submitted(&id, &rec.label);
        self.seen.insert(id.clone(), now);
        self.pending.insert(id.clone());
        self.queues.entry(eid).or_default().queue.insert(id);
        self.save_request(rec);
    }

    /// `md` is the reply's metadata, already unpacked by the caller (which reads its
    /// status), so it is not unpacked twice per reply.
    fn result_update(&self, msg: &MonitorMsg<'_>, md: Result<Value, String>) -> Result<(Value, Value, Value), String> {
        Ok((self.unpack(msg.header)?, md?, self.unpack(msg.content)?))
    }

    fn store_result(&mut self, msg_id: &str, msg: &MonitorMsg<'_>, engine: Option<String>, md: Result<Value, String>) {
        if !self.store.keeps_records() {
            return;
        }
        let (rh, rm, rc) = match self.result_update(msg, md) {
            Ok(v) => v,
            Err(e) => {
                self.drop_msg("malformed");
                warn!(msg_id, "unpackable reply: {e}");
                return;
            }
        };
        let started = rm.get("started").as_str().and_then(parse_iso);
        let completed = parse_iso(&msg.h.date);
        let mut update = Some((rh, rm, rc, msg.buffers.to_vec(), engine));
        let received = utc_now();
        let r = self.store.update(msg_id, Missing::Skip, &mut |r| {
            let Some((rh, rm, rc, bufs, engine)) = update.take() else { return };
            r.result_header = rh;
            r.result_metadata = rm;
            r.result_content = rc;
            r.result_buffers = bufs;
            r.started = started;
            r.completed = completed.or(Some(received));
            r.received = Some(received);
            if let Some(e) = engine {
                r.engine_uuid = Some(e);
            }
        });
        match r {
            Ok(false) => debug!(msg_id, "reply for a record no longer in the store (culled or purged)"),
            r => self.store_failed("reply", msg_id, r),
        }
    }

    fn mux_reply(&mut self, routing: &[Vec<u8>], msg: MonitorMsg<'_>, now: Instant) {
        let Some(engine) = routing.get(1) else {
            self.drop_msg("malformed");
            return;
        };
        let uuid = String::from_utf8_lossy(engine).into_owned();
        let Some(eid) = self.reg.by_uuid(&uuid).map(|e| e.id) else {
            warn!(engine = %uuid, "reply from an engine that is not registered");
            return;
        };
        let parent = msg.parent_id.clone();
        let md = self.unpack::<Value>(msg.metadata);
        if self.pending.remove(&parent) {
            self.completed.insert(&parent);
            let q = self.queues.entry(eid).or_default();
            q.queue.shift_remove(&parent);
            q.completed += 1;
            let m = md.as_ref().unwrap_or(&Value::Nil);
            let seen = self.seen.remove(&parent);
            let (status, run) = (outcome(m.get("status").as_str().unwrap_or("")), run_seconds(m, &msg.h.date));
            self.stats.finished("mux", status, seen, now, run);
            let o = crate::status::Outcome::from_name(status);
            self.status.finished(&parent, Some(eid), crate::status::Queue::Mux, o, seen, run, now, msg.content);
        } else if !self.completed.contains(&parent) {
            debug!(msg_id = %parent, "reply to an unknown direct request");
            return;
        }
        debug!(msg_id = %parent, engine = %eid, "mux reply");
        self.store_result(&parent, &msg, None, md);
    }

    fn task_request(&mut self, msg: MonitorMsg<'_>, now: Instant) {
        let rec = match self.request_record(&msg, "task") {
            Ok(r) => r,
            Err(e) => {
                self.drop_msg("malformed");
                warn!("unpackable task request: {e}");
                return;
            }
        };
        let id = rec.msg_id.clone();
        debug!(msg_id = %id, "task submitted");
        *self.stats.submitted.entry("task").or_default() += 1;
        self.status.submitted(&id, &rec.label);
        self.seen.insert(id.clone(), now);
        self.pending.insert(id.clone());
        self.unassigned.insert(id);
        self.save_request(rec);
    }

    fn task_destination(&mut self, msg: MonitorMsg<'_>) {
        let d: TaskDestination = match self.unpack(msg.content) {
            Ok(d) => d,
            Err(e) => {
                self.drop_msg("malformed");
                warn!("bad task_destination: {e}");
                return;
            }
        };
        self.unassigned.shift_remove(&d.msg_id);
        let Some(eid) = self.reg.by_uuid(&d.engine_id).map(|e| e.id) else {
            warn!(engine = %d.engine_id, msg_id = %d.msg_id, "task sent to an engine that is not registered");
            return;
        };
        if !self.pending.contains(&d.msg_id) {
            // Nothing would ever take it off the engine's list again.
            debug!(msg_id = %d.msg_id, "destination of a task that is not pending");
            return;
        }
        debug!(msg_id = %d.msg_id, engine = %eid, "task assigned");
        self.queues.entry(eid).or_default().tasks.insert(d.msg_id.clone());
        // A retried task is assigned again: it leaves the first engine's list (stock
        // leaves it there forever, and that engine's `tasks` count never drops to 0).
        if let Some(prev) = self.task_owner.insert(d.msg_id.clone(), eid) {
            if prev != eid {
                if let Some(q) = self.queues.get_mut(&prev) {
                    q.tasks.shift_remove(&d.msg_id);
                }
            }
        }
        let r = self.store.update(&d.msg_id, Missing::Skip, &mut |r| r.engine_uuid = Some(d.engine_id.clone()));
        self.store_failed("task destination", &d.msg_id, r);
    }

    fn task_reply(&mut self, msg: MonitorMsg<'_>, now: Instant) {
        let parent = msg.parent_id.clone();
        let md = self.unpack::<Value>(msg.metadata);
        let m = md.as_ref().unwrap_or(&Value::Nil);
        let engine = m.get("engine").as_str().unwrap_or("").to_owned();
        let status = outcome(m.get("status").as_str().unwrap_or(""));
        self.unassigned.shift_remove(&parent);
        if !self.pending.remove(&parent) {
            debug!(msg_id = %parent, "reply to an unknown task");
            return;
        }
        self.completed.insert(&parent);
        let seen = self.seen.remove(&parent);
        let run = run_seconds(m, &msg.h.date);
        self.stats.finished("task", status, seen, now, run);
        let owner = self.task_owner.remove(&parent);
        let o = crate::status::Outcome::from_name(status);
        self.status.finished(&parent, owner, crate::status::Queue::Task, o, seen, run, now, msg.content);
        if let Some(eid) = owner {
            let q = self.queues.entry(eid).or_default();
            q.tasks.shift_remove(&parent);
            if status != "aborted" && !engine.is_empty() {
                q.completed += 1;
            }
        }
        debug!(msg_id = %parent, status, "task finished");
        self.store_result(&parent, &msg, Some(engine), md);
    }

    fn iopub(&mut self, msg: MonitorMsg<'_>, now: Instant, out: &mut impl Outbox) {
        let t = msg.h.msg_type.as_str();
        if t == "shutdown_reply" {
            if let Some(id) = self.reg.by_uuid(&msg.h.session).map(|e| e.id) {
                info!(engine = %id, "engine shut down (shutdown_reply on IOPub)");
                self.unregister(id, now, out);
            }
            return;
        }
        if !matches!(t, "stream" | "error" | "execute_input" | "execute_result") || msg.parent_id.is_empty() || !self.store.keeps_records() {
            return;
        }
        let content: Value = match self.unpack(msg.content) {
            Ok(c) => c,
            Err(e) => {
                self.drop_msg("malformed");
                warn!("unpackable iopub content: {e}");
                return;
            }
        };
        let parent = msg.parent_id.clone();
        let mut content = Some(content);
        let r = self.store.update(&parent, Missing::Create, &mut |r| {
            let Some(content) = content.take() else { return };
            match t {
                "stream" => {
                    let text = content.get("text").as_str().unwrap_or("");
                    if content.get("name").as_str() == Some("stderr") {
                        r.stderr.push_str(text);
                    } else {
                        r.stdout.push_str(text);
                    }
                }
                "error" => r.error = content,
                "execute_input" => r.execute_input = content.get("code").as_str().map(str::to_owned),
                _ => r.execute_result = content,
            }
        });
        self.store_failed("IOPub output", &parent, r);
    }
}

/// Read-only views for the status page (`crate::status::collect`).
impl Hub {
    pub(crate) fn heartbeat_period(&self) -> Duration {
        self.s.hb_period
    }

    /// (engine, tasks sent to it and not answered yet, tasks it completed) for every
    /// engine the hub has kept a queue for.
    pub(crate) fn engine_loads(&self) -> impl Iterator<Item = (EngineId, usize, u64)> + '_ {
        self.queues.iter().map(|(id, q)| (*id, q.queue.len() + q.tasks.len(), q.completed))
    }
}

/// The task-scheduler submissions of a resubmit, and its `old → new` msg_id mapping.
type Resubmission = (Vec<HubOut>, Vec<(String, String)>);

/// The error content for a failed store read.
/// The first routing frame, readable: uuids as text, random ids as hex.
pub fn peer_name(idents: &[Vec<u8>]) -> String {
    match idents.first() {
        Some(f) if !f.is_empty() && f.iter().all(|b| b.is_ascii_graphic()) => String::from_utf8_lossy(f).into_owned(),
        Some(f) => f.iter().take(16).map(|x| format!("{x:02x}")).collect(),
        None => String::new(),
    }
}

fn store_error(e: &StoreError) -> Value {
    error_value(e.ename(), e.evalue())
}

/// Carries IOPub output recorded before the request (spec 6.2) into the request record.
fn keep_io(r: &mut TaskRecord, io: TaskRecord) {
    r.stdout = io.stdout;
    r.stderr = io.stderr;
    r.execute_input = io.execute_input;
    r.execute_result = io.execute_result;
    r.error = io.error;
}

/// A verified monitor message, decoded as far as every topic needs.
pub struct MonitorMsg<'a> {
    pub h: &'a Header,
    pub parent_id: String,
    pub header: &'a [u8],
    pub metadata: &'a [u8],
    pub content: &'a [u8],
    pub buffers: &'a [Vec<u8>],
}

/// Adapts a closure to the outbox trait inside `query`.
struct VecOut<'a, F: FnMut(HubOut)>(&'a mut F);

impl<F: FnMut(HubOut)> Outbox for VecOut<'_, F> {
    fn push(&mut self, out: HubOut) {
        (self.0)(out);
    }
}
