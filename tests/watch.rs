//! `reload.watch`: the real binary reloads when its configuration changes on disk, once per
//! change, through the same path as SIGUSR1 (a broken file changes nothing).
//!
//! Each test runs `baton serve` in its own temporary directory (config, pid and state files),
//! with both listeners on port 0; the addresses come from the state file. The server is killed
//! when the test ends, whatever happens.

use std::cell::RefCell;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton::lifecycle::ServerRecord;
use serde_json::Value;
use tempfile::TempDir;

/// How long the server may take to start or to react: generous for a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(20);
const DEBOUNCE: Duration = Duration::from_millis(100);
/// After a reload, nothing more may happen for this long: no second reload for one change,
/// and no reload caused by the reload's own reading of the files. Ten debounce windows, also
/// the longest the watcher ever holds a reload back.
const QUIET: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(20);

/// A `default.toml` for these tests: watch on, loopback, port 0.
fn config(greeting: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[app]
greeting = "{greeting}"

[log]
filter = "info,baton=debug"

[reload]
watch = true
debounce = "{}ms"
"#,
        DEBOUNCE.as_millis()
    )
}

/// A running `baton serve`, killed on drop.
struct Server {
    /// In a cell so that polling (which may check whether it exited) needs only `&self`.
    child: RefCell<Child>,
    /// Holds the config, `run/` and the log; removed after the child is gone.
    root: TempDir,
    http: SocketAddr,
    admin: SocketAddr,
}

impl Server {
    /// Starts baton in `root` (which holds `config/`) and waits until it serves.
    fn start(root: TempDir) -> Server {
        let log = fs::File::create(root.path().join("baton.log")).expect("create the log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_baton"));
        command
            .arg("serve")
            .current_dir(root.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // Settings come from the files only, whatever the environment running the tests has.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("BATON_") {
                command.env_remove(name);
            }
        }
        let child = command.spawn().expect("start baton serve");
        let mut server = Server {
            child: RefCell::new(child),
            root,
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let state_file = server.root.path().join("run/baton.state.json");
        let pid = server.child.borrow().id();
        let record = server.wait_for("the server to write its state file", || {
            ServerRecord::read(&state_file).filter(|r| r.pid == pid)
        });
        server.http = record.listener("http").expect("an http listener");
        server.admin = record.listener("admin").expect("an admin listener");
        server
    }

    fn config_dir(&self) -> PathBuf {
        self.root.path().join("config")
    }

    fn log(&self) -> String {
        fs::read_to_string(self.root.path().join("baton.log")).unwrap_or_default()
    }

    /// Polls `probe` until it gives a value; panics with the server's log at the deadline or
    /// if the server exits.
    fn wait_for<T>(&self, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(value) = probe() {
                return value;
            }
            if let Ok(Some(status)) = self.child.borrow_mut().try_wait() {
                panic!(
                    "baton exited ({status}) while waiting for {what}; log:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; log:\n{}",
                self.log()
            );
            std::thread::sleep(POLL);
        }
    }

    fn status(&self) -> Value {
        let response = loadgen::get_blocking(self.admin, "/-/status", Duration::from_secs(5))
            .expect("GET /-/status");
        assert_eq!(response.status, 200, "GET /-/status: {}", response.body);
        serde_json::from_str(&response.body).expect("/-/status is JSON")
    }

    fn greeting(&self) -> String {
        let response =
            loadgen::get_blocking(self.http, "/", Duration::from_secs(5)).expect("GET /");
        assert_eq!(response.status, 200, "GET /: {}", response.body);
        response.body
    }

    /// Waits until the config generation is `generation`, then checks that nothing else
    /// happens for [`QUIET`]. Returns the status seen at the end.
    fn expect_settled(&self, generation: u64, reloads: Reloads) -> Value {
        self.wait_for(&format!("config generation {generation}"), || {
            let status = self.status();
            (status["config_generation"] == generation).then_some(())
        });
        let quiet_until = Instant::now() + QUIET;
        let mut status = self.status();
        while Instant::now() < quiet_until {
            status = self.status();
            assert_eq!(
                (status["config_generation"].as_u64(), Reloads::of(&status)),
                (Some(generation), reloads),
                "expected exactly the reloads counted, and no more; status: {status}; log:\n{}",
                self.log()
            );
            std::thread::sleep(POLL);
        }
        status
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGKILL by pid: this test's server only, nothing to drain.
        let child = self.child.get_mut();
        let _ = child.kill();
        let _ = child.wait();
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

/// A temporary root with `config/default.toml` as a plain file.
fn plain_root(greeting: &str) -> TempDir {
    let root = tempfile::tempdir().expect("create a temp dir");
    fs::create_dir(root.path().join("config")).expect("create config/");
    fs::write(root.path().join("config/default.toml"), config(greeting))
        .expect("write default.toml");
    root
}

/// Writes `text` to `dir/name` as an editor does: a new file renamed over the old one.
fn save_by_rename(dir: &Path, name: &str, text: &str) {
    let temp = dir.join(format!(".{name}.tmp"));
    fs::write(&temp, text).expect("write the new file");
    fs::rename(&temp, dir.join(name)).expect("rename it over the old one");
}

#[test]
fn editing_the_file_reloads_once() {
    let server = Server::start(plain_root("one"));
    assert!(server.greeting().starts_with("one ("));
    let before = server.status();
    assert_eq!(before["config_generation"], 1);
    assert_eq!(Reloads::of(&before), Reloads { ok: 0, failed: 0 });

    // In place: truncate, write, close; several events, one reload.
    fs::write(server.config_dir().join("default.toml"), config("two"))
        .expect("rewrite default.toml");

    let after = server.expect_settled(2, Reloads { ok: 1, failed: 0 });
    assert_eq!(after["last_reload"]["outcome"]["result"], "applied");
    assert!(server.greeting().starts_with("two ("));
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
    let root = tempfile::tempdir().expect("create a temp dir");
    let dir = root.path().join("config");
    fs::create_dir(&dir).expect("create config/");
    let first = "..2026_01_01_00_00_00.000000001";
    fs::create_dir(dir.join(first)).expect("create the first data directory");
    fs::write(dir.join(first).join("default.toml"), config("one")).expect("write default.toml");
    symlink(first, dir.join("..data")).expect("link ..data");
    symlink("..data/default.toml", dir.join("default.toml")).expect("link default.toml");
    let server = Server::start(root);
    assert!(server.greeting().starts_with("one ("));

    let mut previous = first.to_owned();
    // Twice: a watch on the file itself would see the first swap and lose the second.
    for (generation, greeting) in [(2, "two"), (3, "three")] {
        let next = format!("..2026_01_01_00_00_0{generation}.000000001");
        fs::create_dir(dir.join(&next)).expect("create the next data directory");
        fs::write(dir.join(&next).join("default.toml"), config(greeting))
            .expect("write the next default.toml");
        symlink(&next, dir.join("..data_tmp")).expect("link ..data_tmp");
        fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("swap ..data");
        fs::remove_dir_all(dir.join(&previous)).expect("remove the old data directory");
        previous = next;

        let ok = generation - 1;
        server.expect_settled(generation, Reloads { ok, failed: 0 });
        assert!(
            server.greeting().starts_with(&format!("{greeting} (")),
            "greeting after swap {ok}"
        );
    }
}

#[test]
fn a_broken_edit_keeps_the_old_config() {
    let server = Server::start(plain_root("one"));
    assert!(server.greeting().starts_with("one ("));

    save_by_rename(
        &server.config_dir(),
        "default.toml",
        &config("two").replace("[app]", "[app\n"),
    );

    // Rejected: the generation stays 1, so wait for the failure count instead.
    server.wait_for("the rejected reload", || {
        (Reloads::of(&server.status()).failed == 1).then_some(())
    });
    let status = server.expect_settled(1, Reloads { ok: 0, failed: 1 });
    let outcome = &status["last_reload"]["outcome"];
    assert_eq!(outcome["result"], "rejected", "{status}");
    let error = outcome["error"].as_str().expect("a rejection has an error");
    assert!(
        error.contains("default.toml") && error.contains("line"),
        "the error names the file and line: {error}"
    );
    assert!(server.greeting().starts_with("one ("));
}
