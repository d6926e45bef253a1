//! The attacks, one function each, and what they share: opening many connections, holding them
//! while watching when the server closes them, one raw request and its response.
//!
//! Every attack runs against loopback only, bounded in connections (`Scale`) and in time.

mod http1;
mod http2;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::target::Target;

/// How hard and how long to attack.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scale {
    pub(crate) short: bool,
    /// Connections of a flood: more than the server's fd limit.
    pub(crate) flood: usize,
    /// The server's bounds in force (`[limits]`), to hold each attack past its bound.
    pub(crate) header_bound: Duration,
    pub(crate) idle_bound: Duration,
    pub(crate) send_bound: Duration,
}

impl Scale {
    /// How long to hold an attack that a bound of `bound` ends: past it, with room to see it.
    /// The full run holds at least 40 s, past hyper's own 30 s header timeout, so that a server
    /// without the bound shows what it did instead. A hold ends early once every connection of
    /// the attack is closed.
    pub(crate) fn past(&self, bound: Duration) -> Duration {
        if self.short {
            bound + Duration::from_secs(3)
        } else {
            (bound + Duration::from_secs(10)).max(Duration::from_secs(40))
        }
    }

    /// How long to run an attack no bound ends (a flood of frames, say).
    pub(crate) fn burst(&self) -> Duration {
        if self.short {
            Duration::from_secs(3)
        } else {
            Duration::from_secs(10)
        }
    }
}

/// What an attack needs.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    pub(crate) http: SocketAddr,
    pub(crate) target: &'a Target,
    pub(crate) scale: Scale,
}

/// What an attack found, besides what the probes and samples measure.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// One line for the table: what the server did.
    pub(crate) note: String,
    /// The server did not do what it must (e.g. answered 200 where RFC 9112 says 400).
    pub(crate) wrong: Option<String>,
    /// The lifecycle failed during the attack (a reload or an upgrade).
    pub(crate) lifecycle_failed: Option<String>,
}

impl Outcome {
    fn note(note: impl Into<String>) -> Outcome {
        Outcome {
            note: note.into(),
            ..Outcome::default()
        }
    }

    fn with_note(mut self, more: impl AsRef<str>) -> Outcome {
        self.note.push_str(more.as_ref());
        self
    }

    fn wrong(note: impl Into<String>, wrong: impl Into<String>) -> Outcome {
        Outcome {
            note: note.into(),
            wrong: Some(wrong.into()),
            ..Outcome::default()
        }
    }
}

type Run = for<'a> fn(&'a Ctx<'a>) -> Pin<Box<dyn Future<Output = Outcome> + 'a>>;

/// One attack: its name, the description, and how to run it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attack {
    pub(crate) name: &'static str,
    pub(crate) what: &'static str,
    pub(crate) run: Run,
}

macro_rules! attack {
    ($name:literal, $what:literal, $f:path) => {
        Attack {
            name: $name,
            what: $what,
            run: |ctx| Box::pin($f(ctx)),
        }
    };
}

/// Every attack, in the order of the table, then the ones held already.
pub(crate) const ALL: &[Attack] = &[
    attack!(
        "h2c-prefaces",
        "a flood of h2c connections that send the preface and then nothing",
        http2::preface_flood
    ),
    attack!(
        "h2-zero-window",
        "HTTP/2, SETTINGS_INITIAL_WINDOW_SIZE=0, 40 connections x 200 streams of GET /api/items (1,000 items)",
        http2::zero_window
    ),
    attack!(
        "h1-idle-flood",
        "silent HTTP/1 connections past the fd limit; baton reload and upgrade meanwhile",
        http1::idle_flood
    ),
    attack!(
        "h2-rapid-reset",
        "HTTP/2 rapid reset: bursts of HEADERS + RST_STREAM",
        http2::rapid_reset
    ),
    attack!(
        "h2-partial-prefaces",
        "2,000 connections that send half the HTTP/2 preface",
        http2::partial_prefaces
    ),
    attack!(
        "streamed-body",
        "a 64 MiB chunked request body, and a 100 MiB Content-Length",
        http1::streamed_body
    ),
    attack!(
        "slow-readers",
        "clients that never read: pipelined GET /api/items, SSE streams",
        http1::slow_readers
    ),
    attack!(
        "h2-idle",
        "HTTP/2 connections that make one request and stay idle",
        http2::idle
    ),
    attack!(
        "host-header",
        "HTTP/1.1 without Host, and with two",
        http1::host_header
    ),
    attack!(
        "admin-exposed",
        "admin.listen on 0.0.0.0 (baton check)",
        admin_exposed
    ),
    attack!(
        "slowloris",
        "HTTP/1 heads sent a byte every 500 ms",
        http1::slowloris
    ),
    attack!(
        "oversized-heads",
        "a 1 MiB header, a 100 KiB URI",
        http1::oversized_heads
    ),
    attack!(
        "json-body",
        "a 3 MiB JSON body on POST /api/items",
        http1::json_body
    ),
    attack!(
        "smuggling",
        "Content-Length with Transfer-Encoding, two Content-Lengths",
        http1::smuggling
    ),
    attack!(
        "pipelining",
        "100 pipelined requests in one write",
        http1::pipelining
    ),
    attack!(
        "h2-continuation",
        "HEADERS followed by endless CONTINUATION frames",
        http2::continuation_flood
    ),
    attack!(
        "h2-ping-flood",
        "100,000 PING frames, never reading the answers",
        http2::ping_flood
    ),
    attack!(
        "h2-settings-flood",
        "100,000 SETTINGS frames, never reading the answers",
        http2::settings_flood
    ),
];

/// `baton check` with the admin listener on all interfaces and no token: it must refuse.
async fn admin_exposed(ctx: &Ctx<'_>) -> Outcome {
    let dir = ctx.target.dir.join("exposed");
    let config = "[admin]\nlisten = \"0.0.0.0:9090\"\n";
    let written = std::fs::create_dir_all(dir.join("config"))
        .and_then(|()| std::fs::write(dir.join("config/default.toml"), config));
    if let Err(err) = written {
        return Outcome::wrong("", format!("cannot write the config: {err}"));
    }
    let output = tokio::process::Command::new(&ctx.target.baton)
        .arg("check")
        .current_dir(&dir)
        .env_remove("BATON_ADMIN__TOKEN")
        .output()
        .await;
    match output {
        Ok(output) if !output.status.success() => {
            let said = String::from_utf8_lossy(&output.stderr);
            if said.contains("admin.token") {
                Outcome::note("refused: set admin.token or listen on loopback")
            } else {
                Outcome::wrong(
                    "refused",
                    format!("refused without naming admin.token: {said}"),
                )
            }
        }
        Ok(_) => Outcome::wrong("accepted, no warning", "an exposed, open admin listener"),
        Err(err) => Outcome::wrong("", format!("cannot run baton check: {err}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// Opens up to `n` connections, one after the other; stops at the first that fails (the
/// server's queue is full) after trying for a while.
async fn open_many(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(n);
    let mut failures = 0;
    while streams.len() < n && failures < 20 {
        match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => streams.push(stream),
            _ => failures += 1,
        }
    }
    streams
}

/// When the server closed each of `streams`, within `hold`; then they are dropped.
#[derive(Debug, Default)]
struct Closures {
    opened: usize,
    /// Seconds after the hold began, one per connection the server closed.
    after: Vec<f64>,
}

impl Closures {
    /// The outcome of an attack that a bound must end: every connection closed by the server
    /// within the hold, or the attack held.
    fn bounded(&self, prefix: &str) -> Outcome {
        let note = format!("{prefix}{}", self.describe());
        let open = self.opened - self.after.len();
        if open == 0 {
            return Outcome::note(note);
        }
        Outcome::wrong(
            note,
            format!("{open} connections still open past the bound"),
        )
    }

    fn describe(&self) -> String {
        if self.after.is_empty() {
            return format!("{} connections held open", self.opened);
        }
        let mut after = self.after.clone();
        after.sort_by(f64::total_cmp);
        let median = after[after.len() / 2];
        let last = after[after.len() - 1];
        format!(
            "{}/{} closed by the server, median {median:.1} s, last {last:.1} s",
            after.len(),
            self.opened
        )
    }
}

async fn hold(streams: Vec<TcpStream>, hold: Duration) -> Closures {
    let opened = streams.len();
    let start = Instant::now();
    let mut readers = JoinSet::new();
    for mut stream in streams {
        readers.spawn(async move {
            let mut buf = [0u8; 4096];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return start.elapsed().as_secs_f64(),
                    Ok(_) => {}
                }
            }
        });
    }
    let mut after = Vec::new();
    let deadline = tokio::time::Instant::now() + hold;
    while let Ok(Some(Ok(secs))) = tokio::time::timeout_at(deadline, readers.join_next()).await {
        after.push(secs);
    }
    readers.abort_all();
    Closures { opened, after }
}

/// Sends `raw` on a new connection and reads one response: its status, or how it failed.
async fn exchange(addr: SocketAddr, raw: &[u8]) -> Result<u16, String> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        stream.write_all(raw).await.map_err(|e| e.to_string())?;
        read_status(&mut stream).await
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .unwrap_or_else(|_| Err("no response within 10 s".to_owned()))
}

/// Reads a response head and returns its status.
async fn read_status(stream: &mut TcpStream) -> Result<u16, String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) => return Err("closed without a response".to_owned()),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(err) => return Err(err.to_string()),
        }
    }
    String::from_utf8_lossy(&head)
        .split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .ok_or_else(|| "not an HTTP response".to_owned())
}
