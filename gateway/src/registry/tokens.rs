//! Agent tokens on the hot path: the map authentication reads from memory (token hash →
//! cluster and token id), which tokens are still valid, and loading every cluster record from
//! Redis (with the `--cluster` bootstrap written first) into those maps.

use std::collections::{BTreeMap, HashMap};

use super::records::{BOOTSTRAP_TOKEN_ID, ClusterRecord};
use super::secret::{token_hash, unhex};
use super::{Registry, RegistryError, access, domains};

/// Token hash → (cluster, token id) for every record.
pub fn token_map<'a>(
    records: impl Iterator<Item = &'a ClusterRecord>,
) -> HashMap<[u8; 32], (String, String)> {
    let mut out = HashMap::new();
    for r in records {
        if let Some(h) = r.token_hash.as_deref().and_then(unhex) {
            out.insert(h, (r.name.clone(), BOOTSTRAP_TOKEN_ID.to_string()));
        }
        for t in &r.tokens {
            if let Some(h) = unhex(&t.hash) {
                out.insert(h, (r.name.clone(), t.id.clone()));
            }
        }
    }
    out
}

impl Registry {
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

    pub(super) fn knows_cluster(&self, cluster: &str) -> bool {
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
        let mut records = BTreeMap::new();
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
    pub(super) fn set_records(&self, records: BTreeMap<String, ClusterRecord>) {
        let tokens = token_map(records.values());
        *self.access.write().unwrap_or_else(|p| p.into_inner()) =
            access::access_map(records.values());
        *self.domains.write().unwrap_or_else(|p| p.into_inner()) =
            domains::domain_map(records.values());
        *self.valid.write().unwrap_or_else(|p| p.into_inner()) = tokens.values().cloned().collect();
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = tokens;
        *self.records.write().unwrap_or_else(|p| p.into_inner()) = records;
    }
}
