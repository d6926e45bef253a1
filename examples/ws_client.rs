//! The client side of baton's WebSocket contract (`src/app/routes/ws.rs`), as a program:
//!
//! ```text
//! cargo run --example ws_client -- [ws://127.0.0.1:8080/api/ws] [--every 1000ms] [--count 60]
//! ```
//!
//! It sends `hello N` every period and prints the echoes. When the server closes with 1001
//! (Going Away: an upgrade or a shutdown began), it answers the close, waits a short jittered
//! back-off so that a thousand clients do not reconnect in the same millisecond, reconnects to
//! the same address (the next generation holds the same socket), and sends again the messages
//! that got no echo: those crossed the close, and the server does not answer after a close.
//! Stops after `--count` messages, once each is answered.

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Back-off before a reconnection: the base doubles after each failed attempt, up to the cap,
/// and a random part of up to the same again spreads clients out.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Failed connection attempts in a row before giving up.
const MAX_ATTEMPTS: u32 = 20;

struct Options {
    url: String,
    every: Duration,
    count: u64,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        url: "ws://127.0.0.1:8080/api/ws".into(),
        every: Duration::from_secs(1),
        count: 60,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--every" => {
                let text = value("--every")?;
                options.every = humantime::parse_duration(&text)
                    .map_err(|e| format!("--every {text}: {e} (e.g. 500ms)"))?;
            }
            "--count" => {
                let text = value("--count")?;
                options.count = text
                    .parse()
                    .map_err(|_| format!("--count {text}: not a number"))?;
            }
            url if url.starts_with("ws://") => options.url = url.to_owned(),
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    Ok(options)
}

/// A random pause in `[base, 2 * base]`.
fn jittered(base: Duration) -> Duration {
    let random = std::collections::hash_map::RandomState::new().hash_one(std::time::Instant::now());
    base + base.mul_f64((random % 1000) as f64 / 1000.0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let options = options().map_err(|e| {
        format!("{e}\nusage: ws_client [ws://HOST:PORT/api/ws] [--every 1000ms] [--count 60]")
    })?;
    // Sent and not yet echoed, by number: sent again after a reconnection.
    let mut unanswered: BTreeMap<u64, String> = BTreeMap::new();
    let mut next = 0;
    let mut backoff = FIRST_BACKOFF;
    let mut failures = 0;
    loop {
        let mut ws = match tokio_tungstenite::connect_async(&options.url).await {
            Ok((ws, _)) => {
                println!("connected to {}", options.url);
                failures = 0;
                backoff = FIRST_BACKOFF;
                ws
            }
            Err(err) => {
                failures += 1;
                if failures >= MAX_ATTEMPTS {
                    return Err(format!("giving up after {failures} attempts: {err}"));
                }
                eprintln!("cannot connect ({err}); retrying");
                tokio::time::sleep(jittered(backoff)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        for text in unanswered.values() {
            println!("sending again: {text}");
            ws.send(Message::text(text.as_str()))
                .await
                .map_err(|e| e.to_string())?;
        }
        let mut tick = tokio::time::interval(options.every);
        loop {
            if next >= options.count && unanswered.is_empty() {
                let _ = ws.close(None).await;
                while let Some(Ok(_)) = ws.next().await {}
                println!("done: {next} messages, each answered");
                return Ok(());
            }
            tokio::select! {
                _ = tick.tick(), if next < options.count => {
                    let text = format!("hello {next}");
                    unanswered.insert(next, text.clone());
                    next += 1;
                    ws.send(Message::text(text)).await.map_err(|e| e.to_string())?;
                }
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        println!("echo: {text}");
                        let number = text.strip_prefix("hello ").and_then(|n| n.parse().ok());
                        if let Some(number) = number {
                            unanswered.remove(&number);
                        }
                    }
                    Some(Ok(Message::Close(Some(frame)))) if frame.code == CloseCode::Away => {
                        println!("server going away (1001: {}); reconnecting", frame.reason);
                        // Reading on sends our answer to the close; then the server hangs up.
                        while let Some(Ok(_)) = ws.next().await {}
                        break;
                    }
                    Some(Ok(Message::Close(frame))) => {
                        return Err(format!("closed by the server: {frame:?}"));
                    }
                    Some(Ok(_)) => {}
                    // A cut connection (the server's hammer, a network failure): reconnect too.
                    Some(Err(err)) => {
                        eprintln!("connection lost: {err}; reconnecting");
                        break;
                    }
                    None => {
                        eprintln!("connection ended without a close; reconnecting");
                        break;
                    }
                },
            }
        }
        tokio::time::sleep(jittered(backoff)).await;
    }
}
