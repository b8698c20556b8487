#!/usr/bin/env bash
# Builds the FROM-scratch images, with no registry access:
#
#   polydev-runtime:latest, polydev-runtime:<version>    (deploy/docker/Dockerfile)
#   polydev-emulator:latest, polydev-emulator:<version>  (deploy/docker/Dockerfile.emulator)
#
# Each binary is compiled statically for x86_64-unknown-linux-gnu (glibc, +crt-static; the flag
# is set for these builds only, never workspace-wide) and copied into an otherwise empty image.
#
# Idempotent and fast when nothing changed: cargo does nothing, and an image is rebuilt only when
# its binary's sha256 (recorded in the image label dev.polydev.binary.sha256) or a tag differs.
# Safe to run concurrently (tests may call it): runs are serialized with a lock file.
#
# Usage: deploy/docker/build.sh [--force] [--quiet] [--skip-without-docker]
#   --force                rebuild the images even if they are up to date
#   --quiet                print only the final summary line
#   --skip-without-docker  no reachable Docker Engine: say so and exit 0, except under CI
#                          (CI=true), where that is an error (scripts/test.sh uses this)
# Env: DOCKER (default docker), CARGO (default cargo)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DOCKER="${DOCKER:-docker}"
CARGO="${CARGO:-cargo}"
TARGET=x86_64-unknown-linux-gnu
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case $TARGET_DIR in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
OUT="$TARGET_DIR/$TARGET/release"
STAGE="$TARGET_DIR/docker-context"
FORCE=0
QUIET=0
SKIP_WITHOUT_DOCKER=0
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        --quiet) QUIET=1 ;;
        --skip-without-docker) SKIP_WITHOUT_DOCKER=1 ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument $arg (see --help)" >&2; exit 64 ;;
    esac
done

log() { [[ $QUIET -eq 1 ]] || printf 'build.sh: %s\n' "$*" >&2; }
die() { printf 'build.sh: error: %s\n' "$*" >&2; exit 1; }

under_ci() { [[ -n "${CI:-}" && "${CI}" != "0" && "${CI,,}" != "false" ]]; }
no_docker() {
    if [[ $SKIP_WITHOUT_DOCKER -eq 1 ]] && ! under_ci; then
        printf 'build.sh: SKIPPED: %s (the Docker tests will report themselves skipped)\n' "$1" >&2
        exit 0
    fi
    die "$1"
}
command -v "$DOCKER" >/dev/null 2>&1 || no_docker "no '$DOCKER' command on PATH"
"$DOCKER" version --format '{{.Server.Version}}' >/dev/null 2>&1 \
    || no_docker "the Docker Engine is not reachable (is dockerd running, and may this user use its socket?)"

mkdir -p "$TARGET_DIR"
exec 9>"$TARGET_DIR/.docker-build.lock"
flock 9

# One cargo invocation per binary: building both packages together would unify their
# dependencies' features and grow the runtime with the emulator's server code.
build_static() {
    local pkg="$1"
    log "cargo build --release --target $TARGET -p $pkg (+crt-static)"
    local quiet=()
    [[ $QUIET -eq 1 ]] && quiet=(--quiet)
    (
        cd "$ROOT"
        unset CARGO_ENCODED_RUSTFLAGS
        RUSTFLAGS="-C target-feature=+crt-static" \
            "$CARGO" build "${quiet[@]}" --locked --release --target "$TARGET" -p "$pkg" --bin "$pkg"
    )
    local bin="$OUT/$pkg"
    [[ -x "$bin" ]] || die "cargo produced no $bin"
    # getrandom >= 0.3 finds getrandom(2) with dlsym, which a static binary cannot; it then
    # needs /dev/urandom (Docker provides it) unless built with
    # --cfg getrandom_backend="linux_getrandom". Today only getrandom 0.2 (ring) is linked,
    # which calls the syscall directly.
    if (cd "$ROOT" && "$CARGO" tree --locked -q -p "$pkg" --target "$TARGET" -e normal --prefix none 2>/dev/null) \
        | grep -E '^getrandom v0\.([3-9]|[1-9][0-9])' >/dev/null; then
        printf 'build.sh: warning: %s now links getrandom >= 0.3: add --cfg getrandom_backend="linux_getrandom" to its RUSTFLAGS (docs: deploy/docker/README.md)\n' "$pkg" >&2
    fi
    # A dynamic binary would fail in an empty image with a confusing "no such file".
    if command -v readelf >/dev/null 2>&1 && readelf -lW "$bin" | grep 'Requesting program interpreter' >/dev/null; then
        die "$bin is dynamically linked"
    fi
}

# build_image NAME DOCKERFILE VERSION
build_image() {
    local name="$1" dockerfile="$2" version="$3"
    local bin="$OUT/$name"
    local sha
    sha="$(sha256sum "$bin" | cut -d' ' -f1)"
    local latest="$name:latest" pinned="$name:$version"
    local have_sha have_id pinned_id
    have_sha="$("$DOCKER" image inspect -f '{{index .Config.Labels "dev.polydev.binary.sha256"}}' "$latest" 2>/dev/null || true)"
    have_id="$("$DOCKER" image inspect -f '{{.Id}}' "$latest" 2>/dev/null || true)"
    pinned_id="$("$DOCKER" image inspect -f '{{.Id}}' "$pinned" 2>/dev/null || true)"
    if [[ $FORCE -eq 0 && "$have_sha" == "$sha" && -n "$have_id" && "$pinned_id" == "$have_id" ]]; then
        log "$latest and $pinned are up to date (binary sha256 ${sha:0:12})"
        return
    fi
    local ctx="$STAGE/$name"
    rm -rf "$ctx"
    mkdir -p "$ctx"
    cp "$bin" "$ctx/$name"
    log "docker build $latest, $pinned"
    # The legacy builder needs no buildx plugin and, for FROM scratch, no registry. Its output
    # (and its deprecation notice) is shown only when the build fails.
    local blog="$STAGE/$name.build.log"
    if ! DOCKER_BUILDKIT=0 "$DOCKER" build --pull=false \
        -f "$ROOT/deploy/docker/$dockerfile" \
        --build-arg "VERSION=$version" --build-arg "BINARY_SHA256=$sha" \
        -t "$latest" -t "$pinned" "$ctx" >"$blog" 2>&1; then
        cat "$blog" >&2
        die "docker build of $latest failed"
    fi
    rm -f "$blog"
    rm -rf "$ctx"
    # The image it replaced, now untagged, would pile up on every rebuild.
    if [[ -n "$have_id" && "$have_id" != "$("$DOCKER" image inspect -f '{{.Id}}' "$latest")" ]]; then
        "$DOCKER" image rm "$have_id" >/dev/null 2>&1 || true
    fi
}

build_static polydev-runtime
build_static polydev-emulator

# The version tag is what the binary reports (the workspace version in Cargo.toml).
VERSION="$("$OUT/polydev-runtime" --version | awk 'NR == 1 {print $2}')"
[[ "$VERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+ ]] || die "cannot read the version from polydev-runtime --version: '$VERSION'"

build_image polydev-runtime Dockerfile "$VERSION"
build_image polydev-emulator Dockerfile.emulator "$VERSION"

# Smoke test, hardened: proves the image starts in an empty rootfs as a non-root user.
"$DOCKER" run --rm --read-only --cap-drop ALL --security-opt no-new-privileges \
    --user 65534:65534 --pids-limit 8 --memory 16m --network none \
    polydev-runtime:latest --version >/dev/null \
    || die "polydev-runtime:latest --version failed in a hardened container"

size() { "$DOCKER" image inspect -f '{{.Size}}' "$1"; }
printf 'build.sh: polydev-runtime:latest polydev-runtime:%s (%s bytes), polydev-emulator:latest polydev-emulator:%s (%s bytes)\n' \
    "$VERSION" "$(size polydev-runtime:latest)" "$VERSION" "$(size polydev-emulator:latest)" >&2
