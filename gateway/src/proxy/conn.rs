//! The public listener's plain HTTP/1.1 connections, served by the gateway's own loop (ADR
//! 0010) instead of actix-http: request heads parsed with `httparse`, each tenant request
//! given to [`super::tenant`] with its body read from the socket as the stream takes it, the
//! response written by `proxy::write`, then the next request on the same connection.
//!
//! The first request this loop does not serve itself takes the rest of the connection to
//! actix-http, its head and all (`proxy::front::FirstHead`), which serves or refuses it as
//! before: the gateway's own names (the agent endpoint, `/healthz`), the clusters' Kubernetes
//! APIs, ACME answers and HTTPS redirects, upgrades but the agents' tunnels, an `Expect` other
//! than `100-continue`, chunked uploads, HTTP/1.0, anything `httparse` refuses, and a node over
//! its limits. A head the request checks refuse (`proxy::headers`) is answered here with its
//! reason, and the connection closed.

use std::time::{Duration, Instant};

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::http::{Method, Uri, Version};
use actix_web::web;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::front::FirstHead;
use super::write::write_response;
use super::{Incoming, request_id, request_span, tag_response};
use crate::AppState;
use crate::overload::Slot;
use crate::tunnel::BodySource;

/// Longest request head this loop reads; a longer one goes to actix-http, which refuses it.
const MAX_HEAD: usize = 64 * 1024;
/// Headers a request may have here (actix-http allows 96).
const MAX_HEADERS: usize = 96;
/// Time for a whole request head, and for the next one to begin on a kept connection
/// (actix-http's defaults: `client_request_timeout` and `keep_alive`, 5 s each).
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read from the socket at a time for a request body.
const READ_CHUNK: usize = 64 * 1024;
/// Buffer capacity an idle connection may keep between requests.
const IDLE_BUFFER: usize = 8 * 1024;
/// An unread rest of a request body up to this size is read and dropped after the response,
/// keeping the connection; a longer one closes it.
const DISCARD_MAX: u64 = 256 * 1024;

/// What became of a connection.
pub enum Served {
    /// Closed here.
    Done,
    /// The rest of the connection, from the head of a request this loop does not serve.
    HandOff(FirstHead<TcpStream>),
}

/// A request head this loop serves.
struct Request {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    /// The body's length (Content-Length; 0 without one).
    length: u64,
    /// The client asked for `Connection: close`.
    close: bool,
    /// A WebSocket upgrade (served here only for `/v1/tunnel` on the gateway's own names).
    websocket: bool,
    /// `Expect: 100-continue`: the client waits for a 100 before it sends the body.
    continue_first: bool,
}

/// What the bytes read so far hold.
enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// A request this loop serves, and the length of its head.
    Ours(Request, usize),
    /// A request for actix-http (see the module's documentation), and why.
    Other(&'static str),
}

fn parse(buf: &[u8]) -> Parsed {
    // Uninitialised slots: the parser writes the ones it uses (zeroing them all was a
    // per-request cost of its own).
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let end = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Parsed::Partial,
        Ok(httparse::Status::Partial) => return Parsed::Other("head_too_large"),
        Err(httparse::Error::TooManyHeaders) => return Parsed::Other("too_many_headers"),
        Err(_) => return Parsed::Other("unparsable"),
    };
    match head_of(&req) {
        Ok(r) => Parsed::Ours(r, end),
        Err(why) => Parsed::Other(why),
    }
}

/// The request when this loop serves it, else why not.
fn head_of(req: &httparse::Request<'_, '_>) -> Result<Request, &'static str> {
    if req.version != Some(1) {
        return Err("http_1_0");
    }
    let method = req
        .method
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok());
    let method = method.filter(|m| m != Method::CONNECT).ok_or("method")?;
    let uri = req
        .path
        .and_then(|p| Uri::try_from(p).ok())
        .ok_or("target")?;
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    let mut length = None;
    let mut close = false;
    let (mut upgrade, mut asks_upgrade) = (None, false);
    let mut continue_first = false;
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| "header")?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| "header")?;
        match name.as_str() {
            "transfer-encoding" => return Err("transfer_encoding"),
            "upgrade" if upgrade.is_some() => return Err("upgrade"),
            "upgrade" => upgrade = Some(value.clone()),
            "expect" if value.as_bytes().eq_ignore_ascii_case(b"100-continue") => {
                continue_first = true;
            }
            "expect" => return Err("expect"),
            "content-length" => {
                let text = value.to_str().unwrap_or_default();
                let ok = !text.is_empty()
                    && text.len() <= 18
                    && text.bytes().all(|b| b.is_ascii_digit());
                if length.is_some() || !ok {
                    return Err("content_length");
                }
                length = text.parse::<u64>().ok();
            }
            "connection" => {
                let tokens = value.to_str().map_err(|_| "header")?;
                for token in tokens.split(',').map(str::trim) {
                    asks_upgrade |= token.eq_ignore_ascii_case("upgrade");
                    close |= token.eq_ignore_ascii_case("close");
                }
            }
            _ => {}
        }
        headers.append(name, value);
    }
    let websocket = match (upgrade, asks_upgrade) {
        (None, false) => false,
        (Some(u), true) if u.as_bytes().eq_ignore_ascii_case(b"websocket") => true,
        _ => return Err("upgrade"),
    };
    Ok(Request {
        method,
        uri,
        headers,
        length: length.unwrap_or(0),
        close,
        websocket,
        continue_first,
    })
}

/// Serves a connection of the plain peer listener: a `GET /v1/peer` upgrade becomes a peer
/// link here (`cluster::peer_server::accept_raw`); anything else gets a short refusal.
pub async fn serve_peer(mut io: TcpStream, state: web::Data<AppState>) {
    use actix_web::http::StatusCode;
    let mut buf = BytesMut::new();
    let refusal = match read_head(&mut io, &mut buf).await {
        Head::Gone | Head::Late => return,
        Head::Ready(req, n)
            if req.websocket && req.method == Method::GET && req.uri.path() == "/v1/peer" =>
        {
            let rest = buf.get(n..).unwrap_or_default().to_vec();
            match crate::cluster::peer_server::accept_raw(io, rest, &req.headers, &state).await {
                Ok(()) => return,
                Err(refused) => {
                    let (refused_io, refusal) = *refused;
                    io = refused_io;
                    refusal
                }
            }
        }
        Head::Ready(req, _) if req.uri.path() == "/v1/peer" => crate::tunnel::refuse(
            StatusCode::BAD_REQUEST,
            "WebSocket upgrade required: a GET with Upgrade: websocket",
        ),
        Head::Ready(..) => crate::tunnel::refuse(
            StatusCode::NOT_FOUND,
            "the peer listener serves /v1/peer only",
        ),
        Head::Other(why) => crate::tunnel::refuse(
            StatusCode::BAD_REQUEST,
            &format!("not a peer link's upgrade ({why})"),
        ),
    };
    let _ = write_response(&mut io, refusal, false, true).await;
}

/// Serves `io` until it closes, or hands it to actix-http.
pub async fn serve(mut io: TcpStream, slot: Slot, state: web::Data<AppState>) -> Served {
    let peer = io.peer_addr().ok();
    let mut buf = BytesMut::new();
    loop {
        // An idle kept connection holds no body-sized buffer.
        if buf.is_empty() && buf.capacity() > IDLE_BUFFER {
            buf = BytesMut::new();
        }
        let hand_off = |why: &'static str, io, slot, buf: &BytesMut| {
            state.metrics.front_handoff(why);
            Served::HandOff(FirstHead::resume(io, slot, buf.to_vec()))
        };
        if slot.over || state.load.memory_over() {
            return hand_off("overload", io, slot, &buf);
        }
        let (req, head_len) = match read_head(&mut io, &mut buf).await {
            Head::Ready(r, n) => (r, n),
            Head::Other(why) => return hand_off(why, io, slot, &buf),
            Head::Gone => return Served::Done,
            Head::Late => {
                let late = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
                let _ = io.write_all(late).await;
                return Served::Done;
            }
        };
        let id = request_id(&req.headers);
        let inc = Incoming {
            method: &req.method,
            uri: &req.uri,
            version: Version::HTTP_11,
            headers: &req.headers,
            peer,
            tls: None,
            id,
        };
        // A head the request checks refuse (two Hosts, none, an invalid one, …) gets its
        // reason here, and the connection is closed: nothing after it can be trusted.
        let host = match super::headers::check_request(&inc, state.config.max_header_bytes) {
            Ok(h) => h,
            Err(e) => {
                let refusal = super::fail(&state, &inc, "", e);
                let _ = write_response(&mut io, refusal, false, true).await;
                return Served::Done;
            }
        };
        if req.websocket {
            if state.config.is_gateway_name(&host) && req.uri.path() == "/v1/tunnel" {
                // The agent's tunnel lives on with the socket (and its slot).
                let rest = buf.get(head_len..).unwrap_or_default().to_vec();
                let (method, headers) = (&req.method, &req.headers);
                let accepted =
                    crate::tunnel::accept_raw(io, slot, rest, method, headers, &state).await;
                if let Err(refused) = accepted {
                    let (mut io, refusal) = *refused;
                    let _ = write_response(&mut io, refusal, false, true).await;
                }
                return Served::Done;
            }
            return hand_off("upgrade", io, slot, &buf);
        }
        if !super::is_tenant_host(&state, &host, req.uri.path()) {
            return hand_off("not_a_tenant", io, slot, &buf);
        }
        let _ = buf.split_to(head_len);
        let started = Instant::now();
        // As actix-http does: the client is asked for its body at once (a route that answers
        // first leaves it unread, read past or the connection closed, as any unread body).
        if req.continue_first
            && req.length > 0
            && io
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
        {
            return Served::Done;
        }
        let mut left = req.length;
        let (written, close, pumped) = {
            let (mut rd, mut wr) = io.split();
            let (tx, body) = body_channel(left);
            let is_head = req.method == Method::HEAD;
            let respond = async {
                let span = request_span(&inc.id, inc.headers);
                let mut resp = super::tenant(&inc, body, &state, host, started)
                    .instrument(span)
                    .await;
                tag_response(&mut resp, &inc.id);
                // A draining node asks its clients to reconnect (to the nodes still ready)
                // rather than keep a connection it will cut when it stops.
                let close = req.close || state.is_draining();
                (write_response(&mut wr, resp, is_head, close).await, close)
            };
            let pump = async {
                match tx {
                    Some(tx) => pump(&mut rd, &mut buf, &mut left, tx).await,
                    None => Ok(()),
                }
            };
            tokio::pin!(respond, pump);
            let mut pumped = None;
            loop {
                tokio::select! {
                    biased;
                    (w, close) = &mut respond => break (w, close, pumped),
                    r = &mut pump, if pumped.is_none() => pumped = Some(r.is_ok()),
                }
            }
        };
        let keep = match written {
            Ok(()) if !close && pumped != Some(false) => {
                left == 0 || (left <= DISCARD_MAX && discard(&mut io, &mut buf, &mut left).await)
            }
            _ => false,
        };
        if keep {
            continue;
        }
        let _ = io.shutdown().await;
        return Served::Done;
    }
}

/// How waiting for a request head ended.
enum Head {
    Ready(Request, usize),
    Other(&'static str),
    /// The client closed (or failed) before a head began.
    Gone,
    /// A head begun and not finished in time.
    Late,
}

async fn read_head(io: &mut TcpStream, buf: &mut BytesMut) -> Head {
    let deadline = tokio::time::Instant::now() + HEAD_TIMEOUT;
    loop {
        if !buf.is_empty() {
            match parse(buf) {
                Parsed::Ours(r, n) => return Head::Ready(r, n),
                Parsed::Other(why) => return Head::Other(why),
                Parsed::Partial => {}
            }
        }
        buf.reserve(4096);
        match tokio::time::timeout_at(deadline, io.read_buf(buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) if buf.is_empty() => return Head::Gone,
            // Half a head and an end: actix-http refuses it.
            Ok(Ok(0)) => return Head::Other("incomplete"),
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Head::Gone,
            Err(_) if buf.is_empty() => return Head::Gone,
            Err(_) => return Head::Late,
        }
    }
}

type BodyItem = Result<Bytes, String>;

/// The channel a request body goes through: the loop reads the socket only as fast as the
/// stream takes the body (one chunk in flight).
fn body_channel(length: u64) -> (Option<mpsc::Sender<BodyItem>>, BodySource) {
    if length == 0 {
        return (None, Box::pin(futures_util::stream::empty()));
    }
    let (tx, rx) = mpsc::channel::<BodyItem>(1);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (Some(tx), Box::pin(body))
}

/// Reads `left` bytes of body (what is in `buf` first) into `tx`. Stops early, Ok, when the
/// stream no longer takes the body; an error when the client ends or fails mid-body (the
/// stream is told, and resets).
async fn pump(
    rd: &mut tokio::net::tcp::ReadHalf<'_>,
    buf: &mut BytesMut,
    left: &mut u64,
    tx: mpsc::Sender<BodyItem>,
) -> std::io::Result<()> {
    while *left > 0 {
        if buf.is_empty() {
            buf.reserve(READ_CHUNK);
            let n = match rd.read_buf(buf).await {
                Ok(0) => Err(std::io::ErrorKind::UnexpectedEof.into()),
                other => other,
            };
            if let Err(e) = n {
                let _ = tx
                    .send(Err(format!("the client's body ended early: {e}")))
                    .await;
                return Err(e);
            }
        }
        let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
        let chunk = buf.split_to(take).freeze();
        *left -= take as u64;
        if tx.send(Ok(chunk)).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// Reads and drops the rest of a body the stream did not take (a response that came before
/// it), within the head timeout; false when that fails (the connection is closed).
async fn discard(io: &mut TcpStream, buf: &mut BytesMut, left: &mut u64) -> bool {
    let deadline = tokio::time::Instant::now() + HEAD_TIMEOUT;
    while *left > 0 {
        if buf.is_empty() {
            buf.reserve(READ_CHUNK);
            match tokio::time::timeout_at(deadline, io.read_buf(buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return false,
            }
        }
        let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
        let _ = buf.split_to(take);
        *left -= take as u64;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(head: &[u8]) -> Option<Request> {
        match parse(head) {
            Parsed::Ours(r, n) => {
                assert_eq!(n, head.len());
                Some(r)
            }
            Parsed::Partial => panic!("partial"),
            Parsed::Other(_) => None,
        }
    }

    #[test]
    fn plain_requests_are_served_here() {
        let r = ours(b"POST /a?b=1 HTTP/1.1\r\nHost: app.demo.localhost\r\nContent-Length: 12\r\nConnection: keep-alive, close\r\n\r\n").unwrap();
        assert_eq!(r.method, Method::POST);
        assert_eq!(r.uri.path(), "/a");
        assert_eq!(r.length, 12);
        assert!(r.close);
        assert_eq!(r.headers.get("host").unwrap(), "app.demo.localhost");
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\n"),
            Parsed::Partial
        ));
    }

    #[test]
    fn everything_else_goes_to_actix() {
        for head in [
            &b"GET / HTTP/1.0\r\nHost: a\r\n\r\n"[..],
            b"POST /x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n",
            b"GET /v HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: something-else\r\nContent-Length: 3\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
            b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert!(ours(head).is_none(), "{}", String::from_utf8_lossy(head));
        }
        let long = format!("GET / HTTP/1.1\r\nX: {}", "y".repeat(MAX_HEAD));
        assert!(matches!(
            parse(long.as_bytes()),
            Parsed::Other("head_too_large")
        ));
    }
}
