//! A real HTTP/1.1 upstream (hyper) with the endpoints the tests need.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::{pattern_byte, pattern_source};

type Body = BoxBody<Bytes, std::io::Error>;

/// Chunk size of generated bodies.
const CHUNK: usize = 64 * 1024;

pub struct Upstream {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    /// Each permit a test adds lets one `/gate` request answer.
    pub gate: Arc<Semaphore>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let gate = Arc::new(Semaphore::new(0));
        let g = gate.clone();
        let task = tokio::spawn(async move {
            let source = pattern_source(CHUNK);
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    break;
                };
                let source = source.clone();
                let g = g.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        handle(req, source.clone(), g.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(sock), svc)
                        .await;
                });
            }
        });
        Upstream { addr, task, gate }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

fn query_u64(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))?
        .parse()
        .ok()
}

/// `n` bytes of the pattern, in chunks, with no Content-Length (so the response is chunked).
fn pattern_body(n: u64, source: Bytes) -> Body {
    let stream = futures_util::stream::unfold(0u64, move |off| {
        let source = source.clone();
        async move {
            if off >= n {
                return None;
            }
            let len = (n - off).min(CHUNK as u64) as usize;
            let start = (off % 251) as usize;
            let chunk = source.slice(start..start + len);
            Some((
                Ok::<_, std::io::Error>(Frame::data(chunk)),
                off + len as u64,
            ))
        }
    });
    BodyExt::boxed(StreamBody::new(stream))
}

async fn handle(
    req: Request<Incoming>,
    source: Bytes,
    gate: Arc<Semaphore>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    if req.uri() == "*" || path.starts_with("/api") || path.starts_with("/admin") {
        // The request target exactly as it arrived, for path and asterisk-form tests.
        return Ok(Response::new(full(format!("target: {}", req.uri()))));
    }
    let resp = match path.as_str() {
        "/hello" => Response::new(full("hello")),
        "/echo" => {
            let ct = req.headers().get("content-type").cloned();
            let body = req.into_body().map_err(std::io::Error::other).boxed();
            let mut r = Response::new(body);
            if let Some(ct) = ct {
                r.headers_mut().insert("content-type", ct);
            }
            r
        }
        "/bytes" => {
            let n = query_u64(&req, "n").unwrap_or(0);
            Response::new(pattern_body(n, source))
        }
        "/sized" => {
            let n = query_u64(&req, "n").unwrap_or(0);
            let mut r = Response::new(pattern_body(n, source));
            r.headers_mut().insert("content-length", n.into());
            r
        }
        "/chunked" => {
            let parts = ["first,", "second,", "third"];
            let s = futures_util::stream::iter(
                parts.map(|p| Ok::<_, std::io::Error>(Frame::data(Bytes::from(p)))),
            );
            Response::new(BodyExt::boxed(StreamBody::new(s)))
        }
        "/sink" => {
            // Consumes the body and checks it against the pattern.
            let mut body = req.into_body();
            let (mut len, mut ok) = (0u64, true);
            while let Some(f) = body.frame().await {
                let Ok(f) = f else {
                    ok = false;
                    break;
                };
                if let Ok(d) = f.into_data() {
                    ok &= d
                        .iter()
                        .enumerate()
                        .all(|(i, b)| *b == pattern_byte(len + i as u64));
                    len += d.len() as u64;
                }
            }
            Response::new(full(format!(
                "{len} {}",
                if ok { "intact" } else { "corrupt" }
            )))
        }
        "/headers" => {
            let mut text = format!("method: {}\n", req.method());
            for (n, v) in req.headers() {
                text.push_str(&format!("{}: {}\n", n, v.to_str().unwrap_or("?")));
            }
            Response::new(full(text))
        }
        "/cookies" => {
            let mut r = Response::new(full("cookies"));
            r.headers_mut()
                .append("set-cookie", "a=1; Path=/".parse().unwrap());
            r.headers_mut()
                .append("set-cookie", "b=2; Path=/".parse().unwrap());
            // A tenant trying to set a cookie for the gateway's shared parent domain.
            r.headers_mut().append(
                "set-cookie",
                "c=3; Domain=localhost; Path=/".parse().unwrap(),
            );
            r.headers_mut()
                .insert("connection", "x-upstream-hop".parse().unwrap());
            r.headers_mut()
                .insert("x-upstream-hop", "secret".parse().unwrap());
            r
        }
        "/gate" => {
            if let Ok(p) = gate.acquire().await {
                p.forget();
            }
            Response::new(full("opened"))
        }
        "/hang" => {
            // Never answers within any test's lifetime.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Response::new(full("late"))
        }
        p if p.starts_with("/status/") => {
            let code: u16 = p["/status/".len()..].parse().unwrap_or(500);
            let mut r = Response::new(full(format!("status {code}")));
            *r.status_mut() = hyper::StatusCode::from_u16(code)
                .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
            r
        }
        _ => {
            let mut r = Response::new(full("upstream: not found"));
            *r.status_mut() = hyper::StatusCode::NOT_FOUND;
            r
        }
    };
    Ok(resp)
}

/// Reads a response body and checks it is exactly `n` bytes of the pattern. Returns the
/// number of bytes read.
pub async fn expect_pattern(resp: reqwest::Response, n: u64) -> u64 {
    let mut stream = resp.bytes_stream();
    let mut off = 0u64;
    let source = pattern_source(1 << 20);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("body chunk");
        for piece in chunk.chunks(1 << 20) {
            let start = (off % 251) as usize;
            assert!(
                piece == &source[start..start + piece.len()],
                "body corrupt at offset {off}"
            );
            off += piece.len() as u64;
        }
    }
    assert_eq!(off, n, "body length");
    off
}

/// A request body of `n` pattern bytes, produced as it is sent.
pub fn pattern_upload(n: u64) -> reqwest::Body {
    let source = pattern_source(CHUNK);
    let stream = futures_util::stream::unfold(0u64, move |off| {
        let source = source.clone();
        async move {
            if off >= n {
                return None;
            }
            let len = (n - off).min(CHUNK as u64) as usize;
            let start = (off % 251) as usize;
            Some((
                Ok::<_, std::io::Error>(source.slice(start..start + len)),
                off + len as u64,
            ))
        }
    });
    reqwest::Body::wrap_stream(stream)
}

/// A real WebSocket upstream (tokio-tungstenite) that echoes every message, selects the
/// subprotocol `chat` when offered, and closes when told `close-me`; `host?` is answered with
/// the `Host` its handshake carried, `close:CODE:REASON` with that close.
pub struct WsUpstream {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl WsUpstream {
    pub async fn start() -> WsUpstream {
        use tokio_tungstenite::tungstenite::handshake::server::{
            Request as WsRequest, Response as WsResponse,
        };
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind ws upstream");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    break;
                };
                tokio::spawn(async move {
                    let seen_host = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
                    let host_slot = seen_host.clone();
                    #[allow(clippy::result_large_err)]
                    // the handshake callback's type is tungstenite's
                    let pick = move |req: &WsRequest, mut resp: WsResponse| {
                        *host_slot.lock().unwrap() = req
                            .headers()
                            .get("host")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let offered = req
                            .headers()
                            .get("sec-websocket-protocol")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("");
                        if offered.split(',').any(|p| p.trim() == "chat") {
                            resp.headers_mut()
                                .insert("sec-websocket-protocol", "chat".parse().unwrap());
                        }
                        Ok(resp)
                    };
                    let config =
                        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                            .max_message_size(Some(64 << 20))
                            .max_frame_size(Some(64 << 20));
                    let Ok(mut ws) =
                        tokio_tungstenite::accept_hdr_async_with_config(sock, pick, Some(config))
                            .await
                    else {
                        return;
                    };
                    use futures_util::SinkExt;
                    use tokio_tungstenite::tungstenite::Message;
                    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
                    while let Some(Ok(m)) = ws.next().await {
                        if m.is_close() {
                            return;
                        }
                        if m.is_text() && m.to_text().is_ok_and(|t| t == "host?") {
                            let h = seen_host.lock().unwrap().clone();
                            let _ = ws.send(Message::Text(h.into())).await;
                            continue;
                        }
                        if let Some(rest) = m.to_text().ok().and_then(|t| t.strip_prefix("close:"))
                        {
                            let (code, reason) = rest.split_once(':').unwrap_or((rest, ""));
                            let frame = CloseFrame {
                                code: code.parse::<u16>().unwrap_or(1000).into(),
                                reason: reason.to_string().into(),
                            };
                            let _ = ws.close(Some(frame)).await;
                            while let Some(Ok(_)) = ws.next().await {}
                            return;
                        }
                        if m.is_text() && m.to_text().is_ok_and(|t| t == "close-me") {
                            let _ = ws.close(None).await;
                            return;
                        }
                        if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        WsUpstream { addr, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for WsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP/1.1 upstream that answers any request asking for `Upgrade: SPDY/3.1` (kubectl's
/// exec and port-forward fallback) with 101 and then echoes the connection's raw bytes; it
/// records each request head it saw.
pub struct RawUpgradeUpstream {
    pub addr: SocketAddr,
    pub heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpgradeUpstream {
    pub async fn start() -> RawUpgradeUpstream {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = heads.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut b = [0u8; 4096];
                    let end = loop {
                        let Ok(n) = sock.read(&mut b).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&b[..n]);
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    seen.lock().unwrap().push(head.clone());
                    if !head.to_ascii_lowercase().contains("upgrade: spdy/3.1") {
                        let _ = sock
                            .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                            .await;
                        return;
                    }
                    let _ = sock
                        .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n")
                        .await;
                    // Bytes that came with the head, then everything after: echoed.
                    if sock.write_all(&buf[end..]).await.is_err() {
                        return;
                    }
                    let (mut r, mut w) = sock.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        RawUpgradeUpstream { addr, heads, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RawUpgradeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Opens a WebSocket through the gateway at `gw` to `host` (connecting to the gateway's
/// socket directly, naming `host` as a browser would), offering `protocols`.
pub async fn ws_connect(
    gw: SocketAddr,
    host: &str,
    path: &str,
    protocols: Option<&str>,
) -> (
    tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    hyper::http::Response<Option<Vec<u8>>>,
) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{host}:{}{path}", gw.port())
        .into_client_request()
        .unwrap();
    if let Some(p) = protocols {
        req.headers_mut()
            .insert("sec-websocket-protocol", p.parse().unwrap());
    }
    let sock = tokio::net::TcpStream::connect(gw)
        .await
        .expect("connect gateway");
    tokio_tungstenite::client_async(req, sock)
        .await
        .expect("WebSocket handshake through the gateway")
}

/// Sends `msgs` and checks each comes back, then closes and checks the close is answered.
pub async fn ws_echo_roundtrip(ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>) {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let msgs = vec![
        Message::Text("hello".into()),
        Message::Binary(Bytes::from(vec![7u8; 40_000])),
        Message::Text("ünïcödé ✓".into()),
    ];
    for m in msgs {
        ws.send(m.clone()).await.unwrap();
        let back = tokio::time::timeout(super::HANG, ws.next())
            .await
            .expect("echo in time")
            .unwrap()
            .unwrap();
        assert_eq!(back, m);
    }
    ws.send(Message::Text("close-me".into())).await.unwrap();
    match tokio::time::timeout(super::HANG, ws.next())
        .await
        .expect("close in time")
    {
        Some(Ok(Message::Close(_))) | None => {}
        Some(Ok(other)) => panic!("unexpected {other:?}"),
        Some(Err(e)) => panic!("error instead of close: {e}"),
    }
}

/// A test certificate authority and a server certificate it signed for `name`.
pub struct TestCa {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: rustls::pki_types::CertificateDer<'static>,
    pub key_der: rustls::pki_types::PrivateKeyDer<'static>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        TestCa::with_names(&[name])
    }

    /// A CA and a server certificate for all of `names` (wildcards allowed).
    pub fn with_names(names: &[&str]) -> TestCa {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Tunnelgate test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
        TestCa {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        }
    }
}

/// The plain upstream's handlers behind TLS (a certificate from `ca`).
pub struct TlsUpstream {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TlsUpstream {
    pub async fn start(ca: &TestCa) -> TlsUpstream {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![ca.cert_der.clone()], ca.key_der.clone_key())
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let source = pattern_source(1 << 20);
        let gate = Arc::new(Semaphore::new(0));
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (acceptor, source, gate) = (acceptor.clone(), source.clone(), gate.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(sock).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        handle(req, source.clone(), gate.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        TlsUpstream { addr, task }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
