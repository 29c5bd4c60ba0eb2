#!/usr/bin/env bash
# Create the peer virtualenvs that benchmarks/bench.py compares together_lite
# against. They are for measurement only and never a dependency of the project.
#
#   bash benchmarks/setup_peers.sh            # installs into /tmp/peers
#   PEERS=/some/dir bash benchmarks/setup_peers.sh
#
# Environment:
#   PEERS      target directory (default /tmp/peers)
#   PYTHON311  interpreter for the venvs (default: pyenv's 3.11.7, else python3.11)
#
# Creates:
#   $PEERS/together1  together==1.6.0 (see the certifi note below)
#   $PEERS/together3  together==3.1.1
#   $PEERS/openai     openai (latest)
#
# Idempotent: a venv whose package already imports at the wanted version is
# left alone.
set -euo pipefail

PEERS="${PEERS:-/tmp/peers}"
TOGETHER1_VERSION="1.6.0"
TOGETHER3_VERSION="3.1.1"

find_python() {
    if [[ -n "${PYTHON311:-}" ]]; then
        echo "$PYTHON311"
    elif command -v pyenv >/dev/null 2>&1 && [[ -x "$(pyenv root)/versions/3.11.7/bin/python" ]]; then
        echo "$(pyenv root)/versions/3.11.7/bin/python"
    elif command -v python3.11 >/dev/null 2>&1; then
        command -v python3.11
    else
        echo "setup_peers.sh: no Python 3.11 found; set PYTHON311" >&2
        exit 1
    fi
}

PY="$(find_python)"

# installed_version VENV DIST -> prints the installed version of DIST, or nothing
installed_version() {
    "$1/bin/python" - "$2" <<'EOF' 2>/dev/null || true
import sys
from importlib.metadata import version
print(version(sys.argv[1]))
EOF
}

# make_venv DIR -> creates DIR as a venv with an up-to-date pip (if missing)
make_venv() {
    local dir="$1"
    if [[ ! -x "$dir/bin/python" ]]; then
        echo "== creating venv $dir"
        "$PY" -m venv "$dir"
        "$dir/bin/python" -m pip install -q --upgrade pip
    fi
}

# check_import VENV MODULE -> fails loudly if MODULE does not import in VENV
check_import() {
    TOGETHER_NO_BANNER=1 "$1/bin/python" -c "import $2" \
        || { echo "setup_peers.sh: 'import $2' fails in $1" >&2; exit 1; }
}

setup_together1() {
    # together 1.6.0 declares certifi>=2026.10.19, which the package index may
    # not have yet, so a plain `pip install together==1.6.0` can fail to
    # resolve. Install its other requirements at their declared ranges, then
    # the newest certifi there is, then the wheel itself with --no-deps.
    local venv="$PEERS/together1"
    make_venv "$venv"
    if [[ "$(installed_version "$venv" together)" == "$TOGETHER1_VERSION" ]] \
        && TOGETHER_NO_BANNER=1 "$venv/bin/python" -c "from together import Together" 2>/dev/null; then
        echo "== $venv: together $TOGETHER1_VERSION already installed"
        return
    fi
    echo "== $venv: installing together $TOGETHER1_VERSION"
    local dl
    dl="$(mktemp -d)"
    "$venv/bin/python" -m pip download -q --no-deps -d "$dl" "together==$TOGETHER1_VERSION"
    local wheel
    wheel="$(ls "$dl"/together-"$TOGETHER1_VERSION"-*.whl)"
    # Requires-Dist lines, minus certifi and extras, as pip requirement specs:
    # "aiohttp (>=3.14.4,<4.0.0)" -> "aiohttp>=3.14.4,<4.0.0"
    local -a reqs
    mapfile -t reqs < <("$venv/bin/python" - "$wheel" <<'EOF'
import re, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as zf:
    name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
    metadata = zf.read(name).decode()
for line in metadata.splitlines():
    if not line.startswith("Requires-Dist:"):
        continue
    req = line.split(":", 1)[1].strip()
    if ";" in req and "extra" in req.split(";", 1)[1]:
        continue
    req = req.split(";", 1)[0].strip()
    m = re.match(r"([A-Za-z0-9_.\-]+)\s*(?:\((.*)\))?\s*(.*)$", req)
    dist, spec = m.group(1), (m.group(2) or m.group(3) or "").strip()
    if dist.lower() == "certifi":
        continue
    print(dist + spec)
EOF
    )
    echo "   requirements: ${reqs[*]}"
    "$venv/bin/python" -m pip install -q "${reqs[@]}"
    "$venv/bin/python" -m pip install -q --upgrade certifi
    "$venv/bin/python" -m pip install -q --no-deps "$wheel"
    rm -rf "$dl"
    TOGETHER_NO_BANNER=1 "$venv/bin/python" -c "from together import Together" \
        || { echo "setup_peers.sh: together $TOGETHER1_VERSION does not import" >&2; exit 1; }
}

# setup_simple NAME DIST VERSION MODULE  (VERSION empty = latest)
setup_simple() {
    local venv="$PEERS/$1" dist="$2" want="$3" module="$4"
    make_venv "$venv"
    local have
    have="$(installed_version "$venv" "$dist")"
    if [[ -n "$have" && ( -z "$want" || "$have" == "$want" ) ]]; then
        echo "== $venv: $dist $have already installed"
    else
        echo "== $venv: installing $dist ${want:-(latest)}"
        "$venv/bin/python" -m pip install -q "$dist${want:+==$want}"
    fi
    check_import "$venv" "$module"
}

mkdir -p "$PEERS"
echo "== using $PY ($("$PY" --version 2>&1)), target $PEERS"
setup_together1
setup_simple together3 together "$TOGETHER3_VERSION" together
setup_simple openai openai "" openai

for v in together1 together3 openai; do
    dist=together
    [[ "$v" == openai ]] && dist=openai
    echo "   $PEERS/$v: $dist $(installed_version "$PEERS/$v" "$dist")"
done
