//! Load-balancing task scheduler (issue 3). Pure state machine; see `TaskScheduler`.
//!
//! Behaviour follows ipyparallel 9.2.0's `TaskScheduler` (docs/protocol.md §5.3): LRU engine list with
//! loads, `hwm`, the five chooser schemes, time (`after`) and location (`follow`)
//! dependencies, `targets`, retries with per-job blacklists, `timeout` while unscheduled,
//! and stranded tasks of dead engines. No sockets and no clocks: frames come in, decisions
//! go out through a [`TaskOutbox`], and time is whatever `Instant` the caller passes.
//!
//! Deliberate differences from the Python code (all bugs or crash paths there):
//! * a job that ran never re-enters a later full-queue rescan (Python can send it twice);
//! * a full rescan keeps arrival order (Python's `extendleft` reverses it);
//! * dependents of a finished task are all re-evaluated even when a rescan stops early
//!   because every engine is full (Python may leave unreachable ones waiting);
//! * replies for tasks not pending on the replying engine are refused (`TaskError`),
//!   so a client never gets two replies for one task;
//! * an engine that re-registers under the same uuid gets fresh state while its old
//!   incarnation's pending jobs still become stranded `EngineError`s;
//! * a duplicate msg_id submission is refused; malformed `after`/`follow` contents
//!   (non-string ids, `success` and `failure` both false) fail as `InvalidDependency`
//!   instead of being dropped silently; a reply without `status` counts as an error
//!   (Python raises and drops it, leaving the task pending forever);
//! * the `outtask` copy of a final reply goes out before the dispatches it unblocks
//!   (Python publishes it after updating the graph); the hub does not care;
//! * which engine ran a finished task is remembered for the most recently finished or
//!   followed ~8–16k tasks only (`ids.rs`; whether it finished and whether it failed are
//!   remembered exactly, for every task): a `follow` on a task whose engine is forgotten
//!   fails with `ImpossibleDependency` instead of being routed. Python keeps every msg_id
//!   forever, which is unbounded memory.
//!
//! Memory: live tasks only, plus the compact `History` of finished ones (a few bytes per
//! 65,536 tasks for Session-shaped msg_ids that all finished; see `ids.rs`).
//!
//! Cost per task: a few hash lookups, O(engines) to pick an engine, O(log queue) for
//! queued jobs; a full rescan walks only jobs whose `after` is already met and stops when
//! every engine is full. The rest is the protocol work the interface requires (unpacking
//! two dicts per message, one signed `task_destination`, copying frames for the hub).

pub mod admission;
mod dependency;
mod ids;
mod replies;
mod scheme;
mod stamp;
mod submit;
mod util;

#[cfg(test)]
mod tests;

pub use scheme::{Scheme, UnknownScheme};
use util::*;

use dependency::{Dep, Found};
use ippx_protocol::content::ErrorContent;
use ippx_protocol::metadata::{ReplyStatus, RequestMetadata};
use ippx_protocol::wire::{find_delim, DELIM};
use ippx_protocol::{MonitorTopic, Parent, Session, Value};
use scheme::Rng;
use serde::{Deserialize, Serialize};
use stamp::Stamp;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::ops::Bound;
use std::time::{Duration, Instant};

pub type Frames = Vec<Vec<u8>>;

/// Where the scheduler's decisions go. The socket loop implements it; tests use a recording fake.
pub trait TaskOutbox {
    /// To the engine-facing ROUTER: frames start with the engine uuid bytes:
    /// `[uuid, client_id, DELIM, sig, h, p, m, c, bufs...]`.
    fn to_engine(&mut self, frames: Frames);
    /// To the client-facing ROUTER: `[client_id, (engine uuid,)? DELIM, ...]`.
    fn to_client(&mut self, frames: Frames);
    /// A monitor copy for the hub (a task topic); frames are the routing frames + DELIM +
    /// signed message as in docs/protocol.md §5.7.
    fn to_hub(&mut self, topic: MonitorTopic, frames: Frames);
}

#[derive(Clone, Debug)]
pub struct TaskConfig {
    pub scheme: Scheme,
    /// Maximum outstanding tasks per engine; 0 = unlimited. Python's default is 1.
    pub hwm: usize,
    /// How long after an engine unregisters its pending tasks fail with `EngineError` (5 s).
    pub stranded_delay: Duration,
    /// Seed for the random schemes.
    pub seed: u64,
}

impl Default for TaskConfig {
    fn default() -> Self {
        TaskConfig { scheme: Scheme::LeastLoad, hwm: 1, stranded_delay: Duration::from_secs(5), seed: 0 }
    }
}

/// Counters for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskStats {
    /// Live (registered) engines.
    pub engines: usize,
    /// Jobs waiting in the scheduler (unassigned): unmet dependencies, no free engine, ...
    pub queued: usize,
    /// Jobs sent to an engine and not answered yet (including on dead engines until stranded).
    pub pending: usize,
    /// Final replies with status ok.
    pub completed: u64,
    /// Final error replies, from engines or generated by the scheduler.
    pub failed: u64,
    /// Accepted submissions.
    pub submitted: u64,
    /// Jobs sent on or queued again after an unmet dependency, a retried failure or a
    /// retried `EngineError`.
    pub resubmitted: u64,
    /// Replies to tasks sent before a controller restart, passed on to client and hub.
    pub passed_through: u64,
}

/// Input the scheduler could not use. The loop logs and counts these.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("no <IDS|MSG> delimiter in {0} frames")]
    NoDelimiter(usize),
    #[error("only {0} frames after <IDS|MSG>, need 5")]
    TooShort(usize),
    #[error("{need} routing frame(s) needed before <IDS|MSG>, got {got}")]
    MissingRouting { need: usize, got: usize },
    #[error("cannot unpack {part}: {error}")]
    Unpack { part: &'static str, error: String },
    #[error("task {0:?} was already submitted")]
    DuplicateMsgId(String),
    #[error("reply for unknown or finished task {0:?}")]
    UnknownTask(String),
    #[error("reply for task {msg_id:?} from engine {engine:?}, which is not running it")]
    WrongEngine { msg_id: String, engine: String },
    #[error("refused (answered MessageTooLarge): {0}")]
    TooLarge(String),
    #[error("refused (answered UnknownMessageType): {0:?} is not apply_request or execute_request")]
    NotSchedulable(String),
}

impl TaskError {
    /// Stable label for drop counters.
    pub fn reason(&self) -> &'static str {
        match self {
            TaskError::DuplicateMsgId(_) => "duplicate",
            TaskError::UnknownTask(_) | TaskError::WrongEngine { .. } => "unknown",
            TaskError::TooLarge(_) => "too_large",
            TaskError::NotSchedulable(_) => "refused",
            _ => "malformed",
        }
    }
}

/// Index of a live task in the task table. Slots are reused once a task finishes, so a
/// key means nothing after its task is gone; dependencies and timers name tasks by their
/// serial number instead.
pub(crate) type TaskKey = u32;
/// "No engine": scheduler-generated failures did not run anywhere.
pub(crate) const NO_ENGINE: u32 = u32::MAX;

/// One entry per live task. Finished tasks leave the table (their outcome goes to
/// `History`), so the table is as large as the most tasks ever live at once.
pub(crate) enum Slot {
    Live(Box<Job>),
    /// Live job temporarily taken out while it is being handled.
    Taken,
    /// Unused; on the free list.
    Free,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loc {
    /// Being routed (neither queued nor on an engine).
    Detached,
    /// Waiting in the scheduler; `ready` = its `after` is met (then it is in `ready` under `qseq`).
    Queued { qseq: u64, ready: bool },
    /// On engine incarnation `inc`, at `pos` in that engine's pending list.
    Pending { inc: u32, pos: u32 },
}

pub(crate) struct Job {
    msg_id: String,
    /// Submission number, never reused: the task's identity in dependencies and timers.
    serial: u64,
    /// As received from the client: `[client_id.., DELIM, sig, h, p, m, c, bufs...]`.
    frames: Frames,
    delim: usize,
    /// Sorted engine name ids (empty = any).
    targets: Vec<u32>,
    /// Sorted engine name ids this job must not go to again.
    blacklist: Vec<u32>,
    after: Dep,
    follow: Dep,
    timeout: Option<Duration>,
    retries: i64,
    loc: Loc,
    /// Latest timeout arming; older timers are stale.
    arm: u32,
    /// Order of assignment to engines (stranded tasks are handled in this order).
    assigned: u64,
}

impl Job {
    fn header_bytes(&self) -> &[u8] {
        &self.frames[self.delim + 2]
    }
}

struct EngineRec {
    uuid: String,
    name: u32,
    alive: bool,
    /// Tasks on this engine incarnation; each job knows its index here.
    pending: Vec<TaskKey>,
}

/// An alive engine in LRU order, with its load (outstanding jobs).
#[derive(Clone, Copy, Debug)]
struct Lane {
    inc: u32,
    name: u32,
    load: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    Timeout { task: TaskKey, serial: u64, arm: u32 },
    Stranded { inc: u32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    at: Instant,
    seq: u64,
    kind: TimerKind,
}

enum Run {
    Started,
    Waiting,
    Impossible,
}

/// `task_destination` content (docs/protocol.md §5.4); `engine_id` is the engine's uuid string.
/// Same shape as `ippx_protocol::content::TaskDestination`, borrowed.
#[derive(Serialize)]
struct Destination<'a> {
    msg_id: &'a str,
    engine_id: &'a str,
}

#[derive(Deserialize)]
struct HeaderId {
    msg_id: String,
    #[serde(default)]
    msg_type: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ParentId {
    msg_id: Option<String>,
}

pub struct TaskScheduler {
    cfg: TaskConfig,
    hwm: u32,
    session: Session,
    stamp: Stamp,
    /// Routing frame of `tracktask` copies: the scheduler's session id.
    ident: Vec<u8>,
    rng: Rng,

    /// Engine incarnations, never reused (completed/failed sets refer to them).
    engines: Vec<EngineRec>,
    /// Alive engines in LRU order (front = least recently used).
    order: Vec<Lane>,
    /// uuid → stable name id (blacklists, targets).
    names: HashMap<Box<[u8]>, u32>,
    /// name id → alive incarnation or `NO_ENGINE`.
    name_alive: Vec<u32>,
    /// Alive engines with load < hwm (hwm > 0 only).
    n_avail: usize,
    /// Alive engines with load == hwm − 1 (hwm > 0 only): Python's full-rescan trigger.
    n_edge: usize,

    /// msg_id → key of every live (submitted, unfinished) task.
    live: HashMap<Box<str>, TaskKey>,
    /// Outcomes of finished tasks (compact; see `ids.rs`).
    history: ids::History,
    tasks: Vec<Slot>,
    /// Free slots of `tasks`.
    free: Vec<TaskKey>,
    /// Serial number of the next submission.
    serial: u64,
    /// Queued jobs whose `after` is met, in queue (arrival) order.
    ready: BTreeMap<u64, TaskKey>,
    qseq: u64,
    assign_seq: u64,
    /// Serial of an unfinished task → jobs whose dependencies name it. Entries go when
    /// that task finishes; a listed job may be gone by then (its slot even reused), which
    /// is harmless: only a job that still waits on that serial is touched.
    graph: HashMap<u64, Vec<TaskKey>>,
    timers: BinaryHeap<Reverse<Timer>>,
    timer_seq: u64,
    /// Tasks that just finished (serial, ok, engine), whose dependents still have to
    /// learn the outcome and be re-evaluated.
    finished: VecDeque<(u64, bool, u32)>,
    /// A full rescan of the ready queue is due.
    rescan: bool,
    scratch: Vec<u32>,

    stats: TaskStats,
}

impl TaskScheduler {
    /// `session` signs scheduler-made messages (task_destination, failure replies) and
    /// unpacks headers/metadata; it must use the controller's key and packer.
    pub fn new(cfg: TaskConfig, mut session: Session) -> Self {
        let ident = session.session_id().as_bytes().to_vec();
        TaskScheduler {
            stamp: Stamp::new(&mut session),
            hwm: u32::try_from(cfg.hwm).unwrap_or(u32::MAX),
            rng: Rng::new(cfg.seed),
            cfg,
            session,
            ident,
            engines: Vec::new(),
            order: Vec::new(),
            names: HashMap::new(),
            name_alive: Vec::new(),
            n_avail: 0,
            n_edge: 0,
            live: HashMap::new(),
            history: ids::History::default(),
            tasks: Vec::new(),
            free: Vec::new(),
            serial: 0,
            ready: BTreeMap::new(),
            qseq: 0,
            assign_seq: 0,
            graph: HashMap::new(),
            timers: BinaryHeap::new(),
            timer_seq: 0,
            finished: VecDeque::new(),
            rescan: false,
            scratch: Vec::new(),
            stats: TaskStats::default(),
        }
    }

    pub fn config(&self) -> &TaskConfig {
        &self.cfg
    }

    pub fn stats(&self) -> TaskStats {
        TaskStats { engines: self.order.len(), ..self.stats }
    }

    /// The earliest due timer (task timeout or stranded-task cleanup), if any. May be a
    /// timer that turns out stale; `tick` then just drops it.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.peek().map(|t| t.0.at)
    }

    // ------------------------------------------------------------------------------
    // Engines
    // ------------------------------------------------------------------------------

    fn name_of(&mut self, uuid: &[u8]) -> u32 {
        if let Some(&n) = self.names.get(uuid) {
            return n;
        }
        let n = self.name_alive.len() as u32;
        self.names.insert(uuid.into(), n);
        self.name_alive.push(NO_ENGINE);
        n
    }

    fn lane_pos(&self, inc: u32) -> Option<usize> {
        self.order.iter().position(|l| l.inc == inc)
    }

    /// Keeps `n_avail` / `n_edge` in step with a load change (`None` = engine absent).
    fn track_load(&mut self, old: Option<u32>, new: Option<u32>) {
        if self.hwm == 0 {
            return;
        }
        let h = self.hwm;
        if let Some(o) = old {
            self.n_avail -= usize::from(o < h);
            self.n_edge -= usize::from(o == h - 1);
        }
        if let Some(n) = new {
            self.n_avail += usize::from(n < h);
            self.n_edge += usize::from(n == h - 1);
        }
    }

    fn any_available(&self) -> bool {
        if self.hwm == 0 {
            !self.order.is_empty()
        } else {
            self.n_avail > 0
        }
    }

    /// `registration_notification`: insert at the front of the LRU list with load 0 and
    /// rescan the queue. Idempotent for an engine that is already registered.
    pub fn add_engine(&mut self, uuid: &str, _now: Instant, out: &mut impl TaskOutbox) {
        let name = self.name_of(uuid.as_bytes());
        if self.name_alive[name as usize] != NO_ENGINE {
            return;
        }
        let inc = self.engines.len() as u32;
        self.engines.push(EngineRec { uuid: uuid.to_owned(), name, alive: true, pending: Vec::new() });
        self.name_alive[name as usize] = inc;
        self.order.insert(0, Lane { inc, name, load: 0 });
        self.track_load(None, Some(0));
        self.rescan = true;
        self.settle(out);
    }

    /// `unregistration_notification`: the engine gets no more work; if it still has
    /// pending jobs they fail with `EngineError` after `stranded_delay` unless their
    /// replies arrive first. Unknown engines are ignored.
    pub fn remove_engine(&mut self, uuid: &str, now: Instant, _out: &mut impl TaskOutbox) {
        let Some(&name) = self.names.get(uuid.as_bytes()) else {
            return;
        };
        let inc = self.name_alive[name as usize];
        if inc == NO_ENGINE {
            return;
        }
        self.name_alive[name as usize] = NO_ENGINE;
        if let Some(pos) = self.lane_pos(inc) {
            let lane = self.order.remove(pos);
            self.track_load(Some(lane.load), None);
        }
        let eng = &mut self.engines[inc as usize];
        eng.alive = false;
        if !eng.pending.is_empty() {
            let at = now.checked_add(self.cfg.stranded_delay).unwrap_or(now);
            self.push_timer(at, TimerKind::Stranded { inc });
        }
    }

    fn push_timer(&mut self, at: Instant, kind: TimerKind) {
        self.timer_seq += 1;
        self.timers.push(Reverse(Timer { at, seq: self.timer_seq, kind }));
    }
}
