//! `GET /api/settings`: the application settings in force, read from one snapshot.

use axum::Json;
use serde::Serialize;

use crate::app::extract::CurrentSettings;

#[derive(Debug, Serialize)]
pub(crate) struct SettingsView {
    greeting: String,
    items_limit: usize,
    config_generation: u64,
}

/// All three fields come from the request's one snapshot, so two keys changed by
/// one reload are always seen together, never one old and one new.
pub(crate) async fn show(
    CurrentSettings(settings, config_generation): CurrentSettings,
) -> Json<SettingsView> {
    Json(SettingsView {
        greeting: settings.app.greeting.clone(),
        items_limit: settings.app.items_limit,
        config_generation,
    })
}
