//! The broadcast scheduler tree (docs/protocol.md §5.5) as a pure state machine.
//!
//! Python runs one process-or-thread per tree node, linked by internal ROUTER pairs. Here
//! every node lives in this one state machine, so the tree's observable effects are
//! computed directly instead of being passed hop by hop:
//! - a target with engine id `eid` is served by leaf `eid % 2**depth`, the leaf socket
//!   the engine itself connects to;
//! - the engine sees the routing frames a real tree would push: the leaf's id, then
//!   each ancestor's id up to the root, then the client's id;
//! - a coalesced reply is the last reply received overall (each node keeps the last of
//!   its children, so the root ends with the globally last one), with
//!   `broadcast_targets` as `[uuid, eid]` pairs and buffers concatenated in tree order:
//!   leaves in order, targets in request order within a leaf.
//!
//! Only messages that leave the process are packed and signed: the per-target requests
//! to engines and the coalesced replies to clients. Broadcast traffic is not copied to
//! the hub, as in ipyparallel 9.2.0.

use ippx_protocol::content::ErrorContent;
use ippx_protocol::datetime::{format_iso, now};
use ippx_protocol::wire::{find_delim, DELIM};
use ippx_protocol::{Envelope, Session, Value};
use std::collections::{HashMap, HashSet};

pub type Frames = Vec<Vec<u8>>;

pub trait BroadcastOutbox {
    /// Frames for leaf socket `leaf`: `[engine uuid, routing..., DELIM, ...]`.
    fn to_engine(&mut self, leaf: usize, frames: Frames) -> bool;
    /// Frames for the root's client ROUTER: `[client_id, DELIM, ...]`.
    fn to_client(&mut self, frames: Frames);
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BroadcastError {
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("reply for an unknown broadcast {0}")]
    UnknownReply(String),
}

#[derive(Clone, Debug)]
struct Target {
    uuid: String,
    eid: u64,
}

struct Reply {
    seq: u64,
    /// Made up here for an engine that died or could not be reached.
    engine_failed: bool,
    header: Vec<u8>,
    parent: Vec<u8>,
    metadata: Value,
    content: Vec<u8>,
    buffers: Frames,
}

struct Pending {
    client_id: Vec<u8>,
    /// In tree order: by leaf, then request order.
    targets: Vec<Target>,
    replies: HashMap<String, Reply>,
    /// Per-target request headers, for replies made up on an engine's death.
    request_headers: HashMap<String, Vec<u8>>,
    request_metadata: Value,
}

pub struct BroadcastScheduler {
    depth: u32,
    session: Session,
    pending: HashMap<String, Pending>,
    /// Coalescing broadcasts still waiting on each engine.
    waiting_on: HashMap<String, HashSet<String>>,
    seq: u64,
}

/// Node ids as Python names them: root `0`, children `x0`, `x1`.
fn node_id(bits: &str) -> Vec<u8> {
    format!("sub_scheduler_{bits}").into_bytes()
}

impl BroadcastScheduler {
    pub fn new(depth: u32, session: Session) -> Self {
        BroadcastScheduler { depth: depth.max(1), session, pending: HashMap::new(), waiting_on: HashMap::new(), seq: 0 }
    }

    pub fn leaves(&self) -> usize {
        1 << self.depth
    }

    /// The routing identity of leaf `i`.
    pub fn leaf_id(&self, i: usize) -> Vec<u8> {
        node_id(&format!("0{:0width$b}", i, width = self.depth as usize))
    }

    /// Ancestors of leaf `i` from its parent up to the root, as the engine sees them.
    fn ancestors(&self, i: usize) -> Vec<Vec<u8>> {
        let bits = format!("0{:0width$b}", i, width = self.depth as usize);
        (1..bits.len()).rev().map(|n| node_id(&bits[..n])).collect()
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// A request from a client on the root socket: `[client_id, DELIM, ...]`.
    pub fn submit(&mut self, frames: Frames, out: &mut impl BroadcastOutbox) -> Result<(), BroadcastError> {
        let env = Envelope::parse(frames).map_err(|(e, _)| BroadcastError::Malformed(e.to_string()))?;
        let [client_id] = env.idents() else {
            return Err(BroadcastError::Malformed(format!("{} routing frames, expected the client's only", env.idents().len())));
        };
        let client_id = client_id.clone();
        let header: Value = self.session.unpack(env.header_bytes()).map_err(|e| BroadcastError::Malformed(e.to_string()))?;
        let mut metadata: Value = self.session.unpack(env.metadata_bytes()).map_err(|e| BroadcastError::Malformed(e.to_string()))?;
        let msg_id = header.get("msg_id").as_str().ok_or_else(|| BroadcastError::Malformed("header without msg_id".into()))?.to_owned();
        let targets = parse_targets(metadata.get("targets"))?;
        let coalescing = metadata.get("is_coalescing").truthy();
        if metadata.get("original_msg_id").as_str().is_none_or(str::is_empty) {
            metadata.insert("original_msg_id", Value::from(msg_id.as_str()));
        }
        let n = self.leaves();
        let mut by_leaf: Vec<Vec<Target>> = vec![Vec::new(); n];
        for t in targets {
            by_leaf[(t.eid % n as u64) as usize].push(t);
        }
        let mut pending = Pending {
            client_id: client_id.clone(),
            targets: by_leaf.iter().flatten().cloned().collect(),
            replies: HashMap::new(),
            request_headers: HashMap::new(),
            request_metadata: metadata.clone(),
        };
        let buffers: Frames = env.buffers().to_vec();
        let parent = env.parent_bytes().to_vec();
        let content = env.content_bytes().to_vec();
        let mut unreachable = Vec::new();
        for (leaf, targets) in by_leaf.iter().enumerate() {
            if targets.is_empty() {
                continue;
            }
            let mut md = metadata.clone();
            md.insert("targets", Value::Array(targets.iter().map(|t| Value::Array(vec![t.uuid.as_str().into(), Value::from(t.eid)])).collect()));
            let md = self.session.pack(&md).map_err(|e| BroadcastError::Malformed(e.to_string()))?;
            for t in targets {
                let mut h = header.clone();
                h.insert("msg_id", Value::from(format!("{msg_id}_{}", t.uuid)));
                let hb = self.session.pack(&h).map_err(|e| BroadcastError::Malformed(e.to_string()))?;
                let mut idents = vec![t.uuid.as_bytes().to_vec()];
                idents.extend(self.ancestors(leaf));
                idents.push(client_id.clone());
                let frames = self.session.frame(idents, [hb.clone(), parent.clone(), md.clone(), content.clone()], buffers.clone());
                pending.request_headers.insert(t.uuid.clone(), hb);
                if !out.to_engine(leaf, frames) {
                    unreachable.push(t.uuid.clone());
                }
            }
        }
        if coalescing && !pending.targets.is_empty() {
            for t in &pending.targets {
                self.waiting_on.entry(t.uuid.clone()).or_default().insert(msg_id.clone());
            }
            self.pending.insert(msg_id.clone(), pending);
            for uuid in unreachable {
                self.engine_failed(&msg_id, &uuid, "is not connected to this controller", out);
            }
        } else if coalescing {
            // Nothing to wait for: answer at once with an empty coalesced reply.
            self.finish(&msg_id, pending, out);
        }
        Ok(())
    }

    /// A reply on leaf socket `leaf`: `[engine uuid, ancestors..., client_id, DELIM, ...]`.
    pub fn engine_reply(&mut self, leaf: usize, frames: Frames, out: &mut impl BroadcastOutbox) -> Result<(), BroadcastError> {
        let Some(delim) = find_delim(&frames) else { return Err(BroadcastError::Malformed("no delimiter".into())) };
        let depth = self.depth as usize;
        if delim != depth + 2 || frames.len() < delim + 6 {
            return Err(BroadcastError::Malformed(format!("{delim} routing frames from leaf {leaf}, expected {}", depth + 2)));
        }
        let md: Value = self.session.unpack(&frames[delim + 4]).map_err(|e| BroadcastError::Malformed(e.to_string()))?;
        if !md.get("is_coalescing").truthy() {
            // Pop the engine and every tree node; the client gets [client_id, DELIM, ...].
            out.to_client(frames[delim - 1..].to_vec());
            return Ok(());
        }
        let original = md.get("original_msg_id").as_str().unwrap_or_default().to_owned();
        let uuid = String::from_utf8_lossy(&frames[0]).into_owned();
        let Some(p) = self.pending.get_mut(&original) else { return Err(BroadcastError::UnknownReply(original)) };
        if !p.targets.iter().any(|t| t.uuid == uuid) || p.replies.contains_key(&uuid) {
            return Err(BroadcastError::UnknownReply(format!("{original} from {uuid}")));
        }
        self.seq += 1;
        let mut frames = frames;
        let buffers = frames.split_off(delim + 6);
        let reply = Reply {
            seq: self.seq,
            engine_failed: false,
            header: std::mem::take(&mut frames[delim + 2]),
            parent: std::mem::take(&mut frames[delim + 3]),
            metadata: md,
            content: std::mem::take(&mut frames[delim + 5]),
            buffers,
        };
        self.record(&original, uuid, reply, out);
        Ok(())
    }

    fn record(&mut self, original: &str, uuid: String, reply: Reply, out: &mut impl BroadcastOutbox) {
        if let Some(w) = self.waiting_on.get_mut(&uuid) {
            w.remove(original);
            if w.is_empty() {
                self.waiting_on.remove(&uuid);
            }
        }
        let Some(p) = self.pending.get_mut(original) else { return };
        p.replies.insert(uuid, reply);
        if p.replies.len() == p.targets.len() {
            if let Some(p) = self.pending.remove(original) {
                self.finish(original, p, out);
            }
        }
    }

    /// An engine left: every coalescing broadcast still waiting on it gets an
    /// `EngineError` in its place, so the client's request completes.
    pub fn remove_engine(&mut self, uuid: &str, out: &mut impl BroadcastOutbox) {
        let Some(ids) = self.waiting_on.remove(uuid) else { return };
        let mut ids: Vec<String> = ids.into_iter().collect();
        ids.sort();
        for id in ids {
            self.engine_failed(&id, uuid, "died", out);
        }
    }

    fn engine_failed(&mut self, original: &str, uuid: &str, why: &str, out: &mut impl BroadcastOutbox) {
        let Some(p) = self.pending.get(original) else { return };
        let Some(t) = p.targets.iter().find(|t| t.uuid == uuid) else { return };
        let evalue = format!("Engine {} {why} while running broadcast task '{original}'", t.eid);
        let mut md = p.request_metadata.clone();
        md.insert("engine", Value::from(uuid));
        md.insert("status", Value::from("error"));
        md.insert("dependencies_met", Value::Bool(true));
        md.insert("date", Value::from(format_iso(&now())));
        let content = ErrorContent::new("EngineError", evalue);
        let parent = p.request_headers.get(uuid).cloned().unwrap_or_default();
        let header = self.session.new_header("apply_reply");
        let (Ok(h), Ok(c)) = (self.session.pack(&header), self.session.pack(&content)) else { return };
        let parent = if parent.is_empty() { self.session.pack(&Value::map()).unwrap_or_default() } else { parent };
        self.seq += 1;
        let reply = Reply { seq: self.seq, engine_failed: true, header: h, parent, metadata: md, content: c, buffers: Vec::new() };
        self.record(original, uuid.to_owned(), reply, out);
    }

    fn finish(&mut self, original: &str, mut p: Pending, out: &mut impl BroadcastOutbox) {
        // The coalesced reply is the last one received, as Python's tree does, except
        // that a dead engine's error always wins: an engine's reply that happens to
        // arrive after the death must not turn the broadcast into a success.
        let last =
            p.replies.values().filter(|r| r.engine_failed).max_by_key(|r| r.seq).or_else(|| p.replies.values().max_by_key(|r| r.seq)).map(|r| r.seq);
        let pairs = Value::Array(p.targets.iter().map(|t| Value::Array(vec![t.uuid.as_str().into(), Value::from(t.eid)])).collect());
        let mut buffers = Vec::new();
        let mut chosen = None;
        for t in &p.targets {
            if let Some(r) = p.replies.remove(&t.uuid) {
                if Some(r.seq) == last {
                    buffers.extend(r.buffers);
                    chosen = Some(Reply { buffers: Vec::new(), ..r });
                } else {
                    buffers.extend(r.buffers);
                }
            }
        }
        let (header, parent, mut md, content) = match chosen {
            Some(r) => (r.header, r.parent, r.metadata, r.content),
            None => {
                // No targets at all: an empty, successful coalesced reply.
                let h = self.session.new_header("apply_reply");
                let mut md = p.request_metadata.clone();
                md.insert("status", Value::from("ok"));
                (
                    self.session.pack(&h).unwrap_or_default(),
                    self.session.pack(&Value::map()).unwrap_or_default(),
                    md,
                    self.session.pack(&ippx_protocol::vmap! {"status" => "ok"}).unwrap_or_default(),
                )
            }
        };
        md.insert("broadcast_targets", pairs);
        if md.get("original_msg_id").as_str().is_none_or(str::is_empty) {
            md.insert("original_msg_id", Value::from(original));
        }
        let Ok(mdb) = self.session.pack(&md) else { return };
        let frames = self.session.frame(vec![p.client_id], [header, parent, mdb, content], buffers);
        out.to_client(frames);
    }
}

fn parse_targets(v: &Value) -> Result<Vec<Target>, BroadcastError> {
    let list = v.as_array().ok_or_else(|| BroadcastError::Malformed("metadata.targets must be a list of [uuid, eid]".into()))?;
    list.iter()
        .map(|pair| {
            let p = pair.as_array().filter(|p| p.len() == 2);
            let uuid = p.and_then(|p| p[0].as_str());
            let eid = p.and_then(|p| p[1].as_i64()).and_then(|e| u64::try_from(e).ok());
            match (uuid, eid) {
                (Some(u), Some(e)) => Ok(Target { uuid: u.to_owned(), eid: e }),
                _ => Err(BroadcastError::Malformed(format!("bad broadcast target {pair:?}"))),
            }
        })
        .collect()
}

/// True for frames that look like a signed message at all.
pub fn has_delim(frames: &[Vec<u8>]) -> bool {
    frames.iter().any(|f| f == DELIM)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ippx_protocol::{vmap, Packer, Parent, SessionConfig};

    #[derive(Default)]
    struct Rec {
        engine: Vec<(usize, Frames)>,
        client: Vec<Frames>,
        refuse: HashSet<Vec<u8>>,
    }
    impl BroadcastOutbox for Rec {
        fn to_engine(&mut self, leaf: usize, frames: Frames) -> bool {
            if self.refuse.contains(&frames[0]) {
                return false;
            }
            self.engine.push((leaf, frames));
            true
        }
        fn to_client(&mut self, frames: Frames) {
            self.client.push(frames);
        }
    }

    fn session() -> Session {
        Session::new(SessionConfig::new(b"k".to_vec(), Packer::Msgpack)).expect("session")
    }

    fn request(client: &mut Session, targets: &[(&str, u64)], coalescing: bool) -> (String, Frames) {
        let md = vmap! {
            "targets" => Value::Array(targets.iter().map(|(u, e)| Value::Array(vec![(*u).into(), Value::from(*e)])).collect()),
            "is_broadcast" => true,
            "is_coalescing" => coalescing,
        };
        let (h, frames) =
            client.serialize(vec![b"client".to_vec()], "apply_request", Parent::None, &md, &Value::map(), vec![b"fn".to_vec()]).expect("ser");
        (h.msg_id, frames)
    }

    /// The engine's reply to a request it received, with the routing frames echoed.
    fn engine_reply(engine: &mut Session, req: &Frames, result: &[u8]) -> Frames {
        let env = Envelope::parse(req.clone()).map_err(|e| e.0).expect("env");
        let md: Value = engine.unpack(env.metadata_bytes()).expect("md");
        let reply_md = vmap! {
            "is_broadcast" => true,
            "is_coalescing" => md.get("is_coalescing").clone(),
            "original_msg_id" => md.get("original_msg_id").clone(),
            "status" => "ok",
        };
        let mut idents: Frames = env.idents().to_vec();
        // the leaf ROUTER sees the engine's uuid first; the engine echoes the rest
        idents[0] = req[0].clone();
        let (_, frames) = engine
            .serialize(idents, "apply_reply", Parent::Raw(env.header_bytes()), &reply_md, &vmap! {"status" => "ok"}, vec![result.to_vec()])
            .expect("ser");
        frames
    }

    #[test]
    fn depth_one_routes_by_parity_with_python_routing_frames() {
        let mut b = BroadcastScheduler::new(1, session());
        let mut client = session();
        let mut out = Rec::default();
        let (m, req) = request(&mut client, &[("e0", 0), ("e1", 1), ("e2", 2)], true);
        b.submit(req, &mut out).expect("submit");
        assert_eq!(out.engine.len(), 3);
        let leaves: Vec<usize> = out.engine.iter().map(|(l, _)| *l).collect();
        assert_eq!(leaves, vec![0, 0, 1]);
        let (_, f) = &out.engine[0];
        assert_eq!(&f[..3], &[b"e0".to_vec(), b"sub_scheduler_0".to_vec(), b"client".to_vec()]);
        let s = session();
        let env = Envelope::parse(f.clone()).map_err(|e| e.0).expect("env");
        let h: Value = s.unpack(env.header_bytes()).expect("h");
        assert_eq!(h.get("msg_id").as_str(), Some(format!("{m}_e0").as_str()));
        let md: Value = s.unpack(env.metadata_bytes()).expect("md");
        assert_eq!(md.get("original_msg_id").as_str(), Some(m.as_str()));
        assert_eq!(b.leaf_id(1), b"sub_scheduler_01".to_vec());
    }

    #[test]
    fn coalesced_reply_has_pairs_and_buffers_in_tree_order() {
        let mut b = BroadcastScheduler::new(1, session());
        let mut client = session();
        let mut engine = session();
        let mut out = Rec::default();
        let (m, req) = request(&mut client, &[("e1", 1), ("e0", 0)], true);
        b.submit(req, &mut out).expect("submit");
        let reqs: Vec<(usize, Frames)> = out.engine.drain(..).collect();
        // e1 (leaf 1) answers first, e0 (leaf 0) last
        let r1 = engine_reply(&mut engine, &reqs.iter().find(|(_, f)| f[0] == b"e1").expect("e1").1, b"one");
        let r0 = engine_reply(&mut engine, &reqs.iter().find(|(_, f)| f[0] == b"e0").expect("e0").1, b"zero");
        b.engine_reply(1, r1, &mut out).expect("r1");
        assert!(out.client.is_empty(), "waits for every target");
        b.engine_reply(0, r0, &mut out).expect("r0");
        let reply = out.client.pop().expect("coalesced");
        assert_eq!(reply[0], b"client".to_vec());
        let env = Envelope::parse(reply).map_err(|e| e.0).expect("env");
        let mut check = session();
        // signed with the shared key
        assert!(check.check(&env, true).is_ok());
        let md: Value = check.unpack(env.metadata_bytes()).expect("md");
        assert_eq!(md.get("original_msg_id").as_str(), Some(m.as_str()));
        let pairs = md.get("broadcast_targets").as_array().expect("pairs").to_vec();
        assert_eq!(pairs[0], Value::Array(vec!["e0".into(), Value::Int(0)]));
        assert_eq!(pairs[1], Value::Array(vec!["e1".into(), Value::Int(1)]));
        let bufs: Vec<Vec<u8>> = env.buffers().to_vec();
        assert_eq!(bufs, vec![b"zero".to_vec(), b"one".to_vec()]);
        assert_eq!(b.pending(), 0);
    }

    #[test]
    fn depth_two_pushes_every_ancestor() {
        let mut b = BroadcastScheduler::new(2, session());
        let mut client = session();
        let mut engine = session();
        let mut out = Rec::default();
        let (_, req) = request(&mut client, &[("e3", 3), ("e6", 6)], true);
        b.submit(req, &mut out).expect("submit");
        let (leaf, f) = out.engine.iter().find(|(_, f)| f[0] == b"e3").cloned().expect("e3");
        assert_eq!(leaf, 3);
        assert_eq!(&f[..4], &[b"e3".to_vec(), b"sub_scheduler_01".to_vec(), b"sub_scheduler_0".to_vec(), b"client".to_vec()]);
        assert_eq!(b.leaf_id(3), b"sub_scheduler_011".to_vec());
        for (leaf, f) in out.engine.clone() {
            let r = engine_reply(&mut engine, &f, b"x");
            b.engine_reply(leaf, r, &mut out).expect("reply");
        }
        assert_eq!(out.client.len(), 1);
    }

    #[test]
    fn non_coalescing_replies_are_forwarded_raw() {
        let mut b = BroadcastScheduler::new(1, session());
        let mut client = session();
        let mut engine = session();
        let mut out = Rec::default();
        let (_, req) = request(&mut client, &[("e0", 0)], false);
        b.submit(req, &mut out).expect("submit");
        let r = engine_reply(&mut engine, &out.engine[0].1, b"x");
        let sig = r[4].clone();
        b.engine_reply(0, r, &mut out).expect("reply");
        let got = out.client.pop().expect("reply");
        assert_eq!(got[0], b"client".to_vec());
        assert_eq!(got[1], DELIM.to_vec());
        assert_eq!(got[2], sig, "not re-signed");
        assert_eq!(b.pending(), 0);
    }

    #[test]
    fn dead_engine_completes_the_broadcast_with_an_engine_error() {
        let mut b = BroadcastScheduler::new(1, session());
        let mut client = session();
        let mut engine = session();
        let mut out = Rec::default();
        let (_, req) = request(&mut client, &[("e0", 0), ("e1", 1)], true);
        b.submit(req, &mut out).expect("submit");
        let r0 = engine_reply(&mut engine, &out.engine[0].1, b"zero");
        // e1 dies before e0 answers: the error must still be the coalesced result.
        b.remove_engine("e1", &mut out);
        assert!(out.client.is_empty());
        b.engine_reply(0, r0, &mut out).expect("r0");
        let reply = out.client.pop().expect("completed");
        let env = Envelope::parse(reply).map_err(|e| e.0).expect("env");
        let s = session();
        let c: Value = s.unpack(env.content_bytes()).expect("c");
        assert_eq!(c.get("ename").as_str(), Some("EngineError"));
        assert_eq!(b.pending(), 0);
    }

    #[test]
    fn unreachable_engine_fails_at_once_and_bad_input_is_refused() {
        let mut b = BroadcastScheduler::new(1, session());
        let mut client = session();
        let mut out = Rec::default();
        out.refuse.insert(b"gone".to_vec());
        let (_, req) = request(&mut client, &[("gone", 0)], true);
        b.submit(req, &mut out).expect("submit");
        assert_eq!(out.client.len(), 1);
        assert!(b.submit(vec![b"x".to_vec()], &mut out).is_err());
        assert!(b.engine_reply(0, vec![b"e".to_vec(), DELIM.to_vec()], &mut out).is_err());
        let (_, mut req) = request(&mut client, &[("e0", 0)], true);
        req[5] = client.pack(&vmap! {"targets" => "nope"}).expect("p");
        assert!(b.submit(req, &mut out).is_err());
    }
}
