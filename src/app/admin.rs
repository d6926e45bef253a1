//! The admin endpoints: `GET /-/status` (JSON, for people and monitoring; `baton status` reads the
//! state file instead, so it works with the admin listener off) and
//! `GET /metrics` (Prometheus text format 0.0.4, from the registry in `metrics`). With
//! `admin.token` set, every admin request must carry it ([`authorize`]).

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::error::AppError;
use super::extract::bearer_matches;
use super::metrics::CONTENT_TYPE;
use super::state::AppState;
use crate::database::DbStatus;
use crate::lifecycle::{
    DrainRecord, DrainingRecord, ListenerInfo, Phase, Predecessor, UpgradeRecord,
    draining_generations,
};
use crate::settings::ReloadRecord;
use crate::tls::Summary;

#[derive(Debug, Serialize)]
pub(crate) struct Status {
    version: &'static str,
    pid: u32,
    generation: u64,
    phase: Phase,
    /// RFC 3339, UTC, whole seconds.
    started_at: String,
    uptime_seconds: u64,
    config_generation: u64,
    last_reload: Option<ReloadRecord>,
    reloads: Counts,
    last_upgrade: Option<UpgradeRecord>,
    /// This process's own attempts; `baton_upgrades_total` counts since the first generation.
    upgrades: UpgradeCounts,
    /// This process's last drain; one that is over shows in the next generation's `/metrics`.
    last_drain: Option<DrainRecord>,
    listeners: Vec<ListenerInfo>,
    open_connections: usize,
    /// WebSockets and event streams in progress.
    open_long_lived: usize,
    /// The generations still draining (this one too, if it is), oldest first.
    draining: Vec<DrainingRecord>,
    /// The generation this one replaced, once it drained: the upgrade's times and its drain.
    previous: Option<Predecessor>,
    database: DbStatus,
    /// `null` when the public listener speaks plain HTTP.
    tls: Option<TlsStatus>,
}

#[derive(Debug, Serialize)]
struct TlsStatus {
    certificate: Summary,
    handshakes: Handshakes,
}

/// TLS handshakes on the public listener since this process started.
#[derive(Debug, Serialize)]
struct Handshakes {
    full: u64,
    resumed: u64,
    /// By reason: timeout, closed, alert, incompatible, protocol, other.
    failed: std::collections::BTreeMap<&'static str, u64>,
}

#[derive(Debug, Serialize)]
struct Counts {
    ok: u64,
    failed: u64,
}

#[derive(Debug, Serialize)]
struct UpgradeCounts {
    ok: u64,
    failed: u64,
    /// Handed over, then taken back because the new generation died during its probation.
    rolled_back: u64,
    refused: u64,
}

/// Lets a request through when `admin.token` is unset or the request carries it. Read per
/// request, so a reload that sets or rotates the token applies at once.
pub(crate) async fn authorize(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let settings = state.settings().current();
    match &settings.admin.token {
        Some(token) if !bearer_matches(request.headers(), token.expose()) => {
            AppError::AdminUnauthorized.into_response()
        }
        _ => next.run(request).await,
    }
}

pub(crate) async fn status(State(state): State<AppState>) -> Json<Status> {
    let process = state.process();
    let store = state.settings();
    // A few small files next to the pid file: no need to leave the runtime's thread for it.
    let draining = draining_generations(&store.current().lifecycle.pid_file);
    let started_at = process.started_at();
    Json(Status {
        version: process.version(),
        pid: process.pid(),
        generation: process.generation(),
        phase: process.phase(),
        started_at: humantime::format_rfc3339_seconds(started_at).to_string(),
        // A clock stepped back before the start time reads as 0, not an error.
        uptime_seconds: started_at.elapsed().unwrap_or_default().as_secs(),
        config_generation: store.generation(),
        last_reload: store.last_reload(),
        reloads: Counts {
            ok: store.reloads_ok(),
            failed: store.reloads_failed(),
        },
        last_upgrade: process.last_upgrade(),
        upgrades: UpgradeCounts {
            ok: process.upgrades_ok(),
            failed: process.upgrades_failed(),
            rolled_back: process.upgrades_rolled_back(),
            refused: process.upgrades_refused(),
        },
        last_drain: process.last_drain(),
        listeners: process.listeners(),
        open_connections: process.open_connections(),
        open_long_lived: process.open_long_lived(),
        draining,
        previous: process.predecessor(),
        database: state.db().status(),
        tls: state.tls().map(|tls| {
            let counts = tls.handshakes();
            TlsStatus {
                certificate: tls.certificate(),
                handshakes: Handshakes {
                    full: counts.full(),
                    resumed: counts.resumed(),
                    failed: counts
                        .failed()
                        .into_iter()
                        .map(|(failure, n)| (failure.label(), n))
                        .collect(),
                },
            }
        }),
    })
}

pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let mut response = state.metrics().render().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}
