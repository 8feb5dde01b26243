//! Live round trips against Python's `jupyter_client.session.Session`, both packers.
//!
//! Python runs tests/python/session_peer.py (one short-lived process per exchange,
//! frames as hex in JSON over stdin/stdout, 60 s limit each, `IPPX_PYTHON_TIMEOUT_SECS`
//! to change it). The interpreter is
//! `$IPPX_PYTHON`, else `<workspace>/.venv/bin/python`. Without a usable interpreter the
//! tests fail and say to run `interop/setup_venv.sh`; with `IPPX_SKIP_PYTHON=1` they
//! print a skip notice instead.

mod common;

use base64::Engine as _;
use chrono::{TimeZone, Utc};
use common::*;
use ippx_protocol::content::{ConnectionReply, EnginePorts, ErrorContent, RegistrationReply, RegistrationRequest};
use ippx_protocol::datetime::{format_iso, parse_iso};
use ippx_protocol::{vmap, Header, Packer, Parent, Session, SessionConfig, Value};
use serde_json::{json, Value as Json};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Limit for one Python run; `IPPX_PYTHON_TIMEOUT_SECS` overrides it.
fn timeout() -> Duration {
    let secs = std::env::var("IPPX_PYTHON_TIMEOUT_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    Duration::from_secs(secs)
}
const KEY: &str = "0f1e2d3c-4b5a69788796a5b4c3d2e1f0";
const ENGINE: &str = "9aabafec-fe263ddcec9aba8f65fe8580";
const ENGINE1: &str = "48b87ee6-a89c0c33967aa576874ff26b";
const CLIENT_ID: [u8; 5] = [0x00, 0xf4, 0xb0, 0xdc, 0x51];

// ---------------------------------------------------------------------------------------
// Running Python
// ---------------------------------------------------------------------------------------

fn interpreter() -> PathBuf {
    match std::env::var_os("IPPX_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => {
            let workspace = manifest_dir().parent().expect("protocol/ has a parent").to_path_buf();
            workspace.join(".venv").join("bin").join("python")
        }
    }
}

/// Runs the peer script once with `req` on stdin; the answer parsed from stdout.
fn run_peer(python: &Path, req: &Json) -> Result<Json, String> {
    let script = manifest_dir().join("tests").join("python").join("session_peer.py");
    let mut child = Command::new(python)
        .arg(&script)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONIOENCODING", "utf-8")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", python.display()))?;
    let input = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let mut stderr = child.stderr.take().ok_or("no stderr")?;
    // Separate threads so that neither side can block the other on a full pipe.
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stdout.read_to_end(&mut b);
        b
    });
    let err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stderr.read_to_end(&mut b);
        b
    });
    let limit = timeout();
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{} {} timed out after {limit:?}", python.display(), script.display()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("waiting for python: {e}")),
        }
    };
    let _ = writer.join();
    let out = out.join().unwrap_or_default();
    let err = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
    if !status.success() {
        return Err(format!("{} exited with {status}:\n{err}", python.display()));
    }
    serde_json::from_slice(&out).map_err(|e| format!("bad answer from python ({e}): {}\n{err}", String::from_utf8_lossy(&out)))
}

/// The interpreter to use, probed once per test binary. `None` means "skip" (only with
/// `IPPX_SKIP_PYTHON=1`); a missing interpreter otherwise fails the test.
fn python() -> Option<PathBuf> {
    static PROBE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let probed = PROBE.get_or_init(|| {
        let path = interpreter();
        match run_peer(&path, &json!({"op": "probe"})) {
            Ok(info) => {
                eprintln!("python_roundtrip: using {} {info}", path.display());
                Ok(path)
            }
            Err(e) => Err(format!(
                "no Python with jupyter_client + msgpack for the interop tests.\n\
                 Tried {} (from {}): {e}\n\
                 Run `interop/setup_venv.sh` (creates <workspace>/.venv), or point IPPX_PYTHON at an \
                 interpreter that has jupyter_client and msgpack, or set IPPX_SKIP_PYTHON=1 to skip.",
                path.display(),
                if std::env::var_os("IPPX_PYTHON").is_some() { "$IPPX_PYTHON" } else { "default <workspace>/.venv" },
            )),
        }
    });
    match probed {
        Ok(p) => Some(p.clone()),
        Err(msg) if std::env::var("IPPX_SKIP_PYTHON").as_deref() == Ok("1") => {
            eprintln!(
                "\n##################################################################\n\
                 ## SKIPPED: Python interop test (IPPX_SKIP_PYTHON=1)\n\
                 ## {}\n\
                 ##################################################################\n",
                msg.replace('\n', "\n## ")
            );
            None
        }
        Err(msg) => panic!("{msg}"),
    }
}

fn peer(python: &Path, req: Json) -> Json {
    run_peer(python, &req).unwrap_or_else(|e| panic!("python peer failed: {e}"))
}

// ---------------------------------------------------------------------------------------
// Values, in Rust and as Python expressions
// ---------------------------------------------------------------------------------------

fn py_str(s: &str) -> String {
    // A JSON string literal is a Python str literal (serde_json never writes `\/`).
    serde_json::to_string(s).expect("string")
}

fn py_float(f: f64) -> String {
    assert!(f.is_finite());
    let s = format!("{f:?}"); // shortest round-trip form, e.g. 0.1, 1e-300, -0.0
    if s.contains(['.', 'e']) {
        s
    } else {
        format!("{s}.0")
    }
}

/// A Python expression for `v` as the given packer delivers it: msgpack bin -> bytes,
/// JSON bin -> the base64 text Python's json packer would have produced.
fn py_value(v: &Value, packer: Packer) -> String {
    match v {
        Value::Nil => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::Float(f) => py_float(*f),
        Value::Str(s) => py_str(s),
        Value::Bin(b) => match packer {
            Packer::Msgpack => format!("b'{}'", b.iter().map(|x| format!("\\x{x:02x}")).collect::<String>()),
            Packer::Json => py_str(&base64::engine::general_purpose::STANDARD.encode(b)),
        },
        Value::Array(a) => format!("[{}]", a.iter().map(|x| py_value(x, packer)).collect::<Vec<_>>().join(", ")),
        Value::Map(m) => format!("{{{}}}", m.iter().map(|(k, x)| format!("{}: {}", py_str(k), py_value(x, packer))).collect::<Vec<_>>().join(", ")),
    }
}

/// Floats that stress text round trips: awkward decimals, extremes, subnormals, and a
/// deterministic pseudo-random sample.
#[allow(clippy::excessive_precision)] // the literals are the point
fn test_floats() -> Vec<f64> {
    let mut v = vec![
        0.1,
        0.1 + 0.2,
        1.0 / 3.0,
        2.0 / 3.0,
        -0.0,
        1e23,
        9007199254740993.0,
        2.2250738585072011e-308,
        2.2250738585072014e-308,
        f64::MIN_POSITIVE,
        5e-324,
        f64::MAX,
        f64::MIN,
        f64::EPSILON,
        123456789.123456789,
        8.98846567431158e307,
        1.7976931348623157e308,
        4.9406564584124654e-324,
        0.30000000000000004,
        1e-7,
        1e16,
        1e-5,
        123e300,
    ];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    while v.len() < 400 {
        let r = next();
        let f = if v.len() % 2 == 0 { f64::from_bits(r) } else { (r >> 11) as f64 / (1u64 << 53) as f64 * 1e3 };
        if f.is_finite() {
            v.push(f);
        }
    }
    v
}

fn session(key: &str, packer: Packer) -> Session {
    Session::new(SessionConfig::new(key.as_bytes().to_vec(), packer)).expect("session")
}

fn hexes(frames: &[Vec<u8>]) -> Json {
    Json::Array(frames.iter().map(|f| Json::String(hex::encode(f))).collect())
}

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32, us: i64) -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).single().expect("date") + chrono::Duration::microseconds(us)
}

fn big_buffer() -> Vec<u8> {
    (0..65536u32).map(|i| (i * 31 % 251) as u8).collect()
}

fn ports() -> EnginePorts {
    EnginePorts {
        interface: "tcp://127.0.0.1".into(),
        registration: 21000,
        control: 21001,
        mux: 21002,
        task: 21003,
        iopub: 21004,
        hb_ping: 21005,
        hb_pong: 21006,
        broadcast: vec![21007, 21008],
    }
}

// ---------------------------------------------------------------------------------------
// (a) Python signs and packs -> Rust verifies and unpacks
// ---------------------------------------------------------------------------------------

const PY_MIXED: &str = r#"{"text": "na\u00efve \u00e9t\u00e9 \u65e5\u672c \U0001f600 \x00\t\"q\"\\", "nested": {"a": {"b": [1, 2, {"c": None}]}, "empty": {}}, "float": 2.5, "third": 1/3, "neg": -7, "big": 2**64 - 1, "min": -2**63, "none": None, "yes": True, "no": False, "list": [1, "two", 3.0, None, [], {}], "when": datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC), "when0": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "when_cet": datetime(2026, 1, 2, 4, 4, 5, 123000, tzinfo=timezone(timedelta(hours=1))), "bytes": b"\x00\x01\xfe\xff"}"#;

fn rust_mixed(packer: Packer) -> Value {
    vmap! {
        "text" => "na\u{ef}ve \u{e9}t\u{e9} \u{65e5}\u{672c} \u{1f600} \u{0}\t\"q\"\\",
        "nested" => vmap! {"a" => vmap! {"b" => Value::Array(vec![Value::Int(1), Value::Int(2), vmap! {"c" => Value::Nil}])}, "empty" => Value::map()},
        "float" => 2.5f64,
        "third" => 1.0f64 / 3.0,
        "neg" => -7i64,
        "big" => Value::UInt(u64::MAX),
        "min" => Value::Int(i64::MIN),
        "none" => Value::Nil,
        "yes" => true,
        "no" => false,
        "list" => Value::Array(vec![Value::Int(1), "two".into(), Value::Float(3.0), Value::Nil, Value::Array(vec![]), Value::map()]),
        "when" => "2026-01-02T03:04:05.000006Z",
        "when0" => "2026-01-02T03:04:05Z",
        "when_cet" => "2026-01-02T04:04:05.123000+01:00",
        "bytes" => match packer {
            Packer::Msgpack => Value::Bin(vec![0x00, 0x01, 0xfe, 0xff]),
            Packer::Json => Value::from("AAH+/w=="),
        },
    }
}

fn python_to_rust(packer: Packer) {
    let Some(py) = python() else { return };
    let floats = test_floats();
    let floats_value = Value::Array(floats.iter().map(|f| Value::Float(*f)).collect());
    // PY_MIXED with one more key (the float sample) before its closing brace.
    let content_expr = format!("{}, \"floats\": {}}}", PY_MIXED.strip_suffix('}').expect("dict"), py_value(&floats_value, packer));

    // A Rust-made request header that Python will echo as the reply's parent.
    let mut rust = session(KEY, packer);
    let request = rust.new_header("apply_request");
    let request_expr = py_value(&Packer::Json.unpack::<Value>(&Packer::Json.pack(&request).expect("pack")).expect("v"), packer);
    let buffers = vec![vec![0x80, 0x04, 0x4b, 0x03, 0x2e], vec![], big_buffer()];

    let answer = peer(
        &py,
        json!({
            "op": "make", "packer": packer.name(), "key": KEY,
            "messages": [
                {
                    "msg_type": "ippx_test",
                    "content": content_expr,
                    "metadata": r#"{"started": datetime(2026, 11, 25, 7, 32, 52, 922177, tzinfo=UTC), "dependencies_met": True, "engine": "9aabafec-fe263ddcec9aba8f65fe8580", "label": None, "status": "ok"}"#,
                    "parent": request_expr,
                    "idents_hex": [hex::encode(CLIENT_ID), hex::encode(ENGINE)],
                    "buffers_hex": hexes(&buffers),
                },
                {
                    "msg_type": "registration_request",
                    "content": format!("{{\"uuid\": {}}}", py_str(ENGINE)),
                    "idents_hex": [hex::encode(ENGINE)],
                },
                {
                    "msg_type": "connection_reply",
                    "content": format!("{{\"status\": \"ok\", \"engines\": {{\"1\": {}, \"0\": {}}}}}", py_str(ENGINE1), py_str(ENGINE)),
                },
            ]
        }),
    );
    let msgs = answer["messages"].as_array().expect("messages");
    assert_eq!(msgs.len(), 3);

    let mut rx = session(KEY, packer);
    let now = Utc::now();
    let mut received = Vec::new();
    for m in msgs {
        let frames = frames_from_hex(&m["frames_hex"]);
        let (env, header) = rx
            .receive(frames, true)
            .map_err(|(e, _)| e.to_string())
            .unwrap_or_else(|e| panic!("{packer}: Rust refused Python's {}: {e}", m["header"]["msg_type"]));
        // Header as Python built it.
        let py_header = &m["header"];
        assert_eq!(header.msg_id, py_header["msg_id"].as_str().expect("msg_id"));
        assert_eq!(header.msg_type, py_header["msg_type"].as_str().expect("msg_type"));
        assert_eq!(header.session, py_header["session"].as_str().expect("session"));
        assert_eq!(header.username, "username");
        assert_eq!(header.version, "5.4");
        let date = parse_iso(&header.date).unwrap_or_else(|| panic!("{packer}: date {:?}", header.date));
        assert!(header.date.ends_with('Z'), "{packer}: Python dates end in Z: {}", header.date);
        assert_eq!(Some(date), parse_iso(py_header["date"].as_str().expect("date")));
        assert!((now - date).num_seconds().abs() < 300, "{packer}: date {date} is not now");
        received.push((env, header));
    }

    // 1: every value kind, bit-exact floats, buffers, routing prefix, echoed parent.
    let (env, _) = &received[0];
    let content: Value = rx.unpack(env.content_bytes()).expect("content");
    let mut want = rust_mixed(packer);
    want.insert("floats", floats_value);
    if let Some(diff) = strict_diff(&content, &want, "content") {
        panic!("{packer}: Python content read by Rust differs: {diff}");
    }
    let cet = parse_iso(content.get("when_cet").as_str().expect("when_cet")).expect("when_cet parses");
    assert_eq!(cet, utc(2026, 1, 2, 3, 4, 5, 123000));
    assert_eq!(parse_iso(content.get("when0").as_str().expect("when0")), Some(utc(2026, 1, 2, 3, 4, 5, 0)));
    assert_eq!(format_iso(&parse_iso(content.get("when").as_str().expect("when")).expect("when")), "2026-01-02T03:04:05.000006Z");
    let metadata: Value = rx.unpack(env.metadata_bytes()).expect("metadata");
    let want_md = vmap! {
        "started" => "2026-11-25T07:32:52.922177Z",
        "dependencies_met" => true,
        "engine" => ENGINE,
        "label" => Value::Nil,
        "status" => "ok",
    };
    assert_eq!(strict_diff(&metadata, &want_md, "metadata"), None, "{packer}");
    let parent: Header = rx.unpack(env.parent_bytes()).expect("parent");
    assert_eq!(parent, request, "{packer}: Python echoed the Rust header as parent");
    assert_eq!(env.idents(), [CLIENT_ID.to_vec(), ENGINE.as_bytes().to_vec()]);
    assert_eq!(env.buffers(), &buffers[..]);

    // 2, 3: typed contents.
    let (env, _) = &received[1];
    let r: RegistrationRequest = rx.unpack(env.content_bytes()).expect("registration_request");
    assert_eq!(r, RegistrationRequest { uuid: ENGINE.into(), id: None });
    assert_eq!(rx.unpack::<Value>(env.parent_bytes()).expect("parent"), Value::map());
    let (env, _) = &received[2];
    let r: ConnectionReply = rx.unpack(env.content_bytes()).expect("connection_reply");
    assert_eq!(r.status, "ok");
    assert_eq!(r.engines.get("0").map(String::as_str), Some(ENGINE));
    assert_eq!(r.engines.get("1").map(String::as_str), Some(ENGINE1));
}

#[test]
fn python_to_rust_json() {
    python_to_rust(Packer::Json);
}

#[test]
fn python_to_rust_msgpack() {
    python_to_rust(Packer::Msgpack);
}

// ---------------------------------------------------------------------------------------
// (b) Rust serializes -> Python deserializes (with its signature check)
// ---------------------------------------------------------------------------------------

struct Sent {
    frames: Vec<Vec<u8>>,
    expect: Json,
}

fn rust_messages(packer: Packer, rust: &mut Session) -> Vec<Sent> {
    let floats = test_floats();
    let floats_value = Value::Array(floats.iter().map(|f| Value::Float(*f)).collect());
    let mut content = rust_mixed(packer);
    // A date rendered by Rust, as the hub renders TaskRecord times.
    content.insert("when", Value::Str(format_iso(&utc(2026, 1, 2, 3, 4, 5, 6))));
    content.insert("bytes", Value::Bin(vec![0x00, 0x01, 0xfe, 0xff]));
    content.insert("floats", floats_value.clone());
    let bytes_expr = match packer {
        Packer::Msgpack => r#"b"\x00\x01\xfe\xff""#,
        Packer::Json => r#""AAH+/w==""#,
    };
    // Hand-written, independent of py_value, except for the float sample.
    let content_expr = format!(
        r#"{{"text": "na\u00efve \u00e9t\u00e9 \u65e5\u672c \U0001f600 \x00\t\"q\"\\", "nested": {{"a": {{"b": [1, 2, {{"c": None}}]}}, "empty": {{}}}}, "float": 2.5, "third": 1/3, "neg": -7, "big": 2**64 - 1, "min": -2**63, "none": None, "yes": True, "no": False, "list": [1, "two", 3.0, None, [], {{}}], "when": "2026-01-02T03:04:05.000006Z", "when0": "2026-01-02T03:04:05Z", "when_cet": "2026-01-02T04:04:05.123000+01:00", "bytes": {bytes_expr}, "floats": {}}}"#,
        py_value(&floats_value, packer)
    );

    let mut other = session(KEY, packer);
    let request = other.new_header("apply_request");
    let request_value: Value = Packer::Json.unpack(&Packer::Json.pack(&request).expect("pack")).expect("value");
    let started = format_iso(&Utc::now());
    let metadata = vmap! {
        "started" => started.clone(),
        "dependencies_met" => true,
        "engine" => ENGINE,
        "is_broadcast" => false,
        "original_msg_id" => "",
        "label" => Value::Nil,
        "status" => "ok",
    };
    let buffers = vec![vec![0x80, 0x04, 0x4b, 0x03, 0x2e], vec![], big_buffer()];
    let idents = vec![CLIENT_ID.to_vec()];

    let mut out = Vec::new();
    let (_, frames) = rust.serialize(idents.clone(), "ippx_test", Parent::Header(&request), &metadata, &content, buffers.clone()).expect("serialize");
    out.push(Sent {
        frames,
        expect: json!({
            "msg_type": "ippx_test",
            "content": content_expr,
            "metadata": format!(r#"{{"started": {}, "dependencies_met": True, "engine": {}, "is_broadcast": False, "original_msg_id": "", "label": None, "status": "ok"}}"#, py_str(&started), py_str(ENGINE)),
            "parent": py_value(&request_value, packer),
            "idents_hex": [hex::encode(CLIENT_ID)],
            "buffers_hex": hexes(&buffers),
        }),
    });

    let reply = RegistrationReply { id: 0, status: "ok".into(), hb_period: 1000, connection_info: ports() };
    let (_, frames) =
        rust.serialize(vec![ENGINE.as_bytes().to_vec()], "registration_reply", Parent::None, &Value::map(), &reply, vec![]).expect("serialize");
    out.push(Sent {
        frames,
        expect: json!({
            "msg_type": "registration_reply",
            "content": r#"{"id": 0, "status": "ok", "hb_period": 1000, "connection_info": {"interface": "tcp://127.0.0.1", "registration": 21000, "control": 21001, "mux": 21002, "task": 21003, "iopub": 21004, "hb_ping": 21005, "hb_pong": 21006, "broadcast": [21007, 21008]}}"#,
            "metadata": "{}",
            "parent": "{}",
            "idents_hex": [hex::encode(ENGINE)],
            "buffers_hex": [],
        }),
    });

    let err = ErrorContent::new("KeyError", "'No such message: x'");
    let (_, frames) = rust.serialize(idents.clone(), "result_reply", Parent::Header(&request), &Value::map(), &err, vec![]).expect("serialize");
    let tb = err.traceback.iter().map(|l| py_str(l)).collect::<Vec<_>>().join(", ");
    out.push(Sent {
        frames,
        expect: json!({
            "msg_type": "result_reply",
            "content": format!(r#"{{"status": "error", "ename": "KeyError", "evalue": "'No such message: x'", "traceback": [{tb}], "engine_info": {{}}}}"#),
        }),
    });

    let engines = [("0".to_owned(), ENGINE.to_owned()), ("1".to_owned(), ENGINE1.to_owned())].into_iter().collect();
    let conn = ConnectionReply { status: "ok".into(), engines };
    let (_, frames) = rust.serialize(idents, "connection_reply", Parent::Header(&request), &Value::map(), &conn, vec![]).expect("serialize");
    out.push(Sent {
        frames,
        expect: json!({
            "msg_type": "connection_reply",
            "content": format!(r#"{{"status": "ok", "engines": {{"0": {}, "1": {}}}}}"#, py_str(ENGINE), py_str(ENGINE1)),
        }),
    });

    let (_, frames) = rust
        .serialize(
            vec![b"engine.0.stdout".to_vec()],
            "stream",
            Parent::Header(&request),
            &Value::map(),
            &vmap! {"name" => "stdout", "text" => "h\u{e9}llo \u{2713}\n"},
            vec![],
        )
        .expect("serialize");
    out.push(Sent {
        frames,
        expect: json!({
            "msg_type": "stream",
            "content": r#"{"name": "stdout", "text": "h\u00e9llo \u2713\n"}"#,
            "idents_hex": [hex::encode(b"engine.0.stdout")],
        }),
    });
    out
}

fn check(py: &Path, packer: Packer, messages: Vec<Json>) -> Vec<Json> {
    let answer = peer(py, json!({"op": "check", "packer": packer.name(), "key": KEY, "messages": messages}));
    answer["results"].as_array().expect("results").clone()
}

fn rust_to_python(packer: Packer) {
    let Some(py) = python() else { return };
    let mut rust = session(KEY, packer);
    let sent = rust_messages(packer, &mut rust);
    let n = sent.len();
    let results = check(&py, packer, sent.iter().map(|s| json!({"frames_hex": hexes(&s.frames), "expect": s.expect})).collect());
    assert_eq!(results.len(), n);
    for (s, r) in sent.iter().zip(&results) {
        let what = format!("{packer} {}", s.expect["msg_type"]);
        assert_eq!(r["accepted"], true, "{what}: Python refused the Rust message: {}", r["error"]);
        let problems = r["problems"].as_array().expect("problems");
        assert!(problems.is_empty(), "{what}: Python saw:\n  {}", problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n  "));
    }
}

#[test]
fn rust_to_python_json() {
    rust_to_python(Packer::Json);
}

#[test]
fn rust_to_python_msgpack() {
    rust_to_python(Packer::Msgpack);
}

fn python_rejects_bad_rust_messages(packer: Packer) {
    let Some(py) = python() else { return };
    let mut rust = session(KEY, packer);
    let good = rust_messages(packer, &mut rust).swap_remove(0);
    let d = good.frames.iter().position(|f| f == b"<IDS|MSG>").expect("delim");

    let mut tampered_content = good.frames.clone();
    let c = &mut tampered_content[d + 5];
    let mid = c.len() / 2;
    c[mid] ^= 0x01;
    let mut tampered_header = good.frames.clone();
    tampered_header[d + 2][3] ^= 0x01;
    let mut upper = good.frames.clone();
    upper[d + 1] = upper[d + 1].to_ascii_uppercase();
    assert!(
        !session(KEY, packer).signer().verify(&upper[d + 1], [&upper[d + 2], &upper[d + 3], &upper[d + 4], &upper[d + 5]]),
        "Rust accepts an upper-case signature"
    );
    let mut unsigned = good.frames.clone();
    unsigned[d + 1].clear();
    let mut reroute_and_new_buffer = good.frames.clone();
    reroute_and_new_buffer[0] = b"another-route".to_vec();
    reroute_and_new_buffer.push(b"extra".to_vec());
    let (_, wrong_key) =
        session("not-the-key", packer).serialize(vec![], "x", Parent::None, &Value::map(), &Value::map(), vec![]).expect("serialize");
    let (_, no_key) = session("", packer).serialize(vec![], "x", Parent::None, &Value::map(), &Value::map(), vec![]).expect("serialize");

    let plain = |frames: &Vec<Vec<u8>>, fresh: bool| json!({"frames_hex": hexes(frames), "expect": {}, "fresh_session": fresh});
    let cases: Vec<(&str, Json, Option<&str>)> = vec![
        ("original", json!({"frames_hex": hexes(&good.frames), "expect": good.expect}), None),
        ("same frames again", plain(&good.frames, false), Some("Duplicate Signature")),
        ("content byte flipped", plain(&tampered_content, true), Some("Invalid Signature")),
        ("header byte flipped", plain(&tampered_header, true), Some("Invalid Signature")),
        ("signature upper-cased", plain(&upper, true), Some("Invalid Signature")),
        ("empty signature", plain(&unsigned, true), Some("Unsigned Message")),
        ("signed with another key", plain(&wrong_key, true), Some("Invalid Signature")),
        ("signing disabled in Rust", plain(&no_key, true), Some("Unsigned Message")),
        ("routing prefix and buffers changed", plain(&reroute_and_new_buffer, true), None),
    ];
    let results = check(&py, packer, cases.iter().map(|c| c.1.clone()).collect());
    assert_eq!(results.len(), cases.len());
    for ((what, _, want_err), r) in cases.iter().zip(&results) {
        match want_err {
            None => {
                assert_eq!(r["accepted"], true, "{packer} {what}: refused: {}", r["error"]);
                assert_eq!(r["problems"], json!([]), "{packer} {what}");
            }
            Some(err) => {
                assert_eq!(r["accepted"], false, "{packer} {what}: Python accepted it");
                let got = r["error"].as_str().unwrap_or_default();
                assert!(got.contains(err), "{packer} {what}: Python said {got:?}, expected {err:?}");
            }
        }
    }
}

#[test]
fn python_rejects_tampered_replayed_and_unsigned_rust_messages_json() {
    python_rejects_bad_rust_messages(Packer::Json);
}

#[test]
fn python_rejects_tampered_replayed_and_unsigned_rust_messages_msgpack() {
    python_rejects_bad_rust_messages(Packer::Msgpack);
}
