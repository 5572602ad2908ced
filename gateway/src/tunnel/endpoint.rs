//! `GET /v1/tunnel`: authenticates an agent before the WebSocket upgrade, then hands the
//! socket to a new [`TunnelActor`] and its writer task.

use std::sync::Arc;

use actix::{Actor, AsyncContext};
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use tunnelgate_mux::{outbox, write_loop};
use tunnelgate_proto::limits::MAX_WS_MESSAGE;

use super::tunnel_actor::TunnelActor;
use super::ws::{from_actix, to_actix};
use crate::AppState;
use crate::config::TUNNEL_OUTBOX_CAPACITY;

/// Header in which an agent may state which cluster it believes it is.
pub const CLUSTER_HEADER: &str = "x-tunnelgate-cluster";

/// A refusal before any upgrade: status and a one-line reason.
pub fn refuse(status: actix_web::http::StatusCode, why: &str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/plain; charset=utf-8")
        .body(format!("{}: {why}\n", status.as_u16()))
}

/// 429 for a source refused after too many failed authentications.
pub fn throttled(wait_secs: u64) -> HttpResponse {
    let mut r = refuse(
        actix_web::http::StatusCode::TOO_MANY_REQUESTS,
        "too many failed authentications from this address; retry later",
    );
    crate::guard::set_retry_after(&mut r, wait_secs);
    r
}

/// Authenticates and upgrades an agent connection.
pub async fn accept(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    use actix_web::http::StatusCode;
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        let mut r = refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "this gateway node is shutting down; connect to another",
        );
        crate::guard::set_retry_after(&mut r, 1);
        return r;
    }
    let peer = req.peer_addr();
    let ip = peer.map(|p| p.ip());
    if let Err(wait) = state.auth_guard.check(ip) {
        state.metrics.auth_failure("throttled");
        return throttled(wait);
    }
    let Some(token) = crate::guard::bearer_token(&req) else {
        state.metrics.auth_failure("missing_token");
        tracing::warn!(?peer, "agent refused: no bearer token");
        if let Err(wait) = state.auth_guard.failed(ip) {
            tracing::warn!(
                ?peer,
                seconds = wait,
                "too many failed authentications: source refused for a while"
            );
        }
        return refuse(StatusCode::UNAUTHORIZED, "missing bearer token");
    };
    let Some((cluster, token_id)) = state.registry.authenticate(token) else {
        state.metrics.auth_failure("bad_token");
        tracing::warn!(?peer, "agent refused: unknown token");
        if let Err(wait) = state.auth_guard.failed(ip) {
            tracing::warn!(
                ?peer,
                seconds = wait,
                "too many failed authentications: source refused for a while"
            );
        }
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
    if let Err(why) = state
        .limits
        .of(&cluster)
        .check(super::limits::Kind::Connect, 1)
    {
        state.metrics.tunnel_error("connect_rate");
        tracing::warn!(?peer, %cluster, %why, "agent refused: too many new tunnels");
        let mut r = refuse(StatusCode::TOO_MANY_REQUESTS, &why);
        r.headers_mut().insert(
            actix_web::http::header::RETRY_AFTER,
            actix_web::http::header::HeaderValue::from_static("1"),
        );
        return r;
    }
    let (mut response, session, stream) = match actix_ws::handle(&req, payload) {
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
    // Which node answered, so an agent that already holds a tunnel here can hang up before
    // registering and dial again for another node.
    if let Ok(v) = actix_web::http::header::HeaderValue::from_str(state.config.node_id()) {
        response.headers_mut().insert(
            actix_web::http::header::HeaderName::from_static(crate::cluster::NODE_HEADER),
            v,
        );
    }
    let (out, rx) = outbox(TUNNEL_OUTBOX_CAPACITY);
    actix_rt::spawn(write_loop(rx, session, to_actix));
    let state = Arc::clone(&state.into_inner());
    TunnelActor::create(move |ctx| {
        ctx.add_stream(stream.map(from_actix));
        TunnelActor::new(cluster, peer, out, state).with_token(token_id)
    });
    response
}
