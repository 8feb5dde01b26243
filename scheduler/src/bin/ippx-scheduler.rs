//! `ippx-scheduler`: the MUX, control, IOPub, task and broadcast relays of one controller.
//! Normally started by `ippx-hub`; it can run by itself with explicit addresses.

use anyhow::Context as _;
use clap::Parser;
use ippx_scheduler::link::SchedulerArgs;
use ippx_scheduler::runner::Scheduler;
use std::io::{BufRead, Write};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args = SchedulerArgs::parse();
    ippx_telemetry::logging::init(&args.log_level, args.log_format);
    if args.lifeline {
        die_with_parent();
    }
    // Each engine holds 5 connections to the schedulers (MUX, control, task, IOPub,
    // broadcast): take the hard file-descriptor limit, as the hub does.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::info!(limit = n, "file descriptors: room for about {} engines", n.saturating_sub(64) / 5),
        Err(e) => tracing::warn!("cannot raise the file-descriptor limit: {e}"),
    }
    let key = match &args.keyfile {
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?.trim().to_owned(),
        None => std::env::var("IPPX_SESSION_KEY").unwrap_or_default(),
    };
    // The hub hands its CURVE keys over in the environment, as it does the session key.
    let curve = match (std::env::var("IPP_CURVE_PUBLICKEY"), std::env::var("IPP_CURVE_SECRETKEY")) {
        (Ok(p), Ok(s)) if !p.is_empty() && !s.is_empty() => Some(ippx_transport::CurveKeys::from_z85(&p, &s)?),
        _ => None,
    };
    let cfg = args.config(&key, curve)?;
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
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", sched.ports().ready_line())?;
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
