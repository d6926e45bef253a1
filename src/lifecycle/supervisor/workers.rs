//! The supervisor's bookkeeping of its workers: starting one, its readiness, its probation
//! (the previous worker standing by), its death, and restarts with back-off.

use std::io::Write;
use std::time::Instant;

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::{
    Dying, FIRST_BACKOFF, MAX_BACKOFF, MAX_QUICK_DEATHS, Pending, Purpose, STABLE_AFTER,
    StandingBy, Supervisor, SupervisorError, Worker,
};
use crate::lifecycle::carry;
use crate::lifecycle::handover::Startup;
use crate::lifecycle::steps::Steps;
use crate::lifecycle::upgrade::{self, Handover, LineReader, Ready, UpgradeError};
use crate::lifecycle::{pidfile, systemd};
use crate::settings::Settings;

impl Supervisor {
    pub(super) fn start_worker(&mut self, purpose: Purpose) -> Result<(), UpgradeError> {
        // Timeouts come from the configuration as it is now, like the worker's own.
        if let Ok(settings) = Settings::load(&self.config) {
            self.settings = settings;
        }
        let fds =
            crate::lifecycle::duplicate_sockets(self.sockets.iter().map(|(n, l)| (n.as_str(), l)))
                .map_err(UpgradeError::Sockets)?;
        let generation = self.next_generation;
        let handover = Handover {
            generation,
            parent_pid: None,
            supervisor_pid: Some(std::process::id()),
            from_systemd: self.from_systemd,
            probation: None,
        };
        let spawned = upgrade::spawn_process(&self.image, fds, handover)?;
        self.next_generation += 1;
        let pid = spawned.pid;
        self.orders.insert(pid, spawned.orders);
        let mut inbox = spawned.state;
        // The current worker hands its state over through us; without one there is none, and
        // no final batch to wait for either.
        let handing_over = match self.current {
            Some(current) if purpose == Purpose::Upgrade => {
                self.order(current.pid, "export");
                true
            }
            _ => {
                let _ = carry::write_batch(&mut inbox, Vec::new(), true);
                false
            }
        };
        self.inboxes.insert(pid, inbox);
        if !handing_over {
            self.send_end(pid);
        }
        let timeout = self.settings.upgrade.ready_timeout;
        self.pending = Some(Pending {
            worker: Worker {
                pid,
                generation,
                started: Instant::now(),
            },
            purpose,
            ready: Box::pin(upgrade::wait_ready(pid, spawned.ready, timeout)),
            exited: None,
        });
        Ok(())
    }
    /// A pending worker answered: make it current, or count the failure.
    pub(super) fn settle(
        &mut self,
        ready: Result<Ready, UpgradeError>,
        startup: &mut Startup,
    ) -> Result<(), SupervisorError> {
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        // Reaped before its ready line was read: it said ready, then died. Not a worker.
        let ready = match (ready, &pending.exited) {
            (Ok(_), Some(how)) => Err(UpgradeError::Exited {
                pid: pending.worker.pid,
                status: format!("{how}, right after it said ready"),
            }),
            (ready, _) => ready,
        };
        match ready {
            Ok(Ready { lines, steps }) => {
                self.forward_lines(pending.worker.pid, lines);
                self.worker_ready(pending, steps, startup)
            }
            Err(err) => self.worker_failed(pending, err),
        }
    }

    /// Reads what a ready worker writes on its readiness pipe (its state) for `relay_state`.
    fn forward_lines(&self, pid: u32, mut lines: LineReader) {
        let relay = self.relay.clone();
        tokio::spawn(async move {
            // Ends at end of file: the worker has exited. The empty line then says so, after
            // its last state line (its exit may be reaped before those are relayed).
            while let Ok(line) = lines.line().await {
                if line.is_empty() {
                    break;
                }
                if relay.send((pid, line)).is_err() {
                    return;
                }
            }
            let _ = relay.send((pid, String::new()));
        });
    }

    /// Passes a worker's state line on. The current worker's lines are its start batch, for
    /// the worker starting; any other worker's are the final batch of one that drained, for
    /// the worker that took over from it while that one runs, else for the current one.
    ///
    /// Each report is cumulative and the larger wins, so counts add up only along the chain
    /// of successors: a final batch must reach the worker whose own final batch will carry it
    /// on. Sent to the current worker while its predecessor still drains (upgrades faster
    /// than drains), it would lose to what that predecessor handed over, and the drain's
    /// requests would not be counted; sent to a starting worker, it would lose to the current
    /// one's start batch. So the successor waits for an `end` line, which says its
    /// predecessor's final batch is all in, before it hands its own on (in direct mode the
    /// pipe's end of file says it).
    pub(super) fn relay_state(&mut self, from: u32, line: &str) {
        if line.is_empty() {
            // `from` has exited and all it wrote is relayed: its successor may hand over.
            if let Some(successor) = self.successors.remove(&from) {
                self.send_end(successor);
            }
            return;
        }
        if carry::parse_state(line).is_none() && line != carry::END_WORD {
            return;
        }
        let successor = self
            .successors
            .get(&from)
            .copied()
            .filter(|pid| self.inboxes.contains_key(pid));
        let to = match (&self.pending, self.current) {
            (Some(pending), Some(current)) if current.pid == from => pending.worker.pid,
            (_, Some(current)) if current.pid != from => successor.unwrap_or(current.pid),
            // No current worker (it died; one is being started): the one starting.
            (Some(pending), None) if pending.worker.pid != from => pending.worker.pid,
            _ => return,
        };
        if let Some(inbox) = self.inboxes.get_mut(&to)
            && let Err(err) = inbox.write_all(format!("{line}\n").as_bytes())
        {
            tracing::warn!(pid = to, error = %err, "could not relay the state to the worker");
        }
    }

    /// Tells `pid` that its predecessor's final batch is all in (or that there is none).
    fn send_end(&mut self, pid: u32) {
        if let Some(inbox) = self.inboxes.get_mut(&pid)
            && let Err(err) = carry::write_batch(inbox, Vec::new(), true)
        {
            tracing::warn!(pid, error = %err, "could not relay the state to the worker");
        }
    }

    fn worker_ready(
        &mut self,
        pending: Pending,
        steps: Option<Steps>,
        startup: &mut Startup,
    ) -> Result<(), SupervisorError> {
        let worker = pending.worker;
        let steps = steps.as_ref().map(ToString::to_string);
        tracing::info!(
            pid = worker.pid,
            generation = worker.generation,
            steps = steps.as_deref(),
            "worker ready"
        );
        let old = self.current.replace(worker);
        if old.is_none() && pending.purpose == Purpose::Upgrade {
            // Its predecessor died while it started: no final batch will come.
            self.send_end(worker.pid);
        }
        if let Some(old) = old {
            self.successors.insert(old.pid, worker.pid);
            // Only now, with the new worker accepting, is the old one told to drain; it
            // stands by through the new one's probation, ready to serve again.
            let probation = self.settings.upgrade.probation;
            if probation.is_zero() {
                upgrade::terminate(old.pid);
                self.draining.push(old.pid);
            } else {
                self.order(old.pid, "standby");
                self.standby = Some(StandingBy {
                    worker: old,
                    until: Instant::now() + probation,
                });
            }
        }
        match pending.purpose {
            // With a standby, the outcome is known at the end of the probation.
            Purpose::Upgrade if self.standby.is_none() => {
                self.records.record_upgrade(true, Some(worker.pid), None);
            }
            Purpose::First => {
                // Part of readiness: without it no client finds the supervisor.
                if let Err(source) = pidfile::write(&self.pid_file, std::process::id()) {
                    self.kill_all();
                    return Err(SupervisorError::PidFile {
                        path: self.pid_file.clone(),
                        source,
                    });
                }
                systemd::ready("supervising");
                let _ = startup.report_ready();
            }
            Purpose::Upgrade | Purpose::Restart => {}
        }
        self.publish();
        Ok(())
    }

    fn worker_failed(
        &mut self,
        pending: Pending,
        mut err: UpgradeError,
    ) -> Result<(), SupervisorError> {
        let pid = pending.worker.pid;
        // A worker that never served does not use up a generation number.
        self.next_generation = pending.worker.generation;
        match pending.exited {
            Some(how) => {
                if let UpgradeError::Exited { status, .. } = &mut err {
                    *status = how;
                }
            }
            None => {
                upgrade::terminate(pid);
                let grace = self.settings.lifecycle.shutdown_timeout;
                self.dying.push(Dying {
                    pid,
                    kill_at: Some(Instant::now() + grace),
                });
            }
        }
        match pending.purpose {
            Purpose::First => {
                self.kill_all();
                Err(SupervisorError::FirstWorker(err))
            }
            Purpose::Upgrade => {
                tracing::error!(error = %err, "upgrade failed; the current worker keeps serving");
                self.records
                    .record_upgrade(false, None, Some(err.to_string()));
                self.publish();
                // The old worker may have died meanwhile.
                if self.current.is_none() {
                    self.schedule_restart();
                }
                Ok(())
            }
            Purpose::Restart => {
                tracing::error!(error = %err, "restarted worker failed");
                self.worker_died_quickly()
            }
        }
    }

    /// Tells a worker what to do next; a worker already gone has nothing to hear.
    pub(super) fn order(&mut self, pid: u32, order: &str) {
        if let Some(pipe) = self.orders.get_mut(&pid)
            && let Err(err) = pipe.write_all(format!("{order}\n").as_bytes())
        {
            tracing::warn!(pid, order, error = %err, "could not give the worker its order");
        }
    }
    /// The previous worker stops standing by: it drains to the end and exits.
    pub(super) fn end_standby(&mut self, why: &str) {
        let Some(standby) = self.standby.take() else {
            return;
        };
        tracing::info!(
            pid = standby.worker.pid,
            why,
            "standby over: the current worker keeps the service"
        );
        self.order(standby.worker.pid, "release");
        self.draining.push(standby.worker.pid);
        self.record_probation_passed();
    }
    pub(super) fn record_probation_passed(&mut self) {
        let current = self.current.map(|w| w.pid);
        self.records.record_upgrade(true, current, None);
        self.publish();
    }
    /// The current worker died in its probation: the one standing by serves again.
    pub(super) fn roll_back(&mut self, dead: u32, how: &str, standby: StandingBy) {
        let after = standby
            .until
            .saturating_duration_since(Instant::now())
            .as_millis();
        let probation = self.settings.upgrade.probation.as_millis();
        let generation = self.current.map_or(0, |w| w.generation);
        let reason = format!(
            "upgrade rolled back: generation {generation} (pid {dead}) exited {} ms after ready ({how})",
            probation.saturating_sub(after)
        );
        tracing::error!(%reason, pid = standby.worker.pid, "the previous worker serves again");
        self.order(standby.worker.pid, "resume");
        self.successors.remove(&standby.worker.pid);
        self.current = Some(standby.worker);
        self.records.record_rollback(dead, reason);
        self.publish();
    }
    /// Reaps every exited child, ours or orphaned onto us.
    pub(super) fn reap(&mut self) -> Result<(), SupervisorError> {
        loop {
            let (pid, status, how) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code, format!("exit status {code}")),
                // The shell's convention for the supervisor's own exit code.
                Ok(WaitStatus::Signaled(pid, signal, _)) => {
                    (pid, 128 + signal as i32, format!("killed by {signal}"))
                }
                Ok(WaitStatus::StillAlive) | Err(_) => return Ok(()),
                Ok(_) => continue,
            };
            let pid = u32::try_from(pid.as_raw()).unwrap_or(0);
            self.orders.remove(&pid);
            self.inboxes.remove(&pid);
            if self.current.is_some_and(|w| w.pid == pid)
                && !self.stopping
                && let Some(standby) = self.standby.take()
            {
                self.roll_back(pid, &how, standby);
            } else if self.current.is_some_and(|w| w.pid == pid) {
                let worker = self.current.take().expect("checked");
                self.last_status = status;
                if !self.stopping {
                    tracing::error!(pid, status = %how, "worker died unexpectedly");
                    if worker.started.elapsed() >= STABLE_AFTER {
                        self.quick_deaths = 0;
                        self.backoff = FIRST_BACKOFF;
                    }
                    if self.pending.is_none() {
                        self.worker_died_quickly()?;
                    }
                    self.publish();
                }
            } else if self.standby.is_some_and(|s| s.worker.pid == pid) {
                tracing::warn!(pid, status = %how, "the worker standing by exited");
                self.standby = None;
                self.record_probation_passed();
            } else if let Some(i) = self.draining.iter().position(|p| *p == pid) {
                self.draining.swap_remove(i);
                tracing::info!(pid, status, "old worker drained and exited");
            } else if let Some(i) = self.dying.iter().position(|d| d.pid == pid) {
                self.dying.swap_remove(i);
                tracing::info!(pid, status, "failed worker reaped");
            } else if let Some(pending) = self.pending.as_mut().filter(|p| p.worker.pid == pid) {
                // The caller settles it as failed.
                tracing::warn!(pid, status = %how, "starting worker exited");
                pending.exited = Some(how);
            } else {
                tracing::debug!(pid, status, "reaped an orphan");
            }
        }
    }
    /// Counts a worker that did not last, and schedules its restart or gives up.
    pub(super) fn worker_died_quickly(&mut self) -> Result<(), SupervisorError> {
        self.quick_deaths += 1;
        if self.quick_deaths >= MAX_QUICK_DEATHS {
            tracing::error!(
                deaths = self.quick_deaths,
                "the worker keeps dying; giving up"
            );
            self.kill_all();
            self.remove_files();
            return Err(SupervisorError::GaveUp);
        }
        self.schedule_restart();
        Ok(())
    }
    pub(super) fn schedule_restart(&mut self) {
        tracing::warn!(in_ = ?self.backoff, "restarting the worker");
        self.restart_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}
