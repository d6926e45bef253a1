//! Per-request middleware: load the settings snapshot once, enforce the request timeout in
//! force, measure the response for `/metrics` and write the access log line.
//!
//! tower-http's `TimeoutLayer` fixes its duration when the router is built; this one reads
//! `server.request_timeout` from the current snapshot, so a reload changes it for the next
//! request. It is a service in front of the router, not `axum::middleware::from_fn` nor any
//! `Router::layer`: `from_fn` boxes each request's future and clones the inner route into a
//! boxed `Next`, and `Router::layer` wraps every route in a second boxed route, allocations per
//! request that showed in the profile (BENCHMARKS.md, "Where the template's time goes"). Here
//! the future is a plain struct around the router's own, and the route's label comes from the
//! route table (`table`), which knows it before the router runs.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::Router;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::routing::future::RouteFuture;
use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::access;
use super::error::AppError;
use super::extract::CurrentSettings;
use super::metrics::InFlight;
use super::state::AppState;
use super::table::Labels;

/// The public service: the per-request work, then the router. Each connection has its own
/// (two `Arc` clones); its requests call it without cloning it again, so they write no
/// reference count that the other worker threads write too (`lifecycle::exchange`).
#[derive(Debug, Clone)]
pub struct Public {
    router: Router,
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    labels: Labels,
    state: AppState,
}

impl Public {
    pub(crate) fn new(router: Router, labels: Labels, state: AppState) -> Public {
        Public {
            router,
            inner: Arc::new(Inner { labels, state }),
        }
    }
}

impl tower::Service<Request> for Public {
    type Response = Response;
    type Error = Infallible;
    type Future = Finishing<RouteFuture<Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The router is always ready (axum's `Router::poll_ready` says so too).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let Inner { labels, state } = &*self.inner;
        let (settings, generation) = state.settings().for_request();
        let timeout = settings.server.request_timeout;
        let label = labels.of(request.uri().path());
        let access = settings
            .log
            .access
            .then(|| (access::Entry::of(&request, label.path), state.clone()));
        let span = request_span(&request, label.path);
        let in_flight = state.metrics().request_started(label.series);
        Finishing {
            // `Router::call` routes by `&self` (its `&mut` is tower's signature): no clone.
            response: self.router.call(request),
            settings: Some(CurrentSettings(settings, generation)),
            span,
            deadline: Deadline::Unarmed(in_flight.started() + timeout),
            done: Some(Done { in_flight, access }),
        }
    }
}

/// The request's span: with the `otel` feature and an endpoint, the exported one; otherwise a
/// DEBUG span on `baton::request` (`log.filter = "info,baton::request=debug"`) that gives the
/// handlers' log lines their request, as tower-http's `TraceLayer` did, for the cost of a level
/// check while it is off (`TraceLayer` cost 4.5 % of the instructions of `GET /` even then).
fn request_span(request: &Request, route: &str) -> tracing::Span {
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
}

pin_project! {
    /// The route's future, polled in the request's span with its settings lent to the
    /// extractors, bounded by the request timeout, then counted and logged. One struct rather
    /// than `Instrumented` around tokio's `TaskLocalFuture` around the route's future: each
    /// of those layers moved the whole future once more per request (BENCHMARKS.md,
    /// "Instructions per request").
    #[derive(Debug)]
    pub struct Finishing<F> {
        #[pin]
        response: F,
        settings: Option<CurrentSettings>,
        span: tracing::Span,
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
        let this = self.project();
        // Also around the access line below, so with `baton::request=debug` it names its
        // request too.
        let _entered = this.span.enter();
        let polled = CurrentSettings::lend(this.settings, || this.response.poll(cx));
        let response = match polled {
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
            #[cfg(feature = "otel")]
            crate::otel::record_status(this.span, response.status());
            let took = done.in_flight.finish(response.status());
            if let Some((entry, state)) = done.access {
                entry.write(&response, took, state.process().generation());
            }
        }
        Poll::Ready(Ok(response))
    }
}
