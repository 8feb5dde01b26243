#!/usr/bin/env python3
"""Checks deploy/grafana/ippx-dashboard.json without Grafana (issue 13), with the standard
library only, so it runs on any host of a LAN or in a container:

  check_dashboard.py rules [--dashboard FILE] [--promtool PATH]
      every panel query, as a recording rule, through `promtool check rules` (PromQL
      syntax and types: e.g. histogram_quantile over a range vector is rejected)
  check_dashboard.py live PROMETHEUS_URL [--job JOB] [--wait SECONDS]
      every panel query sent to Prometheus's HTTP API as Grafana would send it (instant
      /api/v1/query and /api/v1/query_range over the last 5 minutes): each must return
      series, with exactly the labels its `by (...)` keeps (a plain selector: at least job
      and instance, the job matching the query's own job matcher), and finite, non-negative
      values; retried until --wait runs out, because rate() needs two scrapes
  check_dashboard.py scraped PROMETHEUS_URL [--job JOB] [--wait SECONDS]
      waits until Prometheus holds two successful scrapes of the job, so the counters'
      starting values are stored before a workload runs (Prometheus applies new targets
      only every 5 s after start: work done before its first scrape never shows in a
      rate(), and a histogram_quantile over it is NaN)
  check_dashboard.py exprs
      lists the queries
"""

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
DASHBOARD = HERE / "ippx-dashboard.json"


def targets(dashboard: Path):
    d = json.loads(dashboard.read_text())
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((p.get("id"), p.get("title", ""), t.get("refId", ""), t["expr"]))
            walk(p.get("panels", []))  # rows

    walk(d.get("panels", []))
    return out


def rules_yaml(items) -> str:
    lines = ["groups:", "  - name: ippx-dashboard", "    rules:"]
    for pid, title, ref, expr in items:
        lines.append(f"      - record: ippx_dashboard:panel{pid}_{ref or 'A'}")
        lines.append(f"        expr: {json.dumps(expr)}")  # a JSON string is a YAML string
        lines.append(f"        labels: {{panel: {json.dumps(title)}}}")
    return "\n".join(lines) + "\n"


def check_rules(args) -> int:
    items = targets(args.dashboard)
    if not items:
        print("no panel queries found", file=sys.stderr)
        return 1
    promtool = args.promtool or shutil.which("promtool")
    if not promtool:
        print("promtool not found (Debian package prometheus)", file=sys.stderr)
        return 2
    with tempfile.NamedTemporaryFile("w", suffix=".rules.yml", delete=False) as f:
        f.write(rules_yaml(items))
        path = f.name
    try:
        r = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True, timeout=60)
    finally:
        Path(path).unlink(missing_ok=True)
    sys.stdout.write(r.stdout)
    sys.stderr.write(r.stderr)
    want = f"SUCCESS: {len(items)} rules found"
    if r.returncode != 0 or want not in r.stdout:
        print(f"FAILED: promtool did not accept all {len(items)} panel queries", file=sys.stderr)
        return 1
    print(f"ok: {len(items)} panel queries pass promtool check rules")
    return 0


_AGG = re.compile(r"^\s*(sum|avg|min|max|count|topk|bottomk|quantile|group|stddev|stdvar)\s*(by|without)?\s*(\(([^)]*)\))?\s*\(")


def expected_labels(expr: str):
    """(exact label set or None, required labels). An outer aggregation decides the labels;
    histogram_quantile keeps its inner aggregation's labels minus `le`."""
    e = expr.strip()
    m = re.match(r"^histogram_quantile\s*\(\s*[0-9.]+\s*,\s*(.*)\)\s*$", e, re.S)
    inner = m[1] if m else e
    a = _AGG.match(inner)
    if a:
        if a[2] == "by":
            keep = {x.strip() for x in (a[4] or "").split(",") if x.strip()}
            if m:
                keep.discard("le")
            return keep, keep
        if a[2] is None and not a[3]:
            return set(), set()
        # `without (...)` or `sum(...) by (...)` at the end: require nothing exact
        tail = re.search(r"\)\s*by\s*\(([^)]*)\)\s*$", inner)
        if tail:
            keep = {x.strip() for x in tail[1].split(",") if x.strip()} - ({"le"} if m else set())
            return keep, keep
        return None, set()
    # a selector (or rate of one): Prometheus adds the target's labels
    return None, {"job", "instance"}


def job_matcher(expr: str):
    m = re.search(r'job\s*(=~|=)\s*"([^"]*)"', expr)
    if not m:
        return None
    return (lambda j: re.fullmatch(m[2], j) is not None) if m[1] == "=~" else (lambda j: j == m[2])


def query(base: str, path: str, params: dict):
    url = f"{base.rstrip('/')}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.loads(r.read())
    if body.get("status") != "success":
        raise RuntimeError(f"{url}: {body}")
    return body["data"]


def check_series(expr, series, values_of, allow_nan=False):
    """Problems with one query's answer. `allow_nan`: in a range, histogram_quantile is NaN
    where nothing was observed in the window (Grafana draws a gap); one point must be a
    number still."""
    exact, required = expected_labels(expr)
    jm = job_matcher(expr)
    problems = []
    if not series:
        return ["no series"]
    for s in series:
        labels = dict(s.get("metric", {}))
        labels.pop("__name__", None)
        keys = set(labels)
        if exact is not None and keys != exact:
            problems.append(f"labels {sorted(keys)}, expected exactly {sorted(exact)}")
        if not required <= keys:
            problems.append(f"labels {sorted(keys)} lack {sorted(required - keys)}")
        if jm and "job" in labels and not jm(labels["job"]):
            problems.append(f"job {labels['job']!r} does not match the query's matcher")
        finite = 0
        for v in values_of(s):
            try:
                x = float(v)
            except (TypeError, ValueError):
                problems.append(f"value {v!r} is not a number")
                continue
            if math.isnan(x) and allow_nan:
                continue
            if math.isnan(x) or math.isinf(x) or x < 0:
                problems.append(f"value {v} is not a finite non-negative number")
                break
            finite += 1
        if not finite:
            problems.append("no finite value")
    return sorted(set(problems))


def check_live(args) -> int:
    items = targets(args.dashboard)
    deadline = time.monotonic() + args.wait
    # Prometheus itself scraped the job: `up` is 1
    while True:
        failures = []
        try:
            up = query(args.prometheus, "/api/v1/query", {"query": f'up{{job="{args.job}"}}'})["result"]
            if not up or any(s["value"][1] != "1" for s in up):
                failures.append(f'up{{job="{args.job}"}} = {[s["value"][1] for s in up]}, want 1')
            now = time.time()
            for pid, title, ref, expr in items:
                inst = query(args.prometheus, "/api/v1/query", {"query": expr, "time": f"{now:.3f}"})
                p1 = check_series(expr, inst["result"] if inst["resultType"] == "vector" else [], lambda s: [s["value"][1]])
                rng = query(args.prometheus, "/api/v1/query_range",
                            {"query": expr, "start": f"{now - 300:.3f}", "end": f"{now:.3f}", "step": "5"})
                p2 = check_series(expr, rng["result"], lambda s: [v[1] for v in s["values"]], allow_nan=True)
                for where, probs in (("query", p1), ("query_range", p2)):
                    if probs:
                        failures.append(f"panel {pid} {title!r} {ref} [{where}] {expr}: {'; '.join(probs)}")
        except Exception as e:  # Prometheus not up yet, or a network error
            failures.append(f"{type(e).__name__}: {e}")
        if not failures:
            print(f"ok: up{{job={args.job!r}}} = 1; all {len(items)} panel queries return series with the expected labels "
                  "(instant and range)")
            return 0
        if time.monotonic() > deadline:
            print(f"FAILED: {len(failures)} problem(s):")
            for f in failures:
                print(f"  {f}")
            return 1
        time.sleep(2)


def check_scraped(args) -> int:
    deadline = time.monotonic() + args.wait
    got = "nothing"
    while True:
        try:
            q = f'count_over_time(up{{job="{args.job}"}}[5m]) and min_over_time(up{{job="{args.job}"}}[5m]) == 1'
            res = query(args.prometheus, "/api/v1/query", {"query": q})["result"]
            got = [s["value"][1] for s in res]
            if res and all(float(v) >= 2 for v in got):
                print(f"ok: Prometheus holds {got} scrapes of job {args.job!r}")
                return 0
        except Exception as e:  # not up yet
            got = f"{type(e).__name__}: {e}"
        if time.monotonic() > deadline:
            print(f"FAILED: job {args.job!r} not scraped twice within {args.wait:.0f} s ({got})")
            return 1
        time.sleep(0.5)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dashboard", type=Path, default=DASHBOARD)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("rules")
    r.add_argument("--promtool")
    lv = sub.add_parser("live")
    lv.add_argument("prometheus")
    lv.add_argument("--job", default="ippx-hub")
    lv.add_argument("--wait", type=float, default=60)
    sc = sub.add_parser("scraped")
    sc.add_argument("prometheus")
    sc.add_argument("--job", default="ippx-hub")
    sc.add_argument("--wait", type=float, default=60)
    sub.add_parser("exprs")
    args = p.parse_args()
    if args.cmd == "rules":
        return check_rules(args)
    if args.cmd == "live":
        return check_live(args)
    if args.cmd == "scraped":
        return check_scraped(args)
    for pid, title, ref, expr in targets(args.dashboard):
        print(f"{pid}\t{ref}\t{title}\t{expr}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
