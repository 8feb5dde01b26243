#!/usr/bin/env bash
# Create (or bring up to date) the Python venv used by the interop tests.
#
#   interop/setup_venv.sh            # -> <repo>/.venv with interop/requirements.txt installed
#
# Idempotent. Fast path: if <venv>/.ippx-interop-stamp holds the hash of
# requirements.txt (+ this script's format version + the venv's python version), nothing
# is done. Otherwise the installed versions are compared with the pins (offline) and pip
# only runs when something is missing or different.
#
# Environment:
#   IPPX_VENV   venv location (default <repo>/.venv)
#   PYTHON      interpreter to create the venv with (default: python3.11, else python3)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
venv="${IPPX_VENV:-$repo/.venv}"
req="$here/requirements.txt"
stamp="$venv/.ippx-interop-stamp"
format=1

log() { echo "setup_venv: $*" >&2; }

pick_python() {
    if [[ -n "${PYTHON:-}" ]]; then echo "$PYTHON"; return; fi
    local c
    for c in python3.11 python3; do
        if command -v "$c" >/dev/null 2>&1; then echo "$c"; return; fi
    done
    log "no python3 found (need python >= 3.11)"; exit 1
}

compute_key() {  # hash of the inputs that define the venv contents
    local pyver
    pyver="$("$venv/bin/python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
    { echo "format=$format python=$pyver"; cat "$req"; } | sha256sum | cut -d' ' -f1
}

venv_ok() { [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; }

# ---- fast path (no lock, no pip) ----
if venv_ok && [[ -f "$stamp" ]] && [[ "$(cat "$stamp")" == "$(compute_key)" ]]; then
    log "venv up to date: $venv"
    exit 0
fi

# ---- slow path, serialized between concurrent callers ----
lockfile="/tmp/ippx-setup-venv.$(echo "$venv" | sha256sum | cut -c1-16).lock"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$lockfile"
    flock 9
fi

py="$(pick_python)"
if ! "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    log "$py is $("$py" -V 2>&1); python >= 3.11 is required"; exit 1
fi

fresh=""
if ! venv_ok; then
    fresh=1
    if [[ -e "$venv" ]]; then
        if [[ -f "$venv/pyvenv.cfg" ]]; then
            log "removing broken venv $venv"; rm -rf "$venv"
        else
            log "$venv exists and is not a venv; refusing to touch it"; exit 1
        fi
    fi
    log "creating venv $venv with $("$py" -V 2>&1) ($(command -v "$py"))"
    "$py" -m venv "$venv"
fi

satisfied() {  # exit 0 iff every 'name==version' pin in requirements.txt is installed
    "$venv/bin/python" - "$req" <<'EOF'
import re, sys
from importlib import metadata

def canon(name):
    return re.sub(r"[-_.]+", "-", name).lower()

installed = {canon(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}
bad = []
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, sep, version = line.partition("==")
    if not sep:
        bad.append(f"{line} (not an exact pin)")
        continue
    have = installed.get(canon(name.strip()))
    if have != version.strip():
        bad.append(f"{name.strip()}=={version.strip()} (installed: {have})")
for b in bad:
    print("  needs " + b, file=sys.stderr)
sys.exit(1 if bad else 0)
EOF
}

if satisfied 2>/dev/null; then
    log "installed packages already match the pins"
else
    [[ -n "$fresh" ]] || satisfied || true
    log "installing pinned requirements into $venv"
    # rpy2 builds from source: ABI mode only (the cffi module loads libR.so at run time).
    # Its API mode would link against R and need R's -dev libraries (pcre2, lzma, icu, ...);
    # left to itself it tries that first and falls back, depending on what is installed.
    RPY2_CFFI_MODE=ABI "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$req"
    if ! satisfied; then
        log "pins still not satisfied after pip install"; exit 1
    fi
fi

compute_key >"$stamp"
log "venv ready: $venv ($("$venv/bin/python" -V 2>&1))"
