//! ipyparallel's `test_db.py` (the DictDB/SQLiteDB unit tests), ported to the `Store`
//! trait and run against both backends; plus DictDB's culling tests for the memory store.

use ippx_hub::records::{Field, Fields, Limits, TaskRecord};
use ippx_hub::store::memory::MemStore;
use ippx_hub::store::query::{Op, Query, Q};
use ippx_hub::store::sqlite::{SqliteConfig, SqliteStore};
use ippx_hub::store::{Missing, Store};
use ippx_protocol::datetime::{format_iso, now, Timestamp};
use ippx_protocol::{vmap, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Python's `init_record(session.msg('apply_request', content=dict(a=5)))` with one buffer.
fn new_record(buffer_size: usize) -> TaskRecord {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let id = format!("3f2a-{:08}_{}_{n}", std::process::id(), n);
    let date = now();
    let mut r = TaskRecord::new(&id);
    r.header = vmap! {"msg_id" => id.as_str(), "msg_type" => "apply_request", "username" => "u", "session" => "3f2a", "date" => format_iso(&date), "version" => "5.4"};
    r.content = vmap! {"a" => 5i64};
    r.metadata = Value::map();
    r.buffers = vec![(0..buffer_size).map(|i| (i * 7 + n as usize) as u8).collect()];
    r.submitted = Some(date);
    r
}

fn add(db: &mut dyn Store, rec: TaskRecord) {
    let id = rec.msg_id.clone();
    let mut rec = Some(rec);
    assert_eq!(db.update(&id, Missing::Create, &mut |r| *r = rec.take().expect("once")).ok(), Some(true));
}

fn load_records(db: &mut dyn Store, n: usize, buffer_size: usize) -> Vec<String> {
    std::thread::sleep(Duration::from_millis(2));
    (0..n)
        .map(|_| {
            let r = new_record(buffer_size);
            let id = r.msg_id.clone();
            add(db, r);
            id
        })
        .collect()
}

fn get(db: &mut dyn Store, id: &str) -> Option<TaskRecord> {
    db.get(id, Fields::ALL).expect("get")
}

fn find(db: &mut dyn Store, q: Query) -> Vec<TaskRecord> {
    db.find(&q, Fields::ALL).expect("find")
}

fn ne_empty() -> Query {
    Query::default().with(Field::MsgId, Op::Ne, Q::Str(String::new()))
}

fn ts(t: Timestamp) -> Q {
    Q::Ts(t)
}

/// Every check of TaskDBTest, in order, on a store preloaded with 16 records.
fn conformance(db: &mut dyn Store) {
    load_records(db, 16, 100);

    // test_add_record
    let before = db.history().expect("history");
    load_records(db, 5, 100);
    let after = db.history().expect("history");
    assert_eq!(after.len(), before.len() + 5);
    assert_eq!(after[..after.len() - 5], before[..]);

    // test_drop_record
    let id = load_records(db, 1, 100).remove(0);
    assert!(get(db, &id).is_some());
    assert_eq!(db.remove(&Query::ids(&[&id])).ok(), Some(1));
    assert!(get(db, &id).is_none());

    // test_update_record
    let id = db.history().expect("history").last().cloned().expect("one");
    let mut rec1 = get(db, &id).expect("record");
    let t = now();
    db.update(&id, Missing::Skip, &mut |r| {
        r.stdout = "hello there".into();
        r.completed = Some(t);
    })
    .expect("update");
    let rec2 = get(db, &id).expect("record");
    assert_eq!(rec2.stdout, "hello there");
    assert_eq!(rec2.completed, Some(t), "microsecond round trip");
    rec1.stdout = "hello there".into();
    rec1.completed = Some(t);
    assert_eq!(rec1, rec2);

    // test_find_records_dt
    let hist = db.history().expect("history");
    let tic = get(db, &hist[hist.len() / 2]).and_then(|r| r.submitted).expect("submitted");
    let before = find(db, Query::default().with(Field::Submitted, Op::Lt, ts(tic)));
    let after = find(db, Query::default().with(Field::Submitted, Op::Gte, ts(tic)));
    assert_eq!(before.len() + after.len(), hist.len());
    assert!(before.iter().all(|b| b.submitted.is_some_and(|s| s < tic)));
    assert!(after.iter().all(|a| a.submitted.is_some_and(|s| s >= tic)));
    let same = find(db, Query::default().with(Field::Submitted, Op::Eq, ts(tic)));
    assert!(!same.is_empty());
    assert!(same.iter().all(|s| s.submitted == Some(tic)));

    // test_find_records_keys / msg_id: projections always carry msg_id
    let found = db.find(&ne_empty(), Fields::of(&[Field::Submitted, Field::Completed])).expect("find");
    assert_eq!(found.len(), hist.len());
    assert!(found.iter().all(|r| !r.msg_id.is_empty() && r.submitted.is_some() && r.buffers.is_empty()));

    // test_find_records_in
    let even: Vec<String> = hist.iter().step_by(2).cloned().collect();
    let odd: Vec<String> = hist.iter().skip(1).step_by(2).cloned().collect();
    let found: Vec<String> = find(db, Query::ids(&even)).into_iter().map(|r| r.msg_id).collect();
    assert_eq!(found, even, "insertion order");
    let nin = Query::default().with(Field::MsgId, Op::Nin, Q::List(even.iter().map(|s| Q::Str(s.clone())).collect()));
    let found: Vec<String> = find(db, nin).into_iter().map(|r| r.msg_id).collect();
    assert_eq!(found, odd);

    // test_find_records_glob
    let ids = load_records(db, 10, 100);
    let labels = [
        "group_a",
        "group_a",
        "group_a/subgroup_a",
        "group_a/subgroup_b",
        "group_b",
        "group_b/subgroup_a",
        "group_b/subgroup_b",
        "group_b/subgroup_c",
        "label*task",
        "label?task",
    ];
    for (id, l) in ids.iter().zip(labels) {
        db.update(id, Missing::Skip, &mut |r| r.label = Value::from(l)).expect("update");
    }
    for (pat, want) in [("group_a*", vec![0, 1, 2, 3]), ("*/subgroup_a", vec![2, 5]), ("*[?]*", vec![9]), ("group_b/subgroup_[ab]", vec![5, 6])] {
        let got: Vec<String> = find(db, Query::default().with(Field::Label, Op::Glob, Q::Str(pat.into()))).into_iter().map(|r| r.msg_id).collect();
        let want: Vec<String> = want.into_iter().map(|i| ids[i].clone()).collect();
        assert_eq!(got, want, "{pat}");
    }

    // test_get_history
    let hist = db.history().expect("history");
    let subs: Vec<Timestamp> = hist.iter().map(|id| get(db, id).and_then(|r| r.submitted).expect("submitted")).collect();
    assert!(subs.windows(2).all(|w| w[0] <= w[1]));
    let id = load_records(db, 1, 100).remove(0);
    assert_eq!(db.history().expect("history").last(), Some(&id));

    // test_drop_matching
    let ids = load_records(db, 10, 100);
    assert_eq!(db.remove(&Query::ids(&ids)).ok(), Some(10));
    assert!(find(db, Query::ids(&ids)).is_empty());

    // test_null
    load_records(db, 10, 100);
    assert!(find(db, Query::default().with(Field::MsgId, Op::Eq, Q::Nil)).is_empty());
    let n = find(db, Query::default().with(Field::MsgId, Op::Ne, Q::Nil)).len();
    assert!(n >= 10);

    // test_pop_safe_*: results are copies.
    let id = db.history().expect("history").last().cloned().expect("one");
    let mut r = find(db, Query::ids(&[&id])).remove(0);
    r.buffers.clear();
    r.header.insert("msg_id", Value::from("fubar"));
    let r2 = find(db, Query::ids(&[&id])).remove(0);
    assert!(!r2.buffers.is_empty());
    assert_eq!(r2.header.get("msg_id").as_str(), Some(id.as_str()));

    // Orphans (IOPub before any request) are records but not history.
    db.update("orphan-1", Missing::Create, &mut |r| r.stdout.push('x')).expect("update");
    assert!(!db.history().expect("history").contains(&"orphan-1".to_owned()));
    assert_eq!(find(db, Query::ids(&["orphan-1"])).len(), 1);
    // Skip leaves missing records missing.
    assert_eq!(db.update("never", Missing::Skip, &mut |r| r.stdout.push('x')).ok(), Some(false));
    assert!(get(db, "never").is_none());

    // purge "all" = completed records only
    let completed = Query::default().with(Field::Completed, Op::Ne, Q::Nil);
    let n_completed = find(db, completed.clone()).len();
    assert!(n_completed >= 1);
    assert_eq!(db.remove(&completed).ok(), Some(n_completed));
    assert!(find(db, completed).is_empty());
}

#[test]
fn memory_store_passes_test_db() {
    let mut db = MemStore::new(Limits::default());
    conformance(&mut db);
}

#[test]
fn sqlite_store_passes_test_db() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut db = SqliteStore::open(SqliteConfig::new(dir.path().join("tasks.db"))).expect("open");
    conformance(&mut db);
}

#[test]
fn sqlite_store_passes_test_db_without_a_cache() {
    // Every read and update goes to the file as soon as the writer has committed.
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = SqliteConfig::new(dir.path().join("tasks.db"));
    cfg.cache_records = 0;
    cfg.cache_bytes = 0;
    let mut db = SqliteStore::open(cfg).expect("open");
    conformance(&mut db);
}

// ------------------------------------------------------------------ DictDB culling

fn culling(limits: Limits) -> MemStore {
    MemStore::new(limits)
}

#[test]
fn cull_count() {
    let mut db = culling(Limits { record_limit: 20, size_limit: 1 << 30, cull_fraction: 0.2 });
    load_records(&mut db, 20, 100);
    assert_eq!(db.history().map(|h| h.len()).ok(), Some(20));
    load_records(&mut db, 1, 100);
    assert_eq!(db.history().map(|h| h.len()).ok(), Some(17), "0.2 * 20 = 4, 21 - 4 = 17");
    load_records(&mut db, 3, 100);
    assert_eq!(db.history().map(|h| h.len()).ok(), Some(20));
    load_records(&mut db, 1, 100);
    assert_eq!(db.history().map(|h| h.len()).ok(), Some(17));
    for _ in 0..25 {
        load_records(&mut db, 1, 100);
        let n = db.history().map(|h| h.len()).unwrap_or(0);
        assert!((17..=20).contains(&n), "{n}");
    }
}

#[test]
fn cull_size() {
    let mut db = culling(Limits { record_limit: 1024, size_limit: 1000, cull_fraction: 0.2 });
    load_records(&mut db, 100, 10);
    assert_eq!(db.history().map(|h| h.len()).ok(), Some(100));
    load_records(&mut db, 1, 0);
    assert_eq!(db.history().map(|h| h.len()).ok(), Some(101));
    load_records(&mut db, 1, 1);
    assert_eq!(db.history().map(|h| h.len()).ok(), Some(81));
}

#[test]
fn cull_size_drop() {
    let mut db = culling(Limits { record_limit: 1024, size_limit: 1000, cull_fraction: 0.2 });
    load_records(&mut db, 100, 10);
    let last = db.history().ok().and_then(|h| h.last().cloned()).expect("one");
    assert_eq!(db.remove(&Query::ids(&[last])).ok(), Some(1));
    assert_eq!(db.history().map(|h| h.len()).ok(), Some(99));
    load_records(&mut db, 1, 5);
    assert_eq!(db.history().map(|h| h.len()).ok(), Some(100));
    load_records(&mut db, 1, 5);
    assert_eq!(db.history().map(|h| h.len()).ok(), Some(101));
    load_records(&mut db, 1, 1);
    assert_eq!(db.history().map(|h| h.len()).ok(), Some(81));
}

#[test]
fn cull_size_update() {
    let mut db = culling(Limits { record_limit: 1024, size_limit: 1000, cull_fraction: 0.2 });
    load_records(&mut db, 100, 10);
    let id = db.history().ok().and_then(|h| h.last().cloned()).expect("one");
    db.update(&id, Missing::Skip, &mut |r| {
        r.result_buffers = vec![vec![1; 10]];
        r.buffers.clear();
    })
    .expect("update");
    assert_eq!(db.history().map(|h| h.len()).ok(), Some(100));
    db.update(&id, Missing::Skip, &mut |r| {
        r.result_buffers = vec![vec![1; 11]];
        r.buffers.clear();
    })
    .expect("update");
    assert_eq!(db.history().map(|h| h.len()).ok(), Some(79));
}

#[test]
fn memory_stays_bounded_under_sustained_load() {
    let mut db = culling(Limits { record_limit: 1024, size_limit: 1 << 20, cull_fraction: 0.1 });
    for _ in 0..20 {
        load_records(&mut db, 500, 1000);
        assert!(db.len() <= 1024);
        assert!(db.bytes() <= 1 << 20);
    }
    assert!(db.culled() > 0);
}
