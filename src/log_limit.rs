//! Logs a client cannot amplify: warnings and errors from one call site are limited to a budget
//! per window, and what goes over it is counted and summarised once per window
//! ("suppressed N similar messages in the last 10 s").
//!
//! A misbehaving client can make the server or a library warn once per connection or per
//! request (an HTTP/2 reset flood, a request that times out); without a bound, each client
//! writes as many log lines as it likes. Info and more verbose events are not limited: they
//! are rare at `info`, and someone who turns on `debug` wants every line.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::callsite::Identifier;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// How long a budget lasts.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Events from one call site shown per window.
pub const BUDGET: u32 = 10;
/// The summaries' own target, never limited.
const SUMMARY_TARGET: &str = "baton::log_limit";

/// The limiter: a layer that disables the events over budget, and the counts for the summaries.
#[derive(Debug, Clone, Default)]
pub struct LogLimit {
    sites: Arc<Mutex<HashMap<Identifier, Site>>>,
}

#[derive(Debug)]
struct Site {
    metadata: &'static Metadata<'static>,
    window_start: Instant,
    shown: u32,
    suppressed: u64,
    /// The first suppressed message of the window, for the summary.
    example: Option<String>,
}

/// What was suppressed at one call site during a window that has ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub suppressed: u64,
    pub level: Level,
    pub target: &'static str,
    /// `file:line`, when known.
    pub location: Option<String>,
    pub example: String,
}

impl LogLimit {
    /// Whether an event at `metadata` may be written at `now`; `message` gives its text, asked
    /// for only when the event is the first one suppressed in its window.
    fn admit(
        &self,
        metadata: &'static Metadata<'static>,
        now: Instant,
        message: impl FnOnce() -> String,
    ) -> bool {
        let mut sites = self.sites.lock().unwrap_or_else(PoisonError::into_inner);
        let site = sites.entry(metadata.callsite()).or_insert(Site {
            metadata,
            window_start: now,
            shown: 0,
            suppressed: 0,
            example: None,
        });
        // A window with suppressions stays open until `flush` reports it, so no count is lost.
        if site.suppressed == 0 && now.saturating_duration_since(site.window_start) >= WINDOW {
            site.window_start = now;
            site.shown = 0;
        }
        if site.shown < BUDGET {
            site.shown += 1;
            return true;
        }
        site.suppressed += 1;
        if site.example.is_none() {
            site.example = Some(message());
        }
        false
    }

    /// The summaries of the windows that ended with suppressed events, which start anew.
    pub fn flush(&self, now: Instant) -> Vec<Summary> {
        let mut sites = self.sites.lock().unwrap_or_else(PoisonError::into_inner);
        let mut summaries = Vec::new();
        for site in sites.values_mut() {
            if now.saturating_duration_since(site.window_start) < WINDOW {
                continue;
            }
            if site.suppressed > 0 {
                let metadata = site.metadata;
                summaries.push(Summary {
                    suppressed: site.suppressed,
                    level: *metadata.level(),
                    target: metadata.target(),
                    location: metadata
                        .file()
                        .zip(metadata.line())
                        .map(|(file, line)| format!("{file}:{line}")),
                    example: site.example.take().unwrap_or_default(),
                });
            }
            site.window_start = now;
            site.shown = 0;
            site.suppressed = 0;
        }
        // Quiet call sites are forgotten, so the map holds only those active lately.
        sites.retain(|_, site| site.shown > 0 || site.suppressed > 0);
        summaries
    }

    /// Writes the summaries every [`WINDOW`], for as long as the runtime runs.
    pub async fn report(self) {
        let mut interval = tokio::time::interval(WINDOW);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            for summary in self.flush(Instant::now()) {
                tracing::warn!(
                    target: SUMMARY_TARGET,
                    suppressed = summary.suppressed,
                    level = %summary.level,
                    from = summary.target,
                    location = summary.location.as_deref().unwrap_or("?"),
                    example = %summary.example,
                    "suppressed {} similar messages in the last {} s",
                    summary.suppressed,
                    WINDOW.as_secs()
                );
            }
        }
    }
}

impl<S: Subscriber> Layer<S> for LogLimit {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let metadata = event.metadata();
        if *metadata.level() > Level::WARN || metadata.target() == SUMMARY_TARGET {
            return true;
        }
        self.admit(metadata, Instant::now(), || {
            let mut message = Message::default();
            event.record(&mut message);
            message.0
        })
    }
}

/// An event's `message` field, as text.
#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicUsize, Ordering};
    use tracing_subscriber::layer::SubscriberExt;

    /// Counts the events that reach it.
    #[derive(Clone, Default)]
    struct Count(Arc<AtomicUsize>);

    impl<S: Subscriber> Layer<S> for Count {
        fn on_event(&self, _: &Event<'_>, _: Context<'_, S>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn warnings_over_the_budget_are_suppressed_and_summarised() {
        let limit = LogLimit::default();
        let count = Count::default();
        let subscriber = tracing_subscriber::registry()
            .with(limit.clone())
            .with(count.clone());
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..100 {
                tracing::warn!(i, "the same warning");
            }
            for _ in 0..100 {
                tracing::info!("info is never limited");
            }
            tracing::warn!("another call site has its own budget");
        });
        let budget = usize::try_from(BUDGET).expect("a small number");
        assert_eq!(count.0.load(Ordering::Relaxed), budget + 100 + 1);

        assert!(limit.flush(Instant::now()).is_empty(), "the window is open");
        let summaries = limit.flush(Instant::now() + WINDOW);
        assert_eq!(summaries.len(), 1, "{summaries:?}");
        let summary = &summaries[0];
        assert_eq!(summary.suppressed, 100 - u64::from(BUDGET));
        assert_eq!(summary.level, Level::WARN);
        assert_eq!(summary.example, "the same warning");
        assert!(
            summary
                .location
                .as_deref()
                .is_some_and(|l| l.contains("log_limit.rs")),
            "{summary:?}"
        );
    }

    #[test]
    fn a_new_window_shows_events_again() {
        let limit = LogLimit::default();
        let metadata = warn_metadata();
        let start = Instant::now();
        let admitted = |at: Instant| {
            (0..BUDGET + 5)
                .filter(|_| limit.admit(metadata, at, String::new))
                .count()
        };
        assert_eq!(admitted(start), BUDGET as usize);
        assert_eq!(limit.flush(start + WINDOW)[0].suppressed, 5);
        assert_eq!(admitted(start + WINDOW), BUDGET as usize);
    }

    /// The metadata of a warning call site.
    fn warn_metadata() -> &'static Metadata<'static> {
        struct Grab(Mutex<Option<&'static Metadata<'static>>>);
        impl Subscriber for Grab {
            fn enabled(&self, _: &Metadata<'_>) -> bool {
                true
            }
            fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
                tracing::span::Id::from_u64(1)
            }
            fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
            fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
            fn event(&self, event: &Event<'_>) {
                *self.0.lock().expect("lock") = Some(event.metadata());
            }
            fn enter(&self, _: &tracing::span::Id) {}
            fn exit(&self, _: &tracing::span::Id) {}
        }
        let grab = Arc::new(Grab(Mutex::new(None)));
        tracing::subscriber::with_default(grab.clone(), || tracing::warn!("x"));
        let metadata = grab.0.lock().expect("lock").take();
        metadata.expect("the event was seen")
    }
}
