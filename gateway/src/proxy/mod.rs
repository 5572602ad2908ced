//! The public HTTP entry: every request that is not the gateway's own lands here, is checked,
//! routed on its `Host`, and streamed through the owning cluster's tunnel.

pub mod conn;
mod forward;
pub mod front;
pub mod headers;
pub mod idle;
pub mod kube;
mod write;

use std::time::Instant;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::http::{Method, Uri, Version};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use tracing::Instrument;
use tunnelgate_proto::control::KubeIdentity;

use crate::AppState;
use crate::error::ProxyError;
use crate::tunnel::{BodySource, payload_body};
use forward::Target;
use headers::{check_request, has_body, upstream_request_headers};

/// Header naming a request across every hop: the client's, else one the gateway makes.
pub const REQUEST_ID: &str = "x-request-id";

/// The id of the request being served (in its extensions from the start of [`dispatch`]).
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// The client's `X-Request-Id` when it is a sane token (visible ASCII, at most 128 bytes),
/// else a new one (128 random bits, hex).
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(new_request_id)
}

/// 32 random hex digits (without `format!`'s machinery: this runs for every request).
fn new_request_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = rand::random::<u128>();
    let mut id = String::with_capacity(32);
    for i in (0..32).rev() {
        let digit = HEX.get(((n >> (i * 4)) & 0xf) as usize).copied();
        id.push(char::from(digit.unwrap_or(b'0')));
    }
    id
}

/// What the proxy reads of a client's request, whichever front parsed it: actix-http
/// ([`Incoming::of`]) or the gateway's own HTTP/1.1 loop (`proxy::conn`).
pub struct Incoming<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub version: Version,
    pub headers: &'a HeaderMap,
    pub peer: Option<std::net::SocketAddr>,
    /// Set when the connection is HTTPS (with the SNI the client sent).
    pub tls: Option<&'a crate::tls::Tls>,
    /// The request's id (see [`request_id`]).
    pub id: String,
}

impl<'a> Incoming<'a> {
    /// An actix-web request (its id set by [`dispatch`]).
    pub fn of(req: &'a HttpRequest) -> Self {
        Incoming {
            method: req.method(),
            uri: req.uri(),
            version: req.version(),
            headers: req.headers(),
            peer: req.peer_addr(),
            tls: req.conn_data::<crate::tls::Tls>(),
            id: req
                .extensions()
                .get::<RequestId>()
                .map(|r| r.0.clone())
                .unwrap_or_default(),
        }
    }
}

/// The span a request is served in: its id, and the client's trace as its parent when the
/// client sent a `traceparent`.
pub fn request_span(id: &str, headers: &HeaderMap) -> tracing::Span {
    let span = tracing::info_span!(
        "request",
        otel.name = "gateway request",
        otel.kind = "server",
        request_id = %id
    );
    let client_trace = headers.get("traceparent").and_then(|v| v.to_str().ok());
    tunnelgate_telemetry::continue_trace(&span, client_trace);
    span
}

/// The response carries the request's id back, unless the upstream set its own.
pub fn tag_response(resp: &mut HttpResponse, id: &str) {
    if !resp.headers().contains_key(REQUEST_ID)
        && let Ok(v) = HeaderValue::from_str(id)
    {
        resp.headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID), v);
    }
}

/// Routes every request (see [`route`]) inside a span carrying its request id, which every log
/// line of the request shows and the response carries back (unless the upstream set its own).
pub async fn dispatch(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let id = request_id(req.headers());
    let span = request_span(&id, req.headers());
    req.extensions_mut().insert(RequestId(id.clone()));
    let st = state.clone();
    let mut resp = route(req, payload, state).instrument(span).await;
    tag_response(&mut resp, &id);
    // As the own front does: a draining node asks HTTP/1.1 clients to reconnect elsewhere
    // (HTTP/2 has no such header; an upgrade keeps its connection).
    if st.is_draining() && resp.status() != actix_web::http::StatusCode::SWITCHING_PROTOCOLS {
        resp.head_mut()
            .set_connection_type(actix_web::http::ConnectionType::Close);
    }
    resp
}

/// Routes every request: the gateway's own names (IP literals, `--public-host`) serve
/// `/v1/tunnel` and `/healthz`; any other host goes to the tunnel of the cluster publishing it,
/// else 503 (its cluster is offline) or 404.
async fn route(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let started = Instant::now();
    let inc = Incoming::of(&req);
    // Past the node's connection limit: no work at all for this connection.
    if req
        .conn_data::<crate::overload::Crowded>()
        .is_some_and(|c| c.0)
    {
        let e = ProxyError::Overloaded(state.config.max_connections);
        return fail(&state, &inc, "", e);
    }
    if state.load.memory_over() {
        return fail(&state, &inc, "", ProxyError::MemoryOver);
    }
    let host = match check_request(&inc, state.config.max_header_bytes) {
        Ok(h) => h,
        Err(e) => return fail(&state, &inc, "", e),
    };
    // Over TLS the SNI and the Host must not name different clusters: no domain fronting
    // from one tenant's certificate name to another tenant.
    if let Some(crate::tls::Tls { sni: Some(sni) }) = inc.tls {
        let sni = sni.to_ascii_lowercase();
        let (a, b) = (
            state.registry.cluster_of(&sni),
            state.registry.cluster_of(&host),
        );
        if a.is_some() && b.is_some() && a != b {
            return fail(&state, &inc, "", ProxyError::Misdirected(host));
        }
    }
    // The gateway's own names are never a tenant's: they serve the agent endpoint (and a
    // liveness answer for load balancers), nothing else.
    if state.config.is_gateway_name(&host) {
        return match req.uri().path() {
            "/v1/tunnel" => crate::tunnel::accept(req, payload, state).await,
            "/healthz" => crate::admin::healthz().await,
            _ => fail(&state, &inc, "", ProxyError::NoRoute(host)),
        };
    }
    // ACME HTTP-01: answered by whichever node the CA reaches (the answer is shared); a token
    // the gateway did not set goes on to the tenant (its own ACME client, e.g. cert-manager).
    if state.acme.is_some()
        && inc.tls.is_none()
        && let Some(token) = req
            .uri()
            .path()
            .strip_prefix("/.well-known/acme-challenge/")
        && let Some(answer) = state.registry.challenge(token).await
    {
        return HttpResponse::Ok().content_type("text/plain").body(answer);
    }
    if state.config.redirect_http
        && inc.tls.is_none()
        && !req.uri().path().starts_with("/.well-known/acme-challenge/")
    {
        return redirect_to_https(&req, &host, state.config.https_port);
    }
    if let Some(cluster) = kube::api_cluster(&host, &state.config.domain) {
        let cluster = cluster.to_string();
        return kube::serve(req, payload, state, host, cluster, started).await;
    }
    tenant(&inc, payload_body(payload), &state, host, started).await
}

/// Whether a request for `host` goes straight to [`tenant`]: not one of the gateway's own
/// names or its clusters' Kubernetes APIs, and no ACME answer or HTTPS redirect in the way
/// (what [`route`] checks before it, for a request already through [`check_request`]).
pub fn is_tenant_host(state: &AppState, host: &str, path: &str) -> bool {
    let acme_answer = state.acme.is_some() && path.starts_with("/.well-known/acme-challenge/");
    let elsewhere = state.config.is_gateway_name(host)
        || acme_answer
        || state.config.redirect_http
        || kube::api_cluster(host, &state.config.domain).is_some();
    !elsewhere
}

/// A tenant's request: its target checked, its route looked up, the cluster's rate limit,
/// then the tunnel (404, or 503 when the host's cluster has no live tunnel).
pub async fn tenant(
    inc: &Incoming<'_>,
    payload: BodySource,
    state: &web::Data<AppState>,
    host: String,
    started: Instant,
) -> HttpResponse {
    let target = match request_target(inc) {
        Ok(t) => t,
        Err(e) => return fail(state, inc, "", e),
    };
    let route = match state.registry.lookup(&host, &target.route_path).await {
        Ok(r) => r,
        Err(e) => {
            return fail(
                state,
                inc,
                "",
                ProxyError::RegistryUnavailable(e.to_string()),
            );
        }
    };
    let Some(route) = route else {
        return match offline_cluster(state, &host).await {
            Some(c) => fail(state, inc, &c, ProxyError::ClusterOffline(c.clone())),
            None => fail(state, inc, "", ProxyError::NoRoute(host)),
        };
    };
    if let Err(e) = admit(state, &route.cluster).await {
        return fail(state, inc, &route.cluster, e);
    }
    // Kept only for the access log: the call takes the host.
    let logged_host = state.config.access_log.then(|| host.clone());
    let call = Call {
        host,
        path: target.path,
        cluster: route.cluster.clone(),
        conns: route.conns.clone(),
        kubernetes: None,
    };
    let resp = match proxy(inc, payload, state, call, started).await {
        Ok(resp) => resp,
        Err(e) => fail(state, inc, &route.cluster, e),
    };
    if let Some(host) = logged_host {
        tracing::info!(
            %host, method = %inc.method, path = inc.uri.path(), status = resp.status().as_u16(),
            head_ms = started.elapsed().as_secs_f64() * 1000.0, cluster = %route.cluster,
            node = state.config.node_id(), "request"
        );
    }
    resp
}

/// The cluster's request rate limit (its own, or the gateway's default): 429 when over.
async fn admit(state: &AppState, cluster: &str) -> Result<(), ProxyError> {
    let limit = state
        .registry
        .rate_limit(cluster)
        .unwrap_or(crate::ratelimit::Limit {
            requests_per_second: state.config.rate_limit,
            burst: state.config.rate_burst,
        });
    state
        .rate_limits
        .admit(&state.registry, cluster, limit)
        .await
        .map_err(|wait| ProxyError::RateLimited(cluster.to_string(), wait))
}

/// 308 to the same host, path and query over HTTPS (`--redirect-http`).
fn redirect_to_https(req: &HttpRequest, host: &str, port: u16) -> HttpResponse {
    let authority = match port {
        443 => host.to_string(),
        p => format!("{host}:{p}"),
    };
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    HttpResponse::PermanentRedirect()
        .insert_header(("location", format!("https://{authority}{pq}")))
        .finish()
}

/// The cluster a host without a route belongs to by name, when that cluster has no live
/// tunnel anywhere: its routes left with its tunnels, and the client is told it is offline
/// (503, retry later) rather than that the name does not exist.
async fn offline_cluster(state: &AppState, host: &str) -> Option<String> {
    let cluster = state.registry.cluster_of(host)?;
    let cluster: &str = &cluster;
    if state.hub.count(cluster) > 0 {
        return None;
    }
    if state.registry.is_shared() {
        match state.registry.remote_owners(cluster).await {
            Ok(o) if !o.is_empty() => return None,
            _ => {}
        }
    }
    Some(cluster.to_string())
}

/// The path a request is routed by and the one forwarded.
struct RequestTarget {
    /// The normalised path routes are matched on (`/` for `OPTIONS *`).
    route_path: String,
    /// What the upstream receives: the same normalised path, or `*`.
    path: String,
}

/// Checks the method and request target: CONNECT is refused (no tunnels to arbitrary
/// addresses), the asterisk form only for OPTIONS, and every other path is normalised
/// (`tunnelgate_proto::routes::normalize_path`) so that what is matched is what is forwarded.
fn request_target(req: &Incoming) -> Result<RequestTarget, ProxyError> {
    if req.method == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed("CONNECT"));
    }
    let raw = req.uri.path();
    if raw == "*" {
        if req.method != Method::OPTIONS {
            return Err(ProxyError::BadRequest(
                "the asterisk request target is only for OPTIONS".into(),
            ));
        }
        return Ok(RequestTarget {
            route_path: "/".into(),
            path: "*".into(),
        });
    }
    let path = tunnelgate_proto::routes::normalize_path(raw)
        .map_err(|e| ProxyError::BadRequest(e.to_string().into()))?;
    Ok(RequestTarget {
        route_path: path.clone(),
        path,
    })
}

fn fail(state: &AppState, req: &Incoming, cluster: &str, e: ProxyError) -> HttpResponse {
    state.metrics.request(cluster, e.status().as_u16(), None);
    // A node shedding load says so once per crossing (overload.rs), not once per request.
    let shed = matches!(e, ProxyError::Overloaded(_) | ProxyError::MemoryOver);
    let level_warn = !shed && !matches!(e.who(), crate::error::Who::Client);
    if level_warn {
        tracing::warn!(cluster, method = %req.method, path = req.uri.path(), code = e.code(), error = %e, "request failed");
    } else {
        tracing::debug!(cluster, method = %req.method, path = req.uri.path(), code = e.code(), error = %e, "request refused");
    }
    e.to_response()
}

/// Owners tried for one request before giving up (the first may be stale).
const MAX_OWNER_TRIES: usize = 2;
/// Local tunnels that may refuse one request (their agents draining) before it goes elsewhere.
const MAX_LOCAL_TRIES: usize = 3;

/// Where one routed request goes.
struct Call {
    host: String,
    /// The normalised path (or `*`) the upstream receives.
    path: String,
    cluster: String,
    /// Connections publishing the route; empty for any of the cluster's (its API).
    conns: std::sync::Arc<[String]>,
    /// The caller the gateway authenticated, for the cluster's Kubernetes API.
    kubernetes: Option<KubeIdentity>,
}

async fn proxy(
    req: &Incoming<'_>,
    payload: BodySource,
    state: &web::Data<AppState>,
    call: Call,
    started: Instant,
) -> Result<HttpResponse, ProxyError> {
    let cluster = &call.cluster;
    let upgrade = headers::upgrade_request(req);
    let proto = match req.tls {
        Some(_) => "https",
        None => "http",
    };
    let mut headers = upstream_request_headers(
        req.headers,
        req.peer.map(|a| a.ip()),
        upgrade.as_deref(),
        proto,
    )?;
    // The upstream sees the request's id (the client's, or the one made for it).
    if !req.id.is_empty() {
        headers.retain(|(n, _)| !n.eq_ignore_ascii_case(REQUEST_ID));
        headers.push((REQUEST_ID.into(), req.id.clone()));
    }
    // HTTP/2 carries the host in :authority: the upstream gets it as Host all the same.
    if !headers.iter().any(|(n, _)| n == "host")
        && let Some(a) = req.uri.authority()
    {
        headers.push(("host".into(), a.as_str().to_string()));
        headers.push(("x-forwarded-host".into(), a.as_str().to_string()));
    }
    // An upgrade's "body" is the connection's bytes after the 101 (actix reads an upgrade
    // request's payload raw, until the client closes).
    let with_body = has_body(req.headers) || upgrade.is_some();
    let mut body = with_body.then_some(payload);
    let target = Target {
        req,
        state,
        host: &call.host,
        path: &call.path,
        cluster,
        conns: call.conns.clone(),
        kubernetes: call.kubernetes.clone(),
        upgrade,
        headers,
        with_body,
        started,
    };
    // A tunnel picked as its agent began to drain refuses the stream before anything was
    // sent (NotHere): the request goes to the cluster's next tunnel, here or on an owner node.
    let mut refused = Vec::new();
    let mut target = target;
    for attempt in 0..2 {
        if attempt == 1 {
            // Nothing publishing the route was found, by a cached view that may predate an
            // agent replaced by another (its event still on the way): once, look again with
            // fresh state, unless a body was already sent.
            if !state.registry.is_shared() || (with_body && body.is_none()) {
                break;
            }
            state.registry.forget_cached(cluster);
            if !target.conns.is_empty() {
                let route_path = if call.path == "*" { "/" } else { &call.path };
                match state.registry.lookup(&call.host, route_path).await {
                    Ok(Some(r)) => target.conns = r.conns.clone(),
                    _ => break,
                }
            }
            state.metrics.forward_outcome("looked_again");
        }
        while let Some((id, open)) = state.hub.pick(cluster, &target.conns, &refused) {
            match target.forward(open, false, &mut body).await {
                // (A body already sent cannot be sent again.)
                Err(ProxyError::NotHere)
                    if refused.len() < MAX_LOCAL_TRIES && (!with_body || body.is_some()) =>
                {
                    refused.push(id)
                }
                Err(ProxyError::NotHere) => break,
                other => return other,
            }
        }
        if !state.registry.is_shared() {
            break;
        }
        let owners = state
            .registry
            .remote_owners(cluster)
            .await
            .map_err(|_| ProxyError::ClusterOffline(cluster.clone()))?;
        let arc = state.clone().into_inner();
        // Only nodes holding a tunnel of an agent that publishes this route can serve it (any
        // node holding one of the cluster's tunnels, for its API).
        let conns = target.conns.clone();
        let publishes = |o: &&crate::registry::Owner| {
            conns.is_empty() || o.conns.iter().any(|c| conns.contains(c))
        };
        for owner in owners.iter().filter(publishes).take(MAX_OWNER_TRIES) {
            let link = match state.peers.link(&arc, owner).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(%cluster, peer_node = %owner.node_id, error = %e, "owner unreachable; trying the next");
                    state.metrics.forward_outcome("peer_unreachable");
                    state.registry.drop_owner(cluster, &owner.node_id);
                    continue;
                }
            };
            // A request body can be sent only once: with one, the first owner reached is the
            // last.
            if with_body && body.is_none() {
                break;
            }
            let hop = tracing::info_span!(
                "peer hop",
                otel.kind = "client",
                peer_node = %owner.node_id
            );
            match target.forward(link, true, &mut body).instrument(hop).await {
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
    }
    Err(ProxyError::ClusterOffline(cluster.clone()))
}
