//! The figures: how they are computed from the load reports and event timings, the table that
//! prints them, and the JSON that keeps them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Range;
use std::time::Duration;

use loadgen::Report;
use serde::Serialize;

use crate::procfs::Machine;
use crate::server::GenerationRecord;

/// Latency of the successful requests that started in some windows, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Latency {
    pub(crate) samples: usize,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
}

impl Latency {
    /// Over every request that started in any of `windows`, pooled.
    pub(crate) fn of(report: &Report, windows: &[Range<Duration>]) -> Option<Latency> {
        let mut micros: Vec<u32> = windows
            .iter()
            .flat_map(|window| report.samples_in(Some(window.clone())))
            .filter(|sample| sample.ok)
            .map(|sample| sample.latency_us)
            .collect();
        micros.sort_unstable();
        let ms = |q| nearest_rank(&micros, q).map(|us| f64::from(us) / 1000.0);
        Some(Latency {
            samples: micros.len(),
            p50_ms: ms(0.5)?,
            p99_ms: ms(0.99)?,
            max_ms: ms(1.0)?,
        })
    }
}

/// p50 / p99 / max of a set of event durations (handovers, reloads), in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Spread {
    pub(crate) count: usize,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    /// Every measurement, in the order taken.
    pub(crate) all_ms: Vec<f64>,
}

impl Spread {
    pub(crate) fn of(durations: &[Duration]) -> Option<Spread> {
        let all_ms: Vec<f64> = durations
            .iter()
            .map(|d| (d.as_secs_f64() * 1e5).round() / 1e2)
            .collect();
        let mut sorted = all_ms.clone();
        sorted.sort_unstable_by(f64::total_cmp);
        Some(Spread {
            count: sorted.len(),
            p50_ms: nearest_rank(&sorted, 0.5)?,
            p99_ms: nearest_rank(&sorted, 0.99)?,
            max_ms: nearest_rank(&sorted, 1.0)?,
            all_ms,
        })
    }
}

/// The median (lower middle) of the values, `None` if there are none.
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_unstable_by(f64::total_cmp);
    nearest_rank(&values, 0.5)
}

/// The mean of the values, `None` if any is missing or there are none.
fn mean(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let values: Option<Vec<f64>> = values.collect();
    let values = values.filter(|v| !v.is_empty())?;
    Some(values.iter().sum::<f64>() / values.len() as f64)
}

/// The `q` quantile of sorted values by nearest rank (the same rule as loadgen's).
fn nearest_rank<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    let last = sorted.len().checked_sub(1)?;
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.saturating_sub(1).min(last)).copied()
}

/// A load report's failures, keyed by the kind's name.
pub(crate) fn failures_by_kind(report: &Report) -> BTreeMap<String, u64> {
    report
        .failures
        .iter()
        .map(|(kind, count)| (kind.to_string(), *count))
        .collect()
}

/// One slow request.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Stall {
    /// Seconds from the start of the mode's load.
    pub(crate) start_s: f64,
    pub(crate) latency_ms: f64,
    pub(crate) ok: bool,
    /// Milliseconds since the SIGUSR2 before it, if there was one.
    pub(crate) ms_after_last_upgrade: Option<f64>,
}

/// One load run without events.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct RunStats {
    pub(crate) throughput: f64,
    pub(crate) cpu_us_per_request: Option<f64>,
}

/// Bare axum, then the template, under the same load.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Round {
    pub(crate) bare: RunStats,
    pub(crate) template: RunStats,
}

/// The paired rounds of a mode.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Comparison {
    pub(crate) rounds: Vec<Round>,
    /// The template's requests in the rounds (they count with the mode's).
    pub(crate) template_requests: u64,
    pub(crate) template_failures: BTreeMap<String, u64>,
    #[serde(skip)]
    pub(crate) first_failures: Vec<String>,
}

/// Medians over the rounds: `(template, bare, median of the per-round ratios)`.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Paired {
    pub(crate) template: f64,
    pub(crate) bare: f64,
    pub(crate) ratio: f64,
}

impl Comparison {
    /// Requests per second.
    pub(crate) fn throughput(&self) -> Option<Paired> {
        self.paired(|run| Some(run.throughput))
    }

    /// Server CPU microseconds per request.
    pub(crate) fn cpu(&self) -> Option<Paired> {
        self.paired(|run| run.cpu_us_per_request)
    }

    fn paired(&self, value: impl Fn(&RunStats) -> Option<f64>) -> Option<Paired> {
        let pairs: Option<Vec<(f64, f64)>> = self
            .rounds
            .iter()
            .map(|round| Some((value(&round.template)?, value(&round.bare)?)))
            .collect();
        let pairs = pairs?;
        Some(Paired {
            template: median(pairs.iter().map(|p| p.0).collect())?,
            bare: median(pairs.iter().map(|p| p.1).collect())?,
            ratio: median(
                pairs
                    .iter()
                    .filter(|p| p.1 > 0.0)
                    .map(|p| p.0 / p.1)
                    .collect(),
            )?,
        })
    }
}

/// Everything one mode measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ModeFigures {
    pub(crate) mode: &'static str,
    pub(crate) connections: usize,
    pub(crate) load_seconds: f64,
    pub(crate) upgrades: usize,
    pub(crate) reloads: usize,
    /// Load requests (on `/`, plus the long ones in the `slow` mode), probes not included.
    pub(crate) requests: u64,
    pub(crate) slow_requests: Option<u64>,
    /// Failed load requests, all kinds.
    pub(crate) failed: u64,
    pub(crate) failures: BTreeMap<String, u64>,
    /// The bench's own requests on new connections that detect handovers and reloads.
    pub(crate) probe_requests: u64,
    pub(crate) probe_failures: BTreeMap<String, u64>,
    pub(crate) first_failures: Vec<String>,
    /// The server's CPU time per request on `/` in the steady windows before and after the
    /// events (microseconds, user + system, from /proc/<pid>/stat).
    pub(crate) cpu_us_per_request: [Option<f64>; 2],
    /// Requests per second on `/`, by start time of the requests.
    pub(crate) throughput_before: f64,
    pub(crate) throughput_during: f64,
    pub(crate) throughput_after: f64,
    /// The template against bare axum, in paired rounds before the mode's load.
    pub(crate) comparison: Option<Comparison>,
    /// The machine's CPU over the mode (bare runs included): the bench's processes, and others.
    pub(crate) cpu: Option<crate::procfs::CpuShare>,
    pub(crate) latency_steady: Option<Latency>,
    /// Pooled over the second after every SIGUSR2.
    pub(crate) latency_upgrade: Option<Latency>,
    pub(crate) failed_in_upgrade_windows: u64,
    /// The slowest load requests (100 ms or more), for finding what caused a latency spike.
    pub(crate) stalls: Vec<Stall>,
    /// SIGUSR2 to the first answer by the new generation.
    pub(crate) handover: Option<Spread>,
    /// SIGUSR1 to the first answer with the new greeting.
    pub(crate) reload: Option<Spread>,
    /// SIGUSR2 to the exit of the old generation.
    pub(crate) old_exit: Option<Spread>,
    /// Throughput and p99 per 100 ms, with the events: what `--plot` draws.
    pub(crate) timeline: crate::plot::Timeline,
}

impl ModeFigures {
    pub(crate) fn all_failed(&self) -> u64 {
        self.failed + self.probe_failures.values().sum::<u64>()
    }
}

/// Process-level figures over the whole run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ProcessFigures {
    /// The first generation, started and answered once, before any load.
    pub(crate) idle_first: Option<crate::procfs::Memory>,
    /// The second generation (the first started by an upgrade), idle, before any load.
    pub(crate) idle_second: Option<crate::procfs::Memory>,
    /// The last generation after every mode, load stopped.
    pub(crate) idle_last: Option<crate::procfs::Memory>,
    /// Open fds of the first generation (it also holds what its launcher left open).
    pub(crate) fds_first: Option<usize>,
    /// Open fds of the second generation, idle, before any load: the baseline.
    pub(crate) fds_before: Option<usize>,
    /// Open fds of the last generation, idle, after every mode.
    pub(crate) fds_after: Option<usize>,
    pub(crate) generations: Vec<GenerationRecord>,
}

/// The whole run, as written by `--json`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunFigures {
    pub(crate) machine: Machine,
    pub(crate) command: String,
    pub(crate) baton: String,
    pub(crate) version: Option<String>,
    pub(crate) modes: Vec<ModeFigures>,
    pub(crate) process: ProcessFigures,
    pub(crate) upgrades: usize,
    pub(crate) reloads: usize,
    pub(crate) failed_requests: u64,
    pub(crate) leftovers: Vec<String>,
    /// Why the run stopped early, if it did.
    pub(crate) error: Option<String>,
    pub(crate) wall_seconds: f64,
}

impl RunFigures {
    pub(crate) fn passed(&self) -> bool {
        self.failed_requests == 0 && self.leftovers.is_empty() && self.error.is_none()
    }

    /// The report: one row per figure, one column per mode, then the process figures.
    pub(crate) fn table(&self) -> String {
        let mut rows: Vec<(String, Vec<String>)> = Vec::new();
        let mut row = |label: &str, cell: &dyn Fn(&ModeFigures) -> String| {
            rows.push((label.to_owned(), self.modes.iter().map(cell).collect()));
        };
        row("load (connections x seconds)", &|m| {
            format!("{} x {:.0} s", m.connections, m.load_seconds)
        });
        row("upgrades / reloads", &|m| {
            format!("{} / {}", m.upgrades, m.reloads)
        });
        row("requests (+ probes)", &|m| {
            format!(
                "{} (+{})",
                thousands(m.requests),
                thousands(m.probe_requests)
            )
        });
        row("failed requests", &|m| failure_cell(m));
        row("throughput before / during / after (req/s)", &|m| {
            format!(
                "{} / {} / {}",
                thousands(m.throughput_before.round() as u64),
                thousands(m.throughput_during.round() as u64),
                thousands(m.throughput_after.round() as u64)
            )
        });
        let paired = |m: &ModeFigures, pick: &dyn Fn(&Comparison) -> Option<Paired>| {
            m.comparison.as_ref().and_then(pick)
        };
        row("paired rounds, template / bare axum: req/s", &|m| {
            paired(m, &Comparison::throughput).map_or_else(
                || "-".to_owned(),
                |p| {
                    format!(
                        "{} / {} = {:.1} %",
                        thousands(p.template.round() as u64),
                        thousands(p.bare.round() as u64),
                        p.ratio * 100.0
                    )
                },
            )
        });
        row(
            "paired rounds, template / bare axum: server CPU us/request",
            &|m| {
                paired(m, &Comparison::cpu).map_or_else(
                    || "-".to_owned(),
                    |p| {
                        format!(
                            "{:.2} / {:.2} = {:.0} %",
                            p.template,
                            p.bare,
                            p.ratio * 100.0
                        )
                    },
                )
            },
        );
        row("server CPU per request, steady (us)", &|m| {
            mean(m.cpu_us_per_request.iter().copied())
                .map_or_else(|| "-".to_owned(), |cpu| format!("{cpu:.2}"))
        });
        row("latency steady p50 / p99 / max (ms)", &|m| {
            latency_cell(m.latency_steady)
        });
        row("latency 1 s after SIGUSR2 p50 / p99 / max (ms)", &|m| {
            latency_cell(m.latency_upgrade)
        });
        row("CPU used: bench processes / others (%)", &|m| {
            m.cpu.map_or_else(
                || "-".to_owned(),
                |cpu| format!("{:.0} / {:.0}", cpu.ours_percent, cpu.others_percent),
            )
        });
        row("handover p50 / p99 / max (ms)", &|m| {
            spread_cell(&m.handover)
        });
        row("reload p50 / p99 / max (ms)", &|m| spread_cell(&m.reload));
        row("old process exit p50 / p99 / max (ms)", &|m| {
            spread_cell(&m.old_exit)
        });

        let mut header = vec!["".to_owned()];
        header.extend(self.modes.iter().map(|m| m.mode.to_owned()));
        let mut out = String::new();
        push_markdown(
            &mut out,
            &header,
            &rows
                .into_iter()
                .map(|(label, mut cells)| {
                    cells.insert(0, label);
                    cells
                })
                .collect::<Vec<_>>(),
        );
        out.push('\n');
        push_markdown(
            &mut out,
            &["process".to_owned(), String::new()],
            &self.process_rows(),
        );
        out
    }

    fn process_rows(&self) -> Vec<Vec<String>> {
        let process = &self.process;
        let generations = &process.generations;
        let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
        let memory = |m: &Option<crate::procfs::Memory>| {
            m.map_or_else(|| "-".to_owned(), |m| mib(m.rss_kib))
        };
        // The first generation retires idle (the set-up upgrade), so it is left out.
        let mut under_load: Vec<u64> = generations
            .iter()
            .skip(1)
            .filter_map(|g| g.at_retirement.map(|m| m.rss_kib))
            .collect();
        under_load.sort_unstable();
        let peak = generations
            .iter()
            .filter_map(|g| g.at_retirement.map(|m| m.hwm_kib))
            .max();
        let spread = match (
            nearest_rank(&under_load, 0.0),
            nearest_rank(&under_load, 0.5),
            nearest_rank(&under_load, 1.0),
        ) {
            (Some(min), Some(median), Some(max)) => {
                format!("{} / {} / {}", mib(min), mib(median), mib(max))
            }
            _ => "-".to_owned(),
        };
        let fds = |n: Option<usize>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
        let exits: BTreeMap<&str, usize> =
            generations
                .iter()
                .fold(BTreeMap::new(), |mut counts, generation| {
                    let exit = generation.exit.as_deref().unwrap_or("not seen");
                    *counts.entry(exit).or_insert(0) += 1;
                    counts
                });
        let exits: Vec<String> = exits
            .iter()
            .map(|(exit, count)| format!("{count} {exit}"))
            .collect();
        vec![
            vec![
                "generations (how they ended)".to_owned(),
                format!("{} ({})", generations.len(), exits.join(", ")),
            ],
            vec![
                "RSS idle: generation 1 / 2 / last".to_owned(),
                format!(
                    "{} / {} / {}",
                    memory(&process.idle_first),
                    memory(&process.idle_second),
                    memory(&process.idle_last)
                ),
            ],
            vec![
                "RSS under load at retirement, min / median / max".to_owned(),
                spread,
            ],
            vec![
                "peak RSS (VmHWM) of any generation".to_owned(),
                peak.map_or_else(|| "-".to_owned(), mib),
            ],
            vec![
                format!(
                    "open fds idle: generation 2 / after {} more upgrades",
                    self.upgrades
                ),
                format!("{} / {}", fds(process.fds_before), fds(process.fds_after)),
            ],
            vec![
                "upgrades / reloads in total".to_owned(),
                format!("{} / {}", self.upgrades, self.reloads),
            ],
            vec![
                "failed requests in total (load + probes)".to_owned(),
                self.failed_requests.to_string(),
            ],
            vec![
                "leftover processes".to_owned(),
                if self.leftovers.is_empty() {
                    "none".to_owned()
                } else {
                    self.leftovers.join("; ")
                },
            ],
            vec![
                "wall time".to_owned(),
                format!("{:.0} s", self.wall_seconds),
            ],
        ]
    }
}

fn failure_cell(m: &ModeFigures) -> String {
    let mut parts: Vec<String> = m
        .failures
        .iter()
        .map(|(kind, count)| format!("{kind} {count}"))
        .collect();
    parts.extend(
        m.probe_failures
            .iter()
            .map(|(kind, count)| format!("probe {kind} {count}")),
    );
    if parts.is_empty() {
        "0".to_owned()
    } else {
        format!("{} ({})", m.all_failed(), parts.join(", "))
    }
}

fn latency_cell(latency: Option<Latency>) -> String {
    latency.map_or_else(
        || "-".to_owned(),
        |l| format!("{:.2} / {:.2} / {:.1}", l.p50_ms, l.p99_ms, l.max_ms),
    )
}

fn spread_cell(spread: &Option<Spread>) -> String {
    spread.as_ref().map_or_else(
        || "-".to_owned(),
        |s| format!("{:.1} / {:.1} / {:.1}", s.p50_ms, s.p99_ms, s.max_ms),
    )
}

/// 1234567 -> "1,234,567".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// A Markdown table with padded columns: readable in a terminal, pastes into BENCHMARKS.md.
fn push_markdown(out: &mut String, header: &[String], rows: &[Vec<String>]) {
    let columns = header.len();
    let width = |i: usize| {
        rows.iter()
            .filter_map(|row| row.get(i))
            .chain(std::iter::once(&header[i]))
            .map(|cell| cell.chars().count())
            .max()
            .unwrap_or(0)
            .max(3)
    };
    let widths: Vec<usize> = (0..columns).map(width).collect();
    let line = |out: &mut String, cells: &[String]| {
        out.push('|');
        for (i, width) in widths.iter().enumerate() {
            let cell = cells.get(i).map_or("", String::as_str);
            if i == 0 {
                let _ = write!(out, " {cell:<width$} |");
            } else {
                let _ = write!(out, " {cell:>width$} |");
            }
        }
        out.push('\n');
    };
    line(out, header);
    out.push('|');
    for (i, width) in widths.iter().enumerate() {
        let dashes = "-".repeat(*width);
        if i == 0 {
            let _ = write!(out, " {dashes} |");
        } else {
            let _ = write!(out, " {}: |", &dashes[1..]);
        }
    }
    out.push('\n');
    for row in rows {
        line(out, row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let values: Vec<u32> = (1..=100).collect();
        assert_eq!(nearest_rank(&values, 0.5), Some(50));
        assert_eq!(nearest_rank(&values, 0.99), Some(99));
        assert_eq!(nearest_rank(&values, 1.0), Some(100));
        assert_eq!(nearest_rank::<u32>(&[], 0.5), None);
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
