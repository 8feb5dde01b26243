//! msg_id → task key, for every msg_id ever submitted (Python's `all_ids`).
//!
//! This map only grows, so its rehashes matter on the hot path. It is keyed by the
//! 64-bit SipHash (random keys, as std's `HashMap`) of the msg_id, stored once: growing
//! the table never re-reads or re-hashes the strings. The strings live in a side table
//! indexed by task key and are compared on every hit; the (practically impossible)
//! 64-bit collision goes to an ordinary overflow map.

use super::TaskKey;
use std::collections::hash_map::{Entry, RandomState};
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

/// Passes a `u64` key through: the key already is a SipHash.
#[derive(Default)]
pub(crate) struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; fold anything else in for completeness.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Default)]
pub(crate) struct IdIndex {
    seed: RandomState,
    by_hash: HashMap<u64, TaskKey, BuildHasherDefault<PassThrough>>,
    overflow: HashMap<Box<str>, TaskKey>,
    /// msg_id of each task key.
    names: Vec<Box<str>>,
}

impl IdIndex {
    pub fn get(&self, id: &str) -> Option<TaskKey> {
        let h = self.seed.hash_one(id);
        match self.by_hash.get(&h) {
            Some(&k) if &*self.names[k as usize] == id => Some(k),
            Some(_) => self.overflow.get(id).copied(),
            None => None,
        }
    }

    /// Adds `id` as the next task key (== `len()` before the call), or `None` if present.
    pub fn insert(&mut self, id: &str) -> Option<TaskKey> {
        let k = self.names.len() as TaskKey;
        let h = self.seed.hash_one(id);
        match self.by_hash.entry(h) {
            Entry::Vacant(v) => {
                v.insert(k);
            }
            Entry::Occupied(o) => {
                if &*self.names[*o.get() as usize] == id {
                    return None;
                }
                match self.overflow.entry(id.into()) {
                    Entry::Occupied(_) => return None,
                    Entry::Vacant(v) => {
                        v.insert(k);
                    }
                }
            }
        }
        self.names.push(id.into());
        Some(k)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_get_duplicate() {
        let mut ix = IdIndex::default();
        assert_eq!(ix.insert("a"), Some(0));
        assert_eq!(ix.insert("b"), Some(1));
        assert_eq!(ix.insert("a"), None);
        assert_eq!(ix.get("a"), Some(0));
        assert_eq!(ix.get("b"), Some(1));
        assert_eq!(ix.get("c"), None);
        assert_eq!(ix.len(), 2);
    }

    #[test]
    fn hash_collisions_use_the_overflow_map() {
        let mut ix = IdIndex::default();
        assert_eq!(ix.insert("a"), Some(0));
        // Make z's hash slot point at "a", as if the two hashes collided.
        let hz = ix.seed.hash_one("z");
        ix.by_hash.insert(hz, 0);
        assert_eq!(ix.get("z"), None);
        assert_eq!(
            ix.insert("z"),
            Some(1),
            "collision goes to the overflow map"
        );
        assert_eq!(ix.overflow.get("z"), Some(&1));
        assert_eq!(ix.get("z"), Some(1));
        assert_eq!(ix.get("a"), Some(0));
        assert_eq!(ix.insert("z"), None);
        assert_eq!(ix.insert("a"), None);
    }
}
