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
    tracing_subscriber::fmt()
        .with_max_level(a.log_level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
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
        username: cfg.username.clone(),
        profile_dir: connect::profile_dir(&a).display().to_string(),
        shell_config: a.shell_config.clone(),
        startup_command: a.startup_command.clone(),
        startup_script: a.startup_script.clone(),
        ..Default::default()
    };
    let mut sup = match Supervisor::start(a, info, session, spec) {
        Ok(s) => s,
        Err(e @ ippx_engine::supervisor::EngineError::RegistrationTimeout(_)) => {
            tracing::error!("{e}");
            std::process::exit(255);
        }
        Err(e) => return Err(e).context("starting the engine"),
    };
    let code = sup.run();
    tracing::info!("engine {} stopped (exit {code})", sup.id());
    std::process::exit(code);
}
