//! A dynamic value that keeps the distinctions both Python packers make.
//!
//! Neither `serde_json::Value` nor `rmpv::Value` fits: the first cannot hold msgpack `bin`
//! (Python `bytes`), the second serialises `bin` as an array of numbers through serde_json,
//! where Python's JSON packer sends base64 text. This type asks the serializer whether it
//! is human-readable and renders bytes accordingly. Map keys are always strings because
//! Python unpacks msgpack with `strict_map_key=True` and JSON has nothing else.

use base64::Engine as _;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use std::fmt;

#[derive(Clone, Debug, PartialEq, Default)]
pub enum Value {
    #[default]
    Nil,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Bin(Vec<u8>),
    Array(Vec<Value>),
    /// Insertion-ordered, as a Python dict.
    Map(Vec<(String, Value)>),
}

static NIL: Value = Value::Nil;

impl Value {
    pub fn map() -> Value {
        Value::Map(Vec::new())
    }

    pub fn is_nil(&self) -> bool {
        matches!(self, Value::Nil)
    }

    /// Map lookup; `Nil` for a missing key or a non-map, like Python's `dict.get`.
    pub fn get(&self, key: &str) -> &Value {
        match self {
            Value::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v).unwrap_or(&NIL),
            _ => &NIL,
        }
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        match self {
            Value::Map(entries) => entries.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Sets `key`, replacing an existing entry in place. No-op on a non-map.
    pub fn insert(&mut self, key: impl Into<String>, value: Value) {
        if let Value::Map(entries) = self {
            let key = key.into();
            if let Some(slot) = entries.iter_mut().find(|(k, _)| *k == key) {
                slot.1 = value;
            } else {
                entries.push((key, value));
            }
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::Int(i) => Some(i),
            Value::UInt(u) => i64::try_from(u).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Float(f) => Some(f),
            Value::Int(i) => Some(i as f64),
            Value::UInt(u) => Some(u as f64),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(String, Value)]> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// Python truthiness, used where ipyparallel writes `if x:`.
    pub fn truthy(&self) -> bool {
        match self {
            Value::Nil => false,
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::UInt(u) => *u != 0,
            Value::Float(f) => *f != 0.0,
            Value::Str(s) => !s.is_empty(),
            Value::Bin(b) => !b.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Map(m) => !m.is_empty(),
        }
    }

    /// Approximate serialized size, for store accounting.
    pub fn approx_size(&self) -> usize {
        match self {
            Value::Nil | Value::Bool(_) => 1,
            Value::Int(_) | Value::UInt(_) | Value::Float(_) => 9,
            Value::Str(s) => s.len() + 5,
            Value::Bin(b) => b.len() + 5,
            Value::Array(a) => 5 + a.iter().map(Value::approx_size).sum::<usize>(),
            Value::Map(m) => 5 + m.iter().map(|(k, v)| k.len() + 5 + v.approx_size()).sum::<usize>(),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_owned())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}
impl From<u64> for Value {
    fn from(u: u64) -> Self {
        Value::UInt(u)
    }
}
impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Float(f)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(o: Option<T>) -> Self {
        o.map_or(Value::Nil, Into::into)
    }
}
impl From<Vec<Value>> for Value {
    fn from(a: Vec<Value>) -> Self {
        Value::Array(a)
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Nil => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::UInt(u) => s.serialize_u64(*u),
            Value::Float(f) => s.serialize_f64(*f),
            Value::Str(st) => s.serialize_str(st),
            Value::Bin(b) => {
                if s.is_human_readable() {
                    s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
                } else {
                    s.serialize_bytes(b)
                }
            }
            Value::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for v in a {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Value::Map(m) => {
                let mut map = s.serialize_map(Some(m.len()))?;
                for (k, v) in m {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON or msgpack value with string map keys")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        // Keep small unsigned ints as Int so equality with JSON-decoded ints is simple.
        Ok(i64::try_from(v).map_or(Value::UInt(v), Value::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Bin(v.to_vec()))
    }
    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Value, E> {
        Ok(Value::Bin(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Nil)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Nil)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(v) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0).min(4096));
        while let Some(k) = map.next_key::<String>()? {
            let v = map.next_value()?;
            out.push((k, v));
        }
        Ok(Value::Map(out))
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

/// Builds a `Value::Map` from `key => value` pairs.
#[macro_export]
macro_rules! vmap {
    () => { $crate::Value::Map(Vec::new()) };
    ($($k:expr => $v:expr),+ $(,)?) => {
        $crate::Value::Map(vec![$(($k.to_string(), $crate::Value::from($v))),+])
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_and_insert() {
        let mut v = vmap! {"a" => 1i64, "b" => "x"};
        assert_eq!(v.get("a"), &Value::Int(1));
        assert!(v.get("zzz").is_nil());
        v.insert("a", Value::from(2i64));
        v.insert("c", Value::Bool(true));
        assert_eq!(v.get("a"), &Value::Int(2));
        assert_eq!(v.as_map().map(<[_]>::len), Some(3));
    }

    #[test]
    fn json_renders_bytes_as_base64() {
        let v = vmap! {"a" => Value::Bin(vec![0, 1])};
        assert_eq!(serde_json::to_string(&v).unwrap_or_default(), r#"{"a":"AAE="}"#);
    }

    #[test]
    fn msgpack_renders_bytes_as_bin_and_text_as_str() {
        let v = vmap! {"a" => Value::Bin(vec![0, 1]), "t" => "x"};
        let b = rmp_serde::to_vec(&v).unwrap_or_default();
        assert_eq!(b, vec![0x82, 0xa1, b'a', 0xc4, 2, 0, 1, 0xa1, b't', 0xa1, b'x']);
        let back: Value = rmp_serde::from_slice(&b).unwrap_or_default();
        assert_eq!(back, v);
    }

    #[test]
    fn msgpack_rejects_int_map_keys() {
        // {1: 2} as Python would pack it without strict keys
        let b = [0x81u8, 0x01, 0x02];
        assert!(rmp_serde::from_slice::<Value>(&b).is_err());
    }
}
