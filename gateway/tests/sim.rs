//! The load harness's simulated agents against a real gateway: many tunnels register, and
//! after the node restarts on the same address they all come back through jittered backoff.
//! (Memory per tunnel and storm timing at 1k/10k are measured by load-tests/run.sh, not here.)

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::Duration;

use common::{DEMO, Gateway, HANG};
use tunnelgate_load::sim::{Sim, SimConfig};

const AGENTS: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_agents_register_and_survive_a_node_restart() {
    let gw = Gateway::start(&[
        "--max-tunnels-per-cluster",
        "1000",
        "--cluster-connect-rate",
        "1000",
    ]);
    let addr = gw.addr.to_string();
    let sim = Sim::start(SimConfig {
        url: format!("{}/v1/tunnel", gw.ws_url()),
        cluster: DEMO.0.into(),
        token: DEMO.1.into(),
        count: AGENTS,
        connect_rate: 1000,
        heartbeat: Duration::from_secs(1),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        register_timeout: Duration::from_secs(5),
    });
    sim.wait_until("ramp", HANG, |n| n == AGENTS).await.unwrap();
    gw.wait_metric(&format!("gateway_tunnels {AGENTS}")).await;
    let before = sim.stats();
    // Each registered once; any other attempt (a connect refused under load) failed.
    assert_eq!(
        before.attempts - before.failures,
        AGENTS as u64,
        "{before:?}"
    );

    drop(gw);
    sim.wait_until("outage", HANG, |n| n == 0).await.unwrap();
    let gw = Gateway::start_on(
        &addr,
        &[
            "--max-tunnels-per-cluster",
            "1000",
            "--cluster-connect-rate",
            "1000",
        ],
    );
    let took = sim
        .wait_until("storm", HANG, |n| n == AGENTS)
        .await
        .unwrap();
    gw.wait_metric(&format!("gateway_tunnels {AGENTS}")).await;
    let after = sim.stats();
    assert!(
        after.attempts > before.attempts + AGENTS as u64 - 1,
        "{after:?}"
    );
    eprintln!("{AGENTS} simulated agents back {took:?} after the restart: {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_agents_with_a_wrong_token_never_register() {
    let gw = Gateway::start(&[
        "--max-tunnels-per-cluster",
        "1000",
        "--cluster-connect-rate",
        "1000",
    ]);
    let sim = Sim::start(SimConfig {
        url: format!("{}/v1/tunnel", gw.ws_url()),
        cluster: DEMO.0.into(),
        token: "not-the-token".into(),
        count: 3,
        connect_rate: 1000,
        heartbeat: Duration::from_secs(1),
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(20),
        register_timeout: Duration::from_secs(5),
    });
    let err = sim
        .wait_until("ramp", Duration::from_millis(500), |n| n == 3)
        .await
        .unwrap_err();
    assert_eq!(err.stats.registered, 0);
    assert!(err.stats.failures >= 3, "{err}");
    // Every attempt failed, but for those of the 3 agents still under way.
    assert!(err.stats.attempts - err.stats.failures <= 3, "{err}");
}
