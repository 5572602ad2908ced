//! The caches in front of Redis, all bounded (`lru`): per cluster, the set of hosts it
//! publishes (the flood gate); per host, the route found for each path asked; per cluster, the
//! remote nodes owning its tunnels. Entries older than their age limit are refreshed when Redis
//! answers and served stale when it does not.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lru::LruCache;
use tunnelgate_proto::routes::path_score;

use super::{Owner, RouteEntry, keys};

/// Clusters whose host sets are cached.
const CLUSTERS: usize = 4096;
/// Hosts whose routes are cached.
const HOSTS: usize = 16384;
/// Paths remembered per host before that host's entry starts over.
const PATHS_PER_HOST: usize = 256;
/// Age after which an entry is refreshed (events usually drop it much sooner).
const MAX_AGE: Duration = Duration::from_secs(30);
/// Age after which the owners of a cluster are looked up again.
const OWNERS_MAX_AGE: Duration = Duration::from_secs(1);
/// Path segments considered for prefix matching; deeper paths match on their first ones.
const MAX_SEGMENTS: usize = 32;

pub struct HostsHit {
    pub fresh: bool,
    pub hosts: Arc<HashSet<String>>,
}

pub struct RouteHit {
    pub fresh: bool,
    pub entry: Option<Arc<RouteEntry>>,
}

struct HostRoutes {
    at: Instant,
    paths: HashMap<String, Option<Arc<RouteEntry>>>,
}

/// A value and when it was fetched.
type Dated<T> = (Instant, Arc<T>);

pub struct Cache {
    hosts: Mutex<LruCache<String, Dated<HashSet<String>>>>,
    routes: Mutex<LruCache<String, HostRoutes>>,
    owners: Mutex<LruCache<String, Dated<Vec<Owner>>>>,
}

impl Default for Cache {
    fn default() -> Self {
        let n = |v: usize| NonZeroUsize::new(v).unwrap_or(NonZeroUsize::MIN);
        Cache {
            hosts: Mutex::new(LruCache::new(n(CLUSTERS))),
            routes: Mutex::new(LruCache::new(n(HOSTS))),
            owners: Mutex::new(LruCache::new(n(CLUSTERS))),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; recover the data rather than spread a panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cache {
    pub fn hosts(&self, cluster: &str) -> Option<HostsHit> {
        lock(&self.hosts).get(cluster).map(|(at, h)| HostsHit {
            fresh: at.elapsed() < MAX_AGE,
            hosts: h.clone(),
        })
    }

    pub fn put_hosts(&self, cluster: &str, hosts: HashSet<String>) -> Arc<HashSet<String>> {
        let hosts = Arc::new(hosts);
        lock(&self.hosts).put(cluster.to_string(), (Instant::now(), hosts.clone()));
        hosts
    }

    pub fn route(&self, host: &str, path: &str) -> Option<RouteHit> {
        let mut g = lock(&self.routes);
        let h = g.get(host)?;
        let fresh = h.at.elapsed() < MAX_AGE;
        h.paths.get(path).map(|e| RouteHit {
            fresh,
            entry: e.clone(),
        })
    }

    pub fn put_route(&self, host: &str, path: &str, entry: Option<Arc<RouteEntry>>) {
        let mut g = lock(&self.routes);
        let h = g.get_or_insert_mut(host.to_string(), || HostRoutes {
            at: Instant::now(),
            paths: HashMap::new(),
        });
        if h.paths.len() >= PATHS_PER_HOST || h.at.elapsed() >= MAX_AGE {
            h.paths.clear();
            h.at = Instant::now();
        }
        h.paths.insert(path.to_string(), entry);
    }

    /// Drops everything cached about `cluster`'s routes; `owner` maps a host to its cluster.
    pub fn forget_cluster(&self, cluster: &str, owner: impl Fn(&str) -> Option<String>) {
        lock(&self.hosts).pop(cluster);
        let mut g = lock(&self.routes);
        let doomed: Vec<String> = g
            .iter()
            .filter(|(h, _)| owner(h).as_deref() == Some(cluster))
            .map(|(h, _)| h.clone())
            .collect();
        for h in doomed {
            g.pop(&h);
        }
    }

    pub fn owners(&self, cluster: &str) -> Option<Arc<Vec<Owner>>> {
        let mut g = lock(&self.owners);
        match g.get(cluster) {
            Some((at, o)) if at.elapsed() < OWNERS_MAX_AGE => Some(o.clone()),
            _ => None,
        }
    }

    pub fn put_owners(&self, cluster: &str, owners: Vec<Owner>) -> Arc<Vec<Owner>> {
        let owners = Arc::new(owners);
        lock(&self.owners).put(cluster.to_string(), (Instant::now(), owners.clone()));
        owners
    }

    pub fn forget_owners(&self, cluster: &str) {
        lock(&self.owners).pop(cluster);
    }

    pub fn drop_owner(&self, cluster: &str, node: &str) {
        let mut g = lock(&self.owners);
        if let Some((at, o)) = g.get(cluster) {
            let rest: Vec<Owner> = o.iter().filter(|x| x.node_id != node).cloned().collect();
            let at = *at;
            g.put(cluster.to_string(), (at, Arc::new(rest)));
        }
    }

    pub fn clear(&self) {
        lock(&self.hosts).clear();
        lock(&self.routes).clear();
        lock(&self.owners).clear();
    }
}

/// The route keys that could match `path` on `host` or its wildcard `parent`: every prefix of
/// the path by whole segments, and the path itself (for Exact routes).
pub fn candidate_keys(host: &str, parent: Option<&str>, path: &str) -> Vec<String> {
    let mut paths = vec!["/".to_string()];
    let mut acc = String::new();
    for seg in path.split('/').filter(|s| !s.is_empty()).take(MAX_SEGMENTS) {
        acc.push('/');
        acc.push_str(seg);
        paths.push(acc.clone());
    }
    if !paths.iter().any(|p| p == path) {
        paths.push(path.to_string());
    }
    let mut out = Vec::with_capacity(paths.len() * 2);
    for h in std::iter::once(host).chain(parent) {
        out.extend(paths.iter().map(|p| keys::route(h, p)));
    }
    out
}

/// The best of the fetched entries: the exact host's best path, else the wildcard's.
pub fn best_entry(
    entries: &[RouteEntry],
    host: &str,
    parent: Option<&str>,
    path: &str,
) -> Option<RouteEntry> {
    let best_of = |h: &str| {
        entries
            .iter()
            .filter(|e| e.spec.host == h)
            .filter_map(|e| path_score(e.spec.path_type, &e.spec.path, path).map(|s| (s, e)))
            .max_by_key(|(s, _)| *s)
            .map(|(_, e)| e.clone())
    };
    best_of(host).or_else(|| best_of(parent?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_cover_prefixes_and_parent() {
        let k = candidate_keys("a.demo.x", Some("*.demo.x"), "/api/v1/users");
        assert_eq!(k.len(), 8);
        assert!(k.contains(&"route:a.demo.x:/".to_string()));
        assert!(k.contains(&"route:a.demo.x:/api/v1".to_string()));
        assert!(k.contains(&"route:*.demo.x:/api/v1/users".to_string()));
        let trailing = candidate_keys("h", None, "/a/");
        assert!(trailing.contains(&"route:h:/a/".to_string()));
        let deep = "/x".repeat(1000);
        assert!(candidate_keys("h", None, &deep).len() <= MAX_SEGMENTS + 2);
    }

    #[test]
    fn bounded_paths_per_host() {
        let c = Cache::default();
        for i in 0..(PATHS_PER_HOST + 10) {
            c.put_route("h", &format!("/{i}"), None);
        }
        assert!(lock(&c.routes).get("h").unwrap().paths.len() <= PATHS_PER_HOST);
    }
}
