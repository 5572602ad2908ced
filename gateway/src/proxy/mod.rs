//! The public HTTP entry: every request that is not the gateway's own lands here, is checked,
//! routed on its `Host`, and streamed through the owning cluster's tunnel.

pub mod front;
pub mod headers;
pub mod idle;
pub mod kube;

use std::time::Instant;

use actix_web::body::SizedStream;
use actix_web::http::{Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse, web};
use tunnelgate_proto::control::{KubeIdentity, ProxyRequest};

use crate::AppState;
use crate::error::ProxyError;
use crate::tunnel::{OpenError, OpenStream, Started, payload_body, start_stream};
use headers::{
    check_request, has_body, keep_response_header, response_connection_tokens,
    upstream_request_headers,
};

/// Routes every request: the gateway's own names (IP literals, `--public-host`) serve
/// `/v1/tunnel` and `/healthz`; any other host goes to the tunnel of the cluster publishing it,
/// else 503 (its cluster is offline) or 404.
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
    // Over TLS the SNI and the Host must not name different clusters: no domain fronting
    // from one tenant's certificate name to another tenant.
    if let Some(crate::tls::Tls { sni: Some(sni) }) = req.conn_data::<crate::tls::Tls>() {
        let sni = sni.to_ascii_lowercase();
        let (a, b) = (
            state.registry.cluster_of(&sni),
            state.registry.cluster_of(&host),
        );
        if a.is_some() && b.is_some() && a != b {
            return fail(&state, &req, "", ProxyError::Misdirected(host));
        }
    }
    // The gateway's own names are never a tenant's: they serve the agent endpoint (and a
    // liveness answer for load balancers), nothing else.
    if state.config.is_gateway_name(&host) {
        return match req.uri().path() {
            "/v1/tunnel" => crate::tunnel::accept(req, payload, state).await,
            "/healthz" => crate::admin::healthz().await,
            _ => fail(&state, &req, "", ProxyError::NoRoute(host)),
        };
    }
    // ACME HTTP-01: answered by whichever node the CA reaches (the answer is shared); a token
    // the gateway did not set goes on to the tenant (its own ACME client, e.g. cert-manager).
    if state.acme.is_some()
        && req.conn_data::<crate::tls::Tls>().is_none()
        && let Some(token) = req
            .uri()
            .path()
            .strip_prefix("/.well-known/acme-challenge/")
        && let Some(answer) = state.registry.challenge(token).await
    {
        return HttpResponse::Ok().content_type("text/plain").body(answer);
    }
    if state.config.redirect_http
        && req.conn_data::<crate::tls::Tls>().is_none()
        && !req.uri().path().starts_with("/.well-known/acme-challenge/")
    {
        return redirect_to_https(&req, &host, state.config.https_port);
    }
    if let Some(cluster) = kube::api_cluster(&host, &state.config.domain) {
        let cluster = cluster.to_string();
        return kube::serve(req, payload, state, host, cluster, started).await;
    }
    let target = match request_target(&req) {
        Ok(t) => t,
        Err(e) => return fail(&state, &req, "", e),
    };
    let route = match state.registry.lookup(&host, &target.route_path).await {
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
        return match offline_cluster(&state, &host).await {
            Some(c) => fail(&state, &req, &c, ProxyError::ClusterOffline(c.clone())),
            None => fail(&state, &req, "", ProxyError::NoRoute(host)),
        };
    };
    if let Err(e) = admit(&state, &route.cluster).await {
        return fail(&state, &req, &route.cluster, e);
    }
    let call = Call {
        host,
        path: target.path,
        cluster: route.cluster.clone(),
        conns: route.conns.clone(),
        kubernetes: None,
    };
    match proxy(&req, payload, &state, call, started).await {
        Ok(resp) => resp,
        Err(e) => fail(&state, &req, &route.cluster, e),
    }
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
fn request_target(req: &HttpRequest) -> Result<RequestTarget, ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed("CONNECT"));
    }
    let raw = req.uri().path();
    if raw == "*" {
        if req.method() != Method::OPTIONS {
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
    req: &HttpRequest,
    payload: web::Payload,
    state: &web::Data<AppState>,
    call: Call,
    started: Instant,
) -> Result<HttpResponse, ProxyError> {
    let cluster = &call.cluster;
    let upgrade = headers::upgrade_request(req);
    let proto = match req.conn_data::<crate::tls::Tls>() {
        Some(_) => "https",
        None => "http",
    };
    let mut headers = upstream_request_headers(
        req.headers(),
        req.peer_addr().map(|a| a.ip()),
        upgrade.as_deref(),
        proto,
    )?;
    // HTTP/2 carries the host in :authority: the upstream gets it as Host all the same.
    if !headers.iter().any(|(n, _)| n == "host")
        && let Some(a) = req.uri().authority()
    {
        headers.push(("host".into(), a.as_str().to_string()));
        headers.push(("x-forwarded-host".into(), a.as_str().to_string()));
    }
    // An upgrade's "body" is the connection's bytes after the 101 (actix reads an upgrade
    // request's payload raw, until the client closes).
    let with_body = has_body(req.headers()) || upgrade.is_some();
    let mut body = with_body.then(|| payload_body(payload));
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
        while let Some(t) = state.hub.pick(cluster, &target.conns, &refused) {
            match target.forward(t.open, false, &mut body).await {
                // (A body already sent cannot be sent again.)
                Err(ProxyError::NotHere)
                    if refused.len() < MAX_LOCAL_TRIES && (!with_body || body.is_some()) =>
                {
                    refused.push(t.id)
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
    }
    Err(ProxyError::ClusterOffline(cluster.clone()))
}

/// One request on its way to a tunnel, directly or over a peer link.
struct Target<'a> {
    req: &'a HttpRequest,
    state: &'a web::Data<AppState>,
    host: &'a str,
    /// The normalised path (or `*`) the upstream receives.
    path: &'a str,
    cluster: &'a str,
    /// Connections publishing the route (an owner node serves it only through those).
    conns: std::sync::Arc<[String]>,
    headers: tunnelgate_proto::control::HeaderList,
    with_body: bool,
    started: Instant,
    /// The `Upgrade` the client asked for (any protocol but h2c).
    upgrade: Option<String>,
    /// The caller of the cluster's Kubernetes API, when this is a call to it.
    kubernetes: Option<KubeIdentity>,
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
        let opened = match open.send(OpenStream {}).await {
            Ok(Ok(o)) => o,
            Ok(Err(OpenError::Busy)) => return Err(ProxyError::TunnelBusy),
            // Draining or closing: nothing was sent, another tunnel may take it.
            Ok(Err(OpenError::Closed)) | Err(_) => return Err(ProxyError::NotHere),
        };
        let request = ProxyRequest {
            stream_id: 0,
            method: req.method().as_str().to_string(),
            host: self.host.to_string(),
            path: self.path.to_string(),
            query: req.uri().query().map(str::to_string),
            headers: self.headers.clone(),
            body: self.with_body,
            request_id: None,
            cluster: via_peer.then(|| cluster.to_string()),
            conns: if via_peer {
                self.conns.to_vec()
            } else {
                Vec::new()
            },
            hops: u8::from(via_peer),
            upgrade: self.upgrade.clone(),
            kubernetes: self.kubernetes.clone(),
        };
        // Watches, `logs -f` and exec sessions are quiet for long stretches: the API's calls
        // have their own, longer idle timeout.
        let idle = match self.kubernetes {
            Some(_) => state.config.kubernetes_idle_timeout,
            None => state.config.body_idle_timeout,
        };
        let Started { head, body, .. } = start_stream(
            opened,
            request,
            payload.take(),
            state.config.response_timeout,
            idle,
        );
        let started = self.started;
        let head = head.await.map_err(|_| ProxyError::TunnelLost)??;
        if head.status == 101
            && let Some(asked) = &self.upgrade
        {
            state
                .metrics
                .request(cluster, 101, Some(started.elapsed().as_secs_f64()));
            return upgraded_response(
                &head.headers,
                asked,
                &self.own_names(),
                body,
                self.kubernetes.as_ref().map(|_| idle),
            );
        }
        let status = StatusCode::from_u16(head.status)
            .ok()
            .filter(|s| (200..600).contains(&s.as_u16()))
            .ok_or_else(|| {
                ProxyError::UpstreamFailed(format!("invalid status {} from the agent", head.status))
            })?;
        state.metrics.request(
            cluster,
            status.as_u16(),
            Some(started.elapsed().as_secs_f64()),
        );
        let resp = response_head(status, &head.headers, &self.own_names())?;
        // The gateway owns framing: no body ever follows a HEAD answer, 204 or 304, whatever
        // the agent sends (RFC 9112 §6.3); the stream's body is dropped, which resets it.
        let bodiless = req.method() == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let ResponseHead {
            mut resp,
            content_length,
        } = resp;
        if bodiless {
            drop(body);
            if let (Some(n), true) = (content_length, req.method() == Method::HEAD) {
                // The size a GET would have, over a body of unknown size that has no bytes:
                // nothing can follow the head, also when actix loses track of the request
                // being HEAD (it does when a request is pipelined behind it, and would then
                // frame a sized body; a sized empty body would end the connection there).
                resp.no_chunking(n);
                let none = futures_util::stream::empty::<Result<bytes::Bytes, ProxyError>>();
                return Ok(resp.body(actix_web::body::BodyStream::new(none)));
            }
            return Ok(resp.body(actix_web::body::None::new()));
        }
        if !head.body {
            return Ok(resp.finish());
        }
        let body = idle::IdleTimeout::new(body, idle);
        Ok(match content_length {
            Some(n) => resp.body(SizedStream::new(n, body)),
            // (Not `streaming`, which would invent a Content-Type the upstream did not send.)
            None => resp.body(actix_web::body::BodyStream::new(body)),
        })
    }

    /// Whether a name is the publishing cluster's (cookies may be scoped to it).
    fn own_names(&self) -> impl Fn(&str) -> bool + '_ {
        move |d: &str| self.state.registry.cluster_of(d).as_deref() == Some(self.cluster)
    }
}

/// The client's 101: the upstream's headers (hop-by-hop ones dropped, the `Upgrade` it chose
/// kept), then its raw bytes for as long as the connection lives, with no idle timeout unless
/// one is given (the Kubernetes API's sessions). If the
/// tunnel, a peer or the agent goes away, the body fails and actix drops the client's
/// connection: a WebSocket client sees 1006, never a clean close it would take as deliberate.
fn upgraded_response(
    headers: &tunnelgate_proto::control::HeaderList,
    asked: &str,
    own: &dyn Fn(&str) -> bool,
    body: tunnelgate_mux::PipeReader,
    idle_timeout: Option<std::time::Duration>,
) -> Result<HttpResponse, ProxyError> {
    let chosen = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("upgrade"))
        .map_or(asked, |(_, v)| v.as_str())
        .to_string();
    let ResponseHead { mut resp, .. } =
        response_head(StatusCode::SWITCHING_PROTOCOLS, headers, own)?;
    resp.upgrade(chosen);
    Ok(match idle_timeout {
        Some(t) => resp.body(actix_web::body::BodyStream::new(idle::IdleTimeout::new(
            body, t,
        ))),
        None => resp.body(actix_web::body::BodyStream::new(body)),
    })
}

/// A response head built from the agent's, and the body length it announced.
struct ResponseHead {
    resp: actix_web::HttpResponseBuilder,
    content_length: Option<u64>,
}

/// Builds the client's response head from what the agent sent, which is untrusted: hop-by-hop
/// headers dropped, names and values checked (a bad one is a 502, never a 500 or a header
/// split), one Content-Length at most, cookies kept within `own` names.
fn response_head(
    status: StatusCode,
    headers: &tunnelgate_proto::control::HeaderList,
    own: &dyn Fn(&str) -> bool,
) -> Result<ResponseHead, ProxyError> {
    use actix_web::http::header::{HeaderName, HeaderValue};
    let listed = response_connection_tokens(headers);
    let mut resp = HttpResponse::build(status);
    let mut content_length = None;
    let bad = |what: &str| ProxyError::UpstreamFailed(format!("the agent sent {what}"));
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        if lower == "content-length" {
            let n = value
                .trim()
                .parse::<u64>()
                .map_err(|_| bad("an invalid Content-Length"))?;
            if content_length.is_some_and(|m| m != n) {
                return Err(bad("conflicting Content-Lengths"));
            }
            content_length = Some(n);
            continue;
        }
        if !keep_response_header(&lower, &listed) {
            continue;
        }
        let hname =
            HeaderName::from_bytes(lower.as_bytes()).map_err(|_| bad("an invalid header name"))?;
        let value = if hname == actix_web::http::header::SET_COOKIE {
            headers::scope_set_cookie(value, own)
        } else {
            std::borrow::Cow::Borrowed(value.as_str())
        };
        let hvalue = HeaderValue::from_str(&value).map_err(|_| bad("an invalid header value"))?;
        resp.append_header((hname, hvalue));
    }
    Ok(ResponseHead {
        resp,
        content_length,
    })
}
