//! A response the proxy built, written as HTTP/1.1 bytes by the gateway's own front
//! (`proxy::conn`): the status line and headers, the framing the body's size asks for
//! (`Content-Length`, or chunked when the size is unknown), no body after HEAD, 1xx, 204 or
//! 304, and the head with the first body bytes in one write when they are at hand.

use std::io;
use std::pin::Pin;
use std::task::Poll;

use actix_web::HttpResponse;
use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::http::StatusCode;
use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Body bytes gathered before a write: small chunks share a write, a large one goes alone.
const GATHER: usize = 64 * 1024;

/// How a written response left the connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    /// Complete; the connection may carry the next request.
    Whole,
    /// Complete, and it said `Connection: close`.
    Closing,
}

/// Writes `resp` to `out`. `head_request` says the request was HEAD (the framing headers a
/// GET would get, no body); `close` adds `Connection: close`. A body that fails or ends
/// short of its length is an error: the caller cuts the connection, so the client sees a
/// broken transfer, never a clean end.
pub async fn write_response<W: AsyncWrite + Unpin>(
    out: &mut W,
    resp: HttpResponse,
    head_request: bool,
    close: bool,
) -> io::Result<Written> {
    let (resp, body) = resp.into_parts();
    let status = resp.status();
    let size = body.size();
    let bodiless = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut buf = Vec::with_capacity(512);
    buf.extend_from_slice(b"HTTP/1.1 ");
    buf.extend_from_slice(status.as_str().as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    buf.extend_from_slice(b"\r\n");
    let mut has_length = false;
    let mut has_date = false;
    for (name, value) in resp.headers() {
        match name.as_str() {
            "content-length" => has_length = true,
            "date" => has_date = true,
            // The gateway frames the body and says what becomes of the connection.
            "transfer-encoding" | "connection" => continue,
            _ => {}
        }
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    let chunked = !has_length
        && match size {
            BodySize::None => false,
            BodySize::Sized(n) => {
                let no_length = status.is_informational()
                    || status == StatusCode::NO_CONTENT
                    || (status == StatusCode::NOT_MODIFIED && n == 0);
                if !no_length {
                    buf.extend_from_slice(b"content-length: ");
                    buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                    buf.extend_from_slice(b"\r\n");
                }
                false
            }
            BodySize::Stream => {
                if !bodiless {
                    buf.extend_from_slice(b"transfer-encoding: chunked\r\n");
                }
                !bodiless
            }
        };
    if !has_date {
        buf.extend_from_slice(b"date: ");
        buf.extend_from_slice(&http_date());
        buf.extend_from_slice(b"\r\n");
    }
    if close {
        buf.extend_from_slice(b"connection: close\r\n");
    }
    buf.extend_from_slice(b"\r\n");
    let done = if close {
        Written::Closing
    } else {
        Written::Whole
    };
    if bodiless {
        // Dropping the body ends the stream behind it (a RESET to the agent if it had more).
        drop(body);
        out.write_all(&buf).await?;
        return Ok(done);
    }
    let expected = match size {
        BodySize::Sized(n) => Some(n),
        _ => None,
    };
    let mut sent = 0u64;
    let mut body = body;
    loop {
        // What the body has now goes with what is gathered; before waiting for more, the
        // gathered bytes are written.
        let next = match poll_now(&mut body) {
            Some(next) => next,
            None => {
                if !buf.is_empty() {
                    out.write_all(&buf).await?;
                    buf.clear();
                }
                std::future::poll_fn(|cx| Pin::new(&mut body).poll_next(cx)).await
            }
        };
        let chunk: Bytes = match next {
            None => break,
            Some(Ok(c)) => c,
            Some(Err(e)) => return Err(io::Error::other(e.to_string())),
        };
        if chunk.is_empty() {
            continue;
        }
        sent += chunk.len() as u64;
        if expected.is_some_and(|n| sent > n) {
            return Err(io::Error::other("the body is longer than its length"));
        }
        if chunked {
            buf.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        }
        if buf.len() + chunk.len() <= GATHER {
            buf.extend_from_slice(&chunk);
        } else {
            if !buf.is_empty() {
                out.write_all(&buf).await?;
                buf.clear();
            }
            out.write_all(&chunk).await?;
        }
        if chunked {
            buf.extend_from_slice(b"\r\n");
        }
    }
    if expected.is_some_and(|n| sent != n) {
        return Err(io::Error::other("the body ended short of its length"));
    }
    if chunked {
        buf.extend_from_slice(b"0\r\n\r\n");
    }
    if !buf.is_empty() {
        out.write_all(&buf).await?;
    }
    Ok(done)
}

/// The body's next item if it has one without waiting.
fn poll_now(body: &mut BoxBody) -> Option<Option<Result<Bytes, Box<dyn std::error::Error>>>> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match Pin::new(body).poll_next(&mut cx) {
        Poll::Ready(x) => Some(x),
        Poll::Pending => None,
    }
}

/// Now as an HTTP date, formatted once a second per thread.
fn http_date() -> [u8; 29] {
    use std::cell::Cell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: Cell<(u64, [u8; 29])> = const { Cell::new((0, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let (at, text) = c.get();
        if at == secs && at != 0 {
            return text;
        }
        let mut fresh = [b' '; 29];
        for (d, b) in fresh.iter_mut().zip(httpdate::fmt_http_date(now).bytes()) {
            *d = b;
        }
        c.set((secs, fresh));
        fresh
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn written(resp: HttpResponse, head: bool, close: bool) -> (String, Written) {
        let mut out = Vec::new();
        let w = write_response(&mut out, resp, head, close).await.unwrap();
        (String::from_utf8(out).unwrap(), w)
    }

    #[tokio::test]
    async fn sized_bodies_have_a_length_and_streams_are_chunked() {
        let (t, w) = written(HttpResponse::Ok().body("hello"), false, false).await;
        assert!(t.starts_with("HTTP/1.1 200 OK\r\n"), "{t}");
        assert!(t.contains("\r\ncontent-length: 5\r\n"), "{t}");
        assert!(t.contains("\r\ndate: "), "{t}");
        assert!(t.ends_with("\r\n\r\nhello"), "{t}");
        assert_eq!(w, Written::Whole);
        let chunks = futures_util::stream::iter(vec![
            Ok::<_, std::io::Error>(Bytes::from_static(b"ab")),
            Ok(Bytes::from_static(b"cde")),
        ]);
        let (t, _) = written(
            HttpResponse::Ok().body(actix_web::body::BodyStream::new(chunks)),
            false,
            true,
        )
        .await;
        assert!(t.contains("\r\ntransfer-encoding: chunked\r\n"), "{t}");
        assert!(t.contains("\r\nconnection: close\r\n"), "{t}");
        assert!(
            t.ends_with("\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"),
            "{t}"
        );
    }

    #[tokio::test]
    async fn no_body_after_head_204_or_304() {
        let (t, _) = written(HttpResponse::Ok().body("hello"), true, false).await;
        assert!(t.contains("\r\ncontent-length: 5\r\n"), "{t}");
        assert!(t.ends_with("\r\n\r\n"), "{t}");
        let (t, _) = written(HttpResponse::NoContent().finish(), false, false).await;
        assert!(!t.contains("content-length"), "{t}");
        assert!(t.ends_with("\r\n\r\n"), "{t}");
        let (t, _) = written(HttpResponse::NotModified().finish(), false, false).await;
        assert!(!t.contains("content-length"), "{t}");
    }

    #[tokio::test]
    async fn a_body_short_of_its_length_is_an_error() {
        let short =
            futures_util::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from_static(b"abc"))]);
        let resp = HttpResponse::Ok().body(actix_web::body::SizedStream::new(10, short));
        let mut out = Vec::new();
        assert!(write_response(&mut out, resp, false, false).await.is_err());
        let failing = futures_util::stream::iter(vec![
            Ok(Bytes::from_static(b"abc")),
            Err(std::io::Error::other("cut")),
        ]);
        let resp = HttpResponse::Ok().body(actix_web::body::BodyStream::new(failing));
        let mut out = Vec::new();
        assert!(write_response(&mut out, resp, false, false).await.is_err());
        // No chunked terminator: the client cannot take it for a whole body.
        assert!(!String::from_utf8_lossy(&out).ends_with("0\r\n\r\n"));
    }
}
