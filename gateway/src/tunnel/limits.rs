//! Per-tunnel rate limits on what an agent sends (`governor`): each control message kind has
//! its own budget, so no agent can turn heartbeats, route updates or late frames into work
//! for the node or for Redis that other tenants pay for. Going over closes that tunnel (1008)
//! with a reason naming the kind and the limit; the agent reconnects with backoff.

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Heartbeats per second (agents send one per interval, 10 s by default), and the burst.
const HEARTBEATS_PER_SEC: u32 = 5;
const HEARTBEAT_BURST: u32 = 20;
/// `ingress_routes` messages per second, and the burst (Kubernetes mode sends one per change).
const ROUTE_MSGS_PER_SEC: u32 = 10;
const ROUTE_MSG_BURST: u32 = 100;
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
    Heartbeat,
    /// `ingress_routes`; its cost is its size in KiB.
    Routes,
    Other,
    /// Input for a stream that already ended.
    Late,
}

pub struct ControlLimits {
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
        ControlLimits {
            heartbeat: limiter(HEARTBEATS_PER_SEC, HEARTBEAT_BURST),
            route_msgs: limiter(ROUTE_MSGS_PER_SEC, ROUTE_MSG_BURST),
            route_kib: limiter(ROUTE_KIB_PER_SEC, ROUTE_KIB_BURST),
            other: limiter(OTHER_PER_SEC, OTHER_BURST),
            late: limiter(LATE_PER_SEC, LATE_BURST),
        }
    }
}

impl ControlLimits {
    /// Counts one message of `kind` costing `cost` units; the reason to close when over.
    pub fn check(&self, kind: Kind, cost: u32) -> Result<(), String> {
        let over = |what: &str, per_sec: u32| {
            Err(format!(
                "rate limit: more than {per_sec} {what} per second from this agent"
            ))
        };
        match kind {
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
        assert!(i >= HEARTBEAT_BURST as usize, "the burst passes");
        assert!(why.contains("heartbeats"), "{why}");
        // Budgets are per kind: routes still pass.
        assert!(l.check(Kind::Routes, 4).is_ok());
        // A message bigger than the burst still counts (clamped), it does not panic.
        assert!(l.check(Kind::Routes, u32::MAX).is_ok() || l.check(Kind::Routes, 1).is_ok());
    }
}
