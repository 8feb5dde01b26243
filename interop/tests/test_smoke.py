"""Smoke test: stock client + 2 stock engines against the controller under test."""

import os


def test_two_engines_apply_getpid(ippx_controller):
    engines = ippx_controller.start_engines(2)
    rc = ippx_controller.client()
    rc.wait_for_engines(2, timeout=15)
    assert len(rc.ids) == 2

    pids = rc[:].apply_sync(os.getpid)

    assert sorted(pids) == sorted(p.pid for p in engines)
    assert os.getpid() not in pids
