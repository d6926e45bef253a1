//! What the application carries from one generation to the next: counters that must not go
//! back to zero, TLS session-ticket keys that keep sessions resumable, and the like. The
//! lifecycle moves opaque `kind payload` lines; the application gives them meaning through
//! [`Carry`].
//!
//! Two moments, in both modes:
//! - **start**: when the next generation is started, before it is ready. The new process reads
//!   this batch before it builds anything ([`Inherited`]), so a TLS acceptor can start with the
//!   previous keys.
//! - **final**: when the old generation has drained, just before it exits; the new process
//!   receives it while serving ([`Carry::import`]), e.g. the requests served during the drain.
//!   Reports are cumulative (the larger wins), so a generation's final batch must include its
//!   predecessor's: in direct mode it waits for that one first (`wait_predecessor_final`).
//!
//! Direct mode: a pipe from the parent to the child (`BATON_UPGRADE_STATE_FD`). Supervised
//! mode: each worker writes on its readiness pipe, and the supervisor relays the lines to the
//! next worker's state pipe. Never a file or an environment variable: what crosses is readable
//! by the two processes only.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// The kind under which a supervisor tells its current worker its upgrade outcomes, as
/// [`UpgradeCounts`](super::UpgradeCounts) in JSON: the supervisor does the upgrades, so the
/// worker that serves `/metrics` has no record of them itself.
pub const UPGRADES: &str = "upgrades";
/// A state line: `state <kind> <payload>`.
pub(crate) const STATE_WORD: &str = "state";
/// Ends the start batch.
pub(crate) const END_WORD: &str = "end";
/// How long a new process waits for its predecessor's start batch; it is written right
/// after the spawn, so this only bounds a predecessor that died meanwhile.
const BATCH_DEADLINE: Duration = Duration::from_secs(2);
/// A batch larger than this is a protocol error, not something to keep reading.
const MAX_BATCH: usize = 1 << 20;

/// When [`Carry::export`] is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moment {
    /// The next generation is starting (before it is ready).
    Start,
    /// This generation has drained and is about to exit.
    Final,
}

/// The application's part of the handover. Both methods run on the lifecycle's task: keep
/// them quick.
pub trait Carry: Send + Sync + std::fmt::Debug {
    /// What to hand to the next generation now, as `(kind, payload)`; a payload is one line.
    fn export(&self, moment: Moment) -> Vec<(String, String)>;
    /// A message of the final batch from the previous generation, received while serving.
    fn import(&self, kind: &str, payload: &str);
}

/// The previous generation's start batch, by kind, and the pipe its final batch comes on.
#[derive(Debug, Default)]
pub struct Inherited {
    batch: BTreeMap<String, String>,
    /// The pipe the final batch comes on, and what was read past the start batch already.
    pub(crate) rest: Option<(OwnedFd, Vec<u8>)>,
}

impl Inherited {
    /// The payload of `kind` in the start batch, if the previous generation sent one.
    pub fn get(&self, kind: &str) -> Option<&str> {
        self.batch.get(kind).map(String::as_str)
    }

    /// Reads the start batch from `fd` (blocking, bounded). Called while the process is still
    /// single-threaded and before logging exists: problems go to stderr.
    pub(crate) fn read_batch(fd: OwnedFd) -> Inherited {
        let mut file = std::fs::File::from(fd);
        let deadline = Instant::now() + BATCH_DEADLINE;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let complete = loop {
            if let Some(end) = batch_end(&buf) {
                break Some(end);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let millis = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(millis)) {
                Ok(0) | Err(_) => break None,
                Ok(_) => {}
            }
            match file.read(&mut chunk) {
                Ok(0) | Err(_) => break batch_end(&buf),
                Ok(n) if buf.len() + n <= MAX_BATCH => buf.extend_from_slice(&chunk[..n]),
                Ok(_) => break None,
            }
        };
        let Some(end) = complete else {
            eprintln!(
                "baton: the previous generation's state did not arrive complete; starting without it"
            );
            return Inherited::default();
        };
        let text = String::from_utf8_lossy(&buf[..end]);
        let batch = text.lines().filter_map(parse_state).collect();
        let leftover = buf[end..].to_vec();
        Inherited {
            batch,
            rest: Some((OwnedFd::from(file), leftover)),
        }
    }
}

/// The byte offset just past the `end` line, once it has arrived.
fn batch_end(buf: &[u8]) -> Option<usize> {
    let mut offset = 0;
    for line in buf.split_inclusive(|b| *b == b'\n') {
        offset += line.len();
        if line.ends_with(b"\n") && line.trim_ascii() == END_WORD.as_bytes() {
            return Some(offset);
        }
    }
    None
}

/// `state <kind> <payload>` as (kind, payload).
pub(crate) fn parse_state(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix(STATE_WORD)?.strip_prefix(' ')?;
    let (kind, payload) = rest.split_once(' ').unwrap_or((rest, ""));
    Some((kind.to_owned(), payload.to_owned()))
}

/// Writes `items` as state lines, then `end` if `end`. A payload with a newline is dropped
/// (it would break the framing) and logged.
pub(crate) fn write_batch(
    out: &mut impl Write,
    items: Vec<(String, String)>,
    end: bool,
) -> std::io::Result<()> {
    let mut text = String::new();
    for (kind, payload) in items {
        if kind.contains([' ', '\n']) || payload.contains('\n') {
            tracing::error!(
                kind,
                "state not handed over: its kind or payload is not one line"
            );
            continue;
        }
        text.push_str(&format!("{STATE_WORD} {kind} {payload}\n"));
    }
    if end {
        text.push_str(END_WORD);
        text.push('\n');
    }
    out.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_round_trips_and_the_rest_stays_for_later() {
        let (reader, mut writer) = std::io::pipe().expect("pipe");
        let items = vec![
            ("counters".to_owned(), r#"{"ok":3}"#.to_owned()),
            ("tls".to_owned(), "abc def".to_owned()),
            ("bad".to_owned(), "two\nlines".to_owned()),
        ];
        write_batch(&mut writer, items, true).expect("write");
        writer.write_all(b"state later 1\n").expect("write");
        let inherited = Inherited::read_batch(OwnedFd::from(reader));
        assert_eq!(inherited.get("counters"), Some(r#"{"ok":3}"#));
        assert_eq!(inherited.get("tls"), Some("abc def"));
        assert_eq!(inherited.get("bad"), None);
        let (_, leftover) = inherited.rest.expect("the pipe stays for the final batch");
        assert_eq!(leftover, b"state later 1\n");
    }

    #[test]
    fn a_batch_without_its_end_is_dropped() {
        let (reader, mut writer) = std::io::pipe().expect("pipe");
        writer.write_all(b"state counters 1\n").expect("write");
        drop(writer);
        let inherited = Inherited::read_batch(OwnedFd::from(reader));
        assert_eq!(inherited.get("counters"), None);
    }
}
