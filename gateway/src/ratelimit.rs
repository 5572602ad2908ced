//! Per-cluster request rate limits (GCRA: a rate and a burst), enforced at the node a request
//! enters, so the admitted rate is the cluster's whatever node the traffic lands on.
//!
//! Without Redis the limiter is `governor`'s, in memory. With Redis the bucket lives there (a
//! Lua GCRA keyed by cluster) and each node takes permits in small batches — a fiftieth of a
//! second's worth, at least one — so a request costs a Redis call only once per batch and the
//! cluster-wide rate overshoots by at most one batch per node. While Redis is unreachable each
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

/// Batches a node takes from the shared bucket per second of the limit.
const BATCHES_PER_SECOND: u32 = 50;
/// A batch taken from Redis is usable for this long, then given up.
const BATCH_LIFETIME: Duration = Duration::from_millis(100);

struct Batch {
    left: u32,
    taken: Instant,
}

enum Local {
    Memory(Limit, DefaultDirectRateLimiter),
    Shared(Limit, Batch),
}

/// Every cluster's limiter on this node.
#[derive(Default)]
pub struct RateLimits {
    by_cluster: Mutex<HashMap<String, Arc<Mutex<Local>>>>,
    /// While Redis is unreachable: this node alone, at the cluster's limit.
    fallback: Mutex<HashMap<String, (Limit, Arc<DefaultDirectRateLimiter>)>>,
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
                            },
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
        if registry.is_shared() && !registry.is_healthy() {
            let lim = {
                let mut g = self.fallback.lock().unwrap_or_else(|p| p.into_inner());
                match g.get(cluster) {
                    Some((l, lim)) if *l == limit => lim.clone(),
                    _ => {
                        let lim = Arc::new(governor_for(limit));
                        g.insert(cluster.to_string(), (limit, lim.clone()));
                        lim
                    }
                }
            };
            return lim.check().map_err(|_| retry);
        }
        // Memory, or a batch in hand: answered here.
        {
            let mut l = slot.lock().unwrap_or_else(|p| p.into_inner());
            match &mut *l {
                Local::Memory(current, lim) => {
                    if *current != limit {
                        *current = limit;
                        *lim = governor_for(limit);
                    }
                    return lim.check().map_err(|_| retry);
                }
                Local::Shared(current, batch) => {
                    if *current != limit {
                        *current = limit;
                        batch.left = 0;
                    }
                    if batch.left > 0 && batch.taken.elapsed() < BATCH_LIFETIME {
                        batch.left -= 1;
                        return Ok(());
                    }
                }
            }
        }
        // Take a batch from the shared bucket.
        let want = (limit.requests_per_second / BATCHES_PER_SECOND).max(1);
        // Redis just went away: this request passes; the next ones use the node's own limiter.
        let granted = registry
            .take_permits(cluster, limit, want)
            .await
            .unwrap_or(1);
        if granted == 0 {
            return Err(retry);
        }
        let mut l = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Local::Shared(_, batch) = &mut *l {
            batch.left = granted - 1;
            batch.taken = Instant::now();
        }
        Ok(())
    }
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
