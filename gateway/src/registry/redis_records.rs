//! The Redis store's tenant records and what hangs off them: cluster records (created,
//! replaced, deleted with everything keyed under them), ACME challenges, locks and
//! certificates, agent reports, and rate-limit permits. Same connection, timeouts and counting
//! as the rest of [`RedisStore`].

use std::time::Duration;

use redis::AsyncCommands;

use super::redis::RedisStore;
use super::{RegistryError, keys};

impl RedisStore {
    /// Writes a cluster record unless one exists; true when written. The record and its set
    /// membership appear together (a cluster is never visible without its token hashes).
    pub async fn put_cluster_if_absent(
        &self,
        id: &str,
        record: String,
    ) -> Result<bool, RegistryError> {
        let mut inv = self.create.prepare_invoke();
        inv.key(keys::cluster(id))
            .key(keys::CLUSTERS)
            .arg(id)
            .arg(record);
        let n: i64 = self
            .run("put_cluster", |mut c| async move {
                inv.invoke_async(&mut c).await
            })
            .await?;
        Ok(n == 1)
    }

    /// Replaces an existing cluster record; false when there is none.
    pub async fn replace_cluster(&self, id: &str, record: String) -> Result<bool, RegistryError> {
        let key = keys::cluster(id);
        let done: Option<String> = self
            .run("replace_cluster", |mut c| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(record)
                    .arg("XX")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(done.is_some())
    }

    /// Deletes a cluster: its record, its membership, its route sets and leases.
    pub async fn put_acme_challenge(
        &self,
        token: &str,
        key_auth: &str,
        ttl: Duration,
    ) -> Result<(), RegistryError> {
        let (key, v) = (keys::acme_challenge(token), key_auth.to_string());
        self.run("acme_challenge", |mut c| async move {
            c.pset_ex::<_, _, ()>(key, v, ttl.as_millis() as u64).await
        })
        .await
    }

    pub async fn acme_challenge(&self, token: &str) -> Result<Option<String>, RegistryError> {
        let key = keys::acme_challenge(token);
        self.run("acme_challenge", |mut c| async move { c.get(key).await })
            .await
    }

    /// SET NX PX: true when this node took the lock.
    pub async fn acme_lock(
        &self,
        host: &str,
        node: &str,
        ttl: Duration,
    ) -> Result<bool, RegistryError> {
        let (key, node) = (keys::acme_lock(host), node.to_string());
        let got: Option<String> = self
            .run("acme_lock", |mut c| async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(node)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl.as_millis() as u64)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(got.is_some())
    }

    pub async fn acme_unlock(&self, host: &str) -> Result<(), RegistryError> {
        let key = keys::acme_lock(host);
        self.run(
            "acme_lock",
            |mut c| async move { c.del::<_, ()>(key).await },
        )
        .await
    }

    pub async fn put_cert(&self, host: &str, json: String) -> Result<(), RegistryError> {
        let host = host.to_string();
        self.run("certs", |mut c| async move {
            c.hset::<_, _, _, ()>(keys::CERTS, host, json).await
        })
        .await
    }

    pub async fn certs(&self) -> Result<Vec<String>, RegistryError> {
        self.run("certs", |mut c| async move { c.hvals(keys::CERTS).await })
            .await
    }

    /// Stores what connection `conn`'s agent reported, for `ttl`.
    pub async fn put_agent(
        &self,
        cluster: &str,
        conn: &str,
        json: String,
        ttl: Duration,
    ) -> Result<(), RegistryError> {
        let (key, conn) = (keys::agents(cluster), conn.to_string());
        self.run("put_agent", |mut c| async move {
            redis::pipe()
                .hset(&key, conn, json)
                .ignore()
                .pexpire(&key, ttl.as_millis() as i64)
                .ignore()
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    pub async fn del_agent(&self, cluster: &str, conn: &str) -> Result<(), RegistryError> {
        let (key, conn) = (keys::agents(cluster), conn.to_string());
        self.run("del_agent", |mut c| async move {
            c.hdel::<_, _, ()>(key, conn).await
        })
        .await
    }

    /// Every agent report of `cluster` (JSON).
    pub async fn agents(&self, cluster: &str) -> Result<Vec<String>, RegistryError> {
        let key = keys::agents(cluster);
        self.run("agents", |mut c| async move { c.hvals(key).await })
            .await
    }

    pub async fn delete_cluster(&self, id: &str) -> Result<bool, RegistryError> {
        let (rec, routes, tunnel, agents, id) = (
            keys::cluster(id),
            keys::cluster_routes(id),
            keys::tunnel(id),
            keys::agents(id),
            id.to_string(),
        );
        let (n, _, _, _, _): (i64, i64, i64, i64, i64) = self
            .run("delete_cluster", |mut c| async move {
                redis::pipe()
                    .atomic()
                    .del(&rec)
                    .srem(keys::CLUSTERS, id)
                    .del(&routes)
                    .del(&tunnel)
                    .del(&agents)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(n == 1)
    }

    /// Takes up to `want` permits of `cluster`'s shared rate bucket.
    pub async fn take_permits(
        &self,
        cluster: &str,
        per_second: u32,
        burst: u32,
        want: u32,
    ) -> Result<u32, RegistryError> {
        let mut inv = self.take_permits.prepare_invoke();
        inv.key(keys::ratelimit(cluster))
            .arg(per_second.max(1))
            .arg(burst.max(1))
            .arg(want.max(1));
        let n: i64 = self
            .run("take_permits", |mut c| async move {
                inv.invoke_async(&mut c).await
            })
            .await?;
        Ok(u32::try_from(n).unwrap_or(0))
    }

    /// Every cluster record (id, JSON).
    pub async fn load_clusters(&self) -> Result<Vec<(String, String)>, RegistryError> {
        let ids: Vec<String> = self
            .run("load_clusters", |mut c| async move {
                c.smembers(keys::CLUSTERS).await
            })
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ks: Vec<String> = ids.iter().map(|i| keys::cluster(i)).collect();
        let vals: Vec<Option<String>> = self
            .run("load_clusters", |mut c| async move {
                redis::cmd("MGET").arg(&ks).query_async(&mut c).await
            })
            .await?;
        Ok(ids
            .into_iter()
            .zip(vals)
            .filter_map(|(i, v)| Some((i, v?)))
            .collect())
    }
}
