#!/usr/bin/env bash
# Backend benchmark (a benchmark, not a timed test): polydev-controller with the process backend
# (stdin and pull mode) and the Docker backend (host network, hardened defaults) against
# polydev-emulator on 127.0.0.1, through the controller's API. Measures cold start and warm claim
# to first upstream byte (p50/p99), executions started per second (a burst, cold and warm), and
# for Docker the largest concurrent count held with nothing lost in a short bounded sweep.
# Writes docs/benchmarks-backends.md and bench/backends/results/latest.json. A few minutes.
#
#   scripts/bench-backends.sh                       build, images, then everything
#   BENCH_SKIP_BUILD=1 scripts/bench-backends.sh    reuse the release binaries and images
#   scripts/bench-backends.sh --backends process,docker --sweep 50,100
#                                                   other flags go to bench/backends/backends_bench.py
#
# Steps: cargo build --release (controller, runtime, emulator); the controller benchmark's load
# client (bench/controller/loadgen -> target/bench-controller); deploy/docker/build.sh (the
# polydev-runtime:0.1.0 image); Python from .venv; the open-file limit raised; then the harness.
# Every container created carries io.polydev.controller=bench-backends-<run id> and is removed at
# the end; no other container is touched. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
VPY="$ROOT/.venv/bin/python"
step() { printf '\n==> %s\n' "$*"; }

if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  step "cargo build --release -p polydev-controller -p polydev-runtime -p polydev-emulator"
  cargo build --release -p polydev-controller -p polydev-runtime -p polydev-emulator
  step "load client (bench/controller/loadgen -> target/bench-controller)"
  CARGO_TARGET_DIR="$ROOT/target/bench-controller" cargo build --release --locked \
    --manifest-path bench/controller/loadgen/Cargo.toml
  step "deploy/docker/build.sh (polydev-runtime image)"
  deploy/docker/build.sh
fi
for b in target/release/polydev-controller target/release/polydev-runtime target/release/polydev-emulator \
         target/bench-controller/release/polydev-ctl-loadgen; do
  [[ -x "$ROOT/$b" ]] || { echo "bench-backends: missing $b" >&2; exit 1; }
done
[[ -x "$VPY" ]] || scripts/setup-python.sh

LINK='- [benchmarks-backends.md](benchmarks-backends.md) (`scripts/bench-backends.sh`): process and Docker backends through the controller: cold start and warm claim to first upstream byte, executions started per second, concurrent Docker streams.'
if [[ -f docs/benchmarks.md ]] && ! grep -qF 'benchmarks-backends.md' docs/benchmarks.md; then
  awk -v link="$LINK" '{print} /^- \[benchmarks-density.md\]/ {print link}' docs/benchmarks.md > docs/benchmarks.md.tmp \
    && mv docs/benchmarks.md.tmp docs/benchmarks.md
fi

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
CMD="scripts/bench-backends.sh"
if [[ $# -gt 0 ]]; then CMD="$CMD $*"; fi
exec "$VPY" bench/backends/backends_bench.py --command "$CMD" "$@"
