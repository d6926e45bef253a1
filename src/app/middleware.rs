//! Per-request middleware: load the settings snapshot once, enforce the request timeout in
//! force, measure the response for `/metrics` and write the access log line.
//!
//! tower-http's `TimeoutLayer` fixes its duration when the router is built; this one reads
//! `server.request_timeout` from the current snapshot, so a reload changes it for the next
//! request. It is a `tower::Layer` written out, not `axum::middleware::from_fn`: `from_fn`
//! boxes each request's future and clones the inner route into a boxed `Next`, two
//! allocations per request that showed in the profile (BENCHMARKS.md, "Where the template's
//! time goes"); here the future is a plain struct around the route's own.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::extract::{MatchedPath, Request};
use axum::response::{IntoResponse, Response};
use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tokio::time::Sleep;
use tracing::instrument::Instrumented;

use super::access;
use super::error::AppError;
use super::extract::CurrentSettings;
use super::metrics::InFlight;
use super::state::AppState;

/// Adds [`PerRequest`] to every route it is layered on.
#[derive(Debug, Clone)]
pub(crate) struct ApplySettings {
    state: AppState,
}

impl ApplySettings {
    pub(crate) fn new(state: AppState) -> Self {
        Self { state }
    }
}

impl<S> tower::Layer<S> for ApplySettings {
    type Service = PerRequest<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PerRequest {
            inner,
            state: self.state.clone(),
        }
    }
}

/// A route with the per-request work around it.
#[derive(Debug, Clone)]
pub(crate) struct PerRequest<S> {
    inner: S,
    state: AppState,
}

impl<S> tower::Service<Request> for PerRequest<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Finishing<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let state = &self.state;
        let (settings, generation) = state.settings().snapshot();
        let timeout = settings.server.request_timeout;
        // The route as the router matched it, never the raw path: a bounded label set.
        let matched = request.extensions().get::<MatchedPath>();
        let route = state.metrics().route(matched.map(MatchedPath::as_str));
        let access = settings
            .log
            .access
            .then(|| (access::Entry::of(&request, matched), state.clone()));
        let span = request_span(&request, matched);
        let in_flight = state.metrics().request_started(route);
        // `poll_ready` above polled the inner service, as tower asks before a call.
        let response = CurrentSettings(settings, generation).scope(self.inner.call(request));
        #[cfg(feature = "otel")]
        let response = tracing::Instrument::instrument(response, span.clone());
        #[cfg(not(feature = "otel"))]
        let response = tracing::Instrument::instrument(response, span);
        Finishing {
            response,
            deadline: Deadline::Unarmed(in_flight.started() + timeout),
            done: Some(Done {
                in_flight,
                access,
                #[cfg(feature = "otel")]
                span,
            }),
        }
    }
}

/// The request's span: with the `otel` feature and an endpoint, the exported one; otherwise a
/// DEBUG span on `baton::request` (`log.filter = "info,baton::request=debug"`) that gives the
/// handlers' log lines their request, as tower-http's `TraceLayer` did, for the cost of a level
/// check while it is off (`TraceLayer` cost 4.5 % of the instructions of `GET /` even then).
fn request_span(request: &Request, matched: Option<&MatchedPath>) -> tracing::Span {
    let route = matched.map_or(super::metrics::UNMATCHED, MatchedPath::as_str);
    #[cfg(feature = "otel")]
    {
        let span = crate::otel::request_span(request.method().as_str(), route, request.headers());
        if !span.is_none() {
            return span;
        }
    }
    tracing::debug_span!(
        target: "baton::request",
        "request",
        method = %request.method(),
        route = %route,
        uri = %request.uri(),
        version = ?request.version(),
    )
}

/// What is left to do once the response is there.
#[derive(Debug)]
struct Done {
    /// Dropped unfinished (the client went away): only the in-flight gauge goes down.
    in_flight: InFlight,
    access: Option<(access::Entry, AppState)>,
    #[cfg(feature = "otel")]
    span: tracing::Span,
}

pin_project! {
    /// The route's future, bounded by the request timeout, then counted and logged.
    #[derive(Debug)]
    pub(crate) struct Finishing<F> {
        #[pin]
        response: Instrumented<TaskLocalFuture<CurrentSettings, F>>,
        deadline: Deadline,
        done: Option<Done>,
    }
}

/// `server.request_timeout`, armed only once the route has to wait: a request answered at
/// its first poll (most are) never creates a timer, where `tokio::time::timeout` built one
/// for every request and made the future it moves around twice as large.
#[derive(Debug)]
enum Deadline {
    Unarmed(std::time::Instant),
    Armed(Pin<Box<Sleep>>),
}

impl Deadline {
    /// Ready once the deadline has passed.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Deadline::Unarmed(at) = *self {
            *self = Deadline::Armed(Box::pin(tokio::time::sleep_until(at.into())));
        }
        match self {
            Deadline::Armed(sleep) => sleep.as_mut().poll(cx),
            Deadline::Unarmed(_) => Poll::Pending,
        }
    }
}

impl<F> Future for Finishing<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let response = match this.response.as_mut().poll(cx) {
            Poll::Ready(Ok(response)) => response,
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => {
                ready!(this.deadline.poll(cx));
                // The handler's future is dropped with this one, which cancels whatever it
                // awaited.
                AppError::Timeout.into_response()
            }
        };
        if let Some(done) = this.done.take() {
            // Inside the request's span, so with `baton::request=debug` the access line names
            // its request too.
            let _entered = this.response.as_ref().get_ref().span().enter();
            #[cfg(feature = "otel")]
            crate::otel::record_status(&done.span, response.status());
            let took = done.in_flight.finish(response.status());
            if let Some((entry, state)) = done.access {
                entry.write(&response, took, state.process().generation());
            }
        }
        Poll::Ready(Ok(response))
    }
}
