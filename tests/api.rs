//! In-process tests of the public and admin routers: each request goes through the real
//! router (middleware included) with `tower::ServiceExt::oneshot`, no socket involved.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use axum::response::Response;
use baton::app::{AppState, Public, admin_router, router};
use baton::database::{Db, Migrations};
use baton::lifecycle::ProcessState;
use baton::settings::{ConfigSource, ReloadOutcome, SecretUrl, Settings, SettingsStore};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tempfile::TempDir;
use tower::ServiceExt;

/// Every await on the app gets this deadline: generous for a loaded 2-core machine, short
/// enough that a hang fails the test instead of the whole run.
const DEADLINE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Helpers: one app per test, one function per kind of request.
// ---------------------------------------------------------------------------------------------

struct TestApp {
    public: Public,
    admin: Router,
    store: Arc<SettingsStore>,
    /// Holds the config directory that `write_config` + `reload` read.
    config_dir: TempDir,
    /// Holds the SQLite database.
    _data_dir: TempDir,
}

struct TestResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl TestResponse {
    fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).expect("the body is UTF-8")
    }

    /// The status and the body, to compare with an expected pair in one assertion.
    fn status_and_text(&self) -> (StatusCode, String) {
        (self.status, self.text())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {:?}", self.text()))
    }

    fn content_type(&self) -> &str {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Asserts the shared error shape: a JSON object with one string field, `error`.
    fn assert_error(&self, status: StatusCode, message_contains: &str) {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert!(
            self.content_type().starts_with("application/json"),
            "content type {:?} for {}",
            self.content_type(),
            self.text()
        );
        let body = self.json();
        let message = body["error"]
            .as_str()
            .expect("error bodies have an `error` string");
        assert_eq!(body.as_object().map(|o| o.len()), Some(1), "body: {body}");
        assert!(
            message.contains(message_contains),
            "error {message:?} should contain {message_contains:?}"
        );
    }
}

/// An app with default settings.
async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// An app whose initial settings are the defaults changed by `configure`, with a fresh SQLite
/// database of its own.
async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let config_dir = tempfile::tempdir().expect("a temp dir can be created");
    let data_dir = tempfile::tempdir().expect("a temp dir can be created");
    let mut settings = Settings::default();
    settings.database.url = SecretUrl::new(format!(
        "sqlite://{}",
        data_dir.path().join("baton.db").display()
    ));
    configure(&mut settings);
    let db = tokio::time::timeout(
        DEADLINE,
        Db::open(&settings.database, Migrations::built_in()),
    )
    .await
    .expect("the database opens in time")
    .expect("a SQLite database in a temp dir opens");
    let source = ConfigSource {
        dir: config_dir.path().to_path_buf(),
        env_name: None,
    };
    let store = Arc::new(SettingsStore::new(source, settings));
    let process = ProcessState::new(1, baton::version());
    let state = AppState::new(store.clone(), process, db, None);
    TestApp {
        public: router(state.clone()),
        admin: admin_router(state),
        store,
        config_dir,
        _data_dir: data_dir,
    }
}

async fn send<S>(app: &S, request: Request<Body>) -> TestResponse
where
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible> + Clone,
{
    let what = format!("{} {}", request.method(), request.uri());
    let response = tokio::time::timeout(DEADLINE, app.clone().oneshot(request))
        .await
        .unwrap_or_else(|_| panic!("{what} did not answer within {DEADLINE:?}"))
        .expect("the router is infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let body = tokio::time::timeout(DEADLINE, response.into_body().collect())
        .await
        .unwrap_or_else(|_| panic!("the body of {what} did not end within {DEADLINE:?}"))
        .expect("an in-memory body cannot fail")
        .to_bytes();
    TestResponse {
        status,
        headers,
        body,
    }
}

impl TestApp {
    async fn get(&self, uri: &str) -> TestResponse {
        let request = Request::get(uri)
            .body(Body::empty())
            .expect("the test builds a valid request");
        send(&self.public, request).await
    }

    /// `GET` each URI: each must be the error `status` with a message containing `words`.
    async fn assert_get_errors(&self, cases: &[(&str, StatusCode, &str)]) {
        for &(uri, status, words) in cases {
            self.get(uri).await.assert_error(status, words);
        }
    }

    async fn get_admin(&self, uri: &str) -> TestResponse {
        let request = Request::get(uri)
            .body(Body::empty())
            .expect("the test builds a valid request");
        send(&self.admin, request).await
    }

    /// `POST /api/items` with a raw JSON body, and a bearer token when given.
    async fn post_item(&self, body: &str, bearer: Option<&str>) -> TestResponse {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri("/api/items")
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = bearer {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Body::from(body.to_owned()))
            .expect("the test builds a valid request");
        send(&self.public, request).await
    }

    async fn post_item_named(&self, name: &str) -> TestResponse {
        self.post_item(&json!({ "name": name }).to_string(), None)
            .await
    }

    /// Replaces `default.toml` atomically (a reload never reads a half-written file).
    fn write_config(&self, toml: &str) {
        let tmp = self.config_dir.path().join("default.toml.tmp");
        std::fs::write(&tmp, toml).expect("the temp config can be written");
        std::fs::rename(&tmp, self.config_dir.path().join("default.toml"))
            .expect("the temp config can be renamed");
    }

    /// Reloads with an empty environment, so no stray `BATON_…` variable of the test runner
    /// can change the outcome.
    async fn reload(&self) -> ReloadOutcome {
        self.store
            .reload_from(std::iter::empty::<(String, String)>())
            .await
    }

    /// The value of one sample in the `/metrics` text, e.g. `baton_requests_total{class="2xx"}`.
    async fn metric(&self, sample: &str) -> String {
        let text = self.get_admin("/metrics").await.text();
        text.lines()
            .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no sample {sample} in:\n{text}"))
            .to_owned()
    }
}

fn secret(key: &str) -> baton::settings::Secret {
    serde_json::from_value(json!(key)).expect("a secret deserializes from a string")
}

// ---------------------------------------------------------------------------------------------
// `/`, `/healthz`, `/readyz`, fallback
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn root_names_greeting_version_pid_and_generation() {
    let app = spawn_app().await;
    let response = app.get("/").await;
    assert_eq!(response.status, StatusCode::OK);
    assert!(response.content_type().starts_with("text/plain"));
    let expected = format!(
        "{} (version {}, pid {}, generation 1)\n",
        Settings::default().app.greeting,
        baton::version(),
        std::process::id()
    );
    assert_eq!(response.text(), expected);
}

#[tokio::test]
async fn greeting_follows_a_reload() {
    let app = spawn_app().await;
    app.write_config("[app]\ngreeting = \"Howdy\"\n");
    assert!(
        matches!(
            app.reload().await,
            ReloadOutcome::Applied {
                config_generation: 2,
                ..
            }
        ),
        "the new greeting is applied"
    );
    let text = app.get("/").await.text();
    assert!(text.starts_with("Howdy (version "), "body: {text:?}");
}

#[tokio::test]
async fn healthz_is_ok() {
    let response = spawn_app().await.get("/healthz").await;
    assert_eq!(response.status_and_text(), (StatusCode::OK, "ok\n".into()));
}

/// A new process is `Starting`; `Serving` and `Draining` are set by the lifecycle only and
/// are covered by `src/app/tests.rs`.
#[tokio::test]
async fn readyz_is_unavailable_while_starting() {
    let response = spawn_app().await.get("/readyz").await;
    assert_eq!(
        response.status_and_text(),
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n".into())
    );
}

#[tokio::test]
async fn unknown_routes_get_a_json_404() {
    let app = spawn_app().await;
    app.assert_get_errors(&[
        ("/nope", StatusCode::NOT_FOUND, "no route for GET /nope"),
        (
            "/api/nope",
            StatusCode::NOT_FOUND,
            "no route for GET /api/nope",
        ),
    ])
    .await;
}

// ---------------------------------------------------------------------------------------------
// `/api/settings`
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn api_settings_shows_the_settings_in_force() {
    let app = spawn_app_with(|s| {
        s.app.greeting = "Hi".to_owned();
        s.app.items_limit = 7;
    })
    .await;
    let response = app.get("/api/settings").await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(
        response.json(),
        json!({ "greeting": "Hi", "items_limit": 7, "config_generation": 1 })
    );

    app.write_config("[app]\ngreeting = \"Changed\"\nitems_limit = 9\n");
    assert!(matches!(app.reload().await, ReloadOutcome::Applied { .. }));
    assert_eq!(
        app.get("/api/settings").await.json(),
        json!({ "greeting": "Changed", "items_limit": 9, "config_generation": 2 })
    );
}

/// Two keys changed by one reload are never seen one old and one new, even while reloads
/// land in the middle of requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_settings_never_mixes_two_snapshots() {
    let app = Arc::new(spawn_app().await);
    let configs = [
        ("[app]\ngreeting = \"a\"\nitems_limit = 1\n", ("a", 1)),
        ("[app]\ngreeting = \"b\"\nitems_limit = 2\n", ("b", 2)),
    ];
    let reloader = {
        let app = app.clone();
        tokio::spawn(async move {
            for (toml, _) in configs.iter().cycle().take(40) {
                app.write_config(toml);
                assert!(matches!(app.reload().await, ReloadOutcome::Applied { .. }));
            }
        })
    };
    let deadline = Instant::now() + DEADLINE;
    let mut seen = 0;
    while !reloader.is_finished() && Instant::now() < deadline {
        let body = app.get("/api/settings").await.json();
        let pair = (body["greeting"].as_str(), body["items_limit"].as_u64());
        let consistent = match pair {
            (Some(greeting), Some(limit)) => {
                configs
                .iter()
                .any(|(_, (g, l))| *g == greeting && *l == limit)
                // Before the first reload: the defaults.
                || (greeting == Settings::default().app.greeting
                    && Ok(limit) == u64::try_from(Settings::default().app.items_limit))
            }
            _ => false,
        };
        assert!(consistent, "mixed snapshot: {body}");
        seen += 1;
    }
    tokio::time::timeout(DEADLINE, reloader)
        .await
        .expect("40 reloads finish in time")
        .expect("every reload applied");
    assert!(seen > 0, "no request ran while reloading");
}

// ---------------------------------------------------------------------------------------------
// `/api/items`
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn items_can_be_created_listed_and_fetched() {
    let app = spawn_app().await;
    assert_eq!(app.get("/api/items").await.json(), json!([]));

    let created = app.post_item_named("first").await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    assert_eq!(created.json(), json!({ "id": 1, "name": "first" }));
    assert_eq!(
        created.headers.get(header::LOCATION).map(|v| v.as_bytes()),
        Some(&b"/api/items/1"[..])
    );
    app.post_item_named("second").await;

    let fetched = app.get("/api/items/1").await;
    assert_eq!(fetched.status, StatusCode::OK);
    assert_eq!(fetched.json(), json!({ "id": 1, "name": "first" }));
    assert_eq!(
        app.get("/api/items").await.json(),
        json!([{ "id": 1, "name": "first" }, { "id": 2, "name": "second" }])
    );
}

#[tokio::test]
async fn missing_items_are_404_and_bad_ids_400() {
    let app = spawn_app().await;
    app.assert_get_errors(&[
        ("/api/items/42", StatusCode::NOT_FOUND, "no item with id 42"),
        ("/api/items/abc", StatusCode::BAD_REQUEST, "abc"),
    ])
    .await;
}

#[tokio::test]
async fn item_names_are_validated() {
    let app = spawn_app().await;
    let too_long = "é".repeat(201);
    for (name, words) in [
        ("", "name must not be empty"),
        ("   ", "name must not be empty"),
        (too_long.as_str(), "the limit is 200"),
    ] {
        app.post_item_named(name)
            .await
            .assert_error(StatusCode::UNPROCESSABLE_ENTITY, words);
    }
    // The limit counts characters, not bytes: 200 two-byte characters are fine.
    assert_eq!(
        app.post_item_named(&"é".repeat(200)).await.status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn bad_json_gets_the_json_error_shape() {
    let app = spawn_app().await;
    for (body, status, words) in [
        // Not JSON at all.
        ("{\"name\":", StatusCode::BAD_REQUEST, "JSON"),
        // JSON, wrong shape.
        ("{\"name\": 5}", StatusCode::UNPROCESSABLE_ENTITY, "name"),
        (
            "{\"name\": \"x\", \"colour\": \"red\"}",
            StatusCode::UNPROCESSABLE_ENTITY,
            "colour",
        ),
    ] {
        app.post_item(body, None).await.assert_error(status, words);
    }
    // No `Content-Type: application/json`.
    let request = Request::post("/api/items")
        .body(Body::from("{\"name\": \"x\"}"))
        .expect("the test builds a valid request");
    send(&app.public, request)
        .await
        .assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type");
}

#[tokio::test]
async fn a_taken_name_is_409() {
    let app = spawn_app().await;
    assert_eq!(app.post_item_named("a").await.status, StatusCode::CREATED);
    app.post_item_named("a")
        .await
        .assert_error(StatusCode::CONFLICT, "an item named \"a\" exists already");
    // The name is free again once its item is gone.
    let request = Request::delete("/api/items/1")
        .body(Body::empty())
        .expect("the test builds a valid request");
    assert_eq!(
        send(&app.public, request).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(app.post_item_named("a").await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn items_are_listed_in_pages_by_id() {
    let app = spawn_app_with(|s| s.app.items_limit = 2).await;
    for name in ["a", "b", "c"] {
        assert_eq!(app.post_item_named(name).await.status, StatusCode::CREATED);
    }
    // Without ?limit=, a page is app.items_limit long when that is below the default (50). A
    // page that more items follow points at the next one; the last page does not.
    let first = app.get("/api/items").await;
    assert_eq!(
        first.json(),
        json!([{ "id": 1, "name": "a" }, { "id": 2, "name": "b" }])
    );
    let next = first
        .headers
        .get(header::LINK)
        .and_then(|v| v.to_str().ok())
        .expect("a page that more items follow links to the next");
    assert_eq!(next, "</api/items?limit=2&after=2>; rel=\"next\"");
    let last = app.get("/api/items?after=2&limit=2").await;
    assert_eq!(last.json(), json!([{ "id": 3, "name": "c" }]));
    assert!(last.headers.get(header::LINK).is_none());
    assert_eq!(
        app.get("/api/items?limit=1&after=1").await.json(),
        json!([{ "id": 2, "name": "b" }])
    );
    // Past the last id the database can hold: an empty page, not an error.
    assert_eq!(
        app.get(&format!("/api/items?after={}", u64::MAX))
            .await
            .json(),
        json!([])
    );

    // The largest page is app.items_limit, read per request: a reload raises it at once.
    app.get("/api/items?limit=3").await.assert_error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "limit must be between 1 and 2",
    );
    app.get("/api/items?limit=0")
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "app.items_limit");
    app.get("/api/items?limit=x")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "limit");
    app.write_config("[app]\nitems_limit = 3\n");
    assert!(matches!(app.reload().await, ReloadOutcome::Applied { .. }));
    let all = app.get("/api/items?limit=3").await;
    assert_eq!(all.json().as_array().map(Vec::len), Some(3));
    // A full page that nothing follows is the last: no link to an empty page.
    assert!(all.headers.get(header::LINK).is_none());
}

#[tokio::test]
async fn creating_items_requires_the_api_key_when_set() {
    let app = spawn_app_with(|s| s.app.api_key = Some(secret("s3cret"))).await;
    let missing = app.post_item("{\"name\": \"x\"}", None).await;
    missing.assert_error(StatusCode::UNAUTHORIZED, "Authorization: Bearer");
    assert_eq!(
        missing
            .headers
            .get(header::WWW_AUTHENTICATE)
            .map(|v| v.as_bytes()),
        Some(&b"Bearer"[..])
    );
    for (body, token) in [
        ("{\"name\": \"x\"}", "wrong"),
        // The key is checked before the body is read: a bad body still gets 401.
        ("not json", "s3cre"),
    ] {
        app.post_item(body, Some(token))
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "api key");
    }

    let created = app.post_item("{\"name\": \"x\"}", Some("s3cret")).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    // Reading needs no key.
    assert_eq!(app.get("/api/items/1").await.status, StatusCode::OK);
}

// ---------------------------------------------------------------------------------------------
// `/api/slow`, `/api/events`, the request timeout
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn slow_sleeps_then_reports() {
    let app = spawn_app().await;
    let started = Instant::now();
    let response = app.get("/api/slow?ms=30").await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.json(), json!({ "slept_ms": 30 }));
    assert!(started.elapsed() >= Duration::from_millis(30));
}

#[tokio::test]
async fn slow_validates_its_query() {
    let app = spawn_app().await;
    assert_eq!(
        app.get("/api/slow?ms=0").await.json(),
        json!({ "slept_ms": 0 })
    );
    app.assert_get_errors(&[
        (
            "/api/slow?ms=60001",
            StatusCode::UNPROCESSABLE_ENTITY,
            "between 0 and 60000",
        ),
        ("/api/slow?ms=-1", StatusCode::BAD_REQUEST, "ms"),
        ("/api/slow?ms=soon", StatusCode::BAD_REQUEST, "ms"),
        ("/api/slow", StatusCode::BAD_REQUEST, "missing field `ms`"),
    ])
    .await;
}

#[tokio::test]
async fn a_request_past_the_timeout_is_503() {
    let app = spawn_app_with(|s| s.server.request_timeout = Duration::from_millis(50)).await;
    let started = Instant::now();
    app.get("/api/slow?ms=2000")
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "request timed out");
    // Cut at the timeout, not after the handler's own 2 s.
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        started.elapsed()
    );
    // The timeout is read per request: after a reload that raises it, the same call succeeds.
    app.write_config("[server]\nrequest_timeout = \"5s\"\n");
    assert!(matches!(app.reload().await, ReloadOutcome::Applied { .. }));
    assert_eq!(app.get("/api/slow?ms=100").await.status, StatusCode::OK);
}

#[tokio::test]
async fn events_are_a_server_sent_event_stream() {
    let app = spawn_app().await;
    let request = Request::get("/api/events?interval_ms=10")
        .body(Body::empty())
        .expect("the test builds a valid request");
    let response = tokio::time::timeout(DEADLINE, app.public.clone().oneshot(request))
        .await
        .expect("the stream starts in time")
        .expect("the router is infallible");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.as_bytes()),
        Some(&b"text/event-stream"[..])
    );
    // The stream never ends while serving, so read one frame only.
    let frame = tokio::time::timeout(DEADLINE, response.into_body().frame())
        .await
        .expect("a tick arrives in time")
        .expect("the stream is open")
        .expect("an SSE body cannot fail")
        .into_data()
        .expect("SSE frames are data");
    assert_eq!(
        String::from_utf8_lossy(&frame),
        "event: tick\nid: 1\ndata: 1\n\n"
    );
}

#[tokio::test]
async fn events_validate_the_interval() {
    let app = spawn_app().await;
    app.assert_get_errors(&[
        (
            "/api/events?interval_ms=5",
            StatusCode::UNPROCESSABLE_ENTITY,
            "between 10 and 60000",
        ),
        (
            "/api/events?interval_ms=often",
            StatusCode::BAD_REQUEST,
            "interval_ms",
        ),
    ])
    .await;
}

// ---------------------------------------------------------------------------------------------
// Admin: `/-/status`, `/metrics`
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn status_reports_process_config_and_upgrades() {
    let app = spawn_app().await;
    let response = app.get_admin("/-/status").await;
    assert_eq!(response.status, StatusCode::OK);
    let status = response.json();
    assert_eq!(status["version"], json!(baton::version()));
    assert_eq!(status["pid"], json!(std::process::id()));
    assert_eq!(status["generation"], json!(1));
    assert_eq!(status["phase"], json!("starting"));
    let started_at = status["started_at"]
        .as_str()
        .expect("started_at is a string");
    humantime::parse_rfc3339(started_at).expect("started_at is RFC 3339");
    assert!(status["uptime_seconds"].is_u64());
    assert_eq!(status["config_generation"], json!(1));
    assert_eq!(status["last_reload"], Value::Null);
    assert_eq!(status["reloads"], json!({ "ok": 0, "failed": 0 }));
    assert_eq!(status["last_upgrade"], Value::Null);
    assert_eq!(
        status["upgrades"],
        json!({ "ok": 0, "failed": 0, "rolled_back": 0, "refused": 0 })
    );
    assert_eq!(status["last_drain"], Value::Null);
    assert_eq!(status["listeners"], json!([]));
    assert_eq!(status["open_connections"], json!(0));

    app.write_config("[app]\ngreeting = \"Howdy\"\n");
    assert!(matches!(app.reload().await, ReloadOutcome::Applied { .. }));
    let status = app.get_admin("/-/status").await.json();
    assert_eq!(status["config_generation"], json!(2));
    assert_eq!(status["reloads"], json!({ "ok": 1, "failed": 0 }));
    assert_eq!(status["last_reload"]["seq"], json!(1));
    assert_eq!(status["last_reload"]["outcome"]["result"], json!("applied"));
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let app = spawn_app().await;
    app.get("/healthz").await;
    app.get("/").await;
    app.get("/api/items/9").await;
    app.get("/readyz").await;

    let response = app.get_admin("/metrics").await;
    assert_eq!(response.status, StatusCode::OK);
    assert!(
        response
            .content_type()
            .starts_with("text/plain; version=0.0.4"),
        "content type {:?}",
        response.content_type()
    );
    let text = response.text();
    for (family, kind) in [
        ("baton_requests_total", "counter"),
        ("baton_request_duration_seconds", "histogram"),
        ("baton_requests_in_flight", "gauge"),
        ("baton_reloads_total", "counter"),
        ("baton_last_reload_success", "gauge"),
        ("baton_config_generation", "gauge"),
        ("baton_generation", "gauge"),
        ("baton_upgrades_total", "counter"),
        ("baton_drain_duration_seconds", "histogram"),
        ("baton_drain_cut_connections_total", "counter"),
        ("baton_drain_cut_long_lived_total", "counter"),
        ("baton_open_connections", "gauge"),
        ("baton_open_connections_by_protocol", "gauge"),
        ("baton_open_long_lived", "gauge"),
        ("baton_connections_rejected_total", "counter"),
        ("baton_connections_closed_total", "counter"),
        ("baton_start_time_seconds", "gauge"),
        ("baton_build_info", "gauge"),
    ] {
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "no HELP for {family}:\n{text}"
        );
        assert!(
            text.contains(&format!("# TYPE {family} {kind}\n")),
            "no TYPE for {family}:\n{text}"
        );
    }

    // Admin requests (these scrapes) are not counted as traffic.
    assert_eq!(app.metric("baton_requests_total{class=\"2xx\"}").await, "2");
    assert_eq!(app.metric("baton_requests_total{class=\"4xx\"}").await, "1");
    assert_eq!(app.metric("baton_requests_total{class=\"5xx\"}").await, "1");
    assert_eq!(app.metric("baton_reloads_total{result=\"ok\"}").await, "0");
    assert_eq!(app.metric("baton_last_reload_success").await, "1");
    assert_eq!(app.metric("baton_config_generation").await, "1");
    assert_eq!(app.metric("baton_generation").await, "1");
    for result in ["ok", "failed", "refused", "rolled_back"] {
        let sample = format!("baton_upgrades_total{{result=\"{result}\"}}");
        assert_eq!(app.metric(&sample).await, "0");
    }
    for protocol in ["http1", "http2", "unknown"] {
        let sample = format!("baton_open_connections_by_protocol{{protocol=\"{protocol}\"}}");
        assert_eq!(app.metric(&sample).await, "0");
    }
    assert_eq!(app.metric("baton_requests_in_flight").await, "0");
    assert_eq!(app.metric("baton_drain_duration_seconds_count").await, "0");
    assert_eq!(app.metric("baton_drain_cut_connections_total").await, "0");
    assert_eq!(app.metric("baton_drain_cut_long_lived_total").await, "0");
    assert_eq!(app.metric("baton_open_connections").await, "0");
    assert_eq!(app.metric("baton_open_long_lived").await, "0");
    assert_eq!(app.metric("baton_connections_rejected_total").await, "0");
    for reason in [
        "header_timeout",
        "idle",
        "send_timeout",
        "requests_per_connection",
    ] {
        let sample = format!("baton_connections_closed_total{{reason=\"{reason}\"}}");
        assert_eq!(app.metric(&sample).await, "0");
    }
    let start: f64 = app
        .metric("baton_start_time_seconds")
        .await
        .parse()
        .expect("the start time is a number");
    assert!(start > 1.6e9, "start time {start}");
    let build_info = format!("baton_build_info{{version=\"{}\"}}", baton::version());
    assert_eq!(app.metric(&build_info).await, "1");
}

#[tokio::test]
async fn request_durations_are_histograms_by_matched_route_and_class() {
    let app = spawn_app().await;
    app.get("/").await;
    app.get("/").await;
    app.get("/api/items/9").await;
    app.get("/api/items/10").await;
    app.get("/no/such/page").await;
    app.get("/api/slow?ms=1").await;

    let series = |route: &str, class: &str, suffix: &str| {
        format!("baton_request_duration_seconds_{suffix}{{route=\"{route}\",class=\"{class}\"")
    };
    let count = |route: &str, class: &str| format!("{}}}", series(route, class, "count"));
    assert_eq!(app.metric(&count("/", "2xx")).await, "2");
    // Two ids, one series: the label is the route as matched, never the raw path.
    assert_eq!(app.metric(&count("/api/items/{id}", "4xx")).await, "2");
    assert_eq!(app.metric(&count("unmatched", "4xx")).await, "1");
    assert_eq!(app.metric(&count("/api/slow", "2xx")).await, "1");

    let text = app.get_admin("/metrics").await.text();
    assert!(!text.contains("/no/such/page"), "{text}");
    assert!(!text.contains("/api/items/9"), "{text}");
    // A class without a response has no series.
    assert!(!text.contains(&series("/", "5xx", "count")), "{text}");

    // Buckets are cumulative, end at +Inf with the count, and the slow request (1 ms at
    // least) is above the first bucket (100 µs).
    let bucket = |le: &str| format!("{},le=\"{le}\"}}", series("/api/slow", "2xx", "bucket"));
    assert_eq!(app.metric(&bucket("0.0001")).await, "0");
    assert_eq!(app.metric(&bucket("30")).await, "1");
    assert_eq!(app.metric(&bucket("+Inf")).await, "1");
    let sum: f64 = app
        .metric(&format!("{}}}", series("/api/slow", "2xx", "sum")))
        .await
        .parse()
        .expect("the sum is a number");
    assert!((0.001..30.0).contains(&sum), "sum {sum}");
    // The totals by class add up every route.
    assert_eq!(app.metric("baton_requests_total{class=\"2xx\"}").await, "3");
    assert_eq!(app.metric("baton_requests_total{class=\"4xx\"}").await, "3");
}

#[tokio::test]
async fn metrics_follow_reloads() {
    let app = spawn_app().await;
    app.write_config("[app]\ngreeting = \"Howdy\"\n");
    assert!(matches!(app.reload().await, ReloadOutcome::Applied { .. }));
    assert_eq!(app.metric("baton_config_generation").await, "2");
    assert_eq!(app.metric("baton_reloads_total{result=\"ok\"}").await, "1");

    // A rejected reload keeps the old settings and shows as a failed, unsuccessful reload.
    app.write_config("[app]\ngreeting = \n");
    assert!(matches!(app.reload().await, ReloadOutcome::Rejected { .. }));
    assert_eq!(
        app.metric("baton_reloads_total{result=\"failed\"}").await,
        "1"
    );
    assert_eq!(app.metric("baton_last_reload_success").await, "0");
    assert_eq!(app.metric("baton_config_generation").await, "2");
    assert!(app.get("/").await.text().starts_with("Howdy "));
}

// ---------------------------------------------------------------------------------------------
// Pagination and the admin token (issue 9: bounded responses, an admin listener that may face a
// network)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn items_are_listed_in_bounded_pages_with_a_link_to_the_next() {
    let app = spawn_app().await;
    for i in 1..=5 {
        let created = app.post_item_named(&format!("item {i}")).await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    }
    let first = app.get("/api/items?limit=2").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    let ids = |response: &TestResponse| -> Vec<u64> {
        let items = response.json();
        let items = items.as_array().expect("a JSON array").clone();
        items
            .iter()
            .filter_map(|item| item["id"].as_u64())
            .collect()
    };
    assert_eq!(ids(&first), [1, 2]);
    let link = |response: &TestResponse| {
        response
            .headers
            .get(header::LINK)
            .map(|v| v.to_str().expect("ASCII").to_owned())
    };
    assert_eq!(
        link(&first).as_deref(),
        Some("</api/items?limit=2&after=2>; rel=\"next\"")
    );
    let second = app.get("/api/items?limit=2&after=2").await;
    assert_eq!(ids(&second), [3, 4]);
    let last = app.get("/api/items?limit=2&after=4").await;
    assert_eq!(ids(&last), [5]);
    assert_eq!(link(&last), None, "no page after the last one");
    // The default page is bounded too, and a client cannot ask for an unbounded one.
    assert_eq!(ids(&app.get("/api/items").await), [1, 2, 3, 4, 5]);
    app.get("/api/items?limit=101").await.assert_error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "limit must be between 1 and 100",
    );
    app.get("/api/items?limit=0").await.assert_error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "limit must be between 1 and 100",
    );
}

#[tokio::test]
async fn the_admin_endpoints_require_the_admin_token_when_set() {
    let app = spawn_app_with(|s| s.admin.token = Some(secret("adm1n"))).await;
    for path in ["/-/status", "/metrics"] {
        let missing = app.get_admin(path).await;
        missing.assert_error(StatusCode::UNAUTHORIZED, "admin.token");
        assert_eq!(
            missing.headers.get(header::WWW_AUTHENTICATE),
            Some(&header::HeaderValue::from_static("Bearer"))
        );
        let request = Request::get(path)
            .header(header::AUTHORIZATION, "Bearer wrong")
            .body(Body::empty())
            .expect("the test builds a valid request");
        assert_eq!(
            send(&app.admin, request).await.status,
            StatusCode::UNAUTHORIZED
        );
        let request = Request::get(path)
            .header(header::AUTHORIZATION, "Bearer adm1n")
            .body(Body::empty())
            .expect("the test builds a valid request");
        assert_eq!(send(&app.admin, request).await.status, StatusCode::OK);
    }
    // Without a token (the default, on loopback), the admin endpoints are open.
    assert_eq!(
        spawn_app().await.get_admin("/metrics").await.status,
        StatusCode::OK
    );
}

#[test]
fn a_non_loopback_admin_listener_needs_a_token() {
    let mut settings = Settings::default();
    settings.admin.listen = "0.0.0.0:9090".parse().expect("an address");
    let message = settings
        .validate()
        .expect_err("an exposed admin listener without a token is refused")
        .to_string();
    assert!(message.contains("admin.token"), "{message}");
    assert!(message.contains("0.0.0.0:9090"), "{message}");
    assert!(message.contains("BATON_ADMIN__TOKEN"), "{message}");
    settings.admin.token = Some(secret("a-long-random-token"));
    settings.validate().expect("with a token it is accepted");
    // Off, it needs nothing.
    settings.admin.token = None;
    settings.admin.enabled = false;
    settings
        .validate()
        .expect("a disabled admin listener needs no token");
}
