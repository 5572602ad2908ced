//! The agent's byte pipe to plain-HTTP upstreams (ADR 0010), against a scripted raw upstream
//! that counts its connections: which responses leave a connection reusable, a pooled
//! connection the upstream dropped is retried, 1xx are absorbed, smuggling-shaped answers are
//! refused, and none of it costs the tunnel.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Agent, DEMO, Gateway, client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const APP: &str = "raw.demo.localhost";

/// An HTTP/1.1 upstream written byte by byte: each path answers with fixed bytes.
struct Scripted {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Scripted {
    async fn start() -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(sock));
            }
        });
        Scripted {
            addr,
            accepted,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers the requests of one connection (bodiless ones: the tests send GETs).
async fn serve(mut sock: TcpStream) {
    let mut buf = Vec::new();
    let mut drop_next = false;
    let mut after_http10 = false;
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut b = [0u8; 4096];
            match sock.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&b[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        if drop_next {
            // As an upstream whose idle timeout fired just as the request came.
            return;
        }
        if after_http10 {
            // An HTTP/1.0 answer without keep-alive ends the exchange: nobody may send more.
            let _ = sock
                .write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 6\r\n\r\nreused")
                .await;
            return;
        }
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        let (answer, keep): (&[u8], bool) = match path.as_str() {
            "/keep" => (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nkeep", true),
            "/close" => (
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nclose",
                false,
            ),
            "/eof" => (b"HTTP/1.1 200 OK\r\n\r\nuntil-eof", false),
            "/chunked" => (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n",
                true,
            ),
            "/hints" => (
                b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                true,
            ),
            "/http10" => {
                // Left open (as a slow closer would), so that reuse would be seen.
                after_http10 = true;
                (b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nhttp", true)
            }
            "/drop-next" => {
                drop_next = true;
                (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nsoon", true)
            }
            "/smuggle" => (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                false,
            ),
            "/garbage" => (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", false),
            _ => (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", true),
        };
        if sock.write_all(answer).await.is_err() || !keep {
            let _ = sock.shutdown().await;
            return;
        }
    }
}

async fn setup() -> (Gateway, Scripted, Agent) {
    let up = Scripted::start().await;
    let gw = Gateway::start(&[]);
    let agent = Agent::start(&gw, DEMO, &[(APP, format!("http://{}", up.addr))]).await;
    (gw, up, agent)
}

async fn get(gw: &Gateway, path: &str) -> (u16, String) {
    let r = client().get(gw.url(APP, path)).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_reused_when_the_framing_allows() {
    let (gw, up, _agent) = setup().await;
    for _ in 0..20 {
        assert_eq!(get(&gw, "/keep").await, (200, "keep".into()));
    }
    assert_eq!(
        up.accepted(),
        1,
        "twenty sequential requests, one connection"
    );

    // A chunked body is decoded (extensions and trailers dropped); its connection is kept.
    assert_eq!(get(&gw, "/chunked").await, (200, "hello world".into()));
    assert_eq!(get(&gw, "/keep").await, (200, "keep".into()));
    assert_eq!(up.accepted(), 1);

    // `Connection: close` and a body ending at EOF: each takes its connection with it.
    assert_eq!(get(&gw, "/close").await, (200, "close".into()));
    assert_eq!(get(&gw, "/keep").await, (200, "keep".into()));
    assert_eq!(up.accepted(), 2);
    assert_eq!(get(&gw, "/eof").await, (200, "until-eof".into()));
    assert_eq!(get(&gw, "/keep").await, (200, "keep".into()));
    assert_eq!(up.accepted(), 3);

    // 103 Early Hints is absorbed; the final answer comes through on the same connection.
    assert_eq!(get(&gw, "/hints").await, (200, "ok".into()));
    assert_eq!(up.accepted(), 3);

    // An HTTP/1.0 answer without `Connection: keep-alive` is the connection's last.
    assert_eq!(get(&gw, "/http10").await, (200, "http".into()));
    assert_eq!(get(&gw, "/keep").await, (200, "keep".into()));
    assert_eq!(up.accepted(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_upstream_dropped_is_retried_once() {
    let (gw, up, _agent) = setup().await;
    assert_eq!(get(&gw, "/drop-next").await, (200, "soon".into()));
    assert_eq!(up.accepted(), 1);
    // The pooled connection is still open, so it is reused; the upstream closes it without
    // answering, and the agent sends the request again on a new one.
    assert_eq!(get(&gw, "/keep").await, (200, "keep".into()));
    assert_eq!(up.accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_upstream_answers_are_a_502_and_logged() {
    let (gw, up, _agent) = setup().await;
    for (path, reason) in [
        ("/smuggle", "both Transfer-Encoding and Content-Length"),
        ("/garbage", "invalid response head"),
    ] {
        let r = client().get(gw.url(APP, path)).send().await.unwrap();
        assert_eq!(r.status(), 502, "{path}");
        assert_eq!(r.headers()["x-tunnelgate-error"], "upstream_failed");
        // The client learns what failed; the reason is in the node's log for the operator.
        let text = r.text().await.unwrap();
        assert!(text.contains("upstream service failed"), "{path}: {text}");
        gw.wait_log(reason).await;
    }
    // The tunnel and the pool carry on.
    assert_eq!(get(&gw, "/keep").await, (200, "keep".into()));
    assert_eq!(up.accepted(), 3);
}
