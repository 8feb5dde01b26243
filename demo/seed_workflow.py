"""The seed tutorial ("Introduction to multiprocessing in IPython notebook", 2016) in its
Python 3 form, run against an ippx controller with stock ipyparallel engines.

Every step checks its result, so a broken controller fails the demo loudly.
Steps that need R or Cython on the engines (rmagic, cythonmagic) are left out.

    python demo/seed_workflow.py [--engines N] [--hub PATH] [--profile-dir DIR]
"""

import argparse
import os
import sys
import tempfile
import time

import ipyparallel as ipp
from traitlets.config import Config

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def step(title):
    print(f"\n=== {title}", flush=True)


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    print(f"    ok: {what}")


# The seed notebook's cells, in order, in their Python 3 form. Each runs as a notebook
# cell in IPython's InteractiveShell with `pc` (the Client) in its namespace, and is
# followed by a check on what it left there. `expect` names the remote error a cell is
# meant to show, as the tutorial does.
CELLS = [
    ("Client, load-balanced view", "lbv = pc.load_balanced_view()\nargs = range(10)", None,
     lambda ns: ns["lbv"] is not None),
    ("@lbv.parallel() with map",
     "@lbv.parallel()\ndef square_it(n):\n    return n * n\n\nout = list(square_it.map(args))", None,
     lambda ns: ns["out"] == [n * n for n in range(10)]),
    ("a global of the notebook is not on the engines",
     "CONSTANT = 7\n\n@lbv.parallel()\ndef by_constant(n):\n    return CONSTANT * n\n\nout = list(by_constant.map(args))", "NameError",
     None),
    ("push with the direct view's dict interface: direct_view['CONSTANT'] = 5",
     "direct_view = pc[:]  # direct view over all engines\ndirect_view.block = True\ndirect_view['CONSTANT'] = 5\n\n"
     "@lbv.parallel()\ndef by_constant(n):\n    return CONSTANT * n\n\nout = list(by_constant.map(args))", None,
     lambda ns: ns["out"] == [5 * n for n in range(10)]),
    ("imports are not visible inside parallel functions",
     "import numpy as np\n\n@lbv.parallel()\ndef by_random(n):\n    return np.random() * n\n\nout = list(by_random.map(args))", "NameError",
     None),
    ("import inside the parallel function",
     "@lbv.parallel()\ndef by_random(n):\n    from numpy.random import random\n    return random() * n\n\nout = list(by_random.map(args))", None,
     lambda ns: all(0 <= r <= n for r, n in zip(ns["out"], range(10))) and len(ns["out"]) == 10),
    ("sync_imports",
     "with direct_view.sync_imports():\n    from numpy.random import random\n\n@lbv.parallel()\ndef by_random(n):\n    return random() * n\n\nout = list(by_random.map(args))", None,
     lambda ns: len(ns["out"]) == 10),
    ("sync_imports cannot do `import ... as`",
     "with direct_view.sync_imports():\n    import numpy as np\n\n@lbv.parallel()\ndef by_random(n):\n    return np.random.random() * n\n\nout = list(by_random.map(args))", "NameError",
     None),
    ("rename an imported module by assignment",
     "with direct_view.sync_imports():\n    import numpy\n\n@lbv.parallel()\ndef by_random(n):\n    np = numpy\n    return np.random.random() * n\n\nout = list(by_random.map(args))", None,
     lambda ns: len(ns["out"]) == 10),
    ("ordered=False: results as they finish",
     "with direct_view.sync_imports():\n    import numpy\n    import time\n\n@lbv.parallel(ordered=False)\ndef unordered_by_random(n):\n"
     "    np = numpy\n    time.sleep((n % 3.) / 100.)\n    return n\n\nout = list(unordered_by_random.map(args))", None,
     lambda ns: sorted(ns["out"]) == list(range(10))),
    ("%px", "direct_view.activate()\nwith direct_view.sync_imports():\n    import numpy\n\n%px numpy.random.random()", None,
     lambda ns: True),
    ("%%px cell", "%%px\n\nimport numpy as np\n\nnp.random.random()", None, lambda ns: True),
    ("%%px with a magic on the engines",
     "%%px\n\ndef fibonacci(n):\n    if n < 2:\n        return 1\n    else:\n        return fibonacci(n-2) + fibonacci(n-1)\n\n%timeit -n1 -r1 fibonacci(20)", None,
     lambda ns: True),
    ("variables persist on the engines",
     "direct_view['my_var'] = 20\n\n%px print(my_var)\nprint('randomizing my_var')\n%px import random; my_var = random.random()\n%px print(my_var)", None,
     lambda ns: all(0 <= v < 1 for v in ns["direct_view"]["my_var"])),
    ("direct_view['my_var'] collects from every engine", "values = direct_view['my_var']", None,
     lambda ns: len(ns["values"]) == len(ns["pc"].ids)),
    ("clear() starts the engines clean", "direct_view.clear()\n\n%px print(my_var)", "NameError", None),
    ("%px supports `import ... as`", "direct_view.clear()\n\n%px import numpy as np\n\n%px np.random.random()", None,
     lambda ns: True),
]


def run(pc, shell):
    shell.user_ns["pc"] = pc
    # Show execute output and errors the way the notebook would.
    for title, source, expect, ok in CELLS:
        step(title)
        print("\n".join("    | " + line for line in source.splitlines()))
        r = shell.run_cell(source, store_history=True)
        err = r.error_in_exec or r.error_before_exec
        if expect:
            names = set()
            e = err
            while e is not None:
                names |= {type(e).__name__, getattr(e, "ename", "")}
                names |= {x[0] for x in getattr(e, "elist", [])}
                # %px raises AlreadyDisplayedError around the engines' CompositeError
                e = getattr(e, "original_error", None)
            check(err is not None and expect in names, f"the tutorial's {expect} came back from the engines")
            continue
        check(err is None, "cell ran without error" + (f" (got {err!r})" if err else ""))
        check(ok(shell.user_ns), "result as the tutorial shows")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", type=int, default=4)
    p.add_argument("--hub", default=os.path.join(REPO, "target", "release", "ippx-hub"))
    p.add_argument("--profile-dir", default=None, help="default: a fresh temporary directory")
    a = p.parse_args()

    from IPython.core.interactiveshell import InteractiveShell

    tmp = None
    if a.profile_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="ippx-demo-")
        a.profile_dir = tmp.name
    c = Config()
    c.LocalControllerLauncher.controller_cmd = [a.hub]
    cluster = ipp.Cluster(config=c, n=a.engines, profile_dir=a.profile_dir, controller_ip="127.0.0.1", log_level=30)
    t0 = time.time()
    print(f"starting ippx controller ({a.hub}) and {a.engines} stock engines in {a.profile_dir}", flush=True)
    pc = cluster.start_and_connect_sync()
    try:
        pc.wait_for_engines(a.engines, timeout=60)
        print(f"cluster up in {time.time() - t0:.1f} s: engines {pc.ids}")
        shell = InteractiveShell.instance()
        run(pc, shell)
        print("\nseed workflow: all steps passed on ippx")
    finally:
        pc.close()
        cluster.stop_cluster_sync()
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
