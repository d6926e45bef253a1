//! Traces over OTLP/HTTP (feature `otel`) with the real binary and a small collector started
//! here: a request's span reaches the collector, as a child of the caller's `traceparent`,
//! with the resource attributes, and the spans of a generation are exported after its drain,
//! before it exits.
//!
//! `cargo test --features otel --test otel`
#![cfg(feature = "otel")]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;

use nix::sys::signal::Signal;
use support::{Config, DEADLINE, Server};

/// The caller's trace: a request with this `traceparent` must be exported under this trace id.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// An OTLP/HTTP collector on loopback: answers every POST with 200 and hands on its body.
struct Collector {
    addr: SocketAddr,
    bodies: Receiver<(String, Vec<u8>)>,
}

impl Collector {
    fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the collector");
        let addr = listener.local_addr().expect("its address");
        let (tx, bodies) = channel();
        std::thread::spawn(move || {
            // Ends with the test process; each connection is bounded by its read timeout.
            for stream in listener.incoming().flatten() {
                let tx = tx.clone();
                std::thread::spawn(move || serve(stream, &tx));
            }
        });
        Collector { addr, bodies }
    }

    /// Bodies posted to `/v1/traces` until `deadline`, concatenated.
    fn traces_until(&self, deadline: Duration, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let until = std::time::Instant::now() + deadline;
        let mut all = Vec::new();
        while !done(&all) {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match self.bodies.recv_timeout(left) {
                Ok((path, body)) if path == "/v1/traces" => all.extend(body),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        all
    }
}

/// One HTTP/1.1 connection: requests with a `Content-Length` body, each answered 200.
fn serve(stream: TcpStream, tx: &Sender<(String, Vec<u8>)>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut writer = stream.try_clone().expect("clone the stream");
    let mut reader = BufReader::new(stream);
    for _ in 0..1000 {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let mut length = 0;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let _ = tx.send((path, body));
        let answer =
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

#[test]
fn request_spans_reach_the_collector_by_the_time_the_process_exits() {
    let collector = Collector::start();
    let config = Config::default();
    let mut server = Server::prepare(&config);
    server.write_config(&config.toml().replace(
        "format = \"text\"",
        &format!(
            "format = \"text\"\notlp_endpoint = \"http://{}\"",
            collector.addr
        ),
    ));
    server.spawn();

    let mut conn = TcpStream::connect(server.http).expect("connect");
    conn.set_read_timeout(Some(DEADLINE))
        .expect("a read timeout");
    let request = format!(
        "GET /api/items/42 HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
         traceparent: 00-{TRACE_ID}-{PARENT}-01\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).expect("send");
    let mut response = String::new();
    conn.read_to_string(&mut response).expect("a response");
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");

    // The batch exporter holds the span (its delay is seconds); the drain's end sends it.
    let pid = server.current_pid();
    server.signal(Signal::SIGTERM);
    server.wait_gone(pid);
    let trace_id = hex(TRACE_ID);
    let traces = collector.traces_until(DEADLINE, |all| contains(all, &trace_id));
    assert!(
        contains(&traces, &trace_id),
        "no span of trace {TRACE_ID} reached the collector ({} bytes); log:\n{}",
        traces.len(),
        server.log()
    );
    for text in [
        "GET /api/items/{id}",
        "baton",
        "service.version",
        "baton.generation",
        "process.pid",
    ] {
        assert!(
            contains(&traces, text.as_bytes()),
            "no {text:?} in the exported spans; log:\n{}",
            server.log()
        );
    }
    assert!(
        contains(&traces, &hex(PARENT)),
        "the caller's span is the parent"
    );
}
