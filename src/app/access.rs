//! The access log (`log.access`): one line per request on the public listener, at info level
//! on the [`TARGET`] target, so the log filter can also silence it (`info,baton::access=off`).
//! It goes through the same subscriber as every other line, so it is text or JSON per
//! `log.format`.
//!
//! The route is the matched one (`/api/items/{id}`), never the raw path: a client cannot make
//! a line longer, or the set of routes larger, by what it sends.

use std::time::Duration;

use axum::body::HttpBody;
use axum::extract::Request;
use axum::http::{Method, Version};
use axum::response::Response;

/// The `tracing` target of access lines.
pub const TARGET: &str = "baton::access";

/// What the access line needs from the request, taken before the handler consumes it.
#[derive(Debug)]
pub(crate) struct Entry {
    method: Method,
    route: &'static str,
    version: Version,
}

impl Entry {
    pub(crate) fn of(request: &Request, route: &'static str) -> Entry {
        Entry {
            method: request.method().clone(),
            route,
            version: request.version(),
        }
    }

    pub(crate) fn write(self, response: &Response, took: Duration, generation: u64) {
        tracing::info!(
            target: TARGET,
            method = %self.method,
            route = %self.route,
            status = response.status().as_u16(),
            duration_ms = took.as_secs_f64() * 1000.0,
            // Absent for a streamed body (SSE), whose length is not known in advance.
            bytes = response.body().size_hint().exact(),
            protocol = ?self.version,
            generation,
            "request"
        );
    }
}
