"""The seed tutorial notebook (demo/seed_workflow.py, the README's first command) runs on
ippx end to end, every code cell of it, including rpy2's %%R and Cython's %%cython on the
engines: an ipp.Cluster with ippx-hub as controller_cmd and ippx-engines (the demo's
default). Stock engines against ippx are covered by the other modules and run_stock.py."""

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO_TIMEOUT = 240  # s; the demo takes ~25 s on 2 cores (most of it %timeit fibonacci(30))


def _run_demo(tmp_path, scratch, *extra):
    cmd = os.environ.get("IPPX_CONTROLLER_CMD")
    hub = shlex.split(cmd)[0] if cmd else str(REPO / "target" / "release" / "ippx-hub")
    argv = [sys.executable, str(REPO / "demo" / "seed_workflow.py"), "--engines", "2", "--hub", hub,
            "--ipython-dir", str(tmp_path / "ipython"), *extra]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=DEMO_TIMEOUT, env=scratch.env)
    finally:
        # ipp.Cluster stops the cluster on exit; the engines' nannies (stock) take a few
        # seconds to notice. The fixture's teardown kills and reports any straggler.
        deadline = time.time() + 20
        while scratch.marked() and time.time() < deadline:
            time.sleep(0.2)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert "seed workflow: all 26 cells passed on ippx" in r.stdout, out[-6000:]
    assert "FAILED" not in r.stdout
    # every notebook cell ran, and its checks ran
    for i in range(1, 27):
        assert f"=== cell {i}/26 " in r.stdout
    assert r.stdout.count("ok:") >= 60
    return r.stdout


@pytest.mark.timeout(DEMO_TIMEOUT + 60)
def test_seed_notebook_on_ippx_engines(tmp_path, ippx_scratch):
    exe = os.environ.get("IPPX_ENGINE_BIN") or str(REPO / "target" / "release" / "ippx-engine")
    if not os.access(exe, os.X_OK):
        pytest.fail(f"{exe} not built")
    out = _run_demo(tmp_path, ippx_scratch, "--engine-cmd", exe)
    assert "with ippx-engines" in out
    # the R and Cython cells, with their results
    assert "R printed mean(a), '[1] 12.5', once on each engine" in out
    assert "foo(3) == 4 on every engine" in out

