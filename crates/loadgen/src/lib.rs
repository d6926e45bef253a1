//! An HTTP client for proving "zero failed requests": it never retries, and it classifies every
//! failure precisely.
//!
//! baton's lifecycle tests and benchmark run it while the server upgrades its binary or reloads
//! its configuration. Load tools that retry a request on a closed connection hide exactly the
//! failures those tests look for, so here a request is sent once, and a refused connect, a reset,
//! an early close, a timeout and a non-2xx status are each counted as what they are
//! ([`FailureKind`]). The only "second try" is on a reused connection that the server closed
//! before any byte of the request was written: the server never saw that request (see [`Mode`]),
//! and an HTTP/2 stream above the server's GOAWAY last stream id, which the server says it did not
//! process (counted in [`Report::refused`]).
//!
//! # Use
//! - One request, for tests: [`get`] / [`get_with_timeout`] (async, hyper), [`get_blocking`],
//!   [`post_json_blocking`], [`delete_blocking`] (std only, no runtime needed), [`get_tls`]
//!   (HTTPS, with what the handshake agreed on).
//! - TLS: a [`Tls`] trusts a CA the test made (never unverified) and resumes sessions unless
//!   told not to; give it to [`LoadConfig::tls`] or [`get_tls`].
//! - Load: [`start`] a [`LoadConfig`], poll [`Load::snapshot`], then [`Load::stop`] or
//!   [`Load::wait`] for the [`Report`], which keeps one [`Sample`] per request so throughput
//!   and latency can be computed for any time window.
//!
//! ```no_run
//! # async fn demo(addr: std::net::SocketAddr) -> Result<(), loadgen::Failure> {
//! let hello = loadgen::get(addr, "/").await?.error_for_status()?;
//! assert!(hello.body.starts_with("Hello"));
//!
//! let load = loadgen::start(loadgen::LoadConfig::new(addr));
//! // ... upgrade the server here ...
//! let report = load.stop().await;
//! assert_eq!(report.failed(), 0, "{report}");
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//! - `failure`: [`Failure`] and [`FailureKind`], and how transport errors map to them.
//! - `response`: [`Response`], what the one-shot helpers return.
//! - `conn`: one HTTP/1.1 (hyper) or HTTP/2 (h2) connection, plain or TLS; tells "never sent" from
//!   "sent and lost".
//! - `goaway`: the last stream id of the server's HTTP/2 GOAWAY, read off the incoming frames.
//! - `tls`: [`Tls`], the rustls client set-up, and [`TlsInfo`].
//! - `oneshot`: [`get`], [`get_with_timeout`].
//! - `blocking`: [`get_blocking`] over `std::net::TcpStream`.
//! - `load`: [`start`], [`Load`], the workers and their counters.
//! - `report`: [`Report`], [`Sample`], window queries.

mod blocking;
mod conn;
mod failure;
mod goaway;
mod load;
mod oneshot;
mod report;
mod response;
mod tls;

pub use blocking::{delete_blocking, get_blocking, post_json_blocking};
pub use failure::{Failure, FailureKind};
pub use load::{Load, LoadConfig, MAX_FAILURE_DETAILS, MAX_SAMPLES, Mode, Snapshot, start};
pub use oneshot::{DEFAULT_TIMEOUT, get, get_tls, get_with_timeout};
pub use report::{FailureDetail, Report, Sample};
pub use response::Response;
pub use tls::{Tls, TlsInfo};
