//! The registry facade: clusters and their tokens, and the routes agents publish. Everything
//! else asks this module; it hides which store is behind it (in memory now, Redis with the
//! cluster issue).
//!
//! Who may claim a host is decided here: cluster `c` may publish `c.{domain}` and any name
//! under it, and nothing else, so no agent can take another tenant's hostname.

mod memory;

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tunnelgate_proto::control::{RouteAction, RouteKey, RouteRejection, RoutesAck};
use tunnelgate_proto::routes::{RouteSpec, check_route_host};

use crate::config::ClusterArg;
use memory::Memory;

/// How long a published route lives without a heartbeat or route sync refreshing it.
pub const ROUTE_TTL: Duration = Duration::from_secs(300);

/// A route as stored: what the agent published and which cluster serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub cluster: String,
    pub spec: RouteSpec,
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

/// The registry every part of the gateway calls.
pub struct Registry {
    domain: String,
    store: Memory,
}

impl Registry {
    /// An in-memory registry holding `clusters`.
    pub fn in_memory(domain: &str, clusters: &[ClusterArg]) -> Arc<Registry> {
        let store = Memory::default();
        for c in clusters {
            store.add_cluster(&c.id, token_hash(c.token.expose()));
        }
        Arc::new(Registry {
            domain: domain.to_string(),
            store,
        })
    }

    /// The cluster a bearer token belongs to.
    pub fn authenticate(&self, token: &str) -> Option<String> {
        self.store.cluster_by_token(&token_hash(token))
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

    /// Applies an `ingress_routes` message from `cluster`'s agent; refused routes are never
    /// stored.
    pub fn apply_routes(
        &self,
        cluster: &str,
        action: RouteAction,
        routes: Vec<RouteSpec>,
    ) -> RoutesAck {
        let mut ack = RoutesAck::default();
        let mut good = Vec::with_capacity(routes.len());
        for mut r in routes {
            r.host = r.host.trim_end_matches('.').to_ascii_lowercase();
            if r.path.is_empty() {
                r.path = "/".into();
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
        match action {
            RouteAction::Add | RouteAction::Update => self.store.upsert(cluster, good, ROUTE_TTL),
            RouteAction::Delete => self.store.delete(cluster, &good),
            RouteAction::Sync => self.store.replace(cluster, good, ROUTE_TTL),
        }
        ack
    }

    /// Keeps `cluster`'s routes alive for another TTL (heartbeat).
    pub fn touch(&self, cluster: &str) {
        self.store.touch(cluster, ROUTE_TTL);
    }

    /// The route for a normalised host and a request path.
    pub fn lookup(&self, host: &str, path: &str) -> Option<Arc<RouteEntry>> {
        self.store.lookup(host, path)
    }

    /// Live routes of `cluster` (for the `gateway_active_routes` gauge).
    pub fn route_count(&self, cluster: &str) -> usize {
        self.store.route_count(cluster)
    }

    /// False while the backing store is unreachable (`/readyz`). Memory is always reachable.
    pub fn is_healthy(&self) -> bool {
        true
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

    #[test]
    fn tokens_identify_clusters() {
        let r = reg();
        assert_eq!(r.authenticate("s3cret").as_deref(), Some("demo"));
        assert_eq!(r.authenticate("wrong"), None);
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
    }

    #[test]
    fn rejected_routes_are_not_stored() {
        let r = reg();
        let ack = r.apply_routes(
            "demo",
            RouteAction::Sync,
            vec![
                route("App.Demo.gw.test", "/"),
                route("bank.other.gw.test", "/"),
            ],
        );
        assert_eq!(ack.accepted.len(), 1);
        assert_eq!(ack.rejected.len(), 1);
        assert_eq!(ack.rejected[0].host, "bank.other.gw.test");
        assert!(r.lookup("app.demo.gw.test", "/x").is_some());
        assert!(r.lookup("bank.other.gw.test", "/").is_none());
    }

    #[test]
    fn sync_replaces_and_delete_removes() {
        let r = reg();
        r.apply_routes("demo", RouteAction::Add, vec![route("a.demo.gw.test", "/")]);
        r.apply_routes("demo", RouteAction::Add, vec![route("b.demo.gw.test", "/")]);
        assert_eq!(r.route_count("demo"), 2);
        r.apply_routes(
            "demo",
            RouteAction::Sync,
            vec![route("c.demo.gw.test", "/")],
        );
        assert!(r.lookup("a.demo.gw.test", "/").is_none());
        assert!(r.lookup("c.demo.gw.test", "/").is_some());
        r.apply_routes(
            "demo",
            RouteAction::Delete,
            vec![route("c.demo.gw.test", "/")],
        );
        assert_eq!(r.route_count("demo"), 0);
    }

    #[test]
    fn wildcard_and_path_precedence() {
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
        );
        let hit = |h: &str, p: &str| {
            r.lookup(h, p)
                .map(|e| (e.spec.host.clone(), e.spec.path.clone()))
        };
        assert_eq!(
            hit("a.demo.gw.test", "/api"),
            Some(("a.demo.gw.test".into(), "/api".into()))
        );
        assert_eq!(
            hit("a.demo.gw.test", "/api/x"),
            Some(("a.demo.gw.test".into(), "/".into()))
        );
        assert_eq!(
            hit("zzz.demo.gw.test", "/"),
            Some(("*.demo.gw.test".into(), "/".into()))
        );
        // A wildcard covers exactly one label.
        assert_eq!(hit("x.zzz.demo.gw.test", "/"), None);
    }
}
