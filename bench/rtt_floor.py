"""The floor of the stock Client's load-balanced round trip through ippx-hub: engines that
cost nothing (ippx-bench's synthetic engines answer every apply_request at once, from Rust,
with status busy/idle on IOPub as a kernel does). What remains is the Client and the
controller; no engine can make `apply_sync` faster than this.

    .venv/bin/python bench/rtt_floor.py [--runs 3] [--rtt 500]

Each run: a fresh ippx-hub (127.0.0.1, temporary profile), `ippx-bench --scenario=idle
--engines=2 --iopub`, 100 warm-up calls, then the median of N sequential
`lview.apply_sync(noop)`. Every process started here is killed at the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import ipyparallel as ipp

REPO = Path(__file__).resolve().parents[1]
RELEASE = REPO / "target" / "release"


def one_run(n: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        prof = Path(d) / "profile_floor"
        env = dict(os.environ, IPYTHONDIR=d)
        quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
        procs = [subprocess.Popen([str(RELEASE / "ippx-hub"), f"--profile-dir={prof}", "--ip=127.0.0.1"], **quiet)]
        rc = None
        try:
            deadline = time.monotonic() + 30
            while not (prof / "security" / "ipcontroller-client.json").exists():
                if time.monotonic() > deadline:
                    raise TimeoutError("ippx-hub wrote no connection file in 30 s")
                time.sleep(0.05)
            procs.append(
                subprocess.Popen(
                    [
                        str(RELEASE / "ippx-bench"), f"--profile-dir={prof}", f"--controller-pid={procs[0].pid}",
                        "--scenario=idle", "--engines=2", "--iopub", "--duration=600", "--warmup=0",
                    ],
                    **quiet,
                )
            )  # fmt: skip
            rc = ipp.Client(profile_dir=str(prof))
            rc.wait_for_engines(2, timeout=30)
            lview = rc.load_balanced_view()
            noop = lambda: None  # noqa: E731
            for _ in range(100):
                lview.apply_sync(noop)
            times = []
            for _ in range(n):
                t = time.perf_counter()
                lview.apply_sync(noop)
                times.append(time.perf_counter() - t)
            return statistics.median(times) * 1000
        finally:
            if rc is not None:
                rc.close()
            for p in procs:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rtt", type=int, default=500)
    a = ap.parse_args()
    res = []
    for i in range(a.runs):
        res.append(one_run(a.rtt))
        print(f"run {i}: lb round trip median {res[-1]:.2f} ms (stock Client, ippx-hub, synthetic engines)", flush=True)
    print(f"median of {a.runs} runs: {statistics.median(res):.2f} ms")


if __name__ == "__main__":
    main()
