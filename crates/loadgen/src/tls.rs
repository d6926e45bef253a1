//! TLS for the client (rustls): which certificates to trust, and whether to resume sessions.
//!
//! Verification is never turned off: a test makes its own CA (e.g. with `rcgen`), the server's
//! certificate is issued by it, and the client trusts that CA alone ([`Tls::with_ca_pem`]).

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::client::{ClientSessionMemoryCache, Resumption};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::Failure;

/// Sessions a client keeps for resumption: enough for every worker of a load run.
const SESSIONS: usize = 1024;

/// A TLS client set-up, cheap to clone; clones share their session cache, so a session one
/// connection got is resumed by the next (unless [`Tls::without_resumption`]).
#[derive(Debug, Clone)]
pub struct Tls {
    roots: Arc<RootCertStore>,
    sessions: Option<Arc<ClientSessionMemoryCache>>,
    /// `None`: the IP address of the server, which the certificate must then name.
    server_name: Option<ServerName<'static>>,
    /// HTTP/1.1 and HTTP/2 connections, as ALPN asks for each; built once.
    http1: Arc<ClientConfig>,
    http2: Arc<ClientConfig>,
}

/// What a TLS connection agreed on, as a response reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// The session was resumed (a session ticket) rather than fully negotiated.
    pub resumed: bool,
    /// The ALPN protocol, e.g. `h2` or `http/1.1`.
    pub alpn: Option<String>,
    /// The server's own certificate (DER), to tell which one it served.
    pub peer_certificate: Vec<u8>,
}

impl Tls {
    /// Trusts only the certificates in `ca_pem` (PEM), and resumes sessions.
    ///
    /// # Errors
    ///
    /// [`Failure::Other`] when `ca_pem` holds no certificate or one that rustls refuses as a
    /// root.
    pub fn with_ca_pem(ca_pem: &[u8]) -> Result<Tls, Failure> {
        let mut roots = RootCertStore::empty();
        let mut found = false;
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|err| Failure::Other(format!("CA PEM: {err}")))?;
            roots
                .add(cert)
                .map_err(|err| Failure::Other(format!("CA certificate: {err}")))?;
            found = true;
        }
        if !found {
            return Err(Failure::Other("CA PEM: no certificate found".to_owned()));
        }
        let sessions = Some(Arc::new(ClientSessionMemoryCache::new(SESSIONS)));
        Ok(Tls::build(Arc::new(roots), sessions, None))
    }

    /// Every connection does a full handshake (to measure those, or to test without
    /// resumption).
    pub fn without_resumption(self) -> Tls {
        Tls::build(self.roots, None, self.server_name)
    }

    /// Asks for, and verifies, `name` (e.g. `localhost`) instead of the server's IP address.
    ///
    /// # Errors
    ///
    /// [`Failure::Other`] when `name` is not a valid DNS name or IP address.
    pub fn server_name(self, name: &str) -> Result<Tls, Failure> {
        let name = ServerName::try_from(name.to_owned())
            .map_err(|err| Failure::Other(format!("server name {name:?}: {err}")))?;
        Ok(Tls::build(self.roots, self.sessions, Some(name)))
    }

    fn build(
        roots: Arc<RootCertStore>,
        sessions: Option<Arc<ClientSessionMemoryCache>>,
        server_name: Option<ServerName<'static>>,
    ) -> Tls {
        let config = |alpn: &[u8]| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .with_root_certificates(Arc::clone(&roots))
                .with_no_client_auth();
            config.alpn_protocols = vec![alpn.to_vec()];
            config.resumption = match &sessions {
                Some(cache) => Resumption::store(cache.clone()),
                None => Resumption::disabled(),
            };
            Arc::new(config)
        };
        Tls {
            http1: config(b"http/1.1"),
            http2: config(b"h2"),
            roots: Arc::clone(&roots),
            sessions,
            server_name,
        }
    }

    /// The TLS handshake on `stream`, asking for HTTP/2 or HTTP/1.1.
    pub(crate) async fn connect(
        &self,
        addr: SocketAddr,
        stream: TcpStream,
        http2: bool,
    ) -> Result<(TlsStream<TcpStream>, TlsInfo), Failure> {
        let config = if http2 { &self.http2 } else { &self.http1 };
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let stream = TlsConnector::from(Arc::clone(config))
            .connect(name, stream)
            .await
            .map_err(|err| Failure::Tls(format!("{addr}: {err}")))?;
        let (_, conn) = stream.get_ref();
        let info = TlsInfo {
            resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
            alpn: conn
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            peer_certificate: conn
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|cert| cert.as_ref().to_vec())
                .unwrap_or_default(),
        };
        Ok((stream, info))
    }
}
