#!/usr/bin/env bash
# Makes the template yours: renames `baton` to NEW_NAME everywhere, once, in the clone this
# script belongs to. Run it from a fresh clone, then review `git diff` and commit.
#
# What changes, by form of the name (NEW_NAME = my-svc as the example):
#   baton    -> my-svc   crate and binary name, file names (systemd units), paths, the pid file
#                        (run/my-svc.pid), the user, the image, commands and prose
#   baton_   -> my_svc_  where the name is part of an identifier: Rust code (`use my_svc::…`),
#   baton::              metric names (my_svc_requests_total), log filter targets (my_svc=debug)
#   BATON    -> MY_SVC   the environment prefix (MY_SVC_SERVER__LISTEN) and constants
#   Baton    -> MySvc    Rust type names
# In deploy/kubernetes/, `_` becomes `-` (object names and labels must be DNS labels).
# In Rust files, strings and comments follow the forms above and code gets identifiers.
#
# Once done it removes itself, scripts/rename-check.sh, their step in .ci/run and their
# paragraph in README.md: they exist for the template only. It refuses to run on a tree that is not the template any more, and in
# a git clone with uncommitted changes (so that the rename is one change you can review, or
# undo with `git checkout . && git clean -fd`).
#
# Needs perl and cargo (Cargo.lock is updated with `cargo update --workspace`, the code
# formatted again with `cargo fmt --all`).
set -euo pipefail

# The template's name, written so that this script does not rename its own variables.
readonly OLD="bat""on"

usage() {
    echo "usage: ${0##*/} NEW_NAME   (lowercase letters, digits, - and _, starting with a letter)"
}

fail() {
    echo "${0##*/}: $*" >&2
    exit 1
}

case "${1:-}" in
    -h | --help)
        usage
        exit 0
        ;;
esac
[[ $# -eq 1 ]] || {
    usage >&2
    exit 2
}
name="$1"

[[ "$name" =~ ^[a-z][a-z0-9_-]*$ ]] ||
    fail "\"$name\" is not a valid name: use lowercase letters, digits, - and _, starting with a letter (e.g. my-service)"
[[ "$name" != *[-_] ]] || fail "\"$name\" ends with \"${name: -1}\": end it with a letter or a digit"
[[ "$name" != *"$OLD"* ]] || fail "\"$name\" contains \"$OLD\": choose a name of your own"
((${#name} <= 40)) || fail "\"$name\" is longer than 40 characters: a unit, user and image name should be short"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
[[ -f Cargo.toml ]] || fail "no Cargo.toml in $root: run the script of a clone of the template"

command -v perl >/dev/null || fail "perl is missing: install it (Debian: apt-get install perl)"
command -v cargo >/dev/null || fail "cargo is missing: install Rust (https://rustup.rs)"

current="$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
if [[ "$current" == "$name" ]]; then
    echo "nothing to do: the package is already called $name"
    exit 0
fi
[[ "$current" == "$OLD" ]] ||
    fail "this tree is not the template any more (its package is \"$current\", not \"$OLD\"): it can be renamed only once"

in_git=no
if git rev-parse --show-toplevel >/dev/null 2>&1 && [[ "$(git rev-parse --show-toplevel)" == "$root" ]]; then
    in_git=yes
    [[ -z "$(git status --porcelain)" ]] ||
        fail "uncommitted changes in $root: commit or stash them first, so that the rename is one change to review"
fi

# Every file of the clone: the tracked ones (and untracked, unignored ones) in git, else all
# files but the build output.
list_files() {
    if [[ "$in_git" == yes ]]; then
        git ls-files -z --cached --others --exclude-standard
    else
        find . -type f -not -path './target/*' -not -path './.git/*' -printf '%P\0'
    fi
}

ident="${name//-/_}"
export NEW_NAME="$name" NEW_IDENT="$ident" NEW_ENV="${ident^^}" NEW_DNS="${name//_/-}"
NEW_CAMEL="$(perl -e 'print join "", map { ucfirst } split /[-_]/, $ARGV[0]' "$name")"
export NEW_CAMEL OLD

# 1. The contents of every text file that names the template.
changed=0
while IFS= read -r -d '' file; do
    [[ -f "$file" && ! -L "$file" ]] || continue
    # Text files only (grep -I skips binary ones).
    grep -qiI "$OLD" -- "$file" || continue
    perl -e '
        use strict;
        use warnings;
        my ($file) = @ARGV;
        my ($old, $name, $ident, $env, $camel, $dns) =
            @ENV{qw(OLD NEW_NAME NEW_IDENT NEW_ENV NEW_CAMEL NEW_DNS)};
        my ($Old, $OLD) = (ucfirst $old, uc $old);
        my $k8s = $file =~ m{^deploy/kubernetes/};

        # Prose, strings, comments, configuration, scripts.
        sub text {
            my ($s) = @_;
            # The binary, as Cargo names its path variable for the tests.
            $s =~ s/CARGO_BIN_EXE_$old/CARGO_BIN_EXE_$name/g;
            $s =~ s/$OLD/$env/g;
            $s =~ s/$Old/$camel/g;
            # Part of an identifier or a metric name, a Rust path, a log filter target.
            my $ident_after = $k8s ? qr/[A-Za-z0-9_]/ : qr/[A-Za-z0-9_]|::|=/;
            $s =~ s/(?<=[A-Za-z0-9_])$old|$old(?=$ident_after)/$ident/g;
            $s =~ s/$old/$k8s ? $dns : $name/ge;
            return $s;
        }

        # Rust code outside strings and comments: identifiers.
        sub code {
            my ($s) = @_;
            $s =~ s/$OLD/$env/g;
            $s =~ s/$Old/$camel/g;
            $s =~ s/$old/$ident/g;
            return $s;
        }

        local $/;
        open my $in, "<", $file or die "$file: $!\n";
        my $before = <$in>;
        close $in;
        my $after = $before;
        if ($file =~ /\.rs$/) {
            # Comments, strings (raw, byte) and char literals are text; identifiers and the
            # rest are code. A lifetime is not a char literal: it has no closing quote.
            $after =~ s{
                ( //[^\n]* | /\*.*?\*/ | b?r(\#*)".*?"\2 | b?"(?:[^"\\]|\\.)*"
                | b?\x27(?:[^\x27\\\n]|\\[^\x27]*)\x27 )
                | ( [A-Za-z_][A-Za-z0-9_]* | . )
            }{ defined $1 ? text($1) : code($3) }gsex;
        } else {
            $after = text($after);
        }
        exit 0 if $after eq $before;
        my $mode = (stat $file)[2] & 07777;
        open my $out, ">", "$file.rename-tmp" or die "$file.rename-tmp: $!\n";
        print {$out} $after;
        close $out or die "$file.rename-tmp: $!\n";
        chmod $mode, "$file.rename-tmp";
        rename "$file.rename-tmp", $file or die "$file: $!\n";
    ' "$file"
    changed=$((changed + 1))
done < <(list_files)

# 2. The files named after the template (deepest first, so a directory moves after its files).
moved=0
while IFS= read -r -d '' path; do
    base="${path##*/}"
    [[ "$base" == *"$OLD"* ]] || continue
    case "$path" in
        deploy/kubernetes/*) new_base="${base//"$OLD"/"$NEW_DNS"}" ;;
        *) new_base="${base//"$OLD"/"$name"}" ;;
    esac
    target="${path%"$base"}$new_base"
    [[ ! -e "$target" ]] || fail "cannot rename $path: $target exists"
    mv -- "$path" "$target"
    moved=$((moved + 1))
done < <(list_files | tr '\0' '\n' | awk -F/ '{ print NF "\t" $0 }' | sort -rn | cut -f2- | tr '\n' '\0')

# 3. The template's rename machinery: used once, and it names the template throughout.
rm -f scripts/rename.sh scripts/rename-check.sh
for file in .ci/run README.md; do
    if [[ -f "$file" ]]; then
        # The marked blocks, and the line of the layout that lists the scripts.
        perl -0pi -e 's/^(?:# |<!-- )>>> template rename.*?^(?:# |<!-- )<<< template rename[^\n]*\n//smg;
                      s{^scripts/rename\.sh [^\n]*\n}{}mg' "$file"
    fi
done

# 4. Cargo.lock names the package: update that entry only (offline when the registry's index
#    is already here, as it is after a build).
if ! cargo update --workspace --offline --quiet 2>/dev/null; then
    cargo update --workspace --quiet ||
        fail "renamed, but Cargo.lock could not be updated: run \`cargo update --workspace\`"
fi

# Names of different lengths move identifiers in sorted lists (imports): format again.
if cargo fmt --version >/dev/null 2>&1; then
    cargo fmt --all
else
    echo "note: rustfmt is missing; run \`cargo fmt --all\` once it is installed" >&2
fi

left="$(grep -rliI --exclude-dir=target --exclude-dir=.git "$OLD" . || true)"
echo "renamed $OLD -> $name: $changed files edited, $moved files renamed, Cargo.lock updated, code formatted;"
echo "removed scripts/rename.sh, scripts/rename-check.sh, their .ci/run step and README paragraph"
if [[ -n "$left" ]]; then
    echo "these files still mention \"$OLD\" (check them by hand):" >&2
    while IFS= read -r file; do
        echo "  $file" >&2
    done <<<"$left"
    exit 1
fi
echo "next: cargo test --workspace --locked, then review and commit (git add -A; git diff --cached)"
