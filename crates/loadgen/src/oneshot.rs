//! One request on a fresh connection, for tests that check an endpoint.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::{Instant, timeout_at};

use crate::conn::{Connection, Protocol, SendError, Target};
use crate::{Failure, Response, Tls};

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
    get_on_new_connection(Target::new(addr, path, None)?, timeout).await
}

/// `GET path` over HTTPS on a fresh HTTP/1.1 connection with `Connection: close`, within
/// [`DEFAULT_TIMEOUT`]; the response's [`Response::tls`] tells whether the session was resumed
/// and which certificate the server showed. A session this gets is resumed by the next call
/// with the same `tls` (or a clone).
///
/// # Errors
///
/// As [`get_with_timeout`], plus [`Failure::Tls`] when the handshake fails (e.g. the server's
/// certificate is not issued by the CA `tls` trusts).
pub async fn get_tls(addr: SocketAddr, path: &str, tls: &Tls) -> Result<Response, Failure> {
    get_on_new_connection(Target::new(addr, path, Some(tls.clone()))?, DEFAULT_TIMEOUT).await
}

async fn get_on_new_connection(target: Target, timeout: Duration) -> Result<Response, Failure> {
    let addr = target.addr();
    let deadline = Instant::now() + timeout;
    let mut connection = timeout_at(deadline, Connection::open(&target, Protocol::Http1))
        .await
        .map_err(|_| Failure::Connect(format!("{addr}: no connection within {timeout:?}")))??;
    match timeout_at(deadline, connection.send(&target, true, None)).await {
        Err(_elapsed) => Err(Failure::Timeout),
        Ok(Ok(reply)) => Ok(reply.into_response(connection.tls.take())),
        Ok(Err(SendError::Failed(failure))) => Err(failure),
        // A brand-new connection that closes before taking the request is a server failure.
        Ok(Err(SendError::NotSent)) => Err(Failure::EarlyClose(
            "the new connection was closed before the request could be written".to_owned(),
        )),
        // Only HTTP/2 streams are refused, and this speaks HTTP/1.1.
        Ok(Err(SendError::Refused)) => Err(Failure::EarlyClose(
            "the server refused the request with GOAWAY".to_owned(),
        )),
    }
}
