//! CurveZMQ, as ipyparallel offers it (`IPP_ENABLE_CURVE=1`, ipyparallel #553): the
//! controller holds one long-term key pair and every socket it binds is a CURVE server
//! with that secret key; engines and clients learn the public key from the connection
//! file (`curve_serverkey`) and make a throwaway client key pair for each socket. There is
//! no ZAP handler (stock has none either): any peer that knows the server's public key
//! may connect, and a peer that does not cannot complete the handshake, so it reads and
//! sends nothing. With CURVE on, ipyparallel signs nothing (the session key is empty):
//! the handshake authenticates and encrypts each connection.
//!
//! inproc connections carry no security mechanism: a scheduler on a hub's thread talks
//! to it unencrypted in memory.

use crate::{ctx_err, Result, TransportError};
use zmq::Socket;

/// The controller's key pair, Z85 text (40 characters each) as ipyparallel writes keys.
#[derive(Clone, PartialEq, Eq)]
pub struct CurveKeys {
    public: String,
    secret: String,
}

impl std::fmt::Debug for CurveKeys {
    // The secret never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurveKeys").field("public", &self.public).field("secret", &"…").finish()
    }
}

fn key_bytes(what: &'static str, z85: &str) -> Result<[u8; 32]> {
    zmq::z85_decode(z85.trim())
        .ok()
        .and_then(|v| <[u8; 32]>::try_from(v.as_slice()).ok())
        .ok_or_else(|| TransportError::Curve(format!("{what} is not a 40-character Z85 CurveZMQ key")))
}

/// Whether the linked libzmq has the CURVE mechanism (ippx builds it with libsodium).
pub fn available() -> bool {
    zmq::has("curve").unwrap_or(false)
}

impl CurveKeys {
    /// A fresh key pair.
    pub fn generate() -> Result<CurveKeys> {
        if !available() {
            return Err(TransportError::Curve("this libzmq was built without CURVE".into()));
        }
        let pair = zmq::CurveKeyPair::new().map_err(ctx_err("curve_keypair", ""))?;
        let enc = |k: &[u8]| zmq::z85_encode(k).map_err(|e| TransportError::Curve(format!("z85: {e}")));
        Ok(CurveKeys { public: enc(&pair.public_key)?, secret: enc(&pair.secret_key)? })
    }

    /// A configured pair (`IPP_CURVE_PUBLICKEY`/`IPP_CURVE_SECRETKEY`), checked for shape.
    pub fn from_z85(public: &str, secret: &str) -> Result<CurveKeys> {
        key_bytes("the CURVE public key", public)?;
        key_bytes("the CURVE secret key", secret)?;
        Ok(CurveKeys { public: public.trim().to_owned(), secret: secret.trim().to_owned() })
    }

    /// The public key, for `curve_serverkey` in the connection files.
    pub fn public(&self) -> &str {
        &self.public
    }

    /// The secret key, for a scheduler child's environment only.
    pub fn secret(&self) -> &str {
        &self.secret
    }
}

/// How one socket authenticates: nothing, as the CURVE server, or as a client of a server.
#[derive(Clone, Debug, Default)]
pub enum Security {
    #[default]
    Plain,
    Server(CurveKeys),
    /// The server's public key.
    Client([u8; 32]),
}

impl Security {
    /// The controller's side: `Server` with its keys when CURVE is on.
    pub fn server(keys: Option<&CurveKeys>) -> Security {
        keys.map_or(Security::Plain, |k| Security::Server(k.clone()))
    }

    /// A peer's side: `Client` of the server whose public key is `server_key` (Z85), or
    /// `Plain` when there is none (a connection file with `curve_serverkey: null`).
    pub fn client(server_key: Option<&str>) -> Result<Security> {
        match server_key.map(str::trim).filter(|k| !k.is_empty()) {
            None => Ok(Security::Plain),
            Some(k) => {
                if !available() {
                    return Err(TransportError::Curve("the controller uses CURVE, but this libzmq was built without it".into()));
                }
                Ok(Security::Client(key_bytes("curve_serverkey", k)?))
            }
        }
    }

    pub fn is_curve(&self) -> bool {
        !matches!(self, Security::Plain)
    }

    /// Sets the socket's mechanism; call before it binds or connects (the options apply to
    /// connections made afterwards). A client gets its own throwaway key pair, as
    /// ipyparallel's `util.connect` does: the server authenticates no client keys.
    pub fn apply(&self, sock: &Socket) -> Result<()> {
        match self {
            Security::Plain => Ok(()),
            Security::Server(keys) => {
                sock.set_curve_server(true).map_err(ctx_err("curve_server", ""))?;
                sock.set_curve_secretkey(&key_bytes("the CURVE secret key", &keys.secret)?).map_err(ctx_err("curve_secretkey", ""))
            }
            Security::Client(server) => {
                let mine = zmq::CurveKeyPair::new().map_err(ctx_err("curve_keypair", ""))?;
                sock.set_curve_serverkey(server).map_err(ctx_err("curve_serverkey", ""))?;
                sock.set_curve_publickey(&mine.public_key).map_err(ctx_err("curve_publickey", ""))?;
                sock.set_curve_secretkey(&mine.secret_key).map_err(ctx_err("curve_secretkey", ""))
            }
        }
    }

    /// A new socket ([`crate::socket`]) with this mechanism set, ready to bind or connect.
    pub fn socket(&self, ctx: &zmq::Context, kind: zmq::SocketType, identity: Option<&[u8]>) -> Result<Socket> {
        let s = crate::socket(ctx, kind, identity)?;
        self.apply(&s)?;
        Ok(s)
    }

    /// The client side of this security for a socket connecting to our own server (the
    /// hub's own DEALER to the scheduler, a scheduler child to the hub).
    pub fn as_client(&self) -> Security {
        match self {
            Security::Server(keys) => key_bytes("the CURVE public key", &keys.public).map(Security::Client).unwrap_or_default(),
            other => other.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{bind, connect, socket, try_recv};
    use zmq::SocketType;

    fn recv_within(sock: &Socket, ms: u64) -> Option<Vec<zmq::Message>> {
        let end = std::time::Instant::now() + std::time::Duration::from_millis(ms);
        while std::time::Instant::now() < end {
            if let Ok(Some(m)) = try_recv(sock) {
                return Some(m);
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        None
    }

    #[test]
    fn libzmq_has_curve() {
        assert!(available(), "libzmq built without libsodium: third_party/zmq-sys is not in use");
    }

    #[test]
    fn keys_round_trip_and_bad_keys_are_refused() {
        let k = CurveKeys::generate().expect("keys");
        assert_eq!(k.public().len(), 40);
        assert_eq!(CurveKeys::from_z85(k.public(), k.secret()).expect("parse"), k);
        assert!(CurveKeys::from_z85("short", k.secret()).is_err());
        assert!(Security::client(Some("not a key")).is_err());
        assert!(matches!(Security::client(None), Ok(Security::Plain)));
        assert!(matches!(Security::client(Some("")), Ok(Security::Plain)));
        assert!(!format!("{k:?}").contains(k.secret()));
    }

    #[test]
    fn a_client_with_the_server_key_talks_and_others_see_nothing() {
        let ctx = zmq::Context::new();
        let keys = CurveKeys::generate().expect("keys");
        let server = socket(&ctx, SocketType::ROUTER, None).expect("socket");
        Security::server(Some(&keys)).apply(&server).expect("server");
        let port = bind(&server, "tcp", "127.0.0.1", 0).expect("bind");
        let url = format!("tcp://127.0.0.1:{port}");

        let good = socket(&ctx, SocketType::DEALER, None).expect("socket");
        Security::client(Some(keys.public())).expect("client").apply(&good).expect("apply");
        connect(&good, &url).expect("connect");
        good.send("hello", 0).expect("send");
        let got = recv_within(&server, 3000).expect("the keyed client reached the server");
        assert_eq!(&got[1][..], b"hello");

        // No CURVE at all, and CURVE against another server's key: the handshake fails,
        // so neither delivers a message, and neither gets the server's.
        let plain = socket(&ctx, SocketType::DEALER, None).expect("socket");
        connect(&plain, &url).expect("connect");
        plain.send("plain", 0).expect("send");
        let other = CurveKeys::generate().expect("keys");
        let wrong = socket(&ctx, SocketType::DEALER, None).expect("socket");
        Security::client(Some(other.public())).expect("client").apply(&wrong).expect("apply");
        connect(&wrong, &url).expect("connect");
        wrong.send("wrong", 0).expect("send");
        assert!(recv_within(&server, 500).is_none(), "a peer without the key got through");

        // A PUB server's output reaches only a keyed subscriber.
        let publ = socket(&ctx, SocketType::PUB, None).expect("socket");
        Security::server(Some(&keys)).apply(&publ).expect("server");
        let pport = bind(&publ, "tcp", "127.0.0.1", 0).expect("bind");
        let purl = format!("tcp://127.0.0.1:{pport}");
        let keyed = socket(&ctx, SocketType::SUB, None).expect("socket");
        Security::client(Some(keys.public())).expect("client").apply(&keyed).expect("apply");
        connect(&keyed, &purl).expect("connect");
        let snoop = socket(&ctx, SocketType::SUB, None).expect("socket");
        connect(&snoop, &purl).expect("connect");
        let mut seen = None;
        for _ in 0..100 {
            publ.send("news", 0).expect("send");
            if let Some(m) = recv_within(&keyed, 30) {
                seen = Some(m);
                break;
            }
        }
        assert!(seen.is_some(), "the keyed subscriber never got the publication");
        for _ in 0..10 {
            publ.send("news", 0).expect("send");
        }
        assert!(recv_within(&snoop, 300).is_none(), "a subscriber without the key read a publication");
    }
}
