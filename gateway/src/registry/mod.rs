//! The registry facade: clusters and their tokens, the routes agents publish, and who owns each
//! cluster's tunnels. Everything else asks this module; it hides which store is behind it
//! (memory for one node, Redis for a cluster of nodes) and the caches in front of Redis.
//!
//! Who may claim a host is decided here: cluster `c` may publish `c.{domain}` and any name
//! under it, and nothing else, so no agent can take another tenant's hostname. The same rule
//! makes lookups cheap to refuse: a host names its cluster, and a host of an unknown cluster,
//! or one its cluster does not publish, is refused from memory without asking Redis.

mod cache;
pub mod keys;
mod memory;
pub mod redis;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tunnelgate_proto::control::{RouteAction, RouteKey, RouteRejection, RoutesAck};
use tunnelgate_proto::routes::{RouteSpec, check_route_host, wildcard_parent};

use self::redis::{CallCounter, RedisStore};
use crate::config::ClusterArg;
use cache::Cache;
use memory::Memory;

/// How long a published route lives without a heartbeat or route sync refreshing it.
pub const ROUTE_TTL: Duration = Duration::from_secs(300);

/// A route as stored: what the agent published and which cluster serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteEntry {
    #[serde(rename = "cluster_uuid")]
    pub cluster: String,
    #[serde(flatten)]
    pub spec: RouteSpec,
    #[serde(default)]
    pub updated_at: u64,
}

/// A node that holds a live tunnel of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub node_id: String,
    pub peer_addr: String,
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

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ClusterRecord {
    name: String,
    token_hash: String,
    created_at: u64,
}

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
        && !id.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "cluster id {id:?} must be one DNS label: a-z, 0-9 and '-', at most 63 characters"
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

enum Store {
    Memory(Memory),
    Redis(Box<RedisStore>),
}

/// The registry every part of the gateway calls.
pub struct Registry {
    domain: String,
    node_id: String,
    store: Store,
    /// Token hash → cluster id, for authentication without a round trip.
    tokens: RwLock<HashMap<[u8; 32], String>>,
    configured: Vec<ClusterArg>,
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
        let tokens = clusters
            .iter()
            .map(|c| (token_hash(c.token.expose()), c.id.clone()))
            .collect();
        Registry {
            domain: domain.to_string(),
            node_id: node_id.to_string(),
            store,
            tokens: RwLock::new(tokens),
            configured: clusters.to_vec(),
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

    /// The cluster a bearer token belongs to. Answered from memory.
    pub fn authenticate(&self, token: &str) -> Option<String> {
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&token_hash(token))
            .cloned()
    }

    fn knows_cluster(&self, cluster: &str) -> bool {
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|c| c == cluster)
    }

    /// Writes the configured clusters to Redis and loads every cluster (and token) from it.
    pub async fn sync_clusters(&self) -> Result<(), RegistryError> {
        let Some(r) = self.redis_store() else {
            return Ok(());
        };
        for c in &self.configured {
            let rec = ClusterRecord {
                name: c.id.clone(),
                token_hash: hex(&token_hash(c.token.expose())),
                created_at: now_ms(),
            };
            let json = serde_json::to_string(&rec).unwrap_or_default();
            self.note(r.put_cluster(&c.id, json).await)?;
        }
        let all = self.note(r.load_clusters().await)?;
        let mut tokens: HashMap<[u8; 32], String> = self
            .configured
            .iter()
            .map(|c| (token_hash(c.token.expose()), c.id.clone()))
            .collect();
        for (id, json) in all {
            match serde_json::from_str::<ClusterRecord>(&json)
                .ok()
                .and_then(|r| unhex(&r.token_hash))
            {
                Some(h) => {
                    tokens.insert(h, id);
                }
                None => {
                    tracing::warn!(cluster = %id, "unreadable cluster record in Redis; ignored")
                }
            }
        }
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = tokens;
        Ok(())
    }

    /// The cluster whose names include `host`: the label just before the domain.
    fn owner_label<'a>(&self, host: &'a str) -> Option<&'a str> {
        let rest = host.strip_suffix(self.domain.as_str())?.strip_suffix('.')?;
        Some(rest.rsplit('.').next().unwrap_or(rest)).filter(|c| !c.is_empty())
    }

    /// Why `cluster` may not publish `host`, if it may not.
    pub fn check_claim(&self, cluster: &str, host: &str) -> Result<(), String> {
        check_route_host(host).map_err(|e| format!("invalid host: {e}"))?;
        let name = host.strip_prefix("*.").unwrap_or(host);
        let own = format!("{cluster}.{}", self.domain);
        if name == own || name.ends_with(&format!(".{own}")) {
            Ok(())
        } else {
            Err(format!(
                "cluster {cluster:?} may only publish {own} and names under it"
            ))
        }
    }

    /// Checks an `ingress_routes` message from `cluster`'s agent: the routes it may publish
    /// (normalised) and the acknowledgement. Refused routes are never stored.
    pub fn vet_routes(&self, cluster: &str, routes: Vec<RouteSpec>) -> (Vec<RouteSpec>, RoutesAck) {
        let mut ack = RoutesAck::default();
        let mut good = Vec::with_capacity(routes.len());
        for mut r in routes {
            r.host = r.host.trim_end_matches('.').to_ascii_lowercase();
            if r.path.is_empty() {
                r.path = "/".into();
            }
            if r.path_type != tunnelgate_proto::routes::PathType::Exact && r.path.len() > 1 {
                r.path = r.path.trim_end_matches('/').to_string();
            }
            let verdict = self.check_claim(cluster, &r.host).and_then(|()| {
                if r.path.starts_with('/') {
                    Ok(())
                } else {
                    Err("path must start with '/'".into())
                }
            });
            match verdict {
                Ok(()) => {
                    ack.accepted.push(RouteKey {
                        host: r.host.clone(),
                        path: r.path.clone(),
                    });
                    good.push(r);
                }
                Err(reason) => ack.rejected.push(RouteRejection {
                    host: r.host,
                    path: r.path,
                    reason,
                }),
            }
        }
        (good, ack)
    }

    /// Applies an `ingress_routes` message from `cluster`'s agent.
    pub async fn apply_routes(
        &self,
        cluster: &str,
        action: RouteAction,
        routes: Vec<RouteSpec>,
    ) -> Result<RoutesAck, RegistryError> {
        let (good, ack) = self.vet_routes(cluster, routes);
        self.store_routes(cluster, action, good).await?;
        Ok(ack)
    }

    /// Stores already vetted routes.
    pub async fn store_routes(
        &self,
        cluster: &str,
        action: RouteAction,
        routes: Vec<RouteSpec>,
    ) -> Result<(), RegistryError> {
        match &self.store {
            Store::Memory(m) => {
                match action {
                    RouteAction::Add | RouteAction::Update => m.upsert(cluster, routes, ROUTE_TTL),
                    RouteAction::Delete => m.delete(cluster, &routes),
                    RouteAction::Sync => m.replace(cluster, routes, ROUTE_TTL),
                }
                Ok(())
            }
            Store::Redis(r) => {
                let updated_at = now_ms();
                let items = routes
                    .into_iter()
                    .map(|spec| {
                        let member = keys::route_member(&spec.host, &spec.path);
                        let json = (action != RouteAction::Delete).then(|| {
                            serde_json::to_string(&RouteEntry {
                                cluster: cluster.to_string(),
                                spec,
                                updated_at,
                            })
                            .unwrap_or_default()
                        });
                        (member, json)
                    })
                    .collect();
                self.note(r.apply(cluster, action, items, ROUTE_TTL).await)?;
                self.cache
                    .forget_cluster(cluster, |h| self.owner_label(h).map(str::to_string));
                let ev = Event::Routes {
                    cluster: cluster.to_string(),
                    from: self.node_id.clone(),
                };
                let _ = r
                    .publish(serde_json::to_string(&ev).unwrap_or_default())
                    .await;
                Ok(())
            }
        }
    }

    /// Keeps `cluster`'s routes alive for another TTL (heartbeat). False when the store has
    /// lost them (Redis restarted empty): the caller publishes them again.
    pub async fn touch(&self, cluster: &str) -> Result<bool, RegistryError> {
        match &self.store {
            Store::Memory(m) => {
                m.touch(cluster, ROUTE_TTL);
                Ok(true)
            }
            Store::Redis(r) => self.note(r.touch(cluster, ROUTE_TTL).await),
        }
    }

    /// The route for a normalised host and a request path.
    pub async fn lookup(
        &self,
        host: &str,
        path: &str,
    ) -> Result<Option<Arc<RouteEntry>>, RegistryError> {
        let r = match &self.store {
            Store::Memory(m) => return Ok(m.lookup(host, path)),
            Store::Redis(r) => r,
        };
        // The flood gate: a host names its cluster; unknown clusters and hosts the cluster
        // does not publish are refused from memory.
        let Some(cluster) = self.owner_label(host) else {
            return Ok(None);
        };
        if !self.knows_cluster(cluster) {
            return Ok(None);
        }
        let parent = wildcard_parent(host);
        let hosts = match self.cache.hosts(cluster) {
            Some(h) if h.fresh => h.hosts,
            stale => match self.note(r.cluster_hosts(cluster).await) {
                Ok(h) => self.cache.put_hosts(cluster, h),
                Err(e) => stale.map(|s| s.hosts).ok_or(e)?,
            },
        };
        let published = |h: &str| hosts.contains(h);
        if !published(host) && !parent.as_deref().is_some_and(published) {
            return Ok(None);
        }
        if let Some(hit) = self.cache.route(host, path).filter(|h| h.fresh) {
            return Ok(hit.entry);
        }
        let candidates = cache::candidate_keys(host, parent.as_deref(), path);
        let values = match self.note(r.mget(candidates).await) {
            Ok(v) => v,
            Err(e) => return self.cache.route(host, path).map(|h| h.entry).ok_or(e),
        };
        let entries: Vec<RouteEntry> = values
            .into_iter()
            .flatten()
            .filter_map(|v| serde_json::from_str(&v).ok())
            .collect();
        let best = cache::best_entry(&entries, host, parent.as_deref(), path).map(Arc::new);
        self.cache.put_route(host, path, best.clone());
        Ok(best)
    }

    /// Drops every cached entry (benchmarks measure the uncached path with it).
    pub fn clear_cache(&self) {
        self.cache.clear();
    }

    /// Live routes of `cluster` in the local store (the `gateway_active_routes` gauge); with
    /// Redis, the hosts the cache knows.
    pub fn route_count(&self, cluster: &str) -> usize {
        match &self.store {
            Store::Memory(m) => m.route_count(cluster),
            Store::Redis(_) => self.cache.hosts(cluster).map_or(0, |h| h.hosts.len()),
        }
    }

    /// Records that this node holds a tunnel of `cluster`; returns the lease's epoch.
    pub async fn claim_tunnel(
        &self,
        cluster: &str,
        conn: &str,
        lease: Duration,
    ) -> Result<u64, RegistryError> {
        match &self.store {
            Store::Memory(_) => Ok(self.epochs.fetch_add(1, Ordering::Relaxed) + 1),
            Store::Redis(r) => {
                let until = now_ms() + lease.as_millis() as u64;
                let epoch = self.note(r.claim(cluster, conn, &self.node_id, until, lease).await)?;
                self.cache.forget_owners(cluster);
                Ok(epoch)
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
                        r.refresh(cluster, conn, &self.node_id, epoch, until, lease)
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
            if lease.node == self.node_id || owners.iter().any(|o| o.node_id == lease.node) {
                continue;
            }
            if let Ok(rec) = serde_json::from_str::<NodeRecord>(&node) {
                owners.push(Owner {
                    node_id: lease.node,
                    peer_addr: rec.peer_addr,
                });
            }
        }
        Ok(self.cache.put_owners(cluster, owners))
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
                                    self.cache.forget_cluster(&cluster, |h| {
                                        self.owner_label(h).map(str::to_string)
                                    });
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
                token: Secret::new("s3cret"),
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
        assert_eq!(r.authenticate("s3cret").as_deref(), Some("demo"));
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
        assert_eq!(r.owner_label("a.b.demo.gw.test"), Some("demo"));
        assert_eq!(r.owner_label("demo.gw.test"), Some("demo"));
        assert_eq!(r.owner_label("gw.test"), None);
        assert_eq!(r.owner_label("evil.com"), None);
    }

    #[tokio::test]
    async fn rejected_routes_are_not_stored() {
        let r = reg();
        let ack = r
            .apply_routes(
                "demo",
                RouteAction::Sync,
                vec![
                    route("App.Demo.gw.test", "/"),
                    route("bank.other.gw.test", "/"),
                ],
            )
            .await
            .unwrap();
        assert_eq!(ack.accepted.len(), 1);
        assert_eq!(ack.rejected.len(), 1);
        assert_eq!(ack.rejected[0].host, "bank.other.gw.test");
        assert!(hit(&r, "app.demo.gw.test", "/x").await.is_some());
        assert!(hit(&r, "bank.other.gw.test", "/").await.is_none());
    }

    #[tokio::test]
    async fn sync_replaces_and_delete_removes() {
        let r = reg();
        let apply = |a, h: &'static str| {
            let r = r.clone();
            async move {
                r.apply_routes("demo", a, vec![route(h, "/")])
                    .await
                    .unwrap()
            }
        };
        apply(RouteAction::Add, "a.demo.gw.test").await;
        apply(RouteAction::Add, "b.demo.gw.test").await;
        assert_eq!(r.route_count("demo"), 2);
        apply(RouteAction::Sync, "c.demo.gw.test").await;
        assert!(hit(&r, "a.demo.gw.test", "/").await.is_none());
        assert!(hit(&r, "c.demo.gw.test", "/").await.is_some());
        apply(RouteAction::Delete, "c.demo.gw.test").await;
        assert_eq!(r.route_count("demo"), 0);
    }

    #[tokio::test]
    async fn wildcard_and_path_precedence() {
        let r = reg();
        let mut exact = route("a.demo.gw.test", "/api");
        exact.path_type = PathType::Exact;
        r.apply_routes(
            "demo",
            RouteAction::Sync,
            vec![
                route("*.demo.gw.test", "/"),
                route("a.demo.gw.test", "/"),
                exact,
            ],
        )
        .await
        .unwrap();
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
