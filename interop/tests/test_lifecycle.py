"""Controller process lifecycle and the ipcontroller-compatible command line
(issue 2 items 3-4; docs/protocol.md §2.1, 4.3.7, 7.1-7.3).
"""

from __future__ import annotations

import os
import signal
import stat
import statistics
import subprocess
import threading
import time

import pytest
import zmq
from conftest import controller_argv
from e2e_util import (
    NotificationListener,
    alive,
    children,
    find_lines,
    load_json,
    run_bounded,
    url,
    wait_for,
)

FILES_GONE_BOUND = 0.25  # s after SIGTERM/SIGINT (the stock suite SIGKILLs after ~0.25 s)


def _wait_gone(paths, timeout: float, poll: float = 0.002) -> float | None:
    """Seconds until none of paths exists, or None after timeout."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if not any(p.exists() for p in paths):
            return time.monotonic() - t0
        time.sleep(poll)
    return None


# --------------------------------------------------------------------------- signals


@pytest.mark.parametrize("mode", ["thread", "process"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_removes_files_and_exits_cleanly(ippx_controller_factory, sig, mode):
    ctl = ippx_controller_factory(f"--scheduler-mode={mode}")
    # A scheduler thread ends with the process; a child must be seen to exit.
    sched = ctl.scheduler_pid() if mode == "process" else None
    files = [ctl.client_file, ctl.engine_file]
    assert all(f.exists() for f in files)

    t0 = time.monotonic()
    ctl.proc.send_signal(sig)
    gone_after = _wait_gone(files, 3.0)
    try:
        rc = ctl.proc.wait(3.0)
    except subprocess.TimeoutExpired:
        rc = None
    t_exit = time.monotonic() - t0
    while sched is not None and alive(sched) and time.monotonic() - t0 < 3.0:
        time.sleep(0.01)
    sched_gone = sched is None or not alive(sched)

    print(
        f"\n[{sig.name}] files gone after "
        f"{'never' if gone_after is None else f'{gone_after * 1000:.1f} ms'}, "
        f"hub exit {rc} after {t_exit * 1000:.0f} ms"
    )
    assert gone_after is not None and gone_after < FILES_GONE_BOUND, (
        f"connection files still present {gone_after}s after {sig.name}"
    )
    assert rc == 0, f"controller exit status {rc} (None: still running 3 s after {sig.name})"
    assert sched_gone, f"ippx-scheduler (pid {sched}) still alive 3 s after {sig.name}"
    assert find_lines(ctl.controller_log, f"controller stopped ({sig.name})")


@pytest.mark.controller_args("--scheduler-mode=process")
def test_sigkill_hub_stops_scheduler(ippx_controller):
    ctl = ippx_controller
    sched = ctl.scheduler_pid()
    ctl.proc.kill()
    t0 = time.monotonic()
    ctl.proc.wait(5)
    try:
        wait_for(lambda: not alive(sched), 2.0, what="ippx-scheduler exit", interval=0.01)
    except TimeoutError:
        pytest.fail(f"ippx-scheduler (pid {sched}) still alive 2 s after SIGKILL of ippx-hub")
    print(f"\n[SIGKILL hub] scheduler gone after {(time.monotonic() - t0) * 1000:.0f} ms")


def test_client_shutdown_hub(ippx_controller):
    ctl = ippx_controller
    ctl.start_engines(1)
    rc = ctl.wait_for_engines(1, timeout=30)
    bystander = ctl.client()
    listener = NotificationListener(ctl.client_info())
    try:
        errors = []

        def shutdown():
            try:
                rc.shutdown(hub=True)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        t0 = time.monotonic()
        th = threading.Thread(target=shutdown, daemon=True)
        th.start()
        th.join(10)
        assert not th.is_alive(), "Client.shutdown(hub=True) got no reply within 10 s"
        assert not errors, errors
        t_reply = time.monotonic() - t0

        _, content = listener.wait("shutdown_notification", 3)
        assert content == {"status": "ok"}
        wait_for(lambda: bystander._closed, 3, what="the other client closing on shutdown_notification")
        code = ctl.proc.wait(5)
        t_exit = time.monotonic() - t0
    finally:
        listener.close()
    print(f"\n[shutdown(hub=True)] reply after {t_reply * 1000:.0f} ms, exit after {t_exit * 1000:.0f} ms")
    assert code == 0
    assert t_exit < 3.5, f"controller took {t_exit:.2f}s to exit after shutdown_request"
    assert not ctl.client_file.exists() and not ctl.engine_file.exists()
    # the scheduler goes too
    wait_for(lambda: not children(ctl.proc.pid), 3, what="no children left")


# --------------------------------------------------------------------------- connection files


def test_connection_files_default_msgpack_0600(ippx_controller):
    ctl = ippx_controller
    for f in (ctl.client_file, ctl.engine_file):
        mode = stat.S_IMODE(f.stat().st_mode)
        assert mode == 0o600, f"{f.name} has mode {oct(mode)}"
        info = load_json(f)
        assert info["pack"] == "msgpack" and info["unpack"] == "msgpack", info
        assert info["signature_scheme"] == "hmac-sha256"
        assert info["key"], "empty key"
    c, e = ctl.client_info(), ctl.engine_info()
    assert c["registration"] == e["registration"]
    assert c["key"] == e["key"]


@pytest.mark.controller_args("--Session.packer=json")
def test_json_packer(ippx_controller):
    ctl = ippx_controller
    for info in (ctl.client_info(), ctl.engine_info()):
        assert info["pack"] == "json" and info["unpack"] == "json", info
    (engine,) = ctl.start_engines(1)
    rc = ctl.wait_for_engines(1, timeout=30)
    assert rc.session.packer == "json"
    assert rc[:].apply_sync(os.getpid) == [engine.pid]
    dv = rc[:]
    dv["x"] = {"a": [1, 2.5, "s"]}
    assert dv.pull("x", block=True) == [{"a": [1, 2.5, "s"]}]


@pytest.mark.parametrize("how", ["cli", "env"])
def test_cluster_id(ippx_controller_factory, how):
    if how == "cli":
        ctl = ippx_controller_factory("--cluster-id=abc", cluster_id="abc")
    else:
        ctl = ippx_controller_factory(cluster_id="abc", env={"IPP_CLUSTER_ID": "abc"})
    assert ctl.client_file.name == "ipcontroller-abc-client.json"
    assert ctl.engine_file.name == "ipcontroller-abc-engine.json"
    names = sorted(p.name for p in ctl.security_dir.iterdir())
    assert names == ["ipcontroller-abc-client.json", "ipcontroller-abc-engine.json"], names
    # a stock client finds it through the cluster id
    rc = ctl.client()
    assert rc.ids == []
    assert ctl.stop_controller() == 0
    assert sorted(p.name for p in ctl.security_dir.iterdir()) == []


# --------------------------------------------------------------------------- command line


@pytest.mark.controller_args("--Foo.bar=1")
def test_unknown_trait_warns_and_starts(ippx_controller):
    ctl = ippx_controller
    warns = find_lines(ctl.controller_log, "Foo.bar", level="WARN")
    assert warns, f"no WARN line mentioning Foo.bar\n{ctl.logs()}"
    rc = ctl.client()  # it really runs
    assert rc.ids == []


def test_bad_ping_value_fails_clearly(ippx_scratch):
    prof = ippx_scratch.base / "prof"
    r = run_bounded(
        [*controller_argv(), f"--profile-dir={prof}", "--ip=127.0.0.1", "--ping=fast"],
        ippx_scratch.env, timeout=10,
    )  # fmt: skip
    assert r.returncode not in (0, None), r.describe()
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected a one-line error\n{r.describe()}"
    # names the option (--ping is an alias of HeartMonitor.period) and the bad value
    assert "fast" in lines[0], r.describe()
    assert "ping" in lines[0] or "HeartMonitor.period" in lines[0], r.describe()
    assert not list((prof / "security").glob("*.json")) if (prof / "security").exists() else True


@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_version_and_help_exit_0(ippx_scratch, flag):
    r = run_bounded([*controller_argv(), flag], ippx_scratch.env, timeout=10)
    assert r.returncode == 0, r.describe()
    assert r.stdout.strip(), r.describe()


# --------------------------------------------------------------------------- config file


def _ping_period(engine_info: dict, duration: float) -> float:
    """Median heartbeat period (s), from the ping payloads (the hub's own clock)."""
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(url(engine_info, "hb_ping"))
    stamps = []
    try:
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            if sub.poll(50):
                stamps.append(float(sub.recv()))
    finally:
        sub.close(0)
        ctx.term()
    assert len(stamps) >= 3, f"only {len(stamps)} pings in {duration}s"
    return statistics.median(b - a for a, b in zip(stamps, stamps[1:]))


def test_config_file_period_honoured(ippx_controller_factory):
    ctl = ippx_controller_factory(
        "--ip=127.0.0.1", "--log-level=20", defaults=False,
        config_py="c = get_config()  # noqa\nc.HeartMonitor.period = 200\n",
    )  # fmt: skip
    period = _ping_period(ctl.engine_info(), 1.6)
    print(f"\n[config HeartMonitor.period=200] measured ping period {period * 1000:.0f} ms")
    assert 0.15 < period < 0.26, period
    assert not find_lines(ctl.controller_log, "ipcontroller_config.py", level="WARN"), ctl.logs()


def test_cli_ping_beats_config_file(ippx_controller_factory):
    ctl = ippx_controller_factory(
        "--ip=127.0.0.1", "--log-level=20", "--ping=500", defaults=False,
        config_py="c.HeartMonitor.period = 200\n",
    )  # fmt: skip
    period = _ping_period(ctl.engine_info(), 2.2)
    print(f"\n[config 200 + --ping=500] measured ping period {period * 1000:.0f} ms")
    assert 0.4 < period < 0.6, period
