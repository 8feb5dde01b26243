"""CurveZMQ (issue 14): ``IPP_ENABLE_CURVE=1``, as ipyparallel offers it (ipyparallel #553).

The controller puts its public key in both connection files (``curve_serverkey``) and, as
ipcontroller does, signs nothing (``key: ""``): every socket it binds is a CURVE server,
so the handshake is the authentication. The stock Client, stock engines and ippx-engine
read the key from the files. A peer that does not have the key completes no handshake:
it receives no reply, no engine ids, no output and no heartbeat, and what it sends is
never delivered. Both scheduler modes (thread: the scheduler reaches the hub over inproc;
process: over TCP, as a CURVE client) and ippx-engine under the stock controller.
"""

from __future__ import annotations

import os
import sys
import time

import pytest
import zmq
from e2e_util import session_for, url, wait_for

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="this pyzmq has no CURVE")

QUIET = 1.0  # s a stranger listens after the workload for anything at all


def strangers(info: dict, einfo: dict, ctx: zmq.Context, owned) -> dict[str, zmq.Socket]:
    """Sockets of peers without the server key: plain, and CURVE with another server's key."""
    socks = {}
    other_public, _ = zmq.curve_keypair()
    for how in ("plain", "wrong-key"):
        def sock(kind, _how=how):
            s = ctx.socket(kind)
            s.linger = 0
            if _how == "wrong-key":
                s.curve_serverkey = other_public
                s.curve_publickey, s.curve_secretkey = zmq.curve_keypair()
            return s

        for name, where in (("iopub", info), ("notification", info), ("hb_ping", einfo)):
            s = sock(zmq.SUB)
            s.setsockopt(zmq.SUBSCRIBE, b"")
            s.connect(url(where, name))
            socks[f"{how} {name}"] = s
        # what a stranger who speaks the protocol sends: unsigned requests (the key is empty)
        session = session_for(info, key=b"")
        q = sock(zmq.DEALER)
        q.connect(url(info, "registration"))
        q.send_multipart(session.serialize(session.msg("connection_request", content={})))
        socks[f"{how} registration"] = q
        t = sock(zmq.DEALER)
        t.connect(url(info, "task"))
        code = f"open({str(owned)!r}, 'w').write('a stranger ran code')"
        msg = session.msg("execute_request", content={"code": code, "silent": False})
        t.send_multipart(session.serialize(msg))
        socks[f"{how} task"] = t
    return socks


def heard(socks: dict[str, zmq.Socket]) -> dict[str, int]:
    """How many messages each stranger socket received."""
    got = {}
    for name, s in socks.items():
        n = 0
        while s.poll(0):
            s.recv_multipart()
            n += 1
        if n:
            got[name] = n
    return got


def workload(ctl, rc, n_engines: int) -> None:
    dv = rc[:]
    pids = dv.apply_sync(os.getpid)
    assert len(set(pids)) == n_engines
    ar = dv.execute("print('curve secret output')", block=True)
    assert all("curve secret output" in s for s in ar.stdout), ar.stdout
    dv.push({"a": 7}, block=True)
    assert dv.pull("a", block=True) == [7] * n_engines
    assert rc.load_balanced_view().map_sync(abs, range(-20, 0)) == list(range(20, 0, -1))


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_stock_peers_work_over_curve_and_strangers_see_nothing(ippx_controller_factory, mode, tmp_path):
    ctl = ippx_controller_factory(f"--scheduler-mode={mode}", env={"IPP_ENABLE_CURVE": "1"})
    info, einfo = ctl.client_info(), ctl.engine_info()
    assert len(info["curve_serverkey"]) == 40 and einfo["curve_serverkey"] == info["curve_serverkey"]
    assert info["key"] == "" and einfo["key"] == "", "with CURVE, messages are not signed (as stock)"

    ctx = zmq.Context()
    try:
        owned = tmp_path / "owned"
        peers = strangers(info, einfo, ctx, owned)
        ctl.start_engines(1)
        ctl.start_ippx_engines(1)
        rc = ctl.wait_for_engines(2, timeout=30)
        workload(ctl, rc, 2)
        # an engine that registers while the strangers listen: its notification is news
        ctl.start_ippx_engines(1)
        wait_for(lambda: len(rc.ids) == 3, 30, what="the third engine")
        workload(ctl, rc, 3)
        time.sleep(QUIET)
        assert heard(peers) == {}, "peers without the server key received messages"
        # the controller never saw their requests: the code a stranger sent ran nowhere
        assert not owned.exists()
        assert rc.queue_status()["unassigned"] == 0
    finally:
        ctx.destroy(linger=0)


def test_ippx_engine_under_the_stock_controller_over_curve(ippx_controller_factory, monkeypatch):
    monkeypatch.setenv("IPPX_CONTROLLER_CMD", f"{sys.executable} -m ipyparallel.controller")
    ctl = ippx_controller_factory("--ip=127.0.0.1", "--log-level=10", defaults=False, env={"IPP_ENABLE_CURVE": "1"})
    assert ctl.engine_info()["curve_serverkey"]
    ctl.start_ippx_engines(2)
    rc = ctl.wait_for_engines(2, timeout=30)
    workload(ctl, rc, 2)


def test_without_curve_the_same_strangers_hear_everything(ippx_controller_factory, tmp_path):
    """The control for the test above: its strangers do hear a controller without CURVE
    (so their silence there is CURVE's doing, not a listener that cannot hear)."""
    ctl = ippx_controller_factory()
    info, einfo = ctl.client_info(), ctl.engine_info()
    assert info["curve_serverkey"] is None and info["key"]
    ctx = zmq.Context()
    try:
        peers = strangers(info, einfo, ctx, tmp_path / "owned")
        ctl.start_ippx_engines(1)
        rc = ctl.wait_for_engines(1, timeout=30)
        workload(ctl, rc, 1)
        time.sleep(QUIET)
        got = heard(peers)
        # unsigned requests get no answer from a keyed controller, but the publications
        # (output, engine registrations, pings) reach anyone who subscribes
        for name in ("plain iopub", "plain notification", "plain hb_ping"):
            assert got.get(name, 0) > 0, f"{name} heard nothing: {got}"
    finally:
        ctx.destroy(linger=0)
