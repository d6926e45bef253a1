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

/// Loads an empty `default.toml` under the environment `vars`; panics if that fails.
fn load_env(vars: &[(&str, &str)]) -> Settings {
    let dir = config_dir(&[("default.toml", "")]);
    load(dir.path(), None, vars).unwrap_or_else(|e| panic!("{vars:?} load: {e}"))
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

/// Asserts that `message` names the file at `path` and holds every part.
fn assert_names_file(message: &str, path: &Path, parts: &[&str]) {
    assert_contains_all(message, &[&path.display().to_string()]);
    assert_contains_all(message, parts);
}

/// Each `default.toml` text must fail to load with a message that names the file and holds
/// every part.
fn assert_file_errors(cases: &[(&str, &[&str])]) {
    for (text, parts) in cases {
        let (message, path) = default_toml_error(text);
        assert_names_file(&message, &path, parts);
    }
}

/// Each environment variable, over an empty `default.toml`, must fail to load with a message
/// that names the variable and holds every part.
fn assert_env_errors(cases: &[(&str, &str, &[&str])]) {
    let dir = config_dir(&[("default.toml", "")]);
    for (name, value, parts) in cases {
        let message = load_error(dir.path(), None, &[(name, value)]);
        assert_contains_all(&message, &[&format!("environment variable {name}")]);
        assert_contains_all(&message, parts);
    }
}

fn repo_config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

// ---- the shipped files ----

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
    let loaded = load_env(&[
        ("BATON_SERVER__LISTEN", "127.0.0.1:18080"),
        ("BATON_ADMIN__ENABLED", "false"),
        ("BATON_APP__GREETING", "42"),
        ("BATON_LIFECYCLE__LAME_DUCK", "500ms"),
        ("BATON_LOG__FORMAT", "json"),
    ]);
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
    // Non-settings variables are ignored.
    let loaded = load_env(&[
        ("BATON_ENV", "nonexistent"),
        ("BATON_CONFIG_DIR", "/nonexistent"),
        ("BATON_UPGRADE_READY_FD", "7"),
        ("BATON_GENERATION", "3"),
        ("BATON_GIT_COMMIT", "abc"),
        ("PATH", "/usr/bin"),
        ("SERVER__LISTEN", "nonsense"),
    ]);
    assert_eq!(loaded, Settings::default());
}

// ---- errors: files ----

#[test]
fn missing_default_toml_names_the_path_and_the_fix() {
    let dir = config_dir(&[]);
    let message = load_error(dir.path(), None, &[]);
    let path = dir.path().join("default.toml");
    assert_names_file(&message, &path, &["not found", "--config-dir"]);
}

#[test]
fn missing_env_file_is_an_error_naming_baton_env() {
    let dir = config_dir(&[("default.toml", "")]);
    let message = load_error(dir.path(), Some("prodution"), &[]);
    let path = dir.path().join("prodution.toml");
    assert_names_file(&message, &path, &["BATON_ENV=prodution"]);
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
    assert_names_file(&message, &path, &["cannot read", "directory"]);
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
    assert_file_errors(&[(
        "[server]\nlistn = \"127.0.0.1:8080\"\n",
        &[
            "unknown key `server.listn`",
            "allowed keys in [server]: listen, request_timeout, worker_threads",
        ],
    )]);
}

#[test]
fn unknown_section_lists_the_sections() {
    assert_file_errors(&[
        (
            "[servr]\nlisten = \"127.0.0.1:8080\"\n",
            &[
                "unknown key `servr`",
                "allowed sections: server, tls, admin, app",
            ],
        ),
        (
            "greeting = \"hi\"\n",
            &["unknown key `greeting`", "under [app]"],
        ),
    ]);
}

#[test]
fn unknown_key_from_the_environment_names_the_variable() {
    assert_env_errors(&[
        (
            "BATON_SERVER__LISTN",
            "127.0.0.1:1",
            &["unknown key `server.listn`", "allowed keys in [server]"],
        ),
        (
            "BATON_SERVR__LISTEN",
            "127.0.0.1:1",
            &["BATON_<SECTION>__<KEY>"],
        ),
    ]);
}

// ---- errors: values ----

#[test]
fn wrong_type_names_source_key_and_expected_type() {
    assert_file_errors(&[
        (
            "[server]\nworker_threads = \"four\"\n",
            &[
                "server.worker_threads = \"four\"",
                "expected a whole number",
            ],
        ),
        (
            "[admin]\nenabled = \"yes\"\n",
            &["admin.enabled", "expected true or false"],
        ),
        (
            "[app]\ngreeting = 5\n",
            &["app.greeting = 5", "expected a string"],
        ),
        (
            "server = 5\n",
            &["server = 5", "expected a table ([server])"],
        ),
        (
            "[log]\nformat = \"xml\"\n",
            &["log.format = \"xml\"", "\"text\" or \"json\""],
        ),
    ]);
    assert_env_errors(&[(
        "BATON_ADMIN__ENABLED",
        "maybe",
        &["admin.enabled = \"maybe\"", "expected true or false"],
    )]);
}

#[test]
fn invalid_duration_names_key_value_and_the_form() {
    assert_file_errors(&[
        (
            "[server]\nrequest_timeout = \"30 parsecs\"\n",
            &[
                "server.request_timeout = \"30 parsecs\"",
                "use a duration like \"500ms\", \"30s\" or \"2m\"",
            ],
        ),
        // A bare number has no unit: still a duration error, not a type puzzle.
        (
            "[lifecycle]\nlame_duck = 2\n",
            &["lifecycle.lame_duck = 2", "use a duration like"],
        ),
    ]);
}

#[test]
fn invalid_address_names_key_value_and_the_form() {
    assert_file_errors(&[(
        "[server]\nlisten = \"localhost:8080\"\n",
        &[
            "server.listen = \"localhost:8080\"",
            "expected IP:PORT, e.g. 127.0.0.1:8080",
        ],
    )]);
    assert_env_errors(&[("BATON_ADMIN__LISTEN", "9090", &["expected IP:PORT"])]);
}

#[test]
fn invalid_log_filter_names_key_and_reason() {
    assert_file_errors(&[(
        "[log]\nfilter = \"info,[\"\n",
        &["log.filter = \"info,[\"", "invalid log filter"],
    )]);
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
            "[server]\nlisten = \"127.0.0.1:8080\"\n\
             [admin]\nenabled = true\nlisten = \"127.0.0.1:8080\"",
            &[
                "admin.listen = \"127.0.0.1:8080\"",
                "same address as server.listen",
            ],
        ),
    ];
    assert_file_errors(cases);

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
    assert_env_errors(&[(
        "BATON_APP__ITEMS_LIMIT",
        "0",
        &["app.items_limit = 0", "allowed 1 to 100000"],
    )]);
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

/// The log format that is not `format`, so a test changes the key whatever the default.
fn other_format(format: LogFormat) -> LogFormat {
    match format {
        LogFormat::Text => LogFormat::Json,
        LogFormat::Json => LogFormat::Text,
    }
}

fn format_name(format: LogFormat) -> &'static str {
    match format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    }
}

#[test]
fn upgrade_only_changes_lists_exactly_the_changed_upgrade_only_keys() {
    let old = Settings::default();
    assert!(upgrade_only_changes(&old, &old).is_empty());
    let mut new = old.clone();
    new.app.greeting = "reloadable".to_owned();
    new.lifecycle.lame_duck = Duration::from_secs(1);
    assert!(upgrade_only_changes(&old, &new).is_empty());
    new.server.listen = SocketAddr::from(([127, 0, 0, 1], 1));
    new.log.format = other_format(old.log.format);
    new.reload.debounce = old.reload.debounce + Duration::from_millis(1);
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

#[tokio::test]
async fn reload_applies_keeps_unchanged_and_rejects_whole() {
    let dir = config_dir(&[("default.toml", "[app]\ngreeting = \"one\"\n")]);
    let store = store_over(dir.path());
    let before = store.current();

    // Applied.
    write(
        dir.path(),
        "default.toml",
        "[app]\ngreeting = \"two\"\nitems_limit = 7\n",
    );
    let outcome = store.reload_from(env(&[])).await;
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
    let outcome = store.reload_from(env(&[])).await;
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
    let outcome = store.reload_from(env(&[])).await;
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

#[tokio::test]
async fn reload_reads_the_environment_it_is_given() {
    let dir = config_dir(&[("default.toml", "")]);
    let store = store_over(dir.path());
    let outcome = store
        .reload_from(env(&[("BATON_APP__GREETING", "from env")]))
        .await;
    assert!(
        matches!(outcome, ReloadOutcome::Applied { .. }),
        "{outcome:?}"
    );
    assert_eq!(store.current().app.greeting, "from env");
    let outcome = store
        .reload_from(env(&[("BATON_APP__GRETING", "typo")]))
        .await;
    let ReloadOutcome::Rejected { error } = outcome else {
        panic!("an unknown variable must be rejected");
    };
    assert_contains_all(&error, &["environment variable BATON_APP__GRETING"]);
    assert_eq!(store.current().app.greeting, "from env");
}

#[tokio::test]
async fn upgrade_only_keys_are_reported_not_applied() {
    let dir = config_dir(&[("default.toml", "")]);
    let store = store_over(dir.path());
    let defaults = Settings::default();
    let listen = SocketAddr::from(([127, 0, 0, 1], 1));
    assert_ne!(defaults.server.listen, listen);
    let format = format_name(other_format(defaults.log.format));

    // Only upgrade-only keys changed: nothing to apply, but the user is told.
    write(
        dir.path(),
        "default.toml",
        &format!("[server]\nlisten = \"{listen}\"\n[log]\nformat = \"{format}\"\n"),
    );
    let outcome = store.reload_from(env(&[])).await;
    assert_eq!(
        outcome,
        ReloadOutcome::Unchanged {
            upgrade_only: vec!["server.listen", "log.format"]
        }
    );
    assert_eq!(store.generation(), 1);
    assert_eq!(*store.current(), defaults);

    // Mixed with a reloadable change: that one applies, the others stay as they are.
    let request_timeout = [Duration::from_secs(5), Duration::from_secs(6)]
        .into_iter()
        .find(|timeout| *timeout != defaults.server.request_timeout)
        .expect("one of two differs from the default");
    write(
        dir.path(),
        "default.toml",
        &format!(
            "[server]\nlisten = \"{listen}\"\nrequest_timeout = \"{}\"\n",
            humantime::format_duration(request_timeout)
        ),
    );
    let outcome = store.reload_from(env(&[])).await;
    assert_eq!(
        outcome,
        ReloadOutcome::Applied {
            config_generation: 2,
            upgrade_only: vec!["server.listen"]
        }
    );
    let current = store.current();
    assert_eq!(current.server.request_timeout, request_timeout);
    assert_eq!(current.server.listen, defaults.server.listen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reloads_are_each_counted_once() {
    const THREADS: u64 = 4;
    const RELOADS: u64 = 5;
    let dir = config_dir(&[("default.toml", "[app]\ngreeting = \"a\"\n")]);
    let store = Arc::new(store_over(dir.path()));
    write(dir.path(), "default.toml", "[app]\ngreeting = \"b\"\n");
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for _ in 0..RELOADS {
                    outcomes.push(store.reload_from(Vec::new()).await);
                }
                outcomes
            })
        })
        .collect();
    let mut outcomes: Vec<ReloadOutcome> = Vec::new();
    for handle in handles {
        outcomes.extend(handle.await.expect("reload task finished"));
    }
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
        access: false,
        otlp_endpoint: String::new(),
    };
    let telemetry = baton::telemetry::init(&log, 1).expect("first init installs the subscriber");
    telemetry
        .set_filter("warn")
        .expect("a valid filter applies");
    assert!(telemetry.set_filter("warn,[").is_err());
    let again = baton::telemetry::init(&log, 1);
    assert!(again.is_err(), "a second init must fail, not panic");
    telemetry.set_filter("off").expect("a valid filter applies");
}
