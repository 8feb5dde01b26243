"""Issue 14: the fault matrix. Each case kills something at a given point of a task's
life and states what the Client sees within a bound (a result or an error, never a
hang) and that no completed result is lost.

| kill -9 of        | queued                   | running            | replying                    |
|-------------------|--------------------------|--------------------|-----------------------------|
| an engine         | EngineError (direct); lb | EngineError (lb:   | the result or EngineError   |
|                   | runs on another engine   | retried if asked)  |                             |
| the hub, sqlite,  | EngineError from the new | the result, from   | the result, from the new    |
| then --restore    | hub (it never reached an | the new hub        | hub (libzmq on the engine   |
|                   | engine)                  |                    | keeps it until reconnect)   |
| the scheduler     | EngineError (it held the | the result, from   | the result, or              |
| child (process    | task; the hub fails it   | the hub, once the  | ControllerRestarted once    |
| mode): the hub    | and restarts the child   | engine answers the | the engine answers later    |
| restarts it       | on the same ports)       | new scheduler      | work (its reply was lost)   |
| the client        | (test_reliability.py: every result reaches the hub and a new Client) |

After a scheduler restart the results come from the hub (`get_result`, a new Client):
clients reconnect under new routing ids, so the old AsyncResults are not resolved; new
work from the same Client runs as before.
"""

import os
import signal
import time

import e2e_util
import ipyparallel as ipp
import pytest

BOUND = 20.0  # s: every outcome below arrives within this


@ipp.interactive
def _sleep_then(t, v):
    import time

    time.sleep(t)
    return v


@ipp.interactive
def _big_then_die(mb):
    """Returns mb MB, and the process dies 20 ms later: while its reply is on the wire."""
    import os
    import signal
    import threading

    threading.Timer(0.02, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()
    return b"x" * (mb << 20)


def _outcome(ar):
    t0 = time.monotonic()
    try:
        v = ar.get(timeout=BOUND)
        return "result", v, time.monotonic() - t0
    except ipp.error.RemoteError as e:
        return e.ename, None, time.monotonic() - t0


@pytest.mark.parametrize("engine_kind", ["ipengine", "ippx-engine"])
def test_engine_killed_with_a_task_running_and_one_queued(ippx_controller, engine_kind):
    start = ippx_controller.start_engines if engine_kind == "ipengine" else ippx_controller.start_ippx_engines
    start(2)
    rc = ippx_controller.client()
    try:
        rc.wait_for_engines(2, timeout=30)
        a, b = sorted(rc.ids)
        pids = dict(zip(rc.ids, rc[:].apply_sync(os.getpid)))
        done = rc[a].apply_async(_sleep_then, 0, "done before")
        assert done.get(timeout=BOUND) == "done before"
        running = rc[a].apply_async(_sleep_then, 60, "never")
        queued = rc[a].apply_async(_sleep_then, 0, "never either")
        # an lb task the scheduler sent to the dead engine is retried on the other one
        lview = rc.load_balanced_view()
        lview.set_flags(retries=1)
        lb = [lview.apply_async(_sleep_then, 0.05, i) for i in range(10)]
        e2e_util.wait_for(lambda: rc.queue_status()[a]["queue"] == 2, timeout=10, what="both direct requests queued on the engine")
        os.kill(pids[a], signal.SIGKILL)
        for name, ar in (("running", running), ("queued", queued)):
            what, _, took = _outcome(ar)
            print(f"\n[{engine_kind}] direct {name}: {what} after {took:.2f}s")
            assert what == "EngineError", (name, what)
        assert [ar.get(timeout=BOUND) for ar in lb] == list(range(10))
        assert {ar.engine_id for ar in lb} <= {a, b}
        # nothing completed is lost: the earlier result is still served by the hub
        assert rc.get_result(done.msg_ids[0]).get(timeout=BOUND) == "done before"
    finally:
        rc.close()


def test_engine_killed_while_replying(ippx_controller):
    ippx_controller.start_engines(2)
    rc = ippx_controller.client()
    try:
        rc.wait_for_engines(2, timeout=30)
        a = sorted(rc.ids)[0]
        what, v, took = _outcome(rc[a].apply_async(_big_then_die, 20))
        print(f"\nkilled while replying 20 MB: {what} after {took:.2f}s")
        assert what in ("result", "EngineError"), what
        if what == "result":
            assert len(v) == 20 << 20
    finally:
        rc.close()


def test_hub_killed_with_tasks_queued_running_and_replying(ippx_controller_factory):
    ctl = ippx_controller_factory("--sqlitedb")
    ctl.start_engines(2)
    rc = ctl.wait_for_engines(2)
    a, b = sorted(rc.ids)
    done = rc[a].apply_async(_sleep_then, 0, "done")
    assert done.get(timeout=BOUND) == "done"
    running = rc[a].apply_async(_sleep_then, 4, "running")  # answers after the restart
    lview = rc.load_balanced_view(targets=[b])
    replying = lview.apply_async(_sleep_then, 0.5, "replying")  # answers while the hub is down
    queued = lview.apply_async(_sleep_then, 0, "queued")  # waits in the scheduler (hwm=1) behind it
    ids = {k: ar.msg_ids[0] for k, ar in (("done", done), ("running", running), ("replying", replying), ("queued", queued))}
    e2e_util.wait_for(lambda: rc.queue_status()["unassigned"] == 1, timeout=10, what="the lb task waiting in the scheduler")
    time.sleep(0.2)
    rc.close(linger=0)
    os.kill(ctl.proc.pid, signal.SIGKILL)
    ctl.proc.wait(10)
    time.sleep(1.0)
    ctl.proc = ctl._spawn("controller-restored", [*ctl.argv, "--restore"])
    rc2 = ctl.client(timeout=30)
    try:
        e2e_util.wait_for(lambda: sorted(rc2.ids) == [a, b], timeout=15, what="restored engines")
        got = {k: _outcome(rc2.get_result(m, owner=False)) for k, m in ids.items()}
        for k, (what, v, took) in got.items():
            print(f"\nhub killed, task {k}: {what} {v!r} after {took:.2f}s")
        assert got["done"][:2] == ("result", "done"), "a completed result was lost"
        assert got["running"][:2] == ("result", "running")
        assert got["replying"][:2] == ("result", "replying")
        assert got["queued"][0] == "EngineError", "a task that never reached an engine must fail, not hang"
        assert rc2[:].apply_sync(_sleep_then, 0, 1) == [1, 1]
    finally:
        rc2.close()


@pytest.mark.parametrize("engine_kind", ["ipengine", "ippx-engine"])
def test_scheduler_child_killed_with_tasks_queued_running_and_replying(ippx_controller_factory, engine_kind):
    ctl = ippx_controller_factory("--scheduler-mode=process")
    (ctl.start_engines if engine_kind == "ipengine" else ctl.start_ippx_engines)(2)
    rc = ctl.wait_for_engines(2, timeout=30)
    a, b = sorted(rc.ids)
    done = rc[a].apply_async(_sleep_then, 0, "done")
    assert done.get(timeout=BOUND) == "done"
    running = rc[a].apply_async(_sleep_then, 3, "running")  # answers the new scheduler
    lview = rc.load_balanced_view(targets=[b])
    replying = lview.apply_async(_sleep_then, 0.3, "replying")  # answers while none listens
    queued = lview.apply_async(_sleep_then, 0, "queued")  # held by the scheduler (hwm=1)
    ids = {k: ar.msg_ids[0] for k, ar in (("done", done), ("running", running), ("replying", replying), ("queued", queued))}
    e2e_util.wait_for(lambda: rc.queue_status()["unassigned"] == 1, timeout=10, what="the lb task waiting in the scheduler")
    old = ctl.scheduler_pid()
    os.kill(old, signal.SIGKILL)
    t0 = time.monotonic()
    e2e_util.wait_for(lambda: e2e_util.child_matching(ctl.proc.pid, "ippx-scheduler") not in (None, old), timeout=10, what="a new scheduler child")
    restarted = time.monotonic() - t0
    assert ctl.proc.poll() is None, "the controller stopped with its scheduler"
    # new work from the same Client, on both engines, through the new scheduler
    assert rc[:].apply_sync(_sleep_then, 0, 1) == [1, 1]
    assert rc.load_balanced_view(targets=[b]).apply_sync(_sleep_then, 0, 2) == 2
    rc2 = ctl.client()
    got = {k: _outcome(rc2.get_result(m, owner=False)) for k, m in ids.items()}
    for k, (what, v, took) in got.items():
        print(f"\n[{engine_kind}] scheduler killed (new one after {restarted:.2f}s), task {k}: {what} {v!r} after {took:.2f}s")
    assert got["done"][:2] == ("result", "done"), "a completed result was lost"
    assert got["running"][:2] == ("result", "running")
    assert got["replying"][:2] in (("result", "replying"), ("ControllerRestarted", None)), got["replying"]
    assert got["queued"][0] == "EngineError", "a task the dead scheduler held must fail, not hang"
    assert rc2.queue_status()["unassigned"] == 0
