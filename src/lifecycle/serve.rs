//! Accepting and serving connections, with the hooks the drain needs: stop accepting, mark
//! HTTP/1 responses `Connection: close` while draining, shut connections down gracefully.
//!
//! axum's `serve` is not used because the drain needs control it does not give: which
//! protocol a connection speaks (HTTP/2 gets GOAWAY, never `Connection: close`), and that a
//! connection accepted but not yet read is not cancelled at the graceful step while its
//! request may already be on the wire (hyper-util's auto builder does cancel those).
//!
//! Every connection is bounded (`[limits]`): in number per listener (`limits::Gate`), in time
//! (`watch::Watchdog`, one timer per connection), in memory (HTTP/2 streams and send buffer,
//! request bodies).

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use axum::response::Response;
use futures_util::future::BoxFuture;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ADMIN_LISTENER;
use super::acceptor::{Acceptor, Io, Protocol};
use super::drain::Draining;
use super::drive::{Watch, drive};
use super::exchange::Exchange;
use super::fds::{self, ADMIN_CONNECTIONS};
use super::limits::{Cap, CloseReason, ConnLimits, Gate, Permit};
use super::listeners::Bound;
use super::spread::Slot;
use super::state::ProcessState;
use super::watch::{Activity, Watchdog, Watched};
use crate::settings::SettingsStore;

/// Back-off after an accept error such as EMFILE, so a full fd table does not spin a core.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
/// HTTP/2 keep-alive: a PING after this long without a frame from the client, and the
/// connection closed if its answer takes longer than `H2_PING_TIMEOUT`. Finds a client that
/// vanished with a stream open (SSE) long before TCP would.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// The running server: its accept loops and its connections.
#[derive(Debug)]
pub(crate) struct Server {
    /// Kept for the handover (the next generation gets duplicates of these sockets) and
    /// through the successor's probation (to take the service back if it dies).
    listeners: Vec<Listener>,
    acceptors: Vec<JoinHandle<()>>,
    stop_accepting: CancellationToken,
    ctx: Context,
}

#[derive(Debug)]
struct Listener {
    name: String,
    socket: Arc<TcpListener>,
    endpoint: Endpoint,
    /// Its open connections against its cap; kept across a rollback, as they are.
    gate: Arc<Gate>,
}

/// An HTTP service to put behind a listener: an axum `Router`, or any service of the same
/// shape. Its type is erased once per connection, not per request: each request calls the
/// service itself, with no boxing on top of what it does.
#[derive(Clone)]
pub struct HttpService(Arc<dyn ServesConnections>);

impl HttpService {
    pub fn new<S: Answers>(service: S) -> HttpService {
        HttpService(Arc::new(Typed(service)))
    }
}

/// What [`HttpService::new`] takes: a service that answers every request, as an axum `Router`
/// does, and can be shared across connections.
pub trait Answers:
    tower::Service<Request<Body>, Response = Response, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> Answers for S where
    S: tower::Service<
            Request<Body>,
            Response = Response,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

impl fmt::Debug for HttpService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HttpService")
    }
}

/// [`serve_http`] for one service type, on either kind of stream.
trait ServesConnections: Send + Sync {
    fn plain(&self, io: Watched, conn: Established, ctx: Context) -> BoxFuture<'static, ()>;
    fn accepted(&self, io: Box<dyn Io>, conn: Established, ctx: Context) -> BoxFuture<'static, ()>;
}

struct Typed<S>(S);

impl<S: Answers> ServesConnections for Typed<S> {
    fn plain(&self, io: Watched, conn: Established, ctx: Context) -> BoxFuture<'static, ()> {
        Box::pin(serve_http(io, conn, self.0.clone(), ctx))
    }

    fn accepted(&self, io: Box<dyn Io>, conn: Established, ctx: Context) -> BoxFuture<'static, ()> {
        Box::pin(serve_http(io, conn, self.0.clone(), ctx))
    }
}

/// What a listener's connections get: the application's acceptor, if any, then the service.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub(crate) service: HttpService,
    /// `None`: plain HTTP, HTTP/2 told from HTTP/1 by its preface (h2c).
    pub(crate) acceptor: Option<Arc<dyn Acceptor>>,
}

#[derive(Debug, Clone)]
struct Context {
    process: ProcessState,
    /// Cancelled at the graceful step of the drain: HTTP/1 connections finish their request in
    /// flight and close; connections that never sent a byte are closed. A connection keeps the
    /// token of the moment it was accepted: after a rollback, new ones get a fresh one.
    graceful: CancellationToken,
    connections: TaskTracker,
}

impl Server {
    /// Starts one accept loop per listener. Call only once the process is fully built: from
    /// here on it takes connections from the shared queue.
    pub(crate) fn start(
        bound: Vec<(Bound, Endpoint)>,
        process: &ProcessState,
        settings: &Arc<SettingsStore>,
    ) -> Server {
        let public = fds::public_capacity();
        let mut server = Server {
            listeners: bound
                .into_iter()
                .map(|(b, endpoint)| {
                    let cap = if b.info.name == ADMIN_LISTENER {
                        Cap::Fixed(ADMIN_CONNECTIONS)
                    } else {
                        Cap::Public { fds: public }
                    };
                    Listener {
                        name: b.info.name,
                        socket: Arc::new(b.listener),
                        endpoint,
                        gate: Gate::new(cap, settings.clone()),
                    }
                })
                .collect(),
            acceptors: Vec::new(),
            stop_accepting: CancellationToken::new(),
            ctx: Context {
                process: process.clone(),
                graceful: CancellationToken::new(),
                connections: TaskTracker::new(),
            },
        };
        server.accept();
        server
    }

    fn accept(&mut self) {
        self.stop_accepting = CancellationToken::new();
        for listener in &self.listeners {
            self.acceptors.push(tokio::spawn(accept_loop(
                listener.socket.clone(),
                listener.endpoint.clone(),
                listener.gate.clone(),
                self.ctx.clone(),
                self.stop_accepting.clone(),
            )));
        }
    }

    /// The listening sockets by name, for the handover.
    pub(crate) fn listeners(&self) -> impl Iterator<Item = (&str, &TcpListener)> {
        self.listeners
            .iter()
            .map(|l| (l.name.as_str(), l.socket.as_ref()))
    }

    /// Stops every accept loop. The sockets stay open (see [`close_listeners`]): connections
    /// waiting in the queue stay there for the next generation, which holds the same socket.
    ///
    /// [`close_listeners`]: Self::close_listeners
    pub(crate) async fn stop_accepting(&mut self) -> Draining {
        let started = Instant::now();
        self.stop_accepting.cancel();
        for acceptor in self.acceptors.drain(..) {
            // A panicked accept loop has nothing left to stop.
            let _ = acceptor.await;
        }
        self.ctx.connections.close();
        Draining {
            connections: self.ctx.connections.clone(),
            graceful: self.ctx.graceful.clone(),
            started,
        }
    }

    /// Closes this process's copies of the listening sockets: without a next generation
    /// holding them, new connections are refused at once rather than left hanging.
    pub(crate) fn close_listeners(&mut self) {
        self.listeners.clear();
    }

    /// Accepts again from the same sockets after a drain began (a rollback). Connections
    /// already told to close keep going as they were; new ones are served as before the drain.
    pub(crate) fn resume(&mut self) {
        // Connections that never reached the graceful step keep their token: the next drain
        // must still reach them.
        if self.ctx.graceful.is_cancelled() {
            self.ctx.graceful = CancellationToken::new();
        }
        self.ctx.connections.reopen();
        self.accept();
    }
}

async fn accept_loop(
    listener: Arc<TcpListener>,
    endpoint: Endpoint,
    gate: Arc<Gate>,
    ctx: Context,
    stop: CancellationToken,
) {
    // Numbers the connections for their place in the drain's close window.
    let mut accepted_count: u64 = 0;
    loop {
        let accepted = tokio::select! {
            // Stop first: once the drain begins, not one more connection is taken.
            biased;
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let Some((limits, permit)) = gate.enter() else {
                    // Over the cap: closed at once, so a flood costs an accept, not an fd
                    // held until some timeout.
                    ctx.process.limit_counters().record_rejected();
                    drop(stream);
                    continue;
                };
                // Small responses go out at once rather than waiting on Nagle.
                let _ = stream.set_nodelay(true);
                let slot = Slot::nth(accepted_count);
                accepted_count = accepted_count.wrapping_add(1);
                ctx.connections.spawn(serve_connection(
                    stream,
                    endpoint.clone(),
                    ctx.clone(),
                    Admitted {
                        limits,
                        slot,
                        _permit: permit,
                    },
                ));
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

/// What a connection got when it was let in.
struct Admitted {
    limits: ConnLimits,
    /// Its moment in the drain's close window.
    slot: Slot,
    _permit: Permit,
}

async fn serve_connection(stream: TcpStream, endpoint: Endpoint, ctx: Context, admitted: Admitted) {
    let Admitted {
        limits,
        slot,
        _permit,
    } = admitted;
    let _open = ctx.process.connection_opened();
    let accepted = Instant::now();
    let activity = Arc::new(Activity::default());
    let mut io = Watched::new(stream, activity.clone());
    // With an acceptor (TLS) this only waits for the first bytes: a ClientHello is never the
    // HTTP/2 preface, and the protocol comes from the acceptor (ALPN).
    let http2 = tokio::select! {
        // Bytes already received win over the graceful step: they are a request to answer.
        biased;
        sniffed = tokio::time::timeout(limits.header_read_timeout, io.sniff()) => match sniffed {
            Ok(Ok(http2)) => http2,
            // Closed or failed before its first bytes: there is no request to lose.
            Ok(Err(_)) => return,
            Err(_elapsed) => {
                ctx.process.limit_counters().record_closed(CloseReason::HeaderTimeout);
                return;
            }
        },
        // Silent through the whole lame duck, like an idle keep-alive connection: close it.
        () = ctx.graceful.cancelled() => return,
    };
    let Endpoint { service, acceptor } = endpoint;
    let Some(acceptor) = acceptor else {
        let watchdog = Watchdog::new(limits, http2, accepted);
        let conn = Established {
            http2,
            activity,
            watchdog,
            limits,
            slot,
        };
        return service.0.plain(io, conn, ctx).await;
    };
    // Not cut at the graceful step: the client has spoken, as for a request on the wire; the
    // acceptor's own timeout bounds the handshake. The socket under it stays watched, so the
    // watchdog sees the encrypted bytes move.
    let Some(tls) = acceptor.accept(Box::new(io)).await else {
        return;
    };
    let http2 = tls.protocol == Protocol::Http2;
    // The handshake's bytes are not HTTP: the first request gets its whole header bound
    // from here (the handshake had its own).
    let watchdog = Watchdog::new(limits, http2, accepted)
        .after_handshake(activity.seen().read, Instant::now());
    let conn = Established {
        http2,
        activity,
        watchdog,
        limits,
        slot,
    };
    service.0.accepted(tls.stream, conn, ctx).await;
}

/// A connection HTTP is about to be served on, with what keeps it within its bounds.
struct Established {
    http2: bool,
    activity: Arc<Activity>,
    watchdog: Watchdog,
    limits: ConnLimits,
    slot: Slot,
}

/// Serves HTTP on an established stream until the client, the watchdog or the drain ends it.
async fn serve_http<S: Answers>(io: impl Io, conn: Established, service: S, ctx: Context) {
    let Established {
        http2,
        activity,
        watchdog,
        limits,
        slot,
    } = conn;
    let _wire = ctx.process.connection_speaks(http2);
    let watch = Watch {
        watchdog,
        activity: activity.clone(),
        process: &ctx.process,
    };
    let result = if http2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.h2_max_concurrent_streams)
            .max_send_buf_size(limits.h2_max_send_buffer_bytes)
            .keep_alive_interval(H2_PING_INTERVAL)
            .keep_alive_timeout(H2_PING_TIMEOUT);
        let exchange = Exchange::http2(service, activity, limits);
        let conn = builder.serve_connection(TokioIo::new(io), exchange);
        // GOAWAY is graceful by design (the client learns which streams were taken), so
        // HTTP/2 gets it at its moment in the drain's close window rather than at the
        // graceful step.
        drive(
            conn,
            ctx.process.close_moment(slot),
            |c| c.graceful_shutdown(),
            watch,
        )
        .await
    } else {
        let exchange = Exchange::http1(service, activity, limits, &ctx.process, slot);
        let conn = hyper::server::conn::http1::Builder::new()
            // The watchdog bounds request heads, with no timer per request.
            .header_read_timeout(None)
            .serve_connection(TokioIo::new(io), exchange)
            .with_upgrades();
        drive(
            conn,
            ctx.graceful.cancelled(),
            |c| c.graceful_shutdown(),
            watch,
        )
        .await
    };
    if let Err(err) = result {
        // One line per misbehaving client would let clients write our logs.
        tracing::debug!(error = %err, "connection ended with an error");
    }
}
