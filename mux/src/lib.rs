//! Flow-controlled stream plumbing that gateway and agent share. No sockets and no runtime:
//! only `tokio::sync` primitives, wakers and byte streams given to it, so both the actix
//! gateway and the tokio agent use the same code for the same job.
//!
//! # Layout
//! - [`pipe`]: a byte-bounded single-producer pipe from the tunnel reader to one consumer
//!   (an HTTP body), which returns credit to the peer as the consumer reads.
//! - [`credit`]: the sending side's credit ([`credit::SendCredit`]), awaited before each DATA.
//! - [`config`]: durations and masked secrets for both binaries' configuration.
//! - [`outbox`]: the one bounded queue into a tunnel's single writer, with a side board for
//!   WINDOW and RESET frames that must never wait behind data.
//! - [`streams`]: the stream table and the one rule for every frame a link end receives.
//! - [`ws`]: the WebSocket framing of a link over any byte stream, payloads not copied.

pub mod config;
pub mod credit;
pub mod outbox;
pub mod pipe;
pub mod streams;
pub mod ws;

pub use credit::SendCredit;
pub use outbox::{
    Board, Outbox, OutboxClosed, OutboxRx, Outgoing, WRITE_TIMEOUT, outbox, write_loop,
    write_loop_with_timeout,
};
pub use pipe::{Item, PipeError, PipeReader, PipeWriter, PushError, pipe};
pub use streams::{AcceptError, Action, Ends, Side, StreamEnds, StreamTable};
