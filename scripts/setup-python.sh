#!/usr/bin/env bash
# Creates (or refreshes) the project-local Python virtualenv `.venv` used by the
# SDK-fidelity suite (tests/fidelity), with the pinned official SDKs from
# tests/fidelity/requirements.txt.
#
# Idempotent and fast when nothing changed: the venv records a stamp (hash of
# the requirements file + the interpreter version); when the stamp matches and
# the pinned packages import, it does nothing.
#
# Usage: scripts/setup-python.sh [--force]
# Env:   PYTHON   interpreter used to create the venv (default: python3)
#        VENV_DIR where the venv lives (default: <repo>/.venv)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV_DIR="${VENV_DIR:-$ROOT/.venv}"
REQ="$ROOT/tests/fidelity/requirements.txt"
STAMP="$VENV_DIR/.polydev-requirements.stamp"
FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

log() { printf 'setup-python: %s\n' "$*" >&2; }

command -v "$PYTHON" >/dev/null 2>&1 || { log "no '$PYTHON' on PATH (set PYTHON=...)"; exit 1; }
[[ -f "$REQ" ]] || { log "missing $REQ"; exit 1; }

want_stamp() {
    local pyver
    pyver="$("$1" -c 'import sys; print(sys.version)')"
    { sha256sum "$REQ" | cut -d' ' -f1; printf '%s\n' "$pyver"; } | sha256sum | cut -d' ' -f1
}

VPY="$VENV_DIR/bin/python"

# Fast path: venv present, stamp matches, and the SDKs import.
if [[ $FORCE -eq 0 && -x "$VPY" && -f "$STAMP" ]] \
    && [[ "$(cat "$STAMP")" == "$(want_stamp "$VPY")" ]] \
    && "$VPY" -c 'import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in ("openai", "anthropic", "google.genai", "pytest")))' >/dev/null 2>&1; then
    log "up to date ($VENV_DIR)"
    exit 0
fi

if [[ ! -x "$VPY" ]] || ! "$VPY" -c 'import sys' >/dev/null 2>&1; then
    log "creating virtualenv at $VENV_DIR"
    rm -rf "$VENV_DIR"
    "$PYTHON" -m venv "$VENV_DIR"
fi

log "installing pinned packages from ${REQ#"$ROOT/"}"
# --no-input: never prompt; PIP_DISABLE_PIP_VERSION_CHECK: no extra look-up.
PIP_DISABLE_PIP_VERSION_CHECK=1 "$VPY" -m pip install --no-input -q -r "$REQ"
"$VPY" -m pip check >/dev/null || { log "pip check failed"; "$VPY" -m pip check; exit 1; }
"$VPY" -c 'import openai, anthropic, google.genai, pytest' \
    || { log "SDK import failed after install"; exit 1; }

want_stamp "$VPY" > "$STAMP"
"$VPY" - <<'PY' >&2
import importlib.metadata as m
print("setup-python: installed " + ", ".join(
    f"{p} {m.version(p)}" for p in ("openai", "anthropic", "google-genai", "pytest")))
PY
