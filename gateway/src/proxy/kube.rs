//! Each cluster's Kubernetes API at `{cluster}.k8s.{domain}` (a subtree no tenant can claim:
//! `k8s` is a reserved cluster id). The gateway authenticates the caller with an access token
//! the admin API issued for that cluster, drops the caller's credentials, and sends the
//! identity it vouches for in the stream's metadata (`ProxyRequest.kubernetes`); the agent
//! speaks to its API server as itself, impersonating that identity, so Kubernetes RBAC decides.
//! Every call leaves one audit line (target `tunnelgate::audit`) and a count per cluster, verb
//! and status.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use tunnelgate_proto::control::KubeIdentity;

use super::{RequestTarget, fail, request_target};
use crate::AppState;
use crate::error::ProxyError;
use crate::registry::access::AccessGrant;

/// The label under the domain that holds every cluster's API name.
pub const SUBTREE: &str = "k8s";

/// The cluster whose API `host` names: exactly `{cluster}.k8s.{domain}`.
pub fn api_cluster<'h>(host: &'h str, domain: &str) -> Option<&'h str> {
    let rest = host.strip_suffix(domain)?.strip_suffix('.')?;
    let cluster = rest.strip_suffix(SUBTREE)?.strip_suffix('.')?;
    (!cluster.is_empty() && !cluster.contains('.')).then_some(cluster)
}

/// The API server name of `cluster` as clients reach it (`https_port` when not 443).
pub fn server_url(cluster: &str, domain: &str, https_port: u16) -> String {
    match https_port {
        443 => format!("https://{cluster}.{SUBTREE}.{domain}"),
        p => format!("https://{cluster}.{SUBTREE}.{domain}:{p}"),
    }
}

/// The Kubernetes verb of a request, as the API server's request info would name it, with the
/// streaming subresources (`exec`, `attach`, `portforward`, `log`, `proxy`) named as such.
pub fn verb(method: &str, path: &str, query: Option<&str>) -> &'static str {
    let watching = query.is_some_and(|q| {
        q.split('&')
            .any(|kv| matches!(kv, "watch=true" | "watch=1" | "watch=True"))
    });
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest: &[&str] = match parts.as_slice() {
        ["api", _v, rest @ ..] => rest,
        ["apis", _g, _v, rest @ ..] => rest,
        _ => return by_method(method, false),
    };
    let (rest, legacy_watch) = match rest {
        ["watch", r @ ..] => (r, true),
        r => (r, false),
    };
    let rest = match rest {
        ["namespaces", _ns, r @ ..] if !r.is_empty() => r,
        r => r,
    };
    match (rest, method) {
        ([], _) => by_method(method, false),
        ([_], "GET") if watching || legacy_watch => "watch",
        ([_], "GET") => "list",
        ([_], "DELETE") => "deletecollection",
        ([_], _) => by_method(method, true),
        ([_, _], "GET") if watching || legacy_watch => "watch",
        ([_, _], _) => by_method(method, false),
        ([_, _, sub, ..], _) => match *sub {
            "exec" => "exec",
            "attach" => "attach",
            "portforward" => "portforward",
            "log" => "log",
            "proxy" => "proxy",
            _ => by_method(method, false),
        },
    }
}

fn by_method(method: &str, collection: bool) -> &'static str {
    match method {
        "GET" | "HEAD" if collection => "list",
        "GET" | "HEAD" => "get",
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        _ => "other",
    }
}

/// A Kubernetes `Status` answer, which kubectl prints as the error.
fn status_response(e: &ProxyError, message: &str) -> HttpResponse {
    let code = e.status().as_u16();
    let reason = match code {
        401 => "Unauthorized",
        403 => "Forbidden",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        _ => "InternalError",
    };
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    });
    let mut resp = e.to_response().set_body(BoxBody::new(body.to_string()));
    resp.headers_mut().insert(
        actix_web::http::header::CONTENT_TYPE,
        actix_web::http::header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// One API call's audit record, written when its response body ends (or is dropped).
struct Audit {
    cluster: String,
    identity: Option<KubeIdentity>,
    verb: &'static str,
    method: String,
    path: String,
    status: u16,
    started: Instant,
    bytes: u64,
}

impl Drop for Audit {
    fn drop(&mut self) {
        let (user, groups) = match &self.identity {
            Some(i) => (i.user.as_str(), i.groups.join(",")),
            None => ("", String::new()),
        };
        tracing::info!(
            target: "tunnelgate::audit",
            cluster = %self.cluster, user, groups = %groups, verb = self.verb,
            method = %self.method, path = %self.path, status = self.status,
            duration_ms = self.started.elapsed().as_millis() as u64, bytes = self.bytes,
            "kubernetes api call"
        );
    }
}

/// A response body that counts its bytes for the audit line.
struct Audited {
    inner: BoxBody,
    audit: Audit,
}

impl MessageBody for Audited {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.inner.size()
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        if let Poll::Ready(Some(Ok(b))) = &polled {
            self.audit.bytes += b.len() as u64;
        }
        polled
    }
}

/// Serves one request to `cluster`'s API: HTTPS only when the gateway has a TLS listener,
/// an access token of this cluster, the cluster's rate limit, then the tunnel.
pub async fn serve(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    host: String,
    cluster: String,
    started: Instant,
) -> HttpResponse {
    let verb = verb(req.method().as_str(), req.uri().path(), req.uri().query());
    let mut audit = Audit {
        cluster: cluster.clone(),
        identity: None,
        verb,
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        status: 0,
        started,
        bytes: 0,
    };
    let resp = match authorize(&req, &state, &cluster) {
        Err(resp) => *resp,
        Ok(grant) => {
            audit.identity = Some(grant.identity.clone());
            let inc = super::Incoming::of(&req);
            match request_target(&inc) {
                Err(e) => fail(&state, &inc, &cluster, e),
                Ok(RequestTarget { path, .. }) => {
                    let call = super::Call {
                        host,
                        path,
                        cluster: cluster.clone(),
                        conns: std::sync::Arc::from([]),
                        kubernetes: Some(grant.identity),
                    };
                    match super::admit(&state, &cluster).await {
                        Err(e) => fail(&state, &inc, &cluster, e),
                        Ok(()) => match super::proxy(
                            &inc,
                            crate::tunnel::payload_body(payload),
                            &state,
                            call,
                            started,
                        )
                        .await
                        {
                            Ok(r) => r,
                            Err(e) => fail(&state, &inc, &cluster, e),
                        },
                    }
                }
            }
        }
    };
    audit.status = resp.status().as_u16();
    state
        .metrics
        .kube_requests
        .get_or_create(&crate::telemetry::metrics::KubeLabels {
            cluster_uuid: cluster,
            verb,
            status_code: audit.status,
        })
        .inc();
    resp.map_body(|_, inner| BoxBody::new(Audited { inner, audit }))
}

/// The caller's grant, or the refusal to send: 403 over plain HTTP when the gateway serves
/// HTTPS itself (a token must not cross in clear), 401 for a missing, unknown, expired or
/// revoked token or one of another cluster (failures throttled per source), 429 while the
/// source is throttled.
fn authorize(
    req: &HttpRequest,
    state: &AppState,
    cluster: &str,
) -> Result<AccessGrant, Box<HttpResponse>> {
    if state.config.tls_listen.is_some() && req.conn_data::<crate::tls::Tls>().is_none() {
        let e = ProxyError::Forbidden("the Kubernetes API is served over HTTPS only");
        return Err(Box::new(status_response(
            &e,
            "the Kubernetes API is served over HTTPS only",
        )));
    }
    let ip = req.peer_addr().map(|a| a.ip());
    if let Err(wait) = state.auth_guard.check(ip) {
        let e = ProxyError::RateLimited(cluster.to_string(), wait);
        return Err(Box::new(status_response(
            &e,
            "too many failed authentications; retry later",
        )));
    }
    let grant = crate::guard::bearer_token(req.headers())
        .and_then(|t| state.registry.authenticate_access(t))
        .filter(|g| g.cluster == cluster);
    match grant {
        Some(g) => Ok(g),
        None => {
            state.metrics.auth_failure("kubernetes_token");
            let _ = state.auth_guard.failed(ip);
            let e = ProxyError::Unauthorized;
            Err(Box::new(status_response(
                &e,
                "a valid access token for this cluster is required (admin API: POST /admin/v1/clusters/{id}/access-tokens)",
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_names() {
        assert_eq!(api_cluster("acme.k8s.gw.test", "gw.test"), Some("acme"));
        assert_eq!(api_cluster("k8s.gw.test", "gw.test"), None);
        assert_eq!(api_cluster(".k8s.gw.test", "gw.test"), None);
        assert_eq!(api_cluster("a.acme.k8s.gw.test", "gw.test"), None);
        assert_eq!(api_cluster("acme.k8s.gw.testx", "gw.test"), None);
        assert_eq!(api_cluster("acme.gw.test", "gw.test"), None);
        assert_eq!(
            server_url("acme", "gw.test", 8443),
            "https://acme.k8s.gw.test:8443"
        );
        assert_eq!(
            server_url("acme", "gw.test", 443),
            "https://acme.k8s.gw.test"
        );
    }

    #[test]
    fn verbs() {
        let cases = [
            ("GET", "/api/v1/namespaces/a/pods", None, "list"),
            ("GET", "/api/v1/pods", None, "list"),
            (
                "GET",
                "/api/v1/namespaces/a/pods",
                Some("watch=true"),
                "watch",
            ),
            ("GET", "/api/v1/watch/namespaces/a/pods", None, "watch"),
            ("GET", "/api/v1/namespaces/a/pods/p", None, "get"),
            ("GET", "/api/v1/namespaces", None, "list"),
            ("GET", "/api/v1/namespaces/a", None, "get"),
            ("DELETE", "/api/v1/namespaces/a", None, "delete"),
            (
                "POST",
                "/apis/apps/v1/namespaces/a/deployments",
                None,
                "create",
            ),
            (
                "PATCH",
                "/apis/apps/v1/namespaces/a/deployments/d",
                None,
                "patch",
            ),
            (
                "PUT",
                "/apis/apps/v1/namespaces/a/deployments/d/status",
                None,
                "update",
            ),
            (
                "DELETE",
                "/api/v1/namespaces/a/pods",
                None,
                "deletecollection",
            ),
            (
                "GET",
                "/api/v1/namespaces/a/pods/p/exec",
                Some("command=ls"),
                "exec",
            ),
            ("POST", "/api/v1/namespaces/a/pods/p/exec", None, "exec"),
            ("POST", "/api/v1/namespaces/a/pods/p/attach", None, "attach"),
            (
                "POST",
                "/api/v1/namespaces/a/pods/p/portforward",
                None,
                "portforward",
            ),
            (
                "GET",
                "/api/v1/namespaces/a/pods/p/log",
                Some("follow=true"),
                "log",
            ),
            ("GET", "/version", None, "get"),
            ("GET", "/apis", None, "get"),
            ("BREW", "/api/v1/pods", None, "other"),
        ];
        for (m, p, q, want) in cases {
            assert_eq!(verb(m, p, q), want, "{m} {p} {q:?}");
        }
    }
}
