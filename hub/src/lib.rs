//! ippx hub. The decision logic (`registry`, `heart`, `records`, `hub`) is pure and
//! unit-tested without sockets; `server` is the socket loop and process plumbing.

pub mod cli;
pub mod deploy;
pub mod heart;
pub mod hub;
pub mod metrics;
pub mod profile;
pub mod query;
pub mod records;
pub mod registry;
pub mod server;
pub mod settings;
pub mod store;
