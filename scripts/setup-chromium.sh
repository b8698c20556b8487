#!/usr/bin/env bash
# Installs headless Chromium (Debian's `chromium` package) for the console's browser tests
# (tests/console), the one system package they need beyond the Rust toolchain and Python.
# Does nothing when a Chromium is already on PATH. Installs with apt-get when running as root
# (CI and the project's machines); otherwise prints what to run and exits 1 (the tests then
# skip, or fail under CI=true).
set -euo pipefail

for b in chromium chromium-browser google-chrome google-chrome-stable; do
    if command -v "$b" >/dev/null 2>&1; then
        exit 0
    fi
done
if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "setup-chromium: installing Debian's chromium (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium >/dev/null
    command -v chromium >/dev/null 2>&1 && exit 0
fi
echo "setup-chromium: no Chromium; install the 'chromium' package (apt-get install chromium)" >&2
exit 1
