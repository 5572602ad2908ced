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

pub mod control;
pub mod frame;
pub mod h1;
pub mod limits;
pub mod routes;
pub mod window;

pub use control::{Control, ControlError};

/// The wire protocol version this build speaks. 2: upgraded connections carry raw bytes as
/// DATA (WS_* frames are no longer used). A gateway and an agent of different versions refuse
/// each other at `register` with a message naming both (docs/protocol.md, "Versions").
pub const PROTOCOL_VERSION: u32 = 2;
pub use frame::{DecodeError, Frame, ResetCode, StreamId};
