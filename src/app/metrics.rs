//! Request counters by status class: one relaxed atomic add per response, no locks, so
//! counting costs nothing measurable next to serving.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::StatusCode;

/// The Prometheus label of each class, in counter order.
pub(crate) const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Responses sent by the public router, counted by the first digit of their status.
#[derive(Debug, Default)]
pub(crate) struct RequestCounters {
    by_class: [AtomicU64; 5],
}

impl RequestCounters {
    pub(crate) fn record(&self, status: StatusCode) {
        // `StatusCode` only holds 100..=999; 6xx..9xx are legal but meaningless, so not counted.
        let class = usize::from(status.as_u16() / 100);
        if let Some(counter) = self.by_class.get(class.wrapping_sub(1)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Each class label with its count, in the order of [`CLASSES`].
    pub(crate) fn snapshot(&self) -> [(&'static str, u64); 5] {
        std::array::from_fn(|i| (CLASSES[i], self.by_class[i].load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_first_digit() {
        let counters = RequestCounters::default();
        counters.record(StatusCode::OK);
        counters.record(StatusCode::CREATED);
        counters.record(StatusCode::NOT_FOUND);
        counters.record(StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            counters.snapshot(),
            [("1xx", 0), ("2xx", 2), ("3xx", 0), ("4xx", 1), ("5xx", 1)]
        );
    }
}
