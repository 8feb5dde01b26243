//! What the task scheduler accepts. A load-balanced request occupies an engine slot until
//! the engine answers; an engine answers only `apply_request` and `execute_request` on
//! its shell channel (the Client handles only their replies on the task socket). Anything
//! else scheduled would hold its slot forever: with the default `hwm=1`, two such
//! messages wedge every later task (stock ipcontroller does wedge). They are refused with
//! an error reply to their sender instead, never scheduled and never recorded.
//!
//! One message's cost is bounded too: a header is a few hundred bytes and metadata grows
//! with its dependency lists (about 40 bytes per msg_id), so the limits below leave room
//! for 100,000 dependencies, while a multi-megabyte header (which took 1-2 s to decode) is
//! refused before it is parsed.

use super::*;

/// The largest header frame accepted (a real one is under 1 KiB).
pub const MAX_HEADER: usize = 64 << 10;
/// The largest metadata frame accepted.
pub const MAX_METADATA: usize = 4 << 20;

/// Whether an engine answers this request type with a reply the Client handles.
pub fn schedulable(msg_type: &str) -> bool {
    matches!(msg_type, "apply_request" | "execute_request")
}

/// The reply type for a refused request, as a kernel names replies.
pub fn reply_type(msg_type: &str) -> String {
    match msg_type.strip_suffix("_request") {
        Some(base) if !base.is_empty() => format!("{base}_reply"),
        _ => "apply_reply".to_owned(),
    }
}

impl TaskScheduler {
    /// Checks a request before anything is parsed past its msg_id; an `Err` has already
    /// been answered.
    pub(super) fn admit(&mut self, frames: &Frames, delim: usize, out: &mut impl TaskOutbox) -> Result<HeaderId, TaskError> {
        let (h, m) = (&frames[delim + 2], &frames[delim + 4]);
        if h.len() > MAX_HEADER {
            let detail = format!("header of {} bytes (limit {MAX_HEADER})", h.len());
            self.refuse(frames, delim, None, "apply_reply", ErrorContent::new("MessageTooLarge", &detail), out);
            return Err(TaskError::TooLarge(detail));
        }
        let header: HeaderId = self.unpack("header", h)?;
        if m.len() > MAX_METADATA {
            let detail = format!("metadata of {} bytes (limit {MAX_METADATA})", m.len());
            self.refuse(frames, delim, Some(h), &reply_type(&header.msg_type), ErrorContent::new("MessageTooLarge", &detail), out);
            return Err(TaskError::TooLarge(detail));
        }
        if !schedulable(&header.msg_type) {
            let detail = format!("{:?} is not a request an engine answers on the task queue (apply_request, execute_request)", header.msg_type);
            self.refuse(frames, delim, Some(h), &reply_type(&header.msg_type), ErrorContent::new("UnknownMessageType", &detail), out);
            return Err(TaskError::NotSchedulable(header.msg_type));
        }
        Ok(header)
    }

    fn refuse(&mut self, frames: &Frames, delim: usize, parent: Option<&[u8]>, reply: &str, error: ErrorContent, out: &mut impl TaskOutbox) {
        let idents = frames[..delim].to_vec();
        let header = self.stamp.header(reply);
        let parent = parent.map_or(Parent::None, Parent::Raw);
        match self.session.serialize_with_header(idents, &header, parent, &Value::map(), &error, vec![]) {
            Ok(reply) => out.to_client(reply),
            Err(e) => tracing::warn!("cannot build {reply} reply: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_an_engine_answers_is_schedulable() {
        assert!(schedulable("apply_request") && schedulable("execute_request"));
        for t in ["kernel_info_request", "frobnicate", "", "apply_reply", "shutdown_request"] {
            assert!(!schedulable(t), "{t}");
        }
        assert_eq!(reply_type("frobnicate_request"), "frobnicate_reply");
        assert_eq!(reply_type("frobnicate"), "apply_reply");
        assert_eq!(reply_type("_request"), "apply_reply");
    }
}
