//! The gateway's configuration: command line, then environment, then defaults. Every key is
//! listed in `docs/config.md`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
pub use tunnelgate_mux::config::{Secret, parse_duration};
use tunnelgate_proto::limits::{DEFAULT_STREAM_WINDOW, MAX_STREAM_WINDOW, MIN_STREAM_WINDOW};

/// Wait for the first response byte from the upstream before answering 504.
pub const DEFAULT_RESPONSE_TIMEOUT: &str = "30s";
/// Longest pause between body chunks, either way, before the stream is cut.
pub const DEFAULT_BODY_IDLE_TIMEOUT: &str = "60s";
/// How often an agent must send a heartbeat; a tunnel silent for three of these is closed.
pub const DEFAULT_HEARTBEAT_INTERVAL: &str = "10s";
/// Streams one tunnel may carry at once; one more gets 503.
pub const DEFAULT_MAX_STREAMS: u32 = 1024;
/// Bytes of request headers (names and values) the gateway accepts; more gets 431.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;
/// Messages queued for one tunnel's writer before producers wait.
pub const TUNNEL_OUTBOX_CAPACITY: usize = 256;
/// Live agent tunnels one cluster may hold over all nodes; one more is refused at register.
pub const DEFAULT_MAX_TUNNELS_PER_CLUSTER: usize = 16;
/// Distinct routes one cluster may publish over all its agents.
pub const DEFAULT_MAX_ROUTES_PER_CLUSTER: usize = 10_000;
/// Bytes of route data one cluster may publish over all its agent connections.
pub const DEFAULT_MAX_ROUTE_BYTES_PER_CLUSTER: usize = 4 * 1024 * 1024;
/// A cluster's request rate and burst unless the admin API set its own (the original design's).
pub const DEFAULT_RATE_LIMIT: u32 = 100;
pub const DEFAULT_RATE_BURST: u32 = 1000;
/// New tunnels one cluster may open per second on one node (bursts of twice that).
pub const DEFAULT_CLUSTER_CONNECT_RATE: u32 = 10;
/// Shortest agent token accepted in a configuration: guessing must be hopeless.
pub const MIN_TOKEN_LEN: usize = 32;
/// Where `/metrics`, `/readyz` and `/healthz` are served: loopback unless an operator says
/// otherwise (in Kubernetes, the pod address for probes and scrapes).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// Time an agent has to send `register` after the upgrade.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// A cluster given on the command line: its id and its agent token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterArg {
    pub id: String,
    pub token: Secret,
}

fn parse_cluster(s: &str) -> Result<ClusterArg, String> {
    let (id, token) = s
        .split_once(':')
        .ok_or_else(|| "expected ID:TOKEN, e.g. demo:s3cret".to_string())?;
    tunnelgate_proto::routes::check_cluster_id(id)?;
    if token.len() < MIN_TOKEN_LEN {
        return Err(format!(
            "the token for cluster {id:?} has {} characters; agent tokens need at least \
             {MIN_TOKEN_LEN} (generate one with `openssl rand -hex 32`)",
            token.len()
        ));
    }
    Ok(ClusterArg {
        id: id.to_string(),
        token: Secret::new(token),
    })
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// `tunnelgate-gateway`: one gateway node.
#[derive(Debug, Clone, Parser)]
#[command(name = "tunnelgate-gateway", version, about)]
pub struct Config {
    /// Address for public HTTP and the agent endpoint `/v1/tunnel`.
    #[arg(long, env = "TG_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Address for HTTPS (public requests and agents over `wss://`); needs `--tls-cert`.
    #[arg(long, env = "TG_TLS_LISTEN")]
    pub tls_listen: Option<SocketAddr>,

    /// A PEM certificate chain for `--tls-listen`; repeat for more, each with its `--tls-key`
    /// in the same order. The certificate is chosen by the client's SNI; files are reloaded
    /// when they change.
    #[arg(long = "tls-cert", env = "TG_TLS_CERTS", value_delimiter = ',')]
    pub tls_certs: Vec<std::path::PathBuf>,

    /// The PEM private key of the `--tls-cert` at the same position.
    #[arg(long = "tls-key", env = "TG_TLS_KEYS", value_delimiter = ',')]
    pub tls_keys: Vec<std::path::PathBuf>,

    /// Answer plain-HTTP requests for tenants' names with a 308 to HTTPS (ACME HTTP-01
    /// challenge paths and the gateway's own names are not redirected).
    #[arg(long, env = "TG_REDIRECT_HTTP")]
    pub redirect_http: bool,

    /// The port clients reach HTTPS on, for `--redirect-http` (443 behind a load balancer).
    #[arg(long, env = "TG_HTTPS_PORT", default_value_t = 443)]
    pub https_port: u16,

    /// Address of the internal listener: `/metrics`, `/readyz`, `/healthz`. Never tenants'.
    #[arg(long, env = "TG_ADMIN_LISTEN", default_value = DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: SocketAddr,

    /// A token for the admin API on `--admin-listen` (at least 32 characters); repeat (or
    /// comma-separate) for rotation. Without one the admin API answers 401.
    #[arg(long = "admin-token", env = "TG_ADMIN_TOKEN", value_delimiter = ',', hide_env_values = true, value_parser = |s: &str| Ok::<_, String>(Secret::new(s)))]
    pub admin_tokens: Vec<Secret>,

    /// A name of the gateway itself (what agents dial, e.g. `gw.example.io`); repeat for more.
    /// These names (and IP literals) serve `/v1/tunnel` and never a tenant's route; no cluster
    /// may claim them.
    #[arg(long = "public-host", env = "TG_PUBLIC_HOSTS", value_delimiter = ',')]
    pub public_hosts: Vec<String>,

    /// The gateway's DNS domain: cluster `c` serves `c.DOMAIN` and `*.c.DOMAIN`.
    #[arg(long, env = "TG_DOMAIN", default_value = "localhost")]
    pub domain: String,

    /// A cluster and its agent token, `ID:TOKEN`; repeat for more.
    #[arg(long = "cluster", env = "TG_CLUSTERS", value_delimiter = ',', value_parser = parse_cluster)]
    pub clusters: Vec<ClusterArg>,

    /// Redis URL of the shared registry. Without it the registry lives in memory (one node).
    #[arg(long, env = "TG_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Address other nodes reach this node's peer endpoint on (with --redis-url).
    #[arg(long, env = "TG_PEER_LISTEN")]
    pub peer_listen: Option<SocketAddr>,

    /// Address to tell other nodes, when it differs from --peer-listen (e.g. the pod IP).
    #[arg(long, env = "TG_PEER_ADVERTISE")]
    pub peer_advertise: Option<String>,

    /// Secret every node presents on peer links; a stranger on the peer port is refused.
    #[arg(long, env = "TG_PEER_SECRET", hide_env_values = true, value_parser = |s: &str| Ok::<_, String>(Secret::new(s)))]
    pub peer_secret: Option<Secret>,

    /// PEM certificate chain this node presents on peer links (server and client side);
    /// with `--peer-key` and `--peer-ca`, peer links run over mutual TLS.
    #[arg(long, env = "TG_PEER_CERT")]
    pub peer_cert: Option<std::path::PathBuf>,

    /// The private key of `--peer-cert`.
    #[arg(long, env = "TG_PEER_KEY")]
    pub peer_key: Option<std::path::PathBuf>,

    /// The CA (PEM) every node's peer certificate is signed by; only it is trusted on peer
    /// links, both ways.
    #[arg(long, env = "TG_PEER_CA")]
    pub peer_ca: Option<std::path::PathBuf>,

    /// Time to wait for the upstream's response head before answering 504.
    #[arg(long, env = "TG_RESPONSE_TIMEOUT", default_value = DEFAULT_RESPONSE_TIMEOUT, value_parser = parse_duration)]
    pub response_timeout: Duration,

    /// Longest pause between two chunks of a request or response body before the stream is
    /// cut (408 for an upload not yet answered; the client's connection cut for a response).
    #[arg(long, env = "TG_BODY_IDLE_TIMEOUT", default_value = DEFAULT_BODY_IDLE_TIMEOUT, value_parser = parse_duration)]
    pub body_idle_timeout: Duration,

    /// Longest silence on a Kubernetes API watch, `logs -f` or exec/attach/port-forward session
    /// through `{cluster}.k8s.{domain}` before it is cut (their own, longer body idle timeout).
    #[arg(long, env = "TG_KUBERNETES_IDLE_TIMEOUT", default_value = "1h", value_parser = parse_duration)]
    pub kubernetes_idle_timeout: Duration,

    /// PEM file of the CA that issued the gateway's HTTPS certificates, written into the
    /// kubeconfigs the admin API issues (for a private CA; omit for a public one).
    #[arg(long, env = "TG_PUBLIC_CA")]
    pub public_ca: Option<std::path::PathBuf>,

    /// ACME directory URL: certificates for verified custom domains are requested there
    /// (HTTP-01 on the plain listener), stored for every node and renewed 30 days before
    /// expiry. E.g. https://acme-v02.api.letsencrypt.org/directory.
    #[arg(long, env = "TG_ACME_DIRECTORY")]
    pub acme_directory: Option<String>,

    /// Contact e-mail for the ACME account.
    #[arg(long, env = "TG_ACME_EMAIL")]
    pub acme_email: Option<String>,

    /// Renew an ACME certificate this long before it expires.
    #[arg(long, env = "TG_ACME_RENEW_BEFORE", default_value = "720h", value_parser = parse_duration)]
    pub acme_renew_before: Duration,

    /// PEM of a CA to trust for the ACME directory (a test CA such as pebble's).
    #[arg(long, env = "TG_ACME_CA")]
    pub acme_ca: Option<std::path::PathBuf>,

    /// 64 hex characters: seals certificate keys stored in Redis (from a Secret; the same on
    /// every node).
    #[arg(long, env = "TG_STATE_KEY", hide_env_values = true, value_parser = |s: &str| Ok::<_, String>(Secret::new(s)))]
    pub state_key: Option<Secret>,

    /// DNS server (`HOST:PORT`) that custom-domain checks ask; the system's resolver by default.
    #[arg(long, env = "TG_DNS_SERVER")]
    pub dns_server: Option<SocketAddr>,

    /// How often every registered custom domain is checked again in DNS (a verified one whose
    /// record went away or points elsewhere is suspended).
    #[arg(long, env = "TG_DOMAIN_RECHECK", default_value = "10m", value_parser = parse_duration)]
    pub domain_recheck: Duration,

    /// The gateway's public IP addresses, shown to tenants whose apex domain needs A/AAAA
    /// records (repeat or comma-separate).
    #[arg(
        long = "public-address",
        env = "TG_PUBLIC_ADDRESSES",
        value_delimiter = ','
    )]
    pub public_addresses: Vec<String>,

    /// On SIGTERM: how long the node waits for its agents to move and its streams to finish
    /// before it cuts what is left (keep it under the pod's grace period).
    #[arg(long, env = "TG_DRAIN_TIMEOUT", default_value = "25s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Interval at which agents send heartbeats; three missed ones close the tunnel.
    #[arg(long, env = "TG_HEARTBEAT_INTERVAL", default_value = DEFAULT_HEARTBEAT_INTERVAL, value_parser = parse_duration)]
    pub heartbeat_interval: Duration,

    /// Open connections (clients and agents) on the public listeners; past it, new ones get
    /// 503 + Retry-After and are closed. 0: no limit.
    #[arg(long, env = "TG_MAX_CONNECTIONS", default_value_t = 25_000)]
    pub max_connections: usize,

    /// Send traces (OTLP/HTTP, JSON) to this collector, e.g. `http://otel-collector:4318`:
    /// spans at the entry node, the peer hop and the owner node. Off when not given.
    #[arg(long, env = "TG_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// How long finished spans wait in the batch before they are sent.
    #[arg(long, env = "TG_OTLP_FLUSH_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub otlp_flush_interval: Duration,

    /// Resident memory (MiB) above which new requests get 503 + Retry-After (checked every
    /// second; set it under the pod's limit). 0: no limit.
    #[arg(long, env = "TG_MAX_MEMORY_MIB", default_value_t = 0)]
    pub max_memory_mib: u64,

    /// One INFO line per request (host, method, path, status, time to the head, cluster, node,
    /// request id) at the entry node, and at the owner node across a peer hop.
    #[arg(long, env = "TG_ACCESS_LOG")]
    pub access_log: bool,

    /// Heartbeats on each peer link this node dials; a link silent for three intervals is dead
    /// (its streams fail at once, the next request dials anew).
    #[arg(long, env = "TG_PEER_HEARTBEAT_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub peer_heartbeat_interval: Duration,

    /// Streams one tunnel carries at once.
    #[arg(long, env = "TG_MAX_STREAMS", default_value_t = DEFAULT_MAX_STREAMS)]
    pub max_streams_per_tunnel: u32,

    /// Requests per second a cluster is admitted when the admin API set no limit of its own
    /// (over all nodes); more get 429.
    #[arg(long, env = "TG_RATE_LIMIT", default_value_t = DEFAULT_RATE_LIMIT)]
    pub rate_limit: u32,

    /// The burst above `--rate-limit` a cluster may take at once.
    #[arg(long, env = "TG_RATE_BURST", default_value_t = DEFAULT_RATE_BURST)]
    pub rate_burst: u32,

    /// Live agent tunnels one cluster may hold (over all nodes).
    #[arg(long, env = "TG_MAX_TUNNELS_PER_CLUSTER", default_value_t = DEFAULT_MAX_TUNNELS_PER_CLUSTER)]
    pub max_tunnels_per_cluster: usize,

    /// New tunnels one cluster may open per second on this node (bursts of twice that);
    /// more are answered 429 before the upgrade.
    #[arg(long, env = "TG_CLUSTER_CONNECT_RATE", default_value_t = DEFAULT_CLUSTER_CONNECT_RATE)]
    pub cluster_connect_rate: u32,

    /// Distinct routes (host, path) one cluster may publish over all its agents.
    #[arg(long, env = "TG_MAX_ROUTES_PER_CLUSTER", default_value_t = DEFAULT_MAX_ROUTES_PER_CLUSTER)]
    pub max_routes_per_cluster: usize,

    /// Bytes of route data one cluster may publish over all its agent connections.
    #[arg(long, env = "TG_MAX_ROUTE_BYTES_PER_CLUSTER", default_value_t = DEFAULT_MAX_ROUTE_BYTES_PER_CLUSTER)]
    pub max_route_bytes_per_cluster: usize,

    /// Largest total size of request headers, in bytes.
    #[arg(long, env = "TG_MAX_HEADER_BYTES", default_value_t = DEFAULT_MAX_HEADER_BYTES)]
    pub max_header_bytes: usize,

    /// Per-stream flow-control window, in bytes.
    #[arg(long, env = "TG_STREAM_WINDOW", default_value_t = DEFAULT_STREAM_WINDOW)]
    pub stream_window: u32,

    /// This node's id (random when not given).
    #[arg(long, env = "TG_NODE_ID")]
    pub node_id: Option<String>,

    /// HTTP worker threads (default: one per CPU).
    #[arg(long, env = "TG_WORKERS")]
    pub workers: Option<usize>,

    /// Log format; the filter comes from RUST_LOG (default `info`).
    #[arg(long, env = "TG_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
}

impl Config {
    /// Checks what clap cannot and fills derived defaults.
    pub fn validate(mut self) -> Result<Self, String> {
        self.domain = self.domain.trim_end_matches('.').to_ascii_lowercase();
        tunnelgate_proto::routes::check_route_host(&self.domain)
            .map_err(|e| format!("--domain {:?}: {e}", self.domain))?;
        if !(MIN_STREAM_WINDOW..=MAX_STREAM_WINDOW).contains(&self.stream_window) {
            return Err(format!(
                "--stream-window must be between {MIN_STREAM_WINDOW} and {MAX_STREAM_WINDOW}"
            ));
        }
        if self.max_streams_per_tunnel == 0 {
            return Err("--max-streams-per-tunnel must be at least 1".into());
        }
        if self.rate_limit == 0 || self.rate_burst == 0 {
            return Err("--rate-limit and --rate-burst must be at least 1".into());
        }
        if self.max_tunnels_per_cluster == 0 || self.max_routes_per_cluster == 0 {
            return Err(
                "--max-tunnels-per-cluster and --max-routes-per-cluster must be at least 1".into(),
            );
        }
        if self
            .admin_tokens
            .iter()
            .any(|t| t.expose().len() < MIN_TOKEN_LEN)
        {
            return Err(format!(
                "--admin-token must have at least {MIN_TOKEN_LEN} characters (generate one with `openssl rand -hex 32`)"
            ));
        }
        let peer_tls = [&self.peer_cert, &self.peer_key, &self.peer_ca]
            .iter()
            .filter(|o| o.is_some())
            .count();
        if peer_tls != 0 && peer_tls != 3 {
            return Err("peer TLS needs all of --peer-cert, --peer-key and --peer-ca".into());
        }
        if self.tls_certs.len() != self.tls_keys.len() {
            return Err(format!(
                "{} --tls-cert and {} --tls-key given: give them in pairs",
                self.tls_certs.len(),
                self.tls_keys.len()
            ));
        }
        if self.tls_listen.is_some() && self.tls_certs.is_empty() {
            return Err("--tls-listen needs --tls-cert FILE --tls-key FILE".into());
        }
        for h in &mut self.public_hosts {
            *h = tunnelgate_proto::routes::normalize_host(h)
                .map_err(|e| format!("--public-host {h:?}: {e}"))?;
        }
        let mut seen = std::collections::HashSet::new();
        for c in &self.clusters {
            if !seen.insert(c.id.clone()) {
                return Err(format!("cluster {:?} is given twice", c.id));
            }
        }
        if self.redis_url.is_some() {
            if self
                .peer_secret
                .as_ref()
                .is_none_or(|s| s.expose().len() < 16)
            {
                return Err("--redis-url needs --peer-secret (at least 16 characters), shared by every node".into());
            }
            if self.peer_listen.is_none() {
                return Err(
                    "--redis-url needs --peer-listen ADDR for links from the other nodes".into(),
                );
            }
        }
        if self.node_id.is_none() {
            self.node_id = Some(format!("node-{:08x}", rand::random::<u32>()));
        }
        Ok(self)
    }

    /// True for a name of the gateway itself: an IP literal or a `--public-host`.
    pub fn is_gateway_name(&self, host: &str) -> bool {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<std::net::IpAddr>().is_ok() || self.public_hosts.iter().any(|h| h == host)
    }

    pub fn node_id(&self) -> &str {
        self.node_id.as_deref().unwrap_or("node")
    }

    /// A config for tests and embedding: listen on `listen`, defaults everywhere else.
    pub fn for_listen(listen: SocketAddr) -> Self {
        Config::parse_from(["tunnelgate-gateway", "--listen", &listen.to_string()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clusters_and_masking() {
        let t1 = "s3cret-s3cret-s3cret-s3cret-s3cret";
        let t2 = "0123456789abcdef0123456789abcdef";
        let c = Config::try_parse_from([
            "g",
            "--cluster",
            &format!("demo:{t1}"),
            "--cluster",
            &format!("b:{t2}"),
        ])
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(c.clusters.len(), 2);
        assert!(!format!("{c:?}").contains(t1));
        assert!(Config::try_parse_from(["g", "--cluster", "demo"]).is_err());
        assert!(Config::try_parse_from(["g", "--cluster", &format!("Bad_Id:{t1}")]).is_err());
        let short = Config::try_parse_from(["g", "--cluster", "demo:s3cret"]).unwrap_err();
        assert!(
            short.to_string().contains("openssl rand -hex 32"),
            "{short}"
        );
        let dup = Config::try_parse_from([
            "g",
            "--cluster",
            &format!("a:{t1}"),
            "--cluster",
            &format!("a:{t2}"),
        ])
        .unwrap()
        .validate();
        assert!(dup.is_err());
    }

    #[test]
    fn gateway_names() {
        let c = Config::try_parse_from(["g", "--public-host", "GW.Example.io."])
            .unwrap()
            .validate()
            .unwrap();
        assert!(c.is_gateway_name("gw.example.io"));
        assert!(c.is_gateway_name("127.0.0.1"));
        assert!(c.is_gateway_name("[::1]"));
        assert!(!c.is_gateway_name("app.demo.example.io"));
        assert_eq!(c.admin_listen.to_string(), DEFAULT_ADMIN_LISTEN);
    }
}
