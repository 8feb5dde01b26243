//! The hub's socket loop: one OS thread owns the registration/query ROUTER, the heartbeat
//! PUB/ROUTER, the notification PUB, the monitor SUB (or the in-memory monitor channel
//! from a scheduler thread) and the resubmission DEALER, and feeds the [`Hub`] state
//! machine. Nothing here decides anything; it moves frames, keeps time and exports counts.

use crate::hub::{Hub, HubOut, MonitorMsg, Now};
use ippx_protocol::connection;
use ippx_protocol::header::ParentRef;
use ippx_protocol::{Envelope, MonitorTopic, Parent, Session};
use ippx_scheduler::link::MonitorRx;
use ippx_telemetry::budget::{LogBudgets, Verdict};
use ippx_transport::{self as tp, zmq, WakeReceiver};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tracing::{debug, error, warn};

/// What the hub's socket thread tells the main thread.
#[derive(Debug)]
pub enum Event {
    ShutdownRequested,
    Fatal(String),
    /// The hub has settled what a dead scheduler child held ([`WAKE_SCHEDULER_DIED`]);
    /// a new one may start.
    SchedulerReset,
}

/// The wake-up payload that stops the hub's loop.
pub const WAKE_STOP: &[u8] = b"stop";
/// The wake-up payload saying the scheduler child died: the hub reads the last monitor
/// copies it sent, then settles what it held ([`crate::hub::Hub::scheduler_died`]).
pub const WAKE_SCHEDULER_DIED: &[u8] = b"scheduler-died";

pub(crate) struct HubSockets {
    pub registration: zmq::Socket,
    pub ping: zmq::Socket,
    pub pong: zmq::Socket,
    pub notification: zmq::Socket,
    pub monitor: zmq::Socket,
    /// DEALER to the client side of the task scheduler, for resubmissions.
    pub submit: zmq::Socket,
    /// Monitor copies from a scheduler on our own thread (then `monitor` is unused).
    pub monitor_rx: Option<MonitorRx>,
}

/// Where each socket sits in the poll list ([`HubSockets::poll_list`]).
mod slot {
    pub const STOP: usize = 0;
    pub const REGISTRATION: usize = 1;
    pub const PONG: usize = 2;
    pub const MONITOR: usize = 3;
    pub const SUBMIT: usize = 4;
    /// Only with a scheduler thread.
    pub const MONITOR_WAKE: usize = 5;
}

impl HubSockets {
    /// The sockets the loop reads, in [`slot`] order.
    fn poll_list<'a>(&'a self, stop: &'a WakeReceiver) -> Vec<&'a zmq::Socket> {
        let mut list = vec![stop.socket(), &self.registration, &self.pong, &self.monitor, &self.submit];
        if let Some(m) = &self.monitor_rx {
            list.push(m.wake.socket());
        }
        list
    }
}

/// The hub's socket thread.
pub(crate) struct HubIo {
    pub socks: HubSockets,
    pub hub: Hub,
    pub session: Session,
    pub monitor_session: Session,
    pub state_file: PathBuf,
    pub events: mpsc::Sender<Event>,
    pub metrics: crate::metrics::HubMetrics,
    pub last_sync: Instant,
    /// The scheduler runs on our thread and verifies task traffic itself.
    pub trust_task_copies: bool,
    /// Copies are still waiting in the monitor channel after a full slice.
    pub monitor_backlog: bool,
    /// Notifications sent, shared with a scheduler thread.
    pub notifications_published: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    /// Lines about unverifiable messages on the registration socket (a flood is counted
    /// in full, logged thinly).
    pub drop_log: LogBudgets,
}

/// How often the hub's counts are exported to the metrics.
const METRICS_SYNC: Duration = Duration::from_millis(200);

fn peer(frames: &[Vec<u8>]) -> String {
    crate::hub::peer_name(frames)
}

fn to_vecs(msgs: Vec<zmq::Message>) -> Vec<Vec<u8>> {
    msgs.into_iter().map(|m| m.to_vec()).collect()
}

impl HubIo {
    pub fn run(&mut self, stop: WakeReceiver) -> anyhow::Result<()> {
        let mut outs = Vec::new();
        let mut poller = tp::Poller::new(&self.socks.poll_list(&stop))?;
        loop {
            let now = Instant::now();
            if now >= self.hub.next_deadline() {
                // Heartbeat verdicts fail an engine's queued tasks: know them all first.
                self.drain_monitor_channel(false, &mut outs);
            }
            self.hub.tick(Now { at: now, wall: ippx_protocol::datetime::now() }, &mut outs);
            self.execute(&mut outs);
            self.hub.answer_status_requests(now);
            if now.duration_since(self.last_sync) >= METRICS_SYNC {
                self.metrics.sync(&mut self.hub);
                self.last_sync = now;
            }
            let wait = self.hub.next_deadline().saturating_duration_since(Instant::now()).min(METRICS_SYNC);
            let timeout = if self.monitor_backlog { 0 } else { tp::ceil_ms(wait) };
            let ready = poller.poll(&self.socks.poll_list(&stop), timeout)?;
            if ready[slot::STOP] {
                let wakes = stop.drain();
                if wakes.iter().any(|w| w.as_slice() != WAKE_SCHEDULER_DIED) {
                    return Ok(());
                }
                // Everything the dead scheduler sent first, so that a task it gave an
                // engine is not taken for one it still held.
                while let Some(msgs) = tp::try_recv(&self.socks.monitor)? {
                    self.on_monitor(msgs, &mut outs);
                    self.execute(&mut outs);
                }
                self.hub.scheduler_died(Now { at: Instant::now(), wall: ippx_protocol::datetime::now() });
                let _ = self.events.send(Event::SchedulerReset);
                continue;
            }
            // Replies and resubmissions can be sent from any iteration (timers complete
            // registrations), so those two sockets are always asked next time.
            for (i, r) in ready.iter().enumerate() {
                if *r {
                    poller.touch(i);
                }
            }
            poller.touch(slot::REGISTRATION);
            poller.touch(slot::SUBMIT);
            if ready[slot::SUBMIT] {
                // Replies to resubmitted tasks: the hub records them from the monitor copy.
                while let Ok(Some(_)) = tp::try_recv(&self.socks.submit) {}
            }
            // Pongs first: a late beat must not count as a miss because the query
            // socket was busy.
            if ready[slot::PONG] {
                self.drain_pongs(&mut outs);
            }
            if ready[slot::REGISTRATION] {
                // The scheduler thread wakes us for its monitor copies only every
                // millisecond or so; a query must see every copy made before it.
                self.drain_monitor_channel(false, &mut outs);
                for _ in 0..1024 {
                    let Some(msgs) = tp::try_recv(&self.socks.registration)? else { break };
                    self.on_query(to_vecs(msgs), &mut outs);
                    self.execute(&mut outs);
                }
            }
            if ready[slot::MONITOR] {
                for n in 0..4096 {
                    let Some(msgs) = tp::try_recv(&self.socks.monitor)? else { break };
                    self.on_monitor(msgs, &mut outs);
                    self.execute(&mut outs);
                    self.maybe_pongs(n, &mut outs);
                }
            }
            let woken = ready.get(slot::MONITOR_WAKE).copied().unwrap_or(false);
            if woken || self.monitor_backlog {
                self.drain_monitor_channel(woken, &mut outs);
            }
        }
    }

    /// Each look at the pong socket costs a syscall in libzmq; every 128 copies (a few
    /// ms of work at most) is often enough for heartbeats.
    fn maybe_pongs(&mut self, n: usize, outs: &mut Vec<HubOut>) {
        if n % 128 == 127 && self.socks.pong.get_events().map(|e| e.contains(zmq::POLLIN)).unwrap_or(false) {
            self.drain_pongs(outs);
        }
    }

    /// Copies from a scheduler thread. The flag is cleared before draining, so a copy
    /// sent after this point wakes us again; a burst is taken in slices of 4,096 so the
    /// other sockets are not starved. `woken`: the wake-up socket is readable (reading
    /// it otherwise would cost a syscall for nothing).
    fn drain_monitor_channel(&mut self, woken: bool, outs: &mut Vec<HubOut>) {
        let Some(m) = self.socks.monitor_rx.take() else { return };
        if woken {
            m.wake.drain();
        }
        m.signalled.store(false, std::sync::atomic::Ordering::Release);
        self.monitor_backlog = false;
        for n in 0..4096 {
            match m.rx.try_recv() {
                Ok(frames) => {
                    self.on_monitor(frames, outs);
                    self.execute(outs);
                    self.maybe_pongs(n, outs);
                }
                Err(_) => break,
            }
            // Not done: the next poll must not wait.
            self.monitor_backlog = n == 4095;
        }
        self.socks.monitor_rx = Some(m);
    }

    fn drain_pongs(&mut self, outs: &mut Vec<HubOut>) {
        while let Ok(Some(mut msgs)) = tp::try_recv(&self.socks.pong) {
            if msgs.len() != 2 {
                self.hub.drop_msg("malformed");
                if let Verdict::Log { suppressed } = self.drop_log.check("hb_pong", Instant::now()) {
                    warn!(socket = "hb_pong", peer = %peer(&to_vecs(msgs)), suppressed, "dropped pong with unexpected frame count");
                }
                continue;
            }
            self.metrics.received("hb_pong", "pong");
            // The status page shows each engine's address: read once per engine.
            if self.hub.status.wants_host(&msgs[0]) {
                if let Some(addr) = msgs[1].gets("Peer-Address").map(str::to_owned) {
                    self.hub.status.set_host(&msgs[0], &addr);
                }
            }
            self.hub.pong(&msgs[0], &msgs[1], outs);
        }
        self.execute(outs);
    }

    fn on_query(&mut self, frames: Vec<Vec<u8>>, outs: &mut Vec<HubOut>) {
        let who = peer(&frames);
        match self.session.receive(frames, true) {
            Ok((env, header)) => {
                self.metrics.received("registration", &header.msg_type);
                // A frame that does not unpack gets hub_error, whatever the handler would read.
                if let Err((part, e)) = self.session.check_dicts(&env) {
                    self.hub.drop_msg("malformed");
                    warn!(socket = "registration", reason = "malformed", peer = %who, msg_type = %header.msg_type, "dropped message: cannot unpack {part}: {e}");
                    let content = ippx_protocol::content::ErrorContent::new("ProtocolError", format!("cannot unpack {part}: {e}")).to_value();
                    outs.push(HubOut::Reply {
                        idents: env.idents().to_vec(),
                        msg_type: "hub_error".into(),
                        parent: env.header_bytes().to_vec(),
                        content,
                        buffers: vec![],
                    });
                    return;
                }
                let idents = env.idents().to_vec();
                self.hub.query(idents, &header, env.header_bytes(), env.content_bytes(), Now::system(), outs);
            }
            Err((e, frames)) => {
                self.metrics.received("registration", "");
                self.hub.drop_msg(e.reason());
                if let Verdict::Log { suppressed } = self.drop_log.check("registration", Instant::now()) {
                    warn!(socket = "registration", reason = e.reason(), peer = %who, suppressed, "dropped message: {e}");
                }
                // Only a message whose signature holds is answered: a wrong key, a missing
                // signature, a replay or broken framing gets nothing (as stock), so a
                // stranger learns nothing and a flood costs no replies queued to a peer
                // that may never read them. A signed message whose header does not decode
                // came from a holder of the key: it gets a hub_error so it never waits.
                if !matches!(e, ippx_protocol::session::RecvError::Decode(_)) {
                    return;
                }
                let Some(d) = ippx_protocol::wire::find_delim(&frames) else { return };
                if d == 0 {
                    return;
                }
                let idents = frames[..d].to_vec();
                let parent = frames.get(d + 2).filter(|h| self.session.unpack::<ParentRef>(h).is_ok()).cloned().unwrap_or_default();
                let content = ippx_protocol::content::ErrorContent::new("ProtocolError", format!("message refused: {e}")).to_value();
                outs.push(HubOut::Reply { idents, msg_type: "hub_error".into(), parent, content, buffers: vec![] });
            }
        }
    }

    /// One monitor copy, `[topic, idents.., DELIM, sig, h, p, m, c, bufs..]`. The frames
    /// stay zmq messages; only the routing prefix and the buffers (which the record keeps)
    /// are copied out.
    fn on_monitor<F: std::ops::Deref<Target = [u8]>>(&mut self, mut frames: Vec<F>, outs: &mut Vec<HubOut>) {
        if frames.is_empty() {
            return;
        }
        let topic = frames.remove(0);
        let env = match Envelope::parse(frames) {
            Ok(env) => env,
            Err((e, _)) => {
                self.hub.drop_msg("malformed");
                if let Verdict::Log { suppressed } = self.drop_log.check("monitor", Instant::now()) {
                    warn!(socket = "monitor", topic = %String::from_utf8_lossy(&topic), suppressed, "dropped copy: {e}");
                }
                return;
            }
        };
        let idents: Vec<Vec<u8>> = env.idents().iter().map(|m| m.to_vec()).collect();
        // Copies of messages the relays already passed on: verify, but no replay check
        // (docs/protocol.md §1.3). A forged copy must not create records. A scheduler on our own thread
        // has already verified task traffic (it drops what does not verify), and nobody
        // else can reach the inproc monitor socket, so those copies are not checked twice.
        let trusted = self.trust_task_copies && MonitorTopic::from_bytes(&topic).is_some_and(MonitorTopic::is_task);
        if !trusted {
            if let Err(e) = self.monitor_session.check(&env, false) {
                self.hub.drop_msg(e.reason());
                if let Verdict::Log { suppressed } = self.drop_log.check("monitor", Instant::now()) {
                    warn!(socket = "monitor", topic = %String::from_utf8_lossy(&topic), peer = %peer(&idents), suppressed, "dropped copy: {e}");
                }
                return;
            }
        }
        let h = match self.monitor_session.header(&env) {
            Ok(h) => h,
            Err(e) => {
                self.hub.drop_msg(e.reason());
                if let Verdict::Log { suppressed } = self.drop_log.check("monitor", Instant::now()) {
                    warn!(socket = "monitor", suppressed, "dropped copy: {e}");
                }
                return;
            }
        };
        self.metrics.received("monitor", &h.msg_type);
        let parent_id = self.monitor_session.unpack::<ParentRef>(env.parent_bytes()).map(|p| p.msg_id).unwrap_or_default();
        let buffers: Vec<Vec<u8>> = env.buffers().iter().map(|m| m.to_vec()).collect();
        let msg = MonitorMsg {
            h: &h,
            parent_id,
            header: env.header_bytes(),
            metadata: env.metadata_bytes(),
            content: env.content_bytes(),
            buffers: &buffers,
        };
        self.hub.monitor(&topic, &idents, msg, Now::system(), outs);
    }

    fn execute(&mut self, outs: &mut Vec<HubOut>) {
        for o in outs.drain(..) {
            match o {
                HubOut::Reply { idents, msg_type, parent, content, buffers } => {
                    let p = if parent.is_empty() { Parent::None } else { Parent::Raw(&parent) };
                    match self.session.serialize(idents, &msg_type, p, &ippx_protocol::Value::map(), &content, buffers) {
                        Ok((h, frames)) => {
                            debug!(msg_type = %msg_type, msg_id = %h.msg_id, "reply");
                            if let Err(e) = tp::send(&self.socks.registration, frames) {
                                warn!(msg_type = %msg_type, "cannot send reply (peer gone?): {e}");
                            }
                        }
                        Err(e) => error!("cannot pack {msg_type}: {e}"),
                    }
                }
                HubOut::Notify { msg_type, content, parent } => {
                    let p = if parent.is_empty() { Parent::None } else { Parent::Raw(&parent) };
                    match self.session.serialize(vec![], msg_type, p, &ippx_protocol::Value::map(), &content, vec![]) {
                        Ok((_, frames)) => {
                            let _ = tp::send(&self.socks.notification, frames);
                            // After the send: the scheduler thread reads this count to know
                            // the notification is already in its inproc pipe.
                            if let Some(n) = &self.notifications_published {
                                n.fetch_add(1, std::sync::atomic::Ordering::Release);
                            }
                        }
                        Err(e) => error!("cannot pack {msg_type}: {e}"),
                    }
                }
                HubOut::Ping(payload) => {
                    let _ = tp::send(&self.socks.ping, [payload]);
                }
                HubOut::SaveState(state) => {
                    if let Err(e) = connection::write_atomic(&self.state_file, &state) {
                        warn!("cannot save engine state: {e}");
                    }
                }
                HubOut::Shutdown => {
                    let _ = self.events.send(Event::ShutdownRequested);
                }
                HubOut::ReleaseMemory => {
                    let t = Instant::now();
                    crate::memory::release();
                    debug!(took = ?t.elapsed(), "released freed memory after a purge");
                }
                HubOut::Submit { header, content, buffers } => {
                    match self.session.serialize_with_header(
                        vec![],
                        &header,
                        Parent::Header(&header),
                        &ippx_protocol::Value::map(),
                        &content,
                        buffers,
                    ) {
                        Ok(frames) => {
                            if let Err(e) = tp::send(&self.socks.submit, frames) {
                                warn!(msg_id = %header.msg_id, "cannot submit to the task scheduler: {e}");
                            }
                        }
                        Err(e) => error!("cannot pack resubmission: {e}"),
                    }
                }
            }
        }
    }
}
