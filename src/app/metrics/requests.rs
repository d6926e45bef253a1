//! Request durations by matched route and status class: one histogram per pair, found without
//! a lock or a reference count on the request path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::histogram::{Histogram, REQUEST_BOUNDS, Snapshot};
use super::stripes::Striped;

/// The `class` label of each series of a route, in order.
pub(crate) const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// The `route` label of requests no route matched (the fallback): one series for all of them,
/// never the raw path, which a client chooses and would make the label set unbounded.
pub(crate) const UNMATCHED: &str = "unmatched";

/// One route's histograms, by status class, and its requests in flight.
#[derive(Debug)]
pub(crate) struct Route {
    by_class: [Histogram; 5],
    /// Requests started and not yet ended, as a striped gauge: the request's future reaches it
    /// through the `&'static Route` it holds anyway, where a gauge of its own would be one more
    /// reference to count per request.
    in_flight: Striped<1>,
}

impl Route {
    fn new() -> Route {
        Route {
            by_class: std::array::from_fn(|_| Histogram::new(REQUEST_BOUNDS)),
            in_flight: Striped::default(),
        }
    }

    pub(crate) fn started(&self) {
        self.in_flight.add(0, 1);
    }

    pub(crate) fn ended(&self) {
        self.in_flight.sub(0, 1);
    }

    /// Counts a response. `StatusCode` holds 100..=999; 6xx..9xx are legal but meaningless, so
    /// not counted.
    pub(crate) fn record(&self, status: StatusCode, took: Duration) {
        let class = usize::from(status.as_u16() / 100);
        if let Some(histogram) = self.by_class.get(class.wrapping_sub(1)) {
            histogram.observe(took);
        }
    }
}

/// Every route seen so far, by its matched path (`/api/items/{id}`).
#[derive(Debug)]
pub(crate) struct Requests {
    /// Read on every request; replaced whole, under `adding`, when a route is first seen.
    /// foldhash rather than SipHash: the keys are the router's own paths, not a client's, and
    /// SipHash was a tenth of the middleware's cost on `GET /`.
    routes: ArcSwap<RouteMap>,
    adding: Mutex<()>,
}

type RouteMap = HashMap<Box<str>, &'static Route, foldhash::fast::RandomState>;

/// One series as it crosses to the next generation.
#[derive(Debug, Serialize, Deserialize)]
struct Series {
    route: String,
    class: String,
    #[serde(flatten)]
    histogram: Snapshot,
}

impl Requests {
    pub(crate) fn new() -> Requests {
        Requests {
            routes: ArcSwap::from_pointee(RouteMap::default()),
            adding: Mutex::new(()),
        }
    }

    /// The series of `route` (`None`: no route matched).
    pub(crate) fn route(&self, route: Option<&str>) -> &'static Route {
        let name = route.unwrap_or(UNMATCHED);
        if let Some(found) = self.routes.load().get(name) {
            return found;
        }
        let _adding = self.adding.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.routes.load_full();
        if let Some(found) = current.get(name) {
            return found;
        }
        // Leaked on purpose: routes are the router's fixed set plus `unmatched`, so this is
        // bounded, and the request path holds a plain reference rather than counting one.
        let created: &'static Route = Box::leak(Box::new(Route::new()));
        let mut routes = HashMap::clone(&current);
        routes.insert(name.into(), created);
        self.routes.store(Arc::new(routes));
        created
    }

    /// Every series with at least one request, as `(route, class, histogram)`, sorted.
    pub(crate) fn series(&self) -> Vec<(Box<str>, &'static str, &'static Histogram)> {
        let routes = self.routes.load();
        let mut series: Vec<_> = routes
            .iter()
            .flat_map(|(name, route)| {
                CLASSES
                    .iter()
                    .zip(route.by_class.iter())
                    .filter(|(_, histogram)| histogram.count() > 0)
                    .map(|(class, histogram)| (name.clone(), *class, histogram))
            })
            .collect();
        series.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        series
    }

    /// Requests of this process in flight, over all routes.
    pub(crate) fn in_flight(&self) -> i64 {
        let routes = self.routes.load();
        routes
            .values()
            .map(|route| route.in_flight.sum(0))
            .fold(0, u64::wrapping_add)
            .cast_signed()
    }

    /// Responses by class since the first generation, in the order of [`CLASSES`].
    pub(crate) fn totals_by_class(&self) -> [u64; 5] {
        let routes = self.routes.load();
        std::array::from_fn(|i| routes.values().map(|r| r.by_class[i].count()).sum())
    }

    /// What the next generation takes: every series with a request, as one JSON line.
    pub(crate) fn export(&self) -> String {
        let series: Vec<Series> = self
            .series()
            .into_iter()
            .map(|(route, class, histogram)| Series {
                route: route.into(),
                class: class.to_owned(),
                histogram: histogram.snapshot(),
            })
            .collect();
        serde_json::to_string(&series).unwrap_or_default()
    }

    /// Takes a previous generation's series (a later report replaces an earlier one: each is
    /// cumulative). Unknown classes are ignored; a malformed report changes nothing.
    pub(crate) fn adopt(&self, payload: &str) {
        let Ok(series) = serde_json::from_str::<Vec<Series>>(payload) else {
            tracing::warn!("ignoring malformed request durations from the previous generation");
            return;
        };
        for Series {
            route,
            class,
            histogram,
        } in series
        {
            if let Some(i) = CLASSES.iter().position(|c| *c == class) {
                self.route(Some(&route)).by_class[i].adopt(&histogram);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn counts_by_route_and_first_digit() {
        let requests = Requests::new();
        requests.route(Some("/")).record(StatusCode::OK, MS);
        requests.route(Some("/")).record(StatusCode::CREATED, MS);
        requests.route(None).record(StatusCode::NOT_FOUND, MS);
        requests
            .route(Some("/api/slow"))
            .record(StatusCode::SERVICE_UNAVAILABLE, MS);
        assert_eq!(requests.totals_by_class(), [0, 2, 0, 1, 1]);
        let labels: Vec<_> = requests
            .series()
            .into_iter()
            .map(|(route, class, h)| (route.to_string(), class, h.count()))
            .collect();
        assert_eq!(
            labels,
            [
                ("/".to_owned(), "2xx", 2),
                ("/api/slow".to_owned(), "5xx", 1),
                ("unmatched".to_owned(), "4xx", 1),
            ]
        );
    }

    #[test]
    fn series_carry_to_the_next_generation_and_never_go_back() {
        let old = Requests::new();
        old.route(Some("/")).record(StatusCode::OK, MS);
        old.route(None).record(StatusCode::NOT_FOUND, MS);
        let new = Requests::new();
        new.adopt(&old.export());
        new.route(Some("/")).record(StatusCode::OK, MS);
        assert_eq!(new.totals_by_class()[1], 2);
        // The old one's final report, after its drain, replaces the first.
        old.route(Some("/")).record(StatusCode::OK, MS);
        new.adopt(&old.export());
        assert_eq!(new.totals_by_class(), [0, 3, 0, 1, 0]);
        new.adopt("not json");
        assert_eq!(new.totals_by_class(), [0, 3, 0, 1, 0]);
    }
}
