//! The public route table, stated once. Each [`Table::route`] adds the path to axum's router
//! and to [`Labels`], the same paths in a matcher of their own, so the per-request work
//! (`middleware`) knows the route a request is for before the router runs.
//!
//! Why not `Router::layer`: it wraps every route in a second boxed `Route`, so a request paid
//! for two service clones and two boxed futures, about 1,000 instructions of the 16,300 of a
//! `GET /` (BENCHMARKS.md, "Instructions per request"). With the work in front of the router,
//! a request goes through one. Matching twice costs less: matchit finds `/` in a few dozen
//! instructions, and the label it finds is the series itself, with no map lookup after it.

use axum::Router;
use axum::handler::Handler;
use axum::routing::MethodRouter;

use super::metrics::{Metrics, Route, UNMATCHED};
use super::state::AppState;

/// The routes of the public service as they are added; [`Table::finish`] makes the router and
/// its labels.
#[derive(Debug)]
pub(crate) struct Table {
    router: Router<AppState>,
    paths: Vec<&'static str>,
}

impl Table {
    pub(crate) fn new() -> Table {
        Table {
            router: Router::new(),
            paths: Vec::new(),
        }
    }

    /// As [`Router::route`], which panics on a path it cannot take (a bug in the table, found
    /// by the first test that builds it).
    pub(crate) fn route(mut self, path: &'static str, handlers: MethodRouter<AppState>) -> Table {
        self.router = self.router.route(path, handlers);
        self.paths.push(path);
        self
    }

    /// What answers a path no route matches; its requests are labelled [`UNMATCHED`].
    pub(crate) fn fallback<H, T>(mut self, handler: H) -> Table
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.router = self.router.fallback(handler);
        self
    }

    /// The router, and the label of each of its routes with the series it counts into.
    pub(crate) fn finish(self, state: AppState) -> (Router, Labels) {
        let metrics = state.metrics();
        let mut matcher = matchit::Router::new();
        for path in self.paths {
            let label = Label::new(path, metrics);
            // axum took the same path with the same matcher just above, so it cannot conflict.
            if let Err(err) = matcher.insert(path, label) {
                unreachable!("axum accepted route {path} that matchit refuses: {err}");
            }
        }
        let labels = Labels {
            matcher,
            unmatched: Label::new(UNMATCHED, metrics),
        };
        (self.router.with_state(state), labels)
    }
}

/// A route as the metrics, the span and the access line name it: its pattern
/// (`/api/items/{id}`), never the raw path, so a client cannot grow the label set.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Label {
    pub(crate) path: &'static str,
    pub(crate) series: &'static Route,
}

impl Label {
    fn new(path: &'static str, metrics: &Metrics) -> Label {
        let series = metrics.route(Some(path).filter(|p| *p != UNMATCHED));
        Label { path, series }
    }
}

/// Finds the label of a request's path, as axum's router finds its route.
#[derive(Debug, Clone)]
pub(crate) struct Labels {
    matcher: matchit::Router<Label>,
    unmatched: Label,
}

impl Labels {
    pub(crate) fn of(&self, path: &str) -> Label {
        self.matcher
            .at(path)
            .map_or(self.unmatched, |found| *found.value)
    }
}
