//! Settings: layering, validation messages, the live store, and logging set-up.
//!
//! Every test builds its own config directory and passes the environment explicitly, so tests
//! run in parallel without touching the process environment.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use baton::settings::{
    ConfigSource, LogFormat, ReloadOutcome, Settings, SettingsError, SettingsStore,
    lenient_pid_file_from, upgrade_only_changes,
};
use tempfile::TempDir;

/// A config directory holding the given files.
fn config_dir(files: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().expect("create a temp dir");
    for (name, text) in files {
        write(dir.path(), name, text);
    }
    dir
}

fn write(dir: &Path, name: &str, text: &str) {
    fs::write(dir.join(name), text).expect("write a config file");
}

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

fn source(dir: &Path, env_name: Option<&str>) -> ConfigSource {
    ConfigSource::new(dir, env_name.map(str::to_owned))
}

fn load(
    dir: &Path,
    env_name: Option<&str>,
    vars: &[(&str, &str)],
) -> Result<Settings, SettingsError> {
    Settings::load_from(&source(dir, env_name), env(vars))
}

/// The message of a load that must fail.
fn load_error(dir: &Path, env_name: Option<&str>, vars: &[(&str, &str)]) -> String {
    match load(dir, env_name, vars) {
        Ok(settings) => panic!("expected an error, loaded {settings:?}"),
        Err(err) => err.to_string(),
    }
}

/// Loads a `default.toml` with `text` and returns the error message.
fn default_toml_error(text: &str) -> (String, PathBuf) {
    let dir = config_dir(&[("default.toml", text)]);
    let path = dir.path().join("default.toml");
    (load_error(dir.path(), None, &[]), path)
}

fn assert_contains_all(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "message {message:?} lacks {part:?}");
    }
}

fn repo_config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

// ---- the shipped files ----

#[test]
fn repo_default_toml_equals_the_built_in_defaults() {
    let loaded = load(&repo_config_dir(), None, &[]).expect("config/default.toml loads");
    assert_eq!(loaded, Settings::default());
}

#[test]
fn repo_production_toml_loads_and_only_overlays() {
    let loaded =
        load(&repo_config_dir(), Some("production"), &[]).expect("config/production.toml loads");
    assert_eq!(loaded.log.format, LogFormat::Json);
    assert_eq!(loaded.server, Settings::default().server);
}

#[test]
fn redacted_toml_hides_the_key_and_round_trips() {
    let dir = config_dir(&[("default.toml", "")]);
    let with_key = load(dir.path(), None, &[("BATON_APP__API_KEY", "s3cret-value")])
        .expect("loads with an api key");
    assert_eq!(
        with_key.app.api_key.as_ref().map(|key| key.expose()),
        Some("s3cret-value")
    );
    let shown = with_key.to_redacted_toml();
    assert!(!shown.contains("s3cret-value"), "{shown}");
    assert!(shown.contains("api_key = \"[redacted]\""), "{shown}");
    assert!(!format!("{with_key:?}").contains("s3cret-value"));

    let defaults = Settings::default().to_redacted_toml();
    assert!(!defaults.contains("api_key"), "{defaults}");
    let parsed: Settings = toml::from_str(&defaults).expect("the output is valid settings TOML");
    assert_eq!(parsed, Settings::default());
}

// ---- layering ----

#[test]
fn default_toml_overrides_built_ins_key_by_key() {
    let dir = config_dir(&[("default.toml", "[app]\ngreeting = \"from file\"\n")]);
    let loaded = load(dir.path(), None, &[]).expect("loads");
    assert_eq!(loaded.app.greeting, "from file");
    assert_eq!(loaded.app.items_limit, Settings::default().app.items_limit);
    assert_eq!(loaded.server, Settings::default().server);
}

#[test]
fn env_file_overrides_default_toml_and_env_vars_override_both() {
    let dir = config_dir(&[
        (
            "default.toml",
            "[app]\ngreeting = \"default\"\nitems_limit = 5\n[server]\nworker_threads = 2\n",
        ),
        (
            "staging.toml",
            "[app]\ngreeting = \"staging\"\nitems_limit = 6\n",
        ),
    ]);
    let staged = load(dir.path(), Some("staging"), &[]).expect("loads");
    assert_eq!(staged.app.greeting, "staging");
    assert_eq!(staged.app.items_limit, 6);
    assert_eq!(staged.server.worker_threads, 2);

    let overridden = load(
        dir.path(),
        Some("staging"),
        &[
            ("BATON_APP__GREETING", "env"),
            ("BATON_SERVER__WORKER_THREADS", "3"),
        ],
    )
    .expect("loads");
    assert_eq!(overridden.app.greeting, "env");
    assert_eq!(overridden.app.items_limit, 6);
    assert_eq!(overridden.server.worker_threads, 3);
}

#[test]
fn without_baton_env_an_env_file_is_not_read() {
    let dir = config_dir(&[
        ("default.toml", "[app]\ngreeting = \"default\"\n"),
        ("production.toml", "[app]\ngreeting = \"production\"\n"),
    ]);
    let loaded = load(dir.path(), None, &[]).expect("loads");
    assert_eq!(loaded.app.greeting, "default");
}

#[test]
fn env_values_are_parsed_by_type() {
    let dir = config_dir(&[("default.toml", "")]);
    let loaded = load(
        dir.path(),
        None,
        &[
            ("BATON_SERVER__LISTEN", "127.0.0.1:18080"),
            ("BATON_ADMIN__ENABLED", "false"),
            ("BATON_APP__GREETING", "42"),
            ("BATON_LIFECYCLE__LAME_DUCK", "500ms"),
            ("BATON_LOG__FORMAT", "json"),
        ],
    )
    .expect("loads");
    assert_eq!(
        loaded.server.listen,
        SocketAddr::from(([127, 0, 0, 1], 18080))
    );
    assert!(!loaded.admin.enabled);
    assert_eq!(loaded.app.greeting, "42");
    assert_eq!(loaded.lifecycle.lame_duck, Duration::from_millis(500));
    assert_eq!(loaded.log.format, LogFormat::Json);
}

#[test]
fn other_baton_variables_are_not_settings() {
    let dir = config_dir(&[("default.toml", "")]);
    let loaded = load(
        dir.path(),
        None,
        &[
            ("BATON_ENV", "nonexistent"),
            ("BATON_CONFIG_DIR", "/nonexistent"),
            ("BATON_UPGRADE_READY_FD", "7"),
            ("BATON_GENERATION", "3"),
            ("BATON_GIT_COMMIT", "abc"),
            ("PATH", "/usr/bin"),
            ("SERVER__LISTEN", "nonsense"),
        ],
    )
    .expect("non-settings variables are ignored");
    assert_eq!(loaded, Settings::default());
}

// ---- errors: files ----

#[test]
fn missing_default_toml_names_the_path_and_the_fix() {
    let dir = config_dir(&[]);
    let message = load_error(dir.path(), None, &[]);
    let path = dir.path().join("default.toml");
    assert_contains_all(
        &message,
        &[&path.display().to_string(), "not found", "--config-dir"],
    );
}

#[test]
fn missing_env_file_is_an_error_naming_baton_env() {
    let dir = config_dir(&[("default.toml", "")]);
    let message = load_error(dir.path(), Some("prodution"), &[]);
    let path = dir.path().join("prodution.toml");
    assert_contains_all(
        &message,
        &[&path.display().to_string(), "BATON_ENV=prodution"],
    );
}

#[test]
fn env_name_that_is_not_a_plain_name_is_refused() {
    let dir = config_dir(&[("default.toml", "")]);
    let message = load_error(dir.path(), Some("../elsewhere"), &[]);
    assert_contains_all(&message, &["BATON_ENV=\"../elsewhere\"", "letters, digits"]);
}

#[test]
fn unreadable_file_names_the_path_and_the_os_reason() {
    // A directory where the file should be fails to read even as root (chmod 000 would not).
    let dir = config_dir(&[]);
    fs::create_dir(dir.path().join("default.toml")).expect("create a directory");
    let message = load_error(dir.path(), None, &[]);
    let path = dir.path().join("default.toml");
    assert_contains_all(
        &message,
        &[&path.display().to_string(), "cannot read", "directory"],
    );
}

#[test]
fn syntax_error_names_file_line_and_column() {
    let (message, path) =
        default_toml_error("[server]\nlisten = \"127.0.0.1:8080\"\nworker_threads = = 4\n");
    assert_contains_all(
        &message,
        &[&format!(
            "{}: TOML syntax error at line 3, column",
            path.display()
        )],
    );
    assert!(!message.contains('\n'), "one line: {message:?}");
}

#[test]
fn unknown_key_in_a_file_names_file_key_and_allowed_keys() {
    let (message, path) = default_toml_error("[server]\nlistn = \"127.0.0.1:8080\"\n");
    assert_contains_all(
        &message,
        &[
            &path.display().to_string(),
            "unknown key `server.listn`",
            "allowed keys in [server]: listen, request_timeout, worker_threads",
        ],
    );
}

#[test]
fn unknown_section_lists_the_sections() {
    let (message, _) = default_toml_error("[servr]\nlisten = \"127.0.0.1:8080\"\n");
    assert_contains_all(
        &message,
        &[
            "unknown key `servr`",
            "allowed sections: server, admin, app",
        ],
    );
    let (message, _) = default_toml_error("greeting = \"hi\"\n");
    assert_contains_all(&message, &["unknown key `greeting`", "under [app]"]);
}

#[test]
fn unknown_key_from_the_environment_names_the_variable() {
    let dir = config_dir(&[("default.toml", "")]);
    let message = load_error(dir.path(), None, &[("BATON_SERVER__LISTN", "127.0.0.1:1")]);
    assert_contains_all(
        &message,
        &[
            "environment variable BATON_SERVER__LISTN",
            "unknown key `server.listn`",
            "allowed keys in [server]",
        ],
    );
    let message = load_error(dir.path(), None, &[("BATON_SERVR__LISTEN", "127.0.0.1:1")]);
    assert_contains_all(
        &message,
        &[
            "environment variable BATON_SERVR__LISTEN",
            "BATON_<SECTION>__<KEY>",
        ],
    );
}

// ---- errors: values ----

#[test]
fn wrong_type_names_source_key_and_expected_type() {
    let (message, path) = default_toml_error("[server]\nworker_threads = \"four\"\n");
    assert_contains_all(
        &message,
        &[
            &path.display().to_string(),
            "server.worker_threads = \"four\"",
            "expected a whole number",
        ],
    );
    let (message, _) = default_toml_error("[admin]\nenabled = \"yes\"\n");
    assert_contains_all(&message, &["admin.enabled", "expected true or false"]);
    let (message, _) = default_toml_error("[app]\ngreeting = 5\n");
    assert_contains_all(&message, &["app.greeting = 5", "expected a string"]);
    let (message, _) = default_toml_error("server = 5\n");
    assert_contains_all(&message, &["server = 5", "expected a table ([server])"]);
    let (message, _) = default_toml_error("[log]\nformat = \"xml\"\n");
    assert_contains_all(&message, &["log.format = \"xml\"", "\"text\" or \"json\""]);

    let dir = config_dir(&[("default.toml", "")]);
    let message = load_error(dir.path(), None, &[("BATON_ADMIN__ENABLED", "maybe")]);
    assert_contains_all(
        &message,
        &[
            "environment variable BATON_ADMIN__ENABLED",
            "admin.enabled = \"maybe\"",
            "expected true or false",
        ],
    );
}

#[test]
fn invalid_duration_names_key_value_and_the_form() {
    let (message, path) = default_toml_error("[server]\nrequest_timeout = \"30 parsecs\"\n");
    assert_contains_all(
        &message,
        &[
            &path.display().to_string(),
            "server.request_timeout = \"30 parsecs\"",
            "use a duration like \"500ms\", \"30s\" or \"2m\"",
        ],
    );
    // A bare number has no unit: still a duration error, not a type puzzle.
    let (message, _) = default_toml_error("[lifecycle]\nlame_duck = 2\n");
    assert_contains_all(
        &message,
        &["lifecycle.lame_duck = 2", "use a duration like"],
    );
}

#[test]
fn invalid_address_names_key_value_and_the_form() {
    let (message, path) = default_toml_error("[server]\nlisten = \"localhost:8080\"\n");
    assert_contains_all(
        &message,
        &[
            &path.display().to_string(),
            "server.listen = \"localhost:8080\"",
            "expected IP:PORT, e.g. 127.0.0.1:8080",
        ],
    );
    let dir = config_dir(&[("default.toml", "")]);
    let message = load_error(dir.path(), None, &[("BATON_ADMIN__LISTEN", "9090")]);
    assert_contains_all(
        &message,
        &[
            "environment variable BATON_ADMIN__LISTEN",
            "expected IP:PORT",
        ],
    );
}

#[test]
fn invalid_log_filter_names_key_and_reason() {
    let (message, path) = default_toml_error("[log]\nfilter = \"info,[\"\n");
    assert_contains_all(
        &message,
        &[
            &path.display().to_string(),
            "log.filter = \"info,[\"",
            "invalid log filter",
        ],
    );
}

#[test]
fn out_of_range_values_name_key_and_allowed_range() {
    let cases: &[(&str, &[&str])] = &[
        (
            "[server]\nrequest_timeout = \"0s\"",
            &["server.request_timeout = \"0s\"", "allowed 1ms to 1h"],
        ),
        (
            "[server]\nrequest_timeout = \"2h\"",
            &["server.request_timeout = \"2h\"", "allowed 1ms to 1h"],
        ),
        (
            "[server]\nworker_threads = 5000",
            &["server.worker_threads = 5000", "allowed 0 to 1024"],
        ),
        (
            "[app]\nitems_limit = 0",
            &["app.items_limit = 0", "allowed 1 to 100000"],
        ),
        (
            "[app]\nitems_limit = 100001",
            &["app.items_limit = 100001", "allowed 1 to 100000"],
        ),
        (
            "[app]\ngreeting = \"\"",
            &["app.greeting = \"\"", "allowed 1 to 1000 bytes"],
        ),
        ("[app]\napi_key = \"\"", &["app.api_key", "non-empty"]),
        (
            "[lifecycle]\nshutdown_timeout = \"0s\"",
            &["lifecycle.shutdown_timeout = \"0s\"", "allowed 1ms to 1h"],
        ),
        (
            "[lifecycle]\nlame_duck = \"40s\"\nshutdown_timeout = \"30s\"",
            &[
                "lifecycle.lame_duck = \"40s\"",
                "allowed 0s to lifecycle.shutdown_timeout (\"30s\")",
            ],
        ),
        (
            "[lifecycle]\npid_file = \"\"",
            &["lifecycle.pid_file = \"\"", "empty", "run/baton.pid"],
        ),
        (
            "[upgrade]\nready_timeout = \"50ms\"",
            &["upgrade.ready_timeout = \"50ms\"", "allowed 100ms to 1h"],
        ),
        (
            "[reload]\ndebounce = \"2m\"",
            &["reload.debounce = \"2m\"", "allowed 0s to 1m"],
        ),
        (
            "[admin]\nlisten = \"127.0.0.1:8080\"",
            &[
                "admin.listen = \"127.0.0.1:8080\"",
                "same address as server.listen",
            ],
        ),
    ];
    for (text, parts) in cases {
        let (message, path) = default_toml_error(text);
        assert_contains_all(&message, &[&path.display().to_string()]);
        assert_contains_all(&message, parts);
    }

    let long = format!("[app]\ngreeting = \"{}\"", "x".repeat(1001));
    let (message, _) = default_toml_error(&long);
    assert_contains_all(
        &message,
        &["app.greeting", "is 1001 bytes", "allowed 1 to 1000 bytes"],
    );
    assert!(message.len() < 300, "a long value is shortened: {message}");

    // The same address is fine when the admin listener is off.
    let dir = config_dir(&[(
        "default.toml",
        "[admin]\nenabled = false\nlisten = \"127.0.0.1:8080\"\n",
    )]);
    load(dir.path(), None, &[]).expect("admin off: its address is not used");
}

#[test]
fn range_error_from_the_environment_names_the_variable() {
    let dir = config_dir(&[("default.toml", "")]);
    let message = load_error(dir.path(), None, &[("BATON_APP__ITEMS_LIMIT", "0")]);
    assert_contains_all(
        &message,
        &[
            "environment variable BATON_APP__ITEMS_LIMIT",
            "app.items_limit = 0",
            "allowed 1 to 100000",
        ],
    );
}

#[test]
fn validate_without_layers_names_the_key() {
    let mut settings = Settings::default();
    settings.upgrade.ready_timeout = Duration::from_secs(7200);
    let message = settings
        .validate()
        .expect_err("2h is out of range")
        .to_string();
    assert_eq!(
        message,
        "upgrade.ready_timeout = \"2h\": out of range; allowed 100ms to 1h"
    );
}

// ---- upgrade-only keys ----

#[test]
fn upgrade_only_changes_lists_exactly_the_changed_upgrade_only_keys() {
    let old = Settings::default();
    assert!(upgrade_only_changes(&old, &old).is_empty());
    let mut new = old.clone();
    new.app.greeting = "reloadable".to_owned();
    new.lifecycle.lame_duck = Duration::from_secs(1);
    assert!(upgrade_only_changes(&old, &new).is_empty());
    new.server.listen = SocketAddr::from(([127, 0, 0, 1], 1));
    new.log.format = LogFormat::Json;
    new.reload.debounce = Duration::from_secs(1);
    assert_eq!(
        upgrade_only_changes(&old, &new),
        vec!["server.listen", "log.format", "reload.debounce"]
    );
}

// ---- the store ----

fn store_over(dir: &Path) -> SettingsStore {
    let source = source(dir, None);
    let initial = Settings::load_from(&source, env(&[])).expect("initial config loads");
    SettingsStore::new(source, initial)
}

#[test]
fn store_starts_at_generation_one_with_no_reload() {
    let dir = config_dir(&[("default.toml", "")]);
    let store = store_over(dir.path());
    assert_eq!(store.generation(), 1);
    assert!(store.last_reload().is_none());
    assert_eq!((store.reloads_ok(), store.reloads_failed()), (0, 0));
    assert_eq!(*store.current(), Settings::default());
}

#[test]
fn reload_applies_keeps_unchanged_and_rejects_whole() {
    let dir = config_dir(&[("default.toml", "[app]\ngreeting = \"one\"\n")]);
    let store = store_over(dir.path());
    let before = store.current();

    // Applied.
    write(
        dir.path(),
        "default.toml",
        "[app]\ngreeting = \"two\"\nitems_limit = 7\n",
    );
    let outcome = store.reload_from(env(&[]));
    assert_eq!(
        outcome,
        ReloadOutcome::Applied {
            config_generation: 2,
            upgrade_only: vec![]
        }
    );
    assert_eq!(store.generation(), 2);
    assert_eq!(store.current().app.greeting, "two");
    assert_eq!(store.current().app.items_limit, 7);
    assert_eq!(before.app.greeting, "one", "an old snapshot never changes");
    let record = store.last_reload().expect("recorded");
    assert_eq!((record.seq, record.outcome), (1, outcome));

    // Unchanged: same layers give the same settings; nothing moves but the counters.
    let in_force = store.current();
    let outcome = store.reload_from(env(&[]));
    assert_eq!(
        outcome,
        ReloadOutcome::Unchanged {
            upgrade_only: vec![]
        }
    );
    assert_eq!(store.generation(), 2);
    assert!(
        Arc::ptr_eq(&in_force, &store.current()),
        "no swap when unchanged"
    );
    assert_eq!(store.last_reload().expect("recorded").seq, 2);

    // Rejected: one bad key among good changes keeps the old settings whole.
    write(
        dir.path(),
        "default.toml",
        "[app]\ngreeting = \"three\"\nitems_limit = 0\n",
    );
    let outcome = store.reload_from(env(&[]));
    let ReloadOutcome::Rejected { error } = &outcome else {
        panic!("expected a rejection, got {outcome:?}");
    };
    assert_contains_all(
        error,
        &["default.toml", "app.items_limit = 0", "allowed 1 to 100000"],
    );
    assert!(
        Arc::ptr_eq(&in_force, &store.current()),
        "old settings stay"
    );
    assert_eq!(store.current().app.greeting, "two");
    assert_eq!(store.generation(), 2);
    let record = store.last_reload().expect("recorded");
    assert_eq!((record.seq, &record.outcome), (3, &outcome));
    assert_eq!((store.reloads_ok(), store.reloads_failed()), (2, 1));
}

#[test]
fn reload_reads_the_environment_it_is_given() {
    let dir = config_dir(&[("default.toml", "")]);
    let store = store_over(dir.path());
    let outcome = store.reload_from(env(&[("BATON_APP__GREETING", "from env")]));
    assert!(
        matches!(outcome, ReloadOutcome::Applied { .. }),
        "{outcome:?}"
    );
    assert_eq!(store.current().app.greeting, "from env");
    let outcome = store.reload_from(env(&[("BATON_APP__GRETING", "typo")]));
    let ReloadOutcome::Rejected { error } = outcome else {
        panic!("an unknown variable must be rejected");
    };
    assert_contains_all(&error, &["environment variable BATON_APP__GRETING"]);
    assert_eq!(store.current().app.greeting, "from env");
}

#[test]
fn upgrade_only_keys_are_reported_not_applied() {
    let dir = config_dir(&[("default.toml", "")]);
    let store = store_over(dir.path());

    // Only upgrade-only keys changed: nothing to apply, but the user is told.
    write(
        dir.path(),
        "default.toml",
        "[server]\nlisten = \"127.0.0.1:18081\"\n[log]\nformat = \"json\"\n",
    );
    let outcome = store.reload_from(env(&[]));
    assert_eq!(
        outcome,
        ReloadOutcome::Unchanged {
            upgrade_only: vec!["server.listen", "log.format"]
        }
    );
    assert_eq!(store.generation(), 1);
    assert_eq!(*store.current(), Settings::default());

    // Mixed with a reloadable change: that one applies, the others stay as they are.
    write(
        dir.path(),
        "default.toml",
        "[server]\nlisten = \"127.0.0.1:18081\"\nrequest_timeout = \"5s\"\n",
    );
    let outcome = store.reload_from(env(&[]));
    assert_eq!(
        outcome,
        ReloadOutcome::Applied {
            config_generation: 2,
            upgrade_only: vec!["server.listen"]
        }
    );
    let current = store.current();
    assert_eq!(current.server.request_timeout, Duration::from_secs(5));
    assert_eq!(current.server.listen, Settings::default().server.listen);
}

#[test]
fn concurrent_reloads_are_each_counted_once() {
    const THREADS: u64 = 4;
    const RELOADS: u64 = 5;
    let dir = config_dir(&[("default.toml", "[app]\ngreeting = \"a\"\n")]);
    let store = Arc::new(store_over(dir.path()));
    write(dir.path(), "default.toml", "[app]\ngreeting = \"b\"\n");
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                (0..RELOADS)
                    .map(|_| store.reload_from(Vec::new()))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let outcomes: Vec<ReloadOutcome> = handles
        .into_iter()
        .flat_map(|handle| handle.join().expect("reload thread finished"))
        .collect();
    let applied = outcomes
        .iter()
        .filter(|outcome| matches!(outcome, ReloadOutcome::Applied { .. }))
        .count();
    // Serialized reloads: the first one applies the change, every later one sees it in force.
    assert_eq!(applied, 1, "{outcomes:?}");
    assert_eq!(store.generation(), 2);
    assert_eq!(store.reloads_ok(), THREADS * RELOADS);
    assert_eq!(
        store.last_reload().expect("recorded").seq,
        THREADS * RELOADS
    );
}

// ---- the lenient pid file lookup ----

#[test]
fn lenient_pid_file_survives_a_broken_config() {
    let dir = config_dir(&[(
        "default.toml",
        "[lifecycle]\npid_file = \"custom/baton.pid\"\nlame_duck = \"soon\"\n[bogus]\nx = 1\n",
    )]);
    let source = source(dir.path(), None);
    assert!(Settings::load_from(&source, env(&[])).is_err());
    assert_eq!(
        lenient_pid_file_from(&source, env(&[])),
        PathBuf::from("custom/baton.pid")
    );
    assert_eq!(
        lenient_pid_file_from(&source, env(&[("BATON_LIFECYCLE__PID_FILE", "env.pid")])),
        PathBuf::from("env.pid")
    );
}

#[test]
fn lenient_pid_file_layers_and_falls_back_to_the_default() {
    let dir = config_dir(&[
        ("default.toml", "[lifecycle]\npid_file = \"default.pid\"\n"),
        ("staging.toml", "[lifecycle]\npid_file = \"staging.pid\"\n"),
        ("broken.toml", "[lifecycle\npid_file = \"broken.pid\"\n"),
    ]);
    let pid_file = |env_name| lenient_pid_file_from(&source(dir.path(), env_name), env(&[]));
    assert_eq!(pid_file(Some("staging")), PathBuf::from("staging.pid"));
    assert_eq!(pid_file(Some("broken")), PathBuf::from("default.pid"));
    assert_eq!(pid_file(None), PathBuf::from("default.pid"));

    let empty = config_dir(&[]);
    assert_eq!(
        lenient_pid_file_from(&source(empty.path(), None), env(&[])),
        Settings::default().lifecycle.pid_file
    );
}

// ---- logging set-up ----

/// The only test in this binary that installs a global subscriber.
#[test]
fn telemetry_init_twice_is_an_error() {
    let log = baton::settings::Log {
        filter: "off".to_owned(),
        format: LogFormat::Text,
    };
    let telemetry = baton::telemetry::init(&log).expect("first init installs the subscriber");
    telemetry
        .set_filter("warn")
        .expect("a valid filter applies");
    assert!(telemetry.set_filter("warn,[").is_err());
    let again = baton::telemetry::init(&log);
    assert!(again.is_err(), "a second init must fail, not panic");
    telemetry.set_filter("off").expect("a valid filter applies");
}
