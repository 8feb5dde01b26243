//! HMAC signing of the four dict frames, and the replay history Python keeps.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashSet;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("unsupported signature scheme {0:?}: only hmac-sha256 is supported")]
    Scheme(String),
}

/// Signs and checks messages. An empty key disables signing: the signature frame is
/// empty and nothing is checked, as with `--no-secure`.
#[derive(Clone)]
pub struct Signer {
    mac: Option<HmacSha256>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("enabled", &self.mac.is_some()).finish()
    }
}

impl Signer {
    /// `key` is the connection file's key string; its UTF-8 bytes are the HMAC key
    /// (it is not hex-decoded).
    pub fn new(key: &[u8], scheme: &str) -> Result<Self, SignError> {
        if !scheme.eq_ignore_ascii_case("hmac-sha256") {
            return Err(SignError::Scheme(scheme.to_owned()));
        }
        if key.is_empty() {
            return Ok(Signer { mac: None });
        }
        // HMAC takes keys of any length, so this cannot fail.
        let mac = HmacSha256::new_from_slice(key).map_err(|_| SignError::Scheme(scheme.to_owned()))?;
        Ok(Signer { mac: Some(mac) })
    }

    pub fn enabled(&self) -> bool {
        self.mac.is_some()
    }

    fn digest(&self, parts: [&[u8]; 4]) -> Option<HmacSha256> {
        let mut mac = self.mac.clone()?;
        for p in parts {
            mac.update(p);
        }
        Some(mac)
    }

    /// Lowercase hex signature, or empty when signing is off.
    pub fn sign(&self, parts: [&[u8]; 4]) -> Vec<u8> {
        match self.digest(parts) {
            Some(mac) => hex::encode(mac.finalize().into_bytes()).into_bytes(),
            None => Vec::new(),
        }
    }

    /// Constant-time check of a hex signature. True when signing is off.
    pub fn verify(&self, signature: &[u8], parts: [&[u8]; 4]) -> bool {
        let Some(mac) = self.digest(parts) else { return true };
        // Python compares the hex *text*, so only the lowercase form is valid. Accepting
        // case variants would also let a captured message be replayed past the digest
        // history, which is keyed on the signature bytes as received.
        if signature.iter().any(u8::is_ascii_uppercase) {
            return false;
        }
        let Ok(raw) = hex::decode(signature) else { return false };
        mac.verify_slice(&raw).is_ok()
    }
}

/// Signatures already seen by one receiving role. Python caps its set at 65536 and
/// evicts a random tenth when full; we do the same so memory stays bounded.
#[derive(Debug)]
pub struct DigestHistory {
    seen: HashSet<Vec<u8>>,
    cap: usize,
}

impl Default for DigestHistory {
    fn default() -> Self {
        Self::with_capacity(65536)
    }
}

impl DigestHistory {
    pub fn with_capacity(cap: usize) -> Self {
        DigestHistory { seen: HashSet::new(), cap: cap.max(10) }
    }

    /// Records `sig`; false when it was already there (a replay).
    pub fn insert(&mut self, sig: &[u8]) -> bool {
        if self.seen.contains(sig) {
            return false;
        }
        if self.seen.len() >= self.cap {
            self.cull();
            // Culling leaves tombstones; when they use up the table's spare room,
            // hashbrown rehashes in place if the set is under half its capacity and
            // doubles the table otherwise. Sized once to twice the cap, it never grows
            // again: without this the table doubled once, hundreds of thousands of
            // messages into a run (a 3 MB step in RSS, 9 MB while it moved).
            self.seen.reserve((2 * self.cap).saturating_sub(self.seen.len()));
        }
        self.seen.insert(sig.to_vec());
        true
    }

    /// Drops about a tenth of the digests at random, as Python's Session does when its
    /// history is full. In place: cloning the whole set to sample it cost more than the
    /// HMAC itself per message.
    fn cull(&mut self) {
        use rand::Rng;
        let mut rng = rand::thread_rng();
        self.seen.retain(|_| rng.gen_range(0..10) != 0);
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_history_table_stops_growing_after_the_first_cull() {
        let mut h = DigestHistory::with_capacity(1000);
        let mut n = 0u64;
        let mut next = || {
            n += 1;
            format!("{n:064x}").into_bytes()
        };
        for _ in 0..1000 {
            assert!(h.insert(&next()));
        }
        assert!(h.insert(&next()), "first cull");
        let cap = h.seen.capacity();
        assert!(cap >= 2000, "{cap}");
        for _ in 0..200_000 {
            assert!(h.insert(&next()));
            assert!(h.len() <= 1000);
            // capacity() is items + room left, which tombstones shrink; a doubling
            // would take it past the first size.
            assert!(h.seen.capacity() <= cap, "the table grew after the first cull");
        }
        let last = format!("{n:064x}").into_bytes();
        assert!(!h.insert(&last), "the newest digest is a replay");
    }

    #[test]
    fn empty_key_disables_signing() {
        let s = Signer::new(b"", "hmac-sha256").expect("signer");
        assert!(s.sign([b"a", b"b", b"c", b"d"]).is_empty());
        assert!(s.verify(b"", [b"a", b"b", b"c", b"d"]));
    }

    #[test]
    fn verify_rejects_tampering_and_garbage() {
        let s = Signer::new(b"k", "hmac-sha256").expect("signer");
        let sig = s.sign([b"h", b"p", b"m", b"c"]);
        assert_eq!(sig.len(), 64);
        assert!(s.verify(&sig, [b"h", b"p", b"m", b"c"]));
        assert!(!s.verify(&sig, [b"h", b"p", b"m", b"C"]));
        assert!(!s.verify(b"zz", [b"h", b"p", b"m", b"c"]));
        assert!(!s.verify(b"", [b"h", b"p", b"m", b"c"]));
    }

    #[test]
    fn unsupported_scheme() {
        assert!(Signer::new(b"k", "hmac-md5").is_err());
    }

    #[test]
    fn history_detects_replay_and_stays_bounded() {
        let mut h = DigestHistory::with_capacity(100);
        assert!(h.insert(b"a"));
        assert!(!h.insert(b"a"));
        for i in 0..1000u32 {
            h.insert(&i.to_be_bytes());
        }
        assert!(h.len() <= 100);
    }
}
