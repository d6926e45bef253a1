//! Where this generation came from, for `/-/status`: the generation it replaced, how long the
//! upgrade that started this one took (request to spawn, request to "ready"), and how that
//! generation's drain went. The old generation knows all of it only once it has drained, so it
//! hands it over in its final batch (`carry`, kind [`LINEAGE`]), which the lifecycle reads for
//! itself before the application's kinds.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::state::{DrainRecord, ProcessState};
use super::steps::Steps;

/// The carry kind of a [`Predecessor`], in JSON.
pub const LINEAGE: &str = "lineage";

/// The generation this process replaced, as it said after its drain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Predecessor {
    pub pid: u32,
    pub generation: u64,
    pub version: String,
    /// From the upgrade request (SIGUSR2, `baton upgrade`) to this process started, and to its
    /// "ready". Absent in supervised mode, where the supervisor starts the workers.
    pub spawned_ms: Option<f64>,
    pub ready_ms: Option<f64>,
    /// This process's start, step by step (`main` to "ready", see `steps`), as it told that
    /// generation. Absent when that generation's build did not ask for them.
    #[serde(default)]
    pub steps_ms: Option<Steps>,
    /// Its drain: lame duck, whole drain, what was cut.
    pub drain: Option<DrainRecord>,
}

/// How long the upgrade this process started took to spawn its successor, and to hear it
/// was ready, from the request; and the successor's own steps, as it said with "ready".
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HandoverTimes {
    pub(crate) spawned: Duration,
    pub(crate) ready: Duration,
    pub(crate) steps: Option<Steps>,
}

/// Milliseconds to the microsecond, as `/-/status` and the logs show the upgrade's times.
pub(crate) fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// This process as the next generation's predecessor: its final batch's entry.
pub(crate) fn export(process: &ProcessState) -> (String, String) {
    let times = process.handover_times();
    let predecessor = Predecessor {
        pid: process.pid(),
        generation: process.generation(),
        version: process.version().to_owned(),
        spawned_ms: times.as_ref().map(|t| millis(t.spawned)),
        ready_ms: times.as_ref().map(|t| millis(t.ready)),
        steps_ms: times.and_then(|t| t.steps),
        drain: process.last_drain(),
    };
    // A plain struct of numbers and strings always serializes.
    let payload = serde_json::to_string(&predecessor).unwrap_or_default();
    (LINEAGE.to_owned(), payload)
}

/// Takes the predecessor's entry; a payload this build cannot read is logged and dropped.
pub(crate) fn import(process: &ProcessState, payload: &str) {
    match serde_json::from_str::<Predecessor>(payload) {
        Ok(predecessor) => process.set_predecessor(predecessor),
        Err(err) => tracing::warn!(error = %err, "cannot read the previous generation's lineage"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_predecessor_crosses_as_json_and_lands_in_the_next_process() {
        let old = ProcessState::new(4, "1.2.3");
        old.set_handover_times(HandoverTimes {
            spawned: Duration::from_micros(1_500),
            ready: Duration::from_micros(12_250),
            steps: Steps::from_wire("runtime:400,config:1100"),
        });
        let (kind, payload) = export(&old);
        assert_eq!(kind, LINEAGE);
        let new = ProcessState::new(5, "1.2.4");
        assert_eq!(new.predecessor(), None);
        import(&new, &payload);
        let got = new.predecessor().expect("imported");
        assert_eq!((got.pid, got.generation), (old.pid(), 4));
        assert_eq!(got.version, "1.2.3");
        assert_eq!((got.spawned_ms, got.ready_ms), (Some(1.5), Some(12.25)));
        let steps = got.steps_ms.as_ref().map(ToString::to_string);
        assert_eq!(steps.as_deref(), Some("runtime=0.40ms config=1.10ms"));
        assert_eq!(got.drain, None, "it never drained");
        import(&new, "not json");
        assert_eq!(
            new.predecessor(),
            Some(got),
            "a bad payload changes nothing"
        );
    }

    #[test]
    fn a_lineage_from_a_build_without_steps_still_lands() {
        let new = ProcessState::new(5, "1.2.4");
        import(
            &new,
            r#"{"pid":7,"generation":4,"version":"1.2.3","spawned_ms":1.5,"ready_ms":12.25,"drain":null}"#,
        );
        let got = new.predecessor().expect("imported");
        assert_eq!(
            (got.pid, got.ready_ms, got.steps_ms),
            (7, Some(12.25), None)
        );
    }
}
