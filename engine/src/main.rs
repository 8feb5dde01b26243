use anyhow::{Context, Result};
use ippx_engine::args::{self, Command};
use ippx_engine::worker_proc::WorkerSpec;
use ippx_engine::{connect, supervisor::Supervisor, worker};
use ippx_protocol::Session;

// The supervisor allocates and frees small frames per message, as the controller does.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn python_for(a: &args::EngineArgs) -> String {
    if let Some(p) = &a.python {
        return p.display().to_string();
    }
    if let Ok(p) = std::env::var("IPPX_PYTHON") {
        if !p.is_empty() {
            return p;
        }
    }
    if let Ok(v) = std::env::var("VIRTUAL_ENV") {
        let p = std::path::Path::new(&v).join("bin/python");
        if p.exists() {
            return p.display().to_string();
        }
    }
    env!("IPPX_BUILD_PYTHON").to_owned()
}

fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("--ippx-worker") {
        worker::run();
    }
    let (cmd, a) = match args::parse(argv) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("ippx-engine: {e}");
            std::process::exit(2);
        }
    };
    match cmd {
        Command::Help => {
            print!("{}", args::HELP);
            return Ok(());
        }
        Command::Version => {
            println!("ippx-engine {}", env!("CARGO_PKG_VERSION"));
            return Ok(());
        }
        Command::Run => {}
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // In-process, fds 1/2 are Python's (captured for IOPub); the log keeps the original.
    let inproc = if a.in_process { Some(ippx_engine::worker_proc::in_process_stdio().context("redirecting stdio for --in-process")?) } else { None };
    let builder = tracing_subscriber::fmt().with_max_level(a.log_level).with_target(false).with_ansi(ansi);
    match &inproc {
        Some((_, _, _, log)) => {
            let log = std::sync::Mutex::new(log.try_clone().context("log fd")?);
            builder.with_writer(log).init();
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    for s in &a.ignored {
        tracing::warn!("ignoring unsupported option {s}");
    }
    let (mut info, source) = connect::load(&a).context("loading the connection info")?;
    tracing::info!("connection info from {source}");
    let location = a.location.clone().unwrap_or_else(|| info.location.clone());
    info.interface = connect::disambiguate(&info.interface, &location);
    let cfg = connect::session_config(&info)?;
    let session = Session::new(cfg.clone()).context("session")?;
    let spec = WorkerSpec {
        exe: std::env::current_exe().context("finding this executable")?,
        python: python_for(&a),
        pack: info.pack.clone(),
        unpack: info.unpack.clone(),
        key: info.key.clone(),
        signature_scheme: info.signature_scheme.clone(),
        registration_url: ippx_protocol::connection::url(&info.interface, info.registration),
        curve_serverkey: info.curve_serverkey.clone(),
        username: cfg.username.clone(),
        profile_dir: connect::profile_dir(&a).display().to_string(),
        shell_config: a.shell_config.clone(),
        startup_command: a.startup_command.clone(),
        startup_script: a.startup_script.clone(),
        ..Default::default()
    };
    let run = move |inproc| -> Result<i32> {
        let mut sup = match Supervisor::start(a, info, session, spec, inproc) {
            Ok(s) => s,
            Err(e @ ippx_engine::supervisor::EngineError::RegistrationTimeout(_)) => {
                tracing::error!("{e}");
                return Ok(255);
            }
            Err(e) => return Err(e).context("starting the engine"),
        };
        let code = sup.run();
        tracing::info!("engine {} stopped (exit {code})", sup.id());
        Ok(code)
    };
    match inproc {
        None => std::process::exit(run(None)?),
        Some((sup_link, worker_link, out, _log)) => {
            // Python on the main thread (MPI wants the rank to be the main process, and
            // Python's signal handlers run only there); the supervisor on another thread,
            // which exits the process when it stops.
            ippx_engine::worker_proc::mask_python_signals(true);
            std::thread::Builder::new().name("supervisor".into()).spawn(move || {
                let code = match run(Some((sup_link, out))) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!("{e:#}");
                        1
                    }
                };
                std::process::exit(code);
            })?;
            ippx_engine::worker_proc::mask_python_signals(false);
            let code = worker::serve(worker_link, false);
            // Python's loop ended (the supervisor closed the link, or sys.exit): give the
            // supervisor a moment to unregister, then leave.
            std::thread::sleep(std::time::Duration::from_secs(2));
            std::process::exit(code);
        }
    }
}
