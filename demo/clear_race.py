"""The seed notebook's In [23]: a non-blocking dv.clear(), then a blocking execute that
defines a name. Is the clear applied before the execute (the name survives)?
usage: .venv/bin/python demo/clear_race.py HUB|stock ENGINE|stock [ROUNDS]

HUB / ENGINE: a controller / engine command, or "stock" for ipcontroller / ipengine.
Prints how often the execute overtook the clear (then y is gone, the clear ran after it)."""
import sys
from collections import Counter
import ipyparallel as ipp
from traitlets.config import Config

hub, engine = sys.argv[1], sys.argv[2]
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 30
c = Config()
if hub != "stock":
    c.LocalControllerLauncher.controller_cmd = [hub]
if engine != "stock":
    c.LocalEngineSetLauncher.engine_cmd = [engine]
with ipp.Cluster(config=c, n=2, controller_ip="127.0.0.1", log_level=40) as rc:
    rc.wait_for_engines(2, timeout=60)
    dv = rc[:]                           # block=False, as in the notebook
    seen = Counter()
    for i in range(rounds):
        dv.clear()                       # non-blocking, control channel
        dv.execute("y = 2", block=True)  # blocking, MUX channel
        dv.execute("r = 'y' in dir()", block=True)
        try:
            seen.update(dv.pull("r", block=True))
        except ipp.CompositeError as e:  # the clear ran later still, after the line above
            seen.update(["later"] * len(e.elist))
            seen.update([True] * (len(dv) - len(e.elist)))
        rc.wait(timeout=30)
    print(f"{hub.rsplit('/', 1)[-1]} + {engine.rsplit('/', 1)[-1]}: after clear(); execute('y = 2'): "
          f"y defined {seen[True]}x, y gone (the clear ran after the execute) {seen[False] + seen['later']}x, of {2 * rounds}")
