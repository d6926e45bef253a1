//! One mode: load the server, measure a steady state, upgrade and reload it while the load
//! runs, measure the steady state after; and the paired rounds that compare the template with
//! bare axum under the same load.
//!
//! Timeline of a mode (times from the start of the load):
//! ```text
//! | warm-up | steady "before" | upgrade, 1 s window, reloads | upgrade, ... | steady "after" |
//! ```
//! Each upgrade owns the second after its SIGUSR2 (the window whose latency is reported as
//! "around an upgrade"); the reloads of its slot come after that second, so the two kinds of
//! event never share a window.

use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use loadgen::{Load, LoadConfig, Report};
use tokio::runtime::Runtime;

use crate::BenchError;
use crate::figures::{
    Comparison, Latency, ModeFigures, Round, RunStats, Spread, Stall, failures_by_kind,
};
use crate::options::{ModeName, ModePlan, UPGRADE_WINDOW, WARMUP};
use crate::plot::Timeline;
use crate::probe::Probes;
use crate::server::{Bare, Baton};

/// Loads never end on their own before the bench stops them, except after this long (a bound
/// for a bench that went wrong).
const LOAD_LIMIT: Duration = Duration::from_secs(3600);

/// Requests slower than this are listed one by one in the JSON (the slowest `MAX_STALLS`).
const STALL: Duration = Duration::from_millis(100);
const MAX_STALLS: usize = 50;

/// Paired rounds without events: bare axum for `plan.round`, then the template for as long,
/// each after its own warm-up, `plan.rounds` times. Each pair runs within a few seconds, so a
/// change in the machine's speed (a neighbour, the host) hits both sides of a pair alike; the
/// ratio is the median of the pairs' ratios.
pub(crate) fn compare(
    runtime: &Runtime,
    bare: &Bare,
    baton: &Baton,
    plan: &ModePlan,
) -> Result<Comparison, BenchError> {
    let mut comparison = Comparison::default();
    for _ in 0..plan.rounds {
        let (bare_run, report) = steady_run(runtime, bare.addr(), bare.pid(), plan);
        if report.failed() > 0 {
            return Err(BenchError::Baseline(format!(
                "requests to bare axum failed, so it cannot serve as a baseline: {report}"
            )));
        }
        let pid = baton.current().map_or(0, |p| p.pid);
        let (template_run, report) = steady_run(runtime, baton.http(), pid, plan);
        comparison.template_requests += report.total();
        for (kind, count) in failures_by_kind(&report) {
            *comparison.template_failures.entry(kind).or_insert(0) += count;
        }
        comparison.first_failures.extend(
            report
                .first_failures
                .iter()
                .map(|detail| format!("paired round: {}", detail.failure)),
        );
        comparison.rounds.push(Round {
            bare: bare_run,
            template: template_run,
        });
    }
    Ok(comparison)
}

/// One load run on `/` of the warm-up plus `plan.round`: its throughput and the server's CPU
/// per request over the round.
fn steady_run(
    runtime: &Runtime,
    addr: SocketAddr,
    pid: u32,
    plan: &ModePlan,
) -> (RunStats, Report) {
    let started = Instant::now();
    let load = start_load(runtime, addr, plan.name, plan.connections, "/");
    let cpu = measure_cpu(pid, started + WARMUP, started + WARMUP + plan.round);
    let report = runtime.block_on(load.stop());
    let window = WARMUP..WARMUP + plan.round;
    let stats = RunStats {
        throughput: report.throughput(Some(window.clone())),
        cpu_us_per_request: cpu_per_request(cpu, &report, window),
    };
    (stats, report)
}

/// Runs one mode against the serving baton.
pub(crate) fn run_mode(
    runtime: &Runtime,
    baton: &mut Baton,
    plan: &ModePlan,
) -> Result<ModeFigures, BenchError> {
    let mut probes = Probes::default();
    let started = Instant::now();
    let load = start_load(runtime, baton.http(), plan.name, plan.connections, "/");
    let slow = plan.slow.map(|slow| {
        let mut config = load_config(
            baton.http(),
            loadgen::Mode::KeepAlive,
            slow.connections,
            &format!("/api/slow?ms={}", slow.ms),
        );
        config.request_timeout += Duration::from_millis(slow.ms);
        runtime.block_on(async { loadgen::start(config) })
    });

    let server = baton.current().map(|p| p.pid).unwrap_or(0);
    let cpu_before = measure_cpu(server, started + WARMUP, started + WARMUP + plan.steady);
    let events_start = started.elapsed();
    let events = run_events(baton, plan, started, &mut probes)?;
    let events_end = started.elapsed();
    let server = baton.current().map(|p| p.pid).unwrap_or(0);
    let cpu_after = measure_cpu(server, Instant::now(), started + events_end + plan.steady);

    let report = runtime.block_on(load.stop());
    let slow_report = slow.map(|load| runtime.block_on(load.stop()));

    let before = WARMUP..WARMUP + plan.steady;
    let during = events_start..events_end;
    let after = events_end..events_end + plan.steady;
    let mut failures = failures_by_kind(&report);
    if let Some(slow) = &slow_report {
        for (kind, count) in failures_by_kind(slow) {
            *failures.entry(kind).or_insert(0) += count;
        }
    }
    let mut first_failures: Vec<String> = report
        .first_failures
        .iter()
        .chain(slow_report.iter().flat_map(|r| &r.first_failures))
        .map(|detail| format!("at {:.3?}: {}", detail.at, detail.failure))
        .collect();
    first_failures.extend(probes.first_failures.iter().cloned());
    Ok(ModeFigures {
        mode: plan.name.as_str(),
        connections: plan.connections,
        load_seconds: report.elapsed.as_secs_f64(),
        upgrades: events.handovers.len(),
        reloads: events.reloads.len(),
        requests: report.total() + slow_report.as_ref().map_or(0, Report::total),
        slow_requests: slow_report.as_ref().map(Report::total),
        failed: failures.values().sum(),
        failures,
        probe_requests: probes.sent,
        probe_failures: probes.failures.clone(),
        first_failures,
        cpu_us_per_request: [
            cpu_per_request(cpu_before, &report, before.clone()),
            cpu_per_request(cpu_after, &report, after.clone()),
        ],
        throughput_before: report.throughput(Some(before.clone())),
        throughput_during: report.throughput(Some(during)),
        throughput_after: report.throughput(Some(after)),
        comparison: None,
        cpu: None,
        latency_steady: Latency::of(&report, std::slice::from_ref(&before)),
        latency_upgrade: Latency::of(&report, &events.upgrade_windows),
        failed_in_upgrade_windows: events
            .upgrade_windows
            .iter()
            .map(|window| report.failed_in(Some(window.clone())))
            .sum(),
        stalls: stalls(&report, &events.upgrade_windows),
        handover: Spread::of(&events.handovers),
        reload: Spread::of(&events.reloads),
        old_exit: Spread::of(&events.old_exits),
        timeline: Timeline::of(
            plan.name.as_str(),
            &report,
            &events.upgrade_windows,
            &events.reload_moments,
        ),
    })
}

/// What the event phase measured.
#[derive(Debug, Default)]
struct Events {
    handovers: Vec<Duration>,
    old_exits: Vec<Duration>,
    reloads: Vec<Duration>,
    /// When each SIGUSR1 was sent, from the start of the load (for the plot).
    reload_moments: Vec<Duration>,
    upgrade_windows: Vec<Range<Duration>>,
}

/// The upgrades, evenly spread over the planned phase (at most one per `UPGRADE_WINDOW`), each
/// followed by its share of the reloads; without upgrades, the reloads evenly spread.
fn run_events(
    baton: &mut Baton,
    plan: &ModePlan,
    started: Instant,
    probes: &mut Probes,
) -> Result<Events, BenchError> {
    let mut events = Events::default();
    let phase_start = Instant::now();
    let progress_every = (plan.upgrades / 5).max(1);
    if plan.upgrades == 0 {
        let slot = plan.events / plan.reloads.max(1);
        for i in 0..plan.reloads {
            sleep_until(phase_start + slot * i);
            events.reload_moments.push(started.elapsed());
            events.reloads.push(baton.reload(probes)?);
        }
        sleep_until(phase_start + plan.events);
        return Ok(events);
    }
    let slot = (plan.events / plan.upgrades).max(UPGRADE_WINDOW);
    for i in 0..plan.upgrades {
        sleep_until(phase_start + slot * i);
        let signalled = started.elapsed();
        let handover = baton.upgrade(probes)?;
        events.handovers.push(handover.answered);
        events.old_exits.push(handover.old_exited);
        events
            .upgrade_windows
            .push(signalled..signalled + UPGRADE_WINDOW);
        if (i + 1).is_multiple_of(progress_every) {
            eprintln!(
                "bench: {}: upgrade {}/{}: new generation answered after {:.1?}, old one exited \
                 after {:.1?}",
                plan.name.as_str(),
                i + 1,
                plan.upgrades,
                handover.answered,
                handover.old_exited
            );
        }
        sleep_until(started + signalled + UPGRADE_WINDOW);
        // The first `reloads % upgrades` slots take one more, so the total is exact.
        let share = plan.reloads / plan.upgrades + u32::from(i < plan.reloads % plan.upgrades);
        for _ in 0..share {
            events.reload_moments.push(started.elapsed());
            events.reloads.push(baton.reload(probes)?);
        }
    }
    sleep_until(phase_start + plan.events);
    Ok(events)
}

fn load_config(
    addr: SocketAddr,
    mode: loadgen::Mode,
    connections: usize,
    path: &str,
) -> LoadConfig {
    LoadConfig {
        path: path.to_owned(),
        connections,
        mode,
        max_duration: LOAD_LIMIT,
        ..LoadConfig::new(addr)
    }
}

fn start_load(
    runtime: &Runtime,
    addr: SocketAddr,
    name: ModeName,
    connections: usize,
    path: &str,
) -> Load {
    let config = load_config(addr, name.load_mode(), connections, path);
    // `start` spawns the workers on the runtime's threads and returns; they run while this
    // thread sends signals and probes.
    runtime.block_on(async { loadgen::start(config) })
}

/// The slowest requests (at least `STALL`), with where they started relative to the upgrades.
fn stalls(report: &Report, upgrades: &[Range<Duration>]) -> Vec<Stall> {
    let mut slow: Vec<&loadgen::Sample> = report
        .samples
        .iter()
        .filter(|s| s.latency() >= STALL)
        .collect();
    slow.sort_unstable_by_key(|s| std::cmp::Reverse(s.latency_us));
    slow.truncate(MAX_STALLS);
    slow.into_iter()
        .map(|sample| {
            let start = sample.start();
            let after_upgrade = upgrades
                .iter()
                .rfind(|w| w.start <= start)
                .map(|w| (start - w.start).as_secs_f64() * 1e3);
            Stall {
                start_s: start.as_secs_f64(),
                latency_ms: sample.latency().as_secs_f64() * 1e3,
                ok: sample.ok,
                ms_after_last_upgrade: after_upgrade,
            }
        })
        .collect()
}

/// The CPU time `pid` used from `from` to `to` (sleeping until then).
fn measure_cpu(pid: u32, from: Instant, to: Instant) -> Option<Duration> {
    sleep_until(from);
    let start = crate::procfs::cpu_time(pid)?;
    sleep_until(to);
    crate::procfs::cpu_time(pid)?.checked_sub(start)
}

/// Server CPU microseconds per successful request that started in `window`. Meaningful on a
/// busy machine, where throughput is not: another process takes CPU time from the server, but
/// not CPU time per request.
fn cpu_per_request(cpu: Option<Duration>, report: &Report, window: Range<Duration>) -> Option<f64> {
    let seconds = window.end.saturating_sub(window.start).as_secs_f64();
    let requests = report.throughput(Some(window)) * seconds;
    let cpu = cpu?;
    (requests > 0.0).then(|| cpu.as_secs_f64() * 1e6 / requests)
}

fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        std::thread::sleep(deadline - now);
    }
}
