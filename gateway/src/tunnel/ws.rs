//! The WebSocket messages of a link as its actor reads them and writes them, whichever
//! library carried them (actix-ws behind actix-http; the own framing of `mux::ws` on the own
//! front's agent tunnels; tungstenite on the dialling end of peer links).

use actix_ws::{AggregatedMessage, CloseCode, CloseReason, ProtocolError};
use tokio_tungstenite::tungstenite;
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

/// Outgoing messages as tungstenite messages, for [`write_loop`](tunnelgate_mux::write_loop).
pub fn to_tungstenite(m: Outgoing) -> tungstenite::Message {
    match m {
        Outgoing::Text(s) => tungstenite::Message::Text(s.into()),
        Outgoing::Binary(b) => tungstenite::Message::Binary(b),
        Outgoing::Frame(f) => tungstenite::Message::Binary(f.to_bytes()),
        Outgoing::Close { code, reason } => {
            tungstenite::Message::Close(Some(tungstenite::protocol::CloseFrame {
                code: code.into(),
                reason: within_close_limit(reason).into(),
            }))
        }
    }
}

/// A close reason cut to the 123 bytes a close frame can carry (RFC 6455 §5.5), at a
/// character boundary: tungstenite refuses to send a longer one, and the peer would then see
/// no close frame at all.
fn within_close_limit(mut reason: String) -> String {
    const MAX: usize = 123;
    if reason.len() > MAX {
        let mut end = MAX;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
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

/// Incoming tungstenite messages as a link's actor reads them.
pub fn from_tungstenite(m: Result<tungstenite::Message, tungstenite::Error>) -> WsIn {
    match m {
        Ok(tungstenite::Message::Text(t)) => WsIn::Text(t.to_string()),
        Ok(tungstenite::Message::Binary(b)) => WsIn::Binary(b),
        Ok(tungstenite::Message::Close(c)) => WsIn::Close(c.map(|c| c.reason.to_string())),
        Ok(_) => WsIn::Other,
        Err(e) => WsIn::Error(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn close_reasons_fit_a_close_frame() {
        let long = "ü".repeat(100);
        let cut = super::within_close_limit(long);
        assert!(cut.len() <= 123 && cut.len() >= 121, "{}", cut.len());
        assert_eq!(super::within_close_limit("short".into()), "short");
    }
}
