//! The opening end of streams, shared by agent tunnels ([`super::TunnelActor`]) and peer links
//! ([`crate::cluster::PeerLink`]). [`Streams`] is the opener's table, a handle shared by the
//! link's actor, which applies `tunnelgate_mux::StreamTable`'s rule to every frame and turns the
//! peer's `proxy_response` / `proxy_error` into each stream's head, and by the requests that
//! open and end streams in place, under the table's lock ([`super::Opener`], [`Gone`]; no actor
//! message per request).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use actix::Message;
use bytes::Bytes;
use tokio::sync::oneshot;
use tunnelgate_mux::{
    Action, Outbox, PipeError, PipeReader, PipeWriter, SendCredit, Side, StreamEnds, StreamTable,
    pipe,
};
use tunnelgate_proto::control::ProxyResponse;
use tunnelgate_proto::{Frame, ResetCode, StreamId, head};

use super::head::Head;
use super::opener::Gone;
use crate::AppState;
use crate::error::ProxyError;

/// A stream's side of the dance is over; `reset` says whether the other end must be told to
/// stop. Its table takes it in place ([`super::Gone`]); a link's actor gets one only as a
/// notice (its watched table emptied, or its stream ids ran out).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StreamGone {
    /// The stream that ended.
    pub id: StreamId,
    /// RESET to send, when the stream did not finish cleanly on both sides.
    pub reset: Option<ResetCode>,
}

/// Why a stream could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("tunnel is at its stream limit")]
    Busy,
    #[error("tunnel is closing")]
    Closed,
}

/// What the opener of a stream gets.
pub struct Opened {
    pub id: StreamId,
    /// Resolves with the response head, or why there is none.
    pub head: oneshot::Receiver<Result<Head, ProxyError>>,
    /// The response body as the other end sends it (after a 101, the upstream's raw bytes).
    pub body: PipeReader,
    pub shared: Arc<StreamShared>,
    pub outbox: Outbox,
    pub gone: Gone,
    /// The link speaks protocol 3: the request head goes as a head frame, not JSON.
    pub binary_heads: bool,
}

/// State of one stream that both the link's actor and the stream's task touch.
pub struct StreamShared {
    head: Mutex<Option<oneshot::Sender<Result<Head, ProxyError>>>>,
    /// Credit for the request body the gateway sends.
    pub credit: SendCredit,
    remote_done: AtomicBool,
    /// The `proxy_request` is in the outbox (the drain fence waits for it).
    head_sent: AtomicBool,
    /// The opener gave up waiting for the head (the stream ends with a timeout RESET).
    timed_out: AtomicBool,
}

impl StreamShared {
    pub fn mark_head_sent(&self) {
        self.head_sent.store(true, Ordering::Release);
    }

    /// The opener waited for the head in vain.
    pub fn time_out(&self) {
        self.timed_out.store(true, Ordering::Release);
    }

    pub fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Acquire)
    }

    /// Resolves the head once; false when it was already resolved.
    pub fn resolve(&self, head: Result<Head, ProxyError>) -> bool {
        let tx = self.head.lock().unwrap_or_else(|p| p.into_inner()).take();
        match tx {
            Some(tx) => {
                let _ = tx.send(head);
                true
            }
            None => false,
        }
    }

    /// True once the other end finished its side (END, RESET or an error).
    pub fn remote_done(&self) -> bool {
        self.remote_done.load(Ordering::Acquire)
    }

    fn set_remote_done(&self) {
        self.remote_done.store(true, Ordering::Release);
    }
}

/// One open stream in the table.
pub struct Slot {
    shared: Arc<StreamShared>,
    body: PipeWriter,
}

impl StreamEnds for Slot {
    fn inbound(&self) -> Option<&PipeWriter> {
        Some(&self.body)
    }
    fn credit(&self) -> &SendCredit {
        &self.shared.credit
    }
}

impl Slot {
    /// Ends the stream towards its consumer: the head (if still waited for) with `head`, the
    /// body and the upload's credit with `why`.
    fn fail(&self, head: ProxyError, why: &str) {
        self.shared.set_remote_done();
        self.shared.resolve(Err(head));
        self.body.fail(PipeError(why.to_string()));
        self.shared.credit.close();
    }
}

/// What the link's actor must do after its table handled a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Fine,
    /// Input for a stream that already ended: dropped (agent tunnels count these).
    Late,
    /// The other end broke the protocol: close the link with this reason.
    Close(String),
}

/// The streams one link opened, shared by the link's actor (every frame from the other end)
/// and, for agent tunnels, the requests opening streams on it directly ([`Opener`]).
#[derive(Clone)]
pub struct Streams(Arc<Mutex<Inner>>);

/// The table behind [`Streams`], and what its streams share: the window, the stream limit,
/// metrics.
pub struct Inner {
    /// Whether new streams may open (the link registered and is not draining or closing).
    accepting: bool,
    /// When a stream last opened on an empty table (the tunnel's probe timer reads it).
    first_after_quiet: std::time::Instant,
    /// The stream ids ran out (the link's owner closes it).
    exhausted: bool,
    /// The tunnel actor waits for the table to empty (it lost its lease).
    watch_empty: bool,
    /// Heads go, and come back, as protocol 3's head frames (an agent tunnel or a peer link of
    /// protocol 3).
    binary_heads: bool,
    table: StreamTable<Slot>,
    window: u32,
    max: usize,
    state: Arc<AppState>,
    /// For log lines: the cluster (agent tunnels) or the node (peer links), and the link's id.
    label: String,
    link: u64,
}

impl Streams {
    /// A table with the node's window and per-tunnel stream limit, not yet accepting streams.
    pub fn new(state: Arc<AppState>, label: String, link: u64) -> Self {
        Streams(Arc::new(Mutex::new(Inner::new(state, label, link))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // No code panics while holding the lock; recover the table rather than spread a panic.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// New streams may open from now on (true) or not any more (false).
    pub fn set_accepting(&self, yes: bool) {
        self.lock().accepting = yes;
    }

    /// Heads on this link go as protocol 3's head frames (set at register, before any stream).
    pub fn set_binary_heads(&self, yes: bool) {
        self.lock().binary_heads = yes;
    }

    /// True once the stream ids ran out: the link must go.
    pub fn exhausted(&self) -> bool {
        self.lock().exhausted
    }

    /// Whether new streams may open.
    pub fn accepting(&self) -> bool {
        self.lock().accepting
    }

    /// When a stream last opened on an empty table.
    pub fn first_after_quiet(&self) -> std::time::Instant {
        self.lock().first_after_quiet
    }

    pub fn len(&self) -> usize {
        self.lock().table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().table.is_empty()
    }

    /// True while a stream has not queued its `proxy_request` yet.
    pub fn heads_pending(&self) -> bool {
        self.lock().heads_pending()
    }

    /// Opens the next stream when the link accepts streams; `Err(Closed)` when it does not, or
    /// when the ids ran out (then [`Self::exhausted`]: the link must go).
    pub fn open(&self, out: &Outbox, gone: Gone) -> Result<Opened, OpenError> {
        let mut inner = self.lock();
        if !inner.accepting || out.is_closed() {
            return Err(OpenError::Closed);
        }
        if inner.table.is_empty() {
            inner.first_after_quiet = std::time::Instant::now();
        }
        inner.open(out, gone)
    }

    /// Opens a stream whether or not the link accepts new ones (the tunnel's own probe).
    pub fn open_always(&self, out: &Outbox, gone: Gone) -> Result<Opened, OpenError> {
        self.lock().open(out, gone)
    }

    /// A binary message from the other end: a frame under the stream rule, or on a link of
    /// protocol 3 a response head frame (parsed before the table is locked). On a link of
    /// protocol 2 a head frame is an unknown frame kind, as the rule says.
    pub fn on_message(&self, msg: Bytes, out: &Outbox) -> Outcome {
        if !head::is_head(&msg) {
            return self.lock().on_message(msg, out);
        }
        let decoded = head::decode_response_raw(&msg);
        let mut inner = self.lock();
        if !inner.binary_heads {
            return inner.on_message(msg, out);
        }
        match decoded {
            Ok((r, whole)) => inner.on_response(Head::Raw(r), whole, out),
            Err(e) => Outcome::Close(e.to_string()),
        }
    }

    /// The other end's JSON `proxy_response`.
    pub fn on_response(&self, r: ProxyResponse, out: &Outbox) -> Outcome {
        self.lock().on_response(Head::Json(r), None, out)
    }

    pub fn on_error(&self, e: tunnelgate_proto::control::ProxyError) -> Outcome {
        self.lock().on_error(e)
    }

    /// From now on, [`Gone`] tells the tunnel actor when the table becomes empty;
    /// true when it already is (then nobody will).
    pub fn watch_empty(&self) -> bool {
        let mut inner = self.lock();
        inner.watch_empty = true;
        inner.table.is_empty()
    }

    /// Ends a stream; true when that left the table empty and its actor watches for that.
    pub(super) fn gone_and_watched_empty(&self, msg: StreamGone, out: &Outbox) -> bool {
        let mut inner = self.lock();
        inner.gone(msg, out);
        inner.watch_empty && inner.table.is_empty()
    }

    /// The link is gone: no stream opens any more, and every open one fails.
    pub fn fail_all(&self, head: impl Fn() -> ProxyError, why: &str) {
        let mut inner = self.lock();
        inner.accepting = false;
        inner.fail_all(head, why)
    }
}

impl Inner {
    fn new(state: Arc<AppState>, label: String, link: u64) -> Self {
        Inner {
            accepting: false,
            binary_heads: false,
            exhausted: false,
            watch_empty: false,
            first_after_quiet: std::time::Instant::now(),
            table: StreamTable::new(Side::Opener),
            window: state.config.stream_window,
            max: state.config.max_streams_per_tunnel as usize,
            state,
            label,
            link,
        }
    }

    fn heads_pending(&self) -> bool {
        self.table
            .values()
            .any(|s| !s.shared.head_sent.load(Ordering::Acquire))
    }

    fn open(&mut self, out: &Outbox, gone: Gone) -> Result<Opened, OpenError> {
        if self.table.len() >= self.max {
            return Err(OpenError::Busy);
        }
        let window = self.window;
        let mut parts = None;
        let Some(id) = self.table.open(|id| {
            let (head_tx, head) = oneshot::channel();
            let (writer, body) = pipe(id, window, out.board());
            let shared = Arc::new(StreamShared {
                head: Mutex::new(Some(head_tx)),
                credit: SendCredit::new(window),
                remote_done: AtomicBool::new(false),
                head_sent: AtomicBool::new(false),
                timed_out: AtomicBool::new(false),
            });
            parts = Some((head, body, shared.clone()));
            Slot {
                shared,
                body: writer,
            }
        }) else {
            self.exhausted = true;
            self.accepting = false;
            return Err(OpenError::Closed);
        };
        let (head, body, shared) = parts.ok_or(OpenError::Closed)?;
        self.state.metrics.streams.inc();
        Ok(Opened {
            id,
            head,
            body,
            shared,
            outbox: out.clone(),
            gone,
            binary_heads: self.binary_heads,
        })
    }

    /// A binary message from the other end: one frame, under the stream rule.
    fn on_message(&mut self, msg: Bytes, out: &Outbox) -> Outcome {
        let action = self.table.on_message(msg);
        self.act(action, out)
    }

    /// A frame the link's actor decoded itself (a whole body that came with its head).
    fn on_frame(&mut self, frame: Frame, out: &Outbox) -> Outcome {
        let action = self.table.on_frame(frame);
        self.act(action, out)
    }

    /// Carries out what the stream rule made of a frame.
    fn act(&mut self, action: Action<Slot>, out: &Outbox) -> Outcome {
        match action {
            Action::Applied => Outcome::Fine,
            Action::PeerEnded(id) => {
                if let Some(slot) = self.table.get(id) {
                    slot.shared.set_remote_done();
                }
                Outcome::Fine
            }
            Action::PeerReset { code, entry, .. } => {
                self.state.metrics.streams.dec();
                let why = format!("the other end reset the stream ({})", code.name());
                let head = if code == ResetCode::REFUSED {
                    ProxyError::AgentRefused
                } else {
                    ProxyError::UpstreamFailed(why.clone())
                };
                entry.fail(head, &why);
                Outcome::Fine
            }
            Action::Reset {
                id,
                code,
                why,
                entry,
            } => {
                self.reset(id, code, &why, entry, out);
                Outcome::Fine
            }
            Action::Late => Outcome::Late,
            Action::Close(why) => Outcome::Close(why),
        }
    }

    fn reset(&mut self, id: StreamId, code: ResetCode, why: &str, slot: Slot, out: &Outbox) {
        self.state.metrics.streams.dec();
        self.state.metrics.tunnel_error(code.name());
        tracing::warn!(link = %self.label, tunnel = self.link, stream = id, code = code.name(), why, "resetting stream");
        out.reset(id, code);
        let head = ProxyError::UpstreamFailed(format!("tunnel protocol error: {why}"));
        slot.fail(head, &format!("stream reset: {why}"));
    }

    /// Which table state `id` is in, for a control message naming it.
    fn named(&self, id: StreamId, what: &str) -> Result<(), Outcome> {
        if self.table.get(id).is_some() {
            Ok(())
        } else if self.table.was_opened(id) {
            Err(Outcome::Late)
        } else {
            Err(Outcome::Close(format!(
                "{what} for stream {id}, which was never opened"
            )))
        }
    }

    /// The other end's `proxy_response`: the stream's head; with protocol 3's whole body, that
    /// body then as a DATA frame and an END would be, under the same rule.
    fn on_response(&mut self, r: Head, whole: Option<Bytes>, out: &Outbox) -> Outcome {
        let id = r.stream_id();
        let outcome = self.on_head(r, out);
        let Some(data) = whole.filter(|_| outcome == Outcome::Fine) else {
            return outcome;
        };
        if !data.is_empty() {
            let outcome = self.on_frame(Frame::Data { stream: id, data }, out);
            if outcome != Outcome::Fine {
                return outcome;
            }
        }
        self.on_frame(Frame::End { stream: id }, out)
    }

    /// A response head for its stream.
    fn on_head(&mut self, r: Head, out: &Outbox) -> Outcome {
        let id = r.stream_id();
        if let Err(o) = self.named(id, "proxy_response") {
            return o;
        }
        let body = r.body();
        let Some(slot) = self.table.get(id) else {
            return Outcome::Late;
        };
        if !slot.shared.resolve(Ok(r)) {
            if let Some(slot) = self.table.remove(id) {
                self.reset(id, ResetCode::PROTOCOL, "second proxy_response", slot, out);
            }
            return Outcome::Fine;
        }
        if !body {
            slot.shared.set_remote_done();
            slot.body.finish();
        }
        Outcome::Fine
    }

    /// The other end's `proxy_error`: the stream failed before or instead of a head.
    fn on_error(&mut self, e: tunnelgate_proto::control::ProxyError) -> Outcome {
        if let Err(o) = self.named(e.stream_id, "proxy_error") {
            return o;
        }
        if let Some(slot) = self.table.get(e.stream_id) {
            let why = format!("agent: {}", e.message);
            slot.fail(ProxyError::from_agent(e.kind, e.message), &why);
        }
        Outcome::Fine
    }

    /// The stream's task is done with it.
    fn gone(&mut self, msg: StreamGone, out: &Outbox) {
        if let Some(slot) = self.table.remove(msg.id) {
            self.state.metrics.streams.dec();
            if let Some(code) = msg.reset {
                out.reset(msg.id, code);
            }
            slot.body.fail(PipeError("stream closed".into()));
            slot.shared.credit.close();
        }
    }

    /// The link is gone: every stream fails (a head still awaited with `head`).
    fn fail_all(&mut self, head: impl Fn() -> ProxyError, why: &str) {
        for (_, slot) in self.table.drain() {
            self.state.metrics.streams.dec();
            slot.fail(head(), why);
        }
    }
}

#[cfg(test)]
#[path = "open_tests.rs"]
mod tests;
