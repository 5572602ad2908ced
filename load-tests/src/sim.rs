//! Simulated agents: many idle tunnels against one gateway node, each speaking the real
//! protocol (WebSocket upgrade with the cluster's token, `register`, heartbeats) and
//! reconnecting with the real agent's jittered backoff. Used to measure memory per idle tunnel
//! and how long a reconnect storm takes to settle.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tunnelgate_agent::backoff::Backoff;
use tunnelgate_proto::Control;
use tunnelgate_proto::control::{Heartbeat, Register};

/// What the simulated agents do.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Tunnel endpoint, e.g. `ws://127.0.0.1:8080/v1/tunnel`.
    pub url: String,
    pub cluster: String,
    pub token: String,
    /// Number of agents (one tunnel each).
    pub count: usize,
    /// New connections per second while ramping up (the first connect of each agent).
    pub connect_rate: u32,
    pub heartbeat: Duration,
    /// Reconnect backoff, as the agent's `--reconnect-min`/`--reconnect-max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Time allowed for one connect + register.
    pub register_timeout: Duration,
}

/// Counters over all agents.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct SimStats {
    /// Agents registered right now.
    pub registered: usize,
    /// Connection attempts so far.
    pub attempts: u64,
    /// Attempts that ended before `register_success` (refused, reset, timed out).
    pub failures: u64,
}

/// Running simulated agents; dropping it stops them all.
pub struct Sim {
    registered: watch::Receiver<usize>,
    attempts: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    _tasks: JoinSet<()>,
}

/// A wait ran out of time.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {stats:?} after {waited:?}")]
pub struct SimTimeout {
    pub what: &'static str,
    pub stats: SimStats,
    pub waited: Duration,
}

impl Sim {
    /// Starts `config.count` agents, spreading first connects at `connect_rate` per second.
    pub fn start(config: SimConfig) -> Sim {
        let (tx, rx) = watch::channel(0usize);
        let tx = Arc::new(tx);
        let attempts = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(AtomicU64::new(0));
        let config = Arc::new(config);
        let mut tasks = JoinSet::new();
        let step = Duration::from_secs(1) / config.connect_rate.max(1);
        for i in 0..config.count {
            let (config, tx) = (config.clone(), tx.clone());
            let (attempts, failures) = (attempts.clone(), failures.clone());
            let first = step.saturating_mul(u32::try_from(i).unwrap_or(u32::MAX));
            tasks.spawn(async move {
                tokio::time::sleep(first).await;
                agent(i, &config, &tx, &attempts, &failures).await;
            });
        }
        Sim {
            registered: rx,
            attempts,
            failures,
            _tasks: tasks,
        }
    }

    pub fn stats(&self) -> SimStats {
        SimStats {
            registered: *self.registered.borrow(),
            attempts: self.attempts.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }

    /// Waits until `pred` holds for the number of registered agents; returns how long it took.
    pub async fn wait_until(
        &self,
        what: &'static str,
        timeout: Duration,
        pred: impl Fn(usize) -> bool,
    ) -> Result<Duration, SimTimeout> {
        let started = Instant::now();
        let mut rx = self.registered.clone();
        match tokio::time::timeout(timeout, rx.wait_for(|n| pred(*n))).await {
            Ok(Ok(_)) => Ok(started.elapsed()),
            _ => Err(SimTimeout {
                what,
                stats: self.stats(),
                waited: started.elapsed(),
            }),
        }
    }
}

/// Keeps the registered count right however a session ends.
struct Registered<'a>(&'a watch::Sender<usize>);

impl<'a> Registered<'a> {
    fn new(tx: &'a watch::Sender<usize>) -> Self {
        tx.send_modify(|n| *n += 1);
        Registered(tx)
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// One agent: connect, register, heartbeat until the tunnel drops, back off, again.
async fn agent(
    i: usize,
    config: &SimConfig,
    tx: &watch::Sender<usize>,
    attempts: &AtomicU64,
    failures: &AtomicU64,
) {
    let mut backoff = Backoff::new(config.backoff_min, config.backoff_max);
    loop {
        attempts.fetch_add(1, Ordering::Relaxed);
        match session(i, config, tx).await {
            // It was registered: a fresh outage starts from the shortest delay, as in the agent.
            Ok(()) => backoff.reset(),
            Err(_) => {
                failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        let delay = backoff.next_delay(&mut rand::rng());
        tokio::time::sleep(delay).await;
    }
}

/// One connection; Ok when it registered (and later ended), Err when it never did.
async fn session(i: usize, config: &SimConfig, tx: &watch::Sender<usize>) -> Result<(), String> {
    let mut req = config
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let h = req.headers_mut();
    let bearer = format!("Bearer {}", config.token);
    h.insert("authorization", bearer.parse().map_err(|_| "bad token")?);
    h.insert(
        "x-tunnelgate-cluster",
        config.cluster.parse().map_err(|_| "bad cluster")?,
    );
    let register = async {
        let (mut ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .map_err(|e| e.to_string())?;
        let reg = Control::Register(Register {
            cluster: config.cluster.clone(),
            agent_version: "sim".into(),
            hostname: None,
            connection_id: Some(format!("sim-{i}")),
            agent_id: None,
            protocol: tunnelgate_proto::PROTOCOL_VERSION,
        });
        ws.send(Message::Text(reg.to_json().into()))
            .await
            .map_err(|e| e.to_string())?;
        while let Some(msg) = ws.next().await {
            if let Message::Text(t) = msg.map_err(|e| e.to_string())? {
                return match Control::from_json(&t) {
                    Ok(Control::RegisterSuccess(_)) => Ok(ws),
                    other => Err(format!("register answered with {other:?}")),
                };
            }
        }
        Err("closed before register_success".to_string())
    };
    let mut ws = tokio::time::timeout(config.register_timeout, register)
        .await
        .map_err(|_| "register timed out".to_string())??;
    let _registered = Registered::new(tx);
    let mut beat = tokio::time::interval(config.heartbeat);
    beat.tick().await;
    loop {
        tokio::select! {
            _ = beat.tick() => {
                let hb = Control::Heartbeat(Heartbeat { sent_at_ms: 0, is_private: None, gateway_routes: None });
                if ws.send(Message::Text(hb.to_json().into())).await.is_err() {
                    return Ok(());
                }
            }
            msg = ws.next() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Ok(()),
                Some(Ok(_)) => {}
            },
        }
    }
}
