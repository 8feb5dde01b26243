//! Replies, engine loss and time: an engine's reply finishes (or retries) its job, a dead
//! engine strands its jobs, and timers and dependency changes re-evaluate waiting jobs.

use super::*;

impl TaskScheduler {
    // ------------------------------------------------------------------------------
    // Replies
    // ------------------------------------------------------------------------------

    /// A reply as received on the engine-facing ROUTER: `[engine_uuid, client_id, DELIM, ...]`.
    pub fn engine_reply(&mut self, frames: Frames, now: Instant, out: &mut impl TaskOutbox) -> Result<(), TaskError> {
        let delim = split(&frames, 2)?;
        let parent: ParentId = self.unpack("parent header", &frames[delim + 3])?;
        let md: ReplyStatus = self.unpack("metadata", &frames[delim + 4])?;
        let msg_id = parent.msg_id.unwrap_or_default();
        let Some(&tk) = self.live.get(msg_id.as_str()) else {
            if msg_id.is_empty() || self.history.contains(&msg_id) {
                // Answered or failed already (an engine back after it was declared dead).
                return Err(TaskError::UnknownTask(msg_id));
            }
            // A task this scheduler never had: sent before the controller restarted. The
            // hub waits for it (`--restore`), and its client may still be connected:
            // both get it, as its scheduler would have passed it on.
            let mut frames = frames;
            frames.swap(0, 1);
            out.to_client(frames.clone());
            out.to_hub(MonitorTopic::TaskReply, frames);
            self.stats.passed_through += 1;
            return Ok(());
        };
        let inc = match &self.tasks[tk as usize] {
            Slot::Live(job) => match job.loc {
                Loc::Pending { inc, .. } if self.engines[inc as usize].uuid.as_bytes() == &frames[0][..] => inc,
                _ => return Err(TaskError::WrongEngine { msg_id, engine: String::from_utf8_lossy(&frames[0]).into_owned() }),
            },
            _ => return Err(TaskError::UnknownTask(msg_id)),
        };
        let Some(mut job) = self.take(tk) else {
            return Err(TaskError::UnknownTask(msg_id));
        };
        self.unpend(&mut job);
        let deps_met = md.dependencies_met.truthy();
        let ok = md.status.as_str() == Some("ok");
        self.handle_reply(tk, job, inc, deps_met, ok, Some(frames), now, out);
        self.settle(out);
        Ok(())
    }

    /// Python's `dispatch_result` after the load update. `frames` = the reply as from the
    /// engine (`[uuid, client, DELIM, ...]`); `None` = a stranded task, whose `EngineError`
    /// reply is built only if it is final.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn handle_reply(
        &mut self,
        tk: TaskKey,
        mut job: Box<Job>,
        inc: u32,
        deps_met: bool,
        ok: bool,
        frames: Option<Frames>,
        now: Instant,
        out: &mut impl TaskOutbox,
    ) {
        if deps_met && (ok || job.retries <= 0) {
            let frames = match frames {
                Some(f) => Some(f),
                None => self.engine_error(&job, inc),
            };
            if let Some(mut frames) = frames {
                frames.swap(0, 1);
                out.to_client(frames.clone());
                out.to_hub(MonitorTopic::TaskReply, frames);
            }
            self.finish(tk, job, ok, inc);
            return;
        }
        if deps_met {
            job.retries -= 1;
        }
        self.unmet(tk, job, inc, now, out);
    }

    /// Python's `handle_unmet_dependency`: blacklist the engine for this job and route it
    /// elsewhere, or queue it, or fail it when its targets are all blacklisted.
    pub(super) fn unmet(&mut self, tk: TaskKey, mut job: Box<Job>, inc: u32, now: Instant, out: &mut impl TaskOutbox) {
        let name = self.engines[inc as usize].name;
        if let Err(i) = job.blacklist.binary_search(&name) {
            job.blacklist.insert(i, name);
        }
        if job.blacklist == job.targets {
            self.fail(tk, job, "ImpossibleDependency", out);
        } else {
            match self.maybe_run(tk, &mut job, out) {
                Run::Started => {
                    self.stats.resubmitted += 1;
                    self.put(tk, job);
                }
                Run::Waiting => {
                    self.stats.resubmitted += 1;
                    self.enqueue(tk, job, now);
                }
                Run::Impossible => self.fail(tk, job, "ImpossibleDependency", out),
            }
        }
        if self.hwm > 0 && self.engines[inc as usize].alive {
            if let Some(p) = self.lane_pos(inc) {
                if self.order[p].load == self.hwm - 1 {
                    self.rescan = true;
                }
            }
        }
    }

    /// The `EngineError` reply of a task stranded on dead engine incarnation `inc`, built
    /// "as if from the engine": `[uuid, client_id, DELIM, ...]`, fresh header from the
    /// scheduler session, parent = the request header, metadata `{status, engine, date}`.
    pub(super) fn engine_error(&mut self, job: &Job, inc: u32) -> Option<Frames> {
        let uuid = &self.engines[inc as usize].uuid;
        let evalue = format!("Engine {} died while running task {}", py_bytes_repr(uuid.as_bytes()), py_str_repr(&job.msg_id));
        let content = ErrorContent::new("EngineError", evalue);
        let md =
            Value::Map(vec![("status".into(), "error".into()), ("engine".into(), uuid.as_str().into()), ("date".into(), stamp::iso_now().into())]);
        let idents = vec![uuid.as_bytes().to_vec(), job.frames[0].clone()];
        let header = self.stamp.header("apply_reply");
        match self.session.serialize_with_header(idents, &header, Parent::Raw(job.header_bytes()), &md, &content, vec![]) {
            Ok(frames) => Some(frames),
            Err(e) => {
                tracing::warn!(msg_id = %job.msg_id, "cannot build EngineError reply: {e}");
                None
            }
        }
    }

    /// Python's `handle_stranded_tasks`: every job still pending on the dead incarnation
    /// gets an `EngineError` through the normal reply path (so retries apply).
    pub(super) fn strand(&mut self, inc: u32, now: Instant, out: &mut impl TaskOutbox) {
        let mut lost = std::mem::take(&mut self.engines[inc as usize].pending);
        lost.sort_by_key(|&tk| match &self.tasks[tk as usize] {
            Slot::Live(j) => j.assigned,
            _ => 0,
        });
        for tk in lost {
            let Some(mut job) = self.take(tk) else {
                continue;
            };
            debug_assert!(matches!(job.loc, Loc::Pending { inc: i, .. } if i == inc));
            job.loc = Loc::Detached;
            self.stats.pending -= 1;
            tracing::info!(msg_id = %job.msg_id, engine = %self.engines[inc as usize].uuid, "task stranded on a dead engine");
            self.handle_reply(tk, job, inc, true, false, None, now, out);
            self.settle(out);
        }
    }

    // ------------------------------------------------------------------------------
    // Time
    // ------------------------------------------------------------------------------

    /// Fires the task timeouts and stranded-task cleanups that are due at `now`.
    pub fn tick(&mut self, now: Instant, out: &mut impl TaskOutbox) {
        while let Some(Reverse(t)) = self.timers.peek().copied() {
            if t.at > now {
                break;
            }
            self.timers.pop();
            match t.kind {
                TimerKind::Timeout { task, serial, arm } => {
                    let due = matches!(&self.tasks[task as usize], Slot::Live(j) if j.serial == serial && j.arm == arm && matches!(j.loc, Loc::Queued { .. }));
                    if due {
                        if let Some(job) = self.take(task) {
                            tracing::info!(msg_id = %job.msg_id, "task timed out waiting to be scheduled");
                            self.fail(task, job, "TaskTimeout", out);
                            self.settle(out);
                        }
                    }
                }
                TimerKind::Stranded { inc } => self.strand(inc, now, out),
            }
        }
    }

    // ------------------------------------------------------------------------------
    // The dependency graph and the queue
    // ------------------------------------------------------------------------------

    /// Python's `update_graph`, iteratively: re-evaluates the dependents of every task
    /// that finished (in submission order), then rescans the ready queue when Python would
    /// (an engine registered, or hwm > 0 and some engine has exactly one free slot).
    pub(super) fn settle(&mut self, out: &mut impl TaskOutbox) {
        loop {
            while let Some((done, ok, engine)) = self.finished.pop_front() {
                if self.hwm > 0 && self.n_edge > 0 {
                    self.rescan = true;
                }
                let Some(mut deps) = self.graph.remove(&done) else {
                    continue;
                };
                deps.sort_unstable();
                deps.dedup();
                // Every job still waiting on `done` learns its outcome; the queued ones
                // are re-evaluated in submission order.
                let mut queued: Vec<(u64, TaskKey)> = Vec::new();
                for k in deps {
                    if let Slot::Live(j) = &mut self.tasks[k as usize] {
                        let hit = j.after.resolve(done, ok, engine) | j.follow.resolve(done, ok, engine);
                        if hit && matches!(j.loc, Loc::Queued { .. }) {
                            queued.push((j.serial, k));
                        }
                    }
                }
                queued.sort_unstable();
                for (_, k) in queued {
                    self.reevaluate(k, out);
                }
            }
            if !self.rescan {
                break;
            }
            self.rescan = false;
            self.scan_ready(out);
            if self.finished.is_empty() && !self.rescan {
                break;
            }
        }
    }

    /// One dependent of a finished task: fail it if unreachable; if its `after` is met,
    /// move it to the ready queue and (unless a full rescan follows) try to run it.
    pub(super) fn reevaluate(&mut self, tk: TaskKey, out: &mut impl TaskOutbox) {
        let Some(Loc::Queued { qseq, ready }) = (match &self.tasks[tk as usize] {
            Slot::Live(j) => Some(j.loc),
            _ => None,
        }) else {
            return;
        };
        let Some(mut job) = self.take(tk) else { return };
        if job.after.unreachable() || job.follow.unreachable() {
            self.fail(tk, job, "ImpossibleDependency", out);
            return;
        }
        if !job.after.check() {
            self.put(tk, job);
            return;
        }
        if !ready {
            self.ready.insert(qseq, tk);
            job.loc = Loc::Queued { qseq, ready: true };
        }
        if self.rescan || !self.any_available() {
            self.put(tk, job);
            return;
        }
        match self.maybe_run(tk, &mut job, out) {
            Run::Started | Run::Waiting => self.put(tk, job),
            Run::Impossible => self.fail(tk, job, "ImpossibleDependency", out),
        }
    }

    /// The full-queue rescan, over jobs whose `after` is met, in arrival order, stopping
    /// as soon as no engine is available.
    pub(super) fn scan_ready(&mut self, out: &mut impl TaskOutbox) {
        let mut cursor: Option<u64> = None;
        while self.any_available() {
            let next = match cursor {
                None => self.ready.iter().next(),
                Some(c) => self.ready.range((Bound::Excluded(c), Bound::Unbounded)).next(),
            };
            let Some((&q, &tk)) = next else { break };
            cursor = Some(q);
            let Some(mut job) = self.take(tk) else {
                // cannot happen: ready entries are live queued jobs
                self.ready.remove(&q);
                continue;
            };
            if job.follow.unreachable() {
                self.fail(tk, job, "ImpossibleDependency", out);
                continue;
            }
            match self.maybe_run(tk, &mut job, out) {
                Run::Started | Run::Waiting => self.put(tk, job),
                Run::Impossible => self.fail(tk, job, "ImpossibleDependency", out),
            }
        }
    }

    /// Test hook: checks every internal invariant, panicking with a description.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let mut avail = 0;
        let mut edge = 0;
        for l in &self.order {
            let e = &self.engines[l.inc as usize];
            assert!(e.alive, "dead engine in LRU list");
            assert_eq!(l.load as usize, e.pending.len(), "load != pending for {}", e.uuid);
            if self.hwm > 0 {
                assert!(l.load <= self.hwm, "engine {} over hwm", e.uuid);
                avail += usize::from(l.load < self.hwm);
                edge += usize::from(l.load == self.hwm - 1);
            }
            assert_eq!(self.name_alive[l.name as usize], l.inc);
        }
        if self.hwm > 0 {
            assert_eq!((avail, edge), (self.n_avail, self.n_edge), "availability counters");
        }
        let mut pending = 0;
        for (inc, e) in self.engines.iter().enumerate() {
            for (pos, &tk) in e.pending.iter().enumerate() {
                pending += 1;
                match &self.tasks[tk as usize] {
                    Slot::Live(j) => assert_eq!(j.loc, Loc::Pending { inc: inc as u32, pos: pos as u32 }),
                    _ => panic!("non-live task in a pending list"),
                }
            }
        }
        assert_eq!(pending, self.stats.pending, "pending counter");
        let mut queued = 0;
        let mut live = 0;
        let mut free = 0;
        for (tk, s) in self.tasks.iter().enumerate() {
            match s {
                Slot::Live(j) => {
                    live += 1;
                    assert_eq!(self.live.get(j.msg_id.as_str()), Some(&(tk as TaskKey)), "live map");
                    assert!(!self.history.contains(&j.msg_id), "live and finished");
                    for i in j.after.items.iter().chain(&j.follow.items) {
                        if i.done.is_none() {
                            assert!(
                                self.graph.get(&i.serial).is_some_and(|d| d.contains(&(tk as TaskKey))),
                                "job waits on a task without being registered on it"
                            );
                        }
                    }
                }
                Slot::Taken => panic!("taken job at rest"),
                Slot::Free => {
                    free += 1;
                    assert!(self.free.contains(&(tk as TaskKey)), "free slot not on the free list");
                }
            }
            if let Slot::Live(j) = s {
                match j.loc {
                    Loc::Queued { qseq, ready } => {
                        queued += 1;
                        assert_eq!(self.ready.get(&qseq) == Some(&(tk as u32)), ready, "ready set");
                    }
                    Loc::Pending { .. } => {}
                    Loc::Detached => panic!("detached job at rest"),
                }
            }
        }
        assert_eq!(queued, self.stats.queued, "queued counter");
        assert_eq!(live, self.live.len(), "live map size");
        assert_eq!(free, self.free.len(), "free list size");
        assert!(self.finished.is_empty() && !self.rescan);
    }
}
