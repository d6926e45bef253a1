# Shared by the end-to-end checks: source it after setting `prog` (the check's name); set
# `repo` (the repository's root) before calling its functions. Do not run it.
# shellcheck shell=bash

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"

# die MESSAGE: says what went wrong, as the check, and fails it.
die() {
    echo "${prog:?}: $*" >&2
    exit 1
}

# say MESSAGE: progress, on stderr so that the figures on stdout stay clean.
say() {
    echo "${prog:?}: $*" >&2
}

# build_release_baton: builds the release binary and sets `release_bin` to it.
build_release_baton() {
    say "building the release binary"
    (cd "${repo:?}" && build_release)
    release_bin="$(cd "$repo" && cargo_target_dir)/release/baton"
    [[ -x "$release_bin" ]] || die "cannot find the release binary at $release_bin"
}

# stop_deployment RC: stops what a check started in the deployment directory `$work`: the
# load (`$wrk_pid`), then baton with its own `baton stop`, then any generation still running
# there; shows the end of baton's log when RC says the check failed, and removes `$work`.
stop_deployment() {
    local rc="$1" pid
    if [[ -n "${wrk_pid:-}" ]] && kill -0 "$wrk_pid" 2>/dev/null; then
        kill "$wrk_pid" 2>/dev/null || true
        wait "$wrk_pid" 2>/dev/null || true
    fi
    if [[ -n "$work" && -x "$work/bin/baton" ]]; then
        # Only the pid our own pid file names, verified by `baton stop` to be that baton.
        (cd "$work" && ./bin/baton stop --timeout 20s >/dev/null 2>&1) || true
    fi
    if [[ -n "$work" && -f "$work/started.pids" ]]; then
        # Any generation still there (a failed stop): kill exactly the pids seen here, and only
        # while they still run in our directory (a pid may have been reused meanwhile).
        while read -r pid; do
            if [[ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" == "$work" ]]; then
                kill -KILL "$pid" 2>/dev/null || true
            fi
        done <"$work/started.pids"
    fi
    if ((rc != 0)) && [[ -n "$work" && -f "$work/log/baton.log" ]]; then
        echo "--- last lines of baton's log:" >&2
        tail -n 40 -- "$work/log/baton.log" >&2 || true
    fi
    [[ -z "$work" ]] || rm -rf -- "$work"
}
