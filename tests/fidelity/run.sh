#!/usr/bin/env bash
# SDK-fidelity suite: the official Python SDKs (openai, anthropic, google-genai)
# against polydev-emulator on 127.0.0.1. Never contacts a real provider.
#
#   tests/fidelity/run.sh [pytest args...]
#
# 1. scripts/setup-python.sh   (project-local .venv with pinned SDKs; fast when done)
# 2. cargo build -p polydev-emulator -p polydev-runtime   (skipped if POLYDEV_EMULATOR_BIN /
#    POLYDEV_RUNTIME_BIN are set)
# 3. pytest -q tests/fidelity
# Exits non-zero on any failure (including "no tests ran").
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

"$ROOT/scripts/setup-python.sh"

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
[[ "$TARGET_DIR" = /* ]] || TARGET_DIR="$ROOT/$TARGET_DIR"
if [[ -z "${POLYDEV_EMULATOR_BIN:-}" ]]; then
    cargo build -q -p polydev-emulator
    export POLYDEV_EMULATOR_BIN="$TARGET_DIR/debug/polydev-emulator"
fi
# The runtime too: test_capabilities.py compares its events with what each SDK surfaces.
if [[ -z "${POLYDEV_RUNTIME_BIN:-}" ]]; then
    cargo build -q -p polydev-runtime
    export POLYDEV_RUNTIME_BIN="$TARGET_DIR/debug/polydev-runtime"
fi

# Belt and braces (conftest.py also scrubs these and refuses non-loopback
# hosts): no provider credentials, base URLs or proxies reach the SDKs.
for v in $(env | cut -d= -f1 | grep -E '^(OPENAI_|ANTHROPIC_|GOOGLE_|GEMINI_|AZURE_OPENAI_)' || true); do
    unset "$v"
done
unset HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy
export NO_PROXY=127.0.0.1,localhost,::1 no_proxy=127.0.0.1,localhost,::1
export PYTHONDONTWRITEBYTECODE=1

exec "$ROOT/.venv/bin/python" -m pytest -q -c "$ROOT/tests/fidelity/pytest.ini" "$ROOT/tests/fidelity" "$@"
