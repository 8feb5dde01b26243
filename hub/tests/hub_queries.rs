//! The hub's query socket over recorded traffic: result, history, db, purge and resubmit
//! requests (docs/protocol.md §4.3), against the memory, SQLite and no-op stores.

use ippx_hub::hub::{Hub, HubOut, HubSettings, MonitorMsg, Now};
use ippx_hub::records::Limits;
use ippx_hub::registry::EngineState;
use ippx_hub::store::sqlite::{SqliteConfig, SqliteStore};
use ippx_hub::store::Store;
use ippx_protocol::datetime::parse_iso;
use ippx_protocol::{vmap, Header, Session, Value};
use std::time::Instant;

mod common;
use common::session;

fn settings(nodb: bool) -> HubSettings {
    settings_with(nodb, Limits::default())
}

fn settings_with(nodb: bool, limits: Limits) -> HubSettings {
    common::settings(nodb, limits, vec![8])
}

fn list(ids: &[&str]) -> Value {
    Value::Array(ids.iter().map(|s| Value::from(*s)).collect())
}

/// A hub with two registered engines (`e0`, `e1`) and peers to make traffic with.
struct Cluster {
    hub: Hub,
    client: Session,
    engine: Session,
    sched: Session,
    now: Now,
}

impl Cluster {
    /// The cluster's monotonic time with the wall clock read now, as the socket loop
    /// stamps each message (records are ordered by their wall-clock times).
    fn clock(&self) -> Now {
        Now { at: self.now.at, wall: ippx_protocol::datetime::now() }
    }

    fn new(hub: Hub) -> Cluster {
        let mut c = Cluster { hub, client: session(), engine: session(), sched: session(), now: Now::system() };
        c.register("e0");
        c.register("e1");
        c
    }

    fn restored(mut hub: Hub) -> Cluster {
        let state = EngineState { engines: [("0".to_owned(), "e0".to_owned()), ("1".to_owned(), "e1".to_owned())].into(), next_id: 2 };
        hub.restore(&state);
        Cluster { hub, client: session(), engine: session(), sched: session(), now: Now::system() }
    }

    fn register(&mut self, uuid: &str) {
        let out = self.query("registration_request", vmap! {"uuid" => uuid});
        assert_eq!(content(&out, "registration_reply").get("status").as_str(), Some("ok"));
        let mut out = Vec::new();
        self.hub.tick(self.now, &mut out);
        let ping = out.iter().rev().find_map(|o| if let HubOut::Ping(p) = o { Some(p.clone()) } else { None }).expect("ping");
        self.hub.pong(uuid.as_bytes(), &ping, &mut out);
    }

    fn query(&mut self, msg_type: &str, c: Value) -> Vec<HubOut> {
        let h = self.client.new_header(msg_type);
        let hb = self.client.pack(&h).expect("pack");
        let cb = self.client.pack(&c).expect("pack");
        let mut out = Vec::new();
        self.hub.query(vec![b"client".to_vec()], &h, &hb, &cb, self.clock(), &mut out);
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn monitor(&mut self, topic: &[u8], routing: &[&[u8]], h: &Header, parent: &str, md: &Value, c: &Value, bufs: &[Vec<u8>]) {
        let s = &self.client;
        let (hb, mb, cb) = (s.pack(h).expect("p"), s.pack(md).expect("p"), s.pack(c).expect("p"));
        let routing: Vec<Vec<u8>> = routing.iter().map(|r| r.to_vec()).collect();
        let msg = MonitorMsg { h, parent_id: parent.to_owned(), header: &hb, metadata: &mb, content: &cb, buffers: bufs };
        let mut out = Vec::new();
        self.hub.monitor(topic, &routing, msg, self.clock(), &mut out);
    }

    /// A load-balanced task submitted (`intask`) and assigned (`tracktask`).
    fn submit(&mut self, label: &str, bufs: &[&[u8]], engine: &str) -> Header {
        let h = self.client.new_header("apply_request");
        let md =
            vmap! {"after" => list(&[]), "follow" => list(&[]), "timeout" => 0.0f64, "targets" => list(&[]), "retries" => 0i64, "label" => label};
        let bufs: Vec<Vec<u8>> = bufs.iter().map(|b| b.to_vec()).collect();
        self.monitor(b"intask", &[b"client"], &h, "", &md, &Value::map(), &bufs);
        self.assign(&h, engine);
        h
    }

    /// The scheduler's `tracktask`: `req` went to `engine`.
    fn assign(&mut self, req: &Header, engine: &str) {
        let d = self.sched.new_header("task_destination");
        self.monitor(b"tracktask", &[b"sched"], &d, "", &Value::map(), &vmap! {"msg_id" => req.msg_id.as_str(), "engine_id" => engine}, &[]);
    }

    /// A direct request to `engine` and its reply.
    fn direct(&mut self, engine: &str) -> String {
        let h = self.client.new_header("apply_request");
        self.monitor(b"in", &[engine.as_bytes(), b"client"], &h, "", &Value::map(), &Value::map(), &[]);
        let rh = self.engine.new_header("apply_reply");
        let md = vmap! {"status" => "ok", "engine" => engine};
        self.monitor(b"out", &[b"client", engine.as_bytes()], &rh, &h.msg_id, &md, &vmap! {"status" => "ok"}, &[]);
        h.msg_id
    }

    /// The engine's reply (`outtask`), after some stdout on IOPub.
    fn finish(&mut self, req: &Header, engine: &str, rbufs: &[&[u8]], status: &str) {
        let s = self.engine.new_header("stream");
        self.monitor(
            b"iopub",
            &[b"engine.0.stdout"],
            &s,
            &req.msg_id,
            &Value::map(),
            &vmap! {"name" => "stdout", "text" => format!("out of {}\n", req.msg_id)},
            &[],
        );
        let rh = self.engine.new_header("apply_reply");
        let md = vmap! {"started" => "2026-01-01T00:00:00.000001Z", "dependencies_met" => true, "engine" => engine, "status" => status};
        let rbufs: Vec<Vec<u8>> = rbufs.iter().map(|b| b.to_vec()).collect();
        self.monitor(b"outtask", &[b"client", engine.as_bytes()], &rh, &req.msg_id, &md, &vmap! {"status" => status}, &rbufs);
    }

    fn task(&mut self, label: &str, bufs: &[&[u8]], rbufs: &[&[u8]], engine: &str) -> String {
        let h = self.submit(label, bufs, engine);
        self.finish(&h, engine, rbufs, "ok");
        h.msg_id
    }

    /// `(content, buffers)` of the reply to one query.
    fn ask(&mut self, msg_type: &str, c: Value) -> (Value, Vec<Vec<u8>>) {
        let out = self.query(msg_type, c);
        out.into_iter().find_map(|o| if let HubOut::Reply { content, buffers, .. } = o { Some((content, buffers)) } else { None }).expect("a reply")
    }

    fn history(&mut self) -> Vec<String> {
        let (c, _) = self.ask("history_request", Value::map());
        c.get("history").as_array().expect("history").iter().map(|v| v.as_str().unwrap_or_default().to_owned()).collect()
    }

    fn db(&mut self, query: Value, keys: Value) -> (Value, Vec<Vec<u8>>) {
        self.ask("db_request", vmap! {"query" => query, "keys" => keys})
    }

    fn db_ids(&mut self, query: Value) -> Vec<String> {
        let (c, _) = self.db(query, list(&["msg_id"]));
        c.get("records").as_array().expect("records").iter().map(|r| r.get("msg_id").as_str().unwrap_or_default().to_owned()).collect()
    }
}

fn content(out: &[HubOut], want: &str) -> Value {
    out.iter()
        .find_map(|o| if let HubOut::Reply { msg_type, content, .. } = o { (msg_type == want).then(|| content.clone()) } else { None })
        .expect(want)
}

fn ename(c: &Value) -> Option<&str> {
    (c.get("status").as_str() == Some("error")).then(|| c.get("ename").as_str()).flatten()
}

fn all() -> Value {
    vmap! {"msg_id" => vmap! {"$ne" => ""}}
}

fn mem() -> Cluster {
    Cluster::new(Hub::new(settings(false), Instant::now()))
}

fn sqlite(path: &std::path::Path) -> Cluster {
    let store: Box<dyn Store> = Box::new(SqliteStore::open(SqliteConfig::new(path)).expect("open"));
    Cluster::new(Hub::with_store(settings(false), store, Instant::now()))
}

// ------------------------------------------------------------------ scenarios (any store)

fn db_request_scenario(c: &mut Cluster) {
    let a = c.task("la", &[b"fa", b"xa"], &[b"ra"], "e0");
    let b = c.task("lb", &[b"fb"], &[b"rb1", b"rb2"], "e1");
    let p = c.submit("lp", &[b"fp"], "e0").msg_id;

    // Default keys: everything but the buffers.
    let (r, bufs) = c.db(all(), Value::Nil);
    assert_eq!(r.get("status").as_str(), Some("ok"), "{r:?}");
    assert!(bufs.is_empty());
    assert_eq!(r.get("buffer_lens"), &Value::Nil);
    assert_eq!(r.get("result_buffer_lens"), &Value::Nil);
    let recs = r.get("records").as_array().expect("records").to_vec();
    assert_eq!(recs.len(), 3);
    let ra = &recs[0];
    assert_eq!(ra.get("msg_id").as_str(), Some(a.as_str()), "insertion order");
    for k in [
        "header",
        "metadata",
        "content",
        "submitted",
        "client_uuid",
        "engine_uuid",
        "started",
        "completed",
        "received",
        "resubmitted",
        "result_header",
        "result_metadata",
        "result_content",
        "queue",
        "execute_input",
        "execute_result",
        "error",
        "stdout",
        "stderr",
        "label",
    ] {
        assert!(ra.as_map().expect("map").iter().any(|(kk, _)| kk == k), "{k} missing");
    }
    assert!(ra.get("buffers").is_nil() && ra.get("result_buffers").is_nil());
    assert_eq!(ra.get("label").as_str(), Some("la"));
    assert_eq!(ra.get("queue").as_str(), Some("task"));
    assert_eq!(ra.get("engine_uuid").as_str(), Some("e0"));
    assert_eq!(ra.get("stdout").as_str(), Some(format!("out of {a}\n").as_str()));
    let sub = ra.get("submitted").as_str().expect("iso").to_owned();
    assert!(sub.ends_with('Z') && sub.len() == 27, "{sub}");
    assert!(recs[2].get("completed").is_nil(), "pending");

    // Buffers, interleaved per record: a's request, a's result, b's request, b's result.
    let (r, bufs) = c.db(vmap! {"msg_id" => vmap! {"$in" => list(&[&b, &a])}}, list(&["buffers", "result_buffers", "label"]));
    assert_eq!(r.get("buffer_lens"), &Value::Array(vec![Value::Int(2), Value::Int(1)]));
    assert_eq!(r.get("result_buffer_lens"), &Value::Array(vec![Value::Int(1), Value::Int(2)]));
    assert_eq!(bufs, [b"fa".to_vec(), b"xa".to_vec(), b"ra".to_vec(), b"fb".to_vec(), b"rb1".to_vec(), b"rb2".to_vec()]);
    let rec = &r.get("records").as_array().expect("records")[0];
    assert_eq!(
        rec.as_map().map(|m| m.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>()),
        Some(vec!["msg_id", "label"]),
        "no buffers inside records"
    );
    let (r, bufs) = c.db(vmap! {"msg_id" => a.as_str()}, list(&["result_buffers"]));
    assert_eq!(r.get("buffer_lens"), &Value::Nil);
    assert_eq!(bufs, [b"ra".to_vec()]);

    // keys: msg_id always first, even if not asked; unknown keys are an error.
    let (r, _) = c.db(vmap! {"msg_id" => a.as_str()}, list(&["submitted"]));
    let rec = &r.get("records").as_array().expect("records")[0];
    assert_eq!(rec.get("msg_id").as_str(), Some(a.as_str()));
    assert_eq!(rec.as_map().map(<[_]>::len), Some(2));
    let (r, _) = c.db(all(), list(&["submitted", "bogus"]));
    assert_eq!(ename(&r), Some("KeyError"));
    assert!(r.get("evalue").as_str().is_some_and(|e| e.contains("bogus")));
    let (r, _) = c.db(vmap! {"msg_id" => vmap! {"$regex" => "x"}}, Value::Nil);
    assert_eq!(ename(&r), Some("KeyError"));

    // Date round trip: a value read back is an exact equality match; $lt/$gte partition.
    let (r, _) = c.db(vmap! {"msg_id" => b.as_str()}, list(&["submitted"]));
    let tic = r.get("records").as_array().expect("records")[0].get("submitted").clone();
    assert_eq!(c.db_ids(vmap! {"submitted" => tic.clone()}), std::slice::from_ref(&b));
    let before = c.db_ids(vmap! {"submitted" => vmap! {"$lt" => tic.clone()}});
    let after = c.db_ids(vmap! {"submitted" => vmap! {"$gte" => tic.clone()}});
    assert_eq!(before, std::slice::from_ref(&a));
    assert_eq!(after, [b.clone(), p.clone()]);
    // Python's isoformat of the same instant.
    let py = tic.as_str().expect("iso").replace('Z', "+00:00");
    assert_eq!(c.db_ids(vmap! {"submitted" => py}), std::slice::from_ref(&b));

    // $in / $nin over history (test_db_query_in); label $nin [''] (test_label).
    let hist = c.history();
    assert_eq!(hist, [a.clone(), b.clone(), p.clone()]);
    assert_eq!(c.db_ids(vmap! {"msg_id" => vmap! {"$nin" => list(&[&a])}}), [b.clone(), p.clone()]);
    let (r, _) = c.db(vmap! {"label" => vmap! {"$nin" => list(&[""])}}, list(&["msg_id", "label"]));
    let labels: Vec<&str> = r.get("records").as_array().expect("records").iter().filter_map(|r| r.get("label").as_str()).collect();
    assert_eq!(labels, ["la", "lb", "lp"]);
}

fn result_request_scenario(c: &mut Cluster) {
    let a = c.task("", &[b"f"], &[b"ra1", b"ra2"], "e0");
    let b = c.task("", &[b"f"], &[b"rb"], "e1");
    let p = c.submit("", &[b"f"], "e0").msg_id;
    let (mut first, mut second) = (a.clone(), b.clone());
    let (mut fb, mut sb) = (vec![b"ra1".to_vec(), b"ra2".to_vec()], vec![b"rb".to_vec()]);
    if second < first {
        std::mem::swap(&mut first, &mut second);
        std::mem::swap(&mut fb, &mut sb);
    }
    // Ids are de-duplicated and sorted; buffers follow that order.
    let (r, bufs) = c.ask("result_request", vmap! {"msg_ids" => list(&[&second, &p, &first, &second]), "status_only" => false});
    assert_eq!(r.get("status").as_str(), Some("ok"), "{r:?}");
    assert_eq!(r.get("completed"), &list(&[&first, &second]));
    assert_eq!(r.get("pending"), &list(&[&p]));
    assert_eq!(bufs, [fb, sb].concat());
    let e = r.get(&a);
    assert_eq!(e.get("result_content").get("status").as_str(), Some("ok"));
    assert_eq!(e.get("result_metadata").get("engine").as_str(), Some("e0"));
    assert_eq!(e.get("header").get("msg_id").as_str(), Some(a.as_str()));
    assert_eq!(e.get("io").get("stdout").as_str(), Some(format!("out of {a}\n").as_str()));
    assert!(e.get("received").as_str().is_some_and(|s| s.ends_with('Z')));
    for k in ["header", "metadata", "result_metadata", "result_header", "result_content", "received", "io"] {
        assert!(e.as_map().expect("map").iter().any(|(kk, _)| kk == k), "{k}");
    }
    // status_only: no entries, no buffers.
    let (r, bufs) = c.ask("result_request", vmap! {"msg_ids" => list(&[&a, &p]), "status_only" => true});
    assert!(bufs.is_empty() && r.get(&a).is_nil());
    assert_eq!(r.get("completed"), &list(&[&a]));
    // One unknown id makes the whole reply a KeyError.
    let (r, bufs) = c.ask("result_request", vmap! {"msg_ids" => list(&[&a, "nope"]), "status_only" => false});
    assert_eq!(ename(&r), Some("KeyError"));
    assert_eq!(r.get("evalue").as_str(), Some("'No such message: nope'"));
    assert!(bufs.is_empty());
}

fn purge_scenario(c: &mut Cluster) {
    let a = c.task("", &[], &[b"r"], "e0");
    let b = c.task("", &[], &[b"r"], "e1");
    let b2 = c.task("", &[], &[b"r"], "e1");
    let d = c.task("", &[], &[b"r"], "e0");
    let p = c.submit("", &[], "e0").msg_id;
    // A pending id refuses the whole purge.
    let (r, _) = c.ask("purge_request", vmap! {"msg_ids" => list(&[&a, &p]), "engine_ids" => list(&[])});
    assert_eq!(ename(&r), Some("IndexError"));
    assert_eq!(r.get("evalue").as_str(), Some(format!("msg pending: '{p}'").as_str()));
    assert_eq!(c.history().len(), 5);
    // By id.
    let (r, _) = c.ask("purge_request", vmap! {"msg_ids" => list(&[&a]), "engine_ids" => list(&[])});
    assert_eq!(r, vmap! {"status" => "ok"});
    assert_eq!(c.history(), [b.clone(), b2.clone(), d.clone(), p.clone()]);
    // Unknown engine.
    let (r, _) = c.ask("purge_request", vmap! {"msg_ids" => list(&[]), "engine_ids" => Value::Array(vec![Value::Int(9)])});
    assert_eq!(ename(&r), Some("IndexError"));
    assert_eq!(r.get("evalue").as_str(), Some("No such engine: 9"));
    // By engine: e1's completed records.
    let (r, _) = c.ask("purge_request", vmap! {"msg_ids" => list(&[]), "engine_ids" => Value::Array(vec![Value::Int(1)])});
    assert_eq!(r, vmap! {"status" => "ok"});
    assert_eq!(c.history(), [d.clone(), p.clone()]);
    // The hub's counters are not purged; a verbose status lists the completed ids the
    // store still holds (stock lists every one ever: docs/store.md).
    let (q, _) = c.ask("queue_request", vmap! {"targets" => Value::Int(1), "verbose" => false});
    assert_eq!(q.get("1").get("completed"), &Value::Int(2));
    let (q, _) = c.ask("queue_request", vmap! {"targets" => Value::Int(1), "verbose" => true});
    assert_eq!(q.get("1").get("completed"), &list(&[]));
    let (q, _) = c.ask("queue_request", vmap! {"targets" => Value::Int(0), "verbose" => true});
    assert_eq!(q.get("0").get("completed"), &list(&[&d]));
    // "all": every completed record; pending ones stay.
    let (r, _) = c.ask("purge_request", vmap! {"msg_ids" => "all", "engine_ids" => list(&[])});
    assert_eq!(r, vmap! {"status" => "ok"});
    assert_eq!(c.history(), std::slice::from_ref(&p));
    // A purged result is gone (the hub still knows it completed).
    let (r, _) = c.ask("result_request", vmap! {"msg_ids" => list(&[&d]), "status_only" => false});
    assert_eq!(ename(&r), Some("KeyError"));
}

fn resubmit_scenario(c: &mut Cluster) {
    let a = c.task("lbl", &[b"fn", b"args"], &[b"r1"], "e0");
    let old_header = {
        let (r, _) = c.db(vmap! {"msg_id" => a.as_str()}, list(&["header"]));
        r.get("records").as_array().expect("records")[0].get("header").clone()
    };
    let out = c.query("resubmit_request", vmap! {"msg_ids" => list(&[&a])});
    // The new message goes to the task scheduler before the reply.
    let (h, content, buffers) = match &out[..] {
        [HubOut::Submit { header, content, buffers }, HubOut::Reply { msg_type, .. }] => {
            assert_eq!(msg_type, "resubmit_reply");
            (header.clone(), content.clone(), buffers.clone())
        }
        other => panic!("unexpected outputs: {other:?}"),
    };
    let r = content_of(&out);
    assert_eq!(r.get("status").as_str(), Some("ok"), "{r:?}");
    let new = r.get("resubmitted").get(&a).as_str().expect("mapping").to_owned();
    assert_eq!(h.msg_id, new);
    assert_ne!(new, a);
    // Header kept except msg_id and date.
    assert_eq!(Value::from(h.session.as_str()), *old_header.get("session"));
    assert_eq!(Value::from(h.username.as_str()), *old_header.get("username"));
    assert_eq!(Value::from(h.msg_type.as_str()), *old_header.get("msg_type"));
    assert_eq!(Value::from(h.version.as_str()), *old_header.get("version"));
    assert_ne!(Value::from(h.date.as_str()), *old_header.get("date"));
    assert!(parse_iso(&h.date).is_some());
    assert_eq!(content, Value::map());
    assert_eq!(buffers, [b"fn".to_vec(), b"args".to_vec()]);
    // The new record exists at once, pending; the old one points at it.
    let (r, _) = c.ask("result_request", vmap! {"msg_ids" => list(&[&new]), "status_only" => false});
    assert_eq!(r.get("pending"), &list(&[&new]));
    let (r, bufs) = c.db(vmap! {"msg_id" => vmap! {"$in" => list(&[&a, &new])}}, list(&["header", "resubmitted", "metadata", "buffers"]));
    let recs = r.get("records").as_array().expect("records").to_vec();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0].get("resubmitted").as_str(), Some(new.as_str()));
    assert_eq!(recs[1].get("metadata"), &Value::map(), "metadata {{}}");
    let (h1, h2) = (recs[0].get("header"), recs[1].get("header"));
    for (k, v) in h1.as_map().expect("map") {
        if k == "msg_id" || k == "date" {
            assert_ne!(v, h2.get(k), "{k}");
        } else {
            assert_eq!(v, h2.get(k), "{k}");
        }
    }
    assert_eq!(bufs, [b"fn".to_vec(), b"args".to_vec(), b"fn".to_vec(), b"args".to_vec()]);
    // The scheduler's copies of the resubmission complete it like any task.
    c.monitor(b"intask", &[b"hub"], &h, &new, &Value::map(), &Value::map(), &[b"fn".to_vec(), b"args".to_vec()]);
    let d = c.sched.new_header("task_destination");
    c.monitor(b"tracktask", &[b"sched"], &d, "", &Value::map(), &vmap! {"msg_id" => new.as_str(), "engine_id" => "e1"}, &[]);
    c.finish(&h, "e1", &[b"r2"], "ok");
    let (r, bufs) = c.ask("result_request", vmap! {"msg_ids" => list(&[&new]), "status_only" => false});
    assert_eq!(r.get("completed"), &list(&[&new]));
    assert_eq!(bufs, [b"r2".to_vec()]);
    assert_eq!(c.history().last(), Some(&new));
    // Resubmitting the resubmission works too (test_resubmit_chain).
    let (r, _) = c.ask("resubmit_request", vmap! {"msg_ids" => list(&[&new])});
    assert!(r.get("resubmitted").get(&new).as_str().is_some());
    // In-flight tasks may be resubmitted; unknown ids are a KeyError naming them.
    let p = c.submit("", &[b"f"], "e0").msg_id;
    let (r, _) = c.ask("resubmit_request", vmap! {"msg_ids" => list(&[&p])});
    assert_eq!(r.get("status").as_str(), Some("ok"));
    let (r, _) = c.ask("resubmit_request", vmap! {"msg_ids" => list(&[&a, "invalid"])});
    assert_eq!(ename(&r), Some("KeyError"));
    assert_eq!(r.get("evalue").as_str(), Some("No such msg(s): ['invalid']"));
}

fn content_of(out: &[HubOut]) -> Value {
    out.iter().find_map(|o| if let HubOut::Reply { content, .. } = o { Some(content.clone()) } else { None }).expect("reply")
}

#[test]
fn db_request_memory() {
    db_request_scenario(&mut mem());
}

#[test]
fn db_request_sqlite() {
    let dir = tempfile::tempdir().expect("tmp");
    db_request_scenario(&mut sqlite(&dir.path().join("t.db")));
}

#[test]
fn result_request_memory() {
    result_request_scenario(&mut mem());
}

#[test]
fn result_request_sqlite() {
    let dir = tempfile::tempdir().expect("tmp");
    result_request_scenario(&mut sqlite(&dir.path().join("t.db")));
}

#[test]
fn purge_memory() {
    purge_scenario(&mut mem());
}

#[test]
fn purge_sqlite() {
    let dir = tempfile::tempdir().expect("tmp");
    purge_scenario(&mut sqlite(&dir.path().join("t.db")));
}

#[test]
fn resubmit_memory() {
    resubmit_scenario(&mut mem());
}

#[test]
fn resubmit_sqlite() {
    let dir = tempfile::tempdir().expect("tmp");
    resubmit_scenario(&mut sqlite(&dir.path().join("t.db")));
}

#[test]
fn direct_requests_are_resubmitted_through_the_task_scheduler_too() {
    let mut c = mem();
    let h = c.client.new_header("execute_request");
    c.monitor(b"in", &[b"e0", b"client"], &h, "", &vmap! {"label" => Value::Nil}, &vmap! {"code" => "1+1"}, &[]);
    let rh = c.engine.new_header("execute_reply");
    c.monitor(b"out", &[b"client", b"e0"], &rh, &h.msg_id, &vmap! {"engine" => "e0", "status" => "ok"}, &vmap! {"status" => "ok"}, &[]);
    let out = c.query("resubmit_request", vmap! {"msg_ids" => list(&[&h.msg_id])});
    match &out[0] {
        HubOut::Submit { header, content, .. } => {
            assert_eq!(header.msg_type, "execute_request");
            assert_eq!(content.get("code").as_str(), Some("1+1"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn nodb_refuses_reads_but_answers_status_and_purges() {
    let mut c = Cluster::new(Hub::new(settings(true), Instant::now()));
    let a = c.task("", &[], &[b"r"], "e0");
    for (t, q) in [
        ("history_request", Value::map()),
        ("db_request", vmap! {"query" => all(), "keys" => Value::Nil}),
        ("resubmit_request", vmap! {"msg_ids" => list(&[&a])}),
    ] {
        let (r, _) = c.ask(t, q);
        assert_eq!(ename(&r), Some("KeyError"), "{t}");
        assert!(r.get("evalue").as_str().is_some_and(|e| e.starts_with("NoDB backend")), "{t}");
    }
    let (r, _) = c.ask("result_request", vmap! {"msg_ids" => list(&[&a]), "status_only" => true});
    assert_eq!(r.get("completed"), &list(&[&a]));
    let (r, _) = c.ask("result_request", vmap! {"msg_ids" => list(&[&a]), "status_only" => false});
    assert_eq!(ename(&r), Some("KeyError"));
    let (r, _) = c.ask("purge_request", vmap! {"msg_ids" => "all", "engine_ids" => list(&[])});
    assert_eq!(r, vmap! {"status" => "ok"});
}

#[test]
fn sqlite_results_outlive_the_hub() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("tasks.db");
    let (a, b, p) = {
        let mut c = sqlite(&path);
        let a = c.task("la", &[b"f"], &[b"ra"], "e0");
        let b = c.task("lb", &[b"f"], &[b"rb"], "e1");
        let p = c.submit("lp", &[b"f"], "e0").msg_id;
        (a, b, p)
    }; // the hub (and its store) are gone
    let store: Box<dyn Store> = Box::new(SqliteStore::open(SqliteConfig::new(&path)).expect("reopen"));
    let mut c = Cluster::restored(Hub::with_store(settings(false), store, Instant::now()));
    assert_eq!(c.hub.registry().len(), 2, "--restore brings the engines back");
    let (r, bufs) = c.ask("result_request", vmap! {"msg_ids" => list(&[&a, &b]), "status_only" => false});
    assert_eq!(r.get("status").as_str(), Some("ok"), "{r:?}");
    assert_eq!(r.get("completed").as_array().map(<[_]>::len), Some(2));
    assert_eq!(bufs.len(), 2);
    assert_eq!(r.get(&a).get("io").get("stdout").as_str(), Some(format!("out of {a}\n").as_str()));
    // A task in flight when the hub went away stays pending.
    let (r, _) = c.ask("result_request", vmap! {"msg_ids" => list(&[&p]), "status_only" => true});
    assert_eq!(r.get("pending"), &list(&[&p]));
    assert_eq!(c.history(), [a.clone(), b.clone(), p.clone()]);
    // New work continues the same table, and old results can be resubmitted.
    let n = c.task("ln", &[b"f"], &[b"rn"], "e1");
    assert_eq!(c.history().last(), Some(&n));
    let (r, _) = c.ask("resubmit_request", vmap! {"msg_ids" => list(&[&a])});
    assert_eq!(r.get("status").as_str(), Some("ok"));
}

/// What `result_request` says of a task: "pending", "ok", or the error's ename.
fn record_status(c: &mut Cluster, id: &str) -> String {
    let (r, _) = c.ask("result_request", vmap! {"msg_ids" => list(&[id]), "status_only" => false});
    if r.get("pending") == &list(&[id]) {
        "pending".to_owned()
    } else {
        r.get(id).get("result_content").get("ename").as_str().unwrap_or("ok").to_owned()
    }
}

#[test]
fn tasks_in_flight_across_a_restart_complete_or_fail_clearly() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("tasks.db");
    // e0: answers its old task after the restart; e1: answers new work first (its old
    // reply was lost); e2's task went to an engine that is not restored.
    let (late, lost, orphan, unassigned) = {
        let mut c = sqlite(&path);
        c.register("e2");
        let late = c.submit("late", &[b"f"], "e0");
        let lost = c.submit("lost", &[b"f"], "e1");
        let orphan = c.submit("orphan", &[b"f"], "e2").msg_id;
        let h = c.client.new_header("apply_request");
        let md = vmap! {"after" => list(&[]), "follow" => list(&[]), "timeout" => 0.0f64, "targets" => list(&[]), "retries" => 0i64};
        c.monitor(b"intask", &[b"client"], &h, "", &md, &Value::map(), &[]);
        (late, lost, orphan, h.msg_id)
    };
    let store: Box<dyn Store> = Box::new(SqliteStore::open(SqliteConfig::new(&path)).expect("reopen"));
    let mut c = Cluster::restored(Hub::with_store(settings(false), store, Instant::now()));
    let now = c.clock();
    assert_eq!(c.hub.restore_inflight(now), 2, "e0's and e1's tasks wait for their engines");
    assert_eq!(record_status(&mut c, &orphan), "EngineError", "its engine is not restored");
    assert_eq!(record_status(&mut c, &unassigned), "EngineError", "it never reached an engine");
    assert_eq!(record_status(&mut c, &late.msg_id), "pending");
    assert_eq!(record_status(&mut c, &lost.msg_id), "pending");
    c.finish(&late, "e0", &[b"r"], "ok");
    assert_eq!(record_status(&mut c, &late.msg_id), "ok", "a reply after the restart completes the record");
    c.direct("e1");
    assert_eq!(record_status(&mut c, &lost.msg_id), "ControllerRestarted", "e1 answered later work");
}

#[test]
fn a_dead_scheduler_child_fails_what_it_held_and_waits_for_what_engines_have() {
    let mut c = Cluster::new(Hub::new(settings(false), Instant::now()));
    let late = c.submit("late", &[b"f"], "e0");
    let lost = c.submit("lost", &[b"f"], "e1");
    let h = c.client.new_header("apply_request");
    let md = vmap! {"after" => list(&[]), "follow" => list(&[]), "timeout" => 0.0f64, "targets" => list(&[]), "retries" => 0i64};
    c.monitor(b"intask", &[b"client"], &h, "", &md, &Value::map(), &[]);
    let held = h.msg_id;
    let now = c.clock();
    assert_eq!(c.hub.scheduler_died(now), (1, 2), "one lb task held unsent, two requests on engines");
    assert_eq!(record_status(&mut c, &held), "EngineError", "the dead scheduler held it");
    let (q, _) = c.ask("queue_request", vmap! {"targets" => Value::Nil, "verbose" => false});
    assert_eq!(q.get("unassigned"), &Value::from(0i64));
    assert_eq!(record_status(&mut c, &late.msg_id), "pending");
    c.finish(&late, "e0", &[b"r"], "ok");
    assert_eq!(record_status(&mut c, &late.msg_id), "ok", "its reply came through the new scheduler");
    c.direct("e1");
    assert_eq!(record_status(&mut c, &lost.msg_id), "ControllerRestarted", "e1 answered later work: the reply was lost");
}

// The hub's per-task bookkeeping stays bounded over many tasks (issue 6), while the
// answers stock gives from its ever-growing sets stay exact: `result_request` status of
// any completed msg_id, `queue_request` counts.

fn many_tasks(nodb: bool) {
    let mut c = Cluster::new(Hub::new(settings_with(nodb, Limits { record_limit: 100, ..Limits::default() }), Instant::now()));
    let first = c.task("first", &[], &[], "e0");
    let mut window = std::collections::VecDeque::new();
    for i in 0..50_000u32 {
        let e = if i % 2 == 0 { "e0" } else { "e1" };
        window.push_back((c.submit("", &[], e), e));
        if window.len() > 32 {
            let (h, e) = window.pop_front().expect("in flight");
            c.finish(&h, e, &[], "ok");
        }
        if i % 1000 == 0 {
            c.direct("e1");
        }
    }
    let last_pending = window.back().expect("some").0.msg_id.clone();
    let b = c.hub.bookkeeping();
    assert_eq!((b.pending, b.seen, b.owners, b.assigned), (32, 32, 32, 32), "{b:?}");
    while let Some((h, e)) = window.pop_front() {
        c.finish(&h, e, &[], "ok");
    }
    let b = c.hub.bookkeeping();
    assert_eq!((b.pending, b.seen, b.owners, b.unassigned, b.queued, b.assigned), (0, 0, 0, 0, 0, 0), "{b:?}");
    assert_eq!(b.completed, 50_001 + 50);
    // One client session; its counter has gaps only where it sent other messages.
    assert!(b.completed_bytes < 20_000, "{b:?}");

    // Stock's answers, exact for the first task as for the last.
    let (r, _) = c.ask("result_request", vmap! {"msg_ids" => list(&[&first, &last_pending]), "status_only" => true});
    assert_eq!(r.get("completed"), &list(&[&first, &last_pending]));
    assert_eq!(r.get("pending"), &list(&[]));
    let (r, _) = c.ask("result_request", vmap! {"msg_ids" => list(&["9b1c2d3e-4f5a6b7c8d9e0f1a2b3c4d5e_1_5"]), "status_only" => true});
    assert_eq!(r.get("ename").as_str(), Some("KeyError"));
    let (q, _) = c.ask("queue_request", vmap! {"targets" => Value::Nil, "verbose" => false});
    assert_eq!(q.get("0").get("completed"), &Value::Int(25_001));
    assert_eq!(q.get("1").get("completed"), &Value::Int(25_000 + 50));
    assert_eq!(q.get("0").get("tasks"), &Value::Int(0));
    // Verbose: the completed ids the store still holds (at most record_limit of them).
    let (q, _) = c.ask("queue_request", vmap! {"targets" => Value::Nil, "verbose" => true});
    let n0 = q.get("0").get("completed").as_array().map_or(0, |a| a.len());
    let n1 = q.get("1").get("completed").as_array().map_or(0, |a| a.len());
    if nodb {
        assert_eq!((n0, n1), (0, 0));
    } else {
        assert!(n0 + n1 > 0 && n0 + n1 <= 100, "{n0} + {n1}");
        let last = q.get("1").get("completed").as_array().and_then(|a| a.last()).and_then(Value::as_str).map(str::to_owned);
        assert_eq!(last.as_deref(), Some(last_pending.as_str()), "completion order, newest last");
    }
}

#[test]
fn many_tasks_bounded_memory_store() {
    many_tasks(false);
}

#[test]
fn many_tasks_bounded_nodb() {
    many_tasks(true);
}

#[test]
fn a_retried_task_leaves_the_first_engines_list() {
    let mut c = mem();
    let h = c.submit("", &[], "e0");
    let (q, _) = c.ask("queue_request", vmap! {"targets" => Value::Nil, "verbose" => true});
    assert_eq!(q.get("0").get("tasks"), &list(&[&h.msg_id]));
    // The engine failed it; the scheduler retries it on e1.
    c.assign(&h, "e1");
    let (q, _) = c.ask("queue_request", vmap! {"targets" => Value::Nil, "verbose" => true});
    assert_eq!(q.get("0").get("tasks"), &list(&[]));
    assert_eq!(q.get("1").get("tasks"), &list(&[&h.msg_id]));
    c.finish(&h, "e1", &[], "ok");
    let (q, _) = c.ask("queue_request", vmap! {"targets" => Value::Nil, "verbose" => false});
    assert_eq!((q.get("0").get("tasks"), q.get("1").get("tasks")), (&Value::Int(0), &Value::Int(0)));
    assert_eq!((q.get("0").get("completed"), q.get("1").get("completed")), (&Value::Int(0), &Value::Int(1)));
    // A destination for a task the hub does not know is not listed (nothing would ever
    // remove it).
    let stray = c.client.new_header("apply_request");
    c.assign(&stray, "e0");
    let b = c.hub.bookkeeping();
    assert_eq!((b.owners, b.assigned), (0, 0));
}
