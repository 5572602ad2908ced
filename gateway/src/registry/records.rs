//! The records tenants are made of, as stored (`cluster:{id}` in Redis, one JSON document
//! each): a cluster with its agent tokens, access tokens and custom domains, all secrets
//! hashed. Pure data; the operations on them live in `tenants`, `access` and `domains`.

use serde::{Deserialize, Serialize};

use super::RegistryError;
use super::now_ms;
use super::secret::{hex, new_token, random_hex, token_hash};

/// The token id of a cluster given with `--cluster ID:TOKEN`.
pub const BOOTSTRAP_TOKEN_ID: &str = "bootstrap";

/// A cluster as stored (`cluster:{id}` in Redis).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// The cluster id (a DNS label; `{id}.{domain}` is its name).
    pub name: String,
    /// Never reused, unlike the id: what external records (CNAME targets) should name.
    #[serde(default)]
    pub uuid: String,
    /// The `--cluster` bootstrap token's hash (older records have only this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_hash: Option<String>,
    #[serde(default)]
    pub tokens: Vec<TokenRecord>,
    pub created_at: u64,
    /// The cluster's request rate limit; the gateway's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<crate::ratelimit::Limit>,
    /// Access tokens to the cluster's Kubernetes API (hashed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_tokens: Vec<AccessTokenRecord>,
    /// Custom domains (registered, verified or suspended).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<DomainRecord>,
}

/// One agent token of a cluster, hashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub hash: String,
    pub created_at: u64,
}

/// Why an admin operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    #[error("{0}")]
    Invalid(String),
    #[error("cluster {0:?} already exists")]
    Exists(String),
    #[error("cluster id {0:?} is reserved for the gateway")]
    Reserved(String),
    #[error("no cluster {0:?}")]
    NoCluster(String),
    #[error("cluster {0:?} has no token {1:?}")]
    NoToken(String, String),
    #[error("cluster {0:?} has no domain {1:?}")]
    NoDomain(String, String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// One access token as stored (the hash, never the token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessTokenRecord {
    pub id: String,
    pub hash: String,
    pub user: String,
    #[serde(default)]
    pub groups: Vec<String>,
    pub created_at: u64,
    /// Milliseconds since the epoch.
    pub expires_at: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DomainStatus {
    /// Registered, not proven yet: its agents may publish it, nothing is served.
    Pending,
    Verified,
    /// Was verified; its record went away or points elsewhere: nothing is served.
    Suspended,
}

/// One custom domain of a cluster, as stored in its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainRecord {
    /// Canonical: lower case, no trailing dot, IDNs in punycode; `*.` for a wildcard.
    pub hostname: String,
    pub status: DomainStatus,
    /// Why it is not verified (the last check's finding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The TXT value that proves it.
    pub challenge: String,
    pub created_at: u64,
    #[serde(default)]
    pub checked_at: u64,
}

impl ClusterRecord {
    /// The record of a `--cluster ID:TOKEN` cluster.
    pub fn bootstrap(id: &str, token: &str) -> ClusterRecord {
        ClusterRecord {
            name: id.to_string(),
            uuid: String::new(),
            token_hash: Some(hex(&token_hash(token))),
            tokens: Vec::new(),
            created_at: now_ms(),
            rate_limit: None,
            access_tokens: Vec::new(),
            domains: Vec::new(),
        }
    }

    /// A new cluster with one token; returns it with the token's id and the token itself.
    pub(super) fn create(id: &str) -> (ClusterRecord, String, String) {
        let token = new_token();
        let token_id = format!("tok-{}", random_hex(6));
        let rec = ClusterRecord {
            name: id.to_string(),
            uuid: format!("c{}", random_hex(12)),
            token_hash: None,
            tokens: vec![TokenRecord {
                id: token_id.clone(),
                hash: hex(&token_hash(&token)),
                created_at: now_ms(),
            }],
            created_at: now_ms(),
            rate_limit: None,
            access_tokens: Vec::new(),
            domains: Vec::new(),
        };
        (rec, token_id, token)
    }

    /// Token ids, the bootstrap one included.
    pub fn token_ids(&self) -> Vec<String> {
        self.token_hash
            .iter()
            .map(|_| BOOTSTRAP_TOKEN_ID.to_string())
            .chain(self.tokens.iter().map(|t| t.id.clone()))
            .collect()
    }
}
