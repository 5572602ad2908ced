//! Real kubectl into a private cluster through the gateway: a faithful API server over HTTPS
//! with its own CA that accepts only the agent's ServiceAccount token, an agent with
//! `--kubernetes-api`, a gateway serving `{cluster}.k8s.{domain}` over HTTPS, and a kubeconfig
//! exactly as the admin API issues it. Every verb, over WebSocket and over the SPDY/3.1
//! fallback, on one node and across a peer hop; the API server sees the access token's
//! identity, never the caller's credentials.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::apiserver::ApiServer;
use common::upstream::TestCa;
use common::{Agent, DEMO, Gateway, HANG, Redis, Upstream, client};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const ADMIN: &str = "admin-token-for-kubectl-tests-0123456789";

struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let d = std::env::temp_dir().join(format!("tg-kubectl-{nanos}"));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn write(&self, name: &str, text: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An HTTP CONNECT proxy on loopback that takes every tunnel to the gateway's HTTPS listener:
/// kubectl's resolver cannot map `demo.k8s.localhost` to loopback, its `proxy-url` can, and
/// the TLS session (SNI, certificate check, Host) is still kubectl's own, end to end.
struct ConnectProxy {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl ConnectProxy {
    async fn start(to: SocketAddr) -> ConnectProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if sock.read_exact(&mut b).await.is_err() || head.len() > 8192 {
                            return;
                        }
                        head.push(b[0]);
                    }
                    if !head.starts_with(b"CONNECT ") {
                        return;
                    }
                    let Ok(mut up) = tokio::net::TcpStream::connect(to).await else {
                        return;
                    };
                    // Without these, Nagle and delayed ACKs add 40 ms to every TLS handshake.
                    let _ = (sock.set_nodelay(true), up.set_nodelay(true));
                    if sock
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let _ = tokio::io::copy_bidirectional(&mut sock, &mut up).await;
                });
            }
        });
        ConnectProxy { addr, task }
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Gateway (one node, or two sharing Redis with the agent on the second), the API server, an
/// agent serving it, and kubectl's configuration for user `alice` in group `devs`.
struct Setup {
    api: ApiServer,
    /// The node clients reach (the first).
    gw: Gateway,
    _owner: Option<Gateway>,
    _redis: Option<Redis>,
    _agent: Agent,
    _proxy: ConnectProxy,
    https: SocketAddr,
    dir: Dir,
    _ca: TestCa,
    kubeconfig: PathBuf,
    token: String,
    token_id: String,
    /// Port-forward target.
    _up: Upstream,
}

fn tls_args(dir: &Dir, ca: &TestCa) -> Vec<String> {
    let cert = dir.write("tls.crt", ca.cert_pem.as_bytes());
    let key = dir.write("tls.key", ca.key_pem.as_bytes());
    let ca_file = dir.write("ca.pem", ca.ca_pem.as_bytes());
    [
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--public-ca",
        ca_file.to_str().unwrap(),
        "--admin-token",
        ADMIN,
        "--public-host",
        "localhost",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

async fn setup(peer_hop: bool) -> Setup {
    let dir = Dir::new();
    let api = ApiServer::start().await;
    let up = Upstream::start().await;
    api.forward_to(up.addr);
    let ca = TestCa::with_names(&["*.k8s.localhost", "localhost"]);
    let args = tls_args(&dir, &ca);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (gw, owner, redis) = if peer_hop {
        let redis = Redis::start();
        let a = Gateway::node(&redis, &args);
        let b = Gateway::node(&redis, &args);
        (a, Some(b), Some(redis))
    } else {
        (Gateway::start(&args), None, None)
    };
    let api_ca = dir.write("api-ca.pem", api.ca.ca_pem.as_bytes());
    let sa_token = dir.write("sa-token", api.token.as_bytes());
    let agent_args = [
        "--kubernetes-api",
        "--kubernetes-api-url",
        &api.url(),
        "--kubernetes-ca-file",
        api_ca.to_str().unwrap(),
        "--kubernetes-token-file",
        sa_token.to_str().unwrap(),
        "--connections",
        "1",
    ];
    let agent = Agent::spawn(owner.as_ref().unwrap_or(&gw), DEMO, &[], &agent_args);
    agent.connected().await;
    let https = gw.https_addr().await;
    let proxy = ConnectProxy::start(https).await;
    let (token, token_id, kubeconfig) = issue(&gw, "alice", &["devs"]).await;
    // The kubeconfig as issued, plus the proxy that stands in for DNS.
    let kubeconfig = kubeconfig.replacen(
        "\n    server: ",
        &format!("\n    proxy-url: \"http://{}\"\n    server: ", proxy.addr),
        1,
    );
    let kubeconfig = dir.write("kubeconfig", kubeconfig.as_bytes());
    let s = Setup {
        api,
        gw,
        _owner: owner,
        _redis: redis,
        _agent: agent,
        _proxy: proxy,
        https,
        dir,
        _ca: ca,
        kubeconfig,
        token,
        token_id,
        _up: up,
    };
    if peer_hop {
        // The entry node learns the owner through Redis: wait until a call goes through.
        let deadline = Instant::now() + HANG;
        while s.kubectl(&["get", "pods"], &[]).await.status != Some(0) {
            assert!(
                Instant::now() < deadline,
                "the peer hop never served the API"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    s
}

/// Issues an access token through the admin API: (token, token id, kubeconfig).
async fn issue(gw: &Gateway, user: &str, groups: &[&str]) -> (String, String, String) {
    let r = client()
        .post(format!(
            "http://{}/admin/v1/clusters/{}/access-tokens",
            gw.admin, DEMO.0
        ))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body(serde_json::json!({"user": user, "groups": groups, "ttl_seconds": 3600}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["server"], "https://demo.k8s.localhost");
    (
        v["token"].as_str().unwrap().to_string(),
        v["token_id"].as_str().unwrap().to_string(),
        v["kubeconfig"].as_str().unwrap().to_string(),
    )
}

struct Out {
    status: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Setup {
    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("kubectl");
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.0.join("cache"))
            .args(["--request-timeout", "0"])
            .args(args)
            .envs(env.iter().copied())
            .env_remove("KUBECONFIG")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .kill_on_drop(true);
        c
    }

    /// Runs kubectl to the end with `stdin`.
    async fn kubectl_in(&self, args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> Out {
        let mut child = self
            .command(args, env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl is installed");
        let mut i = child.stdin.take().unwrap();
        let data = stdin.to_vec();
        tokio::spawn(async move {
            let _ = i.write_all(&data).await;
            let _ = i.shutdown().await;
        });
        let out = tokio::time::timeout(HANG, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} hung"))
            .unwrap();
        Out {
            status: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    async fn kubectl(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        self.kubectl_in(args, env, b"").await
    }

    async fn ok(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let o = self.kubectl(args, env).await;
        assert_eq!(o.status, Some(0), "kubectl {args:?}: {}", o.stderr);
        o.stdout
    }

    /// curl over HTTPS to `demo.k8s.localhost` (trusting the gateway's CA): (status, body).
    fn curl(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[&str],
    ) -> (u16, String) {
        self.curl_at(self.https, method, path, token, headers)
    }

    /// curl to the HTTPS listener at `at`.
    fn curl_at(
        &self,
        at: SocketAddr,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[&str],
    ) -> (u16, String) {
        let port = at.port();
        let mut c = std::process::Command::new("curl");
        c.args(["-sS", "--max-time", "20", "-X", method, "--cacert"])
            .arg(self.dir.0.join("ca.pem"))
            .args(["--resolve", &format!("demo.k8s.localhost:{port}:127.0.0.1")]);
        if let Some(t) = token {
            c.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        for h in headers {
            c.args(["-H", h]);
        }
        let out = c
            .args(["-w", "\n%{http_code}"])
            .arg(format!("https://demo.k8s.localhost:{port}{path}"))
            .output()
            .expect("curl installed");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
        (code.parse().unwrap_or(0), body.to_string())
    }
}

fn kubectl_installed() -> bool {
    let found = std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!(
            "kubectl is not installed: SKIPPED (scripts/test.sh installs it where an apt source has it)"
        );
    }
    found
}

/// The environment that makes kubectl use SPDY/3.1 instead of WebSocket.
const SPDY: &[(&str, &str)] = &[
    ("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false"),
    ("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false"),
];

/// Every verb of the issue, over WebSocket (`env` empty) or SPDY.
async fn every_verb(s: &Setup, env: &[(&str, &str)]) {
    let spdy = !env.is_empty();
    // get / list
    let pods = s.ok(&["get", "pods", "-o", "name"], env).await;
    assert_eq!(pods.trim(), "pod/web");
    let pod = s
        .ok(
            &["get", "pod", "web", "-o", "jsonpath={.status.phase}"],
            env,
        )
        .await;
    assert_eq!(pod, "Running");

    // exec: output, stdin, exit codes
    let before = s.api.calls().len();
    let hello = s
        .ok(&["exec", "web", "--", "echo", "hello", "tunnel"], env)
        .await;
    assert_eq!(hello, "hello tunnel\n");
    let exec_method = s.api.calls()[before..]
        .iter()
        .find(|c| c.path.ends_with("/exec"))
        .map(|c| c.method.clone());
    // WebSocket is a GET; the SPDY upgrade a POST: each mode really took its path.
    assert_eq!(
        exec_method.as_deref(),
        Some(if spdy { "POST" } else { "GET" })
    );
    let input: Vec<u8> = (0..200_000u32)
        .map(|i| b"abcdefghij\n"[(i % 11) as usize])
        .collect();
    let o = s
        .kubectl_in(&["exec", "-i", "web", "--", "cat"], env, &input)
        .await;
    assert_eq!(o.status, Some(0), "{}", o.stderr);
    assert!(
        o.stdout.as_bytes() == input.as_slice(),
        "exec -i cat returned {} bytes",
        o.stdout.len()
    );
    let o = s
        .kubectl(&["exec", "web", "--", "sh", "-c", "exit 3"], env)
        .await;
    assert_eq!(o.status, Some(3), "exit code carried: {}", o.stderr);

    // exec -t: a terminal on kubectl's side (script(1) gives it one); the exit code still
    // comes back
    let line = format!(
        "kubectl --kubeconfig {} --cache-dir {} exec -it web -- sh -c 'exit 5'",
        s.kubeconfig.display(),
        s.dir.0.join("cache").display()
    );
    let mut child = tokio::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("script(1) is installed");
    // Held open: at end of input script(1) types ^D into the terminal and waits for more.
    let _stdin = child.stdin.take();
    let out = tokio::time::timeout(HANG, child.wait_with_output())
        .await
        .expect("exec -t hung")
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(5),
        "exec -t: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // attach
    let o = s
        .kubectl_in(&["attach", "-i", "web", "-c", "main"], env, b"attached\n")
        .await;
    assert_eq!(o.status, Some(0), "{}", o.stderr);
    assert!(o.stdout.contains("attached"), "{}", o.stdout);

    // cp both ways
    let local = s.dir.write(&format!("up-{spdy}.txt"), b"to the pod\n");
    s.ok(
        &[
            "cp",
            local.to_str().unwrap(),
            &format!("web:/tmp/up-{spdy}.txt"),
        ],
        env,
    )
    .await;
    assert_eq!(
        s.api.file(&format!("/tmp/up-{spdy}.txt")).as_deref(),
        Some(&b"to the pod\n"[..])
    );
    s.api.put_file("/data/report.txt", b"from the pod\n");
    let back = s.dir.0.join(format!("back-{spdy}.txt"));
    s.ok(&["cp", "web:/data/report.txt", back.to_str().unwrap()], env)
        .await;
    assert_eq!(std::fs::read(&back).unwrap(), b"from the pod\n");

    // port-forward, then a request through it
    port_forward(s, env).await;
}

async fn port_forward(s: &Setup, env: &[(&str, &str)]) {
    let mut child = s
        .command(&["port-forward", "pod/web", ":8080"], env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(HANG, lines.next_line())
        .await
        .expect("port-forward started")
        .unwrap()
        .unwrap_or_else(|| panic!("port-forward exited"));
    // "Forwarding from 127.0.0.1:PORT -> 8080"
    let port: u16 = line
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    for _ in 0..3 {
        let body = client()
            .get(format!("http://127.0.0.1:{port}/hello"))
            .header("connection", "close")
            .send()
            .await
            .expect("through port-forward")
            .text()
            .await
            .unwrap();
        assert!(!body.is_empty());
    }
    let _ = child.kill().await;
}

/// `logs -f` and `get -w` deliver lines as the server writes them.
async fn streams_follow(s: &Setup) {
    let mut child = s
        .command(&["logs", "-f", "web"], &[])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    async fn next(
        l: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    ) -> Option<String> {
        tokio::time::timeout(HANG, l.next_line())
            .await
            .expect("a log line")
            .unwrap()
    }
    assert_eq!(next(&mut lines).await.as_deref(), Some("log line 1"));
    // Line 2 does not exist until released: what arrives after is streamed, not buffered.
    s.api.release_log_lines(2);
    assert_eq!(next(&mut lines).await.as_deref(), Some("log line 2"));
    assert_eq!(next(&mut lines).await.as_deref(), Some("log line 3"));
    assert_eq!(
        next(&mut lines).await,
        None,
        "the log ended with the server's"
    );
    let _ = child.wait().await;

    let mut child = s
        .command(&["get", "pods", "--watch", "-o", "name"], &[])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(HANG, lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.as_deref(), Some("pod/web"));
    let name = format!("added-{}", s.api.calls().len());
    // The watch may not be open yet when the pod is added; it starts from the list's
    // resourceVersion, so the event is delivered either way.
    s.api.add_pod(&name);
    let added = tokio::time::timeout(HANG, lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(added, Some(format!("pod/{name}")));
    let _ = child.kill().await;
}

/// Every call the API server saw was made with the agent's token for `alice` in `devs`.
fn only_alice(s: &Setup) {
    let calls = s.api.calls();
    assert!(calls.len() > 10, "{calls:?}");
    for c in &calls {
        assert_eq!(
            c.authorization.as_deref(),
            Some(&*format!("Bearer {}", s.api.token)),
            "{c:?}"
        );
        assert_eq!(c.user.as_deref(), Some("alice"), "{c:?}");
        assert_eq!(c.groups, ["devs"], "{c:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kubectl_verb_over_websocket_as_the_access_tokens_identity() {
    if !kubectl_installed() {
        return;
    }
    let s = setup(false).await;
    every_verb(&s, &[]).await;
    streams_follow(&s).await;
    only_alice(&s);
    // One audit line per call, with who and what.
    let line = s.gw.wait_log("kubernetes api call").await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["user"], "alice");
    assert_eq!(v["cluster"], "demo");
    s.gw.wait_metric(
        r#"gateway_kubernetes_requests_total{cluster_uuid="demo",verb="exec",status_code="101"}"#,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kubectl_verb_over_the_spdy_fallback() {
    if !kubectl_installed() {
        return;
    }
    let s = setup(false).await;
    every_verb(&s, SPDY).await;
    only_alice(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kubectl_verb_across_a_peer_hop_and_revocation_on_every_node() {
    if !kubectl_installed() {
        return;
    }
    let s = setup(true).await;
    every_verb(&s, &[]).await;
    every_verb(&s, SPDY).await;
    streams_follow(&s).await;
    only_alice(&s);
    // Revoked on the entry node: refused there at once, and by the other node (which serves
    // the API too) within 5 s.
    let owner_https = s._owner.as_ref().unwrap().https_addr().await;
    let path = "/api/v1/namespaces/default/pods/web";
    assert_eq!(
        s.curl_at(owner_https, "GET", path, Some(&s.token), &[]).0,
        200
    );
    let r = client()
        .delete(format!(
            "http://{}/admin/v1/clusters/demo/access-tokens/{}",
            s.gw.admin, s.token_id
        ))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let start = Instant::now();
    let o = s.kubectl(&["get", "pods"], &[]).await;
    assert_ne!(o.status, Some(0));
    assert!(
        o.stderr.contains("Unauthorized") || o.stderr.contains("logged in"),
        "{}",
        o.stderr
    );
    while s.curl_at(owner_https, "GET", path, Some(&s.token), &[]).0 != 401 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the other node still accepts a revoked token"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_cannot_bring_their_own_identity_and_rbac_decides() {
    let s = setup(false).await;
    let path = "/api/v1/namespaces/default/pods/web";
    // The caller's own Authorization and Impersonate-* never arrive: the token's user does.
    let (code, _) = s.curl(
        "GET",
        path,
        Some(&s.token),
        &[
            "Impersonate-User: admin",
            "Impersonate-Group: system:masters",
            "Impersonate-Extra-Scopes: all",
        ],
    );
    assert_eq!(code, 200);
    let last = s.api.calls().pop().unwrap();
    assert_eq!(last.user.as_deref(), Some("alice"));
    assert_eq!(last.groups, ["devs"]);
    assert_eq!(last.authorization, Some(format!("Bearer {}", s.api.token)));

    // Refused at the gateway, nothing reaches the agent: no token, another cluster's token, an
    // agent token, a made-up one. Kubernetes Status bodies, which kubectl prints.
    let seen = s.api.calls().len();
    let (other, _, _) = {
        let r = client()
            .post(format!("http://{}/admin/v1/clusters", s.gw.admin))
            .bearer_auth(ADMIN)
            .body(serde_json::json!({"id": "acme"}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let r = client()
            .post(format!(
                "http://{}/admin/v1/clusters/acme/access-tokens",
                s.gw.admin
            ))
            .bearer_auth(ADMIN)
            .body(serde_json::json!({"user": "mallory"}).to_string())
            .send()
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        (v["token"].as_str().unwrap().to_string(), (), ())
    };
    for token in [None, Some(other.as_str()), Some(DEMO.1), Some("tgk_0000")] {
        let (code, body) = s.curl("GET", path, token, &[]);
        assert_eq!(code, 401, "{token:?}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["kind"], "Status");
        assert_eq!(v["reason"], "Unauthorized");
    }
    assert_eq!(s.api.calls().len(), seen, "nothing reached the API server");

    // Over plain HTTP a token would cross in clear: refused while the gateway serves HTTPS.
    let r = client()
        .get(format!(
            "http://demo.k8s.localhost:{}/api/v1/namespaces/default/pods",
            s.gw.addr.port()
        ))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // Kubernetes RBAC decides: `viewer` may read but not exec (the API server's answer).
    let (viewer, _, _) = issue(&s.gw, "viewer", &[]).await;
    assert_eq!(s.curl("GET", path, Some(&viewer), &[]).0, 200);
    let exec = format!("{path}/exec?command=ls&stdout=true");
    assert_eq!(s.curl("POST", &exec, Some(&viewer), &[]).0, 403);

    // Revoked: refused at once on this node.
    let r = client()
        .delete(format!(
            "http://{}/admin/v1/clusters/demo/access-tokens/{}",
            s.gw.admin, s.token_id
        ))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(s.curl("GET", path, Some(&s.token), &[]).0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_exec_sessions_each_get_only_their_own_input() {
    if !kubectl_installed() {
        return;
    }
    let s = setup(false).await;
    let runs = (0..50).map(|i| {
        let s = &s;
        async move {
            let input = format!("session {i}: {}\n", "x".repeat(1000 + i * 37)).into_bytes();
            let o = s
                .kubectl_in(&["exec", "-i", "web", "--", "cat"], &[], &input)
                .await;
            assert_eq!(o.status, Some(0), "session {i}: {}", o.stderr);
            assert!(
                o.stdout.as_bytes() == input.as_slice(),
                "session {i} got another's bytes"
            );
        }
    });
    futures_util::future::join_all(runs).await;
}
