//! Load from loadgen for the tests that must show no request is lost: started and stopped with
//! deadlines, and advanced by a count of answered requests, never by time. Call from inside a
//! multi-threaded tokio runtime (`#[tokio::test(flavor = "multi_thread")]`): the load runs on
//! its worker threads while the test thread blocks in the harness.

use std::net::SocketAddr;
use std::time::Duration;

use loadgen::{Load, LoadConfig, Mode, Report};

use super::{DEADLINE, REQUEST_TIMEOUT, eventually};

/// Starts `connections` workers of `mode` load on `GET /` and waits until requests flow.
pub fn start_load(addr: SocketAddr, mode: Mode, connections: usize) -> Load {
    start_load_on(addr, "/", mode, connections)
}

/// [`start_load`] on `GET path`.
pub fn start_load_on(addr: SocketAddr, path: &str, mode: Mode, connections: usize) -> Load {
    start_with(LoadConfig {
        path: path.to_owned(),
        connections,
        mode,
        ..LoadConfig::new(addr)
    })
}

/// [`start_load`] with `config`'s address, mode, connections and TLS.
pub(super) fn start_with(config: LoadConfig) -> Load {
    let load = loadgen::start(LoadConfig {
        // Stopped by the test; this only bounds a test that panicked with the load running.
        max_duration: Duration::from_secs(180),
        request_timeout: REQUEST_TIMEOUT,
        ..config
    });
    let_run(&load, 200);
    load
}

/// Lets the load run until it has answered `more` requests beyond what it had, so that a load
/// phase provably overlaps what the test does next.
pub fn let_run(load: &Load, more: u64) {
    let target = load.snapshot().ok + more;
    assert!(
        eventually(DEADLINE, || load.snapshot().ok >= target),
        "the load made no progress ({more} more answers wanted): {:?}",
        load.snapshot()
    );
}

/// Stops the load and prints its report.
pub async fn stop_load(load: Load) -> Report {
    let report = tokio::time::timeout(DEADLINE, load.stop())
        .await
        .expect("the load to stop");
    eprintln!("{report}");
    report
}
