#!/usr/bin/env bash
# Runs the database tests (tests/database.rs) against a real PostgreSQL: a private cluster made
# for this run in a temporary directory, listening on 127.0.0.1 at a free port, owned by an
# unprivileged user, and removed at exit however the script ends. Nothing of the machine's own
# PostgreSQL (if any) is touched.
#
#   scripts/postgres-tests.sh                 # the PostgreSQL half of tests/database.rs
#   scripts/postgres-tests.sh -- --nocapture  # extra arguments go to the test binary
#   scripts/postgres-tests.sh --shell         # start the cluster, print its URL, wait for Ctrl-C
#
# Needs PostgreSQL's server programs (initdb and pg_ctl, found in /usr/lib/postgresql/<version>/bin
# or on PATH) and cargo. When they are missing it installs Debian's `postgresql` package with
# apt-get, which needs root (as CI runs), without the package's own cluster. PostgreSQL refuses
# to run as root: run as root, the cluster runs as the user in PG_USER (default: nobody).
#
# Environment:
#   PG_USER       the user the cluster runs as when this script runs as root (default: nobody)
#   CARGO_FLAGS   extra flags for `cargo test` (default: --locked)
set -euo pipefail

usage() {
    echo "usage: ${0##*/} [-h] [--shell] [-- TEST ARGS...]"
}

shell=no
while (($#)); do
    case "$1" in
        -h | --help)
            usage
            exit 0
            ;;
        --shell)
            shell=yes
            shift
            ;;
        --)
            shift
            break
            ;;
        *)
            usage >&2
            exit 2
            ;;
    esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."

fail() {
    echo "${0##*/}: $*" >&2
    exit 1
}

# The newest installed server's programs, else those on PATH; empty when there are none.
find_bindir() {
    local dir found=
    for dir in /usr/lib/postgresql/*/bin; do
        [[ -x "$dir/initdb" ]] && found="$dir"
    done
    if [[ -z "$found" ]] && command -v initdb >/dev/null; then
        found="$(dirname "$(command -v initdb)")"
    fi
    echo "$found"
}

bindir="$(find_bindir)"
if [[ -z "$bindir" ]]; then
    if ((EUID != 0)) || ! command -v apt-get >/dev/null; then
        fail "PostgreSQL's initdb is not installed; install it (Debian: apt-get install postgresql) or run as root"
    fi
    echo "${0##*/}: installing postgresql"
    # The package would otherwise create and start a cluster of the machine's own; this script
    # needs only the programs.
    mkdir -p /etc/postgresql-common
    echo "create_main_cluster = false" >>/etc/postgresql-common/createcluster.conf
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    bindir="$(find_bindir)"
    [[ -n "$bindir" ]] || fail "installed postgresql, but found no initdb in /usr/lib/postgresql/*/bin"
fi
command -v cargo >/dev/null || fail "cargo is not in PATH; install Rust (https://rustup.rs)"

# As root, run the cluster's programs as an unprivileged user; otherwise as ourselves.
as_owner=()
if ((EUID == 0)); then
    owner="${PG_USER:-nobody}"
    id "$owner" >/dev/null 2>&1 || fail "user $owner does not exist; set PG_USER to an unprivileged user"
    as_owner=(runuser -u "$owner" --)
fi

# A free loopback port: the first of a few random ones that nothing listens on.
port=
for _ in $(seq 1 50); do
    candidate=$((20000 + RANDOM % 40000))
    if [[ -z "$(ss -Htln "sport = :$candidate" 2>/dev/null)" ]]; then
        port=$candidate
        break
    fi
done
[[ -n "$port" ]] || fail "found no free port on 127.0.0.1"

work="$(mktemp -d "${TMPDIR:-/tmp}/baton-postgres.XXXXXX")"
cleanup() {
    local pid
    if [[ -f "$work/data/postmaster.pid" ]]; then
        if ! "${as_owner[@]}" "$bindir/pg_ctl" -D "$work/data" -m immediate -w stop >/dev/null 2>&1; then
            # pg_ctl could not do it: SIGQUIT is its immediate shutdown.
            pid="$(head -n 1 "$work/data/postmaster.pid")"
            if [[ "$pid" =~ ^[0-9]+$ ]]; then
                kill -QUIT "$pid" 2>/dev/null || true
            fi
        fi
    fi
    rm -rf -- "$work"
}
trap cleanup EXIT
if ((${#as_owner[@]})); then
    chown "$owner" "$work"
fi

echo "${0##*/}: $("$bindir/postgres" --version) in $work, port $port"
"${as_owner[@]}" "$bindir/initdb" -D "$work/data" -U baton --auth=trust -E UTF8 --no-sync >"$work/initdb.log" 2>&1 ||
    {
        cat "$work/initdb.log" >&2
        fail "initdb failed"
    }
# Loopback only, its socket in the work directory (not /var/run/postgresql, which may not be
# ours); room for the tests that run at once, each with two generations' pools.
"${as_owner[@]}" "$bindir/pg_ctl" -D "$work/data" -l "$work/postgres.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $work -c max_connections=300" start >/dev/null ||
    {
        cat "$work/postgres.log" >&2
        fail "PostgreSQL did not start"
    }

export BATON_TEST_DATABASE_URL="postgres://baton@127.0.0.1:$port/postgres"
if [[ "$shell" == yes ]]; then
    echo "BATON_TEST_DATABASE_URL=$BATON_TEST_DATABASE_URL"
    echo "Ctrl-C stops and removes the cluster."
    trap 'exit 0' INT TERM
    # `wait` returns at once on a signal, so the cleanup runs without waiting for `sleep`.
    while true; do
        sleep 3600 &
        wait $!
    done
fi

out="$work/test.out"
status=0
# --workspace as the README's `cargo test --workspace`: the same selection reuses that build,
# where another one would compile the crate and its tests again.
# Word splitting is wanted: CARGO_FLAGS may hold several flags.
# shellcheck disable=SC2086
cargo test ${CARGO_FLAGS---locked} --workspace --test database -- postgres "$@" 2>&1 | tee "$out" || status=$?
((status == 0)) || fail "the database tests failed on PostgreSQL (exit status $status)"
# A test that found no database would skip itself and pass: that must not count.
if grep -q "skipped on PostgreSQL" "$out"; then
    fail "some tests did not reach PostgreSQL at $BATON_TEST_DATABASE_URL"
fi
grep -qE "test result: ok\. [1-9][0-9]* passed" "$out" || fail "no PostgreSQL test ran"
echo "${0##*/}: the database tests passed on PostgreSQL"
