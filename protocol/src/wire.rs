//! Multipart framing: `[routing..., DELIM, signature, header, parent, metadata, content, buffers...]`.

use std::ops::Deref;

/// The frame separating routing prefixes from the signed message.
pub const DELIM: &[u8] = b"<IDS|MSG>";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("no <IDS|MSG> delimiter in {0} frames")]
    NoDelimiter(usize),
    #[error("only {0} frames after <IDS|MSG>, need 5")]
    TooShort(usize),
}

/// Which signed dict frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Header = 0,
    Parent = 1,
    Metadata = 2,
    Content = 3,
}

/// A received multipart message, split but not decoded. Generic over the frame type
/// so relays can hold `zmq::Message`s and forward them untouched.
#[derive(Debug, Clone)]
pub struct Envelope<F> {
    frames: Vec<F>,
    delim: usize,
}

pub fn find_delim<F: Deref<Target = [u8]>>(frames: &[F]) -> Option<usize> {
    frames.iter().position(|f| &**f == DELIM)
}

impl<F: Deref<Target = [u8]>> Envelope<F> {
    /// Splits at the first delimiter; at least signature + four dicts must follow.
    pub fn parse(frames: Vec<F>) -> Result<Self, (WireError, Vec<F>)> {
        let Some(delim) = find_delim(&frames) else {
            let n = frames.len();
            return Err((WireError::NoDelimiter(n), frames));
        };
        let after = frames.len() - delim - 1;
        if after < 5 {
            return Err((WireError::TooShort(after), frames));
        }
        Ok(Envelope { frames, delim })
    }

    pub fn idents(&self) -> &[F] {
        &self.frames[..self.delim]
    }

    pub fn signature(&self) -> &[u8] {
        &self.frames[self.delim + 1]
    }

    pub fn part(&self, p: Part) -> &[u8] {
        &self.frames[self.delim + 2 + p as usize]
    }

    pub fn header_bytes(&self) -> &[u8] {
        self.part(Part::Header)
    }

    pub fn parent_bytes(&self) -> &[u8] {
        self.part(Part::Parent)
    }

    pub fn metadata_bytes(&self) -> &[u8] {
        self.part(Part::Metadata)
    }

    pub fn content_bytes(&self) -> &[u8] {
        self.part(Part::Content)
    }

    /// The four frames the signature covers, in order.
    pub fn signed_parts(&self) -> [&[u8]; 4] {
        [self.part(Part::Header), self.part(Part::Parent), self.part(Part::Metadata), self.part(Part::Content)]
    }

    pub fn buffers(&self) -> &[F] {
        &self.frames[self.delim + 6..]
    }

    pub fn delim_index(&self) -> usize {
        self.delim
    }

    pub fn frames(&self) -> &[F] {
        &self.frames
    }

    /// Routing prefix changes (push, pop, swap) keep the signature valid.
    pub fn frames_mut_prefix(&mut self) -> &mut [F] {
        &mut self.frames[..self.delim]
    }

    pub fn into_frames(self) -> Vec<F> {
        self.frames
    }

    /// Replaces the routing prefix with `prefix`.
    pub fn set_idents(&mut self, prefix: Vec<F>) {
        let rest = self.frames.split_off(self.delim);
        self.delim = prefix.len();
        self.frames = prefix;
        self.frames.extend(rest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(v: &[&[u8]]) -> Vec<Vec<u8>> {
        v.iter().map(|f| f.to_vec()).collect()
    }

    #[test]
    fn splits_at_first_delimiter() {
        let f = frames(&[b"id", DELIM, b"sig", b"h", b"p", b"m", b"c", DELIM, b"buf"]);
        let e = Envelope::parse(f).map_err(|e| e.0).expect("parse");
        assert_eq!(e.idents().len(), 1);
        assert_eq!(e.signature(), b"sig");
        assert_eq!(e.content_bytes(), b"c");
        assert_eq!(e.buffers().len(), 2);
    }

    #[test]
    fn short_and_delimiterless_messages_are_rejected() {
        let f = frames(&[b"id", DELIM, b"sig", b"h", b"p", b"m"]);
        assert_eq!(Envelope::parse(f).map_err(|e| e.0).err(), Some(WireError::TooShort(4)));
        let f = frames(&[b"id", b"x"]);
        assert_eq!(Envelope::parse(f).map_err(|e| e.0).err(), Some(WireError::NoDelimiter(2)));
    }

    #[test]
    fn set_idents_replaces_prefix() {
        let f = frames(&[b"a", b"b", DELIM, b"sig", b"h", b"p", b"m", b"c"]);
        let mut e = Envelope::parse(f).map_err(|e| e.0).expect("parse");
        e.set_idents(frames(&[b"x"]));
        assert_eq!(e.idents(), &frames(&[b"x"])[..]);
        assert_eq!(e.signature(), b"sig");
    }
}
