//! Tests that drive the lifecycle phase, which only the crate can change (`set_phase` and
//! `begin_drain` are `pub(crate)`): `/readyz` across phases, and the long-lived responses (SSE,
//! WebSocket) ending at the drain; and one that needs two apps on one thread (`GET /`'s body
//! kept per thread). Everything else is tested from outside, in `tests/api.rs` and, through
//! real upgrades, `tests/websockets.rs`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::{AppState, router};
use crate::database::{Db, Migrations};
use crate::lifecycle::{Phase, ProcessState};
use crate::settings::{ConfigSource, SecretUrl, Settings, SettingsStore};

/// Long enough for a loaded 2-core machine, short enough that a hang fails the test quickly.
const DEADLINE: Duration = Duration::from_secs(10);

/// The router, the process state it follows, and the directory of its SQLite database (kept
/// for as long as the test runs).
async fn app() -> (super::Public, ProcessState, tempfile::TempDir) {
    app_with(Settings::default()).await
}

async fn app_with(mut settings: Settings) -> (super::Public, ProcessState, tempfile::TempDir) {
    let source = ConfigSource {
        dir: "config-dir-not-read-by-these-tests".into(),
        env_name: None,
    };
    let data = tempfile::tempdir().expect("a temp dir can be created");
    settings.database.url = SecretUrl::new(format!(
        "sqlite://{}",
        data.path().join("baton.db").display()
    ));
    let db = tokio::time::timeout(
        DEADLINE,
        Db::open(&settings.database, Migrations::built_in()),
    )
    .await
    .expect("the database opens in time")
    .expect("a SQLite database in a temp dir opens");
    let store = Arc::new(SettingsStore::new(source, settings));
    let process = ProcessState::new(1, crate::version());
    (
        router(AppState::new(store, process.clone(), db, None)),
        process,
        data,
    )
}

async fn get(app: &super::Public, path: &str) -> (StatusCode, String) {
    let request = Request::get(path)
        .body(Body::empty())
        .expect("a static request is valid");
    let response = tokio::time::timeout(DEADLINE, app.clone().oneshot(request))
        .await
        .expect("the request is answered in time")
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

async fn readyz(app: &super::Public) -> (StatusCode, String) {
    get(app, "/readyz").await
}

/// A worker thread keeps `GET /`'s body for the settings it was rendered from: two apps served
/// from one thread (this test's runtime has one), with the same config and binary generation,
/// each answer with their own greeting, however their requests alternate.
#[tokio::test]
async fn two_apps_on_one_thread_each_answer_with_their_own_greeting() {
    let with_greeting = |greeting: &str| {
        let mut settings = Settings::default();
        settings.app.greeting = greeting.into();
        settings
    };
    let (one, _, _one_data) = app_with(with_greeting("from one")).await;
    let (two, _, _two_data) = app_with(with_greeting("from two")).await;
    for _ in 0..2 {
        let (status, body) = get(&one, "/").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.starts_with("from one (version "), "{body}");
        let (status, body) = get(&two, "/").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.starts_with("from two (version "), "{body}");
    }
}

#[tokio::test]
async fn readyz_follows_the_phase() {
    let (app, process, _data) = app().await;
    assert_eq!(
        readyz(&app).await,
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n".to_owned())
    );
    process.set_phase(Phase::Serving);
    assert_eq!(readyz(&app).await, (StatusCode::OK, "ready\n".to_owned()));
    process.set_phase(Phase::Upgrading);
    assert_eq!(readyz(&app).await, (StatusCode::OK, "ready\n".to_owned()));
    process.begin_drain(std::time::Duration::ZERO);
    assert_eq!(
        readyz(&app).await,
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_owned())
    );
}

#[tokio::test]
async fn event_stream_ends_itself_when_the_drain_begins() {
    let (app, process, _data) = app().await;
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
    assert_eq!(process.open_long_lived(), 1, "the stream holds a lease");

    // After the drain begins the stream says so and ends, instead of ticking forever.
    process.begin_drain(std::time::Duration::ZERO);
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
    assert_eq!(
        process.open_long_lived(),
        0,
        "the lease ends with the stream"
    );
}

/// `limits.stream_lifetime` ends a stream while the process serves on: a `reconnect` event,
/// then the end, and the lease goes with it.
#[tokio::test]
async fn event_stream_is_told_to_reconnect_at_its_lifetime() {
    let mut settings = Settings::default();
    settings.limits.stream_lifetime = Duration::from_secs(1);
    let (app, process, _data) = app_with(settings).await;
    process.set_phase(Phase::Serving);
    let request = Request::get("/api/events?interval_ms=200")
        .body(Body::empty())
        .expect("a static request is valid");
    let started = std::time::Instant::now();
    let response = app
        .oneshot(request)
        .await
        .expect("the router is infallible");
    assert_eq!(response.status(), StatusCode::OK);
    // Without the lifetime, ticks would come until this bound.
    let body = tokio::time::timeout(DEADLINE, response.into_body().collect())
        .await
        .expect("the stream ends at its lifetime")
        .expect("an SSE body cannot fail")
        .to_bytes();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "ended before its lifetime"
    );
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("event: tick"), "{body:?}");
    assert!(
        body.trim_end()
            .ends_with("event: reconnect\ndata: stream lifetime reached; reconnect"),
        "stream tail: {body:?}"
    );
    assert_eq!(
        process.open_long_lived(),
        0,
        "the lease ends with the stream"
    );
    assert_eq!(process.phase(), Phase::Serving, "no drain was involved");
}

/// A real WebSocket on a real socket (axum's `serve`, which upgrades like the lifecycle's own
/// server): echoes, holds a lease the drain waits for, and is told 1001 at the drain.
#[tokio::test]
async fn websocket_echoes_then_goes_away_with_1001_when_the_drain_begins() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    let (app, process, _data) = app().await;
    process.set_phase(Phase::Serving);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind on loopback");
    let addr = listener.local_addr().expect("a bound address");
    let app = axum::Router::new().fallback_service(app);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let (mut ws, _) = tokio::time::timeout(
        DEADLINE,
        tokio_tungstenite::connect_async(format!("ws://{addr}/api/ws")),
    )
    .await
    .expect("the handshake in time")
    .expect("the handshake");
    ws.send(Message::text("hello")).await.expect("send");
    let echo = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("echo in time");
    assert_eq!(
        echo.expect("open").expect("a frame"),
        Message::text("hello")
    );
    assert_eq!(process.open_long_lived(), 1, "the socket holds a lease");

    process.begin_drain(std::time::Duration::ZERO);
    let close = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("the close in time");
    match close.expect("open").expect("a frame") {
        Message::Close(Some(frame)) => {
            assert_eq!(frame.code, CloseCode::Away);
            assert!(
                frame.reason.contains("reconnect"),
                "reason {:?}",
                frame.reason
            );
        }
        other => panic!("expected Close 1001, got {other:?}"),
    }
    // Reading on answers the close; the server then closes the connection.
    let end = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("the end in time");
    assert!(end.is_none(), "after the closing handshake: {end:?}");
    let released = async {
        while process.open_long_lived() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(DEADLINE, released)
        .await
        .expect("the lease ends with the closing handshake");
    server.abort();
}
