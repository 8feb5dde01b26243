//! The engine's loop against a fake controller made of raw zmq sockets on 127.0.0.1: the
//! real `ippx-engine` binary (supervisor + embedded-Python worker) registers, beats, runs
//! a real `apply_request` (ipyparallel's own pickles, from the golden fixtures), drops a
//! forged request, shuts down on request, and unregisters when the hub's pings stop.
//!
//! Needs the venv's Python (`$IPPX_PYTHON`, as scripts/test-all sets); skipped without it.

use ippx_protocol::connection::EngineConnectionFile;
use ippx_protocol::{vmap, Envelope, Packer, Parent, Session, SessionConfig, Value};
use ippx_transport::{self as tp, zmq, zmq::Socket, zmq::SocketType};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "5d0c1f2e-8a9b7c6d5e4f3a2b1c0d9e8f";

struct FakeHub {
    _ctx: zmq::Context,
    reg: Socket,
    mux: Socket,
    control: Socket,
    iopub: Socket,
    ping: Socket,
    pong: Socket,
    _task: Socket,
    _bcast: Socket,
    info: EngineConnectionFile,
    session: Session,
}

fn bind(ctx: &zmq::Context, kind: SocketType) -> (Socket, u16) {
    let s = tp::socket(ctx, kind, None).expect("socket");
    let port = tp::bind(&s, "tcp", "127.0.0.1", 0).expect("bind");
    (s, port)
}

impl FakeHub {
    fn new() -> FakeHub {
        let ctx = zmq::Context::new();
        let (reg, p_reg) = bind(&ctx, SocketType::ROUTER);
        let (mux, p_mux) = bind(&ctx, SocketType::ROUTER);
        let (task, p_task) = bind(&ctx, SocketType::ROUTER);
        let (control, p_control) = bind(&ctx, SocketType::ROUTER);
        let (iopub, p_iopub) = bind(&ctx, SocketType::SUB);
        iopub.set_subscribe(b"").expect("subscribe");
        let (ping, p_ping) = bind(&ctx, SocketType::PUB);
        let (pong, p_pong) = bind(&ctx, SocketType::ROUTER);
        let (bcast, p_bcast) = bind(&ctx, SocketType::ROUTER);
        let info = EngineConnectionFile {
            ssh: String::new(),
            interface: "tcp://127.0.0.1".into(),
            registration: p_reg,
            control: p_control,
            mux: p_mux,
            task: p_task,
            iopub: p_iopub,
            hb_ping: p_ping,
            hb_pong: p_pong,
            broadcast: vec![p_bcast],
            key: KEY.into(),
            curve_serverkey: None,
            location: "127.0.0.1".into(),
            pack: "msgpack".into(),
            unpack: "msgpack".into(),
            signature_scheme: "hmac-sha256".into(),
        };
        let session = Session::new(SessionConfig::new(KEY.as_bytes().to_vec(), Packer::Msgpack)).expect("session");
        FakeHub { _ctx: ctx, reg, mux, control, iopub, ping, pong, _task: task, _bcast: bcast, info, session }
    }

    /// Next message on `s` within `t`.
    fn recv(s: &Socket, t: Duration) -> Option<Vec<Vec<u8>>> {
        let deadline = Instant::now() + t;
        loop {
            if let Ok(Some(f)) = tp::try_recv(s) {
                return Some(f.iter().map(|m| m.to_vec()).collect());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let _ = tp::poll(&[s], tp::ceil_ms(left));
        }
    }

    fn decode(&mut self, frames: Vec<Vec<u8>>) -> (Envelope<Vec<u8>>, ippx_protocol::Header, Value, Value) {
        let (env, h) = self.session.receive(frames, false).map_err(|e| e.0).expect("valid message");
        let md: Value = self.session.unpack(env.metadata_bytes()).expect("metadata");
        let c: Value = self.session.unpack(env.content_bytes()).expect("content");
        (env, h, md, c)
    }

    /// Answers the registration and returns the engine's uuid.
    fn accept_registration(&mut self, id: i64) -> Vec<u8> {
        let frames = Self::recv(&self.reg, Duration::from_secs(20)).expect("registration_request");
        let ident = frames[0].clone();
        let (_, h, _, c) = self.decode(frames);
        assert_eq!(h.msg_type, "registration_request");
        assert_eq!(c.get("uuid").as_str().map(str::as_bytes), Some(ident.as_slice()));
        let reply = vmap! {"status" => "ok", "id" => id, "hb_period" => 200i64};
        let (_, f) = self.session.serialize(vec![ident.clone()], "registration_reply", Parent::None, &Value::map(), &reply, vec![]).expect("ser");
        tp::send(&self.reg, f).expect("send");
        ident
    }

    /// Lets connections settle. A bound SUB sends its subscription to a new publisher only
    /// when the application touches the socket (libzmq runs its pending commands then),
    /// so IOPub is touched meanwhile, as a real hub's loop does all the time.
    fn settle(&self) {
        for _ in 0..30 {
            let _ = self.iopub.get_events();
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Pings until a pong comes back.
    fn beat_until_pong(&self, uuid: &[u8]) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut n = 0u64;
        while Instant::now() < deadline {
            n += 1;
            let payload = format!("{n}.0").into_bytes();
            tp::send(&self.ping, [payload.clone()]).expect("ping");
            let _ = self.iopub.get_events();
            if let Some(f) = Self::recv(&self.pong, Duration::from_millis(200)) {
                assert_eq!(f[0], uuid);
                return;
            }
        }
        panic!("no pong");
    }

    /// IOPub messages (topic, msg_type, parent msg_id, content) until `stop` matches.
    fn iopub_until(&mut self, stop: impl Fn(&str, &Value) -> bool) -> Vec<(Vec<u8>, String, String, Value)> {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let Some(frames) = Self::recv(&self.iopub, Duration::from_millis(200)) else {
                continue;
            };
            let topic = frames[0].clone();
            let (env, h, md, c) = self.decode(frames);
            assert!(md.get("engine").as_str().is_some(), "every engine message carries metadata.engine");
            let parent: Value = self.session.unpack(env.parent_bytes()).expect("parent");
            let done = stop(&h.msg_type, &c);
            got.push((topic, h.msg_type, parent.get("msg_id").as_str().unwrap_or("").to_owned(), c));
            if done {
                return got;
            }
        }
        panic!("IOPub stop condition never met; got {got:?}");
    }
}

fn python() -> Option<String> {
    std::env::var("IPPX_PYTHON").ok().filter(|p| std::path::Path::new(p).exists())
}

/// Kills the engine if the test fails before it exits by itself.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn spawn_engine(hub: &FakeHub, dir: &std::path::Path, extra: &[&str]) -> Reaper {
    let file: PathBuf = dir.join("ipcontroller-engine.json");
    std::fs::write(&file, serde_json::to_vec(&hub.info).expect("json")).expect("write");
    Command::new(env!("CARGO_BIN_EXE_ippx-engine"))
        .arg(format!("--file={}", file.display()))
        .arg(format!("--profile-dir={}", dir.join("profile").display()))
        .arg("--log-level=DEBUG")
        .args(extra)
        .env("IPPX_PYTHON", python().expect("python"))
        .stdin(Stdio::null())
        .spawn()
        .map(Reaper)
        .expect("spawn ippx-engine")
}

fn wait_exit(child: &mut Child, t: Duration) -> Option<i32> {
    let deadline = Instant::now() + t;
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return st.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn fixture_apply_request() -> (Value, Vec<Vec<u8>>) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../protocol/tests/fixtures/captured/msgpack/apply_request.json");
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(path).expect("fixture")).expect("json");
    let frames: Vec<Vec<u8>> =
        j["frames_hex"].as_array().expect("frames").iter().map(|h| hex::decode(h.as_str().expect("hex")).expect("hex")).collect();
    let n_idents = j["n_idents"].as_u64().expect("n") as usize;
    let meta: Value = Packer::Msgpack.unpack(&frames[n_idents + 4]).expect("metadata");
    (meta, frames[n_idents + 6..].to_vec())
}

#[test]
fn registers_beats_applies_drops_forgeries_and_shuts_down() {
    if python().is_none() {
        eprintln!("skipped: no $IPPX_PYTHON");
        return;
    }
    let mut hub = FakeHub::new();
    let dir = tempfile::tempdir().expect("tmp");
    let mut child = spawn_engine(&hub, dir.path(), &[]);
    let uuid = hub.accept_registration(7);
    hub.beat_until_pong(&uuid);
    hub.settle();

    // A forged request (wrong key) first: dropped, no reply, nothing else disturbed.
    let mut forger = Session::new(SessionConfig::new(b"wrong".to_vec(), Packer::Msgpack)).expect("s");
    let (meta, bufs) = fixture_apply_request();
    let (_, f) =
        forger.serialize(vec![uuid.clone(), b"client".to_vec()], "apply_request", Parent::None, &meta, &Value::map(), bufs.clone()).expect("ser");
    tp::send(&hub.mux, f).expect("send");

    // The fixture's apply_request (add(1, 2) in ipyparallel's pickles), properly signed.
    let mut meta = meta;
    meta.insert("label", Value::from("L1"));
    let (h, f) =
        hub.session.serialize(vec![uuid.clone(), b"client".to_vec()], "apply_request", Parent::None, &meta, &Value::map(), bufs).expect("ser");
    tp::send(&hub.mux, f).expect("send");
    let frames = FakeHub::recv(&hub.mux, Duration::from_secs(20)).expect("apply_reply");
    assert_eq!(frames[0], uuid);
    assert_eq!(frames[1], b"client");
    let (env, rh, md, c) = hub.decode(frames);
    assert_eq!(rh.msg_type, "apply_reply");
    assert_eq!(c.get("status").as_str(), Some("ok"));
    assert_eq!(md.get("engine").as_str().map(str::as_bytes), Some(uuid.as_slice()));
    assert_eq!(md.get("status").as_str(), Some("ok"));
    assert_eq!(md.get("label").as_str(), Some("L1"));
    assert_eq!(md.get("dependencies_met").as_bool(), Some(true));
    assert!(md.get("started").as_str().is_some_and(|s| s.ends_with('Z')));
    let parent: Value = hub.session.unpack(env.parent_bytes()).expect("parent");
    assert_eq!(parent.get("msg_id").as_str(), Some(h.msg_id.as_str()));
    // serialize_object(3): pickle protocol 4 of the int 3
    assert_eq!(env.buffers()[0], b"\x80\x04K\x03.".to_vec());
    // busy then idle on IOPub, both with the request as parent
    let msgs = hub.iopub_until(|t, c| t == "status" && c.get("execution_state").as_str() == Some("idle"));
    let statuses: Vec<_> =
        msgs.iter().filter(|m| m.1 == "status" && m.2 == h.msg_id).map(|m| m.3.get("execution_state").as_str().unwrap_or("").to_owned()).collect();
    assert_eq!(statuses, vec!["busy".to_owned(), "idle".to_owned()]);
    assert!(msgs.iter().all(|m| m.0 == b"engine.7.status"));
    // the forged request got nothing
    assert!(FakeHub::recv(&hub.mux, Duration::from_millis(300)).is_none());

    // shutdown_request on control: reply there and on IOPub engine.7.shutdown, then
    // unregistration and exit 0
    let (sh, f) = hub
        .session
        .serialize(vec![uuid.clone(), b"client".to_vec()], "shutdown_request", Parent::None, &Value::map(), &vmap! {"restart" => false}, vec![])
        .expect("ser");
    tp::send(&hub.control, f).expect("send");
    let frames = FakeHub::recv(&hub.control, Duration::from_secs(10)).expect("shutdown_reply");
    let (_, rh, _, c) = hub.decode(frames);
    assert_eq!(rh.msg_type, "shutdown_reply");
    assert_eq!(c.get("status").as_str(), Some("ok"));
    let msgs = hub.iopub_until(|t, _| t == "shutdown_reply");
    let last = msgs.last().expect("one");
    assert_eq!(last.0, b"engine.7.shutdown");
    assert_eq!(last.2, sh.msg_id);
    let frames = FakeHub::recv(&hub.reg, Duration::from_secs(10)).expect("unregistration_request");
    let (_, uh, _, c) = hub.decode(frames);
    assert_eq!(uh.msg_type, "unregistration_request");
    assert_eq!(c.get("id").as_i64(), Some(7));
    assert_eq!(wait_exit(&mut child.0, Duration::from_secs(10)), Some(0));
}

#[test]
fn heartbeat_loss_unregisters_and_exits() {
    if python().is_none() {
        eprintln!("skipped: no $IPPX_PYTHON");
        return;
    }
    let mut hub = FakeHub::new();
    let dir = tempfile::tempdir().expect("tmp");
    let mut child = spawn_engine(&hub, dir.path(), &["--IPEngine.max_heartbeat_misses=2"]);
    let uuid = hub.accept_registration(0);
    hub.beat_until_pong(&uuid);
    // No more pings: two silent checks of 200 + 500 ms and the engine gives up.
    let frames = FakeHub::recv(&hub.reg, Duration::from_secs(10)).expect("unregistration_request");
    let (_, h, _, c) = hub.decode(frames);
    assert_eq!(h.msg_type, "unregistration_request");
    assert_eq!(c.get("id").as_i64(), Some(0));
    assert_eq!(wait_exit(&mut child.0, Duration::from_secs(10)), Some(1));
}
