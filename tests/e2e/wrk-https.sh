#!/usr/bin/env bash
# End-to-end check of TLS through upgrades and a certificate reload with wrk (issue 11, "done
# when"): a release build of baton serves HTTPS with a self-signed pair made here by openssl,
# while `wrk -t2 -c64 -d40s https://...` loads it and scripts/restart.sh upgrades it ten times.
# Halfway, the pair is replaced and scripts/reload.sh swaps it in: `openssl s_client` must then
# see the new serial. A TLS session saved with `openssl s_client -sess_out` before the first
# upgrade must be resumed (`Reused`) with `-sess_in` after the last one. Fails on any wrk
# "Socket errors" or "Non-2xx" line, on a failed upgrade or reload, or if the service stops
# answering. Prints wrk's figures.
#
#   tests/e2e/wrk-https.sh [-h]
#
# Environment (defaults in brackets):
#   WRK_DURATION     seconds of load [40]
#   WRK_CONNECTIONS  wrk connections [64]
#   WRK_THREADS      wrk threads [2]
#   UPGRADES         upgrades during the load [10]
#
# Needs cargo, wrk, curl and openssl. Everything runs on 127.0.0.1, on ports the kernel picks
# (port 0), and everything started here is stopped on exit, whatever happens.
set -euo pipefail

readonly prog="${0##*/}"
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    echo "usage: $prog [-h]   (settings via WRK_DURATION, WRK_CONNECTIONS, WRK_THREADS, UPGRADES)"
}

case "${1:-}" in
    "") ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        usage >&2
        exit 2
        ;;
esac
(($# <= 1)) || {
    usage >&2
    exit 2
}

duration="${WRK_DURATION:-40}"
connections="${WRK_CONNECTIONS:-64}"
threads="${WRK_THREADS:-2}"
upgrades="${UPGRADES:-10}"
for var in duration connections threads upgrades; do
    [[ "${!var}" =~ ^[1-9][0-9]*$ ]] || die "$var must be a positive whole number, got '${!var}'"
done
((duration >= 10)) || die "WRK_DURATION must be at least 10 seconds to fit the upgrades"

for cmd in cargo wrk curl openssl; do
    command -v "$cmd" >/dev/null || die "$cmd is missing (Debian: apt-get install $cmd; cargo: https://rustup.rs)"
done

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
restart="$repo/scripts/restart.sh"
reload="$repo/scripts/reload.sh"

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

work="$(mktemp -d "${TMPDIR:-/tmp}/baton-https.XXXXXX")"
mkdir -p "$work/bin" "$work/config" "$work/log" "$work/tls"
cp -- "$release_bin" "$work/bin/baton"

# make_pair NAME: a self-signed pair for 127.0.0.1 in $work/NAME.{crt,key}, as the README shows.
make_pair() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
        -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$work/$1.key" -out "$work/$1.crt" 2>/dev/null ||
        die "openssl could not make a self-signed pair"
}

# serial_of FILE: the serial as openssl prints it (and baton shows it).
serial_of() {
    openssl x509 -noout -serial -in "$1" | sed 's/^serial=//'
}

# Installs pair $1 where the configuration points, each file by rename.
install_pair() {
    cp -- "$work/$1.crt" "$work/tls/cert.pem.tmp" && mv -f -- "$work/tls/cert.pem.tmp" "$work/tls/cert.pem"
    cp -- "$work/$1.key" "$work/tls/key.pem.tmp" && mv -f -- "$work/tls/key.pem.tmp" "$work/tls/key.pem"
}

make_pair first
make_pair second
install_pair first
cat >"$work/config/default.toml" <<'EOF'
[server]
listen = "127.0.0.1:0"

[tls]
cert = "tls/cert.pem"
key = "tls/key.pem"

[admin]
listen = "127.0.0.1:0"

[log]
filter = "info"

[lifecycle]
lame_duck = "2s"
shutdown_timeout = "30s"

[upgrade]
ready_timeout = "30s"
probation = "500ms"
EOF

export BATON_ROOT="$work" BATON_BIN="$work/bin/baton" BATON_LOG="$work/log/baton.log"

# restart.sh with our directory; its stdout is kept in $out.
out=
restart_sh() {
    out="$("$restart")"
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

# s_client ARGS...: one request with openssl s_client; prints its session and certificate lines
# (its diagnostics go to $work/s_client.err). `-ign_eof`: s_client reads on until the server
# closes (`Connection: close`) instead of leaving at the end of its input, so the session ticket,
# which TLS 1.3 sends after the handshake, has arrived before it exits (without it, `-sess_out`
# sometimes wrote nothing).
s_client() {
    printf 'GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' |
        timeout 10 openssl s_client -connect "$addr" -servername localhost -ign_eof "$@" \
            2>"$work/s_client.err" || true
}

# --- Start, save a session, load, upgrade, reload ---

restart_sh
pid="$(new_pid)"
say "started baton, pid $pid"
status="$(cd "$work" && ./bin/baton status)"
addr="$(sed -n 's/.* http=\([0-9.]*:[0-9]*\).*/\1/p' <<<"$status")"
[[ -n "$addr" ]] || die "cannot find the http address in: $status"
url="https://$addr/"
curl -fsS --max-time 5 --cacert "$work/first.crt" "$url" >/dev/null ||
    die "baton does not answer $url with the first certificate"

s_client -sess_out "$work/session.pem" -CAfile "$work/first.crt" >"$work/s_client.before"
grep -q '^New, TLSv1.3' "$work/s_client.before" ||
    die "no new TLS 1.3 session at the start: $(cat "$work/s_client.before" "$work/s_client.err")"
[[ -s "$work/session.pem" ]] ||
    die "openssl s_client saved no session ticket: $(cat "$work/s_client.err")"

say "wrk -t$threads -c$connections -d${duration}s $url, with $upgrades upgrades and a certificate reload"
wrk -t"$threads" -c"$connections" -d"${duration}s" --latency "$url" >"$work/wrk.out" 2>&1 &
wrk_pid=$!

step_ms=$((duration * 1000 / (upgrades + 4)))
pause() {
    sleep "$((step_ms / 1000)).$(printf '%03d' $((step_ms % 1000)))"
}

pause
for ((i = 1; i <= upgrades; i++)); do
    restart_sh || die "upgrade $i failed"
    old="$pid"
    pid="$(new_pid)"
    say "upgrade $i: $out"
    wait_gone "$old"
    if ((i == upgrades / 2)); then
        install_pair second
        reloaded="$("$reload")" || die "the certificate reload failed: $reloaded"
        say "replaced the pair: $reloaded"
        served="$(s_client -CAfile "$work/second.crt" -showcerts | openssl x509 -noout -serial 2>/dev/null | sed 's/^serial=//')"
        [[ "$served" == "$(serial_of "$work/second.crt")" ]] ||
            die "after the reload, new connections get serial '$served', not $(serial_of "$work/second.crt")"
        say "new connections get the new certificate, serial $served"
    fi
    pause
done

wait "$wrk_pid" || die "wrk failed: $(cat "$work/wrk.out")"
wrk_pid=

# --- Verdict ---

echo "--- wrk:"
cat "$work/wrk.out"
hello="$(curl -fsS --max-time 5 --cacert "$work/second.crt" "$url")" ||
    die "baton does not answer $url with the second certificate after the run"
echo "--- GET / after the run: $hello"
[[ "$hello" == *"generation $((upgrades + 1)))"* ]] ||
    die "expected generation $((upgrades + 1)) after $upgrades upgrades"
if grep -qE 'Socket errors|Non-2xx' "$work/wrk.out"; then
    die "requests failed: $(grep -E 'Socket errors|Non-2xx' "$work/wrk.out")"
fi
grep -q 'Requests/sec' "$work/wrk.out" || die "wrk printed no figures"

s_client -sess_in "$work/session.pem" >"$work/s_client.after"
grep -q '^Reused, TLSv1.3' "$work/s_client.after" ||
    die "the session from generation 1 was not resumed by generation $((upgrades + 1)); openssl s_client said:
$(cat "$work/s_client.after" "$work/s_client.err")"
echo "--- openssl s_client -sess_in (session from generation 1): $(grep '^Reused,' "$work/s_client.after")"
echo "ok: HTTPS through $upgrades upgrades and a certificate reload: no failed request, the session resumed"
