//! Every Redis key and channel name, spelled here and nowhere else.
//!
//! | key | type | value | lifetime |
//! | --- | --- | --- | --- |
//! | `routes:{cluster}` | hash | connection id → that connection's route set (JSON) | route TTL, refreshed with the leases (O(1)); a set leaves with its tunnel |
//! | `tunnel:{cluster}` | hash | connection id → owner lease `node\|epoch\|until_ms` | a few leases |
//! | `tunnel_epoch:{cluster}` | counter | last epoch handed out | persistent |
//! | `node:{node_id}` | string | peer address, version, started_at | short TTL |
//! | `cluster:{id}` | string | name, token hash, created_at | persistent |
//! | `clusters` | set | every cluster id | persistent |
//! | `agents:{cluster}` | hash | connection id → what its agent reported (JSON: node, version, host, last heartbeat, private) | route TTL, written with each lease refresh |
//! | `acme:http01:{token}` | string | an HTTP-01 challenge's key authorization | 10 min |
//! | `acme:lock:{host}` | string | the node issuing a certificate for `host` | a few minutes |
//! | `certs` | hash | custom hostname → certificate state (chain, sealed key, expiry, last error) | persistent |
//! | `ratelimit:{cluster}` | string | GCRA theoretical arrival time (ms) of the cluster's requests | about a burst's length |
//! | channel `tunnelgate:events` | pub/sub | cache invalidation notices | |

pub const EVENTS: &str = "tunnelgate:events";
pub const CLUSTERS: &str = "clusters";
pub const CERTS: &str = "certs";

pub fn acme_challenge(token: &str) -> String {
    format!("acme:http01:{token}")
}

pub fn acme_lock(host: &str) -> String {
    format!("acme:lock:{host}")
}
pub fn cluster_routes(cluster: &str) -> String {
    format!("routes:{cluster}")
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

/// Sorted set of node ids, scored by when their record expires (ms): the live nodes.
pub const NODES: &str = "nodes";

pub fn cluster(id: &str) -> String {
    format!("cluster:{id}")
}

pub fn ratelimit(cluster: &str) -> String {
    format!("ratelimit:{cluster}")
}

pub fn agents(cluster: &str) -> String {
    format!("agents:{cluster}")
}
