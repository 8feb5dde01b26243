// Shared by the targets (included with `mod common;`).
#![allow(dead_code)]

/// The key of the captured fixtures (protocol/tests/fixtures/captured), so that corpus
/// entries made from them carry valid signatures and reach the decoders behind the check.
pub const KEY: &[u8] = b"5d0c1f2e-8a9b7c6d5e4f3a2b1c0d9e8f";

/// Input as frames: each is a little-endian u16 length and that many bytes (a short
/// tail is one last frame). fuzz/make_corpus.py writes the fixtures this way.
pub fn frames(mut data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while data.len() >= 2 && out.len() < 64 {
        let n = u16::from_le_bytes([data[0], data[1]]) as usize;
        data = &data[2..];
        let n = n.min(data.len());
        out.push(data[..n].to_vec());
        data = &data[n..];
    }
    if !data.is_empty() {
        out.push(data.to_vec());
    }
    out
}
