#!/usr/bin/env bash
# Installs bench/density/requirements.txt (matplotlib, for the plot) into the project's .venv,
# creating the venv if there is none. Idempotent: a stamp of the requirements file's hash makes a
# second run a no-op. Does not touch the packages scripts/setup-python.sh installs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV_DIR="${VENV_DIR:-$ROOT/.venv}"
REQ="$ROOT/bench/density/requirements.txt"
STAMP="$VENV_DIR/.polydev-density-requirements.stamp"
VPY="$VENV_DIR/bin/python"

want="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [[ -x "$VPY" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] \
    && "$VPY" -c 'import matplotlib' >/dev/null 2>&1; then
    exit 0
fi
if [[ ! -x "$VPY" ]]; then
    echo "setup-venv: creating $VENV_DIR" >&2
    "$PYTHON" -m venv "$VENV_DIR"
fi
echo "setup-venv: installing ${REQ#"$ROOT/"}" >&2
PIP_DISABLE_PIP_VERSION_CHECK=1 "$VPY" -m pip install --no-input -q -r "$REQ"
"$VPY" -c 'import matplotlib' 
echo "$want" > "$STAMP"
