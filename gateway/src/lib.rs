//! The Tunnelgate gateway node: serves public HTTP, accepts agent tunnels on `/v1/tunnel`, and
//! streams each request through the tunnel of the cluster that owns its host.
//!
//! # Layout
//! - [`config`]: command line and environment, validated.
//! - [`registry`]: clusters, tokens and routes; who may claim which host.
//! - [`tunnel`]: the agent endpoint, `TunnelActor` per agent, a stream task per request, hub.
//! - [`cluster`]: peer links to other nodes, the peer endpoint, membership.
//! - [`ratelimit`]: per-cluster request rate limits, shared by every node through Redis.
//! - [`proxy`]: the public HTTP handler: checks, routing, header rewriting, streaming.
//! - [`error`]: proxy-path errors and the one place they become responses.
//! - [`admin`]: the internal listener: the admin API (`/admin/v1/…`: tenants, tokens,
//!   domains, access tokens at run time) and `/healthz`, `/readyz`, `/metrics`.
//! - [`node`]: a node's listeners, servers and background tasks: `run(config, listeners,
//!   shutdown)`, every task joined when it stops.
//! - [`guard`]: throttling of failed authentications per source address.
//! - [`telemetry`]: metric names and log set-up.
//! - [`tls`]: HTTPS at the edge: certificates by SNI, reloaded when their files change.

#[macro_use]
mod macros;

pub mod acme;
pub mod admin;
pub mod cluster;
pub mod config;
pub mod dns;
pub mod drain;
pub mod error;
pub mod guard;
pub mod node;
pub mod overload;
pub mod proxy;
pub mod ratelimit;
pub mod registry;
pub mod telemetry;
pub mod tls;
pub mod tunnel;

use std::sync::Arc;

use config::Config;
use registry::Registry;
use telemetry::metrics::Metrics;
use tunnel::Hub;

/// What every worker shares.
pub struct AppState {
    pub config: Config,
    /// Open connections on the public listeners and the memory check (`overload`).
    pub load: Arc<overload::Load>,
    pub registry: Arc<Registry>,
    pub hub: Hub,
    pub peers: cluster::PeerPool,
    pub metrics: Metrics,
    /// Failed authentications per source, for the agent and peer endpoints.
    pub auth_guard: guard::AuthGuard,
    /// Per-cluster budgets for what agents send.
    pub limits: tunnel::limits::ClusterLimits,
    /// Mutual TLS for peer links, when configured.
    pub peer_tls: Option<tls::PeerTls>,
    /// Per-cluster request rate limits.
    pub rate_limits: ratelimit::RateLimits,
    /// The resolver custom-domain checks use (none when the system's cannot be read).
    pub dns: Option<dns::Dns>,
    /// ACME for verified custom domains (`--acme-directory`).
    pub acme: Option<acme::Acme>,
    /// The certificates ACME issued, served by SNI on the TLS listener.
    pub issued: Arc<tls::IssuedCerts>,
    /// Set on SIGTERM: `/readyz` fails and new tunnels are refused (`drain.rs`).
    pub draining: std::sync::atomic::AtomicBool,
}

impl AppState {
    /// The node is draining (`drain.rs`).
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn new(config: Config) -> Result<Self, String> {
        let metrics = Metrics::default();
        let registry = match &config.redis_url {
            None => Registry::in_memory(&config.domain, &config.clusters),
            Some(url) => {
                let (calls, cache) = (metrics.backend_calls.clone(), metrics.route_cache.clone());
                let count: registry::redis::CallCounter = Arc::new(move |op| {
                    if let Some(outcome) = op.strip_prefix("cache_") {
                        let reason = if outcome == "hit" { "hit" } else { "miss" };
                        cache
                            .get_or_create(&telemetry::metrics::ReasonLabels { reason })
                            .inc();
                    } else {
                        calls
                            .get_or_create(&telemetry::metrics::OpLabels { op })
                            .inc();
                    }
                });
                Registry::with_redis(
                    &config.domain,
                    config.node_id(),
                    &config.clusters,
                    url,
                    count,
                )
                .map_err(|e| e.to_string())?
            }
        };
        let registry = registry.with_policy(
            registry::Quotas {
                max_routes: config.max_routes_per_cluster,
                max_bytes: config.max_route_bytes_per_cluster,
            },
            config.public_hosts.clone(),
        );
        let limits = tunnel::limits::ClusterLimits::new(config.cluster_connect_rate.max(1));
        let peer_tls = match (&config.peer_cert, &config.peer_key, &config.peer_ca) {
            (Some(c), Some(k), Some(ca)) => Some(tls::PeerTls::load(c, k, ca)?),
            _ => None,
        };
        let dns = match dns::Dns::new(config.dns_server) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(error = %e, "custom domains cannot be verified until --dns-server is given");
                None
            }
        };
        let acme = match &config.acme_directory {
            None => None,
            Some(dir) => {
                if config.redis_url.is_some() && config.state_key.is_none() {
                    return Err("--acme-directory with --redis-url needs --state-key (openssl rand -hex 32): certificate keys are stored sealed with it".into());
                }
                let sealer = acme::Sealer::new(config.state_key.as_ref().map(|k| k.expose()))?;
                Some(acme::Acme::new(
                    dir.clone(),
                    config.acme_email.clone(),
                    config.acme_ca.clone(),
                    sealer,
                ))
            }
        };
        Ok(AppState {
            load: overload::Load::new(config.max_connections),
            acme,
            issued: Arc::default(),
            draining: Default::default(),
            dns,
            rate_limits: ratelimit::RateLimits::default(),
            peer_tls,
            limits,
            config,
            registry,
            hub: Hub::default(),
            peers: cluster::PeerPool::default(),
            metrics,
            auth_guard: guard::AuthGuard::default(),
        })
    }
}

pub use node::{Listeners, run};
