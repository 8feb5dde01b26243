//! Task records (docs/protocol.md §6.1): the fields, their wire form, and field selections.
//! The stores that keep them are in [`crate::store`].

use ippx_protocol::datetime::{format_iso, Timestamp};
use ippx_protocol::{vmap, Value};

pub use crate::store::memory::MemStore;

/// Everything the hub knows about one message id.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskRecord {
    pub msg_id: String,
    pub header: Value,
    pub metadata: Value,
    pub content: Value,
    pub buffers: Vec<Vec<u8>>,
    pub submitted: Option<Timestamp>,
    pub client_uuid: Option<String>,
    pub engine_uuid: Option<String>,
    pub queue: Option<String>,
    pub label: Value,
    pub started: Option<Timestamp>,
    pub completed: Option<Timestamp>,
    pub received: Option<Timestamp>,
    pub resubmitted: Option<String>,
    pub result_header: Value,
    pub result_metadata: Value,
    pub result_content: Value,
    pub result_buffers: Vec<Vec<u8>>,
    pub execute_input: Option<String>,
    pub execute_result: Value,
    pub error: Value,
    pub stdout: String,
    pub stderr: String,
}

/// One TaskRecord field. The order is Python's `init_record` order, which is the key
/// order of records in a `db_reply`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    MsgId,
    Header,
    Content,
    Metadata,
    Buffers,
    Submitted,
    ClientUuid,
    EngineUuid,
    Started,
    Completed,
    Resubmitted,
    Received,
    ResultHeader,
    ResultMetadata,
    ResultContent,
    ResultBuffers,
    Queue,
    ExecuteInput,
    ExecuteResult,
    Error,
    Stdout,
    Stderr,
    Label,
}

impl Field {
    pub const ALL: [Field; 23] = [
        Field::MsgId,
        Field::Header,
        Field::Content,
        Field::Metadata,
        Field::Buffers,
        Field::Submitted,
        Field::ClientUuid,
        Field::EngineUuid,
        Field::Started,
        Field::Completed,
        Field::Resubmitted,
        Field::Received,
        Field::ResultHeader,
        Field::ResultMetadata,
        Field::ResultContent,
        Field::ResultBuffers,
        Field::Queue,
        Field::ExecuteInput,
        Field::ExecuteResult,
        Field::Error,
        Field::Stdout,
        Field::Stderr,
        Field::Label,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Field::MsgId => "msg_id",
            Field::Header => "header",
            Field::Content => "content",
            Field::Metadata => "metadata",
            Field::Buffers => "buffers",
            Field::Submitted => "submitted",
            Field::ClientUuid => "client_uuid",
            Field::EngineUuid => "engine_uuid",
            Field::Started => "started",
            Field::Completed => "completed",
            Field::Resubmitted => "resubmitted",
            Field::Received => "received",
            Field::ResultHeader => "result_header",
            Field::ResultMetadata => "result_metadata",
            Field::ResultContent => "result_content",
            Field::ResultBuffers => "result_buffers",
            Field::Queue => "queue",
            Field::ExecuteInput => "execute_input",
            Field::ExecuteResult => "execute_result",
            Field::Error => "error",
            Field::Stdout => "stdout",
            Field::Stderr => "stderr",
            Field::Label => "label",
        }
    }

    pub fn from_name(name: &str) -> Option<Field> {
        Field::ALL.iter().copied().find(|f| f.name() == name)
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }

    pub fn is_timestamp(self) -> bool {
        matches!(self, Field::Submitted | Field::Started | Field::Completed | Field::Received)
    }
}

/// A set of fields: what a reader needs from the store. Stores may return more.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Fields(u32);

impl Fields {
    pub const NONE: Fields = Fields(0);
    pub const ALL: Fields = Fields((1 << 23) - 1);

    pub fn of(fields: &[Field]) -> Fields {
        Fields(fields.iter().fold(Field::MsgId.bit(), |acc, f| acc | f.bit()))
    }

    /// Everything but the two buffer lists: the default `db_request` selection.
    pub fn all_but_buffers() -> Fields {
        Fields::ALL.without(Field::Buffers).without(Field::ResultBuffers)
    }

    /// What a `result_reply` entry is built from (docs/protocol.md §4.3.2).
    pub fn result_entry() -> Fields {
        Fields::of(&[
            Field::Header,
            Field::Metadata,
            Field::ResultMetadata,
            Field::ResultHeader,
            Field::ResultContent,
            Field::ResultBuffers,
            Field::Received,
            Field::Completed,
            Field::ExecuteInput,
            Field::ExecuteResult,
            Field::Error,
            Field::Stdout,
            Field::Stderr,
        ])
    }

    pub fn contains(self, f: Field) -> bool {
        self.0 & f.bit() != 0
    }

    pub fn with(self, f: Field) -> Fields {
        Fields(self.0 | f.bit())
    }

    pub fn without(self, f: Field) -> Fields {
        Fields(self.0 & !f.bit())
    }

    pub fn union(self, o: Fields) -> Fields {
        Fields(self.0 | o.0)
    }

    pub fn iter(self) -> impl Iterator<Item = Field> {
        Field::ALL.into_iter().filter(move |f| self.contains(*f))
    }
}

fn ts(t: &Option<Timestamp>) -> Value {
    t.as_ref().map_or(Value::Nil, |t| Value::Str(format_iso(t)))
}

fn bufs(b: &[Vec<u8>]) -> Value {
    Value::Array(b.iter().map(|b| Value::Bin(b.clone())).collect())
}

impl TaskRecord {
    pub fn new(msg_id: &str) -> Self {
        TaskRecord { msg_id: msg_id.to_owned(), ..Default::default() }
    }

    /// Bytes of buffers held, for the stores' size limits.
    pub fn buffer_bytes(&self) -> usize {
        self.buffers.iter().chain(&self.result_buffers).map(Vec::len).sum()
    }

    /// Rough in-memory size, for caches.
    pub fn approx_size(&self) -> usize {
        self.buffer_bytes()
            + self.header.approx_size()
            + self.metadata.approx_size()
            + self.content.approx_size()
            + self.result_header.approx_size()
            + self.result_metadata.approx_size()
            + self.result_content.approx_size()
            + self.execute_result.approx_size()
            + self.error.approx_size()
            + self.stdout.len()
            + self.stderr.len()
            + 256
    }

    /// A field as it goes on the wire in a `db_reply` record: timestamps as ISO strings,
    /// dicts as maps, missing as null.
    pub fn value(&self, f: Field) -> Value {
        match f {
            Field::MsgId => Value::from(self.msg_id.as_str()),
            Field::Header => self.header.clone(),
            Field::Content => self.content.clone(),
            Field::Metadata => self.metadata.clone(),
            Field::Buffers => bufs(&self.buffers),
            Field::Submitted => ts(&self.submitted),
            Field::ClientUuid => self.client_uuid.clone().into(),
            Field::EngineUuid => self.engine_uuid.clone().into(),
            Field::Started => ts(&self.started),
            Field::Completed => ts(&self.completed),
            Field::Resubmitted => self.resubmitted.clone().into(),
            Field::Received => ts(&self.received),
            Field::ResultHeader => self.result_header.clone(),
            Field::ResultMetadata => self.result_metadata.clone(),
            Field::ResultContent => self.result_content.clone(),
            Field::ResultBuffers => bufs(&self.result_buffers),
            Field::Queue => self.queue.clone().into(),
            Field::ExecuteInput => self.execute_input.clone().into(),
            Field::ExecuteResult => self.execute_result.clone(),
            Field::Error => self.error.clone(),
            Field::Stdout => Value::from(self.stdout.as_str()),
            Field::Stderr => Value::from(self.stderr.as_str()),
            Field::Label => self.label.clone(),
        }
    }

    /// A copy holding only `fields` (msg_id always); the rest is left empty.
    pub fn project(&self, fields: Fields) -> TaskRecord {
        if fields == Fields::ALL {
            return self.clone();
        }
        let mut r = TaskRecord::new(&self.msg_id);
        for f in fields.iter() {
            match f {
                Field::MsgId => {}
                Field::Header => r.header = self.header.clone(),
                Field::Content => r.content = self.content.clone(),
                Field::Metadata => r.metadata = self.metadata.clone(),
                Field::Buffers => r.buffers = self.buffers.clone(),
                Field::Submitted => r.submitted = self.submitted,
                Field::ClientUuid => r.client_uuid = self.client_uuid.clone(),
                Field::EngineUuid => r.engine_uuid = self.engine_uuid.clone(),
                Field::Started => r.started = self.started,
                Field::Completed => r.completed = self.completed,
                Field::Resubmitted => r.resubmitted = self.resubmitted.clone(),
                Field::Received => r.received = self.received,
                Field::ResultHeader => r.result_header = self.result_header.clone(),
                Field::ResultMetadata => r.result_metadata = self.result_metadata.clone(),
                Field::ResultContent => r.result_content = self.result_content.clone(),
                Field::ResultBuffers => r.result_buffers = self.result_buffers.clone(),
                Field::Queue => r.queue = self.queue.clone(),
                Field::ExecuteInput => r.execute_input = self.execute_input.clone(),
                Field::ExecuteResult => r.execute_result = self.execute_result.clone(),
                Field::Error => r.error = self.error.clone(),
                Field::Stdout => r.stdout = self.stdout.clone(),
                Field::Stderr => r.stderr = self.stderr.clone(),
                Field::Label => r.label = self.label.clone(),
            }
        }
        r
    }

    /// Merges a request record into an existing one (IOPub or a resubmission may have
    /// created it first): fields the existing record lacks are filled; where both are set
    /// the new wins (docs/protocol.md §6.2).
    pub fn merge_request(&mut self, new: TaskRecord) {
        fn take<T>(slot: &mut Option<T>, new: Option<T>) {
            if new.is_some() {
                *slot = new;
            }
        }
        fn take_v(slot: &mut Value, new: Value) {
            if !new.is_nil() {
                *slot = new;
            }
        }
        take_v(&mut self.header, new.header);
        take_v(&mut self.metadata, new.metadata);
        take_v(&mut self.content, new.content);
        if !new.buffers.is_empty() {
            self.buffers = new.buffers;
        }
        take(&mut self.submitted, new.submitted);
        take(&mut self.client_uuid, new.client_uuid);
        take(&mut self.engine_uuid, new.engine_uuid);
        take(&mut self.queue, new.queue);
        take_v(&mut self.label, new.label);
    }

    /// The entry of a `result_reply` for this record (docs/protocol.md §4.3.2).
    pub fn result_entry(&self) -> Value {
        vmap! {
            "header" => self.header.clone(),
            "metadata" => self.metadata.clone(),
            "result_metadata" => self.result_metadata.clone(),
            "result_header" => self.result_header.clone(),
            "result_content" => self.result_content.clone(),
            "received" => ts(&self.received),
            "io" => vmap! {
                "execute_input" => self.execute_input.clone(),
                "execute_result" => self.execute_result.clone(),
                "error" => self.error.clone(),
                "stdout" => self.stdout.clone(),
                "stderr" => self.stderr.clone(),
            },
        }
    }
}

/// Culling limits, as `DictDB` has them.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub record_limit: usize,
    pub size_limit: usize,
    pub cull_fraction: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { record_limit: 1024, size_limit: 1 << 30, cull_fraction: 0.1 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_prefers_new_non_empty_values() {
        let mut r = TaskRecord::new("x");
        r.stdout = "early output".into();
        let mut req = TaskRecord::new("x");
        req.queue = Some("mux".into());
        req.header = Value::from("h");
        r.merge_request(req);
        assert_eq!(r.stdout, "early output");
        assert_eq!(r.queue.as_deref(), Some("mux"));
    }

    #[test]
    fn field_names_round_trip_and_projection_keeps_only_what_was_asked() {
        for f in Field::ALL {
            assert_eq!(Field::from_name(f.name()), Some(f));
        }
        assert_eq!(Field::from_name("display_data"), None);
        let mut r = TaskRecord::new("m");
        r.buffers = vec![b"x".to_vec()];
        r.stdout = "out".into();
        let p = r.project(Fields::of(&[Field::Stdout]));
        assert_eq!(p.msg_id, "m");
        assert_eq!(p.stdout, "out");
        assert!(p.buffers.is_empty());
        assert!(!Fields::all_but_buffers().contains(Field::ResultBuffers));
        assert!(Fields::all_but_buffers().contains(Field::Label));
    }
}
