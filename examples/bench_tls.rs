//! baton's TLS benchmark (issue 11): full and resumed handshakes per second, keep-alive
//! requests per second over TLS against plain HTTP in the same run, and the same loads through
//! binary upgrades, which must lose no request.
//!
//! ```text
//! cargo build --release --bin baton --example bench_tls && target/release/examples/bench_tls
//! target/release/examples/bench_tls --upgrades 100      # 0 failed requests over 100 upgrades
//! ```
//!
//! Two release `baton serve` run side by side in a temporary directory, one plain and one with
//! a certificate made here (`rcgen`, a CA of the run's own that the client trusts), both on
//! loopback with `worker_threads` at its default. The client is `loadgen` (never retries; the
//! same rustls as the server). Phases, each `--seconds` long after a half-second warm-up:
//! - keep-alive, 64 connections: plain, then TLS, in `--rounds` pairs (medians reported);
//! - a new connection per request (`Connection: close`): plain; TLS with session resumption
//!   (every handshake resumed: resumed handshakes/s); TLS without (full handshakes/s);
//! - keep-alive and per-request TLS load together while `baton upgrade` runs `--upgrades`
//!   times against the TLS server.
//!
//! Prints a Markdown table; exits 1 if any request failed or an upgrade did not succeed, never
//! for a timing. Everything it started is stopped at the end (`baton stop`, then SIGKILL by
//! the pid it started).

#[path = "common/serve.rs"]
mod serve;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use baton::lifecycle::ServerRecord;
use clap::Parser;
use loadgen::{LoadConfig, Mode, Report, Tls};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use serve::serve_command;

#[derive(Debug, Parser)]
#[command(
    name = "bench_tls",
    about = "TLS handshakes and requests per second, plain HTTP in the same run, and upgrades under TLS load"
)]
struct Options {
    /// Concurrent connections of each load.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds of each measured phase.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Paired keep-alive rounds, plain then TLS.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Binary upgrades of the TLS server under load.
    #[arg(long, default_value_t = 10)]
    upgrades: u32,
    /// The baton binary [default: `baton` next to this program's `examples/` directory].
    #[arg(long)]
    baton: Option<PathBuf>,
}

const WARMUP: Duration = Duration::from_millis(500);
const DEADLINE: Duration = Duration::from_secs(30);

/// One `baton serve` in a directory of its own.
struct Server {
    dir: PathBuf,
    program: PathBuf,
    child: Child,
    http: SocketAddr,
}

impl Server {
    fn start(program: &Path, dir: &Path, tls: Option<(&str, &str)>) -> Result<Server, String> {
        std::fs::create_dir_all(dir.join("config")).map_err(|e| e.to_string())?;
        let tls_section = match tls {
            Some((cert, key)) => {
                std::fs::create_dir_all(dir.join("tls")).map_err(|e| e.to_string())?;
                std::fs::write(dir.join("tls/cert.pem"), cert).map_err(|e| e.to_string())?;
                std::fs::write(dir.join("tls/key.pem"), key).map_err(|e| e.to_string())?;
                "[tls]\ncert = \"tls/cert.pem\"\nkey = \"tls/key.pem\"\n\n"
            }
            None => "",
        };
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n{tls_section}\
             [admin]\nenabled = false\n\n\
             [lifecycle]\nlame_duck = \"1s\"\nshutdown_timeout = \"10s\"\n\n\
             [upgrade]\nready_timeout = \"10s\"\nprobation = \"500ms\"\n"
        );
        std::fs::write(dir.join("config/default.toml"), config).map_err(|e| e.to_string())?;
        let mut command = serve_command(program, dir).map_err(|e| e.to_string())?;
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        let state = dir.join("run/baton.state.json");
        let started = Instant::now();
        let http = loop {
            if let Some(addr) = ServerRecord::read(&state).and_then(|r| r.listener("http")) {
                break addr;
            }
            if started.elapsed() > DEADLINE {
                return Err(format!(
                    "{} did not start; see {}/baton.log",
                    program.display(),
                    dir.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(Server {
            dir: dir.to_owned(),
            program: program.to_owned(),
            child,
            http,
        })
    }
}

/// `baton upgrade` in `dir`, which returns once the new generation serves (or failed).
fn upgrade(program: &Path, dir: &Path) -> Result<(), String> {
    let out = Command::new(program)
        .arg("upgrade")
        .current_dir(dir)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new(&self.program)
            .args(["stop", "--timeout", "20s"])
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // Generation 1, if it is still there (a failed stop); later ones were stopped above.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA and a certificate for 127.0.0.1 it issued: (CA PEM, cert PEM, key PEM).
fn certificates() -> Result<(String, String, String), rcgen::Error> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "bench CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;
    Ok((ca.pem(), cert.pem(), key.serialize_pem()))
}

/// One load of `mode` for `seconds` after the warm-up; requests per second of the measured
/// part, and the report.
async fn measure(
    addr: SocketAddr,
    mode: Mode,
    tls: Option<Tls>,
    connections: usize,
    seconds: Duration,
) -> (f64, Report) {
    let load = loadgen::start(LoadConfig {
        connections,
        mode,
        tls,
        max_duration: WARMUP + seconds,
        ..LoadConfig::new(addr)
    });
    let report = load.wait().await;
    let ok = report
        .samples
        .iter()
        .filter(|s| s.ok && Duration::from_micros(s.start_us) >= WARMUP)
        .count();
    (ok as f64 / seconds.as_secs_f64(), report)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn main() -> ExitCode {
    let options = Options::parse();
    match run(&options) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("bench_tls: {err}");
            ExitCode::from(1)
        }
    }
}

/// `Ok(false)`: a request failed or an upgrade did not succeed.
fn run(options: &Options) -> Result<bool, String> {
    let program = match &options.baton {
        Some(path) => path.clone(),
        None => {
            let me = std::env::current_exe().map_err(|e| e.to_string())?;
            let release = me
                .parent()
                .and_then(Path::parent)
                .ok_or("cannot find the target directory")?;
            release.join("baton")
        }
    };
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (ca, cert, key) = certificates().map_err(|e| e.to_string())?;
    let plain = Server::start(&program, &scratch.path().join("plain"), None)?;
    let secure = Server::start(&program, &scratch.path().join("tls"), Some((&cert, &key)))?;
    let tls = Tls::with_ca_pem(ca.as_bytes()).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let seconds = Duration::from_secs(options.seconds);
    let n = options.connections;
    let mut failed = 0;
    let mut count = |report: &Report| failed += report.failed();

    let mut plain_keepalive = Vec::new();
    let mut tls_keepalive = Vec::new();
    for _ in 0..options.rounds {
        let (rate, report) =
            runtime.block_on(measure(plain.http, Mode::KeepAlive, None, n, seconds));
        count(&report);
        plain_keepalive.push(rate);
        let (rate, report) = runtime.block_on(measure(
            secure.http,
            Mode::KeepAlive,
            Some(tls.clone()),
            n,
            seconds,
        ));
        count(&report);
        tls_keepalive.push(rate);
    }
    let (plain_close, report) =
        runtime.block_on(measure(plain.http, Mode::Close, None, n, seconds));
    count(&report);
    let (resumed, report) = runtime.block_on(measure(
        secure.http,
        Mode::Close,
        Some(tls.clone()),
        n,
        seconds,
    ));
    count(&report);
    let (full, report) = runtime.block_on(measure(
        secure.http,
        Mode::Close,
        Some(tls.clone().without_resumption()),
        n,
        seconds,
    ));
    count(&report);

    // Keep-alive and per-request TLS load at once: steady, then through the upgrades.
    let steady = runtime.block_on(mixed(&secure, &tls, n, 0, seconds));
    let during = seconds.max(Duration::from_secs(u64::from(options.upgrades)));
    let upgraded = runtime.block_on(mixed(&secure, &tls, n, options.upgrades, during));
    for report in [
        &steady.keepalive,
        &steady.close,
        &upgraded.keepalive,
        &upgraded.close,
    ] {
        count(report);
    }

    println!("| figure | plain HTTP | TLS |");
    println!("| --- | ---: | ---: |");
    println!(
        "| keep-alive, {n} connections: req/s (median of {} paired rounds) | {:.0} | {:.0} ({:.0} %) |",
        options.rounds,
        median(plain_keepalive.clone()),
        median(tls_keepalive.clone()),
        100.0 * median(tls_keepalive) / median(plain_keepalive).max(1.0)
    );
    println!("| a new connection per request: req/s | {plain_close:.0} | |");
    println!(
        "| resumed handshakes/s (a new connection per request, session resumed) | | {resumed:.0} |"
    );
    println!("| full handshakes/s (a new connection per request, no resumption) | | {full:.0} |");
    for (what, mixed) in [
        ("steady".to_owned(), &steady),
        (format!("through {} upgrades", options.upgrades), &upgraded),
    ] {
        println!(
            "| keep-alive ({h} connections) + a new connection per request with resumption \
             ({h} connections) at once, {what} ({:.1} s): req/s | | {:.0} + {:.0} |",
            mixed.took.as_secs_f64(),
            mixed.rate(&mixed.keepalive),
            mixed.rate(&mixed.close),
            h = n / 2,
        );
    }
    println!(
        "| upgrades ok; failed requests (every phase) | | {}/{}; {failed} |",
        upgraded.upgrades_ok, options.upgrades
    );
    if failed > 0 {
        eprintln!("{}\n{}", upgraded.keepalive, upgraded.close);
    }
    Ok(failed == 0 && upgraded.upgrades_ok == options.upgrades)
}

/// Two TLS loads at once, keep-alive and a connection per request, for at least `duration`
/// and through `upgrades` upgrades of `server`.
struct Mixed {
    keepalive: Report,
    close: Report,
    upgrades_ok: u32,
    took: Duration,
}

impl Mixed {
    /// Successful requests per second after the warm-up.
    fn rate(&self, report: &Report) -> f64 {
        let ok = report
            .samples
            .iter()
            .filter(|s| s.ok && Duration::from_micros(s.start_us) >= WARMUP)
            .count();
        ok as f64 / self.took.as_secs_f64()
    }
}

async fn mixed(server: &Server, tls: &Tls, n: usize, upgrades: u32, duration: Duration) -> Mixed {
    let load = |mode| {
        loadgen::start(LoadConfig {
            connections: n / 2,
            mode,
            tls: Some(tls.clone()),
            max_duration: Duration::from_secs(3600),
            ..LoadConfig::new(server.http)
        })
    };
    let (keepalive, close) = (load(Mode::KeepAlive), load(Mode::Close));
    tokio::time::sleep(WARMUP).await;
    let started = Instant::now();
    let mut upgrades_ok = 0;
    for i in 0..upgrades {
        let (program, dir) = (server.program.clone(), server.dir.clone());
        match tokio::task::spawn_blocking(move || upgrade(&program, &dir)).await {
            Ok(Ok(())) => upgrades_ok += 1,
            Ok(Err(err)) => eprintln!("bench_tls: upgrade {} failed: {err}", i + 1),
            Err(err) => eprintln!("bench_tls: upgrade {} failed: {err}", i + 1),
        }
    }
    tokio::time::sleep(duration.saturating_sub(started.elapsed())).await;
    let took = started.elapsed();
    Mixed {
        keepalive: keepalive.stop().await,
        close: close.stop().await,
        upgrades_ok,
        took,
    }
}
