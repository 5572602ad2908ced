//! The WebSocket messages of a link as its actor reads them and writes them, whichever
//! library carried them (actix-ws behind actix-http; the own framing of `mux::ws` on the own
//! front's agent tunnels and the dialling end of peer links).

use actix_ws::{AggregatedMessage, CloseCode, CloseReason, ProtocolError};
use tunnelgate_mux::Outgoing;
use tunnelgate_mux::ws::{Incoming, WsError};

/// A WebSocket message as a link's actor reads it, whichever library carried it.
#[derive(Debug, actix::Message)]
#[rtype(result = "()")]
pub enum WsIn {
    Text(String),
    Binary(bytes::Bytes),
    Close(Option<String>),
    /// Ping, pong: liveness only.
    Other,
    Error(String),
}

/// Outgoing messages as actix-ws messages, for [`write_loop`].
pub fn to_actix(m: Outgoing) -> actix_ws::Message {
    match m {
        Outgoing::Text(s) => actix_ws::Message::Text(s.into()),
        Outgoing::Binary(b) => actix_ws::Message::Binary(b),
        Outgoing::Frame(f) => actix_ws::Message::Binary(f.to_bytes()),
        Outgoing::Close { code, reason } => actix_ws::Message::Close(Some(CloseReason {
            code: CloseCode::from(code),
            // Cut to what a close frame can carry, or the frame would be invalid.
            description: Some(tunnelgate_mux::ws::within_close_limit(&reason).to_string()),
        })),
    }
}

/// Incoming actix-ws messages as the tunnel actor reads them.
pub fn from_actix(m: Result<AggregatedMessage, ProtocolError>) -> WsIn {
    match m {
        Ok(AggregatedMessage::Text(t)) => WsIn::Text(t.to_string()),
        Ok(AggregatedMessage::Binary(b)) => WsIn::Binary(b),
        Ok(AggregatedMessage::Ping(_) | AggregatedMessage::Pong(_)) => WsIn::Other,
        Ok(AggregatedMessage::Close(r)) => WsIn::Close(r.and_then(|r| r.description)),
        Err(e) => WsIn::Error(e.to_string()),
    }
}

/// Incoming messages of a link's own framing (`mux::ws`) as its actor reads them.
pub fn from_link(m: Result<Incoming, WsError>) -> WsIn {
    match m {
        Ok(Incoming::Text(t)) => WsIn::Text(t),
        Ok(Incoming::Binary(b)) => WsIn::Binary(b),
        Ok(Incoming::Close(c)) => WsIn::Close(c.map(|(_, reason)| reason)),
        Ok(Incoming::Ping(_) | Incoming::Pong) => WsIn::Other,
        Err(e) => WsIn::Error(e.to_string()),
    }
}
