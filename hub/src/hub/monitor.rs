//! Monitor copies from the relays (docs/protocol.md §5): every request, reply and IOPub message the
//! schedulers pass on is copied to the hub, which keeps the task book and the records.

use super::book::{Assigned, Finished};
use super::{Hub, Now, Outbox};
use crate::records::TaskRecord;
use crate::store::Missing;
use ippx_protocol::content::TaskDestination;
use ippx_protocol::datetime::{parse_iso, Timestamp};
use ippx_protocol::{Header, MonitorTopic, Value};
use std::time::Instant;
use tracing::{debug, info, warn};

/// A verified monitor message, decoded as far as every topic needs.
pub struct MonitorMsg<'a> {
    pub h: &'a Header,
    pub parent_id: String,
    pub header: &'a [u8],
    pub metadata: &'a [u8],
    pub content: &'a [u8],
    pub buffers: &'a [Vec<u8>],
}

fn outcome(status: &str) -> &'static str {
    match status {
        "ok" => "ok",
        "aborted" => "aborted",
        _ => "error",
    }
}

/// Seconds between the reply metadata's `started` and the reply header's `date`.
fn run_seconds(md: &Value, reply_date: &str) -> Option<f64> {
    let started = parse_iso(md.get("started").as_str()?)?;
    let done = parse_iso(reply_date)?;
    let us = (done - started).num_microseconds()?;
    (us >= 0).then(|| us as f64 / 1e6)
}

/// Carries IOPub output recorded before the request (docs/protocol.md §6.2) into the request record.
pub(super) fn keep_io(r: &mut TaskRecord, io: TaskRecord) {
    r.stdout = io.stdout;
    r.stderr = io.stderr;
    r.execute_input = io.execute_input;
    r.execute_result = io.execute_result;
    r.error = io.error;
}

impl Hub {
    /// A monitor copy from a relay: `topic`, the routing frames before the delimiter, and
    /// the (already verified) message parts.
    pub fn monitor(&mut self, topic: &[u8], routing: &[Vec<u8>], msg: MonitorMsg<'_>, now: Now, out: &mut impl Outbox) {
        match MonitorTopic::from_bytes(topic) {
            Some(MonitorTopic::MuxRequest) => self.mux_request(routing, msg, now.at),
            Some(MonitorTopic::MuxReply) => self.mux_reply(routing, msg, now),
            Some(MonitorTopic::TaskRequest) => self.task_request(msg, now.at),
            Some(MonitorTopic::TaskDestination) => self.task_destination(msg),
            Some(MonitorTopic::TaskReply) => self.task_reply(msg, now),
            Some(MonitorTopic::IoPub) => self.iopub(msg, now, out),
            Some(MonitorTopic::ControlRequest | MonitorTopic::ControlReply | MonitorTopic::Heart) => {}
            None => {
                self.drop_msg("unknown");
                warn!(topic = %String::from_utf8_lossy(topic), "unknown monitor topic");
            }
        }
    }

    fn request_record(&self, msg: &MonitorMsg<'_>, queue: &str) -> Result<TaskRecord, String> {
        let header: Value = self.unpack(msg.header)?;
        let metadata: Value = self.unpack(msg.metadata)?;
        let content: Value = self.unpack(msg.content)?;
        let mut r = TaskRecord::new(&msg.h.msg_id);
        r.submitted = parse_iso(&msg.h.date);
        r.client_uuid = Some(msg.h.session.clone());
        r.queue = Some(queue.to_owned());
        r.label = metadata.get("label").clone();
        r.header = header;
        r.metadata = metadata;
        r.content = content;
        r.buffers = msg.buffers.to_vec();
        Ok(r)
    }

    fn save_request(&mut self, rec: TaskRecord) {
        if !self.store.keeps_records() {
            return;
        }
        let id = rec.msg_id.clone();
        let mut rec = Some(rec);
        let r = self.store.update(&id, Missing::Create, &mut |r| {
            let Some(rec) = rec.take() else { return };
            if r.header.is_nil() && r.submitted.is_none() {
                // Only IOPub output so far: the request record, plus that output.
                let io = std::mem::take(r);
                *r = rec;
                keep_io(r, io);
            } else {
                r.merge_request(rec);
            }
        });
        self.store_failed("request", &id, r);
    }

    fn mux_request(&mut self, routing: &[Vec<u8>], msg: MonitorMsg<'_>, now: Instant) {
        let Some(target) = routing.first() else {
            self.drop_msg("malformed");
            return;
        };
        let uuid = String::from_utf8_lossy(target).into_owned();
        let Some(eid) = self.reg.by_uuid(&uuid).map(|e| e.id) else {
            warn!(target = %uuid, msg_id = %msg.h.msg_id, "direct request for an engine that is not registered");
            return;
        };
        let mut rec = match self.request_record(&msg, "mux") {
            Ok(r) => r,
            Err(e) => {
                self.drop_msg("malformed");
                warn!("unpackable mux request: {e}");
                return;
            }
        };
        rec.engine_uuid = Some(uuid);
        let id = rec.msg_id.clone();
        debug!(msg_id = %id, engine = %eid, "mux request");
        *self.stats.submitted.entry("mux").or_default() += 1;
        self.status.submitted(&id, &rec.label);
        self.book.submit_direct(id, eid, now);
        self.save_request(rec);
    }

    /// `md` is the reply's metadata, already unpacked by the caller (which reads its
    /// status), so it is not unpacked twice per reply.
    fn result_update(&self, msg: &MonitorMsg<'_>, md: Result<Value, String>) -> Result<(Value, Value, Value), String> {
        Ok((self.unpack(msg.header)?, md?, self.unpack(msg.content)?))
    }

    fn store_result(&mut self, msg_id: &str, msg: &MonitorMsg<'_>, engine: Option<String>, md: Result<Value, String>, received: Timestamp) {
        if !self.store.keeps_records() {
            return;
        }
        let (rh, rm, rc) = match self.result_update(msg, md) {
            Ok(v) => v,
            Err(e) => {
                self.drop_msg("malformed");
                warn!(msg_id, "unpackable reply: {e}");
                return;
            }
        };
        let started = rm.get("started").as_str().and_then(parse_iso);
        let completed = parse_iso(&msg.h.date);
        let mut update = Some((rh, rm, rc, msg.buffers.to_vec(), engine));
        let r = self.store.update(msg_id, Missing::Skip, &mut |r| {
            let Some((rh, rm, rc, bufs, engine)) = update.take() else { return };
            r.result_header = rh;
            r.result_metadata = rm;
            r.result_content = rc;
            r.result_buffers = bufs;
            r.started = started;
            r.completed = completed.or(Some(received));
            r.received = Some(received);
            if let Some(e) = engine {
                r.engine_uuid = Some(e);
            }
        });
        match r {
            Ok(false) => debug!(msg_id, "reply for a record no longer in the store (culled or purged)"),
            r => self.store_failed("reply", msg_id, r),
        }
    }

    fn mux_reply(&mut self, routing: &[Vec<u8>], msg: MonitorMsg<'_>, now: Now) {
        let Some(engine) = routing.get(1) else {
            self.drop_msg("malformed");
            return;
        };
        let uuid = String::from_utf8_lossy(engine).into_owned();
        let Some(eid) = self.reg.by_uuid(&uuid).map(|e| e.id) else {
            warn!(engine = %uuid, "reply from an engine that is not registered");
            return;
        };
        let parent = msg.parent_id.clone();
        let md = self.unpack::<Value>(msg.metadata);
        if self.inflight.answered(&parent) {
            info!(msg_id = %parent, engine = %eid, "reply to a request from before the restart: its record completes");
            self.store_result(&parent, &msg, None, md, now.wall);
            return;
        }
        match self.book.finish_direct(&parent, eid) {
            Finished::Now { seen } => {
                // The engine answers in order: what it had from before the restart is lost.
                self.give_up_inflight(eid, false, now);
                let m = md.as_ref().unwrap_or(&Value::Nil);
                let (status, run) = (outcome(m.get("status").as_str().unwrap_or("")), run_seconds(m, &msg.h.date));
                self.stats.finished("mux", status, seen, now.at, run);
                let o = crate::status::Outcome::from_name(status);
                self.status.finished(&parent, Some(eid), crate::status::Queue::Mux, o, seen, run, now.at, msg.content);
            }
            Finished::Before => {}
            Finished::Late => {
                // Its client got EngineError when the engine was lost; the record keeps that.
                self.drop_msg("late");
                debug!(msg_id = %parent, engine = %eid, "late reply from a re-admitted engine dropped");
                return;
            }
            Finished::Unknown => {
                debug!(msg_id = %parent, "reply to an unknown direct request");
                return;
            }
        }
        debug!(msg_id = %parent, engine = %eid, "mux reply");
        self.store_result(&parent, &msg, None, md, now.wall);
    }

    fn task_request(&mut self, msg: MonitorMsg<'_>, now: Instant) {
        let rec = match self.request_record(&msg, "task") {
            Ok(r) => r,
            Err(e) => {
                self.drop_msg("malformed");
                warn!("unpackable task request: {e}");
                return;
            }
        };
        let id = rec.msg_id.clone();
        debug!(msg_id = %id, "task submitted");
        *self.stats.submitted.entry("task").or_default() += 1;
        self.status.submitted(&id, &rec.label);
        self.book.submit_task(id, now);
        self.save_request(rec);
    }

    fn task_destination(&mut self, msg: MonitorMsg<'_>) {
        let d: TaskDestination = match self.unpack(msg.content) {
            Ok(d) => d,
            Err(e) => {
                self.drop_msg("malformed");
                warn!("bad task_destination: {e}");
                return;
            }
        };
        let Some(eid) = self.reg.by_uuid(&d.engine_id).map(|e| e.id) else {
            self.book.leave_unassigned(&d.msg_id);
            warn!(engine = %d.engine_id, msg_id = %d.msg_id, "task sent to an engine that is not registered");
            return;
        };
        if self.book.assign(&d.msg_id, eid) == Assigned::NotPending {
            debug!(msg_id = %d.msg_id, "destination of a task that is not pending");
            return;
        }
        debug!(msg_id = %d.msg_id, engine = %eid, "task assigned");
        let r = self.store.update(&d.msg_id, Missing::Skip, &mut |r| r.engine_uuid = Some(d.engine_id.clone()));
        self.store_failed("task destination", &d.msg_id, r);
    }

    fn task_reply(&mut self, msg: MonitorMsg<'_>, now: Now) {
        let parent = msg.parent_id.clone();
        let md = self.unpack::<Value>(msg.metadata);
        let m = md.as_ref().unwrap_or(&Value::Nil);
        let engine = m.get("engine").as_str().unwrap_or("").to_owned();
        let status = outcome(m.get("status").as_str().unwrap_or(""));
        if self.inflight.answered(&parent) {
            info!(msg_id = %parent, "reply to a task from before the restart: its record completes");
            self.store_result(&parent, &msg, Some(engine), md, now.wall);
            return;
        }
        // The owner before the book forgets it, for the status page's timeline.
        let owner = self.book.owner(&parent);
        let Finished::Now { seen } = self.book.finish_task(&parent, status != "aborted" && !engine.is_empty()) else {
            debug!(msg_id = %parent, "reply to a task that is not pending");
            return;
        };
        if let Some(eid) = owner {
            self.give_up_inflight(eid, false, now);
        }
        let run = run_seconds(m, &msg.h.date);
        self.stats.finished("task", status, seen, now.at, run);
        let o = crate::status::Outcome::from_name(status);
        self.status.finished(&parent, owner, crate::status::Queue::Task, o, seen, run, now.at, msg.content);
        debug!(msg_id = %parent, status, "task finished");
        self.store_result(&parent, &msg, Some(engine), md, now.wall);
    }

    fn iopub(&mut self, msg: MonitorMsg<'_>, now: Now, out: &mut impl Outbox) {
        let t = msg.h.msg_type.as_str();
        if t == "shutdown_reply" {
            if let Some(id) = self.reg.by_uuid(&msg.h.session).map(|e| e.id) {
                info!(engine = %id, "engine shut down (shutdown_reply on IOPub)");
                self.unregister(id, now, out);
            }
            return;
        }
        if !matches!(t, "stream" | "error" | "execute_input" | "execute_result") || msg.parent_id.is_empty() || !self.store.keeps_records() {
            return;
        }
        let content: Value = match self.unpack(msg.content) {
            Ok(c) => c,
            Err(e) => {
                self.drop_msg("malformed");
                warn!("unpackable iopub content: {e}");
                return;
            }
        };
        let parent = msg.parent_id.clone();
        let mut content = Some(content);
        let r = self.store.update(&parent, Missing::Create, &mut |r| {
            let Some(content) = content.take() else { return };
            match t {
                "stream" => {
                    let text = content.get("text").as_str().unwrap_or("");
                    if content.get("name").as_str() == Some("stderr") {
                        r.stderr.push_str(text);
                    } else {
                        r.stdout.push_str(text);
                    }
                }
                "error" => r.error = content,
                "execute_input" => r.execute_input = content.get("code").as_str().map(str::to_owned),
                _ => r.execute_result = content,
            }
        });
        self.store_failed("IOPub output", &parent, r);
    }
}
