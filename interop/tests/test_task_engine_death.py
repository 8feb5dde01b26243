"""Issue 3: an engine SIGKILLed while it runs a long load-balanced task. The client gets
an EngineError for that task, and the other queued tasks finish on the survivors."""

import os
import signal
import time

import ipyparallel as ipp


def test_engine_killed_during_long_lb_task(ippx_controller):
    ippx_controller.start_engines(3)
    rc = ippx_controller.client()
    rc.wait_for_engines(3, timeout=15)
    pids = dict(zip(rc.ids, rc[:].apply_sync(os.getpid)))
    lview = rc.load_balanced_view()

    # One long task first: with hwm=1 and leastload it lands on one engine.
    long = lview.apply_async(time.sleep, 30)
    deadline = time.time() + 10
    victim = None
    while time.time() < deadline and victim is None:
        st = rc.queue_status()
        for eid in rc.ids:
            if st.get(eid, {}).get("tasks"):
                victim = eid
        time.sleep(0.05)
    assert victim is not None, "the long task was never assigned"
    # Queue more work than the two survivors can take at once.
    others = [lview.apply_async(abs, -i) for i in range(20)]

    os.kill(pids[victim], signal.SIGKILL)
    t0 = time.time()
    try:
        long.get(timeout=20)
        raise AssertionError("the task on the killed engine should fail")
    except ipp.error.RemoteError as e:
        assert e.ename == "EngineError", e
    print(f"EngineError after {time.time() - t0:.2f} s")
    assert [a.get(timeout=20) for a in others] == list(range(20))
    survivors = {a.engine_id for a in others}
    assert victim not in survivors and survivors <= set(rc.ids) | set(pids)
    rc.close()
