//! The Tunnelgate agent: dials out to a gateway, keeps one multiplexed WebSocket tunnel open,
//! and serves the requests that arrive on it from local upstreams. This is the agent's
//! non-Kubernetes mode: routes come from `--route` flags or a `--config` file.
//!
//! # Layout
//! - [`config`]: command line, environment and config file.
//! - [`backoff`]: reconnect delays with jitter.
//! - [`upstream`]: rule matching and the pooled upstream HTTP client.
//! - [`tunnel`]: a session per connection, a task per stream.

pub mod backoff;
pub mod config;
pub mod tunnel;
pub mod upstream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tunnelgate_proto::control::RouteRejection;

use config::{Config, LogFormat, STABLE_CONNECTION};
use tunnel::session::{self, End};
use upstream::{Rules, UpstreamClient};

/// What the agent is doing, for callers that embed it (tests, a future status endpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Starting,
    Connecting {
        gateway: String,
    },
    /// Registered and routes acknowledged.
    Connected {
        gateway: String,
        node_id: String,
        accepted: usize,
        rejected: Vec<RouteRejection>,
    },
    Disconnected {
        error: String,
        retry_in: Duration,
    },
}

/// What sessions share.
pub struct Shared {
    pub config: Config,
    pub rules: Arc<Rules>,
    pub client: UpstreamClient,
    pub status: watch::Sender<Status>,
}

/// Installs the global log subscriber (JSON or text on stdout, `RUST_LOG` filter).
pub fn init_logs(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Runs the agent until `shutdown` turns true: connect, serve, reconnect with backoff,
/// rotating through the gateway URLs. `config` must be validated.
pub async fn run(
    config: Config,
    status: watch::Sender<Status>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let rules = Rules::new(&config.routes)?;
    let client = upstream::client(config.upstream_connect_timeout);
    let mut backoff = backoff::Backoff::new(config.reconnect_min, config.reconnect_max);
    let shared = Shared {
        config,
        rules,
        client,
        status,
    };
    let gateways = shared.config.gateways.clone();
    let mut turn = 0usize;
    loop {
        let gateway = &gateways[turn % gateways.len()];
        shared.status.send_replace(Status::Connecting {
            gateway: gateway.clone(),
        });
        let started = Instant::now();
        let error = match session::run(&shared, gateway, shutdown.clone()).await {
            Ok(End::Shutdown) => return Ok(()),
            Ok(End::Drain) => "drained by the gateway".to_string(),
            Err(e) => e.to_string(),
        };
        if started.elapsed() >= STABLE_CONNECTION {
            backoff.reset();
        }
        turn += 1;
        let delay = backoff.next_delay(&mut rand::rng());
        tracing::warn!(gateway, error = %error, retry_in_ms = delay.as_millis() as u64, "tunnel down; reconnecting");
        shared.status.send_replace(Status::Disconnected {
            error,
            retry_in: delay,
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return Ok(()),
        }
        if *shutdown.borrow() {
            return Ok(());
        }
    }
}
