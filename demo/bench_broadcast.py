"""Round-trip time of a 4-engine broadcast `apply_sync`, ippx against stock ipcontroller,
measured in one run (alternating rounds, so machine noise hits both alike).

    python demo/bench_broadcast.py [--engines 4] [--rounds 5] [--calls 50]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import ipyparallel as ipp
from traitlets.config import Config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def noop():
    return 0


def start(kind, n, hub):
    c = Config()
    if kind == "ippx":
        c.LocalControllerLauncher.controller_cmd = [hub]
    tmp = tempfile.TemporaryDirectory(prefix=f"bcast-{kind}-")
    args = ["--Session.packer=msgpack", "--Session.unpacker=msgpack"] if kind == "stock" else []
    cluster = ipp.Cluster(config=c, n=n, profile_dir=tmp.name, controller_ip="127.0.0.1", controller_args=args, log_level=40)
    rc = cluster.start_and_connect_sync()
    rc.wait_for_engines(n, timeout=60)
    return cluster, rc, tmp


def measure(rc, calls, coalescing):
    view = rc.broadcast_view(is_coalescing=coalescing)
    view.apply_sync(noop)  # warm-up
    ts = []
    for _ in range(calls):
        t = time.perf_counter()
        r = view.apply_sync(noop)
        ts.append(time.perf_counter() - t)
        assert r == [0] * len(rc.ids), r
    return statistics.median(ts)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--engines", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--hub", default=os.path.join(REPO, "target", "release", "ippx-hub"))
    a = p.parse_args()
    clusters = {k: start(k, a.engines, a.hub) for k in ("ippx", "stock")}
    res = {k: {True: [], False: []} for k in clusters}
    try:
        for _ in range(a.rounds):
            for k, (_, rc, _) in clusters.items():
                for co in (True, False):
                    res[k][co].append(measure(rc, a.calls, co))
    finally:
        for cluster, rc, tmp in clusters.values():
            rc.close()
            cluster.stop_cluster_sync()
            tmp.cleanup()
    print(f"{a.engines}-engine broadcast apply_sync round trip, median of {a.rounds} rounds x {a.calls} calls (ms)")
    for co in (True, False):
        i = statistics.median(res["ippx"][co]) * 1e3
        s = statistics.median(res["stock"][co]) * 1e3
        print(f"  coalescing={co!s:5}  ippx {i:7.2f}   stock ipcontroller {s:7.2f}   ratio stock/ippx {s / i:5.2f}x")


if __name__ == "__main__":
    sys.exit(main())
