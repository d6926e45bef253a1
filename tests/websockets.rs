//! Long-lived connections through real upgrades (issue 12): the real binary, real WebSocket
//! frames (tokio-tungstenite), real `baton upgrade`s and SIGUSR2s. The harness is in
//! `support/`.
//!
//! The clients (`ws_clients/mod.rs`) keep the client side of the contract
//! (`src/app/routes/ws.rs`): on Close 1001 they answer it, reconnect to the same address after
//! a short jittered back-off, and send again what got no echo. Stubborn clients do the
//! opposite: they never read again, so they never answer the close.

mod support;
mod ws_clients;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use nix::sys::signal::Signal;
use support::{Config, DEADLINE, KillOnDrop, Server, eventually, wait_for, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;
use ws_clients::{
    Ended, Fleet, GOING_AWAY_REASON, MAX_JITTER_MS, assert_nothing_lost, close, connect,
    finish_closing, open_stubborn, runtime,
};

/// Sends `GET path` on a new HTTP/1.1 connection and reads what arrives first (at least the
/// response head); the connection stays open for the caller.
async fn request_first_bytes(addr: std::net::SocketAddr, path: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .expect("send the request");
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("no answer to GET {path} in time"))
        .expect("read the answer");
    (stream, String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Drains that outlast every test (clients that ignore the close hold them), and upgrades one
/// after another: a short probation.
fn long_drains() -> Config {
    Config {
        shutdown_timeout: "120s".into(),
        probation: "300ms".into(),
        ..Config::default()
    }
}

/// `/-/status` of the serving generation: its open long-lived responses and the draining
/// generations it lists, as (pid, long-lived) pairs, oldest first.
fn status_of(server: &Server) -> (u64, Vec<(u32, u64)>) {
    let status = server.status();
    let draining = status["draining"]
        .as_array()
        .expect("/-/status lists the draining generations")
        .iter()
        .map(|d| {
            let pid = d["pid"].as_u64().and_then(|p| u32::try_from(p).ok());
            (
                pid.expect("a pid"),
                d["long_lived"].as_u64().expect("a count"),
            )
        })
        .collect();
    let open = status["open_long_lived"].as_u64().expect("a count");
    (open, draining)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The `baton serve` processes of this deployment (not the `baton upgrade` commands).
fn servers_here(server: &Server) -> usize {
    server
        .processes_here()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.split(|b| *b == 0).any(|arg| arg == b"serve"))
        })
        .count()
}

fn hammer_lines(server: &Server) -> Vec<String> {
    server
        .log()
        .lines()
        .filter(|l| l.contains("hammer:"))
        .map(str::to_owned)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// As a user would: a client connected through `baton upgrade` is told 1001 with a reason to
/// reconnect, reconnects, and the new generation serves it.
#[test]
fn a_websocket_is_told_1001_at_an_upgrade_and_the_new_generation_serves_its_reconnection() {
    let server = Server::start(&Config::default());
    let runtime = runtime();
    let mut ws = runtime.block_on(async {
        let mut ws = connect(server.http).await.expect("connect");
        ws.send(Message::text("before")).await.expect("send");
        let echo = tokio::time::timeout(DEADLINE, ws.next()).await;
        assert!(
            matches!(&echo, Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "before"),
            "{echo:?}"
        );
        ws
    });
    assert_eq!(status_of(&server).0, 1, "the socket holds a lease");

    let (old, new) = server.upgrade();
    runtime.block_on(async {
        let close = tokio::time::timeout(DEADLINE, ws.next()).await;
        match close {
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                assert_eq!(frame.code, CloseCode::Away);
                assert_eq!(frame.reason.as_str(), GOING_AWAY_REASON);
            }
            other => panic!("expected Close 1001, got {other:?}"),
        }
        assert!(matches!(finish_closing(&mut ws).await, Ended::GoingAway));
    });
    server.wait_gone(old);

    let mut ws = runtime.block_on(async {
        let mut ws = connect(server.http).await.expect("reconnect");
        ws.send(Message::text("after")).await.expect("send");
        let echo = tokio::time::timeout(DEADLINE, ws.next()).await;
        assert!(
            matches!(&echo, Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "after"),
            "{echo:?}"
        );
        ws
    });
    assert_eq!(server.current_pid(), new);
    assert_eq!(
        status_of(&server),
        (1, vec![]),
        "the new generation holds it"
    );
    runtime.block_on(async { assert!(matches!(close(&mut ws).await, Ended::Done)) });
    assert!(hammer_lines(&server).is_empty(), "nothing was cut");
}

/// Issue 12's fleet: 200 clients, a message every 50 ms each, through 10 upgrades. Every
/// client gets 1001 at each upgrade (never a reset or an abnormal close), reconnects, and
/// every message it sent is echoed exactly once. Prints the figures for the note;
/// `WS_FLEET_CLIENTS` and `WS_FLEET_UPGRADES` change the sizes (BENCHMARKS.md).
#[test]
fn two_hundred_clients_through_ten_upgrades_lose_no_message() {
    let size = |var: &str, default: u64| {
        std::env::var(var)
            .ok()
            .map_or(default, |v| v.parse().expect("a number"))
    };
    let clients = size("WS_FLEET_CLIENTS", 200);
    let upgrades = size("WS_FLEET_UPGRADES", 10);
    let server = Server::start(&Config {
        probation: "500ms".into(),
        ..Config::default()
    });
    let fleet = Fleet::start(server.http, clients as usize, Duration::from_millis(50));
    let mut signalled = Vec::new();
    let mut all_back = Vec::new();
    let mut old_exit = Vec::new();
    for upgrade in 1..=upgrades {
        let old = server.current_pid();
        let at = Instant::now();
        server.signal(Signal::SIGUSR2);
        server.wait_pid_file_change(old);
        let what = format!("every client told 1001 and back after upgrade {upgrade}");
        wait_until(DEADLINE, &what, || {
            fleet.going_away() == upgrade * clients && fleet.connected() as u64 == clients
        });
        all_back.push(at.elapsed());
        server.wait_gone(old);
        old_exit.push(at.elapsed());
        signalled.push(at);
    }
    let tallies = fleet.finish();
    assert_nothing_lost(&tallies, upgrades);
    assert!(
        hammer_lines(&server).is_empty(),
        "{:?}",
        hammer_lines(&server)
    );

    // Figures: each client's k-th reconnection against the k-th SIGUSR2.
    let mut from_signal: Vec<Duration> = tallies
        .iter()
        .flat_map(|t| {
            t.reconnected_at
                .iter()
                .zip(&signalled)
                .map(|(back, signal)| back.duration_since(*signal))
        })
        .collect();
    let mut reconnect: Vec<Duration> = tallies
        .iter()
        .flat_map(|t| t.reconnect_times.iter().copied())
        .collect();
    from_signal.sort();
    reconnect.sort();
    all_back.sort();
    old_exit.sort();
    let sent: u64 = tallies.iter().map(|t| t.sent).sum();
    let echoed: u64 = tallies.iter().map(|t| t.echoed).sum();
    let resent: u64 = tallies.iter().map(|t| t.resent).sum();
    eprintln!(
        "figures: {clients} clients x {upgrades} upgrades: {sent} messages sent, {echoed} echoed, \
         {} lost, {resent} sent again after crossing a close\n\
         figures: SIGUSR2 -> client reconnected: p50 {:?}, p99 {:?}, max {:?}\n\
         figures: Close 1001 -> reconnected (incl. 0-{MAX_JITTER_MS} ms jitter): p50 {:?}, p99 {:?}\n\
         figures: SIGUSR2 -> all {clients} reconnected: p50 {:?}, max {:?}\n\
         figures: SIGUSR2 -> old generation exited (probation 500ms): p50 {:?}, max {:?}",
        sent - echoed,
        percentile(&from_signal, 0.5),
        percentile(&from_signal, 0.99),
        from_signal.last().copied().unwrap_or_default(),
        percentile(&reconnect, 0.5),
        percentile(&reconnect, 0.99),
        percentile(&all_back, 0.5),
        all_back.last().copied().unwrap_or_default(),
        percentile(&old_exit, 0.5),
        old_exit.last().copied().unwrap_or_default(),
    );
}

/// A WebSocket handshake that reaches a draining generation on a keep-alive connection (the
/// lame duck still serves those) completes, so the client learns the usual way, with 1001,
/// that it must move: `Connection: close`, which every other response gets then, would replace
/// the handshake's `Connection: upgrade` and make the client fail it.
#[test]
fn a_handshake_on_a_draining_generation_completes_and_is_told_1001() {
    let server = Server::start(&Config {
        lame_duck: "5s".into(),
        probation: "300ms".into(),
        ..Config::default()
    });
    let runtime = runtime();
    let addr = server.http;
    let stream = runtime.block_on(async move {
        let (stream, head) = request_first_bytes(addr, "/healthz").await;
        let head = head.to_lowercase();
        assert!(
            head.starts_with("http/1.1 200") && !head.contains("connection: close"),
            "{head}"
        );
        stream
    });
    let (old, _new) = server.upgrade();
    assert!(
        !server.gone(old),
        "the keep-alive connection holds the lame duck open"
    );
    let told = runtime.block_on(async move {
        let (mut ws, response) = tokio::time::timeout(
            DEADLINE,
            tokio_tungstenite::client_async(format!("ws://{addr}/api/ws"), stream),
        )
        .await
        .expect("the handshake in time")
        .expect("the handshake on the draining generation");
        assert_eq!(response.status(), 101);
        tokio::time::timeout(DEADLINE, ws.next()).await
    });
    assert!(
        matches!(&told, Ok(Some(Ok(Message::Close(Some(f))))) if f.code == CloseCode::Away),
        "{told:?}"
    );
}

/// A client that never answers the close keeps its generation only until
/// `lifecycle.shutdown_timeout`, where it is cut and counted; a polite one beside it moves
/// at once.
#[test]
fn a_client_that_never_answers_the_close_is_cut_at_the_deadline_and_counted() {
    let server = Server::start(&Config {
        shutdown_timeout: "3s".into(),
        probation: "300ms".into(),
        ..Config::default()
    });
    let fleet = Fleet::start(server.http, 1, Duration::from_millis(50));
    let stubborn = open_stubborn(&fleet.runtime, server.http, 1);
    let (old, _new) = server.upgrade();
    let upgraded = Instant::now();
    wait_until(DEADLINE, "the polite client to move", || {
        fleet.going_away() == 1 && fleet.connected() == 1
    });
    assert!(
        !server.gone(old),
        "the stubborn client holds the old generation"
    );
    server.wait_gone(old);
    // The deadline counts from the start of the drain, a little before `baton upgrade`
    // returned (it waits for the 300 ms probation).
    assert!(
        upgraded.elapsed() >= Duration::from_secs(2),
        "cut after {:?}, before the 3 s deadline",
        upgraded.elapsed()
    );
    let hammer = hammer_lines(&server);
    assert_eq!(hammer.len(), 1, "{hammer:?}");
    assert!(
        hammer[0].contains("cut_long_lived=1") && hammer[0].contains("drain deadline reached"),
        "{hammer:?}"
    );
    // It was told, like every client; it just never answered.
    let told = fleet.runtime.block_on(async {
        let mut ws = stubborn.into_iter().next().expect("one stubborn client");
        tokio::time::timeout(DEADLINE, ws.next()).await
    });
    assert!(
        matches!(&told, Ok(Some(Ok(Message::Close(Some(f))))) if f.code == CloseCode::Away),
        "{told:?}"
    );
    assert_nothing_lost(&fleet.finish(), 1);
}

/// Upgrades never wait for an old generation's long drain: with clients that ignore the close
/// on every generation, each upgrade is accepted at once, up to `upgrade.max_draining` (2)
/// generations drain side by side, and only the one too many, the oldest, is hammered, its
/// cut counted. `/-/status` lists the draining generations.
#[test]
fn clients_that_ignore_the_close_never_block_an_upgrade_and_the_oldest_beyond_max_draining_is_cut()
{
    const STUBBORN: usize = 5;
    let server = Server::start(&long_drains());
    let runtime = runtime();
    let mut held = Vec::new();
    let mut generations = vec![server.first_pid()];
    for upgrade in 1..=3 {
        held.extend(open_stubborn(&runtime, server.http, STUBBORN));
        assert_eq!(status_of(&server).0, STUBBORN as u64);
        let at = Instant::now();
        let (old, new) = server.upgrade();
        assert_eq!(old, *generations.last().expect("a generation"));
        assert!(
            at.elapsed() < Duration::from_secs(30),
            "upgrade {upgrade} waited {:?} for an old drain",
            at.elapsed()
        );
        generations.push(new);
        if upgrade == 2 {
            // Two draining: the limit, not beyond it. Nobody is cut.
            let both = vec![
                (generations[0], STUBBORN as u64),
                (generations[1], STUBBORN as u64),
            ];
            wait_until(
                DEADLINE,
                "/-/status to list both draining generations",
                || status_of(&server).1 == both,
            );
            assert!(
                !eventually(Duration::from_secs(1), || server.gone(generations[0])),
                "the oldest must not be cut while only 2 drain"
            );
            assert!(
                hammer_lines(&server).is_empty(),
                "{:?}",
                hammer_lines(&server)
            );
            let status = server.run_cli(&["status"]);
            for (generation, pid) in [(1, generations[0]), (2, generations[1])] {
                let listed = format!("pid {pid} (generation {generation}, ");
                assert!(status.stdout.contains(&listed), "{listed} in:\n{status}");
            }
        }
    }
    // The third upgrade made 3 draining: the oldest ends its drain now, not in 120 s.
    server.wait_gone(generations[0]);
    let hammer = hammer_lines(&server);
    assert_eq!(hammer.len(), 1, "{hammer:?}");
    assert!(
        hammer[0].contains(&format!("cut_long_lived={STUBBORN}"))
            && hammer[0].contains("upgrade.max_draining is 2"),
        "{hammer:?}"
    );
    let two_newest = vec![
        (generations[1], STUBBORN as u64),
        (generations[2], STUBBORN as u64),
    ];
    wait_until(
        DEADLINE,
        "/-/status to list the two newest draining",
        || status_of(&server).1 == two_newest,
    );
    assert!(!server.gone(generations[1]) && !server.gone(generations[2]));
    // The first generation's stubborn clients were told 1001, then cut.
    runtime.block_on(async {
        let ws = &mut held[0];
        let told = tokio::time::timeout(DEADLINE, ws.next()).await;
        assert!(
            matches!(&told, Ok(Some(Ok(Message::Close(Some(f))))) if f.code == CloseCode::Away),
            "{told:?}"
        );
        let cut = tokio::time::timeout(DEADLINE, ws.next()).await;
        assert!(matches!(cut, Ok(None | Some(Err(_)))), "{cut:?}");
    });
}

/// A burst of upgrades with long drains (clients that ignore the close on every generation)
/// never piles processes up: besides the serving process and the one starting, at most
/// `upgrade.max_draining` (2) old generations live, give or take one for the moment it takes
/// the oldest to see a newer record (`draining`'s period) and exit. Prints the figures.
#[test]
fn a_burst_of_upgrades_with_long_drains_keeps_the_process_count_bounded() {
    const UPGRADES: usize = 8;
    const MAX_DRAINING: usize = 2;
    let server = Server::start(&long_drains());
    let runtime = runtime();
    let mut held = Vec::new();
    let sampling = CancellationToken::new();
    let sampler = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut most = 0;
            // Bounded: the burst takes seconds; 5 minutes of samples is far beyond it.
            for _ in 0..15_000 {
                if sampling.is_cancelled() {
                    break;
                }
                most = most.max(servers_here(&server));
                std::thread::sleep(Duration::from_millis(20));
            }
            most
        });
        let started = Instant::now();
        for _ in 0..UPGRADES {
            held.extend(open_stubborn(&runtime, server.http, 2));
            server.upgrade();
        }
        let burst = started.elapsed();
        wait_until(DEADLINE, "the burst to settle at the limit", || {
            servers_here(&server) == 1 + MAX_DRAINING
        });
        sampling.cancel();
        let most = sampler.join().expect("the sampler");
        (most, burst)
    });
    let (most, burst) = sampler;
    let hammered = hammer_lines(&server).len();
    eprintln!(
        "figures: {UPGRADES} upgrades in {burst:?}, each leaving a generation that drains for \
         120 s: at most {most} baton processes alive at once (1 serving, up to 1 starting, \
         max_draining {MAX_DRAINING}); {hammered} oldest generations hammered"
    );
    assert_eq!(
        hammered,
        UPGRADES - MAX_DRAINING,
        "each upgrade past the limit cut one"
    );
    assert!(
        most <= MAX_DRAINING + 3,
        "{most} processes alive at once, limit {MAX_DRAINING} draining"
    );
    let (_, draining) = status_of(&server);
    assert_eq!(draining.len(), MAX_DRAINING, "{draining:?}");
    drop(held);
}

/// Stop means stop with overlapping drains too: `baton stop` waits for every old generation
/// still draining, not only for the previous one. Here the oldest drains longest (its
/// `lifecycle.shutdown_timeout` was 8 s; the next generation's is reloaded to 2 s).
#[test]
fn stop_waits_for_every_draining_generation() {
    let long = Config {
        shutdown_timeout: "8s".into(),
        probation: "300ms".into(),
        ..Config::default()
    };
    let server = Server::start(&long);
    let runtime = runtime();
    let mut held = open_stubborn(&runtime, server.http, 1);
    let (first, second) = server.upgrade();
    server.write_config(
        &Config {
            shutdown_timeout: "2s".into(),
            ..long
        }
        .toml(),
    );
    let reload = server.run_cli(&["reload"]);
    assert_eq!(reload.code, Some(0), "{reload}");
    held.extend(open_stubborn(&runtime, server.http, 1));
    let (_, third) = server.upgrade();
    let out = server.run_cli(&["stop"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        out.stdout.trim(),
        format!("stopped {third} {second} {first}"),
        "{out}"
    );
    assert_eq!(
        servers_here(&server),
        0,
        "nothing is left once stop returns"
    );
    drop(held);
}

/// The same in supervised mode, whose old workers drain like old generations, here with
/// `upgrade.max_draining = 1`: one old worker may drain beside the current one; the next
/// upgrade makes the oldest end its drain.
#[test]
fn supervised_old_workers_drain_side_by_side_up_to_max_draining() {
    const STUBBORN: usize = 3;
    let config = long_drains();
    let mut server = Server::prepare(&config);
    server.write_config(&config.toml().replace(
        "probation = \"300ms\"\n",
        "probation = \"300ms\"\nmax_draining = 1\n",
    ));
    let log = std::fs::File::create(server.log_path()).expect("create the log");
    let mut command = server.command(&server.bin());
    command
        .args(["serve", "--supervise"])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("clone the log handle"))
        .stderr(log);
    let _supervisor = KillOnDrop(command.spawn().expect("start baton serve --supervise"));
    let record = wait_for(DEADLINE, "the first worker's state file", || {
        server.record().filter(|r| r.listener("admin").is_some())
    });
    server.http = record.listener("http").expect("an http listener");
    server.admin = record.listener("admin");
    wait_until(DEADLINE, "the supervisor's pid file", || {
        server.read_pid_file().is_some()
    });

    let runtime = runtime();
    let mut held = open_stubborn(&runtime, server.http, STUBBORN);
    let (first, second) = server.upgrade();
    wait_until(
        DEADLINE,
        "/-/status to list the first worker draining",
        || status_of(&server).1 == vec![(first, STUBBORN as u64)],
    );
    held.extend(open_stubborn(&runtime, server.http, STUBBORN));
    let (from, third) = server.upgrade();
    assert_eq!(from, second);
    server.wait_gone(first);
    let hammer = hammer_lines(&server);
    assert_eq!(hammer.len(), 1, "{hammer:?}");
    assert!(
        hammer[0].contains(&format!("cut_long_lived={STUBBORN}"))
            && hammer[0].contains("upgrade.max_draining is 1"),
        "{hammer:?}"
    );
    wait_until(DEADLINE, "/-/status to list the second worker only", || {
        status_of(&server).1 == vec![(second, STUBBORN as u64)]
    });
    assert_eq!(
        status_of(&server).0,
        0,
        "the third worker ({third}) holds nothing yet"
    );
    drop(held);
}

/// Server-Sent Events likewise: the stream ends with `event: draining` at the upgrade, and a
/// new stream is served by the new generation.
#[test]
fn an_event_stream_gets_a_draining_event_and_its_reconnection_is_served_by_the_new_generation() {
    let server = Server::start(&Config::default());
    let runtime = runtime();
    let addr = server.http;
    let mut stream = runtime.block_on(async move {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET /api/events?interval_ms=50 HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .expect("send the request");
        stream
    });
    let mut seen = String::new();
    let mut read_until = |needle: &str, seen: &mut String| {
        runtime.block_on(async {
            let mut buf = [0u8; 4096];
            while !seen.contains(needle) {
                let n = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
                    .await
                    .unwrap_or_else(|_| panic!("no {needle:?} in time; got {seen:?}"))
                    .expect("read the stream");
                assert!(n > 0, "the stream ended before {needle:?}: {seen:?}");
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    read_until("event: tick", &mut seen);
    assert_eq!(status_of(&server).0, 1, "the stream holds a lease");
    let (old, new) = server.upgrade();
    read_until("event: draining", &mut seen);
    assert!(
        seen.contains("data: server is draining; reconnect"),
        "{seen:?}"
    );
    server.wait_gone(old);

    let mut again = runtime.block_on(async move {
        let (stream, first) = request_first_bytes(addr, "/api/events?interval_ms=50").await;
        assert!(first.contains("200 OK"), "{first}");
        stream
    });
    assert_eq!(server.current_pid(), new);
    assert_eq!(
        status_of(&server),
        (1, vec![]),
        "the new generation serves it"
    );
    runtime.block_on(async { again.shutdown().await.expect("close") });
    assert!(
        hammer_lines(&server).is_empty(),
        "{:?}",
        hammer_lines(&server)
    );
}

/// `limits.stream_lifetime` (issue 9's bound on long-lived responses): a socket open that long
/// is told 1001 while the same process keeps serving, and clients that never answer that close
/// are cut `limits.send_timeout` later, so none holds its place forever.
#[test]
fn a_websocket_is_told_to_reconnect_at_its_lifetime_and_one_that_never_answers_is_cut() {
    let config = Config::default();
    let mut server = Server::prepare(&config);
    server.write_config(&format!(
        "{}\n[limits]\nstream_lifetime = \"2s\"\nsend_timeout = \"1s\"\n",
        config.toml()
    ));
    server.spawn();
    let pid = server.first_pid();
    let runtime = runtime();
    let stubborn = open_stubborn(&runtime, server.http, 3);
    let opened = Instant::now();
    runtime.block_on(async {
        let mut ws = connect(server.http).await.expect("connect");
        ws.send(Message::text("hello")).await.expect("send");
        let echo = tokio::time::timeout(DEADLINE, ws.next()).await;
        assert!(
            matches!(&echo, Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "hello"),
            "{echo:?}"
        );
        match tokio::time::timeout(DEADLINE, ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                assert_eq!(frame.code, CloseCode::Away);
                assert_eq!(frame.reason.as_str(), GOING_AWAY_REASON);
            }
            other => panic!("expected Close 1001 at the lifetime, got {other:?}"),
        }
        assert!(matches!(finish_closing(&mut ws).await, Ended::GoingAway));
    });
    assert!(
        opened.elapsed() >= Duration::from_secs(2),
        "told before its lifetime: {:?}",
        opened.elapsed()
    );
    assert_eq!(server.current_pid(), pid, "no upgrade, no drain");
    wait_until(DEADLINE, "the stubborn sockets cut", || {
        status_of(&server).0 == 0
    });
    assert_eq!(server.current_pid(), pid);
    drop(stubborn);
}
