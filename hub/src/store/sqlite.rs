//! The SQLite store (`--sqlitedb`).
//!
//! Layout: one table (default `ippx_tasks`) in `<location>/<filename>` (default
//! `<profile_dir>/tasks.db`, as stock). Timestamps are integer microseconds since the
//! epoch (exact round trips), dict fields are msgpack, buffers are length-prefixed blobs.
//! Its format is ippx's own: stock's pickled `ipython-tasks` table is neither read nor
//! touched.
//!
//! Writes never touch SQLite on the hub's thread. Each change goes, as a whole record,
//! into a bounded queue feeding a writer thread, which applies everything queued in one
//! transaction and commits as soon as the queue is momentarily empty (group commit), or
//! after `batch` changes. The journal is a WAL, so a commit is a `write()` into the WAL
//! file: once committed, a record survives `kill -9` of the hub (and with
//! `synchronous=full` also a power cut). See `docs/store.md` for the promise in numbers.
//!
//! Reads see every earlier write: records changed recently live in an in-memory overlay
//! (dirty until the writer reports them committed, then kept as a small cache), which
//! takes precedence over what the read connection sees in the file.
//!
//! Retention (optional, by config): records whose last change is older than `max_age`,
//! the oldest beyond `max_records`, and the oldest beyond `max_bytes` of buffers are
//! deleted by the writer about once a second, and the freed pages are returned to the
//! file system (`auto_vacuum=incremental`).

use super::{Missing, Store, StoreError, StoreResult, StoreStats};
use crate::query::Query;
use crate::records::{Field, Fields, TaskRecord};
use ippx_protocol::datetime::Timestamp;
use ippx_protocol::{Packer, Value};
use rusqlite::{params_from_iter, Connection, OpenFlags, TransactionBehavior};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::{debug, error, info, warn};

/// `PRAGMA synchronous` for the writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Synchronous {
    /// No fsync at all: survives a process crash, not an OS crash.
    Off,
    /// WAL default: commits survive a process crash (`kill -9`); the last commits may be
    /// lost on power failure.
    Normal,
    /// fsync on every commit: commits survive power failure too.
    Full,
}

impl Synchronous {
    pub fn parse(s: &str) -> Option<Synchronous> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" | "0" => Some(Synchronous::Off),
            "normal" | "1" => Some(Synchronous::Normal),
            "full" | "2" | "extra" | "3" => Some(Synchronous::Full),
            _ => None,
        }
    }

    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Off => "OFF",
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

#[derive(Clone, Debug)]
pub struct SqliteConfig {
    pub path: PathBuf,
    pub table: String,
    /// Delete records whose last change is older than this.
    pub max_age: Option<Duration>,
    /// Keep at most this many records (oldest inserted go first).
    pub max_records: Option<u64>,
    /// Keep at most this many bytes of buffers (oldest inserted go first, down to 90 %).
    pub max_bytes: Option<u64>,
    pub synchronous: Synchronous,
    /// Changes waiting for the writer before the hub blocks (back-pressure).
    pub queue: usize,
    /// Bytes of records waiting for the writer before the hub blocks (back-pressure).
    pub queue_bytes: usize,
    /// How often the WAL is checkpointed into the main file (off the writer's path).
    pub checkpoint_interval: Duration,
    /// Most changes in one transaction.
    pub batch: usize,
    /// Committed records kept in memory for fast updates.
    pub cache_records: usize,
    pub cache_bytes: usize,
    /// How often the writer applies the retention limits.
    pub retention_interval: Duration,
}

impl SqliteConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteConfig {
            path: path.into(),
            table: "ippx_tasks".into(),
            max_age: None,
            max_records: None,
            max_bytes: None,
            synchronous: Synchronous::Normal,
            queue: 512,
            queue_bytes: 4 << 20,
            checkpoint_interval: Duration::from_millis(500),
            batch: 1024,
            cache_records: 4096,
            cache_bytes: 64 << 20,
            retention_interval: Duration::from_secs(1),
        }
    }

    /// `--SQLiteDB.*` settings; the file defaults to `<profile_dir>/tasks.db` as stock.
    pub fn from_hub_config(cfg: &crate::cli::HubConfig, profile_dir: &Path) -> Self {
        let dir = cfg.sqlite_location.clone().unwrap_or_else(|| profile_dir.to_path_buf());
        let mut c = SqliteConfig::new(dir.join(&cfg.sqlite_filename));
        c.table.clone_from(&cfg.sqlite_table);
        c.max_age = (cfg.sqlite_max_age > 0.0).then(|| Duration::from_secs_f64(cfg.sqlite_max_age));
        c.max_records = (cfg.sqlite_max_records > 0).then_some(cfg.sqlite_max_records);
        c.max_bytes = (cfg.sqlite_max_bytes > 0).then_some(cfg.sqlite_max_bytes);
        c.synchronous = cfg.sqlite_synchronous;
        c
    }
}

// ------------------------------------------------------------------ row encoding

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Val,
    Bufs,
    Ts,
}

fn kind(f: Field) -> Kind {
    match f {
        Field::MsgId | Field::ClientUuid | Field::EngineUuid | Field::Resubmitted | Field::Queue | Field::ExecuteInput | Field::Stdout | Field::Stderr => {
            Kind::Text
        }
        Field::Buffers | Field::ResultBuffers => Kind::Bufs,
        Field::Submitted | Field::Started | Field::Completed | Field::Received => Kind::Ts,
        _ => Kind::Val,
    }
}

fn sql_type(k: Kind) -> &'static str {
    match k {
        Kind::Text => "TEXT",
        Kind::Val | Kind::Bufs => "BLOB",
        Kind::Ts => "INTEGER",
    }
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn enc_value(v: &Value) -> Option<Vec<u8>> {
    if v.is_nil() {
        None
    } else {
        Packer::Msgpack.pack(v).ok()
    }
}

fn dec_value(b: Option<Vec<u8>>) -> Value {
    b.and_then(|b| Packer::Msgpack.unpack(&b).ok()).unwrap_or_default()
}

/// `count:u32le` then `len:u64le bytes` per buffer; `NULL` for none.
fn enc_bufs(bufs: &[Vec<u8>]) -> Option<Vec<u8>> {
    if bufs.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(4 + bufs.iter().map(|b| b.len() + 8).sum::<usize>());
    out.extend_from_slice(&(bufs.len() as u32).to_le_bytes());
    for b in bufs {
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
        out.extend_from_slice(b);
    }
    Some(out)
}

fn dec_bufs(b: Option<Vec<u8>>) -> Vec<Vec<u8>> {
    let Some(b) = b else { return Vec::new() };
    let mut out = Vec::new();
    let n = b.get(..4).map_or(0, |x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]) as usize);
    let mut at = 4;
    for _ in 0..n {
        let Some(l) = b.get(at..at + 8) else { break };
        let len = u64::from_le_bytes([l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7]]) as usize;
        at += 8;
        let Some(data) = b.get(at..at + len) else { break };
        out.push(data.to_vec());
        at += len;
    }
    out
}

fn enc_ts(t: &Option<Timestamp>) -> Option<i64> {
    t.map(|t| t.timestamp_micros())
}

fn dec_ts(v: Option<i64>) -> Option<Timestamp> {
    v.and_then(Timestamp::from_timestamp_micros)
}

fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// One SQL parameter of a record column.
fn column_param(r: &TaskRecord, f: Field) -> rusqlite::types::Value {
    use rusqlite::types::Value as S;
    let text = |s: &Option<String>| s.clone().map_or(S::Null, S::Text);
    let blob = |b: Option<Vec<u8>>| b.map_or(S::Null, S::Blob);
    let ts = |t: &Option<Timestamp>| enc_ts(t).map_or(S::Null, S::Integer);
    match f {
        Field::MsgId => S::Text(r.msg_id.clone()),
        Field::Header => blob(enc_value(&r.header)),
        Field::Content => blob(enc_value(&r.content)),
        Field::Metadata => blob(enc_value(&r.metadata)),
        Field::Buffers => blob(enc_bufs(&r.buffers)),
        Field::Submitted => ts(&r.submitted),
        Field::ClientUuid => text(&r.client_uuid),
        Field::EngineUuid => text(&r.engine_uuid),
        Field::Started => ts(&r.started),
        Field::Completed => ts(&r.completed),
        Field::Resubmitted => text(&r.resubmitted),
        Field::Received => ts(&r.received),
        Field::ResultHeader => blob(enc_value(&r.result_header)),
        Field::ResultMetadata => blob(enc_value(&r.result_metadata)),
        Field::ResultContent => blob(enc_value(&r.result_content)),
        Field::ResultBuffers => blob(enc_bufs(&r.result_buffers)),
        Field::Queue => text(&r.queue),
        Field::ExecuteInput => text(&r.execute_input),
        Field::ExecuteResult => blob(enc_value(&r.execute_result)),
        Field::Error => blob(enc_value(&r.error)),
        Field::Stdout => S::Text(r.stdout.clone()),
        Field::Stderr => S::Text(r.stderr.clone()),
        Field::Label => blob(enc_value(&r.label)),
    }
}

/// Reads column `i` of `row` into field `f` of `r`.
fn read_column(row: &rusqlite::Row<'_>, i: usize, f: Field, r: &mut TaskRecord) -> rusqlite::Result<()> {
    match kind(f) {
        Kind::Text => {
            let s: Option<String> = row.get(i)?;
            match f {
                Field::MsgId => r.msg_id = s.unwrap_or_default(),
                Field::ClientUuid => r.client_uuid = s,
                Field::EngineUuid => r.engine_uuid = s,
                Field::Resubmitted => r.resubmitted = s,
                Field::Queue => r.queue = s,
                Field::ExecuteInput => r.execute_input = s,
                Field::Stdout => r.stdout = s.unwrap_or_default(),
                Field::Stderr => r.stderr = s.unwrap_or_default(),
                _ => {}
            }
        }
        Kind::Ts => {
            let t = dec_ts(row.get(i)?);
            match f {
                Field::Submitted => r.submitted = t,
                Field::Started => r.started = t,
                Field::Completed => r.completed = t,
                Field::Received => r.received = t,
                _ => {}
            }
        }
        Kind::Bufs => {
            let b = dec_bufs(row.get(i)?);
            if f == Field::Buffers {
                r.buffers = b;
            } else {
                r.result_buffers = b;
            }
        }
        Kind::Val => {
            let v = dec_value(row.get(i)?);
            match f {
                Field::Header => r.header = v,
                Field::Content => r.content = v,
                Field::Metadata => r.metadata = v,
                Field::ResultHeader => r.result_header = v,
                Field::ResultMetadata => r.result_metadata = v,
                Field::ResultContent => r.result_content = v,
                Field::ExecuteResult => r.execute_result = v,
                Field::Error => r.error = v,
                Field::Label => r.label = v,
                _ => {}
            }
        }
    }
    Ok(())
}

/// `seq, msg_id, <fields...>` for a SELECT, and the fields in column order from index 2.
fn select_list(fields: Fields) -> (String, Vec<Field>) {
    let cols: Vec<Field> = fields.iter().filter(|f| *f != Field::MsgId).collect();
    let mut s = String::from("seq, msg_id");
    for f in &cols {
        s.push_str(", ");
        s.push_str(f.name());
    }
    (s, cols)
}

fn read_row(row: &rusqlite::Row<'_>, cols: &[Field]) -> rusqlite::Result<(i64, TaskRecord)> {
    let seq: i64 = row.get(0)?;
    let mut r = TaskRecord::new(&row.get::<_, String>(1)?);
    for (i, f) in cols.iter().enumerate() {
        read_column(row, i + 2, *f, &mut r)?;
    }
    Ok((seq, r))
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

// ------------------------------------------------------------------ schema

fn expected_columns() -> Vec<(String, String)> {
    let mut v = vec![("seq".to_owned(), "INTEGER".to_owned())];
    v.extend(Field::ALL.iter().map(|f| (f.name().to_owned(), sql_type(kind(*f)).to_owned())));
    v.push(("nbytes".into(), "INTEGER".into()));
    v.push(("touched".into(), "INTEGER".into()));
    v
}

/// Finds (or creates) a table with our layout: `table`, else `table_1`, `table_2`, ...
/// when a table of that name exists with another layout (as stock SQLiteDB does).
fn init_schema(conn: &Connection, table: &str) -> rusqlite::Result<String> {
    let want = expected_columns();
    let mut name = table.to_owned();
    for i in 1.. {
        let mut stmt = conn.prepare(&format!("PRAGMA table_info({})", quote(&name)))?;
        let have: Vec<(String, String)> = stmt.query_map([], |r| Ok((r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?.collect::<Result<_, _>>()?;
        if have.is_empty() {
            break;
        }
        if have.iter().map(|(n, t)| (n.as_str(), t.to_ascii_uppercase())).eq(want.iter().map(|(n, t)| (n.as_str(), t.clone()))) {
            return Ok(name);
        }
        warn!("table {name} exists with another layout; trying {table}_{i}");
        name = format!("{table}_{i}");
    }
    let cols: Vec<String> = Field::ALL
        .iter()
        .map(|f| if *f == Field::MsgId { "msg_id TEXT NOT NULL UNIQUE".to_owned() } else { format!("{} {}", f.name(), sql_type(kind(*f))) })
        .collect();
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {t} (seq INTEGER PRIMARY KEY, {cols}, nbytes INTEGER NOT NULL DEFAULT 0, touched INTEGER NOT NULL DEFAULT 0);
         CREATE INDEX IF NOT EXISTS {ti} ON {t}(touched);",
        t = quote(&name),
        ti = quote(&format!("{name}_touched")),
        cols = cols.join(", ")
    ))?;
    Ok(name)
}

// ------------------------------------------------------------------ writer thread

enum Op {
    Put { wseq: u64, seq: i64, touched: i64, rec: Arc<TaskRecord> },
    Delete { wseq: u64, ids: Vec<String> },
    Sync(mpsc::Sender<()>),
}

#[derive(Default)]
struct Shared {
    /// Highest write sequence number committed to the file.
    committed: AtomicU64,
    culled: AtomicU64,
    errors: AtomicU64,
    /// Test hook: while true, the writer commits nothing.
    paused: std::sync::Mutex<bool>,
    resume: std::sync::Condvar,
}

/// Returned by [`SqliteStore::hold_commits`]; commits resume when it is dropped.
pub struct CommitHold(Arc<Shared>);

impl Drop for CommitHold {
    fn drop(&mut self) {
        *self.0.paused.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.0.resume.notify_all();
    }
}

struct Writer {
    conn: Connection,
    table: String,
    cfg: SqliteConfig,
    shared: Arc<Shared>,
    /// Ids deleted by retention, with the write watermark they were deleted after.
    deleted: mpsc::Sender<(u64, Vec<String>)>,
    put_sql: String,
}

impl Writer {
    fn new(conn: Connection, table: String, cfg: SqliteConfig, shared: Arc<Shared>, deleted: mpsc::Sender<(u64, Vec<String>)>) -> Self {
        let names: Vec<&str> = Field::ALL.iter().map(|f| f.name()).collect();
        let put_sql = format!(
            "INSERT OR REPLACE INTO {} (seq, {}, nbytes, touched) VALUES ({})",
            quote(&table),
            names.join(", "),
            vec!["?"; names.len() + 3].join(", ")
        );
        Writer { conn, table, cfg, shared, deleted, put_sql }
    }

    fn run(mut self, rx: mpsc::Receiver<Op>) {
        let mut last_retention = Instant::now();
        loop {
            let first = match rx.recv_timeout(self.cfg.retention_interval) {
                Ok(op) => Some(op),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut closed = false;
            if let Some(first) = first {
                let mut batch = vec![first];
                while batch.len() < self.cfg.batch && !matches!(batch.last(), Some(Op::Sync(_))) {
                    match rx.try_recv() {
                        Ok(op) => batch.push(op),
                        Err(mpsc::TryRecvError::Empty) => break,
                        Err(mpsc::TryRecvError::Disconnected) => {
                            closed = true;
                            break;
                        }
                    }
                }
                self.commit(batch);
            }
            if last_retention.elapsed() >= self.cfg.retention_interval {
                last_retention = Instant::now();
                self.retention();
            }
            if closed {
                break;
            }
        }
        if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
            debug!("final checkpoint: {e}");
        }
    }

    fn commit(&mut self, batch: Vec<Op>) {
        // A later write of the same record supersedes an earlier one in the batch.
        let mut last_put: HashMap<&str, usize> = HashMap::new();
        for (i, op) in batch.iter().enumerate() {
            if let Op::Put { rec, .. } = op {
                last_put.insert(rec.msg_id.as_str(), i);
            }
        }
        let mut watermark = 0;
        let mut syncs = Vec::new();
        {
            let mut paused = self.shared.paused.lock().unwrap_or_else(|p| p.into_inner());
            while *paused {
                paused = self.shared.resume.wait(paused).unwrap_or_else(|p| p.into_inner());
            }
        }
        let started = Instant::now();
        let result = (|| -> rusqlite::Result<()> {
            let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut put = tx.prepare_cached(&self.put_sql)?;
                let mut del = tx.prepare_cached(&format!("DELETE FROM {} WHERE msg_id = ?", quote(&self.table)))?;
                for (i, op) in batch.iter().enumerate() {
                    match op {
                        Op::Put { wseq, seq, touched, rec } => {
                            watermark = watermark.max(*wseq);
                            if last_put.get(rec.msg_id.as_str()) != Some(&i) {
                                continue;
                            }
                            let mut params: Vec<rusqlite::types::Value> = Vec::with_capacity(26);
                            params.push((*seq).into());
                            params.extend(Field::ALL.iter().map(|f| column_param(rec, *f)));
                            params.push((rec.buffer_bytes() as i64).into());
                            params.push((*touched).into());
                            put.execute(params_from_iter(params))?;
                        }
                        Op::Delete { wseq, ids } => {
                            watermark = watermark.max(*wseq);
                            for id in ids {
                                del.execute([id])?;
                            }
                        }
                        Op::Sync(_) => {}
                    }
                }
            }
            tx.commit()
        })();
        for op in batch {
            if let Op::Sync(s) = op {
                syncs.push(s);
            }
        }
        crate::metrics::sqlite_batch_seconds().observe(started.elapsed().as_secs_f64());
        if let Err(e) = result {
            self.shared.errors.fetch_add(1, Ordering::Relaxed);
            error!("SQLite store: a batch of writes failed and is lost: {e}");
        }
        if watermark > 0 {
            self.shared.committed.fetch_max(watermark, Ordering::Release);
        }
        for s in syncs {
            let _ = s.send(());
        }
    }

    fn retention(&mut self) {
        let cfg = &self.cfg;
        if cfg.max_age.is_none() && cfg.max_records.is_none() && cfg.max_bytes.is_none() {
            return;
        }
        let t = quote(&self.table);
        let watermark = self.shared.committed.load(Ordering::Acquire);
        let result = (|| -> rusqlite::Result<Vec<String>> {
            let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut doomed: Vec<String> = Vec::new();
            let mut seen: HashSet<String> = HashSet::new();
            if let Some(age) = cfg.max_age {
                let cutoff = now_micros() - age.as_micros() as i64;
                let mut s = tx.prepare_cached(&format!("SELECT msg_id FROM {t} WHERE touched < ?"))?;
                for id in s.query_map([cutoff], |r| r.get::<_, String>(0))? {
                    let id = id?;
                    if seen.insert(id.clone()) {
                        doomed.push(id);
                    }
                }
            }
            if let Some(max) = cfg.max_records {
                let count: i64 = tx.query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0))?;
                let excess = count - doomed.len() as i64 - max as i64;
                if excess > 0 {
                    let mut s = tx.prepare_cached(&format!("SELECT msg_id FROM {t} ORDER BY seq"))?;
                    let mut rows = s.query([])?;
                    let mut n = 0;
                    while n < excess {
                        let Some(row) = rows.next()? else { break };
                        let id: String = row.get(0)?;
                        if seen.insert(id.clone()) {
                            doomed.push(id);
                            n += 1;
                        }
                    }
                }
            }
            if let Some(max) = cfg.max_bytes {
                let total: i64 = tx.query_row(&format!("SELECT COALESCE(SUM(nbytes), 0) FROM {t}"), [], |r| r.get(0))?;
                if total > max as i64 {
                    let target = (max as f64 * 0.9) as i64;
                    let mut s = tx.prepare_cached(&format!("SELECT msg_id, nbytes FROM {t} ORDER BY seq"))?;
                    let mut rows = s.query([])?;
                    let mut left = total;
                    while left > target {
                        let Some(row) = rows.next()? else { break };
                        let id: String = row.get(0)?;
                        let n: i64 = row.get(1)?;
                        left -= n;
                        if seen.insert(id.clone()) {
                            doomed.push(id);
                        }
                    }
                }
            }
            if doomed.is_empty() {
                return Ok(doomed);
            }
            {
                let mut del = tx.prepare_cached(&format!("DELETE FROM {t} WHERE msg_id = ?"))?;
                for id in &doomed {
                    del.execute([id])?;
                }
            }
            tx.commit()?;
            Ok(doomed)
        })();
        match result {
            Ok(doomed) if !doomed.is_empty() => {
                info!(records = doomed.len(), "SQLite store: retention limits removed old records");
                self.shared.culled.fetch_add(doomed.len() as u64, Ordering::Relaxed);
                if let Err(e) = self.conn.execute_batch("PRAGMA incremental_vacuum") {
                    debug!("incremental_vacuum: {e}");
                }
                let _ = self.deleted.send((watermark, doomed));
            }
            Ok(_) => {}
            Err(e) => {
                self.shared.errors.fetch_add(1, Ordering::Relaxed);
                error!("SQLite store: retention failed: {e}");
            }
        }
    }
}

// ------------------------------------------------------------------ the store

struct Entry {
    /// `None`: deleted, deletion not yet committed.
    rec: Option<Arc<TaskRecord>>,
    seq: i64,
    /// Write sequence number of the latest change; committed once ≤ `Shared::committed`.
    wseq: u64,
    size: usize,
}

pub struct SqliteStore {
    cfg: SqliteConfig,
    table: String,
    reader: Connection,
    tx: Option<mpsc::SyncSender<Op>>,
    writer: Option<std::thread::JoinHandle<()>>,
    shared: Arc<Shared>,
    deleted: mpsc::Receiver<(u64, Vec<String>)>,
    overlay: HashMap<String, Entry>,
    /// (wseq, msg_id) in write order, for eviction once committed. May hold stale pairs.
    order: VecDeque<(u64, String)>,
    overlay_bytes: usize,
    /// (wseq, bytes) of writes not yet committed, for byte back-pressure.
    inflight: VecDeque<(u64, usize)>,
    inflight_bytes: usize,
    next_wseq: u64,
    next_seq: i64,
    writer_failed: bool,
    checkpointer: Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
}

/// Copies the WAL into the main file every `interval` without blocking the writer
/// (PASSIVE), and forces a WAL restart (briefly holding the writer) if the WAL has grown
/// past 64 MiB because the writer never paused.
fn checkpointer(path: PathBuf, interval: Duration, sync: Synchronous, stop: mpsc::Receiver<()>) {
    let conn = match open_conn(&path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .and_then(|c| c.execute_batch(&format!("PRAGMA synchronous = {}", sync.pragma())).map(|()| c))
    {
        Ok(c) => c,
        Err(e) => {
            error!("SQLite store: no checkpoint connection ({e}); the WAL will grow until shutdown");
            return;
        }
    };
    let mut mode = "PASSIVE";
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(interval) {
        match conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))) {
            Ok((log, done)) => {
                mode = if log > 16384 { "RESTART" } else { "PASSIVE" };
                if log > 0 {
                    debug!(wal_frames = log, checkpointed = done, "WAL checkpoint");
                }
            }
            Err(e) => debug!("WAL checkpoint: {e}"),
        }
    }
}

fn open_conn(path: &Path, flags: OpenFlags) -> rusqlite::Result<Connection> {
    let c = Connection::open_with_flags(path, flags)?;
    c.busy_timeout(Duration::from_secs(10))?;
    Ok(c)
}

impl SqliteStore {
    pub fn open(cfg: SqliteConfig) -> anyhow::Result<SqliteStore> {
        use anyhow::Context as _;
        if let Some(dir) = cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let p = &cfg.path;
        let wconn = open_conn(p, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .with_context(|| format!("opening {}", p.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // Results can be as sensitive as the code that made them.
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600));
        }
        // auto_vacuum only takes effect before the first table exists.
        wconn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL")?;
        let mode: String = wconn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            warn!(path = %p.display(), "SQLite store: journal mode is {mode}, not WAL");
        }
        wconn.execute_batch(&format!("PRAGMA synchronous = {}", cfg.synchronous.pragma()))?;
        // Checkpoints run on their own thread (below), never inside a commit.
        wconn.execute_batch("PRAGMA wal_autocheckpoint = 0")?;
        let table = init_schema(&wconn, &cfg.table).with_context(|| format!("creating the task table in {}", p.display()))?;
        let max_seq: i64 = wconn.query_row(&format!("SELECT COALESCE(MAX(seq), 0) FROM {}", quote(&table)), [], |r| r.get(0))?;
        let count: i64 = wconn.query_row(&format!("SELECT COUNT(*) FROM {}", quote(&table)), [], |r| r.get(0))?;
        info!(path = %p.display(), table = %table, records = count, "SQLite task store opened");

        let reader = open_conn(p, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX).with_context(|| format!("opening {} for reading", p.display()))?;
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::sync_channel(cfg.queue.max(1));
        let (dtx, drx) = mpsc::channel();
        let writer = Writer::new(wconn, table.clone(), cfg.clone(), shared.clone(), dtx);
        let handle = std::thread::Builder::new().name("ippx-sqlite".into()).spawn(move || writer.run(rx))?;
        let (ctx, crx) = mpsc::channel();
        let (cpath, every, sync) = (cfg.path.clone(), cfg.checkpoint_interval, cfg.synchronous);
        let ckpt = std::thread::Builder::new().name("ippx-sqlite-ckpt".into()).spawn(move || checkpointer(cpath, every, sync, crx))?;
        Ok(SqliteStore {
            cfg,
            table,
            reader,
            tx: Some(tx),
            writer: Some(handle),
            shared,
            deleted: drx,
            overlay: HashMap::new(),
            order: VecDeque::new(),
            overlay_bytes: 0,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            next_wseq: 1,
            next_seq: max_seq + 1,
            writer_failed: false,
            checkpointer: Some((ctx, ckpt)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.cfg.path
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Records held in memory (dirty or cached).
    pub fn overlay_len(&self) -> usize {
        self.overlay.len()
    }

    /// Test hook: while the guard lives, the writer commits nothing (writes queue up,
    /// up to `queue` of them; the next write then blocks).
    #[doc(hidden)]
    pub fn hold_commits(&self) -> CommitHold {
        *self.shared.paused.lock().unwrap_or_else(|p| p.into_inner()) = true;
        CommitHold(self.shared.clone())
    }

    /// Forgets committed writes; returns the bytes still waiting for the writer.
    fn reap_inflight(&mut self) -> usize {
        let committed = self.shared.committed.load(Ordering::Acquire);
        while self.inflight.front().is_some_and(|(w, _)| *w <= committed) {
            if let Some((_, n)) = self.inflight.pop_front() {
                self.inflight_bytes -= n;
            }
        }
        self.inflight_bytes
    }

    fn send(&mut self, op: Op) {
        if let Op::Put { wseq, ref rec, .. } = op {
            // Byte back-pressure: big buffers must not pile up ahead of the writer.
            while !self.writer_failed && self.reap_inflight() > self.cfg.queue_bytes {
                std::thread::sleep(Duration::from_micros(200));
            }
            let n = rec.approx_size();
            self.inflight.push_back((wseq, n));
            self.inflight_bytes += n;
        }
        let Some(tx) = &self.tx else { return };
        if tx.send(op).is_err() && !self.writer_failed {
            self.writer_failed = true;
            self.shared.errors.fetch_add(1, Ordering::Relaxed);
            error!("SQLite store: the writer thread is gone; results are kept in memory only from now on");
        }
    }

    fn drop_entry(&mut self, id: &str) {
        if let Some(e) = self.overlay.remove(id) {
            self.overlay_bytes = self.overlay_bytes.saturating_sub(e.size);
        }
    }

    /// Applies retention deletions and evicts committed entries beyond the cache size.
    fn settle(&mut self) {
        while let Ok((w, ids)) = self.deleted.try_recv() {
            for id in ids {
                if self.overlay.get(&id).is_some_and(|e| e.wseq <= w) {
                    self.drop_entry(&id);
                }
            }
        }
        if self.writer_failed {
            return;
        }
        let committed = self.shared.committed.load(Ordering::Acquire);
        while let Some((w, id)) = self.order.front() {
            if *w > committed {
                break;
            }
            match self.overlay.get(id) {
                Some(e) if e.wseq == *w => {
                    let over = self.overlay.len() > self.cfg.cache_records || self.overlay_bytes > self.cfg.cache_bytes;
                    if !(over || e.rec.is_none()) {
                        break;
                    }
                    let id = id.clone();
                    self.drop_entry(&id);
                }
                _ => {}
            }
            self.order.pop_front();
        }
        if self.order.len() > 2 * self.overlay.len() + 1024 {
            let overlay = &self.overlay;
            self.order.retain(|(w, id)| overlay.get(id).is_some_and(|e| e.wseq == *w));
        }
    }

    fn load(&self, id: &str, fields: Fields) -> StoreResult<Option<(i64, TaskRecord)>> {
        let (list, cols) = select_list(fields);
        let mut s = self.reader.prepare_cached(&format!("SELECT {list} FROM {} WHERE msg_id = ?", quote(&self.table))).map_err(backend)?;
        let mut rows = s.query([id]).map_err(backend)?;
        match rows.next().map_err(backend)? {
            Some(row) => Ok(Some(read_row(row, &cols).map_err(backend)?)),
            None => Ok(None),
        }
    }

    fn write(&mut self, id: String, seq: i64, rec: Arc<TaskRecord>) {
        let wseq = self.next_wseq;
        self.next_wseq += 1;
        let size = rec.approx_size();
        self.send(Op::Put { wseq, seq, touched: now_micros(), rec: rec.clone() });
        self.drop_entry(&id);
        self.overlay_bytes += size;
        self.order.push_back((wseq, id.clone()));
        self.overlay.insert(id, Entry { rec: Some(rec), seq, wseq, size });
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        if let Some((stop, h)) = self.checkpointer.take() {
            drop(stop);
            let _ = h.join();
        }
        // Closing the queue makes the writer commit what is left and exit.
        drop(self.tx.take());
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
    }
}

impl Store for SqliteStore {
    fn name(&self) -> &'static str {
        "SQLiteDB"
    }

    fn get(&mut self, msg_id: &str, fields: Fields) -> StoreResult<Option<TaskRecord>> {
        self.settle();
        if let Some(e) = self.overlay.get(msg_id) {
            return Ok(e.rec.as_ref().map(|r| r.project(fields)));
        }
        Ok(self.load(msg_id, fields)?.map(|(_, r)| r))
    }

    fn update(&mut self, msg_id: &str, missing: Missing, f: &mut dyn FnMut(&mut TaskRecord)) -> StoreResult<bool> {
        self.settle();
        let existing = match self.overlay.get_mut(msg_id) {
            Some(e) => e.rec.take().map(|r| (e.seq, r)),
            None => self.load(msg_id, Fields::ALL)?.map(|(s, r)| (s, Arc::new(r))),
        };
        let (seq, mut rec) = match existing {
            Some(x) => x,
            None if missing == Missing::Create => {
                let seq = self.next_seq;
                self.next_seq += 1;
                (seq, Arc::new(TaskRecord::new(msg_id)))
            }
            None => return Ok(false),
        };
        f(Arc::make_mut(&mut rec));
        self.write(msg_id.to_owned(), seq, rec);
        Ok(true)
    }

    fn find(&mut self, q: &Query, fields: Fields) -> StoreResult<Vec<TaskRecord>> {
        self.settle();
        let need = fields.union(q.fields());
        let (list, cols) = select_list(need);
        let t = quote(&self.table);
        let candidates = q.msg_id_candidates();
        let mut out: Vec<(i64, TaskRecord)> = Vec::new();
        {
            let overlay = &self.overlay;
            let mut take = |row: &rusqlite::Row<'_>| -> rusqlite::Result<()> {
                let id: String = row.get(1)?;
                if overlay.contains_key(&id) {
                    return Ok(());
                }
                let (seq, r) = read_row(row, &cols)?;
                if q.matches(&r) {
                    out.push((seq, r));
                }
                Ok(())
            };
            match &candidates {
                Some(ids) => {
                    for chunk in ids.chunks(500) {
                        let marks = vec!["?"; chunk.len()].join(", ");
                        let mut s = self.reader.prepare(&format!("SELECT {list} FROM {t} WHERE msg_id IN ({marks})")).map_err(backend)?;
                        let mut rows = s.query(params_from_iter(chunk.iter())).map_err(backend)?;
                        while let Some(row) = rows.next().map_err(backend)? {
                            take(row).map_err(backend)?;
                        }
                    }
                }
                None => {
                    let mut s = self.reader.prepare_cached(&format!("SELECT {list} FROM {t} ORDER BY seq")).map_err(backend)?;
                    let mut rows = s.query([]).map_err(backend)?;
                    while let Some(row) = rows.next().map_err(backend)? {
                        take(row).map_err(backend)?;
                    }
                }
            }
        }
        let wanted: Option<HashSet<&str>> = candidates.as_ref().map(|ids| ids.iter().map(String::as_str).collect());
        for (id, e) in &self.overlay {
            let Some(r) = &e.rec else { continue };
            if wanted.as_ref().is_some_and(|w| !w.contains(id.as_str())) || !q.matches(r) {
                continue;
            }
            out.push((e.seq, r.project(fields)));
        }
        out.sort_by_key(|(seq, _)| *seq);
        out.dedup_by_key(|(seq, _)| *seq);
        Ok(out.into_iter().map(|(_, r)| r).collect())
    }

    fn history(&mut self) -> StoreResult<Vec<String>> {
        self.settle();
        let mut v: Vec<(i64, i64, String)> = Vec::new();
        {
            let mut s = self
                .reader
                .prepare_cached(&format!("SELECT submitted, seq, msg_id FROM {} WHERE submitted IS NOT NULL", quote(&self.table)))
                .map_err(backend)?;
            let mut rows = s.query([]).map_err(backend)?;
            while let Some(row) = rows.next().map_err(backend)? {
                let id: String = row.get(2).map_err(backend)?;
                if !self.overlay.contains_key(&id) {
                    v.push((row.get(0).map_err(backend)?, row.get(1).map_err(backend)?, id));
                }
            }
        }
        for (id, e) in &self.overlay {
            if let Some(sub) = e.rec.as_ref().and_then(|r| r.submitted) {
                v.push((sub.timestamp_micros(), e.seq, id.clone()));
            }
        }
        v.sort();
        Ok(v.into_iter().map(|(_, _, id)| id).collect())
    }

    fn remove(&mut self, q: &Query) -> StoreResult<usize> {
        let ids: Vec<String> = self.find(q, q.fields())?.into_iter().map(|r| r.msg_id).collect();
        if ids.is_empty() {
            return Ok(0);
        }
        let wseq = self.next_wseq;
        self.next_wseq += 1;
        let n = ids.len();
        for id in &ids {
            let seq = self.overlay.get(id).map_or(0, |e| e.seq);
            self.drop_entry(id);
            self.order.push_back((wseq, id.clone()));
            self.overlay.insert(id.clone(), Entry { rec: None, seq, wseq, size: 0 });
        }
        self.send(Op::Delete { wseq, ids });
        Ok(n)
    }

    fn maintain(&mut self, _now: Instant) {
        self.settle();
    }

    fn flush(&mut self) -> StoreResult<()> {
        let (tx, rx) = mpsc::channel();
        self.send(Op::Sync(tx));
        rx.recv_timeout(Duration::from_secs(60)).map_err(|_| StoreError::Backend("the SQLite writer did not answer".into()))?;
        self.settle();
        Ok(())
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            culled: self.shared.culled.load(Ordering::Relaxed),
            writes: self.next_wseq - 1,
            durable: self.shared.committed.load(Ordering::Acquire),
            errors: self.shared.errors.load(Ordering::Relaxed),
            records: None,
            bytes: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_and_timestamps_encode_exactly() {
        let bufs = vec![vec![], b"abc".to_vec(), vec![0u8; 1000]];
        assert_eq!(dec_bufs(enc_bufs(&bufs)), bufs);
        assert_eq!(dec_bufs(enc_bufs(&[])), Vec::<Vec<u8>>::new());
        let t = ippx_protocol::datetime::parse_iso("2026-01-02T03:04:05.000006Z");
        assert_eq!(dec_ts(enc_ts(&t)), t);
        let v = ippx_protocol::vmap! {"a" => Value::Bin(vec![1]), "f" => 0.1f64, "n" => Value::Nil, "u" => Value::UInt(u64::MAX)};
        assert_eq!(dec_value(enc_value(&v)), v);
        assert_eq!(dec_value(enc_value(&Value::Nil)), Value::Nil);
    }
}
