//! Tenants' own domains. The operator registers a hostname for a cluster through the admin API;
//! the tenant proves control in DNS — a CNAME to the cluster's target
//! (`{uuid}.cname.{domain}`: from the immutable cluster UUID, so a deleted cluster's id created
//! again by someone else inherits no CNAME still pointing at it) or, for an apex, a TXT record
//! `_tunnelgate.{hostname}` holding the domain's challenge. A domain belongs to one cluster at
//! a time. Its agents may publish it once registered, and it is served only while verified:
//! when the record goes away or points elsewhere a recheck suspends it and its host answers
//! 404 — no dangling-CNAME takeover. The verified names live in the cluster records, so every
//! node learns them the way it learns tokens.

use std::collections::HashMap;

use super::records::{ClusterRecord, TenantError};
pub use super::records::{DomainRecord, DomainStatus};
use super::secret::random_hex;
use super::{Registry, now_ms};

/// Domains one cluster may register.
pub const MAX_DOMAINS: usize = 100;
/// The label under the gateway's domain that holds every CNAME target.
pub const CNAME_LABEL: &str = "cname";

/// A hostname in canonical form: lower case, no trailing dot or port, IDNs in punycode, one
/// leading `*.` at most; then checked like any route host.
pub fn canonical(hostname: &str) -> Result<String, TenantError> {
    let h = hostname.trim().trim_end_matches('.');
    let (wild, rest) = match h.strip_prefix("*.") {
        Some(r) => (true, r),
        None => (false, h),
    };
    let ascii = idna::domain_to_ascii(rest)
        .map_err(|_| TenantError::Invalid(format!("{hostname:?} is not a valid domain name")))?;
    let out = if wild { format!("*.{ascii}") } else { ascii };
    tunnelgate_proto::routes::check_route_host(&out)
        .map_err(|e| TenantError::Invalid(format!("{hostname:?}: {e}")))?;
    if !out.trim_start_matches("*.").contains('.') {
        return Err(TenantError::Invalid(format!(
            "{hostname:?} is not a domain one can own (one label)"
        )));
    }
    Ok(out)
}

/// Custom hostname → (cluster, status), over every record.
pub fn domain_map<'a>(
    records: impl Iterator<Item = &'a ClusterRecord>,
) -> HashMap<String, (String, DomainStatus)> {
    let mut out = HashMap::new();
    for r in records {
        for d in &r.domains {
            out.insert(d.hostname.clone(), (r.name.clone(), d.status));
        }
    }
    out
}

impl Registry {
    /// What the tenant publishes in DNS for `cluster`'s domains: `{uuid}.cname.{domain}`.
    pub fn cname_target(&self, rec: &ClusterRecord) -> String {
        let id = if rec.uuid.is_empty() {
            &rec.name
        } else {
            &rec.uuid
        };
        format!("{id}.{CNAME_LABEL}.{}", self.domain)
    }

    /// The cluster a custom hostname serves, while verified (exactly, or by a verified
    /// `*.parent` for one more label).
    pub(super) fn custom_owner(&self, host: &str) -> Option<String> {
        let g = self.domains.read().unwrap_or_else(|p| p.into_inner());
        let verified = |h: &str| match g.get(h) {
            Some((c, DomainStatus::Verified)) => Some(c.clone()),
            _ => None,
        };
        verified(host).or_else(|| {
            let (_, parent) = host.split_once('.')?;
            verified(&format!("*.{parent}"))
        })
    }

    /// The cluster a custom hostname is registered to, whatever its status.
    pub fn domain_registered_to(&self, host: &str) -> Option<String> {
        self.domains
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(host)
            .map(|(c, _)| c.clone())
    }

    /// Registers `hostname` for `cluster` (pending); returns the record.
    pub async fn add_domain(
        &self,
        cluster: &str,
        hostname: &str,
    ) -> Result<DomainRecord, TenantError> {
        if self.is_shared() {
            // The newest records: another node may have created the cluster or registered
            // the name.
            self.sync_clusters().await?;
        }
        if self.cluster(cluster).is_none() {
            return Err(TenantError::NoCluster(cluster.into()));
        }
        let host = canonical(hostname)?;
        let bare = host.trim_start_matches("*.");
        if bare == self.domain || bare.ends_with(&format!(".{}", self.domain)) {
            return Err(TenantError::Invalid(format!(
                "{host} is under the gateway's own domain {}: those names need no registration",
                self.domain
            )));
        }
        if self.reserved.iter().any(|g| g == bare) {
            return Err(TenantError::Invalid(format!(
                "{host} is a name of the gateway itself"
            )));
        }
        if let Some(owner) = self.domain_registered_to(&host) {
            return Err(if owner == cluster {
                TenantError::Exists(host)
            } else {
                TenantError::Conflict(format!("{host} is registered to another cluster"))
            });
        }
        if let Some(parent) = host.strip_prefix("*.") {
            let ok = self.cluster(cluster).is_some_and(|r| {
                r.domains
                    .iter()
                    .any(|d| d.hostname == parent && d.status == DomainStatus::Verified)
            });
            if !ok {
                return Err(TenantError::Invalid(format!(
                    "a wildcard needs its parent verified first: register and verify {parent}"
                )));
            }
        }
        let rec = DomainRecord {
            hostname: host.clone(),
            // A wildcard stands on its verified parent's proof.
            status: if host.starts_with("*.") {
                DomainStatus::Verified
            } else {
                DomainStatus::Pending
            },
            reason: None,
            challenge: format!("tg-{}", random_hex(16)),
            created_at: now_ms(),
            checked_at: 0,
        };
        let stored = rec.clone();
        self.change(cluster, move |c| {
            if c.domains.len() >= MAX_DOMAINS {
                return Err(TenantError::Invalid(format!(
                    "a cluster may register at most {MAX_DOMAINS} domains"
                )));
            }
            c.domains.push(stored);
            Ok(())
        })
        .await?;
        Ok(rec)
    }

    /// Removes a domain: its routes stop serving on every node.
    pub async fn delete_domain(&self, cluster: &str, hostname: &str) -> Result<(), TenantError> {
        let host = canonical(hostname)
            .map_err(|_| TenantError::NoDomain(cluster.into(), hostname.into()))?;
        self.change(cluster, |c| {
            let before = c.domains.len();
            c.domains
                .retain(|d| d.hostname != host && d.hostname != format!("*.{host}"));
            if c.domains.len() == before {
                return Err(TenantError::NoDomain(cluster.into(), host.clone()));
            }
            Ok(())
        })
        .await
    }

    /// Records a check's outcome: verified, or (a verified domain that lost its proof)
    /// suspended, or still pending; a wildcard follows its parent. Writes only on change.
    pub async fn set_domain_check(
        &self,
        cluster: &str,
        hostname: &str,
        proven: Result<(), String>,
    ) -> Result<DomainRecord, TenantError> {
        let rec = self
            .cluster(cluster)
            .ok_or_else(|| TenantError::NoCluster(cluster.into()))?;
        let d = rec
            .domains
            .iter()
            .find(|d| d.hostname == hostname)
            .ok_or_else(|| TenantError::NoDomain(cluster.into(), hostname.into()))?;
        let (status, reason) = match (&proven, d.status) {
            (Ok(()), _) => (DomainStatus::Verified, None),
            (Err(why), DomainStatus::Pending) => (DomainStatus::Pending, Some(why.clone())),
            (Err(why), _) => (DomainStatus::Suspended, Some(why.clone())),
        };
        let now = now_ms();
        let changed = d.status != status || d.reason != reason;
        let mut out = d.clone();
        out.status = status;
        out.reason = reason.clone();
        out.checked_at = now;
        if !changed {
            return Ok(out);
        }
        let host = hostname.to_string();
        let wildcard = format!("*.{host}");
        self.change(cluster, move |c| {
            for d in c.domains.iter_mut() {
                if d.hostname == host {
                    d.status = status;
                    d.reason = reason.clone();
                    d.checked_at = now;
                } else if d.hostname == wildcard {
                    d.status = match status {
                        DomainStatus::Verified => DomainStatus::Verified,
                        _ => DomainStatus::Suspended,
                    };
                    d.reason = reason.as_ref().map(|r| format!("its parent {host}: {r}"));
                    d.checked_at = now;
                }
            }
            Ok(())
        })
        .await?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names() {
        assert_eq!(canonical("Shop.Example.COM.").unwrap(), "shop.example.com");
        assert_eq!(
            canonical("bücher.example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(canonical("*.Example.com").unwrap(), "*.example.com");
        for bad in [
            "",
            "com",
            "a..b",
            "*.*.x.com",
            "x.*.com",
            "-a.com",
            "a b.com",
        ] {
            assert!(canonical(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_domain_belongs_to_one_cluster_and_serves_only_while_verified() {
        let r = Registry::in_memory("gw.test", &[]);
        r.create_cluster("acme").await.unwrap();
        r.create_cluster("evil").await.unwrap();
        let d = r.add_domain("acme", "Shop.Example.com").await.unwrap();
        assert_eq!(
            (d.hostname.as_str(), d.status),
            ("shop.example.com", DomainStatus::Pending)
        );
        assert!(
            r.cluster_of("shop.example.com").is_none(),
            "pending: not served"
        );
        assert!(
            r.check_claim("acme", "shop.example.com").is_ok(),
            "registered: publishable"
        );
        assert!(r.check_claim("evil", "shop.example.com").is_err());
        assert!(matches!(
            r.add_domain("evil", "shop.example.com").await,
            Err(TenantError::Conflict(_))
        ));
        assert!(matches!(
            r.add_domain("acme", "shop.example.com").await,
            Err(TenantError::Exists(_))
        ));
        for bad in ["x.acme.gw.test", "gw.test", "*.other.example.com"] {
            assert!(
                matches!(
                    r.add_domain("acme", bad).await,
                    Err(TenantError::Invalid(_))
                ),
                "{bad}"
            );
        }
        r.set_domain_check("acme", "shop.example.com", Ok(()))
            .await
            .unwrap();
        assert_eq!(r.cluster_of("shop.example.com").as_deref(), Some("acme"));
        r.add_domain("acme", "*.shop.example.com").await.unwrap();
        assert_eq!(
            r.cluster_of("api.shop.example.com").as_deref(),
            Some("acme")
        );
        assert!(r.check_claim("acme", "*.shop.example.com").is_ok());
        let s = r
            .set_domain_check("acme", "shop.example.com", Err("gone".into()))
            .await
            .unwrap();
        assert_eq!(s.status, DomainStatus::Suspended);
        assert!(
            r.cluster_of("shop.example.com").is_none(),
            "suspended: not served"
        );
        assert!(
            r.cluster_of("api.shop.example.com").is_none(),
            "its wildcard too"
        );
        r.delete_domain("acme", "shop.example.com").await.unwrap();
        assert!(r.domain_registered_to("*.shop.example.com").is_none());
        r.add_domain("evil", "shop.example.com").await.unwrap();
    }
}
