//! [`PeerLink`]: the dialling end of one peer link. It opens a stream on the link for each
//! request this node forwards to the link's node and reads the answers: frames through the
//! opener's [`Streams`] table (the same stream rule as agent tunnels), `proxy_response` and
//! `proxy_error` as heads. Nothing else travels this way but heartbeats: the link sends one
//! each interval and declares the link dead when nothing at all arrived for three intervals (a
//! half-open TCP connection or a stopped node), failing its streams at once instead of letting
//! each wait for its response timeout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, AsyncContext, Context, Handler, StreamHandler};
use tunnelgate_mux::Outbox;
use tunnelgate_proto::Control;
use tunnelgate_proto::control::Heartbeat;

use super::silence;
use crate::AppState;
use crate::error::ProxyError;
use crate::registry::now_ms;
use crate::tunnel::{Outcome, StreamGone, Streams, WsIn, next_link_id};

/// The dialling end of a link to `node_id`.
pub struct PeerLink {
    id: u64,
    node_id: String,
    out: Outbox,
    state: Arc<AppState>,
    streams: Streams,
    close_reason: Option<String>,
    /// The heartbeat interval, when the other node answers heartbeats.
    heartbeat: Option<Duration>,
    /// When anything last arrived on the link.
    last_seen: Instant,
}

impl PeerLink {
    pub fn new(
        node_id: String,
        out: Outbox,
        state: Arc<AppState>,
        heartbeat: Option<Duration>,
        binary_heads: bool,
    ) -> Self {
        let id = next_link_id();
        let streams = Streams::new(state.clone(), node_id.clone(), id);
        streams.set_binary_heads(binary_heads);
        streams.set_accepting(true);
        PeerLink {
            id,
            streams,
            node_id,
            out,
            state,
            close_reason: None,
            heartbeat,
            last_seen: Instant::now(),
        }
    }

    /// How requests open streams on this link (in place, in its table).
    pub fn opener(&self, addr: &actix::Addr<Self>) -> crate::tunnel::Opener {
        crate::tunnel::Opener::new(
            self.streams.clone(),
            self.out.clone(),
            addr.clone().recipient(),
        )
    }

    /// This link's id on this node.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Closes the link: the other node broke the protocol, or went silent; `metric` says which.
    fn close(&mut self, ctx: &mut Context<Self>, code: u16, reason: String, metric: &'static str) {
        if self.close_reason.is_none() {
            self.state.metrics.tunnel_error(metric);
            tracing::warn!(peer_node = %self.node_id, link = self.id, %reason, metric, "closing peer link");
            self.out.close(code, reason.clone());
            self.streams.set_accepting(false);
            self.close_reason = Some(reason);
        }
        ctx.stop();
    }

    /// Each interval: the link is dead if it was silent too long, else a heartbeat goes out.
    fn beat(&mut self, ctx: &mut Context<Self>, interval: Duration) {
        if let Some(why) = silence(self.last_seen, interval) {
            return self.close(ctx, 1001, why, "peer_heartbeat_timeout");
        }
        let beat = Control::Heartbeat(Heartbeat {
            sent_at_ms: now_ms(),
            is_private: None,
            gateway_routes: None,
        });
        self.out
            .try_send(tunnelgate_mux::Outgoing::Text(beat.to_json()));
    }

    fn on_outcome(&mut self, ctx: &mut Context<Self>, outcome: Outcome) {
        match outcome {
            Outcome::Fine | Outcome::Late => {}
            Outcome::Close(why) => self.close(ctx, 1002, why, "peer_protocol"),
        }
    }
}

impl Actor for PeerLink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        tracing::info!(
            peer_node = %self.node_id,
            link = self.id,
            heartbeat_ms = self.heartbeat.map(|h| h.as_millis() as u64),
            "peer link up"
        );
        if let Some(interval) = self.heartbeat {
            ctx.run_interval(interval, move |act, ctx| act.beat(ctx, interval));
        }
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.streams
            .fail_all(|| ProxyError::TunnelLost, "peer link lost");
        if self.close_reason.is_none() {
            self.out.close(1000, "peer link closed");
        }
        self.state.peers.remove(&self.node_id, self.id);
        tracing::info!(
            peer_node = %self.node_id,
            reason = self.close_reason.as_deref().unwrap_or("closed"),
            "peer link down"
        );
    }
}

impl StreamHandler<WsIn> for PeerLink {
    fn handle(&mut self, msg: WsIn, ctx: &mut Context<Self>) {
        self.last_seen = Instant::now();
        match msg {
            WsIn::Binary(b) => {
                let outcome = self.streams.on_message(b, &self.out);
                self.on_outcome(ctx, outcome);
            }
            WsIn::Text(t) => {
                let outcome = match Control::from_json(&t) {
                    Ok(Control::ProxyResponse(r)) => self.streams.on_response(r, &self.out),
                    Ok(Control::ProxyError(e)) => self.streams.on_error(e),
                    Ok(Control::HeartbeatAck(_)) => Outcome::Fine,
                    Ok(other) => Outcome::Close(format!(
                        "peer sent {}, which a peer link does not carry",
                        other.name()
                    )),
                    Err(e) => Outcome::Close(e.to_string()),
                };
                self.on_outcome(ctx, outcome);
            }
            WsIn::Other => {}
            WsIn::Close(reason) => {
                self.close_reason = Some(format!(
                    "the other end closed the link: {}",
                    reason.unwrap_or_default()
                ));
                ctx.stop();
            }
            WsIn::Error(e) => {
                self.close(ctx, 1002, format!("WebSocket error: {e}"), "peer_protocol")
            }
        }
    }
}

impl Handler<StreamGone> for PeerLink {
    type Result = ();

    /// A notice: the table ran out of stream ids.
    fn handle(&mut self, _: StreamGone, ctx: &mut Context<Self>) {
        if self.streams.exhausted() {
            self.close(ctx, 1000, "stream ids exhausted".into(), "ids_exhausted");
        }
    }
}
