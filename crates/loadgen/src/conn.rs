//! One client connection (HTTP/1.1 or HTTP/2, plain or over TLS) and one request on it, with
//! "never sent" told apart from "sent and lost".
//!
//! That distinction decides whether a closed connection is a clean reconnect or a failed request,
//! so it comes from the protocol libraries' own knowledge, never from timing:
//! - HTTP/1.1 uses hyper's `try_send_request`, which hands a request back only if none of it was
//!   written to the socket.
//! - HTTP/2 uses h2 directly: `SendRequest::ready` and `send_request` fail synchronously, before
//!   a stream exists, when the connection has had a GOAWAY or is gone. (hyper's http2 client
//!   reports that case like a lost stream, which would count a clean reconnect as a failure.)

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{HeaderMap, Method, Request, Uri, Version};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::failure::{self, Failure};
use crate::goaway::{self, LastStream};
use crate::response::{Response, says_close};
use crate::tls::{Tls, TlsInfo};

/// The protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    /// h2c with prior knowledge, or h2 by ALPN over TLS.
    Http2,
}

/// Where requests go and what they ask for, validated once.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    addr: SocketAddr,
    /// `/path?query`, for HTTP/1.1.
    origin_form: Uri,
    /// `http(s)://addr/path?query`, for HTTP/2 (`:scheme` and `:authority` come from it).
    absolute: Uri,
    host: HeaderValue,
    tls: Option<Tls>,
}

impl Target {
    /// Validates `path` (it must start with `/` and be a valid URI path and query).
    pub(crate) fn new(addr: SocketAddr, path: &str, tls: Option<Tls>) -> Result<Self, Failure> {
        let invalid = |reason: String| {
            Failure::Other(format!(
                "invalid request path {path:?}: {reason}; give a path such as \"/\" or \"/healthz\""
            ))
        };
        if !path.starts_with('/') {
            return Err(invalid("it must start with '/'".to_owned()));
        }
        let origin_form: Uri = path.parse().map_err(|err| invalid(format!("{err}")))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let absolute: Uri = format!("{scheme}://{addr}{path}")
            .parse()
            .map_err(|err| invalid(format!("{err}")))?;
        let host =
            HeaderValue::try_from(addr.to_string()).map_err(|err| invalid(err.to_string()))?;
        Ok(Self {
            addr,
            origin_form,
            absolute,
            host,
            tls,
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Why a request did not produce a response.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The connection was closed before any byte of the request was written: the server never saw
    /// it, so the caller may send it on a new connection without that being a retry.
    NotSent,
    /// The server said it did not process this HTTP/2 request: its stream is above the GOAWAY's
    /// last stream id, or was reset with `REFUSED_STREAM`. It may be sent again on a new
    /// connection (RFC 9113 §8.7), and is counted as such.
    Refused,
    /// The request was (at least partly) written and no full response came back.
    Failed(Failure),
}

/// A full response with its body read to the end.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// The server announced it closes this connection after the response (HTTP/1.1 only).
    pub(crate) closes: bool,
}

impl Reply {
    pub(crate) fn into_response(self, tls: Option<TlsInfo>) -> Response {
        let reply = self;
        let headers = reply
            .headers
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect();
        Response {
            status: reply.status,
            headers,
            body: String::from_utf8_lossy(&reply.body).into_owned(),
            tls,
        }
    }
}

/// An open connection of either protocol. Dropping it closes the socket.
#[derive(Debug)]
pub(crate) struct Connection {
    kind: Kind,
    /// What the TLS handshake agreed on; `None` for plain TCP.
    pub(crate) tls: Option<TlsInfo>,
}

#[derive(Debug)]
enum Kind {
    Http1(Http1),
    Http2(Http2),
}

impl Connection {
    /// Opens a TCP connection, does the TLS handshake if `target` asks for TLS, and starts the
    /// protocol on it. No timeout: callers bound it.
    pub(crate) async fn open(target: &Target, protocol: Protocol) -> Result<Self, Failure> {
        let addr = target.addr;
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|err| Failure::Connect(format!("{addr}: {err}")))?;
        // Requests are tiny; Nagle would only add latency to the measurements.
        stream
            .set_nodelay(true)
            .map_err(|err| Failure::Connect(format!("{addr}: set TCP_NODELAY: {err}")))?;
        let Some(tls) = &target.tls else {
            return Ok(Connection {
                kind: Kind::start(stream, protocol).await?,
                tls: None,
            });
        };
        let (stream, info) = tls
            .connect(addr, stream, protocol == Protocol::Http2)
            .await?;
        Ok(Connection {
            kind: Kind::start(stream, protocol).await?,
            tls: Some(info),
        })
    }

    /// Whether the connection is known to be closed (HTTP/1.1 only; for tests).
    #[cfg(test)]
    pub(crate) fn is_closed(&self) -> bool {
        match &self.kind {
            Kind::Http1(conn) => conn.sender.is_closed(),
            Kind::Http2(conn) => conn.sender.is_none(),
        }
    }

    /// Sends one request for `target` (a GET, or a POST of the JSON `body`) and reads the full
    /// response. `close` asks an HTTP/1.1 server to close the connection after answering. No
    /// timeout: callers bound it.
    pub(crate) async fn send(
        &mut self,
        target: &Target,
        close: bool,
        body: Option<Bytes>,
    ) -> Result<Reply, SendError> {
        match &mut self.kind {
            Kind::Http1(conn) => conn.send(target, close, body).await,
            Kind::Http2(conn) => conn.send(target, body).await,
        }
    }
}

/// A POST of JSON with `body`.
fn json_request<B>(body: B) -> Request<B> {
    let mut request = Request::new(body);
    *request.method_mut() = Method::POST;
    request
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    request
}

impl Kind {
    async fn start<I>(io: I, protocol: Protocol) -> Result<Kind, Failure>
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        match protocol {
            Protocol::Http1 => Http1::start(io).await.map(Kind::Http1),
            Protocol::Http2 => Http2::start(io).await.map(Kind::Http2),
        }
    }
}

/// A connection that the server accepted and then dropped before any request was written: the
/// same failure as a new connection closed before the request could be sent (not `Connect`, which
/// is for connections the server never accepted).
fn handshake_failed(err: &(dyn std::error::Error + 'static)) -> Failure {
    Failure::EarlyClose(format!(
        "the new connection failed before the request was written: {}",
        failure::chain(err)
    ))
}

/// The task driving a connection's I/O, stopped when the connection is dropped so that no socket
/// outlives the load run.
#[derive(Debug)]
struct Driver(JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An HTTP/1.1 connection (hyper's low-level client, which never retries).
#[derive(Debug)]
pub(crate) struct Http1 {
    sender: http1::SendRequest<Full<Bytes>>,
    _driver: Driver,
}

impl Http1 {
    async fn start<I>(stream: I) -> Result<Self, Failure>
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|err| handshake_failed(&err))?;
        // The connection's own error is also delivered to the request that was in flight, which
        // is where it is counted.
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self {
            sender,
            _driver: Driver(driver),
        })
    }

    async fn send(
        &mut self,
        target: &Target,
        close: bool,
        body: Option<Bytes>,
    ) -> Result<Reply, SendError> {
        // Fails only when the connection is already closed, before anything was written.
        self.sender.ready().await.map_err(|_| SendError::NotSent)?;

        let mut request = match body {
            Some(body) => json_request(Full::new(body)),
            None => Request::new(Full::new(Bytes::new())),
        };
        *request.uri_mut() = target.origin_form.clone();
        request.headers_mut().insert(HOST, target.host.clone());
        if close {
            request
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }

        let response = match self.sender.try_send_request(request).await {
            Ok(response) => response,
            Err(mut err) => {
                return Err(if err.take_message().is_some() {
                    SendError::NotSent
                } else {
                    SendError::Failed(failure::from_hyper(err.error()))
                });
            }
        };
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|err| SendError::Failed(failure::from_hyper(&err)))?
            .to_bytes();
        let closes = parts
            .headers
            .get_all(CONNECTION)
            .iter()
            .any(|value| says_close(value.as_bytes()))
            || parts.version == Version::HTTP_10;
        Ok(Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
            closes,
        })
    }
}

/// An HTTP/2 connection: without TLS ("h2c with prior knowledge"), or over TLS (ALPN h2).
#[derive(Debug)]
pub(crate) struct Http2 {
    /// `None` only after `ready` failed: the connection is unusable and will be dropped.
    sender: Option<h2::client::SendRequest<Bytes>>,
    /// The server's GOAWAY, read off the incoming frames.
    goaway: LastStream,
    _driver: Driver,
}

impl Http2 {
    async fn start<I>(stream: I) -> Result<Self, Failure>
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (stream, goaway) = goaway::Watched::new(stream);
        // Writes the connection preface, so it fails if the server already dropped the socket.
        let (sender, connection) = h2::client::handshake(stream)
            .await
            .map_err(|err| handshake_failed(&err))?;
        // As for HTTP/1.1, the connection's error reaches the open stream, which counts it.
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self {
            sender: Some(sender),
            goaway,
            _driver: Driver(driver),
        })
    }

    async fn send(&mut self, target: &Target, body: Option<Bytes>) -> Result<Reply, SendError> {
        let sender = self.sender.take().ok_or(SendError::NotSent)?;
        // Fails once a GOAWAY arrived or the connection is gone: no stream was opened.
        let mut sender = sender.ready().await.map_err(|_| SendError::NotSent)?;

        let mut request = match body {
            Some(_) => json_request(()),
            None => Request::new(()),
        };
        *request.uri_mut() = target.absolute.clone();
        *request.version_mut() = Version::HTTP_2;
        // Fails synchronously, before a stream exists, for the same reasons as `ready`.
        let (response, mut stream) = sender
            .send_request(request, body.is_none())
            .map_err(|_| SendError::NotSent)?;
        self.sender = Some(sender);
        if let Some(body) = body {
            // The stream exists now: the server may have seen the request.
            stream
                .send_data(body, true)
                .map_err(|err| SendError::Failed(failure::from_h2(&err)))?;
        }

        let stream_id = u32::from(response.stream_id());
        let response = response.await.map_err(|err| {
            let refused_stream = err.is_reset() && err.reason() == Some(h2::Reason::REFUSED_STREAM);
            let above_goaway = err.is_go_away() && self.goaway.refused(stream_id);
            if err.is_remote() && (refused_stream || above_goaway) {
                SendError::Refused
            } else {
                SendError::Failed(failure::from_h2(&err))
            }
        })?;
        let (parts, mut body) = response.into_parts();
        let mut collected = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|err| SendError::Failed(failure::from_h2(&err)))?;
            collected.extend_from_slice(&chunk);
            // Give the window back, or a body larger than the window stalls until the timeout.
            body.flow_control()
                .release_capacity(chunk.len())
                .map_err(|err| SendError::Failed(failure::from_h2(&err)))?;
        }
        Ok(Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: Bytes::from(collected),
            closes: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_rejects_relative_and_invalid_paths() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 8080));
        assert!(Target::new(addr, "/healthz?x=1", None).is_ok());
        assert!(matches!(
            Target::new(addr, "healthz", None),
            Err(Failure::Other(_))
        ));
        assert!(matches!(
            Target::new(addr, "/a b", None),
            Err(Failure::Other(_))
        ));
    }
}
