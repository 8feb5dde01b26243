"""Process bookkeeping shared by interop/run_stock.py and interop/tests/conftest.py.

Linux only (reads /proc). Standard library only, so it can run before the venv exists.

The cleanup strategy is "mark and sweep": every process tree we launch gets a unique
marker in its environment (``MARKER_ENV=<uuid>``). Environments are inherited by
children - including processes that escape our process group with setsid()
(ipyparallel's Cluster launcher and engine nanny both do) - so scanning
/proc/*/environ for the marker finds every leftover, wherever it went.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

MARKER_ENV = "IPPX_INTEROP_RUN"


def new_marker(prefix: str = "") -> str:
    return f"{prefix}{uuid.uuid4().hex}"


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:  # gone, or not ours
        return None


def is_zombie(pid: int) -> bool:
    """True if pid is a zombie (dead, waiting to be reaped) or already gone."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return True
    # format: "pid (comm) S ..." - comm may contain spaces/parens, so split at the last ')'
    try:
        state = stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3]
    except ValueError:
        return False
    return state in (b"Z", b"X")


def is_alive(pid: int) -> bool:
    """Alive = exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not is_zombie(pid)


def _protected_pids() -> set[int]:
    """Ourselves and our ancestors: never to be killed by a sweep."""
    pids = set()
    pid = os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        stat = _read(f"/proc/{pid}/stat")
        if stat is None:
            break
        try:
            pid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        except (ValueError, IndexError):
            break
    return pids


def find_marked(marker: str, env_name: str = MARKER_ENV) -> list[int]:
    """Live pids whose environment has ``env_name=marker`` or whose cmdline mentions marker."""
    needle_env = f"{env_name}={marker}".encode()
    needle = marker.encode()
    protected = _protected_pids()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid in protected:
            continue
        env = _read(f"/proc/{pid}/environ") or b""
        hit = needle_env in env.split(b"\0")
        if not hit:
            cmdline = _read(f"/proc/{pid}/cmdline") or b""
            hit = needle in cmdline
        if hit and not is_zombie(pid):
            found.append(pid)
    return found


def describe(pid: int) -> str:
    cmdline = _read(f"/proc/{pid}/cmdline")
    if not cmdline:
        return f"pid {pid}"
    return f"pid {pid}: " + " ".join(
        a.decode(errors="replace") for a in cmdline.split(b"\0") if a
    )[:200]


def kill_pids(pids, grace: float = 3.0) -> list[int]:
    """SIGTERM the pids, wait up to ``grace`` s, SIGKILL the survivors.

    Returns the pids that still exist (non-zombie) afterwards (should be empty).
    """
    pids = [p for p in pids if is_alive(p)]
    for p in pids:
        try:
            os.kill(p, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(is_alive(p) for p in pids):
        time.sleep(0.05)
    for p in pids:
        if is_alive(p):
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and any(is_alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if is_alive(p)]


def kill_group(pgid: int, grace: float = 3.0) -> None:
    """SIGTERM a whole process group, wait up to ``grace`` s, then SIGKILL it."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def group_alive(pgid: int) -> bool:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _read(f"/proc/{entry}/stat")
        if not stat:
            continue
        try:
            fields = stat[stat.rindex(b")") + 2 :].split()
            if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
                return True
        except (ValueError, IndexError):
            continue
    return False


def sweep(marker: str, env_name: str = MARKER_ENV, grace: float = 3.0, wait: float = 0.0):
    """Kill every live process carrying the marker.

    ``wait``: first give marked processes this many seconds to exit by themselves
    (e.g. engine nannies notice their engine's death on their own).
    Returns (killed, survivors): descriptions of what had to be killed, and pids still alive.
    """
    deadline = time.monotonic() + wait
    while wait > 0 and time.monotonic() < deadline and find_marked(marker, env_name):
        time.sleep(0.1)
    killed = []
    survivors: list[int] = []
    # a couple of passes: a dying parent may spawn/reparent children while we look
    for _ in range(3):
        pids = find_marked(marker, env_name)
        if not pids:
            break
        killed.extend(describe(p) for p in pids)
        survivors = kill_pids(pids, grace=grace)
    else:
        survivors = find_marked(marker, env_name)
    return killed, survivors
