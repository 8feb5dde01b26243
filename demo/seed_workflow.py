"""The seed tutorial ("Introduction to multiprocessing in IPython notebook", 2016), every
code cell of it, run against an ippx controller (ippx-hub) with ippx-engines.

The cells run in order in IPython's InteractiveShell, as a notebook would run them, in
their Python 3 form and otherwise verbatim: the views are used exactly as the notebook
uses them (no `block = True`, no `activate()`; `Client()` finds the cluster in the default
profile, as it found `ipcluster start -n 4` in 2016). The only changes are Python 3
syntax (`print x` -> `print(x)`) and two renames: `IPython.parallel` is now the
`ipyparallel` package, and Cython's `cythonmagic` extension is now `Cython`. That includes
the cells that load rpy2's `%%R` and Cython's `%%cython` magics on the engines, so the
engines' Python needs rpy2 and Cython, R's shared library (Debian: r-base-core), a C
compiler and the Python headers.

Every cell's result is checked (its value, the output it prints from the engines, or the
remote error the tutorial means it to show), so a broken controller or engine fails the
demo loudly, with a non-zero exit status.

    python demo/seed_workflow.py [--engines N] [--hub PATH] [--engine-cmd PATH | --stock-engines]
                                 [--strict] [--ipython-dir DIR]
"""

import argparse
import io
import os
import re
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
FLOAT = r"[0-9.e+-]+"


STATE = {}  # what a check keeps for a later cell's check (not in the notebook's namespace)


class Failed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failed(what)
    print(f"    ok: {what}", flush=True)


class Tee(io.TextIOBase):
    """Writes through to the real stream and keeps a copy, for the checks."""

    def __init__(self, stream):
        self.stream, self.copy = stream, io.StringIO()

    def write(self, s):
        self.stream.write(s)
        self.copy.write(s)
        return len(s)

    def flush(self):
        self.stream.flush()

    def isatty(self):
        return False

    @property
    def encoding(self):
        return getattr(self.stream, "encoding", "utf-8")


STREAM_HEADER = re.compile(r"^\[(stdout|stderr|output):(\d+)\] ?(.*)$")


def engine_streams(text, kinds):
    """Splits %px output into the engines' blocks. ipyparallel prints a "[stdout:N] " header
    line whenever the engine whose output follows changes (the 2016 version put it in
    front of each line); returns {engine id: the text of its blocks of those kinds}."""
    found, cur = {}, None
    for line in text.splitlines():
        m = STREAM_HEADER.match(line)
        if m:
            cur = (m[1], int(m[2]))
            line = m[3]
            if not line:
                continue
        elif line.startswith("Out[") or line.startswith("%px"):
            cur = None
        if cur and cur[0] in kinds:
            found.setdefault(cur[1], []).append(line)
    return {k: "\n".join(v) for k, v in found.items()}


class Ran:
    """What a cell left behind: its value, error, output (ANSI colours stripped), namespace."""

    def __init__(self, result, out, err_text, n):
        self.value = result.result
        self.error = result.error_in_exec or result.error_before_exec
        self.out = ANSI.sub("", out)
        self.err_text = ANSI.sub("", err_text)
        self.n = n

    def px(self, key):
        """{engine id: `key`} of the AsyncResult of the cell's (last) %px, e.g. "stdout",
        "outputs", "execute_result"."""
        ar = self.px_result
        if ar is None:
            raise Failed("the cell did not run %px")
        return dict(zip(ar.engine_id, getattr(ar, key)))

    def no_error(self):
        check(self.error is None, "cell ran without error" + (f" (got {self.error!r})" if self.error else ""))

    def remote_error(self, ename, text):
        """The cell raised, and the error carries the engines' `ename` naming `text`."""
        names, messages, e = set(), [], self.error
        while e is not None:
            names |= {type(e).__name__, getattr(e, "ename", "") or ""}
            messages.append(str(e))
            for x in getattr(e, "elist", []) or []:  # CompositeError: (ename, evalue, tb, info)
                names.add(x[0])
                messages.append(str(x[1]))
            e = getattr(e, "original_error", None)  # %px wraps the CompositeError
        check(self.error is not None and ename in names,
              f"the tutorial's remote {ename} came back (got {self.error!r})")
        check(any(text in m for m in messages), f"the {ename} is about {text!r}")

    def printed(self, line):
        check(line in self.out.splitlines(), f"printed {line!r}")

    def per_engine(self, pattern, what):
        """Every engine contributed one output line matching `pattern` (with an `(\\d+)`
        engine id as its first group); returns {engine id: match}."""
        found = {}
        for m in re.finditer(pattern, self.out, re.M):
            found.setdefault(int(m.group(1)), m)
        check(sorted(found) == list(range(self.n)), f"{what} from each of the {self.n} engines (got {sorted(found)})")
        return found

    def streams(self, kinds=("stdout",), text=None):
        """{engine id: text} of what the engines printed, from %px's "[stdout:N]" blocks."""
        return engine_streams(self.out if text is None else text, kinds)

    def each_engine_printed(self, pattern, what, kinds=("stdout",), text=None):
        """Every engine printed a line matching `pattern` (a regex); returns {engine id: match}."""
        got = {}
        for eid, t in self.streams(kinds, text).items():
            m = re.search(pattern, t, re.M)
            if m:
                got[eid] = m
        check(sorted(got) == list(range(self.n)), f"{what}, from each of the {self.n} engines (got {sorted(got)})")
        return got

    def random_floats(self, count):
        v = self.value
        check(isinstance(v, list) and len(v) == count, f"a list of {count} results: {v!r}"[:200])
        check(v[0] == 0.0 and all(0 <= r <= n for n, r in enumerate(v)) and all(isinstance(r, float) for r in v),
              "random() * n for n in range(10): 0 <= result <= n")


# ---------------------------------------------------------------------------------------
# The notebook's code cells, in order, with a check each. Sources are the notebook's, in
# their Python 3 form (see the module docstring for the three changes).
# ---------------------------------------------------------------------------------------


def c_client(c):
    c.no_error()
    pc = c.shell.user_ns["pc"]
    check(sorted(pc.ids) == list(range(c.n)), f"Client() found the cluster's {c.n} engines: {pc.ids}")
    check("px" in c.shell.magics_manager.magics["line"], "Client() registered the %px magics")


def c_lbv(c):
    import ipyparallel as ipp

    c.no_error()
    check(isinstance(c.shell.user_ns["lbv"], ipp.LoadBalancedView), "lbv is a LoadBalancedView")


def c_args(c):
    c.no_error()
    check(c.shell.user_ns["args"] == range(10), "args = range(10)")


def c_square(c):
    c.no_error()
    check(c.value == [0, 1, 4, 9, 16, 25, 36, 49, 64, 81], f"Out: {c.value}")


def c_constant_missing(c):
    c.remote_error("NameError", "CONSTANT")


def c_constant_pushed(c):
    c.no_error()
    check(c.value == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45], f"Out: {c.value}")


def c_np_missing(c):
    c.remote_error("NameError", "np")


def c_import_inside(c):
    c.no_error()
    c.random_floats(10)


def c_sync_random(c):
    c.no_error()
    c.printed("importing random from numpy.random on engine(s)")
    c.random_floats(10)


def c_sync_as(c):
    c.printed("importing numpy on engine(s)")
    c.remote_error("NameError", "np")


def c_sync_rename(c):
    c.no_error()
    c.printed("importing numpy on engine(s)")
    c.random_floats(10)


def c_unordered(c):
    c.no_error()
    c.printed("importing numpy on engine(s)")
    c.printed("importing time on engine(s)")
    check(isinstance(c.value, list) and sorted(c.value) == list(range(10)), f"all of range(10), as they finished: {c.value}")


def px_floats(c):
    c.per_engine(rf"^Out\[(\d+):\d+\]:\s*{FLOAT}\s*$", "displayed Out[engine:n]: <random float>")
    got = c.px("execute_result")
    vals = {e: float(r["data"]["text/plain"]) for e, r in got.items() if r}
    check(sorted(vals) == list(range(c.n)) and all(0 <= v < 1 for v in vals.values()),
          f"the %px result of each engine is a random() in [0, 1): {vals}")


def c_px(c):
    c.no_error()
    c.printed("importing numpy on engine(s)")
    px_floats(c)


def c_px_cell(c):
    c.no_error()
    px_floats(c)


def c_timeit(c):
    c.no_error()
    out = c.px("stdout")
    check(sorted(e for e, t in out.items() if re.search(r"^[0-9.]+ [mµn]?s ± .* per loop", t, re.M)) == list(range(c.n)),
          f"%timeit printed its '... per loop' line on each of the {c.n} engines: {out}")


def c_load_rpy2(c):
    c.no_error()
    check("Traceback" not in c.out + c.err_text, "no traceback from the engines")


def c_r(c):
    c.no_error()
    # rpy2 3.5 prints a visible result to stdout, and publishes what R wrote besides
    # (warnings) as display data (2016's rmagic displayed the result itself).
    out, shown = c.px("stdout"), c.px("outputs")
    text = {e: out.get(e, "") + "".join(d.get("data", {}).get("text/plain", "") for d in shown.get(e, [])) for e in range(c.n)}
    counts = {e: len(re.findall(r"^\[1\] 12\.5$", t, re.M)) for e, t in text.items()}
    check(all(k == 1 for k in counts.values()), f"R printed mean(a), '[1] 12.5', once on each engine: {counts}")
    check(c.out.count("12.5") == c.n, f"and the Client showed it {c.n} times")


def c_my_var(c):
    c.no_error()
    lines = c.out.splitlines()
    check("randomizing my_var" in lines, "printed 'randomizing my_var'")
    k = lines.index("randomizing my_var")
    before, after = "\n".join(lines[:k]), "\n".join(lines[k + 1:])
    c.each_engine_printed(r"^20$", "printed my_var = 20 before", text=before)
    rnd = {e: float(m[1]) for e, m in c.each_engine_printed(rf"^({FLOAT})$", "printed a random my_var after",
                                                               text=after).items()}
    check(all(0 <= v < 1 for v in rnd.values()) and len(set(rnd.values())) == c.n,
          f"each engine its own random my_var: {rnd}")
    STATE["printed my_var"] = [rnd[i] for i in range(c.n)]


def c_pull_my_var(c):
    c.no_error()
    printed = STATE.pop("printed my_var", None)
    check(isinstance(c.value, list) and len(c.value) == c.n, f"Out: one value per engine: {c.value}")
    check(c.value == printed, "the values the engines printed in the cell before")
    STATE["pulled my_var"] = c.value


# In [22] and In [23] call `direct_view.clear()` without waiting for it (the notebook's
# views do not block) and go on with `%px` at once. The clear travels on the control
# channel, the %px on the MUX channel: two connections, so an engine can get the execute
# first, in stock ipyparallel as with ippx (measured by demo/clear_race.py). The
# tutorial's result is shown when the clear wins; when it loses, the cell shows the
# other, equally precise outcome, which is checked too and reported as a NOTE
# (a failure with --strict).
OVERTAKEN = []


def settle(c):
    """Waits for the requests the cell left in flight (its clear()); their replies are ok."""
    pc = c.shell.user_ns["pc"]
    replies = []
    for f in list(getattr(pc, "_futures", {}).values()):
        replies.append(f.result(timeout=60))
    bad = [m for m in replies if m["msg_type"] == "clear_reply" and m["content"].get("status") != "ok"]
    check(not bad, f"every clear() the cell sent was answered ok ({len(replies)} in flight)" + (f": {bad}" if bad else ""))


def per_engine_errors(c):
    ar = c.px_result
    return {e: err for e, err in zip(ar.engine_id, ar.error)}


def overtaken(c, engines, what):
    if engines:
        note = f"cell {c.index}: clear() arrived after the %px on engine(s) {sorted(engines)}: {what}"
        OVERTAKEN.append(note)
        print(f"    NOTE: {note}")


def c_clear(c):
    import ipyparallel as ipp

    errors = per_engine_errors(c)
    stale = {e for e, err in errors.items() if err is None}
    if not stale:
        c.remote_error("NameError", "my_var")
    else:
        # the clear came late there: the print ran in the old namespace, so it must have
        # printed the my_var of In [21] (and the rest must have raised the NameError)
        pulled = dict(enumerate(STATE["pulled my_var"]))
        out = c.px("stdout")
        check(all(out[e].strip() == repr(pulled[e]) for e in stale), f"engines {sorted(stale)} printed their my_var of In [21]")
        check(all(getattr(err, "ename", "") == "NameError" and "my_var" in str(err) for e, err in errors.items() if e not in stale),
              "the other engines raised the tutorial's NameError")
        overtaken(c, stale, "they printed my_var instead of the tutorial's NameError")
    settle(c)
    # the clear did empty every namespace
    try:
        c.shell.user_ns["direct_view"].pull("my_var", block=True)
        gone = False
    except ipp.CompositeError as e:
        gone = len(e.elist) == c.n and all(x[0] == "NameError" for x in e.elist)
    check(gone, "my_var is gone from every engine after the clear()")


def c_clear_import_as(c):
    errors = per_engine_errors(c)
    late = {e for e, err in errors.items() if err is not None}
    if not late:
        c.no_error()
        px_floats(c)
        return
    # np can only vanish between the two %px lines if the clear ran there, after the import
    check(all(getattr(errors[e], "ename", "") == "NameError" and "'np'" in str(errors[e]) for e in late),
          f"engines {sorted(late)} raised NameError for np (the clear ran after `%px import numpy as np`): {errors}")
    res = c.px("execute_result")
    ok = {e for e in range(c.n) if e not in late and res.get(e) and 0 <= float(res[e]["data"]["text/plain"]) < 1}
    check(ok | late == set(range(c.n)), "the other engines gave a random() in [0, 1)")
    overtaken(c, late, "NameError for np instead of the tutorial's random numbers")
    settle(c)


def c_empty(c):
    c.no_error()


def c_load_cython(c):
    c.no_error()
    check("Traceback" not in c.out + c.err_text, "no traceback from the engines")


def c_cython(c):
    c.no_error()
    check("Error compiling" not in c.out + c.err_text, "Cython compiled the cell on the engines")


def c_foo(c):
    import ipyparallel as ipp

    c.no_error()
    c.per_engine(r"^Out\[(\d+):\d+\]:\s*4\s*$", "displayed Out[engine:n]: 4")
    got = c.px("execute_result")
    check({e: r["data"]["text/plain"] for e, r in got.items() if r} == {e: "4" for e in range(c.n)},
          "the %px result of each engine is 4")
    # and foo is the compiled function on every engine, callable from the Client too
    pc = c.shell.user_ns["pc"]
    got = pc[:].apply_sync(lambda f: (f(3), type(f).__name__), ipp.Reference("foo"))
    check(all(r[0] == 4 for r in got) and len(got) == c.n, f"foo(3) == 4 on every engine: {got}")
    check(all(r[1] in ("cython_function_or_method", "builtin_function_or_method") for r in got),
          f"foo is compiled code, not a Python function ({got[0][1]})")


CELLS = [
    (1, "from ipyparallel import Client\n\npc = Client()", c_client),
    (2, "lbv = pc.load_balanced_view()", c_lbv),
    (3, "args = range(10)", c_args),
    (4, "@lbv.parallel()\ndef square_it(n):\n    return n * n\n\nlist(square_it.map(args))", c_square),
    (5, "CONSTANT=7\n\n@lbv.parallel()\ndef by_constant(n):\n    return CONSTANT * n\n\nlist(by_constant.map(args))",
     c_constant_missing),
    (6, "direct_view = pc[:] # direct view over all engines\ndirect_view['CONSTANT'] = 5\n\n@lbv.parallel()\n"
        "def by_constant(n):\n    return CONSTANT * n\n\nlist(by_constant.map(args))", c_constant_pushed),
    (7, "import numpy as np\n\n@lbv.parallel()\ndef by_random(n):\n    return np.random() * n\n\nlist(by_random.map(args))",
     c_np_missing),
    (8, "@lbv.parallel()\ndef by_random(n):\n    from numpy.random import random\n    return random() * n\n\n"
        "list(by_random.map(args))", c_import_inside),
    (9, "with direct_view.sync_imports():\n    from numpy.random import random\n    \n@lbv.parallel()\n"
        "def by_random(n):\n    return random() * n\n\nlist(by_random.map(args))", c_sync_random),
    (10, "with direct_view.sync_imports():\n    import numpy as np\n    \n@lbv.parallel()\ndef by_random(n):\n"
         "    return np.random.random() * n\n\nlist(by_random.map(args))", c_sync_as),
    (11, "with direct_view.sync_imports():\n    import numpy\n    \n@lbv.parallel()\ndef by_random(n):\n"
         "    np = numpy\n    return np.random.random() * n\n\nlist(by_random.map(args))", c_sync_rename),
    (12, "with direct_view.sync_imports():\n    import numpy\n    import time\n    \n@lbv.parallel(ordered=False)\n"
         "def unordered_by_random(n):\n    np = numpy\n    time.sleep((n % 3.) / 100.)\n    return n\n\n"
         "list(unordered_by_random.map(args))", c_unordered),
    (13, "with direct_view.sync_imports():\n    import numpy\n    \n%px numpy.random.random()", c_px),
    (14, "%%px\n\nimport numpy as np\n\nnp.random.random()", c_px_cell),
    (15, "%%px\n\ndef fibonacci(n):\n    if n < 2:\n        return 1\n    else:\n        return fibonacci(n-2) + fibonacci(n-1)\n"
         "\n%timeit fibonacci(30)", c_timeit),
    (18, "%px %load_ext rpy2.ipython", c_load_rpy2),
    (19, "%%px \n%%R\na <- array(seq(24), dim=c(6,4));\nmean(a);", c_r),
    (20, "direct_view['my_var'] = 20\n\n%px print(my_var)\nprint('randomizing my_var')\n"
         "%px import random; my_var = random.random()\n%px print(my_var)", c_my_var),
    (21, "direct_view['my_var']", c_pull_my_var),
    (22, "direct_view.clear()\n\n%px print(my_var)", c_clear),
    (23, "direct_view.clear()\n\n%px import numpy as np\n\n%px np.random.random()", c_clear_import_as),
    (None, "", c_empty),
    (None, "", c_empty),
    (24, "%px %load_ext Cython", c_load_cython),
    (26, "%%px\n%%cython\n\ndef foo(int i):\n    return i + 1", c_cython),
    (27, "%px foo(3)", c_foo),
]


def run_cells(shell, n):
    failures = []
    for i, (prompt, source, verify) in enumerate(CELLS, 1):
        where = f"notebook In [{prompt}]" if prompt else "an empty cell"
        print(f"\n=== cell {i}/{len(CELLS)} ({where})", flush=True)
        for line in source.splitlines() or [""]:
            print("    | " + line)
        magics = shell.magics_manager.registry.get("ParallelMagics")
        before = magics.last_result if magics else None
        out, err = Tee(sys.stdout), Tee(sys.stderr)
        sys.stdout, sys.stderr = out, err
        t0 = time.time()
        try:
            r = shell.run_cell(source, store_history=True)
        finally:
            sys.stdout, sys.stderr = out.stream, err.stream
        ran = Ran(r, out.copy.getvalue(), err.copy.getvalue(), n)
        ran.shell = shell
        ran.index = i
        magics = shell.magics_manager.registry.get("ParallelMagics")
        ran.px_result = magics.last_result if magics and magics.last_result is not before else None
        print(f"    ({time.time() - t0:.1f} s)")
        try:
            verify(ran)
        except Failed as e:
            print(f"    FAILED: cell {i} ({where}): {e}", flush=True)
            failures.append(f"cell {i} ({where}): {e}")
            # later cells build on this one's state; carry on only where that is harmless
    return failures


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", type=int, default=4, help="number of engines (default 4)")
    p.add_argument("--hub", default=os.path.join(REPO, "target", "release", "ippx-hub"), help="controller command")
    p.add_argument("--engine-cmd", default=os.path.join(REPO, "target", "release", "ippx-engine"),
                   help="engine command (default: target/release/ippx-engine)")
    p.add_argument("--stock-engines", action="store_true", help="use stock ipyparallel engines (ipengine) instead")
    p.add_argument("--strict", action="store_true",
                   help="fail when a non-blocking clear() is overtaken by the next %%px (In [22], In [23]), "
                   "instead of noting it")
    p.add_argument("--ipython-dir", default=None,
                   help="IPYTHONDIR for the run; the cluster is its default profile (default: a fresh temporary directory)")
    p.add_argument("--client-file", default=None,
                   help="connect to a running cluster (e.g. on other machines) instead of starting one: its client "
                   "connection file (or JSON) is put in the default profile, where the notebook's `Client()` finds it; "
                   "--engines is then how many engines to wait for")
    a = p.parse_args()

    tmp = None
    if a.ipython_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="ippx-demo-")
        a.ipython_dir = tmp.name
    a.ipython_dir = os.path.abspath(a.ipython_dir)
    # The notebook's `Client()` takes no arguments: it finds the cluster in the default
    # profile of IPYTHONDIR, under the connection files' plain names (cluster_id "").
    os.environ["IPYTHONDIR"] = a.ipython_dir
    profile_dir = os.path.join(a.ipython_dir, "profile_default")

    import ipyparallel as ipp
    from traitlets.config import Config

    if a.client_file is not None:
        return run_on_existing(a, profile_dir, tmp)

    c = Config()
    c.LocalControllerLauncher.controller_cmd = [a.hub]
    engines = "stock ipengines" if a.stock_engines else f"ippx-engines ({a.engine_cmd})"
    if not a.stock_engines:
        c.LocalEngineSetLauncher.engine_cmd = [a.engine_cmd]
    cluster = ipp.Cluster(config=c, n=a.engines, profile_dir=profile_dir, cluster_id="",
                          controller_ip="127.0.0.1", log_level=30)
    t0 = time.time()
    print(f"starting the ippx controller ({a.hub}) and {a.engines} {engines} in {profile_dir}", flush=True)
    failures = ["the cluster did not start"]
    try:
        cluster.start_cluster_sync()
        # Wait for the engines with a client of our own, closed before the notebook's
        # `Client()` runs (the first Client of an IPython session registers %px).
        rc = cluster.connect_client_sync()
        try:
            rc.wait_for_engines(a.engines, timeout=120)
            print(f"cluster up in {time.time() - t0:.1f} s: engines {rc.ids}", flush=True)
        finally:
            rc.close()

        from IPython.core.interactiveshell import InteractiveShell

        sc = Config()
        sc.HistoryAccessor.hist_file = ":memory:"  # not in the temporary IPYTHONDIR, removed at the end
        shell = InteractiveShell.instance(config=sc)
        t1 = time.time()
        failures = run_cells(shell, a.engines)
        print(f"\nthe notebook's {len(CELLS)} code cells ran in {time.time() - t1:.1f} s")
        pc = shell.user_ns.get("pc")
        if pc is not None:
            pc.close()
    finally:
        cluster.stop_cluster_sync()
        if tmp is not None:
            tmp.cleanup()
    if OVERTAKEN:
        print(f"\nNOTE: the notebook's non-blocking direct_view.clear() was overtaken by the %px after it "
              f"({len(OVERTAKEN)} cell(s)); see the comment above settle() in {os.path.basename(__file__)}:")
        for n in OVERTAKEN:
            print(f"  {n}")
        if a.strict:
            failures = failures + [f"(--strict) {n}" for n in OVERTAKEN]
    if failures:
        print(f"\nseed workflow: {len(failures)} cell(s) FAILED on ippx with {engines}:")
        for f in failures:
            print(f"  {f}")
        return 1
    noted = f", {len(OVERTAKEN)} of them with the clear() race noted above" if OVERTAKEN else ""
    print(f"\nseed workflow: all {len(CELLS)} cells passed on ippx with {engines}{noted} (total {time.time() - t0:.1f} s)")
    return 0


def run_on_existing(a, profile_dir, tmp):
    """The notebook against a cluster someone else started (issue 13: from a client host
    of a LAN, or a client container): only the client connection info is needed."""
    import json
    import shutil

    import ipyparallel as ipp

    security = os.path.join(profile_dir, "security")
    os.makedirs(security, exist_ok=True)
    dest = os.path.join(security, "ipcontroller-client.json")
    src = a.client_file
    if src.lstrip().startswith("{"):  # the JSON itself (ippx-hub --print-connection-info=client)
        with open(dest, "w") as f:
            json.dump(json.loads(src), f)
    else:
        shutil.copyfile(src, dest)
    os.chmod(dest, 0o600)
    t0 = time.time()
    print(f"connecting to the running cluster of {dest}; waiting for {a.engines} engines", flush=True)
    try:
        rc = ipp.Client()
        try:
            rc.wait_for_engines(a.engines, timeout=120)
            print(f"cluster reached in {time.time() - t0:.1f} s: engines {rc.ids}", flush=True)
        finally:
            rc.close()
        from IPython.core.interactiveshell import InteractiveShell
        from traitlets.config import Config

        sc = Config()
        sc.HistoryAccessor.hist_file = ":memory:"
        shell = InteractiveShell.instance(config=sc)
        t1 = time.time()
        failures = run_cells(shell, a.engines)
        print(f"\nthe notebook's {len(CELLS)} code cells ran in {time.time() - t1:.1f} s")
        pc = shell.user_ns.get("pc")
        if pc is not None:
            pc.close()
    finally:
        if tmp is not None:
            tmp.cleanup()
    if OVERTAKEN and a.strict:
        failures = failures + [f"(--strict) {n}" for n in OVERTAKEN]
    if failures:
        print(f"\nseed workflow: {len(failures)} cell(s) FAILED on the running cluster:")
        for f in failures:
            print(f"  {f}")
        return 1
    print(f"\nseed workflow: all {len(CELLS)} cells passed on the running cluster (total {time.time() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
