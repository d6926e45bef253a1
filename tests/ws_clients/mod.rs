//! WebSocket clients for `tests/websockets.rs`: polite ones that keep the client side of the
//! contract (`src/app/routes/ws.rs`: on Close 1001, answer it, reconnect to the same address
//! after a short jittered back-off, send again what got no echo) and count what they see, and
//! stubborn ones that never read again, so never answer a close.

#![allow(
    unreachable_pub,
    reason = "a module of a test crate: `pub` marks its API, as in `common`"
)]

use std::collections::BTreeSet;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::support::{DEADLINE, wait_until};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the server says with its Close 1001 (`app::routes::ws`).
pub const GOING_AWAY_REASON: &str = "server restarting; reconnect";
/// The longest jittered pause before a client reconnects.
pub const MAX_JITTER_MS: u64 = 50;

pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime for the clients")
}

pub async fn connect(addr: SocketAddr) -> Result<Ws, String> {
    let handshake = tokio_tungstenite::connect_async(format!("ws://{addr}/api/ws"));
    match tokio::time::timeout(DEADLINE, handshake).await {
        Ok(Ok((ws, _response))) => Ok(ws),
        Ok(Err(err)) => Err(format!("handshake: {err}")),
        Err(_) => Err(format!("handshake: no answer within {DEADLINE:?}")),
    }
}

/// A pseudo-random pause of up to `MAX_JITTER_MS`, different for each client and attempt,
/// so that a whole fleet does not reconnect in the same millisecond.
fn jitter(client: usize, attempt: u64) -> Duration {
    let spread = std::collections::hash_map::RandomState::new().hash_one((client, attempt));
    Duration::from_millis(spread % (MAX_JITTER_MS + 1))
}

// ---------------------------------------------------------------------------------------------
// A client that keeps the contract
// ---------------------------------------------------------------------------------------------

/// What one client saw, from start to stop.
#[derive(Debug, Default)]
pub struct Tally {
    pub sent: u64,
    pub echoed: u64,
    /// Sent again on a new connection: they crossed the server's close unanswered.
    pub resent: u64,
    /// Close 1001 received (and answered).
    pub going_away: u64,
    /// The reasons that came with those closes.
    pub reasons: BTreeSet<String>,
    /// Anything but a clean 1001: another close code, a reset, an error, a failed connect.
    pub abnormal: Vec<String>,
    /// Echoes of nothing that was waiting for one: duplicates or garbage.
    pub unexpected: Vec<String>,
    /// From each Close 1001 to the next connection's completed handshake.
    pub reconnect_times: Vec<Duration>,
    /// When each of those handshakes completed.
    pub reconnected_at: Vec<Instant>,
}

/// Progress of a whole fleet, for the test to wait on while the clients run.
#[derive(Debug, Default)]
struct Progress {
    connected: AtomicUsize,
    going_away: AtomicU64,
    echoed: AtomicU64,
}

/// How a connection ended.
pub enum Ended {
    /// The server said 1001 and the closing handshake completed: reconnect.
    GoingAway,
    /// Stopped, every message answered, closed by us.
    Done,
    Broken(String),
}

/// State that outlives one connection.
struct Client {
    id: usize,
    period: Duration,
    /// Numbers sent and not yet echoed, in order.
    outstanding: BTreeSet<u64>,
    next: u64,
    tally: Tally,
    progress: Arc<Progress>,
    stop: CancellationToken,
}

/// Sends a message every `period` until `stop`, then waits for the last echoes and closes.
async fn polite_client(
    addr: SocketAddr,
    id: usize,
    period: Duration,
    progress: Arc<Progress>,
    stop: CancellationToken,
) -> Tally {
    let mut client = Client {
        id,
        period,
        outstanding: BTreeSet::new(),
        next: 0,
        tally: Tally::default(),
        progress,
        stop,
    };
    let mut told_at: Option<Instant> = None;
    // Bounded: 10 upgrades need 10 reconnections; anything near this is a failure anyway.
    for attempt in 0..100u64 {
        let mut ws = match connect(addr).await {
            Ok(ws) => ws,
            Err(err) => {
                client.tally.abnormal.push(err);
                tokio::time::sleep(jitter(id, attempt)).await;
                continue;
            }
        };
        if let Some(at) = told_at.take() {
            client.tally.reconnect_times.push(at.elapsed());
            client.tally.reconnected_at.push(Instant::now());
        }
        client.progress.connected.fetch_add(1, Ordering::SeqCst);
        let ended = client.session(&mut ws).await;
        client.progress.connected.fetch_sub(1, Ordering::SeqCst);
        match ended {
            Ended::GoingAway => told_at = Some(Instant::now()),
            Ended::Done => return client.tally,
            Ended::Broken(why) => client.tally.abnormal.push(why),
        }
        tokio::time::sleep(jitter(id, attempt)).await;
    }
    client
        .tally
        .abnormal
        .push("gave up after 100 connections".into());
    client.tally
}

impl Client {
    fn text(&self, n: u64) -> Message {
        Message::text(format!("{}:{n}", self.id))
    }

    async fn session(&mut self, ws: &mut Ws) -> Ended {
        // What the previous connection left unanswered goes first, in order.
        for n in self.outstanding.clone() {
            if let Err(err) = ws.send(self.text(n)).await {
                return Ended::Broken(format!("resend: {err}"));
            }
            self.tally.resent += 1;
        }
        let mut tick = tokio::time::interval(self.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.stop.is_cancelled() && self.outstanding.is_empty() {
                return close(ws).await;
            }
            tokio::select! {
                _ = tick.tick(), if !self.stop.is_cancelled() => {
                    let n = self.next;
                    self.next += 1;
                    self.outstanding.insert(n);
                    self.tally.sent += 1;
                    if let Err(err) = ws.send(self.text(n)).await {
                        return Ended::Broken(format!("send: {err}"));
                    }
                }
                () = self.stop.cancelled(), if self.outstanding.is_empty() => {}
                frame = tokio::time::timeout(DEADLINE, ws.next()) => match frame {
                    Err(_) => return Ended::Broken(format!("nothing from the server for {DEADLINE:?}")),
                    Ok(Some(Ok(Message::Text(text)))) => self.echo(&text),
                    Ok(Some(Ok(Message::Close(Some(frame))))) if frame.code == CloseCode::Away => {
                        self.tally.going_away += 1;
                        self.tally.reasons.insert(frame.reason.to_string());
                        self.progress.going_away.fetch_add(1, Ordering::SeqCst);
                        return finish_closing(ws).await;
                    }
                    Ok(Some(Ok(Message::Close(other)))) => {
                        return Ended::Broken(format!("unexpected close {other:?}"));
                    }
                    Ok(Some(Ok(_))) => {}
                    Ok(Some(Err(err))) => return Ended::Broken(format!("read: {err}")),
                    Ok(None) => return Ended::Broken("the connection ended without a close".into()),
                },
            }
        }
    }

    fn echo(&mut self, text: &str) {
        let mine = text
            .split_once(':')
            .filter(|(id, _)| *id == self.id.to_string())
            .and_then(|(_, n)| n.parse::<u64>().ok());
        match mine {
            Some(n) if self.outstanding.remove(&n) => {
                self.tally.echoed += 1;
                self.progress.echoed.fetch_add(1, Ordering::Relaxed);
            }
            _ => self.tally.unexpected.push(text.to_owned()),
        }
    }
}

/// After the server's Close: reading on sends our answer; then the server closes the
/// connection. Nothing else may arrive (no data follows a Close).
pub async fn finish_closing(ws: &mut Ws) -> Ended {
    match tokio::time::timeout(DEADLINE, ws.next()).await {
        Ok(None) => Ended::GoingAway,
        Ok(Some(other)) => Ended::Broken(format!("after the close: {other:?}")),
        Err(_) => Ended::Broken("the server did not end the closing handshake".into()),
    }
}

pub async fn close(ws: &mut Ws) -> Ended {
    if let Err(err) = ws.close(None).await {
        return Ended::Broken(format!("close: {err}"));
    }
    loop {
        match tokio::time::timeout(DEADLINE, ws.next()).await {
            Ok(None) => return Ended::Done,
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(err))) => return Ended::Broken(format!("closing: {err}")),
            Err(_) => return Ended::Broken("the server did not answer our close".into()),
        }
    }
}

/// A fleet of polite clients on its own runtime.
pub struct Fleet {
    pub runtime: Runtime,
    clients: Vec<tokio::task::JoinHandle<Tally>>,
    progress: Arc<Progress>,
    stop: CancellationToken,
}

impl Fleet {
    /// Starts `size` clients sending every `period`, and waits until all are connected and
    /// echoes flow.
    pub fn start(addr: SocketAddr, size: usize, period: Duration) -> Fleet {
        let runtime = runtime();
        let progress = Arc::new(Progress::default());
        let stop = CancellationToken::new();
        let clients = (0..size)
            .map(|id| {
                runtime.spawn(polite_client(
                    addr,
                    id,
                    period,
                    progress.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        let fleet = Fleet {
            runtime,
            clients,
            progress,
            stop,
        };
        wait_until(DEADLINE, "every client to connect", || {
            fleet.connected() == size
        });
        wait_until(DEADLINE, "echoes to flow", || {
            fleet.progress.echoed.load(Ordering::Relaxed) >= 2 * size as u64
        });
        fleet
    }

    pub fn connected(&self) -> usize {
        self.progress.connected.load(Ordering::SeqCst)
    }

    pub fn going_away(&self) -> u64 {
        self.progress.going_away.load(Ordering::SeqCst)
    }

    /// Stops sending, waits for every answer, closes; returns each client's tally.
    pub fn finish(self) -> Vec<Tally> {
        self.stop.cancel();
        self.runtime.block_on(async {
            let mut tallies = Vec::new();
            for client in self.clients {
                let tally = tokio::time::timeout(DEADLINE, client)
                    .await
                    .expect("the client to finish in time")
                    .expect("the client task");
                tallies.push(tally);
            }
            tallies
        })
    }
}

/// Every client saw `upgrades` clean 1001s, reconnected each time, and got exactly one echo
/// for every message it sent.
pub fn assert_nothing_lost(tallies: &[Tally], upgrades: u64) {
    for (id, tally) in tallies.iter().enumerate() {
        assert!(
            tally.abnormal.is_empty(),
            "client {id}: {:?}",
            tally.abnormal
        );
        assert!(
            tally.unexpected.is_empty(),
            "client {id} got echoes of nothing: {:?}",
            tally.unexpected
        );
        assert_eq!(tally.going_away, upgrades, "client {id}: {tally:?}");
        assert_eq!(tally.reconnect_times.len() as u64, upgrades, "client {id}");
        assert_eq!(
            tally.sent, tally.echoed,
            "client {id}: every message answered"
        );
        assert!(tally.sent > 0, "client {id} sent nothing");
        if upgrades > 0 {
            assert_eq!(
                tally.reasons,
                BTreeSet::from([GOING_AWAY_REASON.to_owned()]),
                "client {id}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Stubborn clients
// ---------------------------------------------------------------------------------------------

/// Opens `count` WebSockets that get one echo, then are never read again: they never answer
/// a close, so they keep their generation draining until something cuts them.
pub fn open_stubborn(runtime: &Runtime, addr: SocketAddr, count: usize) -> Vec<Ws> {
    runtime.block_on(async {
        let mut held = Vec::new();
        for _ in 0..count {
            let mut ws = connect(addr).await.expect("a stubborn client connects");
            ws.send(Message::text("hold")).await.expect("send");
            let echo = tokio::time::timeout(DEADLINE, ws.next()).await;
            assert!(
                matches!(&echo, Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "hold"),
                "{echo:?}"
            );
            held.push(ws);
        }
        held
    })
}
