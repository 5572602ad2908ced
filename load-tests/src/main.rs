//! `tg-load`: runs one load plan against one address and prints a JSON report.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tunnelgate_load::{Plan, run};
use tunnelgate_mux::config::parse_duration;

/// Load generator for side-by-side runs (see load-tests/README.md).
#[derive(Debug, Parser)]
#[command(name = "tg-load", version, about)]
struct Args {
    /// Address to connect to.
    #[arg(long)]
    addr: SocketAddr,
    /// Host header; `{n}` becomes the connection number (many hosts).
    #[arg(long, default_value = "localhost")]
    host: String,
    #[arg(long, default_value = "/")]
    path: String,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Total requests per second (open loop); closed loop when absent.
    #[arg(long)]
    rate: Option<u64>,
    /// Stop after this many requests whatever the time.
    #[arg(long, default_value_t = 10_000_000)]
    max_requests: u64,
    /// HTTPS, trusting the CA certificates in this PEM file (SNI = the Host).
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// Requests per connection before a new one (1: a new connection, a TLS handshake for
    /// HTTPS, per request).
    #[arg(long)]
    requests_per_connection: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(run(Plan {
        addr: a.addr,
        host: a.host,
        path: a.path,
        connections: a.connections,
        duration: a.duration,
        rate: a.rate,
        max_requests: a.max_requests,
        tls: match &a.tls_ca {
            Some(f) => Some(tunnelgate_load::tls_client(f)?),
            None => None,
        },
        per_connection: a.requests_per_connection,
    }));
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
