"""Issue 14: nothing is lost, whatever happens to the peer that asked.

A client that submits load-balanced and direct tasks and dies before the replies come back:
the engines still run them, and a new Client gets every result from the hub (stock does;
before the fix ippx lost the direct ones, because a failed send to the vanished client
also skipped the reply's copy to the hub)."""

import json
import os
import shlex
import subprocess
import sys
import textwrap
import time

import e2e_util
import pytest

SUBMIT_AND_DIE = textwrap.dedent(
    """
    import json, os, sys, time
    import ipyparallel as ipp
    rc = ipp.Client(sys.argv[1])
    rc.wait_for_engines(2, timeout=15)
    lview = rc.load_balanced_view()
    dview = rc[:]
    lb = [lview.apply_async(lambda i: (__import__("time").sleep(1.5), i * 10)[1], i) for i in range(6)]
    direct = [rc[i % 2].apply_async(lambda i: (__import__("time").sleep(1.5), -i)[1], i) for i in range(4)]
    print(json.dumps({"lb": [a.msg_ids[0] for a in lb], "direct": [a.msg_ids[0] for a in direct]}), flush=True)
    time.sleep(0.3)  # every request has left this process
    os._exit(0)       # die mid-task, without closing anything
    """
)


def test_results_survive_the_submitting_client(ippx_controller):
    ippx_controller.start_engines(2)
    ippx_controller.wait_for_engines(2, timeout=15)
    r = subprocess.run([sys.executable, "-c", SUBMIT_AND_DIE, str(ippx_controller.client_file)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    ids = json.loads(r.stdout.strip().splitlines()[-1])
    rc = ippx_controller.client()
    try:
        t0 = time.monotonic()
        lb = rc.get_result(ids["lb"]).get(timeout=30)
        direct = rc.get_result(ids["direct"]).get(timeout=30)
        print(f"all 10 results from a new Client after {time.monotonic() - t0:.2f} s")
        assert lb == [i * 10 for i in range(6)]
        assert direct == [-i for i in range(4)]
        # and the hub no longer lists any of them as queued
        deadline = time.monotonic() + 10
        while True:
            st = rc.queue_status()
            queued = sum(st[e]["queue"] + st[e]["tasks"] for e in rc.ids) + st.get("unassigned", 0)
            if queued == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert queued == 0, st
    finally:
        rc.close()


def _dealer(ctx, info, port_key):
    import zmq

    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.connect(e2e_util.url(info, port_key))
    return s


def test_unknown_requests_cannot_wedge_the_load_balancer(ippx_controller):
    """Two signed messages of a type no engine answers, on the client's task socket: before,
    they were scheduled like tasks and, with the default hwm=1, every later load-balanced
    task hung (stock hangs the same way). Now each gets an error reply and nothing is
    scheduled."""
    import zmq

    ippx_controller.start_engines(2)
    rc = ippx_controller.client()
    try:
        rc.wait_for_engines(2, timeout=15)
        info = ippx_controller.client_info()
        ctx = zmq.Context()
        sock = _dealer(ctx, info, "task")
        sess = e2e_util.session_for(info)
        try:
            for _ in range(2):
                sess.send(sock, "frobnicate_request", content={})
            for _ in range(2):
                assert sock.poll(5000), "no error reply to an unschedulable request"
                _, msg = sess.feed_identities(sock.recv_multipart())
                reply = sess.deserialize(msg)
                assert reply["header"]["msg_type"] == "frobnicate_reply", reply["header"]
                assert reply["content"]["ename"] == "UnknownMessageType", reply["content"]
        finally:
            sock.close(0)
            ctx.term()
        lview = rc.load_balanced_view()
        ar = lview.map_async(abs, range(-8, 0))
        assert ar.get(timeout=20) == list(range(8, 0, -1))
    finally:
        rc.close()


def test_a_broadcast_with_the_wrong_key_runs_nowhere(ippx_controller, tmp_path):
    """The broadcast scheduler re-signs what it passes to the engines, so it must verify
    first: a request signed with another key never reaches an engine."""
    import zmq
    from ipyparallel.serialize import pack_apply_message

    ippx_controller.start_engines(2)
    rc = ippx_controller.client()
    try:
        rc.wait_for_engines(2, timeout=15)
        info = ippx_controller.client_info()
        marker = tmp_path / "forged-ran"
        bufs = pack_apply_message(open, (str(marker), "w"), {})
        ctx = zmq.Context()
        sock = _dealer(ctx, info, "broadcast")
        forger = e2e_util.session_for(info, key=b"not-the-key")
        try:
            # what BroadcastView._init_metadata sends: (engine uuid, engine id) pairs
            md = {"targets": [[uuid.decode() if isinstance(uuid, bytes) else uuid, eid] for eid, uuid in rc._engines.items()],
                  "is_broadcast": True, "is_coalescing": False}
            forger.send(sock, "apply_request", content={}, buffers=bufs, metadata=md)
            assert not sock.poll(1500), "a forged broadcast was answered"
        finally:
            sock.close(0)
            ctx.term()
        assert not marker.exists(), "a broadcast signed with the wrong key ran on an engine"
        # a real one still works
        assert len(set(rc.broadcast_view().apply_sync(os.getpid))) == 2
    finally:
        rc.close()


def test_memory_comes_back_after_a_purge(ippx_controller):
    """Pushing then pulling big arrays makes the hub hold every buffer in its records;
    after rc.purge_everything() its RSS comes back close to where it started (before, it
    stayed at the peak: both allocators kept the freed pages)."""
    import numpy as np

    ippx_controller.start_engines(1)
    rc = ippx_controller.client()
    try:
        rc.wait_for_engines(1, timeout=15)
        e = rc[0]
        e.push({"warm": 1}, block=True)
        pid = ippx_controller.proc.pid
        before = e2e_util.rss_mb(pid)
        n, mb = 60, 5
        for i in range(n):
            e.push({"a": np.full(mb * 2**20 // 8, float(i))}, block=True)
            assert e.pull("a", block=True)[0] == float(i)
        peak = e2e_util.rss_mb(pid)
        rc.purge_everything()
        deadline = time.monotonic() + 10
        while True:
            after = e2e_util.rss_mb(pid)
            if after - before < 0.25 * (peak - before) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        print(f"\nhub RSS: {before:.0f} MB before, {peak:.0f} MB after {n} push+pull of {mb} MB, {after:.0f} MB after purge_everything")
        assert peak - before > n * mb, "the records did not hold the buffers (the test measures nothing)"
        assert after - before < 0.25 * (peak - before), f"RSS {after:.0f} MB after the purge (started at {before:.0f}, peak {peak:.0f})"
    finally:
        rc.close()


def test_fd_limit_refuses_extra_engines_clearly(ippx_controller_factory, monkeypatch):
    """At start the hub raises its soft RLIMIT_NOFILE to the hard limit and logs how many
    engines that leaves room for (about 8 connections each); an engine beyond it gets a
    registration error that says why, and the engines already there keep working. Here
    the hard limit is made small with prlimit so that the room is a few engines."""
    import re
    import shutil

    if not shutil.which("prlimit"):
        pytest.skip("prlimit (util-linux) not installed")
    from conftest import controller_argv

    hub = controller_argv()
    monkeypatch.setenv("IPPX_CONTROLLER_CMD", shlex.join(["prlimit", "--nofile=120:160", *hub]))
    ctl = ippx_controller_factory()
    m = None
    deadline = time.monotonic() + 5
    while m is None and time.monotonic() < deadline:
        m = re.search(r"file descriptors: room for (\d+) engines", ctl.controller_log.read_text())
        time.sleep(0.1)
    assert m, "the hub did not log its engine room"
    room = int(m[1])
    assert "limit=160" in ctl.controller_log.read_text(), "the soft limit was not raised to the hard one"
    assert 1 <= room <= 8, f"room for {room} engines under a hard limit of 160"
    ctl.start_ippx_engines(room + 1)
    rc = ctl.client()
    try:
        rc.wait_for_engines(room, timeout=30)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and all(p.poll() is None for p in ctl.engines):
            time.sleep(0.1)
        refused = [p for p in ctl.engines if p.poll() is not None]
        assert len(refused) == 1, "exactly one engine over the room is turned away"
        logs = "".join((ctl.log_dir / f"ippx-engine-{i}.log").read_text(errors="replace") for i in range(room + 1))
        assert "file-descriptor limit" in logs, "the refused engine does not say why"
        assert len(rc.ids) == room
        assert len(set(rc[:].apply_sync(os.getpid))) == room
    finally:
        rc.close()


@pytest.mark.parametrize("kind", ["ipengine", "ippx-engine"])
def test_an_engine_back_from_a_blip_is_readmitted(ippx_controller, kind):
    """ipython #6444, #9882: an engine whose heartbeats stop long enough to be declared
    dead (here SIGSTOP for 4 s against --ping=250, so 2.5 s of silence is death), and that
    is alive when they return, comes back under its old id: the Client sees it again
    (registration_notification), the load balancer uses it again. On stock it stays an
    orphan."""
    import signal

    start = ippx_controller.start_engines if kind == "ipengine" else ippx_controller.start_ippx_engines
    start(2)
    rc = ippx_controller.client()
    try:
        rc.wait_for_engines(2, timeout=30)
        pids = dict(zip(rc.ids, rc[:].apply_sync(os.getpid)))
        victim = rc.ids[0]
        # the process holding the heart: a stock engine itself (its nanny is another
        # process); ippx-engine's supervisor, the parent of the Python worker that answers
        from e2e_util import ppid

        heart = pids[victim] if kind == "ipengine" else ppid(pids[victim])
        os.kill(heart, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 15
            while victim in rc.ids and time.monotonic() < deadline:
                time.sleep(0.05)
            assert victim not in rc.ids, "the stopped engine was never declared dead"
            time.sleep(1.0)
        finally:
            os.kill(heart, signal.SIGCONT)
        t0 = time.monotonic()
        while victim not in rc.ids and time.monotonic() < t0 + 15:
            time.sleep(0.02)
        back = time.monotonic() - t0
        print(f"\n[{kind}] engine {victim} re-admitted {back:.2f} s after SIGCONT")
        assert victim in rc.ids, "the engine did not come back"
        assert rc[victim].apply_sync(os.getpid) == pids[victim], "a different process answered under the old id"
        lview = rc.load_balanced_view()
        ran_on = {ar.get(timeout=20) for ar in [lview.apply_async(os.getpid) for _ in range(40)]}
        assert pids[victim] in ran_on, "the load balancer never used the re-admitted engine"
    finally:
        rc.close()
