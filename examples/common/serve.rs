//! How every example starts the binary under test: `PROGRAM serve` in its deployment
//! directory. Included by path (`#[path = "../common/serve.rs"]`): examples share no crate.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};

/// `program serve` in `dir`, stdout and stderr to `dir/baton.log`, stdin closed, and none of
/// the caller's `BATON_*` variables: a stray one would change the settings (or, as an unknown
/// key, stop baton from starting).
pub(crate) fn serve_command(program: &Path, dir: &Path) -> std::io::Result<Command> {
    let log = File::create(dir.join("baton.log"))?;
    let mut command = Command::new(program);
    command
        .arg("serve")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("BATON_") {
            command.env_remove(name);
        }
    }
    Ok(command)
}
