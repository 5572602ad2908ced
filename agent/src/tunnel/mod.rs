//! The agent's side of the tunnel: one [`session`] per WebSocket connection, one [`stream`]
//! task per request the gateway sends.
//!
//! # Session lifecycle
//! - **Connecting**: upgrade to `/v1/tunnel` with the bearer token; a 401/403 is logged with
//!   the gateway's reason and retried with backoff (the operator may fix the token).
//! - **Registered**: `register` answered by `register_success`; the full route set is sent as
//!   `sync` and heartbeats start. Invariant: every stream in the table has a running task.
//! - **Draining** (the agent is stopping): `drain` sent, so the gateway sends nothing new;
//!   requests already sent are still served. The session closes once its table is empty or at
//!   `--drain-timeout`, the close queued behind the last frames, then reads until the gateway's
//!   close so no unread input resets the connection (ADR 0006).
//! - **Closed**: socket error, gateway silent for three heartbeat intervals, `drain` from the
//!   gateway, or the end of draining. Every stream task still running is aborted (which drops
//!   its upstream request); the caller reconnects with backoff, rotating through the gateway
//!   URLs.

mod dial;
mod head;
mod pipe;
pub mod session;
pub mod stream;

pub use dial::{Place, tunnel_url};

/// How a session ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The agent is shutting down.
    Shutdown,
    /// The gateway asked the agent to reconnect elsewhere.
    Drain,
}

/// Why a session failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("gateway refused the connection: {status} {body}")]
    Refused { status: u16, body: String },
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("registration failed: {0}")]
    Register(String),
    #[error("tunnel lost: {0}")]
    Lost(String),
    #[error(
        "node {0} already carries another tunnel of this agent; dialling again for another node"
    )]
    Duplicate(String),
}
