//! One stream per proxied request, run as a task (ADR 0010): it sends the request head and pumps
//! the client's body into the tunnel under the stream's send credit, enforces the response
//! timeout, and tells the tunnel when the stream is over (with a RESET when it did not finish
//! cleanly). The stream ends when its opener drops the response body. A request without a body
//! whose head fits in the outbox at once needs none of that from a task: its head is queued in
//! place, its opener times the head, and dropping the body ends the stream.

use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use futures_util::StreamExt;
use tunnelgate_mux::{Outbox, Outgoing};
use tunnelgate_proto::control::ProxyRequest;
use tunnelgate_proto::limits::MAX_FRAME_PAYLOAD;
use tunnelgate_proto::{Control, Frame, ResetCode, StreamId};

use super::open::{StreamGone, StreamShared};
use crate::error::ProxyError;

/// A request body: the client's payload, or a peer's DATA frames through a pipe.
pub type BodySource =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, String>>>>;

/// The client's request body as a [`BodySource`].
pub fn payload_body(p: web::Payload) -> BodySource {
    Box::pin(p.map(|r| r.map_err(|e| e.to_string())))
}

/// A pipe (a peer's upload) as a [`BodySource`].
pub fn pipe_body(r: tunnelgate_mux::PipeReader) -> BodySource {
    Box::pin(r.map(|r| r.map_err(|e| e.0)))
}

/// A stream whose task runs: what the opener still holds.
pub struct Started {
    pub id: StreamId,
    pub head: tokio::sync::oneshot::Receiver<Result<super::Head, ProxyError>>,
    pub body: tunnelgate_mux::PipeReader,
    pub shared: Arc<StreamShared>,
    pub outbox: Outbox,
    /// No task runs for the stream: the opener waits for the head at most this long (and
    /// calls [`StreamShared::time_out`] when it gives up).
    pub head_timeout: Option<Duration>,
    /// The request's headers, back from the head that carried them.
    pub headers: tunnelgate_proto::control::HeaderList,
}

/// Waits for a started stream's response head: as long as its task allows, or at most
/// `head_timeout` when no task runs (then, timed out, the stream ends with a timeout RESET
/// once its body is dropped).
pub async fn wait_head(
    head: tokio::sync::oneshot::Receiver<Result<super::Head, ProxyError>>,
    head_timeout: Option<Duration>,
    shared: &StreamShared,
) -> Result<super::Head, ProxyError> {
    let head = match head_timeout {
        None => head.await,
        Some(t) => match tokio::time::timeout(t, head).await {
            Ok(h) => h,
            Err(_) => {
                shared.time_out();
                return Err(ProxyError::Timeout(t));
            }
        },
    };
    head.map_err(|_| ProxyError::TunnelLost)?
}

/// Starts the task of an opened stream for `request` (its stream id is set here). The stream
/// ends when the opener drops the response body (for an upgrade, the upstream's bytes).
///
/// With `opener_waits`, a request without a body whose head fits in the outbox at once gets no
/// task at all: the head is queued here, the opener enforces the response timeout
/// ([`Started::head_timeout`]), and dropping the body ends the stream.
pub fn start_stream(
    opened: super::Opened,
    mut request: ProxyRequest,
    payload: Option<BodySource>,
    response_timeout: Duration,
    body_idle_timeout: Duration,
    opener_waits: bool,
) -> Started {
    let super::Opened {
        id,
        head,
        mut body,
        shared,
        outbox,
        gone,
        binary_heads,
    } = opened;
    request.stream_id = id;
    // An upgraded connection: the agent is always told when it ends (RESET), since the stream
    // outlives the response head; its bytes have no idle timeout (a WebSocket may be quiet for
    // hours).
    let upgrade = request.upgrade.is_some();
    // Protocol 3's head frame (agent tunnels and peer links), or protocol 2's JSON.
    // (The headers go back to the opener, which may send the request again elsewhere.)
    let (mut head_msg, headers) = match binary_heads {
        true => {
            let head = Outgoing::Binary(tunnelgate_proto::head::encode_request(&request));
            (head, std::mem::take(&mut request.headers))
        }
        false => {
            let control = Control::ProxyRequest(request);
            let head = Outgoing::Text(control.to_json());
            match control {
                Control::ProxyRequest(r) => (head, r.headers),
                _ => (head, Vec::new()),
            }
        }
    };
    if opener_waits && payload.is_none() && !upgrade {
        match outbox.try_queue(head_msg) {
            Ok(()) => {
                shared.mark_head_sent();
                let ends = shared.clone();
                body.on_drop(move || {
                    // Nobody waits for a head that can no longer come.
                    ends.resolve(Err(ProxyError::TunnelLost));
                    let reset = if ends.timed_out() {
                        Some(ResetCode::TIMEOUT)
                    } else {
                        (!ends.remote_done()).then_some(ResetCode::CANCEL)
                    };
                    gone.send(StreamGone { id, reset });
                });
                return Started {
                    id,
                    head,
                    body,
                    shared,
                    outbox,
                    head_timeout: Some(response_timeout),
                    headers,
                };
            }
            // The outbox is full: the stream's task waits for room.
            Err(m) => head_msg = m,
        }
    }
    let pump = upload(
        id,
        outbox.clone(),
        shared.clone(),
        head_msg,
        payload,
        body_idle_timeout,
        upgrade,
    );
    let (client_gone, gone_rx) = tokio::sync::oneshot::channel::<()>();
    body.on_drop(move || {
        let _ = client_gone.send(());
    });
    let end = End {
        id,
        shared: shared.clone(),
        gone,
        upgrade,
    };
    actix_rt::spawn(run(pump, response_timeout, gone_rx, end));
    Started {
        id,
        head,
        body,
        shared,
        outbox,
        head_timeout: None,
        headers,
    }
}

/// Why the upload stopped early.
#[derive(Debug, thiserror::Error)]
enum UploadError {
    #[error("client body: {0}")]
    Client(String),
    #[error("the client sent no body bytes for {0:?}")]
    Idle(Duration),
    #[error("tunnel closed")]
    Tunnel,
}

async fn upload(
    id: StreamId,
    outbox: Outbox,
    shared: Arc<StreamShared>,
    head: Outgoing,
    payload: Option<BodySource>,
    idle: Duration,
    upgraded: bool,
) -> Result<(), UploadError> {
    use std::io::ErrorKind;
    let queued = outbox.send(head).await;
    shared.mark_head_sent();
    queued.map_err(|_| UploadError::Tunnel)?;
    let Some(payload) = payload else {
        return Ok(());
    };
    // A request body may pause at most `idle` between chunks (the same timer as response
    // bodies); an upgraded connection may be quiet for hours.
    let mut payload: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = std::io::Result<bytes::Bytes>>>,
    > = if upgraded {
        Box::pin(payload.map(|r| r.map_err(std::io::Error::other)))
    } else {
        Box::pin(crate::proxy::idle::IdleTimeout::new(payload, idle))
    };
    while let Some(chunk) = payload.next().await {
        let mut chunk = match chunk {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::TimedOut && !upgraded => {
                return Err(UploadError::Idle(idle));
            }
            // On an upgraded connection the client's FIN is a half-close ("done sending"),
            // which actix reports as an incomplete payload: the upstream gets END and keeps
            // answering. (An abort shows on the response side, which resets the stream.)
            Err(_) if upgraded => break,
            Err(e) => return Err(UploadError::Client(e.to_string())),
        };
        while !chunk.is_empty() {
            let piece = chunk.split_to(chunk.len().min(MAX_FRAME_PAYLOAD));
            shared
                .credit
                .acquire(piece.len())
                .await
                .map_err(|_| UploadError::Tunnel)?;
            outbox
                .send_frame(Frame::Data {
                    stream: id,
                    data: piece,
                })
                .await
                .map_err(|_| UploadError::Tunnel)?;
        }
    }
    outbox
        .send_frame(Frame::End { stream: id })
        .await
        .map_err(|_| UploadError::Tunnel)
}

/// What the end of a stream needs: whom to tell, and whether it finished cleanly.
struct End {
    id: StreamId,
    shared: Arc<StreamShared>,
    gone: super::opener::Gone,
    upgrade: bool,
}

/// The stream's life: the upload and the response timer run until the opener drops the
/// response body (or the upload fails, or the head times out); then the tunnel is told.
async fn run(
    pump: impl std::future::Future<Output = Result<(), UploadError>>,
    timeout: Duration,
    client_gone: tokio::sync::oneshot::Receiver<()>,
    p: End,
) {
    tokio::pin!(pump);
    let timer = tokio::time::sleep(timeout);
    tokio::pin!(timer);
    tokio::pin!(client_gone);
    let mut upload_done = false;
    let mut timer_done = false;
    let mut reset = None;
    loop {
        tokio::select! {
            res = &mut pump, if !upload_done => match res {
                Ok(()) => upload_done = true,
                Err(e) => {
                    tracing::debug!(stream = p.id, error = %e, "upload stopped");
                    reset = Some(ResetCode::CANCEL);
                    let err = match e {
                        UploadError::Idle(d) => ProxyError::BodyTimeout(d),
                        _ => ProxyError::BadRequest("request body ended early".into()),
                    };
                    p.shared.resolve(Err(err));
                    break;
                }
            },
            () = &mut timer, if !timer_done => {
                timer_done = true;
                if p.shared.resolve(Err(ProxyError::Timeout(timeout))) {
                    reset = Some(ResetCode::TIMEOUT);
                    break;
                }
            },
            // Dropped (sent or not): the response is complete or the client went away.
            _ = &mut client_gone => break,
        }
    }
    // Whatever happened, nobody waits for a head that can no longer come.
    p.shared.resolve(Err(ProxyError::TunnelLost));
    let clean = upload_done && p.shared.remote_done() && !p.upgrade;
    let reset = reset.or((!clean).then_some(ResetCode::CANCEL));
    p.gone.send(StreamGone { id: p.id, reset });
}
