#!/usr/bin/env python3
"""What the status page costs the controller (issue 15), measured with ippx-bench.

For each run, two fresh ippx-hubs (own temporary profiles, --ip=127.0.0.1, msgpack,
in-memory store, --metrics-addr on an OS-chosen port) carry the same ippx-bench load
(`lb`, 16 synthetic engines, window 64 by default: ~20k tasks/s on the project's VM):
one with nobody reading the status page ("no page"), one with a poller doing exactly
what an open page does ("page": GET /api/status?engines_offset=0&engines_limit=50&
engines_sort=id every second, after loading / once). The order alternates between runs.
It reports, medians over the runs:

* the controller's CPU per task and tasks/s with and without the page (ippx-bench reads
  the whole process tree's utime+stime from /proc), and the difference;
* the direct cost of the page: the CPU of the hub's main thread (which serves HTTP)
  during the measured window, page minus no page, plus the snapshot build time on the
  hub's thread as /api/status reports it, as a share of the controller's CPU.

  .venv/bin/python bench/status_cost.py [--runs 3] [--engines 16] [--duration 10]

Needs target/release/ippx-hub and target/release/ippx-bench (`cargo build --release -p
ippx-hub -p ippx-bench`). Everything started is in its own session and killed at the
end; temporary profiles are removed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def thread_ticks(pid: int, tid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def threads_by_name(pid: int) -> dict[str, int]:
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        except OSError:
            continue
        out.setdefault(name, int(tid))
    return out


class Poller(threading.Thread):
    """Does what the page does: / once, then /api/status every second."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.build_us: list[float] = []
        self.bytes: list[int] = []
        self.errors = 0

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
            return r.read()

    def run(self):
        try:
            self.get("/")
        except OSError:
            self.errors += 1
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                body = self.get("/api/status?engines_offset=0&engines_limit=50&engines_sort=id")
                s = json.loads(body)
                self.build_us.append(s["cost"]["snapshot_build_us"])
                self.bytes.append(len(body))
            except (OSError, ValueError, KeyError):
                self.errors += 1
            self.stop.wait(max(0.0, 1.0 - (time.monotonic() - t0)))


def one(kind: str, args, tmp: Path, hub: Path, bench: Path, run: int) -> dict:
    prof = tmp / f"{kind}-{run}"
    port = free_port()
    log = open(tmp / f"{kind}-{run}.log", "wb")
    ctl = subprocess.Popen(
        [str(hub), f"--profile-dir={prof}", "--ip=127.0.0.1", "--Session.packer=msgpack", "--Session.unpacker=msgpack", "--dictdb", f"--metrics-addr=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    poller = None
    try:
        deadline = time.monotonic() + 30
        while not (prof / "security" / "ipcontroller-client.json").exists():
            if time.monotonic() > deadline or ctl.poll() is not None:
                raise RuntimeError(f"ippx-hub did not start: {(tmp / f'{kind}-{run}.log').read_text()[-2000:]}")
            time.sleep(0.05)
        names = threads_by_name(ctl.pid)
        main_tid, io_tid = ctl.pid, names.get("hub-io")
        if kind == "page":
            poller = Poller(port)
            poller.start()
        # Thread CPU over the bench's measured window: warm-up first, then the window.
        bench_cmd = [str(bench), "--scenario=lb", f"--engines={args.engines}", f"--window={args.window}", f"--warmup={args.warmup}", f"--duration={args.duration}",
                     f"--profile-dir={prof}", f"--controller-pid={ctl.pid}", "--no-progress", "--json-only", f"--label={kind}:{run}"]  # fmt: skip
        b = subprocess.Popen(bench_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        # Engines register first (a second or two), then the warm-up runs.
        time.sleep(args.warmup + 1.5)
        m0, i0, t0 = thread_ticks(ctl.pid, main_tid), thread_ticks(ctl.pid, io_tid) if io_tid else None, time.monotonic()
        time.sleep(args.duration)
        m1, i1, t1 = thread_ticks(ctl.pid, main_tid), thread_ticks(ctl.pid, io_tid) if io_tid else None, time.monotonic()
        out, err = b.communicate(timeout=args.duration + 600)
        line = next((ln for ln in out.decode().splitlines() if ln.startswith('{"scenario"')), None)
        if line is None:
            raise RuntimeError(f"ippx-bench gave no result: {err.decode()[-2000:]}")
        r = json.loads(line)
        r["main_thread_cpu_pct"] = 100.0 * (m1 - m0) / TCK / (t1 - t0) if m0 is not None and m1 is not None else None
        r["hub_io_cpu_pct"] = 100.0 * (i1 - i0) / TCK / (t1 - t0) if i0 is not None and i1 is not None else None
        if poller:
            r["polls"] = len(poller.build_us)
            r["poll_errors"] = poller.errors
            r["snapshot_build_us_median"] = statistics.median(poller.build_us) if poller.build_us else None
            r["status_bytes_median"] = statistics.median(poller.bytes) if poller.bytes else None
        return r
    finally:
        if poller:
            poller.stop.set()
            poller.join(5)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(ctl.pid, sig)
            except OSError:
                pass
            try:
                ctl.wait(5)
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()


def per_request(args, tmp: Path, engines: int, n: int) -> dict:
    """CPU per /api/status request, as the page asks for it, on a hub with `engines`
    registered synthetic engines (ippx-bench --scenario=idle): the hub's main (HTTP) and
    hub-io (snapshot) threads' CPU over `n` back-to-back requests, minus what those
    threads spend over the same time without requests (measured just before)."""
    prof = tmp / f"req-{engines}"
    port = free_port()
    log = open(tmp / f"req-{engines}.log", "wb")
    ctl = subprocess.Popen(
        [str(args.hub), f"--profile-dir={prof}", "--ip=127.0.0.1", "--dictdb", f"--metrics-addr=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    b = None
    try:
        deadline = time.monotonic() + 30
        while not (prof / "security" / "ipcontroller-client.json").exists():
            if time.monotonic() > deadline or ctl.poll() is not None:
                raise RuntimeError("ippx-hub did not start")
            time.sleep(0.05)
        b = subprocess.Popen([str(args.bench), "--scenario=idle", f"--engines={engines}", "--warmup=1", "--duration=600", f"--profile-dir={prof}", "--no-progress", "--json-only"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        poller = Poller(port)
        deadline = time.monotonic() + 180
        while json.loads(poller.get("/api/status?engines_limit=0"))["engines"]["registered"] < engines:
            if time.monotonic() > deadline:
                raise RuntimeError("engines did not register")
            time.sleep(0.5)
        time.sleep(2)
        names = threads_by_name(ctl.pid)
        tids = [ctl.pid, names["hub-io"]]
        ticks = lambda: sum(thread_ticks(ctl.pid, t) or 0 for t in tids)  # noqa: E731
        t0, k0 = time.monotonic(), ticks()
        time.sleep(5)
        t1, k1 = time.monotonic(), ticks()
        idle_rate = (k1 - k0) / (t1 - t0)
        build, size = [], 0
        for _ in range(n):
            body = poller.get("/api/status?engines_offset=0&engines_limit=50&engines_sort=id")
            st = json.loads(body)
            build.append(st["cost"]["snapshot_build_us"])
            size = len(body)
        t2, k2 = time.monotonic(), ticks()
        used = (k2 - k1) - idle_rate * (t2 - t1)
        return {"engines": engines, "requests": n, "cpu_us_per_request": 1e6 * used / TCK / n, "snapshot_build_us_median": statistics.median(build), "bytes": size, "wall_ms_per_request": 1000 * (t2 - t1) / n}
    finally:
        for p in (b, ctl):
            if p is None:
                continue
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(p.pid, sig)
                except OSError:
                    pass
                try:
                    p.wait(5)
                    break
                except subprocess.TimeoutExpired:
                    continue
        log.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--engines", type=int, default=16)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--hub", type=Path, default=REPO / "target" / "release" / "ippx-hub")
    ap.add_argument("--bench", type=Path, default=REPO / "target" / "release" / "ippx-bench")
    ap.add_argument("--json", type=Path, help="also write every run's result here (JSON lines)")
    ap.add_argument("--per-request", type=int, default=0, metavar="N",
                    help="instead: CPU per /api/status request over N requests, on idle hubs with 16 and 1000 engines")
    args = ap.parse_args()
    for exe in (args.hub, args.bench):
        if not os.access(exe, os.X_OK):
            print(f"{exe} missing: cargo build --release -p ippx-hub -p ippx-bench", file=sys.stderr)
            return 2
    tmp = Path(tempfile.mkdtemp(prefix="ippx-status-cost-"))
    if args.per_request:
        try:
            for engines in (16, 1000):
                r = per_request(args, tmp, engines, args.per_request)
                print(f"{engines:5} engines: {r['cpu_us_per_request']:8.0f} µs CPU per /api/status (HTTP + snapshot), snapshot build {r['snapshot_build_us_median']:.0f} µs, "
                      f"{r['bytes']:,} bytes, {r['wall_ms_per_request']:.2f} ms wall; at one request a second: {r['cpu_us_per_request'] / 1e4:.4f}% of a core", flush=True)  # fmt: skip
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return 0
    results: dict[str, list[dict]] = {"nopage": [], "page": []}
    try:
        for run in range(1, args.runs + 1):
            order = ["nopage", "page"] if run % 2 else ["page", "nopage"]
            for kind in order:
                r = one(kind, args, tmp, args.hub, args.bench, run)
                results[kind].append(r)
                print(f"run {run} {kind:6}: {r['tasks_per_s']:>9,.0f} tasks/s, controller {r['cpu_us_per_task']} µs/task, "
                      f"{r['controller_cpu_pct']}% CPU, main thread {r['main_thread_cpu_pct']:.2f}%, hub-io {r['hub_io_cpu_pct']:.1f}%"
                      + (f", {r['polls']} polls, snapshot {r['snapshot_build_us_median']:.0f} µs, {r['status_bytes_median']:.0f} B" if kind == "page" else ""),
                      flush=True)  # fmt: skip
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps(r) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def med(kind, key):
        vals = [r[key] for r in results[kind] if isinstance(r.get(key), (int, float))]
        return statistics.median(vals) if vals else float("nan")

    print()
    print(f"medians of {args.runs} runs, lb scenario, {args.engines} engines, window {args.window}, {args.duration:g} s windows")
    print(f"{'':34} {'no page':>12} {'page':>12} {'page/no page':>13}")
    for key, label in [("tasks_per_s", "tasks/s"), ("cpu_us_per_task", "controller CPU µs/task"), ("controller_cpu_pct", "controller CPU % of a core"),
                       ("main_thread_cpu_pct", "main (HTTP) thread CPU %"), ("hub_io_cpu_pct", "hub-io thread CPU %")]:  # fmt: skip
        a, b = med("nopage", key), med("page", key)
        print(f"{label:34} {a:12.2f} {b:12.2f} {b / a if a else float('nan'):13.3f}")
    ctl_pct = med("page", "controller_cpu_pct")
    http_pct = med("page", "main_thread_cpu_pct") - med("nopage", "main_thread_cpu_pct")
    build_pct = med("page", "snapshot_build_us_median") * 1e-6 * 100.0  # one snapshot per second
    direct = http_pct + build_pct
    print()
    print(f"page, measured directly: HTTP thread +{http_pct:.3f}% of a core, snapshot build {med('page', 'snapshot_build_us_median'):.0f} µs/s on hub-io "
          f"({build_pct:.3f}% of a core): {direct:.3f}% of a core = {100 * direct / ctl_pct:.2f}% of the controller's {ctl_pct:.1f}%")  # fmt: skip
    print(f"page, from the bench's per-task CPU: {100 * (med('page', 'cpu_us_per_task') / med('nopage', 'cpu_us_per_task') - 1):+.2f}% (run-to-run noise on this machine is ±10%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
