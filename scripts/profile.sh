#!/usr/bin/env bash
# CPU profile of the controller and its runtimes under paced streaming (a diagnostic, not a test):
# runs one step of the controller benchmark's sweep (bench/controller/controller_bench.py: N
# concurrent 60 s streams of 20 tokens/s through polydev-controller's process backend against
# polydev-emulator, everything on 127.0.0.1) and, once all N streams are flowing, samples the
# controller and, separately, every runtime it started with `perf record`; then folds the stacks
# and draws one flame graph (SVG) per side with inferno.
#
#   scripts/profile.sh                          N=300, binaries from target/release (built here)
#   PROFILE_N=500 PROFILE_SECONDS=30 scripts/profile.sh
#   PROFILE_BIN=target/before scripts/profile.sh      profile other binaries (not rebuilt)
#   PROFILE_OUT=docs/profile/before scripts/profile.sh
#
# Writes $PROFILE_OUT/{controller,runtime}.svg and summary.txt (where the time goes: user code
# or which system call, then the top functions by self time). The perf data and the folded
# stacks stay in target/profile/.
#
# Steps:
#   1. `perf` (Debian's linux-perf) if missing; checks `perf stat -e instructions true` and falls
#      back to the cpu-clock software event when the machine (a VM) has no hardware counters.
#   2. inferno (crates.io) into target/inferno if missing.
#   3. unless PROFILE_BIN is set: `cargo build --release` of the controller, runtime and
#      emulator with symbols kept (CARGO_PROFILE_RELEASE_STRIP=false; the code is the same as the
#      stripped release build's), and the benchmark's load client.
#   4. the benchmark harness with `--sweep $PROFILE_N --skip-latency` in the background; when it
#      reports every stream open, waits PROFILE_WARMUP s, then runs two `perf record` at once for
#      PROFILE_SECONDS s: `-p <controller>` and `-p <its runtimes>`, `--call-graph dwarf`.
#   5. `perf script | inferno-collapse-perf | inferno-flamegraph`; the summary from the folded
#      stacks and `perf report`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
N="${PROFILE_N:-300}"
SECONDS_REC="${PROFILE_SECONDS:-20}"
WARMUP="${PROFILE_WARMUP:-5}"
FREQ="${PROFILE_FREQ:-499}"
OUT="${PROFILE_OUT:-docs/profile/after}"
WORK="$ROOT/target/profile"
INFERNO="$ROOT/target/inferno/bin"
VPY="$ROOT/.venv/bin/python"
mkdir -p "$WORK" "$OUT"

step() { printf '\n==> %s\n' "$*"; }

step "perf"
if ! command -v perf >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq linux-perf
fi
EVENT=cycles
if ! perf stat -e instructions -x, true 2>&1 | grep -q '^[0-9]'; then
  EVENT=cpu-clock
  echo "no hardware counters here: sampling the cpu-clock software event"
fi

step "inferno (flame graphs) into target/inferno"
if [[ ! -x "$INFERNO/inferno-flamegraph" ]]; then
  cargo install --locked inferno --root "$ROOT/target/inferno"
fi

if [[ -z "${PROFILE_BIN:-}" ]]; then
  step "cargo build --release (symbols kept)"
  CARGO_PROFILE_RELEASE_STRIP=false cargo build --release \
    -p polydev-controller -p polydev-runtime -p polydev-emulator
  BIN="$ROOT/target/release"
else
  BIN="$(cd "$PROFILE_BIN" && pwd)"
fi
CARGO_TARGET_DIR="$ROOT/target/bench-controller" cargo build --release --locked \
  --manifest-path bench/controller/loadgen/Cargo.toml
[[ -x "$VPY" ]] || scripts/setup-python.sh
"$VPY" -c 'import matplotlib' >/dev/null 2>&1 || "$VPY" -m pip install --quiet -r bench/controller/requirements.txt
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

step "sweep step N=$N with perf ($EVENT, ${FREQ} Hz, ${SECONDS_REC} s)"
LOG="$WORK/harness.log"
"$VPY" bench/controller/controller_bench.py --skip-latency --sweep "$N" \
  --controller "$BIN/polydev-controller" --runtime "$BIN/polydev-runtime" --emulator "$BIN/polydev-emulator" \
  --out '' --plot '' --json "$WORK/bench.json" >"$LOG" 2>&1 &
HARNESS=$!
trap 'kill "$HARNESS" 2>/dev/null || true' EXIT
until grep -q "streams open after" "$LOG"; do
  if ! kill -0 "$HARNESS" 2>/dev/null; then cat "$LOG" >&2; echo "profile: the harness ended early" >&2; exit 1; fi
  sleep 0.5
done
sleep "$WARMUP"
CTL="$(pgrep -P "$HARNESS" -x polydev-control | head -1)"
RTS="$(pgrep -d, -P "$CTL" -x polydev-runtime)"
echo "controller $CTL, $(tr ',' '\n' <<<"$RTS" | wc -l) runtimes"
perf record -q -e "$EVENT" -F "$FREQ" --call-graph dwarf,16384 -o "$WORK/controller.data" -p "$CTL" -- sleep "$SECONDS_REC" &
P1=$!
perf record -q -e "$EVENT" -F "$FREQ" --call-graph dwarf,16384 -o "$WORK/runtime.data" -p "$RTS" -- sleep "$SECONDS_REC" &
P2=$!
wait "$P1" "$P2"
echo "recorded; waiting for the sweep step to finish its checks"
wait "$HARNESS" || true
trap - EXIT
tail -n 3 "$LOG"

step "flame graphs into $OUT"
for side in controller runtime; do
  perf script -i "$WORK/$side.data" 2>/dev/null | "$INFERNO/inferno-collapse-perf" > "$WORK/$side.folded.txt"
  "$INFERNO/inferno-flamegraph" --title "polydev-$side, N=$N paced streams ($EVENT)" \
    < "$WORK/$side.folded.txt" > "$OUT/$side.svg"
done
# Where the time goes: user code, or the system call (the frame under do_syscall_64), or an
# interrupt or fault, as a share of each side's samples.
breakdown() {
  python3 - "$1" <<'PY'
import collections, sys
tot, cats = 0, collections.Counter()
for line in open(sys.argv[1]):
    stack, n = line.rsplit(" ", 1)
    n = int(n)
    tot += n
    frames = stack.split(";")
    cat = "user space"
    for i, f in enumerate(frames):
        if f == "do_syscall_64":
            cat = "system call: " + (frames[i + 1] if i + 1 < len(frames) else "?")
            break
        if f.startswith("asm_"):
            cat = "interrupt/fault: " + f
            break
    cats[cat] += n
for c, n in cats.most_common(10):
    print(f"  {100 * n / max(tot, 1):5.1f}%  {c}")
PY
}
{
  echo "N=$N paced streams (20 tokens/s each), $EVENT at ${FREQ} Hz for ${SECONDS_REC} s; binaries: $BIN"
  for side in controller runtime; do
    echo
    echo "== $side: where the time goes"
    breakdown "$WORK/$side.folded.txt"
    echo
    echo "== $side: top 30 functions by self samples"
    perf report -i "$WORK/$side.data" --no-children --sort symbol --stdio -q -g none 2>/dev/null \
      | grep "%" | awk "NR <= 30" | sed 's/ *- *- *$//'
  done
} > "$OUT/summary.txt"
cat "$OUT/summary.txt"
