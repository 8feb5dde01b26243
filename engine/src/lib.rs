//! ippx-engine: a native IPython Parallel engine.
//!
//! A Rust supervisor ([`supervisor`]) owns every socket, registration, the heart, the
//! request queue, statuses and metadata; a worker process ([`worker`], the same binary)
//! embeds CPython and runs only what needs Python.

pub mod args;
pub mod connect;
pub mod heart;
pub mod ipc;
pub mod signals;
pub mod stats;
pub mod supervisor;
pub mod worker;
pub mod worker_proc;
