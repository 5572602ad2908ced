//! What clients and agents see when something is wrong: clear statuses, nothing hangs, a bad
//! agent never hurts the node or another tenant.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::upstream::expect_pattern;
use common::{Agent, DEMO, FakeAgent, Gateway, HANG, OTHER, Upstream, client, raw_request};
use futures_util::StreamExt;
use tunnelgate_agent::Status;

const APP: &str = "app.demo.localhost";

/// Waits until the gateway has seen the agent's tunnel close (a request racing the close may
/// still be sent down the closing tunnel and fail with 502) and returns the first 503.
async fn until_offline(gw: &Gateway, host: &str) -> reqwest::Response {
    let start = std::time::Instant::now();
    loop {
        let r = client().get(gw.url(host, "/hello")).send().await.unwrap();
        if r.status() == 503 {
            return r;
        }
        assert!(
            [200, 502].contains(&r.status().as_u16()),
            "unexpected {}",
            r.status()
        );
        assert!(start.elapsed() < HANG, "the cluster never went offline");
        tokio::task::yield_now().await;
    }
}

/// Checks status, error code header and a one-line body mentioning `says`.
async fn expect_error(resp: reqwest::Response, status: u16, code: &str, says: &str) {
    assert_eq!(resp.status(), status);
    assert_eq!(resp.headers()["x-tunnelgate-error"], code);
    let body = resp.text().await.unwrap();
    assert_eq!(body.lines().count(), 1, "one-line body: {body:?}");
    assert!(body.contains(says), "body {body:?} should say {says:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_status() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&["--response-timeout", "300ms", "--max-header-bytes", "4096"]);
    let closed_port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let agent = Agent::start(
        &gw,
        DEMO,
        &[
            (APP, up.url()),
            (
                "refused.demo.localhost",
                format!("http://127.0.0.1:{closed_port}"),
            ),
        ],
    )
    .await;
    let c = client();
    assert_eq!(
        c.get(gw.url(APP, "/hello")).send().await.unwrap().status(),
        200
    );

    expect_error(
        c.get(gw.url("nobody.demo.localhost", "/"))
            .send()
            .await
            .unwrap(),
        404,
        "no_route",
        "no route for host nobody.demo.localhost",
    )
    .await;
    expect_error(
        c.get(gw.url("refused.demo.localhost", "/"))
            .send()
            .await
            .unwrap(),
        502,
        "upstream_refused",
        "refused",
    )
    .await;
    expect_error(
        c.get(gw.url(APP, "/hang")).send().await.unwrap(),
        504,
        "upstream_timeout",
        "did not respond",
    )
    .await;
    let big = "v".repeat(5000);
    expect_error(
        c.get(gw.url(APP, "/hello"))
            .header("x-big", big)
            .send()
            .await
            .unwrap(),
        431,
        "headers_too_large",
        "larger than 4096",
    )
    .await;

    // Ambiguous requests never reach the upstream.
    let port = gw.addr.port();
    let r = raw_request(
        gw.addr,
        format!("GET http://other.demo.localhost:{port}/ HTTP/1.1\r\nHost: {APP}:{port}\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(r.contains("different hosts"), "{r}");
    // (Refused by actix-http's parser, without a reason, where the reason is "".)
    for (bad, why) in [
        (
            format!(
                "POST /echo HTTP/1.1\r\nHost: {APP}\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
            "",
        ),
        (
            format!(
                "POST /echo HTTP/1.1\r\nHost: {APP}\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy"
            ),
            "",
        ),
        (
            format!("GET /hello HTTP/1.1\r\nHost: {APP}\r\nHost: bank.other.localhost\r\n\r\n"),
            "more than one Host header",
        ),
        ("GET /hello HTTP/1.1\r\n\r\n".to_string(), "no Host header"),
        (
            "GET /hello HTTP/1.1\r\nHost: bad host!\r\n\r\n".to_string(),
            "invalid Host header",
        ),
    ] {
        let r = raw_request(gw.addr, bad.as_bytes()).await;
        assert!(r.starts_with("HTTP/1.1 400"), "{bad:?} → {r}");
        assert!(r.contains(why), "{bad:?} → {r}");
    }

    // The agent goes away: its routes stay known, the cluster is offline.
    agent.stop().await;
    let r = until_offline(&gw, APP).await;
    assert_eq!(r.headers()["retry-after"], "1");
    expect_error(r, 503, "cluster_offline", "cluster demo is offline").await;

    let metrics = gw.metrics().await;
    for needle in [
        r#"gateway_requests_total{cluster_uuid="",status_code="404"} 1"#,
        r#"gateway_requests_total{cluster_uuid="demo",status_code="502"} 1"#,
        r#"gateway_requests_total{cluster_uuid="demo",status_code="504"} 1"#,
        r#"gateway_requests_total{cluster_uuid="demo",status_code="503"} 1"#,
        r#"gateway_tunnel_health{cluster_uuid="demo"} 0"#,
        r#"gateway_active_routes{cluster_uuid="demo"} 2"#,
        "gateway_request_duration_seconds_bucket",
    ] {
        assert!(
            metrics.contains(needle),
            "metrics lack {needle}:\n{metrics}"
        );
    }
    for (addr, path, status) in [
        (gw.admin, "/healthz", 200),
        (gw.admin, "/readyz", 200),
        // The public listener answers liveness on the gateway's own names, and never shows
        // metrics or readiness (they name every tenant).
        (gw.addr, "/healthz", 200),
        (gw.addr, "/metrics", 404),
        (gw.addr, "/readyz", 404),
    ] {
        let got = c.get(format!("http://{addr}{path}")).send().await.unwrap();
        assert_eq!(got.status(), status, "{addr}{path}");
    }
    // Nor on a tenant's name that has no such route.
    let got = c
        .get(gw.url("nothing.demo.localhost", "/metrics"))
        .send()
        .await
        .unwrap();
    assert_ne!(got.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_are_authenticated_before_the_upgrade() {
    use tokio_tungstenite::tungstenite::Error;
    let gw = Gateway::start(&[]);
    let status = |e: Error| match e {
        Error::Http(r) => r.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    };
    assert_eq!(
        status(FakeAgent::connect(&gw, None, None).await.err().unwrap()),
        401
    );
    assert_eq!(
        status(
            FakeAgent::connect(&gw, Some("wrong-token"), None)
                .await
                .err()
                .unwrap()
        ),
        401
    );
    gw.wait_log("agent refused: unknown token").await;
    // A valid token that claims another cluster.
    assert_eq!(
        status(
            FakeAgent::connect(&gw, Some(DEMO.1), Some("other"))
                .await
                .err()
                .unwrap()
        ),
        403
    );
    gw.wait_log("token belongs to another cluster").await;
    // Or claims it in register.
    let mut fake = FakeAgent::connect(&gw, Some(DEMO.1), None).await.unwrap();
    fake.send_text(
        r#"{"type":"register","payload":{"cluster":"other","agent_version":"x","protocol":2}}"#,
    )
    .await;
    assert!(fake.recv_text().await.contains("register_error"));
    assert_eq!(fake.closed().await.0, 1008);
    // The real agent of the other cluster gets nothing of demo's.
    let up = Upstream::start().await;
    let agent = Agent::start(
        &gw,
        OTHER,
        &[
            ("www.other.localhost", up.url()),
            ("bank.demo.localhost", up.url()),
        ],
    )
    .await;
    let Status::Connected {
        accepted, rejected, ..
    } = agent.connected().await
    else {
        unreachable!()
    };
    assert_eq!(accepted, 1);
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].host, "bank.demo.localhost");
    assert!(
        rejected[0]
            .reason
            .contains("may only publish other.localhost"),
        "{}",
        rejected[0].reason
    );
    // The name stays demo's: with demo's agent away it is offline, never other's upstream.
    let r = client()
        .get(gw.url("bank.demo.localhost", "/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-tunnelgate-error"], "cluster_offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_agent_input_closes_only_that_tunnel() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&[]);
    let _good = Agent::start(&gw, DEMO, &[(APP, up.url())]).await;
    let c = client();
    let bad_inputs: Vec<(&str, Result<String, Vec<u8>>)> = vec![
        ("truncated frame", Err(vec![0, 0, 1])),
        ("unknown kind", Err(vec![42, 0, 0, 0, 1])),
        ("stream never opened", Err(vec![0, 0, 0, 0, 9, b'x'])),
        ("zero stream", Err(vec![1, 0, 0, 0, 0])),
        ("oversized frame", Err([&[0u8, 0, 0, 0, 1][..], &[7u8; 70 * 1024]].concat())),
        ("invalid json", Ok("{not json".into())),
        (
            "unknown type",
            Ok(r#"{"type":"reboot","payload":{}}"#.into()),
        ),
        (
            "gateway-only message",
            Ok(r#"{"type":"register_success","payload":{"node_id":"x","tunnel_id":"y","heartbeat_interval_ms":1,"stream_window":1,"max_streams":1}}"#.into()),
        ),
        (
            "second register",
            Ok(
                    r#"{"type":"register","payload":{"cluster":"other","agent_version":"x","protocol":2}}"#
                        .into(),
                ),
        ),
    ];
    for (what, input) in bad_inputs {
        let mut fake = FakeAgent::connect(&gw, Some(OTHER.1), None).await.unwrap();
        fake.register("other", "evil.other.localhost").await;
        match input {
            Ok(text) => fake.send_text(&text).await,
            Err(bytes) => fake.send_binary(bytes).await,
        }
        let (code, reason) = fake.closed().await;
        assert_eq!(code, 1002, "{what}: closed with {code} {reason}");
        // The node and the other tenant carry on.
        let r = c.get(gw.url(APP, "/hello")).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "hello", "after {what}");
    }
    // Frames before register close the connection too.
    let mut fake = FakeAgent::connect(&gw, Some(OTHER.1), None).await.unwrap();
    fake.send_binary(vec![0, 0, 0, 0, 1]).await;
    assert_eq!(fake.closed().await.0, 1002);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(r#"gateway_tunnel_errors_total{reason="protocol"} 10"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_agent_is_dropped_after_missed_heartbeats() {
    let gw = Gateway::start(&["--heartbeat-interval", "200ms"]);
    let mut fake = FakeAgent::connect(&gw, Some(OTHER.1), None).await.unwrap();
    fake.register("other", "www.other.localhost").await;
    // It sends nothing more.
    let (code, reason) = fake.closed().await;
    assert_eq!(code, 1001, "{reason}");
    assert!(reason.contains("heartbeat"), "{reason}");
    let r = client()
        .get(gw.url("www.other.localhost", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_mid_response_fails_the_client_fast() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&[]);
    let agent = Agent::start(&gw, DEMO, &[(APP, up.url())]).await;
    let c = client();
    let resp = c
        .get(gw.url(APP, "/bytes?n=1073741824"))
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    assert!(!body.next().await.unwrap().unwrap().is_empty());
    // A crash: the agent's tasks and sockets vanish without a goodbye.
    drop(agent);
    let outcome = tokio::time::timeout(HANG, async {
        while let Some(chunk) = body.next().await {
            if chunk.is_err() {
                return Err(());
            }
        }
        Ok(())
    })
    .await
    .expect("the client must not hang");
    assert!(
        outcome.is_err(),
        "a cut response must end in an error, not look complete"
    );
    let r = c.get(gw.url(APP, "/hello")).send().await.unwrap();
    assert_eq!(r.status(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_brings_routes_back() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&[]);
    let c = client();
    let agent = Agent::start(&gw, DEMO, &[(APP, up.url())]).await;
    assert_eq!(
        c.get(gw.url(APP, "/hello")).send().await.unwrap().status(),
        200
    );
    agent.stop().await;
    until_offline(&gw, APP).await;
    let _agent = Agent::start(&gw, DEMO, &[(APP, up.url())]).await;
    let r = c.get(gw.url(APP, "/sized?n=100000")).send().await.unwrap();
    expect_pattern(r, 100_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reconnects_by_itself_after_the_gateway_restarts() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&[]);
    let agent = Agent::start(&gw, DEMO, &[(APP, up.url())]).await;
    let mut status = agent.status.clone();
    drop(gw);
    tokio::time::timeout(
        HANG,
        status.wait_for(|s| matches!(s, Status::Disconnected { .. })),
    )
    .await
    .expect("agent noticed")
    .unwrap();
    // The agent keeps retrying with backoff; it reports why.
    let Status::Disconnected { error, retry_in } = status.borrow().clone() else {
        unreachable!()
    };
    assert!(retry_in <= Duration::from_millis(500), "{retry_in:?}");
    assert!(!error.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_with_curl() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&[]);
    let _agent = Agent::start(&gw, DEMO, &[(APP, up.url())]).await;
    // curl resolves *.localhost to loopback by itself, as in the README.
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--noproxy",
            "*",
            "-w",
            " %{http_code}",
            &gw.url(APP, "/hello"),
        ])
        .output()
        .await
        .expect("curl runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello 200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_tunnel_answers_busy_and_recovers() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&["--max-streams-per-tunnel", "2"]);
    let _agent = Agent::start(&gw, DEMO, &[(APP, up.url())]).await;
    let c = client();
    // Two requests held open by the upstream fill the tunnel.
    let held: Vec<_> = (0..2)
        .map(|_| {
            let c = c.clone();
            let url = gw.url(APP, "/gate");
            tokio::spawn(async move { c.get(url).send().await.unwrap().text().await.unwrap() })
        })
        .collect();
    // Wait until both hold a stream (the gauge counts open streams), then one more is refused.
    gw.wait_metric("gateway_streams 2").await;
    let r = c.get(gw.url(APP, "/hello")).send().await.unwrap();
    expect_error(r, 503, "tunnel_busy", "stream limit").await;
    up.gate.add_permits(2);
    for h in held {
        assert_eq!(h.await.unwrap(), "opened");
    }
    // The finished streams leave the tunnel's table as their clients' bodies end; then the
    // tunnel takes requests again.
    let start = std::time::Instant::now();
    while c.get(gw.url(APP, "/hello")).send().await.unwrap().status() != 200 {
        assert!(start.elapsed() < HANG, "the tunnel never recovered");
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_stopping_gracefully_finishes_its_requests_and_loses_none() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let up = Upstream::start().await;
    let gw = Gateway::start(&[]);
    let leaving = Agent::start(&gw, DEMO, &[(APP, up.url())]).await;
    let c = client();
    // A request in flight on the leaving agent (the only one so far), held by the upstream.
    let held = {
        let (c, url) = (c.clone(), gw.url(APP, "/gate"));
        tokio::spawn(async move {
            let r = c.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    gw.wait_metric("gateway_streams 1").await;
    let _staying = Agent::start(&gw, DEMO, &[(APP, up.url())]).await;
    gw.wait_metric("gateway_tunnels 2").await;
    // Requests keep coming while the leaving agent drains and closes, and a little after.
    let stopped = Arc::new(AtomicBool::new(false));
    let load = {
        let (c, url, stopped) = (c.clone(), gw.url(APP, "/hello"), stopped.clone());
        tokio::spawn(async move {
            let (mut codes, mut after) = (Vec::new(), 0);
            while after < 50 && codes.len() < 100_000 {
                let r = c.get(&url).send().await;
                codes.push(r.map(|r| r.status().as_u16()).unwrap_or(0));
                after += usize::from(stopped.load(Ordering::Acquire));
            }
            codes
        })
    };
    let stop = tokio::spawn(leaving.stop());
    gw.wait_log("agent draining").await;
    // The agent waits for its request in flight; once the upstream answers, it closes.
    up.gate.add_permits(1);
    assert_eq!(held.await.unwrap(), (200, "opened".to_string()));
    stop.await.unwrap();
    gw.wait_log("tunnel closed").await;
    stopped.store(true, Ordering::Release);
    let codes = load.await.unwrap();
    let failed: Vec<_> = codes.iter().filter(|&&c| c != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        codes.len()
    );
    eprintln!("{} requests during the drain, none lost", codes.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_connection_slots_and_one_node_settle_on_a_tunnel_per_worker_without_a_redial_loop() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let up = Upstream::start().await;
    let gw = Gateway::start(&[]);
    // A counting TCP relay in front of the gateway: every dial the agent makes goes through it.
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let dials = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = dials.clone();
    let target = gw.addr;
    let relay_task = tokio::spawn(async move {
        while let Ok((mut inbound, _)) = relay.accept().await {
            counted.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    let agent = Agent::spawn_urls(
        &[format!("ws://{relay_addr}")],
        DEMO,
        &[("app.demo.localhost", up.url())],
        &["--connections", "2"],
    );
    agent.connected().await;
    let at_connect = dials.load(Ordering::Relaxed);
    // The second slot finds the same node a few times, then takes a tunnel on the node's other
    // worker (ADR 0013; the test node runs two), and no more dials follow.
    gw.wait_metric("gateway_tunnels 2").await;
    let settled = dials.load(Ordering::Relaxed);
    assert!(
        settled <= 3 + 3 + 1,
        "{settled} dials ({at_connect} at connect) before a tunnel on each worker"
    );
    // (Backoff 50–500 ms: a redial loop would make ~9 dials in these 3 s.)
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = dials.load(Ordering::Relaxed);
    assert_eq!(later, settled, "the slots keep redialling");
    let r = client()
        .get(gw.url("app.demo.localhost", "/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    relay_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_tunnel_is_found_by_a_probe_and_replaced() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    // Heartbeats every 300 ms: a tunnel with a stream waiting and nothing of it for 300 ms is
    // probed, and the probe has 300 ms.
    let gw = Gateway::start(&["--heartbeat-interval", "300ms"]);
    let up = Upstream::start().await;
    // A wedged agent: it registers, publishes the route and keeps sending heartbeats, but never
    // serves a stream.
    let mut wedged = FakeAgent::connect(&gw, Some(DEMO.1), None).await.unwrap();
    wedged.register(DEMO.0, APP).await;
    let pending = tokio::spawn(client().get(gw.url(APP, "/hello")).send());
    let started = std::time::Instant::now();
    let mut beat = tokio::time::interval(Duration::from_millis(100));
    let mut probes = 0;
    let (code, reason) = loop {
        tokio::select! {
            _ = beat.tick() => {
                let hb = r#"{"type":"heartbeat","payload":{"sent_at_ms":1}}"#;
                wedged.ws.send(Message::Text(hb.into())).await.unwrap();
            }
            m = wedged.ws.next() => match m {
                Some(Ok(Message::Text(t))) if t.contains(r#""probe":true"#) => probes += 1,
                Some(Ok(Message::Close(Some(f)))) => break (u16::from(f.code), f.reason.to_string()),
                Some(Ok(_)) => {}
                other => panic!("tunnel ended without a close frame: {other:?}"),
            },
        }
        assert!(
            started.elapsed() < HANG,
            "the wedged tunnel was never closed"
        );
    };
    assert_eq!(probes, 1, "one probe, unanswered");
    assert_eq!(code, 1011, "{reason}");
    assert!(reason.contains("probe went unanswered"), "{reason}");
    // The request stuck on it fails instead of hanging for its response timeout.
    let r = tokio::time::timeout(HANG, pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.status(), 502);
    assert!(
        gw.metrics()
            .await
            .contains(r#"gateway_tunnel_errors_total{reason="wedged"} 1"#)
    );

    // A working agent takes the cluster's traffic. A live tunnel waiting for a slow upstream
    // is probed too, answers, and stays.
    let agent = Agent::start(&gw, DEMO, &[(APP, up.url())]).await;
    let r = client().get(gw.url(APP, "/hello")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let slow = tokio::spawn(client().get(gw.url(APP, "/hang")).send());
    gw.wait_metric(r#"gateway_tunnel_probes_total{reason="answered"}"#)
        .await;
    let r = client().get(gw.url(APP, "/hello")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = gw.metrics().await;
    assert!(
        text.contains(r#"gateway_tunnel_errors_total{reason="wedged"} 1"#),
        "{text}"
    );
    assert!(matches!(*agent.status.borrow(), Status::Connected { .. }));
    slow.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_new_connections_get_503_with_retry_after() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::start(&["--max-connections", "3"]);
    // One request on a kept-alive connection; returns the response head, lower-cased.
    async fn ask(s: &mut tokio::net::TcpStream) -> String {
        s.write_all(b"GET / HTTP/1.1\r\nHost: nobody.invalid\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(HANG, s.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase()
    }
    // Three connections, each answered (so each is counted): the node's limit.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let head = ask(&mut s).await;
        assert!(head.starts_with("http/1.1 404"), "{head}");
        held.push(s);
    }
    // A fourth is told to come back, and closed; nothing was routed for it.
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = ask(&mut s).await;
    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert!(head.contains("retry-after: 1"), "{head}");
    assert!(head.contains("x-tunnelgate-error: overloaded"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    let mut rest = Vec::new();
    let end = tokio::time::timeout(HANG, s.read_to_end(&mut rest)).await;
    assert!(
        matches!(end, Ok(Ok(_))),
        "the gateway closes the connection"
    );
    // Said once, at the crossing, not once per refused request.
    gw.wait_log("at --max-connections").await;
    // The connections it holds are still served.
    assert!(ask(&mut held[0]).await.starts_with("http/1.1 404"));
    // One closes: a new connection is served again.
    drop(held.pop());
    let start = std::time::Instant::now();
    loop {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let head = ask(&mut s).await;
        if head.starts_with("http/1.1 404") {
            break;
        }
        assert!(head.starts_with("http/1.1 503"), "{head}");
        assert!(
            start.elapsed() < HANG,
            "the closed connection was never counted out"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let warned = gw
        .log_lines()
        .iter()
        .filter(|l| l.contains("at --max-connections") || l.contains("request failed"))
        .count();
    assert_eq!(warned, 1, "{:#?}", gw.log_lines());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_memory_new_requests_get_503_with_retry_after() {
    // Any running node is over 1 MiB: it sheds every new request.
    let gw = Gateway::start(&["--max-memory-mib", "1"]);
    let line = gw.wait_log("memory over --max-memory").await;
    assert!(line.contains(r#""max_mib":1"#), "{line}");
    let r = client().get(gw.url(APP, "/hello")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.headers()["x-tunnelgate-error"], "overloaded");
    // The internal listener still answers: operators can see why.
    assert!(gw.metrics().await.contains("gateway_build_info"));
}
