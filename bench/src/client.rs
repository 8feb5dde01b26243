//! Synthetic clients: a DEALER to the task (load-balanced) or mux (direct) port that keeps
//! `window` no-op `apply_request`s in flight and matches replies by `parent_header.msg_id`.

use anyhow::Result;
use ippx_protocol::header::ParentRef;
use ippx_protocol::{Envelope, Session};
use ippx_transport::{self as tp, zmq, zmq::SocketType};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

/// Phases (`ClientShared::phase`): 0 = warm-up, then:
pub const MEASURE: u8 = 1;
pub const DONE: u8 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `task` port, LoadBalancedView metadata.
    Lb,
    /// `mux` port, first frame = target engine uuid (round robin over `targets`).
    Direct,
}

#[derive(Clone)]
pub struct ClientOpts {
    pub mode: Mode,
    pub url: String,
    pub window: usize,
    pub payload: usize,
    pub targets: Vec<String>,
    pub verify: bool,
    /// Total tasks to submit across all clients (None = until stopped).
    pub budget: Option<u64>,
}

#[derive(Default)]
pub struct ClientShared {
    pub stop: AtomicBool,
    pub phase: AtomicU8,
    pub claimed: AtomicU64,
    pub sent: AtomicU64,
    pub completed: AtomicU64,
    pub errors: AtomicU64,
    pub unmatched: AtomicU64,
    pub bad_signature: AtomicU64,
    pub send_errors: AtomicU64,
}

/// LoadBalancedView's metadata for a plain `apply` (docs/protocol.md §10.5).
#[derive(Serialize)]
struct LbMeta {
    after: [u8; 0],
    follow: [u8; 0],
    timeout: f64,
    targets: [u8; 0],
    retries: u32,
    label: Option<String>,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Deserialize)]
struct StatusOnly {
    #[serde(default)]
    status: String,
}

/// Returns the round-trip times (ns) of replies received while the phase was MEASURE.
pub fn spawn_client(session: Session, opts: ClientOpts, shared: Arc<ClientShared>, index: usize) -> Result<JoinHandle<Result<Vec<u64>>>> {
    Ok(std::thread::Builder::new().name(format!("client-{index}")).spawn(move || run(session, &opts, &shared, index))?)
}

fn run(mut session: Session, opts: &ClientOpts, shared: &ClientShared, index: usize) -> Result<Vec<u64>> {
    let ctx = zmq::Context::new();
    let sock = tp::socket(&ctx, SocketType::DEALER, None)?;
    tp::connect(&sock, &opts.url)?;
    let empty = session.pack(&Empty {})?;
    let meta = match opts.mode {
        Mode::Lb => session.pack(&LbMeta { after: [], follow: [], timeout: 0.0, targets: [], retries: 0, label: None })?,
        Mode::Direct => empty.clone(),
    };
    let payload = vec![0x42u8; opts.payload];
    let mut inflight: HashMap<String, Instant> = HashMap::with_capacity(opts.window * 2);
    let mut lat: Vec<u64> = Vec::new();
    let mut rr = index;
    let mut exhausted = false;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        while inflight.len() < opts.window && !exhausted {
            if let Some(n) = opts.budget {
                if shared.claimed.fetch_add(1, Ordering::Relaxed) >= n {
                    exhausted = true;
                    break;
                }
            }
            let idents = match opts.mode {
                Mode::Lb => vec![],
                Mode::Direct => {
                    rr = (rr + 1) % opts.targets.len().max(1);
                    opts.targets.get(rr).map(|t| vec![t.as_bytes().to_vec()]).unwrap_or_default()
                }
            };
            let header = session.new_header("apply_request");
            let h = session.pack(&header)?;
            let frames = session.frame(idents, [h, empty.clone(), meta.clone(), empty.clone()], vec![payload.clone()]);
            let t = Instant::now();
            if tp::send(&sock, frames).is_err() {
                shared.send_errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            inflight.insert(header.msg_id, t);
            shared.sent.fetch_add(1, Ordering::Relaxed);
        }
        if exhausted && inflight.is_empty() {
            break;
        }
        let r = tp::poll(&[&sock], 50)?;
        if !r[0] {
            continue;
        }
        while let Some(frames) = tp::try_recv(&sock)? {
            let now = Instant::now();
            let Ok(env) = Envelope::parse(frames) else {
                shared.unmatched.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if opts.verify && session.check(&env, false).is_err() {
                shared.bad_signature.fetch_add(1, Ordering::Relaxed);
            }
            let Ok(parent) = session.unpack::<ParentRef>(env.parent_bytes()) else {
                shared.unmatched.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let Some(t0) = inflight.remove(&parent.msg_id) else {
                shared.unmatched.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if session.unpack::<StatusOnly>(env.content_bytes()).map(|s| s.status != "ok").unwrap_or(true) {
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
            if shared.phase.load(Ordering::Relaxed) == MEASURE {
                lat.push(now.duration_since(t0).as_nanos() as u64);
            }
            shared.completed.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(lat)
}
