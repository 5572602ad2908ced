use super::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite;

const MAX: usize = 32 << 20;

/// A writer of `role` into one end of a pipe and a reader of the other role on the other.
fn link(
    role: Role,
) -> (
    WsWriter<tokio::io::DuplexStream>,
    WsReader<tokio::io::DuplexStream>,
) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let other = match role {
        Role::Client => Role::Server,
        Role::Server => Role::Client,
    };
    (WsWriter::new(a, role), WsReader::new(b, other, &[], MAX))
}

fn pattern(n: usize) -> Bytes {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn masks_like_the_byte_by_byte_rule() {
    let key = [0x12, 0x34, 0x56, 0x78];
    for n in 0..40 {
        let mut fast = pattern(n).to_vec();
        apply_mask(&mut fast, key);
        let slow: Vec<u8> = pattern(n)
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        assert_eq!(fast, slow, "length {n}");
    }
}

#[tokio::test]
async fn messages_of_every_length_class_pass_both_ways() {
    for role in [Role::Client, Role::Server] {
        let (mut w, mut r) = link(role);
        let sizes = [0usize, 1, 125, 126, 2047, 2048, 65535, 65536, 1 << 20];
        let writer = tokio::spawn(async move {
            for n in sizes {
                w.feed(Outgoing::Binary(pattern(n))).await.unwrap();
                // A payload held elsewhere too is copied, not masked in place.
                let shared = pattern(n);
                w.feed(Outgoing::Binary(shared.clone())).await.unwrap();
                assert_eq!(shared, pattern(n));
            }
            w.feed(Outgoing::Text("héllo".into())).await.unwrap();
            w.send(Outgoing::Close {
                code: 4000,
                reason: "done".into(),
            })
            .await
            .unwrap();
            w
        });
        for n in sizes {
            for _ in 0..2 {
                match r.next().await {
                    Some(Ok(Incoming::Binary(b))) => assert_eq!(b, pattern(n), "{role:?} {n}"),
                    other => panic!("{role:?} {n}: {other:?}"),
                }
            }
        }
        assert_eq!(
            r.next().await.unwrap().unwrap(),
            Incoming::Text("héllo".into())
        );
        assert_eq!(
            r.next().await.unwrap().unwrap(),
            Incoming::Close(Some((4000, "done".into())))
        );
        assert!(r.next().await.is_none(), "the stream ends after a close");
        writer.await.unwrap();
    }
}

#[tokio::test]
async fn unmasked_frames_pass_only_where_the_server_agreed() {
    let (a, b) = tokio::io::duplex(1 << 20);
    let mut w = WsWriter::new(a, Role::Client).unmasked();
    let mut r = WsReader::new(b, Role::Server, &[], MAX).allow_unmasked();
    w.send(Outgoing::Binary(pattern(70_000))).await.unwrap();
    w.send(Outgoing::Text("t".into())).await.unwrap();
    assert_eq!(
        r.next().await.unwrap().unwrap(),
        Incoming::Binary(pattern(70_000))
    );
    assert_eq!(r.next().await.unwrap().unwrap(), Incoming::Text("t".into()));
    // Masked frames still pass where unmasked ones may.
    let (a, b) = tokio::io::duplex(1 << 20);
    let mut w = WsWriter::new(a, Role::Client);
    let mut r = WsReader::new(b, Role::Server, &[], MAX).allow_unmasked();
    w.send(Outgoing::Binary(pattern(10))).await.unwrap();
    assert_eq!(
        r.next().await.unwrap().unwrap(),
        Incoming::Binary(pattern(10))
    );
    let unmasked = |io| WsWriter::new(io, Role::Client).unmasked();
    let wire = wire_of(unmasked, Outgoing::Binary(pattern(3000))).await;
    assert_eq!(wire[1], 126, "unmasked, 16-bit length");
    assert_eq!(&wire[4..], &pattern(3000)[..]);
}

#[tokio::test]
async fn frames_arriving_in_any_pieces_are_read_whole() {
    // A pipe of 13 bytes: every head and payload arrives cut at odd places.
    let (a, b) = tokio::io::duplex(13);
    let mut w = WsWriter::new(a, Role::Client);
    let mut r = WsReader::new(b, Role::Server, &[], MAX);
    let sizes = [5usize, 4095, 4096, 70_000, 3, 200_000, 1];
    let writer = tokio::spawn(async move {
        for n in sizes {
            w.send(Outgoing::Binary(pattern(n))).await.unwrap();
        }
        w
    });
    for n in sizes {
        match r.next().await {
            Some(Ok(Incoming::Binary(b))) => assert_eq!(b, pattern(n), "{n}"),
            other => panic!("{n}: {other:?}"),
        }
    }
    writer.await.unwrap();
}

/// The bytes `role` puts on the wire for one message.
async fn wire(role: Role, m: Outgoing) -> Vec<u8> {
    wire_of(|io| WsWriter::new(io, role), m).await
}

/// The bytes a writer made by `make` puts on the wire for one message.
async fn wire_of(
    make: impl FnOnce(tokio::io::DuplexStream) -> WsWriter<tokio::io::DuplexStream>,
    m: Outgoing,
) -> Vec<u8> {
    let (a, mut b) = tokio::io::duplex(1 << 20);
    let mut w = make(a);
    w.send(m).await.unwrap();
    drop(w);
    let mut out = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut b, &mut out)
        .await
        .unwrap();
    out
}

#[tokio::test]
async fn a_client_masks_and_a_server_does_not() {
    let client = wire(Role::Client, Outgoing::Binary(pattern(3000))).await;
    assert_eq!(client[0], 0x82);
    assert_eq!(client[1], 0x80 | 126, "masked, 16-bit length");
    assert_eq!(client.len(), 2 + 2 + 4 + 3000);
    assert_ne!(&client[8..], &pattern(3000)[..], "the payload is masked");
    let server = wire(Role::Server, Outgoing::Binary(pattern(3000))).await;
    assert_eq!(server[1], 126, "unmasked");
    assert_eq!(&server[4..], &pattern(3000)[..]);
    // A long close reason is cut at a character boundary to fit a control frame.
    let close = wire(
        Role::Server,
        Outgoing::Close {
            code: 1011,
            reason: "ü".repeat(100),
        },
    )
    .await;
    assert!(close[1] as usize <= 125 && close[1] >= 123, "{}", close[1]);
}

/// What a server's reader makes of `bytes` followed by the end of the stream.
async fn read_as(role: Role, bytes: &[u8]) -> Vec<Result<Incoming, String>> {
    let (mut a, b) = tokio::io::duplex(1 << 16);
    a.write_all(bytes).await.unwrap();
    drop(a);
    let r = WsReader::new(b, role, &[], 1 << 16);
    r.map(|m| m.map_err(|e| e.to_string())).collect().await
}

fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
    let key = [1, 2, 3, 4];
    let mut p = payload.to_vec();
    apply_mask(&mut p, key);
    let mut out = vec![b0, 0x80 | payload.len() as u8];
    out.extend_from_slice(&key);
    out.extend_from_slice(&p);
    out
}

#[tokio::test]
async fn bad_frames_end_the_link_with_a_reason() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![0x82, 0x01, b'x'], "unmasked frame from a client"),
        (masked(0xc2, b"x"), "reserved bits"),
        (masked(0x83, b"x"), "reserved opcode"),
        (masked(0x09, b""), "fragmented or long control frame"),
        (masked(0x81, &[0xff, 0xfe]), "not UTF-8"),
        (masked(0x80, b"x"), "continuation frame outside a message"),
        (masked(0x88, b"x"), "close frame of one byte"),
        (masked(0x88, &[3, 232, 0xff]), "close reason is not UTF-8"),
        (
            [masked(0x02, b"a"), masked(0x82, b"b")].concat(),
            "new message inside",
        ),
        // A frame claiming a terabyte is refused from its head, before any payload.
        (
            vec![0x82, 0xff, 0, 0, 1, 0, 0, 0, 0, 0, 1, 2, 3, 4],
            "over the limit",
        ),
        (
            masked(0x82, b"abc")[..5].to_vec(),
            "without a WebSocket close frame",
        ),
    ];
    for (bytes, want) in cases {
        let got = read_as(Role::Server, &bytes).await;
        assert_eq!(got.len(), 1, "{want}: {got:?}");
        let err = got[0].as_ref().unwrap_err();
        assert!(err.contains(want), "{want}: {err}");
    }
    let got = read_as(Role::Client, &masked(0x82, b"x")).await;
    assert!(
        got[0]
            .as_ref()
            .unwrap_err()
            .contains("masked frame from a server")
    );
}

#[tokio::test]
async fn fragments_and_control_frames_between_them_are_read() {
    let bytes = [
        masked(0x01, "hé".as_bytes()),
        masked(0x89, b"ping"),
        masked(0x00, b"ll"),
        masked(0x80, b"o"),
        masked(0x8a, b""),
        masked(0x88, b""),
    ]
    .concat();
    let got = read_as(Role::Server, &bytes).await;
    assert_eq!(
        got,
        vec![
            Ok(Incoming::Ping(Bytes::from_static(b"ping"))),
            Ok(Incoming::Text("héllo".into())),
            Ok(Incoming::Pong),
            Ok(Incoming::Close(None)),
        ]
    );
}

#[tokio::test]
async fn bytes_read_past_the_handshake_come_first() {
    let first = masked(0x82, b"early");
    let (mut a, b) = tokio::io::duplex(1024);
    a.write_all(&masked(0x82, b"later")).await.unwrap();
    drop(a);
    let mut r = WsReader::new(b, Role::Server, &first, MAX);
    for want in [&b"early"[..], b"later"] {
        match r.next().await {
            Some(Ok(Incoming::Binary(b))) => assert_eq!(&b[..], want),
            other => panic!("{other:?}"),
        }
    }
}

/// Both halves speak the same WebSocket as tungstenite (the gateways and agents of earlier
/// versions): each end against the other library.
#[tokio::test]
async fn interoperates_with_tungstenite_both_ways() {
    use tungstenite::protocol::Role as TRole;
    let cfg = tungstenite::protocol::WebSocketConfig::default().max_message_size(Some(MAX));
    for (ours, theirs) in [(Role::Client, TRole::Server), (Role::Server, TRole::Client)] {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (ra, wa) = tokio::io::split(a);
        let mut w = WsWriter::new(wa, ours);
        let mut r = WsReader::new(ra, ours, &[], MAX);
        let mut t = tokio_tungstenite::WebSocketStream::from_raw_socket(b, theirs, Some(cfg)).await;
        let big = pattern(3 << 20);
        let sent = big.clone();
        let send = tokio::spawn(async move {
            w.send(Outgoing::Binary(sent)).await.unwrap();
            w.send(Outgoing::Text("t".into())).await.unwrap();
            w
        });
        match t.next().await {
            Some(Ok(tungstenite::Message::Binary(b))) => assert_eq!(b, big),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            t.next().await.unwrap().unwrap(),
            tungstenite::Message::Text("t".into())
        );
        let mut w = send.await.unwrap();
        let back = tokio::spawn(async move {
            t.send(tungstenite::Message::Binary(pattern(100_000)))
                .await
                .unwrap();
            t.close(None).await.unwrap();
            t
        });
        assert_eq!(
            r.next().await.unwrap().unwrap(),
            Incoming::Binary(pattern(100_000))
        );
        assert_eq!(r.next().await.unwrap().unwrap(), Incoming::Close(None));
        w.close().await.unwrap();
        back.await.unwrap();
    }
}

#[tokio::test]
async fn a_writer_stops_taking_messages_when_its_queue_is_full() {
    // A pipe nobody reads: poll_ready must wait once the high-water mark is queued.
    let (a, _b) = tokio::io::duplex(1024);
    let mut w = WsWriter::new(a, Role::Server);
    let mut took = 0;
    loop {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if Pin::new(&mut w).poll_ready(&mut cx).is_pending() {
            break;
        }
        Pin::new(&mut w)
            .start_send(Outgoing::Binary(pattern(16 * 1024)))
            .unwrap();
        took += 1;
        assert!(took < 100, "the writer never pushed back");
    }
    assert!(w.queued() <= HIGH_WATER + 16 * 1024 + 14, "{}", w.queued());
}
