//! The admin API's custom domains (`/admin/v1/clusters/{id}/domains`) and the recheck loop:
//! register a hostname (what to publish in DNS comes back), verify it now, list, get, delete;
//! every `--domain-recheck` each registered domain is checked again, so one whose record went
//! away or points elsewhere is suspended and stops serving.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};

use super::reply::{authorize, error, parse, tenant_error};
use crate::AppState;
use crate::dns::Proof;
use crate::registry::domains::{DomainRecord, DomainStatus};
use crate::registry::{ClusterRecord, TenantError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDomain {
    hostname: String,
}

/// A domain as the API shows it, with what the tenant must publish.
#[derive(Serialize)]
struct DomainView {
    hostname: String,
    status: DomainStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// A CNAME from the hostname to this name proves it (not for an apex).
    cname_target: String,
    /// Or a TXT record with this name and value (an apex: with A/AAAA records to `addresses`).
    txt_name: String,
    txt_value: String,
    /// The gateway's public addresses (`--public-address`), for an apex's A/AAAA records.
    addresses: Vec<String>,
    created_at: u64,
    checked_at: u64,
    /// Its ACME certificate, with `--acme-directory`.
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate: Option<CertView>,
}

/// A domain's certificate as the API shows it (never the key).
#[derive(Serialize)]
struct CertView {
    /// `issued` (served; a failed renewal shows in `last_error`), `failed` (none yet; retried
    /// at `next_attempt_ms`) or `pending`.
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    issuer: Option<String>,
    not_after_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    next_attempt_ms: u64,
}

async fn cert_view(state: &AppState, d: &DomainRecord) -> Option<CertView> {
    state.acme.as_ref()?;
    let c = state.registry.cert(&d.hostname).await;
    Some(match c {
        Some(c) => CertView {
            status: match (&c.chain_pem, &c.last_error) {
                (Some(_), _) => "issued",
                (None, Some(_)) => "failed",
                (None, None) => "pending",
            },
            issuer: c.issuer,
            not_after_ms: c.not_after_ms,
            last_error: c.last_error,
            next_attempt_ms: c.next_attempt_ms,
        },
        None => CertView {
            status: "pending",
            issuer: None,
            not_after_ms: 0,
            last_error: None,
            next_attempt_ms: 0,
        },
    })
}

async fn view(state: &AppState, rec: &ClusterRecord, d: &DomainRecord) -> DomainView {
    let bare = d.hostname.trim_start_matches("*.");
    DomainView {
        certificate: cert_view(state, d).await,
        hostname: d.hostname.clone(),
        status: d.status,
        reason: d.reason.clone(),
        cname_target: state.registry.cname_target(rec),
        txt_name: format!("_tunnelgate.{bare}"),
        txt_value: d.challenge.clone(),
        addresses: state.config.public_addresses.clone(),
        created_at: d.created_at,
        checked_at: d.checked_at,
    }
}

fn find(
    state: &AppState,
    cluster: &str,
    hostname: &str,
) -> Result<(ClusterRecord, DomainRecord), TenantError> {
    let rec = state
        .registry
        .cluster(cluster)
        .ok_or_else(|| TenantError::NoCluster(cluster.into()))?;
    // A name that is not a valid domain cannot be one of the cluster's.
    let host = crate::registry::domains::canonical(hostname)
        .map_err(|_| TenantError::NoDomain(cluster.into(), hostname.into()))?;
    let d = rec
        .domains
        .iter()
        .find(|d| d.hostname == host)
        .cloned()
        .ok_or_else(|| TenantError::NoDomain(cluster.into(), host))?;
    Ok((rec, d))
}

pub async fn add(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Err(r) = authorize(&req, &state) {
        return *r;
    }
    let n: NewDomain = match parse(&body) {
        Ok(n) => n,
        Err(r) => return *r,
    };
    let cluster = path.into_inner();
    match state.registry.add_domain(&cluster, &n.hostname).await {
        Ok(d) => {
            tracing::info!(%cluster, hostname = %d.hostname, "custom domain registered");
            match state.registry.cluster(&cluster) {
                Some(rec) => HttpResponse::Created().json(view(&state, &rec, &d).await),
                None => tenant_error(TenantError::NoCluster(cluster)),
            }
        }
        Err(e) => tenant_error(e),
    }
}

pub async fn list(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Err(r) = authorize(&req, &state) {
        return *r;
    }
    let Some(rec) = state.registry.cluster(&path) else {
        return tenant_error(TenantError::NoCluster(path.into_inner()));
    };
    let mut items: Vec<DomainView> = Vec::new();
    for d in &rec.domains {
        items.push(view(&state, &rec, d).await);
    }
    HttpResponse::Ok().json(serde_json::json!({ "items": items }))
}

pub async fn get(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Err(r) = authorize(&req, &state) {
        return *r;
    }
    let (cluster, hostname) = path.into_inner();
    match find(&state, &cluster, &hostname) {
        Ok((rec, d)) => HttpResponse::Ok().json(view(&state, &rec, &d).await),
        Err(e) => tenant_error(e),
    }
}

pub async fn delete(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Err(r) = authorize(&req, &state) {
        return *r;
    }
    let (cluster, hostname) = path.into_inner();
    match state.registry.delete_domain(&cluster, &hostname).await {
        Ok(()) => {
            tracing::info!(%cluster, %hostname, "custom domain removed");
            HttpResponse::NoContent().finish()
        }
        Err(e) => tenant_error(e),
    }
}

/// Checks one domain in DNS now and records the outcome.
async fn check(
    state: &AppState,
    rec: &ClusterRecord,
    d: &DomainRecord,
) -> Result<DomainRecord, TenantError> {
    let Some(dns) = &state.dns else {
        return Err(TenantError::Invalid(
            "no DNS resolver: the system's configuration could not be read; give --dns-server"
                .into(),
        ));
    };
    if let Some(parent) = d.hostname.strip_prefix("*.") {
        // A wildcard stands on its parent's proof.
        let p = rec
            .domains
            .iter()
            .find(|p| p.hostname == parent)
            .cloned()
            .ok_or_else(|| TenantError::NoDomain(rec.name.clone(), parent.into()))?;
        check_exact(dns, state, rec, &p).await?;
        return find(state, &rec.name, &d.hostname).map(|(_, d)| d);
    }
    check_exact(dns, state, rec, d).await
}

async fn check_exact(
    dns: &crate::dns::Dns,
    state: &AppState,
    rec: &ClusterRecord,
    d: &DomainRecord,
) -> Result<DomainRecord, TenantError> {
    let target = state.registry.cname_target(rec);
    let proven = match dns.prove(&d.hostname, &target, &d.challenge).await {
        Proof::Cname | Proof::Txt => Ok(()),
        Proof::None(why) => Err(why),
    };
    let before = d.status;
    let after = state
        .registry
        .set_domain_check(&rec.name, &d.hostname, proven)
        .await?;
    if before != after.status {
        match after.status {
            DomainStatus::Suspended => tracing::warn!(
                cluster = %rec.name, hostname = %d.hostname, reason = after.reason.as_deref().unwrap_or(""),
                "custom domain suspended: its DNS record no longer proves it; its routes stop serving"
            ),
            s => {
                tracing::info!(cluster = %rec.name, hostname = %d.hostname, status = ?s, "custom domain checked")
            }
        }
    }
    Ok(after)
}

pub async fn verify(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Err(r) = authorize(&req, &state) {
        return *r;
    }
    let (cluster, hostname) = path.into_inner();
    let (rec, d) = match find(&state, &cluster, &hostname) {
        Ok(x) => x,
        Err(e) => return tenant_error(e),
    };
    match check(&state, &rec, &d).await {
        Ok(after) => HttpResponse::Ok().json(view(&state, &rec, &after).await),
        Err(TenantError::Invalid(m)) if state.dns.is_none() => {
            error(StatusCode::SERVICE_UNAVAILABLE, "no_resolver", m)
        }
        Err(e) => tenant_error(e),
    }
}

/// Every `--domain-recheck`: each registered domain checked again (verified ones suspended
/// when their record went away or points elsewhere; pending ones verified when it appeared).
pub async fn recheck(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(state.config.domain_recheck);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for rec in state.registry.clusters() {
            for d in rec.domains.iter().filter(|d| !d.hostname.starts_with("*.")) {
                if let Err(e) = check(&state, &rec, d).await {
                    tracing::debug!(cluster = %rec.name, hostname = %d.hostname, error = %e, "domain recheck skipped");
                }
            }
        }
    }
}
