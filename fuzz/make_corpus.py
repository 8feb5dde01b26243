#!/usr/bin/env python3
"""Writes fuzz/corpus/<target>/ seeds from the project's golden fixtures (real ipyparallel
9.2.0 messages captured by protocol/tests/fixtures/make_fixtures.py) and a few examples of
each other input. Re-run after the fixtures change; the output is committed."""

import hashlib
import json
import struct
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIX = HERE.parent / "protocol" / "tests" / "fixtures" / "captured"
OUT = HERE / "corpus"


def put(target: str, data: bytes):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()[:16]).write_bytes(data)


def framed(frames):
    return b"".join(struct.pack("<H", len(f)) + f for f in frames)


for path in sorted(FIX.glob("*/*.json")):
    fx = json.loads(path.read_text())
    frames = [bytes.fromhex(h) for h in fx["frames_hex"]]
    packer = 0 if fx["packer"] == "msgpack" else 1
    put("frames", bytes([packer]) + framed(frames))
    put("frames", bytes([packer]) + framed(frames[fx["n_idents"]:]))  # no routing frames
    d = fx["n_idents"]
    for f in frames[d + 2 : d + 6]:  # header, parent, metadata, content
        put("unpack", f)
        put("content", f)

for q in [
    {},
    {"msg_id": "abc"},
    {"msg_id": {"$in": ["a", "b"]}},
    {"completed": {"$ne": None}, "engine_uuid": "e0"},
    {"submitted": {"$gte": "2026-01-01T00:00:00.000000Z"}},
    {"queue": {"$nin": ["mux"]}, "label": {"$exists": True}},
    {"started": {"$lt": "2026-12-01T00:00:00Z", "$gt": "2026-11-01T00:00:00Z"}},
]:
    put("db_query", json.dumps(q).encode())

engine_file = {
    "key": "5d0c1f2e-8a9b7c6d5e4f3a2b1c0d9e8f", "signature_scheme": "hmac-sha256", "unpack": "msgpack", "pack": "msgpack",
    "interface": "tcp://127.0.0.1", "location": "127.0.0.1", "registration": 21000, "control": 21001, "mux": 21002,
    "task": 21003, "iopub": 21004, "hb_ping": 21005, "hb_pong": 21006, "broadcast": [21007, 21008],
}
client_file = {
    "key": "5d0c1f2e-8a9b7c6d5e4f3a2b1c0d9e8f", "signature_scheme": "hmac-sha256", "unpack": "msgpack", "pack": "msgpack",
    "interface": "tcp://127.0.0.1", "location": "127.0.0.1", "registration": 21000, "control": 21009, "mux": 21010,
    "task": 21011, "task_scheme": "leastload", "iopub": 21012, "notification": 21013, "broadcast": 21014,
}
put("connection_file", json.dumps(engine_file).encode())
put("connection_file", json.dumps(client_file).encode())

put("config", b'[controller]\nip = "0.0.0.0"\nlocation = "node17"\nports = "21000-21017"\nscheme = "leastload"\nhwm = 1\n'
              b'broadcast_depth = 1\nregistration_timeout = 30.0\n\n[heartbeat]\nperiod_ms = 3000\nmax_misses = 10\n')
put("config", b"--ip=127.0.0.1\n--ping=250\n--scheme=lru\n--hwm=0\n--sqlitedb\n--log-format=json\n--ports=21000-21017\n")
put("config", b"--TaskScheduler.hwm=4\n--HubFactory.ip=0.0.0.0\n--IPPX.readmit=False\n--broadcast-depth=3\n")
print(f"corpus in {OUT}: " + ", ".join(f"{d.name} {len(list(d.iterdir()))}" for d in sorted(OUT.iterdir())))
