//! Small parsers and Python-compatible reprs shared by the scheduler's modules.

use super::*;

pub(super) fn parse_timeout(v: &Value) -> Option<Duration> {
    let secs = match v {
        Value::Str(s) => s.trim().parse::<f64>().ok()?,
        other => other.as_f64().or_else(|| other.as_bool().map(|b| if b { 1.0 } else { 0.0 }))?,
    };
    if secs == 0.0 || !secs.is_finite() {
        return None;
    }
    // A negative timeout fires at once, as Python's `add_timeout` in the past does.
    Duration::try_from_secs_f64(secs.max(0.0)).ok()
}

pub(super) fn parse_int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        Value::UInt(u) => i64::try_from(*u).unwrap_or(i64::MAX),
        Value::Float(f) if f.is_finite() => *f as i64,
        Value::Bool(b) => i64::from(*b),
        Value::Str(s) => s.trim().parse().unwrap_or(0),
        _ => 0,
    }
}

/// Python's `repr(bytes)` (for the `EngineError` message).
pub(super) fn py_bytes_repr(b: &[u8]) -> String {
    let quote = if b.contains(&b'\'') && !b.contains(&b'"') { '"' } else { '\'' };
    let mut s = String::with_capacity(b.len() + 3);
    s.push('b');
    s.push(quote);
    for &c in b {
        match c {
            b'\\' => s.push_str("\\\\"),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\t' => s.push_str("\\t"),
            c if c as char == quote => {
                s.push('\\');
                s.push(quote);
            }
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s.push(quote);
    s
}

/// Python's `repr(str)` for printable text (enough for msg_ids).
pub(super) fn py_str_repr(t: &str) -> String {
    let quote = if t.contains('\'') && !t.contains('"') { '"' } else { '\'' };
    let mut s = String::with_capacity(t.len() + 2);
    s.push(quote);
    for c in t.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if c == quote => {
                s.push('\\');
                s.push(quote);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => s.push_str(&format!("\\x{:02x}", c as u32)),
            c => s.push(c),
        }
    }
    s.push(quote);
    s
}

/// Splits at the first delimiter and checks the routing prefix and message length.
pub(super) fn split(frames: &[Vec<u8>], routing: usize) -> Result<usize, TaskError> {
    let delim = find_delim(frames).ok_or(TaskError::NoDelimiter(frames.len()))?;
    let after = frames.len() - delim - 1;
    if after < 5 {
        return Err(TaskError::TooShort(after));
    }
    if delim < routing {
        return Err(TaskError::MissingRouting { need: routing, got: delim });
    }
    debug_assert_eq!(&frames[delim][..], DELIM);
    Ok(delim)
}
