//! The Tunnelgate agent: dials out to a gateway, keeps one multiplexed WebSocket tunnel open,
//! and serves the requests that arrive on it from local upstreams. This is the agent's
//! non-Kubernetes mode: routes come from `--route` flags or a `--config` file.
//!
//! # Layout
//! - [`config`]: command line, environment and config file.
//! - [`backoff`]: reconnect delays with jitter.
//! - [`rules`]: the agent's rules, their targets, matching a request to one.
//! - [`upstream`]: the pooled upstream HTTP(S) clients.
//! - [`ingress`]: Kubernetes mode: routes from Ingress objects (watcher + pure translation).
//! - [`tunnel`]: a session per connection, a task per stream.
//! - [`telemetry`]: logs, and metrics on `--metrics-listen`.

pub mod backoff;
pub mod config;
pub mod ingress;
pub mod kubeapi;
pub mod pool;
pub mod rules;
pub mod telemetry;
pub mod tunnel;
pub mod upstream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tunnelgate_proto::control::RouteRejection;

use config::{Config, STABLE_CONNECTION};
use rules::Rules;
use tunnel::session::{self, End};
use upstream::UpstreamClient;

/// What the agent is doing, for callers that embed it (tests, a future status endpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Starting,
    Connecting {
        gateway: String,
    },
    /// Registered and routes acknowledged.
    Connected {
        gateway: String,
        node_id: String,
        accepted: usize,
        rejected: Vec<RouteRejection>,
        /// Gateway nodes this agent holds a tunnel to.
        nodes: Vec<String>,
    },
    Disconnected {
        error: String,
        retry_in: Duration,
    },
}

/// What sessions share.
/// The routes this agent publishes, by (host, path).
pub type RouteSet =
    Arc<std::collections::BTreeMap<(String, String), tunnelgate_proto::routes::RouteSpec>>;

/// What the gateway said of the routes, passed to the Kubernetes source (status, Events).
#[derive(Debug, Clone)]
pub struct AckReport {
    pub public_host: Option<String>,
    pub accepted: Vec<tunnelgate_proto::control::RouteKey>,
    pub rejected: Vec<RouteRejection>,
}

/// Acknowledgements queued for the Kubernetes source before new ones are dropped.
const ACK_QUEUE: usize = 64;

pub struct Shared {
    pub config: Config,
    /// Where route acknowledgements go, in Kubernetes mode.
    pub acks: Option<tokio::sync::mpsc::Sender<AckReport>>,
    /// Whether the cluster was judged private (0 unknown, 1 private, 2 public).
    private: std::sync::atomic::AtomicU8,
    /// The published routes; sessions send the changes to the gateway.
    pub routes: watch::Sender<RouteSet>,
    /// This agent instance's id; slot `n`'s connection id is `{instance}-{n}`, stable across
    /// reconnects.
    pub instance: String,
    held: std::sync::Mutex<Vec<tunnel::Place>>,
    /// Per slot: the older protocol a gateway named when it refused this agent's, offered on
    /// the slot's next attempt only (so an agent upgraded before its gateways still connects).
    fallback: std::sync::Mutex<std::collections::HashMap<usize, u32>>,
    rules: std::sync::RwLock<Arc<Rules>>,
    pub client: UpstreamClient,
    pub status: watch::Sender<Status>,
    /// TLS for `wss://` gateways.
    pub gateway_tls: Arc<rustls::ClientConfig>,
    /// The cluster's API server, with --kubernetes-api.
    pub kube_api: Option<Arc<kubeapi::KubeApi>>,
    pub metrics: Arc<telemetry::Metrics>,
}

/// While alive, marks a node (and its worker) as carrying one of this agent's tunnels.
pub struct Held<'a> {
    shared: &'a Shared,
    place: tunnel::Place,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut h = self.shared.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = h.iter().position(|p| *p == self.place) {
            h.remove(i);
        }
        self.shared.metrics.tunnels.dec();
    }
}

impl Shared {
    /// The protocol slot `slot` offers on this attempt: ours, or once the older one a gateway
    /// asked for.
    pub(crate) fn take_offer(&self, slot: usize) -> u32 {
        let mut f = self.fallback.lock().unwrap_or_else(|p| p.into_inner());
        f.remove(&slot)
            .unwrap_or(tunnelgate_proto::PROTOCOL_VERSION)
    }

    /// A gateway refused slot `slot`'s protocol and speaks `version`: offer that next time.
    pub(crate) fn fall_back(&self, slot: usize, version: u32) {
        let mut f = self.fallback.lock().unwrap_or_else(|p| p.into_inner());
        f.insert(slot, version);
    }

    pub fn set_private(&self, private: Option<bool>) {
        let v = match private {
            None => 0,
            Some(true) => 1,
            Some(false) => 2,
        };
        self.private.store(v, std::sync::atomic::Ordering::Relaxed);
    }

    /// What detection found, for heartbeats.
    pub fn is_private(&self) -> Option<bool> {
        match self.private.load(std::sync::atomic::Ordering::Relaxed) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        }
    }

    /// The current matching table.
    pub fn rules(&self) -> Arc<Rules> {
        self.rules.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the routes (and the table that serves them); connected sessions publish the
    /// difference.
    pub fn set_routes(&self, routes: Vec<(tunnelgate_proto::routes::RouteSpec, rules::Target)>) {
        let set: std::collections::BTreeMap<_, _> = routes
            .iter()
            .map(|(s, _)| ((s.host.clone(), s.path.clone()), s.clone()))
            .collect();
        *self.rules.write().unwrap_or_else(|p| p.into_inner()) = Rules::from_pairs(routes);
        self.metrics.routes.set(set.len() as i64);
        self.routes.send_if_modified(|cur| {
            if **cur == set {
                false
            } else {
                *cur = Arc::new(set);
                true
            }
        });
    }

    /// Claims `place` for one slot; None when another slot holds a tunnel on its node — or,
    /// with `share_node` (the slot reaches no other node), on the same worker of it, or the
    /// gateway names no workers.
    pub fn hold(&self, place: &tunnel::Place, share_node: bool) -> Option<Held<'_>> {
        let mut h = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if h.iter().any(|held| place.duplicates(held, share_node)) {
            return None;
        }
        h.push(place.clone());
        self.metrics.tunnels.inc();
        Some(Held {
            shared: self,
            place: place.clone(),
        })
    }

    /// The nodes this agent holds tunnels to (each once).
    pub fn held_nodes(&self) -> Vec<String> {
        let h = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let mut nodes: Vec<String> = Vec::new();
        for p in h.iter() {
            if !nodes.contains(&p.node) {
                nodes.push(p.node.clone());
            }
        }
        nodes
    }
}

/// Runs the agent until `shutdown` turns true: connect, serve, reconnect with backoff,
/// rotating through the gateway URLs. `config` must be validated.
pub async fn run(
    config: Config,
    status: watch::Sender<Status>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let client = upstream::client(config.upstream_connect_timeout);
    let gateway_tls = Arc::new(upstream::gateway_tls(config.gateway_ca.as_deref())?);
    let (ack_tx, ack_rx) = tokio::sync::mpsc::channel(ACK_QUEUE);
    let kube_api = match config.kubernetes_api {
        false => None,
        true => Some(Arc::new(kubeapi::KubeApi::new(
            &config.kubernetes_api_url,
            Some(config.kubernetes_ca_file.clone()),
            config.kubernetes_token_file.clone(),
            config.upstream_connect_timeout,
        )?)),
    };
    let (metrics, _metrics_server) = telemetry::start(config.metrics_listen).await?;
    let shared = Arc::new(Shared {
        metrics,
        kube_api,
        acks: config.kubernetes.then_some(ack_tx),
        private: Default::default(),
        instance: format!("agent-{:016x}", rand::random::<u64>()),
        held: Default::default(),
        fallback: Default::default(),
        routes: watch::channel(RouteSet::default()).0,
        rules: Default::default(),
        config,
        client,
        status,
        gateway_tls,
    });
    shared.set_routes(Rules::pairs(&shared.config.routes)?);
    if shared.config.kubernetes {
        let source = ingress::IngressSource::connect(&shared.config).await?;
        tokio::spawn(source.run(shared.clone(), ack_rx));
    }
    // Each slot on its own thread (ADR 0015); if this future is dropped (the agent is torn
    // down), the handles go with it and so do the slots.
    let mut slots = Vec::with_capacity(shared.config.connections);
    for slot in 0..shared.config.connections {
        slots.push(SlotThread::start(shared.clone(), slot, shutdown.clone())?);
    }
    for slot in slots {
        slot.finished().await?;
    }
    Ok(())
}

/// A connection slot on a thread of its own with a single-threaded runtime: its tunnel, its
/// streams and their upstream connections never leave that thread, so no request pays for a
/// hand-off between threads or a work-stealing scheduler (ADR 0015). The slots together use
/// as many cores as the agent has tunnels — the gateway's model, a tunnel per worker.
struct SlotThread {
    slot: usize,
    /// Told when the thread's runtime has stopped; dropped unsent when the thread panicked.
    done: tokio::sync::oneshot::Receiver<()>,
    /// Dropped with this handle: the slot stops, its runtime and every task on it with it.
    _cancel: tokio::sync::oneshot::Sender<()>,
}

impl SlotThread {
    fn start(
        shared: Arc<Shared>,
        slot: usize,
        shutdown: watch::Receiver<bool>,
    ) -> Result<SlotThread, String> {
        let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start connection slot {slot}'s runtime: {e}"))?;
        std::thread::Builder::new()
            .name(format!("tunnel-{slot}"))
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        () = run_slot(shared, slot, shutdown) => {}
                        _ = cancelled => {}
                    }
                });
                // Every task still on the runtime (a draining stream) is dropped here.
                drop(runtime);
                let _ = done_tx.send(());
            })
            .map_err(|e| format!("cannot start connection slot {slot}'s thread: {e}"))?;
        Ok(SlotThread {
            slot,
            done,
            _cancel: cancel,
        })
    }

    /// Waits for the slot to end; an error when its thread panicked.
    async fn finished(mut self) -> Result<(), String> {
        (&mut self.done)
            .await
            .map_err(|_| format!("connection slot {} failed: its thread panicked", self.slot))
    }
}

/// Dials in a row that land on a node this agent already holds before a slot concludes there
/// is only one node to reach (a single gateway, or a load balancer in front of one).
const SAME_NODE_GIVE_UP: u32 = 3;
/// Dials such a slot then makes for a tunnel on another worker of that node (ADR 0013) before
/// it waits [`SINGLE_NODE_RETRY`].
const WORKER_TRIES: u32 = 3;
/// How often such a slot looks again for another node.
const SINGLE_NODE_RETRY: std::time::Duration = std::time::Duration::from_secs(300);

/// A session running on its own task, with the handles its slot steers it by.
struct Live {
    task: tokio::task::JoinHandle<Result<End, session::SessionError>>,
    /// Makes this session drain and end (the agent's shutdown is forwarded here too).
    stop: Arc<watch::Sender<bool>>,
    /// Told when the gateway asks this tunnel to move.
    handoff: tokio::sync::mpsc::Receiver<()>,
    /// Told when the tunnel serves (its routes acknowledged).
    ready: tokio::sync::oneshot::Receiver<()>,
    gateway: String,
    started: Instant,
}

/// What a connection slot's sessions share: the agent, the slot's number, and the slot's own
/// pool of idle upstream connections (they belong to the slot thread's runtime, ADR 0015).
struct Slot {
    shared: Arc<Shared>,
    index: usize,
    pool: Arc<pool::ConnPool>,
}

fn start_session(
    slot: &Slot,
    gateway: &str,
    shutdown: &watch::Receiver<bool>,
    share_node: bool,
) -> Live {
    let (stop_tx, stop_rx) = watch::channel(*shutdown.borrow());
    let stop = Arc::new(stop_tx);
    let (forward, mut agent_stop) = (stop.clone(), shutdown.clone());
    tokio::spawn(async move {
        tokio::select! {
            Ok(_) = agent_stop.wait_for(|s| *s) => { let _ = forward.send(true); }
            _ = forward.closed() => {}
        }
    });
    let (handoff_tx, handoff) = tokio::sync::mpsc::channel(1);
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let (shared, index, pool) = (slot.shared.clone(), slot.index, slot.pool.clone());
    let gw = gateway.to_string();
    let task = tokio::spawn(async move {
        let hooks = session::Hooks {
            handoff: Some(handoff_tx),
            ready: Some(ready_tx),
            share_node,
        };
        session::run(&shared, index, &pool, &gw, stop_rx, hooks).await
    });
    Live {
        task,
        stop,
        handoff,
        ready,
        gateway: gateway.to_string(),
        started: Instant::now(),
    }
}

/// The slot's session tasks: aborted with the slot (the agent torn down), so no tunnel
/// outlives it; finished ones are forgotten as new ones start.
#[derive(Default)]
struct Owned(Vec<tokio::task::AbortHandle>);

impl Owned {
    fn add(&mut self, live: &Live) {
        self.0.retain(|h| !h.is_finished());
        self.0.push(live.task.abort_handle());
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

/// Attempts at a replacement tunnel when the gateway asks one to move.
const HANDOFF_TRIES: usize = 5;

/// One connection slot: connect, serve, reconnect with backoff, rotating through the gateway
/// URLs (slot `n` starts at URL `n`). When a gateway asks its tunnel to move (its node is
/// draining), the slot opens the next tunnel first and only then drains the old one: make
/// before break, so the cluster never has fewer tunnels than before.
async fn run_slot(shared: Arc<Shared>, slot: usize, mut shutdown: watch::Receiver<bool>) {
    let mut backoff =
        backoff::Backoff::new(shared.config.reconnect_min, shared.config.reconnect_max);
    let gateways = shared.config.gateways.clone();
    let mut turn = slot;
    // Consecutive dials that reached a node this agent already holds a tunnel to.
    let mut same_node = 0u32;
    let next_gateway = |turn: usize| {
        gateways
            .get(turn % gateways.len().max(1))
            .cloned()
            .unwrap_or_default()
    };
    if shared.held_nodes().is_empty() {
        shared.status.send_replace(Status::Connecting {
            gateway: next_gateway(turn),
        });
    }
    let me = Slot {
        shared: shared.clone(),
        index: slot,
        pool: Arc::new(pool::ConnPool::new(shared.config.upstream_connect_timeout)),
    };
    let mut owned = Owned::default();
    let mut live = start_session(&me, &next_gateway(turn), &shutdown, false);
    owned.add(&live);
    loop {
        let result = tokio::select! {
            r = &mut live.task => r.unwrap_or_else(|e| Err(session::SessionError::Lost(format!("session task: {e}")))),
            Some(()) = live.handoff.recv() => {
                match handoff(&me, &mut turn, &next_gateway, &shutdown, &mut live, &mut owned).await {
                    Handoff::Moved(next) => {
                        // The new tunnel serves: the old one drains in the background.
                        let _ = live.stop.send(true);
                        live = next;
                    }
                    Handoff::Stay => {}
                    Handoff::OldEnded(next) => {
                        live = next.unwrap_or_else(|| {
                            turn += 1;
                            start_session(&me, &next_gateway(turn), &shutdown, false)
                        });
                        owned.add(&live);
                    }
                }
                continue;
            }
        };
        let gateway = live.gateway.clone();
        let duplicate = matches!(result, Err(session::SessionError::Duplicate(_)));
        let error = match result {
            Ok(End::Shutdown) => return,
            Ok(End::Drain) => "drained by the gateway".to_string(),
            Err(e) => e.to_string(),
        };
        if live.started.elapsed() >= STABLE_CONNECTION {
            backoff.reset();
        }
        turn += 1;
        let mut delay = backoff.next_delay(&mut rand::rng());
        same_node = if duplicate { same_node + 1 } else { 0 };
        if same_node == SAME_NODE_GIVE_UP {
            tracing::info!(
                slot,
                gateway,
                "only one gateway node is reachable: this slot holds a tunnel on another of its workers when it can, else tries again every {} s in case more nodes appear",
                SINGLE_NODE_RETRY.as_secs()
            );
        }
        if same_node >= SAME_NODE_GIVE_UP + WORKER_TRIES {
            delay = SINGLE_NODE_RETRY;
        } else if duplicate {
            tracing::debug!(slot, gateway, error = %error, retry_in_ms = delay.as_millis() as u64, "same node again");
        } else {
            tracing::warn!(slot, gateway, error = %error, retry_in_ms = delay.as_millis() as u64, "tunnel down; reconnecting");
            shared.metrics.reconnects.inc();
        }
        if shared.held_nodes().is_empty() {
            shared.status.send_replace(Status::Disconnected {
                error,
                retry_in: delay,
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        if shared.held_nodes().is_empty() {
            shared.status.send_replace(Status::Connecting {
                gateway: next_gateway(turn),
            });
        }
        // A slot that found only this node takes a tunnel on another of its workers.
        let share_node = same_node >= SAME_NODE_GIVE_UP;
        live = start_session(&me, &next_gateway(turn), &shutdown, share_node);
        owned.add(&live);
    }
}

/// How a move went.
enum Handoff {
    /// A replacement serves; the old tunnel may drain.
    Moved(Live),
    /// No replacement came up: the old tunnel stays until its gateway closes it.
    Stay,
    /// The old tunnel ended meanwhile (its result consumed), with the replacement if it came up.
    OldEnded(Option<Live>),
}

/// Opens a replacement for `live`, whose gateway asked it to move: the next gateway URLs in
/// turn until one serves (the draining node refuses new tunnels, and this agent never holds
/// two on one node).
async fn handoff(
    slot: &Slot,
    turn: &mut usize,
    next_gateway: &impl Fn(usize) -> String,
    shutdown: &watch::Receiver<bool>,
    live: &mut Live,
    owned: &mut Owned,
) -> Handoff {
    for attempt in 0..HANDOFF_TRIES {
        *turn += 1;
        let mut cand = start_session(slot, &next_gateway(*turn), shutdown, false);
        owned.add(&cand);
        tokio::select! {
            Ok(()) = &mut cand.ready => {
                tracing::info!(slot = slot.index, from = %live.gateway, to = %cand.gateway, "tunnel moved: the new one serves, the old one drains");
                return Handoff::Moved(cand);
            }
            r = &mut cand.task => {
                tracing::debug!(slot = slot.index, gateway = %cand.gateway, attempt, outcome = ?r.map(|r| r.map(|_| ())), "replacement tunnel not up; trying the next");
                tokio::time::sleep(slot.shared.config.reconnect_min).await;
            }
            _ = &mut live.task => {
                // The old tunnel is gone already: keep the candidate if it comes up.
                return match tokio::time::timeout(Duration::from_secs(10), &mut cand.ready).await {
                    Ok(Ok(())) => Handoff::OldEnded(Some(cand)),
                    _ => {
                        cand.task.abort();
                        Handoff::OldEnded(None)
                    }
                };
            }
        }
    }
    tracing::warn!(slot = slot.index, gateway = %live.gateway, "no other gateway node took a tunnel; staying until this one closes");
    Handoff::Stay
}
