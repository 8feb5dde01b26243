"""Bad input on the hub's registration/query ROUTER (issue 2 item 5; docs/protocol.md §1.3, 4.2).

Raw pyzmq DEALERs with explicit identities talk to one controller (shared by the module,
with one stock engine and a stock Client). Each case checks (a) the reply, or its absence,
(b) a WARN ``dropped message`` line with the reason and the peer identity in the hub log,
(c) that the controller still serves a ``connection_request`` and a stock ``apply_sync``.
"""

from __future__ import annotations

import os
import random
import time

import pytest
import zmq
from conftest import Controller
from e2e_util import cmdline, find_lines, load_json, log_size, read_log, rss_mb, session_for, url, wait_for
from jupyter_client.session import DELIM

REPLY_TIMEOUT = 3.0  # s to wait for a reply that must come
NO_REPLY_WAIT = 0.7  # s to wait to conclude that no reply comes
GARBAGE = b"\xc1\xc1\xc1"  # 0xc1 is never valid msgpack (nor JSON)


class Hub:
    def __init__(self, ctl: Controller, rc, engine_pid: int):
        self.ctl = ctl
        self.rc = rc
        self.engine_pid = engine_pid
        self.info = ctl.client_info()
        self.session = session_for(self.info)
        self.ctx = zmq.Context()
        self._checks = 0

    # -- raw messages
    def valid(self, msg_type: str, content: dict | None = None) -> list[bytes]:
        """A correctly signed message: [DELIM, sig, header, parent, metadata, content]."""
        msg = self.session.msg(msg_type, content=content or {})
        return self.session.serialize(msg)

    def signed(self, header: bytes, parent: bytes, metadata: bytes, content: bytes) -> list[bytes]:
        """Properly signed frames around arbitrary (maybe unpackable) dict frames."""
        parts = [header, parent, metadata, content]
        return [DELIM, self.session.sign(parts), *parts]

    def dealer(self, identity: bytes) -> zmq.Socket:
        s = self.ctx.socket(zmq.DEALER)
        s.linger = 0
        s.setsockopt(zmq.IDENTITY, identity)
        s.connect(url(self.info, "registration"))
        return s

    def recv(self, sock: zmq.Socket, timeout: float):
        """The next reply, deserialized (signature checked), or None."""
        if not sock.poll(int(timeout * 1000)):
            return None
        frames = sock.recv_multipart()
        idents, rest = self.session.feed_identities(frames)
        assert idents == [], f"unexpected routing frames in reply: {idents}"
        return session_for(self.info).deserialize(rest)

    def send_recv(self, identity: bytes, frames: list[bytes], timeout: float = REPLY_TIMEOUT):
        s = self.dealer(identity)
        try:
            s.send_multipart(frames)
            return self.recv(s, timeout)
        finally:
            s.close(0)

    # -- checks
    def assert_dropped(self, offset: int, identity: bytes, reason: str):
        peer = identity.decode()

        def lines():
            return [
                ln
                for ln in read_log(self.ctl.controller_log, offset)
                if ln.level == "WARN" and "dropped message" in ln.text and reason in ln.text and peer in ln.text
            ]

        try:
            return wait_for(lines, 3)
        except TimeoutError:
            new = "\n".join(ln.raw for ln in read_log(self.ctl.controller_log, offset)[-20:])
            pytest.fail(
                f"no WARN line with 'dropped message', {reason!r} and peer {peer!r}; "
                f"new log lines:\n{new}",
                pytrace=False,
            )

    def still_works(self):
        assert self.ctl.proc.poll() is None, f"controller exited ({self.ctl.proc.returncode})"
        self._checks += 1
        reply = self.send_recv(f"goodpeer-{self._checks}".encode(), self.valid("connection_request"))
        assert reply is not None, "no connection_reply to a valid connection_request"
        assert reply["header"]["msg_type"] == "connection_reply", reply
        assert reply["content"]["status"] == "ok", reply["content"]
        assert reply["content"]["engines"] == {str(k): v for k, v in self.rc._engines.items()}
        assert self.rc.ids == [0]
        assert self.rc[:].apply_sync(os.getpid) == [self.engine_pid]

    def close(self):
        self.ctx.destroy(0)


def assert_hub_error(reply, evalue: str | None = None):
    assert reply is not None, "no reply (a hub_error was expected)"
    assert reply["header"]["msg_type"] == "hub_error", reply["header"]
    c = reply["content"]
    assert c["status"] == "error", c
    assert c.get("ename"), c
    if evalue is not None:
        assert c.get("evalue") == evalue, c


@pytest.fixture(scope="module", params=["thread", "process"])
def hub_module(request, tmp_path_factory):
    """Both scheduler modes: the scheduler verifies task traffic in either."""
    ctl = Controller(
        tmp_path_factory.mktemp("badinput"),
        ["--ip=127.0.0.1", "--log-level=20", "--ping=250", f"--scheduler-mode={request.param}"],
    )
    ctl.scheduler_mode = request.param
    h = None
    try:
        ctl.start()
        (engine,) = ctl.start_engines(1)
        rc = ctl.wait_for_engines(1, timeout=30)
        h = Hub(ctl, rc, engine.pid)
        yield h
    finally:
        if h is not None:
            h.close()
        ctl.teardown()


@pytest.fixture
def hub(request, hub_module):
    request.node._ippx_controllers = [hub_module.ctl]  # logs on failure
    assert hub_module.ctl.proc.poll() is None, "controller died in an earlier test"
    return hub_module


# --------------------------------------------------------------------------- replies expected


# Issue 14: a message whose signature does not hold (wrong key, none, a replay) gets no
# reply at all, as from stock: a stranger learns nothing, not even that the port is ours.


def test_bad_signature(hub):
    off = log_size(hub.ctl.controller_log)
    frames = hub.valid("connection_request")
    frames[1] = b"0" * 64
    assert hub.send_recv(b"badpeer-1", frames, timeout=NO_REPLY_WAIT) is None
    hub.assert_dropped(off, b"badpeer-1", "bad_signature")
    hub.still_works()


def test_missing_signature(hub):
    off = log_size(hub.ctl.controller_log)
    frames = hub.valid("connection_request")
    frames[1] = b""
    assert hub.send_recv(b"badpeer-2", frames, timeout=NO_REPLY_WAIT) is None
    hub.assert_dropped(off, b"badpeer-2", "bad_signature")
    hub.still_works()


def test_wrong_key(hub):
    """Signed, but with another key: what a peer without the connection file sends."""
    off = log_size(hub.ctl.controller_log)
    wrong = session_for(hub.info, key=b"not-the-key")
    frames = wrong.serialize(wrong.msg("connection_request", content={}))
    assert hub.send_recv(b"badpeer-1k", frames, timeout=NO_REPLY_WAIT) is None
    hub.assert_dropped(off, b"badpeer-1k", "bad_signature")
    hub.still_works()


def test_unknown_msg_type(hub):
    off = log_size(hub.ctl.controller_log)
    reply = hub.send_recv(b"badpeer-3", hub.valid("frobnicate_request"))
    assert_hub_error(reply, evalue="Bad Message Type: 'frobnicate_request'")
    assert reply["content"]["ename"] == "KeyError"
    hub.assert_dropped(off, b"badpeer-3", "unknown")
    hub.still_works()


@pytest.mark.parametrize("frame", ["header", "parent", "metadata", "content"])
def test_unpackable_dict(hub, frame):
    """Validly signed, but one of the four dicts is not msgpack (Python unpacks all four)."""
    ident = f"badpeer-4-{frame}".encode()
    off = log_size(hub.ctl.controller_log)
    _, _, h, p, m, c = hub.valid("connection_request")
    parts = {"header": h, "parent": p, "metadata": m, "content": c}
    parts[frame] = GARBAGE
    reply = hub.send_recv(ident, hub.signed(**parts))
    assert_hub_error(reply)
    hub.assert_dropped(off, ident, "malformed")
    hub.still_works()


def test_replayed_message(hub):
    off = log_size(hub.ctl.controller_log)
    frames = hub.valid("connection_request")
    s = hub.dealer(b"badpeer-5")
    try:
        s.send_multipart(frames)
        first = hub.recv(s, REPLY_TIMEOUT)
        assert first is not None and first["header"]["msg_type"] == "connection_reply", first
        assert first["content"]["status"] == "ok"
        s.send_multipart(frames)  # byte-identical copy
        second = hub.recv(s, NO_REPLY_WAIT)
    finally:
        s.close(0)
    assert second is None, second
    hub.assert_dropped(off, b"badpeer-5", "replay")
    assert len(find_lines(hub.ctl.controller_log, "dropped message", "badpeer-5", offset=off)) == 1
    hub.still_works()


# --------------------------------------------------------------------------- no reply expected


def test_too_few_frames(hub):
    off = log_size(hub.ctl.controller_log)
    frames = hub.valid("connection_request")[:4]  # DELIM, sig, header, parent
    reply = hub.send_recv(b"badpeer-6", frames, timeout=NO_REPLY_WAIT)
    # The routing frame is there, so a hub_error is allowed (Python's hub tries the same,
    # docs/protocol.md §4.2); anything else is not.
    print(f"\n[too few frames] reply: {None if reply is None else reply['header']['msg_type']}")
    if reply is not None:
        assert_hub_error(reply)
    hub.assert_dropped(off, b"badpeer-6", "malformed")
    hub.still_works()


def test_no_delimiter(hub):
    off = log_size(hub.ctl.controller_log)
    _, sig, h, p, m, c = hub.valid("connection_request")
    reply = hub.send_recv(b"badpeer-7", [sig, h, p, m, c], timeout=NO_REPLY_WAIT)
    assert reply is None, reply
    hub.assert_dropped(off, b"badpeer-7", "malformed")
    hub.still_works()


def test_garbage_frame(hub):
    off = log_size(hub.ctl.controller_log)
    reply = hub.send_recv(b"badpeer-8", [os.urandom(200)], timeout=NO_REPLY_WAIT)
    assert reply is None, reply
    hub.assert_dropped(off, b"badpeer-8", "malformed")
    hub.still_works()


# --------------------------------------------------------------------------- floods


def _garbage_message(rng: random.Random) -> list[bytes]:
    frames = [rng.randbytes(rng.randrange(0, 64)) for _ in range(rng.randrange(1, 9))]
    if rng.random() < 0.3:
        frames.insert(rng.randrange(0, len(frames) + 1), DELIM)
    return frames


def test_garbage_flood(hub):
    """1,000 random multipart messages each on the registration ROUTER, the heartbeat pong
    ROUTER and the hub's internal monitor SUB; the controller keeps serving and the engine
    stays registered."""
    rng = random.Random(20261125)
    off = log_size(hub.ctl.controller_log)
    n = 1000
    engine_info = hub.ctl.engine_info()
    # With the scheduler on a thread the monitor socket is inproc only: nobody outside the
    # process can reach it, so only the process mode floods it.
    monitor = None
    if hub.ctl.scheduler_mode == "process":
        sched_argv = " ".join(cmdline(hub.ctl.scheduler_pid()))
        monitor = next(a.split("=", 1)[1] for a in sched_argv.split() if a.startswith("--monitor="))

    reg = hub.dealer(b"badpeer-flood")
    pong = hub.ctx.socket(zmq.DEALER)
    pong.linger = 0
    pong.setsockopt(zmq.IDENTITY, b"badpeer-pong")
    pong.connect(url(engine_info, "hb_pong"))
    mon = hub.ctx.socket(zmq.PUB)
    mon.linger = 0
    if monitor:
        mon.connect(monitor)
    time.sleep(0.3)  # PUB connect
    t0 = time.monotonic()
    try:
        for _ in range(n):
            reg.send_multipart(_garbage_message(rng))
            pong.send_multipart(_garbage_message(rng))
            mon.send_multipart(_garbage_message(rng))
        # give the hub time to get through the registration flood: every drop is counted,
        # but the lines are thinned to a budget (20 a second), so a flood cannot make the
        # log the bottleneck
        time.sleep(1.0)
        replies = 0
        while reg.poll(0):
            reg.recv_multipart()
            replies += 1
    finally:
        reg.close(0)
        pong.close(0)
        mon.close(0)
    elapsed = time.monotonic() - t0
    new = read_log(hub.ctl.controller_log, off)
    print(
        f"\n[flood] {n}x3 garbage messages handled in {elapsed:.2f}s; hub_error replies to the "
        f"registration flood: {replies}; WARN lines: reg "
        f"{sum('badpeer-flood' in ln.text for ln in new)}, "
        f"pong {sum('hb_pong' in ln.text for ln in new)}, "
        f"monitor {sum('socket=' in ln.text and 'monitor' in ln.text for ln in new)}"
    )
    hub.still_works()
    reg_lines = sum("badpeer-flood" in ln.text for ln in new)
    assert 1 <= reg_lines <= 60, f"{reg_lines} WARN lines for a {n}-message flood: the log budget does not hold"
    assert replies == 0, f"{replies} replies to unverifiable messages"
    # the engine's heart was not disturbed
    assert not find_lines(hub.ctl.controller_log, "heart stopped", offset=off)
    assert load_json(hub.ctl.log_dir / "engines.json")["engines"] == {"0": hub.rc._engines[0]}



@pytest.mark.parametrize("forgery", ["bad_signature", "replay"])
def test_forged_task_submission(hub, forgery):
    """A load-balanced task that does not verify (wrong signature, or a replayed one) is
    dropped by the scheduler, as Python's Session.deserialize drops it, and never reaches
    an engine. Were it sent on, the engine would drop it and the engine's only hwm slot
    would stay taken: the next load-balanced task would never run."""
    off = log_size(hub.ctl.controller_log)
    ident = f"badpeer-task-{forgery}".encode()
    s = hub.ctx.socket(zmq.DEALER)
    s.linger = 0
    s.setsockopt(zmq.IDENTITY, ident)
    s.connect(url(hub.info, "task"))
    try:
        frames = hub.session.serialize(hub.session.msg("apply_request", content={}))
        if forgery == "bad_signature":
            frames[1] = b"0" * len(frames[1])
            s.send_multipart(frames)
        else:
            # The first copy is a valid (if useless) task; it gets an error reply. The
            # second, byte for byte the same, is a replay.
            s.send_multipart(frames)
            s.send_multipart(frames)
        hub.assert_dropped(off, ident, forgery)
    finally:
        s.close(0)
    lv = hub.rc.load_balanced_view()
    assert lv.apply_async(os.getpid).get(timeout=15) == hub.engine_pid
    hub.still_works()


def test_wrong_key_flood_from_a_peer_that_never_reads(hub):
    """Issue 14: 200,000 requests signed with the wrong key, from a peer that never reads.
    Before, each got a hub_error queued to a peer that never took it (25 MB to 299 MB,
    never given back; stock 385 to 861 MB). Now nothing is answered and the socket holds
    at most 1,000 messages per peer each way, so the hub's memory stays where it was."""
    n = 200_000
    wrong = session_for(hub.info, key=b"not-the-key")
    frames = wrong.serialize(wrong.msg("connection_request", content={}))
    pid = hub.ctl.proc.pid
    before = rss_mb(pid)
    s = hub.dealer(b"badpeer-never-reads")
    t0 = time.monotonic()
    try:
        for _ in range(n):
            s.send_multipart(frames)  # blocks at the high-water mark: TCP pushes back
        sent = time.monotonic() - t0
        time.sleep(1.0)
        during = rss_mb(pid)
        hub.still_works()
    finally:
        s.close(0)
    time.sleep(0.5)
    after = rss_mb(pid)
    print(f"\n[wrong-key flood] {n} messages sent in {sent:.1f}s; hub RSS {before:.1f} MB before, "
          f"{during:.1f} MB at the end of the flood, {after:.1f} MB after the peer left")
    assert during - before < 40, f"hub RSS grew {during - before:.1f} MB under a flood of unverifiable messages"
    assert after - before < 40
