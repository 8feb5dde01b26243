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
        self.status.engine_registered(e.id, &e.uuid, Instant::now());
        self.book.engine(e.id, &e.uuid);
        out.push(HubOut::Notify {
            msg_type: "registration_notification",
            content: to_value(&EngineNotification { id: e.id.0, uuid: e.uuid.clone() }),
            parent: Vec::new(),
        });
        out.push(HubOut::SaveState(self.reg.state()));
        true
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
        self.status.engine_registered(e.id, &e.uuid, now.at);
        self.book.engine(e.id, &e.uuid);
        out.push(HubOut::Notify {
            msg_type: "registration_notification",
            content: to_value(&EngineNotification { id: e.id.0, uuid: e.uuid.clone() }),
            parent: Vec::new(),
        });
        out.push(HubOut::SaveState(self.reg.state()));
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
                out.push(HubOut::Notify {
                    msg_type: "unregistration_notification",
                    content: to_value(&EngineNotification { id: e.id.0, uuid: e.uuid.clone() }),
                    parent: Vec::new(),
                });
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
            let content = error_value("EngineError", evalue);
            let uuid = e.uuid.clone();
            let mut content = Some(content);
            let r = self.store.update(&msg_id, Missing::Skip, &mut |r| {
                r.result_content = content.take().unwrap_or_default();
                r.result_header = vmap! {"engine" => uuid.clone(), "date" => format_iso(&now)};
                r.result_buffers = Vec::new();
                r.completed = Some(now);
                r.engine_uuid = Some(uuid.clone());
            });
            self.store_failed("stranded request", &msg_id, r);
        }
    }
}
