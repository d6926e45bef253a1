//! The settings in force, swapped atomically (`ArcSwap`) at each successful reload.
//!
//! A reload reads every layer again; an error changes nothing. Keys a running process cannot
//! apply (listen addresses, log format, ...) keep their value in force and are reported, so the
//! operator knows they need `baton upgrade`.
//!
//! Parts of the application that build something from the settings (a connection pool) or
//! read what they name (certificate files) take part in every reload as a
//! [`ReloadParticipant`]: each sees the candidate settings before the swap, may reject the
//! whole reload with a reason, and applies what it prepared only once the swap is certain. So a
//! reload is applied whole or not at all, pools and certificates included.

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use futures_util::future::BoxFuture;
use serde::Serialize;

use super::key::upgrade_only_keys;
use super::schema::Settings;
use super::source::{ConfigSource, process_env};

/// Keys whose change a running process cannot apply (they take effect at the next upgrade).
pub fn upgrade_only_changes(old: &Settings, new: &Settings) -> Vec<&'static str> {
    upgrade_only_keys()
        .filter(|key| (key.needs_upgrade)(old, new))
        .map(|key| key.path)
        .collect()
}

/// What a [`ReloadParticipant`] prepared, applied right after the settings swap. It must not
/// fail: anything that can fail belongs in [`ReloadParticipant::prepare`]. Dropped without
/// being run when the reload is rejected (by another participant), so preparing must change
/// nothing.
pub type Commit = Box<dyn FnOnce() + Send>;

/// What one reload did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ReloadOutcome {
    /// The files and environment give the same settings as those in force.
    Unchanged {
        /// Changed keys that will only take effect at the next upgrade.
        upgrade_only: Vec<&'static str>,
    },
    /// New settings, or something a [`ReloadParticipant`] applies, are in force from
    /// `config_generation` on.
    Applied {
        config_generation: u64,
        /// Changed keys that will only take effect at the next upgrade.
        upgrade_only: Vec<&'static str>,
    },
    /// The old settings stay in force, whole.
    Rejected { error: String },
}

/// The last reload, for `/-/status` and `baton reload`.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadRecord {
    /// Counts every reload attempt, so a client can wait for "the next one".
    pub seq: u64,
    #[serde(with = "humantime_serde")]
    pub at: SystemTime,
    pub outcome: ReloadOutcome,
}

/// A part of the application that applies some settings, or reads what they name, and takes
/// part in every reload. Called on every reload, with the settings that will be in force
/// (upgrade-only keys kept), even when they equal those in force: the files they name may have
/// changed.
pub trait ReloadParticipant: Send + Sync + fmt::Debug {
    /// Gets ready to apply `candidate` (the settings now in force are `in_force`), without
    /// changing anything yet. `Err(reason)` rejects the whole reload; the reason is what the
    /// operator reads (say what is wrong, where, and what to do). `Ok(None)`: nothing of this
    /// part changes.
    fn prepare<'a>(
        &'a self,
        in_force: &'a Settings,
        candidate: &'a Settings,
    ) -> BoxFuture<'a, Result<Option<Commit>, String>>;
}

/// The settings in force, swapped atomically at each successful reload.
#[derive(Debug)]
pub struct SettingsStore {
    source: ConfigSource,
    /// Settings and their generation swap together, so a reader never pairs one with the
    /// other's predecessor.
    in_force: ArcSwap<InForce>,
    /// Held for a whole reload: two signals handled at once must not interleave their
    /// read-compare-swap, or the older read could win. Async, as participants prepare with I/O.
    reloading: tokio::sync::Mutex<()>,
    participants: Mutex<Vec<Arc<dyn ReloadParticipant>>>,
    last_reload: Mutex<Option<ReloadRecord>>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
}

/// A thread's copy of the settings of one swap (see [`SettingsStore::for_request`]).
struct OwnCopy {
    /// The swap copied from, held so that its address names it: the copy is current while it
    /// is the one in force, in whichever store.
    of: Arc<InForce>,
    settings: Arc<Settings>,
}

thread_local! {
    /// One copy per thread, of the last store it served a request from.
    static OWN_COPY: RefCell<Option<OwnCopy>> = const { RefCell::new(None) };
}

#[derive(Debug)]
struct InForce {
    settings: Arc<Settings>,
    generation: u64,
}

impl SettingsStore {
    pub fn new(source: ConfigSource, initial: Settings) -> Self {
        Self {
            source,
            in_force: ArcSwap::from_pointee(InForce {
                settings: Arc::new(initial),
                generation: 1,
            }),
            reloading: tokio::sync::Mutex::new(()),
            participants: Mutex::new(Vec::new()),
            last_reload: Mutex::new(None),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
        }
    }

    /// One consistent snapshot: a request that calls this once sees old or new, never a mix.
    pub fn current(&self) -> Arc<Settings> {
        Arc::clone(&self.in_force.load().settings)
    }

    /// The settings in force and their config generation, from the same swap.
    pub fn snapshot(&self) -> (Arc<Settings>, u64) {
        let in_force = self.in_force.load();
        (Arc::clone(&in_force.settings), in_force.generation)
    }

    /// [`snapshot`](Self::snapshot) for one request: the same settings, as this thread's own
    /// copy. Each request holds its settings by an `Arc`; were it the one `Arc` all threads
    /// share, each request would add to and subtract from a counter another core wrote last,
    /// and move its cache line between cores each time (about 100 ns a move on a 2-core VM,
    /// BENCHMARKS.md, "Instructions per request"). A thread copies the settings once per
    /// config generation.
    pub fn for_request(&self) -> (Arc<Settings>, u64) {
        let in_force = self.in_force.load();
        let generation = in_force.generation;
        let kept = OWN_COPY
            .try_with(|own| match &*own.borrow() {
                Some(own) if Arc::ptr_eq(&own.of, &in_force) => Some(own.settings.clone()),
                _ => None,
            })
            .ok()
            .flatten();
        if let Some(settings) = kept {
            return (settings, generation);
        }
        let settings = Arc::new(Settings::clone(&in_force.settings));
        // Not kept while the thread shuts down: the next call copies again.
        let _ = OWN_COPY.try_with(|own| {
            *own.borrow_mut() = Some(OwnCopy {
                of: Arc::clone(&in_force),
                settings: settings.clone(),
            });
        });
        (settings, generation)
    }

    /// 1 at start, +1 at each applied reload.
    pub fn generation(&self) -> u64 {
        self.in_force.load().generation
    }

    pub fn source(&self) -> &ConfigSource {
        &self.source
    }

    /// Makes `participant` take part in every later reload, after those added before it.
    pub fn add_participant(&self, participant: Arc<dyn ReloadParticipant>) {
        self.participants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(participant);
    }

    /// Re-reads every layer, validates, lets the participants prepare, and swaps if anything
    /// changed. Never leaves a partial state. The outcome is returned and recorded, not logged:
    /// the caller logs it once.
    pub async fn reload(&self) -> ReloadOutcome {
        self.reload_from(process_env()).await
    }

    /// [`SettingsStore::reload`] with the environment given explicitly.
    pub async fn reload_from(
        &self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> ReloadOutcome {
        let _one_at_a_time = self.reloading.lock().await;
        let outcome = match Settings::load_from(&self.source, env) {
            Ok(loaded) => self.apply(loaded).await,
            Err(err) => ReloadOutcome::Rejected {
                error: err.to_string(),
            },
        };
        let counter = match outcome {
            ReloadOutcome::Rejected { .. } => &self.reloads_failed,
            _ => &self.reloads_ok,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut last = self
            .last_reload
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let seq = last.as_ref().map_or(0, |record| record.seq) + 1;
        *last = Some(ReloadRecord {
            seq,
            at: SystemTime::now(),
            outcome: outcome.clone(),
        });
        outcome
    }

    /// Swaps in `loaded`, except the keys this process cannot apply. Caller holds `reloading`.
    async fn apply(&self, loaded: Settings) -> ReloadOutcome {
        let in_force = self.in_force.load_full();
        let upgrade_only = upgrade_only_changes(&in_force.settings, &loaded);
        let mut candidate = loaded;
        for key in upgrade_only_keys() {
            (key.keep)(&in_force.settings, &mut candidate);
        }
        // Mixing kept and new keys could in principle break a rule that spans both kinds;
        // check the settings that will really be in force, not the ones that were loaded.
        if let Err(err) = candidate.validate() {
            return ReloadOutcome::Rejected {
                error: format!("{err} (with the upgrade-only keys kept at their current values)"),
            };
        }
        let participants = self
            .participants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut commits = Vec::with_capacity(participants.len());
        for participant in &participants {
            match participant.prepare(&in_force.settings, &candidate).await {
                Ok(commit) => commits.extend(commit),
                // What the others prepared is dropped: nothing of it was applied.
                Err(error) => return ReloadOutcome::Rejected { error },
            }
        }
        if candidate == *in_force.settings && commits.is_empty() {
            return ReloadOutcome::Unchanged { upgrade_only };
        }
        let config_generation = in_force.generation + 1;
        self.in_force.store(Arc::new(InForce {
            settings: Arc::new(candidate),
            generation: config_generation,
        }));
        for commit in commits {
            commit();
        }
        ReloadOutcome::Applied {
            config_generation,
            upgrade_only,
        }
    }

    pub fn last_reload(&self) -> Option<ReloadRecord> {
        self.last_reload
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn reloads_ok(&self) -> u64 {
        self.reloads_ok.load(Ordering::Relaxed)
    }

    pub fn reloads_failed(&self) -> u64 {
        self.reloads_failed.load(Ordering::Relaxed)
    }
}
#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::super::LogFormat;
    use super::*;

    #[test]
    fn keeping_upgrade_only_keys_leaves_no_upgrade_only_difference() {
        let old = Settings::default();
        let mut new = Settings::default();
        let moved = |addr: SocketAddr| SocketAddr::new(addr.ip(), addr.port().wrapping_add(1));
        new.server.listen = moved(old.server.listen);
        new.server.worker_threads += 1;
        new.admin.enabled = !old.admin.enabled;
        new.admin.listen = moved(old.admin.listen);
        new.log.format = match old.log.format {
            LogFormat::Text => LogFormat::Json,
            LogFormat::Json => LogFormat::Text,
        };
        new.log.otlp_endpoint = format!("{}http://127.0.0.1:4318", old.log.otlp_endpoint);
        new.lifecycle.pid_file = old.lifecycle.pid_file.join("elsewhere");
        new.lifecycle.supervise = !old.lifecycle.supervise;
        new.reload.watch = !old.reload.watch;
        new.reload.debounce += Duration::from_millis(1);
        // Turned on: a new path alone would be reloadable.
        new.tls.cert = Some("cert.pem".into());
        new.tls.key = Some("key.pem".into());
        new.tls.ticket_rotation += Duration::from_secs(1);
        assert_eq!(
            upgrade_only_changes(&old, &new).len(),
            upgrade_only_keys().count(),
            "every upgrade-only key changed"
        );
        for key in upgrade_only_keys() {
            (key.keep)(&old, &mut new);
        }
        assert_eq!(new, old);
    }

    #[test]
    fn a_new_tls_path_reloads_but_turning_tls_on_or_off_needs_an_upgrade() {
        let off = Settings::default();
        let mut on = off.clone();
        on.tls.cert = Some("a.pem".into());
        on.tls.key = Some("a.key".into());
        let mut moved = on.clone();
        moved.tls.cert = Some("b.pem".into());
        assert!(upgrade_only_changes(&on, &moved).is_empty());
        assert_eq!(upgrade_only_changes(&on, &off), ["tls.cert", "tls.key"]);
        assert_eq!(upgrade_only_changes(&off, &on), ["tls.cert", "tls.key"]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_request_gets_this_threads_copy_of_its_own_stores_settings_in_force() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("default.toml"), "").expect("write default.toml");
        let store = |greeting: &str| {
            let mut settings = Settings::default();
            settings.app.greeting = greeting.to_owned();
            SettingsStore::new(ConfigSource::new(dir.path(), None), settings)
        };
        let (a, b) = (store("a"), store("b"));
        let (first, generation) = a.for_request();
        assert_eq!((first.app.greeting.as_str(), generation), ("a", 1));
        // A copy of the thread's own, kept for the next request.
        assert!(!Arc::ptr_eq(&first, &a.current()));
        assert!(Arc::ptr_eq(&first, &a.for_request().0));
        // Another store on the same thread never gets the first one's copy, nor it the other's.
        assert_eq!(b.for_request().0.app.greeting, "b");
        assert_eq!(a.for_request().0.app.greeting, "a");

        // `reload_from` reads the directory's (empty) file over the built-in defaults.
        assert!(matches!(
            a.reload_from(Vec::new()).await,
            ReloadOutcome::Applied { .. }
        ));
        let (reloaded, generation) = a.for_request();
        assert_eq!(generation, 2);
        assert_eq!(*reloaded, *a.current());
        assert_ne!(reloaded.app.greeting, "a");
    }

    /// A participant that rejects, or accepts and counts its commits.
    #[derive(Debug, Default)]
    struct Hook {
        reject: std::sync::atomic::AtomicBool,
        committed: Arc<AtomicU64>,
    }

    impl ReloadParticipant for Hook {
        fn prepare<'a>(
            &'a self,
            _in_force: &'a Settings,
            _candidate: &'a Settings,
        ) -> BoxFuture<'a, Result<Option<Commit>, String>> {
            Box::pin(async move {
                if self.reject.load(Ordering::Relaxed) {
                    return Err("the pair is bad".to_owned());
                }
                let committed = Arc::clone(&self.committed);
                Ok(Some(Box::new(move || {
                    committed.fetch_add(1, Ordering::Relaxed);
                }) as Commit))
            })
        }
    }

    #[tokio::test]
    async fn a_participant_applies_with_unchanged_settings_and_its_rejection_changes_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("default.toml"), "").expect("write default.toml");
        let source = ConfigSource::new(dir.path(), None);
        let store = SettingsStore::new(source, Settings::default());
        let hook = Arc::new(Hook::default());
        store.add_participant(hook.clone());

        let applied = store.reload_from(Vec::new()).await;
        assert!(
            matches!(
                applied,
                ReloadOutcome::Applied {
                    config_generation: 2,
                    ..
                }
            ),
            "{applied:?}"
        );
        assert_eq!(hook.committed.load(Ordering::Relaxed), 1);

        hook.reject.store(true, Ordering::Relaxed);
        let rejected = store.reload_from(Vec::new()).await;
        assert_eq!(
            rejected,
            ReloadOutcome::Rejected {
                error: "the pair is bad".to_owned()
            }
        );
        assert_eq!(hook.committed.load(Ordering::Relaxed), 1);
        assert_eq!(store.generation(), 2);
    }
}
