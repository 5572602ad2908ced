//! A faithful Kubernetes API server for kubectl's everyday and streaming verbs, served over
//! HTTPS with its own CA and accepting only one ServiceAccount token (the agent's), recording
//! who every call impersonates. Pods: get, list, watch (resourceVersion); `log?follow=true`
//! (lines as the test releases them); exec and attach over WebSocket (`v5.channel.k8s.io`,
//! `v4.channel.k8s.io`) and over SPDY/3.1 (`v4.channel.k8s.io` streams); port-forward over
//! SPDY/3.1 and over SPDY inside WebSocket (`SPDY/3.1+portforward.k8s.io`), to a TCP address
//! the test gives. Containers run a few commands on an in-memory filesystem: `cat`, `echo`,
//! `sh -c 'exit N'`, `test -d`, `tar cf`/`tar xf` (what `kubectl cp` runs). Authorization is
//! a stand-in for RBAC: the user `viewer` may only get, list and watch.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::spdy;
use super::upstream::TestCa;

type Body = BoxBody<Bytes, Infallible>;

/// The namespace every pod lives in.
pub const NS: &str = "default";

/// One call as the API server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub user: Option<String>,
    pub groups: Vec<String>,
    pub status: u16,
}

struct State {
    token: String,
    calls: Mutex<Vec<Seen>>,
    pods: Mutex<BTreeMap<String, Value>>,
    rv: Mutex<u64>,
    events: broadcast::Sender<(u64, Value)>,
    /// Every event so far, replayed to a watch that starts from an older resourceVersion.
    history: Mutex<Vec<(u64, Value)>>,
    files: Mutex<BTreeMap<String, Vec<u8>>>,
    /// Each permit lets a following log stream write one more line.
    log_lines: Semaphore,
    forward_to: Mutex<Option<SocketAddr>>,
}

pub struct ApiServer {
    pub addr: SocketAddr,
    pub ca: TestCa,
    pub token: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ApiServer {
    pub async fn start() -> ApiServer {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = TestCa::new("127.0.0.1");
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![ca.cert_der.clone()], ca.key_der.clone_key())
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let token = format!("sa-token-{:016x}", rand_u64());
        let state = Arc::new(State {
            token: token.clone(),
            calls: Mutex::default(),
            pods: Mutex::default(),
            rv: Mutex::new(1),
            events: broadcast::channel(64).0,
            history: Mutex::default(),
            files: Mutex::default(),
            log_lines: Semaphore::new(0),
            forward_to: Mutex::default(),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (acceptor, st) = (acceptor.clone(), st.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(sock).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| serve(req, st.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        let api = ApiServer {
            addr,
            ca,
            token,
            state,
            task,
        };
        api.add_pod("web");
        api
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Creates a running pod (an ADDED event for watchers).
    pub fn add_pod(&self, name: &str) {
        let mut rv = self.state.rv.lock().unwrap();
        *rv += 1;
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"),
                         "resourceVersion": rv.to_string(),
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "main", "image": "busybox"}]},
            "status": {"phase": "Running", "containerStatuses": [{"name": "main", "ready": true,
                       "restartCount": 0, "image": "busybox", "imageID": "", "started": true,
                       "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}
        });
        self.state
            .pods
            .lock()
            .unwrap()
            .insert(name.into(), pod.clone());
        self.state.history.lock().unwrap().push((*rv, pod.clone()));
        let _ = self.state.events.send((*rv, pod));
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Seen> {
        self.state.calls.lock().unwrap().clone()
    }

    /// A file in the pods' filesystem (what `kubectl cp` wrote, or what it will read).
    pub fn file(&self, path: &str) -> Option<Vec<u8>> {
        self.state.files.lock().unwrap().get(path).cloned()
    }

    pub fn put_file(&self, path: &str, data: &[u8]) {
        self.state
            .files
            .lock()
            .unwrap()
            .insert(path.into(), data.to_vec());
    }

    /// Lets following log streams write `n` more lines.
    pub fn release_log_lines(&self, n: usize) {
        self.state.log_lines.add_permits(n);
    }

    /// Where port-forwarded connections go.
    pub fn forward_to(&self, addr: SocketAddr) {
        *self.state.forward_to.lock().unwrap() = Some(addr);
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

fn json_response(status: u16, v: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn query(req: &Request<Incoming>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn header_all(req: &Request<Incoming>, name: &str) -> Vec<String> {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

async fn serve(req: Request<Incoming>, state: Arc<State>) -> Result<Response<Body>, Infallible> {
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let user = req
        .headers()
        .get("impersonate-user")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let groups = req
        .headers()
        .get_all("impersonate-group")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    let mut seen = Seen {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        authorization: authorization.clone(),
        user: user.clone(),
        groups,
        status: 0,
    };
    let resp = if authorization.as_deref() != Some(&format!("Bearer {}", state.token)) {
        json_response(401, &status(401, "Unauthorized", "Unauthorized"))
    } else {
        route(req, &state, user.as_deref()).await
    };
    seen.status = resp.status().as_u16();
    state.calls.lock().unwrap().push(seen);
    Ok(resp)
}

/// Discovery, so kubectl finds pods and their subresources.
fn discovery(path: &str) -> Option<Value> {
    let r = |name: &str, verbs: Value| json!({"name": name, "singularName": "", "namespaced": true, "kind": "Pod", "verbs": verbs});
    Some(match path {
        "/version" => json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0-tunnelgate-test",
                             "platform": "linux/amd64"}),
        "/api" => json!({"kind": "APIVersions", "versions": ["v1"],
                         "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
        "/apis" => json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}),
        "/api/v1" => json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1",
        "resources": [
            r("pods", json!(["get", "list", "watch"])),
            r("pods/log", json!(["get"])),
            r("pods/exec", json!(["create", "get"])),
            r("pods/attach", json!(["create", "get"])),
            r("pods/portforward", json!(["create", "get"])),
        ]}),
        _ => return None,
    })
}

async fn route(req: Request<Incoming>, state: &Arc<State>, user: Option<&str>) -> Response<Body> {
    let path = req.uri().path().to_string();
    if let Some(doc) = discovery(&path) {
        return json_response(200, &doc);
    }
    let parts: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(String::from)
        .collect();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let (pod, sub) = match parts.as_slice() {
        ["api", "v1", "namespaces", NS, "pods"] => (None, None),
        ["api", "v1", "namespaces", NS, "pods", p] => (Some(*p), None),
        ["api", "v1", "namespaces", NS, "pods", p, s] => (Some(*p), Some(*s)),
        _ => {
            return json_response(
                404,
                &status(
                    404,
                    "NotFound",
                    &format!("the server could not find {path}"),
                ),
            );
        }
    };
    let reading = sub.is_none() || sub == Some("log");
    if user == Some("viewer") && !reading {
        return json_response(
            403,
            &status(
                403,
                "Forbidden",
                &format!(
                    "User \"viewer\" cannot create resource \"pods/{}\"",
                    sub.unwrap_or("")
                ),
            ),
        );
    }
    let q = query(&req);
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let Some(pod) = pod else {
        return list_or_watch(
            state,
            get("watch").is_some_and(|w| w == "true" || w == "1"),
            get("resourceVersion"),
        );
    };
    let Some(obj) = state.pods.lock().unwrap().get(pod).cloned() else {
        return json_response(
            404,
            &status(404, "NotFound", &format!("pods \"{pod}\" not found")),
        );
    };
    match sub {
        None => json_response(200, &obj),
        Some("log") => logs(state, get("follow") == Some("true")),
        Some("exec") | Some("attach") => {
            let cmd: Vec<String> = match sub {
                Some("exec") => q
                    .iter()
                    .filter(|(k, _)| k == "command")
                    .map(|(_, v)| v.clone())
                    .collect(),
                _ => vec!["cat".into()],
            };
            let want = Want {
                stdin: get("stdin") == Some("true"),
                stdout: get("stdout") == Some("true"),
                stderr: get("stderr") == Some("true"),
                tty: get("tty") == Some("true"),
            };
            streaming(req, state.clone(), Session::Exec(cmd, want))
        }
        Some("portforward") => streaming(req, state.clone(), Session::PortForward),
        Some(other) => json_response(
            404,
            &status(404, "NotFound", &format!("no subresource {other}")),
        ),
    }
}

fn list_or_watch(state: &Arc<State>, watching: bool, from: Option<&str>) -> Response<Body> {
    let rv = *state.rv.lock().unwrap();
    if !watching {
        let items: Vec<Value> = state.pods.lock().unwrap().values().cloned().collect();
        return json_response(
            200,
            &json!({"kind": "PodList", "apiVersion": "v1",
                    "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
        );
    }
    let from: u64 = from.and_then(|v| v.parse().ok()).unwrap_or(rv);
    let mut rx = state.events.subscribe();
    let replay: Vec<(u64, Value)> = state
        .history
        .lock()
        .unwrap()
        .iter()
        .filter(|(r, _)| *r > from)
        .cloned()
        .collect();
    let stream = async_stream(move |tx| async move {
        let mut sent = from;
        for (r, obj) in replay {
            sent = r;
            let line = json!({"type": "ADDED", "object": obj});
            if tx.send(Bytes::from(format!("{line}\n"))).await.is_err() {
                return;
            }
        }
        while let Ok((ev_rv, obj)) = rx.recv().await {
            if ev_rv > sent {
                let line = json!({"type": "ADDED", "object": obj});
                if tx.send(Bytes::from(format!("{line}\n"))).await.is_err() {
                    return;
                }
            }
        }
    });
    let mut r = Response::new(stream);
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

/// `log?follow=true`: a first line at once, then one line per permit the test releases, then
/// the end (without follow: two lines and the end).
fn logs(state: &Arc<State>, follow: bool) -> Response<Body> {
    let st = state.clone();
    let body = async_stream(move |tx| async move {
        let _ = tx.send(Bytes::from_static(b"log line 1\n")).await;
        if !follow {
            let _ = tx.send(Bytes::from_static(b"log line 2\n")).await;
            return;
        }
        for n in 2..=3 {
            let Ok(p) = st.log_lines.acquire().await else {
                return;
            };
            p.forget();
            if tx
                .send(Bytes::from(format!("log line {n}\n")))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let mut r = Response::new(body);
    r.headers_mut()
        .insert("content-type", "text/plain".parse().unwrap());
    r
}

/// A body fed by a task through a bounded channel.
fn async_stream<F, Fut>(f: F) -> Body
where
    F: FnOnce(mpsc::Sender<Bytes>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(f(tx));
    let s = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    BodyExt::boxed(StreamBody::new(s))
}

#[derive(Clone, Copy, Debug)]
struct Want {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

enum Session {
    Exec(Vec<String>, Want),
    PortForward,
}

/// Answers an upgrade: WebSocket (GET with `Sec-WebSocket-Key`) or SPDY/3.1 (`Upgrade:
/// SPDY/3.1`, the protocol in `X-Stream-Protocol-Version`); anything else is 400.
fn streaming(mut req: Request<Incoming>, state: Arc<State>, session: Session) -> Response<Body> {
    let upgrade = req
        .headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mut resp = Response::new(Full::new(Bytes::new()).boxed());
    *resp.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert("connection", "Upgrade".parse().unwrap());
    let on = hyper::upgrade::on(&mut req);
    if upgrade == "websocket" {
        let offered = header_all(&req, "sec-websocket-protocol");
        let choice = match &session {
            Session::Exec(..) => ["v5.channel.k8s.io", "v4.channel.k8s.io"]
                .into_iter()
                .find(|p| offered.iter().any(|o| o == p)),
            Session::PortForward => ["SPDY/3.1+portforward.k8s.io"]
                .into_iter()
                .find(|p| offered.iter().any(|o| o == p)),
        };
        let (Some(proto), Some(key)) = (choice, req.headers().get("sec-websocket-key")) else {
            return json_response(400, &status(400, "BadRequest", "no subprotocol in common"));
        };
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("sec-websocket-accept", accept.parse().unwrap());
        h.insert("sec-websocket-protocol", proto.parse().unwrap());
        let v5 = proto == "v5.channel.k8s.io";
        tokio::spawn(async move {
            let Ok(io) = on.await else { return };
            let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(io),
                Role::Server,
                None,
            )
            .await;
            match session {
                Session::Exec(cmd, want) => exec_ws(ws, cmd, want, v5, state).await,
                Session::PortForward => {
                    let (near, far) = tokio::io::duplex(64 * 1024);
                    tokio::spawn(ws_bytes(ws, far));
                    port_forward(near, state).await
                }
            }
        });
        return resp;
    }
    if upgrade == "spdy/3.1" {
        let offered = header_all(&req, "x-stream-protocol-version");
        let choice = match &session {
            Session::Exec(..) => "v4.channel.k8s.io",
            Session::PortForward => "portforward.k8s.io",
        };
        if !offered.iter().any(|o| o == choice) {
            return json_response(
                400,
                &status(400, "BadRequest", "no stream protocol in common"),
            );
        }
        h.insert("upgrade", "SPDY/3.1".parse().unwrap());
        h.insert("x-stream-protocol-version", choice.parse().unwrap());
        tokio::spawn(async move {
            let Ok(io) = on.await else { return };
            match session {
                Session::Exec(cmd, want) => exec_spdy(TokioIo::new(io), cmd, want, state).await,
                Session::PortForward => port_forward(TokioIo::new(io), state).await,
            }
        });
        return resp;
    }
    json_response(400, &status(400, "BadRequest", "upgrade request required"))
}

/// Carries a WebSocket's binary messages as a byte stream (SPDY inside WebSocket).
async fn ws_bytes<S>(ws: tokio_tungstenite::WebSocketStream<S>, io: tokio::io::DuplexStream)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    let (mut rd, mut wr) = tokio::io::split(io);
    let up = async {
        while let Some(Ok(m)) = stream.next().await {
            match m {
                Message::Binary(b) if wr.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = sink.send(Message::Close(Some(normal_close()))).await;
    };
    tokio::join!(up, down);
}

/// The exit status as the v4/v5 error channel carries it.
fn exit_status(code: i32) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({"metadata": {}, "status": "Failure",
           "message": format!("command terminated with non-zero exit code: exit status {code}"),
           "reason": "NonZeroExitCode",
           "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
}

/// Output of a process: (channel, bytes), 1 stdout, 2 stderr.
type Output = mpsc::Sender<(u8, Bytes)>;

async fn exec_ws<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    cmd: Vec<String>,
    want: Want,
    v5: bool,
    state: Arc<State>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(64);
    let (out_tx, mut out_rx) = mpsc::channel(64);
    // A container runtime takes a moment to start an exec'd process. kubectl 1.32's WebSocket
    // executor starts reading before it has registered its streams and drops what arrives in
    // that gap ("Unknown stream id 3, discarding message"): an answer sent at once (`exit 3`
    // has nothing else to say) would test that client-go race, not the tunnel. No event from
    // the client marks the end of the gap, so the fake takes a runtime's start-up time.
    let proc = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        run(cmd, stdin_rx, out_tx, state).await
    });
    let mut stdin = want.stdin.then_some(stdin_tx);
    loop {
        tokio::select! {
            m = stream.next() => match m {
                Some(Ok(Message::Binary(b))) if !b.is_empty() => match b[0] {
                    0 => if let Some(tx) = &stdin { let _ = tx.send(Bytes::copy_from_slice(&b[1..])).await; },
                    255 if v5 && b.get(1) == Some(&0) => stdin = None,
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => { proc.abort(); return; }
                _ => {}
            },
            out = out_rx.recv() => match out {
                Some((ch, data)) => {
                    let mut m = vec![ch];
                    m.extend_from_slice(&data);
                    if sink.send(Message::Binary(m.into())).await.is_err() { return; }
                }
                None => break,
            },
        }
    }
    drop(stdin);
    let code = proc.await.unwrap_or(1);
    let mut m = vec![3u8];
    m.extend_from_slice(exit_status(code).to_string().as_bytes());
    let _ = sink.send(Message::Binary(m.into())).await;
    // What the API server does: a normal closure (client-go reads any other code as an error).
    let _ = sink.send(Message::Close(Some(normal_close()))).await;
}

fn normal_close() -> tokio_tungstenite::tungstenite::protocol::CloseFrame {
    tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "".into(),
    }
}

async fn exec_spdy<S>(io: S, cmd: Vec<String>, want: Want, state: Arc<State>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut events, w) = spdy::start(io);
    let mut ids: BTreeMap<String, u32> = BTreeMap::new();
    let mut needed = vec!["error"];
    for (on, name) in [
        (want.stdin, "stdin"),
        (want.stdout, "stdout"),
        (want.stderr, "stderr"),
    ] {
        if on {
            needed.push(name);
        }
    }
    let mut early: Vec<Bytes> = Vec::new();
    let mut stdin_done = false;
    // Every stream is answered (a `resize` one too, with a TTY); the process starts once the
    // ones the request asked for are there.
    while !needed.iter().all(|n| ids.contains_key(*n)) {
        match events.recv().await {
            Some(spdy::Event::Open { id, headers }) => {
                w.reply(id).await;
                ids.insert(headers.get("streamtype").cloned().unwrap_or_default(), id);
            }
            Some(spdy::Event::Data { data, .. }) => early.push(data),
            Some(spdy::Event::Fin { id }) if ids.get("stdin") == Some(&id) => stdin_done = true,
            Some(_) => {}
            None => return,
        }
    }
    let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(64);
    let (out_tx, mut out_rx) = mpsc::channel(64);
    for d in early {
        let _ = stdin_tx.send(d).await;
    }
    let mut stdin = (want.stdin && !stdin_done).then_some(stdin_tx);
    let proc = tokio::spawn(run(cmd, stdin_rx, out_tx, state));
    let id_of = |name: &str| ids.get(name).copied();
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(spdy::Event::Data { id, data }) if Some(id) == id_of("stdin") => {
                    if let Some(tx) = &stdin { let _ = tx.send(data).await; }
                }
                Some(spdy::Event::Fin { id }) | Some(spdy::Event::Reset { id }) if Some(id) == id_of("stdin") => stdin = None,
                Some(spdy::Event::Open { id, .. }) => w.reply(id).await,
                Some(_) => {}
                None => { proc.abort(); return; }
            },
            out = out_rx.recv() => match out {
                Some((ch, data)) => {
                    let name = if ch == 1 { "stdout" } else { "stderr" };
                    if let Some(id) = id_of(name) { w.data(id, data).await; }
                }
                None => break,
            },
        }
    }
    drop(stdin);
    let code = proc.await.unwrap_or(1);
    if let Some(id) = id_of("error") {
        if code != 0 {
            w.data(id, Bytes::from(exit_status(code).to_string())).await;
        }
        w.fin(id).await;
    }
    for name in ["stdout", "stderr"] {
        if let Some(id) = id_of(name) {
            w.fin(id).await;
        }
    }
    // The client closes the connection once it has read everything.
    while let Some(ev) = events.recv().await {
        if let spdy::Event::Open { id, .. } = ev {
            w.reply(id).await;
        }
    }
}

/// Port-forward over a SPDY session: each `data` stream is a TCP connection to the address
/// the test set; its `error` stream is finished when the connection ends.
async fn port_forward<S>(io: S, state: Arc<State>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut events, w) = spdy::start(io);
    let mut errors: BTreeMap<String, u32> = BTreeMap::new();
    let mut conns: BTreeMap<u32, mpsc::Sender<Option<Bytes>>> = BTreeMap::new();
    while let Some(ev) = events.recv().await {
        match ev {
            spdy::Event::Open { id, headers } => {
                w.reply(id).await;
                let request = headers.get("requestid").cloned().unwrap_or_default();
                match headers.get("streamtype").map(String::as_str) {
                    Some("error") => {
                        errors.insert(request, id);
                    }
                    Some("data") => {
                        let target = *state.forward_to.lock().unwrap();
                        let error_id = errors.get(&request).copied();
                        let (tx, rx) = mpsc::channel(64);
                        conns.insert(id, tx);
                        tokio::spawn(forward(id, error_id, target, rx, w.clone()));
                    }
                    _ => {}
                }
            }
            spdy::Event::Data { id, data } => {
                if let Some(tx) = conns.get(&id) {
                    let _ = tx.send(Some(data)).await;
                }
            }
            spdy::Event::Fin { id } => {
                if let Some(tx) = conns.get(&id) {
                    let _ = tx.send(None).await;
                }
            }
            spdy::Event::Reset { id } => {
                conns.remove(&id);
            }
        }
    }
}

async fn forward(
    id: u32,
    error_id: Option<u32>,
    target: Option<SocketAddr>,
    mut from_client: mpsc::Receiver<Option<Bytes>>,
    w: spdy::Writer,
) {
    let Some(Ok(sock)) = (match target {
        Some(a) => Some(tokio::net::TcpStream::connect(a).await),
        None => None,
    }) else {
        if let Some(e) = error_id {
            w.data(e, Bytes::from_static(b"connection refused")).await;
            w.fin(e).await;
        }
        w.fin(id).await;
        return;
    };
    let (mut rd, mut wr) = sock.into_split();
    let up = async {
        while let Some(Some(chunk)) = from_client.recv().await {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => w.data(id, Bytes::copy_from_slice(&buf[..n])).await,
            }
        }
        w.fin(id).await;
        if let Some(e) = error_id {
            w.fin(e).await;
        }
    };
    tokio::join!(up, down);
}

/// A container process: reads stdin until it ends, writes output, returns its exit code.
async fn run(
    cmd: Vec<String>,
    mut stdin: mpsc::Receiver<Bytes>,
    out: Output,
    state: Arc<State>,
) -> i32 {
    let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["cat"] => {
            while let Some(b) = stdin.recv().await {
                if out.send((1, b)).await.is_err() {
                    return 1;
                }
            }
            0
        }
        ["echo", rest @ ..] => {
            let _ = out
                .send((1, Bytes::from(format!("{}\n", rest.join(" ")))))
                .await;
            0
        }
        ["sh", "-c", script] => match script
            .strip_prefix("exit ")
            .and_then(|n| n.trim().parse().ok())
        {
            Some(n) => n,
            None => {
                let _ = out
                    .send((2, Bytes::from(format!("sh: cannot run {script:?}\n"))))
                    .await;
                127
            }
        },
        ["test", "-d", dir] => {
            let files = state.files.lock().unwrap();
            let prefix = format!("{}/", dir.trim_end_matches('/'));
            i32::from(!(*dir == "/" || files.keys().any(|k| k.starts_with(&prefix))))
        }
        ["tar", mode, rest @ ..] if mode.contains('x') => {
            let mut dir = "/".to_string();
            if let Some(i) = rest.iter().position(|a| *a == "-C") {
                dir = rest.get(i + 1).unwrap_or(&"/").to_string();
            }
            let mut data = Vec::new();
            while let Some(b) = stdin.recv().await {
                data.extend_from_slice(&b);
            }
            let mut archive = tar::Archive::new(data.as_slice());
            let Ok(entries) = archive.entries() else {
                return 2;
            };
            for e in entries {
                let Ok(mut e) = e else { return 2 };
                if !e.header().entry_type().is_file() {
                    continue;
                }
                let name = e
                    .path()
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let mut body = Vec::new();
                if std::io::Read::read_to_end(&mut e, &mut body).is_err() {
                    return 2;
                }
                let full = format!(
                    "{}/{}",
                    dir.trim_end_matches('/'),
                    name.trim_start_matches('/')
                );
                state.files.lock().unwrap().insert(full, body);
            }
            0
        }
        ["tar", mode, "-", src] if mode.contains('c') => {
            let src = format!("/{}", src.trim_start_matches('/'));
            let files: Vec<(String, Vec<u8>)> = state
                .files
                .lock()
                .unwrap()
                .iter()
                .filter(|(k, _)| **k == src || k.starts_with(&format!("{src}/")))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if files.is_empty() {
                let _ = out
                    .send((
                        2,
                        Bytes::from(format!("tar: {src}: No such file or directory\n")),
                    ))
                    .await;
                return 2;
            }
            let mut b = tar::Builder::new(Vec::new());
            for (name, data) in files {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                if b.append_data(&mut h, name.trim_start_matches('/'), data.as_slice())
                    .is_err()
                {
                    return 2;
                }
            }
            let Ok(bytes) = b.into_inner() else { return 2 };
            for chunk in bytes.chunks(16 * 1024) {
                if out.send((1, Bytes::copy_from_slice(chunk))).await.is_err() {
                    return 1;
                }
            }
            0
        }
        _ => {
            let _ = out
                .send((
                    2,
                    Bytes::from(format!("{}: command not found\n", cmd.join(" "))),
                ))
                .await;
            127
        }
    }
}
