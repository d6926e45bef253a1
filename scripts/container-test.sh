#!/usr/bin/env bash
# Container test: builds the image and checks, with podman, what someone running baton in a
# container relies on:
#   - it serves on the published port, as a non-root user, and its HEALTHCHECK passes;
#   - SIGUSR1 reloads the configuration (mounted from the host);
#   - SIGUSR2 under load upgrades the worker with 0 failed requests (wrk), and the container
#     keeps running: same container, same PID 1 (baton's supervisor); an item stored before
#     the upgrade (SQLite in /app/data) is still there after it;
#   - `podman stop` drains and exits 0, well within the drain timeout.
# Prints the figures (image size, requests and failures under load, stop time); exit 0 when
# every check passes, 1 with the reason otherwise.
#
# No image registry is reachable here, so the image is built from the `prebuilt` stage of the
# Dockerfile: the static musl binary is built on the host and put in a small build context
# with config/ (see the Dockerfile's header). The `runtime` stage, which compiles in a Rust
# image, yields the same layout.
#
# Everything podman creates (storage, containers, images) lives in a temporary directory that
# is removed at exit, so the host's podman state is never touched. Needs root (podman with
# runc) and installs podman, runc, wrk, curl and binutils with apt-get when they are missing.
#
# Environment:
#   LOAD_SECONDS   how long wrk runs across the upgrade (default 10)
#   CONNECTIONS    wrk connections (default 16)
set -euo pipefail

usage() {
    echo "usage: ${0##*/} [-h]   (see the header of this script for what it checks)"
}

case "${1:-}" in
    -h | --help)
        usage
        exit 0
        ;;
    "") ;;
    *)
        usage >&2
        exit 2
        ;;
esac

LOAD_SECONDS="${LOAD_SECONDS:-10}"
CONNECTIONS="${CONNECTIONS:-16}"
TARGET=x86_64-unknown-linux-musl
# baton's lifecycle.shutdown_timeout default: `podman stop` must not kill it before that.
DRAIN_TIMEOUT=30

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

say() {
    printf '%s\n' "$*"
}

fail() {
    echo "container-test: FAILED: $*" >&2
    if [[ -n "${container:-}" ]]; then
        echo "--- container log (last 40 lines) ---" >&2
        pod logs --tail 40 "$container" >&2 || true
    fi
    exit 1
}

# Polls a command until it succeeds, at most $1 seconds.
wait_until() {
    local seconds="$1" what="$2"
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || fail "timed out after ${seconds}s waiting for $what"
        sleep 0.1
    done
}

# ---------------------------------------------------------------------------------------------
# Prerequisites.
missing=()
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
command -v strip >/dev/null || missing+=(binutils)
# SQLite and ring compile C: for the musl target that takes musl's compiler wrapper.
command -v musl-gcc >/dev/null || missing+=(musl-tools)
if ((${#missing[@]} > 0)); then
    if [[ $EUID -ne 0 ]] || ! command -v apt-get >/dev/null; then
        fail "missing ${missing[*]}; install them (Debian: apt-get install ${missing[*]}) and run as root"
    fi
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[[ $EUID -eq 0 ]] || fail "podman with runc here needs root; run as root"
command -v cargo >/dev/null || fail "cargo not found"
if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
    rustup target add "$TARGET"
fi

# ---------------------------------------------------------------------------------------------
# Scratch space and a private podman: its own storage and configuration, removed at exit.
work="$(mktemp -d /tmp/baton-container-test.XXXXXX)"
# The container the checks are on (its log is shown on failure), and the first one.
container=
first=
image="localhost/baton-container-test:$$"
wrk_pid=

cleanup() {
    if [[ -n "$wrk_pid" ]]; then
        kill "$wrk_pid" 2>/dev/null || true
    fi
    local name
    for name in "$first" "$container"; do
        if [[ -n "$name" ]]; then
            pod rm --force --time 0 "$name" >/dev/null 2>&1 || true
        fi
    done
    pod rmi --force "$image" >/dev/null 2>&1 || true
    rm -rf -- "$work" || echo "container-test: could not remove $work" >&2
}
trap cleanup EXIT

# What this sandbox needs (see DESIGN.md section 7): runc, explicit ulimits (podman's default
# nproc limit is one runc is not permitted to set here: "error setting rlimits"), cgroupfs and
# a file event log (there is no systemd or journald).
cat >"$work/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF="$work/containers.conf"

# vfs: no overlay-on-overlay problems; the image is a few megabytes.
pod() {
    podman --root "$work/storage" --runroot "$work/runroot" --storage-driver vfs "$@" \
        2> >(grep -v 'unable to get systemd connection' >&2)
}

# ---------------------------------------------------------------------------------------------
say "==> building the static binary ($TARGET)"
cargo build --release --locked --target "$TARGET" --bin baton

say "==> building the image (Dockerfile target \`prebuilt\`)"
context="$work/context"
mkdir -p "$context/run" "$context/data"
target_dir="$(cargo_target_dir)"
[[ -n "$target_dir" ]] || fail "cannot find cargo's target directory"
# As the Dockerfile's build stage does: line tables are for the host, not the image.
strip -o "$context/baton" "$target_dir/$TARGET/release/baton"
cp -r config "$context/config"
cp Dockerfile "$context/Dockerfile"
# HEALTHCHECK is part of the docker image format only.
pod build --quiet --format docker --target prebuilt --tag "$image" "$context" >/dev/null ||
    fail "podman build failed"
image_bytes="$(pod image inspect --format '{{.Size}}' "$image")"
user="$(pod image inspect --format '{{.Config.User}}' "$image")"
[[ "$user" == "65532:65532" ]] || fail "the image runs as '$user', expected 65532:65532"
say "ok: image $(awk -v b="$image_bytes" 'BEGIN { printf "%.1f MB", b / 1e6 }'), user $user"

# ---------------------------------------------------------------------------------------------
say "==> starting the container"
# The configuration comes from the host, so the reload below has something to change.
config="$work/config"
cp -r config "$config"
chmod -R a+rX "$work"
container="$(pod run --detach --name "baton-container-test-$$" \
    --publish 127.0.0.1::8080 \
    --volume "$config:/app/config:ro" \
    "$image")" || fail "podman run failed"
first="$container"
addr="$(pod port "$container" 8080/tcp)"
url="http://$addr/"
wait_until 20 "GET $url" curl -fsS --max-time 2 "$url"
body="$(curl -fsS --max-time 2 "$url")"
say "ok: $url -> $body"
[[ "$body" == *"generation 1)"* ]] || fail "unexpected greeting: $body"
# The supervisor writes the pid file once its worker is ready, which is just after it serves.
wait_until 20 "baton status in the container" pod exec "$container" /baton status
status="$(pod exec "$container" /baton status)"
[[ "$status" == "running: pid 1, supervised"* ]] ||
    fail "expected the supervisor as PID 1, got: $status"
say "ok: $status"
pod healthcheck run "$container" >/dev/null || fail "the HEALTHCHECK (/baton health) failed"
say "ok: HEALTHCHECK passes"

# ---------------------------------------------------------------------------------------------
say "==> reload (SIGUSR1)"
greeting="Hello from the container test"
sed -i "s/^greeting = .*/greeting = \"$greeting\"/" "$config/default.toml"
pod kill --signal USR1 "$container" >/dev/null
greeting_is_new() {
    curl -fsS --max-time 2 "$url" | grep -q "^$greeting (.*generation 1)"
}
wait_until 10 "the new greeting" greeting_is_new
say "ok: reloaded: $(curl -fsS --max-time 2 "$url")"

# ---------------------------------------------------------------------------------------------
say "==> upgrade (SIGUSR2) under load: wrk -c $CONNECTIONS -d ${LOAD_SECONDS}s"
curl -fsS --max-time 2 -H 'Content-Type: application/json' -d '{"name":"kept"}' \
    "${url}api/items" >/dev/null || fail "POST /api/items failed"
id_before="$(pod inspect --format '{{.Id}}' "$container")"
pid1_before="$(pod inspect --format '{{.State.Pid}}' "$container")"
wrk -t 2 -c "$CONNECTIONS" -d "${LOAD_SECONDS}s" "$url" >"$work/wrk.txt" 2>&1 &
wrk_pid=$!
# Upgrade in the middle of the run, once every connection carries traffic.
sleep $((LOAD_SECONDS / 3))
pod kill --signal USR2 "$container" >/dev/null
wait "$wrk_pid" || fail "wrk failed: $(cat "$work/wrk.txt")"
wrk_pid=
requests="$(awk '/requests in/ { print $1 }' "$work/wrk.txt")"
# wrk prints these lines only when there is something to count.
socket_errors="$(awk '/Socket errors:/ { gsub(",", ""); print $4 + $6 + $8 + $10 }' "$work/wrk.txt")"
non_2xx="$(awk '/Non-2xx or 3xx responses:/ { print $5 }' "$work/wrk.txt")"
failed=$((${socket_errors:-0} + ${non_2xx:-0}))
[[ -n "$requests" ]] || fail "cannot read wrk's output: $(cat "$work/wrk.txt")"
body="$(curl -fsS --max-time 2 "$url")" || fail "not serving after the upgrade"
[[ "$body" == *"generation 2)"* ]] || fail "expected generation 2 after the upgrade, got: $body"
running="$(pod inspect --format '{{.State.Running}}' "$container")"
id_after="$(pod inspect --format '{{.Id}}' "$container")"
pid1_after="$(pod inspect --format '{{.State.Pid}}' "$container")"
[[ "$running" == true ]] || fail "the container stopped during the upgrade"
[[ "$id_after" == "$id_before" && "$pid1_after" == "$pid1_before" ]] ||
    fail "the container or its PID 1 changed during the upgrade"
((failed == 0)) || fail "$failed failed requests during the upgrade: $(cat "$work/wrk.txt")"
say "ok: upgraded with $requests requests, $failed failed; container still running (PID 1 unchanged): $body"
items="$(curl -fsS --max-time 2 "${url}api/items")" || fail "GET /api/items failed after the upgrade"
[[ "$items" == *'"name":"kept"'* ]] || fail "the item stored before the upgrade is gone: $items"
say "ok: the item stored before the upgrade is still there"

# ---------------------------------------------------------------------------------------------
say "==> stop (SIGTERM, drain)"
started_ns="$(date +%s%N)"
pod stop --time $((DRAIN_TIMEOUT + 15)) "$container" >/dev/null
stop_ms=$((($(date +%s%N) - started_ns) / 1000000))
exit_code="$(pod inspect --format '{{.State.ExitCode}}' "$container")"
((exit_code == 0)) || fail "exit code $exit_code after podman stop"
((stop_ms < DRAIN_TIMEOUT * 1000)) || fail "stop took ${stop_ms} ms, over the drain timeout"
say "ok: stopped in ${stop_ms} ms, exit code 0"

# ---------------------------------------------------------------------------------------------
say "==> as deploy/kubernetes runs it: read-only root, no capabilities, emptyDirs for /app/run and /app/data"
# A host directory as an emptyDir is: empty, root-owned, mode 0777. (Podman's --tmpfs would do,
# but runc here mounts it 0755 root whatever the mode option says.)
mkdir -m 0777 "$work/empty-dir" "$work/empty-data"
strict="$(pod run --detach --name "baton-container-test-strict-$$" \
    --read-only --read-only-tmpfs=false \
    --volume "$work/empty-dir:/app/run" \
    --volume "$work/empty-data:/app/data" \
    --cap-drop ALL --security-opt no-new-privileges \
    --publish 127.0.0.1::8080 \
    "$image")" || fail "podman run (read-only) failed"
container="$strict"
strict_url="http://$(pod port "$strict" 8080/tcp)/"
wait_until 20 "GET $strict_url (read-only root)" curl -fsS --max-time 2 "$strict_url"
wait_until 20 "baton status (read-only root)" pod exec "$strict" /baton status
# SQLite writes to the emptyDir at /app/data, the one writable place besides /app/run.
curl -fsS --max-time 2 -H 'Content-Type: application/json' -d '{"name":"read-only root"}' \
    "${strict_url}api/items" >/dev/null || fail "POST /api/items failed (read-only root)"
pod stop --time $((DRAIN_TIMEOUT + 15)) "$strict" >/dev/null
exit_code="$(pod inspect --format '{{.State.ExitCode}}' "$strict")"
((exit_code == 0)) || fail "exit code $exit_code after podman stop (read-only root)"
say "ok: serves, stores an item, answers \`baton status\`, stops with exit code 0"

say ""
say "container test passed: image $(awk -v b="$image_bytes" 'BEGIN { printf "%.1f MB", b / 1e6 }');" \
    "upgrade under load: $requests requests, $failed failed; stop: ${stop_ms} ms"
