//! Load runs against servers with known behaviour: every request is counted once, under the
//! right kind, and runs end by their bounds.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response as HyperResponse;
use loadgen::{FailureKind, Load, LoadConfig, Mode, Report};
use support::Proto;

/// Waits for a run with a bound, so a bug shows as a failure instead of a hung test.
async fn finish(load: Load) -> Report {
    tokio::time::timeout(Duration::from_secs(60), load.wait())
        .await
        .expect("the run ends by its own bounds")
}

fn config(addr: SocketAddr, mode: Mode, connections: usize, max_requests: u64) -> LoadConfig {
    LoadConfig {
        mode,
        connections,
        max_requests: Some(max_requests),
        max_duration: Duration::from_secs(30),
        ..LoadConfig::new(addr)
    }
}

/// Every request is counted once and has one sample, in start order.
fn assert_consistent(report: &Report, expected_total: u64) {
    assert_eq!(report.total(), expected_total, "{report}");
    assert_eq!(report.samples.len() as u64, expected_total, "{report}");
    assert_eq!(report.samples_dropped, 0);
    assert!(
        report
            .samples
            .windows(2)
            .all(|pair| pair[0].start_us <= pair[1].start_us)
    );
    let failed_samples = report.samples.iter().filter(|sample| !sample.ok).count() as u64;
    assert_eq!(failed_samples, report.failed(), "{report}");
    let connects: u64 = report.samples.iter().map(|s| u64::from(s.connects)).sum();
    assert_eq!(
        connects, report.connects,
        "each connect is on one sample: {report}"
    );
    assert_eq!(report.connects_in(None), report.connects);
}

/// All requests failed, and all with `kind`.
fn assert_all_failed_with(report: &Report, kind: FailureKind) {
    assert_eq!(report.ok, 0, "{report}");
    assert_eq!(report.failed_of(kind), report.total(), "{report}");
    assert!(!report.first_failures.is_empty());
    assert!(
        report
            .first_failures
            .iter()
            .all(|detail| detail.failure.kind() == kind)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_is_all_ok_on_one_connection_per_worker() {
    let server = support::hyper_server(Proto::Http1, support::hello).await;
    let report = finish(loadgen::start(config(
        server.addr,
        Mode::KeepAlive,
        4,
        2_000,
    )))
    .await;
    assert_consistent(&report, 2_000);
    assert_eq!(report.ok, 2_000, "{report}");
    assert_eq!(
        report.connects, 4,
        "keep-alive must reuse connections: {report}"
    );
    assert!(report.quantile(0.5, None).is_some());
    assert!(report.throughput(None) > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_mode_opens_one_connection_per_request() {
    let server = support::hyper_server(Proto::Http1, support::hello).await;
    let report = finish(loadgen::start(config(server.addr, Mode::Close, 4, 300))).await;
    assert_consistent(&report, 300);
    assert_eq!(report.ok, 300, "{report}");
    assert_eq!(report.connects, 300, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_speaks_h2c_on_one_connection_per_worker() {
    // The server answers 505 to anything but HTTP/2, so "all ok" proves the protocol.
    let server = support::hyper_server(Proto::H2c, |request| {
        let status = if request.version() == hyper::Version::HTTP_2 {
            200
        } else {
            505
        };
        HyperResponse::builder()
            .status(status)
            .body(Full::new(Bytes::from("h2")))
            .expect("valid response")
    })
    .await;
    let report = finish(loadgen::start(config(server.addr, Mode::H2, 4, 1_000))).await;
    assert_consistent(&report, 1_000);
    assert_eq!(report.ok, 1_000, "{report}");
    assert_eq!(report.connects, 4, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_goaway_is_a_clean_reconnect() {
    let server = support::h2_server_with_goaway_after(10).await;
    let report = finish(loadgen::start(config(server.addr, Mode::H2, 2, 400))).await;
    assert_consistent(&report, 400);
    assert_eq!(report.failed(), 0, "{report}");
    // About 40 connections: a connection takes the requests already on their way when its
    // GOAWAY is sent, so a few serve more than 10. 10 is a margin for a loaded machine.
    assert!(
        report.connects >= 10,
        "GOAWAY should force reconnects: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_responses_reconnect_without_failures() {
    let server = support::hyper_server(Proto::Http1, |request| {
        let mut response = support::hello(request);
        response.headers_mut().insert(
            "connection",
            hyper::header::HeaderValue::from_static("close"),
        );
        response
    })
    .await;
    let report = finish(loadgen::start(config(server.addr, Mode::KeepAlive, 4, 500))).await;
    assert_consistent(&report, 500);
    assert_eq!(report.ok, 500, "{report}");
    assert_eq!(
        report.connects, 500,
        "every response closed its connection: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_counted_by_status() {
    let server = support::hyper_server(Proto::Http1, |_| {
        HyperResponse::builder()
            .status(500)
            .body(Full::new(Bytes::from("boom")))
            .expect("valid response")
    })
    .await;
    for mode in [Mode::KeepAlive, Mode::Close] {
        let report = finish(loadgen::start(config(server.addr, mode, 2, 100))).await;
        assert_consistent(&report, 100);
        assert_all_failed_with(&report, FailureKind::Status(500));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_after_request_is_early_close_in_every_http1_mode() {
    let server = support::close_after_request().await;
    for mode in [Mode::KeepAlive, Mode::Close] {
        let report = finish(loadgen::start(config(server.addr, mode, 2, 50))).await;
        assert_consistent(&report, 50);
        assert_all_failed_with(&report, FailureKind::EarlyClose);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_after_request_is_reset() {
    let server = support::reset_after_request().await;
    let report = finish(loadgen::start(config(server.addr, Mode::KeepAlive, 2, 50))).await;
    assert_consistent(&report, 50);
    assert_all_failed_with(&report, FailureKind::Reset);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_body_is_early_close() {
    let server = support::truncated_body().await;
    let report = finish(loadgen::start(config(server.addr, Mode::KeepAlive, 2, 50))).await;
    assert_consistent(&report, 50);
    assert_all_failed_with(&report, FailureKind::EarlyClose);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connection_closed_before_the_request_is_a_failure_not_a_reconnect() {
    let server = support::close_on_accept().await;
    for mode in [Mode::KeepAlive, Mode::Close, Mode::H2] {
        let report = finish(loadgen::start(config(server.addr, mode, 2, 50))).await;
        assert_consistent(&report, 50);
        assert_eq!(report.ok, 0, "{report}");
        // Whether the client sees the FIN or an RST first is up to the kernel's timing.
        let lost = report.failed_of(FailureKind::EarlyClose) + report.failed_of(FailureKind::Reset);
        assert_eq!(lost, 50, "{report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_connect_failures_and_bounded() {
    let addr = support::refused_addr();
    for mode in [Mode::KeepAlive, Mode::Close, Mode::H2] {
        let load = loadgen::start(LoadConfig {
            mode,
            connections: 2,
            max_duration: Duration::from_millis(300),
            ..LoadConfig::new(addr)
        });
        let report = finish(load).await;
        assert!(report.total() > 0, "{report}");
        assert_consistent(&report, report.total());
        assert_all_failed_with(&report, FailureKind::Connect);
        assert_eq!(report.connects, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_is_timeout() {
    let server = support::never_answer().await;
    let load = loadgen::start(LoadConfig {
        request_timeout: Duration::from_millis(200),
        ..config(server.addr, Mode::KeepAlive, 2, 4)
    });
    let report = finish(load).await;
    assert_consistent(&report, 4);
    assert_all_failed_with(&report, FailureKind::Timeout);
    for sample in &report.samples {
        assert!(sample.latency() >= Duration::from_millis(200), "{sample:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_duration_ends_the_run() {
    let server = support::hyper_server(Proto::Http1, support::hello).await;
    let started = std::time::Instant::now();
    let load = loadgen::start(LoadConfig {
        connections: 2,
        max_duration: Duration::from_millis(300),
        ..LoadConfig::new(server.addr)
    });
    let report = finish(load).await;
    assert!(report.ok > 0, "{report}");
    assert_eq!(report.failed(), 0, "{report}");
    assert!(report.elapsed >= Duration::from_millis(300), "{report}");
    // Requests stop starting at 300 ms; the ones in flight end within the request timeout.
    assert!(started.elapsed() < Duration::from_millis(300) + Duration::from_secs(5));
    let last_start = report.samples.last().expect("samples").start();
    assert!(last_start < Duration::from_millis(300), "{last_start:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_a_long_run_and_snapshots_are_live() {
    let server = support::hyper_server(Proto::Http1, support::hello).await;
    let load = loadgen::start(LoadConfig {
        connections: 2,
        max_duration: Duration::from_secs(120),
        ..LoadConfig::new(server.addr)
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let snapshot = loop {
        let snapshot = load.snapshot();
        if snapshot.ok >= 100 {
            break snapshot;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no progress: {snapshot:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(snapshot.failed(), 0);
    let report = tokio::time::timeout(Duration::from_secs(10), load.stop())
        .await
        .expect("stop returns promptly");
    assert!(report.ok >= snapshot.ok, "{report}");
    assert_eq!(report.failed(), 0, "{report}");
    assert!(report.elapsed < Duration::from_secs(60), "{report}");
}
