//! Scheduler tests: a recording outbox, real signed messages from a client and engine
//! `Session`, and explicit time.

use super::*;
use ippx_protocol::content::TaskDestination;
use ippx_protocol::header::Header;
use ippx_protocol::wire::Envelope;
use ippx_protocol::{datetime, vmap, Packer, SessionConfig};

mod props;

pub(super) const KEY: &[u8] = b"0123abcd-00112233445566778899aabb";
pub(super) const CLIENT: &[u8] = b"\x00\xf4\xb0\xdc\x51";

#[derive(Default)]
pub(super) struct Rec {
    pub engine: Vec<Frames>,
    pub client: Vec<Frames>,
    pub hub: Vec<(&'static str, Frames)>,
}

impl TaskOutbox for Rec {
    fn to_engine(&mut self, frames: Frames) {
        self.engine.push(frames);
    }
    fn to_client(&mut self, frames: Frames) {
        self.client.push(frames);
    }
    fn to_hub(&mut self, topic: MonitorTopic, frames: Frames) {
        self.hub.push((std::str::from_utf8(topic.as_bytes()).expect("ascii topic"), frames));
    }
}

pub(super) fn session(p: Packer) -> Session {
    Session::new(SessionConfig::new(KEY.to_vec(), p)).expect("session")
}

/// A decoded outgoing message.
#[derive(Debug)]
pub(super) struct Msg {
    pub idents: Vec<Vec<u8>>,
    pub header: Header,
    pub parent_raw: Vec<u8>,
    pub parent: Value,
    pub metadata: Value,
    pub content: Value,
}

pub(super) fn decode(p: Packer, frames: &Frames) -> Msg {
    let mut checker = session(p);
    let env = Envelope::parse(frames.clone()).map_err(|e| e.0).expect("framing");
    checker.check(&env, false).expect("valid signature");
    Msg {
        idents: env.idents().to_vec(),
        header: p.unpack(env.header_bytes()).expect("header"),
        parent_raw: env.parent_bytes().to_vec(),
        parent: p.unpack(env.parent_bytes()).expect("parent"),
        metadata: p.unpack(env.metadata_bytes()).expect("metadata"),
        content: p.unpack(env.content_bytes()).expect("content"),
    }
}

/// What the scheduler sent to an engine: (uuid, msg_id, frames).
#[derive(Clone, Debug)]
pub(super) struct Sent {
    pub uuid: String,
    pub msg_id: String,
    pub frames: Frames,
}

pub(super) struct H {
    pub s: TaskScheduler,
    pub out: Rec,
    pub client: Session,
    pub engine: Session,
    pub p: Packer,
    pub t0: Instant,
    pub now: Instant,
    /// Request header bytes by msg_id.
    pub req_headers: HashMap<String, Vec<u8>>,
}

impl H {
    pub fn new(scheme: Scheme, hwm: usize) -> H {
        H::with(TaskConfig { scheme, hwm, stranded_delay: Duration::from_secs(5), seed: 7 }, Packer::Json)
    }

    pub fn with(cfg: TaskConfig, p: Packer) -> H {
        let t0 = Instant::now();
        H {
            s: TaskScheduler::new(cfg, session(p)),
            out: Rec::default(),
            client: session(p),
            engine: session(p),
            p,
            t0,
            now: t0,
            req_headers: HashMap::new(),
        }
    }

    pub fn add(&mut self, uuid: &str) {
        self.s.add_engine(uuid, self.now, &mut self.out);
        self.s.check_invariants();
    }

    pub fn remove(&mut self, uuid: &str) {
        self.s.remove_engine(uuid, self.now, &mut self.out);
        self.s.check_invariants();
    }

    pub fn at(&mut self, secs: f64) {
        self.now = self.t0 + Duration::from_secs_f64(secs);
        self.s.tick(self.now, &mut self.out);
        self.s.check_invariants();
    }

    pub fn request(&mut self, md: &Value) -> (String, Frames) {
        let (h, frames) = self
            .client
            .serialize(vec![CLIENT.to_vec()], "apply_request", Parent::None, md, &Value::map(), vec![b"buf0".to_vec(), b"buf1".to_vec()])
            .expect("serialize");
        (h.msg_id, frames)
    }

    pub fn submit(&mut self, md: Value) -> String {
        let (id, frames) = self.request(&md);
        self.submit_frames(&id, frames);
        id
    }

    pub fn submit_frames(&mut self, id: &str, frames: Frames) {
        let d = find_delim(&frames).expect("delim");
        self.req_headers.insert(id.to_owned(), frames[d + 2].clone());
        self.s.submit(frames, self.now, &mut self.out).expect("submit");
        self.s.check_invariants();
    }

    /// Drains what went to engines.
    pub fn sent(&mut self) -> Vec<Sent> {
        std::mem::take(&mut self.out.engine)
            .into_iter()
            .map(|f| {
                let uuid = String::from_utf8(f[0].clone()).expect("uuid");
                let d = find_delim(&f).expect("delim");
                let h: Header = self.p.unpack(&f[d + 2]).expect("header");
                assert_eq!(&f[1][..], CLIENT, "client routing frame kept");
                Sent { uuid, msg_id: h.msg_id, frames: f }
            })
            .collect()
    }

    pub fn sent_one(&mut self) -> Sent {
        let mut v = self.sent();
        assert_eq!(v.len(), 1, "expected exactly one send: {:?}", v.iter().map(|s| (&s.uuid, &s.msg_id)).collect::<Vec<_>>());
        v.remove(0)
    }

    pub fn reply_frames(&mut self, to: &Sent, status: &str, deps_met: bool) -> Frames {
        let d = find_delim(&to.frames).expect("delim");
        let md = vmap! {"started" => "2026-01-01T00:00:00.000000Z", "dependencies_met" => deps_met, "engine" => to.uuid.as_str(), "status" => status};
        let content = if status == "ok" {
            vmap! {"status" => "ok"}
        } else {
            ErrorContent::new("ValueError", "boom").to_value()
        };
        self.engine
            .serialize(
                vec![to.frames[0].clone(), to.frames[1].clone()],
                "apply_reply",
                Parent::Raw(&to.frames[d + 2]),
                &md,
                &content,
                vec![b"result".to_vec()],
            )
            .expect("reply")
            .1
    }

    pub fn reply(&mut self, to: &Sent, status: &str, deps_met: bool) {
        let f = self.reply_frames(to, status, deps_met);
        self.s.engine_reply(f, self.now, &mut self.out).expect("reply accepted");
        self.s.check_invariants();
    }

    pub fn ok(&mut self, to: &Sent) {
        self.reply(to, "ok", true);
    }

    /// Drains client replies, decoded.
    pub fn replies(&mut self) -> Vec<Msg> {
        let p = self.p;
        std::mem::take(&mut self.out.client).iter().map(|f| decode(p, f)).collect()
    }

    pub fn hub(&mut self) -> Vec<(&'static str, Frames)> {
        std::mem::take(&mut self.out.hub)
    }

    pub fn hub_topics(&mut self) -> Vec<&'static str> {
        self.hub().into_iter().map(|(t, _)| t).collect()
    }

    /// Asserts one scheduler-made failure reply for `id` with `ename`, and its outtask copy.
    pub fn expect_failure(&mut self, id: &str, ename: &str) {
        let r = self.replies();
        assert_eq!(r.len(), 1, "one reply expected, got {r:?}");
        let m = &r[0];
        assert_eq!(m.idents, vec![CLIENT.to_vec()], "client frames [client_id, DELIM, ...]");
        assert_eq!(m.header.msg_type, "apply_reply");
        assert_eq!(m.header.session, self.s.session.session_id());
        assert_eq!(m.parent.get("msg_id").as_str(), Some(id));
        assert_eq!(Some(&m.parent_raw), self.req_headers.get(id), "parent = request header bytes");
        assert_eq!(m.metadata, Value::map(), "metadata {{}}");
        assert_eq!(m.content.get("status").as_str(), Some("error"));
        assert_eq!(m.content.get("ename").as_str(), Some(ename));
        assert_eq!(m.content.get("evalue").as_str(), Some(""));
        let p = self.p;
        let outtask: Vec<Msg> = self
            .hub()
            .into_iter()
            .filter(|(t, _)| *t == "outtask")
            .map(|(_, f)| decode(p, &f))
            .filter(|m| m.parent.get("msg_id").as_str() == Some(id))
            .collect();
        assert_eq!(outtask.len(), 1, "one outtask copy");
        let copy = &outtask[0];
        assert_eq!(copy.idents, vec![CLIENT.to_vec()]);
        assert_eq!(copy.header.msg_id, m.header.msg_id);
    }
}

fn md_empty() -> Value {
    vmap! {"after" => Value::Array(vec![]), "follow" => Value::Array(vec![]), "timeout" => 0.0, "targets" => Value::Array(vec![]), "retries" => 0i64, "label" => Value::Nil}
}

fn ids(v: &[&str]) -> Value {
    Value::Array(v.iter().map(|s| Value::from(*s)).collect())
}

fn md(pairs: Vec<(&str, Value)>) -> Value {
    let mut m = md_empty();
    for (k, v) in pairs {
        m.insert(k, v);
    }
    m
}

// ---------------------------------------------------------------------------------
// Choosing engines
// ---------------------------------------------------------------------------------

#[test]
fn leastload_picks_first_minimum_in_lru_order() {
    let mut h = H::new(Scheme::LeastLoad, 0);
    for e in ["A", "B", "C"] {
        h.add(e);
    }
    // order is [C, B, A]: newest first
    let got: Vec<String> = (0..4)
        .map(|_| {
            h.submit(md_empty());
            h.sent_one().uuid
        })
        .collect();
    assert_eq!(got, ["C", "B", "A", "C"]);
    // B is now the only engine with load... C=2, B=1, A=1; order [B, A, C] → B
    let t = h.submit(md_empty());
    let s = h.sent_one();
    assert_eq!((s.uuid.as_str(), s.msg_id.as_str()), ("B", t.as_str()));
}

#[test]
fn lru_ignores_load() {
    let mut h = H::new(Scheme::Lru, 0);
    h.add("A");
    h.add("B");
    h.submit(md_empty());
    let b = h.sent_one();
    assert_eq!(b.uuid, "B");
    h.submit(md_empty());
    let a = h.sent_one();
    assert_eq!(a.uuid, "A");
    h.ok(&a);
    // order [B(load 1), A(load 0)]: lru takes B anyway, leastload would take A
    h.submit(md_empty());
    assert_eq!(h.sent_one().uuid, "B");
}

#[test]
fn leastload_prefers_idle_engine() {
    let mut h = H::new(Scheme::LeastLoad, 0);
    h.add("A");
    h.add("B");
    h.submit(md_empty());
    let b = h.sent_one();
    h.submit(md_empty());
    let a = h.sent_one();
    assert_eq!((b.uuid.as_str(), a.uuid.as_str()), ("B", "A"));
    h.ok(&a);
    h.submit(md_empty());
    assert_eq!(h.sent_one().uuid, "A");
}

fn spread(scheme: Scheme, seed: u64) -> Vec<String> {
    let mut h = H::with(TaskConfig { scheme, hwm: 0, stranded_delay: Duration::from_secs(5), seed }, Packer::Json);
    for e in ["A", "B", "C", "D"] {
        h.add(e);
    }
    let mut out = Vec::new();
    for _ in 0..200 {
        h.submit(md_empty());
        let s = h.sent_one();
        out.push(s.uuid.clone());
        h.ok(&s);
    }
    out
}

#[test]
fn random_schemes_spread_and_are_seeded() {
    for scheme in [Scheme::PlainRandom, Scheme::TwoBin, Scheme::Weighted] {
        let a = spread(scheme, 1);
        assert_eq!(a, spread(scheme, 1), "{scheme}: same seed, same choices");
        assert_ne!(a, spread(scheme, 2), "{scheme}: seed matters");
        for e in ["A", "B", "C", "D"] {
            assert!(a.iter().filter(|u| *u == e).count() > 10, "{scheme}: {e} rarely chosen");
        }
    }
}

#[test]
fn twobin_prefers_least_recently_used() {
    // With idle engines, twobin picks min of two draws: the LRU front wins 7/16 of the time,
    // so the engine just used (at the back) is picked only 1/16 of the time.
    let a = spread(Scheme::TwoBin, 3);
    let repeats = a.windows(2).filter(|w| w[0] == w[1]).count();
    assert!(repeats < 30, "{repeats} repeats of the most recently used engine");
}

#[test]
fn weighted_avoids_loaded_engines() {
    let mut h = H::with(TaskConfig { scheme: Scheme::Weighted, hwm: 0, stranded_delay: Duration::from_secs(5), seed: 11 }, Packer::Json);
    h.add("A");
    h.add("B");
    h.add("C");
    let mut loads: HashMap<String, usize> = HashMap::new();
    for _ in 0..3 {
        h.submit(md_empty());
        *loads.entry(h.sent_one().uuid).or_default() += 1;
    }
    // 3 tasks on 3 idle engines: each idle engine weighs 1e6 times a loaded one
    assert_eq!(loads.len(), 3, "{loads:?}");
}

// ---------------------------------------------------------------------------------
// hwm and LRU bookkeeping
// ---------------------------------------------------------------------------------

#[test]
fn hwm_one_holds_one_task_per_engine() {
    let mut h = H::new(Scheme::LeastLoad, 1);
    h.add("A");
    h.add("B");
    let t1 = h.submit(md_empty());
    let t2 = h.submit(md_empty());
    let t3 = h.submit(md_empty());
    let sent = h.sent();
    assert_eq!(sent.len(), 2);
    assert_eq!((sent[0].msg_id.as_str(), sent[1].msg_id.as_str()), (t1.as_str(), t2.as_str()));
    assert_eq!(h.s.stats().queued, 1);
    assert_eq!(h.s.stats().pending, 2);
    h.ok(&sent[1]);
    let s3 = h.sent_one();
    assert_eq!((s3.msg_id.as_str(), s3.uuid.as_str()), (t3.as_str(), sent[1].uuid.as_str()));
    assert_eq!(h.s.stats().queued, 0);
}

#[test]
fn hwm_zero_is_unlimited() {
    let mut h = H::new(Scheme::LeastLoad, 0);
    h.add("A");
    h.add("B");
    for _ in 0..6 {
        h.submit(md_empty());
    }
    let sent = h.sent();
    assert_eq!(sent.len(), 6);
    assert_eq!(sent.iter().filter(|s| s.uuid == "A").count(), 3);
    assert_eq!(h.s.stats().queued, 0);
}

#[test]
fn hwm_two() {
    let mut h = H::new(Scheme::LeastLoad, 2);
    h.add("A");
    for _ in 0..3 {
        h.submit(md_empty());
    }
    let sent = h.sent();
    assert_eq!(sent.len(), 2);
    assert_eq!(h.s.stats().queued, 1);
    h.ok(&sent[0]);
    assert_eq!(h.sent().len(), 1);
}

#[test]
fn new_engines_go_to_the_front_and_registration_rescans() {
    let mut h = H::new(Scheme::LeastLoad, 1);
    let t1 = h.submit(md_empty());
    assert!(h.sent().is_empty());
    assert_eq!(h.s.stats().queued, 1);
    h.add("A");
    let s = h.sent_one();
    assert_eq!((s.uuid.as_str(), s.msg_id.as_str()), ("A", t1.as_str()));
    h.ok(&s);
    h.add("B");
    h.add("C");
    // all idle: the newest engine is at the front
    h.submit(md_empty());
    assert_eq!(h.sent_one().uuid, "C");
    h.submit(md_empty());
    assert_eq!(h.sent_one().uuid, "B");
    h.submit(md_empty());
    assert_eq!(h.sent_one().uuid, "A");
    // idempotent registration
    h.add("A");
    assert_eq!(h.s.stats().engines, 3);
}

#[test]
fn tracktask_and_forwarding_shapes() {
    let mut h = H::new(Scheme::LeastLoad, 1);
    h.add("A");
    let (id, frames) = h.request(&md_empty());
    h.submit_frames(&id, frames.clone());
    let hub = h.hub();
    assert_eq!(hub.len(), 2);
    assert_eq!(hub[0], ("intask", frames.clone()), "intask copy is the raw submission");
    assert_eq!(hub[1].0, "tracktask");
    let tt = decode(h.p, &hub[1].1);
    assert_eq!(tt.idents, vec![h.s.session.session_id().as_bytes().to_vec()]);
    assert_eq!(tt.header.msg_type, "task_destination");
    assert_eq!(tt.content, vmap! {"msg_id" => id.as_str(), "engine_id" => "A"});
    let s = h.sent_one();
    let mut want = vec![b"A".to_vec()];
    want.extend(frames);
    assert_eq!(s.frames, want, "raw frames forwarded unchanged after the engine uuid");
    let reply = h.reply_frames(&s, "ok", true);
    h.s.engine_reply(reply.clone(), h.now, &mut h.out).expect("reply");
    let mut swapped = reply;
    swapped.swap(0, 1);
    assert_eq!(std::mem::take(&mut h.out.client), vec![swapped.clone()]);
    assert_eq!(h.hub(), vec![("outtask", swapped)]);
    let st = h.s.stats();
    assert_eq!((st.completed, st.failed, st.pending, st.queued, st.submitted), (1, 0, 0, 0, 1));
}

#[test]
fn destination_packs_like_the_protocol_type() {
    for p in [Packer::Json, Packer::Msgpack] {
        let ours = p.pack(&Destination { msg_id: "m-1", engine_id: "u-1" }).expect("pack");
        let theirs = p.pack(&TaskDestination { msg_id: "m-1".into(), engine_id: "u-1".into() }).expect("pack");
        assert_eq!(ours, theirs);
    }
}

#[test]
fn metadata_key_order_and_packer_do_not_matter() {
    for p in [Packer::Json, Packer::Msgpack] {
        let mut outcomes = Vec::new();
        for reversed in [false, true] {
            let mut h = H::with(TaskConfig { hwm: 0, ..TaskConfig::default() }, p);
            h.add("A");
            h.add("B");
            let t1 = h.submit(md_empty());
            let s1 = h.sent_one();
            h.ok(&s1);
            let dep = if reversed {
                vmap! {"failure" => false, "success" => true, "all" => true, "dependencies" => ids(&[&t1])}
            } else {
                vmap! {"dependencies" => ids(&[&t1]), "all" => true, "success" => true, "failure" => false}
            };
            let pairs: Vec<(&str, Value)> = vec![
                ("label", Value::Nil),
                ("retries", Value::Int(0)),
                ("targets", ids(&["A"])),
                ("timeout", Value::Float(0.0)),
                ("follow", Value::Array(vec![])),
                ("after", dep),
            ];
            let mut m = Value::map();
            let it: Box<dyn Iterator<Item = (&str, Value)>> = if reversed { Box::new(pairs.into_iter().rev()) } else { Box::new(pairs.into_iter()) };
            for (k, v) in it {
                m.insert(k, v);
            }
            h.submit(m);
            outcomes.push(h.sent_one().uuid);
        }
        assert_eq!(outcomes, ["A", "A"], "{p}");
    }
}

// ---------------------------------------------------------------------------------
// Dependencies
// ---------------------------------------------------------------------------------

#[test]
fn after_all_waits_for_every_dependency() {
    let mut h = H::new(Scheme::LeastLoad, 0);
    h.add("A");
    let t1 = h.submit(md_empty());
    let t2 = h.submit(md_empty());
    let s = h.sent();
    let t3 = h.submit(md(vec![("after", ids(&[&t1, &t2]))]));
    assert!(h.sent().is_empty());
    assert_eq!(h.s.stats().queued, 1);
    h.ok(&s[0]);
    assert!(h.sent().is_empty());
    h.ok(&s[1]);
    assert_eq!(h.sent_one().msg_id, t3);
}

#[test]
fn after_any_runs_after_the_first() {
    let mut h = H::new(Scheme::LeastLoad, 0);
    h.add("A");
    let t1 = h.submit(md_empty());
    let t2 = h.submit(md_empty());
    let s = h.sent();
    let t3 = h.submit(md(vec![("after", vmap! {"dependencies" => ids(&[&t1, &t2]), "all" => false})]));
    assert!(h.sent().is_empty());
    h.ok(&s[1]);
    assert_eq!(h.sent_one().msg_id, t3);
}

#[test]
fn after_on_failure() {
    let mut h = H::new(Scheme::LeastLoad, 0);
    h.add("A");
    let t1 = h.submit(md_empty());
    let t2 = h.submit(md_empty());
    let s = h.sent();
    let on_fail = vmap! {"dependencies" => ids(&[&t1]), "success" => false, "failure" => true};
    let t3 = h.submit(md(vec![("after", on_fail)]));
    let on_fail2 = vmap! {"dependencies" => ids(&[&t2]), "success" => false, "failure" => true};
    let t4 = h.submit(md(vec![("after", on_fail2)]));
    h.reply(&s[0], "error", true);
    h.replies();
    h.hub();
    assert_eq!(h.sent_one().msg_id, t3, "t1 failed: t3 runs");
    h.ok(&s[1]);
    h.out.client.remove(0); // t2's own reply
    h.expect_failure(&t4, "ImpossibleDependency");
    // success-only on a failed task: impossible at submission
    let t5 = h.submit(md(vec![("after", ids(&[&t1]))]));
    h.expect_failure(&t5, "ImpossibleDependency");
    // already satisfied: runs at once
    let t6 = h.submit(md(vec![("after", ids(&[&t2]))]));
    assert_eq!(h.sent_one().msg_id, t6);
    assert_eq!(h.s.stats().failed, 3);
}

#[test]
fn failed_dependency_cascades() {
    let mut h = H::new(Scheme::LeastLoad, 0);
    h.add("A");
    let t1 = h.submit(md_empty());
    let s = h.sent_one();
    let t2 = h.submit(md(vec![("after", ids(&[&t1]))]));
    let t3 = h.submit(md(vec![("after", ids(&[&t2]))]));
    let t4 = h.submit(md(vec![("after", vmap! {"dependencies" => ids(&[&t2]), "success" => false, "failure" => true})]));
    h.hub();
    h.reply(&s, "error", true);
    let r = h.replies();
    let parents: Vec<_> = r.iter().map(|m| m.parent.get("msg_id").as_str().unwrap_or_default().to_owned()).collect();
    assert_eq!(parents, [t1.clone(), t2.clone(), t3.clone()]);
    assert_eq!(r[1].content.get("ename").as_str(), Some("ImpossibleDependency"));
    assert_eq!(h.sent_one().msg_id, t4, "t4 waits on t2 failing");
}

#[test]
fn follow_runs_where_the_dependency_ran() {
    let mut h = H::new(Scheme::LeastLoad, 0);
    h.add("A");
    h.add("B");
    let t1 = h.submit(md_empty());
    let s1 = h.sent_one();
    assert_eq!(s1.uuid, "B");
    // follow on an unfinished task: waits
    let t2 = h.submit(md(vec![("follow", ids(&[&t1]))]));
    assert!(h.sent().is_empty());
    h.ok(&s1);
    let s2 = h.sent_one();
    assert_eq!((s2.msg_id.as_str(), s2.uuid.as_str()), (t2.as_str(), "B"));
    // finished: goes straight to B although leastload alone would pick A
    let t3 = h.submit(md(vec![("follow", ids(&[&t1]))]));
    let s3 = h.sent_one();
    assert_eq!((s3.msg_id.as_str(), s3.uuid.as_str()), (t3.as_str(), "B"));
}

#[test]
fn invalid_dependencies() {
    let mut h = H::new(Scheme::LeastLoad, 1);
    h.add("A");
    let t = h.submit(md(vec![("after", ids(&["nonexistent"]))]));
    h.expect_failure(&t, "InvalidDependency");
    let t = h.submit(md(vec![("follow", ids(&["nonexistent"]))]));
    h.expect_failure(&t, "InvalidDependency");
    // self-dependency
    let mut hd = h.client.new_header("apply_request");
    hd.msg_id = "self-1".into();
    let frames = h
        .client
        .serialize_with_header(vec![CLIENT.to_vec()], &hd, Parent::None, &md(vec![("after", ids(&["self-1"]))]), &Value::map(), vec![])
        .expect("ser");
    h.submit_frames("self-1", frames);
    h.expect_failure("self-1", "InvalidDependency");
    assert!(h.sent().is_empty());
    // Python quirk kept: an `any` dependency already met ignores unknown ids
    let t1 = h.submit(md_empty());
    let s1 = h.sent_one();
    h.ok(&s1);
    let t = h.submit(md(vec![("after", vmap! {"dependencies" => ids(&[&t1, "nonexistent"]), "all" => false})]));
    assert_eq!(h.sent_one().msg_id, t);
}

#[test]
fn impossible_follow_across_two_engines() {
    let mut h = H::new(Scheme::LeastLoad, 0);
    h.add("A");
    h.add("B");
    let t1 = h.submit(md_empty());
    let t2 = h.submit(md_empty());
    let s = h.sent();
    assert_ne!(s[0].uuid, s[1].uuid);
    h.ok(&s[0]);
    h.ok(&s[1]);
    h.replies();
    h.hub();
    let t3 = h.submit(md(vec![("follow", ids(&[&t1, &t2]))]));
    h.expect_failure(&t3, "ImpossibleDependency");
    // `any` follow across two engines is fine
    let t4 = h.submit(md(vec![("follow", vmap! {"dependencies" => ids(&[&t1, &t2]), "all" => false})]));
    assert_eq!(h.sent_one().msg_id, t4);
}

#[test]
fn impossible_targets() {
    let mut h = H::new(Scheme::LeastLoad, 1);
    // no engine at all: waits
    let t1 = h.submit(md(vec![("targets", ids(&["ghost"]))]));
    assert!(h.replies().is_empty());
    h.hub();
    h.add("A");
    h.expect_failure(&t1, "ImpossibleDependency");
    let t2 = h.submit(md(vec![("targets", ids(&["ghost"]))]));
    h.expect_failure(&t2, "ImpossibleDependency");
    // a target that is alive but busy: waits
    let t3 = h.submit(md(vec![("targets", ids(&["A"]))]));
    let s3 = h.sent_one();
    assert_eq!(s3.msg_id, t3);
    let t4 = h.submit(md(vec![("targets", ids(&["A"]))]));
    assert!(h.sent().is_empty());
    h.add("B");
    assert!(h.sent().is_empty(), "B is not a target");
    h.ok(&s3);
    assert_eq!(h.sent_one().msg_id, t4);
    // target died: impossible at the next scan
    let t5 = h.submit(md(vec![("targets", ids(&["A"]))]));
    assert!(h.sent().is_empty());
    h.remove("A");
    h.replies();
    h.hub();
    h.add("C");
    h.expect_failure(&t5, "ImpossibleDependency");
}

#[test]
fn unmet_dependencies_blacklist_engines() {
    let mut h = H::new(Scheme::LeastLoad, 1);
    h.add("A");
    h.add("B");
    let t = h.submit(md(vec![("targets", ids(&["A", "B"]))]));
    let s = h.sent_one();
    h.hub();
    h.reply(&s, "ok", false);
    assert!(h.replies().is_empty(), "unmet: nothing to the client");
    assert_eq!(h.hub_topics(), ["tracktask"], "unmet: no outtask, only the new destination");
    let s2 = h.sent_one();
    assert_ne!(s2.uuid, s.uuid, "never the same engine twice");
    assert_eq!(s2.msg_id, t);
    h.reply(&s2, "ok", false);
    h.expect_failure(&t, "ImpossibleDependency");
    assert!(h.sent().is_empty());
}

#[test]
fn all_engines_blacklisted_waits_then_times_out() {
    let mut h = H::new(Scheme::LeastLoad, 1);
    h.add("A");
    h.add("B");
    let t = h.submit(md(vec![("retries", Value::Int(5)), ("timeout", Value::Float(0.1))]));
    for _ in 0..2 {
        let s = h.sent_one();
        h.reply(&s, "error", true);
    }
    assert!(h.sent().is_empty());
    assert!(h.replies().is_empty());
    assert_eq!(h.s.stats().queued, 1);
    h.hub();
    h.at(0.05);
    assert!(h.replies().is_empty());
    h.at(0.1);
    h.expect_failure(&t, "TaskTimeout");
    assert_eq!(h.s.stats().queued, 0);
}

#[test]
fn retries_resend_elsewhere_then_final_error() {
    let mut h = H::new(Scheme::LeastLoad, 1);
    h.add("A");
    h.add("B");
    h.add("C");
    let t = h.submit(md(vec![("retries", Value::Int(1))]));
    let s1 = h.sent_one();
    h.reply(&s1, "error", true);
    assert!(h.replies().is_empty());
    let s2 = h.sent_one();
    assert_eq!(s2.msg_id, t);
    assert_ne!(s2.uuid, s1.uuid);
    assert_ne!(s2.frames[0], s1.frames[0]);
    h.hub();
    let reply = h.reply_frames(&s2, "error", true);
    h.s.engine_reply(reply.clone(), h.now, &mut h.out).expect("reply");
    let mut swapped = reply;
    swapped.swap(0, 1);
    assert_eq!(std::mem::take(&mut h.out.client), vec![swapped.clone()], "engine's error forwarded as is");
    assert_eq!(h.hub(), vec![("outtask", swapped)]);
    assert!(h.sent().is_empty());
    assert_eq!(h.s.stats().failed, 1);
    // unmet dependencies do not consume retries
    let t = h.submit(md_empty());
    let s = h.sent_one();
    h.reply(&s, "ok", false);
    let s = h.sent_one();
    assert_eq!(s.msg_id, t);
    h.reply(&s, "error", true);
    assert_eq!(h.replies().len(), 1);
}

// ---------------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------------

#[test]
fn timeout_only_while_unscheduled() {
    let mut h = H::new(Scheme::LeastLoad, 1);
    let t1 = h.submit(md(vec![("timeout", Value::Float(1.0))]));
    assert_eq!(h.s.next_deadline(), Some(h.t0 + Duration::from_secs(1)));
    h.at(0.5);
    assert!(h.replies().is_empty());
    h.hub();
    h.at(1.0);
    h.expect_failure(&t1, "TaskTimeout");
    assert_eq!(h.s.next_deadline(), None);
    // scheduled before the timeout: never times out
    let t2 = h.submit(md(vec![("timeout", Value::Int(2))]));
    h.at(1.5);
    h.add("A");
    let s = h.sent_one();
    assert_eq!(s.msg_id, t2);
    h.at(10.0);
    assert!(h.replies().is_empty());
    // sent at once: no timer at all
    h.ok(&s);
    h.replies();
    h.submit(md(vec![("timeout", Value::Float(0.5))]));
    assert_eq!(h.s.next_deadline(), None);
    let s = h.sent_one();
    h.at(20.0);
    h.ok(&s);
    assert_eq!(h.replies().len(), 1);
}

#[test]
fn timeout_is_rearmed_when_requeued() {
    let mut h = H::new(Scheme::LeastLoad, 1);
    h.add("A");
    let t0 = h.submit(md_empty());
    let s0 = h.sent_one();
    let t = h.submit(md(vec![("timeout", Value::Float(1.0)), ("retries", Value::Int(1))]));
    h.at(0.9);
    h.ok(&s0);
    h.replies();
    let s = h.sent_one();
    assert_eq!(s.msg_id, t);
    h.at(1.5);
    assert!(h.replies().is_empty(), "old arming is stale");
    h.reply(&s, "error", true);
    // requeued at 1.5 (A is blacklisted): times out at 2.5
    h.hub();
    h.at(2.4);
    assert!(h.replies().is_empty());
    h.at(2.5);
    h.expect_failure(&t, "TaskTimeout");
    let _ = t0;
}

#[test]
fn stranded_task_gets_engine_error() {
    let mut h = H::new(Scheme::LeastLoad, 1);
    h.add("e-1");
    let t = h.submit(md_empty());
    let s = h.sent_one();
    h.hub();
    h.at(1.0);
    h.remove("e-1");
    assert_eq!(h.s.next_deadline(), Some(h.t0 + Duration::from_secs(6)));
    assert_eq!(h.s.stats().pending, 1);
    h.at(5.9);
    assert!(h.replies().is_empty());
    h.at(6.0);
    let r = h.replies();
    assert_eq!(r.len(), 1);
    let m = &r[0];
    assert_eq!(m.idents, vec![CLIENT.to_vec(), b"e-1".to_vec()]);
    assert_eq!(m.header.msg_type, "apply_reply");
    assert_eq!(Some(&m.parent_raw), h.req_headers.get(&t));
    assert_eq!(m.metadata.get("status").as_str(), Some("error"));
    assert_eq!(m.metadata.get("engine").as_str(), Some("e-1"));
    assert!(m.metadata.get("date").as_str().is_some_and(datetime::looks_like_iso));
    assert_eq!(m.content.get("ename").as_str(), Some("EngineError"));
    assert_eq!(m.content.get("evalue").as_str(), Some(format!("Engine b'e-1' died while running task '{t}'").as_str()));
    let hub = h.hub();
    assert_eq!(hub.len(), 1);
    assert_eq!(hub[0].0, "outtask");
    assert_eq!(decode(h.p, &hub[0].1).idents, vec![CLIENT.to_vec(), b"e-1".to_vec()]);
    let st = h.s.stats();
    assert_eq!((st.pending, st.failed, st.engines), (0, 1, 0));
    // a reply from the dead engine now is refused
    let late = h.reply_frames(&s, "ok", true);
    assert!(matches!(h.s.engine_reply(late, h.now, &mut h.out), Err(TaskError::UnknownTask(_))));
    assert!(h.replies().is_empty());
}

#[test]
fn stranded_task_is_retried() {
    let mut h = H::new(Scheme::LeastLoad, 1);
    h.add("A");
    h.add("B");
    let t = h.submit(md(vec![("retries", Value::Int(1))]));
    let s = h.sent_one();
    let busy = h.submit(md_empty());
    let sb = h.sent_one();
    assert_eq!(sb.msg_id, busy);
    h.remove(&s.uuid.clone());
    h.at(5.0);
    assert!(h.replies().is_empty(), "retried, not failed");
    assert_eq!(h.s.stats().queued, 1, "waits for the busy engine");
    h.ok(&sb);
    h.replies();
    let s2 = h.sent_one();
    assert_eq!((s2.msg_id.as_str(), s2.uuid.as_str()), (t.as_str(), sb.uuid.as_str()));
    h.ok(&s2);
    let r = h.replies();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].content.get("status").as_str(), Some("ok"));
}

#[test]
fn late_reply_before_stranding_is_forwarded() {
    let mut h = H::new(Scheme::LeastLoad, 1);
    h.add("A");
    h.submit(md_empty());
    let s = h.sent_one();
    h.remove("A");
    h.at(1.0);
    h.ok(&s);
    assert_eq!(h.replies().len(), 1);
    h.at(10.0);
    assert!(h.replies().is_empty());
    assert_eq!(h.s.stats().pending, 0);
    // removal of an idle engine arms nothing
    h.add("B");
    h.remove("B");
    assert_eq!(h.s.next_deadline(), None);
    h.remove("B");
    h.remove("never-seen");
}

#[test]
fn reregistered_uuid_gets_fresh_state() {
    let mut h = H::new(Scheme::LeastLoad, 1);
    h.add("A");
    let t1 = h.submit(md_empty());
    let s1 = h.sent_one();
    h.remove("A");
    h.add("A");
    // the old incarnation's task is still pending; the new one is idle
    let t2 = h.submit(md_empty());
    let s2 = h.sent_one();
    assert_eq!(s2.msg_id, t2);
    h.at(5.0);
    let r = h.replies();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].parent.get("msg_id").as_str(), Some(t1.as_str()));
    assert_eq!(r[0].content.get("ename").as_str(), Some("EngineError"));
    h.ok(&s2);
    assert_eq!(h.replies().len(), 1);
    let _ = s1;
}

#[test]
fn msgpack_scheduler_made_replies() {
    let mut h = H::with(TaskConfig::default(), Packer::Msgpack);
    h.add("A");
    let t = h.submit(md(vec![("after", ids(&["nonexistent"]))]));
    h.expect_failure(&t, "InvalidDependency");
    let t = h.submit(md_empty());
    let s = h.sent_one();
    let tt = h.hub().into_iter().find(|(t, _)| *t == "tracktask").expect("tracktask");
    assert_eq!(decode(h.p, &tt.1).content, vmap! {"msg_id" => t.as_str(), "engine_id" => "A"});
    h.remove("A");
    h.at(5.0);
    let r = h.replies();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].content.get("ename").as_str(), Some("EngineError"));
    assert_eq!(Some(&r[0].parent_raw), h.req_headers.get(&t));
    let _ = s;
}

// ---------------------------------------------------------------------------------
// Malformed input
// ---------------------------------------------------------------------------------

#[test]
fn malformed_input_is_refused_without_side_effects() {
    let mut h = H::new(Scheme::LeastLoad, 1);
    h.add("A");
    let (id, good) = h.request(&md_empty());
    let d = find_delim(&good).expect("delim");
    let cases: Vec<Frames> = vec![
        vec![],
        vec![b"x".to_vec()],
        good[..d + 4].to_vec(),
        good[d..].to_vec(),
        {
            let mut f = good.clone();
            f[d + 2] = b"not json".to_vec();
            f
        },
        {
            let mut f = good.clone();
            f[d + 2] = b"{}".to_vec();
            f
        },
        {
            let mut f = good.clone();
            f[d + 4] = b"[1,".to_vec();
            f
        },
    ];
    for c in cases {
        assert!(h.s.submit(c, h.now, &mut h.out).is_err());
    }
    assert!(h.out.engine.is_empty() && h.out.client.is_empty() && h.out.hub.is_empty());
    h.s.submit(good.clone(), h.now, &mut h.out).expect("good");
    let e = h.s.submit(good, h.now, &mut h.out).expect_err("duplicate");
    assert_eq!(e.reason(), "duplicate");
    let s = h.sent_one();
    assert_eq!(s.msg_id, id);
    h.hub();
    let reply = h.reply_frames(&s, "ok", true);
    let rd = find_delim(&reply).expect("delim");
    let bad: Vec<Frames> = vec![
        reply[1..].to_vec(),
        reply[..rd + 3].to_vec(),
        {
            let mut f = reply.clone();
            f[0] = b"B".to_vec();
            f
        },
        {
            let mut f = reply.clone();
            f[rd + 3] = b"{}".to_vec();
            f
        },
        {
            let mut f = reply.clone();
            f[rd + 4] = b"\xff".to_vec();
            f
        },
    ];
    for b in bad {
        assert!(h.s.engine_reply(b, h.now, &mut h.out).is_err());
        h.s.check_invariants();
    }
    assert!(h.out.client.is_empty() && h.out.hub.is_empty());
    h.s.engine_reply(reply.clone(), h.now, &mut h.out).expect("good reply");
    assert!(matches!(h.s.engine_reply(reply, h.now, &mut h.out), Err(TaskError::UnknownTask(_))));
    assert_eq!(h.replies().len(), 1);
}

#[test]
fn loose_metadata_values() {
    let mut h = H::new(Scheme::LeastLoad, 0);
    h.add("A");
    h.add("B");
    // targets as a bare string, retries as a float, timeout null, follow null, unknown keys
    let m = vmap! {"targets" => "A", "retries" => 1.0, "timeout" => Value::Nil, "follow" => Value::Nil, "after" => Value::Nil, "whatever" => 3i64};
    let t = h.submit(m);
    let s = h.sent_one();
    assert_eq!((s.msg_id.as_str(), s.uuid.as_str()), (t.as_str(), "A"));
    // empty metadata
    h.submit(Value::map());
    assert_eq!(h.sent().len(), 1);
    assert_eq!(parse_timeout(&Value::Int(-1)), Some(Duration::ZERO));
    assert_eq!(parse_timeout(&Value::Float(f64::NAN)), None);
    assert_eq!(parse_timeout(&Value::Float(0.0)), None);
    assert_eq!(parse_int(&Value::Nil), 0);
    assert_eq!(py_bytes_repr(b"a'b"), "b\"a'b\"");
    assert_eq!(py_str_repr("x_1"), "'x_1'");
}

// ---------------------------------------------------------------------------------
// Memory: finished tasks leave the task table; dependencies on them still work
// ---------------------------------------------------------------------------------

/// Runs `n` plain tasks through A and B with `window` in flight, answering the oldest.
fn churn(h: &mut H, n: usize, window: usize) {
    let mut inflight: VecDeque<Sent> = VecDeque::new();
    for _ in 0..n {
        h.submit(md_empty());
        inflight.extend(h.sent());
        if inflight.len() >= window {
            let s = inflight.pop_front().expect("in flight");
            h.ok(&s);
        }
        h.out.client.clear();
        h.out.hub.clear();
    }
    while let Some(s) = inflight.pop_front() {
        h.ok(&s);
        inflight.extend(h.sent());
    }
    h.out.client.clear();
    h.out.hub.clear();
    h.req_headers.clear();
}

#[test]
fn finished_tasks_free_their_slots_and_keep_their_outcomes() {
    let mut h = H::new(Scheme::LeastLoad, 0);
    h.add("A");
    h.add("B");
    let bad = h.submit(md_empty());
    let s = h.sent_one();
    h.reply(&s, "error", true);
    let good = h.submit(md_empty());
    let s = h.sent_one();
    h.ok(&s);
    h.replies();
    h.hub();
    churn(&mut h, 20_000, 16);
    assert!(h.s.tasks.len() <= 17, "table is as large as the window: {}", h.s.tasks.len());
    assert!(h.s.live.is_empty() && h.s.graph.is_empty());
    assert_eq!(h.s.history.len(), 20_002);

    // Outcomes of tasks finished 20,000 tasks ago are still exact.
    let t = h.submit(md(vec![("after", ids(&[&bad]))]));
    h.expect_failure(&t, "ImpossibleDependency");
    let t = h.submit(md(vec![("after", vmap! {"dependencies" => ids(&[&bad]), "success" => false, "failure" => true})]));
    assert_eq!(h.sent_one().msg_id, t);
    let t = h.submit(md(vec![("after", ids(&[&good]))]));
    assert_eq!(h.sent_one().msg_id, t);
    // A Session-shaped id this scheduler never saw is still invalid.
    let (prefix, _) = ippx_protocol::idset::split_msg_id(&good).expect("session-shaped");
    let never = format!("{prefix}_999999999");
    let t = h.submit(md(vec![("after", ids(&[&never]))]));
    h.expect_failure(&t, "InvalidDependency");
    // And an old msg_id cannot be submitted again.
    let mut hd = h.client.new_header("apply_request");
    hd.msg_id = good.clone();
    let again = h.client.serialize_with_header(vec![CLIENT.to_vec()], &hd, Parent::None, &md_empty(), &Value::map(), vec![]).expect("ser");
    assert!(matches!(
        h.s.submit(again, h.now, &mut h.out),
        Err(TaskError::DuplicateMsgId(id)) if id == good
    ));
    h.s.check_invariants();
}

#[test]
fn follow_on_a_forgotten_engine_is_impossible_but_use_keeps_it_known() {
    let mut h = H::new(Scheme::LeastLoad, 0);
    h.add("A");
    h.add("B");
    let kept = h.submit(md_empty());
    let s = h.sent_one();
    let kept_on = s.uuid.clone();
    h.ok(&s);
    let lost = h.submit(md_empty());
    let s = h.sent_one();
    h.ok(&s);
    h.replies();
    h.hub();
    // Far more tasks than the location cache holds; `kept` is followed now and then.
    for _ in 0..(2 * ids::PLACES / 1000 + 2) {
        churn(&mut h, 1000, 8);
        let t = h.submit(md(vec![("follow", ids(&[&kept]))]));
        let s = h.sent_one();
        assert_eq!((s.msg_id.as_str(), s.uuid.as_str()), (t.as_str(), kept_on.as_str()));
        h.ok(&s);
        h.replies();
        h.hub();
    }
    let t = h.submit(md(vec![("follow", ids(&[&lost]))]));
    h.expect_failure(&t, "ImpossibleDependency");
    // As a time dependency a forgotten engine does not matter.
    let t = h.submit(md(vec![("after", ids(&[&lost]))]));
    assert_eq!(h.sent_one().msg_id, t);
}

#[test]
fn a_stale_timer_does_not_fire_for_the_job_that_reuses_its_slot() {
    let mut h = H::new(Scheme::LeastLoad, 1);
    h.add("A");
    let _t1 = h.submit(md_empty());
    let s1 = h.sent_one();
    let t2 = h.submit(md(vec![("timeout", Value::Float(1.0))]));
    h.at(0.5);
    h.ok(&s1);
    let s2 = h.sent_one();
    assert_eq!(s2.msg_id, t2);
    let t4 = h.submit(md_empty());
    assert!(h.sent().is_empty(), "A is busy");
    h.at(0.6);
    h.ok(&s2);
    let s4 = h.sent_one();
    assert_eq!(s4.msg_id, t4);
    h.replies();
    h.hub();
    // t3 takes t2's slot, queued with the same arming count as t2's stale timer.
    let t3 = h.submit(md(vec![("timeout", Value::Float(5.0))]));
    assert!(h.sent().is_empty());
    h.at(1.0);
    assert!(h.replies().is_empty(), "t2's timer is stale");
    h.at(5.6);
    h.expect_failure(&t3, "TaskTimeout");
}

#[test]
fn a_running_job_learns_outcomes_it_did_not_wait_for() {
    // follow-any: runs at once where t1 ran, while t2 is still live; when it is retried
    // after t2 finished elsewhere, t2's engine is a valid place.
    let mut h = H::new(Scheme::LeastLoad, 0);
    h.add("A");
    h.add("B");
    let t1 = h.submit(md_empty());
    let s1 = h.sent_one();
    assert_eq!(s1.uuid, "B");
    h.ok(&s1);
    let t2 = h.submit(md_empty());
    let s2 = h.sent_one();
    assert_eq!(s2.uuid, "A");
    let j = h.submit(md(vec![("follow", vmap! {"dependencies" => ids(&[&t1, &t2]), "all" => false}), ("retries", Value::Int(1))]));
    let sj = h.sent_one();
    assert_eq!((sj.msg_id.as_str(), sj.uuid.as_str()), (j.as_str(), "B"));
    h.ok(&s2);
    h.reply(&sj, "error", true);
    let sj = h.sent_one();
    assert_eq!((sj.msg_id.as_str(), sj.uuid.as_str()), (j.as_str(), "A"));
}

// ---------------------------------------------------------------------------- admission (issue 14)

#[test]
fn a_request_no_engine_answers_is_refused_not_scheduled() {
    let mut h = H::new(Scheme::LeastLoad, 1);
    h.add("e0");
    for t in ["frobnicate_request", "kernel_info_request"] {
        let (hdr, frames) = h.client.serialize(vec![CLIENT.to_vec()], t, Parent::None, &Value::map(), &Value::map(), vec![]).expect("serialize");
        let e = h.s.submit(frames, h.now, &mut h.out).expect_err("refused");
        assert_eq!(e.reason(), "refused");
        h.s.check_invariants();
        let r = h.replies();
        assert_eq!(r.len(), 1, "the sender is answered");
        assert_eq!(r[0].header.msg_type, t.replace("_request", "_reply"));
        assert_eq!(r[0].parent.get("msg_id").as_str(), Some(hdr.msg_id.as_str()));
        assert_eq!(r[0].content.get("ename").as_str(), Some("UnknownMessageType"));
        assert!(h.sent().is_empty(), "nothing reaches an engine");
        assert!(h.hub().is_empty(), "the hub records nothing");
    }
    // with hwm=1 the engine slot is still free: a real task runs at once
    h.submit(Value::map());
    assert_eq!(h.sent_one().uuid, "e0");
}

#[test]
fn an_oversized_header_or_metadata_is_refused_before_it_is_parsed() {
    let mut h = H::new(Scheme::LeastLoad, 1);
    h.add("e0");
    // metadata over the limit: answered as the request's reply, with its parent
    let big = vmap! {"after" => Value::Array(vec![Value::from("x".repeat(1000)); admission::MAX_METADATA / 1000 + 1])};
    let (id, frames) = h.request(&big);
    let e = h.s.submit(frames, h.now, &mut h.out).expect_err("refused");
    assert_eq!(e.reason(), "too_large");
    let r = h.replies();
    assert_eq!((r[0].header.msg_type.as_str(), r[0].parent.get("msg_id").as_str()), ("apply_reply", Some(id.as_str())));
    assert_eq!(r[0].content.get("ename").as_str(), Some("MessageTooLarge"));
    // a header over the limit: not even unpacked (a garbage frame of that size is refused alike)
    let (_, mut frames) = h.request(&Value::map());
    let d = find_delim(&frames).expect("delim");
    frames[d + 2] = vec![b'x'; admission::MAX_HEADER + 1];
    let e = h.s.submit(frames, h.now, &mut h.out).expect_err("refused");
    assert_eq!(e.reason(), "too_large");
    let r = h.replies();
    assert_eq!(r[0].content.get("ename").as_str(), Some("MessageTooLarge"));
    assert_eq!(r[0].parent, Value::map());
    assert!(h.sent().is_empty() && h.hub().is_empty());
    h.s.check_invariants();
}

#[test]
fn a_reply_to_a_task_from_before_a_restart_is_passed_on() {
    // The engine answers a task the previous controller sent it: this scheduler never had
    // it, so the hub (waiting for it after --restore) and the client get the reply as is.
    let mut h = H::new(Scheme::LeastLoad, 1);
    h.add("e0");
    let id = h.submit(Value::map());
    let sent = h.sent_one();
    h.hub();
    let mut old = sent.clone();
    let d = find_delim(&old.frames).expect("delim");
    let (hdr, _) = h.request(&Value::map());
    old.frames[d + 2] = h.client.pack(&Header { msg_id: hdr, ..h.p.unpack(&sent.frames[d + 2]).expect("header") }).expect("pack");
    let f = h.reply_frames(&old, "ok", true);
    h.s.engine_reply(f, h.now, &mut h.out).expect("passed on");
    assert_eq!(h.s.stats().passed_through, 1);
    assert_eq!(h.hub_topics(), ["outtask"]);
    assert_eq!(h.replies().len(), 1);
    // the engine's own task is untouched: still running there
    h.ok(&sent);
    assert_eq!(h.replies()[0].parent.get("msg_id").as_str(), Some(id.as_str()));
    h.s.check_invariants();
}
