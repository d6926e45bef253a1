//! The processes under test: baton (one lineage of generations, upgraded and reloaded by
//! signal) and the bare axum baseline. Every process either is stopped by `stop` or killed
//! when its guard drops.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton::lifecycle::ServerRecord;
use nix::sys::signal::Signal;
use serde::Serialize;

use crate::BenchError;
use crate::probe::Probes;
use crate::procfs::{Memory, Process};

/// The server's drain, short so that an old generation is gone well within the second after
/// its upgrade; long enough for every keep-alive client to see `Connection: close` once.
const LAME_DUCK: &str = "300ms";
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
const READY_TIMEOUT: &str = "10s";
/// Bound on starting the first generation (state file written, `GET /` answers).
const START_LIMIT: Duration = Duration::from_secs(20);
/// Bound on a handover: the server's own ready timeout plus slack for a loaded machine.
const HANDOVER_LIMIT: Duration = Duration::from_secs(20);
/// Bound on a reload becoming visible.
const RELOAD_LIMIT: Duration = Duration::from_secs(10);
/// How often the bench looks whether an old generation has exited: the resolution of that
/// figure.
const EXIT_POLL: Duration = Duration::from_millis(1);

/// One generation of baton, as the bench saw it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct GenerationRecord {
    pub(crate) generation: u64,
    pub(crate) pid: u32,
    /// Memory right after it first answered (under load, except the first generation).
    pub(crate) at_start: Option<Memory>,
    /// Memory just before it was told to upgrade (under load), or at the final stop.
    pub(crate) at_retirement: Option<Memory>,
    /// How it ended, e.g. "exit 0".
    pub(crate) exit: Option<String>,
    #[serde(skip)]
    process: Process,
}

/// What one SIGUSR2 took.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Handover {
    /// From the signal to the first answer by the new generation on a new connection.
    pub(crate) answered: Duration,
    /// From the signal until the old generation had exited.
    pub(crate) old_exited: Duration,
}

/// A running baton and every generation it has had.
#[derive(Debug)]
pub(crate) struct Baton {
    dir: PathBuf,
    config: PathBuf,
    http: SocketAddr,
    version: Option<String>,
    generations: Vec<GenerationRecord>,
    reloads: u64,
    stopped: bool,
}

impl Baton {
    /// Writes a configuration in `dir` and starts `program serve` there; returns once the
    /// first generation answers `GET /`.
    pub(crate) fn start(program: &Path, dir: &Path) -> Result<Baton, BenchError> {
        let config = dir.join("config").join("default.toml");
        std::fs::create_dir_all(dir.join("config"))?;
        write_config(&config, &greeting(0))?;
        let mut command = crate::serve::serve_command(program, dir)?;
        let mut child = command.spawn().map_err(|source| BenchError::Spawn {
            program: program.to_owned(),
            source,
        })?;
        let mut baton = Baton {
            dir: dir.to_owned(),
            config,
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            version: None,
            generations: Vec::new(),
            reloads: 0,
            stopped: false,
        };
        // Known before it answers, so the guard stops it whatever happens next.
        if let Some(process) = Process::find(child.id()) {
            baton.generations.push(GenerationRecord {
                generation: 1,
                pid: process.pid,
                at_start: None,
                at_retirement: None,
                exit: None,
                process,
            });
        }
        let record = baton.wait_for_state(&mut child)?;
        baton.version = Some(record.version.clone());
        baton.http = record
            .listener(baton::lifecycle::HTTP_LISTENER)
            .ok_or_else(|| baton.failure("the state file lists no http listener"))?;
        let mut probes = Probes::default();
        let deadline = Instant::now() + START_LIMIT;
        let first = loop {
            if let Some(greeting) = probes.greet(baton.http) {
                break greeting;
            }
            if Instant::now() >= deadline {
                return Err(baton.failure("GET / did not answer within 20s of the start"));
            }
        };
        let process = Process::find(first.pid)
            .filter(|p| p.pid == child.id())
            .ok_or_else(|| baton.failure("GET / was answered by another process"))?;
        baton.generations = vec![GenerationRecord {
            generation: first.generation,
            pid: process.pid,
            at_start: process.memory(),
            at_retirement: None,
            exit: None,
            process,
        }];
        Ok(baton)
    }

    /// Polls the state file until the child we started has written it.
    fn wait_for_state(&self, child: &mut Child) -> Result<ServerRecord, BenchError> {
        let state = self.dir.join("run").join("baton.state.json");
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Some(record) = ServerRecord::read(&state).filter(|r| r.pid == child.id()) {
                return Ok(record);
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(self.failure(&format!("baton exited at start ({status})")));
            }
            if Instant::now() >= deadline {
                return Err(self.failure("baton wrote no state file within 20s"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The build id the first generation reported.
    pub(crate) fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    pub(crate) fn http(&self) -> SocketAddr {
        self.http
    }

    pub(crate) fn current(&self) -> Option<Process> {
        self.generations.last().map(|g| g.process)
    }

    /// Every generation still running (for CPU accounting).
    pub(crate) fn live_pids(&self) -> Vec<u32> {
        self.generations
            .iter()
            .filter(|g| g.process.alive())
            .map(|g| g.pid)
            .collect()
    }

    pub(crate) fn generations(&self) -> &[GenerationRecord] {
        &self.generations
    }

    /// SIGUSR2 to the serving generation (directly, not through `baton upgrade`, whose
    /// configuration check would run another process), then probes on new connections until
    /// the next generation answers, then waits for the old one to exit.
    pub(crate) fn upgrade(&mut self, probes: &mut Probes) -> Result<Handover, BenchError> {
        let index = self.generations.len() - 1;
        let old = self.generations[index].clone();
        self.generations[index].at_retirement = old.process.memory();
        let sent = Instant::now();
        old.process
            .signal(Signal::SIGUSR2)
            .map_err(|err| self.failure(&format!("cannot send SIGUSR2 to {}: {err}", old.pid)))?;
        let deadline = sent + HANDOVER_LIMIT;
        let new = loop {
            match probes.greet(self.http) {
                Some(greeting) if greeting.pid != old.pid => break greeting,
                _ if Instant::now() >= deadline => {
                    return Err(self.failure(&format!(
                        "no new generation answered within {HANDOVER_LIMIT:?} of SIGUSR2 to {}",
                        old.pid
                    )));
                }
                _ => {}
            }
        };
        let answered = sent.elapsed();
        // Recorded before anything else can fail, so the guard knows to stop it.
        let process = Process::find(new.pid)
            .ok_or_else(|| self.failure(&format!("pid {} answered, then vanished", new.pid)))?;
        self.generations.push(GenerationRecord {
            generation: new.generation,
            pid: new.pid,
            at_start: process.memory(),
            at_retirement: None,
            exit: None,
            process,
        });
        if new.generation != old.generation + 1 {
            return Err(self.failure(&format!(
                "generation {} answered after an upgrade of generation {}",
                new.generation, old.generation
            )));
        }
        let limit = SHUTDOWN_TIMEOUT + Duration::from_secs(5);
        if !old
            .process
            .wait_exit(limit.saturating_sub(sent.elapsed()), EXIT_POLL)
        {
            return Err(self.failure(&format!(
                "the old generation (pid {}) was still running {limit:?} after the upgrade",
                old.pid
            )));
        }
        let old_exited = sent.elapsed();
        self.generations[index].exit = old.process.reap();
        Ok(Handover {
            answered,
            old_exited,
        })
    }

    /// Writes a new greeting into the configuration (atomically), sends SIGUSR1, and probes
    /// until `GET /` shows it. Returns the time from the signal to that answer.
    pub(crate) fn reload(&mut self, probes: &mut Probes) -> Result<Duration, BenchError> {
        self.reloads += 1;
        let text = greeting(self.reloads);
        write_config(&self.config, &text)?;
        let current = self
            .current()
            .ok_or_else(|| self.failure("no generation is serving"))?;
        let sent = Instant::now();
        current
            .signal(Signal::SIGUSR1)
            .map_err(|err| self.failure(&format!("cannot send SIGUSR1: {err}")))?;
        let deadline = sent + RELOAD_LIMIT;
        loop {
            match probes.greet(self.http) {
                Some(greeting) if greeting.text == text => return Ok(sent.elapsed()),
                Some(greeting) if greeting.pid != current.pid => {
                    return Err(self.failure(&format!(
                        "pid {} answered while pid {} was reloading",
                        greeting.pid, current.pid
                    )));
                }
                _ if Instant::now() >= deadline => {
                    return Err(self.failure(&format!(
                        "the new greeting did not appear within {RELOAD_LIMIT:?} of SIGUSR1"
                    )));
                }
                _ => {}
            }
        }
    }

    /// SIGTERM to every generation still running and waits for each to exit. Returns those
    /// that did not (they are then killed): a leftover is a failed run.
    pub(crate) fn stop(&mut self) -> Vec<String> {
        self.stopped = true;
        if let Some(last) = self.generations.last_mut() {
            last.at_retirement = last.process.memory().or(last.at_retirement);
        }
        let mut leftovers = Vec::new();
        for generation in &mut self.generations {
            if !generation.process.alive() {
                continue;
            }
            let _ = generation.process.signal(Signal::SIGTERM);
            if !generation
                .process
                .wait_exit(SHUTDOWN_TIMEOUT + Duration::from_secs(2), EXIT_POLL * 10)
            {
                leftovers.push(format!(
                    "baton generation {} (pid {}) ignored SIGTERM; killed",
                    generation.generation, generation.pid
                ));
                let _ = generation.process.signal(Signal::SIGKILL);
                let _ = generation
                    .process
                    .wait_exit(Duration::from_secs(2), EXIT_POLL);
            }
            generation.exit = generation.process.reap().or(generation.exit.take());
        }
        leftovers
    }

    /// An error that points at the server's log.
    fn failure(&self, what: &str) -> BenchError {
        BenchError::Server {
            what: what.to_owned(),
            log: self.dir.join("baton.log"),
        }
    }
}

impl Drop for Baton {
    /// On an early return or a panic: kill every generation at once (a clean stop is `stop`).
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        for generation in &self.generations {
            if generation.process.signal(Signal::SIGKILL).is_ok() {
                let _ = generation
                    .process
                    .wait_exit(Duration::from_secs(2), EXIT_POLL);
                let _ = generation.process.reap();
            }
        }
    }
}

/// The greeting of the `n`th reload; the same length for every `n` below a million, so the
/// response size does not drift with the reload count.
fn greeting(n: u64) -> String {
    format!("Hello from baton, reload {n:06}")
}

/// The bench's configuration: loopback on ports the kernel picks (the state file says which),
/// a short lame duck, everything else at its default.
fn write_config(path: &Path, greeting: &str) -> Result<(), BenchError> {
    let shutdown = humantime::format_duration(SHUTDOWN_TIMEOUT);
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [app]\ngreeting = \"{greeting}\"\n\n\
         [lifecycle]\nlame_duck = \"{LAME_DUCK}\"\nshutdown_timeout = \"{shutdown}\"\n\n\
         [upgrade]\nready_timeout = \"{READY_TIMEOUT}\"\n"
    );
    // Temporary file and rename: a reload never reads half a file.
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The bare axum baseline process.
#[derive(Debug)]
pub(crate) struct Bare {
    child: Child,
    addr: SocketAddr,
}

impl Bare {
    /// Starts `program` on a port the kernel picks and reads the address from its first line.
    pub(crate) fn start(program: &Path, dir: &Path) -> Result<Bare, BenchError> {
        let mut child = Command::new(program)
            .arg("127.0.0.1:0")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| BenchError::Spawn {
                program: program.to_owned(),
                source,
            })?;
        let first_line = child.stdout.take().and_then(|stdout| {
            // Blocks until the line or end of file: the baseline prints it right after binding,
            // or exits (end of file) with its reason on stderr.
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).ok()?;
            Some(line)
        });
        let addr = first_line
            .as_deref()
            .and_then(|line| line.trim().strip_prefix("listening on "))
            .and_then(|addr| addr.parse().ok());
        match addr {
            Some(addr) => Ok(Bare { child, addr }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(BenchError::Baseline(format!(
                    "{} did not print \"listening on <addr>\"",
                    program.display()
                )))
            }
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM (it has no handler: it ends at once) and reap. A leftover is reported.
    pub(crate) fn stop(&mut self) -> Vec<String> {
        let Some(process) = Process::find(self.child.id()) else {
            let _ = self.child.try_wait();
            return Vec::new();
        };
        let _ = process.signal(Signal::SIGTERM);
        if process.wait_exit(Duration::from_secs(5), EXIT_POLL * 10) {
            let _ = self.child.wait();
            return Vec::new();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        vec![format!(
            "bare_axum (pid {}) ignored SIGTERM; killed",
            process.pid
        )]
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
