//! The drain, shared by shutdown and upgrade: lame duck, graceful, hammer.
//!
//! 1. **Lame duck** (`lifecycle.lame_duck`): stop accepting, keep serving open connections,
//!    `Connection: close` on every HTTP/1 response (each client closes after its next response
//!    and reconnects, to the next generation if there is one), GOAWAY on HTTP/2, each from
//!    the connection's moment in `lifecycle.close_spread` (see `spread`), `/readyz` 503,
//!    long-lived responses told to end (`LongLived::draining`: WebSockets get Close 1001, SSE
//!    a `draining` event). Ends early once no connection and no long-lived response is left.
//! 2. **Graceful**: idle connections are closed, in-flight requests finish.
//! 3. **Hammer** at `lifecycle.shutdown_timeout` (from the start of the drain), or earlier when
//!    newer generations fill `upgrade.max_draining` (see `draining`): what is left is cut, and
//!    counted in the log. Long-lived responses are waited for like connections: an upgraded
//!    WebSocket is no connection task any more, and would otherwise die unannounced at exit.
//!
//! After an upgrade the drain may be called off (the next generation died during its
//! probation): the server accepts again, and the connections told to close reconnect to it.
//!
//! Closing idle keep-alive connections at once (what `with_graceful_shutdown` does) resets
//! requests already on the wire to them; the lame duck is what makes that race vanish.

use std::future::Future;
use std::pin::pin;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a drain works on: the connections of a server that stopped accepting (see
/// `Server::stop_accepting`), owned so that the server stays free to accept again meanwhile
/// (a rollback) or to close its sockets (the end of a probation).
#[derive(Debug)]
pub(crate) struct Draining {
    pub(crate) connections: TaskTracker,
    /// Cancelled at the graceful step.
    pub(crate) graceful: CancellationToken,
    pub(crate) started: Instant,
}

/// What the drain did, for the log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DrainReport {
    pub(crate) lame_duck: Duration,
    pub(crate) total: Duration,
    /// Connections still open at the hammer.
    pub(crate) cut: usize,
    /// Long-lived responses still running at the hammer (an SSE stream is also a connection;
    /// an upgraded WebSocket is only this).
    pub(crate) cut_long_lived: usize,
}

/// How long each step may take.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timings {
    pub(crate) lame_duck: Duration,
    pub(crate) shutdown_timeout: Duration,
}

/// Runs the lame duck, the graceful step and the hammer. The caller has stopped accepting and
/// marked the process draining (`Connection: close`, `/readyz` 503, long-lived responses told,
/// `long_lived` closed). `hammer_now` resolves, with the reason, if the drain must end before
/// its deadline.
pub(crate) async fn drain(
    work: Draining,
    long_lived: TaskTracker,
    timings: Timings,
    hammer_now: impl Future<Output = String>,
) -> DrainReport {
    let Draining {
        connections,
        graceful,
        started,
    } = work;
    tracing::info!(
        open_connections = connections.len(),
        long_lived = long_lived.len(),
        "draining: stopped accepting; open connections close after their next response"
    );
    // Connections first: a long-lived response is only ever registered by a request, on a
    // connection, so once no connection is left none can appear.
    let mut finished = pin!(async {
        connections.wait().await;
        long_lived.wait().await;
    });
    let mut hammer_now = pin!(hammer_now);
    let mut done = false;
    let mut hammered = None;
    let lame_duck_left = timings.lame_duck.saturating_sub(started.elapsed());
    tokio::select! {
        () = &mut finished => done = true,
        () = tokio::time::sleep(lame_duck_left) => {}
        reason = &mut hammer_now => hammered = Some(reason),
    }
    let lame_duck_took = started.elapsed();

    graceful.cancel();
    if !done && hammered.is_none() {
        let left = timings.shutdown_timeout.saturating_sub(started.elapsed());
        tokio::select! {
            () = &mut finished => {}
            () = tokio::time::sleep(left) => {
                hammered = Some(format!(
                    "drain deadline reached (lifecycle.shutdown_timeout = {:?})",
                    timings.shutdown_timeout
                ));
            }
            reason = &mut hammer_now => hammered = Some(reason),
        }
    }
    let (cut, cut_long_lived) = match &hammered {
        Some(_) => (connections.len(), long_lived.len()),
        None => (0, 0),
    };
    if let Some(reason) = hammered
        && cut + cut_long_lived > 0
    {
        tracing::warn!(
            cut,
            cut_long_lived,
            %reason,
            "hammer: cutting the connections and long-lived responses still open"
        );
    }
    DrainReport {
        lame_duck: lame_duck_took,
        total: started.elapsed(),
        cut,
        cut_long_lived,
    }
}
