//! The hub's task book: which tasks are pending, which completed, which load-balanced
//! tasks have no engine yet, each engine's queue and task lists, and the engines whose
//! direct queue is about to be failed. Plain data with no I/O and no store: the hub
//! feeds it monitor copies and asks it for `queue_status`, `load` and result status.

use crate::registry::Engine;
use indexmap::IndexSet;
use ippx_protocol::idset::IdSet;
use ippx_protocol::EngineId;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

/// Per-engine msg_id lists reported by `queue_request`.
#[derive(Debug, Default)]
pub struct EngineQueues {
    /// The engine's uuid, to find its completed records in the store (verbose
    /// `queue_status`) after it is gone from the registry.
    pub uuid: Option<String>,
    /// Direct (MUX) requests sent to the engine and not answered yet.
    pub queue: IndexSet<String>,
    /// Load-balanced tasks assigned to the engine and not answered yet.
    pub tasks: IndexSet<String>,
    /// How many tasks completed on the engine. Stock keeps the list of their msg_ids,
    /// which grows forever; a verbose `queue_status` lists the ones the store still
    /// holds instead (docs/store.md).
    pub completed: u64,
}

/// What [`TaskBook::bookkeeping`] reports. Every count but `completed` is bounded by the
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

/// A gone engine and the direct requests still queued on it, each with the time its
/// request copy arrived.
pub type StrandedQueue = (Engine, Vec<(String, Option<Instant>)>);

/// The outcome of a `task_destination` copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assigned {
    /// On the engine's task list now.
    Yes,
    /// The task is not pending (finished, or never seen): nothing would ever take it off
    /// the engine's list again, so it is not put there.
    NotPending,
}

/// The outcome of a reply copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// The task was pending and is completed now; `seen` is when its request copy came.
    Now { seen: Option<Instant> },
    /// Completed before (a duplicate or late reply): the record may still be updated.
    Before,
    /// Never seen as a request.
    Unknown,
    /// Failed with EngineError when its engine was lost, and answered after all (the
    /// engine came back): the client was told it failed, so the reply is dropped.
    Late,
}

#[derive(Debug, Default)]
pub struct TaskBook {
    pending: HashSet<String>,
    /// Every msg_id that completed (stock's `all_completed`), exactly, in a compact form
    /// (`ippx_protocol::idset`): Session-shaped ids that all completed cost a few bytes
    /// per 65,536. Stock keeps one string per task forever; so did we, at ~100 bytes a
    /// task. Everything else kept per task lives only while the task is pending.
    completed: IdSet,
    unassigned: IndexSet<String>,
    queues: BTreeMap<EngineId, EngineQueues>,
    /// Which engine a load-balanced task went to, so its reply clears the right list even
    /// when the engine is gone by then.
    owner: HashMap<String, EngineId>,
    /// When the request copy of each pending task arrived, for latency metrics.
    seen: HashMap<String, Instant>,
    /// Engines gone, with the time their direct queue is failed (docs/protocol.md §3.6): replies may
    /// still be in flight until then.
    stranded: Vec<(Instant, Engine)>,
    /// Direct requests failed because their engine was lost ([`Finished::Late`]).
    failed_lost: IdSet,
}

impl TaskBook {
    /// A registered (or restored) engine: its lists exist from now on, even when empty.
    pub fn engine(&mut self, id: EngineId, uuid: &str) {
        self.queues.entry(id).or_default().uuid = Some(uuid.to_owned());
    }

    pub fn queues(&self, id: EngineId) -> Option<&EngineQueues> {
        self.queues.get(&id)
    }

    /// Every engine's lists, by id.
    pub fn all_queues(&self) -> impl Iterator<Item = (EngineId, &EngineQueues)> + '_ {
        self.queues.iter().map(|(id, q)| (*id, q))
    }

    pub fn unassigned(&self) -> &IndexSet<String> {
        &self.unassigned
    }

    /// The engine a load-balanced task was assigned to, while it is pending.
    pub fn owner(&self, msg_id: &str) -> Option<EngineId> {
        self.owner.get(msg_id).copied()
    }

    pub fn is_pending(&self, msg_id: &str) -> bool {
        self.pending.contains(msg_id)
    }

    pub fn is_completed(&self, msg_id: &str) -> bool {
        self.completed.contains(msg_id)
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Direct requests queued and tasks assigned on engine `id`.
    pub fn load(&self, id: EngineId) -> usize {
        self.queues.get(&id).map_or(0, |q| q.queue.len() + q.tasks.len())
    }

    /// A direct request copy, to the registered engine `engine`.
    pub fn submit_direct(&mut self, msg_id: String, engine: EngineId, now: Instant) {
        self.seen.insert(msg_id.clone(), now);
        self.pending.insert(msg_id.clone());
        self.queues.entry(engine).or_default().queue.insert(msg_id);
    }

    /// A load-balanced request copy: unassigned until its `task_destination`.
    pub fn submit_task(&mut self, msg_id: String, now: Instant) {
        self.seen.insert(msg_id.clone(), now);
        self.pending.insert(msg_id.clone());
        self.unassigned.insert(msg_id);
    }

    /// A task the hub resubmitted itself: pending until its reply copy, no latency.
    pub fn submit_resubmission(&mut self, msg_id: String) {
        self.pending.insert(msg_id);
    }

    /// The task left the unassigned list (its destination copy arrived, whether or not
    /// the engine is known).
    pub fn leave_unassigned(&mut self, msg_id: &str) {
        self.unassigned.shift_remove(msg_id);
    }

    /// A `task_destination` copy: the task went to the registered engine `engine`.
    pub fn assign(&mut self, msg_id: &str, engine: EngineId) -> Assigned {
        self.unassigned.shift_remove(msg_id);
        if !self.pending.contains(msg_id) {
            return Assigned::NotPending;
        }
        self.queues.entry(engine).or_default().tasks.insert(msg_id.to_owned());
        // A retried task is assigned again: it leaves the first engine's list (stock
        // leaves it there forever, and that engine's `tasks` count never drops to 0).
        if let Some(prev) = self.owner.insert(msg_id.to_owned(), engine) {
            if prev != engine {
                if let Some(q) = self.queues.get_mut(&prev) {
                    q.tasks.shift_remove(msg_id);
                }
            }
        }
        Assigned::Yes
    }

    /// A direct reply copy from the registered engine `engine`.
    pub fn finish_direct(&mut self, msg_id: &str, engine: EngineId) -> Finished {
        if self.failed_lost.contains(msg_id) {
            return Finished::Late;
        }
        if self.pending.remove(msg_id) {
            self.completed.insert(msg_id);
            let q = self.queues.entry(engine).or_default();
            q.queue.shift_remove(msg_id);
            q.completed += 1;
            Finished::Now { seen: self.seen.remove(msg_id) }
        } else if self.completed.contains(msg_id) {
            Finished::Before
        } else {
            Finished::Unknown
        }
    }

    /// A load-balanced reply copy. `ran`: the task ran on an engine (not aborted, and the
    /// reply names an engine), so it counts as completed on its owner.
    pub fn finish_task(&mut self, msg_id: &str, ran: bool) -> Finished {
        self.unassigned.shift_remove(msg_id);
        if !self.pending.remove(msg_id) {
            return if self.completed.contains(msg_id) { Finished::Before } else { Finished::Unknown };
        }
        self.completed.insert(msg_id);
        let seen = self.seen.remove(msg_id);
        if let Some(eid) = self.owner.remove(msg_id) {
            let q = self.queues.entry(eid).or_default();
            q.tasks.shift_remove(msg_id);
            if ran {
                q.completed += 1;
            }
        }
        Finished::Now { seen }
    }

    /// Stops tracking a pending request without completing it: its record decides from
    /// now on (a scheduler restart hands it to the in-flight waits).
    pub fn forget(&mut self, msg_id: &str) {
        self.unassigned.shift_remove(msg_id);
        if !self.pending.remove(msg_id) {
            return;
        }
        self.seen.remove(msg_id);
        self.owner.remove(msg_id);
        for q in self.queues.values_mut() {
            q.queue.shift_remove(msg_id);
            q.tasks.shift_remove(msg_id);
        }
    }

    /// Engine `e` is gone: its direct queue is failed at `due`, unless replies empty it.
    pub fn strand(&mut self, due: Instant, e: Engine) {
        self.stranded.push((due, e));
    }

    pub fn next_stranded(&self) -> Option<Instant> {
        self.stranded.iter().map(|(t, _)| *t).min()
    }

    /// The stranded engines whose time has come, each with the direct requests still
    /// queued on it (and when their request copies came); those are completed (as
    /// failed) in the book.
    pub fn fail_stranded(&mut self, now: Instant) -> Vec<StrandedQueue> {
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.stranded).into_iter().partition(|(t, _)| *t <= now);
        self.stranded = keep;
        self.fail_queues(due)
    }

    /// A lost engine is back: what it had queued when it was lost fails now (its client
    /// failed those at the unregistration), before new requests join its queue.
    pub fn fail_stranded_engine(&mut self, id: EngineId) -> Vec<StrandedQueue> {
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.stranded).into_iter().partition(|(_, e)| e.id == id);
        self.stranded = keep;
        self.fail_queues(due)
    }

    fn fail_queues(&mut self, due: Vec<(Instant, Engine)>) -> Vec<StrandedQueue> {
        let mut out = Vec::with_capacity(due.len());
        for (_, e) in due {
            let Some(q) = self.queues.get_mut(&e.id) else { continue };
            let ids: Vec<String> = q.queue.drain(..).collect();
            q.completed += ids.len() as u64;
            let mut failed = Vec::with_capacity(ids.len());
            for id in ids {
                self.pending.remove(&id);
                self.completed.insert(&id);
                self.failed_lost.insert(&id);
                // No latency metric: the task never finished.
                let seen = self.seen.remove(&id);
                failed.push((id, seen));
            }
            out.push((e, failed));
        }
        out
    }

    /// Sizes of the per-task bookkeeping (tests, diagnostics).
    pub fn bookkeeping(&self) -> Bookkeeping {
        Bookkeeping {
            pending: self.pending.len(),
            seen: self.seen.len(),
            owners: self.owner.len(),
            unassigned: self.unassigned.len(),
            queued: self.queues.values().map(|q| q.queue.len()).sum(),
            assigned: self.queues.values().map(|q| q.tasks.len()).sum(),
            completed: self.completed.len(),
            completed_bytes: self.completed.heap_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn engine(id: u64) -> Engine {
        Engine { id: EngineId(id), uuid: format!("e{id}") }
    }

    #[test]
    fn a_direct_task_is_queued_then_completed_once() {
        let mut b = TaskBook::default();
        let t0 = Instant::now();
        b.engine(EngineId(0), "e0");
        b.submit_direct("m1".into(), EngineId(0), t0);
        assert!(b.is_pending("m1"));
        assert_eq!(b.load(EngineId(0)), 1);
        assert_eq!(b.finish_direct("m1", EngineId(0)), Finished::Now { seen: Some(t0) });
        assert_eq!(b.finish_direct("m1", EngineId(0)), Finished::Before);
        assert_eq!(b.finish_direct("m2", EngineId(0)), Finished::Unknown);
        let q = b.queues(EngineId(0)).expect("lists");
        assert_eq!((q.queue.len(), q.completed), (0, 1));
        assert!(b.is_completed("m1") && !b.is_pending("m1"));
    }

    #[test]
    fn a_retried_task_moves_to_its_new_engine() {
        let mut b = TaskBook::default();
        let t0 = Instant::now();
        b.submit_task("t".into(), t0);
        assert_eq!(b.unassigned().len(), 1);
        assert_eq!(b.assign("t", EngineId(1)), Assigned::Yes);
        assert!(b.unassigned().is_empty());
        assert_eq!(b.assign("t", EngineId(2)), Assigned::Yes);
        assert_eq!((b.load(EngineId(1)), b.load(EngineId(2))), (0, 1));
        assert_eq!(b.finish_task("t", true), Finished::Now { seen: Some(t0) });
        assert_eq!(b.load(EngineId(2)), 0);
        assert_eq!(b.queues(EngineId(2)).map(|q| q.completed), Some(1));
        // A late destination for a finished task leaves no trace.
        assert_eq!(b.assign("t", EngineId(3)), Assigned::NotPending);
        assert_eq!(b.load(EngineId(3)), 0);
        let k = b.bookkeeping();
        assert_eq!((k.pending, k.seen, k.owners, k.unassigned, k.assigned, k.completed), (0, 0, 0, 0, 0, 1));
    }

    #[test]
    fn an_aborted_task_is_not_counted_on_its_engine() {
        let mut b = TaskBook::default();
        b.submit_task("t".into(), Instant::now());
        b.assign("t", EngineId(0));
        assert!(matches!(b.finish_task("t", false), Finished::Now { .. }));
        assert_eq!(b.queues(EngineId(0)).map(|q| q.completed), Some(0));
    }

    #[test]
    fn a_stranded_engine_fails_only_what_is_still_queued_when_due() {
        let mut b = TaskBook::default();
        let t0 = Instant::now();
        b.engine(EngineId(0), "e0");
        for id in ["a", "b", "c"] {
            b.submit_direct(id.into(), EngineId(0), t0);
        }
        b.strand(t0 + Duration::from_secs(1), engine(0));
        assert_eq!(b.next_stranded(), Some(t0 + Duration::from_secs(1)));
        // A reply still arrives in the grace period.
        b.finish_direct("b", EngineId(0));
        assert!(b.fail_stranded(t0).is_empty());
        let failed = b.fail_stranded(t0 + Duration::from_secs(1));
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].1, vec![("a".to_owned(), Some(t0)), ("c".to_owned(), Some(t0))]);
        assert!(b.is_completed("a") && !b.is_pending("c"));
        assert_eq!(b.queues(EngineId(0)).map(|q| q.completed), Some(3));
        assert_eq!(b.next_stranded(), None);
        assert_eq!(b.bookkeeping().seen, 0);
    }
}
