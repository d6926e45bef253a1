//! The [`Watchdog`]: one connection's time bounds (`[limits]`) judged against what its
//! [`Activity`] counted, at each tick of the connection's one timer.

use std::time::{Duration, Instant};

use super::Seen;
use crate::lifecycle::limits::{CloseReason, ConnLimits};

/// What the watchdog wants done with the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Fine,
    /// Ask it to close: HTTP/1 closes once idle, HTTP/2 sends GOAWAY and lets streams finish.
    Close(CloseReason),
    /// Drop it now: its client is the reason it cannot close by itself.
    Cut(CloseReason),
}

/// One connection's bounds, checked against its [`Activity`] at each tick.
#[derive(Debug)]
pub(crate) struct Watchdog {
    limits: ConnLimits,
    http2: bool,
    accepted: Instant,
    /// Bytes read before HTTP began (a TLS handshake's): not a sign of an HTTP/2 handshake.
    read_before: u64,
    last: Seen,
    /// Since when the connection waits for a request (no response open, none started since).
    waiting: Option<Instant>,
    /// Since when a started HTTP/1 request head waits for its end.
    head: Option<Instant>,
    /// Since when a write waits for room in the socket.
    write_stalled: Option<Instant>,
    /// Since when open responses, their handlers done, send nothing.
    send_stalled: Option<Instant>,
    /// Since when the connection was asked to close.
    closing: Option<Instant>,
}

impl Watchdog {
    pub(crate) fn new(limits: ConnLimits, http2: bool, accepted: Instant) -> Watchdog {
        Watchdog {
            limits,
            http2,
            accepted,
            read_before: 0,
            last: Seen::default(),
            waiting: Some(accepted),
            head: None,
            write_stalled: None,
            send_stalled: None,
            closing: None,
        }
    }

    /// HTTP starts only now, after `read` bytes of a TLS handshake: the first request's bound
    /// counts from here, and HTTP/2 has begun only once more than those bytes came.
    pub(crate) fn after_handshake(mut self, read: u64, now: Instant) -> Watchdog {
        self.accepted = now;
        self.waiting = Some(now);
        self.read_before = read;
        self
    }

    /// When to check next: at the next tick, or sooner at the deadline of a bound already
    /// running, so that a bound fires at most one tick after it ends rather than two.
    pub(crate) fn next_check(&self, now: Instant) -> Instant {
        let limits = self.limits;
        let waiting_deadline = self.waiting.map(|since| match self.closing {
            Some(closing) => closing.max(since) + limits.header_read_timeout,
            None => since + limits.idle_timeout,
        });
        let first_request =
            (self.last.started == 0).then_some(self.accepted + limits.header_read_timeout);
        [
            waiting_deadline,
            first_request,
            self.head.map(|since| since + limits.header_read_timeout),
            self.write_stalled.map(|since| since + limits.send_timeout),
            self.send_stalled.map(|since| since + limits.send_timeout),
        ]
        .into_iter()
        .flatten()
        .filter(|&deadline| deadline > now)
        .fold(now + limits.tick(), Instant::min)
    }

    /// The connection was asked to close (by the drain, or by a [`Verdict::Close`]).
    pub(crate) fn closing(&mut self, now: Instant) {
        self.closing.get_or_insert(now);
    }

    pub(crate) fn check(&mut self, seen: Seen, now: Instant) -> Verdict {
        let last = std::mem::replace(&mut self.last, seen);
        let limits = self.limits;
        let over = |since: Option<Instant>, bound: Duration| {
            since.is_some_and(|since| now.saturating_duration_since(since) >= bound)
        };

        // The socket takes nothing: the client does not read.
        let write_stalled = seen.write_waiting && seen.written == last.written;
        self.write_stalled = since_while(self.write_stalled, write_stalled, now);
        // Responses whose handlers are done send nothing: a full HTTP/2 window, or a stream
        // with nothing to say. A handler's own silence is server.request_timeout's business.
        let send_stalled = seen.open > seen.handling && seen.frames == last.frames;
        self.send_stalled = since_while(self.send_stalled, send_stalled, now);
        if over(self.write_stalled, limits.send_timeout)
            || over(self.send_stalled, limits.send_timeout)
        {
            return Verdict::Cut(CloseReason::SendTimeout);
        }

        if seen.open > 0 {
            self.waiting = None;
            self.head = None;
            return self.enough_requests(seen);
        }
        if seen.started != last.started {
            // Requests came and went since the last look: the wait began after them.
            self.waiting = Some(now);
            self.head = None;
        }
        let since = *self.waiting.get_or_insert(now);
        if seen.started == 0 {
            // The first request: HTTP/1 must send it whole, HTTP/2 at least its handshake
            // (anything after the preface), within the header bound of the accept.
            let begun = self.http2 && seen.read > self.read_before;
            if !begun && over(Some(self.accepted), limits.header_read_timeout) {
                return Verdict::Cut(CloseReason::HeaderTimeout);
            }
        } else if !self.http2 && seen.read > seen.read_at_rest {
            let head = *self.head.get_or_insert(now);
            if over(Some(head), limits.header_read_timeout) {
                return Verdict::Cut(CloseReason::HeaderTimeout);
            }
        }
        match self.closing {
            // Asked to close and still here with nothing in progress: the peer does not
            // finish the close (an HTTP/2 client that never answers the GOAWAY's PING).
            Some(closing) if over(Some(closing.max(since)), limits.header_read_timeout) => {
                Verdict::Cut(CloseReason::Idle)
            }
            Some(_) => Verdict::Fine,
            None if over(Some(since), limits.idle_timeout) => Verdict::Close(CloseReason::Idle),
            None => self.enough_requests(seen),
        }
    }

    /// HTTP/2 is told to go away once it has started its quota of requests; HTTP/1 learns it
    /// from `Connection: close` on the last response.
    fn enough_requests(&self, seen: Seen) -> Verdict {
        if self.http2
            && self.closing.is_none()
            && seen.started >= self.limits.requests_per_connection
        {
            return Verdict::Close(CloseReason::RequestsPerConnection);
        }
        Verdict::Fine
    }
}

/// `since` while `condition` holds (set to `now` when it starts), `None` once it does not.
fn since_while(since: Option<Instant>, condition: bool, now: Instant) -> Option<Instant> {
    condition.then(|| since.unwrap_or(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnLimits {
        let mut limits = ConnLimits::of(&crate::settings::Settings::default().limits);
        limits.header_read_timeout = Duration::from_secs(10);
        limits.idle_timeout = Duration::from_secs(60);
        limits.send_timeout = Duration::from_secs(30);
        limits.requests_per_connection = 1000;
        limits
    }

    /// Drives a watchdog through `steps` of (seconds since accept, counters); returns the first
    /// verdict that is not `Fine`, with its time.
    fn run(http2: bool, steps: &[(u64, Seen)]) -> Option<(u64, Verdict)> {
        let start = Instant::now();
        let mut dog = Watchdog::new(limits(), http2, start);
        steps.iter().find_map(|&(at, seen)| {
            let verdict = dog.check(seen, start + Duration::from_secs(at));
            (verdict != Verdict::Fine).then_some((at, verdict))
        })
    }

    /// The same counters every second from `from` to `to`.
    fn hold(from: u64, to: u64, seen: Seen) -> Vec<(u64, Seen)> {
        (from..=to).map(|at| (at, seen)).collect()
    }

    #[test]
    fn a_silent_new_connection_is_cut_at_the_header_bound() {
        let verdict = run(false, &hold(1, 20, Seen::default()));
        assert_eq!(
            verdict,
            Some((10, Verdict::Cut(CloseReason::HeaderTimeout)))
        );
        // HTTP/2: the preface alone is not a handshake.
        let verdict = run(true, &hold(1, 20, Seen::default()));
        assert_eq!(
            verdict,
            Some((10, Verdict::Cut(CloseReason::HeaderTimeout)))
        );
    }

    #[test]
    fn an_http2_connection_that_shook_hands_is_only_idle() {
        let seen = Seen {
            read: 9,
            written: 2,
            ..Seen::default()
        };
        // Waiting counts from the accept, as there was never a request.
        let verdict = run(true, &hold(1, 100, seen));
        assert_eq!(verdict, Some((60, Verdict::Close(CloseReason::Idle))));
    }

    #[test]
    fn over_tls_the_handshake_is_not_http2_begun_and_the_bound_counts_from_its_end() {
        let start = Instant::now();
        let handshake = Seen {
            read: 600,
            ..Seen::default()
        };
        let at = |secs| start + Duration::from_secs(secs);
        let mut dog = Watchdog::new(limits(), true, start).after_handshake(600, at(5));
        assert_eq!(dog.check(handshake, at(14)), Verdict::Fine);
        assert_eq!(
            dog.check(handshake, at(15)),
            Verdict::Cut(CloseReason::HeaderTimeout)
        );
    }

    #[test]
    fn a_kept_alive_connection_closes_after_the_idle_bound_since_its_last_request() {
        let busy = Seen {
            started: 1,
            open: 1,
            handling: 1,
            read: 100,
            ..Seen::default()
        };
        let done = Seen {
            started: 1,
            read: 100,
            read_at_rest: 100,
            frames: 1,
            written: 1,
            ..Seen::default()
        };
        let mut steps = hold(1, 5, busy);
        steps.extend(hold(6, 100, done));
        assert_eq!(
            run(false, &steps),
            Some((66, Verdict::Close(CloseReason::Idle)))
        );
    }

    #[test]
    fn a_second_request_head_that_never_ends_is_cut_at_the_header_bound() {
        let done = Seen {
            started: 1,
            read: 100,
            read_at_rest: 100,
            ..Seen::default()
        };
        let partial = Seen { read: 110, ..done };
        let mut steps = hold(1, 5, done);
        steps.extend(hold(6, 30, partial));
        assert_eq!(
            run(false, &steps),
            Some((16, Verdict::Cut(CloseReason::HeaderTimeout)))
        );
    }

    #[test]
    fn a_client_that_does_not_read_is_cut_at_the_send_bound() {
        let stuck = Seen {
            started: 1,
            open: 1,
            written: 5,
            write_waiting: true,
            frames: 1,
            ..Seen::default()
        };
        assert_eq!(
            run(false, &hold(1, 60, stuck)),
            Some((32, Verdict::Cut(CloseReason::SendTimeout)))
        );
        // Writes that keep going are fine, however long the response.
        let steps: Vec<(u64, Seen)> = (1..=100)
            .map(|at| {
                let moving = Seen {
                    written: at,
                    frames: at,
                    ..stuck
                };
                (at, moving)
            })
            .collect();
        assert_eq!(run(false, &steps), None);
    }

    #[test]
    fn responses_stalled_by_their_window_are_cut_but_slow_handlers_are_not() {
        let stalled = Seen {
            started: 50,
            open: 50,
            read: 500,
            written: 3,
            frames: 0,
            ..Seen::default()
        };
        assert_eq!(
            run(true, &hold(1, 60, stalled)),
            Some((31, Verdict::Cut(CloseReason::SendTimeout)))
        );
        let slow_handler = Seen {
            handling: 1,
            open: 1,
            started: 1,
            ..Seen::default()
        };
        assert_eq!(run(false, &hold(1, 200, slow_handler)), None);
    }

    #[test]
    fn http2_is_told_to_go_away_after_its_quota_of_requests() {
        let seen = Seen {
            started: 1000,
            open: 1,
            handling: 1,
            read: 300,
            ..Seen::default()
        };
        assert_eq!(
            run(true, &[(1, seen)]),
            Some((1, Verdict::Close(CloseReason::RequestsPerConnection)))
        );
    }

    #[test]
    fn the_next_check_is_at_the_next_tick_or_a_running_deadline() {
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let mut dog = Watchdog::new(limits(), false, start);
        let tick = limits().tick();
        // A new connection: its first request is due 10 s after the accept.
        assert_eq!(dog.next_check(start), start + tick);
        assert_eq!(dog.next_check(at(9)), at(10));
        // A request came and went before the look at 20 s: idle since then, due at 80 s, not
        // at the tick after it.
        let served = Seen {
            started: 1,
            read: 10,
            read_at_rest: 10,
            ..Seen::default()
        };
        assert_eq!(dog.check(served, at(20)), Verdict::Fine);
        assert_eq!(dog.check(served, at(21)), Verdict::Fine);
        assert_eq!(dog.next_check(at(79)), at(80));
        assert_eq!(dog.check(served, at(80)), Verdict::Close(CloseReason::Idle));
    }

    #[test]
    fn a_connection_asked_to_close_that_stays_idle_is_cut() {
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let mut dog = Watchdog::new(limits(), true, start);
        let idle = Seen {
            read: 9,
            ..Seen::default()
        };
        assert_eq!(dog.check(idle, at(60)), Verdict::Close(CloseReason::Idle));
        dog.closing(at(60));
        assert_eq!(dog.check(idle, at(65)), Verdict::Fine);
        assert_eq!(dog.check(idle, at(70)), Verdict::Cut(CloseReason::Idle));
    }
}
