//! The writer thread: batches of puts and deletes in one transaction each, retention,
//! and the watermark that tells readers what is durable.

use super::rows::*;
use super::*;

pub(super) enum Op {
    Put { wseq: u64, seq: i64, touched: i64, rec: Arc<TaskRecord> },
    Delete { wseq: u64, ids: Vec<String> },
    Sync(mpsc::Sender<()>),
}

#[derive(Default)]
pub(super) struct Shared {
    /// Highest write sequence number committed to the file.
    pub(super) committed: AtomicU64,
    pub(super) culled: AtomicU64,
    pub(super) errors: AtomicU64,
    /// Test hook: while true, the writer commits nothing.
    pub(super) paused: std::sync::Mutex<bool>,
    pub(super) resume: std::sync::Condvar,
}

/// Returned by [`SqliteStore::hold_commits`]; commits resume when it is dropped.
pub struct CommitHold(pub(super) Arc<Shared>);

impl Drop for CommitHold {
    fn drop(&mut self) {
        *self.0.paused.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.0.resume.notify_all();
    }
}

pub(super) struct Writer {
    conn: Connection,
    table: String,
    cfg: SqliteConfig,
    shared: Arc<Shared>,
    /// Ids deleted by retention, with the write watermark they were deleted after.
    deleted: mpsc::Sender<(u64, Vec<String>)>,
    put_sql: String,
}

impl Writer {
    pub(super) fn new(conn: Connection, table: String, cfg: SqliteConfig, shared: Arc<Shared>, deleted: mpsc::Sender<(u64, Vec<String>)>) -> Self {
        let names: Vec<&str> = Field::ALL.iter().map(|f| f.name()).collect();
        let put_sql = format!(
            "INSERT OR REPLACE INTO {} (seq, {}, nbytes, touched) VALUES ({})",
            quote(&table),
            names.join(", "),
            vec!["?"; names.len() + 3].join(", ")
        );
        Writer { conn, table, cfg, shared, deleted, put_sql }
    }

    pub(super) fn run(mut self, rx: mpsc::Receiver<Op>) {
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
        if let Some(h) = &self.cfg.batch_seconds {
            h.observe(started.elapsed().as_secs_f64());
        }
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
