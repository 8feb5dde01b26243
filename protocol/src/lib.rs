//! The IPython Parallel wire protocol (jupyter_client `Session` framing as used by
//! ipyparallel 9.2.0). Pure: no sockets. Frames are anything that derefs to `[u8]`,
//! so the socket layer can hand in `zmq::Message`s without copying.

pub mod connection;
pub mod content;
pub mod datetime;
pub mod header;
pub mod ids;
pub mod idset;
pub mod metadata;
pub mod monitor;
pub mod packer;
pub mod session;
pub mod signing;
pub mod value;
pub mod wire;

pub use header::Header;
pub use ids::EngineId;
pub use monitor::MonitorTopic;
pub use packer::Packer;
pub use session::{Parent, Session, SessionConfig};
pub use signing::Signer;
pub use value::Value;
pub use wire::{Envelope, WireError, DELIM};

/// The protocol version every header we emit carries. A header without a `version`
/// makes Python receivers run the v4 adapter over it (docs/protocol.md §1.4).
pub const PROTOCOL_VERSION: &str = "5.4";
