//! Rate limits on what a cluster's agents send (`governor`), per cluster on each node: each
//! control message kind has its own budget, shared by all the cluster's tunnels here, so no
//! tenant can turn heartbeats, route updates, late frames or reconnects into work for the node
//! or for Redis that other tenants pay for, and reconnecting does not refill a budget. Going
//! over closes the tunnel that did (1008) with a reason naming the kind and the limit; a
//! connect over budget is refused with 429 before the upgrade.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Heartbeats per second (each agent tunnel sends one per interval, 10 s by default), and the
/// burst.
const HEARTBEATS_PER_SEC: u32 = 20;
const HEARTBEAT_BURST: u32 = 50;
/// `ingress_routes` messages per second, and the burst (Kubernetes mode sends one per change).
const ROUTE_MSGS_PER_SEC: u32 = 10;
const ROUTE_MSG_BURST: u32 = 20;
/// KiB of `ingress_routes` JSON per second, and the burst (a full sync of a big cluster).
const ROUTE_KIB_PER_SEC: u32 = 1024;
const ROUTE_KIB_BURST: u32 = 8 * 1024;
/// Other control messages (drain, WebSocket close notices) per second, and the burst.
const OTHER_PER_SEC: u32 = 100;
const OTHER_BURST: u32 = 1000;
/// Frames or responses for streams that already ended, per second, and the burst: a few are
/// normal (a response racing a cancel), a flood is not.
const LATE_PER_SEC: u32 = 2000;
const LATE_BURST: u32 = 10_000;

/// What a message counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A new tunnel (an upgrade with a valid token).
    Connect,
    Heartbeat,
    /// `ingress_routes`; its cost is its size in KiB.
    Routes,
    Other,
    /// Input for a stream that already ended.
    Late,
}

pub struct ControlLimits {
    connect: DefaultDirectRateLimiter,
    connects_per_sec: u32,
    heartbeat: DefaultDirectRateLimiter,
    route_msgs: DefaultDirectRateLimiter,
    route_kib: DefaultDirectRateLimiter,
    other: DefaultDirectRateLimiter,
    late: DefaultDirectRateLimiter,
}

fn limiter(per_sec: u32, burst: u32) -> DefaultDirectRateLimiter {
    let n = |v: u32| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
    RateLimiter::direct(Quota::per_second(n(per_sec)).allow_burst(n(burst)))
}

impl Default for ControlLimits {
    fn default() -> Self {
        ControlLimits::new(crate::config::DEFAULT_CLUSTER_CONNECT_RATE)
    }
}

impl ControlLimits {
    /// Budgets for one cluster; `connects_per_sec` new tunnels a second, bursts of twice
    /// that.
    pub fn new(connects_per_sec: u32) -> Self {
        ControlLimits {
            connect: limiter(connects_per_sec, connects_per_sec.saturating_mul(2)),
            connects_per_sec,
            heartbeat: limiter(HEARTBEATS_PER_SEC, HEARTBEAT_BURST),
            route_msgs: limiter(ROUTE_MSGS_PER_SEC, ROUTE_MSG_BURST),
            route_kib: limiter(ROUTE_KIB_PER_SEC, ROUTE_KIB_BURST),
            other: limiter(OTHER_PER_SEC, OTHER_BURST),
            late: limiter(LATE_PER_SEC, LATE_BURST),
        }
    }

    /// Counts one message of `kind` costing `cost` units; the reason to close when over.
    pub fn check(&self, kind: Kind, cost: u32) -> Result<(), String> {
        let over = |what: &str, per_sec: u32| {
            Err(format!(
                "rate limit: more than {per_sec} {what} per second from this agent"
            ))
        };
        match kind {
            Kind::Connect => match self.connect.check() {
                Ok(()) => Ok(()),
                Err(_) => over("new tunnels", self.connects_per_sec),
            },
            Kind::Heartbeat => match self.heartbeat.check() {
                Ok(()) => Ok(()),
                Err(_) => over("heartbeats", HEARTBEATS_PER_SEC),
            },
            Kind::Routes => {
                if self.route_msgs.check().is_err() {
                    return over("ingress_routes messages", ROUTE_MSGS_PER_SEC);
                }
                let kib =
                    NonZeroU32::new(cost.clamp(1, ROUTE_KIB_BURST)).unwrap_or(NonZeroU32::MIN);
                match self.route_kib.check_n(kib) {
                    Ok(Ok(())) => Ok(()),
                    _ => over("KiB of ingress_routes", ROUTE_KIB_PER_SEC),
                }
            }
            Kind::Other => match self.other.check() {
                Ok(()) => Ok(()),
                Err(_) => over("control messages", OTHER_PER_SEC),
            },
            Kind::Late => match self.late.check() {
                Ok(()) => Ok(()),
                Err(_) => over("frames for ended streams", LATE_PER_SEC),
            },
        }
    }
}

/// The limits of every cluster seen on this node (only authenticated cluster ids get one).
#[derive(Default)]
pub struct ClusterLimits {
    connects_per_sec: u32,
    by_cluster: Mutex<HashMap<String, Arc<ControlLimits>>>,
}

impl ClusterLimits {
    pub fn new(connects_per_sec: u32) -> Self {
        ClusterLimits {
            connects_per_sec,
            by_cluster: Mutex::default(),
        }
    }

    /// The budgets of `cluster`, shared by its tunnels on this node.
    pub fn of(&self, cluster: &str) -> Arc<ControlLimits> {
        let mut g = self.by_cluster.lock().unwrap_or_else(|p| p.into_inner());
        g.entry(cluster.to_string())
            .or_insert_with(|| Arc::new(ControlLimits::new(self.connects_per_sec)))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_refused_and_named() {
        let l = ControlLimits::default();
        let mut refused = None;
        for i in 0..1000 {
            if let Err(why) = l.check(Kind::Heartbeat, 1) {
                refused = Some((i, why));
                break;
            }
        }
        let (i, why) = refused.expect("a heartbeat flood is refused");
        let shared = ClusterLimits::new(1);
        assert!(Arc::ptr_eq(&shared.of("a"), &shared.of("a")));
        let mut connects = 0;
        while shared.of("a").check(Kind::Connect, 1).is_ok() {
            connects += 1;
        }
        assert_eq!(connects, 2, "the connect burst is two seconds' worth");
        assert!(
            shared.of("b").check(Kind::Connect, 1).is_ok(),
            "budgets are per cluster"
        );
        assert!(i >= HEARTBEAT_BURST as usize, "the burst passes");
        assert!(why.contains("heartbeats"), "{why}");
        // Budgets are per kind: routes still pass.
        assert!(l.check(Kind::Routes, 4).is_ok());
        // A message bigger than the burst still counts (clamped), it does not panic.
        assert!(l.check(Kind::Routes, u32::MAX).is_ok() || l.check(Kind::Routes, 1).is_ok());
    }
}
