//! The server side of a SPDY/3.1 session, as much of it as kubectl's streams use (client-go
//! speaks SPDY through moby/spdystream): SYN_STREAM answered with SYN_REPLY, DATA both ways
//! with FIN, RST_STREAM, PING echoed, GOAWAY. Header blocks are one zlib stream per direction
//! with the SPDY/3 dictionary (draft 3, §2.6.10.1). spdystream does no flow control, so
//! neither does this.

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// The SPDY/3 header compression dictionary.
const DICTIONARY: &[u8] = include_bytes!("spdy3_dictionary.bin");

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const FLAG_FIN: u8 = 1;

/// What the client did.
#[derive(Debug)]
pub enum Event {
    Open {
        id: u32,
        headers: BTreeMap<String, String>,
    },
    Data {
        id: u32,
        data: Bytes,
    },
    /// The client finished its side of the stream.
    Fin {
        id: u32,
    },
    Reset {
        id: u32,
    },
}

enum Out {
    Reply(u32),
    Data(u32, Bytes, bool),
    Ping(u32),
    Reset(u32),
}

/// Sends frames on the session (cheap to clone).
#[derive(Clone)]
pub struct Writer(mpsc::Sender<Out>);

impl Writer {
    pub async fn reply(&self, id: u32) {
        let _ = self.0.send(Out::Reply(id)).await;
    }

    pub async fn data(&self, id: u32, data: Bytes) {
        let _ = self.0.send(Out::Data(id, data, false)).await;
    }

    pub async fn fin(&self, id: u32) {
        let _ = self.0.send(Out::Data(id, Bytes::new(), true)).await;
    }

    pub async fn reset(&self, id: u32) {
        let _ = self.0.send(Out::Reset(id)).await;
    }
}

/// Starts a session on `io`: the client's events, and a writer.
pub fn start<S>(io: S) -> (mpsc::Receiver<Event>, Writer)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(256);
    let (ev_tx, ev_rx) = mpsc::channel(256);
    let pong = out_tx.clone();
    tokio::spawn(async move {
        let mut inflate = Decompress::new(true);
        loop {
            let mut head = [0u8; 8];
            if rd.read_exact(&mut head).await.is_err() {
                return;
            }
            let flags = head[4];
            let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
            let mut body = vec![0u8; len];
            if rd.read_exact(&mut body).await.is_err() {
                return;
            }
            let mut b = Bytes::from(body);
            let ev = if head[0] & 0x80 == 0 {
                let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
                if !b.is_empty() && ev_tx.send(Event::Data { id, data: b }).await.is_err() {
                    return;
                }
                (flags & FLAG_FIN != 0).then_some(Event::Fin { id })
            } else {
                let kind = u16::from_be_bytes([head[2], head[3]]);
                match kind {
                    SYN_STREAM => {
                        let id = b.get_u32() & 0x7fff_ffff;
                        b.advance(6); // associated stream, priority, slot
                        let headers = parse_block(&inflate_block(&mut inflate, &b));
                        let _ = ev_tx.send(Event::Open { id, headers }).await;
                        (flags & FLAG_FIN != 0).then_some(Event::Fin { id })
                    }
                    HEADERS => {
                        // Inflated to keep the zlib stream in step; nothing else needs it.
                        b.advance(4);
                        let _ = inflate_block(&mut inflate, &b);
                        None
                    }
                    RST_STREAM => Some(Event::Reset {
                        id: b.get_u32() & 0x7fff_ffff,
                    }),
                    PING => {
                        let _ = pong.send(Out::Ping(b.get_u32())).await;
                        None
                    }
                    GOAWAY => return,
                    _ => None, // SETTINGS, WINDOW_UPDATE, SYN_REPLY: nothing to do
                }
            };
            if let Some(ev) = ev
                && ev_tx.send(ev).await.is_err()
            {
                return;
            }
        }
    });
    tokio::spawn(async move {
        let mut deflate = Compress::new(Compression::default(), true);
        while let Some(out) = out_rx.recv().await {
            let mut f = BytesMut::new();
            match out {
                Out::Reply(id) => {
                    let block = deflate_block(&mut deflate, &encode_block(&[]));
                    control(&mut f, SYN_REPLY, 0, 4 + block.len());
                    f.put_u32(id);
                    f.put_slice(&block);
                }
                Out::Data(id, data, fin) => {
                    f.put_u32(id & 0x7fff_ffff);
                    f.put_u8(if fin { FLAG_FIN } else { 0 });
                    let n = data.len() as u32;
                    f.put_slice(&n.to_be_bytes()[1..]);
                    f.put_slice(&data);
                }
                Out::Ping(id) => {
                    control(&mut f, PING, 0, 4);
                    f.put_u32(id);
                }
                Out::Reset(id) => {
                    control(&mut f, RST_STREAM, 0, 8);
                    f.put_u32(id);
                    f.put_u32(5); // CANCEL
                }
            }
            if wr.write_all(&f).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    (ev_rx, Writer(out_tx))
}

fn control(f: &mut BytesMut, kind: u16, flags: u8, len: usize) {
    f.put_u16(0x8000 | 3);
    f.put_u16(kind);
    f.put_u8(flags);
    f.put_slice(&(len as u32).to_be_bytes()[1..]);
}

fn inflate_block(d: &mut Decompress, input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    let mut pos = 0;
    while pos < input.len() {
        out.reserve(4096);
        let before = d.total_in();
        match d.decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync) {
            Ok(_) => {}
            Err(e) if e.needs_dictionary().is_some() => {
                d.set_dictionary(DICTIONARY).expect("SPDY dictionary");
            }
            Err(e) => panic!("SPDY header block: {e}"),
        }
        let used = (d.total_in() - before) as usize;
        pos += used;
        if used == 0 && out.len() < out.capacity() {
            break;
        }
    }
    out
}

fn deflate_block(c: &mut Compress, input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + 64);
    let start = c.total_in();
    loop {
        let pos = (c.total_in() - start) as usize;
        out.reserve(256);
        c.compress_vec(&input[pos..], &mut out, FlushCompress::Sync)
            .expect("deflate");
        if (c.total_in() - start) as usize == input.len() && out.len() < out.capacity() {
            return out;
        }
    }
}

fn encode_block(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u32(headers.len() as u32);
    for (n, v) in headers {
        b.put_u32(n.len() as u32);
        b.put_slice(n.as_bytes());
        b.put_u32(v.len() as u32);
        b.put_slice(v.as_bytes());
    }
    b.to_vec()
}

fn parse_block(raw: &[u8]) -> BTreeMap<String, String> {
    let mut b = raw;
    let mut out = BTreeMap::new();
    if b.remaining() < 4 {
        return out;
    }
    let n = b.get_u32();
    for _ in 0..n {
        let mut field = || {
            let len = b.get_u32() as usize;
            let s = String::from_utf8_lossy(&b[..len]).into_owned();
            b.advance(len);
            s
        };
        let name = field();
        let value = field();
        out.insert(name.to_ascii_lowercase(), value);
    }
    out
}
