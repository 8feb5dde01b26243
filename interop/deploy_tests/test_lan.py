"""Issue 13: ippx across a LAN, in network namespaces this test makes.

Hosts: `hub` (.1), two engine hosts `e1` (.2) and `e2` (.3) with two ippx-engines each, a
client host `cli` (.4) and a Prometheus host `mon` (.9), on a bridge; no default route,
each host its own hostname, hosts file and IPYTHONDIR, and nothing passed between them but
what an administrator would copy: e1 gets a copy of the hub's engine connection file, e2
the JSON from `ippx-hub --print-connection-info=engine` in $IPP_CONNECTION_INFO, the client
a copy of the client file (or the printed JSON).

1. `--location=<hub address>`: the seed notebook (demo/seed_workflow.py --client-file) runs
   from the client host on the four remote engines; Prometheus on `mon` scrapes the hub
   across the LAN; every Grafana dashboard query returns series with the expected labels
   (deploy/grafana/check_dashboard.py); `ss -ltn` in the hub's namespace shows only the
   published ports and the metrics port.
2. No --location: the hub's hostname (its own UTS namespace) is the location, resolved by
   each host through its own hosts file; four engines and a client again.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import netlab  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
HUB = Path(os.environ.get("IPPX_HUB_BIN", TARGET / "release" / "ippx-hub"))
ENGINE = Path(os.environ.get("IPPX_ENGINE_BIN", TARGET / "release" / "ippx-engine"))
PY = REPO / ".venv" / "bin" / "python"
PORTS = (21000, 21017)
METRICS = 9810
KEY = "lan-test-5d1c9a4e0b7f"
HOSTS = {"hub": 1, "e1": 2, "e2": 3, "cli": 4, "mon": 9}


def base_env(home: Path) -> dict:
    """A host's environment: its own HOME and IPYTHONDIR, nothing inherited that names
    another host's files."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IPP", "IPYTHON", "JPY", "PYTEST"))}
    env.update({"HOME": str(home), "IPYTHONDIR": str(home / "ipython"), "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"})
    env.pop("IPPX_CONTROLLER_CMD", None)
    return env


@pytest.fixture
def lab(tmp_path):
    why = netlab.unavailable_reason()
    if why:
        if os.environ.get("CI") or os.environ.get("IPPX_REQUIRE_LAN"):
            pytest.fail(f"the LAN test must run here but cannot: {why}")
        pytest.skip(f"LAN test: {why}")
    for exe in (HUB, ENGINE):
        if not os.access(exe, os.X_OK):
            pytest.fail(f"{exe} not built")
    lab = netlab.Lab(HOSTS, tmp_path)
    try:
        yield lab
    finally:
        lab.close()
        leftover = [l for l in netlab.sh("ip", "netns", "list").stdout.splitlines() if l.startswith(lab.tag)]
        assert not leftover, f"namespaces left behind: {leftover}"


def wait_http(lab, host, url, timeout, env):
    """Polls `url` from inside `host`'s namespace (the only place it is reachable)."""
    code = ("import sys, urllib.request\n"
            f"try:\n    urllib.request.urlopen({url!r}, timeout=2); sys.exit(0)\n"
            "except Exception as e:\n    print(e); sys.exit(1)\n")
    deadline = time.monotonic() + timeout
    while True:
        r = lab.run(host, [PY, "-c", code], env=env, timeout=10)
        if r.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} from {host}: {r.stdout}{r.stderr}")
        time.sleep(0.5)


def start_hub(lab, home, extra, hostname="hub"):
    env = base_env(home) | {"IPP_SESSION_KEY": KEY}
    args = ["--ip=0.0.0.0", f"--ports={PORTS[0]}-{PORTS[1]}", f"--metrics-addr={lab.ip('hub')}:{METRICS}",
            "--ping=1000", "--log-level=20", *extra]
    p = lab.spawn("hub", [HUB, *args], env, home / "hub.log", hostname=hostname)
    wait_http(lab, "hub", f"http://{lab.ip('hub')}:{METRICS}/readyz", 30, env)
    # the printed info is the written file (checked on loopback in test_deploy.py too)
    printed = {}
    for which in ("engine", "client"):
        r = lab.run("hub", [HUB, *args, f"--print-connection-info={which}"], env=env, timeout=30, hostname=hostname)
        assert r.returncode == 0, r.stderr
        printed[which] = json.loads(r.stdout)
    sec = home / "ipython" / "profile_default" / "security"
    assert json.loads((sec / "ipcontroller-engine.json").read_text()) == printed["engine"]
    return p, sec, printed


def start_engines(lab, root, sec, printed):
    """e1: a copied file (--file); e2: $IPP_CONNECTION_INFO. Two engines per host."""
    procs = []
    e1 = root / "e1"
    (e1 / "conn").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sec / "ipcontroller-engine.json", e1 / "conn" / "engine.json")
    for i in range(2):
        procs.append(lab.spawn("e1", [ENGINE, f"--file={e1 / 'conn' / 'engine.json'}", "--log-level=20"],
                               base_env(e1), e1 / f"engine{i}.log"))
    e2 = root / "e2"
    env2 = base_env(e2) | {"IPP_CONNECTION_INFO": json.dumps(printed["engine"])}
    for i in range(2):
        procs.append(lab.spawn("e2", [ENGINE, "--log-level=20"], env2, e2 / f"engine{i}.log"))
    return procs


CHECK_CLIENT = r"""
import json, socket, sys, collections
import ipyparallel as ipp
rc = ipp.Client(sys.argv[1], timeout=30)
rc.wait_for_engines(4, timeout=90)
hosts = rc[:].apply_sync(socket.gethostname)
addrs = rc[:].apply_sync(lambda: __import__("socket").gethostbyname(__import__("socket").gethostname()))
print(json.dumps({"ids": rc.ids, "hosts": hosts, "addrs": addrs, "me": socket.gethostname()}))
rc.close()
"""


CLEAR_ENGINES = r"""
import sys, ipyparallel as ipp
rc = ipp.Client(sys.argv[1])
rc.wait_for_engines(4, timeout=30)
rc[:].clear(block=True)
rc.close()
"""


def seed_with_one_retry(run_seed, clear_engines):
    """The seed notebook, once more after a failure. The notebook itself has ordering races
    that no controller can close (stock's neither): cell 6's non-blocking push
    `direct_view['CONSTANT'] = 5` travels on the MUX connection, the load-balanced map
    after it on the task connection, and under load an engine can get the task first (seen
    once here while a docker build ran beside the test). A second failure fails the test;
    the first is printed loudly either way."""
    r = run_seed()
    if r.returncode == 0:
        return r
    failed = [l.strip() for l in r.stdout.splitlines() if "FAILED: cell" in l]
    print(f"\n!!! seed workflow attempt 1 failed ({failed or r.stdout[-2000:] + r.stderr[-2000:]}); clearing the engines' "
          "namespaces and running it again\n", flush=True)
    c = clear_engines()
    assert c.returncode == 0, c.stdout + c.stderr
    return run_seed()


def check_client(lab, root, conn_file, timeout=150):
    cli = root / "cli"
    cli.mkdir(parents=True, exist_ok=True)
    r = lab.run("cli", [PY, "-c", CHECK_CLIENT, conn_file], env=base_env(cli), timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def listening_ports(lab, host):
    r = lab.run(host, ["ss", "-ltnH"], env=dict(os.environ), timeout=10)
    assert r.returncode == 0, r.stderr
    ports = set()
    for line in r.stdout.splitlines():
        local = line.split()[3]
        ports.add(int(local.rsplit(":", 1)[1]))
    return ports


def start_prometheus(lab, root):
    mon = root / "mon"
    (mon / "data").mkdir(parents=True, exist_ok=True)
    cfg = mon / "prometheus.yml"
    cfg.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: ippx-hub\n    static_configs:\n"
        f"      - targets: ['{lab.ip('hub')}:{METRICS}']\n"
    )
    if shutil.which("prometheus") is None:
        pytest.fail("the prometheus server (Debian package prometheus) is not installed; .ci/run installs it")
    env = base_env(mon)
    p = lab.spawn("mon", ["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={mon / 'data'}",
                          f"--web.listen-address={lab.ip('mon')}:9090", "--log.level=warn"], env, mon / "prometheus.log")
    wait_http(lab, "mon", f"http://{lab.ip('mon')}:9090/-/ready", 60, env)
    return p, f"http://{lab.ip('mon')}:9090"


@pytest.mark.timeout(480)
def test_lan(lab, tmp_path):
    t0 = time.monotonic()
    root = tmp_path
    for h in HOSTS:  # nothing can leave the LAN
        routes = lab.run(h, ["ip", "route", "show", "table", "all"], env=dict(os.environ), timeout=10).stdout
        assert "default" not in routes, f"{h}: {routes}"
    # ---------------------------------------------------------------- 1. --location=<address>
    hub_home = root / "hub-a"
    hub, sec, printed = start_hub(lab, hub_home, [f"--location={lab.ip('hub')}"])
    log = (hub_home / "hub.log").read_text()
    assert f"engines will dial tcp://{lab.ip('hub')}: registration={PORTS[0]}" in log, log[-3000:]
    assert "WARNING" not in log, log[-3000:]
    prom, prom_url = start_prometheus(lab, root)
    engines = start_engines(lab, root, sec, printed)
    # Prometheus has the counters' starting values before any work runs (see
    # check_dashboard.py scraped; without this the seed's tasks could all fall before
    # the first scrape, and the latency panels would have nothing to show)
    r = lab.run("mon", [PY, REPO / "deploy" / "grafana" / "check_dashboard.py", "scraped", prom_url,
                        "--job", "ippx-hub", "--wait", "60"], env=base_env(root / "mon"), timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    cli = root / "cli"
    (cli / "conn").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sec / "ipcontroller-client.json", cli / "conn" / "client.json")
    got = check_client(lab, root, str(cli / "conn" / "client.json"))
    assert sorted(got["ids"]) == [0, 1, 2, 3], got
    assert sorted(got["hosts"]) == ["e1", "e1", "e2", "e2"] and got["me"] == "cli", got
    assert sorted(got["addrs"]) == sorted([lab.ip("e1")] * 2 + [lab.ip("e2")] * 2), got

    # the seed notebook, every cell, from the client host
    def seed_run():
        return lab.run("cli", [PY, REPO / "demo" / "seed_workflow.py", "--engines", "4",
                               "--client-file", cli / "conn" / "client.json", "--ipython-dir", cli / "seed-ipython"],
                       env=base_env(cli), timeout=300)

    seed = seed_with_one_retry(seed_run, lambda: lab.run("cli", [PY, "-c", CLEAR_ENGINES, cli / "conn" / "client.json"],
                                                           env=base_env(cli), timeout=60))
    out = seed.stdout + seed.stderr
    (root / "seed.log").write_text(out)
    assert seed.returncode == 0, out[-6000:]
    assert "seed workflow: all 26 cells passed on the running cluster" in seed.stdout, out[-6000:]
    print(f"[lan] seed workflow on the LAN done at {time.monotonic() - t0:.0f} s")

    # a broadcast and a store write, so the dashboard's broadcast and store panels have data
    r = lab.run("cli", [PY, "-c", "import sys, ipyparallel as ipp\nrc = ipp.Client(sys.argv[1])\n"
                                  "rc.wait_for_engines(4, timeout=30)\n"
                                  "assert rc.broadcast_view().apply_sync(lambda: 1) == [1] * 4\nrc.close()\n",
                        cli / "conn" / "client.json"], env=base_env(cli), timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr

    # only the published ports and the metrics port listen in the hub's namespace
    ports = listening_ports(lab, "hub")
    allowed = set(range(PORTS[0], PORTS[1] + 1)) | {METRICS}
    assert ports and ports <= allowed, f"listening outside --ports and --metrics-addr: {sorted(ports - allowed)}"
    assert METRICS in ports and PORTS[0] in ports

    # Prometheus scraped the hub across the LAN, and every dashboard query answers
    time.sleep(3)
    r = lab.run("mon", [PY, REPO / "deploy" / "grafana" / "check_dashboard.py", "live", prom_url,
                        "--job", "ippx-hub", "--wait", "90"], env=base_env(root / "mon"), timeout=150)
    print(r.stdout)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    for p in engines:
        lab.stop(p)
    lab.stop(hub)
    print(f"[lan] part 1 done at {time.monotonic() - t0:.0f} s")

    # ---------------------------------------------------------------- 2. the hub's hostname
    hub_home = root / "hub-b"
    hub, sec, printed = start_hub(lab, hub_home, [], hostname="hub")
    assert printed["engine"]["location"] == "hub", printed["engine"]
    log = (hub_home / "hub.log").read_text()
    assert f"engines will dial tcp://hub: registration={PORTS[0]}" in log, log[-3000:]
    assert "WARNING" not in log, log[-3000:]
    engines = start_engines(lab, root / "b", sec, printed)
    (cli / "conn" / "client-b.json").write_text(json.dumps(printed["client"]))
    got = check_client(lab, root, str(cli / "conn" / "client-b.json"))
    assert sorted(got["hosts"]) == ["e1", "e1", "e2", "e2"], got
    for p in engines:
        lab.stop(p)
    lab.stop(hub)
    print(f"[lan] done in {time.monotonic() - t0:.0f} s")
