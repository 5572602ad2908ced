//! How requests open and end streams on a link (an agent tunnel or a peer link): in place, in
//! the link's [`Streams`] table under its lock, with no message to the link's actor per request;
//! the actor hears only of a table it watches becoming empty, or of stream ids run out.

use std::sync::Arc;

use actix::Recipient;
use tunnelgate_mux::Outbox;

use super::open::{OpenError, Opened, StreamGone, Streams};

/// How a request opens a stream on a link (an agent tunnel or a peer link): in place, in the
/// link's table, under its lock — no round trip to the link's actor.
#[derive(Clone)]
pub struct Opener(Arc<Link>);

/// What an [`Opener`] shares: a request clones the opener, not each part.
struct Link {
    streams: Streams,
    out: Outbox,
    /// The link's actor: told when its table empties while it watches, or its ids ran out.
    actor: Recipient<StreamGone>,
}

impl Opener {
    pub fn new(streams: Streams, out: Outbox, actor: Recipient<StreamGone>) -> Self {
        Opener(Arc::new(Link {
            streams,
            out,
            actor,
        }))
    }

    /// Opens a stream if the link accepts new ones.
    pub fn open(&self) -> Result<Opened, OpenError> {
        let link = &self.0;
        let opened = link.streams.open(&link.out, Gone(self.clone()));
        if opened.is_err() && link.streams.exhausted() {
            // Its actor closes the link (stream 0 is never one of its streams).
            link.actor.do_send(StreamGone { id: 0, reset: None });
        }
        opened
    }

    /// Opens a stream whether or not the link accepts new ones (the tunnel's own probe).
    pub fn open_always(&self) -> Result<Opened, OpenError> {
        self.0.streams.open_always(&self.0.out, Gone(self.clone()))
    }

    /// Whether the link still takes streams.
    pub fn is_live(&self) -> bool {
        !self.0.out.is_closed() && self.0.streams.accepting()
    }
}

/// The end of one stream, reaching its table in place (the link's actor is told only when it
/// waits for the table to empty).
pub struct Gone(Opener);

impl Gone {
    /// Removes the stream from its table (with a RESET to the other end when `msg` has one).
    pub fn send(self, msg: StreamGone) {
        let id = msg.id;
        let link = &self.0.0;
        if link.streams.gone_and_watched_empty(msg, &link.out) {
            link.actor.do_send(StreamGone { id, reset: None });
        }
    }
}
