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
use crate::records::{Field, Fields, TaskRecord};
use crate::store::query::Query;
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
    /// Where the writer records the commit time of each batch (the hub's metrics).
    pub batch_seconds: Option<prometheus_client::metrics::histogram::Histogram>,
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
            batch_seconds: None,
        }
    }
}

mod rows;
mod writer;

use rows::*;
pub use writer::CommitHold;
use writer::{Op, Shared, Writer};

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

        let reader = open_conn(p, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .with_context(|| format!("opening {} for reading", p.display()))?;
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
