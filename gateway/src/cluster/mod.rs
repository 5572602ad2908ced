//! The gateway as one node of many: peer links to the nodes that own other clusters' tunnels
//! ([`peers`], each a [`PeerLink`]), the peer endpoint other nodes dial ([`peer_server`]),
//! tunnels' ownership leases ([`lease`]), and this node's membership record
//! ([`run_membership`]), which also spreads tunnels over the nodes ([`balance`]).
//!
//! A request that lands on a node without the cluster's tunnel is forwarded over a peer link
//! to a node that has one: it is one more stream on that link, with the same frames and flow
//! control as a tunnel. A node answers forwarded requests only from its own tunnels, so a
//! request takes at most one hop.

pub mod balance;
pub mod lease;
pub mod peer_link;
pub mod peer_server;
pub mod peers;

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::AppState;
use crate::registry::{NodeRecord, now_ms};

pub use peer_link::PeerLink;
pub use peers::PeerPool;

/// Header carrying the dialling node's id on a peer link (and the answering node's in an agent
/// tunnel's 101).
pub const NODE_HEADER: &str = "x-tunnelgate-node";

/// Header of an agent tunnel's 101: which of the node's workers took the tunnel (ADR 0013), so
/// an agent that reaches only one node may hold a tunnel on each of its workers.
pub const WORKER_HEADER: &str = "x-tunnelgate-worker";

/// Header of a peer link's upgrade, both ways: the dialler's heartbeat interval in
/// milliseconds, echoed by a node that answers heartbeats (an older node does not, and gets
/// none: links between versions keep working without liveness checks).
pub const HEARTBEAT_HEADER: &str = "x-tunnelgate-peer-heartbeat-ms";
/// The wire protocol a dialling node offers on a peer link; echoed by a node that speaks it
/// (from 3 on: binary heads, `proto::head`). Absent: JSON heads.
pub const PROTOCOL_HEADER: &str = "x-tunnelgate-peer-protocol";

/// Whether a peer's protocol header asks for (or answers with) binary heads.
pub fn binary_heads(value: Option<&str>) -> bool {
    value
        .and_then(|v| v.parse::<u32>().ok())
        .is_some_and(|v| v >= 3)
}

/// A peer link silent for this many heartbeat intervals is dead.
pub const SILENT_INTERVALS: u32 = 3;

/// Why a peer link whose last message came at `last_seen` is dead, if it is: silent for more
/// than [`SILENT_INTERVALS`] heartbeat intervals.
pub fn silence(last_seen: std::time::Instant, interval: std::time::Duration) -> Option<String> {
    let silent = last_seen.elapsed();
    (silent > interval * SILENT_INTERVALS).then(|| {
        format!(
            "heartbeat timeout: nothing from the other node for {} ms",
            silent.as_millis()
        )
    })
}

/// The heartbeat interval a dialler asked for, within sane bounds.
pub fn peer_heartbeat(ms: &str) -> Option<std::time::Duration> {
    let ms: u64 = ms.trim().parse().ok()?;
    Some(std::time::Duration::from_millis(ms.clamp(50, 60_000)))
}

/// Compares secrets by their digests, so the time taken says nothing about the secret.
pub fn same_secret(a: &str, b: &str) -> bool {
    Sha256::digest(a.as_bytes()) == Sha256::digest(b.as_bytes())
}

/// Keeps this node's record and the cluster list current, every heartbeat interval; brings
/// everything back by itself when Redis returns, also when it returns empty.
pub async fn run_membership(state: Arc<AppState>) {
    let cfg = &state.config;
    let Some(peer_addr) = cfg
        .peer_advertise
        .clone()
        .or_else(|| cfg.peer_listen.map(|a| a.to_string()))
    else {
        return;
    };
    let mut record = NodeRecord {
        peer_addr,
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_at: now_ms(),
        tunnels: 0,
    };
    let ttl = cfg.heartbeat_interval * 3;
    let mut tick = tokio::time::interval(cfg.heartbeat_interval);
    let mut clusters_synced = false;
    loop {
        tick.tick().await;
        let was_healthy = state.registry.is_healthy();
        record.tunnels = state.hub.total() as u64;
        if state.registry.announce_node(&record, ttl).await.is_err() {
            clusters_synced = false;
            continue;
        }
        balance::rebalance(&state).await;
        if !clusters_synced || !was_healthy {
            clusters_synced = state.registry.sync_clusters().await.is_ok();
        }
    }
}
