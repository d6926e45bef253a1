//! Stop means stop (issue 8), with the real binary and real signals: a stop during an upgrade
//! handshake also stops the half-started process, a shutdown signal to a generation that drains
//! after a handover is its first (it drains and exits 0), one Ctrl-C to the process group drains
//! once in both modes, and a stop during a probation ends both generations. Faults of the new
//! generation itself are in `faults.rs`; the harness is in `support/`.

mod support;

use std::fs;
use std::os::unix::process::CommandExt;
use std::process::Stdio;

use loadgen::Mode;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, getpgid};
use support::{
    BATON, Config, DEADLINE, Hello, InFlight, KillOnDrop, REQUEST_TIMEOUT, RawConn, Server,
    children_of, exited, holds_connection, start_load, stop_load, wait_for, wait_until,
};

fn raw(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).expect("a pid fits in i32"))
}

/// Waits until the old generation has read "ready" and begun its drain.
fn wait_handed_over(server: &Server) {
    wait_until(DEADLINE, "the old generation to hand over", || {
        server.log().contains("draining: stopped accepting")
    });
}

/// Polls until no process runs in the deployment directory, checking each time that nothing
/// answers: a process left behind could otherwise become ready later and serve.
fn wait_nothing_left(server: &Server) {
    wait_until(DEADLINE, "no process of the deployment to be left", || {
        if let Ok(response) = server.try_get("/") {
            panic!(
                "something serves after the stop: {}; log:\n{}",
                response.body,
                server.log()
            );
        }
        server.processes_here().is_empty()
    });
}

// ---------------------------------------------------------------------------------------------
// A stop during the handshake
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum StopBy {
    Sigterm,
    Sigint,
    BatonStop,
}

/// The new process takes 3 s to start (a wrapper that sleeps, then runs the real binary); the
/// old one is told to stop meanwhile. It stops and reaps the new one before it exits 0, and the
/// half-started build never serves.
fn a_stop_during_the_handshake_stops_the_new_process_too(how: StopBy) {
    let server = Server::start(&Config {
        ready_timeout: "30s".into(),
        ..Config::default()
    });
    let old = server.first_pid();
    // `sleep` gets none of the inherited fds: only the wrapper holds the sockets and the pipe.
    server.install_script(&format!("sleep 3 3>&- 4>&- 5>&-\nexec '{BATON}' \"$@\""));
    server.signal_pid(old, Signal::SIGUSR2);
    let new = wait_for(DEADLINE, "the new process to start", || {
        children_of(old).into_iter().find(|p| !p.zombie())
    });

    match how {
        StopBy::Sigterm => server.signal_pid(old, Signal::SIGTERM),
        StopBy::Sigint => server.signal_pid(old, Signal::SIGINT),
        StopBy::BatonStop => {
            let out = server.run_baton(&["stop"]);
            assert_eq!(out.code, Some(0), "{out}");
            assert!(
                out.stdout.contains("stopped") && out.stdout.contains(&old.to_string()),
                "{out}"
            );
            assert!(
                server.gone(old),
                "`baton stop` returned before pid {old} exited"
            );
        }
    }
    assert_eq!(server.wait_exit(DEADLINE), exited(old, 0), "{how:?}");
    assert!(
        server.gone(new.pid),
        "{how:?}: the new process (pid {}) still runs after the old one exited",
        new.pid
    );
    wait_nothing_left(&server);
}

#[test]
fn sigterm_during_the_handshake_stops_the_new_process_too() {
    a_stop_during_the_handshake_stops_the_new_process_too(StopBy::Sigterm);
}

#[test]
fn sigint_during_the_handshake_stops_the_new_process_too() {
    a_stop_during_the_handshake_stops_the_new_process_too(StopBy::Sigint);
}

#[test]
fn baton_stop_during_the_handshake_leaves_nothing_running() {
    a_stop_during_the_handshake_stops_the_new_process_too(StopBy::BatonStop);
}

// ---------------------------------------------------------------------------------------------
// The first shutdown signal after a handover is a first one
// ---------------------------------------------------------------------------------------------

/// SIGTERM to the old generation while it drains in its probation, under keep-alive load on
/// the new one: it drains (its slow request is answered) and exits 0; the new one serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_the_old_generation_in_its_probation_drains_it_and_exits_0() {
    let server = Server::start(&Config::default());
    let old = server.first_pid();
    let load = start_load(server.http, Mode::KeepAlive, 16);
    let slow = InFlight::start(server.http, "/api/slow?ms=1500");
    wait_until(
        DEADLINE,
        "the old generation to accept the slow request",
        || holds_connection(old, slow.client),
    );

    server.signal_pid(old, Signal::SIGUSR2);
    let new = server.wait_pid_file_change(old);
    wait_handed_over(&server);
    server.signal_pid(old, Signal::SIGTERM);

    let (response, _) = slow.finish();
    let response = response.expect("the slow request is answered, not cut");
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(server.wait_exit(DEADLINE), exited(old, 0));
    let log = server.log();
    assert!(!log.contains("second shutdown signal"), "{log}");

    let ok = load.snapshot().ok;
    wait_until(DEADLINE, "the load to go on", || {
        load.snapshot().ok >= ok + 500
    });
    let report = stop_load(load).await;
    assert_eq!(report.failed(), 0, "{report}");
    assert_eq!(server.hello().pid, new);
    assert_eq!(server.processes_here(), [new]);
}

// ---------------------------------------------------------------------------------------------
// One Ctrl-C
// ---------------------------------------------------------------------------------------------

/// A terminal's Ctrl-C: SIGINT to every process of the foreground process group.
fn ctrl_c(group: u32) {
    killpg(raw(group), Signal::SIGINT).expect("signal the process group");
}

#[test]
fn one_ctrl_c_drains_the_request_in_flight_and_exits_0() {
    let mut server = Server::prepare(&Config::default());
    server.spawn_with(|command| {
        command.process_group(0);
    });
    let pid = server.first_pid();
    assert_eq!(
        getpgid(Some(raw(pid))),
        Ok(raw(pid)),
        "its own process group"
    );
    let slow = InFlight::start(server.http, "/api/slow?ms=3000");
    wait_until(DEADLINE, "the server to accept the slow request", || {
        holds_connection(pid, slow.client)
    });

    ctrl_c(pid);
    let (response, _) = slow.finish();
    let response = response.expect("the request in flight is answered");
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(server.wait_exit(DEADLINE), exited(pid, 0));
    wait_nothing_left(&server);
}

/// `baton serve --supervise` in a terminal: the supervisor and its worker share the process
/// group, so one Ctrl-C reaches both, and must still be one shutdown.
#[test]
fn one_ctrl_c_in_supervised_mode_drains_the_request_in_flight_and_exits_0() {
    let mut server = Server::prepare(&Config::default());
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(server.log_path())
        .expect("open the log file");
    let mut command = server.command(&server.bin());
    command
        .args(["serve", "--supervise"])
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone the log file handle"))
        .stderr(log);
    let mut supervisor = KillOnDrop(command.spawn().expect("start baton serve --supervise"));
    let pid = supervisor.0.id();
    let worker = wait_for(DEADLINE, "the supervisor's worker to serve", || {
        let record = server.record().filter(|r| r.pid != pid)?;
        let http = record.listener("http")?;
        let healthy = loadgen::get_blocking(http, "/healthz", REQUEST_TIMEOUT)
            .is_ok_and(|response| response.status == 200);
        healthy.then_some(record)
    });
    server.http = worker.listener("http").expect("an http listener");
    let slow = InFlight::start(server.http, "/api/slow?ms=3000");
    wait_until(DEADLINE, "the worker to accept the slow request", || {
        holds_connection(worker.pid, slow.client)
    });

    ctrl_c(pid);
    let (response, _) = slow.finish();
    let response = response.unwrap_or_else(|e| {
        panic!(
            "the request in flight was cut ({e}); log:\n{}",
            server.log()
        )
    });
    assert_eq!(response.status, 200, "{response:?}");
    let status = wait_for(DEADLINE, "the supervisor to exit", || {
        supervisor.0.try_wait().expect("wait for the supervisor")
    });
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log());
    wait_nothing_left(&server);
}

// ---------------------------------------------------------------------------------------------
// A stop during the probation
// ---------------------------------------------------------------------------------------------

/// An upgrade has just handed over (probation 30 s; an idle connection keeps the old one in its
/// 3 s lame duck), then the new generation is stopped. Both generations exit 0 well before the
/// probation would have ended, nothing is rolled back, and nothing is left.
fn a_stop_during_the_probation_ends_both_generations(how: StopBy) {
    let server = Server::start(&Config {
        lame_duck: "3s".into(),
        probation: "30s".into(),
        ..Config::default()
    });
    let old = server.first_pid();
    let mut idle = RawConn::open(server.http).expect("connect");
    assert_eq!(Hello::parse(&idle.get("/").expect("GET /").body).pid, old);
    server.signal_pid(old, Signal::SIGUSR2);
    let new = server.wait_pid_file_change(old);
    wait_handed_over(&server);

    match how {
        StopBy::Sigterm => server.signal_pid(new, Signal::SIGTERM),
        StopBy::Sigint => server.signal_pid(new, Signal::SIGINT),
        StopBy::BatonStop => {
            let out = server.run_baton(&["stop"]);
            assert_eq!(out.code, Some(0), "{out}");
            assert!(out.stdout.contains("stopped"), "{out}");
            assert!(
                server.gone(old) && server.gone(new),
                "`baton stop` returned while a generation runs: old {old} gone {}, new {new} \
                 gone {}\n{out}",
                server.gone(old),
                server.gone(new)
            );
        }
    }
    // Within DEADLINE (20 s), before the 30 s probation: the standby was ended, not expired.
    server.wait_gone(new);
    server.wait_gone(old);
    assert_eq!(server.exit_status(old), Some(exited(old, 0)));
    if let Some(status) = server.exit_status(new) {
        assert_eq!(status, exited(new, 0));
    }
    assert!(!server.log().contains("rolled back"), "{}", server.log());
    wait_nothing_left(&server);
    drop(idle);
}

#[test]
fn baton_stop_during_the_probation_returns_once_both_generations_are_gone() {
    a_stop_during_the_probation_ends_both_generations(StopBy::BatonStop);
}

#[test]
fn sigterm_to_the_new_generation_during_its_probation_is_no_rollback() {
    a_stop_during_the_probation_ends_both_generations(StopBy::Sigterm);
}
