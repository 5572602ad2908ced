//! Who holds which tunnel: each tunnel's ownership lease (claimed under the cluster's tunnel
//! quota, refreshed, fenced by epoch, released), the other nodes holding a cluster's tunnels
//! (cached), and this node's own record (`node:{id}`, with a short TTL).

use std::sync::Arc;
use std::time::Duration;

use super::{Claim, LeaseState, NodeRecord, Owner, Registry, RegistryError};

impl Registry {
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
        let epoch = self.note(
            self.store
                .claim(cluster, conn, &self.node_id, lease, local, max)
                .await,
        )?;
        self.cache.forget_owners(cluster);
        Ok(epoch.map_or(Claim::TooMany, Claim::Held))
    }

    pub async fn refresh_tunnel(
        &self,
        cluster: &str,
        conn: &str,
        epoch: u64,
        lease: Duration,
    ) -> Result<LeaseState, RegistryError> {
        self.note(
            self.store
                .refresh(cluster, conn, &self.node_id, epoch, lease)
                .await,
        )
    }

    pub async fn release_tunnel(&self, cluster: &str, conn: &str, epoch: u64) {
        let _ = self.note(self.store.release(cluster, conn, epoch).await);
        self.cache.forget_owners(cluster);
    }

    /// Other nodes holding a live tunnel of `cluster`.
    pub async fn remote_owners(&self, cluster: &str) -> Result<Arc<Vec<Owner>>, RegistryError> {
        if !self.store.is_shared() {
            return Ok(Arc::default());
        }
        if let Some(o) = self.cache.owners(cluster) {
            return Ok(o);
        }
        let found = self.note(self.store.owners(cluster).await)?;
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
        let json = serde_json::to_string(record).unwrap_or_default();
        self.note(self.store.put_node(&self.node_id, json, ttl).await)
    }

    /// The live nodes (this one included) and their records; empty without Redis.
    pub async fn nodes(&self) -> Result<Vec<(String, NodeRecord)>, RegistryError> {
        let all = self.store.nodes().await;
        Ok(self
            .note(all)?
            .into_iter()
            .filter_map(|(id, json)| Some((id, serde_json::from_str(&json).ok()?)))
            .collect())
    }

    pub async fn withdraw_node(&self) {
        let _ = self.store.del_node(&self.node_id).await;
    }
}
