"""Fixtures for ippx's own end-to-end tests (stock ipyparallel client/engines vs. our controller).

Controller under test: ``$IPPX_CONTROLLER_CMD`` (shell-style command line) if set, else
``<repo>/target/release/ippx-hub``. Run with the interop venv::

    .venv/bin/python -m pytest interop/tests -p no:cacheprovider -o asyncio_mode=auto --timeout=120
    IPPX_CONTROLLER_CMD="$PWD/.venv/bin/python -m ipyparallel.controller" .venv/bin/python -m pytest interop/tests ...

Fixtures
--------
``ippx_controller``
    A running controller in a fresh temporary IPYTHONDIR/profile, listening on 127.0.0.1,
    ready (both connection files written). Extra controller arguments per test with
    ``@pytest.mark.controller_args("--scheme=lru", ...)``. Yields a :class:`Controller`.
``ippx_controller_factory``
    ``start(*args, defaults=True, timeout=15, cluster_id=None, env=None, config_py=None)
    -> Controller`` for tests that need several controllers or full control over the
    command line; everything is torn down at the end. ``cluster_id``: the connection file
    infix the controller is expected to use (pass ``--cluster-id`` or ``IPP_CLUSTER_ID``
    yourself; engines and clients started by the Controller get it too); ``env``: extra
    environment for every process; ``config_py``: written to the profile's
    ``ipcontroller_config.py`` before the controller starts.
``ippx_scratch``
    For tests that launch processes themselves (ipcluster, ``ipp.Cluster``, one-shot
    controller runs): a scratch dir, an environment carrying a fresh marker (and
    ``IPYTHONDIR`` inside the scratch dir), and a teardown that kills and reports every
    marked process that is still alive.

:class:`Controller` has ``ipython_dir``, ``profile_dir``, ``security_dir``, ``log_dir``,
``client_file``, ``engine_file``, ``controller_log`` (the controller's stdout+stderr),
``proc`` (the controller's Popen), ``argv`` and helpers ``start_engines(n)``,
``client(**kw)``, ``wait_for_engines(n, timeout)``, ``stop_controller()``,
``client_info()``/``engine_info()`` (the parsed connection files), ``scheduler_pid()``
and ``logs()``.

Every process a fixture starts gets its own session (process group) and a unique marker in
its environment (``IPPX_INTEROP_RUN=e2e-<uuid>``). Teardown closes the clients, SIGTERMs
engines then the controller, SIGKILLs whatever is left after a bounded wait, sweeps /proc
for anything else carrying the marker (e.g. the engines' nanny processes) and fails the
test if something it started is still alive. Logs of all processes are attached to the
report of a failing test.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

INTEROP = Path(__file__).resolve().parents[1]
REPO = INTEROP.parent
if str(INTEROP) not in sys.path:
    sys.path.insert(0, str(INTEROP))
import proctools  # noqa: E402

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
import e2e_util  # noqa: E402

DEFAULT_CONTROLLER = REPO / "target" / "release" / "ippx-hub"
READY_TIMEOUT = 15.0  # s to wait for the connection files
STOP_GRACE = 5.0  # s between SIGTERM and SIGKILL at teardown
LEAK_GRACE = 5.0  # s for marked stragglers (nannies) to exit by themselves
DEFAULT_ARGS = ["--ip=127.0.0.1", "--log-level=10", "--ping=250"]


def controller_argv() -> list[str]:
    raw = os.environ.get("IPPX_CONTROLLER_CMD", "").strip()
    argv = shlex.split(raw) if raw else [str(DEFAULT_CONTROLLER)]
    exe = argv[0]
    ok = shutil.which(exe) if os.sep not in exe else os.access(exe, os.X_OK)
    if not ok:
        pytest.fail(
            f"controller command {exe} not found or not executable: run "
            "`cargo build --release` or set IPPX_CONTROLLER_CMD",
            pytrace=False,
        )
    return argv


def _tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    if len(text) > lines:
        return "\n".join([f"... ({len(text) - lines} earlier lines in {path})", *text[-lines:]])
    return "\n".join(text)


class Controller:
    """A controller process plus the engines and clients started against it."""

    def __init__(
        self,
        base: Path,
        args: list[str],
        cluster_id: str | None = None,
        env: dict | None = None,
    ):
        self.ipython_dir = base / "ipython"
        self.profile_dir = self.ipython_dir / "profile_ippx"
        self.security_dir = self.profile_dir / "security"
        self.log_dir = self.profile_dir / "log"
        self.cluster_id = cluster_id or ""
        infix = f"-{self.cluster_id}" if self.cluster_id else ""
        self.client_file = self.security_dir / f"ipcontroller{infix}-client.json"
        self.engine_file = self.security_dir / f"ipcontroller{infix}-engine.json"
        self.controller_log = self.log_dir / "controller.log"
        for d in (self.security_dir, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.marker = proctools.new_marker("e2e-")
        self.env = dict(os.environ)
        self.env.update(
            {
                "IPYTHONDIR": str(self.ipython_dir),
                proctools.MARKER_ENV: self.marker,
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.env.setdefault("RUST_BACKTRACE", "1")
        # the substitute shim must not redirect anything our own tests start
        self.env.pop("IPP_CONTROLLER_CMD", None)
        self.env.update(env or {})
        self.argv = [*controller_argv(), f"--profile-dir={self.profile_dir}", *args]
        self.proc: subprocess.Popen | None = None
        self.engines: list[subprocess.Popen] = []
        self._procs: list[tuple[str, subprocess.Popen, Path]] = []
        self._clients: list = []
        self.torn_down = False

    # ----------------------------------------------------------------- processes
    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = self.log_dir / f"{name}.log"
        with open(log, "ab") as f, open(os.devnull, "rb") as devnull:
            f.write(("$ " + shlex.join(argv) + "\n").encode())
            f.flush()
            p = subprocess.Popen(
                argv,
                stdin=devnull,
                stdout=f,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.profile_dir,
                start_new_session=True,
            )
        self._procs.append((name, p, log))
        return p

    def start(self, timeout: float = READY_TIMEOUT) -> "Controller":
        self.proc = self._spawn("controller", self.argv)
        deadline = time.monotonic() + timeout
        while not (self.client_file.exists() and self.engine_file.exists()):
            rc = self.proc.poll()
            if rc is not None:
                raise RuntimeError(
                    f"controller exited with status {rc} before writing its connection files\n"
                    f"command: {shlex.join(self.argv)}\n{_tail(self.log_dir / 'controller.log')}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"controller did not write {self.client_file.name} and "
                    f"{self.engine_file.name} within {timeout}s\n"
                    f"{_tail(self.log_dir / 'controller.log')}"
                )
            time.sleep(0.05)
        return self

    def start_engines(self, n: int = 1, *extra_args: str) -> list[subprocess.Popen]:
        """Start n stock engines (``python -m ipyparallel.engine``); does not wait for them."""
        started = []
        for _ in range(n):
            i = len(self.engines)
            p = self._spawn(
                f"engine-{i}",
                [
                    sys.executable, "-m", "ipyparallel.engine",
                    f"--profile-dir={self.profile_dir}",
                    "--log-level=10",
                    *([f"--cluster-id={self.cluster_id}"] if self.cluster_id else []),
                    *extra_args,
                ],
            )  # fmt: skip
            self.engines.append(p)
            started.append(p)
        return started

    def start_ippx_engines(self, n: int = 1, *extra_args: str) -> list[subprocess.Popen]:
        """Start n ``ippx-engine``s (``$IPPX_ENGINE_BIN`` or target/release); no wait."""
        exe = os.environ.get("IPPX_ENGINE_BIN") or str(REPO / "target" / "release" / "ippx-engine")
        started = []
        for _ in range(n):
            i = len(self.engines)
            p = self._spawn(
                f"ippx-engine-{i}",
                [
                    exe,
                    f"--profile-dir={self.profile_dir}",
                    "--log-level=10",
                    *([f"--cluster-id={self.cluster_id}"] if self.cluster_id else []),
                    *extra_args,
                ],
            )  # fmt: skip
            self.engines.append(p)
            started.append(p)
        return started

    def client(self, **kwargs):
        """A stock ``ipp.Client`` connected through the profile's client connection file."""
        import ipyparallel as ipp

        kwargs.setdefault("profile_dir", str(self.profile_dir))
        if self.cluster_id:
            kwargs.setdefault("cluster_id", self.cluster_id)
        rc = ipp.Client(**kwargs)
        self._clients.append(rc)
        return rc

    def wait_for_engines(self, n: int, timeout: float = 15.0):
        """Wait until a client sees n engines; fail early if an engine process died."""
        rc = self.client()
        deadline = time.monotonic() + timeout
        while len(rc.ids) < n:
            dead = [p.pid for p in self.engines if p.poll() is not None]
            if dead:
                raise RuntimeError(f"engine process(es) {dead} exited\n{self.logs()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(rc.ids)}/{n} engines registered after {timeout}s")
            time.sleep(0.1)
        return rc

    def stop_controller(self, timeout: float = STOP_GRACE) -> int | None:
        """SIGTERM the controller and wait for it; returns its exit code (None if it hung)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def client_info(self) -> dict:
        return json.loads(self.client_file.read_text())

    def engine_info(self) -> dict:
        return json.loads(self.engine_file.read_text())

    def scheduler_pid(self, timeout: float = 5.0) -> int:
        """pid of the controller's ``ippx-scheduler`` child process."""
        deadline = time.monotonic() + timeout
        while True:
            pid = e2e_util.child_matching(self.proc.pid, "ippx-scheduler")
            if pid is not None:
                return pid
            if time.monotonic() > deadline:
                raise TimeoutError(f"no ippx-scheduler child of pid {self.proc.pid}")
            time.sleep(0.02)

    def logs(self, lines: int = 60) -> str:
        return "\n".join(
            f"----- {name} (pid {p.pid}, exit {p.poll()}) {log}\n{_tail(log, lines)}"
            for name, p, log in self._procs
        )

    # ----------------------------------------------------------------- teardown
    def teardown(self) -> None:
        """Stop everything; raise AssertionError if anything we started survives."""
        if self.torn_down:
            return
        self.torn_down = True
        for rc in self._clients:
            try:
                rc.close(linger=0)
            except Exception:
                pass
        self._clients.clear()

        # engines first, controller last (like the stock test-suite), each as a group
        live = [(n, p) for n, p, _ in reversed(self._procs) if p.poll() is None]
        for _, p in live:
            try:
                os.killpg(p.pid, 15)
            except OSError:
                pass
        deadline = time.monotonic() + STOP_GRACE
        for _, p in live:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        needed_kill = []
        for name, p, _ in self._procs:
            if p.poll() is None or proctools.group_alive(p.pid):
                needed_kill.append(f"{name} (pid {p.pid})")
                try:
                    os.killpg(p.pid, 9)
                except OSError:
                    pass
        for _, p, _ in self._procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass

        # processes our children started elsewhere (e.g. engine nannies, own sessions)
        # should exit by themselves once their parent is gone
        deadline = time.monotonic() + LEAK_GRACE
        while proctools.find_marked(self.marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        leaked = [proctools.describe(p) for p in proctools.find_marked(self.marker)]
        _, survivors = proctools.sweep(self.marker)
        survivors += [p.pid for _, p, _ in self._procs if p.poll() is None]

        problems = []
        if survivors:
            problems.append(f"still alive after SIGKILL: {survivors}")
        if leaked:
            problems.append(
                f"outlived their parents by {LEAK_GRACE}s (killed): " + "; ".join(leaked)
            )
        if problems:
            raise AssertionError("teardown: " + " | ".join(problems))
        if needed_kill:
            # not fatal: but say so, a controller should exit promptly on SIGTERM
            sys.stderr.write(
                f"ippx teardown: SIGKILL needed for {', '.join(needed_kill)} "
                f"(no exit within {STOP_GRACE}s of SIGTERM)\n"
            )


# --------------------------------------------------------------------------- pytest glue


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "controller_args(*args): extra command-line arguments for the ippx_controller fixture",
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for ctl in getattr(item, "_ippx_controllers", []):
            rep.sections.append((f"ippx process logs ({ctl.profile_dir})", ctl.logs()))


@pytest.fixture
def ippx_controller_factory(request, tmp_path):
    controllers: list[Controller] = []
    request.node._ippx_controllers = controllers

    def start(
        *args: str,
        defaults: bool = True,
        timeout: float = READY_TIMEOUT,
        cluster_id: str | None = None,
        env: dict | None = None,
        config_py: str | None = None,
    ) -> Controller:
        base = tmp_path / f"ctl{len(controllers)}"
        ctl = Controller(
            base, [*(DEFAULT_ARGS if defaults else []), *args], cluster_id=cluster_id, env=env
        )
        controllers.append(ctl)
        if config_py is not None:
            (ctl.profile_dir / "ipcontroller_config.py").write_text(config_py)
        ctl.start(timeout=timeout)
        return ctl

    yield start

    errors = []
    for ctl in reversed(controllers):
        try:
            ctl.teardown()
        except AssertionError as e:
            errors.append(str(e))
    if errors:
        pytest.fail("\n".join(errors), pytrace=False)


@pytest.fixture
def ippx_controller(request, ippx_controller_factory) -> Controller:
    args: list[str] = []
    for mark in request.node.iter_markers("controller_args"):
        args = [*mark.args, *args]
    return ippx_controller_factory(*args)


class Scratch:
    """A scratch dir + marked environment for processes a test launches itself."""

    def __init__(self, base: Path):
        self.base = base
        self.ipython_dir = base / "ipython"
        self.ipython_dir.mkdir(parents=True, exist_ok=True)
        self.marker = proctools.new_marker("e2e-")
        self.env = dict(os.environ)
        self.env.pop("IPP_CONTROLLER_CMD", None)
        self.env.update(
            {
                "IPYTHONDIR": str(self.ipython_dir),
                proctools.MARKER_ENV: self.marker,
                "PYTHONUNBUFFERED": "1",
            }
        )

    def marked(self) -> list[int]:
        """Live pids carrying this scratch's marker."""
        return proctools.find_marked(self.marker)


@pytest.fixture
def ippx_scratch(tmp_path):
    scratch = Scratch(tmp_path / "scratch")
    yield scratch
    leaked = [proctools.describe(p) for p in scratch.marked()]
    _, survivors = proctools.sweep(scratch.marker)
    if leaked or survivors:
        pytest.fail(
            f"teardown: marked processes still alive (killed): {'; '.join(leaked)}"
            + (f" | survived SIGKILL: {survivors}" if survivors else ""),
            pytrace=False,
        )
