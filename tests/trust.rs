//! Trust nothing a file says (issue 8): run files forged by anyone, or writable by anyone but
//! the server's user, never make a client command signal a stranger or run a program, and the
//! server never follows a planted symlink nor lets the umask decide who may write its run files.
//! Real binary, real files, real processes; the harness is in `common/mod.rs`.

mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use baton::lifecycle::proc_stat;
use serde_json::Value;
use support::{BATON, CLI_DEADLINE, CliOutput, Config, KillOnDrop, Server, run, script};

/// What every refusal of a process says.
const NOT_BATON: &str = "is not the baton server of this deployment";

/// A `sleep` that forged run files name: it would die of SIGTERM, SIGUSR1 or SIGUSR2, so it
/// is still alive only if no client signalled it. `uid`: run it as that user (root only).
fn stranger(server: &Server, uid: Option<u32>) -> KillOnDrop {
    let mut command = Command::new("sleep");
    command
        .arg("600")
        .current_dir(server.root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(uid) = uid {
        command.uid(uid).gid(uid);
    }
    KillOnDrop(command.spawn().expect("start sleep"))
}

fn assert_alive(stranger: &mut KillOnDrop, after: &str) {
    let status = stranger.0.try_wait().expect("poll the sleep");
    assert!(
        status.is_none(),
        "the sleep named by forged run files was signalled by {after}: {status:?}"
    );
}

/// Writes `contents` at `path` the way baton writes run files (a new file, mode 0640, renamed
/// into place): only what the file says is forged, not who may write it.
fn forge(path: &Path, contents: &str) {
    let tmp = path.with_extension("forged.tmp");
    fs::write(&tmp, contents).expect("write the forged file");
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o640)).expect("chmod 640");
    fs::rename(&tmp, path).expect("rename the forged file into place");
}

/// The server's state file, edited: `pid` with its true start time, and `program`.
fn forged_state(original: &str, pid: u32, program: &Path) -> String {
    let mut record: Value = serde_json::from_str(original).expect("the state file is JSON");
    let stat = proc_stat(pid).expect("the named process runs");
    record["pid"] = pid.into();
    record["start_ticks"] = stat.start_ticks.into();
    record["program"] = program.to_str().expect("utf-8 path").into();
    serde_json::to_string_pretty(&record).expect("serialize")
}

/// A script that, if anything ever ran it, would leave `marker` behind.
fn booby_trap(dir: &Path, name: &str, marker: &Path) -> PathBuf {
    let path = dir.join(name);
    fs::write(
        &path,
        format!("#!/bin/sh\ntouch '{}'\nexit 0\n", marker.display()),
    )
    .expect("write the script");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod 755");
    path
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .mode()
        & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

fn refused(out: &CliOutput, command: &str, expected: &[&str]) {
    assert_eq!(out.code, Some(1), "baton {command} must refuse:\n{out}");
    for words in expected {
        assert!(
            out.stderr.contains(words),
            "baton {command}: expected {words:?} in its message:\n{out}"
        );
    }
}

fn is_root() -> bool {
    // /proc/self belongs to the effective user.
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

// ---------------------------------------------------------------------------------------------
// Forged run files name a stranger
// ---------------------------------------------------------------------------------------------

#[test]
fn a_forged_state_file_naming_a_live_sleep_is_refused_and_the_sleep_never_signalled() {
    let server = Server::start(&Config::default());
    let pid = server.first_pid();
    let state = fs::read_to_string(server.state_path()).expect("the state file");
    let marker = server.root().join("executed");
    let trap = booby_trap(server.root(), "evil.sh", &marker);

    // Direct mode: the pid file and the state file both name the sleep, with its start time.
    for command in ["status", "reload", "stop", "upgrade"] {
        let mut sleep = stranger(&server, None);
        let sleep_pid = sleep.0.id();
        forge(&server.pid_path(), &format!("{sleep_pid}\n"));
        forge(
            &server.state_path(),
            &forged_state(&state, sleep_pid, &trap),
        );
        let out = server.run_cli(&[command]);
        eprintln!("baton {command} (forged state file):\n{out}");
        refused(
            &out,
            command,
            &[NOT_BATON, "sleep", "nothing was signalled"],
        );
        assert_alive(&mut sleep, command);
        assert!(!marker.exists(), "baton {command} ran the forged program");
    }

    // Supervised mode: the pid file and the supervisor file name the sleep; the state file is
    // the real worker's, as the supervisor's would be.
    let supervisor = server.root().join("run/baton.supervisor.json");
    for command in ["status", "reload", "stop", "upgrade"] {
        let mut sleep = stranger(&server, None);
        let sleep_pid = sleep.0.id();
        let ticks = proc_stat(sleep_pid).expect("sleep runs").start_ticks;
        forge(&server.state_path(), &state);
        forge(
            &supervisor,
            &serde_json::json!({
                "pid": sleep_pid, "start_ticks": ticks, "worker_pid": pid, "generation": 1,
                "restarts": 0, "last_upgrade": null, "last_refusal": null,
                "ready_timeout_ms": 10000, "shutdown_timeout_ms": 10000,
            })
            .to_string(),
        );
        forge(&server.pid_path(), &format!("{sleep_pid}\n"));
        let out = server.run_cli(&[command]);
        eprintln!("baton {command} (forged supervisor file):\n{out}");
        refused(&out, command, &[NOT_BATON, "sleep"]);
        assert_alive(&mut sleep, command);
    }
    assert!(!marker.exists(), "a client ran the forged program");

    // The real files again: the same commands find the real server (the refusals above were
    // about the sleep, not blanket ones).
    fs::remove_file(&supervisor).expect("remove the forged supervisor file");
    forge(&server.state_path(), &state);
    forge(&server.pid_path(), &format!("{pid}\n"));
    let out = server.run_cli(&["status"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stdout.starts_with(&format!("running: pid {pid},")),
        "{out}"
    );
    assert_eq!(
        server.hello().pid,
        pid,
        "the real server was never signalled"
    );
}

#[test]
fn a_process_of_another_user_is_refused() {
    if !is_root() {
        eprintln!("skipped: only root can start a process of another user");
        return;
    }
    let server = Server::start(&Config::default());
    let state = fs::read_to_string(server.state_path()).expect("the state file");
    for command in ["status", "stop", "reload"] {
        // nobody (65534): a user that exists everywhere and owns nothing here.
        let mut sleep = stranger(&server, Some(65534));
        let sleep_pid = sleep.0.id();
        forge(&server.pid_path(), &format!("{sleep_pid}\n"));
        forge(
            &server.state_path(),
            &forged_state(&state, sleep_pid, &server.bin()),
        );
        let out = server.run_cli(&[command]);
        eprintln!("baton {command} (a process of uid 65534):\n{out}");
        refused(
            &out,
            command,
            &[
                NOT_BATON,
                "runs as uid 65534",
                "the run files belong to uid 0",
            ],
        );
        assert_alive(&mut sleep, command);
    }
}

#[test]
fn a_forged_program_is_never_executed() {
    let server = Server::start(&Config::default());
    let pid = server.first_pid();
    let state = fs::read_to_string(server.state_path()).expect("the state file");
    let marker = server.root().join("executed");
    let trap = booby_trap(server.root(), "evil.sh", &marker);
    // The real server's pid and start time, but another program (and working directory).
    let mut record: Value = serde_json::from_str(&forged_state(&state, pid, &trap)).expect("json");
    record["cwd"] = "/".into();
    forge(&server.state_path(), &record.to_string());

    let out = server.run_cli(&["upgrade"]);
    eprintln!("baton upgrade (forged program):\n{out}");
    refused(
        &out,
        "upgrade",
        &[
            &format!("will start {}", trap.display()),
            "--binary",
            "nothing was signalled",
        ],
    );
    assert!(
        !marker.exists(),
        "baton upgrade ran the program the state file names"
    );
    assert_eq!(server.current_pid(), pid);
    assert_eq!(server.hello().generation, 1, "no upgrade happened");
    assert!(
        server.status()["last_upgrade"].is_null(),
        "no SIGUSR2 arrived"
    );
}

// ---------------------------------------------------------------------------------------------
// baton upgrade checks the build that will run, named by the operator
// ---------------------------------------------------------------------------------------------

#[test]
fn upgrade_with_another_binary_than_the_server_starts_fails_before_signalling() {
    let server = Server::start(&Config::default());
    let pid = server.first_pid();
    let bin = fs::canonicalize(server.bin()).expect("bin/baton resolves");
    let other = server.root().join("other");
    fs::create_dir(&other).expect("mkdir other");
    let marker = server.root().join("checked");
    let wrong = booby_trap(&other, "baton", &marker);

    // --binary names another file than the one the server starts.
    let out = server.run_baton(&["upgrade", "--binary", "other/baton"]);
    eprintln!("baton upgrade --binary other/baton:\n{out}");
    refused(
        &out,
        "upgrade --binary",
        &[
            &format!("will start {}", server.bin().display()),
            &format!("{} (given by --binary)", wrong.display()),
            "nothing was signalled",
        ],
    );
    assert!(!marker.exists(), "the wrong binary was run");

    // Without --binary, the client's own executable is the build checked: a copy elsewhere is
    // not what the server starts.
    let copy = other.join("copy");
    fs::create_dir(&copy).expect("mkdir");
    let copy = copy.join("baton");
    fs::copy(BATON, &copy).expect("copy the binary");
    let mut command = server.command(&copy);
    command.arg("upgrade");
    let out = run(command, CLI_DEADLINE);
    eprintln!("{} upgrade:\n{out}", copy.display());
    refused(
        &out,
        "upgrade (a copy)",
        &[
            &format!("will start {}", server.bin().display()),
            &format!("{} (this command's own executable)", copy.display()),
            &format!("--binary {}", server.bin().display()),
        ],
    );

    assert_eq!(server.current_pid(), pid);
    assert_eq!(server.hello().generation, 1, "no upgrade happened");
    assert!(
        server.status()["last_upgrade"].is_null(),
        "no SIGUSR2 arrived"
    );

    // The right one, by a relative path: checked and upgraded.
    let out = server.run_baton(&["upgrade", "--binary", "bin/baton"]);
    assert_eq!(out.code, Some(0), "{out}");
    let (old, _) = support::parse_upgraded(&out.stdout).expect("upgraded <old> -> <new>");
    assert_eq!(old, pid);
    assert_eq!(
        fs::canonicalize(server.bin()).expect("bin/baton"),
        bin,
        "nothing was installed"
    );
}

// ---------------------------------------------------------------------------------------------
// Run files: who may write them
// ---------------------------------------------------------------------------------------------

#[test]
fn run_files_writable_by_others_are_refused_with_what_to_do() {
    let server = Server::start(&Config::default());
    let pid = server.first_pid();
    let state = server.state_path();
    let pid_file = server.pid_path();
    let run_dir = server.root().join("run");

    chmod(&state, 0o660);
    let out = server.run_cli(&["status"]);
    eprintln!("baton status (state file 0660):\n{out}");
    refused(
        &out,
        "status",
        &[
            "refusing run/baton.state.json",
            "writable by its group (mode 660)",
            "`chmod 640 run/baton.state.json`",
        ],
    );
    let out = server.run_cli(&["reload"]);
    refused(&out, "reload", &["writable by its group"]);
    assert!(
        server.status()["last_reload"].is_null(),
        "the server got no SIGUSR1"
    );
    chmod(&state, 0o640);

    chmod(&pid_file, 0o666);
    let out = server.run_cli(&["stop"]);
    eprintln!("baton stop (pid file 0666):\n{out}");
    refused(
        &out,
        "stop",
        &[
            "writable by its group and others (mode 666)",
            "`chmod 640 run/baton.pid`",
        ],
    );
    chmod(&pid_file, 0o640);

    // A directory anyone can write, as Kubernetes' emptyDir is: the command's own user's files
    // are trusted (nobody else can create a file of that user's), anyone else's are not.
    chmod(&run_dir, 0o777);
    let out = server.run_cli(&["status"]);
    assert_eq!(
        out.code,
        Some(0),
        "baton status (run/ 0777, own files):\n{out}"
    );
    if is_root() {
        std::os::unix::fs::chown(&pid_file, Some(65534), None).expect("chown the pid file");
        let out = server.run_cli(&["upgrade"]);
        eprintln!("baton upgrade (run/ 0777, pid file of another user):\n{out}");
        refused(
            &out,
            "upgrade",
            &[
                "its directory run is writable by its group and others (mode 777)",
                "as the server's user (uid 65534)",
                "`chmod 750 run`",
            ],
        );
        std::os::unix::fs::chown(&pid_file, Some(0), None).expect("chown the pid file back");
    }
    chmod(&run_dir, 0o750);

    // A symlink at a run file's name (baton only ever renames plain files into place).
    let elsewhere = server.root().join("state-elsewhere.json");
    fs::copy(&state, &elsewhere).expect("copy the state file");
    chmod(&elsewhere, 0o640);
    let saved = server.root().join("state-saved.json");
    fs::rename(&state, &saved).expect("move the state file away");
    std::os::unix::fs::symlink(&elsewhere, &state).expect("plant a symlink");
    let out = server.run_cli(&["status"]);
    eprintln!("baton status (state file is a symlink):\n{out}");
    refused(&out, "status", &["symbolic link", "remove it"]);
    fs::rename(&saved, &state).expect("put the state file back");

    if is_root() {
        std::os::unix::fs::chown(&state, Some(65534), None).expect("chown the state file");
        let out = server.run_cli(&["status"]);
        eprintln!("baton status (state file of another user):\n{out}");
        refused(&out, "status", &["belongs to uid 65534", "uid 0"]);
        std::os::unix::fs::chown(&state, Some(0), None).expect("chown the state file back");
    }

    assert_eq!(mode(&state), 0o640);
    let out = server.run_cli(&["status"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(server.hello().pid, pid, "the server was never signalled");
}

#[test]
#[allow(
    unsafe_code,
    reason = "pre_exec sets the child's umask, as a shell's `umask` would"
)]
fn run_files_are_0640_in_a_0750_directory_whatever_the_umask() {
    for umask in [0o000, 0o077] {
        let mut server = Server::prepare(&Config::default());
        server.spawn_with(|command| {
            // SAFETY: umask(2) is async-signal-safe and touches no memory of the parent.
            unsafe {
                command.pre_exec(move || {
                    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(umask));
                    Ok(())
                });
            }
        });
        let run_dir = server.root().join("run");
        let check = |when: &str| {
            assert_eq!(
                mode(&run_dir),
                0o750,
                "run/ under umask {umask:03o}, {when}"
            );
            for file in [server.pid_path(), server.state_path()] {
                assert_eq!(
                    mode(&file),
                    0o640,
                    "{} under umask {umask:03o}, {when}",
                    file.display()
                );
            }
        };
        check("at start");
        let out = server.run_cli(&["reload"]);
        assert_eq!(out.code, Some(0), "{out}");
        check("after a reload");
        server.upgrade();
        check("after an upgrade");
    }
}

// ---------------------------------------------------------------------------------------------
// Symlinks planted in run/
// ---------------------------------------------------------------------------------------------

/// The pids the kernel is likely to hand out next: the last one given, and `count` after it.
fn next_pids(count: u32) -> Vec<u32> {
    let read = |path: &str| -> u32 {
        fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("read {path}: {e}"))
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("parse {path}: {e}"))
    };
    let last = read("/proc/sys/kernel/ns_last_pid");
    let max = read("/proc/sys/kernel/pid_max");
    (0..=count)
        .map(|i| (last + i) % max)
        .filter(|&p| p > 1)
        .collect()
}

#[test]
fn symlinks_planted_at_temp_file_names_are_never_followed() {
    let server = Server::start(&Config::default());
    let pid = server.first_pid();
    let victim = server.root().join("victim.txt");
    fs::write(&victim, "precious\n").expect("write the victim");
    let run_dir = server.root().join("run");

    // The names the temp files once had (`.{name}.{pid}.tmp`): for the server itself (a reload
    // rewrites the state file) and for the pids the next generation may get.
    let mut planted = Vec::new();
    let mut pids = next_pids(2000);
    pids.push(pid);
    for p in pids {
        for name in ["baton.pid", "baton.state.json", "baton.supervisor.json"] {
            let link = run_dir.join(format!(".{name}.{p}.tmp"));
            if std::os::unix::fs::symlink(&victim, &link).is_ok() {
                planted.push(link);
            }
        }
    }

    let out = server.run_cli(&["reload"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        fs::read_to_string(&victim).expect("the victim"),
        "precious\n",
        "a reload wrote through a planted symlink"
    );
    let (_, new) = server.upgrade();
    assert_eq!(
        fs::read_to_string(&victim).expect("the victim"),
        "precious\n",
        "an upgrade (new pid {new}) wrote through a planted symlink"
    );

    for file in [server.pid_path(), server.state_path()] {
        let meta = fs::symlink_metadata(&file).expect("the run file");
        assert!(
            meta.file_type().is_file(),
            "{} is a plain file",
            file.display()
        );
    }
    let intact = planted
        .iter()
        .filter(|l| fs::read_link(l).is_ok_and(|t| t == victim))
        .count();
    assert_eq!(
        intact,
        planted.len(),
        "every planted symlink is left as it was"
    );
    let out = server.run_cli(&["status"]);
    assert_eq!(out.code, Some(0), "{out}");
}

// ---------------------------------------------------------------------------------------------
// scripts/restart.sh installs only what the server will start
// ---------------------------------------------------------------------------------------------

/// `scripts/restart.sh ARGS` for this deployment with `BATON_BIN=bin`.
fn restart_sh(server: &Server, bin: &Path, args: &[&str]) -> CliOutput {
    let mut command = server.command(&script("restart.sh"));
    command
        .args(args)
        .env("BATON_ROOT", server.root())
        .env("BATON_BIN", bin)
        .env("BATON_LOG", server.log_path())
        .env("BATON_START_TIMEOUT", "20")
        .env("BATON_STATUS_TIMEOUT", "10");
    run(command, CLI_DEADLINE)
}

#[test]
fn restart_sh_refuses_a_binary_the_server_will_not_start() {
    // As `cargo run` then `scripts/restart.sh <build>`: the server starts bin/baton (the debug
    // build, say), restart.sh installs at release/baton.
    let server = Server::start(&Config::default());
    let pid = server.first_pid();
    let release = server.root().join("release/baton");
    // A good build: with nothing at BATON_BIN yet, restart.sh asks it whether baton runs.
    let build = server.root().join("builds/baton");
    fs::create_dir(server.root().join("builds")).expect("mkdir builds");
    fs::copy(BATON, &build).expect("copy the binary");

    let out = restart_sh(&server, &release, &[build.to_str().expect("utf-8")]);
    eprintln!("restart.sh <build> with BATON_BIN=release/baton:\n{out}");
    assert_eq!(out.code, Some(1), "{out}");
    for words in [
        &format!("starts {} at an upgrade", server.bin().display()),
        &format!("not {}", release.display()),
        "nothing was changed",
    ] {
        assert!(out.stderr.contains(words), "expected {words:?}:\n{out}");
    }
    assert!(!release.exists(), "restart.sh installed the build anyway");

    // With a binary already there: no upgrade either.
    fs::create_dir_all(release.parent().expect("a parent")).expect("mkdir release");
    fs::copy(BATON, &release).expect("copy the binary");
    let out = restart_sh(&server, &release, &[]);
    eprintln!("restart.sh with BATON_BIN=release/baton:\n{out}");
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("nothing was changed"), "{out}");

    assert_eq!(server.current_pid(), pid);
    assert_eq!(server.hello().generation, 1, "no upgrade happened");
    assert_eq!(server.processes_here(), [pid], "nothing else was started");
}
