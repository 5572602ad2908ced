//! `GET /v1/peer` on the peer listener: another node forwards requests for clusters whose
//! tunnels live here. [`PeerServer`] answers each forwarded stream from a local tunnel, bridging
//! frames and credit between the peer link and the tunnel; it never forwards further. Frames go
//! through an accepting [`StreamTable`]: the same stream rule as agent tunnels. A dialler that
//! names a heartbeat interval gets each heartbeat answered, and the link closed when it is
//! silent for three intervals.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, Context, SpawnHandle, StreamHandler,
    WrapFuture,
};
use actix_web::http::StatusCode;
use actix_web::http::header::HeaderName;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use tracing::Instrument;
use tunnelgate_mux::{
    Action, Ends, Outbox, Outgoing, SendCredit, Side, StreamTable, outbox, pipe, write_loop,
};
use tunnelgate_proto::control::{
    HeartbeatAck, ProxyError as ProxyErrorMsg, ProxyErrorKind, ProxyRequest,
};
use tunnelgate_proto::limits::{MAX_FRAME_PAYLOAD, MAX_WS_MESSAGE};
use tunnelgate_proto::{Control, Frame, ResetCode, StreamId};

use super::{HEARTBEAT_HEADER, NODE_HEADER, PROTOCOL_HEADER, peer_heartbeat, same_secret, silence};
use crate::AppState;
use crate::config::TUNNEL_OUTBOX_CAPACITY;
use crate::tunnel::{
    OpenError, Started, WsIn, from_actix, from_link, pipe_body, refuse, start_stream, throttled,
    to_actix,
};
use tunnelgate_mux::ws::{UNMASKED_HEADER, accept_tcp};

/// A dialling node admitted to a peer link: what its upgrade asked for.
struct Admitted {
    node: String,
    heartbeat: Option<Duration>,
    binary_heads: bool,
}

/// Checks a peer link's upgrade: the peer secret (throttled per source), the node's name, its
/// heartbeat and protocol offers. The refusal to answer otherwise.
fn admit(
    headers: &actix_web::http::header::HeaderMap,
    ip: Option<std::net::IpAddr>,
    state: &AppState,
) -> Result<Admitted, Box<HttpResponse>> {
    let Some(secret) = state.config.peer_secret.as_ref() else {
        return Err(Box::new(refuse(
            StatusCode::NOT_FOUND,
            "this node takes no peer links",
        )));
    };
    let presented = crate::guard::bearer_token(headers).unwrap_or("");
    if let Err(wait) = state.auth_guard.check(ip) {
        state.metrics.auth_failure("throttled");
        return Err(Box::new(throttled(wait)));
    }
    if !same_secret(presented, secret.expose()) {
        state.metrics.auth_failure("bad_peer_secret");
        tracing::warn!(peer = ?ip, "peer link refused: wrong secret");
        let _ = state.auth_guard.failed(ip);
        return Err(Box::new(refuse(
            StatusCode::UNAUTHORIZED,
            "invalid peer secret",
        )));
    }
    let Some(node) = headers
        .get(NODE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
    else {
        return Err(Box::new(refuse(
            StatusCode::BAD_REQUEST,
            "missing x-tunnelgate-node header",
        )));
    };
    let heartbeat = headers
        .get(HEARTBEAT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(peer_heartbeat);
    let offered = headers.get(PROTOCOL_HEADER);
    let binary_heads = super::binary_heads(offered.and_then(|v| v.to_str().ok()));
    Ok(Admitted {
        node,
        heartbeat,
        binary_heads,
    })
}

/// Authenticates a node and upgrades its peer link (actix-ws: the peer listener over TLS).
pub async fn accept(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let admitted = match admit(req.headers(), req.peer_addr().map(|p| p.ip()), &state) {
        Ok(a) => a,
        Err(refusal) => return *refusal,
    };
    let (mut response, session, stream) = match actix_ws::handle(&req, payload) {
        Ok(parts) => parts,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                &format!("WebSocket upgrade required: {e}"),
            );
        }
    };
    let stream = stream
        .max_frame_size(MAX_WS_MESSAGE)
        .aggregate_continuations()
        .max_continuation_size(MAX_WS_MESSAGE);
    if let Some(h) = admitted.heartbeat {
        response.headers_mut().insert(
            HeaderName::from_static(HEARTBEAT_HEADER),
            (h.as_millis() as u64).into(),
        );
    }
    if admitted.binary_heads {
        response.headers_mut().insert(
            HeaderName::from_static(PROTOCOL_HEADER),
            tunnelgate_proto::PROTOCOL_VERSION.into(),
        );
    }
    let (out, rx) = outbox(TUNNEL_OUTBOX_CAPACITY);
    actix_rt::spawn(write_loop(rx, session, to_actix));
    start(
        admitted,
        out,
        Arc::clone(&state.into_inner()),
        stream.map(from_actix),
    );
    response
}

/// Authenticates a node and upgrades its peer link on the plain peer listener: the handshake
/// answered here, then the link's own framing (`mux::ws`, ADR 0014) over the socket, with
/// what was read past the head. Returns the refusal to write when the node is not admitted.
pub async fn accept_raw(
    mut io: tokio::net::TcpStream,
    read: Vec<u8>,
    headers: &actix_web::http::header::HeaderMap,
    state: &web::Data<AppState>,
) -> Result<(), Box<(tokio::net::TcpStream, HttpResponse)>> {
    use tokio::io::AsyncWriteExt;
    let ip = io.peer_addr().ok().map(|p| p.ip());
    let admitted = match admit(headers, ip, state) {
        Ok(a) => a,
        Err(refusal) => return Err(Box::new((io, *refusal))),
    };
    let Some(accept) = crate::tunnel::accept_key(headers) else {
        let why = "WebSocket upgrade required: a GET with Sec-WebSocket-Key and version 13";
        return Err(Box::new((io, refuse(StatusCode::BAD_REQUEST, why))));
    };
    // A dialler that offers unmasked frames gets them (as agents do).
    let unmasked = headers
        .get(UNMASKED_HEADER)
        .is_some_and(|v| v.as_bytes() == b"1");
    let mut head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: {accept}\r\n"
    );
    if let Some(h) = admitted.heartbeat {
        head.push_str(&format!("{HEARTBEAT_HEADER}: {}\r\n", h.as_millis()));
    }
    if admitted.binary_heads {
        let v = tunnelgate_proto::PROTOCOL_VERSION;
        head.push_str(&format!("{PROTOCOL_HEADER}: {v}\r\n"));
    }
    if unmasked {
        head.push_str(&format!("{UNMASKED_HEADER}: 1\r\n"));
    }
    head.push_str("\r\n");
    if io.write_all(head.as_bytes()).await.is_err() {
        return Ok(());
    }
    let (stream, sink) = accept_tcp(io, &read, MAX_WS_MESSAGE + 16, unmasked);
    let (out, rx) = outbox(TUNNEL_OUTBOX_CAPACITY);
    actix_rt::spawn(write_loop(rx, sink, |m| m));
    start(
        admitted,
        out,
        Arc::clone(&state.clone().into_inner()),
        stream.map(from_link),
    );
    Ok(())
}

/// The link's actor, reading `stream`.
fn start<S>(admitted: Admitted, out: Outbox, state: Arc<AppState>, stream: S)
where
    S: futures_util::Stream<Item = WsIn> + 'static,
{
    let Admitted {
        node,
        heartbeat,
        binary_heads,
    } = admitted;
    tracing::info!(peer_node = %node, "peer link accepted");
    PeerServer::create(move |ctx| {
        ctx.add_stream(stream);
        PeerServer {
            node,
            out,
            state,
            streams: StreamTable::new(Side::Acceptor),
            heartbeat,
            last_seen: Instant::now(),
            binary_heads,
        }
    });
}

/// A forwarded stream: the entry node's body (for an upgrade, the client's bytes after the
/// 101) as inbound, and the bridge task.
type Bridge = Ends<SpawnHandle>;

/// The serving end of one peer link.
pub struct PeerServer {
    node: String,
    out: Outbox,
    state: Arc<AppState>,
    streams: StreamTable<Bridge>,
    /// The dialler's heartbeat interval, when it sends heartbeats.
    heartbeat: Option<Duration>,
    /// When anything last arrived on the link.
    last_seen: Instant,
    /// The dialling node speaks protocol 3: heads both ways are binary head frames.
    binary_heads: bool,
}

impl PeerServer {
    fn fail(&self, stream_id: StreamId, kind: ProxyErrorKind, message: String) {
        let msg = Control::ProxyError(ProxyErrorMsg {
            stream_id,
            kind,
            message,
        });
        self.out.try_send(Outgoing::Text(msg.to_json()));
    }

    fn protocol_error(&mut self, ctx: &mut Context<Self>, why: String) {
        self.close(ctx, 1002, why, "peer_protocol");
    }

    /// Closes the link: the other node broke the protocol, or went silent; `metric` says which.
    fn close(&mut self, ctx: &mut Context<Self>, code: u16, why: String, metric: &'static str) {
        tracing::warn!(peer_node = %self.node, %why, metric, "closing peer link");
        self.state.metrics.tunnel_error(metric);
        self.out.close(code, why);
        ctx.stop();
    }

    fn open(&mut self, ctx: &mut Context<Self>, req: ProxyRequest) {
        let sid = req.stream_id;
        if let Err(e) = self.streams.accept(sid) {
            return self.protocol_error(ctx, e.to_string());
        }
        let Some(cluster) = req.cluster.clone() else {
            return self.protocol_error(ctx, "forwarded request without a cluster".into());
        };
        if req.hops > 1 {
            return self.fail(sid, ProxyErrorKind::NotHere, "hop limit reached".into());
        }
        let Some(tunnel) = self.state.hub.pick(&cluster, &req.conns, &[]) else {
            let msg = format!(
                "node {} holds no tunnel of cluster {cluster}",
                self.state.config.node_id()
            );
            return self.fail(sid, ProxyErrorKind::NotHere, msg);
        };
        let window = self.state.config.stream_window;
        let (upload, reader) = match req.body {
            true => {
                let (w, r) = pipe(sid, window, self.out.board());
                (Some(w), Some(r))
            }
            false => (None, None),
        };
        let credit = Arc::new(SendCredit::new(window));
        // The entry node's request id names this node's log lines for the stream too.
        let span = tracing::info_span!(
            "request",
            otel.name = "owner request",
            otel.kind = "server",
            request_id = req.request_id.as_deref().unwrap_or_default()
        );
        tunnelgate_telemetry::continue_trace(&span, req.traceparent.as_deref());
        let fut = bridge(
            self.state.clone(),
            tunnel.1,
            req,
            reader,
            credit.clone(),
            self.out.clone(),
            self.binary_heads,
        )
        .instrument(span);
        let task = ctx.spawn(fut.into_actor(self).map(move |_, act, _| {
            act.streams.remove(sid);
        }));
        self.streams.insert(
            sid,
            Ends {
                inbound: upload,
                credit,
                handle: task,
            },
        );
    }

    fn on_frame(&mut self, ctx: &mut Context<Self>, msg: bytes::Bytes) {
        match self.streams.on_message(msg) {
            Action::Applied | Action::PeerEnded(_) | Action::Late => {}
            Action::PeerReset { entry, .. } => Self::stop_bridge(ctx, entry),
            Action::Reset {
                id,
                code,
                why,
                entry,
            } => {
                tracing::warn!(peer_node = %self.node, stream = id, %why, "resetting forwarded stream");
                Self::stop_bridge(ctx, entry);
                self.out.reset(id, code);
            }
            Action::Close(why) => self.protocol_error(ctx, why),
        }
    }

    /// Ends a forwarded stream's bridge: its future ends, which resets the tunnel stream.
    fn stop_bridge(ctx: &mut Context<Self>, b: Bridge) {
        b.credit.close();
        ctx.cancel_future(b.handle);
    }
}

/// The largest body passed on whole in its head frame (as the agent does).
const WHOLE_MAX: usize = 16 * 1024;

/// Serves one forwarded stream from a local tunnel.
async fn bridge(
    state: Arc<AppState>,
    tunnel: crate::tunnel::Opener,
    req: ProxyRequest,
    upload: Option<tunnelgate_mux::PipeReader>,
    credit: Arc<SendCredit>,
    out: Outbox,
    binary_heads: bool,
) {
    let sid = req.stream_id;
    let fail = |kind, message: String| {
        let msg = Control::ProxyError(ProxyErrorMsg {
            stream_id: sid,
            kind,
            message,
        });
        out.try_send(Outgoing::Text(msg.to_json()));
    };
    let opened = match tunnel.open() {
        Ok(o) => o,
        Err(OpenError::Busy) => {
            return fail(ProxyErrorKind::Refused, "tunnel at its stream limit".into());
        }
        _ => return fail(ProxyErrorKind::NotHere, "tunnel closed".into()),
    };
    let access = state.config.access_log.then(|| {
        (
            req.method.clone(),
            req.host.clone(),
            req.path.clone(),
            std::time::Instant::now(),
        )
    });
    let mut request = req;
    request.cluster = None;
    request.hops = 0;
    // The agent's span is a child of this node's.
    if let Some(tp) = tunnelgate_telemetry::traceparent(&tracing::Span::current()) {
        request.traceparent = Some(tp);
    }
    let Started {
        head,
        mut body,
        shared,
        head_timeout,
        ..
    } = start_stream(
        opened,
        request,
        upload.map(pipe_body),
        state.config.response_timeout,
        state.config.body_idle_timeout,
        true,
    );
    let mut head = match crate::tunnel::wait_head(head, head_timeout, &shared).await {
        Ok(h) => h,
        Err(e) => {
            let (kind, message) = e.to_peer();
            return fail(kind, message);
        }
    };
    head.set_stream_id(sid);
    if let Some((method, host, path, started)) = access {
        tracing::info!(
            %host, %method, %path, status = head.status(),
            head_ms = started.elapsed().as_secs_f64() * 1000.0,
            node = state.config.node_id(), "forwarded request"
        );
    }
    let has_body = head.body();
    if binary_heads && has_body && credit.available() >= tunnelgate_mux::PipeReader::buffered(&body)
    {
        // The body already here whole (the agent sent it with its head): one message on.
        if let Some(whole) = body.take_whole(WHOLE_MAX) {
            if credit.acquire(whole.len()).await.is_err() {
                return;
            }
            let frame = head.whole_frame(&whole);
            let _ = out.send(Outgoing::Binary(frame)).await;
            return;
        }
    }
    if out.send(head.outgoing(binary_heads)).await.is_err() {
        return;
    }
    if !has_body {
        return;
    }
    while let Some(chunk) = body.next().await {
        let Ok(mut data) = chunk else {
            out.reset(sid, ResetCode::UPSTREAM);
            return;
        };
        while !data.is_empty() {
            let piece = data.split_to(data.len().min(MAX_FRAME_PAYLOAD));
            if credit.acquire(piece.len()).await.is_err() {
                return;
            }
            if out
                .send_frame(Frame::Data {
                    stream: sid,
                    data: piece,
                })
                .await
                .is_err()
            {
                return;
            }
        }
    }
    let _ = out.send_frame(Frame::End { stream: sid }).await;
}

impl Actor for PeerServer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(interval) = self.heartbeat {
            ctx.run_interval(interval, move |act, ctx| {
                if let Some(why) = silence(act.last_seen, interval) {
                    act.close(ctx, 1001, why, "peer_heartbeat_timeout");
                }
            });
        }
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        for (_, b) in self.streams.drain() {
            b.credit.close();
        }
        self.out.close(1000, "peer link closed");
        tracing::info!(peer_node = %self.node, "peer link closed");
    }
}

impl StreamHandler<WsIn> for PeerServer {
    fn handle(&mut self, msg: WsIn, ctx: &mut Context<Self>) {
        self.last_seen = Instant::now();
        match msg {
            // Protocol 3: a request head is a binary head frame.
            WsIn::Binary(b) if self.binary_heads && tunnelgate_proto::head::is_head(&b) => {
                match tunnelgate_proto::head::decode_request(&b) {
                    Ok(r) => self.open(ctx, r),
                    Err(e) => self.protocol_error(ctx, e.to_string()),
                }
            }
            WsIn::Binary(b) => self.on_frame(ctx, b),
            WsIn::Text(t) => match Control::from_json(&t) {
                Ok(Control::ProxyRequest(r)) => self.open(ctx, r),
                Ok(Control::Heartbeat(h)) if self.heartbeat.is_some() => {
                    let ack = Control::HeartbeatAck(HeartbeatAck {
                        sent_at_ms: h.sent_at_ms,
                    });
                    self.out.try_send(Outgoing::Text(ack.to_json()));
                }
                Ok(other) => self.protocol_error(
                    ctx,
                    format!(
                        "peer sent {}, which a peer link does not carry",
                        other.name()
                    ),
                ),
                Err(e) => self.protocol_error(ctx, e.to_string()),
            },
            WsIn::Other => {}
            WsIn::Close(_) => ctx.stop(),
            WsIn::Error(e) => self.protocol_error(ctx, format!("WebSocket error: {e}")),
        }
    }
}
