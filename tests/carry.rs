//! What crosses from one generation to the next besides the sockets (`lifecycle::carry`): the
//! counters and histograms of `/metrics`, so they never go back at an upgrade, including the
//! requests the old generation answers while it drains.

mod support;

use loadgen::Mode;
use support::{
    Config, DEADLINE, InFlight, SLOW_OK, Server, holds_connection, let_run, start_load_on,
    stop_load, wait_until,
};

const OK: &str = "baton_requests_total{class=\"2xx\"}";
const NOT_FOUND: &str = "baton_requests_total{class=\"4xx\"}";

#[test]
fn request_totals_carry_across_upgrades_with_what_the_drain_answered() {
    let server = Server::start(&Config::default());
    for _ in 0..5 {
        assert_eq!(server.get("/").status, 200);
    }
    assert_eq!(server.get("/no-such-page").status, 404);
    let before = server.metric(OK);
    assert!(before >= 5.0, "{before}");

    // A slow request on the old generation, longer than the probation `baton upgrade` waits
    // through: it is answered during the drain, and must be counted once the old generation
    // has gone.
    let old = server.current_pid();
    let slow = InFlight::start(server.http, "/api/slow?ms=4000");
    wait_until(
        DEADLINE,
        "the old generation to take the slow request",
        || holds_connection(old, slow.client),
    );
    let (_, new) = server.upgrade();
    let after_upgrade = server.metric(OK);
    assert!(
        after_upgrade >= before,
        "the totals went back at the upgrade: {before} -> {after_upgrade}"
    );
    assert_eq!(server.metric(NOT_FOUND), 1.0, "the 404 crossed too");

    let (response, _) = slow.finish();
    assert_eq!(response.expect("the slow request").status, 200);
    server.wait_gone(old);
    // The old generation's final report arrives as it exits.
    wait_until(
        DEADLINE,
        "the slow request to be counted by the new generation",
        || server.metric(OK) >= after_upgrade + 1.0,
    );
    assert_eq!(server.current_pid(), new);

    // And again through a second generation: what generation 1 counted is still there.
    let total = server.metric(OK);
    server.upgrade();
    assert!(server.metric(OK) >= total, "the totals went back");
    assert_eq!(server.metric(NOT_FOUND), 1.0);
}

/// The load's requests (`GET /api/items`, which nothing else here asks for: the harness and
/// each generation's self-check ask for `/healthz`) as `/metrics` counts them.
const ITEMS: &str = "baton_request_duration_seconds_count{route=\"/api/items\",class=\"2xx\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_counted_once_across_five_upgrades_under_load() {
    // A short probation: the next upgrade comes while the previous generation still drains,
    // so a final report reaches a successor that drains in turn, and must be carried on.
    let server = Server::start(&Config {
        probation: "300ms".into(),
        ..Config::default()
    });
    let load = start_load_on(server.http, "/api/items", Mode::KeepAlive, 8);

    let mut olds = Vec::new();
    let mut last = server.metric(ITEMS);
    for round in 1..=5 {
        let (old, _) = server.upgrade();
        olds.push(old);
        // Every scrape, whichever generation answers, is at least the one before.
        for _ in 0..5 {
            let now = server.metric(ITEMS);
            assert!(now >= last, "round {round}: {last} -> {now}");
            last = now;
        }
        let_run(&load, 50);
    }
    let report = stop_load(load).await;
    assert_eq!(report.failed(), 0, "{report}; log:\n{}", server.log());

    // Once every old generation has exited, its final report has arrived: each request the
    // load saw answered is counted once, by whichever generation answered it.
    for old in olds {
        server.wait_gone(old);
    }
    wait_until(DEADLINE, "the counts of every generation to arrive", || {
        server.metric(ITEMS) >= report.ok as f64
    });
    assert_eq!(server.metric(ITEMS), report.ok as f64, "{report}");
    let total_2xx = server.metric(OK);
    assert!(total_2xx >= report.ok as f64, "{total_2xx} < {}", report.ok);

    // The lifecycle's counters crossed too: five upgrades, each drained, none cut.
    assert_eq!(server.metric("baton_upgrades_total{result=\"ok\"}"), 5.0);
    assert_eq!(
        server.metric("baton_upgrades_total{result=\"failed\"}"),
        0.0
    );
    assert_eq!(server.metric("baton_drain_duration_seconds_count"), 5.0);
    assert_eq!(server.metric("baton_drain_cut_connections_total"), 0.0);
    let drained: f64 = server.metric("baton_drain_duration_seconds_sum");
    assert!(drained > 0.0, "{drained}");
}

/// The first generation drains a slow request while the second is upgraded in turn and has
/// nothing to drain: the second must not hand its counts over before the first one's final
/// report has reached it, or what the first answered during its drain is lost.
#[test]
fn a_drain_that_outlasts_the_next_generations_is_counted() {
    let server = Server::start(&Config {
        probation: "300ms".into(),
        ..Config::default()
    });
    let first = server.current_pid();
    let slow = server.in_flight(first, "/api/slow?ms=3000");
    let (_, second) = server.upgrade();
    let (from, third) = server.upgrade();
    assert_eq!(from, second);
    let (response, _) = slow.finish();
    assert_eq!(response.expect("the slow request").status, 200);
    server.wait_gone(first);
    server.wait_gone(second);
    assert_eq!(server.current_pid(), third);
    wait_until(
        DEADLINE,
        "the slow request to be counted by the third generation",
        || server.try_metric(SLOW_OK) == Some(1.0),
    );
}
