//! The `db_query` language: a JSON query parsed and matched against records.
#![no_main]
use ippx_hub::records::TaskRecord;
use ippx_hub::store::query::Query;
use ippx_protocol::{Packer, Value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = Packer::Json.unpack::<Value>(data) else { return };
    if let Ok(q) = Query::parse(&v) {
        let mut r = TaskRecord::default();
        let _ = q.matches(&r);
        r.msg_id = "m".into();
        r.engine_uuid = Some("e".into());
        r.queue = Some("task".into());
        let _ = q.matches(&r);
    }
});
