//! Golden fixtures: the spec's observed examples (§10.1, §1.2, §10.10) and messages
//! captured from the real Python stack (tests/fixtures/captured, made by
//! tests/fixtures/make_fixtures.py). Needs no Python: everything is read from the
//! committed files.

mod common;

use chrono::{TimeZone, Utc};
use common::*;
use ippx_protocol::content::{ConnectionReply, EngineNotification, EnginePorts, ErrorContent, RegistrationReply, RegistrationRequest};
use ippx_protocol::datetime::{format_iso, parse_iso};
use ippx_protocol::session::RecvError;
use ippx_protocol::wire::Part;
use ippx_protocol::{vmap, Envelope, Header, Packer, Parent, Session, SessionConfig, Signer, Value, DELIM};
use serde_json::Value as Json;

const PARTS: [Part; 4] = [Part::Header, Part::Parent, Part::Metadata, Part::Content];

fn spec_10_1() -> Json {
    load_json(&fixtures_dir().join("spec/registration_10_1.json"))
}

fn spec_10_10() -> Json {
    load_json(&fixtures_dir().join("spec/msgpack_10_10.json"))
}

fn envelope(frames: Vec<Vec<u8>>) -> Envelope<Vec<u8>> {
    Envelope::parse(frames).map_err(|(e, _)| e).expect("envelope")
}

fn parts_of(env: &Envelope<Vec<u8>>) -> [Vec<u8>; 4] {
    env.signed_parts().map(<[u8]>::to_vec)
}

fn as_refs(p: &[Vec<u8>; 4]) -> [&[u8]; 4] {
    [&p[0], &p[1], &p[2], &p[3]]
}

fn session(key: &str, packer: Packer) -> Session {
    Session::new(SessionConfig::new(key.as_bytes().to_vec(), packer)).expect("session")
}

/// Positions worth flipping in a frame: first, middle, last byte.
fn positions(len: usize) -> Vec<usize> {
    let mut v = vec![0, len / 2, len.saturating_sub(1)];
    v.dedup();
    v
}

// ---------------------------------------------------------------------------------------
// §10.1 / §1.2: JSON registration request and the HMAC test vector
// ---------------------------------------------------------------------------------------

#[test]
fn spec_10_1_request_matches_hmac_test_vector() {
    let spec = spec_10_1();
    let tv = &spec["test_vector"];
    let key = tv["key"].as_str().expect("key");
    let want = tv["signature"].as_str().expect("signature");
    let frames = frames_from_text(&spec["messages"]["request"]);
    let env = envelope(frames.clone());
    assert_eq!(env.idents().len(), 1);
    assert_eq!(env.idents()[0], b"9aabafec-fe263ddcec9aba8f65fe8580");
    assert_eq!(env.delim_index(), 1);
    assert!(env.buffers().is_empty());

    let signer = Signer::new(key.as_bytes(), tv["signature_scheme"].as_str().expect("scheme")).expect("signer");
    let parts = parts_of(&env);
    let sig = signer.sign(as_refs(&parts));
    assert_eq!(String::from_utf8(sig.clone()).expect("ascii"), want, "Rust HMAC differs from the spec test vector");
    assert!(signer.verify(want.as_bytes(), as_refs(&parts)));
    // The signature recorded in §10.1 was made with another (unrecorded) key.
    assert!(!signer.verify(env.signature(), as_refs(&parts)));

    // Session::receive accepts the message once it carries the test-vector signature.
    let mut signed = frames;
    signed[2] = want.as_bytes().to_vec();
    let mut rx = session(key, Packer::Json);
    let (env, header) = rx.receive(signed.clone(), true).map_err(|(e, _)| e).expect("receive");
    assert_eq!(header.msg_id, "9aabafec-fe263ddcec9aba8f65fe8580_6693_0");
    assert_eq!(header.msg_type, "registration_request");
    assert_eq!(header.username, "username");
    assert_eq!(header.session, "9aabafec-fe263ddcec9aba8f65fe8580");
    assert_eq!(header.version, "5.4");
    assert_eq!(header.date, "2026-11-25T07:32:32.605000Z");
    let date = parse_iso(&header.date).expect("date");
    assert_eq!(format_iso(&date), "2026-11-25T07:32:32.605000Z");
    let content: RegistrationRequest = rx.unpack(env.content_bytes()).expect("content");
    assert_eq!(content, RegistrationRequest { uuid: "9aabafec-fe263ddcec9aba8f65fe8580".into(), id: None });
    assert_eq!(rx.unpack::<Value>(env.parent_bytes()).expect("parent"), Value::map());
    assert_eq!(rx.unpack::<Value>(env.metadata_bytes()).expect("metadata"), Value::map());
    // Same frames again: a replay; and a replay with the signature's case changed must
    // not slip past the digest history (Python rejects it as an invalid signature).
    assert!(matches!(rx.receive(signed.clone(), true), Err((RecvError::Replay, _))));
    let mut recased = signed;
    recased[2] = want.to_ascii_uppercase().into_bytes();
    assert!(matches!(rx.receive(recased, true), Err((RecvError::BadSignature, _))));
}

#[test]
fn spec_10_1_any_one_byte_change_fails_verification() {
    let spec = spec_10_1();
    let tv = &spec["test_vector"];
    let signer = Signer::new(tv["key"].as_str().expect("key").as_bytes(), "hmac-sha256").expect("signer");
    let want = tv["signature"].as_str().expect("signature").as_bytes().to_vec();
    let env = envelope(frames_from_text(&spec["messages"]["request"]));
    let parts = parts_of(&env);
    assert!(signer.verify(&want, as_refs(&parts)));

    let mut checked = 0;
    for (i, part) in parts.iter().enumerate() {
        for pos in positions(part.len()) {
            for flip in [0x01u8, 0x20, 0x80] {
                let mut p = parts.clone();
                p[i][pos] ^= flip;
                assert!(!signer.verify(&want, as_refs(&p)), "part {i} byte {pos} ^ {flip:#x} still verifies");
                checked += 1;
            }
        }
        // One byte more or less is a change too.
        let mut p = parts.clone();
        p[i].push(b' ');
        assert!(!signer.verify(&want, as_refs(&p)), "part {i} + 1 byte still verifies");
        let mut p = parts.clone();
        p[i].pop();
        assert!(!signer.verify(&want, as_refs(&p)), "part {i} - 1 byte still verifies");
    }
    // Moving bytes between frames changes the message even though the concatenation
    // is the same: the HMAC covers the concatenation, so this one *does* verify. This
    // documents Python's scheme (it is not length-prefixed) rather than a Rust choice.
    let mut p = parts.clone();
    let last = p[0].pop().expect("non-empty header");
    p[1].insert(0, last);
    assert!(signer.verify(&want, as_refs(&p)));

    // Every single hex digit of the signature matters.
    for pos in 0..want.len() {
        let mut s = want.clone();
        s[pos] = if s[pos] == b'0' { b'1' } else { b'0' };
        assert!(!signer.verify(&s, as_refs(&parts)), "signature digit {pos} changed still verifies");
    }
    assert!(!signer.verify(&want[..63], as_refs(&parts)));
    // Python compares the hex text: an upper-case variant is a different signature.
    for pos in (0..want.len()).filter(|&i| want[i].is_ascii_lowercase()) {
        let mut s = want.clone();
        s[pos] = s[pos].to_ascii_uppercase();
        assert!(!signer.verify(&s, as_refs(&parts)), "signature with digit {pos} upper-cased still verifies");
    }
    assert!(!signer.verify(want.to_ascii_uppercase().as_slice(), as_refs(&parts)));
    assert_eq!(checked, 30);

    // Through Session::receive: tampered content is a bad signature, not a decode error.
    let mut frames = frames_from_text(&spec["messages"]["request"]);
    frames[2] = want.clone();
    frames[6][10] ^= 0x01;
    let mut rx = session(tv["key"].as_str().expect("key"), Packer::Json);
    assert!(matches!(rx.receive(frames, true), Err((RecvError::BadSignature, _))));
}

#[test]
fn spec_10_1_reply_and_notification_parse() {
    let spec = spec_10_1();
    let reply = envelope(frames_from_text(&spec["messages"]["reply"]));
    assert_eq!(reply.idents().len(), 1);
    assert_eq!(reply.signature().len(), 64);
    let h: Header = Packer::Json.unpack(reply.header_bytes()).expect("header");
    assert_eq!(h.msg_type, "registration_reply");
    assert_eq!(h.session, "9a2b2855-afabde58063f4f5e748724c6");
    assert!(parse_iso(&h.date).is_some());
    assert_eq!(reply.parent_bytes(), b"{}", "registration_reply has an empty parent");
    let r: RegistrationReply = Packer::Json.unpack(reply.content_bytes()).expect("reply content");
    let want = RegistrationReply {
        id: 0,
        status: "ok".into(),
        hb_period: 1000,
        connection_info: EnginePorts {
            interface: "tcp://127.0.0.1".into(),
            registration: 21000,
            control: 21001,
            mux: 21002,
            task: 21003,
            iopub: 21004,
            hb_ping: 21005,
            hb_pong: 21006,
            broadcast: vec![21007, 21008],
        },
    };
    assert_eq!(r, want);
    // The Rust rendering decodes to the same dict, key order included.
    let theirs: Value = Packer::Json.unpack(reply.content_bytes()).expect("value");
    let ours: Value = Packer::Json.unpack(&Packer::Json.pack(&want).expect("pack")).expect("value");
    assert_eq!(ours, theirs);

    let note = envelope(frames_from_text(&spec["messages"]["notification"]));
    assert!(note.idents().is_empty(), "hub notifications carry no topic frame");
    assert_eq!(note.frames()[0], DELIM);
    let h: Header = Packer::Json.unpack(note.header_bytes()).expect("header");
    assert_eq!(h.msg_type, "registration_notification");
    let n: EngineNotification = Packer::Json.unpack(note.content_bytes()).expect("content");
    assert_eq!(n, EngineNotification { id: 0, uuid: "9aabafec-fe263ddcec9aba8f65fe8580".into() });
}

// ---------------------------------------------------------------------------------------
// §10.10: msgpack encodings
// ---------------------------------------------------------------------------------------

#[test]
fn spec_10_10_msgpack_header_decodes_and_repacks_byte_for_byte() {
    let spec = spec_10_10();
    let req = &spec["registration_request"];
    let header_bytes = spec_bytes(req["header"].as_str().expect("header"));
    assert_eq!(header_bytes[0], 0x86);

    let h: Header = Packer::Msgpack.unpack(&header_bytes).expect("Header");
    assert_eq!(
        h,
        Header {
            msg_id: "c1970dba-164f62a8c809d5a009541cb8_7593_0".into(),
            msg_type: "registration_request".into(),
            username: "username".into(),
            session: "c1970dba-164f62a8c809d5a009541cb8".into(),
            date: "2026-11-25T07:34:22.148961Z".into(),
            version: "5.4".into(),
        }
    );
    assert!(parse_iso(&h.date).is_some());
    let v: Value = Packer::Msgpack.unpack(&header_bytes).expect("Value");
    let keys: Vec<&str> = v.as_map().expect("map").iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["msg_id", "msg_type", "username", "session", "date", "version"]);
    assert!(v.as_map().expect("map").iter().all(|(_, x)| matches!(x, Value::Str(_))), "all header values are str");

    // Rust produces exactly Python's bytes: fixmap, fixstr/str8, never bin.
    assert_eq!(Packer::Msgpack.pack(&h).expect("pack header"), header_bytes);
    assert_eq!(Packer::Msgpack.pack(&v).expect("pack value"), header_bytes);

    for part in ["parent", "metadata"] {
        let b = spec_bytes(req[part].as_str().expect("part"));
        assert_eq!(Packer::Msgpack.unpack::<Value>(&b).expect("empty map"), Value::map());
        assert_eq!(Packer::Msgpack.pack(&Value::map()).expect("pack {}"), b);
    }
    let content = spec_bytes(req["content"].as_str().expect("content"));
    let c: RegistrationRequest = Packer::Msgpack.unpack(&content).expect("RegistrationRequest");
    assert_eq!(c.uuid, "c1970dba-164f62a8c809d5a009541cb8");
    assert_eq!(c.id, None);
    let cv: Value = Packer::Msgpack.unpack(&content).expect("Value");
    assert_eq!(Packer::Msgpack.pack(&cv).expect("pack"), content);

    // The signature frame is hex text under msgpack too.
    let sig = spec_bytes(req["signature"].as_str().expect("sig"));
    assert_eq!(sig.len(), 64);
    assert!(sig.iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c)));

    // A whole message with these frames parses and its header decodes via Session.
    let frames = vec![DELIM.to_vec(), sig, header_bytes.clone(), vec![0x80], vec![0x80], content];
    let env = envelope(frames);
    let rx = session("", Packer::Msgpack);
    assert_eq!(rx.header(&env).map_err(|e| e.to_string()).expect("header"), h);
}

#[test]
fn spec_10_10_mixed_value_packs_exactly() {
    let spec = spec_10_10();
    let mixed = &spec["mixed"];
    let want = spec_bytes(mixed["msgpack"].as_str().expect("msgpack"));
    assert_eq!(&want[..10], &[0x82, 0xa1, 0x61, 0xc4, 0x02, 0x00, 0x01, 0xa1, 0x74, 0xbb]);

    // The datetime(2026,1,2,3,4,5,6,UTC) rendered the way Rust renders dates.
    let t = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).single().expect("date") + chrono::Duration::microseconds(6);
    let t_str = format_iso(&t);
    assert_eq!(t_str, "2026-01-02T03:04:05.000006Z");
    let v = vmap! {"a" => Value::Bin(vec![0x00, 0x01]), "t" => t_str.clone()};
    assert_eq!(Packer::Msgpack.pack(&v).expect("pack"), want, "Rust msgpack of the §10.10 mixed value");
    assert_eq!(Packer::Msgpack.unpack::<Value>(&want).expect("unpack"), v);

    // JSON: bytes become base64 text, as Python's json_default does.
    let json = Packer::Json.pack(&v).expect("json");
    let back: Value = Packer::Json.unpack(&json).expect("json back");
    assert_eq!(back, vmap! {"a" => "AAE=", "t" => t_str});

    // Python's JSON rendering when microseconds are 0 (no fraction at all).
    let py = mixed["json_micro0"].as_str().expect("json_micro0");
    let pv: Value = Packer::Json.unpack(py.as_bytes()).expect("python json");
    assert_eq!(pv.get("a"), &Value::Str("AAE=".into()));
    let t0 = parse_iso(pv.get("t").as_str().expect("t str")).expect("parses");
    assert_eq!(t0, Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).single().expect("date"));
    assert_eq!(format_iso(&t0), "2026-01-02T03:04:05.000000Z");
}

#[test]
fn spec_10_10_hb_period_1000_packs_as_uint16() {
    let want = spec_bytes(spec_10_10()["hb_period_1000"].as_str().expect("hb"));
    assert_eq!(want, [0xcd, 0x03, 0xe8]);
    let reply = RegistrationReply {
        id: 0,
        status: "ok".into(),
        hb_period: 1000,
        connection_info: EnginePorts {
            interface: "tcp://127.0.0.1".into(),
            registration: 21000,
            control: 21001,
            mux: 21002,
            task: 21003,
            iopub: 21004,
            hb_ping: 21005,
            hb_pong: 21006,
            broadcast: vec![21007, 21008],
        },
    };
    let b = Packer::Msgpack.pack(&reply).expect("pack");
    let mut key_then_value = vec![0xa9];
    key_then_value.extend_from_slice(b"hb_period");
    key_then_value.extend_from_slice(&want);
    assert!(
        b.windows(key_then_value.len()).any(|w| w == key_then_value),
        "hb_period is not packed as a9 'hb_period' cd 03 e8 in {}",
        hex::encode(&b)
    );
    assert_eq!(b[0], 0x84, "a fixmap with 4 string keys, not an array");
    let back: RegistrationReply = Packer::Msgpack.unpack(&b).expect("unpack");
    assert_eq!(back, reply);
}

// ---------------------------------------------------------------------------------------
// Captured messages (jupyter_client + ipyparallel, both packers)
// ---------------------------------------------------------------------------------------

const CAPTURED: [&str; 9] = [
    "registration_request",
    "registration_reply",
    "connection_request",
    "connection_reply",
    "apply_request",
    "apply_reply",
    "stream",
    "error",
    "mixed_values",
];

struct Fixture {
    name: String,
    packer: Packer,
    key: String,
    doc: Json,
    /// `doc["decoded"]` with key order kept.
    decoded: Value,
    frames: Vec<Vec<u8>>,
}

impl Fixture {
    fn label(&self) -> String {
        format!("{}/{}", self.packer, self.name)
    }
    fn decoded(&self, part: &str) -> Value {
        self.decoded.get(part).clone()
    }
    fn n(&self, field: &str) -> usize {
        self.doc[field].as_u64().expect("count") as usize
    }
}

fn captured() -> Vec<Fixture> {
    let mut out = Vec::new();
    for packer in ["json", "msgpack"] {
        for name in CAPTURED {
            let path = fixtures_dir().join("captured").join(packer).join(format!("{name}.json"));
            let doc = load_json(&path);
            assert_eq!(doc["name"], name);
            let p = packer_of(&doc);
            assert_eq!(p.name(), packer);
            assert_eq!(doc["signature_scheme"], "hmac-sha256");
            out.push(Fixture {
                name: name.to_owned(),
                packer: p,
                key: doc["key"].as_str().expect("key").to_owned(),
                frames: frames_from_hex(&doc["frames_hex"]),
                decoded: load_value(&path).get("decoded").clone(),
                doc,
            });
        }
    }
    assert_eq!(out.len(), 18);
    out
}

#[test]
fn captured_messages_verify_and_resign_identically() {
    for fx in captured() {
        let l = fx.label();
        let env = envelope(fx.frames.clone());
        assert_eq!(env.idents().len(), fx.n("n_idents"), "{l}");
        assert_eq!(env.buffers().len(), fx.n("n_buffers"), "{l}");
        assert_eq!(env.frames().len(), fx.n("n_idents") + 6 + fx.n("n_buffers"), "{l}");

        let signer = Signer::new(fx.key.as_bytes(), "hmac-sha256").expect("signer");
        let parts = parts_of(&env);
        assert!(signer.verify(env.signature(), as_refs(&parts)), "{l}: Python's signature does not verify");
        assert_eq!(signer.sign(as_refs(&parts)), env.signature(), "{l}: re-signing gives another signature");

        let mut rx = session(&fx.key, fx.packer);
        let (renv, header) = rx.receive(fx.frames.clone(), true).map_err(|(e, _)| e.to_string()).expect(&l);
        assert_eq!(renv.frames(), &fx.frames[..], "{l}");
        let want: Header = Packer::Json.unpack(&serde_json::to_vec(&fx.doc["decoded"]["header"]).expect("json")).expect("expected header");
        assert_eq!(header, want, "{l}");
        assert_eq!(header.msg_type, fx.doc["decoded"]["header"]["msg_type"], "{l}");
        assert!(parse_iso(&header.date).is_some(), "{l}: date {:?}", header.date);
        assert!(matches!(rx.receive(fx.frames.clone(), true), Err((RecvError::Replay, _))), "{l}: second delivery is not a replay");
        assert!(rx.receive(fx.frames.clone(), false).is_ok(), "{l}: replay check off");

        // A one-byte change in any signed frame fails; routing prefix and buffers are not signed.
        let d = env.delim_index();
        for i in 0..4 {
            let mut f = fx.frames.clone();
            let pos = f[d + 2 + i].len() / 2;
            f[d + 2 + i][pos] ^= 0x01;
            let mut rx = session(&fx.key, fx.packer);
            assert!(matches!(rx.receive(f, true), Err((RecvError::BadSignature, _))), "{l}: change in signed frame {i} accepted");
        }
        let mut f = fx.frames.clone();
        f[d + 1][0] = if f[d + 1][0] == b'0' { b'1' } else { b'0' };
        assert!(matches!(session(&fx.key, fx.packer).receive(f, true), Err((RecvError::BadSignature, _))), "{l}");
        let mut f = fx.frames.clone();
        f[d + 1].clear();
        assert!(matches!(session(&fx.key, fx.packer).receive(f, true), Err((RecvError::Unsigned, _))), "{l}");
        if fx.n("n_buffers") > 0 {
            let mut f = fx.frames.clone();
            let last = f.len() - 1;
            f[last].push(0);
            assert!(session(&fx.key, fx.packer).receive(f, true).is_ok(), "{l}: buffers are not signed");
        }
        let mut f = fx.frames.clone();
        f.insert(0, b"extra-route".to_vec());
        assert!(session(&fx.key, fx.packer).receive(f, true).is_ok(), "{l}: routing prefix is not signed");
        assert!(matches!(session("wrong-key", fx.packer).receive(fx.frames.clone(), true), Err((RecvError::BadSignature, _))), "{l}");
    }
}

#[test]
fn captured_messages_decode_as_python_decodes_them() {
    for fx in captured() {
        let l = fx.label();
        let env = envelope(fx.frames.clone());
        for (part, name) in PARTS.iter().zip(["header", "parent_header", "metadata", "content"]) {
            let v: Value = fx.packer.unpack(env.part(*part)).unwrap_or_else(|e| panic!("{l} {name}: {e}"));
            assert_eq!(tagged(&v), fx.decoded(name), "{l} {name}");
            // Whatever the packer, Rust's own rendering reads back to the same Value.
            let again: Value = fx.packer.unpack(&fx.packer.pack(&v).expect("pack")).expect("unpack");
            assert_eq!(again, v, "{l} {name}");
        }
        let parent = fx.decoded("parent_header");
        if let Some(date) = parent.get("date").as_str() {
            assert!(parse_iso(date).is_some(), "{l}: parent date {date:?}");
        }
    }
}

#[test]
fn captured_msgpack_messages_are_reproduced_byte_for_byte() {
    for fx in captured().into_iter().filter(|f| f.packer == Packer::Msgpack) {
        let l = fx.label();
        let env = envelope(fx.frames.clone());
        // Each dict: Rust's msgpack of the decoded value is Python's exact bytes.
        for part in PARTS {
            let v: Value = Packer::Msgpack.unpack(env.part(part)).expect("unpack");
            assert_eq!(Packer::Msgpack.pack(&v).expect("pack"), env.part(part), "{l} {part:?}");
        }
        // The whole message, signature included, through Session::serialize_with_header.
        let header: Header = Packer::Msgpack.unpack(env.header_bytes()).expect("header");
        let metadata: Value = Packer::Msgpack.unpack(env.metadata_bytes()).expect("metadata");
        let content: Value = Packer::Msgpack.unpack(env.content_bytes()).expect("content");
        let parent: Value = Packer::Msgpack.unpack(env.parent_bytes()).expect("parent");
        let tx = session(&fx.key, Packer::Msgpack);
        let idents = env.idents().to_vec();
        let buffers = env.buffers().to_vec();
        let via_value =
            tx.serialize_with_header(idents.clone(), &header, Parent::Value(&parent), &metadata, &content, buffers.clone()).expect("serialize");
        assert_eq!(via_value, fx.frames, "{l}: Rust frames differ from Python's");
        let via_raw = tx
            .serialize_with_header(idents.clone(), &header, Parent::Raw(env.parent_bytes()), &metadata, &content, buffers.clone())
            .expect("serialize");
        assert_eq!(via_raw, fx.frames, "{l}: Parent::Raw");
        if parent == Value::map() {
            let via_none = tx.serialize_with_header(idents, &header, Parent::None, &metadata, &content, buffers).expect("serialize");
            assert_eq!(via_none, fx.frames, "{l}: Parent::None");
        } else {
            let ph: Header = Packer::Msgpack.unpack(env.parent_bytes()).expect("parent header");
            let via_header = tx.serialize_with_header(idents, &header, Parent::Header(&ph), &metadata, &content, buffers).expect("serialize");
            assert_eq!(via_header, fx.frames, "{l}: Parent::Header");
        }
    }
}

#[test]
fn captured_json_parent_is_echoed_raw_and_converted_across_packers() {
    // A JSON controller echoing a received header as parent keeps Python's exact bytes;
    // a msgpack session given a JSON parent re-packs it (Parent::Raw with mixed packers).
    let all = captured();
    let fx = all.iter().find(|f| f.packer == Packer::Json && f.name == "apply_request").expect("fixture");
    let env = envelope(fx.frames.clone());
    let mut tx = session(&fx.key, Packer::Json);
    let (_, frames) = tx.serialize(vec![], "apply_reply", Parent::Raw(env.header_bytes()), &Value::map(), &Value::map(), vec![]).expect("serialize");
    assert_eq!(frames[3], env.header_bytes(), "raw parent is echoed byte for byte");

    let mut cfg = SessionConfig::new(fx.key.as_bytes().to_vec(), Packer::Msgpack);
    cfg.unpacker = Packer::Json;
    let mut mixed = Session::new(cfg).expect("session");
    let (_, frames) =
        mixed.serialize(vec![], "apply_reply", Parent::Raw(env.header_bytes()), &Value::map(), &Value::map(), vec![]).expect("serialize");
    let msgpack_fx = all.iter().find(|f| f.packer == Packer::Msgpack && f.name == "apply_request").expect("fixture");
    let msgpack_env = envelope(msgpack_fx.frames.clone());
    assert_eq!(frames[3], msgpack_env.header_bytes(), "JSON parent re-packed as Python's msgpack");
}

#[test]
fn captured_contents_have_the_expected_types() {
    for fx in captured() {
        let l = fx.label();
        let env = envelope(fx.frames.clone());
        let p = fx.packer;
        let content: Value = p.unpack(env.content_bytes()).expect("content");
        let metadata: Value = p.unpack(env.metadata_bytes()).expect("metadata");
        let parent: Value = p.unpack(env.parent_bytes()).expect("parent");
        match fx.name.as_str() {
            "registration_request" => {
                let r: RegistrationRequest = p.unpack(env.content_bytes()).expect(&l);
                assert_eq!(r.uuid, "9aabafec-fe263ddcec9aba8f65fe8580");
                assert_eq!(env.idents()[0], r.uuid.as_bytes(), "{l}: DEALER identity is the uuid");
            }
            "registration_reply" => {
                let r: RegistrationReply = p.unpack(env.content_bytes()).expect(&l);
                assert_eq!((r.id, r.hb_period, r.connection_info.broadcast.clone()), (0, 1000, vec![21007, 21008]));
                assert_eq!(parent, Value::map(), "{l}");
                let h: Header = p.unpack(env.header_bytes()).expect("header");
                assert_eq!(h.date, "2026-11-25T07:32:33.605000Z", "{l}");
                if p == Packer::Msgpack {
                    assert_eq!(p.pack(&r).expect("pack"), env.content_bytes(), "{l}: typed reply differs from Python's");
                }
            }
            "connection_request" => {
                assert!(env.idents().is_empty(), "{l}");
                assert_eq!(content, Value::map(), "{l}");
            }
            "connection_reply" => {
                let r: ConnectionReply = p.unpack(env.content_bytes()).expect(&l);
                assert_eq!(r.engines.get("0").map(String::as_str), Some("9aabafec-fe263ddcec9aba8f65fe8580"));
                assert_eq!(r.engines.len(), 2);
                assert_eq!(parent.get("msg_type"), &Value::from("connection_request"), "{l}");
                assert_eq!(env.idents()[0], [0x00, 0xf4, 0xb0, 0xdc, 0x51], "{l}");
            }
            "apply_request" => {
                assert_eq!(env.buffers().len(), 4, "{l}");
                for b in env.buffers() {
                    assert_eq!(b[0], 0x80, "{l}: buffers are pickles");
                }
                assert_eq!(metadata.get("timeout"), &Value::Float(0.0), "{l}");
                assert_eq!(metadata.get("retries"), &Value::Int(0), "{l}");
                assert!(metadata.get("label").is_nil(), "{l}");
                assert_eq!(metadata.get("after"), &Value::Array(vec![]), "{l}");
                assert_eq!(content, Value::map(), "{l}");
            }
            "apply_reply" => {
                assert_eq!(env.buffers(), [vec![0x80, 0x04, 0x4b, 0x03, 0x2e]], "{l}: pickle of 3");
                assert_eq!(metadata.get("dependencies_met"), &Value::Bool(true), "{l}");
                assert_eq!(metadata.get("is_broadcast"), &Value::Bool(false), "{l}");
                assert_eq!(metadata.get("original_msg_id"), &Value::from(""), "{l}");
                let started = parse_iso(metadata.get("started").as_str().expect("started")).expect("started date");
                assert_eq!(format_iso(&started), "2026-11-25T07:32:52.922177Z", "{l}");
                assert_eq!(content, vmap! {"status" => "ok"}, "{l}");
                assert_eq!(parent.get("msg_type"), &Value::from("apply_request"), "{l}");
            }
            "stream" => {
                assert_eq!(env.idents()[0], b"engine.0.stdout", "{l}");
                assert_eq!(content.get("text").as_str(), Some("h\u{e9}llo w\u{f6}rld \u{2713} \u{1f600}\n"), "{l}");
            }
            "error" => {
                let e: ErrorContent = p.unpack(env.content_bytes()).expect(&l);
                assert_eq!((e.status.as_str(), e.ename.as_str()), ("error", "ZeroDivisionError"));
                assert_eq!(e.traceback.len(), 3);
                assert_eq!(e.engine_info.get("engine_id"), &Value::Int(0));
                assert_eq!(e.to_value(), content, "{l}");
                assert_eq!(metadata.get("status"), &Value::from("error"), "{l}");
            }
            "mixed_values" => {
                assert_eq!(content.get("text").as_str(), Some("na\u{ef}ve \u{e9}t\u{e9} \u{65e5}\u{672c} \u{1f600}"));
                assert_eq!(content.get("float"), &Value::Float(2.5), "{l}");
                assert_eq!(content.get("third"), &Value::Float(1.0 / 3.0), "{l}");
                assert_eq!(content.get("neg"), &Value::Int(-7), "{l}");
                assert_eq!(content.get("big"), &Value::UInt(u64::MAX), "{l}");
                assert_eq!(content.get("min"), &Value::Int(i64::MIN), "{l}");
                assert!(content.get("none").is_nil(), "{l}");
                assert_eq!(content.get("yes"), &Value::Bool(true), "{l}");
                assert_eq!(content.get("no"), &Value::Bool(false), "{l}");
                assert_eq!(content.get("list").as_array().map(<[_]>::len), Some(6), "{l}");
                assert_eq!(content.get("list").as_array().expect("list")[2], Value::Float(3.0), "{l}");
                assert_eq!(content.get("nested").get("a").get("b").as_array().expect("b")[2], vmap! {"c" => Value::Nil});
                assert_eq!(content.get("when").as_str(), Some("2026-01-02T03:04:05.000006Z"), "{l}");
                assert_eq!(content.get("when0").as_str(), Some("2026-01-02T03:04:05Z"), "{l}");
                assert!(parse_iso(content.get("when0").as_str().expect("when0")).is_some());
                let bytes = [0x00u8, 0x01, 0xfe, 0xff];
                match p {
                    Packer::Msgpack => assert_eq!(content.get("bytes"), &Value::Bin(bytes.to_vec()), "{l}"),
                    Packer::Json => assert_eq!(content.get("bytes"), &Value::from("AAH+/w=="), "{l}"),
                }
                assert_eq!(env.buffers(), [b"\x00raw buffer\xff".to_vec()], "{l}");
            }
            other => panic!("unexpected fixture {other}"),
        }
    }
}
