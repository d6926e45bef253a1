//! The drain, shared by shutdown and upgrade: lame duck, graceful, hammer.
//!
//! 1. **Lame duck** (`lifecycle.lame_duck`): stop accepting, keep serving open connections,
//!    `Connection: close` on every HTTP/1 response (each client closes after its next response
//!    and reconnects, to the next generation if there is one), GOAWAY on HTTP/2, `/readyz` 503,
//!    long responses told to end. Ends early once no connection is left.
//! 2. **Graceful**: idle connections are closed, in-flight requests finish.
//! 3. **Hammer** at `lifecycle.shutdown_timeout` (from the start of the drain): what is left is
//!    cut, and counted in the log.
//!
//! Closing idle keep-alive connections at once (what `with_graceful_shutdown` does) resets
//! requests already on the wire to them; the lame duck is what makes that race vanish.

use std::time::{Duration, Instant};

use super::serve::Server;
use super::state::ProcessState;

/// What the drain did, for the log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DrainReport {
    pub(crate) lame_duck: Duration,
    pub(crate) total: Duration,
    /// Connections still open at the hammer.
    pub(crate) cut: usize,
}

pub(crate) async fn drain(
    server: &mut Server,
    process: &ProcessState,
    lame_duck: Duration,
    shutdown_timeout: Duration,
) -> DrainReport {
    let start = Instant::now();
    server.stop_accepting().await;
    process.begin_drain();
    tracing::info!(
        open_connections = server.connections.len(),
        "draining: stopped accepting; open connections close after their next response"
    );

    let _ = tokio::time::timeout(lame_duck, server.connections.wait()).await;
    let lame_duck_took = start.elapsed();

    server.graceful.cancel();
    let left = shutdown_timeout.saturating_sub(start.elapsed());
    let cut = match tokio::time::timeout(left, server.connections.wait()).await {
        Ok(()) => 0,
        Err(_) => server.connections.len(),
    };
    if cut > 0 {
        tracing::warn!(
            cut,
            timeout = ?shutdown_timeout,
            "drain deadline reached: cutting the connections still open"
        );
    }
    DrainReport {
        lame_duck: lame_duck_took,
        total: start.elapsed(),
        cut,
    }
}
