//! Supervised mode (`baton serve --supervise`) with the real binary: the supervisor keeps its
//! pid and the listening sockets through upgrades, restarts and failed workers, and drains on
//! SIGTERM. The harness is in `support/` (`Server::start_supervised`).

mod support;

use std::time::{Duration, Instant};

use loadgen::Mode;
use nix::sys::signal::Signal;
use support::{
    BATON, Config, DEADLINE, Hello, POLL, RawConn, SLOW_OK, Server, Worker, alive, children_of,
    exited, let_run, parse_supervised_upgrade, proc_info, reaped, start_load, stop_load,
    wait_until, zombie_children,
};

/// Loopback, port 0, short timeouts. The lame duck is what lets a keep-alive client learn
/// `Connection: close` before its connection is closed; it must outlast the longest stall of a
/// loaded machine (with 300ms, requests were lost when several test binaries ran at once:
/// stalls of 450ms were measured). It ends as soon as the old worker's connections are gone,
/// so it costs little time.
fn config(greeting: &str) -> Config {
    Config {
        greeting: greeting.into(),
        lame_duck: "1s".into(),
        shutdown_timeout: "10s".into(),
        ready_timeout: "5s".into(),
        ..Config::default()
    }
}

fn start(greeting: &str) -> Server {
    Server::start_supervised(&config(greeting))
}

/// The body of a `bin/baton` that fails before it is ready: what a broken build looks like to
/// the supervisor.
const FAILING_BINARY: &str = "exit 1";

/// The body of a `bin/baton` that says why it fails on the readiness pipe and exits at once, as
/// `baton serve` does when a migration fails.
const SAYS_WHY_AND_EXITS: &str = "if [ -n \"$BATON_UPGRADE_READY_FD\" ]; then\n\
    echo 'error migration 2 failed: no such table' >&\"$BATON_UPGRADE_READY_FD\"\n\
    fi\n\
    exit 1";

/// A supervised server with `/api/slow?ms=<ms>` in flight on a connection its first worker
/// has accepted (a first request answered on it proves that), and when it was sent.
fn start_with_slow_request(ms: u64) -> (Server, Worker, RawConn, Instant) {
    let sup = start("hello");
    let worker = sup.wait_for_worker("the first worker", |_| true);
    let mut connection = RawConn::open(sup.http).expect("connect");
    let hello = connection.get("/").expect("GET /");
    assert_eq!(Hello::parse(&hello.body).pid, worker.pid);
    connection
        .send(&format!("/api/slow?ms={ms}"))
        .expect("send the slow request");
    (sup, worker, connection, Instant::now())
}

/// A supervised server whose first worker was just SIGKILLed, and returns once the supervisor
/// saw it die; the worker it restarts takes `delay_s` seconds to start (`sleep` gets none of
/// the sockets), so no worker serves meanwhile.
fn start_and_kill_the_worker(delay_s: u32) -> (Server, Worker) {
    let sup = start("hello");
    let first = sup.wait_for_worker("the first worker", |_| true);
    sup.install_script(&format!(
        "sleep {delay_s} 3>&- 4>&- 5>&-\nexec '{BATON}' \"$@\""
    ));
    sup.signal_pid(first.pid, Signal::SIGKILL);
    sup.wait_while_up("the supervisor to see the worker die", || {
        sup.supervisor_record().filter(|r| r.worker_pid.is_none())
    });
    (sup, first)
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_upgrades_under_load_keep_the_supervisor_pid_and_lose_no_request() {
    // A short probation: upgrades come faster than drains end, so each old worker's final
    // counts reach a successor that still drains, and must be carried on from there.
    let sup = Server::start_supervised(&Config {
        probation: "300ms".into(),
        ..config("hello")
    });
    let supervisor = sup.supervisor_pid();
    let first = sup.wait_for_worker("the first worker", |_| true);
    assert_eq!(sup.hello().pid, first.pid);
    let keep_alive = start_load(sup.http, Mode::KeepAlive, 16);
    let close = start_load(sup.http, Mode::Close, 4);
    let_run(&keep_alive, 200);

    let mut current = first;
    let mut old_workers = Vec::new();
    for round in 1..=10 {
        let out = sup.run_baton(&["upgrade", "--timeout", "30s"]);
        assert_eq!(out.code, Some(0), "upgrade {round}:\n{out}");
        let (old, new, sup_pid) = parse_supervised_upgrade(&out.stdout)
            .unwrap_or_else(|| panic!("`baton upgrade` output not as documented:\n{out}"));
        assert_eq!((old, sup_pid), (current.pid, supervisor), "upgrade {round}");
        assert_ne!(new, old, "upgrade {round}: a new worker");
        let next = sup.wait_for_worker("the new worker", |w| w.pid == new);
        assert!(
            next.generation > current.generation,
            "upgrade {round}: generation {} after {}",
            next.generation,
            current.generation
        );
        // The old worker may still take a connection until it handles its SIGTERM.
        let hello = sup.wait_while_up("GET / from the new worker", || {
            Some(sup.hello()).filter(|h| h.pid == new)
        });
        assert_eq!(hello.generation, next.generation, "upgrade {round}");
        assert_eq!(
            sup.read_pid_file(),
            Some(supervisor),
            "upgrade {round}: the pid file"
        );
        old_workers.push(current);
        current = next;
        // Each upgrade happens under load, not between two bursts of it.
        let_run(&keep_alive, 20);
    }
    let keep_alive = stop_load(keep_alive).await;
    let close = stop_load(close).await;

    assert_eq!(keep_alive.failed(), 0, "keep-alive load: {keep_alive}");
    assert_eq!(close.failed(), 0, "close load: {close}");
    assert!(close.ok > 0, "the close load ran: {close}");
    for old in &old_workers {
        sup.wait_while_up(
            &format!("old worker {} to exit and be reaped", old.pid),
            || reaped(old.pid, old.start_ticks).then_some(()),
        );
    }
    sup.wait_while_up("no zombie child of the supervisor", || {
        zombie_children(supervisor).is_empty().then_some(())
    });
    let record = sup.supervisor_record().expect("the supervisor record");
    assert_eq!(record.pid, supervisor);
    assert_eq!(record.worker_pid, Some(current.pid));
    assert_eq!(record.restarts, 0, "no worker died: {record:?}");
    // The counters crossed every worker: the requests each answered (the load's, and the
    // test's own `GET /`), and the upgrades, which the supervisor did and told the worker
    // (the last one once its probation has passed).
    let answered = (keep_alive.ok + close.ok) as f64;
    let what = format!("the worker to count the {answered} requests of the load");
    sup.wait_while_up(&what, || {
        sup.try_metric("baton_requests_total{class=\"2xx\"}")
            .filter(|total| *total >= answered)
    });
    sup.wait_while_up("the worker to count the ten upgrades", || {
        sup.try_metric("baton_upgrades_total{result=\"ok\"}")
            .filter(|ok| *ok == 10.0)
    });
    // The last worker knows the one it replaced, once that one drained; the supervisor
    // started the worker, so the upgrade's times are not the old worker's to tell.
    let last_old = old_workers.last().expect("ten upgrades");
    let previous = sup.wait_while_up("the lineage in /-/status", || {
        let status = sup.status();
        let previous = status["previous"].clone();
        (status["pid"] == current.pid && !previous.is_null()).then_some(previous)
    });
    assert_eq!(previous["pid"], last_old.pid, "{previous}");
    assert_eq!(previous["generation"], last_old.generation, "{previous}");
    assert!(previous["spawned_ms"].is_null(), "{previous}");
    assert!(previous["drain"]["total_ms"].is_u64(), "{previous}");
    assert_eq!(sup.read_pid_file(), Some(supervisor));
    assert!(!sup.gone(supervisor), "the supervisor runs on");
    let live: Vec<u32> = children_of(supervisor).iter().map(|p| p.pid).collect();
    assert_eq!(live, vec![current.pid], "one worker left");
    eprintln!(
        "10 upgrades: keep-alive {} ok / {} connects, close {} ok, generation {}",
        keep_alive.ok, keep_alive.connects, close.ok, current.generation
    );
}

#[test]
fn a_killed_worker_is_restarted_and_queued_connections_are_served() {
    // The restarted worker starts slowly (as a big application would), so that the gap is
    // long enough to put requests in it for sure.
    let (sup, first) = start_and_kill_the_worker(2);
    let supervisor = sup.supervisor_pid();
    let sent = Instant::now();
    let mut in_gap = Vec::new();
    for _ in 0..4 {
        let mut connection = RawConn::open(sup.http).expect("connect");
        connection.send("/").expect("send GET /");
        in_gap.push(connection);
    }
    // The requests are on the wire while the supervisor has no worker: they wait in the
    // accept queue of the socket it kept open.
    let during = sup.supervisor_record().expect("the supervisor record");
    assert_eq!(
        during.worker_pid, None,
        "the requests went out during the gap"
    );
    let mut answered = Vec::new();
    for mut connection in in_gap {
        let response = connection
            .read_response()
            .expect("a request made in the gap is answered");
        assert_eq!(response.status, 200, "{}", response.body);
        answered.push(Hello::parse(&response.body).pid);
    }
    let waited = sent.elapsed();

    let next = sup.wait_for_worker("the restarted worker", |w| w.pid != first.pid);
    assert!(
        answered.iter().all(|pid| *pid == next.pid),
        "the gap's requests were served by the restarted worker {}: {answered:?}",
        next.pid
    );
    assert_eq!(sup.hello().pid, next.pid);
    assert_eq!(sup.status()["pid"], next.pid);
    let record = sup.supervisor_record().expect("the supervisor record");
    assert!(record.restarts >= 1, "{record:?}");
    assert_eq!(record.worker_pid, Some(next.pid));
    assert!(next.generation > first.generation);
    let status = sup.run_baton(&["status"]);
    assert_eq!(status.code, Some(0), "{status}");
    let expected = format!(
        "running: pid {supervisor}, supervised, worker pid {}",
        next.pid
    );
    assert!(status.stdout.starts_with(&expected), "{status}");
    assert!(
        reaped(first.pid, first.start_ticks),
        "the killed worker was reaped"
    );
    assert_eq!(sup.read_pid_file(), Some(supervisor));
    eprintln!(
        "gap: 4 requests sent with no worker serving, all answered 200 by the restarted worker \
         after {waited:?} (worker start delayed 2 s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_new_worker_changes_nothing() {
    let sup = start("hello");
    let supervisor = sup.supervisor_pid();
    let first = sup.wait_for_worker("the first worker", |_| true);
    let load = start_load(sup.http, Mode::KeepAlive, 8);
    let_run(&load, 100);
    sup.install_script(FAILING_BINARY);

    // `baton upgrade --binary bin/baton` checks the configuration with the new binary first,
    // and stops there.
    let refused = sup.run_baton(&["upgrade", "--binary", "bin/baton", "--timeout", "30s"]);
    assert_eq!(refused.code, Some(1), "{refused}");
    let message = &refused.stderr;
    assert!(
        message.contains("upgrade failed") && message.contains("nothing was changed"),
        "{message}"
    );
    let record = sup.supervisor_record().expect("the supervisor record");
    assert!(
        record.upgrades.last_upgrade.is_none(),
        "the pre-check sent no signal: {record:?}"
    );

    // The raw signal gets past the pre-check: the supervisor starts the broken binary.
    sup.signal_pid(supervisor, Signal::SIGUSR2);
    let failed = sup.wait_while_up("the failed upgrade's record", || {
        sup.supervisor_record()?
            .upgrades
            .last_upgrade
            .filter(|u| !u.ok)
    });
    let reason = failed.error.expect("a failed upgrade says why");
    assert!(reason.contains("exited before it was ready"), "{reason}");
    let_run(&load, 100);
    let record = sup.supervisor_record().expect("the supervisor record");
    assert_eq!(record.worker_pid, Some(first.pid), "{record:?}");
    assert_eq!(sup.hello().pid, first.pid);
    sup.wait_while_up("the failed worker to be reaped", || {
        let children: Vec<u32> = children_of(supervisor).iter().map(|p| p.pid).collect();
        (children == vec![first.pid]).then_some(())
    });

    sup.install_good_binary();
    let out = sup.run_baton(&["upgrade", "--timeout", "30s"]);
    assert_eq!(out.code, Some(0), "{out}");
    let (old, new, _) = parse_supervised_upgrade(&out.stdout)
        .unwrap_or_else(|| panic!("`baton upgrade` output not as documented:\n{out}"));
    assert_eq!(old, first.pid);
    let next = sup.wait_for_worker("the new worker", |w| w.pid == new);
    assert!(next.generation > first.generation);
    let_run(&load, 100);
    let report = stop_load(load).await;
    assert_eq!(report.failed(), 0, "{report}");
    let record = sup.supervisor_record().expect("the supervisor record");
    assert!(
        record.upgrades.last_upgrade.as_ref().is_some_and(|u| u.ok),
        "{record:?}"
    );
    assert_eq!(record.restarts, 0);
    assert_eq!(sup.read_pid_file(), Some(supervisor));
    eprintln!(
        "failed upgrade: reason {reason:?}; pre-check said {:?}; next upgrade generation {}",
        message.trim(),
        next.generation
    );
}

/// A new worker that writes its reason and exits at once: the supervisor's record says why,
/// whether it sees the exit or the pipe first (the first used to win with "exited before it
/// was ready"). Three rounds, as the order is up to the scheduler.
#[test]
fn a_failing_new_workers_reason_reaches_the_record() {
    let sup = start("hello");
    let supervisor = sup.supervisor_pid();
    let first = sup.wait_for_worker("the first worker", |_| true);
    sup.install_script(SAYS_WHY_AND_EXITS);
    let mut seen = 0;
    for _ in 0..3 {
        sup.signal_pid(supervisor, Signal::SIGUSR2);
        let failed = sup.wait_while_up("the failed upgrade's record", || {
            sup.supervisor_record()?
                .upgrades
                .last_upgrade
                .filter(|u| !u.ok && u.seq > seen)
        });
        seen = failed.seq;
        let reason = failed.error.expect("a failed upgrade says why");
        assert!(
            reason.contains("migration 2 failed: no such table"),
            "{reason}"
        );
        assert_eq!(sup.hello().pid, first.pid, "the first worker still serves");
    }
}

#[test]
fn repeated_quick_deaths_make_the_supervisor_give_up() {
    let sup = start("hello");
    let supervisor = sup.supervisor_pid();
    let first = sup.wait_for_worker("the first worker", |_| true);
    sup.install_script(FAILING_BINARY);

    let killed = Instant::now();
    sup.signal_pid(first.pid, Signal::SIGKILL);
    let status = sup.wait_exit(DEADLINE);
    let took = killed.elapsed();
    let log = sup.log();
    assert_eq!(status, exited(supervisor, 1), "log:\n{log}");
    assert!(log.contains("giving up"), "log:\n{log}");
    // Five deaths in a row: the first worker's and four restarted ones'.
    let restarts = log.matches("restarting the worker").count();
    assert_eq!(restarts, 4, "log:\n{log}");
    // Back-off 100 ms, doubling: 100 + 200 + 400 + 800 ms at least.
    assert!(
        took >= Duration::from_millis(1500),
        "gave up after {took:?}: too soon for the back-off; log:\n{log}"
    );
    assert!(!sup.pid_path().exists(), "the pid file is removed");
    assert!(!sup.supervisor_path().exists());
    sup.assert_nothing_left();
    eprintln!("gave up after {took:?} and {restarts} restart attempts");
}

#[test]
fn sigterm_drains_the_request_in_flight_and_exits_0() {
    let (sup, worker, mut connection, sent) = start_with_slow_request(1500);
    let supervisor = sup.supervisor_pid();

    sup.signal_pid(supervisor, Signal::SIGTERM);
    let response = connection
        .read_response()
        .expect("the request in flight is answered");
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(response.body.contains("1500"), "{}", response.body);
    assert!(
        response.closes(),
        "a draining worker says Connection: close"
    );
    assert!(sent.elapsed() >= Duration::from_millis(1400));

    let status = sup.wait_exit(DEADLINE);
    assert_eq!(status, exited(supervisor, 0), "log:\n{}", sup.log());
    for file in [sup.pid_path(), sup.supervisor_path(), sup.state_path()] {
        assert!(!file.exists(), "{} is removed", file.display());
    }
    assert!(!alive(worker.pid, worker.start_ticks));
    sup.assert_nothing_left();
}

#[test]
fn sigusr1_and_baton_reload_reach_the_worker() {
    let sup = start("one");
    let supervisor = sup.supervisor_pid();
    let worker = sup.wait_for_worker("the first worker", |_| true);
    assert_eq!(sup.hello().greeting, "one");

    sup.write_config(&config("two").toml());
    sup.signal_pid(supervisor, Signal::SIGUSR1);
    sup.wait_while_up("the greeting to change", || {
        (sup.hello().greeting == "two").then_some(())
    });

    sup.write_config(&config("three").toml());
    let out = sup.run_baton(&["reload"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.starts_with("reloaded"), "{out}");
    let hello = sup.hello();
    assert_eq!(
        (hello.greeting.as_str(), hello.pid, hello.generation),
        ("three", worker.pid, worker.generation),
        "same worker, new greeting"
    );

    let status = sup.run_baton(&["status"]);
    assert_eq!(status.code, Some(0), "{status}");
    assert!(status.stdout.contains("supervised"), "{status}");
    assert_eq!(
        sup.supervisor_record().and_then(|r| r.worker_pid),
        Some(worker.pid)
    );
}

#[test]
fn a_second_sigterm_exits_at_once() {
    let (sup, _, mut connection, sent) = start_with_slow_request(10_000);
    let supervisor = sup.supervisor_pid();

    let (status, _) = sup.sigterm_twice(supervisor, "shutdown requested: draining the workers");
    let took = sent.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "exited {took:?} after the 10 s request began: it waited for it"
    );
    assert_eq!(status, exited(supervisor, 1), "log:\n{}", sup.log());
    assert!(
        connection.read_response().is_err(),
        "the request in flight was cut"
    );
    assert!(!sup.pid_path().exists());
    assert!(!sup.supervisor_path().exists());
    sup.assert_nothing_left();
    eprintln!("second SIGTERM: supervisor gone {took:?} after the slow request began");
}

/// Regression: when the supervisor handles a worker's exit before its "ready" line (both
/// pending at once), the dead worker must not become current (it once did: the old worker was
/// drained, nothing was restarted, and connections waited in the queue forever).
/// The race is arranged by stopping the supervisor while the worker says ready and exits;
/// which of the two it then handles first is random (`select!`), hence three rounds.
#[test]
fn a_worker_that_exits_right_after_saying_ready_is_not_kept_as_current() {
    let sup = start("hello");
    let supervisor = sup.supervisor_pid();
    // With `crash` present: remove it, wait for `go`, say ready, exit. Else the real binary.
    sup.install_script(&format!(
        "if [ -e crash ]; then\n\
         rm crash\n\
         while [ ! -e go ]; do sleep 0.01; done\n\
         rm go\n\
         eval \"echo ready \\$\\$ >&$BATON_UPGRADE_READY_FD\"\n\
         exit 0\n\
         fi\n\
         exec '{BATON}' \"$@\""
    ));
    for round in 1..=3 {
        let serving = sup.wait_for_worker("a worker", |_| true);
        std::fs::write(sup.root().join("crash"), "").expect("create crash");
        sup.signal_pid(supervisor, Signal::SIGUSR2);
        let starting = sup.wait_while_up("the new worker to start", || {
            children_of(supervisor)
                .into_iter()
                .find(|p| p.pid != serving.pid && !p.zombie())
        });
        sup.signal_pid(supervisor, Signal::SIGSTOP);
        std::fs::write(sup.root().join("go"), "").expect("create go");
        let exited = Instant::now() + DEADLINE;
        while proc_info(starting.pid).is_some_and(|p| !p.zombie()) && Instant::now() < exited {
            std::thread::sleep(POLL);
        }
        sup.signal_pid(supervisor, Signal::SIGCONT);
        // Settled once the supervisor has reaped it: until then it is still "starting", and
        // the next round's SIGUSR2 would be refused (seen on a loaded machine).
        sup.wait_while_up(
            &format!("round {round}: the exited worker to be reaped"),
            || reaped(starting.pid, starting.start_ticks).then_some(()),
        );

        // Either outcome is right: the upgrade failed and the old worker serves on, or the
        // dead worker was replaced by a restarted one. A dead current worker is not.
        sup.wait_while_up(&format!("round {round}: a live worker that serves"), || {
            let worker = sup.supervisor_record()?.worker_pid?;
            let live = proc_info(worker).is_some_and(|p| !p.zombie());
            let response = loadgen::get_blocking(sup.http, "/", Duration::from_secs(2)).ok()?;
            (live && response.status == 200 && Hello::parse(&response.body).pid == worker)
                .then_some(())
        });
    }
}

/// Regression: while a worker restarts (no worker serving for more than two seconds: back-off,
/// slow start), `baton stop` and `baton status` must still find the supervisor (they once
/// called the pid file stale and told the user to remove it).
#[test]
fn baton_stop_works_while_no_worker_serves() {
    let (sup, _) = start_and_kill_the_worker(5);
    let supervisor = sup.supervisor_pid();

    let status = sup.run_baton(&["status"]);
    assert!(
        !status.stderr.contains("stale"),
        "the pid file names a live supervisor: {status}"
    );
    let stop = sup.run_baton(&["stop", "--timeout", "20s"]);
    assert_eq!(stop.code, Some(0), "{stop}");
    assert_eq!(stop.stdout.trim(), format!("stopped {supervisor}"));
    sup.wait_exit(DEADLINE);
}

/// `carry.rs`'s `a_drain_that_outlasts_the_next_generations_is_counted`, supervised: the first
/// worker drains a slow request while the second, which answered the same route, is upgraded
/// in turn and drains at once. The second must wait for the first one's final report (the
/// supervisor says when it is all in) before it hands its own on: both reports count the
/// route in the same bucket (2.5 s to 5 s), and the larger would win over the other.
#[test]
fn a_drain_that_outlasts_the_next_workers_is_counted() {
    let sup = Server::start_supervised(&Config {
        probation: "300ms".into(),
        ..config("hello")
    });
    let first = sup.wait_for_worker("the first worker", |_| true);
    let slow = sup.in_flight(first.pid, "/api/slow?ms=4500");
    let upgrade = |round| {
        let out = sup.run_baton(&["upgrade", "--timeout", "30s"]);
        assert_eq!(out.code, Some(0), "upgrade {round}:\n{out}");
        let (_, new, _) = parse_supervised_upgrade(&out.stdout)
            .unwrap_or_else(|| panic!("`baton upgrade` output not as documented:\n{out}"));
        new
    };
    let second = upgrade(1);
    let theirs: Vec<_> = (0..2)
        .map(|_| sup.in_flight(second, "/api/slow?ms=2600"))
        .collect();
    for request in theirs {
        assert_eq!(request.finish().0.expect("a slow request").status, 200);
    }
    upgrade(2);
    let (response, _) = slow.finish();
    assert_eq!(response.expect("the first slow request").status, 200);
    wait_until(
        DEADLINE,
        "the three slow requests to be counted by the current worker",
        || sup.try_metric(SLOW_OK) == Some(3.0),
    );
}
