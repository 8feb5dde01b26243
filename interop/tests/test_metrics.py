"""Issue 7: /metrics, /healthz and /readyz of a running controller, checked with the
Prometheus text parser of prometheus_client, and promtool where it is installed (CI
installs it)."""

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import zmq
from jupyter_client.session import Session
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_range(n: int = 18) -> int:
    """The first of n consecutive ports free on 127.0.0.1, below Linux's ephemeral range
    (32768+), so that the OS's own picks (free_port) do not land inside it."""
    import random

    for _ in range(200):
        base = random.randrange(20000, 32768 - n)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports")


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def samples(text: str) -> dict:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


def wait_value(port, name, want, timeout=10.0, **labels):
    deadline = time.time() + timeout
    got = None
    while time.time() < deadline:
        got = value(scrape(port), name, **labels)
        if got == want:
            return got
        time.sleep(0.1)
    raise AssertionError(f"{name}{labels} = {got}, wanted {want}")


def status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_metrics_count_tasks_latency_and_drops(ippx_controller_factory):
    port = free_port()
    ctl = ippx_controller_factory(f"--metrics-addr=127.0.0.1:{port}")
    assert status(port, "/healthz") == 200
    assert status(port, "/readyz") == 200
    ctl.start_engines(2)
    rc = ctl.client()
    rc.wait_for_engines(2, timeout=15)
    wait_value(port, "ippx_engines_connected", 2)

    lview = rc.load_balanced_view()
    # a builtin: functions of this test module cannot be imported on the engines
    assert lview.map_sync(abs, range(100)) == list(range(100))
    rc.wait(timeout=10)

    text = wait_value(port, "ippx_tasks_completed_total", 100, queue="task", outcome="ok") and scrape(port)
    assert value(text, "ippx_tasks_submitted_total", queue="task") == 100
    assert value(text, "ippx_task_latency_seconds_count", queue="task") == 100
    assert value(text, "ippx_task_latency_seconds_sum", queue="task") > 0
    assert value(text, "ippx_task_run_seconds_count", queue="task") == 100
    assert value(text, "ippx_engines_registered_total") == 2
    assert value(text, "ippx_build_info", version="0.1.0", component="hub") == 1
    assert value(text, "process_resident_memory_bytes") > 0
    # The scheduler runs on a thread: its metrics are in the hub's /metrics (issue 13: one
    # endpoint per process), labelled component="scheduler".
    stext = text
    assert value(stext, "ippx_scheduler_tasks_completed_total", queue="task", outcome="ok", component="scheduler") == 100
    assert value(stext, "ippx_build_info", version="0.1.0", component="scheduler") == 1

    # One message with a bad signature on the hub's query socket: exactly one drop.
    before = value(scrape(port), "ippx_messages_dropped_total", reason="bad_signature")
    info = ctl.client_info()
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, b"metrics-badsig")
    sock.connect(f"{info['interface']}:{info['registration']}")
    wrong = Session(key=b"not-the-key", packer=info["pack"], unpacker=info["unpack"], signature_scheme=info["signature_scheme"])
    wrong.send(sock, "connection_request", content={})
    # issue 14: counted, never answered
    assert not sock.poll(700), "the hub answered a message signed with the wrong key"
    sock.close()
    wait_value(port, "ippx_messages_dropped_total", before + 1, reason="bad_signature")
    time.sleep(0.5)
    assert value(scrape(port), "ippx_messages_dropped_total", reason="bad_signature") == before + 1

    # Every ippx_* series the shipped Grafana dashboard queries exists.
    dash = json.loads((REPO / "deploy" / "grafana" / "ippx-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    import re

    names = set(re.findall(r"\b(ippx_[a-z_]+)", exprs))
    present = {n for (n, _) in samples(scrape(port))} | {n for (n, _) in samples(stext)}
    # histogram series appear as _bucket/_sum/_count
    missing = {n for n in names if n not in present}
    assert not missing, f"dashboard queries missing series: {missing}"
    rc.close()


def test_promtool_accepts_config_and_scraped_metrics(ippx_controller_factory):
    if shutil.which("promtool") is None:
        if os.environ.get("IPPX_REQUIRE_PROMTOOL"):
            pytest.fail("promtool is required here (IPPX_REQUIRE_PROMTOOL is set) but not installed")
        pytest.skip("promtool (Debian package prometheus) not installed")
    r = subprocess.run(["promtool", "check", "config", str(REPO / "deploy" / "prometheus.yml")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    # thread mode: the hub's /metrics carries the scheduler's families too (merged, one
    # HELP/TYPE each); process mode: the child's own port, named by the flag
    port = free_port()
    ippx_controller_factory(f"--metrics-addr=127.0.0.1:{port}")
    text = scrape(port)
    assert 'component="scheduler"' in text
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    hport, sport = free_port(), free_port()
    ippx_controller_factory("--scheduler-mode=process", f"--metrics-addr=127.0.0.1:{hport}", f"--scheduler-metrics-addr=127.0.0.1:{sport}")
    for p in (hport, sport):
        r = subprocess.run(["promtool", "check", "metrics"], input=scrape(p), capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
    assert "ippx_scheduler_engines" in scrape(sport)


def _listening(pid: int) -> set:
    """TCP ports in LISTEN state owned by `pid` (from /proc, no ss needed)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            t = os.readlink(fd)
        except OSError:
            continue
        if t.startswith("socket:["):
            inodes.add(t[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


def test_one_metrics_port_per_process(ippx_controller_factory):
    """Thread mode listens on the metrics port and the published ports only; an explicit
    --scheduler-metrics-addr is ignored (with a warning) rather than a second port."""
    port, ignored = free_port(), free_port()
    base = free_range()
    ports = list(range(base, base + 18))
    ctl = ippx_controller_factory(f"--metrics-addr=127.0.0.1:{port}", f"--scheduler-metrics-addr=127.0.0.1:{ignored}",
                                  f"--ports={base}-{base + 17}")
    info = ctl.client_info()
    listening = _listening(ctl.proc.pid)
    assert port in listening and ignored not in listening, listening
    assert listening - {port} <= set(ports), listening
    assert info["registration"] == base
    assert "--scheduler-metrics-addr is ignored" in ctl.controller_log.read_text()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{ignored}/metrics", timeout=2)


def test_print_config_and_invalid_config(tmp_path):
    hub = str(REPO / "target" / "release" / "ippx-hub")
    (tmp_path / "ippx.toml").write_text('[heartbeat]\nperiod_ms = 200\n[metrics]\naddr = "127.0.0.1:9999"\n')
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "IPPX_METRICS__ADDR": "127.0.0.1:9998"}
    r = subprocess.run([hub, f"--profile-dir={tmp_path}", "--print-config", "--hwm=3"], capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 0, r.stderr
    assert 'heartbeat.period_ms = "200"  # file ' in r.stdout
    assert 'metrics.addr = "127.0.0.1:9998"  # env IPPX_*' in r.stdout
    assert 'controller.hwm = "3"  # command line' in r.stdout
    (tmp_path / "ippx.toml").write_text("[heartbeat]\nperiod_ms = -5\n")
    r = subprocess.run([hub, f"--profile-dir={tmp_path}"], capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 2
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "period_ms" in lines[0] and lines[0].startswith("ippx-hub: invalid config"), r.stderr


def test_process_mode_listens_only_on_named_ports(ippx_controller_factory):
    """--scheduler-mode=process: the hub and its scheduler child listen only inside --ports
    (the monitor socket included) and on the two metrics ports the flags name."""
    from e2e_util import children

    port, sport = free_port(), free_port()
    base = free_range()
    ctl = ippx_controller_factory("--scheduler-mode=process", f"--metrics-addr=127.0.0.1:{port}",
                                  f"--scheduler-metrics-addr=127.0.0.1:{sport}", f"--ports={base}-{base + 17}")
    kids = children(ctl.proc.pid)
    assert kids, "no scheduler child"
    listening = _listening(ctl.proc.pid)
    for k in kids:
        listening |= _listening(k)
    assert {port, sport} <= listening, listening
    assert listening - {port, sport} <= set(range(base, base + 18)), sorted(listening)
    assert base + 15 in listening  # the monitor socket, last of the pool
