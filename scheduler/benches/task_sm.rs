//! Task scheduler state machine throughput: no-op tasks through `submit` → `engine_reply`
//! with 2 and 16 engines (leastload, hwm 1, every engine kept busy), as a Python client and
//! engines would send them (signed JSON, LoadBalancedView metadata, 4 small buffers).
//! Message generation happens before the clock starts; the timed part is the scheduler
//! plus an outbox that drops what it is given.
//!
//! "queued": all requests submitted first (they wait in the scheduler queue), then answered.
//!
//! `cargo bench -p ippx-scheduler --bench task_sm` (env `TASKS`, default 200000;
//! `BREAKDOWN=1` times the protocol primitives each task needs instead).

use ippx_protocol::{vmap, Packer, Parent, Session, SessionConfig, Value};
use ippx_scheduler::task::{Frames, Scheme, TaskConfig, TaskOutbox, TaskScheduler};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

const KEY: &[u8] = b"9bf3cdc5-ec64f080d8e2b532e241cd1e";
const CLIENT: &[u8] = b"\x00\xf4\xb0\xdc\x52";

#[derive(Default)]
struct Sink {
    dispatched: VecDeque<Vec<u8>>,
    to_client: u64,
    to_hub: u64,
}

impl TaskOutbox for Sink {
    fn to_engine(&mut self, mut frames: Frames) {
        self.dispatched.push_back(std::mem::take(&mut frames[0]));
    }
    fn to_client(&mut self, _frames: Frames) {
        self.to_client += 1;
    }
    fn to_hub(&mut self, _topic: ippx_protocol::MonitorTopic, _frames: Frames) {
        self.to_hub += 1;
    }
}

fn session() -> Session {
    Session::new(SessionConfig::new(KEY.to_vec(), Packer::Json)).expect("session")
}

/// Requests as the client ROUTER receives them, and the matching engine replies with an
/// empty engine routing frame (filled in with whoever got the task).
fn workload(n: usize) -> (Vec<Frames>, Vec<Frames>) {
    let mut client = session();
    let mut engine = session();
    let md = vmap! {"after" => Value::Array(vec![]), "follow" => Value::Array(vec![]), "timeout" => 0.0, "targets" => Value::Array(vec![]), "retries" => 0i64, "label" => Value::Nil};
    let bufs = vec![vec![0x80u8; 325], vec![0x81u8; 52], vec![0x82u8; 5], vec![0x83u8; 5]];
    let mut reqs = Vec::with_capacity(n);
    let mut reps = Vec::with_capacity(n);
    for _ in 0..n {
        let (h, f) = client.serialize(vec![CLIENT.to_vec()], "apply_request", Parent::None, &md, &Value::map(), bufs.clone()).expect("request");
        let rmd = vmap! {"started" => h.date.as_str(), "dependencies_met" => true, "engine" => "e", "is_broadcast" => false, "is_coalescing" => false, "original_msg_id" => "", "label" => Value::Nil, "status" => "ok"};
        let (_, r) = engine
            .serialize(
                vec![Vec::new(), CLIENT.to_vec()],
                "apply_reply",
                Parent::Raw(&f[3]),
                &rmd,
                &vmap! {"status" => "ok"},
                vec![vec![0x80, 4, 0x4b, 3, 0x2e]],
            )
            .expect("reply");
        reqs.push(f);
        reps.push(r);
    }
    (reqs, reps)
}

/// Pushes every request through the scheduler and answers each dispatched task.
/// `window`: how many dispatched tasks stay unanswered (= engines keeps every engine busy
/// with hwm 1); `burst`: submit everything first (tasks wait in the queue), then answer.
fn run(engines: usize, reqs: Vec<Frames>, reps: Vec<Frames>, burst: bool) -> Duration {
    let n = reqs.len();
    let cfg = TaskConfig { scheme: Scheme::LeastLoad, hwm: 1, stranded_delay: Duration::from_secs(5), seed: 1 };
    let mut s = TaskScheduler::new(cfg, session());
    let mut out = Sink::default();
    let now = Instant::now();
    for i in 0..engines {
        s.add_engine(&format!("{i:08x}-0000-4000-8000-00000000{i:04x}"), now, &mut out);
    }
    let mut reps: Vec<Option<Frames>> = reps.into_iter().map(Some).collect();
    let mut inflight: VecDeque<(usize, Vec<u8>)> = VecDeque::with_capacity(engines + 1);
    let mut next_dispatch = 0usize;
    // With FIFO queueing and no dependencies the k-th dispatch is the k-th request.
    let mut collect = |out: &mut Sink, inflight: &mut VecDeque<(usize, Vec<u8>)>| {
        while let Some(uuid) = out.dispatched.pop_front() {
            inflight.push_back((next_dispatch, uuid));
            next_dispatch += 1;
        }
    };
    let mut answer = |s: &mut TaskScheduler, out: &mut Sink, inflight: &mut VecDeque<(usize, Vec<u8>)>| {
        let (j, uuid) = inflight.pop_front().expect("inflight");
        let mut r = reps[j].take().expect("reply");
        r[0] = uuid;
        s.engine_reply(r, now, out).expect("reply");
    };
    let start = Instant::now();
    for req in reqs {
        s.submit(req, now, &mut out).expect("submit");
        collect(&mut out, &mut inflight);
        while !burst && inflight.len() >= engines {
            answer(&mut s, &mut out, &mut inflight);
            collect(&mut out, &mut inflight);
        }
    }
    while !inflight.is_empty() {
        answer(&mut s, &mut out, &mut inflight);
        collect(&mut out, &mut inflight);
    }
    let took = start.elapsed();
    let st = s.stats();
    assert_eq!((st.completed as usize, st.pending, st.queued), (n, 0, 0));
    assert_eq!(out.to_client as usize, n);
    assert_eq!(out.to_hub as usize, 3 * n, "intask + tracktask + outtask per task");
    took
}

/// Cost of the protocol primitives the scheduler cannot avoid per task, for comparison.
fn breakdown(n: usize) {
    #[derive(serde::Deserialize)]
    struct Hid {
        #[allow(dead_code)]
        msg_id: String,
    }
    let (reqs, reps) = workload(n);
    let mut s = session();
    let time = |name: &str, f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        println!("  {name:<32} {:>6.0} ns/task", t.elapsed().as_nanos() as f64 / n as f64);
    };
    println!("protocol primitives ({n} messages):");
    time("clone request frames", &mut || reqs.iter().for_each(|r| drop(std::hint::black_box(r.clone()))));
    time("clone reply frames", &mut || reps.iter().for_each(|r| drop(std::hint::black_box(r.clone()))));
    time("unpack request header", &mut || reqs.iter().for_each(|r| drop(std::hint::black_box(s.unpack::<Hid>(&r[3]).expect("h")))));
    time("unpack request metadata (Value)", &mut || reqs.iter().for_each(|r| drop(std::hint::black_box(s.unpack::<Value>(&r[5]).expect("m")))));
    time("unpack reply parent", &mut || reps.iter().for_each(|r| drop(std::hint::black_box(s.unpack::<Hid>(&r[5]).expect("p")))));
    time("unpack reply metadata (Value)", &mut || reps.iter().for_each(|r| drop(std::hint::black_box(s.unpack::<Value>(&r[6]).expect("m")))));
    let content = ippx_protocol::content::TaskDestination {
        msg_id: "54468c75-b3b60ccfc646312fa92f4bec_6762_4".into(),
        engine_id: "9aabafec-fe263ddcec9aba8f65fe8580".into(),
    };
    time("Session::serialize (chrono date)", &mut || {
        (0..n).for_each(|_| {
            drop(std::hint::black_box(
                s.serialize(vec![b"x".to_vec()], "task_destination", Parent::None, &Value::map(), &content, vec![]).expect("s"),
            ))
        })
    });
}

fn main() {
    // `cargo bench` passes --bench; under `cargo test --all-targets` just smoke-test.
    let full = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("TASKS").ok().and_then(|v| v.parse().ok()).unwrap_or(if full { 200_000 } else { 2_000 });
    if std::env::var("BREAKDOWN").is_ok() {
        breakdown(n);
        return;
    }
    println!("task scheduler state machine: {n} no-op tasks, leastload, hwm 1, median of 5 runs");
    for (engines, burst) in [(2usize, false), (16, false), (16, true)] {
        let mut times = Vec::new();
        for _ in 0..5 {
            let (reqs, reps) = workload(n);
            times.push(run(engines, reqs, reps, burst));
        }
        times.sort();
        let med = times[2];
        println!(
            "engines={engines:>2} {:<10} {:>9.0} tasks/s {:>6.0} ns/task  (runs: {})",
            if burst { "queued" } else { "pipelined" },
            n as f64 / med.as_secs_f64(),
            med.as_nanos() as f64 / n as f64,
            times.iter().map(|t| format!("{:.0}ms", t.as_secs_f64() * 1e3)).collect::<Vec<_>>().join(" ")
        );
    }
}
