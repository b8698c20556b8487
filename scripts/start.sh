#!/usr/bin/env bash
# The README's main command: build, start the controller (process backend, SQLite), stream one
# answer through it with curl, and keep serving until Ctrl-C.
#
# Provider keys belong to your users and travel in each request. If none of OPENAI_API_KEY,
# ANTHROPIC_API_KEY, GOOGLE_API_KEY / GEMINI_API_KEY is set here, the LOCAL EMULATOR
# (polydev-emulator, 127.0.0.1) is started beside the controller, runtimes are pointed at it,
# and this script says so: nothing is sent to a real provider then.
#
#   POLYDEV_LISTEN (default 127.0.0.1:8080), POLYDEV_DB (default ./polydev.db) and every other
#   POLYDEV_* setting of `polydev-controller --help` are honoured.
#   START_DEMO_ONLY=1 stops after the demo request (for scripted checks).
#
# Without POLYDEV_API_TOKEN (or POLYDEV_API_TOKEN_FILE) a random API token is made for this run
# and printed, with the web console's URL (GET /console) where you enter it.
set -euo pipefail
cd "$(dirname "$0")/.."

listen=${POLYDEV_LISTEN:-127.0.0.1:8080}
export POLYDEV_LISTEN=$listen
if [ -z "${POLYDEV_API_TOKEN:-}" ] && [ -z "${POLYDEV_API_TOKEN_FILE:-}" ]; then
  POLYDEV_API_TOKEN=$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
  export POLYDEV_API_TOKEN
  token_note="made for this run"
else
  token_note="from your environment"
fi
token=${POLYDEV_API_TOKEN:-$(cat "${POLYDEV_API_TOKEN_FILE:-/dev/null}" 2>/dev/null || true)}
token=${token%$'\n'}

echo "==> building polydev-controller, polydev-runtime, polydev-emulator (release; the first build takes a few minutes)"
build_start=$(date +%s)
cargo build --release --quiet -p polydev-controller -p polydev-runtime -p polydev-emulator
echo "    built in $(( $(date +%s) - build_start )) s"
BIN=target/release

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

wait_line() { # file pattern -> first match of the URL in the file
  for _ in $(seq 1 200); do
    url=$(sed -n "s/^$2 listening on \(http[^ ]*\).*/\1/p" "$1")
    [ -n "$url" ] && { echo "$url"; return 0; }
    sleep 0.05
  done
  echo "$2 did not start:" >&2; cat "$1" >&2; return 1
}

provider="" key=""
if [ -n "${OPENAI_API_KEY:-}" ]; then provider=openai key=$OPENAI_API_KEY
elif [ -n "${ANTHROPIC_API_KEY:-}" ]; then provider=anthropic key=$ANTHROPIC_API_KEY
elif [ -n "${GOOGLE_API_KEY:-${GEMINI_API_KEY:-}}" ]; then provider=google key=${GOOGLE_API_KEY:-$GEMINI_API_KEY}
fi

model_json=""
if [ -z "$provider" ]; then
  emu_log=$(mktemp)
  "$BIN/polydev-emulator" --listen 127.0.0.1:0 >"$emu_log" 2>&1 &
  pids+=($!)
  emu=$(wait_line "$emu_log" polydev-emulator)
  echo "==> no provider API key in the environment: started the LOCAL EMULATOR at $emu"
  echo "    runtimes are pointed at it (OPENAI_BASE_URL, ANTHROPIC_BASE_URL, GOOGLE_BASE_URL); NOT a real provider"
  export OPENAI_BASE_URL=$emu/v1 ANTHROPIC_BASE_URL=$emu GOOGLE_BASE_URL=$emu
  provider=anthropic key=sk-ant-emulator-FAKE-key
  model_json='"model":"claude-haiku-4-5-len30-rate30",'
else
  echo "==> using the REAL $provider API with the key from your environment"
fi

ctl_log=$(mktemp)
"$BIN/polydev-controller" >"$ctl_log" 2>&1 &
pids+=($!)
ctl=$(wait_line "$ctl_log" polydev-controller)
echo "==> polydev-controller serving at $ctl (process backend, SQLite at ${POLYDEV_DB:-./polydev.db}; log: $ctl_log)"

body="{\"user_id\":\"demo\",\"provider\":\"$provider\",${model_json}\"prompt\":\"Write a hello world function\",\"credentials\":{\"api_key\":\"$key\"}}"
echo "==> streaming one answer through the controller:"
echo "    curl -N $ctl/v1/executions -H \"Authorization: Bearer \$POLYDEV_API_TOKEN\" -H 'Accept: text/event-stream' -H 'Content-Type: application/json' \\"
echo "         -d '{\"user_id\":\"demo\",\"provider\":\"$provider\",${model_json}\"prompt\":\"Write a hello world function\",\"credentials\":{\"api_key\":\"…\"}}'"
echo
curl -sN "$ctl/v1/executions" -H "Authorization: Bearer $token" -H 'Accept: text/event-stream' -H 'Content-Type: application/json' -d "$body"
echo
echo "==> web console: $ctl/console"
if [ "$token_note" = "made for this run" ]; then
  echo "    API token (made for this run): $token"
else
  echo "    API token: the one in POLYDEV_API_TOKEN / POLYDEV_API_TOKEN_FILE (not shown)"
fi
echo "    (the live view lists the execution above; Perspectives asks several models at once)"
if [ "${START_DEMO_ONLY:-}" = 1 ]; then exit 0; fi
echo "==> the controller keeps running at $ctl; Ctrl-C stops it (and the emulator)."
wait "${pids[-1]}"
