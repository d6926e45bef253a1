//! What the application hands from one generation to the next (see `lifecycle::Carry`): every
//! counter and histogram of `/metrics`, so they never go back at an upgrade, and the TLS
//! session-ticket keys, so sessions resume across it (the new generation reads those before it
//! builds its TLS, see `tls::Tls::build`). Add a kind here for anything else that must outlive
//! the process but not be written to disk.

use crate::lifecycle::{Carry, Inherited, Moment, UPGRADES};

use super::AppState;

/// The request-duration histograms (and so the request totals), by route and class.
const REQUESTS: &str = "request_durations";
const RELOADS: &str = "reloads";
/// Drain durations and cut connections: known only once a generation has drained, so they
/// reach the next one in the final batch.
const DRAINS: &str = "drains";
/// Connections rejected and closed by the `[limits]`.
const LIMITS: &str = "connection_limits";

/// The application's side of the handover.
#[derive(Debug)]
pub struct AppCarry {
    state: AppState,
}

impl AppCarry {
    /// Takes what the previous generation handed over at the start, and carries from here on.
    pub fn new(state: AppState, inherited: &Inherited) -> AppCarry {
        let carry = AppCarry { state };
        for kind in [REQUESTS, RELOADS, DRAINS, LIMITS, UPGRADES] {
            if let Some(payload) = inherited.get(kind) {
                carry.import(kind, payload);
            }
        }
        carry
    }
}

impl Carry for AppCarry {
    fn export(&self, moment: Moment) -> Vec<(String, String)> {
        let carried = self.state.metrics().carried();
        let mut items = vec![
            (REQUESTS.to_owned(), carried.export_requests()),
            (
                RELOADS.to_owned(),
                carried.export_reloads(self.state.settings()),
            ),
            (DRAINS.to_owned(), carried.export_drains()),
            (LIMITS.to_owned(), carried.export_limits()),
            (UPGRADES.to_owned(), carried.export_upgrades()),
        ];
        // Only the start batch matters for the keys: the next generation builds its TLS with
        // them before it serves.
        if let (Moment::Start, Some(tls)) = (moment, self.state.tls()) {
            items.push(tls.export_ticket_keys());
        }
        items
    }

    fn import(&self, kind: &str, payload: &str) {
        let carried = self.state.metrics().carried();
        match kind {
            REQUESTS => carried.adopt_requests(payload),
            RELOADS => carried.adopt_reloads(payload),
            DRAINS => carried.adopt_drains(payload),
            LIMITS => carried.adopt_limits(payload),
            UPGRADES => carried.adopt_upgrades(payload),
            // Read from the start batch by `Tls::build`; a final batch never has them.
            crate::tls::TICKET_KEYS => {}
            other => tracing::debug!(
                kind = other,
                "ignoring state the previous generation handed over"
            ),
        }
    }
}
