//! Property tests: packer round trips of arbitrary `Value`s, no panics on arbitrary
//! frames, and ISO timestamp round trips.

mod common;

use base64::Engine as _;
use chrono::{Datelike, Duration, NaiveDate, TimeZone, Timelike, Utc};
use common::strict_diff;
use ippx_protocol::datetime::{format_iso, parse_iso};
use ippx_protocol::session::RecvError;
use ippx_protocol::wire::WireError;
use ippx_protocol::{Envelope, Header, Packer, Parent, Session, SessionConfig, Value, DELIM};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------

fn finite_f64() -> impl Strategy<Value = f64> {
    use proptest::num::f64 as f;
    // Every finite class, both signs; no NaN (JSON cannot carry it), no infinities.
    (f::POSITIVE | f::NEGATIVE | f::NORMAL | f::SUBNORMAL | f::ZERO).prop_filter("finite", |x| x.is_finite())
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z_]{0,12}",
        1 => any::<String>(),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Nil),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        // Only above i64::MAX: smaller unsigned ints decode as Int by design.
        ((i64::MAX as u64 + 1)..=u64::MAX).prop_map(Value::UInt),
        finite_f64().prop_map(Value::Float),
        any::<String>().prop_map(Value::Str),
        prop::collection::vec(any::<u8>(), 0..48).prop_map(Value::Bin),
    ]
}

fn arb_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(5, 96, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..8).prop_map(|kv| {
                // Python dicts have unique keys; keep the first occurrence, in order.
                let mut seen = std::collections::HashSet::new();
                Value::Map(kv.into_iter().filter(|(k, _)| seen.insert(k.clone())).collect())
            }),
        ]
    })
}

/// What a Value reads back as after a trip through JSON: bytes become base64 text
/// (Python's json_default does the same), everything else is unchanged.
fn json_view(v: &Value) -> Value {
    match v {
        Value::Bin(b) => Value::Str(base64::engine::general_purpose::STANDARD.encode(b)),
        Value::Array(a) => Value::Array(a.iter().map(json_view).collect()),
        Value::Map(m) => Value::Map(m.iter().map(|(k, v)| (k.clone(), json_view(v))).collect()),
        other => other.clone(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn msgpack_round_trips_every_value(v in arb_value()) {
        let bytes = Packer::Msgpack.pack(&v).expect("pack");
        let back: Value = Packer::Msgpack.unpack(&bytes).expect("unpack");
        prop_assert_eq!(strict_diff(&back, &v, "$"), None);
        // Canonical: packing what was read gives the same bytes again.
        prop_assert_eq!(Packer::Msgpack.pack(&back).expect("repack"), bytes);
    }

    #[test]
    fn json_round_trips_every_value_with_bytes_as_base64(v in arb_value()) {
        let bytes = Packer::Json.pack(&v).expect("pack");
        prop_assert!(std::str::from_utf8(&bytes).is_ok());
        let back: Value = Packer::Json.unpack(&bytes).expect("unpack");
        prop_assert_eq!(strict_diff(&back, &json_view(&v), "$"), None);
        // The base64 text decodes to the original bytes.
        if let Value::Bin(b) = &v {
            let text = back.as_str().expect("str");
            prop_assert_eq!(&base64::engine::general_purpose::STANDARD.decode(text).expect("base64"), b);
        }
    }

    #[test]
    fn msgpack_text_is_str_and_bytes_are_bin(s in any::<String>(), b in prop::collection::vec(any::<u8>(), 0..300)) {
        let t = Packer::Msgpack.pack(&Value::Str(s)).expect("pack");
        prop_assert!(matches!(t[0], 0xa0..=0xbf | 0xd9 | 0xda | 0xdb), "text packed with marker {:#x}", t[0]);
        let p = Packer::Msgpack.pack(&Value::Bin(b)).expect("pack");
        prop_assert!(matches!(p[0], 0xc4..=0xc6), "bytes packed with marker {:#x}", p[0]);
    }

    #[test]
    fn msgpack_floats_are_float64(f in finite_f64()) {
        let b = Packer::Msgpack.pack(&Value::Float(f)).expect("pack");
        prop_assert_eq!(b.len(), 9);
        prop_assert_eq!(b[0], 0xcb);
        prop_assert_eq!(&b[1..], &f.to_bits().to_be_bytes()[..]);
    }

    #[test]
    fn unpacking_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = Packer::Msgpack.unpack::<Value>(&bytes);
        let _ = Packer::Json.unpack::<Value>(&bytes);
        let _ = Packer::Msgpack.unpack::<Header>(&bytes);
        let _ = Packer::Json.unpack::<Header>(&bytes);
    }
}

// ---------------------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------------------

fn frame() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => Just(DELIM.to_vec()),
        1 => Just(Vec::new()),
        1 => Just(b"{}".to_vec()),
        1 => Just(vec![0x80]),
        6 => prop::collection::vec(any::<u8>(), 0..40),
    ]
}

fn frames() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(frame(), 0..14)
}

fn packer() -> impl Strategy<Value = Packer> {
    prop_oneof![Just(Packer::Json), Just(Packer::Msgpack)]
}

fn session(key: &[u8], p: Packer) -> Session {
    Session::new(SessionConfig::new(key.to_vec(), p)).expect("session")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn envelope_parse_never_panics_and_splits_at_the_first_delimiter(input in frames()) {
        let first = input.iter().position(|f| f == DELIM);
        match Envelope::parse(input.clone()) {
            Ok(env) => {
                let d = first.expect("parsed without a delimiter");
                prop_assert_eq!(env.delim_index(), d);
                prop_assert_eq!(env.idents(), &input[..d]);
                prop_assert_eq!(env.signature(), &input[d + 1][..]);
                prop_assert_eq!(env.signed_parts(), [&input[d + 2][..], &input[d + 3][..], &input[d + 4][..], &input[d + 5][..]]);
                prop_assert_eq!(env.buffers(), &input[d + 6..]);
                prop_assert_eq!(env.frames(), &input[..]);
            }
            Err((e, back)) => {
                prop_assert_eq!(&back, &input, "frames must be handed back intact");
                match first {
                    None => prop_assert_eq!(e, WireError::NoDelimiter(input.len())),
                    Some(d) => prop_assert_eq!(e, WireError::TooShort(input.len() - d - 1)),
                }
            }
        }
    }

    #[test]
    fn receive_never_panics_on_arbitrary_frames(
        input in frames(),
        key in prop_oneof![Just(Vec::new()), prop::collection::vec(any::<u8>(), 1..16)],
        p in packer(),
        replay in any::<bool>(),
    ) {
        let mut s = session(&key, p);
        match s.receive(input.clone(), replay) {
            Ok((env, _)) => prop_assert_eq!(env.frames(), &input[..]),
            Err((_, back)) => prop_assert_eq!(back, input),
        }
    }

    /// Correctly signed garbage gets past the signature check and fails (or not) only
    /// at decoding.
    #[test]
    fn signed_garbage_fails_only_at_decoding(
        parts in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 4),
        idents in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..6), 0..3),
        p in packer(),
    ) {
        let s = session(b"secret", p);
        let parts: [Vec<u8>; 4] = parts.try_into().expect("4 parts");
        let frames = s.frame(idents, parts.clone(), vec![]);
        let header_ok = p.unpack::<Header>(&parts[0]).is_ok();
        let mut rx = session(b"secret", p);
        match rx.receive(frames, true) {
            Ok(_) => prop_assert!(header_ok),
            Err((RecvError::Decode(_), _)) => prop_assert!(!header_ok),
            Err((e, _)) => prop_assert!(false, "unexpected {e}"),
        }
    }

    /// Flip one bit anywhere in a valid message: signed frames and the signature are
    /// protected, the routing prefix and the buffers are not.
    #[test]
    fn single_bit_flips_are_caught_exactly_where_signed(
        content in arb_value(),
        p in packer(),
        which in any::<prop::sample::Index>(),
        pos in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let mut tx = session(b"secret", p);
        let idents = vec![vec![0x00, 0xf4, 0xb0, 0xdc, 0x51]];
        let buffers = vec![b"pickle".to_vec(), vec![0xff; 3]];
        let (_, mut frames) = tx
            .serialize(idents, "apply_request", Parent::None, &Value::map(), &content, buffers)
            .expect("serialize");
        let i = which.index(frames.len());
        prop_assume!(i != 1 && !frames[i].is_empty()); // the delimiter itself; empty frames
        let j = pos.index(frames[i].len());
        frames[i][j] ^= 1 << bit;
        let mut rx = session(b"secret", p);
        let got = rx.receive(frames, true);
        match i {
            0 | 7.. => prop_assert!(got.is_ok(), "unsigned frame {} rejected", i),
            _ => prop_assert!(matches!(got, Err((RecvError::BadSignature, _))), "frame {} change not caught", i),
        }
    }
}

#[test]
fn deep_nesting_is_refused_not_a_crash() {
    // Nesting far beyond anything ipyparallel sends must be an error, not a stack
    // overflow. rmp-serde stops at depth 1024 and serde_json at 128; run on a thread with
    // room for 1024 levels even in an unoptimised build.
    let r = std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(|| {
            for depth in [10usize, 100, 5000, 200_000] {
                let mut m = vec![0x91u8; depth];
                m.push(0xc0);
                let mp = Packer::Msgpack.unpack::<Value>(&m);
                let j = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
                let js = Packer::Json.unpack::<Value>(j.as_bytes());
                if depth <= 100 {
                    assert!(mp.is_ok() && js.is_ok(), "depth {depth}");
                } else {
                    assert!(mp.is_err() && js.is_err(), "depth {depth} accepted");
                }
            }
        })
        .expect("spawn")
        .join();
    assert!(r.is_ok());
}

// ---------------------------------------------------------------------------------------
// Timestamps
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Parts {
    y: i32,
    mo: u32,
    d: u32,
    h: u32,
    mi: u32,
    s: u32,
    us: u32,
}

impl Parts {
    fn naive(&self) -> chrono::NaiveDateTime {
        NaiveDate::from_ymd_opt(self.y, self.mo, self.d).and_then(|d| d.and_hms_micro_opt(self.h, self.mi, self.s, self.us)).expect("valid parts")
    }
    fn base(&self) -> String {
        format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}", self.y, self.mo, self.d, self.h, self.mi, self.s)
    }
}

fn days_in(y: i32, mo: u32) -> u32 {
    let (ny, nm) = if mo == 12 { (y + 1, 1) } else { (y, mo + 1) };
    let first_next = NaiveDate::from_ymd_opt(ny, nm, 1).expect("date");
    first_next.pred_opt().expect("date").day()
}

fn parts(years: std::ops::RangeInclusive<i32>) -> impl Strategy<Value = Parts> {
    (years, 1u32..=12)
        .prop_flat_map(|(y, mo)| (Just(y), Just(mo), 1..=days_in(y, mo), 0u32..24, 0u32..60, 0u32..60, 0u32..1_000_000))
        .prop_map(|(y, mo, d, h, mi, s, us)| Parts { y, mo, d, h, mi, s, us })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn canonical_timestamps_round_trip_exactly(p in parts(1..=9999)) {
        let s = format!("{}.{:06}Z", p.base(), p.us);
        let t = parse_iso(&s).expect("parses");
        prop_assert_eq!(format_iso(&t), s);
        prop_assert_eq!(t.naive_utc(), p.naive());
    }

    #[test]
    fn python_renderings_parse_to_the_same_instant(p in parts(1..=9999), plus00 in any::<bool>()) {
        // Python: isoformat() drops the fraction when microsecond == 0; json_default
        // turns +00:00 into Z (msgpack.packb import-string form keeps +00:00).
        let frac = if p.us == 0 { String::new() } else { format!(".{:06}", p.us) };
        let s = format!("{}{}{}", p.base(), frac, if plus00 { "+00:00" } else { "Z" });
        let t = parse_iso(&s).expect("parses");
        prop_assert_eq!(t.naive_utc(), p.naive());
        prop_assert_eq!(format_iso(&t), format!("{}.{:06}Z", p.base(), p.us));
    }

    #[test]
    fn short_fractions_are_read_as_leading_digits(p in parts(1..=9999), digits in 1usize..=6, z in any::<bool>()) {
        let six = format!("{:06}", p.us);
        let s = format!("{}.{}{}", p.base(), &six[..digits], if z { "Z" } else { "" });
        let t = parse_iso(&s).expect("parses");
        let want_us: u32 = format!("{:0<6}", &six[..digits]).parse().expect("digits");
        prop_assert_eq!(t.nanosecond(), want_us * 1000);
        prop_assert_eq!(parse_iso(&format_iso(&t)), Some(t));
    }

    #[test]
    fn offsets_are_applied(p in parts(2..=9998), east in any::<bool>(), oh in 0i32..24, om in 0i32..60, colon in any::<bool>()) {
        let off = format!("{}{:02}{}{:02}", if east { '+' } else { '-' }, oh, if colon { ":" } else { "" }, om);
        let s = format!("{}.{:06}{}", p.base(), p.us, off);
        let t = parse_iso(&s).expect("parses");
        let secs = (oh * 3600 + om * 60) as i64 * if east { 1 } else { -1 };
        let want = Utc.from_utc_datetime(&(p.naive() - Duration::seconds(secs)));
        prop_assert_eq!(t, want);
        prop_assert_eq!(parse_iso(&format_iso(&t)), Some(t));
    }

    #[test]
    fn format_then_parse_is_identity(secs in -62_135_596_800i64..253_402_300_799, us in 0u32..1_000_000) {
        // 0001-01-01T00:00:00Z ..= 9999-12-31T23:59:59Z
        let t = Utc.timestamp_opt(secs, us * 1000).single().expect("in range");
        let s = format_iso(&t);
        prop_assert_eq!(s.len(), 27);
        prop_assert!(s.ends_with('Z'));
        prop_assert_eq!(parse_iso(&s), Some(t));
        prop_assert_eq!(t.year(), s[..4].parse::<i32>().expect("year"));
    }

    #[test]
    fn parse_iso_never_panics(s in any::<String>()) {
        let _ = parse_iso(&s);
    }

    #[test]
    fn parse_iso_never_panics_on_near_misses(p in parts(1..=9999), cut in any::<prop::sample::Index>(), junk in "[0-9:+\\-.TZé ]{0,8}") {
        // Valid prefixes with arbitrary (often non-ASCII) tails around the interesting offsets.
        let s = format!("{}.{:06}Z", p.base(), p.us);
        let i = cut.index(s.len() + 1);
        let mangled = format!("{}{}", &s[..i], junk);
        if let Some(t) = parse_iso(&mangled) {
            prop_assert_eq!(parse_iso(&format_iso(&t)), Some(t));
        }
    }
}
