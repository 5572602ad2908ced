//! The agent's connection slots each run on a thread of their own (ADR 0015), and those threads
//! end with the agent: on a graceful shutdown and when the agent's future is dropped (a torn-down
//! embedding). One test in its own binary, so the threads it counts are only its agents'.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};
use tokio::sync::watch;
use tunnelgate_agent::Status;

/// Names of this process's threads that run a connection slot.
fn slot_threads() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .filter(|n| n.starts_with("tunnel-"))
        .collect();
    names.sort();
    names
}

/// Waits (bounded) until the slot threads are exactly `want`: a thread's start and end are
/// not events this test can await, so it looks every few milliseconds for at most 10 s.
async fn wait_threads(want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = slot_threads();
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "slot threads {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn config(gateway: &str) -> tunnelgate_agent::config::Config {
    let args = [
        "tunnelgate-agent",
        "--gateway",
        gateway,
        "--cluster",
        "demo",
        "--token",
        "quickstart-token-change-me-0123456789",
        "--route",
        "app.demo.localhost=http://127.0.0.1:9",
        "--connections",
        "3",
        "--reconnect-min",
        "50ms",
        "--reconnect-max",
        "200ms",
    ];
    <tunnelgate_agent::config::Config as clap::Parser>::try_parse_from(args)
        .expect("agent args")
        .validate()
        .expect("agent config")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_slot_runs_on_its_own_thread_and_the_threads_end_with_the_agent() {
    // A gateway that refuses every dial: the slots keep redialling on their threads.
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let gateway = format!("ws://{refused}");
    assert_eq!(slot_threads(), Vec::<String>::new());

    // A graceful shutdown: `run` returns Ok and every slot thread is gone.
    let (status, _status_rx) = watch::channel(Status::Starting);
    let (stop, stop_rx) = watch::channel(false);
    let agent = tokio::spawn(tunnelgate_agent::run(config(&gateway), status, stop_rx));
    wait_threads(&["tunnel-0", "tunnel-1", "tunnel-2"]).await;
    stop.send(true).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .expect("the agent stops in time")
        .expect("the agent's task did not panic");
    assert_eq!(ended, Ok(()));
    wait_threads(&[]).await;

    // Dropped mid-run (an embedding tears the agent down): the slots stop with it.
    let (status, _status_rx) = watch::channel(Status::Starting);
    let (_stop, stop_rx) = watch::channel(false);
    let agent = tokio::spawn(tunnelgate_agent::run(config(&gateway), status, stop_rx));
    wait_threads(&["tunnel-0", "tunnel-1", "tunnel-2"]).await;
    agent.abort();
    assert!(agent.await.unwrap_err().is_cancelled());
    wait_threads(&[]).await;
}
