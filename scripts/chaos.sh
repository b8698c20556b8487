#!/usr/bin/env bash
# The chaos suite (issue 15 item 4; crates/chaos, docs/reliability.md): N concurrent streams
# through the polydev-controller binary while it is SIGKILLed / SIGTERMed and restarted, while
# its runtimes are SIGKILLed, while the emulated upstream resets, stalls, truncates and slows,
# while clients read slowly or never, and while clients disconnect and resume in storms.
# Backends: the process backend in pull mode, the in-process fake Nomad, and Docker in pull
# mode (skipped without a reachable engine or image, except under CI=true where that fails).
#
# Usage: scripts/chaos.sh [ci|soak] [polydev-chaos flags...]
#   ci    (default) short streams, every scenario (controller restarts included); ~3 minutes
#   soak  50 concurrent 20-second streams, 3 restarts per restart scenario; run by hand
# Examples:
#   scripts/chaos.sh                                   # CI selection (scripts/test.sh runs it)
#   scripts/chaos.sh ci --no-restarts                  # without controller-kill / controller-term
#   scripts/chaos.sh soak --report docs/reliability.md
#   scripts/chaos.sh ci --scenario nomad/controller-kill
#   scripts/chaos.sh ci --list
# Env: CHAOS_RELEASE=1 builds and runs the release binaries; POLYDEV_DOCKER_BUILD=0 skips the
# image build (deploy/docker/build.sh) before the Docker scenarios.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=ci
if [[ ${1:-} == ci || ${1:-} == soak ]]; then
    mode=$1
    shift
fi

profile=debug
cargo_flags=()
if [[ ${CHAOS_RELEASE:-0} == 1 ]]; then
    profile=release
    cargo_flags=(--release)
fi
# Two invocations: built together, polydev-chaos would switch on polydev-nomad's `fake`
# feature in the controller binary too (feature unification); the suite tests the binary as
# shipped.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
cargo build --locked "${cargo_flags[@]}" -p polydev-controller -p polydev-runtime
cargo build --locked "${cargo_flags[@]}" -p polydev-chaos

if [[ ${POLYDEV_DOCKER_BUILD:-1} != 0 ]]; then
    deploy/docker/build.sh --quiet --skip-without-docker
fi

target_dir=${CARGO_TARGET_DIR:-target}
exec "$target_dir/$profile/polydev-chaos" --mode "$mode" \
    --controller "$target_dir/$profile/polydev-controller" \
    --runtime "$target_dir/$profile/polydev-runtime" "$@"
