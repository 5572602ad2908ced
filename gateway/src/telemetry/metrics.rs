//! The gateway's Prometheus metrics. Every metric name is spelled here and nowhere else.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub cluster_uuid: String,
    pub status_code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster_uuid: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterReasonLabels {
    pub cluster_uuid: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KubeLabels {
    pub cluster_uuid: String,
    pub verb: &'static str,
    pub status_code: u16,
}

type HistogramFamily = Family<ClusterLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 1 ms to ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Clusters, and series per cluster, a thread keeps handles on at most (then it starts over).
const HANDLES_MAX: usize = 4096;
const SERIES_MAX: usize = 64;

/// One thread's handles on request series, by cluster, then (metrics instance, status): a
/// request is counted without allocating its labels or taking the family's lock.
type Handles = std::collections::HashMap<String, Vec<(u64, u16, Counter, Histogram)>>;

thread_local! {
    static HANDLES: std::cell::RefCell<Handles> = Default::default();
}

/// Tells metrics instances apart in [`HANDLES`] (tests run several nodes in one process).
static INSTANCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// All gateway metrics; one instance per node, shared by every worker.
pub struct Metrics {
    /// This instance's key in the threads' handles.
    instance: u64,
    registry: Registry,
    /// `gateway_requests_total{cluster_uuid,status_code}`: proxied requests by outcome.
    pub requests: Family<RequestLabels, Counter>,
    /// `gateway_request_duration_seconds{cluster_uuid}`: time to the response head.
    pub request_duration: HistogramFamily,
    /// `gateway_active_routes{cluster_uuid}`: routes the cluster has published.
    pub active_routes: Family<ClusterLabels, Gauge>,
    /// `gateway_tunnel_health{cluster_uuid}`: 1 while the cluster has a live tunnel here.
    pub tunnel_health: Family<ClusterLabels, Gauge>,
    /// `gateway_tunnels`: agent tunnels connected to this node.
    pub tunnels: Gauge,
    /// `gateway_streams`: streams open on this node's tunnels.
    pub streams: Gauge,
    /// `gateway_tunnel_errors_total{reason}`: protocol errors and closes caused by agents.
    pub tunnel_errors: Family<ReasonLabels, Counter>,
    /// `gateway_tunnel_auth_failures_total{reason}`: refused agent connections.
    pub auth_failures: Family<ReasonLabels, Counter>,
    /// `gateway_registry_backend_calls_total{op}`: operations sent to Redis.
    pub backend_calls: Family<OpLabels, Counter>,
    /// `gateway_forwarded_requests_total{outcome}`: requests sent over a peer link.
    pub forwarded: Family<ReasonLabels, Counter>,
    /// `gateway_front_handoffs_total{reason}`: connections the own HTTP/1.1 front gave to
    /// actix-http, by the request that made it (`proxy::conn`).
    pub front_handoffs: Family<ReasonLabels, Counter>,
    /// `gateway_tunnel_probes_total{reason}`: data-path probes, `answered` or `unanswered`.
    pub probes: Family<ReasonLabels, Counter>,
    /// `gateway_tunnels_moved_total`: agents asked to move a tunnel to spread them over nodes.
    pub moved: Counter,
    /// `gateway_cluster_private{cluster_uuid}`: 1 when the agent judged its cluster private,
    /// 0 public (absent until an agent reports).
    pub cluster_private: Family<ClusterLabels, Gauge>,
    /// `gateway_agent_routes{cluster_uuid}`: routes the cluster's agent says it publishes.
    pub agent_routes: Family<ClusterLabels, Gauge>,
    /// `gateway_routes_rejected_total{cluster_uuid,reason}`: routes refused in `routes_ack`
    /// (`conflict` with another agent of the cluster, or `refused`: names, sizes, quotas).
    pub routes_rejected: Family<ClusterReasonLabels, Counter>,
    /// `gateway_route_cache_total{outcome}`: route-table lookups answered from the cache in
    /// front of Redis (`hit`) or loaded from it (`miss`).
    pub route_cache: Family<ReasonLabels, Counter>,
    /// `gateway_build_info{version}`: 1, with the running version.
    pub build_info: Family<VersionLabels, Gauge>,
    /// Kubernetes API calls through the gateway, by cluster, verb and status.
    pub kube_requests: Family<KubeLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub version: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "gateway_requests",
            "Proxied requests by cluster and status",
            requests.clone(),
        );
        let request_duration =
            HistogramFamily::new_with_constructor(duration_histogram as fn() -> Histogram);
        registry.register(
            "gateway_request_duration_seconds",
            "Time from request to response head",
            request_duration.clone(),
        );
        let active_routes = Family::<ClusterLabels, Gauge>::default();
        registry.register(
            "gateway_active_routes",
            "Routes published per cluster",
            active_routes.clone(),
        );
        let tunnel_health = Family::<ClusterLabels, Gauge>::default();
        registry.register(
            "gateway_tunnel_health",
            "1 while the cluster has a live tunnel on this node, else 0",
            tunnel_health.clone(),
        );
        let tunnels = Gauge::default();
        registry.register(
            "gateway_tunnels",
            "Agent tunnels connected to this node",
            tunnels.clone(),
        );
        let streams = Gauge::default();
        registry.register(
            "gateway_streams",
            "Streams open on this node's tunnels",
            streams.clone(),
        );
        let tunnel_errors = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "gateway_tunnel_errors",
            "Tunnel protocol errors caused by agents, by reason",
            tunnel_errors.clone(),
        );
        let auth_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "gateway_tunnel_auth_failures",
            "Refused agent connections, by reason",
            auth_failures.clone(),
        );
        let backend_calls = Family::<OpLabels, Counter>::default();
        registry.register(
            "gateway_registry_backend_calls",
            "Operations sent to the shared registry (Redis), by operation",
            backend_calls.clone(),
        );
        let forwarded = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "gateway_forwarded_requests",
            "Requests forwarded to the node owning the cluster's tunnel, by outcome",
            forwarded.clone(),
        );
        let front_handoffs = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "gateway_front_handoffs",
            "Public connections the gateway's own HTTP/1.1 front handed to actix-http, by reason",
            front_handoffs.clone(),
        );
        let probes = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "gateway_tunnel_probes",
            "Data-path probes of tunnels whose streams went quiet, by outcome",
            probes.clone(),
        );
        let moved = Counter::default();
        registry.register(
            "gateway_tunnels_moved",
            "Agents asked to move a tunnel to another node, to spread tunnels over the nodes",
            moved.clone(),
        );
        let cluster_private = Family::<ClusterLabels, Gauge>::default();
        registry.register(
            "gateway_cluster_private",
            "1 when the cluster's agent judged it private (no public ingress), 0 when public",
            cluster_private.clone(),
        );
        let agent_routes = Family::<ClusterLabels, Gauge>::default();
        registry.register(
            "gateway_agent_routes",
            "Routes the cluster's agent reports publishing (heartbeat)",
            agent_routes.clone(),
        );
        let routes_rejected = Family::<ClusterReasonLabels, Counter>::default();
        registry.register(
            "gateway_routes_rejected",
            "Routes refused to an agent, by cluster and reason (conflict, refused)",
            routes_rejected.clone(),
        );
        let route_cache = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "gateway_route_cache",
            "Route-table lookups answered from the cache in front of Redis (hit) or loaded (miss)",
            route_cache.clone(),
        );
        let build_info = Family::<VersionLabels, Gauge>::default();
        registry.register(
            "gateway_build_info",
            "1, labelled with the running version",
            build_info.clone(),
        );
        let kube_requests = Family::<KubeLabels, Counter>::default();
        registry.register(
            "gateway_kubernetes_requests",
            "Kubernetes API calls through the gateway, by cluster, verb (get, list, watch, exec, ...) and status",
            kube_requests.clone(),
        );
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        Metrics {
            instance: INSTANCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            kube_requests,
            route_cache,
            build_info,
            routes_rejected,
            cluster_private,
            agent_routes,
            backend_calls,
            forwarded,
            front_handoffs,
            probes,
            moved,
            registry,
            requests,
            request_duration,
            active_routes,
            tunnel_health,
            tunnels,
            streams,
            tunnel_errors,
            auth_failures,
        }
    }
}

impl Metrics {
    /// Records one proxied request's outcome.
    pub fn request(&self, cluster: &str, status: u16, seconds: Option<f64>) {
        let count = |requests: &Counter, duration: &Histogram| {
            requests.inc();
            if let Some(s) = seconds {
                duration.observe(s);
            }
        };
        HANDLES.with_borrow_mut(|handles| {
            let series = handles.get_mut(cluster);
            let mine = |(i, st, ..): &&mut (u64, u16, Counter, Histogram)| {
                *i == self.instance && *st == status
            };
            if let Some((.., r, d)) = series.and_then(|s| s.iter_mut().find(mine)) {
                return count(r, d);
            }
            if handles.len() >= HANDLES_MAX {
                handles.clear();
            }
            let (r, d) = self.handles(cluster, status);
            count(&r, &d);
            let series = handles.entry(cluster.to_string()).or_default();
            if series.len() >= SERIES_MAX {
                series.clear();
            }
            series.push((self.instance, status, r, d));
        })
    }

    /// The series a request of `cluster` answered with `status` counts in.
    fn handles(&self, cluster: &str, status: u16) -> (Counter, Histogram) {
        let labels = RequestLabels {
            cluster_uuid: cluster.to_string(),
            status_code: status,
        };
        let requests = self.requests.get_or_create(&labels).clone();
        let cluster = ClusterLabels {
            cluster_uuid: labels.cluster_uuid,
        };
        let duration = self.request_duration.get_or_create(&cluster).clone();
        (requests, duration)
    }

    pub fn tunnel_error(&self, reason: &'static str) {
        self.tunnel_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Records what an agent's heartbeat reports about its cluster.
    pub fn agent_report(&self, cluster: &str, private: Option<bool>, routes: Option<u32>) {
        let l = ClusterLabels {
            cluster_uuid: cluster.to_string(),
        };
        if let Some(p) = private {
            self.cluster_private.get_or_create(&l).set(i64::from(p));
        }
        if let Some(r) = routes {
            self.agent_routes.get_or_create(&l).set(i64::from(r));
        }
    }

    /// Counts a forwarding outcome (`forwarded`, `not_here`, `peer_unreachable`).
    pub fn forward_outcome(&self, reason: &'static str) {
        self.forwarded.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Counts a connection handed from the own front to actix-http.
    pub fn front_handoff(&self, reason: &'static str) {
        self.front_handoffs
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts agents asked to move for spreading.
    pub fn tunnels_moved(&self, n: u64) {
        self.moved.inc_by(n);
    }

    /// Counts a data-path probe's outcome (`answered`, `unanswered`).
    pub fn probe(&self, reason: &'static str) {
        self.probes.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Counts routes refused to a cluster's agent.
    pub fn routes_rejected(&self, cluster: &str, refused: usize, conflicts: usize) {
        for (reason, n) in [("refused", refused), ("conflict", conflicts)] {
            if n > 0 {
                self.routes_rejected
                    .get_or_create(&ClusterReasonLabels {
                        cluster_uuid: cluster.to_string(),
                        reason,
                    })
                    .inc_by(n as u64);
            }
        }
    }

    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn set_cluster(&self, cluster: &str, healthy: bool, routes: usize) {
        let l = ClusterLabels {
            cluster_uuid: cluster.to_string(),
        };
        self.tunnel_health.get_or_create(&l).set(i64::from(healthy));
        self.active_routes.get_or_create(&l).set(routes as i64);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count_of(m: &Metrics, cluster: &str, status: u16) -> String {
        let needle = format!(
            "gateway_requests_total{{cluster_uuid=\"{cluster}\",status_code=\"{status}\"}} "
        );
        m.encode()
            .lines()
            .find_map(|l| l.strip_prefix(needle.as_str()).map(str::to_string))
            .unwrap_or_default()
    }

    #[test]
    fn requests_count_in_their_own_instance_and_series() {
        let (a, b) = (Metrics::default(), Metrics::default());
        for _ in 0..3 {
            a.request("c1", 200, Some(0.01));
        }
        a.request("c1", 502, None);
        a.request("c2", 200, None);
        b.request("c1", 200, Some(0.02));
        assert_eq!(count_of(&a, "c1", 200), "3");
        assert_eq!(count_of(&a, "c1", 502), "1");
        assert_eq!(count_of(&a, "c2", 200), "1");
        assert_eq!(count_of(&b, "c1", 200), "1");
        assert_eq!(count_of(&b, "c2", 200), "");
        let text = a.encode();
        assert!(
            text.contains("gateway_request_duration_seconds_count{cluster_uuid=\"c1\"} 3"),
            "{text}"
        );
        // Another thread counts in the same series.
        std::thread::scope(|s| {
            s.spawn(|| a.request("c1", 200, None));
        });
        assert_eq!(count_of(&a, "c1", 200), "4");
    }
}
