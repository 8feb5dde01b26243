//! Typed content of every message the controller reads or writes.
//!
//! Fields that Python may send as `None` are `Option`s; everything the controller emits
//! follows the shapes in the spec (section 3 and 4) exactly, since stock clients index
//! these dicts directly.

use crate::value::Value;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Error content (docs/protocol.md §1.6). Clients raise `RemoteError(ename, evalue, ...)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorContent {
    pub status: String,
    pub ename: String,
    pub evalue: String,
    pub traceback: Vec<String>,
    pub engine_info: Value,
}

impl ErrorContent {
    pub fn new(ename: &str, evalue: impl Into<String>) -> Self {
        let evalue = evalue.into();
        let traceback = vec!["Traceback (most recent call last):\n".to_owned(), format!("ipyparallel controller (ippx): {ename}: {evalue}\n")];
        ErrorContent { status: "error".to_owned(), ename: ename.to_owned(), evalue, traceback, engine_info: Value::map() }
    }

    pub fn to_value(&self) -> Value {
        Value::Map(vec![
            ("status".into(), "error".into()),
            ("ename".into(), self.ename.clone().into()),
            ("evalue".into(), self.evalue.clone().into()),
            ("traceback".into(), Value::Array(self.traceback.iter().map(|s| Value::from(s.as_str())).collect())),
            ("engine_info".into(), self.engine_info.clone()),
        ])
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub status: String,
}

impl Status {
    pub fn ok() -> Self {
        Status { status: "ok".to_owned() }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegistrationRequest {
    pub uuid: String,
    /// Requested id (MPI rank or `--IPEngine.id`); Python sends it absent or null.
    #[serde(default)]
    pub id: Option<i64>,
}

/// The engine-side ports, as sent in `registration_reply.connection_info`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnginePorts {
    pub interface: String,
    pub registration: u16,
    pub control: u16,
    pub mux: u16,
    pub task: u16,
    pub iopub: u16,
    pub hb_ping: u16,
    pub hb_pong: u16,
    pub broadcast: Vec<u16>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegistrationReply {
    pub id: u64,
    pub status: String,
    /// Milliseconds.
    pub hb_period: u64,
    pub connection_info: EnginePorts,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnregistrationRequest {
    #[serde(default)]
    pub id: Option<i64>,
}

/// `registration_notification` / `unregistration_notification`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngineNotification {
    pub id: u64,
    pub uuid: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnectionReply {
    pub status: String,
    /// `{"<eid>": uuid}`: keys are strings because Python unpacks with strict map keys.
    pub engines: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueRequest {
    /// null, an int, a uuid string, or a list of those.
    #[serde(default)]
    pub targets: Value,
    #[serde(default)]
    pub verbose: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultRequest {
    #[serde(default)]
    pub msg_ids: Vec<String>,
    #[serde(default)]
    pub status_only: bool,
}

/// Sent by the task scheduler to the hub (monitor topic `tracktask`).
/// `engine_id` is the engine's uuid string despite its name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskDestination {
    pub msg_id: String,
    pub engine_id: String,
}

/// `new_heart` / `stopped_heart` content, kept for monitor compatibility.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hearts {
    pub hearts: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Packer;

    #[test]
    fn registration_request_accepts_missing_or_null_id() {
        let a: RegistrationRequest = Packer::Json.unpack(br#"{"uuid": "u"}"#).expect("a");
        let b: RegistrationRequest = Packer::Json.unpack(br#"{"uuid": "u", "id": null}"#).expect("b");
        let c: RegistrationRequest = Packer::Json.unpack(br#"{"uuid": "u", "id": 3}"#).expect("c");
        assert_eq!((a.id, b.id, c.id), (None, None, Some(3)));
    }

    #[test]
    fn error_content_has_every_key_clients_read() {
        let v = ErrorContent::new("KeyError", "x").to_value();
        for k in ["status", "ename", "evalue", "traceback", "engine_info"] {
            assert!(!v.get(k).is_nil(), "{k}");
        }
        let packed = Packer::Msgpack.pack(&ErrorContent::new("KeyError", "x")).expect("pack");
        let back: Value = Packer::Msgpack.unpack(&packed).expect("unpack");
        assert_eq!(back, v);
    }
}
