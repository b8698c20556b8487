#!/usr/bin/env bash
# The web console's browser tests: headless Chromium over the DevTools protocol against a
# controller and the emulator on 127.0.0.1 (tests/console/test_console.py).
#
#   tests/console/run.sh [pytest args...]
#   POLYDEV_CONSOLE_SCREENSHOTS=docs tests/console/run.sh   # also refresh the README's screenshots
#
# 1. scripts/setup-python.sh    (.venv; the `websockets` client the tests drive Chromium with is
#                                already pinned there for the SDK suite)
# 2. scripts/setup-chromium.sh  (Debian's `chromium`, when missing and apt-get is usable)
# 3. cargo build of the controller, the runtime and the emulator (debug)
# 4. pytest -q tests/console   (skips without Chromium, fails without it under CI=true)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

scripts/setup-python.sh
scripts/setup-chromium.sh || true

if [[ -z "${POLYDEV_BIN_DIR:-}" ]]; then
    cargo build -q -p polydev-controller -p polydev-runtime -p polydev-emulator
fi
for v in $(env | cut -d= -f1 | grep -E '^(OPENAI_|ANTHROPIC_|GOOGLE_|GEMINI_|POLYDEV_(LISTEN|API_TOKEN|DB))' || true); do
    unset "$v"
done
unset HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy
export NO_PROXY=127.0.0.1,localhost,::1 no_proxy=127.0.0.1,localhost,::1
export PYTHONDONTWRITEBYTECODE=1
if [[ -n "${POLYDEV_CONSOLE_SCREENSHOTS:-}" ]]; then
    POLYDEV_CONSOLE_SCREENSHOTS="$(cd "$POLYDEV_CONSOLE_SCREENSHOTS" && pwd)"
    export POLYDEV_CONSOLE_SCREENSHOTS
fi

exec "$ROOT/.venv/bin/python" -m pytest -q -c "$ROOT/tests/console/pytest.ini" "$ROOT/tests/console" "$@"
