//! Every Redis key and channel name, spelled here and nowhere else.
//!
//! | key | type | value | lifetime |
//! | --- | --- | --- | --- |
//! | `route:{host}:{path}` | string | [`super::RouteEntry`] JSON | route TTL, refreshed by heartbeats |
//! | `routes:{cluster}` | set | `{host}:{path}` of each of the cluster's routes | route TTL |
//! | `hosts:{cluster}` | set | hosts the cluster publishes (the flood gate) | route TTL |
//! | `tunnel:{cluster}` | hash | connection id → owner lease JSON (node, epoch, until) | a few leases |
//! | `tunnel_epoch:{cluster}` | counter | last epoch handed out | persistent |
//! | `node:{node_id}` | string | peer address, version, started_at | short TTL |
//! | `cluster:{id}` | string | name, token hash, created_at | persistent |
//! | `clusters` | set | every cluster id | persistent |
//! | channel `tunnelgate:events` | pub/sub | cache invalidation notices | |

pub const EVENTS: &str = "tunnelgate:events";
pub const CLUSTERS: &str = "clusters";
/// The prefix that turns a `routes:{cluster}` member into its route key.
pub const ROUTE_PREFIX: &str = "route:";

pub fn route_member(host: &str, path: &str) -> String {
    format!("{host}:{path}")
}

pub fn route(host: &str, path: &str) -> String {
    format!("{ROUTE_PREFIX}{host}:{path}")
}

pub fn cluster_routes(cluster: &str) -> String {
    format!("routes:{cluster}")
}

pub fn cluster_hosts(cluster: &str) -> String {
    format!("hosts:{cluster}")
}

pub fn tunnel(cluster: &str) -> String {
    format!("tunnel:{cluster}")
}

pub fn tunnel_epoch(cluster: &str) -> String {
    format!("tunnel_epoch:{cluster}")
}

pub fn node(id: &str) -> String {
    format!("node:{id}")
}

pub fn cluster(id: &str) -> String {
    format!("cluster:{id}")
}
