//! The harness's own smoke test: a few hundred requests against a real local server.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tunnelgate_load::{Plan, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_and_open_loop_measure_a_real_server() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                break;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let host = req
                            .headers()
                            .get("host")
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let status = if host.starts_with("h") { 200 } else { 404 };
                        let mut r =
                            hyper::Response::new(Full::new(Bytes::from_static(&[b'x'; 100])));
                        *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(r)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    let plan = Plan {
        addr,
        host: "h{n}.example".into(),
        path: "/".into(),
        connections: 4,
        duration: Duration::from_secs(5),
        rate: None,
        max_requests: 400,
        tls: None,
        per_connection: None,
    };
    let closed = run(plan.clone()).await;
    assert_eq!(closed.errors, 0);
    assert_eq!(closed.requests, 400);
    assert_eq!(closed.bytes, 400 * 100);
    assert!(closed.p50_us <= closed.p99_us && closed.p99_us <= closed.max_us);

    let open = run(Plan {
        rate: Some(2000),
        max_requests: 200,
        ..plan.clone()
    })
    .await;
    assert_eq!(open.requests, 200);
    // 200 requests at 2000/s take about 0.1 s; a closed loop would not be paced at all.
    assert!(open.seconds >= 0.08, "open loop was not paced: {open:?}");

    // A connection per request: the same answers.
    let fresh = run(Plan {
        per_connection: Some(1),
        max_requests: 40,
        ..plan.clone()
    })
    .await;
    assert_eq!((fresh.requests, fresh.errors), (40, 0));

    let refused = run(Plan {
        host: "nope".into(),
        max_requests: 20,
        ..plan
    })
    .await;
    assert_eq!(refused.requests, 0);
    assert!(refused.errors >= 1, "non-2xx answers count as errors");
    server.abort();
}
