//! The caches in front of Redis, all bounded (`lru`): per cluster, its route table (weighed in
//! bytes of route data, so a few clusters with big tables cannot crowd memory); per cluster,
//! the remote nodes owning its tunnels. Entries older than their age limit are refreshed when
//! Redis answers and served stale when it does not; route events drop them sooner.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lru::LruCache;

use super::Owner;
use super::table::RouteTable;

/// Clusters whose tables or owners are cached.
const CLUSTERS: usize = 4096;
/// Bytes of route data the table cache holds at most (least recently used go first).
const TABLE_BYTES: usize = 64 * 1024 * 1024;
/// Per-table overhead counted on top of its route data.
const TABLE_OVERHEAD: usize = 256;
/// Age after which a table is refreshed (events usually drop it much sooner).
const MAX_AGE: Duration = Duration::from_secs(30);
/// Age after which the owners of a cluster are looked up again.
const OWNERS_MAX_AGE: Duration = Duration::from_secs(1);

pub struct TableHit {
    pub fresh: bool,
    pub table: Arc<RouteTable>,
}

/// A value and when it was fetched.
type Dated<T> = (Instant, Arc<T>);

struct Tables {
    lru: LruCache<String, Dated<RouteTable>>,
    bytes: usize,
}

pub struct Cache {
    tables: Mutex<Tables>,
    owners: Mutex<LruCache<String, Dated<Vec<Owner>>>>,
}

impl Default for Cache {
    fn default() -> Self {
        let n = |v: usize| NonZeroUsize::new(v).unwrap_or(NonZeroUsize::MIN);
        Cache {
            tables: Mutex::new(Tables {
                lru: LruCache::new(n(CLUSTERS)),
                bytes: 0,
            }),
            owners: Mutex::new(LruCache::new(n(CLUSTERS))),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; recover the data rather than spread a panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn weight(t: &RouteTable) -> usize {
    t.bytes() + TABLE_OVERHEAD
}

impl Cache {
    pub fn table(&self, cluster: &str) -> Option<TableHit> {
        lock(&self.tables).lru.get(cluster).map(|(at, t)| TableHit {
            fresh: at.elapsed() < MAX_AGE,
            table: t.clone(),
        })
    }

    pub fn put_table(&self, cluster: &str, table: RouteTable) -> Arc<RouteTable> {
        let table = Arc::new(table);
        let mut g = lock(&self.tables);
        g.bytes += weight(&table);
        if let Some((_, old)) = g
            .lru
            .push(cluster.to_string(), (Instant::now(), table.clone()))
        {
            // The replaced entry, or the one evicted for room.
            g.bytes = g.bytes.saturating_sub(weight(&old.1));
        }
        while g.bytes > TABLE_BYTES && g.lru.len() > 1 {
            match g.lru.pop_lru() {
                Some((_, (_, t))) => g.bytes = g.bytes.saturating_sub(weight(&t)),
                None => break,
            }
        }
        table
    }

    /// Drops the cached table of `cluster`.
    /// Forgets a cluster's table and owners: its routes changed, which usually means its
    /// tunnels did too.
    pub fn forget_cluster(&self, cluster: &str) {
        let mut g = lock(&self.tables);
        if let Some((_, t)) = g.lru.pop(cluster) {
            g.bytes = g.bytes.saturating_sub(weight(&t));
        }
        drop(g);
        self.forget_owners(cluster);
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
        let mut g = lock(&self.tables);
        g.lru.clear();
        g.bytes = 0;
        drop(g);
        lock(&self.owners).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::super::table::{ClusterRoutes, ConnRoutes};
    use super::*;
    use tunnelgate_proto::routes::RouteSpec;

    fn table(n: usize, path_len: usize) -> RouteTable {
        let mut all = ClusterRoutes::new();
        all.insert(
            "c".into(),
            ConnRoutes {
                agent: "a".into(),
                routes: (0..n)
                    .map(|i| RouteSpec {
                        host: format!("h{i}.x"),
                        path: format!("/{}", "p".repeat(path_len)),
                        ..Default::default()
                    })
                    .collect(),
            },
        );
        RouteTable::build("x", &all)
    }

    #[test]
    fn table_cache_is_bounded_in_bytes() {
        let c = Cache::default();
        // 40 tables of ~2 MiB each: far more than the budget.
        for i in 0..40 {
            c.put_table(&format!("c{i}"), table(1000, 2000));
        }
        let g = lock(&c.tables);
        assert!(g.bytes <= TABLE_BYTES, "{} bytes cached", g.bytes);
        assert!(g.lru.len() < 40);
        let real: usize = g.lru.iter().map(|(_, (_, t))| weight(t)).sum();
        assert_eq!(real, g.bytes, "the byte count follows the entries");
    }
}
