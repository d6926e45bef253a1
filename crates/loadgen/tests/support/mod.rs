//! Tiny loopback servers with known behaviour, good and broken, for the client to be tested
//! against.

#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

/// A running test server; dropping it stops accepting and closes its connections.
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Accepts connections and runs `handle` on each; the connection tasks live in a `JoinSet`
/// owned by the accept task, so aborting it ends them too.
pub async fn serve<F, Fut>(handle: F) -> Server
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let accept = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            connections.spawn(handle(stream));
            // Reap finished connections so the set does not grow over a long run.
            while connections.try_join_next().is_some() {}
        }
    });
    Server { addr, accept }
}

/// The HTTP version a hyper test server speaks.
#[derive(Debug, Clone, Copy)]
pub enum Proto {
    Http1,
    H2c,
}

type Handler = Arc<dyn Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync>;

/// A hyper server answering every request with `respond`.
pub async fn hyper_server(
    proto: Proto,
    respond: impl Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync + 'static,
) -> Server {
    let respond: Handler = Arc::new(respond);
    serve(move |stream| {
        let respond = Arc::clone(&respond);
        async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let response = respond(&request);
                async move { Ok::<_, Infallible>(response) }
            });
            let io = TokioIo::new(stream);
            let _ = match proto {
                Proto::Http1 => {
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await
                }
                Proto::H2c => {
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await
                }
            };
        }
    })
    .await
}

/// An h2c server that starts a graceful shutdown (GOAWAY) of each connection once it has
/// received `per_connection` requests, as a draining server does.
pub async fn h2_server_with_goaway_after(per_connection: u64) -> Server {
    serve(move |stream| async move {
        let received = Arc::new(AtomicU64::new(0));
        let limit_reached = Arc::new(Notify::new());
        let service = {
            let (received, limit_reached) = (Arc::clone(&received), Arc::clone(&limit_reached));
            service_fn(move |_request: Request<Incoming>| {
                if received.fetch_add(1, Ordering::Relaxed) + 1 == per_connection {
                    limit_reached.notify_one();
                }
                async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok")))) }
            })
        };
        let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
        tokio::select! {
            _ = connection.as_mut() => {}
            () = limit_reached.notified() => {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            }
        }
    })
    .await
}

/// `200 OK` with body `hello <path>`.
pub fn hello(request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let body = format!("hello {}", request.uri().path());
    Response::builder()
        .header("x-test", "yes")
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

/// Reads one request head (up to the blank line) from `stream`; false if the client closed
/// first.
pub async fn read_head(stream: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut buf = [0_u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(read) => head.extend_from_slice(&buf[..read]),
        }
    }
    true
}

/// Reads each request in full, then closes the connection without answering (a FIN: nothing
/// is left unread, so the kernel sends no RST).
pub async fn close_after_request() -> Server {
    serve(|mut stream| async move {
        if read_head(&mut stream).await {
            let _ = stream.shutdown().await;
        }
    })
    .await
}

/// Reads each request in full, then resets the connection (SO_LINGER 0).
pub async fn reset_after_request() -> Server {
    serve(|mut stream| async move {
        if read_head(&mut stream).await {
            stream.set_zero_linger().expect("SO_LINGER 0");
            drop(stream);
        }
    })
    .await
}

/// Closes every connection as soon as it is accepted, before reading anything.
pub async fn close_on_accept() -> Server {
    serve(|stream| async move { drop(stream) }).await
}

/// Reads each request and never answers (holds the connection for a minute).
pub async fn never_answer() -> Server {
    serve(|mut stream| async move {
        if read_head(&mut stream).await {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    })
    .await
}

/// Answers with a head promising 100 bytes, sends 5, then closes.
pub async fn truncated_body() -> Server {
    serve(|mut stream| async move {
        if read_head(&mut stream).await {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
                .await;
            let _ = stream.shutdown().await;
        }
    })
    .await
}

/// An address where nothing listens: bound, then released.
pub fn refused_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    listener.local_addr().expect("local addr")
}
