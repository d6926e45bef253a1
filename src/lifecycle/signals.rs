//! The one place that turns OS signals into intents. Everything else reacts to [`Command`]s.
//! Other triggers (the config file watcher) inject commands through a [`CommandSender`], so
//! they take exactly the path a signal takes.

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
    injected: tokio::sync::mpsc::UnboundedReceiver<Command>,
    sender: CommandSender,
}

/// Sends a command into the same stream signals arrive on.
#[derive(Debug, Clone)]
pub struct CommandSender(tokio::sync::mpsc::UnboundedSender<Command>);

impl CommandSender {
    /// `false` once the process no longer listens for commands.
    pub fn send(&self, command: Command) -> bool {
        self.0.send(command).is_ok()
    }
}

impl std::fmt::Debug for Commands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Commands").finish_non_exhaustive()
    }
}

impl Commands {
    pub fn install() -> std::io::Result<Commands> {
        let signals = Signals::new([SIGUSR1, SIGUSR2, SIGHUP, SIGTERM, SIGINT, SIGQUIT])?;
        let (tx, injected) = tokio::sync::mpsc::unbounded_channel();
        Ok(Commands {
            signals,
            injected,
            sender: CommandSender(tx),
        })
    }

    /// A handle to inject commands (e.g. a reload when a config file changes).
    pub fn sender(&self) -> CommandSender {
        self.sender.clone()
    }

    /// The next command. Signals of one kind that arrive together may be coalesced by the OS,
    /// which is why a reload re-reads everything rather than counting.
    pub async fn next(&mut self) -> Option<Command> {
        loop {
            tokio::select! {
                signal = self.signals.next() => match signal {
                    Some(signal) => {
                        if let Some(command) = Command::from_signal(signal) {
                            return Some(command);
                        }
                    }
                    None => return None,
                },
                // Never ends: `self` holds a sender.
                Some(command) = self.injected.recv() => return Some(command),
            }
        }
    }
}
