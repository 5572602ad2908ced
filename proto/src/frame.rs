//! Binary data frames: `[u8 kind][u32 stream_id, big endian][payload]`.
//!
//! One WebSocket binary message carries exactly one frame, so the WebSocket layer already
//! delimits frames and [`Frame::decode`] takes a whole message: a message shorter than its
//! header is an error (truncated), never "wait for more". This is the one place frame bytes
//! are read or written.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::limits::MAX_FRAME_PAYLOAD;

/// Identifies a stream within one tunnel. 0 is reserved and never used.
pub type StreamId = u32;

/// Bytes before the payload: kind and stream id.
pub const HEADER_LEN: usize = 5;

const KIND_DATA: u8 = 0;
const KIND_END: u8 = 1;
const KIND_RESET: u8 = 2;
const KIND_WINDOW: u8 = 3;
const KIND_WS_TEXT: u8 = 4;
const KIND_WS_BINARY: u8 = 5;
const KIND_WS_CLOSE: u8 = 6;

/// Why a stream was reset. Unknown codes from a newer peer are kept as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResetCode(pub u32);

impl ResetCode {
    /// The other side no longer wants the stream (client went away, request finished early).
    pub const CANCEL: ResetCode = ResetCode(0);
    /// The peer broke the protocol on this stream.
    pub const PROTOCOL: ResetCode = ResetCode(1);
    /// The peer sent more than its window allowed.
    pub const FLOW_CONTROL: ResetCode = ResetCode(2);
    /// The stream was refused before any work was done; safe to retry.
    pub const REFUSED: ResetCode = ResetCode(3);
    /// The upstream failed after the response started.
    pub const UPSTREAM: ResetCode = ResetCode(4);
    /// A timeout fired on this stream.
    pub const TIMEOUT: ResetCode = ResetCode(5);
    /// An internal error on the side that resets.
    pub const INTERNAL: ResetCode = ResetCode(6);

    /// A short name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "cancel",
            1 => "protocol",
            2 => "flow_control",
            3 => "refused",
            4 => "upstream",
            5 => "timeout",
            6 => "internal",
            _ => "unknown",
        }
    }
}

/// One binary frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Body bytes of an HTTP stream.
    Data { stream: StreamId, data: Bytes },
    /// The sender will send no more data on this stream (half-close).
    End { stream: StreamId },
    /// The stream is abandoned in both directions.
    Reset { stream: StreamId, code: ResetCode },
    /// The receiver grants `credit` more bytes to the sender.
    Window { stream: StreamId, credit: u32 },
    /// A WebSocket text message of a proxied WebSocket session.
    WsText { stream: StreamId, data: Bytes },
    /// A WebSocket binary message of a proxied WebSocket session.
    WsBinary { stream: StreamId, data: Bytes },
    /// A WebSocket close of a proxied session: status code and reason.
    WsClose {
        stream: StreamId,
        code: u16,
        reason: Bytes,
    },
}

/// Why a message is not a frame. Each is the peer's fault; the tunnel decides what to close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame of {0} bytes is shorter than its 5-byte header")]
    Truncated(usize),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("frame payload of {len} bytes is over the limit of {max}")]
    Oversized { len: usize, max: usize },
    #[error("{kind} frame needs a payload of {expected} bytes, got {got}")]
    BadLength {
        kind: &'static str,
        expected: &'static str,
        got: usize,
    },
    #[error("stream id 0 is reserved")]
    ZeroStream,
    #[error("window frame grants no credit")]
    ZeroCredit,
}

impl Frame {
    /// The stream this frame belongs to.
    pub fn stream(&self) -> StreamId {
        match self {
            Frame::Data { stream, .. }
            | Frame::End { stream }
            | Frame::Reset { stream, .. }
            | Frame::Window { stream, .. }
            | Frame::WsText { stream, .. }
            | Frame::WsBinary { stream, .. }
            | Frame::WsClose { stream, .. } => *stream,
        }
    }

    /// A short name for logs.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Frame::Data { .. } => "DATA",
            Frame::End { .. } => "END",
            Frame::Reset { .. } => "RESET",
            Frame::Window { .. } => "WINDOW",
            Frame::WsText { .. } => "WS_TEXT",
            Frame::WsBinary { .. } => "WS_BINARY",
            Frame::WsClose { .. } => "WS_CLOSE",
        }
    }

    /// Bytes this frame takes on the wire (header included).
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN
            + match self {
                Frame::Data { data, .. }
                | Frame::WsText { data, .. }
                | Frame::WsBinary { data, .. } => data.len(),
                Frame::End { .. } => 0,
                Frame::Reset { .. } | Frame::Window { .. } => 4,
                Frame::WsClose { reason, .. } => 2 + reason.len(),
            }
    }

    /// The payload of a frame that carries bytes (DATA and the WebSocket data frames), which
    /// a writer may send after [`encode_head`](Self::encode_head) without copying it.
    pub fn bytes(&self) -> Option<&Bytes> {
        match self {
            Frame::Data { data, .. }
            | Frame::WsText { data, .. }
            | Frame::WsBinary { data, .. } => Some(data),
            _ => None,
        }
    }

    /// Appends the frame's header (kind and stream, [`HEADER_LEN`] bytes) to `dst`.
    pub fn encode_head(&self, dst: &mut BytesMut) {
        let (kind, stream) = match self {
            Frame::Data { stream, .. } => (KIND_DATA, stream),
            Frame::End { stream } => (KIND_END, stream),
            Frame::Reset { stream, .. } => (KIND_RESET, stream),
            Frame::Window { stream, .. } => (KIND_WINDOW, stream),
            Frame::WsText { stream, .. } => (KIND_WS_TEXT, stream),
            Frame::WsBinary { stream, .. } => (KIND_WS_BINARY, stream),
            Frame::WsClose { stream, .. } => (KIND_WS_CLOSE, stream),
        };
        dst.put_u8(kind);
        dst.put_u32(*stream);
    }

    /// Appends the frame to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(self.encoded_len());
        self.encode_head(dst);
        match self {
            Frame::Data { data, .. }
            | Frame::WsText { data, .. }
            | Frame::WsBinary { data, .. } => dst.extend_from_slice(data),
            Frame::End { .. } => {}
            Frame::Reset { code, .. } => dst.put_u32(code.0),
            Frame::Window { credit, .. } => dst.put_u32(*credit),
            Frame::WsClose { code, reason, .. } => {
                dst.put_u16(*code);
                dst.extend_from_slice(reason);
            }
        }
    }

    /// The frame as one WebSocket message's payload.
    pub fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut buf);
        buf.freeze()
    }

    /// Decodes one whole WebSocket binary message. Payload bytes are shared with `msg`, not
    /// copied.
    pub fn decode(mut msg: Bytes) -> Result<Frame, DecodeError> {
        if msg.len() < HEADER_LEN {
            return Err(DecodeError::Truncated(msg.len()));
        }
        let kind = msg.get_u8();
        let stream = msg.get_u32();
        if kind > KIND_WS_CLOSE {
            return Err(DecodeError::UnknownKind(kind));
        }
        if stream == 0 {
            return Err(DecodeError::ZeroStream);
        }
        if msg.len() > MAX_FRAME_PAYLOAD {
            return Err(DecodeError::Oversized {
                len: msg.len(),
                max: MAX_FRAME_PAYLOAD,
            });
        }
        let exact = |name: &'static str, expected: &'static str, want: usize, msg: &Bytes| {
            if msg.len() == want {
                Ok(())
            } else {
                Err(DecodeError::BadLength {
                    kind: name,
                    expected,
                    got: msg.len(),
                })
            }
        };
        Ok(match kind {
            KIND_DATA => Frame::Data { stream, data: msg },
            KIND_END => {
                exact("END", "0", 0, &msg)?;
                Frame::End { stream }
            }
            KIND_RESET => {
                exact("RESET", "4", 4, &msg)?;
                Frame::Reset {
                    stream,
                    code: ResetCode(msg.get_u32()),
                }
            }
            KIND_WINDOW => {
                exact("WINDOW", "4", 4, &msg)?;
                let credit = msg.get_u32();
                if credit == 0 {
                    return Err(DecodeError::ZeroCredit);
                }
                Frame::Window { stream, credit }
            }
            KIND_WS_TEXT => Frame::WsText { stream, data: msg },
            KIND_WS_BINARY => Frame::WsBinary { stream, data: msg },
            _ => {
                if msg.len() < 2 {
                    return Err(DecodeError::BadLength {
                        kind: "WS_CLOSE",
                        expected: "at least 2",
                        got: msg.len(),
                    });
                }
                let code = msg.get_u16();
                Frame::WsClose {
                    stream,
                    code,
                    reason: msg,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn golden_bytes() {
        let f = Frame::Data {
            stream: 0x01020304,
            data: Bytes::from_static(b"hi"),
        };
        assert_eq!(&f.to_bytes()[..], &[0, 1, 2, 3, 4, b'h', b'i']);
        let w = Frame::Window {
            stream: 7,
            credit: 65536,
        };
        assert_eq!(&w.to_bytes()[..], &[3, 0, 0, 0, 7, 0, 1, 0, 0]);
        let c = Frame::WsClose {
            stream: 1,
            code: 1000,
            reason: Bytes::from_static(b"bye"),
        };
        assert_eq!(
            &c.to_bytes()[..],
            &[6, 0, 0, 0, 1, 0x03, 0xe8, b'b', b'y', b'e']
        );
    }

    #[test]
    fn rejects_bad_input() {
        let d = |b: &'static [u8]| Frame::decode(Bytes::from_static(b));
        assert_eq!(d(&[]), Err(DecodeError::Truncated(0)));
        assert_eq!(d(&[0, 0, 0, 1]), Err(DecodeError::Truncated(4)));
        assert_eq!(d(&[9, 0, 0, 0, 1]), Err(DecodeError::UnknownKind(9)));
        assert_eq!(d(&[0, 0, 0, 0, 0, 1]), Err(DecodeError::ZeroStream));
        assert!(matches!(
            d(&[1, 0, 0, 0, 1, 5]),
            Err(DecodeError::BadLength { .. })
        ));
        assert!(matches!(
            d(&[2, 0, 0, 0, 1, 5]),
            Err(DecodeError::BadLength { .. })
        ));
        assert!(matches!(
            d(&[3, 0, 0, 0, 1]),
            Err(DecodeError::BadLength { .. })
        ));
        assert_eq!(
            d(&[3, 0, 0, 0, 1, 0, 0, 0, 0]),
            Err(DecodeError::ZeroCredit)
        );
        assert!(matches!(
            d(&[6, 0, 0, 0, 1, 3]),
            Err(DecodeError::BadLength { .. })
        ));
        let mut big = vec![0u8, 0, 0, 0, 1];
        big.resize(HEADER_LEN + MAX_FRAME_PAYLOAD + 1, 0);
        assert!(matches!(
            Frame::decode(Bytes::from(big)),
            Err(DecodeError::Oversized { .. })
        ));
    }

    fn any_frame() -> impl Strategy<Value = Frame> {
        let stream = 1u32..;
        let data = proptest::collection::vec(any::<u8>(), 0..2048).prop_map(Bytes::from);
        prop_oneof![
            (stream.clone(), data.clone()).prop_map(|(stream, data)| Frame::Data { stream, data }),
            stream.clone().prop_map(|stream| Frame::End { stream }),
            (stream.clone(), any::<u32>()).prop_map(|(stream, c)| Frame::Reset {
                stream,
                code: ResetCode(c)
            }),
            (stream.clone(), 1u32..).prop_map(|(stream, credit)| Frame::Window { stream, credit }),
            (stream.clone(), data.clone())
                .prop_map(|(stream, data)| Frame::WsText { stream, data }),
            (stream.clone(), data.clone())
                .prop_map(|(stream, data)| Frame::WsBinary { stream, data }),
            (stream, any::<u16>(), data).prop_map(|(stream, code, reason)| Frame::WsClose {
                stream,
                code,
                reason
            }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(f in any_frame()) {
            let bytes = f.to_bytes();
            prop_assert_eq!(bytes.len(), f.encoded_len());
            prop_assert_eq!(Frame::decode(bytes).unwrap(), f);
        }

        #[test]
        fn never_panics_on_garbage(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Frame::decode(Bytes::from(b));
        }

        #[test]
        fn truncation_is_an_error_or_a_shorter_frame(f in any_frame(), cut in 0usize..5) {
            let bytes = f.to_bytes();
            let short = bytes.slice(..cut.min(bytes.len()));
            prop_assert!(Frame::decode(short).is_err());
        }
    }
}
