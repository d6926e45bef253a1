//! The server under test: a deployment directory (see the `support` module docs), the baton
//! serving from it, and everything a test asks of it: files, records, endpoints, commands,
//! signals. Dropping it kills and reaps every process it may have produced.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use baton::lifecycle::ServerRecord;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use tempfile::TempDir;

use super::cli::{CliOutput, parse_upgraded, run};
use super::fds::holds_connection;
use super::http::{Hello, InFlight, metric_value};
use super::procs::{
    alive, all_processes, has_exited, kill_and_reap, prepare_test_process, proc_info, raw,
    try_reap, wait_status,
};
use super::{
    BATON, CLI_DEADLINE, DEADLINE, REQUEST_TIMEOUT, eventually, script, wait_for, wait_until,
};

pub use super::config::Config;

/// A deployment directory and the baton serving from it. See the `support` module docs.
#[derive(Debug)]
pub struct Server {
    root: TempDir,
    /// The pid of the process this harness spawned (generation 1, or the supervisor), if it did.
    first_pid: Option<u32>,
    /// Set once the server is up: the public and the admin listener.
    pub http: SocketAddr,
    pub admin: Option<SocketAddr>,
    /// The client that trusts the server's certificate when the public listener speaks TLS.
    pub tls: Option<loadgen::Tls>,
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
            tls: config.tls.as_ref().map(|tls| tls.client.clone()),
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
        let pid = self.spawn_process(&["serve"], customize);
        let record = self.wait_serving(pid);
        self.adopt_addresses(&record);
    }

    /// Starts `bin/baton ARGS` as the one process this harness spawns, its output appended to
    /// the log; returns its pid.
    pub(super) fn spawn_process(
        &mut self,
        args: &[&str],
        customize: impl FnOnce(&mut Command),
    ) -> u32 {
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
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file handle"))
            .stderr(log);
        customize(&mut command);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start bin/baton {}: {e}", args.join(" ")));
        let pid = child.id();
        self.track(pid, proc_info(pid).map(|p| p.start_ticks));
        lock(&self.known).child = Some(child);
        self.first_pid = Some(pid);
        pid
    }

    /// Polls `probe` like [`wait_for`], and fails at once (not at the deadline) if the process
    /// the harness started exits meanwhile.
    pub fn wait_while_up<T>(&self, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let pid = self.first_pid();
        wait_for(DEADLINE, what, || {
            let found = probe();
            if found.is_none()
                && let Some(status) = self.exit_status(pid)
            {
                panic!("baton (pid {pid}) exited ({status:?}) while waiting for {what}");
            }
            found
        })
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
        wait_until(DEADLINE, &format!("baton (pid {pid}) to serve"), || {
            assert!(
                proc_info(pid).is_some_and(|p| !p.zombie()),
                "baton (pid {pid}) exited while starting"
            );
            record = self.record().filter(|r| r.pid == pid).and_then(|r| {
                let http = r.listener("http")?;
                let healthy = self
                    .probe(http, "/healthz")
                    .is_ok_and(|response| response.status == 200);
                healthy.then_some(r)
            });
            record.is_some()
        });
        record.expect("found by the wait")
    }

    pub(super) fn adopt_addresses(&mut self, record: &ServerRecord) {
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
        self.track(pid, ticks.or_else(|| proc_info(pid).map(|p| p.start_ticks)));
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
        serde_json::from_str(&self.status_text()).expect("/-/status is JSON")
    }

    /// `GET /-/status` as sent: for what a `serde_json::Value` loses (the order of an object's
    /// keys).
    pub fn status_text(&self) -> String {
        let admin = self.admin.expect("the admin listener is on");
        let response = loadgen::get_blocking(admin, "/-/status", REQUEST_TIMEOUT)
            .unwrap_or_else(|e| panic!("GET /-/status: {e}; log:\n{}", self.log()));
        assert_eq!(response.status, 200, "GET /-/status: {}", response.body);
        response.body
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

    /// One sample of `/metrics`, or `None` while the admin listener does not answer (a worker
    /// being replaced) or has no such sample: for polling.
    pub fn try_metric(&self, sample: &str) -> Option<f64> {
        let response = loadgen::get_blocking(self.admin?, "/metrics", REQUEST_TIMEOUT).ok()?;
        (response.status == 200)
            .then(|| metric_value(&response.body, sample))
            .flatten()
    }

    /// `GET path` on the public listener, on a new connection; panics if it fails.
    pub fn get(&self, path: &str) -> loadgen::Response {
        self.try_get(path)
            .unwrap_or_else(|e| panic!("GET {path}: {e}; log:\n{}", self.log()))
    }

    /// Over TLS when the server speaks it (see `tls.rs`).
    pub fn try_get(&self, path: &str) -> Result<loadgen::Response, loadgen::Failure> {
        self.probe(self.http, path)
    }

    /// Sends `GET path` on a new connection and waits until process `pid` holds it: accepted,
    /// so a drain or an upgrade that begins now must answer it.
    pub fn in_flight(&self, pid: u32, path: &str) -> InFlight {
        let request = InFlight::start(self.http, path);
        wait_until(DEADLINE, &format!("pid {pid} to accept GET {path}"), || {
            holds_connection(pid, request.client)
        });
        request
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
            alive(pid, ticks),
            "pid {pid} is not running any more; not signalling it"
        );
        kill(Pid::from_raw(raw(pid)), signal).expect("send the signal");
    }

    /// Sends SIGTERM to `pid` twice, the second once the log has `taken` (signals of one kind
    /// sent together may arrive as one), then waits for the process the harness started to
    /// exit; returns its status and when the second signal went out.
    pub fn sigterm_twice(&self, pid: u32, taken: &str) -> (WaitStatus, Instant) {
        self.signal_pid(pid, Signal::SIGTERM);
        self.wait_while_up(
            &format!("the first SIGTERM to be taken ({taken:?})"),
            || self.log().contains(taken).then_some(()),
        );
        let second = Instant::now();
        self.signal_pid(pid, Signal::SIGTERM);
        (self.wait_exit(DEADLINE), second)
    }

    /// Whether `pid` has exited altogether (see [`has_exited`]). Reaps it if it is ours to reap.
    pub fn gone(&self, pid: u32) -> bool {
        let gone = has_exited(pid);
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
        if let Some(&ticks) = known.pids.get(&pid)
            && let Some(status) = try_reap(pid, ticks)
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

    /// After the server has exited: nothing it started may still run (killed processes may
    /// take a moment to be gone).
    pub fn assert_nothing_left(&self) {
        let mut left = Vec::new();
        let none = eventually(DEADLINE, || {
            left = self.processes_here();
            left.is_empty()
        });
        assert!(
            none,
            "processes still run in {} after the server exited: {left:?}",
            self.root().display()
        );
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
        // Every known process still running as itself, and everything running here.
        let known = lock(&self.known).pids.clone();
        let mut victims: Vec<u32> = known
            .into_iter()
            .filter(|&(pid, ticks)| alive(pid, ticks))
            .map(|(pid, _)| pid)
            .collect();
        victims.extend(self.processes_here());
        let child = lock(&self.known).child.take();
        kill_and_reap(victims, child);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Server {
    /// Waits until the pid file names a process other than `old` and returns it. Looks every
    /// millisecond, not every [`POLL`]: the new generation writes the pid file just before it
    /// says ready, and the fault tests time a kill from that moment.
    pub fn wait_pid_file_change(&self, old: u32) -> u32 {
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(pid) = self.read_pid_file().filter(|&pid| pid != old) {
                return pid;
            }
            assert!(
                Instant::now() < end,
                "timed out after {DEADLINE:?} waiting for the pid file to name a new generation; \
                 log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
