//! Watches the hub like a client does: a SUB on `notification` (registration and
//! unregistration notifications, with the time each arrived) and a DEALER on
//! `registration` for `connection_request` polls, which catch anything the SUB missed.

use crate::conn::Endpoints;
use anyhow::Result;
use ippx_protocol::content::{ConnectionReply, EngineNotification};
use ippx_protocol::{Envelope, Parent, Session, Value};
use ippx_transport::{self as tp, zmq, zmq::Socket, zmq::SocketType};
use std::collections::{HashMap, HashSet};
use std::time::Instant;

pub struct Watcher {
    _ctx: zmq::Context,
    sub: Socket,
    query: Socket,
    session: Session,
    /// uuid → when its `registration_notification` arrived (or a poll first listed it).
    pub registered: HashMap<String, Instant>,
    pub unregistered: HashSet<String>,
    /// uuids first seen through a `connection_request` poll (the SUB missed them).
    pub seen_by_poll: usize,
}

impl Watcher {
    pub fn new(ep: &Endpoints, session: Session) -> Result<Self> {
        let ctx = zmq::Context::new();
        let sub = tp::socket(&ctx, SocketType::SUB, None)?;
        tp::connect(&sub, &ep.client_url(ep.client.notification))?;
        let query = tp::socket(&ctx, SocketType::DEALER, None)?;
        tp::connect(&query, &ep.client_url(ep.client.registration))?;
        Ok(Watcher { _ctx: ctx, sub, query, session, registered: HashMap::new(), unregistered: HashSet::new(), seen_by_poll: 0 })
    }

    /// Sends a `connection_request`; the reply is handled by [`Watcher::pump`].
    pub fn poll_hub(&mut self) -> Result<()> {
        let (_, f) = self.session.serialize(vec![], "connection_request", Parent::None, &Value::map(), &Value::map(), vec![])?;
        let _ = tp::send(&self.query, f);
        Ok(())
    }

    /// Waits up to `timeout_ms` for traffic and handles all of it.
    pub fn pump(&mut self, timeout_ms: i64) -> Result<()> {
        let r = tp::poll(&[&self.sub, &self.query], timeout_ms)?;
        if r[0] {
            while let Some(frames) = tp::try_recv(&self.sub)? {
                let now = Instant::now();
                let Ok(env) = Envelope::parse(frames) else {
                    continue;
                };
                let Ok(h) = self.session.header(&env) else {
                    continue;
                };
                let Ok(n) = self.session.unpack::<EngineNotification>(env.content_bytes()) else {
                    continue;
                };
                match h.msg_type.as_str() {
                    "registration_notification" => {
                        self.registered.entry(n.uuid).or_insert(now);
                    }
                    "unregistration_notification" => {
                        self.unregistered.insert(n.uuid);
                    }
                    _ => {}
                }
            }
        }
        if r[1] {
            while let Some(frames) = tp::try_recv(&self.query)? {
                let now = Instant::now();
                let Ok(env) = Envelope::parse(frames) else {
                    continue;
                };
                let Ok(reply) = self.session.unpack::<ConnectionReply>(env.content_bytes()) else {
                    continue;
                };
                for uuid in reply.engines.into_values() {
                    if let std::collections::hash_map::Entry::Vacant(v) = self.registered.entry(uuid) {
                        v.insert(now);
                        self.seen_by_poll += 1;
                    }
                }
            }
        }
        Ok(())
    }

    pub fn count_of(&self, uuids: &[String]) -> usize {
        uuids.iter().filter(|u| self.registered.contains_key(*u)).count()
    }
}
