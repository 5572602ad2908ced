//! The public listener's connections, before actix-http parses them. actix-http streams the
//! bytes after a request head only for `Upgrade: websocket` (and CONNECT): any other upgrade —
//! kubectl's `Upgrade: SPDY/3.1` POST with `Content-Length: 0` — would have the connection's
//! next bytes parsed as a new request. So the first request head of each connection is read
//! here, and when it asks for an upgrade to anything but WebSocket or h2c, its `Upgrade`
//! header is presented to actix as `websocket` and the protocol asked for travels in
//! [`UPGRADE_HEADER`], which the proxy reads instead (see `headers::upgrade_request`). A
//! client's own [`UPGRADE_HEADER`] is renamed away, so only this layer can set it. Nothing else
//! in the stream changes. (Clients open a fresh connection for such upgrades, as client-go
//! does; a later request on a kept-alive connection is not rewritten.)

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// The internal header carrying the `Upgrade` a client asked for when it was not WebSocket.
pub const UPGRADE_HEADER: &str = "x-tunnelgate-upgrade";

/// The name a client's own [`UPGRADE_HEADER`] is renamed to (same length, never read).
const NEUTRALISED: &str = "x-tunnelgate-ignored";

/// Bytes of the first head looked at; a longer head passes unchanged (actix refuses it).
const MAX_HEAD: usize = 64 * 1024;

/// The first head rewritten when it asks for a non-WebSocket upgrade; None to pass it as is.
pub fn rewrite_head(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next()?;
    if !request_line.ends_with(" HTTP/1.1") {
        return None;
    }
    let mut upgrade = None;
    let mut asks = false;
    for line in text.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade = Some(value.trim());
        } else if name.eq_ignore_ascii_case("connection") {
            asks |= value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
        }
    }
    let upgrade = upgrade?;
    let plain = |p: &str| p.eq_ignore_ascii_case("websocket") || p.eq_ignore_ascii_case("h2c");
    if !asks || upgrade.is_empty() || upgrade.split(',').map(str::trim).all(plain) {
        return None;
    }
    let mut out = Vec::with_capacity(head.len() + 64);
    for (i, line) in text.split("\r\n").enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\r\n");
        }
        let name = line.split_once(':').map(|(n, _)| n.trim());
        match name {
            Some(n) if n.eq_ignore_ascii_case("upgrade") => {
                out.extend_from_slice(b"Upgrade: websocket\r\n");
                out.extend_from_slice(format!("{UPGRADE_HEADER}: {upgrade}").as_bytes());
            }
            Some(n) if n.eq_ignore_ascii_case(UPGRADE_HEADER) => {
                let rest = &line[line.find(':').unwrap_or(0)..];
                out.extend_from_slice(NEUTRALISED.as_bytes());
                out.extend_from_slice(rest.as_bytes());
            }
            _ => out.extend_from_slice(line.as_bytes()),
        }
    }
    Some(out)
}

/// A connection whose first request head may be rewritten by [`rewrite_head`], with its
/// place under the node's connection limit.
pub struct FirstHead<T> {
    io: T,
    state: State,
    slot: crate::overload::Slot,
}

enum State {
    /// Collecting the first head.
    Head(Vec<u8>),
    /// Handing out the (possibly rewritten) head and what came with it.
    Replay(Vec<u8>, usize),
    /// Plain pass-through.
    Through,
}

impl<T> FirstHead<T> {
    pub fn new(io: T, slot: crate::overload::Slot) -> Self {
        Self::resume(io, slot, Vec::new())
    }

    /// A connection of which `read` was already read (by `proxy::conn`): a request head's
    /// beginning, or all of it.
    pub fn resume(io: T, slot: crate::overload::Slot, read: Vec<u8>) -> Self {
        FirstHead {
            io,
            state: settle(read, false),
            slot,
        }
    }

    /// Whether the connection came past the node's connection limit.
    pub fn crowded(&self) -> crate::overload::Crowded {
        crate::overload::Crowded(self.slot.over)
    }

    /// The connection underneath (a TLS one, for its SNI).
    pub fn get_ref(&self) -> &T {
        &self.io
    }
}

fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// What to do with the bytes of the first head read so far (`eof`: and no more come).
fn settle(bytes: Vec<u8>, eof: bool) -> State {
    match head_end(&bytes) {
        // Rewritten, or the bytes as read (no copy).
        Some(end) => match bytes.get(..end).and_then(rewrite_head) {
            Some(mut head) => {
                head.extend_from_slice(bytes.get(end..).unwrap_or_default());
                State::Replay(head, 0)
            }
            None => State::Replay(bytes, 0),
        },
        None if eof || bytes.len() >= MAX_HEAD => State::Replay(bytes, 0),
        None => State::Head(bytes),
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FirstHead<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Through => return Pin::new(&mut this.io).poll_read(cx, out),
                State::Replay(buf, at) if *at == buf.len() => this.state = State::Through,
                State::Replay(buf, at) => {
                    let rest = buf.get(*at..).unwrap_or_default();
                    let n = out.remaining().min(rest.len());
                    out.put_slice(rest.get(..n).unwrap_or_default());
                    *at += n;
                    if *at == buf.len() {
                        this.state = State::Through;
                    }
                    return Poll::Ready(Ok(()));
                }
                State::Head(buf) => {
                    let mut chunk = [0u8; 8192];
                    let mut rb = ReadBuf::new(&mut chunk);
                    match Pin::new(&mut this.io).poll_read(cx, &mut rb) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Ready(Ok(())) => {
                            let got = rb.filled();
                            let eof = got.is_empty();
                            buf.extend_from_slice(got);
                            let next = settle(std::mem::take(buf), eof);
                            this.state = next;
                            if eof && matches!(&this.state, State::Replay(b, _) if b.is_empty()) {
                                return Poll::Ready(Ok(()));
                            }
                        }
                    }
                }
            }
        }
    }
}

write_through!(FirstHead, io);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_non_websocket_upgrades_are_rewritten() {
        let spdy = b"POST /exec HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nContent-Length: 0\r\n\r\n";
        let out = String::from_utf8(rewrite_head(spdy).unwrap()).unwrap();
        assert!(out.contains("\r\nUpgrade: websocket\r\n"), "{out}");
        assert!(
            out.contains("\r\nx-tunnelgate-upgrade: SPDY/3.1\r\n"),
            "{out}"
        );
        assert!(out.ends_with("Content-Length: 0\r\n\r\n"), "{out}");
        let ws = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        assert!(rewrite_head(ws).is_none());
        let h2c = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\r\n";
        assert!(rewrite_head(h2c).is_none());
        let no_conn = b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: SPDY/3.1\r\n\r\n";
        assert!(rewrite_head(no_conn).is_none());
        let plain = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert!(rewrite_head(plain).is_none());
    }

    #[test]
    fn a_client_cannot_set_the_internal_header() {
        let forged = b"POST / HTTP/1.1\r\nHost: a\r\nX-Tunnelgate-Upgrade: evil\r\nConnection: upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n";
        let out = String::from_utf8(rewrite_head(forged).unwrap()).unwrap();
        assert!(!out.contains("X-Tunnelgate-Upgrade: evil"), "{out}");
        assert!(out.contains("x-tunnelgate-ignored: evil"), "{out}");
        assert_eq!(out.matches("x-tunnelgate-upgrade:").count(), 1, "{out}");
    }

    #[tokio::test]
    async fn the_stream_after_the_head_is_untouched() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut a, b) = tokio::io::duplex(1 << 16);
        a.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: SPDY/3.1\r\n\r\nRAW\r\n\r\nBYTES")
            .await
            .unwrap();
        drop(a);
        let mut f = FirstHead::new(b, crate::overload::Load::new(0).take());
        let mut all = Vec::new();
        f.read_to_end(&mut all).await.unwrap();
        let text = String::from_utf8(all).unwrap();
        assert!(text.ends_with("\r\n\r\nRAW\r\n\r\nBYTES"), "{text}");
        assert!(text.contains("x-tunnelgate-upgrade: SPDY/3.1"), "{text}");
    }
}
