"""Issue 13 on 127.0.0.1: `--print-connection-info` prints exactly what a running hub
writes (so engines can take it from $IPP_CONNECTION_INFO without a shared file), a stock
Client connects from that dict alone, `--probe` follows /readyz, and the hub logs the
addresses peers will dial. Across a LAN: test_lan.py; in containers: scripts/test-compose."""

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import controller_argv
from test_metrics import free_port, free_range

KEY = "0f1e2d3c-deploy-test-key"


def hub_cmd(*args, env=None, timeout=30):
    e = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), **(env or {})}
    return subprocess.run([*controller_argv(), *args], capture_output=True, text=True, env=e, timeout=timeout)


def test_printed_connection_info_is_what_the_hub_writes(ippx_controller_factory, tmp_path):
    base = free_range()
    ports = f"--ports={base}-{base + 17}"
    env = {"IPP_SESSION_KEY": KEY}
    printed = {}
    for which in ("engine", "client"):
        r = hub_cmd("--ip=127.0.0.1", ports, f"--print-connection-info={which}", env=env)
        assert r.returncode == 0, r.stderr
        assert len(r.stdout.strip().splitlines()) == 1, r.stdout  # one line, for an env var
        printed[which] = json.loads(r.stdout)
        # the same on every invocation, and nothing was bound: a running hub is no obstacle
        assert hub_cmd("--ip=127.0.0.1", ports, f"--print-connection-info={which}", env=env).stdout == r.stdout
    ctl = ippx_controller_factory(ports, env=env, defaults=False)
    assert json.loads(ctl.engine_file.read_text()) == printed["engine"]
    assert json.loads(ctl.client_file.read_text()) == printed["client"]
    # an engine from $IPP_CONNECTION_INFO (no file), a stock Client from the dict
    ctl.env["IPP_CONNECTION_INFO"] = json.dumps(printed["engine"])
    ctl._spawn("engine-env", [sys.executable, "-m", "ipyparallel.engine", "--log-level=20",
                              f"--IPEngine.url_file={tmp_path / 'does-not-exist.json'}"])
    import ipyparallel as ipp

    rc = ipp.Client(printed["client"])
    try:
        rc.wait_for_engines(1, timeout=30)
        assert rc[:].apply_sync(pow, 6, 2) == [36]  # a builtin: this module is not importable there
    finally:
        rc.close()
    log = ctl.controller_log.read_text()
    assert f"engines will dial tcp://127.0.0.1: registration={base} control={base + 1}" in log, log[-3000:]
    assert f"clients will dial tcp://127.0.0.1: registration={base} control={base + 9}" in log, log[-3000:]


def test_print_connection_info_refuses_random_ports_and_keys():
    r = hub_cmd("--print-connection-info=engine", env={"IPP_SESSION_KEY": KEY})
    assert r.returncode == 2 and "needs fixed ports" in r.stderr, r.stderr
    r = hub_cmd("--ports=21000-21017", "--print-connection-info=client")
    assert r.returncode == 2 and "IPP_SESSION_KEY" in r.stderr, r.stderr
    r = hub_cmd("--print-connection-info=both")
    assert r.returncode == 2, r.stderr


def test_probe_follows_readyz(ippx_controller_factory):
    port = free_port()
    url = f"http://127.0.0.1:{port}/readyz"
    r = hub_cmd(f"--probe={url}", "--probe-timeout=2")
    assert r.returncode == 1 and "cannot connect" in r.stderr, r.stderr
    ctl = ippx_controller_factory(f"--metrics-addr=127.0.0.1:{port}")
    t0 = time.monotonic()
    r = hub_cmd(f"--probe={url}")
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 5
    # a path that is not 200 fails, and says why
    r = hub_cmd(f"--probe=http://127.0.0.1:{port}/nothing-here")
    assert r.returncode == 1 and "HTTP 404" in r.stderr, r.stderr
    ctl.proc.terminate()
    ctl.proc.wait(timeout=10)
    assert hub_cmd(f"--probe={url}").returncode == 1
