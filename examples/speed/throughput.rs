//! The throughput comparison: each server under the same `wrk` load in interleaved rounds, and
//! what the rounds say of each server against bare axum.
//!
//! On a shared 2-core VM the machine's speed drifts by 10-30 % from one minute to the next, so
//! a median of each server's rounds, divided by another server's median, moves with that drift.
//! Two figures here do not:
//! - **The ratio within each round**: the servers of one round run seconds apart, so a drift
//!   slower than a round hits them alike. Its median over the rounds, with that median's 95 %
//!   confidence interval, is the comparison to read.
//! - **CPU time per request**: the server's user plus system time over the run (`/proc`,
//!   itself and its children, so nginx's workers count) divided by the responses wrk counted.
//!   It is what each request costs the server, whatever share of the cores wrk left it.

use std::fmt;

use crate::SpeedError;
use crate::host::process_tree_cpu;
use crate::median;
use crate::servers::Server;
use crate::wrk::{Client, Kind, Run, wrk};

/// One server's run in one round.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Measured {
    pub(crate) run: Run,
    /// Server CPU time per response, in µs (`None` if `/proc` could not be read).
    cpu_us: Option<f64>,
}

/// Each server's runs, in round order: `result[server][round]`.
pub(crate) struct Rounds(Vec<Vec<Measured>>);

/// `rounds` rounds of one `wrk` run per server, the order rotating each round so that no
/// server always follows the same neighbour.
pub(crate) fn rounds(
    client: Client,
    servers: &[&Server],
    kind: Kind,
    connections: usize,
    seconds: u64,
    rounds: usize,
) -> Result<Rounds, SpeedError> {
    let mut measured: Vec<Vec<Measured>> = vec![Vec::new(); servers.len()];
    for round in 0..rounds {
        for i in 0..servers.len() {
            let index = (i + round) % servers.len();
            let server = servers[index];
            let before = process_tree_cpu(server.pid());
            let run = wrk(client, server.addr, kind, connections, seconds)?;
            let after = process_tree_cpu(server.pid());
            let cpu_us = match (before, after) {
                (Some(before), Some(after)) if run.requests > 0 => {
                    Some(after.saturating_sub(before).as_secs_f64() * 1e6 / run.requests as f64)
                }
                _ => None,
            };
            measured[index].push(Measured { run, cpu_us });
        }
    }
    Ok(Rounds(measured))
}

impl Rounds {
    pub(crate) fn of(&self, server: usize) -> &[Measured] {
        &self.0[server]
    }

    /// The median of `server`'s req/s.
    pub(crate) fn rps(&self, server: usize) -> f64 {
        median(self.0[server].iter().map(|m| m.run.rps).collect())
    }

    /// The median of `server`'s CPU time per request, µs.
    pub(crate) fn cpu_us(&self, server: usize) -> Option<f64> {
        let all: Option<Vec<f64>> = self.0[server].iter().map(|m| m.cpu_us).collect();
        all.filter(|a| !a.is_empty()).map(median)
    }

    /// `server`'s req/s divided by `base`'s in the same round, for each round.
    pub(crate) fn ratios(&self, server: usize, base: usize) -> Spread {
        Spread::of(
            self.0[server]
                .iter()
                .zip(&self.0[base])
                .map(|(s, b)| s.run.rps / b.run.rps)
                .collect(),
        )
    }

    /// `base`'s CPU time per request divided by `server`'s in the same round, for each round:
    /// above 1 when `server` costs less per request.
    pub(crate) fn cpu_ratios(&self, server: usize, base: usize) -> Option<Spread> {
        let ratios: Option<Vec<f64>> = self.0[server]
            .iter()
            .zip(&self.0[base])
            .map(|(s, b)| Some(b.cpu_us? / s.cpu_us?))
            .collect();
        ratios.filter(|r| !r.is_empty()).map(Spread::of)
    }
}

/// A median, the distribution-free 95 % confidence interval of that median, and the range of a
/// set of figures.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spread {
    pub(crate) median: f64,
    /// The order statistics `x(k)` and `x(n+1-k)` (1-based) around the median, with `k = n/2 -
    /// 0.98·√n` rounded down: the normal approximation to the binomial, which needs no
    /// assumption about how the figures are distributed. `None` under 8 figures (`k` < 1).
    confidence: Option<(f64, f64)>,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(mut values: Vec<f64>) -> Spread {
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let k = (n as f64 / 2.0 - 0.98 * (n as f64).sqrt()).floor();
        let confidence = (k >= 1.0).then(|| {
            let k = k as usize;
            (values[k - 1], values[n - k])
        });
        Spread {
            min: values.first().copied().unwrap_or(f64::NAN),
            max: values.last().copied().unwrap_or(f64::NAN),
            confidence,
            median: median(values),
        }
    }
}

impl fmt::Display for Spread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2} (", self.median)?;
        if let Some((low, high)) = self.confidence {
            write!(f, "95 % CI {low:.2}-{high:.2}; ")?;
        }
        write!(f, "range {:.2}-{:.2})", self.min, self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spread_has_its_median_and_range() {
        let spread = Spread::of(vec![0.9, 1.1, 0.95, 1.0, 0.8]);
        assert!((spread.median - 0.95).abs() < 1e-12);
        assert_eq!(spread.to_string(), "0.95 (range 0.80-1.10)");
    }

    #[test]
    fn the_median_s_confidence_interval_is_read_from_the_order_statistics() {
        // n = 25: k = floor(12.5 - 4.9) = 7, so the 7th and the 19th smallest.
        let values: Vec<f64> = (1..=25).rev().map(f64::from).collect();
        let spread = Spread::of(values);
        assert_eq!(spread.median, 13.0);
        assert_eq!(spread.confidence, Some((7.0, 19.0)));
        assert_eq!(
            spread.to_string(),
            "13.00 (95 % CI 7.00-19.00; range 1.00-25.00)"
        );
        // n = 9: k = floor(4.5 - 2.94) = 1: the extremes.
        let nine = Spread::of((1..=9).map(f64::from).collect());
        assert_eq!(nine.confidence, Some((1.0, 9.0)));
    }
}
