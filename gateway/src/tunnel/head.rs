//! A stream's response head as its link delivered it: a JSON `proxy_response` (protocol 2, and
//! heads built by an agent's HTTP client in any protocol's JSON), or protocol 3's head frame
//! kept as received (`proto::head::RawResponse`), whose field values are shared with the
//! frame instead of copied into strings.

use bytes::Bytes;
use tunnelgate_mux::Outgoing;
use tunnelgate_proto::control::ProxyResponse;
use tunnelgate_proto::frame::StreamId;
use tunnelgate_proto::head::{self, RawResponse};

#[derive(Debug)]
pub enum Head {
    Json(ProxyResponse),
    Raw(RawResponse),
}

impl Head {
    pub fn stream_id(&self) -> StreamId {
        match self {
            Head::Json(r) => r.stream_id,
            Head::Raw(r) => r.stream_id,
        }
    }

    pub fn set_stream_id(&mut self, id: StreamId) {
        match self {
            Head::Json(r) => r.stream_id = id,
            Head::Raw(r) => r.stream_id = id,
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Head::Json(r) => r.status,
            Head::Raw(r) => r.status,
        }
    }

    /// A body follows.
    pub fn body(&self) -> bool {
        match self {
            Head::Json(r) => r.body,
            Head::Raw(r) => r.body,
        }
    }

    /// Calls `f` with the fields (names lower case from JSON, as sent in a head frame) and,
    /// for a head frame, the bytes their values are borrowed from (to share them, not copy).
    pub fn with_fields<R>(
        &self,
        f: impl FnOnce(&[httparse::Header<'_>], Option<&Bytes>) -> R,
    ) -> R {
        match self {
            Head::Json(r) => {
                let fields: Vec<httparse::Header<'_>> = r
                    .headers
                    .iter()
                    .map(|(name, value)| httparse::Header {
                        name,
                        value: value.as_bytes(),
                    })
                    .collect();
                f(&fields, None)
            }
            Head::Raw(r) => r.with_fields(|fields| f(fields, Some(&r.head))),
        }
    }

    /// The head to pass on over a link: a head frame in protocol 3 (a head that came as one
    /// goes on as it came), else JSON.
    pub fn outgoing(self, binary: bool) -> Outgoing {
        match (self, binary) {
            (Head::Raw(r), true) => {
                Outgoing::Binary(head::response_from_raw(r.stream_id, r.body, &r.head))
            }
            (h, binary) => Outgoing::response_head(h.into_proxy_response(), binary),
        }
    }

    /// The head frame of the head with its whole `body` (protocol 3).
    pub fn whole_frame(&self, body: &[u8]) -> Bytes {
        match self {
            Head::Raw(r) => head::response_whole(r.stream_id, &r.head, body),
            Head::Json(r) => head::encode_response_with(r, Some(body)),
        }
    }

    /// The head as a `proxy_response`.
    pub fn into_proxy_response(self) -> ProxyResponse {
        match self {
            Head::Json(r) => r,
            Head::Raw(r) => r.to_proxy_response(),
        }
    }
}
