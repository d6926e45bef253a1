//! What an atomic add costs when another core wrote the same cache line last, against one on
//! a line of the thread's own: the figure behind the per-thread counters of the request path
//! (`app::metrics::stripes`, `SettingsStore::for_request`; BENCHMARKS.md, "Instructions per
//! request").
//!
//! ```text
//! cargo run --release --example shared_lines [-- THREADS]
//! ```
//!
//! THREADS threads (default: one per core, at least 2) each run the same loop: add 1 to K
//! counters, do about 200 multiplications of other work (a request's own), subtract 1 from
//! the K counters, as a request takes and drops a reference or moves a gauge. Either every
//! thread uses the same K counters, or each has its own. It prints nanoseconds per loop for
//! K = 0, 1, 2, 4, 8. Each run is bounded (2,000,000 loops per thread).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

const LOOPS: u64 = 2_000_000;
const MAX_K: usize = 8;

/// One counter alone on its cache lines (x86 prefetches them in pairs).
#[repr(align(128))]
struct Line(AtomicU64);

fn lines() -> Vec<Line> {
    (0..MAX_K).map(|_| Line(AtomicU64::new(0))).collect()
}

/// Nanoseconds per loop, over `threads` threads each adding to `k` counters of `sets[thread %
/// sets.len()]`.
fn run(threads: usize, sets: &[Vec<Line>], k: usize) -> f64 {
    let started = Instant::now();
    std::thread::scope(|scope| {
        for thread in 0..threads {
            let counters = &sets[thread % sets.len()][..k];
            scope.spawn(move || {
                let mut work = thread as u64;
                for i in 0..LOOPS {
                    for counter in counters {
                        counter.0.fetch_add(1, Ordering::Relaxed);
                    }
                    for j in 0..200 {
                        work = work
                            .wrapping_mul(6_364_136_223_846_793_005)
                            .wrapping_add(i ^ j);
                    }
                    for counter in counters {
                        counter.0.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                black_box(work);
            });
        }
    });
    started.elapsed().as_secs_f64() * 1e9 / LOOPS as f64
}

fn main() {
    let threads = std::env::args()
        .nth(1)
        .and_then(|arg| arg.parse().ok())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(usize::from)
                .unwrap_or(2)
        })
        .max(2);
    let shared = vec![lines()];
    let own: Vec<Vec<Line>> = (0..threads).map(|_| lines()).collect();
    println!("{threads} threads, {LOOPS} loops each; ns per loop (add K, work, subtract K)\n");
    println!(
        "| K counters | each thread its own | all threads the same | difference per add and subtract |"
    );
    println!("| ---: | ---: | ---: | ---: |");
    for k in [0, 1, 2, 4, 8] {
        let apart = run(threads, &own, k);
        let together = run(threads, &shared, k);
        let per = if k == 0 {
            String::from("-")
        } else {
            format!("{:.0}", (together - apart) / k as f64)
        };
        println!("| {k} | {apart:.1} | {together:.1} | {per} |");
    }
}
