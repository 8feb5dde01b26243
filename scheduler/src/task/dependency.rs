//! `ipyparallel.Dependency` over the scheduler's completed/failed sets (spec 5.3.5).
//!
//! Dependencies are resolved once, at submission, from msg_id strings to task keys; every
//! later check is an array lookup in the scheduler's task table.

use super::{Slot, TaskKey};
use ippx_protocol::Value;

/// A resolved dependency set: `ids` are known tasks, `unknown` records that the metadata
/// named an id the scheduler never saw (or a non-string entry), which Python keeps in the
/// set and later reports as `InvalidDependency`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Dep {
    pub ids: Vec<TaskKey>,
    pub all: bool,
    pub success: bool,
    pub failure: bool,
    pub unknown: bool,
    /// `success` and `failure` both false: Python refuses such a `Dependency`.
    pub bad_flags: bool,
}

impl Default for Dep {
    /// The empty dependency (`MET`): always met, never unreachable.
    fn default() -> Self {
        Dep {
            ids: Vec::new(),
            all: true,
            success: true,
            failure: false,
            unknown: false,
            bad_flags: false,
        }
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
    /// `None`/absent is empty. `resolve` maps a msg_id to a known task.
    pub fn from_value(v: &Value, mut resolve: impl FnMut(&str) -> Option<TaskKey>) -> Dep {
        let mut dep = Dep::default();
        let list = match v {
            Value::Map(_) => {
                dep.all = flag(v, "all", true);
                dep.success = flag(v, "success", true);
                dep.failure = flag(v, "failure", false);
                v.get("dependencies")
            }
            other => other,
        };
        let mut add = |s: &str, dep: &mut Dep| match resolve(s) {
            Some(k) => dep.ids.push(k),
            None => dep.unknown = true,
        };
        match list {
            Value::Nil => {}
            Value::Str(s) => add(s, &mut dep),
            Value::Array(items) => {
                for it in items {
                    match it {
                        Value::Str(s) => add(s, &mut dep),
                        _ => dep.unknown = true,
                    }
                }
            }
            _ => dep.unknown = true,
        }
        if dep.ids.len() > 1 {
            dep.ids.sort_unstable();
            dep.ids.dedup();
        }
        dep.bad_flags = !(dep.success || dep.failure);
        dep
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty() && !self.unknown
    }

    /// Malformed in a way Python reports as `InvalidDependency` (or refuses outright).
    pub fn is_invalid(&self, own: TaskKey) -> bool {
        !self.is_empty() && (self.unknown || self.bad_flags || self.ids.contains(&own))
    }

    /// Finished with an outcome this dependency accepts (in `against`).
    #[inline]
    fn satisfied_by(&self, ok: bool) -> bool {
        if ok {
            self.success
        } else {
            self.failure
        }
    }

    /// Whether the dependency is met against the global completed/failed sets.
    pub fn check(&self, tasks: &[Slot]) -> bool {
        if self.is_empty() {
            return true;
        }
        let met = |k: &TaskKey| {
            tasks[*k as usize]
                .done()
                .is_some_and(|(ok, _)| self.satisfied_by(ok))
        };
        if self.all {
            !self.unknown && self.ids.iter().all(met)
        } else {
            self.ids.iter().any(met)
        }
    }

    /// Whether the dependency can never be met any more.
    pub fn unreachable(&self, tasks: &[Slot]) -> bool {
        if self.is_empty() {
            return false;
        }
        let bad = |k: &TaskKey| {
            tasks[*k as usize]
                .done()
                .is_some_and(|(ok, _)| !self.satisfied_by(ok))
        };
        if self.all {
            self.ids.iter().any(bad)
        } else {
            !self.unknown && self.ids.iter().all(bad)
        }
    }

    /// Met against one engine's completed/failed sets (the `follow` test in `maybe_run`).
    pub fn check_on(&self, tasks: &[Slot], engine: u32) -> bool {
        if self.is_empty() {
            return true;
        }
        let met = |k: &TaskKey| {
            tasks[*k as usize]
                .done()
                .is_some_and(|(ok, e)| e == engine && self.satisfied_by(ok))
        };
        if self.all {
            !self.unknown && self.ids.iter().all(met)
        } else {
            self.ids.iter().any(met)
        }
    }

    /// At submission, an `all` dependency drops the ids that are already satisfied.
    pub fn reduce_satisfied(&mut self, tasks: &[Slot]) {
        if self.all {
            let (success, failure) = (self.success, self.failure);
            self.ids.retain(|k| {
                !tasks[*k as usize]
                    .done()
                    .is_some_and(|(ok, _)| if ok { success } else { failure })
            });
        }
    }

    /// The engines (incarnations) where the already-finished ids in this dependency ran,
    /// for the "follow across more than one engine" impossibility test.
    pub fn destinations(&self, tasks: &[Slot], mut f: impl FnMut(u32)) {
        for k in &self.ids {
            if let Some((ok, e)) = tasks[*k as usize].done() {
                if self.satisfied_by(ok) && e != super::NO_ENGINE {
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

    fn resolve(s: &str) -> Option<TaskKey> {
        match s {
            "a" => Some(0),
            "b" => Some(1),
            "c" => Some(2),
            _ => None,
        }
    }

    fn tasks() -> Vec<Slot> {
        // a completed on engine 7, b failed (scheduler-made), c still live
        vec![
            Slot::Done {
                ok: true,
                engine: 7,
            },
            Slot::Done {
                ok: false,
                engine: super::super::NO_ENGINE,
            },
            Slot::Taken,
        ]
    }

    #[test]
    fn list_form_is_all_success_only() {
        let d = Dep::from_value(
            &Value::Array(vec!["a".into(), "c".into(), "a".into()]),
            resolve,
        );
        assert_eq!(d.ids, vec![0, 2]);
        assert!(d.all && d.success && !d.failure && !d.unknown);
        let t = tasks();
        assert!(!d.check(&t));
        assert!(!d.unreachable(&t));
        let d = Dep::from_value(&Value::Array(vec!["a".into(), "b".into()]), resolve);
        assert!(d.unreachable(&t));
    }

    #[test]
    fn dict_form_and_key_order() {
        let v1 = vmap! {"dependencies" => Value::Array(vec!["b".into()]), "all" => false, "success" => false, "failure" => true};
        let v2 = vmap! {"failure" => true, "success" => false, "all" => false, "dependencies" => Value::Array(vec!["b".into()])};
        let d1 = Dep::from_value(&v1, resolve);
        let d2 = Dep::from_value(&v2, resolve);
        assert_eq!(d1, d2);
        let t = tasks();
        assert!(d1.check(&t));
        let d = Dep::from_value(
            &vmap! {"dependencies" => Value::Array(vec!["a".into()]), "success" => false, "failure" => true},
            resolve,
        );
        assert!(d.unreachable(&t));
    }

    #[test]
    fn unknown_and_self_are_invalid() {
        let d = Dep::from_value(&Value::Array(vec!["zzz".into()]), resolve);
        assert!(d.unknown && d.is_invalid(99));
        let d = Dep::from_value(&Value::Array(vec!["c".into()]), resolve);
        assert!(d.is_invalid(2) && !d.is_invalid(3));
        let d = Dep::from_value(&Value::Array(vec![Value::Int(3)]), resolve);
        assert!(d.is_invalid(0));
        assert!(Dep::from_value(&Value::Nil, resolve).is_empty());
    }

    #[test]
    fn follow_check_on_engine() {
        let t = tasks();
        let d = Dep::from_value(&Value::Array(vec!["a".into()]), resolve);
        assert!(d.check_on(&t, 7));
        assert!(!d.check_on(&t, 8));
    }
}
