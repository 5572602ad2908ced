//! The ADR 0010 prototype (`tg-pipe`) carries requests faithfully, with either front: what the
//! harness measures must be a working proxy, not a fast way to drop requests.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::convert::Infallible;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tunnelgate_load::{Plan, run};

/// An upstream that answers 100 bytes, or 1 MiB at `/big`, and 400 unless the gateway's
/// rewriting happened (X-Forwarded-For added, the client's Connection header gone).
async fn upstream() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let h = req.headers();
                        let rewritten = h.contains_key("x-forwarded-for")
                            && h.get("x-forwarded-host")
                                .is_some_and(|v| v == "app.demo.localhost")
                            && !h.contains_key("connection");
                        let body = match req.uri().path() {
                            "/big" => Full::new(Bytes::from(vec![b'b'; 1 << 20])).boxed(),
                            // No length: hyper sends it chunked.
                            "/chunked" => StreamBody::new(futures_util::stream::iter(
                                ["first,", "second"].map(|c| {
                                    Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(c)))
                                }),
                            ))
                            .boxed(),
                            _ => Full::new(Bytes::from_static(&[b'x'; 100])).boxed(),
                        };
                        let mut r = hyper::Response::new(body);
                        if !rewritten {
                            *r.status_mut() = hyper::StatusCode::BAD_REQUEST;
                        }
                        Ok::<_, Infallible>(r)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prototype_carries_requests_with_either_front() {
    let (up, server) = upstream().await;
    let bin = env!("CARGO_BIN_EXE_tg-pipe");
    for front in [None, Some("actix")] {
        let mut gw = tokio::process::Command::new(bin);
        gw.args([
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--tunnel-listen",
            "127.0.0.1:0",
        ]);
        if let Some(f) = front {
            gw.args(["--front", f]);
        }
        let mut gw = gw
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(gw.stdout.take().unwrap()).lines();
        let first = lines.next_line().await.unwrap().unwrap();
        let addrs: Vec<&str> = first.split_whitespace().collect();
        assert_eq!(addrs[0], "listening", "{first}");
        let (public, tunnel) = (addrs[1].to_string(), addrs[2].to_string());
        let mut agent = tokio::process::Command::new(bin)
            .args([
                "agent",
                "--gateway",
                &format!("ws://{tunnel}"),
                "--upstream",
                &up.to_string(),
            ])
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let up_line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("the agent's tunnel never came up")
            .unwrap();
        assert_eq!(up_line.as_deref(), Some("tunnel up"));

        let plan = Plan {
            addr: public.parse().unwrap(),
            host: "app.demo.localhost".into(),
            path: "/".into(),
            connections: 8,
            duration: Duration::from_secs(20),
            rate: None,
            max_requests: 2000,
            tls: None,
            per_connection: None,
        };
        let r = run(plan).await;
        assert_eq!((r.requests, r.errors), (2000, 0), "front {front:?}: {r:?}");
        assert_eq!(r.bytes, 2000 * 100);

        // A response of many frames arrives whole, and the connection serves the next one.
        let mut sock = tokio::net::TcpStream::connect(&public).await.unwrap();
        for _ in 0..2 {
            sock.write_all(
                b"GET /big HTTP/1.1\r\nHost: app.demo.localhost\r\nConnection: keep-alive\r\n\r\n",
            )
            .await
            .unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                head.push(sock.read_u8().await.unwrap());
            }
            let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "front {front:?}: {head}");
            assert!(head.contains("content-length: 1048576"), "{head}");
            let mut body = vec![0; 1 << 20];
            sock.read_exact(&mut body).await.unwrap();
            assert!(body.iter().all(|&b| b == b'b'));
        }
        // A chunked response passes in its own framing (own front only: the actix-web front
        // of the prototype passes Content-Length responses alone), and the connection is
        // reused after it.
        if front.is_none() {
            for _ in 0..2 {
                sock.write_all(b"GET /chunked HTTP/1.1\r\nHost: app.demo.localhost\r\n\r\n")
                    .await
                    .unwrap();
                let want = b"6\r\nfirst,\r\n6\r\nsecond\r\n0\r\n\r\n";
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    head.push(sock.read_u8().await.unwrap());
                }
                let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
                assert!(head.contains("transfer-encoding: chunked"), "{head}");
                let mut body = vec![0; want.len()];
                sock.read_exact(&mut body).await.unwrap();
                assert_eq!(body, want);
            }
        }
        agent.kill().await.unwrap();
        gw.kill().await.unwrap();
    }
    server.abort();
}
