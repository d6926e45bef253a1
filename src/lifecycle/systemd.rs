//! Telling systemd what we are doing (`sd_notify`). A no-op outside systemd (no
//! `NOTIFY_SOCKET`), and never fatal: a lost notification must not take the service down.

use sd_notify::NotifyState;

fn notify(states: &[NotifyState<'_>]) {
    // `false`: keep NOTIFY_SOCKET in the environment, the next generation needs it too.
    if let Err(err) = sd_notify::notify(false, states) {
        tracing::warn!(error = %err, "could not notify systemd");
    }
}

/// Ready, and (after an upgrade) "I am the main process now", so that systemd follows the
/// new pid instead of deeming the service stopped when the old one exits.
pub(crate) fn ready(status: &str) {
    notify(&[
        NotifyState::MainPid(std::process::id()),
        NotifyState::Ready,
        NotifyState::Status(status),
    ]);
}

/// The start of a reload (`Type=notify-reload` wants the monotonic timestamp with it).
pub(crate) fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

pub(crate) fn reloaded(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub(crate) fn stopping() {
    notify(&[NotifyState::Stopping]);
}
