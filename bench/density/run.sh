#!/usr/bin/env bash
# Density benchmark: how many hardened polydev-runtime containers stream at once on this host
# with nothing lost. A benchmark, not a test: it takes minutes and loads the machine.
#
#   bench/density/run.sh                      # default sweep: N = 50, 100, 200, 400, 800, 1000
#                                             # while each holds, within a 20-minute budget
#   bench/density/run.sh --ns 50,100 --len 600   # any polydev-density-bench flag (--help)
#   OUT_DIR=/tmp/d PLOT=/tmp/d/plot.png bench/density/run.sh --ns 1000   # elsewhere
#
# Steps: builds the images (deploy/docker/build.sh) and the driver (crates/density-bench), runs
# the sweep from that one process over the Docker Engine API (/var/run/docker.sock), writes
# bench/density/results/{latest.json,latest.md,<run id>.json}, and plots memory and start
# latency against N into docs/benchmarks-density.png (matplotlib in .venv). Every container and
# network it creates is labelled dev.polydev.bench and removed at the end, on failure and on
# Ctrl-C. Only a private Docker network is used; nothing leaves the host.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

deploy/docker/build.sh
cargo build --release --quiet -p polydev-density-bench
# One attach connection per container, in one process.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

OUT_DIR="${OUT_DIR:-bench/density/results}"
PLOT="${PLOT:-docs/benchmarks-density.png}"
target/release/polydev-density-bench --out-dir "$OUT_DIR" "$@"

bench/density/setup-venv.sh
.venv/bin/python bench/density/plot.py "$OUT_DIR/latest.json" "$PLOT"
echo "density: results in $OUT_DIR/latest.md, plot in $PLOT" >&2
