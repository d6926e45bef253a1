//! `GET /api/ws`: a WebSocket echo (text in, the same text out; binary likewise), and the
//! pattern for a WebSocket of your own: a long-lived response (see `app`'s docs) that tells
//! its client to move when the drain begins.
//!
//! The contract with clients, at an upgrade or a shutdown:
//! - the server sends Close with code 1001 (Going Away) and a reason that says to reconnect;
//!   every message it read before then has been answered;
//! - messages that cross the close are not answered (RFC 6455 allows no data after a Close):
//!   the client sends what got no answer again, on its new connection;
//! - the client answers the Close (tungstenite-based clients do it by reading on) and
//!   reconnects, with a short jittered back-off, to the same address: the next generation
//!   holds the same socket. `examples/ws_client.rs` is such a client;
//! - a client that never answers the Close is cut at `lifecycle.shutdown_timeout`, and
//!   counted in the draining process's log.
//!
//! A socket open for `limits.stream_lifetime` is told the same (1001, reconnect) while the
//! process keeps serving; a client that does not answer that Close within
//! `limits.send_timeout` is cut.

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::Response;
use std::time::Duration;

use crate::app::state::AppState;
use crate::lifecycle::{LongLived, WrapUp};

/// The reason sent with the Close 1001 (at most 123 bytes): what the client should do.
pub(crate) const GOING_AWAY_REASON: &str = "server restarting; reconnect";
/// An echo has no use for axum's 64 MiB default: a client cannot make the server buffer more
/// than this per message.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

pub(crate) async fn upgrade(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    // Taken here, while the handshake's connection still holds the drain back, and moved into
    // the socket's task, which outlives that connection.
    let lease = state.long_lived();
    let close_bound = state.settings().current().limits.send_timeout;
    ws.max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| echo(socket, lease, close_bound))
}

async fn echo(mut socket: WebSocket, lease: LongLived, close_bound: Duration) {
    let why = loop {
        let message = tokio::select! {
            // The drain first: a client that never stops sending must not hold the close back.
            // A message being answered is finished before the select runs again.
            biased;
            why = lease.wrap_up() => break why,
            message = socket.recv() => message,
        };
        let reply = match message {
            Some(Ok(Message::Text(text))) => Message::Text(text),
            Some(Ok(Message::Binary(bytes))) => Message::Binary(bytes),
            // tungstenite answers pings itself, and a Close too: its answer goes out with the
            // next read, after which the stream ends (`None`).
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_))) => continue,
            Some(Err(_)) | None => return,
        };
        if socket.send(reply).await.is_err() {
            return;
        }
    };
    if why == WrapUp::Draining {
        // The hammer bounds the closing handshake of a drain, and counts what it cuts.
        going_away(socket).await;
    } else {
        let _ = tokio::time::timeout(close_bound, going_away(socket)).await;
    }
    // `lease` drops last: the drain stops waiting for this socket once it is closed.
    drop(lease);
}

/// Close 1001, then the closing handshake: read until the client's Close, without answering
/// (no data may follow a Close). The caller bounds it.
async fn going_away(mut socket: WebSocket) {
    let close = Message::Close(Some(CloseFrame {
        code: close_code::AWAY,
        reason: GOING_AWAY_REASON.into(),
    }));
    if socket.send(close).await.is_err() {
        return;
    }
    while let Some(Ok(message)) = socket.recv().await {
        if matches!(message, Message::Close(_)) {
            break;
        }
    }
}
