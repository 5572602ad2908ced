//! Tenants at run time: cluster records with their agent tokens (stored only hashed), created,
//! listed, changed and deleted through the admin API, applied on every node without restart
//! (an event on the channel, and a periodic reload that heals a missed one).

use std::collections::BTreeMap;

pub use super::records::{BOOTSTRAP_TOKEN_ID, ClusterRecord, TenantError, TokenRecord};
use super::secret::{hex, new_token, random_hex, token_hash};
use super::{Event, Registry, RegistryError, now_ms};

/// Ids a tenant may not take: the gateway's own words and subtrees.
pub const RESERVED_IDS: &[&str] = &[
    "admin",
    "api",
    "app",
    "cname",
    "gateway",
    "gw",
    "k8s",
    "kubernetes",
    "localhost",
    "metrics",
    "peer",
    "status",
    "tunnel",
    "www",
];

impl Registry {
    /// Checks an id a tenant asks for: a DNS label, not reserved, not the first label of one
    /// of the gateway's own names.
    pub fn check_new_id(&self, id: &str) -> Result<(), TenantError> {
        super::check_cluster_id(id).map_err(TenantError::Invalid)?;
        let gateway_label = self
            .reserved
            .iter()
            .any(|h| h.strip_suffix(&format!(".{}", self.domain)) == Some(id));
        if RESERVED_IDS.contains(&id) || gateway_label {
            return Err(TenantError::Invalid(format!(
                "cluster id {id:?} is reserved"
            )));
        }
        Ok(())
    }

    /// Every cluster record.
    pub fn clusters(&self) -> Vec<ClusterRecord> {
        self.records
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn cluster(&self, id: &str) -> Option<ClusterRecord> {
        self.records
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Creates a cluster with one token; returns the record, the token id and the token (the
    /// only time it is shown).
    pub async fn create_cluster(
        &self,
        id: &str,
    ) -> Result<(ClusterRecord, String, String), TenantError> {
        self.check_new_id(id)?;
        let (rec, token_id, token) = ClusterRecord::create(id);
        match self.redis_store() {
            None => {
                let mut all = self.records_copy();
                if all.contains_key(id) {
                    return Err(TenantError::Exists(id.into()));
                }
                all.insert(id.to_string(), rec.clone());
                self.set_records(all);
            }
            Some(r) => {
                let json = serde_json::to_string(&rec).unwrap_or_default();
                if !self.note(r.put_cluster_if_absent(id, json).await)? {
                    return Err(TenantError::Exists(id.into()));
                }
                self.clusters_changed().await;
            }
        }
        Ok((rec, token_id, token))
    }

    /// Deletes a cluster: its tokens stop authenticating and its tunnels close on every node.
    pub async fn delete_cluster(&self, id: &str) -> Result<(), TenantError> {
        match self.redis_store() {
            None => {
                let mut all = self.records_copy();
                if all.remove(id).is_none() {
                    return Err(TenantError::NoCluster(id.into()));
                }
                self.set_records(all);
            }
            Some(r) => {
                if !self.note(r.delete_cluster(id).await)? {
                    return Err(TenantError::NoCluster(id.into()));
                }
                self.clusters_changed().await;
            }
        }
        Ok(())
    }

    /// Adds a token to a cluster; returns its id and the token.
    pub async fn add_token(&self, id: &str) -> Result<(String, String), TenantError> {
        let token = new_token();
        let token_id = format!("tok-{}", random_hex(6));
        let t = TokenRecord {
            id: token_id.clone(),
            hash: hex(&token_hash(&token)),
            created_at: now_ms(),
        };
        self.change(id, |rec| {
            rec.tokens.push(t);
            Ok(())
        })
        .await?;
        Ok((token_id, token))
    }

    /// Sets a cluster's request rate limit.
    pub async fn set_rate_limit(
        &self,
        id: &str,
        limit: crate::ratelimit::Limit,
    ) -> Result<(), TenantError> {
        if limit.requests_per_second == 0 || limit.burst == 0 {
            return Err(TenantError::Invalid(
                "requests_per_second and burst must be at least 1".into(),
            ));
        }
        self.change(id, |rec| {
            rec.rate_limit = Some(limit);
            Ok(())
        })
        .await
    }

    /// The rate limit of `cluster`, if it has its own.
    pub fn rate_limit(&self, cluster: &str) -> Option<crate::ratelimit::Limit> {
        self.records
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(cluster)
            .and_then(|r| r.rate_limit)
    }

    /// Takes up to `want` permits of `cluster`'s request bucket shared by every node.
    pub async fn take_permits(
        &self,
        cluster: &str,
        limit: crate::ratelimit::Limit,
        want: u32,
    ) -> Result<u32, RegistryError> {
        match self.redis_store() {
            Some(r) => self.note(
                r.take_permits(cluster, limit.requests_per_second, limit.burst, want)
                    .await,
            ),
            None => Ok(want),
        }
    }

    /// Revokes a token: tunnels that authenticated with it close on every node.
    pub async fn revoke_token(&self, id: &str, token_id: &str) -> Result<(), TenantError> {
        self.change(id, |rec| {
            if token_id == BOOTSTRAP_TOKEN_ID && rec.token_hash.is_some() {
                rec.token_hash = None;
                return Ok(());
            }
            let before = rec.tokens.len();
            rec.tokens.retain(|t| t.id != token_id);
            if rec.tokens.len() == before {
                return Err(TenantError::NoToken(id.into(), token_id.into()));
            }
            Ok(())
        })
        .await
    }

    /// Applies `f` to cluster `id`'s record and stores it.
    pub(super) async fn change(
        &self,
        id: &str,
        f: impl FnOnce(&mut ClusterRecord) -> Result<(), TenantError>,
    ) -> Result<(), TenantError> {
        if let Some(r) = self.redis_store() {
            // Read the newest record first: another node may have changed it.
            self.sync_clusters().await?;
            let mut rec = self
                .cluster(id)
                .ok_or_else(|| TenantError::NoCluster(id.into()))?;
            f(&mut rec)?;
            let json = serde_json::to_string(&rec).unwrap_or_default();
            if !self.note(r.replace_cluster(id, json).await)? {
                return Err(TenantError::NoCluster(id.into()));
            }
            self.clusters_changed().await;
            return Ok(());
        }
        let mut all = self.records_copy();
        let rec = all
            .get_mut(id)
            .ok_or_else(|| TenantError::NoCluster(id.into()))?;
        f(rec)?;
        self.set_records(all);
        Ok(())
    }

    fn records_copy(&self) -> BTreeMap<String, ClusterRecord> {
        self.records
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reloads this node's records and tells the others to.
    async fn clusters_changed(&self) {
        let _ = self.sync_clusters().await;
        if let Some(r) = self.redis_store() {
            let ev = Event::Clusters {
                from: self.node_id.clone(),
            };
            let _ = r
                .publish(serde_json::to_string(&ev).unwrap_or_default())
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn clusters_and_tokens_at_run_time() {
        let r = Registry::in_memory("gw.test", &[]);
        assert!(r.authenticate("nothing").is_none());
        let (rec, tid, token) = r.create_cluster("acme").await.unwrap();
        assert_eq!(token.len(), 64, "256 bits, hex");
        assert!(
            !format!("{rec:?}").contains(&token),
            "only the hash is stored"
        );
        assert_eq!(r.authenticate(&token), Some(("acme".into(), tid.clone())));
        assert!(matches!(
            r.create_cluster("acme").await,
            Err(TenantError::Exists(_))
        ));
        for bad in ["Acme", "a--b", "admin", "www", "-x", ""] {
            assert!(
                matches!(r.create_cluster(bad).await, Err(TenantError::Invalid(_))),
                "{bad}"
            );
        }
        let (t2id, t2) = r.add_token("acme").await.unwrap();
        r.revoke_token("acme", &tid).await.unwrap();
        assert!(r.authenticate(&token).is_none());
        assert!(!r.token_valid("acme", &tid));
        assert!(r.token_valid("acme", &t2id));
        assert_eq!(r.authenticate(&t2).map(|(c, _)| c).as_deref(), Some("acme"));
        assert!(matches!(
            r.revoke_token("acme", "tok-nope").await,
            Err(TenantError::NoToken(..))
        ));
        r.delete_cluster("acme").await.unwrap();
        assert!(r.authenticate(&t2).is_none());
        assert!(r.cluster_of("app.acme.gw.test").is_none());
        assert!(matches!(
            r.delete_cluster("acme").await,
            Err(TenantError::NoCluster(_))
        ));
    }
}
