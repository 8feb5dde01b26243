//! ippx schedulers. The decision logic lives in pure modules (`relay`, `task`) that take
//! frames in and give frames out; `runner` is the only place that touches sockets.

pub mod broadcast;
pub mod relay;
pub mod runner;
pub mod task;

use std::collections::BTreeMap;

/// Counts of dropped messages by reason; exported as metrics by a later issue and
/// logged at exit.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub dropped: BTreeMap<&'static str, u64>,
}

impl Counters {
    pub fn drop(&mut self, reason: &'static str) {
        *self.dropped.entry(reason).or_default() += 1;
    }
}
