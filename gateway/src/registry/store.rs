//! Where routes, ownership leases and node records live, behind one trait: the in-memory store
//! of a single node ([`Memory`]) or Redis, shared by every node ([`RedisStore`]). The registry
//! calls the trait and never asks which one it has; the few capabilities only Redis has (the
//! events channel, records shared between nodes) are asked for through [`Store::redis`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::memory::Memory;
use super::redis::{Lease, RedisStore};
use super::table::{ClusterRoutes, ConnRoutes, RouteTable};
use super::{LeaseState, ROUTE_TTL, RegistryError, now_ms};

#[async_trait]
pub(super) trait Store: Send + Sync {
    /// True when other nodes see what this store holds.
    fn is_shared(&self) -> bool;

    /// The Redis store, for what only it can do (records shared between nodes, events).
    fn redis(&self) -> Option<&RedisStore>;

    /// A cluster's route table when the store keeps it built in memory (no cache in front);
    /// `None`: load it through the cache.
    fn local_table(&self, cluster: &str) -> Option<Arc<RouteTable>>;

    /// Counts a route-table cache hit or miss.
    fn note_cache(&self, hit: bool);

    /// Every connection's routes of `cluster`.
    async fn routes(&self, cluster: &str) -> Result<ClusterRoutes, RegistryError>;

    /// Stores (an empty set removes) `conn`'s route set, written by the tunnel holding its
    /// lease at `epoch`. Ok(false) when fenced or over the cluster's byte `ceiling`.
    async fn put_routes(
        &self,
        cluster: &str,
        conn: &str,
        epoch: Option<u64>,
        set: &ConnRoutes,
        ceiling: usize,
    ) -> Result<bool, RegistryError>;

    /// Removes `conn`'s set unless a newer tunnel of that connection id holds it.
    async fn remove_routes(
        &self,
        cluster: &str,
        conn: &str,
        epoch: Option<u64>,
    ) -> Result<(), RegistryError>;

    /// Claims the ownership lease of `conn` for `node`: its epoch, or `None` when the cluster
    /// already holds `max` live tunnels (`local` of them on this node).
    #[allow(clippy::too_many_arguments)]
    async fn claim(
        &self,
        cluster: &str,
        conn: &str,
        node: &str,
        lease: Duration,
        local: usize,
        max: usize,
    ) -> Result<Option<u64>, RegistryError>;

    async fn refresh(
        &self,
        cluster: &str,
        conn: &str,
        node: &str,
        epoch: u64,
        lease: Duration,
    ) -> Result<LeaseState, RegistryError>;

    async fn release(&self, cluster: &str, conn: &str, epoch: u64) -> Result<(), RegistryError>;

    /// Live leases of `cluster` with their node's record (JSON).
    async fn owners(&self, cluster: &str) -> Result<Vec<(Lease, String)>, RegistryError>;

    async fn put_node(&self, id: &str, record: String, ttl: Duration) -> Result<(), RegistryError>;

    async fn del_node(&self, id: &str) -> Result<(), RegistryError>;

    /// The live nodes' records, (node id, record JSON); none in memory (one node).
    async fn nodes(&self) -> Result<Vec<(String, String)>, RegistryError>;

    /// Tells the other nodes (nobody to tell in memory).
    async fn publish(&self, event: String) -> Result<(), RegistryError>;
}

#[async_trait]
impl Store for Memory {
    fn is_shared(&self) -> bool {
        false
    }

    fn redis(&self) -> Option<&RedisStore> {
        None
    }

    fn local_table(&self, cluster: &str) -> Option<Arc<RouteTable>> {
        Some(self.table(cluster))
    }

    fn note_cache(&self, _hit: bool) {}

    async fn routes(&self, cluster: &str) -> Result<ClusterRoutes, RegistryError> {
        Ok(Memory::routes(self, cluster))
    }

    async fn put_routes(
        &self,
        cluster: &str,
        conn: &str,
        epoch: Option<u64>,
        set: &ConnRoutes,
        _ceiling: usize,
    ) -> Result<bool, RegistryError> {
        self.put(cluster, conn, epoch.unwrap_or(0), set.clone());
        Ok(true)
    }

    async fn remove_routes(
        &self,
        cluster: &str,
        conn: &str,
        epoch: Option<u64>,
    ) -> Result<(), RegistryError> {
        self.remove(cluster, conn, epoch.unwrap_or(0));
        Ok(())
    }

    async fn claim(
        &self,
        _cluster: &str,
        _conn: &str,
        _node: &str,
        _lease: Duration,
        local: usize,
        max: usize,
    ) -> Result<Option<u64>, RegistryError> {
        // Every tunnel of a cluster is on this node: the local count is the quota's.
        Ok((local < max).then(|| self.next_epoch()))
    }

    async fn refresh(
        &self,
        _cluster: &str,
        _conn: &str,
        _node: &str,
        _epoch: u64,
        _lease: Duration,
    ) -> Result<LeaseState, RegistryError> {
        Ok(LeaseState::Held)
    }

    async fn release(&self, _: &str, _: &str, _: u64) -> Result<(), RegistryError> {
        Ok(())
    }

    async fn owners(&self, _cluster: &str) -> Result<Vec<(Lease, String)>, RegistryError> {
        Ok(Vec::new())
    }

    async fn put_node(&self, _: &str, _: String, _: Duration) -> Result<(), RegistryError> {
        Ok(())
    }

    async fn del_node(&self, _id: &str) -> Result<(), RegistryError> {
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<(String, String)>, RegistryError> {
        Ok(Vec::new())
    }

    async fn publish(&self, _event: String) -> Result<(), RegistryError> {
        Ok(())
    }
}

#[async_trait]
impl Store for RedisStore {
    fn is_shared(&self) -> bool {
        true
    }

    fn redis(&self) -> Option<&RedisStore> {
        Some(self)
    }

    fn local_table(&self, _cluster: &str) -> Option<Arc<RouteTable>> {
        None
    }

    fn note_cache(&self, hit: bool) {
        RedisStore::note_cache(self, hit);
    }

    async fn routes(&self, cluster: &str) -> Result<ClusterRoutes, RegistryError> {
        let raw = self.load_routes(cluster).await?;
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

    async fn put_routes(
        &self,
        cluster: &str,
        conn: &str,
        epoch: Option<u64>,
        set: &ConnRoutes,
        ceiling: usize,
    ) -> Result<bool, RegistryError> {
        let Some(epoch) = epoch else {
            return Err(RegistryError::Unavailable(
                "this tunnel holds no lease yet".into(),
            ));
        };
        let json = (!set.routes.is_empty()).then(|| serde_json::to_string(set).unwrap_or_default());
        RedisStore::put_routes(
            self,
            cluster,
            conn,
            epoch,
            json,
            ceiling,
            now_ms(),
            ROUTE_TTL,
        )
        .await
    }

    async fn remove_routes(
        &self,
        cluster: &str,
        conn: &str,
        epoch: Option<u64>,
    ) -> Result<(), RegistryError> {
        let Some(epoch) = epoch else { return Ok(()) };
        RedisStore::put_routes(self, cluster, conn, epoch, None, 0, now_ms(), ROUTE_TTL)
            .await
            .map(|_| ())
    }

    async fn claim(
        &self,
        cluster: &str,
        conn: &str,
        node: &str,
        lease: Duration,
        _local: usize,
        max: usize,
    ) -> Result<Option<u64>, RegistryError> {
        let now = now_ms();
        let until = now + lease.as_millis() as u64;
        RedisStore::claim(self, cluster, conn, node, until, lease, now, max).await
    }

    async fn refresh(
        &self,
        cluster: &str,
        conn: &str,
        node: &str,
        epoch: u64,
        lease: Duration,
    ) -> Result<LeaseState, RegistryError> {
        let until = now_ms() + lease.as_millis() as u64;
        let state =
            RedisStore::refresh(self, cluster, conn, node, epoch, until, lease, ROUTE_TTL).await?;
        Ok(match state {
            1 => LeaseState::Held,
            0 => LeaseState::Lost,
            _ => LeaseState::Fenced,
        })
    }

    async fn release(&self, cluster: &str, conn: &str, epoch: u64) -> Result<(), RegistryError> {
        RedisStore::release(self, cluster, conn, epoch).await
    }

    async fn owners(&self, cluster: &str) -> Result<Vec<(Lease, String)>, RegistryError> {
        RedisStore::owners(self, cluster, now_ms()).await
    }

    async fn put_node(&self, id: &str, record: String, ttl: Duration) -> Result<(), RegistryError> {
        RedisStore::put_node(self, id, record, ttl, now_ms()).await
    }

    async fn del_node(&self, id: &str) -> Result<(), RegistryError> {
        RedisStore::del_node(self, id).await
    }

    async fn nodes(&self) -> Result<Vec<(String, String)>, RegistryError> {
        RedisStore::nodes(self, now_ms()).await
    }

    async fn publish(&self, event: String) -> Result<(), RegistryError> {
        RedisStore::publish(self, event).await
    }
}
