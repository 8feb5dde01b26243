//! Newtype ids, so an engine id can never be confused with a count or a uuid. Message
//! ids stay `String`s: the controller never interprets them, and the hub keeps the
//! completed ones in a compact set (`idset`) rather than one value per id.

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
