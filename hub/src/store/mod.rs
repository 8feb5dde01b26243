//! The result store behind the hub (docs/protocol.md §6): a trait and its backends.
//!
//! * [`memory::MemStore`] — `--dictdb`, the default: everything in memory, with DictDB's
//!   culling so memory stays bounded.
//! * [`sqlite::SqliteStore`] — `--sqlitedb`: a SQLite file written by a background thread
//!   in batched transactions; reads see writes not yet committed.
//! * [`NoDb`] — `--nodb`: keeps nothing; every read fails as stock `NoDB` does.
//!
//! The hub stays a sans-IO state machine: it only calls this trait. The SQLite backend
//! owns a writer thread and a read connection, both invisible to the hub.

pub mod memory;
pub mod query;
pub mod sqlite;

use crate::records::{Fields, TaskRecord};
use crate::store::query::Query;
use std::time::Instant;

/// Why a store operation failed. Becomes the error content of the reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// `--nodb`: reads are refused.
    NoData,
    /// A query the store cannot evaluate.
    Query { ename: &'static str, evalue: String },
    /// The backend failed (SQLite I/O, corruption, ...).
    Backend(String),
}

impl StoreError {
    pub fn ename(&self) -> &'static str {
        match self {
            StoreError::NoData => "KeyError",
            StoreError::Query { ename, .. } => ename,
            StoreError::Backend(_) => "OperationalError",
        }
    }

    pub fn evalue(&self) -> String {
        match self {
            StoreError::NoData => {
                "NoDB backend doesn't store any data. Start the Controller with a DB backend to enable resubmission / result persistence.".to_owned()
            }
            StoreError::Query { evalue, .. } => evalue.clone(),
            StoreError::Backend(e) => e.clone(),
        }
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.ename(), self.evalue())
    }
}

impl From<crate::store::query::QueryError> for StoreError {
    fn from(e: crate::store::query::QueryError) -> Self {
        StoreError::Query { ename: e.ename, evalue: e.evalue }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// How a write treats a record that does not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missing {
    /// Create an empty record and apply the change (request copies, IOPub, resubmit).
    Create,
    /// Leave it missing (replies and assignments for records culled or purged).
    Skip,
}

/// Counters for logs and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Records removed by the store's own limits (culling, retention).
    pub culled: u64,
    /// Writes handed to the backend.
    pub writes: u64,
    /// Writes the backend has made durable (equals `writes` for memory).
    pub durable: u64,
    /// Backend failures logged.
    pub errors: u64,
    /// Records held and bytes of buffers in them, where the backend knows them cheaply
    /// (the memory store; SQLite would need a query per scrape).
    pub records: Option<u64>,
    pub bytes: Option<u64>,
}

/// A TaskRecord store. All reads see all earlier writes (read-your-writes), whatever
/// the backend does in the background.
pub trait Store: Send {
    /// `"DictDB"`, `"SQLiteDB"` or `"NoDB"`, for logs.
    fn name(&self) -> &'static str;

    /// False for a store that discards everything (the hub then skips building records).
    fn keeps_records(&self) -> bool {
        true
    }

    /// One record, with at least `fields` filled in.
    fn get(&mut self, msg_id: &str, fields: Fields) -> StoreResult<Option<TaskRecord>>;

    /// Applies `f` to the record `msg_id`. Returns whether a record was changed.
    fn update(&mut self, msg_id: &str, missing: Missing, f: &mut dyn FnMut(&mut TaskRecord)) -> StoreResult<bool>;

    /// Records matching `q`, in insertion order, with at least `fields` filled in.
    fn find(&mut self, q: &Query, fields: Fields) -> StoreResult<Vec<TaskRecord>>;

    /// Ids of records with a submission time, oldest first; ties keep insertion order.
    fn history(&mut self) -> StoreResult<Vec<String>>;

    /// Deletes the records matching `q`; returns how many.
    fn remove(&mut self, q: &Query) -> StoreResult<usize>;

    /// Whether `msg_id` was dropped by the store's own limits (for error messages).
    fn was_culled(&self, _msg_id: &str) -> bool {
        false
    }

    /// Periodic housekeeping; the hub calls it from `tick`.
    fn maintain(&mut self, _now: Instant) {}

    /// Blocks until every earlier write is durable (no-op in memory).
    fn flush(&mut self) -> StoreResult<()> {
        Ok(())
    }

    fn stats(&self) -> StoreStats;
}

/// `--nodb`: stores nothing. Writes succeed and vanish; reads fail with stock's NoData.
#[derive(Debug, Default)]
pub struct NoDb;

impl Store for NoDb {
    fn name(&self) -> &'static str {
        "NoDB"
    }
    fn keeps_records(&self) -> bool {
        false
    }
    fn get(&mut self, _: &str, _: Fields) -> StoreResult<Option<TaskRecord>> {
        Err(StoreError::NoData)
    }
    fn update(&mut self, _: &str, _: Missing, _: &mut dyn FnMut(&mut TaskRecord)) -> StoreResult<bool> {
        Ok(false)
    }
    fn find(&mut self, _: &Query, _: Fields) -> StoreResult<Vec<TaskRecord>> {
        Err(StoreError::NoData)
    }
    fn history(&mut self) -> StoreResult<Vec<String>> {
        Err(StoreError::NoData)
    }
    fn remove(&mut self, _: &Query) -> StoreResult<usize> {
        Ok(0)
    }
    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }
}

/// Which store to open, with its settings: built on the configuration side
/// (`HubConfig::store_config`), so the store knows nothing of command lines.
#[derive(Clone, Debug)]
pub enum StoreConfig {
    /// `--dictdb` (default).
    Memory(crate::records::Limits),
    /// `--sqlitedb`.
    Sqlite(sqlite::SqliteConfig),
    /// `--nodb`.
    None,
}

/// Opens the store `cfg` describes.
pub fn open(cfg: StoreConfig) -> anyhow::Result<Box<dyn Store>> {
    Ok(match cfg {
        StoreConfig::Memory(limits) => Box::new(memory::MemStore::new(limits)),
        StoreConfig::None => Box::new(NoDb),
        StoreConfig::Sqlite(sc) => {
            tracing::info!(path = %sc.path.display(), table = %sc.table, "SQLite task store");
            Box::new(sqlite::SqliteStore::open(sc)?)
        }
    })
}
