//! The admin API's clusters: create, list, show, delete; agent tokens; rate limits; and the
//! reconcile loop that reloads the records and closes tunnels of revoked tokens.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};

use super::reply::{authorize, parse, tenant_error};
use crate::AppState;
use crate::registry::{ClusterRecord, TenantError};

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

pub(super) async fn create_cluster(
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

pub(super) async fn list_clusters(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Err(r) = authorize(&req, &state) {
        return *r;
    }
    let mut items = Vec::new();
    for rec in state.registry.clusters() {
        items.push(view(&state, &rec).await);
    }
    HttpResponse::Ok().json(serde_json::json!({ "items": items }))
}

pub(super) async fn get_cluster(
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

pub(super) async fn delete_cluster(
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

pub(super) async fn add_token(
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

pub(super) async fn revoke_token(
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

pub(super) async fn set_rate_limit(
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
