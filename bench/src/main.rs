//! `ippx-bench`: a load generator for IPython Parallel controllers. See `--help`.

mod client;
mod conn;
mod engine;
mod procstat;
mod scenarios;
mod watch;

use scenarios::*;

use anyhow::{bail, Result};
use clap::{Parser, ValueEnum};
use client::{ClientOpts, ClientShared, Mode};
use conn::Endpoints;
use engine::{EngineOpts, EngineShared};
use indicatif::{ProgressBar, ProgressStyle};
use ippx_protocol::{Packer, Session, SessionConfig};
use serde_json::{json, Value as Json};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use watch::Watcher;

/// The result fields, in insertion order (the JSON line starts with `{"scenario"`).
#[derive(Default)]
struct Out(Vec<(String, Json)>);

impl Out {
    fn insert(&mut self, k: &str, v: Json) {
        match self.0.iter_mut().find(|(x, _)| x == k) {
            Some(slot) => slot.1 = v,
            None => self.0.push((k.to_owned(), v)),
        }
    }

    fn remove(&mut self, k: &str) {
        self.0.retain(|(x, _)| x != k);
    }

    fn get(&self, k: &str) -> Option<&Json> {
        self.0.iter().find(|(x, _)| x == k).map(|(_, v)| v)
    }

    fn to_json_line(&self) -> String {
        let fields: Vec<String> = self.0.iter().map(|(k, v)| format!("{}:{}", Json::String(k.clone()), v)).collect();
        format!("{{{}}}", fields.join(","))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Load-balanced no-op `apply_request`s through the task scheduler.
    Lb,
    /// Direct no-op `apply_request`s through the MUX, round robin over the engines.
    Direct,
    /// M engines heartbeating, no tasks: controller CPU% and RSS over --duration.
    Idle,
    /// M engines send `registration_request` at the same instant: how many complete
    /// registration (registration_notification) within --limit, and when the last did.
    Burst,
    /// --tasks load-balanced tasks in total; RSS sampled every --sample-every seconds.
    Soak,
    /// No controller: clients talk straight to one synthetic engine over loopback, to
    /// measure the load generator + libzmq round trip that --scenario lb adds to.
    Baseline,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Lb => "lb",
            Scenario::Direct => "direct",
            Scenario::Idle => "idle",
            Scenario::Burst => "burst",
            Scenario::Soak => "soak",
            Scenario::Baseline => "baseline",
        }
    }
}

/// Load generator for an IPython Parallel controller (ippx-hub or the stock ipcontroller).
///
/// It reads the controller's connection files and speaks the wire protocol itself:
/// M synthetic engines register (DEALER, identity = a fresh uuid), answer heartbeats
/// (SUB hb_ping -> DEALER hb_pong), and answer every apply_request/execute_request at
/// once with a valid apply_reply (shell ROUTER connected to mux, task and
/// broadcast[id % n]); K synthetic clients (DEALER to task or mux) keep a window of W
/// no-op apply_requests in flight and match replies by parent msg_id. Clients start only
/// once every engine's registration_notification has been seen.
///
/// Measured: throughput (replies/s), round-trip latency p50/p99 (client send -> reply),
/// and, with --controller-pid, the controller's CPU seconds per task and RSS, summed over
/// its whole process tree (the pid and all live descendants, utime+stime from
/// /proc/<pid>/stat, VmRSS from /proc/<pid>/status), sampled just before and after the
/// measured window (which starts after --warmup). cpu_us_per_task_total also counts the
/// warm-up and the backlog: CPU from the first task until the controller is idle again
/// after the clients stop (drain_s, at most --drain-max), over every reply received. PSS
/// (shared pages split) is reported beside RSS, which double-counts forked processes.
/// On exit every engine sends unregistration_request, as a stock engine's nanny does.
///
/// Output: one human-readable table, then one JSON line (starts with `{"scenario"`).
/// A progress bar is drawn on stderr when it is a terminal.
///
/// Examples:
///   ippx-hub --profile-dir=/tmp/p --ip=127.0.0.1 &
///   ippx-bench --profile-dir=/tmp/p --controller-pid=$! --scenario=lb --engines=16
///   ippx-bench --profile-dir=/tmp/p --controller-pid=$PID --scenario=idle --engines=1000 --duration=30
///   ippx-bench --scenario=baseline
#[derive(Parser, Debug)]
#[command(name = "ippx-bench", version, verbatim_doc_comment)]
struct Args {
    /// What to run.
    #[arg(long, value_enum, default_value = "lb")]
    scenario: Scenario,

    /// Profile directory of the controller: reads security/ipcontroller[-ID]-{engine,client}.json.
    #[arg(long, value_name = "DIR")]
    profile_dir: Option<PathBuf>,
    /// Cluster id (file name infix), with --profile-dir.
    #[arg(long, default_value = "", value_name = "ID")]
    cluster_id: String,
    /// Engine connection file (instead of --profile-dir; needs --client-file too).
    #[arg(long, value_name = "FILE")]
    engine_file: Option<PathBuf>,
    /// Client connection file (instead of --profile-dir; needs --engine-file too).
    #[arg(long, value_name = "FILE")]
    client_file: Option<PathBuf>,
    /// Seconds to wait for the connection files to appear.
    #[arg(long, default_value_t = 30.0, value_name = "S")]
    wait_files: f64,
    /// Controller pid: CPU and RSS are read for it and all its descendants.
    #[arg(long, value_name = "PID")]
    controller_pid: Option<u32>,

    /// Synthetic engines (M).
    #[arg(long, short = 'm', default_value_t = 2)]
    engines: usize,
    /// Synthetic clients (K), one thread each.
    #[arg(long, short = 'k', default_value_t = 1)]
    clients: usize,
    /// Tasks in flight per client (W).
    #[arg(long, short = 'w', default_value_t = 64)]
    window: usize,
    /// Bytes of the one buffer sent with each apply_request.
    #[arg(long, default_value_t = 64, value_name = "BYTES")]
    payload: usize,
    /// Engines per engine thread (each thread has its own zmq context).
    #[arg(long, default_value_t = 200, value_name = "N")]
    engines_per_thread: usize,
    /// Also connect each engine's IOPub PUB and publish status busy/idle around every
    /// request, as a real engine does.
    #[arg(long)]
    iopub: bool,
    /// Clients verify the HMAC signature of every reply.
    #[arg(long)]
    verify: bool,

    /// Seconds of traffic before the measured window (lb, direct, idle, baseline).
    #[arg(long, default_value_t = 2.0, value_name = "S")]
    warmup: f64,
    /// Length of the measured window in seconds (lb, direct, idle, baseline).
    #[arg(long, default_value_t = 10.0, value_name = "S")]
    duration: f64,
    /// Total tasks (soak). The first 10% are the warm-up.
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    tasks: u64,
    /// Seconds between RSS samples (soak).
    #[arg(long, default_value_t = 2.0, value_name = "S")]
    sample_every: f64,
    /// Soak: stop if no reply arrives for this many seconds.
    #[arg(long, default_value_t = 30.0, value_name = "S")]
    stall: f64,
    /// Burst: seconds to wait for registrations after the burst.
    #[arg(long, default_value_t = 20.0, value_name = "S")]
    limit: f64,
    /// Seconds an engine waits for its registration_reply before giving up
    /// (IPEngine.timeout; it then sends unregistration_request like ipengine).
    #[arg(long, default_value_t = 5.0, value_name = "S")]
    reg_timeout: f64,
    /// Registrations in flight at once per engine thread, outside burst (0 = all).
    #[arg(long, default_value_t = 50, value_name = "N")]
    reg_concurrency: usize,
    /// Seconds to wait for every engine to be registered before starting clients.
    #[arg(long, default_value_t = 180.0, value_name = "S")]
    wait_engines: f64,

    /// At most this many seconds waiting, after the clients stop, for the controller to
    /// go idle (its backlog is counted in cpu_us_per_task_total).
    #[arg(long, default_value_t = 120.0, value_name = "S")]
    drain_max: f64,

    /// Free text copied into the JSON line (e.g. which controller).
    #[arg(long, default_value = "")]
    label: String,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Print only the JSON line.
    #[arg(long)]
    json_only: bool,
}

struct Ctx {
    args: Args,
    tck: f64,
    hidden: bool,
}

impl Ctx {
    fn bar(&self, len: u64, msg: &str) -> ProgressBar {
        if self.hidden {
            return ProgressBar::hidden();
        }
        let pb = ProgressBar::new(len);
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg:<14} [{elapsed_precise}] {wide_bar} {pos}/{len} {prefix}") {
            pb.set_style(style);
        }
        pb.set_message(msg.to_owned());
        pb.enable_steady_tick(Duration::from_millis(200));
        pb
    }

    fn sample(&self) -> Option<procstat::TreeSample> {
        self.args.controller_pid.and_then(procstat::sample)
    }
}

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args = Args::parse();
    let hidden = args.no_progress || args.json_only;
    let ctx = Ctx { args, tck: procstat::clock_ticks() as f64, hidden };
    match run(&ctx) {
        Ok(out) => print_result(&ctx, out),
        Err(e) => {
            eprintln!("ippx-bench: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run(c: &Ctx) -> Result<Out> {
    let a = &c.args;
    if a.scenario == Scenario::Baseline {
        return baseline(c);
    }
    let ep = Arc::new(conn::load(
        a.profile_dir.as_deref(),
        &a.cluster_id,
        a.engine_file.as_deref(),
        a.client_file.as_deref(),
        Duration::from_secs_f64(a.wait_files),
    )?);
    let scfg = ep.session_config()?;
    if let Some(pid) = a.controller_pid {
        if procstat::sample(pid).is_none() {
            bail!("controller pid {pid} is not running");
        }
    }
    match a.scenario {
        Scenario::Lb | Scenario::Direct => throughput(c, &ep, &scfg),
        Scenario::Soak => soak(c, &ep, &scfg),
        Scenario::Idle => idle(c, &ep, &scfg),
        Scenario::Burst => burst(c, &ep, &scfg),
        Scenario::Baseline => unreachable!(),
    }
}

// ---------------------------------------------------------------------------------------
// engines

struct Engines {
    uuids: Vec<String>,
    shared: Arc<EngineShared>,
    handles: Vec<JoinHandle<Result<()>>>,
}

impl Engines {
    fn start(c: &Ctx, ep: &Arc<Endpoints>, scfg: &SessionConfig, burst: Option<(Arc<Barrier>, Arc<Barrier>)>) -> Result<Self> {
        let a = &c.args;
        let shared = Arc::new(EngineShared::default());
        let per = a.engines_per_thread.max(1);
        let mut uuids = Vec::with_capacity(a.engines);
        let mut handles = Vec::new();
        let mut left = a.engines;
        let mut g = 0;
        while left > 0 {
            let n = left.min(per);
            left -= n;
            let sessions: Vec<Session> = (0..n).map(|_| Session::new(scfg.clone())).collect::<Result<_, _>>()?;
            uuids.extend(sessions.iter().map(|s| s.session_id().to_owned()));
            let opts = EngineOpts {
                reg_timeout: Duration::from_secs_f64(a.reg_timeout),
                concurrency: a.reg_concurrency,
                iopub: a.iopub,
                burst: burst.clone(),
            };
            handles.push(engine::spawn_group(ep.clone(), sessions, opts, shared.clone(), format!("engines-{g}"))?);
            g += 1;
        }
        Ok(Engines { uuids, shared, handles })
    }

    fn groups(c: &Ctx) -> usize {
        c.args.engines.div_ceil(c.args.engines_per_thread.max(1))
    }

    fn failed(&self) -> usize {
        (self.shared.gave_up.load(Ordering::Relaxed) + self.shared.reg_errors.load(Ordering::Relaxed)) as usize
    }

    fn stop(self) -> Result<()> {
        self.shared.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            match h.join() {
                Ok(r) => r?,
                Err(_) => bail!("an engine thread panicked"),
            }
        }
        Ok(())
    }
}

/// Waits until every engine is registered (or has failed), as seen by a client.
fn wait_registered(c: &Ctx, w: &mut Watcher, e: &Engines) -> Result<usize> {
    let m = e.uuids.len();
    let pb = c.bar(m as u64, "registering");
    let start = Instant::now();
    let mut last_poll = Instant::now();
    loop {
        w.pump(100)?;
        let n = w.count_of(&e.uuids);
        pb.set_position(n as u64);
        if n + e.failed() >= m {
            break;
        }
        if last_poll.elapsed() >= Duration::from_secs(1) {
            w.poll_hub()?;
            last_poll = Instant::now();
        }
        if start.elapsed().as_secs_f64() > c.args.wait_engines {
            break;
        }
    }
    pb.finish_and_clear();
    let n = w.count_of(&e.uuids);
    if n == 0 {
        bail!("no engine registered within {} s ({} failed)", c.args.wait_engines, e.failed());
    }
    Ok(n)
}

fn watcher(ep: &Endpoints, scfg: &SessionConfig) -> Result<Watcher> {
    let w = Watcher::new(ep, Session::new(scfg.clone())?)?;
    // Let the SUB connect before anything can be published.
    std::thread::sleep(Duration::from_millis(300));
    Ok(w)
}

// ---------------------------------------------------------------------------------------
// statistics

fn percentile(sorted: &[u64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((q * sorted.len() as f64) as usize).min(sorted.len() - 1);
    Some(sorted[i] as f64 / 1000.0)
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

fn latency_fields(out: &mut Out, mut lat: Vec<u64>) {
    lat.sort_unstable();
    for (k, q) in [("p50_us", 0.5), ("p90_us", 0.9), ("p99_us", 0.99)] {
        out.insert(k, json!(percentile(&lat, q).map(|v| round(v, 1))));
    }
    out.insert("max_us", json!(lat.last().map(|v| round(*v as f64 / 1000.0, 1))));
    out.insert("latency_samples", json!(lat.len()));
}

/// Controller CPU between two samples: seconds, per task, and % of one core.
fn cpu_fields(c: &Ctx, out: &mut Out, s0: Option<procstat::TreeSample>, s1: Option<procstat::TreeSample>, tasks: u64, secs: f64) {
    match (s0, s1) {
        (Some(a), Some(b)) => {
            let cpu = b.ticks.saturating_sub(a.ticks) as f64 / c.tck;
            out.insert("controller_cpu_s", json!(round(cpu, 3)));
            out.insert("controller_cpu_pct", json!(round(100.0 * cpu / secs.max(1e-9), 2)));
            out.insert("cpu_us_per_task", if tasks > 0 { json!(round(cpu * 1e6 / tasks as f64, 2)) } else { Json::Null });
            out.insert("rss_kb", json!(b.rss_kb));
            out.insert("pss_kb", json!(b.pss_kb));
            out.insert("processes", json!(b.processes));
        }
        _ => {
            for k in ["controller_cpu_s", "controller_cpu_pct", "cpu_us_per_task", "rss_kb", "pss_kb", "processes"] {
                out.insert(k, Json::Null);
            }
        }
    }
}

fn header(c: &Ctx) -> Out {
    let a = &c.args;
    let mut m = Out::default();
    m.insert("scenario", json!(a.scenario.name()));
    m.insert("label", json!(a.label));
    m.insert("engines", json!(a.engines));
    m.insert("loadavg_start", json!(procstat::loadavg()));
    m
}

// ---------------------------------------------------------------------------------------
// output

fn fmt_value(v: &Json) -> String {
    match v {
        Json::Null => "-".into(),
        Json::String(s) => s.clone(),
        Json::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| !n.is_u64() && !n.is_i64()) {
                format!("{f}")
            } else {
                n.to_string()
            }
        }
        other => other.to_string(),
    }
}

fn print_result(c: &Ctx, out: Out) {
    if !c.args.json_only {
        let title = format!("ippx-bench {} {}", out.get("scenario").map(fmt_value).unwrap_or_default(), c.args.label);
        println!("{}", title.trim_end());
        println!("{}", "-".repeat(44));
        for (k, v) in &out.0 {
            if k == "rss_series" {
                continue;
            }
            println!("{:<22} {:>21}", k, fmt_value(v));
        }
        if let Some(Json::Array(series)) = out.get("rss_series") {
            println!("{}", "-".repeat(44));
            println!("{:>8} {:>12} {:>12} {:>8}", "t_s", "completed", "rss_mb", "fds");
            for s in series {
                let t = s.get(0).map(fmt_value).unwrap_or_default();
                let d = s.get(1).map(fmt_value).unwrap_or_default();
                let r = s.get(2).and_then(Json::as_f64).map(|kb| format!("{:.1}", kb / 1024.0)).unwrap_or_else(|| "-".into());
                let f = s.get(3).map(fmt_value).unwrap_or_else(|| "-".into());
                println!("{t:>8} {d:>12} {r:>12} {f:>8}");
            }
        }
        println!("{}", "-".repeat(44));
    }
    println!("{}", out.to_json_line());
}
