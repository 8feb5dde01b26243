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

use ippx_protocol::EngineId;
use std::collections::{BTreeMap, HashMap};

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
