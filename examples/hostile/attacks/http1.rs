//! Attacks over HTTP/1.1: floods of silent connections, slow heads, clients that never read,
//! bodies too large, malformed requests, and the variants the server already held.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::{Ctx, Outcome, exchange, hold, open_many};

/// Items in the demo store for the attacks that want large responses, with names of 200
/// characters (the longest allowed): about 221 KB for the whole list.
pub(super) const ITEMS: usize = 1000;

/// Fills the demo store to [`ITEMS`] (or until it is full), on one kept-alive connection.
pub(super) async fn fill_store(addr: SocketAddr) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let body = format!("{{\"name\": \"{}\"}}", "n".repeat(200));
    let request = format!(
        "POST /api/items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    for _ in 0..ITEMS {
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        match read_response(&mut stream).await? {
            201 => {}
            // Full already (a previous attack filled it).
            409 => return Ok(()),
            status => return Err(format!("POST /api/items answered {status}")),
        }
    }
    Ok(())
}

/// Reads one response framed by `Content-Length`; returns its status.
async fn read_response(stream: &mut TcpStream) -> Result<u16, String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return Err("closed inside a response".to_owned()),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| "not an HTTP response".to_owned())
}

/// Silent connections past the server's fd limit, with a reload and an upgrade meanwhile.
pub(super) async fn idle_flood(ctx: &Ctx<'_>) -> Outcome {
    let streams = open_many(ctx.http, ctx.scale.flood).await;
    let holding = tokio::spawn(hold(streams, ctx.scale.past(ctx.scale.header_bound)));
    let (baton, dir) = (ctx.target.baton.clone(), ctx.target.dir.clone());
    let reload = cli(&baton, &dir, &["reload"]).await;
    let upgrade = cli(&baton, &dir, &["upgrade"]).await;
    let closures = holding.await.unwrap_or_default();
    let mut outcome = closures.bounded(&format!(
        "reload: {}; upgrade: {}; ",
        verdict(&reload),
        verdict(&upgrade)
    ));
    if let Err(err) = reload.and(upgrade) {
        outcome.lifecycle_failed = Some(err);
    }
    outcome
}

fn verdict(result: &Result<String, String>) -> &'static str {
    if result.is_ok() { "ok" } else { "FAILED" }
}

/// `baton ARGS` in the deployment directory, bounded in time.
async fn cli(baton: &PathBuf, dir: &PathBuf, args: &[&str]) -> Result<String, String> {
    let run = tokio::process::Command::new(baton)
        .args(args)
        .current_dir(dir)
        .output();
    match tokio::time::timeout(Duration::from_secs(60), run).await {
        Ok(Ok(output)) => {
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            let said = format!("baton {}: {}", args.join(" "), said.trim());
            if output.status.success() {
                Ok(said)
            } else {
                Err(said)
            }
        }
        Ok(Err(err)) => Err(format!("cannot run baton {}: {err}", args.join(" "))),
        Err(_) => Err(format!("baton {} took over 60 s", args.join(" "))),
    }
}

/// Request heads dribbled a byte every 500 ms.
pub(super) async fn slowloris(ctx: &Ctx<'_>) -> Outcome {
    let connections = if ctx.scale.short { 50 } else { 200 };
    let streams = open_many(ctx.http, connections).await;
    let opened = streams.len();
    let start = Instant::now();
    let mut dribblers = JoinSet::new();
    for stream in streams {
        dribblers.spawn(async move {
            let (mut read, mut write) = stream.into_split();
            let _ = write
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await;
            let dribble = async {
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if write.write_all(b"a").await.is_err() {
                        return;
                    }
                }
            };
            let mut buf = [0u8; 1024];
            let closed = async {
                while let Ok(n) = read.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                }
            };
            tokio::select! {
                () = dribble => {}
                () = closed => {}
            }
            start.elapsed().as_secs_f64()
        });
    }
    collect(dribblers, opened, ctx.scale.past(ctx.scale.header_bound))
        .await
        .bounded("")
}

/// Waits for the tasks that end when the server closes their connection, for at most `within`.
async fn collect(mut tasks: JoinSet<f64>, opened: usize, within: Duration) -> super::Closures {
    let mut after = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while let Ok(Some(Ok(secs))) = tokio::time::timeout_at(deadline, tasks.join_next()).await {
        after.push(secs);
    }
    tasks.abort_all();
    super::Closures { opened, after }
}

/// Clients that never read: pipelined requests for the largest page of items, and SSE streams.
pub(super) async fn slow_readers(ctx: &Ctx<'_>) -> Outcome {
    if let Err(err) = fill_store(ctx.http).await {
        return Outcome::wrong("", format!("cannot fill the store: {err}"));
    }
    let each = if ctx.scale.short { 5 } else { 20 };
    let large = "GET /api/items?limit=100 HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2000);
    let sse = "GET /api/events?interval_ms=10 HTTP/1.1\r\nHost: x\r\n\r\n";
    let within = ctx.scale.past(ctx.scale.send_bound);
    let (pipelined, streams) = tokio::join!(
        never_read(ctx.http, &large, each, within),
        never_read(ctx.http, sse, each, within)
    );
    // An SSE stream that is not read still moves while the kernel's socket buffers take its
    // writes (megabytes at a few KB/s): not stalled yet, so not cut yet.
    pipelined
        .bounded("pipelined GET /api/items: ")
        .with_note(format!("; SSE: {}", streams.describe()))
}

/// `n` connections that send `first` and never read; when the server closed each, within
/// `within`. Whether it did is seen by writing to it (a small request every 500 ms), never by
/// reading, which would let the server's writes go on.
async fn never_read(addr: SocketAddr, first: &str, n: usize, within: Duration) -> super::Closures {
    let start = Instant::now();
    let mut clients = JoinSet::new();
    let mut opened = 0;
    for _ in 0..n {
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            continue;
        };
        opened += 1;
        let first = first.to_owned();
        clients.spawn(async move {
            let _ = stream.write_all(first.as_bytes()).await;
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let written = tokio::time::timeout(
                    Duration::from_millis(500),
                    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
                )
                .await;
                if matches!(written, Ok(Err(_))) {
                    return start.elapsed().as_secs_f64();
                }
            }
        });
    }
    collect(clients, opened, within).await
}

/// A request body streamed far past any sane size, and one announced as huge.
pub(super) async fn streamed_body(ctx: &Ctx<'_>) -> Outcome {
    const STREAMED: usize = 64 << 20;
    let streamed = stream_body(ctx.http, STREAMED).await;
    let announced = exchange(
        ctx.http,
        b"POST /api/items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 104857600\r\n\r\n",
    )
    .await;
    let note = format!(
        "streamed: {}; announced 100 MiB: {}",
        streamed.as_deref().unwrap_or_else(|e| e),
        match &announced {
            Ok(status) => format!("{status}"),
            Err(err) => err.clone(),
        }
    );
    match streamed {
        Ok(text) if text.starts_with("413") => Outcome::note(note),
        _ => Outcome::wrong(
            note.clone(),
            format!("no 413 for a body over the limit: {note}"),
        ),
    }
}

/// Streams up to `total` bytes of chunked JSON to `POST /api/items` until the server answers;
/// returns the status and how much it took.
async fn stream_body(addr: SocketAddr, total: usize) -> Result<String, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut read, mut write) = stream.into_split();
    let sent = Arc::new(AtomicUsize::new(0));
    let counted = sent.clone();
    let writer = tokio::spawn(async move {
        let _ = write
            .write_all(
                b"POST /api/items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                  Transfer-Encoding: chunked\r\n\r\n",
            )
            .await;
        let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, " ".repeat(64 * 1024));
        while counted.load(Ordering::Relaxed) < total {
            if write.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
            counted.fetch_add(64 * 1024, Ordering::Relaxed);
        }
    });
    let answered = tokio::time::timeout(Duration::from_secs(30), async {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return Err("closed without a response".to_owned()),
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        Ok(String::from_utf8_lossy(&head)
            .split_whitespace()
            .nth(1)
            .unwrap_or("?")
            .to_owned())
    })
    .await;
    drop(read);
    writer.abort();
    let sent = sent.load(Ordering::Relaxed);
    match answered {
        Ok(Ok(status)) => Ok(format!("{status} after {} MiB sent", sent >> 20)),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(format!("no answer in 30 s, {} MiB sent", sent >> 20)),
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 request without exactly one Host gets 400.
pub(super) async fn host_header(ctx: &Ctx<'_>) -> Outcome {
    let none = exchange(ctx.http, b"GET / HTTP/1.1\r\n\r\n").await;
    let two = exchange(ctx.http, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").await;
    let note = format!("no Host: {}; two: {}", show(&none), show(&two));
    if none == Ok(400) && two == Ok(400) {
        Outcome::note(note)
    } else {
        Outcome::wrong(note.clone(), format!("expected 400 twice: {note}"))
    }
}

fn show(result: &Result<u16, String>) -> String {
    match result {
        Ok(status) => status.to_string(),
        Err(err) => err.clone(),
    }
}

pub(super) async fn oversized_heads(ctx: &Ctx<'_>) -> Outcome {
    let header = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(100 << 10));
    let big_header = exchange(ctx.http, header.as_bytes()).await;
    let long_uri = exchange(ctx.http, uri.as_bytes()).await;
    let note = format!(
        "1 MiB header: {}; 100 KiB URI: {}",
        show(&big_header),
        show(&long_uri)
    );
    if big_header == Ok(200) || long_uri == Ok(200) {
        return Outcome::wrong(note.clone(), note);
    }
    Outcome::note(note)
}

pub(super) async fn json_body(ctx: &Ctx<'_>) -> Outcome {
    let body = format!("{{\"name\": \"{}\"}}", "n".repeat(3 << 20));
    let request = format!(
        "POST /api/items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let status = exchange(ctx.http, request.as_bytes()).await;
    let note = format!("3 MiB JSON: {}", show(&status));
    if status == Ok(413) {
        Outcome::note(note)
    } else {
        Outcome::wrong(note.clone(), note)
    }
}

/// Ambiguous framing: the server must refuse, or answer once and close, so that the request
/// hidden in the body is never served.
pub(super) async fn smuggling(ctx: &Ctx<'_>) -> Outcome {
    let both = answers(
        ctx.http,
        b"POST /api/items HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\
          Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    let two_lengths = answers(
        ctx.http,
        b"POST /api/items HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n\
          abcdeGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    let note = format!("CL+TE: {both}; two lengths: {two_lengths}");
    if both.contains("smuggled") || two_lengths.contains("smuggled") {
        return Outcome::wrong(note.clone(), note);
    }
    Outcome::note(note)
}

/// Sends `raw` and reads until the server closes (at most 5 s): the statuses it answered, and
/// whether it closed.
async fn answers(addr: SocketAddr, raw: &[u8]) -> String {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return "cannot connect".to_owned();
    };
    if stream.write_all(raw).await.is_err() {
        return "closed while sending".to_owned();
    }
    let mut received = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let closed = loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break true,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    let text = String::from_utf8_lossy(&received);
    let statuses: Vec<&str> = text
        .split("HTTP/1.1 ")
        .skip(1)
        .filter_map(|response| response.split_whitespace().next())
        .collect();
    let smuggled = if statuses.len() > 1 {
        ", the smuggled request served"
    } else {
        ""
    };
    format!(
        "{}{}{smuggled}",
        statuses.join(", "),
        if closed { " and close" } else { ", kept open" }
    )
}

pub(super) async fn pipelining(ctx: &Ctx<'_>) -> Outcome {
    const REQUESTS: usize = 100;
    let result = async {
        let mut stream = TcpStream::connect(ctx.http)
            .await
            .map_err(|e| e.to_string())?;
        let requests = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".repeat(REQUESTS);
        stream
            .write_all(requests.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut answered = 0;
        while answered < REQUESTS {
            if read_response(&mut stream).await? == 200 {
                answered += 1;
            }
        }
        Ok::<_, String>(answered)
    };
    match tokio::time::timeout(Duration::from_secs(10), result).await {
        Ok(Ok(n)) => Outcome::note(format!("{n}/{REQUESTS} answered in order")),
        Ok(Err(err)) => Outcome::wrong(err.clone(), err),
        Err(_) => Outcome::wrong("timed out", "pipelined requests not answered in 10 s"),
    }
}
