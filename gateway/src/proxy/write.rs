//! A response the proxy built, written as HTTP/1.1 bytes by the gateway's own front
//! (`proxy::conn`): the status line and headers, the framing the body's size asks for
//! (`Content-Length`, or chunked when the size is unknown), no body after HEAD, 1xx, 204 or
//! 304, and the head with the first body bytes in one write when they are at hand (small
//! chunks gathered, larger ones written from where they are, never copied).

use std::io;
use std::pin::Pin;
use std::task::Poll;

use actix_web::HttpResponse;
use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::http::StatusCode;
use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Bytes gathered before a write: head, framing and small chunks.
const GATHER: usize = 64 * 1024;
/// A chunk up to this size is copied into the gathered bytes; a larger one is written from its
/// own buffer, with what was gathered in the same (vectored) write.
const SMALL_CHUNK: usize = 4 * 1024;

/// Writes `resp` to `out`. `head_request` says the request was HEAD (the framing headers a
/// GET would get, no body); `close` adds `Connection: close` (the caller closes after). A
/// body that fails or ends short of its length is an error: the caller cuts the connection,
/// so the client sees a broken transfer, never a clean end.
pub async fn write_response<W: AsyncWrite + Unpin>(
    out: &mut W,
    resp: HttpResponse,
    head_request: bool,
    close: bool,
) -> io::Result<()> {
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
    if bodiless {
        // Dropping the body ends the stream behind it (a RESET to the agent if it had more).
        drop(body);
        return out.write_all(&buf).await;
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
            use std::io::Write as _;
            write!(buf, "{:x}\r\n", chunk.len())?;
        }
        if chunk.len() <= SMALL_CHUNK && buf.len() + chunk.len() <= GATHER {
            buf.extend_from_slice(&chunk);
        } else {
            let mut both = bytes::Buf::chain(&buf[..], &chunk[..]);
            out.write_all_buf(&mut both).await?;
            buf.clear();
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
    Ok(())
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

    async fn written(resp: HttpResponse, head: bool, close: bool) -> String {
        let mut out = Vec::new();
        write_response(&mut out, resp, head, close).await.unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn sized_bodies_have_a_length_and_streams_are_chunked() {
        let t = written(HttpResponse::Ok().body("hello"), false, false).await;
        assert!(t.starts_with("HTTP/1.1 200 OK\r\n"), "{t}");
        assert!(t.contains("\r\ncontent-length: 5\r\n"), "{t}");
        assert!(t.contains("\r\ndate: "), "{t}");
        assert!(t.ends_with("\r\n\r\nhello"), "{t}");
        let chunks = futures_util::stream::iter(vec![
            Ok::<_, std::io::Error>(Bytes::from_static(b"ab")),
            Ok(Bytes::from_static(b"cde")),
        ]);
        let t = written(
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
    async fn large_chunks_are_framed_like_small_ones() {
        let big = Bytes::from(vec![b'x'; 10_000]);
        let chunks = futures_util::stream::iter(vec![
            Ok::<_, std::io::Error>(Bytes::from_static(b"ab")),
            Ok(big.clone()),
            Ok(Bytes::from_static(b"c")),
        ]);
        let t = written(
            HttpResponse::Ok().body(actix_web::body::BodyStream::new(chunks)),
            false,
            false,
        )
        .await;
        let want = format!(
            "\r\n\r\n2\r\nab\r\n2710\r\n{}\r\n1\r\nc\r\n0\r\n\r\n",
            "x".repeat(10_000)
        );
        assert!(t.ends_with(&want), "{}", &t[..200]);
        let sized = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(big)]);
        let t = written(
            HttpResponse::Ok().body(actix_web::body::SizedStream::new(10_000, sized)),
            false,
            false,
        )
        .await;
        assert!(t.contains("\r\ncontent-length: 10000\r\n"), "{}", &t[..200]);
        assert!(t.ends_with(&format!("\r\n\r\n{}", "x".repeat(10_000))));
    }

    #[tokio::test]
    async fn no_body_after_head_204_or_304() {
        let t = written(HttpResponse::Ok().body("hello"), true, false).await;
        assert!(t.contains("\r\ncontent-length: 5\r\n"), "{t}");
        assert!(t.ends_with("\r\n\r\n"), "{t}");
        let t = written(HttpResponse::NoContent().finish(), false, false).await;
        assert!(!t.contains("content-length"), "{t}");
        assert!(t.ends_with("\r\n\r\n"), "{t}");
        let t = written(HttpResponse::NotModified().finish(), false, false).await;
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
