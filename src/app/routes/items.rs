//! `/api/items`: a resource kept in the database, showing the template's patterns: a
//! repository (no SQL here), a validated JSON body and query, an auth extractor, a limit read
//! from the live settings, a paginated list (`app::page`), and errors through [`AppError`].
//! Replace it with your own resource.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::app::error::AppError;
use crate::app::extract::{AppJson, AppPath, AppQuery, Authorized, CurrentSettings};
use crate::app::page::{NextPage, Page, PageQuery};
use crate::app::repository::Item;
use crate::app::state::AppState;

/// Longest accepted name, in characters.
const MAX_NAME_CHARS: usize = 200;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewItem {
    name: String,
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

/// Ids are `u64` in the API and `i64` in the database; one beyond `i64` names no item.
fn db_id(id: u64) -> Option<i64> {
    i64::try_from(id).ok()
}

/// `GET /api/items?limit=N&after=ID`: a page of items by id (at most `app.items_limit`), and a
/// `Link` to the next one when more items follow.
pub(crate) async fn list(
    State(state): State<AppState>,
    CurrentSettings(settings, _): CurrentSettings,
    AppQuery(query): AppQuery<PageQuery>,
) -> Result<(NextPage, Json<Vec<Item>>), AppError> {
    let page = Page::new(query, settings.app.items_limit)?;
    // Past the last possible id: an empty page, not an error.
    let after = page
        .after
        .map_or(0, |after| db_id(after).unwrap_or(i64::MAX));
    // One more than the page: whether it is there says whether a next page exists.
    let fetch = u32::try_from(page.limit.saturating_add(1)).unwrap_or(u32::MAX);
    let mut items: Vec<Item> = state.items().page(after, fetch).await?;
    let more = items.len() > page.limit;
    items.truncate(page.limit);
    let next = NextPage {
        path: "/api/items",
        limit: page.limit,
        after: more
            .then(|| items.last().and_then(|item| u64::try_from(item.id).ok()))
            .flatten(),
    };
    Ok((next, Json(items)))
}

pub(crate) async fn show(
    State(state): State<AppState>,
    AppPath(id): AppPath<u64>,
) -> Result<Json<Item>, AppError> {
    let Some(db_id) = db_id(id) else {
        return Err(not_found(id));
    };
    state
        .items()
        .get(db_id)
        .await?
        .map(Json)
        .ok_or_else(|| not_found(id))
}

/// `201 Created` with the item and its `Location`. `Authorized` comes before the body, so an
/// unauthorised request is refused without reading it.
pub(crate) async fn create(
    State(state): State<AppState>,
    _auth: Authorized,
    AppJson(new): AppJson<NewItem>,
) -> Result<Response, AppError> {
    validate_name(&new.name)?;
    let item = state.items().create(&new.name).await?;
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
    let deleted = match db_id(id) {
        Some(db_id) => state.items().delete(db_id).await?,
        None => false,
    };
    if deleted {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found(id))
    }
}
