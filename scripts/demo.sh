#!/usr/bin/env bash
# The README's main command: build the runtime and stream one answer from each provider.
#
# With a provider's API key in the environment (OPENAI_API_KEY, ANTHROPIC_API_KEY,
# GOOGLE_API_KEY or GEMINI_API_KEY) that provider is called for real. For every provider
# without a key, a local emulator (polydev-emulator, on 127.0.0.1) is started beside the
# runtime and used instead, and this script says so on every line it concerns.
set -euo pipefail
cd "$(dirname "$0")/.."

PROMPT=${PROMPT:-"Write a hello world function"}

echo "==> building polydev-runtime and polydev-emulator (release)"
cargo build --release --quiet -p polydev-runtime -p polydev-emulator
BIN=target/release

emulator_pid=""
emulator_url=""
cleanup() { [ -n "$emulator_pid" ] && kill "$emulator_pid" 2>/dev/null || true; }
trap cleanup EXIT

start_emulator() {
  [ -n "$emulator_url" ] && return
  local log
  log=$(mktemp)
  "$BIN/polydev-emulator" --listen 127.0.0.1:0 >"$log" 2>&1 &
  emulator_pid=$!
  for _ in $(seq 1 100); do
    emulator_url=$(sed -n 's/^polydev-emulator listening on \(http[^ ]*\).*/\1/p' "$log")
    [ -n "$emulator_url" ] && break
    sleep 0.05
  done
  if [ -z "$emulator_url" ]; then echo "the emulator did not start:" >&2; cat "$log" >&2; exit 1; fi
  echo "==> no API key for some providers: started the LOCAL EMULATOR at $emulator_url (not a real provider)"
}

for provider in openai anthropic google; do
  case $provider in
    openai)    key_var=OPENAI_API_KEY;    url_var=OPENAI_BASE_URL;    url_suffix=/v1; fake=sk-emulator-FAKE ;;
    anthropic) key_var=ANTHROPIC_API_KEY; url_var=ANTHROPIC_BASE_URL; url_suffix="";  fake=sk-ant-emulator-FAKE ;;
    google)    key_var=GOOGLE_API_KEY;    url_var=GOOGLE_BASE_URL;    url_suffix="";  fake=AIza-emulator-FAKE ;;
  esac
  key=${!key_var:-}
  [ "$provider" = google ] && [ -z "$key" ] && key=${GEMINI_API_KEY:-}
  if [ -n "$key" ]; then
    echo "==> $provider: REAL provider (key from \$$key_var)"
    env -i PATH="$PATH" PROVIDER=$provider "$key_var=$key" PROMPT="$PROMPT" USER_ID=demo OUTPUT=text \
      "$BIN/polydev-runtime" || echo "(exit code $?)"
  else
    start_emulator
    echo "==> $provider: EMULATOR (no \$$key_var set), model emu-len40-rate40"
    env -i PATH="$PATH" PROVIDER=$provider "$key_var=$fake" "$url_var=$emulator_url$url_suffix" \
      MODEL=emu-len40-rate40 PROMPT="$PROMPT" USER_ID=demo OUTPUT=text \
      "$BIN/polydev-runtime" || echo "(exit code $?)"
  fi
done
echo "==> done. NDJSON events instead of text: run with OUTPUT=ndjson (see README)."
