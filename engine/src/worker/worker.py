"""The Python half of ippx-engine's worker process.

The Rust supervisor owns every socket, the request queue, statuses, headers and
metadata; this loop only runs what needs Python: unpack/call/serialize for apply,
ZMQInteractiveShell.run_cell for execute, reset for clear. Messages that ipykernel's shell
machinery would publish (execute_result, display_data, error, data_message, ...) reach
the supervisor through ShimSession.send, which packs the content with the controller's
packer, so the content is what a stock engine sends. sys.stdout/sys.stderr write straight
to fds 1 and 2, which the supervisor reads (with whatever C code and subprocesses print).
"""

import io
import json
import os
import signal
import sys

import _ippx_worker as _link  # native: recv() -> list[bytes], send(list[bytes])

from ipyparallel.serialize import serialize_object, unpack_apply_message


class _SerializedCython:
    """Import hook: `%%cython` cells on many engines of one machine compile into one
    shared cache directory at the same moment, and an engine that finds a module being
    written by another can import half a file. The hook wraps the magic in an exclusive
    file lock on that directory, so one engine compiles and the others find it built."""

    target = "Cython.Build.IpythonMagic"

    def find_spec(self, fullname, path, target=None):
        if fullname != self.target:
            return None
        import importlib.machinery
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        inner = spec.loader
        hook = self

        class Loader(importlib.abc.Loader):
            def create_module(self, spec):
                return inner.create_module(spec)

            def exec_module(self, module):
                inner.exec_module(module)
                hook.patch(module)

        spec.loader = Loader()
        return spec

    @staticmethod
    def patch(module):
        import fcntl
        import functools
        magics = getattr(module, "CythonMagics", None)
        if magics is None or not hasattr(magics, "cython"):
            return
        orig = magics.cython

        @functools.wraps(orig)
        def cython(self, line, cell):
            lib_dir = os.path.join(module.get_ipython_cache_dir(), "cython")
            os.makedirs(lib_dir, exist_ok=True)
            with open(os.path.join(lib_dir, ".ippx-engine.lock"), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    return orig(self, line, cell)
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)

        magics.cython = cython
        # the magic is registered from the class's method table
        try:
            magics.magics["cell"]["cython"] = "cython"
        except Exception:
            pass


import importlib.abc  # noqa: E402
sys.meta_path.insert(0, _SerializedCython())


def _bytes(b):
    if isinstance(b, bytes):
        return b
    return memoryview(b).cast("B").tobytes() if not isinstance(b, bytearray) else bytes(b)


def _make_session(conf):
    from jupyter_client.session import Session

    class ShimSession(Session):
        """A Session whose send forwards (msg_type, topic, packed content, buffers)."""

        def send(self, stream, msg_or_type, content=None, parent=None, ident=None,
                 buffers=None, track=False, header=None, metadata=None):
            if isinstance(msg_or_type, dict):
                msg = msg_or_type
                msg_type = msg["header"]["msg_type"] if "header" in msg else msg["msg_type"]
                content = msg.get("content", content)
                buffers = buffers if buffers is not None else msg.get("buffers")
            else:
                msg_type = msg_or_type
                msg = self.msg(msg_type, content=content, parent=parent or {}, header=header, metadata=metadata)
            if content is None:
                content = {}
            if isinstance(ident, list):
                ident = ident[0] if ident else None
            topic = ident if isinstance(ident, bytes) else (ident.encode() if ident else b"")
            parts = [b"pub", msg_type.encode(), topic, self.pack(content)]
            parts.extend(_bytes(b) for b in (buffers or []))
            _link.send(parts)
            return msg

    return ShimSession(
        packer=conf["pack"], unpacker=conf["unpack"], key=b"", session=conf["uuid"],
        username=conf.get("username", "username"),
    )


def _literal(v):
    import ast
    try:
        return ast.literal_eval(v)
    except Exception:
        return v


class Worker:
    def __init__(self, conf):
        self.conf = conf
        self.engine_id = conf["engine_id"]
        self.uuid = conf["uuid"]
        # Unbuffered text streams on the captured fds: every write reaches the supervisor
        # at once, ahead of the reply that follows it.
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "wb", closefd=False), encoding="utf-8",
                                      errors="backslashreplace", write_through=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "wb", closefd=False), encoding="utf-8",
                                      errors="backslashreplace", write_through=True)
        sys.stdin = open(os.devnull)
        # Ignored while idle, as a kernel does; restored around each request.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.session = _make_session(conf)
        self._init_shell()

    def _topic(self, what):
        return f"engine.{self.engine_id}.{what}".encode()

    def _init_shell(self):
        from traitlets.config import Config
        from IPython.core.profiledir import ProfileDir
        from ipykernel.zmqshell import ZMQInteractiveShell
        from ipyparallel.engine.datapub import ZMQDataPublisher

        cfg = Config()
        # Many engines share one profile: an on-disk history database would be a lock
        # they all contend for, and execution counts do not need it.
        cfg.HistoryManager.hist_file = ":memory:"
        for name, value in self.conf.get("shell_config", []):
            cfg.InteractiveShell[name] = _literal(value)
        pdir = self.conf.get("profile_dir")
        profile_dir = None
        if pdir:
            try:
                profile_dir = ProfileDir.create_profile_dir(pdir, cfg)
            except Exception as e:  # an unwritable profile is not fatal
                print(f"ippx-engine: profile dir {pdir}: {e}", file=sys.stderr)
        self.shell = shell = ZMQInteractiveShell.instance(config=cfg, profile_dir=profile_dir)
        dh = shell.displayhook
        dh.session = self.session
        dh.pub_socket = None
        dh.topic = self._topic("execute_result")
        shell.display_pub.session = self.session
        shell.display_pub.pub_socket = None
        shell.display_pub.topic = self._topic("displaypub")
        data_pub = shell.data_pub = ZMQDataPublisher(config=cfg)
        shell.configurables.append(data_pub)
        data_pub.session = self.session
        data_pub.pub_socket = None
        # what ipengine's kernel leaves in the namespace
        shell.user_ns["__ipp_engine_id"] = self.engine_id

    def startup(self):
        """Profile startup files, $PYTHONSTARTUP, then --s scripts and --c code, as
        IPKernelApp.init_code does for ipengine."""
        shell = self.shell
        files = []
        if shell.profile_dir is not None:
            sdir = shell.profile_dir.startup_dir
            if os.path.isdir(sdir):
                files += sorted(os.path.join(sdir, f) for f in os.listdir(sdir) if f.endswith((".py", ".ipy")))
        ps = os.environ.get("PYTHONSTARTUP")
        if ps and os.path.isfile(ps):
            files.append(ps)
        files += list(self.conf.get("startup_script", []))
        for f in files:
            try:
                if f.endswith(".ipy"):
                    shell.safe_execfile_ipy(f)
                else:
                    shell.safe_execfile(f, shell.user_ns, raise_exceptions=False)
            except SystemExit:
                raise
            except Exception:
                shell.showtraceback()
        for line in self.conf.get("startup_command", []):
            shell.run_cell(line, store_history=False)
        import IPython
        return {
            "implementation": "ipython",
            "implementation_version": IPython.__version__,
            "language_info": {
                "name": "python",
                "version": sys.version.split()[0],
                "mimetype": "text/x-python",
                "codemirror_mode": {"name": "ipython", "version": sys.version_info[0]},
                "pygments_lexer": "ipython3",
                "nbconvert_exporter": "python",
                "file_extension": ".py",
            },
            "banner": shell.banner,
            "pid": os.getpid(),
        }

    def engine_info(self, method=None):
        d = {"engine_uuid": self.uuid, "engine_id": self.engine_id}
        if method:
            d["method"] = method
        return d

    def _error_content(self, e, method):
        shell = self.shell
        try:
            shell.showtraceback()
        except Exception as tb_error:
            print(f"ippx-engine: failed to show traceback for {e}: {tb_error}", file=sys.__stderr__)
        try:
            evalue = str(e)
        except Exception as str_error:
            evalue = f"Failed to cast exception to string: {str_error}"
        content = {
            "traceback": getattr(shell, "_last_traceback", None) or [],
            "ename": str(type(e).__name__),
            "evalue": evalue,
            "engine_info": self.engine_info(method),
            "status": "error",
        }
        shell._last_traceback = None
        return content

    def apply(self, msg_id, bufs):
        shell = self.shell
        try:
            working = shell.user_ns
            f, args, kwargs = unpack_apply_message(bufs, working, copy=False)
            # Called directly rather than through exec() of a generated assignment as
            # ipykernel's engine does: compiling that line was a third of a no-op apply.
            # The function's globals are its own (user_ns for interactive functions).
            signal.signal(signal.SIGINT, signal.default_int_handler)
            try:
                result = f(*args, **kwargs)
            finally:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            result_buf = serialize_object(result, buffer_threshold=self.session.buffer_threshold,
                                          item_threshold=self.session.item_threshold)
        except BaseException as e:
            content = self._error_content(e, "apply")
            self._reply("error", content["ename"], self.session.pack(content), [])
            return
        self._reply("ok", "", b"", result_buf)

    def execute(self, content):
        shell = self.shell
        code = content.get("code", "")
        silent = content.get("silent", False)
        store_history = content.get("store_history", not silent)
        user_expressions = content.get("user_expressions", {}) or {}
        if not silent:
            self.session.send(None, "execute_input",
                              {"code": code, "execution_count": shell.execution_count},
                              ident=self._topic("execute_input"))
        reply = {}
        try:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            try:
                res = shell.run_cell(code, store_history=store_history, silent=silent)
            finally:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
        except BaseException as e:  # KeyboardInterrupt between run_cell's own guards
            reply = self._error_content(e, "execute")
            reply["execution_count"] = shell.execution_count - 1
            reply["user_expressions"] = {}
            reply["payload"] = []
            self._reply("error", reply["ename"], self.session.pack(reply), [])
            return
        err = res.error_before_exec if res.error_before_exec is not None else res.error_in_exec
        if res.success and not getattr(shell, "_last_traceback_during_displayhook", False):
            reply["status"] = "ok"
        else:
            reply["status"] = "error"
            reply.update({
                "traceback": shell._last_traceback or [],
                "ename": str(type(err).__name__),
                "evalue": str(err),
                "engine_info": self.engine_info("execute"),
            })
        reply["execution_count"] = shell.execution_count - 1
        if reply["status"] == "ok":
            reply["user_expressions"] = shell.user_expressions(user_expressions)
        else:
            reply["user_expressions"] = {}
        reply["payload"] = shell.payload_manager.read_payload()
        shell.payload_manager.clear_payload()
        from ipykernel.jsonutil import json_clean
        reply = json_clean(reply)
        self._reply(reply["status"], reply.get("ename", ""), self.session.pack(reply), [])

    def clear(self):
        self.shell.reset(False)
        self.shell.user_ns["__ipp_engine_id"] = self.engine_id
        self._reply("ok", "", b"", [])

    def _reply(self, status, ename, packed, bufs):
        parts = [b"reply", status.encode(), ename.encode(), packed]
        parts.extend(_bytes(b) for b in bufs)
        _link.send(parts)

    def run(self):
        unpack = self.session.unpack
        while True:
            try:
                job = _link.recv()
            except KeyboardInterrupt:
                continue
            if job is None:
                return
            kind = job[0]
            try:
                if kind == b"apply":
                    self.apply(job[1].decode(), job[3:])
                elif kind == b"execute":
                    header = unpack(job[2]) if job[2] else {}
                    parent = {"header": header, "msg_id": header.get("msg_id"), "msg_type": header.get("msg_type"),
                              "parent_header": {}, "metadata": {}, "content": {}}
                    self.shell.set_parent(parent)
                    self.execute(unpack(job[1]))
                elif kind == b"clear":
                    self.clear()
                else:
                    self._reply("error", "ValueError", self.session.pack(
                        {"status": "error", "ename": "ValueError", "evalue": f"unknown job {kind!r}",
                         "traceback": [], "engine_info": self.engine_info()}), [])
            except KeyboardInterrupt:
                # an interrupt that landed after the request's own handler finished
                pass


def main():
    first = _link.recv()
    conf = json.loads(first[1])
    try:
        w = Worker(conf)
        info = w.startup()
    except SystemExit:
        raise
    except BaseException:
        import traceback
        traceback.print_exc()
        sys.stderr.flush()
        raise SystemExit(1)
    _link.send([b"ready", json.dumps(info).encode()])
    w.run()
