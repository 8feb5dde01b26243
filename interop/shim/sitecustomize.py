"""ippx interop shim: make ipyparallel launch a substitute controller.

Put this folder on PYTHONPATH and set ``IPP_CONTROLLER_CMD`` to a shell-style command
line (e.g. ``/repo/target/release/ippx-hub`` or ``python -m ipyparallel.controller
--Session.packer=msgpack``). Every Python process that inherits that environment
(pytest, ``ipcluster`` and its daemonized children, ...) then starts that command
wherever ipyparallel would have started ``[sys.executable, -m, ipyparallel.controller]``:

* ``ipyparallel.cluster.launcher.ipcontroller_cmd_argv`` - the list the stock test-suite
  ``setup()`` builds its controller command from - is replaced *in place* (the tests
  import the list object itself);
* ``LocalControllerLauncher.find_args`` - used by ``ipp.Cluster`` / ``ipcluster`` - is
  wrapped to swap a leading default python command for the substitute (the launcher
  copied the default list when its class was defined, so mutating the list is not
  enough there).

The patch is applied lazily, right after ``ipyparallel.cluster.launcher`` is first
imported, so processes that never use ipyparallel pay nothing. Without
``IPP_CONTROLLER_CMD`` this module does nothing at all.

If ``IPPX_SHIM_LOG`` names a file, each controller command line the shim hands out is
appended to it as one JSON object per line (used by run_stock.py to prove that the
substitute - not the stock controller - was what the tests ran against).
"""

import os

_CMD = os.environ.get("IPP_CONTROLLER_CMD", "").strip()
# With IPP_ENGINE_CMD set too, engines are swapped the same way (e.g. for ippx-engine).
_ENGINE_CMD = os.environ.get("IPP_ENGINE_CMD", "").strip()
_TARGET = "ipyparallel.cluster.launcher"


def _log(launcher_obj, kind, args):
    path = os.environ.get("IPPX_SHIM_LOG")
    if not path or getattr(launcher_obj, "_ippx_shim_logged", False):
        return  # args are computed more than once per launch: log each launcher once
    try:
        launcher_obj._ippx_shim_logged = True
    except Exception:
        pass
    try:
        import json

        with open(path, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "via": kind, "argv": list(args)}) + "\n")
    except Exception:
        pass


def _patch(launcher):
    import shlex
    import sys

    if getattr(launcher, "_ippx_shim_patched", False):
        return
    # Without IPP_CONTROLLER_CMD the controller stays stock (only the engine is swapped);
    # setup launches are then logged against the stock command line.
    stock = [sys.executable, "-m", "ipyparallel.controller"]
    engine_sub = shlex.split(_ENGINE_CMD) if _ENGINE_CMD else []
    substitute = shlex.split(_CMD) if _CMD else list(launcher.ipcontroller_cmd_argv)

    # 1. stock test-suite setup(): module-level list, imported by reference
    launcher.ipcontroller_cmd_argv[:] = substitute

    # the test-suite's TestProcessLauncher gets its argv from LocalProcessLauncher.find_args
    local_find_args = launcher.LocalProcessLauncher.find_args

    def local_find_args_logged(self):
        args = list(local_find_args(self))
        if args[: len(substitute)] == substitute and "ipyparallel.engine" not in args and not (
            engine_sub and args[: len(engine_sub)] == engine_sub
        ):
            _log(self, "setup", args)
        return args

    launcher.LocalProcessLauncher.find_args = local_find_args_logged

    # 2. Cluster / ipcluster: LocalControllerLauncher copied the default at class creation
    ctl_find_args = launcher.LocalControllerLauncher.find_args

    def ctl_find_args_substituted(self):
        args = list(ctl_find_args(self))
        if _CMD and args[: len(stock)] == stock:
            args = substitute + args[len(stock) :]
        _log(self, "cluster", args)
        return args

    launcher.LocalControllerLauncher.find_args = ctl_find_args_substituted

    # 3. the engine, with $IPP_ENGINE_CMD: the test-suite's add_engines() and
    # LocalEngineLauncher.engine_cmd (ipp.Cluster, ipcluster) both use this one list object
    if engine_sub:
        launcher.ipengine_cmd_argv[:] = engine_sub

        def log_engine_launches(cls):
            # the test-suite's engines come through LocalProcessLauncher.find_args,
            # Cluster's through LocalEngineLauncher's own override
            inner = cls.find_args

            def find_args(self):
                args = list(inner(self))
                if args[: len(engine_sub)] == engine_sub:
                    _log(self, "engine", args)
                return args

            cls.find_args = find_args

        log_engine_launches(launcher.LocalProcessLauncher)
        log_engine_launches(launcher.LocalEngineLauncher)
    launcher._ippx_shim_patched = True


def _install_hook():
    import importlib.abc
    import importlib.machinery
    import sys

    class _PatchingLoader(importlib.abc.Loader):
        def __init__(self, inner):
            self._inner = inner

        def __getattr__(self, name):  # get_source, get_filename, ... for tracebacks
            return getattr(self._inner, name)

        def create_module(self, spec):
            return self._inner.create_module(spec)

        def exec_module(self, module):
            self._inner.exec_module(module)
            _patch(module)

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname != _TARGET:
                return None
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
            if spec is None or spec.loader is None:
                return None
            spec.loader = _PatchingLoader(spec.loader)
            return spec

    if _TARGET in sys.modules:  # already imported (unlikely this early): patch now
        _patch(sys.modules[_TARGET])
    else:
        sys.meta_path.insert(0, _Finder())


if _CMD or _ENGINE_CMD:
    try:
        _install_hook()
    except Exception as e:  # never break interpreter start-up
        import sys

        print(f"ippx interop shim: not installed: {e!r}", file=sys.stderr)
