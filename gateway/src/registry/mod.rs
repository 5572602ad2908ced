//! The registry facade: clusters and their tokens, the routes agents publish, and who owns each
//! cluster's tunnels. Everything else asks this module; it hides which store is behind it
//! (memory for one node, Redis for a cluster of nodes) and the caches in front of Redis.
//!
//! Who may claim a host is decided here: cluster `c` may publish `c.{domain}` and any name
//! under it, and nothing else, so no agent can take another tenant's hostname. The same rule
//! makes lookups cheap to refuse: a host names its cluster, and a host of an unknown cluster,
//! or one its cluster does not publish, is refused from memory without asking Redis.

pub mod access;
pub mod acme_store;
pub mod agents;
mod cache;
mod claims;
pub mod domains;
pub mod keys;
mod memory;
mod owners;
pub mod records;
pub mod redis;
mod redis_records;
mod routes;
mod secret;
mod store;
pub mod table;
pub mod tenants;
mod tokens;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use self::redis::{CallCounter, RedisStore};
use crate::config::ClusterArg;
use cache::Cache;
use memory::Memory;
use store::Store;
pub use table::{ClusterRoutes, ConnRoutes, Quotas, RouteEntry, RouteTable};

/// How long a cluster's route sets outlive the last refresh of any of its leases in Redis
/// (a node that died without cleaning up); live tunnels refresh it with their leases.
pub const ROUTE_TTL: Duration = Duration::from_secs(300);

/// A node that holds a live tunnel of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub node_id: String,
    pub peer_addr: String,
    /// The connections (agent tunnels) of the cluster that node holds.
    pub conns: Vec<String>,
}

/// What claiming a tunnel's lease gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The lease, with its epoch.
    Held(u64),
    /// The cluster already has its quota of live tunnels.
    TooMany,
}

/// The state of one tunnel's ownership lease after a refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    Held,
    /// The lease vanished (Redis restarted empty, or it expired): claim it again.
    Lost,
    /// A newer epoch holds it: this tunnel is stale and must close.
    Fenced,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Config(String),
}

/// What a node tells the others about itself (`node:{id}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRecord {
    pub peer_addr: String,
    pub version: String,
    pub started_at: u64,
    /// Agent tunnels the node holds (as of its last announcement), for spreading them.
    #[serde(default)]
    pub tunnels: u64,
}

pub use records::{ClusterRecord, TenantError, TokenRecord};

/// Cache invalidation notices on the events channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Event {
    Routes { cluster: String, from: String },
    Clusters { from: String },
}

pub use tunnelgate_proto::routes::check_cluster_id;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The registry every part of the gateway calls.
pub struct Registry {
    domain: String,
    node_id: String,
    store: Box<dyn Store>,
    /// Token hash → (cluster id, token id), for authentication without a round trip.
    tokens: RwLock<HashMap<[u8; 32], (String, String)>>,
    /// Access token hash → grant (Kubernetes API callers), from memory as well.
    access: RwLock<HashMap<[u8; 32], access::AccessGrant>>,
    /// What each agent connection reported (the in-memory registry's; Redis holds its own).
    agent_infos: std::sync::Mutex<agents::AgentMap>,
    /// ACME challenges, locks and certificates (the in-memory registry's).
    acme: std::sync::Mutex<acme_store::AcmeMemory>,
    /// Custom hostname → (cluster, status), from the records.
    domains: RwLock<HashMap<String, (String, domains::DomainStatus)>>,
    /// Per cluster, the lock that keeps its route table loading once at a time (known
    /// clusters only reach it).
    loading: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// (cluster, token id) of every valid token.
    valid: RwLock<std::collections::HashSet<(String, String)>>,
    /// Every cluster record (the admin API's; with Redis, as last loaded).
    records: RwLock<std::collections::BTreeMap<String, ClusterRecord>>,
    configured: Vec<ClusterArg>,
    quotas: Quotas,
    /// The gateway's own names (`--public-host`): never a tenant's.
    reserved: Vec<String>,
    cache: Cache,
    healthy: AtomicBool,
}

impl Registry {
    /// An in-memory registry holding `clusters`: the single-node default.
    pub fn in_memory(domain: &str, clusters: &[ClusterArg]) -> Arc<Registry> {
        Arc::new(Registry::with_store(
            domain,
            "local",
            clusters,
            Box::new(Memory::default()),
        ))
    }

    /// Sets the per-cluster route quotas and the gateway's own names, which no cluster may
    /// claim (before the registry is shared).
    pub fn with_policy(mut self: Arc<Self>, quotas: Quotas, reserved: Vec<String>) -> Arc<Self> {
        if let Some(r) = Arc::get_mut(&mut self) {
            r.quotas = quotas;
            r.reserved = reserved;
        }
        self
    }

    pub fn quotas(&self) -> Quotas {
        self.quotas
    }

    /// A registry shared through Redis. Nothing is sent until [`Registry::sync_clusters`].
    pub fn with_redis(
        domain: &str,
        node_id: &str,
        clusters: &[ClusterArg],
        url: &str,
        count: CallCounter,
    ) -> Result<Arc<Registry>, RegistryError> {
        let store = Box::new(RedisStore::new(url, count)?);
        Ok(Arc::new(Registry::with_store(
            domain, node_id, clusters, store,
        )))
    }

    fn with_store(
        domain: &str,
        node_id: &str,
        clusters: &[ClusterArg],
        store: Box<dyn Store>,
    ) -> Registry {
        let records: std::collections::BTreeMap<String, ClusterRecord> = clusters
            .iter()
            .map(|c| {
                (
                    c.id.clone(),
                    ClusterRecord::bootstrap(&c.id, c.token.expose()),
                )
            })
            .collect();
        let tokens = tokens::token_map(records.values());
        let valid = tokens.values().cloned().collect();
        Registry {
            domain: domain.to_string(),
            node_id: node_id.to_string(),
            store,
            tokens: RwLock::new(tokens),
            access: RwLock::new(access::access_map(records.values())),
            domains: RwLock::new(domains::domain_map(records.values())),
            agent_infos: Default::default(),
            acme: Default::default(),
            valid: RwLock::new(valid),
            loading: Default::default(),
            records: RwLock::new(records),
            configured: clusters.to_vec(),
            quotas: Quotas {
                max_routes: crate::config::DEFAULT_MAX_ROUTES_PER_CLUSTER,
                max_bytes: crate::config::DEFAULT_MAX_ROUTE_BYTES_PER_CLUSTER,
            },
            reserved: Vec::new(),
            cache: Cache::default(),
            healthy: AtomicBool::new(true),
        }
    }

    pub fn is_shared(&self) -> bool {
        self.store.is_shared()
    }

    fn redis_store(&self) -> Option<&RedisStore> {
        self.store.redis()
    }

    /// The gateway's naming, for the claim policy.
    fn names(&self) -> claims::Names<'_> {
        claims::Names {
            domain: &self.domain,
            reserved: &self.reserved,
        }
    }

    /// Records the outcome of a Redis call for `/readyz`; returns it unchanged.
    fn note<T>(&self, r: Result<T, RegistryError>) -> Result<T, RegistryError> {
        let was = self.healthy.swap(r.is_ok(), Ordering::Relaxed);
        match (&r, was) {
            (Err(e), true) => {
                tracing::warn!(error = %e, "registry unreachable; serving cached routes and local tunnels")
            }
            (Ok(_), false) => {
                tracing::info!("registry reachable again");
                self.cache.clear();
            }
            _ => {}
        }
        r
    }

    /// False while the backing store is unreachable (`/readyz` says degraded).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// The cluster a host would belong to by its name, if that cluster exists: by the
    /// gateway's naming schemes, or as a verified custom domain.
    pub fn cluster_of<'h>(&self, host: &'h str) -> Option<std::borrow::Cow<'h, str>> {
        if let Some(c) = self
            .names()
            .owner_label(host)
            .filter(|c| self.knows_cluster(c))
        {
            return Some(std::borrow::Cow::Borrowed(c));
        }
        self.custom_owner(host).map(std::borrow::Cow::Owned)
    }

    /// Listens on the events channel and drops what other nodes changed; reconnects with a
    /// pause when Redis goes away, dropping every cache entry (notices may have been missed).
    pub async fn listen_events(self: Arc<Self>) {
        use futures_util::StreamExt;
        let Some(r) = self.redis_store() else {
            return;
        };
        loop {
            match r.pubsub_client().get_async_pubsub().await {
                Ok(mut ps) => {
                    if ps.subscribe(keys::EVENTS).await.is_ok() {
                        self.cache.clear();
                        let mut stream = ps.on_message();
                        while let Some(msg) = stream.next().await {
                            let Ok(text) = msg.get_payload::<String>() else {
                                continue;
                            };
                            match serde_json::from_str::<Event>(&text) {
                                Ok(Event::Routes { cluster, from }) if from != self.node_id => {
                                    self.cache.forget_cluster(&cluster);
                                }
                                Ok(Event::Clusters { from }) if from != self.node_id => {
                                    let _ = self.sync_clusters().await;
                                }
                                Ok(_) => {}
                                Err(e) => tracing::debug!(error = %e, "unreadable registry event"),
                            }
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "events channel unavailable"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

#[cfg(test)]
mod tests;
