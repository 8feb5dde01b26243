//! Every libzmq call of the project goes through here.
//!
//! One OS thread owns a role's sockets and blocks in [`poll`]; other threads reach it
//! through an inproc [`Waker`]. We never put an async reactor on `ZMQ_FD`: it is
//! edge-triggered and an async wrapper that misses an edge hangs.

pub mod curve;

pub use curve::{CurveKeys, Security};
pub use zmq;
use zmq::{Context, Message, Socket, SocketType};

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("zmq {op} {addr}: {source}")]
    Zmq { op: &'static str, addr: String, source: zmq::Error },
    #[error("cannot read bound port from endpoint {0:?}")]
    Endpoint(String),
    #[error("CurveZMQ: {0}")]
    Curve(String),
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

/// Bounds what one peer can make a socket hold: `hwm` messages queued each way per peer,
/// and no inbound frame over `max_frame` bytes (the peer is disconnected first). Set
/// before the socket binds: high-water marks apply to pipes made afterwards.
pub fn bound_for_strangers(sock: &Socket, hwm: i32, max_frame: i64) -> Result<()> {
    sock.set_sndhwm(hwm).map_err(ctx_err("sndhwm", ""))?;
    sock.set_rcvhwm(hwm).map_err(ctx_err("rcvhwm", ""))?;
    sock.set_maxmsgsize(max_frame).map_err(ctx_err("maxmsgsize", ""))?;
    Ok(())
}

/// Binds `transport://ip:port`; port 0 asks the OS for a free one. Returns the port bound.
pub fn bind(sock: &Socket, transport: &str, ip: &str, port: u16) -> Result<u16> {
    let addr = if port == 0 { format!("{transport}://{ip}:*") } else { format!("{transport}://{ip}:{port}") };
    sock.bind(&addr).map_err(ctx_err("bind", &addr))?;
    let ep = sock
        .get_last_endpoint()
        .map_err(ctx_err("last_endpoint", &addr))?
        .map_err(|raw| TransportError::Endpoint(String::from_utf8_lossy(&raw).into_owned()))?;
    ep.rsplit(':').next().and_then(|p| p.parse().ok()).ok_or(TransportError::Endpoint(ep.clone()))
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

/// A poll timeout in whole milliseconds, rounded up: rounded down, a sub-millisecond
/// remainder becomes a 0 ms (non-blocking) poll, and a loop waiting for a deadline spins
/// until it.
pub fn ceil_ms(left: std::time::Duration) -> i64 {
    i64::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i64::MAX)
}

/// What [`poll_with_fds`] found on one plain file descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdReady {
    pub readable: bool,
    pub writable: bool,
    /// Hang-up or error: the peer closed (a pipe's writer, a socket's peer).
    pub closed: bool,
}

/// Like [`poll`], over sockets and plain fds (pipes, a Unix socket, a signal self-pipe)
/// in one wait: the engine's supervisor watches its worker's output and link with the
/// same loop as its zmq sockets. `fds` are `(fd, also wait for writable)`.
pub fn poll_with_fds(socks: &[&Socket], fds: &[(std::os::fd::RawFd, bool)], timeout_ms: i64) -> Result<(Vec<bool>, Vec<FdReady>)> {
    let mut items: Vec<zmq::PollItem<'_>> = socks.iter().map(|s| s.as_poll_item(zmq::POLLIN)).collect();
    for (fd, w) in fds {
        let ev = if *w { zmq::POLLIN | zmq::POLLOUT } else { zmq::POLLIN };
        items.push(zmq::PollItem::from_fd(*fd, ev));
    }
    match zmq::poll(&mut items, timeout_ms) {
        Ok(_) | Err(zmq::Error::EINTR) => {}
        Err(e) => return Err(TransportError::Zmq { op: "poll", addr: String::new(), source: e }),
    }
    let s = items[..socks.len()].iter().map(zmq::PollItem::is_readable).collect();
    let f = items[socks.len()..]
        .iter()
        .map(|it| FdReady {
            readable: it.is_readable(),
            writable: it.is_writable(),
            closed: it.is_error() || it.get_revents().contains(zmq::POLLERR),
        })
        .collect();
    Ok((s, f))
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

/// A poll loop's view of its sockets that avoids libzmq's per-socket syscalls.
///
/// `zmq_poll` asks every socket for `ZMQ_EVENTS` before and after it sleeps, and each of
/// those asks costs a `poll(2)` on the socket's mailbox when the socket is idle: with a
/// dozen sockets that was a third of the scheduler's CPU. Here a socket is asked only when
/// its `ZMQ_FD` (the mailbox's eventfd) has fired, or when the loop has used it since it
/// was last asked ([`Poller::touch`]): using a socket can consume the mailbox signal that
/// would otherwise announce its next message, which is why `ZMQ_FD` alone is edge-like.
/// A socket that was asked, said "nothing to read", and has not been used since, can only
/// become readable through a new mailbox command, which makes its fd readable.
pub struct Poller {
    fds: Vec<std::os::fd::RawFd>,
    /// Asked since last used, and had nothing to read.
    clean: Vec<bool>,
}

impl Poller {
    pub fn new(socks: &[&Socket]) -> Result<Poller> {
        let fds = socks.iter().map(|s| s.get_fd()).collect::<std::result::Result<Vec<_>, _>>().map_err(ctx_err("get_fd", ""))?;
        Ok(Poller { clean: vec![false; fds.len()], fds })
    }

    /// Socket `i` was sent on or received from (or might have been) since the last poll.
    pub fn touch(&mut self, i: usize) {
        if let Some(c) = self.clean.get_mut(i) {
            *c = false;
        }
    }

    pub fn touch_all(&mut self) {
        self.clean.iter_mut().for_each(|c| *c = false);
    }

    /// Like [`poll`] over the same sockets, in the same order, as [`Poller::new`] got.
    pub fn poll(&mut self, socks: &[&Socket], timeout_ms: i64) -> Result<Vec<bool>> {
        debug_assert_eq!(socks.len(), self.fds.len());
        let deadline = (timeout_ms >= 0).then(|| std::time::Instant::now() + std::time::Duration::from_millis(timeout_ms as u64));
        let mut ready = vec![false; socks.len()];
        loop {
            let mut any = false;
            for (i, s) in socks.iter().enumerate() {
                if self.clean[i] {
                    continue;
                }
                let ev = s.get_events().map_err(ctx_err("events", ""))?;
                if ev.contains(zmq::POLLIN) {
                    // Stays unclean: the caller will read it.
                    ready[i] = true;
                    any = true;
                } else {
                    self.clean[i] = true;
                }
            }
            if any {
                return Ok(ready);
            }
            let wait = match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() && timeout_ms != 0 {
                        return Ok(ready);
                    }
                    ceil_ms(left)
                }
            };
            let mut items: Vec<zmq::PollItem<'_>> = self.fds.iter().map(|fd| zmq::PollItem::from_fd(*fd, zmq::POLLIN)).collect();
            match zmq::poll(&mut items, wait) {
                Ok(_) | Err(zmq::Error::EINTR) => {}
                Err(e) => return Err(TransportError::Zmq { op: "poll", addr: String::new(), source: e }),
            }
            let mut fired = false;
            for (i, it) in items.iter().enumerate() {
                if it.is_readable() {
                    self.clean[i] = false;
                    fired = true;
                }
            }
            if !fired && (timeout_ms == 0 || deadline.is_some_and(|d| std::time::Instant::now() >= d)) {
                return Ok(ready);
            }
        }
    }
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
    fn poller_sees_messages_after_sends_and_receives() {
        let ctx = Context::new();
        let r = socket(&ctx, SocketType::ROUTER, None).expect("router");
        let port = bind(&r, "tcp", "127.0.0.1", 0).expect("bind");
        let idle = socket(&ctx, SocketType::PULL, None).expect("pull");
        bind(&idle, "tcp", "127.0.0.1", 0).expect("bind");
        let d = socket(&ctx, SocketType::DEALER, Some(b"peer")).expect("dealer");
        connect(&d, &format!("tcp://127.0.0.1:{port}")).expect("connect");
        let mut p = Poller::new(&[&r, &idle]).expect("poller");
        // Nothing yet: times out.
        assert_eq!(p.poll(&[&r, &idle], 50).expect("poll"), vec![false, false]);
        for round in 0..200u32 {
            send(&d, [round.to_be_bytes().to_vec()]).expect("send");
            let ok = p.poll(&[&r, &idle], 5000).expect("poll");
            assert_eq!(ok, vec![true, false], "round {round}");
            let got = try_recv(&r).expect("recv").expect("a message");
            assert_eq!(got[1].to_vec(), round.to_be_bytes().to_vec());
            assert!(try_recv(&r).expect("recv").is_none());
            // Reply: a send on the ROUTER may eat the mailbox signal of the next message.
            send(&r, [b"peer".to_vec(), b"ack".to_vec()]).expect("reply");
            p.touch(0);
            let ack = poll(&[&d], 5000).expect("poll");
            assert!(ack[0]);
            try_recv(&d).expect("recv").expect("ack");
        }
        // Several queued messages are all seen, one poll at a time.
        for i in 0..10u32 {
            send(&d, [i.to_be_bytes().to_vec()]).expect("send");
        }
        let mut n = 0;
        while n < 10 {
            assert!(p.poll(&[&r, &idle], 5000).expect("poll")[0]);
            while try_recv(&r).expect("recv").is_some() {
                n += 1;
            }
            p.touch(0);
        }
        assert_eq!(p.poll(&[&r, &idle], 0).expect("poll"), vec![false, false]);
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
