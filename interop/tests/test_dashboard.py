"""Issue 13: the Grafana dashboard's queries are checked for real without Grafana:
promtool parses and type-checks each one (as a recording rule), and the checker that
sends them to a live Prometheus (in the LAN and compose tests) knows which labels each
must return. These tests make sure the checker itself can fail."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECK = REPO / "deploy" / "grafana" / "check_dashboard.py"
sys.path.insert(0, str(CHECK.parent))
import check_dashboard  # noqa: E402


def promtool():
    if shutil.which("promtool") is None:
        if os.environ.get("IPPX_REQUIRE_PROMTOOL"):
            pytest.fail("promtool is required here (IPPX_REQUIRE_PROMTOOL is set) but not installed")
        pytest.skip("promtool (Debian package prometheus) not installed")


def run_rules(dashboard):
    return subprocess.run([sys.executable, CHECK, "--dashboard", dashboard, "rules"], capture_output=True, text=True, timeout=120)


def test_every_panel_query_passes_promtool():
    promtool()
    n = len(check_dashboard.targets(CHECK.parent / "ippx-dashboard.json"))
    assert n >= 20
    r = run_rules(CHECK.parent / "ippx-dashboard.json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {n} rules found" in r.stdout


@pytest.mark.parametrize("bad", [
    "sum(rate(ippx_tasks_completed_total[1m])",  # unclosed parenthesis
    "histogram_quantile(0.5, ippx_task_latency_seconds_bucket[5m])",  # a range vector
    "sum by (queue) (ippx_engines_connected",
])
def test_a_broken_query_fails(tmp_path, bad):
    promtool()
    d = json.loads((CHECK.parent / "ippx-dashboard.json").read_text())
    d["panels"][3]["targets"][0]["expr"] = bad
    p = tmp_path / "dash.json"
    p.write_text(json.dumps(d))
    r = run_rules(p)
    assert r.returncode != 0, r.stdout + r.stderr


def test_expected_labels():
    el = check_dashboard.expected_labels
    assert el("sum(ippx_engines_connected)") == (set(), set())
    assert el("sum by (queue, outcome) (rate(ippx_tasks_completed_total[1m]))") == ({"queue", "outcome"},) * 2
    assert el("histogram_quantile(0.5, sum by (le, queue) (rate(x_bucket[5m])))") == ({"queue"},) * 2
    assert el('process_resident_memory_bytes{job=~"ippx.*"}') == (None, {"job", "instance"})
    series = [{"metric": {"queue": "task"}, "value": [0, "1"]}]
    assert check_dashboard.check_series("sum by (queue, outcome) (x)", series, lambda s: [s["value"][1]])
    assert not check_dashboard.check_series("sum by (queue) (x)", series, lambda s: [s["value"][1]])
    assert check_dashboard.check_series("sum(x)", [], lambda s: [])  # no series is a failure
    nan = [{"metric": {}, "values": [[0, "NaN"]]}]
    assert check_dashboard.check_series("sum(x)", nan, lambda s: [v[1] for v in s["values"]], allow_nan=True)
    jm = [{"metric": {"job": "other", "instance": "a:1"}, "value": [0, "5"]}]
    assert check_dashboard.check_series('up{job=~"ippx.*"}', jm, lambda s: [s["value"][1]])
