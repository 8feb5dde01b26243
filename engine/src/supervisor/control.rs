//! The control channel: abort, clear, shutdown, interrupt, signal and kernel_info
//! requests, answered in arrival order relative to the shell (docs/protocol.md §4.5).

use super::*;

impl Supervisor {
    pub(super) fn control_reply<C: serde::Serialize>(&mut self, env: &Envelope<Message>, reply_type: &str, content: &C) {
        let idents = copy_frames(env.idents());
        match self.session.serialize(idents, reply_type, Parent::Raw(env.header_bytes()), &EngineMetadata { engine: &self.uuid }, content, vec![]) {
            Ok((_, f)) => self.send_shell_or_control(Channel::Control, f),
            Err(e) => tracing::error!("cannot pack {reply_type}: {e}"),
        }
    }

    /// Handles a control request; returns true when the engine must shut down.
    pub(super) fn on_control(&mut self, frames: Vec<Message>) -> bool {
        let Some((env, header)) = self.decode(Channel::Control, frames) else {
            return false;
        };
        let content: Value = match self.session.unpack(env.content_bytes()) {
            Ok(c) => c,
            Err(e) => {
                self.stats.count_drop("malformed");
                tracing::warn!("control: {} with unreadable content: {e}", header.msg_type);
                return false;
            }
        };
        let parent = env.header_bytes().to_vec();
        match header.msg_type.as_str() {
            "clear_request" => {
                let job = self.make_job(Kind::Clear, Channel::Control, &env, header);
                self.queue.push_back(job);
                return false;
            }
            "abort_request" => {
                self.status("busy", &parent);
                let ids: Vec<String> = match content.get("msg_ids") {
                    Value::Str(s) => vec![s.clone()],
                    Value::Array(a) => a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
                    _ => Vec::new(),
                };
                if ids.is_empty() {
                    self.abort_queued_executes();
                } else {
                    self.aborted.extend(ids);
                }
                self.control_reply(&env, "abort_reply", &vmap! {"status" => "ok"});
                self.status("idle", &parent);
            }
            "interrupt_request" => {
                self.status("busy", &parent);
                if self.running.is_some() {
                    if let Some(w) = &self.worker {
                        w.signal(libc::SIGINT);
                    }
                }
                self.control_reply(&env, "interrupt_reply", &vmap! {"status" => "ok"});
                self.status("idle", &parent);
            }
            "signal_request" => {
                // The nanny's request (its reply type is the literal "_request": stock).
                let sig = match content.get("sig") {
                    Value::Int(n) => Some(*n as i32),
                    Value::UInt(n) => Some(*n as i32),
                    Value::Str(s) => crate::signals::by_name(s),
                    _ => None,
                };
                let reply = match sig {
                    Some(sig) => {
                        tracing::info!("signal_request: sending signal {sig} to the worker");
                        if let Some(w) = &self.worker {
                            w.signal(sig);
                        }
                        vmap! {"status" => "ok"}
                    }
                    None => ippx_protocol::content::ErrorContent::new("ValueError", format!("bad signal: {:?}", content.get("sig"))).to_value(),
                };
                self.control_reply(&env, "_request", &reply);
            }
            "kernel_info_request" => {
                self.status("busy", &parent);
                let mut info = vmap! {"status" => "ok", "protocol_version" => "5.3"};
                if let Some(m) = self.kernel_info.as_map() {
                    for (k, v) in m {
                        if k != "pid" {
                            info.insert(k.clone(), v.clone());
                        }
                    }
                }
                info.insert("help_links", Value::Array(vec![]));
                info.insert("supported_features", Value::Array(vec![]));
                self.control_reply(&env, "kernel_info_reply", &info);
                self.status("idle", &parent);
            }
            "shutdown_request" => {
                self.status("busy", &parent);
                let restart = content.get("restart").truthy();
                let reply = vmap! {"status" => "ok", "restart" => restart};
                self.control_reply(&env, "shutdown_reply", &reply);
                // The same content on IOPub, which makes the hub unregister the engine.
                self.publish("shutdown", "shutdown_reply", &parent, &reply);
                self.status("idle", &parent);
                return true;
            }
            other => {
                self.stats.count_drop("unknown_type");
                tracing::warn!("control: unsupported request {other:?}, dropped");
            }
        }
        false
    }
}
