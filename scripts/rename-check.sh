#!/usr/bin/env bash
# Checks that the template can be renamed: copies this working tree (tracked files and
# untracked ones git does not ignore; no target/, no .git/) to a temporary directory, runs
# scripts/rename.sh NAME there, then checks that no trace of the old name is left (in contents
# or in file names), that the copy is formatted, builds every target of
# `cargo test --workspace --locked`, passes the tests that read the name at run time, and that
# the binary calls itself NAME.
#
# The tests run are those where the name is more than an identifier the compiler checks: the
# unit tests, the settings (environment variables are prefixed with the name), the lifecycle
# (an upgrade hands its sockets over in variables named after it) and the API with its access
# log. The whole suite is the same code under another name, and CI runs it once already;
# running it twice was about a quarter of CI's time.
#
# Usage: scripts/rename-check.sh [NAME]   (default: acme)
#
# Environment:
#   RENAME_CHECK_TARGET_DIR  where the renamed copy builds (default: this tree's own target
#                            directory, so that the dependencies it built are not built again;
#                            the renamed crate's files have their own names there, and
#                            are removed when the check is done)
#   RENAME_CHECK_KEEP=1      keep the renamed copy and print where it is
set -euo pipefail

usage() {
    echo "usage: ${0##*/} [NAME]   (default: acme)"
}

fail() {
    echo "${0##*/}: $*" >&2
    exit 1
}

case "$#:${1:-}" in
    1:-h | 1:--help)
        usage
        exit 0
        ;;
    0:* | 1:*) ;;
    *)
        usage >&2
        exit 2
        ;;
esac
name="${1:-acme}"
readonly OLD="bat""on"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
command -v cargo >/dev/null || fail "cargo is missing: install Rust (https://rustup.rs)"

target_dir="${RENAME_CHECK_TARGET_DIR:-}"
if [[ -z "$target_dir" ]]; then
    target_dir="$(cargo_target_dir)"
    [[ -n "$target_dir" ]] || fail "cannot find the target directory (cargo metadata)"
fi

scratch="$(mktemp -d)"
cleanup() {
    if [[ "${RENAME_CHECK_KEEP:-0}" == 1 ]]; then
        echo "the renamed copy is in $scratch/tree"
    else
        rm -rf -- "$scratch"
    fi
}
trap cleanup EXIT
tree="$scratch/tree"
mkdir "$tree"

# The working tree as it is (uncommitted changes included), as git sees it.
if git rev-parse --show-toplevel >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' file; do
            # Deleted but not yet committed: not part of the tree.
            if [[ -e "$file" || -L "$file" ]]; then
                printf '%s\0' "$file"
            fi
        done |
        tar --null --no-recursion -T - -cf - | tar -xf - -C "$tree"
else
    tar --exclude=./target --exclude=./.git -cf - . | tar -xf - -C "$tree"
fi

echo "+ scripts/rename.sh $name (in a copy: $tree)"
"$tree/scripts/rename.sh" "$name"

# Nothing of the old name is left, in any case (baton, Baton, BATON), in contents or names.
left="$(grep -rniI -- "$OLD" "$tree" || true)"
if [[ -n "$left" ]]; then
    echo "$left" | head -n 50 >&2
    fail "the renamed copy still says \"$OLD\" ($(wc -l <<<"$left") lines, the first 50 above)"
fi
names="$(find "$tree" -iname "*$OLD*")"
[[ -z "$names" ]] || fail "files still named after \"$OLD\": $names"
echo "no \"$OLD\" left"

cd "$tree"
echo "+ cargo fmt --all --check"
cargo fmt --all --check
export CARGO_TARGET_DIR="$target_dir"
echo "+ cargo test --workspace --locked --no-run (CARGO_TARGET_DIR=$target_dir)"
cargo test --workspace --locked --no-run
tests=(--lib --test settings --test lifecycle --test api --test access_log)
echo "+ cargo test --workspace --locked ${tests[*]}"
cargo test --workspace --locked "${tests[@]}"
# What a user sees first: the binary's own name.
version="$("$target_dir/debug/$name" --version)"
[[ "$version" == "$name "* ]] || fail "\`$name --version\` says \"$version\""
echo "renamed to $name: builds, tests pass, \`$name --version\` says \"$version\""
# The renamed crate's builds sit beside the original's under their own names: a second copy of
# every test binary, which nothing uses once the check is done. Its dependencies stay.
echo "+ cargo clean --package $name (its builds only; CARGO_TARGET_DIR=$target_dir)"
cargo clean --locked --package "$name"
