#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets/*.rs) for a bounded time each and fails on the
# first crash (a panic, a failed property, a timeout or an out-of-memory in one input).
#
#   scripts/fuzz.sh              30 s per target (what scripts/test.sh runs)
#   scripts/fuzz.sh 300          300 s per target
#   FUZZ_GROW=1 scripts/fuzz.sh  also keep the new interesting inputs in fuzz/corpus/<target>
#                                (commit them: the corpus lives in the repository)
#
# Targets: sse_decoder (the SSE decoder), stream_translators (the three providers' stream
# parsers), job_document (the job document and event lines), controller_api (the controller's
# JSON bodies through its real router). Each run starts from fuzz/seeds/<target> and the
# committed corpus fuzz/corpus/<target>; by default new inputs go to a temporary directory so a
# test run leaves the tree unchanged. A crash's input is saved under fuzz/artifacts/<target>/
# and printed; reproduce it with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run -s none <target> fuzz/artifacts/<target>/crash-…
#
# cargo-fuzz is installed with `cargo install --locked` when missing. It needs nightly
# compiler flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain (the only one here) accept them.
# No sanitizer (`-s none`): the targets are safe Rust; coverage guidance is what matters.
# The short runs use a debug build (`--dev`: it compiles in a few minutes, where an optimized
# build of the controller's dependency tree takes far longer, and it keeps debug assertions);
# FUZZ_RELEASE=1 builds optimized for long runs (many more executions per second).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-30}"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz (cargo install --locked cargo-fuzz)"
  cargo install --locked --quiet cargo-fuzz
fi

profile=(--dev)
[[ "${FUZZ_RELEASE:-0}" == 1 ]] && profile=()
targets=$(cd fuzz/fuzz_targets && ls *.rs | sed 's/\.rs$//')
echo "fuzz: building $(echo $targets | wc -w) targets"
cargo fuzz build -s none "${profile[@]}" --fuzz-dir fuzz >/dev/null 2>&1 \
  || cargo fuzz build -s none "${profile[@]}" --fuzz-dir fuzz

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in $targets; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  if [[ "${FUZZ_GROW:-0}" == 1 ]]; then out="fuzz/corpus/$t"; else out="$scratch/$t"; mkdir -p "$out"; fi
  inputs=("fuzz/corpus/$t")
  [[ -d "fuzz/seeds/$t" ]] && inputs+=("fuzz/seeds/$t")
  [[ "$out" != "fuzz/corpus/$t" ]] && inputs=("$out" "${inputs[@]}")
  dict=()
  [[ -f "fuzz/$t.dict" ]] && dict=("-dict=fuzz/$t.dict")
  printf 'fuzz: %-20s %ss ... ' "$t" "$SECS"
  if ! cargo fuzz run -s none "${profile[@]}" --fuzz-dir fuzz "$t" "${inputs[@]}" -- \
      -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      -print_final_stats=1 "${dict[@]}" > "$scratch/$t.log" 2>&1; then
    echo "CRASH"
    tail -60 "$scratch/$t.log"
    exit 1
  fi
  echo "ok ($(grep -E '^stat::number_of_executed_units' "$scratch/$t.log" | awk '{print $2}') executions)"
done
