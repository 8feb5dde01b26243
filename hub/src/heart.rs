//! The heart monitor (docs/protocol.md §3.3) as a pure state machine.
//!
//! Every period it emits one ping (an opaque ASCII float, the monitor's lifetime) and
//! judges the hearts that answered since the last tick. Between ticks it may send extra
//! "probe" pings while a registration waits, so an engine registers within a fraction of
//! a period rather than one to two whole periods.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Beat {
    pub ping: Vec<u8>,
    /// Hearts that answered for the first time.
    pub new_hearts: Vec<Vec<u8>>,
    /// Hearts that missed more than the allowed beats; they are no longer tracked.
    pub stopped_hearts: Vec<Vec<u8>>,
    /// Hearts that missed this beat but are still within the limit.
    pub missed: usize,
}

#[derive(Debug)]
pub struct HeartMonitor {
    period: Duration,
    max_misses: u32,
    start: Instant,
    next_tick: Instant,
    /// Tracked hearts and their consecutive misses.
    hearts: HashMap<Vec<u8>, u32>,
    responders: HashSet<Vec<u8>>,
    /// Payloads a pong may echo: pings since the last tick, and those of the period before.
    current: Vec<Vec<u8>>,
    previous: Vec<Vec<u8>>,
    last_payload: Vec<u8>,
}

impl HeartMonitor {
    pub fn new(period: Duration, max_misses: u32, now: Instant) -> Self {
        HeartMonitor {
            period,
            max_misses,
            start: now,
            next_tick: now,
            hearts: HashMap::new(),
            responders: HashSet::new(),
            current: Vec::new(),
            previous: Vec::new(),
            last_payload: Vec::new(),
        }
    }

    pub fn period(&self) -> Duration {
        self.period
    }

    pub fn next_tick(&self) -> Instant {
        self.next_tick
    }

    fn payload(&mut self, now: Instant) -> Vec<u8> {
        let mut p = format!("{:.6}", now.duration_since(self.start).as_secs_f64()).into_bytes();
        if p == self.last_payload {
            p.extend_from_slice(b"1");
        }
        self.last_payload.clone_from(&p);
        p
    }

    /// The periodic beat. Call when `now >= next_tick()`.
    pub fn tick(&mut self, now: Instant) -> Beat {
        let responders = std::mem::take(&mut self.responders);
        let mut beat = Beat::default();
        for h in &responders {
            match self.hearts.get_mut(h) {
                Some(misses) => *misses = 0,
                None => {
                    self.hearts.insert(h.clone(), 0);
                    beat.new_hearts.push(h.clone());
                }
            }
        }
        let max = self.max_misses;
        let mut stopped = Vec::new();
        for (h, misses) in self.hearts.iter_mut() {
            if !responders.contains(h) {
                *misses += 1;
                if *misses > max {
                    stopped.push(h.clone());
                } else {
                    beat.missed += 1;
                }
            }
        }
        for h in &stopped {
            self.hearts.remove(h);
        }
        beat.stopped_hearts = stopped;
        beat.ping = self.payload(now);
        self.previous = std::mem::replace(&mut self.current, vec![beat.ping.clone()]);
        // Schedule from the planned time so beats do not drift, but never in a burst.
        self.next_tick += self.period;
        if self.next_tick <= now {
            self.next_tick = now + self.period;
        }
        beat
    }

    /// An extra ping between beats (registration probe). Its pongs count like any other.
    pub fn probe(&mut self, now: Instant) -> Vec<u8> {
        let p = self.payload(now);
        self.current.push(p.clone());
        p
    }

    /// A pong `[heart, payload]`. True when it echoes a recent ping.
    pub fn pong(&mut self, heart: &[u8], payload: &[u8]) -> bool {
        let ok = self.current.iter().chain(&self.previous).any(|p| p == payload);
        if ok {
            self.responders.insert(heart.to_vec());
        }
        ok
    }

    pub fn forget(&mut self, heart: &[u8]) {
        self.hearts.remove(heart);
        self.responders.remove(heart);
    }

    pub fn tracked(&self) -> usize {
        self.hearts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Duration = Duration::from_millis(100);

    #[test]
    fn new_heart_then_stopped_after_max_misses_plus_one() {
        let t0 = Instant::now();
        let mut hm = HeartMonitor::new(P, 2, t0);
        let b = hm.tick(t0);
        assert!(hm.pong(b"e1", &b.ping));
        let b = hm.tick(t0 + P);
        assert_eq!(b.new_hearts, vec![b"e1".to_vec()]);
        // three silent beats: misses 1, 2 (probation), 3 > 2 (stopped)
        let b1 = hm.tick(t0 + P * 2);
        let b2 = hm.tick(t0 + P * 3);
        assert_eq!((b1.missed, b2.missed), (1, 1));
        assert!(b2.stopped_hearts.is_empty());
        let b3 = hm.tick(t0 + P * 4);
        assert_eq!(b3.stopped_hearts, vec![b"e1".to_vec()]);
        assert_eq!(hm.tracked(), 0);
    }

    #[test]
    fn answering_resets_misses() {
        let t0 = Instant::now();
        let mut hm = HeartMonitor::new(P, 1, t0);
        let b = hm.tick(t0);
        hm.pong(b"e", &b.ping);
        hm.tick(t0 + P);
        let b = hm.tick(t0 + P * 2); // miss 1
        assert_eq!(b.missed, 1);
        hm.pong(b"e", &b.ping);
        let b = hm.tick(t0 + P * 3);
        assert!(b.stopped_hearts.is_empty());
        assert_eq!(b.missed, 0);
    }

    #[test]
    fn late_pong_for_previous_ping_counts_but_stale_does_not() {
        let t0 = Instant::now();
        let mut hm = HeartMonitor::new(P, 10, t0);
        let b0 = hm.tick(t0);
        let _b1 = hm.tick(t0 + P);
        assert!(hm.pong(b"e", &b0.ping), "previous ping accepted");
        let _b2 = hm.tick(t0 + P * 2);
        assert!(!hm.pong(b"e", &b0.ping), "two periods old");
        assert!(!hm.pong(b"e", b"garbage"));
    }

    #[test]
    fn probes_are_accepted_and_unique() {
        let t0 = Instant::now();
        let mut hm = HeartMonitor::new(P, 10, t0);
        let b = hm.tick(t0);
        let p = hm.probe(t0);
        assert_ne!(p, b.ping);
        assert!(hm.pong(b"e", &p));
    }

    #[test]
    fn ticks_do_not_burst_after_a_stall() {
        let t0 = Instant::now();
        let mut hm = HeartMonitor::new(P, 10, t0);
        hm.tick(t0);
        hm.tick(t0 + P * 10);
        assert!(hm.next_tick() > t0 + P * 10);
    }
}
