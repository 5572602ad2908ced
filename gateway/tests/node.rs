//! A node as a value (`tunnelgate_gateway::run`): bound on port 0 with the addresses known
//! before it runs, serving, then stopped through its shutdown future — every listener closed
//! and `run` returned, with its background tasks joined, also with a tunnel open.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::TcpStream;
use std::time::Duration;

use clap::Parser;
use common::{DEMO, HANG};
use tunnelgate_gateway::config::Config;
use tunnelgate_gateway::{Listeners, run};

/// A node run in its own actix system on a thread; `stop` ends it.
struct InProcess {
    public: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: std::sync::mpsc::Receiver<std::io::Result<()>>,
}

impl InProcess {
    fn start() -> InProcess {
        let token = format!("{}:{}", DEMO.0, DEMO.1);
        let config = Config::parse_from([
            "tunnelgate-gateway",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--domain",
            "localhost",
            "--cluster",
            token.as_str(),
            "--drain-timeout",
            "1s",
        ])
        .validate()
        .expect("valid config");
        let listeners = Listeners::bind(&config).expect("bind");
        let public = listeners.public_addr().unwrap();
        let admin = listeners.admin_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (tx, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let shutdown = async move {
                let _ = stopped.await;
                "test"
            };
            let r = actix_rt::System::new().block_on(run(config, listeners, shutdown));
            let _ = tx.send(r);
        });
        InProcess {
            public,
            admin,
            stop: Some(stop),
            done,
        }
    }

    /// Stops the node; what `run` returned.
    fn stop(&mut self) -> std::io::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.done.recv_timeout(HANG).expect("run returns in time")
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
            let _ = self.done.recv_timeout(HANG);
        }
    }
}

fn refused(addr: std::net::SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_runs_on_port_zero_and_stops_with_everything_joined() {
    let mut node = InProcess::start();
    // The listeners were bound before `run`: the addresses answer at once.
    let client = reqwest::Client::new();
    let health = client
        .get(format!("http://{}/healthz", node.admin))
        .send()
        .await
        .expect("admin listener answers");
    assert_eq!(health.status(), 200);
    let miss = client
        .get(format!("http://{}/", node.public))
        .header("host", "nothing.demo.localhost")
        .send()
        .await
        .expect("public listener answers");
    assert_eq!(miss.status(), 503, "demo has no tunnel yet");
    // A live tunnel does not keep the node from stopping: the drain asks the agent to move,
    // then cuts it at --drain-timeout.
    let agent = common::Agent::spawn_urls(
        &[format!("http://{}", node.public)],
        DEMO,
        &[("app.demo.localhost", "http://127.0.0.1:9".into())],
        &[],
    );
    agent.connected().await;
    let (public, admin) = (node.public, node.admin);
    let stopped = tokio::task::spawn_blocking(move || node.stop())
        .await
        .unwrap();
    stopped.expect("run ends without an error");
    assert!(
        refused(public),
        "public listener still open after run returned"
    );
    assert!(
        refused(admin),
        "admin listener still open after run returned"
    );
    tokio::time::timeout(Duration::from_secs(5), agent.stop())
        .await
        .expect("agent stops");
}
