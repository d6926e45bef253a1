//! One request with std's blocking socket, for tests and tools that have no async runtime.
//!
//! A deliberately small HTTP/1.1 client: one `GET` (or a `POST` of JSON, or a `DELETE`) with
//! `Connection: close`, the response framed by `Content-Length`, chunked encoding or end of
//! stream. It reports failures with the same [`Failure`] kinds as the async client.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::Response;
use crate::failure::{self, Failure};

/// A response larger than this is refused rather than buffered: the helper is for status and
/// small bodies.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// How many response headers are parsed; more is a protocol error.
const MAX_HEADERS: usize = 100;

/// `GET path` over a fresh blocking TCP connection with `Connection: close`; `timeout` bounds the
/// connect and the full response together. Never retries.
///
/// Returns the response whatever its status, like [`get`](crate::get).
///
/// # Errors
///
/// The same kinds as [`get_with_timeout`](crate::get_with_timeout): [`Failure::Connect`],
/// [`Failure::Timeout`], [`Failure::Reset`], [`Failure::EarlyClose`] (including a response cut
/// short of its `Content-Length` or last chunk), [`Failure::Protocol`] (not HTTP, or over 16 MiB),
/// [`Failure::Other`] for an invalid `path`.
pub fn get_blocking(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Response, Failure> {
    request_blocking(addr, "GET", path, None, timeout)
}

/// `POST path` with the JSON `body`, otherwise as [`get_blocking`].
///
/// # Errors
///
/// As [`get_blocking`].
pub fn post_json_blocking(
    addr: SocketAddr,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Result<Response, Failure> {
    request_blocking(addr, "POST", path, Some(body), timeout)
}

/// `DELETE path`, otherwise as [`get_blocking`].
///
/// # Errors
///
/// As [`get_blocking`].
pub fn delete_blocking(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<Response, Failure> {
    request_blocking(addr, "DELETE", path, None, timeout)
}

fn request_blocking(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<Response, Failure> {
    if !path.starts_with('/') || path.bytes().any(|byte| byte.is_ascii_whitespace()) {
        return Err(Failure::Other(format!(
            "invalid request path {path:?}: it must start with '/' and contain no whitespace"
        )));
    }
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|err| Failure::Connect(format!("{addr}: {err}")))?;
    // Only latency is at stake if this fails, so it is not an error.
    let _ = stream.set_nodelay(true);

    let content = match body {
        Some(body) => format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
        None => "\r\n".to_owned(),
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n{content}"
    );
    stream
        .set_write_timeout(Some(remaining(deadline)?))
        .map_err(|err| Failure::Other(format!("set write timeout: {err}")))?;
    stream
        .write_all(request.as_bytes())
        .map_err(|err| failure::from_io(&err))?;

    let mut received = Vec::with_capacity(4096);
    let mut chunk = [0_u8; 16 * 1024];
    loop {
        stream
            .set_read_timeout(Some(remaining(deadline)?))
            .map_err(|err| Failure::Other(format!("set read timeout: {err}")))?;
        match stream.read(&mut chunk) {
            Ok(0) => {
                return parse(&received, true)?.ok_or_else(|| {
                    Failure::EarlyClose("the response ended before it was complete".to_owned())
                });
            }
            Ok(read) => {
                received.extend_from_slice(&chunk[..read]);
                if received.len() > MAX_RESPONSE_BYTES {
                    return Err(Failure::Protocol(format!(
                        "response larger than {MAX_RESPONSE_BYTES} bytes"
                    )));
                }
                // The server may keep the connection open despite `Connection: close`; a framed
                // response is complete without waiting for the end of the stream.
                if let Some(response) = parse(&received, false)? {
                    return Ok(response);
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(failure::from_io(&err)),
        }
    }
}

/// Time left until `deadline`, or [`Failure::Timeout`] if none (std rejects a zero timeout).
fn remaining(deadline: Instant) -> Result<Duration, Failure> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(Failure::Timeout)
    } else {
        Ok(left)
    }
}

/// Parses what was received so far: `Ok(None)` if more bytes are needed (and may still come);
/// at the end of the stream (`eof`), a missing part is [`Failure::EarlyClose`].
fn parse(received: &[u8], eof: bool) -> Result<Option<Response>, Failure> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Response::new(&mut headers);
    let head_len = match head.parse(received) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if eof => {
            return Err(Failure::EarlyClose(if received.is_empty() {
                "connection closed without a response".to_owned()
            } else {
                "connection closed inside the response head".to_owned()
            }));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(err) => return Err(Failure::Protocol(format!("invalid response head: {err}"))),
    };
    let status = head.code.unwrap_or_default();
    if (100..200).contains(&status) {
        // An interim response (e.g. 103 Early Hints): the real one follows it.
        return parse(&received[head_len..], eof);
    }
    let headers: Vec<(String, String)> = head
        .headers
        .iter()
        .map(|header| {
            let value = String::from_utf8_lossy(header.value).into_owned();
            (header.name.to_ascii_lowercase(), value)
        })
        .collect();
    let rest = &received[head_len..];

    let body = if status == 204 || status == 304 {
        Some(Vec::new())
    } else if is_chunked(&headers) {
        decode_chunked(rest)?
    } else if let Some(length) = content_length(&headers)? {
        (rest.len() >= length).then(|| rest[..length].to_vec())
    } else if eof {
        // Neither length nor chunks: the body is everything until the server closed.
        Some(rest.to_vec())
    } else {
        None
    };
    match body {
        Some(body) => Ok(Some(Response {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            tls: None,
        })),
        None if eof => Err(Failure::EarlyClose(
            "connection closed inside the response body".to_owned(),
        )),
        None => Ok(None),
    }
}

fn is_chunked(headers: &[(String, String)]) -> bool {
    headers
        .iter()
        .filter(|(name, _)| name == "transfer-encoding")
        .flat_map(|(_, value)| value.split(','))
        .last()
        .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"))
}

fn content_length(headers: &[(String, String)]) -> Result<Option<usize>, Failure> {
    let Some((_, value)) = headers.iter().find(|(name, _)| name == "content-length") else {
        return Ok(None);
    };
    value
        .trim()
        .parse()
        .map(Some)
        .map_err(|_| Failure::Protocol(format!("invalid Content-Length {value:?}")))
}

/// Decodes a chunked body: `Ok(None)` if the last chunk has not arrived yet.
fn decode_chunked(mut data: &[u8]) -> Result<Option<Vec<u8>>, Failure> {
    let mut body = Vec::new();
    loop {
        let Some((line, rest)) = split_line(data) else {
            return Ok(None);
        };
        let size_text = String::from_utf8_lossy(line);
        // Chunk extensions (";name=value") carry nothing we need.
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| Failure::Protocol(format!("invalid chunk size {size_text:?}")))?;
        data = rest;
        if size == 0 {
            // Trailer fields, then an empty line.
            loop {
                let Some((line, rest)) = split_line(data) else {
                    return Ok(None);
                };
                data = rest;
                if line.is_empty() {
                    return Ok(Some(body));
                }
            }
        }
        let Some(chunk_end) = size.checked_add(2).filter(|&end| end <= data.len()) else {
            return Ok(None);
        };
        if &data[size..chunk_end] != b"\r\n" {
            return Err(Failure::Protocol("chunk not followed by CRLF".to_owned()));
        }
        body.extend_from_slice(&data[..size]);
        data = &data[chunk_end..];
    }
}

/// Splits off one CRLF-terminated line, or `None` if the CRLF has not arrived yet.
fn split_line(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = data.windows(2).position(|pair| pair == b"\r\n")?;
    Some((&data[..end], &data[end + 2..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(raw: &str) -> Response {
        parse(raw.as_bytes(), false)
            .expect("valid response")
            .expect("complete response")
    }

    #[test]
    fn content_length_frames_the_body() {
        let response = complete("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello");
        assert_eq!(response.status, 200);
        assert_eq!(response.body, "hello");
        assert_eq!(response.header("x-a"), Some("b"));
        let cut = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel";
        assert!(matches!(parse(cut.as_bytes(), false), Ok(None)));
        assert!(matches!(
            parse(cut.as_bytes(), true),
            Err(Failure::EarlyClose(_))
        ));
    }

    #[test]
    fn chunked_bodies_are_decoded() {
        let raw = "HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n\
                   4;ext=1\r\ndrai\r\n5\r\nning\n\r\n0\r\nX-Trailer: t\r\n\r\n";
        let response = complete(raw);
        assert_eq!(response.status, 503);
        assert_eq!(response.body, "draining\n");
        let unfinished = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n";
        assert!(matches!(parse(unfinished.as_bytes(), false), Ok(None)));
        assert!(matches!(
            parse(unfinished.as_bytes(), true),
            Err(Failure::EarlyClose(_))
        ));
        let bad = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert!(matches!(
            parse(bad.as_bytes(), false),
            Err(Failure::Protocol(_))
        ));
    }

    #[test]
    fn unframed_bodies_end_at_eof_and_interim_responses_are_skipped() {
        let raw = "HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 200 OK\r\n\r\nall of it";
        assert!(matches!(parse(raw.as_bytes(), false), Ok(None)));
        let response = parse(raw.as_bytes(), true)
            .expect("valid")
            .expect("complete at eof");
        assert_eq!(
            (response.status, response.body.as_str()),
            (200, "all of it")
        );
    }

    #[test]
    fn garbage_and_silence_are_classified() {
        assert!(matches!(parse(b"", true), Err(Failure::EarlyClose(_))));
        assert!(matches!(
            parse(b"HTTP/1.1 2", true),
            Err(Failure::EarlyClose(_))
        ));
        assert!(matches!(
            parse(b"SSH-2.0-x\r\n\r\n", false),
            Err(Failure::Protocol(_))
        ));
    }
}
