//! `baton upgrade`'s check before any signal, as `nginx -t`: the build the server will start
//! is named by the operator (or is this command itself), never by a run file, and must accept
//! the configuration.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::control::{ControlError, wait_for};
use super::record::ServerRecord;

/// `baton check` reads a few small files; far longer means the new build is broken. A shorter
/// `baton upgrade --timeout` bounds it too.
pub(super) const PRECHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// What `check` says on stderr is shown to the user; a build that says more is cut short.
const PRECHECK_STDERR_MAX: u64 = 64 * 1024;
/// After `check` exited, how long its stderr may take to reach end of file (a process it
/// left behind may hold the pipe).
const PRECHECK_STDERR_GRACE: Duration = Duration::from_secs(2);

/// Checks the build an upgrade of `pid` will start, before anything is signalled: `binary`
/// (the operator's word) or this command's own executable, and never the program the state
/// file names. Whoever can write that file could name any program, and the client may run as
/// root. The file only says which path the server will start; that path must be the build
/// checked (both canonical), or the check would vouch for a file that does not run.
pub(super) fn precheck(
    pid: u32,
    record: &ServerRecord,
    binary: Option<&Path>,
    limit: Duration,
) -> Result<(), ControlError> {
    let (given, origin) = match binary {
        Some(path) => (path.to_owned(), "given by --binary"),
        None => (
            std::env::current_exe().map_err(|e| {
                ControlError::UpgradeFailed(format!(
                    "cannot find this command's own executable ({e}); pass the build to check \
                     with --binary; nothing was changed"
                ))
            })?,
            "this command's own executable",
        ),
    };
    let checked = std::fs::canonicalize(&given).map_err(|e| {
        ControlError::UpgradeFailed(format!(
            "cannot run {}: {}; nothing was changed",
            given.display(),
            cannot_run(&e)
        ))
    })?;
    // Resolving a path runs nothing; a relative one is relative to the server's directory.
    let will_start = std::fs::canonicalize(record.cwd.join(&record.program)).map_err(|e| {
        ControlError::UpgradeFailed(format!(
            "the server (pid {pid}) will start {} at an upgrade: {}; nothing was changed",
            record.program_path().display(),
            cannot_run(&e)
        ))
    })?;
    if will_start != checked {
        return Err(ControlError::WrongBinary {
            pid,
            will_start: record.program_path(),
            checked,
            origin,
        });
    }
    // `--config-dir` from the state file is safe to pass: it only tells `check` where to read
    // configuration files (baton reads `default.toml` and `<BATON_ENV>.toml` there and runs
    // nothing); the worst a forged one can do is fail the check, or show its author's TOML.
    run_check(&checked, &record.cwd.join(&record.config_dir), limit)
}

/// Why a build cannot be run, and what to do.
fn cannot_run(err: &std::io::Error) -> String {
    let what = match err.kind() {
        std::io::ErrorKind::NotFound => "it does not exist; install the new build there",
        std::io::ErrorKind::PermissionDenied => "it is not executable; `chmod +x` it",
        _ => "it could not be started",
    };
    format!("{what} ({err})")
}

/// Runs `<program> --config-dir <dir> check` for `limit` at most: a new build that hangs is a
/// failed check, not a hung client.
fn run_check(program: &Path, config_dir: &Path, limit: Duration) -> Result<(), ControlError> {
    let shown = program.display();
    let mut child = Command::new(program)
        .arg("--config-dir")
        .arg(config_dir)
        .arg("check")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            ControlError::UpgradeFailed(format!(
                "cannot run {shown}: {}; nothing was changed",
                cannot_run(&e)
            ))
        })?;
    // Read while it runs: a build that writes more than a pipe holds would otherwise stall.
    let stderr = child.stderr.take().map(|pipe| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut text = Vec::new();
            let mut pipe = pipe.take(PRECHECK_STDERR_MAX);
            let _ = pipe.read_to_end(&mut text);
            let _ = std::io::copy(&mut pipe.into_inner(), &mut std::io::sink());
            let _ = tx.send(text);
        });
        rx
    });
    let status = wait_for(
        limit,
        "`check` of the new binary",
        program,
        || match child.try_wait() {
            Ok(Some(status)) => Some(Ok(status)),
            Ok(None) => None,
            Err(e) => Some(Err(ControlError::UpgradeFailed(format!(
                "cannot wait for `{shown} check`: {e}"
            )))),
        },
    );
    let status = match status {
        Ok(status) => status,
        Err(ControlError::Timeout { .. }) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ControlError::UpgradeFailed(format!(
                "`{shown} check` did not finish within {limit:?}; the new build looks \
                 broken, nothing was changed"
            )));
        }
        Err(err) => return Err(err),
    };
    if status.success() {
        return Ok(());
    }
    let stderr = stderr
        .and_then(|rx| rx.recv_timeout(PRECHECK_STDERR_GRACE).ok())
        .unwrap_or_default();
    let stderr = String::from_utf8_lossy(&stderr);
    let stderr = stderr.trim();
    Err(ControlError::UpgradeFailed(if stderr.is_empty() {
        format!(
            "`{shown} check` failed ({}) without a message; the new build looks broken, \
             nothing was changed",
            super::upgrade::describe(status)
        )
    } else {
        format!("{shown} rejects the configuration, nothing was changed: {stderr}")
    }))
}
