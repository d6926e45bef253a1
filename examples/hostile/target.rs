//! The server under attack: a release `baton serve` in a temporary deployment directory, with
//! its fd limit set low (so a flood can reach it on a laptop or in CI), and what `/proc` says
//! about it while it is attacked.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton::lifecycle::{ServerRecord, proc_stat};
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

const START_LIMIT: Duration = Duration::from_secs(20);
const CLI_LIMIT: Duration = Duration::from_secs(60);

/// `[limits]` for `--short`: the same bounds, seconds instead of a minute, so each attack sees
/// its bound fire within a short run. The full run uses the built-in defaults.
const SHORT_LIMITS: &str = "\
[limits]
header_read_timeout = \"2s\"
idle_timeout = \"3s\"
send_timeout = \"3s\"
";

/// The deployment under attack.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) dir: PathBuf,
    pub(crate) baton: PathBuf,
    pub(crate) http: SocketAddr,
    pub(crate) admin: SocketAddr,
    child: Option<Child>,
    /// Every pid seen serving, to stop them all at the end.
    pids: Vec<(u32, u64)>,
}

impl Target {
    /// Starts `baton serve` in `dir` with the default configuration (loopback, ports from the
    /// kernel), `[limits]` shortened when `short`, and `fds` as its open-files limit.
    #[allow(
        unsafe_code,
        reason = "pre_exec sets the server's fd limit, as a shell's `ulimit -n` would"
    )]
    pub(crate) fn start(baton: &Path, dir: &Path, short: bool, fds: u64) -> Result<Target, String> {
        std::fs::create_dir_all(dir.join("config")).map_err(|e| e.to_string())?;
        let mut config = String::from(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [lifecycle]\npid_file = \"run/baton.pid\"\n",
        );
        if short {
            config.push('\n');
            config.push_str(SHORT_LIMITS);
        }
        std::fs::write(dir.join("config/default.toml"), config).map_err(|e| e.to_string())?;
        let mut command = crate::serve::serve_command(baton, dir).map_err(|e| e.to_string())?;
        // SAFETY: setrlimit is async-signal-safe and changes only the new process.
        unsafe {
            command.pre_exec(move || {
                setrlimit(Resource::RLIMIT_NOFILE, fds, fds).map_err(std::io::Error::from)
            });
        }
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", baton.display()))?;
        let mut target = Target {
            dir: dir.to_owned(),
            baton: baton.to_owned(),
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            child: Some(child),
            pids: Vec::new(),
        };
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Some(record) = target.record()
                && let (Some(http), Some(admin)) =
                    (record.listener("http"), record.listener("admin"))
                && loadgen::get_blocking(http, "/healthz", Duration::from_secs(2))
                    .is_ok_and(|r| r.status == 200)
            {
                target.http = http;
                target.admin = admin;
                return Ok(target);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "baton did not start within {START_LIMIT:?}; see {}",
                    dir.join("baton.log").display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The state file's record of the serving process, remembered for the final stop.
    pub(crate) fn record(&mut self) -> Option<ServerRecord> {
        let text = std::fs::read_to_string(self.dir.join("run/baton.state.json")).ok()?;
        let record: ServerRecord = serde_json::from_str(&text).ok()?;
        if !self.pids.iter().any(|(pid, _)| *pid == record.pid) {
            self.pids.push((record.pid, record.start_ticks));
        }
        Some(record)
    }

    /// The serving process's pid, from the pid file.
    pub(crate) fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("run/baton.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub(crate) fn log_path(&self) -> PathBuf {
        self.dir.join("baton.log")
    }

    /// Lines in the log so far.
    pub(crate) fn log_lines(&self) -> usize {
        std::fs::read(self.log_path())
            .map(|bytes| bytes.iter().filter(|&&b| b == b'\n').count())
            .unwrap_or(0)
    }

    /// `baton ARGS` in the deployment directory: exit code 0, or what it said.
    pub(crate) fn cli(&self, args: &[&str]) -> Result<String, String> {
        let mut child = Command::new(&self.baton)
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + CLI_LIMIT;
        while child.try_wait().map_err(|e| e.to_string())?.is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("baton {} took over {CLI_LIMIT:?}", args.join(" ")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let output = child.wait_with_output().map_err(|e| e.to_string())?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
        .trim()
        .to_owned();
        if output.status.success() {
            Ok(said)
        } else {
            Err(said)
        }
    }

    /// Whether a process of this deployment died without being asked to.
    pub(crate) fn crashed(&mut self) -> Option<String> {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            self.child = None;
            // A first generation that handed over exits 0; anything else is a crash.
            if !status.success() {
                return Some(format!("the first generation exited: {status}"));
            }
        }
        let Some(pid) = self.pid() else {
            return Some(format!(
                "no pid file in {} (the server removed it, or the directory was removed)",
                self.dir.display()
            ));
        };
        match proc_stat(pid) {
            Some(stat) if !stat.zombie => None,
            _ => Some(format!("the serving process (pid {pid}) is gone")),
        }
    }

    /// Stops every process of the deployment: `baton stop`, then SIGKILL to what is left.
    pub(crate) fn stop(&mut self) {
        let _ = self.cli(&["stop"]);
        for &(pid, ticks) in &self.pids {
            if proc_stat(pid).is_some_and(|s| s.start_ticks == ticks && !s.zombie)
                && let Ok(raw) = i32::try_from(pid)
            {
                let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for _ in 0..100 {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One look at the serving process.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sample {
    pub(crate) rss_kib: u64,
    pub(crate) fds: usize,
    /// CPU time used so far, in clock ticks.
    pub(crate) cpu_ticks: u64,
}

impl Sample {
    /// `/proc/<pid>`: resident memory, open fds, CPU time.
    pub(crate) fn of(pid: u32) -> Option<Sample> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
        // utime and stime: fields 14 and 15 of stat, 11 and 12 after the command name.
        let cpu_ticks =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(Sample {
            rss_kib,
            fds,
            cpu_ticks,
        })
    }
}

/// Clock ticks per second, for CPU shares (`getconf CLK_TCK`; 100 on Linux).
pub(crate) const TICKS_PER_SECOND: f64 = 100.0;

/// Raises this process's soft open-files limit to the hard one, as the server does; returns it.
pub(crate) fn raise_own_fd_limit() -> u64 {
    use nix::sys::resource::getrlimit;
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    }
}
