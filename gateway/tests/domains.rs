//! Custom domains against a real DNS server (dnsmasq on loopback) whose records the test
//! changes: registered → its agent may publish it, nothing served; CNAME published → verified
//! and served; record removed → suspended within one recheck and its host answers 404; an apex
//! proven by TXT; another cluster's claim refused.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

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

/// curl over HTTPS to `host` at `at`, trusting `root`: the status code.
fn curl_https(at: std::net::SocketAddr, host: &str, root: &std::path::Path) -> String {
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
        ])
        .arg(root)
        .args(["--resolve", &format!("{host}:{}:127.0.0.1", at.port())])
        .arg(format!("https://{host}:{}/hello", at.port()))
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The domain's certificate state once `ok` holds.
async fn until_cert(gw: &Gateway, ok: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let (_, d) = admin(
            gw,
            "GET",
            "/admin/v1/clusters/acme/domains/shop.example.com",
            None,
        )
        .await;
        if ok(&d["certificate"]) {
            return d["certificate"].clone();
        }
        assert!(start.elapsed() < HANG, "certificate never as expected: {d}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_domains_get_acme_certificates_served_by_every_node() {
    use common::pebble::{Pebble, free_port};
    use common::upstream::TestCa;
    if !Pebble::installed() {
        return;
    }
    let Some(mut dns) = Dnsmasq::start(&[]) else {
        return;
    };
    let redis = common::Redis::start();
    let dir = std::env::temp_dir().join(format!("tg-acme-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    // The gateway's own certificate (its names); custom domains get theirs from the CA.
    let own = TestCa::with_names(&["*.localhost", "localhost"]);
    std::fs::write(dir.join("tls.crt"), &own.cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), &own.key_pem).unwrap();
    let pebble_port = free_port();
    let (dns_server, directory) = (
        dns.addr.to_string(),
        format!("https://127.0.0.1:{pebble_port}/dir"),
    );
    let (crt, key, ca) = (
        dir.join("tls.crt"),
        dir.join("tls.key"),
        dir.join("pebble-https-ca.pem"),
    );
    let state_key = "5a".repeat(32);
    let args = [
        "--admin-token",
        ADMIN,
        "--dns-server",
        &dns_server,
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        crt.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--acme-directory",
        &directory,
        "--acme-email",
        "ops@example.com",
        "--acme-ca",
        ca.to_str().unwrap(),
        "--state-key",
        &state_key,
        // Every certificate is due at once: the renewal path runs over and over.
        "--acme-renew-before",
        "876000h",
    ];
    let a = Gateway::node(&redis, &args);
    let b = Gateway::node(&redis, &args);
    // The CA validates HTTP-01 against node b alone: whichever node ordered, b answers.
    let pebble = Pebble::start(&dir, pebble_port, b.addr.port(), dns.addr);
    let up = Upstream::start().await;
    let (_, acme) = admin(
        &a,
        "POST",
        "/admin/v1/clusters",
        Some(json!({"id": "acme"})),
    )
    .await;
    let (_, d) = admin(
        &a,
        "POST",
        "/admin/v1/clusters/acme/domains",
        Some(json!({"hostname": "shop.example.com"})),
    )
    .await;
    let target = d["cname_target"].as_str().unwrap().to_string();
    dns.set(&[("cname", "shop.example.com", &target)]);
    let (_, d) = admin(
        &a,
        "POST",
        "/admin/v1/clusters/acme/domains/shop.example.com/verify",
        None,
    )
    .await;
    assert_eq!(d["status"], "verified", "{d}");
    let _agent = Agent::start(
        &a,
        ("acme", acme["token"].as_str().unwrap()),
        &[("shop.example.com", up.url())],
    )
    .await;
    let cert = until_cert(&b, |c| c["status"] == "issued").await;
    assert!(
        cert["issuer"].as_str().unwrap().contains("Pebble"),
        "{cert}"
    );
    let days = (cert["not_after_ms"].as_u64().unwrap() - common_now_ms()) / 86_400_000;
    assert!(days > 30, "{cert}");
    // Served by SNI on both nodes, trusted by pebble's root.
    let root = dir.join("pebble-root.pem");
    std::fs::write(&root, pebble.root_pem()).unwrap();
    for node in [&a, &b] {
        let https = node.https_addr().await;
        let deadline = Instant::now() + HANG;
        loop {
            let got = curl_https(https, "shop.example.com", &root);
            if got == "200" {
                break;
            }
            assert!(Instant::now() < deadline, "HTTPS through a node: {got}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Renewed (the certificate is always due here): issued again, by one node at a time.
    let issued = |gws: &[&Gateway]| {
        gws.iter()
            .map(|g| {
                g.log_lines()
                    .iter()
                    .filter(|l| l.contains("ACME certificate issued"))
                    .count()
            })
            .sum::<usize>()
    };
    let start = Instant::now();
    while issued(&[&a, &b]) < 2 {
        assert!(start.elapsed() < HANG, "never renewed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The CA goes away: the renewal fails, says why, and the certificate in hand keeps serving.
    drop(pebble);
    let cert = until_cert(&a, |c| c["last_error"].is_string()).await;
    assert_eq!(cert["status"], "issued", "{cert}");
    assert!(
        cert["next_attempt_ms"].as_u64().unwrap() > common_now_ms(),
        "{cert}"
    );
    for node in [&a, &b] {
        assert_eq!(
            curl_https(node.https_addr().await, "shop.example.com", &root),
            "200"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
fn common_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
