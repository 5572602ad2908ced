//! The agent's logs, traces and metrics: [`init`] (the `tunnelgate-telemetry` crate), and [`Metrics`] served as Prometheus text on
//! `--metrics-listen` (`GET /metrics`; `GET /healthz` answers 200 while the process runs):
//! tunnels held, streams open, upstream errors by kind, new and pooled upstream connections,
//! reconnects, routes, build info.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::config::{Config, LogFormat};

/// Installs the global subscriber: log lines (JSON or text, `RUST_LOG`), and spans to
/// `--otlp-endpoint` when given. Keep the guard until exit: it sends the last spans.
pub fn init(config: &Config) -> Result<tunnelgate_telemetry::Guard, String> {
    tunnelgate_telemetry::init(
        config.log_format == LogFormat::Json,
        "tunnelgate-agent",
        config.otlp_endpoint.clone(),
        config.otlp_flush_interval,
    )
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HowLabels {
    how: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

/// What an operator watches on an agent.
pub struct Metrics {
    registry: Registry,
    /// `agent_tunnels`: tunnels to gateway nodes held now.
    pub tunnels: Gauge,
    /// `agent_streams`: requests (and upgraded connections) being served now.
    pub streams: Gauge,
    /// `agent_upstream_errors_total{kind}`: requests that failed at the upstream.
    upstream_errors: Family<KindLabels, Counter>,
    /// `agent_upstream_connections_total{how}`: requests to plain-HTTP upstreams by the
    /// connection they went on, `new` or `pooled` (many `new`: the upstream closes idle ones).
    upstream_connections: Family<HowLabels, Counter>,
    /// `agent_reconnects_total`: tunnels lost and dialled again.
    pub reconnects: Counter,
    /// `agent_routes`: routes this agent publishes.
    pub routes: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let tunnels = Gauge::default();
        registry.register(
            "agent_tunnels",
            "Tunnels to gateway nodes held now",
            tunnels.clone(),
        );
        let streams = Gauge::default();
        registry.register(
            "agent_streams",
            "Requests and upgraded connections being served",
            streams.clone(),
        );
        let upstream_errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "agent_upstream_errors",
            "Requests that failed at the upstream, by kind",
            upstream_errors.clone(),
        );
        let upstream_connections = Family::<HowLabels, Counter>::default();
        registry.register(
            "agent_upstream_connections",
            "Requests to plain-HTTP upstreams by the connection they used: new or pooled",
            upstream_connections.clone(),
        );
        let reconnects = Counter::default();
        registry.register(
            "agent_reconnects",
            "Tunnels lost and dialled again",
            reconnects.clone(),
        );
        let routes = Gauge::default();
        registry.register(
            "agent_routes",
            "Routes this agent publishes",
            routes.clone(),
        );
        let build = Family::<VersionLabels, Gauge>::default();
        build
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("agent_build_info", "The agent's version", build);
        Metrics {
            registry,
            tunnels,
            streams,
            upstream_errors,
            upstream_connections,
            reconnects,
            routes,
        }
    }
}

impl Metrics {
    /// Counts one upstream failure of `kind` (`upstream_refused`, `upstream_failed`, `no_route`, …).
    pub fn upstream_error(&self, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    /// Counts one request to a plain-HTTP upstream on a `reused` (pooled) or new connection.
    pub fn upstream_connection(&self, reused: bool) {
        let how = if reused { "pooled" } else { "new" };
        self.upstream_connections
            .get_or_create(&HowLabels { how })
            .inc();
    }

    /// The Prometheus text of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Counts a stream as open for as long as it lives.
pub struct StreamGuard(Arc<Metrics>);

impl StreamGuard {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        metrics.streams.inc();
        StreamGuard(metrics)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.streams.dec();
    }
}

/// The metrics endpoint's task; it stops when this is dropped (when the agent's `run` ends).
pub struct Server(tokio::task::JoinHandle<()>);

impl Drop for Server {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The agent's metrics, and their endpoint when `listen` is given.
pub async fn start(
    listen: Option<std::net::SocketAddr>,
) -> Result<(Arc<Metrics>, Option<Server>), String> {
    let metrics = Arc::new(Metrics::default());
    let Some(addr) = listen else {
        return Ok((metrics, None));
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("--metrics-listen {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(addr = %bound, "metrics endpoint listening");
    let task = tokio::spawn(serve(listener, metrics.clone()));
    Ok((metrics, Some(Server(task))))
}

/// Serves `/metrics` and `/healthz` on `listener` for as long as the agent runs.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    // Connections are served in a set owned by this task: they end with it.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let io = match listener.accept().await {
            Ok((io, _)) => io,
            Err(e) => {
                // Out of descriptors, most likely: try again shortly.
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let m = metrics.clone();
        conns.spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let m = m.clone();
                    async move { Ok::<_, Infallible>(answer(req.uri().path(), &m)) }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                .await;
        });
    }
}

fn answer(path: &str, m: &Metrics) -> hyper::Response<Full<Bytes>> {
    let (status, kind, body) = match path {
        "/metrics" => (200, "text/plain; version=0.0.4; charset=utf-8", m.render()),
        "/healthz" => (200, "text/plain", "ok\n".to_string()),
        _ => (404, "text/plain", "not found: try /metrics\n".to_string()),
    };
    let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    if let Ok(v) = hyper::header::HeaderValue::from_str(kind) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}
