//! Frame codec throughput: encode and decode of the frames on the data path.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use tunnelgate_proto::{Control, Frame, control};

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    for size in [100usize, 16 * 1024, 64 * 1024] {
        let frame = Frame::Data {
            stream: 42,
            data: Bytes::from(vec![7u8; size]),
        };
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("encode_data_{size}"), |b| {
            let mut buf = BytesMut::with_capacity(size + 16);
            b.iter(|| {
                buf.clear();
                black_box(&frame).encode(&mut buf);
                black_box(buf.len())
            })
        });
        let wire = frame.to_bytes();
        g.bench_function(format!("decode_data_{size}"), |b| {
            b.iter(|| Frame::decode(black_box(wire.clone())).unwrap())
        });
    }
    g.finish();
    let window = Frame::Window {
        stream: 1,
        credit: 131072,
    }
    .to_bytes();
    c.bench_function("frame/decode_window", |b| {
        b.iter(|| Frame::decode(black_box(window.clone())).unwrap())
    });
    let req = Control::ProxyRequest(control::ProxyRequest {
        stream_id: 9,
        method: "GET".into(),
        host: "app.demo.localhost".into(),
        path: "/index.html".into(),
        query: None,
        headers: vec![
            ("accept".into(), "*/*".into()),
            ("user-agent".into(), "curl/8.0".into()),
            ("x-forwarded-for".into(), "127.0.0.1".into()),
            ("x-forwarded-proto".into(), "http".into()),
            ("x-forwarded-host".into(), "app.demo.localhost".into()),
        ],
        ..control::ProxyRequest::default()
    });
    let json = req.to_json();
    c.bench_function("control/encode_proxy_request", |b| {
        b.iter(|| black_box(&req).to_json())
    });
    c.bench_function("control/decode_proxy_request", |b| {
        b.iter(|| Control::from_json(black_box(&json)).unwrap())
    });
}

criterion_group!(benches, codec);
criterion_main!(benches);
