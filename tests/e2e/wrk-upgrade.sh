#!/usr/bin/env bash
# End-to-end check of zero-downtime upgrades with wrk (issue 3, "done when"): a release build of
# baton serves from a scratch directory while `wrk -t2 -c64 -d45s` loads it, and
# scripts/restart.sh upgrades it ten times, as a user does after `cargo build --release`. Then,
# still under load, a broken build is installed (`restart.sh PATH`: must fail, put the good
# binary back and change nothing), a good one is installed by path and rolled back
# (`restart.sh --rollback`). Fails on any wrk "Socket errors" or "Non-2xx" line, on a failed
# upgrade, if the service stops answering, or if `baton_requests_total` goes back at an
# upgrade or ends below what wrk sent (issue 13: counters carry across generations). Prints
# wrk's figures.
#
#   tests/e2e/wrk-upgrade.sh [-h]
#
# Environment (defaults in brackets):
#   WRK_DURATION     seconds of load [45]
#   WRK_CONNECTIONS  wrk connections [64]
#   WRK_THREADS      wrk threads [2]
#   UPGRADES         upgrades during the load [10]
#
# Needs cargo, wrk and curl. Everything runs on 127.0.0.1, on ports the kernel picks (port 0),
# and everything started here is stopped on exit, whatever happens.
set -euo pipefail

readonly prog="${0##*/}"
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    echo "usage: $prog [-h]   (settings via WRK_DURATION, WRK_CONNECTIONS, WRK_THREADS, UPGRADES)"
}

case $# in
    0) ;;
    1)
        case "$1" in
            -h | --help)
                usage
                exit 0
                ;;
            *)
                usage >&2
                exit 2
                ;;
        esac
        ;;
    *)
        usage >&2
        exit 2
        ;;
esac

duration="${WRK_DURATION:-45}"
connections="${WRK_CONNECTIONS:-64}"
threads="${WRK_THREADS:-2}"
upgrades="${UPGRADES:-10}"
for var in duration connections threads upgrades; do
    [[ "${!var}" =~ ^[1-9][0-9]*$ ]] || die "$var must be a positive whole number, got '${!var}'"
done
((duration >= 10)) || die "WRK_DURATION must be at least 10 seconds to fit the upgrades"

for cmd in cargo wrk curl; do
    command -v "$cmd" >/dev/null || die "$cmd is missing (Debian: apt-get install $cmd; cargo: https://rustup.rs)"
done

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
restart="$repo/scripts/restart.sh"

# --- Clean-up: stop what we started, whatever happens ---

work=
wrk_pid=
cleanup() {
    local rc=$?
    stop_deployment "$rc"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- Build and lay out a deployment directory ---

build_release_baton

work="$(mktemp -d "${TMPDIR:-/tmp}/baton-wrk.XXXXXX")"
mkdir -p "$work/bin" "$work/config" "$work/log"
cp -- "$release_bin" "$work/bin/baton"
cat >"$work/config/default.toml" <<'EOF'
[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[log]
filter = "info"

[lifecycle]
lame_duck = "2s"
shutdown_timeout = "30s"

[upgrade]
ready_timeout = "30s"
# Each upgrade waits through the probation (tested on its own in tests/faults.rs); a short one
# keeps the ten upgrades inside the load.
probation = "500ms"
EOF
# A "build" that cannot even start.
printf '#!/bin/sh\nexit 1\n' >"$work/broken-baton"
chmod +x "$work/broken-baton"

export BATON_ROOT="$work" BATON_BIN="$work/bin/baton" BATON_LOG="$work/log/baton.log"

# restart.sh with our directory; its stdout is kept in $out.
out=
restart_sh() {
    out="$("$restart" "$@")"
}

# The pid restart.sh reports ("started N" / "upgraded A -> N (...)"), remembered for clean-up.
new_pid() {
    local pid
    pid="$(sed -n 's/^started \([0-9]*\)$/\1/p; s/^upgraded [0-9]* -> \([0-9]*\) .*/\1/p' <<<"$out")"
    [[ -n "$pid" ]] || die "unexpected output of restart.sh: $out"
    echo "$pid" >>"$work/started.pids"
    echo "$pid"
}

# Waits until pid $1 has exited (a replaced generation finishes its drain).
wait_gone() {
    local pid="$1" polls=600
    while kill -0 "$pid" 2>/dev/null && [[ "$(ps -o stat= -p "$pid" 2>/dev/null)" != Z* ]]; do
        ((polls-- > 0)) || die "pid $pid still runs 60 s after it was replaced"
        sleep 0.1
    done
}

# --- Start, load, upgrade ---

restart_sh
pid="$(new_pid)"
say "started baton, pid $pid"
status="$(cd "$work" && ./bin/baton status)"
addr="$(sed -n 's/.* http=\([0-9.]*:[0-9]*\).*/\1/p' <<<"$status")"
[[ -n "$addr" ]] || die "cannot find the http address in: $status"
url="http://$addr/"
curl -fsS --max-time 5 "$url" >/dev/null || die "baton does not answer $url"
admin="$(sed -n 's/.* admin=\([0-9.]*:[0-9]*\).*/\1/p' <<<"$status")"
[[ -n "$admin" ]] || die "cannot find the admin address in: $status"

# baton_requests_total, all classes: it carries across upgrades, so it must never go back.
requests_total() {
    curl -fsS --max-time 5 "http://$admin/metrics" |
        awk '/^baton_requests_total\{/ { sum += $2 } END { printf "%d\n", sum }'
}
# Read whole first: `grep -q` stops at the first match, and curl, still writing, would fail the
# pipeline (pipefail).
metrics="$(curl -fsS --max-time 5 "http://$admin/metrics")" || die "GET /metrics failed"
grep -q '^baton_request_duration_seconds_bucket{route="/"' <<<"$metrics" ||
    die "/metrics has no request duration histogram for /"

say "wrk -t$threads -c$connections -d${duration}s $url, with $upgrades upgrades"
wrk -t"$threads" -c"$connections" -d"${duration}s" --latency "$url" >"$work/wrk.out" 2>&1 &
wrk_pid=$!

# Spread the upgrades (and the broken build) over the run, the last well before its end.
step_ms=$((duration * 1000 / (upgrades + 5)))
pause() {
    sleep "$((step_ms / 1000)).$(printf '%03d' $((step_ms % 1000)))"
}

pause
for ((i = 1; i <= upgrades; i++)); do
    before="$(requests_total)"
    restart_sh || die "upgrade $i failed"
    old="$pid"
    pid="$(new_pid)"
    say "upgrade $i: $out"
    # The replaced generation exits once drained, past its probation.
    wait_gone "$old"
    after="$(requests_total)"
    ((after >= before)) || die "baton_requests_total went back at upgrade $i: $before -> $after"
    pause
done

say "installing a broken build: restart.sh must fail and change nothing"
if restart_sh "$work/broken-baton" 2>"$work/broken.err"; then
    die "restart.sh accepted a build that exits 1: $out"
fi
# Its own lines, without the log lines it quotes.
say "restart.sh failed as it should:"
grep -v '^[0-9][0-9-]*T[0-9:.]*Z ' "$work/broken.err" | sed 's/^/    /' >&2 || true
cmp -s "$work/bin/baton" "$release_bin" || die "the failed install left the broken build in place"
[[ "$(cd "$work" && ./bin/baton status)" == "running: pid $pid,"* ]] ||
    die "the server changed after a failed upgrade"
curl -fsS --max-time 5 "$url" >/dev/null || die "baton stopped answering after the broken build"
pause

# A good build installed by path keeps the one it replaces as .prev; --rollback puts that back.
restart_sh "$release_bin" || die "restart.sh $release_bin failed"
old="$pid"
pid="$(new_pid)"
say "installed $release_bin: $out"
[[ -x "$work/bin/baton.prev" ]] || die "restart.sh PATH kept no bin/baton.prev"
wait_gone "$old"
pause

restart_sh --rollback || die "restart.sh --rollback failed"
old="$pid"
pid="$(new_pid)"
say "rolled back: $out"
wait_gone "$old"

wait "$wrk_pid" || die "wrk failed: $(cat "$work/wrk.out")"
wrk_pid=

# --- Verdict ---

echo "--- wrk:"
cat "$work/wrk.out"
hello="$(curl -fsS --max-time 5 "$url")" || die "baton does not answer $url after the run"
echo "--- GET / after the run: $hello"
expected_generation=$((upgrades + 3))
[[ "$hello" == *"generation $expected_generation)"* ]] ||
    die "expected generation $expected_generation after $upgrades upgrades, an install and a rollback"
if grep -qE 'Socket errors|Non-2xx' "$work/wrk.out"; then
    die "requests failed during the upgrades: $(grep -E 'Socket errors|Non-2xx' "$work/wrk.out")"
fi
grep -q 'Requests/sec' "$work/wrk.out" || die "wrk printed no figures"
# Every request wrk saw answered was counted by the generation that answered it, and carried
# to the last one (curl's own requests add a few).
# The last replaced generation's final count reaches its successor just after it exits.
sent="$(awk '/requests in/ { print $1 }' "$work/wrk.out")"
polls=100
while counted="$(requests_total)" && ((counted < sent)); do
    ((polls-- > 0)) || die "baton_requests_total is $counted, below the $sent requests wrk sent"
    sleep 0.1
done
echo "--- baton_requests_total after the run: $counted (wrk: $sent requests)"
echo "ok: $upgrades upgrades, a broken build refused, an install and a rollback: no failed request, no counter gone back"
