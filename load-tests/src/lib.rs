//! A small HTTP/1.1 load generator for side-by-side runs: closed loop (each connection sends
//! its next request when the last answer arrives) or open loop (a fixed total rate, latency
//! measured from each request's scheduled time, so a stalled server cannot hide its queue).
//! Latencies go into HdrHistograms; every run is bounded in count and time.

pub mod sim;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::Serialize;

/// One run's parameters.
#[derive(Debug, Clone)]
pub struct Plan {
    pub addr: SocketAddr,
    /// `Host` header; `{n}` is replaced by the connection number (many hosts).
    pub host: String,
    pub path: String,
    pub connections: usize,
    pub duration: Duration,
    /// Total requests per second (open loop); None for closed loop.
    pub rate: Option<u64>,
    /// Stop after this many requests in all, whatever the time.
    pub max_requests: u64,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub requests: u64,
    pub errors: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub rps: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

struct Tally {
    hist: Histogram<u64>,
    errors: u64,
    bytes: u64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .expect("1 µs to 60 s at 3 digits is a valid histogram")
}

async fn connection(plan: Plan, n: usize, budget: u64) -> Tally {
    let mut tally = Tally {
        hist: histogram(),
        errors: 0,
        bytes: 0,
    };
    let host = plan.host.replace("{n}", &n.to_string());
    let deadline = Instant::now() + plan.duration;
    let interval = plan
        .rate
        .map(|r| Duration::from_secs_f64(plan.connections as f64 / r.max(1) as f64));
    let mut next = Instant::now();
    let mut sent = 0u64;
    'outer: while Instant::now() < deadline && sent < budget {
        let Ok(stream) = tokio::net::TcpStream::connect(plan.addr).await else {
            tally.errors += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Ok((mut sender, conn)) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await
        else {
            tally.errors += 1;
            continue;
        };
        tokio::spawn(conn);
        while Instant::now() < deadline && sent < budget {
            let scheduled = match interval {
                Some(iv) => {
                    tokio::time::sleep_until(next.into()).await;
                    let s = next;
                    next += iv;
                    s
                }
                None => Instant::now(),
            };
            let req = hyper::Request::get(plan.path.as_str())
                .header("host", host.as_str())
                .body(Empty::new());
            let Ok(req) = req else { break 'outer };
            sent += 1;
            match sender.send_request(req).await {
                Ok(resp) => {
                    let ok = resp.status().is_success();
                    match resp.into_body().collect().await {
                        Ok(b) if ok => {
                            tally.bytes += b.to_bytes().len() as u64;
                            let us = scheduled.elapsed().as_micros() as u64;
                            let _ = tally.hist.record(us.max(1));
                        }
                        _ => {
                            tally.errors += 1;
                            continue 'outer;
                        }
                    }
                }
                Err(_) => {
                    tally.errors += 1;
                    continue 'outer;
                }
            }
        }
        break;
    }
    tally
}

/// Runs `plan` and reports.
pub async fn run(plan: Plan) -> Report {
    let started = Instant::now();
    let per = (plan.max_requests / plan.connections.max(1) as u64).max(1);
    let tasks: Vec<_> = (0..plan.connections.max(1))
        .map(|n| tokio::spawn(connection(plan.clone(), n, per)))
        .collect();
    let mut hist = histogram();
    let (mut errors, mut bytes) = (0, 0);
    for t in tasks {
        if let Ok(t) = t.await {
            let _ = hist.add(&t.hist);
            errors += t.errors;
            bytes += t.bytes;
        } else {
            errors += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let requests = hist.len();
    Report {
        requests,
        errors,
        bytes,
        seconds,
        rps: requests as f64 / seconds.max(f64::EPSILON),
        p50_us: hist.value_at_quantile(0.50),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        max_us: hist.max(),
    }
}
