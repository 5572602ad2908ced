//! The admin API (`/admin/v1/…`) on the internal listener: tenants at run time. Every call
//! needs `Authorization: Bearer` one of the `--admin-token`s (several, for rotation); failures
//! are counted and throttled per source like agent tokens. JSON in and out; unknown fields are
//! refused; errors are `{"error":{"code","message"}}` with the right 4xx. Changes apply on
//! every node without restart: an event tells the others at once, and each node reloads the
//! records every few seconds in case it missed one; tunnels whose token was revoked, or whose
//! cluster was deleted, are closed on every node.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::registry::{ClusterRecord, TenantError};

/// The OpenAPI 3 document of this API (served at `GET /admin/v1/openapi.json`).
pub const OPENAPI: &str = include_str!("admin_openapi.json");

pub(crate) fn error(
    status: StatusCode,
    code: &str,
    message: impl std::fmt::Display,
) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({
        "error": {"code": code, "message": message.to_string()}
    }))
}

pub(crate) fn tenant_error(e: TenantError) -> HttpResponse {
    match &e {
        TenantError::Invalid(_) => error(StatusCode::BAD_REQUEST, "invalid", e),
        TenantError::Exists(_) => error(StatusCode::CONFLICT, "exists", e),
        TenantError::Reserved(_) => error(StatusCode::CONFLICT, "reserved", e),
        TenantError::Conflict(_) => error(StatusCode::CONFLICT, "conflict", e),
        TenantError::NoCluster(_) | TenantError::NoToken(..) | TenantError::NoDomain(..) => {
            error(StatusCode::NOT_FOUND, "not_found", e)
        }
        TenantError::Registry(_) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "registry_unavailable", e)
        }
    }
}

/// Checks the caller's admin token; the refusal to send otherwise.
pub(crate) fn authorize(req: &HttpRequest, state: &AppState) -> Result<(), Box<HttpResponse>> {
    let ip = req.peer_addr().map(|p| p.ip());
    if let Err(wait) = state.auth_guard.check(ip) {
        state.metrics.auth_failure("admin_throttled");
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            "throttled",
            "too many failed authentications from this address; retry later",
        );
        crate::guard::set_retry_after(&mut r, wait);
        return Err(Box::new(r));
    }
    let presented = crate::guard::bearer_token(req).unwrap_or("");
    let ok = !presented.is_empty()
        && state
            .config
            .admin_tokens
            .iter()
            .any(|t| crate::cluster::same_secret(presented, t.expose()));
    if ok {
        return Ok(());
    }
    state.metrics.auth_failure("bad_admin_token");
    let _ = state.auth_guard.failed(ip);
    Err(Box::new(error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        if state.config.admin_tokens.is_empty() {
            "no --admin-token is configured: the admin API is off"
        } else {
            "missing or wrong admin token (Authorization: Bearer …)"
        },
    )))
}

/// A cluster as the API shows it: its record (no secrets) and its live state on this node.
#[derive(Serialize)]
struct ClusterView {
    id: String,
    uuid: String,
    created_at: u64,
    token_ids: Vec<String>,
    /// Live tunnels on this node.
    tunnels_here: usize,
    /// Live tunnels on every node.
    tunnels: usize,
    /// The nodes holding them.
    nodes: Vec<String>,
    /// True when some node holds a live tunnel of the cluster.
    online: bool,
    routes: usize,
    /// The cluster's own request rate limit, when the admin API set one.
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit: Option<crate::ratelimit::Limit>,
    /// The distinct versions of its connected agents.
    agent_versions: Vec<String>,
    /// The newest heartbeat of any of its agents (ms since the epoch; 0: none yet).
    last_heartbeat_ms: u64,
    /// Whether its agents judged the cluster private (no public ingress), when they said.
    #[serde(skip_serializing_if = "Option::is_none")]
    is_private: Option<bool>,
    /// Each agent connection, on every node.
    agents: Vec<crate::registry::agents::AgentInfo>,
}

async fn view(state: &AppState, rec: &ClusterRecord) -> ClusterView {
    let here = state.hub.count(&rec.name);
    let mut nodes = Vec::new();
    if here > 0 {
        nodes.push(state.config.node_id().to_string());
    }
    let mut tunnels = here;
    if state.registry.is_shared()
        && let Ok(owners) = state.registry.remote_owners(&rec.name).await
    {
        for o in owners.iter() {
            tunnels += o.conns.len();
            nodes.push(o.node_id.clone());
        }
    }
    let agents = state.registry.agents(&rec.name).await;
    let mut agent_versions: Vec<String> = agents.iter().map(|a| a.agent_version.clone()).collect();
    agent_versions.sort();
    agent_versions.dedup();
    ClusterView {
        agent_versions,
        last_heartbeat_ms: agents
            .iter()
            .map(|a| a.last_heartbeat_ms)
            .max()
            .unwrap_or(0),
        is_private: agents.iter().find_map(|a| a.is_private),
        agents,
        id: rec.name.clone(),
        uuid: rec.uuid.clone(),
        created_at: rec.created_at,
        token_ids: rec.token_ids(),
        tunnels_here: here,
        tunnels,
        online: !nodes.is_empty(),
        nodes,
        routes: state.registry.route_count(&rec.name),
        rate_limit: rec.rate_limit,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCluster {
    id: String,
}

/// Closes local tunnels whose token is no longer valid.
fn enforce(state: &AppState) {
    let n = state
        .hub
        .revoke_where(|c, t| !state.registry.token_valid(c, t));
    if n > 0 {
        tracing::info!(
            tunnels = n,
            "closed tunnels of revoked tokens or deleted clusters"
        );
    }
}

pub(crate) fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Box<HttpResponse>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("request body: {e}"),
        ))
    })
}

async fn create_cluster(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Err(r) = authorize(&req, &state) {
        return *r;
    }
    let n: NewCluster = match parse(&body) {
        Ok(n) => n,
        Err(r) => return *r,
    };
    match state.registry.create_cluster(&n.id).await {
        Ok((rec, token_id, token)) => {
            tracing::info!(cluster = %rec.name, %token_id, "cluster created");
            HttpResponse::Created().json(serde_json::json!({
                "id": rec.name, "uuid": rec.uuid, "token_id": token_id, "token": token,
            }))
        }
        Err(e) => tenant_error(e),
    }
}

async fn list_clusters(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Err(r) = authorize(&req, &state) {
        return *r;
    }
    let mut items = Vec::new();
    for rec in state.registry.clusters() {
        items.push(view(&state, &rec).await);
    }
    HttpResponse::Ok().json(serde_json::json!({ "items": items }))
}

async fn get_cluster(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Err(r) = authorize(&req, &state) {
        return *r;
    }
    match state.registry.cluster(&path) {
        Some(rec) => HttpResponse::Ok().json(view(&state, &rec).await),
        None => tenant_error(TenantError::NoCluster(path.into_inner())),
    }
}

async fn delete_cluster(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Err(r) = authorize(&req, &state) {
        return *r;
    }
    match state.registry.delete_cluster(&path).await {
        Ok(()) => {
            tracing::info!(cluster = %path, "cluster deleted");
            enforce(&state);
            HttpResponse::NoContent().finish()
        }
        Err(e) => tenant_error(e),
    }
}

async fn add_token(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Err(r) = authorize(&req, &state) {
        return *r;
    }
    if !body.is_empty() {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Empty {}
        if let Err(r) = parse::<Empty>(&body) {
            return *r;
        }
    }
    match state.registry.add_token(&path).await {
        Ok((token_id, token)) => {
            tracing::info!(cluster = %path, %token_id, "token issued");
            HttpResponse::Created().json(serde_json::json!({"token_id": token_id, "token": token}))
        }
        Err(e) => tenant_error(e),
    }
}

async fn revoke_token(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Err(r) = authorize(&req, &state) {
        return *r;
    }
    let (cluster, token_id) = path.into_inner();
    match state.registry.revoke_token(&cluster, &token_id).await {
        Ok(()) => {
            tracing::info!(%cluster, %token_id, "token revoked");
            enforce(&state);
            HttpResponse::NoContent().finish()
        }
        Err(e) => tenant_error(e),
    }
}

async fn set_rate_limit(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Err(r) = authorize(&req, &state) {
        return *r;
    }
    let limit: crate::ratelimit::Limit = match parse(&body) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    match state.registry.set_rate_limit(&path, limit).await {
        Ok(()) => {
            tracing::info!(cluster = %path, rps = limit.requests_per_second, burst = limit.burst, "rate limit set");
            HttpResponse::Ok().json(limit)
        }
        Err(e) => tenant_error(e),
    }
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

/// 405 with the methods `path` has (RFC 9110 wants them in `Allow`).
fn method_not_allowed(allow: &'static str) -> HttpResponse {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("this path takes {allow} (see /admin/v1/openapi.json)"),
    );
    r.headers_mut().insert(
        actix_web::http::header::ALLOW,
        actix_web::http::header::HeaderValue::from_static(allow),
    );
    r
}

/// The admin API's routes; other methods on them get 405 with `Allow`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    let resource = |path: &str, allow: &'static str| {
        web::resource(path.to_string())
            .default_service(web::to(move || async move { method_not_allowed(allow) }))
    };
    cfg.service(resource("/admin/v1/openapi.json", "GET").route(web::get().to(openapi)))
        .service(
            resource("/admin/v1/clusters", "GET, POST")
                .route(web::post().to(create_cluster))
                .route(web::get().to(list_clusters)),
        )
        .service(
            resource("/admin/v1/clusters/{id}", "GET, DELETE")
                .route(web::get().to(get_cluster))
                .route(web::delete().to(delete_cluster)),
        )
        .service(
            resource("/admin/v1/clusters/{id}/tokens", "POST").route(web::post().to(add_token)),
        )
        .service(
            resource("/admin/v1/clusters/{id}/rate-limit", "PUT")
                .route(web::put().to(set_rate_limit)),
        )
        .service(
            resource("/admin/v1/clusters/{id}/tokens/{token_id}", "DELETE")
                .route(web::delete().to(revoke_token)),
        )
        .service(
            resource("/admin/v1/clusters/{id}/access-tokens", "GET, POST")
                .route(web::post().to(crate::admin_access::issue))
                .route(web::get().to(crate::admin_access::list)),
        )
        .service(
            resource("/admin/v1/clusters/{id}/access-tokens/{token_id}", "DELETE")
                .route(web::delete().to(crate::admin_access::revoke)),
        )
        .service(
            resource("/admin/v1/clusters/{id}/domains", "GET, POST")
                .route(web::post().to(crate::admin_domains::add))
                .route(web::get().to(crate::admin_domains::list)),
        )
        .service(
            resource("/admin/v1/clusters/{id}/domains/{hostname}", "GET, DELETE")
                .route(web::get().to(crate::admin_domains::get))
                .route(web::delete().to(crate::admin_domains::delete)),
        )
        .service(
            resource("/admin/v1/clusters/{id}/domains/{hostname}/verify", "POST")
                .route(web::post().to(crate::admin_domains::verify)),
        );
}

/// Keeps this node's view of the tenants current: reloads the records every few seconds with
/// Redis (a missed event heals) and closes tunnels whose token is no longer valid.
pub async fn reconcile(state: std::sync::Arc<AppState>) {
    let mut tick = tokio::time::interval(RECONCILE_EVERY);
    let mut n: u32 = 0;
    loop {
        tick.tick().await;
        n = n.wrapping_add(1);
        if state.registry.is_shared() && n.is_multiple_of(RELOAD_EVERY_TICKS) {
            let _ = state.registry.sync_clusters().await;
        }
        enforce(&state);
    }
}

/// How often local tunnels are checked against the tokens.
const RECONCILE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// Ticks between reloads of the records from Redis.
const RELOAD_EVERY_TICKS: u32 = 3;
