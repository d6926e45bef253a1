//! The pid file and its verification: written atomically once the process serves, removed at
//! exit only if it still names us, and never trusted without checking that the pid is still
//! the process that wrote it.

use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    #[error("cannot read the pid file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the pid file {path} holds {content:?}, which is not a pid; remove it if no baton runs"
    )]
    Garbage { path: PathBuf, content: String },
}

/// Writes `contents` to `path` so that a reader sees the old file or the new one, never a
/// part: a temporary file in the same directory, then a rename.
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "baton".to_owned());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        // No fsync: readers need atomicity (the rename gives it), not durability across a
        // machine crash (run files describe processes that would be gone too), and an fsync
        // here once held the command loop for 255 ms.
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(contents)?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

pub(crate) fn write(path: &Path, pid: u32) -> std::io::Result<()> {
    write_atomic(path, format!("{pid}\n").as_bytes())
}

/// The pid in the file; `None` when there is no file.
pub(crate) fn read(path: &Path) -> Result<Option<u32>, PidFileError> {
    match std::fs::read_to_string(path) {
        Ok(content) => content
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| PidFileError::Garbage {
                path: path.to_owned(),
                content: content.trim().chars().take(40).collect(),
            }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PidFileError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Removes `path` if it still names `pid`: after an upgrade it names the next generation,
/// which must keep it.
pub(crate) fn remove_if_ours(path: &Path, pid: u32) {
    if matches!(read(path), Ok(Some(p)) if p == pid) {
        let _ = std::fs::remove_file(path);
    }
}

/// The state file that goes with a pid file: `run/baton.pid` -> `run/baton.state.json`.
pub fn state_path(pid_file: &Path) -> PathBuf {
    pid_file.with_extension("state.json")
}

/// A process as `/proc/<pid>/stat` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Clock ticks since boot at which the process started: with the pid, it names one process
    /// for the life of the machine (pids are reused, this pair is not).
    pub start_ticks: u64,
    /// Exited but not yet reaped by its parent: as good as gone.
    pub zombie: bool,
}

/// Reads `/proc/<pid>/stat`; `None` when there is no such process.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may itself hold spaces or ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: field 3 (state) is fields[0], field 22 (starttime) is fields[19].
    Some(ProcStat {
        zombie: fields.first()? == &"Z",
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_then_read_then_remove_only_if_ours() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run/baton.pid");
        write(&path, 4242).expect("write");
        assert_eq!(read(&path).expect("read"), Some(4242));
        remove_if_ours(&path, 1);
        assert!(path.exists(), "another pid must not remove it");
        remove_if_ours(&path, 4242);
        assert_eq!(read(&path).expect("read"), None);
    }

    #[test]
    fn garbage_is_reported_with_what_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("baton.pid");
        std::fs::write(&path, "hello\n").expect("write");
        let err = read(&path).expect_err("garbage");
        assert!(err.to_string().contains("not a pid"), "{err}");
    }

    #[test]
    fn own_stat_is_readable_and_stable() {
        let me = std::process::id();
        let first = proc_stat(me).expect("own stat");
        assert!(!first.zombie);
        assert_eq!(proc_stat(me), Some(first));
        assert_eq!(
            state_path(Path::new("run/baton.pid")),
            Path::new("run/baton.state.json")
        );
    }
}
