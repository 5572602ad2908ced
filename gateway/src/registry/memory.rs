//! The in-memory store: the embedded default for a single node. Each cluster keeps the route
//! set of each live connection and the table built from them; a connection's set leaves with
//! its tunnel, so nothing expires and a heartbeat costs nothing here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::table::{ClusterRoutes, ConnRoutes, RouteTable};

#[derive(Default)]
pub(super) struct Memory {
    inner: RwLock<HashMap<String, Cluster>>,
    /// The last lease epoch handed out (fences a connection id's older tunnels).
    epochs: AtomicU64,
}

struct Cluster {
    /// Connection → (lease epoch of the tunnel that wrote it, its routes).
    conns: HashMap<String, (u64, ConnRoutes)>,
    table: Arc<RouteTable>,
}

impl Memory {
    /// A new lease epoch.
    pub fn next_epoch(&self) -> u64 {
        self.epochs.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<String, Cluster>> {
        // No code panics while holding the lock; recover the data rather than spread a panic.
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<String, Cluster>> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Every connection's routes of `cluster`.
    pub fn routes(&self, cluster: &str) -> ClusterRoutes {
        self.read()
            .get(cluster)
            .map_or_else(ClusterRoutes::new, |c| {
                c.conns
                    .iter()
                    .map(|(k, (_, v))| (k.clone(), v.clone()))
                    .collect()
            })
    }

    /// Replaces `conn`'s set (an empty set removes it), unless a newer tunnel (higher epoch)
    /// holds that connection id.
    pub fn put(&self, cluster: &str, conn: &str, epoch: u64, set: ConnRoutes) {
        let mut g = self.write();
        let c = g.entry(cluster.to_string()).or_insert_with(|| Cluster {
            conns: HashMap::new(),
            table: Arc::default(),
        });
        if c.conns.get(conn).is_some_and(|(e, _)| *e > epoch) {
            return;
        }
        if set.routes.is_empty() {
            c.conns.remove(conn);
        } else {
            c.conns.insert(conn.to_string(), (epoch, set));
        }
        Self::rebuild(&mut g, cluster);
    }

    /// Removes `conn`'s set if the tunnel with `epoch` still holds it.
    pub fn remove(&self, cluster: &str, conn: &str, epoch: u64) {
        let mut g = self.write();
        let Some(c) = g.get_mut(cluster) else {
            return;
        };
        if c.conns.get(conn).is_some_and(|(e, _)| *e == epoch) {
            c.conns.remove(conn);
            Self::rebuild(&mut g, cluster);
        }
    }

    fn rebuild(g: &mut HashMap<String, Cluster>, cluster: &str) {
        let Some(c) = g.get_mut(cluster) else {
            return;
        };
        if c.conns.is_empty() {
            g.remove(cluster);
            return;
        }
        let all: ClusterRoutes = c
            .conns
            .iter()
            .map(|(k, (_, v))| (k.clone(), v.clone()))
            .collect();
        c.table = Arc::new(RouteTable::build(cluster, &all));
    }

    /// The table of `cluster` (empty when it publishes nothing).
    pub fn table(&self, cluster: &str) -> Arc<RouteTable> {
        self.read()
            .get(cluster)
            .map_or_else(Arc::default, |c| c.table.clone())
    }
}
