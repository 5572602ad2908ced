//! Outgoing peer links: one per remote node and worker of this node (ADR 0013), dialled on
//! first use and reused. A link is a [`PeerLink`] over a WebSocket this node opened.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::{Actor, AsyncContext};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tunnelgate_mux::{outbox, write_loop};
use tunnelgate_proto::limits::MAX_WS_MESSAGE;

use super::peer_link::PeerLink;
use super::{HEARTBEAT_HEADER, NODE_HEADER, PROTOCOL_HEADER};
use crate::AppState;
use crate::config::TUNNEL_OUTBOX_CAPACITY;
use crate::registry::Owner;
use crate::tunnel::{Opener, from_link};
use tokio_tungstenite::MaybeTlsStream;
use tunnelgate_mux::ws::{Role, UNMASKED_HEADER, WsReader, WsWriter, halves, tcp_halves};

/// Time to open a peer link before the owner counts as unreachable.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One worker's link to a node: the worker, the link's id, its opener.
type Link = (std::thread::ThreadId, u64, Opener);

#[derive(Default)]
pub struct PeerPool {
    /// By remote node and the worker that dialled: each worker has its own links, so a request
    /// stays on its worker and the links' readers and writers work in parallel (ADR 0013).
    links: Mutex<HashMap<String, Vec<Link>>>,
    /// One dial per peer at a time: requests that miss a link while it is being dialled wait
    /// for that dial instead of each opening (and leaking) a link of their own.
    dialing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl PeerPool {
    /// This worker's link to `node` if it is up.
    fn live_link(&self, node: &str) -> Option<Opener> {
        let here = std::thread::current().id();
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let (.., open) = links.get(node)?.iter().find(|(t, ..)| *t == here)?;
        Some(open.clone()).filter(Opener::is_live)
    }

    /// The link to `owner`, dialling it if there is none.
    pub async fn link(&self, state: &Arc<AppState>, owner: &Owner) -> Result<Opener, String> {
        if let Some(r) = self.live_link(&owner.node_id) {
            return Ok(r);
        }
        let gate = self
            .dialing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(owner.node_id.clone())
            .or_default()
            .clone();
        let _one = gate.lock().await;
        // Another request's dial may have finished while this one waited.
        if let Some(r) = self.live_link(&owner.node_id) {
            return Ok(r);
        }
        let secret = state
            .config
            .peer_secret
            .as_ref()
            .ok_or("no --peer-secret configured")?
            .expose()
            .to_string();
        let scheme = if state.peer_tls.is_some() {
            "wss"
        } else {
            "ws"
        };
        let url = format!("{scheme}://{}/v1/peer", owner.peer_addr);
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| e.to_string())?;
        let h = req.headers_mut();
        h.insert(
            "authorization",
            format!("Bearer {secret}")
                .parse()
                .map_err(|_| "bad secret")?,
        );
        h.insert(
            NODE_HEADER,
            state.config.node_id().parse().map_err(|_| "bad node id")?,
        );
        let interval = state.config.peer_heartbeat_interval;
        h.insert(HEARTBEAT_HEADER, (interval.as_millis() as u64).into());
        h.insert(PROTOCOL_HEADER, tunnelgate_proto::PROTOCOL_VERSION.into());
        // Unmasked frames where the owner agrees (ADR 0014).
        h.insert(UNMASKED_HEADER, 1.into());
        let cfg = WebSocketConfig::default()
            .read_buffer_size(1024)
            .max_message_size(Some(MAX_WS_MESSAGE + 16))
            .max_frame_size(Some(MAX_WS_MESSAGE + 16));
        let tls = state
            .peer_tls
            .as_ref()
            .map(|t| tokio_tungstenite::Connector::Rustls(t.client.clone()));
        let addr = owner.peer_addr.clone();
        let connect = async move {
            let tcp = tokio::net::TcpStream::connect(&addr)
                .await
                .map_err(tokio_tungstenite::tungstenite::Error::Io)?;
            tcp.set_nodelay(true)
                .map_err(tokio_tungstenite::tungstenite::Error::Io)?;
            tokio_tungstenite::client_async_tls_with_config(req, tcp, Some(cfg), tls).await
        };
        let (ws, resp) = tokio::time::timeout(PEER_CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| {
                format!(
                    "peer {} at {url}: no answer in {PEER_CONNECT_TIMEOUT:?}",
                    owner.node_id
                )
            })?
            .map_err(|e| format!("peer {} at {url}: {e}", owner.node_id))?;
        // tungstenite only for the handshake; the link's framing is `mux::ws` (ADR 0014).
        // Nothing is buffered past the 101: an owner sends only answers, and nothing was asked
        // yet.
        let (rd, wr) = match ws.into_inner() {
            MaybeTlsStream::Plain(tcp) => tcp_halves(tcp),
            MaybeTlsStream::Rustls(tls) => halves(tls),
            _ => return Err(format!("peer {}: unexpected transport", owner.node_id)),
        };
        let stream = WsReader::new(rd, Role::Client, &[], MAX_WS_MESSAGE + 16);
        let sink = WsWriter::new(wr, Role::Client);
        let sink = match resp.headers().get(UNMASKED_HEADER) {
            Some(v) if v.as_bytes() == b"1" => sink.unmasked(),
            _ => sink,
        };
        let (out, rx) = outbox(TUNNEL_OUTBOX_CAPACITY);
        actix_rt::spawn(write_loop(rx, sink, |m| m));
        // A node that echoes the header answers heartbeats; an older one is not sent any.
        let heartbeat = resp
            .headers()
            .contains_key(HEARTBEAT_HEADER)
            .then_some(interval);
        // A node that echoes the protocol takes and sends binary heads; an older one JSON.
        let echoed = resp.headers().get(PROTOCOL_HEADER);
        let binary = super::binary_heads(echoed.and_then(|v| v.to_str().ok()));
        let actor = PeerLink::new(owner.node_id.clone(), out, state.clone(), heartbeat, binary);
        let id = actor.id();
        let mut opener = None;
        PeerLink::create(|ctx| {
            ctx.add_stream(stream.map(from_link));
            opener = Some(actor.opener(&ctx.address()));
            actor
        });
        let r = opener.ok_or("peer link did not start")?;
        let here = std::thread::current().id();
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let mine = links.entry(owner.node_id.clone()).or_default();
        mine.retain(|(t, ..)| *t != here);
        mine.push((here, id, r.clone()));
        Ok(r)
    }

    /// Forgets the link `id` to `node_id` (it closed); a newer link stays.
    pub fn remove(&self, node_id: &str, id: u64) {
        let mut g = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mine) = g.get_mut(node_id) {
            mine.retain(|(_, i, _)| *i != id);
            if mine.is_empty() {
                g.remove(node_id);
            }
        }
    }
}
