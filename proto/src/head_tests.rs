// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]
use super::*;

fn request() -> ProxyRequest {
    ProxyRequest {
        stream_id: 7,
        method: "POST".into(),
        host: "app.demo.localhost".into(),
        path: "/a%20b".into(),
        query: Some("x=1".into()),
        headers: vec![
            ("host".into(), "app.demo.localhost".into()),
            ("x-odd".into(), "quote \" and é".into()),
        ],
        body: true,
        request_id: Some("rid".into()),
        upgrade: Some("websocket".into()),
        kubernetes: Some(KubeIdentity {
            user: "alice".into(),
            groups: vec!["dev".into(), "ops".into()],
        }),
        probe: true,
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        ..ProxyRequest::default()
    }
}

#[test]
fn a_request_head_comes_back_as_it_went() {
    let r = request();
    assert_eq!(decode_request(&encode_request(&r)).unwrap(), r);
    let bare = ProxyRequest {
        stream_id: 1,
        method: "GET".into(),
        path: "/".into(),
        ..ProxyRequest::default()
    };
    assert_eq!(decode_request(&encode_request(&bare)).unwrap(), bare);
    let peer = ProxyRequest {
        cluster: Some("demo".into()),
        conns: vec!["c1".into()],
        hops: 1,
        ..request()
    };
    assert_eq!(decode_request(&encode_request(&peer)).unwrap(), peer);
}

#[test]
fn a_raw_head_keeps_the_frame_and_shares_its_values() {
    let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Bin: \xff\r\n\r\n";
    let frame = response_whole(5, raw, b"ok");
    let (r, inline) = decode_response_raw(&frame).unwrap();
    assert_eq!((r.stream_id, r.status, r.body), (5, 200, true));
    assert_eq!(&r.head[..], &raw[..]);
    assert_eq!(inline.as_deref(), Some(&b"ok"[..]));
    let mut fields = Vec::new();
    r.for_each_field(|n, v| {
        // Shared with the frame, not copied.
        let inside = frame.as_ptr_range().contains(&v.as_ptr());
        fields.push((n.to_string(), v.to_vec(), inside));
    });
    assert_eq!(
        fields,
        vec![
            ("Content-Length".to_string(), b"2".to_vec(), true),
            ("X-Bin".to_string(), b"\xff".to_vec(), true),
        ]
    );
    assert_eq!(r.to_proxy_response(), decode_response(&frame).unwrap().0);
}

#[test]
fn a_raw_response_head_reads_as_the_json_one_did() {
    let raw = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-Bin: \xff\r\n\r\n";
    let (r, inline) = decode_response(&response_from_raw(9, true, raw)).unwrap();
    assert_eq!(inline, None);
    assert_eq!(r.stream_id, 9);
    assert_eq!(r.status, 404);
    assert!(r.body);
    assert_eq!(
        r.headers,
        vec![
            ("content-type".to_string(), "text/plain".to_string()),
            ("set-cookie".into(), "a=1".into()),
            ("set-cookie".into(), "b=2".into()),
            ("x-bin".into(), "\u{fffd}".into()),
        ]
    );
    // A head the agent built itself reads back the same.
    let again = decode_response(&encode_response(&r)).unwrap();
    assert_eq!(again, (r, None));
    let none = ProxyResponse {
        stream_id: 3,
        status: 204,
        headers: Vec::new(),
        body: false,
    };
    assert_eq!(
        decode_response(&encode_response(&none)).unwrap(),
        (none, None)
    );
}

#[test]
fn a_whole_small_response_is_one_frame() {
    let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
    let (r, inline) = decode_response(&response_whole(4, raw, b"hello")).unwrap();
    assert_eq!((r.status, r.body), (200, true));
    assert_eq!(inline.as_deref(), Some(&b"hello"[..]));
    // Empty is a body too (what the head announced, the gateway checks).
    let (_, inline) = decode_response(&response_whole(4, raw, b"")).unwrap();
    assert_eq!(inline.as_deref(), Some(&b""[..]));
    let (built, inline) = decode_response(&encode_response_with(&r, Some(b"hi"))).unwrap();
    assert_eq!((built, inline.as_deref()), (r, Some(&b"hi"[..])));
    let big = vec![0u8; MAX_FRAME_PAYLOAD + 1];
    assert!(decode_response(&response_whole(4, raw, &big)).is_err());
}

#[test]
fn bad_head_frames_are_errors_not_panics() {
    let good_req = encode_request(&request());
    let good_resp = response_from_raw(1, false, b"HTTP/1.1 200 OK\r\n\r\n");
    // Every truncation of a good frame is refused (or, for the request, never misread).
    for n in 0..good_req.len() {
        assert!(
            decode_request(&good_req[..n]).is_err(),
            "request cut at {n}"
        );
    }
    for n in 0..good_resp.len() {
        let cut = good_resp.slice(..n);
        assert!(decode_response(&cut).is_err(), "response cut at {n}");
    }
    let mut zero = good_req.to_vec();
    zero[1..5].copy_from_slice(&[0, 0, 0, 0]);
    assert_eq!(decode_request(&zero), Err(HeadError::ZeroStream));
    assert_eq!(
        decode_request(&good_resp),
        Err(HeadError::NotAHead(KIND_RESPONSE_HEAD))
    );
    let mut trailing = good_req.to_vec();
    trailing.push(0);
    assert!(decode_request(&trailing).is_err());
    for raw in [
        &b"HTTP/1.1 200 OK\r\n\r\nBODY"[..],
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\nsplit\r\n\r\n",
        b"SSH-2.0\r\n\r\n",
    ] {
        assert!(
            decode_response(&response_from_raw(1, true, raw)).is_err(),
            "{raw:?}"
        );
    }
    for f in [2u8, 4, 0xff] {
        let mut flags = good_resp.to_vec();
        flags[HEADER_LEN] = f;
        assert!(decode_response(&Bytes::from(flags)).is_err(), "flags {f}");
    }
    // A request claiming a huge header list in a small message fails without allocating it.
    let mut huge = vec![KIND_REQUEST_HEAD, 0, 0, 0, 1, 3, b'G', b'E', b'T', 0, 0, 0];
    huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    assert!(decode_request(&huge).is_err());
    assert!(is_head(&good_req) && is_head(&good_resp));
    assert!(!is_head(&crate::Frame::End { stream: 1 }.to_bytes()));
}
