//! How fast is the client itself? Runs each mode for a few seconds against an in-process hyper
//! "hello" server on loopback and prints the reports.
//!
//! `cargo run --release -p loadgen --example selfcheck [seconds] [connections]`
//!
//! With `serve` as the only argument it just serves (printing its address) for 60 s, so another
//! load tool can be compared against the same server.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use loadgen::{LoadConfig, Mode};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    let serve_only = args.next_if(|arg| arg == "serve").is_some();
    let seconds = args.next().and_then(|s| s.parse().ok()).unwrap_or(3);
    let connections = args.next().and_then(|s| s.parse().ok()).unwrap_or(16);

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(|_| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello\n"))))
                });
                // Serves HTTP/1.1 and h2c on the same port, like baton.
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });

    if serve_only {
        println!("serving on http://{addr}/ for 60 s");
        tokio::time::sleep(Duration::from_secs(60)).await;
        server.abort();
        return Ok(());
    }

    for mode in [Mode::KeepAlive, Mode::Close, Mode::H2] {
        let load = loadgen::start(LoadConfig {
            mode,
            connections,
            max_duration: Duration::from_secs(seconds),
            ..LoadConfig::new(addr)
        });
        println!("{}\n", load.wait().await);
    }
    server.abort();
    Ok(())
}
