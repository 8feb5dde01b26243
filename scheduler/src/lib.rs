//! ippx schedulers. The decision logic lives in pure modules (`relay`, `task`) that take
//! frames in and give frames out; `runner` is the only place that touches sockets.

pub mod broadcast;
pub mod link;
pub mod relay;
pub mod runner;
pub mod task;

pub mod metrics;

pub use metrics::Counters;
