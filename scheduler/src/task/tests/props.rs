//! Property tests: random interleavings of submissions, engine replies, engine
//! registrations/unregistrations and time. Whatever happens, once engines answer and time
//! passes every submitted task gets exactly one reply (and one `outtask` copy), no engine
//! ever holds more than `hwm` tasks, and no engine ever receives the same signed message
//! twice.

use super::*;
use proptest::prelude::*;
use std::collections::HashSet;

const POOL: [&str; 4] = ["e0", "e1", "e2", "e3"];

#[derive(Clone, Debug)]
enum Op {
    Submit { after: Vec<u8>, after_mode: u8, follow: Vec<u8>, targets: Vec<u8>, retries: u8, timeout: u8, bad: bool },
    Reply { pick: u16, kind: u8 },
    Add(u8),
    Remove(u8),
    Tick(u8),
}

fn op() -> impl Strategy<Value = Op> {
    let some = |v: BoxedStrategy<Vec<u8>>, p: f64| prop::option::weighted(p, v).prop_map(Option::unwrap_or_default);
    let submit = (
        some(prop::collection::vec(any::<u8>(), 1..3).boxed(), 0.4),
        0u8..4,
        some(prop::collection::vec(any::<u8>(), 1..2).boxed(), 0.15),
        some(prop::collection::vec(0u8..5, 1..3).boxed(), 0.4),
        0u8..3,
        0u8..4,
        prop::bool::weighted(0.03),
    )
        .prop_map(|(after, after_mode, follow, targets, retries, timeout, bad)| Op::Submit {
            after,
            after_mode,
            follow,
            targets,
            retries,
            timeout,
            bad,
        });
    prop_oneof![
        5 => submit,
        6 => (any::<u16>(), 0u8..6).prop_map(|(pick, kind)| Op::Reply { pick, kind }),
        1 => (0u8..4).prop_map(Op::Add),
        2 => (0u8..4).prop_map(Op::Remove),
        1 => (1u8..12).prop_map(Op::Tick),
    ]
}

struct Model {
    h: H,
    hwm: usize,
    submitted: Vec<String>,
    /// Sent to an engine and not answered: (model incarnation, what was sent).
    outstanding: Vec<(usize, Sent)>,
    /// uuid → model incarnation while alive.
    alive: HashMap<String, usize>,
    next_inc: usize,
    sigs: HashSet<(String, Vec<u8>)>,
    replies: HashMap<String, usize>,
    outtask: HashMap<String, usize>,
    secs: f64,
}

fn parent_id(p: Packer, f: &Frames) -> String {
    let d = find_delim(f).expect("delim");
    let v: Value = p.unpack(&f[d + 3]).expect("parent");
    v.get("msg_id").as_str().expect("parent msg_id").to_owned()
}

impl Model {
    fn new(scheme: Scheme, hwm: usize, seed: u64) -> Model {
        Model {
            h: H::with(TaskConfig { scheme, hwm, stranded_delay: Duration::from_secs(5), seed }, Packer::Json),
            hwm,
            submitted: Vec::new(),
            outstanding: Vec::new(),
            alive: HashMap::new(),
            next_inc: 0,
            sigs: HashSet::new(),
            replies: HashMap::new(),
            outtask: HashMap::new(),
            secs: 0.0,
        }
    }

    fn add(&mut self, uuid: &str) {
        if !self.alive.contains_key(uuid) {
            self.alive.insert(uuid.to_owned(), self.next_inc);
            self.next_inc += 1;
        }
        self.h.add(uuid);
        self.absorb();
    }

    fn remove(&mut self, uuid: &str) {
        self.alive.remove(uuid);
        self.h.remove(uuid);
        self.absorb();
    }

    /// Checks and records everything the scheduler emitted.
    fn absorb(&mut self) {
        let p = self.h.p;
        for s in self.h.sent() {
            let inc = *self.alive.get(&s.uuid).unwrap_or_else(|| panic!("task sent to dead engine {}", s.uuid));
            let d = find_delim(&s.frames).expect("delim");
            assert!(self.sigs.insert((s.uuid.clone(), s.frames[d + 1].clone())), "same signed message sent twice to {}", s.uuid);
            self.outstanding.push((inc, s));
            if self.hwm > 0 {
                let n = self.outstanding.iter().filter(|(i, _)| *i == inc).count();
                assert!(n <= self.hwm, "engine holds {n} > hwm {} tasks", self.hwm);
            }
        }
        for f in std::mem::take(&mut self.h.out.client) {
            let id = parent_id(p, &f);
            let n = self.replies.entry(id.clone()).or_default();
            *n += 1;
            assert_eq!(*n, 1, "second reply for {id}");
        }
        for (topic, f) in std::mem::take(&mut self.h.out.hub) {
            if topic == "outtask" {
                *self.outtask.entry(parent_id(p, &f)).or_default() += 1;
            }
        }
        self.h.s.check_invariants();
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Submit { after, after_mode, follow, targets, retries, timeout, bad } => {
                let pick = |ix: &Vec<u8>, all: &Vec<String>| -> Vec<Value> {
                    if all.is_empty() {
                        return vec![];
                    }
                    ix.iter().map(|&i| Value::from(all[i as usize % all.len()].as_str())).collect()
                };
                let mut a = pick(after, &self.submitted);
                if *bad {
                    a.push("no-such-task".into());
                }
                let after_v = match after_mode {
                    0 => Value::Array(a),
                    1 => vmap! {"dependencies" => Value::Array(a), "all" => false},
                    2 => {
                        vmap! {"dependencies" => Value::Array(a), "success" => false, "failure" => true}
                    }
                    _ => {
                        vmap! {"dependencies" => Value::Array(a), "all" => true, "success" => true, "failure" => true}
                    }
                };
                let f = pick(follow, &self.submitted);
                // a follow on a task that ran on a now-dead engine waits forever (as in
                // Python) unless it has a timeout
                let timeout = if !f.is_empty() && *timeout == 0 { 1 } else { *timeout };
                let t: Vec<Value> = targets.iter().map(|&i| Value::from(if i < 4 { POOL[i as usize] } else { "ghost" })).collect();
                let m = md(vec![
                    ("after", after_v),
                    ("follow", Value::Array(f)),
                    ("targets", Value::Array(t)),
                    ("retries", Value::Int(i64::from(*retries))),
                    ("timeout", Value::Float(f64::from(timeout) * 0.7)),
                ]);
                let id = self.h.submit(m);
                self.submitted.push(id);
            }
            Op::Reply { pick, kind } => {
                if self.outstanding.is_empty() {
                    return;
                }
                let (_, s) = self.outstanding.remove(*pick as usize % self.outstanding.len());
                let (status, met) = match kind {
                    3 => ("error", true),
                    4 => ("ok", false),
                    _ => ("ok", true),
                };
                let f = self.h.reply_frames(&s, status, met);
                // replies for tasks that were stranded and moved on are refused; fine
                let _ = self.h.s.engine_reply(f, self.h.now, &mut self.h.out);
            }
            Op::Add(i) => self.add(POOL[*i as usize]),
            Op::Remove(i) => self.remove(POOL[*i as usize]),
            Op::Tick(n) => {
                self.secs += f64::from(*n) * 0.5;
                self.h.at(self.secs);
            }
        }
        self.absorb();
    }

    fn drain(&mut self) {
        for e in POOL {
            self.add(e);
        }
        self.add("fresh");
        for _ in 0..200 {
            let st = self.h.s.stats();
            if st.queued == 0 && st.pending == 0 && self.outstanding.is_empty() {
                break;
            }
            while !self.outstanding.is_empty() {
                self.apply(&Op::Reply { pick: 0, kind: 0 });
            }
            self.apply(&Op::Tick(20));
        }
        let st = self.h.s.stats();
        assert_eq!((st.queued, st.pending), (0, 0), "stuck: {st:?}");
        for id in &self.submitted {
            assert_eq!(self.replies.get(id), Some(&1), "replies for {id}");
            assert_eq!(self.outtask.get(id), Some(&1), "outtask copies for {id}");
        }
        assert_eq!(st.completed + st.failed, st.submitted);
        assert_eq!(st.submitted as usize, self.submitted.len());
    }
}

fn scheme_of(i: u8) -> Scheme {
    [Scheme::LeastLoad, Scheme::Lru, Scheme::TwoBin, Scheme::Weighted, Scheme::PlainRandom][i as usize % 5]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_task_gets_exactly_one_reply(
        scheme in 0u8..5,
        hwm in 0usize..3,
        seed in any::<u64>(),
        initial in 0usize..3,
        ops in prop::collection::vec(op(), 0..80),
    ) {
        let mut m = Model::new(scheme_of(scheme), hwm, seed);
        for e in POOL.iter().take(initial) {
            m.add(e);
        }
        for o in &ops {
            m.apply(o);
        }
        m.drain();
    }
}
