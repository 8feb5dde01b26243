//! Tests of the status snapshot over a real hub state machine.

use super::*;

use crate::hub::{HubOut, HubSettings, MonitorMsg, Now};
use crate::records::Limits;
use ippx_protocol::content::EnginePorts;
use ippx_protocol::datetime::{format_iso, now as utc_now};
use ippx_protocol::{vmap, Header, Packer, Value};

fn settings() -> HubSettings {
    HubSettings {
        hb_period: Duration::from_secs(3),
        max_misses: 10,
        registration_timeout: Duration::from_secs(5),
        engine_ports: EnginePorts {
            interface: "tcp://127.0.0.1".into(),
            registration: 1,
            control: 2,
            mux: 3,
            task: 4,
            iopub: 5,
            hb_ping: 6,
            hb_pong: 7,
            broadcast: vec![8, 9],
        },
        packer: Packer::Msgpack,
        limits: Limits { record_limit: 1024, size_limit: 1 << 30, cull_fraction: 0.1 },
        nodb: false,
        max_engines: usize::MAX,
        readmit: true,
    }
}

/// Both clocks, the monotonic one as given.
fn n(at: Instant) -> Now {
    Now { at, wall: utc_now() }
}

fn pack(v: &Value) -> Vec<u8> {
    Packer::Msgpack.pack(v).expect("pack")
}

fn header(msg_id: &str, msg_type: &str) -> Header {
    Header {
        msg_id: msg_id.into(),
        msg_type: msg_type.into(),
        username: "u".into(),
        session: "s".into(),
        date: format_iso(&utc_now()),
        version: "5.3".into(),
    }
}

/// Registers engine `uuid` as a real one does: registration_request, then its heart.
fn register(hub: &mut Hub, uuid: &str, now: Instant) {
    let mut out: Vec<HubOut> = Vec::new();
    let h = header(&format!("reg-{uuid}"), "registration_request");
    hub.query(vec![b"peer".to_vec()], &h, &pack(&Value::map()), &pack(&vmap! {"uuid" => uuid}), n(now), &mut out);
    hub.pong(uuid.as_bytes(), b"x", &mut out);
    // The probe ping makes a payload the pong can echo; tick then completes.
    hub.tick(n(now), &mut out);
    let ping = out.iter().rev().find_map(|o| if let HubOut::Ping(p) = o { Some(p.clone()) } else { None }).expect("a ping");
    hub.pong(uuid.as_bytes(), &ping, &mut out);
}

fn task(hub: &mut Hub, msg_id: &str, label: Option<&str>, engine_uuid: &str, status: &str, now: Instant) {
    let mut out: Vec<HubOut> = Vec::new();
    let h = header(msg_id, "apply_request");
    let hb = pack(&Value::map());
    let md = match label {
        Some(l) => pack(&vmap! {"label" => l}),
        None => pack(&Value::map()),
    };
    let c = pack(&Value::map());
    hub.monitor(
        b"intask",
        &[],
        MonitorMsg { h: &h, parent_id: String::new(), header: &hb, metadata: &md, content: &c, buffers: &[] },
        n(now),
        &mut out,
    );
    let dest = pack(&vmap! {"msg_id" => msg_id, "engine_id" => engine_uuid});
    let dh = header(&format!("d-{msg_id}"), "task_destination");
    hub.monitor(
        b"tracktask",
        &[],
        MonitorMsg { h: &dh, parent_id: String::new(), header: &hb, metadata: &hb, content: &dest, buffers: &[] },
        n(now),
        &mut out,
    );
    if status.is_empty() {
        return;
    }
    let rh = header(&format!("r-{msg_id}"), "apply_reply");
    let rmd = pack(&vmap! {"status" => status, "engine" => engine_uuid, "started" => format_iso(&utc_now())});
    let rc = if status == "error" {
        pack(&vmap! {"status" => "error", "ename" => "ZeroDivisionError", "evalue" => "division by zero"})
    } else {
        pack(&vmap! {"status" => "ok"})
    };
    hub.monitor(
        b"outtask",
        &[],
        MonitorMsg { h: &rh, parent_id: msg_id.into(), header: &hb, metadata: &rmd, content: &rc, buffers: &[] },
        n(now + Duration::from_millis(2)),
        &mut out,
    );
}

#[test]
fn snapshot_reports_engines_tasks_failures_labels_and_store() {
    let t0 = Instant::now();
    let mut hub = Hub::new(settings(), t0);
    register(&mut hub, "e0", t0);
    register(&mut hub, "e1", t0);
    assert_eq!(hub.registry().len(), 2);
    hub.status.set_host(b"e0", "10.1.2.3");
    for i in 0..5 {
        task(&mut hub, &format!("ok{i}"), Some("fit"), "e0", "ok", t0);
    }
    task(&mut hub, "bad", Some("fit"), "e1", "error", t0);
    task(&mut hub, "waiting1", Some("fit"), "e1", "", t0);
    task(&mut hub, "waiting2", None, "e1", "", t0);
    let s = hub.status_snapshot(&StatusQuery::default(), t0 + Duration::from_millis(10));
    assert_eq!(s.version, api::SCHEMA_VERSION);
    assert_eq!((s.engines.registered, s.engines.registered_total, s.engines.late), (2, 2, 0));
    assert_eq!(s.tasks.completed_total, 5);
    assert_eq!(s.tasks.failed_total, 1);
    assert_eq!((s.tasks.pending, s.tasks.running, s.tasks.queued, s.tasks.unassigned), (2, 1, 1, 0));
    let e0 = s.engines.list.iter().find(|e| e.id == 0).expect("e0");
    assert_eq!((e0.done, e0.running, e0.host.as_deref()), (5, 0, Some("10.1.2.3")));
    let e1 = s.engines.list.iter().find(|e| e.id == 1).expect("e1");
    assert_eq!((e1.done, e1.running, e1.queued), (1, 1, 1));
    assert!(e1.last_heartbeat_age_s.is_some());
    assert_eq!(s.engines.hosts.len(), 2);
    assert_eq!(s.failures.len(), 1);
    let f = &s.failures[0];
    assert_eq!((f.msg_id.as_str(), f.engine, f.ename.as_str(), f.evalue.as_str()), ("bad", Some(1), "ZeroDivisionError", "division by zero"));
    assert_eq!(f.label.as_deref(), Some("fit"));
    assert_eq!(s.labels, vec![api::LabelOut { label: "fit".into(), total: 7, done: 6, ok: 5, failed: 1, aborted: 0, pending: 1 }]);
    assert_eq!(s.store.backend, "DictDB");
    assert_eq!(s.store.records, Some(8));
    assert_eq!((s.timeline.tasks, s.timeline.finished_since_start), (6, 6));
    // JSON shape: the top-level keys a script relies on.
    let v = serde_json::to_value(&s).expect("json");
    for k in ["version", "engines", "tasks", "rates", "latency", "failures", "labels", "store", "timeline", "cost"] {
        assert!(v.get(k).is_some(), "missing {k}");
    }
    assert_eq!(v["engines"]["list"][1]["state"], "ok");

    // A lost engine is listed; its queued work is counted as lost with it later.
    let mut out: Vec<HubOut> = Vec::new();
    hub.unregister(ippx_protocol::EngineId(0), n(t0), &mut out);
    let s = hub.status_snapshot(&StatusQuery::default(), t0 + Duration::from_secs(1));
    assert_eq!((s.engines.registered, s.engines.lost_total, s.engines.lost.len()), (1, 1, 1));
    assert_eq!(s.engines.lost[0].host.as_deref(), Some("10.1.2.3"));
    // Late: no heartbeat for more than two periods.
    let s = hub.status_snapshot(&StatusQuery::default(), t0 + Duration::from_secs(60));
    assert_eq!(s.engines.late, 1);
    assert_eq!(s.engines.list[0].state, "late");
}

#[test]
fn a_thousand_engines_are_paged_and_aggregated() {
    let t0 = Instant::now();
    let mut hub = Hub::new(settings(), t0);
    for i in 0..1000 {
        let uuid = format!("eng{i}");
        register(&mut hub, &uuid, t0);
        hub.status.set_host(uuid.as_bytes(), &format!("node{}", i % 10));
    }
    assert_eq!(hub.registry().len(), 1000);
    task(&mut hub, "one", None, "eng500", "ok", t0);
    let q = StatusQuery { offset: 0, limit: 50, sort: Sort::Done };
    let s = hub.status_snapshot(&q, t0);
    assert_eq!(s.engines.list.len(), 50);
    assert_eq!(s.engines.page.total, 1000);
    assert_eq!(s.engines.list[0].id, 500, "most done first");
    assert_eq!(s.engines.hosts.len(), 10);
    assert!(s.engines.hosts.iter().all(|h| h.engines == 100));
    let last = hub.status_snapshot(&StatusQuery { offset: 980, limit: 50, sort: Sort::Id }, t0);
    assert_eq!(last.engines.list.len(), 20);
    assert_eq!(last.engines.list.last().map(|e| e.id), Some(999));
    let huge = hub.status_snapshot(&StatusQuery { offset: 0, limit: usize::MAX, sort: Sort::Id }, t0);
    assert_eq!(huge.engines.list.len(), MAX_PAGE);
    // The whole snapshot stays small enough to poll: well under a megabyte.
    let json = serde_json::to_string(&s).expect("json");
    assert!(json.len() < 100_000, "{}", json.len());
}

#[tokio::test]
async fn link_round_trip_and_back_pressure() {
    let t0 = Instant::now();
    let mut hub = Hub::new(settings(), t0);
    let link = hub.status_link();
    let l2 = link.clone();
    let asker = tokio::spawn(async move { l2.status(StatusQuery::default()).await });
    // The hub's loop turn.
    let mut answered = false;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if link.is_wanted() {
            hub.answer_status_requests(Instant::now());
            answered = true;
            break;
        }
    }
    assert!(answered);
    let s = asker.await.expect("join").expect("status");
    assert_eq!(s.engines.registered, 0);
    // Nothing wanted: nothing done.
    assert!(!link.is_wanted());
    hub.answer_status_requests(Instant::now());
    // Queue full: refused at once rather than piling up.
    let mut waiting = Vec::new();
    for _ in 0..MAX_QUEUED {
        let l = link.clone();
        waiting.push(tokio::spawn(async move { l.timeline().await.map(|e| e.entries.len()) }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(link.status(StatusQuery::default()).await.err(), Some(StatusError::Busy));
    hub.answer_status_requests(Instant::now());
    for w in waiting {
        assert_eq!(w.await.expect("join"), Ok(0));
    }
    // The hub gone: the request fails instead of hanging.
    drop(hub);
    let l = link.clone();
    let r = tokio::spawn(async move { l.status(StatusQuery::default()).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    link.take();
    assert_eq!(r.await.expect("join").err(), Some(StatusError::Gone));
}
