//! Control messages: WebSocket text frames holding `{"type": "...", "payload": {...}}`.
//!
//! Unknown `type`s are errors; unknown fields inside a payload are ignored, so a newer peer can
//! add fields without breaking an older one.

use serde::{Deserialize, Serialize};

use crate::frame::StreamId;
use crate::limits::MAX_CONTROL_MESSAGE;
use crate::routes::RouteSpec;

/// A header list in wire order; names may repeat (`Set-Cookie`).
pub type HeaderList = Vec<(String, String)>;

/// Every control message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "payload", rename_all = "snake_case")]
pub enum Control {
    Register(Register),
    RegisterSuccess(RegisterSuccess),
    RegisterError(RegisterError),
    Heartbeat(Heartbeat),
    HeartbeatAck(HeartbeatAck),
    IngressRoutes(IngressRoutes),
    RoutesAck(RoutesAck),
    ProxyRequest(ProxyRequest),
    ProxyResponse(ProxyResponse),
    ProxyWebsocketStart(ProxyWebsocketStart),
    ProxyWebsocketClose(ProxyWebsocketClose),
    ProxyError(ProxyError),
    Drain(Drain),
}

/// Agent → gateway, first message after the upgrade. Identity comes from the bearer token;
/// `cluster` is what the agent believes it is and must agree with the token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Register {
    pub cluster: String,
    pub agent_version: String,
    #[serde(default)]
    pub hostname: Option<String>,
    /// Stable id of this connection slot across reconnects (agent instance and slot). A
    /// reconnect with the same id takes the ownership lease over with a newer epoch, which
    /// fences the stale connection out.
    #[serde(default)]
    pub connection_id: Option<String>,
    /// Stable id of the agent process, shared by its connection slots: routes published by
    /// the connections of one agent never conflict with each other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The wire protocol version the agent speaks ([`crate::PROTOCOL_VERSION`]); absent means 1.
    #[serde(default = "protocol_one")]
    pub protocol: u32,
}

fn protocol_one() -> u32 {
    1
}

/// Gateway → agent: the tunnel is live, and the parameters both sides use on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterSuccess {
    pub node_id: String,
    pub tunnel_id: String,
    pub heartbeat_interval_ms: u64,
    /// Initial credit of every stream, in both directions.
    pub stream_window: u32,
    pub max_streams: u32,
    /// The name the cluster's public hosts are CNAMEd to (`{cluster}.{domain}`), for an
    /// agent to write into Ingress status.
    #[serde(default)]
    pub public_host: Option<String>,
    /// The wire protocol version the gateway speaks on this tunnel; absent means 1.
    #[serde(default = "protocol_one")]
    pub protocol: u32,
}

/// Gateway → agent: registration refused; the gateway closes the tunnel after sending it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterError {
    pub reason: String,
    /// The gateway's protocol version, when it refused the agent's: an agent that still
    /// speaks it tries again in it. (Absent from gateways before protocol 3.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u32>,
}

impl RegisterError {
    /// The protocol the refusing gateway speaks, when the refusal was about versions: the
    /// field, or what a protocol-2 gateway wrote ("… this gateway speaks protocol N …").
    pub fn gateway_protocol(&self) -> Option<u32> {
        self.protocol.or_else(|| {
            let (_, rest) = self.reason.split_once("this gateway speaks protocol ")?;
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
    }
}

/// Agent → gateway, every heartbeat interval. Also refreshes the agent's routes' TTL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Heartbeat {
    pub sent_at_ms: u64,
    #[serde(default)]
    pub is_private: Option<bool>,
    #[serde(default)]
    pub gateway_routes: Option<u32>,
}

/// Gateway → agent: answer to a heartbeat, echoing its timestamp.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    pub sent_at_ms: u64,
}

/// What an `ingress_routes` message does to the cluster's routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteAction {
    /// Insert these routes (replacing any with the same host and path).
    Add,
    /// Same as add; kept as its own word for logs.
    Update,
    /// Remove these routes (host and path identify them).
    Delete,
    /// These are all the cluster's routes: everything else is removed.
    Sync,
}

/// Agent → gateway: publish or withdraw routes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngressRoutes {
    pub action: RouteAction,
    pub routes: Vec<RouteSpec>,
}

/// Gateway → agent: which routes were taken and which refused, with why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RoutesAck {
    pub accepted: Vec<RouteKey>,
    pub rejected: Vec<RouteRejection>,
}

/// Identifies a route within a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteKey {
    pub host: String,
    pub path: String,
}

/// A route the gateway refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRejection {
    pub host: String,
    pub path: String,
    pub reason: String,
}

/// Gateway → agent: open stream `stream_id` for this request. Body bytes follow as DATA frames
/// and an END when `body` is true.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProxyRequest {
    pub stream_id: StreamId,
    pub method: String,
    /// The `Host` the client sent, normalised (lower case, no port).
    pub host: String,
    pub path: String,
    #[serde(default)]
    pub query: Option<String>,
    pub headers: HeaderList,
    pub body: bool,
    #[serde(default)]
    pub request_id: Option<String>,
    /// Set only on a peer link: the cluster whose tunnel must serve the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Set only on a peer link: the agent connections that publish the request's route; the
    /// owner node serves it only through one of them (any of the cluster's when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conns: Vec<String>,
    /// Gateway hops taken so far; a node never forwards a request that already took one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hops: u8,
    /// The client asked for an HTTP/1.1 upgrade (any protocol but h2c): the `Upgrade` value.
    /// The agent sends the request with `Connection: upgrade`; after the upstream's 101 both
    /// directions of the stream carry the connection's raw bytes as DATA (protocol 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<String>,
    /// Set only for a request to the cluster's Kubernetes API (`{cluster}.k8s.{domain}`): the
    /// caller the gateway authenticated. The agent sends the request to its API server as
    /// itself, impersonating this identity; it never reads identity from client headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubeIdentity>,
    /// A data-path probe from the gateway, not a client's request: the agent answers it at once
    /// (`proxy_response` 204, no body) from its stream handling, without an upstream. A tunnel
    /// that answers heartbeats but no probe is wedged and is replaced. An agent that does not
    /// know the field answers with a `proxy_error` (no route), which proves the same.
    #[serde(default, skip_serializing_if = "is_false")]
    pub probe: bool,
    /// W3C `traceparent` of the sender's span for this request, when it exports traces: the
    /// receiving node's or agent's span continues the trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Who a Kubernetes API request is made for: `Impersonate-User` and `Impersonate-Group`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeIdentity {
    pub user: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

fn is_zero(n: &u8) -> bool {
    *n == 0
}

/// Agent → gateway: the upstream's response head. When `body` is true DATA frames and an END
/// follow; when false the response is complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyResponse {
    pub stream_id: StreamId,
    pub status: u16,
    pub headers: HeaderList,
    pub body: bool,
}

/// Gateway → agent: the request on `stream_id` is a WebSocket upgrade; messages follow as
/// WS_* frames once the agent answers with a 101 `proxy_response`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyWebsocketStart {
    pub stream_id: StreamId,
    #[serde(default)]
    pub protocols: Vec<String>,
}

/// Either side: the proxied WebSocket session on `stream_id` closed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyWebsocketClose {
    pub stream_id: StreamId,
    pub code: u16,
    #[serde(default)]
    pub reason: String,
}

/// What went wrong before the agent could produce a response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyErrorKind {
    /// The upstream refused the connection (nothing listening).
    UpstreamRefused,
    /// The upstream connection failed or the response was malformed.
    UpstreamFailed,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The agent has no upstream for this host and path.
    NoRoute,
    /// The agent refuses the stream (overloaded, shutting down); safe to retry elsewhere.
    Refused,
    /// On a peer link: this node holds no tunnel of the cluster (any more); try another.
    NotHere,
}

impl ProxyErrorKind {
    /// The wire name (`upstream_refused`, …), for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyErrorKind::UpstreamRefused => "upstream_refused",
            ProxyErrorKind::UpstreamFailed => "upstream_failed",
            ProxyErrorKind::UpstreamTimeout => "upstream_timeout",
            ProxyErrorKind::NoRoute => "no_route",
            ProxyErrorKind::Refused => "refused",
            ProxyErrorKind::NotHere => "not_here",
        }
    }
}

/// Agent → gateway: stream `stream_id` failed before a response head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyError {
    pub stream_id: StreamId,
    pub kind: ProxyErrorKind,
    pub message: String,
}

/// Gateway → agent: please reconnect (to another node); streams in flight finish first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drain {
    pub reason: String,
}

/// Why a text frame is not a control message.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control message of {len} bytes is over the limit of {max}")]
    Oversized { len: usize, max: usize },
    #[error("invalid control message: {0}")]
    Json(#[from] serde_json::Error),
}

impl Control {
    /// The message as the text of one WebSocket frame.
    pub fn to_json(&self) -> String {
        // Serialising these plain structs cannot fail: no maps with non-string keys, no
        // custom serialisers.
        serde_json::to_string(self)
            .unwrap_or_else(|e| format!(r#"{{"type":"serialize_failed","payload":"{}"}}"#, e))
    }

    /// Parses one WebSocket text frame.
    pub fn from_json(text: &str) -> Result<Control, ControlError> {
        if text.len() > MAX_CONTROL_MESSAGE {
            return Err(ControlError::Oversized {
                len: text.len(),
                max: MAX_CONTROL_MESSAGE,
            });
        }
        Ok(serde_json::from_str(text)?)
    }

    /// The message's `type` as it appears on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Control::Register(_) => "register",
            Control::RegisterSuccess(_) => "register_success",
            Control::RegisterError(_) => "register_error",
            Control::Heartbeat(_) => "heartbeat",
            Control::HeartbeatAck(_) => "heartbeat_ack",
            Control::IngressRoutes(_) => "ingress_routes",
            Control::RoutesAck(_) => "routes_ack",
            Control::ProxyRequest(_) => "proxy_request",
            Control::ProxyResponse(_) => "proxy_response",
            Control::ProxyWebsocketStart(_) => "proxy_websocket_start",
            Control::ProxyWebsocketClose(_) => "proxy_websocket_close",
            Control::ProxyError(_) => "proxy_error",
            Control::Drain(_) => "drain",
        }
    }

    /// The stream this message is about, if any.
    pub fn stream_id(&self) -> Option<StreamId> {
        match self {
            Control::ProxyRequest(m) => Some(m.stream_id),
            Control::ProxyResponse(m) => Some(m.stream_id),
            Control::ProxyWebsocketStart(m) => Some(m.stream_id),
            Control::ProxyWebsocketClose(m) => Some(m.stream_id),
            Control::ProxyError(m) => Some(m.stream_id),
            _ => None,
        }
    }
}

pub use crate::routes::Annotations;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::PathType;

    #[test]
    fn error_kind_names_are_the_wire_names() {
        use ProxyErrorKind::*;
        for k in [
            UpstreamRefused,
            UpstreamFailed,
            UpstreamTimeout,
            NoRoute,
            Refused,
            NotHere,
        ] {
            assert_eq!(
                serde_json::to_string(&k).unwrap(),
                format!("\"{}\"", k.as_str())
            );
        }
    }

    #[test]
    fn envelope_shape_is_type_and_payload() {
        let m = Control::HeartbeatAck(HeartbeatAck { sent_at_ms: 5 });
        assert_eq!(
            m.to_json(),
            r#"{"type":"heartbeat_ack","payload":{"sent_at_ms":5}}"#
        );
    }

    #[test]
    fn round_trips() {
        let msgs = vec![
            Control::Register(Register {
                cluster: "demo".into(),
                agent_version: "0.1.0".into(),
                hostname: None,
                connection_id: None,
                agent_id: Some("a1".into()),
                protocol: crate::PROTOCOL_VERSION,
            }),
            Control::IngressRoutes(IngressRoutes {
                action: RouteAction::Sync,
                routes: vec![RouteSpec {
                    host: "app.demo.localhost".into(),
                    path: "/".into(),
                    path_type: PathType::Prefix,
                    ..Default::default()
                }],
            }),
            Control::ProxyRequest(ProxyRequest {
                stream_id: 3,
                method: "POST".into(),
                host: "app.demo.localhost".into(),
                path: "/x".into(),
                query: Some("a=1".into()),
                headers: vec![
                    ("set-cookie".into(), "a".into()),
                    ("set-cookie".into(), "b".into()),
                ],
                body: true,
                request_id: None,
                cluster: None,
                conns: Vec::new(),
                hops: 0,
                upgrade: Some("websocket".into()),
                kubernetes: Some(KubeIdentity {
                    user: "alice".into(),
                    groups: vec!["devs".into()],
                }),
                probe: true,
                traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            }),
            Control::ProxyError(ProxyError {
                stream_id: 3,
                kind: ProxyErrorKind::UpstreamRefused,
                message: "connection refused".into(),
            }),
        ];
        for m in msgs {
            assert!(
                m.to_json()
                    .starts_with(&format!(r#"{{"type":"{}""#, m.name()))
            );
            assert_eq!(Control::from_json(&m.to_json()).unwrap(), m);
        }
    }

    #[test]
    fn rejects_bad_messages() {
        assert!(Control::from_json("not json").is_err());
        assert!(Control::from_json(r#"{"type":"launch_missiles","payload":{}}"#).is_err());
        assert!(Control::from_json(r#"{"type":"heartbeat_ack","payload":{}}"#).is_err());
        let big = format!(
            r#"{{"type":"drain","payload":{{"reason":"{}"}}}}"#,
            "x".repeat(MAX_CONTROL_MESSAGE)
        );
        assert!(matches!(
            Control::from_json(&big),
            Err(ControlError::Oversized { .. })
        ));
    }

    #[test]
    fn ignores_unknown_payload_fields() {
        let m =
            Control::from_json(r#"{"type":"heartbeat_ack","payload":{"sent_at_ms":1,"new":true}}"#)
                .unwrap();
        assert_eq!(m, Control::HeartbeatAck(HeartbeatAck { sent_at_ms: 1 }));
    }

    mod props {
        use super::super::*;
        use crate::routes::PathType;
        use proptest::prelude::*;

        const TYPES: &[&str] = &[
            "register",
            "register_success",
            "register_error",
            "heartbeat",
            "heartbeat_ack",
            "ingress_routes",
            "routes_ack",
            "proxy_request",
            "proxy_response",
            "proxy_websocket_start",
            "proxy_websocket_close",
            "proxy_error",
            "drain",
            "other",
        ];

        /// JSON values of any shape, a few levels deep.
        fn json() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::from),
                any::<i64>().prop_map(serde_json::Value::from),
                any::<f64>().prop_map(|f| serde_json::json!(f)),
                "\\PC{0,12}".prop_map(serde_json::Value::from),
            ];
            leaf.prop_recursive(3, 32, 6, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..6)
                        .prop_map(serde_json::Value::from),
                    proptest::collection::btree_map(
                        prop_oneof![
                            Just("stream_id".to_string()),
                            Just("status".to_string()),
                            Just("headers".to_string()),
                            Just("routes".to_string()),
                            Just("action".to_string()),
                            Just("host".to_string()),
                            "[a-z_]{1,8}",
                        ],
                        inner,
                        0..6
                    )
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn route() -> impl Strategy<Value = RouteSpec> {
            (
                "[a-z*.]{1,20}",
                "/[a-z/%.]{0,20}",
                any::<bool>(),
                proptest::option::of("[a-z:/.0-9]{0,20}"),
            )
                .prop_map(|(host, path, exact, service)| RouteSpec {
                    host,
                    path,
                    path_type: if exact {
                        PathType::Exact
                    } else {
                        PathType::Prefix
                    },
                    service,
                    ..Default::default()
                })
        }

        proptest! {
            #[test]
            fn decoding_never_panics_on_text(t in "\\PC{0,200}") {
                let _ = Control::from_json(&t);
            }

            #[test]
            fn decoding_never_panics_on_any_payload(ty in proptest::sample::select(TYPES), payload in json()) {
                let text = serde_json::json!({"type": ty, "payload": payload}).to_string();
                if let Ok(m) = Control::from_json(&text) {
                    // Whatever decoded encodes and decodes to itself.
                    prop_assert_eq!(Control::from_json(&m.to_json()).unwrap(), m);
                }
            }

            #[test]
            fn messages_round_trip(
                routes in proptest::collection::vec(route(), 0..8),
                headers in proptest::collection::vec(("[a-z-]{1,10}", "\\PC{0,20}"), 0..8),
                id in any::<u32>(),
                status in any::<u16>(),
            ) {
                let msgs = [
                    Control::IngressRoutes(IngressRoutes { action: RouteAction::Sync, routes }),
                    Control::ProxyResponse(ProxyResponse { stream_id: id, status, headers, body: true }),
                ];
                for m in msgs {
                    prop_assert_eq!(Control::from_json(&m.to_json()).unwrap(), m);
                }
            }
        }
    }

    #[test]
    fn a_refusal_names_the_gateways_protocol_by_field_or_in_words() {
        let field = RegisterError {
            reason: "whatever".into(),
            protocol: Some(3),
        };
        assert_eq!(field.gateway_protocol(), Some(3));
        let words = RegisterError {
            reason: "the agent speaks Tunnelgate protocol 3, this gateway speaks protocol 2 (and accepts only 2)".into(),
            protocol: None,
        };
        assert_eq!(words.gateway_protocol(), Some(2));
        let other = RegisterError {
            reason: "this token does not belong to cluster \"x\"".into(),
            protocol: None,
        };
        assert_eq!(other.gateway_protocol(), None);
    }
}
