//! Binary upgrade of the real binary (issue 3): `bin/baton serve` in a temporary deployment
//! directory, upgraded under load by `baton upgrade`, `scripts/restart.sh` and raw SIGUSR2,
//! with good and broken "builds" installed at `bin/baton`. The harness is in `support/`.

mod support;

use std::collections::{BTreeMap, VecDeque};
use std::hash::{DefaultHasher, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton::lifecycle::Predecessor;
use command_fds::{CommandFdExt, FdMapping};
use loadgen::Mode;
use nix::sys::signal::Signal;
use support::{
    BATON, Config, DEADLINE, Fds, InFlight, Server, children_of, eventually, exited, free_port,
    parse_upgraded, start_load, stop_load, wait_for, wait_until, zombie_children,
};

/// The generation the pid file names, once it serves `GET /` (right after `baton upgrade`
/// returns, the old generation may still take a connection or two before it stops accepting).
fn wait_generation(server: &Server, pid: u32, generation: u64) {
    wait_until(
        DEADLINE,
        &format!("GET / to show pid {pid}, generation {generation}"),
        || {
            let hello = server.hello();
            (hello.pid, hello.generation) == (pid, generation)
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Upgrades under load
// ---------------------------------------------------------------------------------------------

/// Ten `baton upgrade`s in a row under `mode` load, each with an 8 s request in flight on the
/// generation it replaces. The request must outlast the upgrade, or it would end before the
/// drain and prove nothing: with 2 s, upgrades that took 2.5 s on a loaded machine (the CLI's
/// pre-check included) made it fail. The next upgrade does not wait for it: two replaced
/// generations drain at once, as on a service upgraded more often than its longest request
/// lasts, and as many as `upgrade.max_draining` (2 by default) lets drain in full.
async fn ten_upgrades_under_load(mode: Mode) {
    const DRAINING_AT_MOST: usize = 2;
    // `baton upgrade` waits through the probation, which is not what this test is about.
    let server = Server::start(&Config {
        probation: "300ms".into(),
        ..Config::default()
    });
    let load = start_load(server.http, mode, 16);
    let version = server.hello().version;
    let mut draining = VecDeque::new();
    for generation in 1..=10 {
        let old = server.current_pid();
        let slow = server.in_flight(old, "/api/slow?ms=8000");

        let out = server.run_cli(&["upgrade"]);
        assert_eq!(out.code, Some(0), "upgrade {generation}:\n{out}");
        let (from, new) = parse_upgraded(&out.stdout).expect("upgraded <old> -> <new>");
        assert_eq!(from, old, "{out}");
        assert_ne!(new, old, "{out}");
        assert_eq!(
            out.stdout.trim(),
            format!("upgraded {old} -> {new} ({version})")
        );
        assert_eq!(server.current_pid(), new);
        wait_generation(&server, new, generation + 1);

        draining.push_back((old, slow));
        if draining.len() == DRAINING_AT_MOST
            && let Some((old, slow)) = draining.pop_front()
        {
            drained(&server, old, slow);
        }
    }
    for (old, slow) in draining {
        drained(&server, old, slow);
    }
    let report = stop_load(load).await;
    assert_eq!(report.failed(), 0, "{report}");
    let current = server.current_pid();
    assert_eq!(
        server.processes_here(),
        [current],
        "no process is left behind"
    );
}

/// The replaced generation `old` answered its slow request in full, during its drain, and
/// exited 0.
fn drained(server: &Server, old: u32, slow: InFlight) {
    let (response, took) = slow.finish();
    let response = response.expect("the slow request survives the upgrade");
    assert_eq!(response.status, 200, "{response:?}");
    assert!(took >= Duration::from_millis(7900), "{took:?}");
    assert!(response.closes(), "served during the drain: {response:?}");
    server.wait_gone(old);
    assert_eq!(
        server.exit_status(old),
        Some(exited(old, 0)),
        "a replaced generation exits 0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_upgrades_under_keep_alive_load_lose_no_request() {
    ten_upgrades_under_load(Mode::KeepAlive).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_upgrades_under_connection_close_load_lose_no_request() {
    ten_upgrades_under_load(Mode::Close).await;
}

// ---------------------------------------------------------------------------------------------
// Failed upgrades change nothing
// ---------------------------------------------------------------------------------------------

/// A broken build or deployment, and what each way of upgrading must say about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Broken {
    /// `bin/baton` exits 1.
    ExitsOne,
    /// `bin/baton` gets the sockets and crashes (SIGSEGV).
    Crashes,
    /// `bin/baton` never says ready (upgrade.ready_timeout is 1 s).
    Hangs,
    /// No `bin/baton`.
    Missing,
    /// `bin/baton` without the execute bit.
    NotExecutable,
    /// `config/default.toml` has a syntax error.
    InvalidConfig,
    /// `server.listen` moved to a port another process listens on.
    PortTaken,
}

/// What a broken case holds until it is repaired.
struct Breakage {
    _taken: Option<std::net::TcpListener>,
}

impl Broken {
    fn config(self) -> Config {
        Config {
            ready_timeout: if self == Broken::Hangs { "1s" } else { "10s" }.into(),
            ..Config::default()
        }
    }

    fn apply(self, server: &Server) -> Breakage {
        let mut taken = None;
        match self {
            Broken::ExitsOne => server.install_script("exit 1"),
            Broken::Crashes => server.install_script("kill -SEGV $$"),
            Broken::Hangs => server.install_script("exec sleep 600"),
            Broken::Missing => server.remove_binary(),
            Broken::NotExecutable => server.install_file(
                &std::fs::read_to_string(support::script("reload.sh")).expect("a text file"),
                0o644,
            ),
            Broken::InvalidConfig => {
                let toml = self.config().toml().replacen("[app]", "[app\n", 1);
                server.write_config(&toml);
            }
            Broken::PortTaken => {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("hold a listener");
                let addr = listener.local_addr().expect("its address");
                let config = Config {
                    http: addr.to_string(),
                    ..self.config()
                };
                server.write_config(&config.toml());
                taken = Some(listener);
            }
        }
        Breakage { _taken: taken }
    }

    fn repair(self, server: &Server, breakage: Breakage) {
        drop(breakage);
        server.install_good_binary();
        server.write_config(&self.config().toml());
    }

    /// The line number of the syntax error `apply` makes.
    fn broken_line(self) -> usize {
        self.config()
            .toml()
            .lines()
            .position(|l| l == "[app]")
            .expect("an [app] line")
            + 1
    }

    /// What the server records (raw SIGUSR2: no client-side check).
    fn server_reason(self) -> String {
        match self {
            Broken::ExitsOne => "exited before it was ready (exit status 1)".into(),
            Broken::Crashes => "exited before it was ready (killed by SIGSEGV)".into(),
            Broken::Hangs => "was not ready within 1s (upgrade.ready_timeout)".into(),
            Broken::Missing => "does not exist".into(),
            Broken::NotExecutable => "is not executable".into(),
            Broken::InvalidConfig => format!("TOML syntax error at line {}", self.broken_line()),
            Broken::PortTaken => "the address is already in use".into(),
        }
    }

    /// What `baton upgrade` says (its pre-check runs `bin/baton check` first).
    fn cli_reason(self) -> String {
        match self {
            Broken::ExitsOne => "check` failed (exit status 1) without a message".into(),
            Broken::Crashes => "check` failed (killed by SIGSEGV) without a message".into(),
            Broken::Hangs => "check` did not finish within".into(),
            // Found before anything runs, or by `check` with the same words as the server.
            Broken::Missing | Broken::NotExecutable | Broken::InvalidConfig | Broken::PortTaken => {
                self.server_reason()
            }
        }
    }

    /// Whether `bin/baton` itself is broken (then `restart.sh` runs the broken file for
    /// `status`, as a user's script would, rather than reaching `baton upgrade`).
    fn breaks_the_binary(self) -> bool {
        !matches!(self, Broken::InvalidConfig | Broken::PortTaken)
    }
}

/// The last upgrade outcome `/-/status` reports, with its sequence number (0: none yet).
fn last_upgrade(server: &Server) -> (u64, serde_json::Value) {
    let status = server.status();
    let seq = status["last_upgrade"]["seq"].as_u64().unwrap_or(0);
    (seq, status["last_upgrade"].clone())
}

const FAILED_UPGRADES: &str = "baton_upgrades_total{result=\"failed\"}";

/// A broken upgrade, tried as a user would (`scripts/restart.sh`), with `baton upgrade`, and
/// with a raw SIGUSR2, under load: each fails and says why, the old process serves on with
/// nothing changed, and the next upgrade with a good build succeeds.
async fn failed_upgrade_changes_nothing(case: Broken, via_cli: bool) {
    let server = Server::start(&case.config());
    let pid = server.first_pid();
    let load = start_load(server.http, Mode::KeepAlive, 8);
    let fds_before = Fds::of(pid).expect("the server's fds").profile();
    let breakage = case.apply(&server);

    if via_cli {
        // `baton upgrade --binary bin/baton` run by the good build: its pre-check runs
        // `bin/baton check`, the bad one, for 30 s at most, and no longer than `--timeout`.
        let out = server.run_baton_within(
            &["upgrade", "--binary", "bin/baton", "--timeout", "8s"],
            Duration::from_secs(25),
        );
        eprintln!("{case:?}: baton upgrade:\n{out}");
        assert_eq!(out.code, Some(1), "{case:?}: baton upgrade:\n{out}");
        assert!(
            out.stderr.contains(&case.cli_reason()),
            "{case:?}: baton upgrade:\n{out}"
        );

        // As a user would after installing the build: restart.sh runs `bin/baton` itself.
        let out = server.run_script_within("restart.sh", &[], Duration::from_secs(25));
        eprintln!("{case:?}: restart.sh:\n{out}");
        assert!(
            matches!(out.code, Some(code) if code != 0),
            "{case:?}: restart.sh:\n{out}"
        );
        assert!(
            !out.stderr.trim().is_empty(),
            "{case:?}: restart.sh says why:\n{out}"
        );
        if !case.breaks_the_binary() {
            assert!(
                out.stderr.contains(&case.cli_reason()),
                "{case:?}: restart.sh:\n{out}"
            );
        }
        assert_eq!(
            server.processes_here(),
            [pid],
            "{case:?}: nothing else runs"
        );
    }

    // The server's own handling, without any client-side check.
    let (seq, _) = last_upgrade(&server);
    let failed = server.metric(FAILED_UPGRADES);
    server.signal_pid(pid, Signal::SIGUSR2);
    let record = wait_for(DEADLINE, "the failed upgrade to be recorded", || {
        let (now, record) = last_upgrade(&server);
        (now > seq).then_some(record)
    });
    assert_eq!(record["ok"], false, "{case:?}: {record}");
    let error = record["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&case.server_reason()),
        "{case:?}: expected {:?} in {record}",
        case.server_reason()
    );
    assert_eq!(server.metric(FAILED_UPGRADES), failed + 1.0);
    // The state file (what `baton upgrade` reads) follows a moment after the status.
    wait_until(DEADLINE, "the state file to have the outcome", || {
        server
            .record()
            .and_then(|r| r.upgrades.last_upgrade)
            .is_some_and(|u| u.seq > seq && !u.ok)
    });

    // Nothing changed: same process, still the pid file's, no child left, same fds.
    wait_until(DEADLINE, "the failed child to be reaped", || {
        children_of(pid).is_empty()
    });
    assert!(zombie_children(pid).is_empty());
    assert_eq!(server.current_pid(), pid);
    let hello = server.hello();
    assert_eq!((hello.pid, hello.generation), (pid, 1));
    assert_eq!(server.status()["phase"], "serving");
    let mut fds_now = None;
    let same = eventually(DEADLINE, || {
        fds_now = Fds::of(pid).map(|fds| fds.profile());
        fds_now.as_ref() == Some(&fds_before)
    });
    assert!(
        same,
        "{case:?}: a failed upgrade leaves no fd behind\nbefore: {fds_before:#?}\nnow: {fds_now:#?}"
    );

    case.repair(&server, breakage);
    let (old, new) = server.upgrade();
    assert_eq!(old, pid);
    wait_generation(&server, new, 2);
    server.wait_gone(old);
    let report = stop_load(load).await;
    assert_eq!(report.failed(), 0, "{case:?}: {report}");
}

/// One test per case, so that they run in parallel and a failure names its case.
macro_rules! failed_upgrade_tests {
    ($($(#[$doc:meta])* $name:ident: $case:expr, via_cli: $via_cli:expr;)*) => {$(
        $(#[$doc])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            failed_upgrade_changes_nothing($case, $via_cli).await;
        }
    )*};
}

failed_upgrade_tests! {
    failed_upgrade_binary_exits_1: Broken::ExitsOne, via_cli: true;
    failed_upgrade_binary_crashes_after_getting_the_sockets: Broken::Crashes, via_cli: true;
    failed_upgrade_binary_hangs_past_ready_timeout: Broken::Hangs, via_cli: false;
    /// The clients give up on a build that hangs: `baton upgrade` after its `--timeout` (8 s
    /// here), restart.sh after BATON_STATUS_TIMEOUT (10 s in the harness).
    failed_upgrade_binary_hangs_cli_and_restart_sh_give_up: Broken::Hangs, via_cli: true;
    failed_upgrade_binary_missing: Broken::Missing, via_cli: true;
    failed_upgrade_binary_not_executable: Broken::NotExecutable, via_cli: true;
    failed_upgrade_invalid_config_names_the_line: Broken::InvalidConfig, via_cli: true;
    failed_upgrade_new_port_taken: Broken::PortTaken, via_cli: true;
}

/// `/-/status` shows where the serving generation came from (issue 13's lineage): the
/// generation it replaced, how long the upgrade took to spawn it and to hear it was ready, and
/// that generation's drain, which the old process hands over once it has drained.
#[test]
fn status_shows_the_previous_generation_with_the_upgrade_times_and_its_drain() {
    let server = Server::start(&Config {
        probation: "300ms".into(),
        ..Config::default()
    });
    assert!(
        server.status()["previous"].is_null(),
        "a first generation has none"
    );
    let (old, new) = server.upgrade();
    server.wait_gone(old);
    let previous = wait_for(DEADLINE, "the lineage in /-/status", || {
        let previous = server.status()["previous"].clone();
        (!previous.is_null()).then_some(previous)
    });
    assert_eq!(server.status()["pid"], new);
    assert_eq!(previous["pid"], old, "{previous}");
    assert_eq!(previous["generation"], 1, "{previous}");
    let spawned = previous["spawned_ms"].as_f64().expect("spawned_ms");
    let ready = previous["ready_ms"].as_f64().expect("ready_ms");
    assert!(0.0 < spawned && spawned <= ready, "{previous}");
    assert!(
        ready < DEADLINE.as_secs_f64() * 1000.0,
        "ready within the test's deadline: {previous}"
    );
    let drain = &previous["drain"];
    assert!(drain["total_ms"].is_u64(), "{previous}");
    assert_eq!(drain["cut"], 0, "{previous}");
}

/// Issue 16: the new generation times its start, step by step from `main`'s first line, and
/// sends the steps with "ready". The old generation logs them with the upgrade and hands them
/// back in its lineage, so `/-/status` shows them, in order, under `previous.steps_ms`. They
/// are measured, not made up: they fall between the upgrade request and the parent hearing
/// "ready" (one monotonic clock), so their sum is at most `ready_ms`.
#[test]
fn status_shows_the_new_generations_start_step_by_step() {
    #[derive(Debug, serde::Deserialize)]
    struct Status {
        pid: u32,
        previous: Option<Predecessor>,
    }
    let server = Server::start(&Config {
        probation: "300ms".into(),
        ..Config::default()
    });
    let (old, new) = server.upgrade();
    server.wait_gone(old);
    let status = wait_for(DEADLINE, "the lineage in /-/status", || {
        let status: Status = serde_json::from_str(&server.status_text()).expect("/-/status");
        status.previous.is_some().then_some(status)
    });
    assert_eq!(status.pid, new);
    let previous = status.previous.expect("checked above");
    let steps = previous.steps_ms.clone().expect("steps_ms");
    let names: Vec<&str> = steps.iter().map(|(name, _)| name).collect();
    assert_eq!(
        names,
        [
            "handover",
            "config",
            "logging",
            "runtime",
            "setup",
            "database",
            "router",
            "self_check",
            "listen",
            "run_files",
            "ready"
        ],
        "{previous:?}"
    );
    let ready_ms = previous.ready_ms.expect("ready_ms");
    // To the microsecond both: rounding is all the slack needed.
    assert!(
        steps.total_ms() <= ready_ms + 0.002,
        "the steps ({} ms) fit in request to ready ({ready_ms} ms): {previous:?}",
        steps.total_ms()
    );
    assert!(!steps.total().is_zero(), "{previous:?}");
    let log = server.log();
    let logged = |needle: &str, who: &str| {
        log.lines()
            .find(|line| line.contains(needle) && line.contains(who))
            .unwrap_or_else(|| panic!("no {needle:?} line with {who}:\n{log}"))
            .to_owned()
    };
    // The old generation's upgrade line, and the new process's own, say the same.
    let quoted = format!("steps=\"{steps}\"");
    let handing_over = logged("handing over", &format!("successor={new}"));
    assert!(handing_over.contains(&quoted), "{handing_over}\n{quoted}");
    let serving = logged(": serving ", &format!("pid={new}"));
    assert!(serving.contains(&quoted), "{serving}\n{quoted}");
}

// ---------------------------------------------------------------------------------------------
// One upgrade at a time
// ---------------------------------------------------------------------------------------------

#[test]
fn a_burst_of_sigusr2_gives_exactly_one_upgrade() {
    let server = Server::start(&Config::default());
    let pid = server.first_pid();
    for _ in 0..5 {
        server.signal_pid(pid, Signal::SIGUSR2);
    }
    let new = wait_for(DEADLINE, "the pid file to name the next generation", || {
        server.read_pid_file().filter(|&p| p != pid)
    });
    server.wait_gone(pid);
    assert_eq!(server.exit_status(pid), Some(exited(pid, 0)));
    wait_generation(&server, new, 2);
    assert_eq!(server.processes_here(), [new]);
    let log = server.log();
    let started = log.matches("started the next generation").count();
    assert_eq!(started, 1, "one burst, one new process:\n{log}");
    assert_eq!(server.status()["generation"], 2);
}

#[test]
fn sigusr2_is_refused_while_draining_and_a_draining_parent_does_not_block_the_next_upgrade() {
    let server = Server::start(&Config::default());
    let old = server.first_pid();
    // The slow request keeps the old generation draining for 6 s, past its probation.
    let slow = server.in_flight(old, "/api/slow?ms=6000");
    let (_, new) = server.upgrade();
    wait_until(DEADLINE, "the old generation to begin its drain", || {
        server.log().contains("draining: stopped accepting")
    });
    assert!(!server.gone(old), "the old generation drains");

    server.signal_pid(old, Signal::SIGUSR2);
    wait_until(DEADLINE, "the draining process to refuse", || {
        server
            .log()
            .lines()
            .any(|l| l.contains("upgrade refused") && l.contains("this process is draining"))
    });
    // The new generation does not wait for its parent's long drain: it upgrades at once.
    let (from, newest) = server.upgrade();
    assert_eq!(from, new);
    assert!(
        !server.gone(old),
        "the first generation still drains its slow request meanwhile"
    );
    wait_generation(&server, newest, 3);

    let (response, _) = slow.finish();
    assert_eq!(response.expect("the slow request").status, 200);
    server.wait_gone(old);
    server.wait_gone(new);
    assert_eq!(
        server.processes_here(),
        [newest],
        "the refused signal started nothing"
    );
}

// ---------------------------------------------------------------------------------------------
// Resources
// ---------------------------------------------------------------------------------------------

/// The fds of `pid` once it holds no connection.
fn idle_fds(pid: u32) -> Fds {
    wait_for(DEADLINE, "the server to be idle", || {
        Fds::of(pid).filter(|fds| fds.connections().is_empty())
    })
}

#[test]
fn twenty_upgrades_leak_no_file_descriptor() {
    // Each replaced generation stands by through its successor's probation: a short one.
    let server = Server::start(&Config {
        probation: "300ms".into(),
        ..Config::default()
    });
    let fresh = idle_fds(server.first_pid());
    for _ in 0..20 {
        let (old, _) = server.upgrade();
        server.wait_gone(old);
    }
    let pid = server.current_pid();
    assert_eq!(server.status()["generation"], 21);
    let now = idle_fds(pid);

    // The SQLite files are open once per pooled connection, and how many connections an idle
    // pool keeps depends on how many reads ever overlapped (a loaded machine makes more): those
    // are bounded by the pool, not compared.
    let data = server.root().join("data").join("baton.db");
    let (now_profile, now_db) = split_database_fds(&now, &data);
    let (fresh_profile, fresh_db) = split_database_fds(&fresh, &data);
    assert_eq!(
        now_profile, fresh_profile,
        "generation 21 has what a fresh server has open"
    );
    assert_eq!(
        now.count() - now_db,
        fresh.count() - fresh_db,
        "{now:#?}\nfresh: {fresh:#?}"
    );
    // Per connection, the database and its log; the read pool and SQLite's one writer at most;
    // and the one `-shm` map of the process.
    let most = 2 * (Config::default().database_pool_size as usize + 1) + 1;
    assert!(
        (1..=most).contains(&now_db) && (1..=most).contains(&fresh_db),
        "SQLite fds beyond the pool: {now_db} now, {fresh_db} fresh; {now:#?}"
    );
    let mut listeners = vec![server.http, server.admin.expect("admin on")];
    listeners.sort_unstable();
    assert_eq!(
        now.listening(),
        listeners,
        "exactly the two listening sockets"
    );
    // The runtime needs no pipe (tokio wakes itself with an eventfd, the signal handler uses a
    // Unix socket pair), and the harness starts the server with none: a pipe here was leaked
    // by an upgrade (a readiness pipe, say).
    assert_eq!(now.pipes(), 0, "{now:#?}");
    assert_eq!(server.processes_here(), [pid]);
}

/// The fd profile without the SQLite database's own files (`baton.db`, `-wal`, and the `-shm`
/// map, which a process opens only once one of its connections has read in WAL mode, so a
/// fresh server may not have it yet), and how many fds those were.
fn split_database_fds(fds: &Fds, database: &Path) -> (BTreeMap<String, usize>, usize) {
    let pooled = [
        format!("file {}", database.display()),
        format!("file {}-wal", database.display()),
        format!("file {}-shm", database.display()),
    ];
    let mut profile = fds.profile();
    let count = pooled.iter().filter_map(|key| profile.remove(key)).sum();
    (profile, count)
}

/// What `/proc/<pid>/fd/<fd>` points at, e.g. `pipe:[123]`.
fn fd_target(pid: u32, fd: i32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .ok()
        .map(|t| t.to_string_lossy().into_owned())
}

/// Protocol step 2: only the listening sockets (and the readiness pipe) cross an upgrade. A fd
/// the first generation was started with, without close-on-exec (as `baton serve 20>file` or a
/// supervisor's pipe would give), must not be handed on to every later generation: a pipe's
/// reader would never see end of file, a lock file would never be released.
#[test]
fn no_fd_but_the_listening_sockets_crosses_an_upgrade() {
    let mut server = Server::prepare(&Config::default());
    let (mut reader, writer) = std::io::pipe().expect("a pipe");
    let writer = std::os::fd::OwnedFd::from(writer);
    let pipe = fd_target(std::process::id(), std::os::fd::AsRawFd::as_raw_fd(&writer))
        .expect("our end of the pipe");
    server.spawn_with(|command| {
        command
            .fd_mappings(vec![FdMapping {
                parent_fd: writer,
                child_fd: 20,
            }])
            .expect("map the pipe to fd 20");
    });
    let first = server.first_pid();
    assert_eq!(
        fd_target(first, 20),
        Some(pipe.clone()),
        "generation 1 has it"
    );

    let (old, new) = server.upgrade();
    let fds = Fds::of(new).expect("the new generation's fds");
    let crossed: Vec<i32> = fds
        .entries
        .keys()
        .copied()
        .filter(|&fd| fd_target(new, fd).as_deref() == Some(pipe.as_str()))
        .collect();
    assert!(
        crossed.is_empty(),
        "generation 2 holds generation 1's inherited {pipe} at fd {crossed:?}: fds that are not \
         part of the handover must stay close-on-exec"
    );
    server.wait_gone(old);
    // With generation 1 gone nobody holds the write end: the reader sees end of file.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        let _ = tx.send(reader.read(&mut byte).map_err(|e| e.to_string()));
    });
    assert_eq!(
        rx.recv_timeout(DEADLINE).ok(),
        Some(Ok(0)),
        "the pipe generation 1 was started with is closed once it is gone"
    );
}

// ---------------------------------------------------------------------------------------------
// Handover edge cases
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_generation_serves_on_when_the_old_one_is_killed_during_its_drain() {
    let server = Server::start(&Config::default());
    let old = server.first_pid();
    let load = start_load(server.http, Mode::KeepAlive, 8);
    let slow = server.in_flight(old, "/api/slow?ms=20000");
    let (_, new) = server.upgrade();
    // The load has moved once the old process holds nothing but the slow request.
    wait_until(DEADLINE, "the load to leave the old generation", || {
        Fds::of(old).is_some_and(|fds| fds.connections() == [slow.client])
    });

    server.signal_pid(old, Signal::SIGKILL);
    server.wait_gone(old);
    let ok = load.snapshot().ok;
    wait_until(DEADLINE, "the load to go on", || {
        load.snapshot().ok >= ok + 500
    });
    let report = stop_load(load).await;
    assert_eq!(report.failed(), 0, "{report}");
    wait_generation(&server, new, 2);
    let (response, _) = slow.finish();
    assert!(response.is_err(), "the killed process's request was cut");
    // No longer held back by a draining parent: the next upgrade goes through.
    let (_, newest) = server.upgrade();
    wait_generation(&server, newest, 3);
}

#[test]
fn an_upgrade_to_a_new_listen_address_moves_the_service() {
    let mut config = Config::default();
    let server = Server::start(&config);
    let old_addr = server.http;
    let new_addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("an address");
    config.http = new_addr.to_string();
    server.write_config(&config.toml());

    let (old, new) = server.upgrade();
    let record = server.record().expect("the state file");
    assert_eq!(record.pid, new);
    assert_eq!(record.listener("http"), Some(new_addr));
    let hello = loadgen::get_blocking(new_addr, "/", support::REQUEST_TIMEOUT)
        .expect("the new address answers");
    assert_eq!(support::Hello::parse(&hello.body).generation, 2);

    server.wait_gone(old);
    let refused = std::net::TcpStream::connect(old_addr);
    assert!(
        refused.is_err(),
        "the old address {old_addr} is closed once the old process is gone"
    );
    // The admin listener was inherited; the http one was bound anew.
    let inherited: Vec<(String, bool)> = record
        .listeners
        .iter()
        .map(|l| (l.name.clone(), l.inherited))
        .collect();
    assert_eq!(
        inherited,
        [("http".to_owned(), false), ("admin".to_owned(), true)]
    );
}

// ---------------------------------------------------------------------------------------------
// scripts/restart.sh, as a user runs it
// ---------------------------------------------------------------------------------------------

/// A digest of a file's contents.
fn digest(path: &Path) -> (u64, u64) {
    let mut file =
        std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut hasher = DefaultHasher::new();
    let mut chunk = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut chunk).expect("read");
        if n == 0 {
            break;
        }
        hasher.write(&chunk[..n]);
        len += n as u64;
    }
    (len, hasher.finish())
}

/// The executable `pid` runs (`/proc/<pid>/exe`).
fn exe(pid: u32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).expect("/proc/<pid>/exe")
}

#[test]
fn restart_sh_starts_upgrades_installs_and_rolls_back() {
    let mut server = Server::prepare(&Config::default());
    let root = std::fs::canonicalize(server.root()).expect("canonical root");
    let real = std::fs::canonicalize(BATON).expect("the binary under test");
    // bin/baton as a real file (a copy), so that /proc/<pid>/exe tells which build runs.
    let copy = server.root().join("bin/.baton.copy");
    std::fs::copy(&real, &copy).expect("copy the binary");
    std::fs::rename(&copy, server.bin()).expect("install the copy");
    let first_build = digest(&server.bin());

    // Not running: starts it.
    let out = server.run_script("restart.sh", &[]);
    assert_eq!(out.code, Some(0), "{out}");
    let started: u32 = out
        .stdout
        .trim()
        .strip_prefix("started ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("expected \"started <pid>\":\n{out}"));
    assert_eq!(server.attach(), started);
    assert_eq!(exe(started), root.join("bin/baton"));
    assert_eq!(server.hello().generation, 1);

    // Running: upgrades it.
    let out = server.run_script("restart.sh", &[]);
    assert_eq!(out.code, Some(0), "{out}");
    let (old, second) = parse_upgraded(&out.stdout).expect("upgraded <old> -> <new>");
    assert_eq!(old, started);
    wait_generation(&server, second, 2);
    server.wait_gone(old);

    // restart.sh PATH installs another build (the previous one kept as .prev), then upgrades.
    let builds = server.root().join("builds");
    std::fs::create_dir(&builds).expect("mkdir builds");
    let wrapper = builds.join("baton");
    // `exec -a` keeps argv[0], so the server still re-executes bin/baton at the next upgrade.
    let wrapper_text = format!(
        "#!/usr/bin/env bash\n# another build of baton\nexec -a \"$0\" {} \"$@\"\n",
        real.display()
    );
    std::fs::write(&wrapper, &wrapper_text).expect("write the wrapper");
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod the wrapper");
    let out = server.run_script("restart.sh", &[wrapper.to_str().expect("utf-8 path")]);
    assert_eq!(out.code, Some(0), "{out}");
    let (old, third) = parse_upgraded(&out.stdout).expect("upgraded <old> -> <new>");
    assert_eq!(old, second);
    wait_generation(&server, third, 3);
    assert_eq!(
        std::fs::read_to_string(server.bin()).expect("bin/baton"),
        wrapper_text
    );
    assert_eq!(digest(&server.root().join("bin/baton.prev")), first_build);
    assert_eq!(exe(third), real, "the wrapper runs now");
    assert_eq!(
        server.record().expect("the state file").program,
        server.bin(),
        "the next upgrade starts bin/baton again"
    );
    server.wait_gone(old);

    // --rollback puts the previous build back, then upgrades to it.
    let out = server.run_script("restart.sh", &["--rollback"]);
    assert_eq!(out.code, Some(0), "{out}");
    let (old, fourth) = parse_upgraded(&out.stdout).expect("upgraded <old> -> <new>");
    assert_eq!(old, third);
    wait_generation(&server, fourth, 4);
    assert_eq!(digest(&server.bin()), first_build);
    assert_eq!(
        std::fs::read_to_string(server.root().join("bin/baton.prev")).expect(".prev"),
        wrapper_text
    );
    assert_eq!(
        exe(fourth),
        root.join("bin/baton"),
        "the first build runs again"
    );
    server.wait_gone(old);

    // A broken build installed by path: restart.sh fails, and puts the good one back.
    let broken = builds.join("broken");
    std::fs::write(&broken, "#!/bin/sh\nexit 1\n").expect("write the broken build");
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod the broken build");
    let out = server.run_script("restart.sh", &[broken.to_str().expect("utf-8 path")]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("upgrade failed"), "{out}");
    assert_eq!(digest(&server.bin()), first_build, "the good build is back");
    assert_eq!(
        std::fs::read_to_string(server.root().join("bin/baton.prev")).expect(".prev"),
        wrapper_text,
        ".prev is untouched"
    );
    assert_eq!(server.current_pid(), fourth);
    assert_eq!(server.hello().generation, 4);
    assert_eq!(server.processes_here(), [fourth]);
}
