"""Helpers for ippx's end-to-end tests (imported by the test modules; not a test module).

Hub log parsing, a raw notification listener, /proc helpers, raw-zmq sessions and a
bounded runner for one-shot controller invocations. Linux only.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import zmq

# --------------------------------------------------------------------------- waiting


def wait_for(pred, timeout: float, interval: float = 0.02, what: str = "condition"):
    """Poll ``pred()`` until it returns something truthy; return it, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        time.sleep(interval)


# --------------------------------------------------------------------------- hub log

# tracing's default format without ANSI: "2026-11-25T09:34:30.336558Z  INFO target: message k=v"
_LINE_RE = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z\s+(?P<level>TRACE|DEBUG|INFO|WARN|ERROR)\s+(?P<rest>.*)$"
)
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class LogLine:
    ts: float  # unix time (s)
    level: str
    text: str  # everything after the level
    raw: str


def parse_rfc3339(ts: str) -> float:
    """'2026-11-25T09:34:30.336558123' (UTC, any number of fraction digits) -> unix seconds."""
    if "." in ts:
        base, frac = ts.split(".", 1)
        frac = (frac + "000000")[:6]
        ts = f"{base}.{frac}"
    return datetime.fromisoformat(ts).replace(tzinfo=timezone.utc).timestamp()


def read_log(path: Path, offset: int = 0) -> list[LogLine]:
    """Parsed tracing lines of a log file (from byte ``offset``); other lines are skipped."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read().decode(errors="replace")
    except OSError:
        return []
    out = []
    for raw in data.splitlines():
        m = _LINE_RE.match(_ANSI_RE.sub("", raw))
        if m:
            out.append(LogLine(parse_rfc3339(m["ts"]), m["level"], m["rest"], raw))
    return out


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def find_lines(path: Path, *needles: str, level: str | None = None, offset: int = 0) -> list[LogLine]:
    """Log lines containing every needle (and at ``level`` if given)."""
    return [
        ln
        for ln in read_log(path, offset)
        if all(n in ln.text for n in needles) and (level is None or ln.level == level)
    ]


# --------------------------------------------------------------------------- sessions


def load_json(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


def session_for(info: dict, key: bytes | None = None):
    """A jupyter_client Session speaking the connection file's packer, key and scheme
    (or another `key`: what a peer without the connection file would send)."""
    from jupyter_client.session import Session

    return Session(
        key=info["key"].encode() if key is None else key,
        packer=info["pack"],
        unpacker=info["unpack"],
        signature_scheme=info["signature_scheme"],
    )


def rss_mb(pid: int) -> float:
    """Resident memory of one process, MB."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def url(info: dict, port_key: str, index: int | None = None) -> str:
    port = info[port_key] if index is None else info[port_key][index]
    return f"{info['interface']}:{port}"


class NotificationListener:
    """A raw SUB on the hub's notification PUB, recording (monotonic time, msg_type, content).

    Runs in a thread; ``close()`` stops it. Signatures are verified with the file's key.
    """

    def __init__(self, client_info: dict, settle: float = 0.3):
        self.session = session_for(client_info)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.linger = 0
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(url(client_info, "notification"))
        self.events: list[tuple[float, str, dict, dict]] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        time.sleep(settle)  # PUB/SUB slow joiner

    def _run(self):
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(50):
                continue
            frames = self.sock.recv_multipart()
            t = time.monotonic()
            try:
                _, msg = self.session.feed_identities(frames)
                msg = self.session.deserialize(msg)
            except Exception as e:  # record, never raise in the thread
                self.errors.append(f"{type(e).__name__}: {e} in {frames!r:.300}")
                continue
            with self._lock:
                self.events.append((t, msg["header"]["msg_type"], msg["content"], msg["parent_header"]))

    def wait(self, msg_type: str, timeout: float, match=lambda content: True):
        """First recorded event of that type whose content matches; (time, content)."""

        def find():
            with self._lock:
                for t, mt, content, _ in self.events:
                    if mt == msg_type and match(content):
                        return (t, content)
            return None

        return wait_for(find, timeout, what=f"{msg_type} notification")

    def close(self):
        self._stop.set()
        self._thread.join(2)
        self.sock.close(0)
        self.ctx.term()


# --------------------------------------------------------------------------- /proc


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def cmdline(pid: int) -> list[str]:
    raw = _read(f"/proc/{pid}/cmdline") or b""
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _stat_fields(pid: int) -> list[bytes] | None:
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    return stat[stat.rindex(b")") + 2 :].split()


def ppid(pid: int) -> int | None:
    f = _stat_fields(pid)
    return int(f[1]) if f else None


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and ppid(int(entry)) == pid:
            f = _stat_fields(int(entry))
            if f and f[0] not in (b"Z", b"X"):
                out.append(int(entry))
    return out


def alive(pid: int) -> bool:
    f = _stat_fields(pid)
    return bool(f) and f[0] not in (b"Z", b"X")


def child_matching(pid: int, needle: str) -> int | None:
    for c in children(pid):
        if any(needle in a for a in cmdline(c)):
            return c
    return None


# --------------------------------------------------------------------------- one-shot runs


@dataclass
class Run:
    returncode: int | None  # None: did not exit within the timeout (then killed)
    stdout: str
    stderr: str
    argv: list[str]

    def describe(self) -> str:
        return (
            f"$ {shlex.join(self.argv)}\nexit {self.returncode}\n"
            f"--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-3000:]}"
        )


def run_bounded(argv: list[str], env: dict, timeout: float, cwd=None, log: Path | None = None) -> Run:
    """Run in a new session; on timeout SIGKILL the whole group. Never leaves it running.

    ``log``: send stdout+stderr to that file instead of pipes (needed for commands that
    leave daemons behind holding their output open, e.g. ``ipcluster start --daemonize``);
    the file's text is then returned as ``stdout``.
    """
    if log is not None:
        with open(log, "ab") as f:
            p = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                env=env, cwd=cwd, start_new_session=True,
            )  # fmt: skip
        try:
            rc = p.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
            p.wait(5)
            rc = None
        return Run(rc, log.read_text(errors="replace"), "", list(argv))
    p = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        out, err = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
        out, err = p.communicate(timeout=5)
        rc = None
    return Run(rc, out.decode(errors="replace"), err.decode(errors="replace"), list(argv))
