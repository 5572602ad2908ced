//! The stream table: the one rule for what a link end does with each frame it receives, used by
//! the gateway's agent tunnels and peer links and by the agent's sessions alike.
//!
//! The rule (docs/protocol.md, "Streams"): a frame for a **live** stream is applied to it
//! (DATA into its inbound pipe, END finishes that pipe, WINDOW grants send credit, RESET ends
//! it); a frame that breaks that stream's rules (DATA after END or past its window, a grant past
//! the limit, a protocol-1 WS_* frame) resets **that stream** only; a frame for a stream that
//! **ended** is dropped (it crossed a RESET or an END in flight; callers may count them); a
//! frame for a stream **never opened** — or a message that is not a frame — closes the **whole
//! link**. One exception: the accepting end drops a RESET for a stream it has not seen yet, since
//! a RESET travels ahead of queued data and may overtake its own stream's request head.
//!
//! Which ids were "opened" depends on the end: the opener hands ids out in increasing order
//! (every id below the next one was opened); the acceptor has seen every id up to the highest
//! one the opener used (heads of different streams may arrive out of order, but never a frame
//! of a stream before its head).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tunnelgate_proto::{Frame, ResetCode, StreamId};

use crate::credit::SendCredit;
use crate::pipe::{PipeWriter, PushError};

/// Which end of the link hands out stream ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// This end opens streams (the gateway, towards agents and peer nodes).
    Opener,
    /// The other end opens streams (the agent; a node serving a peer link).
    Acceptor,
}

/// What a table entry exposes to the rule: where the peer's DATA goes and the credit for what
/// this end sends.
pub trait StreamEnds {
    /// The pipe the peer's DATA feeds; `None` when the stream takes no data from the peer.
    fn inbound(&self) -> Option<&PipeWriter>;
    /// The credit the peer's WINDOW frames grant.
    fn credit(&self) -> &SendCredit;
}

/// The usual entry: the inbound pipe (none when the stream takes no data from the peer), the
/// send credit, and whatever handle the owner keeps to stop the stream's task.
pub struct Ends<H> {
    pub inbound: Option<PipeWriter>,
    pub credit: Arc<SendCredit>,
    pub handle: H,
}

impl<H> StreamEnds for Ends<H> {
    fn inbound(&self) -> Option<&PipeWriter> {
        self.inbound.as_ref()
    }
    fn credit(&self) -> &SendCredit {
        &self.credit
    }
}

/// What the caller must do about one received frame.
pub enum Action<T> {
    /// Applied to its live stream (DATA, WINDOW); nothing more to do.
    Applied,
    /// END: the peer sends no more on this live stream; its inbound pipe is finished.
    PeerEnded(StreamId),
    /// The peer reset this live stream: its entry, taken out of the table.
    PeerReset {
        id: StreamId,
        code: ResetCode,
        entry: T,
    },
    /// The frame broke the stream's rules: its entry, taken out; send RESET `code` and fail it.
    Reset {
        id: StreamId,
        code: ResetCode,
        why: String,
        entry: T,
    },
    /// A frame for a stream that already ended (or a RESET ahead of its stream's head):
    /// dropped.
    Late,
    /// Not a frame, or a frame for a stream never opened: close the whole link with this reason.
    Close(String),
}

impl<T> std::fmt::Debug for Action<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Applied => f.write_str("Applied"),
            Action::PeerEnded(id) => write!(f, "PeerEnded({id})"),
            Action::PeerReset { id, code, .. } => write!(f, "PeerReset({id}, {})", code.name()),
            Action::Reset { id, code, why, .. } => {
                write!(f, "Reset({id}, {}, {why})", code.name())
            }
            Action::Late => f.write_str("Late"),
            Action::Close(why) => write!(f, "Close({why})"),
        }
    }
}

/// The live streams of one link end.
pub struct StreamTable<T> {
    side: Side,
    live: HashMap<StreamId, T>,
    /// Opener: the next id to hand out. Acceptor: one above the highest id opened so far.
    next: StreamId,
}

/// Why an acceptor refuses a stream the peer opens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcceptError {
    #[error("stream id 0 is reserved")]
    Zero,
    #[error("stream id {0} is already live")]
    Reused(StreamId),
}

impl<T> StreamTable<T> {
    pub fn new(side: Side) -> Self {
        StreamTable {
            side,
            live: HashMap::new(),
            next: 1,
        }
    }

    /// Opener: hands out the next id with its entry; `None` once ids are exhausted (the link
    /// must be replaced).
    pub fn open(&mut self, entry: impl FnOnce(StreamId) -> T) -> Option<StreamId> {
        debug_assert_eq!(self.side, Side::Opener);
        let id = self.next;
        self.next = id.checked_add(1)?;
        self.live.insert(id, entry(id));
        Some(id)
    }

    /// Acceptor: the peer opened `id` (its request head arrived). From now on its frames are
    /// not "never opened", also when this end refuses the stream at once; [`StreamTable::insert`]
    /// the entry of a stream it serves.
    pub fn accept(&mut self, id: StreamId) -> Result<(), AcceptError> {
        debug_assert_eq!(self.side, Side::Acceptor);
        if id == 0 {
            return Err(AcceptError::Zero);
        }
        if self.live.contains_key(&id) {
            return Err(AcceptError::Reused(id));
        }
        self.next = self.next.max(id.saturating_add(1));
        Ok(())
    }

    /// Acceptor: the entry of a stream [`StreamTable::accept`]ed.
    pub fn insert(&mut self, id: StreamId, entry: T) {
        debug_assert!(self.was_opened(id));
        self.live.insert(id, entry);
    }

    /// Whether `id` was ever opened on this link (live or ended).
    pub fn was_opened(&self, id: StreamId) -> bool {
        id != 0 && id < self.next
    }

    pub fn get(&self, id: StreamId) -> Option<&T> {
        self.live.get(&id)
    }

    pub fn get_mut(&mut self, id: StreamId) -> Option<&mut T> {
        self.live.get_mut(&id)
    }

    /// Takes a stream out (it ended on this side).
    pub fn remove(&mut self, id: StreamId) -> Option<T> {
        self.live.remove(&id)
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.live.values()
    }

    /// Takes every live stream out (the link is going away).
    pub fn drain(&mut self) -> impl Iterator<Item = (StreamId, T)> + '_ {
        self.live.drain()
    }
}

impl<T: StreamEnds> StreamTable<T> {
    /// Decodes one binary message and applies the rule to it.
    pub fn on_message(&mut self, msg: Bytes) -> Action<T> {
        match Frame::decode(msg) {
            Ok(frame) => self.on_frame(frame),
            Err(e) => Action::Close(format!("malformed frame: {e}")),
        }
    }

    /// Applies the rule to one frame.
    pub fn on_frame(&mut self, frame: Frame) -> Action<T> {
        let id = frame.stream();
        let Some(entry) = self.live.get(&id) else {
            let reset_ahead = self.side == Side::Acceptor && matches!(frame, Frame::Reset { .. });
            return if self.was_opened(id) || reset_ahead {
                Action::Late
            } else {
                Action::Close(format!(
                    "{} for stream {id}, which was never opened",
                    frame.kind_name()
                ))
            };
        };
        let broken = match frame {
            Frame::Data { data, .. } => {
                match entry.inbound().map(|w| w.push(data)) {
                    Some(Ok(())) | Some(Err(PushError::ReaderGone)) => return Action::Applied,
                    Some(Err(PushError::Flow(e))) => (ResetCode::FLOW_CONTROL, e.to_string()),
                    // No inbound pipe: the stream takes no data (no body was announced).
                    Some(Err(PushError::Ended)) | None => {
                        (ResetCode::PROTOCOL, "DATA after END".to_string())
                    }
                }
            }
            Frame::End { .. } => {
                if let Some(w) = entry.inbound() {
                    w.finish();
                }
                return Action::PeerEnded(id);
            }
            Frame::Window { credit, .. } => match entry.credit().grant(credit) {
                Ok(()) => return Action::Applied,
                Err(e) => (ResetCode::FLOW_CONTROL, e.to_string()),
            },
            Frame::Reset { code, .. } => {
                return match self.live.remove(&id) {
                    Some(entry) => Action::PeerReset { id, code, entry },
                    None => Action::Late,
                };
            }
            Frame::WsText { .. } | Frame::WsBinary { .. } | Frame::WsClose { .. } => (
                ResetCode::PROTOCOL,
                "WS_* frame: protocol 2 carries upgraded bytes as DATA".to_string(),
            ),
        };
        let (code, why) = broken;
        match self.live.remove(&id) {
            Some(entry) => Action::Reset {
                id,
                code,
                why,
                entry,
            },
            None => Action::Late,
        }
    }
}

#[cfg(test)]
mod tests {
    //! One test per frame kind × stream state: live, live after the peer's END, ended, never
    //! opened; for the opener and, where the rule differs, the acceptor.
    use super::*;
    use crate::outbox::outbox;
    use crate::pipe::{PipeReader, pipe};

    /// The reader is kept so the pipe stays open.
    type Entry = Ends<PipeReader>;

    const WINDOW: u32 = 1024;

    fn entry(id: StreamId) -> Entry {
        let (out, _rx) = outbox(4);
        let (w, r) = pipe(id, WINDOW, out.board());
        Ends {
            inbound: Some(w),
            credit: Arc::new(SendCredit::new(WINDOW)),
            handle: r,
        }
    }

    #[derive(Clone, Copy, Debug)]
    enum State {
        Live,
        LiveAfterEnd,
        Ended,
        NeverOpened,
    }

    /// A table holding stream 1 in `state`, and the id to address.
    fn table(side: Side, state: State) -> (StreamTable<Entry>, StreamId) {
        let mut t = StreamTable::new(side);
        let id = match side {
            Side::Opener => t.open(entry).unwrap(),
            Side::Acceptor => {
                t.accept(1).unwrap();
                t.insert(1, entry(1));
                1
            }
        };
        match state {
            State::Live => (t, id),
            State::LiveAfterEnd => {
                assert!(matches!(
                    t.on_frame(Frame::End { stream: id }),
                    Action::PeerEnded(1)
                ));
                (t, id)
            }
            State::Ended => {
                t.remove(id).unwrap();
                (t, id)
            }
            State::NeverOpened => (t, id + 1),
        }
    }

    fn data(stream: StreamId, n: usize) -> Frame {
        Frame::Data {
            stream,
            data: Bytes::from(vec![7u8; n]),
        }
    }

    fn run(side: Side, state: State, frame: impl FnOnce(StreamId) -> Frame) -> Action<Entry> {
        let (mut t, id) = table(side, state);
        let before = t.len();
        let action = t.on_frame(frame(id));
        // Only a reset (either way) takes the stream out.
        let taken = matches!(action, Action::Reset { .. } | Action::PeerReset { .. });
        assert_eq!(
            t.len(),
            before - usize::from(taken),
            "{state:?}: {action:?}"
        );
        action
    }

    fn is_close(a: &Action<Entry>) -> bool {
        matches!(a, Action::Close(why) if why.contains("never opened"))
    }

    fn is_reset(a: &Action<Entry>, want: ResetCode) -> bool {
        matches!(a, Action::Reset { code, .. } if *code == want)
    }

    // DATA
    #[test]
    fn data_on_a_live_stream_reaches_its_pipe() {
        for side in [Side::Opener, Side::Acceptor] {
            let (mut t, id) = table(side, State::Live);
            assert!(matches!(t.on_frame(data(id, 10)), Action::Applied));
            assert!(matches!(t.on_frame(data(id, 0)), Action::Applied));
        }
    }

    #[test]
    fn data_past_the_window_resets_the_stream_for_flow_control() {
        let a = run(Side::Opener, State::Live, |id| {
            data(id, WINDOW as usize + 1)
        });
        assert!(is_reset(&a, ResetCode::FLOW_CONTROL), "{a:?}");
    }

    #[test]
    fn data_after_end_resets_the_stream() {
        let a = run(Side::Acceptor, State::LiveAfterEnd, |id| data(id, 1));
        assert!(is_reset(&a, ResetCode::PROTOCOL), "{a:?}");
    }

    #[test]
    fn data_for_a_stream_without_an_inbound_pipe_resets_it() {
        let mut t = StreamTable::new(Side::Acceptor);
        let mut e = entry(3);
        e.inbound = None;
        t.accept(3).unwrap();
        t.insert(3, e);
        assert!(is_reset(&t.on_frame(data(3, 1)), ResetCode::PROTOCOL));
    }

    #[test]
    fn data_for_an_ended_stream_is_late() {
        for side in [Side::Opener, Side::Acceptor] {
            assert!(matches!(
                run(side, State::Ended, |id| data(id, 1)),
                Action::Late
            ));
        }
    }

    #[test]
    fn data_for_a_stream_never_opened_closes_the_link() {
        for side in [Side::Opener, Side::Acceptor] {
            assert!(is_close(&run(side, State::NeverOpened, |id| data(id, 1))));
        }
    }

    // END
    #[test]
    fn end_on_a_live_stream_finishes_its_pipe() {
        for side in [Side::Opener, Side::Acceptor] {
            let a = run(side, State::Live, |stream| Frame::End { stream });
            assert!(matches!(a, Action::PeerEnded(1)), "{a:?}");
        }
    }

    #[test]
    fn end_twice_is_harmless() {
        let a = run(Side::Opener, State::LiveAfterEnd, |stream| Frame::End {
            stream,
        });
        assert!(matches!(a, Action::PeerEnded(1)), "{a:?}");
    }

    #[test]
    fn end_for_an_ended_stream_is_late() {
        for side in [Side::Opener, Side::Acceptor] {
            let a = run(side, State::Ended, |stream| Frame::End { stream });
            assert!(matches!(a, Action::Late), "{a:?}");
        }
    }

    #[test]
    fn end_for_a_stream_never_opened_closes_the_link() {
        for side in [Side::Opener, Side::Acceptor] {
            assert!(is_close(&run(side, State::NeverOpened, |stream| {
                Frame::End { stream }
            })));
        }
    }

    // RESET
    #[test]
    fn reset_on_a_live_stream_takes_it_out() {
        for state in [State::Live, State::LiveAfterEnd] {
            let a = run(Side::Opener, state, |stream| Frame::Reset {
                stream,
                code: ResetCode::REFUSED,
            });
            assert!(
                matches!(a, Action::PeerReset { id: 1, code, .. } if code == ResetCode::REFUSED),
                "{a:?}"
            );
        }
    }

    #[test]
    fn reset_for_an_ended_stream_is_late() {
        for side in [Side::Opener, Side::Acceptor] {
            let a = run(side, State::Ended, |stream| Frame::Reset {
                stream,
                code: ResetCode::CANCEL,
            });
            assert!(matches!(a, Action::Late), "{a:?}");
        }
    }

    #[test]
    fn reset_for_a_stream_never_opened_closes_the_openers_link() {
        let a = run(Side::Opener, State::NeverOpened, |stream| Frame::Reset {
            stream,
            code: ResetCode::CANCEL,
        });
        assert!(is_close(&a), "{a:?}");
    }

    #[test]
    fn reset_ahead_of_its_streams_head_is_dropped_by_the_acceptor() {
        let a = run(Side::Acceptor, State::NeverOpened, |stream| Frame::Reset {
            stream,
            code: ResetCode::CANCEL,
        });
        assert!(matches!(a, Action::Late), "{a:?}");
    }

    // WINDOW
    #[test]
    fn window_on_a_live_stream_grants_credit() {
        for state in [State::Live, State::LiveAfterEnd] {
            let (mut t, id) = table(Side::Opener, state);
            assert!(matches!(
                t.on_frame(Frame::Window {
                    stream: id,
                    credit: 100
                }),
                Action::Applied
            ));
            assert_eq!(t.get(id).unwrap().credit.available(), WINDOW as usize + 100);
        }
    }

    #[test]
    fn window_past_the_limit_resets_the_stream() {
        let a = run(Side::Acceptor, State::Live, |stream| Frame::Window {
            stream,
            credit: u32::MAX,
        });
        assert!(is_reset(&a, ResetCode::FLOW_CONTROL), "{a:?}");
    }

    #[test]
    fn window_for_an_ended_stream_is_late() {
        for side in [Side::Opener, Side::Acceptor] {
            let a = run(side, State::Ended, |stream| Frame::Window {
                stream,
                credit: 1,
            });
            assert!(matches!(a, Action::Late), "{a:?}");
        }
    }

    #[test]
    fn window_for_a_stream_never_opened_closes_the_link() {
        for side in [Side::Opener, Side::Acceptor] {
            assert!(is_close(&run(side, State::NeverOpened, |stream| {
                Frame::Window { stream, credit: 1 }
            })));
        }
    }

    // WS_* (protocol 1)
    fn ws(stream: StreamId) -> Frame {
        Frame::WsText {
            stream,
            data: Bytes::from_static(b"hi"),
        }
    }

    #[test]
    fn ws_frames_on_a_live_stream_reset_it() {
        for state in [State::Live, State::LiveAfterEnd] {
            let a = run(Side::Acceptor, state, ws);
            assert!(is_reset(&a, ResetCode::PROTOCOL), "{a:?}");
        }
    }

    #[test]
    fn ws_frames_for_an_ended_stream_are_late() {
        assert!(matches!(run(Side::Opener, State::Ended, ws), Action::Late));
    }

    #[test]
    fn ws_frames_for_a_stream_never_opened_close_the_link() {
        for side in [Side::Opener, Side::Acceptor] {
            assert!(is_close(&run(side, State::NeverOpened, ws)));
        }
    }

    // Not a frame; ids.
    #[test]
    fn a_message_that_is_not_a_frame_closes_the_link() {
        let mut t: StreamTable<Entry> = StreamTable::new(Side::Acceptor);
        assert!(matches!(
            t.on_message(Bytes::from_static(&[9, 0, 0, 0, 1])),
            Action::Close(_)
        ));
    }

    #[test]
    fn heads_may_arrive_out_of_order_but_a_live_id_is_not_reused() {
        let mut t = StreamTable::new(Side::Acceptor);
        t.accept(2).unwrap();
        t.insert(2, entry(2));
        assert!(t.was_opened(1), "ids below the highest count as opened");
        t.accept(1).unwrap();
        assert_eq!(t.accept(2), Err(AcceptError::Reused(2)));
        assert_eq!(t.accept(0), Err(AcceptError::Zero));
        assert!(!t.was_opened(3));
        // A stream refused at once (accepted, never inserted): its frames are late, not a
        // protocol error.
        t.accept(3).unwrap();
        assert!(matches!(t.on_frame(data(3, 1)), Action::Late));
    }

    #[test]
    fn the_opener_hands_out_increasing_ids_until_they_run_out() {
        let mut t = StreamTable::new(Side::Opener);
        assert_eq!(t.open(entry), Some(1));
        assert_eq!(t.open(entry), Some(2));
        t.next = StreamId::MAX;
        assert_eq!(t.open(entry), None);
    }
}
