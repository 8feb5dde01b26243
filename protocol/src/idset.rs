//! Exact, compact sets of msg_ids, for bookkeeping that must remember every msg_id a
//! controller has seen finish (the hub's `all_completed`, the task scheduler's
//! completed/failed sets) without growing by a whole string per task.
//!
//! jupyter_client's `Session.msg_id` is `{session}_{pid}_{counter}`: one client process
//! numbers its messages 0, 1, 2, … So an id splits, exactly and reversibly, into a
//! *prefix* (`{session}_{pid}`) and a *counter*, and the ids of one prefix are a set of
//! integers. [`CounterSet`] stores such a set in 65,536-counter chunks, roaring-bitmap
//! style: a sorted array of 16-bit offsets while a chunk is sparse, an 8 KiB bitmap once
//! it is dense, and nothing at all once it is full. A client whose tasks all finish costs
//! a few bytes per 65,536 tasks; the worst case (every other counter) costs one bit per
//! counter. Ids of any other shape are kept as strings, exactly ([`IdSet`]'s fallback).
//!
//! The split is a bijection: the counter part must be canonical decimal (no sign, no
//! leading zero, fits in a `u64`), so `format!("{prefix}_{counter}")` gives back the id.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};

/// Splits a `{prefix}_{counter}` msg_id at its last `_`. `None` unless the counter is
/// canonical decimal, so that the split can be undone exactly.
pub fn split_msg_id(id: &str) -> Option<(&str, u64)> {
    let (prefix, n) = id.rsplit_once('_')?;
    let b = n.as_bytes();
    if b.is_empty() || b.len() > 20 || !b.iter().all(u8::is_ascii_digit) || (b.len() > 1 && b[0] == b'0') {
        return None;
    }
    n.parse().ok().map(|n| (prefix, n))
}

const CHUNK_BITS: u32 = 16;
const CHUNK: u32 = 1 << CHUNK_BITS;
const WORDS: usize = (CHUNK / 64) as usize;
/// Largest array container: 4,096 × 2 bytes = the size of a bitmap.
const ARRAY_MAX: usize = 4096;

#[derive(Clone, Debug)]
enum Chunk {
    /// Sorted, distinct offsets; at most `ARRAY_MAX`.
    Array(Vec<u16>),
    /// One bit per offset; `count` bits set, `ARRAY_MAX < count < CHUNK` (or fewer after
    /// removals).
    Bits { words: Box<[u64]>, count: u32 },
    /// Every offset.
    Full,
}

impl Chunk {
    fn count(&self) -> u32 {
        match self {
            Chunk::Array(v) => v.len() as u32,
            Chunk::Bits { count, .. } => *count,
            Chunk::Full => CHUNK,
        }
    }

    fn contains(&self, lo: u16) -> bool {
        match self {
            Chunk::Array(v) => v.binary_search(&lo).is_ok(),
            Chunk::Bits { words, .. } => words[lo as usize / 64] >> (lo % 64) & 1 == 1,
            Chunk::Full => true,
        }
    }

    fn insert(&mut self, lo: u16) -> bool {
        match self {
            Chunk::Full => false,
            Chunk::Array(v) => match v.binary_search(&lo) {
                Ok(_) => false,
                Err(i) if v.len() < ARRAY_MAX => {
                    v.insert(i, lo);
                    true
                }
                Err(_) => {
                    let mut words = vec![0u64; WORDS].into_boxed_slice();
                    for &x in v.iter().chain(std::iter::once(&lo)) {
                        words[x as usize / 64] |= 1 << (x % 64);
                    }
                    *self = Chunk::Bits { words, count: ARRAY_MAX as u32 + 1 };
                    true
                }
            },
            Chunk::Bits { words, count } => {
                let (w, b) = (lo as usize / 64, lo % 64);
                if words[w] >> b & 1 == 1 {
                    return false;
                }
                words[w] |= 1 << b;
                *count += 1;
                if *count == CHUNK {
                    *self = Chunk::Full;
                }
                true
            }
        }
    }

    /// Removes `lo`; the chunk shrinks back to an array when it gets sparse.
    fn remove(&mut self, lo: u16) -> bool {
        match self {
            Chunk::Array(v) => match v.binary_search(&lo) {
                Ok(i) => {
                    v.remove(i);
                    true
                }
                Err(_) => false,
            },
            Chunk::Full => {
                let mut words = vec![u64::MAX; WORDS].into_boxed_slice();
                words[lo as usize / 64] &= !(1 << (lo % 64));
                *self = Chunk::Bits { words, count: CHUNK - 1 };
                true
            }
            Chunk::Bits { words, count } => {
                let (w, b) = (lo as usize / 64, lo % 64);
                if words[w] >> b & 1 == 0 {
                    return false;
                }
                words[w] &= !(1 << b);
                *count -= 1;
                // Hysteresis (half of ARRAY_MAX) so that one insert/remove pair at the
                // boundary does not convert back and forth.
                if (*count as usize) < ARRAY_MAX / 2 {
                    let v: Vec<u16> = bits_iter(words).collect();
                    *self = Chunk::Array(v);
                }
                true
            }
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            Chunk::Array(v) => v.capacity() * 2,
            Chunk::Bits { .. } => WORDS * 8,
            Chunk::Full => 0,
        }
    }
}

fn bits_iter(words: &[u64]) -> impl Iterator<Item = u16> + '_ {
    words.iter().enumerate().flat_map(|(i, &w)| {
        let mut w = w;
        std::iter::from_fn(move || {
            if w == 0 {
                return None;
            }
            let b = w.trailing_zeros();
            w &= w - 1;
            Some((i as u32 * 64 + b) as u16)
        })
    })
}

/// An exact set of `u64` counters, compact when the counters are dense (see the module
/// docs). Memory: ≤ 8 KiB per partly filled 65,536-counter chunk, ~40 bytes per full one.
#[derive(Clone, Debug, Default)]
pub struct CounterSet {
    chunks: BTreeMap<u64, Chunk>,
    len: u64,
}

fn parts(n: u64) -> (u64, u16) {
    (n >> CHUNK_BITS, (n & (CHUNK as u64 - 1)) as u16)
}

impl CounterSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, n: u64) -> bool {
        let (hi, lo) = parts(n);
        self.chunks.get(&hi).is_some_and(|c| c.contains(lo))
    }

    /// Adds `n`; false if it was there.
    pub fn insert(&mut self, n: u64) -> bool {
        let (hi, lo) = parts(n);
        let added = match self.chunks.entry(hi) {
            Entry::Vacant(v) => {
                v.insert(Chunk::Array(vec![lo]));
                true
            }
            Entry::Occupied(mut o) => o.get_mut().insert(lo),
        };
        self.len += u64::from(added);
        added
    }

    /// Removes `n`; false if it was not there.
    pub fn remove(&mut self, n: u64) -> bool {
        let (hi, lo) = parts(n);
        let Entry::Occupied(mut o) = self.chunks.entry(hi) else { return false };
        let removed = o.get_mut().remove(lo);
        if o.get().count() == 0 {
            o.remove();
        }
        self.len -= u64::from(removed);
        removed
    }

    /// The counters in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.chunks.iter().flat_map(|(&hi, c)| {
            let base = hi << CHUNK_BITS;
            let it: Box<dyn Iterator<Item = u64> + '_> = match c {
                Chunk::Array(v) => Box::new(v.iter().map(move |&lo| base | u64::from(lo))),
                Chunk::Bits { words, .. } => Box::new(bits_iter(words).map(move |lo| base | u64::from(lo))),
                Chunk::Full => Box::new((0..u64::from(CHUNK)).map(move |lo| base | lo)),
            };
            it
        })
    }

    /// Approximate heap bytes held (containers plus ~48 bytes of map per chunk).
    pub fn heap_bytes(&self) -> usize {
        self.chunks.values().map(|c| c.heap_bytes() + 48).sum()
    }
}

/// An exact set of msg_ids: per `{prefix}`, a [`CounterSet`] of counters; ids of any
/// other shape as strings.
#[derive(Clone, Debug, Default)]
pub struct IdSet {
    streams: HashMap<Box<str>, CounterSet>,
    others: HashSet<Box<str>>,
    len: usize,
}

impl IdSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, id: &str) -> bool {
        match split_msg_id(id) {
            Some((p, n)) => self.streams.get(p).is_some_and(|s| s.contains(n)),
            None => self.others.contains(id),
        }
    }

    /// Adds `id`; false if it was there.
    pub fn insert(&mut self, id: &str) -> bool {
        let added = match split_msg_id(id) {
            Some((p, n)) => match self.streams.get_mut(p) {
                Some(s) => s.insert(n),
                None => self.streams.entry(p.into()).or_default().insert(n),
            },
            None => !self.others.contains(id) && self.others.insert(id.into()),
        };
        self.len += usize::from(added);
        added
    }

    /// Removes `id`; false if it was not there.
    pub fn remove(&mut self, id: &str) -> bool {
        let removed = match split_msg_id(id) {
            Some((p, n)) => {
                let Some(s) = self.streams.get_mut(p) else { return false };
                let r = s.remove(n);
                if s.is_empty() {
                    self.streams.remove(p);
                }
                r
            }
            None => self.others.remove(id),
        };
        self.len -= usize::from(removed);
        removed
    }

    /// Every id (prefix by prefix in no particular order, counters ascending; then the
    /// other ids).
    pub fn iter(&self) -> impl Iterator<Item = String> + '_ {
        self.streams.iter().flat_map(|(p, s)| s.iter().map(move |n| format!("{p}_{n}"))).chain(self.others.iter().map(|s| s.to_string()))
    }

    /// Approximate heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.streams.iter().map(|(p, s)| p.len() + 64 + s.heap_bytes()).sum::<usize>() + self.others.iter().map(|s| s.len() + 24).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn split_is_exact_and_reversible() {
        let p = "5f1c7a2e-0b9d4c3a8e7f6a5b4c3d2e1f_4242";
        assert_eq!(split_msg_id(&format!("{p}_0")), Some((p, 0)));
        assert_eq!(split_msg_id(&format!("{p}_17")), Some((p, 17)));
        assert_eq!(split_msg_id("a_b_18446744073709551615"), Some(("a_b", u64::MAX)));
        for bad in ["plain-uuid-4", "x_", "x_07", "x_+7", "x_-7", "x_1e3", "x_18446744073709551616", "x_ 7", "x_٣"] {
            assert_eq!(split_msg_id(bad), None, "{bad}");
        }
        assert_eq!(split_msg_id("_5"), Some(("", 5)));
        for id in ["a_0", "a_b_9", "_5", "z_123456789"] {
            let (p, n) = split_msg_id(id).expect("splits");
            assert_eq!(format!("{p}_{n}"), id);
        }
    }

    /// Random operations against a `BTreeSet`, across every container transition.
    #[test]
    fn counter_set_matches_a_btreeset() {
        let mut s = CounterSet::new();
        let mut m = BTreeSet::new();
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        // Dense fill of two chunks (array → bitmap → full), sparse noise far away, removals.
        for n in 0..(2 * CHUNK as u64) {
            assert_eq!(s.insert(n), m.insert(n));
        }
        for _ in 0..20_000 {
            let r = rnd();
            let n = match r % 4 {
                0 => r >> 8 & 0x3ffff,              // in and around the full chunks
                1 => (5 << 16) | (r >> 8 & 0xff),   // a sparse chunk
                2 => r >> 2,                        // anywhere
                _ => (9 << 16) | (r >> 8 & 0xffff), // a chunk that becomes a bitmap
            };
            if r >> 63 == 1 {
                assert_eq!(s.remove(n), m.remove(&n), "remove {n}");
            } else {
                assert_eq!(s.insert(n), m.insert(n), "insert {n}");
            }
            assert_eq!(s.contains(n), m.contains(&n));
            assert_eq!(s.len(), m.len() as u64);
        }
        for n in 0..(3 * CHUNK as u64) {
            assert_eq!(s.contains(n), m.contains(&n));
        }
        assert!(s.iter().eq(m.iter().copied()));
        // Empty again: no chunks left.
        for n in m.clone() {
            assert!(s.remove(n));
        }
        assert!(s.is_empty() && s.chunks.is_empty());
    }

    #[test]
    fn dense_counters_cost_almost_nothing() {
        let mut s = CounterSet::new();
        for n in 0..1_000_000u64 {
            s.insert(n);
        }
        assert_eq!(s.len(), 1_000_000);
        // 15 full chunks and one 16,960-counter bitmap.
        assert!(s.heap_bytes() < 10_000, "{}", s.heap_bytes());
        // Every other counter: one bit per counter.
        let mut s = CounterSet::new();
        for n in (0..1_000_000u64).step_by(2) {
            s.insert(n);
        }
        assert!(s.heap_bytes() < 1_000_000 / 8 + 16 * 8192, "{}", s.heap_bytes());
        assert!(s.contains(999_998) && !s.contains(999_999));
    }

    #[test]
    fn out_of_order_completion_within_a_window() {
        // Replies come back shuffled within a window of in-flight tasks; once the window
        // has passed, the chunk is full and costs nothing.
        let mut s = CounterSet::new();
        let mut x: u64 = 7;
        for base in (0..200_000u64).step_by(64) {
            let mut w: Vec<u64> = (base..base + 64).collect();
            for i in (1..w.len()).rev() {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                w.swap(i, (x >> 33) as usize % (i + 1));
            }
            for n in w {
                assert!(s.insert(n));
            }
        }
        assert_eq!(s.len(), 200_000);
        assert!(s.heap_bytes() < 10_000);
    }

    #[test]
    fn id_set_keeps_both_shapes_exactly() {
        let mut s = IdSet::new();
        let a = "0b1c2d3e-4f5a6b7c8d9e0f1a2b3c4d5e_999";
        assert!(s.insert(&format!("{a}_0")));
        assert!(s.insert(&format!("{a}_1")));
        assert!(!s.insert(&format!("{a}_1")));
        assert!(s.insert("8b3e8a4c-1b27-4d3e-b1a7-3b4e5d6f7a8b"));
        assert!(s.insert(&format!("{a}_01")), "non-canonical counters are other ids");
        assert!(s.contains(&format!("{a}_01")) && s.contains(&format!("{a}_1")));
        assert!(!s.contains(&format!("{a}_2")) && !s.contains(&format!("{a}x_1")));
        assert!(!s.contains("8b3e8a4c-1b27-4d3e-b1a7-3b4e5d6f7a8c"));
        assert_eq!(s.len(), 4);
        let mut all: Vec<String> = s.iter().collect();
        all.sort();
        assert_eq!(all.len(), 4);
        assert!(all.contains(&format!("{a}_0")));
        assert!(s.remove(&format!("{a}_0")) && s.remove(&format!("{a}_1")));
        assert!(!s.remove(&format!("{a}_1")));
        assert!(s.streams.is_empty());
        assert!(s.remove("8b3e8a4c-1b27-4d3e-b1a7-3b4e5d6f7a8b"));
        assert_eq!(s.len(), 1);
    }
}
