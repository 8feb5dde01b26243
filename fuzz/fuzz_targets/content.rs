//! Typed decoding of headers, metadata and message contents from msgpack and JSON.
#![no_main]
use ippx_protocol::content::*;
use ippx_protocol::metadata::{ReplyStatus, RequestMetadata};
use ippx_protocol::{Header, Packer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for p in [Packer::Msgpack, Packer::Json] {
        let _ = p.unpack::<Header>(data);
        let _ = p.unpack::<RequestMetadata>(data);
        let _ = p.unpack::<ReplyStatus>(data);
        let _ = p.unpack::<RegistrationRequest>(data);
        let _ = p.unpack::<RegistrationReply>(data);
        let _ = p.unpack::<UnregistrationRequest>(data);
        let _ = p.unpack::<EngineNotification>(data);
        let _ = p.unpack::<ConnectionReply>(data);
        let _ = p.unpack::<QueueRequest>(data);
        let _ = p.unpack::<ResultRequest>(data);
        let _ = p.unpack::<TaskDestination>(data);
        let _ = p.unpack::<ErrorContent>(data);
    }
});
