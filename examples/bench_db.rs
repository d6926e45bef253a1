//! The database under binary upgrades: writes and reads per second before, during and after
//! upgrades, the write latency in the second after each SIGUSR2, the peak number of database
//! connections, and whether every acknowledged write is stored, once.
//!
//! ```text
//! cargo run --release --example bench_db -- [--database-url URL] [--upgrades K] [options]
//! ```
//!
//! It starts `target/release/baton serve` in a temporary directory (loopback, ports from the
//! kernel; SQLite in that directory unless `--database-url` names a PostgreSQL database the
//! bench may write to, e.g. the one `scripts/postgres-tests.sh --shell` prints), then loads it
//! with writers (`POST /api/items`, a unique name each) and readers (`GET /api/items?limit=10`)
//! from a client that never retries (`loadgen`), and upgrades it K times by SIGUSR2, one at a
//! time, each followed by a quiet second. Started by `cargo run`, it builds the release binary
//! first. BENCHMARKS.md has the figures and what they mean.
//!
//! Exit status 1 when a request failed, an acknowledged item is missing or stored twice, or
//! the run could not complete; never for a timing.

#[path = "common/serve.rs"]
mod serve;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use baton::lifecycle::{ServerRecord, proc_stat};
use clap::Parser;
use loadgen::{Load, LoadConfig, Mode, Report};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serve::serve_command;

/// The window after each SIGUSR2 whose latency is reported.
const UPGRADE_WINDOW: Duration = Duration::from_secs(1);
/// Requests of the first half second are left out of every figure (connections opening).
const WARMUP: Duration = Duration::from_millis(500);
/// Bound on a start and on each handover, for a loaded machine.
const LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(
    name = "bench_db",
    about = "Write and read through baton's database while it upgrades its binary"
)]
struct Options {
    /// PostgreSQL database to use (default: SQLite in the temporary directory). Its `items`
    /// table keeps what the run writes.
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// Binary upgrades (SIGUSR2) during the run.
    #[arg(long, default_value_t = 10)]
    upgrades: u32,
    /// Concurrent writers (POST /api/items).
    #[arg(long, default_value_t = 64)]
    writers: usize,
    /// Concurrent readers (GET /api/items?limit=10).
    #[arg(long, default_value_t = 16)]
    readers: usize,
    /// `database.pool_size` of the server.
    #[arg(long, default_value_t = 10)]
    pool_size: u32,
    /// Steady load before the first upgrade and after the last.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    steady: Duration,
    /// Time between the end of one upgrade's window and the next SIGUSR2.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "500ms")]
    gap: Duration,
    /// The baton binary [default: target/release/baton next to this program].
    #[arg(long, value_name = "PATH")]
    baton: Option<PathBuf>,
    /// Keep the temporary directory (config, data, baton.log) and print its path.
    #[arg(long)]
    keep: bool,
}

fn main() -> ExitCode {
    let options = Options::parse();
    if cfg!(debug_assertions) {
        eprintln!("bench_db: run it as `cargo run --release --example bench_db`");
        return ExitCode::from(2);
    }
    match run(&options) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("bench_db: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the bench; `Ok(false)` when a write was lost or a request failed.
fn run(options: &Options) -> Result<bool, String> {
    let program = baton_binary(options)?;
    let dir = tempfile::Builder::new()
        .prefix("baton-bench-db-")
        .tempdir()
        .map_err(|e| format!("temporary directory: {e}"))?;
    // The generations an upgrade leaves behind become our children, to be reaped.
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| format!("subreaper: {e}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let mut server = Server::start(&program, dir.path(), options)?;
    let result = measure(options, &runtime, &mut server);
    server.stop();
    if options.keep || result.is_err() {
        let kept = dir.keep();
        eprintln!("bench_db: kept {}", kept.display());
    }
    result
}

fn baton_binary(options: &Options) -> Result<PathBuf, String> {
    if let Some(path) = &options.baton {
        return Ok(path.clone());
    }
    // Under `cargo run`, never measure a stale binary.
    if let Some(cargo) = std::env::var_os("CARGO") {
        let built = Command::new(cargo)
            .args(["build", "--release", "--bin", "baton"])
            .status()
            .map_err(|e| format!("cargo build: {e}"))?;
        if !built.success() {
            return Err("cargo build --release --bin baton failed".into());
        }
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|release| release.join("baton"))
        .ok_or("cannot find target/release from this program's path")?;
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found; run `cargo build --release` or pass --baton",
            path.display()
        ))
    }
}

/// The figures of one run.
fn measure(
    options: &Options,
    runtime: &tokio::runtime::Runtime,
    server: &mut Server,
) -> Result<bool, String> {
    let connections = options
        .database_url
        .clone()
        .map(|url| ConnectionWatch::start(url, u64::from(options.pool_size)));
    let prefix = format!("bench-{}", std::process::id());
    let (writes, reads) = {
        let _inside = runtime.enter();
        let base = LoadConfig {
            mode: Mode::KeepAlive,
            max_duration: Duration::from_secs(3600),
            request_timeout: Duration::from_secs(10),
            ..LoadConfig::new(server.http)
        };
        let writes = loadgen::start(LoadConfig {
            connections: options.writers,
            path: "/api/items".into(),
            post_json: Some(format!(r#"{{"name":"{prefix}-{{n}}"}}"#)),
            keep_bodies: true,
            ..base.clone()
        });
        let reads = loadgen::start(LoadConfig {
            connections: options.readers,
            path: "/api/items?limit=10".into(),
            ..base
        });
        (writes, reads)
    };
    let started = Instant::now();
    std::thread::sleep(WARMUP + options.steady);
    let before = WARMUP..started.elapsed();
    let mut upgrades = Vec::new();
    for _ in 0..options.upgrades {
        let at = started.elapsed();
        server.upgrade()?;
        upgrades.push(at);
        let window_end = started + at + UPGRADE_WINDOW;
        std::thread::sleep(window_end.saturating_duration_since(Instant::now()) + options.gap);
    }
    let during = before.end..started.elapsed();
    std::thread::sleep(options.steady);
    let after = during.end..started.elapsed();
    let stop = |load: Load| runtime.block_on(load.stop());
    let (writes, reads) = (stop(writes), stop(reads));
    let peak = connections.map(ConnectionWatch::stop);

    let stored = stored_items(server.http, &prefix)?;
    let run = Run {
        verdict: verdict(&writes, &stored),
        upgrades: upgrades.iter().map(|&at| at..at + UPGRADE_WINDOW).collect(),
        windows: [before, during, after],
        writes,
        reads,
        peak,
    };
    print_table(options, server, &run);
    Ok(run.verdict.lost == 0
        && run.verdict.duplicated == 0
        && run.writes.failed() == 0
        && run.reads.failed() == 0)
}

type Window = std::ops::Range<Duration>;

/// What one run measured.
struct Run {
    writes: Report,
    reads: Report,
    /// Before the first upgrade, from the first to the last, after the last.
    windows: [Window; 3],
    /// The second after each SIGUSR2.
    upgrades: Vec<Window>,
    /// PostgreSQL only: baton's sessions.
    peak: Option<Sessions>,
    verdict: Verdict,
}

/// Acknowledged writes against what the database holds.
#[derive(Debug)]
struct Verdict {
    acknowledged: usize,
    lost: usize,
    duplicated: usize,
    unacknowledged_stored: usize,
}

fn verdict(writes: &Report, stored: &[(u64, String)]) -> Verdict {
    let mut by_name: HashMap<&str, Vec<u64>> = HashMap::new();
    for (id, name) in stored {
        by_name.entry(name.as_str()).or_default().push(*id);
    }
    let mut acked = HashSet::new();
    let mut lost = 0;
    for body in &writes.bodies {
        let item: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let (Some(id), Some(name)) = (item["id"].as_u64(), item["name"].as_str()) else {
            lost += 1;
            continue;
        };
        acked.insert(name.to_owned());
        if by_name.get(name).is_none_or(|ids| !ids.contains(&id)) {
            lost += 1;
        }
    }
    Verdict {
        acknowledged: writes.bodies.len(),
        lost,
        duplicated: by_name.values().filter(|ids| ids.len() > 1).count(),
        unacknowledged_stored: by_name.keys().filter(|n| !acked.contains(**n)).count(),
    }
}

/// Every item of this run (named `<prefix>-...`), page by page.
fn stored_items(http: SocketAddr, prefix: &str) -> Result<Vec<(u64, String)>, String> {
    let mut items = Vec::new();
    let mut after = 0;
    loop {
        let path = format!("/api/items?after={after}&limit=1000");
        let page = loadgen::get_blocking(http, &path, Duration::from_secs(30))
            .map_err(|e| format!("GET {path}: {e}"))?;
        let page: Vec<serde_json::Value> =
            serde_json::from_str(&page.body).map_err(|e| format!("GET {path}: {e}"))?;
        for item in &page {
            let id = item["id"].as_u64().unwrap_or_default();
            after = after.max(id);
            if let Some(name) = item["name"].as_str().filter(|n| n.starts_with(prefix)) {
                items.push((id, name.to_owned()));
            }
        }
        if page.len() < 1000 {
            return Ok(items);
        }
    }
}

fn print_table(options: &Options, server: &Server, run: &Run) {
    let Run {
        writes,
        reads,
        windows: [before, during, after],
        upgrades,
        peak,
        verdict,
    } = run;
    let rate = |report: &Report, window: &Window| {
        format!("{:.0}", report.throughput(Some(window.clone())))
    };
    let ms =
        |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.1}", d.as_secs_f64() * 1e3));
    let pooled = pooled_samples(writes, upgrades);
    let quantile = |q: f64, samples: &[Duration]| {
        let index = ((samples.len() as f64 * q).ceil() as usize).saturating_sub(1);
        samples.get(index).copied()
    };
    let backend = if options.database_url.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    println!("$ {}", std::env::args().collect::<Vec<_>>().join(" "));
    println!(
        "baton {} | {backend}, pool {} | {} writers, {} readers | {} upgrades",
        server.version, options.pool_size, options.writers, options.readers, options.upgrades
    );
    println!();
    println!("| figure | before | during upgrades | after |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| writes/s | {} | {} | {} |",
        rate(writes, before),
        rate(writes, during),
        rate(writes, after)
    );
    println!(
        "| reads/s | {} | {} | {} |",
        rate(reads, before),
        rate(reads, during),
        rate(reads, after)
    );
    println!(
        "| write latency p50 / p99, ms | {} / {} | 1 s after SIGUSR2: {} / {} | {} / {} |",
        ms(writes.quantile(0.5, Some(before.clone()))),
        ms(writes.quantile(0.99, Some(before.clone()))),
        ms(quantile(0.5, &pooled)),
        ms(quantile(0.99, &pooled)),
        ms(writes.quantile(0.5, Some(after.clone()))),
        ms(writes.quantile(0.99, Some(after.clone()))),
    );
    println!();
    let steady = writes.throughput(Some(before.clone()));
    let ratio = if steady > 0.0 {
        writes.throughput(Some(during.clone())) / steady * 100.0
    } else {
        0.0
    };
    println!("writes/s during upgrades: {ratio:.0} % of steady");
    println!(
        "requests: {} writes ({} failed), {} reads ({} failed)",
        writes.total(),
        writes.failed(),
        reads.total(),
        reads.failed()
    );
    println!(
        "acknowledged {}, lost {}, stored twice {}, stored but not acknowledged {}",
        verdict.acknowledged, verdict.lost, verdict.duplicated, verdict.unacknowledged_stored
    );
    if let Some(sessions) = peak {
        let per_upgrade = sessions.above_pool / options.upgrades.max(1);
        println!(
            "PostgreSQL connections of baton: peak {} (steady {}; pool size {}); more than one \
             pool's worth for {per_upgrade:?} per upgrade on average",
            sessions.peak, sessions.steady, options.pool_size
        );
    }
    for failure in writes
        .first_failures
        .iter()
        .chain(&reads.first_failures)
        .take(5)
    {
        eprintln!(
            "bench_db: failed request at {:?}: {}",
            failure.at, failure.failure
        );
    }
}

/// Latencies of the writes that started in any of `windows`, sorted.
fn pooled_samples(report: &Report, windows: &[Window]) -> Vec<Duration> {
    let mut latencies: Vec<Duration> = windows
        .iter()
        .flat_map(|window| report.samples_in(Some(window.clone())))
        .filter(|sample| sample.ok)
        .map(|sample| sample.latency())
        .collect();
    latencies.sort_unstable();
    latencies
}

// ---------------------------------------------------------------------------------------------

/// baton in the temporary directory.
struct Server {
    dir: PathBuf,
    http: SocketAddr,
    version: String,
    first: Child,
}

impl Server {
    fn start(program: &Path, dir: &Path, options: &Options) -> Result<Server, String> {
        std::fs::create_dir_all(dir.join("config")).map_err(|e| e.to_string())?;
        let url = options
            .database_url
            .as_ref()
            .map(|url| format!("url = \"{url}\"\n"))
            .unwrap_or_default();
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [app]\nitems_limit = 1000\n[log]\nfilter = \"warn\"\n\
             [lifecycle]\nlame_duck = \"300ms\"\nshutdown_timeout = \"10s\"\n\
             [upgrade]\nready_timeout = \"20s\"\n\
             [database]\n{url}pool_size = {}\n",
            options.pool_size
        );
        std::fs::write(dir.join("config/default.toml"), config).map_err(|e| e.to_string())?;
        let mut command = serve_command(program, dir).map_err(|e| e.to_string())?;
        let mut first = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        let state = dir.join("run/baton.state.json");
        let deadline = Instant::now() + LIMIT;
        let record = loop {
            if let Some(record) = ServerRecord::read(&state).filter(|r| r.pid == first.id()) {
                break record;
            }
            if let Ok(Some(status)) = first.try_wait() {
                return Err(format!(
                    "baton exited at start ({status}); see {}",
                    dir.join("baton.log").display()
                ));
            }
            if Instant::now() >= deadline {
                let _ = first.kill();
                return Err("baton wrote no state file in time".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let http = record
            .listener(baton::lifecycle::HTTP_LISTENER)
            .ok_or("no http listener in the state file")?;
        Ok(Server {
            dir: dir.to_owned(),
            http,
            version: record.version,
            first,
        })
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("run/baton.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// SIGUSR2 to the serving generation; returns once its successor wrote the pid file.
    fn upgrade(&mut self) -> Result<(), String> {
        let old = self.pid().ok_or("no pid file")?;
        signal(old, Signal::SIGUSR2)?;
        let deadline = Instant::now() + LIMIT;
        while self.pid() == Some(old) || self.pid().is_none() {
            if Instant::now() >= deadline {
                return Err(format!("no new generation after SIGUSR2 to {old}"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        reap();
        Ok(())
    }

    /// SIGTERM to the serving generation, then SIGKILL to anything left in the directory.
    fn stop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = signal(pid, Signal::SIGTERM);
            let deadline = Instant::now() + LIMIT;
            while proc_stat(pid).is_some_and(|s| !s.zombie) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.first.try_wait();
        for pid in processes_in(&self.dir) {
            let _ = signal(pid, Signal::SIGKILL);
        }
        reap();
    }
}

fn signal(pid: u32, signal: Signal) -> Result<(), String> {
    let raw = i32::try_from(pid).map_err(|e| e.to_string())?;
    kill(Pid::from_raw(raw), signal).map_err(|e| format!("kill {pid}: {e}"))
}

/// Reaps exited children (old generations re-parented to us).
fn reap() {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    for _ in 0..64 {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Live processes whose working directory is `dir` (every generation runs there).
fn processes_in(dir: &Path) -> Vec<u32> {
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(&dir))
        })
        .filter(|&pid| pid != std::process::id())
        .collect()
}

/// baton's PostgreSQL sessions over the run.
#[derive(Debug, Clone, Copy, Default)]
struct Sessions {
    /// The most seen in the first seconds, before any upgrade.
    steady: u64,
    peak: u64,
    /// How long more than one pool's worth was open, in all (sampled every 10 ms).
    above_pool: Duration,
}

/// Samples baton's PostgreSQL sessions every 10 ms on a connection of its own.
struct ConnectionWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Sessions>,
}

impl ConnectionWatch {
    fn start(url: String, pool_size: u64) -> ConnectionWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = Arc::clone(&stop);
            move || {
                sqlx::any::install_default_drivers();
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return Sessions::default();
                };
                runtime.block_on(watch(url, pool_size, stop))
            }
        });
        ConnectionWatch { stop, thread }
    }

    fn stop(self) -> Sessions {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

async fn watch(url: String, pool_size: u64, stop: Arc<AtomicBool>) -> Sessions {
    use sqlx::Connection;
    let Ok(mut conn) = sqlx::AnyConnection::connect(&url).await else {
        eprintln!("bench_db: cannot connect to count connections");
        return Sessions::default();
    };
    let started = Instant::now();
    let mut sessions = Sessions::default();
    let mut last = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name LIKE 'baton %'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap_or_default();
        let count = u64::try_from(count).unwrap_or_default();
        let now = Instant::now();
        sessions.peak = sessions.peak.max(count);
        if count > pool_size {
            sessions.above_pool += now - last;
        }
        last = now;
        if started.elapsed() < WARMUP + Duration::from_secs(2) {
            sessions.steady = sessions.steady.max(count);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sessions
}
