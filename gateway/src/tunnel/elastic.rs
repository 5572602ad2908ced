//! The socket reader in front of tungstenite on the gateway's end of tunnels and peer links.
//! tungstenite reads in steps of its (small, per-connection) read buffer; reading the socket
//! in those steps costs a `recvfrom` per few hundred bytes of small messages and sixteen per
//! 64 KiB DATA frame. This reader takes the socket's bytes in reads that grow while they come
//! back full (to [`MAX_READ`], a download's frames) and shrink again when they do not (to
//! [`MIN_READ`], small messages), so an idle or quiet tunnel keeps a small buffer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// The smallest socket read, and the buffer a quiet connection keeps.
pub const MIN_READ: usize = 4 * 1024;
/// The largest socket read.
pub const MAX_READ: usize = 64 * 1024;

/// `io` read through a buffer of [`MIN_READ`] to [`MAX_READ`] bytes (allocated at the first
/// read); writes pass through.
pub struct ElasticReader<R> {
    io: R,
    /// Zeroed once when allocated (a read fills part of it, never re-zeroed).
    buf: Vec<u8>,
    /// The unread bytes are `buf[at..end]`.
    at: usize,
    end: usize,
    /// The next socket read's size.
    size: usize,
}

impl<R> ElasticReader<R> {
    pub fn new(io: R) -> Self {
        ElasticReader {
            io,
            buf: Vec::new(),
            at: 0,
            end: 0,
            size: MIN_READ,
        }
    }

    /// The buffer's size.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// The next read's size after one that returned `got` bytes of `size`.
    fn next_size(size: usize, got: usize) -> usize {
        if got == size {
            (size * 2).min(MAX_READ)
        } else if got < size / 4 {
            (size / 2).max(MIN_READ)
        } else {
            size
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for ElasticReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at == this.end {
            // A read as large as this one would be goes straight to the caller.
            if out.remaining() >= this.size {
                return Pin::new(&mut this.io).poll_read(cx, out);
            }
            if this.buf.len() != this.size {
                this.buf = vec![0; this.size];
            }
            let mut rb = ReadBuf::new(&mut this.buf);
            let polled = Pin::new(&mut this.io).poll_read(cx, &mut rb);
            let got = rb.filled().len();
            (this.at, this.end) = (0, got);
            match polled {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => this.size = Self::next_size(this.size, got),
            }
        }
        let rest = this.buf.get(this.at..this.end).unwrap_or_default();
        let n = rest.len().min(out.remaining());
        out.put_slice(rest.get(..n).unwrap_or_default());
        this.at += n;
        Poll::Ready(Ok(()))
    }
}

write_through!(ElasticReader, io);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn reads_grow_while_full_and_shrink_when_not() {
        let next = ElasticReader::<()>::next_size;
        assert_eq!(next(MIN_READ, MIN_READ), 2 * MIN_READ);
        assert_eq!(next(MAX_READ, MAX_READ), MAX_READ);
        assert_eq!(next(MAX_READ, 100), MAX_READ / 2);
        assert_eq!(next(MIN_READ, 100), MIN_READ);
        assert_eq!(next(8 * 1024, 5 * 1024), 8 * 1024);
    }

    #[tokio::test]
    async fn every_byte_comes_through_in_order_in_small_reads() {
        let (mut a, b) = tokio::io::duplex(256 * 1024);
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            a.write_all(&sent).await.unwrap();
        });
        let mut r = ElasticReader::new(b);
        assert_eq!(r.capacity(), 0, "nothing allocated before the first read");
        let mut got = Vec::new();
        let mut step = [0u8; 1000];
        let mut grew = 0;
        loop {
            let n = r.read(&mut step).await.unwrap();
            if n == 0 {
                break;
            }
            grew = grew.max(r.capacity());
            got.extend_from_slice(&step[..n]);
        }
        writer.await.unwrap();
        assert_eq!(got, data);
        assert!(grew > MIN_READ, "reads grew under a stream of data: {grew}");
    }

    #[tokio::test]
    async fn a_large_read_bypasses_the_buffer_and_writes_pass_through() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut r = ElasticReader::new(a);
        r.write_all(b"ping").await.unwrap();
        let mut four = [0u8; 4];
        b.read_exact(&mut four).await.unwrap();
        assert_eq!(&four, b"ping");
        b.write_all(b"pong").await.unwrap();
        let mut big = vec![0u8; MIN_READ];
        let n = r.read(&mut big).await.unwrap();
        assert_eq!(&big[..n], b"pong");
        assert_eq!(r.capacity(), 0);
    }
}
