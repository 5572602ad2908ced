//! Agent tunnels on this node: the WebSocket endpoint, one [`TunnelActor`] per agent
//! connection, one stream task per proxied request, and the [`Hub`] of live tunnels.
//!
//! # Tunnel lifecycle
//! - **Accepted**: the bearer token named a cluster (else 401) that agrees with the cluster the
//!   agent claims (else 403); the upgrade is done, the actor runs, nothing is registered.
//! - **Registered**: the agent sent `register`; the tunnel is in the hub and takes streams.
//!   Invariant: every stream in the actor's table has an id below `next_stream`, and its head
//!   is resolved at most once.
//! - **Draining**: the agent sent `drain` (it is stopping). The tunnel leaves the hub and gives
//!   up its lease; new streams are refused before anything is sent (the proxy tries the
//!   cluster's next tunnel); streams in flight finish (ADR 0006).
//! - **Closed**: socket closed, protocol error, heartbeats missed for three intervals, or a
//!   data-path probe unanswered (the agent is wedged: [`probe`]). The
//!   tunnel leaves the hub; every open stream is failed (a client waiting for a head gets 502,
//!   one reading a body sees it cut), so no request hangs.
//!
//! # Stream lifecycle
//! - **Open**: id allocated, `proxy_request` queued, upload pumping under send credit.
//! - **Headed**: the agent's `proxy_response` resolved the head; body DATA flows into the
//!   stream's pipe, bounded by the window.
//! - **Done**: the client's body reader was dropped (complete or client gone), a timeout fired,
//!   or the tunnel closed. The tunnel removes the stream; if either side had not finished, a
//!   RESET tells the agent to stop.

mod endpoint;
mod head;
mod hub;
pub mod limits;
mod open;
mod opener;
mod probe;
mod register;
mod routes;
mod stream;
#[cfg(test)]
mod test_support;
mod tunnel_actor;
mod ws;

pub use endpoint::{accept, accept_key, accept_raw};
pub use endpoint::{refuse, throttled};
pub use head::Head;
pub use hub::{Hub, MoveAway, Revoked, TunnelRef};
pub use open::{OpenError, Opened, Outcome, StreamGone, StreamShared, Streams};
pub use opener::{Gone, Opener};
pub use stream::{BodySource, Started, payload_body, pipe_body, start_stream, wait_head};
pub use tunnel_actor::{TunnelActor, next_link_id};
pub use ws::{WsIn, from_actix, from_link, to_actix};
