//! A tunnel's ownership lease in the registry: claimed when the agent registers, refreshed on
//! the tunnel's timer, given up when the agent drains and when the tunnel closes. The epoch it
//! carries fences older connections: routes written under a stale epoch are refused.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::registry::{Claim, LeaseState, Registry, RegistryError};

/// One tunnel's lease.
pub struct Lease {
    registry: Arc<Registry>,
    cluster: String,
    conn: String,
    duration: Duration,
    epoch: Option<u64>,
    /// The epoch given up on drain: the routes written under it are withdrawn at the close.
    released: Option<u64>,
    /// A claim or refresh is under way.
    busy: bool,
}

/// How a refresh ended.
#[derive(Debug)]
pub enum Kept {
    /// Still ours; `anew` when it had to be claimed again (the registry lost this tunnel's
    /// records, routes included: publish them again).
    Held { anew: bool },
    /// A newer connection holds it, or the cluster is at its tunnel quota: close the tunnel.
    Lost,
    /// The registry did not answer; try at the next tick.
    Unreachable(RegistryError),
}

impl Lease {
    pub fn new(registry: Arc<Registry>, cluster: String, duration: Duration) -> Self {
        Lease {
            registry,
            cluster,
            conn: String::new(),
            duration,
            epoch: None,
            released: None,
            busy: false,
        }
    }

    /// The epoch while held.
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    /// The epoch this tunnel's routes were written under: held, or given up on drain.
    pub fn last_epoch(&self) -> Option<u64> {
        self.epoch.or(self.released)
    }

    /// The first claim, when the agent registers as connection `conn`; `local` tunnels of the
    /// cluster are on this node, `max` is the cluster's quota.
    pub fn claim(
        &mut self,
        conn: &str,
        local: usize,
        max: usize,
    ) -> impl Future<Output = Result<Claim, RegistryError>> + 'static {
        self.conn = conn.to_string();
        let (reg, cluster, conn, lease) = (
            self.registry.clone(),
            self.cluster.clone(),
            self.conn.clone(),
            self.duration,
        );
        async move { reg.claim_tunnel(&cluster, &conn, lease, local, max).await }
    }

    /// The first claim's answer.
    pub fn claimed(&mut self, epoch: u64) {
        self.epoch = Some(epoch);
    }

    /// Refreshes the lease (claims it again when it was lost); `None` while one is under way.
    /// Hand the future's output to [`Lease::refreshed`].
    pub fn refresh(
        &mut self,
        max: usize,
    ) -> Option<impl Future<Output = Result<Option<(u64, bool)>, RegistryError>> + 'static> {
        if self.busy {
            return None;
        }
        self.busy = true;
        let (reg, cluster, conn, lease, epoch) = (
            self.registry.clone(),
            self.cluster.clone(),
            self.conn.clone(),
            self.duration,
            self.epoch,
        );
        // (epoch, claimed anew), or None when fenced or over quota.
        Some(async move {
            let state = match epoch {
                Some(e) => reg.refresh_tunnel(&cluster, &conn, e, lease).await?,
                None => LeaseState::Lost,
            };
            match (state, epoch) {
                (LeaseState::Held, Some(e)) => Ok(Some((e, false))),
                (LeaseState::Fenced, _) => Ok(None),
                _ => match reg.claim_tunnel(&cluster, &conn, lease, 0, max).await? {
                    Claim::Held(e) => Ok(Some((e, true))),
                    Claim::TooMany => Ok(None),
                },
            }
        })
    }

    /// What a refresh found.
    pub fn refreshed(&mut self, res: Result<Option<(u64, bool)>, RegistryError>) -> Kept {
        self.busy = false;
        match res {
            Ok(Some((e, anew))) => {
                self.epoch = Some(e);
                Kept::Held { anew }
            }
            Ok(None) => Kept::Lost,
            Err(e) => Kept::Unreachable(e),
        }
    }

    /// Gives the lease up, once (the tunnel drains or closes).
    pub fn release(&mut self) {
        if let Some(epoch) = self.epoch.take() {
            self.released = Some(epoch);
            let (reg, cluster, conn) = (
                self.registry.clone(),
                self.cluster.clone(),
                self.conn.clone(),
            );
            actix_rt::spawn(async move { reg.release_tunnel(&cluster, &conn, epoch).await });
        }
    }
}
