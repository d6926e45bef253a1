//! What `/metrics` reads at scrape time: the carried totals (requests, drains, upgrades,
//! reloads, connections the `[limits]` closed) and the gauges of this process, taken from the lifecycle and settings state
//! rather than copied, so each fact lives in one place.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Unit;
use serde::{Deserialize, Serialize};

use super::histogram::{DRAIN_BOUNDS, Histogram, Snapshot};
use super::requests::{CLASSES, Requests};
use crate::lifecycle::{CloseReason, ProcessState, UpgradeCounts, Wire};
use crate::settings::{ReloadOutcome, SettingsStore};

/// The totals that cross to the next generation, each as this process's own count plus what
/// the previous generations handed over.
#[derive(Debug)]
pub(crate) struct Carried {
    process: ProcessState,
    pub(super) requests: Requests,
    /// Drain durations: the previous generations' (inherited), and this process's own once
    /// it has drained (see [`Carried::sync_drains`]).
    drains: Histogram,
    drain_cut: AtomicU64,
    drain_cut_long_lived: AtomicU64,
    /// The last of this process's drains already counted in `drains`.
    drains_seen: Mutex<u64>,
    inherited_upgrades: [AtomicU64; 4],
    inherited_reloads: [AtomicU64; 2],
    inherited_drain_cut: AtomicU64,
    inherited_drain_cut_long_lived: AtomicU64,
    inherited_rejected: AtomicU64,
    /// By [`CloseReason`], in the order of `CloseReason::ALL`.
    inherited_closed: [AtomicU64; CloseReason::ALL.len()],
}

/// Drains and reloads as they cross (upgrades cross as [`UpgradeCounts`]).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Drains {
    histogram: Snapshot,
    cut: u64,
    #[serde(default)]
    cut_long_lived: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Reloads {
    ok: u64,
    failed: u64,
}

/// What the connection bounds did (`lifecycle::LimitCounters`), as it crosses: the reasons by
/// their label, so a generation that knows a reason fewer or more still reads the rest.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Limits {
    rejected: u64,
    #[serde(default)]
    closed: BTreeMap<String, u64>,
}

impl Carried {
    pub(super) fn new(process: ProcessState) -> Carried {
        Carried {
            process,
            requests: Requests::new(),
            drains: Histogram::new(DRAIN_BOUNDS),
            drain_cut: AtomicU64::new(0),
            drain_cut_long_lived: AtomicU64::new(0),
            drains_seen: Mutex::new(0),
            inherited_upgrades: Default::default(),
            inherited_reloads: Default::default(),
            inherited_drain_cut: AtomicU64::new(0),
            inherited_drain_cut_long_lived: AtomicU64::new(0),
            inherited_rejected: AtomicU64::new(0),
            inherited_closed: Default::default(),
        }
    }

    /// Counts this process's last drain, once.
    fn sync_drains(&self) {
        let Some(drain) = self.process.last_drain() else {
            return;
        };
        let mut seen = self
            .drains_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if drain.seq > *seen {
            *seen = drain.seq;
            self.drains.observe(Duration::from_millis(drain.total_ms));
            self.drain_cut
                .fetch_add(drain.cut as u64, Ordering::Relaxed);
            self.drain_cut_long_lived
                .fetch_add(drain.cut_long_lived as u64, Ordering::Relaxed);
        }
    }

    pub(super) fn upgrades(&self) -> UpgradeCounts {
        let own = self.process.upgrade_counts();
        let [ok, failed, refused, rolled_back] = self.inherited_upgrades.each_ref().map(load);
        UpgradeCounts {
            ok: own.ok + ok,
            failed: own.failed + failed,
            refused: own.refused + refused,
            rolled_back: own.rolled_back + rolled_back,
        }
    }

    fn reloads(&self, settings: &SettingsStore) -> Reloads {
        let [ok, failed] = self.inherited_reloads.each_ref().map(load);
        Reloads {
            ok: settings.reloads_ok() + ok,
            failed: settings.reloads_failed() + failed,
        }
    }

    fn rejected(&self) -> u64 {
        self.process.limit_counters().rejected() + load(&self.inherited_rejected)
    }

    fn closed(&self, reason: CloseReason) -> u64 {
        self.process.limit_counters().closed(reason) + load(&self.inherited_closed[reason as usize])
    }

    fn drains(&self) -> Drains {
        self.sync_drains();
        Drains {
            histogram: self.drains.snapshot(),
            cut: load(&self.drain_cut) + load(&self.inherited_drain_cut),
            cut_long_lived: load(&self.drain_cut_long_lived)
                + load(&self.inherited_drain_cut_long_lived),
        }
    }

    pub(crate) fn export_requests(&self) -> String {
        self.requests.export()
    }

    pub(crate) fn export_upgrades(&self) -> String {
        serde_json::to_string(&self.upgrades()).unwrap_or_default()
    }

    pub(crate) fn export_reloads(&self, settings: &SettingsStore) -> String {
        serde_json::to_string(&self.reloads(settings)).unwrap_or_default()
    }

    pub(crate) fn export_drains(&self) -> String {
        serde_json::to_string(&self.drains()).unwrap_or_default()
    }

    pub(crate) fn export_limits(&self) -> String {
        let limits = Limits {
            rejected: self.rejected(),
            closed: CloseReason::ALL
                .iter()
                .map(|&reason| (reason.label().to_owned(), self.closed(reason)))
                .collect(),
        };
        serde_json::to_string(&limits).unwrap_or_default()
    }

    pub(crate) fn adopt_requests(&self, payload: &str) {
        self.requests.adopt(payload);
    }

    /// Upgrade counts from the previous generation, or from the supervisor (its current
    /// worker has none of its own): each report is cumulative, so the larger count wins.
    pub(crate) fn adopt_upgrades(&self, payload: &str) {
        let Some(c) = parse::<UpgradeCounts>(payload, "upgrade counts") else {
            return;
        };
        for (slot, value) in
            self.inherited_upgrades
                .iter()
                .zip([c.ok, c.failed, c.refused, c.rolled_back])
        {
            slot.fetch_max(value, Ordering::Relaxed);
        }
    }

    pub(crate) fn adopt_reloads(&self, payload: &str) {
        let Some(r) = parse::<Reloads>(payload, "reload counts") else {
            return;
        };
        self.inherited_reloads[0].fetch_max(r.ok, Ordering::Relaxed);
        self.inherited_reloads[1].fetch_max(r.failed, Ordering::Relaxed);
    }

    /// Each report is cumulative (the start batch, then the final one), so the larger wins.
    pub(crate) fn adopt_limits(&self, payload: &str) {
        let Some(l) = parse::<Limits>(payload, "connection limit counts") else {
            return;
        };
        self.inherited_rejected
            .fetch_max(l.rejected, Ordering::Relaxed);
        for (slot, reason) in self.inherited_closed.iter().zip(CloseReason::ALL) {
            if let Some(&count) = l.closed.get(reason.label()) {
                slot.fetch_max(count, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn adopt_drains(&self, payload: &str) {
        let Some(d) = parse::<Drains>(payload, "drain figures") else {
            return;
        };
        self.drains.adopt(&d.histogram);
        self.inherited_drain_cut.fetch_max(d.cut, Ordering::Relaxed);
        self.inherited_drain_cut_long_lived
            .fetch_max(d.cut_long_lived, Ordering::Relaxed);
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn parse<T: serde::de::DeserializeOwned>(payload: &str, what: &str) -> Option<T> {
    serde_json::from_str(payload)
        .inspect_err(|err| {
            tracing::warn!(error = %err, "ignoring malformed {what} from the previous generation");
        })
        .ok()
}

/// The registry's view of the process: encoded at each scrape. Help texts end with a period,
/// as `Registry::register` makes them.
#[derive(Debug)]
pub(super) struct Collector {
    pub(super) carried: Arc<Carried>,
    pub(super) settings: Arc<SettingsStore>,
    pub(super) process: ProcessState,
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut out: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let carried = &self.carried;
        let store = &self.settings;
        let process = &self.process;

        gauge(
            &mut out,
            "requests_in_flight",
            "Requests on the public listener whose response has not been produced yet.",
            carried.requests.in_flight(),
        )?;

        let totals = carried.requests.totals_by_class();
        let mut family = out.encode_descriptor(
            "requests",
            "Responses sent by the public listener, by status class, since the first generation.",
            None,
            MetricType::Counter,
        )?;
        for (class, total) in CLASSES.iter().zip(totals) {
            ConstCounter::new(total).encode(family.encode_family(&[("class", *class)])?)?;
        }

        let mut family = out.encode_descriptor(
            "request_duration",
            "Time from the request reaching the router to its response head, by matched route \
             and status class, since the first generation.",
            Some(&Unit::Seconds),
            Histogram::TYPE,
        )?;
        for (route, class, histogram) in carried.requests.series() {
            histogram.encode(family.encode_family(&[("route", &*route), ("class", class)])?)?;
        }

        let reloads = carried.reloads(store);
        let mut family = out.encode_descriptor(
            "reloads",
            "Configuration reloads, by result (unchanged counts as ok), since the first \
             generation.",
            None,
            MetricType::Counter,
        )?;
        for (result, count) in [("ok", reloads.ok), ("failed", reloads.failed)] {
            ConstCounter::new(count).encode(family.encode_family(&[("result", result)])?)?;
        }

        // Healthy until a reload is rejected: a fresh process has nothing to alert on.
        let last_reload_ok = match store.last_reload().map(|record| record.outcome) {
            Some(ReloadOutcome::Rejected { .. }) => 0,
            Some(ReloadOutcome::Applied { .. } | ReloadOutcome::Unchanged { .. }) | None => 1,
        };
        gauge(
            &mut out,
            "last_reload_success",
            "1 if the last reload was applied or unchanged (or none happened yet), 0 if it was \
             rejected.",
            last_reload_ok,
        )?;
        gauge(
            &mut out,
            "config_generation",
            "Configuration generation in force: 1 at start, +1 per applied reload.",
            store.generation(),
        )?;
        gauge(
            &mut out,
            "generation",
            "Binary generation of this process: 1 at a fresh start, +1 per upgrade.",
            process.generation(),
        )?;

        let upgrades = carried.upgrades();
        let mut family = out.encode_descriptor(
            "upgrades",
            "Binary upgrades, by result, since the first generation (in supervised mode, since \
             the supervisor started).",
            None,
            MetricType::Counter,
        )?;
        for (result, count) in [
            ("ok", upgrades.ok),
            ("failed", upgrades.failed),
            ("refused", upgrades.refused),
            ("rolled_back", upgrades.rolled_back),
        ] {
            ConstCounter::new(count).encode(family.encode_family(&[("result", result)])?)?;
        }

        let drains = carried.drains();
        let family = out.encode_descriptor(
            "drain_duration",
            "How long the drains of the previous generations took, from stopping accepting to \
             the last connection closed or cut.",
            Some(&Unit::Seconds),
            Histogram::TYPE,
        )?;
        carried.drains.encode(family)?;
        let family = out.encode_descriptor(
            "drain_cut_connections",
            "Connections cut at the drain deadline (lifecycle.shutdown_timeout), since the first \
             generation.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(drains.cut).encode(family)?;
        let family = out.encode_descriptor(
            "drain_cut_long_lived",
            "Long-lived responses (WebSockets, event streams) cut at the drain deadline, since \
             the first generation.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(drains.cut_long_lived).encode(family)?;

        let open = process.open_connections();
        gauge(
            &mut out,
            "open_connections",
            "Connections open on the public and admin listeners of this process.",
            open,
        )?;
        let http1 = process.open_connections_on(Wire::Http1);
        let http2 = process.open_connections_on(Wire::Http2);
        // Accepted but silent so far: the protocol is known from the first bytes.
        let unknown = open.saturating_sub(http1 + http2);
        // A family of its own: `baton_open_connections` stays the one series it always was.
        let mut family = out.encode_descriptor(
            "open_connections_by_protocol",
            "Connections open on the public and admin listeners of this process, by protocol \
             (unknown: no byte received yet).",
            None,
            MetricType::Gauge,
        )?;
        for (protocol, count) in [
            (Wire::Http1.as_str(), http1),
            (Wire::Http2.as_str(), http2),
            ("unknown", unknown),
        ] {
            ConstGauge::new(count).encode(family.encode_family(&[("protocol", protocol)])?)?;
        }

        gauge(
            &mut out,
            "open_long_lived",
            "Long-lived responses (WebSockets, event streams) in progress in this process.",
            process.open_long_lived(),
        )?;
        let family = out.encode_descriptor(
            "connections_rejected",
            "Connections closed at once because the public listener was at \
             limits.max_connections (or the admin listener at its own cap), since the first \
             generation.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(carried.rejected()).encode(family)?;
        let mut family = out.encode_descriptor(
            "connections_closed",
            "Connections the server closed on its own, by the [limits] bound that closed them, \
             since the first generation.",
            None,
            MetricType::Counter,
        )?;
        for reason in CloseReason::ALL {
            ConstCounter::new(carried.closed(reason))
                .encode(family.encode_family(&[("reason", reason.label())])?)?;
        }

        let start_time = process
            .started_at()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        gauge(
            &mut out,
            "start_time_seconds",
            "Start time of this process, in seconds since the Unix epoch.",
            start_time,
        )
    }
}

pub(super) fn gauge<V>(
    out: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: V,
) -> std::fmt::Result
where
    V: prometheus_client::encoding::EncodeGaugeValue,
{
    let family = out.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(family)
}
