//! The scenarios: each drives the controller with synthetic clients and engines for a
//! measured window and returns its result fields.

use crate::*;

// ---------------------------------------------------------------------------------------
// scenarios

pub(crate) fn spawn_clients(
    c: &Ctx,
    scfg: &SessionConfig,
    opts: ClientOpts,
    shared: &Arc<ClientShared>,
) -> Result<Vec<JoinHandle<Result<Vec<u64>>>>> {
    (0..c.args.clients.max(1)).map(|i| client::spawn_client(Session::new(scfg.clone())?, opts.clone(), shared.clone(), i)).collect()
}

pub(crate) fn join_clients(handles: Vec<JoinHandle<Result<Vec<u64>>>>) -> Result<Vec<u64>> {
    let mut all = Vec::new();
    for h in handles {
        match h.join() {
            Ok(r) => all.extend(r?),
            Err(_) => bail!("a client thread panicked"),
        }
    }
    Ok(all)
}

pub(crate) fn client_fields(out: &mut Out, s: &ClientShared) {
    out.insert("errors", json!(s.errors.load(Ordering::Relaxed)));
    out.insert("unmatched", json!(s.unmatched.load(Ordering::Relaxed)));
    out.insert("send_errors", json!(s.send_errors.load(Ordering::Relaxed)));
    out.insert("bad_signatures", json!(s.bad_signature.load(Ordering::Relaxed)));
}

/// Runs the warm-up and the measured window over already started clients; returns
/// (tasks, seconds, cpu samples, bench cpu seconds).
/// (tasks, seconds, controller samples before/after, load generator CPU seconds).
type Window = (u64, f64, Option<procstat::TreeSample>, Option<procstat::TreeSample>, f64);

pub(crate) fn measure_window(c: &Ctx, shared: &ClientShared, mut pump: impl FnMut() -> Result<()>) -> Result<Window> {
    let a = &c.args;
    let pb = c.bar((a.warmup * 10.0) as u64, "warm-up");
    let t = Instant::now();
    while t.elapsed().as_secs_f64() < a.warmup {
        pump()?;
        pb.set_position((t.elapsed().as_secs_f64() * 10.0) as u64);
    }
    pb.finish_and_clear();
    let s0 = c.sample();
    let b0 = procstat::self_ticks();
    let c0 = shared.completed.load(Ordering::Relaxed);
    let t0 = Instant::now();
    shared.phase.store(client::MEASURE, Ordering::Relaxed);
    let pb = c.bar((a.duration * 10.0) as u64, "measuring");
    while t0.elapsed().as_secs_f64() < a.duration {
        pump()?;
        let dt = t0.elapsed().as_secs_f64();
        pb.set_position((dt * 10.0) as u64);
        let done = shared.completed.load(Ordering::Relaxed) - c0;
        pb.set_prefix(format!("{:.0} tasks/s", done as f64 / dt.max(1e-3)));
    }
    let c1 = shared.completed.load(Ordering::Relaxed);
    let secs = t0.elapsed().as_secs_f64();
    let s1 = c.sample();
    let b1 = procstat::self_ticks();
    shared.phase.store(client::DONE, Ordering::Relaxed);
    pb.finish_and_clear();
    Ok((c1 - c0, secs, s0, s1, b1.saturating_sub(b0) as f64 / c.tck))
}

/// After the clients stop, waits until the controller tree is idle again (under 5% of a
/// core over 0.5 s, at most --drain-max s): a controller that could not keep up is still
/// working through its backlog, and that CPU belongs to the tasks too.
pub(crate) fn drain(c: &Ctx) -> (Option<procstat::TreeSample>, f64, bool) {
    let t = Instant::now();
    let Some(mut prev) = c.sample() else {
        return (None, 0.0, true);
    };
    let mut idle = false;
    let pb = c.bar(c.args.drain_max as u64, "drain");
    while t.elapsed().as_secs_f64() < c.args.drain_max {
        std::thread::sleep(Duration::from_millis(500));
        let Some(now) = c.sample() else { break };
        let rate = now.ticks.saturating_sub(prev.ticks) as f64 / c.tck / 0.5;
        pb.set_position(t.elapsed().as_secs());
        prev = now;
        if rate < 0.05 {
            idle = true;
            break;
        }
    }
    pb.finish_and_clear();
    (Some(prev), t.elapsed().as_secs_f64(), idle)
}

pub(crate) fn total_cpu_fields(
    c: &Ctx,
    out: &mut Out,
    s_start: Option<procstat::TreeSample>,
    s_end: Option<procstat::TreeSample>,
    tasks: u64,
    (drain_s, drained): (f64, bool),
) {
    let v = match (s_start, s_end) {
        (Some(a), Some(b)) if tasks > 0 => json!(round(b.ticks.saturating_sub(a.ticks) as f64 / c.tck * 1e6 / tasks as f64, 2)),
        _ => Json::Null,
    };
    out.insert("cpu_us_per_task_total", v);
    out.insert("drain_s", json!(round(drain_s, 1)));
    out.insert("drained", json!(drained));
    out.insert("rss_after_drain_kb", json!(s_end.map(|s| s.rss_kb)));
}

pub(crate) fn throughput(c: &Ctx, ep: &Arc<Endpoints>, scfg: &SessionConfig) -> Result<Out> {
    let a = &c.args;
    let mut w = watcher(ep, scfg)?;
    let engines = Engines::start(c, ep, scfg, None)?;
    let registered = wait_registered(c, &mut w, &engines)?;
    let targets: Vec<String> = engines.uuids.iter().filter(|u| w.registered.contains_key(*u)).cloned().collect();
    let mode = if a.scenario == Scenario::Direct { Mode::Direct } else { Mode::Lb };
    let url = match mode {
        Mode::Lb => ep.client_url(ep.client.task),
        Mode::Direct => ep.client_url(ep.client.mux),
    };
    let shared = Arc::new(ClientShared::default());
    let opts = ClientOpts { mode, url, window: a.window.max(1), payload: a.payload, targets, verify: a.verify, budget: None };
    let s_start = c.sample();
    let handles = spawn_clients(c, scfg, opts, &shared)?;
    let (tasks, secs, s0, s1, bench_cpu) = measure_window(c, &shared, || {
        std::thread::sleep(Duration::from_millis(100));
        Ok(())
    })?;
    shared.stop.store(true, Ordering::Relaxed);
    let lat = join_clients(handles)?;
    let all_tasks = shared.completed.load(Ordering::Relaxed);
    let (s_end, drain_s, drained) = drain(c);
    let answered = engines.shared.answered.load(Ordering::Relaxed);
    engines.stop()?;

    let mut out = header(c);
    out.insert("registered", json!(registered));
    out.insert("clients", json!(a.clients));
    out.insert("window", json!(a.window));
    out.insert("seconds", json!(round(secs, 3)));
    out.insert("tasks", json!(tasks));
    out.insert("tasks_per_s", json!(round(tasks as f64 / secs, 1)));
    latency_fields(&mut out, lat);
    cpu_fields(c, &mut out, s0, s1, tasks, secs);
    total_cpu_fields(c, &mut out, s_start, s_end, all_tasks, (drain_s, drained));
    out.insert("bench_cpu_pct", json!(round(100.0 * bench_cpu / secs, 1)));
    out.insert("engine_answers", json!(answered));
    client_fields(&mut out, &shared);
    Ok(out)
}

pub(crate) fn baseline(c: &Ctx) -> Result<Out> {
    let a = &c.args;
    let key = ippx_protocol::session::new_id();
    let scfg = SessionConfig::new(key.into_bytes(), Packer::Msgpack);
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let (port, eh) = engine::spawn_baseline_engine(Session::new(scfg.clone())?, stop.clone(), answered.clone())?;
    let shared = Arc::new(ClientShared::default());
    let opts = ClientOpts {
        mode: Mode::Lb,
        url: format!("tcp://127.0.0.1:{port}"),
        window: a.window.max(1),
        payload: a.payload,
        targets: vec![],
        verify: a.verify,
        budget: None,
    };
    let handles = spawn_clients(c, &scfg, opts, &shared)?;
    let (tasks, secs, _, _, bench_cpu) = measure_window(c, &shared, || {
        std::thread::sleep(Duration::from_millis(100));
        Ok(())
    })?;
    shared.stop.store(true, Ordering::Relaxed);
    let lat = join_clients(handles)?;
    stop.store(true, Ordering::Relaxed);
    match eh.join() {
        Ok(r) => r?,
        Err(_) => bail!("engine thread panicked"),
    }
    let mut out = header(c);
    out.insert("engines", json!(1));
    out.insert("clients", json!(a.clients));
    out.insert("window", json!(a.window));
    out.insert("seconds", json!(round(secs, 3)));
    out.insert("tasks", json!(tasks));
    out.insert("tasks_per_s", json!(round(tasks as f64 / secs, 1)));
    latency_fields(&mut out, lat);
    out.insert("bench_cpu_pct", json!(round(100.0 * bench_cpu / secs, 1)));
    client_fields(&mut out, &shared);
    Ok(out)
}

pub(crate) fn soak(c: &Ctx, ep: &Arc<Endpoints>, scfg: &SessionConfig) -> Result<Out> {
    let a = &c.args;
    let mut w = watcher(ep, scfg)?;
    let engines = Engines::start(c, ep, scfg, None)?;
    let registered = wait_registered(c, &mut w, &engines)?;
    let shared = Arc::new(ClientShared::default());
    let opts = ClientOpts {
        mode: Mode::Lb,
        url: ep.client_url(ep.client.task),
        window: a.window.max(1),
        payload: a.payload,
        targets: vec![],
        verify: a.verify,
        budget: Some(a.tasks),
    };
    let warm_tasks = a.tasks / 10;
    let s_start = c.sample();
    let start = Instant::now();
    let handles = spawn_clients(c, scfg, opts, &shared)?;
    let pb = c.bar(a.tasks, "soak");
    let mut series: Vec<Json> = Vec::new();
    let mut first_measured_sample: Option<usize> = None;
    let mut m0: Option<(u64, Instant, Option<procstat::TreeSample>)> = None;
    let mut last_sample = Instant::now() - Duration::from_secs(3600);
    let mut last_progress = (0u64, Instant::now());
    let mut stalled = false;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let done = shared.completed.load(Ordering::Relaxed);
        pb.set_position(done);
        pb.set_prefix(format!("{:.0} tasks/s", done as f64 / start.elapsed().as_secs_f64().max(1e-3)));
        if m0.is_none() && done >= warm_tasks {
            m0 = Some((done, Instant::now(), c.sample()));
            shared.phase.store(client::MEASURE, Ordering::Relaxed);
            first_measured_sample = Some(series.len());
        }
        let finished = handles.iter().all(|h| h.is_finished());
        if last_sample.elapsed().as_secs_f64() >= a.sample_every || finished {
            last_sample = Instant::now();
            let s = c.sample();
            series.push(json!([round(start.elapsed().as_secs_f64(), 1), done, s.map(|s| s.rss_kb), s.map(|s| s.fds)]));
        }
        if done != last_progress.0 {
            last_progress = (done, Instant::now());
        } else if last_progress.1.elapsed().as_secs_f64() > a.stall {
            stalled = true;
            break;
        }
        if finished {
            break;
        }
    }
    pb.finish_and_clear();
    let c1 = shared.completed.load(Ordering::Relaxed);
    let s1 = c.sample();
    let t1 = Instant::now();
    shared.stop.store(true, Ordering::Relaxed);
    let lat = join_clients(handles)?;
    let (s_end, drain_s, drained) = drain(c);
    engines.stop()?;

    let mut out = header(c);
    out.insert("registered", json!(registered));
    out.insert("clients", json!(a.clients));
    out.insert("window", json!(a.window));
    out.insert("tasks_requested", json!(a.tasks));
    out.insert("tasks", json!(c1));
    out.insert("stalled", json!(stalled));
    let total = t1.duration_since(start).as_secs_f64();
    out.insert("total_seconds", json!(round(total, 2)));
    if let Some((d0, t0, s0)) = m0 {
        let secs = t1.duration_since(t0).as_secs_f64();
        let tasks = c1 - d0;
        out.insert("seconds", json!(round(secs, 3)));
        out.insert("measured_tasks", json!(tasks));
        out.insert("tasks_per_s", json!(round(tasks as f64 / secs.max(1e-9), 1)));
        cpu_fields(c, &mut out, s0, s1, tasks, secs);
    }
    total_cpu_fields(c, &mut out, s_start, s_end, c1, (drain_s, drained));
    latency_fields(&mut out, lat);
    // RSS flatness after warm-up: every later sample against the first one.
    let post: Vec<f64> =
        first_measured_sample.map(|i| series[i..].iter().filter_map(|s| s.get(2).and_then(Json::as_f64)).collect()).unwrap_or_default();
    if let Some(&base) = post.first() {
        let max = post.iter().cloned().fold(f64::MIN, f64::max);
        let min = post.iter().cloned().fold(f64::MAX, f64::min);
        let dev = post.iter().map(|v| (v - base).abs()).fold(0.0, f64::max);
        out.insert("rss_warm_kb", json!(base));
        out.insert("rss_min_kb", json!(min));
        out.insert("rss_max_kb", json!(max));
        out.insert("rss_last_kb", json!(post.last()));
        out.insert("rss_drift_pct", json!(round(100.0 * dev / base.max(1.0), 2)));
    }
    // Open descriptors after warm-up: a leak shows as growth.
    let fds: Vec<f64> =
        first_measured_sample.map(|i| series[i..].iter().filter_map(|s| s.get(3).and_then(Json::as_f64)).collect()).unwrap_or_default();
    if !fds.is_empty() {
        out.insert("fds_min", json!(fds.iter().cloned().fold(f64::MAX, f64::min)));
        out.insert("fds_max", json!(fds.iter().cloned().fold(f64::MIN, f64::max)));
    }
    out.insert("rss_series", Json::Array(series));
    out.insert("rss_by_process", json!(a.controller_pid.map(procstat::rss_by_process)));
    client_fields(&mut out, &shared);
    Ok(out)
}

pub(crate) fn idle(c: &Ctx, ep: &Arc<Endpoints>, scfg: &SessionConfig) -> Result<Out> {
    let a = &c.args;
    let mut w = watcher(ep, scfg)?;
    let engines = Engines::start(c, ep, scfg, None)?;
    let reg_start = Instant::now();
    let registered = wait_registered(c, &mut w, &engines)?;
    let reg_secs = reg_start.elapsed().as_secs_f64();
    let pb = c.bar((a.warmup * 10.0) as u64, "warm-up");
    let t = Instant::now();
    while t.elapsed().as_secs_f64() < a.warmup {
        w.pump(100)?;
        pb.set_position((t.elapsed().as_secs_f64() * 10.0) as u64);
    }
    pb.finish_and_clear();
    let s0 = c.sample();
    let p0 = engines.shared.pings.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let pb = c.bar((a.duration * 10.0) as u64, "idle");
    while t0.elapsed().as_secs_f64() < a.duration {
        w.pump(100)?;
        pb.set_position((t0.elapsed().as_secs_f64() * 10.0) as u64);
    }
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let s1 = c.sample();
    let pings = engines.shared.pings.load(Ordering::Relaxed) - p0;
    let lost = engines.uuids.iter().filter(|u| w.unregistered.contains(*u)).count();
    engines.stop()?;

    let mut out = header(c);
    out.insert("registered", json!(registered));
    out.insert("registration_seconds", json!(round(reg_secs, 2)));
    out.insert("seconds", json!(round(secs, 3)));
    cpu_fields(c, &mut out, s0, s1, 0, secs);
    out.remove("cpu_us_per_task");
    out.insert("pings_answered", json!(pings));
    out.insert("rss_by_process", json!(a.controller_pid.map(procstat::rss_by_process)));
    out.insert("unregistered_during", json!(lost));
    Ok(out)
}

pub(crate) fn burst(c: &Ctx, ep: &Arc<Endpoints>, scfg: &SessionConfig) -> Result<Out> {
    let a = &c.args;
    let m = a.engines;
    let mut w = watcher(ep, scfg)?;
    let groups = Engines::groups(c);
    let ready = Arc::new(Barrier::new(groups + 1));
    let go = Arc::new(Barrier::new(groups + 1));
    let engines = Engines::start(c, ep, scfg, Some((ready.clone(), go.clone())))?;
    ready.wait();
    // Let every registration socket finish connecting so the requests leave together.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_millis(1000) {
        w.pump(50)?;
    }
    let s0 = c.sample();
    let t0 = Instant::now();
    go.wait();
    let pb = c.bar(m as u64, "burst");
    let limit = Duration::from_secs_f64(a.limit);
    while t0.elapsed() < limit {
        w.pump(50)?;
        let n = w.count_of(&engines.uuids);
        pb.set_position(n as u64);
        if n + engines.failed() >= m {
            break;
        }
    }
    pb.finish_and_clear();
    let s1 = c.sample();
    let secs = t0.elapsed().as_secs_f64();
    let mut times: Vec<f64> = engines.uuids.iter().filter_map(|u| w.registered.get(u)).map(|t| t.duration_since(t0).as_secs_f64()).collect();
    times.sort_by(f64::total_cmp);
    let mut reply: Vec<f64> = engines.shared.reg_reply_s.lock().map(|v| v.clone()).unwrap_or_default();
    reply.sort_by(f64::total_cmp);
    let sh = &engines.shared;
    let (ok, errs, gave_up) = (sh.replied_ok.load(Ordering::Relaxed), sh.reg_errors.load(Ordering::Relaxed), sh.gave_up.load(Ordering::Relaxed));
    engines.stop()?;

    let mut out = header(c);
    out.insert("limit_s", json!(a.limit));
    out.insert("replies_ok", json!(ok));
    out.insert("reply_errors", json!(errs));
    out.insert("gave_up", json!(gave_up));
    out.insert("registered", json!(times.len()));
    out.insert("registered_10s", json!(times.iter().filter(|&&t| t <= 10.0).count()));
    out.insert("first_s", json!(times.first().map(|v| round(*v, 3))));
    out.insert("last_s", json!(times.last().map(|v| round(*v, 3))));
    out.insert("reply_p50_s", json!(reply.get(reply.len() / 2).map(|v| round(*v, 3))));
    out.insert("reply_max_s", json!(reply.last().map(|v| round(*v, 3))));
    out.insert("seen_by_poll_only", json!(w.seen_by_poll));
    cpu_fields(c, &mut out, s0, s1, 0, secs);
    out.remove("cpu_us_per_task");
    out.insert("seconds", json!(round(secs, 3)));
    Ok(out)
}
