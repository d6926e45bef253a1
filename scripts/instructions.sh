#!/usr/bin/env bash
# Instructions per request of `GET /`, in user space, for baton and bare axum, counted by
# valgrind's callgrind while wrk loads each server. Unlike req/s, the count does not depend on
# what else the machine is doing, so it shows a change in the request path on a busy machine
# too (BENCHMARKS.md, "Where the template's time goes"). The kernel's share (the syscalls, the
# same for both) is not counted.
#
#   scripts/instructions.sh [-h] [OUT_DIR]
#
# Builds the release binary and examples first. Keeps the callgrind files in OUT_DIR (default:
# a temporary directory, removed) for `callgrind_annotate`. Needs valgrind, wrk and curl.
# Everything runs on 127.0.0.1, on ports the kernel picks, and is stopped on exit.
set -euo pipefail

readonly prog="${0##*/}"
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

die() {
    echo "$prog: $*" >&2
    exit 1
}

case "${1:-}" in
    -h | --help)
        echo "usage: $prog [-h] [OUT_DIR]"
        exit 0
        ;;
esac

for tool in valgrind callgrind_control callgrind_annotate wrk curl python3; do
    command -v "$tool" >/dev/null || die "$tool is missing (Debian: apt-get install valgrind wrk curl python3)"
done

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
build_release
target="$(cargo_target_dir)"
target="${target:-target}"
[[ "$target" == /* ]] || target="$repo/$target"

work="$(mktemp -d)"
out="${1:-$work/out}"
mkdir -p "$out"
server_pid=
cleanup() {
    if [[ -n "$server_pid" ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf -- "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# measure NAME COMMAND...: runs COMMAND (a server on $port) under callgrind, warms it up, then
# counts the instructions of 10 s of `wrk -t1 -c10` and prints them per request.
measure() {
    local name="$1" file requests total
    shift
    file="$out/$name.callgrind"
    valgrind --tool=callgrind --callgrind-out-file="$file.%p" --dump-instr=no "$@" \
        >"$work/$name.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 600); do
        curl -fs "http://127.0.0.1:$port/" >/dev/null && break
        kill -0 "$server_pid" 2>/dev/null || die "$name exited: $(tail -5 "$work/$name.log")"
        sleep 0.1
    done
    wrk -t1 -c10 -d3s "http://127.0.0.1:$port/" >/dev/null
    callgrind_control -z "$server_pid" >/dev/null
    requests="$(wrk -t1 -c10 -d10s "http://127.0.0.1:$port/" | awk '/requests in/ {print $1}')"
    callgrind_control -d "$server_pid" >/dev/null
    kill "$server_pid"
    wait "$server_pid" 2>/dev/null || true
    # The dump taken after the counters were zeroed: only the 10 s of load. By this run's pid,
    # so that the files of an earlier run in OUT_DIR are not added in.
    total="$(callgrind_annotate "$file.$server_pid.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')"
    server_pid=
    [[ -n "$total" && "${requests:-0}" -gt 0 ]] || die "$name: no figures (see $work/$name.log)"
    echo "$name $((total / requests))"
}

port="$(free_port)"
bare="$(measure bare_axum "$target/release/examples/bare_axum" "127.0.0.1:$port")"

port="$(free_port)"
deployment="$work/baton"
mkdir -p "$deployment/config"
printf '[server]\nlisten = "127.0.0.1:%s"\nworker_threads = 2\n[admin]\nlisten = "127.0.0.1:%s"\n' \
    "$port" "$(free_port)" >"$deployment/config/default.toml"
baton="$(cd "$deployment" && measure baton "$target/release/baton" serve)"

read -r _ bare_count <<<"$bare"
read -r _ baton_count <<<"$baton"
echo "| server | instructions per GET / (user space) |"
echo "| --- | --- |"
echo "| bare axum | $bare_count |"
echo "| baton | $baton_count |"
echo "baton / bare axum: $(python3 -c "print(f'{$baton_count / $bare_count:.2f}')")"
if [[ -n "${1:-}" ]]; then
    echo "callgrind files: $out" >&2
fi
