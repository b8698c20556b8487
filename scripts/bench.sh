#!/usr/bin/env bash
# Runtime benchmark (a benchmark, not a timed test): one 1000-chunk streaming execution per
# provider, polydev-runtime next to the official Python SDKs, against polydev-emulator on
# 127.0.0.1. Prints a table and writes docs/benchmarks.md and bench/results/latest.json.
#
#   scripts/bench.sh                 build, then 7 measured rounds (+1 warm-up)
#   BENCH_RUNS=3 scripts/bench.sh    fewer rounds
#   scripts/bench.sh --no-sdk        runtime only; other flags go to bench/runtime_bench.py
#   BENCH_SKIP_BUILD=1 scripts/bench.sh   reuse the binaries already built
#
# Steps:
#   1. static release runtime: RUSTFLAGS="-C target-feature=+crt-static" cargo build --release
#      --target x86_64-unknown-linux-gnu -p polydev-runtime (the explicit --target keeps the
#      flag off proc-macros); the emulator in release (normal build); check the runtime binary
#      is static with `file` and `ldd` and report its size.
#   2-4. bench/runtime_bench.py (Python from .venv; scripts/setup-python.sh creates it if it is
#      missing) measures, checks every run, prints the table and writes the report.
# Exits non-zero if a build fails, the binary is not static, or any run fails. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"

TARGET=x86_64-unknown-linux-gnu
RUNTIME="$ROOT/target/$TARGET/release/polydev-runtime"
EMULATOR="$ROOT/target/release/polydev-emulator"
VPY="$ROOT/.venv/bin/python"
RUNS="${BENCH_RUNS:-7}"

step() { printf '\n==> %s\n' "$*"; }

if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  step "RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release --target $TARGET -p polydev-runtime"
  RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target "$TARGET" -p polydev-runtime

  step "cargo build --release -p polydev-emulator"
  cargo build --release -p polydev-emulator
fi
[[ -x "$RUNTIME" ]] || { echo "bench: missing $RUNTIME" >&2; exit 1; }
[[ -x "$EMULATOR" ]] || { echo "bench: missing $EMULATOR" >&2; exit 1; }

step "runtime binary"
FILE_OUT="$(file -b "$RUNTIME")"
LDD_OUT="$(ldd "$RUNTIME" 2>&1 || true)"   # ldd exits 1 on some systems for static binaries
LDD_OUT="$(printf '%s' "$LDD_OUT" | sed 's/^[[:space:]]*//' | tr '\n' ' ' | sed 's/ *$//')"
SIZE="$(stat -c %s "$RUNTIME")"
printf 'path:  %s\nfile:  %s\nldd:   %s\nsize:  %s bytes (%s MiB)\n' \
  "${RUNTIME#"$ROOT/"}" "$FILE_OUT" "$LDD_OUT" "$SIZE" "$(awk -v b="$SIZE" 'BEGIN { printf "%.2f", b / 1048576 }')"
STATIC=yes
if ! grep -Eq 'statically linked|static-pie linked' <<<"$FILE_OUT"; then STATIC=no; fi
if ! grep -Eq 'not a dynamic executable|statically linked' <<<"$LDD_OUT"; then STATIC=no; fi
if [[ "$STATIC" != yes ]]; then
  echo "bench: FAILED: $RUNTIME is not a static binary" >&2
  exit 1
fi

step "Python SDKs (.venv)"
if [[ ! -x "$VPY" ]] || ! "$VPY" -c 'import openai, anthropic, google.genai' >/dev/null 2>&1; then
  scripts/setup-python.sh
fi
"$VPY" -c 'import importlib.metadata as m; print(", ".join(f"{p} {m.version(p)}" for p in ("openai", "anthropic", "google-genai")))'

step "bench/runtime_bench.py (runs: $RUNS)"
CMD="scripts/bench.sh"
if [[ "$RUNS" != 7 ]]; then CMD="BENCH_RUNS=$RUNS $CMD"; fi
if [[ $# -gt 0 ]]; then CMD="$CMD $*"; fi
exec "$VPY" bench/runtime_bench.py \
  --runtime "$RUNTIME" --emulator "$EMULATOR" --python "$VPY" \
  --runs "$RUNS" --static "$STATIC" --file-out "$FILE_OUT" --ldd-out "$LDD_OUT" \
  --command "$CMD" "$@"
