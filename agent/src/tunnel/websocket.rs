//! A proxied WebSocket session on the agent: opens a WebSocket to the upstream, answers the
//! gateway with 101, then moves messages both ways, one WS_* frame per message, under the
//! stream's credit.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tunnelgate_mux::{Item, Outbox, PipeReader, SendCredit, WsMsg};
use tunnelgate_proto::control::{ProxyError, ProxyErrorKind, ProxyRequest, ProxyResponse};
use tunnelgate_proto::limits::MAX_FRAME_PAYLOAD;
use tunnelgate_proto::{Control, Frame};

use crate::upstream::Rules;

/// Request headers that belong to one WebSocket handshake, not to the session.
const PER_HOP: &[&str] = &[
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "content-length",
    "transfer-encoding",
];

pub struct WsTask {
    pub request: ProxyRequest,
    pub from_gateway: PipeReader<WsMsg>,
    pub credit: Arc<SendCredit>,
    pub outbox: Outbox,
    pub rules: Arc<Rules>,
}

impl WsTask {
    async fn fail(&self, kind: ProxyErrorKind, message: String) {
        tracing::warn!(stream = self.request.stream_id, host = %self.request.host, error = %message, "upstream WebSocket failed");
        let msg = Control::ProxyError(ProxyError {
            stream_id: self.request.stream_id,
            kind,
            message,
        });
        let _ = self.outbox.send_control(&msg).await;
    }

    pub async fn run(self) {
        let r = &self.request;
        let id = r.stream_id;
        let Some(target) = self.rules.find(&r.host, &r.path) else {
            return self
                .fail(
                    ProxyErrorKind::NoRoute,
                    format!("no rule for {}{}", r.host, r.path),
                )
                .await;
        };
        let url = match super::stream::upstream_uri(
            "ws",
            &target.authority,
            &r.method,
            &r.path,
            r.query.as_deref(),
        ) {
            Ok(u) => u,
            Err(e) => return self.fail(ProxyErrorKind::UpstreamFailed, e).await,
        };
        let mut req = match url.into_client_request() {
            Ok(req) => req,
            Err(e) => {
                return self
                    .fail(ProxyErrorKind::UpstreamFailed, e.to_string())
                    .await;
            }
        };
        for (name, value) in &r.headers {
            let lower = name.to_ascii_lowercase();
            if PER_HOP.contains(&lower.as_str()) {
                continue;
            }
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(lower.as_bytes()),
                http::HeaderValue::from_str(value),
            ) {
                req.headers_mut().append(n, v);
            }
        }
        let cfg = WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME_PAYLOAD))
            .max_frame_size(Some(MAX_FRAME_PAYLOAD));
        let (ws, resp) = match tokio_tungstenite::connect_async_with_config(req, Some(cfg), true)
            .await
        {
            Ok(ok) => ok,
            Err(tungstenite::Error::Http(resp)) => {
                // The upstream answered the upgrade with a plain response: pass it on.
                let body = resp.body().clone().unwrap_or_default();
                let head = Control::ProxyResponse(ProxyResponse {
                    stream_id: id,
                    status: resp.status().as_u16(),
                    headers: header_list(resp.headers()),
                    body: !body.is_empty(),
                });
                if self.outbox.send_control(&head).await.is_ok() && !body.is_empty() {
                    for piece in body.chunks(MAX_FRAME_PAYLOAD) {
                        let data = Bytes::copy_from_slice(piece);
                        if self.credit.acquire(data.len()).await.is_err()
                            || self
                                .outbox
                                .send_frame(&Frame::Data { stream: id, data })
                                .await
                                .is_err()
                        {
                            return;
                        }
                    }
                    let _ = self.outbox.send_frame(&Frame::End { stream: id }).await;
                }
                return;
            }
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return self
                    .fail(ProxyErrorKind::UpstreamRefused, e.to_string())
                    .await;
            }
            Err(e) => {
                return self
                    .fail(ProxyErrorKind::UpstreamFailed, e.to_string())
                    .await;
            }
        };
        let headers = header_list(resp.headers())
            .into_iter()
            .filter(|(n, _)| n == "sec-websocket-protocol")
            .collect();
        let head = Control::ProxyResponse(ProxyResponse {
            stream_id: id,
            status: 101,
            headers,
            body: false,
        });
        if self.outbox.send_control(&head).await.is_err() {
            return;
        }
        let (mut sink, mut stream) = ws.split();
        let (credit, outbox, mut from_gateway) = (self.credit, self.outbox, self.from_gateway);
        let upstream_to_gateway = async {
            while let Some(m) = stream.next().await {
                let msg = match m {
                    Ok(Message::Text(t)) => WsMsg::Text(Bytes::from(t)),
                    Ok(Message::Binary(b)) => WsMsg::Binary(b),
                    Ok(Message::Close(c)) => {
                        let (code, reason) = c.map_or((1000, Bytes::new()), |c| {
                            (u16::from(c.code), Bytes::from(c.reason))
                        });
                        WsMsg::Close(code, reason)
                    }
                    Ok(_) => continue,
                    Err(_) => WsMsg::Close(1011, Bytes::from_static(b"upstream failed")),
                };
                let last = matches!(msg, WsMsg::Close(..));
                if credit.acquire(msg.cost()).await.is_err()
                    || outbox.send_frame(&msg.to_frame(id)).await.is_err()
                    || last
                {
                    return;
                }
            }
        };
        let gateway_to_upstream = async {
            while let Some(Ok(m)) = from_gateway.next().await {
                let (msg, last) = match m {
                    WsMsg::Text(b) => match tungstenite::Utf8Bytes::try_from(b) {
                        Ok(t) => (Message::Text(t), false),
                        Err(_) => (Message::Close(None), true),
                    },
                    WsMsg::Binary(b) => (Message::Binary(b), false),
                    WsMsg::Close(code, reason) => (
                        Message::Close(Some(CloseFrame {
                            code: code.into(),
                            reason: String::from_utf8_lossy(&reason).into_owned().into(),
                        })),
                        true,
                    ),
                };
                if sink.send(msg).await.is_err() || last {
                    return;
                }
            }
        };
        futures_util::future::join(upstream_to_gateway, gateway_to_upstream).await;
    }
}

fn header_list(h: &http::HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}
