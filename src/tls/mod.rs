//! TLS on the public listener (rustls), on the application's side of the lifecycle: the
//! lifecycle only gets an [`Acceptor`](crate::lifecycle::Acceptor) that turns an accepted
//! connection into a TLS stream, and serves HTTP on it with the same drain as plain HTTP.
//!
//! - The certificate is behind an `ArcSwap`: a reload (SIGUSR1/SIGHUP, `baton reload`, the file
//!   watch) reads and checks the pair again ([`ReloadParticipant`]) and swaps it in for new
//!   handshakes; open connections keep theirs. A bad pair rejects the reload, and the pair in
//!   force stays.
//! - Session tickets are encrypted with keys that rotate every `tls.ticket_rotation` and cross
//!   binary upgrades in the handover channel, so sessions resume across generations.
//!
//! # Layout
//! - `pair`: reading and checking a certificate and its key; [`Summary`].
//! - `tickets`: the rotating, exportable session-ticket keys.
//! - `handshake`: the lifecycle's acceptor: bounded handshake, counters, ALPN.
//! - `probe`: `baton health` over TLS, pinned to the configured certificate.

mod handshake;
mod pair;
mod probe;
mod tickets;

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

pub use pair::{PairError, Summary};
pub use probe::get_status_line;
pub use tickets::TicketError;

use crate::lifecycle::{Acceptor, Inherited};
use crate::settings::{Commit, ReloadParticipant, Settings, SettingsStore};
use handshake::{Counters, Handshaker};
use pair::Pair;
use tickets::TicketKeys;

/// The kind under which the ticket keys cross an upgrade (see `lifecycle::Carry`).
pub const TICKET_KEYS: &str = "tls-ticket-keys";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls: {0}")]
    Pair(#[from] PairError),
    #[error("tls: cannot make session-ticket keys: {0}")]
    Tickets(#[from] TicketError),
    #[error("tls: cannot configure rustls: {0}")]
    Config(#[source] rustls::Error),
}

/// TLS as this process serves it.
#[derive(Debug)]
pub struct Tls {
    certificates: Arc<Certificates>,
    tickets: Arc<TicketKeys>,
    handshaker: Handshaker,
    provider: Arc<CryptoProvider>,
}

/// The pair in force, for each new handshake.
#[derive(Debug)]
struct Certificates {
    in_force: ArcSwap<Pair>,
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.in_force.load().certified))
    }
}

impl Tls {
    /// TLS as the settings in force ask for it (`None`: plain HTTP), starting with the ticket
    /// keys the previous generation handed over, if any.
    pub fn build(
        settings: &Arc<SettingsStore>,
        inherited: &Inherited,
    ) -> Result<Option<Arc<Tls>>, TlsError> {
        let current = settings.current();
        let (Some(cert), Some(key)) = (&current.tls.cert, &current.tls.key) else {
            return Ok(None);
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let pair = Pair::load(cert, key, &provider)?;
        warn_if_expiring(&pair.summary);
        tracing::info!(certificate = %pair.summary.line(), "TLS on the public listener");
        let certificates = Arc::new(Certificates {
            in_force: ArcSwap::from_pointee(pair),
        });
        let tickets = Arc::new(TicketKeys::new(
            current.tls.ticket_rotation,
            inherited.get(TICKET_KEYS),
        )?);
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(certificates.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.ticketer = tickets.clone();
        let handshaker = Handshaker {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            settings: Arc::clone(settings),
            counters: Arc::default(),
        };
        Ok(Some(Arc::new(Tls {
            certificates,
            tickets,
            handshaker,
            provider,
        })))
    }

    /// What the lifecycle runs on each connection of the public listener.
    pub fn acceptor(&self) -> Arc<dyn Acceptor> {
        Arc::new(self.handshaker.clone())
    }

    /// The certificate in force.
    pub fn certificate(&self) -> Summary {
        self.certificates.in_force.load().summary.clone()
    }

    pub(crate) fn handshakes(&self) -> &Counters {
        &self.handshaker.counters
    }

    /// The ticket keys for the next generation, as `(kind, payload)`.
    pub fn export_ticket_keys(&self) -> (String, String) {
        (TICKET_KEYS.to_owned(), self.tickets.export())
    }
}

impl ReloadParticipant for Tls {
    fn prepare<'a>(
        &'a self,
        _in_force: &'a Settings,
        candidate: &'a Settings,
    ) -> futures_util::future::BoxFuture<'a, Result<Option<Commit>, String>> {
        // The files are a few kilobytes: read in place.
        Box::pin(async move { self.reread(candidate) })
    }
}

impl Tls {
    /// The configured pair read again; a commit when it differs from the one in force.
    fn reread(&self, candidate: &Settings) -> Result<Option<Commit>, String> {
        // Turning TLS off is upgrade-only: the store has kept the paths in force.
        let (Some(cert), Some(key)) = (&candidate.tls.cert, &candidate.tls.key) else {
            return Ok(None);
        };
        let pair = Pair::load(cert, key, &self.provider)
            .map_err(|err| format!("tls: {err}; the certificate in force stays"))?;
        if pair.same_as(&self.certificates.in_force.load()) {
            return Ok(None);
        }
        let certificates = Arc::clone(&self.certificates);
        Ok(Some(Box::new(move || {
            warn_if_expiring(&pair.summary);
            tracing::info!(
                certificate = %pair.summary.line(),
                "TLS certificate reloaded; new connections get it"
            );
            certificates.in_force.store(Arc::new(pair));
        })))
    }
}

/// The configured pair, read and checked, for `baton check`; `None` when TLS is off.
pub fn check(settings: &Settings) -> Result<Option<Summary>, PairError> {
    let (Some(cert), Some(key)) = (&settings.tls.cert, &settings.tls.key) else {
        return Ok(None);
    };
    let provider = rustls::crypto::ring::default_provider();
    Pair::load(cert, key, &provider).map(|pair| Some(pair.summary))
}

fn warn_if_expiring(summary: &Summary) {
    if summary.expires_soon() {
        tracing::warn!(
            certificate = %summary.line(),
            "the TLS certificate expires within {} days; renew it and reload",
            pair::EXPIRY_WARNING.as_secs() / 86_400
        );
    }
}
