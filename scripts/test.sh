#!/usr/bin/env bash
# The README's test command: every check CI runs, in order, failing on the first error.
#   formatting, clippy (warnings are errors), the workspace's tests, the chaos suite's short
#   selection (controller restarts, runtime kills, upstream faults, slow readers), every fuzz
#   target for 30 s,
#   the SDK fidelity suite (official Python SDKs against the emulator), the front-door suite
#   (the official openai/anthropic SDKs against the controller in front of the emulator), and
#   the web console in headless Chromium (installed by scripts/setup-chromium.sh when missing).
# Nothing here talks to a real provider: every server is the emulator on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --all --check"
cargo fmt --all --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "FROM-scratch images for the Docker tests (deploy/docker/build.sh)"
deploy/docker/build.sh --skip-without-docker

step "cargo test --workspace"
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
  cargo test --workspace --locked --doc
else
  cargo test --workspace --locked --no-fail-fast
fi

step "chaos suite, CI selection (scripts/chaos.sh; figures of the long run in docs/reliability.md)"
POLYDEV_DOCKER_BUILD=0 scripts/chaos.sh ci

step "fuzz targets, 30 s each (scripts/fuzz.sh)"
scripts/fuzz.sh 30

step "SDK fidelity suite (tests/fidelity/run.sh)"
tests/fidelity/run.sh

step "front-door suite (tests/frontdoors/run.sh)"
tests/frontdoors/run.sh

step "web console in headless Chromium (tests/console/run.sh)"
tests/console/run.sh

printf '\n==> all checks passed\n'
