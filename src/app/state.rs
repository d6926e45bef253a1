//! The state every handler shares: the live settings, the process lifecycle, the database, the
//! metrics and the public listener's TLS.

use std::sync::Arc;

use crate::database::Db;
use crate::lifecycle::{LongLived, ProcessState};
use crate::settings::SettingsStore;
use crate::tls::Tls;

use super::metrics::Metrics;
use super::repository::Items;

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
    /// The pools in force; a handler reaches them through a repository (`items()`).
    db: Db,
    /// The registry behind `/metrics`, with the totals that cross to the next generation.
    metrics: Metrics,
    /// The public listener's TLS, when on: its certificate and handshake counts are shown by
    /// the admin endpoints, its ticket keys handed to the next generation.
    tls: Option<Arc<Tls>>,
}

impl AppState {
    pub fn new(
        settings: Arc<SettingsStore>,
        process: ProcessState,
        db: Db,
        tls: Option<Arc<Tls>>,
    ) -> Self {
        AppState {
            inner: Arc::new(Inner {
                metrics: Metrics::new(settings.clone(), process.clone(), db.clone(), tls.clone()),
                settings,
                process,
                db,
                tls,
            }),
        }
    }

    pub(crate) fn settings(&self) -> &SettingsStore {
        &self.inner.settings
    }

    /// A lease for a long-lived response (see `app`'s docs), with the lifetime in force now.
    pub(crate) fn long_lived(&self) -> LongLived {
        let lifetime = self.settings().current().limits.stream_lifetime;
        self.process().long_lived(lifetime)
    }

    pub(crate) fn process(&self) -> &ProcessState {
        &self.inner.process
    }

    pub(crate) fn db(&self) -> &Db {
        &self.inner.db
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The items, on the pools in force now (kept for this request even if a reload swaps them).
    pub(crate) fn items(&self) -> Items {
        Items::new(self.inner.db.pools())
    }

    pub(crate) fn tls(&self) -> Option<&Tls> {
        self.inner.tls.as_deref()
    }
}
