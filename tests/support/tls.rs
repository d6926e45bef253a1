//! The server speaking HTTPS (`[tls]` set, [`TlsSetup`]): the harness's own probes (the wait
//! for a new server, [`Server::try_get`] and so [`Server::hello`]) and its load go over TLS
//! with the client that trusts the test's CA, never unverified.

use std::future::Future;
use std::net::SocketAddr;

use loadgen::{Load, LoadConfig, Mode};

use super::REQUEST_TIMEOUT;
use super::load::start_with;
use super::server::Server;

pub use super::config::TlsSetup;

impl Server {
    /// `GET path` on `http` on a new connection, over TLS when the server speaks it (resuming
    /// no session, so a probe never changes what a test of resumption sees).
    pub(super) fn probe(
        &self,
        http: SocketAddr,
        path: &str,
    ) -> Result<loadgen::Response, loadgen::Failure> {
        match &self.tls {
            None => loadgen::get_blocking(http, path, REQUEST_TIMEOUT),
            Some(tls) => block_on(loadgen::get_tls(
                http,
                path,
                &tls.clone().without_resumption(),
            )),
        }
    }
}

/// [`super::start_load`] on `server`'s public listener, over TLS when it speaks it.
pub fn start_https_load(server: &Server, mode: Mode, connections: usize) -> Load {
    start_with(LoadConfig {
        connections,
        mode,
        tls: server.tls.clone(),
        ..LoadConfig::new(server.http)
    })
}

/// Runs `future` to its end on a runtime of its own, on a thread of its own: the synchronous
/// harness is also called from `#[tokio::test]`s, where a runtime cannot be entered again.
pub fn block_on<F>(future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a current-thread runtime")
                    .block_on(future)
            })
            .join()
            .expect("the future does not panic")
    })
}
