//! The engine's supervisor: one thread owns the registration, shell, control and IOPub
//! sockets and the link to the Python worker, in one poll loop. It never takes the GIL
//! (the worker is another process), so heartbeats, control requests, aborts and signals
//! are handled while user code runs.
//!
//! Ordering: requests from the shell and control channels enter one FIFO in arrival order
//! (control first when both are ready), so `dv.clear()` sent before an execute is applied
//! before it. `abort`, `interrupt`, `signal`, `shutdown` and `kernel_info` act at once.

mod control;
use crate::args::EngineArgs;
use crate::heart::{Heart, Watchdog};
use crate::ipc;
use crate::stats::Stats;
use crate::worker_proc::{Exit, WorkerProc, WorkerSpec};
use ippx_protocol::connection::{self, EngineConnectionFile};
use ippx_protocol::metadata::{EngineInfo, EngineMetadata, ExecutionState, ReplyMetadata, RequestMetadata, StreamContent};
use ippx_protocol::{datetime, vmap, Envelope, Header, Parent, Session, Value};
use ippx_transport::{self as tp, zmq, zmq::Message, zmq::Socket, zmq::SocketType};
use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Transport(#[from] tp::TransportError),
    #[error("zmq: {0}")]
    Zmq(#[from] zmq::Error),
    #[error(transparent)]
    Pack(#[from] ippx_protocol::packer::PackError),
    #[error(transparent)]
    Sign(#[from] ippx_protocol::signing::SignError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("registration timed out after {0:.1} s")]
    RegistrationTimeout(f64),
    #[error("registration refused: {0}")]
    RegistrationRefused(String),
}

/// How the engine ended: its process exit status.
pub type ExitCode = i32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Channel {
    Shell,
    Control,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Apply,
    Execute,
    Clear,
}

impl Kind {
    fn reply_type(self) -> &'static str {
        match self {
            Kind::Apply => "apply_reply",
            Kind::Execute => "execute_reply",
            Kind::Clear => "clear_reply",
        }
    }
}

/// One queued request.
struct Job {
    kind: Kind,
    channel: Channel,
    idents: Vec<Vec<u8>>,
    header_raw: Vec<u8>,
    header: Header,
    meta: RequestMetadata,
    content_raw: Vec<u8>,
    buffers: Vec<Vec<u8>>,
    /// execute: `not silent and stop_on_error`: an error aborts the queued executes.
    stop_on_error: bool,
}

/// Puts the shell requests read in one go (`queue[start..]`) in the order their clients
/// sent them. The shell socket is one ROUTER connected to the MUX and to the task
/// scheduler, and libzmq takes turns between its pipes, not arrival order: a push through
/// the MUX and a load-balanced task sent just after it that both wait here would run
/// task first half of the time, and the task would not see the pushed name (the
/// tutorial's `direct_view['CONSTANT'] = 5` then `by_constant.map`). The header `date`
/// is the client's send time; ISO 8601 stamps from one client compare as strings. The
/// sort is stable, and requests from different clients have no order to keep.
fn order_by_send_time(queue: &mut [Job], start: usize) {
    if queue.len() > start + 1 {
        queue[start..].sort_by(|a, b| a.header.date.cmp(&b.header.date));
    }
}

struct Running {
    job: Job,
    started: String,
}

/// Output read from the worker's fds, published as IOPub `stream` messages.
struct OutBuf {
    name: &'static str,
    bytes: Vec<u8>,
    since: Option<Instant>,
}

/// How long printed output may wait to be coalesced into one stream message.
const OUTPUT_LINGER: Duration = Duration::from_millis(50);
/// A request's `busy` status waits this long, or until anything else is published or
/// the reply is sent, whichever comes first: a short request's busy, reply and idle then
/// leave together and wake libzmq's I/O thread once instead of twice. The order on the
/// wire is stock's (busy, output, reply, idle); only busy's time is later, by at most this.
const BUSY_DEFER: Duration = Duration::from_millis(2);
const OUTPUT_MAX: usize = 64 * 1024;

pub struct Supervisor {
    args: EngineArgs,
    session: Session,
    uuid: String,
    id: i64,
    hb_period: Duration,
    _ctx: zmq::Context,
    reg: Socket,
    shell: Socket,
    control: Socket,
    iopub: Socket,
    heart: Heart,
    watchdog: Watchdog,
    queue: VecDeque<Job>,
    aborted: HashSet<String>,
    running: Option<Running>,
    worker: Option<WorkerProc>,
    spec: WorkerSpec,
    kernel_info: Value,
    out: [OutBuf; 2],
    last_parent: Vec<u8>,
    /// The `busy` status of the running request, not published yet ([`BUSY_DEFER`]).
    busy_pending: Option<(Vec<u8>, Instant)>,
    signals: crate::signals::SignalPipe,
    worker_in_process: bool,
    pub stats: Stats,
}

fn url(info: &EngineConnectionFile, port: u16) -> String {
    connection::url(&info.interface, port)
}

fn copy_frames(frames: &[Message]) -> Vec<Vec<u8>> {
    frames.iter().map(|m| m.to_vec()).collect()
}

/// Registers with the hub: `registration_request {uuid[, id]}` from a DEALER whose
/// identity is the uuid, waiting `timeout` for the reply as ipengine does.
fn register(session: &mut Session, reg: &Socket, uuid: &str, id: Option<i64>, timeout: Duration) -> Result<Registered, EngineError> {
    let mut content = vmap! {"uuid" => uuid};
    if let Some(id) = id {
        content.insert("id", Value::Int(id));
    }
    let (_, frames) = session.serialize(vec![], "registration_request", Parent::None, &Value::map(), &content, vec![])?;
    tp::send(reg, frames)?;
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            // As ipengine's abort(): tell the hub to forget the id it allocated.
            let (_, f) = session.serialize(vec![], "unregistration_request", Parent::None, &Value::map(), &vmap! {"id" => Value::Nil}, vec![])?;
            let _ = tp::send(reg, f);
            return Err(EngineError::RegistrationTimeout(timeout.as_secs_f64()));
        }
        if !tp::poll(&[reg], tp::ceil_ms(left))?[0] {
            continue;
        }
        let Some(frames) = tp::try_recv(reg)? else {
            continue;
        };
        let (env, header) = match session.receive(frames, true) {
            Ok(x) => x,
            Err((e, _)) => {
                tracing::warn!("registration: dropped a reply that failed its check: {e}");
                continue;
            }
        };
        if header.msg_type != "registration_reply" {
            continue;
        }
        let v: Value = session.unpack(env.content_bytes())?;
        if v.get("status").as_str() != Some("ok") {
            let why = format!("{}: {}", v.get("ename").as_str().unwrap_or("error"), v.get("evalue").as_str().unwrap_or(""));
            return Err(EngineError::RegistrationRefused(why));
        }
        // Only status, id and hb_period are read, as ipengine does (connection_info is
        // ignored: the ports come from the engine's own connection info).
        let (Some(id), Some(hb)) = (v.get("id").as_i64(), v.get("hb_period").as_f64()) else {
            return Err(EngineError::RegistrationRefused(format!("malformed registration_reply: {v:?}")));
        };
        return Ok(Registered { id, hb_period_ms: hb.max(1.0) as u64 });
    }
}

/// What the engine takes from an ok `registration_reply`.
#[derive(Clone, Copy, Debug)]
struct Registered {
    id: i64,
    hb_period_ms: u64,
}

impl Supervisor {
    /// Connects, registers and starts the heart and the worker.
    /// `in_process`: the link and output pipes of a worker that runs on this process's main
    /// thread (`--in-process`); otherwise a worker process is spawned.
    pub fn start(
        args: EngineArgs,
        info: EngineConnectionFile,
        mut session: Session,
        spec: WorkerSpec,
        in_process: Option<(std::os::unix::net::UnixStream, [std::io::PipeReader; 2])>,
    ) -> Result<Supervisor, EngineError> {
        let uuid = session.session_id().to_owned();
        let ctx = zmq::Context::new();
        // CURVE when the connection info names the controller's key (ipengine's rule);
        // each socket gets a throwaway client key pair.
        let security = tp::Security::client(info.curve_serverkey.as_deref())?;
        if security.is_curve() {
            tracing::info!("Using CurveZMQ security");
        }
        let socket = |kind, identity: Option<&[u8]>| security.socket(&ctx, kind, identity);
        let reg = socket(SocketType::DEALER, Some(uuid.as_bytes()))?;
        reg.set_linger(1000)?;
        let reg_url = url(&info, info.registration);
        tracing::info!("registering with the controller at {reg_url} (uuid {uuid})");
        tp::connect(&reg, &reg_url)?;
        let reply = register(&mut session, &reg, &uuid, args.id, args.reg_timeout)?;
        let id = reply.id;
        // ipengine's wording: launchers and tests look for this line in engine output.
        tracing::info!("Completed registration with id {id} (heartbeat period {} ms)", reply.hb_period_ms);

        // ipengine's order: shell, control, IOPub, (startup code), heart last.
        let shell = socket(SocketType::ROUTER, Some(uuid.as_bytes()))?;
        tp::connect(&shell, &url(&info, info.mux))?;
        tp::connect(&shell, &url(&info, info.task))?;
        if !info.broadcast.is_empty() {
            let b = info.broadcast[(id as usize) % info.broadcast.len()];
            tp::connect(&shell, &url(&info, b))?;
        }
        let control = socket(SocketType::ROUTER, Some(uuid.as_bytes()))?;
        tp::connect(&control, &url(&info, info.control))?;
        let iopub = socket(SocketType::PUB, None)?;
        iopub.set_linger(1000)?;
        tp::connect(&iopub, &url(&info, info.iopub))?;

        let signals = crate::signals::SignalPipe::install(in_process.is_none())?;
        let mut spec = spec;
        spec.engine_id = id;
        spec.uuid = uuid.clone();
        let worker = match in_process {
            Some((link, out)) => WorkerProc::in_process(&spec, link, out)?,
            None => WorkerProc::spawn(&spec)?,
        };
        let worker_in_process = worker.is_in_process();
        let heart = Heart::start(&ctx, &security, &url(&info, info.hb_ping), &url(&info, info.hb_pong), uuid.as_bytes())?;
        let watchdog = Watchdog::new(args.max_heartbeat_misses);
        Ok(Supervisor {
            hb_period: Duration::from_millis(reply.hb_period_ms),
            args,
            session,
            uuid,
            id,
            _ctx: ctx,
            reg,
            shell,
            control,
            iopub,
            heart,
            watchdog,
            queue: VecDeque::new(),
            aborted: HashSet::new(),
            running: None,
            worker: Some(worker),
            spec,
            kernel_info: Value::map(),
            out: [OutBuf { name: "stdout", bytes: Vec::new(), since: None }, OutBuf { name: "stderr", bytes: Vec::new(), since: None }],
            last_parent: Vec::new(),
            busy_pending: None,
            signals,
            worker_in_process,
            stats: Stats::default(),
        })
    }

    pub fn id(&self) -> i64 {
        self.id
    }

    fn topic(&self, what: &str) -> Vec<u8> {
        format!("engine.{}.{what}", self.id).into_bytes()
    }

    fn parent_raw(&self) -> Vec<u8> {
        match &self.running {
            Some(r) => r.job.header_raw.clone(),
            None => self.last_parent.clone(),
        }
    }

    fn publish<C: serde::Serialize>(&mut self, what: &str, msg_type: &str, parent: &[u8], content: &C) {
        self.flush_busy();
        self.publish_now(what, msg_type, parent, content);
    }

    /// Publishes the deferred busy status, if any.
    fn flush_busy(&mut self) {
        if let Some((parent, _)) = self.busy_pending.take() {
            self.publish_now("status", "status", &parent, &ExecutionState { execution_state: "busy" });
        }
    }

    fn publish_now<C: serde::Serialize>(&mut self, what: &str, msg_type: &str, parent: &[u8], content: &C) {
        let topic = self.topic(what);
        let parent = if parent.is_empty() { Parent::None } else { Parent::Raw(parent) };
        match self.session.serialize(vec![topic], msg_type, parent, &EngineMetadata { engine: &self.uuid }, content, vec![]) {
            Ok((_, f)) => {
                if let Err(e) = tp::send(&self.iopub, f) {
                    tracing::warn!("iopub: {msg_type} not sent: {e}");
                }
            }
            Err(e) => tracing::error!("iopub: cannot pack {msg_type}: {e}"),
        }
    }

    fn status(&mut self, state: &str, parent: &[u8]) {
        self.publish("status", "status", parent, &ExecutionState { execution_state: state });
    }

    /// Publishes what the worker printed, as stock's OutStream does.
    fn flush_output(&mut self) {
        for i in 0..2 {
            if self.out[i].bytes.is_empty() {
                continue;
            }
            // Keep an incomplete UTF-8 sequence at the end for the next read.
            let b = std::mem::take(&mut self.out[i].bytes);
            let cut = match std::str::from_utf8(&b) {
                Ok(_) => b.len(),
                Err(e) if e.error_len().is_none() => e.valid_up_to(),
                Err(_) => b.len(),
            };
            let text = String::from_utf8_lossy(&b[..cut]).into_owned();
            self.out[i].bytes = b[cut..].to_vec();
            self.out[i].since = if self.out[i].bytes.is_empty() { None } else { self.out[i].since };
            if text.is_empty() {
                continue;
            }
            let name = self.out[i].name;
            let parent = self.parent_raw();
            self.publish(name, "stream", &parent, &StreamContent { name, text: &text });
        }
    }

    fn read_output(&mut self) {
        let Some(w) = self.worker.as_mut() else {
            return;
        };
        let now = Instant::now();
        for (i, chunk) in w.read_output().into_iter().enumerate() {
            if !chunk.is_empty() {
                self.out[i].bytes.extend_from_slice(&chunk);
                self.out[i].since.get_or_insert(now);
            }
        }
        if self.out.iter().any(|o| o.bytes.len() >= OUTPUT_MAX) {
            self.flush_output();
        }
    }

    fn send_shell_or_control(&mut self, channel: Channel, frames: Vec<Vec<u8>>) {
        self.flush_busy();
        let sock = if channel == Channel::Shell { &self.shell } else { &self.control };
        if let Err(e) = tp::send(sock, frames) {
            self.stats.send_failed += 1;
            tracing::warn!("reply not sent on {channel:?}: {e}");
        }
    }

    fn reply_meta(&self, job: &Job, started: String) -> ReplyMetadata {
        ReplyMetadata::start(&job.meta, &self.uuid, started)
    }

    fn engine_info(&self) -> EngineInfo {
        EngineInfo { engine_uuid: self.uuid.clone(), engine_id: self.id, method: None }
    }

    /// `<type>_reply {status: aborted}` with the full metadata, framed by busy/idle.
    fn abort_job(&mut self, job: Job) {
        tracing::info!("aborting {} {}", job.header.msg_type, job.header.msg_id);
        self.status("busy", &job.header_raw);
        let mut md = self.reply_meta(&job, datetime::format_iso(&datetime::now()));
        md.finish("aborted", None, || self.engine_info());
        let reply_type = job.kind.reply_type();
        match self.session.serialize(job.idents.clone(), reply_type, Parent::Raw(&job.header_raw), &md, &vmap! {"status" => "aborted"}, vec![]) {
            Ok((_, f)) => self.send_shell_or_control(job.channel, f),
            Err(e) => tracing::error!("cannot pack an abort reply: {e}"),
        }
        self.status("idle", &job.header_raw);
    }

    /// Starts the next queued job if the worker is free.
    fn pump(&mut self) {
        while self.running.is_none() {
            let Some(w) = self.worker.as_ref() else {
                return;
            };
            if !w.ready {
                return;
            }
            let Some(job) = self.queue.pop_front() else {
                return;
            };
            if self.aborted.remove(&job.header.msg_id) {
                self.abort_job(job);
                continue;
            }
            if job.kind == Kind::Execute {
                // An execute publishes execute_input at once, and clients watch it: no
                // point in waiting.
                self.status("busy", &job.header_raw);
            } else {
                self.busy_pending = Some((job.header_raw.clone(), Instant::now() + BUSY_DEFER));
            }
            let started = datetime::format_iso(&datetime::now());
            let w = self.worker.as_mut().expect("checked above");
            match job.kind {
                Kind::Apply => {
                    let mut parts: Vec<&[u8]> = vec![b"apply", job.header.msg_id.as_bytes(), b""];
                    parts.extend(job.buffers.iter().map(|b| b.as_slice()));
                    w.writer.push(&parts);
                }
                Kind::Execute => w.writer.push(&[b"execute".as_slice(), &job.content_raw, &job.header_raw]),
                Kind::Clear => w.writer.push(&[b"clear".as_slice()]),
            }
            self.last_parent = job.header_raw.clone();
            self.running = Some(Running { job, started });
        }
    }

    /// A message from the worker.
    fn on_worker_message(&mut self, parts: ipc::Parts) {
        // Output written before this message was sent is in the pipes now: publish it
        // first, so prints stay ahead of results.
        self.read_output();
        self.flush_output();
        match parts.first().map(|p| p.as_slice()) {
            Some(b"ready") => {
                if let Some(info) = parts.get(1).and_then(|p| serde_json::from_slice::<Value>(p).ok()) {
                    self.kernel_info = info;
                }
                if let Some(w) = self.worker.as_mut() {
                    w.ready = true;
                    tracing::info!("worker {} ready", w.pid);
                }
            }
            Some(b"pub") if parts.len() >= 4 => {
                let msg_type = String::from_utf8_lossy(&parts[1]).into_owned();
                let topic = parts[2].clone();
                let parent = self.parent_raw();
                let parent = if parent.is_empty() { Parent::None } else { Parent::Raw(&parent) };
                let bufs = parts[4..].to_vec();
                let mut idents = Vec::new();
                if !topic.is_empty() {
                    idents.push(topic);
                }
                let meta = EngineMetadata { engine: &self.uuid };
                match self.session.serialize_packed_content(idents, &msg_type, parent, &meta, parts[3].clone(), bufs) {
                    Ok((_, f)) => {
                        if let Err(e) = tp::send(&self.iopub, f) {
                            tracing::warn!("iopub: {msg_type} not sent: {e}");
                        }
                    }
                    Err(e) => tracing::error!("cannot frame {msg_type}: {e}"),
                }
            }
            Some(b"reply") if parts.len() >= 4 => {
                let Some(run) = self.running.take() else {
                    self.stats.bad_worker_messages += 1;
                    tracing::warn!("worker sent a reply with no request running");
                    return;
                };
                let status = String::from_utf8_lossy(&parts[1]).into_owned();
                let ename = String::from_utf8_lossy(&parts[2]).into_owned();
                let job = run.job;
                let content = if parts[3].is_empty() {
                    match self.session.pack(&vmap! {"status" => status.as_str()}) {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::error!("cannot pack a reply: {e}");
                            return;
                        }
                    }
                } else {
                    parts[3].clone()
                };
                let bufs = parts[4..].to_vec();
                let frames = if job.kind == Kind::Clear {
                    self.session.serialize_packed_content(
                        job.idents.clone(),
                        job.kind.reply_type(),
                        Parent::Raw(&job.header_raw),
                        &EngineMetadata { engine: &self.uuid },
                        content,
                        bufs,
                    )
                } else {
                    let mut md = self.reply_meta(&job, run.started);
                    md.finish(&status, Some(&ename), || self.engine_info());
                    self.session.serialize_packed_content(job.idents.clone(), job.kind.reply_type(), Parent::Raw(&job.header_raw), &md, content, bufs)
                };
                match frames {
                    Ok((_, f)) => self.send_shell_or_control(job.channel, f),
                    Err(e) => tracing::error!("cannot frame a reply: {e}"),
                }
                self.status("idle", &job.header_raw);
                if job.stop_on_error && status == "error" {
                    self.abort_queued_executes();
                }
            }
            _ => {
                self.stats.bad_worker_messages += 1;
                tracing::warn!("dropped a malformed message from the worker ({} parts)", parts.len());
            }
        }
    }

    /// ipykernel's `_abort_queues`: every execute already waiting is aborted.
    fn abort_queued_executes(&mut self) {
        for j in &self.queue {
            if j.kind == Kind::Execute {
                self.aborted.insert(j.header.msg_id.clone());
            }
        }
    }

    fn decode(&mut self, channel: Channel, frames: Vec<Message>) -> Option<(Envelope<Message>, Header)> {
        match self.session.receive(frames, true) {
            Ok(x) => Some(x),
            Err((e, frames)) => {
                let peer = frames.first().map(|f| String::from_utf8_lossy(f).into_owned()).unwrap_or_default();
                self.stats.count_drop(e.reason());
                tracing::warn!("{channel:?}: dropped a message from {peer:?}: {e}");
                None
            }
        }
    }

    fn make_job(&mut self, kind: Kind, channel: Channel, env: &Envelope<Message>, header: Header) -> Job {
        let meta: RequestMetadata = self.session.unpack(env.metadata_bytes()).unwrap_or_default();
        let mut stop_on_error = false;
        if kind == Kind::Execute {
            if let Ok(c) = self.session.unpack::<Value>(env.content_bytes()) {
                let silent = c.get("silent").as_bool().unwrap_or(false);
                stop_on_error = !silent && c.get("stop_on_error").as_bool().unwrap_or(true);
            }
        }
        Job {
            kind,
            channel,
            idents: copy_frames(env.idents()),
            header_raw: env.header_bytes().to_vec(),
            header,
            meta,
            content_raw: env.content_bytes().to_vec(),
            buffers: copy_frames(env.buffers()),
            stop_on_error,
        }
    }

    fn on_shell(&mut self, frames: Vec<Message>) {
        let Some((env, header)) = self.decode(Channel::Shell, frames) else {
            return;
        };
        let kind = match header.msg_type.as_str() {
            "apply_request" => Kind::Apply,
            "execute_request" => Kind::Execute,
            other => {
                // ipykernel logs and drops these; only apply/execute replies may go back
                // on shell (the Client raises on anything else).
                self.stats.count_drop("unknown_type");
                tracing::warn!("shell: unknown message type {other:?}, dropped");
                return;
            }
        };
        let job = self.make_job(kind, Channel::Shell, &env, header);
        self.queue.push_back(job);
    }

    fn unregister(&mut self) {
        match self.session.serialize(vec![], "unregistration_request", Parent::None, &Value::map(), &vmap! {"id" => self.id}, vec![]) {
            Ok((_, f)) => {
                if let Err(e) = tp::send(&self.reg, f) {
                    tracing::warn!("unregistration not sent: {e}");
                }
            }
            Err(e) => tracing::error!("cannot pack unregistration: {e}"),
        }
    }

    /// The worker has exited: answer what it was running and decide what happens next.
    /// Returns the engine's exit status when the engine must stop.
    fn on_worker_exit(&mut self, exit: Exit) -> Option<ExitCode> {
        self.read_output();
        self.flush_output();
        self.worker = None;
        match (exit, self.args.restart_on_crash) {
            (Exit::Signal(sig), true) if !self.worker_in_process => {
                let name = crate::signals::name(sig);
                tracing::error!("worker killed by signal {sig} ({name}); restarting it");
                if let Some(run) = self.running.take() {
                    let job = run.job;
                    let evalue = format!("the engine's Python worker was killed by signal {sig} ({name}) while running this task");
                    let mut err = ippx_protocol::content::ErrorContent::new("EngineError", evalue);
                    err.traceback =
                        vec![format!("EngineError: engine {} lost its Python worker to signal {sig} ({name}); its namespace is lost\n", self.id)];
                    err.engine_info = Value::Map(vec![("engine_uuid".into(), self.uuid.clone().into()), ("engine_id".into(), Value::Int(self.id))]);
                    let mut md = self.reply_meta(&job, run.started);
                    md.finish("error", Some("EngineError"), || self.engine_info());
                    match self.session.serialize(
                        job.idents.clone(),
                        job.kind.reply_type(),
                        Parent::Raw(&job.header_raw),
                        &md,
                        &err.to_value(),
                        vec![],
                    ) {
                        Ok((_, f)) => self.send_shell_or_control(job.channel, f),
                        Err(e) => tracing::error!("cannot pack the crash reply: {e}"),
                    }
                    self.last_parent = job.header_raw.clone();
                    self.status("idle", &job.header_raw);
                }
                let note = format!(
                    "[ippx-engine] engine {}: the Python worker was killed by signal {sig} ({name}) and restarted; the namespace was lost\n",
                    self.id
                );
                let parent = self.last_parent.clone();
                self.publish("stderr", "stream", &parent, &StreamContent { name: "stderr", text: &note });
                self.spec.restarts += 1;
                match WorkerProc::spawn(&self.spec) {
                    Ok(w) => {
                        self.worker = Some(w);
                        None
                    }
                    Err(e) => {
                        tracing::error!("cannot restart the worker: {e}");
                        Some(1)
                    }
                }
            }
            (exit, _) => {
                tracing::error!("worker exited ({exit:?}); the engine stops");
                Some(match exit {
                    Exit::Code(c) => c,
                    Exit::Signal(s) => 128 + s,
                })
            }
        }
    }

    /// The loop. Returns the exit status.
    pub fn run(&mut self) -> ExitCode {
        let hb_check = self.hb_period + Duration::from_millis(500);
        let mut next_check = Instant::now() + hb_check;
        let code = loop {
            self.pump();
            if let Some(w) = self.worker.as_mut() {
                if let Err(e) = w.flush_writes() {
                    tracing::warn!("link to the worker: {e}");
                }
            }
            let now = Instant::now();
            let mut deadline = next_check;
            if let Some((_, due)) = &self.busy_pending {
                deadline = deadline.min(*due);
            }
            for o in &self.out {
                if let Some(s) = o.since {
                    deadline = deadline.min(s + OUTPUT_LINGER);
                }
            }
            let timeout = tp::ceil_ms(deadline.saturating_duration_since(now));
            let mut fds = vec![(self.signals.fd(), false)];
            let wfds = self.worker.as_ref().map(|w| w.poll_fds());
            if let Some(w) = &wfds {
                fds.extend_from_slice(w);
            }
            let (ready, fdr) = match tp::poll_with_fds(&[&self.control, &self.shell, &self.reg], &fds, timeout) {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!("poll failed: {e}");
                    break 1;
                }
            };
            // Signals.
            if fdr[0].readable {
                let mut stop = None;
                for sig in self.signals.drain() {
                    match sig {
                        libc::SIGTERM | libc::SIGHUP => {
                            tracing::info!("signal {sig}: unregistering and stopping");
                            stop = Some(0);
                        }
                        libc::SIGINT => {
                            // Ignored while idle, as ipengine; an interrupt while busy.
                            if self.running.is_some() {
                                if let Some(w) = &self.worker {
                                    w.signal(libc::SIGINT);
                                }
                            }
                        }
                        other => {
                            if let Some(w) = &self.worker {
                                w.signal(other);
                            }
                        }
                    }
                }
                if let Some(c) = stop {
                    break c;
                }
            }
            // Control first: a control request that arrived with shell requests is
            // taken as the earlier one.
            let mut shutdown = false;
            if ready[0] {
                while let Ok(Some(frames)) = tp::try_recv(&self.control) {
                    if self.on_control(frames) {
                        shutdown = true;
                        break;
                    }
                }
            }
            if shutdown {
                break 0;
            }
            if ready[1] {
                let start = self.queue.len();
                while let Ok(Some(frames)) = tp::try_recv(&self.shell) {
                    self.on_shell(frames);
                }
                order_by_send_time(self.queue.make_contiguous(), start);
            }
            if ready[2] {
                // Nothing is expected on the registration socket after registering.
                while let Ok(Some(_)) = tp::try_recv(&self.reg) {}
            }
            if wfds.is_some() && fdr.len() >= 4 {
                if fdr[2].readable || fdr[3].readable || fdr[2].closed || fdr[3].closed {
                    self.read_output();
                }
                if fdr[1].readable || fdr[1].closed {
                    let (msgs, exit) = match self.worker.as_mut() {
                        Some(w) => w.read_link(),
                        None => (Vec::new(), None),
                    };
                    for m in msgs {
                        self.on_worker_message(m);
                    }
                    if let Some(exit) = exit {
                        if let Some(c) = self.on_worker_exit(exit) {
                            break c;
                        }
                    }
                }
            }
            let now = Instant::now();
            if self.busy_pending.as_ref().is_some_and(|(_, due)| now >= *due) {
                self.flush_busy();
            }
            if self.out.iter().any(|o| o.since.is_some_and(|s| now >= s + OUTPUT_LINGER)) {
                self.flush_output();
            }
            if now >= next_check {
                next_check = now + hb_check;
                let pings = self.heart.state.pings.load(std::sync::atomic::Ordering::Relaxed);
                if self.watchdog.check(pings) {
                    tracing::error!(
                        "no heartbeat from the controller in {} checks of {} ms: unregistering",
                        self.watchdog.misses,
                        hb_check.as_millis()
                    );
                    break 1;
                } else if self.watchdog.misses > 0 {
                    tracing::warn!("no heartbeat in the last {} ms ({} time(s) in a row)", hb_check.as_millis(), self.watchdog.misses);
                }
            }
        };
        self.shutdown();
        code
    }

    /// Unregisters (the nanny's job in stock) and stops the worker and the heart.
    fn shutdown(&mut self) {
        self.read_output();
        self.flush_output();
        self.unregister();
        if let Some(mut w) = self.worker.take() {
            w.stop();
        }
        self.heart.stop();
    }
}

#[cfg(test)]
mod tests;
