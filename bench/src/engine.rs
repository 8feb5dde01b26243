//! Synthetic engines. Each group thread owns a zmq context (libzmq caps a context at
//! 1023 sockets) and drives its engines from one `zmq::poll` loop:
//!
//! * registration: DEALER (identity = uuid) to `registration`, `registration_request`,
//!   wait for the reply (`reg_timeout`, like `IPEngine.timeout`; on timeout send
//!   `unregistration_request {"id": null}` and give up, as `ipengine` does);
//! * then, in `ipengine`'s order: shell ROUTER (identity uuid) connected to `mux`, `task`
//!   and `broadcast[id % n]`; optionally IOPub PUB; heart SUB(`hb_ping`) → DEALER(`hb_pong`,
//!   identity uuid) echoing every ping frame;
//! * every `apply_request` / `execute_request` is answered at once with a valid reply that
//!   echoes the routing frames.

use crate::conn::Endpoints;
use anyhow::Result;
use ippx_protocol::datetime;
use ippx_protocol::metadata::{EngineMetadata, ExecutionState, ReplyMetadata, RequestMetadata};
use ippx_protocol::{Envelope, Parent, Session, Value};
use ippx_transport::{self as tp, zmq, zmq::Message, zmq::Socket, zmq::SocketType};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A pickled `3` (what `serialize_object(3)` puts in the result buffer).
pub const RESULT_BUFFER: &[u8] = b"\x80\x04K\x03.";

#[derive(Clone)]
pub struct EngineOpts {
    pub reg_timeout: Duration,
    /// Registrations in flight per group at once; 0 = all at once.
    pub concurrency: usize,
    pub iopub: bool,
    /// Burst mode: connect every registration socket, wait on `ready`, then on `go`, then send.
    pub burst: Option<(Arc<Barrier>, Arc<Barrier>)>,
}

#[derive(Default)]
pub struct EngineShared {
    pub stop: AtomicBool,
    pub replied_ok: AtomicU64,
    pub reg_errors: AtomicU64,
    pub gave_up: AtomicU64,
    pub answered: AtomicU64,
    pub pings: AtomicU64,
    pub send_errors: AtomicU64,
    /// Seconds from sending `registration_request` to its reply, per engine.
    pub reg_reply_s: Mutex<Vec<f64>>,
}

#[derive(Deserialize)]
struct MsgType {
    msg_type: String,
}

#[derive(Serialize)]
struct StatusContent<'a> {
    status: &'a str,
}

/// Answers one message received on a shell socket. Returns whether it was a request.
pub fn answer(session: &mut Session, uuid: &str, shell: &Socket, iopub: Option<(&Socket, &[u8])>, frames: Vec<Message>) -> Result<bool> {
    let Ok(env) = Envelope::parse(frames) else {
        return Ok(false);
    };
    let mt: MsgType = session.unpack(env.header_bytes())?;
    let reply_type = match mt.msg_type.as_str() {
        "apply_request" => "apply_reply",
        "execute_request" => "execute_reply",
        _ => return Ok(false),
    };
    let parent = Parent::Raw(env.header_bytes());
    // As a kernel does: status busy, the reply, status idle.
    let publish_status = |session: &mut Session, execution_state: &str| -> Result<()> {
        if let Some((pub_sock, topic)) = iopub {
            let (_, f) = session.serialize(
                vec![topic.to_vec()],
                "status",
                parent,
                &EngineMetadata { engine: uuid },
                &ExecutionState { execution_state },
                vec![],
            )?;
            let _ = tp::send(pub_sock, f);
        }
        Ok(())
    };
    publish_status(session, "busy")?;
    let started = datetime::format_iso(&datetime::now());
    // The engines' reply-metadata contract, shared with ippx-engine (protocol::metadata).
    let meta = ReplyMetadata::start(&RequestMetadata::default(), uuid, started);
    let idents: Vec<Vec<u8>> = env.idents().iter().map(|m| m.to_vec()).collect();
    let (_, f) = session.serialize(idents, reply_type, parent, &meta, &StatusContent { status: "ok" }, vec![RESULT_BUFFER.to_vec()])?;
    tp::send(shell, f)?;
    publish_status(session, "idle")?;
    Ok(true)
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum State {
    NotStarted,
    Pending,
    Running,
    Done,
}

struct Eng {
    uuid: String,
    session: Session,
    state: State,
    sent: Instant,
    reg: Option<Socket>,
    sub: Option<Socket>,
    pong: Option<Socket>,
    shell: Option<Socket>,
    iopub: Option<Socket>,
    topic: Vec<u8>,
    id: u64,
}

#[derive(Clone, Copy)]
enum Kind {
    Reg,
    Heart,
    Shell,
}

/// Starts one group thread for `sessions` (each session's id is that engine's uuid).
pub fn spawn_group(
    ep: Arc<Endpoints>,
    sessions: Vec<Session>,
    opts: EngineOpts,
    shared: Arc<EngineShared>,
    name: String,
) -> Result<JoinHandle<Result<()>>> {
    Ok(std::thread::Builder::new().name(name).spawn(move || run_group(&ep, sessions, &opts, &shared))?)
}

fn run_group(ep: &Endpoints, sessions: Vec<Session>, opts: &EngineOpts, shared: &EngineShared) -> Result<()> {
    let ctx = zmq::Context::new();
    let mut engines: Vec<Eng> = sessions
        .into_iter()
        .map(|s| Eng {
            uuid: s.session_id().to_owned(),
            session: s,
            state: State::NotStarted,
            sent: Instant::now(),
            reg: None,
            sub: None,
            pong: None,
            shell: None,
            iopub: None,
            topic: Vec::new(),
            id: 0,
        })
        .collect();
    let reg_url = ep.engine_url(ep.engine.registration);

    if let Some((ready, go)) = &opts.burst {
        for e in &mut engines {
            let s = tp::socket(&ctx, SocketType::DEALER, Some(e.uuid.as_bytes()))?;
            tp::connect(&s, &reg_url)?;
            e.reg = Some(s);
        }
        ready.wait();
        go.wait();
        for e in &mut engines {
            send_registration(e, shared)?;
        }
    }

    let mut next = 0usize;
    let mut pending = 0usize;
    let mut socks_idx: Vec<(usize, Kind)> = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) {
        // Start registrations up to the concurrency limit.
        if opts.burst.is_none() {
            while next < engines.len() && (opts.concurrency == 0 || pending < opts.concurrency) {
                let e = &mut engines[next];
                let s = tp::socket(&ctx, SocketType::DEALER, Some(e.uuid.as_bytes()))?;
                tp::connect(&s, &reg_url)?;
                e.reg = Some(s);
                send_registration(e, shared)?;
                next += 1;
                pending += 1;
            }
        }

        socks_idx.clear();
        let mut socks: Vec<&Socket> = Vec::with_capacity(engines.len() * 2);
        let mut deadline: Option<Instant> = None;
        for (i, e) in engines.iter().enumerate() {
            match e.state {
                State::Pending => {
                    if let Some(s) = &e.reg {
                        socks.push(s);
                        socks_idx.push((i, Kind::Reg));
                        let d = e.sent + opts.reg_timeout;
                        deadline = Some(deadline.map_or(d, |x: Instant| x.min(d)));
                    }
                }
                State::Running => {
                    if let (Some(h), Some(sh)) = (&e.sub, &e.shell) {
                        socks.push(h);
                        socks_idx.push((i, Kind::Heart));
                        socks.push(sh);
                        socks_idx.push((i, Kind::Shell));
                    }
                }
                _ => {}
            }
        }
        let mut timeout = 50i64;
        if let Some(d) = deadline {
            timeout = timeout.min(tp::ceil_ms(d.saturating_duration_since(Instant::now())));
        }
        let ready = if socks.is_empty() {
            std::thread::sleep(Duration::from_millis(timeout.max(1) as u64));
            Vec::new()
        } else {
            tp::poll(&socks, timeout)?
        };
        drop(socks);

        for (k, r) in ready.iter().enumerate() {
            if !*r {
                continue;
            }
            let (i, kind) = socks_idx[k];
            let e = &mut engines[i];
            match kind {
                Kind::Reg => {
                    let Some(frames) = e.reg.as_ref().map(tp::try_recv).transpose()?.flatten() else {
                        continue;
                    };
                    pending = pending.saturating_sub(1);
                    on_registration_reply(&ctx, ep, e, frames, opts, shared)?;
                }
                Kind::Heart => {
                    let (Some(sub), Some(pong)) = (&e.sub, &e.pong) else {
                        continue;
                    };
                    while let Some(frames) = tp::try_recv(sub)? {
                        shared.pings.fetch_add(1, Ordering::Relaxed);
                        if tp::send(pong, frames).is_err() {
                            shared.send_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Kind::Shell => {
                    let Some(shell) = e.shell.take() else {
                        continue;
                    };
                    let iopub = e.iopub.take();
                    while let Some(frames) = tp::try_recv(&shell)? {
                        let io = iopub.as_ref().map(|s| (s, e.topic.as_slice()));
                        match answer(&mut e.session, &e.uuid, &shell, io, frames) {
                            Ok(true) => {
                                shared.answered.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(false) => {}
                            Err(_) => {
                                shared.send_errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    e.shell = Some(shell);
                    e.iopub = iopub;
                }
            }
        }

        // Registration timeouts: give up as ipengine does.
        let now = Instant::now();
        for e in engines.iter_mut() {
            if e.state == State::Pending && now >= e.sent + opts.reg_timeout {
                if let Some(s) = e.reg.take() {
                    if let Ok((_, f)) = e.session.serialize(
                        vec![],
                        "unregistration_request",
                        Parent::None,
                        &Value::map(),
                        &ippx_protocol::vmap! {"id" => Value::Nil},
                        vec![],
                    ) {
                        let _ = s.set_linger(200);
                        let _ = tp::send(&s, f);
                    }
                }
                e.state = State::Done;
                pending = pending.saturating_sub(1);
                shared.gave_up.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    // Leave as a stock engine's nanny does: `unregistration_request {"id": eid}` from a
    // fresh DEALER, so the controller can be reused by another run at once.
    let bye = tp::socket(&ctx, SocketType::DEALER, None)?;
    tp::connect(&bye, &reg_url)?;
    for e in engines.iter_mut().filter(|e| e.state == State::Running) {
        e.shell = None;
        e.sub = None;
        e.pong = None;
        e.iopub = None;
        let content = ippx_protocol::vmap! {"id" => e.id};
        if let Ok((_, f)) = e.session.serialize(vec![], "unregistration_request", Parent::None, &Value::map(), &content, vec![]) {
            let _ = tp::send(&bye, f);
        }
    }
    let _ = bye.set_linger(2000);
    Ok(())
}

fn send_registration(e: &mut Eng, shared: &EngineShared) -> Result<()> {
    let content = ippx_protocol::vmap! {"uuid" => e.uuid.as_str()};
    let (_, f) = e.session.serialize(vec![], "registration_request", Parent::None, &Value::map(), &content, vec![])?;
    if let Some(s) = &e.reg {
        if tp::send(s, f).is_err() {
            shared.send_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    e.sent = Instant::now();
    e.state = State::Pending;
    Ok(())
}

fn on_registration_reply(
    ctx: &zmq::Context,
    ep: &Endpoints,
    e: &mut Eng,
    frames: Vec<Message>,
    opts: &EngineOpts,
    shared: &EngineShared,
) -> Result<()> {
    let took = e.sent.elapsed().as_secs_f64();
    e.reg = None; // the stock engine keeps it; we close it to save descriptors.
    let content: Option<Value> = Envelope::parse(frames).ok().and_then(|env| e.session.unpack(env.content_bytes()).ok());
    let (Some(content), true) = (content.as_ref(), content.as_ref().map(|c| c.get("status").as_str() == Some("ok")).unwrap_or(false)) else {
        e.state = State::Done;
        shared.reg_errors.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    };
    let id = content.get("id").as_i64().unwrap_or(0).max(0) as u64;
    e.id = id;
    if let Ok(mut v) = shared.reg_reply_s.lock() {
        v.push(took);
    }
    let c = &ep.engine;
    let shell = tp::socket(ctx, SocketType::ROUTER, Some(e.uuid.as_bytes()))?;
    tp::connect(&shell, &ep.engine_url(c.mux))?;
    tp::connect(&shell, &ep.engine_url(c.task))?;
    if !c.broadcast.is_empty() {
        tp::connect(&shell, &ep.engine_url(c.broadcast[(id as usize) % c.broadcast.len()]))?;
    }
    if opts.iopub {
        let p = tp::socket(ctx, SocketType::PUB, None)?;
        tp::connect(&p, &ep.engine_url(c.iopub))?;
        e.iopub = Some(p);
        e.topic = format!("engine.{id}.status").into_bytes();
    }
    let sub = tp::socket(ctx, SocketType::SUB, None)?;
    tp::connect(&sub, &ep.engine_url(c.hb_ping))?;
    let pong = tp::socket(ctx, SocketType::DEALER, Some(e.uuid.as_bytes()))?;
    tp::connect(&pong, &ep.engine_url(c.hb_pong))?;
    e.shell = Some(shell);
    e.sub = Some(sub);
    e.pong = Some(pong);
    e.state = State::Running;
    shared.replied_ok.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// The baseline "engine": a ROUTER bound on loopback that answers requests directly,
/// so a client's round trip through it measures the load generator and libzmq alone.
pub fn spawn_baseline_engine(session: Session, stop: Arc<AtomicBool>, answered: Arc<AtomicU64>) -> Result<(u16, JoinHandle<Result<()>>)> {
    let ctx = zmq::Context::new();
    let sock = tp::socket(&ctx, SocketType::ROUTER, None)?;
    let port = tp::bind(&sock, "tcp", "127.0.0.1", 0)?;
    let h = std::thread::Builder::new().name("baseline-engine".into()).spawn(move || {
        let _ctx = ctx;
        let mut session = session;
        let uuid = session.session_id().to_owned();
        while !stop.load(Ordering::Relaxed) {
            let r = tp::poll(&[&sock], 50)?;
            if !r[0] {
                continue;
            }
            while let Some(frames) = tp::try_recv(&sock)? {
                if answer(&mut session, &uuid, &sock, None, frames)? {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(())
    })?;
    Ok((port, h))
}
