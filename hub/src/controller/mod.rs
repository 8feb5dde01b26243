//! A whole controller in this process: [`run`] binds the hub's sockets, starts the
//! scheduler ([`launch`]), writes the connection files, serves the metrics, and runs the
//! hub's socket loop ([`io`]) on one OS thread until `shutdown` resolves, a client asks
//! for shutdown, or the scheduler dies. `ippx-hub` is `run` with the process's signals as
//! `shutdown`; tests start it in-process on 127.0.0.1 the same way.
//!
//! * [`plan`]: key, packer, ports, connection files, hub settings, location checks;
//! * [`launch`]: the scheduler in its three modes;
//! * [`io`]: the socket loop.

pub mod fdlimit;
pub mod io;
pub mod launch;
pub mod plan;

pub use io::Event;

use crate::cli::{HubConfig, SchedulerMode};
use crate::hub::{Hub, Now};
use crate::profile::{remove_quietly, Profile};
use crate::registry::EngineState;
use anyhow::Context as _;
use io::{HubIo, HubSockets};
use ippx_protocol::connection::{self, local_url, ClientConnectionFile, EngineConnectionFile};
use ippx_protocol::{Session, SessionConfig};
use ippx_telemetry::prometheus_client::registry::Registry;
use ippx_transport::{self as tp, zmq, zmq::SocketType, Security, Waker};
use launch::{HubEnd, SchedulerRun};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// Everything needed to run, after binding.
pub struct Controller {
    pub profile: Profile,
    pub engine_file: EngineConnectionFile,
    pub client_file: ClientConnectionFile,
    pub write_files: bool,
    scheduler: Option<SchedulerRun>,
    /// The scheduler's metrics when it runs on a thread here.
    pub scheduler_registry: Option<Registry>,
    notifications_published: Option<Arc<AtomicU64>>,
    ctx: zmq::Context,
    socks: Option<HubSockets>,
    hub: Option<Hub>,
    session_cfg: SessionConfig,
}

/// Messages queued per peer on the registration/query socket, each way. Every other
/// controller socket is unbounded (a reply must never be dropped), but this one faces
/// anyone who can reach the port: a peer that sends without reading, or floods, is held
/// to this many messages (further inbound waits in its TCP buffer; a reply it does not
/// read past this is dropped and counted), so it cannot grow the hub's memory.
const QUERY_HWM: i32 = 1000;
/// The largest frame a peer may send on that socket; a larger one disconnects the peer
/// before the frame is buffered. Queries are small: the largest real one, a
/// `result_request` for 100,000 msg_ids, is about 4 MB.
const QUERY_MAX_FRAME: i64 = 32 << 20;

impl Controller {
    /// Binds the hub's sockets, starts the scheduler and learns its ports. Nothing is
    /// written to disk yet. `metrics` gets the store's write-batch histogram.
    pub fn bind(cfg: &HubConfig, metrics: &crate::metrics::HubMetrics) -> anyhow::Result<Controller> {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let profile = Profile::resolve(cfg, home);
        profile.create().with_context(|| format!("creating profile dir {}", profile.dir.display()))?;
        let plan = plan::Plan::new(cfg, &profile)?;
        let session_cfg = plan.session(cfg);

        plan::warn_if_unreachable(cfg);
        let ctx = zmq::Context::new();
        let t = cfg.transport.as_str();
        let p = &plan.ports;
        // Every socket we bind is a CURVE server when CURVE is on (as ipcontroller's).
        let security = Security::server(plan.curve.as_ref());
        let server = |kind| security.socket(&ctx, kind, None);
        let registration = server(SocketType::ROUTER)?;
        tp::bound_for_strangers(&registration, QUERY_HWM, QUERY_MAX_FRAME)?;
        let reg_port = tp::bind(&registration, t, &cfg.engine_ip, p.registration)?;
        if cfg.client_ip != cfg.engine_ip {
            tp::bind(&registration, t, &cfg.client_ip, reg_port)?;
        }
        let ping = server(SocketType::PUB)?;
        let hb_ping = tp::bind(&ping, t, &cfg.engine_ip, p.hb_ping)?;
        let pong = server(SocketType::ROUTER)?;
        let hb_pong = tp::bind(&pong, t, &cfg.engine_ip, p.hb_pong)?;
        let notification = server(SocketType::PUB)?;
        let notif_port = tp::bind(&notification, t, &cfg.client_ip, p.notification)?;
        let monitor = server(SocketType::SUB)?;
        // With the scheduler on our thread, copies come through a channel and are trusted
        // (see io.rs); the monitor socket is then not bound at all.
        let in_process = !cfg.no_scheduler && cfg.scheduler_mode == SchedulerMode::Thread;
        let mon_port = if in_process { 0 } else { tp::bind(&monitor, "tcp", &cfg.monitor_ip, p.monitor)? };

        let hub_end = HubEnd {
            ctx: &ctx,
            registration: &registration,
            notification: &notification,
            registration_port: reg_port,
            notification_port: notif_port,
            monitor_port: mon_port,
            session: &session_cfg,
            curve: plan.curve.as_ref(),
        };
        let launched = launch::launch(cfg, p, hub_end)?;
        let bound = plan::Bound {
            registration: reg_port,
            hb_ping,
            hb_pong,
            notification: notif_port,
            engine: launched.ports.engine,
            client: launched.ports.client,
            engine_broadcast: launched.ports.engine_broadcast.clone(),
            client_broadcast: launched.ports.client_broadcast,
        };
        let submit = security.as_client().socket(&ctx, SocketType::DEALER, None)?;
        tp::connect(&submit, &local_url(t, &cfg.client_ip, bound.client.task))?;

        let (engine_file, client_file) = plan::connection_files(cfg, &plan, &bound);
        let mut settings = plan::hub_settings(cfg, &plan, &engine_file);
        // Measured after binding and starting the scheduler, so what is open now counts.
        let per_engine = if in_process { fdlimit::PER_ENGINE_WITH_SCHEDULER } else { fdlimit::PER_ENGINE_HUB_ONLY };
        settings.max_engines = fdlimit::plan(per_engine);
        if !in_process && !cfg.no_scheduler {
            let sched = fdlimit::scheduler_child_room();
            if sched < settings.max_engines {
                info!("the scheduler child has room for {sched} engines: registrations stop there");
                settings.max_engines = sched;
            }
        }
        let store = crate::store::open(cfg.store_config(&profile.dir, metrics.sqlite_batch_seconds()))?;
        let mut hub = Hub::with_store(settings, store, Instant::now());
        if cfg.restore {
            match connection::read::<EngineState>(&profile.state_file()) {
                Ok(state) => {
                    info!(engines = state.engines.len(), "restoring engines from {}", profile.state_file().display());
                    hub.restore(&state);
                    hub.restore_inflight(Now::system());
                }
                Err(e) => warn!("--restore: no engine state to restore ({e})"),
            }
        }
        Ok(Controller {
            profile,
            engine_file,
            client_file,
            write_files: !plan.reused,
            scheduler: launched.run,
            scheduler_registry: launched.registry,
            notifications_published: launched.notifications_published,
            ctx,
            socks: Some(HubSockets { registration, ping, pong, notification, monitor, submit, monitor_rx: launched.monitor_rx }),
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
    pub fn start(
        &mut self,
        events: mpsc::Sender<Event>,
        metrics: crate::metrics::HubMetrics,
    ) -> anyhow::Result<(Waker, std::thread::JoinHandle<()>)> {
        let (waker, stop) = tp::waker(&self.ctx, &format!("hub-stop-{}", self.client_file.registration))?;
        let socks = self.socks.take().context("already started")?;
        let hub = self.hub.take().context("already started")?;
        let session = Session::new(self.session_cfg.clone())?;
        let monitor_session = Session::new(self.session_cfg.clone())?;
        let state_file = self.profile.state_file();
        let trust_task_copies = matches!(self.scheduler, Some(SchedulerRun::Thread { .. }));
        let notifications_published = self.notifications_published.clone();
        let handle = std::thread::Builder::new().name("hub-io".into()).spawn(move || {
            let mut io = HubIo {
                socks,
                hub,
                session,
                monitor_session,
                state_file,
                events: events.clone(),
                metrics,
                last_sync: Instant::now(),
                trust_task_copies,
                monitor_backlog: false,
                notifications_published,
                drop_log: ippx_telemetry::budget::LogBudgets::default(),
            };
            if let Err(e) = io.run(stop) {
                error!("hub socket loop failed: {e:#}");
                let _ = events.send(Event::Fatal(format!("{e:#}")));
            }
        })?;
        Ok((waker, handle))
    }

    /// The status page's link to the hub; `None` once the hub's thread has started.
    pub fn status_link(&mut self) -> Option<crate::status::collect::StatusLink> {
        self.hub.as_mut().map(Hub::status_link)
    }

    /// Whether the scheduler is still running (always true without one).
    pub fn scheduler_alive(&mut self) -> bool {
        self.scheduler.as_mut().is_none_or(SchedulerRun::alive)
    }

    /// Whether a dead scheduler would be restarted ([`SchedulerRun::can_respawn`]).
    pub fn can_respawn_scheduler(&mut self) -> bool {
        self.scheduler.as_mut().is_some_and(SchedulerRun::can_respawn)
    }

    /// Starts the scheduler child again (see [`SchedulerRun::respawn`]).
    pub fn respawn_scheduler(&mut self) -> anyhow::Result<()> {
        self.scheduler.as_mut().context("no scheduler to restart")?.respawn()
    }

    pub fn stop_scheduler(&mut self) {
        if let Some(s) = self.scheduler.take() {
            s.stop();
        }
    }
}

/// Why a controller stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// The `shutdown` future resolved (a signal, or a test).
    Shutdown,
    /// A client sent `shutdown_request`.
    ShutdownRequest,
}

/// Runs a whole controller until `shutdown` resolves or a client asks it to stop. Must
/// be called inside a tokio runtime (it serves `--metrics-addr` there). Errors: a port
/// or file that cannot be had, a dead scheduler, a failed hub loop.
pub async fn run(cfg: &HubConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<Stopped> {
    // Bind the metrics port before anything else, so a taken port fails fast.
    let metrics_listener = match &cfg.metrics_addr {
        Some(a) => Some(std::net::TcpListener::bind(a).map_err(|e| anyhow::anyhow!("binding --metrics-addr {a}: {e}"))?),
        None => None,
    };
    let metrics = crate::metrics::HubMetrics::new();
    let mut ctl = Controller::bind(cfg, &metrics)?;
    crate::deploy::log_location(cfg, &ctl.engine_file, &ctl.client_file);
    // One metrics endpoint per process: a scheduler on a thread of ours is served by our
    // /metrics, its samples labelled component="scheduler".
    let scheduler_registry = ctl.scheduler_registry.take();
    if scheduler_registry.is_some() && cfg.scheduler_metrics_addr.is_some() {
        warn!("--scheduler-metrics-addr is ignored: the scheduler runs on a thread of ippx-hub and its metrics are in the hub's /metrics (it is for --scheduler-mode=process)");
    }
    let extra_metrics: Vec<_> = scheduler_registry.into_iter().map(|r| (r, ("component".to_owned(), "scheduler".to_owned()))).collect();
    if let Err(e) = ctl.write_connection_files() {
        ctl.stop_scheduler();
        return Err(e);
    }
    let (tx, rx) = mpsc::channel();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let health = ippx_telemetry::Health::new();
    // The status page (/, /api/status, /api/timeline) beside /metrics.
    let status_routes = match ctl.status_link() {
        Some(link) => crate::status::http::router(link, metrics.latency_family()),
        None => anyhow::bail!("the hub was started before its status link was made"),
    };
    let (waker, io_thread) = ctl.start(tx, metrics)?;
    health.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    info!(profile = %ctl.profile.dir.display(), registration = ctl.engine_file.registration, "ippx controller ready");
    let (stop_http, http_stopped) = tokio::sync::watch::channel(false);
    if let Some(l) = metrics_listener {
        l.set_nonblocking(true)?;
        let l = tokio::net::TcpListener::from_std(l)?;
        info!(addr = %l.local_addr()?, "serving /metrics, /healthz, /readyz and the status page at /");
        let mut stopped = http_stopped.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let until = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            if let Err(e) = ippx_telemetry::http::serve_full(l, registry, extra_metrics, health, status_routes, until).await {
                error!("metrics server failed: {e}");
            }
        });
    }
    let outcome = async {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        // Since when the hub has been settling a dead scheduler's tasks.
        let mut resetting: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = &mut shutdown => return anyhow::Ok(Stopped::Shutdown),
                _ = tick.tick() => {
                    match rx.try_recv() {
                        Ok(Event::ShutdownRequested) => {
                            // Let the reply and the notification reach clients first.
                            tokio::time::sleep(Duration::from_millis(1000)).await;
                            return Ok(Stopped::ShutdownRequest);
                        }
                        Ok(Event::Fatal(e)) => anyhow::bail!("hub loop failed: {e}"),
                        Ok(Event::SchedulerReset) => {
                            // The hub has settled what the dead one held: start a new one.
                            ctl.respawn_scheduler().context("the scheduler died and could not be restarted; stopping the controller")?;
                            health.children_ok.store(true, std::sync::atomic::Ordering::Relaxed);
                            resetting = None;
                        }
                        Err(_) => {}
                    }
                    if let Some(since) = resetting {
                        anyhow::ensure!(since.elapsed() < Duration::from_secs(10), "the hub did not settle the dead scheduler's tasks; stopping the controller");
                    } else if !ctl.scheduler_alive() {
                        health.children_ok.store(false, std::sync::atomic::Ordering::Relaxed);
                        // A scheduler child is restarted on its ports (engines and clients
                        // reconnect by themselves) once the hub has read its last copies and
                        // settled what it held; a scheduler thread's end stops us.
                        anyhow::ensure!(ctl.can_respawn_scheduler(), "the scheduler died; stopping the controller");
                        waker.wake(io::WAKE_SCHEDULER_DIED);
                        resetting = Some(Instant::now());
                    }
                }
            }
        }
    }
    .await;
    // Files first: the stock test suite SIGKILLs us 0.25 s after SIGTERM.
    ctl.remove_connection_files();
    waker.wake(io::WAKE_STOP);
    ctl.stop_scheduler();
    let _ = io_thread.join();
    let _ = stop_http.send(true);
    outcome
}
