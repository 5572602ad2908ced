//! Overload: a node carries at most `--max-connections` open connections on its public
//! listeners (clients and agents alike), and takes no new work while its resident memory is
//! above `--max-memory`. A connection past the limit, or any new request while memory is over,
//! is still accepted so it learns why: it is answered 503 with `Retry-After` (and a connection
//! past the limit is closed), before any work (no routing, no Redis, no stream). The node keeps
//! serving what it has, instead of running out of file descriptors or being killed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The node's load: open connections on the public listeners, and whether resident memory is
/// over its limit.
#[derive(Debug)]
pub struct Load {
    open: AtomicUsize,
    max: usize,
    /// The last connection taken was past the limit (for logging each crossing once).
    conns_over: std::sync::atomic::AtomicBool,
    memory_over: std::sync::atomic::AtomicBool,
}

/// One open connection, held in its extensions for as long as it lives.
#[derive(Debug)]
pub struct Slot {
    conns: Arc<Load>,
    /// The connection arrived past the limit: it gets 503s.
    pub over: bool,
}

/// The connection-level mark actix-http requests read: whether their connection came past
/// the limit (its [`Slot`] lives with the connection itself).
#[derive(Debug, Clone, Copy)]
pub struct Crowded(pub bool);

impl Load {
    /// `max` 0 means no limit.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Load {
            open: AtomicUsize::new(0),
            max,
            conns_over: Default::default(),
            memory_over: Default::default(),
        })
    }

    /// Counts a new connection; dropping the slot counts it out.
    pub fn take(self: &Arc<Self>) -> Slot {
        let n = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        let over = self.max > 0 && n > self.max;
        if self.conns_over.swap(over, Ordering::Relaxed) != over {
            match over {
                true => tracing::warn!(
                    open = n,
                    max = self.max,
                    "at --max-connections: new connections get 503"
                ),
                false => tracing::info!(open = n, max = self.max, "under --max-connections again"),
            }
        }
        Slot {
            conns: self.clone(),
            over,
        }
    }

    /// Whether the node's resident memory was above its limit at the last check.
    pub fn memory_over(&self) -> bool {
        self.memory_over.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// This process's resident memory in bytes (Linux), if it can be read.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Checks resident memory against `max_bytes` every second; logs each crossing.
pub async fn watch_memory(conns: Arc<Load>, max_bytes: u64) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some(rss) = resident_bytes() else {
            continue;
        };
        let over = rss > max_bytes;
        if conns.memory_over.swap(over, Ordering::Relaxed) != over {
            let (rss_mib, max_mib) = (rss >> 20, max_bytes >> 20);
            match over {
                true => tracing::warn!(
                    rss_mib,
                    max_mib,
                    "memory over --max-memory: new requests get 503"
                ),
                false => tracing::info!(rss_mib, max_mib, "memory back under --max-memory"),
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.conns.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_past_the_limit_are_over_and_closing_one_frees_a_place() {
        let c = Load::new(2);
        let a = c.take();
        let b = c.take();
        let x = c.take();
        assert!(!a.over && !b.over && x.over);
        assert_eq!(c.open(), 3);
        drop(x);
        drop(a);
        assert_eq!(c.open(), 1);
        assert!(!c.take().over);
        let unlimited = Load::new(0);
        let all: Vec<Slot> = (0..100).map(|_| unlimited.take()).collect();
        assert!(all.iter().all(|s| !s.over));
    }

    #[test]
    fn resident_memory_is_read() {
        let rss = resident_bytes().unwrap();
        assert!(rss > 1 << 20 && rss < 1 << 40, "{rss}");
    }
}
