//! The TLS handshake of each connection of the public listener, bounded by
//! `tls.handshake_timeout`, counted by outcome for `/metrics`, and the protocol it agreed on
//! (ALPN) handed to the lifecycle's HTTP serving code.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::future::BoxFuture;
use rustls::HandshakeKind;
use tokio_rustls::TlsAcceptor;

use crate::lifecycle::{Accepted, Acceptor, Io, Protocol};
use crate::settings::SettingsStore;

/// Why a handshake failed, as `/metrics` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Not finished within `tls.handshake_timeout`.
    Timeout,
    /// The client closed or reset the connection.
    Closed,
    /// The client refused us with an alert (e.g. it does not trust the certificate).
    Alert,
    /// Nothing in common: versions, cipher suites, ALPN protocols.
    Incompatible,
    /// Not TLS, or TLS spoken wrongly (e.g. plain HTTP sent to the HTTPS port).
    Protocol,
    /// Anything else (an I/O error).
    Other,
}

impl Failure {
    pub(crate) const ALL: [Failure; 6] = [
        Failure::Timeout,
        Failure::Closed,
        Failure::Alert,
        Failure::Incompatible,
        Failure::Protocol,
        Failure::Other,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Closed => "closed",
            Failure::Alert => "alert",
            Failure::Incompatible => "incompatible",
            Failure::Protocol => "protocol",
            Failure::Other => "other",
        }
    }

    fn of(err: &std::io::Error) -> Failure {
        use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
        if let Some(tls) = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            return match tls {
                rustls::Error::AlertReceived(_) => Failure::Alert,
                rustls::Error::PeerIncompatible(_) | rustls::Error::NoApplicationProtocol => {
                    Failure::Incompatible
                }
                _ => Failure::Protocol,
            };
        }
        match err.kind() {
            UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe => Failure::Closed,
            _ => Failure::Other,
        }
    }
}

/// Handshakes by outcome since this process started.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    full: AtomicU64,
    resumed: AtomicU64,
    failed: [AtomicU64; Failure::ALL.len()],
}

impl Counters {
    pub(crate) fn full(&self) -> u64 {
        self.full.load(Ordering::Relaxed)
    }

    pub(crate) fn resumed(&self) -> u64 {
        self.resumed.load(Ordering::Relaxed)
    }

    /// Each failure with its count, in the order of [`Failure::ALL`].
    pub(crate) fn failed(&self) -> [(Failure, u64); Failure::ALL.len()] {
        std::array::from_fn(|i| (Failure::ALL[i], self.failed[i].load(Ordering::Relaxed)))
    }

    fn count_failure(&self, failure: Failure) {
        let index = Failure::ALL
            .iter()
            .position(|f| *f == failure)
            .expect("every failure is in Failure::ALL");
        self.failed[index].fetch_add(1, Ordering::Relaxed);
    }
}

/// The lifecycle's [`Acceptor`] for the public listener.
#[derive(Clone)]
pub(crate) struct Handshaker {
    pub(crate) acceptor: TlsAcceptor,
    /// Read at each connection, so a reload of `tls.handshake_timeout` applies to the next.
    pub(crate) settings: Arc<SettingsStore>,
    pub(crate) counters: Arc<Counters>,
}

impl std::fmt::Debug for Handshaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshaker")
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Acceptor for Handshaker {
    fn accept(&self, stream: Box<dyn Io>) -> BoxFuture<'static, Option<Accepted>> {
        let timeout = self.settings.current().tls.handshake_timeout;
        let handshake = self.acceptor.accept(stream);
        let counters = Arc::clone(&self.counters);
        Box::pin(async move {
            let failure = match tokio::time::timeout(timeout, handshake).await {
                Ok(Ok(stream)) => {
                    let (_, conn) = stream.get_ref();
                    let protocol = match conn.alpn_protocol() {
                        Some(b"h2") => Protocol::Http2,
                        _ => Protocol::Http1,
                    };
                    let counter = match conn.handshake_kind() {
                        Some(HandshakeKind::Resumed) => &counters.resumed,
                        _ => &counters.full,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    return Some(Accepted {
                        stream: Box::new(stream),
                        protocol,
                    });
                }
                Ok(Err(err)) => {
                    // Debug only: any client can cause these, as often as it likes.
                    tracing::debug!(error = %err, "TLS handshake failed");
                    Failure::of(&err)
                }
                Err(_) => Failure::Timeout,
            };
            counters.count_failure(failure);
            None
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Error, ErrorKind};

    use super::*;

    #[test]
    fn failures_are_told_apart_by_what_the_client_did() {
        let tls = |err: rustls::Error| Error::new(ErrorKind::InvalidData, err);
        let alert = tls(rustls::Error::AlertReceived(
            rustls::AlertDescription::UnknownCA,
        ));
        assert_eq!(Failure::of(&alert), Failure::Alert);
        let nothing_shared = tls(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::NoCipherSuitesInCommon,
        ));
        assert_eq!(Failure::of(&nothing_shared), Failure::Incompatible);
        let not_tls = tls(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType,
        ));
        assert_eq!(Failure::of(&not_tls), Failure::Protocol);
        assert_eq!(
            Failure::of(&Error::from(ErrorKind::UnexpectedEof)),
            Failure::Closed
        );
        assert_eq!(
            Failure::of(&Error::from(ErrorKind::OutOfMemory)),
            Failure::Other
        );
    }
}
