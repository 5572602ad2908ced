//! `tg-agents`: opens N simulated agent tunnels against one gateway node, reports when all are
//! registered, and (with `--storm`) how long they take to come back after the node restarts.
//! Prints one JSON line per phase; see load-tests/README.md.

use std::time::Duration;

use clap::Parser;
use serde_json::json;
use tunnelgate_load::sim::{Sim, SimConfig};
use tunnelgate_mux::config::parse_duration;

#[derive(Debug, Parser)]
#[command(name = "tg-agents", version, about)]
struct Args {
    /// The gateway's tunnel endpoint.
    #[arg(long, default_value = "ws://127.0.0.1:8080/v1/tunnel")]
    url: String,
    #[arg(long, default_value = "demo")]
    cluster: String,
    #[arg(long, env = "TG_TOKEN")]
    token: String,
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// First connects per second while ramping up.
    #[arg(long, default_value_t = 2000)]
    connect_rate: u32,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    heartbeat: Duration,
    /// Reconnect backoff, the agent's defaults.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    reconnect_min: Duration,
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    reconnect_max: Duration,
    /// Give up on a phase after this long.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    timeout: Duration,
    /// After the ramp, wait for every tunnel to drop (the node is restarted by the caller)
    /// and report how long they take to all register again.
    #[arg(long)]
    storm: bool,
    /// Stay connected this long after the ramp (without --storm), e.g. to read memory.
    #[arg(long, value_parser = parse_duration)]
    hold: Option<Duration>,
}

fn emit(v: serde_json::Value) {
    println!("{v}");
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let n = a.count;
        let sim = Sim::start(SimConfig {
            url: a.url,
            cluster: a.cluster,
            token: a.token,
            count: n,
            connect_rate: a.connect_rate,
            heartbeat: a.heartbeat,
            backoff_min: a.reconnect_min,
            backoff_max: a.reconnect_max,
            register_timeout: Duration::from_secs(10),
        });
        let ramp = sim.wait_until("ramp", a.timeout, |r| r >= n).await?;
        emit(json!({"phase": "registered", "tunnels": n, "secs": ramp.as_secs_f64(), "stats": sim.stats()}));
        if !a.storm {
            tokio::time::sleep(a.hold.unwrap_or_default()).await;
            return Ok(());
        }
        let lost = sim.wait_until("outage", a.timeout, |r| r == 0).await?;
        let at_loss = sim.stats();
        emit(json!({"phase": "lost", "secs": lost.as_secs_f64(), "stats": at_loss}));
        let settle = sim.wait_until("storm", a.timeout, |r| r >= n).await?;
        let s = sim.stats();
        emit(json!({
            "phase": "settled", "tunnels": n, "secs": settle.as_secs_f64(),
            "attempts": s.attempts - at_loss.attempts, "failures": s.failures - at_loss.failures,
        }));
        anyhow::Ok(())
    })
}
