//! `TunnelActor`: one per agent connection. Decodes every message the agent sends: frames go
//! through the tunnel's [`Streams`] table (the stream rule), control messages drive
//! registration, routes, heartbeats and drain; the ownership lease is a [`Lease`]. Writes go
//! through the tunnel's [`Outbox`] to the writer task that owns the socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use actix::{Actor, ActorContext, AsyncContext, Context, Handler, StreamHandler};
use tunnelgate_mux::{Outbox, Outgoing};
use tunnelgate_proto::Control;

use super::hub::{MoveAway, Revoked};
use super::limits::{ControlLimits, Kind};
use super::open::{Outcome, StreamGone, Streams};
use super::ws::WsIn;
use crate::AppState;
use crate::cluster::lease::Lease;
use crate::config::REGISTER_TIMEOUT;
use crate::error::ProxyError;
use crate::registry::ConnRoutes;

static NEXT_TUNNEL_ID: AtomicU64 = AtomicU64::new(1);

/// A new id for a tunnel or peer link on this node.
pub fn next_link_id() -> u64 {
    NEXT_TUNNEL_ID.fetch_add(1, Ordering::Relaxed)
}

/// One agent connection.
pub struct TunnelActor {
    pub(super) id: u64,
    pub(super) cluster: String,
    pub(super) peer: Option<SocketAddr>,
    pub(super) out: Outbox,
    pub(super) state: Arc<AppState>,
    pub(super) streams: Streams,
    pub(super) registered: bool,
    pub(super) opened_at: Instant,
    pub(super) last_seen: Instant,
    pub(super) close_reason: Option<String>,
    /// A close is already in the writer's queue behind a final message.
    pub(super) close_queued: bool,
    /// The routes this connection publishes (the registry holds one set per connection),
    /// kept to publish again if the registry loses them (Redis restarted empty).
    pub(super) routes: ConnRoutes,
    /// The last route change could not be stored: publish again once the registry answers.
    pub(super) routes_dirty: bool,
    /// Per-kind rate limits on what the cluster's agents send, shared by its tunnels here.
    pub(super) limits: Arc<ControlLimits>,
    /// The agent's connection id (the registry's key for this tunnel's routes and lease).
    pub(super) conn_id: String,
    pub(super) lease: Lease,
    /// The agent is stopping: no new streams; the ones in flight finish.
    pub(super) draining: bool,
    /// The id of the token the agent authenticated with.
    pub(super) token_id: String,
    /// What the agent reported (version, host, last heartbeat), for the admin API.
    pub(super) agent: Option<crate::registry::agents::AgentInfo>,
    /// When the agent last sent anything for a stream (the data-path probe's clock).
    pub(super) stream_seen: Instant,
    /// A data-path probe is waiting for its answer.
    pub(super) probing: bool,
    /// Lost its lease: finishing the streams in flight, then closing.
    pub(super) fenced: bool,
}

impl TunnelActor {
    pub fn new(
        cluster: String,
        peer: Option<SocketAddr>,
        out: Outbox,
        state: Arc<AppState>,
    ) -> Self {
        let now = Instant::now();
        let limits = state.limits.of(&cluster);
        let id = next_link_id();
        let lease = Lease::new(
            state.registry.clone(),
            cluster.clone(),
            state.config.heartbeat_interval * 3,
        );
        TunnelActor {
            id,
            streams: Streams::new(state.clone(), cluster.clone(), id),
            cluster,
            peer,
            out,
            state,
            opened_at: now,
            last_seen: now,
            close_reason: None,
            close_queued: false,
            routes: ConnRoutes::default(),
            routes_dirty: false,
            limits,
            conn_id: String::new(),
            lease,
            registered: false,
            draining: false,
            token_id: String::new(),
            agent: None,
            stream_seen: now,
            probing: false,
            fenced: false,
        }
    }

    /// Notes which of its cluster's tokens the agent authenticated with.
    pub fn with_token(mut self, token_id: String) -> Self {
        self.token_id = token_id;
        self
    }

    /// This tunnel's id on this node.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Closes the whole tunnel: the agent broke the protocol or went silent.
    pub(super) fn close(
        &mut self,
        ctx: &mut Context<Self>,
        code: u16,
        reason: String,
        metric: &'static str,
    ) {
        if self.close_reason.is_none() {
            self.state.metrics.tunnel_error(metric);
            tracing::warn!(cluster = %self.cluster, tunnel = self.id, peer = ?self.peer, %reason, "closing tunnel");
            self.out.close(code, reason.clone());
            self.streams.set_accepting(false);
            self.close_reason = Some(reason);
        }
        ctx.stop();
    }

    pub(super) fn protocol_error(&mut self, ctx: &mut Context<Self>, reason: String) {
        // 1002: protocol error.
        self.close(ctx, 1002, reason, "protocol");
    }

    /// Counts one message of `kind` (of `cost` units) against this tunnel's limits; closes the
    /// tunnel with a clear reason when the agent goes over. False when it did.
    pub(super) fn admit(&mut self, ctx: &mut Context<Self>, kind: Kind, cost: u32) -> bool {
        if self.close_reason.is_some() {
            return false;
        }
        match self.limits.check(kind, cost) {
            Ok(()) => true,
            Err(why) => {
                self.close(ctx, 1008, why, "rate_limited");
                false
            }
        }
    }

    /// Acts on what the stream table made of a message.
    pub(super) fn on_outcome(&mut self, ctx: &mut Context<Self>, outcome: Outcome) {
        match outcome {
            Outcome::Fine => {}
            // Late input for an ended stream is normal, a flood of it is not.
            Outcome::Late => {
                self.admit(ctx, Kind::Late, 1);
            }
            Outcome::Close(why) => self.protocol_error(ctx, why),
        }
    }

    fn on_control(&mut self, ctx: &mut Context<Self>, text: &str) {
        let msg = match Control::from_json(text) {
            Ok(m) => m,
            Err(e) => return self.protocol_error(ctx, e.to_string()),
        };
        let kind = match &msg {
            Control::Heartbeat(_) => Some(Kind::Heartbeat),
            Control::IngressRoutes(_) => Some(Kind::Routes),
            Control::Drain(_) | Control::ProxyWebsocketClose(_) => Some(Kind::Other),
            _ => None,
        };
        if let Some(kind) = kind {
            let kib = u32::try_from(text.len() / 1024 + 1).unwrap_or(u32::MAX);
            let cost = if kind == Kind::Routes { kib } else { 1 };
            if !self.admit(ctx, kind, cost) {
                return;
            }
        }
        if !self.registered && !matches!(msg, Control::Register(_)) {
            return self.protocol_error(ctx, "the first message must be register".into());
        }
        match msg {
            Control::Register(r) => self.on_register(ctx, r),
            Control::Heartbeat(h) => {
                self.ack_heartbeat(ctx, h.sent_at_ms, 0);
                // O(1): liveness is the tunnel's lease, refreshed on its own timer; routes
                // live as long as the tunnel that published them.
                self.state
                    .metrics
                    .agent_report(&self.cluster, h.is_private, h.gateway_routes);
                if let Some(a) = &mut self.agent {
                    a.last_heartbeat_ms = crate::registry::now_ms();
                    a.is_private = h.is_private.or(a.is_private);
                    // Without Redis the report is a map write; with it, it goes out with the
                    // lease refresh.
                    if !self.state.registry.is_shared() {
                        let (reg, cluster, info) =
                            (self.state.registry.clone(), self.cluster.clone(), a.clone());
                        actix_rt::spawn(async move { reg.note_agent(&cluster, info).await });
                    }
                }
            }
            Control::IngressRoutes(m) => self.on_routes(ctx, m),
            Control::ProxyResponse(r) => {
                self.stream_seen();
                let outcome = self.streams.on_response(r, &self.out);
                self.on_outcome(ctx, outcome);
            }
            Control::ProxyError(e) => {
                self.stream_seen();
                let outcome = self.streams.on_error(e);
                self.on_outcome(ctx, outcome);
            }
            Control::Drain(d) => self.on_drain(&d.reason),
            Control::ProxyWebsocketClose(_) => {}
            other => {
                let name = other.name();
                self.protocol_error(
                    ctx,
                    format!("agent sent {name}, which only a gateway sends"),
                );
            }
        }
    }

    /// The agent is stopping: take the tunnel out of the hub and give up its ownership lease,
    /// so no new request comes here; streams in flight carry on until the agent closes.
    /// Acks a heartbeat. While draining, first waits (5 ms steps, 5 s at most) until every
    /// stream opened before the drain has its `proxy_request` in the outbox: the agent takes
    /// the ack of the heartbeat it sent after `drain` as "nothing more is coming", so no request
    /// may follow it.
    pub(super) fn ack_heartbeat(&mut self, ctx: &mut Context<Self>, sent_at_ms: u64, waited: u32) {
        let pending = self.draining && self.streams.heads_pending();
        if pending && waited < 1000 {
            ctx.run_later(std::time::Duration::from_millis(5), move |act, ctx| {
                act.ack_heartbeat(ctx, sent_at_ms, waited + 1)
            });
            return;
        }
        let ack = Control::HeartbeatAck(tunnelgate_proto::control::HeartbeatAck { sent_at_ms });
        // An agent that does not read its acks loses them; nothing else queues.
        self.out.try_send(Outgoing::Text(ack.to_json()));
    }

    pub(super) fn on_drain(&mut self, reason: &str) {
        if self.draining {
            return;
        }
        self.draining = true;
        // Under the table's lock: a stream opened after this is refused (and goes elsewhere),
        // so `heads_pending` covers every stream the agent may still see.
        self.streams.set_accepting(false);
        tracing::info!(
            cluster = %self.cluster, tunnel = self.id, streams = self.streams.len(), reason,
            "agent draining: no new streams on this tunnel"
        );
        self.leave_hub();
        self.lease.release();
    }

    /// Takes this tunnel out of the hub; returns how many the cluster still has on this node.
    pub(super) fn leave_hub(&self) -> usize {
        let left = self.state.hub.remove(&self.cluster, self.id);
        if left == 0 {
            let routes = self.state.registry.route_count(&self.cluster);
            self.state.metrics.set_cluster(&self.cluster, false, routes);
        }
        left
    }
}

impl Actor for TunnelActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let interval = self.state.config.heartbeat_interval;
        ctx.run_interval(interval / 2, move |act, ctx| {
            if !act.registered && act.opened_at.elapsed() > REGISTER_TIMEOUT {
                act.close(
                    ctx,
                    1008,
                    "no register message in time".into(),
                    "register_timeout",
                );
            } else if act.last_seen.elapsed() <= interval * 3 {
                act.keep_lease(ctx);
                act.maybe_probe(ctx);
            } else {
                act.close(
                    ctx,
                    1001,
                    "heartbeat timeout: agent silent for three intervals".into(),
                    "heartbeat_timeout",
                );
            }
        });
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.streams
            .fail_all(|| ProxyError::TunnelLost, "agent disconnected");
        // The writer ends when it sees the close, or when the last outbox handle goes.
        if !self.close_queued {
            let reason = self
                .close_reason
                .clone()
                .unwrap_or_else(|| "tunnel closed".into());
            self.out.close(1000, reason);
        }
        let epoch = self.lease.last_epoch();
        self.lease.release();
        if !self.registered {
            return;
        }
        // The connection's routes leave with it (unless a newer tunnel of the same connection
        // id took them over).
        let (reg, cluster, conn) = (
            self.state.registry.clone(),
            self.cluster.clone(),
            self.conn_id.clone(),
        );
        actix_rt::spawn(async move {
            reg.withdraw(&cluster, &conn, epoch).await;
            reg.forget_agent(&cluster, &conn).await;
        });
        self.state.metrics.tunnels.dec();
        let left = self.leave_hub();
        tracing::info!(
            cluster = %self.cluster, tunnel = self.id, tunnels_left = left,
            reason = self.close_reason.as_deref().unwrap_or("agent closed the connection"),
            "tunnel closed"
        );
    }
}

impl StreamHandler<WsIn> for TunnelActor {
    fn handle(&mut self, msg: WsIn, ctx: &mut Context<Self>) {
        self.last_seen = Instant::now();
        match msg {
            WsIn::Binary(b) => {
                if !self.registered {
                    return self.protocol_error(ctx, "the first message must be register".into());
                }
                self.stream_seen();
                let outcome = self.streams.on_message(b, &self.out);
                self.on_outcome(ctx, outcome)
            }
            WsIn::Text(t) => self.on_control(ctx, &t),
            WsIn::Other => {}
            WsIn::Close(reason) => {
                self.streams.set_accepting(false);
                self.close_reason = Some(format!(
                    "the other end closed the tunnel: {}",
                    reason.unwrap_or_default()
                ));
                ctx.stop();
            }
            WsIn::Error(e) => {
                self.close(ctx, 1002, format!("WebSocket error: {e}"), "websocket");
            }
        }
    }
}

impl Handler<MoveAway> for TunnelActor {
    type Result = ();

    fn handle(&mut self, msg: MoveAway, _ctx: &mut Context<Self>) {
        let msg = Control::Drain(tunnelgate_proto::control::Drain {
            reason: msg.0.into(),
        });
        self.out.try_send(Outgoing::Text(msg.to_json()));
    }
}

impl Handler<Revoked> for TunnelActor {
    type Result = ();

    fn handle(&mut self, msg: Revoked, ctx: &mut Context<Self>) {
        self.close(ctx, 1008, msg.reason, "revoked");
    }
}

impl Handler<StreamGone> for TunnelActor {
    type Result = ();

    /// A notice: the table ended its last stream while fenced, or ran out of ids.
    fn handle(&mut self, _: StreamGone, ctx: &mut Context<Self>) {
        if self.streams.exhausted() {
            let why = "stream ids exhausted; reconnect";
            return self.close(ctx, 1000, why.into(), "ids_exhausted");
        }
        if self.fenced && self.streams.is_empty() {
            self.lost_lease(ctx);
        }
    }
}
