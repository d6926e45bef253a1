//! The run files on disk: the pid file here, and the JSON records `record` keeps beside it.
//! Written so that nobody can plant, redirect or widen them, and read by the client commands
//! only when nobody but the server's user could have written them. Also the pid's identity
//! (`/proc/<pid>/stat`), which says whether a pid still names the process that wrote the file.
//!
//! # Who may write a run file
//! A client trusts a run file only when the server's user alone could have written it:
//! - the file is a plain file (not a symbolic link, FIFO, ...) writable by its owner only;
//! - it belongs to the run directory's owner, the server's user, and that directory is writable
//!   by its owner only (no group or other write bit);
//! - or, in a directory others can write (a Kubernetes `emptyDir` is root's, mode 0777), it
//!   belongs to the user running the command: nobody else can create a file owned by that user,
//!   so only the server, running as the same user, wrote it. Anyone else's file there is refused:
//!   run the command as the server's user.
//!
//! Anyone else who can write there could name any process or program, so a file that fails
//! this is refused with what is wrong and how to fix it, before anything reads what it says.
//! The server itself is held to the same rule by construction: it creates `run/` 0750 and its
//! files 0640, whatever its umask. What the server's own user writes is still checked by the
//! clients against the process it names (see `trust`) and never executed.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;

/// The mode of a run directory baton creates: the server's user writes, its group may read.
pub(crate) const RUN_DIR_MODE: u32 = 0o750;
/// The mode of every run file: the server's user writes, its group may read.
pub(crate) const RUN_FILE_MODE: u32 = 0o640;
/// Run files are a few hundred bytes: a reader stops well past that.
const MAX_RUN_FILE: u64 = 1 << 20;

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
    #[error("refusing {}: {why}", path.display())]
    Untrusted { path: PathBuf, why: Distrust },
}

/// Why a run file could have been written by someone other than the server's user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Distrust {
    #[error(
        "its directory {} is writable by {} (mode {mode:03o}), so anyone there could have put \
         files in it, and it belongs to uid {owner}, not to the user running this command; run \
         the command as the server's user (uid {owner}) if baton runs as that user, or give \
         the run files a directory of their own (baton creates it {RUN_DIR_MODE:03o}: \
         `chmod {RUN_DIR_MODE:o} {}`) and remove the files in it that baton did not write",
        dir.display(), writers(*mode), dir.display()
    )]
    WritableDirectory { dir: PathBuf, mode: u32, owner: u32 },
    #[error(
        "it is writable by {} (mode {mode:03o}), so someone other than the server's user could \
         have written it; baton writes its run files {RUN_FILE_MODE:03o}: if this one is \
         baton's, `chmod {RUN_FILE_MODE:o} {}`, otherwise remove it",
        writers(*mode), path.display()
    )]
    WritableFile { path: PathBuf, mode: u32 },
    #[error(
        "it belongs to uid {owner}, but its directory {} belongs to uid {dir_owner}, the \
         server's user, who alone writes run files there; remove it if baton is not running, \
         otherwise `chown {dir_owner} {}`",
        dir.display(), path.display()
    )]
    OtherOwner {
        path: PathBuf,
        owner: u32,
        dir: PathBuf,
        dir_owner: u32,
    },
    #[error(
        "it is a symbolic link or another special file, not a plain file as baton writes its \
         run files, so someone else put it there: remove it"
    )]
    NotPlain,
}

/// Who besides the owner may write, from a mode's write bits.
fn writers(mode: u32) -> &'static str {
    match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => "its group and others",
        (true, false) => "its group",
        _ => "others",
    }
}

/// A run file's contents, read after checking who could have written it.
#[derive(Debug, Clone)]
pub(crate) struct RunFile {
    pub(crate) text: String,
    /// The file's owner, which is the run directory's: the server's user.
    pub(crate) owner: u32,
}

/// The directory a run file lives in (`.` for a bare name).
fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Reads a run file for a client, applying the rule in the module docs; `None` when there is no
/// such file. The checks are made on the opened file (no symlink followed, `fstat`), so the file
/// checked is the file read.
pub(crate) fn read_trusted(path: &Path) -> Result<Option<RunFile>, PidFileError> {
    let untrusted = |why| PidFileError::Untrusted {
        path: path.to_owned(),
        why,
    };
    let read_error = |source| PidFileError::Read {
        path: path.to_owned(),
        source,
    };
    // O_NOFOLLOW: a symlink fails with ELOOP instead of being read through.
    let mut file = match open(path, OFlag::O_NOFOLLOW) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) if err.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(untrusted(Distrust::NotPlain));
        }
        Err(err) => return Err(read_error(err)),
    };
    let dir = directory_of(path);
    let dir_meta = std::fs::metadata(dir).map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    let seen = Seen {
        dir,
        dir_mode: dir_meta.mode(),
        dir_owner: dir_meta.uid(),
        plain: meta.is_file(),
        mode: meta.mode(),
        owner: meta.uid(),
    };
    seen.judge(path, nix::unistd::geteuid().as_raw())
        .map_err(untrusted)?;
    Ok(Some(RunFile {
        text: read_capped(&mut file).map_err(read_error)?,
        owner: meta.uid(),
    }))
}

/// What `read_trusted` saw of a run file and its directory, judged apart from the file system.
struct Seen<'a> {
    dir: &'a Path,
    dir_mode: u32,
    dir_owner: u32,
    plain: bool,
    mode: u32,
    owner: u32,
}

impl Seen<'_> {
    /// The rule in the module docs; `caller` is the effective uid of the command reading.
    fn judge(&self, path: &Path, caller: u32) -> Result<(), Distrust> {
        if !self.plain {
            return Err(Distrust::NotPlain);
        }
        if self.mode & 0o022 != 0 {
            return Err(Distrust::WritableFile {
                path: path.to_owned(),
                mode: self.mode & 0o7777,
            });
        }
        let shared_dir = self.dir_mode & 0o022 != 0;
        if shared_dir && self.owner != caller {
            return Err(Distrust::WritableDirectory {
                dir: self.dir.to_owned(),
                mode: self.dir_mode & 0o7777,
                owner: self.owner,
            });
        }
        if !shared_dir && self.owner != self.dir_owner {
            return Err(Distrust::OtherOwner {
                path: path.to_owned(),
                owner: self.owner,
                dir: self.dir.to_owned(),
                dir_owner: self.dir_owner,
            });
        }
        Ok(())
    }
}

/// Opens a run file for reading. O_NONBLOCK: a FIFO planted at the name would otherwise block
/// the open, and then the read, until someone writes to it.
fn open(path: &Path, flags: OFlag) -> std::io::Result<std::fs::File> {
    OpenOptions::new()
        .read(true)
        .custom_flags((flags | OFlag::O_NONBLOCK).bits())
        .open(path)
}

/// A run file's text, up to `MAX_RUN_FILE` bytes.
fn read_capped(file: &mut std::fs::File) -> std::io::Result<String> {
    let mut bytes = Vec::new();
    file.take(MAX_RUN_FILE).read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// A run file's text, without the checks of `read_trusted`: for the process that wrote it,
/// and for a client once `read_trusted` has vouched for the directory. Never blocks on a FIFO.
pub(crate) fn read_text(path: &Path) -> std::io::Result<String> {
    read_capped(&mut open(path, OFlag::empty())?)
}

/// Writes `contents` to `path` so that a reader sees the old file or the new one, never a
/// part, and so that nobody else can interfere: a temporary file with an unpredictable name,
/// created exclusively (an existing name, a planted symlink included, is never opened) in the
/// same directory, given mode 0640, then put in `path`'s place (see [`replace`]; a symlink
/// there is replaced, never followed).
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = directory_of(path);
    create_run_dir(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "baton".to_owned());
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    // Set on the open file: the mode given to open(2) is filtered by the umask (000 would
    // give 0666 files, 077 unreadable ones for the group).
    tmp.as_file()
        .set_permissions(Permissions::from_mode(RUN_FILE_MODE))?;
    tmp.write_all(contents)?;
    // No fsync: readers need atomicity (the rename gives it), not durability across a
    // machine crash (run files describe processes that would be gone too), and an fsync
    // here once held the command loop for 255 ms.
    replace(tmp, path)
}

/// Puts `tmp` at `path`, atomically for readers. Over an existing file, by exchanging the two
/// names (`renameat2(RENAME_EXCHANGE)`) and removing the old file under the temporary name:
/// rename(2) over a file makes ext4 (`auto_da_alloc`) start writing the new file's data out at
/// once, which cost 0.5 ms at the median and 3-4 ms at the 90th percentile per file on this
/// machine while other processes wrote to the disk, against 0.09 ms for the exchange. Anywhere
/// else (nothing at `path` yet, a symlink or a directory there, a file system or libc without
/// the exchange), a plain rename.
fn replace(tmp: tempfile::NamedTempFile, path: &Path) -> std::io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_file()) {
        use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
        if renameat2(
            AT_FDCWD,
            tmp.path(),
            AT_FDCWD,
            path,
            RenameFlags::RENAME_EXCHANGE,
        )
        .is_ok()
        {
            // The temporary name holds the old file now. Left behind, it would only be
            // clutter next to the run files (never read: no client opens `.<name>.*.tmp`).
            let _ = tmp.close();
            return Ok(());
        }
    }
    // On failure the temporary file is removed when the error drops it.
    tmp.persist(path).map_err(|err| err.error)?;
    Ok(())
}

/// Creates the run directory `RUN_DIR_MODE` whatever the umask. One that exists is left as it
/// is (it may be shared, as a systemd `RuntimeDirectory=`); the clients check it.
fn create_run_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = DirBuilder::new();
    builder.mode(RUN_DIR_MODE);
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        builder.recursive(true).create(parent)?;
        builder.recursive(false);
    }
    match builder.create(dir) {
        // mkdir(2)'s mode is filtered by the umask too.
        Ok(()) => std::fs::set_permissions(dir, Permissions::from_mode(RUN_DIR_MODE)),
        // Another generation made it meanwhile.
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(err),
    }
}

pub(crate) fn write(path: &Path, pid: u32) -> std::io::Result<()> {
    write_atomic(path, format!("{pid}\n").as_bytes())
}

fn parse_pid(path: &Path, content: &str) -> Result<u32, PidFileError> {
    content.trim().parse().map_err(|_| PidFileError::Garbage {
        path: path.to_owned(),
        content: content.trim().chars().take(40).collect(),
    })
}

/// The pid in the file; `None` when there is no file. Unchecked: for the server, which wrote
/// it, and for a client once `read_trusted_pid` has vouched for the directory.
pub(crate) fn read(path: &Path) -> Result<Option<u32>, PidFileError> {
    match read_text(path) {
        Ok(content) => parse_pid(path, &content).map(Some),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PidFileError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The pid in the file and the user who wrote it, for a client (see the module docs); `None`
/// when there is no file.
pub(crate) fn read_trusted_pid(path: &Path) -> Result<Option<(u32, u32)>, PidFileError> {
    let Some(file) = read_trusted(path)? else {
        return Ok(None);
    };
    Ok(Some((parse_pid(path, &file.text)?, file.owner)))
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
        let uid = std::fs::metadata(&path).expect("stat").uid();
        assert_eq!(read_trusted_pid(&path).expect("trusted"), Some((4242, uid)));
        assert_eq!(mode(&path), RUN_FILE_MODE);
        assert_eq!(mode(&dir.path().join("run")), RUN_DIR_MODE);
        remove_if_ours(&path, 1);
        assert!(path.exists(), "another pid must not remove it");
        remove_if_ours(&path, 4242);
        assert_eq!(read(&path).expect("read"), None);
    }

    #[test]
    fn a_rewrite_replaces_the_file_whole_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run/baton.pid");
        for pid in [1, 4242, 7] {
            write(&path, pid).expect("write");
            assert_eq!(read(&path).expect("read"), Some(pid));
            assert_eq!(mode(&path), RUN_FILE_MODE);
        }
        let names: Vec<_> = std::fs::read_dir(dir.path().join("run"))
            .expect("list run/")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["baton.pid"], "no temporary file is left");
    }

    #[test]
    fn garbage_is_reported_with_what_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("baton.pid");
        std::fs::write(&path, "hello\n").expect("write");
        let err = read(&path).expect_err("garbage");
        assert!(err.to_string().contains("not a pid"), "{err}");
    }

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).expect("stat").mode() & 0o7777
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn a_planted_symlink_is_never_written_through() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = dir.path().join("run");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").expect("write the victim");
        std::fs::create_dir(&run).expect("mkdir run");
        chmod(&run, RUN_DIR_MODE);
        let path = run.join("baton.state.json");
        // At the final name: replaced, not followed.
        std::os::unix::fs::symlink(&victim, &path).expect("plant a symlink");
        write_atomic(&path, b"{}").expect("write");
        assert_eq!(
            std::fs::read_to_string(&victim).expect("victim"),
            "precious"
        );
        assert!(std::fs::symlink_metadata(&path).expect("stat").is_file());
        let names: Vec<_> = std::fs::read_dir(&run)
            .expect("list run/")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["baton.state.json"], "no temporary file is left");
    }

    #[test]
    fn run_files_others_could_write_are_refused_with_what_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = dir.path().join("run");
        let path = run.join("baton.pid");
        write(&path, 4242).expect("write");
        let refused = |expected: &str| {
            let err = read_trusted_pid(&path).expect_err("refused");
            let message = err.to_string();
            assert!(message.starts_with("refusing "), "{message}");
            assert!(message.contains(expected), "{expected:?} in {message}");
        };

        chmod(&path, 0o660);
        refused("writable by its group (mode 660)");
        assert_eq!(
            read(&path).expect("read"),
            Some(4242),
            "the server's own read works"
        );
        refused(&format!("`chmod 640 {}`", path.display()));
        chmod(&path, 0o642);
        refused("writable by others (mode 642)");
        chmod(&path, RUN_FILE_MODE);

        // A directory others can write (an emptyDir): the caller's own file is trusted.
        chmod(&run, 0o1777);
        assert!(read_trusted_pid(&path).expect("the caller's own").is_some());
        chmod(&run, RUN_DIR_MODE);

        let elsewhere = dir.path().join("elsewhere");
        std::fs::copy(&path, &elsewhere).expect("copy");
        std::fs::remove_file(&path).expect("remove");
        std::os::unix::fs::symlink(&elsewhere, &path).expect("symlink");
        refused("symbolic link");
        std::fs::remove_file(&path).expect("remove");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        refused("not a plain file");
        assert!(read(&path).is_err(), "a FIFO blocks no reader");
        std::fs::remove_file(&path).expect("remove");

        write(&path, 4242).expect("write");
        assert!(read_trusted_pid(&path).expect("trusted").is_some());
        assert_eq!(read_trusted_pid(&run.join("none")).expect("no file"), None);
    }

    #[test]
    fn in_a_directory_others_can_write_only_the_callers_own_files_are_trusted() {
        let dir = Path::new("/app/run");
        let path = dir.join("baton.pid");
        // Kubernetes' emptyDir: root's, 0777; the server and the command run as 65532.
        let seen = |owner| Seen {
            dir,
            dir_mode: 0o40777,
            dir_owner: 0,
            plain: true,
            mode: 0o100640,
            owner,
        };
        assert_eq!(seen(65532).judge(&path, 65532), Ok(()));
        let err = seen(1000)
            .judge(&path, 65532)
            .expect_err("someone else's file");
        let message = err.to_string();
        assert!(
            message.contains("/app/run is writable by its group and others (mode 777)"),
            "{message}"
        );
        assert!(
            message.contains("as the server's user (uid 1000)"),
            "{message}"
        );
        // Root running the command does not make another user's file there trustworthy.
        assert!(seen(65532).judge(&path, 0).is_err());
        // In a private directory the owner is the directory's, whoever runs the command.
        let private = Seen {
            dir_mode: 0o40750,
            dir_owner: 65532,
            ..seen(65532)
        };
        assert_eq!(private.judge(&path, 0), Ok(()));
        let planted = Seen {
            owner: 1000,
            ..private
        };
        assert!(matches!(
            planted.judge(&path, 0),
            Err(Distrust::OtherOwner { .. })
        ));
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
