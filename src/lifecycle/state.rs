//! What this process is and what it is doing: identity, phase, listeners, connections and the
//! record of upgrades, shared read-only with the application (for `/readyz`, `/-/status`,
//! `/metrics` and long responses that must end when a drain begins).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// Where the process is in its life. Moves forward only, except `Upgrading` which returns to
/// `Serving` when an upgrade fails.
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
}

/// An upgrade request that was refused because of what the process was doing.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RefusalRecord {
    pub seq: u64,
    pub reason: String,
    /// `true` when refused because another upgrade is in flight: its outcome is still to come.
    pub in_flight: bool,
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
    /// Cancelled when the drain begins: long responses (SSE, streams) watch it and end themselves.
    drain: CancellationToken,
    open_connections: AtomicUsize,
    listeners: Mutex<Vec<ListenerInfo>>,
    upgrades_ok: AtomicU64,
    upgrades_failed: AtomicU64,
    last_upgrade: Mutex<Option<UpgradeRecord>>,
    upgrades_refused: AtomicU64,
    last_refusal: Mutex<Option<RefusalRecord>>,
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
                drain: CancellationToken::new(),
                open_connections: AtomicUsize::new(0),
                listeners: Mutex::new(Vec::new()),
                upgrades_ok: AtomicU64::new(0),
                upgrades_failed: AtomicU64::new(0),
                last_upgrade: Mutex::new(None),
                upgrades_refused: AtomicU64::new(0),
                last_refusal: Mutex::new(None),
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

    /// Resolves when the drain begins. Long-lived responses select on it and finish.
    pub fn drain_started(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.inner.drain.clone().cancelled_owned()
    }

    pub fn open_connections(&self) -> usize {
        self.inner.open_connections.load(Ordering::Relaxed)
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

    pub fn last_upgrade(&self) -> Option<UpgradeRecord> {
        lock(&self.inner.last_upgrade).clone()
    }

    pub fn upgrades_refused(&self) -> u64 {
        self.inner.upgrades_refused.load(Ordering::Relaxed)
    }

    pub fn last_refusal(&self) -> Option<RefusalRecord> {
        lock(&self.inner.last_refusal).clone()
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

    pub(crate) fn begin_drain(&self) {
        self.set_phase(Phase::Draining);
        self.inner.drain.cancel();
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

    pub(crate) fn record_upgrade(&self, ok: bool, new_pid: Option<u32>, error: Option<String>) {
        let counter = if ok {
            &self.inner.upgrades_ok
        } else {
            &self.inner.upgrades_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut last = lock(&self.inner.last_upgrade);
        let seq = last.as_ref().map_or(1, |r| r.seq + 1);
        *last = Some(UpgradeRecord {
            seq,
            at: SystemTime::now(),
            ok,
            new_pid,
            error,
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

/// A poisoned lock here only means a panic elsewhere while holding plain data; the data is
/// still whole, so keep going rather than take the server down.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
