"""Persistence: 2,000 tasks with ``--sqlitedb``, ``kill -9`` of the hub, restart with
``--restore``, and every completed result fetched by msg_id from a new Client.

The durability promise (docs/store.md): a record change is committed to the SQLite file
within 50 ms of the hub processing the message that caused it. The test therefore waits
until the hub has processed every reply (its queue counters are idle), gives it that
bound twice over, and SIGKILLs it — no clean shutdown, no final commit.
"""

from __future__ import annotations

import os
import signal
import time

import e2e_util
import ipyparallel as ipp

N_TASKS = 2000
DURABILITY_BOUND = 0.05  # s, docs/store.md


def square(x):
    return x * x


@ipp.interactive  # pickled by value: engines cannot import this module
def _sleep_then(t, v):
    import time

    time.sleep(t)
    return v


# Engines can't import this module; builtins travel by reference.
def _idle(rc) -> bool:
    qs = rc.queue_status()
    return qs["unassigned"] == 0 and all(
        qs[k]["queue"] == 0 and qs[k]["tasks"] == 0 for k in qs if k != "unassigned"
    )


def test_kill9_then_restore_serves_every_result(ippx_controller_factory):
    ctl = ippx_controller_factory("--sqlitedb")
    ctl.start_engines(2)
    rc = ctl.wait_for_engines(2)
    engine_ids = sorted(rc.ids)

    view = rc.load_balanced_view()
    n_lb = N_TASKS - 100
    lb = view.map_async(pow, range(n_lb), [2] * n_lb, chunksize=1)
    direct = [rc[i % 2].apply_async(pow, i, 2) for i in range(100)]
    assert lb.get(timeout=300) == [square(x) for x in range(N_TASKS - 100)]
    assert [ar.get(timeout=60) for ar in direct] == [square(i) for i in range(100)]
    msg_ids = list(lb.msg_ids) + [ar.msg_ids[0] for ar in direct]
    assert len(set(msg_ids)) == N_TASKS

    e2e_util.wait_for(lambda: _idle(rc), timeout=30, interval=0.05, what="hub idle")
    time.sleep(2 * DURABILITY_BOUND)
    db_file = ctl.profile_dir / "tasks.db"
    assert db_file.exists(), "the SQLite file lives in the profile dir, as stock"

    rc.close(linger=0)
    old = ctl.proc
    os.kill(old.pid, signal.SIGKILL)
    old.wait(10)
    # The scheduler follows its hub (lifeline); the engines keep running.
    time.sleep(0.5)
    assert all(p.poll() is None for p in ctl.engines), "engines survive the controller"

    # Same profile, same ports (--restore implies --reuse), same database file.
    ctl.proc = ctl._spawn("controller-restored", [*ctl.argv, "--restore"])
    rc2 = ctl.client(timeout=30)
    e2e_util.wait_for(lambda: sorted(rc2.ids) == engine_ids, timeout=15, what="restored engines")

    t0 = time.monotonic()
    ahr = rc2.get_result(msg_ids, owner=False)
    results = ahr.get(timeout=120)
    print(f"\n[restore] fetched {len(results)} results in {time.monotonic() - t0:.2f}s")
    # map tasks (chunksize=1) each return a one-element list
    assert [r[0] for r in results[: N_TASKS - 100]] == [square(x) for x in range(N_TASKS - 100)]
    assert results[N_TASKS - 100 :] == [square(i) for i in range(100)]

    recs = rc2.db_query({"msg_id": {"$in": msg_ids}}, keys=["completed", "queue"])
    assert len(recs) == N_TASKS
    assert all(r["completed"] is not None for r in recs)
    assert sorted(r["queue"] for r in recs).count("mux") == 100
    hist = rc2.hub_history()
    assert set(msg_ids) <= set(hist)

    # The restored controller keeps working with the engines that never left.
    assert rc2.load_balanced_view().apply_async(pow, 12, 2).get(timeout=30) == 144
    assert rc2[:].apply_sync(pow, 3, 2) == [9] * len(engine_ids)


def test_tasks_in_flight_across_a_restart_complete_their_records(ippx_controller_factory):
    """Issue 14: tasks in flight when the hub is SIGKILLed no longer stay "pending" forever
    after --restore. One replies while no hub listens (libzmq on the engine keeps the
    reply for the peer it connects to, and delivers it when the restarted controller is
    up), one replies after the restart: both records complete with their results, and a
    new Client gets them."""
    ctl = ippx_controller_factory("--sqlitedb")
    ctl.start_engines(2)
    rc = ctl.wait_for_engines(2)
    a, b = sorted(rc.ids)
    slow = rc[a].apply_async(_sleep_then, 5, "slow")
    quick = rc[b].apply_async(_sleep_then, 0.6, "quick")
    ids = {"slow": slow.msg_ids[0], "quick": quick.msg_ids[0]}
    e2e_util.wait_for(lambda: rc.queue_status()[a]["queue"] == 1 and rc.queue_status()[b]["queue"] == 1,
                      timeout=10, what="both requests seen by the hub")
    time.sleep(0.3)  # both running on their engines, records durable
    rc.close(linger=0)
    os.kill(ctl.proc.pid, signal.SIGKILL)
    ctl.proc.wait(10)
    time.sleep(1.5)  # `quick` replies while no hub listens
    ctl.proc = ctl._spawn("controller-restored", [*ctl.argv, "--restore"])
    rc2 = ctl.client(timeout=30)
    try:
        e2e_util.wait_for(lambda: sorted(rc2.ids) == [a, b], timeout=15, what="restored engines")
        assert rc2.get_result(ids["quick"], owner=False).get(timeout=20) == "quick"
        assert rc2.get_result(ids["slow"], owner=False).get(timeout=20) == "slow"
        recs = rc2.db_query({"msg_id": {"$in": list(ids.values())}}, keys=["completed"])
        assert all(r["completed"] is not None for r in recs), recs
        assert rc2[b].apply_sync(pow, 2, 5) == 32
    finally:
        rc2.close()
