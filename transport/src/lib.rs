//! Every libzmq call of the project goes through here.
//!
//! One OS thread owns a role's sockets and blocks in [`poll`]; other threads reach it
//! through an inproc [`Waker`]. We never put an async reactor on `ZMQ_FD`: it is
//! edge-triggered and an async wrapper that misses an edge hangs.

pub use zmq;
use zmq::{Context, Message, Socket, SocketType};

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("zmq {op} {addr}: {source}")]
    Zmq { op: &'static str, addr: String, source: zmq::Error },
    #[error("cannot read bound port from endpoint {0:?}")]
    Endpoint(String),
}

pub type Result<T> = std::result::Result<T, TransportError>;

fn ctx_err<'a>(op: &'static str, addr: &'a str) -> impl FnOnce(zmq::Error) -> TransportError + 'a {
    move |source| TransportError::Zmq { op, addr: addr.to_owned(), source }
}

/// Creates a socket with unlimited high-water marks. A ROUTER at its HWM drops silently
/// and a PUB drops on slow subscribers, and the controller must never lose a reply, so
/// every controller socket runs with HWM 0 as the Python controller's do.
pub fn socket(ctx: &Context, kind: SocketType, identity: Option<&[u8]>) -> Result<Socket> {
    let s = ctx.socket(kind).map_err(ctx_err("socket", ""))?;
    s.set_sndhwm(0).map_err(ctx_err("sndhwm", ""))?;
    s.set_rcvhwm(0).map_err(ctx_err("rcvhwm", ""))?;
    s.set_linger(0).map_err(ctx_err("linger", ""))?;
    if let Some(id) = identity {
        s.set_identity(id).map_err(ctx_err("identity", ""))?;
    }
    if kind == SocketType::ROUTER {
        // Unroutable sends fail with EHOSTUNREACH instead of vanishing, so we can
        // count and log them.
        s.set_router_mandatory(true).map_err(ctx_err("router_mandatory", ""))?;
    }
    if kind == SocketType::SUB {
        s.set_subscribe(b"").map_err(ctx_err("subscribe", ""))?;
    }
    Ok(s)
}

/// Binds `transport://ip:port`; port 0 asks the OS for a free one. Returns the port bound.
pub fn bind(sock: &Socket, transport: &str, ip: &str, port: u16) -> Result<u16> {
    let addr = if port == 0 { format!("{transport}://{ip}:*") } else { format!("{transport}://{ip}:{port}") };
    sock.bind(&addr).map_err(ctx_err("bind", &addr))?;
    let ep = sock
        .get_last_endpoint()
        .map_err(ctx_err("last_endpoint", &addr))?
        .map_err(|raw| TransportError::Endpoint(String::from_utf8_lossy(&raw).into_owned()))?;
    ep.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or(TransportError::Endpoint(ep.clone()))
}

/// Binds a full endpoint such as `inproc://name`.
pub fn bind_endpoint(sock: &Socket, addr: &str) -> Result<()> {
    sock.bind(addr).map_err(ctx_err("bind", addr))
}

pub fn connect(sock: &Socket, addr: &str) -> Result<()> {
    sock.connect(addr).map_err(ctx_err("connect", addr))
}

/// Receives all parts of one message, or `None` when nothing is waiting.
pub fn try_recv(sock: &Socket) -> Result<Option<Vec<Message>>> {
    let mut frames = Vec::new();
    loop {
        let mut m = Message::new();
        match sock.recv(&mut m, zmq::DONTWAIT) {
            Ok(()) => {}
            Err(zmq::Error::EAGAIN) if frames.is_empty() => return Ok(None),
            Err(e) => return Err(TransportError::Zmq { op: "recv", addr: String::new(), source: e }),
        }
        let more = m.get_more();
        frames.push(m);
        if !more {
            return Ok(Some(frames));
        }
    }
}

/// Sends a multipart message without blocking. With HWM 0 the only expected failure is
/// EHOSTUNREACH from a ROUTER whose peer has gone.
pub fn send<I, T>(sock: &Socket, frames: I) -> std::result::Result<(), zmq::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<Message>,
{
    let mut iter = frames.into_iter().peekable();
    while let Some(f) = iter.next() {
        let flags = if iter.peek().is_some() { zmq::SNDMORE | zmq::DONTWAIT } else { zmq::DONTWAIT };
        sock.send(f.into(), flags)?;
    }
    Ok(())
}

/// Blocks until one of `socks` is readable or `timeout_ms` passes (-1: forever).
/// Returns the readable flags in order.
pub fn poll(socks: &[&Socket], timeout_ms: i64) -> Result<Vec<bool>> {
    let mut items: Vec<zmq::PollItem<'_>> = socks.iter().map(|s| s.as_poll_item(zmq::POLLIN)).collect();
    match zmq::poll(&mut items, timeout_ms) {
        Ok(_) | Err(zmq::Error::EINTR) => {}
        Err(e) => return Err(TransportError::Zmq { op: "poll", addr: String::new(), source: e }),
    }
    Ok(items.iter().map(zmq::PollItem::is_readable).collect())
}

/// The receiving end of a wake-up channel, polled beside a role's sockets.
pub struct WakeReceiver {
    sock: Socket,
}

/// Sends wake-ups (with a small payload) into a role's poll loop from another thread.
pub struct Waker {
    sock: Socket,
}

/// An inproc PULL/PUSH pair; `name` must be unique within the context.
pub fn waker(ctx: &Context, name: &str) -> Result<(Waker, WakeReceiver)> {
    let addr = format!("inproc://ippx-wake-{name}");
    let rx = socket(ctx, SocketType::PULL, None)?;
    rx.bind(&addr).map_err(ctx_err("bind", &addr))?;
    let tx = socket(ctx, SocketType::PUSH, None)?;
    tx.connect(&addr).map_err(ctx_err("connect", &addr))?;
    Ok((Waker { sock: tx }, WakeReceiver { sock: rx }))
}

impl Waker {
    pub fn wake(&self, payload: &[u8]) {
        // A full PUSH cannot happen with HWM 0; a closed receiver means the loop has ended.
        let _ = self.sock.send(payload, zmq::DONTWAIT);
    }
}

impl WakeReceiver {
    pub fn socket(&self) -> &Socket {
        &self.sock
    }

    /// Drains every pending wake-up payload.
    pub fn drain(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Ok(Some(frames)) = try_recv(&self.sock) {
            for f in frames {
                out.push(f.to_vec());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn router_dealer_round_trip_on_os_port() {
        let ctx = Context::new();
        let r = socket(&ctx, SocketType::ROUTER, None).expect("router");
        let port = bind(&r, "tcp", "127.0.0.1", 0).expect("bind");
        assert!(port > 0);
        let d = socket(&ctx, SocketType::DEALER, Some(b"peer")).expect("dealer");
        connect(&d, &format!("tcp://127.0.0.1:{port}")).expect("connect");
        send(&d, [b"a".to_vec(), b"b".to_vec()]).expect("send");
        let ok = poll(&[&r], 5000).expect("poll");
        assert!(ok[0]);
        let got = try_recv(&r).expect("recv").expect("a message");
        let got: Vec<Vec<u8>> = got.iter().map(|m| m.to_vec()).collect();
        assert_eq!(got, vec![b"peer".to_vec(), b"a".to_vec(), b"b".to_vec()]);
        assert!(send(&r, [b"nobody".to_vec(), b"x".to_vec()]).is_err(), "mandatory routing");
    }

    #[test]
    fn waker_wakes_a_poll() {
        let ctx = Context::new();
        let (w, rx) = waker(&ctx, "t").expect("waker");
        std::thread::spawn(move || w.wake(b"stop"));
        let ok = poll(&[rx.socket()], 5000).expect("poll");
        assert!(ok[0]);
        assert_eq!(rx.drain(), vec![b"stop".to_vec()]);
    }
}
