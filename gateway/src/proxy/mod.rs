//! The public HTTP entry: every request that is not the gateway's own lands here, is checked,
//! routed on its `Host`, and streamed through the owning cluster's tunnel.

pub mod headers;
pub mod websocket;

use std::time::Instant;

use actix_web::body::SizedStream;
use actix_web::http::{Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse, web};
use tunnelgate_proto::control::ProxyRequest;

use crate::AppState;
use crate::error::ProxyError;
use crate::registry::RouteEntry;
use crate::tunnel::{OpenError, OpenStream, Started, payload_body, start_stream};
use headers::{
    check_request, has_body, keep_response_header, response_connection_tokens,
    upstream_request_headers,
};

/// Routes every request: a published host goes to its tunnel; otherwise the gateway's own
/// endpoints (`/v1/tunnel`, `/healthz`, `/readyz`, `/metrics`), else 404.
pub async fn dispatch(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let started = Instant::now();
    let host = match check_request(&req, state.config.max_header_bytes) {
        Ok(h) => h,
        Err(e) => return fail(&state, &req, "", e),
    };
    let route = match state.registry.lookup(&host, req.uri().path()).await {
        Ok(r) => r,
        Err(e) => {
            return fail(
                &state,
                &req,
                "",
                ProxyError::RegistryUnavailable(e.to_string()),
            );
        }
    };
    let Some(route) = route else {
        return match req.uri().path() {
            "/v1/tunnel" => crate::tunnel::accept(req, payload, state).await,
            "/healthz" => crate::admin::healthz(),
            "/readyz" => crate::admin::readyz(&state),
            "/metrics" => crate::admin::metrics(&state),
            _ => fail(&state, &req, "", ProxyError::NoRoute(host)),
        };
    };
    match proxy(&req, payload, &state, host, &route, started).await {
        Ok(resp) => resp,
        Err(e) => fail(&state, &req, &route.cluster, e),
    }
}

fn fail(state: &AppState, req: &HttpRequest, cluster: &str, e: ProxyError) -> HttpResponse {
    state.metrics.request(cluster, e.status().as_u16(), None);
    let level_warn = !matches!(e.who(), crate::error::Who::Client);
    if level_warn {
        tracing::warn!(cluster, method = %req.method(), path = req.uri().path(), code = e.code(), error = %e, "request failed");
    } else {
        tracing::debug!(cluster, method = %req.method(), path = req.uri().path(), code = e.code(), error = %e, "request refused");
    }
    e.to_response()
}

/// Owners tried for one request before giving up (the first may be stale).
const MAX_OWNER_TRIES: usize = 2;
/// Local tunnels that may refuse one request (their agents draining) before it goes elsewhere.
const MAX_LOCAL_TRIES: usize = 3;

async fn proxy(
    req: &HttpRequest,
    payload: web::Payload,
    state: &web::Data<AppState>,
    host: String,
    route: &RouteEntry,
    started: Instant,
) -> Result<HttpResponse, ProxyError> {
    let cluster = &route.cluster;
    let headers = upstream_request_headers(req.headers(), req.peer_addr().map(|a| a.ip()))?;
    let websocket = headers::is_websocket_upgrade(req);
    let with_body = has_body(req.headers()) && !websocket;
    let (mut body, upgrade) = match (websocket, with_body) {
        (true, _) => (None, Some(payload)),
        (false, true) => (Some(payload_body(payload)), None),
        (false, false) => (None, None),
    };
    let target = Target {
        req,
        state,
        host: &host,
        cluster,
        websocket,
        upgrade: std::cell::RefCell::new(upgrade),
        headers,
        with_body,
        started,
    };
    // A tunnel picked as its agent began to drain refuses the stream before anything was
    // sent (NotHere): the request goes to the cluster's next tunnel, here or on an owner node.
    let mut refused = 0;
    while let Some(t) = state.hub.pick(cluster) {
        match target.forward(t.open, false, &mut body).await {
            // (A body already sent cannot be sent again.)
            Err(ProxyError::NotHere)
                if refused < MAX_LOCAL_TRIES && (!with_body || body.is_some()) =>
            {
                refused += 1
            }
            Err(ProxyError::NotHere) => break,
            other => return other,
        }
    }
    if !state.registry.is_shared() {
        return Err(ProxyError::ClusterOffline(cluster.clone()));
    }
    let owners = state
        .registry
        .remote_owners(cluster)
        .await
        .map_err(|_| ProxyError::ClusterOffline(cluster.clone()))?;
    let arc = state.clone().into_inner();
    for owner in owners.iter().take(MAX_OWNER_TRIES) {
        let link = match state.peers.link(&arc, owner).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(%cluster, peer_node = %owner.node_id, error = %e, "owner unreachable; trying the next");
                state.metrics.forward_outcome("peer_unreachable");
                state.registry.drop_owner(cluster, &owner.node_id);
                continue;
            }
        };
        // A request body can be sent only once: with one, the first owner reached is the last.
        if with_body && body.is_none() {
            break;
        }
        match target.forward(link, true, &mut body).await {
            Err(ProxyError::NotHere) => {
                tracing::info!(%cluster, peer_node = %owner.node_id, "owner no longer holds the tunnel");
                state.metrics.forward_outcome("not_here");
                state.registry.drop_owner(cluster, &owner.node_id);
            }
            other => {
                state.metrics.forward_outcome("forwarded");
                return other;
            }
        }
    }
    Err(ProxyError::ClusterOffline(cluster.clone()))
}

/// One request on its way to a tunnel, directly or over a peer link.
struct Target<'a> {
    req: &'a HttpRequest,
    state: &'a web::Data<AppState>,
    host: &'a str,
    cluster: &'a str,
    headers: tunnelgate_proto::control::HeaderList,
    with_body: bool,
    started: Instant,
    websocket: bool,
    /// The client's connection, kept until the upstream accepted the upgrade.
    upgrade: std::cell::RefCell<Option<web::Payload>>,
}

impl Target<'_> {
    /// Sends the request through `open`'s tunnel. The body is taken only once a stream is open:
    /// a tunnel that refuses the stream (NotHere) leaves it for the next one.
    async fn forward(
        &self,
        open: actix::Recipient<OpenStream>,
        via_peer: bool,
        payload: &mut Option<crate::tunnel::BodySource>,
    ) -> Result<HttpResponse, ProxyError> {
        let (req, state, cluster) = (self.req, self.state, self.cluster);
        let opened = match open
            .send(OpenStream {
                websocket: self.websocket,
            })
            .await
        {
            Ok(Ok(o)) => o,
            Ok(Err(OpenError::Busy)) => return Err(ProxyError::TunnelBusy),
            // Draining or closing: nothing was sent, another tunnel may take it.
            Ok(Err(OpenError::Closed)) | Err(_) => return Err(ProxyError::NotHere),
        };
        let request = ProxyRequest {
            stream_id: 0,
            method: req.method().as_str().to_string(),
            host: self.host.to_string(),
            path: req.uri().path().to_string(),
            query: req.uri().query().map(str::to_string),
            headers: self.headers.clone(),
            body: self.with_body,
            request_id: None,
            cluster: via_peer.then(|| cluster.to_string()),
            hops: u8::from(via_peer),
            websocket: self.websocket,
        };
        let Started {
            id,
            head,
            body,
            ws,
            shared: ws_credit,
            outbox: ws_outbox,
        } = start_stream(
            opened,
            request,
            payload.take(),
            state.config.response_timeout,
        );
        let started = self.started;
        let head = head.await.map_err(|_| ProxyError::TunnelLost)??;
        if let (101, Some(ws)) = (head.status, ws) {
            state
                .metrics
                .request(cluster, 101, Some(started.elapsed().as_secs_f64()));
            let payload = self
                .upgrade
                .borrow_mut()
                .take()
                .ok_or(ProxyError::TunnelLost)?;
            return crate::proxy::websocket::bridge(
                req, payload, &head, id, ws, ws_credit, ws_outbox,
            );
        }
        let status = StatusCode::from_u16(head.status)
            .ok()
            .filter(|s| !s.is_informational())
            .ok_or_else(|| ProxyError::UpstreamFailed(format!("invalid status {}", head.status)))?;
        state.metrics.request(
            cluster,
            status.as_u16(),
            Some(started.elapsed().as_secs_f64()),
        );
        let listed = response_connection_tokens(&head.headers);
        let mut resp = HttpResponse::build(status);
        let mut content_length = None;
        for (name, value) in &head.headers {
            let lower = name.to_ascii_lowercase();
            if lower == "content-length" {
                content_length = value.trim().parse::<u64>().ok();
            } else if keep_response_header(&lower, &listed) {
                resp.append_header((lower, value.as_str()));
            }
        }
        if req.method() == Method::HEAD {
            // The size a GET would have; actix sends the head alone for HEAD.
            return Ok(match content_length {
                Some(n) => resp.body(SizedStream::new(n, body)),
                None => resp.finish(),
            });
        }
        if !head.body {
            return Ok(resp.finish());
        }
        Ok(match content_length {
            Some(n) => resp.body(SizedStream::new(n, body)),
            None => resp.streaming(body),
        })
    }
}
