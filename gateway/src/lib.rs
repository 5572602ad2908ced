//! The Tunnelgate gateway node: serves public HTTP, accepts agent tunnels on `/v1/tunnel`, and
//! streams each request through the tunnel of the cluster that owns its host.
//!
//! # Layout
//! - [`config`]: command line and environment, validated.
//! - [`registry`]: clusters, tokens and routes; who may claim which host.
//! - [`tunnel`]: the agent endpoint, `TunnelActor` per agent, `StreamActor` per request, hub.
//! - [`proxy`]: the public HTTP handler: checks, routing, header rewriting, streaming.
//! - [`error`]: proxy-path errors and the one place they become responses.
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`telemetry`]: metric names and log set-up.

pub mod admin;
pub mod config;
pub mod error;
pub mod proxy;
pub mod registry;
pub mod telemetry;
pub mod tunnel;

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{App, HttpServer, web};

use config::Config;
use registry::Registry;
use telemetry::metrics::Metrics;
use tunnel::Hub;

/// What every worker shares.
pub struct AppState {
    pub config: Config,
    pub registry: Arc<Registry>,
    pub hub: Hub,
    pub metrics: Metrics,
}

impl AppState {
    pub fn new(config: Config) -> Self {
        let registry = Registry::in_memory(&config.domain, &config.clusters);
        AppState {
            config,
            registry,
            hub: Hub::default(),
            metrics: Metrics::default(),
        }
    }
}

/// Builds the server on an already bound listener. Await the returned [`Server`] inside an
/// actix system; its handle stops it.
pub fn run(config: Config, listener: TcpListener) -> std::io::Result<Server> {
    let workers = config.workers;
    let state = web::Data::new(AppState::new(config));
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(web::PayloadConfig::new(usize::MAX))
            .default_service(web::to(proxy::dispatch))
    })
    .on_connect(|conn, _ext| {
        // Tunnels carry many small frames each way; Nagle's algorithm would hold each one
        // back for the peer's delayed ACK (tens of milliseconds per request).
        if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
            let _ = tcp.set_nodelay(true);
        }
    })
    .listen(listener)?;
    if let Some(w) = workers {
        server = server.workers(w.max(1));
    }
    Ok(server.run())
}
