//! The admin API's access tokens to each cluster's Kubernetes API
//! (`/admin/v1/clusters/{id}/access-tokens`): issued for one user and groups with a lifetime,
//! shown once with a ready kubeconfig, listed without secrets, revoked on every node within
//! seconds.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::reply::{authorize, error, parse, tenant_error};
use crate::AppState;
use crate::registry::TenantError;
use crate::registry::access::{AccessTokenRecord, DEFAULT_TTL};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAccessToken {
    user: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default = "default_ttl")]
    ttl_seconds: u64,
}

fn default_ttl() -> u64 {
    DEFAULT_TTL
}

/// An access token as listed (no secret, no hash).
#[derive(Serialize)]
struct AccessTokenView {
    token_id: String,
    user: String,
    groups: Vec<String>,
    created_at: u64,
    expires_at: u64,
}

impl From<&AccessTokenRecord> for AccessTokenView {
    fn from(r: &AccessTokenRecord) -> Self {
        AccessTokenView {
            token_id: r.id.clone(),
            user: r.user.clone(),
            groups: r.groups.clone(),
            created_at: r.created_at,
            expires_at: r.expires_at,
        }
    }
}

/// A YAML double-quoted scalar (JSON's string syntax is one).
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// A kubeconfig for `server` with `token`, trusting `ca_pem` when the gateway's CA is private.
pub fn kubeconfig(
    cluster: &str,
    user: &str,
    server: &str,
    token: &str,
    ca_pem: Option<&[u8]>,
) -> String {
    let context = format!("tunnelgate-{cluster}");
    let who = format!("{user}@{cluster}");
    let ca = match ca_pem {
        Some(pem) => format!(
            "\n    certificate-authority-data: {}",
            quoted(&base64::engine::general_purpose::STANDARD.encode(pem))
        ),
        None => String::new(),
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {c}\n  cluster:\n    server: {server}{ca}\n\
         users:\n- name: {u}\n  user:\n    token: {token}\n\
         contexts:\n- name: {c}\n  context:\n    cluster: {c}\n    user: {u}\n\
         current-context: {c}\n",
        c = quoted(&context),
        u = quoted(&who),
        server = quoted(server),
        token = quoted(token),
    )
}

pub async fn issue(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Err(r) = authorize(&req, &state) {
        return *r;
    }
    let n: NewAccessToken = match parse(&body) {
        Ok(n) => n,
        Err(r) => return *r,
    };
    let ca = match &state.config.public_ca {
        None => None,
        Some(f) => match std::fs::read(f) {
            Ok(pem) => Some(pem),
            Err(e) => {
                tracing::error!(file = %f.display(), error = %e, "--public-ca unreadable");
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "public_ca_unreadable",
                    format!("--public-ca {} cannot be read: {e}", f.display()),
                );
            }
        },
    };
    let cluster = path.into_inner();
    match state
        .registry
        .add_access_token(&cluster, &n.user, &n.groups, n.ttl_seconds)
        .await
    {
        Ok((rec, token)) => {
            tracing::info!(%cluster, token_id = %rec.id, user = %rec.user, groups = ?rec.groups, "kubernetes access token issued");
            let server = crate::proxy::kube::server_url(
                &cluster,
                &state.config.domain,
                state.config.https_port,
            );
            let kc = kubeconfig(&cluster, &rec.user, &server, &token, ca.as_deref());
            let mut v = serde_json::to_value(AccessTokenView::from(&rec)).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("token".into(), token.into());
                o.insert("server".into(), server.into());
                o.insert("kubeconfig".into(), kc.into());
            }
            HttpResponse::Created().json(v)
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
    let now = crate::registry::now_ms();
    let items: Vec<AccessTokenView> = rec
        .access_tokens
        .iter()
        .filter(|t| t.expires_at > now)
        .map(AccessTokenView::from)
        .collect();
    HttpResponse::Ok().json(serde_json::json!({ "items": items }))
}

pub async fn revoke(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Err(r) = authorize(&req, &state) {
        return *r;
    }
    let (cluster, token_id) = path.into_inner();
    match state
        .registry
        .revoke_access_token(&cluster, &token_id)
        .await
    {
        Ok(()) => {
            tracing::info!(%cluster, %token_id, "kubernetes access token revoked");
            HttpResponse::NoContent().finish()
        }
        Err(e) => tenant_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_quotes_what_it_is_given() {
        let k = kubeconfig(
            "acme",
            "al\"ice: x",
            "https://acme.k8s.gw.test:8443",
            "tgk_abc",
            Some(b"PEM"),
        );
        assert!(k.contains("server: \"https://acme.k8s.gw.test:8443\""));
        assert!(k.contains("token: \"tgk_abc\""));
        assert!(k.contains("certificate-authority-data: \"UEVN\""));
        assert!(k.contains("name: \"al\\\"ice: x@acme\""));
        assert!(k.contains("current-context: \"tunnelgate-acme\""));
        let k = kubeconfig("acme", "alice", "https://x", "t", None);
        assert!(!k.contains("certificate-authority"));
    }
}
