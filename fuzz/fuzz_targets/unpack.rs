//! msgpack and JSON into the generic Value, and back: what unpacks must pack again.
#![no_main]
use ippx_protocol::{Packer, Value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for p in [Packer::Msgpack, Packer::Json] {
        if let Ok(v) = p.unpack::<Value>(data) {
            let again = p.pack(&v).expect("a Value that unpacked packs again");
            let _ = p.unpack::<Value>(&again).expect("and unpacks again");
        }
    }
});
