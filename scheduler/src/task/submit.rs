//! Submission: a client's request becomes a job, waits for its dependencies and an engine,
//! and is dispatched; failed and finished jobs leave the book.

use super::*;

impl TaskScheduler {
    // ------------------------------------------------------------------------------
    // Submission
    // ------------------------------------------------------------------------------

    /// A request as received on the client-facing ROUTER:
    /// `[client_id, DELIM, sig, header, parent, metadata, content, bufs...]`.
    pub fn submit(&mut self, frames: Frames, now: Instant, out: &mut impl TaskOutbox) -> Result<(), TaskError> {
        let delim = split(&frames, 1)?;
        let header = self.admit(&frames, delim, out)?;
        let md: RequestMetadata = self.unpack("metadata", &frames[delim + 4])?;
        if self.live.contains_key(header.msg_id.as_str()) || self.history.contains(&header.msg_id) {
            return Err(TaskError::DuplicateMsgId(header.msg_id));
        }
        out.to_hub(MonitorTopic::TaskRequest, frames.clone());
        let tk = match self.free.pop() {
            Some(k) => {
                self.tasks[k as usize] = Slot::Taken;
                k
            }
            None => {
                self.tasks.push(Slot::Taken);
                (self.tasks.len() - 1) as TaskKey
            }
        };
        let serial = self.serial;
        self.serial += 1;
        self.live.insert(header.msg_id.as_str().into(), tk);
        self.stats.submitted += 1;

        let mut targets: Vec<u32> = Vec::new();
        let mut add_target = |s: &str, this: &mut Self| targets.push(this.name_of(s.as_bytes()));
        match &md.targets {
            Value::Str(s) => add_target(s, self),
            Value::Array(items) => {
                for t in items {
                    if let Value::Str(s) = t {
                        add_target(s, self);
                    }
                }
            }
            _ => {}
        }
        if targets.len() > 1 {
            targets.sort_unstable();
            targets.dedup();
        }

        let (live, tasks, history) = (&self.live, &self.tasks, &mut self.history);
        let mut resolve = |s: &str| match live.get(s) {
            // Our own id (its slot is still Taken): a self-dependency, invalid below.
            Some(&k) if k == tk => Found::Live(serial),
            Some(&k) => match &tasks[k as usize] {
                Slot::Live(j) => Found::Live(j.serial),
                _ => Found::Unknown, // cannot happen: live keys are live jobs at rest
            },
            None => match history.outcome(s) {
                Some((ok, engine)) => Found::Done(ok, engine),
                None => Found::Unknown,
            },
        };
        let mut after = if md.after.truthy() { Dep::from_value(&md.after, false, &mut resolve) } else { Dep::default() };
        let follow = Dep::from_value(&md.follow, true, &mut resolve);
        after.reduce_satisfied();
        if after.check() {
            after = Dep::default();
        }
        // Register on every unfinished task named, whatever happens to this job next:
        // it must learn their outcomes even while it runs (a retry checks them again).
        for s in after.waiting_on().chain(follow.waiting_on()) {
            if s != serial {
                let deps = self.graph.entry(s).or_default();
                if deps.last() != Some(&tk) {
                    deps.push(tk);
                }
            }
        }

        let mut job = Box::new(Job {
            msg_id: header.msg_id,
            serial,
            frames,
            delim,
            targets,
            blacklist: Vec::new(),
            after,
            follow,
            timeout: parse_timeout(&md.timeout),
            retries: parse_int(&md.retries),
            loc: Loc::Detached,
            arm: 0,
            assigned: 0,
        });

        let mut why = None;
        for dep in [&job.after, &job.follow] {
            if dep.is_empty() {
                continue;
            }
            if dep.is_invalid(serial) {
                why = Some("InvalidDependency");
            } else if dep.unreachable() {
                why = Some("ImpossibleDependency");
            }
            if why.is_some() {
                break;
            }
        }
        if let Some(ename) = why {
            self.fail(tk, job, ename, out);
        } else if job.after.is_empty() {
            match self.maybe_run(tk, &mut job, out) {
                Run::Started => self.put(tk, job),
                Run::Waiting => self.enqueue(tk, job, now),
                Run::Impossible => self.fail(tk, job, "ImpossibleDependency", out),
            }
        } else {
            self.enqueue(tk, job, now);
        }
        self.settle(out);
        Ok(())
    }

    pub(super) fn unpack<T: serde::de::DeserializeOwned>(&self, part: &'static str, b: &[u8]) -> Result<T, TaskError> {
        self.session.unpack(b).map_err(|e| TaskError::Unpack { part, error: e.to_string() })
    }

    pub(super) fn put(&mut self, tk: TaskKey, job: Box<Job>) {
        self.tasks[tk as usize] = Slot::Live(job);
    }

    pub(super) fn take(&mut self, tk: TaskKey) -> Option<Box<Job>> {
        let slot = &mut self.tasks[tk as usize];
        if matches!(slot, Slot::Live(_)) {
            if let Slot::Live(job) = std::mem::replace(slot, Slot::Taken) {
                return Some(job);
            }
        }
        None
    }

    /// Python's `save_unmet`: queue the job, register it under its unfinished
    /// dependencies, (re-)arm its timeout.
    pub(super) fn enqueue(&mut self, tk: TaskKey, mut job: Box<Job>, now: Instant) {
        debug_assert_eq!(job.loc, Loc::Detached);
        self.qseq += 1;
        let qseq = self.qseq;
        let ready = job.after.check();
        if ready {
            self.ready.insert(qseq, tk);
        }
        job.loc = Loc::Queued { qseq, ready };
        self.stats.queued += 1;
        if let Some(t) = job.timeout {
            job.arm = job.arm.wrapping_add(1);
            if let Some(at) = now.checked_add(t) {
                let (arm, serial) = (job.arm, job.serial);
                self.push_timer(at, TimerKind::Timeout { task: tk, serial, arm });
            }
        }
        self.put(tk, job);
    }

    pub(super) fn unqueue(&mut self, job: &mut Job) {
        if let Loc::Queued { qseq, ready } = job.loc {
            if ready {
                self.ready.remove(&qseq);
            }
            self.stats.queued -= 1;
            job.loc = Loc::Detached;
        }
    }

    /// Takes the job off its engine's pending list; the engine's load drops if it is alive.
    pub(super) fn unpend(&mut self, job: &mut Job) {
        let Loc::Pending { inc, pos } = job.loc else {
            return;
        };
        let eng = &mut self.engines[inc as usize];
        let pos = pos as usize;
        if pos < eng.pending.len() {
            eng.pending.swap_remove(pos);
            if let Some(&moved) = eng.pending.get(pos) {
                if let Slot::Live(j) = &mut self.tasks[moved as usize] {
                    if let Loc::Pending { pos: p, .. } = &mut j.loc {
                        *p = pos as u32;
                    }
                }
            }
        }
        if self.engines[inc as usize].alive {
            if let Some(lp) = self.lane_pos(inc) {
                let old = self.order[lp].load;
                self.order[lp].load = old.saturating_sub(1);
                self.track_load(Some(old), Some(old.saturating_sub(1)));
            }
        }
        self.stats.pending -= 1;
        job.loc = Loc::Detached;
    }

    /// Python's `maybe_run`: find a suitable engine and send the job there. `Impossible`
    /// means the caller must fail the job with `ImpossibleDependency`.
    pub(super) fn maybe_run(&mut self, tk: TaskKey, job: &mut Job, out: &mut impl TaskOutbox) -> Run {
        if !self.any_available() {
            return Run::Waiting;
        }
        let hwm = self.hwm;
        let filtered = !job.follow.is_empty() || !job.targets.is_empty() || !job.blacklist.is_empty();
        let pos = if !filtered && matches!(self.cfg.scheme, Scheme::LeastLoad | Scheme::Lru) {
            // Fast path: the scheme's answer without building the candidate list.
            let mut best: Option<usize> = None;
            for (i, l) in self.order.iter().enumerate() {
                if hwm > 0 && l.load >= hwm {
                    continue;
                }
                match best {
                    Some(b) if self.order[b].load <= l.load => {}
                    _ => best = Some(i),
                }
                if self.cfg.scheme == Scheme::Lru || l.load == 0 {
                    break;
                }
            }
            match best {
                Some(p) => p,
                None => return Run::Waiting,
            }
        } else {
            let mut cands = std::mem::take(&mut self.scratch);
            cands.clear();
            for (i, l) in self.order.iter().enumerate() {
                if hwm > 0 && l.load >= hwm {
                    continue;
                }
                if job.blacklist.contains(&l.name) {
                    continue;
                }
                if !job.targets.is_empty() && job.targets.binary_search(&l.name).is_err() {
                    continue;
                }
                if !job.follow.check_on(l.inc) {
                    continue;
                }
                cands.push(i as u32);
            }
            if cands.is_empty() {
                self.scratch = cands;
                return self.why_not(job);
            }
            let order = &self.order;
            let k = scheme::choose(self.cfg.scheme, &mut self.rng, cands.len(), |i| order[cands[i] as usize].load);
            let p = cands[k] as usize;
            self.scratch = cands;
            p
        };
        self.unqueue(job);
        self.dispatch(pos, tk, job, out);
        Run::Started
    }

    /// No engine passed the filter: impossible, or keep waiting?
    pub(super) fn why_not(&self, job: &mut Job) -> Run {
        if job.follow.all && !job.follow.is_empty() {
            let mut first: Option<u32> = None;
            let mut many = false;
            job.follow.destinations(|inc| {
                let name = self.engines[inc as usize].name;
                match first {
                    None => first = Some(name),
                    Some(f) if f != name => many = true,
                    _ => {}
                }
            });
            if many {
                return Run::Impossible;
            }
        }
        if !job.targets.is_empty() {
            let bl = &job.blacklist;
            job.targets.retain(|t| !bl.contains(t));
            if job.targets.is_empty() || !job.targets.iter().any(|&t| self.name_alive[t as usize] != NO_ENGINE) {
                return Run::Impossible;
            }
        }
        Run::Waiting
    }

    /// Sends the job to the engine at `pos` in the LRU list, moves that engine to the end.
    pub(super) fn dispatch(&mut self, pos: usize, tk: TaskKey, job: &mut Job, out: &mut impl TaskOutbox) {
        let mut lane = self.order.remove(pos);
        let old = lane.load;
        lane.load += 1;
        self.order.push(lane);
        self.track_load(Some(old), Some(old + 1));

        let eng = &mut self.engines[lane.inc as usize];
        job.loc = Loc::Pending { inc: lane.inc, pos: eng.pending.len() as u32 };
        eng.pending.push(tk);
        self.assign_seq += 1;
        job.assigned = self.assign_seq;
        self.stats.pending += 1;

        let mut f = Vec::with_capacity(job.frames.len() + 1);
        f.push(eng.uuid.as_bytes().to_vec());
        f.extend(job.frames.iter().cloned());
        out.to_engine(f);

        let content = Destination { msg_id: &job.msg_id, engine_id: &eng.uuid };
        let header = self.stamp.header("task_destination");
        match self.session.serialize_with_header(vec![self.ident.clone()], &header, Parent::None, &Value::map(), &content, vec![]) {
            Ok(frames) => out.to_hub(MonitorTopic::TaskDestination, frames),
            Err(e) => tracing::warn!(msg_id = %job.msg_id, "cannot build task_destination: {e}"),
        }
    }

    /// Python's `fail_unreachable`: the scheduler answers the client itself with an
    /// `apply_reply` error (metadata `{}`, evalue `""`), copies it to the hub as `outtask`,
    /// and the job counts as failed.
    pub(super) fn fail(&mut self, tk: TaskKey, mut job: Box<Job>, ename: &str, out: &mut impl TaskOutbox) {
        self.unqueue(&mut job);
        debug_assert_eq!(job.loc, Loc::Detached);
        let idents = job.frames[..job.delim].to_vec();
        let content = ErrorContent::new(ename, "");
        let header = self.stamp.header("apply_reply");
        match self.session.serialize_with_header(idents, &header, Parent::Raw(job.header_bytes()), &Value::map(), &content, vec![]) {
            Ok(frames) => {
                out.to_client(frames.clone());
                out.to_hub(MonitorTopic::TaskReply, frames);
            }
            Err(e) => tracing::warn!(msg_id = %job.msg_id, "cannot build {ename} reply: {e}"),
        }
        tracing::debug!(msg_id = %job.msg_id, ename, "task failed in the scheduler");
        self.finish(tk, job, false, NO_ENGINE);
    }

    /// The job is done for good: its outcome goes to the history, its slot is freed, and
    /// its dependents learn the outcome in `settle`.
    pub(super) fn finish(&mut self, tk: TaskKey, job: Box<Job>, ok: bool, engine: u32) {
        self.history.record(&job.msg_id, ok, engine);
        self.live.remove(job.msg_id.as_str());
        self.tasks[tk as usize] = Slot::Free;
        self.free.push(tk);
        if ok {
            self.stats.completed += 1;
        } else {
            self.stats.failed += 1;
        }
        self.finished.push_back((job.serial, ok, engine));
    }
}
