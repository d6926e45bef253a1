# Shared by the scripts and the end-to-end checks: source it, do not run it.
# shellcheck shell=bash

# cargo_target_dir: where cargo puts its builds for the workspace in the current directory:
# `target/` unless CARGO_TARGET_DIR or a cargo config says otherwise. Prints nothing when
# cargo cannot say (the caller decides what that means).
cargo_target_dir() {
    cargo metadata --format-version 1 --no-deps |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p'
}

# build_release: the release build every script and check uses, always this one command. Which
# packages and targets a build names decides the features cargo unifies, so two different
# selections compile the crate twice; with one, the first caller builds and the others find it
# built. Extra flags come from CARGO_FLAGS (default: --locked).
build_release() {
    # Word splitting is wanted: CARGO_FLAGS may hold several flags.
    # shellcheck disable=SC2086
    cargo build ${CARGO_FLAGS---locked} --release --workspace --bins --examples
}
