//! Tenants cannot harm each other: each class of hole an outside probe found, tried again
//! against the real binaries, from a raw socket at the edge and from a hostile agent built on
//! the project's own `proto` crate, checking what the client and the upstream receive.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Agent, DEMO, FakeAgent, Gateway, HANG, OTHER, Redis, Upstream, client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Writes `bytes` on one connection from `from` and reads until `done` holds for what came
/// back, or the server closes (then whatever came is returned).
async fn exchange_from(
    from: &str,
    addr: SocketAddr,
    bytes: &[u8],
    done: impl Fn(&str) -> bool,
) -> String {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut s = sock.connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = tokio::time::timeout(HANG, s.read(&mut buf))
            .await
            .expect("answer in time")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if done(&String::from_utf8_lossy(&out)) {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn exchange(addr: SocketAddr, bytes: &[u8], done: impl Fn(&str) -> bool) -> String {
    exchange_from("127.0.0.1", addr, bytes, done).await
}

fn statuses(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with("HTTP/1.1 "))
        .map(|l| l[9..12].to_string())
        .collect()
}

/// A hostile agent of `demo` publishing `host`, and a gateway.
async fn hostile(host: &str) -> (Gateway, FakeAgent) {
    hostile_in(2, host).await
}

/// [`hostile`], speaking wire protocol `protocol`.
async fn hostile_in(protocol: u32, host: &str) -> (Gateway, FakeAgent) {
    let gw = Gateway::start(&[]);
    let mut a = FakeAgent::connect(&gw, Some(DEMO.1), None).await.unwrap();
    let ack = a.register_routes_in(protocol, "demo", &[(host, "/")]).await;
    assert_eq!(ack["accepted"].as_array().unwrap().len(), 1, "{ack}");
    (gw, a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_body_follows_204_304_or_head_whatever_the_agent_sends() {
    for protocol in [2, 3] {
        no_body_follows_in(protocol).await;
    }
}

/// The body an agent sends after a HEAD answer, a 204 or a 304 never reaches the client:
/// as DATA (protocol 2) or whole in the head frame (protocol 3).
async fn no_body_follows_in(protocol: u32) {
    let (gw, mut agent) = hostile_in(protocol, "app.demo.localhost").await;
    let evil = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nEVIL!";
    for (first, status) in [("GET /a", 204u16), ("GET /a", 304), ("HEAD /a", 200)] {
        let req = format!(
            "{first} HTTP/1.1\r\nHost: app.demo.localhost\r\n\r\nGET /b HTTP/1.1\r\nHost: app.demo.localhost\r\n\r\n"
        );
        let client = tokio::spawn({
            let addr = gw.addr;
            async move { exchange(addr, req.as_bytes(), |t| t.contains("second")).await }
        });
        let (id, _) = agent.next_request().await;
        eprintln!("{first}: request 1 on stream {id}");
        agent
            .respond(id, status, &[("content-length", "38")], Some(evil))
            .await;
        // The request pipelined behind is answered, or (actix loses track of a HEAD when a
        // request is pipelined behind it) the connection ends after the first answer: either
        // way nothing the agent sent after the head reaches the client.
        let mut client = client;
        let got = tokio::select! {
            got = &mut client => got.unwrap(),
            (id2, req2) = agent.next_request() => {
                assert_eq!(req2["path"], "/b");
                agent
                    .respond(id2, 200, &[("content-length", "6")], Some(b"second"))
                    .await;
                client.await.unwrap()
            }
        };
        assert!(
            !got.contains("EVIL"),
            "protocol {protocol}, {first} → {status}: smuggled bytes reached the client:\n{got}"
        );
        let seen = statuses(&got);
        assert_eq!(seen[0], status.to_string(), "{got}");
        assert!(
            seen.len() == 1 || seen == [status.to_string(), "200".into()],
            "{got}"
        );
        if seen.len() == 2 {
            assert!(got.ends_with("second"), "{got}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_and_headers_from_the_agent_are_checked() {
    let (gw, mut agent) = hostile("app.demo.localhost").await;
    let cases: [(u16, &[(&str, &str)]); 5] = [
        (102, &[]),
        (999, &[]),
        (42, &[]),
        (200, &[("x-bad", "a\r\nset-cookie: stolen=1")]),
        (200, &[("content-length", "5"), ("content-length", "7")]),
    ];
    for (status, headers) in cases {
        let c = client();
        let url = gw.url("app.demo.localhost", "/x");
        let req = tokio::spawn(async move { c.get(url).send().await.unwrap() });
        let (id, _) = agent.next_request().await;
        agent.respond(id, status, headers, None).await;
        let resp = req.await.unwrap();
        assert_eq!(resp.status(), 502, "{status} {headers:?}");
        assert!(resp.headers().get("set-cookie").is_none());
        let body = resp.text().await.unwrap();
        assert!(!body.contains("stolen"), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_targets_cannot_leave_the_route() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&[]);
    let _a = Agent::start(&gw, DEMO, &[("app.demo.localhost", up.url())]).await;
    let ask = |req: &'static str| exchange(gw.addr, req.as_bytes(), |t| t.contains("\r\n\r\n"));
    // Asterisk-form OPTIONS goes as `*` to exactly the route's upstream (not to port 80).
    let got = exchange(
        gw.addr,
        b"OPTIONS * HTTP/1.1\r\nHost: app.demo.localhost\r\n\r\n",
        |t| t.contains("target:"),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.contains("target: *"), "{got}");
    // Anything else with `*` is refused, and so is CONNECT.
    assert!(
        ask("GET * HTTP/1.1\r\nHost: app.demo.localhost\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 400")
    );
    let connect = ask("CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: app.demo.localhost\r\n\r\n").await;
    assert!(
        connect.starts_with("HTTP/1.1 405") || connect.starts_with("HTTP/1.1 400"),
        "{connect}"
    );
    // Dot segments are resolved before matching and the upstream gets what was matched.
    let c = client();
    for (path, seen) in [
        ("/api/../admin", "target: /admin"),
        ("/api/%2e%2e/admin", "target: /admin"),
        ("/api/./x/../y", "target: /api/y"),
        ("/api/a%2Fb", "target: /api/a%2Fb"),
    ] {
        let body = c
            .get(format!(
                "http://app.demo.localhost:{}{path}",
                gw.addr.port()
            ))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, seen, "{path}");
    }
    // Malformed escapes and backslashes are refused, not guessed at.
    for bad in ["/api/%zz", "/api\\..\\admin"] {
        let got = exchange(
            gw.addr,
            format!("GET {bad} HTTP/1.1\r\nHost: app.demo.localhost\r\n\r\n").as_bytes(),
            |t| t.contains("\r\n\r\n"),
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 400"), "{bad}: {got}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_tokens_cannot_remove_host_or_forwarding_headers() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&[]);
    let _a = Agent::start(&gw, DEMO, &[("app.demo.localhost", up.url())]).await;
    let req = "GET /headers HTTP/1.1\r\nHost: app.demo.localhost\r\n\
               Connection: host, x-forwarded-for, x-auth-user\r\nX-Auth-User: alice\r\n\
               X-Real-IP: 6.6.6.6\r\nTrue-Client-IP: 6.6.6.6\r\nX-Original-URL: /admin\r\n\
               X_Forwarded_For: 6.6.6.6\r\n\r\n";
    let got = exchange(gw.addr, req.as_bytes(), |t| t.contains("x-forwarded-host")).await;
    let lower = got.to_ascii_lowercase();
    assert!(lower.contains("\nhost: app.demo.localhost"), "{got}");
    assert!(!lower.contains("6.6.6.6"), "{got}");
    assert!(!lower.contains("x-original-url"), "{got}");
    assert!(lower.contains("x-forwarded-for: 127.0.0.1"), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_cannot_be_set_for_the_shared_domain() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&[]);
    let _a = Agent::start(&gw, DEMO, &[("app.demo.localhost", up.url())]).await;
    let r = client()
        .get(gw.url("app.demo.localhost", "/cookies"))
        .send()
        .await
        .unwrap();
    let cookies: Vec<String> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(cookies.len(), 3, "{cookies:?}");
    assert!(cookies.contains(&"c=3; Path=/".to_string()), "{cookies:?}");
    assert!(
        !cookies
            .iter()
            .any(|c| c.to_ascii_lowercase().contains("domain=localhost"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_own_names_are_never_a_tenants() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&["--public-host", "gw.demo.localhost"]);
    // A tenant claiming the gateway's name is refused in routes_ack.
    let mut a = FakeAgent::connect(&gw, Some(DEMO.1), None).await.unwrap();
    let ack = a
        .register_routes(
            "demo",
            &[("gw.demo.localhost", "/"), ("app.demo.localhost", "/")],
        )
        .await;
    let rejected = ack["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 1, "{ack}");
    assert!(
        rejected[0]["reason"]
            .as_str()
            .unwrap()
            .contains("gateway itself")
    );
    drop(a);
    // On a tenant's name, /v1/tunnel is the tenant's path: an agent dialling it reaches the
    // tenant's upstream (which answers 404), never the agent endpoint with its token.
    let _agent = Agent::start(&gw, DEMO, &[("app.demo.localhost", up.url())]).await;
    let mut req = format!("ws://app.demo.localhost:{}/v1/tunnel", gw.addr.port());
    let tunnel = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        req.as_str(),
    )
    .unwrap();
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let r = tokio_tungstenite::client_async(tunnel, stream).await;
    assert!(r.is_err(), "a tenant's name upgraded to the agent endpoint");
    req.clear();
    // On the gateway's name the endpoint is there (401 without a token).
    let got = exchange(
        gw.addr,
        b"GET /v1/tunnel HTTP/1.1\r\nHost: gw.demo.localhost\r\n\r\n",
        |t| t.contains("\r\n\r\n"),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 401"), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_guessing_is_throttled_per_source() {
    let gw = Gateway::start(&[]);
    let guess = |from: &'static str, token: String| {
        let addr = gw.addr;
        async move {
            let req = format!(
                "GET /v1/tunnel HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
                 Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            );
            exchange_from(from, addr, req.as_bytes(), |t| t.contains("\r\n\r\n")).await
        }
    };
    let mut throttled = None;
    for i in 0..200 {
        let got = guess("127.0.0.1", format!("guess-{i:032}")).await;
        if got.starts_with("HTTP/1.1 429") {
            throttled = Some((i, got));
            break;
        }
        assert!(got.starts_with("HTTP/1.1 401"), "{got}");
    }
    let (i, got) = throttled.expect("guessing is throttled");
    assert!(i <= 20, "throttled only after {i} guesses");
    assert!(got.to_ascii_lowercase().contains("retry-after:"), "{got}");
    // Even the right token waits now, from that source; another source is not affected.
    assert!(
        guess("127.0.0.1", DEMO.1.into())
            .await
            .starts_with("HTTP/1.1 429")
    );
    assert!(
        guess("127.0.0.2", DEMO.1.into())
            .await
            .starts_with("HTTP/1.1 101")
    );
    gw.wait_metric(r#"gateway_tunnel_auth_failures_total{reason="throttled"}"#)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_cannot_wipe_or_take_the_first_ones_routes() {
    let up1 = Upstream::start().await;
    let up2 = Upstream::start().await;
    let gw = Gateway::start(&[]);
    let _a1 = Agent::start(&gw, DEMO, &[("one.demo.localhost", up1.url())]).await;
    // A second agent of the same cluster publishes another set: both are served, each by the
    // agent that published it.
    let _a2 = Agent::start(&gw, DEMO, &[("two.demo.localhost", up2.url())]).await;
    for _ in 0..20 {
        for host in ["one.demo.localhost", "two.demo.localhost"] {
            let r = client().get(gw.url(host, "/hello")).send().await.unwrap();
            assert_eq!(r.status(), 200, "{host}");
        }
    }
    // A hostile agent of the cluster cannot take one.demo's route (conflict) nor wipe it
    // with a sync that the gateway rejects entirely.
    let mut evil = FakeAgent::connect(&gw, Some(DEMO.1), None).await.unwrap();
    evil.send_text(r#"{"type":"register","payload":{"cluster":"demo","agent_version":"fake","protocol":2,"agent_id":"evil"}}"#)
        .await;
    assert!(evil.recv_text().await.contains("register_success"));
    evil.send_text(r#"{"type":"ingress_routes","payload":{"action":"sync","routes":[{"host":"one.demo.localhost","path":"/","service":"http://attacker"},{"host":"bank.other.localhost","path":"/"}]}}"#)
        .await;
    let ack: serde_json::Value = serde_json::from_str(&evil.recv_text().await).unwrap();
    let rejected = ack["payload"]["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2, "{ack}");
    assert!(
        rejected.iter().any(|r| r["host"] == "one.demo.localhost"
            && r["reason"].as_str().unwrap().contains("conflict")),
        "{ack}"
    );
    for _ in 0..20 {
        let r = client()
            .get(gw.url("one.demo.localhost", "/hello"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "hello");
    }
    gw.wait_metric(r#"gateway_routes_rejected_total{cluster_uuid="demo",reason="conflict"} 1"#)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_are_per_cluster_and_fields_are_bounded() {
    let gw = Gateway::start(&[
        "--max-tunnels-per-cluster",
        "2",
        "--max-routes-per-cluster",
        "5",
    ]);
    let (rss0, _) = gw.rss();
    let mut a = FakeAgent::connect(&gw, Some(DEMO.1), None).await.unwrap();
    let hosts: Vec<String> = (0..8).map(|i| format!("h{i}.demo.localhost")).collect();
    let routes: Vec<(&str, &str)> = hosts.iter().map(|h| (h.as_str(), "/")).collect();
    let ack = a.register_routes("demo", &routes).await;
    assert_eq!(ack["accepted"].as_array().unwrap().len(), 5, "{ack}");
    assert!(
        ack["rejected"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("quota")
    );
    // A second connection counts against the same cluster quota.
    let mut b = FakeAgent::connect(&gw, Some(DEMO.1), None).await.unwrap();
    let ack = b
        .register_routes("demo", &[("x.demo.localhost", "/")])
        .await;
    assert!(ack["accepted"].as_array().unwrap().is_empty(), "{ack}");
    // A third tunnel is refused with the reason.
    let mut c = FakeAgent::connect(&gw, Some(DEMO.1), None).await.unwrap();
    c.send_text(
        r#"{"type":"register","payload":{"cluster":"demo","agent_version":"fake","protocol":2}}"#,
    )
    .await;
    let refusal = c.recv_text().await;
    assert!(
        refusal.contains("register_error") && refusal.contains("quota"),
        "{refusal}"
    );
    // Oversized fields are refused and cost nothing: 64 routes with 1 MB paths (each message
    // under the tunnel's message size, the way the probe sent them).
    let big = "x".repeat(1 << 20);
    for i in 0..4 {
        let msg = format!(
            r#"{{"type":"ingress_routes","payload":{{"action":"add","routes":[{{"host":"big{i}.demo.localhost","path":"/{}"}}]}}}}"#,
            &big[..(1 << 20) - 200]
        );
        b.send_text(&msg).await;
        let ack: serde_json::Value = serde_json::from_str(&b.recv_text().await).unwrap();
        assert!(
            ack["payload"]["rejected"][0]["reason"]
                .as_str()
                .unwrap()
                .contains("longer"),
            "{ack}"
        );
        assert!(
            ack["payload"]["rejected"][0]["path"]
                .as_str()
                .unwrap()
                .len()
                <= 256
        );
    }
    let (rss1, _) = gw.rss();
    assert!(rss1 < rss0 + 32 * 1024 * 1024, "RSS {rss0} → {rss1}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_floods_close_only_the_flooding_tunnel() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&[]);
    let _other = Agent::start(&gw, OTHER, &[("app.other.localhost", up.url())]).await;
    let mut a = FakeAgent::connect(&gw, Some(DEMO.1), None).await.unwrap();
    a.register("demo", "app.demo.localhost").await;
    let flood = tokio::spawn(async move {
        for i in 0..10_000u64 {
            use futures_util::SinkExt;
            let hb = format!(r#"{{"type":"heartbeat","payload":{{"sent_at_ms":{i}}}}}"#);
            if a.ws
                .send(tokio_tungstenite::tungstenite::Message::Text(hb.into()))
                .await
                .is_err()
            {
                break;
            }
        }
        a.closed().await
    });
    let (code, reason) = tokio::time::timeout(HANG, flood).await.unwrap().unwrap();
    assert!(code == 1008 || code == 0, "{code} {reason}");
    gw.wait_metric(r#"gateway_tunnel_errors_total{reason="rate_limited"} 1"#)
        .await;
    let r = client()
        .get(gw.url("app.other.localhost", "/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// One cluster at its quotas floods every control message kind while another is under steady
/// load: the second sees no error. (Latency ratios are measured, not asserted: see the
/// closing note and `load-tests/NOTES.md`.)
async fn noisy_neighbour(gws: &[&Gateway]) {
    let up = Upstream::start().await;
    let quiet = Agent::spawn_to(&gws[..1], OTHER, &[("app.other.localhost", up.url())], &[]);
    quiet.connected().await;
    let target = *gws.last().unwrap();
    let url = target.url("app.other.localhost", "/hello");
    let c = client();
    // `conc` clients, each sending its share of `n` requests one after another: the quiet
    // tenant's steady load. Returns (p99, errors).
    let measure = |n: usize, conc: usize| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let workers = (0..conc).map(|_| {
                let (c, url) = (c.clone(), url.clone());
                tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(n / conc);
                    let mut errors = 0;
                    for _ in 0..n / conc {
                        let t = std::time::Instant::now();
                        match c.get(&url).send().await {
                            Ok(r) if r.status() == 200 => {
                                let _ = r.bytes().await;
                            }
                            _ => errors += 1,
                        }
                        lat.push(t.elapsed());
                    }
                    (lat, errors)
                })
            });
            let mut lat = Vec::with_capacity(n);
            let mut errors = 0;
            for w in futures_util::future::join_all(workers).await {
                let (l, e) = w.unwrap();
                lat.extend(l);
                errors += e;
            }
            lat.sort();
            (lat[lat.len() * 99 / 100], errors)
        }
    };
    let n: usize = std::env::var("NOISY_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let cpu = |gw: &Gateway| {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", gw.pid())).unwrap();
        let f: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let cpu0: u64 = gws.iter().map(|g| cpu(g)).sum();
    let t0 = std::time::Instant::now();
    let (quiet_p99, errors) = measure(n, 1).await;
    let (quiet_p99_load, errors8) = measure(n, 8).await;
    let quiet_cpu = (gws.iter().map(|g| cpu(g)).sum::<u64>() - cpu0, t0.elapsed());
    assert_eq!(errors + errors8, 0);
    // The noisy tenant: as many tunnels as its quota allows, each flooding heartbeats, route
    // syncs at the quota, drains, late frames and garbage, reconnecting when closed.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The flooders run on a runtime of their own, as they would on another machine: sharing
    // the measuring client's runtime, their tight send loops would delay it and the test
    // would measure itself.
    let flood_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut noisy = Vec::new();
    for (i, gw) in gws.iter().cycle().take(4).enumerate() {
        let stop = stop.clone();
        let gw_url = gw.ws_url();
        noisy.push(flood_rt.spawn(async move {
            use futures_util::SinkExt;
            use tokio_tungstenite::tungstenite::Message;
            let routes: Vec<serde_json::Value> = (0..200)
                .map(|j| serde_json::json!({"host": format!("n{i}-{j}.demo.localhost"), "path": "/"}))
                .collect();
            let sync = serde_json::json!({"type":"ingress_routes","payload":{"action":"sync","routes":routes}}).to_string();
            let mut rounds = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && rounds < 200 {
                rounds += 1;
                use tokio_tungstenite::tungstenite::client::IntoClientRequest;
                let mut req = format!("{gw_url}/v1/tunnel").into_client_request().unwrap();
                req.headers_mut().insert("authorization", format!("Bearer {}", DEMO.1).parse().unwrap());
                let Ok((mut ws, _)) = tokio_tungstenite::connect_async(req).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let reg = format!(r#"{{"type":"register","payload":{{"cluster":"demo","agent_version":"noisy","protocol":2,"connection_id":"noisy-{i}"}}}}"#);
                let _ = ws.send(Message::Text(reg.into())).await;
                for k in 0..2000u32 {
                    let msg = match k % 5 {
                        0 => Message::Text(format!(r#"{{"type":"heartbeat","payload":{{"sent_at_ms":{k}}}}}"#).into()),
                        1 => Message::Text(sync.clone().into()),
                        2 => Message::Text(r#"{"type":"proxy_websocket_close","payload":{"stream_id":1,"code":1000}}"#.into()),
                        3 => Message::Binary(tunnelgate_proto::Frame::Window { stream: 0, credit: 1 }.to_bytes()),
                        _ => Message::Text(r#"{"type":"heartbeat","payload":{"sent_at_ms":1,"is_private":true,"gateway_routes":99999}}"#.into()),
                    };
                    if ws.send(msg).await.is_err() || stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                }
            }
        }));
    }
    let cpu1: u64 = gws.iter().map(|g| cpu(g)).sum();
    let t1 = std::time::Instant::now();
    let (noisy_p99, errors1) = measure(n, 1).await;
    let (noisy_p99_load, errors8) = measure(n, 8).await;
    let errors = errors1 + errors8;
    let noisy_cpu = (gws.iter().map(|g| cpu(g)).sum::<u64>() - cpu1, t1.elapsed());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    println!("gateway CPU ticks (10 ms) / wall: quiet {quiet_cpu:?}, noisy {noisy_cpu:?}");
    for n in noisy {
        let _ = tokio::time::timeout(HANG, n).await;
    }
    flood_rt.shutdown_background();
    let ratio = |a: Duration, b: Duration| b.as_secs_f64() / a.as_secs_f64();
    println!(
        "noisy neighbour ({} node(s)): one client: quiet p99 {:?}, under flood {:?} ({:.2}x); \
         8 clients: quiet p99 {:?}, under flood {:?} ({:.2}x)",
        gws.len(),
        quiet_p99,
        noisy_p99,
        ratio(quiet_p99, noisy_p99),
        quiet_p99_load,
        noisy_p99_load,
        ratio(quiet_p99_load, noisy_p99_load),
    );
    assert_eq!(
        errors, 0,
        "the quiet tenant saw errors while the noisy one flooded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noisy_neighbour_on_one_node() {
    let gw = Gateway::start(&["--max-routes-per-cluster", "100"]);
    noisy_neighbour(&[&gw]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noisy_neighbour_on_two_nodes_with_redis() {
    let redis = Redis::start();
    let n1 = Gateway::node(&redis, &["--max-routes-per-cluster", "100"]);
    let n2 = Gateway::node(&redis, &["--max-routes-per-cluster", "100"]);
    noisy_neighbour(&[&n1, &n2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_are_cut_both_ways() {
    // A client that stops sending its body gets 408 and frees the stream.
    let up = Upstream::start().await;
    let gw = Gateway::start(&["--body-idle-timeout", "300ms"]);
    let _a = Agent::start(&gw, DEMO, &[("app.demo.localhost", up.url())]).await;
    let got = exchange(
        gw.addr,
        b"POST /sink HTTP/1.1\r\nHost: app.demo.localhost\r\nContent-Length: 100\r\n\r\n0123456789",
        |t| t.contains("\r\n\r\n"),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    gw.wait_metric("gateway_streams 0").await;

    // An agent that sends a head and then nothing cannot hold the client for ever.
    let gw = Gateway::start(&["--body-idle-timeout", "300ms"]);
    let mut agent = FakeAgent::connect(&gw, Some(DEMO.1), None).await.unwrap();
    agent.register("demo", "app.demo.localhost").await;
    let c = client();
    let url = gw.url("app.demo.localhost", "/x");
    let req = tokio::spawn(async move {
        let r = c.get(url).send().await.unwrap();
        r.bytes().await
    });
    let (id, _) = agent.next_request().await;
    // A head, one chunk, no END.
    let msg = serde_json::json!({"type": "proxy_response", "payload": {
        "stream_id": id, "status": 200, "headers": [], "body": true}});
    agent.send_text(&msg.to_string()).await;
    let data = tunnelgate_proto::Frame::Data {
        stream: id,
        data: bytes::Bytes::from_static(b"partial"),
    };
    agent.send_binary(data.to_bytes().to_vec()).await;
    let body = tokio::time::timeout(HANG, req).await.unwrap().unwrap();
    assert!(
        body.is_err(),
        "a stalled response body ends in an error, not a hang"
    );
    gw.wait_metric("gateway_streams 0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flat_names_belong_to_the_cluster_after_the_double_dash() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&[]);
    let _a = Agent::start(&gw, DEMO, &[("shop--demo.localhost", up.url())]).await;
    let r = client()
        .get(gw.url("shop--demo.localhost", "/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Another tenant cannot claim a flat name of demo's.
    let mut evil = FakeAgent::connect(&gw, Some(OTHER.1), None).await.unwrap();
    let ack = evil
        .register_routes(
            "other",
            &[
                ("cart--demo.localhost", "/"),
                ("cart--other.localhost", "/"),
            ],
        )
        .await;
    let rejected = ack["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 1, "{ack}");
    assert_eq!(rejected[0]["host"], "cart--demo.localhost");
}

/// An agent's tunnel from a raw socket: the upgrade (offering unmasked frames or not), then a
/// `register` sent as one unmasked text frame. Returns the 101's head and everything the
/// gateway sent after it until it closed the connection or a `register_success` came.
async fn unmasked_register(gw: &Gateway, offer: bool) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "GET /v1/tunnel HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {}\r\n{}\r\n",
        gw.addr,
        DEMO.1,
        if offer {
            "x-tunnelgate-unmasked: 1\r\n"
        } else {
            ""
        },
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        let n = tokio::time::timeout(HANG, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "no 101: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let answer = String::from_utf8_lossy(&got[..end]).to_string();
    let register =
        br#"{"type":"register","payload":{"cluster":"demo","agent_version":"fake","protocol":3}}"#;
    let mut frame = vec![0x81, 126];
    frame.extend_from_slice(&(register.len() as u16).to_be_bytes());
    frame.extend_from_slice(register);
    s.write_all(&frame).await.unwrap();
    let mut after = got[end..].to_vec();
    loop {
        if String::from_utf8_lossy(&after).contains("register_success") {
            break;
        }
        match tokio::time::timeout(HANG, s.read(&mut buf)).await.unwrap() {
            Ok(0) | Err(_) => break,
            Ok(n) => after.extend_from_slice(&buf[..n]),
        }
    }
    (answer, String::from_utf8_lossy(&after).to_string())
}

/// RFC 6455 has a client mask every frame; a gateway takes an agent's frames unmasked only
/// where its 101 agreed to the agent's offer (ADR 0014). Otherwise an unmasked frame is a
/// protocol error that ends that tunnel, and the node goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmasked_frames_only_where_the_gateway_agreed() {
    let gw = Gateway::start(&[]);
    let (answer, after) = unmasked_register(&gw, true).await;
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    assert!(answer.contains("x-tunnelgate-unmasked: 1"), "{answer}");
    assert!(after.contains("register_success"), "{after:?}");

    let (answer, after) = unmasked_register(&gw, false).await;
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    assert!(!answer.contains("x-tunnelgate-unmasked"), "{answer}");
    assert!(!after.contains("register_success"), "{after:?}");
    assert!(
        after.contains("unmasked frame"),
        "the close names the fault: {after:?}"
    );
    assert_eq!(gw.healthz().await, 200, "the node goes on");
}
