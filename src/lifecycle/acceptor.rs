//! What the application may put between an accepted connection and HTTP, such as a TLS
//! handshake. The lifecycle calls it for each connection of the public listener and serves
//! whatever stream it returns; certificates and keys stay on the application's side.

use std::fmt;

use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};

/// The HTTP version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// A byte stream HTTP can be served on.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A connection set up by an [`Acceptor`].
pub struct Accepted {
    pub stream: Box<dyn Io>,
    /// What the two ends agreed on (TLS: ALPN `h2`, else HTTP/1.1).
    pub protocol: Protocol,
}

impl fmt::Debug for Accepted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Accepted")
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

/// Sets up each connection of the public listener before HTTP is spoken on it.
pub trait Acceptor: Send + Sync + fmt::Debug {
    /// Called once the client has sent its first bytes, with the connection's socket as the
    /// lifecycle watches it (what it already read comes first). Bounded in time by the
    /// acceptor itself (its handshake timeout); `[limits]` bound the connection from the
    /// stream it returns on. `None`: the connection is closed; the acceptor has logged and
    /// counted why.
    fn accept(&self, stream: Box<dyn Io>) -> BoxFuture<'static, Option<Accepted>>;
}
