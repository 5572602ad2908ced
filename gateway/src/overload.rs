//! Overload: a node carries at most `--max-connections` open connections on its public
//! listeners (clients and agents alike). A connection past the limit is still accepted, so it
//! learns why: its requests are answered 503 with `Retry-After` and `Connection: close`, before
//! any work (no routing, no Redis, no stream). The node keeps serving the connections it has,
//! instead of running out of file descriptors or memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The public listeners' open connections.
#[derive(Debug)]
pub struct Connections {
    open: AtomicUsize,
    max: usize,
}

/// One open connection, held in its extensions for as long as it lives.
#[derive(Debug)]
pub struct Slot {
    conns: Arc<Connections>,
    /// The connection arrived past the limit: it gets 503s.
    pub over: bool,
}

impl Connections {
    /// `max` 0 means no limit.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Connections {
            open: AtomicUsize::new(0),
            max,
        })
    }

    /// Counts a new connection; dropping the slot counts it out.
    pub fn take(self: &Arc<Self>) -> Slot {
        let n = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        Slot {
            conns: self.clone(),
            over: self.max > 0 && n > self.max,
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
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
        let c = Connections::new(2);
        let a = c.take();
        let b = c.take();
        let x = c.take();
        assert!(!a.over && !b.over && x.over);
        assert_eq!(c.open(), 3);
        drop(x);
        drop(a);
        assert_eq!(c.open(), 1);
        assert!(!c.take().over);
        let unlimited = Connections::new(0);
        let all: Vec<Slot> = (0..100).map(|_| unlimited.take()).collect();
        assert!(all.iter().all(|s| !s.over));
    }
}
