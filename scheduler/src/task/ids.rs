//! What the scheduler remembers about finished tasks (Python's `all_completed`,
//! `all_failed` and `destinations`), in memory that does not grow with every task.
//!
//! Python keeps every msg_id it has ever seen, forever; over a million-task run that was
//! most of the controller's memory growth. Dependencies need three answers about any
//! earlier msg_id, and they get them here:
//!
//! * *has it finished?* and *did it fail?* — exact, for every task ever finished. Ids of
//!   jupyter_client's `{session}_{pid}_{counter}` shape are kept as counter sets per
//!   `{session}_{pid}` prefix ([`CounterSet`]): a client whose tasks all finished costs a
//!   few bytes per 65,536 tasks, and at most one bit per counter otherwise. Failures are
//!   a second counter set, so they cost memory only where they happen. Ids of any other
//!   shape are kept whole (exact, but a string per task: only such clients grow memory).
//! * *on which engine did it run?* (for `follow`) — this one cannot be both exact and
//!   bounded: it is about log2(engines) bits of information per task. It is kept for the
//!   most recently finished or most recently followed tasks (at least [`PLACES`] / 2,
//!   at most [`PLACES`]), in two generations: a lookup that hits the old generation moves
//!   the entry to the young one, so a task that keeps being followed stays known however
//!   old it is. A `follow` on a task whose engine has been forgotten fails with
//!   `ImpossibleDependency` rather than waiting forever (docs/store.md).
//!
//! Live (unfinished) tasks are not here: the scheduler's live-task map answers for them,
//! and a msg_id that is in neither was never submitted (`InvalidDependency`).

use ippx_protocol::idset::{split_msg_id, CounterSet};
use std::collections::HashMap;

/// The engine of a finished task whose location has been forgotten (see module docs).
pub(crate) const FORGOTTEN: u32 = u32::MAX - 1;

/// How many finished tasks' engines are remembered, at most (two generations of half).
/// 16,384 entries are ~0.8 MB; a `follow` older than that (and not followed since) is
/// far beyond what load-balanced workloads do.
pub(crate) const PLACES: usize = 16_384;

#[derive(Default)]
struct Stream {
    done: CounterSet,
    failed: CounterSet,
}

/// A finished task's key in the location cache: (prefix number, counter).
type PlaceKey = (u32, u64);

pub(crate) struct History {
    prefixes: HashMap<Box<str>, u32>,
    streams: Vec<Stream>,
    /// Ids of other shapes: outcome and engine, exactly.
    others: HashMap<Box<str>, (bool, u32)>,
    young: HashMap<PlaceKey, u32>,
    old: HashMap<PlaceKey, u32>,
    generation: usize,
    len: u64,
}

impl Default for History {
    fn default() -> Self {
        History::with_places(PLACES)
    }
}

impl History {
    /// A history remembering the engines of at least `places / 2` tasks.
    pub fn with_places(places: usize) -> Self {
        let generation = (places / 2).max(1);
        History {
            prefixes: HashMap::new(),
            streams: Vec::new(),
            others: HashMap::new(),
            young: HashMap::with_capacity(generation),
            old: HashMap::new(),
            generation,
            len: 0,
        }
    }

    /// Finished tasks recorded.
    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.len
    }

    fn stream(&self, prefix: &str) -> Option<(u32, &Stream)> {
        let &p = self.prefixes.get(prefix)?;
        Some((p, &self.streams[p as usize]))
    }

    pub fn contains(&self, id: &str) -> bool {
        match split_msg_id(id) {
            Some((prefix, n)) => self.stream(prefix).is_some_and(|(_, s)| s.done.contains(n)),
            None => self.others.contains_key(id),
        }
    }

    /// `(ok, engine)` of a finished task; `engine` is [`NO_ENGINE`](super::NO_ENGINE) for a task failed by
    /// the scheduler itself and [`FORGOTTEN`] when no longer known. `None`: not finished
    /// (live, or never seen).
    pub fn outcome(&mut self, id: &str) -> Option<(bool, u32)> {
        let Some((prefix, n)) = split_msg_id(id) else {
            return self.others.get(id).copied();
        };
        let (p, s) = self.stream(prefix)?;
        if !s.done.contains(n) {
            return None;
        }
        let ok = !s.failed.contains(n);
        let key = (p, n);
        let engine = match self.young.get(&key) {
            Some(&e) => e,
            None => match self.old.remove(&key) {
                // Used again: keep it for another generation.
                Some(e) => {
                    self.place(key, e);
                    e
                }
                None => FORGOTTEN,
            },
        };
        Some((ok, engine))
    }

    /// Records a finished task. Recording a task twice keeps the latest outcome.
    pub fn record(&mut self, id: &str, ok: bool, engine: u32) {
        let Some((prefix, n)) = split_msg_id(id) else {
            if self.others.insert(id.into(), (ok, engine)).is_none() {
                self.len += 1;
            }
            return;
        };
        let p = match self.prefixes.get(prefix) {
            Some(&p) => p,
            None => {
                let p = self.streams.len() as u32;
                self.prefixes.insert(prefix.into(), p);
                self.streams.push(Stream::default());
                p
            }
        };
        let s = &mut self.streams[p as usize];
        if s.done.insert(n) {
            self.len += 1;
        }
        if ok {
            s.failed.remove(n);
        } else {
            s.failed.insert(n);
        }
        self.old.remove(&(p, n));
        self.place((p, n), engine);
    }

    fn place(&mut self, key: PlaceKey, engine: u32) {
        if self.young.len() >= self.generation && !self.young.contains_key(&key) {
            // The old generation is forgotten; the young one becomes old. The new map is
            // allocated at full size once, so it never rehashes while it fills.
            self.old = std::mem::replace(&mut self.young, HashMap::with_capacity(self.generation));
        }
        self.young.insert(key, engine);
    }

    /// Approximate heap bytes (tests).
    #[cfg(test)]
    pub fn heap_bytes(&self) -> usize {
        let place = std::mem::size_of::<(PlaceKey, u32)>() + 1;
        self.streams.iter().map(|s| s.done.heap_bytes() + s.failed.heap_bytes()).sum::<usize>()
            + self.prefixes.keys().map(|k| k.len() + 48).sum::<usize>()
            + self.others.keys().map(|k| k.len() + 40).sum::<usize>()
            + (self.young.capacity() + self.old.capacity()) * place
    }
}

#[cfg(test)]
mod tests {
    use super::super::NO_ENGINE;
    use super::*;

    const P: &str = "4be2a1f0-9c3d5e6f7a8b9c0d1e2f3a4b_31337";

    fn id(n: u64) -> String {
        format!("{P}_{n}")
    }

    #[test]
    fn outcomes_are_exact_for_both_shapes() {
        let mut h = History::default();
        h.record(&id(0), true, 3);
        h.record(&id(2), false, 4);
        h.record(&id(5), false, NO_ENGINE);
        h.record("9f0e8d7c-6b5a-4c3d-2e1f-0a9b8c7d6e5f", true, 1);
        assert_eq!(h.outcome(&id(0)), Some((true, 3)));
        assert_eq!(h.outcome(&id(1)), None);
        assert_eq!(h.outcome(&id(2)), Some((false, 4)));
        assert_eq!(h.outcome(&id(5)), Some((false, NO_ENGINE)));
        assert_eq!(h.outcome("9f0e8d7c-6b5a-4c3d-2e1f-0a9b8c7d6e5f"), Some((true, 1)));
        assert_eq!(h.outcome("9f0e8d7c-6b5a-4c3d-2e1f-0a9b8c7d6e50"), None);
        assert!(h.contains(&id(2)) && !h.contains(&id(3)) && !h.contains(&format!("{P}x_0")));
        assert_eq!(h.len(), 4);
    }

    #[test]
    fn places_are_bounded_but_refreshed_by_use() {
        let mut h = History::with_places(8);
        h.record(&id(0), true, 7);
        for n in 1..100 {
            h.record(&id(n), n % 3 != 0, (n % 5) as u32);
            // Task 0 is followed all the time: it stays known.
            assert_eq!(h.outcome(&id(0)), Some((true, 7)));
            assert!(h.young.len() + h.old.len() <= 8);
        }
        // Recent ones are known, old ones only by outcome.
        assert_eq!(h.outcome(&id(99)), Some((false, 4)));
        assert_eq!(h.outcome(&id(98)), Some((true, 3)));
        assert_eq!(h.outcome(&id(10)), Some((true, FORGOTTEN)));
        assert_eq!(h.outcome(&id(9)), Some((false, FORGOTTEN)));
        assert_eq!(h.len(), 100);
    }

    #[test]
    fn a_million_tasks_cost_little() {
        let mut h = History::default();
        for n in 0..1_000_000u64 {
            h.record(&id(n), n % 1000 != 7, (n % 16) as u32);
        }
        assert_eq!(h.outcome(&id(7)), Some((false, FORGOTTEN)));
        assert_eq!(h.outcome(&id(999_999)), Some((true, 15)));
        // ~1,000 sparse failures (2 bytes each), the cache, a few full chunks.
        assert!(h.heap_bytes() < 1_500_000, "{}", h.heap_bytes());
    }
}
