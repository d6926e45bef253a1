//! Spreading the lame duck's closes over a window (`lifecycle.close_spread`), as HAProxy's
//! `close-spread-time` does: each connection has its own moment in the window, and is told to
//! close (`Connection: close` on HTTP/1, GOAWAY on HTTP/2) only once that moment has passed.
//!
//! Without it every keep-alive client is told at once and reconnects within one request
//! interval: 5,000 connections arrive at the next generation in a few milliseconds, overflow
//! the accept queue (4,096) into SYN retransmits a second later, and a new client's connection
//! waits behind them all. Spread over a second they arrive at 5,000 per second, which the new
//! generation absorbs as they come (BENCHMARKS.md, "Many connections").

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A connection's place in the window, as a fraction of it in units of 2^-32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot(u32);

impl Slot {
    /// The slot of the `n`-th connection: Fibonacci hashing (n/φ modulo 1) spreads any run of
    /// consecutive connections evenly over the window, without a random number generator.
    pub(crate) fn nth(n: u64) -> Slot {
        // 2^64 / φ, the multiplier of Fibonacci hashing; the top 32 bits are the fraction.
        const INVERSE_GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
        Slot((n.wrapping_mul(INVERSE_GOLDEN) >> 32) as u32)
    }

    /// Where this slot falls in `window`.
    fn offset(self, window: Duration) -> Duration {
        let nanos = window.as_nanos().min(u128::from(u64::MAX)) as u64;
        Duration::from_nanos(((u128::from(nanos) * u128::from(self.0)) >> 32) as u64)
    }
}

/// The window of the current drain. Read on every HTTP/1 response while draining, so it is
/// two atomics rather than a lock.
#[derive(Debug)]
pub(crate) struct CloseSpread {
    epoch: Instant,
    /// When the drain began, in nanoseconds since `epoch`.
    began: AtomicU64,
    window: AtomicU64,
}

impl CloseSpread {
    pub(crate) fn new() -> CloseSpread {
        CloseSpread {
            epoch: Instant::now(),
            began: AtomicU64::new(0),
            window: AtomicU64::new(0),
        }
    }

    /// A drain begins now, spreading its closes over `window`. Called before the process is
    /// marked draining, so a response that sees the drain sees its window.
    pub(crate) fn begin(&self, window: Duration) {
        self.window
            .store(saturating_nanos(window), Ordering::Relaxed);
        self.began
            .store(saturating_nanos(self.epoch.elapsed()), Ordering::Release);
    }

    /// How long after the drain began `slot` is told to close.
    fn offset(&self, slot: Slot) -> Duration {
        slot.offset(Duration::from_nanos(self.window.load(Ordering::Relaxed)))
    }

    /// How long until `slot`'s moment in the current drain (zero once it has passed).
    pub(crate) fn until_due(&self, slot: Slot) -> Duration {
        let began = Duration::from_nanos(self.began.load(Ordering::Acquire));
        let due = began + self.offset(slot);
        due.saturating_sub(self.epoch.elapsed())
    }

    /// Whether `slot`'s moment in the current drain has passed. Meaningful only while the
    /// process is draining.
    pub(crate) fn is_due(&self, slot: Slot) -> bool {
        self.until_due(slot).is_zero()
    }
}

fn saturating_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_connections_cover_the_window_evenly() {
        let window = Duration::from_secs(1);
        // Any 1,000 consecutive connections: each tenth of the window gets 100 of them, give
        // or take the few that the low-discrepancy sequence allows.
        for start in [0_u64, 1, 12_345, u64::MAX - 2_000] {
            let mut per_tenth = [0_u32; 10];
            for n in start..start + 1_000 {
                let offset = Slot::nth(n).offset(window);
                assert!(offset < window, "{offset:?}");
                per_tenth[(offset.as_millis() / 100) as usize] += 1;
            }
            assert!(
                per_tenth.iter().all(|&count| (95..=105).contains(&count)),
                "from {start}: {per_tenth:?}"
            );
        }
    }

    #[test]
    fn a_slot_is_due_at_its_offset_after_the_drain_began() {
        let spread = CloseSpread::new();
        spread.begin(Duration::from_secs(3600));
        let first = Slot(0);
        let late = Slot(u32::MAX);
        assert!(spread.is_due(first), "offset 0 is due at once");
        assert!(!spread.is_due(late), "offset ~1h is not due yet");
        let left = spread.until_due(late);
        assert!(left > Duration::from_secs(3590) && left <= Duration::from_secs(3600));
        // A zero window (close_spread = 0s) tells every connection at once.
        spread.begin(Duration::ZERO);
        assert!(spread.is_due(late));
    }
}
