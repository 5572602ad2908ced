//! What each agent connection of a cluster reported, for the admin API's live state: the node
//! holding its tunnel, the agent's version and host, its last heartbeat, whether it judged its
//! cluster private. In memory on a single node; in Redis (`agents:{cluster}`, written with
//! each lease refresh, gone with the tunnel or after the route TTL) so that any node's admin
//! API shows the tunnels of every node.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{ROUTE_TTL, Registry, now_ms};

/// Reports older than this are from a node that died without cleaning up.
const STALE_MS: u64 = 60_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub connection: String,
    pub node: String,
    pub agent_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Milliseconds since the epoch; 0 before the first heartbeat.
    pub last_heartbeat_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_private: Option<bool>,
    /// When this report was written.
    #[serde(default)]
    pub reported_ms: u64,
}

/// Cluster → connection → report, for the in-memory registry.
pub type AgentMap = HashMap<String, HashMap<String, AgentInfo>>;

impl Registry {
    /// Records what connection `info.connection` of `cluster` reported.
    pub async fn note_agent(&self, cluster: &str, mut info: AgentInfo) {
        info.reported_ms = now_ms();
        match self.redis_store() {
            None => {
                self.agent_infos
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(cluster.to_string())
                    .or_default()
                    .insert(info.connection.clone(), info);
            }
            Some(r) => {
                let json = serde_json::to_string(&info).unwrap_or_default();
                let _ = self.note(
                    r.put_agent(cluster, &info.connection, json, ROUTE_TTL)
                        .await,
                );
            }
        }
    }

    /// Forgets connection `conn` of `cluster` (its tunnel closed).
    pub async fn forget_agent(&self, cluster: &str, conn: &str) {
        match self.redis_store() {
            None => {
                let mut g = self.agent_infos.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(m) = g.get_mut(cluster) {
                    m.remove(conn);
                    if m.is_empty() {
                        g.remove(cluster);
                    }
                }
            }
            Some(r) => {
                let _ = self.note(r.del_agent(cluster, conn).await);
            }
        }
    }

    /// The live agent connections of `cluster`, on every node (newest first).
    pub async fn agents(&self, cluster: &str) -> Vec<AgentInfo> {
        let mut all: Vec<AgentInfo> = match self.redis_store() {
            None => self
                .agent_infos
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(cluster)
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default(),
            Some(r) => match self.note(r.agents(cluster).await) {
                Ok(v) => v
                    .iter()
                    .filter_map(|j| serde_json::from_str(j).ok())
                    .collect(),
                Err(_) => Vec::new(),
            },
        };
        let now = now_ms();
        all.retain(|a| now.saturating_sub(a.reported_ms) < STALE_MS);
        all.sort_by_key(|a| std::cmp::Reverse(a.last_heartbeat_ms));
        all
    }
}
