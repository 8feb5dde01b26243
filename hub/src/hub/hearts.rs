//! Engines coming and going: heartbeats completing registrations, re-admission of an
//! engine whose heart comes back, unregistration and the direct requests stranded on a
//! lost engine.

use super::*;

impl Hub {
    pub fn pong(&mut self, heart: &[u8], payload: &[u8], out: &mut impl Outbox) {
        if !self.heart.pong(heart, payload) {
            return;
        }
        self.status.beat(heart, Instant::now());
        // Complete at once rather than at the next beat: registration then takes one
        // round trip after the engine's heart starts.
        if let Ok(uuid) = std::str::from_utf8(heart) {
            if self.reg.is_pending(uuid) {
                let uuid = uuid.to_owned();
                self.complete_registration(&uuid, out);
            } else if self.reg.is_lost(uuid) {
                let uuid = uuid.to_owned();
                self.readmit(&uuid, Now::system(), out);
            }
        }
    }

    pub(super) fn complete_registration(&mut self, uuid: &str, out: &mut impl Outbox) -> bool {
        let Some(e) = self.reg.complete(uuid) else { return false };
        info!(engine = %e.id, uuid = %e.uuid, "engine registered");
        self.stats.registered += 1;
        self.admitted(&e, Instant::now(), out);
        true
    }

    /// An engine is in the registry now (registered or re-admitted): the status page, the
    /// book, clients and schedulers (`registration_notification`) and the state file learn it.
    fn admitted(&mut self, e: &Engine, at: Instant, out: &mut impl Outbox) {
        self.status.engine_registered(e.id, &e.uuid, at);
        self.book.engine(e.id, &e.uuid);
        notify(out, "registration_notification", e);
        out.push(HubOut::SaveState(self.reg.state()));
    }

    /// A lost engine's heart answers again (a link came back, a SIGSTOPped engine was
    /// continued): it is registered again under its old id, and clients and the
    /// schedulers learn it as from a new registration (ipython #6444, #9882: on stock it
    /// stays an orphan, alive and never used again). Returns whether it was re-admitted.
    pub(super) fn readmit(&mut self, uuid: &str, now: Now, out: &mut impl Outbox) -> bool {
        let Some(e) = self.reg.readmit(uuid) else { return false };
        // What it had queued when it was lost fails now, as its clients were told.
        for (lost, ids) in self.book.fail_stranded_engine(e.id) {
            self.fail_stranded_direct(&lost, ids, now);
        }
        warn!(engine = %e.id, uuid = %e.uuid, "engine re-admitted: its heart answers again");
        self.stats.readmitted += 1;
        self.admitted(&e, now.at, out);
        true
    }

    pub fn unregister(&mut self, id: EngineId, now: Now, out: &mut impl Outbox) {
        match self.reg.unregister(id) {
            Unregistered::Engine(e) => {
                info!(engine = %e.id, uuid = %e.uuid, "engine unregistered");
                self.stats.unregistered += 1;
                self.status.engine_lost(&e.uuid, now.at);
                self.heart.forget(e.uuid.as_bytes());
                out.push(HubOut::SaveState(self.reg.state()));
                notify(out, "unregistration_notification", &e);
                self.give_up_inflight(e.id, true, now);
                self.book.strand(now.at + self.s.registration_timeout, e);
            }
            Unregistered::Pending(p) => info!(engine = %p.id, "pending registration cancelled"),
            Unregistered::Unknown => {
                // A lost engine's nanny saying goodbye: it will not come back.
                self.reg.forget_lost(id);
                debug!(engine = %id, "unregistration of an unknown engine ignored");
            }
        }
    }

    /// Direct requests still queued on a dead engine get a synthetic EngineError record
    /// (docs/protocol.md §3.6). Clients synthesise their own; this is for the hub's bookkeeping.
    pub(super) fn fail_stranded_direct(&mut self, e: &Engine, ids: Vec<(String, Option<Instant>)>, at: Now) {
        for (msg_id, seen) in ids {
            *self.stats.completed.entry(("mux", "error")).or_default() += 1;
            let now = at.wall;
            let evalue = format!("Engine {} died while running task '{msg_id}'", e.id);
            self.status.stranded(&msg_id, e.id, seen, evalue.clone(), at.at);
            self.fail_record(&msg_id, error_value("EngineError", evalue), Some(e.uuid.clone()), None, now, "stranded request");
        }
    }

    /// Completes the record of a request that will never get its reply with an error
    /// result the hub made: the stranded requests of a lost engine, and those in flight
    /// across a restart ([`super::inflight`]). `engine_uuid` is recorded when known;
    /// `result_metadata`, when given, replaces the record's.
    pub(super) fn fail_record(
        &mut self,
        msg_id: &str,
        content: Value,
        engine_uuid: Option<String>,
        result_metadata: Option<Value>,
        wall: Timestamp,
        what: &str,
    ) {
        let mut update = Some((content, result_metadata));
        let r = self.store.update(msg_id, Missing::Skip, &mut |r| {
            let Some((content, md)) = update.take() else { return };
            r.result_content = content;
            r.result_header = vmap! {"engine" => engine_uuid.clone().unwrap_or_default(), "date" => format_iso(&wall)};
            r.result_buffers = Vec::new();
            if let Some(md) = md {
                r.result_metadata = md;
            }
            r.completed = Some(wall);
            if engine_uuid.is_some() {
                r.engine_uuid = engine_uuid.clone();
            }
        });
        self.store_failed(what, msg_id, r);
    }
}

/// A `registration_notification` or `unregistration_notification` for engine `e`.
fn notify(out: &mut impl Outbox, msg_type: &'static str, e: &Engine) {
    out.push(HubOut::Notify { msg_type, content: to_value(&EngineNotification { id: e.id.0, uuid: e.uuid.clone() }), parent: Vec::new() });
}
