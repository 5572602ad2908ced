//! The gateway's own endpoints, on the internal listener (`--admin-listen`), never on the
//! public one: `/healthz` (the process answers), `/readyz` (it can serve), `/metrics`
//! (Prometheus text, which names every tenant). `/healthz` also answers on the gateway's own
//! public names, for load balancers.

use actix_web::{HttpResponse, web};

use crate::AppState;

pub async fn readyz_handler(state: web::Data<AppState>) -> HttpResponse {
    readyz(&state)
}

pub async fn metrics_handler(state: web::Data<AppState>) -> HttpResponse {
    metrics(&state)
}

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

pub fn readyz(state: &AppState) -> HttpResponse {
    if state.is_draining() {
        // Load balancers stop sending here; requests still arriving are served.
        return HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("draining: this node is shutting down\n");
    }
    if state.registry.is_healthy() {
        HttpResponse::Ok()
            .content_type("text/plain")
            .body("ready\n")
    } else {
        // Still 200: the node serves cached routes and its own tunnels, and taking every node
        // out of the load balancer because Redis blinked would be a full outage.
        HttpResponse::Ok()
            .content_type("text/plain")
            .insert_header(("x-tunnelgate-degraded", "registry"))
            .body("degraded: registry unreachable; serving cached routes and local tunnels\n")
    }
}

pub fn metrics(state: &AppState) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(state.metrics.encode())
}
