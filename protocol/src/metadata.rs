//! Request and reply metadata of `apply_request`/`execute_request` and their replies: the
//! contract between clients, schedulers and engines (docs/protocol.md, "metadata").
//!
//! Clients put scheduling hints and echo fields in the request metadata; the engine copies
//! the echo fields into its reply metadata, adds `started`, `engine`, `status`, and
//! `dependencies_met` (false when the task raised `UnmetDependency`), and the schedulers
//! read `status` and `dependencies_met` back.

use crate::value::Value;
use serde::{Deserialize, Serialize};

/// What a request's metadata may carry. Missing keys take Python's defaults; the
/// scheduling hints stay loose `Value`s because clients send lists, strings, numbers or
/// `None` there.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RequestMetadata {
    pub is_broadcast: bool,
    pub is_coalescing: bool,
    pub original_msg_id: Value,
    pub label: Value,
    pub targets: Value,
    pub after: Value,
    pub follow: Value,
    pub timeout: Value,
    pub retries: Value,
}

/// The part of any engine's reply metadata a scheduler reads. Loose `Value`s: stock
/// engines, ippx-engine and older ipyparallel versions all answer, and a missing
/// `dependencies_met` means they were met (Python's `md.get('dependencies_met', True)`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ReplyStatus {
    #[serde(default = "met")]
    pub dependencies_met: Value,
    #[serde(default)]
    pub status: Value,
}

fn met() -> Value {
    Value::Bool(true)
}

/// `engine_info` of an error reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngineInfo {
    pub engine_uuid: String,
    pub engine_id: i64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub method: Option<String>,
}

/// The reply metadata, in stock's key order (`init_metadata`, then `finish_metadata`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplyMetadata {
    pub started: String,
    pub dependencies_met: bool,
    pub engine: String,
    pub is_broadcast: bool,
    pub is_coalescing: bool,
    /// `""` unless the request named one (broadcast coalescing).
    pub original_msg_id: Value,
    pub label: Value,
    /// `ok`, `error` or `aborted`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub engine_info: Option<EngineInfo>,
}

impl ReplyMetadata {
    /// The metadata at the start of handling `req`: status still `ok`.
    pub fn start(req: &RequestMetadata, engine: &str, started: String) -> Self {
        ReplyMetadata {
            started,
            dependencies_met: true,
            engine: engine.to_owned(),
            is_broadcast: req.is_broadcast,
            is_coalescing: req.is_coalescing,
            original_msg_id: if req.original_msg_id.is_nil() { Value::from("") } else { req.original_msg_id.clone() },
            label: req.label.clone(),
            status: "ok".to_owned(),
            engine_info: None,
        }
    }

    /// `finish_metadata`: the outcome's status, and on error the engine info and whether
    /// the error was an unmet dependency.
    pub fn finish(&mut self, status: &str, ename: Option<&str>, info: impl FnOnce() -> EngineInfo) {
        self.status = status.to_owned();
        if status == "error" {
            if ename == Some("UnmetDependency") {
                self.dependencies_met = false;
            }
            self.engine_info = Some(info());
        }
    }
}

/// The metadata of every other message an engine sends: just its uuid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngineMetadata<'a> {
    pub engine: &'a str,
}

/// The `{name, text}` content of an IOPub `stream` message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamContent<'a> {
    pub name: &'a str,
    pub text: &'a str,
}

/// The content of an IOPub `status` message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExecutionState<'a> {
    pub execution_state: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Packer;

    #[test]
    fn request_defaults_as_python() {
        for p in [Packer::Json, Packer::Msgpack] {
            let m: RequestMetadata = p.unpack(&p.pack(&Value::map()).expect("pack")).expect("unpack");
            assert!(!m.is_broadcast && !m.is_coalescing);
            let r = ReplyMetadata::start(&m, "uuid", "t".into());
            let v: Value = p.unpack(&p.pack(&r).expect("pack")).expect("unpack");
            assert_eq!(v.get("original_msg_id").as_str(), Some(""));
            assert!(v.get("label").is_nil());
            assert!(v.get("engine_info").is_nil());
        }
    }

    #[test]
    fn echo_fields_are_copied_and_unmet_dependency_flagged() {
        let req: RequestMetadata = serde_json::from_str(
            r#"{"is_broadcast": true, "is_coalescing": true, "original_msg_id": "abc", "label": "L", "after": [], "retries": 2}"#,
        )
        .expect("json");
        let mut r = ReplyMetadata::start(&req, "u", "2026-01-01T00:00:00.000000Z".into());
        assert!(r.is_broadcast && r.is_coalescing);
        assert_eq!(r.label.as_str(), Some("L"));
        r.finish("error", Some("UnmetDependency"), || EngineInfo { engine_uuid: "u".into(), engine_id: 3, method: None });
        assert!(!r.dependencies_met);
        let v: Value = serde_json::from_str(&serde_json::to_string(&r).expect("ser")).expect("de");
        assert_eq!(v.get("engine_info").get("engine_id").as_i64(), Some(3));
        assert!(v.get("engine_info").get("method").is_nil());
        assert_eq!(v.get("status").as_str(), Some("error"));
    }
}
