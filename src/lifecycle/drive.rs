//! Runs one connection to its end, with the two things that may end it early: the drain's
//! signal (a graceful shutdown) and the watchdog's timer (a client too slow or too quiet).
//!
//! The connection's task wakes up for its I/O once or twice per request. A `select!` over the
//! three futures polled the signal and the timer at each of those wake-ups, though they almost
//! never fire: a timer poll, a waker registration and a cancellation check per request, about
//! 170 instructions of the 15,000 of `GET /` (BENCHMARKS.md, "Instructions per request"). Here
//! they are polled with a waker of their own, which notes that one of them woke the task, and
//! only then, or at the first poll.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use futures_util::task::AtomicWaker;

use super::state::ProcessState;
use super::watch::{Activity, Verdict, Watchdog};

/// What `drive` needs to keep a connection within its bounds.
pub(super) struct Watch<'a> {
    pub(super) watchdog: Watchdog,
    pub(super) activity: Arc<Activity>,
    pub(super) process: &'a ProcessState,
}

/// The waker the signal and the timer are polled with: it wakes the connection's task and
/// notes that it was one of them.
#[derive(Debug)]
struct Alarm {
    rang: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Alarm {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.rang.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// Runs a connection to its end, asking it to shut down gracefully once `signal` fires or the
/// watchdog asks for it, and dropping it when the watchdog says its client is at fault.
pub(super) async fn drive<C, S>(
    conn: C,
    signal: S,
    shutdown: impl Fn(Pin<&mut C>),
    mut watch: Watch<'_>,
) -> hyper::Result<()>
where
    C: Future<Output = hyper::Result<()>>,
    S: Future<Output = ()>,
{
    let mut conn = pin!(conn);
    let mut signal = pin!(signal);
    let mut signalled = false;
    let mut shut_down = false;
    let first = watch.watchdog.next_check(Instant::now());
    let tick = tokio::time::sleep_until(tokio::time::Instant::from_std(first));
    let mut tick = pin!(tick);
    // Rung at the start, so that the first poll registers the signal and the timer.
    let alarm = Arc::new(Alarm {
        rang: AtomicBool::new(true),
        task: AtomicWaker::new(),
    });
    let alarm_waker = Waker::from(alarm.clone());
    std::future::poll_fn(|cx| {
        loop {
            // The connection first: a request whose bytes have arrived is read (and so
            // finished, not dropped) before a shutdown that is ready at the same moment.
            if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                return Poll::Ready(result);
            }
            // Before the check below, so that a ring after it wakes this task.
            alarm.task.register(cx.waker());
            if !alarm.rang.swap(false, Ordering::AcqRel) {
                return Poll::Pending;
            }
            let mut alarm_cx = Context::from_waker(&alarm_waker);
            let mut acted = false;
            if !signalled && signal.as_mut().poll(&mut alarm_cx).is_ready() {
                signalled = true;
                acted = true;
                watch.watchdog.closing(Instant::now());
                if !std::mem::replace(&mut shut_down, true) {
                    shutdown(conn.as_mut());
                }
            }
            if tick.as_mut().poll(&mut alarm_cx).is_ready() {
                acted = true;
                let now = Instant::now();
                match watch.watchdog.check(watch.activity.seen(), now) {
                    Verdict::Fine => {}
                    Verdict::Close(reason) => {
                        tracing::debug!(reason = reason.label(), "closing a connection");
                        watch.process.limit_counters().record_closed(reason);
                        watch.watchdog.closing(now);
                        if !std::mem::replace(&mut shut_down, true) {
                            shutdown(conn.as_mut());
                        }
                    }
                    Verdict::Cut(reason) => {
                        tracing::debug!(reason = reason.label(), "cutting a connection");
                        watch.process.limit_counters().record_closed(reason);
                        return Poll::Ready(Ok(()));
                    }
                }
                let next = watch.watchdog.next_check(now);
                tick.as_mut().reset(tokio::time::Instant::from_std(next));
                // The reset timer must be polled again to be armed: ring for the next turn.
                alarm.rang.store(true, Ordering::Release);
            }
            if !acted {
                return Poll::Pending;
            }
            // A shutdown was asked for, or the timer re-armed: the connection may have work
            // to do now (a graceful shutdown is acted on at its next poll).
        }
    })
    .await
}
