//! One request on a fresh connection, for tests that check an endpoint.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::{Instant, timeout_at};

use crate::conn::{Connection, Protocol, SendError, Target};
use crate::{Failure, Response};

/// How long [`get`] waits for connect plus full response.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// `GET path` on a fresh HTTP/1.1 connection with `Connection: close`, within [`DEFAULT_TIMEOUT`].
///
/// Returns the response whatever its status; see [`get_with_timeout`].
///
/// # Errors
///
/// See [`get_with_timeout`].
pub async fn get(addr: SocketAddr, path: &str) -> Result<Response, Failure> {
    get_with_timeout(addr, path, DEFAULT_TIMEOUT).await
}

/// `GET path` on a fresh HTTP/1.1 connection with `Connection: close`; `timeout` bounds the
/// connect and the full response together. Never retries.
///
/// Returns the response whatever its status (a test may want the body of a 503); chain
/// [`Response::error_for_status`] to treat non-2xx as a failure.
///
/// # Errors
///
/// [`Failure::Connect`] if no connection could be opened (including no connection within
/// `timeout`), [`Failure::Timeout`] if the response did not arrive in full within `timeout`,
/// [`Failure::Reset`] / [`Failure::EarlyClose`] / [`Failure::Protocol`] if the connection broke
/// or the server sent something that is not HTTP, [`Failure::Other`] for an invalid `path`
/// (it must start with `/`).
pub async fn get_with_timeout(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<Response, Failure> {
    let target = Target::new(addr, path)?;
    let deadline = Instant::now() + timeout;
    let mut connection = timeout_at(deadline, Connection::open(addr, Protocol::Http1))
        .await
        .map_err(|_| Failure::Connect(format!("{addr}: no connection within {timeout:?}")))??;
    match timeout_at(deadline, connection.send(&target, true)).await {
        Err(_elapsed) => Err(Failure::Timeout),
        Ok(Ok(reply)) => Ok(reply.into()),
        Ok(Err(SendError::Failed(failure))) => Err(failure),
        // A brand-new connection that closes before taking the request is a server failure.
        Ok(Err(SendError::NotSent)) => Err(Failure::EarlyClose(
            "the new connection was closed before the request could be written".to_owned(),
        )),
    }
}
