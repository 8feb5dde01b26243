//! The MUX, control and IOPub relays as pure frame transformations (docs/protocol.md §5.1, 5.2, 5.6).
//!
//! Relays never unpack or re-sign: the routing prefix is not signed, so swapping it
//! keeps the sender's signature valid for the engine or client that checks it.

use ippx_protocol::wire::{find_delim, DELIM};
use ippx_protocol::MonitorTopic;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    #[error("no <IDS|MSG> delimiter")]
    NoDelimiter,
    #[error("missing routing frame before the delimiter")]
    NoTarget,
    #[error("only {0} frames after the delimiter")]
    TooShort(usize),
}

impl RelayError {
    pub fn reason(&self) -> &'static str {
        "malformed"
    }
}

/// Checks the shape `[a, b, ..., DELIM, sig, h, p, m, c, ...]` with at least two routing
/// frames, then swaps the first two: `[client, engine, ...]` ↔ `[engine, client, ...]`.
/// Used in both directions of the MUX and control relays.
pub fn swap_route<F: std::ops::Deref<Target = [u8]>>(frames: &mut [F]) -> Result<(), RelayError> {
    let delim = find_delim(frames).ok_or(RelayError::NoDelimiter)?;
    if delim < 2 {
        return Err(RelayError::NoTarget);
    }
    let after = frames.len() - delim - 1;
    if after < 5 {
        return Err(RelayError::TooShort(after));
    }
    frames.swap(0, 1);
    Ok(())
}

/// Checks that frames are a signed message at all (delimiter plus five frames), for
/// relays that pass messages through unchanged: IOPub (where topic-less
/// `iopub_welcome` is legal) and the `pure` task relay.
pub fn check_message<F: std::ops::Deref<Target = [u8]>>(frames: &[F]) -> Result<(), RelayError> {
    let delim = find_delim(frames).ok_or(RelayError::NoDelimiter)?;
    let after = frames.len() - delim - 1;
    if after < 5 {
        return Err(RelayError::TooShort(after));
    }
    Ok(())
}

/// `[topic] + frames`, the monitor copy format the hub reads (docs/protocol.md §5.7).
pub fn monitor_copy<F: std::ops::Deref<Target = [u8]>>(topic: MonitorTopic, frames: &[F]) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(frames.len() + 1);
    out.push(topic.as_bytes().to_vec());
    out.extend(frames.iter().map(|f| f.to_vec()));
    out
}

/// True for a delimiter frame; re-exported for loops that peek.
pub fn is_delim(f: &[u8]) -> bool {
    f == DELIM
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(prefix: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = prefix.iter().map(|f| f.to_vec()).collect();
        v.push(DELIM.to_vec());
        for f in [&b"sig"[..], b"h", b"p", b"m", b"c", b"buf"] {
            v.push(f.to_vec());
        }
        v
    }

    #[test]
    fn request_and_reply_swap() {
        let mut m = msg(&[b"client", b"engine"]);
        swap_route(&mut m).expect("swap");
        assert_eq!(&m[..2], &[b"engine".to_vec(), b"client".to_vec()]);
        let sig_before = m[3].clone();
        swap_route(&mut m).expect("swap back");
        assert_eq!(&m[..2], &[b"client".to_vec(), b"engine".to_vec()]);
        assert_eq!(m[3], sig_before, "signed part untouched");
    }

    #[test]
    fn malformed_inputs_are_refused() {
        let mut no_target = msg(&[b"client"]);
        assert_eq!(swap_route(&mut no_target), Err(RelayError::NoTarget));
        let mut no_delim: Vec<Vec<u8>> = vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()];
        assert_eq!(swap_route(&mut no_delim), Err(RelayError::NoDelimiter));
        let mut short = msg(&[b"a", b"b"]);
        short.truncate(5);
        assert_eq!(swap_route(&mut short), Err(RelayError::TooShort(2)));
        let empty: Vec<Vec<u8>> = vec![];
        assert_eq!(check_message(&empty), Err(RelayError::NoDelimiter));
        assert!(check_message(&msg(&[])).is_ok());
    }

    #[test]
    fn monitor_copy_prefixes_topic() {
        let m = msg(&[b"engine", b"client"]);
        let c = monitor_copy(MonitorTopic::MuxRequest, &m);
        assert_eq!(c[0], b"in".to_vec());
        assert_eq!(&c[1..], &m[..]);
    }
}
