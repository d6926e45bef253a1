#!/usr/bin/env bash
# The attack suite's short mode, for CI: every hostile client of SECURITY.md against the release
# binary, with [limits] bounds of seconds, in about a minute and a half. Builds the release
# binary and the examples first, so it never attacks a stale binary.
#
# Fails (exit 1) only when the server crashed, a probe of the admin listener failed, or a bound
# was exceeded (memory during an attack, fds after it): never on a timing, which a shared CI
# machine cannot promise. The table is printed either way; SECURITY.md says what it means.
#
# Options are passed to the suite after `--short` (e.g. `--only h2-zero-window`); see
# `target/release/examples/hostile --help`.
#
# Environment:
#   CARGO_FLAGS   extra flags for `cargo build` (default: --locked)
set -euo pipefail

usage() {
    echo "usage: ${0##*/} [-h] [SUITE OPTIONS...]"
}

case "${1:-}" in
    -h | --help)
        usage
        exit 0
        ;;
esac

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

if ! command -v cargo >/dev/null 2>&1; then
    echo "${0##*/}: cargo is not in PATH; install Rust (https://rustup.rs)" >&2
    exit 1
fi

build_release

target_dir="$(cargo_target_dir)"
hostile="${target_dir:-target}/release/examples/hostile"

started=$SECONDS
status=0
"$hostile" --short "$@" || status=$?
echo "${0##*/}: the short attack suite took $((SECONDS - started)) s (exit status $status)" >&2
exit "$status"
