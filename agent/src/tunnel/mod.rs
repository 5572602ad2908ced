//! The agent's side of the tunnel: one [`session`] per WebSocket connection, one [`stream`]
//! task per request the gateway sends.
//!
//! # Session lifecycle
//! - **Connecting**: upgrade to `/v1/tunnel` with the bearer token; a 401/403 is logged with
//!   the gateway's reason and retried with backoff (the operator may fix the token).
//! - **Registered**: `register` answered by `register_success`; the full route set is sent as
//!   `sync` and heartbeats start. Invariant: every stream in the table has a running task.
//! - **Closed**: socket error, gateway silent for three heartbeat intervals, `drain`, or
//!   shutdown. Every stream task is aborted (which drops its upstream request); the caller
//!   reconnects with backoff, rotating through the gateway URLs.

pub mod session;
pub mod stream;
pub mod websocket;
