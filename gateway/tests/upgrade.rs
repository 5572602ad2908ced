//! Upgraded connections carry bytes: WebSocket sessions of any message size, close codes, the
//! public Host, SPDY/3.1 upgrades, a broken path seen as broken, many sessions on one tunnel,
//! and slow readers that slow nobody else — on one node and across a peer hop.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::upstream::{RawUpgradeUpstream, WsUpstream, ws_connect};
use common::{Agent, DEMO, FakeAgent, Gateway, HANG, Redis};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn next(ws: &mut Ws) -> Message {
    tokio::time::timeout(HANG, ws.next())
        .await
        .expect("message in time")
        .expect("session open")
        .expect("message")
}

/// Echoes messages of 1 B to 16 MiB each way, text and binary, checks close codes and the Host
/// the upstream saw.
async fn echo_all_sizes(gw: &Gateway) {
    let (mut ws, resp) = ws_connect(gw.addr, "ws.demo.localhost", "/", Some("chat")).await;
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");
    ws.send(Message::Text("host?".into())).await.unwrap();
    assert_eq!(
        next(&mut ws).await,
        Message::Text(format!("ws.demo.localhost:{}", gw.addr.port()).into()),
        "the upstream sees the public Host on upgrades"
    );
    for size in [1usize, 1000, 65_535, 65_536, 300_000, 4 << 20, 16 << 20] {
        let bin: Bytes = (0..size)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>()
            .into();
        ws.send(Message::Binary(bin.clone())).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::Binary(bin), "binary {size}");
        let text = "é".repeat(size.max(2) / 2);
        ws.send(Message::Text(text.clone().into())).await.unwrap();
        assert_eq!(
            next(&mut ws).await,
            Message::Text(text.into()),
            "text {size}"
        );
    }
    ws.send(Message::Text("close:4321:done here".into()))
        .await
        .unwrap();
    match next(&mut ws).await {
        Message::Close(Some(f)) => {
            assert_eq!(u16::from(f.code), 4321);
            assert_eq!(f.reason, "done here");
        }
        other => panic!("expected the upstream's close, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_messages_of_any_size_and_close_codes_pass() {
    let up = WsUpstream::start().await;
    let gw = Gateway::start(&[]);
    let _a = Agent::start(&gw, DEMO, &[("ws.demo.localhost", up.url())]).await;
    echo_all_sizes(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_messages_of_any_size_pass_across_a_peer_hop() {
    let redis = Redis::start();
    let up = WsUpstream::start().await;
    let n1 = Gateway::node(&redis, &[]);
    let n2 = Gateway::node(&redis, &[]);
    let a = Agent::spawn_to(
        &[&n1],
        DEMO,
        &[("ws.demo.localhost", up.url())],
        &["--connections", "1"],
    );
    a.connected().await;
    echo_all_sizes(&n2).await;
}

/// `POST` with `Upgrade: SPDY/3.1` (kubectl's fallback): the upstream's 101 and then raw bytes.
async fn spdy_echo(gw: &Gateway, up: &RawUpgradeUpstream) {
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/namespaces/default/pods/p/exec?command=sh HTTP/1.1\r\n\
         Host: api.demo.localhost:{}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\n",
        gw.addr.port()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 8192];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(HANG, s.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "closed before the 101: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&b[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 101"), "{text}");
    assert!(text.contains("upgrade: spdy/3.1"), "{text}");
    assert!(
        !text.contains("content-type"),
        "the gateway invented a header: {text}"
    );
    // Arbitrary binary (SPDY frames are binary), both ways, byte for byte.
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let (mut r, mut w) = s.into_split();
    let send = payload.clone();
    let writer = tokio::spawn(async move { w.write_all(&send).await.unwrap() });
    let mut back = vec![0u8; payload.len()];
    // The writer half-closes when done (its drop sends FIN): the echo still comes back whole.
    tokio::time::timeout(HANG, r.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    assert!(back == payload, "raw bytes came back changed");
    let heads = up.heads.lock().unwrap().clone();
    let last = heads
        .last()
        .expect("the upstream saw the request")
        .to_ascii_lowercase();
    assert!(
        last.starts_with("post /api/v1/namespaces/default/pods/p/exec?command=sh http/1.1"),
        "{last}"
    );
    assert!(
        last.contains(&format!("host: api.demo.localhost:{}", gw.addr.port())),
        "{last}"
    );
    assert!(
        last.contains("x-stream-protocol-version: v4.channel.k8s.io"),
        "{last}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spdy_upgrades_carry_raw_bytes_on_one_node_and_across_a_peer_hop() {
    let up = RawUpgradeUpstream::start().await;
    let gw = Gateway::start(&[]);
    let _a = Agent::start(&gw, DEMO, &[("api.demo.localhost", up.url())]).await;
    spdy_echo(&gw, &up).await;

    let redis = Redis::start();
    let n1 = Gateway::node(&redis, &[]);
    let n2 = Gateway::node(&redis, &[]);
    let a = Agent::spawn_to(
        &[&n1],
        DEMO,
        &[("api.demo.localhost", up.url())],
        &["--connections", "1"],
    );
    a.connected().await;
    spdy_echo(&n2, &up).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_agent_is_an_abnormal_close_not_a_clean_one() {
    let up = WsUpstream::start().await;
    let gw = Gateway::start(&[]);
    let agent = Agent::start(&gw, DEMO, &[("ws.demo.localhost", up.url())]).await;
    let (mut ws, _) = ws_connect(gw.addr, "ws.demo.localhost", "/", None).await;
    ws.send(Message::Text("ping".into())).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::Text("ping".into()));
    drop(agent); // aborted, as a crash would
    let end = tokio::time::timeout(HANG, ws.next())
        .await
        .expect("the session ends");
    match end {
        // 1006: the connection ended without a closing handshake.
        None | Some(Err(_)) => {}
        Some(Ok(Message::Close(f))) => panic!("a lost tunnel looked deliberate: {f:?}"),
        Some(Ok(other)) => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_sessions_on_one_tunnel_without_cross_talk() {
    let up = WsUpstream::start().await;
    let gw = Gateway::start(&[]);
    let _a = Agent::spawn(
        &gw,
        DEMO,
        &[("ws.demo.localhost", up.url())],
        &["--connections", "1"],
    );
    _a.connected().await;
    let addr = gw.addr;
    let sessions = (0..500u32).map(|i| {
        tokio::spawn(async move {
            let (mut ws, _) = ws_connect(addr, "ws.demo.localhost", "/", None).await;
            for j in 0..5u32 {
                let m = format!("session {i} message {j}");
                ws.send(Message::Text(m.clone().into())).await.unwrap();
                assert_eq!(next(&mut ws).await, Message::Text(m.into()));
            }
            let _ = ws.close(None).await;
        })
    });
    for s in futures_util::future::join_all(sessions).await {
        s.unwrap();
    }
    gw.wait_metric("gateway_streams 0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_slows_no_other_session() {
    let up = WsUpstream::start().await;
    let gw = Gateway::start(&[]);
    let _a = Agent::start(&gw, DEMO, &[("ws.demo.localhost", up.url())]).await;
    // The slow one sends far more than a window's worth and never reads its echoes.
    let (mut slow, _) = ws_connect(gw.addr, "ws.demo.localhost", "/", None).await;
    let big = Bytes::from(vec![1u8; 256 * 1024]);
    let stuffer = tokio::spawn(async move {
        for _ in 0..64 {
            if tokio::time::timeout(
                Duration::from_secs(2),
                slow.send(Message::Binary(big.clone())),
            )
            .await
            .is_err()
            {
                break; // backpressure reached the sender: what should happen
            }
        }
        slow
    });
    // Meanwhile another session on the same tunnel round-trips as usual.
    let (mut fast, _) = ws_connect(gw.addr, "ws.demo.localhost", "/", None).await;
    for i in 0..200 {
        let m = format!("fast {i}");
        fast.send(Message::Text(m.clone().into())).await.unwrap();
        assert_eq!(next(&mut fast).await, Message::Text(m.into()));
    }
    let _slow = stuffer.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_of_another_protocol_are_refused_with_both_versions_named() {
    let gw = Gateway::start(&[]);
    let mut a = FakeAgent::connect(&gw, Some(DEMO.1), None).await.unwrap();
    a.send_text(r#"{"type":"register","payload":{"cluster":"demo","agent_version":"0.0.1"}}"#)
        .await;
    let refusal = a.recv_text().await;
    assert!(refusal.contains("register_error"), "{refusal}");
    assert!(
        refusal.contains("protocol 1") && refusal.contains("protocol 3"),
        "{refusal}"
    );
}

/// An agent whose one rule comes from a config file (for the origin TLS keys).
fn agent_with_rule(gw: &Gateway, dir: &std::path::Path, rule: &str) -> Agent {
    let path = dir.join(format!("agent-{}.yaml", rand_suffix()));
    std::fs::write(
        &path,
        format!("ingress:\n  - hostname: tls.demo.localhost\n{rule}"),
    )
    .unwrap();
    Agent::spawn(
        gw,
        DEMO,
        &[],
        &["--config", path.to_str().unwrap(), "--connections", "1"],
    )
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Status and body of `path` on `tls.demo.localhost` through a new gateway and an agent with
/// `rule`.
async fn get_through(dir: &std::path::Path, rule: &str, path: &str) -> (u16, String) {
    let gw = Gateway::start(&[]);
    let a = agent_with_rule(&gw, dir, rule);
    a.connected().await;
    let r = common::client()
        .get(gw.url("tls.demo.localhost", path))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstreams_with_a_private_ca_and_a_wrong_one() {
    use common::upstream::{TestCa, TlsUpstream};
    let dir = std::env::temp_dir().join(format!("tg-tls-{}", rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = TestCa::new("upstream.test");
    let up = TlsUpstream::start(&ca).await;
    std::fs::write(dir.join("ca.pem"), &ca.ca_pem).unwrap();
    let other = TestCa::new("upstream.test");
    std::fs::write(dir.join("other.pem"), &other.ca_pem).unwrap();
    // The right CA and the certificate's name: served, with the Host override at the upstream.
    let (status, text) = get_through(
        &dir,
        &format!(
            "    service: {}\n    ca_file: {}\n    origin_server_name: upstream.test\n    http_host_header: internal.svc\n",
            up.url(),
            dir.join("ca.pem").display()
        ),
        "/headers",
    )
    .await;
    assert_eq!(status, 200);
    assert!(text.contains("host: internal.svc"), "{text}");
    // Another CA: refused, with a clear error in the agent's log and a plain 502 for the
    // client (no internal detail).
    let (status, body) = get_through(
        &dir,
        &format!(
            "    service: {}\n    ca_file: {}\n    origin_server_name: upstream.test\n",
            up.url(),
            dir.join("other.pem").display()
        ),
        "/hello",
    )
    .await;
    assert_eq!(status, 502);
    assert!(
        !body.contains("certificate"),
        "internal detail leaked: {body}"
    );
    // The explicit opt-out of verification: served.
    let rule = format!("    service: {}\n    no_tls_verify: true\n", up.url());
    assert_eq!(
        get_through(&dir, &rule, "/hello").await,
        (200, "hello".into())
    );
    let _ = std::fs::remove_dir_all(&dir);
}
