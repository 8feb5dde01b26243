//! Row encoding of task records (one column per record field) and the table schema.

use super::*;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Text,
    Val,
    Bufs,
    Ts,
}

pub(super) fn kind(f: Field) -> Kind {
    match f {
        Field::MsgId
        | Field::ClientUuid
        | Field::EngineUuid
        | Field::Resubmitted
        | Field::Queue
        | Field::ExecuteInput
        | Field::Stdout
        | Field::Stderr => Kind::Text,
        Field::Buffers | Field::ResultBuffers => Kind::Bufs,
        Field::Submitted | Field::Started | Field::Completed | Field::Received => Kind::Ts,
        _ => Kind::Val,
    }
}

pub(super) fn sql_type(k: Kind) -> &'static str {
    match k {
        Kind::Text => "TEXT",
        Kind::Val | Kind::Bufs => "BLOB",
        Kind::Ts => "INTEGER",
    }
}

pub(super) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub(super) fn enc_value(v: &Value) -> Option<Vec<u8>> {
    if v.is_nil() {
        None
    } else {
        Packer::Msgpack.pack(v).ok()
    }
}

pub(super) fn dec_value(b: Option<Vec<u8>>) -> Value {
    b.and_then(|b| Packer::Msgpack.unpack(&b).ok()).unwrap_or_default()
}

/// `count:u32le` then `len:u64le bytes` per buffer; `NULL` for none.
pub(super) fn enc_bufs(bufs: &[Vec<u8>]) -> Option<Vec<u8>> {
    if bufs.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(4 + bufs.iter().map(|b| b.len() + 8).sum::<usize>());
    out.extend_from_slice(&(bufs.len() as u32).to_le_bytes());
    for b in bufs {
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
        out.extend_from_slice(b);
    }
    Some(out)
}

pub(super) fn dec_bufs(b: Option<Vec<u8>>) -> Vec<Vec<u8>> {
    let Some(b) = b else { return Vec::new() };
    let mut out = Vec::new();
    let n = b.get(..4).map_or(0, |x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]) as usize);
    let mut at = 4;
    for _ in 0..n {
        let Some(l) = b.get(at..at + 8) else { break };
        let len = u64::from_le_bytes([l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7]]) as usize;
        at += 8;
        let Some(data) = b.get(at..at + len) else { break };
        out.push(data.to_vec());
        at += len;
    }
    out
}

pub(super) fn enc_ts(t: &Option<Timestamp>) -> Option<i64> {
    t.map(|t| t.timestamp_micros())
}

pub(super) fn dec_ts(v: Option<i64>) -> Option<Timestamp> {
    v.and_then(Timestamp::from_timestamp_micros)
}

pub(super) fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// One SQL parameter of a record column.
pub(super) fn column_param(r: &TaskRecord, f: Field) -> rusqlite::types::Value {
    use rusqlite::types::Value as S;
    let text = |s: &Option<String>| s.clone().map_or(S::Null, S::Text);
    let blob = |b: Option<Vec<u8>>| b.map_or(S::Null, S::Blob);
    let ts = |t: &Option<Timestamp>| enc_ts(t).map_or(S::Null, S::Integer);
    match f {
        Field::MsgId => S::Text(r.msg_id.clone()),
        Field::Header => blob(enc_value(&r.header)),
        Field::Content => blob(enc_value(&r.content)),
        Field::Metadata => blob(enc_value(&r.metadata)),
        Field::Buffers => blob(enc_bufs(&r.buffers)),
        Field::Submitted => ts(&r.submitted),
        Field::ClientUuid => text(&r.client_uuid),
        Field::EngineUuid => text(&r.engine_uuid),
        Field::Started => ts(&r.started),
        Field::Completed => ts(&r.completed),
        Field::Resubmitted => text(&r.resubmitted),
        Field::Received => ts(&r.received),
        Field::ResultHeader => blob(enc_value(&r.result_header)),
        Field::ResultMetadata => blob(enc_value(&r.result_metadata)),
        Field::ResultContent => blob(enc_value(&r.result_content)),
        Field::ResultBuffers => blob(enc_bufs(&r.result_buffers)),
        Field::Queue => text(&r.queue),
        Field::ExecuteInput => text(&r.execute_input),
        Field::ExecuteResult => blob(enc_value(&r.execute_result)),
        Field::Error => blob(enc_value(&r.error)),
        Field::Stdout => S::Text(r.stdout.clone()),
        Field::Stderr => S::Text(r.stderr.clone()),
        Field::Label => blob(enc_value(&r.label)),
    }
}

/// Reads column `i` of `row` into field `f` of `r`.
pub(super) fn read_column(row: &rusqlite::Row<'_>, i: usize, f: Field, r: &mut TaskRecord) -> rusqlite::Result<()> {
    match kind(f) {
        Kind::Text => {
            let s: Option<String> = row.get(i)?;
            match f {
                Field::MsgId => r.msg_id = s.unwrap_or_default(),
                Field::ClientUuid => r.client_uuid = s,
                Field::EngineUuid => r.engine_uuid = s,
                Field::Resubmitted => r.resubmitted = s,
                Field::Queue => r.queue = s,
                Field::ExecuteInput => r.execute_input = s,
                Field::Stdout => r.stdout = s.unwrap_or_default(),
                Field::Stderr => r.stderr = s.unwrap_or_default(),
                _ => {}
            }
        }
        Kind::Ts => {
            let t = dec_ts(row.get(i)?);
            match f {
                Field::Submitted => r.submitted = t,
                Field::Started => r.started = t,
                Field::Completed => r.completed = t,
                Field::Received => r.received = t,
                _ => {}
            }
        }
        Kind::Bufs => {
            let b = dec_bufs(row.get(i)?);
            if f == Field::Buffers {
                r.buffers = b;
            } else {
                r.result_buffers = b;
            }
        }
        Kind::Val => {
            let v = dec_value(row.get(i)?);
            match f {
                Field::Header => r.header = v,
                Field::Content => r.content = v,
                Field::Metadata => r.metadata = v,
                Field::ResultHeader => r.result_header = v,
                Field::ResultMetadata => r.result_metadata = v,
                Field::ResultContent => r.result_content = v,
                Field::ExecuteResult => r.execute_result = v,
                Field::Error => r.error = v,
                Field::Label => r.label = v,
                _ => {}
            }
        }
    }
    Ok(())
}

/// `seq, msg_id, <fields...>` for a SELECT, and the fields in column order from index 2.
pub(super) fn select_list(fields: Fields) -> (String, Vec<Field>) {
    let cols: Vec<Field> = fields.iter().filter(|f| *f != Field::MsgId).collect();
    let mut s = String::from("seq, msg_id");
    for f in &cols {
        s.push_str(", ");
        s.push_str(f.name());
    }
    (s, cols)
}

pub(super) fn read_row(row: &rusqlite::Row<'_>, cols: &[Field]) -> rusqlite::Result<(i64, TaskRecord)> {
    let seq: i64 = row.get(0)?;
    let mut r = TaskRecord::new(&row.get::<_, String>(1)?);
    for (i, f) in cols.iter().enumerate() {
        read_column(row, i + 2, *f, &mut r)?;
    }
    Ok((seq, r))
}

pub(super) fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

// ------------------------------------------------------------------ schema

pub(super) fn expected_columns() -> Vec<(String, String)> {
    let mut v = vec![("seq".to_owned(), "INTEGER".to_owned())];
    v.extend(Field::ALL.iter().map(|f| (f.name().to_owned(), sql_type(kind(*f)).to_owned())));
    v.push(("nbytes".into(), "INTEGER".into()));
    v.push(("touched".into(), "INTEGER".into()));
    v
}

/// Finds (or creates) a table with our layout: `table`, else `table_1`, `table_2`, ...
/// when a table of that name exists with another layout (as stock SQLiteDB does).
pub(super) fn init_schema(conn: &Connection, table: &str) -> rusqlite::Result<String> {
    let want = expected_columns();
    let mut name = table.to_owned();
    for i in 1.. {
        let mut stmt = conn.prepare(&format!("PRAGMA table_info({})", quote(&name)))?;
        let have: Vec<(String, String)> = stmt.query_map([], |r| Ok((r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?.collect::<Result<_, _>>()?;
        if have.is_empty() {
            break;
        }
        if have.iter().map(|(n, t)| (n.as_str(), t.to_ascii_uppercase())).eq(want.iter().map(|(n, t)| (n.as_str(), t.clone()))) {
            return Ok(name);
        }
        warn!("table {name} exists with another layout; trying {table}_{i}");
        name = format!("{table}_{i}");
    }
    let cols: Vec<String> = Field::ALL
        .iter()
        .map(|f| if *f == Field::MsgId { "msg_id TEXT NOT NULL UNIQUE".to_owned() } else { format!("{} {}", f.name(), sql_type(kind(*f))) })
        .collect();
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {t} (seq INTEGER PRIMARY KEY, {cols}, nbytes INTEGER NOT NULL DEFAULT 0, touched INTEGER NOT NULL DEFAULT 0);
         CREATE INDEX IF NOT EXISTS {ti} ON {t}(touched);",
        t = quote(&name),
        ti = quote(&format!("{name}_touched")),
        cols = cols.join(", ")
    ))?;
    Ok(name)
}
