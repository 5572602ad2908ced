//! `GET /v1/tunnel`: authenticates an agent before the WebSocket upgrade, then hands the
//! socket to a new [`TunnelActor`] and its writer task.

use std::sync::Arc;

use actix::{Actor, AsyncContext};
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use tunnelgate_mux::ws::{UNMASKED_HEADER, accept_tcp};
use tunnelgate_mux::{outbox, write_loop};
use tunnelgate_proto::limits::MAX_WS_MESSAGE;

use super::tunnel_actor::TunnelActor;
use super::ws::{from_actix, from_link, to_actix};
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

/// The checks before an agent's upgrade, whichever front read its request: the node is not
/// draining, the source is not throttled, the bearer token names a cluster (and the one the
/// agent claims), the cluster's connect rate. The cluster and token id, or the refusal.
fn admit(
    state: &AppState,
    peer: Option<std::net::SocketAddr>,
    headers: &actix_web::http::header::HeaderMap,
) -> Result<(String, String), Box<HttpResponse>> {
    use actix_web::http::StatusCode;
    if state.is_draining() {
        let mut r = refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "this gateway node is shutting down; connect to another",
        );
        crate::guard::set_retry_after(&mut r, 1);
        return Err(Box::new(r));
    }
    let ip = peer.map(|p| p.ip());
    if let Err(wait) = state.auth_guard.check(ip) {
        state.metrics.auth_failure("throttled");
        return Err(Box::new(throttled(wait)));
    }
    // A missing or unknown token: counted, logged, and the source's failures throttled.
    let unauthorized = |reason: &'static str, logged: &'static str, why: &'static str| {
        state.metrics.auth_failure(reason);
        tracing::warn!(?peer, "agent refused: {logged}");
        if let Err(wait) = state.auth_guard.failed(ip) {
            tracing::warn!(
                ?peer,
                seconds = wait,
                "too many failed authentications: source refused for a while"
            );
        }
        Box::new(refuse(StatusCode::UNAUTHORIZED, why))
    };
    let Some(token) = crate::guard::bearer_token(headers) else {
        return Err(unauthorized(
            "missing_token",
            "no bearer token",
            "missing bearer token",
        ));
    };
    let Some((cluster, token_id)) = state.registry.authenticate(token) else {
        return Err(unauthorized(
            "bad_token",
            "unknown token",
            "invalid agent token",
        ));
    };
    if let Some(claimed) = headers
        .get(CLUSTER_HEADER)
        .filter(|c| c.as_bytes() != cluster.as_bytes())
    {
        state.metrics.auth_failure("cluster_mismatch");
        let claimed = String::from_utf8_lossy(claimed.as_bytes()).into_owned();
        tracing::warn!(?peer, %cluster, %claimed, "agent refused: token belongs to another cluster");
        return Err(Box::new(refuse(
            StatusCode::FORBIDDEN,
            &format!("this token does not belong to cluster {claimed:?}"),
        )));
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
        return Err(Box::new(r));
    }
    Ok((cluster, token_id))
}

/// Authenticates and upgrades an agent connection that reached actix-http (over HTTPS).
pub async fn accept(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    use actix_web::http::StatusCode;
    let peer = req.peer_addr();
    let (cluster, token_id) = match admit(&state, peer, req.headers()) {
        Ok(admitted) => admitted,
        Err(refusal) => return *refusal,
    };
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
    response.headers_mut().insert(
        actix_web::http::header::HeaderName::from_static(crate::cluster::WORKER_HEADER),
        worker_index().into(),
    );
    let (out, rx) = outbox(TUNNEL_OUTBOX_CAPACITY);
    actix_rt::spawn(write_loop(rx, session, to_actix));
    let state = Arc::clone(&state.into_inner());
    TunnelActor::create(move |ctx| {
        ctx.add_stream(stream.map(from_actix));
        TunnelActor::new(cluster, peer, out, state).with_token(token_id)
    });
    response
}

/// Authenticates and upgrades an agent connection on the gateway's own front (plain HTTP,
/// `proxy::conn`): the handshake answered here, then the link's own WebSocket framing over
/// the socket (with what was read past the head). `slot` is held for as long as the tunnel's writer runs. Returns
/// the refusal to write when the agent is not admitted.
pub async fn accept_raw(
    mut io: tokio::net::TcpStream,
    slot: crate::overload::Slot,
    read: Vec<u8>,
    method: &actix_web::http::Method,
    headers: &actix_web::http::header::HeaderMap,
    state: &web::Data<AppState>,
) -> Result<(), Box<(tokio::net::TcpStream, HttpResponse)>> {
    use actix_web::http::StatusCode;
    use tokio::io::AsyncWriteExt;
    let peer = io.peer_addr().ok();
    let (cluster, token_id) = match admit(state, peer, headers) {
        Ok(admitted) => admitted,
        Err(refusal) => return Err(Box::new((io, *refusal))),
    };
    let Some(accept) = accept_key(headers).filter(|_| method == actix_web::http::Method::GET)
    else {
        state.metrics.auth_failure("bad_upgrade");
        let why = "WebSocket upgrade required: a GET with Sec-WebSocket-Key and version 13";
        return Err(Box::new((io, refuse(StatusCode::BAD_REQUEST, why))));
    };
    // An agent that offers to send unmasked frames may (ADR 0014).
    let unmasked = headers
        .get(UNMASKED_HEADER)
        .is_some_and(|v| v.as_bytes() == b"1");
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: {accept}\r\n{}: {}\r\n{}: {}\r\n{}\r\n",
        crate::cluster::NODE_HEADER,
        state.config.node_id(),
        crate::cluster::WORKER_HEADER,
        worker_index(),
        if unmasked {
            format!("{UNMASKED_HEADER}: 1\r\n")
        } else {
            String::new()
        },
    );
    if io.write_all(head.as_bytes()).await.is_err() {
        return Ok(());
    }
    // The link's WebSocket framing is Tunnelgate's own (`mux::ws`, ADR 0014): no payload of a
    // download is copied in user space.
    let (stream, sink) = accept_tcp(io, &read, MAX_WS_MESSAGE + 16, unmasked);
    let (out, rx) = outbox(TUNNEL_OUTBOX_CAPACITY);
    // The connection counts against the node's limit while its writer lives.
    actix_rt::spawn(async move {
        write_loop(rx, sink, |m| m).await;
        drop(slot);
    });
    let state = Arc::clone(&state.clone().into_inner());
    TunnelActor::create(move |ctx| {
        ctx.add_stream(stream.map(from_link));
        TunnelActor::new(cluster, peer, out, state).with_token(token_id)
    });
    Ok(())
}

/// The `Sec-WebSocket-Accept` answering an upgrade's key, when it has one of version 13.
pub fn accept_key(headers: &actix_web::http::header::HeaderMap) -> Option<String> {
    let key = headers.get("sec-websocket-key").filter(|_| {
        headers
            .get("sec-websocket-version")
            .is_some_and(|v| v.as_bytes() == b"13")
    })?;
    Some(tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// This worker's index: the threads that accept tunnels are numbered as they first do (ADR
/// 0013; an agent tells a node's workers apart by it).
fn worker_index() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    INDEX.with(|i| *i)
}
