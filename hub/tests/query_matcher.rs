//! The `db_request` query matcher against stock `DictDB` semantics (docs/protocol.md §6.3), operator by
//! operator, including the quirks the spec keeps and the ones it asks us to fix.

use ippx_hub::records::TaskRecord;
use ippx_hub::store::query::Query;
use ippx_protocol::datetime::parse_iso;
use ippx_protocol::{vmap, Value};

/// Three records: a finished task, a pending one, and an IOPub-only orphan.
fn records() -> Vec<TaskRecord> {
    let mut a = TaskRecord::new("a");
    a.header = vmap! {"msg_id" => "a", "msg_type" => "apply_request", "date" => "2026-01-01T00:00:01.000001Z"};
    a.metadata = vmap! {"label" => "mylabel_map", "retries" => 2i64};
    a.submitted = parse_iso("2026-01-01T00:00:01.000001Z");
    a.completed = parse_iso("2026-01-01T00:00:02Z");
    a.engine_uuid = Some("e0".into());
    a.queue = Some("task".into());
    a.label = Value::from("mylabel_map");
    a.stdout = "hello\n".into();
    a.buffers = vec![b"fn".to_vec()];
    a.result_content = vmap! {"status" => "ok"};

    let mut b = TaskRecord::new("b");
    b.submitted = parse_iso("2026-01-01T00:00:03Z");
    b.engine_uuid = Some("e1".into());
    b.queue = Some("mux".into());
    b.label = Value::from("mylabel_apply_01");
    b.metadata = vmap! {"retries" => 7i64};

    let mut orphan = TaskRecord::new("orphan");
    orphan.stdout = "x".into();
    vec![a, b, orphan]
}

/// The msg_ids of the records matching `query` (given as JSON, as a client would send).
fn ids(query: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(query).expect("json");
    let q = Query::parse(&v).expect("query parses");
    records().into_iter().filter(|r| q.matches(r)).map(|r| r.msg_id).collect()
}

fn err(query: &str) -> (String, String) {
    let v: Value = serde_json::from_str(query).expect("json");
    let e = Query::parse(&v).expect_err("query must be refused");
    (e.ename.to_owned(), e.evalue)
}

#[test]
fn empty_and_null_queries_match_everything() {
    assert_eq!(ids("{}"), ["a", "b", "orphan"]);
    assert_eq!(ids("null"), ["a", "b", "orphan"]);
    // An empty operator map is DictDB's CompositeFilter with no tests.
    assert_eq!(ids(r#"{"label": {}}"#), ["a", "b", "orphan"]);
}

#[test]
fn ne_empty_string_matches_every_record_including_nulls() {
    // The client's idiom for "all records" (test_client, test_label).
    assert_eq!(ids(r#"{"msg_id": {"$ne": ""}}"#), ["a", "b", "orphan"]);
    // null ≠ '' is true: records without a label match too.
    assert_eq!(ids(r#"{"label": {"$ne": ""}}"#), ["a", "b", "orphan"]);
    assert_eq!(ids(r#"{"label": {"$ne": null}}"#), ["a", "b"]);
    assert_eq!(ids(r#"{"queue": {"$ne": "mux"}}"#), ["a", "orphan"]);
}

#[test]
fn literal_and_eq_equality_with_null_matching_missing() {
    assert_eq!(ids(r#"{"msg_id": "b"}"#), ["b"]);
    assert_eq!(ids(r#"{"msg_id": {"$eq": "b"}}"#), ["b"]);
    assert_eq!(ids(r#"{"label": null}"#), ["orphan"]);
    assert_eq!(ids(r#"{"submitted": {"$eq": null}}"#), ["orphan"]);
    // test_db.test_null: msg_id is never null.
    assert!(ids(r#"{"msg_id": null}"#).is_empty());
    // Unknown fields read as null (DictDB's rec.get(key, None)).
    assert_eq!(ids(r#"{"no_such_field": null}"#), ["a", "b", "orphan"]);
    assert!(ids(r#"{"no_such_field": 1}"#).is_empty());
    // Numbers compare across int and float; dict fields compare as dicts.
    assert_eq!(ids(r#"{"metadata": {"retries": 7.0}}"#), ["b"]);
    assert_eq!(ids(r#"{"result_content": {"status": "ok"}}"#), ["a"]);
}

#[test]
fn several_literal_conditions_each_use_their_own_value() {
    // DictDB's closure bug would compare both against "task"; the spec says not to copy it.
    assert_eq!(ids(r#"{"engine_uuid": "e0", "queue": "task"}"#), ["a"]);
    assert!(ids(r#"{"engine_uuid": "e1", "queue": "task"}"#).is_empty());
}

#[test]
fn ordering_operators_on_timestamps_strings_and_numbers() {
    let t = "2026-01-01T00:00:03Z";
    assert_eq!(ids(&format!(r#"{{"submitted": {{"$lt": "{t}"}}}}"#)), ["a"]);
    assert_eq!(ids(&format!(r#"{{"submitted": {{"$lte": "{t}"}}}}"#)), ["a", "b"]);
    assert_eq!(ids(&format!(r#"{{"submitted": {{"$gte": "{t}"}}}}"#)), ["b"]);
    // $gt is a > b (DictDB's b > a is the spec's do-not-copy quirk).
    assert_eq!(ids(r#"{"submitted": {"$gt": "2026-01-01T00:00:01.000001Z"}}"#), ["b"]);
    assert!(ids(&format!(r#"{{"submitted": {{"$gt": "{t}"}}}}"#)).is_empty());
    // Ranges: both bounds must hold.
    assert_eq!(ids(r#"{"submitted": {"$gt": "2026-01-01T00:00:00Z", "$lt": "2026-01-01T00:00:02Z"}}"#), ["a"]);
    // Strings order by code point.
    assert_eq!(ids(r#"{"msg_id": {"$lt": "b"}}"#), ["a"]);
    assert_eq!(ids(r#"{"msg_id": {"$gte": "b"}}"#), ["b", "orphan"]);
    // null never orders (Python would raise; the spec says: false).
    assert_eq!(ids(r#"{"completed": {"$lt": "2030-01-01T00:00:00Z"}}"#), ["a"]);
    assert!(ids(r#"{"completed": {"$gte": null}}"#).is_empty());
    // Mixed types never order either.
    assert!(ids(r#"{"msg_id": {"$lt": 5}}"#).is_empty());
}

#[test]
fn iso_strings_in_queries_are_dates_in_any_python_form() {
    let want = ["a"];
    for t in ["2026-01-01T00:00:01.000001Z", "2026-01-01T00:00:01.000001+00:00", "2026-01-01T01:00:01.000001+01:00", "2026-01-01T00:00:01.000001"] {
        assert_eq!(ids(&format!(r#"{{"submitted": "{t}"}}"#)), want, "{t}");
    }
    // One microsecond off is another instant: round trips must be exact.
    assert!(ids(r#"{"submitted": "2026-01-01T00:00:01.000002Z"}"#).is_empty());
    // Python's isoformat() drops a zero fraction.
    assert_eq!(ids(r#"{"completed": "2026-01-01T00:00:02+00:00"}"#), ["a"]);
    // Inside operator lists too.
    assert_eq!(ids(r#"{"submitted": {"$in": ["2026-01-01T00:00:03.000000Z"]}}"#), ["b"]);
    // Dates inside dict fields compare as dates.
    assert_eq!(ids(r#"{"header": {"msg_id": "a", "msg_type": "apply_request", "date": "2026-01-01T00:00:01.000001+00:00"}}"#), ["a"]);
}

#[test]
fn in_and_nin_with_nulls() {
    assert_eq!(ids(r#"{"msg_id": {"$in": ["a", "orphan", "zzz"]}}"#), ["a", "orphan"]);
    assert_eq!(ids(r#"{"msg_id": {"$nin": ["a", "orphan"]}}"#), ["b"]);
    // test_label's query: $nin matches records whose label is null (DictDB; SQLite differs).
    assert_eq!(ids(r#"{"label": {"$nin": [""]}}"#), ["a", "b", "orphan"]);
    assert_eq!(ids(r#"{"label": {"$nin": ["", null]}}"#), ["a", "b"]);
    assert_eq!(ids(r#"{"label": {"$in": [null]}}"#), ["orphan"]);
    assert!(ids(r#"{"msg_id": {"$in": []}}"#).is_empty());
    assert_eq!(ids(r#"{"msg_id": {"$nin": []}}"#), ["a", "b", "orphan"]);
    // A string operand is Python's substring test.
    assert_eq!(ids(r#"{"stdout": {"$in": "well hello\nthere"}}"#), ["a", "b"], "'' in s is True");
}

#[test]
fn all_mod_and_exists() {
    // $all: every element e of the operand satisfies `value in e`.
    assert_eq!(ids(r#"{"queue": {"$all": [["task", "mux"], ["task"]]}}"#), ["a"]);
    assert_eq!(ids(r#"{"queue": {"$all": []}}"#), ["a", "b", "orphan"]);
    // $mod on a dict member is not a thing; on numbers it is Python's %.
    assert_eq!(ids(r#"{"metadata": {"$exists": true}}"#), ["a", "b"]);
    assert_eq!(ids(r#"{"metadata": {"$exists": false}}"#), ["orphan"]);
    assert_eq!(ids(r#"{"completed": {"$exists": 1}}"#), ["a"]);
    let mut r = TaskRecord::new("n");
    r.label = Value::Int(7);
    for (q, want) in [
        (r#"{"label": {"$mod": [3, 1]}}"#, true),
        (r#"{"label": {"$mod": [3, 2]}}"#, false),
        (r#"{"label": {"$mod": [-3, -2]}}"#, true),
        (r#"{"label": {"$mod": [0, 0]}}"#, false),
    ] {
        let q = Query::parse(&serde_json::from_str(q).expect("json")).expect("parses");
        assert_eq!(q.matches(&r), want, "{q:?}");
    }
    // $mod never matches non-numbers.
    assert!(ids(r#"{"msg_id": {"$mod": [2, 0]}}"#).is_empty());
}

#[test]
fn glob_is_fnmatch_and_false_on_null() {
    assert_eq!(ids(r#"{"label": {"$glob": "mylabel_*"}}"#), ["a", "b"]);
    assert_eq!(ids(r#"{"label": {"$glob": "mylabel_apply_0?"}}"#), ["b"]);
    assert_eq!(ids(r#"{"label": {"$glob": "mylabel_[am]*"}}"#), ["a", "b"]);
    assert_eq!(ids(r#"{"label": {"$glob": "mylabel_[!a]*"}}"#), ["a"]);
    assert!(ids(r#"{"label": {"$glob": "MYLABEL*"}}"#).is_empty(), "case-sensitive");
    assert_eq!(ids(r#"{"label": {"$glob": "*"}}"#), ["a", "b"], "null never matches");
    assert_eq!(ids(r#"{"msg_id": {"$glob": "*"}}"#), ["a", "b", "orphan"]);
}

#[test]
fn test_db_glob_patterns() {
    // The labels and patterns of ipyparallel's test_db.test_find_records_glob.
    let labels = [
        "group_a",
        "group_a",
        "group_a/subgroup_a",
        "group_a/subgroup_b",
        "group_b",
        "group_b/subgroup_a",
        "group_b/subgroup_b",
        "group_b/subgroup_c",
        "label*task",
        "label?task",
    ];
    let cases: [(&str, &[usize]); 7] = [
        ("group_a*", &[0, 1, 2, 3]),
        ("group_a/subgroup_?", &[2, 3]),
        ("group_b", &[4]),
        ("group_b/subgroup_[ab]", &[5, 6]),
        ("*/subgroup_a", &[2, 5]),
        ("*[*]*", &[8]),
        ("*[?]*", &[9]),
    ];
    for (pat, want) in cases {
        let q = Query::parse(&vmap! {"label" => vmap! {"$glob" => pat}}).expect("parses");
        let got: Vec<usize> = labels
            .iter()
            .enumerate()
            .filter(|(_, l)| {
                let mut r = TaskRecord::new("x");
                r.label = Value::from(**l);
                q.matches(&r)
            })
            .map(|(i, _)| i)
            .collect();
        assert_eq!(got, want, "{pat}");
    }
}

#[test]
fn buffers_can_be_queried() {
    assert_eq!(ids(r#"{"buffers": {"$exists": true}}"#), ["a", "b", "orphan"], "empty list is not null");
    let q = Query::parse(&vmap! {"buffers" => Value::Array(vec![Value::Bin(b"fn".to_vec())])}).expect("parses");
    assert_eq!(records().into_iter().filter(|r| q.matches(r)).map(|r| r.msg_id).collect::<Vec<_>>(), ["a"]);
}

#[test]
fn malformed_queries_are_errors_with_python_enames() {
    assert_eq!(err(r#"{"msg_id": {"$regex": "a"}}"#).0, "KeyError");
    assert_eq!(err(r#"{"$or": [{"msg_id": "a"}]}"#).0, "KeyError");
    assert_eq!(err(r#"{"msg_id": {"$ne": "", "x": 1}}"#).0, "KeyError");
    assert_eq!(err(r#"["msg_id"]"#).0, "TypeError");
    assert!(err(r#"{"msg_id": {"$regex": "a"}}"#).1.contains("$regex"));
}

#[test]
fn msg_id_pushdown_is_a_superset() {
    let q = Query::parse(&serde_json::from_str(r#"{"msg_id": {"$in": ["a", "b"]}, "queue": "mux"}"#).expect("json")).expect("parses");
    assert_eq!(q.msg_id_candidates(), Some(vec!["a".to_owned(), "b".to_owned()]));
    let q = Query::parse(&serde_json::from_str(r#"{"msg_id": {"$ne": ""}}"#).expect("json")).expect("parses");
    assert_eq!(q.msg_id_candidates(), None);
    let q = Query::parse(&serde_json::from_str(r#"{"msg_id": null}"#).expect("json")).expect("parses");
    assert_eq!(q.msg_id_candidates(), Some(vec![]));
}
