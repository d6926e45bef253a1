//! Memory given back to the system after a burst of connections.
//!
//! glibc's allocator keeps what freed connections used in its per-thread arenas, so a process
//! that held a flood of connections stays at its peak size long after they are gone: a flood of
//! 1,200 idle connections left 20 MiB resident where the idle process uses 6. `malloc_trim`
//! returns the free pages. It walks every arena under its lock, so it runs only after a burst:
//! when the open connections fell to half of their peak since the last trim, at most every
//! 10 s. (40 HTTP/2 connections can pin 70 MiB of responses: bursts are counted from a few
//! dozen connections, not thousands.) Other allocators
//! (musl's, in the container image) return memory by themselves; there it does nothing.

use std::time::Duration;

use super::state::ProcessState;

/// How often the connection count is looked at.
const EVERY: Duration = Duration::from_secs(10);
/// Bursts smaller than this leave too little behind to be worth a trim.
const BURST: usize = 32;

/// Trims after each burst, for the life of the runtime.
pub(crate) async fn give_back_after_bursts(process: ProcessState) {
    let mut interval = tokio::time::interval(EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut peak = 0;
    loop {
        interval.tick().await;
        let open = process.open_connections();
        peak = peak.max(open);
        if peak >= BURST && open <= peak / 2 {
            trim();
            peak = open;
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code, reason = "malloc_trim has no safe binding")]
fn trim() {
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas, under their
    // locks; it is safe to call from any thread at any time.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
