//! The queue into a tunnel's single writer. Everything a tunnel sends goes through one
//! [`Outbox`], so frames never reorder and the queue's bound is the backpressure: a stream
//! that produces faster than the socket drains waits in `send`.
//!
//! WINDOW and RESET frames do not queue behind data: they go on the [`Board`], which the
//! writer drains first. The board holds at most one credit entry and one reset per stream, so
//! it is bounded by the stream limit, and a credit update can never be lost to a full queue
//! (a lost credit would stall its stream forever).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};
use tunnelgate_proto::limits::TUNNEL_GROWTH_BUDGET;
use tunnelgate_proto::{Control, Frame, ResetCode, StreamId};

/// One WebSocket message for the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    Text(String),
    Binary(Bytes),
    /// A binary frame, encoded by the writer (which may send a large payload as it is).
    Frame(Frame),
    /// Close the tunnel with this WebSocket close code and reason.
    Close {
        code: u16,
        reason: String,
    },
}

impl Outgoing {
    /// A stream's response head as its link carries it: a protocol-3 head frame (`binary`),
    /// else a JSON `proxy_response`.
    pub fn response_head(r: tunnelgate_proto::control::ProxyResponse, binary: bool) -> Self {
        match binary {
            true => Outgoing::Binary(tunnelgate_proto::head::encode_response(&r)),
            false => Outgoing::Text(Control::ProxyResponse(r).to_json()),
        }
    }
}

/// The writer is gone: the tunnel is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("tunnel writer is closed")]
pub struct OutboxClosed;

/// WINDOW and RESET frames waiting for the writer.
#[derive(Debug)]
pub struct Board {
    inner: Mutex<BoardInner>,
    notify: Notify,
    /// Bytes the tunnel's receive windows may still grow by, together.
    growth: AtomicU64,
}

impl Default for Board {
    fn default() -> Self {
        Board {
            inner: Mutex::default(),
            notify: Notify::new(),
            growth: AtomicU64::new(TUNNEL_GROWTH_BUDGET),
        }
    }
}

#[derive(Debug, Default)]
struct BoardInner {
    credits: HashMap<StreamId, u32>,
    resets: Vec<(StreamId, ResetCode)>,
    close: Option<(u16, String)>,
}

impl Board {
    fn lock(&self) -> MutexGuard<'_, BoardInner> {
        // The lock guards plain collections and no code panics while holding it; recover the
        // data rather than spread a poison panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `credit` more bytes for `stream` (merged with any credit not yet sent).
    pub fn grant(&self, stream: StreamId, credit: u32) {
        {
            let mut b = self.lock();
            let c = b.credits.entry(stream).or_default();
            *c = c.saturating_add(credit);
        }
        self.notify.notify_one();
    }

    /// Queues a RESET for `stream`; any credit not yet sent for it is dropped.
    pub fn reset(&self, stream: StreamId, code: ResetCode) {
        {
            let mut b = self.lock();
            b.credits.remove(&stream);
            if !b.resets.iter().any(|(s, _)| *s == stream) {
                b.resets.push((stream, code));
            }
        }
        self.notify.notify_one();
    }

    /// Asks the writer to close the tunnel now, ahead of anything queued.
    /// Takes `n` bytes of window growth from the tunnel's budget; false when it has no room.
    pub fn reserve_growth(&self, n: u32) -> bool {
        self.growth
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(u64::from(n))
            })
            .is_ok()
    }

    /// Gives window growth back (the stream ended).
    pub fn release_growth(&self, n: u32) {
        self.growth.fetch_add(u64::from(n), Ordering::AcqRel);
    }

    /// Growth still available to the tunnel's streams.
    pub fn growth_left(&self) -> u64 {
        self.growth.load(Ordering::Acquire)
    }

    pub fn close(&self, code: u16, reason: String) {
        self.lock().close.get_or_insert((code, reason));
        self.notify.notify_one();
    }

    fn take_close(&self) -> Option<(u16, String)> {
        self.lock().close.take()
    }

    fn drain_into(&self, out: &mut VecDeque<Frame>) {
        let mut b = self.lock();
        for (stream, code) in b.resets.drain(..) {
            out.push_back(Frame::Reset { stream, code });
        }
        for (stream, credit) in b.credits.drain() {
            out.push_back(Frame::Window { stream, credit });
        }
    }
}

/// The producers' handle: cheap to clone, one per stream or task.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Outgoing>,
    board: Arc<Board>,
}

/// The writer's end.
#[derive(Debug)]
pub struct OutboxRx {
    rx: mpsc::Receiver<Outgoing>,
    board: Arc<Board>,
    ready: VecDeque<Frame>,
}

/// A new outbox holding at most `capacity` queued messages (the board aside).
pub fn outbox(capacity: usize) -> (Outbox, OutboxRx) {
    let (tx, rx) = mpsc::channel(capacity);
    let board = Arc::new(Board::default());
    (
        Outbox {
            tx,
            board: board.clone(),
        },
        OutboxRx {
            rx,
            board,
            ready: VecDeque::new(),
        },
    )
}

impl Outbox {
    /// Queues a frame, waiting while the queue is full.
    pub async fn send_frame(&self, frame: Frame) -> Result<(), OutboxClosed> {
        self.send(Outgoing::Frame(frame)).await
    }

    /// Queues a control message, waiting while the queue is full.
    pub async fn send_control(&self, msg: &Control) -> Result<(), OutboxClosed> {
        self.send(Outgoing::Text(msg.to_json())).await
    }

    pub async fn send(&self, msg: Outgoing) -> Result<(), OutboxClosed> {
        self.tx.send(msg).await.map_err(|_| OutboxClosed)
    }

    /// Queues a message only if there is room now; `false` when full or closed. For replies
    /// the peer can ask for at will (heartbeat acks): a peer that does not read loses them.
    pub fn try_send(&self, msg: Outgoing) -> bool {
        self.tx.try_send(msg).is_ok()
    }

    /// Queues a message only if there is room now; the message back when full or closed.
    pub fn try_queue(&self, msg: Outgoing) -> Result<(), Outgoing> {
        self.tx.try_send(msg).map_err(|e| match e {
            tokio::sync::mpsc::error::TrySendError::Full(m)
            | tokio::sync::mpsc::error::TrySendError::Closed(m) => m,
        })
    }

    /// Grants the peer `credit` more bytes on `stream`; never waits.
    pub fn grant(&self, stream: StreamId, credit: u32) {
        self.board.grant(stream, credit);
    }

    /// Resets `stream`; never waits.
    pub fn reset(&self, stream: StreamId, code: ResetCode) {
        self.board.reset(stream, code);
    }

    /// The board this outbox's WINDOW and RESET frames go through (for [`crate::pipe`]).
    pub fn board(&self) -> Arc<Board> {
        self.board.clone()
    }

    /// Closes the tunnel ahead of anything queued (protocol error, the other side gone).
    pub fn close(&self, code: u16, reason: impl Into<String>) {
        self.board.close(code, reason.into());
    }

    /// Closes the tunnel after everything already queued has been written (a graceful end:
    /// a finished stream's last frames must not be overtaken by the close). Waits for room.
    pub async fn close_after_queued(
        &self,
        code: u16,
        reason: impl Into<String>,
    ) -> Result<(), OutboxClosed> {
        let reason = reason.into();
        self.send(Outgoing::Close { code, reason }).await
    }

    /// True once the writer has gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Resolves when the writer has gone.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

impl OutboxRx {
    /// The next message to write: board frames first, then the queue. None when every
    /// [`Outbox`] is dropped.
    pub async fn next(&mut self) -> Option<Outgoing> {
        loop {
            if let Some(m) = self.try_next() {
                return Some(m);
            }
            tokio::select! {
                biased;
                _ = self.board.notify.notified() => continue,
                m = self.rx.recv() => return m,
            }
        }
    }

    /// The next message if one is ready now, without waiting: lets a writer batch what is
    /// queued into one flush.
    pub fn try_next(&mut self) -> Option<Outgoing> {
        if let Some((code, reason)) = self.board.take_close() {
            return Some(Outgoing::Close { code, reason });
        }
        if self.ready.is_empty() {
            self.board.drain_into(&mut self.ready);
        }
        if let Some(f) = self.ready.pop_front() {
            return Some(Outgoing::Binary(f.to_bytes()));
        }
        self.rx.try_recv().ok()
    }

    /// Stops accepting messages; queued ones can still be read.
    pub fn close(&mut self) {
        self.rx.close();
    }
}

/// The writer loop every tunnel end uses: takes messages from `rx`, converts them with `conv`
/// into the socket's message type, feeds what is already queued and flushes once. Ends when
/// the outbox closes, the sink fails, or after sending a close.
pub async fn write_loop<S, M, F>(rx: OutboxRx, sink: S, conv: F)
where
    S: futures_util::Sink<M> + Unpin,
    F: Fn(Outgoing) -> M,
{
    write_loop_with_timeout(rx, sink, conv, WRITE_TIMEOUT).await
}

/// How long one write may wait for the other end to read before the connection is given up
/// (a half-open link or a peer that stopped reading its socket altogether).
pub const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// [`write_loop`] with its write timeout given.
pub async fn write_loop_with_timeout<S, M, F>(
    mut rx: OutboxRx,
    mut sink: S,
    conv: F,
    timeout: std::time::Duration,
) where
    S: futures_util::Sink<M> + Unpin,
    F: Fn(Outgoing) -> M,
{
    use futures_util::SinkExt;
    let stalled = |r: Option<Result<(), S::Error>>| !matches!(r, Some(Ok(())));
    while let Some(first) = rx.next().await {
        let mut msg = Some(first);
        while let Some(m) = msg.take() {
            let closing = matches!(m, Outgoing::Close { .. });
            if stalled(within(timeout, sink.feed(conv(m))).await) {
                rx.close();
                return;
            }
            if closing {
                let _ = tokio::time::timeout(timeout, sink.flush()).await;
                let _ = tokio::time::timeout(timeout, sink.close()).await;
                rx.close();
                return;
            }
            msg = rx.try_next();
        }
        if stalled(within(timeout, sink.flush()).await) {
            break;
        }
    }
    rx.close();
    let _ = tokio::time::timeout(timeout, sink.close()).await;
}

/// `f`'s output, or None when it waited longer than `timeout`. The timer is started only when
/// `f` does not complete at once: most writes only fill the sink's buffer, and a timer for
/// each would cost a clock read and the timer wheel for every message.
async fn within<F: std::future::Future>(timeout: std::time::Duration, f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut first = true;
    let at_once = std::future::poll_fn(|cx| {
        if std::mem::take(&mut first) {
            return match f.as_mut().poll(cx) {
                std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
                std::task::Poll::Pending => std::task::Poll::Ready(None),
            };
        }
        std::task::Poll::Ready(None)
    })
    .await;
    match at_once {
        Some(v) => Some(v),
        None => tokio::time::timeout(timeout, f).await.ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink whose other end never reads.
    struct Stuck;

    impl futures_util::Sink<Outgoing> for Stuck {
        type Error = ();
        fn poll_ready(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), ()>> {
            std::task::Poll::Pending
        }
        fn start_send(self: std::pin::Pin<&mut Self>, _: Outgoing) -> Result<(), ()> {
            Ok(())
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), ()>> {
            std::task::Poll::Pending
        }
        fn poll_close(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), ()>> {
            std::task::Poll::Pending
        }
    }

    #[tokio::test]
    async fn within_gives_what_is_ready_and_times_out_what_waits() {
        let ms = std::time::Duration::from_millis;
        assert_eq!(within(ms(1), async { 5 }).await, Some(5));
        let later = async {
            tokio::task::yield_now().await;
            6
        };
        assert_eq!(within(ms(1000), later).await, Some(6));
        assert_eq!(within(ms(10), std::future::pending::<u8>()).await, None);
    }

    #[tokio::test]
    async fn a_writer_whose_other_end_stopped_reading_gives_up() {
        let (out, rx) = outbox(4);
        out.send(Outgoing::Text("never read".into())).await.unwrap();
        let writer = tokio::spawn(write_loop_with_timeout(
            rx,
            Stuck,
            |m| m,
            std::time::Duration::from_millis(50),
        ));
        tokio::time::timeout(std::time::Duration::from_secs(5), writer)
            .await
            .expect("the writer gave up")
            .unwrap();
        assert!(out.is_closed(), "producers learn the link is gone");
    }

    #[tokio::test]
    async fn a_graceful_close_waits_behind_the_queue_a_hard_one_does_not() {
        let (out, mut rx) = outbox(4);
        out.send(Outgoing::Text("last frame".into())).await.unwrap();
        out.close_after_queued(1000, "bye").await.unwrap();
        assert_eq!(rx.next().await, Some(Outgoing::Text("last frame".into())));
        let bye = Outgoing::Close {
            code: 1000,
            reason: "bye".into(),
        };
        assert_eq!(rx.next().await, Some(bye));

        let (out, mut rx) = outbox(4);
        out.send(Outgoing::Text("dropped".into())).await.unwrap();
        out.close(1002, "broken");
        let broken = Outgoing::Close {
            code: 1002,
            reason: "broken".into(),
        };
        assert_eq!(rx.next().await, Some(broken));
    }

    #[tokio::test]
    async fn board_jumps_the_queue_and_merges_credit() {
        let (out, mut rx) = outbox(1);
        out.send(Outgoing::Text("a".into())).await.unwrap();
        assert!(
            !out.try_send(Outgoing::Text("b".into())),
            "queue of 1 is full"
        );
        out.grant(3, 10);
        out.grant(3, 5);
        let w = Frame::Window {
            stream: 3,
            credit: 15,
        };
        assert_eq!(rx.next().await, Some(Outgoing::Binary(w.to_bytes())));
        out.grant(4, 1);
        out.reset(4, ResetCode::CANCEL);
        let r = Frame::Reset {
            stream: 4,
            code: ResetCode::CANCEL,
        };
        assert_eq!(rx.next().await, Some(Outgoing::Binary(r.to_bytes())));
        assert_eq!(rx.next().await, Some(Outgoing::Text("a".into())));
        out.close(1002, "bad frame");
        assert_eq!(
            rx.next().await,
            Some(Outgoing::Close {
                code: 1002,
                reason: "bad frame".into()
            })
        );
        drop(out);
        assert_eq!(rx.next().await, None);
    }
}
