//! Helpers shared by the integration tests (each test file uses a subset).
#![allow(dead_code)]

use ippx_protocol::{Packer, Value};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures_dir() -> PathBuf {
    manifest_dir().join("tests").join("fixtures")
}

pub fn load_json(path: &Path) -> Json {
    let text = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

pub fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap_or_else(|e| panic!("bad hex {s:?}: {e}"))
}

/// Bytes written in the spec's notation: space-separated hex groups (`86`, `6d73675f6964`)
/// and `"quoted UTF-8 text"` (no escapes inside the quotes).
pub fn spec_bytes(notation: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = notation.trim();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('"') {
            let end = after.find('"').unwrap_or_else(|| panic!("unterminated quote in {notation:?}"));
            out.extend_from_slice(&after.as_bytes()[..end]);
            rest = after[end + 1..].trim_start();
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            out.extend(unhex(&rest[..end]));
            rest = rest[end..].trim_start();
        }
    }
    out
}

/// A JSON file read into a protocol `Value` through the crate's own JSON unpacker, which
/// keeps key order (`serde_json::Value` would sort the keys).
pub fn load_value(path: &Path) -> Value {
    let text = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    Packer::Json.unpack(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// Replaces every `Bin` by `{"__bytes__": "<hex>"}`, the tag the fixture generator uses,
/// so str and bytes stay distinguishable in a JSON fixture.
pub fn tagged(v: &Value) -> Value {
    match v {
        Value::Bin(b) => Value::Map(vec![("__bytes__".to_owned(), Value::Str(hex::encode(b)))]),
        Value::Array(a) => Value::Array(a.iter().map(tagged).collect()),
        Value::Map(m) => Value::Map(m.iter().map(|(k, v)| (k.clone(), tagged(v))).collect()),
        other => other.clone(),
    }
}

/// The frames of a fixture message: `frames_hex` (captured) or a list of text frames (spec).
pub fn frames_from_hex(j: &Json) -> Vec<Vec<u8>> {
    j.as_array().expect("frames array").iter().map(|f| unhex(f.as_str().expect("hex frame"))).collect()
}

pub fn frames_from_text(j: &Json) -> Vec<Vec<u8>> {
    j.as_array().expect("frames array").iter().map(|f| f.as_str().expect("text frame").as_bytes().to_vec()).collect()
}

/// Packer for a fixture's `"packer"` field.
pub fn packer_of(j: &Json) -> Packer {
    j["packer"].as_str().expect("packer").parse().expect("known packer")
}

/// Equality that also tells floats apart bit for bit (so `-0.0 != 0.0`, and a float
/// parsed one ULP off is caught). Returns the path of the first difference.
pub fn strict_diff(got: &Value, want: &Value, path: &str) -> Option<String> {
    match (got, want) {
        (Value::Float(a), Value::Float(b)) => {
            (a.to_bits() != b.to_bits()).then(|| format!("{path}: got {a:e} ({:#x}), want {b:e} ({:#x})", a.to_bits(), b.to_bits()))
        }
        (Value::Array(a), Value::Array(b)) => {
            if a.len() != b.len() {
                return Some(format!("{path}: length {} != {}", a.len(), b.len()));
            }
            a.iter().zip(b).enumerate().find_map(|(i, (x, y))| strict_diff(x, y, &format!("{path}[{i}]")))
        }
        (Value::Map(a), Value::Map(b)) => {
            let ka: Vec<&str> = a.iter().map(|(k, _)| k.as_str()).collect();
            let kb: Vec<&str> = b.iter().map(|(k, _)| k.as_str()).collect();
            if ka != kb {
                return Some(format!("{path}: keys {ka:?} != {kb:?}"));
            }
            a.iter().zip(b).find_map(|((k, x), (_, y))| strict_diff(x, y, &format!("{path}.{k}")))
        }
        (a, b) => (a != b).then(|| format!("{path}: got {a:?}, want {b:?}")),
    }
}
