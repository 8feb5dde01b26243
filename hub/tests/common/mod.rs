//! Settings and peers shared by the hub's test files.
#![allow(dead_code)] // each test file uses a part

use ippx_hub::hub::HubSettings;
use ippx_hub::records::Limits;
use ippx_protocol::content::EnginePorts;
use ippx_protocol::{Packer, Session, SessionConfig};
use std::time::Duration;

/// The key every test peer signs with.
pub const KEY: &[u8] = b"key";

/// Hub settings for the state-machine tests: 100 ms heartbeats, 2 misses, made-up ports.
pub fn settings(nodb: bool, limits: Limits, broadcast: Vec<u16>) -> HubSettings {
    HubSettings {
        hb_period: Duration::from_millis(100),
        max_misses: 2,
        registration_timeout: Duration::from_secs(1),
        engine_ports: EnginePorts {
            interface: "tcp://127.0.0.1".into(),
            registration: 1,
            control: 2,
            mux: 3,
            task: 4,
            iopub: 5,
            hb_ping: 6,
            hb_pong: 7,
            broadcast,
        },
        packer: Packer::Msgpack,
        limits,
        nodb,
        max_engines: usize::MAX,
        readmit: true,
    }
}

pub fn session() -> Session {
    Session::new(SessionConfig::new(KEY.to_vec(), Packer::Msgpack)).expect("session")
}
