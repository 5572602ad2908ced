//! One tunnel connection: connect, register, publish routes, then read until it ends.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tunnelgate_mux::ws::{Incoming, WsReader};
use tunnelgate_mux::{
    Action, Ends, Outbox, Outgoing, SendCredit, Side, StreamTable, outbox, pipe, write_loop,
};
use tunnelgate_proto::Control;
use tunnelgate_proto::control::{
    Drain, Heartbeat, IngressRoutes, ProxyResponse, RegisterSuccess, RouteAction,
};

use super::dial::{Ws, connect, register};
use super::stream::StreamTask;
pub use super::{End, SessionError};
use crate::config::OUTBOX_CAPACITY;
use crate::pool::ConnPool;
use crate::{Shared, Status};

/// A live stream: the gateway's body (or upgraded bytes) as inbound, and its task.
type Entry = Ends<AbortHandle>;

/// The session's live streams (the accepting end of the stream rule, shared with the stream
/// tasks, which take themselves out); `ended` is told each time a stream task finishes (a
/// draining session waits for the table to empty).
struct Streams {
    table: Mutex<StreamTable<Entry>>,
    ended: tokio::sync::Notify,
}

impl Default for Streams {
    fn default() -> Self {
        Streams {
            table: Mutex::new(StreamTable::new(Side::Acceptor)),
            ended: tokio::sync::Notify::new(),
        }
    }
}

type Table = Arc<Streams>;

fn lock(t: &Table) -> MutexGuard<'_, StreamTable<Entry>> {
    // No code panics while holding the lock; recover the data rather than spread a panic.
    t.table.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How a session tells its slot about a move (make before break).
#[derive(Default)]
pub struct Hooks {
    /// Told when the gateway asks this tunnel to move elsewhere (its node is draining); the
    /// session goes on serving until its slot stops it. Without it, the session ends at once.
    pub handoff: Option<tokio::sync::mpsc::Sender<()>>,
    /// Told once the gateway acknowledged this tunnel's routes: it serves.
    pub ready: Option<tokio::sync::oneshot::Sender<()>>,
    /// The slot found only one node: a tunnel there on a worker no other slot holds is kept
    /// (ADR 0013), not hung up as a duplicate.
    pub share_node: bool,
}

/// Runs one session against `gateway` until it ends; its streams' plain upstream connections
/// come from the slot's `pool`.
pub async fn run(
    shared: &Shared,
    slot: usize,
    pool: &Arc<ConnPool>,
    gateway: &str,
    mut shutdown: watch::Receiver<bool>,
    mut hooks: Hooks,
) -> Result<End, SessionError> {
    let (mut ws, place) = connect(shared, gateway).await?;
    // One tunnel per node: the point of several is to survive a node's loss. Where only one
    // node is reachable, one per worker of it (ADR 0013).
    let _held = match place {
        Some(p) => match shared.hold(&p, hooks.share_node) {
            Some(h) => Some(h),
            None => {
                ws.close().await;
                return Err(SessionError::Duplicate(p.node));
            }
        },
        None => None,
    };
    let ok = register(&mut ws, shared, slot).await?;
    tracing::info!(gateway, node_id = %ok.node_id, tunnel_id = %ok.tunnel_id, "tunnel registered");
    let Ws {
        rd: mut stream,
        wr: sink,
    } = ws;
    let (out, rx) = outbox(OUTBOX_CAPACITY);
    let mut writer = tokio::spawn(write_loop(rx, sink, |m| m));
    let table: Table = Arc::default();
    // Aborts the writer and every stream task however this future ends, also when it is
    // dropped midway (the caller was cancelled): nothing outlives the session.
    let _guard = Guard {
        writer: writer.abort_handle(),
        table: table.clone(),
    };
    let result = serve(
        shared,
        pool,
        gateway,
        &ok,
        &out,
        &table,
        &mut stream,
        &mut shutdown,
        &mut hooks,
    )
    .await;
    if let Ok(End::Shutdown) = result {
        abort_streams(&table);
        let close = out.close_after_queued(1000, "agent shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), close).await;
        drop(out);
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut writer).await;
        // The closing handshake: read until the gateway's close. Dropping a socket with unread
        // input makes the kernel reset the connection, and the gateway would lose the last
        // frames it had not read yet (a finished request's response among them).
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(m)) = stream.next().await {
                if matches!(m, Incoming::Close(_)) {
                    break;
                }
            }
        })
        .await;
    } else if let Err(SessionError::Lost(_)) = &result {
        // A close asked for on a protocol error goes out before the socket drops, so the
        // gateway logs why (the writer ends after sending it; a dead socket ends it sooner).
        abort_streams(&table);
        drop(out);
        let _ = tokio::time::timeout(Duration::from_millis(500), &mut writer).await;
    }
    result
}

struct Guard {
    writer: AbortHandle,
    table: Table,
}

impl Drop for Guard {
    fn drop(&mut self) {
        abort_streams(&self.table);
        self.writer.abort();
    }
}

fn abort_streams(table: &Table) {
    for (_, e) in lock(table).drain() {
        e.handle.abort();
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    shared: &Shared,
    pool: &Arc<ConnPool>,
    gateway: &str,
    ok: &RegisterSuccess,
    out: &Outbox,
    table: &Table,
    stream: &mut WsReader<impl tokio::io::AsyncRead + Unpin>,
    shutdown: &mut watch::Receiver<bool>,
    hooks: &mut Hooks,
) -> Result<End, SessionError> {
    let mut routes_rx = shared.routes.subscribe();
    let mut sent = routes_rx.borrow_and_update().clone();
    let sync = Control::IngressRoutes(IngressRoutes {
        action: RouteAction::Sync,
        routes: sent.values().cloned().collect(),
    });
    out.send_control(&sync)
        .await
        .map_err(|_| SessionError::Lost("writer closed".into()))?;
    let beat = Duration::from_millis(ok.heartbeat_interval_ms.max(50));
    let mut ticker = tokio::time::interval(beat);
    let mut last_seen = Instant::now();
    // Set once the agent is stopping: the gateway was told to send no new requests, and the
    // session ends when the streams in flight have finished, or when `drain_deadline` fires
    // (armed then; one timer for the session, not one per message).
    let mut draining = false;
    // A heartbeat sent right after the drain: its ack comes back after every request the
    // gateway sent before it read the drain (one ordered connection), so the session waits
    // for it before it may end — a request already on the wire is served, not cut.
    let mut fence: Option<u64> = None;
    let drain_deadline = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(drain_deadline);
    loop {
        if draining && fence.is_none() && lock(table).is_empty() {
            tracing::info!(gateway, "drained: every request in flight finished");
            return Ok(End::Shutdown);
        }
        tokio::select! {
            _ = shutdown.changed(), if !draining => {
                let streams = lock(table).len();
                tracing::info!(gateway, streams, "draining: gateway told to send no new requests");
                let drain = Control::Drain(Drain { reason: "agent shutting down".into() });
                if !out.try_send(Outgoing::Text(drain.to_json())) {
                    return Ok(End::Shutdown);
                }
                let mark = now_ms();
                let hb = Control::Heartbeat(Heartbeat { sent_at_ms: mark, is_private: shared.is_private(), gateway_routes: u32::try_from(sent.len()).ok() });
                fence = out.try_send(Outgoing::Text(hb.to_json())).then_some(mark);
                draining = true;
                drain_deadline
                    .as_mut()
                    .reset(tokio::time::Instant::now() + shared.config.drain_timeout);
            }
            _ = table.ended.notified(), if draining => {}
            _ = &mut drain_deadline, if draining => {
                tracing::warn!(gateway, streams = lock(table).len(), "drain timeout: cutting the requests still in flight");
                return Ok(End::Shutdown);
            }
            Ok(()) = routes_rx.changed() => {
                let now = routes_rx.borrow_and_update().clone();
                for msg in route_changes(&sent, &now) {
                    out.send_control(&msg).await.map_err(|_| SessionError::Lost("writer closed".into()))?;
                }
                sent = now;
            }
            _ = ticker.tick() => {
                if last_seen.elapsed() > beat * 3 {
                    return Err(SessionError::Lost("gateway silent for three heartbeat intervals".into()));
                }
                let hb = Control::Heartbeat(Heartbeat { sent_at_ms: now_ms(), is_private: shared.is_private(), gateway_routes: u32::try_from(sent.len()).ok() });
                out.try_send(Outgoing::Text(hb.to_json()));
            }
            msg = stream.next() => {
                last_seen = Instant::now();
                match msg {
                    None => return Err(SessionError::Lost("gateway closed the connection".into())),
                    Some(Err(e)) => return Err(SessionError::Lost(e.to_string())),
                    // Protocol 3: a stream's request head is a binary head frame.
                    Some(Ok(Incoming::Binary(b))) if ok.protocol >= 3 && tunnelgate_proto::head::is_head(&b) => {
                        match tunnelgate_proto::head::decode_request(&b) {
                            Ok(req) => on_control(shared, pool, gateway, ok, table, out, Control::ProxyRequest(req)),
                            Err(e) => {
                                let e = format!("invalid request head from gateway: {e}");
                                out.close(1002, e.clone());
                                return Err(SessionError::Lost(e));
                            }
                        }
                    }
                    Some(Ok(Incoming::Binary(b))) => {
                        if let Err(e) = on_frame(table, out, b) {
                            out.close(1002, e.clone());
                            return Err(SessionError::Lost(e));
                        }
                    }
                    Some(Ok(Incoming::Text(t))) => match Control::from_json(&t) {
                        Ok(Control::Drain(d)) => match hooks.handoff.take() {
                            // Make before break: the slot opens the next tunnel, then stops this one.
                            Some(h) if !draining => {
                                tracing::info!(gateway, reason = %d.reason, "gateway asked to move: opening a tunnel elsewhere before leaving this one");
                                let _ = h.try_send(());
                            }
                            Some(_) => {}
                            None => {
                                tracing::info!(gateway, reason = %d.reason, "gateway asked to reconnect elsewhere");
                                return Ok(End::Drain);
                            }
                        },
                        Ok(Control::HeartbeatAck(a)) if fence == Some(a.sent_at_ms) => fence = None,
                        Ok(m @ Control::RoutesAck(_)) => {
                            if let Some(r) = hooks.ready.take() {
                                let _ = r.send(());
                            }
                            on_control(shared, pool, gateway, ok, table, out, m)
                        }
                        Ok(m) => on_control(shared, pool, gateway, ok, table, out, m),
                        Err(e) => {
                            let e = format!("invalid control message from gateway: {e}");
                            out.close(1002, e.clone());
                            return Err(SessionError::Lost(e));
                        }
                    },
                    Some(Ok(Incoming::Close(c))) => {
                        let why = c.map(|(_, reason)| reason).unwrap_or_default();
                        return Err(SessionError::Lost(format!("gateway closed the tunnel: {why}")));
                    }
                    Some(Ok(_)) => {}
                }
            }
        }
    }
}

/// The `ingress_routes` messages that turn the published set `old` into `new`.
pub fn route_changes(old: &crate::RouteSet, new: &crate::RouteSet) -> Vec<Control> {
    let added: Vec<_> = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(_, v)| v.clone())
        .collect();
    let removed: Vec<_> = old
        .iter()
        .filter(|(k, _)| !new.contains_key(*k))
        .map(|(_, v)| v.clone())
        .collect();
    let mut out = Vec::new();
    if !added.is_empty() {
        out.push(Control::IngressRoutes(IngressRoutes {
            action: RouteAction::Update,
            routes: added,
        }));
    }
    if !removed.is_empty() {
        out.push(Control::IngressRoutes(IngressRoutes {
            action: RouteAction::Delete,
            routes: removed,
        }));
    }
    out
}

/// A frame from the gateway, under the stream rule; `Err` closes the tunnel.
fn on_frame(table: &Table, out: &Outbox, msg: bytes::Bytes) -> Result<(), String> {
    let action = lock(table).on_message(msg);
    match action {
        Action::Applied | Action::PeerEnded(_) | Action::Late => Ok(()),
        Action::PeerReset { entry, .. } => {
            entry.handle.abort();
            Ok(())
        }
        Action::Reset {
            id,
            code,
            why,
            entry,
        } => {
            tracing::warn!(stream = id, error = %why, "resetting stream");
            entry.handle.abort();
            out.reset(id, code);
            Ok(())
        }
        Action::Close(why) => Err(format!("from the gateway: {why}")),
    }
}

fn on_control(
    shared: &Shared,
    pool: &Arc<ConnPool>,
    gateway: &str,
    ok: &RegisterSuccess,
    table: &Table,
    out: &Outbox,
    msg: Control,
) {
    match msg {
        Control::RoutesAck(ack) => {
            for r in &ack.rejected {
                tracing::warn!(host = %r.host, path = %r.path, reason = %r.reason, "gateway rejected route");
            }
            tracing::info!(
                accepted = ack.accepted.len(),
                rejected = ack.rejected.len(),
                "routes published"
            );
            if let Some(tx) = &shared.acks {
                // Dropped when the source is behind: the next ack carries the same news.
                let _ = tx.try_send(crate::AckReport {
                    public_host: ok.public_host.clone(),
                    accepted: ack.accepted.clone(),
                    rejected: ack.rejected.clone(),
                });
            }
            shared.status.send_replace(Status::Connected {
                gateway: gateway.to_string(),
                node_id: ok.node_id.clone(),
                accepted: ack.accepted.len(),
                rejected: ack.rejected,
                nodes: shared.held_nodes(),
            });
        }
        Control::HeartbeatAck(_) => {}
        Control::ProxyRequest(req) => {
            let id = req.stream_id;
            let mut t = lock(table);
            if let Err(e) = t.accept(id) {
                tracing::warn!(stream = id, error = %e, "gateway opened a stream it may not; closing the tunnel");
                out.close(1002, format!("proxy_request: {e}"));
                return;
            }
            // The gateway's data-path probe: answered here, at once, without an upstream.
            if req.probe {
                let answer = ProxyResponse {
                    stream_id: id,
                    status: 204,
                    headers: Vec::new(),
                    body: false,
                };
                let answer = Outgoing::response_head(answer, ok.protocol >= 3);
                let out = out.clone();
                tokio::spawn(async move { out.send(answer).await });
                return;
            }
            let credit = Arc::new(SendCredit::new(ok.stream_window));
            // The task removes its own entry when it ends; the entry lets frames reach it.
            let spawn = |t: &mut StreamTable<Entry>, fut, upload| {
                let done = table.clone();
                let handle = tokio::spawn(async move {
                    fut.await;
                    lock(&done).remove(id);
                    done.ended.notify_one();
                });
                t.insert(
                    id,
                    Entry {
                        inbound: upload,
                        credit: credit.clone(),
                        handle: handle.abort_handle(),
                    },
                );
            };
            // An upgrade's stream carries the client's bytes after the 101 as its upload.
            let (upload, reader) = match req.body || req.upgrade.is_some() {
                true => {
                    let (w, r) = pipe(id, ok.stream_window, out.board());
                    (Some(w), Some(r))
                }
                false => (None, None),
            };
            let task = StreamTask {
                request: req,
                upload: reader,
                credit: credit.clone(),
                outbox: out.clone(),
                rules: shared.rules(),
                client: shared.client.clone(),
                pool: pool.clone(),
                kube_api: shared.kube_api.clone(),
                access_log: shared.config.access_log,
                metrics: shared.metrics.clone(),
                binary_heads: ok.protocol >= 3,
            };
            spawn(&mut t, Box::pin(task.run()), upload);
        }
        other => tracing::debug!(message = other.name(), "ignoring control message"),
    }
}
