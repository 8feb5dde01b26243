//! The `db_request` query language (docs/protocol.md §6.3), evaluated against [`TaskRecord`]s.
//!
//! A query is a map field → condition; every condition must hold. A condition is a
//! literal (equality) or a map of operators (`$lt $gt $lte $gte $eq $ne $in $nin $all
//! $mod $exists $glob`), all of which must hold. Values compare with Python semantics:
//! numbers across int/float/bool, strings by code point, timestamps as instants, lists
//! element-wise, dicts regardless of key order. Strings in the query that look like
//! ISO-8601 timestamps are timestamps (Python's `extract_dates`), and so are such strings
//! inside the record's dict fields (`header.date`); top-level string fields stay strings.
//!
//! Deliberate differences from `DictDB` (docs/protocol.md §6.3 allows or asks for them):
//! * `$gt` means `a > b` (DictDB has `b > a`).
//! * Comparing values Python cannot order (null against a timestamp, a string against a
//!   number) is false instead of an exception that fails the whole query.
//! * Several literal conditions each compare against their own value (DictDB's closure
//!   bug compares all of them against the last one).
//! * A dict condition without `$` keys is an exact (order-insensitive) dict equality;
//!   DictDB would fail with a KeyError. An empty dict matches everything, as in DictDB.
//! * Top-level keys starting with `$` (`$or`, ...) are an error rather than a field name.
//!
//! Kept DictDB behaviour: `$ne: ''` matches every record (null ≠ ''); `$nin` matches
//! records whose value is null (unless null is in the list); a missing or unknown field
//! reads as null; `$glob` on null is false.

use crate::records::{Field, Fields, TaskRecord};
use ippx_protocol::datetime::{parse_iso, Timestamp};
use ippx_protocol::Value;
use std::cmp::Ordering;

/// A value as the matcher sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum Q {
    Nil,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Ts(Timestamp),
    Bytes(Vec<u8>),
    List(Vec<Q>),
    Map(Vec<(String, Q)>),
}

impl Q {
    /// A query operand: ISO-looking strings (at any depth) become timestamps.
    pub fn from_query(v: &Value) -> Q {
        conv(v, true)
    }

    /// A value taken literally (no date extraction).
    pub fn plain(v: &Value) -> Q {
        conv(v, false)
    }

    pub fn is_nil(&self) -> bool {
        matches!(self, Q::Nil)
    }

    /// Python truthiness.
    pub fn truthy(&self) -> bool {
        match self {
            Q::Nil => false,
            Q::Bool(b) => *b,
            Q::Int(i) => *i != 0,
            Q::Float(f) => *f != 0.0,
            Q::Str(s) => !s.is_empty(),
            Q::Ts(_) => true,
            Q::Bytes(b) => !b.is_empty(),
            Q::List(l) => !l.is_empty(),
            Q::Map(m) => !m.is_empty(),
        }
    }
}

fn conv(v: &Value, dates: bool) -> Q {
    match v {
        Value::Nil => Q::Nil,
        Value::Bool(b) => Q::Bool(*b),
        Value::Int(i) => Q::Int(*i as i128),
        Value::UInt(u) => Q::Int(*u as i128),
        Value::Float(f) => Q::Float(*f),
        Value::Str(s) => match dates.then(|| parse_iso(s)).flatten() {
            Some(t) => Q::Ts(t),
            None => Q::Str(s.clone()),
        },
        Value::Bin(b) => Q::Bytes(b.clone()),
        Value::Array(a) => Q::List(a.iter().map(|x| conv(x, dates)).collect()),
        Value::Map(m) => Q::Map(m.iter().map(|(k, x)| (k.clone(), conv(x, dates))).collect()),
    }
}

fn opt_str(s: &Option<String>) -> Q {
    s.as_ref().map_or(Q::Nil, |s| Q::Str(s.clone()))
}

fn opt_ts(t: &Option<Timestamp>) -> Q {
    t.map_or(Q::Nil, Q::Ts)
}

fn bufs(b: &[Vec<u8>]) -> Q {
    Q::List(b.iter().map(|b| Q::Bytes(b.clone())).collect())
}

/// A record field as the matcher compares it.
pub fn field_q(r: &TaskRecord, f: Field) -> Q {
    match f {
        Field::MsgId => Q::Str(r.msg_id.clone()),
        Field::Header => conv(&r.header, true),
        Field::Content => conv(&r.content, true),
        Field::Metadata => conv(&r.metadata, true),
        Field::Buffers => bufs(&r.buffers),
        Field::Submitted => opt_ts(&r.submitted),
        Field::ClientUuid => opt_str(&r.client_uuid),
        Field::EngineUuid => opt_str(&r.engine_uuid),
        Field::Started => opt_ts(&r.started),
        Field::Completed => opt_ts(&r.completed),
        Field::Resubmitted => opt_str(&r.resubmitted),
        Field::Received => opt_ts(&r.received),
        Field::ResultHeader => conv(&r.result_header, true),
        Field::ResultMetadata => conv(&r.result_metadata, true),
        Field::ResultContent => conv(&r.result_content, true),
        Field::ResultBuffers => bufs(&r.result_buffers),
        Field::Queue => opt_str(&r.queue),
        Field::ExecuteInput => opt_str(&r.execute_input),
        Field::ExecuteResult => conv(&r.execute_result, true),
        Field::Error => conv(&r.error, true),
        Field::Stdout => Q::Str(r.stdout.clone()),
        Field::Stderr => Q::Str(r.stderr.clone()),
        Field::Label => conv(&r.label, false),
    }
}

// ------------------------------------------------------------------ Python comparisons

enum Num {
    I(i128),
    F(f64),
}

fn num(q: &Q) -> Option<Num> {
    match *q {
        Q::Bool(b) => Some(Num::I(b as i128)),
        Q::Int(i) => Some(Num::I(i)),
        Q::Float(f) => Some(Num::F(f)),
        _ => None,
    }
}

fn num_cmp(a: Num, b: Num) -> Option<Ordering> {
    match (a, b) {
        (Num::I(x), Num::I(y)) => Some(x.cmp(&y)),
        (Num::I(x), Num::F(y)) => (x as f64).partial_cmp(&y),
        (Num::F(x), Num::I(y)) => x.partial_cmp(&(y as f64)),
        (Num::F(x), Num::F(y)) => x.partial_cmp(&y),
    }
}

/// Python `a == b`.
pub fn py_eq(a: &Q, b: &Q) -> bool {
    match (a, b) {
        (Q::Nil, Q::Nil) => true,
        (Q::Str(x), Q::Str(y)) => x == y,
        (Q::Ts(x), Q::Ts(y)) => x == y,
        (Q::Bytes(x), Q::Bytes(y)) => x == y,
        (Q::List(x), Q::List(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| py_eq(p, q)),
        (Q::Map(x), Q::Map(y)) => x.len() == y.len() && x.iter().all(|(k, v)| y.iter().find(|(k2, _)| k2 == k).is_some_and(|(_, v2)| py_eq(v, v2))),
        _ => match (num(a), num(b)) {
            (Some(x), Some(y)) => num_cmp(x, y) == Some(Ordering::Equal),
            _ => false,
        },
    }
}

/// Python's ordering of `a` and `b`; `None` where Python would raise (or for NaN).
pub fn py_cmp(a: &Q, b: &Q) -> Option<Ordering> {
    match (a, b) {
        (Q::Str(x), Q::Str(y)) => Some(x.cmp(y)),
        (Q::Ts(x), Q::Ts(y)) => Some(x.cmp(y)),
        (Q::Bytes(x), Q::Bytes(y)) => Some(x.cmp(y)),
        (Q::List(x), Q::List(y)) => {
            for (p, q) in x.iter().zip(y) {
                if !py_eq(p, q) {
                    return py_cmp(p, q);
                }
            }
            Some(x.len().cmp(&y.len()))
        }
        _ => num_cmp(num(a)?, num(b)?),
    }
}

/// Python `item in container`; `None` where Python would raise.
fn py_in(item: &Q, container: &Q) -> Option<bool> {
    match container {
        Q::List(v) => Some(v.iter().any(|x| py_eq(item, x))),
        Q::Str(s) => match item {
            Q::Str(i) => Some(s.contains(i.as_str())),
            _ => None,
        },
        Q::Bytes(s) => match item {
            Q::Bytes(i) => Some(i.is_empty() || s.windows(i.len()).any(|w| w == i.as_slice())),
            _ => None,
        },
        Q::Map(m) => match item {
            Q::Str(i) => Some(m.iter().any(|(k, _)| k == i)),
            _ => None,
        },
        _ => None,
    }
}

/// Python `a % m == want`, with Python's sign rule (the result takes the divisor's sign).
fn py_mod(a: &Q, operand: &Q) -> bool {
    let Q::List(v) = operand else { return false };
    let [m, want] = v.as_slice() else { return false };
    let r = match (num(a), num(m)) {
        (Some(Num::I(x)), Some(Num::I(m))) if m != 0 => {
            let mut r = x % m;
            if r != 0 && ((r < 0) != (m < 0)) {
                r += m;
            }
            Q::Int(r)
        }
        (Some(x), Some(m)) => {
            let f = |n: Num| match n {
                Num::I(i) => i as f64,
                Num::F(f) => f,
            };
            let (x, m) = (f(x), f(m));
            if m == 0.0 {
                return false;
            }
            let mut r = x % m;
            if r != 0.0 && ((r < 0.0) != (m < 0.0)) {
                r += m;
            }
            Q::Float(r)
        }
        _ => return false,
    };
    py_eq(&r, want)
}

// ------------------------------------------------------------------ fnmatch

#[derive(Debug)]
enum Tok {
    Star,
    Any,
    Char(char),
    Class { negate: bool, ranges: Vec<(char, char)> },
}

/// Compiles a shell pattern as Python's `fnmatch.translate` reads it.
fn glob_tokens(pat: &str) -> Vec<Tok> {
    let p: Vec<char> = pat.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < p.len() {
        let c = p[i];
        i += 1;
        match c {
            '*' => {
                if !matches!(out.last(), Some(Tok::Star)) {
                    out.push(Tok::Star);
                }
            }
            '?' => out.push(Tok::Any),
            '[' => {
                let mut j = i;
                if j < p.len() && p[j] == '!' {
                    j += 1;
                }
                if j < p.len() && p[j] == ']' {
                    j += 1;
                }
                while j < p.len() && p[j] != ']' {
                    j += 1;
                }
                if j >= p.len() {
                    out.push(Tok::Char('['));
                    continue;
                }
                let mut body = &p[i..j];
                i = j + 1;
                let negate = body.first() == Some(&'!');
                if negate {
                    body = &body[1..];
                }
                let mut ranges = Vec::new();
                let mut k = 0;
                while k < body.len() {
                    if k + 2 < body.len() && body[k + 1] == '-' {
                        if body[k] <= body[k + 2] {
                            ranges.push((body[k], body[k + 2]));
                        }
                        k += 3;
                    } else {
                        ranges.push((body[k], body[k]));
                        k += 1;
                    }
                }
                out.push(Tok::Class { negate, ranges });
            }
            c => out.push(Tok::Char(c)),
        }
    }
    out
}

fn tok_matches(t: &Tok, c: char) -> bool {
    match t {
        Tok::Star => true,
        Tok::Any => true,
        Tok::Char(x) => *x == c,
        Tok::Class { negate, ranges } => ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi) != *negate,
    }
}

/// `fnmatch.fnmatchcase(name, pat)`: whole-string, case-sensitive, `*` spans anything.
pub fn glob_match(name: &str, pat: &str) -> bool {
    let toks = glob_tokens(pat);
    let s: Vec<char> = name.chars().collect();
    let (mut si, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match toks.get(ti) {
            Some(Tok::Star) => {
                star = Some((ti, si));
                ti += 1;
            }
            Some(t) if tok_matches(t, s[si]) => {
                si += 1;
                ti += 1;
            }
            _ => match star {
                Some((st, ss)) => {
                    ti = st + 1;
                    si = ss + 1;
                    star = Some((st, ss + 1));
                }
                None => return false,
            },
        }
    }
    toks[ti..].iter().all(|t| matches!(t, Tok::Star))
}

// ------------------------------------------------------------------ queries

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Lte,
    Gt,
    Gte,
    In,
    Nin,
    All,
    Mod,
    Exists,
    Glob,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "$eq" => Op::Eq,
            "$ne" => Op::Ne,
            "$lt" => Op::Lt,
            "$lte" => Op::Lte,
            "$gt" => Op::Gt,
            "$gte" => Op::Gte,
            "$in" => Op::In,
            "$nin" => Op::Nin,
            "$all" => Op::All,
            "$mod" => Op::Mod,
            "$exists" => Op::Exists,
            "$glob" => Op::Glob,
            _ => return None,
        })
    }

    /// Whether record value `a` passes this test against operand `b`.
    pub fn test(self, a: &Q, b: &Q) -> bool {
        let ord = |want: &[Ordering]| py_cmp(a, b).is_some_and(|o| want.contains(&o));
        match self {
            Op::Eq => py_eq(a, b),
            Op::Ne => !py_eq(a, b),
            Op::Lt => ord(&[Ordering::Less]),
            Op::Lte => ord(&[Ordering::Less, Ordering::Equal]),
            Op::Gt => ord(&[Ordering::Greater]),
            Op::Gte => ord(&[Ordering::Greater, Ordering::Equal]),
            Op::In => py_in(a, b).unwrap_or(false),
            Op::Nin => py_in(a, b).is_some_and(|x| !x),
            Op::All => match b {
                Q::List(items) => items.iter().all(|bb| py_in(a, bb).unwrap_or(false)),
                _ => false,
            },
            Op::Mod => py_mod(a, b),
            Op::Exists => {
                if b.truthy() {
                    !a.is_nil()
                } else {
                    a.is_nil()
                }
            }
            Op::Glob => match (a, b) {
                (Q::Str(name), Q::Str(pat)) => glob_match(name, pat),
                _ => false,
            },
        }
    }
}

/// A query error, reported to the client as `ename: evalue`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryError {
    pub ename: &'static str,
    pub evalue: String,
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.ename, self.evalue)
    }
}

#[derive(Clone, Debug)]
struct Cond {
    /// `None`: not a record field; it always reads as null (DictDB's `rec.get`).
    field: Option<Field>,
    tests: Vec<(Op, Q)>,
}

/// A parsed query. `Query::default()` matches every record.
#[derive(Clone, Debug, Default)]
pub struct Query {
    conds: Vec<Cond>,
}

impl Query {
    /// Parses `db_request.query`, converting ISO-looking strings to timestamps.
    pub fn parse(v: &Value) -> Result<Query, QueryError> {
        let entries = match v {
            Value::Nil => return Ok(Query::default()),
            Value::Map(m) => m,
            other => return Err(QueryError { ename: "TypeError", evalue: format!("a query must be a dict, not {}", type_name(other)) }),
        };
        let mut conds = Vec::with_capacity(entries.len());
        for (key, cond) in entries {
            if key.starts_with('$') {
                return Err(QueryError { ename: "KeyError", evalue: format!("Unsupported operator: '{key}'") });
            }
            let tests = match cond {
                Value::Map(ops) if ops.iter().all(|(k, _)| k.starts_with('$')) => {
                    let mut tests = Vec::with_capacity(ops.len());
                    for (k, operand) in ops {
                        let op = Op::parse(k).ok_or_else(|| QueryError { ename: "KeyError", evalue: format!("Unsupported operator: '{k}'") })?;
                        tests.push((op, Q::from_query(operand)));
                    }
                    tests
                }
                Value::Map(ops) if ops.iter().any(|(k, _)| k.starts_with('$')) => {
                    return Err(QueryError { ename: "KeyError", evalue: format!("cannot mix operators and keys in the condition on '{key}'") })
                }
                literal => vec![(Op::Eq, Q::from_query(literal))],
            };
            conds.push(Cond { field: Field::from_name(key), tests });
        }
        Ok(Query { conds })
    }

    /// `{field: {op: operand}}`, for the hub's own queries.
    pub fn with(mut self, field: Field, op: Op, operand: Q) -> Query {
        self.conds.push(Cond { field: Some(field), tests: vec![(op, operand)] });
        self
    }

    /// `{'msg_id': {'$in': ids}}`.
    pub fn ids<S: AsRef<str>>(ids: &[S]) -> Query {
        Query::default().with(Field::MsgId, Op::In, Q::List(ids.iter().map(|s| Q::Str(s.as_ref().to_owned())).collect()))
    }

    pub fn matches(&self, rec: &TaskRecord) -> bool {
        self.conds.iter().all(|c| {
            let a = c.field.map_or(Q::Nil, |f| field_q(rec, f));
            c.tests.iter().all(|(op, b)| op.test(&a, b))
        })
    }

    /// The record fields the query reads.
    pub fn fields(&self) -> Fields {
        self.conds.iter().filter_map(|c| c.field).fold(Fields::of(&[]), Fields::with)
    }

    /// A superset of the msg_ids that can match, when the query pins `msg_id` by
    /// equality or `$in` (lets a store look them up instead of scanning).
    pub fn msg_id_candidates(&self) -> Option<Vec<String>> {
        let strs = |q: &Q| -> Option<Vec<String>> {
            match q {
                Q::Str(s) => Some(vec![s.clone()]),
                Q::List(items) => items.iter().map(|i| if let Q::Str(s) = i { Some(s.clone()) } else { None }).collect(),
                _ => None,
            }
        };
        self.conds.iter().filter(|c| c.field == Some(Field::MsgId)).flat_map(|c| &c.tests).find_map(|(op, b)| match (op, b) {
            (Op::Eq, Q::Str(_)) | (Op::In, Q::List(_)) => strs(b),
            (Op::Eq, _) => Some(Vec::new()),
            _ => None,
        })
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Nil => "None",
        Value::Bool(_) => "bool",
        Value::Int(_) | Value::UInt(_) => "int",
        Value::Float(_) => "float",
        Value::Str(_) => "str",
        Value::Bin(_) => "bytes",
        Value::Array(_) => "list",
        Value::Map(_) => "dict",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_follows_fnmatch() {
        for (name, pat, want) in [
            ("hello", "h*o", true),
            ("hello", "h?llo", true),
            ("hello", "H*", false),
            ("hello", "*", true),
            ("", "*", true),
            ("", "?", false),
            ("abc", "[a-c]bc", true),
            ("dbc", "[!a-c]bc", true),
            ("abc", "[!a-c]bc", false),
            ("a]c", "a[]]c", true),
            ("a[c", "a[c", true),
            ("a\nb", "a*b", true),
            ("mylabel_apply_03", "mylabel_apply_0[0-4]", true),
            ("aaa", "*a*a*a*", true),
            ("aa", "*a*a*a*", false),
            ("x-y", "x[-]y", true),
        ] {
            assert_eq!(glob_match(name, pat), want, "{name:?} vs {pat:?}");
        }
    }

    #[test]
    fn python_mod_sign() {
        let m = |a: i64, d: i64, r: i64| Op::Mod.test(&Q::Int(a as i128), &Q::List(vec![Q::Int(d as i128), Q::Int(r as i128)]));
        assert!(m(7, 3, 1));
        assert!(m(-7, 3, 2));
        assert!(m(7, -3, -2));
        assert!(!m(7, 0, 0));
        assert!(Op::Mod.test(&Q::Float(7.5), &Q::List(vec![Q::Int(2), Q::Float(1.5)])));
    }

    #[test]
    fn numbers_compare_across_types() {
        assert!(py_eq(&Q::Int(1), &Q::Float(1.0)));
        assert!(py_eq(&Q::Bool(true), &Q::Int(1)));
        assert_eq!(py_cmp(&Q::Int(1), &Q::Float(1.5)), Some(Ordering::Less));
        assert_eq!(py_cmp(&Q::Str("a".into()), &Q::Int(1)), None);
        assert_eq!(py_cmp(&Q::Nil, &Q::Nil), None);
    }
}
