//! The in-memory store: the embedded default for a single node.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use tunnelgate_proto::routes::{RouteSpec, best_match, wildcard_parent};

use super::RouteEntry;

#[derive(Default)]
pub(super) struct Memory {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    /// host → routes of that host (each with its path), with expiry.
    hosts: HashMap<String, Vec<Stored>>,
}

struct Stored {
    entry: Arc<RouteEntry>,
    expires: Instant,
}

impl Memory {
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // No code panics while holding the lock; recover the data rather than spread a panic.
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn upsert(&self, cluster: &str, routes: Vec<RouteSpec>, ttl: Duration) {
        let expires = Instant::now() + ttl;
        let mut g = self.write();
        for spec in routes {
            let list = g.hosts.entry(spec.host.clone()).or_default();
            list.retain(|s| s.entry.spec.path != spec.path);
            list.push(Stored {
                entry: Arc::new(RouteEntry {
                    cluster: cluster.to_string(),
                    spec,
                    updated_at: super::now_ms(),
                }),
                expires,
            });
        }
    }

    pub fn delete(&self, cluster: &str, routes: &[RouteSpec]) {
        let mut g = self.write();
        for r in routes {
            if let Some(list) = g.hosts.get_mut(&r.host) {
                list.retain(|s| !(s.entry.cluster == cluster && s.entry.spec.path == r.path));
                if list.is_empty() {
                    g.hosts.remove(&r.host);
                }
            }
        }
    }

    pub fn replace(&self, cluster: &str, routes: Vec<RouteSpec>, ttl: Duration) {
        {
            let mut g = self.write();
            let now = Instant::now();
            g.hosts.retain(|_, list| {
                list.retain(|s| s.entry.cluster != cluster && s.expires > now);
                !list.is_empty()
            });
        }
        self.upsert(cluster, routes, ttl);
    }

    pub fn touch(&self, cluster: &str, ttl: Duration) {
        let expires = Instant::now() + ttl;
        let mut g = self.write();
        for list in g.hosts.values_mut() {
            for s in list.iter_mut().filter(|s| s.entry.cluster == cluster) {
                s.expires = expires;
            }
        }
    }

    pub fn lookup(&self, host: &str, path: &str) -> Option<Arc<RouteEntry>> {
        let g = self.read();
        let now = Instant::now();
        let find = |h: &str| {
            let list = g.hosts.get(h)?;
            let live = list.iter().filter(|s| s.expires > now);
            let spec = best_match(live.clone().map(|s| &s.entry.spec), path)?;
            live.map(|s| &s.entry)
                .find(|e| std::ptr::eq(&e.spec, spec))
                .cloned()
        };
        find(host).or_else(|| find(&wildcard_parent(host)?))
    }

    pub fn route_count(&self, cluster: &str) -> usize {
        let now = Instant::now();
        self.read()
            .hosts
            .values()
            .flatten()
            .filter(|s| s.entry.cluster == cluster && s.expires > now)
            .count()
    }
}
