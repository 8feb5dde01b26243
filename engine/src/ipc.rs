//! The supervisor ↔ worker link: multipart messages over a Unix stream socket, each as
//! `u32 nparts` then `u64 len, bytes` per part (little endian). A stream, not seqpacket,
//! because pushed arrays of hundreds of MB must pass. The supervisor reads and writes it
//! non-blocking from its poll loop ([`Reader`], [`Writer`]); the worker blocks.

use std::collections::VecDeque;
use std::io::{self, Read, Write};

pub type Parts = Vec<Vec<u8>>;

/// Refuse absurd headers from a corrupt peer instead of allocating them.
const MAX_PARTS: u32 = 1 << 20;

pub fn encode(parts: &[impl AsRef<[u8]>]) -> Vec<u8> {
    let total: usize = parts.iter().map(|p| p.as_ref().len() + 8).sum::<usize>() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(parts.len() as u32).to_le_bytes());
    for p in parts {
        out.extend_from_slice(&(p.as_ref().len() as u64).to_le_bytes());
        out.extend_from_slice(p.as_ref());
    }
    out
}

/// Incremental decoder for the non-blocking side.
#[derive(Default)]
pub struct Reader {
    buf: Vec<u8>,
    pos: usize,
}

impl Reader {
    /// Reads what is available; Ok(false) at end of stream.
    pub fn fill(&mut self, src: &mut impl Read) -> io::Result<bool> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match src.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The next complete message, if one is buffered.
    pub fn next_message(&mut self) -> io::Result<Option<Parts>> {
        let b = &self.buf[self.pos..];
        if b.len() < 4 {
            return Ok(None);
        }
        let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        if n > MAX_PARTS {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "too many parts"));
        }
        let mut off = 4usize;
        let mut spans = Vec::with_capacity(n as usize);
        for _ in 0..n {
            if b.len() < off + 8 {
                return Ok(None);
            }
            let mut l = [0u8; 8];
            l.copy_from_slice(&b[off..off + 8]);
            let len = usize::try_from(u64::from_le_bytes(l)).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "part too long"))?;
            off += 8;
            if b.len() - off < len {
                return Ok(None);
            }
            spans.push((off, len));
            off += len;
        }
        let parts = spans.into_iter().map(|(o, l)| b[o..o + l].to_vec()).collect();
        self.pos += off;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > (1 << 20) && self.pos * 2 > self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        Ok(Some(parts))
    }
}

/// Outgoing bytes for the non-blocking side.
#[derive(Default)]
pub struct Writer {
    queue: VecDeque<Vec<u8>>,
    head_off: usize,
}

impl Writer {
    pub fn push(&mut self, parts: &[impl AsRef<[u8]>]) {
        self.queue.push_back(encode(parts));
    }

    pub fn pending(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Writes as much as the socket takes now.
    pub fn flush(&mut self, dst: &mut impl Write) -> io::Result<()> {
        while let Some(head) = self.queue.front() {
            match dst.write(&head[self.head_off..]) {
                Ok(n) => {
                    self.head_off += n;
                    if self.head_off == head.len() {
                        self.queue.pop_front();
                        self.head_off = 0;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Blocking read of one message (the worker side). Ok(None) at end of stream.
pub fn read_blocking(src: &mut impl Read) -> io::Result<Option<Parts>> {
    let mut n = [0u8; 4];
    match src.read_exact(&mut n) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = u32::from_le_bytes(n);
    if n > MAX_PARTS {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "too many parts"));
    }
    let mut parts = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let mut l = [0u8; 8];
        src.read_exact(&mut l)?;
        let len = usize::try_from(u64::from_le_bytes(l)).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "part too long"))?;
        let mut p = vec![0u8; len];
        src.read_exact(&mut p)?;
        parts.push(p);
    }
    Ok(Some(parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_in_pieces() {
        let a = encode(&[b"apply".to_vec(), vec![], vec![7u8; 100_000]]);
        let b = encode(&[b"x"]);
        let mut all = a.clone();
        all.extend_from_slice(&b);
        let mut r = Reader::default();
        let mut got = Vec::new();
        for chunk in all.chunks(777) {
            r.fill(&mut &chunk[..]).expect("fill");
            while let Some(m) = r.next_message().expect("next") {
                got.push(m);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[0][0], b"apply");
        assert_eq!(got[0][2].len(), 100_000);
        assert_eq!(got[1], vec![b"x".to_vec()]);
        let mut src = &all[..];
        assert_eq!(read_blocking(&mut src).expect("a").expect("some").len(), 3);
        assert_eq!(read_blocking(&mut src).expect("b").expect("some"), vec![b"x".to_vec()]);
        assert!(read_blocking(&mut src).expect("eof").is_none());
    }

    #[test]
    fn corrupt_header_is_an_error() {
        let mut r = Reader::default();
        r.fill(&mut &[0xff, 0xff, 0xff, 0xff][..]).expect("fill");
        assert!(r.next_message().is_err());
    }
}
