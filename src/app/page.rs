//! Keyset pagination for list endpoints: `?limit=N&after=ID`, a bounded page size, and the next
//! page's address in a `Link: <...>; rel="next"` header (RFC 8288, as GitHub's API does), so the
//! body stays a plain JSON array.
//!
//! Bounded pages are the point: a list endpoint that returns everything hands each client a
//! response as large as the data set, which a slow reader then pins in memory.

use axum::http::HeaderValue;
use axum::http::header::LINK;
use axum::response::{IntoResponseParts, ResponseParts};
use serde::Deserialize;

use super::error::AppError;

/// Items per page when the client does not say (or `app.items_limit`, if that is lower).
pub(crate) const DEFAULT_LIMIT: usize = 50;

/// The query of a list request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PageQuery {
    limit: Option<usize>,
    /// The id of the last item of the previous page.
    after: Option<u64>,
}

/// A page request, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Page {
    pub(crate) limit: usize,
    pub(crate) after: Option<u64>,
}

impl Page {
    /// The page a query asks for, at most `max` items (`app.items_limit`, read per request).
    pub(crate) fn new(query: PageQuery, max: usize) -> Result<Page, AppError> {
        let limit = query.limit.unwrap_or(DEFAULT_LIMIT.min(max));
        if !(1..=max).contains(&limit) {
            return Err(AppError::Invalid(format!(
                "limit must be between 1 and {max} (app.items_limit), got {limit}"
            )));
        }
        Ok(Page {
            limit,
            after: query.after,
        })
    }
}

/// The `Link` header to the page after the one served, when there is one.
#[derive(Debug)]
pub(crate) struct NextPage {
    pub(crate) path: &'static str,
    pub(crate) limit: usize,
    /// The id of the last item served, when more items follow it.
    pub(crate) after: Option<u64>,
}

impl IntoResponseParts for NextPage {
    type Error = std::convert::Infallible;

    fn into_response_parts(self, mut parts: ResponseParts) -> Result<ResponseParts, Self::Error> {
        let link = self.after.and_then(|after| {
            let link = format!(
                "<{}?limit={}&after={after}>; rel=\"next\"",
                self.path, self.limit
            );
            // Digits and ASCII punctuation only: always a valid header value.
            HeaderValue::from_str(&link).ok()
        });
        if let Some(link) = link {
            parts.headers_mut().insert(LINK, link);
        }
        Ok(parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_bounded_and_defaults() {
        let page = |limit, max| Page::new(PageQuery { limit, after: None }, max);
        assert_eq!(page(None, 100).ok().map(|p| p.limit), Some(DEFAULT_LIMIT));
        assert_eq!(page(None, 7).ok().map(|p| p.limit), Some(7));
        assert_eq!(page(Some(100), 100).ok().map(|p| p.limit), Some(100));
        assert!(page(Some(0), 100).is_err());
        assert!(page(Some(101), 100).is_err());
    }
}
