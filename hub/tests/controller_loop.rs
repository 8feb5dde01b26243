//! The controller's socket loops in-process: `controller::run` (hub + scheduler thread)
//! on 127.0.0.1 with OS-chosen ports, driven by raw zmq peers that speak the protocol
//! as a stock engine and Client do. Covers registration, a direct and a load-balanced
//! task (reply to the client, record in the hub), forged messages, and an engine whose
//! heart stops.

use ippx_hub::cli::HubConfig;
use ippx_hub::controller::{run, Stopped};
use ippx_protocol::connection::{self, ClientConnectionFile, EngineConnectionFile};
use ippx_protocol::datetime::{format_iso, now};
use ippx_protocol::{vmap, Header, Packer, Parent, Session, SessionConfig, Value};
use ippx_transport::{self as tp, zmq, zmq::SocketType};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const KEY: &str = "controller-loop-key";
const PING_MS: u64 = 100;
const MISSES: u32 = 3;

/// A controller running on a thread of the test, stopped (and joined) on drop.
struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    join: Option<JoinHandle<anyhow::Result<Stopped>>>,
    engine: EngineConnectionFile,
    client: ClientConnectionFile,
    _dir: tempfile::TempDir,
}

impl Running {
    fn start() -> Running {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = HubConfig {
            profile_dir: Some(dir.path().to_path_buf()),
            ping_ms: PING_MS,
            max_misses: MISSES,
            key: Some(KEY.into()),
            ..HubConfig::default()
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let join = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(run(&cfg, async move {
                let _ = rx.await;
            }))
        });
        let sec = dir.path().join("security");
        let deadline = Instant::now() + Duration::from_secs(20);
        let (engine, client) = loop {
            let e = connection::read::<EngineConnectionFile>(&sec.join("ipcontroller-engine.json"));
            let c = connection::read::<ClientConnectionFile>(&sec.join("ipcontroller-client.json"));
            if let (Ok(e), Ok(c)) = (e, c) {
                break (e, c);
            }
            assert!(!join.is_finished(), "the controller exited before writing its connection files");
            assert!(Instant::now() < deadline, "no connection files within 20 s");
            std::thread::sleep(Duration::from_millis(20));
        };
        Running { stop: Some(tx), join: Some(join), engine, client, _dir: dir }
    }

    fn engine_url(&self, port: u16) -> String {
        connection::url(&self.engine.interface, port)
    }

    fn client_url(&self, port: u16) -> String {
        connection::url(&self.client.interface, port)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(j) = self.join.take() {
            let r = j.join().expect("controller thread");
            if !std::thread::panicking() {
                assert_eq!(r.expect("controller run"), Stopped::Shutdown);
            }
        }
    }
}

fn session() -> Session {
    Session::new(SessionConfig::new(KEY.as_bytes().to_vec(), Packer::Msgpack)).expect("session")
}

fn socket(ctx: &zmq::Context, kind: SocketType, identity: Option<&[u8]>, url: &str) -> zmq::Socket {
    let s = tp::socket(ctx, kind, identity).expect("socket");
    tp::connect(&s, url).expect("connect");
    s
}

/// Waits up to `timeout` for a message on `s`.
fn recv(s: &zmq::Socket, timeout: Duration) -> Option<Vec<Vec<u8>>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(m) = tp::try_recv(s).expect("recv") {
            return Some(m.into_iter().map(|f| f.to_vec()).collect());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let _ = tp::poll(&[s], tp::ceil_ms(left.min(Duration::from_millis(50))));
    }
}

/// Receives until a message of `msg_type` arrives; returns its frames before the
/// delimiter, header and content.
fn recv_type(sess: &mut Session, s: &zmq::Socket, msg_type: &str, timeout: Duration) -> Option<(Vec<Vec<u8>>, Header, Value)> {
    let deadline = Instant::now() + timeout;
    loop {
        let frames = recv(s, deadline.saturating_duration_since(Instant::now()))?;
        let (env, h) = sess.receive(frames, false).expect("a valid message from the controller");
        if h.msg_type == msg_type {
            let c: Value = sess.unpack(env.content_bytes()).expect("content");
            return Some((env.idents().to_vec(), h, c));
        }
    }
}

/// A stock-shaped engine: registration, a heart that can be stopped, and MUX and task
/// DEALERs that answer every `apply_request` with an ok `apply_reply`.
struct Engine {
    uuid: String,
    id: i64,
    beating: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    join: Option<JoinHandle<()>>,
}

impl Engine {
    fn start(ctl: &Running, ctx: &zmq::Context, uuid: &str) -> Engine {
        let mut sess = session();
        let reg = socket(ctx, SocketType::DEALER, None, &ctl.engine_url(ctl.engine.registration));
        let (_, frames) = sess.serialize(vec![], "registration_request", Parent::None, &Value::map(), &vmap! {"uuid" => uuid}, vec![]).expect("pack");
        tp::send(&reg, frames).expect("send");
        let (_, _, reply) = recv_type(&mut sess, &reg, "registration_reply", Duration::from_secs(10)).expect("registration_reply");
        assert_eq!(reply.get("status").as_str(), Some("ok"), "{reply:?}");
        let id = reply.get("id").as_i64().expect("id");
        let ping = socket(ctx, SocketType::SUB, None, &ctl.engine_url(ctl.engine.hb_ping));
        ping.set_subscribe(b"").expect("subscribe");
        let pong = socket(ctx, SocketType::DEALER, Some(uuid.as_bytes()), &ctl.engine_url(ctl.engine.hb_pong));
        let mux = socket(ctx, SocketType::DEALER, Some(uuid.as_bytes()), &ctl.engine_url(ctl.engine.mux));
        let task = socket(ctx, SocketType::DEALER, Some(uuid.as_bytes()), &ctl.engine_url(ctl.engine.task));
        let beating = Arc::new(AtomicBool::new(true));
        let done = Arc::new(AtomicBool::new(false));
        let (b, d, u) = (beating.clone(), done.clone(), uuid.to_owned());
        let join = std::thread::spawn(move || {
            let mut sess = session();
            while !d.load(Ordering::Relaxed) {
                let _ = tp::poll(&[&ping, &mux, &task], 20);
                while let Ok(Some(p)) = tp::try_recv(&ping) {
                    if b.load(Ordering::Relaxed) {
                        let _ = tp::send(&pong, p.into_iter().map(|f| f.to_vec()));
                    }
                }
                for s in [&mux, &task] {
                    while let Ok(Some(m)) = tp::try_recv(s) {
                        let frames: Vec<Vec<u8>> = m.into_iter().map(|f| f.to_vec()).collect();
                        let Ok((env, h)) = sess.receive(frames, true) else { continue };
                        if h.msg_type != "apply_request" {
                            continue;
                        }
                        let md = vmap! {"status" => "ok", "dependencies_met" => true, "engine" => u.as_str(), "started" => format_iso(&now())};
                        let (_, reply) = sess
                            .serialize(
                                env.idents().to_vec(),
                                "apply_reply",
                                Parent::Raw(env.header_bytes()),
                                &md,
                                &vmap! {"status" => "ok"},
                                vec![b"result".to_vec()],
                            )
                            .expect("pack");
                        let _ = tp::send(s, reply);
                    }
                }
            }
        });
        Engine { uuid: uuid.to_owned(), id, beating, done, join: Some(join) }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

/// A Client: the query DEALER, the notification SUB, and MUX and task DEALERs.
struct Client {
    sess: Session,
    query: zmq::Socket,
    notif: zmq::Socket,
    mux: zmq::Socket,
    task: zmq::Socket,
}

impl Client {
    fn new(ctl: &Running, ctx: &zmq::Context) -> Client {
        let notif = socket(ctx, SocketType::SUB, None, &ctl.client_url(ctl.client.notification));
        notif.set_subscribe(b"").expect("subscribe");
        Client {
            sess: session(),
            query: socket(ctx, SocketType::DEALER, None, &ctl.client_url(ctl.client.registration)),
            notif,
            mux: socket(ctx, SocketType::DEALER, None, &ctl.client_url(ctl.client.mux)),
            task: socket(ctx, SocketType::DEALER, None, &ctl.client_url(ctl.client.task)),
        }
    }

    fn ask(&mut self, msg_type: &str, content: Value, reply_type: &str) -> Value {
        let (_, frames) = self.sess.serialize(vec![], msg_type, Parent::None, &Value::map(), &content, vec![]).expect("pack");
        tp::send(&self.query, frames).expect("send");
        recv_type(&mut self.sess, &self.query, reply_type, Duration::from_secs(10)).unwrap_or_else(|| panic!("no {reply_type}")).2
    }

    /// The engines the hub lists, as (id, uuid).
    fn engines(&mut self) -> Vec<(String, String)> {
        let c = self.ask("connection_request", Value::map(), "connection_reply");
        match c.get("engines") {
            Value::Map(m) => m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect(),
            _ => Vec::new(),
        }
    }

    fn wait_engines(&mut self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.engines().len() != n {
            assert!(Instant::now() < deadline, "the hub does not list {n} engine(s): {:?}", self.engines());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn apply(&mut self, on_mux_to: Option<&str>) -> Header {
        let idents = on_mux_to.map(|u| vec![u.as_bytes().to_vec()]).unwrap_or_default();
        let sock = if on_mux_to.is_some() { &self.mux } else { &self.task };
        let (h, frames) = self
            .sess
            .serialize(idents, "apply_request", Parent::None, &Value::map(), &Value::map(), vec![b"f".to_vec(), b"args".to_vec()])
            .expect("pack");
        tp::send(sock, frames).expect("send");
        h
    }

    fn reply_to(&mut self, lb: bool, msg_id: &str) -> Value {
        let sock = if lb { &self.task } else { &self.mux };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let frames = recv(sock, deadline.saturating_duration_since(Instant::now())).expect("a reply within 10 s");
            let (env, h) = self.sess.receive(frames, false).expect("valid reply");
            let parent: Value = self.sess.unpack(env.parent_bytes()).expect("parent");
            if h.msg_type == "apply_reply" && parent.get("msg_id").as_str() == Some(msg_id) {
                return self.sess.unpack(env.metadata_bytes()).expect("metadata");
            }
        }
    }

    /// The hub's record of `msg_id`, once it has completed.
    fn result(&mut self, msg_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let c = self.ask("result_request", vmap! {"msg_ids" => Value::Array(vec![Value::from(msg_id)]), "status_only" => false}, "result_reply");
            if c.get(msg_id) != &Value::Nil {
                return c.get(msg_id).clone();
            }
            assert!(Instant::now() < deadline, "no result for {msg_id}: {c:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn an_engine_registers_and_runs_a_direct_and_a_load_balanced_task() {
    let ctl = Running::start();
    let ctx = zmq::Context::new();
    let mut client = Client::new(&ctl, &ctx);
    // Let the notification subscription reach the hub's PUB before anything happens.
    std::thread::sleep(Duration::from_millis(200));
    let engine = Engine::start(&ctl, &ctx, "engine-0");
    assert_eq!(engine.id, 0);
    client.wait_engines(1);
    let (_, _, n) =
        recv_type(&mut client.sess, &client.notif, "registration_notification", Duration::from_secs(5)).expect("registration_notification");
    assert_eq!((n.get("id").as_i64(), n.get("uuid").as_str()), (Some(0), Some("engine-0")));

    let direct = client.apply(Some(&engine.uuid));
    let md = client.reply_to(false, &direct.msg_id);
    assert_eq!(md.get("engine").as_str(), Some("engine-0"));
    let lb = client.apply(None);
    let md = client.reply_to(true, &lb.msg_id);
    assert_eq!(md.get("status").as_str(), Some("ok"));

    // The hub saw both through the monitor copies and keeps their records.
    for id in [&direct.msg_id, &lb.msg_id] {
        let r = client.result(id);
        assert_eq!(r.get("result_metadata").get("status").as_str(), Some("ok"), "{r:?}");
    }
    let q = client.ask("queue_request", vmap! {"targets" => Value::Nil, "verbose" => false}, "queue_reply");
    assert_eq!(q.get("0").get("completed").as_i64(), Some(2), "{q:?}");
    assert_eq!(q.get("unassigned").as_i64(), Some(0));
}

#[test]
fn forged_messages_are_not_acted_on() {
    let ctl = Running::start();
    let ctx = zmq::Context::new();
    let mut client = Client::new(&ctl, &ctx);
    let engine = Engine::start(&ctl, &ctx, "engine-f");
    client.wait_engines(1);
    // A registration and a task signed with another key: neither is acted on.
    let mut forger = Session::new(SessionConfig::new(b"not-the-key".to_vec(), Packer::Msgpack)).expect("session");
    let reg = socket(&ctx, SocketType::DEALER, None, &ctl.engine_url(ctl.engine.registration));
    let (_, frames) =
        forger.serialize(vec![], "registration_request", Parent::None, &Value::map(), &vmap! {"uuid" => "forged"}, vec![]).expect("pack");
    tp::send(&reg, frames).expect("send");
    let (forged_task, frames) = forger.serialize(vec![], "apply_request", Parent::None, &Value::map(), &Value::map(), vec![]).expect("pack");
    tp::send(&client.task, frames).expect("send");
    // A message that is not even framed as one.
    tp::send(&client.task, [b"garbage".to_vec()]).expect("send");
    // The good task sent after them still runs, and is the only one the hub knows.
    let good = client.apply(None);
    let md = client.reply_to(true, &good.msg_id);
    assert_eq!(md.get("engine").as_str(), Some(engine.uuid.as_str()));
    assert_eq!(client.engines().len(), 1, "a forged registration must not register");
    // ... nor answered: a stranger learns nothing (issue 14, as stock).
    assert_eq!(reg.poll(zmq::POLLIN, 500).expect("poll"), 0, "the hub answered a message signed with another key");
    let c = client.ask(
        "result_request",
        vmap! {"msg_ids" => Value::Array(vec![Value::from(forged_task.msg_id.as_str())]), "status_only" => true},
        "result_reply",
    );
    assert_ne!(c.get("status").as_str(), Some("ok"), "the hub must not know the forged task: {c:?}");
    let q = client.ask("queue_request", vmap! {"targets" => Value::Nil, "verbose" => false}, "queue_reply");
    assert_eq!(q.get("unassigned").as_i64(), Some(0), "{q:?}");
}

#[test]
fn an_engine_whose_heart_stops_is_unregistered() {
    let ctl = Running::start();
    let ctx = zmq::Context::new();
    let mut client = Client::new(&ctl, &ctx);
    std::thread::sleep(Duration::from_millis(200));
    let engine = Engine::start(&ctl, &ctx, "engine-h");
    client.wait_engines(1);
    engine.beating.store(false, Ordering::Relaxed);
    let t0 = Instant::now();
    let (_, _, n) =
        recv_type(&mut client.sess, &client.notif, "unregistration_notification", Duration::from_secs(10)).expect("unregistration_notification");
    assert_eq!(n.get("uuid").as_str(), Some("engine-h"));
    // Not before the misses the hub allows (some slack for the first late beat).
    assert!(t0.elapsed() >= Duration::from_millis(PING_MS * u64::from(MISSES) / 2), "{:?}", t0.elapsed());
    assert!(client.engines().is_empty());
}
