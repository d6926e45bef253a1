//! Many keep-alive connections (issue 17, `--crowd 2000,5000`): for each connection count,
//! nginx (the clients' ceiling), bare axum and baton (and the `--compare` build) in
//! interleaved rounds whose order rotates. Each server in each round gets:
//! 1. `wrk -t2 -cN`: the steady figures (req/s, p50, p99, max, errors).
//! 2. `loadgen` keep-alive load of N connections: once all are open and have served, a steady
//!    window (the reference for the upgrades), then, for baton, upgrades under that load: the
//!    handover, the latency of the requests started in the second after SIGUSR2, how fast the
//!    clients reconnect to the new generation, listen-queue overflows, every failure by kind.
//!
//! Two clients because neither does both jobs: loadgen times every request (so the second after
//! a signal can be cut out of a run), counts each connection it opens and names every failure,
//! but costs about twice wrk's CPU per request, and at 2,000 connections on a 2-core machine it
//! is the bottleneck (all three servers at its ceiling); wrk draws up to twice the req/s but
//! only summarises a whole run. Each ratio is taken within one client: baton's steady p99
//! against bare axum's under wrk, the p99 after SIGUSR2 against the steady p99 of the same
//! loadgen run.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use loadgen::{FailureKind, LoadConfig, Report};
use tokio::runtime::Runtime;

use crate::handover::{Handover, upgrade_once, who_answers};
use crate::host::{ListenCounters, machine_busy, own_cpu, process_tree_cpu, raise_fd_limit};
use crate::servers::{Baton, Server, start_bare, start_baton, start_nginx};
use crate::wrk::{Client, Kind, Run, wrk};
use crate::{LIMIT, Options, SpeedError, figures, io, programs, require};

/// baton's own default `lifecycle.lame_duck`, used unless `--lame-duck` says otherwise.
const DEFAULT_LAME_DUCK: &str = "2s";
/// baton's default `limits.max_connections`; above it the config this mode writes raises it.
const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Fds a process needs beyond its connections (baton keeps 256 from its public listener).
const FD_MARGIN: u64 = 512;
/// From one SIGUSR2 to the next at least: the second measured after it, and time for the load
/// to settle on the new generation.
pub(crate) const UPGRADE_SPACING: Duration = Duration::from_secs(2);
/// The window after SIGUSR2 whose requests the "after an upgrade" latency is taken from.
const AFTER: Duration = Duration::from_secs(1);

/// What one round measured of one server.
#[derive(Debug, Clone)]
pub(crate) struct RunFigures {
    /// wrk's steady run.
    pub(crate) wrk: Run,
    /// The rest are loadgen's.
    pub(crate) rps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    /// CPU used in loadgen's steady window, in cores: this process (the client), the server,
    /// and the whole machine (the kernel's loopback TCP work is partly in the processes' time,
    /// partly in softirqs charged to none; other processes; a hypervisor's steal).
    pub(crate) client_cores: f64,
    pub(crate) server_cores: f64,
    pub(crate) machine_cores: f64,
    /// Failed requests from the end of the warm-up to the end of the run, by kind.
    pub(crate) failures: BTreeMap<FailureKind, u64>,
    /// Failed requests while the connections were being opened (not a result: the first
    /// connect storm may overflow a listener's queue; told apart so it is not hidden).
    pub(crate) warmup_failed: u64,
    pub(crate) upgrades: Vec<UpgradeFigures>,
}

/// One upgrade under load.
#[derive(Debug, Clone)]
pub(crate) struct UpgradeFigures {
    /// The handover as `upgrade_once` measured it: SIGUSR2 until a new connection is answered
    /// by the new pid, the new generation's own figures, its start step by step.
    pub(crate) handover: Handover,
    /// Of the requests started in the second after SIGUSR2.
    pub(crate) rps_after: f64,
    pub(crate) p99_after_ms: f64,
    pub(crate) max_after_ms: f64,
    /// The same p99, of those requests that opened a new connection, and of the others.
    pub(crate) p99_after_reconnected_ms: f64,
    pub(crate) p99_after_reused_ms: f64,
    /// Connections the client opened in the first second after the new generation was ready.
    pub(crate) reconnects_per_s: f64,
    /// When the client's connections were reopened, ms after SIGUSR2: the first, the median,
    /// the 99th percentile (of those opened within `UPGRADE_SPACING`).
    pub(crate) reconnect_ms: [f64; 3],
    /// Listen-queue overflows in this network namespace during the upgrade.
    pub(crate) listen: Option<ListenCounters>,
}

/// The measured servers of one mode run, in table order.
pub(crate) struct Contender {
    pub(crate) name: String,
    server: Served,
}

enum Served {
    /// The client's ceiling: measured steady only, not a contender.
    Nginx(Server),
    Bare(Server),
    Baton(Baton),
}

impl Contender {
    fn addr(&self) -> SocketAddr {
        match &self.server {
            Served::Nginx(server) | Served::Bare(server) => server.addr,
            Served::Baton(baton) => baton.server.addr,
        }
    }

    pub(crate) fn is_nginx(&self) -> bool {
        matches!(self.server, Served::Nginx(_))
    }

    pub(crate) fn is_bare(&self) -> bool {
        matches!(self.server, Served::Bare(_))
    }

    pub(crate) fn is_baton(&self) -> bool {
        matches!(self.server, Served::Baton(_))
    }
}

pub(crate) fn run(options: &Options) -> Result<(), SpeedError> {
    require(&["wrk", "nginx"])?;
    let (bare_program, baton_program) = programs()?;
    let counts = &options.crowd;
    let most = counts.iter().copied().max().unwrap_or(0);
    let fds = raise_fd_limit()?;
    let needed = u64::try_from(most)
        .unwrap_or(u64::MAX)
        .saturating_add(FD_MARGIN);
    if fds.soft < needed {
        return Err(SpeedError::Failed(format!(
            "{most} connections need about {needed} open files in the client and in each \
             server, and the hard limit is {} (raise it: ulimit -Hn, or LimitNOFILE)",
            fds.hard
        )));
    }
    let lame_duck = options.lame_duck.as_deref().unwrap_or(DEFAULT_LAME_DUCK);
    let extra = if most > DEFAULT_MAX_CONNECTIONS {
        format!("\n[limits]\nmax_connections = {}\n", most + 1000)
    } else {
        String::new()
    };

    let dir = tempfile::tempdir().map_err(io("temp dir"))?;
    let sub = |name: &str| -> Result<std::path::PathBuf, SpeedError> {
        let path = dir.path().join(name);
        std::fs::create_dir_all(&path).map_err(io("create a temp dir"))?;
        Ok(path)
    };
    // nginx's master only accepts nothing; its workers take the connections, each up to its
    // `worker_connections`.
    let nginx = start_nginx(&sub("nginx")?, most + 1024)?;
    let mut contenders = vec![
        Contender {
            name: "nginx (client ceiling)".into(),
            server: Served::Nginx(nginx),
        },
        Contender {
            name: "bare axum".into(),
            server: Served::Bare(start_bare(&bare_program, dir.path(), false)?),
        },
        Contender {
            name: "baton".into(),
            server: Served::Baton(start_baton(
                "baton".into(),
                &baton_program,
                &sub("baton")?,
                lame_duck,
                &extra,
            )?),
        },
    ];
    if let Some(program) = &options.compare {
        let name = format!("baton ({})", program.display());
        let baton = start_baton(name.clone(), program, &sub("other")?, lame_duck, &extra)?;
        contenders.push(Contender {
            name,
            server: Served::Baton(baton),
        });
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(io("start the client's tokio runtime"))?;
    let workers = std::thread::available_parallelism().map_or(1, usize::from);

    figures::print_header(options, &fds, lame_duck, &extra, workers);
    let started = Instant::now();
    for &count in counts {
        let mut runs: Vec<Vec<RunFigures>> = vec![Vec::new(); contenders.len()];
        for round in 0..options.rounds {
            for i in 0..contenders.len() {
                let index = (i + round) % contenders.len();
                let contender = &contenders[index];
                let (baton, pid) = match &contender.server {
                    Served::Baton(baton) => (Some(baton), None),
                    Served::Nginx(server) | Served::Bare(server) => (None, Some(server.pid())),
                };
                let steady = wrk(
                    Client::SHARED,
                    contender.addr(),
                    Kind::KeepAlive,
                    count,
                    options.seconds,
                )?;
                let figures = measure(
                    &runtime,
                    (contender.addr(), pid),
                    (baton, steady),
                    options,
                    count,
                )?;
                runs[index].push(figures);
            }
        }
        figures::print_count(count, &contenders, &runs);
    }
    println!(
        "\nThe run took {:.0} s.",
        started.elapsed().as_secs_f64().ceil()
    );
    Ok(())
}

/// Polls `done` every 10 ms until it holds; an error naming `what` after `deadline`.
fn poll(deadline: Instant, what: &str, mut done: impl FnMut() -> bool) -> Result<(), SpeedError> {
    while !done() {
        if Instant::now() > deadline {
            return Err(SpeedError::Failed(format!("{what} within {LIMIT:?}")));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Waits until `at`: the length of a measurement, not a synchronisation.
fn wait_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

fn ms(duration: Option<Duration>) -> f64 {
    duration.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

/// One load run of `count` keep-alive connections on `addr`: open them all, let each serve a
/// few requests, measure `--seconds` steady, then (for baton) `--crowd-upgrades` upgrades.
/// `server` is the pid whose CPU time (with its children's) is taken; baton's is found here.
/// `wrk` is kept in the figures as it is.
fn measure(
    runtime: &Runtime,
    (addr, server): (SocketAddr, Option<u32>),
    (baton, wrk): (Option<&Baton>, Run),
    options: &Options,
    count: usize,
) -> Result<RunFigures, SpeedError> {
    let server = match baton {
        Some(baton) => who_answers(baton.server.addr),
        None => server,
    };
    let upgrades = if baton.is_some() {
        options.crowd_upgrades
    } else {
        0
    };
    let seconds = Duration::from_secs(options.seconds);
    // A bound only: the run is stopped once measured.
    let bound = LIMIT * 2 + seconds + (LIMIT * 2 + UPGRADE_SPACING) * upgrades as u32;
    let load = {
        let _runtime = runtime.enter();
        loadgen::start(LoadConfig {
            connections: count,
            max_duration: bound,
            ..LoadConfig::new(addr)
        })
    };
    let origin = Instant::now() - load.snapshot().elapsed;
    let deadline = Instant::now() + LIMIT;
    let all = u64::try_from(count).unwrap_or(u64::MAX);
    poll(deadline, &format!("{count} connections not open"), || {
        load.snapshot().connects >= all
    })?;
    let served = load.snapshot().ok;
    poll(deadline, "the connections did not serve", || {
        load.snapshot().ok >= served + 2 * all
    })?;
    let warm = load.snapshot();
    let steady = warm.elapsed..warm.elapsed + seconds;
    let cpu = (own_cpu(), server.and_then(process_tree_cpu), machine_busy());
    wait_until(origin + steady.end);
    let cores = |before: Option<Duration>, after: Option<Duration>| match (before, after) {
        (Some(before), Some(after)) => {
            after.saturating_sub(before).as_secs_f64() / seconds.as_secs_f64()
        }
        _ => f64::NAN,
    };
    let client_cores = cores(Some(cpu.0), Some(own_cpu()));
    let server_cores = cores(cpu.1, server.and_then(process_tree_cpu));
    let machine_cores = cores(cpu.2, machine_busy());

    let mut handovers = Vec::new();
    if let Some(baton) = baton {
        for _ in 0..upgrades {
            let before = ListenCounters::read();
            let handover = upgrade_once(baton.server.addr, baton.admin, &baton.dir)?;
            wait_until(handover.signalled + UPGRADE_SPACING);
            let listen = before
                .zip(ListenCounters::read())
                .map(|(before, after)| after.since(before));
            handovers.push((handover, listen));
        }
    }
    let report = runtime.block_on(load.stop());

    let mut failures = report.failures.clone();
    for (kind, before) in &warm.failures {
        if let Some(count) = failures.get_mut(kind) {
            *count = count.saturating_sub(*before);
        }
    }
    failures.retain(|_, count| *count > 0);
    let window = Some(steady.clone());
    let upgrades = handovers
        .iter()
        .map(|(handover, listen)| {
            let at = handover.signalled.saturating_duration_since(origin);
            upgrade_figures(&report, at, handover, *listen)
        })
        .collect();
    Ok(RunFigures {
        wrk,
        rps: report.throughput(window.clone()),
        p50_ms: ms(report.quantile(0.5, window.clone())),
        p99_ms: ms(report.quantile(0.99, window.clone())),
        max_ms: ms(report.quantile(1.0, window)),
        client_cores,
        server_cores,
        machine_cores,
        failures,
        warmup_failed: warm.failed(),
        upgrades,
    })
}

/// The figures of the upgrade signalled `at` (from the start of the load).
fn upgrade_figures(
    report: &Report,
    at: Duration,
    handover: &Handover,
    listen: Option<ListenCounters>,
) -> UpgradeFigures {
    let ready_ms = handover.ready_ms;
    let after = Some(at..at + AFTER);
    let ready = if ready_ms.is_finite() && ready_ms >= 0.0 {
        at + Duration::from_secs_f64(ready_ms / 1000.0)
    } else {
        at
    };
    let reconnects = report.connects_in(Some(ready..ready + Duration::from_secs(1)));
    let p99_where = |reconnected: bool| {
        let mut latencies: Vec<u32> = report
            .samples_in(after.clone())
            .iter()
            .filter(|s| s.ok && (s.connects > 0) == reconnected)
            .map(|s| s.latency_us)
            .collect();
        latencies.sort_unstable();
        let rank = (0.99 * latencies.len() as f64).ceil() as usize;
        let at = rank
            .saturating_sub(1)
            .min(latencies.len().saturating_sub(1));
        latencies
            .get(at)
            .map_or(f64::NAN, |us| f64::from(*us) / 1000.0)
    };
    UpgradeFigures {
        handover: handover.clone(),
        rps_after: report.throughput(after.clone()),
        p99_after_ms: ms(report.quantile(0.99, after.clone())),
        max_after_ms: ms(report.quantile(1.0, after.clone())),
        p99_after_reconnected_ms: p99_where(true),
        p99_after_reused_ms: p99_where(false),
        reconnects_per_s: reconnects as f64,
        reconnect_ms: reconnect_times(report, at..at + UPGRADE_SPACING),
        listen,
    }
}

/// The first, median and 99th-percentile start of the requests that opened a connection in
/// `window`, in ms from its start (nearest rank).
fn reconnect_times(report: &Report, window: Range<Duration>) -> [f64; 3] {
    let from = window.start;
    let times: Vec<f64> = report
        .samples_in(Some(window))
        .iter()
        .filter(|sample| sample.connects > 0)
        .map(|sample| (sample.start().saturating_sub(from)).as_secs_f64() * 1000.0)
        .collect();
    if times.is_empty() {
        return [f64::NAN; 3];
    }
    // Sorted already: samples are in start order.
    let rank = |q: f64| {
        let rank = (q * times.len() as f64).ceil() as usize;
        times[rank.saturating_sub(1).min(times.len() - 1)]
    };
    [times[0], rank(0.5), rank(0.99)]
}
