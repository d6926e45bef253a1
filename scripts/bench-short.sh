#!/usr/bin/env bash
# The benchmark's short mode, for CI: a few upgrades and reloads per mode under load, in about
# half a minute. Builds the release binary and the examples first, so it never measures a stale
# binary.
#
# Fails (exit 1) only when a request failed, a process was left running, or the run could not
# complete (e.g. an upgrade never took over): never on a timing, which a shared CI machine
# cannot promise. The table is printed either way; BENCHMARKS.md says what it means.
#
# Options are passed to the benchmark after `--short` (e.g. `--json bench.json`); see
# `target/release/examples/bench --help`.
#
# Environment:
#   CARGO_FLAGS   extra flags for `cargo build` (default: --locked)
set -euo pipefail

usage() {
    echo "usage: ${0##*/} [-h] [BENCH OPTIONS...]"
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

# The binary directly rather than `cargo run`: it was just built, and it then finds baton and
# bare_axum next to itself in the same target directory.
target_dir="$(cargo_target_dir)"
bench="${target_dir:-target}/release/examples/bench"

started=$SECONDS
status=0
"$bench" --short "$@" || status=$?
echo "${0##*/}: the short benchmark took $((SECONDS - started)) s (exit status $status)" >&2
exit "$status"
