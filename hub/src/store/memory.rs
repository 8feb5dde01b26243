//! The in-memory store (`--dictdb`, the default), with DictDB's culling (docs/protocol.md §6.4).
//!
//! Records keep insertion order, which is the order Python returns them in. After every
//! write the limits are applied: more than `record_limit` records → drop the oldest
//! `cull_fraction × record_limit` (at least one); more than `size_limit` bytes of buffers →
//! drop oldest records until at most `size_limit × (1 − cull_fraction)` remain. "Oldest" is
//! by submission time. Unlike DictDB, records never submitted (IOPub for broadcast
//! sub-messages) are culled too, by the time the hub created them, so that they cannot
//! grow memory without bound.

use super::{Missing, Store, StoreResult, StoreStats};
use crate::records::{Fields, Limits, TaskRecord};
use crate::store::query::Query;
use indexmap::{IndexMap, IndexSet};
use ippx_protocol::datetime::{now as utc_now, Timestamp};
use tracing::info;

#[derive(Debug)]
struct Entry {
    rec: TaskRecord,
    created: Timestamp,
}

impl Entry {
    fn age_key(&self) -> Timestamp {
        self.rec.submitted.unwrap_or(self.created)
    }
}

#[derive(Debug, Default)]
pub struct MemStore {
    records: IndexMap<String, Entry>,
    bytes: usize,
    limits: Limits,
    /// Recently culled ids (bounded), to say "culled" rather than "no such message".
    culled_ids: IndexSet<String>,
    stats: StoreStats,
}

impl MemStore {
    pub fn new(limits: Limits) -> Self {
        MemStore { limits, ..Default::default() }
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Bytes of buffers held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn culled(&self) -> u64 {
        self.stats.culled
    }

    /// A record by reference (tests, diagnostics).
    pub fn peek(&self, msg_id: &str) -> Option<&TaskRecord> {
        self.records.get(msg_id).map(|e| &e.rec)
    }

    fn culled_cap(&self) -> usize {
        self.limits.record_limit.max(10_000)
    }

    /// Removes these records in one pass, keeping the order of the rest. Removing one
    /// at a time (`shift_remove`) moves every later record each time: at the record
    /// limit that cost tens of microseconds per task.
    fn drop_entries(&mut self, ids: &[String]) -> usize {
        if ids.is_empty() {
            return 0;
        }
        let doomed: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        let before = self.records.len();
        let mut freed = 0;
        self.records.retain(|k, e| {
            let keep = !doomed.contains(k.as_str());
            if !keep {
                freed += e.rec.buffer_bytes();
            }
            keep
        });
        self.bytes = self.bytes.saturating_sub(freed);
        before - self.records.len()
    }

    fn cull_ids(&mut self, ids: Vec<String>) {
        let n = self.drop_entries(&ids);
        self.stats.culled += n as u64;
        self.culled_ids.extend(ids);
        // Trimming the front of an IndexSet moves every id after it, so let it grow to
        // twice the cap first: that keeps the cost per culled record constant.
        let cap = self.culled_cap();
        if self.culled_ids.len() > 2 * cap {
            let excess = self.culled_ids.len() - cap;
            self.culled_ids.drain(..excess);
        }
    }

    /// Ids oldest first (by submission, else creation; ties keep insertion order).
    fn by_age(&self) -> Vec<String> {
        self.oldest(self.records.len())
    }

    /// The `n` oldest ids, oldest first. Selects before sorting and copies only the ids it
    /// returns: the record-limit cull runs every `cull_fraction × record_limit` tasks.
    fn oldest(&self, n: usize) -> Vec<String> {
        let mut v: Vec<(Timestamp, usize)> = self.records.values().enumerate().map(|(i, e)| (e.age_key(), i)).collect();
        if n == 0 {
            return Vec::new();
        }
        if n < v.len() {
            v.select_nth_unstable(n - 1);
            v.truncate(n);
        }
        v.sort_unstable();
        v.into_iter().filter_map(|(_, i)| self.records.get_index(i).map(|(k, _)| k.clone())).collect()
    }

    fn cull(&mut self) {
        let l = self.limits;
        if self.records.len() > l.record_limit {
            let n = ((l.cull_fraction * l.record_limit as f64) as usize).max(1);
            info!(records = self.records.len(), limit = l.record_limit, "record limit exceeded: culling the oldest {n}");
            let ids: Vec<String> = self.oldest(n);
            self.cull_ids(ids);
        }
        if self.bytes > l.size_limit {
            let target = (l.size_limit as f64 * (1.0 - l.cull_fraction)) as usize;
            let before = (self.records.len(), self.bytes);
            let mut bytes = self.bytes;
            let mut ids = Vec::new();
            for id in self.by_age() {
                if bytes <= target {
                    break;
                }
                bytes = bytes.saturating_sub(self.records.get(&id).map_or(0, |e| e.rec.buffer_bytes()));
                ids.push(id);
            }
            self.cull_ids(ids);
            info!(
                records = before.0,
                bytes = before.1,
                limit = l.size_limit,
                culled = before.0 - self.records.len(),
                "size limit exceeded: culled the oldest records"
            );
        }
    }
}

impl Store for MemStore {
    fn name(&self) -> &'static str {
        "DictDB"
    }

    fn get(&mut self, msg_id: &str, fields: Fields) -> StoreResult<Option<TaskRecord>> {
        Ok(self.records.get(msg_id).map(|e| e.rec.project(fields)))
    }

    fn update(&mut self, msg_id: &str, missing: Missing, f: &mut dyn FnMut(&mut TaskRecord)) -> StoreResult<bool> {
        let entry = match self.records.get_mut(msg_id) {
            Some(e) => e,
            None if missing == Missing::Create => {
                self.culled_ids.shift_remove(msg_id);
                self.records.entry(msg_id.to_owned()).or_insert(Entry { rec: TaskRecord::new(msg_id), created: utc_now() })
            }
            None => return Ok(false),
        };
        let before = entry.rec.buffer_bytes();
        f(&mut entry.rec);
        let after = entry.rec.buffer_bytes();
        self.bytes = (self.bytes + after).saturating_sub(before);
        self.stats.writes += 1;
        self.stats.durable += 1;
        self.cull();
        Ok(true)
    }

    fn find(&mut self, q: &Query, fields: Fields) -> StoreResult<Vec<TaskRecord>> {
        if let Some(ids) = q.msg_id_candidates() {
            // Direct lookups, returned in insertion order.
            let mut hits: Vec<(usize, &Entry)> = ids.iter().filter_map(|id| self.records.get_full(id.as_str())).map(|(i, _, e)| (i, e)).collect();
            hits.sort_by_key(|(i, _)| *i);
            hits.dedup_by_key(|(i, _)| *i);
            return Ok(hits.into_iter().filter(|(_, e)| q.matches(&e.rec)).map(|(_, e)| e.rec.project(fields)).collect());
        }
        Ok(self.records.values().filter(|e| q.matches(&e.rec)).map(|e| e.rec.project(fields)).collect())
    }

    fn history(&mut self) -> StoreResult<Vec<String>> {
        let mut v: Vec<(Timestamp, usize, &str)> =
            self.records.values().enumerate().filter_map(|(i, e)| e.rec.submitted.map(|s| (s, i, e.rec.msg_id.as_str()))).collect();
        v.sort();
        Ok(v.into_iter().map(|(_, _, id)| id.to_owned()).collect())
    }

    fn remove(&mut self, q: &Query) -> StoreResult<usize> {
        let ids: Vec<String> = self.records.values().filter(|e| q.matches(&e.rec)).map(|e| e.rec.msg_id.clone()).collect();
        Ok(self.drop_entries(&ids))
    }

    fn was_culled(&self, msg_id: &str) -> bool {
        self.culled_ids.contains(msg_id)
    }

    fn stats(&self) -> StoreStats {
        StoreStats { records: Some(self.records.len() as u64), bytes: Some(self.bytes as u64), ..self.stats.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ippx_protocol::datetime::parse_iso;

    fn submitted(store: &mut MemStore, id: &str, when: &str, bytes: usize) {
        store
            .update(id, Missing::Create, &mut |r| {
                r.submitted = parse_iso(when);
                r.buffers = vec![vec![0; bytes]];
            })
            .expect("update");
    }

    #[test]
    fn history_sorted_by_submission_and_orphans_excluded() {
        let mut s = MemStore::default();
        submitted(&mut s, "b", "2026-01-01T00:00:02Z", 0);
        submitted(&mut s, "a", "2026-01-01T00:00:01Z", 0);
        s.update("orphan", Missing::Create, &mut |r| r.stdout.push('x')).expect("update");
        assert_eq!(s.history().ok(), Some(vec!["a".to_owned(), "b".to_owned()]));
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn record_limit_culls_oldest_fraction() {
        let mut s = MemStore::new(Limits { record_limit: 10, size_limit: usize::MAX, cull_fraction: 0.2 });
        for i in 0..11 {
            submitted(&mut s, &format!("m{i:02}"), &format!("2026-01-01T00:00:{i:02}Z"), 0);
        }
        assert_eq!(s.len(), 9);
        assert!(s.peek("m00").is_none() && s.peek("m01").is_none());
        assert!(s.was_culled("m00"));
        assert!(s.peek("m10").is_some());
        // A reply for a culled record does not bring it back.
        assert_eq!(s.update("m00", Missing::Skip, &mut |r| r.stdout.push('x')).ok(), Some(false));
        assert!(s.peek("m00").is_none());
    }

    #[test]
    fn size_limit_culls_until_below_target() {
        let mut s = MemStore::new(Limits { record_limit: 1000, size_limit: 100, cull_fraction: 0.5 });
        for i in 0..4 {
            submitted(&mut s, &format!("m{i}"), &format!("2026-01-01T00:00:0{i}Z"), 30);
        }
        assert!(s.bytes() <= 100);
        assert!(s.peek("m3").is_some());
        assert!(s.peek("m0").is_none());
    }

    #[test]
    fn orphans_are_culled_too_so_memory_stays_bounded() {
        let mut s = MemStore::new(Limits { record_limit: 20, size_limit: usize::MAX, cull_fraction: 0.5 });
        for i in 0..1000 {
            s.update(&format!("orphan{i}"), Missing::Create, &mut |r| r.stdout.push('x')).expect("update");
        }
        assert!(s.len() <= 20);
        assert!(s.peek("orphan999").is_some());
    }

    #[test]
    fn bytes_follow_updates_and_removals() {
        let mut s = MemStore::default();
        submitted(&mut s, "a", "2026-01-01T00:00:01Z", 10);
        s.update("a", Missing::Skip, &mut |r| r.result_buffers = vec![vec![1; 5]]).expect("update");
        assert_eq!(s.bytes(), 15);
        s.update("a", Missing::Skip, &mut |r| r.buffers.clear()).expect("update");
        assert_eq!(s.bytes(), 5);
        assert_eq!(s.remove(&Query::ids(&["a"])).ok(), Some(1));
        assert_eq!(s.bytes(), 0);
    }
}
