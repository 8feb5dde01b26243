//! Monitor topics: the first frame of every copy a relay sends to the hub (docs/protocol.md §5.7),
//! as stock's `MonitoredQueue`s and task scheduler name them.

/// Which traffic a monitor copy is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MonitorTopic {
    /// A client's direct (MUX) request, on its way to an engine.
    MuxRequest,
    /// An engine's direct reply, on its way to a client.
    MuxReply,
    /// A load-balanced request as the task scheduler received it.
    TaskRequest,
    /// `task_destination`: the engine the task scheduler chose.
    TaskDestination,
    /// A load-balanced reply.
    TaskReply,
    /// An engine's IOPub message.
    IoPub,
    /// Control traffic; stock copies it, the hub ignores it (ippx does not send it).
    ControlRequest,
    ControlReply,
    /// Stock's heart monitor topic; ignored.
    Heart,
}

impl MonitorTopic {
    pub const ALL: [MonitorTopic; 9] = [
        MonitorTopic::MuxRequest,
        MonitorTopic::MuxReply,
        MonitorTopic::TaskRequest,
        MonitorTopic::TaskDestination,
        MonitorTopic::TaskReply,
        MonitorTopic::IoPub,
        MonitorTopic::ControlRequest,
        MonitorTopic::ControlReply,
        MonitorTopic::Heart,
    ];

    /// The topic frame on the wire.
    pub const fn as_bytes(self) -> &'static [u8] {
        match self {
            MonitorTopic::MuxRequest => b"in",
            MonitorTopic::MuxReply => b"out",
            MonitorTopic::TaskRequest => b"intask",
            MonitorTopic::TaskDestination => b"tracktask",
            MonitorTopic::TaskReply => b"outtask",
            MonitorTopic::IoPub => b"iopub",
            MonitorTopic::ControlRequest => b"incontrol",
            MonitorTopic::ControlReply => b"outcontrol",
            MonitorTopic::Heart => b"heartmonitor",
        }
    }

    pub fn from_bytes(b: &[u8]) -> Option<MonitorTopic> {
        MonitorTopic::ALL.into_iter().find(|t| t.as_bytes() == b)
    }

    /// Task-scheduler traffic, which a scheduler in the hub's own process has verified.
    pub fn is_task(self) -> bool {
        matches!(self, MonitorTopic::TaskRequest | MonitorTopic::TaskDestination | MonitorTopic::TaskReply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_round_trips_and_unknowns_are_none() {
        for t in MonitorTopic::ALL {
            assert_eq!(MonitorTopic::from_bytes(t.as_bytes()), Some(t));
        }
        assert_eq!(MonitorTopic::from_bytes(b"bogus"), None);
        assert_eq!(MonitorTopic::from_bytes(b""), None);
    }
}
