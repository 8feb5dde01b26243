//! Connection files, as engines and clients read them (and $IPP_CONNECTION_INFO).
#![no_main]
use ippx_protocol::connection::{ClientConnectionFile, EngineConnectionFile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<EngineConnectionFile>(data);
    let _ = serde_json::from_slice::<ClientConnectionFile>(data);
});
