//! baton next to bare axum and nginx under `wrk`, and how fast a handover is (issue 16); with
//! `--crowd`, the same at thousands of keep-alive connections (issue 17).
//!
//! ```text
//! cargo build --release --bin baton --example bare_axum --example speed
//! target/release/examples/speed [--rounds 3] [--seconds 5] [--connections 50] [--upgrades 10] [--pin]
//!                               [--pipeline 16]
//! target/release/examples/speed --crowd 2000,5000 [--rounds 3] [--seconds 5] [--crowd-upgrades 3]
//! target/release/examples/speed --handover-only [--upgrades 10] [--compare OTHER_BATON]
//! ```
//!
//! `wrk` and `nginx` must be on `PATH` (Debian: `apt-get install wrk nginx-light`). It starts the
//! servers on loopback in a temporary directory: nginx `return 200` (its own
//! `worker_processes auto`), `examples/bare_axum` (`axum::serve` hello world) twice, as
//! `axum::serve` leaves it and with TCP_NODELAY as baton sets it, and `baton serve` with its
//! defaults. Then:
//! 1. **Calibration**: wrk against nginx, the cheapest server here. Its req/s is a lower bound
//!    of what wrk can send on this machine; a server above 80 % of it is marked client-bound
//!    (wrk, not the server, may be what limits it), and its ratio is not a result. With
//!    `--pin`, wrk has a core of its own and its CPU time says it directly: a server is marked
//!    client-bound when its runs kept wrk's core 90 % busy or more (median; the `wrk busy`
//!    column, printed in both modes).
//! 2. **Throughput**: each server in turn, keep-alive and `Connection: close`, in interleaved
//!    rounds whose order rotates, so a neighbour's burst does not favour one server; the
//!    medians and the ratios to both bare axums and nginx, each server's CPU time per request,
//!    and the ratios within each round (the median, its 95 % confidence interval and the
//!    range), which the machine's drift between rounds does not move. With `--pipeline N`,
//!    also keep-alive with N requests per write: where wrk's plain keep-alive ceiling is
//!    within reach of the servers, the pipelined load has a ceiling of its own, well above.
//! 3. **Handover**: K upgrades (SIGUSR2) idle and K under wrk keep-alive load: from the signal
//!    until a new connection is answered by the new pid, and the new generation's own figures
//!    from `/-/status` (request to spawn, request to ready, so spawn to ready).
//!
//! Every figure is printed, never asserted: exit 1 only if a request failed (a wrk socket
//! error or non-2xx, a probe that failed) or a server did not start.
//!
//! `--handover-only` runs only step 3's idle upgrades (no wrk, no nginx needed), alternating
//! with `--compare`'s build if given, and prints the new process's steps.
//!
//! `--crowd N,...` runs the many-connections mode instead (see `crowd`): loadgen keep-alive
//! load of N connections on bare axum and baton (and `--compare`), steady and across upgrades,
//! with issue 17's targets marked met or missed. It exits 1 only on a broken run (a server
//! that does not start, an upgrade that does not complete): a missed target, failed requests
//! included, is a figure.
//!
//! # Layout
//! - `servers`: start nginx, bare axum and baton on free loopback ports; stop them on drop.
//! - `wrk`: one wrk run and its figures.
//! - `throughput`: the interleaved rounds, each server's CPU per request, the ratios within
//!   each round.
//! - `handover`: one upgrade and its timings; which pid answers.
//! - `crowd`: the many-connections mode: its runs and what each measured.
//! - `figures`: the many-connections mode's tables and targets.
//! - `host`: the open-files limit, listen-queue counters, CPU time.

mod crowd;
mod figures;
mod handover;
mod host;
#[path = "../common/serve.rs"]
mod serve;
mod servers;
mod throughput;
mod wrk;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use clap::Parser;
use nix::sched::{CpuSet, sched_setaffinity};
use nix::unistd::Pid;

use handover::{Handover, handovers, print_handovers, print_handovers_header, print_steps};
use servers::{start_bare, start_baton, start_nginx};
use wrk::{Client, Kind, wrk};

#[derive(Debug, Parser)]
#[command(about = "baton vs bare axum vs nginx under wrk, and the handover time")]
struct Options {
    /// Interleaved rounds per load kind.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// wrk connections (`-c`); wrk runs two threads (`-t2`), one with `--pin`.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Upgrades idle, and again under load.
    #[arg(long, default_value_t = 10)]
    upgrades: usize,
    /// Another baton build to load in the same rounds (e.g. main's, for a before/after
    /// comparison that the machine's drift cannot bias).
    #[arg(long)]
    compare: Option<PathBuf>,
    /// Many keep-alive connections instead (issue 17): for each count, bare axum and baton
    /// under loadgen, steady and across upgrades (e.g. `--crowd 2000,5000`).
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    crowd: Vec<usize>,
    /// Upgrades per round under load, with `--crowd`.
    #[arg(long, default_value_t = 3)]
    crowd_upgrades: usize,
    /// baton's `lifecycle.lame_duck`: 300ms unless given for the wrk comparison, baton's
    /// default (2s) unless given with `--crowd`.
    #[arg(long, value_name = "DURATION")]
    lame_duck: Option<String>,
    /// Only the idle handovers and the new process's steps (no wrk, no nginx): `--upgrades`
    /// of them, alternating with `--compare`'s build if given.
    #[arg(long)]
    handover_only: bool,
    /// The servers on CPU 1 (so each runtime starts one worker: they follow the affinity) and
    /// wrk on CPU 0 with one thread: the two never take each other's core, so a server's CPU
    /// time per request is its own, whatever the scheduler does. Needs `taskset` (util-linux).
    #[arg(long)]
    pin: bool,
    /// Also a keep-alive load with DEPTH requests pipelined per write on each connection: it
    /// costs wrk less than half as much per request (pinned: 55 % of its core at 147k req/s
    /// against 100 % at 108k), so it measures the servers where plain keep-alive is
    /// client-bound. Compare with bare axum under TCP_NODELAY: without it,
    /// Nagle's algorithm holds the second response of a batch for the client's delayed ACK.
    #[arg(long, value_name = "DEPTH", value_parser = clap::value_parser!(u32).range(2..=256))]
    pipeline: Option<u32>,
}

/// The first servers of the wrk comparison, in this order: the ratios are to them.
const NGINX: usize = 0;
const BARE: usize = 1;
const BARE_NODELAY: usize = 2;

/// With `--pin`, a server whose runs kept wrk's core this busy (median) is marked client-bound:
/// wrk, not the server, was then the limit.
const CLIENT_BUSY: f64 = 0.9;

/// Where `--pin` puts the servers and wrk.
const SERVER_CPU: usize = 1;
const CLIENT_CPU: usize = 0;

/// Bound on starting a server and on one handover.
const LIMIT: Duration = Duration::from_secs(20);

/// The lame duck of the baton the wrk comparison starts, unless `--lame-duck` is given.
const LAME_DUCK: &str = "300ms";

#[derive(Debug, thiserror::Error)]
enum SpeedError {
    #[error("{0} not found on PATH; install it (Debian: apt-get install wrk nginx-light)")]
    Tool(&'static str),
    #[error("{0} not found; build it: cargo build --release --bin baton --example bare_axum")]
    Binary(PathBuf),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SpeedError {
    let what = what.into();
    move |source| SpeedError::Io { what, source }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Exits with `SpeedError::Tool` unless each of `tools` is on `PATH`.
fn require(tools: &[&'static str]) -> Result<(), SpeedError> {
    for tool in tools {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map_or(true, |s| !s.success())
        {
            return Err(SpeedError::Tool(tool));
        }
    }
    Ok(())
}

/// The bare axum example and the baton binary, next to this executable.
fn programs() -> Result<(PathBuf, PathBuf), SpeedError> {
    let here = std::env::current_exe().map_err(io("current executable"))?;
    let examples = here.parent().map(Path::to_path_buf).unwrap_or_default();
    let bare_program = examples.join("bare_axum");
    let baton_program = examples.join("../baton");
    for program in [&bare_program, &baton_program] {
        if !program.exists() {
            return Err(SpeedError::Binary(program.clone()));
        }
    }
    Ok((bare_program, baton_program))
}

/// The idle handovers alone, one build's alternating with the other's when `--compare` is
/// given, so that a change in the machine's speed hits both alike.
fn handover_only(options: &Options) -> Result<(), SpeedError> {
    let (_, baton_program) = programs()?;
    let dir = tempfile::tempdir().map_err(io("temp dir"))?;
    let lame_duck = options.lame_duck.as_deref().unwrap_or(LAME_DUCK);
    let mut builds = vec![(baton_program, dir.path().join("baton"))];
    builds.extend(
        options
            .compare
            .iter()
            .map(|program| (program.clone(), dir.path().join("other"))),
    );
    let mut started = Vec::new();
    for (program, build_dir) in &builds {
        std::fs::create_dir_all(build_dir).map_err(io("create a temp dir"))?;
        let name = program.display().to_string();
        started.push(start_baton(name, program, build_dir, lame_duck, "")?);
    }
    let mut measured: Vec<Vec<Handover>> = vec![Vec::new(); started.len()];
    for _ in 0..options.upgrades {
        for (baton, all) in started.iter().zip(&mut measured) {
            all.extend(handovers(baton.server.addr, baton.admin, &baton.dir, 1)?);
        }
    }
    print_handovers_header();
    for (baton, all) in started.iter().zip(&measured) {
        print_handovers(&format!("idle, {}", baton.server.name), all);
    }
    for (baton, all) in started.iter().zip(&measured) {
        print_steps(&format!("idle, {}", baton.server.name), all);
    }
    Ok(())
}

/// baton vs bare axum vs nginx under wrk, then the handovers idle and under wrk.
fn run(options: &Options) -> Result<bool, SpeedError> {
    require(&["wrk", "nginx"])?;
    let client = if options.pin {
        require(&["taskset"])?;
        // Inherited by every server started from here on, and by baton's next generations.
        let mut cpus = CpuSet::new();
        cpus.set(SERVER_CPU)
            .and_then(|()| sched_setaffinity(Pid::from_raw(0), &cpus))
            .map_err(|errno| {
                SpeedError::Failed(format!(
                    "cannot pin the servers to CPU {SERVER_CPU}: {errno}"
                ))
            })?;
        Client {
            threads: 1,
            cpu: Some(CLIENT_CPU),
        }
    } else {
        Client::SHARED
    };
    let (bare_program, baton_program) = programs()?;
    let dir = tempfile::tempdir().map_err(io("temp dir"))?;
    let nginx_dir = dir.path().join("nginx");
    let baton_dir = dir.path().join("baton");
    for d in [&nginx_dir, &baton_dir] {
        std::fs::create_dir_all(d).map_err(io("create a temp dir"))?;
    }
    let nginx = start_nginx(&nginx_dir, 4096)?;
    let bare = start_bare(&bare_program, dir.path(), false)?;
    let bare_nodelay = start_bare(&bare_program, dir.path(), true)?;
    let lame_duck = options.lame_duck.as_deref().unwrap_or(LAME_DUCK);
    let baton = start_baton("baton".into(), &baton_program, &baton_dir, lame_duck, "")?;
    let other = match &options.compare {
        Some(program) => {
            let other_dir = dir.path().join("other");
            std::fs::create_dir_all(&other_dir).map_err(io("create a temp dir"))?;
            let name = format!("baton ({})", program.display());
            Some(start_baton(name, program, &other_dir, lame_duck, "")?)
        }
        None => None,
    };
    let mut clean = true;

    // wrk warms up against the cheapest server first; its best figure, there or in the rounds,
    // is the least the client can do on this machine.
    let connections = options.connections;
    let mut ceiling = wrk(
        client,
        nginx.addr,
        Kind::KeepAlive,
        connections,
        options.seconds,
    )?
    .rps;
    // In the order of `NGINX`, `BARE` and `BARE_NODELAY`, which the ratios below count on.
    let mut servers = vec![&nginx, &bare, &bare_nodelay, &baton.server];
    servers.extend(other.as_ref().map(|b| &b.server));
    let mut rows = Vec::new();
    let mut within = Vec::new();
    let kinds = [
        Some(Kind::KeepAlive),
        Some(Kind::Close),
        options.pipeline.map(Kind::Pipelined),
    ];
    let mut pipelined_ceiling = None;
    for kind in kinds.into_iter().flatten() {
        let rounds = throughput::rounds(
            client,
            &servers,
            kind,
            connections,
            options.seconds,
            options.rounds,
        )?;
        clean &= (0..servers.len()).all(|index| rounds.of(index).iter().all(|m| m.run.errors == 0));
        let best_nginx = rounds
            .of(NGINX)
            .iter()
            .map(|m| m.run.rps)
            .fold(ceiling, f64::max);
        // What the client can do for this load: close is judged by the keep-alive ceiling; a
        // pipelined request costs wrk less than a plain one, so that load has its own.
        if kind == Kind::KeepAlive {
            ceiling = best_nginx;
        }
        let ceiling = match kind {
            Kind::KeepAlive | Kind::Close => ceiling,
            Kind::Pipelined(_) => *pipelined_ceiling.insert(best_nginx),
        };
        let rps: Vec<f64> = (0..servers.len()).map(|i| rounds.rps(i)).collect();
        for (index, server) in servers.iter().enumerate() {
            let runs = rounds.of(index);
            let p99 = median(runs.iter().map(|m| m.run.p99_ms).collect());
            let each: Vec<String> = runs.iter().map(|m| format!("{:.0}", m.run.rps)).collect();
            let cpu = rounds
                .cpu_us(index)
                .map_or_else(|| "?".to_owned(), |us| format!("{us:.2}"));
            let busy = median(runs.iter().filter_map(|m| m.run.client_busy).collect());
            // Pinned, wrk has a core of its own, and how busy it kept it says whether it was
            // the limit. Sharing the cores with the server, it cannot be told apart from the
            // server's share: then a figure near the client's ceiling may be wrk's limit.
            let client_bound = if client.cpu.is_some() {
                busy >= CLIENT_BUSY
            } else {
                runs.iter().any(|m| m.run.rps > 0.8 * ceiling)
            };
            let bound = if index != NGINX && client_bound {
                " (client-bound)"
            } else {
                ""
            };
            rows.push(format!(
                "| {kind:?} | {} | {:.0}{bound} | {p99:.2} | {} | {cpu} | {:.0} % | {:.2} | {:.2} | {:.2} |",
                server.name,
                rps[index],
                each.join(", "),
                busy * 100.0,
                rps[index] / rps[BARE],
                rps[index] / rps[BARE_NODELAY],
                rps[index] / rps[NGINX],
            ));
            if index != BARE && index != BARE_NODELAY {
                // Pipelined, bare axum without TCP_NODELAY waits on delayed ACKs: the other
                // is the one to compare with.
                let cpu_base = match kind {
                    Kind::Pipelined(_) => BARE_NODELAY,
                    Kind::KeepAlive | Kind::Close => BARE,
                };
                let cpu = rounds
                    .cpu_ratios(index, cpu_base)
                    .map_or_else(|| "?".to_owned(), |spread| spread.to_string());
                within.push(format!(
                    "| {kind:?} | {} | {} | {} | {cpu} |",
                    server.name,
                    rounds.ratios(index, BARE),
                    rounds.ratios(index, BARE_NODELAY),
                ));
            }
        }
    }
    let placement = match client.cpu {
        Some(cpu) => format!("servers on CPU {SERVER_CPU}, wrk on CPU {cpu}"),
        None => "servers and wrk on any CPU".to_owned(),
    };
    println!(
        "wrk -t{} -c{} -d{}s, {} rounds, {placement}; client ceiling (best wrk figure against \
         nginx, the cheapest server): {ceiling:.0} req/s\n",
        client.threads, options.connections, options.seconds, options.rounds
    );
    if let (Some(depth), Some(pipelined)) = (options.pipeline, pipelined_ceiling) {
        println!(
            "Pipelined({depth}): {depth} requests per write on each connection; client ceiling \
             for it (best wrk figure against nginx, pipelined): {pipelined:.0} req/s\n"
        );
    }
    println!(
        "| load | server | req/s (median) | p99 ms (median) | rounds (req/s) | CPU µs per request (median) | wrk busy (median) | vs bare axum | vs bare axum, TCP_NODELAY | vs nginx |"
    );
    println!("| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |");
    for row in rows {
        println!("{row}");
    }
    println!(
        "\nWithin each round (the servers of a round run seconds apart, so the machine's drift \
         hits them alike): the median of the rounds' ratios, its 95 % confidence interval \
         (distribution-free, from 8 rounds on) and their range\n"
    );
    println!(
        "| load | server | req/s ÷ bare axum's | req/s ÷ bare axum's, TCP_NODELAY | bare axum's CPU per request ÷ this server's (pipelined: with TCP_NODELAY) |"
    );
    println!("| --- | --- | ---: | ---: | ---: |");
    for row in within {
        println!("{row}");
    }

    println!();
    print_handovers_header();
    let idle = handovers(baton.server.addr, baton.admin, &baton_dir, options.upgrades)?;
    print_handovers("idle", &idle);
    let seconds = options.seconds.max(2) * 4;
    let loaded = std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            wrk(
                client,
                baton.server.addr,
                Kind::KeepAlive,
                connections,
                seconds,
            )
        });
        let measured = handovers(baton.server.addr, baton.admin, &baton_dir, options.upgrades);
        (measured, load.join())
    });
    let (measured, load) = loaded;
    let measured = measured?;
    print_handovers(&format!("under wrk -c{}", options.connections), &measured);
    match load {
        Ok(Ok(run)) => {
            clean &= run.errors == 0;
            println!(
                "\nwrk during the loaded upgrades: {:.0} req/s, p99 {:.2} ms, {} errors",
                run.rps, run.p99_ms, run.errors
            );
        }
        Ok(Err(err)) => return Err(err),
        Err(_) => return Err(SpeedError::Failed("the wrk thread panicked".into())),
    }
    print_steps("idle", &idle);
    print_steps(&format!("under wrk -c{}", options.connections), &measured);
    // The current generation is not our child any more: the guard stops it by the pid that
    // answers.
    Ok(clean)
}

fn main() -> ExitCode {
    let options = Options::parse();
    // In the other modes every figure is a result, a failed request included: only a broken
    // run (a server that does not start, an upgrade that never completes) is an error.
    let clean = if options.handover_only {
        handover_only(&options).map(|()| true)
    } else if !options.crowd.is_empty() {
        crowd::run(&options).map(|()| true)
    } else {
        run(&options)
    };
    match clean {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("speed: a request failed (see wrk's errors above)");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("speed: {err}");
            ExitCode::FAILURE
        }
    }
}
