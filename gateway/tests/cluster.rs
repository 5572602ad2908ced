//! Several gateway nodes sharing a real Redis: routing from any node, forwarding over peer
//! links, node loss, Redis loss, and the flood gate.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::{Duration, Instant};

use common::upstream::expect_pattern;
use common::{Agent, DEMO, Gateway, HANG, PEER_SECRET, Redis, Upstream, client};
use futures_util::StreamExt;

const APP: &str = "app.demo.localhost";

async fn metric(gw: &Gateway, prefix: &str) -> u64 {
    let text = gw.metrics().await;
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Retries a GET until it answers 200 (every attempt bounded, the whole wait too; a node that
/// has not yet heard of the route may say 404 meanwhile); returns how
/// long it took.
async fn until_ok(gw: &Gateway, path: &str) -> Duration {
    let start = Instant::now();
    let c = client();
    loop {
        let r = tokio::time::timeout(Duration::from_secs(5), c.get(gw.url(APP, path)).send())
            .await
            .expect("no request hangs");
        if let Ok(r) = r {
            if r.status() == 200 {
                return start.elapsed();
            }
            assert!(
                [404, 502, 503].contains(&r.status().as_u16()),
                "unexpected status {}",
                r.status()
            );
        }
        assert!(start.elapsed() < HANG, "no recovery within {HANG:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_reaches_the_cluster() {
    let redis = Redis::start();
    let up = Upstream::start().await;
    let nodes = [
        Gateway::node(&redis, &[]),
        Gateway::node(&redis, &[]),
        Gateway::node(&redis, &[]),
    ];
    let _agent = Agent::spawn_to(
        &[&nodes[0]],
        DEMO,
        &[(APP, up.url())],
        &["--connections", "1"],
    );
    _agent.connected().await;
    let c = client();
    for (i, gw) in nodes.iter().enumerate() {
        let r = c.get(gw.url(APP, "/hello")).send().await.unwrap();
        assert_eq!(r.status(), 200, "through node {i}");
        assert_eq!(r.text().await.unwrap(), "hello");
        let body = format!("posted through node {i}").repeat(1000);
        let r = c
            .post(gw.url(APP, "/echo"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), body);
    }
    // 100 MiB streamed across a peer hop.
    let r = c
        .get(nodes[2].url(APP, "/bytes?n=104857600"))
        .send()
        .await
        .unwrap();
    expect_pattern(r, 100 << 20).await;
    assert!(
        metric(
            &nodes[2],
            "gateway_forwarded_requests_total{reason=\"forwarded\"}"
        )
        .await
            >= 3
    );
    // Unknown hosts are still 404 on every node.
    let r = c
        .get(nodes[1].url("nobody.demo.localhost", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_with_two_tunnels_loses_a_node_without_failures() {
    let redis = Redis::start();
    let up = Upstream::start().await;
    let n1 = Gateway::node(&redis, &[]);
    let n2 = Gateway::node(&redis, &[]);
    let n3 = Gateway::node(&redis, &[]);
    let agent = Agent::spawn_to(
        &[&n1, &n2],
        DEMO,
        &[(APP, up.url())],
        &["--connections", "2"],
    );
    agent.nodes(2).await;
    let c = client();
    // Warm the peer links from node 3 to both owners.
    for _ in 0..4 {
        assert_eq!(
            c.get(n3.url(APP, "/hello")).send().await.unwrap().status(),
            200
        );
    }
    drop(n1);
    let mut failures = 0;
    for _ in 0..50 {
        for gw in [&n2, &n3] {
            let r =
                tokio::time::timeout(Duration::from_secs(5), c.get(gw.url(APP, "/hello")).send())
                    .await
                    .expect("no request hangs")
                    .unwrap();
            if r.status() != 200 {
                failures += 1;
            }
        }
    }
    assert_eq!(
        failures, 0,
        "requests failed after losing one of two tunnels"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_killed_mid_traffic_recovers_after_reconnect() {
    let redis = Redis::start();
    let up = Upstream::start().await;
    let n1 = Gateway::node(&redis, &[]);
    let n2 = Gateway::node(&redis, &[]);
    let agent = Agent::spawn_to(
        &[&n1, &n2],
        DEMO,
        &[(APP, up.url())],
        &["--connections", "1"],
    );
    let first = agent.nodes(1).await;
    let c = client();
    // A download through node 2, served by node 1's tunnel.
    let resp = c
        .get(n2.url(APP, "/bytes?n=1073741824"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    body.next().await.unwrap().unwrap();
    drop(n1);
    let cut = tokio::time::timeout(HANG, async {
        while let Some(chunk) = body.next().await {
            if chunk.is_err() {
                return true;
            }
        }
        false
    })
    .await
    .expect("the cut download must end, not hang");
    assert!(cut, "a download cut by a node's death must end in an error");
    // The agent rotates to node 2; requests through node 2 work again.
    let mut status = agent.status.clone();
    tokio::time::timeout(HANG, status.wait_for(|s| matches!(s, tunnelgate_agent::Status::Connected { nodes, .. } if !nodes.is_empty() && *nodes != first)))
        .await
        .expect("agent reconnected to another node")
        .unwrap();
    let took = until_ok(&n2, "/hello").await;
    eprintln!("recovered {took:?} after the agent's reconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_is_repopulated() {
    let mut redis = Redis::start();
    let up = Upstream::start().await;
    let n1 = Gateway::node(&redis, &[]);
    let n2 = Gateway::node(&redis, &[]);
    let agent = Agent::spawn_to(&[&n1], DEMO, &[(APP, up.url())], &["--connections", "1"]);
    agent.connected().await;
    let c = client();
    assert_eq!(
        c.get(n2.url(APP, "/hello")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        c.get(n1.url(APP, "/hello")).send().await.unwrap().status(),
        200
    );

    redis.stop();
    // The owner keeps serving its own tunnel from cache, and says it is degraded.
    assert_eq!(
        c.get(n1.url(APP, "/hello")).send().await.unwrap().status(),
        200
    );
    let start = Instant::now();
    loop {
        let r = c
            .get(format!("http://{}/readyz", n1.admin))
            .send()
            .await
            .unwrap();
        if r.text().await.unwrap().contains("degraded") {
            break;
        }
        assert!(start.elapsed() < HANG, "readyz never said degraded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    redis.restart_empty();
    // A node started now knows only what is in Redis: clusters, routes and ownership must
    // all have been written again by the others.
    let n3 = Gateway::node(&redis, &[]);
    let took = until_ok(&n3, "/hello").await;
    eprintln!("routes and ownership back {took:?} after Redis restarted empty (heartbeat 500ms)");
    let start = Instant::now();
    loop {
        let r = c
            .get(format!("http://{}/readyz", n1.admin))
            .send()
            .await
            .unwrap();
        if r.text().await.unwrap() == "ready\n" {
            break;
        }
        assert!(start.elapsed() < HANG, "readyz never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(n2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_host_flood_costs_a_bounded_number_of_redis_calls() {
    let redis = Redis::start();
    let up = Upstream::start().await;
    let gw = Gateway::node(&redis, &[]);
    let agent = Agent::spawn_to(&[&gw], DEMO, &[(APP, up.url())], &["--connections", "1"]);
    agent.connected().await;
    let c = client();
    assert_eq!(
        c.get(gw.url(APP, "/hello")).send().await.unwrap().status(),
        200
    );
    let lookups = "gateway_registry_backend_calls_total{op=\"cluster_hosts\"}";
    let mgets = "gateway_registry_backend_calls_total{op=\"route_mget\"}";
    let before = metric(&gw, lookups).await + metric(&gw, mgets).await;
    let flood = futures_util::stream::iter(0..10_000u32)
        .map(|i| {
            let c = c.clone();
            // Half name unknown clusters, half unpublished names of a real one.
            let host = if i % 2 == 0 {
                format!("r{i}.localhost")
            } else {
                format!("r{i}.demo.localhost")
            };
            let url = gw.url(&host, "/");
            async move { c.get(url).send().await.map(|r| r.status().as_u16()) }
        })
        .buffer_unordered(32);
    let statuses: Vec<_> = flood.collect().await;
    let odd: Vec<String> = statuses
        .iter()
        .filter(|s| !matches!(s, Ok(404)))
        .take(5)
        .map(|s| format!("{s:?}"))
        .collect();
    assert!(
        odd.is_empty(),
        "every flood request is a 404; also got {odd:?}"
    );
    let after = metric(&gw, lookups).await + metric(&gw, mgets).await;
    eprintln!("10k random hosts cost {} Redis lookups", after - before);
    assert!(
        after - before <= 5,
        "the flood reached Redis {} times",
        after - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_refused_on_the_peer_port() {
    let redis = Redis::start();
    let gw = Gateway::node(&redis, &[]);
    let peer = gw.peer_addr().await;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    for secret in [None, Some("wrong-secret-wrong"), Some(PEER_SECRET)] {
        let mut req = format!("ws://{peer}/v1/peer")
            .into_client_request()
            .unwrap();
        if let Some(s) = secret {
            req.headers_mut()
                .insert("authorization", format!("Bearer {s}").parse().unwrap());
        }
        req.headers_mut()
            .insert("x-tunnelgate-node", "test-node".parse().unwrap());
        let r = tokio_tungstenite::connect_async(req).await;
        match secret {
            Some(PEER_SECRET) => assert!(r.is_ok(), "the right secret is accepted"),
            _ => match r {
                Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                    assert_eq!(resp.status(), 401)
                }
                other => panic!("a stranger got {other:?}"),
            },
        }
    }
    // The peer port serves the upgrade of /v1/peer and nothing else, each refusal with a
    // reason, even with the right secret.
    let addr: std::net::SocketAddr = peer.parse().unwrap();
    let auth = format!("Authorization: Bearer {PEER_SECRET}\r\nx-tunnelgate-node: n\r\n");
    for (head, status, why) in [
        (
            "GET /v1/peer HTTP/1.1\r\n",
            "400",
            "WebSocket upgrade required",
        ),
        ("GET /metrics HTTP/1.1\r\n", "404", "serves /v1/peer only"),
        (
            "BREW /v1/peer HTCPCP/1.0\r\n",
            "400",
            "not a peer link's upgrade",
        ),
    ] {
        let req = format!("{head}Host: x\r\n{auth}\r\n");
        let got = common::raw_request(addr, req.as_bytes()).await;
        assert!(
            got.starts_with(&format!("HTTP/1.1 {status}")),
            "{head}: {got}"
        );
        assert!(got.contains(why), "{head}: {got}");
    }
    assert_eq!(gw.healthz().await, 200, "the node goes on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_connection_is_fenced_by_a_newer_epoch() {
    use tunnelgate_gateway::registry::{Claim, ConnRoutes, LeaseState, Registry};
    let redis = Redis::start();
    let count: tunnelgate_gateway::registry::redis::CallCounter = std::sync::Arc::new(|_| {});
    let demo = [tunnelgate_gateway::config::ClusterArg {
        id: DEMO.0.into(),
        token: tunnelgate_gateway::config::Secret::new(DEMO.1),
    }];
    let a =
        Registry::with_redis("localhost", "node-a", &demo, &redis.url(), count.clone()).unwrap();
    let b = Registry::with_redis("localhost", "node-b", &demo, &redis.url(), count).unwrap();
    let lease = Duration::from_secs(5);
    let held = |c: Claim| match c {
        Claim::Held(e) => e,
        Claim::TooMany => panic!("claim refused"),
    };
    let old = held(
        a.claim_tunnel("demo", "agent-1-0", lease, 0, 16)
            .await
            .unwrap(),
    );
    assert_eq!(
        a.refresh_tunnel("demo", "agent-1-0", old, lease)
            .await
            .unwrap(),
        LeaseState::Held
    );
    // The agent reconnects to node b with the same connection id: a newer epoch.
    let new = held(
        b.claim_tunnel("demo", "agent-1-0", lease, 0, 16)
            .await
            .unwrap(),
    );
    assert!(new > old);
    // A fenced tunnel cannot write routes for the connection; the holder can.
    let set = ConnRoutes {
        agent: "agent-1".into(),
        routes: vec![tunnelgate_proto::routes::RouteSpec {
            host: "a.demo.localhost".into(),
            ..Default::default()
        }],
    };
    a.store_set("demo", "agent-1-0", Some(old), &set)
        .await
        .unwrap();
    assert!(b.lookup("a.demo.localhost", "/").await.unwrap().is_none());
    b.store_set("demo", "agent-1-0", Some(new), &set)
        .await
        .unwrap();
    let hit = a
        .lookup("a.demo.localhost", "/")
        .await
        .unwrap()
        .expect("route");
    assert_eq!(&*hit.conns, &["agent-1-0".to_string()]);
    // A stale withdrawal does not remove the newer tunnel's routes.
    a.withdraw("demo", "agent-1-0", Some(old)).await;
    a.clear_cache();
    assert!(a.lookup("a.demo.localhost", "/").await.unwrap().is_some());
    // Node a's stale refresh cannot take it back, and learns it is fenced.
    assert_eq!(
        a.refresh_tunnel("demo", "agent-1-0", old, lease)
            .await
            .unwrap(),
        LeaseState::Fenced
    );
    assert_eq!(
        b.refresh_tunnel("demo", "agent-1-0", new, lease)
            .await
            .unwrap(),
        LeaseState::Held
    );
    // A stale release does not remove the newer lease either.
    a.release_tunnel("demo", "agent-1-0", old).await;
    assert_eq!(
        b.refresh_tunnel("demo", "agent-1-0", new, lease)
            .await
            .unwrap(),
        LeaseState::Held
    );
    // The tunnel quota counts live leases over all nodes: with a quota of 2, a third
    // connection is refused, a reconnect of a counted one is not.
    held(
        a.claim_tunnel("demo", "agent-2-0", lease, 0, 2)
            .await
            .unwrap(),
    );
    assert_eq!(
        b.claim_tunnel("demo", "agent-3-0", lease, 0, 2)
            .await
            .unwrap(),
        Claim::TooMany
    );
    held(
        b.claim_tunnel("demo", "agent-2-0", lease, 0, 2)
            .await
            .unwrap(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_across_a_peer_hop() {
    use common::upstream::{WsUpstream, ws_connect, ws_echo_roundtrip};
    let redis = Redis::start();
    let ws_up = WsUpstream::start().await;
    let n1 = Gateway::node(&redis, &[]);
    let n2 = Gateway::node(&redis, &[]);
    let agent = Agent::spawn_to(
        &[&n1],
        DEMO,
        &[("ws.demo.localhost", ws_up.url())],
        &["--connections", "1"],
    );
    agent.connected().await;
    let (mut ws, resp) = ws_connect(n2.addr, "ws.demo.localhost", "/", Some("chat")).await;
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");
    ws_echo_roundtrip(&mut ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_share_a_peer_link_per_worker() {
    let redis = Redis::start();
    let up = Upstream::start().await;
    let n1 = Gateway::node(&redis, &[]);
    let n2 = Gateway::node(&redis, &[]);
    let agent = Agent::spawn_to(
        &[&n1],
        DEMO,
        &[("app.demo.localhost", up.url())],
        &["--connections", "1"],
    );
    agent.connected().await;
    // 50 requests at once reach n2, which has no link to n1 yet.
    let c = client();
    let url = n2.url("app.demo.localhost", "/hello");
    let all = (0..50).map(|_| {
        let (c, url) = (c.clone(), url.clone());
        tokio::spawn(async move { c.get(url).send().await.unwrap().status().as_u16() })
    });
    for s in futures_util::future::join_all(all).await {
        assert_eq!(s.unwrap(), 200);
    }
    let accepted = n1
        .log_lines()
        .iter()
        .filter(|l| l.contains("peer link accepted"))
        .count();
    // One link per peer and dialling worker (the test nodes run two; ADR 0013).
    assert!(
        (1..=2).contains(&accepted),
        "{accepted} links: one dial per peer and worker, not one per waiting request"
    );
    // The route table came from Redis, then from the cache.
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    n2.wait_metric(r#"gateway_route_cache_total{reason="miss"}"#)
        .await;
    n2.wait_metric(r#"gateway_route_cache_total{reason="hit"}"#)
        .await;
    n2.wait_metric("gateway_build_info{version=").await;
    // The 50 concurrent misses shared one load from Redis (a route event arriving late may
    // add one more).
    let text = n2.metrics().await;
    let misses: u64 = text
        .lines()
        .find(|l| l.starts_with(r#"gateway_route_cache_total{reason="miss"}"#))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        (1..=3).contains(&misses),
        "{misses} table loads for one cluster"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_given_sigterm_drains_without_losing_a_request() {
    let redis = Redis::start();
    let up = Upstream::start().await;
    let mut a = Gateway::node(&redis, &["--drain-timeout", "10s"]);
    let b = Gateway::node(&redis, &[]);
    // The agent's one tunnel is on node a; clients come in through node b (a's load balancer
    // took a out of rotation when its /readyz failed).
    let agent = Agent::spawn_to(&[&a, &b], DEMO, &[(APP, up.url())], &["--connections", "1"]);
    agent.connected().await;
    until_ok(&b, "/hello").await;
    let url = b.url(APP, "/hello");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (url, stop) = (url.clone(), stop.clone());
            tokio::spawn(async move {
                let c = client();
                let (mut ok, mut failed) = (0u64, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = tokio::time::timeout(Duration::from_secs(5), c.get(&url).send())
                        .await
                        .expect("no request hangs")
                        .unwrap();
                    match r.status().as_u16() {
                        200 => ok += 1,
                        s => {
                            failed.push(format!("{s} {:?}", r.headers().get("x-tunnelgate-error")))
                        }
                    }
                    let _ = r.bytes().await;
                }
                (ok, failed)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.terminate();
    // /readyz fails at once.
    let start = std::time::Instant::now();
    loop {
        let r = client()
            .get(format!("http://{}/readyz", a.admin))
            .send()
            .await;
        match r {
            Ok(r) if r.status() == 503 => break,
            _ => {}
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "/readyz still ready"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The tunnel moves to node b (make before break), node a exits 0 well before its timeout.
    let code = tokio::task::block_in_place(|| a.exit_code(Duration::from_secs(10)));
    assert_eq!(code, Some(0), "node a's exit");
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "drained in {:?}",
        start.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for t in load {
        let (o, f) = t.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} of {ok} lost: {failed:?}",
        failed.len()
    );
    assert!(ok > 100, "{ok}");
    // The tunnel now lives on node b.
    assert_eq!(status_of_b_after_a(&b).await, 200);
    drop(agent);
    assert!(
        a.log_lines()
            .iter()
            .any(|l| l.contains("drained: no tunnel")),
        "a drained cleanly"
    );
}

/// What node b answers once node a is gone (its own tunnel, no peer to ask).
async fn status_of_b_after_a(b: &Gateway) -> u16 {
    client()
        .get(b.url(APP, "/hello"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_peer_link_is_detected_within_its_heartbeat_timeout() {
    let redis = Redis::start();
    let up = Upstream::start().await;
    // Heartbeats every 200 ms: a link silent for 600 ms is dead. The response timeout stays at
    // its default (far longer), so a failure in time can only come from the heartbeat.
    let beat = ["--peer-heartbeat-interval", "200ms"];
    let n1 = Gateway::node(&redis, &beat);
    let n2 = Gateway::node(&redis, &beat);
    let agent = Agent::spawn_to(&[&n1], DEMO, &[(APP, up.url())], &["--connections", "1"]);
    agent.connected().await;
    until_ok(&n2, "/hello").await;
    let up_line = n2.wait_log("peer link up").await;
    assert!(up_line.contains("\"heartbeat_ms\":200"), "{up_line}");

    // n1 stops answering with its sockets open: to n2 the link is half-open.
    let frozen = n1.freeze();
    let start = Instant::now();
    let r = tokio::time::timeout(HANG, client().get(n2.url(APP, "/hello")).send())
        .await
        .expect("the request on a dead link fails, it does not hang")
        .unwrap();
    assert!(r.status().is_server_error(), "{}", r.status());
    let dead = n2.wait_log("peer_heartbeat_timeout").await;
    let took = start.elapsed();
    assert!(dead.contains("heartbeat timeout"), "{dead}");
    assert!(
        took < Duration::from_secs(10),
        "a request on the dead link took {took:?}: the response timeout, not the heartbeat, ended it"
    );
    assert!(
        metric(
            &n2,
            r#"gateway_tunnel_errors_total{reason="peer_heartbeat_timeout"}"#
        )
        .await
            >= 1
    );

    // n1 comes back: n2 dials a new link and serves again.
    drop(frozen);
    until_ok(&n2, "/hello").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_id_names_the_request_on_both_nodes_the_agent_and_the_upstream() {
    let agent_logs = common::capture_logs();
    let redis = Redis::start();
    let up = Upstream::start().await;
    let n1 = Gateway::node(&redis, &["--access-log"]);
    let n2 = Gateway::node(&redis, &["--access-log"]);
    let agent = Agent::spawn_to(
        &[&n1],
        DEMO,
        &[(APP, up.url())],
        &["--connections", "1", "--access-log"],
    );
    agent.connected().await;
    until_ok(&n2, "/hello").await;

    // The client's id goes with the request across the peer hop, to the upstream and back.
    let id = "req-7f3a-across-a-hop";
    let r = client()
        .get(n2.url(APP, "/headers"))
        .header("x-request-id", id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], id);
    let seen = r.text().await.unwrap();
    assert!(seen.contains(&format!("x-request-id: {id}\n")), "{seen}");
    let entry = n2.wait_log(id).await;
    assert!(entry.contains(r#""message":"request""#), "{entry}");
    assert!(entry.contains(r#""status":200"#), "{entry}");
    let owner = n1.wait_log(id).await;
    assert!(
        owner.contains(r#""message":"forwarded request""#),
        "{owner}"
    );
    common::wait_captured(&agent_logs, &[id, "upstream call", "/headers"]).await;

    // Without one (or with one unfit to log), the gateway makes one and the upstream sees it.
    for sent in [None, Some("x".repeat(200)), Some("has space".to_string())] {
        let mut req = client().get(n2.url(APP, "/headers"));
        if let Some(v) = &sent {
            req = req.header("x-request-id", v);
        }
        let r = req.send().await.unwrap();
        let made = r.headers()["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(made.len(), 32, "{made}");
        assert!(made.bytes().all(|b| b.is_ascii_hexdigit()), "{made}");
        let seen = r.text().await.unwrap();
        assert!(seen.contains(&format!("x-request-id: {made}\n")), "{seen}");
        assert_eq!(seen.matches("x-request-id").count(), 1, "{seen}");
    }
}

/// Runs outside a runtime: the OTLP exporter's HTTP client must be made and dropped outside one.
#[test]
fn one_trace_follows_a_request_across_a_peer_hop_to_the_agent_and_the_upstream() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let receiver = rt.block_on(common::otlp::Receiver::start());
    // The agent runs in this process: its spans go out through this process's subscriber.
    let guard = tunnelgate_telemetry::init(
        true,
        "tunnelgate-agent",
        Some(receiver.endpoint()),
        Duration::from_millis(100),
    )
    .unwrap();
    rt.block_on(async {
        let redis = Redis::start();
        let up = Upstream::start().await;
        let endpoint = receiver.endpoint();
        let otlp = [
            "--otlp-endpoint",
            endpoint.as_str(),
            "--otlp-flush-interval",
            "100ms",
        ];
        let n1 = Gateway::node(&redis, &otlp);
        let n2 = Gateway::node(&redis, &otlp);
        let agent = Agent::spawn_to(&[&n1], DEMO, &[(APP, up.url())], &["--connections", "1"]);
        agent.connected().await;
        until_ok(&n2, "/hello").await;

        // A client that traces its calls: the gateway's span continues its trace.
        let (trace_id, client_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
        let r = client()
            .get(n2.url(APP, "/headers"))
            .header("traceparent", format!("00-{trace_id}-{client_span}-01"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let seen = r.text().await.unwrap();
        let start = Instant::now();
        let spans = loop {
            let spans = receiver.trace(trace_id);
            if spans.len() >= 5 {
                break spans;
            }
            assert!(
                start.elapsed() < HANG,
                "the trace never arrived whole: {spans:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let by = |name: &str| {
            spans
                .iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("no {name:?} span in {spans:#?}"))
                .clone()
        };
        let entry = by("gateway request");
        let hop = by("peer hop");
        let owner = by("owner request");
        let at_agent = by("agent request");
        let call = by("upstream call");
        assert_eq!(entry.parent_id, client_span);
        assert_eq!(hop.parent_id, entry.span_id);
        assert_eq!(owner.parent_id, hop.span_id);
        assert_eq!(at_agent.parent_id, owner.span_id);
        assert_eq!(call.parent_id, at_agent.span_id);
        for s in [&entry, &hop, &owner] {
            assert_eq!(s.service, "tunnelgate-gateway", "{s:?}");
        }
        for s in [&at_agent, &call] {
            assert_eq!(s.service, "tunnelgate-agent", "{s:?}");
        }
        // The upstream continues from the upstream call's span.
        let sent = format!("traceparent: 00-{trace_id}-{}-01\n", call.span_id);
        assert!(seen.contains(&sent), "{seen}");
        drop(agent);
    });
    drop(rt);
    drop(guard);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_gets_tunnels_without_everyone_moving_at_once() {
    let redis = Redis::start();
    let up = Upstream::start().await;
    let url = redis.url();
    // Membership ticks, and so spreading, every 200 ms.
    let node_args = [
        "--redis-url",
        url.as_str(),
        "--peer-listen",
        "127.0.0.1:0",
        "--peer-secret",
        PEER_SECRET,
        "--heartbeat-interval",
        "200ms",
    ];
    let n1 = Gateway::start(&node_args);
    // The second node's address is known before it runs, as a Service's would be: the agents
    // are given both.
    let spare = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let n2_addr = spare.local_addr().unwrap().to_string();
    drop(spare);
    let urls = vec![n1.ws_url(), format!("ws://{n2_addr}")];
    let agents: Vec<Agent> = (0..6)
        .map(|_| Agent::spawn_urls(&urls, DEMO, &[(APP, up.url())], &["--connections", "1"]))
        .collect();
    for a in &agents {
        a.connected().await;
    }
    assert_eq!(metric(&n1, "gateway_tunnels ").await, 6);

    // Steady requests through n1 meanwhile: moving tunnels loses none.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, url) = (stop.clone(), n1.url(APP, "/hello"));
        tokio::spawn(async move {
            let c = client();
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => failed.push(r.status().to_string()),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        })
    };
    let n2 = Gateway::start_on(&n2_addr, &node_args);
    let start = Instant::now();
    // Its share is 3; a node within its share and one tunnel more (n1 at 4) stops sending.
    while metric(&n2, "gateway_tunnels ").await < 2 {
        assert!(
            start.elapsed() < HANG,
            "the new node never got its share of tunnels:\n{}",
            n2.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
    assert!(ok > 0);
    // One agent at a time (a tenth of six, at least one), never all at once.
    let moves: Vec<String> = n1
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("rebalancing"))
        .collect();
    assert!(!moves.is_empty());
    for l in &moves {
        assert!(l.contains(r#""asked":1"#), "{l}");
    }
    // A moved tunnel's old half closes just after the new one serves (make before break).
    let start = Instant::now();
    let (t1, t2) = loop {
        let t = (
            metric(&n1, "gateway_tunnels ").await,
            metric(&n2, "gateway_tunnels ").await,
        );
        if t.0 + t.1 == 6 {
            break t;
        }
        assert!(
            start.elapsed() < HANG,
            "tunnels never settled: n1 {}, n2 {}",
            t.0,
            t.1
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(t1 <= 4 && t2 >= 2, "n1 {t1}, n2 {t2}");
    assert!(metric(&n1, "gateway_tunnels_moved_total").await >= 2);
}
