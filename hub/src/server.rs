//! The hub process: binds its sockets, starts the scheduler (on a thread of this process
//! by default, or as an `ippx-scheduler` child), writes the connection files, and runs the
//! hub's socket loop on one OS thread. Signals are handled by tokio on the main thread.

use crate::cli::{DbBackend, HubConfig, SchedulerMode};
use crate::hub::{Hub, HubOut, HubSettings, MonitorMsg};
use crate::profile::{hostname, plan_ports, remove_quietly, PortPlan, Profile};
use crate::records::Limits;
use crate::registry::EngineState;
use anyhow::{bail, Context as _};
use ippx_protocol::connection::{self, ClientConnectionFile, EngineConnectionFile};
use ippx_protocol::content::EnginePorts;
use ippx_protocol::header::ParentRef;
use ippx_protocol::session::new_id;
use ippx_protocol::{Envelope, Packer, Parent, Session, SessionConfig};
use ippx_transport::{self as tp, zmq, zmq::SocketType, WakeReceiver, Waker};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

/// What the hub's socket thread tells the main thread.
#[derive(Debug)]
pub enum Event {
    ShutdownRequested,
    Fatal(String),
}

struct HubSockets {
    registration: zmq::Socket,
    ping: zmq::Socket,
    pong: zmq::Socket,
    notification: zmq::Socket,
    monitor: zmq::Socket,
    /// DEALER to the client side of the task scheduler, for resubmissions.
    submit: zmq::Socket,
    /// Monitor copies from a scheduler on our own thread (then `monitor` is unused).
    monitor_rx: Option<ippx_scheduler::runner::MonitorRx>,
}

/// Everything needed to run, after binding.
pub struct Controller {
    pub profile: Profile,
    pub engine_file: EngineConnectionFile,
    pub client_file: ClientConnectionFile,
    pub write_files: bool,
    scheduler: Option<SchedulerRun>,
    /// The scheduler's metrics when it runs on a thread here; the binary serves them on
    /// the scheduler's metrics address, as a child would.
    pub scheduler_registry: Option<ippx_telemetry::prometheus_client::registry::Registry>,
    notifications_published: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    ctx: zmq::Context,
    socks: Option<HubSockets>,
    pub(crate) hub: Option<Hub>,
    session_cfg: SessionConfig,
}

/// The scheduler beside this hub.
enum SchedulerRun {
    Process(Child),
    Thread { waker: Waker, join: std::thread::JoinHandle<()> },
}

/// Distinguishes the inproc endpoints of controllers sharing a process (tests do).
static INPROC_SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn scheduler_path(cfg: &HubConfig) -> PathBuf {
    cfg.scheduler_cmd.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("ippx-scheduler")))
            .unwrap_or_else(|| PathBuf::from("ippx-scheduler"))
    })
}

fn url(transport: &str, ip: &str, port: u16) -> String {
    let ip = if ip == "0.0.0.0" || ip == "*" { "127.0.0.1" } else { ip };
    if transport == "ipc" {
        format!("ipc://{ip}-{port}")
    } else {
        format!("{transport}://{ip}:{port}")
    }
}

/// Reused files must agree on what peers cannot renegotiate (spec 2.1).
fn load_reusable(profile: &Profile) -> Option<(EngineConnectionFile, ClientConnectionFile)> {
    let e: EngineConnectionFile = connection::read(&profile.engine_file()).ok()?;
    let c: ClientConnectionFile = connection::read(&profile.client_file()).ok()?;
    let same = e.key == c.key && e.registration == c.registration && e.pack == c.pack && e.unpack == c.unpack && e.signature_scheme == c.signature_scheme;
    same.then_some((e, c))
}

impl Controller {
    /// Binds the hub's sockets, starts the scheduler and learns its ports. Nothing is
    /// written to disk yet.
    pub fn bind(cfg: &HubConfig) -> anyhow::Result<Controller> {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let profile = Profile::resolve(cfg, home);
        profile.create().with_context(|| format!("creating profile dir {}", profile.dir.display()))?;

        let reused = if cfg.reuse { load_reusable(&profile) } else { None };
        let mut plan = plan_ports(cfg);
        let mut key = match (&cfg.key, &cfg.keyfile) {
            (Some(k), _) => k.clone(),
            (None, Some(f)) => std::fs::read_to_string(f).with_context(|| format!("reading keyfile {}", f.display()))?.trim().to_owned(),
            (None, None) if cfg.secure => new_id(),
            _ => String::new(),
        };
        let mut packer: Packer = cfg.packer.parse()?;
        let mut unpacker: Packer = match &cfg.unpacker {
            Some(u) => u.parse()?,
            None => packer,
        };
        if let Some((e, c)) = &reused {
            info!("reusing connection files in {}", profile.security().display());
            key.clone_from(&e.key);
            packer = e.pack.parse()?;
            unpacker = e.unpack.parse()?;
            plan = PortPlan {
                registration: e.registration,
                engine_control: e.control,
                engine_mux: e.mux,
                engine_task: e.task,
                engine_iopub: e.iopub,
                hb_ping: e.hb_ping,
                hb_pong: e.hb_pong,
                engine_broadcast: e.broadcast.clone(),
                client_control: c.control,
                client_mux: c.mux,
                client_task: c.task,
                client_iopub: c.iopub,
                notification: c.notification,
                client_broadcast: c.broadcast,
                monitor: 0,
            };
        }
        if packer != unpacker {
            bail!("Session.packer and Session.unpacker must name the same format");
        }
        let mut session_cfg = SessionConfig::new(key.clone().into_bytes(), packer);
        session_cfg.signature_scheme.clone_from(&cfg.signature_scheme);
        if let Some(u) = &cfg.username {
            session_cfg.username.clone_from(u);
        }

        warn_if_unreachable(cfg);
        let ctx = zmq::Context::new();
        let t = cfg.transport.as_str();
        let registration = tp::socket(&ctx, SocketType::ROUTER, None)?;
        let reg_port = tp::bind(&registration, t, &cfg.engine_ip, plan.registration)?;
        if cfg.client_ip != cfg.engine_ip {
            tp::bind(&registration, t, &cfg.client_ip, reg_port)?;
        }
        let ping = tp::socket(&ctx, SocketType::PUB, None)?;
        let hb_ping = tp::bind(&ping, t, &cfg.engine_ip, plan.hb_ping)?;
        let pong = tp::socket(&ctx, SocketType::ROUTER, None)?;
        let hb_pong = tp::bind(&pong, t, &cfg.engine_ip, plan.hb_pong)?;
        let notification = tp::socket(&ctx, SocketType::PUB, None)?;
        let notif_port = tp::bind(&notification, t, &cfg.client_ip, plan.notification)?;
        let monitor = tp::socket(&ctx, SocketType::SUB, None)?;
        // With the scheduler on our thread, copies come through a channel and are trusted
        // (see HubIo::on_monitor); the monitor socket is then not bound at all.
        let in_process = !cfg.no_scheduler && cfg.scheduler_mode == SchedulerMode::Thread;
        let mon_port = if in_process { 0 } else { tp::bind(&monitor, "tcp", &cfg.monitor_ip, plan.monitor)? };

        let mut scheduler_registry = None;
        let mut monitor_rx = None;
        let mut notifications_published = None;
        let (engine_ports, client_ports, engine_broadcast, client_broadcast, scheduler) = if cfg.no_scheduler {
            for (name, p) in [("engine control", plan.engine_control), ("engine mux", plan.engine_mux), ("client mux", plan.client_mux)] {
                if p == 0 {
                    bail!("--no-scheduler needs fixed ports (--ports or engine/client ports); {name} has none");
                }
            }
            let ep = [plan.engine_control, plan.engine_mux, plan.engine_task, plan.engine_iopub];
            let cp = [plan.client_control, plan.client_mux, plan.client_task, plan.client_iopub];
            info!(
                "not starting a scheduler; run: {} --engine-ports={} --client-ports={} --engine-broadcast={} --client-broadcast={} --monitor={} --notification={} --registration={} --packer={} --scheme={} --hwm={} (key in $IPPX_SESSION_KEY)",
                scheduler_path(cfg).display(),
                join(&ep),
                join(&cp),
                join(&plan.engine_broadcast),
                plan.client_broadcast,
                url("tcp", &cfg.monitor_ip, mon_port),
                url(t, &cfg.client_ip, notif_port),
                url(t, &cfg.client_ip, reg_port),
                packer,
                cfg.scheme,
                cfg.hwm
            );
            (ep, cp, plan.engine_broadcast.clone(), plan.client_broadcast, None)
        } else if cfg.scheduler_mode == SchedulerMode::Thread {
            // The scheduler shares our zmq context, so it reaches the hub over inproc:
            // monitor copies are handed over in memory, never through the kernel.
            let base = format!("inproc://ippx-{}-{}", std::process::id(), INPROC_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            let (notif_url, reg_url) = (format!("{base}-notification"), format!("{base}-registration"));
            let (mon_tx, mon_rx) = ippx_scheduler::runner::monitor_channel(&ctx, &format!("{}-monitor", base.trim_start_matches("inproc://")))?;
            monitor_rx = Some(mon_rx);
            notifications_published = Some(std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)));
            tp::bind_endpoint(&notification, &notif_url)?;
            tp::bind_endpoint(&registration, &reg_url)?;
            let scfg = ippx_scheduler::runner::SchedulerConfig {
                transport: t.to_owned(),
                engine_ip: cfg.engine_ip.clone(),
                client_ip: cfg.client_ip.clone(),
                engine: ippx_scheduler::runner::RelayPorts { control: plan.engine_control, mux: plan.engine_mux, task: plan.engine_task, iopub: plan.engine_iopub },
                client: ippx_scheduler::runner::RelayPorts { control: plan.client_control, mux: plan.client_mux, task: plan.client_task, iopub: plan.client_iopub },
                engine_broadcast: plan.engine_broadcast.clone(),
                client_broadcast: plan.client_broadcast,
                monitor: ippx_scheduler::runner::MonitorLink::Channel(mon_tx),
                notifications_published: notifications_published.clone(),
                notification_url: notif_url,
                registration_url: reg_url,
                session: session_cfg.clone(),
                task_mode: cfg.scheme.parse().map_err(|e: String| anyhow::anyhow!("--scheme: {e}"))?,
                hwm: cfg.hwm,
                stranded_delay: Duration::from_secs(5),
            };
            let counters = ippx_scheduler::Counters::default();
            let mut registry = ippx_telemetry::prometheus_client::registry::Registry::default();
            counters.register(&mut registry);
            ippx_telemetry::register_build_info(&mut registry, "scheduler");
            scheduler_registry = Some(registry);
            let sched = ippx_scheduler::runner::Scheduler::bind(&ctx, scfg, counters).context("binding the scheduler's sockets")?;
            let ready = sched.ports().clone();
            let (waker, stop) = tp::waker(&ctx, &format!("scheduler-{}", INPROC_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)))?;
            let join = std::thread::Builder::new().name("scheduler".into()).spawn(move || match sched.run(stop) {
                Ok(counters) => info!(dropped = ?counters.dropped_summary(), "scheduler exited"),
                Err(e) => error!("scheduler loop failed: {e:#}"),
            })?;
            let e = ready.engine;
            let c = ready.client;
            (
                [e.control, e.mux, e.task, e.iopub],
                [c.control, c.mux, c.task, c.iopub],
                ready.engine_broadcast,
                ready.client_broadcast,
                Some(SchedulerRun::Thread { waker, join }),
            )
        } else {
            let mut cmd = Command::new(scheduler_path(cfg));
            cmd.args([
                format!("--engine-ip={}", cfg.engine_ip),
                format!("--client-ip={}", cfg.client_ip),
                format!("--transport={t}"),
                format!("--engine-ports={}", join(&[plan.engine_control, plan.engine_mux, plan.engine_task, plan.engine_iopub])),
                format!("--client-ports={}", join(&[plan.client_control, plan.client_mux, plan.client_task, plan.client_iopub])),
                format!("--engine-broadcast={}", join(&plan.engine_broadcast)),
                format!("--client-broadcast={}", plan.client_broadcast),
                format!("--monitor={}", url("tcp", &cfg.monitor_ip, mon_port)),
                format!("--notification={}", url(t, &cfg.client_ip, notif_port)),
                format!("--registration={}", url(t, &cfg.client_ip, reg_port)),
                format!("--packer={packer}"),
                format!("--signature-scheme={}", cfg.signature_scheme),
                format!("--scheme={}", cfg.scheme),
                format!("--hwm={}", cfg.hwm),
                format!("--log-level={}", crate::cli::tracing_level(&cfg.log_level)),
                format!("--log-format={}", cfg.log_format),
                "--lifeline".to_owned(),
            ]);
            if let Some(addr) = crate::cli::scheduler_metrics_addr(cfg) {
                cmd.arg(format!("--metrics-addr={addr}"));
            }
            cmd.env("IPPX_SESSION_KEY", &key).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
            let mut child = cmd.spawn().with_context(|| format!("starting {}", scheduler_path(cfg).display()))?;
            let ready = read_ready(&mut child).context("waiting for ippx-scheduler to bind its sockets")?;
            let e = ready.engine;
            let c = ready.client;
            ([e.control, e.mux, e.task, e.iopub], [c.control, c.mux, c.task, c.iopub], ready.engine_broadcast, ready.client_broadcast, Some(SchedulerRun::Process(child)))
        };

        let submit = tp::socket(&ctx, SocketType::DEALER, None)?;
        tp::connect(&submit, &url(t, &cfg.client_ip, client_ports[2]))?;

        let interface = format!("{t}://{}", cfg.engine_ip);
        let location = cfg.location.clone().unwrap_or_else(hostname);
        let engine_file = EngineConnectionFile {
            ssh: String::new(),
            interface: interface.clone(),
            registration: reg_port,
            control: engine_ports[0],
            mux: engine_ports[1],
            task: engine_ports[2],
            iopub: engine_ports[3],
            hb_ping,
            hb_pong,
            broadcast: engine_broadcast,
            key: key.clone(),
            curve_serverkey: None,
            location: location.clone(),
            pack: packer.name().into(),
            unpack: unpacker.name().into(),
            signature_scheme: cfg.signature_scheme.clone(),
        };
        let client_file = ClientConnectionFile {
            ssh: String::new(),
            interface: format!("{t}://{}", cfg.client_ip),
            registration: reg_port,
            control: client_ports[0],
            mux: client_ports[1],
            task: client_ports[2],
            task_scheme: cfg.scheme.clone(),
            iopub: client_ports[3],
            notification: notif_port,
            broadcast: client_broadcast,
            key,
            curve_serverkey: None,
            location,
            pack: packer.name().into(),
            unpack: unpacker.name().into(),
            signature_scheme: cfg.signature_scheme.clone(),
        };

        let period = Duration::from_millis(cfg.ping_ms.max(10));
        let reg_timeout = cfg.registration_timeout.unwrap_or_else(|| (cfg.ping_ms as f64 / 100.0).max(30.0));
        let settings = HubSettings {
            hb_period: period,
            max_misses: cfg.max_misses,
            registration_timeout: Duration::from_secs_f64(reg_timeout.max(0.1)),
            engine_ports: EnginePorts {
                interface,
                registration: reg_port,
                control: engine_file.control,
                mux: engine_file.mux,
                task: engine_file.task,
                iopub: engine_file.iopub,
                hb_ping,
                hb_pong,
                broadcast: engine_file.broadcast.clone(),
            },
            packer,
            limits: Limits { record_limit: cfg.record_limit, size_limit: cfg.size_limit, cull_fraction: cfg.cull_fraction },
            nodb: cfg.db == DbBackend::None,
        };
        let store = crate::store::open(cfg, &profile.dir)?;
        let mut hub = Hub::with_store(settings, store, Instant::now());
        if cfg.restore {
            match connection::read::<EngineState>(&profile.state_file()) {
                Ok(state) => {
                    info!(engines = state.engines.len(), "restoring engines from {}", profile.state_file().display());
                    hub.restore(&state);
                }
                Err(e) => warn!("--restore: no engine state to restore ({e})"),
            }
        }
        Ok(Controller {
            profile,
            engine_file,
            client_file,
            write_files: reused.is_none(),
            scheduler,
            scheduler_registry,
            notifications_published,
            ctx,
            socks: Some(HubSockets { registration, ping, pong, notification, monitor, submit, monitor_rx }),
            hub: Some(hub),
            session_cfg,
        })
    }

    pub fn write_connection_files(&self) -> anyhow::Result<()> {
        if self.write_files {
            connection::write_atomic(&self.profile.engine_file(), &self.engine_file)?;
            connection::write_atomic(&self.profile.client_file(), &self.client_file)?;
            info!("connection files written to {}", self.profile.security().display());
        }
        Ok(())
    }

    /// Removes what we wrote. Called first on every way out, because the stock test
    /// suite SIGKILLs the controller 0.25 s after SIGTERM.
    pub fn remove_connection_files(&self) {
        if self.write_files {
            remove_quietly(&self.profile.engine_file());
            remove_quietly(&self.profile.client_file());
        }
    }

    /// Starts the hub's socket thread.
    pub fn start(&mut self, events: mpsc::Sender<Event>, metrics: crate::metrics::HubMetrics) -> anyhow::Result<(Waker, std::thread::JoinHandle<()>)> {
        let (waker, stop) = tp::waker(&self.ctx, "hub-stop")?;
        let socks = self.socks.take().context("already started")?;
        let hub = self.hub.take().context("already started")?;
        let session = Session::new(self.session_cfg.clone())?;
        let monitor_session = Session::new(self.session_cfg.clone())?;
        let state_file = self.profile.state_file();
        let trust_task_copies = matches!(self.scheduler, Some(SchedulerRun::Thread { .. }));
        let notifications_published = self.notifications_published.clone();
        let handle = std::thread::Builder::new().name("hub-io".into()).spawn(move || {
            let mut io = HubIo { socks, hub, session, monitor_session, state_file, events: events.clone(), metrics, last_sync: Instant::now(), trust_task_copies, monitor_backlog: false, notifications_published };
            if let Err(e) = io.run(stop) {
                error!("hub socket loop failed: {e:#}");
                let _ = events.send(Event::Fatal(format!("{e:#}")));
            }
        })?;
        Ok((waker, handle))
    }

    /// Whether the scheduler is still running (always true without one).
    pub fn scheduler_alive(&mut self) -> bool {
        match self.scheduler.as_mut() {
            None => true,
            Some(SchedulerRun::Thread { join, .. }) => {
                if join.is_finished() {
                    error!("the scheduler thread ended");
                    return false;
                }
                true
            }
            Some(SchedulerRun::Process(child)) => match child.try_wait() {
                Ok(None) => true,
                Ok(Some(status)) => {
                    error!("ippx-scheduler exited: {status}");
                    false
                }
                Err(e) => {
                    error!("cannot check ippx-scheduler: {e}");
                    false
                }
            },
        }
    }

    pub fn stop_scheduler(&mut self) {
        match self.scheduler.take() {
            None => {}
            Some(SchedulerRun::Thread { waker, join }) => {
                waker.wake(b"stop");
                let _ = join.join();
            }
            Some(SchedulerRun::Process(mut child)) => {
                // Closing its stdin (the lifeline) makes it exit; kill as a backstop.
                drop(child.stdin.take());
                let deadline = Instant::now() + Duration::from_millis(100);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn is_loopback(ip: &str) -> bool {
    ip == "localhost" || ip.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback())
}

/// Engines on other machines cannot reach a controller bound to loopback. Users lose
/// hours to this (ipyparallel #499, #355), so say it loudly at start-up when the
/// configuration suggests remote peers.
pub fn remote_peers_warning(cfg: &HubConfig) -> Option<String> {
    let loop_engine = is_loopback(&cfg.engine_ip);
    let loop_client = is_loopback(&cfg.client_ip);
    let location = cfg.location.as_deref().filter(|l| !l.is_empty() && !is_loopback(l))?;
    if !(loop_engine || loop_client) {
        return None;
    }
    let which = match (loop_engine, loop_client) {
        (true, true) => "engines and clients",
        (true, false) => "engines",
        _ => "clients",
    };
    Some(format!(
        "the controller binds only loopback (engine ip {}, client ip {}) but --location={location} says peers are remote: \
         {which} on other machines will not be able to connect. Use --ip=0.0.0.0 (or this machine's address) to accept them.",
        cfg.engine_ip, cfg.client_ip
    ))
}

fn warn_if_unreachable(cfg: &HubConfig) {
    if let Some(w) = remote_peers_warning(cfg) {
        warn!("!!! {w}");
        eprintln!("\nWARNING: {w}\n");
    }
}

fn join(v: &[u16]) -> String {
    v.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
}

#[derive(serde::Deserialize)]
struct Ready {
    ippx_scheduler_ready: ippx_scheduler::runner::BoundPorts,
}

fn read_ready(child: &mut Child) -> anyhow::Result<ippx_scheduler::runner::BoundPorts> {
    let stdout = child.stdout.take().context("no scheduler stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = std::io::BufReader::new(stdout);
        let mut line = String::new();
        let r = reader.read_line(&mut line).map(|_| line);
        let _ = tx.send(r);
        // Keep draining so the scheduler never blocks on a full stdout pipe.
        let mut sink = String::new();
        while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(15)).context("ippx-scheduler did not report ready within 15 s")??;
    if line.trim().is_empty() {
        bail!("ippx-scheduler exited before binding its sockets");
    }
    let r: Ready = serde_json::from_str(line.trim()).with_context(|| format!("bad ready line from ippx-scheduler: {line:?}"))?;
    Ok(r.ippx_scheduler_ready)
}

/// The hub's socket thread.
struct HubIo {
    socks: HubSockets,
    hub: Hub,
    session: Session,
    monitor_session: Session,
    state_file: PathBuf,
    events: mpsc::Sender<Event>,
    metrics: crate::metrics::HubMetrics,
    last_sync: Instant,
    /// The scheduler runs on our thread and verifies task traffic itself.
    trust_task_copies: bool,
    /// Copies are still waiting in the monitor channel after a full slice.
    monitor_backlog: bool,
    /// Notifications sent, shared with a scheduler thread.
    notifications_published: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
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
    fn run(&mut self, stop: WakeReceiver) -> anyhow::Result<()> {
        let mut outs = Vec::new();
        let mut poller = {
            let mut list = vec![stop.socket(), &self.socks.registration, &self.socks.pong, &self.socks.monitor, &self.socks.submit];
            if let Some(m) = &self.socks.monitor_rx {
                list.push(m.wake.socket());
            }
            tp::Poller::new(&list)?
        };
        loop {
            let now = Instant::now();
            if now >= self.hub.next_deadline() {
                // Heartbeat verdicts fail an engine's queued tasks: know them all first.
                self.drain_monitor_channel(false, &mut outs);
            }
            self.hub.tick(now, &mut outs);
            self.execute(&mut outs);
            self.hub.answer_status_requests(now);
            if now.duration_since(self.last_sync) >= METRICS_SYNC {
                self.metrics.sync(&mut self.hub);
                self.last_sync = now;
            }
            let wait = self.hub.next_deadline().saturating_duration_since(Instant::now()).min(METRICS_SYNC);
            let timeout = if self.monitor_backlog { 0 } else { tp::ceil_ms(wait) };
            let mut list = vec![stop.socket(), &self.socks.registration, &self.socks.pong, &self.socks.monitor, &self.socks.submit];
            if let Some(m) = &self.socks.monitor_rx {
                list.push(m.wake.socket());
            }
            let ready = poller.poll(&list, timeout)?;
            if ready[0] {
                stop.drain();
                return Ok(());
            }
            // Replies and resubmissions can be sent from any iteration (timers complete
            // registrations), so those two sockets are always asked next time.
            for (i, r) in ready.iter().enumerate() {
                if *r {
                    poller.touch(i);
                }
            }
            poller.touch(1);
            poller.touch(4);
            if ready[4] {
                // Replies to resubmitted tasks: the hub records them from the monitor copy.
                while let Ok(Some(_)) = tp::try_recv(&self.socks.submit) {}
            }
            // Pongs first: a late beat must not count as a miss because the query
            // socket was busy.
            if ready[2] {
                self.drain_pongs(&mut outs);
            }
            if ready[1] {
                // The scheduler thread wakes us for its monitor copies only every
                // millisecond or so; a query must see every copy made before it.
                self.drain_monitor_channel(false, &mut outs);
                for _ in 0..1024 {
                    let Some(msgs) = tp::try_recv(&self.socks.registration)? else { break };
                    self.on_query(to_vecs(msgs), &mut outs);
                    self.execute(&mut outs);
                }
            }
            if ready[3] {
                for n in 0..4096 {
                    let Some(msgs) = tp::try_recv(&self.socks.monitor)? else { break };
                    self.on_monitor(msgs, &mut outs);
                    self.execute(&mut outs);
                    self.maybe_pongs(n, &mut outs);
                }
            }
            let woken = ready.get(5).copied().unwrap_or(false);
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
                warn!(socket = "hb_pong", peer = %peer(&to_vecs(msgs)), "dropped pong with unexpected frame count");
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
                // Python's Session unpacks all four dicts before a handler runs; a frame
                // that does not unpack gets hub_error, whatever the handler would read.
                for (part, bytes) in [("parent_header", env.parent_bytes()), ("metadata", env.metadata_bytes()), ("content", env.content_bytes())] {
                    if let Err(e) = self.session.unpack::<ippx_protocol::Value>(bytes) {
                        self.hub.drop_msg("malformed");
                        warn!(socket = "registration", reason = "malformed", peer = %who, msg_type = %header.msg_type, "dropped message: cannot unpack {part}: {e}");
                        let content = ippx_protocol::content::ErrorContent::new("ProtocolError", format!("cannot unpack {part}: {e}")).to_value();
                        outs.push(HubOut::Reply { idents: env.idents().to_vec(), msg_type: "hub_error".into(), parent: env.header_bytes().to_vec(), content, buffers: vec![] });
                        return;
                    }
                }
                let idents = env.idents().to_vec();
                self.hub.query(idents, &header, env.header_bytes(), env.content_bytes(), Instant::now(), outs);
            }
            Err((e, frames)) => {
                self.metrics.received("registration", "");
                self.hub.drop_msg(e.reason());
                warn!(socket = "registration", reason = e.reason(), peer = %who, "dropped message: {e}");
                // Answer where we can, so a client never waits forever (spec 4.2).
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
                warn!(socket = "monitor", topic = %String::from_utf8_lossy(&topic), "dropped copy: {e}");
                return;
            }
        };
        let idents: Vec<Vec<u8>> = env.idents().iter().map(|m| m.to_vec()).collect();
        // Copies of messages the relays already passed on: verify, but no replay check
        // (spec 1.3). A forged copy must not create records. A scheduler on our own thread
        // has already verified task traffic (it drops what does not verify), and nobody
        // else can reach the inproc monitor socket, so those copies are not checked twice.
        let trusted = self.trust_task_copies && matches!(&topic[..], b"intask" | b"outtask" | b"tracktask");
        if !trusted {
            if let Err(e) = self.monitor_session.check(&env, false) {
                self.hub.drop_msg(e.reason());
                warn!(socket = "monitor", topic = %String::from_utf8_lossy(&topic), peer = %peer(&idents), "dropped copy: {e}");
                return;
            }
        }
        let h = match self.monitor_session.header(&env) {
            Ok(h) => h,
            Err(e) => {
                self.hub.drop_msg(e.reason());
                warn!(socket = "monitor", "dropped copy: {e}");
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
        self.hub.monitor(&topic, &idents, msg, Instant::now(), outs);
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
                HubOut::Submit { header, content, buffers } => {
                    match self.session.serialize_with_header(vec![], &header, Parent::Header(&header), &ippx_protocol::Value::map(), &content, buffers) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_with_a_remote_location_warns() {
        let mut cfg = HubConfig { location: Some("10.1.2.3".into()), ..Default::default() };
        assert!(remote_peers_warning(&cfg).is_some_and(|w| w.contains("engines and clients")));
        cfg.engine_ip = "0.0.0.0".into();
        cfg.client_ip = "0.0.0.0".into();
        assert!(remote_peers_warning(&cfg).is_none());
        let local = HubConfig { location: Some("127.0.0.1".into()), ..Default::default() };
        assert!(remote_peers_warning(&local).is_none());
        assert!(remote_peers_warning(&HubConfig::default()).is_none());
    }
}
