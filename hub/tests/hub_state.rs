//! The hub state machine without sockets: messages in, `HubOut`s out.

use ippx_hub::hub::{Hub, HubOut, HubSettings, MonitorMsg, Now};
use ippx_hub::records::Limits;
use ippx_protocol::{vmap, EngineId, Header, Parent, Session, Value};
use std::time::Duration;

const PERIOD: Duration = Duration::from_millis(100);

mod common;

fn settings() -> HubSettings {
    common::settings(false, Limits::default(), vec![8, 9])
}

struct Peer {
    s: Session,
}

impl Peer {
    fn new() -> Self {
        Peer { s: common::session() }
    }
    /// (header, packed header, packed content)
    fn msg(&mut self, msg_type: &str, content: &Value) -> (Header, Vec<u8>, Vec<u8>) {
        let h = self.s.new_header(msg_type);
        let hb = self.s.pack(&h).expect("pack");
        let cb = self.s.pack(content).expect("pack");
        (h, hb, cb)
    }
}

fn query(hub: &mut Hub, peer: &mut Peer, msg_type: &str, content: Value, now: Now) -> Vec<HubOut> {
    let (h, hb, cb) = peer.msg(msg_type, &content);
    let mut out = Vec::new();
    hub.query(vec![b"client".to_vec()], &h, &hb, &cb, now, &mut out);
    out
}

fn reply_content(out: &[HubOut], want_type: &str) -> Value {
    for o in out {
        if let HubOut::Reply { msg_type, content, .. } = o {
            if msg_type == want_type {
                return content.clone();
            }
        }
    }
    panic!("no {want_type} in {out:?}");
}

fn last_ping(out: &[HubOut]) -> Vec<u8> {
    out.iter().rev().find_map(|o| if let HubOut::Ping(p) = o { Some(p.clone()) } else { None }).expect("a ping")
}

/// Registers engine `uuid` and completes it with a pong.
fn register(hub: &mut Hub, peer: &mut Peer, uuid: &str, now: Now) -> u64 {
    let out = query(hub, peer, "registration_request", vmap! {"uuid" => uuid}, now);
    let c = reply_content(&out, "registration_reply");
    assert_eq!(c.get("status").as_str(), Some("ok"), "{c:?}");
    let mut out = Vec::new();
    hub.tick(now, &mut out);
    let ping = last_ping(&out);
    let mut out = Vec::new();
    hub.pong(uuid.as_bytes(), &ping, &mut out);
    assert!(out.iter().any(|o| matches!(o, HubOut::Notify { msg_type: "registration_notification", .. })), "{out:?}");
    c.get("id").as_i64().expect("id") as u64
}

#[test]
fn registration_completes_on_first_pong_and_notifies() {
    let t0 = Now::system();
    let mut hub = Hub::new(settings(), t0.at);
    let mut engine = Peer::new();
    let out = query(&mut hub, &mut engine, "registration_request", vmap! {"uuid" => "e0"}, t0);
    let c = reply_content(&out, "registration_reply");
    assert_eq!(c.get("hb_period").as_i64(), Some(100));
    assert_eq!(c.get("connection_info").get("broadcast"), &Value::Array(vec![Value::Int(8), Value::Int(9)]));
    assert_eq!(hub.registry().len(), 0, "not registered before the heart answers");
    let mut out = Vec::new();
    hub.tick(t0, &mut out);
    let ping = last_ping(&out);
    let mut out = Vec::new();
    hub.pong(b"e0", b"not the ping", &mut out);
    assert!(out.is_empty());
    hub.pong(b"e0", &ping, &mut out);
    assert_eq!(hub.registry().len(), 1);
    assert!(out.iter().any(|o| matches!(o, HubOut::SaveState(s) if s.engines.get("0").map(String::as_str) == Some("e0"))));
    // The client then sees it in connection_reply.
    let out = query(&mut hub, &mut Peer::new(), "connection_request", Value::map(), t0);
    assert_eq!(reply_content(&out, "connection_reply").get("engines").get("0").as_str(), Some("e0"));
}

#[test]
fn duplicate_uuid_gets_an_error_reply() {
    let t0 = Now::system();
    let mut hub = Hub::new(settings(), t0.at);
    let mut p = Peer::new();
    register(&mut hub, &mut p, "e0", t0);
    let out = query(&mut hub, &mut p, "registration_request", vmap! {"uuid" => "e0"}, t0);
    let c = reply_content(&out, "registration_reply");
    assert_eq!(c.get("status").as_str(), Some("error"));
    assert_eq!(c.get("ename").as_str(), Some("KeyError"));
}

#[test]
fn registrations_beyond_the_fd_room_are_refused_clearly() {
    let t0 = Now::system();
    let mut hub = Hub::new(HubSettings { max_engines: 2, ..settings() }, t0.at);
    let mut p = Peer::new();
    register(&mut hub, &mut p, "e0", t0);
    // one registered and one waiting for its heart fill the room
    let out = query(&mut hub, &mut p, "registration_request", vmap! {"uuid" => "e1"}, t0);
    assert_eq!(reply_content(&out, "registration_reply").get("status").as_str(), Some("ok"));
    let out = query(&mut hub, &mut p, "registration_request", vmap! {"uuid" => "e2"}, t0);
    let c = reply_content(&out, "registration_reply");
    assert_eq!(c.get("status").as_str(), Some("error"));
    assert!(c.get("evalue").as_str().is_some_and(|v| v.contains("file-descriptor limit")), "{c:?}");
    assert_eq!(hub.registry().len(), 1, "the engines already there are untouched");
}

#[test]
fn stopped_heart_unregisters_with_notification() {
    let t0 = Now::system();
    let mut hub = Hub::new(settings(), t0.at);
    let mut p = Peer::new();
    register(&mut hub, &mut p, "e0", t0);
    let mut all = Vec::new();
    let mut t = t0;
    for _ in 0..6 {
        t += PERIOD;
        hub.tick(t, &mut all);
    }
    assert!(all
        .iter()
        .any(|o| matches!(o, HubOut::Notify { msg_type: "unregistration_notification", content, .. } if content.get("uuid").as_str() == Some("e0"))));
    assert_eq!(hub.registry().len(), 0);
}

/// Lets `e0`'s heart stop until the hub declares it dead; returns the time then.
fn lose(hub: &mut Hub, t0: Now) -> Now {
    let mut all = Vec::new();
    let mut t = t0;
    for _ in 0..6 {
        t += PERIOD;
        hub.tick(t, &mut all);
    }
    assert!(all.iter().any(|o| matches!(o, HubOut::Notify { msg_type: "unregistration_notification", .. })));
    t
}

/// `uuid`'s heart answers the ping of the beat at `t`; returns what the pong and the next
/// beat produced.
fn heart_answers(hub: &mut Hub, uuid: &[u8], t: Now) -> Vec<HubOut> {
    let mut out = Vec::new();
    hub.tick(t, &mut out);
    let ping = last_ping(&out);
    let mut out = Vec::new();
    hub.pong(uuid, &ping, &mut out);
    hub.tick(t + PERIOD, &mut out);
    out
}

#[test]
fn a_lost_engine_whose_heart_answers_again_is_readmitted_under_its_id() {
    let t0 = Now::system();
    let mut hub = Hub::new(settings(), t0.at);
    let mut p = Peer::new();
    let id = register(&mut hub, &mut p, "e0", t0);
    let t = lose(&mut hub, t0);
    assert_eq!(hub.registry().len(), 0);
    // the link is back: the engine's heart answers the next ping
    let out = heart_answers(&mut hub, b"e0", t + PERIOD);
    assert!(
        out.iter().any(|o| matches!(o, HubOut::Notify { msg_type: "registration_notification", content, .. }
            if content.get("id").as_i64() == Some(id as i64) && content.get("uuid").as_str() == Some("e0"))),
        "{out:?}"
    );
    assert!(out.iter().any(|o| matches!(o, HubOut::SaveState(s) if s.engines.get("0").map(String::as_str) == Some("e0"))));
    assert_eq!(hub.registry().by_uuid("e0").map(|e| e.id.0), Some(id));
    assert_eq!(hub.stats.readmitted, 1);
    // its heart is tracked again: it can be lost a second time
    let t = lose(&mut hub, t + PERIOD * 2);
    assert_eq!(hub.registry().len(), 0);
    // ... and after its nanny unregistered it, it stays out (it is gone for good)
    let _ = query(&mut hub, &mut Peer::new(), "unregistration_request", vmap! {"id" => id as i64}, t);
    let out = heart_answers(&mut hub, b"e0", t + PERIOD);
    assert!(!out.iter().any(|o| matches!(o, HubOut::Notify { msg_type: "registration_notification", .. })));
}

#[test]
fn with_readmit_off_a_lost_engine_stays_out_as_on_stock() {
    let t0 = Now::system();
    let mut hub = Hub::new(HubSettings { readmit: false, ..settings() }, t0.at);
    let mut p = Peer::new();
    register(&mut hub, &mut p, "e0", t0);
    let t = lose(&mut hub, t0);
    let out = heart_answers(&mut hub, b"e0", t + PERIOD);
    assert!(!out.iter().any(|o| matches!(o, HubOut::Notify { msg_type: "registration_notification", .. })));
    assert_eq!(hub.registry().len(), 0);
}

#[test]
fn nanny_unregistration_sends_no_reply() {
    let t0 = Now::system();
    let mut hub = Hub::new(settings(), t0.at);
    let mut p = Peer::new();
    let id = register(&mut hub, &mut p, "e0", t0);
    let out = query(&mut hub, &mut Peer::new(), "unregistration_request", vmap! {"id" => id as i64}, t0);
    assert!(!out.iter().any(|o| matches!(o, HubOut::Reply { .. })));
    assert!(out.iter().any(|o| matches!(o, HubOut::Notify { msg_type: "unregistration_notification", .. })));
    // ids are never reused
    assert_eq!(register(&mut hub, &mut p, "e1", t0), 1);
}

#[test]
fn queue_request_with_no_engines_and_bad_targets() {
    let t0 = Now::system();
    let mut hub = Hub::new(settings(), t0.at);
    let mut c = Peer::new();
    let out = query(&mut hub, &mut c, "queue_request", vmap! {"targets" => Value::Nil, "verbose" => false}, t0);
    assert_eq!(reply_content(&out, "queue_reply"), vmap! {"status" => "ok", "unassigned" => 0i64});
    let out = query(&mut hub, &mut c, "queue_request", vmap! {"targets" => Value::Array(vec![Value::Int(7)]), "verbose" => false}, t0);
    assert_eq!(reply_content(&out, "hub_error").get("ename").as_str(), Some("IndexError"));
    let out = query(&mut hub, &mut c, "queue_request", vmap! {"targets" => Value::Array(vec![]), "verbose" => false}, t0);
    assert_eq!(reply_content(&out, "hub_error").get("evalue").as_str(), Some("No Engines Registered"));
}

#[test]
fn unknown_query_gets_hub_error() {
    let t0 = Now::system();
    let mut hub = Hub::new(settings(), t0.at);
    let out = query(&mut hub, &mut Peer::new(), "frobnicate_request", Value::map(), t0);
    let c = reply_content(&out, "hub_error");
    assert_eq!(c.get("evalue").as_str(), Some("Bad Message Type: 'frobnicate_request'"));
    assert_eq!(hub.stats.dropped.get("unknown"), Some(&1));
}

#[test]
fn shutdown_request_replies_notifies_and_stops() {
    let t0 = Now::system();
    let mut hub = Hub::new(settings(), t0.at);
    let out = query(&mut hub, &mut Peer::new(), "shutdown_request", Value::map(), t0);
    assert!(matches!(&out[..], [HubOut::Reply { .. }, HubOut::Notify { msg_type: "shutdown_notification", .. }, HubOut::Shutdown]));
}

/// Frames of a monitor copy as the MUX would publish it.
struct Direct {
    client: Peer,
    engine: Peer,
}

impl Direct {
    fn request(&mut self) -> (Header, Vec<u8>, Vec<u8>, Vec<u8>) {
        let h = self.client.s.new_header("apply_request");
        let hb = self.client.s.pack(&h).expect("p");
        let md = self.client.s.pack(&vmap! {"label" => "lbl"}).expect("p");
        let c = self.client.s.pack(&Value::map()).expect("p");
        (h, hb, md, c)
    }
}

#[test]
fn mux_traffic_feeds_queue_status_and_results() {
    let t0 = Now::system();
    let mut hub = Hub::new(settings(), t0.at);
    let mut reg = Peer::new();
    register(&mut hub, &mut reg, "e0", t0);
    let mut d = Direct { client: Peer::new(), engine: Peer::new() };
    let (h, hb, md, c) = d.request();
    let bufs = vec![b"fn".to_vec(), b"args".to_vec()];
    let routing = vec![b"e0".to_vec(), b"client".to_vec()];
    let mut out = Vec::new();
    hub.monitor(
        b"in",
        &routing,
        MonitorMsg { h: &h, parent_id: String::new(), header: &hb, metadata: &md, content: &c, buffers: &bufs },
        t0,
        &mut out,
    );
    assert_eq!(hub.pending_count(), 1);
    let mut qc = Peer::new();
    let out = query(&mut hub, &mut qc, "queue_request", vmap! {"targets" => Value::Nil, "verbose" => false}, t0);
    assert_eq!(reply_content(&out, "queue_reply").get("0").get("queue").as_i64(), Some(1));
    let out =
        query(&mut hub, &mut qc, "result_request", vmap! {"msg_ids" => Value::Array(vec![h.msg_id.as_str().into()]), "status_only" => false}, t0);
    assert_eq!(reply_content(&out, "result_reply").get("pending"), &Value::Array(vec![h.msg_id.as_str().into()]));

    // IOPub output before the reply
    let mut out = Vec::new();
    let (sh, shb, scb) = d.engine.msg("stream", &vmap! {"name" => "stdout", "text" => "hello\n"});
    let empty = d.engine.s.pack(&Value::map()).expect("p");
    hub.monitor(
        b"iopub",
        &[b"engine.0.stdout".to_vec()],
        MonitorMsg { h: &sh, parent_id: h.msg_id.clone(), header: &shb, metadata: &empty, content: &scb, buffers: &[] },
        t0,
        &mut out,
    );

    let rh = d.engine.s.new_header("apply_reply");
    let rhb = d.engine.s.pack(&rh).expect("p");
    let rmd = d.engine.s.pack(&vmap! {"started" => "2026-01-01T00:00:00.000001Z", "status" => "ok", "engine" => "e0"}).expect("p");
    let rc = d.engine.s.pack(&vmap! {"status" => "ok"}).expect("p");
    let rbufs = vec![b"result".to_vec()];
    let routing = vec![b"client".to_vec(), b"e0".to_vec()];
    hub.monitor(
        b"out",
        &routing,
        MonitorMsg { h: &rh, parent_id: h.msg_id.clone(), header: &rhb, metadata: &rmd, content: &rc, buffers: &rbufs },
        t0,
        &mut out,
    );
    assert_eq!(hub.pending_count(), 0);

    let out = query(&mut hub, &mut qc, "queue_request", vmap! {"targets" => Value::Int(0), "verbose" => true}, t0);
    let q = reply_content(&out, "queue_reply");
    assert_eq!(q.get("0").get("completed"), &Value::Array(vec![h.msg_id.as_str().into()]));
    assert_eq!(q.get("0").get("queue"), &Value::Array(vec![]));

    let out =
        query(&mut hub, &mut qc, "result_request", vmap! {"msg_ids" => Value::Array(vec![h.msg_id.as_str().into()]), "status_only" => false}, t0);
    let (content, buffers) = out
        .iter()
        .find_map(|o| if let HubOut::Reply { content, buffers, .. } = o { Some((content.clone(), buffers.clone())) } else { None })
        .expect("reply");
    let entry = content.get(&h.msg_id);
    assert_eq!(entry.get("io").get("stdout").as_str(), Some("hello\n"));
    assert_eq!(entry.get("metadata").get("label").as_str(), Some("lbl"));
    assert_eq!(entry.get("result_content").get("status").as_str(), Some("ok"));
    assert!(entry.get("received").as_str().is_some_and(|s| s.ends_with('Z')));
    assert_eq!(buffers, rbufs);

    let out = query(&mut hub, &mut qc, "history_request", Value::map(), t0);
    assert_eq!(reply_content(&out, "history_reply").get("history"), &Value::Array(vec![h.msg_id.as_str().into()]));

    let out = query(&mut hub, &mut qc, "result_request", vmap! {"msg_ids" => Value::Array(vec!["nope".into()]), "status_only" => false}, t0);
    assert_eq!(reply_content(&out, "result_reply").get("ename").as_str(), Some("KeyError"));
}

#[test]
fn stranded_direct_requests_become_engine_errors() {
    let t0 = Now::system();
    let mut hub = Hub::new(settings(), t0.at);
    let mut reg = Peer::new();
    register(&mut hub, &mut reg, "e0", t0);
    let mut d = Direct { client: Peer::new(), engine: Peer::new() };
    let (h, hb, md, c) = d.request();
    let mut out = Vec::new();
    hub.monitor(
        b"in",
        &[b"e0".to_vec(), b"client".to_vec()],
        MonitorMsg { h: &h, parent_id: String::new(), header: &hb, metadata: &md, content: &c, buffers: &[] },
        t0,
        &mut out,
    );
    hub.unregister(EngineId(0), t0, &mut out);
    hub.tick(t0 + Duration::from_millis(500), &mut out);
    assert_eq!(hub.pending_count(), 1, "not before registration_timeout");
    hub.tick(t0 + Duration::from_millis(1100), &mut out);
    assert_eq!(hub.pending_count(), 0);
    let rec = hub.record(&h.msg_id).expect("record");
    assert_eq!(rec.result_content.get("ename").as_str(), Some("EngineError"));
    assert!(rec.completed.is_some());
    let _ = Parent::None;
}
