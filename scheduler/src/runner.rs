//! The scheduler's socket loop: one OS thread owns every socket of the role and blocks in
//! `zmq::poll`. All decisions are made by the pure pieces (`relay`, `task`); this module
//! only moves frames, counts drops and keeps time.

use crate::broadcast::{BroadcastOutbox, BroadcastScheduler};
use crate::link::{BoundPorts, MonitorLink, MonitorTx, RelayPorts};
use crate::relay;
use crate::task::{Scheme, TaskConfig, TaskOutbox, TaskScheduler};
use crate::Counters;
use ippx_protocol::content::EngineNotification;
use ippx_protocol::{MonitorTopic, Parent, Session, SessionConfig, Value};
use ippx_telemetry::budget::{LogBudgets, Verdict};
use ippx_transport::{self as tp, zmq, zmq::SocketType, WakeReceiver};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Which task scheduler runs behind the `task` ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskMode {
    Balanced(Scheme),
    /// A plain ROUTER↔DEALER relay that round-robins (docs/protocol.md §5.3.9).
    Pure,
    /// `--scheme=none`: the ports are bound but nothing is scheduled.
    None,
}

impl TaskMode {
    /// Every name `--scheme` accepts: the schemes, then `pure` and `none`.
    pub fn names() -> Vec<&'static str> {
        let mut v = Scheme::names();
        v.extend(["pure", "none"]);
        v
    }
}

impl std::str::FromStr for TaskMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "pure" => Ok(TaskMode::Pure),
            "none" => Ok(TaskMode::None),
            other => {
                other.parse::<Scheme>().map(TaskMode::Balanced).map_err(|_| format!("unknown scheme {s:?} (one of {})", TaskMode::names().join(", ")))
            }
        }
    }
}

impl std::fmt::Display for TaskMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaskMode::Balanced(s) => f.write_str(s.name()),
            TaskMode::Pure => f.write_str("pure"),
            TaskMode::None => f.write_str("none"),
        }
    }
}

#[derive(Debug)]
pub struct SchedulerConfig {
    pub transport: String,
    pub engine_ip: String,
    pub client_ip: String,
    pub engine: RelayPorts,
    pub client: RelayPorts,
    pub engine_broadcast: Vec<u16>,
    pub client_broadcast: u16,
    /// Where monitor copies go.
    pub monitor: MonitorLink,
    /// With the hub in this process: how many notifications it has sent (each is in our
    /// inproc pipe by the time it is counted). None: look at the socket every time.
    pub notifications_published: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    /// Hub sockets we connect to.
    pub notification_url: String,
    pub registration_url: String,
    pub session: SessionConfig,
    pub task_mode: TaskMode,
    pub hwm: usize,
    pub stranded_delay: Duration,
    /// The controller's CURVE keys: every socket bound here is a CURVE server, and the
    /// ones to the hub connect as its clients.
    pub curve: Option<tp::CurveKeys>,
}

enum Monitor {
    Socket(zmq::Socket),
    Channel { link: MonitorTx, pending: std::cell::Cell<u32>, since: std::cell::Cell<Option<Instant>> },
}

/// How long monitor copies may wait in the channel before the hub is woken for them, and
/// how many may pile up. The hub's bookkeeping is not on any task's path (clients get
/// replies from us), and the hub drains the channel before it answers a query, so a
/// client never sees it behind; waking it per batch instead of per message halves the
/// thread wake-ups of a latency-bound load (2 engines, hwm 1).
const MONITOR_DELAY: std::time::Duration = std::time::Duration::from_millis(1);
const MONITOR_BATCH: u32 = 512;
/// How long client input waits at start while engines the hub knows reconnect.
const RECONNECT_GRACE: std::time::Duration = std::time::Duration::from_millis(1000);

impl Monitor {
    fn send(&self, frames: Vec<Vec<u8>>) {
        match self {
            Monitor::Socket(s) => {
                let _ = tp::send(s, frames);
            }
            Monitor::Channel { link, pending, since } => {
                // A closed channel means the hub is stopping; the copy has nowhere to go.
                if link.tx.send(frames).is_ok() {
                    pending.set(pending.get() + 1);
                    if since.get().is_none() {
                        since.set(Some(Instant::now()));
                    }
                }
            }
        }
    }

    /// Wakes the hub for the copies sent since the last wake once there are enough of
    /// them or the oldest has waited [`MONITOR_DELAY`], unless it is already coming.
    /// Returns when it must be called again at the latest.
    fn flush(&self) -> Option<Instant> {
        let Monitor::Channel { link, pending, since } = self else { return None };
        let first = since.get()?;
        let due = first + MONITOR_DELAY;
        if pending.get() < MONITOR_BATCH && Instant::now() < due {
            return Some(due);
        }
        pending.set(0);
        since.set(None);
        if !link.signalled.swap(true, std::sync::atomic::Ordering::AcqRel) {
            link.waker.wake(b"m");
        }
        None
    }
}

/// Where each socket sits in the poll list ([`Sockets::poll_list`]); the broadcast
/// leaves follow [`slot::LEAVES`].
mod slot {
    pub const STOP: usize = 0;
    pub const NOTIF: usize = 1;
    pub const QUERY: usize = 2;
    pub const MUX_IN: usize = 3;
    pub const MUX_OUT: usize = 4;
    pub const CTL_IN: usize = 5;
    pub const CTL_OUT: usize = 6;
    pub const IOPUB: usize = 7;
    pub const TASK_IN: usize = 8;
    pub const TASK_OUT: usize = 9;
    pub const BCAST_ROOT: usize = 10;
    pub const LEAVES: usize = 11;
}

struct Sockets {
    mux_in: zmq::Socket,
    mux_out: zmq::Socket,
    ctl_in: zmq::Socket,
    ctl_out: zmq::Socket,
    iopub_sub: zmq::Socket,
    iopub_pub: zmq::Socket,
    task_in: zmq::Socket,
    task_out: zmq::Socket,
    bcast_root: zmq::Socket,
    bcast_leaves: Vec<zmq::Socket>,
    monitor: Monitor,
    notif: zmq::Socket,
    query: zmq::Socket,
}

/// A bound scheduler, ready to run.
pub struct Scheduler {
    cfg: SchedulerConfig,
    socks: Sockets,
    ports: BoundPorts,
    session: Session,
    task: Option<TaskScheduler>,
    broadcast: BroadcastScheduler,
    counters: Counters,
    rx: Rx,
    /// `notifications_published` as of our last drain of the notification socket.
    notifications_seen: u64,
    /// Lines about dropped messages: every drop is counted, a flood is logged thinly.
    drop_log: LogBudgets,
}

/// Per-socket receive counters, taken out of the metric family once.
struct Rx {
    mux_in: prometheus_client::metrics::counter::Counter,
    mux_out: prometheus_client::metrics::counter::Counter,
    control_in: prometheus_client::metrics::counter::Counter,
    control_out: prometheus_client::metrics::counter::Counter,
    iopub: prometheus_client::metrics::counter::Counter,
    task_in: prometheus_client::metrics::counter::Counter,
    task_out: prometheus_client::metrics::counter::Counter,
    broadcast_in: prometheus_client::metrics::counter::Counter,
    broadcast_out: prometheus_client::metrics::counter::Counter,
    notification: prometheus_client::metrics::counter::Counter,
}

impl Rx {
    fn new(c: &Counters) -> Self {
        Rx {
            mux_in: c.received("mux_in"),
            mux_out: c.received("mux_out"),
            control_in: c.received("control_in"),
            control_out: c.received("control_out"),
            iopub: c.received("iopub"),
            task_in: c.received("task_in"),
            task_out: c.received("task_out"),
            broadcast_in: c.received("broadcast_in"),
            broadcast_out: c.received("broadcast_out"),
            notification: c.received("notification"),
        }
    }
}

fn frames_of(msgs: Vec<zmq::Message>) -> Vec<Vec<u8>> {
    msgs.into_iter().map(|m| m.to_vec()).collect()
}

impl Sockets {
    /// The sockets the loop reads, in [`slot`] order.
    fn poll_list<'a>(&'a self, stop: &'a WakeReceiver) -> Vec<&'a zmq::Socket> {
        let mut list = Vec::with_capacity(slot::LEAVES + self.bcast_leaves.len());
        list.extend([
            stop.socket(),
            &self.notif,
            &self.query,
            &self.mux_in,
            &self.mux_out,
            &self.ctl_in,
            &self.ctl_out,
            &self.iopub_sub,
            &self.task_in,
            &self.task_out,
            &self.bcast_root,
        ]);
        list.extend(self.bcast_leaves.iter());
        list
    }
}

impl Scheduler {
    /// Binds every socket; nothing is read until [`Scheduler::run`]. `counters` are the
    /// metrics this scheduler updates (registered by the caller if it serves them).
    pub fn bind(ctx: &zmq::Context, mut cfg: SchedulerConfig, counters: Counters) -> anyhow::Result<Self> {
        let t = cfg.transport.as_str();
        let security = tp::Security::server(cfg.curve.as_ref());
        let server = |kind, id: Option<&[u8]>| security.socket(ctx, kind, id);
        let router = |id: &[u8]| server(SocketType::ROUTER, Some(id));
        let mux_in = router(b"mux_in")?;
        let mux_out = router(b"mux_out")?;
        let ctl_in = router(b"control_in")?;
        let ctl_out = router(b"control_out")?;
        let task_in = router(b"task_in")?;
        let task_out = if cfg.task_mode == TaskMode::Pure { server(SocketType::DEALER, Some(b"task_out"))? } else { router(b"task_out")? };
        let iopub_sub = server(SocketType::SUB, None)?;
        let iopub_pub = server(SocketType::PUB, None)?;
        let bcast_root = router(b"sub_scheduler_0")?;
        let depth = cfg.engine_broadcast.len().max(2).trailing_zeros();
        let broadcast = BroadcastScheduler::new(depth, Session::new(cfg.session.clone())?);
        let mut bcast_leaves = Vec::new();
        for i in 0..broadcast.leaves() {
            bcast_leaves.push(router(&broadcast.leaf_id(i))?);
        }

        let (eip, cip) = (cfg.engine_ip.as_str(), cfg.client_ip.as_str());
        let engine = RelayPorts {
            control: tp::bind(&ctl_out, t, eip, cfg.engine.control)?,
            mux: tp::bind(&mux_out, t, eip, cfg.engine.mux)?,
            task: tp::bind(&task_out, t, eip, cfg.engine.task)?,
            iopub: tp::bind(&iopub_sub, t, eip, cfg.engine.iopub)?,
        };
        let mut engine_broadcast = Vec::new();
        for (sock, port) in bcast_leaves.iter().zip(&cfg.engine_broadcast) {
            engine_broadcast.push(tp::bind(sock, t, eip, *port)?);
        }
        let client = RelayPorts {
            control: tp::bind(&ctl_in, t, cip, cfg.client.control)?,
            mux: tp::bind(&mux_in, t, cip, cfg.client.mux)?,
            task: tp::bind(&task_in, t, cip, cfg.client.task)?,
            iopub: tp::bind(&iopub_pub, t, cip, cfg.client.iopub)?,
        };
        let client_broadcast = tp::bind(&bcast_root, t, cip, cfg.client_broadcast)?;

        let monitor = match std::mem::replace(&mut cfg.monitor, MonitorLink::Url(String::new())) {
            MonitorLink::Url(url) => {
                let s = security.as_client().socket(ctx, SocketType::PUB, None)?;
                tp::connect(&s, &url)?;
                Monitor::Socket(s)
            }
            MonitorLink::Channel(link) => Monitor::Channel { link, pending: std::cell::Cell::new(0), since: std::cell::Cell::new(None) },
        };
        // The hub's sockets are CURVE servers too (over inproc the options do nothing).
        let to_hub = security.as_client();
        let notif = to_hub.socket(ctx, SocketType::SUB, None)?;
        tp::connect(&notif, &cfg.notification_url)?;
        let query = to_hub.socket(ctx, SocketType::DEALER, None)?;
        tp::connect(&query, &cfg.registration_url)?;

        let session = Session::new(cfg.session.clone())?;
        let task = match cfg.task_mode {
            TaskMode::Balanced(scheme) => Some(TaskScheduler::new(
                TaskConfig { scheme, hwm: cfg.hwm, stranded_delay: cfg.stranded_delay, seed: rand::random() },
                Session::new(cfg.session.clone())?,
            )),
            TaskMode::Pure | TaskMode::None => None,
        };
        let ports = BoundPorts { engine, client, engine_broadcast, client_broadcast };
        let socks =
            Sockets { mux_in, mux_out, ctl_in, ctl_out, iopub_sub, iopub_pub, task_in, task_out, bcast_root, bcast_leaves, monitor, notif, query };
        let rx = Rx::new(&counters);
        Ok(Scheduler { cfg, socks, ports, session, task, broadcast, counters, rx, notifications_seen: 0, drop_log: LogBudgets::default() })
    }

    pub fn ports(&self) -> &BoundPorts {
        &self.ports
    }

    /// Runs until `stop` receives a wake-up.
    pub fn run(mut self, stop: WakeReceiver) -> anyhow::Result<Counters> {
        // Learn the engines that registered before we started (docs/protocol.md §4.1 step 5).
        let (_, req) = self.session.serialize(vec![], "connection_request", Parent::None, &Value::map(), &Value::map(), vec![])?;
        if let Err(e) = tp::send(&self.socks.query, req) {
            warn!("cannot send connection_request to the hub: {e}");
        }
        if self.await_reconnecting_engines(&stop)? {
            info!("scheduler stopping");
            return Ok(self.counters);
        }
        info!(?self.ports, mode = ?self.cfg.task_mode, "scheduler running");
        let mut poller = tp::Poller::new(&self.socks.poll_list(&stop))?;
        loop {
            let s = &self.socks;
            let monitor_due = s.monitor.flush();
            let now = Instant::now();
            let timeout = [self.task.as_ref().and_then(TaskScheduler::next_deadline), monitor_due]
                .into_iter()
                .flatten()
                .map(|d| tp::ceil_ms(d.saturating_duration_since(now)))
                .fold(1000, i64::min);
            let ready = poller.poll(&s.poll_list(&stop), timeout)?;
            if ready[slot::STOP] {
                stop.drain();
                info!("scheduler stopping");
                return Ok(self.counters);
            }
            // What this iteration may use, beside the sockets it drains: the partner of
            // each relay, both task sockets (replies, timeouts and engine removals send
            // on them) and the whole broadcast tree.
            for (i, r) in ready.iter().enumerate() {
                if *r {
                    poller.touch(i);
                }
            }
            for (a, b) in [(slot::MUX_IN, slot::MUX_OUT), (slot::CTL_IN, slot::CTL_OUT)] {
                if ready[a] || ready[b] {
                    poller.touch(a);
                    poller.touch(b);
                }
            }
            poller.touch(slot::NOTIF);
            poller.touch(slot::TASK_IN);
            poller.touch(slot::TASK_OUT);
            if ready[slot::NOTIF] || ready[slot::BCAST_ROOT..].iter().any(|r| *r) {
                for i in slot::BCAST_ROOT..ready.len() {
                    poller.touch(i);
                }
            }
            // Notifications first: an engine announced before a submission must be routable.
            if ready[slot::NOTIF] {
                self.drain_notifications();
            }
            if ready[slot::QUERY] {
                self.drain_query();
            }
            // Control before MUX: a client's `clear()` sent just before an execute usually
            // arrives in the same poll as it, and must reach the engine first (the engine
            // takes control before shell as well). It cannot be made certain: the two
            // travel on separate connections.
            if ready[slot::CTL_IN] {
                self.drain_direct(Direct::CtlIn);
            }
            if ready[slot::MUX_IN] {
                self.drain_direct(Direct::MuxIn);
            }
            if ready[slot::MUX_OUT] {
                self.drain_direct(Direct::MuxOut);
            }
            if ready[slot::CTL_OUT] {
                self.drain_direct(Direct::CtlOut);
            }
            if ready[slot::IOPUB] {
                self.drain_iopub();
            }
            if ready[slot::TASK_IN] {
                self.drain_task_in();
            }
            if ready[slot::TASK_OUT] {
                self.drain_task_out();
            }
            if ready[slot::BCAST_ROOT] {
                self.drain_broadcast(None);
            }
            for i in 0..self.socks.bcast_leaves.len() {
                if ready[slot::LEAVES + i] {
                    self.drain_broadcast(Some(i));
                }
            }
            self.task_call(|task, out| task.tick(Instant::now(), out));
            if let Some(task) = self.task.as_ref() {
                let stats = task.stats();
                self.counters.sync_task(&stats);
            }
            self.counters.set_broadcasts_pending(self.broadcast.pending());
        }
    }

    fn drop_msg(&mut self, socket: &'static str, reason: &'static str, peer: &[u8], detail: &dyn std::fmt::Display) {
        self.counters.drop(reason);
        if let Verdict::Log { suppressed } = self.drop_log.check(socket, Instant::now()) {
            warn!(socket, reason, peer = %String::from_utf8_lossy(peer), suppressed, "dropped message: {detail}");
        }
    }

    fn drain_notifications(&mut self) {
        while let Ok(Some(msgs)) = tp::try_recv(&self.socks.notif) {
            self.rx.notification.inc();
            let frames = frames_of(msgs);
            let (env, header) = match self.session.receive(frames, false) {
                Ok(ok) => ok,
                Err((e, _)) => {
                    self.drop_msg("notification", e.reason(), b"hub", &e);
                    continue;
                }
            };
            let now = Instant::now();
            match header.msg_type.as_str() {
                "registration_notification" | "unregistration_notification" => {
                    let n: EngineNotification = match self.session.unpack(env.content_bytes()) {
                        Ok(n) => n,
                        Err(e) => {
                            self.drop_msg("notification", "malformed", b"hub", &e);
                            continue;
                        }
                    };
                    debug!(msg_type = %header.msg_type, id = n.id, uuid = %n.uuid, "engine notification");
                    if header.msg_type == "unregistration_notification" {
                        let mut bout = BOut { socks: &self.socks, counters: &mut self.counters };
                        self.broadcast.remove_engine(&n.uuid, &mut bout);
                    }
                    if header.msg_type == "registration_notification" {
                        self.task_call(|task, out| task.add_engine(&n.uuid, now, out));
                    } else {
                        // Replies already received from that engine are handled first (docs/protocol.md §5.3.7).
                        self.drain_task_out();
                        self.task_call(|task, out| task.remove_engine(&n.uuid, now, out));
                    }
                }
                "shutdown_notification" => info!("hub announced shutdown"),
                other => self.drop_msg("notification", "unknown", b"hub", &format!("msg_type {other}")),
            }
        }
    }

    /// Engines the hub has when we start are reconnecting to us: this scheduler child was
    /// restarted, or the hub restored them. Until one is back a request routed to it would
    /// be dropped (ROUTER) or take it for dead (tasks), so client input waits in its
    /// queues for [`RECONNECT_GRACE`] (libzmq redials every 100 ms). Waits up to 2 s for
    /// the hub's answer first. Returns true when told to stop meanwhile.
    fn await_reconnecting_engines(&mut self, stop: &WakeReceiver) -> anyhow::Result<bool> {
        let deadline = Instant::now() + std::time::Duration::from_secs(2);
        let mut known = None;
        while known.is_none() && Instant::now() < deadline {
            let ready = tp::poll(&[stop.socket(), &self.socks.query], tp::ceil_ms(deadline.saturating_duration_since(Instant::now())))?;
            if ready[0] {
                return Ok(true);
            }
            if ready[1] {
                known = self.drain_query();
            }
        }
        if known.unwrap_or(0) > 0 {
            info!(engines = known, grace_ms = RECONNECT_GRACE.as_millis() as u64, "engines known at start: client input waits while they reconnect");
            if tp::poll(&[stop.socket()], RECONNECT_GRACE.as_millis() as i64)?[0] {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Handles the hub's answers; returns how many engines the last connection_reply named.
    fn drain_query(&mut self) -> Option<usize> {
        let mut known = None;
        while let Ok(Some(msgs)) = tp::try_recv(&self.socks.query) {
            let frames = frames_of(msgs);
            let (env, header) = match self.session.receive(frames, true) {
                Ok(ok) => ok,
                Err((e, _)) => {
                    self.drop_msg("query", e.reason(), b"hub", &e);
                    continue;
                }
            };
            if header.msg_type != "connection_reply" {
                self.drop_msg("query", "unknown", b"hub", &format!("msg_type {}", header.msg_type));
                continue;
            }
            let content: ippx_protocol::content::ConnectionReply = match self.session.unpack(env.content_bytes()) {
                Ok(c) => c,
                Err(e) => {
                    self.drop_msg("query", "malformed", b"hub", &e);
                    continue;
                }
            };
            info!(engines = content.engines.len(), "engines known to the hub at start");
            known = Some(content.engines.len());
            let mut ids: Vec<(u64, String)> = content.engines.into_iter().filter_map(|(k, v)| k.parse().ok().map(|k| (k, v))).collect();
            ids.sort();
            for (_, uuid) in ids {
                self.task_call(|task, out| task.add_engine(&uuid, Instant::now(), out));
            }
        }
        known
    }

    fn drain_direct(&mut self, which: Direct) {
        let s = &self.socks;
        let (src, dst, name, topic, rx): (&zmq::Socket, &zmq::Socket, &'static str, Option<MonitorTopic>, _) = match which {
            Direct::MuxIn => (&s.mux_in, &s.mux_out, "mux", Some(MonitorTopic::MuxRequest), &self.rx.mux_in),
            Direct::MuxOut => (&s.mux_out, &s.mux_in, "mux", Some(MonitorTopic::MuxReply), &self.rx.mux_out),
            // The hub ignores control copies, so we do not send them.
            Direct::CtlIn => (&s.ctl_in, &s.ctl_out, "control", None, &self.rx.control_in),
            Direct::CtlOut => (&s.ctl_out, &s.ctl_in, "control", None, &self.rx.control_out),
        };
        for _ in 0..4096 {
            let Ok(Some(mut msgs)) = tp::try_recv(src) else { break };
            rx.inc();
            if let Err(e) = relay::swap_route(&mut msgs) {
                let peer = msgs.first().map(|m| m.to_vec()).unwrap_or_default();
                self.counters.drop(e.reason());
                if let Verdict::Log { suppressed } = self.drop_log.check(name, Instant::now()) {
                    warn!(socket = name, reason = e.reason(), peer = %String::from_utf8_lossy(&peer), suppressed, "dropped message: {e}");
                }
                continue;
            }
            let copy = topic.map(|t| relay::monitor_copy(t, &msgs));
            let target = msgs[0].to_vec();
            let routed = tp::send(dst, msgs);
            if let Err(e) = &routed {
                // Python drops these silently; we count them (an unknown or dead engine, or a
                // client that went away).
                self.counters.drop("unroutable");
                warn!(socket = name, target = %String::from_utf8_lossy(&target), "cannot route: {e}");
            }
            // A reply's copy goes to the hub even when its client is gone: the engine ran
            // the task, and a later Client asks the hub for the result (as stock, whose
            // monitored queue copies every reply). A request that reached no engine is not
            // copied: the hub would book it as queued on an engine that never saw it.
            if let Some(copy) = copy.filter(|_| routed.is_ok() || which == Direct::MuxOut) {
                s.monitor.send(copy);
            }
        }
    }

    fn drain_iopub(&mut self) {
        let s = &self.socks;
        for _ in 0..4096 {
            let Ok(Some(msgs)) = tp::try_recv(&s.iopub_sub) else { break };
            self.rx.iopub.inc();
            if let Err(e) = relay::check_message(&msgs) {
                let peer = msgs.first().map(|m| m.to_vec()).unwrap_or_default();
                self.counters.drop(e.reason());
                if let Verdict::Log { suppressed } = self.drop_log.check("iopub", Instant::now()) {
                    warn!(socket = "iopub", reason = e.reason(), topic = %String::from_utf8_lossy(&peer), suppressed, "dropped message: {e}");
                }
                continue;
            }
            // The hub records output only for messages with a topic (not iopub_welcome).
            let copy = (!relay::is_delim(&msgs[0])).then(|| relay::monitor_copy(MonitorTopic::IoPub, &msgs));
            let _ = tp::send(&s.iopub_pub, msgs);
            if let Some(copy) = copy {
                s.monitor.send(copy);
            }
        }
    }

    /// Runs one task-scheduler input against the real sockets. An engine the task socket
    /// cannot reach (its connection is gone though the hub has not noticed yet) is removed
    /// from the scheduler at once: the task sent to it then gets its EngineError through
    /// the stranded-task path, instead of waiting forever.
    fn task_call<R>(&mut self, f: impl FnOnce(&mut TaskScheduler, &mut Out<'_>) -> R) -> Option<R> {
        let task = self.task.as_mut()?;
        let mut out = Out { socks: &self.socks, counters: &mut self.counters, unreachable: Vec::new() };
        let r = f(task, &mut out);
        let mut gone = std::mem::take(&mut out.unreachable);
        while let Some(uuid) = gone.pop() {
            warn!(engine = %uuid, "engine unreachable on the task socket; no more tasks go to it");
            let mut out = Out { socks: &self.socks, counters: &mut self.counters, unreachable: Vec::new() };
            task.remove_engine(&uuid, Instant::now(), &mut out);
            gone.extend(out.unreachable);
        }
        Some(r)
    }

    /// The frames of a message whose signature holds and which is not a replay, or `None`
    /// (counted and logged). The task and broadcast schedulers re-sign what they pass on,
    /// so anything they take unverified would reach the engines as if from a key holder.
    fn verified(&mut self, socket: &'static str, peer: &[u8], frames: Vec<Vec<u8>>) -> Option<Vec<Vec<u8>>> {
        match ippx_protocol::Envelope::parse(frames) {
            Ok(env) => match self.session.check(&env, true) {
                Ok(()) => Some(env.into_frames()),
                Err(e) => {
                    self.drop_msg(socket, e.reason(), peer, &e);
                    None
                }
            },
            Err((e, _)) => {
                self.drop_msg(socket, "malformed", peer, &e);
                None
            }
        }
    }

    /// A submission (from a client) or a reply (from an engine) for the task scheduler.
    fn forward_to_task_scheduler(&mut self, frames: Vec<Vec<u8>>, from_engine: bool) {
        let peer = frames.first().cloned().unwrap_or_default();
        // As Python's scheduler does (Session.deserialize), submissions and replies are
        // verified, with the replay check, before anything is scheduled: a forged task must
        // not take an engine's hwm slot, nor a forged reply complete a task.
        let Some(frames) = self.verified("task", &peer, frames) else { return };
        let now = Instant::now();
        let r = self.task_call(|task, out| if from_engine { task.engine_reply(frames, now, out) } else { task.submit(frames, now, out) });
        if let Some(Err(e)) = r {
            self.drop_msg("task", e.reason(), &peer, &e);
        }
    }

    fn drain_task_in(&mut self) {
        for _ in 0..4096 {
            // Notifications that arrived meanwhile must be seen before this submission (a
            // client may target an engine it has just heard of), as Python flushes its
            // notifier stream per submission. With the hub in this process a counter says
            // whether there is anything to read, which saves a syscall per task.
            match &self.cfg.notifications_published {
                None => self.drain_notifications(),
                Some(published) => {
                    let n = published.load(std::sync::atomic::Ordering::Acquire);
                    if n != self.notifications_seen {
                        self.drain_notifications();
                        self.notifications_seen = n;
                    }
                }
            }
            let Ok(Some(msgs)) = tp::try_recv(&self.socks.task_in) else { break };
            self.rx.task_in.inc();
            match self.cfg.task_mode {
                TaskMode::Balanced(_) => self.forward_to_task_scheduler(frames_of(msgs), false),
                TaskMode::Pure => {
                    if let Err(e) = relay::check_message(&msgs) {
                        let peer = msgs.first().map(|m| m.to_vec()).unwrap_or_default();
                        self.drop_msg("task", e.reason(), &peer, &e);
                        continue;
                    }
                    let copy = relay::monitor_copy(MonitorTopic::TaskRequest, &msgs);
                    let _ = tp::send(&self.socks.task_out, msgs);
                    self.socks.monitor.send(copy);
                }
                TaskMode::None => {
                    let peer = msgs.first().map(|m| m.to_vec()).unwrap_or_default();
                    self.drop_msg("task", "unknown", &peer, &"no task scheduler (--scheme=none)");
                }
            }
        }
    }

    fn drain_task_out(&mut self) {
        for _ in 0..4096 {
            let Ok(Some(msgs)) = tp::try_recv(&self.socks.task_out) else { break };
            self.rx.task_out.inc();
            match self.cfg.task_mode {
                TaskMode::Balanced(_) => self.forward_to_task_scheduler(frames_of(msgs), true),
                TaskMode::Pure | TaskMode::None => {
                    if let Err(e) = relay::check_message(&msgs) {
                        self.drop_msg("task", e.reason(), b"engine", &e);
                        continue;
                    }
                    let copy = relay::monitor_copy(MonitorTopic::TaskReply, &msgs);
                    if tp::send(&self.socks.task_in, msgs).is_err() {
                        self.counters.drop("unroutable");
                    }
                    self.socks.monitor.send(copy);
                }
            }
        }
    }

    fn drain_broadcast(&mut self, leaf: Option<usize>) {
        for _ in 0..4096 {
            let sock = match leaf {
                None => &self.socks.bcast_root,
                Some(i) => &self.socks.bcast_leaves[i],
            };
            let Ok(Some(msgs)) = tp::try_recv(sock) else { break };
            match leaf {
                None => self.rx.broadcast_in.inc(),
                Some(_) => self.rx.broadcast_out.inc(),
            };
            let frames = frames_of(msgs);
            let peer = frames.first().cloned().unwrap_or_default();
            // As for load-balanced tasks: a broadcast runs code on every engine.
            let Some(frames) = self.verified("broadcast", &peer, frames) else { continue };
            let mut out = BOut { socks: &self.socks, counters: &mut self.counters };
            let r = match leaf {
                None => {
                    let r = self.broadcast.submit(frames, &mut out);
                    if r.is_ok() {
                        self.counters.broadcast_submitted();
                    }
                    r
                }
                Some(i) => self.broadcast.engine_reply(i, frames, &mut out),
            };
            if let Err(e) = r {
                self.drop_msg("broadcast", "malformed", &peer, &e);
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direct {
    MuxIn,
    MuxOut,
    CtlIn,
    CtlOut,
}

/// The task scheduler's outbox over the real sockets.
struct Out<'a> {
    socks: &'a Sockets,
    counters: &'a mut Counters,
    /// Engines a send to failed; the caller removes them from the scheduler.
    unreachable: Vec<String>,
}

impl TaskOutbox for Out<'_> {
    fn to_engine(&mut self, frames: Vec<Vec<u8>>) {
        let uuid = frames.first().map(|f| String::from_utf8_lossy(f).into_owned()).unwrap_or_default();
        if let Err(e) = tp::send(&self.socks.task_out, frames) {
            self.counters.drop("unroutable");
            warn!(socket = "task", engine = %uuid, "cannot route task to engine: {e}");
            if !self.unreachable.contains(&uuid) {
                self.unreachable.push(uuid);
            }
        }
    }
    fn to_client(&mut self, frames: Vec<Vec<u8>>) {
        if let Err(e) = tp::send(&self.socks.task_in, frames) {
            self.counters.drop("unroutable");
            warn!(socket = "task", "cannot route reply to client: {e}");
        }
    }
    fn to_hub(&mut self, topic: MonitorTopic, frames: Vec<Vec<u8>>) {
        let mut all = Vec::with_capacity(frames.len() + 1);
        all.push(topic.as_bytes().to_vec());
        all.extend(frames);
        self.socks.monitor.send(all);
    }
}

/// The broadcast tree's outbox over the real sockets.
struct BOut<'a> {
    socks: &'a Sockets,
    counters: &'a mut Counters,
}

impl BroadcastOutbox for BOut<'_> {
    fn to_engine(&mut self, leaf: usize, frames: Vec<Vec<u8>>) -> bool {
        let Some(sock) = self.socks.bcast_leaves.get(leaf) else { return false };
        match tp::send(sock, frames) {
            Ok(()) => true,
            Err(e) => {
                self.counters.drop("unroutable");
                warn!(socket = "broadcast", leaf, "cannot route to engine: {e}");
                false
            }
        }
    }
    fn to_client(&mut self, frames: Vec<Vec<u8>>) {
        self.counters.broadcast_completed(true);
        if let Err(e) = tp::send(&self.socks.bcast_root, frames) {
            self.counters.drop("unroutable");
            warn!(socket = "broadcast", "cannot route reply to client: {e}");
        }
    }
}
