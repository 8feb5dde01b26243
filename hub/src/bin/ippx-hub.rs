//! `ippx-hub`: one command starts a whole controller (hub + scheduler), accepting
//! ipcontroller's command line. The controller itself is [`ippx_hub::controller::run`];
//! this binary adds the configuration layers, logging and the process's signals.

use ippx_hub::cli::{self, Action};
use ippx_hub::deploy::{self, DeployAction};
use ippx_hub::settings;
use std::process::ExitCode;
use tracing::{error, info, warn};

/// The signal that stopped the controller, for the last log line.
static SIGNAL: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

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
            print!("{}", cli::help());
            return ExitCode::SUCCESS;
        }
        Action::Version => {
            println!("ippx-hub {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Action::Run => {}
    }
    ippx_telemetry::logging::init(cli::tracing_level(&cfg.log_level), cfg.log_format);
    for w in &cfg.warnings {
        warn!("{w}");
    }
    let result = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(anyhow::Error::from).and_then(|rt| {
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            let signals = async move {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                };
                let _ = SIGNAL.set(name);
            };
            ippx_hub::controller::run(&cfg, signals).await
        })
    });
    match result {
        Ok(why) => {
            // The stock-shaped reason: the signal's name, or the client's request.
            let reason = match why {
                ippx_hub::controller::Stopped::Shutdown => SIGNAL.get().copied().unwrap_or("shutdown"),
                ippx_hub::controller::Stopped::ShutdownRequest => "shutdown_request",
            };
            info!("controller stopped ({reason})");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
