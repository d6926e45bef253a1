//! baton next to bare axum and nginx under `wrk`, and how fast a handover is (issue 16).
//!
//! ```text
//! cargo build --release --bin baton --example bare_axum --example speed
//! target/release/examples/speed [--rounds 3] [--seconds 5] [--connections 50] [--upgrades 10]
//! target/release/examples/speed --handover-only [--upgrades 10]
//! ```
//!
//! `wrk` and `nginx` must be on `PATH` (Debian: `apt-get install wrk nginx-light`). It starts the
//! three servers on loopback in a temporary directory: nginx `return 200` (its own
//! `worker_processes auto`), `examples/bare_axum` (`axum::serve` hello world) and `baton serve`
//! with its defaults. Then:
//! 1. **Calibration**: wrk against nginx, the cheapest server here. Its req/s is a lower bound
//!    of what wrk can send on this machine; a server above 80 % of it is marked client-bound
//!    (wrk, not the server, may be what limits it), and its ratio is not a result.
//! 2. **Throughput**: each server in turn, keep-alive and `Connection: close`, in interleaved
//!    rounds whose order rotates, so a neighbour's burst does not favour one server; the
//!    medians and baton's ratios to bare axum and nginx.
//! 3. **Handover**: K upgrades (SIGUSR2) idle and K under wrk keep-alive load: from the signal
//!    until a new connection is answered by the new pid, and the new generation's own figures
//!    from `/-/status` (request to spawn, request to ready, so spawn to ready), and the new
//!    process's start step by step (`previous.steps_ms`, `main` to "ready"), median of each.
//!
//! `--handover-only` starts baton alone and does the idle handovers only (no wrk or nginx).
//!
//! Every figure is printed, never asserted: exit 1 only if a request failed (a wrk socket
//! error or non-2xx, a probe that failed) or a server did not start.

#[path = "common/serve.rs"]
mod serve;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use baton::lifecycle::{Predecessor, Steps};
use clap::Parser;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[derive(Debug, Parser)]
#[command(about = "baton vs bare axum vs nginx under wrk, and the handover time")]
struct Options {
    /// Interleaved rounds per load kind.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// wrk connections (`-c`); wrk runs two threads (`-t2`).
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Upgrades idle, and again under load.
    #[arg(long, default_value_t = 10)]
    upgrades: usize,
    /// Another baton build to load in the same rounds (e.g. main's, for a before/after
    /// comparison that the machine's drift cannot bias).
    #[arg(long)]
    compare: Option<PathBuf>,
    /// Only the idle handovers, on baton alone (no wrk, nginx or bare axum).
    #[arg(long)]
    handover_only: bool,
}

/// Bound on starting a server and on one handover.
const LIMIT: Duration = Duration::from_secs(20);

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

/// A started server, stopped when dropped: SIGTERM, then SIGKILL after 5 s, then reaped.
struct Server {
    name: String,
    addr: SocketAddr,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM first: nginx's master then stops its workers, which a SIGKILL would orphan.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port the kernel picked and let go of, for nginx, which cannot report one itself.
fn free_port() -> Result<u16, SpeedError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("bind 127.0.0.1:0"))?;
    Ok(listener.local_addr().map_err(io("local address"))?.port())
}

/// Waits until `GET /` on `addr` answers 200.
fn wait_serving(name: &str, addr: SocketAddr) -> Result<(), SpeedError> {
    let deadline = Instant::now() + LIMIT;
    while Instant::now() < deadline {
        if loadgen::get_blocking(addr, "/", Duration::from_secs(1)).is_ok_and(|r| r.status == 200) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(SpeedError::Failed(format!(
        "{name} did not answer on {addr} within {LIMIT:?}"
    )))
}

fn start_nginx(dir: &Path) -> Result<Server, SpeedError> {
    let port = free_port()?;
    let conf = dir.join("nginx.conf");
    let text = format!(
        "worker_processes auto;\npid {pid};\nerror_log {err} warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n\
         client_body_temp_path {tmp};\n  proxy_temp_path {tmp};\n  fastcgi_temp_path {tmp};\n\
         uwsgi_temp_path {tmp};\n  scgi_temp_path {tmp};\n\
         server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"Hello\"; }} }}\n}}\n",
        pid = dir.join("nginx.pid").display(),
        err = dir.join("nginx.err").display(),
        tmp = dir.display(),
    );
    std::fs::write(&conf, text).map_err(io("write nginx.conf"))?;
    let child = Command::new("nginx")
        .args(["-p", &dir.display().to_string(), "-c"])
        .arg(&conf)
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(io("start nginx"))?;
    let server = Server {
        name: "nginx".into(),
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        child,
    };
    wait_serving("nginx", server.addr)?;
    Ok(server)
}

fn start_bare(program: &Path, dir: &Path) -> Result<Server, SpeedError> {
    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let child = Command::new(program)
        .arg(addr.to_string())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(io("start bare_axum"))?;
    let server = Server {
        name: "bare axum".into(),
        addr,
        child,
    };
    wait_serving("bare axum", addr)?;
    Ok(server)
}

/// baton with its defaults, but on free loopback ports and with a short probation and lame
/// duck, so the upgrades of the handover figures follow each other quickly.
fn start_baton(
    name: String,
    program: &Path,
    dir: &Path,
) -> Result<(Server, SocketAddr), SpeedError> {
    let (http, admin) = (free_port()?, free_port()?);
    std::fs::create_dir_all(dir.join("config")).map_err(io("create config/"))?;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{http}\"\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n\
         [lifecycle]\nlame_duck = \"300ms\"\n\n\
         [upgrade]\nprobation = \"300ms\"\n"
    );
    std::fs::write(dir.join("config/default.toml"), text).map_err(io("write the config"))?;
    let child = serve::serve_command(program, dir)
        .map_err(io("baton.log"))?
        .spawn()
        .map_err(io("start baton"))?;
    let server = Server {
        name,
        addr: SocketAddr::from(([127, 0, 0, 1], http)),
        child,
    };
    wait_serving(&server.name, server.addr)?;
    Ok((server, SocketAddr::from(([127, 0, 0, 1], admin))))
}

/// What one wrk run measured.
#[derive(Debug, Clone, Copy)]
struct Run {
    rps: f64,
    p99_ms: f64,
    /// Socket errors plus non-2xx/3xx responses.
    errors: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    KeepAlive,
    Close,
}

fn wrk(addr: SocketAddr, kind: Kind, options: &Options, seconds: u64) -> Result<Run, SpeedError> {
    let mut command = Command::new("wrk");
    command.args([
        "-t2",
        &format!("-c{}", options.connections),
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    if kind == Kind::Close {
        command.args(["-H", "Connection: close"]);
    }
    let output = command
        .arg(format!("http://{addr}/"))
        .stdin(Stdio::null())
        .output()
        .map_err(io("run wrk"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    parse_wrk(&text).ok_or_else(|| SpeedError::Failed(format!("cannot read wrk's output:\n{text}")))
}

/// Requests/sec, the 99 % latency and the errors from wrk's `--latency` output.
fn parse_wrk(text: &str) -> Option<Run> {
    let value = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim_start().strip_prefix(prefix).map(str::trim))
    };
    let rps = value("Requests/sec:")?.parse().ok()?;
    let p99 = value("99%")?;
    let p99_ms = if let Some(us) = p99.strip_suffix("us") {
        us.parse::<f64>().ok()? / 1000.0
    } else if let Some(ms) = p99.strip_suffix("ms") {
        ms.parse().ok()?
    } else {
        p99.strip_suffix('s')?.parse::<f64>().ok()? * 1000.0
    };
    let non_2xx = value("Non-2xx or 3xx responses:").map_or(Some(0), |n| n.parse().ok())?;
    let socket = value("Socket errors:").map_or(0, |s| {
        s.split(',')
            .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
            .sum()
    });
    Some(Run {
        rps,
        p99_ms,
        errors: non_2xx + socket,
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// `pid` and generation from baton's greeting, on a new connection.
fn who_answers(addr: SocketAddr) -> Option<u32> {
    let response = loadgen::get_blocking(addr, "/", Duration::from_secs(2)).ok()?;
    let at = response.body.rfind("pid ")?;
    response.body[at + 4..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Whether `pid` runs in `dir`, where this bench started baton: a pid read from a response is
/// checked before it is signalled.
fn is_ours(pid: u32, dir: &Path) -> bool {
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"));
    cwd.is_ok_and(|cwd| std::fs::canonicalize(dir).is_ok_and(|dir| dir == cwd))
}

fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'))
    })
}

/// One handover's figures.
#[derive(Debug, Clone)]
struct Handover {
    /// SIGUSR2 until a new connection is answered by the new pid.
    served_ms: f64,
    /// The new generation's own: request to spawn, request to "ready".
    spawned_ms: f64,
    ready_ms: f64,
    /// The new process's start, `main` to "ready", step by step.
    steps: Option<Steps>,
}

/// What is read of `/-/status`: in order (a `serde_json::Value` would sort the steps by name).
#[derive(Debug, serde::Deserialize)]
struct Status {
    previous: Option<Predecessor>,
}

/// SIGUSR2 to the pid that answers (once `/proc` shows it runs in our baton's directory),
/// then the time until another pid answers.
fn upgrade_once(addr: SocketAddr, admin: SocketAddr, dir: &Path) -> Result<Handover, SpeedError> {
    let old = who_answers(addr).ok_or_else(|| SpeedError::Failed("GET / failed".into()))?;
    if !is_ours(old, dir) {
        return Err(SpeedError::Failed(format!(
            "pid {old} does not run in {}",
            dir.display()
        )));
    }
    let raw = i32::try_from(old).map_err(|_| SpeedError::Failed(format!("pid {old}")))?;
    let start = Instant::now();
    kill(Pid::from_raw(raw), Signal::SIGUSR2)
        .map_err(|err| SpeedError::Failed(format!("SIGUSR2 to {old}: {err}")))?;
    let served_ms = loop {
        if who_answers(addr).is_some_and(|pid| pid != old) {
            break start.elapsed().as_secs_f64() * 1000.0;
        }
        if start.elapsed() > LIMIT {
            return Err(SpeedError::Failed(format!(
                "no new generation within {LIMIT:?}"
            )));
        }
    };
    // The old generation hands over its lineage once it has drained; then it leaves.
    while !gone(old) {
        if start.elapsed() > LIMIT {
            return Err(SpeedError::Failed(format!(
                "pid {old} did not exit within {LIMIT:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = loadgen::get_blocking(admin, "/-/status", Duration::from_secs(2))
        .map_err(|err| SpeedError::Failed(format!("/-/status: {err}")))?;
    let status: Status = serde_json::from_str(&status.body)
        .map_err(|err| SpeedError::Failed(format!("/-/status: {err}")))?;
    let previous = status.previous;
    let ms = |value: Option<f64>| value.unwrap_or(f64::NAN);
    Ok(Handover {
        served_ms,
        spawned_ms: ms(previous.as_ref().and_then(|p| p.spawned_ms)),
        ready_ms: ms(previous.as_ref().and_then(|p| p.ready_ms)),
        steps: previous.and_then(|p| p.steps_ms),
    })
}

fn handovers(
    addr: SocketAddr,
    admin: SocketAddr,
    dir: &Path,
    count: usize,
) -> Result<Vec<Handover>, SpeedError> {
    (0..count).map(|_| upgrade_once(addr, admin, dir)).collect()
}

/// The median of each step of the new process's start, in the order they ran, then their sum
/// and what the steps do not cover: the spawn's return to `main` (exec, the loader) and the
/// parent's read of the `ready` line.
fn print_steps(label: &str, all: &[Handover]) {
    let Some(first) = all.iter().find_map(|h| h.steps.as_ref()) else {
        println!("\n(no steps in `/-/status`: a build from before them)");
        return;
    };
    let names: Vec<&str> = first.iter().map(|(name, _)| name).collect();
    let took = |name: &str| -> Vec<f64> {
        all.iter()
            .filter_map(|h| h.steps.as_ref())
            .filter_map(|s| s.iter().find(|(n, _)| *n == name))
            .map(|(_, took)| took.as_secs_f64() * 1e3)
            .collect()
    };
    println!("\n| start of the new process, {label} | median ms | max ms |");
    println!("| --- | ---: | ---: |");
    for name in &names {
        let values = took(name);
        let max = values.iter().copied().fold(0.0, f64::max);
        println!("| {name} | {:.2} | {max:.2} |", median(values));
    }
    let sums: Vec<f64> = all
        .iter()
        .filter_map(|h| h.steps.as_ref())
        .map(|s| s.total().as_secs_f64() * 1e3)
        .collect();
    let max = sums.iter().copied().fold(0.0, f64::max);
    println!(
        "| **main to ready (sum)** | {:.2} | {max:.2} |",
        median(sums)
    );
    let rest: Vec<f64> = all
        .iter()
        .filter_map(|h| {
            let steps = h.steps.as_ref()?.total().as_secs_f64() * 1e3;
            Some(h.ready_ms - h.spawned_ms - steps)
        })
        .collect();
    let max = rest.iter().copied().fold(f64::MIN, f64::max);
    println!(
        "| spawn to ready, not in the steps (exec, loader, pipe) | {:.2} | {max:.2} |",
        median(rest)
    );
}

fn print_handovers(label: &str, all: &[Handover]) {
    let col = |f: fn(&Handover) -> f64| median(all.iter().map(f).collect());
    let max = all.iter().map(|h| h.served_ms).fold(0.0, f64::max);
    println!(
        "| {label} | {} | {:.1} | {max:.1} | {:.1} | {:.1} | {:.1} |",
        all.len(),
        col(|h| h.served_ms),
        col(|h| h.spawned_ms),
        col(|h| h.ready_ms),
        col(|h| h.ready_ms - h.spawned_ms),
    );
}

const HANDOVER_HEADER: &str = "| handover | upgrades | SIGUSR2 to new pid serving, median ms | max ms | request to spawn, median ms | request to ready, median ms | spawn to ready, median ms |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |";

/// `--handover-only`: baton alone, idle handovers.
fn run_handovers(options: &Options) -> Result<bool, SpeedError> {
    let here = std::env::current_exe().map_err(io("current executable"))?;
    let program = here
        .parent()
        .map(|examples| examples.join("../baton"))
        .unwrap_or_default();
    if !program.exists() {
        return Err(SpeedError::Binary(program));
    }
    let dir = tempfile::tempdir().map_err(io("temp dir"))?;
    let (baton, admin) = start_baton("baton".into(), &program, dir.path())?;
    let measured = handovers(baton.addr, admin, dir.path(), options.upgrades)?;
    println!("{HANDOVER_HEADER}");
    print_handovers("idle", &measured);
    print_steps("idle", &measured);
    stop_current(baton.addr, dir.path());
    Ok(true)
}

/// The current generation is not our child any more: stop it by the pid that answers.
fn stop_current(addr: SocketAddr, dir: &Path) {
    if let Some(pid) = who_answers(addr)
        .filter(|p| is_ours(*p, dir))
        .and_then(|p| i32::try_from(p).ok())
    {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = Instant::now() + LIMIT;
        while !gone(pid.unsigned_abs()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn run(options: &Options) -> Result<bool, SpeedError> {
    if options.handover_only {
        return run_handovers(options);
    }
    for tool in ["wrk", "nginx"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map_or(true, |s| !s.success())
        {
            return Err(SpeedError::Tool(tool));
        }
    }
    let here = std::env::current_exe().map_err(io("current executable"))?;
    let examples = here.parent().map(Path::to_path_buf).unwrap_or_default();
    let bare_program = examples.join("bare_axum");
    let baton_program = examples.join("../baton");
    for program in [&bare_program, &baton_program] {
        if !program.exists() {
            return Err(SpeedError::Binary(program.clone()));
        }
    }
    let dir = tempfile::tempdir().map_err(io("temp dir"))?;
    let nginx_dir = dir.path().join("nginx");
    let baton_dir = dir.path().join("baton");
    for d in [&nginx_dir, &baton_dir] {
        std::fs::create_dir_all(d).map_err(io("create a temp dir"))?;
    }
    let nginx = start_nginx(&nginx_dir)?;
    let bare = start_bare(&bare_program, dir.path())?;
    let (baton, admin) = start_baton("baton".into(), &baton_program, &baton_dir)?;
    let other = match &options.compare {
        Some(program) => {
            let other_dir = dir.path().join("other");
            std::fs::create_dir_all(&other_dir).map_err(io("create a temp dir"))?;
            let name = format!("baton ({})", program.display());
            Some(start_baton(name, program, &other_dir)?.0)
        }
        None => None,
    };
    let mut clean = true;

    // wrk warms up against the cheapest server first; its best figure, there or in the rounds,
    // is the least the client can do on this machine.
    let mut ceiling = wrk(nginx.addr, Kind::KeepAlive, options, options.seconds)?.rps;
    let mut servers = vec![&nginx, &bare, &baton];
    servers.extend(other.as_ref());
    let mut rows = Vec::new();
    for kind in [Kind::KeepAlive, Kind::Close] {
        let mut runs: Vec<Vec<Run>> = vec![Vec::new(); servers.len()];
        for round in 0..options.rounds {
            for i in 0..servers.len() {
                let index = (i + round) % servers.len();
                let run = wrk(servers[index].addr, kind, options, options.seconds)?;
                clean &= run.errors == 0;
                runs[index].push(run);
            }
        }
        if kind == Kind::KeepAlive {
            ceiling = runs[0].iter().map(|r| r.rps).fold(ceiling, f64::max);
        }
        let rps: Vec<f64> = runs
            .iter()
            .map(|r| median(r.iter().map(|x| x.rps).collect()))
            .collect();
        for (index, server) in servers.iter().enumerate() {
            let p99 = median(runs[index].iter().map(|x| x.p99_ms).collect());
            let each: Vec<String> = runs[index]
                .iter()
                .map(|r| format!("{:.0}", r.rps))
                .collect();
            // A figure near the client's ceiling may be wrk's limit, not the server's.
            let bound = if index != 0 && runs[index].iter().any(|r| r.rps > 0.8 * ceiling) {
                " (client-bound)"
            } else {
                ""
            };
            rows.push(format!(
                "| {kind:?} | {} | {:.0}{bound} | {p99:.2} | {} | {:.2} | {:.2} |",
                server.name,
                rps[index],
                each.join(", "),
                rps[index] / rps[1],
                rps[index] / rps[0],
            ));
        }
    }
    println!(
        "wrk -t2 -c{} -d{}s, {} rounds; client ceiling (best wrk figure against nginx, the \
         cheapest server): {ceiling:.0} req/s\n",
        options.connections, options.seconds, options.rounds
    );
    println!(
        "| load | server | req/s (median) | p99 ms (median) | rounds (req/s) | vs bare axum | vs nginx |"
    );
    println!("| --- | --- | ---: | ---: | --- | ---: | ---: |");
    for row in rows {
        println!("{row}");
    }

    println!("\n{HANDOVER_HEADER}");
    let idle = handovers(baton.addr, admin, &baton_dir, options.upgrades)?;
    print_handovers("idle", &idle);
    let seconds = options.seconds.max(2) * 4;
    let loaded = std::thread::scope(|scope| {
        let load = scope.spawn(|| wrk(baton.addr, Kind::KeepAlive, options, seconds));
        let measured = handovers(baton.addr, admin, &baton_dir, options.upgrades);
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
    stop_current(baton.addr, &baton_dir);
    Ok(clean)
}

fn main() -> ExitCode {
    let options = Options::parse();
    match run(&options) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_read() {
        let text = "Running 5s test @ http://127.0.0.1:1/\n  Latency Distribution\n     50%  200.00us\n     99%    1.61ms\n  640000 requests in 5.00s, 80.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 4\nRequests/sec: 128000.50\n";
        let run = parse_wrk(text).expect("parsed");
        assert!((run.rps - 128_000.5).abs() < 0.01);
        assert!((run.p99_ms - 1.61).abs() < 1e-9);
        assert_eq!(run.errors, 7);
        let micros = text.replace("1.61ms", "900.00us");
        assert!((parse_wrk(&micros).expect("parsed").p99_ms - 0.9).abs() < 1e-9);
    }
}
