//! A latency histogram that carries across generations: this process's observations in
//! lock-free buckets, plus what the previous generations handed over.
//!
//! prometheus-client's own histogram takes a lock per observation and cannot start from
//! another process's buckets; this one costs two relaxed atomic adds per request, on the
//! observing thread's own stripe (`stripes`), and encodes through the same registry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use serde::{Deserialize, Serialize};

use super::stripes::Striped;

/// Upper bounds of the request-duration buckets, in nanoseconds (100 µs to 30 s, the default
/// request timeout): fine at the low end, where a template's handlers answer.
pub(crate) const REQUEST_BOUNDS: &[u64] = &[
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
];

/// Upper bounds of the drain-duration buckets, in nanoseconds (10 ms to 5 min).
pub(crate) const DRAIN_BOUNDS: &[u64] = &[
    10_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_000_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
    60_000_000_000,
    300_000_000_000,
];

/// This process's counts of a histogram: the sum, then the buckets. Room for the longest
/// bounds here.
const SLOTS: usize = 1 + REQUEST_BOUNDS.len() + 1;
const SUM: usize = 0;
const _: () = assert!(DRAIN_BOUNDS.len() + 2 <= SLOTS);

#[derive(Debug)]
pub(crate) struct Histogram {
    /// Upper bounds in nanoseconds; one more bucket follows for `+Inf`.
    bounds: &'static [u64],
    /// In nanoseconds (slot `SUM`), then per bucket, not cumulative (slot 1 + bucket). The
    /// sum is exact, and an add rather than a compare-and-swap loop on an `f64`; it wraps
    /// after 584 years of summed durations, which Prometheus would read as a counter reset.
    own: Striped<SLOTS>,
    /// The previous generations' totals, replaced (not added to) by each newer report: every
    /// report is cumulative.
    inherited: Counts,
}

#[derive(Debug)]
struct Counts {
    /// Per bucket, not cumulative.
    buckets: Box<[AtomicU64]>,
    /// In nanoseconds: exact, and an add rather than a compare-and-swap loop on an `f64`. Wraps
    /// after 584 years of summed durations, which Prometheus would read as a counter reset.
    sum: AtomicU64,
}

impl Counts {
    fn new(len: usize) -> Counts {
        Counts {
            buckets: (0..len).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }
}

/// A histogram's totals as they cross to the next generation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    /// Upper bounds in nanoseconds, so a build with other buckets can still take them.
    pub(crate) bounds: Vec<u64>,
    /// One more than `bounds`: the last is `+Inf`.
    pub(crate) buckets: Vec<u64>,
    pub(crate) sum: u64,
}

impl Snapshot {
    pub(crate) fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

impl Histogram {
    pub(crate) fn new(bounds: &'static [u64]) -> Histogram {
        assert!(
            bounds.len() + 2 <= SLOTS,
            "histogram bounds longer than SLOTS"
        );
        Histogram {
            bounds,
            own: Striped::default(),
            inherited: Counts::new(bounds.len() + 1),
        }
    }

    pub(crate) fn observe(&self, duration: Duration) {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        // Most requests land in the first buckets: a linear scan beats a binary search here.
        let bucket = self
            .bounds
            .iter()
            .position(|bound| nanos <= *bound)
            .unwrap_or(self.bounds.len());
        self.own.add(1 + bucket, 1);
        self.own.add(SUM, nanos);
    }

    /// The totals since the first generation: this process's plus the inherited ones.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let total =
            |i: usize| self.own.sum(1 + i) + self.inherited.buckets[i].load(Ordering::Relaxed);
        Snapshot {
            bounds: self.bounds.to_vec(),
            buckets: (0..=self.bounds.len()).map(total).collect(),
            sum: self
                .own
                .sum(SUM)
                .wrapping_add(self.inherited.sum.load(Ordering::Relaxed)),
        }
    }

    /// Takes a previous generation's totals. With other bounds (another build), each of its
    /// buckets is counted in the first of ours that holds it: the count and sum stay exact,
    /// only the resolution changes.
    pub(crate) fn adopt(&self, other: &Snapshot) {
        let mut buckets = vec![0u64; self.bounds.len() + 1];
        for (i, count) in other.buckets.iter().enumerate() {
            let ours = match other.bounds.get(i) {
                Some(bound) => self
                    .bounds
                    .iter()
                    .position(|b| b >= bound)
                    .unwrap_or(self.bounds.len()),
                None => self.bounds.len(),
            };
            buckets[ours] = buckets[ours].saturating_add(*count);
        }
        for (slot, count) in self.inherited.buckets.iter().zip(buckets) {
            slot.fetch_max(count, Ordering::Relaxed);
        }
        self.inherited.sum.fetch_max(other.sum, Ordering::Relaxed);
    }

    pub(crate) fn count(&self) -> u64 {
        self.snapshot().count()
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.snapshot();
        let buckets: Vec<(f64, u64)> = snapshot
            .bounds
            .iter()
            .map(|nanos| seconds(*nanos))
            .chain([f64::INFINITY])
            .zip(snapshot.buckets.iter().copied())
            .collect();
        encoder.encode_histogram::<NoLabelSet>(
            seconds(snapshot.sum),
            snapshot.count(),
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

fn seconds(nanos: u64) -> f64 {
    Duration::from_nanos(nanos).as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: &[u64] = &[10, 100];

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::new(BOUNDS);
        for nanos in [5, 10, 11, 100, 101, 5000] {
            h.observe(Duration::from_nanos(nanos));
        }
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![2, 2, 2]);
        assert_eq!(s.sum, 5 + 10 + 11 + 100 + 101 + 5000);
        assert_eq!(s.count(), 6);
    }

    #[test]
    fn inherited_totals_are_replaced_by_newer_reports_never_lowered() {
        let old = Histogram::new(BOUNDS);
        old.observe(Duration::from_nanos(1));
        let new = Histogram::new(BOUNDS);
        new.adopt(&old.snapshot());
        new.observe(Duration::from_nanos(50));
        assert_eq!(new.snapshot().buckets, vec![1, 1, 0]);
        // The old one's final report, after its drain, replaces the first.
        old.observe(Duration::from_nanos(1000));
        new.adopt(&old.snapshot());
        assert_eq!(new.snapshot().buckets, vec![1, 1, 1]);
        assert_eq!(new.snapshot().sum, 1 + 50 + 1000);
        // A stale report arriving late changes nothing.
        new.adopt(&Snapshot {
            bounds: BOUNDS.to_vec(),
            buckets: vec![1, 0, 0],
            sum: 1,
        });
        assert_eq!(new.count(), 3);
    }

    #[test]
    fn other_bounds_are_mapped_into_ours() {
        let new = Histogram::new(BOUNDS);
        new.adopt(&Snapshot {
            bounds: vec![5, 50, 500],
            buckets: vec![1, 2, 3, 4],
            sum: 99,
        });
        // 5 -> le 10, 50 -> le 100, 500 and +Inf -> +Inf.
        assert_eq!(new.snapshot().buckets, vec![1, 2, 7]);
        assert_eq!(new.snapshot().sum, 99);
    }
}
