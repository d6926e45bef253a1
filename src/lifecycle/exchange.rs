//! What a connection adds around each of its requests: the limits checked before the service
//! (`limits::refuse`, the body's bound), the request counted in the connection's activity,
//! and `Connection: close` on the response when the connection should end after it.
//!
//! One [`Exchange`] per connection, which hyper calls for each request. It borrows what it
//! needs from the connection rather than cloning it for each request: an `Arc` clone of the
//! service or of the process state is a write to a counter that every worker thread shares,
//! and that cache line then moves between cores on every request. Only the connection's own
//! `Activity` is cloned, and only the connection's worker writes it. HTTP/2 streams run in
//! tasks of their own (hyper spawns them), so their futures own what they use; they never need
//! the process state, which only HTTP/1's `Connection: close` reads.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use axum::body::Body;
use axum::http::header::{CONNECTION, HeaderValue};
use axum::http::{Request, StatusCode};
use axum::response::Response;
use futures_util::future::Either;
use http_body_util::Limited;
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tower::ServiceExt;
use tower::util::Oneshot;

use super::limits::{self, ConnLimits};
use super::serve::Answers;
use super::spread::Slot;
use super::state::ProcessState;
use super::watch::{Activity, InFlight, Tracked};

/// The service of one connection, as hyper calls it. `'p`: how long the process state it
/// reads is borrowed for (the connection's, on HTTP/1; unused, so `'static`, on HTTP/2).
pub(super) struct Exchange<'p, S> {
    /// In a `RefCell` because tower's `call` takes `&mut self` and hyper's takes `&self`:
    /// hyper calls it from the connection's task only, one call at a time.
    service: RefCell<S>,
    activity: Arc<Activity>,
    limits: ConnLimits,
    /// On HTTP/1, what decides whether a response closes the connection while draining.
    draining: Option<(&'p ProcessState, Slot)>,
}

impl<S: Answers> Exchange<'static, S> {
    /// For an HTTP/2 connection: `Connection: close` does not exist there (the drain sends
    /// GOAWAY), so the process state is not needed.
    pub(super) fn http2(service: S, activity: Arc<Activity>, limits: ConnLimits) -> Self {
        Exchange {
            service: RefCell::new(service),
            activity,
            limits,
            draining: None,
        }
    }
}

impl<'p, S: Answers> Exchange<'p, S> {
    pub(super) fn http1(
        service: S,
        activity: Arc<Activity>,
        limits: ConnLimits,
        process: &'p ProcessState,
        slot: Slot,
    ) -> Self {
        Exchange {
            service: RefCell::new(service),
            activity,
            limits,
            draining: Some((process, slot)),
        }
    }

    /// The service's answer, started at once when the service is ready (it always is for a
    /// `Router`): the answer's future then holds the route's future alone, not also a
    /// `Oneshot` with the service and the request waiting for the first poll.
    fn start(&self, request: Request<Body>) -> Pending<S> {
        let mut service = self.service.borrow_mut();
        // tower asks for `poll_ready` before `call`. A service that is not ready now is
        // polled again, with the task's waker, by `Oneshot`.
        let mut cx = Context::from_waker(Waker::noop());
        match service.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => Either::Left(service.call(request)),
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => Either::Right(Either::Left(service.clone().oneshot(request))),
        }
    }
}

type Pending<S> = Either<
    <S as tower::Service<Request<Body>>>::Future,
    Either<Oneshot<S, Request<Body>>, Ready<Result<Response, Infallible>>>,
>;

impl<'p, S: Answers> hyper::service::Service<Request<Incoming>> for Exchange<'p, S> {
    type Response = Response<Tracked>;
    type Error = Infallible;
    type Future = Answer<'p, S>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let (in_flight, number) = self.activity.begin();
        // Only an HTTP/1 connection has `draining`, and it carries only HTTP/1 requests.
        let close = self.draining.map(|(process, slot)| Close {
            process,
            slot,
            last: number >= self.limits.requests_per_connection,
        });
        let pending = match limits::refuse(&request, self.limits.max_body_bytes) {
            Some(refused) => Either::Right(Either::Right(ready(Ok(refused)))),
            None => {
                let max = self.limits.max_body_bytes;
                self.start(request.map(|body| Body::new(Limited::new(body, max))))
            }
        };
        Answer {
            pending,
            in_flight: Some(in_flight),
            close,
        }
    }
}

/// Whether an HTTP/1 response ends its connection.
#[derive(Clone, Copy)]
struct Close<'p> {
    process: &'p ProcessState,
    slot: Slot,
    /// The connection's `limits.requests_per_connection`-th request.
    last: bool,
}

impl Close<'_> {
    /// Checked once the handler is done, so that a request that began before the drain also
    /// tells its client to reconnect (to the next generation) after this response, once the
    /// connection's moment in the close window has come (see `spread`). Not on a protocol
    /// switch: that would replace its `Connection: upgrade` and break the handshake; the
    /// long-lived response it starts is told of the drain itself.
    fn now(self, response: &Response) -> bool {
        (self.last || (self.process.is_draining() && self.process.close_due(self.slot)))
            && response.status() != StatusCode::SWITCHING_PROTOCOLS
    }
}

pin_project! {
    /// One request's answer: the service's response, marked to close the connection if it
    /// should, with a body that ends the request's `InFlight` once it is sent.
    pub(super) struct Answer<'p, S: Answers> {
        #[pin]
        pending: Pending<S>,
        in_flight: Option<InFlight>,
        close: Option<Close<'p>>,
    }
}

impl<S: Answers> Future for Answer<'_, S> {
    type Output = Result<Response<Tracked>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut response) = std::task::ready!(this.pending.poll(cx));
        if this.close.is_some_and(|close| close.now(&response)) {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        // Taken only here, and `pending` (like any future) may not be polled again once ready.
        let in_flight = this
            .in_flight
            .take()
            .expect("an answer is polled until ready, once");
        Poll::Ready(Ok(response.map(|body| Tracked::new(body, in_flight))))
    }
}
