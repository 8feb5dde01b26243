"""ippx-hub as ``controller_cmd`` of the stock ``ipcluster`` and ``ipp.Cluster``
(issue 2 acceptance; docs/protocol.md §7.1, 7.4).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from conftest import controller_argv
from e2e_util import cmdline, run_bounded, wait_for

IPCLUSTER = str(Path(sys.executable).with_name("ipcluster"))
STOP_BOUND = 15.0  # s after `ipcluster stop` / stop_cluster_sync for everything to be gone


def _classify(pids):
    """{'hub': [...], 'scheduler': [...], 'engine': [...], 'python-controller': [...], 'other': [...]}"""
    out = {k: [] for k in ("hub", "scheduler", "engine", "python-controller", "other")}
    hub_exe = os.path.basename(controller_argv()[0])
    for pid in pids:
        argv = cmdline(pid)
        joined = " ".join(argv)
        if argv and os.path.basename(argv[0]) == hub_exe:
            out["hub"].append(pid)
        elif argv and os.path.basename(argv[0]) == "ippx-scheduler":
            out["scheduler"].append(pid)
        elif "ipyparallel.controller" in joined:
            out["python-controller"].append(pid)
        elif "ipyparallel.engine" in joined:
            out["engine"].append(pid)
        else:
            out["other"].append(pid)
    return out


def _assert_ippx_ran(scratch, engine_pids):
    procs = _classify(scratch.marked())
    assert not procs["python-controller"], "the Python controller ran, not ippx"
    assert len(procs["hub"]) == 1, f"expected one ippx-hub process, found {procs}"
    (hub,) = procs["hub"]
    assert cmdline(hub)[0] == controller_argv()[0], cmdline(hub)
    # The scheduler runs on a thread of ippx-hub by default.
    assert not procs["scheduler"], procs
    assert set(engine_pids) <= set(procs["engine"]), (engine_pids, procs)
    return hub


def _assert_all_gone(scratch, security: Path, t0: float):
    try:
        wait_for(lambda: not scratch.marked(), STOP_BOUND, interval=0.1, what="all processes gone")
    except TimeoutError:
        left = {k: [" ".join(cmdline(p))[:120] for p in v] for k, v in _classify(scratch.marked()).items() if v}
        pytest.fail(f"still running {STOP_BOUND}s after stop: {left}")
    print(f"all processes gone {time.monotonic() - t0:.1f}s after stop")
    left = sorted(p.name for p in security.glob("ipcontroller*.json"))
    assert not left, f"connection files left behind: {left}"


def _client(profile_dir: Path, n: int, **kw):
    import ipyparallel as ipp

    rc = ipp.Client(profile_dir=str(profile_dir), timeout=20, **kw)
    rc.wait_for_engines(n, timeout=60)
    return rc


@pytest.mark.parametrize("form", ["cli", "config-file"])
def test_ipcluster_start_stop(ippx_scratch, form):
    prof = ippx_scratch.base / "profile_ipc"
    hub = controller_argv()
    argv = [IPCLUSTER, "start", "-n", "2", "--daemonize", f"--profile-dir={prof}", "--ip=127.0.0.1"]
    if form == "cli":
        if len(hub) != 1:
            pytest.skip("the CLI form takes a single executable")
        argv.append(f"--ControllerLauncher.controller_cmd={hub[0]}")
    else:
        prof.mkdir(parents=True)
        (prof / "ipcluster_config.py").write_text(
            f"c = get_config()  # noqa\nc.ControllerLauncher.controller_cmd = {hub!r}\n"
        )
    log = ippx_scratch.base / "ipcluster-start.log"
    t0 = time.monotonic()
    r = run_bounded(argv, ippx_scratch.env, timeout=60, log=log)
    assert r.returncode == 0, r.describe()

    rc = _client(prof, 2)
    try:
        pids = rc[:].apply_sync(os.getpid)
        print(f"\n[ipcluster {form}] 2 engines answering {time.monotonic() - t0:.1f}s after start: {pids}")
        assert len(set(pids)) == 2 and os.getpid() not in pids, pids
        _assert_ippx_ran(ippx_scratch, pids)
    finally:
        rc.close()

    t_stop = time.monotonic()
    r = run_bounded([IPCLUSTER, "stop", f"--profile-dir={prof}"], ippx_scratch.env, timeout=30,
                    log=ippx_scratch.base / "ipcluster-stop.log")  # fmt: skip
    assert r.returncode == 0, r.describe()
    _assert_all_gone(ippx_scratch, prof / "security", t_stop)


def test_cluster_api(ippx_scratch, monkeypatch):
    import ipyparallel as ipp
    from traitlets.config import Config

    # Cluster launches from this process: give its children the marker and a private IPYTHONDIR
    for k in ("IPYTHONDIR", "IPPX_INTEROP_RUN"):
        monkeypatch.setenv(k, ippx_scratch.env[k])
    monkeypatch.delenv("IPP_CONTROLLER_CMD", raising=False)

    prof = ippx_scratch.base / "profile_cluster"
    prof.mkdir(parents=True)
    cfg = Config()
    cfg.LocalControllerLauncher.controller_cmd = controller_argv()
    cluster = ipp.Cluster(
        n=2, profile_dir=str(prof), controller_ip="127.0.0.1", config=cfg,
        controller_args=["--ping=250", "--log-level=20"],
    )  # fmt: skip
    t0 = time.monotonic()
    rc = None
    try:
        rc = cluster.start_and_connect_sync()
        pids = rc[:].apply_sync(os.getpid)
        print(f"\n[ipp.Cluster] 2 engines answering {time.monotonic() - t0:.1f}s after start: {pids}")
        assert len(set(pids)) == 2 and os.getpid() not in pids, pids
        hub = _assert_ippx_ran(ippx_scratch, pids)
        assert hub == cluster.controller.process.pid
        # Cluster gives the controller a generated cluster id through $IPP_CLUSTER_ID
        security = prof / "security"
        assert cluster.cluster_id
        assert (security / f"ipcontroller-{cluster.cluster_id}-client.json").exists()
    finally:
        if rc is not None:
            rc.close()
        t_stop = time.monotonic()
        cluster.stop_cluster_sync()
    _assert_all_gone(ippx_scratch, prof / "security", t_stop)
