//! The gateway's own HTTP/1.1 front for tenants' plain requests (`proxy::conn`, ADR 0010),
//! from a raw socket: keep-alive and pipelining, HEAD, bodies the route never read, the rest
//! of a connection handed to actix-http (the gateway's names, upgrades, HTTP/1.0, chunked
//! uploads), `Connection: close` (also from a draining node), a client gone mid-body, a head
//! that never ends.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::SocketAddr;

use common::upstream::{RawUpgradeUpstream, Upstream};
use common::{Agent, DEMO, Gateway, HANG};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const APP: &str = "app.demo.localhost";

/// One client connection, read one response at a time.
struct Conn {
    sock: TcpStream,
    buf: Vec<u8>,
}

/// A response: the head (lower-cased) and the body, de-chunked.
struct Resp {
    head: String,
    body: Vec<u8>,
}

impl Resp {
    fn status(&self) -> u16 {
        self.head[9..12].parse().unwrap()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|r| r.strip_prefix(':'))
                .map(str::trim)
        })
    }
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        Conn {
            sock: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).await.unwrap();
    }

    /// More bytes into the buffer; false at the end of the connection.
    async fn fill(&mut self) -> bool {
        let mut b = [0u8; 16384];
        match tokio::time::timeout(HANG, self.sock.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&b[..n]);
                true
            }
            Err(_) => panic!("no answer within {HANG:?}"),
        }
    }

    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill().await, "the connection ended mid-body");
        }
        self.buf.drain(..n).collect()
    }

    async fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.take(i + 2).await;
                return String::from_utf8(line[..i].to_vec()).unwrap();
            }
            assert!(self.fill().await, "the connection ended mid-line");
        }
    }

    /// The next response (`head_request`: no body follows).
    async fn response(&mut self, head_request: bool) -> Resp {
        let mut head = String::new();
        loop {
            let line = self.line().await;
            if line.is_empty() {
                break;
            }
            head.push_str(&line.to_ascii_lowercase());
            head.push('\n');
        }
        let mut r = Resp {
            head,
            body: Vec::new(),
        };
        if head_request || matches!(r.status(), 204 | 304) {
            return r;
        }
        if r.header("transfer-encoding") == Some("chunked") {
            loop {
                let size = usize::from_str_radix(&self.line().await, 16).unwrap();
                let chunk = self.take(size + 2).await;
                if size == 0 {
                    break;
                }
                r.body.extend_from_slice(&chunk[..size]);
            }
        } else {
            let n: usize = r.header("content-length").unwrap().parse().unwrap();
            r.body = self.take(n).await;
        }
        r
    }

    /// True when the gateway closed the connection (nothing more comes).
    async fn closed(&mut self) -> bool {
        self.buf.is_empty() && !self.fill().await
    }
}

fn get(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

/// The node's hand-offs to actix-http, `reason count` sorted (agent tunnels stay on the
/// own front).
async fn handoffs(gw: &Gateway) -> Vec<String> {
    let mut v: Vec<String> = gw
        .metrics()
        .await
        .lines()
        .filter_map(|l| l.strip_prefix("gateway_front_handoffs_total{reason=\""))
        .map(|l| l.replace("\"}", ""))
        .collect();
    v.sort();
    v
}

async fn setup() -> (Gateway, Upstream, Agent) {
    let up = Upstream::start().await;
    let gw = Gateway::start(&[]);
    let agent = Agent::start(&gw, DEMO, &[(APP, up.url())]).await;
    (gw, up, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_carries_pipelined_requests_head_and_bodies() {
    let (gw, _up, _agent) = setup().await;
    let mut c = Conn::open(gw.addr).await;
    // Two requests in one write: two answers, in order.
    let mut two = get(APP, "/hello");
    two.extend_from_slice(&get(APP, "/sized?n=3000"));
    c.send(&two).await;
    let a = c.response(false).await;
    assert_eq!(
        (a.status(), a.body.as_slice()),
        (200, &b"hello"[..]),
        "{}",
        a.head
    );
    // A request id the gateway made: 32 lower-case hex digits.
    let id = a.header("x-request-id").unwrap_or_default();
    assert!(
        id.len() == 32
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{}",
        a.head
    );
    assert!(a.header("date").is_some(), "{}", a.head);
    let b = c.response(false).await;
    assert_eq!(b.body.len(), 3000);
    assert!(
        b.body
            .iter()
            .enumerate()
            .all(|(i, x)| *x == common::pattern_byte(i as u64))
    );
    // HEAD: the length a GET would have, and no body before the next answer.
    c.send(b"HEAD /sized?n=1000 HTTP/1.1\r\nHost: app.demo.localhost\r\n\r\n")
        .await;
    let h = c.response(true).await;
    assert_eq!(h.header("content-length"), Some("1000"), "{}", h.head);
    c.send(&get(APP, "/chunked")).await;
    let ch = c.response(false).await;
    assert_eq!(ch.body, b"first,second,third");
    // A body in, echoed back; the client's id goes to the upstream and back.
    c.send(b"POST /echo HTTP/1.1\r\nHost: app.demo.localhost\r\nX-Request-Id: abc-123\r\nContent-Length: 5\r\n\r\nabcde")
        .await;
    let e = c.response(false).await;
    assert_eq!((e.status(), e.body.as_slice()), (200, &b"abcde"[..]));
    assert_eq!(e.header("x-request-id"), Some("abc-123"));
    // `Expect: 100-continue` (curl's large uploads): a 100 first, then the answer.
    c.send(b"PUT /echo HTTP/1.1\r\nHost: app.demo.localhost\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
        .await;
    assert_eq!(c.line().await, "HTTP/1.1 100 Continue");
    assert_eq!(c.line().await, "");
    c.send(b"xyz").await;
    assert_eq!(c.response(false).await.body, b"xyz");
    // Errors are answered on the same connection too.
    c.send(&get("nothing.demo.localhost", "/")).await;
    assert_eq!(c.response(false).await.status(), 404);
    c.send(&get(APP, "/hello")).await;
    assert_eq!(c.response(false).await.body, b"hello");
    // All of it served by the own front.
    assert!(handoffs(&gw).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_the_route_never_read_keeps_a_small_connection_and_closes_a_large_one() {
    let (gw, _up, _agent) = setup().await;
    let mut c = Conn::open(gw.addr).await;
    let body = vec![b'x'; 100_000];
    let head = format!(
        "POST / HTTP/1.1\r\nHost: nothing.demo.localhost\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.send(head.as_bytes()).await;
    c.send(&body).await;
    assert_eq!(c.response(false).await.status(), 404);
    // The unread body was read past: the next request is parsed from its own head.
    c.send(&get(APP, "/hello")).await;
    assert_eq!(c.response(false).await.body, b"hello");
    // 10 MB never read: the answer, then the connection ends.
    let mut c = Conn::open(gw.addr).await;
    c.send(b"POST / HTTP/1.1\r\nHost: nothing.demo.localhost\r\nContent-Length: 10000000\r\n\r\n")
        .await;
    assert_eq!(c.response(false).await.status(), 404);
    assert!(c.closed().await, "a connection with 10 MB unread is closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_of_a_connection_goes_to_actix_when_a_request_asks_for_it() {
    let (gw, _up, _agent) = setup().await;
    // A tenant's request, then the gateway's own name, then a tenant's again.
    let mut c = Conn::open(gw.addr).await;
    c.send(&get(APP, "/hello")).await;
    assert_eq!(c.response(false).await.body, b"hello");
    c.send(&get("127.0.0.1", "/healthz")).await;
    assert_eq!(c.response(false).await.status(), 200);
    c.send(&get(APP, "/hello")).await;
    assert_eq!(c.response(false).await.body, b"hello");
    assert_eq!(handoffs(&gw).await, ["not_a_tenant 1"]);
    // HTTP/1.0 and a chunked upload are served there too.
    let mut c = Conn::open(gw.addr).await;
    c.send(b"POST /echo HTTP/1.1\r\nHost: app.demo.localhost\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        .await;
    assert_eq!(c.response(false).await.body, b"abcde");
    let mut c = Conn::open(gw.addr).await;
    c.send(b"GET /hello HTTP/1.0\r\nHost: app.demo.localhost\r\n\r\n")
        .await;
    assert_eq!(c.response(false).await.body, b"hello");
    // An upgrade after plain requests on a kept connection: its bytes pass raw.
    let raw = RawUpgradeUpstream::start().await;
    let _spdy = Agent::start(&gw, DEMO, &[("spdy.demo.localhost", raw.url())]).await;
    let mut c = Conn::open(gw.addr).await;
    c.send(&get(APP, "/hello")).await;
    assert_eq!(c.response(false).await.body, b"hello");
    c.send(b"POST /exec HTTP/1.1\r\nHost: spdy.demo.localhost\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nContent-Length: 0\r\n\r\n")
        .await;
    let up = c.response(true).await;
    assert_eq!(up.status(), 101, "{}", up.head);
    c.send(b"\x80\x03raw bytes\r\n\r\nGET / HTTP/1.1\r\n").await;
    let echoed = c
        .take(b"\x80\x03raw bytes\r\n\r\nGET / HTTP/1.1\r\n".len())
        .await;
    assert_eq!(echoed, b"\x80\x03raw bytes\r\n\r\nGET / HTTP/1.1\r\n");
    assert_eq!(
        handoffs(&gw).await,
        [
            "http_1_0 1",
            "not_a_tenant 1",
            "transfer_encoding 1",
            "upgrade 1"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_is_honoured() {
    let (gw, _up, _agent) = setup().await;
    let mut c = Conn::open(gw.addr).await;
    c.send(b"GET /hello HTTP/1.1\r\nHost: app.demo.localhost\r\nConnection: close\r\n\r\n")
        .await;
    let r = c.response(false).await;
    assert_eq!(r.body, b"hello");
    assert_eq!(r.header("connection"), Some("close"), "{}", r.head);
    assert!(c.closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_body_frees_its_stream() {
    let (gw, _up, _agent) = setup().await;
    let mut c = Conn::open(gw.addr).await;
    c.send(b"POST /sink HTTP/1.1\r\nHost: app.demo.localhost\r\nContent-Length: 1000000\r\n\r\n")
        .await;
    c.send(&[0u8; 1000]).await;
    gw.wait_metric("gateway_streams 1").await;
    drop(c);
    gw.wait_metric("gateway_streams 0").await;
    // The node serves on.
    let mut c = Conn::open(gw.addr).await;
    c.send(&get(APP, "/hello")).await;
    assert_eq!(c.response(false).await.body, b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_that_never_ends_gets_408() {
    let (gw, _up, _agent) = setup().await;
    let mut c = Conn::open(gw.addr).await;
    c.send(b"GET /hello HTTP/1.1\r\nHost: app.demo.localhost\r\nX-Slow: ")
        .await;
    let r = c.response(false).await;
    assert_eq!(r.status(), 408, "{}", r.head);
    assert!(c.closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_asks_kept_connections_to_close() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&["--drain-timeout", "10s"]);
    let _agent = Agent::start(&gw, DEMO, &[(APP, up.url())]).await;
    let mut c = Conn::open(gw.addr).await;
    c.send(&get(APP, "/hello")).await;
    let first = c.response(false).await;
    assert_eq!(first.header("connection"), None, "{}", first.head);
    // A request in flight when the node is told to stop: answered, then the connection is
    // closed, so the client's next request goes to a node that stays. The same on a
    // connection actix-http serves (a chunked upload is handed to it).
    c.send(&get(APP, "/gate")).await;
    let mut handed = Conn::open(gw.addr).await;
    handed
        .send(b"POST /gate HTTP/1.1\r\nHost: app.demo.localhost\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        .await;
    gw.wait_metric("gateway_streams 2").await;
    gw.terminate();
    // The drain has begun once the node says so (its flag is set before that line).
    gw.wait_log("draining: /readyz fails").await;
    let readyz = format!("http://{}/readyz", gw.admin);
    let ready = common::client().get(&readyz).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    up.gate.add_permits(2);
    for c in [&mut c, &mut handed] {
        let r = c.response(false).await;
        assert_eq!((r.status(), r.body.as_slice()), (200, &b"opened"[..]));
        assert_eq!(r.header("connection"), Some("close"), "{}", r.head);
        assert!(c.closed().await, "the connection stays open");
    }
    assert_eq!(handoffs(&gw).await, ["transfer_encoding 1"]);
}
