//! Single requests on new connections that ask "who answers, with which greeting": how the
//! bench sees a handover or a reload take effect. They never retry either, and every one that
//! fails is counted with the load's failures.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use loadgen::Failure;

/// Bound on one probe (connect plus response).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed probe, so that a refusing server does not turn the wait into a busy loop.
const PAUSE_AFTER_FAILURE: Duration = Duration::from_millis(1);

/// What `GET /` says: `<greeting> (version <v>, pid <pid>, generation <g>)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Greeting {
    pub(crate) text: String,
    pub(crate) pid: u32,
    pub(crate) generation: u64,
}

impl Greeting {
    pub(crate) fn parse(body: &str) -> Option<Greeting> {
        let body = body.trim_end();
        let open = body.rfind(" (version ")?;
        let details = body[open..].strip_prefix(" (")?.strip_suffix(')')?;
        let mut pid = None;
        let mut generation = None;
        for part in details.split(", ") {
            if let Some(value) = part.strip_prefix("pid ") {
                pid = value.parse().ok();
            } else if let Some(value) = part.strip_prefix("generation ") {
                generation = value.parse().ok();
            }
        }
        Some(Greeting {
            text: body[..open].to_owned(),
            pid: pid?,
            generation: generation?,
        })
    }
}

/// Every probe sent, and those that failed, by kind.
#[derive(Debug, Default, Clone)]
pub(crate) struct Probes {
    pub(crate) sent: u64,
    pub(crate) failures: BTreeMap<String, u64>,
    /// The first few failures in full, for the error message.
    pub(crate) first_failures: Vec<String>,
}

impl Probes {
    /// `GET /` on a new connection; `None` (counted) if it failed or said something else than
    /// a greeting.
    pub(crate) fn greet(&mut self, addr: SocketAddr) -> Option<Greeting> {
        self.sent += 1;
        let outcome = loadgen::get_blocking(addr, "/", PROBE_TIMEOUT)
            .and_then(loadgen::Response::error_for_status)
            .and_then(|response| {
                Greeting::parse(&response.body)
                    .ok_or_else(|| Failure::Protocol(format!("GET / answered {:?}", response.body)))
            });
        match outcome {
            Ok(greeting) => Some(greeting),
            Err(failure) => {
                *self.failures.entry(failure.kind().to_string()).or_insert(0) += 1;
                if self.first_failures.len() < 5 {
                    self.first_failures.push(failure.to_string());
                }
                std::thread::sleep(PAUSE_AFTER_FAILURE);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_is_parsed_even_with_parentheses_in_the_text() {
        let body = "Hello (from) baton (version 0.1.0+abc, pid 4242, generation 7)\n";
        let greeting = Greeting::parse(body).expect("a greeting");
        assert_eq!(greeting.text, "Hello (from) baton");
        assert_eq!(greeting.pid, 4242);
        assert_eq!(greeting.generation, 7);
        assert_eq!(Greeting::parse("Hello"), None);
    }
}
