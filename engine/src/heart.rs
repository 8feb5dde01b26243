//! The engine's heart: SUB(`hb_ping`) → DEALER(`hb_pong`, identity = uuid), echoing every
//! ping frame unchanged, on its own thread so a worker (or, in-process, Python holding the
//! GIL in C) never delays a pong. It counts pings for the supervisor's watchdog.

use ippx_transport::{self as tp, zmq, zmq::SocketType};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

#[derive(Default)]
pub struct HeartState {
    pub stop: AtomicBool,
    /// Pings seen so far (the watchdog compares counts between its checks).
    pub pings: AtomicU64,
}

pub struct Heart {
    pub state: Arc<HeartState>,
    thread: Option<JoinHandle<()>>,
}

impl Heart {
    pub fn start(
        ctx: &zmq::Context,
        security: &tp::Security,
        ping_url: &str,
        pong_url: &str,
        identity: &[u8],
    ) -> Result<Heart, crate::supervisor::EngineError> {
        let sub = security.socket(ctx, SocketType::SUB, None)?;
        sub.set_subscribe(b"")?;
        tp::connect(&sub, ping_url)?;
        let pong = security.socket(ctx, SocketType::DEALER, Some(identity))?;
        tp::connect(&pong, pong_url)?;
        let state = Arc::new(HeartState::default());
        let st = state.clone();
        let thread = std::thread::Builder::new().name("heart".into()).spawn(move || {
            while !st.stop.load(Ordering::Relaxed) {
                match tp::poll(&[&sub], 100) {
                    Ok(r) if r[0] => {}
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::error!("heart poll failed: {e}");
                        return;
                    }
                }
                while let Ok(Some(frames)) = tp::try_recv(&sub) {
                    st.pings.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = tp::send(&pong, frames) {
                        tracing::warn!("heart: pong not sent: {e}");
                    }
                }
            }
        })?;
        Ok(Heart { state, thread: Some(thread) })
    }

    pub fn stop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Heart {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The watchdog's verdicts, checked every `hb_period + 500 ms` as ipengine does.
#[derive(Debug)]
pub struct Watchdog {
    max_misses: u32,
    last_count: u64,
    pub misses: u32,
}

impl Watchdog {
    pub fn new(max_misses: u32) -> Self {
        Watchdog { max_misses, last_count: 0, misses: 0 }
    }

    /// One check with the current ping count; true when the engine should give up.
    pub fn check(&mut self, pings: u64) -> bool {
        if pings == self.last_count {
            self.misses += 1;
        } else {
            self.misses = 0;
        }
        self.last_count = pings;
        self.max_misses > 0 && self.misses >= self.max_misses
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_counts_consecutive_silent_checks() {
        let mut w = Watchdog::new(3);
        assert!(!w.check(1));
        assert!(!w.check(1));
        assert!(!w.check(1));
        assert!(w.check(1));
        let mut w = Watchdog::new(2);
        assert!(!w.check(0));
        assert!(!w.check(5));
        assert!(!w.check(5));
        assert!(w.check(5));
        let mut off = Watchdog::new(0);
        assert!((0..100).all(|_| !off.check(0)));
    }
}
