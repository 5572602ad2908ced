//! Dialling a gateway: the tunnel URL, the WebSocket upgrade with the agent's token (TLS
//! verified by the agent's roots or `--gateway-ca`), and `register` answered by
//! `register_success` — each under `REGISTER_TIMEOUT`, with the gateway's reason when it refuses.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tunnelgate_mux::Outgoing;
use tunnelgate_mux::ws::{
    BoxRead, BoxWrite, Incoming, Role, UNMASKED_HEADER, WsReader, WsWriter, halves, tcp_halves,
};
use tunnelgate_proto::Control;
use tunnelgate_proto::control::{Register, RegisterSuccess};
use tunnelgate_proto::limits::MAX_WS_MESSAGE;

use super::SessionError;
use crate::Shared;
use crate::config::REGISTER_TIMEOUT;

/// A tunnel's connection after the upgrade, in its two halves: the link's own WebSocket
/// framing (`mux::ws`, ADR 0014) over the socket or its TLS session.
pub(super) struct Ws {
    pub rd: WsReader<BoxRead>,
    pub wr: WsWriter<BoxWrite>,
}

impl Ws {
    /// The framing over what tungstenite's handshake left. Nothing can be buffered past the
    /// 101: a gateway sends nothing on a tunnel before the agent's `register`.
    /// `unmasked`: the gateway agreed to take frames unmasked.
    fn over(
        io: MaybeTlsStream<tokio::net::TcpStream>,
        unmasked: bool,
    ) -> Result<Self, SessionError> {
        let (rd, wr) = match io {
            MaybeTlsStream::Plain(tcp) => tcp_halves(tcp),
            MaybeTlsStream::Rustls(tls) => halves(tls),
            _ => return Err(SessionError::Connect("unexpected transport".into())),
        };
        let wr = WsWriter::new(wr, Role::Client);
        Ok(Ws {
            rd: WsReader::new(rd, Role::Client, &[], MAX_WS_MESSAGE + 16),
            wr: if unmasked { wr.unmasked() } else { wr },
        })
    }

    /// Closes the connection with a close frame (code 1000).
    pub async fn close(&mut self) {
        let bye = Outgoing::Close {
            code: 1000,
            reason: String::new(),
        };
        let _ = tokio::time::timeout(REGISTER_TIMEOUT, self.wr.send(bye)).await;
        let _ = tokio::time::timeout(REGISTER_TIMEOUT, self.wr.close()).await;
    }
}

/// The URL of the tunnel endpoint for a gateway URL.
pub fn tunnel_url(gateway: &str) -> Result<String, String> {
    let mut u = url::Url::parse(gateway).map_err(|e| e.to_string())?;
    match u.scheme() {
        "http" => {
            let _ = u.set_scheme("ws");
        }
        "https" => {
            let _ = u.set_scheme("wss");
        }
        _ => {}
    }
    if matches!(u.path(), "" | "/") {
        u.set_path("/v1/tunnel");
    }
    Ok(u.to_string())
}

/// Where a tunnel landed: the gateway node, and which of its workers (ADR 0013; a gateway
/// older than that names no worker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub node: String,
    pub worker: Option<String>,
}

impl Place {
    /// Whether a tunnel landing here duplicates one `held` already: the same node — unless
    /// with `share_node` (the slot reaches no other node) it is another worker of it.
    pub fn duplicates(&self, held: &Place, share_node: bool) -> bool {
        held.node == self.node && (!share_node || self.worker.is_none() || held == self)
    }
}

pub(super) async fn connect(
    shared: &Shared,
    gateway: &str,
) -> Result<(Ws, Option<Place>), SessionError> {
    let url = tunnel_url(gateway).map_err(SessionError::Connect)?;
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| SessionError::Connect(e.to_string()))?;
    let h = req.headers_mut();
    let bearer = format!("Bearer {}", shared.config.token());
    h.insert(
        "authorization",
        bearer
            .parse()
            .map_err(|_| SessionError::Connect("token is not valid header text".into()))?,
    );
    h.insert(
        "x-tunnelgate-cluster",
        shared
            .config
            .cluster()
            .parse()
            .map_err(|_| SessionError::Connect("cluster id is not valid header text".into()))?,
    );
    if !shared.config.mask_frames {
        h.insert(
            UNMASKED_HEADER,
            tungstenite::http::HeaderValue::from_static("1"),
        );
    }
    let cfg = WebSocketConfig::default()
        .max_message_size(Some(MAX_WS_MESSAGE + 16))
        .max_frame_size(Some(MAX_WS_MESSAGE + 16));
    let tls = tokio_tungstenite::Connector::Rustls(shared.gateway_tls.clone());
    let attempt = tokio_tungstenite::connect_async_tls_with_config(req, Some(cfg), true, Some(tls));
    match tokio::time::timeout(REGISTER_TIMEOUT, attempt).await {
        Err(_) => Err(SessionError::Connect(format!(
            "no answer from {url} within {REGISTER_TIMEOUT:?}"
        ))),
        Ok(Ok((ws, resp))) => {
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let place = header("x-tunnelgate-node").map(|node| Place {
                node,
                worker: header("x-tunnelgate-worker"),
            });
            let unmasked =
                !shared.config.mask_frames && header(UNMASKED_HEADER).is_some_and(|v| v == "1");
            Ok((Ws::over(ws.into_inner(), unmasked)?, place))
        }
        Ok(Err(tungstenite::Error::Http(resp))) => Err(SessionError::Refused {
            status: resp.status().as_u16(),
            body: resp
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).trim().to_string())
                .unwrap_or_default(),
        }),
        Ok(Err(e)) => Err(SessionError::Connect(format!("{url}: {e}"))),
    }
}

/// Waits for `register_success`, answering nothing else.
pub(super) async fn register(
    ws: &mut Ws,
    shared: &Shared,
    slot: usize,
) -> Result<RegisterSuccess, SessionError> {
    let offer = shared.take_offer(slot);
    let reg = Control::Register(Register {
        cluster: shared.config.cluster().to_string(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        hostname: std::env::var("HOSTNAME").ok(),
        connection_id: Some(format!("{}-{slot}", shared.instance)),
        agent_id: Some(shared.instance.to_string()),
        protocol: offer,
    });
    ws.wr
        .send(Outgoing::Text(reg.to_json()))
        .await
        .map_err(|e| SessionError::Register(e.to_string()))?;
    let wait = async {
        while let Some(msg) = ws.rd.next().await {
            match msg.map_err(|e| SessionError::Register(e.to_string()))? {
                Incoming::Text(t) => match Control::from_json(&t) {
                    Ok(Control::RegisterSuccess(ok))
                        if !(tunnelgate_proto::OLDEST_PROTOCOL
                            ..=tunnelgate_proto::PROTOCOL_VERSION)
                            .contains(&ok.protocol) =>
                    {
                        return Err(SessionError::Register(format!(
                            "the gateway speaks Tunnelgate protocol {}, this agent speaks {} (and {} to {}): run an agent and a gateway at most one protocol apart",
                            ok.protocol,
                            tunnelgate_proto::PROTOCOL_VERSION,
                            tunnelgate_proto::OLDEST_PROTOCOL,
                            tunnelgate_proto::PROTOCOL_VERSION
                        )));
                    }
                    Ok(Control::RegisterSuccess(ok)) => return Ok(ok),
                    Ok(Control::RegisterError(e)) => {
                        // A gateway of an older protocol this agent still speaks: the next
                        // attempt offers that one (gateways and agents upgrade in any order).
                        if let Some(v) = e.gateway_protocol()
                            && v < offer
                            && (tunnelgate_proto::OLDEST_PROTOCOL
                                ..tunnelgate_proto::PROTOCOL_VERSION)
                                .contains(&v)
                        {
                            shared.fall_back(slot, v);
                            return Err(SessionError::Register(format!(
                                "{}; trying again in protocol {v}",
                                e.reason
                            )));
                        }
                        return Err(SessionError::Register(e.reason));
                    }
                    Ok(other) => {
                        return Err(SessionError::Register(format!(
                            "unexpected {} before register_success",
                            other.name()
                        )));
                    }
                    Err(e) => return Err(SessionError::Register(e.to_string())),
                },
                Incoming::Close(c) => {
                    return Err(SessionError::Register(format!(
                        "gateway closed the tunnel: {}",
                        c.map(|(_, reason)| reason).unwrap_or_default()
                    )));
                }
                _ => {}
            }
        }
        Err(SessionError::Register(
            "gateway closed the connection".into(),
        ))
    };
    tokio::time::timeout(REGISTER_TIMEOUT, wait)
        .await
        .map_err(|_| SessionError::Register("no register_success in time".into()))?
}

#[cfg(test)]
mod place_tests {
    use super::Place;

    fn at(node: &str, worker: Option<&str>) -> Place {
        Place {
            node: node.into(),
            worker: worker.map(str::to_string),
        }
    }

    #[test]
    fn one_tunnel_per_node_unless_the_slot_reaches_no_other() {
        let held = at("n1", Some("0"));
        // Looking for other nodes: any tunnel on n1 is a duplicate, another node is not.
        assert!(at("n1", Some("1")).duplicates(&held, false));
        assert!(!at("n2", Some("0")).duplicates(&held, false));
        // Only n1 reachable: its other worker is kept, the same worker is not.
        assert!(!at("n1", Some("1")).duplicates(&held, true));
        assert!(at("n1", Some("0")).duplicates(&held, true));
        // A gateway that names no worker: one tunnel per node, as before.
        assert!(at("n1", None).duplicates(&at("n1", None), true));
    }
}
