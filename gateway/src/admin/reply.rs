//! What every admin call shares: the admin-token check (throttled per source), JSON bodies
//! with unknown fields refused, and errors as `{"error":{"code","message"}}`.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use serde::Deserialize;

use crate::AppState;
use crate::registry::TenantError;

pub fn error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({
        "error": {"code": code, "message": message.to_string()}
    }))
}

pub fn tenant_error(e: TenantError) -> HttpResponse {
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
pub fn authorize(req: &HttpRequest, state: &AppState) -> Result<(), Box<HttpResponse>> {
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
    let presented = crate::guard::bearer_token(req.headers()).unwrap_or("");
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

pub fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Box<HttpResponse>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("request body: {e}"),
        ))
    })
}
