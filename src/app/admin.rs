//! The admin endpoints: `GET /-/status` (JSON, for people and monitoring; `baton status` reads the
//! state file instead, so it works with the admin listener off) and
//! `GET /metrics` (Prometheus text format 0.0.4).

use std::fmt::Write as _;
use std::time::UNIX_EPOCH;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::state::AppState;
use crate::lifecycle::{ListenerInfo, Phase, UpgradeRecord};
use crate::settings::{ReloadOutcome, ReloadRecord};

/// The Prometheus text exposition format, version 0.0.4.
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

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
    upgrades: Counts,
    listeners: Vec<ListenerInfo>,
    open_connections: usize,
}

#[derive(Debug, Serialize)]
struct Counts {
    ok: u64,
    failed: u64,
}

pub(crate) async fn status(State(state): State<AppState>) -> Json<Status> {
    let process = state.process();
    let store = state.settings();
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
        upgrades: Counts {
            ok: process.upgrades_ok(),
            failed: process.upgrades_failed(),
        },
        listeners: process.listeners(),
        open_connections: process.open_connections(),
    })
}

pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let mut response = render_metrics(&state).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE),
    );
    response
}

fn render_metrics(state: &AppState) -> String {
    let process = state.process();
    let store = state.settings();
    // Healthy until a reload is rejected: a fresh process has nothing to alert on.
    let last_reload_ok = match store.last_reload().map(|record| record.outcome) {
        Some(ReloadOutcome::Rejected { .. }) => 0,
        Some(ReloadOutcome::Applied { .. } | ReloadOutcome::Unchanged { .. }) | None => 1,
    };
    let start_time = process
        .started_at()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();

    let mut out = Metrics::default();
    out.family(
        "baton_requests_total",
        "counter",
        "Responses sent by the public listener, by status class.",
    );
    for (class, count) in state.requests().snapshot() {
        out.sample("baton_requests_total", &[("class", class)], count);
    }
    out.family(
        "baton_reloads_total",
        "counter",
        "Configuration reloads, by result (unchanged counts as ok).",
    );
    out.sample(
        "baton_reloads_total",
        &[("result", "ok")],
        store.reloads_ok(),
    );
    out.sample(
        "baton_reloads_total",
        &[("result", "failed")],
        store.reloads_failed(),
    );
    out.family(
        "baton_last_reload_success",
        "gauge",
        "1 if the last reload was applied or unchanged (or none happened yet), 0 if it was rejected.",
    );
    out.sample("baton_last_reload_success", &[], last_reload_ok);
    out.family(
        "baton_config_generation",
        "gauge",
        "Configuration generation in force: 1 at start, +1 per applied reload.",
    );
    out.sample("baton_config_generation", &[], store.generation());
    out.family(
        "baton_generation",
        "gauge",
        "Binary generation of this process: 1 at a fresh start, +1 per upgrade.",
    );
    out.sample("baton_generation", &[], process.generation());
    out.family(
        "baton_upgrades_total",
        "counter",
        "Binary upgrades started by this process, by result.",
    );
    out.sample(
        "baton_upgrades_total",
        &[("result", "ok")],
        process.upgrades_ok(),
    );
    out.sample(
        "baton_upgrades_total",
        &[("result", "failed")],
        process.upgrades_failed(),
    );
    out.family(
        "baton_open_connections",
        "gauge",
        "Connections open on the public and admin listeners.",
    );
    out.sample("baton_open_connections", &[], process.open_connections());
    out.family(
        "baton_start_time_seconds",
        "gauge",
        "Start time of this process, in seconds since the Unix epoch.",
    );
    out.sample("baton_start_time_seconds", &[], format!("{start_time:.3}"));
    out.family(
        "baton_build_info",
        "gauge",
        "Always 1; the version label identifies the build.",
    );
    out.sample("baton_build_info", &[("version", process.version())], 1);
    out.text
}

/// A Prometheus text writer: just enough of the format for the samples above.
#[derive(Default)]
struct Metrics {
    text: String,
}

impl Metrics {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // Writing to a `String` cannot fail.
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, label_value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"{}\"", escape_label(label_value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }
}

/// Label values escape backslash, double quote and newline (exposition format 0.0.4).
fn escape_label(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::escape_label;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("x\ny"), r"x\ny");
    }
}
