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
    let Control::ProxyRequest(r) = &req else {
        unreachable!()
    };
    let bin = tunnelgate_proto::head::encode_request(r);
    c.bench_function("head/encode_request", |b| {
        b.iter(|| tunnelgate_proto::head::encode_request(black_box(r)))
    });
    c.bench_function("head/decode_request", |b| {
        b.iter(|| tunnelgate_proto::head::decode_request(black_box(&bin)).unwrap())
    });
    heads(c);
}

/// The same request and response heads as JSON control messages (protocol 2) and as the
/// HTTP/1.1 bytes the upstream sends and receives (what a protocol carrying heads as bytes
/// would cost instead), and protocol 3's head frames (`proto::head`): ADR 0010's estimate.
fn heads(c: &mut Criterion) {
    let resp = Control::ProxyResponse(control::ProxyResponse {
        stream_id: 9,
        status: 200,
        headers: vec![
            ("server".into(), "nginx/1.22.1".into()),
            ("date".into(), "Sat, 05 Dec 2026 22:00:00 GMT".into()),
            ("content-type".into(), "text/plain".into()),
            ("content-length".into(), "100".into()),
            ("connection".into(), "keep-alive".into()),
        ],
        body: true,
    });
    let json = resp.to_json();
    c.bench_function("control/encode_proxy_response", |b| {
        b.iter(|| black_box(&resp).to_json())
    });
    c.bench_function("control/decode_proxy_response", |b| {
        b.iter(|| Control::from_json(black_box(&json)).unwrap())
    });
    let Control::ProxyResponse(r) = &resp else {
        unreachable!()
    };
    let raw = tunnelgate_proto::head::encode_response(r);
    c.bench_function("head/response_from_raw", |b| {
        b.iter(|| tunnelgate_proto::head::response_from_raw(9, true, black_box(&raw[6..])))
    });
    c.bench_function("head/decode_response", |b| {
        b.iter(|| tunnelgate_proto::head::decode_response(black_box(&raw)).unwrap())
    });
    let wire =
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sat, 05 Dec 2026 22:00:00 GMT\r\n\
Content-Type: text/plain\r\nContent-Length: 100\r\nConnection: keep-alive\r\n\r\n";
    c.bench_function("h1/parse_response_head", |b| {
        b.iter(|| {
            tunnelgate_proto::h1::response_head(black_box(wire), false)
                .unwrap()
                .unwrap()
        })
    });
    let request = b"GET /index.html HTTP/1.1\r\nHost: app.demo.localhost\r\nAccept: */*\r\n\
User-Agent: curl/8.0\r\nX-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n\
X-Forwarded-Host: app.demo.localhost\r\n\r\n";
    c.bench_function("h1/parse_request_head", |b| {
        b.iter(|| {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Request::new(&mut headers);
            black_box(r.parse(black_box(request)).unwrap().is_complete())
        })
    });
}

criterion_group!(benches, codec);
criterion_main!(benches);
