//! What `/metrics` reads at scrape time from the resources the application holds: the database
//! pools and the public listener's TLS. Not carried across upgrades: the gauges describe this
//! process's pools and certificate, and the counters restart with the pools and the acceptor
//! that own them, which Prometheus reads as a counter reset.

use std::sync::Arc;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

use super::collector::gauge;
use crate::database::Db;
use crate::tls::Tls;

#[derive(Debug)]
pub(super) struct Resources {
    pub(super) db: Db,
    pub(super) tls: Option<Arc<Tls>>,
}

impl prometheus_client::collector::Collector for Resources {
    fn encode(&self, mut out: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_database(&mut out)?;
        if let Some(tls) = &self.tls {
            encode_tls(tls, &mut out)?;
        }
        Ok(())
    }
}

impl Resources {
    fn encode_database(&self, out: &mut DescriptorEncoder) -> std::fmt::Result {
        let status = self.db.status();
        let pool = status.pool;
        gauge(
            out,
            "database_up",
            "1 if the last database check (every second) succeeded, else 0.",
            u32::from(status.up),
        )?;
        let mut family = out.encode_descriptor(
            "database_connections",
            "Database connections open, by state.",
            None,
            MetricType::Gauge,
        )?;
        for (state, count) in [
            ("idle", pool.idle),
            ("in_use", pool.open.saturating_sub(pool.idle)),
        ] {
            ConstGauge::new(count).encode(family.encode_family(&[("state", state)])?)?;
        }
        gauge(
            out,
            "database_connections_max",
            "Most database connections the pools may open (database.pool_size, plus SQLite's \
             writer).",
            pool.max,
        )?;
        gauge(
            out,
            "database_acquire_waiting",
            "Requests waiting for a free database connection now.",
            i64::try_from(pool.waiting).unwrap_or(i64::MAX),
        )?;
        let family = out.encode_descriptor(
            "database_acquire_timeouts",
            "Waits for a database connection that ended at database.acquire_timeout (a 503).",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(pool.timeouts).encode(family)
    }
}

fn encode_tls(tls: &Tls, out: &mut DescriptorEncoder) -> std::fmt::Result {
    let certificate = tls.certificate();
    let mut family = out.encode_descriptor(
        "tls_cert_expiry_timestamp",
        "When the certificate served on the public listener expires, since the Unix epoch.",
        Some(&Unit::Seconds),
        MetricType::Gauge,
    )?;
    let expiry = i64::try_from(certificate.not_after_unix()).unwrap_or(i64::MAX);
    ConstGauge::new(expiry).encode(family.encode_family(&[
        ("subject", certificate.subject.as_str()),
        ("serial", certificate.serial.as_str()),
    ])?)?;
    let counts = tls.handshakes();
    let mut family = out.encode_descriptor(
        "tls_handshakes",
        "TLS handshakes completed on the public listener, full or resumed (session ticket).",
        None,
        MetricType::Counter,
    )?;
    for (kind, count) in [("full", counts.full()), ("resumed", counts.resumed())] {
        ConstCounter::new(count).encode(family.encode_family(&[("kind", kind)])?)?;
    }
    let mut family = out.encode_descriptor(
        "tls_handshake_failures",
        "TLS handshakes that failed on the public listener, by reason.",
        None,
        MetricType::Counter,
    )?;
    for (failure, count) in counts.failed() {
        ConstCounter::new(count).encode(family.encode_family(&[("reason", failure.label())])?)?;
    }
    Ok(())
}
