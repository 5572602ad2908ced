//! Kubernetes API access tokens: issued through the admin API for one cluster and one identity
//! (a user and groups), stored only hashed in the cluster's record with an expiry, and read from
//! memory on every request to `{cluster}.k8s.{domain}`. Revoking one is a record change, so it
//! reaches every node the way token revocations do (an event, and the periodic reload).

use std::collections::HashMap;

use tunnelgate_proto::control::KubeIdentity;

pub use super::records::AccessTokenRecord;
use super::records::{ClusterRecord, TenantError};
use super::secret::{hex, random_hex, token_hash, unhex};
use super::{Registry, now_ms};

/// Access tokens one cluster may hold (expired ones are pruned on every change).
pub const MAX_ACCESS_TOKENS: usize = 1000;
/// Groups one token may carry.
pub const MAX_GROUPS: usize = 32;
/// Longest user or group name.
pub const MAX_NAME: usize = 256;
/// Token lifetime bounds and default, in seconds.
pub const MIN_TTL: u64 = 60;
pub const MAX_TTL: u64 = 366 * 24 * 3600;
pub const DEFAULT_TTL: u64 = 24 * 3600;
/// What every access token starts with (secret scanners and humans can tell it apart from an
/// agent token).
pub const TOKEN_PREFIX: &str = "tgk_";

/// Who a valid access token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessGrant {
    pub cluster: String,
    pub token_id: String,
    pub identity: KubeIdentity,
    pub expires_at: u64,
}

/// Checks a user or group name: non-empty, bounded, printable (it becomes a header value at the
/// agent).
fn check_name(what: &str, s: &str) -> Result<(), TenantError> {
    if s.is_empty() || s.len() > MAX_NAME || s.chars().any(|c| c.is_control()) {
        return Err(TenantError::Invalid(format!(
            "{what} must be 1 to {MAX_NAME} printable characters"
        )));
    }
    Ok(())
}

/// Token hash → grant, over every record.
pub fn access_map<'a>(
    records: impl Iterator<Item = &'a ClusterRecord>,
) -> HashMap<[u8; 32], AccessGrant> {
    let mut out = HashMap::new();
    for r in records {
        for t in &r.access_tokens {
            if let Some(h) = unhex(&t.hash) {
                out.insert(
                    h,
                    AccessGrant {
                        cluster: r.name.clone(),
                        token_id: t.id.clone(),
                        identity: KubeIdentity {
                            user: t.user.clone(),
                            groups: t.groups.clone(),
                        },
                        expires_at: t.expires_at,
                    },
                );
            }
        }
    }
    out
}

impl Registry {
    /// Issues an access token to `cluster`'s API for `user` in `groups`, valid `ttl` seconds;
    /// returns the record (its hash included, which callers do not show) and the token.
    pub async fn add_access_token(
        &self,
        cluster: &str,
        user: &str,
        groups: &[String],
        ttl: u64,
    ) -> Result<(AccessTokenRecord, String), TenantError> {
        check_name("user", user)?;
        if groups.len() > MAX_GROUPS {
            return Err(TenantError::Invalid(format!(
                "at most {MAX_GROUPS} groups per token"
            )));
        }
        for g in groups {
            check_name("each group", g)?;
        }
        if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
            return Err(TenantError::Invalid(format!(
                "ttl_seconds must be between {MIN_TTL} and {MAX_TTL}"
            )));
        }
        let token = format!("{TOKEN_PREFIX}{}", random_hex(32));
        let now = now_ms();
        let rec = AccessTokenRecord {
            id: format!("acc-{}", random_hex(6)),
            hash: hex(&token_hash(&token)),
            user: user.to_string(),
            groups: groups.to_vec(),
            created_at: now,
            expires_at: now + ttl * 1000,
        };
        let stored = rec.clone();
        self.change(cluster, move |c| {
            c.access_tokens.retain(|t| t.expires_at > now);
            if c.access_tokens.len() >= MAX_ACCESS_TOKENS {
                return Err(TenantError::Invalid(format!(
                    "cluster has {MAX_ACCESS_TOKENS} live access tokens; revoke some first"
                )));
            }
            c.access_tokens.push(stored);
            Ok(())
        })
        .await?;
        Ok((rec, token))
    }

    /// Revokes an access token: every node refuses it once its records reload (at once on
    /// this node, within the reload interval elsewhere).
    pub async fn revoke_access_token(&self, cluster: &str, id: &str) -> Result<(), TenantError> {
        self.change(cluster, |c| {
            let before = c.access_tokens.len();
            c.access_tokens.retain(|t| t.id != id);
            if c.access_tokens.len() == before {
                return Err(TenantError::NoToken(cluster.into(), id.into()));
            }
            Ok(())
        })
        .await
    }

    /// The grant of a bearer token, if it is a live, unexpired access token. From memory.
    pub fn authenticate_access(&self, token: &str) -> Option<AccessGrant> {
        if !token.starts_with(TOKEN_PREFIX) {
            return None;
        }
        let grant = self
            .access
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&token_hash(token))
            .cloned()?;
        (grant.expires_at > now_ms()).then_some(grant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn access_tokens_are_hashed_scoped_bounded_and_revocable() {
        let r = Registry::in_memory("gw.test", &[]);
        r.create_cluster("acme").await.unwrap();
        let groups = vec!["devs".to_string()];
        let (rec, token) = r
            .add_access_token("acme", "alice", &groups, DEFAULT_TTL)
            .await
            .unwrap();
        assert!(token.starts_with(TOKEN_PREFIX) && token.len() == 68);
        assert!(!format!("{:?}", r.cluster("acme")).contains(&token));
        let g = r.authenticate_access(&token).unwrap();
        assert_eq!(
            (g.cluster.as_str(), g.identity.user.as_str()),
            ("acme", "alice")
        );
        assert_eq!(g.identity.groups, groups);
        assert!(r.authenticate_access("tgk_nothing").is_none());
        // An agent token is not an access token, and the other way round.
        let (_, _, agent_token) = r.create_cluster("other").await.unwrap();
        assert!(r.authenticate_access(&agent_token).is_none());
        assert!(r.authenticate(&token).is_none());
        for (user, groups, ttl) in [
            ("", vec![], DEFAULT_TTL),
            ("bob\r\nImpersonate-User: admin", vec![], DEFAULT_TTL),
            ("bob", vec![String::new()], DEFAULT_TTL),
            ("bob", vec!["g".to_string(); MAX_GROUPS + 1], DEFAULT_TTL),
            ("bob", vec![], 1),
            ("bob", vec![], MAX_TTL + 1),
        ] {
            assert!(
                matches!(
                    r.add_access_token("acme", user, &groups, ttl).await,
                    Err(TenantError::Invalid(_))
                ),
                "{user:?} {groups:?} {ttl}"
            );
        }
        assert!(matches!(
            r.add_access_token("nope", "bob", &[], DEFAULT_TTL).await,
            Err(TenantError::NoCluster(_))
        ));
        r.revoke_access_token("acme", &rec.id).await.unwrap();
        assert!(r.authenticate_access(&token).is_none());
        assert!(matches!(
            r.revoke_access_token("acme", &rec.id).await,
            Err(TenantError::NoToken(..))
        ));
    }

    #[test]
    fn expired_tokens_do_not_authenticate() {
        let r = Registry::in_memory("gw.test", &[]);
        let token = format!("{TOKEN_PREFIX}abc");
        let mut rec = ClusterRecord::bootstrap("acme", &"x".repeat(32));
        rec.access_tokens.push(AccessTokenRecord {
            id: "acc-1".into(),
            hash: hex(&token_hash(&token)),
            user: "alice".into(),
            groups: vec![],
            created_at: 0,
            expires_at: now_ms() - 1,
        });
        r.set_records([("acme".to_string(), rec)].into_iter().collect());
        assert!(r.authenticate_access(&token).is_none());
    }
}
