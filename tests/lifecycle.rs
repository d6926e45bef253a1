//! Reload and shutdown of the real binary (issue 2): `bin/baton serve` in a temporary
//! deployment directory, driven by real signals, the `baton` CLI and `scripts/reload.sh`.
//! The harness is in `support/`.

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use loadgen::{FailureKind, LoadConfig, Mode};
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use serde_json::Value;
use support::{Config, DEADLINE, KillOnDrop, RawConn, Server, wait_for, wait_until};

// ---------------------------------------------------------------------------------------------
// Reload
// ---------------------------------------------------------------------------------------------

#[test]
fn reload_applies_a_new_greeting_via_the_cli_and_via_sighup() {
    let mut config = Config::default();
    let server = Server::start(&config);
    let pid = server.first_pid();
    assert_eq!(server.hello().greeting, "Hello from the test");

    config.greeting = "Hello after baton reload".into();
    server.write_config(&config.toml());
    let out = server.run_cli(&["reload"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(out.stdout.trim(), "reloaded (config generation 2)", "{out}");
    // The CLI returns once the server recorded the outcome: the new greeting is in force.
    assert_eq!(server.hello().greeting, "Hello after baton reload");

    // The same file again changes nothing.
    let out = server.run_cli(&["reload"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.starts_with("unchanged"), "{out}");

    config.greeting = "Hello after SIGHUP".into();
    server.write_config(&config.toml());
    server.signal(Signal::SIGHUP);
    wait_until(DEADLINE, "SIGHUP to apply the new greeting", || {
        server.hello().greeting == "Hello after SIGHUP"
    });
    let hello = server.hello();
    assert_eq!(
        (hello.pid, hello.generation),
        (pid, 1),
        "a reload keeps the process"
    );
    assert_eq!(server.status()["config_generation"], 3);
}

/// A config that must not be applied, and what the message about it must say.
struct Broken {
    what: &'static str,
    /// `None`: `config/default.toml` becomes a directory (unreadable).
    toml: Option<String>,
    expected: String,
}

/// One broken variant of `config` per kind of mistake.
fn broken_configs(config: &Config) -> Vec<Broken> {
    let good = config.toml();
    let edit = |from: &str, to: &str| {
        assert!(good.contains(from), "the test config has {from:?}");
        good.replacen(from, to, 1)
    };
    let greeting_line = good
        .lines()
        .position(|l| l.starts_with("greeting = "))
        .expect("a greeting line")
        + 1;
    vec![
        Broken {
            what: "TOML syntax error",
            toml: Some(edit("greeting = \"", "greeting = \"unterminated\n")),
            expected: format!("TOML syntax error at line {greeting_line}"),
        },
        Broken {
            what: "unknown key",
            toml: Some(edit("[app]\n", "[app]\ngreetings = \"typo\"\n")),
            expected: "unknown key `app.greetings`".into(),
        },
        Broken {
            what: "wrong type",
            toml: Some(edit("items_limit = 1000", "items_limit = \"many\"")),
            expected: "app.items_limit = \"many\": wrong type".into(),
        },
        Broken {
            what: "invalid duration",
            toml: Some(edit("lame_duck = \"300ms\"", "lame_duck = \"soon\"")),
            expected: "lifecycle.lame_duck = \"soon\": invalid duration".into(),
        },
        Broken {
            what: "invalid log filter",
            toml: Some(edit("filter = \"info\"", "filter = \"baton=loud\"")),
            expected: "log.filter = \"baton=loud\": invalid log filter".into(),
        },
        Broken {
            what: "unreadable file",
            toml: None,
            expected: "default.toml: cannot read".into(),
        },
    ]
}

/// Puts `broken` in place of `config/default.toml`.
fn install_broken(server: &Server, broken: &Broken) {
    match &broken.toml {
        Some(toml) => server.write_config(toml),
        None => {
            std::fs::remove_file(server.config_path()).expect("remove default.toml");
            std::fs::create_dir(server.config_path()).expect("make default.toml a directory");
        }
    }
}

/// Puts a good `config/default.toml` back (whatever `install_broken` left).
fn restore(server: &Server, config: &Config) {
    if server.config_path().is_dir() {
        std::fs::remove_dir(server.config_path()).expect("remove the directory");
    }
    server.write_config(&config.toml());
}

#[test]
fn reload_sh_rejects_each_broken_config_and_the_old_one_stays_in_force() {
    let mut config = Config::default();
    let server = Server::start(&config);
    let pid = server.first_pid();
    for broken in broken_configs(&config) {
        install_broken(&server, &broken);
        let out = server.run_script("reload.sh", &[]);
        assert_eq!(
            out.code,
            Some(1),
            "{}: reload.sh must fail:\n{out}",
            broken.what
        );
        assert!(
            out.stderr.contains("reload rejected") && out.stderr.contains(&broken.expected),
            "{}: stderr must say why ({:?}):\n{out}",
            broken.what,
            broken.expected
        );
        let hello = server.hello();
        assert_eq!(
            (hello.greeting.as_str(), hello.pid),
            ("Hello from the test", pid),
            "{}: the old config stays in force in the same process",
            broken.what
        );
        restore(&server, &config);
    }

    config.greeting = "Hello once fixed".into();
    server.write_config(&config.toml());
    let out = server.run_script("reload.sh", &[]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.starts_with("reloaded"), "{out}");
    assert_eq!(server.hello().greeting, "Hello once fixed");
}

/// The server's own handling, without the CLI's pre-check: a raw SIGUSR1 with a broken file.
#[test]
fn raw_sigusr1_with_a_broken_config_is_rejected_logged_and_reported() {
    let config = Config::default();
    let server = Server::start(&config);
    let pid = server.first_pid();
    assert_eq!(server.metric("baton_last_reload_success"), 1.0);
    for (n, broken) in broken_configs(&config).iter().enumerate() {
        let seq_before = server.status()["last_reload"]["seq"].as_u64().unwrap_or(0);
        install_broken(&server, broken);
        server.signal(Signal::SIGUSR1);
        let last = wait_for(DEADLINE, "the server to record the reload", || {
            let last = server.status()["last_reload"].clone();
            (last["seq"].as_u64() > Some(seq_before)).then_some(last)
        });
        let outcome = &last["outcome"];
        assert_eq!(outcome["result"], "rejected", "{}: {last}", broken.what);
        let error = outcome["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(&broken.expected),
            "{}: /-/status last_reload must say why ({:?}): {last}",
            broken.what,
            broken.expected
        );
        assert_eq!(
            server.metric("baton_last_reload_success"),
            0.0,
            "{}",
            broken.what
        );
        assert_eq!(
            server.metric("baton_reloads_total{result=\"failed\"}"),
            (n + 1) as f64
        );
        let rejections = server
            .log()
            .lines()
            .filter(|l| l.contains("configuration rejected") && l.contains(&broken.expected))
            .count();
        assert_eq!(
            rejections, 1,
            "{}: one log line names the error",
            broken.what
        );
        let hello = server.hello();
        assert_eq!(
            (hello.greeting.as_str(), hello.pid),
            ("Hello from the test", pid)
        );
        restore(&server, &config);
    }
    // A good file again: the gauge recovers (the settings are those in force: unchanged).
    let seq_before = server.status()["last_reload"]["seq"].as_u64().unwrap_or(0);
    server.signal(Signal::SIGUSR1);
    wait_until(DEADLINE, "the good reload to be recorded", || {
        server.status()["last_reload"]["seq"].as_u64() > Some(seq_before)
    });
    assert_eq!(
        server.status()["last_reload"]["outcome"]["result"],
        "unchanged"
    );
    assert_eq!(server.metric("baton_last_reload_success"), 1.0);
}

/// What the clients of the torn-read test saw.
#[derive(Debug, Default)]
struct Seen {
    ok: u64,
    failures: Vec<String>,
    torn: Vec<String>,
    /// Distinct (greeting, items_limit) pairs.
    pairs: BTreeSet<(String, u64)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_concurrent_requests_are_never_torn_and_never_fail() {
    const RELOADS: u64 = 30;
    const CLIENTS: usize = 4;
    let mut config = Config {
        greeting: "v1000".into(),
        items_limit: 1000,
        ..Config::default()
    };
    let server = Server::start(&config);
    let http = server.http;
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut seen = Seen::default();
                let mut last_generation = 0;
                while !stop.load(Ordering::Relaxed) {
                    let response = match loadgen::get(http, "/api/settings").await {
                        Ok(response) if response.status == 200 => response,
                        Ok(response) => {
                            seen.failures.push(format!("status {}", response.status));
                            continue;
                        }
                        Err(failure) => {
                            seen.failures.push(failure.to_string());
                            continue;
                        }
                    };
                    seen.ok += 1;
                    let json: Value = serde_json::from_str(&response.body).expect("JSON");
                    let greeting = json["greeting"].as_str().unwrap_or_default().to_owned();
                    let limit = json["items_limit"].as_u64().unwrap_or_default();
                    let generation = json["config_generation"].as_u64().unwrap_or_default();
                    // Reload k sets ("v{k}", k) and makes config generation k + 1.
                    if greeting != format!("v{limit}") {
                        seen.torn.push(format!("pair torn: {}", response.body));
                    } else if limit != 1000 && generation < limit + 1 {
                        seen.torn
                            .push(format!("older generation than its pair: {}", response.body));
                    }
                    if generation < last_generation {
                        seen.torn
                            .push(format!("generation went back: {}", response.body));
                    }
                    last_generation = generation;
                    seen.pairs.insert((greeting, limit));
                }
                seen
            })
        })
        .collect();

    wait_until(DEADLINE, "the clients to get going", || {
        server.status()["open_connections"].as_u64() > Some(1)
    });
    for k in 1..=RELOADS {
        config.greeting = format!("v{k}");
        config.items_limit = u32::try_from(k).expect("small");
        server.write_config(&config.toml());
        let out = server.run_cli(&["reload"]);
        assert_eq!(out.code, Some(0), "reload {k}:\n{out}");
        assert_eq!(
            out.stdout.trim(),
            format!("reloaded (config generation {})", k + 1),
            "reload {k}"
        );
    }
    stop.store(true, Ordering::Relaxed);

    let mut total = Seen::default();
    for client in clients {
        let seen = tokio::time::timeout(DEADLINE, client)
            .await
            .expect("a client to stop")
            .expect("a client task");
        total.ok += seen.ok;
        total.failures.extend(seen.failures);
        total.torn.extend(seen.torn);
        total.pairs.extend(seen.pairs);
    }
    assert!(
        total.failures.is_empty(),
        "failed requests: {:?}",
        total.failures
    );
    assert!(total.torn.is_empty(), "torn reads: {:?}", total.torn);
    // The clients ran across the reloads, or this test proved nothing.
    assert!(
        total.pairs.len() >= 10,
        "only {} distinct settings seen in {} requests: {:?}",
        total.pairs.len(),
        total.ok,
        total.pairs
    );
    let json: Value = serde_json::from_str(&server.get("/api/settings").body).expect("JSON");
    assert_eq!(
        (json["greeting"].as_str(), json["items_limit"].as_u64()),
        (Some("v30"), Some(30))
    );
}

// ---------------------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------------------

#[test]
fn sigterm_lets_a_slow_request_finish_then_exits_0_and_removes_the_pid_file() {
    let server = Server::start(&Config::default());
    let pid = server.first_pid();
    let slow = server.in_flight(pid, "/api/slow?ms=2000");

    server.signal(Signal::SIGTERM);
    let status = server.wait_exit(DEADLINE);
    let (response, took) = slow.finish();
    let response = response.expect("the slow request gets its response");
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body, r#"{"slept_ms":2000}"#);
    assert!(
        took >= Duration::from_millis(1900),
        "it was not cut short: {took:?}"
    );
    assert!(
        response.closes(),
        "a response during the drain says Connection: close"
    );
    assert_eq!(status, support::exited(pid, 0));
    assert!(!server.pid_path().exists(), "the pid file is removed");
    assert!(!server.state_path().exists(), "the state file is removed");
    let log = server.log();
    assert!(
        log.contains("drained; exiting") && log.contains("cut=0"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_keep_alive_load_answers_every_request_that_was_sent() {
    let server = Server::start(&Config::default());
    let pid = server.first_pid();
    let load = loadgen::start(LoadConfig {
        connections: 8,
        mode: Mode::KeepAlive,
        max_duration: Duration::from_secs(60),
        request_timeout: Duration::from_secs(10),
        ..LoadConfig::new(server.http)
    });
    // Half a second of load (a duration, not a synchronisation), with requests flowing.
    wait_until(DEADLINE, "half a second of load", || {
        let now = load.snapshot();
        now.elapsed >= Duration::from_millis(500) && now.ok >= 500
    });

    let signalled_at = load.snapshot().elapsed;
    server.signal(Signal::SIGTERM);
    let status = server.wait_exit(DEADLINE);
    let report = tokio::time::timeout(DEADLINE, load.stop())
        .await
        .expect("the load to stop");
    eprintln!("{report}");

    assert_eq!(status, support::exited(pid, 0));
    // After the drain began, clients reconnect and find no listener: refused connects are
    // expected. A request that was sent and got no full response is a lost request.
    let lost: u64 = report
        .failures
        .iter()
        .filter(|(kind, _)| **kind != FailureKind::Connect)
        .map(|(_, count)| count)
        .sum();
    assert_eq!(lost, 0, "requests sent and not answered:\n{report}");
    assert_eq!(
        report.failed_in(Some(Duration::ZERO..signalled_at)),
        0,
        "a request started before SIGTERM failed:\n{report}"
    );
    assert!(report.ok >= 500, "{report}");
}

#[test]
fn a_second_sigterm_exits_at_once() {
    let server = Server::start(&Config {
        shutdown_timeout: "30s".into(),
        ..Config::default()
    });
    let pid = server.first_pid();
    let slow = server.in_flight(pid, "/api/slow?ms=10000");
    let (status, second) = server.sigterm_twice(pid, "draining: stopped accepting");
    let took = second.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the second SIGTERM must not wait for the 10 s request: exited after {took:?}"
    );
    assert!(
        matches!(status, WaitStatus::Exited(_, code) if code != 0),
        "an interrupted drain exits non-zero: {status:?}"
    );
    let (response, _) = slow.finish();
    assert!(response.is_err(), "the slow request was cut: {response:?}");
    assert!(!server.pid_path().exists(), "the pid file is removed");
    assert!(server.log().contains("second shutdown signal"));
}

#[test]
fn the_lame_duck_spreads_its_closes_over_the_close_window() {
    // A 2 s window (half of the 4 s lame duck): each connection is told to close on its first
    // response after its own moment in it, not all on the first response after the signal.
    const CONNECTIONS: usize = 20;
    let window = Duration::from_secs(2);
    let server = Server::start(&Config {
        lame_duck: "4s".into(),
        close_spread: "2s".into(),
        shutdown_timeout: "20s".into(),
        ..Config::default()
    });
    let mut conns: Vec<RawConn> = (0..CONNECTIONS)
        .map(|_| RawConn::open(server.http).expect("connect"))
        .collect();
    for conn in &mut conns {
        let response = conn.get("/healthz").expect("GET /healthz");
        assert!(!response.closes(), "{response:?}");
    }
    let signalled = Instant::now();
    server.signal(Signal::SIGTERM);
    // Every open connection asks in turn until each has been told; when each was told.
    let mut told: Vec<Option<Duration>> = vec![None; CONNECTIONS];
    while told.iter().any(Option::is_none) {
        assert!(
            signalled.elapsed() < window * 3,
            "not every connection was told to close within the lame duck: {told:?}"
        );
        for (conn, told) in conns.iter_mut().zip(told.iter_mut()) {
            if told.is_some() {
                continue;
            }
            let response = conn
                .get("/healthz")
                .expect("a connection not yet told to close is served");
            if response.closes() {
                *told = Some(signalled.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut told: Vec<Duration> = told.into_iter().flatten().collect();
    told.sort();
    // Told all at once, the last would follow the first within one round of requests.
    // Spread, the first comes early in the window and the last late in it.
    let (first, last) = (told[0], told[CONNECTIONS - 1]);
    assert!(
        first < window * 2 / 5 && last > window * 3 / 5,
        "closes not spread over the window: {told:?}"
    );
}

#[test]
fn readyz_turns_503_with_connection_close_when_the_drain_begins() {
    // A long lame duck: the connections opened before stay served for the whole check. No
    // close window: every connection is told at once.
    let server = Server::start(&Config {
        lame_duck: "10s".into(),
        close_spread: "0s".into(),
        shutdown_timeout: "20s".into(),
        ..Config::default()
    });
    let pid = server.first_pid();
    let mut first = RawConn::open(server.http).expect("connect");
    let mut second = RawConn::open(server.http).expect("connect");
    for conn in [&mut first, &mut second] {
        let ready = conn.get("/readyz").expect("GET /readyz");
        assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
        assert!(!ready.closes(), "{ready:?}");
    }

    server.signal(Signal::SIGTERM);
    // `/readyz` answers from the phase when its handler runs, and `Connection: close` is
    // added from the phase after it ran (so that a request begun before the drain also moves
    // its client on): the request that straddles the start of the drain gets `200 ready` with
    // `Connection: close`, and its connection is closed after it. Either response ends the
    // polling; a request after it on that connection would meet a closed socket.
    let seen = wait_for(
        DEADLINE,
        "a response on the open connection to show the drain",
        || {
            let response = first.get("/readyz").expect(
                "an open keep-alive connection is served through the lame duck until it is \
                 told Connection: close",
            );
            (response.status != 200 || response.closes()).then_some(response)
        },
    );
    assert!(
        matches!(
            (seen.status, seen.body.as_str()),
            (503, "draining\n") | (200, "ready\n")
        ),
        "{seen:?}"
    );
    assert!(seen.closes(), "{seen:?}");
    assert!(
        first.closed_by_server(),
        "the server closes after Connection: close"
    );
    // The drain has begun (the server said so): a request on the other open connection is
    // answered 503, and told to close.
    let draining = second
        .get("/readyz")
        .expect("an open keep-alive connection is served through the lame duck");
    assert_eq!(
        (draining.status, draining.body.as_str()),
        (503, "draining\n")
    );
    assert!(draining.closes(), "{draining:?}");
    assert!(
        second.closed_by_server(),
        "the server closes after Connection: close"
    );
    // The listener closed before the drain began: new connections are refused at once.
    assert!(
        std::net::TcpStream::connect(server.http).is_err(),
        "nothing listens on {} any more",
        server.http
    );

    let closed = Instant::now();
    let status = server.wait_exit(DEADLINE);
    assert_eq!(status, support::exited(pid, 0));
    assert!(
        closed.elapsed() < Duration::from_secs(5),
        "the lame duck (10 s) ends early once no connection is left; took {:?}",
        closed.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// baton status / stop
// ---------------------------------------------------------------------------------------------

#[test]
fn status_and_stop_exit_codes_and_a_stale_pid_file_is_never_signalled() {
    let server = Server::start(&Config::default());
    let pid = server.first_pid();

    let out = server.run_cli(&["status"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stdout
            .starts_with(&format!("running: pid {pid}, generation 1,")),
        "{out}"
    );
    let state = std::fs::read_to_string(server.state_path()).expect("the state file");

    let out = server.run_cli(&["stop"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(out.stdout.trim(), format!("stopped {pid}"));
    let status = server.wait_exit(DEADLINE);
    assert_eq!(status, support::exited(pid, 0));

    // Not running: LSB exit code 3, for status and for every command that needs the server.
    assert_each_exits(
        &server,
        &["status", "stop", "reload", "upgrade"],
        3,
        "not running",
    );

    // A stale pid file naming a live process that is not baton: exit 1, and no signal to it
    // (SIGTERM, SIGUSR1 and SIGUSR2 would all end a `sleep`).
    let stranger = KillOnDrop(
        Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("start sleep"),
    );
    let stranger_pid = stranger.0.id();
    std::fs::write(server.pid_path(), format!("{stranger_pid}\n")).expect("write the pid file");
    assert_each_exits(&server, &["status", "stop", "upgrade"], 1, "stale");
    // The same with the state file of the baton that ran before (another pid).
    std::fs::write(server.state_path(), &state).expect("write the old state file");
    assert_each_exits(&server, &["status", "reload"], 1, "stale");
    let mut stranger = stranger;
    assert!(
        stranger.0.try_wait().expect("poll the stranger").is_none(),
        "the process named by the stale pid file was signalled"
    );
}

/// Runs `baton <command>` for each of `commands`: each must exit `code` and say `says`.
fn assert_each_exits(server: &Server, commands: &[&str], code: i32, says: &str) {
    for command in commands {
        let out = server.run_cli(&[command]);
        assert_eq!(out.code, Some(code), "baton {command} ({says:?}):\n{out}");
        assert!(out.stderr.contains(says), "baton {command}:\n{out}");
    }
}
