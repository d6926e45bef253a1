//! The one-shot helpers against servers with known behaviour: each failure must be reported as
//! its own kind, in both the async and the blocking client.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response as HyperResponse;
use loadgen::{Failure, FailureKind, Response, get, get_blocking, get_with_timeout};
use support::Proto;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the blocking client off the runtime's threads, so the test servers keep running.
async fn blocking(
    addr: std::net::SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<Response, Failure> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || get_blocking(addr, &path, timeout))
        .await
        .expect("blocking client task")
}

/// Both clients, same request: their results must agree in kind.
async fn both(
    addr: std::net::SocketAddr,
    path: &str,
    timeout: Duration,
) -> [Result<Response, Failure>; 2] {
    [
        get_with_timeout(addr, path, timeout).await,
        blocking(addr, path, timeout).await,
    ]
}

fn kind(result: &Result<Response, Failure>) -> Option<FailureKind> {
    result.as_ref().err().map(Failure::kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_response_is_returned_in_full() {
    let server = support::hyper_server(Proto::Http1, support::hello).await;
    for result in both(server.addr, "/greet?x=1", TIMEOUT).await {
        let response = result.expect("good server answers");
        assert_eq!(response.status, 200);
        assert_eq!(response.body, "hello /greet");
        assert_eq!(response.header("X-Test"), Some("yes"));
    }
    let response = get(server.addr, "/").await.expect("default timeout");
    assert_eq!(response.error_for_status().expect("2xx").body, "hello /");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_statuses_are_responses_until_asked() {
    let server = support::hyper_server(Proto::Http1, |_| {
        HyperResponse::builder()
            .status(503)
            .body(Full::new(Bytes::from("draining")))
            .expect("valid response")
    })
    .await;
    for result in both(server.addr, "/readyz", TIMEOUT).await {
        let response = result.expect("a 503 is a response");
        assert_eq!((response.status, response.body.as_str()), (503, "draining"));
        assert_eq!(response.error_for_status(), Err(Failure::Status(503)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_without_answer_is_early_close() {
    let server = support::close_after_request().await;
    for result in both(server.addr, "/", TIMEOUT).await {
        assert_eq!(kind(&result), Some(FailureKind::EarlyClose), "{result:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_body_is_early_close() {
    let server = support::truncated_body().await;
    for result in both(server.addr, "/", TIMEOUT).await {
        assert_eq!(kind(&result), Some(FailureKind::EarlyClose), "{result:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_is_reset() {
    let server = support::reset_after_request().await;
    for result in both(server.addr, "/", TIMEOUT).await {
        assert_eq!(kind(&result), Some(FailureKind::Reset), "{result:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_is_connect() {
    let addr = support::refused_addr();
    for result in both(addr, "/", TIMEOUT).await {
        assert_eq!(kind(&result), Some(FailureKind::Connect), "{result:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_is_timeout_within_the_bound() {
    let server = support::never_answer().await;
    let started = std::time::Instant::now();
    for result in both(server.addr, "/", Duration::from_millis(200)).await {
        assert_eq!(kind(&result), Some(FailureKind::Timeout), "{result:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "timeouts not honoured"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_paths_are_refused_before_connecting() {
    let addr = support::refused_addr();
    for result in both(addr, "no-slash", TIMEOUT).await {
        assert_eq!(kind(&result), Some(FailureKind::Other), "{result:?}");
    }
}
