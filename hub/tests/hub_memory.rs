//! The hub's per-task bookkeeping stays bounded over many tasks (issue 6), while the
//! answers stock gives from its ever-growing sets stay exact: `result_request` status of
//! any completed msg_id, `queue_request` counts.

use ippx_hub::hub::{Hub, HubOut, HubSettings, MonitorMsg};
use ippx_hub::records::Limits;
use ippx_protocol::content::EnginePorts;
use ippx_protocol::{vmap, Header, Packer, Session, SessionConfig, Value};
use std::time::{Duration, Instant};

fn settings(nodb: bool) -> HubSettings {
    HubSettings {
        hb_period: Duration::from_millis(100),
        max_misses: 2,
        registration_timeout: Duration::from_secs(1),
        engine_ports: EnginePorts {
            interface: "tcp://127.0.0.1".into(),
            registration: 1,
            control: 2,
            mux: 3,
            task: 4,
            iopub: 5,
            hb_ping: 6,
            hb_pong: 7,
            broadcast: vec![8],
        },
        packer: Packer::Msgpack,
        limits: Limits { record_limit: 100, ..Limits::default() },
        nodb,
    }
}

fn session() -> Session {
    Session::new(SessionConfig::new(b"key".to_vec(), Packer::Msgpack)).expect("session")
}

fn list(ids: &[&str]) -> Value {
    Value::Array(ids.iter().map(|s| Value::from(*s)).collect())
}

struct Cluster {
    hub: Hub,
    client: Session,
    engine: Session,
    sched: Session,
    now: Instant,
}

impl Cluster {
    fn new(nodb: bool) -> Cluster {
        let now = Instant::now();
        let mut c = Cluster { hub: Hub::new(settings(nodb), now), client: session(), engine: session(), sched: session(), now };
        c.register("e0");
        c.register("e1");
        c
    }

    fn register(&mut self, uuid: &str) {
        self.ask("registration_request", vmap! {"uuid" => uuid});
        let mut out = Vec::new();
        self.hub.tick(self.now, &mut out);
        let ping = out.iter().rev().find_map(|o| if let HubOut::Ping(p) = o { Some(p.clone()) } else { None }).expect("ping");
        self.hub.pong(uuid.as_bytes(), &ping, &mut out);
    }

    fn ask(&mut self, msg_type: &str, c: Value) -> Value {
        let h = self.client.new_header(msg_type);
        let hb = self.client.pack(&h).expect("pack");
        let cb = self.client.pack(&c).expect("pack");
        let mut out = Vec::new();
        self.hub.query(vec![b"client".to_vec()], &h, &hb, &cb, self.now, &mut out);
        out.into_iter().find_map(|o| if let HubOut::Reply { content, .. } = o { Some(content) } else { None }).expect("a reply")
    }

    fn monitor(&mut self, topic: &[u8], routing: &[&[u8]], h: &Header, parent: &str, md: &Value, c: &Value) {
        let s = &self.client;
        let (hb, mb, cb) = (s.pack(h).expect("p"), s.pack(md).expect("p"), s.pack(c).expect("p"));
        let routing: Vec<Vec<u8>> = routing.iter().map(|r| r.to_vec()).collect();
        let msg = MonitorMsg { h, parent_id: parent.to_owned(), header: &hb, metadata: &mb, content: &cb, buffers: &[] };
        let mut out = Vec::new();
        self.hub.monitor(topic, &routing, msg, self.now, &mut out);
    }

    fn submit(&mut self) -> Header {
        let h = self.client.new_header("apply_request");
        self.monitor(b"intask", &[b"client"], &h, "", &vmap! {"retries" => 1i64}, &Value::map());
        h
    }

    fn assign(&mut self, req: &Header, engine: &str) {
        let d = self.sched.new_header("task_destination");
        self.monitor(b"tracktask", &[b"sched"], &d, "", &Value::map(), &vmap! {"msg_id" => req.msg_id.as_str(), "engine_id" => engine});
    }

    fn finish(&mut self, req: &Header, engine: &str, status: &str) {
        let rh = self.engine.new_header("apply_reply");
        let md = vmap! {"started" => "2026-01-01T00:00:00.000001Z", "dependencies_met" => true, "engine" => engine, "status" => status};
        self.monitor(b"outtask", &[b"client", engine.as_bytes()], &rh, &req.msg_id, &md, &vmap! {"status" => status});
    }

    /// A direct request to `engine` and its reply.
    fn direct(&mut self, engine: &str) -> String {
        let h = self.client.new_header("apply_request");
        self.monitor(b"in", &[engine.as_bytes(), b"client"], &h, "", &Value::map(), &Value::map());
        let rh = self.engine.new_header("apply_reply");
        let md = vmap! {"status" => "ok", "engine" => engine};
        self.monitor(b"out", &[b"client", engine.as_bytes()], &rh, &h.msg_id, &md, &vmap! {"status" => "ok"});
        h.msg_id
    }

    fn status_only(&mut self, ids: &[&str]) -> Value {
        self.ask("result_request", vmap! {"msg_ids" => list(ids), "status_only" => true})
    }
}

fn many_tasks(nodb: bool) {
    let mut c = Cluster::new(nodb);
    let first = c.submit();
    c.assign(&first, "e0");
    c.finish(&first, "e0", "ok");
    let mut window = std::collections::VecDeque::new();
    for i in 0..50_000u32 {
        let h = c.submit();
        let e = if i % 2 == 0 { "e0" } else { "e1" };
        c.assign(&h, e);
        window.push_back((h, e));
        if window.len() > 32 {
            let (h, e) = window.pop_front().expect("in flight");
            c.finish(&h, e, "ok");
        }
        if i % 1000 == 0 {
            c.direct("e1");
        }
    }
    let last_pending = window.back().expect("some").0.msg_id.clone();
    let b = c.hub.bookkeeping();
    assert_eq!((b.pending, b.seen, b.owners, b.assigned), (32, 32, 32, 32), "{b:?}");
    while let Some((h, e)) = window.pop_front() {
        c.finish(&h, e, "ok");
    }
    let b = c.hub.bookkeeping();
    assert_eq!((b.pending, b.seen, b.owners, b.unassigned, b.queued, b.assigned), (0, 0, 0, 0, 0, 0), "{b:?}");
    assert_eq!(b.completed, 50_001 + 50);
    // One client session; its counter has gaps only where it sent other messages.
    assert!(b.completed_bytes < 20_000, "{b:?}");

    // Stock's answers, exact for the first task as for the last.
    let r = c.status_only(&[&first.msg_id, &last_pending]);
    assert_eq!(r.get("completed"), &list(&[&first.msg_id, &last_pending]));
    assert_eq!(r.get("pending"), &list(&[]));
    let r = c.ask("result_request", vmap! {"msg_ids" => list(&["9b1c2d3e-4f5a6b7c8d9e0f1a2b3c4d5e_1_5"]), "status_only" => true});
    assert_eq!(r.get("ename").as_str(), Some("KeyError"));
    let q = c.ask("queue_request", vmap! {"targets" => Value::Nil, "verbose" => false});
    assert_eq!(q.get("0").get("completed"), &Value::Int(25_001));
    assert_eq!(q.get("1").get("completed"), &Value::Int(25_000 + 50));
    assert_eq!(q.get("0").get("tasks"), &Value::Int(0));
    // Verbose: the completed ids the store still holds (at most record_limit of them).
    let q = c.ask("queue_request", vmap! {"targets" => Value::Nil, "verbose" => true});
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
fn many_tasks_memory_store() {
    many_tasks(false);
}

#[test]
fn many_tasks_nodb() {
    many_tasks(true);
}

#[test]
fn a_retried_task_leaves_the_first_engines_list() {
    let mut c = Cluster::new(false);
    let h = c.submit();
    c.assign(&h, "e0");
    let q = c.ask("queue_request", vmap! {"targets" => Value::Nil, "verbose" => true});
    assert_eq!(q.get("0").get("tasks"), &list(&[&h.msg_id]));
    // The engine failed it; the scheduler retries it on e1.
    c.assign(&h, "e1");
    let q = c.ask("queue_request", vmap! {"targets" => Value::Nil, "verbose" => true});
    assert_eq!(q.get("0").get("tasks"), &list(&[]));
    assert_eq!(q.get("1").get("tasks"), &list(&[&h.msg_id]));
    c.finish(&h, "e1", "ok");
    let q = c.ask("queue_request", vmap! {"targets" => Value::Nil, "verbose" => false});
    assert_eq!((q.get("0").get("tasks"), q.get("1").get("tasks")), (&Value::Int(0), &Value::Int(0)));
    assert_eq!((q.get("0").get("completed"), q.get("1").get("completed")), (&Value::Int(0), &Value::Int(1)));
    // A destination for a task the hub does not know is not listed (nothing would ever
    // remove it).
    let stray = c.client.new_header("apply_request");
    c.assign(&stray, "e0");
    let b = c.hub.bookkeeping();
    assert_eq!((b.owners, b.assigned), (0, 0));
}
