//! A bounded load run: `connections` workers sending requests back to back, never retrying.
//!
//! # What counts as a failure
//! Every request a worker starts ends exactly once, as ok (full 2xx response, body read to the
//! end) or as one [`Failure`]. The one case that is not a request is a reused connection that
//! turns out to be closed before any byte of the next request was written (the server closed it
//! while idle, or after a `Connection: close` response, or sent GOAWAY): the server never saw
//! that request, so the worker opens a new connection and sends it there, once. A new connection
//! that closes before the request is written gets no second chance: that is
//! [`Failure::EarlyClose`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;

use crate::conn::{Connection, Protocol, SendError, Target};
use crate::report::{FailureDetail, Report, Sample, micros};
use crate::{Failure, FailureKind};

/// At most this many samples are kept per run (16 bytes each: 256 MiB); requests beyond it are
/// still counted, see [`Report::samples_dropped`].
pub const MAX_SAMPLES: u64 = 16 * 1024 * 1024;

/// At most this many failures are kept in full, see [`Report::first_failures`].
pub const MAX_FAILURE_DETAILS: usize = 20;

/// After a failed connect a worker waits this long before its next request, so that a server
/// that is down does not turn the run into a busy loop of refused connects. Each of those
/// requests is still counted as failed.
const PAUSE_AFTER_CONNECT_FAILURE: Duration = Duration::from_millis(10);
/// How many times one request may be refused by GOAWAY (and sent again on a new connection)
/// before it counts as failed: each refusal is a new drain, so more means something is wrong.
const MAX_REFUSALS: u32 = 3;

/// How each worker talks to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// HTTP/1.1 keep-alive: requests back to back on one connection, a new connection only when
    /// the server closed the old one (see the module docs for when that is not a failure).
    KeepAlive,
    /// HTTP/1.1 with `Connection: close`: a new TCP connection for every request.
    Close,
    /// HTTP/2 (h2c with prior knowledge, or ALPN h2 over TLS): one connection per worker, one
    /// stream at a time, a new connection after a GOAWAY once the open stream has finished.
    H2,
}

/// What to load and for how long. Build with [`LoadConfig::new`] and struct update syntax:
///
/// ```no_run
/// # use std::time::Duration;
/// # async fn demo(addr: std::net::SocketAddr) {
/// let load = loadgen::start(loadgen::LoadConfig {
///     connections: 16,
///     mode: loadgen::Mode::Close,
///     max_duration: Duration::from_secs(5),
///     ..loadgen::LoadConfig::new(addr)
/// });
/// let report = load.wait().await;
/// assert_eq!(report.failed(), 0, "{report}");
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The server (loopback only in this project).
    pub addr: SocketAddr,
    /// The request path, starting with `/` (query allowed).
    pub path: String,
    /// Concurrent workers, each with its own connection (at least 1).
    pub connections: usize,
    /// How workers talk to the server.
    pub mode: Mode,
    /// No request starts after this long; the run always ends.
    pub max_duration: Duration,
    /// No more than this many requests are started in total, if set.
    pub max_requests: Option<u64>,
    /// Bound on one request from its start (including a connect it needs) to the last body byte.
    pub request_timeout: Duration,
    /// When set, every request is a `POST` of this JSON instead of a `GET`, with each `{n}` in
    /// it replaced by the request's index (0, 1, ...), so that every body can be unique, e.g.
    /// `{"name": "item-{n}"}`. A POST is sent once, like every request: it is never repeated
    /// unless the server certainly did not see it (see the module docs).
    pub post_json: Option<String>,
    /// Keep the body of every 2xx response in [`Report::bodies`], e.g. to check afterwards that
    /// everything the server acknowledged is really there.
    pub keep_bodies: bool,
    /// HTTPS with this set-up; `None`: plain HTTP. A handshake failure counts as
    /// [`Failure::Tls`] for the request that needed the connection.
    pub tls: Option<crate::Tls>,
}

impl LoadConfig {
    /// `GET /` on 8 keep-alive connections, for at most 10 s, with a 5 s request timeout.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            path: "/".to_owned(),
            connections: 8,
            mode: Mode::KeepAlive,
            max_duration: Duration::from_secs(10),
            max_requests: None,
            request_timeout: Duration::from_secs(5),
            post_json: None,
            keep_bodies: false,
            tls: None,
        }
    }
}

/// Live counters of a running load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Since the load started.
    pub elapsed: Duration,
    /// Requests with a full 2xx response so far.
    pub ok: u64,
    /// Failed requests so far, by kind.
    pub failures: BTreeMap<FailureKind, u64>,
    /// TCP connections opened so far.
    pub connects: u64,
    /// See [`Report::refused`].
    pub refused: u64,
}

impl Snapshot {
    /// All failed requests so far.
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    /// All finished requests so far.
    pub fn total(&self) -> u64 {
        self.ok + self.failed()
    }
}

/// A running load. Dropping it aborts the workers; [`Load::stop`] or [`Load::wait`] collect the
/// [`Report`].
#[derive(Debug)]
pub struct Load {
    shared: Arc<Shared>,
    workers: JoinSet<WorkerResult>,
    mode: Mode,
    connections: usize,
}

/// Starts `config.connections` workers on the current tokio runtime and returns at once.
///
/// # Panics
///
/// Outside a tokio runtime, or if `config.path` is not a valid path starting with `/` (a mistake
/// in the calling code, not in the server under test).
pub fn start(config: LoadConfig) -> Load {
    let target = match Target::new(config.addr, &config.path, config.tls.clone()) {
        Ok(target) => Arc::new(target),
        Err(failure) => panic!("loadgen::start: {failure}"),
    };
    let mut shared = Shared::new(
        config.max_duration,
        config.max_requests,
        config.request_timeout,
    );
    shared.post_json = config.post_json;
    shared.keep_bodies = config.keep_bodies;
    let shared = Arc::new(shared);
    let connections = config.connections.max(1);
    let mut workers = JoinSet::new();
    for _ in 0..connections {
        workers.spawn(run_worker(
            Arc::clone(&shared),
            Arc::clone(&target),
            config.mode,
        ));
    }
    Load {
        shared,
        workers,
        mode: config.mode,
        connections,
    }
}

impl Load {
    /// The counters so far; cheap enough to poll.
    pub fn snapshot(&self) -> Snapshot {
        let failures = self.shared.lock_failures().by_kind.clone();
        Snapshot {
            elapsed: self.shared.started.elapsed(),
            ok: self.shared.ok.load(Ordering::Relaxed),
            failures,
            connects: self.shared.connects.load(Ordering::Relaxed),
            refused: self.shared.refused.load(Ordering::Relaxed),
        }
    }

    /// Stops starting requests, lets those in flight finish (each within the request timeout) and
    /// returns the report.
    pub async fn stop(self) -> Report {
        self.shared.stop.cancel();
        self.wait().await
    }

    /// Waits until the run ends by its own bounds (`max_duration` or `max_requests`) and returns
    /// the report.
    ///
    /// # Panics
    ///
    /// If a worker panicked (a bug in this crate): the panic is passed on.
    pub async fn wait(mut self) -> Report {
        let mut samples = Vec::new();
        let mut bodies = Vec::new();
        let mut last_finish = self.shared.started;
        while let Some(joined) = self.workers.join_next().await {
            let result = match joined {
                Ok(result) => result,
                Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
                // Only `abort` cancels a worker, and nothing here aborts them.
                Err(err) => panic!("loadgen worker cancelled: {err}"),
            };
            samples.extend(result.samples);
            bodies.extend(result.bodies);
            last_finish = last_finish.max(result.finished);
        }
        samples.sort_unstable_by_key(|sample: &Sample| sample.start_us);
        let failures = std::mem::take(&mut *self.shared.lock_failures());
        let ok = self.shared.ok.load(Ordering::Relaxed);
        let failed = self.shared.failed.load(Ordering::Relaxed);
        Report {
            mode: self.mode,
            connections: self.connections,
            elapsed: last_finish - self.shared.started,
            ok,
            failures: failures.by_kind,
            connects: self.shared.connects.load(Ordering::Relaxed),
            refused: self.shared.refused.load(Ordering::Relaxed),
            samples_dropped: (ok + failed).saturating_sub(samples.len() as u64),
            samples,
            first_failures: failures.first,
            bodies,
        }
    }
}

/// State shared by the workers of one run.
#[derive(Debug)]
struct Shared {
    started: Instant,
    deadline: Instant,
    max_requests: Option<u64>,
    request_timeout: Duration,
    /// Cancelled by [`Load::stop`]; workers check it before each request.
    stop: CancellationToken,
    /// See [`LoadConfig::post_json`].
    post_json: Option<String>,
    keep_bodies: bool,
    /// Requests handed out so far (may overshoot `max_requests` by the number of workers).
    claimed: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    connects: AtomicU64,
    refused: AtomicU64,
    /// Touched only on failure, so a lock costs nothing on the fast path.
    failures: Mutex<Failures>,
}

#[derive(Debug, Default)]
struct Failures {
    by_kind: BTreeMap<FailureKind, u64>,
    first: Vec<FailureDetail>,
}

impl Shared {
    fn new(max_duration: Duration, max_requests: Option<u64>, request_timeout: Duration) -> Self {
        let started = Instant::now();
        Self {
            started,
            deadline: started + max_duration,
            max_requests,
            request_timeout,
            stop: CancellationToken::new(),
            post_json: None,
            keep_bodies: false,
            claimed: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            failures: Mutex::new(Failures::default()),
        }
    }

    /// The index of the next request to send, or `None` once the run is over.
    fn claim(&self) -> Option<u64> {
        if self.stop.is_cancelled() || Instant::now() >= self.deadline {
            return None;
        }
        let index = self.claimed.fetch_add(1, Ordering::Relaxed);
        match self.max_requests {
            Some(max) if index >= max => None,
            _ => Some(index),
        }
    }

    fn lock_failures(&self) -> std::sync::MutexGuard<'_, Failures> {
        // The counts stay meaningful even if a thread panicked while holding the lock.
        self.failures.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts request `index`, started at `start`, which opened `opened` connections.
    fn record<T>(
        &self,
        samples: &mut Vec<Sample>,
        (index, start, opened): (u64, Instant, u8),
        outcome: &Result<T, Failure>,
    ) {
        let latency = start.elapsed();
        let start_offset = start - self.started;
        match outcome {
            Ok(_) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(failure) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut failures = self.lock_failures();
                *failures.by_kind.entry(failure.kind()).or_insert(0) += 1;
                if failures.first.len() < MAX_FAILURE_DETAILS {
                    failures.first.push(FailureDetail {
                        at: start_offset,
                        failure: failure.clone(),
                    });
                }
            }
        }
        if index < MAX_SAMPLES {
            samples.push(Sample {
                start_us: micros(start_offset),
                latency_us: u32::try_from(micros(latency)).unwrap_or(u32::MAX),
                ok: outcome.is_ok(),
                connects: opened,
            });
        }
    }
}

#[derive(Debug)]
struct WorkerResult {
    samples: Vec<Sample>,
    bodies: Vec<String>,
    finished: Instant,
}

async fn run_worker(shared: Arc<Shared>, target: Arc<Target>, mode: Mode) -> WorkerResult {
    let mut samples = Vec::new();
    let mut bodies = Vec::new();
    let mut connection = None;
    while let Some(index) = shared.claim() {
        let start = Instant::now();
        let mut opened = 0;
        let outcome = request(
            &mut connection,
            &shared,
            &target,
            (mode, index, start),
            &mut opened,
        )
        .await;
        shared.record(&mut samples, (index, start, opened), &outcome);
        if let (true, Ok(body)) = (shared.keep_bodies, &outcome) {
            bodies.push(String::from_utf8_lossy(body).into_owned());
        }
        if matches!(outcome, Err(Failure::Connect(_))) {
            tokio::select! {
                () = tokio::time::sleep(PAUSE_AFTER_CONNECT_FAILURE) => {}
                () = shared.stop.cancelled() => {}
            }
        }
    }
    WorkerResult {
        samples,
        bodies,
        finished: Instant::now(),
    }
}

/// Request number `index`, started at `start`, on `connection` if it is open, else on a new one
/// (left in `connection` if it may be reused); returns the body of its 2xx response and adds
/// the connections it opened to `opened`. Every error path drops the connection: its state is
/// unknown.
async fn request(
    connection: &mut Option<Connection>,
    shared: &Shared,
    target: &Target,
    (mode, index, start): (Mode, u64, Instant),
    opened: &mut u8,
) -> Result<Bytes, Failure> {
    let deadline = start + shared.request_timeout;
    let (protocol, close) = match mode {
        Mode::KeepAlive => (Protocol::Http1, false),
        Mode::Close => (Protocol::Http1, true),
        Mode::H2 => (Protocol::Http2, false),
    };
    let body = shared
        .post_json
        .as_ref()
        .map(|template| Bytes::from(template.replace("{n}", &index.to_string())));
    // A request not sent on a reused connection goes again on a new one, which returns; a
    // refused one goes again too, a bounded number of times (each refusal means the server
    // began a drain after this connection was opened).
    let mut refusals = 0;
    loop {
        let reused = connection.is_some();
        let open = match connection {
            Some(open) => open,
            None => {
                let new = timeout_at(deadline, Connection::open(target, protocol))
                    .await
                    .map_err(|_| {
                        let timeout = shared.request_timeout;
                        Failure::Connect(format!(
                            "{}: no connection within {timeout:?}",
                            target.addr()
                        ))
                    })??;
                shared.connects.fetch_add(1, Ordering::Relaxed);
                *opened = opened.saturating_add(1);
                connection.insert(new)
            }
        };
        let sent = timeout_at(deadline, open.send(target, close, body.clone())).await;
        let reply = match sent {
            Ok(Ok(reply)) => reply,
            Ok(Err(SendError::NotSent)) if reused => {
                *connection = None;
                continue;
            }
            Ok(Err(SendError::NotSent)) => {
                *connection = None;
                return Err(Failure::EarlyClose(
                    "the new connection was closed before the request could be written".to_owned(),
                ));
            }
            Ok(Err(SendError::Refused)) if refusals < MAX_REFUSALS => {
                *connection = None;
                refusals += 1;
                shared.refused.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Ok(Err(SendError::Refused)) => {
                *connection = None;
                return Err(Failure::EarlyClose(format!(
                    "refused by GOAWAY on {} connections in a row",
                    MAX_REFUSALS + 1
                )));
            }
            Ok(Err(SendError::Failed(failure))) => {
                *connection = None;
                return Err(failure);
            }
            Err(_elapsed) => {
                *connection = None;
                return Err(Failure::Timeout);
            }
        };
        if close || reply.closes {
            *connection = None;
        }
        return if (200..300).contains(&reply.status) {
            Ok(reply.body)
        } else {
            Err(Failure::Status(reply.status))
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Reads one request head from `stream`.
    async fn read_head(stream: &mut tokio::net::TcpStream) {
        let mut head = Vec::new();
        let mut byte = [0_u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let read = stream.read(&mut byte).await.expect("read request");
            assert_eq!(read, 1, "client closed inside the request head");
            head.push(byte[0]);
        }
    }

    /// A server that answers one request per connection with a keep-alive response and then
    /// closes the connection while it is idle.
    async fn one_request_per_connection() -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let (mut stream, _) = listener.accept().await.expect("accept");
                read_head(&mut stream).await;
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await
                    .expect("write response");
                stream.shutdown().await.expect("shutdown");
            }
        });
        (addr, server)
    }

    #[tokio::test]
    async fn reused_connection_closed_while_idle_is_a_reconnect_not_a_failure() {
        let (addr, server) = one_request_per_connection().await;
        let shared = Shared::new(Duration::from_secs(10), None, Duration::from_secs(5));
        let target = Target::new(addr, "/", None).expect("valid target");
        let mut connection = None;

        let mut opened = 0;
        let first = request(
            &mut connection,
            &shared,
            &target,
            (Mode::KeepAlive, 0, Instant::now()),
            &mut opened,
        );
        assert_eq!(first.await, Ok(Bytes::from_static(b"ok")));
        assert_eq!(opened, 1, "the first request opens the connection");
        let open = connection
            .as_ref()
            .expect("a keep-alive response leaves the connection open");

        // Wait until the client has seen the server's close, so the next request is certainly
        // not written to the old connection.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !open.is_closed() {
            assert!(Instant::now() < deadline, "client never noticed the close");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        let mut opened = 0;
        let second = request(
            &mut connection,
            &shared,
            &target,
            (Mode::KeepAlive, 1, Instant::now()),
            &mut opened,
        );
        assert_eq!(second.await, Ok(Bytes::from_static(b"ok")));
        assert_eq!(
            opened, 1,
            "the reconnect is counted on the request that made it"
        );
        assert_eq!(shared.connects.load(Ordering::Relaxed), 2);
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("server saw both requests")
            .expect("server task");
    }

    #[tokio::test]
    async fn claims_stop_at_max_requests_and_on_stop() {
        let shared = Shared::new(Duration::from_secs(10), Some(3), Duration::from_secs(1));
        let claimed: Vec<_> = std::iter::from_fn(|| shared.claim()).collect();
        assert_eq!(claimed, [0, 1, 2]);

        let unbounded = Shared::new(Duration::from_secs(10), None, Duration::from_secs(1));
        assert_eq!(unbounded.claim(), Some(0));
        unbounded.stop.cancel();
        assert_eq!(unbounded.claim(), None);

        let expired = Shared::new(Duration::ZERO, None, Duration::from_secs(1));
        assert_eq!(expired.claim(), None);
    }
}
