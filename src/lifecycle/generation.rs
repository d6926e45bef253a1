//! One generation's life, in direct mode and as a supervisor's worker (see the protocol in
//! `lifecycle`): serve until a shutdown or a hand-over, then stand by while draining (through
//! the successor's probation, or until the supervisor says), and serve again if the successor
//! dies meanwhile.

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::time::Instant;

use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;

use super::carry::{self, Moment};
use super::drain::{self, DrainReport};
use super::draining::Registration;
use super::handover::ParentLink;
use super::serve::Server;
use super::signals::{Command, Commands};
use super::state::Phase;
use super::upgrade::{self, Handover, LineReader, Successor, SuccessorEvent, UpgradeError};
use super::{Context, Exit, runfiles, systemd};
use crate::settings::ReloadOutcome;

/// An upgrade in flight: the start of the successor, and how to call it off.
///
/// A future polled by this generation's own loop, not a task: the loop runs on the thread
/// that called `block_on`, while a spawned task waits its turn on the workers behind every
/// connection that is ready to run. Under 5,000 busy connections that queue held the start
/// back 250-310 ms, and each wake-up of its readiness pipe as long again.
struct InFlight {
    start: Pin<Box<dyn Future<Output = Result<Successor, UpgradeError>> + Send>>,
    stop: CancellationToken,
}

/// How serving ended.
enum Served {
    Shutdown,
    /// Replaced: by our own successor (direct mode), or by the supervisor's next worker.
    Replaced(Watch),
}

/// What a process standing by watches for a reason to serve again.
enum Watch {
    /// Direct mode: the successor's process, through `upgrade.probation`.
    Successor(Box<Successor>),
    /// A supervisor's worker: the supervisor watches the next worker and gives the orders.
    Supervisor,
}

/// What ends a standby.
enum WatchEvent {
    /// The successor died: take the service back.
    Died(String),
    /// The supervisor says to take the service back.
    Resume,
    /// No rollback any more: finish the drain and exit.
    Release(&'static str),
}

/// A worker's orders from its supervisor, one per line on an inherited pipe.
pub(super) struct Orders(LineReader);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// Another worker serves now: drain, but stand by.
    Standby,
    /// The other worker died in its probation: serve again.
    Resume,
    /// Stop standing by: drain to the end and exit.
    Release,
    /// The next worker is starting: hand the state over (see `carry`).
    Export,
    /// The supervisor is gone.
    Closed,
}

impl Orders {
    pub(super) fn new(fd: std::os::fd::OwnedFd) -> std::io::Result<Orders> {
        LineReader::new(fd).map(Orders)
    }

    async fn next(&mut self) -> Order {
        loop {
            match self.0.line().await.as_deref() {
                Ok("standby") => return Order::Standby,
                Ok("resume") => return Order::Resume,
                Ok("release") => return Order::Release,
                Ok("export") => return Order::Export,
                Ok("") | Err(_) => return Order::Closed,
                Ok(other) => tracing::warn!(order = other, "unknown order from the supervisor"),
            }
        }
    }
}

/// The next order, or never (not a worker, or the supervisor is gone).
async fn next_order(orders: &mut Option<Orders>) -> Order {
    match orders {
        Some(orders) => orders.next().await,
        None => std::future::pending().await,
    }
}

/// How a standby ended.
enum Standby {
    Exit(Exit),
    /// The successor died in its probation: serve again.
    RolledBack,
}

/// Serves, upgrades, stands by and rolls back until the process is done.
pub(super) async fn run(
    ctx: &Context,
    commands: &mut Commands,
    mut server: Server,
    mut link: ParentLink,
    mut orders: Option<Orders>,
) -> Exit {
    loop {
        match serve(ctx, commands, &server, &mut link, &mut orders).await {
            Served::Shutdown => {
                // Moving on: the previous generation, if standing by, must not take over.
                link.release();
                systemd::stopping();
                ctx.process.retire();
                server.close_listeners();
                let work = begin_drain(ctx, &mut server).await;
                finish_drain(ctx, commands, drain_of(ctx, work), true).await;
                runfiles::remove_if_ours(
                    &ctx.settings.current().lifecycle.pid_file,
                    ctx.process.pid(),
                );
                return Exit::Shutdown;
            }
            Served::Replaced(watch) => {
                match standby(ctx, commands, &mut server, watch, &mut orders, &mut link).await {
                    Standby::Exit(exit) => return exit,
                    Standby::RolledBack => {
                        server.resume();
                        ctx.process.resume();
                        reclaim(ctx);
                    }
                }
            }
        }
    }
}

async fn serve(
    ctx: &Context,
    commands: &mut Commands,
    server: &Server,
    link: &mut ParentLink,
    orders: &mut Option<Orders>,
) -> Served {
    let mut in_flight: Option<InFlight> = None;
    // The readiness pipe is of no use once the previous generation's probation is over.
    let probation_over = ctx.probation_until.map(|until| {
        let left = until
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        tokio::time::Instant::now() + left
    });
    loop {
        tokio::select! {
            () = sleep_until(probation_over), if link.is_open() => link.close(),
            order = next_order(orders) => match order {
                Order::Standby => {
                    tracing::info!("the supervisor's next worker is ready; standing by");
                    return Served::Replaced(Watch::Supervisor);
                }
                Order::Closed => *orders = None,
                Order::Export => link.send_state(export(ctx, Moment::Start), true),
                Order::Resume | Order::Release => tracing::debug!(?order, "order ignored while serving"),
            },
            command = commands.next() => match command {
                Some(Command::Reload) => reload_settings(ctx).await,
                Some(Command::Upgrade) => {
                    if let Some(started) = begin_upgrade(ctx, server, in_flight.is_some()) {
                        // This generation moves on: the one before it stops standing by.
                        link.release();
                        in_flight = Some(started);
                    }
                }
                Some(Command::Shutdown) | None => {
                    tracing::info!("shutdown requested");
                    if let Some(upgrade) = in_flight.take() {
                        stop_upgrade(ctx, upgrade).await;
                    }
                    return Served::Shutdown;
                }
            },
            result = async { in_flight.as_mut().expect("guarded by the branch condition").start.as_mut().await }, if in_flight.is_some() => {
                in_flight = None;
                match result {
                    Ok(successor) => {
                        let times = &successor.times;
                        let steps = times.steps.as_ref().map(ToString::to_string);
                        tracing::info!(
                            successor = successor.pid,
                            spawned_ms = super::lineage::millis(times.spawned),
                            ready_ms = super::lineage::millis(times.ready),
                            steps = steps.as_deref(),
                            "the next generation is ready; handing over"
                        );
                        ctx.process.set_handover_times(successor.times.clone());
                        return Served::Replaced(Watch::Successor(Box::new(successor)));
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "upgrade failed; still serving, nothing changed");
                        ctx.process.record_upgrade(false, None, Some(err.to_string()));
                        ctx.process.set_phase(Phase::Serving);
                        // The child may have claimed the pid file and MAINPID before it failed.
                        reclaim(ctx);
                    }
                }
            }
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Stop means stop: the half-started successor is stopped and reaped before this process
/// drains, so nothing of the deployment is left running afterwards.
async fn stop_upgrade(ctx: &Context, upgrade: InFlight) {
    tracing::info!("an upgrade is in flight: stopping the new process first");
    upgrade.stop.cancel();
    match upgrade.start.await {
        // Ready at the very moment the shutdown came: it is stopped like the rest.
        Ok(successor) => {
            successor
                .stop(ctx.settings.current().lifecycle.shutdown_timeout)
                .await
        }
        Err(err) => tracing::info!(reason = %err, "upgrade abandoned"),
    }
    ctx.process.record_upgrade(
        false,
        None,
        Some("stopped: a shutdown was requested during the upgrade".into()),
    );
    ctx.process.set_phase(Phase::Serving);
    // It may have written the pid file; this process removes it when it exits.
    if let Err(err) = runfiles::claim(ctx) {
        tracing::warn!(error = %err, "could not take the run files back");
    }
}

/// Starts an upgrade unless the process is busy with one.
fn begin_upgrade(ctx: &Context, server: &Server, in_flight: bool) -> Option<InFlight> {
    let refuse = |reason: String, in_flight: bool| {
        tracing::warn!(reason = %reason, "upgrade refused");
        ctx.process.record_refusal(reason, in_flight);
        runfiles::publish(ctx);
        None
    };
    if in_flight {
        return refuse("an upgrade is already in progress".into(), true);
    }
    if let Some(supervisor) = ctx.role.supervisor() {
        return refuse(
            format!(
                "this is a supervised worker; send SIGUSR2 to the supervisor (pid {supervisor})"
            ),
            false,
        );
    }
    if !ctx.process.try_begin_upgrade() {
        return refuse(
            format!("the process is {:?}, not serving", ctx.process.phase()),
            false,
        );
    }
    let sockets = match super::duplicate_sockets(server.listeners()) {
        Ok(sockets) => sockets,
        Err(reason) => {
            ctx.process.set_phase(Phase::Serving);
            ctx.process
                .record_upgrade(false, None, Some(reason.clone()));
            tracing::error!(%reason, "upgrade failed; still serving, nothing changed");
            runfiles::publish(ctx);
            return None;
        }
    };
    let settings = ctx.settings.current();
    let image = ctx.image.clone();
    let start_batch = export(ctx, Moment::Start);
    let handover = Handover {
        generation: ctx.process.generation() + 1,
        parent_pid: Some(std::process::id()),
        supervisor_pid: None,
        from_systemd: ctx.from_systemd,
        probation: Some(settings.upgrade.probation),
    };
    tracing::info!(program = %image.program().display(), "upgrade requested");
    let stop = CancellationToken::new();
    let start = {
        let stop = stop.clone();
        async move {
            let timeouts = (
                settings.upgrade.ready_timeout,
                settings.lifecycle.shutdown_timeout,
            );
            upgrade::start_successor(&image, sockets, handover, timeouts, start_batch, stop).await
        }
    };
    // A bug in the upgrade must not take down the generation that serves: a panic is an
    // upgrade that failed, as it was when the start ran as a task of its own.
    let start = Box::pin(AssertUnwindSafe(start).catch_unwind().map(|outcome| {
        outcome.unwrap_or_else(|_| {
            Err(UpgradeError::Protocol {
                pid: 0,
                // The panic hook has written the message to the log already.
                detail: "the upgrade panicked (its message is in the log)".into(),
            })
        })
    }));
    Some(InFlight { start, stop })
}

/// Drains while watching for a reason to serve again: in direct mode the successor, through
/// its probation (`upgrade.probation` from its "ready"); in a worker, the supervisor's orders.
/// On that reason the drain is called off and the caller serves again. A first shutdown
/// signal here is this process's first: it ends the standby and drains.
async fn standby(
    ctx: &Context,
    commands: &mut Commands,
    server: &mut Server,
    watch: Watch,
    orders: &mut Option<Orders>,
    link: &mut ParentLink,
) -> Standby {
    let ready_at = Instant::now();
    let probation = ctx.settings.current().upgrade.probation;
    let successor_pid = match &watch {
        Watch::Successor(successor) => Some(successor.pid),
        Watch::Supervisor => None,
    };
    let mut watching = Some(watch);
    // Where the final state goes: our successor's state pipe, or the supervisor.
    let mut final_out = match &mut watching {
        Some(Watch::Successor(successor)) => successor.take_state(),
        _ => None,
    };
    let work = begin_drain(ctx, server).await;
    let mut drain = std::pin::pin!(drain_of(ctx, work));
    let mut drained = false;
    let mut shutdown_requested = false;
    let timed = successor_pid.is_some();
    if timed && probation.is_zero() {
        end_standby(ctx, server, &mut watching, "no probation");
    }
    loop {
        tokio::select! {
            event = watch_event(&mut watching, orders), if watching.is_some() => match event {
                WatchEvent::Died(how) => {
                    let reason = format!(
                        "upgrade rolled back: generation {} (pid {}) exited {} ms after ready ({how})",
                        ctx.process.generation() + 1,
                        successor_pid.unwrap_or_default(),
                        ready_at.elapsed().as_millis(),
                    );
                    tracing::error!(%reason, "the new generation died during its probation; serving again");
                    ctx.process.record_rollback(successor_pid.unwrap_or_default(), reason);
                    return Standby::RolledBack;
                }
                WatchEvent::Resume => {
                    tracing::warn!("the supervisor rolled the upgrade back; serving again");
                    return Standby::RolledBack;
                }
                WatchEvent::Release(why) => end_standby(ctx, server, &mut watching, why),
            },
            () = tokio::time::sleep_until((ready_at + probation).into()), if timed && watching.is_some() => {
                end_standby(ctx, server, &mut watching, "probation passed");
            }
            report = &mut drain, if !drained => {
                let next = if watching.is_some() { "standing by until the probation ends" } else { "exiting" };
                log_drained(ctx, report, next);
                drained = true;
            }
            command = commands.next() => match command {
                Some(Command::Shutdown) | None if shutdown_requested => exit_now(ctx),
                Some(Command::Shutdown) | None => {
                    tracing::info!("shutdown requested while standing by: no rollback any more; draining");
                    shutdown_requested = true;
                    end_standby(ctx, server, &mut watching, "shutdown requested");
                }
                Some(Command::Upgrade) => refuse_draining(ctx),
                Some(Command::Reload) => tracing::info!("reload ignored: this process is draining"),
            }
        }
        if drained && watching.is_none() {
            super::wait_predecessor_final(ctx, commands).await;
            // Everything this generation will ever count is counted now.
            let mut items = export(ctx, Moment::Final);
            items.push(super::lineage::export(&ctx.process));
            match final_out.as_mut() {
                Some(out) => {
                    if let Err(err) = carry::write_batch(out, items, false) {
                        tracing::warn!(error = %err, "could not hand the final state over");
                    }
                }
                None => link.send_state(items, false),
            }
            return Standby::Exit(Exit::HandedOver {
                successor: successor_pid,
            });
        }
    }
}

async fn watch_event(watching: &mut Option<Watch>, orders: &mut Option<Orders>) -> WatchEvent {
    match watching {
        Some(Watch::Successor(successor)) => match successor.next_event().await {
            SuccessorEvent::Exited(how) => WatchEvent::Died(how),
            SuccessorEvent::Released => WatchEvent::Release("released by the next generation"),
        },
        Some(Watch::Supervisor) => match next_order(orders).await {
            Order::Resume => WatchEvent::Resume,
            Order::Release => WatchEvent::Release("released by the supervisor"),
            Order::Closed => {
                *orders = None;
                WatchEvent::Release("the supervisor is gone")
            }
            Order::Standby | Order::Export => WatchEvent::Release("unexpected order"),
        },
        None => std::future::pending().await,
    }
}

fn end_standby(ctx: &Context, server: &mut Server, watching: &mut Option<Watch>, why: &str) {
    let Some(watch) = watching.take() else {
        return;
    };
    tracing::info!(why, "standby over: the next generation keeps the service");
    if let Watch::Successor(successor) = watch {
        ctx.process.record_upgrade(true, Some(successor.pid), None);
    }
    ctx.process.retire();
    server.close_listeners();
}

/// What the application hands to the next generation at `moment`.
fn export(ctx: &Context, moment: Moment) -> Vec<(String, String)> {
    ctx.carry
        .as_ref()
        .map(|carry| carry.export(moment))
        .unwrap_or_default()
}

/// Stops accepting and marks the process draining: `Connection: close`, `/readyz` 503, GOAWAY,
/// long responses told to end.
async fn begin_drain(ctx: &Context, server: &mut Server) -> drain::Draining {
    let work = server.stop_accepting().await;
    let lifecycle = &ctx.settings.current().lifecycle;
    // Half the lame duck at most: a connection told at the end of the window still has time
    // for the response that carries its close before the graceful step closes idle ones.
    ctx.process
        .begin_drain(lifecycle.close_spread.min(lifecycle.lame_duck / 2));
    work
}

/// The drain of `work`, listed among the draining generations while it runs (see `draining`):
/// it ends early if newer generations fill `upgrade.max_draining`.
fn drain_of(
    ctx: &Context,
    work: drain::Draining,
) -> impl std::future::Future<Output = DrainReport> + use<> {
    let settings = ctx.settings.current();
    let timings = drain::Timings {
        lame_duck: settings.lifecycle.lame_duck,
        shutdown_timeout: settings.lifecycle.shutdown_timeout,
    };
    let registration = Registration::new(
        &settings.lifecycle.pid_file,
        &ctx.process,
        settings.upgrade.max_draining,
    );
    drain::drain(
        work,
        ctx.process.long_lived_tracker(),
        timings,
        Registration::overtaken(registration),
    )
}

/// Drains to the end while still answering signals: a second shutdown exits at once, an
/// upgrade is refused (this process is on its way out).
async fn finish_drain(
    ctx: &Context,
    commands: &mut Commands,
    drain: impl std::future::Future<Output = DrainReport>,
    mut shutdown_requested: bool,
) {
    let mut drain = std::pin::pin!(drain);
    loop {
        tokio::select! {
            report = &mut drain => return log_drained(ctx, report, "exiting"),
            command = commands.next() => match command {
                Some(Command::Shutdown) | None if shutdown_requested => exit_now(ctx),
                Some(Command::Shutdown) | None => shutdown_requested = true,
                Some(Command::Upgrade) => refuse_draining(ctx),
                Some(Command::Reload) => tracing::info!("reload ignored: this process is draining"),
            }
        }
    }
}

/// Logs the drain and records it (`/-/status`, and the next generation's `/metrics`).
fn log_drained(ctx: &Context, report: DrainReport, next: &str) {
    ctx.process.record_drain(&report);
    tracing::info!(
        lame_duck = ?report.lame_duck,
        total = ?report.total,
        cut = report.cut,
        cut_long_lived = report.cut_long_lived,
        "drained; {next}"
    );
}

fn exit_now(ctx: &Context) -> ! {
    tracing::warn!(
        open_connections = ctx.process.open_connections(),
        "second shutdown signal: exiting now"
    );
    let pid_file = &ctx.settings.current().lifecycle.pid_file;
    runfiles::remove_if_ours(pid_file, ctx.process.pid());
    super::draining::remove_own(pid_file);
    std::process::exit(1);
}

pub(super) fn refuse_draining(ctx: &Context) {
    let reason =
        "this process is draining (replaced or shutting down); signal the current pid".to_owned();
    tracing::warn!(%reason, "upgrade refused");
    ctx.process.record_refusal(reason, false);
}

/// Serving (again): the run files and systemd's MAINPID name this process.
fn reclaim(ctx: &Context) {
    if let Err(err) = runfiles::claim(ctx) {
        tracing::error!(error = %err, "could not take the run files back; the client commands may not find this process");
    }
    systemd::ready(&format!("serving, generation {}", ctx.process.generation()));
}

/// Re-reads the configuration and applies what a running process can apply.
async fn reload_settings(ctx: &Context) {
    systemd::reloading();
    let started = Instant::now();
    let outcome = ctx.settings.reload().await;
    let took = started.elapsed();
    match &outcome {
        ReloadOutcome::Applied {
            config_generation,
            upgrade_only,
        } => {
            let filter = ctx.settings.current().log.filter.clone();
            if let Err(err) = ctx.telemetry.set_filter(&filter) {
                tracing::error!(error = %err, "could not apply the new log filter");
            }
            tracing::info!(config_generation, ?took, "configuration reloaded");
            warn_upgrade_only(upgrade_only);
        }
        ReloadOutcome::Unchanged { upgrade_only } => {
            tracing::info!(?took, "configuration unchanged");
            warn_upgrade_only(upgrade_only);
        }
        ReloadOutcome::Rejected { error } => {
            tracing::error!(%error, "configuration rejected; the previous one stays in force");
        }
    }
    systemd::reloaded(&format!(
        "serving, generation {}, config generation {}",
        ctx.process.generation(),
        ctx.settings.generation()
    ));
    runfiles::publish(ctx);
}

fn warn_upgrade_only(keys: &[&'static str]) {
    if !keys.is_empty() {
        tracing::warn!(
            keys = ?keys,
            "changed settings that take effect at the next upgrade (SIGUSR2), not at a reload"
        );
    }
}
