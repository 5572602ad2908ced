//! A proxied WebSocket session, once the upstream answered 101: the client's socket on one
//! side, WS_* frames on the tunnel stream on the other, each message one frame under the
//! stream's credit.

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason};
use bytes::Bytes;
use futures_util::StreamExt;
use tunnelgate_mux::{Item, Outbox, PipeReader, WsMsg};
use tunnelgate_proto::StreamId;
use tunnelgate_proto::control::ProxyResponse;
use tunnelgate_proto::limits::MAX_FRAME_PAYLOAD;

use crate::error::ProxyError;
use crate::tunnel::StreamShared;

/// Largest WebSocket message proxied: one message travels as one frame.
pub const MAX_WS_MESSAGE: usize = MAX_FRAME_PAYLOAD;

/// Answers the client's upgrade and starts moving messages both ways.
pub fn bridge(
    req: &HttpRequest,
    payload: web::Payload,
    head: &ProxyResponse,
    id: StreamId,
    from_upstream: PipeReader<WsMsg>,
    shared: Arc<StreamShared>,
    outbox: Outbox,
) -> Result<HttpResponse, ProxyError> {
    let protocol = head
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-protocol"))
        .map(|(_, v)| v.clone());
    let protocols: Vec<&str> = protocol.as_deref().into_iter().collect();
    let (response, mut session, stream) = actix_ws::handle_with_protocols(req, payload, &protocols)
        .map_err(|e| ProxyError::BadRequest(format!("WebSocket upgrade: {e}").into()))?;
    let mut client = stream
        .max_frame_size(MAX_WS_MESSAGE)
        .aggregate_continuations()
        .max_continuation_size(MAX_WS_MESSAGE);
    let mut pong = session.clone();
    // Client → upstream.
    actix_rt::spawn(async move {
        let mut closed = false;
        while let Some(m) = client.next().await {
            let msg = match m {
                Ok(AggregatedMessage::Text(t)) => WsMsg::Text(t.into_bytes()),
                Ok(AggregatedMessage::Binary(b)) => WsMsg::Binary(b),
                Ok(AggregatedMessage::Ping(p)) => {
                    let _ = pong.pong(&p).await;
                    continue;
                }
                Ok(AggregatedMessage::Pong(_)) => continue,
                Ok(AggregatedMessage::Close(r)) => {
                    let (code, reason) = r.map_or((1000, Bytes::new()), |r| {
                        (
                            u16::from(r.code),
                            Bytes::from(r.description.unwrap_or_default()),
                        )
                    });
                    closed = true;
                    WsMsg::Close(code, reason)
                }
                Err(e) => {
                    tracing::debug!(stream = id, error = %e, "client WebSocket failed");
                    closed = true;
                    // 1009: too big; 1002: protocol error.
                    let code = if e.to_string().contains("too big") {
                        1009
                    } else {
                        1002
                    };
                    WsMsg::Close(code, Bytes::new())
                }
            };
            let done = closed;
            if shared.credit.acquire(msg.cost()).await.is_err()
                || outbox.send_frame(&msg.to_frame(id)).await.is_err()
            {
                return;
            }
            if done {
                return;
            }
        }
        if !closed {
            // The client vanished without a close: tell the upstream it went away.
            let msg = WsMsg::Close(1001, Bytes::new());
            if shared.credit.acquire(msg.cost()).await.is_ok() {
                let _ = outbox.send_frame(&msg.to_frame(id)).await;
            }
        }
    });
    // Upstream → client.
    actix_rt::spawn(async move {
        let mut from_upstream = from_upstream;
        while let Some(Ok(m)) = from_upstream.next().await {
            let sent = match m {
                WsMsg::Text(b) => match bytestring::ByteString::try_from(b) {
                    Ok(s) => session.text(s).await,
                    Err(_) => {
                        let _ = session
                            .close(Some(CloseReason {
                                code: CloseCode::Invalid,
                                description: Some("upstream sent invalid UTF-8".into()),
                            }))
                            .await;
                        return;
                    }
                },
                WsMsg::Binary(b) => session.binary(b).await,
                WsMsg::Close(code, reason) => {
                    let _ = session
                        .close(Some(CloseReason {
                            code: CloseCode::from(code),
                            description: Some(String::from_utf8_lossy(&reason).into_owned())
                                .filter(|s| !s.is_empty()),
                        }))
                        .await;
                    return;
                }
            };
            if sent.is_err() {
                return;
            }
        }
        let _ = session
            .close(Some(CloseReason::from(CloseCode::Away)))
            .await;
    });
    Ok(response)
}
