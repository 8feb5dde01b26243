//! The hub as a sans-IO state machine: registration, heartbeats, the query socket and the
//! task bookkeeping fed by monitor copies. Inputs are decoded messages and the time
//! ([`Now`]: the monotonic clock for timers, the wall clock for records); outputs go to
//! an [`Outbox`]. The socket loop in `controller::io` is the only I/O.
//!
//! * [`book`]: the task book (pending, completed, queues, owners, stranded engines);
//! * [`request`]: query requests decoded once; [`queries`]: their handlers;
//! * [`monitor`]: the relays' monitor copies.

pub mod book;
mod hearts;
pub mod inflight;
mod monitor;
mod queries;
pub mod request;

pub use book::{Bookkeeping, TaskBook};
pub use monitor::MonitorMsg;
pub use request::{Request, RequestError};

use crate::heart::HeartMonitor;
use crate::records::{Fields, Limits, MemStore, TaskRecord};
use crate::registry::{Engine, EngineState, Registry, Unregistered};
use crate::store::{Missing, NoDb, Store, StoreError};
use ippx_protocol::content::{EngineNotification, EnginePorts, ErrorContent};
use ippx_protocol::datetime::{format_iso, now as utc_now, Timestamp};
use ippx_protocol::{vmap, EngineId, Header, Packer, Value};
use monitor::keep_io;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// The time as the hub takes it: every input that needs the time carries one, so the
/// state machine never reads a clock itself (tests drive it with made-up times).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Now {
    /// For timers: heartbeats, registration timeouts, latencies.
    pub at: Instant,
    /// For records and messages: `completed`, `received`, resubmission dates.
    pub wall: Timestamp,
}

impl Now {
    /// Both clocks, read now (the socket loop's input).
    pub fn system() -> Now {
        Now { at: Instant::now(), wall: utc_now() }
    }
}

impl std::ops::AddAssign<Duration> for Now {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

impl std::ops::Add<Duration> for Now {
    type Output = Now;
    fn add(self, d: Duration) -> Now {
        Now { at: self.at + d, wall: self.wall + chrono::Duration::from_std(d).unwrap_or_else(|_| chrono::Duration::zero()) }
    }
}

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
    /// Send a request into the task scheduler as if from a client (resubmit, docs/protocol.md §4.3.6).
    /// The loop signs it with `header` as given and `parent_header` equal to it; replies
    /// to the hub's own submissions are discarded.
    Submit { header: Header, content: Value, buffers: Vec<Vec<u8>> },
    /// Records were purged: hand the freed memory back to the OS ([`crate::memory`]).
    ReleaseMemory,
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
    /// Engines the process's file-descriptor limit leaves room for
    /// ([`crate::controller::fdlimit`]); registrations beyond it are refused with a
    /// clear error rather than left to fail somewhere in libzmq.
    pub max_engines: usize,
    /// Re-admit an engine whose heart stopped and then answers again (default); `false`
    /// keeps stock's behaviour, where it stays out.
    pub readmit: bool,
}

/// Counters for logs and metrics.
#[derive(Debug, Default, Clone)]
pub struct HubStats {
    pub registered: u64,
    pub unregistered: u64,
    /// Lost engines whose heart came back ([`Hub::readmit`]).
    pub readmitted: u64,
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

pub struct Hub {
    s: HubSettings,
    reg: Registry,
    heart: HeartMonitor,
    store: Box<dyn Store>,
    /// Prefix and counter of msg_ids the hub makes for resubmissions.
    id_prefix: String,
    id_counter: u64,
    book: TaskBook,
    /// Requests in flight when an earlier hub died (`--restore`).
    inflight: inflight::Inflight,
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
            book: TaskBook::default(),
            inflight: inflight::Inflight::default(),
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
        self.book.pending_count()
    }

    pub fn unassigned_count(&self) -> usize {
        self.book.unassigned().len()
    }

    /// The task book (read-only: diagnostics, the status page).
    pub fn book(&self) -> &TaskBook {
        &self.book
    }

    /// Sizes of the per-task bookkeeping (tests, diagnostics).
    pub fn bookkeeping(&self) -> Bookkeeping {
        self.book.bookkeeping()
    }

    /// `--restore`: engines come back registered, without notifications.
    pub fn restore(&mut self, state: &EngineState) {
        self.reg.restore(state);
        for e in self.reg.engines() {
            self.book.engine(e.id, &e.uuid);
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
        if let Some(s) = self.book.next_stranded() {
            d = d.min(s);
        }
        d
    }

    pub fn tick(&mut self, now: Now, out: &mut impl Outbox) {
        if now.at >= self.heart.next_tick() {
            let beat = self.heart.tick(now.at);
            out.push(HubOut::Ping(beat.ping));
            self.stats.missed_beats += beat.missed as u64;
            for h in beat.new_hearts {
                let uuid = String::from_utf8_lossy(&h).into_owned();
                // A restored engine's heart is new to this monitor but its engine is known.
                if !self.complete_registration(&uuid, out) && self.reg.by_uuid(&uuid).is_none() && !self.readmit(&uuid, now, out) {
                    debug!(heart = %uuid, "new heart without a pending registration");
                }
            }
            for h in beat.stopped_hearts {
                let uuid = String::from_utf8_lossy(&h).into_owned();
                if let Some(e) = self.reg.by_uuid(&uuid).cloned() {
                    warn!(engine = %e.id, %uuid, "heart stopped: unregistering engine");
                    self.unregister(e.id, now, out);
                    if self.s.readmit {
                        self.reg.mark_lost(&e);
                    }
                }
            }
        }
        if self.reg.has_pending() {
            match self.next_probe {
                Some(t) if t > now.at => {}
                _ => {
                    out.push(HubOut::Ping(self.heart.probe(now.at)));
                    self.next_probe = Some(now.at + PROBE_INTERVAL.min(self.s.hb_period));
                }
            }
        } else {
            self.next_probe = None;
        }
        for p in self.reg.expire(now.at) {
            warn!(engine = %p.id, uuid = %p.uuid, "registration timed out before the engine's heart answered");
        }
        for (e, ids) in self.book.fail_stranded(now.at) {
            self.fail_stranded_direct(&e, ids, now);
        }
        self.store.maintain(now.at);
    }

    // ---------------------------------------------------------------- queries

    /// Logs a store failure on a write path (the hub carries on).
    fn store_failed(&mut self, what: &str, msg_id: &str, r: Result<bool, StoreError>) {
        if let Err(e) = r {
            self.drop_msg("store");
            warn!(msg_id, "could not store {what}: {e}");
        }
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
        self.book.all_queues().map(|(id, q)| (id, q.queue.len() + q.tasks.len(), q.completed))
    }
}

/// The first routing frame, readable: uuids as text, random ids as hex.
pub fn peer_name(idents: &[Vec<u8>]) -> String {
    match idents.first() {
        Some(f) if !f.is_empty() && f.iter().all(|b| b.is_ascii_graphic()) => String::from_utf8_lossy(f).into_owned(),
        Some(f) => f.iter().take(16).map(|x| format!("{x:02x}")).collect(),
        None => String::new(),
    }
}

/// The error content for a failed store read.
fn store_error(e: &StoreError) -> Value {
    error_value(e.ename(), e.evalue())
}
