//! The metrics behind `/metrics`: one prometheus-client registry per process, rendered in the
//! Prometheus text format 0.0.4.
//!
//! Counters and histograms carry across upgrades: a new generation starts from its
//! predecessor's totals (see `app::carry`), taken again after the old one drained, so they
//! only ever grow across generations, as with Envoy's hot restart. A crash has no handover:
//! the next process starts from zero, which Prometheus reads as an ordinary counter reset
//! (`rate()` and `increase()` handle it); `baton_start_time_seconds` shows when.
//!
//! The per-request cost is a clock read at each end, one histogram observation (two relaxed
//! atomic adds) and the route's in-flight count (one add, one subtract), all on the thread's
//! own stripe (`stripes`); the route's series is found through an `ArcSwap` without a lock
//! (`requests`).
//!
//! # Layout
//! - `histogram`: a lock-free histogram that adopts another process's buckets.
//! - `requests`: the request-duration histograms by matched route and status class.
//! - `collector`: everything read at scrape time from the process and settings state.
//! - `resources`: the database pools and the TLS certificate and handshakes, read at scrape
//!   time.
//! - `stripes`: counters kept per thread, so that requests on two cores do not write one
//!   cache line.

mod collector;
mod histogram;
mod requests;
mod resources;
mod stripes;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::database::Db;
use crate::lifecycle::ProcessState;
use crate::settings::SettingsStore;
use crate::tls::Tls;

pub(crate) use collector::Carried;
use collector::Collector;
pub(crate) use requests::{Route, UNMATCHED};
use resources::Resources;

/// The Prometheus text exposition format, version 0.0.4.
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// This process's registry, and the handles the request path and the handover use.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    /// Shared with the registry's collector.
    carried: Arc<Carried>,
}

impl Metrics {
    pub(crate) fn new(
        settings: Arc<SettingsStore>,
        process: ProcessState,
        db: Db,
        tls: Option<Arc<Tls>>,
    ) -> Metrics {
        let carried = Arc::new(Carried::new(process.clone()));
        let mut registry = Registry::with_prefix("baton");
        registry.register(
            "build",
            "Always 1; the version label identifies the build",
            Info::new(vec![("version", process.version())]),
        );
        registry.register_collector(Box::new(Collector {
            carried: carried.clone(),
            settings,
            process,
        }));
        registry.register_collector(Box::new(Resources { db, tls }));
        Metrics { registry, carried }
    }

    /// The series a request to `route` (its matched path; `None`: the fallback) counts in.
    pub(crate) fn route(&self, route: Option<&str>) -> &'static Route {
        self.carried.requests.route(route)
    }

    /// Marks a request in flight until [`InFlight::finish`] or until dropped (a request whose
    /// client went away is not counted, only uncounted from the in-flight gauge).
    pub(crate) fn request_started(&self, route: &'static Route) -> InFlight {
        route.started();
        InFlight {
            route,
            started: Instant::now(),
        }
    }

    /// The registry in the Prometheus text format.
    pub(crate) fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a `String` cannot fail, and every metric here encodes.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }

    pub(crate) fn carried(&self) -> &Carried {
        &self.carried
    }
}

/// A request being served (see [`Metrics::request_started`]).
#[derive(Debug)]
pub(crate) struct InFlight {
    route: &'static Route,
    started: Instant,
}

impl InFlight {
    /// When the request began.
    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// Counts the response; returns how long it took.
    pub(crate) fn finish(self, status: StatusCode) -> Duration {
        let took = self.started.elapsed();
        self.route.record(status, took);
        took
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.route.ended();
    }
}
