"""The seed tutorial's workflow (demo/seed_workflow.py, the README's first command) runs
on ippx end to end: an ipp.Cluster with ippx as controller_cmd and stock engines."""

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_seed_workflow_runs_on_ippx(tmp_path, ippx_scratch):
    cmd = os.environ.get("IPPX_CONTROLLER_CMD")
    hub = shlex.split(cmd)[0] if cmd else str(REPO / "target" / "release" / "ippx-hub")
    r = subprocess.run(
        [sys.executable, str(REPO / "demo" / "seed_workflow.py"), "--engines", "2", "--hub", hub, "--profile-dir", str(tmp_path / "profile")],
        capture_output=True,
        text=True,
        timeout=240,
        env=ippx_scratch.env,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "seed workflow: all steps passed on ippx" in r.stdout
    assert r.stdout.count("ok:") >= 25
    # ipyparallel's engine nannies take a few seconds to notice their engines are gone.
    deadline = time.time() + 20
    while ippx_scratch.marked() and time.time() < deadline:
        time.sleep(0.2)
