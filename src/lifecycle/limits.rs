//! Bounds on what one client can hold (`[limits]`): the per-connection snapshot of the settings,
//! the gate that caps open connections per listener, the checks a request passes before it
//! reaches the router, and the counters `/metrics` shows.
//!
//! The time bounds hyper does not keep are watched per connection by `watch`; the fds kept in
//! reserve for the lifecycle are in `fds`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::http::header::{CONNECTION, CONTENT_TYPE, HOST};
use axum::http::{HeaderValue, Request, Response, StatusCode, Version};

use crate::settings::{Limits, SettingsStore};

/// How often a connection's watchdog looks, at most and at least: a bound fires within one
/// period after its deadline. One timer per connection, reset once per period, never per request.
const TICK_MIN: Duration = Duration::from_millis(50);
const TICK_MAX: Duration = Duration::from_secs(5);

/// `[limits]` as one connection keeps them from its accept on: a reload applies to the
/// connections accepted after it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnLimits {
    pub(crate) header_read_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) send_timeout: Duration,
    pub(crate) requests_per_connection: u64,
    pub(crate) max_body_bytes: usize,
    pub(crate) h2_max_concurrent_streams: u32,
    pub(crate) h2_max_send_buffer_bytes: usize,
}

impl ConnLimits {
    pub(crate) fn of(limits: &Limits) -> ConnLimits {
        ConnLimits {
            header_read_timeout: limits.header_read_timeout,
            idle_timeout: limits.idle_timeout,
            send_timeout: limits.send_timeout,
            requests_per_connection: u64::try_from(limits.requests_per_connection)
                .unwrap_or(u64::MAX),
            max_body_bytes: limits.max_body_bytes,
            // The schema keeps it at 10,000 at most.
            h2_max_concurrent_streams: u32::try_from(limits.h2_max_concurrent_streams)
                .unwrap_or(u32::MAX),
            h2_max_send_buffer_bytes: limits.h2_max_send_buffer_bytes,
        }
    }

    /// The watchdog's period: a quarter of the shortest bound, so each fires at most a quarter
    /// late.
    pub(crate) fn tick(&self) -> Duration {
        let shortest = self
            .header_read_timeout
            .min(self.idle_timeout)
            .min(self.send_timeout);
        (shortest / 4).clamp(TICK_MIN, TICK_MAX)
    }
}

/// Why the server closed a connection on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// No complete request head (HTTP/2: no handshake) within `limits.header_read_timeout`.
    HeaderTimeout,
    /// No request in progress for `limits.idle_timeout`.
    Idle,
    /// A response made no progress for `limits.send_timeout`.
    SendTimeout,
    /// `limits.requests_per_connection` served.
    RequestsPerConnection,
}

impl CloseReason {
    pub const ALL: [CloseReason; 4] = [
        CloseReason::HeaderTimeout,
        CloseReason::Idle,
        CloseReason::SendTimeout,
        CloseReason::RequestsPerConnection,
    ];

    /// The label `/metrics` gives it.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::Idle => "idle",
            CloseReason::SendTimeout => "send_timeout",
            CloseReason::RequestsPerConnection => "requests_per_connection",
        }
    }
}

/// What the bounds did, for `/metrics`.
#[derive(Debug, Default)]
pub struct LimitCounters {
    rejected: AtomicU64,
    closed: [AtomicU64; CloseReason::ALL.len()],
}

impl LimitCounters {
    /// Connections closed at once because the listener was at its limit.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Connections the server closed on its own, for `reason`.
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed[reason as usize].load(Ordering::Relaxed)
    }

    pub(crate) fn record_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_closed(&self, reason: CloseReason) {
        self.closed[reason as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// How many connections a listener keeps open at once.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cap {
    /// The public listener: `limits.max_connections` in force, and never more than `fds`, the
    /// fds left once the reserve is kept (`fds::public_capacity`).
    Public { fds: usize },
    /// The admin listener: a fixed number, inside the fd reserve.
    Fixed(usize),
}

/// Counts a listener's open connections against its cap.
#[derive(Debug)]
pub(crate) struct Gate {
    open: AtomicUsize,
    cap: Cap,
    settings: Arc<SettingsStore>,
}

impl Gate {
    pub(crate) fn new(cap: Cap, settings: Arc<SettingsStore>) -> Arc<Gate> {
        Arc::new(Gate {
            open: AtomicUsize::new(0),
            cap,
            settings,
        })
    }

    /// The limits of a connection accepted now, and its place under the cap; `None` when the
    /// listener is full (close the connection at once).
    pub(crate) fn enter(self: &Arc<Gate>) -> Option<(ConnLimits, Permit)> {
        let settings = self.settings.current();
        let cap = match self.cap {
            Cap::Public { fds } => settings.limits.max_connections.min(fds),
            Cap::Fixed(cap) => cap,
        };
        // Incremented first, so two accepts racing for the last place cannot both take it.
        if self.open.fetch_add(1, Ordering::Relaxed) >= cap {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some((ConnLimits::of(&settings.limits), Permit(self.clone())))
    }
}

/// A connection's place under its listener's cap, given back when the connection ends.
#[derive(Debug)]
pub(crate) struct Permit(Arc<Gate>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The answer to a request that must not reach the router, or `None`:
/// - an HTTP/1.1 request without exactly one `Host` (RFC 9112 §3.2: 400);
/// - a body announced larger than `limits.max_body_bytes` (413), refused before it is read.
///
/// A body without a length is cut where it passes the limit, as it is read.
pub(crate) fn refuse<B: HttpBody>(
    request: &Request<B>,
    max_body_bytes: usize,
) -> Option<Response<Body>> {
    if request.version() == Version::HTTP_11 {
        let mut hosts = request.headers().get_all(HOST).iter();
        if hosts.next().is_none() || hosts.next().is_some() {
            return Some(error(
                StatusCode::BAD_REQUEST,
                "an HTTP/1.1 request needs exactly one Host header",
                true,
            ));
        }
    }
    // hyper has parsed and checked `Content-Length` already, and its body reports the length
    // as exact: no second look-up and parse of the header.
    match request.body().size_hint().exact() {
        Some(length) if length > max_body_bytes as u64 => Some(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the request body is larger than the limit of {max_body_bytes} bytes"),
            request.version() < Version::HTTP_2,
        )),
        _ => None,
    }
}

/// `{"error": message}`, the application's error shape. `close`: the body may still be on the
/// wire, or the request was malformed, so an HTTP/1 connection is not reused.
fn error(status: StatusCode, message: &str, close: bool) -> Response<Body> {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if close {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Version, headers: &[(&str, &str)]) -> Request<Body> {
        with_body(version, headers, 0)
    }

    /// A request whose body is `length` bytes long, and says so as hyper's does for a
    /// `Content-Length`.
    fn with_body(version: Version, headers: &[(&str, &str)], length: usize) -> Request<Body> {
        let mut builder = Request::post("/").version(version);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder
            .body(Body::from(vec![b'x'; length]))
            .expect("a valid request")
    }

    #[test]
    fn http11_needs_exactly_one_host() {
        let refused = |headers: &[(&str, &str)]| {
            refuse(&request(Version::HTTP_11, headers), 10).map(|r| r.status())
        };
        assert_eq!(refused(&[]), Some(StatusCode::BAD_REQUEST));
        assert_eq!(
            refused(&[("host", "a"), ("host", "b")]),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(refused(&[("host", "a")]), None);
        // HTTP/1.0 and HTTP/2 (":authority") do not need it.
        assert!(refuse(&request(Version::HTTP_10, &[]), 10).is_none());
        assert!(refuse(&request(Version::HTTP_2, &[]), 10).is_none());
    }

    #[test]
    fn an_announced_body_over_the_limit_is_refused() {
        let of_length = |version, length| {
            refuse(&with_body(version, &[("host", "a")], length), 10).map(|r| r.status())
        };
        for version in [Version::HTTP_11, Version::HTTP_2] {
            assert_eq!(of_length(version, 10), None);
            assert_eq!(of_length(version, 11), Some(StatusCode::PAYLOAD_TOO_LARGE));
        }
    }

    #[test]
    fn the_tick_is_a_quarter_of_the_shortest_bound_within_limits() {
        let mut limits = ConnLimits::of(&crate::settings::Settings::default().limits);
        limits.header_read_timeout = Duration::from_secs(2);
        assert_eq!(limits.tick(), Duration::from_millis(500));
        limits.header_read_timeout = Duration::from_millis(100);
        assert_eq!(limits.tick(), TICK_MIN);
        limits.header_read_timeout = Duration::from_secs(3600);
        limits.idle_timeout = Duration::from_secs(3600);
        limits.send_timeout = Duration::from_secs(3600);
        assert_eq!(limits.tick(), TICK_MAX);
    }
}
