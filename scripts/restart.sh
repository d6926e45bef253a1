#!/usr/bin/env bash
# Start baton, or upgrade it without downtime if it is already running.
#
#   scripts/restart.sh              start, or upgrade to the binary at $BATON_BIN
#   scripts/restart.sh PATH         first install the binary at PATH as $BATON_BIN (the one it
#                                   replaces is kept as $BATON_BIN.prev once the new one serves;
#                                   if it does not, the replaced one is put back), then start or
#                                   upgrade
#   scripts/restart.sh --rollback   swap $BATON_BIN.prev back in (a second --rollback goes forward
#                                   again), then start or upgrade
#
# Whether baton runs is decided by `baton status` (the pid file, verified to be baton), never by
# `ps | grep`. An upgrade is `baton upgrade --binary $BATON_BIN`: it checks the config with that
# build, signals, waits, and prints "upgraded <old pid> -> <new pid> (<version>)" or "upgrade
# failed: <reason>"; a failed upgrade changes nothing. A running server starts, at an upgrade, the
# file it was started from (the `program:` line of `baton status`); when that is not $BATON_BIN
# (say it was started by `cargo run`, which runs target/debug/baton), installing at $BATON_BIN or
# upgrading would not change what runs, so this script says so and exits 1 before changing
# anything. Exit codes: 0 started or upgraded, 1 failed, 2 usage; when upgrading, those of
# `baton upgrade` (3 if the server stopped meanwhile).
#
# Environment:
#   BATON_ROOT            directory to run from (default: the repository root, this script's dir/..)
#   BATON_BIN             the baton binary (default: target/release/baton, relative to BATON_ROOT)
#   BATON_LOG             where a started baton logs (default: log/baton.log, relative to BATON_ROOT)
#   BATON_START_TIMEOUT   seconds to wait for a started baton to report running (default: 30)
#   BATON_STATUS_TIMEOUT  seconds `baton status` may take before it counts as broken (default: 15)
#   BATON_CONFIG_DIR, BATON_ENV, BATON_LIFECYCLE__PID_FILE, ...: read by baton itself
set -euo pipefail

readonly prog="${0##*/}"

usage() {
    echo "usage: $prog [-h] [--rollback | PATH]"
}

die() {
    echo "$prog: $*" >&2
    exit 1
}

say() {
    echo "$prog: $*" >&2
}

# --- Arguments (parsed before the cd, so a relative PATH is the caller's) ---
mode=restart
new_bin=
case $# in
    0) ;;
    1)
        case "$1" in
            -h | --help)
                usage
                exit 0
                ;;
            --rollback) mode=rollback ;;
            -*)
                usage >&2
                exit 2
                ;;
            *)
                mode=install
                new_bin="$1"
                [[ "$new_bin" == /* ]] || new_bin="$PWD/$new_bin"
                ;;
        esac
        ;;
    *)
        usage >&2
        exit 2
        ;;
esac

command -v realpath >/dev/null || die "realpath is missing (it comes with GNU coreutils)"

root="${BATON_ROOT:-$(dirname "${BASH_SOURCE[0]}")/..}"
cd "$root" || die "cannot change to $root (BATON_ROOT)"
BATON_BIN="${BATON_BIN:-target/release/baton}"
# A bare name would be looked up in $PATH when run; it means a file here.
[[ "$BATON_BIN" == */* ]] || BATON_BIN="./$BATON_BIN"
BATON_LOG="${BATON_LOG:-log/baton.log}"
BATON_START_TIMEOUT="${BATON_START_TIMEOUT:-30}"
BATON_STATUS_TIMEOUT="${BATON_STATUS_TIMEOUT:-15}"
[[ "$BATON_START_TIMEOUT" =~ ^[1-9][0-9]*$ ]] ||
    die "BATON_START_TIMEOUT must be a whole number of seconds, got '$BATON_START_TIMEOUT'"
[[ "$BATON_STATUS_TIMEOUT" =~ ^[1-9][0-9]*$ ]] ||
    die "BATON_STATUS_TIMEOUT must be a whole number of seconds, got '$BATON_STATUS_TIMEOUT'"

bin_dir="$(dirname "$BATON_BIN")"
prev_bin="$BATON_BIN.prev"

# Temp files live next to $BATON_BIN, so that the final step is a rename within one file system
# (atomic: anyone starting $BATON_BIN gets the old file or the new one, never half of one).
# Whatever is still listed here when the script exits was not renamed into place: remove it.
temp_files=()
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    if ((${#temp_files[@]})); then
        rm -rf -- "${temp_files[@]}"
    fi
}
trap cleanup EXIT

# Copies $1 to a new temp file next to $BATON_BIN (mode kept) and sets $copied to its path.
# Never `cp` onto $BATON_BIN itself: writing to a running executable fails with "Text file busy",
# and a half-written binary could be started meanwhile. (A global rather than printed output: in a
# $(...) subshell the temp file could not be registered for clean-up.)
copied=
copy_beside_bin() {
    copied="$(mktemp "$bin_dir/.baton.XXXXXX")"
    temp_files+=("$copied")
    cp -p -- "$1" "$copied"
}

# Copies $BATON_BIN to a new temp directory beside it, under the name the running server's
# executable has (`baton upgrade` signals only a process that runs a binary of its own name), and
# sets $client to it: the build that serves now drives the upgrade, since it is known to work.
# (Beside $BATON_BIN rather than in /tmp, which may be mounted noexec.)
client=
copy_client() {
    local dir
    dir="$(mktemp -d "$bin_dir/.baton.XXXXXX")"
    temp_files+=("$dir")
    client="$dir/$(basename -- "$(realpath -- "$BATON_BIN")")"
    cp -p -- "$BATON_BIN" "$client"
}

# The binary an install displaced, kept beside $BATON_BIN until the outcome is known: it becomes
# .prev when the new one serves, and goes back into place when it does not.
displaced=

install_binary() {
    local src="$1" staged
    [[ -f "$src" && -x "$src" ]] || die "$src is not an executable file"
    if [[ -e "$BATON_BIN" && "$src" -ef "$BATON_BIN" ]]; then
        say "$src is $BATON_BIN already: nothing to install"
        return
    fi
    mkdir -p -- "$bin_dir"
    copy_beside_bin "$src"
    staged="$copied"
    chmod 0755 -- "$staged"
    if [[ -e "$BATON_BIN" ]]; then
        copy_beside_bin "$BATON_BIN"
        displaced="$copied"
    fi
    mv -f -- "$staged" "$BATON_BIN"
    say "installed $src as $BATON_BIN"
}

# The new binary serves: what it replaced becomes .prev (for --rollback).
keep_displaced() {
    if [[ -n "$displaced" ]]; then
        mv -f -- "$displaced" "$prev_bin"
        say "kept the previous binary as $prev_bin"
    fi
}

# The new binary does not serve: put back the one that does, so that a failed upgrade changes
# nothing, on disk either (and .prev still holds the last good build before it).
restore_displaced() {
    if [[ -n "$displaced" ]]; then
        mv -f -- "$displaced" "$BATON_BIN"
        say "put the previous binary back at $BATON_BIN"
    fi
}

# Swaps $BATON_BIN and $BATON_BIN.prev. $BATON_BIN exists and is whole at every instant; .prev is
# missing only between the two renames.
rollback_binary() {
    [[ -f "$prev_bin" && -x "$prev_bin" ]] ||
        die "no previous binary at $prev_bin to roll back to" \
            "(one is kept when a binary is installed with \`$prog PATH\`)"
    if [[ -e "$BATON_BIN" ]]; then
        copy_beside_bin "$BATON_BIN"
        mv -f -- "$prev_bin" "$BATON_BIN"
        mv -f -- "$copied" "$prev_bin"
        say "swapped $prev_bin into place (the replaced binary is now $prev_bin)"
    else
        mv -f -- "$prev_bin" "$BATON_BIN"
        say "moved $prev_bin into place"
    fi
}

# Starts `baton serve` in the background and waits until `baton status` reports it running.
start_baton() {
    local abs_bin pid status_out status_rc log_dir
    # The running server re-executes the path it was started with at each upgrade: make it
    # absolute, so that path is $BATON_BIN whatever the working directory later.
    abs_bin="$(cd "$bin_dir" && pwd)/$(basename "$BATON_BIN")"
    log_dir="$(dirname "$BATON_LOG")"
    mkdir -p -- "$log_dir" || die "cannot create the log directory $log_dir"
    say "starting $abs_bin serve (log: $BATON_LOG)"
    nohup "$abs_bin" serve >>"$BATON_LOG" 2>&1 </dev/null &
    pid=$!

    # Poll every 0.1 s up to the deadline; bounded in count too, since each poll takes time.
    local deadline=$((SECONDS + BATON_START_TIMEOUT)) polls=$((BATON_START_TIMEOUT * 10))
    while ((SECONDS < deadline && polls-- > 0)); do
        status_rc=0
        status_out="$("$BATON_BIN" status 2>&1)" || status_rc=$?
        if ((status_rc == 0)); then
            # "running: pid N, ...": the pid from the pid file, which is the server's even if
            # it is not the process started here (a supervisor's worker, say).
            if [[ "$status_out" =~ pid\ ([0-9]+) ]]; then
                pid="${BASH_REMATCH[1]}"
            fi
            echo "started $pid"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "baton failed to start; last lines of $BATON_LOG:" >&2
            tail -n 20 -- "$BATON_LOG" >&2
            return 1
        fi
        sleep 0.1
    done

    # Alive but not running after the whole timeout: stop it, so a failed start leaves nothing
    # behind (it may hold the ports).
    kill -TERM "$pid" 2>/dev/null || true
    echo "baton did not report running within ${BATON_START_TIMEOUT}s (stopped pid $pid);" \
        "last status: ${status_out:-none}; last lines of $BATON_LOG:" >&2
    tail -n 20 -- "$BATON_LOG" >&2
    return 1
}

# Asks a binary whether baton runs, boundedly: a broken build must not hang this script.
query_status() {
    status_rc=0
    status_out="$(timeout "$BATON_STATUS_TIMEOUT" "$1" status 2>&1)" || status_rc=$?
}

# --- Main ---

# Whether baton runs is asked of the binary in place now, before a new build is installed over
# it: that one is known to work (it is the one serving, unless a build just replaced it). With
# none there yet, the build to install is asked: a server may run from another path, and must
# then be neither started twice nor told it was upgraded.
status_rc=3
status_out=
status_bin="$BATON_BIN"
if [[ ! -f "$BATON_BIN" || ! -x "$BATON_BIN" ]] && [[ "$mode" == install ]]; then
    status_bin="$new_bin"
fi
if [[ -f "$status_bin" && -x "$status_bin" ]]; then
    query_status "$status_bin"
fi

# A running server must start $BATON_BIN at its next upgrade, or nothing done here would reach it.
if ((status_rc == 0)); then
    program="$(sed -n 's/^program: //p' <<<"$status_out")"
    [[ -n "$program" ]] ||
        die "cannot tell which binary the running baton starts at an upgrade" \
            "(\`$status_bin status\` printed no program line: ${status_out}); nothing was changed"
    if [[ "$(realpath -m -- "$program")" != "$(realpath -m -- "$BATON_BIN")" ]]; then
        server_pid=
        if [[ "$status_out" =~ pid\ ([0-9]+) ]]; then
            server_pid=" (pid ${BASH_REMATCH[1]})"
        fi
        die "the running baton$server_pid starts $program at an upgrade, not $BATON_BIN:" \
            "installing or upgrading there would not change what runs; nothing was changed." \
            "Set BATON_BIN=$program to upgrade the running server, or stop it and start it" \
            "from $BATON_BIN"
    fi
    if [[ "$mode" != restart && -f "$BATON_BIN" ]]; then
        copy_client
    fi
fi

case "$mode" in
    install) install_binary "$new_bin" ;;
    rollback) rollback_binary ;;
esac

[[ -f "$BATON_BIN" && -x "$BATON_BIN" ]] ||
    die "$BATON_BIN is not an executable file (in $PWD);" \
        "build it with \`cargo build --release\`, pass a PATH to install, or set BATON_BIN"

# Undoes the install or rollback of this run after a failure.
undo() {
    case "$mode" in
        install) restore_displaced ;;
        rollback) rollback_binary ;;
    esac
}

# The client that drives the upgrade: a copy of the binary that served before an install or
# rollback (see copy_client), else $BATON_BIN; the new build only has to pass the `check` that
# `baton upgrade --binary $BATON_BIN` runs on it.
client="${client:-$BATON_BIN}"

outcome=0
case "$status_rc" in
    0)
        # Running: hand over to a new process started from $BATON_BIN. Not exec'd, so this
        # script owns the exit code (the same one) and can undo the install on failure.
        "$client" upgrade --binary "$BATON_BIN" || outcome=$?
        if ((outcome == 2)); then
            # A client older than --binary (a usage error, nothing was done): it checks the
            # server's own path, which is $BATON_BIN, as verified above.
            outcome=0
            "$client" upgrade || outcome=$?
        fi
        ;;
    3)
        start_baton || outcome=$?
        ;;
    1)
        # Exit 1 is also what a broken build answers to anything: only the client's own words
        # make it a stale pid file.
        if [[ "$status_out" != *"stale pid file"* ]]; then
            undo
            die "\`$status_bin status\` failed: ${status_out:-no output}"
        fi
        say "stale pid file (${status_out}); starting a new baton"
        start_baton || outcome=$?
        ;;
    124)
        undo
        die "\`$status_bin status\` did not answer within ${BATON_STATUS_TIMEOUT}s"
        ;;
    *)
        undo
        die "\`$status_bin status\` failed with exit code $status_rc: ${status_out:-no output}"
        ;;
esac

if ((outcome == 0)); then
    if [[ "$mode" == install ]]; then
        keep_displaced
    fi
    exit 0
fi
undo
echo "$prog: failed (exit code $outcome); a running baton is unchanged" >&2
exit "$outcome"
