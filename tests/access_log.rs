//! The access log (`log.access`) with the real binary: one line per request on the
//! `baton::access` target, in text or JSON per `log.format`, switched on by a reload and off
//! by the log filter too.

mod support;

use support::{Config, DEADLINE, Server, wait_for};

/// The access lines in the server's log so far.
fn access_lines(server: &Server) -> Vec<String> {
    server
        .log()
        .lines()
        .filter(|line| line.contains("baton::access"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn text_lines_follow_reloads_and_the_log_filter() {
    let config = Config::default();
    let server = Server::start(&config);
    server.get("/api/items/7");
    assert_eq!(
        access_lines(&server),
        Vec::<String>::new(),
        "off by default"
    );

    // Reloadable: on without a restart.
    let on = config
        .toml()
        .replace("format = \"text\"", "format = \"text\"\naccess = true");
    server.write_config(&on);
    let out = server.run_cli(&["reload"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(server.get("/api/items/7").status, 404);
    let line = wait_for(DEADLINE, "the access line", || access_lines(&server).pop());
    for field in [
        "method=GET",
        "route=/api/items/{id}",
        "status=404",
        "protocol=HTTP/1.1",
        "generation=1",
        "duration_ms=",
        "bytes=",
    ] {
        assert!(line.contains(field), "no {field} in {line:?}");
    }
    // The route as matched: what a client sends never lengthens the line.
    assert!(!line.contains("/api/items/7"), "{line}");
    assert_eq!(access_lines(&server).len(), 1, "one line per request");

    // The filter silences the target alone.
    let filtered = on.replace(
        &format!("filter = \"{}\"", config.log_filter),
        "filter = \"info,baton::access=off\"",
    );
    server.write_config(&filtered);
    let out = server.run_cli(&["reload"]);
    assert_eq!(out.code, Some(0), "{out}");
    server.get("/");
    server.get("/");
    assert_eq!(access_lines(&server).len(), 1, "{}", server.log());

    // `baton::request=debug` gives each request its span (what tower-http's `TraceLayer` gave):
    // a line logged while serving the request names it.
    let spans = on.replace(
        &format!("filter = \"{}\"", config.log_filter),
        "filter = \"info,baton::request=debug\"",
    );
    server.write_config(&spans);
    let out = server.run_cli(&["reload"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(server.get("/api/items/8").status, 404);
    let line = wait_for(DEADLINE, "an access line in its request's span", || {
        access_lines(&server)
            .into_iter()
            .find(|line| line.contains("/api/items/8"))
    });
    assert!(
        line.contains("request{method=GET route=/api/items/{id} uri=/api/items/8"),
        "{line}"
    );
}

#[test]
fn json_lines_carry_the_fields_as_values() {
    let config = Config::default();
    let mut server = Server::prepare(&config);
    server.write_config(
        &config
            .toml()
            .replace("format = \"text\"", "format = \"json\"\naccess = true"),
    );
    server.spawn();
    assert_eq!(server.get("/").status, 200);
    let line = wait_for(DEADLINE, "a JSON access line for GET /", || {
        access_lines(&server).into_iter().find_map(|line| {
            let value: serde_json::Value = serde_json::from_str(&line).ok()?;
            (value["route"] == "/").then_some(value)
        })
    });
    assert_eq!(line["target"], "baton::access", "{line}");
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["method"], "GET", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["generation"], 1, "{line}");
    assert_eq!(line["protocol"], "HTTP/1.1", "{line}");
    assert!(line["bytes"].as_u64().is_some_and(|b| b > 0), "{line}");
    assert!(
        line["duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
        "{line}"
    );
}
