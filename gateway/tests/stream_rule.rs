//! The stream rule is the same at every end of a link (mux::streams): a frame for a stream never
//! opened closes the whole link — an agent tunnel at the gateway, a peer link at the node that
//! serves it, a tunnel at the agent — while frames for streams that ended are dropped.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::{DEMO, FakeAgent, Gateway, HANG, PEER_SECRET, Redis};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
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

/// The next text message.
async fn text<S>(ws: &mut Ws<S>) -> serde_json::Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match tokio::time::timeout(HANG, ws.next())
            .await
            .expect("message in time")
        {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).expect("json"),
            Some(Ok(_)) => continue,
            other => panic!("connection ended: {other:?}"),
        }
    }
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
    let url = format!("ws://{}/v1/peer", node.peer_addr().await);
    let mut req = url.into_client_request().unwrap();
    let h = req.headers_mut();
    h.insert(
        "authorization",
        format!("Bearer {PEER_SECRET}").parse().unwrap(),
    );
    h.insert("x-tunnelgate-node", "rule-tester".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
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
    assert_eq!(text(&mut ws).await["type"], "register");
    let ok = serde_json::json!({"type": "register_success", "payload": {
        "node_id": "fake", "tunnel_id": "fake-1", "heartbeat_interval_ms": 60000,
        "stream_window": 262144, "max_streams": 100, "protocol": 2}});
    ws.send(Message::Text(ok.to_string().into())).await.unwrap();
    assert_eq!(text(&mut ws).await["type"], "ingress_routes");
    let ack =
        serde_json::json!({"type": "routes_ack", "payload": {"accepted": [], "rejected": []}});
    ws.send(Message::Text(ack.to_string().into()))
        .await
        .unwrap();
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
