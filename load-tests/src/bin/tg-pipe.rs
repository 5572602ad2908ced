//! `tg-pipe`: the measured prototype behind ADR 0010 — the data path as a byte pipe.
//!
//! Not a product: the smallest gateway and agent that carry HTTP/1.1 the way ADR 0010 proposes,
//! so that load-tests can measure that design's floor on the same machine as rathole and the
//! real binaries. The gateway parses each request head (httparse), rewrites it (hop-by-hop
//! headers out, `X-Forwarded-*` in), opens a stream whose first DATA frame is the HTTP/1.1
//! head, and copies the upstream's response bytes to the client after checking and rebuilding
//! the response head; the agent writes a stream's bytes to a pooled upstream connection and
//! sends back what the upstream answers, finding the response's end from its framing
//! (`tunnelgate_proto::h1`: Content-Length, chunked, 1xx, close-delimited) to END the stream
//! and pool the connection again. Frames are the
//! product's (`tunnelgate_proto::Frame`, one per WebSocket message), over tokio-tungstenite
//! both ends.
//!
//! Left out (and said so in the ADR): auth, routes beyond one host, credit (bounded channels
//! instead), request bodies sent chunked, upgrades, errors beyond closing the connection; the
//! actix-web front passes Content-Length responses only.
//!
//!   tg-pipe gateway --listen 127.0.0.1:8080 --tunnel-listen 127.0.0.1:8081 [--front actix]
//!   tg-pipe agent --gateway ws://127.0.0.1:8081 --upstream 127.0.0.1:3000

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, anyhow, bail};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tunnelgate_proto::Frame;

/// Largest DATA payload the agent sends: the product's 64 KiB, or `TG_PIPE_FRAME_KIB` (an
/// experiment past the protocol's limit; frames are then decoded here, not by `Frame::decode`).
fn frame_max() -> usize {
    std::env::var("TG_PIPE_FRAME_KIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(64 * 1024, |k| k * 1024)
}

/// `Frame::decode`, without its payload limit for DATA (see [`frame_max`]).
fn decode(b: Bytes) -> Option<Frame> {
    if b.len() > tunnelgate_proto::frame::HEADER_LEN + 64 * 1024 && b.first() == Some(&0) {
        let stream = u32::from_be_bytes(b.get(1..5)?.try_into().ok()?);
        return Some(Frame::Data {
            stream,
            data: b.slice(5..),
        });
    }
    Frame::decode(b).ok()
}

/// What a stream's reader gets: response bytes, then the end.
enum Piece {
    Bytes(Bytes),
    End,
}

type StreamMap = Arc<Mutex<HashMap<u32, mpsc::Sender<Piece>>>>;

/// The gateway's view of the one tunnel.
#[derive(Clone)]
struct Tunnel {
    out: mpsc::Sender<Frame>,
    streams: StreamMap,
    next: Arc<AtomicU32>,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| -> anyhow::Result<String> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .ok_or_else(|| anyhow!("missing {name}"))
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match args.get(1).map(String::as_str) {
        Some("gateway") => rt.block_on(gateway(
            flag("--listen")?,
            flag("--tunnel-listen")?,
            flag("--front").ok(),
        )),
        Some("agent") => rt.block_on(agent(flag("--gateway")?, flag("--upstream")?)),
        _ => bail!("usage: tg-pipe gateway|agent …"),
    }
}

/// Writes frames to a WebSocket, flushing when no more are queued (one write per batch).
async fn write_frames<S>(mut ws: S, mut rx: mpsc::Receiver<Frame>)
where
    S: futures_util::Sink<Message> + Unpin,
{
    while let Some(f) = rx.recv().await {
        if ws.feed(Message::Binary(f.to_bytes())).await.is_err() {
            return;
        }
        while let Ok(f) = rx.try_recv() {
            if ws.feed(Message::Binary(f.to_bytes())).await.is_err() {
                return;
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}

async fn gateway(
    listen: String,
    tunnel_listen: String,
    front: Option<String>,
) -> anyhow::Result<()> {
    let tl = TcpListener::bind(&tunnel_listen).await?;
    // Both addresses are known before anything is served (port 0 works): one line on stdout.
    let public = std::net::TcpListener::bind(&listen)?;
    public.set_nonblocking(true)?;
    println!("listening {} {}", public.local_addr()?, tl.local_addr()?);
    let tunnel: Arc<Mutex<Option<Tunnel>>> = Arc::default();
    let slot = tunnel.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = tl.accept().await {
            let _ = sock.set_nodelay(true);
            let Ok(ws) = tokio_tungstenite::accept_async(sock).await else {
                continue;
            };
            let (sink, mut source) = ws.split();
            let (tx, rx) = mpsc::channel(1024);
            tokio::spawn(write_frames(sink, rx));
            let t = Tunnel {
                out: tx,
                streams: Arc::default(),
                next: Arc::new(AtomicU32::new(1)),
            };
            if let Ok(mut s) = slot.lock() {
                *s = Some(t.clone());
            }
            println!("tunnel up");
            tokio::spawn(async move {
                while let Some(Ok(msg)) = source.next().await {
                    let Message::Binary(b) = msg else { continue };
                    let Some(frame) = decode(b) else { break };
                    let (id, piece) = match frame {
                        Frame::Data { stream, data } => (stream, Piece::Bytes(data)),
                        Frame::End { stream } => (stream, Piece::End),
                        _ => continue,
                    };
                    let tx = t.streams.lock().ok().and_then(|m| m.get(&id).cloned());
                    if let Some(tx) = tx {
                        let _ = tx.send(piece).await;
                    }
                }
            });
        }
    });
    if front.as_deref() == Some("actix") {
        return tokio::task::spawn_blocking(move || actix_front(public, tunnel)).await?;
    }
    let public = TcpListener::from_std(public)?;
    loop {
        let (sock, peer) = public.accept().await?;
        let _ = sock.set_nodelay(true);
        let t = tunnel.lock().ok().and_then(|t| t.clone());
        tokio::spawn(async move {
            if let Some(t) = t
                && let Err(e) = client_conn(sock, peer, t).await
            {
                eprintln!("client: {e:#}");
            }
        });
    }
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];

/// One client connection: each request head parsed and rewritten, the response copied back.
async fn client_conn(
    mut sock: TcpStream,
    peer: std::net::SocketAddr,
    t: Tunnel,
) -> anyhow::Result<()> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        // A whole request head.
        let (head, body_len) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut hs);
            if let httparse::Status::Complete(n) = req.parse(&buf)? {
                let mut out = BytesMut::with_capacity(n + 128);
                let (Some(method), Some(path)) = (req.method, req.path) else {
                    bail!("no method or path");
                };
                out.put_slice(method.as_bytes());
                out.put_u8(b' ');
                out.put_slice(path.as_bytes());
                out.put_slice(b" HTTP/1.1\r\n");
                let mut len = 0usize;
                let mut host = None;
                for h in req.headers.iter() {
                    let name = h.name;
                    if name.eq_ignore_ascii_case("content-length") {
                        len = std::str::from_utf8(h.value)?.trim().parse()?;
                    } else if name.eq_ignore_ascii_case("transfer-encoding") {
                        bail!("chunked request bodies are not in the prototype");
                    } else if name.eq_ignore_ascii_case("host") {
                        host = Some(h.value);
                    }
                    if HOP_BY_HOP.iter().any(|x| name.eq_ignore_ascii_case(x)) {
                        continue;
                    }
                    out.put_slice(name.as_bytes());
                    out.put_slice(b": ");
                    out.put_slice(h.value);
                    out.put_slice(b"\r\n");
                }
                if len > 0 {
                    out.put_slice(format!("content-length: {len}\r\n").as_bytes());
                }
                if let Some(h) = host {
                    out.put_slice(b"x-forwarded-host: ");
                    out.put_slice(h);
                    out.put_slice(b"\r\n");
                }
                out.put_slice(format!("x-forwarded-for: {}\r\n", peer.ip()).as_bytes());
                out.put_slice(b"x-forwarded-proto: http\r\n\r\n");
                let _ = buf.split_to(n);
                break (out, len);
            }
            if buf.len() > 64 * 1024 {
                bail!("request head too large");
            }
            if sock.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        let id = t.next.fetch_add(2, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel(64);
        t.streams
            .lock()
            .map_err(|_| anyhow!("poisoned"))?
            .insert(id, tx);
        // Head and as much of the body as is here, in one frame.
        let mut first = head;
        let here = body_len.min(buf.len());
        first.put_slice(&buf.split_to(here));
        t.out
            .send(Frame::Data {
                stream: id,
                data: first.freeze(),
            })
            .await
            .map_err(|_| anyhow!("tunnel gone"))?;
        let mut left = body_len - here;
        while left > 0 {
            let mut chunk = BytesMut::with_capacity(left.min(64 * 1024));
            let n = (&mut sock)
                .take(left.min(64 * 1024) as u64)
                .read_buf(&mut chunk)
                .await?;
            if n == 0 {
                bail!("body cut");
            }
            left -= n;
            t.out
                .send(Frame::Data {
                    stream: id,
                    data: chunk.freeze(),
                })
                .await
                .map_err(|_| anyhow!("tunnel gone"))?;
        }
        // The response: its head checked and rebuilt, then its bytes as they come.
        let mut resp = BytesMut::new();
        let mut head_done = false;
        while let Some(p) = rx.recv().await {
            match p {
                Piece::End => break,
                Piece::Bytes(b) if head_done => sock.write_all(&b).await?,
                Piece::Bytes(b) => {
                    resp.extend_from_slice(&b);
                    let mut hs = [httparse::EMPTY_HEADER; 64];
                    let mut r = httparse::Response::new(&mut hs);
                    if let httparse::Status::Complete(n) = r.parse(&resp)? {
                        let mut out = BytesMut::with_capacity(resp.len() + 64);
                        out.put_slice(
                            format!(
                                "HTTP/1.1 {} {}\r\n",
                                r.code.unwrap_or(502),
                                r.reason.unwrap_or("")
                            )
                            .as_bytes(),
                        );
                        for h in r.headers.iter() {
                            if h.name.eq_ignore_ascii_case("connection")
                                || h.name.eq_ignore_ascii_case("keep-alive")
                            {
                                continue;
                            }
                            out.put_slice(h.name.as_bytes());
                            out.put_slice(b": ");
                            out.put_slice(h.value);
                            out.put_slice(b"\r\n");
                        }
                        out.put_slice(b"\r\n");
                        out.put_slice(resp.get(n..).unwrap_or_default());
                        sock.write_all(&out).await?;
                        head_done = true;
                    }
                }
            }
        }
        if let Ok(mut m) = t.streams.lock() {
            m.remove(&id);
        }
    }
}

async fn agent(gateway: String, upstream: String) -> anyhow::Result<()> {
    let (ws, _) = tokio_tungstenite::connect_async(format!("{gateway}/v1/tunnel"))
        .await
        .context("dial")?;
    let (sink, mut source) = ws.split();
    let (out, rx) = mpsc::channel(1024);
    tokio::spawn(write_frames(sink, rx));
    let pool: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let mut streams: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    while let Some(msg) = source.next().await {
        let Message::Binary(b) = msg? else { continue };
        let Some(Frame::Data { stream, data }) = decode(b) else {
            continue;
        };
        if let Some(tx) = streams.get(&stream) {
            if tx.send(data).await.is_err() {
                streams.remove(&stream);
            }
            continue;
        }
        let (tx, rx) = mpsc::channel(64);
        streams.insert(stream, tx);
        streams.retain(|_, tx| !tx.is_closed());
        let (pool, out, upstream) = (pool.clone(), out.clone(), upstream.clone());
        tokio::spawn(async move {
            if let Err(e) = agent_stream(stream, data, rx, pool, out, &upstream).await {
                eprintln!("stream {stream}: {e:#}");
            }
        });
    }
    Ok(())
}

/// One stream on the agent: its bytes to a pooled upstream connection, the response back.
async fn agent_stream(
    id: u32,
    first: Bytes,
    mut more: mpsc::Receiver<Bytes>,
    pool: Arc<Mutex<Vec<TcpStream>>>,
    out: mpsc::Sender<Frame>,
    upstream: &str,
) -> anyhow::Result<()> {
    let pooled = pool.lock().ok().and_then(|mut p| p.pop());
    let mut up = match pooled {
        Some(c) => c,
        None => {
            let c = TcpStream::connect(upstream).await?;
            c.set_nodelay(true)?;
            c
        }
    };
    up.write_all(&first).await?;
    // The rest of the request body, if any, while the response is read.
    let (mut rd, mut wr) = up.split();
    let upload = async {
        while let Some(b) = more.recv().await {
            wr.write_all(&b).await?;
        }
        anyhow::Ok(())
    };
    let head_request = first.starts_with(b"HEAD ");
    let download = async {
        use tunnelgate_proto::h1::{self, Body};
        let max = frame_max();
        let mut buf = BytesMut::with_capacity(16 * 1024);
        let send = |data: Bytes| async {
            out.send(Frame::Data { stream: id, data })
                .await
                .map_err(|_| anyhow!("tunnel gone"))
        };
        // Heads (interim 1xx ones pass and another follows), then the body by its framing.
        let body = loop {
            match h1::response_head(&buf, head_request)? {
                Some(h) => {
                    send(buf.split_to(h.len).freeze()).await?;
                    if !h.interim {
                        break h.body;
                    }
                }
                None => {
                    if rd.read_buf(&mut buf).await? == 0 {
                        bail!("upstream closed before its head");
                    }
                }
            }
        };
        let reusable = match body {
            Body::None => true,
            Body::Length(mut remaining) => {
                loop {
                    let take = (buf.len() as u64).min(remaining) as usize;
                    if take > 0 {
                        remaining -= take as u64;
                        send(buf.split_to(take).freeze()).await?;
                    }
                    if remaining == 0 {
                        break;
                    }
                    buf.reserve(max);
                    let cap = remaining.min(max as u64);
                    if (&mut rd).take(cap).read_buf(&mut buf).await? == 0 {
                        bail!("upstream closed mid-body");
                    }
                }
                true
            }
            Body::Chunked => {
                let mut chunked = h1::Chunked::default();
                loop {
                    let (n, done) = chunked.advance(&buf)?;
                    if n > 0 {
                        send(buf.split_to(n).freeze()).await?;
                    }
                    if done {
                        break;
                    }
                    buf.reserve(max);
                    if (&mut rd).take(max as u64).read_buf(&mut buf).await? == 0 {
                        bail!("upstream closed mid-body");
                    }
                }
                true
            }
            Body::UntilClose | Body::Switched => {
                loop {
                    if !buf.is_empty() {
                        send(buf.split().freeze()).await?;
                    }
                    buf.reserve(max);
                    if (&mut rd).take(max as u64).read_buf(&mut buf).await? == 0 {
                        break;
                    }
                }
                false
            }
        };
        out.send(Frame::End { stream: id })
            .await
            .map_err(|_| anyhow!("tunnel gone"))?;
        anyhow::Ok(reusable)
    };
    let reusable;
    {
        tokio::pin!(upload);
        tokio::select! {
            r = download => reusable = r?,
            r = &mut upload => { r?; bail!("request body ended before the response") }
        }
    }
    if reusable && let Ok(mut p) = pool.lock() {
        p.push(up);
    }
    Ok(())
}

/// The same gateway with actix-web parsing and writing the client's side (the product's
/// front today): what keeping actix-http in the public path costs.
fn actix_front(
    listen: std::net::TcpListener,
    tunnel: Arc<Mutex<Option<Tunnel>>>,
) -> anyhow::Result<()> {
    use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
    async fn handle(
        req: HttpRequest,
        body: web::Bytes,
        slot: web::Data<Arc<Mutex<Option<Tunnel>>>>,
    ) -> HttpResponse {
        let Some(t) = slot.lock().ok().and_then(|t| t.clone()) else {
            return HttpResponse::ServiceUnavailable().finish();
        };
        let mut out = BytesMut::with_capacity(512 + body.len());
        out.put_slice(req.method().as_str().as_bytes());
        out.put_u8(b' ');
        out.put_slice(
            req.uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .as_bytes(),
        );
        out.put_slice(b" HTTP/1.1\r\n");
        for (name, value) in req.headers() {
            if HOP_BY_HOP.contains(&name.as_str()) || name == "content-length" {
                continue;
            }
            out.put_slice(name.as_str().as_bytes());
            out.put_slice(b": ");
            out.put_slice(value.as_bytes());
            out.put_slice(b"\r\n");
        }
        if !body.is_empty() {
            out.put_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
        }
        if let Some(h) = req.headers().get("host") {
            out.put_slice(b"x-forwarded-host: ");
            out.put_slice(h.as_bytes());
            out.put_slice(b"\r\n");
        }
        if let Some(peer) = req.peer_addr() {
            out.put_slice(format!("x-forwarded-for: {}\r\n", peer.ip()).as_bytes());
        }
        out.put_slice(b"x-forwarded-proto: http\r\n\r\n");
        out.put_slice(&body);
        let id = t.next.fetch_add(2, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel(64);
        if let Ok(mut m) = t.streams.lock() {
            m.insert(id, tx);
        }
        let gone = |t: &Tunnel| {
            if let Ok(mut m) = t.streams.lock() {
                m.remove(&id);
            }
        };
        let sent = t.out.send(Frame::Data {
            stream: id,
            data: out.freeze(),
        });
        if sent.await.is_err() {
            gone(&t);
            return HttpResponse::BadGateway().finish();
        }
        let mut resp = BytesMut::new();
        loop {
            match rx.recv().await {
                Some(Piece::Bytes(b)) => resp.extend_from_slice(&b),
                _ => {
                    gone(&t);
                    return HttpResponse::BadGateway().finish();
                }
            }
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut hs);
            let n = match r.parse(&resp) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => continue,
                Err(_) => {
                    gone(&t);
                    return HttpResponse::BadGateway().finish();
                }
            };
            let status = actix_web::http::StatusCode::from_u16(r.code.unwrap_or(502))
                .unwrap_or(actix_web::http::StatusCode::BAD_GATEWAY);
            let mut b = HttpResponse::build(status);
            let mut len = None;
            for h in r.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    len = std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse::<u64>().ok());
                    continue;
                }
                if HOP_BY_HOP.iter().any(|x| h.name.eq_ignore_ascii_case(x)) {
                    continue;
                }
                b.append_header((h.name, h.value));
            }
            let first = resp.split_off(n).freeze();
            let rest = futures_util::stream::unfold((rx, t), move |(mut rx, t)| async move {
                match rx.recv().await {
                    Some(Piece::Bytes(b)) => Some((Ok::<_, std::io::Error>(b), (rx, t))),
                    _ => {
                        if let Ok(mut m) = t.streams.lock() {
                            m.remove(&id);
                        }
                        None
                    }
                }
            });
            let body = futures_util::stream::once(async move { Ok(first) }).chain(rest);
            return match len {
                Some(n) => b.body(actix_web::body::SizedStream::new(n, Box::pin(body))),
                None => b.streaming(body),
            };
        }
    }
    let data = web::Data::new(tunnel);
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(handle))
        })
        .workers(2)
        .listen(listen)?
        .run()
        .await
    })?;
    Ok(())
}
