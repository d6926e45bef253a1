#!/usr/bin/env bash
# Checks that the template can be renamed: copies this working tree (tracked files and
# untracked ones git does not ignore; no target/, no .git/) to a temporary directory, runs
# scripts/rename.sh NAME there, then checks that no trace of the old name is left (in contents
# or in file names), that the copy is formatted, builds and passes
# `cargo test --workspace --locked`, and that the binary calls itself NAME.
#
# Usage: scripts/rename-check.sh [NAME]   (default: acme)
#
# Environment:
#   RENAME_CHECK_TARGET_DIR  where the renamed copy builds (default: rename-check/ in this
#                            tree's target directory: kept between runs, and apart from the
#                            main build so that the two never wait for each other's lock)
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
    main_target="$(cargo_target_dir)"
    [[ -n "$main_target" ]] || fail "cannot find the target directory (cargo metadata)"
    target_dir="$main_target/rename-check"
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
echo "+ cargo test --workspace --locked (CARGO_TARGET_DIR=$target_dir)"
CARGO_TARGET_DIR="$target_dir" cargo test --workspace --locked
# What a user sees first: the binary's own name.
version="$("$target_dir/debug/$name" --version)"
[[ "$version" == "$name "* ]] || fail "\`$name --version\` says \"$version\""
echo "renamed to $name: builds, tests pass, \`$name --version\` says \"$version\""
