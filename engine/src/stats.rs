//! What the engine refused, counted by reason (and logged with the peer where dropped).

#[derive(Debug, Default)]
pub struct Stats {
    pub bad_signature: u64,
    pub replay: u64,
    pub malformed: u64,
    pub unknown_type: u64,
    pub bad_worker_messages: u64,
    pub send_failed: u64,
}

impl Stats {
    pub fn count_drop(&mut self, reason: &str) {
        match reason {
            "bad_signature" => self.bad_signature += 1,
            "replay" => self.replay += 1,
            "unknown_type" => self.unknown_type += 1,
            _ => self.malformed += 1,
        }
    }
}
