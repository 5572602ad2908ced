//! The WebSocket messages of a link as its actor reads them and writes them, whichever
//! library carried them (actix-ws here; tungstenite on the dialling end of peer links).

use actix_ws::{AggregatedMessage, CloseCode, CloseReason, ProtocolError};
use tunnelgate_mux::Outgoing;

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
        Outgoing::Close { code, reason } => actix_ws::Message::Close(Some(CloseReason {
            code: CloseCode::from(code),
            description: Some(reason),
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
