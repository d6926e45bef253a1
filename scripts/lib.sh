# Shared by the scripts and the end-to-end checks: source it, do not run it.
# shellcheck shell=bash

# cargo_target_dir: where cargo puts its builds for the workspace in the current directory:
# `target/` unless CARGO_TARGET_DIR or a cargo config says otherwise. Prints nothing when
# cargo cannot say (the caller decides what that means).
cargo_target_dir() {
    cargo metadata --format-version 1 --no-deps |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p'
}
