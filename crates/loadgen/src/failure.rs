//! What went wrong with one request, classified from the transport's error.
//!
//! The classification is the point of this crate: "zero failed requests" only means something if
//! a refused connect, a reset, an early close and a timeout each show up as themselves.

use std::error::Error as StdError;
use std::fmt;
use std::io;

/// Why one request did not get a full 2xx response.
///
/// Requests are never retried, so each `Failure` is one request that a real client would have
/// seen fail. The payload is a human-readable detail for debugging; group and count by
/// [`Failure::kind`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum Failure {
    /// The TCP connection could not be opened (refused, unreachable, or no answer in time).
    #[error("connect failed: {0}")]
    Connect(String),
    /// The connection was reset (ECONNRESET, EPIPE, HTTP/2 RST_STREAM) while the request was in
    /// flight.
    #[error("connection reset while the request was in flight: {0}")]
    Reset(String),
    /// The connection was closed (EOF, HTTP/2 GOAWAY) before the full response arrived, or a new
    /// connection was closed before the request could be written.
    #[error("connection closed before the full response: {0}")]
    EarlyClose(String),
    /// No full response (head and body) arrived within the request timeout.
    #[error("no full response within the request timeout")]
    Timeout,
    /// A full response arrived, with a status outside 2xx.
    #[error("status {0}")]
    Status(u16),
    /// The server's bytes are not valid HTTP.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The TLS handshake of a new connection failed (the server's certificate was refused, no
    /// common protocol, or the connection broke during the handshake): no request was sent.
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// Anything else (an unexpected I/O error, an invalid request path).
    #[error("{0}")]
    Other(String),
}

/// The kind of a [`Failure`] without its detail: the key for counting failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureKind {
    /// See [`Failure::Connect`].
    Connect,
    /// See [`Failure::Reset`].
    Reset,
    /// See [`Failure::EarlyClose`].
    EarlyClose,
    /// See [`Failure::Timeout`].
    Timeout,
    /// See [`Failure::Status`].
    Status(u16),
    /// See [`Failure::Protocol`].
    Protocol,
    /// See [`Failure::Tls`].
    Tls,
    /// See [`Failure::Other`].
    Other,
}

impl Failure {
    /// The kind of this failure, for counting.
    pub fn kind(&self) -> FailureKind {
        match self {
            Failure::Connect(_) => FailureKind::Connect,
            Failure::Reset(_) => FailureKind::Reset,
            Failure::EarlyClose(_) => FailureKind::EarlyClose,
            Failure::Timeout => FailureKind::Timeout,
            Failure::Status(status) => FailureKind::Status(*status),
            Failure::Protocol(_) => FailureKind::Protocol,
            Failure::Tls(_) => FailureKind::Tls,
            Failure::Other(_) => FailureKind::Other,
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureKind::Connect => f.write_str("connect"),
            FailureKind::Reset => f.write_str("reset"),
            FailureKind::EarlyClose => f.write_str("early close"),
            FailureKind::Timeout => f.write_str("timeout"),
            FailureKind::Status(status) => write!(f, "status {status}"),
            FailureKind::Protocol => f.write_str("protocol"),
            FailureKind::Tls => f.write_str("tls"),
            FailureKind::Other => f.write_str("other"),
        }
    }
}

/// Classifies an I/O error that happened after the request was (at least partly) written.
pub(crate) fn from_io(err: &io::Error) -> Failure {
    match err.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => Failure::Reset(err.to_string()),
        io::ErrorKind::UnexpectedEof => Failure::EarlyClose(err.to_string()),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Failure::Timeout,
        _ => Failure::Other(err.to_string()),
    }
}

/// Classifies a hyper (HTTP/1) error from sending a request or reading its response body.
///
/// Only called for requests hyper has already taken for writing; a request it gave back unsent
/// never gets here (see `conn::Http1::send`).
pub(crate) fn from_hyper(err: &hyper::Error) -> Failure {
    if let Some(io_err) = find_io(err) {
        return from_io(io_err);
    }
    let detail = chain(err);
    if err.is_timeout() {
        Failure::Timeout
    } else if err.is_incomplete_message() || err.is_canceled() || err.is_closed() {
        Failure::EarlyClose(detail)
    } else if err.is_parse() || err.is_parse_status() {
        Failure::Protocol(detail)
    } else {
        Failure::Other(detail)
    }
}

/// Classifies an h2 error on a stream that was opened (the request was sent).
pub(crate) fn from_h2(err: &h2::Error) -> Failure {
    if let Some(io_err) = err.get_io() {
        // h2 reports a plain EOF from the server as BrokenPipe ("connection closed because of a
        // broken pipe"), so over HTTP/2 that kind means the server closed, not that a write failed.
        return match io_err.kind() {
            io::ErrorKind::BrokenPipe | io::ErrorKind::UnexpectedEof => {
                Failure::EarlyClose(io_err.to_string())
            }
            _ => from_io(io_err),
        };
    }
    let reason = err
        .reason()
        .map_or_else(|| "no reason".to_owned(), |reason| reason.to_string());
    if err.is_reset() {
        Failure::Reset(format!("stream reset ({reason})"))
    } else if err.is_go_away() {
        Failure::EarlyClose(format!("GOAWAY ({reason}) before the response"))
    } else {
        Failure::Protocol(chain(err))
    }
}

/// The first `io::Error` in an error's source chain, if any.
fn find_io<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a io::Error> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(err) = current {
        if let Some(io_err) = err.downcast_ref::<io::Error>() {
            return Some(io_err);
        }
        current = err.source();
    }
    None
}

/// An error and its sources as one line: "outer: inner: innermost".
pub(crate) fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(err) = source {
        text.push_str(": ");
        text.push_str(&err.to_string());
        source = err.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_kinds_map_to_failure_kinds() {
        let kind_of = |kind| from_io(&io::Error::from(kind)).kind();
        assert_eq!(kind_of(io::ErrorKind::ConnectionReset), FailureKind::Reset);
        assert_eq!(kind_of(io::ErrorKind::BrokenPipe), FailureKind::Reset);
        assert_eq!(
            kind_of(io::ErrorKind::UnexpectedEof),
            FailureKind::EarlyClose
        );
        assert_eq!(kind_of(io::ErrorKind::TimedOut), FailureKind::Timeout);
        assert_eq!(kind_of(io::ErrorKind::PermissionDenied), FailureKind::Other);
    }

    #[test]
    fn kinds_display_for_reports() {
        assert_eq!(FailureKind::Status(503).to_string(), "status 503");
        assert_eq!(FailureKind::EarlyClose.to_string(), "early close");
        assert_eq!(Failure::Status(500).kind(), FailureKind::Status(500));
    }
}
