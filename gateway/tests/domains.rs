//! Custom domains against a real DNS server (dnsmasq on loopback) whose records the test
//! changes: registered → its agent may publish it, nothing served; CNAME published → verified
//! and served; record removed → suspended within one recheck and its host answers 404; an apex
//! proven by TXT; another cluster's claim refused.

mod common;

use std::time::{Duration, Instant};

use common::dnsmasq::Dnsmasq;
use common::{Agent, Gateway, HANG, Upstream, admin_call, client};
use serde_json::{Value, json};

const ADMIN: &str = "admin-token-for-domain-tests-0123456789";

async fn admin(gw: &Gateway, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    admin_call(gw, method, path, body, Some(ADMIN)).await
}

async fn status_of(gw: &Gateway, host: &str) -> u16 {
    client()
        .get(gw.url(host, "/hello"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Polls the domain until its status is `want`; returns the domain.
async fn until_domain(gw: &Gateway, cluster: &str, host: &str, want: &str) -> Value {
    let start = Instant::now();
    loop {
        let (code, d) = admin(
            gw,
            "GET",
            &format!("/admin/v1/clusters/{cluster}/domains/{host}"),
            None,
        )
        .await;
        assert_eq!(code, 200, "{d}");
        if d["status"] == want {
            return d;
        }
        assert!(start.elapsed() < HANG, "{host} never became {want}: {d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_domains_are_verified_in_dns_and_suspended_when_the_record_goes() {
    let Some(mut dns) = Dnsmasq::start(&[]) else {
        return;
    };
    let dns_server = dns.addr.to_string();
    let gw = Gateway::start(&[
        "--admin-token",
        ADMIN,
        "--dns-server",
        &dns_server,
        "--domain-recheck",
        "300ms",
    ]);
    let up = Upstream::start().await;
    let (code, acme) = admin(
        &gw,
        "POST",
        "/admin/v1/clusters",
        Some(json!({"id": "acme"})),
    )
    .await;
    assert_eq!(code, 201);
    let (code, _) = admin(
        &gw,
        "POST",
        "/admin/v1/clusters",
        Some(json!({"id": "evil"})),
    )
    .await;
    assert_eq!(code, 201);

    // Registered: what to publish comes back; pending.
    let (code, d) = admin(
        &gw,
        "POST",
        "/admin/v1/clusters/acme/domains",
        Some(json!({"hostname": "Shop.Example.COM."})),
    )
    .await;
    assert_eq!(code, 201, "{d}");
    assert_eq!(d["hostname"], "shop.example.com");
    assert_eq!(d["status"], "pending");
    let target = d["cname_target"].as_str().unwrap().to_string();
    assert!(
        target.ends_with(".cname.localhost") && !target.starts_with("acme."),
        "the target is built from the cluster's UUID: {target}"
    );

    // Its agent may publish it; nothing is served while pending.
    let token = acme["token"].as_str().unwrap();
    let _agent = Agent::start(&gw, ("acme", token), &[("shop.example.com", up.url())]).await;
    assert_eq!(status_of(&gw, "shop.example.com").await, 404);
    let (_, d) = admin(
        &gw,
        "POST",
        "/admin/v1/clusters/acme/domains/shop.example.com/verify",
        None,
    )
    .await;
    assert_eq!(d["status"], "pending");
    assert!(d["reason"].as_str().unwrap().contains("no CNAME"), "{d}");

    // A CNAME to somewhere else proves nothing; to the target, it verifies.
    dns.set(&[("cname", "shop.example.com", "elsewhere.example.net")]);
    let (_, d) = admin(
        &gw,
        "POST",
        "/admin/v1/clusters/acme/domains/shop.example.com/verify",
        None,
    )
    .await;
    assert_eq!(d["status"], "pending");
    assert!(
        d["reason"]
            .as_str()
            .unwrap()
            .contains("elsewhere.example.net"),
        "{d}"
    );
    dns.set(&[("cname", "shop.example.com", &target)]);
    let (_, d) = admin(
        &gw,
        "POST",
        "/admin/v1/clusters/acme/domains/shop.example.com/verify",
        None,
    )
    .await;
    assert_eq!(d["status"], "verified", "{d}");
    assert_eq!(status_of(&gw, "shop.example.com").await, 200);

    // A domain belongs to one cluster at a time; the gateway's own names are not domains.
    let (code, e) = admin(
        &gw,
        "POST",
        "/admin/v1/clusters/evil/domains",
        Some(json!({"hostname": "shop.example.com"})),
    )
    .await;
    assert_eq!(code, 409, "{e}");
    for bad in [
        "x.acme.localhost",
        "*.other.example.com",
        "com",
        "bad name.example.com",
    ] {
        let (code, e) = admin(
            &gw,
            "POST",
            "/admin/v1/clusters/acme/domains",
            Some(json!({"hostname": bad})),
        )
        .await;
        assert_eq!(code, 400, "{bad}: {e}");
    }

    // The record goes: suspended within a recheck, and the host answers 404.
    dns.set(&[]);
    let d = until_domain(&gw, "acme", "shop.example.com", "suspended").await;
    assert!(d["reason"].as_str().is_some());
    assert_eq!(status_of(&gw, "shop.example.com").await, 404);
    gw.wait_log("custom domain suspended").await;
    // Back again: verified by the recheck, served again.
    dns.set(&[("cname", "shop.example.com", &target)]);
    until_domain(&gw, "acme", "shop.example.com", "verified").await;
    assert_eq!(status_of(&gw, "shop.example.com").await, 200);

    // An apex, proven by TXT.
    let (code, d) = admin(
        &gw,
        "POST",
        "/admin/v1/clusters/acme/domains",
        Some(json!({"hostname": "apex.example"})),
    )
    .await;
    assert_eq!(code, 201);
    assert_eq!(d["txt_name"], "_tunnelgate.apex.example");
    let value = d["txt_value"].as_str().unwrap().to_string();
    dns.set(&[
        ("cname", "shop.example.com", &target),
        ("txt", "_tunnelgate.apex.example", &value),
    ]);
    let (_, d) = admin(
        &gw,
        "POST",
        "/admin/v1/clusters/acme/domains/apex.example/verify",
        None,
    )
    .await;
    assert_eq!(d["status"], "verified", "{d}");

    // Removed: no longer served, and free for another cluster.
    let (code, _) = admin(
        &gw,
        "DELETE",
        "/admin/v1/clusters/acme/domains/shop.example.com",
        None,
    )
    .await;
    assert_eq!(code, 204);
    assert_eq!(status_of(&gw, "shop.example.com").await, 404);
    let (code, _) = admin(
        &gw,
        "POST",
        "/admin/v1/clusters/evil/domains",
        Some(json!({"hostname": "shop.example.com"})),
    )
    .await;
    assert_eq!(code, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unregistered_custom_host_is_refused_to_the_agent_with_the_reason() {
    let gw = Gateway::start(&["--admin-token", ADMIN]);
    let up = Upstream::start().await;
    let agent = Agent::start(
        &gw,
        common::DEMO,
        &[
            ("app.demo.localhost", up.url()),
            ("shop.example.org", up.url()),
        ],
    )
    .await;
    let line = gw.wait_log("shop.example.org").await;
    assert!(line.contains("register it first"), "{line}");
    assert_eq!(status_of(&gw, "shop.example.org").await, 404);
    assert_eq!(status_of(&gw, "app.demo.localhost").await, 200);
    drop(agent);
}
