//! Routes: publishing a connection's route set (vetted, checked against the cluster's other
//! agents and its quotas, stored), withdrawing it, and looking a request up — from the store's
//! own table in memory, or through the byte-bounded cache in front of Redis, one load per
//! cluster at a time, served stale while Redis is unreachable.

use std::sync::Arc;

use tunnelgate_proto::control::{RouteAction, RoutesAck};
use tunnelgate_proto::routes::RouteSpec;

use super::table::{self, ClusterRoutes, ConnRoutes, RouteEntry, RouteTable};
use super::{Event, Registry, RegistryError};

impl Registry {
    /// Why `cluster` may not publish `host`, if it may not.
    pub fn check_claim(&self, cluster: &str, host: &str) -> Result<(), String> {
        self.names()
            .check(cluster, host, |h| self.domain_registered_to(h))
    }

    /// Checks the routes of an `ingress_routes` message from `cluster`'s agent one by one:
    /// normalised, within the cluster's names, within the field bounds. Refused routes are
    /// listed in the acknowledgement and never stored.
    pub fn vet_routes(&self, cluster: &str, routes: Vec<RouteSpec>) -> (Vec<RouteSpec>, RoutesAck) {
        self.names()
            .vet(cluster, routes, |h| self.domain_registered_to(h))
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
        let (others, loaded) = match self.cluster_routes(cluster).await {
            Ok(mut all) => {
                all.remove(conn);
                (all, Ok(()))
            }
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
    pub(super) async fn cluster_routes(
        &self,
        cluster: &str,
    ) -> Result<ClusterRoutes, RegistryError> {
        self.note(self.store.routes(cluster).await)
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
        // The quota is checked before; this ceiling only stops nodes racing far past it.
        let ceiling = self.quotas.max_bytes.saturating_mul(2) + 64 * 1024;
        let stored = self.note(
            self.store
                .put_routes(cluster, conn, epoch, set, ceiling)
                .await,
        )?;
        if !stored {
            tracing::warn!(%cluster, %conn, ?epoch, "route set not stored: fenced or over the byte ceiling");
        }
        self.routes_changed(cluster).await;
        Ok(())
    }

    /// Removes the route set of `conn` (its tunnel closed), unless a newer tunnel of the same
    /// connection id holds it.
    pub async fn withdraw(&self, cluster: &str, conn: &str, epoch: Option<u64>) {
        let res = self.store.remove_routes(cluster, conn, epoch).await;
        if self.note(res).is_ok() {
            self.routes_changed(cluster).await;
        }
    }

    /// Drops this node's cached table of `cluster` and tells the other nodes.
    async fn routes_changed(&self, cluster: &str) {
        self.cache.forget_cluster(cluster);
        if self.store.is_shared() {
            let ev = Event::Routes {
                cluster: cluster.to_string(),
                from: self.node_id.clone(),
            };
            let _ = self
                .store
                .publish(serde_json::to_string(&ev).unwrap_or_default())
                .await;
        }
    }

    /// The route table of `cluster`: the store's own, or the cache in front of it (served
    /// stale while the store is unreachable).
    async fn table(&self, cluster: &str) -> Result<Arc<RouteTable>, RegistryError> {
        if let Some(t) = self.store.local_table(cluster) {
            return Ok(t);
        }
        let hit = self.cache.table(cluster);
        if let Some(h) = &hit
            && h.fresh
        {
            self.store.note_cache(true);
            return Ok(h.table.clone());
        }
        // One load per cluster at a time: lookups that miss while it runs wait for it instead
        // of each asking Redis for the same table.
        let gate = self
            .loading
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(cluster.to_string())
            .or_default()
            .clone();
        let _one = gate.lock().await;
        if let Some(h) = self.cache.table(cluster).filter(|h| h.fresh) {
            self.store.note_cache(true);
            return Ok(h.table);
        }
        self.store.note_cache(false);
        match self.cluster_routes(cluster).await {
            Ok(all) => Ok(self
                .cache
                .put_table(cluster, RouteTable::build(cluster, &all))),
            Err(e) => hit.map(|h| h.table).ok_or(e),
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

    /// Distinct routes of `cluster` (the `gateway_active_routes` gauge): the store's own
    /// table's, or the cached table's.
    pub fn route_count(&self, cluster: &str) -> usize {
        match self.store.local_table(cluster) {
            Some(t) => t.len(),
            None => self.cache.table(cluster).map_or(0, |h| h.table.len()),
        }
    }
}
