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
pub mod domains;
pub mod keys;
mod memory;
pub mod redis;
pub mod table;
pub mod tenants;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tunnelgate_proto::control::{RouteAction, RouteRejection, RoutesAck};
use tunnelgate_proto::routes::{RouteSpec, check_route_bounds, check_route_host};

use self::redis::{CallCounter, RedisStore};
use crate::config::ClusterArg;
use cache::Cache;
use memory::Memory;
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
}

pub use tenants::{ClusterRecord, TenantError, TokenRecord};

/// Cache invalidation notices on the events channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Event {
    Routes { cluster: String, from: String },
    Clusters { from: String },
}

/// Checks a cluster id: one DNS label (it becomes `{id}.{domain}`).
pub fn check_cluster_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-')
        && !id.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "cluster id {id:?} must be one DNS label: a-z, 0-9 and '-' (never two in a row: \
             `--` separates a name from its cluster in flat names), at most 63 characters"
        ))
    }
}

/// Hash under which a token is stored; the token itself is never kept.
fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Distinct routes one cluster may publish over all its agents.
pub const DEFAULT_MAX_ROUTES: usize = 10_000;
/// Bytes of route data one cluster may publish over all its agent connections.
pub const DEFAULT_MAX_ROUTE_BYTES: usize = 4 * 1024 * 1024;

enum Store {
    Memory(Memory),
    Redis(Box<RedisStore>),
}

/// The registry every part of the gateway calls.
pub struct Registry {
    domain: String,
    node_id: String,
    store: Store,
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
    epochs: AtomicU64,
}

impl Registry {
    /// An in-memory registry holding `clusters`: the single-node default.
    pub fn in_memory(domain: &str, clusters: &[ClusterArg]) -> Arc<Registry> {
        Arc::new(Registry::with_store(
            domain,
            "local",
            clusters,
            Store::Memory(Memory::default()),
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
        let store = Store::Redis(Box::new(RedisStore::new(url, count)?));
        Ok(Arc::new(Registry::with_store(
            domain, node_id, clusters, store,
        )))
    }

    fn with_store(domain: &str, node_id: &str, clusters: &[ClusterArg], store: Store) -> Registry {
        let records: std::collections::BTreeMap<String, ClusterRecord> = clusters
            .iter()
            .map(|c| {
                (
                    c.id.clone(),
                    ClusterRecord::bootstrap(&c.id, c.token.expose()),
                )
            })
            .collect();
        let tokens = tenants::token_map(records.values());
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
                max_routes: DEFAULT_MAX_ROUTES,
                max_bytes: DEFAULT_MAX_ROUTE_BYTES,
            },
            reserved: Vec::new(),
            cache: Cache::default(),
            healthy: AtomicBool::new(true),
            epochs: AtomicU64::new(0),
        }
    }

    pub fn is_shared(&self) -> bool {
        matches!(self.store, Store::Redis(_))
    }

    fn redis_store(&self) -> Option<&RedisStore> {
        match &self.store {
            Store::Redis(r) => Some(r),
            Store::Memory(_) => None,
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

    /// The cluster and token id a bearer token belongs to. Answered from memory.
    pub fn authenticate(&self, token: &str) -> Option<(String, String)> {
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&token_hash(token))
            .cloned()
    }

    /// True while token `token_id` of `cluster` is valid (a tunnel that authenticated with a
    /// revoked token, or of a deleted cluster, is closed).
    pub fn token_valid(&self, cluster: &str, token_id: &str) -> bool {
        self.valid
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(cluster.to_string(), token_id.to_string()))
    }

    fn knows_cluster(&self, cluster: &str) -> bool {
        self.records
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(cluster)
    }

    /// Writes the configured clusters to Redis (the `--cluster` bootstrap) and loads every
    /// cluster (and token) from it.
    pub async fn sync_clusters(&self) -> Result<(), RegistryError> {
        let Some(r) = self.redis_store() else {
            return Ok(());
        };
        for c in &self.configured {
            let rec = ClusterRecord::bootstrap(&c.id, c.token.expose());
            let json = serde_json::to_string(&rec).unwrap_or_default();
            self.note(r.put_cluster_if_absent(&c.id, json).await)?;
        }
        let all = self.note(r.load_clusters().await)?;
        let mut records = std::collections::BTreeMap::new();
        for (id, json) in all {
            match serde_json::from_str::<ClusterRecord>(&json) {
                Ok(rec) => {
                    records.insert(id, rec);
                }
                Err(e) => {
                    tracing::warn!(cluster = %id, error = %e, "unreadable cluster record in Redis; ignored")
                }
            }
        }
        self.set_records(records);
        Ok(())
    }

    /// Replaces the cluster records and the token map built from them.
    fn set_records(&self, records: std::collections::BTreeMap<String, ClusterRecord>) {
        let tokens = tenants::token_map(records.values());
        *self.access.write().unwrap_or_else(|p| p.into_inner()) =
            access::access_map(records.values());
        *self.domains.write().unwrap_or_else(|p| p.into_inner()) =
            domains::domain_map(records.values());
        *self.valid.write().unwrap_or_else(|p| p.into_inner()) = tokens.values().cloned().collect();
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = tokens;
        *self.records.write().unwrap_or_else(|p| p.into_inner()) = records;
    }

    /// The cluster whose names include `host`: the label just before the domain.
    /// Two naming schemes, both under the gateway's domain: nested, `{name}.{cluster}.{domain}`
    /// (the label before the domain; a wildcard certificate per cluster), and flat,
    /// `{name}--{cluster}.{domain}` (one label, so one `*.{domain}` certificate covers every
    /// tenant; cluster ids never contain `--`, which keeps it unambiguous).
    fn owner_label<'a>(&self, host: &'a str) -> Option<&'a str> {
        let rest = host.strip_suffix(self.domain.as_str())?.strip_suffix('.')?;
        if !rest.contains('.')
            && let Some((name, cluster)) = rest.rsplit_once("--")
        {
            return Some(cluster).filter(|c| !c.is_empty() && !name.is_empty());
        }
        Some(rest.rsplit('.').next().unwrap_or(rest)).filter(|c| !c.is_empty())
    }

    /// Why `cluster` may not publish `host`, if it may not.
    pub fn check_claim(&self, cluster: &str, host: &str) -> Result<(), String> {
        check_route_host(host).map_err(|e| format!("invalid host: {e}"))?;
        let name = host.strip_prefix("*.").unwrap_or(host);
        let covers = |g: &String| match host.strip_prefix("*.") {
            Some(parent) => g == parent || g.split_once('.').is_some_and(|(_, p)| p == parent),
            None => g == host,
        };
        if self.reserved.iter().any(covers) {
            return Err(format!("{host} is a name of the gateway itself"));
        }
        let own = format!("{cluster}.{}", self.domain);
        let flat = host.strip_suffix(&format!("--{cluster}.{}", self.domain));
        let under_gateway = name == self.domain || name.ends_with(&format!(".{}", self.domain));
        if name == own
            || name.ends_with(&format!(".{own}"))
            || flat.is_some_and(|n| !n.is_empty() && !n.contains('.') && !n.starts_with('*'))
        {
            Ok(())
        } else if !under_gateway {
            // A custom domain: publishable once registered to this cluster, served only while
            // verified (`domains.rs`).
            match self.domain_registered_to(host) {
                Some(c) if c == cluster => Ok(()),
                Some(_) => Err(format!("{host} is registered to another cluster")),
                None => Err(format!(
                    "{host} is not a domain of cluster {cluster:?}: register it first \
                     (admin API: POST /admin/v1/clusters/{cluster}/domains) and publish its DNS record"
                )),
            }
        } else {
            Err(format!(
                "cluster {cluster:?} may only publish {own}, names under it, and NAME--{cluster}.{}",
                self.domain
            ))
        }
    }

    /// Checks the routes of an `ingress_routes` message from `cluster`'s agent one by one:
    /// normalised, within the cluster's names, within the field bounds. Refused routes are
    /// listed in the acknowledgement and never stored.
    pub fn vet_routes(&self, cluster: &str, routes: Vec<RouteSpec>) -> (Vec<RouteSpec>, RoutesAck) {
        let mut ack = RoutesAck::default();
        let mut good = Vec::with_capacity(routes.len());
        for mut r in routes {
            let verdict = check_route_bounds(&r).and_then(|()| {
                r.host = r.host.trim_end_matches('.').to_ascii_lowercase();
                if r.path.is_empty() {
                    r.path = "/".into();
                }
                if r.path_type != tunnelgate_proto::routes::PathType::Exact && r.path.len() > 1 {
                    r.path = r.path.trim_end_matches('/').to_string();
                }
                self.check_claim(cluster, &r.host)?;
                let normal = tunnelgate_proto::routes::normalize_path(&r.path)
                    .map_err(|e| format!("invalid path: {e}"))?;
                if normal != r.path {
                    return Err(format!("path is not in normal form (would be {normal:?})"));
                }
                Ok(())
            });
            match verdict {
                Ok(()) => good.push(r),
                Err(reason) => {
                    let cut = |s: &str| s.chars().take(256).collect::<String>();
                    ack.rejected.push(RouteRejection {
                        host: cut(&r.host),
                        path: cut(&r.path),
                        reason,
                    })
                }
            }
        }
        (good, ack)
    }

    /// Applies an `ingress_routes` message from connection `conn` (of agent `current.agent`,
    /// holding its lease at `epoch`) to that connection's route set `current`: vetted, checked
    /// for conflicts with the cluster's other agents and against the cluster's quotas, stored.
    /// Returns the connection's new set and the acknowledgement. On a registry error the new
    /// set is still returned (checked against this connection alone) with the error, so the
    /// caller can publish it again when the registry is back.
    pub async fn publish(
        &self,
        cluster: &str,
        conn: &str,
        epoch: Option<u64>,
        current: &ConnRoutes,
        action: RouteAction,
        routes: Vec<RouteSpec>,
    ) -> (ConnRoutes, RoutesAck, Result<(), RegistryError>) {
        let (good, ack) = self.vet_routes(cluster, routes);
        let others = match self.cluster_routes(cluster).await {
            Ok(mut all) => {
                all.remove(conn);
                Ok(all)
            }
            Err(e) => Err(e),
        };
        let (others, loaded) = match others {
            Ok(o) => (o, Ok(())),
            Err(e) => (ClusterRoutes::new(), Err(e)),
        };
        let (next, ack) = table::apply_message(&others, current, action, good, ack, self.quotas);
        if loaded.is_err() {
            return (next, ack, loaded);
        }
        let stored = self.store_set(cluster, conn, epoch, &next).await;
        (next, ack, stored)
    }

    /// Every connection's routes of `cluster`, from the store.
    async fn cluster_routes(&self, cluster: &str) -> Result<ClusterRoutes, RegistryError> {
        match &self.store {
            Store::Memory(m) => Ok(m.routes(cluster)),
            Store::Redis(r) => {
                let raw = self.note(r.load_routes(cluster).await)?;
                Ok(raw
                    .into_iter()
                    .filter_map(|(conn, json)| {
                        serde_json::from_str::<ConnRoutes>(&json)
                            .map_err(|e| tracing::warn!(%cluster, %conn, error = %e, "unreadable route set in Redis; ignored"))
                            .ok()
                            .map(|set| (conn, set))
                    })
                    .collect())
            }
        }
    }

    /// Stores (an empty set removes) the route set of `conn`, written by the tunnel holding
    /// its lease at `epoch`.
    pub async fn store_set(
        &self,
        cluster: &str,
        conn: &str,
        epoch: Option<u64>,
        set: &ConnRoutes,
    ) -> Result<(), RegistryError> {
        match &self.store {
            Store::Memory(m) => {
                m.put(cluster, conn, epoch.unwrap_or(0), set.clone());
                Ok(())
            }
            Store::Redis(r) => {
                let Some(epoch) = epoch else {
                    return Err(RegistryError::Unavailable(
                        "this tunnel holds no lease yet".into(),
                    ));
                };
                let json = (!set.routes.is_empty())
                    .then(|| serde_json::to_string(set).unwrap_or_default());
                // The quota is checked above; this ceiling only stops nodes racing far past it.
                let ceiling = self.quotas.max_bytes.saturating_mul(2) + 64 * 1024;
                let ok = self.note(
                    r.put_routes(cluster, conn, epoch, json, ceiling, now_ms(), ROUTE_TTL)
                        .await,
                )?;
                if !ok {
                    tracing::warn!(%cluster, %conn, epoch, "route set not stored: fenced or over the byte ceiling");
                }
                self.routes_changed(cluster).await;
                Ok(())
            }
        }
    }

    /// Removes the route set of `conn` (its tunnel closed), unless a newer tunnel of the same
    /// connection id holds it.
    pub async fn withdraw(&self, cluster: &str, conn: &str, epoch: Option<u64>) {
        match &self.store {
            Store::Memory(m) => m.remove(cluster, conn, epoch.unwrap_or(0)),
            Store::Redis(r) => {
                let Some(epoch) = epoch else { return };
                let res = r
                    .put_routes(cluster, conn, epoch, None, 0, now_ms(), ROUTE_TTL)
                    .await;
                if self.note(res).is_ok() {
                    self.routes_changed(cluster).await;
                }
            }
        }
    }

    /// Drops this node's cached table of `cluster` and tells the other nodes.
    async fn routes_changed(&self, cluster: &str) {
        self.cache.forget_cluster(cluster);
        if let Some(r) = self.redis_store() {
            let ev = Event::Routes {
                cluster: cluster.to_string(),
                from: self.node_id.clone(),
            };
            let _ = r
                .publish(serde_json::to_string(&ev).unwrap_or_default())
                .await;
        }
    }

    /// The cluster a host would belong to by its name, if that cluster exists: by the
    /// gateway's naming schemes, or as a verified custom domain.
    pub fn cluster_of<'h>(&self, host: &'h str) -> Option<std::borrow::Cow<'h, str>> {
        if let Some(c) = self.owner_label(host).filter(|c| self.knows_cluster(c)) {
            return Some(std::borrow::Cow::Borrowed(c));
        }
        self.custom_owner(host).map(std::borrow::Cow::Owned)
    }

    /// The route table of `cluster`: from memory, or the cache in front of Redis (served stale
    /// while Redis is unreachable).
    async fn table(&self, cluster: &str) -> Result<Arc<RouteTable>, RegistryError> {
        match &self.store {
            Store::Memory(m) => Ok(m.table(cluster)),
            Store::Redis(r) => {
                let hit = self.cache.table(cluster);
                if let Some(h) = &hit
                    && h.fresh
                {
                    r.note_cache(true);
                    return Ok(h.table.clone());
                }
                // One load per cluster at a time: lookups that miss while it runs wait for it
                // instead of each asking Redis for the same table.
                let gate = self
                    .loading
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(cluster.to_string())
                    .or_default()
                    .clone();
                let _one = gate.lock().await;
                if let Some(h) = self.cache.table(cluster).filter(|h| h.fresh) {
                    r.note_cache(true);
                    return Ok(h.table);
                }
                r.note_cache(false);
                match self.cluster_routes(cluster).await {
                    Ok(all) => Ok(self
                        .cache
                        .put_table(cluster, RouteTable::build(cluster, &all))),
                    Err(e) => hit.map(|h| h.table).ok_or(e),
                }
            }
        }
    }

    /// The route for a normalised host and a request path. A host names its cluster, so
    /// unknown clusters are refused from memory without asking Redis.
    pub async fn lookup(
        &self,
        host: &str,
        path: &str,
    ) -> Result<Option<Arc<RouteEntry>>, RegistryError> {
        let Some(cluster) = self.cluster_of(host) else {
            return Ok(None);
        };
        Ok(self.table(&cluster).await?.lookup(host, path))
    }

    /// Drops every cached entry (benchmarks measure the uncached path with it).
    pub fn clear_cache(&self) {
        self.cache.clear();
    }

    /// Distinct routes of `cluster` (the `gateway_active_routes` gauge): the local store's, or
    /// the cached table's with Redis.
    pub fn route_count(&self, cluster: &str) -> usize {
        match &self.store {
            Store::Memory(m) => m.table(cluster).len(),
            Store::Redis(_) => self.cache.table(cluster).map_or(0, |h| h.table.len()),
        }
    }

    /// Records that this node holds a tunnel of `cluster` (connection `conn`); refused when
    /// the cluster already holds `max` live tunnels (`local` of them on this node, which is
    /// all of them without Redis).
    pub async fn claim_tunnel(
        &self,
        cluster: &str,
        conn: &str,
        lease: Duration,
        local: usize,
        max: usize,
    ) -> Result<Claim, RegistryError> {
        match &self.store {
            Store::Memory(_) if local >= max => Ok(Claim::TooMany),
            Store::Memory(_) => Ok(Claim::Held(self.epochs.fetch_add(1, Ordering::Relaxed) + 1)),
            Store::Redis(r) => {
                let now = now_ms();
                let until = now + lease.as_millis() as u64;
                let epoch = self.note(
                    r.claim(cluster, conn, &self.node_id, until, lease, now, max)
                        .await,
                )?;
                self.cache.forget_owners(cluster);
                Ok(epoch.map_or(Claim::TooMany, Claim::Held))
            }
        }
    }

    pub async fn refresh_tunnel(
        &self,
        cluster: &str,
        conn: &str,
        epoch: u64,
        lease: Duration,
    ) -> Result<LeaseState, RegistryError> {
        match &self.store {
            Store::Memory(_) => Ok(LeaseState::Held),
            Store::Redis(r) => {
                let until = now_ms() + lease.as_millis() as u64;
                Ok(
                    match self.note(
                        r.refresh(cluster, conn, &self.node_id, epoch, until, lease, ROUTE_TTL)
                            .await,
                    )? {
                        1 => LeaseState::Held,
                        0 => LeaseState::Lost,
                        _ => LeaseState::Fenced,
                    },
                )
            }
        }
    }

    pub async fn release_tunnel(&self, cluster: &str, conn: &str, epoch: u64) {
        if let Some(r) = self.redis_store() {
            let _ = self.note(r.release(cluster, conn, epoch).await);
            self.cache.forget_owners(cluster);
        }
    }

    /// Other nodes holding a live tunnel of `cluster`.
    pub async fn remote_owners(&self, cluster: &str) -> Result<Arc<Vec<Owner>>, RegistryError> {
        let Some(r) = self.redis_store() else {
            return Ok(Arc::default());
        };
        if let Some(o) = self.cache.owners(cluster) {
            return Ok(o);
        }
        let found = self.note(r.owners(cluster, now_ms()).await)?;
        let mut owners: Vec<Owner> = Vec::new();
        for (lease, node) in found {
            if lease.node == self.node_id {
                continue;
            }
            if let Some(o) = owners.iter_mut().find(|o| o.node_id == lease.node) {
                o.conns.push(lease.conn);
                continue;
            }
            if let Ok(rec) = serde_json::from_str::<NodeRecord>(&node) {
                owners.push(Owner {
                    node_id: lease.node,
                    peer_addr: rec.peer_addr,
                    conns: vec![lease.conn],
                });
            }
        }
        Ok(self.cache.put_owners(cluster, owners))
    }

    /// Forgets what is cached of `cluster` (its route table and owners): the next lookup asks
    /// Redis.
    pub fn forget_cached(&self, cluster: &str) {
        self.cache.forget_cluster(cluster);
    }

    /// Forgets `node` as an owner of `cluster` until the next refresh (it said "not here").
    pub fn drop_owner(&self, cluster: &str, node: &str) {
        self.cache.drop_owner(cluster, node);
    }

    /// Announces this node (`node:{id}` with a short TTL).
    pub async fn announce_node(
        &self,
        record: &NodeRecord,
        ttl: Duration,
    ) -> Result<(), RegistryError> {
        match self.redis_store() {
            Some(r) => self.note(
                r.put_node(
                    &self.node_id,
                    serde_json::to_string(record).unwrap_or_default(),
                    ttl,
                )
                .await,
            ),
            None => Ok(()),
        }
    }

    pub async fn withdraw_node(&self) {
        if let Some(r) = self.redis_store() {
            let _ = r.del_node(&self.node_id).await;
        }
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
mod tests {
    use super::*;
    use crate::config::Secret;
    use tunnelgate_proto::routes::PathType;

    fn reg() -> Arc<Registry> {
        Registry::in_memory(
            "gw.test",
            &[ClusterArg {
                id: "demo".into(),
                token: Secret::new("s3cret-s3cret-s3cret-s3cret-s3cret"),
            }],
        )
    }

    fn route(host: &str, path: &str) -> RouteSpec {
        RouteSpec {
            host: host.into(),
            path: path.into(),
            ..Default::default()
        }
    }

    async fn hit(r: &Registry, h: &str, p: &str) -> Option<(String, String)> {
        r.lookup(h, p)
            .await
            .unwrap()
            .map(|e| (e.spec.host.clone(), e.spec.path.clone()))
    }

    #[test]
    fn tokens_identify_clusters() {
        let r = reg();
        assert_eq!(
            r.authenticate("s3cret-s3cret-s3cret-s3cret-s3cret"),
            Some(("demo".to_string(), tenants::BOOTSTRAP_TOKEN_ID.to_string()))
        );
        assert_eq!(r.authenticate("wrong"), None);
        assert_eq!(unhex(&hex(&token_hash("x"))), Some(token_hash("x")));
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn claims_only_own_names() {
        let r = reg();
        assert!(r.check_claim("demo", "demo.gw.test").is_ok());
        assert!(r.check_claim("demo", "app.demo.gw.test").is_ok());
        assert!(r.check_claim("demo", "*.demo.gw.test").is_ok());
        assert!(r.check_claim("demo", "a.b.demo.gw.test").is_ok());
        assert!(r.check_claim("demo", "other.gw.test").is_err());
        assert!(r.check_claim("demo", "evildemo.gw.test").is_err());
        assert!(r.check_claim("demo", "*.gw.test").is_err());
        assert!(r.check_claim("demo", "demo.gw.test.evil.com").is_err());
        let r = reg().with_policy(
            r.quotas(),
            vec!["demo.gw.test".into(), "t.demo.gw.test".into()],
        );
        assert!(r.check_claim("demo", "demo.gw.test").is_err());
        assert!(r.check_claim("demo", "t.demo.gw.test").is_err());
        assert!(r.check_claim("demo", "*.demo.gw.test").is_err());
        assert!(r.check_claim("demo", "app.demo.gw.test").is_ok());
        assert_eq!(r.owner_label("a.b.demo.gw.test"), Some("demo"));
        // The flat scheme: one label, `--` before the cluster.
        assert!(r.check_claim("demo", "app--demo.gw.test").is_ok());
        assert!(r.check_claim("demo", "app--other.gw.test").is_err());
        assert!(r.check_claim("demo", "--demo.gw.test").is_err());
        assert!(r.check_claim("demo", "x.app--demo.gw.test").is_err());
        assert_eq!(r.owner_label("app--demo.gw.test"), Some("demo"));
        assert_eq!(r.owner_label("a--b--demo.gw.test"), Some("demo"));
        assert!(check_cluster_id("a--b").is_err());
        assert_eq!(r.owner_label("demo.gw.test"), Some("demo"));
        assert_eq!(r.owner_label("gw.test"), None);
        assert_eq!(r.owner_label("evil.com"), None);
    }

    async fn publish(
        r: &Registry,
        conn: &str,
        action: RouteAction,
        routes: Vec<RouteSpec>,
    ) -> RoutesAck {
        let cur = ConnRoutes {
            agent: conn.into(),
            routes: r
                .cluster_routes("demo")
                .await
                .unwrap()
                .remove(conn)
                .map(|c| c.routes)
                .unwrap_or_default(),
        };
        let (_, ack, stored) = r.publish("demo", conn, Some(1), &cur, action, routes).await;
        stored.unwrap();
        ack
    }

    #[tokio::test]
    async fn rejected_routes_are_not_stored() {
        let r = reg();
        let ack = publish(
            &r,
            "c1",
            RouteAction::Sync,
            vec![
                route("App.Demo.gw.test", "/"),
                route("bank.other.gw.test", "/"),
                route("big.demo.gw.test", &format!("/{}", "x".repeat(1 << 20))),
                route("dots.demo.gw.test", "/a/../b"),
            ],
        )
        .await;
        assert_eq!(ack.accepted.len(), 1);
        assert_eq!(ack.rejected.len(), 3);
        assert_eq!(ack.rejected[0].host, "bank.other.gw.test");
        assert!(
            ack.rejected[1].path.len() <= 256,
            "a refusal does not echo a megabyte"
        );
        assert!(hit(&r, "app.demo.gw.test", "/x").await.is_some());
        assert!(hit(&r, "bank.other.gw.test", "/").await.is_none());
    }

    #[tokio::test]
    async fn sync_replaces_and_delete_removes_only_this_connections_routes() {
        let r = reg();
        publish(
            &r,
            "c1",
            RouteAction::Add,
            vec![route("a.demo.gw.test", "/")],
        )
        .await;
        publish(
            &r,
            "c1",
            RouteAction::Add,
            vec![route("b.demo.gw.test", "/")],
        )
        .await;
        publish(
            &r,
            "c2",
            RouteAction::Sync,
            vec![route("z.demo.gw.test", "/")],
        )
        .await;
        assert_eq!(r.route_count("demo"), 3);
        publish(
            &r,
            "c1",
            RouteAction::Sync,
            vec![route("c.demo.gw.test", "/")],
        )
        .await;
        assert!(hit(&r, "a.demo.gw.test", "/").await.is_none());
        assert!(hit(&r, "c.demo.gw.test", "/").await.is_some());
        assert!(
            hit(&r, "z.demo.gw.test", "/").await.is_some(),
            "c2's routes stay"
        );
        publish(
            &r,
            "c1",
            RouteAction::Delete,
            vec![route("c.demo.gw.test", "/")],
        )
        .await;
        assert_eq!(r.route_count("demo"), 1);
        r.withdraw("demo", "c2", Some(1)).await;
        assert_eq!(r.route_count("demo"), 0, "routes leave with their tunnel");
    }

    #[tokio::test]
    async fn wildcard_and_path_precedence() {
        let r = reg();
        let mut exact = route("a.demo.gw.test", "/api");
        exact.path_type = PathType::Exact;
        publish(
            &r,
            "c1",
            RouteAction::Sync,
            vec![
                route("*.demo.gw.test", "/"),
                route("a.demo.gw.test", "/"),
                exact,
            ],
        )
        .await;
        let s = |h: &str, p: &str| Some((h.to_string(), p.to_string()));
        assert_eq!(
            hit(&r, "a.demo.gw.test", "/api").await,
            s("a.demo.gw.test", "/api")
        );
        assert_eq!(
            hit(&r, "a.demo.gw.test", "/api/x").await,
            s("a.demo.gw.test", "/")
        );
        assert_eq!(
            hit(&r, "zzz.demo.gw.test", "/").await,
            s("*.demo.gw.test", "/")
        );
        // A wildcard covers exactly one label.
        assert_eq!(hit(&r, "x.zzz.demo.gw.test", "/").await, None);
    }
}
