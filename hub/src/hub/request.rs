//! Requests on the hub's registration/query ROUTER, decoded once (as mini-redis's
//! `Command::from_frame`). Adding a query type means a line in the table below and an
//! arm in `Hub::handle` (queries.rs); the metrics' known message types come from here.

use ippx_protocol::content::{QueueRequest, RegistrationRequest, ResultRequest, UnregistrationRequest};
use ippx_protocol::{Packer, Value};

/// `requests! { Variant(Content?) = "x_request" => "x_reply", ... }` defines the enum,
/// its message type and reply type, and the decoder.
macro_rules! requests {
    ($( $(#[$doc:meta])* $variant:ident $(($content:ty))? = $msg_type:literal => $reply:literal, )*) => {
        /// A decoded request.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Request {
            $( $(#[$doc])* $variant $(($content))?, )*
        }

        impl Request {
            /// Every request type the hub answers, as `(request, reply)` message types.
            pub const TYPES: &'static [(&'static str, &'static str)] = &[$( ($msg_type, $reply), )*];

            /// Decodes `content` for `msg_type`.
            pub fn decode(msg_type: &str, content: &[u8], packer: Packer) -> Result<Request, RequestError> {
                match msg_type {
                    $( $msg_type => requests!(@decode $variant $(($content))?, msg_type, content, packer), )*
                    other => Err(RequestError::Unknown(other.to_owned())),
                }
            }

            /// The message type of the reply.
            pub fn reply_type(&self) -> &'static str {
                match self {
                    $( requests!(@pat $variant $(($content))?) => $reply, )*
                }
            }
        }
    };
    (@decode $variant:ident ($content:ty), $t:ident, $c:ident, $p:ident) => {
        $p.unpack::<$content>($c).map(Request::$variant).map_err(|e| RequestError::Malformed { msg_type: $t.to_owned(), error: e.to_string() })
    };
    (@decode $variant:ident, $t:ident, $c:ident, $p:ident) => { Ok(Request::$variant) };
    (@pat $variant:ident ($content:ty)) => { Request::$variant(_) };
    (@pat $variant:ident) => { Request::$variant };
}

requests! {
    /// The Client's first message: the engines registered so far.
    Connection = "connection_request" => "connection_reply",
    /// An engine asks for an id (docs/protocol.md §3.1).
    Registration(RegistrationRequest) = "registration_request" => "registration_reply",
    /// The nanny or a dying engine says goodbye; no reply.
    Unregistration(UnregistrationRequest) = "unregistration_request" => "unregistration_reply",
    Queue(QueueRequest) = "queue_request" => "queue_reply",
    Result(ResultRequest) = "result_request" => "result_reply",
    History = "history_request" => "history_reply",
    /// `db_query`: a Mongo-style query over the records.
    Db(Value) = "db_request" => "db_reply",
    Purge(Value) = "purge_request" => "purge_reply",
    Resubmit(Value) = "resubmit_request" => "resubmit_reply",
    Load = "load_request" => "load_reply",
    Shutdown = "shutdown_request" => "shutdown_reply",
    BecomeDask = "become_dask_request" => "become_dask_reply",
    StopDistributed = "stop_distributed_request" => "stop_distributed_reply",
}

/// Why a request could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("unknown query type {0:?}")]
    Unknown(String),
    #[error("bad {msg_type}: {error}")]
    Malformed { msg_type: String, error: String },
}

impl RequestError {
    /// The reply a malformed request gets, as stock's handlers answer: most reply with
    /// their own type and a `ValueError`, `queue_request` with `hub_error`, and
    /// `unregistration_request` with nothing at all.
    pub fn reply_type(&self) -> Option<&'static str> {
        match self {
            RequestError::Unknown(_) => Some("hub_error"),
            RequestError::Malformed { msg_type, .. } => match msg_type.as_str() {
                "unregistration_request" => None,
                "queue_request" => Some("hub_error"),
                t => Request::TYPES.iter().find(|(q, _)| *q == t).map(|(_, r)| *r),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_decodes_and_names_its_reply() {
        let p = Packer::Json;
        let empty = p.pack(&Value::map()).expect("pack");
        for (t, reply) in Request::TYPES {
            match Request::decode(t, &empty, p) {
                Ok(r) => assert_eq!(r.reply_type(), *reply, "{t}"),
                // Typed contents need their fields.
                Err(RequestError::Malformed { msg_type, .. }) => assert_eq!(msg_type, *t),
                Err(e) => panic!("{t}: {e}"),
            }
        }
    }

    #[test]
    fn bad_content_and_unknown_types_are_errors_with_stock_replies() {
        let p = Packer::Json;
        let e = Request::decode("registration_request", b"\"x\"", p).expect_err("not a map");
        assert_eq!(e.reply_type(), Some("registration_reply"));
        let e = Request::decode("queue_request", b"\"x\"", p).expect_err("not a map");
        assert_eq!(e.reply_type(), Some("hub_error"));
        let e = Request::decode("unregistration_request", b"\"x\"", p).expect_err("not a map");
        assert_eq!(e.reply_type(), None);
        let e = Request::decode("nonsense_request", b"{}", p).expect_err("unknown");
        assert_eq!(e, RequestError::Unknown("nonsense_request".into()));
        assert_eq!(e.reply_type(), Some("hub_error"));
    }

    #[test]
    fn a_registration_request_keeps_its_fields() {
        let p = Packer::Msgpack;
        let c = p.pack(&ippx_protocol::vmap! {"uuid" => "abc", "id" => 3i64}).expect("pack");
        match Request::decode("registration_request", &c, p) {
            Ok(Request::Registration(r)) => assert_eq!((r.uuid.as_str(), r.id), ("abc", Some(3))),
            other => panic!("{other:?}"),
        }
    }
}
