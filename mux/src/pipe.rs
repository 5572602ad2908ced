//! A byte-bounded pipe from a tunnel's reader to the consumer of one stream's body.
//!
//! The writer side ([`PipeWriter`]) is called by the tunnel reader for each DATA frame and
//! never waits: the peer may only send what the stream's window allows, so a push beyond the
//! window is the peer's protocol error, not a reason to buffer more. The reader side
//! ([`PipeReader`]) is a `Stream` of chunks; as the consumer takes chunks it returns credit to
//! the peer through the tunnel's [`Board`]. Memory per stream is therefore at most one window
//! (small chunks are merged, so the chunk count is bounded too).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tunnelgate_proto::StreamId;
use tunnelgate_proto::limits::MAX_GROWN_WINDOW;
use tunnelgate_proto::window::{FlowError, RecvWindow};

use crate::outbox::Board;

/// What a pipe carries: body chunks ([`Bytes`]); the trait keeps the pipe independent of it.
pub trait Item: Send + 'static {
    /// Credit this item takes from the stream's window.
    fn cost(&self) -> usize;
    /// Merges `next` into `self` when both are small pieces of one byte stream; gives `next`
    /// back otherwise (messages keep their boundaries).
    fn merge(&mut self, next: Self) -> Option<Self>
    where
        Self: Sized;
}

impl Item for Bytes {
    fn cost(&self) -> usize {
        self.len()
    }

    fn merge(&mut self, next: Bytes) -> Option<Bytes> {
        if next.len() < MERGE_BELOW && self.len() < MERGE_BELOW {
            let mut merged = BytesMut::with_capacity(self.len() + next.len());
            merged.extend_from_slice(self);
            merged.extend_from_slice(&next);
            *self = merged.freeze();
            None
        } else {
            Some(next)
        }
    }
}

/// Chunks smaller than this are merged with the previous one while buffered, so a peer that
/// sends one-byte frames cannot make the queue hold a window's worth of tiny allocations.
const MERGE_BELOW: usize = 4 * 1024;

/// Why a pipe ended without a clean end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PipeError(pub String);

/// Why a push was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("the consumer is gone")]
    ReaderGone,
    #[error("the stream already ended")]
    Ended,
    #[error(transparent)]
    Flow(#[from] FlowError),
}

type DropHook = Box<dyn FnOnce() + Send>;

enum State {
    Open,
    Ended,
    Failed(PipeError),
    Done,
}

struct Inner<T> {
    chunks: VecDeque<T>,
    /// Bytes in `chunks`.
    unread: usize,
    window: RecvWindow,
    state: State,
    waker: Option<Waker>,
    reader_gone: bool,
    on_reader_drop: Option<DropHook>,
}

/// Where credit goes when the consumer reads.
struct CreditReturn {
    board: Arc<Board>,
    stream: StreamId,
}

/// The producing end (the tunnel reader).
pub struct PipeWriter<T: Item = Bytes> {
    inner: Arc<Mutex<Inner<T>>>,
}

/// The consuming end: a stream of body chunks (or messages).
pub struct PipeReader<T: Item = Bytes> {
    inner: Arc<Mutex<Inner<T>>>,
    credit: CreditReturn,
    done: bool,
}

fn lock<T>(inner: &Mutex<Inner<T>>) -> MutexGuard<'_, Inner<T>> {
    // Nothing panics while the lock is held; recover rather than spread a poison panic.
    inner.lock().unwrap_or_else(|p| p.into_inner())
}

/// A pipe for `stream` whose peer may send `window` bytes before credit returns via `board`.
pub fn pipe<T: Item>(
    stream: StreamId,
    window: u32,
    board: Arc<Board>,
) -> (PipeWriter<T>, PipeReader<T>) {
    let inner = Arc::new(Mutex::new(Inner {
        chunks: VecDeque::new(),
        unread: 0,
        window: RecvWindow::growing(window, MAX_GROWN_WINDOW),
        state: State::Open,
        waker: None,
        reader_gone: false,
        on_reader_drop: None,
    }));
    (
        PipeWriter {
            inner: inner.clone(),
        },
        PipeReader {
            inner,
            credit: CreditReturn { board, stream },
            done: false,
        },
    )
}

impl<T: Item> PipeWriter<T> {
    /// Hands one DATA payload (or message) to the consumer. Never waits.
    pub fn push(&self, data: T) -> Result<(), PushError> {
        let waker = {
            let mut p = lock(&self.inner);
            if p.reader_gone {
                return Err(PushError::ReaderGone);
            }
            if !matches!(p.state, State::Open) {
                return Err(PushError::Ended);
            }
            p.window.on_data(data.cost())?;
            if data.cost() == 0 {
                return Ok(());
            }
            p.unread += data.cost();
            let rest = match p.chunks.back_mut() {
                Some(last) => last.merge(data),
                None => Some(data),
            };
            if let Some(d) = rest {
                p.chunks.push_back(d);
            }
            p.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// The peer sent END: the consumer sees the end after the buffered chunks.
    pub fn finish(&self) {
        self.end(State::Ended);
    }

    /// The stream failed: the consumer sees `err` after the buffered chunks.
    pub fn fail(&self, err: PipeError) {
        self.end(State::Failed(err));
    }

    fn end(&self, state: State) {
        let waker = {
            let mut p = lock(&self.inner);
            if !matches!(p.state, State::Open) {
                return;
            }
            p.state = state;
            p.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// True once the consumer dropped its end.
    pub fn reader_gone(&self) -> bool {
        lock(&self.inner).reader_gone
    }
}

impl<T: Item> PipeReader<T> {
    /// Runs `hook` once when this reader is dropped (the consumer finished or went away).
    pub fn on_drop(&mut self, hook: impl FnOnce() + Send + 'static) {
        lock(&self.inner).on_reader_drop = Some(Box::new(hook));
    }

    /// Bytes buffered and not yet read.
    pub fn buffered(&self) -> usize {
        lock(&self.inner).unread
    }
}

impl PipeReader<Bytes> {
    /// The whole body at once, when it is already here: the pipe ended cleanly holding at most
    /// one chunk of at most `max` bytes (none: an empty body). The reader is then done; `None`
    /// leaves the pipe as it was.
    pub fn take_whole(&mut self, max: usize) -> Option<Bytes> {
        let mut p = lock(&self.inner);
        if self.done || !matches!(p.state, State::Ended) || p.chunks.len() > 1 || p.unread > max {
            return None;
        }
        let chunk = p.chunks.pop_front().unwrap_or_default();
        p.unread = 0;
        p.state = State::Done;
        self.done = true;
        Some(chunk)
    }
}

impl<T: Item> Stream for PipeReader<T> {
    type Item = Result<T, PipeError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let (item, credit) = {
            let mut p = lock(&self.inner);
            if let Some(chunk) = p.chunks.pop_front() {
                p.unread -= chunk.cost();
                let board = &self.credit.board;
                let unread = p.unread;
                let credit = p
                    .window
                    .on_consumed_growing(chunk.cost(), unread, |n| board.reserve_growth(n));
                (Some(Ok(chunk)), credit)
            } else {
                match std::mem::replace(&mut p.state, State::Done) {
                    State::Open => {
                        p.state = State::Open;
                        p.waker = Some(cx.waker().clone());
                        return Poll::Pending;
                    }
                    State::Ended | State::Done => (None, None),
                    State::Failed(e) => (Some(Err(e)), None),
                }
            }
        };
        if let Some(c) = credit {
            self.credit.board.grant(self.credit.stream, c);
        }
        if !matches!(item, Some(Ok(_))) {
            self.done = true;
        }
        Poll::Ready(item)
    }
}

impl<T: Item> Drop for PipeReader<T> {
    fn drop(&mut self) {
        let hook = {
            let mut p = lock(&self.inner);
            p.reader_gone = true;
            p.chunks.clear();
            p.unread = 0;
            self.credit.board.release_growth(p.window.grown());
            p.on_reader_drop.take()
        };
        if let Some(h) = hook {
            h();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{Outgoing, outbox};
    use futures_util::StreamExt;
    use tunnelgate_proto::Frame;

    #[test]
    fn a_whole_body_is_taken_only_once_it_ended_in_one_small_chunk() {
        let (out, _rx) = outbox(8);
        let (w, mut r) = pipe::<Bytes>(3, 64 * 1024, out_board(&out));
        w.push(Bytes::from_static(b"hello")).unwrap();
        assert_eq!(r.take_whole(1024), None, "not ended yet");
        w.finish();
        assert_eq!(r.take_whole(4), None, "over the limit");
        assert_eq!(r.take_whole(1024).as_deref(), Some(&b"hello"[..]));
        assert_eq!(r.take_whole(1024), None, "taken");
        let (w, mut r) = pipe::<Bytes>(4, 64 * 1024, out_board(&out));
        w.push(Bytes::from_static(b"a")).unwrap();
        w.push(Bytes::from_static(b"b")).unwrap();
        w.finish();
        // (Small pushes share a chunk.)
        assert_eq!(r.take_whole(1024).as_deref(), Some(&b"ab"[..]));
        let (w, mut r) = pipe::<Bytes>(5, 64 * 1024, out_board(&out));
        w.finish();
        assert_eq!(r.take_whole(1024).as_deref(), Some(&b""[..]));
        let (w, mut r) = pipe::<Bytes>(6, 64 * 1024, out_board(&out));
        w.fail(PipeError("x".into()));
        assert_eq!(r.take_whole(1024), None, "failed");
    }

    #[tokio::test]
    async fn a_fast_consumer_grows_the_window_within_the_tunnel_budget() {
        let (out, mut rx) = outbox(64);
        let board = out_board(&out);
        let budget = board.growth_left();
        let (w, mut r) = pipe::<Bytes>(9, 16 * 1024, board.clone());
        // Each half window is read as soon as it arrives: the window doubles every time.
        let mut window = 16 * 1024;
        for _ in 0..4 {
            w.push(Bytes::from(vec![0u8; window as usize / 2])).unwrap();
            r.next().await.unwrap().unwrap();
            let Some(Outgoing::Binary(b)) = rx.try_next() else {
                panic!("credit expected")
            };
            let Frame::Window { credit, .. } = Frame::decode(b).unwrap() else {
                panic!("WINDOW expected")
            };
            assert_eq!(credit, window / 2 + window, "half back, plus the growth");
            window *= 2;
        }
        assert_eq!(board.growth_left(), budget - u64::from(window - 16 * 1024));
        // The peer may now have the whole grown window in flight.
        w.push(Bytes::from(vec![0u8; window as usize])).unwrap();
        drop(r);
        assert_eq!(
            board.growth_left(),
            budget,
            "growth goes back when the stream ends"
        );
    }

    #[tokio::test]
    async fn delivers_in_order_returns_credit_and_ends() {
        let (out, mut rx) = outbox(4);
        let board = out_board(&out);
        let (w, mut r) = pipe::<Bytes>(7, 16 * 1024, board);
        w.push(Bytes::from(vec![1u8; 8 * 1024])).unwrap();
        w.push(Bytes::from(vec![2u8; 8 * 1024])).unwrap();
        assert!(matches!(
            w.push(Bytes::from_static(b"x")),
            Err(PushError::Flow(_))
        ));
        w.finish();
        assert_eq!(r.next().await.unwrap().unwrap()[0], 1);
        // Half a window consumed: credit goes back.
        let credit = Frame::Window {
            stream: 7,
            credit: 8 * 1024,
        };
        assert_eq!(rx.next().await, Some(Outgoing::Binary(credit.to_bytes())));
        assert_eq!(r.next().await.unwrap().unwrap()[0], 2);
        assert!(r.next().await.is_none());
        assert!(r.next().await.is_none());
    }

    #[tokio::test]
    async fn merges_tiny_chunks() {
        let (out, _rx) = outbox(4);
        let (w, mut r) = pipe::<Bytes>(1, 64 * 1024, out_board(&out));
        for _ in 0..1000 {
            w.push(Bytes::from_static(b"ab")).unwrap();
        }
        assert_eq!(lock(&w.inner).chunks.len(), 1);
        w.fail(PipeError("agent went away".into()));
        assert_eq!(r.next().await.unwrap().unwrap().len(), 2000);
        assert_eq!(
            r.next().await.unwrap(),
            Err(PipeError("agent went away".into()))
        );
        assert!(r.next().await.is_none());
    }

    #[tokio::test]
    async fn reader_drop_runs_hook_and_refuses_pushes() {
        let (out, _rx) = outbox(4);
        let (w, mut r) = pipe::<Bytes>(1, 1024, out_board(&out));
        let (tx, rx) = tokio::sync::oneshot::channel();
        r.on_drop(move || {
            let _ = tx.send(());
        });
        drop(r);
        rx.await.unwrap();
        assert!(w.reader_gone());
        assert_eq!(w.push(Bytes::from_static(b"x")), Err(PushError::ReaderGone));
    }

    fn out_board(out: &crate::outbox::Outbox) -> Arc<Board> {
        out.board()
    }
}
