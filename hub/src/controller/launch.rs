//! The scheduler beside a hub, in its three modes: on a thread of this process (the
//! default: monitor copies reach the hub through memory), as an `ippx-scheduler` child
//! (`--scheduler-mode=process`; it dies with us through a lifeline pipe and
//! `PR_SET_PDEATHSIG`), or not at all (`--no-scheduler`: the hub prints the command line
//! to run it elsewhere).

use crate::cli::HubConfig;
use anyhow::{bail, Context as _};
use ippx_protocol::connection::local_url;
use ippx_protocol::SessionConfig;
use ippx_scheduler::link::{monitor_channel, BoundPorts, MonitorLink, MonitorRx, RelayPorts, SchedulerArgs};
use ippx_scheduler::runner::{Scheduler, SchedulerConfig};
use ippx_telemetry::prometheus_client::registry::Registry;
use ippx_transport::{self as tp, zmq, CurveKeys, Waker};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tracing::{error, info};

/// The scheduler beside this hub.
pub enum SchedulerRun {
    /// `restarts`: when it was restarted, within the last [`RESTART_WINDOW`].
    Process {
        child: Child,
        spawn: Box<Spawn>,
        restarts: Vec<Instant>,
    },
    Thread {
        waker: Waker,
        join: std::thread::JoinHandle<()>,
    },
}

/// A scheduler child is restarted at most this many times within [`RESTART_WINDOW`]: one
/// that keeps dying is a bug to report, not a crash to ride out.
pub const MAX_RESTARTS: usize = 5;
pub const RESTART_WINDOW: Duration = Duration::from_secs(600);

/// Distinguishes the inproc endpoints of controllers sharing a process (tests do).
static INPROC_SEQ: AtomicUsize = AtomicUsize::new(0);

/// What the hub needs to know of the scheduler it got.
pub struct Launched {
    pub ports: BoundPorts,
    pub run: Option<SchedulerRun>,
    /// Monitor copies from a scheduler thread (then the monitor socket is not bound).
    pub monitor_rx: Option<MonitorRx>,
    /// Notifications sent by the hub, read by a scheduler thread.
    pub notifications_published: Option<Arc<AtomicU64>>,
    /// A scheduler thread's metrics, which the hub serves.
    pub registry: Option<Registry>,
}

/// Where the hub's own sockets are, for the scheduler to connect to.
pub struct HubEnd<'a> {
    pub ctx: &'a zmq::Context,
    pub registration: &'a zmq::Socket,
    pub notification: &'a zmq::Socket,
    pub registration_port: u16,
    pub notification_port: u16,
    pub monitor_port: u16,
    pub session: &'a SessionConfig,
    /// The controller's CURVE keys: the scheduler's sockets use them too.
    pub curve: Option<&'a CurveKeys>,
}

fn scheduler_path(cfg: &HubConfig) -> PathBuf {
    cfg.scheduler_cmd.clone().unwrap_or_else(|| {
        std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.join("ippx-scheduler"))).unwrap_or_else(|| PathBuf::from("ippx-scheduler"))
    })
}

/// The `ippx-scheduler` command line for this controller (process mode, or printed
/// with `--no-scheduler`).
fn scheduler_args(cfg: &HubConfig, planned: &BoundPorts, hub: &HubEnd<'_>) -> SchedulerArgs {
    let t = cfg.transport.as_str();
    SchedulerArgs {
        engine_ip: cfg.engine_ip.clone(),
        client_ip: cfg.client_ip.clone(),
        transport: t.to_owned(),
        engine_ports: planned.engine.to_list().to_vec(),
        client_ports: planned.client.to_list().to_vec(),
        engine_broadcast: planned.engine_broadcast.clone(),
        client_broadcast: planned.client_broadcast,
        monitor: local_url("tcp", &cfg.monitor_ip, hub.monitor_port),
        notification: local_url(t, &cfg.client_ip, hub.notification_port),
        registration: local_url(t, &cfg.client_ip, hub.registration_port),
        packer: hub.session.packer,
        signature_scheme: cfg.signature_scheme.clone(),
        keyfile: None,
        scheme: cfg.scheme,
        hwm: cfg.hwm,
        log_level: crate::cli::tracing_level(&cfg.log_level).to_owned(),
        log_format: cfg.log_format,
        metrics_addr: crate::cli::scheduler_metrics_addr(cfg).and_then(|a| a.parse().ok()),
        lifeline: true,
    }
}

/// Starts the scheduler `cfg` asks for and learns its ports. `ports` is the plan (the
/// ports to ask for; 0 lets the OS choose).
pub fn launch(cfg: &HubConfig, ports: &crate::profile::PortPlan, hub: HubEnd<'_>) -> anyhow::Result<Launched> {
    let planned = BoundPorts {
        engine: RelayPorts { control: ports.engine_control, mux: ports.engine_mux, task: ports.engine_task, iopub: ports.engine_iopub },
        client: RelayPorts { control: ports.client_control, mux: ports.client_mux, task: ports.client_task, iopub: ports.client_iopub },
        engine_broadcast: ports.engine_broadcast.clone(),
        client_broadcast: ports.client_broadcast,
    };
    if cfg.no_scheduler {
        for (name, p) in [("engine control", ports.engine_control), ("engine mux", ports.engine_mux), ("client mux", ports.client_mux)] {
            if p == 0 {
                bail!("--no-scheduler needs fixed ports (--ports or engine/client ports); {name} has none");
            }
        }
        let mut args = scheduler_args(cfg, &planned, &hub);
        args.lifeline = false;
        let curve = if hub.curve.is_some() { ", CURVE keys in $IPP_CURVE_PUBLICKEY and $IPP_CURVE_SECRETKEY" } else { "" };
        info!("not starting a scheduler; run: {} {} (key in $IPPX_SESSION_KEY{curve})", scheduler_path(cfg).display(), args.to_argv().join(" "));
        return Ok(Launched { ports: planned, run: None, monitor_rx: None, notifications_published: None, registry: None });
    }
    match cfg.scheduler_mode {
        crate::cli::SchedulerMode::Thread => thread(cfg, planned, hub),
        crate::cli::SchedulerMode::Process => process(cfg, &planned, hub),
    }
}

fn thread(cfg: &HubConfig, planned: BoundPorts, hub: HubEnd<'_>) -> anyhow::Result<Launched> {
    // The scheduler shares our zmq context, so it reaches the hub over inproc: monitor
    // copies are handed over in memory, never through the kernel.
    let base = format!("inproc://ippx-{}-{}", std::process::id(), INPROC_SEQ.fetch_add(1, Ordering::Relaxed));
    let (notif_url, reg_url) = (format!("{base}-notification"), format!("{base}-registration"));
    let (mon_tx, mon_rx) = monitor_channel(hub.ctx, &format!("{}-monitor", base.trim_start_matches("inproc://")))?;
    let published = Arc::new(AtomicU64::new(0));
    tp::bind_endpoint(hub.notification, &notif_url)?;
    tp::bind_endpoint(hub.registration, &reg_url)?;
    let scfg = SchedulerConfig {
        transport: cfg.transport.clone(),
        engine_ip: cfg.engine_ip.clone(),
        client_ip: cfg.client_ip.clone(),
        engine: planned.engine,
        client: planned.client,
        engine_broadcast: planned.engine_broadcast,
        client_broadcast: planned.client_broadcast,
        monitor: MonitorLink::Channel(mon_tx),
        notifications_published: Some(published.clone()),
        notification_url: notif_url,
        registration_url: reg_url,
        session: hub.session.clone(),
        task_mode: cfg.scheme,
        hwm: cfg.hwm,
        stranded_delay: Duration::from_secs(5),
        curve: hub.curve.cloned(),
    };
    let counters = ippx_scheduler::Counters::default();
    let mut registry = Registry::default();
    counters.register(&mut registry);
    ippx_telemetry::register_build_info(&mut registry, "scheduler");
    let sched = Scheduler::bind(hub.ctx, scfg, counters).context("binding the scheduler's sockets")?;
    let ports = sched.ports().clone();
    let (waker, stop) = tp::waker(hub.ctx, &format!("scheduler-{}", INPROC_SEQ.fetch_add(1, Ordering::Relaxed)))?;
    let join = std::thread::Builder::new().name("scheduler".into()).spawn(move || match sched.run(stop) {
        Ok(counters) => info!(dropped = ?counters.dropped_summary(), "scheduler exited"),
        Err(e) => error!("scheduler loop failed: {e:#}"),
    })?;
    Ok(Launched {
        ports,
        run: Some(SchedulerRun::Thread { waker, join }),
        monitor_rx: Some(mon_rx),
        notifications_published: Some(published),
        registry: Some(registry),
    })
}

/// How to start the scheduler child, and again after it died: on the ports it bound
/// first, so engines and clients reconnect to the new one by themselves.
pub struct Spawn {
    path: PathBuf,
    args: SchedulerArgs,
    key: String,
    curve: Option<CurveKeys>,
}

impl Spawn {
    fn start(&self) -> anyhow::Result<(Child, BoundPorts)> {
        let mut cmd = Command::new(&self.path);
        cmd.args(self.args.to_argv()).env("IPPX_SESSION_KEY", &self.key).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        // Secrets through the environment, never argv (which `ps` shows to everyone).
        match &self.curve {
            Some(k) => cmd.env("IPP_CURVE_PUBLICKEY", k.public()).env("IPP_CURVE_SECRETKEY", k.secret()),
            None => cmd.env_remove("IPP_CURVE_PUBLICKEY").env_remove("IPP_CURVE_SECRETKEY"),
        };
        let mut child = cmd.spawn().with_context(|| format!("starting {}", self.path.display()))?;
        match read_ready(&mut child).context("waiting for ippx-scheduler to bind its sockets") {
            Ok(ports) => Ok((child, ports)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    /// Whether the ports asked for are `ports` (a restarted child must bind the same).
    fn pinned_to(&self, ports: &BoundPorts) -> bool {
        self.args.engine_ports == ports.engine.to_list()
            && self.args.client_ports == ports.client.to_list()
            && self.args.engine_broadcast == ports.engine_broadcast
            && self.args.client_broadcast == ports.client_broadcast
    }

    /// From now on, ask for exactly these ports.
    fn pin(&mut self, ports: &BoundPorts) {
        self.args.engine_ports = ports.engine.to_list().to_vec();
        self.args.client_ports = ports.client.to_list().to_vec();
        self.args.engine_broadcast.clone_from(&ports.engine_broadcast);
        self.args.client_broadcast = ports.client_broadcast;
    }
}

fn process(cfg: &HubConfig, planned: &BoundPorts, hub: HubEnd<'_>) -> anyhow::Result<Launched> {
    let mut spawn = Spawn {
        path: scheduler_path(cfg),
        args: scheduler_args(cfg, planned, &hub),
        key: String::from_utf8_lossy(&hub.session.key).into_owned(),
        curve: hub.curve.cloned(),
    };
    let (child, ports) = spawn.start()?;
    spawn.pin(&ports);
    let run = SchedulerRun::Process { child, spawn: Box::new(spawn), restarts: Vec::new() };
    Ok(Launched { ports, run: Some(run), monitor_rx: None, notifications_published: None, registry: None })
}

fn read_ready(child: &mut Child) -> anyhow::Result<BoundPorts> {
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
    Ok(BoundPorts::from_ready_line(&line)?)
}

impl SchedulerRun {
    /// Whether the scheduler is still running.
    pub fn alive(&mut self) -> bool {
        match self {
            SchedulerRun::Thread { join, .. } => {
                if join.is_finished() {
                    error!("the scheduler thread ended");
                    return false;
                }
                true
            }
            SchedulerRun::Process { child, .. } => match child.try_wait() {
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

    /// Whether [`SchedulerRun::respawn`] would start it again: a child restarted fewer
    /// than [`MAX_RESTARTS`] times lately. A scheduler thread's end is a bug: never.
    pub fn can_respawn(&mut self) -> bool {
        match self {
            SchedulerRun::Process { restarts, .. } => {
                restarts.retain(|t| t.elapsed() < RESTART_WINDOW);
                restarts.len() < MAX_RESTARTS
            }
            SchedulerRun::Thread { .. } => false,
        }
    }

    /// Starts a scheduler child again after it died, on the same ports.
    pub fn respawn(&mut self) -> anyhow::Result<()> {
        if !self.can_respawn() {
            bail!("the scheduler died {MAX_RESTARTS} times within {} s (or ran on a thread); not restarting it", RESTART_WINDOW.as_secs());
        }
        let SchedulerRun::Process { child, spawn, restarts } = self else {
            bail!("the scheduler thread ended; it is not restarted");
        };
        restarts.push(Instant::now());
        let _ = child.wait();
        let (new, ports) = spawn.start()?;
        *child = new;
        if !spawn.pinned_to(&ports) {
            bail!("the restarted ippx-scheduler bound other ports ({ports:?}, expected {:?})", spawn.args);
        }
        info!(pid = child.id(), "ippx-scheduler restarted on the same ports");
        Ok(())
    }

    pub fn stop(self) {
        match self {
            SchedulerRun::Thread { waker, join } => {
                waker.wake(b"stop");
                let _ = join.join();
            }
            SchedulerRun::Process { mut child, .. } => {
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
