//! How long a process took from its first instruction to "ready", step by step (issue 16). The
//! new generation times itself ([`StartupClock`], from `main`'s first line), sends the times
//! with its `ready` line when the process that reads it asked for them (see `handover`), and
//! logs them; the previous generation logs them with the upgrade and hands them back in its
//! lineage, so `/-/status` shows them under `previous.steps_ms`.
//!
//! Each step is the time since the one before it, so the steps add up to the whole start, from
//! `main` to the moment the `ready` line is written. What they do not cover is the `exec`
//! itself and the dynamic loader before `main`, which the parent sees as the rest of its
//! `ready_ms`.

use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, Instant};

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::lineage::millis;

/// The steps from `main` to "ready", in the order they run. The names are what the logs, the
/// `ready` line and `/-/status` show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// What the previous generation handed over: the sockets, the pipes, its start batch.
    Handover,
    /// The command line, then every settings layer read, parsed and validated once.
    Config,
    /// The log subscriber.
    Logging,
    /// The async runtime and its worker threads.
    Runtime,
    /// Signal handlers, the settings store, TLS, the configuration watch.
    Setup,
    /// Connecting, pending migrations (none on most upgrades), the pools' check.
    Database,
    /// The application's state, routers and inherited counters.
    Router,
    /// One `GET /healthz` through the whole stack.
    SelfCheck,
    /// Adopting the inherited sockets, binding what was not inherited.
    Listen,
    /// The pid file and the state file.
    RunFiles,
    /// Accepting, systemd's `READY=1`, then the `ready` line.
    Ready,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Handover => "handover",
            Step::Config => "config",
            Step::Logging => "logging",
            Step::Runtime => "runtime",
            Step::Setup => "setup",
            Step::Database => "database",
            Step::Router => "router",
            Step::SelfCheck => "self_check",
            Step::Listen => "listen",
            Step::RunFiles => "run_files",
            Step::Ready => "ready",
        }
    }
}

/// Times a start: each [`lap`](Self::lap) records the time since the previous one under a step.
#[derive(Debug)]
pub(crate) struct StartupClock {
    last: Instant,
    steps: Steps,
}

impl StartupClock {
    /// Starts the clock: call it first thing in `main`.
    pub(crate) fn start() -> StartupClock {
        StartupClock {
            last: Instant::now(),
            steps: Steps::default(),
        }
    }

    /// Ends `step`: the time since the previous lap (or the start) is its.
    pub(crate) fn lap(&mut self, step: Step) {
        let now = Instant::now();
        self.steps
            .0
            .push((Cow::Borrowed(step.name()), now.duration_since(self.last)));
        self.last = now;
    }

    pub(crate) fn steps(&self) -> &Steps {
        &self.steps
    }
}

/// Named durations in the order they ran: as measured here, or as another generation said.
/// In JSON an object of milliseconds (`{"handover": 0.12, ...}`), in that order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Steps(Vec<(Cow<'static, str>, Duration)>);

/// Bounds on what is read from another process: a short list of short names.
const MAX_STEPS: usize = 32;
const MAX_NAME: usize = 32;

impl Steps {
    /// Each step's name and duration, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Duration)> {
        self.0.iter().map(|(name, took)| (name.as_ref(), *took))
    }

    /// The sum of the steps.
    pub fn total(&self) -> Duration {
        self.0.iter().map(|(_, took)| *took).sum()
    }

    /// The sum in milliseconds, to the microsecond.
    pub fn total_ms(&self) -> f64 {
        millis(self.total())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// As sent on the `ready` line: `handover:120,config:1100,...`, in microseconds (one word,
    /// no float to parse).
    pub(crate) fn to_wire(&self) -> String {
        let entries: Vec<String> = self
            .0
            .iter()
            .map(|(name, took)| format!("{name}:{}", took.as_micros()))
            .collect();
        entries.join(",")
    }

    /// Reads [`to_wire`](Self::to_wire)'s form; `None` if anything in it is off (the field is
    /// then ignored: it is information, never a reason to fail an upgrade).
    pub(crate) fn from_wire(text: &str) -> Option<Steps> {
        let mut steps = Vec::new();
        for entry in text.split(',') {
            let (name, micros) = entry.split_once(':')?;
            if !is_name(name) || steps.len() == MAX_STEPS {
                return None;
            }
            let micros: u64 = micros.parse().ok()?;
            steps.push((Cow::Owned(name.to_owned()), Duration::from_micros(micros)));
        }
        Some(Steps(steps))
    }
}

fn is_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

/// For logs: `handover=0.12ms config=1.10ms ...`, cut (not rounded) from whole microseconds,
/// so the steps as measured and as sent on the `ready` line read the same.
impl fmt::Display for Steps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, took)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            let micros = took.as_micros();
            write!(f, "{name}={}.{:02}ms", micros / 1000, micros % 1000 / 10)?;
        }
        Ok(())
    }
}

impl Serialize for Steps {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, took) in &self.0 {
            map.serialize_entry(name.as_ref(), &millis(*took))?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Steps {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Steps, D::Error> {
        struct InOrder;
        impl<'de> Visitor<'de> for InOrder {
            type Value = Steps;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of step names to milliseconds")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Steps, A::Error> {
                let mut steps = Vec::new();
                while let Some((name, ms)) = map.next_entry::<String, f64>()? {
                    // To the microsecond, as written: no float error carried into a sum.
                    if !(0.0..1e12).contains(&ms) {
                        return Err(serde::de::Error::custom(format!("{name}: {ms} ms")));
                    }
                    #[allow(
                        clippy::cast_possible_truncation,
                        clippy::cast_sign_loss,
                        reason = "checked to be in range just above"
                    )]
                    let micros = (ms * 1e3).round() as u64;
                    steps.push((Cow::Owned(name), Duration::from_micros(micros)));
                }
                Ok(Steps(steps))
            }
        }
        deserializer.deserialize_map(InOrder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(list: &[(&'static str, u64)]) -> Steps {
        Steps(
            list.iter()
                .map(|(name, micros)| (Cow::Borrowed(*name), Duration::from_micros(*micros)))
                .collect(),
        )
    }

    #[test]
    fn laps_are_in_order_and_add_up_to_the_time_since_the_start() {
        let started = Instant::now();
        let mut clock = StartupClock::start();
        clock.lap(Step::Handover);
        std::thread::sleep(Duration::from_millis(2));
        clock.lap(Step::Config);
        clock.lap(Step::Ready);
        let names: Vec<&str> = clock.steps().iter().map(|(name, _)| name).collect();
        assert_eq!(names, ["handover", "config", "ready"]);
        let config = clock.steps().iter().nth(1).map(|(_, took)| took);
        assert!(config >= Some(Duration::from_millis(2)), "{config:?}");
        assert!(clock.steps().total() <= started.elapsed());
    }

    #[test]
    fn the_wire_form_round_trips_and_anything_odd_is_refused() {
        let sent = steps(&[("handover", 120), ("config", 1_100), ("self_check", 0)]);
        assert_eq!(sent.to_wire(), "handover:120,config:1100,self_check:0");
        assert_eq!(Steps::from_wire(&sent.to_wire()), Some(sent));
        for bad in [
            "",
            "config",
            "config:1.5",
            "config:-1",
            "Config:1",
            "con fig:1",
            "config:1,",
        ] {
            assert_eq!(Steps::from_wire(bad), None, "{bad:?}");
        }
        let many = vec!["a:1"; MAX_STEPS + 1].join(",");
        assert_eq!(Steps::from_wire(&many), None);
    }

    #[test]
    fn json_keeps_the_order_in_milliseconds() {
        let sent = steps(&[("runtime", 400), ("config", 1_100), ("database", 3_250)]);
        let json = serde_json::to_string(&sent).expect("serializes");
        assert_eq!(json, r#"{"runtime":0.4,"config":1.1,"database":3.25}"#);
        let back: Steps = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, sent);
        assert_eq!(
            back.to_string(),
            "runtime=0.40ms config=1.10ms database=3.25ms"
        );
        assert!(serde_json::from_str::<Steps>(r#"{"runtime":-1}"#).is_err());
    }
}
