//! Requests that were in flight when an earlier hub died. With `--restore` and the
//! SQLite store, their records come back without a result; the book of the new hub has
//! never seen them, so before this they stayed "pending" forever. Each is now waited for
//! on the engine that had it:
//! - its reply arrives after the restart: the record completes as usual;
//! - that engine answers later work: an engine runs its requests one at a time in order,
//!   so the reply was sent while no hub listened, and is lost: the record fails with
//!   `ControllerRestarted`;
//! - that engine is gone (lost, unregistered, or not restored at all): `EngineError`.
//!
//! Pure bookkeeping; the hub writes the records.

use super::{error_value, Hub, Now};
use crate::records::{Field, Fields};
use crate::store::query::{Op, Query, Q};
use crate::store::StoreError;
use ippx_protocol::{vmap, EngineId};
use std::collections::{BTreeMap, HashMap};
use tracing::{info, warn};

#[derive(Debug, Default)]
pub struct Inflight {
    engine_of: HashMap<String, EngineId>,
    by_engine: BTreeMap<EngineId, Vec<String>>,
}

impl Inflight {
    pub fn add(&mut self, msg_id: &str, engine: EngineId) {
        if self.engine_of.insert(msg_id.to_owned(), engine).is_none() {
            self.by_engine.entry(engine).or_default().push(msg_id.to_owned());
        }
    }

    pub fn len(&self) -> usize {
        self.engine_of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.engine_of.is_empty()
    }

    pub fn contains(&self, msg_id: &str) -> bool {
        self.engine_of.contains_key(msg_id)
    }

    /// The reply to `msg_id` arrived: it is no longer waited for. Returns whether it was.
    pub fn answered(&mut self, msg_id: &str) -> bool {
        let Some(e) = self.engine_of.remove(msg_id) else { return false };
        if let Some(list) = self.by_engine.get_mut(&e) {
            list.retain(|m| m != msg_id);
            if list.is_empty() {
                self.by_engine.remove(&e);
            }
        }
        true
    }

    /// `engine` answered a request made after the restart, or is gone: whatever it had
    /// from before will never be answered.
    pub fn give_up(&mut self, engine: EngineId) -> Vec<String> {
        let ids = self.by_engine.remove(&engine).unwrap_or_default();
        for id in &ids {
            self.engine_of.remove(id);
        }
        ids
    }
}

impl Hub {
    /// After [`Hub::restore`]: the records the task database holds without a result were
    /// in flight when the earlier hub died ([`inflight`]). Each waits for its engine if
    /// that engine was restored, and fails now if not. Returns how many wait.
    pub fn restore_inflight(&mut self, now: Now) -> usize {
        let q = Query::default().with(Field::Completed, Op::Eq, Q::Nil);
        let recs = match self.store.find(&q, Fields::of(&[Field::MsgId, Field::EngineUuid, Field::Queue])) {
            Ok(r) => r,
            Err(StoreError::NoData) => return 0,
            Err(e) => {
                warn!("--restore: cannot read unfinished records: {e}");
                return 0;
            }
        };
        for r in recs {
            match r.engine_uuid.as_deref().and_then(|u| self.reg.by_uuid(u)).map(|e| e.id) {
                Some(eid) => self.inflight.add(&r.msg_id, eid),
                None => {
                    let why = match &r.engine_uuid {
                        Some(u) => format!("the controller restarted while task '{}' was in flight, and its engine {u} is gone", r.msg_id),
                        None => format!("the controller restarted before task '{}' reached an engine", r.msg_id),
                    };
                    self.fail_restored(&r.msg_id, "EngineError", why, r.engine_uuid.clone(), now);
                }
            }
        }
        let waiting = self.inflight.len();
        if waiting > 0 {
            info!(tasks = waiting, "--restore: waiting for replies to tasks in flight when the earlier hub stopped");
        }
        waiting
    }

    /// Gives up on what `engine` had from before a restart: it answered later work (so
    /// those replies were lost while no hub listened), or it is gone.
    pub(super) fn give_up_inflight(&mut self, engine: EngineId, gone: bool, now: Now) {
        if self.inflight.is_empty() {
            return;
        }
        let uuid = self.book.queues(engine).and_then(|q| q.uuid.clone());
        for id in self.inflight.give_up(engine) {
            let (ename, evalue) = if gone {
                ("EngineError", format!("Engine {engine} is gone; task '{id}' was in flight when the controller restarted"))
            } else {
                (
                    "ControllerRestarted",
                    format!(
                        "task '{id}' was in flight when the controller (or its scheduler) restarted; engine {engine} has answered later work, so its reply was lost"
                    ),
                )
            };
            self.fail_restored(&id, ename, evalue, uuid.clone(), now);
        }
    }

    /// The scheduler child died (`--scheduler-mode=process`, killed or crashed) and a new
    /// one is about to start on the same ports. What it held is gone:
    /// - a load-balanced task it had not given to an engine fails now (`EngineError`:
    ///   resubmit it);
    /// - a request an engine has, or had in the dead scheduler's pipes, is waited for as
    ///   after a hub restart: its reply comes through the new scheduler, or the record
    ///   fails once that engine answers later work or is gone.
    ///
    /// Clients connected before reach the new scheduler under new routing ids, so those
    /// replies reach the hub (`get_result`, a new Client) but not the old AsyncResults.
    /// Returns (failed, waited for).
    pub fn scheduler_died(&mut self, now: Now) -> (usize, usize) {
        let unassigned: Vec<String> = self.book.unassigned().iter().cloned().collect();
        for id in &unassigned {
            self.book.finish_task(id, false);
            let why = format!("the scheduler died before task '{id}' reached an engine; resubmit it");
            self.fail_restored(id, "EngineError", why, None, now);
        }
        let held: Vec<(EngineId, String)> =
            self.book.all_queues().flat_map(|(e, q)| q.queue.iter().chain(q.tasks.iter()).map(move |m| (e, m.clone()))).collect();
        for (e, id) in &held {
            // Still pending to a Client, but the record decides now: a reply completes it.
            self.book.forget(id);
            self.inflight.add(id, *e);
        }
        warn!(failed = unassigned.len(), waiting = held.len(), "the scheduler died: tasks it held unsent failed; requests on engines are waited for");
        (unassigned.len(), held.len())
    }

    fn fail_restored(&mut self, msg_id: &str, ename: &str, evalue: String, engine_uuid: Option<String>, now: Now) {
        warn!(msg_id, ename, "{evalue}");
        let md = vmap! {"status" => "error"};
        self.fail_record(msg_id, error_value(ename, evalue), engine_uuid, Some(md), now.wall, "restored in-flight request");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_per_engine_until_answered_or_given_up() {
        let mut f = Inflight::default();
        f.add("a", EngineId(0));
        f.add("b", EngineId(0));
        f.add("c", EngineId(1));
        f.add("c", EngineId(1));
        assert!(f.answered("a"));
        assert!(!f.answered("a"));
        assert_eq!(f.give_up(EngineId(0)), vec!["b".to_owned()]);
        assert!(f.give_up(EngineId(0)).is_empty());
        assert!(f.contains("c") && !f.contains("b"));
        assert_eq!(f.give_up(EngineId(1)), vec!["c".to_owned()]);
        assert!(f.is_empty());
    }
}
