//! The SQLite store: exact round trips through the file, read-your-writes while commits
//! are pending, retention, layout coexistence, and durability across `kill -9`.

use ippx_hub::records::{Field, Fields, TaskRecord};
use ippx_hub::store::query::{Op, Query, Q};
use ippx_hub::store::sqlite::{SqliteConfig, SqliteStore};
use ippx_hub::store::{Missing, Store};
use ippx_protocol::datetime::{parse_iso, Timestamp};
use ippx_protocol::{vmap, Value};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn put(db: &mut dyn Store, rec: &TaskRecord) {
    let id = rec.msg_id.clone();
    let rec = rec.clone();
    db.update(&id, Missing::Create, &mut |r| *r = rec.clone()).expect("update");
}

fn rows_in_file(path: &Path, table: &str) -> i64 {
    let c = rusqlite::Connection::open(path).expect("open");
    c.query_row(&format!("SELECT COUNT(*) FROM \"{table}\""), [], |r| r.get(0)).expect("count")
}

fn full_record(id: &str, i: i64) -> TaskRecord {
    let mut r = TaskRecord::new(id);
    r.header = vmap! {"msg_id" => id, "msg_type" => "apply_request", "username" => "ü", "session" => "s", "date" => "2026-11-25T07:32:52.918045Z", "version" => "5.4"};
    r.metadata = vmap! {"after" => Value::Array(vec![]), "timeout" => 0.0f64, "retries" => i, "label" => Value::Nil, "big" => Value::UInt(u64::MAX)};
    r.content = Value::map();
    r.buffers = vec![vec![0x80, 0x04, 0x95], vec![], vec![7u8; 5000]];
    r.submitted = parse_iso("2026-11-25T07:32:52.918045Z");
    r.client_uuid = Some("client".into());
    r.engine_uuid = Some("engine".into());
    r.queue = Some("task".into());
    r.label = Value::from("lbl");
    r.started = parse_iso("2026-11-25T07:32:52.922177+00:00");
    r.completed = parse_iso("2026-11-25T07:32:52.925045Z");
    r.received = parse_iso("2026-11-25T07:32:52.000001Z");
    r.result_header = vmap! {"msg_id" => "reply", "date" => "2026-11-25T07:32:52.925045Z"};
    r.result_metadata = vmap! {"status" => "ok", "engine_info" => vmap! {"engine_id" => 0i64}, "dependencies_met" => true};
    r.result_content = vmap! {"status" => "ok", "data" => Value::Bin(vec![0, 1, 2])};
    r.result_buffers = vec![vec![0x80, 0x04, 0x4b, 0x03, 0x2e]];
    r.execute_input = Some("1+1".into());
    r.execute_result = vmap! {"data" => vmap! {"text/plain" => "2"}, "execution_count" => 1i64};
    r.error = Value::Nil;
    r.stdout = format!("out {i} ✓\n");
    r.stderr = String::new();
    r
}

#[test]
fn every_field_round_trips_exactly_through_the_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("tasks.db");
    let a = full_record("a", 1);
    let mut orphan = TaskRecord::new("orphan");
    orphan.stdout = "only output".into();
    // {} and null stay distinct; a non-string label survives.
    let mut b = TaskRecord::new("b");
    b.metadata = Value::map();
    b.label = Value::Int(3);
    b.submitted = parse_iso("2026-11-25T07:32:53Z");
    {
        let mut db = SqliteStore::open(SqliteConfig::new(&path)).expect("open");
        for r in [&a, &orphan, &b] {
            put(&mut db, r);
        }
    } // clean close: the writer commits and exits
    let mut db = SqliteStore::open(SqliteConfig::new(&path)).expect("reopen");
    assert_eq!(db.get("a", Fields::ALL).ok().flatten().as_ref(), Some(&a));
    assert_eq!(db.get("orphan", Fields::ALL).ok().flatten().as_ref(), Some(&orphan));
    let b2 = db.get("b", Fields::ALL).ok().flatten().expect("b");
    assert_eq!(b2, b);
    assert_eq!(b2.header, Value::Nil);
    assert_eq!(b2.metadata, Value::map());
    // Insertion order and history survive.
    let all: Vec<String> = db.find(&Query::default(), Fields::NONE).expect("find").into_iter().map(|r| r.msg_id).collect();
    assert_eq!(all, ["a", "orphan", "b"]);
    assert_eq!(db.history().ok(), Some(vec!["a".to_owned(), "b".to_owned()]));
    // Equality on a timestamp read back from the file (test_db_query_dt).
    let tic: Timestamp = db.get("a", Fields::of(&[Field::Submitted])).ok().flatten().and_then(|r| r.submitted).expect("ts");
    let same = db.find(&Query::default().with(Field::Submitted, Op::Eq, Q::Ts(tic)), Fields::NONE).expect("find");
    assert_eq!(same.len(), 1);
    // Projections leave the rest empty.
    let p = db.get("a", Fields::of(&[Field::Stdout])).ok().flatten().expect("a");
    assert_eq!(p.stdout, a.stdout);
    assert!(p.buffers.is_empty() && p.header.is_nil());
    // New records continue the insertion order after a restart.
    put(&mut db, &full_record("c", 2));
    let all: Vec<String> = db.find(&Query::default(), Fields::NONE).expect("find").into_iter().map(|r| r.msg_id).collect();
    assert_eq!(all, ["a", "orphan", "b", "c"]);
}

#[test]
fn reads_see_writes_the_writer_has_not_committed() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("tasks.db");
    let mut db = SqliteStore::open(SqliteConfig::new(&path)).expect("open");
    put(&mut db, &full_record("old", 0));
    db.flush().expect("flush");
    let table = db.table().to_owned();
    assert_eq!(rows_in_file(&path, &table), 1);
    {
        let hold = db.hold_commits();
        // Writes queue up behind the held commit: nothing new reaches the file...
        put(&mut db, &full_record("new", 1));
        db.update("new", Missing::Skip, &mut |r| r.stdout.push_str("more")).expect("update");
        db.update("old", Missing::Skip, &mut |r| r.label = Value::from("relabelled")).expect("update");
        assert_eq!(db.remove(&Query::ids(&["old"])).ok(), Some(1));
        put(&mut db, &full_record("old", 7));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(rows_in_file(&path, &table), 1, "nothing committed while held");
        // ...yet every read sees them.
        let new = db.get("new", Fields::ALL).ok().flatten().expect("new");
        assert!(new.stdout.ends_with("more"));
        let old = db.get("old", Fields::ALL).ok().flatten().expect("old");
        assert_eq!(old.stdout, full_record("old", 7).stdout, "deleted then recreated");
        let found: Vec<String> = db.find(&Query::default(), Fields::NONE).expect("find").into_iter().map(|r| r.msg_id).collect();
        assert_eq!(found, ["new", "old"], "the recreated record is newer");
        assert_eq!(db.history().expect("history").len(), 2);
        assert!(db.stats().durable < db.stats().writes);
        drop(hold);
    }
    db.flush().expect("flush");
    assert_eq!(db.stats().durable, db.stats().writes);
    assert_eq!(rows_in_file(&path, &table), 2);
    drop(db);
    let mut db = SqliteStore::open(SqliteConfig::new(&path)).expect("reopen");
    assert!(db.get("new", Fields::ALL).ok().flatten().is_some_and(|r| r.stdout.ends_with("more")));
    assert!(db.get("old", Fields::ALL).ok().flatten().is_some_and(|r| r.label == Value::from("lbl")));
}

fn wait_until(mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(10), "condition not reached");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn retention_cfg(path: &Path) -> SqliteConfig {
    let mut c = SqliteConfig::new(path);
    c.retention_interval = Duration::from_millis(20);
    c.max_bytes = None;
    c
}

#[test]
fn retention_by_record_count_keeps_the_newest() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("tasks.db");
    let mut cfg = retention_cfg(&path);
    cfg.max_records = Some(50);
    cfg.cache_records = 10;
    let mut db = SqliteStore::open(cfg).expect("open");
    for i in 0..200 {
        put(&mut db, &full_record(&format!("m{i:03}"), i));
    }
    db.flush().expect("flush");
    let table = db.table().to_owned();
    wait_until(|| rows_in_file(&path, &table) <= 50);
    wait_until(|| {
        db.maintain(Instant::now());
        db.find(&Query::default(), Fields::NONE).map(|r| r.len()).unwrap_or(0) <= 50
    });
    let ids: Vec<String> = db.find(&Query::default(), Fields::NONE).expect("find").into_iter().map(|r| r.msg_id).collect();
    assert_eq!(ids.last().map(String::as_str), Some("m199"));
    assert!(!ids.contains(&"m000".to_owned()));
    // The retention thread counts what it culled just after its transaction commits,
    // so the rows can be gone a moment before the count says so.
    wait_until(|| db.stats().culled >= 150);
}

#[test]
fn retention_by_age_and_by_bytes() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("tasks.db");
    let mut cfg = retention_cfg(&path);
    cfg.max_age = Some(Duration::from_millis(300));
    let mut db = SqliteStore::open(cfg).expect("open");
    for i in 0..10 {
        put(&mut db, &full_record(&format!("old{i}"), i));
    }
    std::thread::sleep(Duration::from_millis(400));
    put(&mut db, &full_record("young", 0));
    db.flush().expect("flush");
    wait_until(|| {
        db.maintain(Instant::now());
        db.find(&Query::default(), Fields::NONE).map(|r| r.len()).unwrap_or(99) == 1
    });
    assert!(db.get("young", Fields::NONE).ok().flatten().is_some());
    drop(db);

    let path = dir.path().join("bytes.db");
    let mut cfg = retention_cfg(&path);
    cfg.max_bytes = Some(100_000);
    let mut db = SqliteStore::open(cfg).expect("open");
    for i in 0..500 {
        let mut r = TaskRecord::new(&format!("b{i:03}"));
        r.submitted = parse_iso("2026-01-01T00:00:00Z");
        r.buffers = vec![vec![1u8; 1000]];
        put(&mut db, &r);
    }
    db.flush().expect("flush");
    let total = |db: &mut SqliteStore| -> usize {
        db.find(&Query::default(), Fields::of(&[Field::Buffers])).map(|r| r.iter().map(|r| r.buffer_bytes()).sum()).unwrap_or(0)
    };
    wait_until(|| {
        db.maintain(Instant::now());
        total(&mut db) <= 100_000
    });
    assert!(total(&mut db) >= 80_000, "trimmed to about 90 %, not emptied");
    assert!(db.get("b499", Fields::NONE).ok().flatten().is_some());
}

#[test]
fn the_file_stops_growing_under_a_byte_limit() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("tasks.db");
    let mut cfg = retention_cfg(&path);
    cfg.max_bytes = Some(1 << 20);
    let mut db = SqliteStore::open(cfg).expect("open");
    for round in 0..10 {
        for i in 0..200 {
            let mut r = TaskRecord::new(&format!("r{round}-{i}"));
            r.submitted = parse_iso("2026-01-01T00:00:00Z");
            r.result_buffers = vec![vec![round as u8; 10_000]];
            put(&mut db, &r);
        }
        db.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(60));
    }
    db.flush().expect("flush");
    std::thread::sleep(Duration::from_millis(100));
    drop(db); // checkpoints the WAL into the file
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(u64::MAX);
    // 20 MB written; the file holds about 1 MB of buffers plus slack for the last round.
    assert!(size < 6 << 20, "file is {size} bytes");
}

#[test]
fn another_layout_under_our_table_name_is_left_alone() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("tasks.db");
    {
        let c = rusqlite::Connection::open(&path).expect("open");
        c.execute_batch(
            "CREATE TABLE ippx_tasks (msg_id text PRIMARY KEY, header dict text); INSERT INTO ippx_tasks VALUES ('x', '{}');
             CREATE TABLE \"ipython-tasks\" (msg_id text PRIMARY KEY); INSERT INTO \"ipython-tasks\" VALUES ('stock');",
        )
        .expect("setup");
    }
    let mut db = SqliteStore::open(SqliteConfig::new(&path)).expect("open");
    assert_eq!(db.table(), "ippx_tasks_1");
    put(&mut db, &full_record("a", 0));
    drop(db);
    assert_eq!(rows_in_file(&path, "ippx_tasks"), 1);
    assert_eq!(rows_in_file(&path, "ipython-tasks"), 1);
    let db = SqliteStore::open(SqliteConfig::new(&path)).expect("reopen");
    assert_eq!(db.table(), "ippx_tasks_1", "found again on restart");
}

// ------------------------------------------------------------------ kill -9

const CRASH_ENV: &str = "IPPX_SQLITE_CRASH_DB";

fn crash_record(i: u64) -> TaskRecord {
    let mut r = full_record(&format!("task-{i:06}"), i as i64);
    r.buffers = vec![i.to_le_bytes().repeat(64)];
    r.completed = None;
    r.result_buffers.clear();
    r
}

/// The child side of `acknowledged_records_survive_kill_9`: writes records as the hub
/// does (request, then reply) and prints `ACK <id>` once a record's last write is
/// durable. Runs until killed.
#[test]
#[ignore = "child process of acknowledged_records_survive_kill_9"]
fn crash_child_writer() {
    let Some(path) = std::env::var_os(CRASH_ENV) else { return };
    let mut db = SqliteStore::open(SqliteConfig::new(path)).expect("open");
    let mut out = std::io::stdout().lock();
    let mut waiting: VecDeque<(u64, String)> = VecDeque::new();
    for i in 0..2_000_000u64 {
        let r = crash_record(i);
        let id = r.msg_id.clone();
        put(&mut db, &r);
        db.update(&id, Missing::Skip, &mut |r| {
            r.completed = parse_iso("2026-11-25T07:32:52.925045Z");
            r.result_buffers = vec![i.to_be_bytes().to_vec()];
        })
        .expect("reply");
        waiting.push_back((db.stats().writes, id));
        let durable = db.stats().durable;
        while waiting.front().is_some_and(|(w, _)| *w <= durable) {
            if let Some((_, id)) = waiting.pop_front() {
                let _ = writeln!(out, "ACK {id}");
            }
        }
        let _ = out.flush();
    }
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn acknowledged_records_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("tasks.db");
    let exe = std::env::current_exe().expect("test binary");
    let child = Command::new(exe)
        .args(["crash_child_writer", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CRASH_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().expect("stdout");
    let mut acked = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if let Some(id) = line.strip_prefix("ACK ") {
            acked.push(id.to_owned());
            if acked.len() >= 3000 {
                break;
            }
        }
    }
    // SIGKILL while the child is still writing: no destructor, no final commit.
    child.0.kill().expect("kill -9");
    let status = child.0.wait().expect("wait");
    assert!(!status.success());
    assert!(acked.len() >= 3000, "child acknowledged only {} records", acked.len());

    let mut db = SqliteStore::open(SqliteConfig::new(&path)).expect("reopen after the crash");
    let found = db.find(&Query::ids(&acked), Fields::ALL).expect("find");
    assert_eq!(found.len(), acked.len(), "every acknowledged record is in the file");
    for r in &found {
        let i: u64 = r.msg_id.trim_start_matches("task-").parse().expect("index");
        let mut want = crash_record(i);
        want.completed = parse_iso("2026-11-25T07:32:52.925045Z");
        want.result_buffers = vec![i.to_be_bytes().to_vec()];
        assert_eq!(r, &want, "{} intact, with its reply", r.msg_id);
    }
    // The file is consistent and writable after the crash.
    put(&mut db, &full_record("after-crash", 0));
    db.flush().expect("flush");
}

/// Prints how long writes wait to be durable (the numbers behind docs/store.md).
/// `cargo test --release -p ippx-hub --test sqlite_store commit_latency -- --ignored --nocapture`
#[test]
#[ignore = "benchmark"]
fn commit_latency_report() {
    fn pct(v: &mut [Duration], p: f64) -> Duration {
        v.sort();
        v[((v.len() - 1) as f64 * p) as usize]
    }
    let dir = tempfile::tempdir().expect("tmp");
    for (name, sync) in [("normal", ippx_hub::store::sqlite::Synchronous::Normal), ("full", ippx_hub::store::sqlite::Synchronous::Full)] {
        let mut cfg = SqliteConfig::new(dir.path().join(format!("{name}.db")));
        cfg.synchronous = sync;
        let mut db = SqliteStore::open(cfg).expect("open");
        // Idle hub: one task at a time.
        let mut lat = Vec::new();
        for i in 0..500u64 {
            let t0 = Instant::now();
            put(&mut db, &crash_record(i));
            let w = db.stats().writes;
            while db.stats().durable < w {
                std::hint::spin_loop();
            }
            lat.push(t0.elapsed());
        }
        println!("{name} idle: p50 {:?} p99 {:?} max {:?}", pct(&mut lat, 0.5), pct(&mut lat, 0.99), pct(&mut lat, 1.0));
        // Saturated: writes as fast as the hub can hand them over (request + reply per task).
        let mut waiting: VecDeque<(u64, Instant)> = VecDeque::new();
        let mut lat = Vec::new();
        let t0 = Instant::now();
        let n = 20_000u64;
        for i in 0..n {
            let r = crash_record(1000 + i);
            let id = r.msg_id.clone();
            put(&mut db, &r);
            let t = Instant::now();
            db.update(&id, Missing::Skip, &mut |r| r.result_buffers = vec![vec![1; 100]]).expect("reply");
            waiting.push_back((db.stats().writes, t));
            let d = db.stats().durable;
            while waiting.front().is_some_and(|(w, _)| *w <= d) {
                if let Some((_, t)) = waiting.pop_front() {
                    lat.push(t.elapsed());
                }
            }
        }
        db.flush().expect("flush");
        for (_, t) in waiting.drain(..) {
            lat.push(t.elapsed());
        }
        let el = t0.elapsed();
        println!(
            "{name} saturated: {:.0} tasks/s, p50 {:?} p99 {:?} max {:?}",
            n as f64 / el.as_secs_f64(),
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99),
            pct(&mut lat, 1.0)
        );
    }
}
