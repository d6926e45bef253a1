//! `baton`: see the crate docs and README. Parsing and dispatch only.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Before anything can start a thread: reading the inherited sockets edits the environment.
    let startup = baton::lifecycle::Startup::capture();
    let cli = baton::cli::Cli::parse();
    baton::cli::run(cli, startup)
}
