//! A log budget: how many lines of one kind a process writes per second. A peer that
//! floods a socket with bad messages must not turn the log into the bottleneck (or fill
//! the disk); every dropped message is still counted in the metrics, only the lines are
//! thinned, and the line after a quiet spell says how many were left out.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct LogBudget {
    per_window: u32,
    window: Duration,
    start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

/// What to do with one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write it; `suppressed` lines were left out since the last line written.
    Log { suppressed: u64 },
    /// Leave it out (it is counted).
    Skip,
}

impl LogBudget {
    pub const fn new(per_window: u32, window: Duration) -> Self {
        LogBudget { per_window, window, start: None, used: 0, suppressed: 0 }
    }

    /// 20 lines a second: enough to see each of a few bad peers, too few to matter.
    pub const fn per_second() -> Self {
        Self::new(20, Duration::from_secs(1))
    }

    pub fn check(&mut self, now: Instant) -> Verdict {
        let fresh = match self.start {
            Some(s) => now.saturating_duration_since(s) >= self.window,
            None => true,
        };
        if fresh {
            self.start = Some(now);
            self.used = 0;
        }
        if self.used < self.per_window {
            self.used += 1;
            Verdict::Log { suppressed: std::mem::take(&mut self.suppressed) }
        } else {
            self.suppressed += 1;
            Verdict::Skip
        }
    }

    /// Lines left out and not yet reported.
    pub fn pending(&self) -> u64 {
        self.suppressed
    }
}

/// One [`LogBudget::per_second`] per socket, so that a flood on one socket does not hide
/// what happens on another.
#[derive(Debug, Default)]
pub struct LogBudgets {
    by_socket: Vec<(&'static str, LogBudget)>,
}

impl LogBudgets {
    pub fn check(&mut self, socket: &'static str, now: Instant) -> Verdict {
        let i = match self.by_socket.iter().position(|(s, _)| *s == socket) {
            Some(i) => i,
            None => {
                self.by_socket.push((socket, LogBudget::per_second()));
                self.by_socket.len() - 1
            }
        };
        self.by_socket[i].1.check(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thins_a_flood_and_reports_what_it_left_out() {
        let mut b = LogBudget::new(3, Duration::from_secs(1));
        let t = Instant::now();
        let got: Vec<Verdict> = (0..5).map(|_| b.check(t)).collect();
        assert_eq!(got[..3], [Verdict::Log { suppressed: 0 }; 3]);
        assert_eq!(got[3..], [Verdict::Skip; 2]);
        assert_eq!(b.pending(), 2);
        // still inside the window
        assert_eq!(b.check(t + Duration::from_millis(999)), Verdict::Skip);
        // the next window's first line carries the count
        assert_eq!(b.check(t + Duration::from_secs(1)), Verdict::Log { suppressed: 3 });
        assert_eq!(b.check(t + Duration::from_secs(1)), Verdict::Log { suppressed: 0 });
        assert_eq!(b.pending(), 0);
    }

    #[test]
    fn each_socket_has_its_own_budget() {
        let mut b = LogBudgets::default();
        let t = Instant::now();
        for _ in 0..100 {
            b.check("hb_pong", t);
        }
        assert_eq!(b.check("hb_pong", t), Verdict::Skip);
        assert_eq!(b.check("registration", t), Verdict::Log { suppressed: 0 });
    }
}
