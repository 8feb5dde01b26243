//! ippx hub. The decision logic (`registry`, `heart`, `records`, `hub`) is pure and
//! unit-tested without sockets; `controller` binds the sockets, starts the scheduler and
//! runs the hub's socket loop ([`controller::run`] is the whole controller).

pub mod cli;
pub mod controller;
pub mod deploy;
pub mod heart;
pub mod hub;
pub mod memory;
pub mod metrics;
pub mod profile;
pub mod records;
pub mod registry;
pub mod settings;
pub mod status;
pub mod store;
