//! Protocol 3's heads: a stream's request and response heads as binary frames instead of JSON
//! control messages (ADR 0010, "Versioned"), both `[kind u8][stream_id u32 BE][payload]` like
//! every frame.
//! - REQUEST_HEAD (gateway → agent, or node → node on a peer link): the `proxy_request` in
//!   postcard, field by field in the order of [`RequestOut`] (the peer-link fields last).
//! - RESPONSE_HEAD (agent → gateway, or back on a peer link): one flags byte and the
//!   upstream's HTTP/1.1 response head as it was read, status line and fields to the empty
//!   line, so the agent sends what it read without taking it apart. The gateway parses it here, once, into the same `proxy_response`
//!   the JSON carried (names lower case). Flags: 0, no body; 1, the body follows as DATA
//!   frames and an END; 3, the whole body follows the head in this frame (at most a frame's
//!   payload, counted against the stream's window as DATA would be) and the response ends —
//!   one message where a small response took three.
//!
//! Both decoders take untrusted bytes: every failure is a [`HeadError`], never a panic, and
//! nothing they allocate is larger than the message.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::control::{HeaderList, KubeIdentity, ProxyRequest, ProxyResponse};
use crate::frame::{HEADER_LEN, StreamId};
use crate::limits::MAX_FRAME_PAYLOAD;

/// Frame kind of a request head (protocol 3).
pub const KIND_REQUEST_HEAD: u8 = 7;
/// Frame kind of a response head (protocol 3).
pub const KIND_RESPONSE_HEAD: u8 = 8;
/// RESPONSE_HEAD flags: a body follows.
const FLAG_BODY: u8 = 1;
/// RESPONSE_HEAD flags: the whole body is in this frame, after the head, and ends there.
const FLAG_WHOLE: u8 = 2;
/// Fields a response head may have (as many as the agent's HTTP/1.1 parser takes).
const MAX_FIELDS: usize = crate::h1::MAX_HEADERS;

/// Why a head frame is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("head frame of {0} bytes is too short")]
    Truncated(usize),
    #[error("frame kind {0} is not a head")]
    NotAHead(u8),
    #[error("stream id 0 is reserved")]
    ZeroStream,
    #[error("request head: {0}")]
    Request(String),
    #[error("response head: {0}")]
    Response(String),
}

/// What the gateway writes: borrowed from the `ProxyRequest`, nothing copied.
#[derive(Serialize)]
struct RequestOut<'a> {
    method: &'a str,
    host: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    headers: &'a [(String, String)],
    body: bool,
    request_id: Option<&'a str>,
    upgrade: Option<&'a str>,
    kubernetes: Option<&'a KubeIdentity>,
    probe: bool,
    traceparent: Option<&'a str>,
    cluster: Option<&'a str>,
    conns: &'a [String],
    hops: u8,
}

/// What the agent reads: [`RequestOut`]'s fields in the same order, owned.
#[derive(Deserialize)]
struct RequestIn {
    method: String,
    host: String,
    path: String,
    query: Option<String>,
    headers: HeaderList,
    body: bool,
    request_id: Option<String>,
    upgrade: Option<String>,
    kubernetes: Option<KubeIdentity>,
    probe: bool,
    traceparent: Option<String>,
    cluster: Option<String>,
    conns: Vec<String>,
    hops: u8,
}

/// Whether a message is a head frame (and so for [`decode_request`] or [`decode_response`]).
pub fn is_head(msg: &[u8]) -> bool {
    matches!(
        msg.first(),
        Some(&KIND_REQUEST_HEAD) | Some(&KIND_RESPONSE_HEAD)
    )
}

fn header(kind: u8, stream: StreamId, capacity: usize) -> BytesMut {
    let mut buf = BytesMut::with_capacity(HEADER_LEN + capacity);
    buf.put_u8(kind);
    buf.put_u32(stream);
    buf
}

/// The REQUEST_HEAD frame of `r` (its `stream_id` is the frame's).
pub fn encode_request(r: &ProxyRequest) -> Bytes {
    let out = RequestOut {
        method: &r.method,
        host: &r.host,
        path: &r.path,
        query: r.query.as_deref(),
        headers: &r.headers,
        body: r.body,
        request_id: r.request_id.as_deref(),
        upgrade: r.upgrade.as_deref(),
        kubernetes: r.kubernetes.as_ref(),
        probe: r.probe,
        traceparent: r.traceparent.as_deref(),
        cluster: r.cluster.as_deref(),
        conns: &r.conns,
        hops: r.hops,
    };
    let guess = 64
        + r.path.len()
        + r.headers
            .iter()
            .map(|(n, v)| n.len() + v.len() + 2)
            .sum::<usize>();
    let mut buf = Vec::with_capacity(HEADER_LEN + guess);
    buf.push(KIND_REQUEST_HEAD);
    buf.extend_from_slice(&r.stream_id.to_be_bytes());
    match postcard::to_extend(&out, buf) {
        Ok(buf) => Bytes::from(buf),
        // Writing into a growing buffer cannot fail; an empty head is refused by the agent.
        Err(_) => Bytes::new(),
    }
}

/// Splits a head frame into its kind, stream and payload.
fn split(msg: &[u8], want: u8) -> Result<(StreamId, &[u8]), HeadError> {
    let (Some(&kind), Some(id), Some(payload)) =
        (msg.first(), msg.get(1..HEADER_LEN), msg.get(HEADER_LEN..))
    else {
        return Err(HeadError::Truncated(msg.len()));
    };
    if kind != want {
        return Err(HeadError::NotAHead(kind));
    }
    let id = u32::from_be_bytes(id.try_into().map_err(|_| HeadError::Truncated(msg.len()))?);
    if id == 0 {
        return Err(HeadError::ZeroStream);
    }
    Ok((id, payload))
}

/// Reads a REQUEST_HEAD frame.
pub fn decode_request(msg: &[u8]) -> Result<ProxyRequest, HeadError> {
    let (stream_id, payload) = split(msg, KIND_REQUEST_HEAD)?;
    let (r, rest): (RequestIn, _) =
        postcard::take_from_bytes(payload).map_err(|e| HeadError::Request(e.to_string()))?;
    if !rest.is_empty() {
        return Err(HeadError::Request(format!(
            "{} bytes after the head",
            rest.len()
        )));
    }
    Ok(ProxyRequest {
        stream_id,
        method: r.method,
        host: r.host,
        path: r.path,
        query: r.query,
        headers: r.headers,
        body: r.body,
        request_id: r.request_id,
        cluster: r.cluster,
        conns: r.conns,
        hops: r.hops,
        upgrade: r.upgrade,
        kubernetes: r.kubernetes,
        probe: r.probe,
        traceparent: r.traceparent,
    })
}

/// The RESPONSE_HEAD frame of an upstream's head as read: `raw` is its bytes up to and with
/// the empty line (interim 1xx heads already left out); `body`: DATA frames will follow.
pub fn response_from_raw(stream: StreamId, body: bool, raw: &[u8]) -> Bytes {
    raw_frame(stream, if body { FLAG_BODY } else { 0 }, raw, &[])
}

/// The RESPONSE_HEAD frame of a whole response: the head as read and its entire body (at
/// most [`MAX_FRAME_PAYLOAD`] bytes, which the sender holds credit for).
pub fn response_whole(stream: StreamId, raw: &[u8], body: &[u8]) -> Bytes {
    raw_frame(stream, FLAG_BODY | FLAG_WHOLE, raw, body)
}

fn raw_frame(stream: StreamId, flags: u8, raw: &[u8], body: &[u8]) -> Bytes {
    let mut buf = header(KIND_RESPONSE_HEAD, stream, 1 + raw.len() + body.len());
    buf.put_u8(flags);
    buf.put_slice(raw);
    buf.put_slice(body);
    buf.freeze()
}

/// The RESPONSE_HEAD frame of a head the agent built itself (an HTTP client's response, a
/// probe's answer, the Kubernetes API's).
pub fn encode_response(r: &ProxyResponse) -> Bytes {
    encode_response_with(r, None)
}

/// [`encode_response`], with the whole body in the frame when `whole` is given (a node
/// passing on a response it has whole; at most [`MAX_FRAME_PAYLOAD`] bytes).
pub fn encode_response_with(r: &ProxyResponse, whole: Option<&[u8]>) -> Bytes {
    let fields: usize = r.headers.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
    let extra = whole.map_or(0, <[u8]>::len);
    let mut buf = header(KIND_RESPONSE_HEAD, r.stream_id, 1 + 16 + fields + 2 + extra);
    buf.put_u8(match (whole, r.body) {
        (Some(_), _) => FLAG_BODY | FLAG_WHOLE,
        (None, true) => FLAG_BODY,
        (None, false) => 0,
    });
    buf.put_slice(b"HTTP/1.1 ");
    // The status goes as three digits whatever it is: the gateway checks it.
    let status = r.status.min(999);
    for d in [status / 100, status / 10 % 10, status % 10] {
        buf.put_u8(b'0' + u8::try_from(d).unwrap_or(0));
    }
    buf.put_slice(b" \r\n");
    for (n, v) in &r.headers {
        buf.put_slice(n.as_bytes());
        buf.put_slice(b": ");
        buf.put_slice(v.as_bytes());
        buf.put_slice(b"\r\n");
    }
    buf.put_slice(b"\r\n");
    if let Some(body) = whole {
        buf.put_slice(body);
    }
    buf.freeze()
}

/// A RESPONSE_HEAD frame's head, checked and kept as it came: one whole HTTP/1.1 response
/// head (`head`, shared with the frame). Its fields are read from it where they are needed,
/// their values shared with the frame rather than copied into strings.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub stream_id: StreamId,
    pub status: u16,
    /// DATA frames and an END follow (or the whole body came in the frame).
    pub body: bool,
    /// The head's bytes, with the empty line that ends it.
    pub head: Bytes,
}

impl RawResponse {
    /// Calls `f` with the head's fields (names as sent, values borrowed from [`Self::head`],
    /// whose [`Bytes::slice_ref`] shares one).
    pub fn with_fields<R>(&self, f: impl FnOnce(&[httparse::Header<'_>]) -> R) -> R {
        let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_FIELDS];
        let mut resp = httparse::Response::new(&mut []);
        // Parsed once already when the frame was read: this cannot fail.
        match parse_response(&mut resp, &self.head, &mut slots) {
            Ok(_) => f(resp.headers),
            Err(_) => f(&[]),
        }
    }

    /// Calls `f` with each field: its name as sent and its value (shared with the frame).
    pub fn for_each_field(&self, mut f: impl FnMut(&str, Bytes)) {
        self.with_fields(|fields| {
            for h in fields {
                f(h.name, self.head.slice_ref(h.value));
            }
        })
    }

    /// The same head as a `proxy_response` (names lower case, values as text with invalid
    /// UTF-8 replaced): for JSON links, and for the few places that keep a field list.
    pub fn to_proxy_response(&self) -> ProxyResponse {
        let mut headers = Vec::new();
        self.for_each_field(|n, v| {
            headers.push((
                n.to_ascii_lowercase(),
                String::from_utf8_lossy(&v).into_owned(),
            ))
        });
        ProxyResponse {
            stream_id: self.stream_id,
            status: self.status,
            headers,
            body: self.body,
        }
    }
}

/// Parses a response head into `resp`, its fields in `slots` (left uninitialised until the
/// parser writes them: zeroing a hundred slots per head was a cost of its own).
pub fn parse_response<'h, 'b>(
    resp: &mut httparse::Response<'h, 'b>,
    buf: &'b [u8],
    slots: &'h mut [std::mem::MaybeUninit<httparse::Header<'b>>],
) -> httparse::Result<usize> {
    httparse::ParserConfig::default().parse_response_with_uninit_headers(resp, buf, slots)
}

/// Reads a RESPONSE_HEAD frame: its head, checked to be one whole HTTP/1.1 response head
/// without bytes after it it should not have, and the whole body when the frame carries it
/// (both shared with `msg`, not copied).
pub fn decode_response_raw(msg: &Bytes) -> Result<(RawResponse, Option<Bytes>), HeadError> {
    let (stream_id, payload) = split(msg, KIND_RESPONSE_HEAD)?;
    let (flags, raw) = payload
        .split_first()
        .ok_or(HeadError::Truncated(msg.len()))?;
    let (body, whole) = match *flags {
        0 => (false, false),
        FLAG_BODY => (true, false),
        f if f == FLAG_BODY | FLAG_WHOLE => (true, true),
        f => return Err(HeadError::Response(format!("unknown flags {f:#x}"))),
    };
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_FIELDS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match parse_response(&mut resp, raw, &mut slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Err(HeadError::Response("the head does not end".into()));
        }
        Err(e) => return Err(HeadError::Response(e.to_string())),
    };
    let rest = raw.len() - len;
    // The head's offset in `msg`: kind, stream id, flags.
    let at = HEADER_LEN + 1;
    let inline = match whole {
        false if rest > 0 => {
            return Err(HeadError::Response(format!("{rest} bytes after the head")));
        }
        false => None,
        true if rest > MAX_FRAME_PAYLOAD => {
            return Err(HeadError::Response(format!(
                "a whole body of {rest} bytes is over the frame limit of {MAX_FRAME_PAYLOAD}"
            )));
        }
        true => Some(msg.slice(at + len..)),
    };
    let head = RawResponse {
        stream_id,
        status: resp.code.unwrap_or(0),
        body,
        head: msg.slice(at..at + len),
    };
    Ok((head, inline))
}

/// Reads a RESPONSE_HEAD frame into the `proxy_response` it stands for ([`decode_response_raw`],
/// its fields as text) and the whole body when the frame carries it.
pub fn decode_response(msg: &Bytes) -> Result<(ProxyResponse, Option<Bytes>), HeadError> {
    let (raw, inline) = decode_response_raw(msg)?;
    Ok((raw.to_proxy_response(), inline))
}

#[cfg(test)]
#[path = "head_tests.rs"]
mod tests;
