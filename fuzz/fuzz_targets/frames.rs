//! Frame splitting, the signature check (with replay) and the four dicts, as the hub's
//! query socket and the schedulers take a message: first byte picks the packer.
#![no_main]
use ippx_protocol::{Packer, Session, SessionConfig};
use libfuzzer_sys::fuzz_target;
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&p, rest)) = data.split_first() else { return };
    let packer = if p & 1 == 0 { Packer::Msgpack } else { Packer::Json };
    let frames = common::frames(rest);
    let _ = ippx_protocol::wire::find_delim(&frames);
    let mut s = Session::new(SessionConfig::new(common::KEY.to_vec(), packer)).expect("session");
    if let Ok((env, _header)) = s.receive(frames.clone(), true) {
        let _ = s.check_dicts(&env);
        let _ = env.buffers().len();
        // the same bytes again are a replay, and refused
        assert!(s.receive(frames, true).is_err(), "a replay was accepted");
    }
});
