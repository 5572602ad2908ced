//! The gateway's own endpoints: `/healthz` (the process answers), `/readyz` (it can serve),
//! `/metrics` (Prometheus text).

use actix_web::HttpResponse;

use crate::AppState;

pub fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

pub fn readyz(state: &AppState) -> HttpResponse {
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
