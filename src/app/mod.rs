//! The HTTP application: the public router, the admin router and the state they share.
//!
//! INTERFACE SKELETON: signatures are fixed; bodies are being written.

use std::sync::Arc;

use axum::Router;

use crate::lifecycle::ProcessState;
use crate::settings::SettingsStore;

/// Everything a handler may need. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {}

impl AppState {
    pub fn new(settings: Arc<SettingsStore>, process: ProcessState) -> Self {
        let _ = (settings, process);
        unimplemented!()
    }
}

/// The public service: `/`, `/healthz`, `/readyz`, `/api/...`.
pub fn router(state: AppState) -> Router {
    let _ = state;
    unimplemented!()
}

/// The admin service: `/-/status`, `/metrics`.
pub fn admin_router(state: AppState) -> Router {
    let _ = state;
    unimplemented!()
}
