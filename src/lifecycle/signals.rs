//! The one place that turns OS signals into intents. Everything else reacts to [`Command`]s.

use futures_util::StreamExt;
use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook_tokio::Signals;

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// SIGUSR1 or SIGHUP: re-read the configuration.
    Reload,
    /// SIGUSR2: replace this binary with the one at the recorded path.
    Upgrade,
    /// SIGTERM, SIGINT or SIGQUIT: drain and exit (a second one: exit at once).
    Shutdown,
}

impl Command {
    fn from_signal(signal: i32) -> Option<Command> {
        match signal {
            SIGUSR1 | SIGHUP => Some(Command::Reload),
            SIGUSR2 => Some(Command::Upgrade),
            SIGTERM | SIGINT | SIGQUIT => Some(Command::Shutdown),
            _ => None,
        }
    }
}

/// The stream of commands. Created first thing once the runtime exists: until then the
/// default action of SIGUSR1/SIGUSR2 would terminate the process.
pub struct Commands {
    signals: Signals,
}

impl std::fmt::Debug for Commands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Commands").finish_non_exhaustive()
    }
}

impl Commands {
    pub fn install() -> std::io::Result<Commands> {
        let signals = Signals::new([SIGUSR1, SIGUSR2, SIGHUP, SIGTERM, SIGINT, SIGQUIT])?;
        Ok(Commands { signals })
    }

    /// The next command. Signals of one kind that arrive together may be coalesced by the OS,
    /// which is why a reload re-reads everything rather than counting.
    pub async fn next(&mut self) -> Option<Command> {
        while let Some(signal) = self.signals.next().await {
            if let Some(command) = Command::from_signal(signal) {
                return Some(command);
            }
        }
        None
    }
}
