//! The data-path probe: a tunnel whose agent answers heartbeats but serves no stream (a wedged
//! agent) is found and closed, so the agent reconnects and the cluster's other tunnels take the
//! requests meanwhile.
//!
//! When a tunnel has streams open and nothing of any stream (frame, head or error) has arrived
//! for a heartbeat interval, the gateway opens one more stream carrying a probe
//! (`proxy_request.probe`), which the agent answers at once from its stream handling, without
//! an upstream. No answer within another interval: the tunnel is wedged and is closed with 1011.
//! A tunnel that is merely waiting for a slow upstream answers the probe and carries on.

use std::time::Instant;

use actix::{ActorFutureExt, AsyncContext, Context, WrapFuture};
use tunnelgate_proto::control::ProxyRequest;

use super::stream::{Started, start_stream};
use super::tunnel_actor::TunnelActor;
use crate::error::ProxyError;

impl TunnelActor {
    /// Notes that the agent sent something for a stream (called while handling its message, so
    /// `last_seen` is now): its data path is alive.
    pub(super) fn stream_seen(&mut self) {
        self.stream_seen = self.last_seen;
    }

    /// On the tunnel's timer: probes the data path when streams wait and nothing of them came.
    pub(super) fn maybe_probe(&mut self, ctx: &mut Context<Self>) {
        let interval = self.state.config.heartbeat_interval;
        if !self.registered
            || self.probing
            || self.close_reason.is_some()
            || self.streams.is_empty()
            || self
                .stream_seen
                .max(self.streams.first_after_quiet())
                .elapsed()
                < interval
        {
            return;
        }
        let link = super::Opener::new(
            self.streams.clone(),
            self.out.clone(),
            ctx.address().recipient(),
        );
        let Ok(opened) = link.open_always() else {
            return;
        };
        let probe = ProxyRequest {
            method: "OPTIONS".into(),
            path: "*".into(),
            probe: true,
            ..ProxyRequest::default()
        };
        let Started { head, body, .. } =
            start_stream(opened, probe, None, interval, interval, false);
        self.probing = true;
        let sent = Instant::now();
        let answer = async move {
            let r = head.await;
            drop(body);
            r
        };
        ctx.spawn(answer.into_actor(self).map(move |r, act, ctx| {
            act.probing = false;
            match r {
                Ok(Err(ProxyError::Timeout(_))) => {
                    act.state.metrics.probe("unanswered");
                    let why = format!(
                        "wedged: heartbeats arrive but no stream was served for {} ms, and a \
                         data-path probe went unanswered for {} ms",
                        act.stream_seen.elapsed().as_millis(),
                        sent.elapsed().as_millis()
                    );
                    act.close(ctx, 1011, why, "wedged");
                }
                Ok(_) => {
                    act.state.metrics.probe("answered");
                    tracing::debug!(
                        cluster = %act.cluster, tunnel = act.id,
                        answered_ms = sent.elapsed().as_millis() as u64, "data-path probe answered"
                    );
                }
                // The tunnel is going away anyway.
                Err(_) => {}
            }
        }));
    }
}
