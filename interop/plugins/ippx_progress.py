"""pytest plugin (``-p ippx_progress``): stream collection and per-phase results to a file.

run_stock.py reads junit XML for outcomes, but pytest only writes junit XML when the
session ends normally. When a module run is killed by the wall-clock timeout, this
JSON-lines file (flushed after every event) is what tells which tests were collected,
which finished and how. Activated only when ``IPPX_PROGRESS_FILE`` is set.
"""

import json
import os

_PATH = os.environ.get("IPPX_PROGRESS_FILE")


def _emit(obj):
    if not _PATH:
        return
    with open(_PATH, "a") as f:
        f.write(json.dumps(obj) + "\n")
        f.flush()


def _short(longrepr, limit=4000):
    if longrepr is None:
        return ""
    text = str(longrepr)
    return text if len(text) <= limit else text[:limit] + "\n...[truncated]"


def pytest_collection_finish(session):
    _emit({"event": "collected", "ids": [item.nodeid for item in session.items]})


def pytest_collectreport(report):
    if report.failed:
        _emit(
            {
                "event": "collecterror",
                "id": report.nodeid,
                "longrepr": _short(report.longrepr),
            }
        )


def pytest_runtest_logstart(nodeid, location):
    _emit({"event": "start", "id": nodeid})


def pytest_runtest_logreport(report):
    msg = ""
    if report.failed:
        crash = getattr(report.longrepr, "reprcrash", None)
        msg = getattr(crash, "message", "") or ""
        if not msg:
            msg = _short(report.longrepr, 300).strip().splitlines()[-1:] or [""]
            msg = msg[0]
    elif report.skipped and isinstance(report.longrepr, tuple):
        msg = str(report.longrepr[2])
    _emit(
        {
            "event": "report",
            "id": report.nodeid,
            "when": report.when,
            "outcome": report.outcome,
            "wasxfail": hasattr(report, "wasxfail"),
            "duration": report.duration,
            "message": msg,
            "longrepr": _short(report.longrepr) if report.failed else "",
        }
    )
