"""ippx-engine end to end, with the stock Client and ippx's controller: crash restarts,
heartbeats while the worker holds the GIL in C, interrupts of sleeps, and output printed
below Python (fd 1 writes, subprocesses)."""

import os
import signal
import time

import ipyparallel as ipp
import pytest

# Functions of this module are sent by value (the engines cannot import it).
interactive = ipp.interactive


def _ids_after(rc, n, timeout=20):
    deadline = time.monotonic() + timeout
    while len(rc.ids) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return rc.ids


def test_restart_on_crash_keeps_id_and_answers_the_task(ippx_controller):
    ippx_controller.start_ippx_engines(1, "--restart-on-crash")
    rc = ippx_controller.client()
    rc.wait_for_engines(1, timeout=20)
    eid = rc.ids[0]
    v = rc[eid]
    v.block = True
    v["x"] = 1
    pid0 = v.apply_sync(os.getpid)

    @interactive
    def segfault():
        import ctypes

        ctypes.string_at(0)

    with pytest.raises(ipp.error.RemoteError) as e:
        v.apply_sync(segfault)
    assert e.value.ename == "EngineError", e.value
    assert "SIGSEGV" in e.value.evalue
    # the same engine id answers the next task, from a new worker with a fresh namespace
    assert rc.ids == [eid]
    assert v.apply_sync(interactive(lambda: 6 * 7)) == 42
    assert v.apply_sync(os.getpid) != pid0
    with pytest.raises(ipp.error.RemoteError) as e:
        v.execute("x", block=True)
    assert e.value.ename == "NameError"
    ar = v.execute("print('after')", block=True)
    assert ar.stdout == "after\n"
    # the supervisor stays registered: no unregistration was seen
    assert eid in rc.ids


def test_default_crash_policy_is_stocks(ippx_controller):
    ippx_controller.start_ippx_engines(1)
    rc = ippx_controller.client()
    rc.wait_for_engines(1, timeout=20)
    proc = ippx_controller.engines[-1]
    ar = rc[:].apply_async(os._exit, 3)
    with pytest.raises(ipp.error.RemoteError):
        ar.get(timeout=20)
    proc.wait(timeout=10)
    assert proc.returncode == 3
    deadline = time.monotonic() + 10
    while rc.ids and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rc.ids == []


@pytest.mark.controller_args("--ping=200", "--HeartMonitor.max_heartmonitor_misses=5")
def test_heartbeats_continue_while_the_gil_is_held_in_c(ippx_controller):
    ippx_controller.start_ippx_engines(1)
    rc = ippx_controller.client()
    rc.wait_for_engines(1, timeout=20)
    eid = rc.ids[0]

    @interactive
    def hold_gil(seconds):
        import ctypes
        import time

        t = time.monotonic()
        # PyDLL calls keep the GIL: libc's sleep() blocks inside C with it held.
        ctypes.PyDLL(None).sleep(seconds)
        return time.monotonic() - t

    ar = rc[eid].apply_async(hold_gil, 10)
    # 10 s is 50 heartbeat periods, 8x the controller's patience of 6 missed periods
    elapsed = ar.get(timeout=30)
    assert elapsed >= 9.5
    assert rc.ids == [eid], "the engine was declared dead while its worker held the GIL"
    assert rc[eid].apply_sync(interactive(lambda: "alive")) == "alive"


def test_send_signal_and_px_interrupt_stop_a_sleep(ippx_controller):
    ippx_controller.start_ippx_engines(2)
    rc = ippx_controller.client()
    rc.wait_for_engines(2, timeout=20)
    dv = rc[:]
    ar = dv.apply_async(time.sleep, 10)
    time.sleep(0.5)
    t0 = time.monotonic()
    rc.send_signal(signal.SIGINT, block=True)
    with pytest.raises(ipp.error.CompositeError) as e:
        ar.get(timeout=8)
    assert time.monotonic() - t0 < 5
    assert all(name == "KeyboardInterrupt" for name, *_ in e.value.elist), e.value.elist
    # and an execute (what %px sends), interrupted the way %px's KeyboardInterrupt
    # handler does: a signal_request per engine
    ar = dv.execute("import time; time.sleep(10)", silent=False)
    time.sleep(0.5)
    t0 = time.monotonic()
    rc.send_signal(signal.SIGINT, targets=rc.ids, block=True)
    with pytest.raises(ipp.error.CompositeError) as e:
        ar.get(timeout=8)
    assert time.monotonic() - t0 < 5
    assert all(name == "KeyboardInterrupt" for name, *_ in e.value.elist), e.value.elist
    # interrupting an idle engine is a no-op, the engines go on working
    rc.send_signal(signal.SIGINT, block=True)
    assert dv.apply_sync(interactive(lambda: 1)) == [1, 1]


def test_output_from_c_and_subprocesses_reaches_the_client(ippx_controller):
    ippx_controller.start_ippx_engines(1)
    rc = ippx_controller.client()
    rc.wait_for_engines(1, timeout=20)
    v = rc[rc.ids[0]]
    ar = v.execute(
        "import os, subprocess, sys\n"
        "print('py-out')\n"
        "os.write(1, b'c-out\\n')\n"
        "os.write(2, b'c-err\\n')\n"
        "subprocess.run(['sh', '-c', 'echo sub-out; echo sub-err >&2'])\n"
        "print('last')\n",
        block=True,
    )
    assert ar.stdout == "py-out\nc-out\nsub-out\nlast\n"
    assert ar.stderr == "c-err\nsub-err\n"

    # apply: output printed by the function precedes its result
    @interactive
    def noisy():
        import os

        print("a")
        os.write(1, "ü-multibyte\n".encode())
        return 5

    ar = v.apply_async(noisy)
    assert ar.get(timeout=10) == 5
    ar.wait_for_output(timeout=5)
    assert ar.stdout == "a\nü-multibyte\n"


def test_in_process_runs_python_in_the_engine_process(ippx_controller):
    (proc,) = ippx_controller.start_ippx_engines(1, "--in-process")
    rc = ippx_controller.client()
    rc.wait_for_engines(1, timeout=20)
    v = rc[rc.ids[0]]
    assert v.apply_sync(os.getpid) == proc.pid
    ar = v.execute("import os; print('hi'); os.write(2, b'c-err\\n')", block=True)
    assert ar.stdout == "hi\n" and ar.stderr == "c-err\n"
    ar = v.apply_async(time.sleep, 10)
    time.sleep(0.5)
    rc.send_signal(signal.SIGINT, block=True)
    with pytest.raises(ipp.error.RemoteError) as e:
        ar.get(timeout=8)
    assert e.value.ename == "KeyboardInterrupt"
    assert v.apply_sync(interactive(lambda: 3)) == 3
    # SIGTERM: unregisters and exits
    proc.terminate()
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while rc.ids and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rc.ids == []
