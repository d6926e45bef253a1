//! The well-behaved clients during an attack: `GET /` on the public listener and
//! `GET /-/status` on the admin listener, each every 100 ms on a new connection, and the
//! serving process sampled (memory, fds, CPU) at the same pace.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::target::Sample;

pub(crate) const EVERY: Duration = Duration::from_millis(100);
/// A probe that takes longer has failed: a user would have given up.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Probe results of one listener.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tally {
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    pub(crate) first_failure: Option<String>,
}

impl Tally {
    fn record(&mut self, result: Result<u16, String>, accept: impl Fn(u16) -> bool) {
        match result {
            Ok(status) if accept(status) => self.ok += 1,
            Ok(status) => self.fail(format!("status {status}")),
            Err(err) => self.fail(err),
        }
    }

    fn fail(&mut self, why: String) {
        self.failed += 1;
        self.first_failure.get_or_insert(why);
    }

    /// Failed share, as a percentage.
    pub(crate) fn failed_pct(&self) -> f64 {
        let all = self.ok + self.failed;
        if all == 0 {
            return 0.0;
        }
        100.0 * self.failed as f64 / all as f64
    }
}

/// What the probes and the sampler saw during one attack.
#[derive(Debug, Clone, Default)]
pub(crate) struct Watched {
    pub(crate) public: Tally,
    pub(crate) admin: Tally,
    pub(crate) rss_peak_kib: u64,
    pub(crate) fds_peak: usize,
    pub(crate) first: Option<Sample>,
    pub(crate) last: Option<Sample>,
    /// Summed over the processes sampled (an upgrade changes the pid).
    pub(crate) cpu_ticks: u64,
    pub(crate) seconds: f64,
}

/// Probes and samples until stopped.
#[derive(Debug)]
pub(crate) struct Watch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Watched>,
}

impl Watch {
    /// Starts probing `http` and `admin`, sampling the process the pid file names (`pid`).
    pub(crate) fn start(
        http: SocketAddr,
        admin: SocketAddr,
        pid: impl Fn() -> Option<u32> + Send + 'static,
    ) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        // HOSTILE_TRACE=1 prints every probe's result, to see when a listener failed.
        let trace = std::env::var_os("HOSTILE_TRACE").is_some();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut watched = Watched::default();
            let mut cpu_of: Option<(u32, u64)> = None;
            let mut tick = tokio::time::interval(EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stopped.load(Ordering::Relaxed) {
                tick.tick().await;
                let (public, admin) = tokio::join!(get(http, "/"), get(admin, "/-/status"));
                if trace {
                    let at = started.elapsed().as_secs_f64();
                    eprintln!("hostile: {at:6.2} s: public {public:?}, admin {admin:?}");
                }
                watched.public.record(public, |s| s == 200);
                watched.admin.record(admin, |s| s == 200);
                if let Some(pid) = pid()
                    && let Some(sample) = Sample::of(pid)
                {
                    watched.rss_peak_kib = watched.rss_peak_kib.max(sample.rss_kib);
                    watched.fds_peak = watched.fds_peak.max(sample.fds);
                    watched.first.get_or_insert(sample);
                    watched.last = Some(sample);
                    match cpu_of {
                        Some((same, ticks)) if same == pid => {
                            watched.cpu_ticks += sample.cpu_ticks.saturating_sub(ticks);
                        }
                        _ => {}
                    }
                    cpu_of = Some((pid, sample.cpu_ticks));
                }
            }
            watched.seconds = started.elapsed().as_secs_f64();
            watched
        });
        Watch { stop, task }
    }

    pub(crate) async fn stop(self) -> Watched {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

async fn get(addr: SocketAddr, path: &str) -> Result<u16, String> {
    loadgen::get_with_timeout(addr, path, PROBE_TIMEOUT)
        .await
        .map(|response| response.status)
        .map_err(|failure| failure.to_string())
}
