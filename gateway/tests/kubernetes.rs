//! The agent in Kubernetes mode against a faithful API server: Ingress changes become routes
//! at the gateway, and the agent converges after broken watches and 410 Gone.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::{Duration, Instant};

use common::kubeapi::KubeApi;
use common::{Agent, DEMO, Gateway, HANG, Upstream, client};
use serde_json::{Value, json};

fn ingress(name: &str, host: &str, path: &str, port: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"rules": [{"host": host, "http": {"paths": [
            {"path": path, "pathType": "Prefix", "backend": {"service": {"name": "web", "port": port}}}
        ]}}]}
    })
}

fn service() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"ports": [{"name": "http", "port": 8080, "targetPort": 80}]}
    })
}

/// Polls `host` until it answers `want`; returns how long that took.
async fn until_status(gw: &Gateway, host: &str, path: &str, want: u16) -> Duration {
    let start = Instant::now();
    let c = client();
    loop {
        let r = tokio::time::timeout(Duration::from_secs(5), c.get(gw.url(host, path)).send())
            .await
            .expect("no request hangs")
            .unwrap();
        if r.status() == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < HANG,
            "{host}{path} never answered {want} (last {})",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Setup {
    api: KubeApi,
    gw: Gateway,
    _up: Upstream,
    _agent: Agent,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn setup() -> Setup {
    setup_with(&[], &[]).await
}

/// A fake API server, a gateway started with `gw_args`, and an agent in Kubernetes mode (routes
/// through the test upstream as the ingress controller) with `agent_args` added.
async fn setup_with(gw_args: &[&str], agent_args: &[&str]) -> Setup {
    let api = KubeApi::start().await;
    let up = Upstream::start().await;
    let gw = Gateway::start(gw_args);
    let dir = std::env::temp_dir().join(format!(
        "tg-kube-{}-{}",
        std::process::id(),
        api.addr.port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = api.kubeconfig(&dir);
    let controller = up.url();
    let mut args = vec![
        "--kubernetes",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--ingress-controller-url",
        &controller,
        "--connections",
        "1",
    ];
    args.extend_from_slice(agent_args);
    let agent = Agent::spawn(&gw, DEMO, &[], &args);
    agent.connected().await;
    Setup {
        api,
        gw,
        _up: up,
        _agent: agent,
        _dir: TempDir(dir),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_changes_become_routes() {
    let s = setup().await;
    s.api.apply(service());
    s.api.apply(ingress(
        "web",
        "app.demo.localhost",
        "/",
        json!({"number": 80}),
    ));
    let took = until_status(&s.gw, "app.demo.localhost", "/hello", 200).await;
    eprintln!("new Ingress routable after {took:?}");
    // Traffic reaches the upstream with the client's Host kept (ingress-controller mode).
    let text = client()
        .get(s.gw.url("app.demo.localhost", "/headers"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("host: app.demo.localhost"), "{text}");

    // Change the host: the old one goes, the new one comes.
    s.api.apply(ingress(
        "web",
        "shop.demo.localhost",
        "/",
        json!({"number": 80}),
    ));
    let took = until_status(&s.gw, "shop.demo.localhost", "/hello", 200).await;
    eprintln!("changed Ingress routable after {took:?}");
    until_status(&s.gw, "app.demo.localhost", "/hello", 404).await;

    // A named port is resolved through the Service; an unknown name is not published.
    s.api.apply(ingress(
        "named",
        "named.demo.localhost",
        "/",
        json!({"name": "http"}),
    ));
    s.api.apply(ingress(
        "dangling",
        "dangling.demo.localhost",
        "/",
        json!({"name": "grpc"}),
    ));
    until_status(&s.gw, "named.demo.localhost", "/hello", 200).await;
    assert_eq!(
        client()
            .get(s.gw.url("dangling.demo.localhost", "/hello"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // A host of another tenant is refused by the gateway.
    s.api.apply(ingress(
        "evil",
        "bank.other.localhost",
        "/",
        json!({"number": 80}),
    ));
    s.api.delete("Ingress", "shop", "web");
    until_status(&s.gw, "shop.demo.localhost", "/hello", 404).await;
    // Never served by demo's agent: the name is other's, and other has no agent here.
    assert_eq!(
        client()
            .get(s.gw.url("bank.other.localhost", "/hello"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_watches_and_410_gone_converge() {
    let s = setup().await;
    s.api.apply(service());
    s.api
        .apply(ingress("a", "a.demo.localhost", "/", json!({"number": 80})));
    until_status(&s.gw, "a.demo.localhost", "/hello", 200).await;

    // The watch breaks; a change made meanwhile is replayed from history on re-watch.
    s.api.break_watches();
    s.api
        .apply(ingress("b", "b.demo.localhost", "/", json!({"number": 80})));
    until_status(&s.gw, "b.demo.localhost", "/hello", 200).await;

    // The watch breaks and history is compacted past the agent's version: 410 Gone forces a
    // re-list, which still finds every change.
    s.api.break_watches();
    s.api
        .apply(ingress("c", "c.demo.localhost", "/", json!({"number": 80})));
    s.api.delete("Ingress", "shop", "a");
    s.api.compact();
    let took = until_status(&s.gw, "c.demo.localhost", "/hello", 200).await;
    eprintln!("converged {took:?} after 410 Gone");
    until_status(&s.gw, "a.demo.localhost", "/hello", 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_found_public_can_opt_out() {
    let s = setup_with(&["--heartbeat-interval", "200ms"], &["--skip-if-public"]).await;
    let (api, gw) = (&s.api, &s.gw);
    // No ingress controller Service: private, so the Ingress is published.
    api.apply(ingress(
        "web",
        "app.demo.localhost",
        "/",
        json!({"number": 80}),
    ));
    until_status(gw, "app.demo.localhost", "/hello", 200).await;
    // The controller gets a public address: the cluster is reachable without us, and the
    // operator asked not to publish then.
    api.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "ingress-nginx-controller", "namespace": "ingress-nginx"},
        "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}
    }));
    until_status(gw, "app.demo.localhost", "/hello", 404).await;
    // The agent's judgement reaches the gateway with its heartbeats.
    s.gw.wait_metric(r#"gateway_cluster_private{cluster_uuid="demo"} 0"#)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_reads_the_fake_api_server_unmodified() {
    let api = KubeApi::start().await;
    let dir = TempDir(std::env::temp_dir().join(format!(
        "tg-kubectl-{}-{}",
        std::process::id(),
        api.addr.port()
    )));
    std::fs::create_dir_all(&dir.0).unwrap();
    let kubeconfig = api.kubeconfig(&dir.0);
    api.apply(ingress(
        "web",
        "app.demo.localhost",
        "/",
        json!({"number": 80}),
    ));
    api.apply(service());
    let Ok(out) = tokio::process::Command::new("kubectl")
        .args(["--kubeconfig", kubeconfig.to_str().unwrap(), "--cache-dir"])
        .arg(dir.0.join("cache"))
        .args(["get", "ingresses,services", "-A", "-o", "name"])
        .output()
        .await
    else {
        eprintln!("kubectl is not installed; the kube-rs tests cover the server");
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ingress.networking.k8s.io/web"), "{stdout}");
    assert!(stdout.contains("service/web"), "{stdout}");
}
