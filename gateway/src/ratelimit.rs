//! Per-cluster request rate limits (GCRA: a rate and a burst), enforced at the node a request
//! enters, so the admitted rate is the cluster's whatever node the traffic lands on.
//!
//! Without Redis the limiter is `governor`'s, in memory. With Redis the bucket lives there (a
//! Lua GCRA keyed by cluster) and each node takes permits in small batches — 2 ms of the rate,
//! at most an eighth of the burst, at least one; one fetch at a time per cluster — so a request
//! costs a Redis call only once per batch, and a batch a node cannot use within 100 ms costs
//! the cluster at most those few permits. While Redis is unreachable each
//! node admits at the limit on its own (the registry logs the outage).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::registry::Registry;

/// A cluster's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub requests_per_second: u32,
    pub burst: u32,
}

/// Batches a node takes from the shared bucket per second of the limit (a batch is 2 ms of the
/// rate: permits a node cannot use before the batch expires are lost, so they must be few).
const BATCHES_PER_SECOND: u32 = 500;
/// A batch is at most this fraction of the burst, so that one node's batch never takes the
/// bucket's whole tolerance from the others.
const BURST_SHARE: u32 = 8;
/// A batch taken from Redis is usable for this long, then given up.
const BATCH_LIFETIME: Duration = Duration::from_millis(100);

struct Batch {
    left: u32,
    taken: Instant,
    /// One fetch from Redis at a time per cluster: requests that find the batch empty while
    /// a fetch is under way wait for it instead of each taking a batch of their own (which
    /// would drain the shared bucket and refuse requests under the limit).
    fetch: Arc<tokio::sync::Mutex<()>>,
}

enum Local {
    Memory(Limit, DefaultDirectRateLimiter),
    /// The batch from the shared bucket, and this node's own limiter at the cluster's limit
    /// for while Redis is unreachable.
    Shared(Limit, Batch, DefaultDirectRateLimiter),
}

/// Every cluster's limiter on this node.
#[derive(Default)]
pub struct RateLimits {
    by_cluster: Mutex<HashMap<String, Arc<Mutex<Local>>>>,
}

fn governor_for(limit: Limit) -> DefaultDirectRateLimiter {
    let n = |v: u32| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
    RateLimiter::direct(Quota::per_second(n(limit.requests_per_second)).allow_burst(n(limit.burst)))
}

impl RateLimits {
    /// Admits one request of `cluster` under `limit`; Err(seconds to wait) when over it.
    pub async fn admit(&self, registry: &Registry, cluster: &str, limit: Limit) -> Result<(), u64> {
        let slot = {
            let mut g = self.by_cluster.lock().unwrap_or_else(|p| p.into_inner());
            match g.get(cluster) {
                Some(s) => s.clone(),
                None => {
                    let s = Arc::new(Mutex::new(if registry.is_shared() {
                        Local::Shared(
                            limit,
                            Batch {
                                left: 0,
                                taken: Instant::now(),
                                fetch: Arc::default(),
                            },
                            governor_for(limit),
                        )
                    } else {
                        Local::Memory(limit, governor_for(limit))
                    }));
                    g.insert(cluster.to_string(), s.clone());
                    s
                }
            }
        };
        let retry = (1.0 / f64::from(limit.requests_per_second.max(1)))
            .ceil()
            .max(1.0) as u64;
        // Memory, Redis unreachable, or a batch in hand: answered here.
        let degraded = !registry.is_healthy();
        let fetch = match self.take_local(&slot, limit, degraded) {
            Taken::Memory(ok) => return ok.map_err(|()| retry),
            Taken::Permit => return Ok(()),
            Taken::Empty(fetch) => fetch,
        };
        // Take a batch from the shared bucket, one fetch at a time.
        let _single = fetch.lock().await;
        if let Taken::Permit = self.take_local(&slot, limit, false) {
            return Ok(()); // another request's fetch refilled it
        }
        let want = (limit.requests_per_second / BATCHES_PER_SECOND)
            .min(limit.burst / BURST_SHARE)
            .max(1);
        // Redis just went away: this request passes; the next ones use the node's own limiter.
        let granted = registry
            .take_permits(cluster, limit, want)
            .await
            .unwrap_or(1);
        if granted == 0 {
            return Err(retry);
        }
        let mut l = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Local::Shared(_, batch, _) = &mut *l {
            batch.left = granted - 1;
            batch.taken = Instant::now();
        }
        Ok(())
    }

    /// One permit from what this node holds, if it has one; `degraded` (Redis unreachable)
    /// answers a shared cluster from this node's own limiter.
    fn take_local(&self, slot: &Mutex<Local>, limit: Limit, degraded: bool) -> Taken {
        let mut l = slot.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *l {
            Local::Memory(current, lim) => {
                if *current != limit {
                    *current = limit;
                    *lim = governor_for(limit);
                }
                Taken::Memory(lim.check().map_err(|_| ()))
            }
            Local::Shared(current, batch, own) => {
                if *current != limit {
                    *current = limit;
                    batch.left = 0;
                    *own = governor_for(limit);
                }
                if degraded {
                    return Taken::Memory(own.check().map_err(|_| ()));
                }
                if batch.left > 0 && batch.taken.elapsed() < BATCH_LIFETIME {
                    batch.left -= 1;
                    Taken::Permit
                } else {
                    Taken::Empty(batch.fetch.clone())
                }
            }
        }
    }
}

/// What this node's own share answered.
enum Taken {
    Memory(Result<(), ()>),
    Permit,
    Empty(Arc<tokio::sync::Mutex<()>>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_limits_admit_the_burst_then_the_rate() {
        let reg = Registry::in_memory("gw.test", &[]);
        let rl = RateLimits::default();
        let limit = Limit {
            requests_per_second: 10,
            burst: 5,
        };
        let mut admitted = 0;
        for _ in 0..100 {
            if rl.admit(&reg, "a", limit).await.is_ok() {
                admitted += 1;
            }
        }
        assert!((5..=7).contains(&admitted), "{admitted}");
        assert!(rl.admit(&reg, "b", limit).await.is_ok(), "per cluster");
    }
}
