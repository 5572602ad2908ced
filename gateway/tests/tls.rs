//! HTTPS at the edge and agents over `wss://`: certificates by SNI from files (and reloaded
//! when they change), curl with a test CA, SNI and Host that disagree, an agent with a private
//! CA, the wrong CA refused.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::upstream::TestCa;
use common::{Agent, DEMO, Gateway, HANG, Upstream};

struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let d = std::env::temp_dir().join(format!("tg-tls-{nanos}"));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        // Written whole, then renamed: what a Secret update does.
        let tmp = self.0.join(format!("{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A gateway with HTTPS for `*.demo.localhost` and `demo.localhost`, signed by a test CA.
fn https_gateway(dir: &Dir, ca: &TestCa) -> Gateway {
    let cert = dir.write("tls.crt", &ca.cert_pem);
    let key = dir.write("tls.key", &ca.key_pem);
    Gateway::start(&[
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        // The name agents dial: it serves /v1/tunnel.
        "--public-host",
        "localhost",
    ])
}

/// curl over HTTPS trusting `ca_file`: (status, body).
fn curl(ca_file: &Path, url: &str, extra: &[&str]) -> (String, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(ca_file)
        .args(extra)
        .args(["-w", "\n%{http_code}", url])
        .output()
        .expect("curl installed");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (
        code.to_string(),
        format!("{body}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_sni_certificates_reloaded_without_restart() {
    let dir = Dir::new();
    let ca = TestCa::with_names(&["*.demo.localhost", "demo.localhost"]);
    let ca_file = dir.write("ca.pem", &ca.ca_pem);
    let up = Upstream::start().await;
    let gw = https_gateway(&dir, &ca);
    let _a = Agent::start(&gw, DEMO, &[("app.demo.localhost", up.url())]).await;
    let https = gw.https_addr().await;
    let url = format!("https://app.demo.localhost:{}/headers", https.port());
    let (code, body) = curl(&ca_file, &url, &[]);
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("x-forwarded-proto: https"), "{body}");

    // HTTP/2 by ALPN, routed and streamed like HTTP/1.1 (a body both ways).
    let out = std::process::Command::new("curl")
        .args(["-sS", "--http2", "--max-time", "20", "--cacert"])
        .arg(&ca_file)
        .args([
            "--data-binary",
            "sent over h2",
            "-w",
            "\n%{http_version} %{http_code}",
        ])
        .arg(format!("https://app.demo.localhost:{}/echo", https.port()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text,
        "sent over h2\n2 200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new("curl")
        .args(["-sS", "--http2", "--max-time", "20", "--cacert"])
        .arg(&ca_file)
        .arg(format!(
            "https://app.demo.localhost:{}/headers",
            https.port()
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("host: app.demo.localhost:{}", https.port())),
        "the upstream did not get the public Host over h2: {text}"
    );

    // SNI for one cluster, Host for another: refused.
    let (code, body) = curl(
        &ca_file,
        &format!("https://app.demo.localhost:{}/hello", https.port()),
        &["-H", "Host: bank.other.localhost"],
    );
    assert_eq!(code, "421", "{body}");

    // New certificate files are served to new connections within seconds (a client trusting
    // only the new CA gets through); a download in flight on the old certificate is not cut.
    let long = {
        let ca_file = ca_file.clone();
        let url = format!(
            "https://app.demo.localhost:{}/bytes?n=150000000",
            https.port()
        );
        std::thread::spawn(move || {
            let out = std::process::Command::new("curl")
                .args(["-sS", "--limit-rate", "40M", "-o", "/dev/null"])
                .args(["-w", "%{http_code} %{size_download}", "--cacert"])
                .arg(&ca_file)
                .arg(&url)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).to_string()
        })
    };
    let renewed = TestCa::with_names(&["*.demo.localhost", "demo.localhost"]);
    let renewed_ca = dir.write("renewed-ca.pem", &renewed.ca_pem);
    let hello = format!("https://app.demo.localhost:{}/hello", https.port());
    assert_ne!(curl(&renewed_ca, &hello, &[]).0, "200", "not yet renewed");
    dir.write("tls.key", &renewed.key_pem);
    dir.write("tls.crt", &renewed.cert_pem);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (code, _) = curl(&renewed_ca, &hello, &[]);
        if code == "200" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was not served within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let finished = tokio::task::spawn_blocking(move || long.join().unwrap())
        .await
        .unwrap();
    assert_eq!(finished, "200 150000000", "the download in flight was cut");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_over_wss_with_a_private_ca_and_the_wrong_one_refused() {
    let dir = Dir::new();
    let ca = TestCa::with_names(&["localhost", "*.demo.localhost"]);
    let ca_file = dir.write("ca.pem", &ca.ca_pem);
    let up = Upstream::start().await;
    let gw = https_gateway(&dir, &ca);
    let https = gw.https_addr().await;
    let wss = format!("wss://localhost:{}", https.port());
    let spawn = |ca: &Path| {
        Agent::spawn_urls(
            std::slice::from_ref(&wss),
            DEMO,
            &[("app.demo.localhost", up.url())],
            &["--gateway-ca", ca.to_str().unwrap(), "--connections", "1"],
        )
    };
    let agent = spawn(&ca_file);
    agent.connected().await;
    let (code, body) = curl(
        &ca_file,
        &format!("https://app.demo.localhost:{}/hello", https.port()),
        &[],
    );
    assert_eq!((code.as_str(), body.as_str()), ("200", "hello"));
    drop(agent);

    // Another CA: the agent does not connect, and says why.
    let other = TestCa::new("localhost");
    let other_file = dir.write("other.pem", &other.ca_pem);
    let agent = spawn(&other_file);
    let mut rx = agent.status.clone();
    let status = tokio::time::timeout(
        HANG,
        rx.wait_for(|s| matches!(s, tunnelgate_agent::Status::Disconnected { .. })),
    )
    .await
    .expect("a refusal in time")
    .unwrap()
    .clone();
    match status {
        tunnelgate_agent::Status::Disconnected { error, .. } => {
            assert!(error.to_lowercase().contains("certificate"), "{error}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_redirects_to_https_but_not_acme_or_the_gateways_names() {
    let gw = Gateway::start(&["--redirect-http", "--https-port", "8443"]);
    let c = common::client();
    let no_follow = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_follow
        .get(format!("http://{}/a/b?c=1", gw.addr))
        .header("host", "app.demo.localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"],
        "https://app.demo.localhost:8443/a/b?c=1"
    );
    let r = no_follow
        .get(format!("http://{}/.well-known/acme-challenge/tok", gw.addr))
        .header("host", "app.demo.localhost")
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 308, "ACME HTTP-01 paths stay on plain HTTP");
    // The gateway's own names are not redirected (agents on loopback dial ws://).
    let r = c
        .get(format!("http://{}/healthz", gw.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn plaintext_to_a_remote_gateway_is_refused_by_default() {
    let parse = |extra: &[&str]| {
        let mut args = vec![
            "tunnelgate-agent",
            "--cluster",
            "demo",
            "--token",
            "t",
            "--route",
            "a.demo.localhost=http://127.0.0.1:1",
        ];
        args.extend_from_slice(extra);
        <tunnelgate_agent::config::Config as clap::Parser>::try_parse_from(args)
            .unwrap()
            .validate()
    };
    let err = parse(&["--gateway", "ws://gw.example.io:8080"]).unwrap_err();
    assert!(
        err.contains("wss://") && err.contains("--insecure-plaintext"),
        "{err}"
    );
    assert!(
        parse(&[
            "--gateway",
            "ws://gw.example.io:8080",
            "--insecure-plaintext"
        ])
        .is_ok()
    );
    assert!(parse(&["--gateway", "ws://127.0.0.1:8080"]).is_ok());
    assert!(parse(&["--gateway", "wss://gw.example.io"]).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_links_over_mutual_tls() {
    let dir = Dir::new();
    let ca = TestCa::with_names(&["127.0.0.1"]);
    let (cert, key, ca_file) = (
        dir.write("peer.crt", &ca.cert_pem),
        dir.write("peer.key", &ca.key_pem),
        dir.write("peer-ca.pem", &ca.ca_pem),
    );
    let redis = common::Redis::start();
    let tls = [
        "--peer-cert",
        cert.to_str().unwrap(),
        "--peer-key",
        key.to_str().unwrap(),
        "--peer-ca",
        ca_file.to_str().unwrap(),
    ];
    let n1 = Gateway::node(&redis, &tls);
    let n2 = Gateway::node(&redis, &tls);
    let up = Upstream::start().await;
    let a = Agent::spawn_to(
        &[&n1],
        DEMO,
        &[("app.demo.localhost", up.url())],
        &["--connections", "1"],
    );
    a.connected().await;
    // Through n2, forwarded to n1 over the TLS peer link.
    let r = common::client()
        .get(n2.url("app.demo.localhost", "/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "hello");
    n2.wait_metric(r#"gateway_forwarded_requests_total{reason="forwarded"}"#)
        .await;
    // A stranger with the peer secret but no certificate gets no link (plain or TLS).
    let peer = n1.peer_addr().await;
    let plain = tokio::time::timeout(
        HANG,
        tokio_tungstenite::connect_async(format!("ws://{peer}/v1/peer")),
    )
    .await
    .unwrap();
    assert!(plain.is_err(), "a plaintext peer link was accepted");
}
