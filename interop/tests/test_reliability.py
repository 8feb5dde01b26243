"""Issue 14: nothing is lost, whatever happens to the peer that asked.

A client that submits load-balanced and direct tasks and dies before the replies come back:
the engines still run them, and a new Client gets every result from the hub (stock does;
before the fix ippx lost the direct ones, because a failed send to the vanished client
also skipped the reply's copy to the hub)."""

import json
import subprocess
import sys
import textwrap
import time

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
