//! The state every handler shares: the live settings, the process lifecycle, the request
//! counters and the demo item store.

use std::sync::Arc;

use crate::lifecycle::ProcessState;
use crate::settings::SettingsStore;

use super::metrics::RequestCounters;
use super::routes::items::ItemStore;

/// Everything a handler may need. Cheap to clone: axum clones it for every request that
/// extracts it, so all of it sits behind one `Arc`.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Read once per request (see `middleware::apply_settings`), never held across requests,
    /// so a reload takes effect at the next request.
    settings: Arc<SettingsStore>,
    /// Phase and drain signal: `/readyz` and long responses (SSE) follow the drain through it.
    process: ProcessState,
    requests: RequestCounters,
    items: ItemStore,
}

impl AppState {
    pub fn new(settings: Arc<SettingsStore>, process: ProcessState) -> Self {
        AppState {
            inner: Arc::new(Inner {
                settings,
                process,
                requests: RequestCounters::default(),
                items: ItemStore::default(),
            }),
        }
    }

    pub(crate) fn settings(&self) -> &SettingsStore {
        &self.inner.settings
    }

    pub(crate) fn process(&self) -> &ProcessState {
        &self.inner.process
    }

    pub(crate) fn requests(&self) -> &RequestCounters {
        &self.inner.requests
    }

    pub(crate) fn items(&self) -> &ItemStore {
        &self.inner.items
    }
}
