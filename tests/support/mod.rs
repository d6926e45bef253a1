//! The harness of every real-binary test (`lifecycle`, `upgrade`, `supervisor`, `watch`): each
//! test file says `mod support;` and gets the same deployment directory, the same clients and
//! the same guarantee that nothing it started outlives it.
//!
//! Each test gets its own [`Server`]: a temporary directory laid out as a deployment,
//!
//! ```text
//! config/default.toml   written by the test from a [`Config`] (port-0 listeners, short timings)
//! bin/baton             a symlink to the binary under test; replacing it by rename is
//!                       "installing a new build", a shell script in its place a broken one
//! run/                  the server's pid file, state file and supervisor record
//! baton.log             stdout and stderr of every process (the tail is printed when a test fails)
//! ```
//!
//! and `bin/baton serve` (or `bin/baton serve --supervise`, [`Server::start_supervised`]) runs
//! there, started by path as a user would, so an upgrade re-executes `bin/baton`. Nothing is
//! shared between tests, so they run in parallel.
//!
//! # No process is left behind
//! The test process makes itself a child subreaper (`PR_SET_CHILD_SUBREAPER`): each generation
//! an upgrade leaves behind, and every process a killed generation or supervisor orphans,
//! becomes our child, so we can reap it (here pid 1 may never do so) and see its exit status.
//! When a `Server` drops, panicking or not, every process it may have produced is SIGKILLed
//! and reaped: each pid ever named by its pid file or state file, every process whose working
//! directory is its temporary directory (all of them run there: generations, supervisors,
//! workers, scripts, broken "binaries"), and their descendants. A pid is only ever signalled
//! while its start time still matches the one recorded, so a recycled pid is never hit;
//! nothing is ever killed by name.
//!
//! # A clean start
//! The fds the test process inherited without close-on-exec (a shell's pipe, say) are marked
//! close-on-exec once, so a server starts with stdin, stdout and stderr only, and every other
//! fd it holds is one it opened: what the fd checks compare.
//!
//! # Waiting
//! Tests never sleep to synchronise: [`wait_until`] polls a condition every 20 ms and fails the
//! test with what it waited for when the deadline passes. Deadlines are generous, for a loaded
//! 2-core machine.
//!
//! # Layout
//! - `config.rs`: [`Config`], the test server's `config/default.toml`.
//! - `server.rs`: [`Server`], the deployment directory and its processes.
//! - `supervised.rs`: the same server in supervised mode (`serve --supervise`).
//! - `tls.rs`: the same server speaking HTTPS (`[tls]`), probed and loaded over TLS.
//! - `cli.rs`: running `baton` client commands and scripts with a deadline.
//! - `http.rs`: a raw HTTP/1.1 client (keep-alive, requests held in flight), `GET /` parsing.
//! - `load.rs`: loadgen started, advanced and stopped with deadlines.
//! - `procs.rs`: processes as `/proc` shows them; killing and reaping by pid and start time.
//! - `fds.rs`: a process's file descriptors and TCP sockets.
//!
//! Linux only (`/proc`, `PR_SET_CHILD_SUBREAPER`); [`Fds`] asks `ss` (iproute2) which sockets
//! are TCP and in which state.

#![allow(
    dead_code,
    unreachable_pub,
    unused_imports,
    reason = "a module of each test crate: each uses part of it (and of the re-exports below), \
              and `pub` marks its API"
)]

mod cli;
mod config;
mod fds;
mod http;
mod load;
mod procs;
mod server;
mod supervised;
mod tls;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use cli::{CliOutput, parse_supervised_upgrade, parse_upgraded, run};
pub use fds::{FdKind, Fds, holds_connection};
pub use http::{Hello, InFlight, RawConn, RawResponse, metric_value};
pub use load::{let_run, start_load, start_load_on, stop_load};
pub use procs::{
    KillOnDrop, ProcInfo, alive, all_processes, children_of, exited, free_port, has_exited,
    parent_of, proc_info, reaped, zombie_children,
};
pub use server::{Config, Server};
pub use supervised::Worker;
pub use tls::{TlsSetup, block_on, start_https_load};

/// How often [`wait_until`] looks.
pub const POLL: Duration = Duration::from_millis(20);
/// For a server to start, a generation to leave, a process to exit.
pub const DEADLINE: Duration = Duration::from_secs(20);
/// For one CLI command or script (an upgrade waits for `upgrade.ready_timeout` at most).
pub const CLI_DEADLINE: Duration = Duration::from_secs(60);
/// For one request from the tests themselves.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The binary under test.
pub const BATON: &str = env!("CARGO_BIN_EXE_baton");
/// `GET /api/slow` answered 200, as `/metrics` counts it.
pub const SLOW_OK: &str = "baton_request_duration_seconds_count{route=\"/api/slow\",class=\"2xx\"}";

/// Polls `condition` every [`POLL`] until it holds; panics with `what` after `deadline`.
pub fn wait_until(deadline: Duration, what: &str, condition: impl FnMut() -> bool) {
    assert!(
        eventually(deadline, condition),
        "timed out after {deadline:?} waiting for {what}"
    );
}

/// Polls `condition` every [`POLL`] until it holds (`true`) or `deadline` passes (`false`),
/// for a caller that explains the failure itself.
pub fn eventually(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Like [`wait_until`], for a condition that yields a value.
pub fn wait_for<T>(deadline: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let mut found = None;
    wait_until(deadline, what, || {
        found = probe();
        found.is_some()
    });
    found.expect("wait_until returned, so the probe found it")
}

/// A scripts/ file of this repository, by absolute path.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}
