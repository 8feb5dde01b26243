//! `ippx-hub`: one command starts a whole controller (hub + scheduler), accepting
//! ipcontroller's command line.

use ippx_hub::cli::{self, Action, HubConfig};
use ippx_hub::deploy::{self, DeployAction};
use ippx_hub::settings;
use ippx_hub::server::{Controller, Event};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;
use tracing::{error, info, warn};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // --probe and --print-connection-info (ippx_hub::deploy) do not run a controller.
    let (deploy_action, args) = match deploy::take_flags(&args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("ippx-hub: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(DeployAction::Probe { url, timeout }) = &deploy_action {
        return match deploy::probe(url, *timeout) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ippx-hub --probe: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let vars: Vec<(String, String)> = std::env::vars().collect();
    let loaded = match settings::load(&args, &vars) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ippx-hub: {e}");
            return ExitCode::from(2);
        }
    };
    if let (Some(DeployAction::PrintConnectionInfo(which)), Action::Run) = (&deploy_action, &loaded.action) {
        return match deploy::connection_info(&loaded.cfg, *which) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ippx-hub: {e}");
                ExitCode::from(2)
            }
        };
    }
    if loaded.print_config && loaded.action == Action::Run {
        print!("{}", settings::render(&loaded));
        return ExitCode::SUCCESS;
    }
    let (cfg, action) = (loaded.cfg, loaded.action);
    match action {
        Action::Help => {
            print!("{}", cli::HELP);
            return ExitCode::SUCCESS;
        }
        Action::Version => {
            println!("ippx-hub {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Action::Run => {}
    }
    let format = cfg.log_format.parse().unwrap_or(ippx_telemetry::logging::LogFormat::Text);
    ippx_telemetry::logging::init(cli::tracing_level(&cfg.log_level), format);
    for w in &cfg.warnings {
        warn!("{w}");
    }
    match run(&cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cfg: &HubConfig) -> anyhow::Result<()> {
    // Bind the metrics port before anything else, so a taken port fails fast.
    let metrics_listener = match &cfg.metrics_addr {
        Some(a) => Some(std::net::TcpListener::bind(a).map_err(|e| anyhow::anyhow!("binding --metrics-addr {a}: {e}"))?),
        None => None,
    };
    let mut ctl = Controller::bind(cfg)?;
    deploy::log_location(cfg, &ctl.engine_file, &ctl.client_file);
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
    let metrics = ippx_hub::metrics::HubMetrics::new();
    let mut registry = ippx_telemetry::prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let health = ippx_telemetry::Health::new();
    let (waker, io_thread) = ctl.start(tx, metrics)?;
    health.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    info!(profile = %ctl.profile.dir.display(), registration = ctl.engine_file.registration, "ippx controller ready");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let reason = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        if let Some(l) = metrics_listener {
            l.set_nonblocking(true)?;
            let l = tokio::net::TcpListener::from_std(l)?;
            info!(addr = %l.local_addr()?, "serving /metrics, /healthz, /readyz");
            let health = health.clone();
            tokio::spawn(async move {
                if let Err(e) = ippx_telemetry::serve_merged(l, registry, extra_metrics, health, std::future::pending()).await {
                    error!("metrics server failed: {e}");
                }
            });
        }
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = term.recv() => return anyhow::Ok("SIGTERM"),
                _ = int.recv() => return Ok("SIGINT"),
                _ = tick.tick() => {
                    match rx.try_recv() {
                        Ok(Event::ShutdownRequested) => {
                            // Let the reply and the notification reach clients first.
                            tokio::time::sleep(Duration::from_millis(1000)).await;
                            return Ok("shutdown_request");
                        }
                        Ok(Event::Fatal(e)) => anyhow::bail!("hub loop failed: {e}"),
                        Err(_) => {}
                    }
                    if !ctl.scheduler_alive() {
                        health.children_ok.store(false, std::sync::atomic::Ordering::Relaxed);
                        anyhow::bail!("the scheduler died; stopping the controller");
                    }
                }
            }
        }
    });
    // Files first: the stock test suite SIGKILLs us 0.25 s after SIGTERM.
    ctl.remove_connection_files();
    waker.wake(b"stop");
    ctl.stop_scheduler();
    let _ = io_thread.join();
    let reason = reason?;
    info!("controller stopped ({reason})");
    Ok(())
}
