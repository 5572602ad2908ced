//! The live tunnels on this node, by cluster. Plain shared state behind a lock: lookups are a
//! hash probe on the request path, writes happen only when tunnels come and go.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use actix::{Message, Recipient};

use super::opener::Opener;

/// The token a tunnel authenticated with was revoked, or its cluster deleted.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Revoked {
    /// Why, for the agent and the log.
    pub reason: String,
}

/// Ask the agent to move the tunnel (it opens one elsewhere, then drains this one with its own
/// `drain`): this node is draining, or holds more than its share of tunnels. The text is the
/// reason the agent is given.
#[derive(Message)]
#[rtype(result = "()")]
pub struct MoveAway(pub &'static str);

/// Why a draining node moves its tunnels.
pub const SHUTTING_DOWN: &str = "this gateway node is shutting down";
/// Why a node holding more than its share moves some.
pub const REBALANCING: &str = "this gateway node holds more than its share of tunnels";

/// A handle to one live tunnel.
#[derive(Clone)]
pub struct TunnelRef {
    pub id: u64,
    /// The agent connection id (the registry's key for this tunnel's routes and lease).
    pub conn: String,
    /// The id of the token its agent authenticated with.
    pub token_id: String,
    /// Opens a stream on it.
    pub open: Opener,
    /// Closes the tunnel (its token was revoked, or its cluster deleted).
    pub revoke: Recipient<Revoked>,
    /// Asks its agent to move the tunnel to another node (this one is draining, or holds more
    /// than its share).
    pub move_away: Recipient<MoveAway>,
    /// When it registered here.
    pub since: std::time::Instant,
    /// The worker thread its actor and writer run on: a request from a client on the same
    /// worker reaches it without crossing threads.
    pub worker: std::thread::ThreadId,
}

#[derive(Default)]
pub struct Hub {
    tunnels: RwLock<HashMap<String, Vec<TunnelRef>>>,
    next: AtomicUsize,
}

impl Hub {
    fn read(&self) -> RwLockReadGuard<'_, HashMap<String, Vec<TunnelRef>>> {
        // No code panics while holding the lock; recover the data rather than spread a panic.
        self.tunnels.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<String, Vec<TunnelRef>>> {
        self.tunnels.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add(&self, cluster: &str, t: TunnelRef) {
        self.write().entry(cluster.to_string()).or_default().push(t);
    }

    /// Removes a tunnel; returns how many the cluster still has here.
    pub fn remove(&self, cluster: &str, id: u64) -> usize {
        let mut g = self.write();
        let Some(list) = g.get_mut(cluster) else {
            return 0;
        };
        list.retain(|t| t.id != id);
        let left = list.len();
        if left == 0 {
            g.remove(cluster);
        }
        left
    }

    /// A tunnel of `cluster` whose connection is one of `conns` (any tunnel of the cluster
    /// when `conns` is empty), spreading requests over several in turn; `skip` lists tunnels
    /// that already refused this request: its id and opener (one reference count to clone).
    pub fn pick(&self, cluster: &str, conns: &[String], skip: &[u64]) -> Option<(u64, Opener)> {
        let g = self.read();
        let list = g.get(cluster)?;
        let ok =
            |t: &&TunnelRef| !skip.contains(&t.id) && (conns.is_empty() || conns.contains(&t.conn));
        // Tunnels on the caller's worker first: a request handed to another worker's tunnel
        // and back cost a sixth of the gateway's CPU per request (ADR 0010, "Same worker").
        let here = std::thread::current().id();
        let local = |t: &&TunnelRef| t.worker == here && ok(t);
        let (n, on_this_worker) = match list.iter().filter(local).count() {
            0 => (list.iter().filter(ok).count(), false),
            n => (n, true),
        };
        if n == 0 {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut found = list
            .iter()
            .filter(|t| if on_this_worker { local(t) } else { ok(t) });
        found.nth(i).map(|t| (t.id, t.open.clone()))
    }

    /// Closes every tunnel whose token `valid` no longer accepts; returns how many.
    pub fn revoke_where(&self, invalid: impl Fn(&str, &str) -> bool) -> usize {
        let g = self.read();
        let mut n = 0;
        for (cluster, list) in g.iter() {
            for t in list.iter().filter(|t| invalid(cluster, &t.token_id)) {
                t.revoke.do_send(Revoked {
                    reason: format!("the token of this tunnel (cluster {cluster:?}) was revoked or its cluster deleted"),
                });
                n += 1;
            }
        }
        n
    }

    /// Asks every agent here to move its tunnel elsewhere; returns how many were asked.
    pub fn move_all(&self) -> usize {
        let g = self.read();
        let mut n = 0;
        for t in g.values().flatten() {
            t.move_away.do_send(MoveAway(SHUTTING_DOWN));
            n += 1;
        }
        n
    }

    /// Asks the agents of up to `n` tunnels registered at least `min_age` ago, oldest first, to
    /// move elsewhere; returns how many were asked.
    pub fn move_some(&self, n: usize, min_age: std::time::Duration) -> usize {
        let g = self.read();
        let mut old: Vec<&TunnelRef> = g
            .values()
            .flatten()
            .filter(|t| t.since.elapsed() >= min_age)
            .collect();
        old.sort_by_key(|t| t.since);
        for t in old.iter().take(n) {
            t.move_away.do_send(MoveAway(REBALANCING));
        }
        old.len().min(n)
    }

    /// Live tunnels on this node, over every cluster.
    pub fn total(&self) -> usize {
        self.read().values().map(Vec::len).sum()
    }

    pub fn count(&self, cluster: &str) -> usize {
        self.read().get(cluster).map_or(0, Vec::len)
    }
}

#[cfg(test)]
#[path = "hub_tests.rs"]
mod tests;
