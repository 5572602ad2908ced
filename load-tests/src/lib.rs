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
    /// HTTPS with this client configuration (SNI = the Host), plain HTTP when None.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Requests on one connection before a new one is opened (1: a connection, and for HTTPS
    /// a full handshake, per request); unlimited when None.
    pub per_connection: Option<u64>,
}

/// A client configuration trusting the CA certificates in `pem_file` alone.
pub fn tls_client(
    pem_file: &std::path::Path,
) -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(pem_file)? {
        roots.add(c?)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(std::sync::Arc::new(cfg))
}

/// HTTP/1.1 on `io`: the request side (the connection runs on its own task).
async fn handshake<IO>(io: IO) -> Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(sender)
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

// Constant bounds: `new_with_bounds` fails only on bounds this call does not pass.
#[allow(clippy::expect_used)]
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
        let sender = match &plan.tls {
            None => handshake(stream).await,
            Some(cfg) => {
                let name = rustls_pki_types::ServerName::try_from(host.clone());
                match name {
                    Ok(name) => match tokio_rustls::TlsConnector::from(cfg.clone())
                        .connect(name, stream)
                        .await
                    {
                        Ok(tls) => handshake(tls).await,
                        Err(_) => None,
                    },
                    Err(_) => None,
                }
            }
        };
        let Some(mut sender) = sender else {
            tally.errors += 1;
            continue;
        };
        let mut on_this = 0u64;
        while Instant::now() < deadline && sent < budget {
            if plan.per_connection.is_some_and(|n| on_this >= n) {
                continue 'outer;
            }
            on_this += 1;
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
