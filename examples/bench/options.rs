//! The command line, and the plan it resolves to: what each mode runs and for how long.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Requests in the first half second of every load are left out of every figure: connections
/// are still being opened and the server's allocator is still growing.
pub(crate) const WARMUP: Duration = Duration::from_millis(500);

/// The window after each SIGUSR2 whose latency is reported as "around an upgrade"; nothing
/// else (no reload, no other upgrade) happens inside it.
pub(crate) const UPGRADE_WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "Load baton (release build) while it upgrades its binary and reloads its config; \
             compare with a bare axum hello world",
    after_help = "Exit status: 0 when no request failed and no process was left over, 1 \
                  otherwise (timings never fail the run), 2 for a usage error."
)]
pub(crate) struct Options {
    /// Concurrent connections of the load on `/`.
    #[arg(long, default_value_t = 64)]
    pub(crate) connections: usize,
    /// Binary upgrades (SIGUSR2) per mode [default: 25, --short: 3].
    #[arg(long)]
    pub(crate) upgrades: Option<u32>,
    /// Configuration reloads (SIGUSR1) per mode [default: 250, --short: 25].
    #[arg(long)]
    pub(crate) reloads: Option<u32>,
    /// Modes to run, in order.
    #[arg(long, value_delimiter = ',', default_value = "keepalive,close,h2,slow")]
    pub(crate) modes: Vec<ModeName>,
    /// Planned load time per mode: 15 % steady state before the events, 15 % after, the rest
    /// for the upgrades and reloads (longer if they need it) [default: 40s, --short: 6s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) duration_per_mode: Option<Duration>,
    /// Paired rounds of bare axum against the template per mode that has a baseline
    /// (`keepalive`, `close`) [default: 6, --short: 3].
    #[arg(long)]
    pub(crate) rounds: Option<u32>,
    /// A run of seconds, not minutes, for CI: 3 upgrades and 25 reloads per mode.
    #[arg(long)]
    pub(crate) short: bool,
    /// Also write every figure, and every single handover and reload time, as JSON.
    #[arg(long, value_name = "PATH")]
    pub(crate) json: Option<PathBuf>,
    /// Also draw each mode's throughput and p99 latency per 100 ms, with the upgrades and
    /// reloads marked, as one SVG (see `plot`).
    #[arg(long, value_name = "FILE")]
    pub(crate) plot: Option<PathBuf>,
    /// Duration of each long request in the `slow` mode (`/api/slow?ms=N`).
    #[arg(long, default_value_t = 500)]
    pub(crate) slow_ms: u64,
    /// Connections sending long requests in the `slow` mode, on top of `--connections`.
    #[arg(long, default_value_t = 8)]
    pub(crate) slow_connections: usize,
    /// The baton binary [default: `baton` next to this program's `examples/` directory, i.e.
    /// target/release/baton].
    // The flag is spelt out so that it stays the binary's name after scripts/rename.sh.
    #[arg(long = "baton", value_name = "PATH")]
    pub(crate) baton: Option<PathBuf>,
    /// The baseline binary [default: `bare_axum` next to this program].
    #[arg(long, value_name = "PATH")]
    pub(crate) bare: Option<PathBuf>,
    /// Do not run `cargo build --release` for baton and bare_axum first (it only runs when
    /// started by `cargo run`).
    #[arg(long)]
    pub(crate) no_build: bool,
    /// Keep the temporary directory (configuration, state files, `baton.log`) and print its
    /// path; it is always kept when the run fails.
    #[arg(long)]
    pub(crate) keep: bool,
    /// Skip the bare axum baseline.
    #[arg(long)]
    pub(crate) no_baseline: bool,
}

/// A load shape, as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ModeName {
    /// HTTP/1.1 keep-alive on `/`.
    Keepalive,
    /// HTTP/1.1 with `Connection: close` on `/`: a new connection per request.
    Close,
    /// HTTP/2 prior knowledge (h2c) on `/`, one stream at a time per connection.
    H2,
    /// Keep-alive on `/` plus long requests (`/api/slow`) in flight across every event.
    Slow,
}

impl ModeName {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ModeName::Keepalive => "keepalive",
            ModeName::Close => "close",
            ModeName::H2 => "h2",
            ModeName::Slow => "slow",
        }
    }

    /// How the load on `/` talks to the server.
    pub(crate) fn load_mode(self) -> loadgen::Mode {
        match self {
            ModeName::Keepalive | ModeName::Slow => loadgen::Mode::KeepAlive,
            ModeName::Close => loadgen::Mode::Close,
            ModeName::H2 => loadgen::Mode::H2,
        }
    }

    /// Whether the bare axum baseline can be driven the same way. It speaks HTTP/1 only (the
    /// workspace does not enable axum's `http2` feature), and `slow` has no baseline route.
    pub(crate) fn has_baseline(self) -> bool {
        matches!(self, ModeName::Keepalive | ModeName::Close)
    }
}

/// What one mode does.
#[derive(Debug, Clone)]
pub(crate) struct ModePlan {
    pub(crate) name: ModeName,
    pub(crate) connections: usize,
    pub(crate) upgrades: u32,
    pub(crate) reloads: u32,
    /// Length of the steady-state window before the events, and of the one after them.
    pub(crate) steady: Duration,
    /// Planned length of the event phase (it takes longer if the events need it).
    pub(crate) events: Duration,
    /// Long requests in flight, for the `slow` mode.
    pub(crate) slow: Option<SlowPlan>,
    /// Paired rounds against bare axum, and the measured length of each side of a round.
    pub(crate) rounds: u32,
    pub(crate) round: Duration,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct SlowPlan {
    pub(crate) ms: u64,
    pub(crate) connections: usize,
}

impl Options {
    /// Resolves the defaults (which depend on `--short`) into one plan per mode.
    pub(crate) fn plans(&self) -> Vec<ModePlan> {
        let upgrades = self.upgrades.unwrap_or(if self.short { 3 } else { 25 });
        let reloads = self.reloads.unwrap_or(if self.short { 25 } else { 250 });
        let total = self.duration_per_mode.unwrap_or(if self.short {
            Duration::from_secs(6)
        } else {
            Duration::from_secs(40)
        });
        let steady = total.mul_f64(0.15).max(Duration::from_secs(1));
        let rounds = self.rounds.unwrap_or(if self.short { 3 } else { 6 });
        let round = Duration::from_secs(if self.short { 1 } else { 2 });
        let events = total.saturating_sub(steady * 2);
        let mut modes = self.modes.clone();
        modes.dedup();
        modes
            .into_iter()
            .map(|name| ModePlan {
                name,
                connections: self.connections.max(1),
                upgrades,
                reloads,
                steady,
                events,
                slow: (name == ModeName::Slow).then_some(SlowPlan {
                    ms: self.slow_ms,
                    connections: self.slow_connections.max(1),
                }),
                rounds: if name.has_baseline() { rounds } else { 0 },
                round,
            })
            .collect()
    }
}
