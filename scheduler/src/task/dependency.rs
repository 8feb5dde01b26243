//! `ipyparallel.Dependency` (docs/protocol.md §5.3.5), resolved against the scheduler's tasks.
//!
//! Each msg_id is resolved once, at submission: a finished task becomes its outcome
//! `(ok, engine)` at once; a live one is remembered by its serial number and gets its
//! outcome when it finishes (the scheduler tells every job that registered on it). So
//! every later check reads only the dependency itself, and the scheduler does not have
//! to keep a table entry per task ever submitted for these checks.

use super::ids::FORGOTTEN;
use super::NO_ENGINE;
use ippx_protocol::Value;

/// What the scheduler knows about one msg_id named in a dependency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// Submitted and not finished: the task's serial number.
    Live(u64),
    /// Finished: `(ok, engine)`; `engine` may be `NO_ENGINE` or `FORGOTTEN`.
    Done(bool, u32),
    /// Never submitted to this scheduler.
    Unknown,
}

/// One msg_id of a dependency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Item {
    /// The live task's serial while `done` is `None`.
    pub serial: u64,
    /// `(ok, engine)` once the task has finished.
    pub done: Option<(bool, u32)>,
}

/// A resolved dependency set: `items` are known tasks, `unknown` records that the
/// metadata named an id the scheduler never saw (or a non-string entry), which Python
/// keeps in the set and later reports as `InvalidDependency`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Dep {
    pub items: Vec<Item>,
    pub all: bool,
    pub success: bool,
    pub failure: bool,
    pub unknown: bool,
    /// `success` and `failure` both false: Python refuses such a `Dependency`.
    pub bad_flags: bool,
    /// A location dependency (`follow`): where a task ran matters, so one whose engine
    /// is forgotten can never be met.
    pub location: bool,
}

impl Default for Dep {
    /// The empty dependency (`MET`): always met, never unreachable.
    fn default() -> Self {
        Dep { items: Vec::new(), all: true, success: true, failure: false, unknown: false, bad_flags: false, location: false }
    }
}

fn flag(v: &Value, key: &str, default: bool) -> bool {
    match v.get(key) {
        Value::Nil if v.as_map().is_some_and(|m| !m.iter().any(|(k, _)| k == key)) => default,
        other => other.truthy(),
    }
}

impl Dep {
    /// As Python's `Dependency(value)`: a list of msg_ids (⇒ all, success, not failure),
    /// a single msg_id string, or `{"dependencies": [...], "all", "success", "failure"}`.
    /// `None`/absent is empty. `resolve` says what each (distinct) msg_id is.
    pub fn from_value(v: &Value, location: bool, mut resolve: impl FnMut(&str) -> Found) -> Dep {
        let mut dep = Dep { location, ..Dep::default() };
        let list = match v {
            Value::Map(_) => {
                dep.all = flag(v, "all", true);
                dep.success = flag(v, "success", true);
                dep.failure = flag(v, "failure", false);
                v.get("dependencies")
            }
            other => other,
        };
        let mut names: Vec<&str> = Vec::new();
        match list {
            Value::Nil => {}
            Value::Str(s) => names.push(s),
            Value::Array(items) => {
                for it in items {
                    match it {
                        Value::Str(s) => names.push(s),
                        _ => dep.unknown = true,
                    }
                }
            }
            _ => dep.unknown = true,
        }
        if names.len() > 1 {
            names.sort_unstable();
            names.dedup();
        }
        for s in names {
            match resolve(s) {
                Found::Live(serial) => dep.items.push(Item { serial, done: None }),
                Found::Done(ok, engine) => dep.items.push(Item { serial: u64::MAX, done: Some((ok, engine)) }),
                Found::Unknown => dep.unknown = true,
            }
        }
        dep.bad_flags = !(dep.success || dep.failure);
        dep
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty() && !self.unknown
    }

    /// Malformed in a way Python reports as `InvalidDependency` (or refuses outright);
    /// `own` is the serial of the task that carries this dependency.
    pub fn is_invalid(&self, own: u64) -> bool {
        !self.is_empty() && (self.unknown || self.bad_flags || self.items.iter().any(|i| i.done.is_none() && i.serial == own))
    }

    /// Serials of the unfinished tasks this dependency waits for.
    pub fn waiting_on(&self) -> impl Iterator<Item = u64> + '_ {
        self.items.iter().filter(|i| i.done.is_none()).map(|i| i.serial)
    }

    /// Task `serial` finished: fills in its outcome. Returns whether it was one of ours.
    pub fn resolve(&mut self, serial: u64, ok: bool, engine: u32) -> bool {
        let mut hit = false;
        for i in &mut self.items {
            if i.done.is_none() && i.serial == serial {
                i.done = Some((ok, engine));
                hit = true;
            }
        }
        hit
    }

    /// Finished with an outcome this dependency accepts.
    #[inline]
    fn satisfied_by(&self, ok: bool) -> bool {
        if ok {
            self.success
        } else {
            self.failure
        }
    }

    /// Whether the dependency is met against the global completed/failed sets.
    pub fn check(&self) -> bool {
        if self.is_empty() {
            return true;
        }
        let met = |i: &Item| i.done.is_some_and(|(ok, _)| self.satisfied_by(ok));
        if self.all {
            !self.unknown && self.items.iter().all(met)
        } else {
            self.items.iter().any(met)
        }
    }

    /// Whether the dependency can never be met any more. For a location dependency, a
    /// task whose engine is forgotten counts as one that can never be met.
    pub fn unreachable(&self) -> bool {
        if self.is_empty() {
            return false;
        }
        let bad = |i: &Item| i.done.is_some_and(|(ok, e)| !self.satisfied_by(ok) || (self.location && e == FORGOTTEN));
        if self.all {
            self.items.iter().any(bad)
        } else {
            !self.unknown && self.items.iter().all(bad)
        }
    }

    /// Met against one engine's completed/failed sets (the `follow` test in `maybe_run`).
    pub fn check_on(&self, engine: u32) -> bool {
        if self.is_empty() {
            return true;
        }
        let met = |i: &Item| i.done.is_some_and(|(ok, e)| e == engine && self.satisfied_by(ok));
        if self.all {
            !self.unknown && self.items.iter().all(met)
        } else {
            self.items.iter().any(met)
        }
    }

    /// At submission, an `all` dependency drops the ids that are already satisfied.
    pub fn reduce_satisfied(&mut self) {
        if self.all {
            let (success, failure) = (self.success, self.failure);
            self.items.retain(|i| !i.done.is_some_and(|(ok, _)| if ok { success } else { failure }));
        }
    }

    /// The engines (incarnations) where the already-finished ids in this dependency ran,
    /// for the "follow across more than one engine" impossibility test.
    pub fn destinations(&self, mut f: impl FnMut(u32)) {
        for i in &self.items {
            if let Some((ok, e)) = i.done {
                if self.satisfied_by(ok) && e != NO_ENGINE && e != FORGOTTEN {
                    f(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ippx_protocol::vmap;

    /// a completed on engine 7, b failed (scheduler-made), c still live (serial 2),
    /// f completed on an engine that is forgotten.
    fn resolve(s: &str) -> Found {
        match s {
            "a" => Found::Done(true, 7),
            "b" => Found::Done(false, NO_ENGINE),
            "c" => Found::Live(2),
            "f" => Found::Done(true, FORGOTTEN),
            _ => Found::Unknown,
        }
    }

    fn strs(v: &[&str]) -> Value {
        Value::Array(v.iter().map(|s| Value::from(*s)).collect())
    }

    #[test]
    fn list_form_is_all_success_only() {
        let d = Dep::from_value(&strs(&["a", "c", "a"]), false, resolve);
        assert_eq!(d.items.len(), 2);
        assert!(d.all && d.success && !d.failure && !d.unknown);
        assert!(!d.check());
        assert!(!d.unreachable());
        let d = Dep::from_value(&strs(&["a", "b"]), false, resolve);
        assert!(d.unreachable());
    }

    #[test]
    fn dict_form_and_key_order() {
        let v1 = vmap! {"dependencies" => strs(&["b"]), "all" => false, "success" => false, "failure" => true};
        let v2 = vmap! {"failure" => true, "success" => false, "all" => false, "dependencies" => strs(&["b"])};
        let d1 = Dep::from_value(&v1, false, resolve);
        let d2 = Dep::from_value(&v2, false, resolve);
        assert_eq!(d1, d2);
        assert!(d1.check());
        let d = Dep::from_value(&vmap! {"dependencies" => strs(&["a"]), "success" => false, "failure" => true}, false, resolve);
        assert!(d.unreachable());
    }

    #[test]
    fn unknown_and_self_are_invalid() {
        let d = Dep::from_value(&strs(&["zzz"]), false, resolve);
        assert!(d.unknown && d.is_invalid(99));
        let d = Dep::from_value(&strs(&["c"]), false, resolve);
        assert!(d.is_invalid(2) && !d.is_invalid(3));
        let d = Dep::from_value(&Value::Array(vec![Value::Int(3)]), false, resolve);
        assert!(d.is_invalid(0));
        assert!(Dep::from_value(&Value::Nil, false, resolve).is_empty());
    }

    #[test]
    fn follow_check_on_engine() {
        let d = Dep::from_value(&strs(&["a"]), true, resolve);
        assert!(d.check_on(7));
        assert!(!d.check_on(8));
    }

    #[test]
    fn live_items_learn_their_outcome() {
        let mut d = Dep::from_value(&strs(&["a", "c"]), true, resolve);
        assert_eq!(d.waiting_on().collect::<Vec<_>>(), vec![2]);
        assert!(!d.check() && !d.check_on(7));
        assert!(!d.resolve(3, true, 7), "not ours");
        assert!(d.resolve(2, true, 7));
        assert!(d.check() && d.check_on(7) && !d.check_on(8));
        assert_eq!(d.waiting_on().count(), 0);
    }

    #[test]
    fn a_forgotten_location_cannot_be_followed_but_can_be_waited_for() {
        let f = Dep::from_value(&strs(&["f"]), true, resolve);
        assert!(f.unreachable());
        let mut dests = Vec::new();
        f.destinations(|e| dests.push(e));
        assert!(dests.is_empty());
        // As a time dependency the engine does not matter.
        let a = Dep::from_value(&strs(&["f"]), false, resolve);
        assert!(a.check() && !a.unreachable());
        // follow any: met elsewhere is enough; all forgotten is impossible.
        let any = Dep::from_value(&vmap! {"dependencies" => strs(&["a", "f"]), "all" => false}, true, resolve);
        assert!(!any.unreachable() && any.check_on(7));
        let mut any = Dep::from_value(&vmap! {"dependencies" => strs(&["c", "f"]), "all" => false}, true, resolve);
        assert!(!any.unreachable(), "c may still finish");
        any.resolve(2, false, 7);
        assert!(any.unreachable());
    }
}
