//! `/api/items`: a small in-memory store showing the template's patterns: shared state, a
//! validated JSON body, an auth extractor, a limit read from the live settings, and errors
//! through [`AppError`]. Replace it with your own resource (and a database).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::app::error::AppError;
use crate::app::extract::{AppJson, AppPath, Authorized, CurrentSettings};
use crate::app::state::AppState;

/// Longest accepted name, in characters.
const MAX_NAME_CHARS: usize = 200;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Item {
    id: u64,
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewItem {
    name: String,
}

/// Items by id. A `std` mutex is right here: every critical section is a few map operations
/// and never awaits.
#[derive(Debug, Default)]
pub(crate) struct ItemStore {
    inner: Mutex<Items>,
}

#[derive(Debug, Default)]
struct Items {
    last_id: u64,
    by_id: BTreeMap<u64, Item>,
}

impl ItemStore {
    fn lock(&self) -> MutexGuard<'_, Items> {
        // A panic while holding the lock cannot leave a half-written map (each change is one
        // insert or remove), so a poisoned lock is still safe to use.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn list(&self) -> Vec<Item> {
        self.lock().by_id.values().cloned().collect()
    }

    fn get(&self, id: u64) -> Option<Item> {
        self.lock().by_id.get(&id).cloned()
    }

    /// Adds an item unless the store already holds `limit` items.
    fn insert(&self, name: String, limit: usize) -> Result<Item, AppError> {
        let mut items = self.lock();
        if items.by_id.len() >= limit {
            return Err(AppError::Conflict(format!(
                "the item store is full ({limit} items): delete some, or raise app.items_limit \
                 and reload"
            )));
        }
        items.last_id += 1;
        let item = Item {
            id: items.last_id,
            name,
        };
        items.by_id.insert(item.id, item.clone());
        Ok(item)
    }

    fn remove(&self, id: u64) -> Option<Item> {
        self.lock().by_id.remove(&id)
    }
}

fn validate_name(name: &str) -> Result<(), AppError> {
    if name.trim().is_empty() {
        return Err(AppError::Invalid("name must not be empty".to_owned()));
    }
    let chars = name.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(AppError::Invalid(format!(
            "name is {chars} characters long; the limit is {MAX_NAME_CHARS}"
        )));
    }
    Ok(())
}

fn not_found(id: u64) -> AppError {
    AppError::NotFound(format!("no item with id {id}"))
}

pub(crate) async fn list(State(state): State<AppState>) -> Json<Vec<Item>> {
    Json(state.items().list())
}

pub(crate) async fn show(
    State(state): State<AppState>,
    AppPath(id): AppPath<u64>,
) -> Result<Json<Item>, AppError> {
    state.items().get(id).map(Json).ok_or_else(|| not_found(id))
}

/// `201 Created` with the item and its `Location`. `Authorized` comes before the body, so an
/// unauthorised request is refused without reading it.
pub(crate) async fn create(
    State(state): State<AppState>,
    CurrentSettings(settings, _): CurrentSettings,
    _auth: Authorized,
    AppJson(new): AppJson<NewItem>,
) -> Result<Response, AppError> {
    validate_name(&new.name)?;
    let item = state.items().insert(new.name, settings.app.items_limit)?;
    let location = format!("/api/items/{}", item.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(item),
    )
        .into_response())
}

pub(crate) async fn delete(
    State(state): State<AppState>,
    _auth: Authorized,
    AppPath(id): AppPath<u64>,
) -> Result<StatusCode, AppError> {
    state
        .items()
        .remove(id)
        .map(|_| StatusCode::NO_CONTENT)
        .ok_or_else(|| not_found(id))
}
