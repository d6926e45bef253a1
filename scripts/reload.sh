#!/usr/bin/env bash
# Reload the running baton's configuration and say what happened.
#
# Thin on purpose: `baton reload` validates the config first, signals the verified pid and waits
# for the server's verdict, printing "reloaded (config generation N)", "unchanged", or
# "reload rejected: <reason>" (the old config then stays in force). Its exit code is ours.
#
# Environment:
#   BATON_ROOT   directory to run from (default: the repository root, this script's dir/..)
#   BATON_BIN    the baton binary (default: target/release/baton, relative to BATON_ROOT)
#   BATON_CONFIG_DIR, BATON_ENV, BATON_LIFECYCLE__PID_FILE, ...: read by baton itself
set -euo pipefail

usage() {
    echo "usage: ${0##*/} [-h] [--timeout DURATION]   (options are those of \`baton reload\`)"
}

case "${1:-}" in
    -h | --help)
        usage
        exit 0
        ;;
esac

root="${BATON_ROOT:-$(dirname "${BASH_SOURCE[0]}")/..}"
cd "$root" || {
    echo "${0##*/}: cannot change to $root (BATON_ROOT)" >&2
    exit 1
}
BATON_BIN="${BATON_BIN:-target/release/baton}"
# A bare name would be looked up in $PATH when run; it means a file here.
[[ "$BATON_BIN" == */* ]] || BATON_BIN="./$BATON_BIN"

if [[ ! -f "$BATON_BIN" || ! -x "$BATON_BIN" ]]; then
    echo "${0##*/}: $BATON_BIN is not an executable file (in $PWD);" \
        "build it with \`cargo build --release\` or set BATON_BIN" >&2
    exit 1
fi

exec "$BATON_BIN" reload "$@"
