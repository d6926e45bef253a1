//! The harness of the real-binary lifecycle tests (`tests/lifecycle.rs`, `tests/upgrade.rs`).
//!
//! Each test gets its own [`Server`]: a temporary directory laid out as a deployment,
//!
//! ```text
//! config/default.toml   written by the test (port-0 listeners, short drain timings)
//! bin/baton             a symlink to the binary under test; replacing it by rename is
//!                       "installing a new build", a shell script in its place a broken one
//! run/                  the server's pid file and state file
//! baton.log             stdout and stderr of every generation (printed when a test fails)
//! ```
//!
//! and `bin/baton serve` runs there, started by path as a user would, so an upgrade re-executes
//! `bin/baton`. Nothing is shared between tests, so they run in parallel.
//!
//! # No process is left behind
//! The test process makes itself a child subreaper (`PR_SET_CHILD_SUBREAPER`): each generation
//! an upgrade leaves behind, and every process a killed generation orphans, becomes our child,
//! so we can reap it (here pid 1 may never do so) and see its exit status. When a `Server`
//! drops, panicking or not, every process it may have produced is SIGKILLed and reaped: each
//! pid ever named by its pid file or state file, every process whose working directory is its
//! temporary directory (all of them run there: generations, scripts, broken "binaries"), and
//! their descendants. A pid is only ever signalled while its start time still matches the one
//! recorded, so a recycled pid is never hit; nothing is ever killed by name.
//!
//! # A clean start
//! The fds the test process inherited without close-on-exec (a shell's pipe, say) are marked
//! close-on-exec once, so a server starts with stdin, stdout and stderr only, and every other
//! fd it holds is one it opened: what the fd checks compare.
//!
//! # Waiting
//! Tests never sleep to synchronise: [`wait_until`] polls a condition every 20 ms and fails the
//! test with what it waited for when the deadline passes. Deadlines are generous, for a loaded
//! 2-core machine.
//!
//! Linux only (`/proc`, `PR_SET_CHILD_SUBREAPER`); [`Fds`] asks `ss` (iproute2) which sockets
//! are TCP and in which state.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "a module of each test crate: each uses part of it, and `pub` marks its API"
)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{self, Read, Seek, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, Once, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use baton::lifecycle::{ServerRecord, proc_stat};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tempfile::TempDir;

/// How often [`wait_until`] looks.
pub const POLL: Duration = Duration::from_millis(20);
/// For a server to start, a generation to leave, a process to exit.
pub const DEADLINE: Duration = Duration::from_secs(20);
/// For one CLI command or script (an upgrade waits for `upgrade.ready_timeout` at most).
pub const CLI_DEADLINE: Duration = Duration::from_secs(60);
/// For one request from the tests themselves.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The binary under test.
pub const BATON: &str = env!("CARGO_BIN_EXE_baton");

/// Polls `condition` every [`POLL`] until it holds; panics with `what` after `deadline`.
pub fn wait_until(deadline: Duration, what: &str, condition: impl FnMut() -> bool) {
    assert!(
        eventually(deadline, condition),
        "timed out after {deadline:?} waiting for {what}"
    );
}

/// Polls `condition` every [`POLL`] until it holds (`true`) or `deadline` passes (`false`),
/// for a caller that explains the failure itself.
pub fn eventually(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Like [`wait_until`], for a condition that yields a value.
pub fn wait_for<T>(deadline: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let mut found = None;
    wait_until(deadline, what, || {
        found = probe();
        found.is_some()
    });
    found.expect("wait_until returned, so the probe found it")
}

/// A scripts/ file of this repository, by absolute path.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// The settings a test server starts with; `toml()` renders a complete `default.toml`.
#[derive(Debug, Clone)]
pub struct Config {
    pub http: String,
    /// `None` turns the admin listener off.
    pub admin: Option<String>,
    pub greeting: String,
    pub items_limit: u32,
    pub lame_duck: String,
    pub shutdown_timeout: String,
    pub ready_timeout: String,
    pub log_filter: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http: "127.0.0.1:0".into(),
            admin: Some("127.0.0.1:0".into()),
            greeting: "Hello from the test".into(),
            items_limit: 1000,
            lame_duck: "300ms".into(),
            shutdown_timeout: "10s".into(),
            ready_timeout: "10s".into(),
            log_filter: "info".into(),
        }
    }
}

impl Config {
    pub fn toml(&self) -> String {
        let (admin_enabled, admin_listen) = match &self.admin {
            Some(addr) => (true, addr.as_str()),
            None => (false, "127.0.0.1:0"),
        };
        format!(
            r#"[server]
listen = "{http}"
request_timeout = "30s"
worker_threads = 2

[admin]
enabled = {admin_enabled}
listen = "{admin_listen}"

[app]
greeting = "{greeting}"
items_limit = {items_limit}

[log]
filter = "{filter}"
format = "text"

[lifecycle]
pid_file = "run/baton.pid"
lame_duck = "{lame_duck}"
shutdown_timeout = "{shutdown_timeout}"

[upgrade]
ready_timeout = "{ready_timeout}"
"#,
            http = self.http,
            greeting = self.greeting,
            items_limit = self.items_limit,
            filter = self.log_filter,
            lame_duck = self.lame_duck,
            shutdown_timeout = self.shutdown_timeout,
            ready_timeout = self.ready_timeout,
        )
    }
}

// ---------------------------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------------------------

/// A deployment directory and the baton serving from it. See the module docs.
#[derive(Debug)]
pub struct Server {
    root: TempDir,
    /// The pid of the process this harness spawned (generation 1), if it did.
    first_pid: Option<u32>,
    /// Set once the server is up: the public and the admin listener.
    pub http: SocketAddr,
    pub admin: Option<SocketAddr>,
    /// Every process seen as the server, with its start time (pids are reused, the pair is
    /// not), and the exit status of those reaped here.
    known: Mutex<Known>,
}

#[derive(Debug, Default)]
struct Known {
    pids: BTreeMap<u32, u64>,
    /// The process this harness spawned, until reaped.
    child: Option<Child>,
    /// How the processes reaped here exited.
    reaped: HashMap<u32, WaitStatus>,
}

/// What a CLI command or script did.
#[derive(Debug)]
pub struct CliOutput {
    /// `None` when it was killed by a signal (or by the deadline).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for CliOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}---",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Server {
    /// Lays out a deployment directory with `config`, without starting anything.
    pub fn prepare(config: &Config) -> Server {
        prepare_test_process();
        let root = tempfile::Builder::new()
            .prefix("baton-test-")
            .tempdir()
            .expect("create the test's temporary directory");
        for dir in ["config", "bin"] {
            fs::create_dir(root.path().join(dir)).expect("create a directory in the tempdir");
        }
        std::os::unix::fs::symlink(BATON, root.path().join("bin/baton"))
            .expect("link bin/baton to the binary under test");
        let server = Server {
            root,
            first_pid: None,
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: None,
            known: Mutex::new(Known::default()),
        };
        server.write_config(&config.toml());
        server
    }

    /// Prepares a deployment directory and starts `bin/baton serve` in it; returns once the
    /// server named itself in the state file and answers on its public listener.
    pub fn start(config: &Config) -> Server {
        let mut server = Server::prepare(config);
        server.spawn();
        server
    }

    /// Starts `bin/baton serve` (generation 1) and waits until it serves.
    pub fn spawn(&mut self) {
        self.spawn_with(|_| {});
    }

    /// [`Server::spawn`], with `customize` applied to the command first (extra fds, say).
    pub fn spawn_with(&mut self, customize: impl FnOnce(&mut Command)) {
        assert!(
            self.first_pid.is_none(),
            "the harness starts one server per test"
        );
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the log file");
        let mut command = self.command(&self.bin());
        command
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file handle"))
            .stderr(log);
        customize(&mut command);
        let child = command.spawn().expect("start bin/baton serve");
        let pid = child.id();
        self.track(pid, proc_stat(pid).map(|s| s.start_ticks));
        lock(&self.known).child = Some(child);
        self.first_pid = Some(pid);
        let record = self.wait_serving(pid);
        self.adopt_addresses(&record);
    }

    /// Takes up a server started by someone else (`scripts/restart.sh`): waits until the pid
    /// file names a serving process and returns its pid.
    pub fn attach(&mut self) -> u32 {
        let pid = wait_for(DEADLINE, "the pid file to name a server", || {
            self.read_pid_file()
        });
        let record = self.wait_serving(pid);
        self.adopt_addresses(&record);
        pid
    }

    /// Waits until the state file names `pid` and its public listener answers `/healthz`.
    fn wait_serving(&self, pid: u32) -> ServerRecord {
        let mut record = None;
        let what = format!("baton (pid {pid}) to serve; its log:\n{}", self.log());
        wait_until(DEADLINE, &what, || {
            assert!(
                proc_stat(pid).is_some_and(|s| !s.zombie),
                "baton (pid {pid}) exited while starting; its log:\n{}",
                self.log()
            );
            record = self.record().filter(|r| r.pid == pid).and_then(|r| {
                let http = r.listener("http")?;
                let healthy = loadgen::get_blocking(http, "/healthz", REQUEST_TIMEOUT)
                    .is_ok_and(|response| response.status == 200);
                healthy.then_some(r)
            });
            record.is_some()
        });
        record.expect("found by the wait")
    }

    fn adopt_addresses(&mut self, record: &ServerRecord) {
        self.http = record.listener("http").expect("an http listener");
        self.admin = record.listener("admin");
    }

    // --- Paths and files ---

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// `bin/baton`, what the server re-executes at each upgrade.
    pub fn bin(&self) -> PathBuf {
        self.root().join("bin/baton")
    }

    pub fn pid_path(&self) -> PathBuf {
        self.root().join("run/baton.pid")
    }

    pub fn state_path(&self) -> PathBuf {
        self.root().join("run/baton.state.json")
    }

    pub fn config_path(&self) -> PathBuf {
        self.root().join("config/default.toml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.root().join("baton.log")
    }

    /// Everything every generation logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Replaces `config/default.toml` atomically (temp file + rename), as an editor or a
    /// deployment tool should.
    pub fn write_config(&self, toml: &str) {
        let tmp = self.root().join("config/.default.toml.tmp");
        fs::write(&tmp, toml).expect("write the new config");
        fs::rename(&tmp, self.config_path()).expect("rename the new config into place");
    }

    /// Makes `bin/baton` a symlink to `target`, atomically (a new build is installed).
    pub fn install_link(&self, target: &Path) {
        let tmp = self.root().join("bin/.baton.link.tmp");
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp).expect("create the new link");
        fs::rename(&tmp, self.bin()).expect("rename the new link over bin/baton");
    }

    /// Puts the binary under test back in place.
    pub fn install_good_binary(&self) {
        self.install_link(Path::new(BATON));
    }

    /// Makes `bin/baton` a file with `contents` and `mode`, atomically.
    pub fn install_file(&self, contents: &str, mode: u32) {
        let tmp = self.root().join("bin/.baton.file.tmp");
        fs::write(&tmp, contents).expect("write the new binary");
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).expect("chmod it");
        fs::rename(&tmp, self.bin()).expect("rename the new binary over bin/baton");
    }

    /// Makes `bin/baton` an executable shell script (a broken build).
    pub fn install_script(&self, body: &str) {
        self.install_file(&format!("#!/bin/sh\n{body}\n"), 0o755);
    }

    /// Removes `bin/baton`.
    pub fn remove_binary(&self) {
        fs::remove_file(self.bin()).expect("remove bin/baton");
    }

    // --- The server's own account: pid file, state file, admin endpoints ---

    /// The pid in the pid file, if there is one.
    pub fn read_pid_file(&self) -> Option<u32> {
        let text = fs::read_to_string(self.pid_path()).ok()?;
        let pid = text.trim().parse().ok()?;
        let ticks = self
            .record()
            .filter(|r| r.pid == pid)
            .map(|r| r.start_ticks);
        self.track(pid, ticks.or_else(|| proc_stat(pid).map(|s| s.start_ticks)));
        Some(pid)
    }

    /// The pid the pid file names; panics if there is none.
    pub fn current_pid(&self) -> u32 {
        self.read_pid_file()
            .unwrap_or_else(|| panic!("no pid file; log:\n{}", self.log()))
    }

    /// The pid this harness started (generation 1).
    pub fn first_pid(&self) -> u32 {
        self.first_pid.expect("the harness started this server")
    }

    /// The state file (`run/baton.state.json`), if readable.
    pub fn record(&self) -> Option<ServerRecord> {
        let record = ServerRecord::read(&self.state_path())?;
        self.track(record.pid, Some(record.start_ticks));
        Some(record)
    }

    /// `GET /-/status` on the admin listener, parsed.
    pub fn status(&self) -> serde_json::Value {
        let admin = self.admin.expect("the admin listener is on");
        let response = loadgen::get_blocking(admin, "/-/status", REQUEST_TIMEOUT)
            .unwrap_or_else(|e| panic!("GET /-/status: {e}; log:\n{}", self.log()));
        assert_eq!(response.status, 200, "GET /-/status: {}", response.body);
        serde_json::from_str(&response.body).expect("/-/status is JSON")
    }

    /// `GET /metrics` on the admin listener.
    pub fn metrics(&self) -> String {
        let admin = self.admin.expect("the admin listener is on");
        let response = loadgen::get_blocking(admin, "/metrics", REQUEST_TIMEOUT)
            .unwrap_or_else(|e| panic!("GET /metrics: {e}; log:\n{}", self.log()));
        assert_eq!(response.status, 200, "GET /metrics: {}", response.body);
        response.body
    }

    /// One sample of `/metrics`, e.g. `baton_upgrades_total{result="failed"}`.
    pub fn metric(&self, sample: &str) -> f64 {
        let text = self.metrics();
        metric_value(&text, sample).unwrap_or_else(|| panic!("no sample {sample} in:\n{text}"))
    }

    /// `GET path` on the public listener, on a new connection; panics if it fails.
    pub fn get(&self, path: &str) -> loadgen::Response {
        self.try_get(path)
            .unwrap_or_else(|e| panic!("GET {path}: {e}; log:\n{}", self.log()))
    }

    pub fn try_get(&self, path: &str) -> Result<loadgen::Response, loadgen::Failure> {
        loadgen::get_blocking(self.http, path, REQUEST_TIMEOUT)
    }

    /// `GET /`, parsed.
    pub fn hello(&self) -> Hello {
        let response = self.get("/");
        assert_eq!(response.status, 200, "GET /: {}", response.body);
        Hello::parse(&response.body)
    }

    // --- Commands ---

    /// A command run as a user would in the deployment directory: working directory there,
    /// and no `BATON_*` (or socket-passing) variable of ours leaking into it.
    pub fn command(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        command.current_dir(self.root());
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("BATON_") || name.starts_with("LISTEN_") || name == "NOTIFY_SOCKET"
            {
                command.env_remove(name.as_ref());
            }
        }
        command
    }

    /// `bin/baton ARGS` in the deployment directory.
    pub fn run_cli(&self, args: &[&str]) -> CliOutput {
        let mut command = self.command(&self.bin());
        command.args(args);
        run(command, CLI_DEADLINE)
    }

    /// The binary under test (not `bin/baton`, which may be broken on purpose) with `args`.
    pub fn run_baton(&self, args: &[&str]) -> CliOutput {
        self.run_baton_within(args, CLI_DEADLINE)
    }

    pub fn run_baton_within(&self, args: &[&str], deadline: Duration) -> CliOutput {
        let mut command = self.command(Path::new(BATON));
        command.args(args);
        run(command, deadline)
    }

    /// `scripts/<name> ARGS` with `BATON_ROOT`, `BATON_BIN` and `BATON_LOG` pointing here, and
    /// `BATON_STATUS_TIMEOUT` shortened to 10 s (a hanging build is given up on sooner).
    pub fn run_script(&self, name: &str, args: &[&str]) -> CliOutput {
        self.run_script_within(name, args, CLI_DEADLINE)
    }

    pub fn run_script_within(&self, name: &str, args: &[&str], deadline: Duration) -> CliOutput {
        let mut command = self.command(&script(name));
        command
            .args(args)
            .env("BATON_ROOT", self.root())
            .env("BATON_BIN", self.bin())
            .env("BATON_LOG", self.log_path())
            .env("BATON_START_TIMEOUT", "20")
            .env("BATON_STATUS_TIMEOUT", "10");
        let output = run(command, deadline);
        // A script may have started a server: know it, to stop it at the end.
        let _ = self.read_pid_file();
        output
    }

    /// `baton upgrade` that must succeed; returns (old pid, new pid) from its output.
    pub fn upgrade(&self) -> (u32, u32) {
        let out = self.run_cli(&["upgrade"]);
        assert_eq!(
            out.code,
            Some(0),
            "baton upgrade failed:\n{out}\nlog:\n{}",
            self.log()
        );
        let (old, new) = parse_upgraded(&out.stdout)
            .unwrap_or_else(|| panic!("unexpected output of baton upgrade:\n{out}"));
        // Known from here on, to be reaped and, at the end, stopped.
        let _ = self.record();
        (old, new)
    }

    // --- Signals and processes ---

    /// Sends `signal` to the process the pid file names.
    pub fn signal(&self, signal: Signal) {
        self.signal_pid(self.current_pid(), signal);
    }

    /// Sends `signal` to `pid`, which must be one of this server's processes.
    pub fn signal_pid(&self, pid: u32, signal: Signal) {
        let ticks = lock(&self.known).pids.get(&pid).copied();
        let ticks = ticks.unwrap_or_else(|| panic!("pid {pid} is not one of this test's"));
        assert!(
            proc_stat(pid).is_some_and(|s| s.start_ticks == ticks),
            "pid {pid} is not running any more; not signalling it"
        );
        kill(Pid::from_raw(raw(pid)), signal).expect("send the signal");
    }

    /// Whether `pid` has exited (reaped or a zombie). Reaps it if it is ours to reap.
    pub fn gone(&self, pid: u32) -> bool {
        let gone = proc_stat(pid).is_none_or(|s| s.zombie);
        if gone {
            self.reap(pid);
        }
        gone
    }

    /// Waits until `pid` has exited.
    pub fn wait_gone(&self, pid: u32) {
        wait_until(DEADLINE, &format!("pid {pid} to exit"), || self.gone(pid));
    }

    /// How `pid` exited, if it was reaped here (generation 1 and every later generation that
    /// outlived its parent).
    pub fn exit_status(&self, pid: u32) -> Option<WaitStatus> {
        self.reap(pid);
        lock(&self.known).reaped.get(&pid).copied()
    }

    /// Waits until the process the harness started exits; returns its status.
    pub fn wait_exit(&self, deadline: Duration) -> WaitStatus {
        let pid = self.first_pid();
        wait_for(deadline, &format!("baton (pid {pid}) to exit"), || {
            self.exit_status(pid)
        })
    }

    /// Reaps `pid` if it is a zombie child of ours that this server produced.
    fn reap(&self, pid: u32) {
        let mut known = lock(&self.known);
        if known.reaped.contains_key(&pid) {
            return;
        }
        if let Some(child) = known.child.as_mut().filter(|c| c.id() == pid) {
            if let Ok(Some(status)) = child.try_wait() {
                known.child = None;
                known.reaped.insert(pid, wait_status(pid, status));
            }
            return;
        }
        let Some(&ticks) = known.pids.get(&pid) else {
            return;
        };
        let Some(stat) = proc_stat(pid) else {
            return;
        };
        if stat.start_ticks != ticks || !stat.zombie || parent_of(pid) != Some(std::process::id()) {
            return;
        }
        if let Ok(status) = waitpid(Pid::from_raw(raw(pid)), Some(WaitPidFlag::WNOHANG))
            && status != WaitStatus::StillAlive
        {
            known.reaped.insert(pid, status);
        }
    }

    /// Starts tracking `pid` as one of this server's processes.
    fn track(&self, pid: u32, start_ticks: Option<u64>) {
        let Some(ticks) = start_ticks else {
            return;
        };
        lock(&self.known).pids.entry(pid).or_insert(ticks);
    }

    /// Every live process whose working directory is the deployment directory: the server's
    /// generations, scripts, broken "binaries" and their children.
    pub fn processes_here(&self) -> Vec<u32> {
        let root = fs::canonicalize(self.root()).expect("canonical root");
        let mut pids: Vec<u32> = all_processes()
            .into_iter()
            .filter(|p| !p.zombie())
            .filter(|p| {
                fs::read_link(format!("/proc/{}/cwd", p.pid))
                    .is_ok_and(|cwd| cwd.starts_with(&root))
            })
            .map(|p| p.pid)
            .collect();
        pids.sort_unstable();
        pids
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(200).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!(
                "---- baton.log of {} (last {} lines) ----\n{}\n----",
                self.root().display(),
                tail.len(),
                tail.join("\n")
            );
        }
        self.kill_everything();
    }
}

impl Server {
    /// SIGKILLs and reaps every process this server may have produced (see the module docs).
    fn kill_everything(&mut self) {
        let me = std::process::id();
        let processes = all_processes();
        let known = lock(&self.known).pids.clone();
        let mut victims: HashSet<u32> = known
            .iter()
            .filter(|&(&pid, &ticks)| {
                processes
                    .iter()
                    .any(|p| p.pid == pid && p.start_ticks == ticks && !p.zombie())
            })
            .map(|(&pid, _)| pid)
            .collect();
        victims.extend(self.processes_here());
        // Descendants too (a killed parent's children would be orphaned, not killed).
        loop {
            let more: Vec<u32> = processes
                .iter()
                .filter(|p| victims.contains(&p.ppid) && !victims.contains(&p.pid))
                .map(|p| p.pid)
                .collect();
            if more.is_empty() {
                break;
            }
            victims.extend(more);
        }
        victims.remove(&me);
        let ticks_of: HashMap<u32, u64> =
            processes.iter().map(|p| (p.pid, p.start_ticks)).collect();
        for &pid in &victims {
            // Only the very process seen above: its start time must not have changed.
            if proc_stat(pid).is_some_and(|s| Some(&s.start_ticks) == ticks_of.get(&pid)) {
                let _ = kill(Pid::from_raw(raw(pid)), Signal::SIGKILL);
            }
        }
        let child = lock(&self.known).child.take();
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
            victims.remove(&child.id());
        }
        // The others are our children now (we are their subreaper) or soon will be.
        let end = Instant::now() + Duration::from_secs(10);
        let mut left: Vec<u32> = victims.into_iter().collect();
        while !left.is_empty() && Instant::now() < end {
            left.retain(|&pid| {
                let Some(stat) = proc_stat(pid) else {
                    return false;
                };
                if Some(&stat.start_ticks) != ticks_of.get(&pid) {
                    return false;
                }
                if stat.zombie && parent_of(pid) == Some(me) {
                    let _ = waitpid(Pid::from_raw(raw(pid)), Some(WaitPidFlag::WNOHANG));
                    return proc_stat(pid).is_some();
                }
                // Another process's zombie, or still dying: look again.
                !stat.zombie || parent_of(pid) == Some(me)
            });
            std::thread::sleep(POLL);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A std exit status as waitpid would have given it.
fn wait_status(pid: u32, status: ExitStatus) -> WaitStatus {
    let pid = Pid::from_raw(raw(pid));
    match (status.code(), status.signal().map(Signal::try_from)) {
        (Some(code), _) => WaitStatus::Exited(pid, code),
        (None, Some(Ok(signal))) => WaitStatus::Signaled(pid, signal, status.core_dumped()),
        _ => WaitStatus::StillAlive,
    }
}

fn raw(pid: u32) -> i32 {
    i32::try_from(pid).expect("pids fit in i32")
}

/// Sets the test process up once: it becomes the reaper of its orphaned descendants (see the
/// module docs), and the fds it inherited without close-on-exec (from whatever started the test
/// runner: a shell's pipe, a job server) get it, so that a server starts with exactly
/// stdin/stdout/stderr and every other fd it has is its own.
fn prepare_test_process() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
        for fd in inherited_fds() {
            // SAFETY: `fd` was listed as open in /proc/self/fd just now, and nothing in the test
            // process closes fds it did not open itself; only its flags are changed.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            let _ = nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            );
        }
    });
}

/// The fds above stderr of this process that lack close-on-exec (Rust opens everything with
/// it, so these came from outside).
fn inherited_fds() -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc/self/fdinfo") else {
        return Vec::new();
    };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&fd| fd > 2)
        .filter(|fd| {
            // `flags:` is octal; O_CLOEXEC is 0o2000000.
            fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).is_ok_and(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("flags:"))
                    .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
                    .is_some_and(|flags| flags & 0o2_000_000 == 0)
            })
        })
        .collect()
}

/// Runs `command` with its output captured, killing it at `deadline`.
pub fn run(mut command: Command, deadline: Duration) -> CliOutput {
    let mut stdout = tempfile::tempfile().expect("a temp file for stdout");
    let mut stderr = tempfile::tempfile().expect("a temp file for stderr");
    command
        .stdin(Stdio::null())
        .stdout(stdout.try_clone().expect("clone"))
        .stderr(stderr.try_clone().expect("clone"));
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let end = Instant::now() + deadline;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the command") {
            break Some(status);
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(POLL);
    };
    let read = |file: &mut fs::File| {
        let mut text = String::new();
        file.rewind().expect("rewind");
        file.read_to_string(&mut text).expect("read the output");
        text
    };
    let output = CliOutput {
        code: status.and_then(|s| s.code()),
        stdout: read(&mut stdout),
        stderr: read(&mut stderr),
    };
    assert!(
        status.is_some(),
        "{command:?} did not finish within {deadline:?} (killed):\n{output}"
    );
    output
}

/// `upgraded <old> -> <new> (<version>)` -> (old, new).
pub fn parse_upgraded(stdout: &str) -> Option<(u32, u32)> {
    let line = stdout.lines().find(|l| l.starts_with("upgraded "))?;
    let mut words = line.split_whitespace().skip(1);
    let old = words.next()?.parse().ok()?;
    (words.next()? == "->").then_some(())?;
    let new = words.next()?.parse().ok()?;
    Some((old, new))
}

/// The value of one sample line of a Prometheus text exposition.
pub fn metric_value(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            line.strip_prefix(sample)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
}

/// `GET /`: `<greeting> (version <v>, pid <pid>, generation <g>)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub greeting: String,
    pub version: String,
    pub pid: u32,
    pub generation: u64,
}

impl Hello {
    pub fn parse(body: &str) -> Hello {
        let parse = || -> Option<Hello> {
            let body = body.strip_suffix('\n')?;
            let (greeting, rest) = body.rsplit_once(" (version ")?;
            let rest = rest.strip_suffix(')')?;
            let mut parts = rest.split(", ");
            let version = parts.next()?.to_owned();
            let pid = parts.next()?.strip_prefix("pid ")?.parse().ok()?;
            let generation = parts.next()?.strip_prefix("generation ")?.parse().ok()?;
            Some(Hello {
                greeting: greeting.to_owned(),
                version,
                pid,
                generation,
            })
        };
        parse().unwrap_or_else(|| panic!("GET / body not in the documented format: {body:?}"))
    }
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 client: keep-alive connections and requests held in flight
// ---------------------------------------------------------------------------------------------

/// One HTTP/1.1 connection that stays open between requests (loadgen's one-shot helpers close
/// theirs), for what must happen on a connection opened earlier.
#[derive(Debug)]
pub struct RawConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// A response read from a [`RawConn`].
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Names lowercase.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the server said it closes the connection after this response.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    }
}

impl RawConn {
    pub fn open(addr: SocketAddr) -> io::Result<RawConn> {
        let stream = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(RawConn {
            stream,
            buf: Vec::new(),
        })
    }

    /// The client side's address: the peer address the server sees.
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("a connected socket")
    }

    /// Writes `GET path` (keep-alive).
    pub fn send(&mut self, path: &str) -> io::Result<()> {
        write!(
            self.stream,
            "GET {path} HTTP/1.1\r\nHost: baton.test\r\nAccept: */*\r\n\r\n"
        )
    }

    /// Reads one response (framed by `Content-Length`).
    pub fn read_response(&mut self) -> io::Result<RawResponse> {
        let head_end = loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line in {head:?}")))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .ok_or_else(|| io::Error::other(format!("no Content-Length in {head:?}")))?;
        while self.buf.len() < head_end + length {
            self.fill()?;
        }
        let body = String::from_utf8_lossy(&self.buf[head_end..head_end + length]).into_owned();
        self.buf.drain(..head_end + length);
        Ok(RawResponse {
            status,
            headers,
            body,
        })
    }

    pub fn get(&mut self, path: &str) -> io::Result<RawResponse> {
        self.send(path)?;
        self.read_response()
    }

    /// Whether the server closed the connection (reads end of file).
    pub fn closed_by_server(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0))
    }

    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// A request sent and waiting for its response on a thread, e.g. `/api/slow?ms=2000` held
/// across an upgrade or a shutdown.
#[derive(Debug)]
pub struct InFlight {
    /// The client's address, to find which process holds the connection.
    pub client: SocketAddr,
    pub sent_at: Instant,
    handle: JoinHandle<io::Result<RawResponse>>,
}

impl InFlight {
    pub fn start(addr: SocketAddr, path: &str) -> InFlight {
        let mut conn = RawConn::open(addr).expect("connect for the in-flight request");
        conn.send(path).expect("send the in-flight request");
        let client = conn.local_addr();
        InFlight {
            client,
            sent_at: Instant::now(),
            handle: std::thread::spawn(move || conn.read_response()),
        }
    }

    /// The response (or how it failed) and how long after sending it arrived.
    pub fn finish(self) -> (io::Result<RawResponse>, Duration) {
        let result = self.handle.join().expect("the in-flight request's thread");
        (result, self.sent_at.elapsed())
    }

    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

// ---------------------------------------------------------------------------------------------
// /proc: processes, zombies, file descriptors, sockets
// ---------------------------------------------------------------------------------------------

/// One line of `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    /// `R`, `S`, `Z`, ...
    pub state: char,
    pub start_ticks: u64,
}

impl ProcInfo {
    pub fn zombie(&self) -> bool {
        self.state == 'Z'
    }
}

pub fn proc_info(pid: u32) -> Option<ProcInfo> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or ')'.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    Some(ProcInfo {
        pid,
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

pub fn parent_of(pid: u32) -> Option<u32> {
    proc_info(pid).map(|p| p.ppid)
}

/// Every process on the machine.
pub fn all_processes() -> Vec<ProcInfo> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter_map(proc_info)
        .collect()
}

/// The children of `pid` (zombies included).
pub fn children_of(pid: u32) -> Vec<ProcInfo> {
    all_processes()
        .into_iter()
        .filter(|p| p.ppid == pid)
        .collect()
}

/// The children of `pid` that exited and were not reaped by it.
pub fn zombie_children(pid: u32) -> Vec<ProcInfo> {
    children_of(pid)
        .into_iter()
        .filter(ProcInfo::zombie)
        .collect()
}

/// What one file descriptor refers to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FdKind {
    TcpListen(SocketAddr),
    /// A TCP connection (any state but LISTEN).
    TcpConnection {
        local: SocketAddr,
        peer: SocketAddr,
    },
    /// A socket that is not TCP: Unix domain (the signal handler's socket pair), ...
    OtherSocket,
    Pipe,
    /// `anon_inode:[eventpoll]`, `anon_inode:[eventfd]`, ...
    AnonInode(String),
    File(PathBuf),
}

/// The open file descriptors of a process.
#[derive(Debug, Clone)]
pub struct Fds {
    pub pid: u32,
    pub entries: BTreeMap<i32, FdKind>,
}

impl Fds {
    /// Reads `/proc/<pid>/fd`; `None` if the process is gone.
    ///
    /// The fds are listed before the sockets are asked about, and a socket `ss` does not know
    /// is looked at again: one closed meanwhile is left out rather than taken for a non-TCP
    /// socket (under load, connections come and go between the two reads).
    pub fn of(pid: u32) -> Option<Fds> {
        let dir = format!("/proc/{pid}/fd");
        let mut targets = Vec::new();
        for entry in fs::read_dir(&dir).ok()? {
            let Ok(entry) = entry else { continue };
            let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            // Closed between the listing and the readlink: not open any more.
            if let Ok(target) = fs::read_link(entry.path()) {
                targets.push((fd, target.to_string_lossy().into_owned()));
            }
        }
        let tcp = tcp_table();
        let mut entries = BTreeMap::new();
        for (fd, target) in targets {
            let kind = if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse::<u64>().ok())
            {
                match tcp.get(&inode) {
                    Some(t) if t.listening => FdKind::TcpListen(t.local),
                    Some(t) => FdKind::TcpConnection {
                        local: t.local,
                        peer: t.peer,
                    },
                    None => {
                        let still = fs::read_link(format!("{dir}/{fd}"))
                            .is_ok_and(|now| now.to_string_lossy() == target);
                        if !still {
                            continue;
                        }
                        FdKind::OtherSocket
                    }
                }
            } else if target.starts_with("pipe:[") {
                FdKind::Pipe
            } else if let Some(name) = target.strip_prefix("anon_inode:") {
                FdKind::AnonInode(name.to_owned())
            } else {
                FdKind::File(PathBuf::from(target))
            };
            entries.insert(fd, kind);
        }
        Some(Fds { pid, entries })
    }

    pub fn count(&self) -> usize {
        self.entries.len()
    }

    /// What is open, by kind, without fd numbers or connections: two processes doing the same
    /// job idle have equal profiles.
    pub fn profile(&self) -> BTreeMap<String, usize> {
        let mut profile = BTreeMap::new();
        for kind in self.entries.values() {
            let label = match kind {
                FdKind::TcpListen(addr) => format!("tcp listening on {addr}"),
                FdKind::TcpConnection { .. } => continue,
                FdKind::OtherSocket => "socket (not TCP)".to_owned(),
                FdKind::Pipe => "pipe".to_owned(),
                FdKind::AnonInode(name) => format!("anon_inode {name}"),
                FdKind::File(path) => format!("file {}", path.display()),
            };
            *profile.entry(label).or_insert(0) += 1;
        }
        profile
    }

    pub fn listening(&self) -> Vec<SocketAddr> {
        let mut addrs: Vec<SocketAddr> = self
            .entries
            .values()
            .filter_map(|k| match k {
                FdKind::TcpListen(addr) => Some(*addr),
                _ => None,
            })
            .collect();
        addrs.sort_unstable();
        addrs
    }

    /// The peers of its TCP connections.
    pub fn connections(&self) -> Vec<SocketAddr> {
        self.entries
            .values()
            .filter_map(|k| match k {
                FdKind::TcpConnection { peer, .. } => Some(*peer),
                _ => None,
            })
            .collect()
    }

    pub fn pipes(&self) -> usize {
        self.entries
            .values()
            .filter(|k| matches!(k, FdKind::Pipe))
            .count()
    }
}

#[derive(Debug, Clone, Copy)]
struct TcpEntry {
    local: SocketAddr,
    peer: SocketAddr,
    listening: bool,
}

/// The TCP sockets of the machine's (network namespace's) processes, by inode, from `ss`
/// (iproute2). Not `/proc/net/tcp`: with a connection-per-request load running (in this test
/// or a parallel one) that file holds tens of thousands of TIME_WAIT lines, takes seconds to
/// read, and a read that races with them skips live sockets. `ss` asks the kernel over
/// sock_diag with the state filter applied there, which is fast and consistent.
fn tcp_table() -> HashMap<u64, TcpEntry> {
    let output = Command::new("ss")
        .args(["-H", "-t", "-n", "-a", "-e", "exclude", "time-wait"])
        .stdin(Stdio::null())
        .output()
        .expect("run `ss` (iproute2) to list TCP sockets");
    assert!(output.status.success(), "ss failed: {output:?}");
    let any = SocketAddr::from(([0, 0, 0, 0], 0));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let inode: u64 = fields
                .iter()
                .find_map(|f| f.strip_prefix("ino:"))?
                .parse()
                .ok()?;
            (inode != 0).then_some(())?;
            Some((
                inode,
                TcpEntry {
                    local: fields.get(3)?.parse().ok()?,
                    // A listener's peer is `0.0.0.0:*`.
                    peer: fields.get(4)?.parse().unwrap_or(any),
                    listening: *fields.first()? == "LISTEN",
                },
            ))
        })
        .collect()
}

/// Whether process `pid` holds the server side of the connection from `client`.
pub fn holds_connection(pid: u32, client: SocketAddr) -> bool {
    Fds::of(pid).is_some_and(|fds| fds.connections().contains(&client))
}

/// A port nothing listens on right now (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a port-0 listener")
        .port()
}

/// Kills and reaps a helper process (a stand-in stranger) when dropped.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How a process that exited with `code` shows in [`Server::exit_status`].
pub fn exited(pid: u32, code: i32) -> WaitStatus {
    WaitStatus::Exited(Pid::from_raw(raw(pid)), code)
}
