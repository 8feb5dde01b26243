"""End-to-end benchmark with the stock Client: {stock ipcontroller, ippx-hub} ×
{stock ipengine, ippx-engine}, 2 engines, side by side in one run, medians of N runs.

Per combination and run, in a fresh profile on 127.0.0.1 (msgpack for both controllers,
in-memory store, INFO logging):
  * lb round trip: median wall time of sequential `lview.apply_sync(noop)` calls;
  * lb throughput: `lview.apply_async(noop)` × N submitted at once, then waited for;
  * engine CPU per task: CPU (user+sys) of the engines' process trees (ipengine + its
    nanny; ippx-engine's supervisor + worker) over the throughput phase / tasks;
  * client and controller CPU per task over the same phase;
  * RSS of one engine's process tree after the phases.

    .venv/bin/python bench/engine_e2e.py [--runs 3] [--tasks 3000] [--rtt 500] [--json OUT]

Every process started here is killed at the end (its own session, killed by group).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User+system CPU seconds of pid and its descendants (live ones)."""
    total = 0.0
    for p in tree(pid):
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(f[11]) + int(f[12])) / TICK
        except (OSError, IndexError):
            pass
    return total


def rss_mb(pid: int) -> float:
    total = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def tree(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def noop():
    return None


def run_one(controller: str, engine: str, args) -> dict:
    import ipyparallel as ipp

    tmp = Path(tempfile.mkdtemp(prefix="ippx-engine-bench-"))
    prof = tmp / "profile_bench"
    env = dict(os.environ, IPYTHONDIR=str(tmp))
    procs: list[subprocess.Popen] = []
    logs = tmp / "logs"
    logs.mkdir()

    def spawn(name, argv):
        p = subprocess.Popen(argv, env=env, stdout=open(logs / f"{name}.log", "w"), stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        procs.append(p)
        return p

    common = [f"--profile-dir={prof}", "--ip=127.0.0.1", "--Session.packer=msgpack", "--Session.unpacker=msgpack", "--dictdb"]
    try:
        if controller == "stock":
            ctl = spawn("controller", [sys.executable, "-m", "ipyparallel.controller", *common])
        else:
            ctl = spawn("controller", [str(REPO / "target/release/ippx-hub"), *common])
        client_file = prof / "security/ipcontroller-client.json"
        deadline = time.monotonic() + 30
        while not client_file.exists():
            if time.monotonic() > deadline or ctl.poll() is not None:
                raise RuntimeError(f"controller did not start: {(logs / 'controller.log').read_text()[-2000:]}")
            time.sleep(0.1)
        time.sleep(0.3)
        engines = []
        for i in range(2):
            if engine == "ipengine":
                engines.append(spawn(f"engine{i}", [sys.executable, "-m", "ipyparallel.engine", f"--profile-dir={prof}"]))
            else:
                engines.append(spawn(f"engine{i}", [str(REPO / "target/release/ippx-engine"), f"--profile-dir={prof}"]))
        rc = ipp.Client(profile_dir=str(prof))
        rc.wait_for_engines(2, timeout=60)
        lview = rc.load_balanced_view()
        for _ in range(200):  # warm-up
            lview.apply_sync(noop)
        # round trip
        lat = []
        for _ in range(args.rtt):
            t = time.perf_counter()
            lview.apply_sync(noop)
            lat.append(time.perf_counter() - t)
        # throughput + CPU
        e0 = sum(cpu_s(e.pid) for e in engines)
        c0 = cpu_s(ctl.pid)
        me0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        ars = [lview.apply_async(noop) for _ in range(args.tasks)]
        for ar in ars:
            ar.get(timeout=120)
        wall = time.perf_counter() - t0
        me1 = resource.getrusage(resource.RUSAGE_SELF)
        time.sleep(0.2)
        e1 = sum(cpu_s(e.pid) for e in engines)
        c1 = cpu_s(ctl.pid)
        res = {
            "controller": controller,
            "engine": engine,
            "rtt_p50_ms": statistics.median(lat) * 1e3,
            "tasks_per_s": args.tasks / wall,
            "engine_cpu_us_per_task": (e1 - e0) / args.tasks * 1e6,
            "controller_cpu_us_per_task": (c1 - c0) / args.tasks * 1e6,
            "client_cpu_us_per_task": ((me1.ru_utime + me1.ru_stime) - (me0.ru_utime + me0.ru_stime)) / args.tasks * 1e6,
            "engine_rss_mb": rss_mb(engines[0].pid),
        }
        rc.close()
        return res
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=3000)
    ap.add_argument("--rtt", type=int, default=500)
    ap.add_argument("--combos", default="stock/ipengine,stock/ippx-engine,ippx/ipengine,ippx/ippx-engine")
    ap.add_argument("--json", type=Path, help="append one JSON line per run here")
    args = ap.parse_args()
    combos = [tuple(c.split("/")) for c in args.combos.split(",")]
    results: dict[tuple, list[dict]] = {c: [] for c in combos}
    for r in range(args.runs):  # interleaved, so machine noise hits every combination alike
        for c in combos:
            res = run_one(c[0], c[1], args)
            res["run"] = r
            results[c].append(res)
            print(json.dumps(res), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(res) + "\n")
    keys = ["rtt_p50_ms", "tasks_per_s", "engine_cpu_us_per_task", "controller_cpu_us_per_task", "client_cpu_us_per_task", "engine_rss_mb"]
    print()
    print(f"medians of {args.runs} runs, 2 engines, stock Client ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    print("| controller × engine | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for c, rs in results.items():
        print(f"| {c[0]} × {c[1]} | " + " | ".join(f"{statistics.median(r[k] for r in rs):,.1f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
