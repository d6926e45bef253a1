//! Hostile clients against the real binary (issue 9): each `[limits]` bound, the fd reserve,
//! the `Host` and body checks, the admin token and the log limit. Bounds are set short here
//! (a second or so) and each test checks the server closed what it had to well before the
//! default bound would have, with deadlines generous enough for a loaded machine. The attack
//! suite (`examples/hostile`) measures the same bounds under load.

mod support;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

use support::{
    BATON, Config, DEADLINE, RawConn, Server, eventually, metric_value, run, wait_until,
};

/// Within this long a bound of a second or so must have closed the connection: a quarter of
/// the defaults this test's bounds replace (10 s header, 75 s idle, 60 s send), and a dozen
/// times the bound itself, for a loaded machine.
const CLOSED_WITHIN: Duration = Duration::from_secs(8);
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A server whose `[limits]` section is `limits` (TOML lines), the other limits at defaults.
fn start_with(config: &Config, limits: &str) -> Server {
    let mut server = Server::prepare(config);
    server.write_config(&format!("{}\n[limits]\n{limits}\n", config.toml()));
    server.spawn();
    server
}

/// One sample of `/metrics`, 0 when absent.
fn metric(server: &Server, sample: &str) -> f64 {
    metric_value(&server.metrics(), sample).unwrap_or(0.0)
}

fn closed(reason: &str) -> String {
    format!("baton_connections_closed_total{{reason=\"{reason}\"}}")
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// Whether the server closes `stream` within `within`, reading (and dropping) what it sends.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let end = Instant::now() + within;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).expect("read timeout");
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            // Reset: closed with data unread, which is closed too.
            Err(_) => return true,
        }
    }
}

/// Sends `raw` on a new connection and reads one response: status, head, body.
fn exchange(addr: SocketAddr, raw: &[u8]) -> (u16, String, String) {
    let mut stream = connect(addr);
    stream.write_all(raw).expect("send the request");
    read_response(&mut stream)
}

/// Reads one response framed by `Content-Length`: status, head, body.
fn read_response(stream: &mut TcpStream) -> (u16, String, String) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut received = Vec::new();
    let mut byte = [0u8; 1];
    // A byte at a time, so nothing of a next response is consumed.
    while !received.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => received.push(byte[0]),
            _ => panic!(
                "no complete response head; got {:?}",
                String::from_utf8_lossy(&received)
            ),
        }
    }
    let head = String::from_utf8_lossy(&received).into_owned();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .expect("a Content-Length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("the body");
    (
        status.unwrap_or(0),
        head,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[test]
fn silent_connections_and_unfinished_heads_are_cut_at_the_header_bound() {
    let server = start_with(
        &Config::default(),
        "header_read_timeout = \"1s\"\nidle_timeout = \"60s\"",
    );
    let mut silent = connect(server.http);
    let mut partial = connect(server.http);
    partial
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .expect("send half a head");
    let mut preface_only = connect(server.http);
    preface_only
        .write_all(H2_PREFACE)
        .expect("send the preface");
    let mut half_preface = connect(server.http);
    half_preface
        .write_all(&H2_PREFACE[..10])
        .expect("send half the preface");
    // A kept-alive connection whose second head never ends.
    let mut second = connect(server.http);
    second
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send a request");
    assert_eq!(read_response(&mut second).0, 200);
    second
        .write_all(b"GET / HTTP/1.1\r\nHo")
        .expect("send half a head");

    for (what, stream) in [
        ("a silent connection", &mut silent),
        ("an unfinished head", &mut partial),
        ("an HTTP/2 preface without a handshake", &mut preface_only),
        ("half an HTTP/2 preface", &mut half_preface),
        ("an unfinished second head", &mut second),
    ] {
        assert!(
            closed_within(stream, CLOSED_WITHIN),
            "{what} still open after {CLOSED_WITHIN:?}; log:\n{}",
            server.log()
        );
    }
    assert!(metric(&server, &closed("header_timeout")) >= 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_of_both_protocols_are_closed_after_the_idle_bound() {
    let server = start_with(
        &Config::default(),
        "idle_timeout = \"1s\"\nheader_read_timeout = \"30s\"",
    );
    let http = server.http;
    let mut http1 = connect(http);
    http1
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send a request");
    assert_eq!(read_response(&mut http1).0, 200);

    let tcp = tokio::net::TcpStream::connect(http).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.expect("h2 ready");
    let request = axum::http::Request::get(format!("http://{http}/"))
        .body(())
        .expect("a request");
    let (response, _) = client.send_request(request, true).expect("send");
    let response = tokio::time::timeout(DEADLINE, response)
        .await
        .expect("an answer in time")
        .expect("a response");
    assert_eq!(response.status(), 200);
    // Idle from here: the server sends GOAWAY and closes, which ends the client connection.
    let ended = tokio::time::timeout(CLOSED_WITHIN, connection).await;
    assert!(
        ended.is_ok(),
        "an idle HTTP/2 connection still open after {CLOSED_WITHIN:?}"
    );
    drop(client);

    let closed_http1 =
        tokio::task::spawn_blocking(move || closed_within(&mut http1, CLOSED_WITHIN))
            .await
            .expect("the blocking check");
    assert!(closed_http1, "an idle HTTP/1 connection still open");
    let server = tokio::task::spawn_blocking(move || {
        assert!(metric(&server, &closed("idle")) >= 2.0);
        server
    })
    .await
    .expect("the metric check");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_do_not_read_are_cut_at_the_send_bound() {
    let config = Config {
        // About a kilobyte per response, so the socket buffers fill within a few thousand.
        greeting: "x".repeat(1000),
        ..Config::default()
    };
    let server = start_with(
        &config,
        "send_timeout = \"1s\"\nrequests_per_connection = 100000000",
    );
    let http = server.http;

    // HTTP/1: requests pipelined without ever reading a response.
    let writer = std::thread::spawn(move || {
        let mut stream = connect(http);
        stream
            .set_write_timeout(Some(Duration::from_secs(20)))
            .expect("write timeout");
        let requests = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(1000);
        // Stops when the server cuts the connection (or, without the bound, when our own
        // buffers fill and the write times out).
        for _ in 0..100 {
            if stream.write_all(&requests).is_err() {
                break;
            }
        }
        stream
    });

    // HTTP/2: a client whose stream windows are 0, so no response data can ever be sent.
    let tcp = tokio::net::TcpStream::connect(http).await.expect("connect");
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, axum::body::Bytes>(tcp)
        .await
        .expect("h2 handshake");
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.expect("h2 ready");
    let mut responses = Vec::new();
    for _ in 0..10 {
        let request = axum::http::Request::get(format!("http://{http}/"))
            .body(())
            .expect("a request");
        let (response, _) = client.send_request(request, true).expect("send");
        responses.push(response);
        client = client.ready().await.expect("h2 ready");
    }
    let ended = tokio::time::timeout(DEADLINE, connection).await;
    assert!(ended.is_ok(), "a stalled HTTP/2 connection still open");

    // Read nothing before the server gave up: reading would let its writes go on.
    let server = tokio::task::spawn_blocking(move || {
        wait_until(DEADLINE, "two send timeouts in /metrics", || {
            metric(&server, &closed("send_timeout")) >= 2.0
        });
        server
    })
    .await
    .expect("the metric check");
    let mut stream = tokio::task::spawn_blocking(move || writer.join())
        .await
        .expect("join")
        .expect("the writer thread");
    let closed_http1 = tokio::task::spawn_blocking(move || closed_within(&mut stream, DEADLINE))
        .await
        .expect("the blocking check");
    assert!(
        closed_http1,
        "an HTTP/1 client that does not read still connected"
    );
    drop(server);
}

#[test]
fn a_connection_serves_its_quota_of_requests_then_closes() {
    let server = start_with(&Config::default(), "requests_per_connection = 3");
    let mut conn = RawConn::open(server.http).expect("connect");
    for i in 1..=3 {
        let response = conn.get("/").expect("a response");
        assert_eq!(response.status, 200);
        assert_eq!(
            response.closes(),
            i == 3,
            "request {i}: {:?}",
            response.headers
        );
    }
    assert!(conn.closed_by_server());
}

#[test]
fn over_max_connections_new_connections_are_closed_at_once_and_the_admin_listener_answers() {
    let server = start_with(
        &Config::default(),
        "max_connections = 3\nheader_read_timeout = \"60s\"",
    );
    // The harness's readiness probe was a connection too: until the server has seen it close,
    // it holds one of the three places, and the third connection below would be refused.
    wait_until(
        DEADLINE,
        "the readiness probe's connection to be closed",
        || {
            // The /metrics request itself is the one connection left.
            metric(&server, "baton_open_connections") <= 1.0
        },
    );
    let mut held: Vec<TcpStream> = (0..3).map(|_| connect(server.http)).collect();
    wait_until(DEADLINE, "the three connections to be open", || {
        // The /metrics request itself is an admin connection.
        metric(&server, "baton_open_connections") >= 4.0
    });
    let mut extra = connect(server.http);
    assert!(
        closed_within(&mut extra, CLOSED_WITHIN),
        "a connection over max_connections was kept"
    );
    assert!(metric(&server, "baton_connections_rejected_total") >= 1.0);
    assert_eq!(server.status()["phase"], "serving");

    // A place freed is a place taken again.
    held.pop();
    wait_until(DEADLINE, "a new connection to be served", || {
        server.try_get("/").is_ok_and(|r| r.status == 200)
    });
}

#[test]
fn http11_needs_one_host_and_bodies_are_bounded() {
    let server = start_with(&Config::default(), "max_body_bytes = 1000");
    let http = server.http;
    let (status, head, _) = exchange(http, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(status, 400, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    let (status, _, body) = exchange(http, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
    assert_eq!(status, 400);
    assert!(body.contains("exactly one Host"), "{body}");
    let (status, _, _) = exchange(http, b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(status, 200, "HTTP/1.0 needs no Host");

    // Announced too large: refused before the body is sent.
    let (status, _, body) = exchange(
        http,
        b"POST /api/items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 5000\r\n\r\n",
    );
    assert_eq!(status, 413, "{body}");
    // Streamed, with no length: cut where it passes the limit.
    let name = "n".repeat(1500);
    let json = format!("{{\"name\": \"{name}\"}}");
    let mut chunked = b"POST /api/items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                        Transfer-Encoding: chunked\r\n\r\n"
        .to_vec();
    for chunk in json.as_bytes().chunks(100) {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (status, _, body) = exchange(http, &chunked);
    assert_eq!(status, 413, "{body}");
}

#[test]
fn an_exposed_admin_listener_needs_a_token_and_checks_it() {
    let exposed = Server::prepare(&Config {
        admin: Some("0.0.0.0:0".into()),
        ..Config::default()
    });
    let out = exposed.run_baton(&["check"]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("admin.token"), "{out}");
    assert!(out.stderr.contains("BATON_ADMIN__TOKEN"), "{out}");
    let mut with_token = exposed.command(Path::new(BATON));
    with_token
        .arg("check")
        .env("BATON_ADMIN__TOKEN", "a-long-random-token");
    let out = run(with_token, support::CLI_DEADLINE);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("token = \"[redacted]\""), "{out}");
    assert!(!out.stdout.contains("a-long-random-token"), "{out}");

    let config = Config::default();
    let mut server = Server::prepare(&config);
    server.write_config(
        &config
            .toml()
            .replace("[admin]\n", "[admin]\ntoken = \"adm1n-t0ken\"\n"),
    );
    server.spawn();
    let admin = server.admin.expect("the admin listener");
    let get = |auth: &str| {
        exchange(
            admin,
            format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{auth}\r\n").as_bytes(),
        )
        .0
    };
    assert_eq!(get(""), 401);
    assert_eq!(get("Authorization: Bearer nope\r\n"), 401);
    assert_eq!(get("Authorization: Bearer adm1n-t0ken\r\n"), 200);
}

/// With the fd limit low and the public listener flooded past it, the admin listener answers,
/// and a reload and an upgrade still work: public connections stop short of a reserve.
#[test]
#[allow(
    unsafe_code,
    reason = "pre_exec lowers the child's fd limit, as a shell's `ulimit -n` would"
)]
fn a_flood_past_the_fd_limit_leaves_the_lifecycle_its_fds() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    const SOFT: u64 = 300;
    const HARD: u64 = 400;
    const FLOOD: usize = 450;
    // Our own end of the flood needs the fds too.
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("raise our own fd limit");
    }
    assert!(
        hard >= FLOOD as u64 + 200,
        "this test needs an fd limit of at least {} (ulimit -Hn is {hard})",
        FLOOD + 200
    );

    let config = Config::default();
    let mut server = Server::prepare(&config);
    server.write_config(&format!(
        "{}\n[limits]\nheader_read_timeout = \"60s\"\n",
        config.toml()
    ));
    server.spawn_with(|command| {
        // SAFETY: setrlimit is async-signal-safe and touches nothing but the new process.
        unsafe {
            command.pre_exec(|| {
                setrlimit(Resource::RLIMIT_NOFILE, SOFT, HARD).map_err(io::Error::from)
            });
        }
    });
    let pid = server.current_pid();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    assert_eq!(
        open_files.split_whitespace().nth(3),
        Some("400"),
        "the soft limit was raised to the hard one: {open_files}"
    );
    assert!(server.log().contains("raised_from=300"), "{}", server.log());

    let flood: Vec<TcpStream> = (0..FLOOD)
        .filter_map(|_| TcpStream::connect_timeout(&server.http, Duration::from_secs(5)).ok())
        .collect();
    assert!(flood.len() > 200, "only {} connections opened", flood.len());
    wait_until(DEADLINE, "connections over the cap to be rejected", || {
        metric(&server, "baton_connections_rejected_total") >= 100.0
    });
    assert_eq!(server.status()["phase"], "serving");
    let reload = server.run_cli(&["reload"]);
    assert_eq!(
        reload.code,
        Some(0),
        "baton reload:\n{reload}\nlog:\n{}",
        server.log()
    );
    let (old, new) = server.upgrade();
    assert_ne!(old, new);
    assert!(
        eventually(DEADLINE, || server.status()["pid"] == new),
        "the new generation serves the admin listener"
    );
    drop(flood);
}

/// An HTTP/2 reset flood makes h2 warn once per connection; the log shows a few and sums up
/// the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_flood_cannot_flood_the_log() {
    const CONNECTIONS: usize = 40;
    const WARNING: &str = "remotely-reset pending-accept streams reached limit";
    let server = tokio::task::spawn_blocking(|| Server::start(&Config::default()))
        .await
        .expect("start");
    let http = server.http;
    for _ in 0..CONNECTIONS {
        let Ok(tcp) = tokio::net::TcpStream::connect(http).await else {
            continue;
        };
        let Ok((client, connection)) = h2::client::handshake(tcp).await else {
            continue;
        };
        let connection = tokio::spawn(connection);
        let Ok(mut client) = client.ready().await else {
            continue;
        };
        // Requests reset at once, all in one burst: none is accepted before its reset arrives.
        for _ in 0..100 {
            let request = axum::http::Request::get(format!("http://{http}/api/slow?ms=1000"))
                .body(())
                .expect("a request");
            match client.send_request(request, false) {
                Ok((_, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
                Err(_) => break,
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
    }
    let server = tokio::task::spawn_blocking(move || {
        let warnings = |log: &str| {
            log.lines()
                .filter(|l| l.contains(WARNING) && !l.contains("similar messages"))
                .count()
        };
        let warned = warnings(&server.log());
        assert!(
            warned > 0,
            "the flood never made h2 warn; log:\n{}",
            server.log()
        );
        // Each window shows 10 warnings per call site at most, and sums up the rest.
        wait_until(
            Duration::from_secs(40),
            "the summary of suppressed warnings",
            || server.log().contains("similar messages in the last 10 s"),
        );
        let warned = warnings(&server.log());
        assert!(
            warned <= 2 * baton::log_limit::BUDGET as usize + 1,
            "{warned} warnings for {CONNECTIONS} connections"
        );
        server
    })
    .await
    .expect("the log check");
    drop(server);
}
