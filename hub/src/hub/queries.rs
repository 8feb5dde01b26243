//! The hub's answers on the query socket: decoded [`Request`]s in, replies out.
//! `queue_status`, `result`, `db_query`, `purge` and `resubmit` read the task book and
//! the store; registration goes to the registry.

use super::book::EngineQueues;
use super::request::{Request, RequestError};
use super::{error_value, keep_io, peer_name, store_error, to_value, Hub, HubOut, Now, Outbox};
use crate::records::{Field, Fields, TaskRecord};
use crate::store::query::{Op, Query, Q};
use crate::store::{Missing, StoreError};
use ippx_protocol::content::{ConnectionReply, QueueRequest, RegistrationReply, ResultRequest, UnregistrationRequest};
use ippx_protocol::datetime::{format_iso, Timestamp};
use ippx_protocol::{vmap, EngineId, Header, Value, PROTOCOL_VERSION};
use tracing::{debug, info, warn};

/// The task-scheduler submissions of a resubmit, and its `old → new` msg_id mapping.
type Resubmission = (Vec<HubOut>, Vec<(String, String)>);

impl Hub {
    /// A verified message on the query ROUTER: decoded once, then handled.
    pub fn query(&mut self, idents: Vec<Vec<u8>>, header: &Header, raw_header: &[u8], content: &[u8], now: Now, out: &mut impl Outbox) {
        self.stats.queries += 1;
        debug!(msg_type = %header.msg_type, msg_id = %header.msg_id, "query");
        let reply = |out: &mut dyn Outbox, msg_type: &str, content: Value, buffers: Vec<Vec<u8>>| {
            out.push(HubOut::Reply { idents: idents.clone(), msg_type: msg_type.to_owned(), parent: raw_header.to_vec(), content, buffers })
        };
        let req = match Request::decode(&header.msg_type, content, self.s.packer) {
            Ok(req) => req,
            Err(e) => {
                let peer = peer_name(&idents);
                let (reason, ename) = match &e {
                    RequestError::Unknown(_) => ("unknown", "KeyError"),
                    RequestError::Malformed { .. } => ("malformed", "ValueError"),
                };
                self.drop_msg(reason);
                warn!(socket = "registration", reason, peer = %peer, msg_type = %header.msg_type, "dropped message: {e}");
                if let Some(t) = e.reply_type() {
                    let evalue = match &e {
                        RequestError::Unknown(t) => format!("Bad Message Type: '{t}'"),
                        e => e.to_string(),
                    };
                    reply(out, t, error_value(ename, evalue), vec![]);
                }
                return;
            }
        };
        let t = req.reply_type();
        match req {
            Request::Connection => {
                let engines = self.reg.engines().map(|e| (e.id.to_string(), e.uuid.clone())).collect();
                reply(out, t, to_value(&ConnectionReply { status: "ok".into(), engines }), vec![]);
            }
            Request::Registration(req) if self.reg.len() + self.reg.pending_len() >= self.s.max_engines => {
                let evalue = format!(
                    "the controller has room for {} engines: its file-descriptor limit (ulimit -n) is reached; raise it and restart the controller",
                    self.s.max_engines
                );
                warn!(uuid = %req.uuid, engines = self.reg.len(), "registration refused: {evalue}");
                reply(out, t, error_value("RuntimeError", evalue), vec![]);
            }
            Request::Registration(req) => match self.reg.request(&req.uuid, req.id, now.at + self.s.registration_timeout) {
                Ok(id) => {
                    info!(engine = %id, uuid = %req.uuid, "registration requested; waiting for its heart");
                    let r = RegistrationReply {
                        id: id.0,
                        status: "ok".into(),
                        hb_period: self.s.hb_period.as_millis() as u64,
                        connection_info: self.s.engine_ports.clone(),
                    };
                    reply(out, t, to_value(&r), vec![]);
                    self.next_probe = None;
                }
                Err(evalue) => {
                    warn!(uuid = %req.uuid, "registration refused: {evalue}");
                    reply(out, t, error_value("KeyError", evalue), vec![]);
                }
            },
            Request::Unregistration(UnregistrationRequest { id: Some(id) }) if id >= 0 => self.unregister(EngineId(id as u64), now, out),
            Request::Unregistration(_) => debug!("unregistration_request without an id ignored"),
            Request::Queue(q) => match self.queue_status(&q) {
                Ok(c) => reply(out, t, c, vec![]),
                Err(c) => reply(out, "hub_error", c, vec![]),
            },
            Request::Result(r) => {
                let (c, bufs) = self.results(&r);
                reply(out, t, c, bufs);
            }
            Request::History => {
                let c = match self.store.history() {
                    Ok(h) => vmap! {"status" => "ok", "history" => Value::Array(h.into_iter().map(Value::from).collect())},
                    Err(e) => store_error(&e),
                };
                reply(out, t, c, vec![]);
            }
            Request::Db(req) => {
                let (c, bufs) = self.db_query(&req);
                reply(out, t, c, bufs);
            }
            Request::Purge(req) => {
                let (c, removed) = self.purge(&req);
                reply(out, t, c, vec![]);
                if removed > 0 {
                    out.push(HubOut::ReleaseMemory);
                }
            }
            Request::Resubmit(req) => match self.resubmit(&req, now.wall) {
                Ok((submits, mapping)) => {
                    for o in submits {
                        out.push(o);
                    }
                    let c = vmap! {"status" => "ok", "resubmitted" => Value::Map(mapping.iter().map(|(o, n)| (o.clone(), Value::from(n.as_str()))).collect())};
                    reply(out, t, c, vec![]);
                    // As Python: the old records learn their new ids after the reply.
                    for (old, new) in mapping {
                        let r = self.store.update(&old, Missing::Skip, &mut |r| r.resubmitted = Some(new.clone()));
                        self.store_failed("resubmitted marker", &old, r);
                    }
                }
                Err(c) => reply(out, t, c, vec![]),
            },
            Request::Load => {
                let mut c = vmap! {"status" => "ok"};
                for e in self.reg.engines() {
                    c.insert(e.id.to_string(), Value::from(self.book.load(e.id) as i64));
                }
                reply(out, t, c, vec![]);
            }
            Request::Shutdown => {
                info!("shutdown requested by a client");
                reply(out, t, vmap! {"status" => "ok"}, vec![]);
                out.push(HubOut::Notify { msg_type: "shutdown_notification", content: vmap! {"status" => "ok"}, parent: raw_header.to_vec() });
                out.push(HubOut::Shutdown);
            }
            Request::BecomeDask => reply(out, t, error_value("NotImplementedError", "ippx does not embed a dask scheduler"), vec![]),
            Request::StopDistributed => reply(out, t, vmap! {"status" => "ok"}, vec![]),
        }
    }

    fn queue_status(&mut self, q: &QueueRequest) -> Result<Value, Value> {
        let targets: Vec<EngineId> = match &q.targets {
            Value::Nil => self.reg.ever().collect(),
            one @ (Value::Int(_) | Value::UInt(_) | Value::Str(_)) => self.resolve_targets(std::slice::from_ref(one))?,
            Value::Array(list) => self.resolve_targets(list)?,
            other => return Err(error_value("TypeError", format!("bad targets: {other:?}"))),
        };
        let mut c = vmap! {"status" => "ok"};
        let empty = EngineQueues::default();
        let list = |s: &mut dyn Iterator<Item = &String>| Value::Array(s.map(|m| Value::from(m.as_str())).collect());
        for t in targets {
            let completed = match (q.verbose, self.book.queues(t).and_then(|e| e.uuid.clone())) {
                (true, Some(uuid)) => self.completed_in_store(&uuid),
                _ => Vec::new(),
            };
            let eq = self.book.queues(t).unwrap_or(&empty);
            let entry = if q.verbose {
                vmap! {"queue" => list(&mut eq.queue.iter()), "completed" => list(&mut completed.iter()), "tasks" => list(&mut eq.tasks.iter())}
            } else {
                vmap! {"queue" => eq.queue.len() as i64, "completed" => eq.completed as i64, "tasks" => eq.tasks.len() as i64}
            };
            c.insert(t.to_string(), entry);
        }
        let unassigned = if q.verbose { list(&mut self.book.unassigned().iter()) } else { Value::from(self.book.unassigned().len() as i64) };
        c.insert("unassigned", unassigned);
        Ok(c)
    }

    /// The msg_ids of completed tasks that ran on engine `uuid` and that the store still
    /// holds, in completion order: what a verbose `queue_status` lists as `completed`.
    /// Stock lists every one since the controller started, from a list that grows by a
    /// string per task forever; the count (non-verbose) stays exact here. As stock, load-
    /// balanced tasks that were aborted are not counted.
    fn completed_in_store(&mut self, uuid: &str) -> Vec<String> {
        let q = Query::default().with(Field::EngineUuid, Op::Eq, Q::Str(uuid.to_owned())).with(Field::Completed, Op::Ne, Q::Nil);
        let Ok(mut recs) = self.store.find(&q, Fields::of(&[Field::Completed, Field::Queue, Field::ResultMetadata])) else {
            return Vec::new(); // --nodb: nothing to list
        };
        recs.retain(|r| !(r.queue.as_deref() == Some("task") && r.result_metadata.get("status").as_str() == Some("aborted")));
        recs.sort_by_key(|r| r.completed);
        recs.into_iter().map(|r| r.msg_id).collect()
    }

    fn resolve_targets(&self, items: &[Value]) -> Result<Vec<EngineId>, Value> {
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        for t in items {
            let id = match t {
                Value::Str(s) => self.reg.by_uuid(s).map(|e| e.id),
                other => other.as_i64().and_then(|i| u64::try_from(i).ok()).map(EngineId),
            };
            match id {
                Some(id) if self.reg.was_registered(id) => ok.push(id),
                _ => bad.push(match t {
                    Value::Str(s) => format!("'{s}'"),
                    other => other.as_i64().map_or_else(|| format!("{other:?}"), |i| i.to_string()),
                }),
            }
        }
        if !bad.is_empty() {
            return Err(error_value("IndexError", format!("No Such Engine: [{}]", bad.join(", "))));
        }
        if ok.is_empty() {
            return Err(error_value("IndexError", "No Engines Registered"));
        }
        Ok(ok)
    }

    /// `result_request` (docs/protocol.md §4.3.2): ids sorted, buffers in that order.
    fn results(&mut self, r: &ResultRequest) -> (Value, Vec<Vec<u8>>) {
        let mut ids: Vec<&String> = r.msg_ids.iter().collect();
        ids.sort();
        ids.dedup();
        let fields = if r.status_only { Fields::of(&[Field::Completed]) } else { Fields::result_entry() };
        let mut pending = Vec::new();
        let mut completed = Vec::new();
        let mut entries = Vec::new();
        let mut buffers = Vec::new();
        for id in ids {
            if self.book.is_pending(id) {
                pending.push(Value::from(id.as_str()));
                continue;
            }
            let known_done = self.book.is_completed(id);
            if known_done && r.status_only {
                completed.push(Value::from(id.as_str()));
                continue;
            }
            let rec = match self.store.get(id, fields) {
                Ok(rec) => rec,
                // NoDB: status from the hub's own sets only, as stock.
                Err(StoreError::NoData) if r.status_only => None,
                Err(e) => return (store_error(&e), vec![]),
            };
            let done = known_done || rec.as_ref().is_some_and(|r| r.completed.is_some());
            if done {
                completed.push(Value::from(id.as_str()));
                if !r.status_only {
                    match rec {
                        Some(mut rec) => {
                            entries.push((id.clone(), rec.result_entry()));
                            buffers.append(&mut rec.result_buffers);
                        }
                        None => {
                            let why = if self.store.was_culled(id) { "culled by the store's limits" } else { "purged" };
                            return (error_value("KeyError", format!("'No such message: {id}' ({why})")), vec![]);
                        }
                    }
                }
            } else if rec.is_some() {
                pending.push(Value::from(id.as_str()));
            } else {
                return (error_value("KeyError", format!("'No such message: {id}'")), vec![]);
            }
        }
        let mut c = vmap! {"status" => "ok", "pending" => Value::Array(pending), "completed" => Value::Array(completed)};
        for (id, e) in entries {
            c.insert(id, e);
        }
        (c, buffers)
    }

    /// `db_request` (docs/protocol.md §4.3.4): records matching the query, with `keys` (null: all but
    /// the buffers); buffers follow per record, request buffers then result buffers.
    fn db_query(&mut self, req: &Value) -> (Value, Vec<Vec<u8>>) {
        let q = match Query::parse(req.get("query")) {
            Ok(q) => q,
            Err(e) => return (error_value(e.ename, e.evalue), vec![]),
        };
        let keys: Option<Vec<String>> = match req.get("keys") {
            Value::Nil => None,
            Value::Str(k) => Some(vec![k.clone()]),
            Value::Array(items) => {
                let mut keys = Vec::with_capacity(items.len());
                for k in items {
                    match k.as_str() {
                        Some(k) => keys.push(k.to_owned()),
                        None => return (error_value("TypeError", format!("keys must be strings, not {k:?}")), vec![]),
                    }
                }
                Some(keys)
            }
            other => return (error_value("TypeError", format!("keys must be a list of strings, not {other:?}")), vec![]),
        };
        // The record keys in reply order; `msg_id` always first.
        let mut out_fields = vec![Field::MsgId];
        let (want_bufs, want_rbufs) = match keys.as_deref() {
            None | Some([]) => {
                out_fields = Fields::all_but_buffers().iter().collect();
                (false, false)
            }
            Some(keys) => {
                let bad: Vec<String> = keys.iter().filter(|k| Field::from_name(k).is_none()).map(|k| format!("'{k}'")).collect();
                if !bad.is_empty() {
                    return (error_value("KeyError", format!("Bad record key(s): [{}]", bad.join(", "))), vec![]);
                }
                for f in keys.iter().filter_map(|k| Field::from_name(k)) {
                    if !out_fields.contains(&f) {
                        out_fields.push(f);
                    }
                }
                (out_fields.contains(&Field::Buffers), out_fields.contains(&Field::ResultBuffers))
            }
        };
        let records = match self.store.find(&q, Fields::of(&out_fields)) {
            Ok(r) => r,
            Err(e) => return (store_error(&e), vec![]),
        };
        let mut buffers = Vec::new();
        let mut buffer_lens = Vec::new();
        let mut result_buffer_lens = Vec::new();
        let mut out = Vec::with_capacity(records.len());
        for mut rec in records {
            let m: Vec<(String, Value)> = out_fields
                .iter()
                .filter(|f| !matches!(f, Field::Buffers | Field::ResultBuffers))
                .map(|f| (f.name().to_owned(), rec.value(*f)))
                .collect();
            out.push(Value::Map(m));
            if want_bufs {
                buffer_lens.push(Value::from(rec.buffers.len() as i64));
                buffers.append(&mut rec.buffers);
            }
            if want_rbufs {
                result_buffer_lens.push(Value::from(rec.result_buffers.len() as i64));
                buffers.append(&mut rec.result_buffers);
            }
        }
        let lens = |want: bool, v: Vec<Value>| if want { Value::Array(v) } else { Value::Nil };
        let c = vmap! {
            "status" => "ok",
            "records" => Value::Array(out),
            "buffer_lens" => lens(want_bufs, buffer_lens),
            "result_buffer_lens" => lens(want_rbufs, result_buffer_lens),
        };
        (c, buffers)
    }

    /// `purge_request` (docs/protocol.md §4.3.5). The hub's own counters are not purged.
    fn purge(&mut self, req: &Value) -> (Value, usize) {
        let mut removed = 0;
        let completed = || Query::default().with(Field::Completed, Op::Ne, Q::Nil);
        let ids: Vec<String> = match req.get("msg_ids") {
            Value::Str(s) if s == "all" => {
                return match self.store.remove(&completed()) {
                    Ok(n) => {
                        info!(records = n, "purged all completed records");
                        (vmap! {"status" => "ok"}, n)
                    }
                    Err(e) => (store_error(&e), 0),
                };
            }
            Value::Str(s) => vec![s.clone()],
            Value::Array(items) => items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
            _ => Vec::new(),
        };
        if let Some(p) = ids.iter().find(|id| self.book.is_pending(id)) {
            return (error_value("IndexError", format!("msg pending: '{p}'")), 0);
        }
        if !ids.is_empty() {
            match self.store.remove(&Query::ids(&ids)) {
                Ok(n) => {
                    info!(records = n, "purged records by id");
                    removed += n;
                }
                Err(e) => return (store_error(&e), removed),
            }
        }
        let engine_ids: Vec<Value> = match req.get("engine_ids") {
            Value::Array(a) => a.clone(),
            Value::Nil => Vec::new(),
            one => vec![one.clone()],
        };
        for eid in engine_ids {
            let uuid = eid.as_i64().and_then(|i| u64::try_from(i).ok()).and_then(|i| self.reg.get(EngineId(i))).map(|e| e.uuid.clone());
            let Some(uuid) = uuid else {
                let shown = eid.as_i64().map_or_else(|| format!("{eid:?}"), |i| i.to_string());
                return (error_value("IndexError", format!("No such engine: {shown}")), removed);
            };
            match self.store.remove(&completed().with(Field::EngineUuid, Op::Eq, Q::Str(uuid))) {
                Ok(n) => {
                    info!(records = n, engine = ?eid, "purged an engine's records");
                    removed += n;
                }
                Err(e) => return (store_error(&e), removed),
            }
        }
        (vmap! {"status" => "ok"}, removed)
    }

    /// A msg_id for a message the hub sends itself (Python's `{session}_{pid}_{n}` shape).
    fn new_msg_id(&mut self) -> String {
        let id = format!("{}_{}", self.id_prefix, self.id_counter);
        self.id_counter += 1;
        id
    }

    /// `resubmit_request` (docs/protocol.md §4.3.6): validates, then builds the new messages (returned
    /// as `HubOut::Submit`s for the task scheduler) and their records. Returns the
    /// submissions and the `old → new` mapping, or the error content.
    fn resubmit(&mut self, req: &Value, wall: Timestamp) -> Result<Resubmission, Value> {
        let mut ids: Vec<String> = match req.get("msg_ids") {
            Value::Str(s) => vec![s.clone()],
            Value::Array(items) => items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
            other => return Err(error_value("TypeError", format!("msg_ids must be a list of strings, not {other:?}"))),
        };
        let mut seen = std::collections::HashSet::new();
        ids.retain(|id| seen.insert(id.clone()));
        let records =
            self.store.find(&Query::ids(&ids), Fields::of(&[Field::Header, Field::Content, Field::Buffers])).map_err(|e| store_error(&e))?;
        if records.len() > ids.len() {
            return Err(error_value("RuntimeError", "DB appears to be in an inconsistent state. More matching records were found than should exist"));
        }
        let found: std::collections::HashSet<&str> = records.iter().map(|r| r.msg_id.as_str()).collect();
        let missing: Vec<String> = ids.iter().filter(|id| !found.contains(id.as_str())).map(|id| format!("'{id}'")).collect();
        if !missing.is_empty() {
            return Err(error_value("KeyError", format!("No such msg(s): [{}]", missing.join(", "))));
        }
        if let Some(r) = records.iter().find(|r| r.header.get("msg_type").as_str().is_none()) {
            return Err(error_value("ValueError", format!("cannot resubmit {}: its request was never recorded", r.msg_id)));
        }
        let mut submits = Vec::with_capacity(records.len());
        let mut mapping = Vec::with_capacity(records.len());
        for rec in records {
            let new_id = self.new_msg_id();
            let date = format_iso(&wall);
            // The old header with only msg_id and date replaced.
            let mut hv = rec.header.clone();
            hv.insert("msg_id", Value::from(new_id.as_str()));
            hv.insert("date", Value::from(date.as_str()));
            let text = |k: &str| hv.get(k).as_str().unwrap_or_default().to_owned();
            let header = Header {
                msg_id: new_id.clone(),
                msg_type: text("msg_type"),
                username: text("username"),
                session: text("session"),
                date,
                version: hv.get("version").as_str().unwrap_or(PROTOCOL_VERSION).to_owned(),
            };
            debug!(old = %rec.msg_id, new = %new_id, "resubmitting through the task scheduler");
            submits.push(HubOut::Submit { header, content: rec.content.clone(), buffers: rec.buffers.clone() });
            self.book.submit_resubmission(new_id.clone());
            let mut fresh = Some(TaskRecord {
                msg_id: new_id.clone(),
                header: hv,
                metadata: Value::map(),
                content: rec.content,
                buffers: rec.buffers,
                submitted: Some(wall),
                ..Default::default()
            });
            let r = self.store.update(&new_id, Missing::Create, &mut |r| {
                if let Some(f) = fresh.take() {
                    if r.header.is_nil() && r.submitted.is_none() {
                        let io = std::mem::take(r);
                        *r = f;
                        keep_io(r, io);
                    } else {
                        r.merge_request(f);
                    }
                }
            });
            self.store_failed("resubmission", &new_id, r);
            mapping.push((rec.msg_id, new_id));
        }
        Ok((submits, mapping))
    }
}
