//! `reload.watch`: the real binary reloads when its configuration changes on disk, once per
//! change, through the same path as SIGUSR1 (a broken file changes nothing). The harness is in
//! `support/`.

mod support;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Config, POLL, Server};

const DEBOUNCE: Duration = Duration::from_millis(100);
/// After a reload, nothing more may happen for this long: no second reload for one change,
/// and no reload caused by the reload's own reading of the files. Ten debounce windows, also
/// the longest the watcher ever holds a reload back.
const QUIET: Duration = Duration::from_secs(1);

/// Watch on, debug logs (the trigger is logged at debug).
fn config(greeting: &str) -> Config {
    Config {
        greeting: greeting.into(),
        log_filter: "info,baton=debug".into(),
        watch: true,
        debounce: format!("{}ms", DEBOUNCE.as_millis()),
        ..Config::default()
    }
}

/// `/-/status` `reloads`: (ok, failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reloads {
    ok: u64,
    failed: u64,
}

impl Reloads {
    fn of(status: &Value) -> Reloads {
        Reloads {
            ok: status["reloads"]["ok"].as_u64().expect("reloads.ok"),
            failed: status["reloads"]["failed"]
                .as_u64()
                .expect("reloads.failed"),
        }
    }
}

/// Waits until the config generation is `generation`, then checks that nothing else happens
/// for [`QUIET`]. Returns the status seen at the end.
fn expect_settled(server: &Server, generation: u64, reloads: Reloads) -> Value {
    server.wait_while_up(&format!("config generation {generation}"), || {
        (server.status()["config_generation"] == generation).then_some(())
    });
    let quiet_until = Instant::now() + QUIET;
    let mut status = server.status();
    while Instant::now() < quiet_until {
        status = server.status();
        assert_eq!(
            (status["config_generation"].as_u64(), Reloads::of(&status)),
            (Some(generation), reloads),
            "expected exactly the reloads counted, and no more; status: {status}"
        );
        std::thread::sleep(POLL);
    }
    status
}

/// Writes `text` to `dir/name` as an editor does: a new file renamed over the old one.
fn save_by_rename(dir: &Path, name: &str, text: &str) {
    let temp = dir.join(format!(".{name}.tmp"));
    fs::write(&temp, text).expect("write the new file");
    fs::rename(&temp, dir.join(name)).expect("rename it over the old one");
}

#[test]
fn editing_the_file_reloads_once() {
    let server = Server::start(&config("one"));
    assert_eq!(server.hello().greeting, "one");
    let before = server.status();
    assert_eq!(before["config_generation"], 1);
    assert_eq!(Reloads::of(&before), Reloads { ok: 0, failed: 0 });

    // In place: truncate, write, close; several events, one reload.
    fs::write(server.config_path(), config("two").toml()).expect("rewrite default.toml");

    let after = expect_settled(&server, 2, Reloads { ok: 1, failed: 0 });
    assert_eq!(after["last_reload"]["outcome"]["result"], "applied");
    assert_eq!(server.hello().greeting, "two");
    assert!(
        server
            .log()
            .contains("configuration changed on disk; reloading"),
        "the trigger is logged at debug; log:\n{}",
        server.log()
    );
}

#[test]
fn a_kubernetes_configmap_swap_reloads_once_each_time() {
    // The layout of a ConfigMap volume: default.toml -> ..data/default.toml,
    // ..data -> ..<timestamp>/, swapped by renaming a new ..data symlink over the old one.
    let mut server = Server::prepare(&config("one"));
    let dir = server.root().join("config");
    let first = "..2026_01_01_00_00_00.000000001";
    fs::create_dir(dir.join(first)).expect("create the first data directory");
    fs::rename(server.config_path(), dir.join(first).join("default.toml"))
        .expect("move default.toml into the first data directory");
    symlink(first, dir.join("..data")).expect("link ..data");
    symlink("..data/default.toml", server.config_path()).expect("link default.toml");
    server.spawn();
    assert_eq!(server.hello().greeting, "one");

    let mut previous = first.to_owned();
    // Twice: a watch on the file itself would see the first swap and lose the second.
    for (generation, greeting) in [(2, "two"), (3, "three")] {
        let next = format!("..2026_01_01_00_00_0{generation}.000000001");
        fs::create_dir(dir.join(&next)).expect("create the next data directory");
        fs::write(
            dir.join(&next).join("default.toml"),
            config(greeting).toml(),
        )
        .expect("write the next default.toml");
        symlink(&next, dir.join("..data_tmp")).expect("link ..data_tmp");
        fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("swap ..data");
        fs::remove_dir_all(dir.join(&previous)).expect("remove the old data directory");
        previous = next;

        let ok = generation - 1;
        expect_settled(&server, generation, Reloads { ok, failed: 0 });
        assert_eq!(
            server.hello().greeting,
            greeting,
            "greeting after swap {ok}"
        );
    }
}

#[test]
fn a_broken_edit_keeps_the_old_config() {
    let server = Server::start(&config("one"));
    assert_eq!(server.hello().greeting, "one");

    save_by_rename(
        &server.root().join("config"),
        "default.toml",
        &config("two").toml().replace("[app]", "[app\n"),
    );

    // Rejected: the generation stays 1, so wait for the failure count instead.
    server.wait_while_up("the rejected reload", || {
        (Reloads::of(&server.status()).failed == 1).then_some(())
    });
    let status = expect_settled(&server, 1, Reloads { ok: 0, failed: 1 });
    let outcome = &status["last_reload"]["outcome"];
    assert_eq!(outcome["result"], "rejected", "{status}");
    let error = outcome["error"].as_str().expect("a rejection has an error");
    assert!(
        error.contains("default.toml") && error.contains("line"),
        "the error names the file and line: {error}"
    );
    assert_eq!(server.hello().greeting, "one");
}
