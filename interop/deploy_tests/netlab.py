"""A LAN of network namespaces for the deployment tests (issue 13).

One namespace per host plus a switch namespace holding the bridge, veth pairs between
them, addresses from a 10.x subnet checked to be unused here, no default route anywhere
(so nothing can leave the LAN), a hosts file per namespace (`ip netns exec` bind-mounts
/etc/netns/<ns>/hosts over /etc/hosts) and, per process, its own hostname
(`unshare --uts`). Every process started here gets SIGKILL when the test process dies
(PR_SET_PDEATHSIG), and `close()` removes the namespaces and their /etc/netns entries;
namespaces left by a test that was SIGKILLed are removed by the next one (their names
carry the creating pid).
"""

import ctypes
import ipaddress
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

PREFIX = "ippxlan"
_libc = ctypes.CDLL("libc.so.6", use_errno=True)
PR_SET_PDEATHSIG = 1


def _die_with_parent():
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    os.setsid()


def sh(*argv, check=True, timeout=30, **kw):
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{shlex.join(map(str, argv))}: exit {r.returncode}\n{r.stdout}{r.stderr}")
    return r


def unavailable_reason() -> str | None:
    """Why a namespace LAN cannot be built here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "unshare", "ss"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


def used_networks() -> list:
    nets = []
    for line in sh("ip", "-o", "-4", "addr", "show").stdout.splitlines():
        m = re.search(r"inet (\S+)", line)
        if m:
            nets.append(ipaddress.ip_interface(m[1]).network)
    for line in sh("ip", "-4", "route", "show", "table", "all").stdout.splitlines():
        tok = line.split()[0] if line.split() else ""
        if tok and tok[0].isdigit():
            try:
                nets.append(ipaddress.ip_network(tok, strict=False))
            except ValueError:
                pass
    return nets


def pick_subnet(candidates=("10.213.77.0/24", "10.231.91.0/24", "10.247.53.0/24")) -> ipaddress.IPv4Network:
    used = used_networks()
    for c in candidates:
        net = ipaddress.ip_network(c)
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            return net
    raise RuntimeError(f"every candidate subnet overlaps a network in use here: {used}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def sweep_stale():
    """Namespaces of earlier runs whose test process is gone."""
    for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(rf"{PREFIX}(\d+)-\w+", name)
        if m and not _alive(int(m[1])):
            sh("ip", "netns", "del", name, check=False)
            shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)


class Lab:
    def __init__(self, hosts: dict, workdir: Path):
        """`hosts`: {short name: last octet}. Names are the hosts' hostnames too."""
        sweep_stale()
        self.net = pick_subnet()
        self.tag = f"{PREFIX}{os.getpid()}"
        self.sw = f"{self.tag}-sw"
        self.hosts = dict(hosts)
        self.workdir = workdir
        self.procs: list[subprocess.Popen] = []
        self.made: list[str] = []
        self.made_etc_netns = not os.path.isdir("/etc/netns")
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def ns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def ip(self, host: str) -> str:
        return str(self.net.network_address + self.hosts[host])

    def _build(self):
        sh("ip", "netns", "add", self.sw)
        self.made.append(self.sw)
        sh("ip", "-n", self.sw, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.sw, "link", "set", "br0", "up")
        sh("ip", "-n", self.sw, "link", "set", "lo", "up")
        hosts_lines = ["127.0.0.1 localhost"] + [f"{self.ip(h)} {h}" for h in self.hosts]
        for i, h in enumerate(self.hosts):
            ns = self.ns(h)
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
            d = Path(f"/etc/netns/{ns}")
            d.mkdir(parents=True, exist_ok=True)
            (d / "hosts").write_text("\n".join(hosts_lines) + "\n")
            a, b = f"ippxv{os.getpid() % 100000}{i}a", f"ippxv{os.getpid() % 100000}{i}b"
            # made inside the switch namespace, so nothing ever appears in the root one
            sh("ip", "-n", self.sw, "link", "add", a, "type", "veth", "peer", "name", b)
            sh("ip", "-n", self.sw, "link", "set", b, "netns", ns)
            sh("ip", "-n", self.sw, "link", "set", a, "master", "br0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "set", b, "name", "eth0")
            sh("ip", "-n", ns, "addr", "add", f"{self.ip(h)}/{self.net.prefixlen}", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")

    def argv(self, host: str, argv, hostname: str | None = None) -> list[str]:
        hn = hostname or host
        return ["ip", "netns", "exec", self.ns(host), "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', hn,
                *map(str, argv)]

    def spawn(self, host: str, argv, env: dict, log: Path, hostname: str | None = None) -> subprocess.Popen:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as f:
            f.write(("$ " + shlex.join(map(str, argv)) + "\n").encode())
            f.flush()
            p = subprocess.Popen(self.argv(host, argv, hostname), stdin=subprocess.DEVNULL, stdout=f,
                                 stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
        self.procs.append(p)
        return p

    def run(self, host: str, argv, env: dict, timeout: float, hostname: str | None = None):
        return subprocess.run(self.argv(host, argv, hostname), capture_output=True, text=True, env=env,
                              timeout=timeout, preexec_fn=_die_with_parent)

    @staticmethod
    def stop(p: subprocess.Popen, grace: float = 5.0):
        if p.poll() is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=5)

    def close(self):
        for p in reversed(self.procs):
            try:
                self.stop(p)
            except Exception:
                pass
        # a process still in a namespace keeps it alive: kill whatever is left there
        for ns in self.made:
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        time.sleep(0.2) if self.made else None
        for ns in reversed(self.made):
            sh("ip", "netns", "del", ns, check=False)
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)
        self.made.clear()
        if self.made_etc_netns:
            try:
                os.rmdir("/etc/netns")
            except OSError:
                pass  # not empty: someone else's namespaces
