//! A fully read HTTP response, as the one-shot helpers return it.

use crate::{Failure, TlsInfo};

/// A complete response: status, headers and the whole body.
///
/// The one-shot helpers return a `Response` for every status, so a test can assert on a 503
/// body; call [`Response::error_for_status`] to treat non-2xx as a [`Failure::Status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code, e.g. 200.
    pub status: u16,
    /// The headers in the order received; names are lowercase, values decoded lossily as UTF-8.
    pub headers: Vec<(String, String)>,
    /// The body, decoded lossily as UTF-8 (chunked encoding already removed).
    pub body: String,
    /// What the TLS handshake agreed on; `None` over plain TCP.
    pub tls: Option<TlsInfo>,
}

impl Response {
    /// The first value of the header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// Whether the server said it closes the connection after this response
    /// (`Connection: close`).
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|value| says_close(value.as_bytes()))
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The response itself if its status is 2xx, else [`Failure::Status`].
    ///
    /// # Errors
    ///
    /// [`Failure::Status`] with the status code when it is outside 2xx.
    pub fn error_for_status(self) -> Result<Self, Failure> {
        if self.is_success() {
            Ok(self)
        } else {
            Err(Failure::Status(self.status))
        }
    }
}

/// Whether a `Connection` header value carries the `close` token.
pub(crate) fn says_close(value: &[u8]) -> bool {
    value
        .split(|&byte| byte == b',')
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lookup_is_case_insensitive() {
        let response = Response {
            status: 503,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: String::new(),
            tls: None,
        };
        assert_eq!(response.header("Content-Type"), Some("text/plain"));
        assert_eq!(response.header("x-missing"), None);
        assert!(!response.closes());
        let closing = Response {
            headers: vec![("connection".into(), "keep-alive, Close".into())],
            ..response.clone()
        };
        assert!(closing.closes());
        assert_eq!(response.error_for_status(), Err(Failure::Status(503)));
    }

    #[test]
    fn close_token_is_found_in_lists() {
        assert!(says_close(b"close"));
        assert!(says_close(b"keep-alive, Close"));
        assert!(!says_close(b"keep-alive"));
        assert!(!says_close(b"closed"));
    }
}
