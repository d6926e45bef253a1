//! `GET /api/events?interval_ms=N`: Server-Sent Events, a `tick` every N ms, that ends itself
//! when the drain begins: a long-lived response (see `app`'s docs). The client sees a final
//! `draining` event, then the end of the stream, and reconnects (to the new process). At
//! `limits.stream_lifetime` it ends the same way with a `reconnect` event.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use futures_util::stream;
use serde::Deserialize;
use tokio::time::{Interval, MissedTickBehavior};

use crate::app::error::AppError;
use crate::app::extract::AppQuery;
use crate::app::state::AppState;
use crate::lifecycle::{LongLived, WrapUp};

const DEFAULT_INTERVAL_MS: u64 = 1_000;
/// Faster than this is a busy loop over the network, not a demo.
const MIN_INTERVAL_MS: u64 = 10;
const MAX_INTERVAL_MS: u64 = 60_000;

#[derive(Debug, Deserialize)]
pub(crate) struct EventParams {
    interval_ms: Option<u64>,
}

/// What the stream carries from one event to the next.
struct Ticker {
    interval: Interval,
    lease: LongLived,
    sent: u64,
    finished: bool,
}

pub(crate) async fn stream(
    State(state): State<AppState>,
    AppQuery(params): AppQuery<EventParams>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, AppError> {
    let interval_ms = params.interval_ms.unwrap_or(DEFAULT_INTERVAL_MS);
    if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&interval_ms) {
        return Err(AppError::Invalid(format!(
            "interval_ms must be between {MIN_INTERVAL_MS} and {MAX_INTERVAL_MS}, got {interval_ms}"
        )));
    }
    let mut interval = tokio::time::interval(Duration::from_millis(interval_ms));
    // A slow client gets the next tick late rather than a burst of missed ones.
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let ticker = Ticker {
        interval,
        lease: state.long_lived(),
        sent: 0,
        finished: false,
    };
    let events = stream::unfold(ticker, |mut ticker| async move {
        if ticker.finished {
            return None;
        }
        let event = tokio::select! {
            // `biased`: once it is time to wrap up, say so rather than tick again.
            biased;
            why = ticker.lease.wrap_up() => {
                ticker.finished = true;
                match why {
                    WrapUp::Draining => {
                        Event::default().event("draining").data("server is draining; reconnect")
                    }
                    WrapUp::LifetimeOver => {
                        Event::default().event("reconnect").data("stream lifetime reached; reconnect")
                    }
                }
            }
            _ = ticker.interval.tick() => {
                ticker.sent += 1;
                Event::default()
                    .event("tick")
                    .id(ticker.sent.to_string())
                    .data(ticker.sent.to_string())
            }
        };
        Some((Ok(event), ticker))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
