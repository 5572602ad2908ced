//! The WebSocket framing (RFC 6455) of a link, read and written here instead of by a
//! WebSocket library (ADR 0014). A link carries few kinds of message and its payloads are
//! most of its bytes, so both halves work on whole frames and never copy a payload they can
//! avoid copying:
//! - [`WsReader`] reads frame heads and short payloads through one buffer (no zero-fill) and
//!   a large payload (a DATA frame of a body) straight into a buffer of its own, exactly its
//!   size, unmasking a client's frame in place: a download's payload reaches its stream's pipe
//!   with no copy in user space, and a message kept never pins more memory than its own.
//! - [`WsWriter`] writes frame heads and small payloads through one buffer and large payloads
//!   as they are (vectored writes); a client masks a payload in place when it holds the only
//!   reference to it, and copies it masked otherwise.
//!
//! Both ends are checked as untrusted input: reserved bits, opcodes, control-frame rules,
//! masking by role, UTF-8 of text and close reasons, and a message size bound checked
//! from the frame head, before any payload is buffered. Pings are reported, not answered: a
//! link's ends never send them (liveness is the protocol's own, docs/protocol.md).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::Outgoing;

/// The header by which an agent offers, and a gateway's 101 accepts, unmasked frames from
/// the agent (ADR 0014): masking guards intermediaries against script in a browser, and
/// costs a pass over every byte an agent sends. A gateway that does not echo it gets masked
/// frames, as RFC 6455 asks.
pub const UNMASKED_HEADER: &str = "x-tunnelgate-unmasked";

/// A link's read half, whatever carries it.
pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
/// A link's write half, whatever carries it.
pub type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// A plain TCP connection in its two halves (no lock between them).
pub fn tcp_halves(tcp: tokio::net::TcpStream) -> (BoxRead, BoxWrite) {
    let (r, w) = tcp.into_split();
    (Box::new(r), Box::new(w))
}

/// Any other connection (a TLS session) in its two halves.
pub fn halves<T: AsyncRead + AsyncWrite + Send + 'static>(io: T) -> (BoxRead, BoxWrite) {
    let (r, w) = tokio::io::split(io);
    (Box::new(r), Box::new(w))
}

/// The server end of a link over a plain TCP connection whose upgrade was just answered:
/// `read` holds what was read past the request's head, `unmasked` says whether the 101 agreed
/// to the client's [`UNMASKED_HEADER`].
pub fn accept_tcp(
    tcp: tokio::net::TcpStream,
    read: &[u8],
    max_message: usize,
    unmasked: bool,
) -> (
    WsReader<tokio::net::tcp::OwnedReadHalf>,
    WsWriter<tokio::net::tcp::OwnedWriteHalf>,
) {
    let (rd, wr) = tcp.into_split();
    let reader = WsReader::new(rd, Role::Server, read, max_message);
    let reader = if unmasked {
        reader.allow_unmasked()
    } else {
        reader
    };
    (reader, WsWriter::new(wr, Role::Server))
}

/// Which end of the connection this is: a client masks what it sends and must get unmasked
/// frames; a server the reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// A message as read off a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Text(String),
    Binary(Bytes),
    /// A close frame: its code and reason, if it had them.
    Close(Option<(u16, String)>),
    Ping(Bytes),
    Pong,
}

/// Why a link's framing failed. Each ends the link.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("WebSocket protocol error: {0}")]
    Protocol(&'static str),
    #[error("WebSocket message of {size} bytes is over the limit of {limit}")]
    TooLarge { size: u64, limit: usize },
    #[error("connection closed without a WebSocket close frame")]
    Eof,
}

const OP_CONTINUATION: u8 = 0;
const OP_TEXT: u8 = 1;
const OP_BINARY: u8 = 2;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;
const OP_PONG: u8 = 10;

/// The smallest socket read, and about what a quiet link's buffer holds.
pub const MIN_READ: usize = 4 * 1024;
/// The largest socket read asked for beyond the frame being read.
pub const MAX_READ: usize = 64 * 1024;

/// `mask` applied to `buf` (RFC 6455 §5.3), sixteen bytes at a time.
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4]) {
    let [a, b, c, d] = mask;
    let wide = u128::from_ne_bytes([a, b, c, d, a, b, c, d, a, b, c, d, a, b, c, d]);
    let mut chunks = buf.chunks_exact_mut(16);
    for chunk in &mut chunks {
        let v = u128::from_ne_bytes(chunk.try_into().unwrap_or([0; 16])) ^ wide;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    // The remainder starts at a multiple of sixteen, so the mask starts over.
    for (byte, m) in chunks.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *byte ^= m;
    }
}

/// A frame's head as read: what follows it and how.
struct FrameHead {
    fin: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    /// Bytes of the head itself.
    len: usize,
    payload: u64,
}

/// The head at the start of `buf`, None while it is incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<FrameHead>, WsError> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(WsError::Protocol(
            "reserved bits set (no extension was agreed)",
        ));
    }
    let (len, payload) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(&[x, y]) => (4, u64::from(u16::from_be_bytes([x, y]))),
            _ => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|s| <[u8; 8]>::try_from(s).ok()) {
            Some(b) => (10, u64::from_be_bytes(b)),
            None => return Ok(None),
        },
        n => (2, u64::from(n)),
    };
    let (len, mask) = if b1 & 0x80 != 0 {
        match buf
            .get(len..len + 4)
            .and_then(|s| <[u8; 4]>::try_from(s).ok())
        {
            Some(m) => (len + 4, Some(m)),
            None => return Ok(None),
        }
    } else {
        (len, None)
    };
    Ok(Some(FrameHead {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0f,
        mask,
        len,
        payload,
    }))
}

/// Payloads at least this long are read into a buffer of their own, exactly their size;
/// shorter ones are copied out of the read buffer. Either way a message holds no memory but
/// its own: a message kept (a slow client's body) never pins a read buffer.
const OWN_BUFFER: usize = 4 * 1024;

/// A frame whose payload is being read into its own buffer.
struct Large {
    fin: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    payload: BytesMut,
    /// Payload bytes still to read.
    left: usize,
}

/// The message half of a link: a [`Stream`] of [`Incoming`] messages, ending after a close
/// frame or an error.
pub struct WsReader<R> {
    io: R,
    /// Frame heads and short payloads.
    buf: BytesMut,
    role: Role,
    max_message: usize,
    /// A large frame's payload being read.
    large: Option<Large>,
    /// A server end that agreed to [`UNMASKED_HEADER`]: a client's frames may come unmasked.
    unmasked_ok: bool,
    /// A fragmented message being put together: its opcode and the bytes so far.
    partial: Option<(u8, BytesMut)>,
    /// The next read's size into `buf`: it grows while reads come back full of short frames,
    /// and starts small again after a large frame (whose payload should go to its own buffer,
    /// not be copied there).
    read_size: usize,
    done: bool,
}

impl<R> WsReader<R> {
    /// A reader of `io` for this end, starting with `read` (bytes already read past the
    /// handshake), refusing messages over `max_message` bytes.
    pub fn new(io: R, role: Role, read: &[u8], max_message: usize) -> Self {
        WsReader {
            io,
            buf: BytesMut::from(read),
            role,
            max_message,
            large: None,
            unmasked_ok: false,
            partial: None,
            read_size: MIN_READ,
            done: false,
        }
    }

    /// A server end that agreed to [`UNMASKED_HEADER`]: it takes a client's unmasked frames
    /// too.
    pub fn allow_unmasked(mut self) -> Self {
        self.unmasked_ok = true;
        self
    }

    /// The next frame out of `buf`: a message, None for a fragment that does not finish one
    /// (or a large frame that now reads into its own buffer), or how many more bytes `buf`
    /// needs at least.
    #[allow(clippy::type_complexity)]
    fn next_frame(&mut self) -> Result<Result<Option<Incoming>, usize>, WsError> {
        let Some(head) = parse_head(&self.buf)? else {
            return Ok(Err(14));
        };
        match (self.role, head.mask.is_some()) {
            (Role::Server, false) if !self.unmasked_ok => {
                return Err(WsError::Protocol("unmasked frame from a client"));
            }
            (Role::Client, true) => return Err(WsError::Protocol("masked frame from a server")),
            _ => {}
        }
        let control = head.opcode >= OP_CLOSE;
        if control && (!head.fin || head.payload > 125) {
            return Err(WsError::Protocol("fragmented or long control frame"));
        }
        let so_far = self.partial.as_ref().map_or(0, |(_, b)| b.len() as u64);
        if head.payload.saturating_add(so_far) > self.max_message as u64 {
            return Err(WsError::TooLarge {
                size: head.payload.saturating_add(so_far),
                limit: self.max_message,
            });
        }
        // Within max_message, so it fits in usize.
        let len = head.payload as usize;
        if len >= OWN_BUFFER {
            self.buf.advance(head.len);
            let mut payload = BytesMut::with_capacity(len);
            let here = len.min(self.buf.len());
            payload.extend_from_slice(self.buf.get(..here).unwrap_or_default());
            self.buf.advance(here);
            self.read_size = MIN_READ;
            let large = Large {
                fin: head.fin,
                opcode: head.opcode,
                mask: head.mask,
                payload,
                left: len - here,
            };
            if large.left > 0 {
                self.large = Some(large);
                return Ok(Ok(None));
            }
            return self.finish(large).map(Ok);
        }
        let total = head.len + len;
        let Some(bytes) = self.buf.get(head.len..total) else {
            return Ok(Err(total - self.buf.len()));
        };
        let payload = BytesMut::from(bytes);
        self.buf.advance(total);
        self.finish(Large {
            fin: head.fin,
            opcode: head.opcode,
            mask: head.mask,
            payload,
            left: 0,
        })
        .map(Ok)
    }

    /// A frame read whole, as a message (None: a fragment that does not finish one).
    fn finish(&mut self, frame: Large) -> Result<Option<Incoming>, WsError> {
        let Large {
            fin,
            opcode,
            mask,
            mut payload,
            ..
        } = frame;
        if let Some(mask) = mask {
            apply_mask(&mut payload, mask);
        }
        Ok(match (opcode, fin, self.partial.take()) {
            (OP_TEXT | OP_BINARY, true, None) => Some(message(opcode, payload)?),
            (OP_TEXT | OP_BINARY, false, None) => {
                self.partial = Some((opcode, payload));
                None
            }
            (OP_CONTINUATION, fin, Some((op, mut so_far))) => {
                so_far.extend_from_slice(&payload);
                if fin {
                    Some(message(op, so_far)?)
                } else {
                    self.partial = Some((op, so_far));
                    None
                }
            }
            (OP_CLOSE, _, partial) => {
                self.partial = partial;
                Some(Incoming::Close(close_payload(&payload)?))
            }
            (OP_PING, _, partial) => {
                self.partial = partial;
                Some(Incoming::Ping(payload.freeze()))
            }
            (OP_PONG, _, partial) => {
                self.partial = partial;
                Some(Incoming::Pong)
            }
            (OP_CONTINUATION, _, None) => {
                return Err(WsError::Protocol("continuation frame outside a message"));
            }
            (OP_TEXT | OP_BINARY, _, Some(_)) => {
                return Err(WsError::Protocol("new message inside a fragmented one"));
            }
            _ => return Err(WsError::Protocol("reserved opcode")),
        })
    }
}

fn message(opcode: u8, payload: BytesMut) -> Result<Incoming, WsError> {
    if opcode == OP_TEXT {
        String::from_utf8(payload.to_vec())
            .map(Incoming::Text)
            .map_err(|_| WsError::Protocol("text message is not UTF-8"))
    } else {
        Ok(Incoming::Binary(payload.freeze()))
    }
}

fn close_payload(p: &[u8]) -> Result<Option<(u16, String)>, WsError> {
    match p {
        [] => Ok(None),
        [_] => Err(WsError::Protocol("close frame of one byte")),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            let reason = std::str::from_utf8(reason)
                .map_err(|_| WsError::Protocol("close reason is not UTF-8"))?;
            Ok(Some((code, reason.to_string())))
        }
    }
}

impl<R: AsyncRead + Unpin> Stream for WsReader<R> {
    type Item = Result<Incoming, WsError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            let step = match this.large.take() {
                // A large frame's payload: read into its own buffer, no further than its end.
                Some(mut large) => {
                    let read = tokio_util::io::poll_read_buf(
                        Pin::new(&mut this.io),
                        cx,
                        &mut (&mut large.payload).limit(large.left),
                    );
                    match read {
                        Poll::Pending => {
                            this.large = Some(large);
                            return Poll::Pending;
                        }
                        Poll::Ready(Ok(0)) => Err(WsError::Eof),
                        Poll::Ready(Ok(n)) => {
                            large.left -= n;
                            if large.left > 0 {
                                this.large = Some(large);
                                continue;
                            }
                            this.finish(large)
                        }
                        Poll::Ready(Err(e)) => Err(e.into()),
                    }
                }
                None => match this.next_frame() {
                    Ok(Ok(m)) => Ok(m),
                    Ok(Err(need)) => match this.read(cx, need) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(e)) => Err(e),
                    },
                    Err(e) => Err(e),
                },
            };
            match step {
                Ok(None) => continue,
                Ok(Some(m)) => {
                    this.done = matches!(m, Incoming::Close(_));
                    return Poll::Ready(Some(Ok(m)));
                }
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}

impl<R: AsyncRead + Unpin> WsReader<R> {
    /// One read into `buf`, of at least `need` bytes' room.
    fn read(&mut self, cx: &mut Context<'_>, need: usize) -> Poll<Result<(), WsError>> {
        // A quiet link gives a large buffer back: a small one is allocated when bytes come.
        if self.buf.is_empty() && self.buf.capacity() > 2 * self.read_size {
            self.buf = BytesMut::new();
        }
        self.buf.reserve(need.max(self.read_size));
        let room = self.buf.capacity() - self.buf.len();
        let got = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.buf
        ))?;
        if got == 0 {
            return Poll::Ready(Err(WsError::Eof));
        }
        self.read_size = if got >= room {
            (self.read_size * 2).min(MAX_READ)
        } else if got < self.read_size / 4 {
            (self.read_size / 2).max(MIN_READ)
        } else {
            self.read_size
        };
        Poll::Ready(Ok(()))
    }
}

/// Payloads at least this long go to the socket as they are (vectored) instead of through
/// the write buffer.
const DIRECT: usize = 2 * 1024;
/// Bytes queued before the writer stops taking messages and writes.
const HIGH_WATER: usize = 256 * 1024;
/// Slices per vectored write.
const MAX_SLICES: usize = 64;

/// The sending half of a link: a [`Sink`] of [`Outgoing`] messages; a flush writes them.
pub struct WsWriter<W> {
    io: W,
    /// Whether frames are masked: a client's are, unless the server agreed otherwise.
    mask: bool,
    /// Heads and small payloads since the last chunk was queued.
    buf: BytesMut,
    /// What is ready to be written, in order.
    chunks: VecDeque<Bytes>,
    queued: usize,
}

impl<W> WsWriter<W> {
    pub fn new(io: W, role: Role) -> Self {
        WsWriter {
            io,
            mask: role == Role::Client,
            buf: BytesMut::new(),
            chunks: VecDeque::new(),
            queued: 0,
        }
    }

    /// A client end whose server agreed to [`UNMASKED_HEADER`]: frames go unmasked.
    pub fn unmasked(mut self) -> Self {
        self.mask = false;
        self
    }

    /// Bytes taken and not yet written.
    pub fn queued(&self) -> usize {
        self.queued + self.buf.len()
    }

    fn head(&mut self, opcode: u8, len: usize, mask: Option<[u8; 4]>) {
        self.buf.reserve(14);
        self.buf.put_u8(0x80 | opcode);
        let masked = if mask.is_some() { 0x80 } else { 0 };
        match len {
            0..=125 => self.buf.put_u8(masked | len as u8),
            126..=0xffff => {
                self.buf.put_u8(masked | 126);
                self.buf.put_u16(len as u16);
            }
            _ => {
                self.buf.put_u8(masked | 127);
                self.buf.put_u64(len as u64);
            }
        }
        if let Some(m) = mask {
            self.buf.put_slice(&m);
        }
    }

    /// One frame of `opcode` with `payload` queued.
    fn frame(&mut self, opcode: u8, payload: Bytes) {
        let mask = self.mask.then(rand::random::<[u8; 4]>);
        self.head(opcode, payload.len(), mask);
        let payload = match mask {
            None if payload.len() >= DIRECT => payload,
            None => {
                self.buf.put_slice(&payload);
                return;
            }
            Some(m) => match payload.try_into_mut() {
                Ok(mut own) if own.len() >= DIRECT => {
                    apply_mask(&mut own, m);
                    own.freeze()
                }
                Ok(own) => return self.copy_masked(&own, m),
                Err(shared) => return self.copy_masked(&shared, m),
            },
        };
        self.queue_buf();
        self.queued += payload.len();
        self.chunks.push_back(payload);
    }

    fn copy_masked(&mut self, payload: &[u8], mask: [u8; 4]) {
        let at = self.buf.len();
        self.buf.put_slice(payload);
        if let Some(tail) = self.buf.get_mut(at..) {
            apply_mask(tail, mask);
        }
    }

    fn queue_buf(&mut self) {
        if !self.buf.is_empty() {
            let b = self.buf.split().freeze();
            self.queued += b.len();
            self.chunks.push_back(b);
        }
    }
}

impl<W: AsyncWrite + Unpin> WsWriter<W> {
    /// Writes everything queued.
    fn poll_write_all(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.queue_buf();
        while !self.chunks.is_empty() {
            let slices: Vec<io::IoSlice<'_>> = self
                .chunks
                .iter()
                .take(MAX_SLICES)
                .map(|c| io::IoSlice::new(c))
                .collect();
            let mut n = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.queued -= n;
            while n > 0 {
                let Some(front) = self.chunks.front_mut() else {
                    break;
                };
                if front.len() <= n {
                    n -= front.len();
                    self.chunks.pop_front();
                } else {
                    front.advance(n);
                    n = 0;
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> Sink<Outgoing> for WsWriter<W> {
    type Error = io::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.queued() >= HIGH_WATER {
            ready!(self.poll_write_all(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(mut self: Pin<&mut Self>, m: Outgoing) -> io::Result<()> {
        match m {
            Outgoing::Binary(b) => self.frame(OP_BINARY, b),
            // A large payload sent unmasked goes as it is, behind its frame's header.
            Outgoing::Frame(f) => match f.bytes() {
                Some(data) if !self.mask && data.len() >= DIRECT => {
                    self.head(OP_BINARY, f.encoded_len(), None);
                    f.encode_head(&mut self.buf);
                    self.queue_buf();
                    self.queued += data.len();
                    self.chunks.push_back(data.clone());
                }
                _ => self.frame(OP_BINARY, f.to_bytes()),
            },
            Outgoing::Text(t) => self.frame(OP_TEXT, Bytes::from(t)),
            Outgoing::Close { code, reason } => {
                let reason = within_close_limit(&reason);
                let mut p = BytesMut::with_capacity(2 + reason.len());
                p.put_u16(code);
                p.put_slice(reason.as_bytes());
                self.frame(OP_CLOSE, p.freeze());
            }
        }
        Ok(())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_all(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// `reason` cut to the 123 bytes a close frame can carry (RFC 6455 §5.5), at a character
/// boundary.
pub fn within_close_limit(reason: &str) -> &str {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason.get(..end).unwrap_or_default()
}

#[cfg(test)]
#[path = "ws_tests.rs"]
mod tests;
