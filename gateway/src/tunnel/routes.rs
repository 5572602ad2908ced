//! A tunnel's routes and lease: publishing what the agent sends (in order, acknowledged once
//! routable on every node), publishing again after the registry lost them, keeping the lease.

use actix::{ActorFutureExt, AsyncContext, Context, WrapFuture};
use tunnelgate_mux::Outgoing;
use tunnelgate_proto::Control;

use super::tunnel_actor::TunnelActor;
use crate::cluster::lease::Kept;

impl TunnelActor {
    pub(super) fn on_routes(
        &mut self,
        ctx: &mut Context<Self>,
        m: tunnelgate_proto::control::IngressRoutes,
    ) {
        let count = m.routes.len();
        let (reg, cluster, conn, epoch, current) = (
            self.state.registry.clone(),
            self.cluster.clone(),
            self.conn_id.clone(),
            self.lease.epoch(),
            self.routes.clone(),
        );
        let action = m.action;
        // `wait`: later messages from this agent are handled after the routes are stored, so
        // updates apply in order and the ack means "routable on every node".
        ctx.wait(
            async move {
                reg.publish(&cluster, &conn, epoch, &current, action, m.routes)
                    .await
            }
            .into_actor(self)
            .map(move |(next, ack, stored), act, _ctx| {
                act.routes = next;
                act.routes_dirty = stored.is_err();
                if let Err(e) = stored {
                    tracing::warn!(cluster = %act.cluster, error = %e, "routes kept on this node; published when the registry is back");
                }
                for r in ack.rejected.iter().take(20) {
                    tracing::warn!(cluster = %act.cluster, host = %r.host, path = %r.path, reason = %r.reason, "route rejected");
                }
                if ack.rejected.len() > 20 {
                    tracing::warn!(cluster = %act.cluster, more = ack.rejected.len() - 20, "more routes rejected");
                }
                let conflicts = ack.rejected.iter().filter(|r| r.reason.starts_with("conflict")).count();
                act.state.metrics.routes_rejected(&act.cluster, ack.rejected.len() - conflicts, conflicts);
                tracing::info!(
                    cluster = %act.cluster, tunnel = act.id, action = ?action, routes = count,
                    accepted = ack.accepted.len(), rejected = ack.rejected.len(),
                    published = act.routes.routes.len(), "routes updated"
                );
                let routes = act.state.registry.route_count(&act.cluster);
                act.state.metrics.set_cluster(&act.cluster, true, routes);
                if !act.out.try_send(Outgoing::Text(Control::RoutesAck(ack).to_json())) {
                    tracing::warn!(cluster = %act.cluster, "routes_ack dropped: agent is not reading");
                }
            }),
        );
    }

    /// Publishes this connection's routes again (the registry lost them, or the last change
    /// could not be stored).
    pub(super) fn republish_routes(&mut self, ctx: &mut Context<Self>) {
        if self.routes.routes.is_empty() && !self.routes_dirty {
            return;
        }
        tracing::info!(cluster = %self.cluster, routes = self.routes.routes.len(), "publishing this tunnel's routes again");
        let (reg, cluster, conn, epoch, set) = (
            self.state.registry.clone(),
            self.cluster.clone(),
            self.conn_id.clone(),
            self.lease.epoch(),
            self.routes.clone(),
        );
        ctx.spawn(
            async move { reg.store_set(&cluster, &conn, epoch, &set).await }
                .into_actor(self)
                .map(|res, act, _| match res {
                    Ok(()) => act.routes_dirty = false,
                    Err(e) => {
                        tracing::warn!(cluster = %act.cluster, error = %e, "publishing routes again failed")
                    }
                }),
        );
    }

    /// Claims or refreshes this tunnel's ownership lease; closes the tunnel when a newer
    /// connection holds it.
    pub(super) fn keep_lease(&mut self, ctx: &mut Context<Self>) {
        if self.fenced {
            return;
        }
        if !self.registered || self.draining || !self.state.registry.is_shared() {
            return;
        }
        let Some(work) = self
            .lease
            .refresh(self.state.config.max_tunnels_per_cluster)
        else {
            return;
        };
        ctx.spawn(
            work.into_actor(self)
                .map(|res, act, ctx| match act.lease.refreshed(res) {
                    Kept::Held { anew } => {
                        if let Some(info) = act.agent.clone() {
                            let (reg, cluster) = (act.state.registry.clone(), act.cluster.clone());
                            actix_rt::spawn(async move { reg.note_agent(&cluster, info).await });
                        }
                        if anew || act.routes_dirty {
                            act.republish_routes(ctx);
                        }
                    }
                    Kept::Lost => act.lost_lease(ctx),
                    Kept::Unreachable(e) => {
                        tracing::debug!(cluster = %act.cluster, error = %e, "lease not refreshed")
                    }
                }),
        );
    }

    /// Another tunnel of this connection holds the lease (a newer epoch) — usually the agent's
    /// own replacement while it moves, whose `drain` for this tunnel may still be on its way —
    /// or the cluster is at its tunnel quota. No new stream comes here; the streams in flight
    /// finish, then the tunnel closes (at the latest after `--drain-timeout`).
    pub(super) fn lost_lease(&mut self, ctx: &mut Context<Self>) {
        const WHY: &str =
            "a newer connection holds this tunnel's lease, or the cluster is at its tunnel quota";
        if self.streams.is_empty() {
            return self.close(ctx, 1008, WHY.into(), "fenced");
        }
        if self.fenced {
            return;
        }
        self.fenced = true;
        self.streams.set_accepting(false);
        // Streams end in their table without the actor: it must hear when the last one does
        // (or see now that the last one just did).
        if self.streams.watch_empty() {
            return self.close(ctx, 1008, WHY.into(), "fenced");
        }
        tracing::info!(
            cluster = %self.cluster, tunnel = self.id, streams = self.streams.len(),
            "lease lost: no new streams here; closing once those in flight finish"
        );
        if !self.draining {
            self.draining = true;
            self.leave_hub();
        }
        ctx.run_later(self.state.config.drain_timeout, |act, ctx| {
            act.close(ctx, 1008, WHY.into(), "fenced")
        });
    }
}
