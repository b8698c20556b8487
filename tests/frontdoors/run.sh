#!/usr/bin/env bash
# Front-door suite: the official Python SDKs (openai, anthropic) pointed at polydev-controller
# (process backend, real polydev-runtime children) in front of polydev-emulator, on 127.0.0.1.
# Never contacts a real provider.
#
#   tests/frontdoors/run.sh [pytest args...]
#
# 1. scripts/setup-python.sh (the fidelity suite's .venv, same pinned SDKs)
# 2. cargo build -p polydev-emulator -p polydev-runtime -p polydev-controller
# 3. pytest -q tests/frontdoors
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

"$ROOT/scripts/setup-python.sh"
cargo build -q -p polydev-emulator -p polydev-runtime -p polydev-controller

for v in $(env | cut -d= -f1 | grep -E '^(OPENAI_|ANTHROPIC_|GOOGLE_|GEMINI_|AZURE_OPENAI_)' || true); do
    unset "$v"
done
unset HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy
export NO_PROXY=127.0.0.1,localhost,::1 no_proxy=127.0.0.1,localhost,::1
export PYTHONDONTWRITEBYTECODE=1

exec "$ROOT/.venv/bin/python" -m pytest -q -c "$ROOT/tests/frontdoors/pytest.ini" "$ROOT/tests/frontdoors" "$@"
