//! Counters that every request adds to, kept per thread and summed when read.
//!
//! An atomic add is cheap on a cache line this core wrote last, and costs a transfer of the
//! line when another core did: on a 2-core VM, 70-140 ns per add and subtract while both
//! cores count, against about 10 ns (BENCHMARKS.md, "Instructions per request"). Under load
//! both worker threads count every few microseconds, so one shared counter per series would
//! move between the cores on nearly every request. Each thread adds to a stripe of its own
//! instead; a scrape or a handover sums the stripes, which only reads them.

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// At most this many stripes per counter set.
const MAX_STRIPES: usize = 16;

/// Stripes per counter set by default: one per worker thread of the runtime the first counter
/// set is made in (one per core by default; the public requests run on the workers), and 1
/// outside a runtime. Asked of the runtime rather than of `available_parallelism`, which reads the
/// cgroup's files: 0.1 ms of a new generation's start. A thread takes the next stripe when it
/// first counts; past this many threads they share stripes, which stays exact, only slower.
fn stripes() -> usize {
    static STRIPES: OnceLock<usize> = OnceLock::new();
    *STRIPES.get_or_init(|| {
        tokio::runtime::Handle::try_current()
            .map_or(1, |runtime| runtime.metrics().num_workers())
            .clamp(1, MAX_STRIPES)
    })
}

/// A stripe's counters, alone on their cache lines: 128 bytes, as x86 prefetches lines in
/// pairs.
#[derive(Debug)]
#[repr(align(128))]
struct Stripe<const N: usize>([AtomicU64; N]);

/// `N` counters, striped over the threads that add to them.
#[derive(Debug)]
pub(crate) struct Striped<const N: usize> {
    stripes: Box<[Stripe<N>]>,
}

impl<const N: usize> Default for Striped<N> {
    fn default() -> Self {
        Striped::with_stripes(stripes())
    }
}

impl<const N: usize> Striped<N> {
    fn with_stripes(count: usize) -> Self {
        Striped {
            stripes: (0..count.max(1))
                .map(|_| Stripe(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        }
    }

    /// This thread's stripe.
    fn mine(&self) -> &Stripe<N> {
        &self.stripes[thread_number() % self.stripes.len()]
    }

    /// Adds `n` to counter `i` (wrapping, as an atomic add does).
    pub(crate) fn add(&self, i: usize, n: u64) {
        self.mine().0[i].fetch_add(n, Ordering::Relaxed);
    }

    /// Subtracts `n` from counter `i`: with [`Striped::add`], a gauge whose stripes may each
    /// wrap below zero while their sum does not.
    pub(crate) fn sub(&self, i: usize, n: u64) {
        self.mine().0[i].fetch_sub(n, Ordering::Relaxed);
    }

    /// Counter `i`, summed over the stripes (wrapping).
    pub(crate) fn sum(&self, i: usize) -> u64 {
        self.stripes
            .iter()
            .map(|stripe| stripe.0[i].load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

/// This thread's number, in the order threads first count: consecutive threads take
/// consecutive stripes.
fn thread_number() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static NUMBER: Cell<Option<usize>> = const { Cell::new(None) };
    }
    NUMBER
        .try_with(|number| {
            number.get().unwrap_or_else(|| {
                let next = NEXT.fetch_add(1, Ordering::Relaxed);
                number.set(Some(next));
                next
            })
        })
        // The thread is shutting down: any stripe is as exact.
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::Striped;

    /// More stripes than a 1-core machine's default, so that "apart" can be seen anywhere.
    const STRIPES: usize = 4;

    #[test]
    fn threads_count_apart_and_the_sum_is_exact() {
        let counts = Arc::new(Striped::<2>::with_stripes(STRIPES));
        let threads: Vec<_> = (0..STRIPES + 3)
            .map(|_| {
                let counts = counts.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        counts.add(0, 1);
                        counts.add(1, 2);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("a counting thread panicked");
        }
        let threads = u64::try_from(STRIPES + 3).expect("a small number");
        assert_eq!(counts.sum(0), 1000 * threads);
        assert_eq!(counts.sum(1), 2000 * threads);
        // The stripes are apart: more than one holds counts.
        let used = counts
            .stripes
            .iter()
            .filter(|stripe| stripe.0[0].load(std::sync::atomic::Ordering::Relaxed) > 0)
            .count();
        assert!(used > 1, "{used} stripe(s) used");
    }

    #[test]
    fn a_gauge_added_on_one_thread_and_subtracted_on_another_sums_to_zero() {
        let gauge = Arc::new(Striped::<1>::default());
        gauge.add(0, 1);
        let other = gauge.clone();
        std::thread::spawn(move || other.sub(0, 1))
            .join()
            .expect("the other thread panicked");
        assert_eq!(gauge.sum(0), 0);
        gauge.sub(0, 1);
        assert_eq!(gauge.sum(0).cast_signed(), -1);
    }
}
