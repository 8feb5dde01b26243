//! `ippx-scheduler`: the MUX, control, IOPub, task and broadcast relays of one controller.
//! Normally started by `ippx-hub`; it can run by itself with explicit addresses.

use anyhow::Context as _;
use clap::Parser;
use ippx_protocol::{Packer, SessionConfig};
use ippx_scheduler::runner::{RelayPorts, Scheduler, SchedulerConfig, TaskMode};
use std::io::{BufRead, Write};
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "ippx-scheduler", version, about = "ippx relays and task scheduler")]
struct Args {
    /// IP the engine-facing sockets bind.
    #[arg(long, default_value = "127.0.0.1")]
    engine_ip: String,
    /// IP the client-facing sockets bind.
    #[arg(long, default_value = "127.0.0.1")]
    client_ip: String,
    #[arg(long, default_value = "tcp")]
    transport: String,
    /// Engine-side ports control,mux,task,iopub (0 = any free port).
    #[arg(long, value_delimiter = ',', default_values_t = [0u16, 0, 0, 0])]
    engine_ports: Vec<u16>,
    /// Client-side ports control,mux,task,iopub (0 = any free port).
    #[arg(long, value_delimiter = ',', default_values_t = [0u16, 0, 0, 0])]
    client_ports: Vec<u16>,
    /// Engine-side broadcast leaf ports; their count is 2**depth.
    #[arg(long, value_delimiter = ',', default_values_t = [0u16, 0])]
    engine_broadcast: Vec<u16>,
    #[arg(long, default_value_t = 0)]
    client_broadcast: u16,
    /// The hub's monitor socket (SUB) this scheduler publishes copies to.
    #[arg(long)]
    monitor: String,
    /// The hub's notification PUB.
    #[arg(long)]
    notification: String,
    /// The hub's registration/query ROUTER.
    #[arg(long)]
    registration: String,
    /// Packer for the signed dicts: json or msgpack.
    #[arg(long, default_value = "msgpack")]
    packer: Packer,
    #[arg(long, default_value = "hmac-sha256")]
    signature_scheme: String,
    /// File holding the HMAC key; otherwise $IPPX_SESSION_KEY (empty disables signing).
    #[arg(long)]
    keyfile: Option<std::path::PathBuf>,
    /// leastload, lru, twobin, weighted, plainrandom, pure or none.
    #[arg(long, default_value = "leastload")]
    scheme: TaskMode,
    /// Tasks an engine may hold at once (0 = unlimited).
    #[arg(long, default_value_t = 1)]
    hwm: usize,
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    log_format: ippx_telemetry::logging::LogFormat,
    /// Serve /metrics, /healthz and /readyz on this address (e.g. 127.0.0.1:9811). Off unless set.
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Exit when standard input closes: the hub holds the other end of that pipe, so we
    /// die with it even when it is SIGKILLed.
    #[arg(long)]
    lifeline: bool,
}

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ippx_telemetry::logging::init(&args.log_level, args.log_format);
    if args.lifeline {
        die_with_parent();
    }
    let key = match &args.keyfile {
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?.trim().to_owned(),
        None => std::env::var("IPPX_SESSION_KEY").unwrap_or_default(),
    };
    let ports = |v: &[u16], what: &str| -> anyhow::Result<RelayPorts> {
        anyhow::ensure!(v.len() == 4, "--{what}-ports needs 4 values: control,mux,task,iopub");
        Ok(RelayPorts { control: v[0], mux: v[1], task: v[2], iopub: v[3] })
    };
    anyhow::ensure!(args.engine_broadcast.len().is_power_of_two() && args.engine_broadcast.len() >= 2, "--engine-broadcast needs 2**depth ports, depth >= 1");
    let mut session = SessionConfig::new(key.into_bytes(), args.packer);
    session.signature_scheme = args.signature_scheme.clone();
    let cfg = SchedulerConfig {
        transport: args.transport.clone(),
        engine_ip: args.engine_ip.clone(),
        client_ip: args.client_ip.clone(),
        engine: ports(&args.engine_ports, "engine")?,
        client: ports(&args.client_ports, "client")?,
        engine_broadcast: args.engine_broadcast.clone(),
        client_broadcast: args.client_broadcast,
        monitor: ippx_scheduler::runner::MonitorLink::Url(args.monitor.clone()),
        notifications_published: None,
        notification_url: args.notification.clone(),
        registration_url: args.registration.clone(),
        session,
        task_mode: args.scheme,
        hwm: args.hwm,
        stranded_delay: Duration::from_secs(5),
    };
    let ctx = ippx_transport::zmq::Context::new();
    let counters = ippx_scheduler::Counters::default();
    let mut registry = ippx_telemetry::prometheus_client::registry::Registry::default();
    counters.register(&mut registry);
    ippx_telemetry::register_build_info(&mut registry, "scheduler");
    let sched = Scheduler::bind(&ctx, cfg, counters)?;
    let health = ippx_telemetry::Health::new();
    health.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    let metrics_listener = match args.metrics_addr {
        Some(addr) => Some(std::net::TcpListener::bind(addr).with_context(|| format!("binding metrics address {addr}"))?),
        None => None,
    };
    // The hub reads this one line to learn the ports for the connection files.
    let line = serde_json::to_string(&serde_json::json!({ "ippx_scheduler_ready": sched.ports() }))?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    let (waker, stop) = ippx_transport::waker(&ctx, "scheduler-stop")?;
    if args.lifeline {
        std::thread::spawn(move || {
            // EOF on stdin means the hub is gone; wake the loop so it exits.
            let stdin = std::io::stdin();
            let mut line = String::new();
            while stdin.lock().read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                line.clear();
            }
            tracing::info!("lifeline closed: the hub is gone");
            std::process::exit(0);
        });
    }
    {
        let w = waker;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::spawn(move || {
            rt.block_on(async {
                if let Some(l) = metrics_listener {
                    let serve = async move {
                        l.set_nonblocking(true)?;
                        let l = tokio::net::TcpListener::from_std(l)?;
                        tracing::info!(addr = %l.local_addr()?, "serving /metrics");
                        ippx_telemetry::serve(l, registry, health, std::future::pending()).await
                    };
                    tokio::spawn(async move {
                        if let Err(e) = serve.await {
                            tracing::error!("metrics server failed: {e}");
                        }
                    });
                }
                let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return,
                };
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                w.wake(b"stop");
            });
        });
    }
    let counters = sched.run(stop)?;
    tracing::info!(dropped = ?counters.dropped_summary(), "scheduler exited");
    Ok(())
}

/// Asks the kernel to SIGKILL us when the hub dies, on top of the stdin lifeline.
#[allow(unsafe_code)]
fn die_with_parent() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and touches no memory.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
}
