//! What this process is and what it is doing: identity, phase, listeners, connections and the
//! record of upgrades and drains, shared read-only with the application (for `/readyz`,
//! `/-/status`, `/metrics` and long-lived responses, which must end when a drain begins: see
//! [`LongLived`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{TaskTracker, task_tracker::TaskTrackerToken};

use super::limits::LimitCounters;
use super::lineage::{HandoverTimes, Predecessor};
use super::spread::{CloseSpread, Slot};

/// Where the process is in its life. Moves forward only, except `Upgrading` which returns to
/// `Serving` when an upgrade fails, and `Draining` which returns to `Serving` when the next
/// generation dies during its probation (a rollback).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Starting = 0,
    Serving = 1,
    Upgrading = 2,
    Draining = 3,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Starting,
            1 => Phase::Serving,
            2 => Phase::Upgrading,
            _ => Phase::Draining,
        }
    }
}

/// One listening socket, as `/-/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ListenerInfo {
    pub name: String,
    pub addr: SocketAddr,
    /// `true` when the socket came from the previous generation or systemd rather than `bind`.
    pub inherited: bool,
}

/// The outcome of the last upgrade attempt this process made.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct UpgradeRecord {
    /// Counts every attempt, refused ones included, so a client can wait for "the next one".
    pub seq: u64,
    #[serde(with = "humantime_serde")]
    pub at: SystemTime,
    pub ok: bool,
    /// The new process on success.
    pub new_pid: Option<u32>,
    /// Why it failed or was refused, in words a user can act on.
    pub error: Option<String>,
    /// The new generation became ready, then died during its probation: this one took over.
    #[serde(default)]
    pub rolled_back: bool,
}

/// An upgrade request that was refused because of what the process was doing.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RefusalRecord {
    pub seq: u64,
    pub reason: String,
    /// `true` when refused because another upgrade is in flight: its outcome is still to come.
    pub in_flight: bool,
}

/// Upgrade attempts by outcome: what `/metrics` counts, and what a supervisor tells its
/// current worker (see `carry::UPGRADES`), whose own record has none of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct UpgradeCounts {
    pub ok: u64,
    pub failed: u64,
    pub refused: u64,
    /// Handed over, then taken back because the new generation died during its probation.
    pub rolled_back: u64,
}

/// What the last drain of this process did (see `drain`): for `/-/status`, and for `/metrics`
/// of the next generation, which receives it in this one's final state.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct DrainRecord {
    /// Counts the drains of this process (more than one after a rollback).
    pub seq: u64,
    #[serde(with = "humantime_serde")]
    pub at: SystemTime,
    pub lame_duck_ms: u64,
    pub total_ms: u64,
    /// Connections still open at the hammer, and cut.
    pub cut: usize,
    /// Long-lived responses (upgraded WebSockets, event streams) cut at the hammer.
    #[serde(default)]
    pub cut_long_lived: usize,
}

/// The protocol a connection speaks, once its first bytes said which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    Http1 = 0,
    Http2 = 1,
}

impl Wire {
    /// The label `/metrics` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Wire::Http1 => "http1",
            Wire::Http2 => "http2",
        }
    }
}

/// Shared, cheap-to-clone handle on this process's lifecycle state.
#[derive(Debug, Clone)]
pub struct ProcessState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pid: u32,
    generation: u64,
    version: &'static str,
    started_at: SystemTime,
    phase: AtomicU8,
    /// Cancelled when the drain begins: long-lived responses (see [`LongLived`]) watch it and end
    /// themselves. Replaced by a fresh one at a rollback, when the process serves again.
    drain: Mutex<CancellationToken>,
    /// When each connection of the current drain is told to close.
    spread: CloseSpread,
    /// Cancelled once this process will exit whatever happens (shut down, or its successor is
    /// past its probation): what must run as long as the process may serve again watches it.
    retired: CancellationToken,
    open_connections: AtomicUsize,
    /// Open connections by [`Wire`], once their protocol is known (a connection that has not
    /// sent its first byte yet counts in `open_connections` only).
    by_wire: [AtomicUsize; 2],
    last_drain: Mutex<Option<DrainRecord>>,
    /// Long-lived responses in progress (see [`LongLived`]): the drain waits for them as for
    /// connections, because an upgraded WebSocket outlives the connection task that served
    /// its handshake. Closed while draining, reopened at a rollback.
    long_lived: TaskTracker,
    /// What the connection bounds did (`[limits]`), for `/metrics`.
    limit_counters: LimitCounters,
    listeners: Mutex<Vec<ListenerInfo>>,
    upgrades_ok: AtomicU64,
    upgrades_failed: AtomicU64,
    upgrades_rolled_back: AtomicU64,
    last_upgrade: Mutex<Option<UpgradeRecord>>,
    upgrades_refused: AtomicU64,
    last_refusal: Mutex<Option<RefusalRecord>>,
    /// This process's last upgrade, once its successor was ready (see `lineage`).
    handover_times: Mutex<Option<HandoverTimes>>,
    /// The generation this one replaced, once it has drained (see `lineage`).
    predecessor: Mutex<Option<Predecessor>>,
}

impl ProcessState {
    pub fn new(generation: u64, version: &'static str) -> Self {
        ProcessState {
            inner: Arc::new(Inner {
                pid: std::process::id(),
                generation,
                version,
                started_at: SystemTime::now(),
                phase: AtomicU8::new(Phase::Starting as u8),
                drain: Mutex::new(CancellationToken::new()),
                spread: CloseSpread::new(),
                retired: CancellationToken::new(),
                open_connections: AtomicUsize::new(0),
                by_wire: Default::default(),
                last_drain: Mutex::new(None),
                long_lived: TaskTracker::new(),
                limit_counters: LimitCounters::default(),
                listeners: Mutex::new(Vec::new()),
                upgrades_ok: AtomicU64::new(0),
                upgrades_failed: AtomicU64::new(0),
                upgrades_rolled_back: AtomicU64::new(0),
                last_upgrade: Mutex::new(None),
                upgrades_refused: AtomicU64::new(0),
                last_refusal: Mutex::new(None),
                handover_times: Mutex::new(None),
                predecessor: Mutex::new(None),
            }),
        }
    }

    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// 1 for a fresh start, +1 at each binary upgrade.
    pub fn generation(&self) -> u64 {
        self.inner.generation
    }

    pub fn version(&self) -> &'static str {
        self.inner.version
    }

    pub fn started_at(&self) -> SystemTime {
        self.inner.started_at
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.inner.phase.load(Ordering::Acquire))
    }

    /// `true` from the moment the drain begins: `/readyz` answers 503, HTTP/1 responses carry
    /// `Connection: close`.
    pub fn is_draining(&self) -> bool {
        // The phase, not `drain.is_cancelled()`: that takes a mutex shared by every
        // connection, and this runs on every HTTP/1 response.
        self.phase() == Phase::Draining
    }

    /// While draining: whether the connection in `slot` has reached its moment to be told to
    /// close (see `spread`).
    pub(crate) fn close_due(&self, slot: Slot) -> bool {
        self.inner.spread.is_due(slot)
    }

    /// Resolves once the drain has begun and reached `slot`'s moment.
    pub(crate) async fn close_moment(&self, slot: Slot) {
        self.drain_started().await;
        tokio::time::sleep(self.inner.spread.until_due(slot)).await;
    }

    /// Resolves when the drain begins. A long-lived response takes a [`LongLived`] instead, which
    /// tells it the same and also holds the drain back until the response ends.
    pub fn drain_started(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        lock(&self.inner.drain).clone().cancelled_owned()
    }

    /// Resolves once this process will exit whatever happens: after a shutdown request, or
    /// once its successor is past its probation. Unlike [`drain_started`](Self::drain_started)
    /// it never fires for a process that may take the service back.
    pub fn retired(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.inner.retired.clone().cancelled_owned()
    }

    pub fn open_connections(&self) -> usize {
        self.inner.open_connections.load(Ordering::Relaxed)
    }

    /// Open connections that speak `wire`.
    pub fn open_connections_on(&self, wire: Wire) -> usize {
        self.inner.by_wire[wire as usize].load(Ordering::Relaxed)
    }

    pub fn last_drain(&self) -> Option<DrainRecord> {
        lock(&self.inner.last_drain).clone()
    }

    /// The generation this one replaced, once it has said how its drain went.
    pub fn predecessor(&self) -> Option<Predecessor> {
        lock(&self.inner.predecessor).clone()
    }

    pub(crate) fn set_predecessor(&self, predecessor: Predecessor) {
        *lock(&self.inner.predecessor) = Some(predecessor);
    }

    pub(crate) fn handover_times(&self) -> Option<HandoverTimes> {
        lock(&self.inner.handover_times).clone()
    }

    pub(crate) fn set_handover_times(&self, times: HandoverTimes) {
        *lock(&self.inner.handover_times) = Some(times);
    }

    /// Registers a long-lived response (a WebSocket, an event stream): see [`LongLived`].
    /// Take it in the handler, before the response is returned, and move it into whatever
    /// serves the response: from the moment the handshake's connection ends, it is what keeps
    /// the process from exiting under the response.
    /// `lifetime` is how long the response may run before it is told to wrap up anyway
    /// (`limits.stream_lifetime`).
    pub fn long_lived(&self, lifetime: Duration) -> LongLived {
        LongLived {
            drain: lock(&self.inner.drain).clone(),
            ends_at: tokio::time::Instant::now() + lifetime,
            _tracked: self.inner.long_lived.token(),
        }
    }

    /// Long-lived responses in progress.
    pub fn open_long_lived(&self) -> usize {
        self.inner.long_lived.len()
    }

    /// What the connection bounds did (`[limits]`), for `/metrics`.
    pub fn limit_counters(&self) -> &LimitCounters {
        &self.inner.limit_counters
    }

    pub fn listeners(&self) -> Vec<ListenerInfo> {
        lock(&self.inner.listeners).clone()
    }

    pub fn upgrades_ok(&self) -> u64 {
        self.inner.upgrades_ok.load(Ordering::Relaxed)
    }

    pub fn upgrades_failed(&self) -> u64 {
        self.inner.upgrades_failed.load(Ordering::Relaxed)
    }

    /// Upgrades whose new generation died during its probation, so this one took over again.
    pub fn upgrades_rolled_back(&self) -> u64 {
        self.inner.upgrades_rolled_back.load(Ordering::Relaxed)
    }

    pub fn last_upgrade(&self) -> Option<UpgradeRecord> {
        lock(&self.inner.last_upgrade).clone()
    }

    pub fn upgrades_refused(&self) -> u64 {
        self.inner.upgrades_refused.load(Ordering::Relaxed)
    }

    pub fn last_refusal(&self) -> Option<RefusalRecord> {
        lock(&self.inner.last_refusal).clone()
    }

    pub fn upgrade_counts(&self) -> UpgradeCounts {
        UpgradeCounts {
            ok: self.upgrades_ok(),
            failed: self.upgrades_failed(),
            refused: self.upgrades_refused(),
            rolled_back: self.upgrades_rolled_back(),
        }
    }

    // ---- mutators: only the lifecycle changes the state ----

    pub(crate) fn set_phase(&self, phase: Phase) {
        self.inner.phase.store(phase as u8, Ordering::Release);
    }

    /// Moves `Serving` to `Upgrading`; `false` if the process was doing anything else.
    pub(crate) fn try_begin_upgrade(&self) -> bool {
        self.inner
            .phase
            .compare_exchange(
                Phase::Serving as u8,
                Phase::Upgrading as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// The drain begins: its closes are spread over `close_spread` (see `spread`).
    pub(crate) fn begin_drain(&self, close_spread: Duration) {
        self.inner.spread.begin(close_spread);
        self.set_phase(Phase::Draining);
        lock(&self.inner.drain).cancel();
        self.inner.long_lived.close();
    }

    /// Serving again after a rollback: a fresh drain signal for the responses started from now.
    pub(crate) fn resume(&self) {
        *lock(&self.inner.drain) = CancellationToken::new();
        self.inner.long_lived.reopen();
        self.set_phase(Phase::Serving);
    }

    /// What the drain waits for besides connections (closed since the drain began).
    pub(crate) fn long_lived_tracker(&self) -> TaskTracker {
        self.inner.long_lived.clone()
    }

    /// `true` once the process will exit whatever happens (see [`retired`](Self::retired)).
    pub(crate) fn is_retired(&self) -> bool {
        self.inner.retired.is_cancelled()
    }

    pub(crate) fn retire(&self) {
        self.inner.retired.cancel();
    }

    pub(crate) fn set_listeners(&self, listeners: Vec<ListenerInfo>) {
        *lock(&self.inner.listeners) = listeners;
    }

    pub(crate) fn connection_opened(&self) -> ConnectionGuard {
        self.inner.open_connections.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard {
            state: self.clone(),
        }
    }

    /// Counts the connection as HTTP/2 or HTTP/1 until the guard is dropped (the connection
    /// ends). A flag rather than `serve`'s own enum keeps that module's hook to one line.
    pub(crate) fn connection_speaks(&self, http2: bool) -> WireGuard {
        let wire = if http2 { Wire::Http2 } else { Wire::Http1 };
        self.inner.by_wire[wire as usize].fetch_add(1, Ordering::Relaxed);
        WireGuard {
            state: self.clone(),
            wire,
        }
    }

    pub(crate) fn record_drain(&self, report: &super::drain::DrainReport) {
        let millis = super::runfiles::millis;
        let mut last = lock(&self.inner.last_drain);
        let seq = last.as_ref().map_or(1, |r| r.seq + 1);
        *last = Some(DrainRecord {
            seq,
            at: SystemTime::now(),
            lame_duck_ms: millis(report.lame_duck),
            total_ms: millis(report.total),
            cut: report.cut,
            cut_long_lived: report.cut_long_lived,
        });
    }

    pub(crate) fn record_upgrade(&self, ok: bool, new_pid: Option<u32>, error: Option<String>) {
        let counter = if ok {
            &self.inner.upgrades_ok
        } else {
            &self.inner.upgrades_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.set_last_upgrade(ok, new_pid, error, false);
    }

    /// A successful upgrade taken back: its record becomes a failure that says why.
    pub(crate) fn record_rollback(&self, new_pid: u32, reason: String) {
        self.inner
            .upgrades_rolled_back
            .fetch_add(1, Ordering::Relaxed);
        self.set_last_upgrade(false, Some(new_pid), Some(reason), true);
    }

    fn set_last_upgrade(
        &self,
        ok: bool,
        new_pid: Option<u32>,
        error: Option<String>,
        rolled_back: bool,
    ) {
        let mut last = lock(&self.inner.last_upgrade);
        let seq = last.as_ref().map_or(1, |r| r.seq + 1);
        *last = Some(UpgradeRecord {
            seq,
            at: SystemTime::now(),
            ok,
            new_pid,
            error,
            rolled_back,
        });
    }
}

impl ProcessState {
    pub(crate) fn record_refusal(&self, reason: String, in_flight: bool) {
        self.inner.upgrades_refused.fetch_add(1, Ordering::Relaxed);
        let mut last = lock(&self.inner.last_refusal);
        let seq = last.as_ref().map_or(1, |r| r.seq + 1);
        *last = Some(RefusalRecord {
            seq,
            reason,
            in_flight,
        });
    }
}

/// One long-lived response (WebSocket, Server-Sent Events, a streamed body): the way to write
/// one in this template. Hold it for as long as the response runs. The drain waits for it
/// (the process does not exit under it), tells it when to wrap up ([`wrap_up`]), and at the
/// hammer (`lifecycle.shutdown_timeout`) counts it in the log and cuts it. A response that
/// ends itself soon after [`wrap_up`] fires (a WebSocket Close 1001, a last SSE event) lets
/// its client move to the next generation without an error, and the old process exit early.
/// [`wrap_up`] also fires when the response has run for its lifetime, so that no client holds
/// one forever: the client reconnects just the same.
///
/// [`wrap_up`]: LongLived::wrap_up
#[derive(Debug)]
pub struct LongLived {
    /// The drain signal in force when the response began: after a rollback, a fresh one.
    drain: CancellationToken,
    ends_at: tokio::time::Instant,
    _tracked: TaskTrackerToken,
}

/// Why a long-lived response is told to wrap up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrapUp {
    /// The drain began: the next generation (or none, at a shutdown) takes the reconnection.
    Draining,
    /// The response ran for its lifetime (`limits.stream_lifetime`).
    LifetimeOver,
}

impl LongLived {
    /// Resolves when the response should tell its client to reconnect and end: at once if the
    /// drain has begun or the lifetime is over.
    pub async fn wrap_up(&self) -> WrapUp {
        tokio::select! {
            // The drain first: it is the reason that tells the client the process is going.
            biased;
            () = self.drain.cancelled() => WrapUp::Draining,
            () = tokio::time::sleep_until(self.ends_at) => WrapUp::LifetimeOver,
        }
    }
}

/// Decrements the open-connection count when the connection task ends, however it ends.
#[derive(Debug)]
pub(crate) struct ConnectionGuard {
    state: ProcessState,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.state
            .inner
            .open_connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Uncounts a connection's protocol when the connection task ends, however it ends.
#[derive(Debug)]
pub(crate) struct WireGuard {
    state: ProcessState,
    wire: Wire,
}

impl Drop for WireGuard {
    fn drop(&mut self) {
        self.state.inner.by_wire[self.wire as usize].fetch_sub(1, Ordering::Relaxed);
    }
}

/// A poisoned lock here only means a panic elsewhere while holding plain data; the data is
/// still whole, so keep going rather than take the server down.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
