//! Test harness: starts the real gateway binary, in-process agents, a real HTTP upstream and
//! clients, each on a random loopback port, and stops every one of them on drop, so each test
//! reads as the scenario it checks.

#![allow(dead_code, unused_imports)]

pub mod apiserver;
pub mod dnsmasq;
pub mod kubeapi;
pub mod otlp;
pub mod pebble;
pub mod redis;
pub mod spdy;
pub mod upstream;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tunnelgate_agent::Status;

pub use redis::Redis;
pub use upstream::Upstream;

/// Cluster ids and tokens every test gateway knows.
pub const DEMO: (&str, &str) = ("demo", "demo-token-1-aaaaaaaaaaaaaaaaaaaaaaaa");
pub const OTHER: (&str, &str) = ("other", "other-token-2-bbbbbbbbbbbbbbbbbbbbbbb");

/// Upper bound for anything a test waits on; reaching it means a hang, which fails the test.
pub const HANG: Duration = Duration::from_secs(30);

/// The gateway binary, running on a random loopback port.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    /// The internal listener: `/metrics`, `/readyz`, `/healthz`.
    pub admin: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

/// The secret test nodes share on peer links.
pub const PEER_SECRET: &str = "peer-secret-for-tests";

impl Gateway {
    /// A node of a cluster sharing `redis`, with a peer endpoint on a free port.
    pub fn node(redis: &Redis, extra: &[&str]) -> Gateway {
        let url = redis.url();
        let mut args = vec![
            "--redis-url",
            url.as_str(),
            "--peer-listen",
            "127.0.0.1:0",
            "--peer-secret",
            PEER_SECRET,
            "--heartbeat-interval",
            "500ms",
        ];
        args.extend_from_slice(extra);
        Gateway::start(&args)
    }

    /// The peer endpoint's address, from the node's log.
    pub async fn peer_addr(&self) -> String {
        let line = self.wait_log("peer endpoint listening").await;
        let v: serde_json::Value = serde_json::from_str(&line).expect("json log line");
        v["addr"].as_str().expect("addr").to_string()
    }

    pub fn start(extra: &[&str]) -> Gateway {
        Gateway::start_on("127.0.0.1:0", extra)
    }

    /// A gateway listening on `listen` (e.g. the address of one that was stopped).
    pub fn start_on(listen: &str, extra: &[&str]) -> Gateway {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tunnelgate-gateway"));
        cmd.args(["--listen", listen, "--log-format", "json", "--workers", "2"])
            .args(["--admin-listen", "127.0.0.1:0"])
            // Tests move far more than the default 100 requests/s of a cluster; the rate-limit
            // tests give their own.
            .args(if extra.contains(&"--rate-limit") {
                &[][..]
            } else {
                &["--rate-limit", "1000000", "--rate-burst", "1000000"][..]
            })
            .args(["--cluster", &format!("{}:{}", DEMO.0, DEMO.1)])
            .args(["--cluster", &format!("{}:{}", OTHER.0, OTHER.1)])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("start tunnelgate-gateway");
        let stdout = child.stdout.take().expect("gateway stdout");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let (admin_tx, admin_rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            let mut admin_tx = Some(admin_tx);
            let addr_of = |line: &str| {
                let v: serde_json::Value = serde_json::from_str(line).expect("json log line");
                v["addr"].as_str().expect("addr field").to_string()
            };
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("gateway listening")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr_of(&line));
                }
                if line.contains("admin endpoint listening")
                    && let Some(tx) = admin_tx.take()
                {
                    let _ = tx.send(addr_of(&line));
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(HANG)
            .expect("gateway printed its address")
            .parse()
            .expect("gateway address");
        let admin = admin_rx
            .recv_timeout(HANG)
            .expect("gateway printed its admin address")
            .parse()
            .expect("admin address");
        Gateway {
            child,
            addr,
            admin,
            logs,
        }
    }

    /// Sends SIGTERM (what Kubernetes sends to a pod leaving).
    pub fn terminate(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -TERM");
    }

    /// Stops the process (SIGSTOP) as a hung node or a half-open connection would look: its
    /// sockets stay open, nothing answers. Dropping the returned guard lets it go on (SIGCONT).
    pub fn freeze(&self) -> Frozen {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -STOP");
        // The stop reaches each thread when it next runs: wait until every one of them is
        // stopped, so that nothing this process still had in hand gets answered after this.
        let stopped = || {
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|tasks| {
                    tasks.filter_map(Result::ok).all(|t| {
                        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
                            stat.rsplit_once(')')
                                .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
                        })
                    })
                })
                .unwrap_or(false)
        };
        let deadline = std::time::Instant::now() + HANG;
        while !stopped() {
            assert!(
                std::time::Instant::now() < deadline,
                "process {pid} never stopped"
            );
            std::thread::yield_now();
        }
        Frozen(pid)
    }

    /// Waits up to `within` for the process to exit; its exit code.
    pub fn exit_code(&mut self, within: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The status of `/healthz` on the public listener: 200 while the node serves.
    pub async fn healthz(&self) -> u16 {
        let r = client()
            .get(format!("http://{}/healthz", self.addr))
            .send()
            .await;
        r.expect("healthz answered").status().as_u16()
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// `http://HOST:PORT/path` for a host served by this gateway.
    pub fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.addr.port())
    }

    /// The HTTPS listener's address (with `--tls-listen`), from the log.
    pub async fn https_addr(&self) -> SocketAddr {
        let line = self.wait_log("https listening").await;
        let v: serde_json::Value = serde_json::from_str(&line).expect("json log line");
        v["addr"]
            .as_str()
            .expect("addr")
            .parse()
            .expect("https address")
    }

    /// Every log line so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Waits until a log line contains `needle`.
    pub async fn wait_log(&self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + HANG;
        loop {
            if let Some(l) = self
                .logs
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no log line with {needle:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        client()
            .get(format!("http://{}/metrics", self.admin))
            .send()
            .await
            .expect("metrics request")
            .text()
            .await
            .expect("metrics body")
    }

    /// Waits until `/metrics` has a line containing `needle` (metrics change only as
    /// requests and heartbeats arrive, so this polls).
    pub async fn wait_metric(&self, needle: &str) {
        wait_metric_at(&format!("http://{}/metrics", self.admin), needle).await;
    }

    /// (current RSS, peak RSS) of the gateway process, in bytes.
    pub fn rss(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .expect("rss field")
                * 1024
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // A failing test shows what each of its nodes logged.
        if std::thread::panicking() {
            let logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
            eprintln!("--- gateway {} logged {} lines:", self.addr, logs.len());
            for l in logs.iter() {
                eprintln!("{l}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Log lines (JSON) of what runs in this test's process — the in-process agent — from now on.
pub fn capture_logs() -> Arc<Mutex<Vec<u8>>> {
    #[derive(Clone)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = Sink(buf.clone());
    tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || sink.clone())
        .try_init()
        .expect("the test's only log subscriber");
    buf
}

/// Waits until a captured log line contains every one of `needles`; returns it.
pub async fn wait_captured(logs: &Mutex<Vec<u8>>, needles: &[&str]) -> String {
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        let text = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
        if let Some(l) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return l.to_string();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no captured log line with {needles:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A frozen gateway process; it goes on when this is dropped.
pub struct Frozen(String);

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0]).status();
    }
}

/// An agent running in this process. Dropping it aborts it at once, as a crash would.
pub struct Agent {
    task: tokio::task::JoinHandle<Result<(), String>>,
    stop: watch::Sender<bool>,
    pub status: watch::Receiver<Status>,
}

impl Agent {
    /// Starts an agent for `cluster` with `routes` (host → upstream URL) and waits until the
    /// gateway acknowledged its routes.
    pub async fn start(gw: &Gateway, cluster: (&str, &str), routes: &[(&str, String)]) -> Agent {
        let a = Agent::spawn(gw, cluster, routes, &[]);
        a.connected().await;
        a
    }

    pub fn spawn(
        gw: &Gateway,
        cluster: (&str, &str),
        routes: &[(&str, String)],
        extra: &[&str],
    ) -> Agent {
        Agent::spawn_to(&[gw], cluster, routes, extra)
    }

    /// An agent given several gateway URLs (tried in turn).
    pub fn spawn_to(
        gws: &[&Gateway],
        cluster: (&str, &str),
        routes: &[(&str, String)],
        extra: &[&str],
    ) -> Agent {
        let urls: Vec<String> = gws.iter().map(|g| g.ws_url()).collect();
        Agent::spawn_urls(&urls, cluster, routes, extra)
    }

    /// An agent dialling exactly `urls` (e.g. `wss://…`).
    pub fn spawn_urls(
        urls: &[String],
        cluster: (&str, &str),
        routes: &[(&str, String)],
        extra: &[&str],
    ) -> Agent {
        let mut args: Vec<String> = vec![
            "tunnelgate-agent".into(),
            "--gateway".into(),
            urls.join(","),
            "--cluster".into(),
            cluster.0.into(),
            "--token".into(),
            cluster.1.into(),
            "--reconnect-min".into(),
            "50ms".into(),
            "--reconnect-max".into(),
            "500ms".into(),
        ];
        for (host, url) in routes {
            args.push("--route".into());
            args.push(format!("{host}={url}"));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let config = <tunnelgate_agent::config::Config as clap::Parser>::try_parse_from(args)
            .expect("agent args")
            .validate()
            .expect("agent config");
        let (status_tx, status) = watch::channel(Status::Starting);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(tunnelgate_agent::run(config, status_tx, stop_rx));
        Agent { task, stop, status }
    }

    /// Waits until the agent is connected with its routes acknowledged; returns the status.
    pub async fn connected(&self) -> Status {
        let mut rx = self.status.clone();
        let s = tokio::time::timeout(HANG, rx.wait_for(|s| matches!(s, Status::Connected { .. })))
            .await
            .expect("agent connected in time")
            .expect("agent alive");
        s.clone()
    }

    /// Waits until the agent holds tunnels to `n` distinct nodes.
    pub async fn nodes(&self, n: usize) -> Vec<String> {
        let mut rx = self.status.clone();
        let s = tokio::time::timeout(
            HANG,
            rx.wait_for(|s| matches!(s, Status::Connected { nodes, .. } if nodes.len() >= n)),
        )
        .await
        .expect("agent holds enough tunnels in time")
        .expect("agent alive");
        match &*s {
            Status::Connected { nodes, .. } => nodes.clone(),
            _ => unreachable!(),
        }
    }

    /// Stops gracefully (closes the tunnel) and waits for the agent to finish.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(HANG, &mut self.task)
            .await
            .expect("agent stopped in time");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A resolver that sends every name to loopback, so test URLs can name real hosts
/// (`app.demo.localhost`) as a browser would, with the gateway's port in the URL.
struct Loopback;

impl reqwest::dns::Resolve for Loopback {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async {
            let addrs: reqwest::dns::Addrs =
                Box::new(std::iter::once(SocketAddr::from(([127, 0, 0, 1], 0))));
            Ok(addrs)
        })
    }
}

/// One admin API call to a node's internal listener: (status, JSON body or null).
pub async fn admin_call(
    gw: &Gateway,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://{}{path}", gw.admin);
    let mut req = match method {
        "POST" => c.post(url),
        "PUT" => c.put(url),
        "DELETE" => c.delete(url),
        _ => c.get(url),
    };
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// Polls the metrics endpoint `url` until it has a line containing `needle` (a gateway's or an
/// agent's: metrics change only as requests and heartbeats arrive); its text then.
pub async fn wait_metric_at(url: &str, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        let text = client()
            .get(url)
            .send()
            .await
            .expect("metrics request")
            .text()
            .await
            .expect("metrics body");
        if text.lines().any(|l| l.contains(needle)) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no metric line with {needle:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An HTTP client that reaches every host on loopback and never uses a proxy.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .dns_resolver(Arc::new(Loopback))
        .pool_max_idle_per_host(64)
        .build()
        .expect("client")
}

/// Sends raw bytes to `addr` and returns what comes back until the server closes or
/// `deadline` passes.
pub async fn raw_request(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                // One response is enough: the head and a body of the announced length.
                if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if out.len() >= end + 4 + len {
                        break;
                    }
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The byte at offset `i` of every generated body: a pattern that catches reordering,
/// duplication and loss.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// A buffer from which any run of the pattern can be sliced: `PATTERN[i % 251..][..n]`.
pub fn pattern_source(max_chunk: usize) -> bytes::Bytes {
    (0..(max_chunk + 251) as u64)
        .map(pattern_byte)
        .collect::<Vec<u8>>()
        .into()
}

/// A hand-driven agent connection, for sending what a real agent never would.
pub struct FakeAgent {
    pub ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    /// The protocol it registered with (2 unless `register_routes_in` said otherwise): from 3
    /// on, heads travel as head frames.
    pub protocol: u32,
}

impl FakeAgent {
    /// Upgrades to `/v1/tunnel` with `token` (and the cluster header, when given).
    pub async fn connect(
        gw: &Gateway,
        token: Option<&str>,
        claim: Option<&str>,
    ) -> Result<FakeAgent, tokio_tungstenite::tungstenite::Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("{}/v1/tunnel", gw.ws_url()).into_client_request()?;
        if let Some(t) = token {
            req.headers_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        if let Some(c) = claim {
            req.headers_mut()
                .insert("x-tunnelgate-cluster", c.parse().unwrap());
        }
        let (ws, _) = tokio_tungstenite::connect_async(req).await?;
        Ok(FakeAgent { ws, protocol: 2 })
    }

    pub async fn send_text(&mut self, s: &str) {
        use futures_util::SinkExt;
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::Text(s.into()))
            .await
            .expect("send text");
    }

    pub async fn send_binary(&mut self, b: Vec<u8>) {
        use futures_util::SinkExt;
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::Binary(b.into()))
            .await
            .expect("send binary");
    }

    /// The next text message.
    pub async fn recv_text(&mut self) -> String {
        use futures_util::StreamExt;
        loop {
            let m = tokio::time::timeout(HANG, self.ws.next())
                .await
                .expect("message in time")
                .expect("connection open")
                .expect("message");
            if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
                return t.to_string();
            }
        }
    }

    /// Registers as `cluster` and publishes `host` (pointing nowhere).
    pub async fn register(&mut self, cluster: &str, host: &str) {
        self.send_text(&format!(
            r#"{{"type":"register","payload":{{"cluster":"{cluster}","agent_version":"fake","protocol":2}}}}"#
        ))
        .await;
        assert!(self.recv_text().await.contains("register_success"));
        self.send_text(&format!(
            r#"{{"type":"ingress_routes","payload":{{"action":"sync","routes":[{{"host":"{host}","path":"/"}}]}}}}"#
        ))
        .await;
        assert!(self.recv_text().await.contains("routes_ack"));
    }

    /// Registers as `cluster` and publishes `routes` (host, path) with one `sync`; returns
    /// the `routes_ack` payload.
    pub async fn register_routes(
        &mut self,
        cluster: &str,
        routes: &[(&str, &str)],
    ) -> serde_json::Value {
        self.register_routes_in(2, cluster, routes).await
    }

    /// [`FakeAgent::register_routes`] in wire protocol `protocol`.
    pub async fn register_routes_in(
        &mut self,
        protocol: u32,
        cluster: &str,
        routes: &[(&str, &str)],
    ) -> serde_json::Value {
        self.protocol = protocol;
        self.send_text(&format!(
            r#"{{"type":"register","payload":{{"cluster":"{cluster}","agent_version":"fake","protocol":{protocol}}}}}"#
        ))
        .await;
        assert!(self.recv_text().await.contains("register_success"));
        let routes: Vec<serde_json::Value> = routes
            .iter()
            .map(|(h, p)| serde_json::json!({"host": h, "path": p}))
            .collect();
        let msg = serde_json::json!({"type": "ingress_routes", "payload": {"action": "sync", "routes": routes}});
        self.send_text(&msg.to_string()).await;
        let ack: serde_json::Value = serde_json::from_str(&self.recv_text().await).unwrap();
        assert_eq!(ack["type"], "routes_ack");
        ack["payload"].clone()
    }

    /// The next `proxy_request` (a head frame from protocol 3 on): its stream id and the
    /// request as JSON.
    pub async fn next_request(&mut self) -> (u32, serde_json::Value) {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        while self.protocol >= 3 {
            let m = tokio::time::timeout(HANG, self.ws.next())
                .await
                .expect("message in time")
                .expect("connection open")
                .expect("message");
            if let Message::Binary(b) = m
                && tunnelgate_proto::head::is_head(&b)
            {
                let r = tunnelgate_proto::head::decode_request(&b).expect("a request head");
                return (r.stream_id, serde_json::to_value(&r).unwrap());
            }
        }
        loop {
            let v: serde_json::Value = serde_json::from_str(&self.recv_text().await).unwrap();
            if v["type"] == "proxy_request" {
                let id = v["payload"]["stream_id"].as_u64().unwrap() as u32;
                return (id, v["payload"].clone());
            }
        }
    }

    /// Answers stream `id` with `status` and `headers`, then `body` as DATA frames and END
    /// (when given), whatever the request was: what a hostile agent may do.
    pub async fn respond(
        &mut self,
        id: u32,
        status: u16,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) {
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        if self.protocol >= 3 {
            // One head frame with the whole body, however the head describes it.
            let head = tunnelgate_proto::control::ProxyResponse {
                stream_id: id,
                status,
                headers,
                body: body.is_some(),
            };
            let frame = tunnelgate_proto::head::encode_response_with(&head, body);
            self.send_binary(frame.to_vec()).await;
            return;
        }
        let msg = serde_json::json!({"type": "proxy_response", "payload": {
            "stream_id": id, "status": status, "headers": headers, "body": body.is_some()}});
        self.send_text(&msg.to_string()).await;
        if let Some(b) = body {
            let data = tunnelgate_proto::Frame::Data {
                stream: id,
                data: bytes::Bytes::copy_from_slice(b),
            };
            self.send_binary(data.to_bytes().to_vec()).await;
            self.send_binary(
                tunnelgate_proto::Frame::End { stream: id }
                    .to_bytes()
                    .to_vec(),
            )
            .await;
        }
    }

    /// Waits for the gateway to close the connection; returns the close code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            match tokio::time::timeout(HANG, self.ws.next())
                .await
                .expect("close in time")
            {
                Some(Ok(Message::Close(Some(f)))) => return (f.code.into(), f.reason.to_string()),
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return (0, String::new()),
                Some(Ok(_)) => continue,
            }
        }
    }
}
