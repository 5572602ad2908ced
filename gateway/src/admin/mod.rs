//! The admin API (`/admin/v1/…`) on the internal listener: tenants at run time. Every call
//! needs `Authorization: Bearer` one of the `--admin-token`s (several, for rotation); failures
//! are counted and throttled per source like agent tokens. JSON in and out; unknown fields are
//! refused; errors are `{"error":{"code","message"}}` with the right 4xx. Changes apply on
//! every node without restart: an event tells the others at once, and each node reloads the
//! records every few seconds in case it missed one; tunnels whose token was revoked, or whose
//! cluster was deleted, are closed on every node.
//!
//! The gateway's own endpoints on the internal listener (`--admin-listen`) live here too:
//! [`probes`] (`/healthz`, `/readyz`, `/metrics`).

mod access;
mod clusters;
mod domains;
mod probes;
mod reply;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};

pub use access::kubeconfig;
pub use clusters::reconcile;
pub use domains::recheck;
pub use probes::{healthz, metrics, metrics_handler, readyz, readyz_handler};
use reply::error;

/// The OpenAPI 3 document of this API (served at `GET /admin/v1/openapi.json`).
pub const OPENAPI: &str = include_str!("openapi.json");

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
                .route(web::post().to(clusters::create_cluster))
                .route(web::get().to(clusters::list_clusters)),
        )
        .service(
            resource("/admin/v1/clusters/{id}", "GET, DELETE")
                .route(web::get().to(clusters::get_cluster))
                .route(web::delete().to(clusters::delete_cluster)),
        )
        .service(
            resource("/admin/v1/clusters/{id}/tokens", "POST")
                .route(web::post().to(clusters::add_token)),
        )
        .service(
            resource("/admin/v1/clusters/{id}/rate-limit", "PUT")
                .route(web::put().to(clusters::set_rate_limit)),
        )
        .service(
            resource("/admin/v1/clusters/{id}/tokens/{token_id}", "DELETE")
                .route(web::delete().to(clusters::revoke_token)),
        )
        .service(
            resource("/admin/v1/clusters/{id}/access-tokens", "GET, POST")
                .route(web::post().to(access::issue))
                .route(web::get().to(access::list)),
        )
        .service(
            resource("/admin/v1/clusters/{id}/access-tokens/{token_id}", "DELETE")
                .route(web::delete().to(access::revoke)),
        )
        .service(
            resource("/admin/v1/clusters/{id}/domains", "GET, POST")
                .route(web::post().to(domains::add))
                .route(web::get().to(domains::list)),
        )
        .service(
            resource("/admin/v1/clusters/{id}/domains/{hostname}", "GET, DELETE")
                .route(web::get().to(domains::get))
                .route(web::delete().to(domains::delete)),
        )
        .service(
            resource("/admin/v1/clusters/{id}/domains/{hostname}/verify", "POST")
                .route(web::post().to(domains::verify)),
        );
}
