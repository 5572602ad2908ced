//! The stream rule is the same at every end of a link (mux::streams): a frame for a stream never
//! opened closes the whole link — an agent tunnel at the gateway, a peer link at the node that
//! serves it, a tunnel at the agent — while frames for streams that ended are dropped. And
//! protocol 3's head frames at both ends of a tunnel: served, and a bad one closing only its
//! tunnel.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::{DEMO, FakeAgent, Gateway, HANG, PEER_SECRET, Redis};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tunnelgate_proto::head::{
    self, decode_request, decode_response, response_from_raw, response_whole,
};
use tunnelgate_proto::{Frame, ResetCode};

type Ws<S> = tokio_tungstenite::WebSocketStream<S>;

fn data(stream: u32) -> Message {
    Message::Binary(
        Frame::Data {
            stream,
            data: bytes::Bytes::from_static(b"x"),
        }
        .to_bytes(),
    )
}

fn reset(stream: u32) -> Message {
    Message::Binary(
        Frame::Reset {
            stream,
            code: ResetCode::CANCEL,
        }
        .to_bytes(),
    )
}

/// A peer link to `node` as another node would dial it (offering `protocol`, when given).
async fn peer_link(
    node: &Gateway,
    protocol: Option<&str>,
) -> (
    Ws<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    tokio_tungstenite::tungstenite::handshake::client::Response,
) {
    let url = format!("ws://{}/v1/peer", node.peer_addr().await);
    let mut req = url.into_client_request().unwrap();
    let h = req.headers_mut();
    h.insert(
        "authorization",
        format!("Bearer {PEER_SECRET}").parse().unwrap(),
    );
    h.insert("x-tunnelgate-node", "rule-tester".parse().unwrap());
    if let Some(p) = protocol {
        h.insert("x-tunnelgate-peer-protocol", p.parse().unwrap());
    }
    tokio_tungstenite::connect_async(req).await.unwrap()
}

/// A real agent with one route to a real upstream, dialling a listener the test plays the
/// gateway on.
async fn agent_dialling_the_test(
    host: &str,
) -> (
    common::upstream::Upstream,
    tokio::net::TcpListener,
    common::Agent,
) {
    let upstream = common::upstream::Upstream::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let agent = common::Agent::spawn_urls(
        &[url],
        DEMO,
        &[(host, upstream.url())],
        &["--connections", "1"],
    );
    (upstream, listener, agent)
}

/// Plays a gateway of `protocol` registering the real agent on `ws`: checks the protocol the
/// agent offers, answers `register_success`, takes its routes and acknowledges them.
async fn serve_register<S>(ws: &mut Ws<S>, offered: u32, protocol: u32)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let reg = text(ws).await;
    assert_eq!(reg["type"], "register", "{reg}");
    assert_eq!(reg["payload"]["protocol"], offered, "{reg}");
    let ok = serde_json::json!({"type": "register_success", "payload": {
        "node_id": "fake", "tunnel_id": "fake-1", "heartbeat_interval_ms": 60000,
        "stream_window": 262144, "max_streams": 100, "protocol": protocol}});
    ws.send(Message::Text(ok.to_string().into())).await.unwrap();
    assert_eq!(text(ws).await["type"], "ingress_routes");
    let ack =
        serde_json::json!({"type": "routes_ack", "payload": {"accepted": [], "rejected": []}});
    ws.send(Message::Text(ack.to_string().into()))
        .await
        .unwrap();
}

/// Reads until the other end closes; its close code and reason.
async fn closed<S>(ws: &mut Ws<S>) -> (u16, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match tokio::time::timeout(HANG, ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(Some(f)))) => return (f.code.into(), f.reason.to_string()),
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return (0, String::new()),
            Some(Ok(_)) => continue,
        }
    }
}

/// The next message `pick` takes (others are skipped).
async fn next_of<S, T>(ws: &mut Ws<S>, pick: impl Fn(Message) -> Option<T>) -> T
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match tokio::time::timeout(HANG, ws.next())
            .await
            .expect("message in time")
        {
            Some(Ok(m)) => {
                if let Some(t) = pick(m) {
                    return t;
                }
            }
            other => panic!("connection ended: {other:?}"),
        }
    }
}

/// The next text message.
async fn text<S>(ws: &mut Ws<S>) -> serde_json::Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    next_of(ws, |m| match m {
        Message::Text(t) => Some(serde_json::from_str(&t).expect("json")),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_tunnel_closes_on_a_frame_for_a_stream_never_opened() {
    let gw = Gateway::start(&[]);
    let mut fake = FakeAgent::connect(&gw, Some(DEMO.1), None).await.unwrap();
    fake.register("demo", "rule.demo.localhost").await;
    fake.send_binary(data(9).into_data().to_vec()).await;
    let (code, reason) = fake.closed().await;
    assert_eq!(code, 1002, "{reason}");
    assert!(reason.contains("never opened"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_link_closes_on_a_frame_for_a_stream_never_opened() {
    let redis = Redis::start();
    let node = Gateway::node(&redis, &[]);
    let (mut ws, _) = peer_link(&node, None).await;
    // A forwarded request for a cluster this node holds no tunnel of is refused at once; its
    // stream counts as opened, so its late upload is dropped, not a protocol error.
    let open = serde_json::json!({"type": "proxy_request", "payload": {
        "stream_id": 3, "method": "POST", "host": "a.demo.localhost", "path": "/",
        "headers": [], "body": true, "cluster": "demo", "conns": [], "hops": 1}});
    ws.send(Message::Text(open.to_string().into()))
        .await
        .unwrap();
    let refused = text(&mut ws).await;
    assert_eq!(refused["type"], "proxy_error", "{refused}");
    assert_eq!(refused["payload"]["kind"], "not_here", "{refused}");
    ws.send(data(3)).await.unwrap();
    // A RESET may overtake its stream's head: dropped too.
    ws.send(reset(5)).await.unwrap();
    // The link is still up: another forwarded request is answered.
    let again = serde_json::json!({"type": "proxy_request", "payload": {
        "stream_id": 4, "method": "GET", "host": "a.demo.localhost", "path": "/",
        "headers": [], "body": false, "cluster": "demo", "conns": [], "hops": 1}});
    ws.send(Message::Text(again.to_string().into()))
        .await
        .unwrap();
    assert_eq!(text(&mut ws).await["payload"]["stream_id"], 4);
    // DATA for a stream never opened: the link closes, as an agent tunnel would.
    ws.send(data(9)).await.unwrap();
    let (code, reason) = closed(&mut ws).await;
    assert_eq!(code, 1002, "{reason}");
    assert!(reason.contains("never opened"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_closes_its_tunnel_on_a_frame_for_a_stream_never_opened() {
    // A gateway played by the test: it registers the real agent, then sends it a RESET ahead of
    // any request (dropped) and DATA for a stream it never opened (the tunnel closes).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let agent = common::Agent::spawn_urls(
        &[url],
        DEMO,
        &[("rule.demo.localhost", "http://127.0.0.1:9".into())],
        &[],
    );
    let (tcp, _) = tokio::time::timeout(HANG, listener.accept())
        .await
        .expect("agent dials in time")
        .unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    // (A gateway of protocol 2 serving the agent's 3.)
    serve_register(&mut ws, 3, 2).await;
    agent.connected().await;
    ws.send(reset(2)).await.unwrap();
    ws.send(data(7)).await.unwrap();
    let (code, reason) = closed(&mut ws).await;
    assert_eq!(code, 1002, "{reason}");
    assert!(reason.contains("never opened"), "{reason}");
    assert!(
        !reason.contains("stream 2"),
        "the RESET ahead of its head closed the tunnel: {reason}"
    );
    drop(listener);
    tokio::time::timeout(Duration::from_secs(5), agent.stop())
        .await
        .expect("agent stops");
}

/// A fake agent of protocol 3 for cluster demo, publishing `host`.
async fn agent_of_protocol_3(gw: &Gateway, host: &str) -> FakeAgent {
    let mut fake = FakeAgent::connect(gw, Some(DEMO.1), None).await.unwrap();
    fake.register_routes_in(3, "demo", &[(host, "/")]).await;
    fake
}

/// The status of a GET of `url`, in a task of its own.
fn status_of(url: String) -> tokio::task::JoinHandle<u16> {
    tokio::spawn(async move {
        let r = common::client().get(url).send().await.unwrap();
        r.status().as_u16()
    })
}

/// The next binary message.
async fn binary<S>(ws: &mut Ws<S>) -> bytes::Bytes
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    next_of(ws, |m| match m {
        Message::Binary(b) => Some(b),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_3_agent_gets_head_frames_and_may_answer_whole() {
    let gw = Gateway::start(&[]);
    let host = "three.demo.localhost";
    let mut fake = agent_of_protocol_3(&gw, host).await;
    let get = |path: &str| {
        let url = gw.url(host, path);
        tokio::spawn(async move {
            let r = common::client().get(url).send().await.unwrap();
            let headers = r.headers().clone();
            (r.status().as_u16(), headers, r.text().await.unwrap())
        })
    };
    // A small response whole in its head frame.
    let client = get("/p?x=1");
    let req = decode_request(&binary(&mut fake.ws).await).unwrap();
    assert_eq!((req.method.as_str(), req.path.as_str()), ("GET", "/p"));
    assert_eq!(req.query.as_deref(), Some("x=1"));
    assert!(
        req.headers
            .iter()
            .any(|(n, v)| n == "host" && v.starts_with(host)),
        "{req:?}"
    );
    // The gateway still owns the fields taken from the frame as it came: hop-by-hop ones
    // dropped (with those `Connection` names), cookies kept to the tenant's names; any other
    // value passes byte for byte, also one that is not UTF-8.
    let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\nX-Latin: caf\xe9\r\nConnection: x-hop\r\nX-Hop: secret\r\nSet-Cookie: s=1; Domain=evil.localhost\r\n\r\n";
    fake.send_binary(response_whole(req.stream_id, raw, b"hello").to_vec())
        .await;
    let (status, headers, body) = client.await.unwrap();
    assert_eq!((status, body.as_str()), (200, "hello"));
    assert_eq!(headers.get("x-a").unwrap(), "b");
    assert_eq!(headers.get("x-latin").unwrap().as_bytes(), b"caf\xe9");
    assert!(headers.get("x-hop").is_none(), "{headers:?}");
    let cookie = headers.get("set-cookie").unwrap().to_str().unwrap();
    assert!(
        cookie.starts_with("s=1") && !cookie.contains("evil"),
        "{cookie}"
    );
    // A head frame, then the body as DATA and END.
    let client = get("/q");
    let req = decode_request(&binary(&mut fake.ws).await).unwrap();
    let id = req.stream_id;
    fake.send_binary(response_from_raw(id, true, b"HTTP/1.1 201 Created\r\n\r\n").to_vec())
        .await;
    let data = Frame::Data {
        stream: id,
        data: bytes::Bytes::from_static(b"abc"),
    };
    fake.send_binary(data.to_bytes().to_vec()).await;
    fake.send_binary(Frame::End { stream: id }.to_bytes().to_vec())
        .await;
    let (status, headers, body) = client.await.unwrap();
    assert_eq!((status, body.as_str()), (201, "abc"));
    assert!(headers.get("x-a").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_head_frame_closes_only_its_tunnel() {
    let gw = Gateway::start(&[]);
    let host = "bad.demo.localhost";
    let mut fake = agent_of_protocol_3(&gw, host).await;
    let url = gw.url(host, "/");
    let client = status_of(url);
    let req = decode_request(&binary(&mut fake.ws).await).unwrap();
    // A field with no colon: not an HTTP/1.1 head, so not a response.
    let raw = b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n";
    fake.send_binary(response_from_raw(req.stream_id, false, raw).to_vec())
        .await;
    let (code, reason) = fake.closed().await;
    assert_eq!(code, 1002, "{reason}");
    assert!(reason.contains("response head"), "{reason}");
    assert_eq!(client.await.unwrap(), 502);
    // The node lives on.
    let health = common::client()
        .get(format!("http://{}/healthz", gw.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    // A protocol-2 tunnel knows no head frames: one closes it like any unknown frame.
    let mut old = FakeAgent::connect(&gw, Some(DEMO.1), None).await.unwrap();
    old.register("demo", "old.demo.localhost").await;
    old.send_binary(response_from_raw(1, false, b"HTTP/1.1 204 \r\n\r\n").to_vec())
        .await;
    let (code, reason) = old.closed().await;
    assert_eq!(code, 1002, "{reason}");
    assert!(reason.contains("unknown frame kind 8"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_speaks_protocol_3_heads_and_closes_on_a_bad_one() {
    // A gateway of protocol 3 played by the test, the real agent and a real upstream.
    let (_upstream, listener, agent) = agent_dialling_the_test("three.demo.localhost").await;
    let (tcp, _) = tokio::time::timeout(HANG, listener.accept())
        .await
        .expect("agent dials in time")
        .unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    serve_register(&mut ws, 3, 3).await;
    agent.connected().await;
    let request = tunnelgate_proto::control::ProxyRequest {
        stream_id: 1,
        method: "GET".into(),
        host: "three.demo.localhost".into(),
        path: "/hello".into(),
        headers: vec![("host".into(), "three.demo.localhost".into())],
        ..Default::default()
    };
    ws.send(Message::Binary(head::encode_request(&request)))
        .await
        .unwrap();
    // "hello" has a length and came with its head: one frame, the whole response.
    let (resp, whole) = decode_response(&binary(&mut ws).await).unwrap();
    assert_eq!((resp.stream_id, resp.status, resp.body), (1, 200, true));
    assert_eq!(whole.as_deref(), Some(&b"hello"[..]));
    // A request head that does not decode closes the tunnel.
    ws.send(Message::Binary(bytes::Bytes::from_static(&[
        head::KIND_REQUEST_HEAD,
        0,
        0,
        0,
        3,
        0xff,
    ])))
    .await
    .unwrap();
    let (code, reason) = closed(&mut ws).await;
    assert_eq!(code, 1002, "{reason}");
    assert!(reason.contains("invalid request head"), "{reason}");
    drop(listener);
    tokio::time::timeout(Duration::from_secs(5), agent.stop())
        .await
        .expect("agent stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_link_of_protocol_3_takes_head_frames_and_closes_on_a_bad_one() {
    let redis = Redis::start();
    let node = Gateway::node(&redis, &[]);
    let (mut ws, resp) = peer_link(&node, Some("3")).await;
    assert_eq!(resp.headers()["x-tunnelgate-peer-protocol"], "3");
    // A forwarded request as a head frame, for a cluster this node holds no tunnel of.
    let forwarded = tunnelgate_proto::control::ProxyRequest {
        stream_id: 3,
        method: "GET".into(),
        host: "a.demo.localhost".into(),
        path: "/".into(),
        cluster: Some("demo".into()),
        hops: 1,
        ..Default::default()
    };
    ws.send(Message::Binary(head::encode_request(&forwarded)))
        .await
        .unwrap();
    let refused = text(&mut ws).await;
    assert_eq!(refused["payload"]["kind"], "not_here", "{refused}");
    assert_eq!(refused["payload"]["stream_id"], 3, "{refused}");
    // A head frame that does not decode closes the link.
    let mut bad = head::encode_request(&forwarded).to_vec();
    bad.truncate(bad.len() - 1);
    bad[4] = 5;
    ws.send(Message::Binary(bad.into())).await.unwrap();
    let (code, reason) = closed(&mut ws).await;
    assert_eq!(code, 1002, "{reason}");
    assert!(reason.contains("request head"), "{reason}");
}

/// The next RESET frame: its stream and code.
async fn next_reset<S>(ws: &mut Ws<S>) -> (u32, ResetCode)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let b = binary(ws).await;
        if head::is_head(&b) {
            continue;
        }
        if let Ok(Frame::Reset { stream, code }) = Frame::decode(b) {
            return (stream, code);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bodyless_stream_ends_with_a_reset_saying_why() {
    // Bodyless requests run without a stream task: their end comes from the opener.
    let gw = Gateway::start(&["--response-timeout", "300ms"]);
    let host = "ends.demo.localhost";
    let mut fake = agent_of_protocol_3(&gw, host).await;
    // No answer in time: 504 to the client, RESET timeout to the agent.
    let url = gw.url(host, "/slow");
    let client = status_of(url);
    let req = decode_request(&binary(&mut fake.ws).await).unwrap();
    assert_eq!(client.await.unwrap(), 504);
    assert_eq!(
        next_reset(&mut fake.ws).await,
        (req.stream_id, ResetCode::TIMEOUT)
    );
    // A whole answer ends the stream cleanly: no RESET follows it (the next one is the next
    // stream's).
    let url = gw.url(host, "/ok");
    let client = tokio::spawn(async move { common::client().get(url).send().await });
    let req = decode_request(&binary(&mut fake.ws).await).unwrap();
    let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n";
    fake.send_binary(response_whole(req.stream_id, raw, b"ok").to_vec())
        .await;
    assert_eq!(client.await.unwrap().unwrap().text().await.unwrap(), "ok");
    let url = gw.url(host, "/slow2");
    tokio::spawn(async move { common::client().get(url).send().await });
    let last = decode_request(&binary(&mut fake.ws).await).unwrap();
    assert_eq!(
        next_reset(&mut fake.ws).await,
        (last.stream_id, ResetCode::TIMEOUT)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_falls_back_to_the_protocol_of_an_older_gateway() {
    // A protocol-2 gateway played by the test: it refuses protocol 3 as those gateways do
    // (their reason names both versions, no field), then serves the agent's second attempt.
    let (_upstream, listener, agent) = agent_dialling_the_test("old.demo.localhost").await;
    let accept = || async {
        let (tcp, _) = tokio::time::timeout(HANG, listener.accept())
            .await
            .expect("agent dials in time")
            .unwrap();
        tokio_tungstenite::accept_async(tcp).await.unwrap()
    };
    let mut ws = accept().await;
    let reg = text(&mut ws).await;
    assert_eq!(reg["payload"]["protocol"], 3, "{reg}");
    let refusal = serde_json::json!({"type": "register_error", "payload": {"reason":
        "the agent speaks Tunnelgate protocol 3, this gateway speaks protocol 2 (and accepts only 2): run an agent of the gateway's release"}});
    ws.send(Message::Text(refusal.to_string().into()))
        .await
        .unwrap();
    let _ = ws.close(None).await;
    let mut ws = accept().await;
    serve_register(&mut ws, 2, 2).await;
    agent.connected().await;
    // Protocol 2 on this tunnel: JSON heads both ways.
    let request = serde_json::json!({"type": "proxy_request", "payload": {
        "stream_id": 1, "method": "GET", "host": "old.demo.localhost", "path": "/hello",
        "headers": [["host", "old.demo.localhost"]], "body": false}});
    ws.send(Message::Text(request.to_string().into()))
        .await
        .unwrap();
    let resp = loop {
        let m = text(&mut ws).await;
        if m["type"] != "heartbeat" {
            break m;
        }
    };
    assert_eq!(resp["type"], "proxy_response", "{resp}");
    assert_eq!(resp["payload"]["status"], 200, "{resp}");
    drop(ws);
    drop(listener);
    tokio::time::timeout(Duration::from_secs(5), agent.stop())
        .await
        .expect("agent stops");
}
