//! Tunnelgate's wire protocol, shared by gateway and agent. It does no I/O and knows no runtime:
//! it turns bytes into typed messages and back, and keeps the arithmetic of flow control.
//!
//! # Layout
//! - [`frame`]: binary data frames `[kind u8][stream_id u32 BE][payload]` and their codec.
//! - [`control`]: JSON control messages, sent as WebSocket text frames `{"type","payload"}`.
//! - [`window`]: per-stream credit accounting (how much a peer may still send).
//! - [`routes`]: route specs, host normalisation and Ingress-style path matching.
//! - [`limits`]: the protocol's sizes and defaults.
//! - [`h1`]: HTTP/1.1 response framing, for ends that carry a response's bytes as they are.
//! - [`head`]: protocol 3's request and response heads as binary frames.

pub mod control;
pub mod frame;
pub mod h1;
pub mod head;
pub mod limits;
pub mod routes;
pub mod window;

pub use control::{Control, ControlError};

/// The wire protocol version this build speaks. 2: upgraded connections carry raw bytes as
/// DATA (WS_* frames are no longer used). 3: a stream's request and response heads travel as
/// binary head frames ([`head`]) instead of JSON `proxy_request`/`proxy_response`, and a small
/// response may come whole in one frame; peer links use them too when both nodes offer 3.
pub const PROTOCOL_VERSION: u32 = 3;
/// The oldest version this build still speaks: a gateway serves agents of
/// `OLDEST_PROTOCOL..=PROTOCOL_VERSION` each in its own version, an agent takes a gateway of
/// any of them; anything else is refused at `register` with both versions named
/// (docs/protocol.md, "Versions").
pub const OLDEST_PROTOCOL: u32 = 2;
pub use frame::{DecodeError, Frame, ResetCode, StreamId};
