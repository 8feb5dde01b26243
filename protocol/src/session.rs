//! A jupyter_client `Session` equivalent: builds signed messages and checks received ones.

use crate::datetime;
use crate::header::Header;
use crate::packer::{PackError, Packer};
use crate::signing::{DigestHistory, SignError, Signer};
use crate::value::Value;
use crate::wire::{Envelope, WireError, DELIM};
use rand::Rng;
use serde::{de::DeserializeOwned, Serialize};
use std::ops::Deref;

#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub key: Vec<u8>,
    pub signature_scheme: String,
    pub packer: Packer,
    pub unpacker: Packer,
    pub username: String,
}

impl SessionConfig {
    pub fn new(key: impl Into<Vec<u8>>, packer: Packer) -> Self {
        SessionConfig {
            key: key.into(),
            signature_scheme: "hmac-sha256".to_owned(),
            packer,
            unpacker: packer,
            username: std::env::var("USER").unwrap_or_else(|_| "username".to_owned()),
        }
    }
}

/// Why a received message was refused. `reason()` is the stable label used in logs
/// and drop counters.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    #[error("malformed framing: {0}")]
    Wire(#[from] WireError),
    #[error("unsigned message")]
    Unsigned,
    #[error("invalid signature")]
    BadSignature,
    #[error("duplicate signature (replay)")]
    Replay,
    #[error("cannot unpack: {0}")]
    Decode(#[from] PackError),
}

impl RecvError {
    pub fn reason(&self) -> &'static str {
        match self {
            RecvError::Wire(_) | RecvError::Decode(_) => "malformed",
            RecvError::Unsigned | RecvError::BadSignature => "bad_signature",
            RecvError::Replay => "replay",
        }
    }
}

/// What to put in the parent_header frame.
#[derive(Clone, Copy, Debug)]
pub enum Parent<'a> {
    /// `{}`
    None,
    /// A header frame exactly as received (same packer); echoed byte for byte.
    Raw(&'a [u8]),
    Header(&'a Header),
    Value(&'a Value),
}

pub struct Session {
    signer: Signer,
    pack: Packer,
    unpack: Packer,
    session_id: String,
    username: String,
    pid: u32,
    counter: u64,
    history: DigestHistory,
}

/// A new id in Python's `8hex-24hex` form, used for session ids and keys.
pub fn new_id() -> String {
    let mut rng = rand::thread_rng();
    let b: [u8; 16] = rng.gen();
    let h = hex::encode(b);
    format!("{}-{}", &h[..8], &h[8..])
}

impl Session {
    pub fn new(cfg: SessionConfig) -> Result<Self, SignError> {
        Ok(Session {
            signer: Signer::new(&cfg.key, &cfg.signature_scheme)?,
            pack: cfg.packer,
            unpack: cfg.unpacker,
            session_id: new_id(),
            username: cfg.username,
            pid: std::process::id(),
            counter: 0,
            history: DigestHistory::default(),
        })
    }

    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    pub fn packer(&self) -> Packer {
        self.pack
    }

    pub fn unpacker(&self) -> Packer {
        self.unpack
    }

    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// A fresh header: new `msg_id` (`{session}_{pid}_{n}` as Python) and the current date.
    pub fn new_header(&mut self, msg_type: &str) -> Header {
        let msg_id = format!("{}_{}_{}", self.session_id, self.pid, self.counter);
        self.counter += 1;
        Header {
            msg_id,
            msg_type: msg_type.to_owned(),
            username: self.username.clone(),
            session: self.session_id.clone(),
            date: datetime::format_iso(&datetime::now()),
            version: crate::PROTOCOL_VERSION.to_owned(),
        }
    }

    pub fn pack<T: Serialize + ?Sized>(&self, v: &T) -> Result<Vec<u8>, PackError> {
        self.pack.pack(v)
    }

    pub fn unpack<T: DeserializeOwned>(&self, b: &[u8]) -> Result<T, PackError> {
        self.unpack.unpack(b)
    }

    /// Signs four packed dict frames and assembles the multipart message.
    pub fn frame(&self, idents: Vec<Vec<u8>>, parts: [Vec<u8>; 4], buffers: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        let sig = self.signer.sign([&parts[0], &parts[1], &parts[2], &parts[3]]);
        let mut out = Vec::with_capacity(idents.len() + 6 + buffers.len());
        out.extend(idents);
        out.push(DELIM.to_vec());
        out.push(sig);
        out.extend(parts);
        out.extend(buffers);
        out
    }

    /// Builds a complete signed message with a fresh header; returns the header too.
    pub fn serialize<M: Serialize + ?Sized, C: Serialize + ?Sized>(
        &mut self,
        idents: Vec<Vec<u8>>,
        msg_type: &str,
        parent: Parent<'_>,
        metadata: &M,
        content: &C,
        buffers: Vec<Vec<u8>>,
    ) -> Result<(Header, Vec<Vec<u8>>), PackError> {
        let header = self.new_header(msg_type);
        let frames = self.serialize_with_header(idents, &header, parent, metadata, content, buffers)?;
        Ok((header, frames))
    }

    /// As [`Session::serialize`] with a caller-made header (resubmit keeps the old one).
    pub fn serialize_with_header<M: Serialize + ?Sized, C: Serialize + ?Sized>(
        &self,
        idents: Vec<Vec<u8>>,
        header: &Header,
        parent: Parent<'_>,
        metadata: &M,
        content: &C,
        buffers: Vec<Vec<u8>>,
    ) -> Result<Vec<Vec<u8>>, PackError> {
        let h = self.pack(header)?;
        let p = self.pack_parent(parent)?;
        let m = self.pack(metadata)?;
        let c = self.pack(content)?;
        Ok(self.frame(idents, [h, p, m, c], buffers))
    }

    /// As [`Session::serialize`] with content that is already packed (an engine's worker
    /// packs what Python's shell produced, so it reaches clients exactly as stock's).
    pub fn serialize_packed_content<M: Serialize + ?Sized>(
        &mut self,
        idents: Vec<Vec<u8>>,
        msg_type: &str,
        parent: Parent<'_>,
        metadata: &M,
        content: Vec<u8>,
        buffers: Vec<Vec<u8>>,
    ) -> Result<(Header, Vec<Vec<u8>>), PackError> {
        let header = self.new_header(msg_type);
        let h = self.pack(&header)?;
        let p = self.pack_parent(parent)?;
        let m = self.pack(metadata)?;
        Ok((header, self.frame(idents, [h, p, m, content], buffers)))
    }

    /// The parent_header frame: a raw header is echoed byte for byte when it was packed
    /// with our packer, and re-packed otherwise.
    fn pack_parent(&self, parent: Parent<'_>) -> Result<Vec<u8>, PackError> {
        Ok(match parent {
            Parent::None => self.pack(&Value::map())?,
            Parent::Raw(raw) if self.pack == self.unpack => raw.to_vec(),
            Parent::Raw(raw) => self.pack(&self.unpack::<Value>(raw)?)?,
            Parent::Header(hd) => self.pack(hd)?,
            Parent::Value(v) => self.pack(v)?,
        })
    }

    /// Signature and replay check, in Python's order. `replay` is off for internal copies
    /// of messages that another role of this controller has already accepted.
    pub fn check<F: Deref<Target = [u8]>>(&mut self, env: &Envelope<F>, replay: bool) -> Result<(), RecvError> {
        if !self.signer.enabled() {
            return Ok(());
        }
        let sig = env.signature();
        if sig.is_empty() {
            return Err(RecvError::Unsigned);
        }
        if !self.signer.verify(sig, env.signed_parts()) {
            return Err(RecvError::BadSignature);
        }
        if replay && !self.history.insert(sig) {
            return Err(RecvError::Replay);
        }
        Ok(())
    }

    pub fn header<F: Deref<Target = [u8]>>(&self, env: &Envelope<F>) -> Result<Header, RecvError> {
        Ok(self.unpack(env.header_bytes())?)
    }

    /// Python's `Session.deserialize` unpacks all four dicts before any handler runs, so a
    /// frame that does not unpack is an error whatever the handler would read: this is
    /// that check for the three dicts after the header ([`Session::header`] does that one).
    /// On failure, names the part and the error.
    pub fn check_dicts<F: Deref<Target = [u8]>>(&self, env: &Envelope<F>) -> Result<(), (&'static str, PackError)> {
        for (part, bytes) in [("parent_header", env.parent_bytes()), ("metadata", env.metadata_bytes()), ("content", env.content_bytes())] {
            if let Err(e) = self.unpack::<crate::Value>(bytes) {
                return Err((part, e));
            }
        }
        Ok(())
    }

    /// Splits, checks and decodes the header: what every receiving loop does first.
    pub fn receive<F: Deref<Target = [u8]>>(&mut self, frames: Vec<F>, replay: bool) -> Result<(Envelope<F>, Header), (RecvError, Vec<F>)> {
        let env = Envelope::parse(frames).map_err(|(e, f)| (RecvError::Wire(e), f))?;
        if let Err(e) = self.check(&env, replay) {
            return Err((e, env.into_frames()));
        }
        match self.header(&env) {
            Ok(h) => Ok((env, h)),
            Err(e) => Err((e, env.into_frames())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmap;

    fn session(p: Packer) -> Session {
        Session::new(SessionConfig::new(b"secret".to_vec(), p)).expect("session")
    }

    #[test]
    fn serialize_then_receive_round_trips() {
        for p in [Packer::Json, Packer::Msgpack] {
            let mut tx = session(p);
            let mut rx = session(p);
            let (h, frames) = tx
                .serialize(vec![b"peer".to_vec()], "ping", Parent::None, &Value::map(), &vmap! {"a" => 1i64}, vec![b"buf".to_vec()])
                .expect("serialize");
            let (env, got) = rx.receive(frames, true).map_err(|e| e.0).expect("receive");
            assert_eq!(got, h);
            assert_eq!(got.version, "5.4");
            assert!(got.date.ends_with('Z'));
            assert_eq!(env.buffers().len(), 1);
            let content: Value = rx.unpack(env.content_bytes()).expect("content");
            assert_eq!(content.get("a"), &Value::Int(1));
        }
    }

    #[test]
    fn replay_is_refused_only_when_asked() {
        let mut tx = session(Packer::Json);
        let mut rx = session(Packer::Json);
        let (_, frames) = tx.serialize(vec![], "x", Parent::None, &Value::map(), &Value::map(), vec![]).expect("ser");
        assert!(rx.receive(frames.clone(), true).is_ok());
        assert!(matches!(rx.receive(frames.clone(), true), Err((RecvError::Replay, _))));
        assert!(rx.receive(frames, false).is_ok());
    }

    #[test]
    fn wrong_key_and_unsigned_are_refused() {
        let mut tx = Session::new(SessionConfig::new(b"other".to_vec(), Packer::Json)).expect("s");
        let mut rx = session(Packer::Json);
        let (_, mut frames) = tx.serialize(vec![], "x", Parent::None, &Value::map(), &Value::map(), vec![]).expect("ser");
        assert!(matches!(rx.receive(frames.clone(), true), Err((RecvError::BadSignature, _))));
        frames[1].clear();
        assert!(matches!(rx.receive(frames, true), Err((RecvError::Unsigned, _))));
    }

    #[test]
    fn msg_ids_are_unique_and_python_shaped() {
        let mut s = session(Packer::Json);
        let a = s.new_header("x").msg_id;
        let b = s.new_header("x").msg_id;
        assert_ne!(a, b);
        assert!(a.starts_with(s.session_id()));
        assert_eq!(s.session_id().len(), 33);
    }
}
