//! Newtype ids, so an engine id can never be confused with a count or a msg_id with a uuid.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Integer engine id handed out by the hub. Never reused within a controller lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EngineId(pub u64);

impl fmt::Display for EngineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A message id as found in `header.msg_id`. Opaque to the controller.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MsgId(pub String);

impl MsgId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for MsgId {
    fn from(s: &str) -> Self {
        MsgId(s.to_owned())
    }
}

impl From<String> for MsgId {
    fn from(s: String) -> Self {
        MsgId(s)
    }
}
