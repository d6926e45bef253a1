//! baton's upgrade-and-reload benchmark.
//!
//! ```text
//! cargo run --release --example bench -- [--short] [--json PATH] [--plot FILE] [options]
//! ```
//!
//! Run through `cargo run`, it first builds the release `baton` binary and the `bare_axum`
//! example (run directly, build them with `cargo build --release --workspace --examples`).
//! It starts `target/release/baton serve` in a temporary directory with its own configuration
//! (loopback, ports from the kernel, read back from `run/baton.state.json`), then for each mode
//! (`keepalive`, `close`, `h2`, `slow`) drives 64 connections of load with a client that never
//! retries (`loadgen`), upgrades the binary K times (SIGUSR2) and reloads the configuration M
//! times (SIGUSR1) while the load runs, and measures the same load against a bare axum hello
//! world for the template's cost. It prints one table (Markdown) and can write every figure as
//! JSON. See BENCHMARKS.md for the published figures and what they mean.
//!
//! The exit status is 1 only if a request failed (load or probe) or a process was left
//! running (or the run could not complete, e.g. an upgrade never took over); never for a
//! timing. Everything it started is stopped at the end, SIGTERM then SIGKILL, by verified pid.
//!
//! # Layout
//! - `options`: the command line and the per-mode plan.
//! - `server`: the baton lineage (start, upgrade, reload, stop) and the bare axum process.
//! - `probe`: single requests that see which process answers with which greeting.
//! - `scenario`: one mode's timeline, and the paired rounds against bare axum.
//! - `figures`: the figures, the table, the JSON.
//! - `plot`: the SVG timeline of each mode (`--plot`).
//! - `procfs`: `/proc` (memory, fds, liveness), signals by verified pid, reaping, the machine.

mod figures;
mod options;
mod plot;
mod probe;
mod procfs;
mod scenario;
#[path = "../common/serve.rs"]
mod serve;
mod server;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use clap::Parser;

use figures::{ProcessFigures, RunFigures};
use options::Options;
use procfs::{CpuClock, Machine, Process};
use server::{Bare, Baton};

/// Why the bench could not run or complete.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BenchError {
    #[error(
        "{} not found; build it with `cargo build --release --workspace --examples` or pass \
         its path (--baton / --bare)",
        .0.display()
    )]
    Missing(PathBuf),
    #[error("`cargo build` for the benchmark's binaries failed; see its output above")]
    Build,
    #[error("cannot start {}: {source}", program.display())]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("baton: {what} (its log: {})", log.display())]
    Server { what: String, log: PathBuf },
    #[error("bare axum baseline: {0}")]
    Baseline(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn main() -> ExitCode {
    let options = Options::parse();
    if cfg!(debug_assertions) {
        eprintln!(
            "bench: this is a debug build; run it with `cargo run --release --example bench`: \
             a debug load generator cannot load a release server"
        );
        return ExitCode::from(2);
    }
    match run(&options) {
        Ok(figures) => report(&options, &figures),
        Err(err) => {
            eprintln!("bench: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the table, writes the JSON, and turns the verdict into the exit status.
fn report(options: &Options, figures: &RunFigures) -> ExitCode {
    let machine = &figures.machine;
    println!(
        "baton {} | {} cores, {} | kernel {} | {}",
        figures.version.as_deref().unwrap_or("?"),
        machine.nproc,
        machine.cpu,
        machine.kernel,
        machine.rustc
    );
    println!("$ {}\n", figures.command);
    println!("{}", figures.table());
    if let Some(path) = &options.json {
        let written = serde_json::to_vec_pretty(figures)
            .map_err(std::io::Error::other)
            .and_then(|json| std::fs::write(path, json));
        if let Err(err) = written {
            eprintln!("bench: cannot write {}: {err}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if let Some(path) = &options.plot {
        let timelines: Vec<_> = figures.modes.iter().map(|m| m.timeline.clone()).collect();
        if let Err(err) = plot::write(path, &timelines) {
            eprintln!("bench: cannot write {}: {err}", path.display());
            return ExitCode::FAILURE;
        }
    }
    for mode in &figures.modes {
        for failure in mode.first_failures.iter().take(5) {
            eprintln!("bench: {}: failed request {failure}", mode.mode);
        }
        if mode.all_failed() > 5 {
            eprintln!(
                "bench: {}: ... {} failed requests in all, by kind in the table",
                mode.mode,
                mode.all_failed()
            );
        }
    }
    if figures.passed() {
        eprintln!(
            "bench: PASS: {} upgrades and {} reloads, no failed request, no leftover process",
            figures.upgrades, figures.reloads
        );
        return ExitCode::SUCCESS;
    }
    if let Some(error) = &figures.error {
        eprintln!("bench: FAIL: the run did not complete: {error}");
    }
    if figures.failed_requests > 0 {
        eprintln!(
            "bench: FAIL: {} failed request(s); see the table",
            figures.failed_requests
        );
    }
    for leftover in &figures.leftovers {
        eprintln!("bench: FAIL: leftover process: {leftover}");
    }
    ExitCode::FAILURE
}

fn run(options: &Options) -> Result<RunFigures, BenchError> {
    let wall = Instant::now();
    let (baton_program, bare_program) = binaries(options)?;
    if let Err(err) = procfs::become_subreaper() {
        eprintln!("bench: cannot become a child subreaper ({err}); exit statuses will be missing");
    }
    let machine = Machine::describe();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let workdir = tempfile::Builder::new().prefix("baton-bench-").tempdir()?;
    let dir = workdir.path().canonicalize()?;
    // Every process is stopped when `measure` returns, before the directory may be removed.
    let outcome =
        measure(options, &runtime, &dir, &baton_program, &bare_program).map(|mut figures| {
            figures.machine = machine;
            figures.wall_seconds = wall.elapsed().as_secs_f64();
            figures
        });
    let passed = matches!(&outcome, Ok(figures) if figures.passed());
    if options.keep || !passed {
        // Keep the server's log for whoever reads the failure.
        let kept = workdir.keep();
        eprintln!("bench: kept {} (baton.log is there)", kept.display());
        if !passed {
            print_log_tail(&kept.join("baton.log"), 30);
        }
    }
    outcome
}

/// Starts the processes in `dir`, runs every mode, stops everything and collects the figures.
fn measure(
    options: &Options,
    runtime: &tokio::runtime::Runtime,
    dir: &Path,
    baton_program: &Path,
    bare_program: &Path,
) -> Result<RunFigures, BenchError> {
    let mut baton = Baton::start(baton_program, dir)?;
    let first = baton.current();
    let idle_first = first.and_then(Process::memory);
    let fds_first = first.and_then(Process::settled_fds);
    // The first generation holds whatever its launcher left open (e.g. cargo's jobserver pipe
    // under `cargo run`), and an upgrade passes on only the listening sockets: so the fd
    // baseline is the first generation started by an upgrade, idle, before any load.
    let mut setup = probe::Probes::default();
    baton.upgrade(&mut setup)?;
    if setup.failures.values().sum::<u64>() > 0 {
        return Err(BenchError::Server {
            what: format!(
                "requests failed during the first upgrade, without load: {}",
                setup.first_failures.join("; ")
            ),
            log: dir.join("baton.log"),
        });
    }
    let second = baton.current();
    let idle_second = second.and_then(Process::memory);
    let fds_before = second.and_then(Process::settled_fds);
    let mut bare = match options.no_baseline {
        true => None,
        false => Some(Bare::start(bare_program, dir)?),
    };

    let mut modes = Vec::new();
    let mut error = None;
    for plan in options.plans() {
        eprintln!(
            "bench: {}: {} connections, {} upgrades, {} reloads",
            plan.name.as_str(),
            plan.connections,
            plan.upgrades,
            plan.reloads
        );
        let live = |baton: &Baton| {
            let mut pids = baton.live_pids();
            pids.extend(bare.as_ref().map(Bare::pid));
            pids
        };
        let clock = CpuClock::read(&live(&baton));
        let outcome = (|| {
            let comparison = match &bare {
                Some(bare) if plan.rounds > 0 => {
                    Some(scenario::compare(runtime, bare, &baton, &plan)?)
                }
                _ => None,
            };
            let mut figures = scenario::run_mode(runtime, &mut baton, &plan)?;
            if let Some(comparison) = &comparison {
                // The template's requests in the rounds are requests like any other.
                figures.requests += comparison.template_requests;
                for (kind, count) in &comparison.template_failures {
                    *figures.failures.entry(kind.clone()).or_insert(0) += count;
                    figures.failed += count;
                }
                figures
                    .first_failures
                    .extend(comparison.first_failures.iter().cloned());
            }
            figures.comparison = comparison;
            Ok::<_, BenchError>(figures)
        })();
        let outcome = outcome.map(|mut figures| {
            let now = CpuClock::read(&live(&baton));
            figures.cpu = clock.zip(now).and_then(|(from, to)| from.share_until(&to));
            figures
        });
        match outcome {
            Ok(figures) => modes.push(figures),
            Err(err) => {
                error = Some(err.to_string());
                break;
            }
        }
    }

    let last = baton.current();
    let fds_after = last.and_then(Process::settled_fds);
    let idle_last = last.and_then(Process::memory);

    let mut leftovers = bare.as_mut().map(Bare::stop).unwrap_or_default();
    leftovers.extend(baton.stop());
    drop(bare);
    procfs::reap_exited_children(10_000);
    for (process, cmdline) in procfs::processes_in(dir) {
        leftovers.push(format!(
            "pid {} ({cmdline}) still running in {}; killed",
            process.pid,
            dir.display()
        ));
        let _ = process.signal(nix::sys::signal::Signal::SIGKILL);
    }
    procfs::reap_exited_children(10_000);

    let failed_requests = modes.iter().map(|m| m.all_failed()).sum();
    let figures = RunFigures {
        machine: Machine::default(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        baton: baton_program.display().to_string(),
        version: baton.version().map(str::to_owned),
        upgrades: modes.iter().map(|m| m.upgrades).sum(),
        reloads: modes.iter().map(|m| m.reloads).sum(),
        modes,
        process: ProcessFigures {
            idle_first,
            idle_second,
            idle_last,
            fds_first,
            fds_before,
            fds_after,
            generations: baton.generations().to_vec(),
        },
        failed_requests,
        leftovers,
        error,
        wall_seconds: 0.0,
    };
    Ok(figures)
}

/// The binaries under test: given, or next to this program in the same target directory.
/// Started by `cargo run`, builds them first so a stale binary is never measured.
fn binaries(options: &Options) -> Result<(PathBuf, PathBuf), BenchError> {
    let exe = std::env::current_exe()?;
    // target/release/examples/bench -> target/release
    let examples = exe.parent().unwrap_or(Path::new("."));
    let profile = examples.parent().unwrap_or(Path::new("."));
    let baton = options
        .baton
        .clone()
        .unwrap_or_else(|| profile.join("baton"));
    let bare = options
        .bare
        .clone()
        .unwrap_or_else(|| examples.join("bare_axum"));
    if let Some(cargo) = std::env::var_os("CARGO").filter(|_| !options.no_build) {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        eprintln!("bench: building the release baton binary and bare_axum example");
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "--bin",
                "baton",
                "--example",
                "bare_axum",
            ])
            .arg("--manifest-path")
            .arg(manifest)
            .status()?;
        if !status.success() {
            return Err(BenchError::Build);
        }
    }
    for program in [&baton, &bare] {
        if !program.is_file() {
            return Err(BenchError::Missing(program.clone()));
        }
    }
    Ok((baton.canonicalize()?, bare.canonicalize()?))
}

fn print_log_tail(log: &Path, lines: usize) {
    let Ok(text) = std::fs::read_to_string(log) else {
        return;
    };
    let all: Vec<&str> = text.lines().collect();
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "bench: last lines of {}:", log.display());
    for line in &all[all.len().saturating_sub(lines)..] {
        let _ = writeln!(stderr, "  {line}");
    }
}
