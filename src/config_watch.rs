//! Reload when the configuration files change (`reload.watch`): a file watcher that injects
//! [`Command::Reload`], so a change takes exactly the path of SIGUSR1 (validate, swap
//! atomically, or keep the old configuration whole and record why).
//!
//! # Why the directory is watched, not the files
//! A watch on a file follows its inode, and the usual ways of changing a config file replace
//! the inode: editors and `sed -i` write a new file and rename it over the old one, and a
//! Kubernetes ConfigMap volume never touches `default.toml` at all. There, `default.toml` is a
//! symlink to `..data/default.toml`, and `..data` is a symlink to a timestamped directory; an
//! update writes a new timestamped directory and renames a new `..data` symlink over the old
//! one. A watch on the file would see the first swap and then nothing, ever. A watch on the
//! directory sees every rename into it, for as long as the directory exists. So the directory
//! is watched (not recursively) and its events are filtered to the names that can change what
//! [`Settings::load`](crate::settings::Settings::load) reads: `default.toml`, `<BATON_ENV>.toml`
//! and `..data`.
//!
//! Other files a reload reads (the TLS certificate and key) are watched the same way: their
//! directories, filtered to their names and `..data` (a Kubernetes Secret volume, as
//! cert-manager fills it, swaps `..data` like a ConfigMap; certbot replaces the links in
//! `live/`). The files are those named when the watch started; a reload that names other files
//! reads them, but they are watched from the next upgrade on.
//!
//! # Debounce
//! One save is several events (truncate, write, close; or create, rename), and a ConfigMap
//! swap is a few more. The first relevant event opens a window; each further one extends it
//! by `reload.debounce`; when it has been quiet that long, one reload is requested. A file
//! rewritten without pause cannot hold reloads off forever: the reload comes at the latest
//! ten debounce windows after the first event.
//!
//! # Lifetime
//! The watcher lives until the process starts to drain: a draining process ignores reloads,
//! and its successor runs its own watcher (under the supervisor, the serving worker watches).
//! A watch that cannot be set up (inotify limits) stops the process from starting, as an
//! invalid setting would: silently not watching would leave ConfigMap updates unapplied, and
//! during an upgrade the old process simply keeps serving. Only the directory's entries are
//! watched: if the directory itself is moved or deleted, that is logged and watching ends.

use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::lifecycle::{Command, CommandSender};
use crate::settings::ConfigSource;

/// The atomically swapped symlink of a Kubernetes ConfigMap (or Secret) volume.
const KUBERNETES_DATA_LINK: &str = "..data";

/// A reload comes at the latest this many debounce windows after the first change.
const HOLD_LIMIT: u32 = 10;

/// Changes noticed but not yet handled. When full, a reload is already due and the change
/// would be read by it anyway, so further events are dropped instead of queued.
const PENDING_CAPACITY: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("reload.watch: cannot watch the configuration directory {}: {source}; {hint}", dir.display())]
    Watch {
        dir: PathBuf,
        #[source]
        source: notify::Error,
        hint: &'static str,
    },
}

/// Watches `source`'s directory and the directories of `files` (other files a reload reads),
/// and sends [`Command::Reload`] through `commands` after each change to a file it reads,
/// debounced by `debounce`, until `stop` resolves. Returns once the watch is in place: a change
/// made after that is seen. Must be called inside the runtime.
pub fn spawn(
    source: &ConfigSource,
    files: &[PathBuf],
    debounce: Duration,
    commands: CommandSender,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WatchError> {
    let fail = |dir: &Path, source: notify::Error| WatchError::Watch {
        dir: dir.to_owned(),
        hint: hint(&source),
        source,
    };
    // Event paths are compared with this one, and notify reports them absolute.
    let dir = std::path::absolute(&source.dir).map_err(|e| fail(&source.dir, e.into()))?;
    let mut filter = Filter::new(&dir, source);
    for file in files {
        let file = std::path::absolute(file).map_err(|e| fail(file, e.into()))?;
        filter.add_file(&file);
    }
    let dirs: Vec<PathBuf> = filter.watched.iter().map(|w| w.dir.clone()).collect();
    let (changes, pending) = mpsc::channel(PENDING_CAPACITY);
    // Runs on notify's own thread: classify, then hand over without blocking it.
    let handler = move |event: notify::Result<Event>| match event {
        Ok(event) => match filter.classify(&event) {
            Some(Change::File(change)) => {
                // Full: a reload is due and will read this change too. Closed: draining.
                let _ = changes.try_send(change);
            }
            Some(Change::DirectoryGone(dir)) => tracing::warn!(
                dir = %dir.display(),
                "the configuration directory was moved or removed; changes are no longer \
                 watched (SIGUSR1 and `baton reload` still work; the next upgrade watches again)"
            ),
            None => {}
        },
        Err(err) => tracing::warn!(error = %err, "configuration watcher error"),
    };
    let mut watcher = notify::recommended_watcher(handler).map_err(|e| fail(&dir, e))?;
    for dir in &dirs {
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|e| fail(dir, e))?;
    }
    tracing::info!(dirs = ?dirs, ?debounce, "watching the configuration for changes");
    tokio::spawn(async move {
        // Dropping the watcher removes the watch and ends notify's thread.
        let _watcher = watcher;
        debounce_reloads(pending, debounce, commands, stop).await;
        tracing::debug!("configuration watcher stopped");
    });
    Ok(())
}

/// What the user can do about a watch that cannot be set up.
fn hint(err: &notify::Error) -> &'static str {
    match &err.kind {
        notify::ErrorKind::MaxFilesWatch => {
            "the inotify watch limit is reached: raise the sysctl fs.inotify.max_user_watches, \
             or set reload.watch = false (SIGUSR1 and `baton reload` still reload)"
        }
        // inotify_init fails with EMFILE when the per-user instance limit is reached.
        notify::ErrorKind::Io(io) if io.raw_os_error() == Some(nix::libc::EMFILE) => {
            "too many inotify instances or open files: raise the sysctl \
             fs.inotify.max_user_instances (or the open files limit), \
             or set reload.watch = false (SIGUSR1 and `baton reload` still reload)"
        }
        _ => {
            "set reload.watch = false to serve without it (SIGUSR1 and `baton reload` still reload)"
        }
    }
}

/// Waits for a first change, then for `debounce` of quiet (bounded by `HOLD_LIMIT`), then
/// requests one reload; again until `stop` resolves or the process stops taking commands.
async fn debounce_reloads(
    mut pending: mpsc::Receiver<FileChange>,
    debounce: Duration,
    commands: CommandSender,
    stop: impl Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    loop {
        let first = tokio::select! {
            () = &mut stop => return,
            change = pending.recv() => match change {
                Some(change) => change,
                None => return,
            },
        };
        let hold_until = Instant::now() + debounce * HOLD_LIMIT;
        let mut quiet_at = Instant::now() + debounce;
        let mut events = 1_usize;
        loop {
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep_until(quiet_at.min(hold_until)) => break,
                change = pending.recv() => match change {
                    Some(_) => {
                        events += 1;
                        quiet_at = Instant::now() + debounce;
                    }
                    None => return,
                },
            }
        }
        tracing::debug!(
            file = %first.name.to_string_lossy(),
            event = ?first.kind,
            events,
            "configuration changed on disk; reloading"
        );
        if !commands.send(Command::Reload) {
            return;
        }
    }
}

/// A change that may alter what the settings loader reads.
#[derive(Debug, Clone, PartialEq)]
struct FileChange {
    /// The entry of the config directory it touched (`default.toml`, `..data`, ...), or the
    /// directory's own path when the kernel's event queue overflowed and anything may have
    /// changed.
    name: OsString,
    kind: EventKind,
}

#[derive(Debug, Clone, PartialEq)]
enum Change {
    File(FileChange),
    /// A watched directory itself was renamed or deleted: no further event will come from it.
    DirectoryGone(PathBuf),
}

/// Decides which events can change what a reload reads.
#[derive(Debug)]
struct Filter {
    /// The configuration directory first.
    watched: Vec<Watched>,
}

/// One watched directory.
#[derive(Debug)]
struct Watched {
    dir: PathBuf,
    /// Directory entries whose change can change what a reload reads.
    names: Vec<OsString>,
}

impl Filter {
    fn new(dir: &Path, source: &ConfigSource) -> Self {
        let mut names = vec![OsString::from("default.toml"), KUBERNETES_DATA_LINK.into()];
        if let Some(env_name) = &source.env_name {
            names.push(format!("{env_name}.toml").into());
        }
        Self {
            watched: vec![Watched {
                dir: dir.to_owned(),
                names,
            }],
        }
    }

    /// Also watches `file` (an absolute path), and `..data` beside it.
    fn add_file(&mut self, file: &Path) {
        let (Some(dir), Some(name)) = (file.parent(), file.file_name()) else {
            return;
        };
        let index = match self.watched.iter().position(|w| w.dir == dir) {
            Some(index) => index,
            None => {
                self.watched.push(Watched {
                    dir: dir.to_owned(),
                    names: vec![KUBERNETES_DATA_LINK.into()],
                });
                self.watched.len() - 1
            }
        };
        let names = &mut self.watched[index].names;
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }

    fn classify(&self, event: &Event) -> Option<Change> {
        if event.need_rescan() {
            // The kernel dropped events: anything may have changed.
            return Some(Change::File(FileChange {
                name: self.watched[0].dir.clone().into_os_string(),
                kind: event.kind,
            }));
        }
        if !changes_content(&event.kind) {
            return None;
        }
        for path in &event.paths {
            if self.watched.iter().any(|w| w.dir == *path) {
                if matches!(
                    event.kind,
                    EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
                ) {
                    return Some(Change::DirectoryGone(path.clone()));
                }
                continue;
            }
            let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
                continue;
            };
            let relevant = self
                .watched
                .iter()
                .any(|w| w.dir == dir && w.names.iter().any(|n| n == name));
            if relevant {
                return Some(Change::File(FileChange {
                    name: name.to_owned(),
                    kind: event.kind,
                }));
            }
        }
        None
    }
}

/// Whether an event kind can mean new content. Opening and reading are not changes; they
/// must be ignored, or the reload's own read of the file would trigger the next reload.
fn changes_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(access) => *access == AccessKind::Close(AccessMode::Write),
        // A rename pair is also reported as its two halves; the halves are enough.
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => false,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        EventKind::Any | EventKind::Other => true,
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, DataChange, Flag, RemoveKind};

    use super::*;

    fn filter(env_name: Option<&str>) -> Filter {
        let source = ConfigSource::new("/srv/config", env_name.map(str::to_owned));
        Filter::new(Path::new("/srv/config"), &source)
    }

    fn event(kind: EventKind, path: &str) -> Event {
        Event::new(kind).add_path(PathBuf::from(path))
    }

    fn file(name: &str, kind: EventKind) -> Option<Change> {
        Some(Change::File(FileChange {
            name: name.into(),
            kind,
        }))
    }

    #[test]
    fn a_write_to_a_settings_file_is_a_change() {
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        let filter = filter(Some("production"));
        for name in ["default.toml", "production.toml"] {
            let path = format!("/srv/config/{name}");
            assert_eq!(filter.classify(&event(write, &path)), file(name, write));
        }
    }

    #[test]
    fn a_kubernetes_data_swap_is_a_change() {
        let moved_in = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        assert_eq!(
            filter(None).classify(&event(moved_in, "/srv/config/..data")),
            file("..data", moved_in)
        );
    }

    #[test]
    fn reads_and_other_files_are_not_changes() {
        let filter = filter(None);
        let open = EventKind::Access(AccessKind::Open(AccessMode::Any));
        let close_read = EventKind::Access(AccessKind::Close(AccessMode::Read));
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        let cases = [
            (open, "/srv/config/default.toml"),
            (close_read, "/srv/config/default.toml"),
            // Another environment's file, an editor's swap file, a file in a subdirectory.
            (write, "/srv/config/production.toml"),
            (write, "/srv/config/.default.toml.swp"),
            (write, "/srv/config/..2026_01_01/default.toml"),
            (
                EventKind::Create(CreateKind::Folder),
                "/srv/config/..2026_01_02",
            ),
        ];
        for (kind, path) in cases {
            assert_eq!(filter.classify(&event(kind, path)), None, "{kind:?} {path}");
        }
    }

    #[test]
    fn an_overflow_is_a_change() {
        let overflow = Event::new(EventKind::Other).set_flag(Flag::Rescan);
        assert!(matches!(
            filter(None).classify(&overflow),
            Some(Change::File(_))
        ));
    }

    #[test]
    fn losing_the_directory_is_reported() {
        let removed = EventKind::Remove(RemoveKind::Folder);
        assert_eq!(
            filter(None).classify(&event(removed, "/srv/config")),
            Some(Change::DirectoryGone("/srv/config".into()))
        );
    }

    #[test]
    fn the_certificate_files_and_their_secret_volume_swap_are_changes() {
        let mut filter = filter(None);
        filter.add_file(Path::new("/srv/tls/tls.crt"));
        filter.add_file(Path::new("/srv/tls/tls.key"));
        filter.add_file(Path::new("/srv/config/cert.pem"));
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        let moved_in = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        assert_eq!(
            filter.classify(&event(write, "/srv/tls/tls.key")),
            file("tls.key", write)
        );
        assert_eq!(
            filter.classify(&event(moved_in, "/srv/tls/..data")),
            file("..data", moved_in)
        );
        assert_eq!(
            filter.classify(&event(write, "/srv/config/cert.pem")),
            file("cert.pem", write)
        );
        // The certificate's name does not make it relevant in another directory.
        assert_eq!(filter.classify(&event(write, "/srv/config/tls.crt")), None);
        assert_eq!(filter.classify(&event(write, "/srv/tls/other.pem")), None);
    }
}
