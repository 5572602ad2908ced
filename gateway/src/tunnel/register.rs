//! Registration of an agent tunnel: the checks on `register` (once, this cluster, this
//! protocol), the lease claim under the cluster's tunnel quota, then the hub.

use actix::{ActorContext, ActorFutureExt, AsyncContext, Context, WrapFuture};
use tunnelgate_mux::Outgoing;
use tunnelgate_proto::control::{RegisterError, RegisterSuccess};
use tunnelgate_proto::{Control, OLDEST_PROTOCOL, PROTOCOL_VERSION};

use super::hub::TunnelRef;
use super::tunnel_actor::TunnelActor;
use crate::registry::Claim;

impl TunnelActor {
    pub(super) fn on_register(
        &mut self,
        ctx: &mut Context<Self>,
        r: tunnelgate_proto::control::Register,
    ) {
        if self.registered {
            return self.protocol_error(ctx, "register sent twice".into());
        }
        if r.cluster != self.cluster {
            let reason = format!("this token does not belong to cluster {:?}", r.cluster);
            return self.refuse_register(ctx, reason, "cluster_mismatch");
        }
        if !(OLDEST_PROTOCOL..=PROTOCOL_VERSION).contains(&r.protocol) {
            let reason = format!(
                "the agent speaks Tunnelgate protocol {}, this gateway speaks protocol {PROTOCOL_VERSION} \
                 (and serves agents of {OLDEST_PROTOCOL} to {PROTOCOL_VERSION}): run an agent at most one \
                 protocol apart from the gateway's release",
                r.protocol
            );
            return self.refuse_register(ctx, reason, "protocol_version");
        }
        // Each agent is served in its own version (one apart interoperates).
        self.streams.set_binary_heads(r.protocol >= 3);
        self.registered = true;
        let id_ok = |c: &String| {
            !c.is_empty() && c.len() <= 128 && c.bytes().all(|b| b.is_ascii_graphic() && b != b'|')
        };
        self.conn_id = r
            .connection_id
            .clone()
            .filter(id_ok)
            .unwrap_or_else(|| format!("{}-{}", self.state.config.node_id(), self.id));
        self.routes.agent = r
            .agent_id
            .clone()
            .filter(id_ok)
            .unwrap_or_else(|| self.conn_id.clone());
        let (local, max) = (
            self.state.hub.count(&self.cluster),
            self.state.config.max_tunnels_per_cluster,
        );
        let claim = self.lease.claim(&self.conn_id, local, max);
        // `wait`: nothing else from this agent is handled until the tunnel is on record.
        ctx.wait(
            claim
                .into_actor(self)
                .map(move |res, act, ctx| {
                    match res {
                        Ok(Claim::Held(epoch)) => act.lease.claimed(epoch),
                        Ok(Claim::TooMany) => {
                            let reason = format!(
                                "cluster {:?} already has its quota of {max} tunnels",
                                act.cluster
                            );
                            return act.refuse_register(ctx, reason, "tunnel_quota");
                        }
                        Err(e) => tracing::warn!(cluster = %act.cluster, error = %e, "tunnel serves through this node only until the registry is back"),
                    }
                    act.finish_register(ctx, r);
                }),
        );
    }

    /// Tells the agent why it may not register, then closes.
    pub(super) fn refuse_register(
        &mut self,
        ctx: &mut Context<Self>,
        reason: String,
        metric: &'static str,
    ) {
        let refusal = Control::RegisterError(RegisterError {
            reason: reason.clone(),
            protocol: (metric == "protocol_version").then_some(PROTOCOL_VERSION),
        });
        // Queued, not jumped ahead: the agent reads why before the close. Nothing else is
        // queued before registration, so there is room.
        self.out.try_send(Outgoing::Text(refusal.to_json()));
        self.out.try_send(Outgoing::Close {
            code: 1008,
            reason: reason.clone(),
        });
        self.state.metrics.tunnel_error(metric);
        tracing::warn!(cluster = %self.cluster, peer = ?self.peer, %reason, "register refused");
        self.registered = false;
        self.close_reason = Some(reason);
        self.close_queued = true;
        ctx.stop();
    }

    pub(super) fn finish_register(
        &mut self,
        ctx: &mut Context<Self>,
        r: tunnelgate_proto::control::Register,
    ) {
        let cfg = &self.state.config;
        let ok = RegisterSuccess {
            node_id: cfg.node_id().to_string(),
            tunnel_id: format!("{}-{}", cfg.node_id(), self.id),
            heartbeat_interval_ms: cfg.heartbeat_interval.as_millis() as u64,
            stream_window: cfg.stream_window,
            max_streams: cfg.max_streams_per_tunnel,
            public_host: Some(format!("{}.{}", self.cluster, cfg.domain)),
            protocol: r.protocol,
        };
        self.out
            .try_send(Outgoing::Text(Control::RegisterSuccess(ok).to_json()));
        self.streams.set_accepting(true);
        self.state.hub.add(
            &self.cluster,
            TunnelRef {
                id: self.id,
                conn: self.conn_id.clone(),
                token_id: self.token_id.clone(),
                open: super::Opener::new(
                    self.streams.clone(),
                    self.out.clone(),
                    ctx.address().recipient(),
                ),
                revoke: ctx.address().recipient(),
                move_away: ctx.address().recipient(),
                since: std::time::Instant::now(),
                worker: std::thread::current().id(),
            },
        );
        self.state.metrics.tunnels.inc();
        let routes = self.state.registry.route_count(&self.cluster);
        self.state.metrics.set_cluster(&self.cluster, true, routes);
        tracing::info!(
            cluster = %self.cluster, tunnel = self.id, peer = ?self.peer, connection = %self.conn_id,
            epoch = ?self.lease.epoch(), agent_version = %r.agent_version, agent_host = ?r.hostname, "tunnel registered"
        );
        let info = crate::registry::agents::AgentInfo {
            connection: self.conn_id.clone(),
            node: self.state.config.node_id().to_string(),
            agent_version: r.agent_version.chars().take(64).collect(),
            hostname: r.hostname.as_ref().map(|h| h.chars().take(253).collect()),
            last_heartbeat_ms: 0,
            is_private: None,
            reported_ms: 0,
        };
        self.agent = Some(info.clone());
        let (reg, cluster) = (self.state.registry.clone(), self.cluster.clone());
        actix_rt::spawn(async move { reg.note_agent(&cluster, info).await });
    }
}
