#!/usr/bin/env python3
"""Run stock ipyparallel test modules against a substitute controller (ippx-hub).

Run it with the interop venv's python (``interop/setup_venv.sh`` creates ``.venv``)::

    .venv/bin/python interop/run_stock.py                     # default: test_view.py test_magics.py
    .venv/bin/python interop/run_stock.py test_executor.py    # chosen modules (".py" optional)
    .venv/bin/python interop/run_stock.py 'test_view.py::TestView::test_push_pull'   # single tests
    .venv/bin/python interop/run_stock.py --all               # every controller-backed module
    .venv/bin/python interop/run_stock.py --all --update-expected > /tmp/expected.txt

Controller under test: ``$IPPX_CONTROLLER_CMD`` (a shell-style command line), else
``<repo>/target/release/ippx-hub``; ``--controller-cmd`` overrides both. To check the
harness itself against the stock Python controller::

    IPPX_CONTROLLER_CMD="$PWD/.venv/bin/python -m ipyparallel.controller" \\
        .venv/bin/python interop/run_stock.py test_executor.py

How it works: each module runs in its own pytest process (own session / process group)
with ``interop/shim`` on PYTHONPATH and ``IPP_CONTROLLER_CMD`` set, so the stock
fixtures, ``ipp.Cluster`` and ``ipcluster`` start the substitute controller. Outcomes
come from junit XML (falling back to a streamed progress file when a run is killed by
the per-module wall-clock limit; tests that never finished count as failed). Unlisted
failures are rerun once in a fresh pytest process ("flaky" if they pass then).
``interop/expected_failures.txt`` lists known failures. After each module every
process carrying this run's marker (``IPPX_INTEROP_RUN=<uuid>`` in its environment) is
killed.

Output ends with one line ``N passed, N failed, N skipped`` where failed = unexpected
failures + unexpected passes and skipped includes expected failures. Exit status: 0
when there is no unexpected failure, no unexpected pass and no harness error; 1
otherwise; 2 for usage/setup errors.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import NoReturn

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import proctools  # noqa: E402

DEFAULT_MODULES = ["test_view.py", "test_magics.py"]
ALL_MODULES = [
    "test_view.py",
    "test_magics.py",
    "test_executor.py",
    "test_remotefunction.py",
    "test_lbview.py",
    "test_dependency.py",
    "test_asyncresult.py",
    "test_client.py",
    "test_label.py",
    "test_cluster.py",
    "test_view_broadcast.py",
    "test_apps.py",
]
DEFAULT_CONTROLLER = REPO / "target" / "release" / "ippx-hub"
EXPECTED_FILE = HERE / "expected_failures.txt"
RESULTS_DIR = HERE / ".results"

# outcome values
PASSED, FAILED, ERROR, SKIPPED, XFAILED, NOTRUN = (
    "passed",
    "failed",
    "error",
    "skipped",
    "xfailed",  # pytest's own xfail marker (counted as skipped)
    "notrun",  # collected but never finished (killed / crashed run) -> counts as failed
)
BAD = (FAILED, ERROR, NOTRUN)


# --------------------------------------------------------------------------- output


class Out:
    """Report stream: stdout normally, stderr with --update-expected (stdout = file)."""

    stream = sys.stdout

    @classmethod
    def p(cls, *args):
        print(*args, file=cls.stream, flush=True)


def die(msg: str) -> NoReturn:
    """Usage/setup error: message on stderr, exit status 2."""
    print(f"run_stock: error: {msg}", file=sys.stderr, flush=True)
    raise SystemExit(2)


# --------------------------------------------------------------------------- expected failures


@dataclass
class Expected:
    test_id: str
    issue: str
    reason: str
    line: str


def load_expected(path: Path) -> tuple[list[str], dict[str, Expected]]:
    """Returns (header comment lines, entries by id)."""
    header: list[str] = []
    entries: dict[str, Expected] = {}
    if not path.exists():
        return header, entries
    seen_entry = False
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            if not seen_entry:
                header.append(raw)
            continue
        seen_entry = True
        parts = line.split(None, 2)
        test_id = parts[0]
        if "::" not in test_id or not test_id.split("::")[0].endswith(".py"):
            die(f"{path}:{lineno}: bad test id {test_id!r} (want module.py::Class::test_name)")
        issue = parts[1] if len(parts) > 1 else ""
        reason = parts[2] if len(parts) > 2 else ""
        if test_id in entries:
            Out.p(f"warning: {path.name}:{lineno}: duplicate entry {test_id}")
        entries[test_id] = Expected(test_id, issue, reason, raw.strip())
    while header and not header[-1].strip():
        header.pop()
    return header, entries


# --------------------------------------------------------------------------- results


@dataclass
class TestResult:
    test_id: str
    outcome: str
    message: str = ""
    details: str = ""
    duration: float = 0.0
    flaky: bool = False


@dataclass
class ModuleRun:
    module: str
    selectors: list[str]  # node ids given on the command line ([] = whole module)
    results: dict[str, TestResult] = field(default_factory=dict)
    duration: float = 0.0
    timed_out: bool = False
    returncode: int | None = None
    leftovers: list[str] = field(default_factory=list)
    survivors: list[int] = field(default_factory=list)
    controller_launches: int = 0
    engine_launches: int = 0
    log: Path | None = None


def norm_id(nodeid: str, module: str) -> str:
    """'ipyparallel/tests/test_view.py::TestView::test_x' -> 'test_view.py::TestView::test_x'."""
    path, sep, rest = nodeid.partition("::")
    base = os.path.basename(path)
    return f"{base}{sep}{rest}" if sep else (base or module)


def junit_id(classname: str, name: str, module: str) -> str:
    stem = module[:-3]
    if not classname:  # collection error
        return f"{module}::<collection>"
    parts = classname.split(".")
    if stem in parts:
        idx = len(parts) - 1 - parts[::-1].index(stem)
        cls = parts[idx + 1 :]
    else:
        cls = parts[1:]
    return "::".join([module, *cls, name])


def parse_junit(path: Path, module: str) -> dict[str, TestResult] | None:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    results: dict[str, TestResult] = {}
    for tc in root.iter("testcase"):
        tid = junit_id(tc.get("classname", ""), tc.get("name", ""), module)
        fail = tc.find("failure")
        err = tc.find("error")
        skip = tc.find("skipped")
        if fail is not None:
            outcome, node = FAILED, fail
        elif err is not None:
            outcome, node = ERROR, err
        elif skip is not None:
            outcome = XFAILED if skip.get("type") == "pytest.xfail" else SKIPPED
            node = skip
        else:
            outcome, node = PASSED, None
        message = (node.get("message", "") if node is not None else "") or ""
        details = (node.text or "") if node is not None and outcome in BAD else ""
        try:
            duration = float(tc.get("time", "0"))
        except ValueError:
            duration = 0.0
        prev = results.get(tid)
        if prev is not None and prev.outcome in BAD:
            continue
        results[tid] = TestResult(tid, outcome, message, details, duration)
    return results


def parse_progress(path: Path, module: str):
    """Returns (collected ids, results, collection errors) from the plugin's JSON lines."""
    collected: list[str] = []
    phases: dict[str, list[dict]] = {}
    started: list[str] = []
    collect_errors: dict[str, TestResult] = {}
    if not path.exists():
        return collected, {}, collect_errors
    for line in path.read_text().splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue  # torn last line of a killed run
        kind = ev.get("event")
        if kind == "collected":
            collected = [norm_id(i, module) for i in ev["ids"]]
        elif kind == "start":
            started.append(norm_id(ev["id"], module))
        elif kind == "report":
            phases.setdefault(norm_id(ev["id"], module), []).append(ev)
        elif kind == "collecterror":
            tid = f"{module}::<collection>"
            collect_errors[tid] = TestResult(
                tid, ERROR, "collection error", ev.get("longrepr", "")
            )
    results: dict[str, TestResult] = {}
    for tid, evs in phases.items():
        whens = {e["when"] for e in evs}
        failed = [e for e in evs if e["outcome"] == "failed"]
        skipped = [e for e in evs if e["outcome"] == "skipped"]
        dur = sum(e.get("duration", 0.0) for e in evs)
        if failed:
            e = failed[0]
            outcome = FAILED if e["when"] == "call" else ERROR
            results[tid] = TestResult(tid, outcome, e.get("message", ""), e.get("longrepr", ""), dur)
        elif skipped:
            e = skipped[0]
            outcome = XFAILED if e.get("wasxfail") else SKIPPED
            results[tid] = TestResult(tid, outcome, e.get("message", ""), "", dur)
        elif "call" in whens:
            results[tid] = TestResult(tid, PASSED, "", "", dur)
        # setup passed but no call report: the run died mid-test -> left as not run
    return collected, results, collect_errors


# --------------------------------------------------------------------------- running pytest


def find_tests_dir() -> Path:
    spec = find_spec("ipyparallel")
    if spec is None or not spec.submodule_search_locations:
        die(
            f"ipyparallel is not importable by this python ({sys.executable}); "
            "run interop/setup_venv.sh and use .venv/bin/python"
        )
    tests = Path(list(spec.submodule_search_locations)[0]) / "tests"
    if not tests.is_dir():
        die(f"stock tests not found at {tests}")
    return tests


@dataclass
class Settings:
    controller_argv: list[str]
    engine_argv: list[str]
    tests_dir: Path
    run_dir: Path
    marker: str
    test_timeout: int
    module_timeout: int
    verbose: bool
    extra_pytest_args: list[str]


def pytest_env(s: Settings, tag: str) -> dict[str, str]:
    env = os.environ.copy()
    pp = [str(HERE / "shim"), str(HERE / "plugins")]
    if env.get("PYTHONPATH"):
        pp.append(env["PYTHONPATH"])
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(pp),
            "IPP_CONTROLLER_CMD": shlex.join(s.controller_argv),
            **({"IPP_ENGINE_CMD": shlex.join(s.engine_argv)} if s.engine_argv else {}),
            proctools.MARKER_ENV: s.marker,
            "IPPX_SHIM_LOG": str(s.run_dir / f"{tag}.shim.jsonl"),
            "IPPX_PROGRESS_FILE": str(s.run_dir / f"{tag}.progress.jsonl"),
            # the stock conftest makes a fresh IPYTHONDIR per module; this one only keeps
            # anything that runs before that out of ~/.ipython
            "IPYTHONDIR": str(s.run_dir / f"{tag}.ipython"),
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    env.setdefault("RUST_BACKTRACE", "1")
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("IPP_SHIM_LOG", None)
    return env


def run_pytest(s: Settings, module: str, targets: list[str], tag: str) -> tuple[dict, list, dict, bool, int | None, float, Path, int]:
    """One pytest subprocess. Returns (results, collected, collect_errors, timed_out,
    returncode, seconds, log path, controller launches)."""
    junit = s.run_dir / f"{tag}.junit.xml"
    log = s.run_dir / f"{tag}.log"
    progress = s.run_dir / f"{tag}.progress.jsonl"
    shim_log = s.run_dir / f"{tag}.shim.jsonl"
    ini = s.run_dir / "pytest.ini"
    if not ini.exists():
        # explicit (near-empty) config: never pick up a pytest.ini/pyproject.toml found by
        # walking up from site-packages into the repository
        ini.write_text("[pytest]\nasyncio_mode = auto\n")
    workdir = s.run_dir / f"{tag}.cwd"
    workdir.mkdir(parents=True, exist_ok=True)
    for p in (junit, progress, shim_log):
        p.unlink(missing_ok=True)
    cmd = [
        sys.executable, "-m", "pytest",
        "-p", "no:cacheprovider",
        "-p", "ippx_progress",
        "-o", "asyncio_mode=auto",
        "-c", str(ini),
        "--rootdir", str(s.tests_dir),
        f"--timeout={s.test_timeout}",
        f"--junitxml={junit}",
        "-v", "-rfE", "--tb=short", "--color=no",
        *s.extra_pytest_args,
        *[str(s.tests_dir / t) for t in targets],
    ]  # fmt: skip
    env = pytest_env(s, tag)
    t0 = time.monotonic()
    timed_out = False
    with open(log, "wb") as logf:
        logf.write(("$ " + shlex.join(cmd) + "\n").encode())
        logf.flush()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if s.verbose else logf,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
            start_new_session=True,  # own process group: killable as a whole
        )
        pump = None
        if s.verbose:

            def _pump():
                assert proc.stdout is not None
                for chunk in iter(lambda: proc.stdout.readline(), b""):
                    logf.write(chunk)
                    logf.flush()
                    Out.stream.write("    | " + chunk.decode(errors="replace"))
                    Out.stream.flush()

            pump = threading.Thread(target=_pump, daemon=True)
            pump.start()
        try:
            proc.wait(timeout=s.module_timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            Out.p(f"  !! {tag}: wall-clock limit of {s.module_timeout}s reached, killing the run")
            proctools.kill_group(proc.pid, grace=3.0)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        finally:
            # whatever happened, nothing of this process group survives the module
            if proctools.group_alive(proc.pid):
                proctools.kill_group(proc.pid, grace=2.0)
        if pump is not None:
            pump.join(timeout=5)
    seconds = time.monotonic() - t0

    collected, prog_results, collect_errors = parse_progress(progress, module)
    results = None if timed_out else parse_junit(junit, module)
    if results is None:
        results = prog_results
    else:
        # junit reports collection errors itself; keep progress only as a fallback
        collect_errors = {}
    for tid in collected:
        if tid not in results:
            why = (
                f"not run: module killed after the {s.module_timeout}s wall-clock limit"
                if timed_out
                else f"not run: pytest exited with code {proc.returncode} before finishing it"
            )
            results[tid] = TestResult(tid, NOTRUN, why)
    results.update(collect_errors)
    launches = engines = 0
    if shim_log.exists():
        for line in shim_log.read_text().splitlines():
            if not line.strip():
                continue
            try:
                via = json.loads(line).get("via")
            except ValueError:
                via = None
            if via == "engine":
                engines += 1
            else:
                launches += 1
    run_pytest.last_engine_launches = engines
    return results, collected, collect_errors, timed_out, proc.returncode, seconds, log, launches


def sweep(s: Settings, where: str, run: ModuleRun) -> None:
    killed, survivors = proctools.sweep(s.marker, wait=3.0)
    if killed:
        run.leftovers.extend(killed)
        Out.p(f"  cleanup after {where}: killed {len(killed)} leftover process(es)")
        for d in killed[:10]:
            Out.p(f"    - {d}")
    if survivors:
        run.survivors.extend(survivors)
        Out.p(f"  !! cleanup after {where}: could not kill {survivors}")


def run_module(s: Settings, module: str, selectors: list[str], expected: dict[str, Expected], rerun: bool) -> ModuleRun:
    run = ModuleRun(module, selectors)
    stem = module[:-3]
    targets = selectors or [module]
    Out.p(f"== {module}: running {'whole module' if not selectors else f'{len(selectors)} selected test(s)'}")
    results, collected, _, timed_out, rc, secs, log, launches = run_pytest(s, module, targets, stem)
    sweep(s, module, run)
    run.log, run.timed_out, run.returncode, run.controller_launches = log, timed_out, rc, launches
    run.engine_launches = run_pytest.last_engine_launches
    run.duration = secs
    if rc not in (0, 1) and not timed_out and not any(r.outcome in BAD for r in results.values()):
        # pytest itself failed (usage error, internal error, nothing collected, ...)
        tid = f"{module}::<pytest>"
        results[tid] = TestResult(tid, ERROR, f"pytest exited with code {rc}; see {log}")
    run.results = results

    to_rerun = [
        r.test_id
        for r in results.values()
        if r.outcome in BAD and r.test_id not in expected and "::<" not in r.test_id
    ]
    if rerun and to_rerun:
        Out.p(f"  {module}: rerunning {len(to_rerun)} failed test(s) once in a fresh pytest process")
        rres, _, _, _, _, rsecs, rlog, rlaunch = run_pytest(s, module, to_rerun, stem + ".rerun")
        sweep(s, module + " (rerun)", run)
        run.duration += rsecs
        run.controller_launches += rlaunch
        run.engine_launches += run_pytest.last_engine_launches
        for tid in to_rerun:
            r2 = rres.get(tid)
            if r2 is not None and r2.outcome not in BAD:
                r2.flaky = True
                r2.message = f"failed first ({results[tid].outcome}: {results[tid].message.splitlines()[0][:120] if results[tid].message else ''}), {r2.outcome} on rerun"
                results[tid] = r2
            elif r2 is not None:
                r2.message = r2.message or results[tid].message
                r2.details = r2.details or results[tid].details
                results[tid] = r2
    counts = classify_counts(run, expected)
    Out.p(
        f"   {module}: {counts['passed']} passed, {counts['failed']} failed, "
        f"{counts['skipped']} skipped, {counts['xfail']} xfail, {counts['flaky']} flaky "
        f"in {run.duration:.0f}s (log: {rel(log)})"
    )
    return run


# --------------------------------------------------------------------------- classification


def classify(r: TestResult, expected: dict[str, Expected]) -> str:
    """-> 'passed' | 'failed' | 'xpass' (unexpected pass) | 'xfail' | 'skipped'."""
    listed = r.test_id in expected
    if r.outcome in BAD:
        return "xfail" if listed else "failed"
    if r.outcome == PASSED:
        return "xpass" if listed else "passed"
    return "skipped"  # skipped, or pytest's own xfail marker


def classify_counts(run: ModuleRun, expected: dict[str, Expected]) -> dict[str, int]:
    c = dict(passed=0, failed=0, skipped=0, xfail=0, flaky=0, xpass=0, total=0)
    for r in run.results.values():
        k = classify(r, expected)
        c["total"] += 1
        if k == "xpass":
            c["failed"] += 1
            c["xpass"] += 1
        else:
            c[k] += 1
        if r.flaky and k == "passed":
            c["flaky"] += 1
    return c


def rel(p: Path | None) -> str:
    if p is None:
        return "-"
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def first_line(text: str, limit: int = 160) -> str:
    text = (text or "").strip()
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


# --------------------------------------------------------------------------- CLI


def parse_targets(names: list[str], tests_dir: Path) -> list[tuple[str, list[str]]]:
    """['test_view', 'test_view.py::TestView::test_x', ...] -> [(module, selectors)]."""
    order: list[str] = []
    sel: dict[str, list[str] | None] = {}
    for name in names:
        mod, sep, rest = name.partition("::")
        mod = os.path.basename(mod)
        if not mod.endswith(".py"):
            mod += ".py"
        if not (tests_dir / mod).is_file():
            die(f"no stock test module {mod} in {tests_dir}")
        if mod not in sel:
            order.append(mod)
            sel[mod] = []
        if sep:
            if sel[mod] is not None:
                sel[mod].append(f"{mod}::{rest}")
        else:
            sel[mod] = None  # whole module wins
    return [(m, sel[m] or []) for m in order]


def resolve_controller(cli: str | None) -> list[str]:
    raw = cli or os.environ.get("IPPX_CONTROLLER_CMD", "").strip()
    argv = shlex.split(raw) if raw else [str(DEFAULT_CONTROLLER)]
    exe = argv[0]
    found = shutil.which(exe) if os.sep not in exe else (exe if os.access(exe, os.X_OK) else None)
    if not found:
        hint = ""
        if os.path.basename(exe) == DEFAULT_CONTROLLER.name:
            hint = " (build it with `cargo build --release`, or set IPPX_CONTROLLER_CMD)"
        die(f"controller command not found or not executable: {exe}{hint}")
    return argv


def prune_results(root: Path, keep: int) -> None:
    """Keep only the newest ``keep`` run folders under interop/.results."""
    if not root.is_dir():
        return
    runs = sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: d.name)
    for d in runs[: max(0, len(runs) - keep + 1)]:
        shutil.rmtree(d, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Run stock ipyparallel tests against a substitute controller.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("How it works:")[0].split("\n\n", 1)[1],
    )
    ap.add_argument("modules", nargs="*", help="test modules or node ids (default: %s)" % " ".join(DEFAULT_MODULES))
    ap.add_argument("--all", action="store_true", help="all controller-backed modules: " + " ".join(ALL_MODULES))
    ap.add_argument("--engine-cmd", help="engine command line to use instead of ipengine (default: $IPPX_ENGINE_CMD; none = stock ipengine)")
    ap.add_argument("--controller-cmd", help="controller command line (default: $IPPX_CONTROLLER_CMD or target/release/ippx-hub)")
    ap.add_argument("--timeout", type=int, default=120, help="per-test timeout in s (pytest-timeout; default 120)")
    ap.add_argument("--module-timeout", type=int, default=900, help="wall-clock limit per pytest process in s (default 900)")
    ap.add_argument("--expected", type=Path, default=EXPECTED_FILE, help="expected-failures file (default interop/expected_failures.txt)")
    ap.add_argument("--no-rerun", action="store_true", help="do not rerun unlisted failures")
    ap.add_argument("--update-expected", action="store_true", help="print a replacement expected-failures file on stdout (report goes to stderr)")
    ap.add_argument("--results-dir", type=Path, default=None, help="where logs/junit go (default interop/.results/<timestamp>)")
    ap.add_argument("-v", "--verbose", action="store_true", help="stream pytest output")
    ap.add_argument("--max-details", type=int, default=25, help="print tracebacks of at most this many failures (default 25)")
    ap.add_argument("--pytest-arg", action="append", default=[], help="extra argument for pytest (repeatable), e.g. --pytest-arg=-x")
    args = ap.parse_args(argv)

    if args.update_expected:
        Out.stream = sys.stderr

    tests_dir = find_tests_dir()
    names = list(args.modules)
    if args.all:
        names = ALL_MODULES + [n for n in names if n not in ALL_MODULES]
    if not names:
        names = list(DEFAULT_MODULES)
    plan = parse_targets(names, tests_dir)
    controller = resolve_controller(args.controller_cmd)
    header, expected = load_expected(args.expected)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    if args.results_dir is None:
        prune_results(RESULTS_DIR, keep=10)
    run_dir = (args.results_dir or RESULTS_DIR / stamp).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    marker = proctools.new_marker("stock-")
    engine = shlex.split(args.engine_cmd or os.environ.get("IPPX_ENGINE_CMD", "") or "")
    s = Settings(
        engine_argv=engine,
        controller_argv=controller,
        tests_dir=tests_dir,
        run_dir=run_dir,
        marker=marker,
        test_timeout=args.timeout,
        module_timeout=args.module_timeout,
        verbose=args.verbose,
        extra_pytest_args=args.pytest_arg,
    )
    Out.p(f"controller : {shlex.join(controller)}")
    Out.p(f"engine     : {shlex.join(engine) if engine else 'stock ipengine'}")
    Out.p(f"python     : {sys.executable}")
    Out.p(f"stock tests: {tests_dir}")
    Out.p(f"results    : {rel(run_dir)}")
    Out.p(f"expected   : {len(expected)} listed failure(s) in {rel(args.expected)}")
    Out.p(f"run marker : {proctools.MARKER_ENV}={marker}")

    runs: list[ModuleRun] = []
    t_start = time.monotonic()
    interrupted = False
    try:
        for module, selectors in plan:
            runs.append(run_module(s, module, selectors, expected, rerun=not args.no_rerun))
    except KeyboardInterrupt:
        interrupted = True
        Out.p("interrupted: cleaning up")
    finally:
        killed, survivors = proctools.sweep(marker)
        if killed:
            Out.p(f"final cleanup: killed {len(killed)} process(es)")
        if survivors:
            Out.p(f"!! final cleanup: could not kill {survivors}")
    total_secs = time.monotonic() - t_start

    args.engine_cmd_used = bool(engine)
    return report(runs, expected, header, args, interrupted, total_secs)


def report(runs, expected, header, args, interrupted, total_secs) -> int:
    problems: list[str] = []
    harness_errors: list[str] = []
    tot = dict(passed=0, failed=0, skipped=0, xfail=0, flaky=0, xpass=0, total=0)

    Out.p("")
    hdr = f"{'module':<26}{'tests':>6}{'passed':>8}{'failed':>8}{'skipped':>9}{'xfail':>7}{'flaky':>7}{'ctl':>5}{'eng':>5}{'time':>8}"
    Out.p(hdr)
    Out.p("-" * len(hdr))
    for run in runs:
        c = classify_counts(run, expected)
        for k in tot:
            tot[k] += c[k]
        flag = " TIMEOUT" if run.timed_out else ""
        Out.p(
            f"{run.module:<26}{c['total']:>6}{c['passed']:>8}{c['failed']:>8}{c['skipped']:>9}"
            f"{c['xfail']:>7}{c['flaky']:>7}{run.controller_launches:>5}{run.engine_launches:>5}{run.duration:>7.0f}s{flag}"
        )
        if c["passed"] + c["xpass"] > 0 and run.controller_launches == 0 and not run.selectors:
            harness_errors.append(
                f"{run.module}: tests passed but no controller was launched through the shim "
                "- the substitute controller may not have been tested"
            )
        if args.engine_cmd_used and c["passed"] + c["xpass"] > 0 and run.engine_launches == 0 and not run.selectors:
            harness_errors.append(
                f"{run.module}: tests passed but no engine was launched through the shim "
                "- the substitute engine may not have been tested"
            )
        if run.survivors:
            harness_errors.append(f"{run.module}: processes survived cleanup: {run.survivors}")
    Out.p("-" * len(hdr))
    Out.p(
        f"{'total':<26}{tot['total']:>6}{tot['passed']:>8}{tot['failed']:>8}{tot['skipped']:>9}"
        f"{tot['xfail']:>7}{tot['flaky']:>7}{'':>5}{sum(r.engine_launches for r in runs):>5}{total_secs:>7.0f}s"
    )
    Out.p("(ctl = controller launches via the shim, eng = engines launched as the substitute engine; failed includes unexpected passes)")
    if args.engine_cmd_used:
        Out.p(f"engines launched as the substitute engine: {sum(r.engine_launches for r in runs)}")

    details: list[TestResult] = []
    listed_seen: set[str] = set()
    for run in runs:
        for r in sorted(run.results.values(), key=lambda r: r.test_id):
            k = classify(r, expected)
            if r.test_id in expected:
                listed_seen.add(r.test_id)
            if k == "failed":
                problems.append(f"FAILED  {r.test_id}  [{r.outcome}] {first_line(r.message)}")
                details.append(r)
            elif k == "xpass":
                problems.append(
                    f"UNEXPECTED PASS  {r.test_id}  - listed in {args.expected.name} "
                    f"({expected[r.test_id].issue}) but passed: remove it from the list"
                )
            elif k == "xfail":
                problems.append(f"xfail   {r.test_id}  ({expected[r.test_id].issue}) {first_line(r.message, 100)}")
            if r.flaky and k == "passed":
                problems.append(f"FLAKY   {r.test_id}  {first_line(r.message)}")
    full_modules = {run.module for run in runs if not run.selectors}
    for tid in expected:
        if tid.split("::")[0] in full_modules and tid not in listed_seen:
            problems.append(f"warning: {args.expected.name}: {tid} was not collected (stale entry?)")

    if problems:
        Out.p("")
        for line in problems:
            Out.p(line)
    if details and args.max_details > 0:
        Out.p("")
        Out.p("=" * 30 + " failure details " + "=" * 30)
        for r in details[: args.max_details]:
            Out.p(f"--- {r.test_id} [{r.outcome}]")
            text = (r.details or r.message or "").rstrip()
            lines = text.splitlines()
            if len(lines) > 60:
                lines = lines[:20] + [f"... ({len(lines) - 50} lines omitted) ..."] + lines[-30:]
            for line in lines:
                Out.p("    " + line)
        if len(details) > args.max_details:
            Out.p(f"... and {len(details) - args.max_details} more (see the logs)")
    for e in harness_errors:
        Out.p(f"ERROR: {e}")
    if interrupted:
        Out.p("ERROR: interrupted before all modules ran")

    if args.update_expected:
        print_expected_file(runs, expected, header)

    Out.p("")
    Out.p(
        f"summary: {tot['passed']} passed ({tot['flaky']} flaky), {tot['failed'] - tot['xpass']} unexpected failure(s), "
        f"{tot['xpass']} unexpected pass(es), {tot['skipped']} skipped, {tot['xfail']} expected failure(s)"
    )
    Out.p(f"{tot['passed']} passed, {tot['failed']} failed, {tot['skipped'] + tot['xfail']} skipped")
    ok = tot["failed"] == 0 and not harness_errors and not interrupted and bool(runs)
    return 0 if ok else 1


def print_expected_file(runs, expected, header) -> None:
    """A complete replacement for expected_failures.txt on stdout."""
    results: dict[str, TestResult] = {}
    for run in runs:
        results.update(run.results)
    out = list(header) or ["# Stock ipyparallel tests that are EXPECTED TO FAIL against ippx-hub."]
    entries: dict[str, str] = {}
    for tid, e in expected.items():
        r = results.get(tid)
        if r is None or r.outcome in (SKIPPED, XFAILED) or r.outcome in BAD:
            entries[tid] = e.line  # not evaluated by this run, or still failing: keep
    for tid, r in results.items():
        if tid in expected or r.outcome not in BAD or "::<" in tid:
            continue
        reason = first_line(r.message, 100) or r.outcome
        entries[tid] = f"{tid}  issue-?  {reason}"
    print("\n".join(out), file=sys.stdout)
    print("", file=sys.stdout)
    print("\n".join(entries[k] for k in sorted(entries)), file=sys.stdout, flush=True)


def _sigterm(signum, frame):
    raise KeyboardInterrupt  # same clean-up path as Ctrl-C


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _sigterm)
    sys.exit(main())
