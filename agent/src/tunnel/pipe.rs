//! A request to a plain `http://` upstream carried as bytes (ADR 0010) instead of through an
//! HTTP client: the request head written straight from the gateway's `proxy_request`, the body
//! in its own framing, on a pooled connection; the response head parsed once
//! (`tunnelgate_proto::h1`) for its framing, its body sent on as it comes (a chunked
//! one decoded), and the connection pooled again when its framing allows. After a 101 the
//! connection's raw bytes flow both ways. On a protocol-3 tunnel the head goes to the gateway
//! as the upstream wrote it (`proto::head`), with a small body whole in the same frame.

use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tunnelgate_mux::Outgoing;
use tunnelgate_proto::control::{ProxyErrorKind, ProxyResponse};
use tunnelgate_proto::h1::{self, Body, Chunked, Step};
use tunnelgate_proto::head;
use tunnelgate_proto::limits::MAX_FRAME_PAYLOAD;
use tunnelgate_proto::{Control, Frame, ResetCode};

use super::head::request_head;
use super::stream::StreamTask;
use crate::rules::Target;

/// How one exchange went wrong.
enum Failed {
    /// Before any byte of a response arrived: on a reused connection without a body the
    /// request is tried again on a new one.
    BeforeResponse(String),
    /// Reported to the gateway (before its head) or the stream was reset (after).
    Done,
}

impl StreamTask {
    /// Serves the request through `target`, a plain-HTTP upstream, as bytes.
    pub(super) async fn serve_piped(mut self, target: &Target, started: std::time::Instant) {
        use tracing::Instrument;
        let call = tracing::info_span!("upstream call", otel.kind = "client");
        let tp = tunnelgate_telemetry::traceparent(&call);
        let (head, chunked) = match request_head(&self.request, target, tp.as_deref()) {
            Ok(h) => h,
            Err(why) => {
                let msg = self.fail(ProxyErrorKind::UpstreamFailed, why);
                let _ = self.outbox.send_control(&msg).await;
                return;
            }
        };
        let head = head.freeze();
        // Only a request whose bytes can all be sent again is retried.
        let retryable = !self.request.body && self.request.upgrade.is_none();
        let pool = self.pool.clone();
        let address = target.authority.as_str();
        let mut fresh_only = false;
        async {
            loop {
                let got = match fresh_only {
                    true => pool.connect(address).await.map(|c| (c, false)),
                    false => pool.checkout(address).await,
                };
                let (conn, reused) = match got {
                    Ok(c) => c,
                    Err(e) => {
                        let msg = self.fail(ProxyErrorKind::UpstreamRefused, e.to_string());
                        let _ = self.outbox.send_control(&msg).await;
                        return;
                    }
                };
                self.metrics.upstream_connection(reused);
                match self.exchange(conn, head.clone(), chunked, started).await {
                    Ok(Some(conn)) => return pool.checkin(address, conn),
                    Ok(None) | Err(Failed::Done) => return,
                    Err(Failed::BeforeResponse(why)) if reused && retryable => {
                        tracing::debug!(error = %why, "a pooled upstream connection was closed; trying a new one");
                        fresh_only = true;
                    }
                    Err(Failed::BeforeResponse(why)) => {
                        let msg = self.fail(ProxyErrorKind::UpstreamFailed, why);
                        let _ = self.outbox.send_control(&msg).await;
                        return;
                    }
                }
            }
        }
        .instrument(call)
        .await
    }

    /// One request on `conn`: the connection back when it may be reused.
    async fn exchange(
        &mut self,
        conn: tokio::net::TcpStream,
        head: Bytes,
        chunked: bool,
        started: std::time::Instant,
    ) -> Result<Option<tokio::net::TcpStream>, Failed> {
        let (mut rd, mut wr) = conn.into_split();
        wr.write_all(&head)
            .await
            .map_err(|e| Failed::BeforeResponse(format!("writing the request: {e}")))?;
        let upgrade = self.request.upgrade.is_some();
        // An upgrade's upload is the connection's bytes after 101, not a body.
        let mut upload = if upgrade { None } else { self.upload.take() };
        let mut upload_done = upload.is_none();
        let mut buf = BytesMut::with_capacity(8 * 1024);
        let head_request = self.request.method.eq_ignore_ascii_case("HEAD");
        // The body goes up while the head is awaited (an upstream may answer early).
        // Protocol 2 takes the head apart into JSON fields; protocol 3 sends it as read.
        let mut fields = Vec::new();
        let json = !self.binary_heads;
        // Pinned in a box so that the borrow of the write half ends when it is dropped.
        let mut up = Box::pin(send_body(&mut upload, &mut wr, chunked));
        let (resp, raw) = loop {
            let parsed = h1::response_head_with(&buf, head_request, |n, v| {
                if json {
                    fields.push((
                        n.to_ascii_lowercase(),
                        String::from_utf8_lossy(v).into_owned(),
                    ))
                }
            });
            match parsed {
                Ok(Some(h)) if h.interim => {
                    // 100 Continue, 103 Early Hints: absorbed, as an HTTP client would.
                    let _ = buf.split_to(h.len);
                    fields.clear();
                    continue;
                }
                Ok(Some(h)) => {
                    let raw = buf.split_to(h.len);
                    break (h, raw);
                }
                Ok(None) => fields.clear(),
                Err(e) => {
                    return Err(self
                        .report(ProxyErrorKind::UpstreamFailed, e.to_string())
                        .await);
                }
            }
            tokio::select! {
                read = rd.read_buf(&mut buf) => match read {
                    Ok(0) if buf.is_empty() => return Err(Failed::BeforeResponse("the upstream closed the connection before answering".into())),
                    Ok(0) => return Err(self.report(ProxyErrorKind::UpstreamFailed, "the upstream closed the connection mid-head".into()).await),
                    Ok(_) => {}
                    Err(e) if buf.is_empty() => return Err(Failed::BeforeResponse(format!("reading the response: {e}"))),
                    Err(e) => return Err(self.report(ProxyErrorKind::UpstreamFailed, e.to_string()).await),
                },
                sent = &mut up, if !upload_done => match sent {
                    Ok(()) => upload_done = true,
                    // The gateway ended the stream: nobody waits for an answer.
                    Err(_) => return Err(Failed::Done),
                },
            }
        };
        if self.access_log {
            let r = &self.request;
            tracing::info!(
                method = %r.method, host = %r.host, path = %r.path, status = resp.status,
                head_ms = started.elapsed().as_secs_f64() * 1000.0, "upstream call"
            );
        }
        let id = self.request.stream_id;
        let switched = resp.body == Body::Switched && upgrade;
        let has_body = !matches!(resp.body, Body::None);
        if self.binary_heads && !switched && upload_done {
            // A whole small body already read goes with the head: one message, not three.
            if let Body::Length(n) = resp.body
                && let Ok(n) = usize::try_from(n)
                && n <= INLINE_BODY
                && buf.len() >= n
                && self.credit.available() >= n
            {
                let body = buf.split_to(n);
                if self.credit.acquire(n).await.is_err() {
                    return Ok(None);
                }
                let frame = head::response_whole(id, &raw, &body);
                if self.outbox.send(Outgoing::Binary(frame)).await.is_err() {
                    return Ok(None);
                }
                drop(up);
                let whole = buf.is_empty() && resp.keep_alive;
                return Ok(whole.then(|| rd.reunite(wr).ok()).flatten());
            }
        }
        let sent = match self.binary_heads {
            true => {
                let frame = head::response_from_raw(id, has_body, &raw);
                self.outbox.send(Outgoing::Binary(frame)).await
            }
            false => {
                let msg = Control::ProxyResponse(ProxyResponse {
                    stream_id: id,
                    status: resp.status,
                    headers: fields,
                    body: has_body,
                });
                self.outbox.send_control(&msg).await
            }
        };
        if sent.is_err() {
            return Ok(None);
        }
        if switched {
            drop(up);
            self.splice(rd, wr, buf).await;
            return Ok(None);
        }
        // The body comes down while the rest of the request goes up (full duplex).
        let this = &*self;
        let body = async {
            match resp.body {
                Body::None => Ok(buf.is_empty()),
                Body::Length(n) => this.body_of_length(&mut rd, buf, n).await,
                Body::Chunked => this.body_chunked(&mut rd, buf).await,
                Body::UntilClose | Body::Switched => this.body_until_close(&mut rd, buf).await,
            }
        };
        let rest = async {
            match upload_done {
                true => Ok(()),
                false => (&mut up).await,
            }
        };
        let (ended, uploaded) = futures_util::future::join(body, rest).await;
        drop(up);
        match ended {
            Ok(reusable) => {
                if has_body {
                    let _ = self.outbox.send_frame(Frame::End { stream: id }).await;
                }
                // The whole request must have gone up for the connection to be reused.
                let whole = reusable && resp.keep_alive && uploaded.is_ok();
                Ok(whole.then(|| rd.reunite(wr).ok()).flatten())
            }
            Err(why) => {
                if let Some(why) = why {
                    tracing::warn!(stream = id, error = %why, "upstream body failed mid-response");
                    self.outbox.reset(id, ResetCode::UPSTREAM);
                }
                Ok(None)
            }
        }
    }

    /// Reports a failure before the response head to the gateway.
    async fn report(&self, kind: ProxyErrorKind, why: String) -> Failed {
        let msg = self.fail(kind, why);
        let _ = self.outbox.send_control(&msg).await;
        Failed::Done
    }

    /// A body of `n` bytes; `Ok(true)`: the connection may be reused.
    async fn body_of_length(
        &self,
        rd: &mut OwnedReadHalf,
        mut buf: BytesMut,
        mut n: u64,
    ) -> Result<bool, Option<String>> {
        loop {
            let take = (buf.len() as u64).min(n) as usize;
            if take > 0 {
                n -= take as u64;
                self.data(buf.split_to(take).freeze()).await?;
            }
            if n == 0 {
                // Bytes past the response that nobody asked for: the connection is not reused.
                return Ok(buf.is_empty());
            }
            if !read_more(rd, &mut buf, n).await? {
                return Err(Some(MID_BODY.into()));
            }
        }
    }

    /// A chunked body, decoded: its data goes on, its framing is dropped.
    async fn body_chunked(
        &self,
        rd: &mut OwnedReadHalf,
        mut buf: BytesMut,
    ) -> Result<bool, Option<String>> {
        let mut chunked = Chunked::default();
        let mut data = BytesMut::new();
        loop {
            match chunked.step(&buf).map_err(|e| Some(e.to_string()))? {
                Step::Data(n) => {
                    data.unsplit(buf.split_to(n));
                    continue;
                }
                Step::Framing(n) => {
                    let _ = buf.split_to(n);
                    continue;
                }
                Step::Done(n) => {
                    let _ = buf.split_to(n);
                    if !data.is_empty() {
                        self.data(data.split().freeze()).await?;
                    }
                    return Ok(buf.is_empty());
                }
                Step::More => {}
            }
            if !data.is_empty() {
                self.data(data.split().freeze()).await?;
            }
            if !read_more(rd, &mut buf, u64::MAX).await? {
                return Err(Some(MID_BODY.into()));
            }
        }
    }

    /// A body that ends when the upstream closes; never reused.
    async fn body_until_close<R: AsyncRead + Unpin>(
        &self,
        rd: &mut R,
        mut buf: BytesMut,
    ) -> Result<bool, Option<String>> {
        loop {
            if !buf.is_empty() {
                self.data(buf.split().freeze()).await?;
            }
            if !read_more(rd, &mut buf, u64::MAX).await? {
                return Ok(false);
            }
        }
    }

    /// After the upstream's 101: the client's bytes up (then a half-close), the upstream's down
    /// (after what came with the head) under the stream's credit, then END; until both have
    /// finished. A failing upstream side resets the stream.
    pub(super) async fn splice<R, W>(&mut self, mut rd: R, mut wr: W, early: BytesMut)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let id = self.request.stream_id;
        let upload = self.upload.take();
        let up = async move {
            if let Some(mut pipe) = upload {
                while let Some(chunk) = pipe.next().await {
                    let chunk = chunk.map_err(|e| e.0)?;
                    wr.write_all(&chunk).await.map_err(|e| e.to_string())?;
                }
            }
            wr.shutdown().await.map_err(|e| e.to_string())
        };
        let this = &*self;
        let down = async move {
            let ended = this.body_until_close(&mut rd, early).await;
            ended.map_err(|e| e.unwrap_or_else(|| "tunnel closed".into()))?;
            this.outbox
                .send_frame(Frame::End { stream: id })
                .await
                .map_err(|_| "tunnel closed".to_string())
        };
        let (up, down) = futures_util::future::join(up, down).await;
        if let Err(e) = down {
            tracing::debug!(stream = id, error = %e, "upgraded connection ended (upstream side)");
            self.outbox.reset(id, ResetCode::UPSTREAM);
        } else if let Err(e) = up {
            tracing::debug!(stream = id, error = %e, "upgraded connection ended (client side)");
        }
    }
}

/// The largest body that goes whole in its response's head frame (protocol 3): the small
/// responses whose three messages (head, DATA, END) cost more than their bytes.
const INLINE_BODY: usize = 16 * 1024;

/// What a body cut short by the upstream is called.
const MID_BODY: &str = "the upstream closed the connection mid-body";

/// Reads at most a frame's worth (and at most `left` bytes) more into `buf`; `Ok(false)` at
/// the upstream's EOF.
async fn read_more<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    left: u64,
) -> Result<bool, Option<String>> {
    buf.reserve(MAX_FRAME_PAYLOAD);
    let cap = left.min(MAX_FRAME_PAYLOAD as u64);
    match rd.take(cap).read_buf(buf).await {
        Ok(n) => Ok(n > 0),
        Err(e) => Err(Some(e.to_string())),
    }
}

/// Sends the request body from `upload` (chunked when `chunked`), then nothing more.
async fn send_body(
    upload: &mut Option<tunnelgate_mux::PipeReader>,
    wr: &mut OwnedWriteHalf,
    chunked: bool,
) -> Result<(), String> {
    let Some(pipe) = upload else {
        return Ok(());
    };
    while let Some(chunk) = pipe.next().await {
        let chunk = chunk.map_err(|e| e.0)?;
        if chunk.is_empty() {
            continue;
        }
        let written = if chunked {
            // Size line, data and CRLF in one vectored write, the data not copied.
            let size = Bytes::from(format!("{:x}\r\n", chunk.len()));
            let mut framed = size.chain(chunk).chain(&b"\r\n"[..]);
            wr.write_all_buf(&mut framed).await
        } else {
            wr.write_all(&chunk).await
        };
        written.map_err(|e| e.to_string())?;
    }
    if chunked {
        wr.write_all(b"0\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
    }
    *upload = None;
    Ok(())
}
