//! How requests open and end streams on a link (an agent tunnel or a peer link): in place, in
//! the link's [`Streams`] table under its lock, with no message to the link's actor per request;
//! the actor hears only of a table it watches becoming empty, or of stream ids run out.

use actix::Recipient;
use tunnelgate_mux::Outbox;

use super::open::{OpenError, Opened, StreamGone, Streams};

/// How a request opens a stream on a link (an agent tunnel or a peer link): in place, in the
/// link's table, under its lock — no round trip to the link's actor.
#[derive(Clone)]
pub struct Opener {
    pub streams: Streams,
    pub out: Outbox,
    /// The link's actor: told when its table empties while it watches, or its ids ran out.
    pub gone: Recipient<StreamGone>,
}

impl Opener {
    pub fn open(&self) -> Result<Opened, OpenError> {
        let gone = Gone::new(self.streams.clone(), self.out.clone(), self.gone.clone());
        let opened = self.streams.open(&self.out, gone);
        if opened.is_err() && self.streams.exhausted() {
            // Its actor closes the link (stream 0 is never one of its streams).
            self.gone.do_send(StreamGone { id: 0, reset: None });
        }
        opened
    }

    /// Whether the link still takes streams.
    pub fn is_live(&self) -> bool {
        !self.out.is_closed() && self.streams.accepting()
    }
}

/// How a stream's end reaches its table: in place (the link's actor is told only when it
/// waits for the table to empty).
#[derive(Clone)]
pub struct Gone {
    streams: Streams,
    out: Outbox,
    /// The link's actor, told when the table it watches became empty.
    watcher: Recipient<StreamGone>,
}

impl Gone {
    /// The end of a stream in `streams`, whose link's actor is `watcher`.
    pub fn new(streams: Streams, out: Outbox, watcher: Recipient<StreamGone>) -> Self {
        Gone {
            streams,
            out,
            watcher,
        }
    }

    /// Removes the stream from its table (with a RESET to the other end when `msg` has one).
    pub fn send(self, msg: StreamGone) {
        let id = msg.id;
        if self.streams.gone_and_watched_empty(msg, &self.out) {
            self.watcher.do_send(StreamGone { id, reset: None });
        }
    }
}
