//! Client commands and scripts run as a user would, with their output captured and a deadline
//! (a hanging command is killed and fails the test), and the parsing of what they print.

use std::fs;
use std::io::{Read, Seek};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::POLL;

/// What a CLI command or script did.
#[derive(Debug)]
pub struct CliOutput {
    /// `None` when it was killed by a signal (or by the deadline).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for CliOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}---",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `command` with its output captured, killing it at `deadline`.
pub fn run(mut command: Command, deadline: Duration) -> CliOutput {
    let mut stdout = tempfile::tempfile().expect("a temp file for stdout");
    let mut stderr = tempfile::tempfile().expect("a temp file for stderr");
    command
        .stdin(Stdio::null())
        .stdout(stdout.try_clone().expect("clone"))
        .stderr(stderr.try_clone().expect("clone"));
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let end = Instant::now() + deadline;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the command") {
            break Some(status);
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(POLL);
    };
    let read = |file: &mut fs::File| {
        let mut text = String::new();
        file.rewind().expect("rewind");
        file.read_to_string(&mut text).expect("read the output");
        text
    };
    let output = CliOutput {
        code: status.and_then(|s| s.code()),
        stdout: read(&mut stdout),
        stderr: read(&mut stderr),
    };
    assert!(
        status.is_some(),
        "{command:?} did not finish within {deadline:?} (killed):\n{output}"
    );
    output
}

/// `upgraded <old> -> <new> (<version>)` -> (old, new).
pub fn parse_upgraded(stdout: &str) -> Option<(u32, u32)> {
    let line = stdout.lines().find(|l| l.starts_with("upgraded "))?;
    let mut words = line.split_whitespace().skip(1);
    let old = words.next()?.parse().ok()?;
    (words.next()? == "->").then_some(())?;
    let new = words.next()?.parse().ok()?;
    Some((old, new))
}

/// `upgraded <old> -> <new> (<version>), supervisor pid <sup>` -> (old, new, sup): what
/// `baton upgrade` prints in supervised mode.
pub fn parse_supervised_upgrade(stdout: &str) -> Option<(u32, u32, u32)> {
    let (old, new) = parse_upgraded(stdout)?;
    let line = stdout.lines().find(|l| l.starts_with("upgraded "))?;
    let (_, supervisor) = line.trim_end().rsplit_once("), supervisor pid ")?;
    Some((old, new, supervisor.parse().ok()?))
}
