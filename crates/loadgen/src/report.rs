//! The outcome of a load run: counts by failure kind and one compact sample per request, so a
//! caller can ask about any time window (e.g. the second around each upgrade).

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::time::Duration;

use crate::{Failure, FailureKind, Mode};

/// One request: when it started (from the start of the load), how long it took, whether it got a
/// full 2xx response, how many connections it opened. 16 bytes, so millions fit in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Microseconds from the start of the load to the start of this request.
    pub start_us: u64,
    /// Microseconds until the full response or the failure (saturates at about 71 minutes).
    pub latency_us: u32,
    /// Whether the request got a full 2xx response.
    pub ok: bool,
    /// TCP connections this request opened successfully: 0 on a reused connection, 1 when it
    /// needed a new one (the first request of a worker, every request in close mode, the first
    /// after the server closed a keep-alive connection), more when HTTP/2 GOAWAYs refused it on
    /// new ones. Summed over all samples, [`Report::connects`].
    pub connects: u8,
}

impl Sample {
    /// When the request started, from the start of the load.
    pub fn start(&self) -> Duration {
        Duration::from_micros(self.start_us)
    }

    /// How long the request took.
    pub fn latency(&self) -> Duration {
        Duration::from_micros(u64::from(self.latency_us))
    }
}

/// One failed request, kept in full for debugging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureDetail {
    /// When the request started, from the start of the load.
    pub at: Duration,
    /// What went wrong.
    pub failure: Failure,
}

/// What a load run did. Every request that was started is counted exactly once, as ok or under
/// one failure kind.
#[derive(Debug, Clone)]
pub struct Report {
    /// The protocol mode of the run.
    pub mode: Mode,
    /// The number of concurrent connections (workers).
    pub connections: usize,
    /// From the start of the load until the last worker finished.
    pub elapsed: Duration,
    /// Requests that got a full 2xx response.
    pub ok: u64,
    /// Failed requests by kind (kinds with no failure are absent).
    pub failures: BTreeMap<FailureKind, u64>,
    /// TCP connections opened successfully (keep-alive and h2 reuse them; close mode opens one per
    /// request).
    pub connects: u64,
    /// HTTP/2 requests the server refused with GOAWAY (a stream above its last stream id, which
    /// it says it did not process) and that were sent again on a new connection, as RFC 9113
    /// §8.7 allows and browsers do. Each is counted once, as ok or failed, by its last try.
    pub refused: u64,
    /// One sample per request, sorted by start time.
    pub samples: Vec<Sample>,
    /// Requests that have no sample because the run exceeded [`MAX_SAMPLES`](crate::MAX_SAMPLES)
    /// (they are still in `ok` and `failures`).
    pub samples_dropped: u64,
    /// The first failures in the order they were recorded (at most
    /// [`MAX_FAILURE_DETAILS`](crate::MAX_FAILURE_DETAILS)).
    pub first_failures: Vec<FailureDetail>,
    /// The body of every 2xx response, when [`LoadConfig::keep_bodies`](crate::LoadConfig) was
    /// set (else empty), in no particular order.
    pub bodies: Vec<String>,
}

impl Report {
    /// All requests: `ok + failed()`.
    pub fn total(&self) -> u64 {
        self.ok + self.failed()
    }

    /// All failed requests, of every kind.
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    /// The failures of one kind.
    pub fn failed_of(&self, kind: FailureKind) -> u64 {
        self.failures.get(&kind).copied().unwrap_or(0)
    }

    /// The samples of the requests that started within `window` (all of them for `None`).
    pub fn samples_in(&self, window: Option<Range<Duration>>) -> &[Sample] {
        let Some(window) = window else {
            return &self.samples;
        };
        let from = micros(window.start);
        let to = micros(window.end);
        let first = self
            .samples
            .partition_point(|sample| sample.start_us < from);
        let end = self.samples.partition_point(|sample| sample.start_us < to);
        &self.samples[first..end.max(first)]
    }

    /// The `q` quantile (0.0 to 1.0, nearest rank) of the latency of the successful requests that
    /// started within `window`; `None` if there are none.
    pub fn quantile(&self, q: f64, window: Option<Range<Duration>>) -> Option<Duration> {
        let mut latencies: Vec<u32> = self
            .samples_in(window)
            .iter()
            .filter(|sample| sample.ok)
            .map(|sample| sample.latency_us)
            .collect();
        if latencies.is_empty() {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * latencies.len() as f64).ceil() as usize;
        let index = rank.saturating_sub(1).min(latencies.len() - 1);
        let (_, nth, _) = latencies.select_nth_unstable(index);
        Some(Duration::from_micros(u64::from(*nth)))
    }

    /// Successful requests per second: those that started within `window` divided by its length,
    /// or, for `None`, all of them divided by [`Report::elapsed`]. 0.0 for an empty window.
    pub fn throughput(&self, window: Option<Range<Duration>>) -> f64 {
        let (ok, seconds) = match window {
            None => (self.ok, self.elapsed.as_secs_f64()),
            Some(window) => {
                let seconds = window.end.saturating_sub(window.start).as_secs_f64();
                let ok = self
                    .samples_in(Some(window))
                    .iter()
                    .filter(|s| s.ok)
                    .count();
                (ok as u64, seconds)
            }
        };
        if seconds > 0.0 {
            ok as f64 / seconds
        } else {
            0.0
        }
    }

    /// TCP connections opened by the requests that started within `window` (all of them,
    /// [`Report::connects`], for `None`): e.g. how fast clients reconnect after a server told them
    /// to (`Connection: close`, GOAWAY).
    pub fn connects_in(&self, window: Option<Range<Duration>>) -> u64 {
        match window {
            None => self.connects,
            Some(window) => self
                .samples_in(Some(window))
                .iter()
                .map(|s| u64::from(s.connects))
                .sum(),
        }
    }

    /// Failed requests that started within `window` (all of them for `None`, including those
    /// without a sample).
    pub fn failed_in(&self, window: Option<Range<Duration>>) -> u64 {
        match window {
            None => self.failed(),
            Some(window) => {
                let failed = self.samples_in(Some(window)).iter().filter(|s| !s.ok);
                failed.count() as u64
            }
        }
    }
}

/// A multi-line summary for logs and assertion messages.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} x{}: {} requests in {:.2?} ({:.0} ok/s): {} ok, {} failed; {} connects",
            self.mode,
            self.connections,
            self.total(),
            self.elapsed,
            self.throughput(None),
            self.ok,
            self.failed(),
            self.connects,
        )?;
        if self.refused > 0 {
            write!(f, "; {} refused by GOAWAY and sent again", self.refused)?;
        }
        let quantiles = [0.5, 0.99, 1.0].map(|q| self.quantile(q, None));
        if let [Some(p50), Some(p99), Some(max)] = quantiles {
            write!(f, "; latency p50 {p50:.2?}, p99 {p99:.2?}, max {max:.2?}")?;
        }
        if !self.failures.is_empty() {
            let counts: Vec<String> = self
                .failures
                .iter()
                .map(|(kind, count)| format!("{kind} {count}"))
                .collect();
            write!(f, "\nfailures: {}", counts.join(", "))?;
        }
        for detail in &self.first_failures {
            write!(f, "\n  at {:.3?}: {}", detail.at, detail.failure)?;
        }
        Ok(())
    }
}

/// A duration in whole microseconds, saturating.
pub(crate) fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    /// 100 ok requests, one every 10 ms with latency (i + 1) ms, and a failure at 505 ms.
    fn report() -> Report {
        let mut samples: Vec<Sample> = (0..100)
            .map(|i| Sample {
                start_us: i * 10_000,
                latency_us: u32::try_from((i + 1) * 1_000).expect("small"),
                ok: true,
                // A new connection every 10th request.
                connects: u8::from(i % 10 == 0),
            })
            .collect();
        samples.push(Sample {
            start_us: 505_000,
            latency_us: 7,
            ok: false,
            connects: 1,
        });
        samples.sort_by_key(|sample| sample.start_us);
        Report {
            mode: Mode::KeepAlive,
            connections: 1,
            elapsed: ms(1_000),
            ok: 100,
            failures: BTreeMap::from([(FailureKind::EarlyClose, 1)]),
            connects: 11,
            refused: 0,
            samples,
            samples_dropped: 0,
            first_failures: Vec::new(),
            bodies: Vec::new(),
        }
    }

    #[test]
    fn quantiles_use_nearest_rank_over_ok_samples() {
        let report = report();
        assert_eq!(report.quantile(0.5, None), Some(ms(50)));
        assert_eq!(report.quantile(0.99, None), Some(ms(99)));
        assert_eq!(report.quantile(1.0, None), Some(ms(100)));
        assert_eq!(report.quantile(0.0, None), Some(ms(1)));
        // Requests started in [200 ms, 300 ms) are i = 20..30, latencies 21..=30 ms.
        assert_eq!(report.quantile(1.0, Some(ms(200)..ms(300))), Some(ms(30)));
        assert_eq!(report.quantile(0.1, Some(ms(200)..ms(300))), Some(ms(21)));
        assert_eq!(report.quantile(0.5, Some(ms(2_000)..ms(3_000))), None);
    }

    #[test]
    fn windows_count_by_start_time() {
        let report = report();
        assert_eq!(report.total(), 101);
        assert_eq!(report.failed(), 1);
        assert_eq!(report.failed_of(FailureKind::EarlyClose), 1);
        assert_eq!(report.failed_in(Some(ms(500)..ms(510))), 1);
        assert_eq!(report.failed_in(Some(ms(0)..ms(500))), 0);
        assert_eq!(report.samples_in(Some(ms(500)..ms(510))).len(), 2);
        assert!((report.throughput(None) - 100.0).abs() < 1e-9);
        // 10 ok requests in 100 ms.
        assert!((report.throughput(Some(ms(100)..ms(200))) - 100.0).abs() < 1e-9);
        assert_eq!(report.throughput(Some(ms(300)..ms(300))), 0.0);
        assert!(report.samples_in(Some(ms(300)..ms(100))).is_empty());
    }

    #[test]
    fn connects_count_by_start_time() {
        let report = report();
        assert_eq!(report.connects_in(None), 11);
        // Requests 0, 10, ..., 90 opened one each; the failed one at 505 ms one too.
        assert_eq!(report.connects_in(Some(ms(0)..ms(1_000))), 11);
        assert_eq!(report.connects_in(Some(ms(500)..ms(510))), 2);
        assert_eq!(report.connects_in(Some(ms(1)..ms(100))), 0);
        assert_eq!(report.connects_in(Some(ms(300)..ms(100))), 0);
    }

    #[test]
    fn a_sample_stays_16_bytes() {
        assert_eq!(std::mem::size_of::<Sample>(), 16);
    }

    #[test]
    fn display_names_failures() {
        let text = report().to_string();
        assert!(text.contains("100 ok, 1 failed"), "{text}");
        assert!(text.contains("early close 1"), "{text}");
    }
}
