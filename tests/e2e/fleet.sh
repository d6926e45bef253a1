#!/usr/bin/env bash
# A fleet behind a real load balancer (issue 15): three baton instances, each in its own
# directory with its own port, behind HAProxy configured as deploy/haproxy/haproxy.cfg, under
# wrk load through HAProxy (keep-alive, then `Connection: close`), while in turn:
#   (a) each instance is upgraded in place with scripts/restart.sh;
#   (b) the instances are replaced one by one, as a Kubernetes rolling update does it: start a
#       new instance, wait until HAProxy sees it UP, `baton stop` an old one (503 on /readyz,
#       lame duck, drain);
#   (c) a configuration change is applied to every instance by `baton reload`;
#   (d) one instance is killed with SIGKILL (reported, not asserted: what HAProxy's retries and
#       checks make of it).
# Prints the failed requests per phase and load kind; exits 1 if any request failed in (a)-(c).
#
#   tests/e2e/fleet.sh [-h]
#
# Needs cargo, curl, python3 (to pick free ports); installs haproxy and wrk with apt-get when
# they are missing (root). Loopback only; everything started here is stopped on exit.
set -euo pipefail

readonly prog="${0##*/}"
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

case "${1:-}" in
    -h | --help)
        echo "usage: $prog [-h]"
        exit 0
        ;;
    "") ;;
    *)
        echo "usage: $prog [-h]" >&2
        exit 2
        ;;
esac

ensure() {
    local cmd="$1" pkg="$2"
    command -v "$cmd" >/dev/null && return
    ((EUID == 0)) || die "$cmd is missing: apt-get install $pkg (needs root)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$pkg" >/dev/null ||
        { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$pkg" >/dev/null; }
    command -v "$cmd" >/dev/null || die "installed $pkg, but $cmd is still missing"
}
for cmd in cargo curl python3; do
    command -v "$cmd" >/dev/null || die "$cmd is missing"
done
ensure haproxy haproxy
ensure wrk wrk

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
restart="$repo/scripts/restart.sh"

# --- Clean-up ---

work=
wrk_pid=
load_end=0
haproxy_pid=
cleanup() {
    local rc=$? dir proc
    [[ -z "$wrk_pid" ]] || kill "$wrk_pid" 2>/dev/null || true
    [[ -z "$haproxy_pid" ]] || kill "$haproxy_pid" 2>/dev/null || true
    if [[ -n "$work" ]]; then
        for dir in "$work"/i*; do
            [[ -x "$dir/bin/baton" ]] || continue
            (cd "$dir" && ./bin/baton stop --timeout 20s >/dev/null 2>&1) || true
        done
        # Whatever is left in our directories (a failed stop): only those pids.
        for proc in /proc/[0-9]*; do
            if [[ "$(readlink "$proc/cwd" 2>/dev/null)" == "$work"/i* ]]; then
                kill -KILL "${proc#/proc/}" 2>/dev/null || true
            fi
        done
        if ((rc != 0)); then
            for dir in "$work"/i*; do
                [[ -f "$dir/log/baton.log" ]] || continue
                echo "--- last lines of $dir/log/baton.log:" >&2
                tail -n 15 -- "$dir/log/baton.log" >&2 || true
            done
            echo "--- what HAProxy logged (only what went wrong; last 40 lines):" >&2
            tail -n 40 -- "$work/haproxy.log" >&2 || true
        fi
        rm -rf -- "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- Build, ports, instances ---

build_release_baton

work="$(mktemp -d "${TMPDIR:-/tmp}/baton-fleet.XXXXXX")"

# Eight free loopback ports: six instance slots (three at a time, three for replacements),
# the balancer's front end and its stats page. Below the ephemeral range: a port from it may
# be taken meanwhile as the source port of one of the load's own connections.
read -r -a ports <<<"$(python3 -c '
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
found = []
for port in random.sample(range(10000, low), low - 10000):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    found.append(port)
    if len(found) == 8:
        break
print(" ".join(map(str, found)))
')"
((${#ports[@]} == 8)) || die "cannot find eight free ports below the ephemeral range"
front="${ports[6]}"
stats="${ports[7]}"

# make_instance N: a deployment directory for slot N (0-5) with its own port.
make_instance() {
    local n="$1" dir="$work/i$1"
    mkdir -p "$dir/bin" "$dir/config" "$dir/log"
    cp -- "$release_bin" "$dir/bin/baton"
    cat >"$dir/config/default.toml" <<EOF
[server]
listen = "127.0.0.1:${ports[$n]}"

[admin]
listen = "127.0.0.1:0"

[app]
greeting = "Hello from slot $n"

[lifecycle]
lame_duck = "2s"
shutdown_timeout = "30s"
EOF
}

# in_instance N COMMAND...: runs COMMAND with restart.sh's variables for slot N.
in_instance() {
    local dir="$work/i$1"
    shift
    (cd "$dir" && BATON_ROOT="$dir" BATON_BIN="$dir/bin/baton" BATON_LOG="$dir/log/baton.log" "$@")
}

# --- The balancer: deploy/haproxy/haproxy.cfg with our ports and six server slots ---

{
    sed -e "s/^    bind 127.0.0.1:8000$/    bind 127.0.0.1:$front/" \
        -e "s/^    bind 127.0.0.1:8404$/    bind 127.0.0.1:$stats/" \
        -e '/^    server baton[0-9]/d' "$repo/deploy/haproxy/haproxy.cfg"
} >"$work/haproxy.cfg"
# The balancer logs only what went wrong (a 5xx, a retry, an aborted session) to its output, so
# a failed request can be told apart: HAProxy's own 503 or a server's answer.
sed -i -e 's/^    maxconn 4096$/&\n    log stdout format raw local0/' \
    -e 's/^    log global$/&\n    option httplog\n    option dontlog-normal/' "$work/haproxy.cfg"
# The server lines go at the end of the backend: before the stats front end.
python3 - "$work/haproxy.cfg" "${ports[@]:0:6}" <<'PY'
import sys
path, ports = sys.argv[1], sys.argv[2:]
text = open(path).read()
servers = "".join(f"    server slot{i} 127.0.0.1:{p} check\n" for i, p in enumerate(ports))
marker = "    default-server inter 500ms fall 2 rise 2\n"
assert marker in text, "haproxy.cfg lost its default-server line"
open(path, "w").write(text.replace(marker, marker + servers, 1))
PY
haproxy -c -f "$work/haproxy.cfg" >/dev/null || die "haproxy rejects $work/haproxy.cfg"
haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
haproxy_pid=$!

# up_count: how many server slots HAProxy sees UP.
up_count() {
    curl -fsS --max-time 2 "http://127.0.0.1:$stats/stats;csv" 2>/dev/null |
        awk -F, '$1 == "baton" && $2 ~ /^slot/ && $18 ~ /^UP/ { n++ } END { print n + 0 }'
}
slot_up() {
    curl -fsS --max-time 2 "http://127.0.0.1:$stats/stats;csv" 2>/dev/null |
        awk -F, -v s="slot$1" '$1 == "baton" && $2 == s { print $18 }' | grep -q '^UP'
}
wait_until() {
    local what="$1" polls=300
    shift
    until "$@"; do
        ((polls-- > 0)) || die "timed out waiting for $what"
        sleep 0.1
    done
}
three_up() { [[ "$(up_count)" == 3 ]]; }

live=(0 1 2)
for n in "${live[@]}"; do
    make_instance "$n"
    in_instance "$n" "$restart" >/dev/null
done
wait_until "HAProxy to see three instances UP" three_up
url="http://127.0.0.1:$front/"
curl -fsS --max-time 5 "$url" >/dev/null || die "HAProxy does not answer $url"
say "three instances behind HAProxy at $url"

# --- Load ---

# start_load KIND SECONDS: wrk through HAProxy in the background (keepalive or close), for
# longer than the phase takes (wrk prints nothing when interrupted, so it runs its course).
start_load() {
    local header=()
    [[ "$1" == close ]] && header=(-H "Connection: close")
    wrk -t2 -c32 -d"$2s" "${header[@]}" "$url" >"$work/wrk.out" 2>&1 &
    wrk_pid=$!
    load_end=$((SECONDS + $2))
    sleep 1
}

# stop_load: waits for wrk's end; sets `figures` to "requests errors non2xx".
figures=
stop_load() {
    ((SECONDS < load_end)) || say "warning: the phase outlasted the load; its end ran unloaded"
    wait "$wrk_pid" 2>/dev/null || true
    wrk_pid=
    local requests errors non2xx
    requests="$(awk '/requests in/ { print $1 }' "$work/wrk.out")"
    errors="$(sed -n 's/.*Socket errors: connect \([0-9]*\), read \([0-9]*\), write \([0-9]*\), timeout \([0-9]*\).*/\1+\2+\3+\4/p' "$work/wrk.out")"
    non2xx="$(sed -n 's/.*Non-2xx or 3xx responses: \([0-9]*\).*/\1/p' "$work/wrk.out")"
    [[ -n "$requests" ]] || die "wrk printed no figures: $(cat "$work/wrk.out")"
    figures="${requests:-0} $((${errors:-0})) ${non2xx:-0}"
}

declare -A failed_by=()
report() {
    local phase="$1" kind="$2" requests errors non2xx
    stop_load
    read -r requests errors non2xx <<<"$figures"
    printf '%-28s %-10s %9s requests, %s socket errors, %s non-2xx\n' "$phase" "$kind" "$requests" "$errors" "$non2xx"
    failed_by["$phase/$kind"]=$((errors + non2xx))
}

# --- Phases ---

for kind in keepalive close; do
    start_load "$kind" 14
    for n in "${live[@]}"; do
        in_instance "$n" "$restart" >/dev/null 2>"$work/restart.err" ||
            die "upgrade of slot $n failed: $(cat "$work/restart.err")"
    done
    report "(a) upgrade each in place" "$kind"

    start_load "$kind" 14
    replaced=()
    for n in "${live[@]}"; do
        # Each instance's replacement takes the other half of the slots (0-2 <-> 3-5).
        new=$(((n + 3) % 6))
        rm -rf -- "$work/i$new"
        make_instance "$new"
        in_instance "$new" "$restart" >/dev/null
        wait_until "HAProxy to see slot $new UP" slot_up "$new"
        in_instance "$n" ./bin/baton stop >/dev/null
        replaced+=("$new")
    done
    live=("${replaced[@]}")
    wait_until "three instances UP after the replacement" three_up
    report "(b) rolling replacement" "$kind"

    start_load "$kind" 5
    for n in "${live[@]}"; do
        sed -i "s/^greeting = .*/greeting = \"Reloaded ($kind) in slot $n\"/" "$work/i$n/config/default.toml"
        in_instance "$n" ./bin/baton reload >/dev/null
    done
    report "(c) reload every instance" "$kind"
done

curl -fsS --max-time 5 "$url" | grep -q "Reloaded (close)" || die "the reloaded greeting is not served"

# (d) SIGKILL: reported, not asserted.
start_load keepalive 5
victim="${live[0]}"
victim_pid="$(cat "$work/i$victim/run/baton.pid")"
kill -KILL "$victim_pid"
report "(d) one instance SIGKILLed" keepalive

# --- Verdict ---

bad=0
for key in "${!failed_by[@]}"; do
    [[ "$key" == "(d)"* ]] && continue
    ((failed_by[$key] == 0)) || {
        say "requests failed in $key: ${failed_by[$key]}"
        bad=1
    }
done
((bad == 0)) || die "requests failed behind the load balancer"
echo "ok: upgrades, a rolling replacement and reloads of three instances behind HAProxy lost no request"
