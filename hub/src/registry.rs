//! The engine registration table (docs/protocol.md §3.1–3.7): ids, uuids and pending registrations.
//! Pure: no sockets and no clock of its own.

use ippx_protocol::EngineId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Engine {
    pub id: EngineId,
    pub uuid: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingRegistration {
    pub id: EngineId,
    pub uuid: String,
    pub deadline: Instant,
}

/// What an unregistration found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unregistered {
    Engine(Engine),
    /// A registration that had not completed yet; it is forgotten.
    Pending(PendingRegistration),
    Unknown,
}

/// The engine state file, `<profile>/log/engines<cluster_id>.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineState {
    pub engines: BTreeMap<String, String>,
    pub next_id: u64,
}

#[derive(Debug, Default)]
pub struct Registry {
    engines: BTreeMap<EngineId, Engine>,
    by_uuid: HashMap<String, EngineId>,
    pending: HashMap<String, PendingRegistration>,
    next_id: u64,
    /// Every id ever registered: `queue_request` with null targets lists them all (docs/protocol.md §4.3.1).
    ever: BTreeSet<EngineId>,
    /// Engines whose heart stopped (not those that unregistered or shut down), by uuid:
    /// one whose heart answers again is re-admitted under its id ([`Registry::readmit`]).
    lost: HashMap<String, EngineId>,
}

impl Registry {
    /// Allocates an id for a `registration_request`. A duplicate uuid is refused with the
    /// evalue Python uses. The id is taken now even if the registration later stalls.
    pub fn request(&mut self, uuid: &str, requested: Option<i64>, deadline: Instant) -> Result<EngineId, String> {
        if self.by_uuid.contains_key(uuid) || self.pending.contains_key(uuid) {
            return Err(format!("uuid {uuid:?} in use"));
        }
        let free = |id: EngineId, me: &Self| !me.engines.contains_key(&id) && !me.pending.values().any(|p| p.id == id);
        let id = match requested.and_then(|r| u64::try_from(r).ok()).map(EngineId) {
            Some(r) if free(r, self) => {
                self.next_id = self.next_id.max(r.0 + 1);
                r
            }
            _ => {
                // Skip ids a requested registration already took above the counter.
                while !free(EngineId(self.next_id), self) {
                    self.next_id += 1;
                }
                let id = EngineId(self.next_id);
                self.next_id += 1;
                id
            }
        };
        self.pending.insert(uuid.to_owned(), PendingRegistration { id, uuid: uuid.to_owned(), deadline });
        Ok(id)
    }

    pub fn is_pending(&self, uuid: &str) -> bool {
        self.pending.contains_key(uuid)
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The engine's heart answered: the registration completes.
    pub fn complete(&mut self, uuid: &str) -> Option<Engine> {
        let p = self.pending.remove(uuid)?;
        let e = Engine { id: p.id, uuid: p.uuid };
        self.by_uuid.insert(e.uuid.clone(), e.id);
        self.engines.insert(e.id, e.clone());
        self.ever.insert(e.id);
        Some(e)
    }

    pub fn unregister(&mut self, id: EngineId) -> Unregistered {
        if let Some(e) = self.engines.remove(&id) {
            self.by_uuid.remove(&e.uuid);
            return Unregistered::Engine(e);
        }
        let uuid = self.pending.values().find(|p| p.id == id).map(|p| p.uuid.clone());
        match uuid.and_then(|u| self.pending.remove(&u)) {
            Some(p) => Unregistered::Pending(p),
            None => Unregistered::Unknown,
        }
    }

    /// The engine's heart stopped; it may come back after a network blip or SIGSTOP.
    pub fn mark_lost(&mut self, e: &Engine) {
        self.lost.insert(e.uuid.clone(), e.id);
    }

    pub fn is_lost(&self, uuid: &str) -> bool {
        self.lost.contains_key(uuid)
    }

    /// A lost engine whose heart answers again takes its old id back, unless a new
    /// registration has taken that id meanwhile (then it stays out, as on stock).
    pub fn readmit(&mut self, uuid: &str) -> Option<Engine> {
        let id = self.lost.remove(uuid)?;
        let taken = self.engines.contains_key(&id) || self.pending.values().any(|p| p.id == id) || self.by_uuid.contains_key(uuid);
        if taken {
            return None;
        }
        let e = Engine { id, uuid: uuid.to_owned() };
        self.by_uuid.insert(e.uuid.clone(), id);
        self.engines.insert(id, e.clone());
        Some(e)
    }

    /// A lost engine that said goodbye after all (its nanny's unregistration).
    pub fn forget_lost(&mut self, id: EngineId) {
        self.lost.retain(|_, v| *v != id);
    }

    pub fn by_uuid(&self, uuid: &str) -> Option<&Engine> {
        self.by_uuid.get(uuid).and_then(|id| self.engines.get(id))
    }

    pub fn get(&self, id: EngineId) -> Option<&Engine> {
        self.engines.get(&id)
    }

    pub fn engines(&self) -> impl Iterator<Item = &Engine> {
        self.engines.values()
    }

    pub fn len(&self) -> usize {
        self.engines.len()
    }

    /// Registrations waiting for their engine's first heartbeat.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.engines.is_empty()
    }

    pub fn ever(&self) -> impl Iterator<Item = EngineId> + '_ {
        self.ever.iter().copied()
    }

    pub fn was_registered(&self, id: EngineId) -> bool {
        self.ever.contains(&id)
    }

    /// Drops registrations whose heart never answered in time; no notification is sent.
    pub fn expire(&mut self, now: Instant) -> Vec<PendingRegistration> {
        let late: Vec<String> = self.pending.values().filter(|p| p.deadline <= now).map(|p| p.uuid.clone()).collect();
        late.into_iter().filter_map(|u| self.pending.remove(&u)).collect()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.deadline).min()
    }

    pub fn state(&self) -> EngineState {
        EngineState { engines: self.engines.values().map(|e| (e.id.to_string(), e.uuid.clone())).collect(), next_id: self.next_id }
    }

    /// `--restore`: engines from the state file are registered at once, without notification.
    pub fn restore(&mut self, state: &EngineState) {
        for (k, uuid) in &state.engines {
            if let Ok(id) = k.parse::<u64>() {
                let e = Engine { id: EngineId(id), uuid: uuid.clone() };
                self.by_uuid.insert(uuid.clone(), e.id);
                self.engines.insert(e.id, e);
                self.ever.insert(EngineId(id));
                self.next_id = self.next_id.max(id + 1);
            }
        }
        self.next_id = self.next_id.max(state.next_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t() -> Instant {
        Instant::now()
    }

    #[test]
    fn a_lost_engine_is_readmitted_under_its_id_unless_taken() {
        let t = Instant::now();
        let mut r = Registry::default();
        let id = r.request("a", None, t).expect("id");
        let e = r.complete("a").expect("engine");
        assert!(matches!(r.unregister(id), Unregistered::Engine(_)));
        r.mark_lost(&e);
        assert!(r.is_lost("a"));
        assert_eq!(r.readmit("a"), Some(Engine { id, uuid: "a".into() }));
        assert_eq!(r.by_uuid("a").map(|e| e.id), Some(id));
        assert_eq!(r.readmit("a"), None, "once");
        // lost again, and a new engine asks for that id meanwhile
        r.unregister(id);
        r.mark_lost(&e);
        r.request("b", Some(id.0 as i64), t).expect("requested id");
        assert_eq!(r.readmit("a"), None, "the id is someone else's now");
        assert!(!r.is_lost("a"));
        // a lost engine's nanny unregisters it for good
        let c = r.request("c", None, t).expect("id");
        let ce = r.complete("c").expect("engine");
        r.unregister(c);
        r.mark_lost(&ce);
        r.forget_lost(c);
        assert_eq!(r.readmit("c"), None);
    }

    #[test]
    fn ids_count_up_and_are_never_reused() {
        let mut r = Registry::default();
        let a = r.request("a", None, t()).expect("a");
        let b = r.request("b", None, t()).expect("b");
        assert_eq!((a, b), (EngineId(0), EngineId(1)));
        r.complete("a");
        assert!(matches!(r.unregister(a), Unregistered::Engine(_)));
        let c = r.request("c", None, t()).expect("c");
        assert_eq!(c, EngineId(2));
    }

    #[test]
    fn requested_id_honoured_when_free() {
        let mut r = Registry::default();
        assert_eq!(r.request("a", Some(5), t()), Ok(EngineId(5)));
        // taken by a pending registration: falls back to the counter
        assert_eq!(r.request("b", Some(5), t()), Ok(EngineId(6)));
        assert_eq!(r.request("c", Some(0), t()), Ok(EngineId(0)));
        assert_eq!(r.request("d", None, t()), Ok(EngineId(7)));
        assert_eq!(r.request("e", Some(-1), t()), Ok(EngineId(8)));
    }

    #[test]
    fn duplicate_uuid_refused_and_nothing_recorded() {
        let mut r = Registry::default();
        r.request("a", None, t()).expect("a");
        assert!(r.request("a", None, t()).is_err());
        r.complete("a");
        assert!(r.request("a", None, t()).is_err());
        assert_eq!(r.state().next_id, 1);
    }

    #[test]
    fn registration_completes_only_on_heart_and_expires() {
        let mut r = Registry::default();
        let now = t();
        r.request("a", None, now + Duration::from_secs(1)).expect("a");
        r.request("b", None, now + Duration::from_secs(5)).expect("b");
        assert!(r.is_empty());
        assert_eq!(r.complete("a").map(|e| e.id), Some(EngineId(0)));
        assert_eq!(r.len(), 1);
        assert!(r.complete("a").is_none());
        let gone = r.expire(now + Duration::from_secs(6));
        assert_eq!(gone.len(), 1);
        assert!(!r.has_pending());
    }

    #[test]
    fn unregistering_a_pending_id_cancels_it() {
        let mut r = Registry::default();
        let id = r.request("a", None, t()).expect("a");
        assert!(matches!(r.unregister(id), Unregistered::Pending(_)));
        assert_eq!(r.unregister(EngineId(42)), Unregistered::Unknown);
    }

    #[test]
    fn restore_keeps_ids_and_counter() {
        let mut r = Registry::default();
        let mut st = EngineState::default();
        st.engines.insert("3".into(), "u3".into());
        st.next_id = 7;
        r.restore(&st);
        assert_eq!(r.by_uuid("u3").map(|e| e.id), Some(EngineId(3)));
        assert_eq!(r.request("x", None, t()), Ok(EngineId(7)));
        assert_eq!(r.state().engines.get("3").map(String::as_str), Some("u3"));
    }
}
