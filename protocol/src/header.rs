//! The message header every signed message carries.

use serde::{Deserialize, Serialize};

/// A header as Python builds it (docs/protocol.md §1.4). Unknown keys on input are ignored; the
/// hub keeps the packed original wherever it must echo a header back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct Header {
    pub msg_id: String,
    pub msg_type: String,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub session: String,
    /// Kept as the sender wrote it; parse with [`crate::datetime::parse_iso`].
    #[serde(default)]
    pub date: String,
    #[serde(default)]
    pub version: String,
}

/// Only the fields a parent header is read for. `{}` parses to all-empty.
#[derive(Clone, Debug, PartialEq, Deserialize, Default)]
pub struct ParentRef {
    #[serde(default)]
    pub msg_id: String,
    #[serde(default)]
    pub msg_type: String,
    #[serde(default)]
    pub session: String,
}
