//! HTTP/1.1 response framing (RFC 9112 §6.3), for ends that carry a response's bytes without
//! re-encoding them (ADR 0010): where a response head ends, how its body is delimited, and
//! where a chunked body ends. Pure: it reads byte slices and never buffers; a caller keeps what
//! was not consumed and reads more. Every line it waits for is bounded, so a peer cannot make a
//! caller hold an unbounded buffer.

/// Longest response head accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size line (with extensions) or trailer line.
pub const MAX_LINE: usize = 4 * 1024;
/// Most header fields in a response head.
pub const MAX_HEADERS: usize = 128;

/// Why bytes are not a well-framed HTTP/1.1 response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("invalid response head: {0}")]
    Head(String),
    #[error("response head over {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("invalid Content-Length")]
    BadLength,
    #[error("conflicting Content-Lengths")]
    ConflictingLengths,
    #[error("both Transfer-Encoding and Content-Length")]
    LengthAndEncoding,
    #[error("invalid chunked body: {0}")]
    Chunk(&'static str),
}

/// How a response's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body: HEAD, 1xx, 204, 304, or `Content-Length: 0`.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked: track it with [`Chunked`].
    Chunked,
    /// Everything until the upstream closes (no length given); the connection cannot be reused.
    UntilClose,
    /// A 101: the connection now carries another protocol's bytes both ways.
    Switched,
}

/// A complete response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// Bytes the head takes, its final empty line included.
    pub len: usize,
    pub body: Body,
    /// A 1xx other than 101: another head follows.
    pub interim: bool,
    /// The upstream keeps the connection open after this response (RFC 9112 §9.3): HTTP/1.1
    /// unless `Connection: close`, HTTP/1.0 only with `Connection: keep-alive`. A body that
    /// ends at EOF ends the connection whatever this says.
    pub keep_alive: bool,
}

/// Parses the response head at the start of `buf`: `Ok(None)` until it is complete.
/// `head_request` is whether the request was HEAD (its response never has a body).
pub fn response_head(buf: &[u8], head_request: bool) -> Result<Option<Head>, FramingError> {
    response_head_with(buf, head_request, |_, _| {})
}

/// [`response_head`], showing each header field of a complete head to `field` (name as sent,
/// raw value) before the framing is decided.
pub fn response_head_with(
    buf: &[u8],
    head_request: bool,
    mut field: impl FnMut(&str, &[u8]),
) -> Result<Option<Head>, FramingError> {
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match crate::head::parse_response(&mut resp, buf, &mut slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(FramingError::HeadTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(FramingError::Head(e.to_string())),
    };
    if len > MAX_HEAD {
        return Err(FramingError::HeadTooLarge);
    }
    let status = resp.code.unwrap_or(0);
    let mut length: Option<u64> = None;
    let mut encoding: Option<bool> = None; // Some(chunked is the final coding)
    let (mut close, mut keep) = (false, false);
    for h in resp.headers.iter() {
        field(h.name, h.value);
        if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(FramingError::BadLength)?;
            if length.is_some_and(|m| m != n) {
                return Err(FramingError::ConflictingLengths);
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .map(|v| v.trim_ascii().eq_ignore_ascii_case(b"chunked"))
                .unwrap_or(false);
            encoding = Some(last);
        }
    }
    let interim = (100..200).contains(&status) && status != 101;
    let body = if status == 101 {
        Body::Switched
    } else if head_request || interim || status == 204 || status == 304 {
        Body::None
    } else {
        match (encoding, length) {
            // A response with both is how request smuggling starts; a proxy refuses it.
            (Some(_), Some(_)) => return Err(FramingError::LengthAndEncoding),
            (Some(true), None) => Body::Chunked,
            (Some(false), None) => Body::UntilClose,
            (None, Some(0)) => Body::None,
            (None, Some(n)) => Body::Length(n),
            (None, None) => Body::UntilClose,
        }
    };
    let keep_alive = !close && (resp.version == Some(1) || keep);
    Ok(Some(Head {
        status,
        len,
        body,
        interim,
        keep_alive,
    }))
}

/// Where a chunked body ends, fed the body's bytes as they come.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chunked {
    state: State,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum State {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
    Done,
}

/// One step through a chunked body: what the next bytes of the buffer are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// This many bytes of framing (size lines, CRLFs, trailers).
    Framing(usize),
    /// This many bytes of the body's data.
    Data(usize),
    /// Nothing can be decided without more bytes after these.
    More,
    /// The body ended; this many bytes of framing end it.
    Done(usize),
}

impl Chunked {
    /// The next step at the start of `buf`; the caller consumes the bytes a step names and
    /// steps again on what follows them.
    pub fn step(&mut self, buf: &[u8]) -> Result<Step, FramingError> {
        match self.state {
            State::Done => Ok(Step::Done(0)),
            State::Size => match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete((n, 0))) => {
                    self.state = State::Trailers;
                    Ok(Step::Framing(n))
                }
                Ok(httparse::Status::Complete((n, size))) => {
                    self.state = State::Data(size);
                    Ok(Step::Framing(n))
                }
                Ok(httparse::Status::Partial) if buf.len() > MAX_LINE => {
                    Err(FramingError::Chunk("chunk-size line too long"))
                }
                Ok(httparse::Status::Partial) => Ok(Step::More),
                Err(_) => Err(FramingError::Chunk("invalid chunk size")),
            },
            State::Data(left) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let take = (buf.len() as u64).min(left);
                self.state = match left - take {
                    0 => State::DataEnd,
                    n => State::Data(n),
                };
                Ok(Step::Data(take as usize))
            }
            State::DataEnd => match buf {
                [b'\r', b'\n', ..] => {
                    self.state = State::Size;
                    Ok(Step::Framing(2))
                }
                [] | [b'\r'] => Ok(Step::More),
                _ => Err(FramingError::Chunk("no CRLF after chunk data")),
            },
            State::Trailers => {
                let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
                    if buf.len() > MAX_LINE {
                        return Err(FramingError::Chunk("trailer line too long"));
                    }
                    return Ok(Step::More);
                };
                if eol == 0 {
                    self.state = State::Done;
                    return Ok(Step::Done(2));
                }
                Ok(Step::Framing(eol + 2))
            }
        }
    }

    /// Consumes what it can of `buf`: returns the bytes consumed (the caller forwards them and
    /// keeps the rest for the next call, with more bytes after it) and whether the body ended.
    /// It consumes nothing only when it needs more bytes than `buf` has to decide.
    pub fn advance(&mut self, buf: &[u8]) -> Result<(usize, bool), FramingError> {
        let mut at = 0;
        loop {
            match self.step(buf.get(at..).unwrap_or_default())? {
                Step::Framing(n) | Step::Data(n) => at += n,
                Step::More => return Ok((at, false)),
                Step::Done(n) => return Ok((at + n, true)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(s: &str) -> Head {
        response_head(s.as_bytes(), false).unwrap().unwrap()
    }

    #[test]
    fn heads_give_their_body_framing() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!((h.status, h.len, h.body), (200, 38, Body::Length(5)));
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").body,
            Body::Chunked
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n").body,
            Body::UntilClose
        );
        assert_eq!(head("HTTP/1.1 200 OK\r\n\r\n").body, Body::UntilClose);
        assert_eq!(
            head("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").body,
            Body::None
        );
        assert_eq!(
            head("HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n").body,
            Body::None
        );
        assert_eq!(head("HTTP/1.1 304 Not Modified\r\n\r\n").body, Body::None);
        let early = head("HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n");
        assert!(early.interim && early.body == Body::None);
        let up = head("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n");
        assert!(!up.interim && up.body == Body::Switched);
        let to_head = response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n", true).unwrap();
        assert_eq!(to_head.unwrap().body, Body::None);
        // The same length twice is one length.
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n").body,
            Body::Length(3)
        );
    }

    #[test]
    fn heads_say_whether_the_connection_stays_open() {
        assert!(head("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(!head("HTTP/1.1 200 OK\r\nConnection: Keep-Alive, close\r\n\r\n").keep_alive);
        assert!(!head("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(head("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n").keep_alive);
    }

    #[test]
    fn incomplete_heads_wait_and_bad_ones_are_refused() {
        assert_eq!(
            response_head(b"HTTP/1.1 200 OK\r\nContent-Le", false),
            Ok(None)
        );
        let bad = |s: &str| response_head(s.as_bytes(), false).unwrap_err();
        assert_eq!(
            bad("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
            FramingError::ConflictingLengths
        );
        assert_eq!(
            bad("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"),
            FramingError::BadLength
        );
        assert_eq!(
            bad("HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n"),
            FramingError::BadLength
        );
        assert_eq!(
            bad("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            FramingError::LengthAndEncoding
        );
        assert!(matches!(
            bad("HTTP/1.1 2x0 OK\r\n\r\n"),
            FramingError::Head(_)
        ));
        let huge = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_HEAD + 1));
        assert_eq!(bad(&huge), FramingError::HeadTooLarge);
    }

    const BODY: &[u8] = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\nNEXT";

    #[test]
    fn a_chunked_body_ends_after_its_trailers_whole_or_byte_by_byte() {
        let mut c = Chunked::default();
        assert_eq!(c.advance(BODY).unwrap(), (BODY.len() - 4, true));
        // Fed one byte at a time (keeping what was not consumed), it ends at the same place.
        let mut c = Chunked::default();
        let (mut kept, mut total) = (Vec::new(), 0);
        for &b in BODY {
            kept.push(b);
            let (n, done) = c.advance(&kept).unwrap();
            total += n;
            kept.drain(..n);
            if done {
                break;
            }
        }
        assert_eq!(total, BODY.len() - 4);
    }

    #[test]
    fn a_chunked_body_without_trailers_and_bad_ones() {
        let mut c = Chunked::default();
        assert_eq!(c.advance(b"3\r\nabc\r\n0\r\n\r\n").unwrap(), (13, true));
        let bad = |b: &[u8]| Chunked::default().advance(b).unwrap_err();
        assert_eq!(bad(b"zz\r\n"), FramingError::Chunk("invalid chunk size"));
        assert_eq!(
            bad(b"3\r\nabcXY"),
            FramingError::Chunk("no CRLF after chunk data")
        );
        assert_eq!(
            bad(&vec![b'1'; MAX_LINE + 2]),
            FramingError::Chunk("invalid chunk size")
        );
        let mut long = b"0\r\nX: ".to_vec();
        long.extend(vec![b'a'; MAX_LINE + 1]);
        assert_eq!(bad(&long), FramingError::Chunk("trailer line too long"));
        // Stepping names data apart from framing.
        let mut c = Chunked::default();
        let mut buf: &[u8] = b"3\r\nabc\r\n0\r\n\r\n";
        let mut data = Vec::new();
        loop {
            match c.step(buf).unwrap() {
                Step::Data(n) => {
                    data.extend_from_slice(&buf[..n]);
                    buf = &buf[n..];
                }
                Step::Framing(n) => buf = &buf[n..],
                Step::Done(n) => {
                    assert_eq!(n, buf.len());
                    break;
                }
                Step::More => panic!("all bytes were there"),
            }
        }
        assert_eq!(data, b"abc");
        // Partial: nothing decided yet is consumed.
        assert_eq!(Chunked::default().advance(b"1").unwrap(), (0, false));
    }
}
