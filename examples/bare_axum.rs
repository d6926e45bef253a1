//! The benchmark's baseline: axum's hello world with none of the template's layers.
//!
//! `examples/bench` starts it next to baton and drives both with the same load, so the cost of
//! the template (settings snapshot, timeout, metrics, trace span, drain hooks) shows as a ratio.
//!
//! ```text
//! cargo build --release --example bare_axum
//! target/release/examples/bare_axum [ADDR] [--nodelay]    # default 127.0.0.1:0
//! ```
//!
//! `--nodelay` sets TCP_NODELAY on each connection, as baton does (nginx and Go's net/http do
//! too: with Nagle's algorithm a streamed body's or WebSocket's second small write can wait
//! for the client's delayed ACK). `axum::serve` leaves Nagle on, and on loopback that is
//! cheaper per request in the kernel, so `speed` measures both (BENCHMARKS.md, issue 16).
//!
//! It prints `listening on <addr>` on stdout once it accepts, then serves until it is killed.
//! The serve future runs inside `tokio::spawn` rather than on the thread that calls `block_on`:
//! measured here, driving it from `block_on` is 15-20 % slower (DESIGN.md section 7), and the
//! baseline should be the fastest plain axum, not a handicapped one.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use axum::Router;
use axum::routing::get;
use axum::serve::ListenerExt;

fn main() -> ExitCode {
    let addr = match std::env::args()
        .nth(1)
        .as_deref()
        .map(str::parse::<SocketAddr>)
    {
        None => SocketAddr::from(([127, 0, 0, 1], 0)),
        Some(Ok(addr)) => addr,
        Some(Err(err)) => {
            eprintln!("bare_axum: the argument must be an address such as 127.0.0.1:8080: {err}");
            return ExitCode::from(2);
        }
    };
    // Same runtime as baton's default (`server.worker_threads = 0`): one worker per core.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("bare_axum: cannot start the tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let nodelay = std::env::args().nth(2).as_deref() == Some("--nodelay");
    match runtime.block_on(serve(addr, nodelay)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bare_axum: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(addr: SocketAddr, nodelay: bool) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new().route("/", get(|| async { "Hello" }));
    let server = if nodelay {
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move { axum::serve(listener, app).await })
    } else {
        tokio::spawn(async move { axum::serve(listener, app).await })
    };
    // The bench reads this line to learn the port; flush so it does not sit in a pipe buffer.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {local}")?;
    stdout.flush()?;
    drop(stdout);
    server.await.map_err(std::io::Error::other)?
}
