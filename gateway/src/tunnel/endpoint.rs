//! `GET /v1/tunnel`: authenticates an agent before the WebSocket upgrade, then hands the
//! socket to a new [`TunnelActor`] and its writer task.

use std::sync::Arc;

use actix::{Actor, AsyncContext};
use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{CloseCode, CloseReason, Session};
use futures_util::SinkExt;
use tunnelgate_mux::{OutboxRx, Outgoing, outbox};
use tunnelgate_proto::limits::MAX_WS_MESSAGE;

use super::tunnel_actor::TunnelActor;
use crate::AppState;
use crate::config::TUNNEL_OUTBOX_CAPACITY;

/// Header in which an agent may state which cluster it believes it is.
pub const CLUSTER_HEADER: &str = "x-tunnelgate-cluster";

fn refuse(status: actix_web::http::StatusCode, why: &str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/plain; charset=utf-8")
        .body(format!("{}: {why}\n", status.as_u16()))
}

/// Authenticates and upgrades an agent connection.
pub async fn accept(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    use actix_web::http::StatusCode;
    let peer = req.peer_addr();
    let token = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        state.metrics.auth_failure("missing_token");
        tracing::warn!(?peer, "agent refused: no bearer token");
        return refuse(StatusCode::UNAUTHORIZED, "missing bearer token");
    };
    let Some(cluster) = state.registry.authenticate(token) else {
        state.metrics.auth_failure("bad_token");
        tracing::warn!(?peer, "agent refused: unknown token");
        return refuse(StatusCode::UNAUTHORIZED, "invalid agent token");
    };
    if let Some(claimed) = req
        .headers()
        .get(CLUSTER_HEADER)
        .filter(|c| c.as_bytes() != cluster.as_bytes())
    {
        state.metrics.auth_failure("cluster_mismatch");
        let claimed = String::from_utf8_lossy(claimed.as_bytes()).into_owned();
        tracing::warn!(?peer, %cluster, %claimed, "agent refused: token belongs to another cluster");
        return refuse(
            StatusCode::FORBIDDEN,
            &format!("this token does not belong to cluster {claimed:?}"),
        );
    }
    let (response, session, stream) = match actix_ws::handle(&req, payload) {
        Ok(parts) => parts,
        Err(e) => {
            state.metrics.auth_failure("bad_upgrade");
            return refuse(
                StatusCode::BAD_REQUEST,
                &format!("WebSocket upgrade required: {e}"),
            );
        }
    };
    let stream = stream
        .max_frame_size(MAX_WS_MESSAGE)
        .aggregate_continuations()
        .max_continuation_size(MAX_WS_MESSAGE);
    let (out, rx) = outbox(TUNNEL_OUTBOX_CAPACITY);
    actix_rt::spawn(write_loop(session, rx));
    let state = Arc::clone(&state.into_inner());
    TunnelActor::create(move |ctx| {
        ctx.add_stream(stream);
        TunnelActor::new(cluster, peer, out, state)
    });
    response
}

/// The tunnel's single writer: owns the session, so frames leave in queue order.
async fn write_loop(mut session: Session, mut rx: OutboxRx) {
    while let Some(first) = rx.next().await {
        let mut msg = Some(first);
        // Feed what is already queued, then flush once.
        while let Some(m) = msg.take() {
            let sent = match m {
                Outgoing::Text(s) => session.feed(actix_ws::Message::Text(s.into())).await,
                Outgoing::Binary(b) => session.feed(actix_ws::Message::Binary(b)).await,
                Outgoing::Close { code, reason } => {
                    let _ = session
                        .close(Some(CloseReason {
                            code: CloseCode::from(code),
                            description: Some(reason),
                        }))
                        .await;
                    rx.close();
                    return;
                }
            };
            if sent.is_err() {
                rx.close();
                return;
            }
            msg = rx.try_next();
        }
        if session.flush().await.is_err() {
            break;
        }
    }
    rx.close();
    let _ = session.close(None).await;
}
