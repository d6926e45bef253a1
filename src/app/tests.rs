//! Tests that drive the lifecycle phase, which only the crate can change (`set_phase` and
//! `begin_drain` are `pub(crate)`): `/readyz` across phases, and SSE ending at the drain.
//! Everything else is tested from outside, in `tests/api.rs`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::{AppState, router};
use crate::lifecycle::{Phase, ProcessState};
use crate::settings::{ConfigSource, Settings, SettingsStore};

/// Long enough for a loaded 2-core machine, short enough that a hang fails the test quickly.
const DEADLINE: Duration = Duration::from_secs(10);

fn app() -> (axum::Router, ProcessState) {
    let source = ConfigSource {
        dir: "config-dir-not-read-by-these-tests".into(),
        env_name: None,
    };
    let store = Arc::new(SettingsStore::new(source, Settings::default()));
    let process = ProcessState::new(1, crate::version());
    (router(AppState::new(store, process.clone())), process)
}

async fn readyz(app: &axum::Router) -> (StatusCode, String) {
    let request = Request::get("/readyz")
        .body(Body::empty())
        .expect("a static request is valid");
    let response = tokio::time::timeout(DEADLINE, app.clone().oneshot(request))
        .await
        .expect("/readyz answers in time")
        .expect("the router is infallible");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("an in-memory body cannot fail")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn readyz_follows_the_phase() {
    let (app, process) = app();
    assert_eq!(
        readyz(&app).await,
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n".to_owned())
    );
    process.set_phase(Phase::Serving);
    assert_eq!(readyz(&app).await, (StatusCode::OK, "ready\n".to_owned()));
    process.set_phase(Phase::Upgrading);
    assert_eq!(readyz(&app).await, (StatusCode::OK, "ready\n".to_owned()));
    process.begin_drain();
    assert_eq!(
        readyz(&app).await,
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_owned())
    );
}

#[tokio::test]
async fn event_stream_ends_itself_when_the_drain_begins() {
    let (app, process) = app();
    process.set_phase(Phase::Serving);
    let request = Request::get("/api/events?interval_ms=10")
        .body(Body::empty())
        .expect("a static request is valid");
    let response = tokio::time::timeout(DEADLINE, app.oneshot(request))
        .await
        .expect("the stream starts in time")
        .expect("the router is infallible");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();

    // Ticks flow while serving.
    let first = tokio::time::timeout(DEADLINE, body.frame())
        .await
        .expect("a tick arrives in time")
        .expect("the stream is open")
        .expect("an SSE body cannot fail");
    let first = first.into_data().expect("SSE frames are data");
    assert!(
        String::from_utf8_lossy(&first).contains("event: tick"),
        "first frame: {first:?}"
    );

    // After the drain begins the stream says so and ends, instead of ticking forever.
    process.begin_drain();
    let rest = tokio::time::timeout(DEADLINE, body.collect())
        .await
        .expect("the stream ends once the drain begins")
        .expect("an SSE body cannot fail")
        .to_bytes();
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.trim_end()
            .ends_with("event: draining\ndata: server is draining; reconnect"),
        "stream tail: {rest:?}"
    );
}
