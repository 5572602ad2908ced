//! The agent's configuration: command line, then environment, then the `--config` file, then
//! defaults. Every key is listed in `docs/config.md`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
pub use tunnelgate_mux::config::{Secret, parse_duration};
use tunnelgate_proto::routes::{PathType, RouteSpec, check_route_host};

pub use crate::rules::Rule;
use crate::rules::root;

/// Tunnels an agent holds, each to a distinct gateway node.
pub const DEFAULT_CONNECTIONS: usize = 2;
/// First reconnect delay; it doubles on each failure.
pub const DEFAULT_RECONNECT_MIN: &str = "1s";
/// Largest reconnect delay.
pub const DEFAULT_RECONNECT_MAX: &str = "60s";
/// How long a stopping agent lets in-flight requests finish.
pub const DEFAULT_DRAIN_TIMEOUT: &str = "10s";
/// A connection that lived this long counts as stable and resets the backoff.
pub const STABLE_CONNECTION: Duration = Duration::from_secs(30);
/// Time to open a TCP connection to an upstream.
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: &str = "10s";
/// Time the gateway has to answer the upgrade and `register`.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages queued for the tunnel writer before stream tasks wait.
pub const OUTBOX_CAPACITY: usize = 256;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

fn parse_route(s: &str) -> Result<Rule, String> {
    let (host, url) = s.split_once('=').ok_or_else(|| {
        "expected HOST=URL, e.g. app.demo.localhost=http://127.0.0.1:3000".to_string()
    })?;
    Ok(Rule {
        hostname: host.trim().to_string(),
        path: root(),
        path_type: PathType::Prefix,
        service: url.trim().to_string(),
        ..Default::default()
    })
}

/// The `--config` file (YAML), in the manner of Cloudflare Tunnel's ingress rules.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub gateway: Vec<String>,
    pub cluster: Option<String>,
    pub token: Option<String>,
    #[serde(default)]
    pub ingress: Vec<Rule>,
}

/// `tunnelgate-agent`: dials out to the gateway and serves its requests from local upstreams.
#[derive(Debug, Clone, Parser)]
#[command(name = "tunnelgate-agent", version, about)]
pub struct Config {
    /// PEM CA certificate(s) trusted for a `wss://` gateway, beside the system's roots.
    #[arg(long, env = "TG_GATEWAY_CA")]
    pub gateway_ca: Option<std::path::PathBuf>,

    /// Allow `ws://` to a gateway that is not on loopback (the token then crosses the network
    /// in clear): only for a network you trust.
    #[arg(long, env = "TG_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,

    /// Always mask the frames this agent sends, as RFC 6455 asks of a client, even where the
    /// gateway would take them unmasked (ADR 0014): for a proxy between agent and gateway that
    /// checks WebSocket frames.
    #[arg(long, env = "TG_MASK_FRAMES")]
    pub mask_frames: bool,

    /// Gateway URL(s), `ws://host:port` or `wss://…`; several are tried in turn. Env
    /// `TG_GATEWAY` (or `SERVER_URL`).
    #[arg(long = "gateway", env = "TG_GATEWAY", value_delimiter = ',')]
    pub gateways: Vec<String>,

    /// The cluster id this agent serves. Env `TG_CLUSTER` (or `CLIENT_ID`).
    #[arg(long, env = "TG_CLUSTER")]
    pub cluster: Option<String>,

    /// The cluster's agent token.
    #[arg(long, env = "TG_TOKEN", hide_env_values = true, value_parser = |s: &str| Ok::<_, String>(Secret::new(s)))]
    pub token: Option<Secret>,

    /// A static route, `HOST=URL`; repeat for more.
    #[arg(long = "route", value_parser = parse_route)]
    pub routes: Vec<Rule>,

    /// A YAML file with `ingress:` rules (and optionally gateway, cluster, token).
    #[arg(long, env = "TG_CONFIG")]
    pub config: Option<PathBuf>,

    /// Tunnels to hold, each to a different gateway node (more survive a node's loss); where
    /// only one node is reachable, each on a different worker of it (ADR 0013).
    #[arg(long, env = "TG_CONNECTIONS", default_value_t = DEFAULT_CONNECTIONS)]
    pub connections: usize,

    /// Discover routes from Kubernetes Ingress objects (in-cluster config, or --kubeconfig).
    #[arg(long, env = "TG_KUBERNETES")]
    pub kubernetes: bool,

    /// Serve the cluster's Kubernetes API to callers the gateway authenticated (at
    /// `https://{cluster}.k8s.{domain}`): calls go to the API server as this agent's
    /// ServiceAccount, impersonating the caller, so Kubernetes RBAC decides.
    #[arg(long, env = "TG_KUBERNETES_API")]
    pub kubernetes_api: bool,

    /// The API server for --kubernetes-api.
    #[arg(long, env = "TG_KUBERNETES_API_URL", default_value = crate::kubeapi::DEFAULT_URL)]
    pub kubernetes_api_url: String,

    /// The ServiceAccount token for --kubernetes-api (read again when it rotates).
    #[arg(long, env = "TG_KUBERNETES_TOKEN_FILE", default_value = crate::kubeapi::SA_TOKEN_FILE)]
    pub kubernetes_token_file: PathBuf,

    /// The CA the API server's certificate is checked against, beside the system's roots.
    #[arg(long, env = "TG_KUBERNETES_CA_FILE", default_value = crate::kubeapi::SA_CA_FILE)]
    pub kubernetes_ca_file: PathBuf,

    /// Kubeconfig file for running outside the cluster (default: in-cluster, then KUBECONFIG).
    #[arg(long, env = "TG_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Namespaces to watch (repeat or comma-separate; default: all).
    #[arg(long = "namespace", env = "TG_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,

    /// Only Ingresses of this IngressClass (spec.ingressClassName or the legacy annotation).
    #[arg(long, env = "TG_INGRESS_CLASS")]
    pub ingress_class: Option<String>,

    /// Send Kubernetes routes through the ingress controller at this URL (keeping Host)
    /// instead of straight to each Service.
    #[arg(long, env = "TG_INGRESS_CONTROLLER_URL")]
    pub ingress_controller_url: Option<String>,

    /// The ingress controller's Service, `NAMESPACE/NAME`, judged to tell a private cluster
    /// from a public one.
    #[arg(long, env = "TG_DETECT_SERVICE", default_value = crate::ingress::detect::DEFAULT_CONTROLLER_SERVICE)]
    pub detect_service: String,

    /// How long a LoadBalancer may wait for an external address before the cluster counts
    /// as private.
    #[arg(long, env = "TG_DETECT_WAIT", default_value = crate::ingress::detect::DEFAULT_LB_WAIT, value_parser = parse_duration)]
    pub detect_wait: Duration,

    /// Publish no Ingress routes when the cluster is judged public (reachable without us).
    #[arg(long, env = "TG_SKIP_IF_PUBLIC")]
    pub skip_if_public: bool,

    /// First reconnect delay (doubles up to --reconnect-max, with jitter).
    #[arg(long, env = "TG_RECONNECT_MIN", default_value = DEFAULT_RECONNECT_MIN, value_parser = parse_duration)]
    pub reconnect_min: Duration,

    /// Largest reconnect delay.
    #[arg(long, env = "TG_RECONNECT_MAX", default_value = DEFAULT_RECONNECT_MAX, value_parser = parse_duration)]
    pub reconnect_max: Duration,

    /// On SIGTERM: tell each gateway to send no new requests, and let requests in flight
    /// finish for at most this long before closing (keep it under the pod's grace period).
    #[arg(long, env = "TG_DRAIN_TIMEOUT", default_value = DEFAULT_DRAIN_TIMEOUT, value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Time to connect to an upstream.
    #[arg(long, env = "TG_UPSTREAM_CONNECT_TIMEOUT", default_value = DEFAULT_UPSTREAM_CONNECT_TIMEOUT, value_parser = parse_duration)]
    pub upstream_connect_timeout: Duration,

    /// Serve Prometheus metrics (`/metrics`) and `/healthz` on this address (e.g.
    /// `0.0.0.0:9091` in a pod); off when not given.
    #[arg(long, env = "TG_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// Send traces (OTLP over HTTP, JSON) to this collector, e.g. `http://otel-collector:4318`:
    /// a span per request (child of the gateway's, by the `traceparent` it sends) and one per
    /// upstream call, whose `traceparent` the upstream receives. Off when not given.
    #[arg(long, env = "TG_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// How long finished spans wait in the batch before they are sent.
    #[arg(long, env = "TG_OTLP_FLUSH_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub otlp_flush_interval: Duration,

    /// One INFO line per upstream call ("upstream call": method, host, path, status, time to
    /// the response head), under the request's id.
    #[arg(long, env = "TG_ACCESS_LOG")]
    pub access_log: bool,

    /// Log format; the filter comes from RUST_LOG (default `info`).
    #[arg(long, env = "TG_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
}

impl Config {
    /// Merges the config file and legacy variables, then checks everything.
    pub fn validate(mut self) -> Result<Self, String> {
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--config {}: {e}", path.display()))?;
            let file: FileConfig = yaml_serde::from_str(&text)
                .map_err(|e| format!("--config {}: {e}", path.display()))?;
            if self.gateways.is_empty() {
                self.gateways = file.gateway;
            }
            self.cluster = self.cluster.or(file.cluster);
            self.token = self.token.or(file.token.map(Secret::new));
            self.routes.extend(file.ingress);
        }
        if let (true, Ok(url)) = (self.gateways.is_empty(), std::env::var("SERVER_URL")) {
            self.gateways = vec![url];
        }
        if self.cluster.is_none() {
            self.cluster = std::env::var("CLIENT_ID").ok();
        }
        if self.gateways.is_empty() {
            return Err("no gateway: give --gateway ws://HOST:PORT (or TG_GATEWAY)".into());
        }
        for g in &self.gateways {
            let url = url::Url::parse(g).map_err(|e| format!("--gateway {g:?}: {e}"))?;
            match url.scheme() {
                "wss" | "https" => {}
                "ws" | "http" => {
                    let loopback = match url.host() {
                        Some(url::Host::Domain(d)) => d == "localhost" || d.ends_with(".localhost"),
                        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                        None => false,
                    };
                    if !loopback && !self.insecure_plaintext {
                        return Err(format!(
                            "--gateway {g:?}: ws:// would send the agent token and every request in clear \
                             over the network; use wss:// (the gateway's --tls-listen), or give \
                             --insecure-plaintext for a network you trust"
                        ));
                    }
                }
                other => {
                    return Err(format!(
                        "--gateway {g:?}: scheme {other:?} is not supported (use wss:// or ws://)"
                    ));
                }
            }
        }
        if self.cluster.as_deref().is_none_or(str::is_empty) {
            return Err("no cluster: give --cluster ID (or TG_CLUSTER)".into());
        }
        if self.token.as_ref().is_none_or(|t| t.expose().is_empty()) {
            return Err("no token: give --token TOKEN (or TG_TOKEN)".into());
        }
        if self.routes.is_empty() && !self.kubernetes && !self.kubernetes_api {
            return Err(
                "no routes: give --route HOST=URL, --config FILE with ingress rules, --kubernetes, or --kubernetes-api"
                    .into(),
            );
        }
        if let Some(u) = &self.ingress_controller_url {
            crate::rules::Target::parse(u).map_err(|e| format!("--ingress-controller-url: {e}"))?;
        }
        for r in &mut self.routes {
            r.hostname = r.hostname.trim_end_matches('.').to_ascii_lowercase();
            check_route_host(&r.hostname).map_err(|e| format!("route {:?}: {e}", r.hostname))?;
            if !r.path.starts_with('/') {
                return Err(format!(
                    "route {}: path {:?} must start with '/'",
                    r.hostname, r.path
                ));
            }
            crate::rules::Target::for_rule(r, self.upstream_connect_timeout)
                .map_err(|e| format!("route {}: {e}", r.hostname))?;
        }
        if !(1..=16).contains(&self.connections) {
            return Err("--connections must be between 1 and 16".into());
        }
        if self.reconnect_min > self.reconnect_max {
            return Err("--reconnect-min is larger than --reconnect-max".into());
        }
        Ok(self)
    }

    pub fn cluster(&self) -> &str {
        self.cluster.as_deref().unwrap_or_default()
    }

    pub fn token(&self) -> &str {
        self.token.as_ref().map_or("", Secret::expose)
    }

    /// The routes as published to the gateway.
    pub fn route_specs(&self) -> Vec<RouteSpec> {
        self.routes
            .iter()
            .map(|r| RouteSpec {
                host: r.hostname.clone(),
                path: r.path.clone(),
                path_type: r.path_type,
                service: Some(r.service.clone()),
                ..Default::default()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Vec<&'static str> {
        vec![
            "a",
            "--gateway",
            "ws://127.0.0.1:8080",
            "--cluster",
            "demo",
            "--token",
            "s3cret",
        ]
    }

    #[test]
    fn routes_from_flags_and_file() {
        let dir = std::env::temp_dir().join(format!("tg-agent-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("agent.yaml");
        std::fs::write(
            &file,
            "ingress:\n  - hostname: api.demo.localhost\n    path: /v1\n    service: http://127.0.0.1:9000\n",
        )
        .unwrap();
        let mut args = base();
        args.extend([
            "--route",
            "App.demo.localhost=http://127.0.0.1:3000",
            "--config",
        ]);
        args.push(file.to_str().unwrap());
        let c = Config::try_parse_from(args).unwrap().validate().unwrap();
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[0].hostname, "app.demo.localhost");
        assert_eq!(c.routes[1].path, "/v1");
        assert!(!format!("{c:?}").contains("s3cret"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn clear_errors() {
        let e = |extra: &[&str]| {
            let mut a = base();
            a.extend_from_slice(extra);
            Config::try_parse_from(a).unwrap().validate().unwrap_err()
        };
        assert!(e(&[]).contains("no routes"));
        assert!(e(&["--route", "a.demo.localhost=ftp://x"]).contains("http"));
        assert!(Config::try_parse_from(["a", "--route", "x"]).is_err());
    }
}
