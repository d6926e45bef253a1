//! Accepting and serving connections, with the hooks the drain needs: stop accepting, mark
//! HTTP/1 responses `Connection: close` while draining, shut connections down gracefully.
//!
//! axum's `serve` is not used because the drain needs control it does not give: which
//! protocol a connection speaks (HTTP/2 gets GOAWAY, never `Connection: close`), and that a
//! connection accepted but not yet read is not cancelled at the graceful step while its
//! request may already be on the wire (hyper-util's auto builder does cancel those).

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::header::{CONNECTION, HeaderValue};
use axum::http::{Request, Version};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::listeners::Bound;
use super::state::ProcessState;

/// How long a new connection may stay silent before its first byte, like hyper's own
/// header-read timeout: bounds what an idle client can hold.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(30);
/// Back-off after an accept error such as EMFILE, so a full fd table does not spin a core.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The running server: its accept loops and its connections.
#[derive(Debug)]
pub(crate) struct Server {
    /// Kept for the handover: the next generation gets duplicates of these sockets.
    listeners: Vec<(String, Arc<TcpListener>)>,
    acceptors: Vec<JoinHandle<()>>,
    pub(super) stop_accepting: CancellationToken,
    /// Cancelled at the graceful step of the drain: HTTP/1 connections finish their request in
    /// flight and close; connections that never sent a byte are closed.
    pub(super) graceful: CancellationToken,
    pub(super) connections: TaskTracker,
}

#[derive(Debug, Clone)]
struct Context {
    process: ProcessState,
    graceful: CancellationToken,
    connections: TaskTracker,
}

impl Server {
    /// Starts one accept loop per listener. Call only once the process is fully built: from
    /// here on it takes connections from the shared queue.
    pub(crate) fn start(bound: Vec<(Bound, Router)>, process: &ProcessState) -> Server {
        let stop_accepting = CancellationToken::new();
        let ctx = Context {
            process: process.clone(),
            graceful: CancellationToken::new(),
            connections: TaskTracker::new(),
        };
        let mut listeners = Vec::with_capacity(bound.len());
        let mut acceptors = Vec::with_capacity(bound.len());
        for (bound, router) in bound {
            let listener = Arc::new(bound.listener);
            listeners.push((bound.info.name, listener.clone()));
            acceptors.push(tokio::spawn(accept_loop(
                listener,
                router,
                ctx.clone(),
                stop_accepting.clone(),
            )));
        }
        Server {
            listeners,
            acceptors,
            stop_accepting,
            graceful: ctx.graceful,
            connections: ctx.connections,
        }
    }

    /// The listening sockets by name, for the handover.
    pub(crate) fn listeners(&self) -> impl Iterator<Item = (&str, &TcpListener)> {
        self.listeners.iter().map(|(n, l)| (n.as_str(), l.as_ref()))
    }

    /// Stops every accept loop and closes this process's copies of the listening sockets.
    /// Connections waiting in the queue stay there for the next generation if it holds the
    /// socket; otherwise new connections are refused at once rather than left hanging.
    pub(crate) async fn stop_accepting(&mut self) {
        self.stop_accepting.cancel();
        for acceptor in self.acceptors.drain(..) {
            // A panicked accept loop has nothing left to stop.
            let _ = acceptor.await;
        }
        self.listeners.clear();
        self.connections.close();
    }
}

async fn accept_loop(
    listener: Arc<TcpListener>,
    router: Router,
    ctx: Context,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            // Stop first: once the drain begins, not one more connection is taken.
            biased;
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                // Small responses go out at once rather than waiting on Nagle.
                let _ = stream.set_nodelay(true);
                ctx.connections
                    .spawn(serve_connection(stream, router.clone(), ctx.clone()));
            }
            Err(err) if is_per_connection(&err) => {}
            Err(err) => {
                tracing::warn!(error = %err, "accept failed; pausing before the next accept");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// Errors that concern one connection that died in the queue, not the listener.
fn is_per_connection(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted};
    matches!(
        err.kind(),
        ConnectionAborted | ConnectionReset | Interrupted
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

async fn serve_connection(stream: TcpStream, router: Router, ctx: Context) {
    let _open = ctx.process.connection_opened();
    let protocol = tokio::select! {
        // Bytes already received win over the graceful step: they are a request to answer.
        biased;
        sniffed = tokio::time::timeout(FIRST_BYTE_TIMEOUT, sniff(&stream)) => match sniffed {
            Ok(Ok(protocol)) => protocol,
            // Closed, failed or silent before its first byte: there is no request to lose.
            _ => return,
        },
        // Silent through the whole lame duck, like an idle keep-alive connection: close it.
        () = ctx.graceful.cancelled() => return,
    };
    let process = ctx.process.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let router = router.clone();
        let process = process.clone();
        async move {
            let http1 = request.version() < Version::HTTP_2;
            let mut response = router.oneshot(request.map(Body::new)).await?;
            // Checked after the handler ran, so a request that began before the drain also
            // tells its client to reconnect (to the next generation) after this response.
            if http1 && process.is_draining() {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let io = TokioIo::new(stream);
    let result = match protocol {
        Protocol::Http1 => {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(io, service)
                .with_upgrades();
            drive(conn, ctx.graceful.cancelled(), |c| c.graceful_shutdown()).await
        }
        Protocol::Http2 => {
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .serve_connection(io, service);
            // GOAWAY is graceful by design (the client learns which streams were taken), so
            // HTTP/2 gets it as soon as the drain begins rather than at the graceful step.
            drive(conn, ctx.process.drain_started(), |c| c.graceful_shutdown()).await
        }
    };
    if let Err(err) = result {
        tracing::debug!(error = %err, "connection ended with an error");
    }
}

/// Runs a connection to its end, asking it to shut down gracefully once `signal` fires.
async fn drive<C, S>(
    conn: C,
    signal: S,
    shutdown: impl FnOnce(std::pin::Pin<&mut C>),
) -> hyper::Result<()>
where
    C: Future<Output = hyper::Result<()>>,
    S: Future<Output = ()>,
{
    let mut conn = pin!(conn);
    tokio::select! {
        // The connection first: a request whose bytes have arrived is read (and so finished,
        // not dropped) before a graceful shutdown that is ready at the same moment.
        biased;
        result = conn.as_mut() => result,
        () = signal => {
            shutdown(conn.as_mut());
            conn.await
        }
    }
}

/// Tells HTTP/2 (prior knowledge, h2c) from HTTP/1 by peeking at the first bytes, without
/// consuming them.
async fn sniff(stream: &TcpStream) -> std::io::Result<Protocol> {
    let mut buf = [0u8; H2_PREFACE.len()];
    // A client that sends the preface in several segments is waited for, boundedly.
    for _ in 0..1000 {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if !H2_PREFACE.starts_with(&buf[..n]) {
            return Ok(Protocol::Http1);
        }
        if n == H2_PREFACE.len() {
            return Ok(Protocol::Http2);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(Protocol::Http1)
}
