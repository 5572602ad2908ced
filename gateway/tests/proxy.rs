//! HTTP through the tunnel: bodies both ways, streaming, headers, concurrency, flow control.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::upstream::{expect_pattern, pattern_upload};
use common::{Agent, DEMO, Gateway, HANG, Upstream, client};
use futures_util::StreamExt;

const APP: &str = "app.demo.localhost";

async fn setup(extra: &[&str]) -> (Gateway, Upstream, Agent) {
    let up = Upstream::start().await;
    let gw = Gateway::start(extra);
    let agent = Agent::start(&gw, DEMO, &[(APP, up.url())]).await;
    (gw, up, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_post_put_and_chunked() {
    let (gw, _up, _agent) = setup(&[]).await;
    let c = client();
    let r = c.get(gw.url(APP, "/hello")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "hello");

    let body = "x".repeat(100_000);
    let r = c
        .post(gw.url(APP, "/echo"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), body);

    let r = c
        .put(gw.url(APP, "/echo"))
        .header("content-type", "application/json")
        .body(r#"{"k":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.text().await.unwrap(), r#"{"k":1}"#);

    // A chunked upload (no Content-Length) arrives whole.
    let r = c
        .post(gw.url(APP, "/sink"))
        .body(pattern_upload(300_001))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "300001 intact");

    let r = c.get(gw.url(APP, "/chunked")).send().await.unwrap();
    assert_eq!(
        r.headers()
            .get("transfer-encoding")
            .map(|v| v.to_str().unwrap()),
        Some("chunked")
    );
    assert_eq!(r.text().await.unwrap(), "first,second,third");

    // A sized response keeps its Content-Length.
    let r = c.get(gw.url(APP, "/sized?n=12345")).send().await.unwrap();
    assert_eq!(r.headers()["content-length"], "12345");
    expect_pattern(r, 12345).await;

    // Upstream statuses pass through untouched.
    let r = c.get(gw.url(APP, "/status/418")).send().await.unwrap();
    assert_eq!(r.status(), 418);
    let r = c.head(gw.url(APP, "/sized?n=777")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "777");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_are_rewritten_at_the_edge() {
    let (gw, _up, _agent) = setup(&[]).await;
    let c = client();
    let text = c
        .get(gw.url(APP, "/headers"))
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-host", "bank.other.localhost")
        .header("forwarded", "for=6.6.6.6")
        .header("authorization", "Bearer user-token")
        .header("cookie", "session=abc")
        .header("connection", "keep-alive, x-client-hop")
        .header("x-client-hop", "must-not-pass")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let has = |line: &str| text.lines().any(|l| l == line);
    assert!(has(&format!("host: {APP}:{}", gw.addr.port())), "{text}");
    assert!(has("x-forwarded-for: 127.0.0.1"), "{text}");
    assert!(has("x-forwarded-proto: http"), "{text}");
    assert!(
        has(&format!("x-forwarded-host: {APP}:{}", gw.addr.port())),
        "{text}"
    );
    assert!(has("authorization: Bearer user-token"), "{text}");
    assert!(has("cookie: session=abc"), "{text}");
    assert!(
        !text.contains("6.6.6.6"),
        "client-written forwarding headers leaked: {text}"
    );
    assert!(!text.contains("bank.other"), "{text}");
    assert!(!text.contains("x-client-hop"), "{text}");

    let r = c.get(gw.url(APP, "/cookies")).send().await.unwrap();
    let cookies: Vec<_> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    // The third one's `Domain=localhost` (the gateway's shared parent) is dropped.
    assert_eq!(cookies, vec!["a=1; Path=/", "b=2; Path=/", "c=3; Path=/"]);
    assert!(
        r.headers().get("x-upstream-hop").is_none(),
        "hop-by-hop response header passed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_requests_on_one_tunnel() {
    let (gw, _up, _agent) = setup(&[]).await;
    let c = client();
    let url = gw.url(APP, "/echo");
    let tasks: Vec<_> = (0..200usize)
        .map(|i| {
            let c = c.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let body = format!("request-{i}-").repeat(1 + (i * 37) % 5000);
                let got = c.post(&url).body(body.clone()).send().await?.text().await?;
                Ok::<_, reqwest::Error>((body, got))
            })
        })
        .collect();
    for t in tasks {
        let (sent, got) = tokio::time::timeout(HANG, t)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), sent.len());
        assert!(
            got == sent,
            "cross-talk: a response carried another request's body"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gigabyte_up_and_down_in_bounded_memory() {
    const GIB: u64 = 1 << 30;
    let (gw, _up, _agent) = setup(&[]).await;
    let c = client();
    // Warm up the paths so the idle figure includes the worker and pool set-up.
    expect_pattern(
        c.get(gw.url(APP, "/bytes?n=1000000")).send().await.unwrap(),
        1_000_000,
    )
    .await;
    let (idle, _) = gw.rss();

    let r = c
        .get(gw.url(APP, &format!("/bytes?n={GIB}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    expect_pattern(r, GIB).await;

    let r = c
        .post(gw.url(APP, "/sink"))
        .body(pattern_upload(GIB))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), format!("{GIB} intact"));

    let (_, peak) = gw.rss();
    let grew = peak.saturating_sub(idle);
    eprintln!(
        "gateway RSS idle {} MiB, peak {} MiB",
        idle >> 20,
        peak >> 20
    );
    assert!(
        grew < 64 << 20,
        "gateway peak RSS grew {} MiB over idle",
        grew >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_does_not_stall_a_fast_one() {
    let (gw, _up, _agent) = setup(&[]).await;
    let c = client();
    const BIG: u64 = 256 << 20;
    // The slow client reads one chunk and then nothing.
    let slow = c
        .get(gw.url(APP, &format!("/bytes?n={BIG}")))
        .send()
        .await
        .unwrap();
    let mut slow_body = slow.bytes_stream();
    let first = slow_body.next().await.unwrap().unwrap();
    assert!(!first.is_empty());

    // Meanwhile a fast client downloads 64 MiB on the same tunnel, to the end.
    let fast = c
        .get(gw.url(APP, "/bytes?n=67108864"))
        .send()
        .await
        .unwrap();
    tokio::time::timeout(HANG, expect_pattern(fast, 64 << 20))
        .await
        .expect("fast download finished");

    // The slow stream is still held back by its own window: most of it was never sent.
    let (_, peak) = gw.rss();
    assert!(
        peak < 200 << 20,
        "gateway buffered the slow stream: peak {} MiB",
        peak >> 20
    );
    drop(slow_body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_through_the_tunnel() {
    use common::upstream::{WsUpstream, ws_connect, ws_echo_roundtrip};
    let ws_up = WsUpstream::start().await;
    let gw = Gateway::start(&[]);
    let _agent = Agent::start(&gw, DEMO, &[("ws.demo.localhost", ws_up.url())]).await;
    let (mut ws, resp) = ws_connect(
        gw.addr,
        "ws.demo.localhost",
        "/chat?room=1",
        Some("superchat, chat"),
    )
    .await;
    assert_eq!(resp.status(), 101);
    assert_eq!(
        resp.headers()["sec-websocket-protocol"],
        "chat",
        "the upstream's choice reaches the client"
    );
    ws_echo_roundtrip(&mut ws).await;
    // Plain HTTP to a WebSocket-only upstream is the upstream's answer, not a hang.
    let r = client()
        .get(gw.url("ws.demo.localhost", "/"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error() || r.status().is_server_error());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_serves_its_metrics() {
    let logs = common::capture_logs();
    let gw = Gateway::start(&[]);
    let up = Upstream::start().await;
    // Nothing listens on `gone`'s port: its requests fail at the upstream.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone_url = format!("http://{}", gone.local_addr().unwrap());
    drop(gone);
    let agent = Agent::spawn(
        &gw,
        DEMO,
        &[
            ("app.demo.localhost", up.url()),
            ("gone.demo.localhost", gone_url),
        ],
        &["--metrics-listen", "127.0.0.1:0", "--connections", "1"],
    );
    agent.connected().await;
    let line = common::wait_captured(&logs, &["metrics endpoint listening"]).await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let addr = v["fields"]["addr"].as_str().unwrap().to_string();
    let c = client();
    // The second request to `app` goes on the first one's connection.
    for (host, status) in [
        ("app.demo.localhost", 200),
        ("app.demo.localhost", 200),
        ("gone.demo.localhost", 502),
    ] {
        let r = c.get(gw.url(host, "/hello")).send().await.unwrap();
        assert_eq!(r.status(), status, "{host}");
    }
    // A stream's task ends just after its last frame is sent, so the client may have its
    // answer before the gauge is down: read until it is.
    let text = common::wait_metric_at(&format!("http://{addr}/metrics"), "agent_streams 0").await;
    for want in [
        "agent_tunnels 1",
        "agent_routes 2",
        "agent_streams 0",
        r#"agent_upstream_errors_total{kind="upstream_refused"} 1"#,
        r#"agent_upstream_connections_total{how="new"} 1"#,
        r#"agent_upstream_connections_total{how="pooled"} 1"#,
        "agent_reconnects_total 0",
        "agent_build_info{version=",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(want)),
            "no {want:?} in:\n{text}"
        );
    }
    let health = c
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let other = c
        .get(format!("http://{addr}/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    // The endpoint goes with the agent (its task is aborted as `run` returns: soon after).
    agent.stop().await;
    let start = std::time::Instant::now();
    while client()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .is_ok()
    {
        assert!(
            start.elapsed() < HANG,
            "the metrics endpoint outlived its agent"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
