"""Python side of protocol/tests/python_roundtrip.rs.

Reads one JSON request on stdin, writes one JSON answer on stdout. Frames travel as
hex strings. Python values are given as Python expressions (evaluated with only
``datetime``, ``timezone``, ``timedelta`` and ``UTC`` in scope) so that the test can
state exactly which Python types it expects (str vs bytes, int vs float, ...).

Requests:

  {"op": "probe"}
      -> {"python": ..., "jupyter_client": ..., "msgpack": ...}

  {"op": "make", "packer": "json"|"msgpack", "key": "...", "messages": [
      {"msg_type": "...", "content": "<py expr>", "metadata": "<py expr>",
       "parent": "<py expr>", "idents_hex": [...], "buffers_hex": [...]}]}
      -> {"messages": [{"frames_hex": [...], "header": {...json-able...}}]}
      Built with Session.msg + Session.serialize (plus buffers, as Session.send does).

  {"op": "check", "packer": ..., "key": ..., "messages": [
      {"frames_hex": [...], "expect": {"msg_type": "...", "content": "<py expr>",
       "metadata": "<py expr>", "parent": "<py expr>" (dates omitted from the comparison),
       "idents_hex": [...], "buffers_hex": [...]}}]}
      -> {"results": [{"accepted": bool, "error": "...", "problems": [...]}]}
      All messages go through ONE Session, so its replay protection applies across the
      batch, as in a real Python process; a message with "fresh_session": true gets a
      Session of its own instead.
"""

import json
import sys
from datetime import datetime, timedelta, timezone

UTC = timezone.utc
ENV = {"__builtins__": {}, "datetime": datetime, "timezone": timezone, "timedelta": timedelta, "UTC": UTC}


def py(expr):
    return eval(expr, dict(ENV))  # noqa: S307 - test-only, expressions come from the test


def session(req):
    from jupyter_client.session import Session

    return Session(key=req["key"].encode(), packer=req["packer"], username="username")


def same(a, b, path, problems):
    """Strict equality: types must match exactly (True != 1, 1 != 1.0, str != bytes)."""
    if type(a) is not type(b):
        problems.append(f"{path}: got {type(a).__name__} {a!r}, want {type(b).__name__} {b!r}")
    elif isinstance(a, dict):
        if list(a) != list(b):
            problems.append(f"{path}: keys {list(a)!r}, want {list(b)!r}")
        for k in b:
            if k in a:
                same(a[k], b[k], f"{path}[{k!r}]", problems)
    elif isinstance(a, list):
        if len(a) != len(b):
            problems.append(f"{path}: length {len(a)}, want {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{path}[{i}]", problems)
    elif isinstance(a, float):
        if a.hex() != b.hex():  # bit-exact, and -0.0 != 0.0
            problems.append(f"{path}: got {a!r} ({a.hex()}), want {b!r} ({b.hex()})")
    elif a != b:
        problems.append(f"{path}: got {a!r}, want {b!r}")


def jsonable(obj):
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, bytes):
        return {"__bytes__": obj.hex()}
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def make(req):
    s = session(req)
    out = []
    for m in req["messages"]:
        msg = s.msg(
            m["msg_type"],
            content=py(m.get("content", "{}")),
            parent=py(m.get("parent", "{}")),
            metadata=py(m.get("metadata", "{}")),
        )
        idents = [bytes.fromhex(i) for i in m.get("idents_hex", [])]
        frames = s.serialize(msg, ident=idents) + [bytes.fromhex(b) for b in m.get("buffers_hex", [])]
        out.append({"frames_hex": [bytes(f).hex() for f in frames], "header": jsonable(msg["header"])})
    return {"messages": out}


def check_one(s, m):
    frames = [bytes.fromhex(f) for f in m["frames_hex"]]
    expect = m["expect"]
    try:
        idents, rest = s.feed_identities(frames, copy=True)
        msg = s.deserialize(rest, content=True, copy=True)
    except Exception as e:  # what a Python peer would log and drop
        return {"accepted": False, "error": f"{type(e).__name__}: {e}", "problems": []}

    problems = []
    header = msg["header"]
    for k in ("msg_id", "msg_type", "username", "session", "version"):
        if type(header.get(k)) is not str:
            problems.append(f"header[{k!r}] is {type(header.get(k)).__name__}, want str")
    if type(msg["msg_type"]) is not str or type(msg["msg_id"]) is not str:
        problems.append("msg['msg_type'] / msg['msg_id'] are not str")
    if header.get("version") != "5.4":
        problems.append(f"version {header.get('version')!r}")
    if list(header) != ["msg_id", "msg_type", "username", "session", "date", "version"]:
        problems.append(f"header keys {list(header)!r}")
    # extract_dates turned an ISO string into an aware datetime; anything else failed to parse.
    date = header.get("date")
    if not isinstance(date, datetime):
        problems.append(f"header['date'] did not parse as a date: {date!r}")
    elif date.tzinfo is None or date.utcoffset() != timedelta(0):
        problems.append(f"header['date'] is not UTC: {date!r}")
    elif abs((datetime.now(UTC) - date).total_seconds()) > 300:
        problems.append(f"header['date'] is not now: {date!r}")
    if "msg_type" in expect and msg["msg_type"] != expect["msg_type"]:
        problems.append(f"msg_type {msg['msg_type']!r}, want {expect['msg_type']!r}")
    for part in ("content", "metadata"):
        if part in expect:
            same(msg[part], py(expect[part]), part, problems)
    if "parent" in expect:
        parent = dict(msg["parent_header"])
        want = py(expect["parent"])
        if "date" in want:
            if not isinstance(parent.get("date"), datetime):
                problems.append(f"parent date did not parse: {parent.get('date')!r}")
            parent.pop("date", None)
            want.pop("date")
        same(parent, want, "parent_header", problems)
    if "idents_hex" in expect:
        want = [bytes.fromhex(i) for i in expect["idents_hex"]]
        if [bytes(i) for i in idents] != want:
            problems.append(f"idents {idents!r}, want {want!r}")
    if "buffers_hex" in expect:
        got = [bytes(b) for b in msg["buffers"]]
        want = [bytes.fromhex(b) for b in expect["buffers_hex"]]
        if got != want:
            problems.append(f"buffers {got!r}, want {want!r}")
    return {"accepted": True, "error": "", "problems": problems}


def check(req):
    s = session(req)
    return {"results": [check_one(session(req) if m.get("fresh_session") else s, m) for m in req["messages"]]}


def probe(_req):
    import jupyter_client
    import msgpack

    return {
        "python": sys.version.split()[0],
        "jupyter_client": jupyter_client.__version__,
        "msgpack": ".".join(map(str, msgpack.version)),
    }


def main():
    req = json.load(sys.stdin)
    answer = {"probe": probe, "make": make, "check": check}[req["op"]](req)
    json.dump(answer, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
