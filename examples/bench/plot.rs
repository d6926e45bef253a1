//! `--plot FILE`: a picture of an upgrade. One SVG panel per mode: successful requests per
//! second and p99 latency per 100 ms slot of the load, with each upgrade (SIGUSR2) and reload
//! (SIGUSR1) marked, so a reader sees at a glance what a handover does to the traffic.
//!
//! Written by hand rather than with a plotting crate: two lines, two axes and some markers are
//! a page of code, and the benchmark keeps its dependencies to the workspace's.

use std::fmt::Write as _;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use loadgen::Report;
use serde::Serialize;

/// The width of one slot of the timeline.
pub(crate) const SLOT: Duration = Duration::from_millis(100);

const WIDTH: f64 = 960.0;
const PANEL: f64 = 240.0;
const MARGIN_LEFT: f64 = 70.0;
const MARGIN_RIGHT: f64 = 70.0;
const MARGIN_TOP: f64 = 36.0;
const MARGIN_BOTTOM: f64 = 34.0;
const THROUGHPUT_COLOUR: &str = "#1f77b4";
const LATENCY_COLOUR: &str = "#d62728";
const UPGRADE_COLOUR: &str = "#2ca02c";
const RELOAD_COLOUR: &str = "#bbbbbb";
const FAILED_COLOUR: &str = "#000000";

/// One mode's load, slot by slot, and its events.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Timeline {
    pub(crate) mode: &'static str,
    pub(crate) slots: Vec<Slot>,
    /// Seconds from the start of the load to each SIGUSR2, and each SIGUSR1.
    pub(crate) upgrades: Vec<f64>,
    pub(crate) reloads: Vec<f64>,
}

/// The requests that started within one slot.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Slot {
    /// Seconds from the start of the load.
    pub(crate) at: f64,
    /// Successful requests per second.
    pub(crate) throughput: f64,
    /// p99 latency of the successful requests, in milliseconds; none in an empty slot.
    pub(crate) p99_ms: Option<f64>,
    pub(crate) failed: u64,
}

impl Timeline {
    pub(crate) fn of(
        mode: &'static str,
        report: &Report,
        upgrades: &[Range<Duration>],
        reloads: &[Duration],
    ) -> Timeline {
        let slots = (0..)
            .map(|i| SLOT * i)
            .take_while(|start| *start < report.elapsed)
            .map(|start| {
                let window = start..start + SLOT;
                let failed = report
                    .samples_in(Some(window.clone()))
                    .iter()
                    .filter(|s| !s.ok)
                    .count() as u64;
                Slot {
                    at: start.as_secs_f64(),
                    throughput: report.throughput(Some(window.clone())),
                    p99_ms: report
                        .quantile(0.99, Some(window))
                        .map(|d| d.as_secs_f64() * 1000.0),
                    failed,
                }
            })
            .collect();
        Timeline {
            mode,
            slots,
            upgrades: upgrades.iter().map(|w| w.start.as_secs_f64()).collect(),
            reloads: reloads.iter().map(Duration::as_secs_f64).collect(),
        }
    }
}

/// Writes every timeline as one SVG, one panel per mode.
pub(crate) fn write(path: &Path, timelines: &[Timeline]) -> std::io::Result<()> {
    std::fs::write(path, svg(timelines))
}

fn svg(timelines: &[Timeline]) -> String {
    let height = PANEL * timelines.len().max(1) as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="{WIDTH}" height="{height}" fill="white"/>"#
    );
    for (i, timeline) in timelines.iter().enumerate() {
        panel(&mut out, timeline, PANEL * i as f64);
    }
    out.push_str("</svg>\n");
    out
}

/// One mode: axes, the reload and upgrade markers, then the two lines on top.
fn panel(out: &mut String, timeline: &Timeline, top: f64) {
    let left = MARGIN_LEFT;
    let right = WIDTH - MARGIN_RIGHT;
    let y_top = top + MARGIN_TOP;
    let bottom = top + PANEL - MARGIN_BOTTOM;
    let seconds = timeline
        .slots
        .last()
        .map_or(1.0, |s| s.at + SLOT.as_secs_f64());
    let max_rps = nice(
        timeline
            .slots
            .iter()
            .map(|s| s.throughput)
            .fold(0.0, f64::max),
    );
    let max_p99 = nice(
        timeline
            .slots
            .iter()
            .filter_map(|s| s.p99_ms)
            .fold(0.0, f64::max),
    );
    let x = |t: f64| left + (right - left) * t / seconds;
    let y = |v: f64, max: f64| bottom - (bottom - y_top) * v / max;

    let _ = writeln!(
        out,
        r#"<text x="{left}" y="{}" font-weight="bold">{}: requests/s (blue, left) and p99 latency (red, right) per {} ms; upgrades green, reloads grey, failed requests black</text>"#,
        top + 18.0,
        timeline.mode,
        SLOT.as_millis()
    );
    for at in &timeline.reloads {
        line(out, x(*at), y_top, x(*at), bottom, RELOAD_COLOUR, 1.0, "");
    }
    for at in &timeline.upgrades {
        line(
            out,
            x(*at),
            y_top,
            x(*at),
            bottom,
            UPGRADE_COLOUR,
            1.5,
            r#" stroke-dasharray="4 3""#,
        );
    }
    for slot in timeline.slots.iter().filter(|s| s.failed > 0) {
        let _ = writeln!(
            out,
            r#"<circle cx="{:.1}" cy="{bottom}" r="3" fill="{FAILED_COLOUR}"><title>{} failed</title></circle>"#,
            x(slot.at),
            slot.failed
        );
    }
    // Axes and ticks: four steps on each side, whole seconds along the bottom.
    line(out, left, bottom, right, bottom, "#444", 1.0, "");
    line(out, left, y_top, left, bottom, THROUGHPUT_COLOUR, 1.0, "");
    line(out, right, y_top, right, bottom, LATENCY_COLOUR, 1.0, "");
    for step in 0..=4 {
        let fraction = f64::from(step) / 4.0;
        let ty = bottom - (bottom - y_top) * fraction;
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="{THROUGHPUT_COLOUR}">{}</text>"#,
            left - 4.0,
            ty + 4.0,
            compact(max_rps * fraction)
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" fill="{LATENCY_COLOUR}">{} ms</text>"#,
            right + 4.0,
            ty + 4.0,
            compact(max_p99 * fraction)
        );
    }
    let tick_every = (seconds / 10.0).ceil().max(1.0);
    let mut t = 0.0;
    while t <= seconds {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{t}s</text>"#,
            x(t),
            bottom + 16.0
        );
        t += tick_every;
    }
    let rps: Vec<(f64, f64)> = timeline
        .slots
        .iter()
        .map(|s| (x(s.at), y(s.throughput, max_rps)))
        .collect();
    polyline(out, &rps, THROUGHPUT_COLOUR);
    // A slot without a successful request has no p99: the line breaks there rather than
    // drawing a slope through the gap.
    for run in timeline.slots.split(|s| s.p99_ms.is_none()) {
        let p99: Vec<(f64, f64)> = run
            .iter()
            .filter_map(|s| Some((x(s.at), y(s.p99_ms?, max_p99))))
            .collect();
        polyline(out, &p99, LATENCY_COLOUR);
    }
}

#[allow(
    clippy::too_many_arguments,
    reason = "an SVG line is two points and a style"
)]
fn line(
    out: &mut String,
    x1: f64,
    y1: f64,
    x2: f64,
    y2: f64,
    colour: &str,
    width: f64,
    extra: &str,
) {
    let _ = writeln!(
        out,
        r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{colour}" stroke-width="{width}"{extra}/>"#
    );
}

fn polyline(out: &mut String, points: &[(f64, f64)], colour: &str) {
    if points.is_empty() {
        return;
    }
    let mut list = String::new();
    for (px, py) in points {
        let _ = write!(list, "{px:.1},{py:.1} ");
    }
    let _ = writeln!(
        out,
        r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="1.2"/>"#,
        list.trim_end()
    );
}

/// The next "nice" axis maximum at or above `value` (1, 2 or 5 times a power of ten).
fn nice(value: f64) -> f64 {
    if value <= 0.0 || !value.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|candidate| *candidate >= value)
        .unwrap_or(10.0 * magnitude)
}

/// `12k` for 12000, `0.5` for 0.5: short axis labels.
fn compact(value: f64) -> String {
    if value >= 1000.0 {
        format!("{}k", (value / 100.0).round() / 10.0)
    } else if value >= 10.0 {
        format!("{}", value.round())
    } else {
        format!("{}", (value * 100.0).round() / 100.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_maxima_are_nice() {
        assert_eq!(nice(0.0), 1.0);
        assert_eq!(nice(7.0), 10.0);
        assert_eq!(nice(12_345.0), 20_000.0);
        assert_eq!(nice(0.3), 0.5);
    }

    #[test]
    fn a_timeline_draws_one_panel_with_its_markers() {
        let timeline = Timeline {
            mode: "keepalive",
            slots: vec![
                Slot {
                    at: 0.0,
                    throughput: 1000.0,
                    p99_ms: Some(2.0),
                    failed: 0,
                },
                Slot {
                    at: 0.1,
                    throughput: 800.0,
                    p99_ms: None,
                    failed: 1,
                },
            ],
            upgrades: vec![0.1],
            reloads: vec![0.05],
        };
        let svg = svg(&[timeline]);
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
        // Throughput, and p99 up to the empty slot.
        assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
        assert_eq!(svg.matches(UPGRADE_COLOUR).count(), 1, "{svg}");
        assert!(svg.contains("1 failed"), "{svg}");
    }
}
